//! The client's public face: a [`Client`] is an unlocked profile
//! ([`crate::profile::Profile`]) and the connection it keeps or opens per
//! operation. Each operation here checks what it can before connecting,
//! then runs its helpers on the profile and one logged-in connection
//! ([`Client::connect`]); the helpers live with their concern (`inbox`,
//! `send`, `groups`, `devices`, `files`, `blocks`, `killcode`, `rejoin`)
//! and never open, keep or close a connection themselves.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sotto_core::{AccountKey, CredentialIdentity, DeviceKey, Suite};
use sotto_proto::{
    DeviceId, ErrorCode, GroupId, Handle, LoginRequest, MessageId, PROTOCOL_VERSION,
    RegisterRequest, RegistrationPolicy, Request, Response,
};
use tokio::time::{Instant, timeout_at};

use crate::clock::{Clock, SystemClock};
pub use crate::conversation::{Sent, Warning, human, parse_duration};
use crate::devices::{DeviceInfo, LinkCode};
use crate::groups::GroupInfo;
use crate::inbox::ACK_BATCH;
pub use crate::inbox::ReceiveEvent;
pub use crate::profile::Policy;
use crate::profile::Profile;
pub use crate::send::Change;
use crate::store::{Contact, Identity, Store, StoredMessage};
use crate::transport::{Connection, Event, unexpected};
use crate::{ClientError, ServerLink};

/// A message as `receive` reports it.
pub type ReceivedMessage = StoredMessage;

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

