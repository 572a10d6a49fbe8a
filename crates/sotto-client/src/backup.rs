//! Encrypted backups: `sotto backup create FILE` and `sotto backup restore
//! FILE` (docs/PROTOCOL.md, "Backups"; docs/THREAT_MODEL.md, "A stolen
//! backup").
//!
//! A backup holds what a person would lose with their only device: the
//! account key, the handle and server, contacts with their verification
//! states, blocked accounts, device lists, the conversations and their
//! history (reactions, receipts, edits and tombstones included) and the
//! settings. It is sealed with ChaCha20-Poly1305 under a key derived
//! (HKDF-SHA256) from a fresh 256-bit recovery key, shown once and never
//! stored: whoever has the file and not the key learns its size only.
//!
//! What never leaves a device stays out: the device's signing key, every
//! MLS secret (epoch secrets, HPKE and KeyPackage private keys), the store
//! key and the duress passphrase. A restore therefore makes a new device:
//! it signs itself into the account's device list with the account key
//! (`Restore`, no other device need be alive), then joins each
//! conversation beside its account's member devices by external commit,
//! as a device that lost its state rejoins (`crate::rejoin`). What was
//! sent before it joined stays unreadable to it except through the
//! history the backup carried. Disappearing messages, files and anything
//! unsent are not in a backup.

use std::io::Write as _;
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use rand::{CryptoRng, RngCore};
use rusqlite::types::Value;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sotto_core::{AccountKey, DeviceKey, Suite};
use sotto_proto::{
    MAX_DEVICES_PER_ACCOUNT, PROTOCOL_VERSION, Request, Response, RestoreRequest, SignedDeviceList,
};
use zeroize::{Zeroize, Zeroizing};

use crate::ClientError;
use crate::ServerLink;
use crate::profile::Profile;
use crate::store::{Identity, Store, rows};
use crate::transport::{Connection, unexpected};

/// The first bytes of a backup file (and the data its encryption
/// authenticates with it): the format and its version.
const MAGIC: &[u8; 14] = b"SOTTO-BACKUP\x00\x01";

/// The largest backup `restore` reads (a history of several million
/// messages fits).
pub const MAX_BACKUP_BYTES: u64 = 1 << 30;

/// The version of what a backup holds (the tables and columns below).
const SNAPSHOT_VERSION: u16 = 1;

/// The tables a backup carries, with their columns and which rows: every
/// row but those that disappear (and what hangs on them).
const TABLES: &[(&str, &str, &str)] = &[
    (
        "contacts",
        "handle, account, verified, needs_confirm, previous_account",
        "",
    ),
    ("device_lists", "account, version, data", ""),
    ("known_devices", "account, device", ""),
    ("blocked", "account, handle", ""),
    ("left_groups", "group_id", ""),
    ("no_device_members", "group_id, account, handle", ""),
    (
        "conversations",
        "group_id, kind, name, state, created_ms, sent_since_update, last_update_ms, name_key, read_receipts",
        "",
    ),
    (
        "messages",
        "id, group_id, sender_handle, sender_account, outgoing, body, sent_at_ms, received_at_ms, \
         seq, reply_to, edited_at_ms, deleted, unsupported, read_sent",
        "WHERE expires_at_ms IS NULL",
    ),
    (
        "reactions",
        "id, group_id, target, reactor_account, reactor_handle, emoji, at_ms",
        "WHERE target IN (SELECT id FROM messages WHERE expires_at_ms IS NULL)",
    ),
    (
        "receipts",
        "msg_id, account, status, at_ms",
        "WHERE msg_id IN (SELECT id FROM messages WHERE expires_at_ms IS NULL)",
    ),
];

/// The profile settings a backup carries (keys of the `profile` table).
const SETTINGS: &[&str] = &["read_receipts"];

/// One SQL value.
#[derive(Serialize, Deserialize)]
enum Cell {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl Drop for Cell {
    fn drop(&mut self) {
        match self {
            Self::Text(t) => t.zeroize(),
            Self::Blob(b) => b.zeroize(),
            Self::Null | Self::Int(_) => {}
        }
    }
}

/// What a backup holds, before encryption.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u16,
    created_ms: u64,
    account_secret: [u8; 32],
    handle: String,
    link: String,
    suite: String,
    settings: Vec<(String, Vec<u8>)>,
    /// Per entry of [`TABLES`], in order: its rows.
    tables: Vec<Vec<Vec<Cell>>>,
}

