//! The frames of protocol version 3 (version 2 had unchecked commits and
//! `Rejoin`; version 1 had neither). Each
//! WebSocket binary message carries exactly one frame: a [`ClientFrame`] from the client or a [`ServerFrame`]
//! from the server. See docs/PROTOCOL.md for the conversation they make up.

use serde::{Deserialize, Serialize};

use crate::{AccountId, BlobId, DeviceId, GroupId, Handle, MessageId, ProtoError, Signature};

/// Every frame a client sends: a request and the number the response will carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientFrame {
    /// Chosen by the client; echoed in the [`ServerFrame::Response`].
    pub req: u32,
    /// What the client asks for.
    pub body: Request,
}

/// What a client can ask. Before authentication only `Register`, `Login` and
/// `Ping` are accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Create an account with its first device, and authenticate as it.
    Register(Box<RegisterRequest>),
    /// Authenticate an existing device by signing the connection's challenge.
    Login(LoginRequest),
    /// Store KeyPackages of the authenticated device.
    UploadKeyPackages(UploadKeyPackages),
    /// Take one KeyPackage of each device of an account (by handle).
    ClaimKeyPackages {
        /// Whose KeyPackages.
        handle: Handle,
    },
    /// Create a group or advance its epoch (compare-and-set on `epoch`).
    Commit(CommitRequest),
    /// Send an application message to every other member device of a group.
    Send(SendRequest),
    /// Delete delivered messages from the device's mailbox.
    Ack {
        /// Sequence numbers of [`ServerFrame::Deliver`] frames.
        seqs: Vec<u64>,
    },
    /// Liveness check; answered with [`Response::Pong`].
    Ping,
    /// Replace the account's signed device list (a newer version, naming
    /// the sending device). New devices become devices of the account;
    /// devices left out are revoked at once.
    PublishDeviceList(SignedDeviceList),
    /// The signed device list of an account.
    GetDeviceList {
        /// Whose.
        account: AccountId,
    },
    /// Take one KeyPackage of another device of the sender's own account.
    ClaimDeviceKeyPackage {
        /// Which device.
        device: DeviceId,
    },
    /// Store the account's kill-code record (signed by the account key).
    SetKillCode(SignedKillRecord),
    /// The account's kill-code record, for a device to take its verifier.
    GetKillRecord,
    /// What a wiping client needs to prove the kill code: the salts.
    /// Allowed before login.
    WipeInfo {
        /// The account to wipe.
        handle: Handle,
    },
    /// Order the wipe of every device of an account. Allowed before login.
    Wipe(WipeRequest),
    /// The device destroyed its keys and store: forget it.
    WipeDone,
    /// Upload the next chunk of an encrypted attachment for a group.
    PutBlob(PutBlob),
    /// Download a chunk of an attachment, from `offset`.
    GetBlob {
        /// The blob.
        blob: BlobId,
        /// Where to start.
        offset: u64,
    },
    /// This device has the whole blob; the server may delete it once every
    /// recipient has said so.
    BlobFetched {
        /// The blob.
        blob: BlobId,
    },
    /// Send an opaque message to another device of the sender's own account
    /// (the link bundle that hands a new device the account).
    SendToDevice {
        /// The recipient device.
        device: DeviceId,
        /// Chosen by the sender; a retry is stored once.
        msg_id: MessageId,
        /// The encrypted payload.
        payload: Blob,
    },
    /// Propose a change for the next commit of a group: only a member's own
    /// removal (leaving) is proposed on its own. The server checks it
    /// against the group's state and puts it into the other member
    /// devices' mailboxes (envelope kind [`EnvelopeKind::Proposal`]).
    /// Answered with `Accepted`.
    Propose(ProposeRequest),
    /// The group's current GroupInfo and ratchet tree, for a member device
    /// that lost its state of the group to rejoin it by external commit.
    GetGroupInfo {
        /// The group.
        group: GroupId,
    },
    /// `Wipe` with a proof of work on this connection's challenge and the
    /// guess ([`crate::pow::verify_wipe`]), for an account that drew many
    /// wrong guesses (the answer to `Wipe` is then
    /// [`crate::ErrorCode::ProofOfWorkRequired`]). Allowed before login.
    WipeWithWork {
        /// The wipe order.
        wipe: WipeRequest,
        /// The solution.
        pow_nonce: u64,
    },
    /// Block an account: its devices can no longer claim this account's
    /// KeyPackages. Answered with `Acked`; idempotent.
    Block {
        /// Whom.
        account: AccountId,
    },
    /// Undo [`Request::Block`]. Answered with `Acked`; idempotent.
    Unblock {
        /// Whom.
        account: AccountId,
    },
    /// This device leaves a group alone: it is no longer routed the
    /// group's messages, whether or not a commit removed it yet (send its
    /// leave proposal first). Answered with `Acked`.
    Leave {
        /// The group.
        group: GroupId,
    },
    /// Before login: the signed device list of the account whose key
    /// signs this connection's challenge ([`account_proof_transcript`]).
    /// What a device restored from a backup needs to sign itself into its
    /// account. Answered with `AccountDevices`.
    AccountDeviceList {
        /// The account.
        account: AccountId,
        /// The account key's signature over [`account_proof_transcript`].
        signature: Signature,
    },
    /// Before login: a new device joins its account on the account key
    /// alone (a device restored from a backup, with no other device to
    /// approve it), and authenticates as it. Answered with `LoggedIn`.
    Restore(Box<RestoreRequest>),
    /// Before or after login: the key directory's VRF public key and its
    /// newest root. Answered with `DirectoryInfo`.
    DirectoryInfo,
    /// A proof of what the key directory holds for a handle at its newest
    /// epoch. Answered with `DirectoryProof` (a lookup proof).
    DirectoryLookup {
        /// Whose entry.
        handle: Handle,
    },
    /// The whole history of a handle in the key directory, with its
    /// proof: what a device asks for its own handle. Answered with
    /// `DirectoryProof` (a history proof).
    DirectoryHistory {
        /// Whose history.
        handle: Handle,
    },
    /// Before or after login: the proof that the key directory only grew
    /// from epoch `from` to `to` (at most [`MAX_AUDIT_EPOCHS`] apart), as
    /// an auditor asks for it. Answered with `DirectoryAudit`.
    DirectoryAudit {
        /// The first epoch.
        from: u64,
        /// The last epoch.
        to: u64,
    },
}

