//! Saving what the core's receive path made of one delivery
//! ([`sotto_core::receive`]): the rows it writes (the message, the
//! conversation, its state and name, contacts and their devices, a
//! pending re-add), in the transaction of the MLS state change, and the
//! [`Notice`]s and warnings it gives the user. The block list applies
//! here: a blocked sender's message is decrypted and never stored, its
//! invitation refused.

use sotto_core::mls;
use sotto_core::receive::{self, Event};
use sotto_core::{Body, CredentialIdentity};
use sotto_proto::{Delivery, Envelope, GroupId};

use crate::ClientError;
use crate::content;
use crate::conversation::{ConversationState, Notice, NoticeKind, Unread, Warning};
use crate::members::{
    conversation_name, note_list, note_wiped, record_members, self_name, settle_wiped,
};
use crate::store::{Provider, rows};

/// What became of one delivery.
#[derive(Debug)]
pub(crate) enum Outcome {
    Stored,
    Duplicate,
    Dropped(Warning),
    /// A proposal (a member's leave) waits for a commit in this group.
    Proposal(GroupId),
    /// A valid wipe order for this device.
    Wipe,
    /// Unreadable: this device's state of the conversation is lost or
    /// behind; it asks to be re-added.
    OutOfSync(String),
    /// From an account this profile blocked, or of a conversation it left
    /// alone: dropped unread. With a group: an invitation refused, whose
    /// routing to this device the server is to stop.
    Ignored(Option<GroupId>),
}

/// What saving deliveries has for the user and the client.
#[derive(Debug, Default)]
pub(crate) struct Told {
    /// Warnings (key and device changes, timer changes, re-adds).
    pub(crate) warnings: Vec<Warning>,
    /// Conversation notices.
    pub(crate) notices: Vec<Notice>,
    /// A commit arrived in a conversation this device leaves: its leave is
    /// proposed again.
    pub(crate) leave: bool,
    /// This account's messages whose receipts changed.
    pub(crate) receipts: Vec<(GroupId, sotto_proto::MessageId)>,
}

/// Saves `applied` (what the core made of delivery `d` at `now_ms`) in the
/// delivery's transaction and marks the delivery processed (unless the
/// core found it processed already).
pub(crate) fn save(
    p: &Provider<'_>,
    c: &rusqlite::Connection,
    me: &CredentialIdentity,
    d: &Delivery,
    applied: receive::Applied,
    now_ms: u64,
    told: &mut Told,
) -> Result<Outcome, ClientError> {
    let env = &d.envelope;
    let receive::Applied { outcome, events } = applied;
    let outcome = match outcome {
        receive::Outcome::Duplicate => return Ok(Outcome::Duplicate),
        receive::Outcome::Ignored => Outcome::Ignored(None),
        receive::Outcome::Wipe => Outcome::Wipe,
        receive::Outcome::Dropped(why) => Outcome::Dropped(Warning::Unreadable {
            what: match why {
                receive::Dropped::InvalidWipe => Unread::InvalidWipe,
                receive::Dropped::UnexpectedDevice => Unread::UnexpectedDevice,
                receive::Dropped::Undecodable | receive::Dropped::Refused(_) => Unread::Message,
            },
            from: String::new(),
            conversation: String::new(),
            reason: match why {
                receive::Dropped::Undecodable => "undecodable application message".into(),
                receive::Dropped::Refused(why) => format!("refused: its content is {why}"),
                _ => String::new(),
            },
        }),
        receive::Outcome::Proposal => {
            for e in &events {
                if let Event::DeviceWiped(who) = e {
                    note_wiped(c, &env.group, who)?;
                }
            }
            Outcome::Proposal(env.group)
        }
        receive::Outcome::Other => Outcome::Stored,
        receive::Outcome::Message(m) => message(c, me, d, m, told)?,
        receive::Outcome::Joined(j) => joined(p, c, me, j, &events, now_ms, told)?,
        receive::Outcome::Commit(commit) => {
            committed(p, c, me, env, &commit, &events, now_ms, told)?
        }
    };
    rows::mark_processed(c, env)?;
    Ok(outcome)
}

/// A decrypted message: stored, unless its sender is blocked or it is
/// stored already (the same message id).
fn message(
    c: &rusqlite::Connection,
    me: &CredentialIdentity,
    d: &Delivery,
    m: receive::Message,
    told: &mut Told,
) -> Result<Outcome, ClientError> {
    if crate::blocks::is_blocked(c, &m.sender.account)? {
        // Decrypted (the ratchet moves on), never stored.
        return Ok(Outcome::Ignored(None));
    }
    if let Some(root) = m.directory_root
        && crate::directory::differs_from_seen(c, root)?
    {
        told.warnings.push(Warning::DirectoryAlarm {
            what: format!(
                "{} was shown a different key directory for epoch {} than this device: the server is showing people different keys",
                m.sender.handle, root.epoch
            ),
        });
    }
    let applied = content::apply(
        c,
        &content::Incoming {
            id: m.id,
            group: d.envelope.group,
            sender: &m.sender,
            outgoing: m.sender.account == me.account,
            from_this_device: false,
            sent_at_ms: m.sent_at_ms,
            received_at_ms: m.received_at_ms,
            seq: d.seq,
            expires_at_ms: m.expires_at_ms,
        },
        &m.body,
    )?;
    Ok(match applied {
        content::Applied::Duplicate => Outcome::Duplicate,
        content::Applied::Stored => {
            if let Body::File(f) = &m.body {
                crate::files::queue(c, &m.id, &m.sender.handle, f)?;
            }
            if m.sender.account != me.account {
                crate::receipts::owe_delivered(c, &d.envelope.group, &m.id)?;
            }
            Outcome::Stored
        }
        content::Applied::Receipted(ids) => {
            told.receipts
                .extend(ids.into_iter().map(|id| (d.envelope.group, id)));
            Outcome::Stored
        }
        content::Applied::Changed | content::Applied::Missing => Outcome::Stored,
        content::Applied::Refused(why) => Outcome::Dropped(Warning::Unreadable {
            what: Unread::Message,
            from: m.sender.handle.to_string(),
            conversation: self_name(c, &d.envelope.group),
            reason: format!("refused: {why}"),
        }),
    })
}

