//! The receive path as a state machine without IO: [`apply`] takes one
//! delivery (an [`Envelope`]) and what the caller's store knows of it
//! ([`Known`]), applies it to the MLS state through the caller's provider,
//! and returns what happened as values: an [`Outcome`] (the decrypted
//! message, a join, a commit, a proposal, a wipe order, a duplicate, a
//! delivery dropped unread) and the [`Event`]s the user may be told of
//! (members joined or left, the timer changed, the group renamed, this
//! device removed or re-added, a device rejoined, a contact's signed
//! device list to compare with the one held).
//!
//! No SQL, no wording, no clock: the caller passes the time and the rows
//! it holds, and saves what comes back in the same transaction as the MLS
//! state change. When [`apply`] fails, whatever it wrote through the
//! provider must be discarded (the caller rolls its transaction back);
//! [`unreadable`] then says, on the state as it was, whether the delivery
//! is set aside (with its reason and sender) or this device is out of sync
//! and must rejoin ([`Unreadable`]).

use std::collections::BTreeSet;

use crate::mls::Provider;
use sotto_proto::{
    DeviceId, Envelope, EnvelopeKind, GroupId, Handle, MessageId, SignedDeviceList,
    SignedKillRecord, WipeOrder,
};

use crate::error::CoreError;
use crate::group::Renamed;
use crate::message::{AppMessage, Body};
use crate::mls::{self, Processed};
use crate::{CredentialIdentity, group};

/// What the caller's store knows of a delivery before it is applied.
#[derive(Clone, Copy)]
pub struct Known<'a> {
    /// The delivery's dedup marker is set: it was applied before.
    pub processed: bool,
    /// The user left the conversation alone (or refused its invitation):
    /// its messages, commits and proposals are dropped unread.
    pub left: bool,
    /// The account's kill-code record, against which a wipe order is checked.
    pub kill_record: Option<&'a SignedKillRecord>,
    /// Whether this device asked to be re-added to a group (a Welcome into
    /// it may then replace the state it holds).
    pub rejoin_pending: &'a dyn Fn(GroupId) -> bool,
}

impl std::fmt::Debug for Known<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Known")
            .field("processed", &self.processed)
            .field("left", &self.left)
            .field("kill_record", &self.kill_record.is_some())
            .finish_non_exhaustive()
    }
}

/// One delivery applied: what it was and what happened.
#[derive(Debug)]
pub struct Applied {
    /// What the delivery was.
    pub outcome: Outcome,
    /// What happened in the conversation, in the order it is told.
    pub events: Vec<Event>,
}

/// What a delivery was.
#[derive(Debug)]
pub enum Outcome {
    /// Applied before (its dedup marker is set): nothing to do.
    Duplicate,
    /// Of a conversation the user left alone: dropped unread.
    Ignored,
    /// A message, decrypted.
    Message(Message),
    /// A Welcome: this device is a member of the group now.
    Joined(Joined),
    /// A commit, applied.
    Commit(Commit),
    /// A proposal (a member's leave), stored for the next commit.
    Proposal,
    /// A handshake message that changes nothing visible.
    Other,
    /// A wipe order for this device that proves the kill code.
    Wipe,
    /// Read, and nothing in it to keep (the MLS state change stays).
    Dropped(Dropped),
}

/// What a delivery [`apply`] could not read is, on the state as it was.
#[derive(Debug)]
pub enum Unreadable {
    /// Set aside with its reason (marked processed, so that it does not
    /// block the mailbox); the MLS state is unchanged.
    SetAside(SetAside),
    /// This device's state of the group is lost or behind: it rejoins.
    /// Not to be marked processed (a commit that re-adds this device shares
    /// its id with the Welcome that follows).
    OutOfSync(OutOfSync),
}