/// The most epochs one `DirectoryAudit` spans.
pub const MAX_AUDIT_EPOCHS: u64 = 64;

/// A root of the key directory: an epoch and its root hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DirectoryRoot {
    /// The epoch.
    pub epoch: u64,
    /// Its root hash.
    pub hash: [u8; 32],
}

impl DirectoryRoot {
    /// Its 40-byte form where a root is kept or carried as bytes: epoch
    /// (u64 big-endian) ‖ hash.
    pub fn to_bytes(&self) -> [u8; 40] {
        let mut b = [0u8; 40];
        b[..8].copy_from_slice(&self.epoch.to_be_bytes());
        b[8..].copy_from_slice(&self.hash);
        b
    }

    /// Reads [`DirectoryRoot::to_bytes`]; `None` for any other length.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b: &[u8; 40] = b.try_into().ok()?;
        let mut epoch = [0u8; 8];
        epoch.copy_from_slice(&b[..8]);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&b[8..]);
        Some(Self {
            epoch: u64::from_be_bytes(epoch),
            hash,
        })
    }
}

/// A device restored from a backup, signed into its account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRequest {
    /// The protocol version the client speaks.
    pub version: u16,
    /// The new device.
    pub device: DeviceId,
    /// The account's next device list, naming the new device and
    /// otherwise only live devices of the account, signed by the account
    /// key (devices left out are revoked, as with
    /// [`Request::PublishDeviceList`]).
    pub device_list: SignedDeviceList,
    /// The device key's signature over [`restore_transcript`].
    pub device_signature: Signature,
}

/// An account's devices, signed by the account identity key. Peers accept a
/// device of an account only if it is on the account's signed list, so the
/// server cannot add a device unnoticed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedDeviceList {
    /// The account.
    pub account: AccountId,
    /// Increases with every change.
    pub version: u64,
    /// The devices.
    pub devices: Vec<DeviceId>,
    /// The account key's signature over [`device_list_transcript`].
    pub signature: Signature,
}

