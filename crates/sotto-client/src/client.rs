//! The operations of a Sotto client: register, send, receive. Each opens
//! one connection, authenticates the device by signing the server's
//! challenge, keeps the device's KeyPackages stocked, and goes through the
//! encrypted store for every state change.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sotto_core::group;
use sotto_core::mls;
use sotto_core::receive;
use sotto_core::{AccountKey, AppMessage, Body, CredentialIdentity, DeviceKey, Suite};
use sotto_proto::{
    Blob, Delivery, EnvelopeKind, ErrorCode, GroupId, Handle, LoginRequest, MessageId,
    PROTOCOL_VERSION, RegisterRequest, RegistrationPolicy, Request, Response, SendRequest,
    UploadKeyPackages,
};
use tokio::time::{Instant, timeout_at};

use crate::clock::{Clock, SystemClock};
use crate::conversation::{ConversationState, Notice};
pub use crate::conversation::{Sent, human, parse_duration};
use crate::members::self_name;
use crate::receive::Outcome;
use crate::store::{Contact, Identity, NewMessage, Store, StoredMessage, rows};
use crate::transport::{Connection, Event, random_id, unexpected};
use crate::{ClientError, ServerLink};

/// A message as `receive` reports it.
pub type ReceivedMessage = StoredMessage;

/// What `receive` reports as it goes.
#[derive(Debug)]
pub enum ReceiveEvent<'a> {
    /// A new message, stored and acknowledged (or about to be).
    Message(&'a ReceivedMessage),
    /// A delivery that could not be processed and was set aside.
    Dropped(&'a str),
    /// The backlog is drained; what follows is pushed live.
    Synced,
    /// Something happened in a conversation: someone added this account
    /// to a group or started a conversation with it, a member joined or
    /// left, the timer changed.
    Notice(&'a Notice),
}

/// One-time KeyPackages a device keeps on its server.
const KEY_PACKAGE_TARGET: u32 = 30;
/// Refill when fewer than this many are left.
const KEY_PACKAGE_LOW: u32 = 10;
/// Acknowledge at least this often while receiving.
const ACK_BATCH: usize = 64;
/// How long `send` waits for the Welcome of a conversation the peer created
/// at the same moment.
const RACE_WAIT: Duration = Duration::from_secs(10);
/// How often one flush encrypts a message again for a group that keeps
/// moving before it leaves it queued for the next flush. Each refusal
/// means another commit landed: only a storm of commits (a burst of
/// renames, or a hostile member) takes a message this far.
const SEND_ATTEMPTS: usize = 32;

/// What `register` needs.
#[derive(Debug, Clone)]
pub struct RegisterOptions {
    /// The server.
    pub link: ServerLink,
    /// The handle to claim.
    pub handle: Handle,
    /// Invite code, for invite-only servers.
    pub invite: Option<String>,
    /// Ciphersuite for new conversations.
    pub suite: Suite,
}

/// An unlocked profile.
#[derive(Debug)]
pub struct Client {
    pub(crate) store: Store,
    pub(crate) id: Identity,
    /// Groups with a pending proposal (a member's leave) to commit.
    pub(crate) proposals: std::collections::BTreeSet<GroupId>,
    /// Groups this device leaves whose epoch moved on without its leave
    /// (another commit won): it proposes it again.
    pub(crate) leaves: std::collections::BTreeSet<GroupId>,
    /// Commits this device could not apply, by (group, its epoch then): if
    /// the server turns out to be past that epoch, this device is out of
    /// sync there.
    pub(crate) refused_commits: std::collections::BTreeSet<(GroupId, u64)>,
    /// Things the user must be told (key changes).
    pub(crate) warnings: Vec<String>,
    /// Things that happened in a conversation (members, timer), for the user.
    pub(crate) notices: Vec<Notice>,
    pub(crate) policy: Policy,
    /// The connection kept between operations once [`Client::go_online`]
    /// was called; `None` while offline.
    pub(crate) kept: Option<Connection>,
    /// Whether operations keep their connection for the next one.
    pub(crate) keep: bool,
    /// The wall clock.
    pub(crate) clock: Arc<dyn Clock>,
}

/// When this device commits on its own: a self-update in a conversation,
/// for post-compromise security, after `messages` messages sent or when the
/// last update is older than `max_age`.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Messages sent between self-updates.
    pub messages: u64,
    /// Longest time between self-updates.
    pub max_age: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            messages: 100,
            max_age: Duration::from_secs(7 * 86_400),
        }
    }
}