impl Snapshot {
    /// What it holds, counted.
    fn summary(&self) -> BackupSummary {
        let count = |t: &str| {
            TABLES
                .iter()
                .position(|(name, ..)| *name == t)
                .map_or(0, |i| self.tables[i].len())
        };
        BackupSummary {
            conversations: count("conversations"),
            messages: count("messages"),
            contacts: count("contacts"),
        }
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        self.account_secret.zeroize();
    }
}

/// The key a backup is sealed under: 32 random bytes, shown once to be
/// written down, as 16 groups of 4 hexadecimal digits.
pub struct RecoveryKey(Zeroizing<[u8; 32]>);

impl RecoveryKey {
    /// A fresh key.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut k[..]);
        Self(k)
    }

    /// The key as the user writes it down.
    pub fn to_text(&self) -> Zeroizing<String> {
        let hex = Zeroizing::new(hex::encode(&self.0[..]));
        let groups: Vec<&str> = (0..16).map(|i| &hex[i * 4..i * 4 + 4]).collect();
        Zeroizing::new(groups.join(" "))
    }

    /// Reads a key as written down (spaces and dashes ignored, any case).
    pub fn parse(s: &str) -> Result<Self, ClientError> {
        let digits: Zeroizing<String> = Zeroizing::new(
            s.chars()
                .filter(|c| !c.is_whitespace() && *c != '-')
                .collect(),
        );
        let mut k = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(digits.as_bytes(), &mut k[..]).map_err(|_| {
            ClientError::Invalid("a recovery key is 64 hexadecimal digits (16 groups of 4)".into())
        })?;
        Ok(Self(k))
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        let mut key = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(None, &self.0[..])
            .expand(b"sotto-backup-v1 key", &mut key[..])
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        ChaCha20Poly1305::new(Key::from_slice(&key[..]))
    }
}

impl std::fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryKey(..)")
    }
}

/// What a backup holds, counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackupSummary {
    /// Conversations.
    pub conversations: usize,
    /// Messages (tombstones of deleted ones included).
    pub messages: usize,
    /// Contacts.
    pub contacts: usize,
}

fn seal(
    snapshot: &Snapshot,
    key: &RecoveryKey,
    rng: &mut impl RngCore,
) -> Result<Vec<u8>, ClientError> {
    let plain = Zeroizing::new(
        postcard::to_stdvec(snapshot).map_err(|e| ClientError::Store(e.to_string()))?,
    );
    let mut nonce = [0u8; 12];
    rng.fill_bytes(&mut nonce);
    let sealed = key
        .cipher()
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &plain,
                aad: MAGIC,
            },
        )
        .map_err(|_| ClientError::Store("backup encryption failed".into()))?;
    let mut out = Vec::with_capacity(MAGIC.len() + nonce.len() + sealed.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

fn open(bytes: &[u8], key: &RecoveryKey) -> Result<Snapshot, ClientError> {
    let not_backup = || ClientError::Invalid("not a Sotto backup (or of a later version)".into());
    let rest = bytes.strip_prefix(&MAGIC[..]).ok_or_else(not_backup)?;
    if rest.len() < 12 {
        return Err(not_backup());
    }
    let (nonce, sealed) = rest.split_at(12);
    let plain = Zeroizing::new(
        key.cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: MAGIC,
                },
            )
            .map_err(|_| {
                ClientError::Invalid(
                    "the backup does not open with this recovery key (a wrong key, or a damaged file)"
                        .into(),
                )
            })?,
    );
    let s: Snapshot = postcard::from_bytes(&plain)
        .map_err(|_| ClientError::Invalid("the backup's contents are malformed".into()))?;
    if s.version != SNAPSHOT_VERSION || s.tables.len() != TABLES.len() {
        return Err(not_backup());
    }
    Ok(s)
}

fn cell(v: Value) -> Cell {
    match v {
        Value::Null => Cell::Null,
        Value::Integer(i) => Cell::Int(i),
        // No column of a backed-up table holds a float.
        Value::Real(r) => Cell::Text(r.to_string()),
        Value::Text(t) => Cell::Text(t),
        Value::Blob(b) => Cell::Blob(b),
    }
}

