//! The encrypted local store: one SQLCipher database per profile, keyed with
//! the user's passphrase (SQLCipher derives the key with PBKDF2-HMAC-SHA512,
//! 256,000 iterations), holding the identity keys, contacts, conversations,
//! messages, the outbox and, through `openmls_sqlite_storage`, the MLS state.
//! Nothing is written to disk unencrypted: pages, WAL and journal are all
//! encrypted by SQLCipher, and `secure_delete` overwrites freed pages.
//!
//! Forward secrecy at rest: when a transaction replaces a group's epoch
//! secrets or deletes MLS private keys (a new epoch, a self-update, a
//! Welcome used up, a group left), the store checkpoints and truncates the
//! WAL right after the commit, so the old secrets are in neither the
//! database pages (`secure_delete` zeroes them) nor old WAL frames.
//! Temporary triggers on openmls's tables notice those writes.
//!
//! The profile's own tables are versioned: numbered migrations in this
//! crate's `migrations/`, applied on open and counted in `PRAGMA
//! user_version` (see the `migrations` module, which also adopts profiles
//! made before versions were counted).

use std::fs;
use std::path::{Path, PathBuf};

use openmls_libcrux_crypto::CryptoProvider;
use openmls_sqlite_storage::{Codec, SqliteStorageProvider};
use openmls_traits::OpenMlsProvider;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sotto_core::{AccountKey, CredentialIdentity, DeviceKey, Suite};
use sotto_proto::{AccountId, DeviceId, GroupId, Handle, MessageId, SignedDeviceList};
use zeroize::Zeroizing;

use crate::{ClientError, ServerLink};

mod migrations;

/// openmls values are stored as JSON inside the encrypted database.
#[derive(Debug, Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    type Error = serde_json::Error;

    fn to_vec<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        serde_json::to_vec(value)
    }

    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        serde_json::from_slice(slice)
    }
}

/// The `openmls` provider over a connection of the store: libcrux crypto,
/// SQLCipher storage. Built per transaction, so MLS writes join it.
pub struct Provider<'a> {
    crypto: &'a CryptoProvider,
    storage: SqliteStorageProvider<JsonCodec, &'a Connection>,
}

impl std::fmt::Debug for Provider<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Provider")
    }
}

impl<'a> OpenMlsProvider for Provider<'a> {
    type CryptoProvider = CryptoProvider;
    type RandProvider = CryptoProvider;
    type StorageProvider = SqliteStorageProvider<JsonCodec, &'a Connection>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        self.crypto
    }
}

/// The profile's own identity, loaded from the store.
pub struct Identity {
    /// The account key.
    pub account: AccountKey,
    /// This device's key.
    pub device: DeviceKey,
    /// The handle.
    pub handle: Handle,
    /// The server.
    pub link: ServerLink,
    /// The ciphersuite for new conversations.
    pub suite: Suite,
    /// Whether the server confirmed the registration.
    pub registered: bool,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({}, {:?})", self.handle, self.device.id())
    }
}

impl Identity {
    /// What this device's MLS credential says.
    pub fn credential(&self) -> CredentialIdentity {
        CredentialIdentity {
            account: self.account.id(),
            device: self.device.id(),
            handle: self.handle.clone(),
        }
    }
}

/// A contact: a handle and the account (identity key) it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// The handle.
    pub handle: String,
    /// The account the handle currently stands for.
    pub account: AccountId,
    /// The user compared the safety number of this account and confirmed it.
    pub verified: bool,
    /// The contact was verified, then its key changed: sending to it needs
    /// the user to confirm the new key.
    pub needs_confirm: bool,
    /// The account differs from the one first seen for this handle.
    pub key_changed: bool,
}

/// A device waiting to be linked: its key, its server, the code's secret.
pub type PendingLink = (DeviceKey, ServerLink, Zeroizing<[u8; 16]>);

/// What caching a device list changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListChange {
    /// The first list seen for the account.
    First,
    /// No change in devices.
    Same,
    /// A newer list with other devices.
    Changed,
    /// Older than the cached one (a replay by the server).
    Older,
}

/// What recording a contact changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactChange {
    /// First seen.
    New,
    /// Already known with this key.
    Same,
    /// Known with another key; `was_verified` if the old one was verified.
    Changed {
        /// Whether the user had verified the old key.
        was_verified: bool,
    },
}

/// An encrypted message waiting for the server's acceptance.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    /// Its id.
    pub msg_id: MessageId,
    /// Its conversation.
    pub group: GroupId,
    /// The MLS message.
    pub payload: Vec<u8>,
    /// Its server-side lifetime, for a disappearing message.
    pub ttl_ms: Option<u64>,
    /// The application message it encrypts (`None` in entries of older
    /// versions), to encrypt again when the server refuses the epoch.
    pub plaintext: Option<Vec<u8>>,
}

/// A conversation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// Its MLS group.
    pub group: GroupId,
    /// A named group (true) or a one-to-one conversation.
    pub is_group: bool,
    /// The group's name, or the peer's handle.
    pub name: String,
    /// Active, leaving (asked to leave) or removed; stored as the words
    /// `active`, `leaving`, `removed`.
    pub state: crate::conversation::ConversationState,
    /// Messages this device sent since its last self-update.
    pub sent_since_update: u64,
    /// When this device last updated its leaf.
    pub last_update_ms: u64,
    /// When this device learnt of the conversation.
    pub created_ms: u64,
}

/// A message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The sender's message id.
    pub id: MessageId,
    /// The conversation.
    pub group: GroupId,
    /// The conversation's name (the peer's handle for one-to-one).
    pub conversation: String,
    /// Who sent it.
    pub sender: String,
    /// Whether this device's account sent it.
    pub outgoing: bool,
    /// The text.
    pub text: String,
    /// The sender's clock.
    pub sent_at_ms: u64,
    /// When this device stored it.
    pub received_at_ms: u64,
    /// The id of the message this one replies to, if it is a reply. That
    /// message may not be stored here (sent before this device joined, or
    /// disappeared): show it as a reply to a message you don't have.
    pub reply_to: Option<MessageId>,
}

/// An incoming message to store.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    /// Id.
    pub id: MessageId,
    /// Group.
    pub group: GroupId,
    /// Sender.
    pub sender: &'a CredentialIdentity,
    /// Whether this account sent it (from any of its devices).
    pub outgoing: bool,
    /// Whether this very device sent it (so it needs no showing).
    pub from_this_device: bool,
    /// Text.
    pub text: &'a str,
    /// Sender's clock.
    pub sent_at_ms: u64,
    /// Local receive time.
    pub received_at_ms: u64,
    /// Mailbox order, for display order.
    pub seq: u64,
    /// When it disappears, if the conversation has a timer.
    pub expires_at_ms: Option<u64>,
    /// The message it replies to, if it is a reply.
    pub reply_to: Option<MessageId>,
}

/// The columns [`stored_messages`] reads, from `messages m` joined with
/// `conversations c`.
const MESSAGE_COLUMNS: &str = "m.id, m.group_id, coalesce(c.name, ''), m.sender_handle, \
     m.outgoing, m.body, m.sent_at_ms, m.received_at_ms, m.reply_to";

/// Reads messages from a statement selecting [`MESSAGE_COLUMNS`].
fn stored_messages<P: rusqlite::Params>(
    stmt: &mut rusqlite::Statement<'_>,
    params: P,
) -> Result<Vec<StoredMessage>, ClientError> {
    let rows = stmt.query_map(params, |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, i64>(6)?,
            r.get::<_, i64>(7)?,
            r.get::<_, Option<Vec<u8>>>(8)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, g, conv, sender, outgoing, text, sent, recv, reply_to) = row?;
        out.push(StoredMessage {
            id: MessageId(arr(id)?),
            group: GroupId(arr(g)?),
            conversation: conv,
            sender,
            outgoing: outgoing != 0,
            text,
            sent_at_ms: u(sent),
            received_at_ms: u(recv),
            reply_to: reply_to.map(arr).transpose()?.map(MessageId),
        });
    }
    Ok(out)
}