/// An unlocked profile and its connection.
#[derive(Debug)]
pub struct Client {
    pub(crate) p: Profile,
    /// The connection kept between operations once [`Client::go_online`]
    /// was called; `None` while offline.
    pub(crate) kept: Option<Connection>,
    /// Whether operations keep their connection for the next one.
    pub(crate) keep: bool,
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
        let mut p = Profile::new(store, id);
        p.clock = clock;
        Ok(Self::from_profile(p))
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
        let mut p = Profile::new(store, id);
        p.replenish(&mut conn, session.key_packages, session.has_last_resort)
            .await?;
        // Pins the key directory and checks the new entry.
        p.monitor_directory(&mut conn).await?;
        conn.close().await;
        Ok(Self::from_profile(p))
    }

    /// Waits until an existing device approved the link started by
    /// [`devices::link_start`](crate::devices::link_start), takes over the
    /// account, and joins the conversations it is added to.
    pub async fn link_wait(
        dir: &Path,
        passphrase: &str,
        wait: Duration,
    ) -> Result<Self, ClientError> {
        Ok(Self::from_profile(
            crate::devices::link_wait(dir, passphrase, wait).await?,
        ))
    }

    /// Restores the encrypted backup at `file` (opened with `key`) into the
    /// new profile at `dir`, as a new device of the backed-up account
    /// signed in with the account key alone, and joins its conversations
    /// again.
    pub async fn restore_backup(
        dir: &Path,
        passphrase: &str,
        file: &Path,
        key: &crate::backup::RecoveryKey,
    ) -> Result<(Self, crate::backup::Restored), ClientError> {
        let (p, restored) =
            crate::backup::restore(dir, passphrase, file, key, &mut rand::rngs::OsRng).await?;
        Ok((Self::from_profile(p), restored))
    }

    /// Writes an encrypted backup of this profile to `file` (a new file):
    /// history, contacts, verification states and settings, sealed under
    /// the recovery key returned, which is nowhere else: show it once.
    pub fn create_backup(
        &mut self,
        file: &Path,
    ) -> Result<(crate::backup::RecoveryKey, crate::backup::BackupSummary), ClientError> {
        self.p.create_backup(file, &mut rand::rngs::OsRng)
    }

    fn from_profile(p: Profile) -> Self {
        Self {
            p,
            kept: None,
            keep: false,
        }
    }

    /// Reads time from `clock` from now on (the system's clock by default).
    pub fn set_clock(&mut self, clock: Arc<dyn Clock>) {
        self.p.clock = clock;
    }

    /// Now, on this client's clock (milliseconds since the Unix epoch).
    pub fn now_ms(&self) -> u64 {
        self.p.now_ms()
    }

    /// This profile's handle.
    pub fn handle(&self) -> &Handle {
        &self.p.id.handle
    }

    /// This profile's credential identity.
    pub fn identity(&self) -> CredentialIdentity {
        self.p.id.credential()
    }

    /// Known contacts.
    pub fn contacts(&self) -> Result<Vec<Contact>, ClientError> {
        self.p.store.contacts()
    }

    /// Warnings gathered since the last call (key changes), for the user.
    pub fn take_warnings(&mut self) -> Vec<Warning> {
        std::mem::take(&mut self.p.warnings)
    }

    /// The safety number with a contact.
    pub fn verification(&self, handle: &str) -> Result<Verification, ClientError> {
        let h = Handle::new(handle).map_err(|e| ClientError::Invalid(format!("{handle}: {e}")))?;
        let c = self.p.store.contact_info(&h)?.ok_or_else(|| {
            ClientError::NotFound(format!(
                "{h} is not a contact yet: exchange a message first"
            ))
        })?;
        Ok(Verification {
            number: sotto_core::verify::safety_number(&self.p.id.account.id(), &c.account),
            contact: c,
        })
    }

    /// Marks a contact's current identity key as verified.
    pub fn confirm(&mut self, handle: &str) -> Result<(), ClientError> {
        let v = self.verification(handle)?;
        let h = Handle::new(handle).map_err(|e| ClientError::Invalid(e.to_string()))?;
        if !self.p.store.confirm_contact(&h, &v.contact.account)? {
            return Err(ClientError::TryAgain(
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
        let mut conn = Connection::connect(&self.p.id.link).await?.patient();
        let device = self.p.id.device.id();
        let t = sotto_proto::login_transcript(&conn.hello().challenge, &device);
        let req = LoginRequest {
            version: PROTOCOL_VERSION,
            device,
            signature: self.p.id.device.sign(&t),
        };
        let s = match conn.request(Request::Login(req)).await? {
            Response::LoggedIn(s) => s,
            other => return Err(unexpected(&other)),
        };
        self.p.logged_in(&mut conn, &s).await?;
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

    /// Runs `op` on the profile and a connection ([`Client::connect`]),
    /// then hands the connection to [`Client::done`]; a failed `op` drops it.
    async fn online<T>(
        &mut self,
        op: impl AsyncFnOnce(&mut Profile, &mut Connection) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let mut conn = self.connect().await?;
        let out = op(&mut self.p, &mut conn).await?;
        self.done(conn).await;
        Ok(out)
    }

    /// [`Client::online`] for a send: the connection is kept if the server
    /// took the message, dropped if it is only queued (the connection may
    /// be the reason), so the next operation starts afresh.
    async fn sending(
        &mut self,
        op: impl AsyncFnOnce(&mut Profile, &mut Connection) -> Result<Sent, ClientError>,
    ) -> Result<Sent, ClientError> {
        let mut conn = self.connect().await?;
        let sent = op(&mut self.p, &mut conn).await?;
        match sent {
            Sent::Accepted(_) => self.done(conn).await,
            Sent::Queued(_) => conn.close().await,
        }
        Ok(sent)
    }

    /// Decodes `bytes` as a frame from the server and processes it as
    /// `receive` does, without a socket: a delivery goes through the same
    /// transaction (a valid wipe order is reported, not carried out). The
    /// entry point of the fuzz target and of tests that play a hostile
    /// server. `Ok` says what happened to a delivery, `None` for other frames.
    pub fn process_server_frame(&mut self, bytes: &[u8]) -> Result<Option<String>, ClientError> {
        self.p.process_server_frame(bytes)
    }

    /// How many times a group's MLS state was loaded from the store since
    /// the profile was opened: a long-running client holds the groups it
    /// uses loaded (at most `sotto_core::mls::Limit::default()`), so this
    /// grows with the groups used, not with the messages. For benchmarks.
    pub fn group_loads(&self) -> u64 {
        self.p.store.group_loads()
    }

    /// How many groups this client holds loaded at most: by default
    /// `sotto_core::mls::Limit::default()`; `groups: 0` holds none, and
    /// each operation loads its group's whole state from the store again
    /// (the benchmarks' comparison).
    pub fn set_group_limit(&mut self, limit: sotto_core::mls::Limit) {
        self.p.store.set_group_limit(limit);
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
        self.p.flush_outbox(&mut conn).await?;
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
                    self.p.handle_event(&mut conn, &d, &mut dropped).await?;
                    dropped
                        .iter()
                        .for_each(|w| on_event(ReceiveEvent::Dropped(w)));
                    acks.push(d.seq);
                    if acks.len() >= ACK_BATCH || synced {
                        Profile::ack(&mut conn, &mut acks).await?;
                    }
                    if synced {
                        self.p.commit_proposals(&mut conn).await?;
                    }
                }
                Event::Synced => {
                    synced = true;
                    deadline = Instant::now() + wait;
                    Profile::ack(&mut conn, &mut acks).await?;
                    self.p.commit_proposals(&mut conn).await?;
                    self.p.show_unshown(&mut on_event)?;
                    self.p.flush_receipts(&mut conn).await?;
                    on_event(ReceiveEvent::Synced);
                }
            }
            self.p.show_unshown(&mut on_event)?;
            if synced && wait.is_zero() {
                break;
            }
        }
        Profile::ack(&mut conn, &mut acks).await?;
        self.p.show_unshown(&mut on_event)?;
        self.p.flush_receipts(&mut conn).await?;
        self.p.download_pending(&mut conn).await?;
        self.done(conn).await;
        Ok(())
    }

    /// Sets (or, with `None`, turns off) a conversation's disappearing
    /// timer, in seconds. In a group only admins may.
    pub async fn set_timer(
        &mut self,
        target: &str,
        seconds: Option<u64>,
    ) -> Result<(), ClientError> {
        self.online(async |p, c| p.set_timer(c, target, seconds).await)
            .await
    }

    /// The stored messages of a conversation (expired ones are deleted first).
    pub fn history(&mut self, target: &str) -> Result<Vec<ReceivedMessage>, ClientError> {
        let g = self.p.conversation_id(target)?;
        self.p.store.history(&g, self.p.now_ms())
    }

    /// The stored messages whose text has every word of `text` (the last
    /// one may be the beginning of a word; case and diacritics don't
    /// matter), newest first, at most [`crate::store::SEARCH_LIMIT`]; only
    /// in the conversation `conversation` (as [`Client::history`] names it)
    /// if given. `text` is words, never query syntax; with no word it is
    /// [`ClientError::Invalid`]. Expired messages are deleted first.
    pub fn search(
        &mut self,
        text: &str,
        conversation: Option<&str>,
    ) -> Result<Vec<ReceivedMessage>, ClientError> {
        let query = crate::store::SearchQuery::new(text)?;
        let g = conversation
            .map(|c| self.p.conversation_id(c))
            .transpose()?;
        self.p.store.search(&query, g.as_ref(), self.p.now_ms())
    }

    /// Sets the duress passphrase of this profile.
    pub fn set_duress(&self, duress: &str) -> Result<(), ClientError> {
        self.p.store.set_duress(duress)
    }

    /// Sets when this device commits self-updates.
    pub fn set_policy(&mut self, policy: Policy) {
        self.p.policy = policy;
    }

    /// Sends `text` to a group (by name or `#id`) or to the one-to-one
    /// conversation with a handle.
    pub async fn send(&mut self, to: &str, text: &str) -> Result<Sent, ClientError> {
        self.p.check_text(to, text)?;
        self.sending(async |p, c| p.send_text(c, to, None, text).await)
            .await
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
        self.p.check_text(to, text)?;
        self.sending(async |p, c| p.send_text(c, to, Some(reply_to), text).await)
            .await
    }

    /// Sends a change to a stored message of the conversation `to` (as
    /// [`Client::send`] names it): a reaction or its removal, an edit of
    /// one of this account's texts, or the deletion of one of this
    /// account's messages for everyone. What this account may not do
    /// (change another member's message, edit a file, change a deleted
    /// message) is refused before anything is sent.
    pub async fn change(&mut self, to: &str, change: Change) -> Result<Sent, ClientError> {
        if let Change::Edit { text, .. } = &change {
            self.p.check_text(to, text)?;
        }
        self.sending(async |p, c| p.send_change(c, to, change).await)
            .await
    }

    /// Marks the messages of `conversation` from other members read (they
    /// were shown to the user) and, where read receipts are on, sends the
    /// read receipts (if the server is reachable; else with the next
    /// batch). Returns how many messages were newly read.
    pub async fn mark_read(&mut self, conversation: &str) -> Result<usize, ClientError> {
        let g = self.p.conversation_id(conversation)?;
        let n = self
            .p
            .store
            .transaction(|_, c| crate::receipts::mark_read(c, &g))?;
        if n > 0 {
            match self.online(async |p, c| p.flush_receipts(c).await).await {
                Ok(()) => {}
                Err(e) if e.is_temporary() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Turns read receipts on or off for the profile (`conversation`
    /// `None`), or for one conversation (`on` `None`: back to the
    /// profile's setting). Delivery receipts are always sent, in
    /// conversations small enough for receipts.
    pub fn set_read_receipts(
        &mut self,
        conversation: Option<&str>,
        on: Option<bool>,
    ) -> Result<(), ClientError> {
        let g = conversation
            .map(|c| self.p.conversation_id(c))
            .transpose()?;
        self.p
            .store
            .transaction(|_, c| crate::receipts::set_read_receipts(c, g.as_ref(), on))
    }

    /// Who reacted to the message `id` of the conversation `conversation`,
    /// and with what: (handle, emoji), in the order they reacted.
    pub fn reactions(
        &mut self,
        conversation: &str,
        id: MessageId,
    ) -> Result<Vec<(String, String)>, ClientError> {
        let g = self.p.conversation_id(conversation)?;
        self.p.store.reactions(&g, &id)
    }

    /// Encrypts and uploads a file, then sends its reference to `to`.
    pub async fn send_file(&mut self, to: &str, path: &Path) -> Result<Sent, ClientError> {
        let file = crate::files::seal(path)?;
        self.sending(async |p, c| p.send_file(c, to, file).await)
            .await
    }

    /// The id of a stored message of the conversation `conversation` (as
    /// [`Client::history`] names it) from its hex id or a unique prefix of
    /// it, as `sotto receive --json` and `sotto history` print it. A full
    /// 32-digit id is taken as it is, stored or not.
    pub fn find_message(&mut self, conversation: &str, id: &str) -> Result<MessageId, ClientError> {
        self.p.find_message(conversation, id)
    }

    /// Creates a group named `name` with `members` (handles); this account
    /// is its admin.
    pub async fn group_create(
        &mut self,
        name: &str,
        members: &[&str],
    ) -> Result<GroupId, ClientError> {
        let name = crate::groups::valid_name(name)?;
        let handles = self.p.handles(members)?;
        self.online(async |p, c| p.group_create(c, &name, &handles).await)
            .await
    }

    /// Adds `members` (handles) to a group; admins only. Returns the new epoch.
    pub async fn group_add(&mut self, target: &str, members: &[&str]) -> Result<u64, ClientError> {
        let handles = self.p.handles(members)?;
        self.online(async |p, c| p.group_add(c, target, &handles).await)
            .await
    }

    /// Removes `members` (handles, all their devices) from a group; admins
    /// only. Returns the new epoch.
    pub async fn group_remove(
        &mut self,
        target: &str,
        members: &[&str],
    ) -> Result<u64, ClientError> {
        let handles = self.p.handles(members)?;
        self.online(async |p, c| p.group_remove(c, target, &handles).await)
            .await
    }

    /// Renames a group; admins only.
    pub async fn group_rename(&mut self, target: &str, name: &str) -> Result<(), ClientError> {
        let name = crate::groups::valid_name(name)?;
        self.online(async |p, c| p.group_rename(c, target, &name).await)
            .await
    }

    /// Makes `member` an admin of a group; admins only.
    pub async fn group_promote(&mut self, target: &str, member: &str) -> Result<(), ClientError> {
        let handle =
            Handle::new(member).map_err(|e| ClientError::Invalid(format!("{member}: {e}")))?;
        self.online(async |p, c| p.group_promote(c, target, &handle).await)
            .await
    }

    /// Leaves a conversation, a group or the one-to-one conversation with
    /// a handle, alone: proposes this device's removal (for whichever
    /// member commits next), the server stops routing it here and this
    /// device marks it removed at once.
    pub async fn group_leave(&mut self, target: &str) -> Result<(), ClientError> {
        self.online(async |p, c| p.group_leave(c, target).await)
            .await
    }

    /// Every group this profile knows, with members and epoch.
    pub fn groups(&mut self) -> Result<Vec<GroupInfo>, ClientError> {
        self.p.groups()
    }

    /// A conversation's MLS epoch and epoch authenticator (by group name,
    /// `#id` or the peer's handle). Every member in the same epoch of the
    /// same group has the same authenticator; members that differ are
    /// forked (a different commit applied on each side) and can compare
    /// them out of band.
    pub fn epoch_authenticator(&mut self, target: &str) -> Result<(u64, Vec<u8>), ClientError> {
        self.p.epoch_authenticator(target)
    }

    /// Approves a new device from its link code: signs it into the
    /// account's device list, hands it the account, and adds it to every
    /// conversation. Returns how many conversations it was added to.
    pub async fn approve(&mut self, code: &str) -> Result<usize, ClientError> {
        let code = LinkCode::parse(code)?;
        self.online(async |p, c| p.approve(c, &code).await).await
    }

    /// The account's devices, from its signed list.
    pub async fn devices(&mut self) -> Result<Vec<DeviceInfo>, ClientError> {
        self.online(async |p, c| p.devices(c).await).await
    }

    /// Revokes a device (by id prefix): signs it out of the device list,
    /// which makes the server drop it, and removes it from every conversation.
    pub async fn revoke(&mut self, prefix: &str) -> Result<DeviceId, ClientError> {
        self.online(async |p, c| p.revoke(c, prefix).await).await
    }

    /// Sets the account's kill code for every device the account has now.
    /// Returns how many devices it covers.
    pub async fn kill_code_set(&mut self, code: &str) -> Result<usize, ClientError> {
        self.online(async |p, c| p.kill_code_set(c, code).await)
            .await
    }

    /// Blocks `handle` (a known contact): its messages are dropped unread,
    /// its invitations refused, and the server refuses its claims of this
    /// account's KeyPackages.
    pub async fn block(&mut self, handle: &str) -> Result<(), ClientError> {
        let (h, account) = self.p.known_contact(handle)?;
        self.online(async |p, c| p.block(c, &h, account).await)
            .await
    }

    /// Undoes [`Client::block`].
    pub async fn unblock(&mut self, handle: &str) -> Result<(), ClientError> {
        let account = self.p.blocked_account(handle)?;
        self.online(async |p, c| p.unblock(c, account).await).await
    }

    /// The handles this profile blocked, sorted.
    pub fn blocked(&mut self) -> Result<Vec<Handle>, ClientError> {
        self.p.blocked()
    }
}
