//! The `sotto` command-line client. `main.rs` parses the command line with
//! clap and calls into `sotto-client`. This library holds what the command
//! line, the terminal UI and the daemon share, and the latter two:
//!
//! - [`ops`]: the operations all three front ends offer, one implementation;
//! - [`worker`]: the task that owns the client in the long-running front
//!   ends (connection kept, reconnects, pushed messages);
//! - [`tui`]: `sotto chat` (state in `app`, drawing in `ui`);
//! - [`daemon`]: `sotto daemon --json-rpc`;
//! - [`display`]: others' text made safe for a terminal (every front end);
//! - [`notice`]: the wording of conversation notices (every front end);
//! - the JSON shapes of the command line's output.

pub mod daemon;
pub mod display;
pub mod notice;
pub mod ops;
pub mod tui;
pub mod warning;
pub mod worker;

use sotto_client::{GroupInfo, ReceivedMessage};

/// One received message as one line of JSON (`sotto receive --json`).
/// Times are milliseconds since the Unix epoch; `reply_to` is the id of the
/// message it replies to, or `null`.
pub fn message_json(m: &ReceivedMessage) -> serde_json::Value {
    serde_json::json!({
        "id": m.id.to_hex(),
        "conversation": m.conversation,
        "sender": m.sender,
        "text": m.text,
        "sent_at": m.sent_at_ms,
        "received_at": m.received_at_ms,
        "reply_to": m.reply_to.map(|r| r.to_hex()),
        "edited_at": m.edited_at_ms,
        "deleted": m.deleted,
        "unsupported": m.unsupported,
        "delivered_to": m.delivered_to,
        "read_by": m.read_by,
        "reactions": m.reactions.iter().map(|(emoji, count)| {
            serde_json::json!({ "emoji": emoji, "count": count })
        }).collect::<Vec<_>>(),
    })
}

/// One group as one line of JSON (`sotto groups --json`).
pub fn group_json(g: &GroupInfo) -> serde_json::Value {
    serde_json::json!({
        "id": g.id.to_hex(),
        "name": g.name,
        "state": g.state.as_str(),
        "epoch": g.epoch,
        "members": g.members,
        "admins": g.admins,
        "no_device_left": g.no_device_left,
        "disappear_after_s": g.disappear_after_s,
        "epoch_authenticator": g.epoch_authenticator,
    })
}