/// The bytes an account key signs for its device list.
pub fn device_list_transcript(account: &AccountId, version: u64, devices: &[DeviceId]) -> Vec<u8> {
    let mut t = Vec::with_capacity(64 + 32 * devices.len());
    t.extend_from_slice(b"sotto-devices-v1\0");
    t.extend_from_slice(&account.0);
    t.extend_from_slice(&version.to_be_bytes());
    t.extend_from_slice(&(devices.len() as u64).to_be_bytes());
    for d in devices {
        t.extend_from_slice(&d.0);
    }
    t
}

/// What lets a device and the server check a kill code without knowing it:
/// for the server and for every device, a salt and the check value of the
/// code's Argon2id proof under that salt. Signed by the account key, so the
/// server cannot swap in a check value of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedKillRecord {
    /// The account.
    pub account: AccountId,
    /// Increases with every change.
    pub version: u64,
    /// The server's salt.
    pub server_salt: [u8; 16],
    /// The server's check value.
    pub server_check: [u8; 32],
    /// One entry per device.
    pub devices: Vec<DeviceKill>,
    /// The account key's signature over [`kill_record_transcript`].
    pub signature: Signature,
}

/// One device's part of a kill-code record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKill {
    /// The device.
    pub device: DeviceId,
    /// Its salt.
    pub salt: [u8; 16],
    /// Its check value.
    pub check: [u8; 32],
}

/// The bytes the account key signs for a kill-code record.
pub fn kill_record_transcript(r: &SignedKillRecord) -> Vec<u8> {
    let mut t = Vec::with_capacity(128 + 80 * r.devices.len());
    t.extend_from_slice(b"sotto-kill-record-v1\0");
    t.extend_from_slice(&r.account.0);
    t.extend_from_slice(&r.version.to_be_bytes());
    t.extend_from_slice(&r.server_salt);
    t.extend_from_slice(&r.server_check);
    t.extend_from_slice(&(r.devices.len() as u64).to_be_bytes());
    for d in &r.devices {
        t.extend_from_slice(&d.device.0);
        t.extend_from_slice(&d.salt);
        t.extend_from_slice(&d.check);
    }
    t
}

/// A wipe order from a holder of the kill code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WipeRequest {
    /// The account.
    pub handle: Handle,
    /// The code's proof under the server's salt.
    pub server_proof: [u8; 32],
    /// The code's proof under each device's salt.
    pub proofs: Vec<(DeviceId, [u8; 32])>,
}

/// What a device receives (envelope kind `Wipe`): its own proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WipeOrder {
    /// The device the order is for; a device obeys only its own.
    pub device: DeviceId,
    /// The kill code's proof under the device's salt.
    pub proof: [u8; 32],
}

/// A chunk of an encrypted attachment. The first chunk (offset 0) names the
/// group, whose other member devices may then fetch it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutBlob {
    /// Chosen at random by the uploader.
    pub blob: BlobId,
    /// The group whose members may fetch it.
    pub group: GroupId,
    /// The offset of this chunk: the number of bytes already received.
    pub offset: u64,
    /// The blob's total size.
    pub total: u64,
    /// At most [`MAX_BLOB_CHUNK`] bytes.
    pub data: Blob,
}

/// The largest chunk of a blob in one frame.
pub const MAX_BLOB_CHUNK: usize = 1024 * 1024;

/// Most devices one account may have.
pub const MAX_DEVICES_PER_ACCOUNT: usize = 16;

/// Registration of a new account and its first device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The protocol version the client speaks.
    pub version: u16,
    /// The handle to claim.
    pub handle: Handle,
    /// The account identity key.
    pub account: AccountId,
    /// The first device's key.
    pub device: DeviceId,
    /// A single-use invite code, where the server requires one.
    pub invite: Option<String>,
    /// A proof-of-work nonce for [`crate::pow`], where registration is open.
    pub pow_nonce: Option<u64>,
    /// The account key's signature over [`register_transcript`].
    pub account_signature: Signature,
    /// The account's first device list: version 1, this device only.
    pub device_list: SignedDeviceList,
    /// The device key's signature over the same transcript.
    pub device_signature: Signature,
}

