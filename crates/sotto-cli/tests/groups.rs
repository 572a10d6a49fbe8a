//! Groups through the real binaries: create, talk, add, remove, rename,
//! promote, leave, and two admins committing at the same moment.

use serde_json::Value;
use sotto_test_support::{Profile, World};

fn receive(p: &Profile) -> Vec<(String, String, String)> {
    p.sotto(&["receive", "--json"])
        .ok()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["conversation"].as_str().unwrap().to_owned(),
                v["sender"].as_str().unwrap().to_owned(),
                v["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn msg(conv: &str, sender: &str, text: &str) -> (String, String, String) {
    (conv.into(), sender.into(), text.into())
}

/// The one group `p` knows by `name`, from `sotto groups --json`.
fn group(p: &Profile, name: &str) -> Value {
    let out = p.sotto(&["groups", "--json"]).ok();
    let all: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let hits: Vec<&Value> = all.iter().filter(|g| g["name"] == name).collect();
    assert_eq!(hits.len(), 1, "{out}");
    hits[0].clone()
}

fn members(g: &Value) -> Vec<&str> {
    g["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect()
}

#[test]
fn three_people_talk_in_a_group_and_agree_on_it() {
    let w = World::new(&[]);
    let (alice, bob, carol) = (w.person("alice"), w.person("bob"), w.person("carol"));
    alice
        .sotto(&["group", "create", "ops", "bob", "carol"])
        .ok();
    alice.sotto(&["send", "ops", "hello ops"]).ok();
    assert_eq!(receive(&bob), [msg("ops", "alice", "hello ops")]);
    bob.sotto(&["send", "ops", "bob here"]).ok();
    assert_eq!(
        receive(&carol),
        [
            msg("ops", "alice", "hello ops"),
            msg("ops", "bob", "bob here")
        ]
    );
    assert_eq!(receive(&alice), [msg("ops", "bob", "bob here")]);
    let views: Vec<Value> = [&alice, &bob, &carol]
        .iter()
        .map(|p| group(p, "ops"))
        .collect();
    for v in &views {
        assert_eq!(v["epoch"], views[0]["epoch"]);
        assert_eq!(v["epoch_authenticator"], views[0]["epoch_authenticator"]);
        assert_eq!(v["id"], views[0]["id"]);
        assert_eq!(members(v), ["alice", "bob", "carol"]);
        assert_eq!(v["admins"], serde_json::json!(["alice"]));
    }
    // Text output names the group.
    carol.sotto(&["send", "ops", "plain"]).ok();
    assert_eq!(alice.sotto(&["receive"]).ok(), "[ops] carol: plain\n");
}

#[test]
fn admins_add_remove_and_rename_and_others_cannot() {
    let w = World::new(&[]);
    let (alice, bob, carol, dave) = (
        w.person("alice"),
        w.person("bob"),
        w.person("carol"),
        w.person("dave"),
    );
    alice
        .sotto(&["group", "create", "ops", "bob", "carol"])
        .ok();
    alice.sotto(&["send", "ops", "before dave"]).ok();
    bob.sotto(&["group", "add", "ops", "dave"])
        .fails_with("only admins add members");
    bob.sotto(&["group", "remove", "ops", "carol"])
        .fails_with("only admins remove members");
    bob.sotto(&["group", "rename", "ops", "bobs"])
        .fails_with("only admins rename the group");

    alice.sotto(&["group", "add", "ops", "dave"]).ok();
    alice.sotto(&["send", "ops", "with dave"]).ok();
    assert_eq!(receive(&dave), [msg("ops", "alice", "with dave")]);

    alice.sotto(&["group", "remove", "ops", "bob"]).ok();
    alice.sotto(&["send", "ops", "without bob"]).ok();
    // Bob gets what came before his removal, then nothing.
    assert_eq!(
        receive(&bob),
        [
            msg("ops", "alice", "before dave"),
            msg("ops", "alice", "with dave")
        ]
    );
    assert_eq!(group(&bob, "ops")["state"], "removed");
    bob.sotto(&["send", "ops", "still here?"])
        .fails_with("no longer a member");
    assert_eq!(
        receive(&carol),
        [
            msg("ops", "alice", "before dave"),
            msg("ops", "alice", "with dave"),
            msg("ops", "alice", "without bob")
        ]
    );
    alice.sotto(&["group", "rename", "ops", "night shift"]).ok();
    carol.sotto(&["send", "night shift", "new name"]).ok();
    assert_eq!(
        receive(&dave),
        [
            msg("ops", "alice", "without bob"),
            msg("night shift", "carol", "new name")
        ]
    );
    for p in [&alice, &carol, &dave] {
        assert_eq!(
            members(&group(p, "night shift")),
            ["alice", "carol", "dave"]
        );
    }
    // bob, removed, is added again: his old state of the group gives way
    // to the Welcome, under the group's current name.
    alice.sotto(&["group", "add", "night shift", "bob"]).ok();
    alice.sotto(&["send", "night shift", "bob is back"]).ok();
    assert_eq!(receive(&bob), [msg("night shift", "alice", "bob is back")]);
    assert_eq!(group(&bob, "night shift")["state"], "active");
    bob.sotto(&["send", "night shift", "thanks"]).ok();
    assert_eq!(
        receive(&carol).last(),
        Some(&msg("night shift", "bob", "thanks"))
    );
}

#[test]
fn a_member_leaves_and_the_others_complete_it() {
    let w = World::new(&[]);
    let (alice, bob, carol) = (w.person("alice"), w.person("bob"), w.person("carol"));
    alice
        .sotto(&["group", "create", "ops", "bob", "carol"])
        .ok();
    alice
        .sotto(&["group", "leave", "ops"])
        .fails_with("only admin");
    carol.sotto(&["group", "leave", "ops"]).ok();
    // The next member to receive commits carol's removal.
    receive(&bob);
    alice.sotto(&["send", "ops", "after carol"]).ok();
    assert!(receive(&carol).is_empty());
    assert_eq!(group(&carol, "ops")["state"], "removed");
    assert_eq!(receive(&bob), [msg("ops", "alice", "after carol")]);
    for p in [&alice, &bob] {
        assert_eq!(members(&group(p, "ops")), ["alice", "bob"]);
    }
}

#[test]
fn two_admins_add_at_the_same_moment_and_both_land() {
    let w = World::new(&[]);
    let (alice, bob, carol) = (w.person("alice"), w.person("bob"), w.person("carol"));
    let (dave, erin) = (w.person("dave"), w.person("erin"));
    alice
        .sotto(&["group", "create", "ops", "bob", "carol"])
        .ok();
    alice.sotto(&["group", "promote", "ops", "bob"]).ok();
    receive(&bob);
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| alice.sotto(&["group", "add", "ops", "dave"]));
        let b = s.spawn(|| bob.sotto(&["group", "add", "ops", "erin"]));
        (a.join().unwrap(), b.join().unwrap())
    });
    a.ok();
    b.ok();
    for p in [&alice, &bob, &carol, &dave, &erin] {
        receive(p);
    }
    let views: Vec<Value> = [&alice, &bob, &carol, &dave, &erin]
        .iter()
        .map(|p| group(p, "ops"))
        .collect();
    for v in &views {
        assert_eq!(members(v), ["alice", "bob", "carol", "dave", "erin"]);
        assert_eq!(
            v["epoch"], views[0]["epoch"],
            "members disagree on the epoch"
        );
    }
    erin.sotto(&["send", "ops", "hi from erin"]).ok();
    for p in [&alice, &bob, &carol, &dave] {
        assert_eq!(receive(p), [msg("ops", "erin", "hi from erin")]);
    }
}

