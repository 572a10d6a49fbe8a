//! Long-running use of a [`Client`]: one connection kept open between
//! operations, deliveries pushed by the server processed as they come, and
//! what the user should see (new messages, conversation notices, warnings)
//! handed out as [`Updates`]. The terminal UI and the JSON-RPC daemon are
//! built on this; a Rust bot uses it directly.
//!
//! The waiting part ([`Client::pushed`]) is cancel-safe, so a driver can
//! `select!` on it beside its own command channel; the processing part
//! ([`Client::process_pushed`]) runs to completion.

use std::collections::{HashMap, HashSet};

use sotto_core::mls;
use sotto_proto::{GroupId, MessageId};

use crate::conversation::Receipt;
use crate::store::{Contact, StoredMessage};
use crate::{Client, ClientError};

pub use crate::conversation::{ConversationState, Notice, NoticeKind, Warning};

impl std::fmt::Display for ConversationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the server's deliveries brought since the last look.
#[derive(Debug, Default)]
pub struct Updates {
    /// New messages, in arrival order (never the ones this device sent).
    pub messages: Vec<StoredMessage>,
    /// Conversation notices.
    pub notices: Vec<Notice>,
    /// Warnings for the user: key changes, device changes, saved files.
    pub warnings: Vec<Warning>,
    /// This account's messages whose receipts changed.
    pub receipts: Vec<Receipt>,
}

impl Updates {
    /// Whether there is nothing to show.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.notices.is_empty()
            && self.warnings.is_empty()
            && self.receipts.is_empty()
    }
}

/// How far a contact's identity key is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Trust {
    /// The user compared the safety number and confirmed it.
    Verified,
    /// Never verified.
    Unverified,
    /// The handle now stands for another key than first seen.
    KeyChanged,
    /// Verified, then the key changed: sending needs a new confirmation.
    KeyChangedAfterVerify,
}

impl Trust {
    /// The trust of a stored contact.
    pub fn of(c: &Contact) -> Self {
        if c.needs_confirm {
            Self::KeyChangedAfterVerify
        } else if c.verified {
            Self::Verified
        } else if c.key_changed {
            Self::KeyChanged
        } else {
            Self::Unverified
        }
    }

    /// A short word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Verified => "verified",
            Self::Unverified => "unverified",
            Self::KeyChanged => "key changed",
            Self::KeyChangedAfterVerify => "key changed (was verified)",
        }
    }
}

/// A member of a conversation (one per account).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member's handle.
    pub handle: String,
    /// This account.
    pub is_me: bool,
    /// How far its key is trusted (`Verified` for this account).
    pub trust: Trust,
}

/// A conversation as a chat window lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationInfo {
    /// Its MLS group.
    pub group: GroupId,
    /// The group's name, or the peer's handle.
    pub name: String,
    /// A named group (true) or a one-to-one conversation.
    pub is_group: bool,
    /// Whether this account is a member, leaving, or removed.
    pub state: ConversationState,
    /// The newest stored message's receive time, or the conversation's creation.
    pub last_activity_ms: u64,
    /// Members, sorted by handle (empty once removed).
    pub members: Vec<Member>,
    /// The disappearing timer in seconds, if set.
    pub disappear_after_s: Option<u64>,
}

impl ConversationInfo {
    /// What names this conversation in [`Client::send`] and the other
    /// operations, unambiguously: `@` and the peer's handle, or
    /// `#<group id>` for a group (a group's name may be anything its
    /// creator chose, a contact's handle too).
    pub fn target(&self) -> String {
        if self.is_group {
            format!("#{}", self.group.to_hex())
        } else {
            format!("@{}", self.name)
        }
    }
}

impl Client {
    /// Connects (or reuses the kept connection), processes the mailbox
    /// backlog, sends the outbox, and from now on keeps the connection
    /// between operations. Returns what the backlog brought.
    pub async fn go_online(&mut self) -> Result<Updates, ClientError> {
        self.keep = true;
        let mut conn = self.connect().await?;
        self.p.sync(&mut conn).await?;
        self.p.flush_outbox(&mut conn).await?;
        self.p.flush_receipts(&mut conn).await?;
        self.p.download_pending(&mut conn).await?;
        self.kept = Some(conn);
        self.take_updates()
    }

    /// Whether a connection is kept (the last operation on it succeeded).
    pub fn is_online(&self) -> bool {
        self.kept.is_some()
    }

    /// Closes the kept connection; operations connect once each again.
    pub async fn go_offline(&mut self) {
        self.keep = false;
        if let Some(conn) = self.kept.take() {
            conn.close().await;
        }
    }