/// Login of a registered device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginRequest {
    /// The protocol version the client speaks.
    pub version: u16,
    /// The device logging in.
    pub device: DeviceId,
    /// The device key's signature over [`login_transcript`].
    pub signature: Signature,
}

/// KeyPackages for the authenticated device: opaque MLS bytes to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadKeyPackages {
    /// One-time KeyPackages, each handed out at most once.
    pub key_packages: Vec<Blob>,
    /// A last-resort KeyPackage, handed out when the one-time ones run out;
    /// replaces the previous one.
    pub last_resort: Option<Blob>,
}

/// Opaque bytes, encoded as a length-prefixed byte string.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blob({} bytes)", self.0.len())
    }
}

/// A commit, compare-and-set on the group's epoch. The server checks it
/// against the group's public state before it applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRequest {
    /// The group.
    pub group: GroupId,
    /// The epoch the commit was built on. `0` for a group the server does not
    /// know yet: the commit then creates it.
    pub epoch: u64,
    /// Chosen by the sender; a retry with the same id is not applied twice.
    pub msg_id: MessageId,
    /// The MLS commit (a PublicMessage), delivered to every member device
    /// that was in the group before it, except the sender. A member's
    /// commit, or an external commit by which a member device rejoins.
    pub commit: Blob,
    /// The GroupInfo of the epoch the commit makes, signed by the sender,
    /// with the external public key and without the ratchet tree: what
    /// [`Request::GetGroupInfo`] hands out until the next commit.
    pub group_info: Blob,
    /// The Welcome for the devices the commit adds (a `sotto-core`
    /// Welcome bundle; opaque to the server). Present exactly when the
    /// commit adds devices.
    pub welcome: Option<Blob>,
    /// Only when creating a group (`epoch` 0): the GroupInfo of epoch 0
    /// with its ratchet tree, the sender its only member.
    pub base: Option<Blob>,
}

/// A proposal for a group's next commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposeRequest {
    /// The group.
    pub group: GroupId,
    /// Chosen by the sender; a retry with the same id is stored once.
    pub msg_id: MessageId,
    /// The MLS proposal (a PublicMessage of the group's current epoch).
    pub proposal: Blob,
}

/// An application message for a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendRequest {
    /// The group.
    pub group: GroupId,
    /// Chosen by the sender; a retry with the same id is stored once.
    pub msg_id: MessageId,
    /// The MLS PrivateMessage.
    pub payload: Blob,
    /// For a disappearing message: the server deletes it after this many
    /// milliseconds even if undelivered (capped by the server's own TTL).
    pub ttl_ms: Option<u64>,
}

/// Every frame a server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// The first frame on every connection.
    Hello(ServerHello),
    /// The answer to the request with number `req`.
    Response {
        /// The request's number.
        req: u32,
        /// What came of it.
        result: Result<Response, ProtoError>,
    },
    /// A message from the device's mailbox; acknowledge it with `Ack`.
    Deliver(Delivery),
    /// Everything that was in the mailbox at login has been delivered; what
    /// follows is pushed as it arrives.
    Synced,
    /// A connection-level error; the server closes the connection after it.
    Fatal(ProtoError),
}

/// What the server says first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHello {
    /// The protocol versions this server speaks.
    pub versions: Vec<u16>,
    /// A fresh random challenge for this connection, signed by `Login` and
    /// `Register`, and the seed of the registration proof of work.
    pub challenge: [u8; 32],
    /// How this server accepts registrations.
    pub registration: RegistrationPolicy,
}