/// The message lines of `receive` or `history` output (not the `* `
/// lines of conversation notices).
fn messages(out: &str) -> String {
    out.lines()
        .filter(|l| !l.starts_with("* "))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// C10: eve creates a group named `ann` with ann and ben in it. Ben, who
/// writes with ann one to one, is never routed into eve's group by the
/// name: `send ann` and `history ann` are refused with both candidates
/// named; `@ann` is the person and `#<id>` the group. Names with
/// bidirectional overrides or escape sequences are refused.
#[test]
fn a_group_named_after_a_contact_never_captures_their_messages() {
    let w = World::new(&[]);
    let (ann, ben, eve) = (w.person("ann"), w.person("ben"), w.person("eve"));
    ben.sotto(&["send", "ann", "hi ann, just us"]).ok();
    assert_eq!(
        messages(&ann.sotto(&["receive"]).ok()),
        "ben: hi ann, just us\n"
    );
    eve.sotto(&["group", "create", "ann", "ann", "ben"]).ok();
    let id = group(&eve, "ann")["id"].as_str().unwrap().to_owned();
    assert_eq!(messages(&ben.sotto(&["receive"]).ok()), "");
    assert_eq!(group(&ben, "ann")["id"], id.as_str());

    // The bare name is both: refused, naming the contact and the group.
    for args in [
        &["send", "ann", "meant for ann alone"][..],
        &["history", "ann"],
    ] {
        let r = ben.sotto(args);
        r.fails_with("\"ann\" is both your contact @ann and the group #");
        assert!(r.stderr().contains(&id[..12]), "{}", r.stderr());
    }
    // `@ann` is always the person: the one-to-one conversation.
    ben.sotto(&["send", "@ann", "meant for ann alone"]).ok();
    assert_eq!(
        messages(&ann.sotto(&["receive"]).ok()),
        "ben: meant for ann alone\n"
    );
    assert_eq!(
        messages(&eve.sotto(&["receive"]).ok()),
        "",
        "eve read ben's message"
    );
    assert_eq!(
        messages(&ben.sotto(&["history", "@ann"]).ok()),
        "ben: hi ann, just us (delivered to 1, read by 1)\nben: meant for ann alone\n"
    );
    // `#<id>` is the group.
    ben.sotto(&["send", &format!("#{}", &id[..12]), "to the group"])
        .ok();
    assert_eq!(
        messages(&eve.sotto(&["receive"]).ok()),
        "[ann] ben: to the group\n"
    );
    assert_eq!(
        messages(&ben.sotto(&["history", &format!("#{}", &id[..12])]).ok()),
        "ben: to the group\n"
    );
    // A name that is not a contact's handle still names the group.
    eve.sotto(&["group", "rename", "ann", "book club"]).ok();
    ben.sotto(&["send", "book club", "by name"]).ok();

    // Names that hide or reorder text are refused, as handles refuse them.
    for bad in [
        "ann\u{202e}",
        "\u{2067}ops",
        "ops\x1b]0;title\x07",
        "#ann",
        "@ann",
    ] {
        eve.sotto(&["group", "create", bad, "ben"])
            .fails_with("a group name is");
        eve.sotto(&["group", "rename", "book club", bad])
            .fails_with("a group name is");
    }
}
