//! The [`Store`]: everything the server keeps, behind one trait owned by the
//! server. Each operation that must be atomic is one method, so a backend can
//! make it one transaction: registering an account consumes its invite, a
//! commit moves the epoch and fills the mailboxes, a send records the message
//! id and fills the mailboxes. A method returns only after its writes are
//! durable; callers acknowledge to clients only after it returned.
//!
//! Getters return `Result<Option<T>, StoreError>`: `Err` is a failure, `None`
//! is absence.

pub mod conformance;
pub mod postgres;
pub mod sqlite;

use std::future::Future;

use sotto_proto::{
    AccountId, BlobId, DeviceId, Envelope, EnvelopeKind, GroupId, Handle, MessageId,
    SignedDeviceList, SignedKillRecord,
};

/// A storage failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot take writes now (disk full, database down); retry later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A bug or corrupt data.
    #[error("storage error: {0}")]
    Internal(String),
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The invite is unknown, used or expired.
    #[error("invalid invite")]
    InvalidInvite,
    /// The handle belongs to someone else.
    #[error("handle taken")]
    HandleTaken,
    /// The account or device key is registered already.
    #[error("account or device already registered")]
    AlreadyRegistered,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a commit was refused.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The group is at another epoch.
    #[error("stale epoch, group is at {0}")]
    StaleEpoch(u64),
    /// The sender is not a member of the group.
    #[error("not a member")]
    NotMember,
    /// A recipient's mailbox is full.
    #[error("mailbox full")]
    MailboxFull,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a send was refused.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The sender is not a member of the group (or the group does not exist).
    #[error("not a member")]
    NotMember,
    /// The message was encrypted in an epoch that is no longer the group's
    /// (the group's current one is given): nothing was stored.
    #[error("group is at epoch {0}")]
    StaleEpoch(u64),
    /// A recipient's mailbox is full.
    #[error("mailbox full")]
    MailboxFull,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a device list was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeviceListError {
    /// Not newer than the stored one.
    #[error("device list version {0} is not newer than the stored one")]
    Stale(u64),
    /// A device on the list belongs to another account.
    #[error("a listed device belongs to another account")]
    ForeignDevice,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a new device list changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceListChange {
    /// Devices that joined the account.
    pub added: Vec<DeviceId>,
    /// Devices that were revoked.
    pub revoked: Vec<DeviceId>,
}

/// How much of a blob has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobState {
    /// Its announced size.
    pub total: u64,
    /// Bytes stored so far.
    pub received: u64,
}

/// What a wipe order needs to know about an account.
#[derive(Debug, Clone)]
pub struct WipeTarget {
    /// The account.
    pub account: AccountId,
    /// Its kill-code record, if it set one.
    pub record: Option<SignedKillRecord>,
    /// Its live devices.
    pub devices: Vec<DeviceId>,
}

/// Wrong kill-code guesses in an open window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Guesses {
    /// How many.
    pub failures: u32,
    /// When the window ends, ms since the Unix epoch (0 if none is open).
    pub until_ms: u64,
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Its account.
    pub account: AccountId,
    /// The account's handle.
    pub handle: Handle,
    /// Revoked devices cannot log in.
    pub revoked: bool,
}

/// A new account and its first device.
#[derive(Debug, Clone)]
pub struct NewAccount {
    /// The handle.
    pub handle: Handle,
    /// The account identity key.
    pub account: AccountId,
    /// The first device.
    pub device: DeviceId,
    /// SHA-256 of the invite code, consumed in the same transaction.
    pub invite_hash: Option<[u8; 32]>,
    /// The account's first signed device list (checked by the caller).
    pub device_list: SignedDeviceList,
    /// Milliseconds since the Unix epoch.
    pub now_ms: u64,
}

/// A KeyPackage in storage: its SHA-256 (the upload is idempotent by it) and bytes.
#[derive(Debug, Clone)]
pub struct StoredKeyPackage {
    /// SHA-256 of `data`.
    pub hash: [u8; 32],
    /// The MLS KeyPackage.
    pub data: Vec<u8>,
}

