//! Issue 16, item 7, end to end on the real binaries and the real server:
//! `sotto backup create` writes history, contacts, verification states
//! and settings sealed under a recovery key shown once; `sotto backup
//! restore` on a new machine brings them back as a new device of the
//! account, which joins its conversations again and talks at once; a
//! wrong key or a damaged file is refused and leaves nothing behind;
//! disappearing messages and device keys never go into a backup.

use serde_json::Value;
use sotto_test_support::{Profile, World, files_containing, sender_and_text};

fn texts(p: &Profile, conversation: &str) -> Vec<String> {
    p.history(conversation)
        .into_iter()
        .map(|(_, t)| t)
        .collect()
}

/// The recovery key `backup create` printed (the line after its notice).
fn recovery_key(out: &str) -> String {
    let mut lines = out.lines().skip_while(|l| !l.starts_with("recovery key"));
    lines.next().expect("a recovery key notice");
    lines.next().expect("the key").trim().to_owned()
}

#[test]
fn a_backup_brings_history_contacts_and_conversations_back_on_a_new_machine() {
    let w = World::new(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");
    let carol = w.person("carol");
    alice
        .sotto(&["send", "bob", "the plan is in the blue folder"])
        .ok();
    bob.received();
    bob.sotto(&["send", "alice", "got it"]).ok();
    alice
        .sotto(&["group", "create", "ops", "bob", "carol"])
        .ok();
    alice.sotto(&["send", "ops", "standup at nine"]).ok();
    bob.received();
    carol.received();
    alice.sotto(&["receive"]).ok();
    alice.sotto(&["verify", "bob", "--confirm"]).ok();
    alice.sotto(&["read-receipts", "off"]).ok();
    // A disappearing conversation: what is in it never goes into a backup.
    alice.sotto(&["disappear", "carol", "1h"]).ok();
    alice.sotto(&["send", "carol", "vanishing words"]).ok();
    assert_eq!(
        carol.received(),
        [("alice".to_owned(), "vanishing words".to_owned())]
    );

    let file = w.root.join("alice.backup");
    let out = alice
        .sotto(&["backup", "create", file.to_str().unwrap()])
        .ok();
    assert!(
        out.contains("3 conversation(s), 3 message(s), 2 contact(s)"),
        "{out}"
    );
    let key = recovery_key(&out);
    assert_eq!(key.split(' ').count(), 16, "{key}");
    // Sealed: no text, handle or key of the profile is in the file.
    for needle in [
        &b"the plan is in the blue folder"[..],
        b"standup at nine",
        b"vanishing words",
        b"carol",
    ] {
        assert!(files_containing(&w.root, needle).iter().all(|f| f != &file));
    }
    // Nothing is overwritten.
    alice
        .sotto(&["backup", "create", file.to_str().unwrap()])
        .fails_with("exists: not overwriting it");

    // A new machine. A wrong key, or a damaged file, is refused and
    // leaves the profile free for the right one.
    let new = w.profile("alice-new");
    let mut wrong = key.clone();
    wrong.replace_range(0..1, if wrong.starts_with('0') { "1" } else { "0" });
    new.sotto_env(
        &["backup", "restore", file.to_str().unwrap()],
        &[("SOTTO_RECOVERY_KEY", &wrong)],
    )
    .fails_with("does not open with this recovery key");
    let damaged = w.root.join("damaged.backup");
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&damaged, bytes).unwrap();
    new.sotto_env(
        &["backup", "restore", damaged.to_str().unwrap()],
        &[("SOTTO_RECOVERY_KEY", &key)],
    )
    .fails_with("does not open with this recovery key");
    new.sotto(&["contacts"])
        .fails_with("profile has no account");

    let out = new
        .sotto_env(
            &["backup", "restore", file.to_str().unwrap()],
            &[("SOTTO_RECOVERY_KEY", &key)],
        )
        .ok();
    assert!(
        out.contains(
            "restored alice as a new device: 3 conversation(s), 3 message(s), 2 contact(s)"
        ),
        "{out}"
    );
    assert!(out.contains("joined 3 conversation(s) again"), "{out}");
    // The history, without the disappearing message; the verification
    // state; the settings; the search index.
    assert_eq!(
        texts(&new, "bob"),
        ["the plan is in the blue folder", "got it"]
    );
    assert_eq!(texts(&new, "ops"), ["standup at nine"]);
    assert!(texts(&new, "carol").is_empty());
    let contacts = new.sotto(&["contacts"]).ok();
    assert!(
        contacts
            .lines()
            .any(|l| l.contains("bob") && l.contains("verified")),
        "{contacts}"
    );
    assert!(
        new.sotto(&["search", "blue folder"])
            .ok()
            .contains("the plan is in the blue folder")
    );
    assert_eq!(new.sotto(&["devices"]).ok().lines().count(), 2);

    // It talks at once, in every conversation, and everyone is told that
    // alice has a new device.
    new.sotto(&["send", "ops", "back on a new laptop"]).ok();
    new.sotto(&["send", "bob", "new machine, same me"]).ok();
    let got = bob.sotto(&["receive", "--json"]);
    assert!(
        got.stderr().contains("alice has a new device"),
        "{}",
        got.stderr()
    );
    let mut got: Vec<String> = sender_and_text(&got.ok())
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    got.sort();
    assert_eq!(got, ["back on a new laptop", "new machine, same me"]);
    assert_eq!(
        carol.received(),
        [("alice".to_owned(), "back on a new laptop".to_owned())]
    );
    bob.sotto(&["send", "alice", "welcome back"]).ok();
    carol.sotto(&["send", "ops", "hi again"]).ok();
    let mut got = new.received();
    got.sort();
    assert_eq!(
        got,
        [
            ("bob".to_owned(), "welcome back".to_owned()),
            ("carol".to_owned(), "hi again".to_owned()),
        ]
    );
    // The setting came back: read receipts stay off on the new device
    // (and the old one): bob's message is delivered, never reported read.
    bob.sotto(&["receive"]).ok();
    let mine = bob.sotto(&["history", "alice", "--json"]).ok();
    let welcome: Value = mine
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|m| m["text"] == "welcome back")
        .unwrap();
    assert_eq!(
        (
            welcome["delivered_to"].as_u64(),
            welcome["read_by"].as_u64()
        ),
        (Some(1), Some(0)),
        "{welcome}"
    );
    // The old device goes on too, and sees what its new sibling sent.
    let old: Vec<String> = alice.received().into_iter().map(|(_, t)| t).collect();
    for t in [
        "back on a new laptop",
        "new machine, same me",
        "welcome back",
        "hi again",
    ] {
        assert!(old.iter().any(|o| o == t), "{t} not in {old:?}");
    }
    // No device key went into the backup: the two devices differ.
    let devices = new.sotto(&["devices"]).ok();
    let old_id = devices
        .lines()
        .find(|l| !l.contains("this device"))
        .expect("the old device")
        .trim()
        .to_owned();
    let mine = alice.sotto(&["devices"]).ok();
    assert!(
        mine.lines()
            .any(|l| l.starts_with(&old_id) && l.contains("this device")),
        "{mine}"
    );
    // The machine was lost, after all: the new device revokes the old one,
    // which leaves every conversation and can no longer sign in.
    new.sotto(&["devices", "revoke", &old_id[..12]]).ok();
    bob.sotto(&["send", "ops", "after the revocation"]).ok();
    assert_eq!(
        new.received(),
        [("bob".to_owned(), "after the revocation".to_owned())]
    );
    assert!(!alice.sotto(&["receive"]).out.status.success());
}

#[test]
fn a_restore_into_a_profile_that_has_an_account_is_refused() {
    let w = World::new(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");
    let file = w.root.join("a.backup");
    let key = recovery_key(
        &alice
            .sotto(&["backup", "create", file.to_str().unwrap()])
            .ok(),
    );
    bob.sotto_env(
        &["backup", "restore", file.to_str().unwrap()],
        &[("SOTTO_RECOVERY_KEY", &key)],
    )
    .fails_with("profile already has an account (bob)");
    assert!(bob.sotto(&["contacts"]).ok().is_empty());
}
