//! Issue 16, end to end on the real command line and the real server:
//! reactions, edits, deletion for everyone and receipts in a group of
//! three, as `receive --json`, `history` and `reactions` show them on
//! every member's device; and what a member may not do is refused before
//! anything is sent.

use serde_json::Value;
use sotto_test_support::{Profile, World};

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad json line {l:?}: {e}")))
        .collect()
}

fn receive_json(p: &Profile) -> Vec<Value> {
    json_lines(&p.sotto(&["receive", "--json"]).ok())
}

fn history_json(p: &Profile, conversation: &str) -> Vec<Value> {
    json_lines(&p.sotto(&["history", conversation, "--json"]).ok())
}

/// The one message of `got` with id `id`.
fn the<'a>(got: &'a [Value], id: &str) -> &'a Value {
    let hits: Vec<&Value> = got.iter().filter(|m| m["id"] == id).collect();
    assert_eq!(hits.len(), 1, "{id} in {got:?}");
    hits[0]
}

/// The message `id` as the last of `got` that shows it: each change
/// another device made to it shows it again.
fn latest<'a>(got: &'a [Value], id: &str) -> &'a Value {
    got.iter()
        .rfind(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {got:?}"))
}

#[test]
fn reactions_edits_deletions_and_receipts_reach_every_member() {
    let w = World::new(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");
    let carol = w.person("carol");
    alice
        .sotto(&["group", "create", "ops", "bob", "carol"])
        .ok();
    // Carol reads without telling.
    carol.sotto(&["read-receipts", "off"]).ok();
    let sent = alice.sotto(&["send", "ops", "meet at the north gate"]).ok();
    let id = sent.trim().trim_start_matches("sent ").to_owned();
    for p in [&bob, &carol] {
        let got = receive_json(p);
        let m = the(&got, &id);
        assert_eq!(m["text"], "meet at the north gate");
        assert_eq!(
            (m["deleted"].clone(), m["edited_at"].clone()),
            (false.into(), Value::Null)
        );
    }

    // Receipts: both devices decrypted it, bob was shown it (carol's read
    // receipts are off). `receive` took them in; `history` counts them.
    alice.sotto(&["receive"]).ok();
    let mine = history_json(&alice, "ops");
    let m = the(&mine, &id);
    assert_eq!(
        (m["delivered_to"].as_u64(), m["read_by"].as_u64()),
        (Some(2), Some(1)),
        "{m}"
    );
    assert!(
        alice
            .sotto(&["history", "ops"])
            .ok()
            .contains("(delivered to 2, read by 1)"),
        "the plain history shows the receipts"
    );

    // Reactions: bob and carol react by a prefix of the id; bob changes
    // his mind (one reaction per member); everyone sees the counts.
    assert_eq!(
        bob.sotto(&["react", "ops", &id[..8], "👍"]).ok().trim(),
        "reacted 👍"
    );
    carol.sotto(&["react", "ops", &id[..8], "👍"]).ok();
    bob.sotto(&["react", "ops", &id, "❤️"]).ok();
    let got = receive_json(&alice);
    // Alice's own message is shown again with the reactions it has now.
    assert_eq!(
        got.iter().filter(|m| m["id"] == id.as_str()).count(),
        3,
        "once per change"
    );
    let reactions = &latest(&got, &id)["reactions"];
    assert_eq!(
        reactions,
        &serde_json::json!([{"emoji": "👍", "count": 1}, {"emoji": "❤️", "count": 1}]),
        "{got:?}"
    );
    assert_eq!(
        alice.sotto(&["reactions", "ops", &id]).ok().trim(),
        "👍 carol, ❤️ bob"
    );
    // Carol takes hers back.
    carol.sotto(&["react", "ops", &id, "--remove"]).ok();
    bob.sotto(&["receive"]).ok();
    assert_eq!(bob.sotto(&["reactions", "ops", &id]).ok().trim(), "❤️ bob");

    // What may not be done is refused before anything is sent.
    bob.sotto(&["edit", "ops", &id, "bob was here"])
        .fails_with("only its sender can edit");
    bob.sotto(&["delete", "ops", &id])
        .fails_with("only its sender can delete");
    bob.sotto(&["react", "ops", &id, "ok"])
        .fails_with("not an emoji");
    carol
        .sotto(&["react", "ops", &id, "--remove"])
        .fails_with("you did not react");

    // Alice edits: every member's device shows the new text, as edited.
    assert_eq!(
        alice
            .sotto(&["edit", "ops", &id, "meet at the south gate"])
            .ok()
            .trim(),
        "edited"
    );
    for p in [&bob, &carol] {
        let got = receive_json(p);
        let m = latest(&got, &id);
        assert_eq!(m["text"], "meet at the south gate");
        assert!(m["edited_at"].is_u64(), "{m}");
    }
    assert!(
        carol
            .sotto(&["history", "ops"])
            .ok()
            .contains("alice: meet at the south gate (edited)")
    );

    // Alice deletes it for everyone: a tombstone everywhere, the reactions
    // gone with it.
    assert_eq!(
        alice.sotto(&["delete", "ops", &id]).ok().trim(),
        "deleted for everyone"
    );
    for p in [&bob, &carol] {
        let got = receive_json(p);
        let m = latest(&got, &id);
        assert_eq!(
            (m["deleted"].clone(), m["text"].clone()),
            (true.into(), "".into()),
            "{m}"
        );
        assert_eq!(m["reactions"], serde_json::json!([]));
        let h = p.sotto(&["history", "ops"]).ok();
        assert!(h.contains("alice: (message deleted)"), "{h}");
        assert!(!h.contains("gate"), "{h}");
    }
    let h = history_json(&alice, "ops");
    assert_eq!(the(&h, &id)["deleted"], true);
    alice
        .sotto(&["edit", "ops", &id, "again"])
        .fails_with("that message was deleted");
    // None of the refused attempts went out.
    for p in [&alice, &bob, &carol] {
        for m in receive_json(p) {
            assert!(m["text"] != "bob was here" && m["text"] != "again", "{m}");
            assert!(!m["reactions"].to_string().contains("\"ok\""), "{m}");
        }
        let h = history_json(p, "ops");
        assert!(!h.iter().any(|m| m["text"] == "bob was here"), "{h:?}");
    }
}