/// How a registration attempt failed: before the server heard of it, by
/// the server's refusal (nothing was stored), or without an answer (the
/// account may exist).
enum Attempt {
    NotSent(ClientError),
    Refused(ClientError),
    Unanswered(ClientError),
}

/// Sends the registration of `id` and returns the logged-in connection.
async fn register_request(
    id: &Identity,
    invite: Option<&str>,
) -> Result<(Connection, sotto_proto::Session), Attempt> {
    let mut conn = Connection::connect(&id.link)
        .await
        .map_err(Attempt::NotSent)?;
    let challenge = conn.hello().challenge;
    let pow_nonce = match (conn.hello().registration, invite) {
        (RegistrationPolicy::Open { pow_bits }, None) => {
            let handle = id.handle.to_string();
            let n = tokio::task::spawn_blocking(move || {
                sotto_proto::pow::solve(&challenge, &handle, pow_bits)
            })
            .await
            .map_err(|e| Attempt::NotSent(ClientError::Invalid(e.to_string())))?;
            Some(n)
        }
        (RegistrationPolicy::InviteOnly, None) => {
            return Err(Attempt::NotSent(ClientError::Server(
                sotto_proto::ProtoError::new(ErrorCode::InviteRequired),
            )));
        }
        _ => None,
    };
    let t =
        sotto_proto::register_transcript(&challenge, &id.handle, &id.account.id(), &id.device.id());
    let req = RegisterRequest {
        version: PROTOCOL_VERSION,
        handle: id.handle.clone(),
        account: id.account.id(),
        device: id.device.id(),
        invite: invite.map(str::to_owned),
        pow_nonce,
        account_signature: id.account.sign(&t),
        device_signature: id.device.sign(&t),
        device_list: id.account.sign_device_list(1, vec![id.device.id()]),
    };
    match conn.request(Request::Register(Box::new(req))).await {
        Ok(Response::LoggedIn(s)) => Ok((conn, s)),
        Ok(other) => Err(Attempt::Unanswered(unexpected(&other))),
        Err(e @ ClientError::Server(_)) => Err(Attempt::Refused(e)),
        Err(e) => Err(Attempt::Unanswered(e)),
    }
}

/// Logs `device` in at `link`.
async fn login(
    link: &ServerLink,
    device: &DeviceKey,
) -> Result<(Connection, sotto_proto::Session), ClientError> {
    let mut conn = Connection::connect(link).await?;
    let t = sotto_proto::login_transcript(&conn.hello().challenge, &device.id());
    let req = LoginRequest {
        version: PROTOCOL_VERSION,
        device: device.id(),
        signature: device.sign(&t),
    };
    match conn.request(Request::Login(req)).await? {
        Response::LoggedIn(s) => Ok((conn, s)),
        other => Err(unexpected(&other)),
    }
}

/// A safety number and the contact it is for.
#[derive(Debug, Clone)]
pub struct Verification {
    /// 60 digits, the same on both sides.
    pub number: String,
    /// The contact.
    pub contact: Contact,
}

impl Client {
    /// Opens an existing, registered profile, on the system's clock.
    pub fn open(dir: &Path, passphrase: &str) -> Result<Self, ClientError> {
        Self::open_with_clock(dir, passphrase, Arc::new(SystemClock))
    }