/// Temporary (per connection) triggers that set `temp.secrets_dropped` when
/// a transaction replaces a group's epoch secrets or deletes MLS private
/// keys or group state; see [`Store::forget_dropped_secrets`].
const SECRETS_DROPPED: &str = "
CREATE TEMP TABLE IF NOT EXISTS secrets_dropped (n INTEGER NOT NULL);
INSERT INTO secrets_dropped (n) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM secrets_dropped);
CREATE TEMP TRIGGER IF NOT EXISTS new_epoch_secrets
    AFTER INSERT ON main.openmls_group_data
    WHEN new.data_type = 'group_epoch_secrets'
    BEGIN UPDATE secrets_dropped SET n = 1; END;
CREATE TEMP TRIGGER IF NOT EXISTS group_data_deleted
    AFTER DELETE ON main.openmls_group_data
    BEGIN UPDATE secrets_dropped SET n = 1; END;
CREATE TEMP TRIGGER IF NOT EXISTS epoch_keys_deleted
    AFTER DELETE ON main.openmls_epoch_keys_pairs
    BEGIN UPDATE secrets_dropped SET n = 1; END;
CREATE TEMP TRIGGER IF NOT EXISTS encryption_keys_deleted
    AFTER DELETE ON main.openmls_encryption_keys
    BEGIN UPDATE secrets_dropped SET n = 1; END;
CREATE TEMP TRIGGER IF NOT EXISTS key_packages_deleted
    AFTER DELETE ON main.openmls_key_packages
    BEGIN UPDATE secrets_dropped SET n = 1; END;
";

/// The open store of a profile.
pub struct Store {
    conn: Connection,
    crypto: CryptoProvider,
    dir: PathBuf,
    /// Whether `conn` has the triggers of [`SECRETS_DROPPED`] (not once
    /// the store is shredded).
    watches_secrets: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.dir.display())
    }
}

/// Creates `dir` and its missing parents readable by this user only (mode
/// 0700 from the start, whatever the umask); an existing `dir` that others
/// may read is made private.
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        b.mode(0o700);
        b.create(dir)?;
        if fs::metadata(dir)?.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
    }
    #[cfg(not(unix))]
    b.create(dir)?;
    Ok(())
}

/// Creates a new file readable by this user only (mode 0600 from the
/// first byte); fails if something is at `p` already (a link too).
pub(crate) fn new_private_file(p: &Path) -> std::io::Result<fs::File> {
    let mut o = fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(p)
}

/// Overwrites a file with random bytes, syncs it and removes it; a
/// missing file is fine. A symbolic link is removed, not followed.
fn shred_file(p: &Path) -> Result<(), ClientError> {
    let Ok(meta) = fs::symlink_metadata(p) else {
        return Ok(());
    };
    if meta.is_file()
        && let Ok(mut f) = fs::OpenOptions::new().write(true).open(p)
    {
        use std::io::Write;
        // In pieces: an attachment may be hundreds of MiB.
        let mut noise = vec![0u8; 64 * 1024];
        let mut left = meta.len().max(16);
        while left > 0 {
            let n = usize::try_from(left).unwrap_or(usize::MAX).min(noise.len());
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut noise[..n]);
            if f.write_all(&noise[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
        let _ = f.sync_all();
    }
    match fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(ClientError::Store(format!("{}: {e}", p.display())))
        }
        _ => Ok(()),
    }
}

/// [`shred_file`] on every file under `dir`, then removes the folders.
fn shred_tree(dir: &Path) -> Result<(), ClientError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries {
        let e = e.map_err(|e| ClientError::Store(format!("{}: {e}", dir.display())))?;
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => shred_tree(&p)?,
            _ => shred_file(&p)?,
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(ClientError::Store(format!("{}: {e}", dir.display())))
        }
        _ => Ok(()),
    }
}

