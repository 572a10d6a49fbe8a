//! Replies end to end on the real command line and the real server: bob
//! replies to alice's message by (a prefix of) its id, alice sees which
//! message it answers in `receive --json` and `history`, and a reply to a
//! message nobody has still arrives, as a reply to an unknown id.

use serde_json::Value;
use sotto_test_support::{Profile, World};

fn receive_json(p: &Profile) -> Vec<Value> {
    p.sotto(&["receive", "--json"])
        .ok()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad json line {l:?}: {e}")))
        .collect()
}

fn history_json(p: &Profile, conversation: &str) -> Vec<Value> {
    p.sotto(&["history", conversation, "--json"])
        .ok()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad json line {l:?}: {e}")))
        .collect()
}

#[test]
fn bob_replies_to_alice_by_id_and_she_sees_what_he_answers() {
    let w = World::new(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");

    alice.sotto(&["send", "bob", "lunch at noon?"]).ok();
    let got = receive_json(&bob);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["reply_to"], Value::Null, "not a reply: {got:?}");
    let original = got[0]["id"].as_str().unwrap().to_owned();

    // A unique prefix of the id, as a person would copy it.
    let out = bob
        .sotto(&[
            "send",
            "alice",
            "yes, at noon",
            "--reply-to",
            &original[..8],
        ])
        .ok();
    assert!(out.starts_with("sent "), "{out}");
    let reply_id = out.trim().trim_start_matches("sent ").to_owned();

    let got = receive_json(&alice);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["text"], "yes, at noon");
    assert_eq!(got[0]["sender"], "bob");
    assert_eq!(got[0]["id"], reply_id.as_str());
    assert_eq!(got[0]["reply_to"], original.as_str(), "{got:?}");

    // Both histories keep it: alice's received copy and bob's sent one.
    for (p, conv) in [(&alice, "bob"), (&bob, "alice")] {
        let h = history_json(p, conv);
        let replies: Vec<(&str, &str)> = h
            .iter()
            .map(|m| {
                (
                    m["text"].as_str().unwrap(),
                    m["reply_to"].as_str().unwrap_or("-"),
                )
            })
            .collect();
        assert_eq!(
            replies,
            [("lunch at noon?", "-"), ("yes, at noon", original.as_str())],
            "{conv}"
        );
    }
    let plain = alice.sotto(&["history", "bob"]).ok();
    assert!(
        plain.contains(&format!("bob (reply to {}): yes, at noon", &original[..8])),
        "{plain}"
    );

    // A full id nobody has is a reply to a message alice doesn't have: it
    // still arrives, naming that id.
    let unknown = "ee".repeat(16);
    bob.sotto(&[
        "send",
        "alice",
        "about that other thing",
        "--reply-to",
        &unknown,
    ])
    .ok();
    let got = receive_json(&alice);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["text"], "about that other thing");
    assert_eq!(got[0]["reply_to"], unknown.as_str());

    // Without --json the line names the start of the id replied to.
    bob.sotto(&["send", "alice", "and one more", "--reply-to", &original])
        .ok();
    assert_eq!(
        alice.sotto(&["receive"]).ok(),
        format!("bob (reply to {}): and one more\n", &original[..8])
    );

    // A prefix that matches nothing, or is no hex, is a clear error.
    bob.sotto(&["send", "alice", "x", "--reply-to", "ffffffffff"])
        .fails_with("no message ffffffffff");
    bob.sotto(&["send", "alice", "x", "--reply-to", "not-an-id"])
        .fails_with("not a message id");
    // Nothing was sent by the failed attempts.
    assert!(receive_json(&alice).is_empty());
}