/// How many KeyPackages a device has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPackageStock {
    /// One-time KeyPackages.
    pub one_time: u32,
    /// Whether a last-resort KeyPackage is there.
    pub last_resort: bool,
}

/// One device's claimed KeyPackage.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The device.
    pub device: DeviceId,
    /// The KeyPackage.
    pub data: Vec<u8>,
    /// Whether it is the last-resort one (which stays).
    pub last_resort: bool,
}

/// A message to put into mailboxes.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Group.
    pub group: GroupId,
    /// Authenticated sender device.
    pub sender: DeviceId,
    /// Sender's message id.
    pub msg_id: MessageId,
    /// Kind of MLS message.
    pub kind: EnvelopeKind,
    /// The MLS bytes.
    pub payload: Vec<u8>,
    /// Server receive time, ms since the Unix epoch.
    pub now_ms: u64,
    /// Expiry, ms since the Unix epoch.
    pub expires_ms: u64,
    /// For an application message to a group: the epoch it was encrypted
    /// in. [`Store::send`] stores it only while that is the group's current
    /// epoch, in the same step as the check, so that it reaches every
    /// member before the commit that ends the epoch.
    pub epoch: Option<u64>,
}

impl Outgoing {
    /// The sender as stored and delivered: none for an application message
    /// ([`EnvelopeKind::names_sender`]); the sender is used only to route
    /// it (to every member but the sender) and is then forgotten.
    pub fn stored_sender(&self) -> DeviceId {
        if self.kind.names_sender() {
            self.sender
        } else {
            DeviceId::NONE
        }
    }

    /// The envelope as stored and delivered: what [`Store::fetch`] reads
    /// back for each of its mailbox entries.
    pub fn envelope(&self) -> Envelope {
        Envelope {
            group: self.group,
            sender: self.stored_sender(),
            msg_id: self.msg_id,
            kind: self.kind,
            server_time_ms: self.now_ms,
            payload: sotto_proto::Blob(self.payload.clone()),
        }
    }

    /// Its key in the dedup window (`seen_sends`), from its dedup scope
    /// ([`sotto_proto::dedup_scope`]): a hash, never the sender or id.
    pub fn seen_key(&self) -> [u8; 32] {
        seen_key(
            &sotto_proto::dedup_scope(self.kind, &self.group, &self.sender),
            &self.msg_id,
        )
    }
}

/// The dedup windows' key for a message id within `scope` (a sender device,
/// or an application message's group): only this hash is kept, for the
/// mailbox TTL. Commits are remembered by (sender device, id).
pub fn seen_key(scope: &[u8; 32], msg_id: &MessageId) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"sotto-seen-v1");
    h.update(scope);
    h.update(msg_id.0);
    h.finalize().into()
}

/// The most one device's mailbox may hold. A write that would take any
/// recipient past either bound is refused whole (`MailboxFull`); nothing
/// already in the mailbox is touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxCap {
    /// Entries waiting.
    pub messages: u64,
    /// Payload bytes waiting.
    pub bytes: u64,
}

impl MailboxCap {
    /// No cap (wipe orders must always get through).
    pub const UNLIMITED: Self = Self {
        messages: u64::MAX,
        bytes: u64::MAX,
    };
}

/// A commit to apply.
#[derive(Debug, Clone)]
pub struct CommitWrite {
    /// The group's public state after the commit (`sotto_rules::public`).
    pub state: Vec<u8>,
    /// The GroupInfo of the new epoch, for devices that rejoin.
    pub group_info: Vec<u8>,
    /// The commit message (for the members before the commit, except the sender).
    pub commit: Option<Outgoing>,
    /// The Welcome (for `welcome_recipients`).
    pub welcome: Option<Outgoing>,
    /// Its recipients.
    pub welcome_recipients: Vec<DeviceId>,
    /// The group.
    pub group: GroupId,
    /// The sender.
    pub sender: DeviceId,
    /// The epoch the commit was built on.
    pub epoch: u64,
    /// Members after the commit (the new state's tree).
    pub members: Vec<DeviceId>,
    /// The sender joins by this commit (a new device of a member account,
    /// by external commit, checked by `sotto_rules::public`): it need not
    /// be routed the group's messages before it.
    pub joins: bool,
    /// Mailbox cap per device.
    pub mailbox_cap: MailboxCap,
    /// The sender's id for this commit: a repeat of an applied commit is
    /// answered with its epoch and not applied again.
    pub msg_id: MessageId,
    /// Until when the commit id is remembered.
    pub expires_ms: u64,
}

