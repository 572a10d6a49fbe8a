//! What goes out: the outbox (a message is kept, encrypted and with its
//! plaintext, before the server hears of it, and encrypted again when a
//! commit won its epoch), send targets, one-to-one conversations created
//! on first use, and the disappearing-message timer.

use sotto_core::group;
use sotto_core::mls;
use sotto_core::{AppMessage, Body};
use sotto_proto::{Blob, ErrorCode, GroupId, Handle, MessageId, Request, Response, SendRequest};

use crate::ClientError;
use crate::content;
use crate::conversation::{ConversationState, NotSentBecause, Sent, Target, Warning};
use crate::members::self_name;
use crate::profile::Profile;
use crate::store::rows;
use crate::transport::{Connection, random_id, unexpected};

/// A change to a stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Reacts to `to` with `emoji`, replacing this account's reaction;
    /// `None` takes it back.
    React {
        /// The message reacted to.
        to: MessageId,
        /// The emoji, or `None` to take the reaction back.
        emoji: Option<String>,
    },
    /// New text for one of this account's text messages.
    Edit {
        /// The message.
        of: MessageId,
        /// Its new text.
        text: String,
    },
    /// Deletes one of this account's messages for everyone.
    Delete {
        /// The message.
        of: MessageId,
    },
}

/// How often one flush encrypts a message again for a group that keeps
/// moving before it leaves it queued for the next flush. Each refusal
/// means another commit landed: only a storm of commits (a burst of
/// renames, or a hostile member) takes a message this far.
const SEND_ATTEMPTS: usize = 32;