    /// Opens an existing, registered profile that reads time from `clock`.
    /// Disappearing messages whose time came while it was closed go at once.
    pub fn open_with_clock(
        dir: &Path,
        passphrase: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ClientError> {
        if !Store::db_path(dir).exists() {
            return Err(ClientError::NotRegistered);
        }
        let store = Store::open(dir, passphrase)?;
        let id = store.identity()?.ok_or(ClientError::NotRegistered)?;
        if !id.registered {
            return Err(ClientError::NotRegistered);
        }
        store.purge_expired(clock.now_ms())?;
        let mut client = Self::from_parts(store, id);
        client.clock = clock;
        Ok(client)
    }

    /// Creates the account: keys, registration, handle, KeyPackages.
    ///
    /// A registration the server refused or never received (unreachable,
    /// wrong certificate, handle taken) leaves nothing behind: the profile
    /// is free for another `register` or a link. One whose answer was lost
    /// keeps its keys, and the next `register` retries with them under
    /// whatever handle and server it names (logging in if the lost attempt
    /// did create the account).
    pub async fn register(
        dir: &Path,
        passphrase: &str,
        opts: RegisterOptions,
    ) -> Result<Self, ClientError> {
        let mut store = Store::open(dir, passphrase)?;
        let (id, retry) = match store.identity()? {
            Some(id) if id.registered => {
                return Err(ClientError::AlreadyRegistered(id.handle.to_string()));
            }
            // A registration that never got its answer: retry with the same keys.
            Some(id) => (
                Identity {
                    handle: opts.handle.clone(),
                    link: opts.link.clone(),
                    suite: opts.suite,
                    ..id
                },
                true,
            ),
            None => (
                Identity {
                    account: AccountKey::generate(),
                    device: DeviceKey::generate(),
                    handle: opts.handle.clone(),
                    link: opts.link.clone(),
                    suite: opts.suite,
                    registered: false,
                },
                false,
            ),
        };
        // Keys are on disk (encrypted) before the server hears of them.
        store.save_identity(&id)?;
        let (mut conn, session) = match register_request(&id, opts.invite.as_deref()).await {
            Ok(done) => done,
            // A retry the server refuses because the keys or the handle
            // exist: the lost attempt may have gone through.
            Err(Attempt::Refused(e))
                if retry
                    && matches!(
                        e.code(),
                        Some(ErrorCode::HandleTaken | ErrorCode::InvalidRequest)
                    ) =>
            {
                match login(&id.link, &id.device).await {
                    Ok(done) => done,
                    Err(_) => {
                        store.forget_unconfirmed()?;
                        return Err(e);
                    }
                }
            }
            Err(Attempt::NotSent(e) | Attempt::Refused(e)) => {
                store.forget_unconfirmed()?;
                return Err(e);
            }
            Err(Attempt::Unanswered(e)) => return Err(e),
        };
        let id = Identity {
            handle: session.handle.clone(),
            registered: true,
            ..id
        };
        store.save_identity(&id)?;
        let mut client = Self::from_parts(store, id);
        client
            .replenish(&mut conn, session.key_packages, session.has_last_resort)
            .await?;
        conn.close().await;
        Ok(client)
    }

    pub(crate) fn from_parts(store: Store, id: Identity) -> Self {
        Self {
            store,
            id,
            proposals: Default::default(),
            leaves: Default::default(),
            refused_commits: Default::default(),
            warnings: Vec::new(),
            notices: Vec::new(),
            policy: Policy::default(),
            kept: None,
            keep: false,
            clock: Arc::new(SystemClock),
        }
    }

    /// Reads time from `clock` from now on (the system's clock by default).
    pub fn set_clock(&mut self, clock: Arc<dyn Clock>) {
        self.clock = clock;
    }

    /// Now, on this client's clock (milliseconds since the Unix epoch).
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// This profile's handle.
    pub fn handle(&self) -> &Handle {
        &self.id.handle
    }

    /// This profile's credential identity.
    pub fn identity(&self) -> CredentialIdentity {
        self.id.credential()
    }

    /// Known contacts.
    pub fn contacts(&self) -> Result<Vec<Contact>, ClientError> {
        self.store.contacts()
    }

    /// Warnings gathered since the last call (key changes), for the user.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// The safety number with a contact.
    pub fn verification(&self, handle: &str) -> Result<Verification, ClientError> {
        let h = Handle::new(handle).map_err(|e| ClientError::Invalid(format!("{handle}: {e}")))?;
        let c = self.store.contact_info(&h)?.ok_or_else(|| {
            ClientError::Invalid(format!(
                "{h} is not a contact yet: exchange a message first"
            ))
        })?;
        Ok(Verification {
            number: sotto_core::verify::safety_number(&self.id.account.id(), &c.account),
            contact: c,
        })
    }

    /// Marks a contact's current identity key as verified.
    pub fn confirm(&mut self, handle: &str) -> Result<(), ClientError> {
        let v = self.verification(handle)?;
        let h = Handle::new(handle).map_err(|e| ClientError::Invalid(e.to_string()))?;
        if !self.store.confirm_contact(&h, &v.contact.account)? {
            return Err(ClientError::Invalid(
                "the contact changed meanwhile; run verify again".into(),
            ));
        }
        Ok(())
    }

    /// The kept connection if there is one, else a new, logged-in one.
    pub(crate) async fn connect(&mut self) -> Result<Connection, ClientError> {
        if let Some(conn) = self.kept.take() {
            return Ok(conn);
        }
        let mut conn = Connection::connect(&self.id.link).await?;
        let device = self.id.device.id();
        let t = sotto_proto::login_transcript(&conn.hello().challenge, &device);
        let req = LoginRequest {
            version: PROTOCOL_VERSION,
            device,
            signature: self.id.device.sign(&t),
        };
        let s = match conn.request(Request::Login(req)).await? {
            Response::LoggedIn(s) => s,
            other => return Err(unexpected(&other)),
        };
        self.replenish(&mut conn, s.key_packages, s.has_last_resort)
            .await?;
        self.refresh_kill_record(&mut conn, s.kill_record_version)
            .await?;
        self.settle_pending_commits(&mut conn).await?;
        Ok(conn)
    }

    /// Ends an operation's use of `conn`: kept for the next operation in
    /// a long-running session, closed otherwise. An operation that fails
    /// drops its connection instead, so the next one starts afresh.
    pub(crate) async fn done(&mut self, conn: Connection) {
        if self.keep {
            self.kept = Some(conn);
        } else {
            conn.close().await;
        }
    }

    pub(crate) async fn replenish(
        &mut self,
        conn: &mut Connection,
        have: u32,
        has_last_resort: bool,
    ) -> Result<(), ClientError> {
        if have >= KEY_PACKAGE_LOW && has_last_resort {
            return Ok(());
        }
        let n = KEY_PACKAGE_TARGET.saturating_sub(have) as usize;
        let me = self.id.credential();
        let suite = self.id.suite;
        let device = &self.id.device;
        let (kps, lr) = self.store.transaction(|p, _| {
            let kps = mls::key_packages(p, &me, device, suite, n)?;
            let lr = if has_last_resort {
                None
            } else {
                Some(mls::last_resort_key_package(p, &me, device, suite)?)
            };
            Ok((kps, lr))
        })?;
        let req = UploadKeyPackages {
            key_packages: kps.into_iter().map(Blob).collect(),
            last_resort: lr.map(Blob),
        };
        match conn.request(Request::UploadKeyPackages(req)).await? {
            Response::KeyPackagesStored { .. } => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Processes one delivery in one local transaction: the core applies
    /// it to the MLS state ([`sotto_core::receive`]) and what it returns is
    /// saved (messages, conversations, contacts, the dedup marker) in the
    /// same transaction. A delivery the core cannot read is rolled back and
    /// set aside in a second one, or makes this device rejoin.
    fn process(&mut self, d: &Delivery) -> Result<Outcome, ClientError> {
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
                processed: rows::is_processed(c, &env.sender, &env.msg_id)?,
                left,
                kill_record: kill_record.as_ref(),
                rejoin_pending: &rejoin_pending,
            };
            let applied = receive::apply(p, &me, env, &known, now)?;
            crate::receive::save(p, c, &me, d, applied, now, &mut told)
        });
        self.warnings.append(&mut told.warnings);
        if attempt.is_ok() {
            self.notices.append(&mut told.notices);
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
                        rows::mark_processed(c, &env.sender, &env.msg_id)?;
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
                        let who = s.sender.map_or_else(
                            || format!("device {}", env.sender.short()),
                            |m| m.handle.to_string(),
                        );
                        let what = match s.kind {
                            EnvelopeKind::Application => "a message",
                            EnvelopeKind::Commit => "a change to the group",
                            EnvelopeKind::Proposal => "a proposal",
                            EnvelopeKind::Welcome => "an invitation",
                            EnvelopeKind::Wipe | EnvelopeKind::Device => "a message",
                        };
                        Ok(Outcome::Dropped(format!(
                            "{what} from {who} in {name} could not be read ({})",
                            s.error
                        )))
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
    pub fn process_server_frame(&mut self, bytes: &[u8]) -> Result<Option<String>, ClientError> {
        let frame =
            sotto_proto::decode_server(bytes).map_err(|e| ClientError::Malformed(e.to_string()))?;
        let sotto_proto::ServerFrame::Deliver(d) = frame else {
            return Ok(None);
        };
        Ok(Some(match self.process(&d)? {
            Outcome::Stored => "stored".to_owned(),
            Outcome::Duplicate => "duplicate".to_owned(),
            Outcome::Dropped(why) => format!("dropped: {why}"),
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
        dropped: &mut Vec<String>,
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

    /// Receives until the backlog is drained, then until `wait` has passed,
    /// reporting every new message, every delivery set aside, and the
    /// moment the backlog is drained.
    pub async fn receive(
        &mut self,
        wait: Duration,
        mut on_event: impl FnMut(ReceiveEvent<'_>),
    ) -> Result<(), ClientError> {
        // `receive` waits for the sync marker of a fresh connection.
        if let Some(kept) = self.kept.take() {
            kept.close().await;
        }
        let mut conn = self.connect().await?;
        self.flush_outbox(&mut conn).await?;
        let mut acks = Vec::new();
        let mut synced = false;
        let mut deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ev = match timeout_at(deadline, conn.next_event()).await {
                Ok(ev) => ev?,
                Err(_) if synced => break,
                Err(_) => return Err(ClientError::Timeout),
            };
            match ev {
                Event::Deliver(d) => {
                    let mut dropped = Vec::new();
                    self.handle_event(&mut conn, &d, &mut dropped).await?;
                    dropped
                        .iter()
                        .for_each(|w| on_event(ReceiveEvent::Dropped(w)));
                    acks.push(d.seq);
                    if acks.len() >= ACK_BATCH || synced {
                        Self::ack(&mut conn, &mut acks).await?;
                    }
                    if synced {
                        self.commit_proposals(&mut conn).await?;
                    }
                }
                Event::Synced => {
                    synced = true;
                    deadline = Instant::now() + wait;
                    Self::ack(&mut conn, &mut acks).await?;
                    self.commit_proposals(&mut conn).await?;
                    self.show_unshown(&mut on_event)?;
                    on_event(ReceiveEvent::Synced);
                }
            }
            self.show_unshown(&mut on_event)?;
            if synced && wait.is_zero() {
                break;
            }
        }
        Self::ack(&mut conn, &mut acks).await?;
        self.show_unshown(&mut on_event)?;
        self.download_pending(&mut conn).await?;
        self.done(conn).await;
        Ok(())
    }

    /// Reports the stored messages not shown yet, then marks them shown:
    /// at least once, so a crash between the two shows them again (with
    /// the same id) rather than never.
    fn show_unshown(
        &mut self,
        on_event: &mut impl FnMut(ReceiveEvent<'_>),
    ) -> Result<(), ClientError> {
        for n in std::mem::take(&mut self.notices) {
            on_event(ReceiveEvent::Notice(&n));
        }
        let unshown = self.store.unshown(self.now_ms())?;
        for m in &unshown {
            on_event(ReceiveEvent::Message(m));
        }
        self.store.mark_shown(&unshown)
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
    async fn encrypt_again(
        &mut self,
        conn: &mut Connection,
        e: &crate::store::OutboxEntry,
        current: u64,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let g = e.group;
        let name = self_name(self.store.conn(), &g);
        let Some(plaintext) = &e.plaintext else {
            self.store.outbox_done(&e.msg_id)?;
            self.warnings.push(format!(
                "a message to {name} queued by an older version could not be sent again: send it again"
            ));
            return Ok(None);
        };
        match self.catch_up(conn, g, current).await {
            Ok(()) => {}
            Err(ClientError::Invalid(_)) if !self.is_member(g)? => {}
            Err(err) => return Err(err),
        }
        if !self.is_member(g)? {
            self.store.outbox_done(&e.msg_id)?;
            self.warnings.push(format!(
                "a message to {name} was not sent: this device is no longer a member"
            ));
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
    fn is_member(&mut self, g: GroupId) -> Result<bool, ClientError> {
        self.store
            .transaction(|p, _| Ok(mls::has_group(p, g)? && group::is_active(p, g)?))
    }

    pub(crate) fn has_group(&mut self, g: GroupId) -> Result<bool, ClientError> {
        self.store.transaction(|p, _| Ok(mls::has_group(p, g)?))
    }

    /// The one-to-one conversation with `peer`, created if needed.
    async fn direct(
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

    async fn wait_for_group(
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
                    ClientError::Invalid(
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

    /// Sets (or, with `None`, turns off) a conversation's disappearing
    /// timer, in seconds. In a group only admins may.
    pub async fn set_timer(
        &mut self,
        target: &str,
        seconds: Option<u64>,
    ) -> Result<(), ClientError> {
        let mut conn = self.connect().await?;
        self.sync(&mut conn).await?;
        let g = match self.resolve(target)? {
            crate::conversation::Target::Group(g) => {
                let meta = self.store.transaction(|p, _| Ok(group::meta(p, g)?))?;
                if meta.is_some_and(|m| !m.is_admin(&self.id.account.id())) {
                    return Err(ClientError::Invalid(
                        "only admins change the group's timer".into(),
                    ));
                }
                g
            }
            crate::conversation::Target::Handle(h) => self.direct(&mut conn, &h).await?,
        };
        self.commit_with_retry(&mut conn, g, |_| {
            Ok(group::Change {
                timer: Some(seconds),
                ..group::Change::default()
            })
        })
        .await?;
        self.done(conn).await;
        Ok(())
    }

    /// The stored messages of a conversation (expired ones are deleted first).
    pub fn history(&mut self, target: &str) -> Result<Vec<ReceivedMessage>, ClientError> {
        let g = self.conversation_id(target)?;
        self.store.history(&g, self.now_ms())
    }

    /// The group of a conversation named by group name, `#id` or the peer's handle.
    pub(crate) fn conversation_id(&mut self, target: &str) -> Result<GroupId, ClientError> {
        Ok(match self.resolve(target)? {
            crate::conversation::Target::Group(g) => g,
            crate::conversation::Target::Handle(h) => {
                let acc = self
                    .store
                    .contact(&h)?
                    .ok_or_else(|| ClientError::Invalid(format!("no conversation with {h}")))?;
                GroupId::direct(&self.id.account.id(), &acc)
            }
        })
    }

    /// Sets the duress passphrase of this profile.
    pub fn set_duress(&self, duress: &str) -> Result<(), ClientError> {
        self.store.set_duress(duress)
    }

    /// Sets when this device commits self-updates.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// Sends `text` to a group (by name or `#id`) or to the one-to-one
    /// conversation with a handle.
    pub async fn send(&mut self, to: &str, text: &str) -> Result<Sent, ClientError> {
        self.send_text(to, None, text).await
    }

    /// Sends `text` to `to` (as [`Client::send`]) as a reply to the message
    /// `reply_to` of that conversation. The id is not checked against the
    /// stored messages: receivers that don't have that message show the
    /// reply as a reply to a message they don't have. To turn what a user
    /// typed into an id, see [`Client::find_message`].
    pub async fn send_reply(
        &mut self,
        to: &str,
        reply_to: MessageId,
        text: &str,
    ) -> Result<Sent, ClientError> {
        self.send_text(to, Some(reply_to), text).await
    }

    /// The id of a stored message of the conversation `conversation` (as
    /// [`Client::history`] names it) from its hex id or a unique prefix of
    /// it, as `sotto receive --json` and `sotto history` print it. A full
    /// 32-digit id is taken as it is, stored or not.
    pub fn find_message(&mut self, conversation: &str, id: &str) -> Result<MessageId, ClientError> {
        let want = id.trim().to_ascii_lowercase();
        if let Some(full) = MessageId::from_hex(&want) {
            return Ok(full);
        }
        if want.is_empty() || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ClientError::Invalid(format!(
                "{id:?} is not a message id or a prefix of one"
            )));
        }
        let found: Vec<MessageId> = self
            .history(conversation)?
            .into_iter()
            .map(|m| m.id)
            .filter(|m| m.to_hex().starts_with(&want))
            .collect();
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(ClientError::Invalid(format!(
                "no message {want} in {conversation}"
            ))),
            _ => Err(ClientError::Invalid(format!(
                "{want} matches several messages: give more digits"
            ))),
        }
    }

    /// The text send path of [`Client::send`] and [`Client::send_reply`].
    async fn send_text(
        &mut self,
        to: &str,
        reply_to: Option<MessageId>,
        text: &str,
    ) -> Result<Sent, ClientError> {
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
        let mut conn = self.connect().await?;
        // Welcomes and commits first: the target may be a group that just arrived.
        self.sync(&mut conn).await?;
        self.flush_outbox(&mut conn).await?;
        let g = self.target(&mut conn, to).await?;
        let body = match reply_to {
            Some(to) => Body::Reply {
                to,
                text: text.to_owned(),
            },
            None => Body::Text(text.to_owned()),
        };
        let sent = self.send_body(&mut conn, g, body, text).await?;
        self.sent_on(conn, sent).await;
        Ok(sent)
    }

    /// Ends a send's use of `conn`: kept if the server took the message,
    /// dropped if it is queued (the connection may be the reason), so the
    /// next operation starts afresh.
    pub(crate) async fn sent_on(&mut self, conn: Connection, sent: Sent) {
        match sent {
            Sent::Accepted(_) => self.done(conn).await,
            Sent::Queued(_) => conn.close().await,
        }
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
        let g = match self.resolve(to)? {
            crate::conversation::Target::Handle(peer) => self.direct(conn, &peer).await,
            crate::conversation::Target::Group(g) => {
                match self.store.conversation(&g)?.map(|c| c.state) {
                    Some(ConversationState::Active) => Ok(g),
                    Some(ConversationState::Leaving) => {
                        Err(ClientError::Invalid("you are leaving this group".into()))
                    }
                    _ => Err(ClientError::Invalid(
                        "you are no longer a member of this group".into(),
                    )),
                }
            }
        }?;
        if self.out_of_sync(g)? {
            self.rejoin(conn, g).await?;
        }
        if self.out_of_sync(g)? {
            return Err(ClientError::Invalid(format!(
                "this device lost its state of {to} and could not rejoin it yet: try again later"
            )));
        }
        Ok(g)
    }

    /// Encrypts `body` for `g`, keeps it (as `shown` locally), and sends it.
    pub(crate) async fn send_body(
        &mut self,
        conn: &mut Connection,
        g: GroupId,
        body: Body,
        shown: &str,
    ) -> Result<Sent, ClientError> {
        let text = shown;
        let reply_to = body.reply_to();
        let id = random_id();
        let now = self.now_ms();
        let app = AppMessage {
            id,
            sent_at_ms: now,
            body,
        }
        .encode();
        let me = self.id.credential();
        let device = &self.id.device;
        self.store.transaction(|p, c| {
            let (ct, timer) = mls::encrypt_with_timer(p, device, g, &app)?;
            let ttl = timer.map(|t| t.saturating_mul(1000));
            rows::put_outbox(c, &id, &g, (&ct, &app), now, ttl)?;
            rows::put_message(
                c,
                &NewMessage {
                    id,
                    group: g,
                    sender: &me,
                    outgoing: true,
                    from_this_device: true,
                    text,
                    sent_at_ms: now,
                    received_at_ms: now,
                    seq: 0,
                    expires_at_ms: timer.map(|t| now.saturating_add(t.saturating_mul(1000))),
                    reply_to,
                },
            )?;
            rows::count_sent(c, &g)
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
        match self.maybe_self_update(conn, g).await {
            Ok(()) => {}
            Err(e) if e.is_temporary() => {}
            Err(e) => return Err(e),
        }
        Ok(Sent::Accepted(id))
    }
}