/// Deletes the disappearing messages whose time came, with their
/// attachments: the saved file is shredded and the row (name, key, hash)
/// goes. Returns how many messages went.
fn purge_expired_in(c: &Connection, dir: &Path, now_ms: i64) -> Result<usize, ClientError> {
    // The attachments of expired messages, and any whose message is gone
    // (left by versions that deleted only the message).
    const GOING: &str = "(msg_id IN (SELECT id FROM messages \
         WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= ?1) \
         OR msg_id NOT IN (SELECT id FROM messages))";
    let saved: Vec<String> = {
        let mut st = c.prepare(&format!(
            "SELECT path FROM attachments WHERE path IS NOT NULL AND {GOING}"
        ))?;
        st.query_map([now_ms], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    // Only inside this profile's downloads, whatever the row says.
    let downloads = Store::downloads_path(dir);
    for p in &saved {
        if let Some(name) = Path::new(p).file_name() {
            shred_file(&downloads.join(name))?;
        }
    }
    c.execute(&format!("DELETE FROM attachments WHERE {GOING}"), [now_ms])?;
    Ok(c.execute(
        "DELETE FROM messages WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= ?1",
        [now_ms],
    )?)
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn arr<const N: usize>(v: Vec<u8>) -> Result<[u8; N], ClientError> {
    v.try_into()
        .map_err(|_| ClientError::Store("stored value has the wrong length".into()))
}

impl Store {
    /// The database file of a profile directory.
    pub fn db_path(dir: &Path) -> PathBuf {
        dir.join("sotto.db")
    }

    /// The file that holds the duress check: 16 bytes of salt and 32 of
    /// check value, random when no duress passphrase is set, so that its
    /// presence says nothing.
    fn duress_path(dir: &Path) -> PathBuf {
        dir.join("unlock.check")
    }

    fn write_duress(dir: &Path, bytes: &[u8; 48]) -> Result<(), ClientError> {
        let tmp = dir.join("unlock.check.tmp");
        let _ = fs::remove_file(&tmp);
        new_private_file(&tmp)
            .and_then(|mut f| std::io::Write::write_all(&mut f, bytes))
            .map_err(|e| ClientError::Store(e.to_string()))?;
        fs::rename(&tmp, Self::duress_path(dir)).map_err(|e| ClientError::Store(e.to_string()))
    }

    /// Sets the duress passphrase: unlocking with it destroys this store.
    pub fn set_duress(&self, duress: &str) -> Result<(), ClientError> {
        let mut salt = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
        let check = sotto_core::killcode::check(&*sotto_core::killcode::proof(duress, &salt)?);
        let mut b = [0u8; 48];
        b[..16].copy_from_slice(&salt);
        b[16..].copy_from_slice(&check);
        Self::write_duress(&self.dir, &b)
    }

    fn is_duress(dir: &Path, passphrase: &str) -> bool {
        let Ok(b) = fs::read(Self::duress_path(dir)) else {
            return false;
        };
        let (Ok(salt), Ok(check)) = (
            <[u8; 16]>::try_from(&b[..16.min(b.len())]),
            <[u8; 32]>::try_from(b.get(16..48).unwrap_or(&[])),
        ) else {
            return false;
        };
        sotto_core::killcode::proof(passphrase, &salt)
            .is_ok_and(|p| sotto_core::killcode::matches(&p, &check))
    }

    /// The folder received attachments are saved in.
    pub fn downloads_path(dir: &Path) -> PathBuf {
        dir.join("downloads")
    }

    /// Destroys the profile's data: every database file and every received
    /// attachment (`downloads/`, all of it) is overwritten with random
    /// bytes (a database's SQLCipher salt in its first bytes first, which
    /// makes the passphrase useless for it), synced, then removed.
    pub fn shred_dir(dir: &Path) -> Result<(), ClientError> {
        for name in [
            "sotto.db",
            "sotto.db-wal",
            "sotto.db-shm",
            "sotto.db-journal",
            "unlock.check.tmp",
        ] {
            shred_file(&dir.join(name))?;
        }
        shred_tree(&Self::downloads_path(dir))?;
        let mut fresh = [0u8; 48];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut fresh);
        Self::write_duress(dir, &fresh)
    }

    /// Closes the store and destroys its data; the store is empty and
    /// in memory afterwards.
    pub fn shred(&mut self) -> Result<(), ClientError> {
        let old = std::mem::replace(&mut self.conn, Connection::open_in_memory()?);
        self.watches_secrets = false;
        drop(old.close());
        Self::shred_dir(&self.dir)
    }

    /// Opens the profile in `dir` with `passphrase`, creating both if needed.
    /// The duress passphrase opens it too, after silently destroying it: the
    /// result is a fresh, empty profile.
    pub fn open(dir: &Path, passphrase: &str) -> Result<Self, ClientError> {
        match Self::open_inner(dir, passphrase) {
            Err(ClientError::WrongPassphrase) if Self::is_duress(dir, passphrase) => {
                Self::shred_dir(dir)?;
                Self::open_inner(dir, passphrase)
            }
            other => other,
        }
    }

    fn open_inner(dir: &Path, passphrase: &str) -> Result<Self, ClientError> {
        if passphrase.is_empty() {
            return Err(ClientError::Invalid(
                "the passphrase must not be empty".into(),
            ));
        }
        Self::open_with(dir, Some(passphrase))
    }

    /// A store without SQLCipher's encryption, for the test that reads the
    /// files for deleted secrets (encrypted pages would hide them either way).
    #[cfg(test)]
    pub(crate) fn open_unencrypted(dir: &Path) -> Result<Self, ClientError> {
        Self::open_with(dir, None)
    }

    fn open_with(dir: &Path, passphrase: Option<&str>) -> Result<Self, ClientError> {
        if !dir.exists() {
            private_dir(dir).map_err(|e| ClientError::Store(format!("{}: {e}", dir.display())))?;
        }
        // 0600 from the start; SQLite gives the WAL the database's mode.
        let db = Self::db_path(dir);
        if let Err(e) = new_private_file(&db)
            && e.kind() != std::io::ErrorKind::AlreadyExists
        {
            return Err(ClientError::Store(format!("{}: {e}", db.display())));
        }
        let conn = Connection::open(db)?;
        if let Some(passphrase) = passphrase {
            conn.pragma_update(None, "key", passphrase)?;
        }
        // SQLCipher would print decryption failures to stderr itself.
        let _: String = conn.query_row("PRAGMA cipher_log_level = NONE", [], |r| r.get(0))?;
        // The first read fails with "file is not a database" if the key is wrong.
        let check: Result<i64, _> =
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0));
        if let Err(e) = check {
            if e.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) {
                return Err(ClientError::WrongPassphrase);
            }
            return Err(e.into());
        }
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA secure_delete=ON; \
             PRAGMA foreign_keys=ON;",
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let mut conn = conn;
        migrations::migrate(&mut conn, migrations::MIGRATIONS)
            .map_err(|e| ClientError::Store(e.to_string()))?;
        SqliteStorageProvider::<JsonCodec, &mut Connection>::new(&mut conn)
            .run_migrations()
            .map_err(|e| ClientError::Store(format!("mls storage migration: {e}")))?;
        conn.execute_batch(SECRETS_DROPPED)?;
        if !Self::duress_path(dir).exists() {
            let mut fresh = [0u8; 48];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut fresh);
            Self::write_duress(dir, &fresh)?;
        }
        let crypto =
            CryptoProvider::new().map_err(|e| ClientError::Store(format!("crypto: {e:?}")))?;
        Ok(Self {
            conn,
            crypto,
            dir: dir.to_owned(),
            watches_secrets: true,
        })
    }

    /// Runs `f` in one immediate transaction with an MLS provider over it:
    /// MLS state changes and the rows `f` writes commit together or not at all.
    pub fn transaction<T>(
        &mut self,
        f: impl FnOnce(&Provider<'_>, &Connection) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = {
            let p = Provider {
                crypto: &self.crypto,
                storage: SqliteStorageProvider::new(&tx),
            };
            f(&p, &tx)
        };
        match out {
            Ok(v) => {
                tx.commit()?;
                self.forget_dropped_secrets()?;
                Ok(v)
            }
            Err(e) => {
                // Dropping the transaction rolls it back.
                drop(tx);
                Err(e)
            }
        }
    }

    /// After a transaction that replaced epoch secrets or deleted private
    /// keys: copies the WAL into the database (whose freed cells
    /// `secure_delete` has zeroed) and truncates it, so no old frame keeps
    /// them. A checkpoint that another connection holds up stays pending
    /// and is retried after the next such transaction.
    fn forget_dropped_secrets(&self) -> Result<(), ClientError> {
        if !self.watches_secrets {
            return Ok(());
        }
        let dropped: i64 = self
            .conn
            .query_row("SELECT n FROM temp.secrets_dropped", [], |r| r.get(0))?;
        if dropped == 0 {
            return Ok(());
        }
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy == 0 {
            self.conn
                .execute("UPDATE temp.secrets_dropped SET n = 0", [])?;
        }
        Ok(())
    }

    /// Saves the identity (before registering, so keys are never lost).
    pub fn save_identity(&mut self, id: &Identity) -> Result<(), ClientError> {
        self.transaction(|_, c| {
            let put = |k: &str, v: &[u8]| -> Result<(), ClientError> {
                c.execute(
                    "INSERT INTO profile (k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                    params![k, v],
                )?;
                Ok(())
            };
            put("account_secret", &id.account.secret()[..])?;
            put("device_secret", &id.device.secret()[..])?;
            put("handle", id.handle.as_str().as_bytes())?;
            put("link", id.link.to_string().as_bytes())?;
            put("suite", id.suite.name().as_bytes())?;
            put("registered", if id.registered { b"1" } else { b"0" })?;
            Ok(())
        })
    }

    /// Marks the registration as confirmed by the server.
    pub fn mark_registered(&mut self) -> Result<(), ClientError> {
        self.conn
            .execute("UPDATE profile SET v = X'31' WHERE k = 'registered'", [])?;
        Ok(())
    }

    /// Forgets an identity the server never confirmed (a registration that
    /// failed), so the profile is free for another registration or a link.
    /// A confirmed identity stays.
    pub fn forget_unconfirmed(&mut self) -> Result<(), ClientError> {
        self.transaction(|_, c| {
            let registered: Option<Vec<u8>> = c
                .query_row("SELECT v FROM profile WHERE k = 'registered'", [], |r| {
                    r.get(0)
                })
                .optional()?;
            if registered.as_deref() != Some(b"1") {
                c.execute(
                    "DELETE FROM profile WHERE k IN \
                     ('account_secret', 'device_secret', 'handle', 'link', 'suite', 'registered')",
                    [],
                )?;
            }
            Ok(())
        })
    }

    fn get(&self, k: &str) -> Result<Option<Zeroizing<Vec<u8>>>, ClientError> {
        Ok(self
            .conn
            .query_row("SELECT v FROM profile WHERE k = ?1", [k], |r| {
                r.get::<_, Vec<u8>>(0)
            })
            .optional()?
            .map(Zeroizing::new))
    }

    /// Saves a device waiting to be linked to an account.
    pub fn save_pending_link(
        &mut self,
        device: &DeviceKey,
        link: &ServerLink,
        secret: &[u8; 16],
    ) -> Result<(), ClientError> {
        self.transaction(|_, c| {
            let put = |k: &str, v: &[u8]| -> Result<(), ClientError> {
                c.execute(
                    "INSERT INTO profile (k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                    params![k, v],
                )?;
                Ok(())
            };
            put("device_secret", &device.secret()[..])?;
            put("link", link.to_string().as_bytes())?;
            put("link_secret", secret)?;
            Ok(())
        })
    }

    /// The device waiting to be linked, if this profile is one.
    pub fn pending_link(&self) -> Result<Option<PendingLink>, ClientError> {
        let (Some(dev), Some(link), Some(secret)) = (
            self.get("device_secret")?,
            self.get("link")?,
            self.get("link_secret")?,
        ) else {
            return Ok(None);
        };
        let dev: Zeroizing<[u8; 32]> = Zeroizing::new(arr(dev.to_vec())?);
        let secret: Zeroizing<[u8; 16]> = Zeroizing::new(arr(secret.to_vec())?);
        let link = String::from_utf8(link.to_vec())
            .map_err(|_| ClientError::Store("link is not UTF-8".into()))?;
        Ok(Some((
            DeviceKey::from_secret(&dev),
            ServerLink::parse(&link)?,
            secret,
        )))
    }

    /// Turns a linked device into a full profile: the account arrived.
    pub fn complete_link(&mut self, id: &Identity) -> Result<(), ClientError> {
        self.save_identity(id)?;
        self.conn
            .execute("DELETE FROM profile WHERE k = 'link_secret'", [])?;
        Ok(())
    }

    /// The cached signed device list of an account.
    pub fn device_list(
        &self,
        account: &AccountId,
    ) -> Result<Option<SignedDeviceList>, ClientError> {
        rows::get_list(&self.conn, account)
    }

    /// Loads the identity; `None` if the profile has none.
    pub fn identity(&self) -> Result<Option<Identity>, ClientError> {
        let Some(acc) = self.get("account_secret")? else {
            return Ok(None);
        };
        let need = |k: &str| -> Result<Zeroizing<Vec<u8>>, ClientError> {
            self.get(k)?
                .ok_or_else(|| ClientError::Store(format!("profile is missing {k}")))
        };
        let dev = need("device_secret")?;
        let text = |v: Zeroizing<Vec<u8>>| -> Result<String, ClientError> {
            String::from_utf8(v.to_vec())
                .map_err(|_| ClientError::Store("profile text is not UTF-8".into()))
        };
        let acc: Zeroizing<[u8; 32]> = Zeroizing::new(arr(acc.to_vec())?);
        let dev: Zeroizing<[u8; 32]> = Zeroizing::new(arr(dev.to_vec())?);
        let handle = Handle::new(&text(need("handle")?)?)
            .map_err(|_| ClientError::Store("stored handle invalid".into()))?;
        let link = ServerLink::parse(&text(need("link")?)?)?;
        let suite = Suite::from_name(&text(need("suite")?)?)
            .ok_or_else(|| ClientError::Store("stored ciphersuite unknown".into()))?;
        let registered = need("registered")?.as_slice() == b"1";
        Ok(Some(Identity {
            account: AccountKey::from_secret(&acc),
            device: DeviceKey::from_secret(&dev),
            handle,
            link,
            suite,
            registered,
        }))
    }

    /// The account of a known contact.
    pub fn contact(&self, handle: &Handle) -> Result<Option<AccountId>, ClientError> {
        let v: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT account FROM contacts WHERE handle = ?1",
                [handle.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        v.map(|v| arr(v).map(AccountId)).transpose()
    }

    /// All contacts.
    pub fn contacts(&self) -> Result<Vec<Contact>, ClientError> {
        let mut stmt = self.conn.prepare(
            "SELECT handle, account, verified, needs_confirm, previous_account FROM contacts ORDER BY handle",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<Vec<u8>>>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (h, a, v, n, prev) = row?;
            out.push(Contact {
                handle: h,
                account: AccountId(arr(a)?),
                verified: v != 0,
                needs_confirm: n != 0,
                key_changed: prev.is_some(),
            });
        }
        Ok(out)
    }

    /// One contact.
    pub fn contact_info(&self, handle: &Handle) -> Result<Option<Contact>, ClientError> {
        Ok(self
            .contacts()?
            .into_iter()
            .find(|c| c.handle == handle.as_str()))
    }

    /// Marks a contact's current key as verified by the user.
    pub fn confirm_contact(
        &mut self,
        handle: &Handle,
        account: &AccountId,
    ) -> Result<bool, ClientError> {
        let n = self.conn.execute(
            "UPDATE contacts SET verified = 1, needs_confirm = 0, previous_account = NULL \
             WHERE handle = ?1 AND account = ?2",
            params![handle.as_str(), &account.0[..]],
        )?;
        Ok(n == 1)
    }

    /// Messages not yet shown, in arrival order; they stay unshown until
    /// [`Store::mark_shown`]. Expired disappearing messages are deleted
    /// first, never shown.
    pub fn unshown(&mut self, now_ms: u64) -> Result<Vec<StoredMessage>, ClientError> {
        self.purge_expired(now_ms)?;
        self.transaction(|_, c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages m \
                 LEFT JOIN conversations c ON c.group_id = m.group_id \
                 WHERE m.shown = 0 ORDER BY m.seq, m.received_at_ms"
            ))?;
            stored_messages(&mut stmt, [])
        })
    }

    /// Marks messages shown (after they were).
    pub fn mark_shown(&mut self, shown: &[StoredMessage]) -> Result<(), ClientError> {
        if shown.is_empty() {
            return Ok(());
        }
        self.transaction(|_, c| {
            let mut stmt = c.prepare("UPDATE messages SET shown = 1 WHERE id = ?1")?;
            for m in shown {
                stmt.execute([&m.id.0[..]])?;
            }
            Ok(())
        })
    }

    /// Pending outbox entries (sent, not yet confirmed by the server).
    pub fn outbox(&self) -> Result<Vec<OutboxEntry>, ClientError> {
        let mut stmt = self.conn.prepare(
            "SELECT msg_id, group_id, payload, ttl_ms, plaintext FROM outbox \
             ORDER BY created_ms, rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, Option<Vec<u8>>>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (m, g, p, ttl, plaintext) = row?;
            out.push(OutboxEntry {
                msg_id: MessageId(arr(m)?),
                group: GroupId(arr(g)?),
                payload: p,
                ttl_ms: ttl.map(u),
                plaintext,
            });
        }
        Ok(out)
    }

    /// Whether a message still waits in the outbox.
    pub fn in_outbox(&self, id: &MessageId) -> Result<bool, ClientError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM outbox WHERE msg_id = ?1",
                [&id.0[..]],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Deletes the messages whose disappearing time has come, with their
    /// attachments (the saved file and the row with its name, key and
    /// hash), then checkpoints and truncates the WAL so that no old frame
    /// keeps them (`secure_delete` zeroes the freed cells). Returns how
    /// many messages went.
    pub fn purge_expired(&self, now_ms: u64) -> Result<usize, ClientError> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let n = purge_expired_in(&tx, &self.dir, i(now_ms))?;
        tx.commit()?;
        if n > 0 {
            // Busy only while another connection reads; then the next
            // purge or secret drop truncates it.
            let _: i64 = self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        }
        Ok(n)
    }

    /// When the next disappearing message is due, if one is stored.
    pub fn next_expiry(&self) -> Result<Option<u64>, ClientError> {
        let v: Option<i64> = self.conn.query_row(
            "SELECT min(expires_at_ms) FROM messages WHERE expires_at_ms IS NOT NULL",
            [],
            |r| r.get(0),
        )?;
        Ok(v.map(u))
    }

    /// The stored messages of a conversation, oldest first.
    pub fn history(&self, g: &GroupId, now_ms: u64) -> Result<Vec<StoredMessage>, ClientError> {
        self.purge_expired(now_ms)?;
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m \
             LEFT JOIN conversations c ON c.group_id = m.group_id \
             WHERE m.group_id = ?1 ORDER BY m.received_at_ms, m.seq"
        ))?;
        let out = stored_messages(&mut stmt, [&g.0[..]])?;
        Ok(out)
    }

    /// Removes a confirmed outbox entry.
    pub fn outbox_done(&mut self, id: &MessageId) -> Result<(), ClientError> {
        self.conn
            .execute("DELETE FROM outbox WHERE msg_id = ?1", [&id.0[..]])?;
        Ok(())
    }

    /// Every conversation.
    pub fn conversations(&self) -> Result<Vec<Conversation>, ClientError> {
        let mut stmt = self.conn.prepare(
            "SELECT group_id, kind, name, state, sent_since_update, last_update_ms, created_ms \
             FROM conversations ORDER BY created_ms, group_id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (g, kind, name, state, sent, last, created) = row?;
            out.push(Conversation {
                group: GroupId(arr(g)?),
                is_group: kind == "group",
                name,
                state: crate::conversation::ConversationState::from_stored(&state),
                sent_since_update: u(sent),
                last_update_ms: u(last),
                created_ms: u(created),
            });
        }
        Ok(out)
    }

    /// The newest message's receive time per conversation.
    pub fn last_activity(&self) -> Result<std::collections::HashMap<GroupId, u64>, ClientError> {
        let mut stmt = self
            .conn
            .prepare("SELECT group_id, max(received_at_ms) FROM messages GROUP BY group_id")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = std::collections::HashMap::new();
        for row in rows {
            let (g, t) = row?;
            out.insert(GroupId(arr(g)?), u(t));
        }
        Ok(out)
    }

    /// One conversation.
    pub fn conversation(&self, g: &GroupId) -> Result<Option<Conversation>, ClientError> {
        Ok(self.conversations()?.into_iter().find(|c| c.group == *g))
    }

    /// The raw connection, for modules of this crate that own their tables.
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The profile directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Row writers used inside [`Store::transaction`].
pub mod rows {
    use sotto_core::names::NameKey;