/// A proposal to queue for a group's next commit and deliver.
#[derive(Debug, Clone)]
pub struct ProposalWrite {
    /// The proposal, for every member device but the sender.
    pub message: Outgoing,
    /// The epoch it was checked against.
    pub epoch: u64,
    /// Mailbox cap per device.
    pub mailbox_cap: MailboxCap,
}

/// What the server holds of a group besides its routing: the public state
/// the last commit left, that commit's GroupInfo, and the proposals
/// accepted since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    /// The group's epoch.
    pub epoch: u64,
    /// Its public state (`sotto_rules::public`).
    pub state: Vec<u8>,
    /// The GroupInfo of this epoch.
    pub group_info: Vec<u8>,
    /// The proposals accepted in this epoch, in order.
    pub proposals: Vec<Vec<u8>>,
}

/// One mailbox entry a write made: what a connection of `device` needs to
/// deliver the message at once, without reading it back from the store
/// (`crate::watch::MailWatch::offer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Posted {
    /// The recipient device.
    pub device: DeviceId,
    /// The entry's mailbox sequence number.
    pub seq: u64,
    /// Every entry of this mailbox before `seq` that is still there has a
    /// sequence number of at most `after`: a connection that delivered up
    /// to `after` (or further) may deliver this entry next and skip
    /// nothing. (Entries that left the mailbox were acknowledged by the
    /// device or expired.)
    pub after: u64,
}

/// The result of a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOutcome {
    /// The message id was seen before; nothing was stored.
    pub duplicate: bool,
    /// The mailbox entries made, one per recipient device.
    pub posted: Vec<Posted>,
}

impl SendOutcome {
    /// A duplicate: nothing stored.
    pub fn duplicate() -> Self {
        Self {
            duplicate: true,
            posted: Vec::new(),
        }
    }

    /// The devices whose mailboxes got the message.
    pub fn recipients(&self) -> Vec<DeviceId> {
        self.posted.iter().map(|p| p.device).collect()
    }
}

/// The result of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOutcome {
    /// The group's new epoch.
    pub epoch: u64,
    /// The mailbox entries of the commit message.
    pub commit: Vec<Posted>,
    /// The mailbox entries of the Welcome.
    pub welcome: Vec<Posted>,
}

impl CommitOutcome {
    /// The devices whose mailboxes got the commit or the Welcome.
    pub fn recipients(&self) -> Vec<DeviceId> {
        self.commit
            .iter()
            .chain(&self.welcome)
            .map(|p| p.device)
            .collect()
    }
}

/// A message in a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxEntry {
    /// Mailbox sequence number.
    pub seq: u64,
    /// The message.
    pub envelope: Envelope,
}

/// What the operator sees with `sotto-server stats` and in the metrics: counts
/// only, never identities.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Registered accounts.
    pub accounts: u64,
    /// Devices that may log in.
    pub live_devices: u64,
    /// Groups the server routes for.
    pub groups: u64,
    /// Mailbox entries waiting for delivery.
    pub pending_deliveries: u64,
    /// Stored one-time KeyPackages.
    pub key_packages: u64,
}

/// One write of the key directory (`crate::directory`): records replace
/// what is stored under their ids, in one transaction.
#[derive(Debug, Clone, Default)]
pub struct DirectoryWrite {
    /// Tree nodes and the Azks: (akd binary id, encoded record).
    pub records: Vec<(Vec<u8>, Vec<u8>)>,
    /// Value states: (label, epoch, encoded record).
    pub states: Vec<(Vec<u8>, u64, Vec<u8>)>,
    /// The epoch of the Azks, if the write holds it: the stored epoch
    /// becomes this one.
    pub epoch: Option<u64>,
    /// Write nothing (and answer `false`) unless `epoch` is newer than the
    /// stored epoch. Set on the write that publishes an epoch: when two
    /// nodes publish at once, only the first commits its epoch.
    pub newer_only: bool,
}

