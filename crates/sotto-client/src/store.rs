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
//! Temporary triggers on openmls's tables notice those writes; the same
//! goes for a message deleted (it disappeared) or whose text changed.
//!
//! Message texts are indexed for local search (FTS5, the `search`
//! module) inside the same database; the index follows deletions and
//! changes at once (FTS5 `secure-delete`), so a deleted text's words leave
//! the index's pages with it.
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
use sotto_core::mls::Held;
use sotto_core::{AccountKey, CredentialIdentity, DeviceKey, Suite};
use sotto_proto::{AccountId, DeviceId, GroupId, Handle, MessageId, SignedDeviceList};
use zeroize::Zeroizing;

use crate::{ClientError, ServerLink};

mod migrations;
mod search;
pub(crate) mod shred;

pub use search::{SEARCH_LIMIT, SearchQuery};
pub(crate) use shred::{new_private_file, private_dir};
use shred::{shred_file, shred_tree};

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
/// SQLCipher storage, and the groups the store holds loaded. Built per
/// transaction, so MLS writes join it.
pub struct Provider<'a> {
    crypto: &'a CryptoProvider,
    storage: SqliteStorageProvider<JsonCodec, &'a Connection>,
    held: &'a Held,
}

impl sotto_core::mls::Provider for Provider<'_> {
    fn held(&self) -> Option<&Held> {
        Some(self.held)
    }
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
    /// When its sender last edited it (this device's clock), if they did.
    pub edited_at_ms: Option<u64>,
    /// Deleted for everyone by its sender: a tombstone, `text` is empty.
    pub deleted: bool,
    /// A kind of message this version cannot show (a later one sent it).
    pub unsupported: bool,
    /// Its reactions: each emoji with how many members chose it, most
    /// chosen first ([`Store::reactions`] says who).
    pub reactions: Vec<(String, u32)>,
    /// For this account's message: how many other members reported a
    /// device of theirs decrypted it (a read counts as delivered).
    pub delivered_to: u32,
    /// For this account's message: how many other members reported they
    /// were shown it.
    pub read_by: u32,
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
    /// A kind of message this version cannot show.
    pub unsupported: bool,
}

/// The columns [`stored_messages`] reads, from `messages m` joined with
/// `conversations c`.
const MESSAGE_COLUMNS: &str = "m.id, m.group_id, coalesce(c.name, ''), m.sender_handle, \
     m.outgoing, m.body, m.sent_at_ms, m.received_at_ms, m.reply_to, m.edited_at_ms, m.deleted, \
     m.unsupported, \
     (SELECT count(*) FROM receipts r WHERE r.msg_id = m.id), \
     (SELECT count(*) FROM receipts r WHERE r.msg_id = m.id AND r.status >= 2)";

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
            (
                r.get::<_, Option<i64>>(9)?,
                r.get::<_, i64>(10)?,
                r.get::<_, i64>(11)?,
                r.get::<_, u32>(12)?,
                r.get::<_, u32>(13)?,
            ),
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (
            id,
            g,
            conv,
            sender,
            outgoing,
            text,
            sent,
            recv,
            reply_to,
            (edited, deleted, unsupported, delivered_to, read_by),
        ) = row?;
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
            edited_at_ms: edited.map(u),
            deleted: deleted != 0,
            unsupported: unsupported != 0,
            reactions: Vec::new(),
            delivered_to,
            read_by,
        });
    }
    Ok(out)
}

/// Fills in each message's reaction counts.
fn with_reactions(
    c: &Connection,
    mut msgs: Vec<StoredMessage>,
) -> Result<Vec<StoredMessage>, ClientError> {
    let mut stmt = c.prepare_cached(
        "SELECT emoji, count(*) FROM reactions WHERE group_id = ?1 AND target = ?2 \
         GROUP BY emoji ORDER BY count(*) DESC, min(at_ms), min(rowid)",
    )?;
    for m in &mut msgs {
        m.reactions = stmt
            .query_map(params![&m.group.0[..], &m.id.0[..]], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?))
            })?
            .collect::<Result<_, _>>()?;
    }
    Ok(msgs)
}

/// Temporary (per connection) triggers that set `temp.secrets_dropped` when
/// a transaction replaces a group's epoch secrets or deletes MLS private
/// keys or group state, or deletes a message or changes its text (the old
/// text in its row and its words in the search index) or deletes an
/// attachment's row (its name and key); see
/// [`Store::forget_dropped_secrets`].
const SECRETS_DROPPED: &str = "
CREATE TEMP TABLE IF NOT EXISTS secrets_dropped (n INTEGER NOT NULL);
INSERT INTO secrets_dropped (n) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM secrets_dropped);
CREATE TEMP TRIGGER IF NOT EXISTS message_deleted
    AFTER DELETE ON main.messages
    BEGIN UPDATE secrets_dropped SET n = 1; END;
CREATE TEMP TRIGGER IF NOT EXISTS message_text_changed
    AFTER UPDATE OF body ON main.messages
    BEGIN UPDATE secrets_dropped SET n = 1; END;
CREATE TEMP TRIGGER IF NOT EXISTS attachment_deleted
    AFTER DELETE ON main.attachments
    BEGIN UPDATE secrets_dropped SET n = 1; END;
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
    /// The groups held loaded between transactions (sotto-core's rules:
    /// given back only by a committed transaction, all dropped when
    /// another connection changed the database).
    held: Held,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.dir.display())
    }
}

