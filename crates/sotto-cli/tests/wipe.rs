//! Kill code and duress passphrase through the real binaries: a wipe by
//! kill code reaches an online and an offline device, each checks the code
//! itself, destroys its store and leaves its groups, and the server forgets
//! it; wrong codes, guessing and forged orders change nothing; the duress
//! passphrase silently destroys the store.
//!
//! No test sleeps: a device is known to be online once it has shown a
//! message (the server subscribes a connection to its mailbox before it
//! delivers from it).

use std::io::{BufRead, BufReader, Read};

use sotto_test_support::{Profile, World, files_containing, sotto_anywhere};

const CODE: &str = "orange-umbrella-42";

fn count(w: &World, sql: &str, handle: &str) -> i64 {
    w.server_db()
        .query_row(sql, [handle], |r| r.get(0))
        .unwrap()
}

fn wipe(w: &World, handle: &str, code: &str) -> sotto_test_support::Run {
    sotto_anywhere(
        &["wipe", &w.server.link, "--account", handle],
        &[("SOTTO_KILL_CODE", code)],
    )
}

fn members(p: &Profile) -> String {
    p.sotto(&["groups", "--json"]).ok()
}

#[test]
fn a_kill_code_wipes_online_and_offline_devices() {
    let w = World::new(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");
    let carol = w.person("carol");
    alice.sotto(&["group", "create", "ops", "bob"]).ok();
    alice.sotto(&["send", "ops", "secret plans"]).ok();
    alice.sotto(&["send", "bob", "just us"]).ok();
    let alice2 = w.link_device(&alice, "alice-2");
    alice
        .sotto_env(&["kill-code", "set"], &[("SOTTO_KILL_CODE", CODE)])
        .ok();
    // alice2 is online, listening; alice (first device) is offline. alice2
    // is online once it has shown bob's message.
    bob.sotto(&["receive"]).ok();
    bob.sotto(&["send", "ops", "anyone there?"]).ok();
    let mut online = alice2.spawn(&["receive", "--wait", "30"]);
    let mut out = BufReader::new(online.stdout.take().unwrap());
    let mut shown = String::new();
    while !shown.contains("anyone there?") {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            panic!("alice2 never showed bob's message: {shown:?}");
        }
        shown.push_str(&line);
    }
    wipe(&w, "alice", CODE).ok();
    let status = online.wait().unwrap();
    let mut err = String::new();
    online
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        !status.success() && err.contains("this profile was wiped"),
        "{err}"
    );
    // The offline device obeys on its next connection.
    alice
        .sotto(&["receive"])
        .fails_with("this profile was wiped");
    for p in [&alice, &alice2] {
        p.sotto(&["receive"]).fails_with("profile has no account");
        assert!(!p.dir.join("sotto.db").exists());
        assert!(files_containing(&p.dir, b"SQLite format").is_empty());
    }
    // The server forgot both devices: no record, mailbox or KeyPackage.
    let dev = "SELECT count(*) FROM devices d JOIN accounts a ON a.account = d.account WHERE a.handle = ?1";
    assert_eq!(count(&w, dev, "alice"), 0);
    for table in [
        "mailbox",
        "key_packages",
        "last_resort_key_packages",
        "group_members",
    ] {
        let sql = format!(
            "SELECT count(*) FROM {table} WHERE device NOT IN (SELECT device FROM devices) AND ?1 = ?1"
        );
        assert_eq!(
            count(&w, &sql, "alice"),
            0,
            "{table} still holds a wiped device"
        );
    }
    // Bob's client commits the wiped devices' departure, and the group
    // shows that alice has no device left (not that she left).
    let got = bob.sotto(&["receive"]);
    let told = format!("{}{}", got.stdout(), got.stderr());
    assert!(
        told.contains("ops: alice has no device left (wiped)") && !told.contains("alice left"),
        "{told}"
    );
    let g = members(&bob);
    assert!(g.contains(r#""members":["bob"]"#), "{g}");
    assert!(g.contains(r#""no_device_left":["alice"]"#), "{g}");
    let plain = bob.sotto(&["groups"]).ok();
    assert!(plain.contains("no device left: alice"), "{plain}");
    // Nobody can receive any more: a send says so and fails, in the
    // conversation bob had with alice and in one carol would start.
    let nobody = "alice has no device left here (wiped, revoked, or left the conversation)";
    bob.sotto(&["send", "alice", "are you there?"])
        .fails_with(nobody);
    carol.sotto(&["send", "alice", "hello?"]).fails_with(nobody);
}

#[test]
fn wrong_codes_guessing_and_forged_orders_change_nothing() {
    let w = World::new(&[]);
    let alice = w.person("alice");
    let _bob = w.person("bob");
    alice.sotto(&["send", "bob", "hi"]).ok();
    alice
        .sotto_env(&["kill-code", "set"], &[("SOTTO_KILL_CODE", CODE)])
        .ok();
    alice
        .sotto_env(&["kill-code", "set"], &[("SOTTO_KILL_CODE", "short")])
        .fails_with("at least 8 characters");
    // Wrong code, unknown account, account without a kill code: one answer.
    wipe(&w, "alice", "not-the-code").fails_with("wrong account or kill code");
    wipe(&w, "nobody", CODE).fails_with("wrong account or kill code");
    wipe(&w, "bob", CODE).fails_with("wrong account or kill code");
    // A forged order from a server that lacks the code.
    let db = w.server_db();
    let device: Vec<u8> = db
        .query_row(
            "SELECT d.device FROM devices d JOIN accounts a ON a.account = d.account WHERE a.handle = 'alice'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let order = sotto_proto::WipeOrder {
        device: sotto_proto::DeviceId(device.clone().try_into().unwrap()),
        proof: [0x42; 32],
    };
    db.execute(
        "INSERT INTO messages (group_id, sender, msg_id, kind, server_ms, expires_ms, payload) \
         VALUES (zeroblob(32), ?1, randomblob(16), 4, 0, 9000000000000, ?2)",
        rusqlite::params![device, postcard::to_stdvec(&order).unwrap()],
    )
    .unwrap();
    db.execute(
        "INSERT INTO mailbox (device, message) VALUES (?1, last_insert_rowid())",
        [&device],
    )
    .unwrap();
    drop(db);
    let r = alice.sotto(&["receive"]);
    r.ok();
    assert!(
        r.stderr().contains("does not prove the kill code"),
        "{}",
        r.stderr()
    );
    assert!(alice.sotto(&["contacts"]).ok().starts_with("bob\t"));
    // Guessing is cut off: after five wrong codes even the right one waits.
    for _ in 0..4 {
        wipe(&w, "alice", "still-not-it").fails_with("wrong account or kill code");
    }
    wipe(&w, "alice", CODE).fails_with("too many wrong kill codes");
    alice.sotto(&["send", "bob", "still here"]).ok();
}

#[test]
fn the_duress_passphrase_silently_destroys_the_store() {
    let w = World::new(&[]);
    let alice = w.person("alice");
    let _bob = w.person("bob");
    alice.sotto(&["send", "bob", "hi"]).ok();
    alice
        .sotto_env(
            &["duress", "set"],
            &[("SOTTO_DURESS_PASSPHRASE", &alice.passphrase)],
        )
        .fails_with("must differ");
    alice
        .sotto_env(
            &["duress", "set"],
            &[("SOTTO_DURESS_PASSPHRASE", "under duress")],
        )
        .ok();
    let before = std::fs::read(alice.dir.join("sotto.db")).unwrap();
    // Unlocking with the duress passphrase shows a fresh, empty profile.
    alice
        .sotto_with(&["contacts"], "under duress")
        .fails_with("profile has no account");
    let after = std::fs::read(alice.dir.join("sotto.db")).unwrap();
    assert_ne!(before[..16], after[..16], "the old store is still there");
    // The real passphrase opens nothing any more.
    alice.sotto(&["contacts"]).fails_with("wrong passphrase");
    alice
        .sotto_with(&["contacts"], "under duress")
        .fails_with("profile has no account");
}

/// C12: unlocking with the duress passphrase destroys the received
/// attachments too: no file of the profile holds a saved file's contents
/// or its name afterwards, and `downloads/` is gone.
#[test]
fn the_duress_passphrase_destroys_received_files() {
    let w = World::new(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");
    let contents = b"minutes of the meeting at the old mill, do not share";
    let path = w.root.join("old-mill-minutes.txt");
    std::fs::write(&path, contents).unwrap();
    alice
        .sotto(&["send-file", "bob", path.to_str().unwrap()])
        .ok();
    bob.sotto(&["receive"]).ok();
    let downloads = bob.dir.join("downloads");
    assert_eq!(
        std::fs::read(downloads.join("old-mill-minutes.txt")).unwrap(),
        contents
    );
    bob.sotto_env(
        &["duress", "set"],
        &[("SOTTO_DURESS_PASSPHRASE", "under duress")],
    )
    .ok();
    bob.sotto_with(&["contacts"], "under duress")
        .fails_with("profile has no account");
    assert!(
        !downloads.exists(),
        "downloads/ survived the duress passphrase"
    );
    for needle in [&contents[..], b"old-mill-minutes"] {
        assert_eq!(
            files_containing(&bob.dir, needle),
            Vec::<std::path::PathBuf>::new(),
            "{:?} survived",
            String::from_utf8_lossy(needle)
        );
    }
}
