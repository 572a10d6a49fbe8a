//! Contact verification through the real binaries: both sides see the same
//! safety number; a server that rebinds a verified handle to another key is
//! caught, and sending needs the user's confirmation of the new key.

use sotto_test_support::{Profile, ServerProcess, World, malice};

/// The 60 digits of `sotto verify`.
fn number(out: &str) -> String {
    out.lines()
        .skip(1)
        .take(2)
        .flat_map(|l| l.split(' '))
        .collect::<String>()
}

/// A lazy malicious server: the handle `victim` now names the account
/// registered as `impostor` (whose keys name `impostor`).
fn rebind(server: &ServerProcess, victim: &str, impostor: &str) {
    let db = rusqlite::Connection::open(server.data.join("server.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    db.execute(
        "UPDATE accounts SET handle = 'gone-' || handle WHERE handle = ?1",
        [victim],
    )
    .unwrap();
    db.execute(
        "UPDATE accounts SET handle = ?1 WHERE handle = ?2",
        [victim, impostor],
    )
    .unwrap();
}

fn status(p: &Profile, handle: &str) -> String {
    p.sotto(&["contacts"])
        .ok()
        .lines()
        .find(|l| l.starts_with(&format!("{handle}\t")))
        .unwrap_or_else(|| panic!("{handle} not a contact"))
        .rsplit('\t')
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn both_sides_see_the_same_safety_number() {
    let w = World::new(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");
    alice
        .sotto(&["verify", "bob"])
        .fails_with("not a contact yet");
    alice.sotto(&["send", "bob", "hi"]).ok();
    bob.sotto(&["receive"]).ok();
    let a = alice.sotto(&["verify", "bob"]).ok();
    let b = bob.sotto(&["verify", "alice"]).ok();
    assert_eq!(number(&a).len(), 60, "{a}");
    assert_eq!(number(&a), number(&b));
    assert!(a.contains('█') || a.contains('▀'), "no QR code:\n{a}");
    assert_eq!(status(&alice, "bob"), "unverified");
    alice.sotto(&["verify", "bob", "--confirm"]).ok();
    assert_eq!(status(&alice, "bob"), "verified");
}

#[test]
fn a_server_answering_with_someone_elses_keys_is_refused() {
    let w = World::new(&[]);
    let server = &w.server;
    let alice = w.person("alice");
    let _bob = w.person("bob");
    let _mallory = w.person("mallory");
    rebind(server, "bob", "mallory");
    alice
        .sotto(&["send", "bob", "hi"])
        .fails_with("the server answered for bob with keys of someone else");
}

#[test]
fn a_server_swapping_a_verified_contacts_key_is_caught() {
    let w = World::new(&[]);
    let server = &w.server;
    let evil = World::new(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");
    let _carol = w.person("carol");
    let _fake_bob = evil.person("bob");
    let _fake_carol = evil.person("carol");
    alice.sotto(&["send", "bob", "hi bob"]).ok();
    alice.sotto(&["send", "carol", "hi carol"]).ok();
    let before = number(&alice.sotto(&["verify", "bob"]).ok());
    alice.sotto(&["verify", "bob", "--confirm"]).ok();

    malice::graft_account(server, &evil.server, "bob");
    malice::graft_account(server, &evil.server, "carol");

    // A verified contact: refused until the user confirms the new key.
    alice
        .sotto(&["group", "create", "team", "bob"])
        .fails_with("the identity key of bob changed since you verified it");
    assert_eq!(status(&alice, "bob"), "KEY CHANGED (was verified)");
    alice
        .sotto(&["group", "create", "team", "bob"])
        .fails_with("the identity key of bob changed since you verified it");
    let after = alice.sotto(&["verify", "bob"]).ok();
    assert!(
        after.contains("WARNING: bob's identity key changed"),
        "{after}"
    );
    assert_ne!(number(&after), before);

    // An unverified contact: allowed, with a loud warning.
    let r = alice.sotto(&["group", "create", "team", "carol"]);
    r.ok();
    assert!(
        r.stderr()
            .contains("WARNING: the identity key of carol changed"),
        "{}",
        r.stderr()
    );
    assert_eq!(status(&alice, "carol"), "KEY CHANGED");

    // The existing conversation with the real bob is not redirected: it is
    // pinned to bob's keys, so the server cannot move it.
    alice
        .sotto(&["send", "bob", "still you?"])
        .fails_with("the identity key of bob changed");
    bob.sotto(&["receive"]).ok();

    // The user accepts the new key; then it can be used.
    alice.sotto(&["verify", "bob", "--confirm"]).ok();
    assert_eq!(status(&alice, "bob"), "verified");
    alice.sotto(&["group", "create", "team2", "bob"]).ok();
}