/// How a server accepts new accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistrationPolicy {
    /// Only with a single-use invite code.
    InviteOnly,
    /// Without an invite, behind a proof of work of this many leading zero bits.
    Open {
        /// Required leading zero bits of the proof-of-work hash.
        pow_bits: u8,
    },
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Registration and login both end here.
    LoggedIn(Session),
    /// KeyPackages stored.
    KeyPackagesStored {
        /// How many one-time KeyPackages the device has on the server now.
        available: u32,
    },
    /// One KeyPackage for each device of the account that has one.
    KeyPackages(ClaimedKeyPackages),
    /// The device list was stored.
    DeviceListStored {
        /// Its version.
        version: u64,
    },
    /// An account's signed device list.
    DeviceList(SignedDeviceList),
    /// The kill-code record was stored.
    KillCodeStored,
    /// The account's kill-code record, if it has one.
    KillRecord(Option<SignedKillRecord>),
    /// The salts to prove a kill code with.
    WipeInfo {
        /// The server's salt.
        server_salt: [u8; 16],
        /// Each device's salt.
        devices: Vec<(DeviceId, [u8; 16])>,
    },
    /// Wipe orders are queued for this many devices.
    WipeQueued {
        /// How many.
        devices: u32,
    },
    /// The device is forgotten.
    Forgotten,
    /// How much of a blob the server has.
    BlobProgress {
        /// Bytes received.
        received: u64,
        /// Whether the blob is complete.
        complete: bool,
    },
    /// A chunk of a blob.
    BlobData {
        /// The blob's total size.
        total: u64,
        /// The bytes from the requested offset (at most [`MAX_BLOB_CHUNK`]).
        data: Blob,
    },
    /// A group's current GroupInfo and ratchet tree.
    GroupInfo {
        /// The group's epoch.
        epoch: u64,
        /// The GroupInfo the last commit carried.
        group_info: Blob,
        /// The group's ratchet tree (TLS-encoded MLS `RatchetTree`).
        ratchet_tree: Blob,
    },
    /// The commit was applied; the group is at `epoch` now.
    Committed {
        /// The new epoch.
        epoch: u64,
    },
    /// The message is stored durably for every recipient.
    Accepted {
        /// The same message id was accepted before; it was not stored again.
        duplicate: bool,
    },
    /// The acknowledged messages are deleted.
    Acked,
    /// The answer to `Ping`.
    Pong {
        /// The server's clock, milliseconds since the Unix epoch.
        server_time_ms: u64,
    },
    /// The answer to [`Request::AccountDeviceList`]: the account's signed
    /// device list, and which of its devices the server still has (not
    /// revoked, not wiped): a restored device's list names those only.
    AccountDevices {
        /// The signed list.
        list: SignedDeviceList,
        /// Its live devices.
        live: Vec<DeviceId>,
    },
    /// The key directory's VRF public key and newest root.
    DirectoryInfo {
        /// The VRF public key every proof is checked under.
        vrf_key: [u8; 32],
        /// The newest root.
        root: DirectoryRoot,
    },
    /// A lookup or history proof (`sotto_rules::directory`) against `root`.
    DirectoryProof {
        /// The root the proof is for.
        root: DirectoryRoot,
        /// The proof's postcard encoding.
        proof: Blob,
    },
    /// An append-only proof from epoch `from` to `to`, with the root hash
    /// of every epoch from `from` to `to`, in order.
    DirectoryAudit {
        /// The root hashes.
        roots: Vec<[u8; 32]>,
        /// The proof's postcard encoding.
        proof: Blob,
    },
}

/// Who the connection is authenticated as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The account.
    pub account: AccountId,
    /// The device.
    pub device: DeviceId,
    /// The account's handle.
    pub handle: Handle,
    /// One-time KeyPackages the device has on the server.
    pub key_packages: u32,
    /// Whether the device has a last-resort KeyPackage on the server.
    pub has_last_resort: bool,
    /// Version of the account's kill-code record (0: none).
    pub kill_record_version: u64,
}

/// The result of a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimedKeyPackages {
    /// The account the handle names.
    pub account: AccountId,
    /// One entry per device.
    pub devices: Vec<ClaimedKeyPackage>,
    /// The account's signed device list: every device above must be on it.
    pub device_list: SignedDeviceList,
}

/// One device's KeyPackage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimedKeyPackage {
    /// The device.
    pub device: DeviceId,
    /// The MLS KeyPackage.
    pub key_package: Blob,
    /// Whether this is the device's last-resort KeyPackage (which stays on the server).
    pub last_resort: bool,
}

/// One message out of a mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The mailbox sequence number; acknowledge with it.
    pub seq: u64,
    /// The message.
    pub envelope: Envelope,
}