/// A writer's turn to publish the key directory, across every node on one
/// storage ([`Store::directory_turn`]); the turn passes on when this is
/// dropped.
pub struct DirectoryTurn(#[allow(dead_code)] Box<dyn Send>);

impl DirectoryTurn {
    /// A turn that ends when `held` is dropped.
    pub fn holding(held: impl Send + 'static) -> Self {
        Self(Box::new(held))
    }
}

impl std::fmt::Debug for DirectoryTurn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirectoryTurn")
    }
}

/// Everything the server persists. A clone is another handle on the same
/// storage (the key directory holds one).
pub trait Store: Clone + Send + Sync + 'static {
    /// Checks that the backend answers (readiness).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Counts for the operator.
    fn stats(&self) -> impl Future<Output = Result<Stats, StoreError>> + Send;

    /// The operator locks a device out: it can no longer log in, its
    /// KeyPackages, group memberships and waiting mail are deleted. `false`
    /// if there is no such live device.
    fn revoke_device(
        &self,
        device: DeviceId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Stores SHA-256 hashes of new invite codes.
    fn add_invites(
        &self,
        hashes: Vec<[u8; 32]>,
        expires_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Creates an account and its first device, consuming the invite if any.
    fn register(&self, a: NewAccount) -> impl Future<Output = Result<(), RegisterError>> + Send;

    /// Looks up a device.
    fn device(
        &self,
        device: DeviceId,
    ) -> impl Future<Output = Result<Option<DeviceRecord>, StoreError>> + Send;

    /// Adds one-time KeyPackages (idempotent by hash, at most `cap` kept) and
    /// replaces the last-resort one if given.
    fn upload_key_packages(
        &self,
        device: DeviceId,
        one_time: Vec<StoredKeyPackage>,
        last_resort: Option<StoredKeyPackage>,
        cap: u32,
    ) -> impl Future<Output = Result<KeyPackageStock, StoreError>> + Send;

    /// How many KeyPackages a device has.
    fn key_package_stock(
        &self,
        device: DeviceId,
    ) -> impl Future<Output = Result<KeyPackageStock, StoreError>> + Send;

    /// Takes one KeyPackage of every live device of the account with this
    /// handle: a one-time one (deleted in the same transaction) or else the
    /// last-resort one. `None` if no such handle.
    fn claim_key_packages(
        &self,
        handle: Handle,
    ) -> impl Future<Output = Result<Option<(AccountId, Vec<Claimed>)>, StoreError>> + Send;

    /// Takes one KeyPackage of one live device.
    fn claim_device_key_package(
        &self,
        device: DeviceId,
    ) -> impl Future<Output = Result<Option<Claimed>, StoreError>> + Send;

    /// The account's signed device list.
    fn device_list(
        &self,
        account: AccountId,
    ) -> impl Future<Output = Result<Option<SignedDeviceList>, StoreError>> + Send;

    /// Stores a newer device list (signature checked by the caller): adds
    /// the new devices to the account and revokes the ones left out, in one
    /// transaction.
    fn publish_device_list(
        &self,
        list: SignedDeviceList,
        now_ms: u64,
    ) -> impl Future<Output = Result<DeviceListChange, DeviceListError>> + Send;

    /// Stores the account's kill-code record if it is newer than the stored one.
    fn set_kill_record(
        &self,
        r: SignedKillRecord,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The account's kill-code record.
    fn kill_record(
        &self,
        account: AccountId,
    ) -> impl Future<Output = Result<Option<SignedKillRecord>, StoreError>> + Send;

    /// The account with this handle, its kill-code record and its live devices.
    fn wipe_target(
        &self,
        handle: Handle,
    ) -> impl Future<Output = Result<Option<WipeTarget>, StoreError>> + Send;

    /// Forgets a device that wiped itself: its record, mailbox, KeyPackages
    /// and group memberships, in one transaction.
    fn forget_device(
        &self,
        device: DeviceId,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Registers a new blob for `group` (sender must be a member; the other
    /// members may fetch it), or returns the existing one's state if the
    /// same sender registered it. `None`: the sender is not a member, or
    /// another sender owns the id.
    fn begin_blob(
        &self,
        blob: BlobId,
        sender: DeviceId,
        group: GroupId,
        total: u64,
        expires_ms: u64,
    ) -> impl Future<Output = Result<Option<BlobState>, StoreError>> + Send;

    /// Records that `received` bytes of the blob are stored.
    fn blob_progress(
        &self,
        blob: BlobId,
        received: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The blob's state, if `device` may fetch it (a recipient that has not
    /// fetched it yet) and it has not expired.
    fn blob_for(
        &self,
        blob: BlobId,
        device: DeviceId,
        now_ms: u64,
    ) -> impl Future<Output = Result<Option<BlobState>, StoreError>> + Send;

    /// `device` has the whole blob; `true` if no recipient is left (the
    /// blob's record is then deleted and its bytes should be).
    fn blob_fetched(
        &self,
        blob: BlobId,
        device: DeviceId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Deletes expired blobs' records; returns their ids.
    fn purge_blobs(
        &self,
        now_ms: u64,
    ) -> impl Future<Output = Result<Vec<BlobId>, StoreError>> + Send;

    /// Stores a device-to-device message for `recipient`, unless
    /// (sender, msg_id) was seen before.
    fn send_to_device(
        &self,
        m: Outgoing,
        recipient: DeviceId,
        mailbox_cap: MailboxCap,
    ) -> impl Future<Output = Result<SendOutcome, SendError>> + Send;

    /// A group's public state, if the server holds one (groups created
    /// before protocol 3 have none).
    fn group_state(
        &self,
        group: GroupId,
    ) -> impl Future<Output = Result<Option<GroupState>, StoreError>> + Send;

    /// The epoch a commit (sender, msg_id) produced, if it was applied.
    fn applied_commit(
        &self,
        sender: DeviceId,
        msg_id: MessageId,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    /// Applies a commit if the group is at `epoch` (or does not exist and
    /// `epoch` is 0): the new epoch, state, GroupInfo and member list, the
    /// commit into the mailboxes of the members before it (but the sender),
    /// the Welcome into the mailboxes of `welcome_recipients`; the epoch's
    /// proposals are dropped. A commit whose (sender, msg_id) was applied
    /// before is answered with the epoch it produced, and nothing changes.
    fn commit(
        &self,
        c: CommitWrite,
    ) -> impl Future<Output = Result<CommitOutcome, CommitError>> + Send;

    /// Queues a proposal for the group's next commit, if the group is still
    /// at `epoch`, and stores it for every member device but the sender,
    /// unless (sender, msg_id) was seen before.
    fn propose(
        &self,
        p: ProposalWrite,
    ) -> impl Future<Output = Result<SendOutcome, CommitError>> + Send;

    /// Stores an application message for every member device but the sender,
    /// unless (sender, msg_id) was seen before (a duplicate, whatever the
    /// epoch now). With `m.epoch` set, a new message of another epoch than
    /// the group's current one is refused (`StaleEpoch`), checked in the
    /// same transaction that stores it.
    fn send(
        &self,
        m: Outgoing,
        mailbox_cap: MailboxCap,
    ) -> impl Future<Output = Result<SendOutcome, SendError>> + Send;

    /// Up to `limit` unexpired mailbox entries of `device` after sequence
    /// number `after`.
    fn fetch(
        &self,
        device: DeviceId,
        after: u64,
        limit: u32,
        now_ms: u64,
    ) -> impl Future<Output = Result<Vec<MailboxEntry>, StoreError>> + Send;

    /// What the connections of `wants` deliver next, read together: for
    /// each (device, after), `None` if the device is unknown or revoked (it
    /// is told so and disconnected), else the first `limit` unexpired
    /// entries after `after`, as [`Store::fetch`] gives them. A message to
    /// a large group wakes many connections at once; the SQLite store
    /// reads all their mailboxes in one call to its thread, the PostgreSQL
    /// store in one query
    /// ([`crate::mailbox::MailboxReader`] gathers them).
    fn fetch_many(
        &self,
        wants: Vec<(DeviceId, u64)>,
        limit: u32,
        now_ms: u64,
    ) -> impl Future<Output = Result<Vec<Option<Vec<MailboxEntry>>>, StoreError>> + Send;

    /// The last mailbox sequence number handed out to each of `devices`
    /// (a device may be left out if it never had mail, or none is
    /// waiting). One query for them all: a node watching the store while
    /// its bus may lose wake-ups compares these with what its connections
    /// delivered (`crate::watch`).
    fn mailbox_heads(
        &self,
        devices: Vec<DeviceId>,
    ) -> impl Future<Output = Result<Vec<(DeviceId, u64)>, StoreError>> + Send;

    /// Deletes acknowledged entries of `device`'s mailbox. Idempotent.
    fn ack(
        &self,
        device: DeviceId,
        seqs: Vec<u64>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes expired messages, invites, dedup records and ended
    /// kill-code guess windows; returns how many messages.
    fn purge_expired(&self, now_ms: u64) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The wrong kill-code guesses counted under `key` (an account, or a
    /// source and an account: the server hashes them) in a window not
    /// ended at `now_ms`; zero if none.
    fn kill_guesses(
        &self,
        key: [u8; 32],
        now_ms: u64,
    ) -> impl Future<Output = Result<Guesses, StoreError>> + Send;

    /// Counts one wrong guess under each key, in one transaction: a key
    /// without a window open at `now_ms` starts one of `window_ms`.
    fn kill_guess_failed(
        &self,
        keys: Vec<[u8; 32]>,
        now_ms: u64,
        window_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// `account` blocks `blocked` (or, with `block` false, no longer does).
    /// Idempotent.
    fn set_block(
        &self,
        account: AccountId,
        blocked: AccountId,
        block: bool,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether the account with this handle blocked `account` (`false` for
    /// an unknown handle).
    fn blocked_by(
        &self,
        handle: Handle,
        account: AccountId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// `device` leaves `group` alone: it is no longer routed the group's
    /// messages, also after later commits that still have it in their tree,
    /// until a commit's tree leaves it out or a commit adds it again
    /// (Welcome). Nothing happens if it is not a member device.
    fn leave_group(
        &self,
        group: GroupId,
        device: DeviceId,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Waits for this writer's turn to publish a key-directory epoch: one
    /// writer at a time, among every handle on this storage and every node
    /// sharing it, in the order they asked. Without turns, nodes
    /// publishing at once lose each other's epochs (`directory_write`'s
    /// `newer_only`) and retry until they give up.
    fn directory_turn(&self) -> impl Future<Output = Result<DirectoryTurn, StoreError>> + Send;

    /// Writes key-directory records in one transaction. `false` (and
    /// nothing written) if `w.newer_only` and `w.epoch` is not newer than
    /// the stored epoch: another writer published that epoch first.
    fn directory_write(
        &self,
        w: DirectoryWrite,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The key-directory records stored under these ids (absent ones are
    /// left out), in any order.
    fn directory_records(
        &self,
        ids: Vec<Vec<u8>>,
    ) -> impl Future<Output = Result<Vec<Vec<u8>>, StoreError>> + Send;

    /// Every value state of these labels, in any order.
    fn directory_states(
        &self,
        labels: Vec<Vec<u8>>,
    ) -> impl Future<Output = Result<Vec<Vec<u8>>, StoreError>> + Send;

    /// Records the root hash of a published epoch (idempotent: an epoch's
    /// first hash stays).
    fn put_directory_root(
        &self,
        epoch: u64,
        hash: [u8; 32],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The recorded root hashes of epochs `from..=to`, in order (epochs
    /// without one are left out).
    fn directory_roots(
        &self,
        from: u64,
        to: u64,
    ) -> impl Future<Output = Result<Vec<(u64, [u8; 32])>, StoreError>> + Send;
}
