//! The wording of the client library's warnings ([`sotto_client::Warning`]):
//! one line each, the same in `sotto` commands (on standard error), the
//! chat window and the daemon's `warning` notifications (docs/JSON-RPC.md).
//! Names, handles and reasons in them come from the network: a front end
//! makes the line safe for its screen (`display`, `tui::text`).

use crate::notice;
use sotto_client::{NotSentBecause, Unread, Warning};

/// The line that tells the user.
pub fn text(w: &Warning) -> String {
    match w {
        Warning::KeyChanged { handle } => format!(
            "WARNING: the identity key of {handle} changed. Compare the new safety number with `sotto verify {handle}` before trusting it"
        ),
        Warning::NewDevices { who, devices } => {
            let ids: Vec<String> = devices.iter().map(|d| d.short()).collect();
            format!(
                "WARNING: {who} has a new device ({}): if {who} did not link it, compare safety numbers (`sotto verify {who}`)",
                ids.join(", ")
            )
        }
        Warning::DevicesChanged { who, count } => {
            format!("WARNING: the devices of {who} changed: {count} device(s) now")
        }
        Warning::OwnDeviceLeftOut { device } => format!(
            "your device {} has no key packages: it is not in the new conversation",
            device.short()
        ),
        Warning::UnsignedKillRecord => {
            "WARNING: the server offered a kill-code record the account did not sign; ignored"
                .to_owned()
        }
        Warning::TimerChanged {
            conversation,
            seconds,
        } => notice::timer(conversation, *seconds),
        Warning::OutOfSync {
            conversation,
            missing,
        } => notice::out_of_sync(conversation, *missing),
        Warning::Rejoined {
            conversation,
            missed,
        } => notice::rejoined(conversation, *missed),
        Warning::Readded {
            conversation,
            by,
            missed,
        } => notice::readded(conversation, by.as_ref(), *missed),
        Warning::RejoinFailed {
            conversation,
            reason,
        } => format!("{conversation}: could not rejoin: {reason}"),
        Warning::Unreadable {
            what,
            from,
            conversation,
            reason,
        } => unreadable(*what, from, conversation, reason),
        Warning::FileSetAside { name, from, reason } => {
            format!("could not save the file {name} from {from}: {reason}; set aside")
        }
        Warning::FileGone { name, from } => {
            format!("the file {name} from {from} is no longer on the server")
        }
        Warning::FileTampered { name, from } => format!(
            "the file {name} from {from} does not match what was sent (hash mismatch): refused"
        ),
        Warning::FileSaved { name, from, path } => format!("saved {name} from {from} to {path}"),
        Warning::ChangeRefused { reason } => {
            format!("a change this device staged was refused: {reason}")
        }
        Warning::NotSent {
            conversation,
            why: NotSentBecause::QueuedByOlderVersion,
        } => format!(
            "a message to {conversation} queued by an older version could not be sent again: send it again"
        ),
        Warning::NotSent {
            conversation,
            why: NotSentBecause::NoLongerMember,
        } => format!("a message to {conversation} was not sent: this device is no longer a member"),
        Warning::DirectoryAlarm { what } => format!(
            "ALARM: the server's key directory shows your account something you did not do: {what}. The server may be showing others false keys for you; tell your contacts to compare safety numbers"
        ),
    }
}

fn unreadable(what: Unread, from: &str, conversation: &str, reason: &str) -> String {
    let what = match what {
        Unread::InvalidWipe => {
            return "a wipe order that does not prove the kill code was ignored".to_owned();
        }
        Unread::UnexpectedDevice => return "unexpected device message".to_owned(),
        Unread::Message => "a message",
        Unread::Change => "a change to the group",
        Unread::Proposal => "a proposal",
        Unread::Invitation => "an invitation",
    };
    if from.is_empty() && conversation.is_empty() {
        return format!("{what} could not be read ({reason})");
    }
    format!("{what} from {from} in {conversation} could not be read ({reason})")
}

#[cfg(test)]
mod tests {
    use sotto_client::Warning;
    use sotto_proto::{DeviceId, Handle};

    use super::*;

