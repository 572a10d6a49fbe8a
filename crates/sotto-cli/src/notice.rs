//! The wording of conversation notices ([`sotto_client::Notice`]): one
//! line each, the same in `sotto receive`, the chat window and the
//! daemon's `notice` notifications (docs/JSON-RPC.md). Names and handles
//! in them come from the network: a front end makes the line safe for its
//! screen (`display`, `tui::text`).

use sotto_client::client::human;
use sotto_client::{Notice, NoticeKind};
use sotto_proto::Handle;

/// The line that tells the user what happened.
pub fn text(n: &Notice) -> String {
    let name = &n.name;
    match &n.what {
        NoticeKind::AddedYou { by } => format!("{by} added you to {name}"),
        NoticeKind::Started { by } => format!("{by} started this conversation"),
        NoticeKind::ThisDeviceJoined => format!("this device joined {name}"),
        NoticeKind::Readded { by, missed } => readded(name, by.as_ref(), *missed),
        NoticeKind::Rejoined { missed } => rejoined(name, *missed),
        NoticeKind::OutOfSync { missing } => out_of_sync(name, *missing),
        NoticeKind::Removed => format!("you are no longer a member of {name}"),
        NoticeKind::DeviceRejoined { handle, device } => {
            let who = handle
                .as_ref()
                .map_or_else(|| device.short(), |h| h.to_string());
            format!("{name}: a device of {who} rejoined")
        }
        NoticeKind::TimerChanged { seconds } => timer(name, *seconds),
        NoticeKind::MemberJoined { handle } => format!("{name}: {handle} joined"),
        NoticeKind::MemberLeft { handle } => format!("{name}: {handle} left"),
        NoticeKind::NoDeviceLeft { handle } => {
            format!(
                "{name}: {handle} has no device left (wiped): nobody can read this for {handle}"
            )
        }
    }
}

/// A conversation's timer changed (`None`: off). Also a warning's line.
pub(crate) fn timer(name: &str, seconds: Option<u64>) -> String {
    match seconds {
        Some(t) => format!("{name}: messages now disappear after {}", human(t)),
        None => format!("{name}: messages no longer disappear"),
    }
}

/// This device lost its state of `name` (or never had it, `missing`).
/// Also a warning's line.
pub(crate) fn out_of_sync(name: &str, missing: bool) -> String {
    if missing {
        format!(
            "{name}: messages arrive for a conversation this device does not have \
             (restored from an older backup?): rejoining it"
        )
    } else {
        format!(
            "{name}: this device lost its state of this conversation \
             (restored from an older backup?): rejoining it; \
             until then it cannot read or send there"
        )
    }
}

/// This device rejoined `name`. Also a warning's line.
pub(crate) fn rejoined(name: &str, missed: u64) -> String {
    format!(
        "{name}: this device rejoined the conversation after losing its state of it; \
         messages sent to it while it was out of sync could not be read ({missed} deliveries set aside)"
    )
}

/// `by` re-added this device to `name`. Also a warning's line.
pub(crate) fn readded(name: &str, by: Option<&Handle>, missed: u64) -> String {
    let by = by.map_or_else(|| "a member".to_owned(), Handle::to_string);
    format!(
        "{name}: this device was re-added by {by} after losing its state of the conversation; \
         messages sent to it while it was out of sync could not be read ({missed} deliveries set aside)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_proto::{GroupId, Handle};

    fn notice(what: NoticeKind) -> Notice {
        Notice {
            conversation: GroupId([1; 32]),
            name: "ops".into(),
            what,
            at_ms: 0,
        }
    }

    #[test]
    fn notices_read_as_before() {
        let h = |s: &str| Handle::new(s).unwrap();
        let cases = [
            (
                NoticeKind::AddedYou { by: h("eve") },
                "eve added you to ops",
            ),
            (
                NoticeKind::Started { by: h("eve") },
                "eve started this conversation",
            ),
            (NoticeKind::ThisDeviceJoined, "this device joined ops"),
            (NoticeKind::Removed, "you are no longer a member of ops"),
            (
                NoticeKind::TimerChanged { seconds: Some(120) },
                "ops: messages now disappear after 2m",
            ),
            (
                NoticeKind::TimerChanged { seconds: None },
                "ops: messages no longer disappear",
            ),
            (
                NoticeKind::MemberJoined { handle: h("dave") },
                "ops: dave joined",
            ),
            (NoticeKind::MemberLeft { handle: h("bob") }, "ops: bob left"),
            (
                NoticeKind::NoDeviceLeft { handle: h("bob") },
                "ops: bob has no device left (wiped): nobody can read this for bob",
            ),
        ];
        for (what, line) in cases {
            assert_eq!(text(&notice(what)), line);
        }
    }
}