impl Profile {
    /// Sends what waits in the outbox, oldest first. The server takes an
    /// application message only in the group's current epoch: one it
    /// refuses for a past epoch is encrypted again once this device has
    /// caught up (the same id, so a lost answer stays harmless). One that
    /// still cannot go (the group keeps moving, or this device could not
    /// catch up) stays in the outbox for the next flush, and the others
    /// go on; [`Store::in_outbox`] tells a caller whether its message went.
    pub(crate) async fn flush_outbox(&mut self, conn: &mut Connection) -> Result<(), ClientError> {
        for mut e in self.store.outbox()? {
            let msg_id = e.msg_id;
            for attempt in 1.. {
                let req = SendRequest {
                    group: e.group,
                    msg_id,
                    payload: Blob(std::mem::take(&mut e.payload)),
                    ttl_ms: e.ttl_ms,
                };
                match conn.request(Request::Send(req)).await {
                    Ok(Response::Accepted { .. }) => {
                        self.store.outbox_done(&msg_id)?;
                        break;
                    }
                    Ok(other) => return Err(unexpected(&other)),
                    Err(ClientError::Server(err)) if err.code == ErrorCode::NotMember => {
                        // The conversation is gone on the server; the message cannot be delivered.
                        self.store.outbox_done(&msg_id)?;
                        return Err(ClientError::Server(err));
                    }
                    Err(ClientError::Server(err))
                        if matches!(err.code, ErrorCode::StaleEpoch { .. }) =>
                    {
                        let ErrorCode::StaleEpoch { current } = err.code else {
                            unreachable!("matched above")
                        };
                        if attempt > SEND_ATTEMPTS {
                            break;
                        }
                        match self.encrypt_again(conn, &e, current).await? {
                            Some(payload) => e.payload = payload,
                            None => break,
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Brings this device to the group's epoch `current` (catching up on
    /// the deliveries that took it there, or rejoining) and encrypts the
    /// outbox entry `e` again in it. `None` if the message stays queued
    /// for now (not caught up yet) or was dropped (this device is no
    /// longer a member, or the entry predates stored plaintexts): said in
    /// a warning.
    pub(crate) async fn encrypt_again(
        &mut self,
        conn: &mut Connection,
        e: &crate::store::OutboxEntry,
        current: u64,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let g = e.group;
        let name = self_name(self.store.conn(), &g);
        let Some(plaintext) = &e.plaintext else {
            self.store.outbox_done(&e.msg_id)?;
            self.warnings.push(Warning::NotSent {
                conversation: name,
                why: NotSentBecause::QueuedByOlderVersion,
            });
            return Ok(None);
        };
        match self.catch_up(conn, g, current).await {
            Ok(()) => {}
            Err(ClientError::NotMember(_) | ClientError::NotFound(_) | ClientError::Invalid(_))
                if !self.is_member(g)? => {}
            Err(err) => return Err(err),
        }
        if !self.is_member(g)? {
            self.store.outbox_done(&e.msg_id)?;
            self.warnings.push(Warning::NotSent {
                conversation: name,
                why: NotSentBecause::NoLongerMember,
            });
            return Ok(None);
        }
        if self.out_of_sync(g)? {
            self.rejoin(conn, g).await?;
        }
        let device = &self.id.device;
        let id = e.msg_id;
        self.store.transaction(|p, c| {
            if mls::epoch(p, g)? < current {
                return Ok(None);
            }
            let (ct, timer) = mls::encrypt_with_timer(p, device, g, plaintext)?;
            rows::reencrypted_outbox(c, &id, &ct, timer.map(|t| t.saturating_mul(1000)))?;
            Ok(Some(ct))
        })
    }

    /// Whether this device is still an active member of `g`.
    pub(crate) fn is_member(&mut self, g: GroupId) -> Result<bool, ClientError> {
        self.store
            .transaction(|p, _| Ok(mls::has_group(p, g)? && group::is_active(p, g)?))
    }

    pub(crate) fn has_group(&mut self, g: GroupId) -> Result<bool, ClientError> {
        self.store.transaction(|p, _| Ok(mls::has_group(p, g)?))
    }

    /// The one-to-one conversation with `peer`, created if needed.
    pub(crate) async fn direct(
        &mut self,
        conn: &mut Connection,
        peer: &Handle,
    ) -> Result<GroupId, ClientError> {
        let me = self.id.credential();
        if let Some(acc) = self.store.contact(peer)? {
            let g = GroupId::direct(&me.account, &acc);
            if self.has_group(g)? {
                return Ok(g);
            }
        }
        let (account, kps, list) = self.claim(conn, peer).await?;
        if account == me.account {
            return Err(ClientError::Invalid(
                "cannot start a conversation with yourself".into(),
            ));
        }
        let g = GroupId::direct(&me.account, &account);
        if self.has_group(g)? {
            return Ok(g);
        }
        if !self
            .create_conversation(conn, g, kps, vec![list], None)
            .await?
        {
            // The peer created the conversation first: its Welcome is on the way.
            self.wait_for_group(conn, g).await?;
        }
        Ok(g)
    }

    /// Sets (or, with `None`, turns off) a conversation's disappearing
    /// timer, in seconds. In a group only admins may.
    pub(crate) async fn set_timer(
        &mut self,
        conn: &mut Connection,
        target: &str,
        seconds: Option<u64>,
    ) -> Result<(), ClientError> {
        self.sync(conn).await?;
        let g = match self.resolve(target)? {
            Target::Group(g) => {
                let meta = self.store.transaction(|p, _| Ok(group::meta(p, g)?))?;
                if meta.is_some_and(|m| !m.is_admin(&self.id.account.id())) {
                    return Err(ClientError::NotAdmin("change the group's timer"));
                }
                g
            }
            Target::Handle(h) => self.direct(conn, &h).await?,
        };
        self.commit_with_retry(conn, g, |_| {
            Ok(group::Change {
                timer: Some(seconds),
                ..group::Change::default()
            })
        })
        .await?;
        Ok(())
    }

    /// The group of a conversation named by group name, `#id` or the peer's handle.
    pub(crate) fn conversation_id(&mut self, target: &str) -> Result<GroupId, ClientError> {
        Ok(match self.resolve(target)? {
            Target::Group(g) => g,
            Target::Handle(h) => {
                let acc = self
                    .store
                    .contact(&h)?
                    .ok_or_else(|| ClientError::NotFound(format!("no conversation with {h}")))?;
                GroupId::direct(&self.id.account.id(), &acc)
            }
        })
    }

    /// The id of a stored message of the conversation `conversation` (as
    /// [`Client::history`] names it) from its hex id or a unique prefix of
    /// it, as `sotto receive --json` and `sotto history` print it. A full
    /// 32-digit id is taken as it is, stored or not.
    pub(crate) fn find_message(
        &mut self,
        conversation: &str,
        id: &str,
    ) -> Result<MessageId, ClientError> {
        let want = id.trim().to_ascii_lowercase();
        if let Some(full) = MessageId::from_hex(&want) {
            return Ok(full);
        }
        if want.is_empty() || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ClientError::Invalid(format!(
                "{id:?} is not a message id or a prefix of one"
            )));
        }
        let g = self.conversation_id(conversation)?;
        let found: Vec<MessageId> = self
            .store
            .history(&g, self.now_ms())?
            .into_iter()
            .map(|m| m.id)
            .filter(|m| m.to_hex().starts_with(&want))
            .collect();
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(ClientError::NotFound(format!(
                "no message {want} in {conversation}"
            ))),
            _ => Err(ClientError::Ambiguous(format!(
                "{want} matches several messages: give more digits"
            ))),
        }
    }

    /// Refuses a text that cannot be sent, before any connection.
    pub(crate) fn check_text(&self, to: &str, text: &str) -> Result<(), ClientError> {
        if text.len() > 64 * 1024 {
            return Err(ClientError::Invalid(
                "message too long (64 KiB at most)".into(),
            ));
        }
        // Only spaces and newlines would arrive as an empty line.
        if text.trim().is_empty() {
            return Err(ClientError::Invalid("empty message".into()));
        }
        if to.strip_prefix('@').unwrap_or(to) == self.id.handle.as_str() {
            return Err(ClientError::Invalid("cannot send to yourself".into()));
        }
        Ok(())
    }

    /// The text send path of [`Client::send`](crate::Client::send) and
    /// [`Client::send_reply`](crate::Client::send_reply), once
    /// [`Profile::check_text`] passed.
    pub(crate) async fn send_text(
        &mut self,
        conn: &mut Connection,
        to: &str,
        reply_to: Option<MessageId>,
        text: &str,
    ) -> Result<Sent, ClientError> {
        // Welcomes and commits first: the target may be a group that just arrived.
        self.sync(conn).await?;
        self.flush_outbox(conn).await?;
        let g = self.target(conn, to).await?;
        let body = match reply_to {
            Some(to) => Body::Reply {
                to,
                text: text.to_owned(),
            },
            None => Body::Text(text.to_owned()),
        };
        self.send_body(conn, g, body).await
    }

    /// Sends a change to the message `of` of the conversation `to`: a
    /// reaction (`Some(emoji)`) or its removal (`None`), an edit, or a
    /// deletion for everyone. Refused before anything is sent if this
    /// account may not make it ([`content::check_change`]).
    pub(crate) async fn send_change(
        &mut self,
        conn: &mut Connection,
        to: &str,
        change: Change,
    ) -> Result<Sent, ClientError> {
        self.sync(conn).await?;
        self.flush_outbox(conn).await?;
        let g = self.target(conn, to).await?;
        let me = self.id.account.id();
        let body = match change {
            Change::React {
                to,
                emoji: Some(emoji),
            } => Body::Reaction { to, emoji },
            Change::React { to, emoji: None } => {
                let of = self
                    .store
                    .transaction(|_, c| content::reaction_of(c, &g, &to, &me))?
                    .ok_or_else(|| ClientError::NotFound("you did not react to it".into()))?;
                Body::Delete { of }
            }
            Change::Edit { of, text } => Body::Edit { of, text },
            Change::Delete { of } => Body::Delete { of },
        };
        self.send_body(conn, g, body).await
    }

    /// Resolves a send target to an active conversation, creating a
    /// one-to-one conversation if needed.
    pub(crate) async fn target(
        &mut self,
        conn: &mut Connection,
        to: &str,
    ) -> Result<GroupId, ClientError> {
        if to.strip_prefix('@').unwrap_or(to) == self.id.handle.as_str() {
            return Err(ClientError::Invalid("cannot send to yourself".into()));
        }
        let target = self.resolve(to)?;
        let peer = match &target {
            Target::Handle(h) => Some(h.to_string()),
            Target::Group(_) => None,
        };
        let g = match target {
            Target::Handle(peer) => self.direct(conn, &peer).await,
            Target::Group(g) => match self.store.conversation(&g)?.map(|c| c.state) {
                Some(ConversationState::Active) => Ok(g),
                Some(ConversationState::Leaving) => {
                    Err(ClientError::NotMember("you are leaving this group".into()))
                }
                _ => Err(ClientError::NotMember(
                    "you are no longer a member of this group".into(),
                )),
            },
        }?;
        if self.out_of_sync(g)? {
            self.rejoin(conn, g).await?;
        }
        if self.out_of_sync(g)? {
            return Err(ClientError::TryAgain(format!(
                "this device lost its state of {to} and could not rejoin it yet: try again later"
            )));
        }
        // A one-to-one conversation whose peer has no device in it any more
        // (wiped, revoked, or left): the server would take the message and
        // nobody would ever read it.
        if let Some(c) = self.store.conversation(&g)?.filter(|c| !c.is_group) {
            let mine = self.id.account.id();
            let members = self.store.transaction(|p, _| Ok(mls::members(p, g)?))?;
            if members.iter().all(|m| m.account == mine) {
                // Its name came from the members: it may be empty now.
                let who = peer.unwrap_or(c.name);
                return Err(ClientError::NoDevices(if who.is_empty() {
                    "the other member".to_owned()
                } else {
                    who
                }));
            }
        }
        Ok(g)
    }

    /// Encrypts `body` for `g`, applies it to this device's store as a
    /// received one would be ([`content::apply`]), and sends it.
    pub(crate) async fn send_body(
        &mut self,
        conn: &mut Connection,
        g: GroupId,
        body: Body,
    ) -> Result<Sent, ClientError> {
        body.check()
            .map_err(|why| ClientError::Invalid(format!("cannot send this: it is {why}")))?;
        // A receipt is not something the user sent: it neither counts
        // towards a self-update nor makes one.
        let counts = !matches!(body, Body::Receipt(_));
        let id = random_id();
        let now = self.now_ms();
        let app = AppMessage {
            id,
            sent_at_ms: now,
            body,
            directory_root: self.newest_root()?,
        };
        let plaintext = app.encode();
        let me = self.id.credential();
        let device = &self.id.device;
        self.store.transaction(|p, c| {
            content::check_change(c, &g, &me.account, &app.body)?;
            let (ct, timer) = mls::encrypt_with_timer(p, device, g, &plaintext)?;
            let ttl = timer.map(|t| t.saturating_mul(1000));
            rows::put_outbox(c, &id, &g, (&ct, &plaintext), now, ttl)?;
            let applied = content::apply(
                c,
                &content::Incoming {
                    id,
                    group: g,
                    sender: &me,
                    outgoing: true,
                    from_this_device: true,
                    sent_at_ms: now,
                    received_at_ms: now,
                    seq: 0,
                    expires_at_ms: timer.map(|t| now.saturating_add(t.saturating_mul(1000))),
                },
                &app.body,
            )?;
            if let content::Applied::Refused(why) = applied {
                return Err(ClientError::Invalid(why.into()));
            }
            if counts {
                rows::count_sent(c, &g)?;
            }
            Ok(())
        })?;
        // From here the message is safe in the outbox: a lost connection
        // only delays it until the next command that reaches the server.
        match self.flush_outbox(conn).await {
            // Still queued: the group kept moving, or this device could not
            // catch up with it yet.
            Ok(()) if self.store.in_outbox(&id)? => return Ok(Sent::Queued(id)),
            Ok(()) => {}
            Err(
                ClientError::Unreachable(_)
                | ClientError::Transport(_)
                | ClientError::Closed(_)
                | ClientError::Timeout,
            ) => return Ok(Sent::Queued(id)),
            // The server is busy or its storage is down for a moment: the
            // message waits in the outbox like after a lost connection.
            Err(ClientError::Server(e)) if e.retry_after_ms.is_some() => {
                return Ok(Sent::Queued(id));
            }
            Err(e) => return Err(e),
        }
        // The message is accepted; a self-update that cannot happen now
        // happens after a later message (it is a policy, not a duty).
        if !counts {
            return Ok(Sent::Accepted(id));
        }
        match self.maybe_self_update(conn, g).await {
            Ok(()) => {}
            Err(e) if e.is_temporary() => {}
            Err(e) => return Err(e),
        }
        Ok(Sent::Accepted(id))
    }
}