fn value(c: &Cell) -> rusqlite::types::ToSqlOutput<'_> {
    use rusqlite::types::{ToSqlOutput, ValueRef};
    ToSqlOutput::Borrowed(match c {
        Cell::Null => ValueRef::Null,
        Cell::Int(i) => ValueRef::Integer(*i),
        Cell::Text(t) => ValueRef::Text(t.as_bytes()),
        Cell::Blob(b) => ValueRef::Blob(b),
    })
}

/// Reads what a backup of this profile holds, in one transaction.
fn snapshot(p: &mut Profile, now_ms: u64) -> Result<Snapshot, ClientError> {
    p.store.transaction(|_, c| {
        let mut tables = Vec::with_capacity(TABLES.len());
        for (table, columns, filter) in TABLES {
            let n = columns.split(',').count();
            let mut st = c.prepare(&format!("SELECT {columns} FROM {table} {filter}"))?;
            let rows = st
                .query_map([], |r| {
                    (0..n)
                        .map(|i| r.get::<_, Value>(i).map(cell))
                        .collect::<Result<Vec<Cell>, _>>()
                })?
                .collect::<Result<Vec<_>, _>>()?;
            tables.push(rows);
        }
        let mut settings = Vec::new();
        for k in SETTINGS {
            let v: Option<Vec<u8>> = rusqlite::OptionalExtension::optional(c.query_row(
                "SELECT v FROM profile WHERE k = ?1",
                [k],
                |r| r.get(0),
            ))?;
            if let Some(v) = v {
                settings.push(((*k).to_owned(), v));
            }
        }
        Ok(Snapshot {
            version: SNAPSHOT_VERSION,
            created_ms: now_ms,
            account_secret: *p.id.account.secret(),
            handle: p.id.handle.to_string(),
            link: p.id.link.to_string(),
            suite: p.id.suite.name().to_owned(),
            settings,
            tables,
        })
    })
}