/// A decrypted application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The sender's message id.
    pub id: MessageId,
    /// The authenticated sender.
    pub sender: CredentialIdentity,
    /// When the sender says it sent it (its clock).
    pub sent_at_ms: u64,
    /// What it says.
    pub body: Body,
    /// The conversation's disappearing timer in seconds, if set.
    pub timer_s: Option<u64>,
    /// When it was received (the `now_ms` given to [`apply`]).
    pub received_at_ms: u64,
    /// When it disappears: the timer counts from its reception on this
    /// device's clock, so neither the sender's nor the server's clock can
    /// cut it short.
    pub expires_at_ms: Option<u64>,
    /// The newest key-directory root the sender verified, if it said.
    pub directory_root: Option<sotto_proto::DirectoryRoot>,
}

/// A group joined by Welcome.
#[derive(Debug)]
pub struct Joined {
    /// The group.
    pub group: GroupId,
    /// Its members.
    pub members: Vec<CredentialIdentity>,
    /// The member whose device sent the Welcome.
    pub by: CredentialIdentity,
    /// A named group (true) or a one-to-one conversation.
    pub is_group: bool,
    /// The Welcome replaced a state of the group this device held.
    pub replaced: bool,
}

/// A commit applied.
#[derive(Debug)]
pub struct Commit {
    /// The group's new epoch.
    pub epoch: u64,
    /// The members after it (empty when it removed this device).
    pub members: Vec<CredentialIdentity>,
    /// A named group (true) or a one-to-one conversation.
    pub is_group: bool,
}

/// Why a delivery that was read is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// A wipe order that does not prove the kill code (or does not parse).
    InvalidWipe,
    /// A message of another device of the account, which comes otherwise.
    UnexpectedDevice,
    /// An application message whose content does not decode.
    Undecodable,
    /// An application message whose content breaks a rule of
    /// [`Body::check`](crate::Body::check) (too long, not an emoji).
    Refused(crate::Refused),
}

/// A delivery set aside.
#[derive(Debug)]
pub struct SetAside {
    /// What it was.
    pub kind: EnvelopeKind,
    /// The sender, if it is a member of the group as this device holds it.
    pub sender: Option<CredentialIdentity>,
    /// This device's epoch of the group, if it holds it.
    pub epoch: Option<u64>,
    /// Why it could not be read.
    pub error: CoreError,
}

/// A delivery this device cannot read because its state is lost or behind.
#[derive(Debug)]
pub struct OutOfSync {
    /// This device holds no state of the group at all.
    pub missing: bool,
    /// What said so.
    pub error: CoreError,
}

/// Something that happened in a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The group's name (and the key it is sealed under) changed, or a
    /// Welcome named it.
    Renamed(Renamed),
    /// A device of a member was re-added with a fresh leaf.
    DeviceRejoined {
        /// The device.
        device: DeviceId,
        /// Its member's handle, if it is in the group.
        handle: Option<Handle>,
    },
    /// The disappearing timer changed (`None`: off).
    TimerChanged(Option<u64>),
    /// A signed device list of another account came with a commit: the
    /// caller compares it with the one it holds.
    DeviceList(SignedDeviceList),
    /// A member joined.
    MemberJoined(Handle),
    /// A member left or was removed.
    MemberLeft(Handle),
    /// A member's device proposed its leave as it obeys a wipe order.
    DeviceWiped(CredentialIdentity),
    /// This device was removed from the group.
    Removed,
    /// This device's leaf was replaced by a fresh one: the Welcome follows.
    ReaddPending,
}

fn applied(outcome: Outcome) -> Applied {
    Applied {
        outcome,
        events: Vec::new(),
    }
}

