//! What arrives: one delivery applied and saved in one local transaction
//! (the core's [`sotto_core::receive`] decides, [`crate::receive`] saves),
//! the mailbox backlog drained before an operation, acknowledgements, and
//! what is handed to the user once.

use std::time::Duration;

use sotto_core::receive;
use sotto_proto::{Delivery, DeviceId, EnvelopeKind, GroupId, Request, Response};
use tokio::time::{Instant, timeout_at};

use crate::ClientError;
use crate::conversation::{Notice, Receipt, Unread, Warning};
use crate::members::self_name;
use crate::profile::Profile;
use crate::receive::Outcome;
use crate::store::{StoredMessage, rows};
use crate::transport::{Connection, Event, unexpected};

/// What `receive` reports as it goes.
#[derive(Debug)]
pub enum ReceiveEvent<'a> {
    /// A new message, stored and acknowledged (or about to be).
    Message(&'a StoredMessage),
    /// A delivery that could not be processed and was set aside.
    Dropped(&'a Warning),
    /// The backlog is drained; what follows is pushed live.
    Synced,
    /// Something happened in a conversation: someone added this account
    /// to a group or started a conversation with it, a member joined or
    /// left, the timer changed.
    Notice(&'a Notice),
    /// Receipts for one of this account's messages changed.
    Receipt(&'a Receipt),
}

/// Acknowledge at least this often while receiving.
pub(crate) const ACK_BATCH: usize = 64;
/// How long `send` waits for the Welcome of a conversation the peer created
/// at the same moment.
const RACE_WAIT: Duration = Duration::from_secs(10);

impl Profile {
    /// Processes one delivery in one local transaction: the core applies
    /// it to the MLS state ([`sotto_core::receive`]) and what it returns is
    /// saved (messages, conversations, contacts, the dedup marker) in the
    /// same transaction. A delivery the core cannot read is rolled back and
    /// set aside in a second one, or makes this device rejoin.
    pub(crate) fn process(&mut self, d: &Delivery) -> Result<Outcome, ClientError> {
        let me = self.id.credential();
        let env = &d.envelope;
        let mut told = crate::receive::Told::default();
        let now = self.now_ms();
        let attempt = self.store.transaction(|p, c| {
            let kill_record = match env.kind {
                EnvelopeKind::Wipe => rows::kill_record(c)?,
                _ => None,
            };
            let left = matches!(
                env.kind,
                EnvelopeKind::Application | EnvelopeKind::Commit | EnvelopeKind::Proposal
            ) && crate::blocks::is_left(c, &env.group)?;
            let rejoin_pending = |g: GroupId| rows::rejoin_pending(c, &g).unwrap_or(false);
            let known = receive::Known {
                processed: rows::is_processed(c, env)?,
                left,
                kill_record: kill_record.as_ref(),
                rejoin_pending: &rejoin_pending,
            };
            let applied = receive::apply(p, &me, env, &known, now)?;
            crate::receive::save(p, c, &me, d, applied, now, &mut told)
        });
        self.warnings.append(&mut told.warnings);
        if attempt.is_ok() {
            // Learned with this delivery, at the time its messages got.
            for n in &mut told.notices {
                n.at_ms = now;
            }
            self.notices.append(&mut told.notices);
            self.receipts.append(&mut told.receipts);
            if told.leave {
                self.leaves.insert(env.group);
            }
        }
        match attempt {
            Ok(o) => Ok(o),
            // Rolled back: nothing the core wrote stays.
            Err(ClientError::Core(e)) => {
                let g = env.group;
                let (unread, name) = self.store.transaction(|p, c| {
                    let unread = receive::unreadable(p, env, e);
                    if let receive::Unreadable::SetAside(_) = unread {
                        rows::mark_processed(c, env)?;
                    }
                    Ok((unread, self_name(c, &g)))
                })?;
                match unread {
                    // A message or commit of a conversation whose state this
                    // device lost (none at all, or an older epoch than the
                    // message's): this device asks to be re-added.
                    receive::Unreadable::OutOfSync(o) => {
                        self.mark_out_of_sync(g, o.missing)?;
                        Ok(Outcome::OutOfSync(o.error.to_string()))
                    }
                    // Set aside (marked, acked) so that it does not block the
                    // mailbox; MLS state is unchanged. Never silently: the
                    // outcome names the conversation and the sender (as far
                    // as this device knows them).
                    receive::Unreadable::SetAside(s) => {
                        if let (EnvelopeKind::Commit, Some(epoch)) = (s.kind, s.epoch) {
                            // Should the server say the group is past this
                            // epoch, this is the commit that took it there.
                            self.refused_commits.insert((g, epoch));
                        }
                        // An application message names its sender only
                        // inside the MLS ciphertext this device could not read.
                        let who = match (s.sender, env.sender) {
                            (Some(m), _) => m.handle.to_string(),
                            (None, DeviceId::NONE) => "an unknown member".to_owned(),
                            (None, d) => format!("device {}", d.short()),
                        };
                        let what = match s.kind {
                            EnvelopeKind::Application => Unread::Message,
                            EnvelopeKind::Commit => Unread::Change,
                            EnvelopeKind::Proposal => Unread::Proposal,
                            EnvelopeKind::Welcome => Unread::Invitation,
                            EnvelopeKind::Wipe | EnvelopeKind::Device => Unread::Message,
                        };
                        Ok(Outcome::Dropped(Warning::Unreadable {
                            what,
                            from: who,
                            conversation: name,
                            reason: s.error.to_string(),
                        }))
                    }
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Decodes `bytes` as a frame from the server and processes it as
    /// `receive` does, without a socket: a delivery goes through the same
    /// transaction (a valid wipe order is reported, not carried out). The
    /// entry point of the fuzz target and of tests that play a hostile
    /// server. `Ok` says what happened to a delivery, `None` for other frames.
    pub(crate) fn process_server_frame(
        &mut self,
        bytes: &[u8],
    ) -> Result<Option<String>, ClientError> {
        let frame =
            sotto_proto::decode_server(bytes).map_err(|e| ClientError::Malformed(e.to_string()))?;
        let sotto_proto::ServerFrame::Deliver(d) = frame else {
            return Ok(None);
        };
        Ok(Some(match self.process(&d)? {
            Outcome::Stored => "stored".to_owned(),
            Outcome::Duplicate => "duplicate".to_owned(),
            Outcome::Dropped(w) => format!("dropped: {w:?}"),
            Outcome::Proposal(_) => "proposal".to_owned(),
            Outcome::Wipe => "wipe order".to_owned(),
            Outcome::OutOfSync(why) => format!("dropped: {why}"),
            Outcome::Ignored(_) => "ignored".to_owned(),
        }))
    }

    pub(crate) async fn ack(conn: &mut Connection, seqs: &mut Vec<u64>) -> Result<(), ClientError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(seqs);
        match conn.request(Request::Ack { seqs: batch }).await? {
            Response::Acked => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    pub(crate) async fn handle_event(
        &mut self,
        conn: &mut Connection,
        d: &Delivery,
        dropped: &mut Vec<Warning>,
    ) -> Result<(), ClientError> {
        match self.process(d)? {
            Outcome::Stored | Outcome::Duplicate | Outcome::OutOfSync(_) => {}
            Outcome::Dropped(why) => dropped.push(why),
            Outcome::Proposal(g) => {
                self.proposals.insert(g);
            }
            Outcome::Wipe => return Err(self.wipe_now(conn).await),
            Outcome::Ignored(None) => {}
            Outcome::Ignored(Some(g)) => self.refuse_conversation(conn, g).await?,
        }
        Ok(())
    }

    /// Reports the stored messages not shown yet, then marks them shown:
    /// at least once, so a crash between the two shows them again (with
    /// the same id) rather than never.
    pub(crate) fn show_unshown(
        &mut self,
        on_event: &mut impl FnMut(ReceiveEvent<'_>),
    ) -> Result<(), ClientError> {
        for n in std::mem::take(&mut self.notices) {
            on_event(ReceiveEvent::Notice(&n));
        }
        for r in self.take_receipts()? {
            on_event(ReceiveEvent::Receipt(&r));
        }
        let unshown = self.store.unshown(self.now_ms())?;
        for m in &unshown {
            on_event(ReceiveEvent::Message(m));
        }
        self.store.mark_shown(&unshown)?;
        // Shown to whoever runs `receive`: read.
        let mut groups: Vec<GroupId> = unshown.iter().map(|m| m.group).collect();
        groups.sort_unstable_by_key(|g| g.0);
        groups.dedup();
        if groups.is_empty() {
            return Ok(());
        }
        self.store.transaction(|_, c| {
            for g in &groups {
                crate::receipts::mark_read(c, g)?;
            }
            Ok(())
        })
    }

    /// The receipts that changed since the last call, with their counts now.
    pub(crate) fn take_receipts(&mut self) -> Result<Vec<Receipt>, ClientError> {
        let mut changed = std::mem::take(&mut self.receipts);
        changed.sort_unstable_by_key(|(g, id)| (g.0, id.0));
        changed.dedup();
        changed
            .into_iter()
            .map(|(conversation, id)| {
                let (delivered_to, read_by) = self.store.receipt_counts(&id)?;
                Ok(Receipt {
                    conversation,
                    id,
                    delivered_to,
                    read_by,
                })
            })
            .collect()
    }

    /// Processes the mailbox backlog (so Welcomes and commits are applied
    /// before sending); messages stay unshown for the next `receive`.
    pub(crate) async fn sync(&mut self, conn: &mut Connection) -> Result<(), ClientError> {
        let mut acks = Vec::new();
        let mut dropped = Vec::new();
        loop {
            // A connection past its backlog gets no further sync marker:
            // then only what already arrived is processed here.
            let ev = if conn.is_synced() {
                match conn.queued_event() {
                    Some(ev) => ev,
                    None => break,
                }
            } else {
                conn.next_event().await?
            };
            let Event::Deliver(d) = ev else {
                if conn.is_synced() {
                    continue;
                }
                break;
            };
            self.handle_event(conn, &d, &mut dropped).await?;
            acks.push(d.seq);
            if acks.len() >= ACK_BATCH {
                Self::ack(conn, &mut acks).await?;
            }
        }
        Self::ack(conn, &mut acks).await?;
        self.warnings.append(&mut dropped);
        self.commit_proposals(conn).await
    }

    pub(crate) async fn wait_for_group(
        &mut self,
        conn: &mut Connection,
        g: GroupId,
    ) -> Result<(), ClientError> {
        let deadline = Instant::now() + RACE_WAIT;
        let mut acks = Vec::new();
        let mut dropped = Vec::new();
        while !self.has_group(g)? {
            let ev = timeout_at(deadline, conn.next_event())
                .await
                .map_err(|_| {
                    ClientError::TryAgain(
                        "the conversation is being created by the peer; try again".into(),
                    )
                })??;
            if let Event::Deliver(d) = ev {
                self.handle_event(conn, &d, &mut dropped).await?;
                acks.push(d.seq);
            }
        }
        self.warnings.append(&mut dropped);
        Self::ack(conn, &mut acks).await
    }
}