/// What the server knows of a message: routing, never content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The group it belongs to.
    pub group: GroupId,
    /// The device that sent it, as authenticated by the server; for an
    /// application message [`DeviceId::NONE`]: the server neither stores
    /// nor tells who sent one ([`EnvelopeKind::names_sender`]), the sender
    /// is authenticated inside MLS only.
    pub sender: DeviceId,
    /// The sender's message id, unique within its [`Envelope::dedup_scope`].
    pub msg_id: MessageId,
    /// What kind of MLS message the payload is.
    pub kind: EnvelopeKind,
    /// When the server accepted it, milliseconds since the Unix epoch.
    pub server_time_ms: u64,
    /// The MLS message.
    pub payload: Blob,
}

impl Envelope {
    /// What its message id is unique within, for deduplication on the
    /// server and on the devices: see [`dedup_scope`].
    pub fn dedup_scope(&self) -> [u8; 32] {
        dedup_scope(self.kind, &self.group, &self.sender)
    }
}

/// What a message id is unique within, for deduplication, by the server
/// (which answers a repeat `duplicate` and stores it once) and by devices
/// (which process it once): the sending device, or for an application
/// message, whose envelope names no sender ([`EnvelopeKind::names_sender`]),
/// its group. Message ids are 16 random bytes: no honest sender repeats
/// another's, and a member cannot take an id before it is sent.
pub fn dedup_scope(kind: EnvelopeKind, group: &GroupId, sender: &DeviceId) -> [u8; 32] {
    if kind.names_sender() {
        sender.0
    } else {
        group.0
    }
}

/// The kind of MLS message in an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnvelopeKind {
    /// An application message (MLS PrivateMessage).
    Application,
    /// A commit (MLS PublicMessage), checked by the server.
    Commit,
    /// A Welcome into a group.
    Welcome,
    /// A message from another device of the same account (not MLS).
    Device,
    /// A wipe order ([`WipeOrder`]).
    Wipe,
    /// A member's proposal (a PublicMessage): its own removal.
    Proposal,
}

impl EnvelopeKind {
    /// Whether the server stores and delivers the sending device with a
    /// message of this kind. Not for an application message, the bulk of
    /// what it holds: its sender is inside the MLS ciphertext, so a seized
    /// mailbox does not tell who wrote to whom. Commits and proposals name
    /// their sender in the clear anyway (MLS PublicMessages, checked by the
    /// server); Welcomes and device messages are routed by it; a wipe
    /// order names the device it wipes there.
    pub fn names_sender(self) -> bool {
        !matches!(self, Self::Application)
    }
}

/// The bytes a new account's keys sign at registration.
pub fn register_transcript(
    challenge: &[u8; 32],
    handle: &Handle,
    account: &AccountId,
    device: &DeviceId,
) -> Vec<u8> {
    let mut t = Vec::with_capacity(160);
    t.extend_from_slice(b"sotto-register-v1\0");
    t.extend_from_slice(challenge);
    t.extend_from_slice(&account.0);
    t.extend_from_slice(&device.0);
    t.extend_from_slice(handle.as_str().as_bytes());
    t
}

/// The bytes an account key signs to read its own device list before
/// any of its devices logged in ([`Request::AccountDeviceList`]).
pub fn account_proof_transcript(challenge: &[u8; 32], account: &AccountId) -> Vec<u8> {
    let mut t = Vec::with_capacity(96);
    t.extend_from_slice(b"sotto-account-proof-v1\0");
    t.extend_from_slice(challenge);
    t.extend_from_slice(&account.0);
    t
}

/// The bytes a restored device signs to join its account
/// ([`Request::Restore`]).
pub fn restore_transcript(challenge: &[u8; 32], account: &AccountId, device: &DeviceId) -> Vec<u8> {
    let mut t = Vec::with_capacity(128);
    t.extend_from_slice(b"sotto-restore-v1\0");
    t.extend_from_slice(challenge);
    t.extend_from_slice(&account.0);
    t.extend_from_slice(&device.0);
    t
}

/// The bytes a device signs to log in.
pub fn login_transcript(challenge: &[u8; 32], device: &DeviceId) -> Vec<u8> {
    let mut t = Vec::with_capacity(96);
    t.extend_from_slice(b"sotto-login-v1\0");
    t.extend_from_slice(challenge);
    t.extend_from_slice(&device.0);
    t
}