/// Applies one delivery for this device (`me`) at `now_ms` (this device's
/// clock). An error means the delivery cannot be read: the caller discards
/// what was written through `provider` and calls [`unreadable`].
pub fn apply<P: Provider>(
    provider: &P,
    me: &CredentialIdentity,
    env: &Envelope,
    known: &Known<'_>,
    now_ms: u64,
) -> Result<Applied, CoreError> {
    if known.processed {
        return Ok(applied(Outcome::Duplicate));
    }
    if known.left
        && matches!(
            env.kind,
            EnvelopeKind::Application | EnvelopeKind::Commit | EnvelopeKind::Proposal
        )
    {
        return Ok(applied(Outcome::Ignored));
    }
    match env.kind {
        EnvelopeKind::Wipe => {
            let valid = postcard::from_bytes::<WipeOrder>(&env.payload.0)
                .ok()
                .zip(known.kill_record)
                .is_some_and(|(o, r)| crate::killcode::order_is_valid(&o, me.device, r));
            Ok(applied(if valid {
                Outcome::Wipe
            } else {
                Outcome::Dropped(Dropped::InvalidWipe)
            }))
        }
        EnvelopeKind::Device => Ok(applied(Outcome::Dropped(Dropped::UnexpectedDevice))),
        EnvelopeKind::Welcome => welcome(provider, env, known),
        kind => {
            // Who was in the group before a commit, to tell who joined or left.
            let before = match kind {
                EnvelopeKind::Commit => mls::members(provider, env.group).ok(),
                _ => None,
            };
            let processed = mls::process(provider, env.group, &env.payload.0)?;
            handshake_or_message(provider, me, env, processed, before, now_ms)
        }
    }
}

/// A Welcome into a conversation this device holds is refused, unless this
/// device was removed from it (it is added again) or lost its state of it
/// and waits to be re-added.
fn welcome<P: Provider>(
    provider: &P,
    env: &Envelope,
    known: &Known<'_>,
) -> Result<Applied, CoreError> {
    let (joined, replaced) = mls::join_replacing(provider, &env.payload.0, known.rejoin_pending)?;
    let by = joined
        .members
        .iter()
        .find(|m| m.device == env.sender)
        .cloned()
        .ok_or(CoreError::ForgedCredential)?;
    let is_group = group::meta(provider, joined.group_id)?.is_some();
    let events = joined.name.map(Event::Renamed).into_iter().collect();
    Ok(Applied {
        outcome: Outcome::Joined(Joined {
            group: joined.group_id,
            members: joined.members,
            by,
            is_group,
            replaced,
        }),
        events,
    })
}