/// Deletes the disappearing messages whose time came, with their
/// attachments: the saved file is shredded and the row (name, key, hash)
/// goes. Returns how many messages went.
fn purge_expired_in(c: &Connection, dir: &Path, now_ms: i64) -> Result<usize, ClientError> {
    // The attachments of expired messages, and any whose message is gone
    // (left by versions that deleted only the message).
    const GOING: &str = "(msg_id IN (SELECT id FROM messages \
         WHERE (expires_at_ms IS NOT NULL AND expires_at_ms <= ?1) OR deleted = 1) \
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
    let expired = c.execute(
        "DELETE FROM messages WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= ?1",
        [now_ms],
    )?;
    if expired > 0 {
        // Reactions and receipts go with their message.
        c.execute_batch(
            "DELETE FROM reactions WHERE target NOT IN (SELECT id FROM messages); \
             DELETE FROM receipts WHERE msg_id NOT IN (SELECT id FROM messages); \
             DELETE FROM receipts_out WHERE msg_id NOT IN (SELECT id FROM messages);",
        )?;
    }
    Ok(expired)
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
            held: Held::default(),
        })
    }

    /// How many times a group's MLS state was loaded from the database
    /// since the store was opened (a held group is not): for tests and
    /// benchmarks.
    pub fn group_loads(&self) -> u64 {
        self.held.loads()
    }

    /// How many groups the store holds loaded at most (see
    /// [`sotto_core::mls::Limit`]; 0 groups loads each group for each
    /// transaction).
    pub fn set_group_limit(&self, limit: sotto_core::mls::Limit) {
        self.held.set_limit(limit);
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
        // Holding the write lock: a commit of another connection since the
        // last transaction shows here, and makes every held group stale.
        let version: i64 = tx.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        self.held.check(version);
        let out = {
            let p = Provider {
                crypto: &self.crypto,
                storage: SqliteStorageProvider::new(&tx),
                held: &self.held,
            };
            f(&p, &tx)
        };
        match out {
            Ok(v) => {
                if let Err(e) = tx.commit() {
                    self.held.rollback();
                    return Err(e.into());
                }
                self.held.commit();
                self.forget_dropped_secrets()?;
                Ok(v)
            }
            Err(e) => {
                // Dropping the transaction rolls it back.
                drop(tx);
                self.held.rollback();
                Err(e)
            }
        }
    }

    /// After a transaction that replaced epoch secrets, deleted private
    /// keys, or deleted a message or changed its text: copies the WAL into
    /// the database (whose freed cells `secure_delete` has zeroed) and
    /// truncates it, so no old frame keeps them. A checkpoint that another
    /// connection holds up stays pending and is retried after the next
    /// such transaction.
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
            with_reactions(c, stored_messages(&mut stmt, [])?)
        })
    }

    /// Marks messages shown (after they were).
    pub fn mark_shown(&mut self, shown: &[StoredMessage]) -> Result<(), ClientError> {
        if shown.is_empty() {
            return Ok(());
        }
        // Lost to a power cut, a mark shows a message once more: unsynced.
        self.unsynced(|s| {
            s.transaction(|_, c| {
                let mut stmt = c.prepare("UPDATE messages SET shown = 1 WHERE id = ?1")?;
                for m in shown {
                    stmt.execute([&m.id.0[..]])?;
                }
                Ok(())
            })
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
    /// hash), their reactions and receipts, and their words from the
    /// search index, and the attachments of messages deleted for everyone;
    /// then checkpoints and truncates the WAL so that no old frame keeps
    /// them (`secure_delete` zeroes the freed cells). Returns how many
    /// messages went.
    pub fn purge_expired(&self, now_ms: u64) -> Result<usize, ClientError> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let n = purge_expired_in(&tx, &self.dir, i(now_ms))?;
        tx.commit()?;
        // A deleted message set `secrets_dropped`: the checkpoint runs
        // (busy only while another connection reads; then the next purge
        // or secret drop truncates it).
        self.forget_dropped_secrets()?;
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
        with_reactions(&self.conn, out)
    }

    /// How many other members reported the message `id` delivered, and
    /// how many read.
    pub fn receipt_counts(&self, id: &MessageId) -> Result<(u32, u32), ClientError> {
        Ok(self.conn.query_row(
            "SELECT count(*), count(*) FILTER (WHERE status >= 2) FROM receipts WHERE msg_id = ?1",
            [&id.0[..]],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?)
    }

    /// Who reacted to the message `id` of `g`, and with what: (handle,
    /// emoji), in the order they reacted.
    pub fn reactions(
        &self,
        g: &GroupId,
        id: &MessageId,
    ) -> Result<Vec<(String, String)>, ClientError> {
        let mut stmt = self.conn.prepare(
            "SELECT reactor_handle, emoji FROM reactions WHERE group_id = ?1 AND target = ?2 \
             ORDER BY at_ms, rowid",
        )?;
        let out = stmt
            .query_map(params![&g.0[..], &id.0[..]], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(out)
    }

    /// Removes a confirmed outbox entry. Not synced to disk at once (see
    /// [`Store::unsynced`]): lost to a power cut, the entry only sends its
    /// message again, which the server and every recipient drop as a
    /// duplicate of the same id.
    pub fn outbox_done(&mut self, id: &MessageId) -> Result<(), ClientError> {
        self.unsynced(|s| {
            s.conn
                .execute("DELETE FROM outbox WHERE msg_id = ?1", [&id.0[..]])?;
            Ok(())
        })
    }

    /// Runs `f` with its commits not synced to disk (`synchronous=NORMAL`):
    /// they survive a crash of the process, and a power cut may undo them
    /// until the next synced commit, which syncs the WAL in order, theirs
    /// included. Only for writes whose loss costs a repetition and nothing
    /// else: an outbox entry already confirmed, a message marked shown.
    fn unsynced<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        let out = f(self);
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        out
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

pub mod rows;

#[cfg(test)]
pub(crate) mod tests;
