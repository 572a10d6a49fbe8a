//! Defence against a stranger who knows a handle, through the real
//! binaries and server: being added to a group or written to is shown;
//! a blocked account's messages, invitations and KeyPackage claims are
//! refused; a member leaves any conversation alone, one-to-one included,
//! with the only other member (the stranger) never completing it.

use sotto_test_support::{Profile, World};

/// Mailbox entries waiting on the server for `handle`'s devices.
fn waiting(w: &World, handle: &str) -> i64 {
    w.server_db()
        .query_row(
            "SELECT count(*) FROM mailbox m JOIN devices d ON d.device = m.device \
             JOIN accounts a ON a.account = d.account WHERE a.handle = ?1",
            [handle],
            |r| r.get(0),
        )
        .unwrap()
}

fn groups(p: &Profile) -> String {
    p.sotto(&["groups", "--json"]).ok()
}

#[test]
fn being_added_is_shown_and_a_blocked_stranger_gets_nothing_through() {
    let w = World::new(&[]);
    let (ann, eve) = (w.person("ann"), w.person("eve"));
    eve.sotto(&["send", "ann", "hi"]).ok();
    eve.sotto(&["group", "create", "party", "ann"]).ok();
    let r = ann.sotto(&["receive"]);
    assert_eq!(r.ok(), "eve: hi\n");
    assert!(
        r.stderr().contains("eve started this conversation"),
        "{}",
        r.stderr()
    );
    assert!(
        r.stderr().contains("eve added you to party"),
        "{}",
        r.stderr()
    );

    // An invitation already on its way when ann blocks eve.
    eve.sotto(&["group", "create", "trap", "ann"]).ok();
    ann.sotto(&["block", "eve"]).ok();
    assert_eq!(ann.sotto(&["blocked"]).ok(), "eve\n");
    ann.sotto(&["block", "nobody-known"])
        .fails_with("not a contact");

    eve.sotto(&["send", "ann", "spam 1"]).ok();
    eve.sotto(&["send", "party", "spam 2"]).ok();
    eve.sotto(&["send", "trap", "spam 3"]).ok();
    let r = ann.sotto(&["receive"]);
    assert_eq!(r.ok(), "", "a blocked account's messages were shown");
    assert!(!r.stderr().contains("trap"), "{}", r.stderr());
    // The refused invitation is not a conversation of ann's, and the
    // server no longer routes it to her.
    assert!(!groups(&ann).contains("trap"), "{}", groups(&ann));
    eve.sotto(&["send", "trap", "spam 4"]).ok();
    assert_eq!(waiting(&w, "ann"), 0, "the refused group still reaches ann");
    // No fresh KeyPackage for eve: she cannot start anything new.
    eve.sotto(&["group", "create", "again", "ann"])
        .fails_with("unknown handle");

    ann.sotto(&["unblock", "eve"]).ok();
    assert_eq!(ann.sotto(&["blocked"]).ok().trim(), "");
    eve.sotto(&["send", "ann", "sorry"]).ok();
    assert_eq!(ann.sotto(&["receive"]).ok(), "eve: sorry\n");
}

#[test]
fn a_member_leaves_a_group_and_a_one_to_one_conversation_alone() {
    let w = World::new(&[]);
    let (ann, eve) = (w.person("ann"), w.person("eve"));
    eve.sotto(&["send", "ann", "hi"]).ok();
    eve.sotto(&["group", "create", "trap", "ann"]).ok();
    ann.sotto(&["receive"]).ok();

    // Eve stays offline: nobody commits ann's removal, and she is out anyway.
    let r = ann.sotto(&["group", "leave", "trap"]);
    assert!(r.ok().starts_with("left trap"), "{}", r.stdout());
    let r = ann.sotto(&["group", "leave", "eve"]);
    assert!(r.ok().starts_with("left eve"), "{}", r.stdout());

    eve.sotto(&["send", "trap", "still there?"]).ok();
    // Eve's client commits ann's leave first; then nobody is left to
    // receive in their one-to-one conversation, and eve is told so.
    eve.sotto(&["send", "ann", "hello?"])
        .fails_with("ann has no device left here");
    assert_eq!(waiting(&w, "ann"), 0, "the server still routes to ann");
    assert_eq!(ann.sotto(&["receive"]).ok(), "");
    // The history stays readable; sending there is refused.
    assert!(ann.sotto(&["history", "eve"]).ok().contains("hi"));
    ann.sotto(&["send", "trap", "x"])
        .fails_with("no longer a member");
    // Eve's client commits ann's removal when it next runs.
    eve.sotto(&["receive"]).ok();
    let g = groups(&eve);
    assert!(g.contains(r#""members":["eve"]"#), "{g}");
}
