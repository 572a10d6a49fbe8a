//! The key directory against a lying server, through the real binaries:
//! the server is made to lie the way its operator could, by editing its
//! database, rolling it back, or publishing into its directory with its
//! own VRF key (`sotto_test_support::malice`). Each lie is caught, with a
//! clear warning or refusal, and nothing else is lost: the victims go on
//! talking afterwards.

use sotto_proto::DeviceId;
use sotto_test_support::{World, malice};

const ALARM: &str = "ALARM: the server's key directory shows your account something you did not do";

#[test]
fn a_fabricated_account_on_first_contact_sets_off_the_owners_alarm() {
    let w = World::new(&[]);
    let evil = World::new(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");
    let _fake_bob = evil.person("bob");
    // Nothing is wrong yet: no alarm.
    let quiet = bob.sotto(&["receive"]);
    quiet.ok();
    assert!(!quiet.stderr().contains("ALARM"), "{}", quiet.stderr());

    // The server answers alice's first contact with an account of its own
    // making under bob's handle. Alice has nothing to compare it with; to
    // be served, the account must be in the directory everyone checks.
    malice::graft_account(&w.server, &evil.server, "bob");
    alice.sotto(&["send", "bob", "for the real bob?"]).ok();

    // Bob's device checks its handle's history at login and sees it.
    let r = bob.sotto(&["receive"]);
    r.ok();
    assert!(r.stderr().contains(ALARM), "{}", r.stderr());
    assert!(
        r.stderr()
            .contains("of your handle names another account key"),
        "{}",
        r.stderr()
    );
    assert!(bob.received().is_empty(), "{:?}", bob.received());
}

#[test]
fn a_rolled_back_directory_and_a_second_history_of_an_epoch_are_refused() {
    let mut w = World::new(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");
    let snapshot = w.root.join("older.db");
    malice::snapshot(&w.server, &snapshot);
    // After the snapshot: carol registers, and alice sees the newer epoch.
    let carol = w.person("carol");
    alice.sotto(&["send", "carol", "hi carol"]).ok();
    carol.sotto(&["receive"]).ok();

    // The server goes back to the older database: a stale directory.
    malice::roll_back(&mut w.server, &snapshot);
    let r = alice.sotto(&["send", "bob", "hi bob"]);
    r.fails_with("the server's key directory went back from epoch");
    assert!(r.stderr().contains(ALARM), "{}", r.stderr());
    assert!(bob.received().is_empty());

    // It moves on from there and reaches alice's epoch again with other
    // content: two directories for one epoch (a split view).
    let _dave = w.person("dave");
    alice
        .sotto(&["send", "bob", "hi bob"])
        .fails_with("the server showed two different key directories for epoch");
    assert!(bob.received().is_empty());
}

#[test]
fn an_entry_for_a_device_list_the_owner_never_signed_sets_off_the_alarm() {
    let mut w = World::new(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");
    alice.sotto(&["send", "bob", "before"]).ok();
    assert_eq!(bob.received(), vec![("alice".into(), "before".into())]);

    // The operator adds a device behind bob's back: a newer list naming a
    // device of its own, which bob's account key never signed.
    let mut list = malice::device_list(&w.server, "bob");
    list.version += 1;
    list.devices.push(DeviceId([0x66; 32]));
    malice::publish_entry(&mut w.server, "bob", &list);

    let r = bob.sotto(&["receive"]);
    r.ok();
    assert!(r.stderr().contains(ALARM), "{}", r.stderr());
    assert!(
        r.stderr().contains("rolls your device list back"),
        "{}",
        r.stderr()
    );
    // Nothing else is lost: the conversation goes on.
    alice.sotto(&["send", "bob", "after"]).ok();
    let got = bob.received();
    assert_eq!(got.last(), Some(&("alice".into(), "after".into())));
}

#[test]
fn an_auditor_checks_that_the_directory_only_grew() {
    let w = World::new(&[]);
    let _alice = w.person("alice");
    let _bob = w.person("bob");
    let _carol = w.person("carol");
    let out = sotto_test_support::sotto_anywhere(&["audit", &w.server.link], &[]).ok();
    assert!(
        out.contains("the key directory only grew from epoch 0 to"),
        "{out}"
    );
    assert!(out.contains("root hash of epoch"), "{out}");
    sotto_test_support::sotto_anywhere(&["audit", &w.server.link, "--from", "2", "--to", "1"], &[])
        .fails_with("the first epoch must come before the last");
}

#[test]
fn members_shown_different_directories_find_out_from_each_others_messages() {
    let mut w = World::new(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");
    alice.sotto(&["send", "bob", "hi bob"]).ok();
    bob.sotto(&["receive"]).ok();
    let snapshot = w.root.join("older.db");
    malice::snapshot(&w.server, &snapshot);
    // Alice verifies an epoch in which carol joined the directory.
    let _carol = w.person("carol");
    alice.sotto(&["send", "carol", "hi carol"]).ok();

    // The server goes back and builds another history from there: dave
    // joins instead, in the epoch alice saw with carol. Bob, who never saw
    // the first history, is shown the second.
    malice::roll_back(&mut w.server, &snapshot);
    let _dave = w.person("dave");
    bob.sotto(&["send", "alice", "hi alice"]).ok();

    // Bob's message carries the root he trusts: alice's device verified
    // another root for that epoch.
    let r = alice.sotto(&["receive", "--json"]);
    let out = r.ok();
    assert!(
        r.stderr()
            .contains("bob was shown a different key directory for epoch"),
        "{}",
        r.stderr()
    );
    // The message itself is kept: nothing else is lost.
    let got = sotto_test_support::sender_and_text(&out);
    assert!(got.contains(&("bob".into(), "hi alice".into())), "{got:?}");
}
