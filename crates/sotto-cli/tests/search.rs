//! `sotto search` on the real command line and the real server: what was
//! sent and received is found across conversations, newest first, or in
//! one; typed query syntax is only text; a stranger's text is printed with
//! its controls visible; a disappeared message is no longer found.
//!
//! Time: every binary runs on a wall clock the test moves
//! (`World::with_fake_time`, libfaketime), so a one-minute timer runs out
//! without a wait.

use std::time::Duration;

use serde_json::Value;
use sotto_test_support::{Profile, World};

fn search(p: &Profile, args: &[&str]) -> Vec<String> {
    let mut all = vec!["search"];
    all.extend(args);
    p.sotto(&all).ok().lines().map(str::to_owned).collect()
}

#[test]
fn search_finds_messages_in_every_conversation_or_one() {
    let w = World::with_fake_time(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");
    let carol = w.person("carol");
    alice
        .sotto(&["send", "bob", "Dinner at the Café Flore?"])
        .ok();
    bob.sotto(&["receive"]).ok();
    bob.sotto(&["send", "alice", "the cafe is closed\x1b[2J"])
        .ok();
    alice
        .sotto(&["group", "create", "ops", "bob", "carol"])
        .ok();
    alice
        .sotto(&["send", "ops", "cafeteria menu for the offsite"])
        .ok();
    alice.sotto(&["receive"]).ok();

    // Sent and received, every conversation, newest first; the last word
    // a prefix; accents aside; bob's escape sequence shown, not obeyed.
    // (Bob's receipts for alice's first message came in with her group
    // creation; `search` shows them as `history` does.)
    assert_eq!(
        search(&alice, &["CAFE"]),
        [
            "[ops] alice: cafeteria menu for the offsite",
            "[bob] bob: the cafe is closed\\e[2J",
            "[bob] alice: Dinner at the Café Flore? (delivered to 1, read by 1)",
        ]
    );
    assert_eq!(
        search(&alice, &["cafe", "--conversation", "ops"]),
        ["[ops] alice: cafeteria menu for the offsite"]
    );
    assert_eq!(
        search(&alice, &["flore dinner"]),
        ["[bob] alice: Dinner at the Café Flore? (delivered to 1, read by 1)"]
    );
    // Carol was not in the one-to-one conversation; she has the group's.
    carol.sotto(&["receive"]).ok();
    assert_eq!(
        search(&carol, &["cafe"]),
        ["[ops] alice: cafeteria menu for the offsite"]
    );

    // JSON: one object per line, as `history --json` prints them.
    let lines = search(&alice, &["closed", "--json", "--conversation", "@bob"]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let m: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(m["text"], "the cafe is closed\x1b[2J");
    assert_eq!(
        (&m["sender"], &m["conversation"]),
        (&"bob".into(), &"bob".into())
    );
    let history = alice.sotto(&["history", "bob", "--json"]).ok();
    assert!(history.lines().any(|l| l == lines[0]), "{history}");

    // Query syntax is text; nothing to search for is an error.
    for hostile in ["\"", "NEAR(", "cafe AND", "*", "text:cafe", "\"cafe"] {
        alice.sotto(&["search", hostile]).ok();
    }
    assert_eq!(search(&alice, &["\"cafe"]).len(), 3);
    assert!(search(&alice, &["cafe OR dinner"]).is_empty());
    alice
        .sotto(&["search", "  "])
        .fails_with("nothing to search for");
    alice
        .sotto(&["search", "cafe", "--conversation", "nobody"])
        .fails_with("nobody");

    // A disappearing message is found until its time, then no more.
    alice.sotto(&["disappear", "bob", "1m"]).ok();
    alice
        .sotto(&["send", "bob", "the rendezvous is at nine"])
        .ok();
    bob.sotto(&["receive"]).ok();
    assert_eq!(
        search(&alice, &["rendezvous"]),
        ["[bob] alice: the rendezvous is at nine"]
    );
    assert_eq!(
        search(&bob, &["rendezvous"]),
        ["[alice] alice: the rendezvous is at nine"]
    );
    w.fake_time().advance(Duration::from_secs(61));
    for p in [&alice, &bob] {
        assert!(search(p, &["rendezvous"]).is_empty());
        assert_eq!(search(p, &["dinner"]).len(), 1, "the rest stays");
    }
}