    /// What a remembered commit is, for settling it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Pending {
        /// A commit to a group this device holds.
        Commit,
        /// The creation of a conversation (discarded if it loses).
        Creation {
            /// The conversation's name.
            name: String,
            /// Whether it is a group.
            is_group: bool,
        },
        /// An external commit by which this device rejoins the group
        /// (discarded if it loses: it was applied locally already).
        Rejoin,
    }

    use super::*;

    /// Records a contact. A handle that now stands for another account is
    /// a key change: the old account is kept for the warning, and a
    /// verified contact needs the user's confirmation again.
    pub fn put_contact(
        c: &Connection,
        handle: &Handle,
        account: &AccountId,
    ) -> Result<ContactChange, ClientError> {
        let known: Option<(Vec<u8>, i64, i64)> = c
            .query_row(
                "SELECT account, verified, needs_confirm FROM contacts WHERE handle = ?1",
                [handle.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        match known {
            None => {
                c.execute(
                    "INSERT INTO contacts (handle, account) VALUES (?1, ?2)",
                    params![handle.as_str(), &account.0[..]],
                )?;
                Ok(ContactChange::New)
            }
            Some((a, _, _)) if a == account.0 => Ok(ContactChange::Same),
            Some((a, verified, needs)) => {
                let was_verified = verified != 0 || needs != 0;
                c.execute(
                    "UPDATE contacts SET account = ?2, previous_account = ?3, verified = 0, needs_confirm = ?4 \
                     WHERE handle = ?1",
                    params![handle.as_str(), &account.0[..], a, i64::from(was_verified)],
                )?;
                Ok(ContactChange::Changed { was_verified })
            }
        }
    }

    /// Records a conversation (or renames it).
    pub fn put_conversation(
        c: &Connection,
        g: &GroupId,
        is_group: bool,
        name: &str,
        now_ms: u64,
    ) -> Result<(), ClientError> {
        c.execute(
            "INSERT INTO conversations (group_id, kind, name, created_ms, last_update_ms) \
             VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT(group_id) DO UPDATE SET name = excluded.name",
            params![
                &g.0[..],
                if is_group { "group" } else { "direct" },
                name,
                i(now_ms)
            ],
        )?;
        Ok(())
    }

    /// A conversation's state (stored as `active`, `leaving`, `removed`).
    pub fn conversation_state(
        c: &Connection,
        g: &GroupId,
    ) -> Result<Option<crate::conversation::ConversationState>, ClientError> {
        let s: Option<String> = c
            .query_row(
                "SELECT state FROM conversations WHERE group_id = ?1",
                [&g.0[..]],
                |r| r.get(0),
            )
            .optional()?;
        Ok(s.as_deref()
            .map(crate::conversation::ConversationState::from_stored))
    }

    /// Sets a conversation's state.
    pub fn set_state(
        c: &Connection,
        g: &GroupId,
        state: crate::conversation::ConversationState,
    ) -> Result<(), ClientError> {
        c.execute(
            "UPDATE conversations SET state = ?2 WHERE group_id = ?1",
            params![&g.0[..], state.as_str()],
        )?;
        Ok(())
    }

    /// Counts a message sent by this device.
    pub fn count_sent(c: &Connection, g: &GroupId) -> Result<(), ClientError> {
        c.execute(
            "UPDATE conversations SET sent_since_update = sent_since_update + 1 WHERE group_id = ?1",
            [&g.0[..]],
        )?;
        Ok(())
    }

    /// Records a self-update of this device's leaf.
    pub fn updated(c: &Connection, g: &GroupId, now_ms: u64) -> Result<(), ClientError> {
        c.execute(
            "UPDATE conversations SET sent_since_update = 0, last_update_ms = ?2 WHERE group_id = ?1",
            params![&g.0[..], i(now_ms)],
        )?;
        Ok(())
    }

    /// Marks an envelope processed; false if it was already.
    pub fn mark_processed(
        c: &Connection,
        sender: &DeviceId,
        id: &MessageId,
    ) -> Result<bool, ClientError> {
        let n = c.execute(
            "INSERT OR IGNORE INTO processed (sender, msg_id) VALUES (?1, ?2)",
            params![&sender.0[..], &id.0[..]],
        )?;
        Ok(n == 1)
    }

    /// Whether an envelope was processed.
    pub fn is_processed(
        c: &Connection,
        sender: &DeviceId,
        id: &MessageId,
    ) -> Result<bool, ClientError> {
        let v: Option<i64> = c
            .query_row(
                "SELECT 1 FROM processed WHERE sender = ?1 AND msg_id = ?2",
                params![&sender.0[..], &id.0[..]],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.is_some())
    }

    /// Stores a message; false if its id is known (a duplicate).
    pub fn put_message(c: &Connection, m: &NewMessage<'_>) -> Result<bool, ClientError> {
        let n = c.execute(
            "INSERT OR IGNORE INTO messages (id, group_id, sender_handle, sender_account, outgoing, body, \
             sent_at_ms, received_at_ms, shown, seq, expires_at_ms, reply_to) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                &m.id.0[..],
                &m.group.0[..],
                m.sender.handle.as_str(),
                &m.sender.account.0[..],
                i64::from(m.outgoing),
                m.text,
                i(m.sent_at_ms),
                i(m.received_at_ms),
                i64::from(m.from_this_device),
                i(m.seq),
                m.expires_at_ms.map(i),
                m.reply_to.as_ref().map(|r| &r.0[..]),
            ],
        )?;
        Ok(n == 1)
    }

    /// The cached signed device list of an account.
    pub fn get_list(
        c: &Connection,
        account: &AccountId,
    ) -> Result<Option<SignedDeviceList>, ClientError> {
        let d: Option<Vec<u8>> = c
            .query_row(
                "SELECT data FROM device_lists WHERE account = ?1",
                [&account.0[..]],
                |r| r.get(0),
            )
            .optional()?;
        d.map(|d| postcard::from_bytes(&d).map_err(|e| ClientError::Store(e.to_string())))
            .transpose()
    }

    /// Caches a device list if it is newer than the cached one; returns the
    /// one it replaced (`None` if there was none or this one is not newer).
    pub fn put_list(c: &Connection, l: &SignedDeviceList) -> Result<ListChange, ClientError> {
        let old = get_list(c, &l.account)?;
        if old.as_ref().is_some_and(|o| o.version >= l.version) {
            let stale = old.as_ref().is_some_and(|o| o.version > l.version);
            return Ok(if stale {
                ListChange::Older
            } else {
                ListChange::Same
            });
        }
        let data = postcard::to_stdvec(l).map_err(|e| ClientError::Store(e.to_string()))?;
        c.execute(
            "INSERT INTO device_lists (account, version, data) VALUES (?1, ?2, ?3) \
             ON CONFLICT(account) DO UPDATE SET version = excluded.version, data = excluded.data",
            params![&l.account.0[..], i(l.version), data],
        )?;
        Ok(match old {
            None => ListChange::First,
            Some(o) => {
                let mut a = o.devices;
                let mut b = l.devices.clone();
                a.sort();
                b.sort();
                if a == b {
                    ListChange::Same
                } else {
                    ListChange::Changed
                }
            }
        })
    }

    /// Remembers `devices` as devices of `account` and returns the ones not
    /// seen before, unless the account itself was never seen (its first
    /// devices are nothing new). A profile from before this record starts
    /// from the account's cached device list.
    pub fn learn_devices(
        c: &Connection,
        account: &AccountId,
        devices: &[DeviceId],
    ) -> Result<Vec<DeviceId>, ClientError> {
        let known = |c: &Connection| -> Result<bool, ClientError> {
            Ok(c.query_row(
                "SELECT EXISTS (SELECT 1 FROM known_devices WHERE account = ?1)",
                [&account.0[..]],
                |r| r.get(0),
            )?)
        };
        let put = |d: &DeviceId| -> Result<bool, ClientError> {
            let n = c.execute(
                "INSERT OR IGNORE INTO known_devices (account, device) VALUES (?1, ?2)",
                params![&account.0[..], &d.0[..]],
            )?;
            Ok(n == 1)
        };
        if !known(c)?
            && let Some(l) = get_list(c, account)?
        {
            for d in &l.devices {
                put(d)?;
            }
        }
        let seen = known(c)?;
        let mut new = Vec::new();
        for d in devices {
            if put(d)? && seen {
                new.push(*d);
            }
        }
        Ok(new)
    }

    /// This device's copy of the account's kill-code record.
    pub fn kill_record(
        c: &Connection,
    ) -> Result<Option<sotto_proto::SignedKillRecord>, ClientError> {
        let v: Option<Vec<u8>> = c
            .query_row("SELECT v FROM profile WHERE k = 'kill_record'", [], |r| {
                r.get(0)
            })
            .optional()?;
        v.map(|v| postcard::from_bytes(&v).map_err(|e| ClientError::Store(e.to_string())))
            .transpose()
    }

    /// Keeps the account's kill-code record (checked by the caller).
    pub fn put_kill_record(
        c: &Connection,
        r: &sotto_proto::SignedKillRecord,
    ) -> Result<(), ClientError> {
        let data = postcard::to_stdvec(r).map_err(|e| ClientError::Store(e.to_string()))?;
        c.execute(
            "INSERT INTO profile (k, v) VALUES ('kill_record', ?1) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
            [data],
        )?;
        Ok(())
    }

    /// Remembers a staged commit until the server settles it.
    pub fn put_pending_commit(
        c: &Connection,
        req: &sotto_proto::CommitRequest,
        what: &Pending,
    ) -> Result<(), ClientError> {
        let data = postcard::to_stdvec(req).map_err(|e| ClientError::Store(e.to_string()))?;
        let (name, is_group, rejoin) = match what {
            Pending::Commit => (None, None, 0),
            Pending::Creation { name, is_group } => {
                (Some(name.as_str()), Some(i64::from(*is_group)), 0)
            }
            Pending::Rejoin => (None, None, 1),
        };
        c.execute(
            "INSERT INTO pending_commits (group_id, request, name, is_group, rejoin) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT(group_id) DO UPDATE SET request = excluded.request, name = excluded.name, \
             is_group = excluded.is_group, rejoin = excluded.rejoin",
            params![&req.group.0[..], data, name, is_group, rejoin],
        )?;
        Ok(())
    }

    /// Forgets a settled commit.
    pub fn delete_pending_commit(c: &Connection, g: &GroupId) -> Result<(), ClientError> {
        c.execute(
            "DELETE FROM pending_commits WHERE group_id = ?1",
            [&g.0[..]],
        )?;
        Ok(())
    }

    /// The commits waiting to be settled, with what each is. A commit an
    /// older version staged (another request format) is dropped: it
    /// cannot be sent any more, and the group moved on without it.
    pub fn pending_commits(
        c: &Connection,
    ) -> Result<Vec<(sotto_proto::CommitRequest, Pending)>, ClientError> {
        /// group, request, name, is_group, rejoin
        type Row = (Vec<u8>, Vec<u8>, Option<String>, Option<i64>, i64);
        let rows: Vec<Row> = {
            let mut st =
                c.prepare("SELECT group_id, request, name, is_group, rejoin FROM pending_commits")?;
            st.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<Result<_, _>>()?
        };
        let mut out = Vec::new();
        for (g, req, name, is_group, rejoin) in rows {
            let Ok(req) = postcard::from_bytes(&req) else {
                c.execute("DELETE FROM pending_commits WHERE group_id = ?1", [&g])?;
                continue;
            };
            let what = match (name, rejoin) {
                (_, 1) => Pending::Rejoin,
                (Some(name), _) => Pending::Creation {
                    name,
                    is_group: is_group.unwrap_or(0) != 0,
                },
                (None, _) => Pending::Commit,
            };
            out.push((req, what));
        }
        Ok(out)
    }

    /// A group's name key, if this device has one.
    pub fn name_key(c: &Connection, g: &GroupId) -> Result<Option<NameKey>, ClientError> {
        let v: Option<Option<Vec<u8>>> = c
            .query_row(
                "SELECT name_key FROM conversations WHERE group_id = ?1",
                [&g.0[..]],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.flatten()
            .and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok())
            .map(NameKey::from_bytes))
    }

    /// Records what a group is called now and the key its name is sealed
    /// under (after a commit that named it, or a Welcome). A name another
    /// member chose that breaks [`crate::names::group_name`] (control
    /// characters, bidirectional overrides, invisible characters, a `#` or
    /// `@` in front) is not taken: the group is `unnamed group #<id>`.
    pub fn put_name(
        c: &Connection,
        g: &GroupId,
        renamed: &sotto_core::group::Renamed,
        now_ms: u64,
    ) -> Result<(), ClientError> {
        let name = renamed
            .name
            .as_deref()
            .and_then(crate::names::group_name)
            .map_or_else(
                || format!("unnamed group #{}", &g.to_hex()[..8]),
                str::to_owned,
            );
        put_conversation(c, g, true, &name, now_ms)?;
        c.execute(
            "UPDATE conversations SET name_key = ?2 WHERE group_id = ?1",
            params![&g.0[..], &renamed.key.as_bytes()[..]],
        )?;
        Ok(())
    }

    /// Notes a delivery of `g` that this device could not read because its
    /// state of `g` is lost or behind; true if that is news (no re-add was
    /// pending yet).
    pub fn note_out_of_sync(c: &Connection, g: &GroupId) -> Result<bool, ClientError> {
        let n = c.execute(
            "INSERT OR IGNORE INTO rejoins (group_id) VALUES (?1)",
            [&g.0[..]],
        )?;
        c.execute(
            "UPDATE rejoins SET missed = missed + 1 WHERE group_id = ?1",
            [&g.0[..]],
        )?;
        Ok(n == 1)
    }

    /// Notes that a commit re-added this device to `g`: its Welcome follows.
    pub fn expect_readd(c: &Connection, g: &GroupId, now_ms: u64) -> Result<(), ClientError> {
        c.execute(
            "INSERT INTO rejoins (group_id, asked_ms) VALUES (?1, ?2)              ON CONFLICT(group_id) DO NOTHING",
            params![&g.0[..], i(now_ms.max(1))],
        )?;
        Ok(())
    }

    /// Whether this device waits to be re-added to `g`.
    pub fn rejoin_pending(c: &Connection, g: &GroupId) -> Result<bool, ClientError> {
        let v: Option<i64> = c
            .query_row(
                "SELECT 1 FROM rejoins WHERE group_id = ?1",
                [&g.0[..]],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.is_some())
    }

    /// The conversations to ask to be re-added to: never asked, or asked
    /// before `asked_before_ms`.
    pub fn rejoins_to_ask(
        c: &Connection,
        asked_before_ms: u64,
    ) -> Result<Vec<GroupId>, ClientError> {
        let mut st = c.prepare("SELECT group_id FROM rejoins WHERE asked_ms < ?1")?;
        let rows = st.query_map([i(asked_before_ms)], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for g in rows {
            out.push(GroupId(arr(g?)?));
        }
        Ok(out)
    }

    /// Records when this device asked to be re-added to `g`.
    pub fn rejoin_asked(c: &Connection, g: &GroupId, now_ms: u64) -> Result<(), ClientError> {
        c.execute(
            "UPDATE rejoins SET asked_ms = ?2 WHERE group_id = ?1",
            params![&g.0[..], i(now_ms.max(1))],
        )?;
        Ok(())
    }

    /// Forgets a pending re-add of this device to `g`; `Some(deliveries
    /// missed)` if there was one.
    pub fn rejoin_done(c: &Connection, g: &GroupId) -> Result<Option<u64>, ClientError> {
        let missed: Option<i64> = c
            .query_row(
                "SELECT missed FROM rejoins WHERE group_id = ?1",
                [&g.0[..]],
                |r| r.get(0),
            )
            .optional()?;
        c.execute("DELETE FROM rejoins WHERE group_id = ?1", [&g.0[..]])?;
        Ok(missed.map(u))
    }

    /// Queues an encrypted message for (re)sending, with the application
    /// message it encrypts.
    pub fn put_outbox(
        c: &Connection,
        id: &MessageId,
        g: &GroupId,
        (payload, plaintext): (&[u8], &[u8]),
        now_ms: u64,
        ttl_ms: Option<u64>,
    ) -> Result<(), ClientError> {
        c.execute(
            "INSERT INTO outbox (msg_id, group_id, payload, created_ms, ttl_ms, plaintext) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                &id.0[..],
                &g.0[..],
                payload,
                i(now_ms),
                ttl_ms.map(i),
                plaintext
            ],
        )?;
        Ok(())
    }

    /// Replaces a queued message's ciphertext by one of a later epoch.
    pub fn reencrypted_outbox(
        c: &Connection,
        id: &MessageId,
        payload: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<(), ClientError> {
        c.execute(
            "UPDATE outbox SET payload = ?2, ttl_ms = ?3 WHERE msg_id = ?1",
            params![&id.0[..], payload, ttl_ms.map(i)],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `messages` table as profiles made before replies have it.
    const OLD_MESSAGES: &str = "CREATE TABLE messages (
        id              BLOB PRIMARY KEY,
        group_id        BLOB NOT NULL,
        sender_handle   TEXT NOT NULL,
        sender_account  BLOB NOT NULL,
        outgoing        INTEGER NOT NULL,
        body            TEXT NOT NULL,
        sent_at_ms      INTEGER NOT NULL,
        received_at_ms  INTEGER NOT NULL,
        shown           INTEGER NOT NULL DEFAULT 0,
        seq             INTEGER,
        expires_at_ms   INTEGER
    );";

    #[test]
    fn a_profile_from_before_replies_gets_the_column_and_keeps_its_messages() {
        let dir = tempfile::tempdir().unwrap();
        let g = GroupId([7; 32]);
        {
            // An old profile: encrypted, with one message and no reply_to.
            let c = Connection::open(Store::db_path(dir.path())).unwrap();
            c.pragma_update(None, "key", "pass").unwrap();
            c.execute_batch(OLD_MESSAGES).unwrap();
            c.execute(
                "INSERT INTO messages (id, group_id, sender_handle, sender_account, outgoing, \
                 body, sent_at_ms, received_at_ms, shown, seq) \
                 VALUES (?1, ?2, 'bob', ?3, 0, 'old message', 1, 2, 1, 1)",
                params![&[1u8; 16][..], &g.0[..], &[9u8; 32][..]],
            )
            .unwrap();
        }
        let mut store = Store::open(dir.path(), "pass").unwrap();
        let old = store.history(&g, 0).unwrap();
        assert_eq!(old.len(), 1);
        assert_eq!(old[0].text, "old message");
        assert_eq!(old[0].reply_to, None);
        // New replies are stored in the migrated table.
        let bob = CredentialIdentity {
            account: AccountId([9; 32]),
            device: DeviceId([8; 32]),
            handle: Handle::new("bob").unwrap(),
        };
        store
            .transaction(|_, c| {
                rows::put_message(
                    c,
                    &NewMessage {
                        id: MessageId([2; 16]),
                        group: g,
                        sender: &bob,
                        outgoing: false,
                        from_this_device: false,
                        text: "a reply",
                        sent_at_ms: 3,
                        received_at_ms: 4,
                        seq: 2,
                        expires_at_ms: None,
                        reply_to: Some(MessageId([1; 16])),
                    },
                )
            })
            .unwrap();
        let all = store.history(&g, 0).unwrap();
        assert_eq!(all[1].reply_to, Some(MessageId([1; 16])));
        drop(store);
        // Opening again (the column exists now) is fine and changes nothing.
        let store = Store::open(dir.path(), "pass").unwrap();
        assert_eq!(store.history(&g, 0).unwrap(), all);
    }

    /// Every byte array of 32 or more bytes in a JSON value, as openmls's
    /// JSON codec writes it (`[12,250,...]`): the keys and secrets in it.
    fn arrays(json: &[u8]) -> Vec<Vec<u8>> {
        fn walk(v: &serde_json::Value, out: &mut Vec<Vec<u8>>) {
            match v {
                serde_json::Value::Array(a)
                    if a.len() >= 32 && a.iter().all(|x| x.as_u64().is_some_and(|n| n < 256)) =>
                {
                    // In pieces of 32 bytes, as text ("12,250,..."): a big
                    // key's JSON spans several pages, a piece rarely does.
                    for piece in a.chunks_exact(32) {
                        let text: Vec<String> = piece.iter().map(|x| x.to_string()).collect();
                        out.push(text.join(",").into_bytes());
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                serde_json::Value::Object(o) => o.values().for_each(|x| walk(x, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(&serde_json::from_slice(json).unwrap(), &mut out);
        out
    }

    /// The secrets an observer of the files must not find once they are
    /// gone: the group's epoch secrets, its epoch key pairs and the MLS
    /// private keys (leaf keys, KeyPackage init keys) of this device.
    fn secrets(store: &Store) -> Vec<Vec<u8>> {
        column_values(
            store,
            &[
                "SELECT group_data FROM openmls_group_data WHERE data_type IN \
                 ('group_epoch_secrets', 'message_secrets')",
                "SELECT key_pairs FROM openmls_epoch_keys_pairs",
                "SELECT key_pair FROM openmls_encryption_keys",
                "SELECT key_package FROM openmls_key_packages",
            ],
        )
        .iter()
        .flat_map(|v| arrays(v))
        .collect()
    }

    /// Every value openmls keeps for the device, live, one after another.
    fn live_values(store: &Store) -> Vec<u8> {
        column_values(
            store,
            &[
                "SELECT group_data FROM openmls_group_data",
                "SELECT key_pairs FROM openmls_epoch_keys_pairs",
                "SELECT key_pair FROM openmls_encryption_keys",
                "SELECT key_package FROM openmls_key_packages",
                "SELECT signature_key FROM openmls_signature_keys",
            ],
        )
        .join(&0)
    }

    /// The values of the first column of every row of each query.
    fn column_values(store: &Store, queries: &[&str]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for sql in queries {
            let mut stmt = store.conn.prepare(sql).unwrap();
            let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap();
            out.extend(rows.map(Result::unwrap));
        }
        out
    }

    /// The database file and its WAL, as a thief reads them.
    fn files(dir: &Path) -> Vec<u8> {
        let db = Store::db_path(dir);
        let mut bytes = fs::read(&db).unwrap();
        let mut wal = db.into_os_string();
        wal.push("-wal");
        bytes.extend(fs::read(wal).unwrap_or_default());
        bytes
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    fn person(handle: &str) -> (CredentialIdentity, DeviceKey, SignedDeviceList) {
        let account = AccountKey::generate();
        let device = DeviceKey::generate();
        let me = CredentialIdentity {
            account: account.id(),
            device: device.id(),
            handle: Handle::new(handle).unwrap(),
        };
        let list = account.sign_device_list(1, vec![device.id()]);
        (me, device, list)
    }

    /// C8: a group moves on two epochs (two self-updates), and the member
    /// that was invited joins: the secrets of the first epoch, the old leaf
    /// keys and the used KeyPackage's init key are in neither the database
    /// file nor the WAL afterwards, while they were there before. Without
    /// `secure_delete` the old cells stay in freed space; without the WAL
    /// truncation the old frames keep them.
    #[test]
    fn secrets_of_past_epochs_and_used_keys_leave_the_files() {
        let (adir, bdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut alice = Store::open_unencrypted(adir.path()).unwrap();
        let mut bob = Store::open_unencrypted(bdir.path()).unwrap();
        let (a, a_dev, _) = person("alice");
        let (b, b_dev, b_list) = person("bob");
        let g = GroupId([3; 32]);
        let kp = bob
            .transaction(|p, _| {
                Ok(sotto_core::mls::key_packages(
                    p,
                    &b,
                    &b_dev,
                    Suite::PostQuantum,
                    1,
                )?)
            })
            .unwrap()
            .remove(0);
        // The search works: live secrets are found in the files (but for
        // the few pieces that straddle two pages). Only those count.
        let found = |dir: &Path, all: Vec<Vec<u8>>| {
            let bytes = files(dir);
            let n = all.len();
            let seen: Vec<_> = all.into_iter().filter(|s| contains(&bytes, s)).collect();
            assert!(
                seen.len() * 10 >= n * 9 && !seen.is_empty(),
                "only {} of {n} live secret pieces are in the files",
                seen.len()
            );
            seen
        };
        let bob_before = found(bdir.path(), secrets(&bob));
        let welcome = alice
            .transaction(|p, _| {
                let (kp, _) = sotto_core::mls::verify_key_package(p, &kp, b.account, b.device)?;
                let created = sotto_core::mls::create_group(
                    p,
                    &a,
                    &a_dev,
                    g,
                    vec![kp],
                    vec![b_list.clone()],
                    sotto_core::mls::NewConversation::Direct,
                )?;
                sotto_core::mls::merge_pending(p, g)?;
                Ok(created.staged.welcome.unwrap())
            })
            .unwrap();
        bob.transaction(|p, _| Ok(sotto_core::mls::join(p, &welcome).map(|_| ())?))
            .unwrap();

        let alice_before = found(adir.path(), secrets(&alice));
        for _ in 0..2 {
            alice
                .transaction(|p, _| {
                    let staged = sotto_core::group::stage(
                        p,
                        &a_dev,
                        g,
                        sotto_core::group::Change {
                            self_update: true,
                            ..Default::default()
                        },
                        None,
                    )?;
                    assert!(staged.is_some());
                    sotto_core::mls::merge_pending(p, g)?;
                    Ok(())
                })
                .unwrap();
        }
        assert_eq!(
            alice
                .transaction(|p, _| Ok(sotto_core::mls::epoch(p, g)?))
                .unwrap(),
            3
        );

        for (who, store, dir, before) in [
            ("alice", &alice, adir.path(), &alice_before),
            ("bob", &bob, bdir.path(), &bob_before),
        ] {
            // Secrets openmls keeps on purpose (past resumption PSKs) are not
            // gone, and are not counted.
            let live = live_values(store);
            let gone: Vec<_> = before.iter().filter(|s| !contains(&live, s)).collect();
            assert!(!gone.is_empty(), "{who}: something was deleted");
            let now = files(dir);
            let left = gone.iter().filter(|s| contains(&now, s)).count();
            assert_eq!(
                left,
                0,
                "{who}: {left} of {} deleted secrets are still in the files",
                gone.len()
            );
        }
    }

    /// A message with a saved attachment: its row, its file in `downloads/`.
    fn message_with_file(store: &mut Store, n: u8, text: &str, name: &str, expires: Option<u64>) {
        let sender = CredentialIdentity {
            account: AccountId([9; 32]),
            device: DeviceId([8; 32]),
            handle: Handle::new("eve").unwrap(),
        };
        let id = MessageId([n; 16]);
        let downloads = Store::downloads_path(&store.dir);
        private_dir(&downloads).unwrap();
        let path = downloads.join(name);
        fs::write(&path, format!("contents of {name}")).unwrap();
        store
            .transaction(|_, c| {
                rows::put_message(
                    c,
                    &NewMessage {
                        id,
                        group: GroupId([5; 32]),
                        sender: &sender,
                        outgoing: false,
                        from_this_device: false,
                        text,
                        sent_at_ms: 1,
                        received_at_ms: 1,
                        seq: u64::from(n),
                        expires_at_ms: expires,
                        reply_to: None,
                    },
                )?;
                let f = sotto_core::message::FileRef {
                    blob: sotto_proto::BlobId([n; 16]),
                    key: [n; 32],
                    nonce: [n; 12],
                    sha256: [n ^ 0xff; 32],
                    name: name.into(),
                    size: 1,
                };
                crate::files::queue(c, &id, &sender.handle, &f)?;
                c.execute(
                    "UPDATE attachments SET state = 'saved', path = ?2 WHERE msg_id = ?1",
                    params![&id.0[..], path.display().to_string()],
                )?;
                Ok(())
            })
            .unwrap();
    }

    /// C12: once a disappearing message's time came, its text, its
    /// attachment's row (name, key, hash) and its saved file are in no file
    /// of the profile, old WAL frames included, while the store stays open
    /// (as in a running daemon); a message without a timer keeps its file.
    #[test]
    fn an_expired_message_takes_its_file_and_row_and_leaves_no_wal_frame() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_unencrypted(dir.path()).unwrap();
        let gone_text = "meet me at the old mill at nine";
        message_with_file(&mut store, 1, gone_text, "old-mill-map.png", Some(1_000));
        message_with_file(&mut store, 2, "this one stays", "stays.txt", None);
        let secrets: [&[u8]; 4] = [
            gone_text.as_bytes(),
            b"old-mill-map.png",
            &[1; 32],    // the file's key
            &[0xfe; 32], // its hash
        ];
        // The search works: before the time, all of it is in the files.
        let all = |dir: &Path| -> Vec<u8> {
            let mut bytes = files(dir);
            bytes.extend(
                fs::read(Store::downloads_path(dir).join("old-mill-map.png")).unwrap_or_default(),
            );
            bytes
        };
        let before = all(dir.path());
        for s in secrets {
            assert!(
                contains(&before, s),
                "{s:?} is not in the files to begin with"
            );
        }
        assert_eq!(store.next_expiry().unwrap(), Some(1_000));
        assert_eq!(store.purge_expired(999).unwrap(), 0);
        assert_eq!(store.purge_expired(1_000).unwrap(), 1);
        assert_eq!(store.next_expiry().unwrap(), None);
        let downloads = Store::downloads_path(dir.path());
        assert!(
            !downloads.join("old-mill-map.png").exists(),
            "the file stayed"
        );
        assert!(downloads.join("stays.txt").exists());
        let rows: Vec<Vec<u8>> = column_values(&store, &["SELECT msg_id FROM attachments"]);
        assert_eq!(
            rows,
            [vec![2u8; 16]],
            "the expired message's attachment row stayed"
        );
        let after = files(dir.path());
        for s in secrets {
            assert!(
                !contains(&after, s),
                "{:?} is still in the files",
                String::from_utf8_lossy(s)
            );
        }
        assert!(contains(&after, b"this one stays"));
    }

    /// C10: a group name another member chose is taken only if it follows
    /// the rule for names this device gives: one with a bidirectional
    /// override, an escape sequence or an invisible character, or a `#` or
    /// `@` in front, leaves the group `unnamed group #<id>`.
    #[test]
    fn a_received_group_name_with_hidden_characters_is_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_unencrypted(dir.path()).unwrap();
        let g = GroupId([6; 32]);
        let name_of = |store: &mut Store, name: &str| -> String {
            let renamed = sotto_core::group::Renamed {
                name: Some(name.into()),
                key: sotto_core::names::NameKey::from_bytes([1; 32]),
            };
            store
                .transaction(|_, c| rows::put_name(c, &g, &renamed, 1))
                .unwrap();
            store.conversation(&g).unwrap().unwrap().name
        };
        let unnamed = format!("unnamed group #{}", &g.to_hex()[..8]);
        assert_eq!(name_of(&mut store, " ann "), "ann");
        for hostile in [
            "ann\u{202e}",
            "\u{2067}ann",
            "ann\x1b[8m",
            "an\u{200b}n",
            "#ann",
            "@ann",
            "",
        ] {
            assert_eq!(name_of(&mut store, hostile), unnamed, "{hostile:?}");
        }
    }
}
