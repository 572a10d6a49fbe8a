//! The `sotto` command-line client. `main.rs` parses the command line with
//! clap and calls into `sotto-client`; this library only holds what the
//! binary and its tests share: the JSON shapes of its output.

use sotto_client::{GroupInfo, ReceivedMessage};

/// One received message as one line of JSON (`sotto receive --json`).
/// Times are milliseconds since the Unix epoch.
pub fn message_json(m: &ReceivedMessage) -> serde_json::Value {
    serde_json::json!({
        "id": m.id.to_hex(),
        "conversation": m.conversation,
        "sender": m.sender,
        "text": m.text,
        "sent_at": m.sent_at_ms,
        "received_at": m.received_at_ms,
    })
}

/// One group as one line of JSON (`sotto groups --json`).
pub fn group_json(g: &GroupInfo) -> serde_json::Value {
    serde_json::json!({
        "id": g.id.to_hex(),
        "name": g.name,
        "state": g.state,
        "epoch": g.epoch,
        "members": g.members,
        "admins": g.admins,
        "disappear_after_s": g.disappear_after_s,
    })
}