/// Writes `bytes` to `path` as a new file only the user can read, whole or
/// not at all: a temporary file beside it, synced, then linked to `path`
/// (which fails if anything is there: nothing is overwritten).
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), ClientError> {
    let failed = |e: std::io::Error| {
        ClientError::Invalid(format!(
            "cannot write the backup to {}: {e}",
            path.display()
        ))
    };
    let name = path
        .file_name()
        .ok_or_else(|| ClientError::Invalid(format!("{} is not a file name", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{:016x}.partial", rand::random::<u64>()));
    let tmp = path.with_file_name(tmp_name);
    let written = crate::store::shred::new_private_file(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            // The new name is durable once its directory is synced.
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(failed)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(ClientError::Invalid(
            format!("{} exists: not overwriting it", path.display()),
        )),
        Err(e) => Err(failed(e)),
    }
}

impl Profile {
    /// Writes an encrypted backup of this profile to `path` (a new file)
    /// and returns the recovery key it is sealed under.
    pub(crate) fn create_backup(
        &mut self,
        path: &Path,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(RecoveryKey, BackupSummary), ClientError> {
        let now = self.now_ms();
        let snap = snapshot(self, now)?;
        let key = RecoveryKey::generate(rng);
        let bytes = seal(&snap, &key, rng)?;
        write_new(path, &bytes)?;
        Ok((key, snap.summary()))
    }
}

/// Reads a backup file and opens it with `key`.
fn read(path: &Path, key: &RecoveryKey) -> Result<Snapshot, ClientError> {
    let cannot =
        |e: std::io::Error| ClientError::Invalid(format!("cannot read {}: {e}", path.display()));
    let len = std::fs::metadata(path).map_err(cannot)?.len();
    if len > MAX_BACKUP_BYTES {
        return Err(ClientError::Invalid(format!(
            "{} is larger than a backup can be",
            path.display()
        )));
    }
    let bytes = Zeroizing::new(std::fs::read(path).map_err(cannot)?);
    open(&bytes, key)
}

/// What a restore brought back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Restored {
    /// What the backup held.
    pub summary: BackupSummary,
    /// Conversations this device joined again.
    pub rejoined: usize,
    /// Conversations it could not join now (tried again by later
    /// commands). The others, where no device of the account is left, are
    /// shown as removed: a member must add this account again.
    pub waiting: usize,
}

/// Restores the backup at `path` into the new profile at `dir` (the body
/// of [`Client::restore_backup`](crate::Client::restore_backup)).
pub(crate) async fn restore(
    dir: &Path,
    passphrase: &str,
    path: &Path,
    key: &RecoveryKey,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(Profile, Restored), ClientError> {
    let snap = read(path, key)?;
    let mut store = Store::open(dir, passphrase)?;
    if let Some(id) = store.identity()? {
        return Err(ClientError::AlreadyRegistered(id.handle.to_string()));
    }
    let account = AccountKey::from_secret(&snap.account_secret);
    let handle = sotto_proto::Handle::new(&snap.handle)
        .map_err(|_| ClientError::Invalid("the backup's handle is invalid".into()))?;
    let link = ServerLink::parse(&snap.link)?;
    let suite = Suite::from_name(&snap.suite).unwrap_or_default();
    let mut seed = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut seed[..]);
    let id = Identity {
        account,
        device: DeviceKey::from_secret(&seed),
        handle,
        link,
        suite,
        registered: false,
    };
    // Keys are on disk (encrypted) before the server hears of them.
    store.save_identity(&id)?;
    let (mut conn, session, list) = match sign_in(&id).await {
        Ok(done) => done,
        Err(e) => {
            store.forget_unconfirmed()?;
            return Err(e);
        }
    };
    let id = Identity {
        handle: session.handle.clone(),
        registered: true,
        ..id
    };
    store.save_identity(&id)?;
    store.transaction(|_, c| {
        for ((table, columns, _), rows) in TABLES.iter().zip(&snap.tables) {
            let n = columns.split(',').count();
            let marks = vec!["?"; n].join(", ");
            let mut st = c.prepare(&format!(
                "INSERT OR IGNORE INTO {table} ({columns}) VALUES ({marks})"
            ))?;
            for row in rows {
                if row.len() != n {
                    return Err(ClientError::Invalid(
                        "the backup's contents are malformed".into(),
                    ));
                }
                st.execute(rusqlite::params_from_iter(row.iter().map(value)))?;
            }
        }
        // Nothing restored is news.
        c.execute("UPDATE messages SET shown = 1", [])?;
        for (k, v) in &snap.settings {
            if SETTINGS.contains(&k.as_str()) {
                c.execute(
                    "INSERT OR REPLACE INTO profile (k, v) VALUES (?1, ?2)",
                    rusqlite::params![k, v],
                )?;
            }
        }
        rows::put_list(c, &list)?;
        // Every conversation still open is one to join.
        let mut st = c.prepare("SELECT group_id FROM conversations WHERE state = 'active'")?;
        let groups = st
            .query_map([], |r| r.get::<_, Vec<u8>>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        for g in groups {
            if let Ok(g) = <[u8; 32]>::try_from(g.as_slice()) {
                rows::note_out_of_sync(c, &sotto_proto::GroupId(g))?;
            }
        }
        Ok(())
    })?;
    let summary = snap.summary();
    drop(snap);
    let mut p = Profile::new(store, id);
    p.replenish(&mut conn, session.key_packages, session.has_last_resort)
        .await?;
    p.rejoin_lost(&mut conn).await?;
    conn.close().await;
    let (rejoined, waiting) = p.store.transaction(|_, c| {
        let n = |q: &str| -> Result<usize, ClientError> {
            let n: i64 = c.query_row(q, [], |r| r.get(0))?;
            Ok(usize::try_from(n).unwrap_or(0))
        };
        Ok((
            n("SELECT count(*) FROM conversations WHERE state = 'active' \
               AND group_id NOT IN (SELECT group_id FROM rejoins)")?,
            n("SELECT count(*) FROM rejoins")?,
        ))
    })?;
    Ok((
        p,
        Restored {
            summary,
            rejoined,
            waiting,
        },
    ))
}

/// Signs the new device into its account (the account's current list and
/// this device, one version on) and logs in as it.
async fn sign_in(
    id: &Identity,
) -> Result<(Connection, sotto_proto::Session, SignedDeviceList), ClientError> {
    let mut conn = Connection::connect(&id.link).await?;
    let challenge = conn.hello().challenge;
    let account = id.account.id();
    let t = sotto_proto::account_proof_transcript(&challenge, &account);
    let (current, live) = match conn
        .request(Request::AccountDeviceList {
            account,
            signature: id.account.sign(&t),
        })
        .await?
    {
        Response::AccountDevices { list, live } => (list, live),
        other => return Err(unexpected(&other)),
    };
    if current.account != account || !sotto_rules::signed::device_list_is_signed(&current) {
        return Err(ClientError::Invalid(
            "the server handed out a device list the account did not sign".into(),
        ));
    }
    // The account's devices the server still has (a wiped or revoked one
    // stays gone), and this one.
    let mut devices: Vec<_> = current
        .devices
        .iter()
        .copied()
        .filter(|d| live.contains(d))
        .collect();
    if devices.len() >= MAX_DEVICES_PER_ACCOUNT {
        return Err(ClientError::Invalid(format!(
            "the account has {} devices, the most it may have: revoke one from another device first",
            devices.len()
        )));
    }
    devices.push(id.device.id());
    let list = id.account.sign_device_list(current.version + 1, devices);
    let t = sotto_proto::restore_transcript(&challenge, &account, &id.device.id());
    let req = RestoreRequest {
        version: PROTOCOL_VERSION,
        device: id.device.id(),
        device_list: list.clone(),
        device_signature: id.device.sign(&t),
    };
    match conn.request(Request::Restore(Box::new(req))).await? {
        Response::LoggedIn(s) if s.account == account && s.device == id.device.id() => {
            Ok((conn, s, list))
        }
        other => Err(unexpected(&other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap() -> Snapshot {
        Snapshot {
            version: SNAPSHOT_VERSION,
            created_ms: 7,
            account_secret: [4; 32],
            handle: "alice".into(),
            link: "sotto://127.0.0.1:1#fp=00".into(),
            suite: "xwing".into(),
            settings: vec![("read_receipts".into(), b"0".to_vec())],
            tables: TABLES
                .iter()
                .map(|_| vec![vec![Cell::Text("the secret plan".into()), Cell::Int(3)]])
                .collect(),
        }
    }

    #[test]
    fn a_recovery_key_reads_back_as_written_and_nothing_else_passes() {
        let k = RecoveryKey::generate(&mut rand::rngs::OsRng);
        let text = k.to_text();
        assert_eq!(text.split(' ').count(), 16);
        let back = RecoveryKey::parse(&text.to_uppercase().replace(' ', "-")).unwrap();
        assert_eq!(back.0[..], k.0[..]);
        assert!(!format!("{k:?}").contains(&text[..4]));
        for bad in [
            "",
            "abcd",
            &text[..text.len() - 1],
            &format!("{} zz", &*text),
        ] {
            assert!(RecoveryKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_backup_opens_with_its_key_only_and_hides_its_contents() {
        let key = RecoveryKey::generate(&mut rand::rngs::OsRng);
        let bytes = seal(&snap(), &key, &mut rand::rngs::OsRng).unwrap();
        assert!(bytes.starts_with(MAGIC));
        let plain = postcard::to_stdvec(&snap()).unwrap();
        assert!(!bytes.windows(15).any(|w| w == b"the secret plan"));
        assert!(bytes.len() < plain.len() + MAGIC.len() + 12 + 16 + 1);
        let back = open(&bytes, &key).unwrap();
        assert_eq!(back.account_secret, [4; 32]);
        assert_eq!(back.handle, "alice");
        assert_eq!(back.tables.len(), TABLES.len());
        // Another key, a flipped bit anywhere, a cut: refused, clearly.
        let other = RecoveryKey::generate(&mut rand::rngs::OsRng);
        let e = open(&bytes, &other).err().unwrap().to_string();
        assert!(e.contains("does not open with this recovery key"), "{e}");
        for i in [MAGIC.len() + 1, MAGIC.len() + 20, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(open(&bad, &key).is_err(), "bit {i}");
        }
        let mut wrong_version = bytes.clone();
        wrong_version[MAGIC.len() - 1] = 2;
        let e = open(&wrong_version, &key).err().unwrap().to_string();
        assert!(e.contains("not a Sotto backup"), "{e}");
        assert!(open(&bytes[..20], &key).is_err());
        assert!(open(b"", &key).is_err());
    }
}
