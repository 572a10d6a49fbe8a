//! Disappearing messages through the real binaries: the timer is
//! conversation state every member sees; expired messages leave the
//! sender's and recipients' stores and the server, also for a recipient who
//! was offline. Timers are two seconds; no wait is longer than 3.3 s.

use std::time::Duration;

use sotto_test_support::{Profile, ServerProcess, World};

fn history(p: &Profile, conv: &str) -> Vec<String> {
    p.sotto(&["history", conv])
        .ok()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn application_messages_on_server(server: &ServerProcess) -> i64 {
    let db = rusqlite::Connection::open(server.data.join("server.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.query_row("SELECT count(*) FROM messages WHERE kind = 0", [], |r| {
        r.get(0)
    })
    .unwrap()
}

#[test]
fn a_disappearing_message_leaves_every_store() {
    let w = World::new(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");
    alice.sotto(&["send", "bob", "this one stays"]).ok();
    alice
        .sotto(&["disappear", "bob", "soon"])
        .fails_with("is not a duration");
    alice.sotto(&["disappear", "bob", "2s"]).ok();
    let r = bob.sotto(&["receive"]);
    assert_eq!(r.ok(), "alice: this one stays\n");
    assert!(
        r.stderr()
            .contains("alice: messages now disappear after 2s"),
        "{}",
        r.stderr()
    );
    alice.sotto(&["send", "bob", "gone soon"]).ok();
    assert_eq!(bob.sotto(&["receive"]).ok(), "alice: gone soon\n");
    assert_eq!(
        history(&bob, "alice"),
        ["alice: this one stays", "alice: gone soon"]
    );
    assert_eq!(
        history(&alice, "bob"),
        ["alice: this one stays", "alice: gone soon"]
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(history(&bob, "alice"), ["alice: this one stays"]);
    assert_eq!(history(&alice, "bob"), ["alice: this one stays"]);
    // Off again: new messages stay.
    bob.sotto(&["disappear", "alice", "off"]).ok();
    let r = alice.sotto(&["receive"]);
    assert!(
        r.stderr().contains("bob: messages no longer disappear"),
        "{}",
        r.stderr()
    );
}

#[test]
fn the_server_drops_an_expired_message_an_offline_member_never_fetched() {
    let w = World::new(&[]);
    let server = &w.server;
    let alice = w.person("alice");
    let bob = w.person("bob");
    let carol = w.person("carol");
    alice
        .sotto(&["group", "create", "ops", "bob", "carol"])
        .ok();
    bob.sotto(&["receive"]).ok();
    bob.sotto(&["disappear", "ops", "5s"])
        .fails_with("only admins change the group's timer");
    alice.sotto(&["disappear", "ops", "2s"]).ok();
    alice.sotto(&["send", "ops", "ephemeral"]).ok();
    assert_eq!(application_messages_on_server(server), 1);
    // Expiry at 2 s; the server's purge runs every second.
    std::thread::sleep(Duration::from_millis(3300));
    assert_eq!(
        application_messages_on_server(server),
        0,
        "the server kept an expired message"
    );
    // Carol was offline the whole time: she gets the timer, not the message.
    assert_eq!(carol.sotto(&["receive"]).ok(), "");
    let groups = carol.sotto(&["groups", "--json"]).ok();
    assert!(groups.contains(r#""disappear_after_s":2"#), "{groups}");
    assert!(history(&carol, "ops").is_empty());
}
