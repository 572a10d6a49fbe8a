//! The operations the command line, the terminal UI (`/`-commands) and the
//! JSON-RPC daemon (methods) share: each front end parses its input into an
//! [`Op`], [`perform`] runs it on the client library, and the [`Outcome`]
//! is shown as a line ([`summary`]) or as JSON ([`Outcome::to_json`]).

use std::collections::HashSet;
use std::path::PathBuf;

use sotto_client::devices::DeviceInfo;
use sotto_client::store::Contact;
use sotto_client::{
    Change, Client, ClientError, ConversationInfo, GroupInfo, ReceivedMessage, Sent, Trust,
    Verification,
};
use sotto_proto::{GroupId, MessageId};

/// One thing a user or a bot asks of the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Send a text to a handle, a group's name or `#<id>`.
    Send {
        /// The conversation.
        to: String,
        /// The text.
        text: String,
        /// The message of that conversation it replies to: its hex id or a
        /// unique prefix of it (as `receive --json` and `history` print it).
        reply_to: Option<String>,
    },
    /// React to a message with an emoji, replacing this account's
    /// reaction to it; without an emoji, take the reaction back.
    React {
        /// The conversation.
        to: String,
        /// The message: its hex id or a unique prefix of it.
        message: String,
        /// The emoji; `None` takes this account's reaction back.
        emoji: Option<String>,
    },
    /// Who reacted to a message, and with what.
    Reactions {
        /// The conversation.
        to: String,
        /// The message: its hex id or a unique prefix of it.
        message: String,
    },
    /// Edit one of this account's texts.
    Edit {
        /// The conversation.
        to: String,
        /// The message: its hex id or a unique prefix of it.
        message: String,
        /// Its new text.
        text: String,
    },
    /// Delete one of this account's messages for everyone.
    Delete {
        /// The conversation.
        to: String,
        /// The message: its hex id or a unique prefix of it.
        message: String,
    },
    /// Mark a conversation's messages read (and send read receipts where
    /// they are on).
    MarkRead {
        /// The conversation.
        conversation: String,
    },
    /// Turn read receipts on or off, for the profile or one conversation
    /// (`on` `None`: the conversation follows the profile again).
    ReadReceipts {
        /// The conversation; `None` for the profile.
        conversation: Option<String>,
        /// On, off, or (for a conversation) the profile's setting.
        on: Option<bool>,
    },
    /// Send a file.
    SendFile {
        /// The conversation.
        to: String,
        /// The file.
        path: PathBuf,
    },
    /// Create a group with its first members.
    GroupCreate {
        /// The group's name.
        name: String,
        /// Member handles.
        members: Vec<String>,
    },
    /// Add members to a group.
    GroupAdd {
        /// The group.
        group: String,
        /// Member handles.
        members: Vec<String>,
    },
    /// Remove members from a group.
    GroupRemove {
        /// The group.
        group: String,
        /// Member handles.
        members: Vec<String>,
    },
    /// Leave a conversation alone: a group, or the one-to-one
    /// conversation with a handle.
    GroupLeave {
        /// The group, or a handle.
        group: String,
    },
    /// Block an account: its messages, invitations and KeyPackage claims
    /// are refused.
    Block {
        /// Its handle.
        handle: String,
    },
    /// Unblock an account.
    Unblock {
        /// Its handle.
        handle: String,
    },
    /// The accounts this profile blocked.
    Blocked,
    /// Rename a group.
    GroupRename {
        /// The group.
        group: String,
        /// The new name.
        name: String,
    },
    /// Make a member an admin.
    GroupPromote {
        /// The group.
        group: String,
        /// The member's handle.
        member: String,
    },
    /// Set (or with `None` turn off) a conversation's disappearing timer.
    Disappear {
        /// The conversation.
        conversation: String,
        /// Seconds, or `None` for off.
        after_s: Option<u64>,
    },
    /// The safety number with a contact.
    Verify {
        /// The contact's handle.
        handle: String,
    },
    /// Mark a contact's current key verified.
    VerifyConfirm {
        /// The contact's handle.
        handle: String,
    },
    /// The stored messages of a conversation.
    History {
        /// The conversation.
        conversation: String,
    },
    /// The stored messages with every word of a text, newest first.
    Search {
        /// The words (never query syntax); the last may be a word's start.
        text: String,
        /// Only in this conversation, if given.
        conversation: Option<String>,
    },
    /// Every conversation, newest activity first.
    Conversations,
    /// Every group with members and epoch.
    Groups,
    /// Known contacts.
    Contacts,
    /// This account's devices.
    Devices,
    /// Write an encrypted backup to a new file.
    CreateBackup {
        /// Where.
        path: PathBuf,
    },
}

