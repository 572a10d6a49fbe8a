//! Several devices per account through the real binaries: linking by code,
//! messages from any device reaching every other device exactly once,
//! revocation, and a ghost device slipped in by the server being refused.

use serde_json::Value;
use sotto_test_support::{Profile, World};

fn receive(p: &Profile) -> Vec<(String, String)> {
    let mut v = p.received();
    v.sort();
    v
}

#[test]
fn three_people_with_two_devices_each() {
    let w = World::new(&[]);
    let a1 = w.person("alice");
    let b1 = w.person("bob");
    let c1 = w.person("carol");
    a1.sotto(&["group", "create", "ops", "bob", "carol"]).ok();
    receive(&b1);
    receive(&c1);
    let a2 = w.link_device(&a1, "alice-2");
    let b2 = w.link_device(&b1, "bob-2");
    let c2 = w.link_device(&c1, "carol-2");
    for p in [&a1, &a2] {
        assert_eq!(p.sotto(&["devices"]).ok().lines().count(), 2);
    }
    // Everyone catches up on the commits that added the new devices.
    let all = [
        (&a1, "alice"),
        (&a2, "alice"),
        (&b1, "bob"),
        (&b2, "bob"),
        (&c1, "carol"),
        (&c2, "carol"),
    ];
    for (p, _) in &all {
        assert!(receive(p).is_empty());
    }
    for (i, (p, _)) in all.iter().enumerate() {
        p.sotto(&["send", "ops", &format!("from device {i}")]).ok();
    }
    for (i, (p, _)) in all.iter().enumerate() {
        let mut want: Vec<(String, String)> = all
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(j, (_, who))| ((*who).to_owned(), format!("from device {j}")))
            .collect();
        want.sort();
        assert_eq!(receive(p), want, "device {i}");
    }
    // Everyone agrees on the group.
    let epochs: Vec<Value> = all
        .iter()
        .map(|(p, _)| {
            let out = p.sotto(&["groups", "--json"]).ok();
            serde_json::from_str::<Value>(out.lines().next().unwrap()).unwrap()["epoch"].clone()
        })
        .collect();
    assert!(epochs.windows(2).all(|e| e[0] == e[1]), "{epochs:?}");
    // A direct conversation reaches both of the peer's devices, and the
    // sender's other device.
    a1.sotto(&["send", "bob", "direct"]).ok();
    for p in [&b1, &b2, &a2] {
        assert_eq!(receive(p), [("alice".to_owned(), "direct".to_owned())]);
    }
    b2.sotto(&["send", "alice", "direct back"]).ok();
    for p in [&a1, &a2, &b1] {
        assert_eq!(receive(p), [("bob".to_owned(), "direct back".to_owned())]);
    }
}

#[test]
fn a_revoked_device_is_cut_off() {
    let w = World::new(&[]);
    let a1 = w.person("alice");
    let b1 = w.person("bob");
    a1.sotto(&["send", "bob", "hi"]).ok();
    receive(&b1);
    let a2 = w.link_device(&a1, "alice-2");
    let id = a2
        .sotto(&["devices"])
        .ok()
        .lines()
        .find(|l| l.ends_with("this device"))
        .unwrap()
        .split('\t')
        .next()
        .unwrap()
        .to_owned();
    a2.sotto(&["devices", "revoke", &id])
        .fails_with("revoke this device from another one");
    a1.sotto(&["devices", "revoke", &id[..12]]).ok();
    assert_eq!(a1.sotto(&["devices"]).ok().lines().count(), 1);
    a2.sotto(&["receive"]).fails_with("authentication failed");
    b1.sotto(&["send", "alice", "after the revocation"]).ok();
    assert_eq!(
        receive(&a1),
        [("bob".to_owned(), "after the revocation".to_owned())]
    );
}

#[test]
fn a_ghost_device_added_by_the_server_is_refused() {
    let w = World::new(&[]);
    let a1 = w.person("alice");
    let _b1 = w.person("bob");
    let _m = w.person("mallory");
    // The server files mallory's device (and its KeyPackages) under bob's account.
    w.server_db()
        .execute(
            "UPDATE devices SET account = (SELECT account FROM accounts WHERE handle = 'bob') \
         WHERE account = (SELECT account FROM accounts WHERE handle = 'mallory')",
            [],
        )
        .unwrap();
    a1.sotto(&["send", "bob", "hi"])
        .fails_with("the server listed a device for bob that bob's account did not sign for");
}

#[test]
fn a_mistyped_link_code_publishes_nothing_and_a_device_that_never_came_can_be_revoked() {
    use std::io::{BufRead, BufReader};
    let w = World::new(&[]);
    let a1 = w.person("alice");
    // A new device shows its code, then goes away before it is approved.
    let mut child = w
        .profile("alice-2")
        .spawn(&["link", &w.server.link, "--wait", "60"]);
    let mut code = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut code)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let code = code.trim().to_owned();
    assert!(code.starts_with("sotto-link:"), "{code}");
    // One digit wrong, a digit missing, a made-up code of the right form.
    let mut typo = code.clone().into_bytes();
    let i = typo.len() / 2;
    typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    let cut = &code[..code.len() - 1];
    let random = format!("sotto-link:{}", "5a".repeat(52));
    for bad in [typo.as_str(), cut, random.as_str()] {
        a1.sotto(&["devices", "approve", bad])
            .fails_with("the link code is mistyped or incomplete");
    }
    assert_eq!(a1.sotto(&["devices"]).ok().lines().count(), 1);
    // The right code of a device that never comes online (no conversation
    // to add it to): listed, and revocable.
    a1.sotto(&["devices", "approve", &code]).ok();
    let devices = a1.sotto(&["devices"]).ok();
    let other = devices
        .lines()
        .find(|l| !l.ends_with("this device"))
        .expect("the approved device")
        .to_owned();
    a1.sotto(&["devices", "revoke", &other[..12]]).ok();
    assert_eq!(a1.sotto(&["devices"]).ok().lines().count(), 1);
}

/// The warnings `sotto` printed for a command.
fn new_device_warnings(r: &sotto_test_support::Run, who: &str) -> usize {
    r.stderr()
        .matches(&format!("WARNING: {who} has a new device"))
        .count()
}

#[test]
fn a_new_device_of_a_contact_is_announced_once_on_every_path() {
    let w = World::new(&[]);
    let a1 = w.person("alice");
    let b1 = w.person("bob");
    let c1 = w.person("carol");
    // bob learns of alice only by her invitation; carol starts her
    // conversation with alice herself and then only ever sends.
    a1.sotto(&["send", "bob", "hi bob"]).ok();
    receive(&b1);
    c1.sotto(&["send", "alice", "hi alice"]).ok();
    receive(&a1);
    let _a2 = w.link_device(&a1, "alice-2");
    let r = b1.sotto(&["receive"]);
    r.ok();
    assert_eq!(new_device_warnings(&r, "alice"), 1, "{}", r.stderr());
    let r = c1.sotto(&["send", "alice", "still there?"]);
    r.ok();
    assert_eq!(new_device_warnings(&r, "alice"), 1, "{}", r.stderr());
    // Once: not again on the next paths that show the same device.
    let r = b1.sotto(&["group", "create", "ops", "alice", "carol"]);
    r.ok();
    assert_eq!(new_device_warnings(&r, "alice"), 0, "{}", r.stderr());
    let r = c1.sotto(&["receive"]);
    r.ok();
    assert_eq!(new_device_warnings(&r, "alice"), 0, "{}", r.stderr());
}
