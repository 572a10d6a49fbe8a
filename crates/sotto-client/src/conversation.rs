//! What a conversation is on this device, as the rest of the client
//! speaks of it: its state, what the user is told happened in it
//! (without wording: the front end words it), how a send or group argument
//! names one, how the server settled a commit of it, what became of a
//! message sent to it, what the user is warned of (without wording too),
//! and the durations of its disappearing timer. No IO.

use sotto_proto::{DeviceId, GroupId, Handle, MessageId};

/// Something that happened in a conversation, for the user: who was
/// involved and what, without wording (the front end words it). Names and
/// handles come from the network: untrusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The conversation it happened in.
    pub conversation: GroupId,
    /// The conversation's name when it happened: a group's name or the
    /// peer's handle.
    pub name: String,
    /// What happened.
    pub what: NoticeKind,
    /// When this device learned it, on the clock that stamps a received
    /// message's `received_at_ms`: a notice and the messages that came with
    /// it sort in the order they came (0 if not known).
    pub at_ms: u64,
}

/// What a [`Notice`] says happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoticeKind {
    /// `by` added this account to the group.
    AddedYou {
        /// Who added it.
        by: Handle,
    },
    /// `by` started this one-to-one conversation.
    Started {
        /// The peer.
        by: Handle,
    },
    /// This device joined the conversation (another device of this account
    /// added it).
    ThisDeviceJoined,
    /// This device was re-added after it lost its state of the
    /// conversation; `missed` deliveries it could not read were set aside.
    Readded {
        /// Who re-added it, if known.
        by: Option<Handle>,
        /// Deliveries set aside while it was out of sync.
        missed: u64,
    },
    /// This device rejoined by itself after it lost its state;
    /// `missed` deliveries were set aside.
    Rejoined {
        /// Deliveries set aside while it was out of sync.
        missed: u64,
    },
    /// This device found itself out of sync and rejoins (`missing`: it
    /// does not hold the conversation at all).
    OutOfSync {
        /// The conversation is not on this device at all.
        missing: bool,
    },
    /// This account is no longer a member.
    Removed,
    /// A device of a member rejoined with a fresh leaf.
    DeviceRejoined {
        /// The member's handle, if it is a member.
        handle: Option<Handle>,
        /// The device.
        device: DeviceId,
    },
    /// The disappearing timer changed, in seconds (`None`: off).
    TimerChanged {
        /// The new timer.
        seconds: Option<u64>,
    },
    /// A member joined.
    MemberJoined {
        /// Its handle.
        handle: Handle,
    },
    /// A member left or was removed.
    MemberLeft {
        /// Its handle.
        handle: Handle,
    },
    /// A member's last devices left as they were wiped (kill code): nobody
    /// of that account can read the conversation any more.
    NoDeviceLeft {
        /// Its handle.
        handle: Handle,
    },
}

impl Notice {
    pub(crate) fn new(conversation: GroupId, name: String, what: NoticeKind) -> Self {
        Self {
            conversation,
            name,
            what,
            at_ms: 0,
        }
    }

    /// The notice, learned at `ms`.
    pub(crate) fn at(mut self, ms: u64) -> Self {
        self.at_ms = ms;
        self
    }
}

/// The receipts of one of this account's messages, as they are now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The message's conversation.
    pub conversation: GroupId,
    /// The message.
    pub id: MessageId,
    /// How many other members reported a device of theirs decrypted it.
    pub delivered_to: u32,
    /// How many other members reported they were shown it.
    pub read_by: u32,
}

/// A conversation's state on this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConversationState {
    /// A member: it reads and sends there.
    Active,
    /// It proposed its own removal and waits for a member to commit it.
    Leaving,
    /// No longer a member (removed, or left).
    Removed,
}

impl ConversationState {
    /// The word the store keeps (and `sotto groups --json` prints).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Leaving => "leaving",
            Self::Removed => "removed",
        }
    }

    /// The state a stored word names; an unknown word reads as removed.
    pub fn from_stored(s: &str) -> Self {
        match s {
            "active" => Self::Active,
            "leaving" => Self::Leaving,
            _ => Self::Removed,
        }
    }
}

/// How the server settled a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Submitted {
    /// Applied; the group is at this epoch.
    Committed(u64),
    /// Another commit won; the group is at this epoch.
    Lost(u64),
}

/// What a `send` or `group` argument names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// A one-to-one conversation with this handle.
    Handle(Handle),
    /// A group.
    Group(GroupId),
}

/// Seconds as a short duration: `90s`, `5m`, `2h`, `7d`.
pub fn human(s: u64) -> String {
    match s {
        s if s % 86_400 == 0 && s > 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 && s > 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Parses `30s`, `5m`, `2h`, `7d` or a number of seconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    let (n, unit) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let n: u64 = n.parse().ok()?;
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        'w' => 604_800,
        _ => return None,
    };
    n.checked_mul(mult).filter(|v| *v > 0)
}

/// What became of a message handed to [`crate::Client::send`]: both mean it is
/// safe on this device and will reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The server accepted it (durably) for every member.
    Accepted(MessageId),
    /// Encrypted and kept in the outbox: the server could not be reached
    /// or could not take it yet (busy, storage down for a moment, a group
    /// that kept changing); the next operation that reaches the server
    /// sends it.
    Queued(MessageId),
}

impl Sent {
    /// The message's id.
    pub fn id(&self) -> MessageId {
        match self {
            Self::Accepted(id) | Self::Queued(id) => *id,
        }
    }
}