    /// Waits until the server pushes something on the kept connection.
    /// Cancel-safe: dropping the future loses nothing. Fails at once when
    /// offline, and drops the connection when it breaks.
    pub async fn pushed(&mut self) -> Result<(), ClientError> {
        let Some(conn) = self.kept.as_mut() else {
            return Err(ClientError::Closed(String::new()));
        };
        match conn.wait_event().await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.kept = None;
                Err(e)
            }
        }
    }

    /// Processes what the server pushed (acknowledging it) and returns
    /// what the user should see.
    pub async fn process_pushed(&mut self) -> Result<Updates, ClientError> {
        if let Some(mut conn) = self.kept.take() {
            self.p.sync(&mut conn).await?;
            self.p.flush_receipts(&mut conn).await?;
            self.p.download_pending(&mut conn).await?;
            self.kept = Some(conn);
        }
        self.take_updates()
    }

    /// Checks this account's own entry in the server's key directory on
    /// the kept connection, as every login does (`directory.rs`): a long
    /// session calls it on a schedule. What it finds comes back as
    /// [`Warning::DirectoryAlarm`](crate::Warning::DirectoryAlarm).
    pub async fn check_directory(&mut self) -> Result<Updates, ClientError> {
        if let Some(mut conn) = self.kept.take() {
            self.p.monitor_directory(&mut conn).await?;
            self.kept = Some(conn);
        }
        self.take_updates()
    }

    /// Messages stored but not shown yet, notices and warnings, each handed
    /// out once.
    pub fn take_updates(&mut self) -> Result<Updates, ClientError> {
        let messages = self.p.store.unshown(self.now_ms())?;
        self.p.store.mark_shown(&messages)?;
        Ok(Updates {
            messages,
            notices: std::mem::take(&mut self.p.notices),
            warnings: std::mem::take(&mut self.p.warnings),
            receipts: self.p.take_receipts()?,
        })
    }

    /// Every conversation with its members and their trust, newest activity first.
    pub fn conversations(&mut self) -> Result<Vec<ConversationInfo>, ClientError> {
        let me = self.p.id.account.id();
        let trust: HashMap<String, Trust> = self
            .p
            .store
            .contacts()?
            .iter()
            .map(|c| (c.handle.clone(), Trust::of(c)))
            .collect();
        let activity = self.p.store.last_activity()?;
        let mut out = Vec::new();
        for c in self.p.store.conversations()? {
            let g = c.group;
            let (members, timer) = if c.state == ConversationState::Removed {
                (Vec::new(), None)
            } else {
                self.p.store.transaction(|p, _| {
                    Ok((mls::members(p, g)?, sotto_core::group::timer(p, g)?))
                })?
            };
            let mut seen = HashSet::new();
            let mut members: Vec<Member> = members
                .into_iter()
                .filter(|m| seen.insert(m.account))
                .map(|m| {
                    let handle = m.handle.to_string();
                    Member {
                        is_me: m.account == me,
                        trust: if m.account == me {
                            Trust::Verified
                        } else {
                            trust.get(&handle).copied().unwrap_or(Trust::Unverified)
                        },
                        handle,
                    }
                })
                .collect();
            members.sort_by(|a, b| a.handle.cmp(&b.handle));
            out.push(ConversationInfo {
                group: g,
                last_activity_ms: activity.get(&g).copied().unwrap_or(c.created_ms),
                name: c.name,
                is_group: c.is_group,
                state: c.state,
                members,
                disappear_after_s: timer,
            });
        }
        out.sort_by_key(|c| std::cmp::Reverse(c.last_activity_ms));
        Ok(out)
    }

    /// The stored messages of one conversation, oldest first (expired ones
    /// are deleted first).
    pub fn messages(&mut self, g: GroupId) -> Result<Vec<StoredMessage>, ClientError> {
        self.p.store.history(&g, self.now_ms())
    }

    /// When the next disappearing message is due, in milliseconds since
    /// the Unix epoch, if one is stored: a long-running program calls
    /// [`Client::expire`] then, so that the message does not wait for the
    /// next operation to go.
    pub fn next_expiry(&self) -> Result<Option<u64>, ClientError> {
        self.p.store.next_expiry()
    }

    /// Deletes the disappearing messages whose time came, with their
    /// attachments (file and row), and leaves none of them in the WAL.
    /// Returns how many went.
    pub fn expire(&mut self) -> Result<usize, ClientError> {
        self.p.store.purge_expired(self.now_ms())
    }

    /// Ids of this device's messages the server has not accepted yet.
    pub fn queued(&self) -> Result<HashSet<MessageId>, ClientError> {
        Ok(self
            .p
            .store
            .outbox()?
            .into_iter()
            .map(|e| e.msg_id)
            .collect())
    }
}