fn handshake_or_message<P: Provider>(
    provider: &P,
    me: &CredentialIdentity,
    env: &Envelope,
    processed: Processed,
    before: Option<Vec<CredentialIdentity>>,
    now_ms: u64,
) -> Result<Applied, CoreError> {
    let g = env.group;
    match (env.kind, processed) {
        (
            EnvelopeKind::Application,
            Processed::Application {
                sender,
                plaintext,
                timer_s,
            },
        ) => {
            if env.sender != DeviceId::NONE && sender.device != env.sender {
                // The server names no sender of an application message
                // (MLS authenticates it); one that names another device
                // than MLS says lies.
                return Err(CoreError::ForgedCredential);
            }
            let Some(AppMessage {
                id,
                sent_at_ms,
                body,
                directory_root,
            }) = AppMessage::decode(&plaintext)
            else {
                return Ok(applied(Outcome::Dropped(Dropped::Undecodable)));
            };
            if let Err(why) = body.check() {
                return Ok(applied(Outcome::Dropped(Dropped::Refused(why))));
            }
            // A disappearing message's clock starts when this device
            // received it, on this device's clock (C5). The server drops a
            // message whose timer ran out in the mailbox, on its own clock.
            let expires_at_ms = timer_s.map(|t| now_ms.saturating_add(t.saturating_mul(1000)));
            Ok(applied(Outcome::Message(Message {
                id,
                sender,
                sent_at_ms,
                body,
                timer_s,
                received_at_ms: now_ms,
                expires_at_ms,
                directory_root,
            })))
        }
        // A handshake message relabelled as an application message: the
        // server delivers those only as what they are.
        (EnvelopeKind::Application, _) => Err(CoreError::Rejected(
            "a commit or proposal sent as an application message".into(),
        )),
        // Relabelled by the server: refused, and the caller rolls the
        // decryption back, so the genuine delivery still decrypts.
        (_, Processed::Application { .. }) => Err(CoreError::Rejected(
            "application message sent as commit".into(),
        )),
        (
            _,
            Processed::Commit {
                epoch,
                removed_me: true,
                readded,
                ..
            },
        ) => {
            // Re-added (its leaf replaced by a fresh one: the Welcome
            // follows and takes the new state), or removed.
            let event = if readded.contains(&me.device) {
                Event::ReaddPending
            } else {
                Event::Removed
            };
            Ok(Applied {
                outcome: Outcome::Commit(Commit {
                    epoch,
                    members: Vec::new(),
                    is_group: false,
                }),
                events: vec![event],
            })
        }
        (
            _,
            Processed::Commit {
                epoch,
                device_lists,
                timer_change,
                readded,
                renamed,
                ..
            },
        ) => {
            let mut events = Vec::new();
            if let Some(r) = renamed {
                events.push(Event::Renamed(r));
            }
            for d in readded {
                let handle = mls::members(provider, g)?
                    .into_iter()
                    .find(|m| m.device == d)
                    .map(|m| m.handle);
                events.push(Event::DeviceRejoined { device: d, handle });
            }
            if let Some(t) = timer_change {
                events.push(Event::TimerChanged(t));
            }
            events.extend(
                device_lists
                    .into_iter()
                    .filter(|l| l.account != me.account)
                    .map(Event::DeviceList),
            );
            let members = mls::members(provider, g)?;
            let is_group = group::meta(provider, g)?.is_some();
            if let Some(before) = &before {
                events.extend(membership(before, &members));
            }
            Ok(Applied {
                outcome: Outcome::Commit(Commit {
                    epoch,
                    members,
                    is_group,
                }),
                events,
            })
        }
        (EnvelopeKind::Proposal, Processed::Proposal { leaving, wiped }) => Ok(Applied {
            outcome: Outcome::Proposal,
            events: leaving
                .filter(|_| wiped)
                .map(Event::DeviceWiped)
                .into_iter()
                .collect(),
        }),
        (_, Processed::Proposal { .. }) => {
            Err(CoreError::Rejected("a proposal sent as a commit".into()))
        }
        (EnvelopeKind::Proposal, _) => {
            Err(CoreError::Rejected("a commit sent as a proposal".into()))
        }
        (_, Processed::Other) => Ok(applied(Outcome::Other)),
    }
}

/// Who joined and who left between two member lists (by handle, sorted):
/// the joined first.
pub fn membership(before: &[CredentialIdentity], after: &[CredentialIdentity]) -> Vec<Event> {
    let handles = |l: &[CredentialIdentity]| -> BTreeSet<Handle> {
        l.iter().map(|m| m.handle.clone()).collect()
    };
    let (b, a) = (handles(before), handles(after));
    let mut out: Vec<Event> = a.difference(&b).cloned().map(Event::MemberJoined).collect();
    out.extend(b.difference(&a).cloned().map(Event::MemberLeft));
    out
}

/// What becomes of a delivery [`apply`] failed on, judged on the state as
/// it was before (the caller discarded what `apply` wrote): a message or
/// commit of a group this device holds no state of, or only an older
/// epoch of, means this device is out of sync (the epoch a message claims
/// is not authenticated, so a lying server can at worst make it ask to be
/// re-added); anything else is set aside, naming its sender as far as this
/// device knows it.
pub fn unreadable<P: Provider>(provider: &P, env: &Envelope, error: CoreError) -> Unreadable {
    let g = env.group;
    if matches!(env.kind, EnvelopeKind::Application | EnvelopeKind::Commit)
        && matches!(error, CoreError::Behind { .. } | CoreError::UnknownGroup)
    {
        let missing = matches!(error, CoreError::UnknownGroup);
        return Unreadable::OutOfSync(OutOfSync { missing, error });
    }
    let sender = mls::members(provider, g)
        .ok()
        .and_then(|m| m.into_iter().find(|m| m.device == env.sender));
    Unreadable::SetAside(SetAside {
        kind: env.kind,
        sender,
        epoch: mls::epoch(provider, g).ok(),
        error,
    })
}