/// Something the user must be told that is not a conversation's event:
/// without wording (the front end words it, as it does [`Notice`]s).
/// Names, handles and reasons come from the network or from errors: a
/// front end makes them safe for its screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// A contact's identity key changed: compare safety numbers.
    KeyChanged {
        /// The contact.
        handle: Handle,
    },
    /// An account (a contact's handle, or its short id) has devices not
    /// seen before.
    NewDevices {
        /// Whose.
        who: String,
        /// The new devices.
        devices: Vec<DeviceId>,
    },
    /// An account's device list changed without a new device (some left).
    DevicesChanged {
        /// Whose.
        who: String,
        /// How many devices it has now.
        count: usize,
    },
    /// One of this account's own devices has no KeyPackage: it is not in
    /// the new conversation.
    OwnDeviceLeftOut {
        /// The device.
        device: DeviceId,
    },
    /// The server offered a kill-code record the account did not sign;
    /// ignored.
    UnsignedKillRecord,
    /// A conversation's disappearing timer changed (`None`: off).
    TimerChanged {
        /// The conversation's name.
        conversation: String,
        /// The new timer, in seconds.
        seconds: Option<u64>,
    },
    /// This device lost its state of a conversation (or never had it,
    /// `missing`) and rejoins it.
    OutOfSync {
        /// The conversation's name.
        conversation: String,
        /// Whether this device does not hold the conversation at all.
        missing: bool,
    },
    /// This device rejoined a conversation; `missed` deliveries sent while
    /// it was out of sync could not be read.
    Rejoined {
        /// The conversation's name.
        conversation: String,
        /// Deliveries set aside.
        missed: u64,
    },
    /// A member's commit re-added this device to a conversation it had
    /// lost.
    Readded {
        /// The conversation's name.
        conversation: String,
        /// Who re-added it, if known.
        by: Option<Handle>,
        /// Deliveries set aside.
        missed: u64,
    },
    /// A rejoin the server refused; tried again later.
    RejoinFailed {
        /// The conversation's name.
        conversation: String,
        /// The server's reason.
        reason: String,
    },
    /// A delivery that could not be read was set aside (acknowledged, so
    /// that it does not block the mailbox).
    Unreadable {
        /// What it was.
        what: Unread,
        /// From whom: a handle, or `device <short id>`; empty if unknown.
        from: String,
        /// In which conversation (its name), empty if none.
        conversation: String,
        /// Why it could not be read.
        reason: String,
    },
    /// A received file could not be saved: set aside.
    FileSetAside {
        /// The file's (safe) name.
        name: String,
        /// Who sent it.
        from: String,
        /// Why.
        reason: String,
    },
    /// A received file is no longer on the server.
    FileGone {
        /// The file's (safe) name.
        name: String,
        /// Who sent it.
        from: String,
    },
    /// A received file does not match its hash: refused.
    FileTampered {
        /// The file's (safe) name.
        name: String,
        /// Who sent it.
        from: String,
    },
    /// A received file was saved.
    FileSaved {
        /// The file's (safe) name.
        name: String,
        /// Who sent it.
        from: String,
        /// Where it is now.
        path: String,
    },
    /// A change (commit) this device staged was refused by the server and
    /// dropped.
    ChangeRefused {
        /// The server's reason.
        reason: String,
    },
    /// The key directory shows something about this account that this
    /// device did not make (another account key under its handle, a
    /// device list rolled back or not its own), or a proof of its own
    /// entry that does not hold: the server is lying about this account.
    DirectoryAlarm {
        /// What was found.
        what: String,
    },
    /// A queued message was not sent and left the outbox.
    NotSent {
        /// The conversation's name.
        conversation: String,
        /// Why.
        why: NotSentBecause,
    },
}

/// What an unreadable delivery was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unread {
    /// A message.
    Message,
    /// A commit: a change to the group.
    Change,
    /// A proposal.
    Proposal,
    /// A Welcome: an invitation.
    Invitation,
    /// A wipe order that does not prove the kill code (ignored).
    InvalidWipe,
    /// A device message this device did not expect.
    UnexpectedDevice,
}

/// Why a queued message left the outbox unsent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotSentBecause {
    /// This device is no longer a member of the conversation.
    NoLongerMember,
    /// It was queued by an older version, without its plaintext, and could
    /// not be encrypted again.
    QueuedByOlderVersion,
}

impl Warning {
    /// A stable name of the variant (JSON-RPC `warning` notifications'
    /// `kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::KeyChanged { .. } => "key_changed",
            Self::NewDevices { .. } => "new_devices",
            Self::DevicesChanged { .. } => "devices_changed",
            Self::OwnDeviceLeftOut { .. } => "own_device_left_out",
            Self::UnsignedKillRecord => "unsigned_kill_record",
            Self::TimerChanged { .. } => "timer_changed",
            Self::OutOfSync { .. } => "out_of_sync",
            Self::Rejoined { .. } => "rejoined",
            Self::Readded { .. } => "readded",
            Self::RejoinFailed { .. } => "rejoin_failed",
            Self::Unreadable { .. } => "unreadable",
            Self::FileSetAside { .. } => "file_set_aside",
            Self::FileGone { .. } => "file_gone",
            Self::FileTampered { .. } => "file_tampered",
            Self::FileSaved { .. } => "file_saved",
            Self::ChangeRefused { .. } => "change_refused",
            Self::NotSent { .. } => "not_sent",
            Self::DirectoryAlarm { .. } => "directory_alarm",
        }
    }
}