/// What an [`Op`] produced.
#[derive(Debug)]
pub enum Outcome {
    /// A message (or file) was sent: accepted by the server, or queued.
    Sent(Sent),
    /// A group was created.
    GroupCreated(GroupId),
    /// A group changed and is at this epoch.
    Epoch(u64),
    /// Done; nothing to report beyond the summary.
    Done,
    /// A safety number.
    Verification(Verification),
    /// Messages, and which of this device's are still queued.
    Messages(Vec<ReceivedMessage>, HashSet<MessageId>),
    /// Conversations.
    Conversations(Vec<ConversationInfo>),
    /// Groups.
    Groups(Vec<GroupInfo>),
    /// Contacts.
    Contacts(Vec<Contact>),
    /// Devices.
    Devices(Vec<DeviceInfo>),
    /// Handles (the blocked ones).
    Handles(Vec<String>),
    /// Who reacted with what: (handle, emoji).
    Reactions(Vec<(String, String)>),
    /// A backup was written: what it holds, and its recovery key (shown
    /// once, stored nowhere).
    Backup(
        sotto_client::backup::BackupSummary,
        zeroize::Zeroizing<String>,
    ),
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Runs one operation.
pub async fn perform(c: &mut Client, op: &Op) -> Result<Outcome, ClientError> {
    Ok(match op {
        Op::Send { to, text, reply_to } => {
            if text.trim().is_empty() {
                return Err(ClientError::Invalid("empty message".into()));
            }
            match reply_to {
                Some(r) => {
                    let r = c.find_message(to, r)?;
                    Outcome::Sent(c.send_reply(to, r, text).await?)
                }
                None => Outcome::Sent(c.send(to, text).await?),
            }
        }
        Op::React { to, message, emoji } => {
            let id = c.find_message(to, message)?;
            let emoji = emoji.clone();
            Outcome::Sent(c.change(to, Change::React { to: id, emoji }).await?)
        }
        Op::Reactions { to, message } => {
            let id = c.find_message(to, message)?;
            Outcome::Reactions(c.reactions(to, id)?)
        }
        Op::Edit { to, message, text } => {
            let of = c.find_message(to, message)?;
            let text = text.clone();
            Outcome::Sent(c.change(to, Change::Edit { of, text }).await?)
        }
        Op::Delete { to, message } => {
            let of = c.find_message(to, message)?;
            Outcome::Sent(c.change(to, Change::Delete { of }).await?)
        }
        Op::MarkRead { conversation } => {
            c.mark_read(conversation).await?;
            Outcome::Done
        }
        Op::ReadReceipts { conversation, on } => {
            c.set_read_receipts(conversation.as_deref(), *on)?;
            Outcome::Done
        }
        Op::SendFile { to, path } => Outcome::Sent(c.send_file(to, path).await?),
        Op::GroupCreate { name, members } => {
            Outcome::GroupCreated(c.group_create(name, &strs(members)).await?)
        }
        Op::GroupAdd { group, members } => {
            Outcome::Epoch(c.group_add(group, &strs(members)).await?)
        }
        Op::GroupRemove { group, members } => {
            Outcome::Epoch(c.group_remove(group, &strs(members)).await?)
        }
        Op::GroupLeave { group } => {
            c.group_leave(group).await?;
            Outcome::Done
        }
        Op::Block { handle } => {
            c.block(handle).await?;
            Outcome::Done
        }
        Op::Unblock { handle } => {
            c.unblock(handle).await?;
            Outcome::Done
        }
        Op::Blocked => Outcome::Handles(c.blocked()?.into_iter().map(|h| h.to_string()).collect()),
        Op::GroupRename { group, name } => {
            c.group_rename(group, name).await?;
            Outcome::Done
        }
        Op::GroupPromote { group, member } => {
            c.group_promote(group, member).await?;
            Outcome::Done
        }
        Op::Disappear {
            conversation,
            after_s,
        } => {
            c.set_timer(conversation, *after_s).await?;
            Outcome::Done
        }
        Op::Verify { handle } => Outcome::Verification(c.verification(handle)?),
        Op::VerifyConfirm { handle } => {
            c.confirm(handle)?;
            Outcome::Done
        }
        Op::History { conversation } => Outcome::Messages(c.history(conversation)?, c.queued()?),
        Op::Search { text, conversation } => {
            Outcome::Messages(c.search(text, conversation.as_deref())?, c.queued()?)
        }
        Op::Conversations => Outcome::Conversations(c.conversations()?),
        Op::Groups => Outcome::Groups(c.groups()?),
        Op::Contacts => Outcome::Contacts(c.contacts()?),
        Op::Devices => Outcome::Devices(c.devices().await?),
        Op::CreateBackup { path } => {
            let (key, summary) = c.create_backup(path)?;
            Outcome::Backup(summary, key.to_text())
        }
    })
}

/// The line the command line prints for a finished operation.
pub fn summary(op: &Op, outcome: &Outcome) -> String {
    match (op, outcome) {
        (Op::Reactions { .. }, Outcome::Reactions(rs)) if rs.is_empty() => "no reactions".into(),
        (Op::Reactions { .. }, Outcome::Reactions(rs)) => rs
            .iter()
            .map(|(who, emoji)| format!("{emoji} {who}"))
            .collect::<Vec<_>>()
            .join(", "),
        (Op::React { emoji: Some(e), .. }, Outcome::Sent(Sent::Accepted(_))) => {
            format!("reacted {e}")
        }
        (Op::React { emoji: None, .. }, Outcome::Sent(Sent::Accepted(_))) => {
            "reaction taken back".into()
        }
        (Op::Edit { .. }, Outcome::Sent(Sent::Accepted(_))) => "edited".into(),
        (Op::Delete { .. }, Outcome::Sent(Sent::Accepted(_))) => "deleted for everyone".into(),
        (_, Outcome::Sent(Sent::Accepted(id))) => format!("sent {}", id.to_hex()),
        (_, Outcome::Sent(Sent::Queued(id))) => format!("queued {}", id.to_hex()),
        (Op::GroupCreate { name, .. }, Outcome::GroupCreated(id)) => {
            format!("created {name} #{}", &id.to_hex()[..12])
        }
        (Op::GroupAdd { group, .. }, Outcome::Epoch(e)) => format!("added to {group} (epoch {e})"),
        (Op::GroupRemove { group, .. }, Outcome::Epoch(e)) => {
            format!("removed from {group} (epoch {e})")
        }
        (Op::GroupLeave { group }, _) => {
            format!("left {group}: it is no longer delivered to this device")
        }
        (Op::Block { handle }, _) => format!(
            "blocked {handle}: their messages, invitations and key package claims are refused"
        ),
        (Op::Unblock { handle }, _) => format!("unblocked {handle}"),
        (Op::Blocked, Outcome::Handles(hs)) => hs.join("\n"),
        (Op::GroupRename { group, name }, _) => format!("renamed {group} to {name}"),
        (Op::GroupPromote { group, member }, _) => format!("{member} is an admin of {group}"),
        (
            Op::Disappear {
                conversation,
                after_s: Some(s),
            },
            _,
        ) => format!(
            "messages in {conversation} now disappear after {}",
            sotto_client::client::human(*s)
        ),
        (Op::Disappear { conversation, .. }, _) => {
            format!("messages in {conversation} no longer disappear")
        }
        (Op::VerifyConfirm { handle }, _) => format!("{handle} is verified"),
        (Op::ReadReceipts { conversation, on }, _) => {
            let state = match on {
                Some(true) => "on",
                Some(false) => "off",
                None => "as the profile's setting",
            };
            match conversation {
                Some(c) => format!("read receipts in {c}: {state}"),
                None => format!("read receipts: {state}"),
            }
        }
        (Op::Search { .. }, Outcome::Messages(ms, _)) => match ms.len() {
            0 => "no message found".into(),
            1 => "1 message found".into(),
            n => format!("{n} messages found"),
        },
        (Op::CreateBackup { path }, Outcome::Backup(n, key)) => format!(
            "backup written to {} ({} conversation(s), {} message(s)); recovery key, shown once: {}",
            path.display(),
            n.conversations,
            n.messages,
            &**key
        ),
        (Op::Verify { handle }, Outcome::Verification(v)) => format!(
            "safety number with {handle}: {} ({})",
            safety_number_groups(&v.number),
            Trust::of(&v.contact).as_str()
        ),
        _ => "done".into(),
    }
}

/// A safety number in groups of five digits, as people read it aloud.
pub fn safety_number_groups(n: &str) -> String {
    n.as_bytes()
        .chunks(5)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// One conversation as JSON (`listConversations`).
pub fn conversation_json(c: &ConversationInfo) -> serde_json::Value {
    serde_json::json!({
        "id": c.group.to_hex(),
        "target": c.target(),
        "name": c.name,
        "is_group": c.is_group,
        "state": c.state.as_str(),
        "last_activity": c.last_activity_ms,
        "disappear_after_s": c.disappear_after_s,
        "members": c.members.iter().map(|m| serde_json::json!({
            "handle": m.handle,
            "me": m.is_me,
            "trust": m.trust.as_str(),
        })).collect::<Vec<_>>(),
    })
}

impl Outcome {
    /// The outcome as a JSON-RPC result.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Self::Sent(s) => json!({
                "id": s.id().to_hex(),
                "queued": matches!(s, Sent::Queued(_)),
            }),
            Self::GroupCreated(g) => json!({ "id": g.to_hex() }),
            Self::Epoch(e) => json!({ "epoch": e }),
            Self::Done => json!({}),
            Self::Verification(v) => json!({
                "handle": v.contact.handle,
                "safety_number": v.number,
                "trust": Trust::of(&v.contact).as_str(),
            }),
            Self::Messages(ms, queued) => serde_json::Value::Array(
                ms.iter()
                    .map(|m| {
                        let mut j = crate::message_json(m);
                        j["outgoing"] = json!(m.outgoing);
                        j["queued"] = json!(queued.contains(&m.id));
                        j
                    })
                    .collect(),
            ),
            Self::Conversations(cs) => cs.iter().map(conversation_json).collect(),
            Self::Groups(gs) => gs.iter().map(crate::group_json).collect(),
            Self::Contacts(cs) => cs
                .iter()
                .map(|c| {
                    json!({
                        "handle": c.handle,
                        "account": c.account.to_hex(),
                        "trust": Trust::of(c).as_str(),
                    })
                })
                .collect(),
            Self::Devices(ds) => ds
                .iter()
                .map(|d| json!({ "id": d.id.to_hex(), "this_device": d.this_device }))
                .collect(),
            Self::Handles(hs) => json!(hs),
            Self::Reactions(rs) => rs
                .iter()
                .map(|(who, emoji)| json!({ "handle": who, "emoji": emoji }))
                .collect(),
            Self::Backup(n, key) => json!({
                "recovery_key": &**key,
                "conversations": n.conversations,
                "messages": n.messages,
                "contacts": n.contacts,
            }),
        }
    }
}