    #[test]
    fn every_warning_has_its_line() {
        let h = Handle::new("bob").unwrap();
        let d = DeviceId([0xab; 32]);
        let cases: Vec<(Warning, String)> = vec![
            (
                Warning::KeyChanged { handle: h.clone() },
                "WARNING: the identity key of bob changed. Compare the new safety number with `sotto verify bob` before trusting it".into(),
            ),
            (
                Warning::NewDevices { who: "bob".into(), devices: vec![d] },
                format!("WARNING: bob has a new device ({}): if bob did not link it, compare safety numbers (`sotto verify bob`)", d.short()),
            ),
            (
                Warning::DevicesChanged { who: "bob".into(), count: 2 },
                "WARNING: the devices of bob changed: 2 device(s) now".into(),
            ),
            (
                Warning::OwnDeviceLeftOut { device: d },
                format!("your device {} has no key packages: it is not in the new conversation", d.short()),
            ),
            (
                Warning::UnsignedKillRecord,
                "WARNING: the server offered a kill-code record the account did not sign; ignored".into(),
            ),
            (
                Warning::TimerChanged { conversation: "ops".into(), seconds: Some(120) },
                "ops: messages now disappear after 2m".into(),
            ),
            (
                Warning::TimerChanged { conversation: "ops".into(), seconds: None },
                "ops: messages no longer disappear".into(),
            ),
            (
                Warning::RejoinFailed { conversation: "ops".into(), reason: "no".into() },
                "ops: could not rejoin: no".into(),
            ),
            (
                Warning::Unreadable { what: Unread::Message, from: "bob".into(), conversation: "ops".into(), reason: "bad".into() },
                "a message from bob in ops could not be read (bad)".into(),
            ),
            (
                Warning::Unreadable { what: Unread::InvalidWipe, from: String::new(), conversation: String::new(), reason: String::new() },
                "a wipe order that does not prove the kill code was ignored".into(),
            ),
            (
                Warning::FileSetAside { name: "a.bin".into(), from: "bob".into(), reason: "disk full".into() },
                "could not save the file a.bin from bob: disk full; set aside".into(),
            ),
            (
                Warning::FileGone { name: "a.bin".into(), from: "bob".into() },
                "the file a.bin from bob is no longer on the server".into(),
            ),
            (
                Warning::FileTampered { name: "a.bin".into(), from: "bob".into() },
                "the file a.bin from bob does not match what was sent (hash mismatch): refused".into(),
            ),
            (
                Warning::FileSaved { name: "a.bin".into(), from: "bob".into(), path: "/d/a.bin".into() },
                "saved a.bin from bob to /d/a.bin".into(),
            ),
            (
                Warning::ChangeRefused { reason: "stale".into() },
                "a change this device staged was refused: stale".into(),
            ),
            (
                Warning::NotSent { conversation: "ops".into(), why: NotSentBecause::NoLongerMember },
                "a message to ops was not sent: this device is no longer a member".into(),
            ),
        ];
        // The branches the cases above leave out, in the sentences of before.
        let more: Vec<(Warning, String)> = vec![
            (
                Warning::OutOfSync { conversation: "ops".into(), missing: false },
                "ops: this device lost its state of this conversation (restored from an older backup?): rejoining it; until then it cannot read or send there".into(),
            ),
            (
                Warning::OutOfSync { conversation: "ops".into(), missing: true },
                "ops: messages arrive for a conversation this device does not have (restored from an older backup?): rejoining it".into(),
            ),
            (
                Warning::Rejoined { conversation: "ops".into(), missed: 3 },
                "ops: this device rejoined the conversation after losing its state of it; messages sent to it while it was out of sync could not be read (3 deliveries set aside)".into(),
            ),
            (
                Warning::Readded { conversation: "ops".into(), by: Some(h), missed: 1 },
                "ops: this device was re-added by bob after losing its state of the conversation; messages sent to it while it was out of sync could not be read (1 deliveries set aside)".into(),
            ),
            (
                Warning::Readded { conversation: "ops".into(), by: None, missed: 0 },
                "ops: this device was re-added by a member after losing its state of the conversation; messages sent to it while it was out of sync could not be read (0 deliveries set aside)".into(),
            ),
            (
                Warning::Unreadable { what: Unread::Change, from: "device abababab".into(), conversation: "ops".into(), reason: "bad".into() },
                "a change to the group from device abababab in ops could not be read (bad)".into(),
            ),
            (
                Warning::Unreadable { what: Unread::Proposal, from: "bob".into(), conversation: "ops".into(), reason: "bad".into() },
                "a proposal from bob in ops could not be read (bad)".into(),
            ),
            (
                Warning::Unreadable { what: Unread::Invitation, from: "bob".into(), conversation: "ops".into(), reason: "bad".into() },
                "an invitation from bob in ops could not be read (bad)".into(),
            ),
            (
                Warning::Unreadable { what: Unread::UnexpectedDevice, from: String::new(), conversation: String::new(), reason: String::new() },
                "unexpected device message".into(),
            ),
            // An application message that does not decode (sotto-client's
            // receive.rs): the reason says so.
            (
                Warning::Unreadable { what: Unread::Message, from: String::new(), conversation: String::new(), reason: "undecodable application message".into() },
                "a message could not be read (undecodable application message)".into(),
            ),
            (
                Warning::NotSent { conversation: "ops".into(), why: NotSentBecause::QueuedByOlderVersion },
                "a message to ops queued by an older version could not be sent again: send it again".into(),
            ),
            (
                Warning::DirectoryAlarm { what: "version 2 (epoch 5) of your handle names another account key".into() },
                "ALARM: the server's key directory shows your account something you did not do: version 2 (epoch 5) of your handle names another account key. The server may be showing others false keys for you; tell your contacts to compare safety numbers".into(),
            ),
        ];
        let mut kinds = std::collections::BTreeSet::new();
        for (w, want) in cases.into_iter().chain(more) {
            assert_eq!(text(&w), want, "{w:?}");
            let kind = w.kind();
            assert!(
                !kind.is_empty() && kind.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{kind}"
            );
            kinds.insert(kind);
        }
        // Every variant is worded above, each with a name of its own.
        assert_eq!(kinds.len(), 18, "{kinds:?}");
    }
}