/// Names the group as the events say.
fn renames(
    c: &rusqlite::Connection,
    g: &GroupId,
    events: &[Event],
    now_ms: u64,
) -> Result<(), ClientError> {
    for e in events {
        if let Event::Renamed(r) = e {
            rows::put_name(c, g, r, now_ms)?;
        }
    }
    Ok(())
}

/// A group joined by Welcome: refused (and left) if an account this
/// profile blocked sent it; else the conversation is active, its members
/// known, and the user told who added this account (or that this device
/// was re-added after losing its state).
fn joined(
    p: &Provider<'_>,
    c: &rusqlite::Connection,
    me: &CredentialIdentity,
    j: receive::Joined,
    events: &[Event],
    now_ms: u64,
    told: &mut Told,
) -> Result<Outcome, ClientError> {
    let g = j.group;
    if crate::blocks::is_blocked(c, &j.by.account)? {
        mls::discard(p, g)?;
        crate::blocks::mark_left(c, &g)?;
        return Ok(Outcome::Ignored(Some(g)));
    }
    crate::blocks::unmark_left(c, &g)?;
    let missed = rows::rejoin_done(c, &g)?;
    record_members(c, me, &j.members, &mut told.warnings)?;
    renames(c, &g, events, now_ms)?;
    let (is_group, name) = conversation_name(p, c, g, me, &j.members)?;
    rows::put_conversation(c, &g, is_group, &name, now_ms)?;
    rows::set_state(c, &g, ConversationState::Active)?;
    let what = match missed {
        Some(missed) => {
            told.warnings.push(Warning::Readded {
                conversation: name.clone(),
                by: Some(j.by.handle.clone()),
                missed,
            });
            NoticeKind::Readded {
                by: Some(j.by.handle.clone()),
                missed,
            }
        }
        None if j.by.account != me.account && is_group => NoticeKind::AddedYou {
            by: j.by.handle.clone(),
        },
        None if j.by.account != me.account => NoticeKind::Started {
            by: j.by.handle.clone(),
        },
        None => NoticeKind::ThisDeviceJoined,
    };
    told.notices.push(Notice::new(g, name, what));
    Ok(Outcome::Stored)
}

/// A commit applied: this device removed, or to be re-added; or the
/// group's name, timer, devices and members as it says.
#[allow(clippy::too_many_arguments)]
fn committed(
    p: &Provider<'_>,
    c: &rusqlite::Connection,
    me: &CredentialIdentity,
    env: &Envelope,
    commit: &receive::Commit,
    events: &[Event],
    now_ms: u64,
    told: &mut Told,
) -> Result<Outcome, ClientError> {
    let g = env.group;
    if events.contains(&Event::ReaddPending) {
        // This device's leaf was replaced by a fresh one (it asked, or a
        // member thought it had to): the Welcome follows and takes the
        // new state.
        rows::expect_readd(c, &g, now_ms)?;
        return Ok(Outcome::Stored);
    }
    if events.contains(&Event::Removed) {
        rows::set_state(c, &g, ConversationState::Removed)?;
        told.notices
            .push(Notice::new(g, self_name(c, &g), NoticeKind::Removed));
        return Ok(Outcome::Stored);
    }
    let mut membership = Vec::new();
    for e in events {
        match e {
            Event::Renamed(r) => rows::put_name(c, &g, r, now_ms)?,
            Event::DeviceRejoined { device, handle } => told.notices.push(Notice::new(
                g,
                self_name(c, &g),
                NoticeKind::DeviceRejoined {
                    handle: handle.clone(),
                    device: *device,
                },
            )),
            Event::TimerChanged(seconds) => {
                let name = self_name(c, &g);
                told.warnings.push(Warning::TimerChanged {
                    conversation: name.clone(),
                    seconds: *seconds,
                });
                told.notices.push(Notice::new(
                    g,
                    name,
                    NoticeKind::TimerChanged { seconds: *seconds },
                ));
            }
            Event::DeviceList(l) => {
                note_list(c, l, &mut told.warnings)?;
            }
            Event::MemberJoined(handle) => membership.push(NoticeKind::MemberJoined {
                handle: handle.clone(),
            }),
            Event::MemberLeft(handle) => membership.push(NoticeKind::MemberLeft {
                handle: handle.clone(),
            }),
            Event::Removed | Event::ReaddPending | Event::DeviceWiped(_) => {}
        }
    }
    record_members(c, me, &commit.members, &mut told.warnings)?;
    // A member whose last devices left wiped has no device left: said so,
    // rather than that it left.
    for handle in settle_wiped(c, &g, &commit.members)? {
        membership.retain(|k| !matches!(k, NoticeKind::MemberLeft { handle: h } if *h == handle));
        membership.push(NoticeKind::NoDeviceLeft { handle });
    }
    let (is_group, name) = conversation_name(p, c, g, me, &commit.members)?;
    if rows::conversation_state(c, &g)? == Some(ConversationState::Leaving) {
        told.leave = true;
    }
    rows::put_conversation(c, &g, is_group, &name, now_ms)?;
    told.notices.extend(
        membership
            .into_iter()
            .map(|what| Notice::new(g, name.clone(), what)),
    );
    Ok(Outcome::Stored)
}
