//! The [`Store`] for several server nodes: PostgreSQL (or a compatible
//! database) through `sqlx`, with the versioned migrations in `migrations/`
//! applied at start (under the migrator's advisory lock, so nodes starting
//! together apply them once).
//!
//! Concurrency: every operation is one transaction at READ COMMITTED, except
//! sends to groups and acks, which are group-committed: the ones that
//! arrive while a batch is written share the next transaction (`batched`).
//! Explicit row locks where order matters, each kind taken in one order
//! (groups, then send ids, then mailbox heads):
//! - a commit locks its group's row, so one commit wins per epoch; a send
//!   takes a share lock on it, so it is ordered before or after a commit,
//!   never across one;
//! - every mailbox write locks the recipient's `mailbox_heads` row, so a
//!   device's sequence numbers become visible in the order they were handed
//!   out (a delivery cursor never skips a late-committing earlier entry).
//!   Acks and expiry count what leaves a mailbox in `mailbox_tails`
//!   instead, which sends read without locking, so an ack never waits for a
//!   send nor a send for an ack (migration 0007);
//! - deadlocks and serialization failures are retried a few times.
//!
//! A transaction that returned is durable (PostgreSQL's `synchronous_commit`
//! is the operator's to keep on); callers acknowledge only after that.

use std::sync::Arc;
use std::time::Duration;

use sotto_proto::{
    AccountId, Blob, BlobId, DeviceId, Envelope, EnvelopeKind, GroupId, Handle, MessageId,
    SignedDeviceList, SignedKillRecord,
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{PgConnection, Row};

use super::{
    BlobState, Claimed, CommitError, CommitOutcome, CommitWrite, DeviceListChange, DeviceListError,
    DeviceRecord, DirectoryTurn, DirectoryWrite, GroupState, Guesses, KeyPackageStock, MailboxCap,
    MailboxEntry, NewAccount, Outgoing, Posted, ProposalWrite, RegisterError, SendError,
    SendOutcome, Stats, Store, StoreError, StoredKeyPackage, WipeTarget, seen_key,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Attempts of a transaction that hit a deadlock or serialization failure.
const ATTEMPTS: u32 = 8;

/// Lock id that lets one node at a time purge expired data.
const PURGE_LOCK: i64 = 0x5077_0001;

/// Lock id of the key directory's publishing turn (`directory_turn`).
const DIRECTORY_LOCK: i64 = 0x5077_0002;

/// The PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Acks waiting for their group commit (`batched`).
    acks: Arc<Gather<QueuedAck, Result<(), StoreError>>>,
    /// Sends to groups waiting for theirs.
    sends: Arc<Gather<QueuedSend, Result<SendOutcome, SendError>>>,
}

/// A failure inside a transaction: the operation's own refusal, or the database's.
enum Fail<E> {
    Refused(E),
    Db(sqlx::Error),
}

impl<E> From<sqlx::Error> for Fail<E> {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e)
    }
}

impl<E> From<StoreError> for Fail<E>
where
    E: From<StoreError>,
{
    fn from(e: StoreError) -> Self {
        Self::Refused(E::from(e))
    }
}

type TxResult<T, E> = Result<T, Fail<E>>;

fn refuse<T, E>(e: E) -> TxResult<T, E> {
    Err(Fail::Refused(e))
}

/// Whether running the transaction again may succeed.
fn retryable(e: &sqlx::Error) -> bool {
    matches!(
        e.as_database_error().and_then(|d| d.code()).as_deref(),
        Some("40001" | "40P01")
    )
}

/// Maps a database failure: lost connections, a database that is down,
/// starting, out of disk or of connections are temporary.
pub(crate) fn map_err(e: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    match &e {
        // A protocol error is a connection cut mid-exchange (a database
        // closing during its shutdown answers an SSL request with nothing).
        E::Io(_)
        | E::Tls(_)
        | E::Protocol(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        E::Database(d) => {
            let code = d.code().unwrap_or_default();
            // 08: connection exception, 53: insufficient resources (disk full,
            // too many connections), 57P: operator intervention (shutdown),
            // 40: transaction rollback that outlived the retries.
            if code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || code.starts_with("40")
            {
                StoreError::Unavailable(e.to_string())
            } else {
                StoreError::Internal(e.to_string())
            }
        }
        _ => StoreError::Internal(e.to_string()),
    }
}

/// Runs `$body` (an async block returning `TxResult`) until it succeeds or
/// fails for a reason other than a deadlock or serialization failure.
macro_rules! transaction {
    ($body:expr) => {{
        let mut attempt = 0;
        loop {
            attempt += 1;
            match $body.await {
                Ok(v) => break Ok(v),
                Err(Fail::Refused(e)) => break Err(e),
                Err(Fail::Db(e)) if attempt < ATTEMPTS && retryable(&e) => {
                    tokio::time::sleep(Duration::from_millis(u64::from(attempt) * 5)).await;
                }
                Err(Fail::Db(e)) => break Err(map_err(e).into()),
            }
        }
    }};
}

/// The end of a statement that counts entries leaving mailboxes (acked or
/// expired) into `mailbox_tails`; its CTE `n` holds `(device, k, bytes)`:
/// how many entries left each mailbox and their payloads' size. Sends never
/// lock these rows (migration 0007), so acks wait for no send.
macro_rules! count_removed {
    () => {
        "INSERT INTO mailbox_tails (device, removed, removed_bytes) \
         SELECT device, k, bytes FROM n ORDER BY device \
         ON CONFLICT (device) DO UPDATE SET removed = mailbox_tails.removed + excluded.removed, \
         removed_bytes = mailbox_tails.removed_bytes + excluded.removed_bytes"
    };
}

mod batched;
#[cfg(test)]
mod tests;

use batched::{Gather, QueuedAck, QueuedSend, ack_batch, release_messages, send_batch};

fn kind_to_i16(k: EnvelopeKind) -> i16 {
    match k {
        EnvelopeKind::Application => 0,
        EnvelopeKind::Commit => 1,
        EnvelopeKind::Welcome => 2,
        EnvelopeKind::Device => 3,
        EnvelopeKind::Wipe => 4,
        EnvelopeKind::Proposal => 5,
    }
}

fn kind_from_i16(k: i16) -> Result<EnvelopeKind, StoreError> {
    Ok(match k {
        0 => EnvelopeKind::Application,
        1 => EnvelopeKind::Commit,
        2 => EnvelopeKind::Welcome,
        3 => EnvelopeKind::Device,
        4 => EnvelopeKind::Wipe,
        5 => EnvelopeKind::Proposal,
        _ => return Err(StoreError::Internal(format!("unknown envelope kind {k}"))),
    })
}

fn arr<const N: usize>(v: Vec<u8>) -> Result<[u8; N], StoreError> {
    v.try_into()
        .map_err(|_| StoreError::Internal(format!("stored id is not {N} bytes")))
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn ids(devices: &[DeviceId]) -> Vec<Vec<u8>> {
    devices.iter().map(|d| d.0.to_vec()).collect()
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(v).map_err(|e| StoreError::Internal(e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(d: Option<Vec<u8>>) -> Result<Option<T>, StoreError> {
    d.map(|d| postcard::from_bytes(&d).map_err(|e| StoreError::Internal(e.to_string())))
        .transpose()
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db?...`), with at most
    /// `max_connections` pooled connections, and applies pending migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let opts: PgConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| StoreError::Internal(format!("bad PostgreSQL URL: {e}")))?;
        Self::connect_with(opts, max_connections).await
    }

    /// As [`PgStore::connect`], from parsed options.
    pub async fn connect_with(
        opts: PgConnectOptions,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts)
            .await
            .map_err(map_err)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrations failed: {e}")))?;
        Ok(Self {
            pool,
            acks: Arc::default(),
            sends: Arc::default(),
        })
    }

    /// One of an account's versioned records, outside a transaction.
    async fn read_record<T: serde::de::DeserializeOwned>(
        &self,
        record: Record,
        account: &AccountId,
    ) -> Result<Option<T>, StoreError> {
        let mut c = self.pool.acquire().await.map_err(map_err)?;
        decode(
            account_record(&mut c, record, account)
                .await
                .map_err(map_err)?,
        )
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The mailbox entry numbered `seq` whose message is in `r`'s columns
/// from `at` on: group, sender, message id, kind, server time, payload.
fn entry(seq: i64, r: &sqlx::postgres::PgRow, at: usize) -> Result<MailboxEntry, StoreError> {
    let get = |r: &sqlx::postgres::PgRow| -> Result<_, sqlx::Error> {
        Ok((
            r.try_get::<Vec<u8>, _>(at)?,
            r.try_get::<Vec<u8>, _>(at + 1)?,
            r.try_get::<Vec<u8>, _>(at + 2)?,
            r.try_get::<i16, _>(at + 3)?,
            r.try_get::<i64, _>(at + 4)?,
            r.try_get::<Vec<u8>, _>(at + 5)?,
        ))
    };
    let (group, sender, msg_id, kind, server_ms, payload) = get(r).map_err(map_err)?;
    Ok(MailboxEntry {
        seq: unsigned(seq),
        envelope: Envelope {
            group: GroupId(arr(group)?),
            sender: DeviceId(arr(sender)?),
            msg_id: MessageId(arr(msg_id)?),
            kind: kind_from_i16(kind)?,
            server_time_ms: unsigned(server_ms),
            payload: Blob(payload),
        },
    })
}

/// Up to `limit` unexpired mailbox entries of `device` after `after`.
async fn mailbox_after(
    c: &mut PgConnection,
    device: &DeviceId,
    after: u64,
    limit: u32,
    now_ms: u64,
) -> Result<Vec<MailboxEntry>, StoreError> {
    let rows = sqlx::query(
        "SELECT b.seq, m.group_id, m.sender, m.msg_id, m.kind, m.server_ms, m.payload \
         FROM mailbox b JOIN messages m ON m.id = b.message \
         WHERE b.device = $1 AND b.seq > $2 AND m.expires_ms > $4 ORDER BY b.seq LIMIT $3",
    )
    .bind(&device.0[..])
    .bind(ms(after))
    .bind(i64::from(limit))
    .bind(ms(now_ms))
    .fetch_all(&mut *c)
    .await
    .map_err(map_err)?;
    rows.iter()
        .map(|r| entry(r.try_get(0).map_err(map_err)?, r, 1))
        .collect()
}

async fn members(c: &mut PgConnection, group: &GroupId) -> Result<Vec<DeviceId>, sqlx::Error> {
    let rows: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT device FROM group_members WHERE group_id = $1")
            .bind(&group.0[..])
            .fetch_all(&mut *c)
            .await?;
    Ok(rows
        .into_iter()
        .filter_map(|d| arr(d).ok().map(DeviceId))
        .collect())
}

async fn live_devices(c: &mut PgConnection, account: &[u8]) -> Result<Vec<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT device FROM devices WHERE account = $1 AND NOT revoked ORDER BY device",
    )
    .bind(account)
    .fetch_all(&mut *c)
    .await
}

/// Inserts a message and a mailbox entry for each recipient, under each
/// recipient's head lock. `None` if a mailbox would go over `cap` (the
/// caller then drops the transaction, so nothing changes).
async fn insert_message(
    c: &mut PgConnection,
    m: &Outgoing,
    recipients: &[DeviceId],
    cap: MailboxCap,
) -> Result<Option<Vec<Posted>>, sqlx::Error> {
    let mut to = ids(recipients);
    to.sort();
    to.dedup();
    if to.is_empty() {
        return Ok(Some(Vec::new()));
    }
    let size = i64::try_from(m.payload.len()).unwrap_or(i64::MAX);
    // `remaining` is written for the schema's sake only: nothing counts it
    // down or reads it any more (`release_messages`).
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO messages (group_id, sender, msg_id, kind, server_ms, expires_ms, remaining, payload) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(&m.group.0[..])
    .bind(&m.stored_sender().0[..])
    .bind(&m.msg_id.0[..])
    .bind(kind_to_i16(m.kind))
    .bind(ms(m.now_ms))
    .bind(ms(m.expires_ms))
    .bind(i32::try_from(to.len()).unwrap_or(i32::MAX))
    .bind(&m.payload)
    .fetch_one(&mut *c)
    .await?;
    // Sorted input: heads are locked in one order by every writer. What
    // waits is what was posted less what left (`mailbox_tails`, read
    // without a lock: see migration 0007).
    let heads = sqlx::query(
        "WITH h AS (INSERT INTO mailbox_heads (device, last_seq, posted_bytes) \
         SELECT d, 1, $2 FROM UNNEST($1::bytea[]) AS t(d) ORDER BY d \
         ON CONFLICT (device) DO UPDATE SET last_seq = mailbox_heads.last_seq + 1, \
         posted_bytes = mailbox_heads.posted_bytes + excluded.posted_bytes \
         RETURNING device, last_seq, posted_bytes) \
         SELECT h.device, h.last_seq, h.last_seq - coalesce(t.removed, 0), \
         h.posted_bytes - coalesce(t.removed_bytes, 0) \
         FROM h LEFT JOIN mailbox_tails t ON t.device = h.device",
    )
    .bind(&to)
    .bind(size)
    .fetch_all(&mut *c)
    .await?;
    let (max_n, max_bytes) = (ms(cap.messages), ms(cap.bytes));
    let mut devices = Vec::with_capacity(heads.len());
    let mut seqs = Vec::with_capacity(heads.len());
    let mut posted = Vec::with_capacity(heads.len());
    for h in heads {
        if h.try_get::<i64, _>(2)? > max_n || h.try_get::<i64, _>(3)? > max_bytes {
            return Ok(None);
        }
        let device = h.try_get::<Vec<u8>, _>(0)?;
        let seq = h.try_get::<i64, _>(1)?;
        // A mailbox's sequence numbers follow one another (its head row
        // counts them): the entry before this one is `seq - 1`.
        posted.push(Posted {
            device: DeviceId(device.as_slice().try_into().map_err(|_| {
                sqlx::Error::Protocol("a mailbox head's device is not 32 bytes".into())
            })?),
            seq: unsigned(seq),
            after: unsigned(seq - 1),
        });
        devices.push(device);
        seqs.push(seq);
    }
    sqlx::query(
        "INSERT INTO mailbox (device, seq, message) \
         SELECT d, s, $3 FROM UNNEST($1::bytea[], $2::int8[]) AS t(d, s)",
    )
    .bind(&devices)
    .bind(&seqs)
    .bind(id)
    .execute(&mut *c)
    .await?;
    Ok(Some(posted))
}

/// Records a send's dedup key; `false` if it was seen before.
async fn first_send(
    c: &mut PgConnection,
    key: &[u8],
    expires_ms: u64,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "INSERT INTO seen_sends (key, expires_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(key)
    .bind(ms(expires_ms))
    .execute(&mut *c)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Deletes a device's whole mailbox, KeyPackages and group memberships.
async fn drop_device_data(c: &mut PgConnection, d: &[u8]) -> Result<(), sqlx::Error> {
    let held: Vec<i64> =
        sqlx::query_scalar("DELETE FROM mailbox WHERE device = $1 RETURNING message")
            .bind(d)
            .fetch_all(&mut *c)
            .await?;
    release_messages(c, held).await?;
    for sql in [
        "DELETE FROM mailbox_heads WHERE device = $1",
        "DELETE FROM mailbox_tails WHERE device = $1",
        "DELETE FROM key_packages WHERE device = $1",
        "DELETE FROM last_resort_key_packages WHERE device = $1",
        "DELETE FROM group_members WHERE device = $1",
    ] {
        sqlx::query(sql).bind(d).execute(&mut *c).await?;
    }
    Ok(())
}

async fn take_key_package(c: &mut PgConnection, d: &[u8]) -> Result<Option<Claimed>, sqlx::Error> {
    let Ok(device) = arr(d.to_vec()).map(DeviceId) else {
        return Ok(None);
    };
    let one: Option<Vec<u8>> = sqlx::query_scalar(
        "DELETE FROM key_packages WHERE hash = \
         (SELECT hash FROM key_packages WHERE device = $1 LIMIT 1 FOR UPDATE SKIP LOCKED) \
         RETURNING data",
    )
    .bind(d)
    .fetch_optional(&mut *c)
    .await?;
    if let Some(data) = one {
        return Ok(Some(Claimed {
            device,
            data,
            last_resort: false,
        }));
    }
    let lr: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT data FROM last_resort_key_packages WHERE device = $1")
            .bind(d)
            .fetch_optional(&mut *c)
            .await?;
    Ok(lr.map(|data| Claimed {
        device,
        data,
        last_resort: true,
    }))
}

async fn stock(c: &mut PgConnection, device: &DeviceId) -> Result<KeyPackageStock, sqlx::Error> {
    let row = sqlx::query(
        "SELECT (SELECT count(*) FROM key_packages WHERE device = $1), \
         EXISTS (SELECT 1 FROM last_resort_key_packages WHERE device = $1)",
    )
    .bind(&device.0[..])
    .fetch_one(&mut *c)
    .await?;
    Ok(KeyPackageStock {
        one_time: u32::try_from(row.try_get::<i64, _>(0)?).unwrap_or(u32::MAX),
        last_resort: row.try_get(1)?,
    })
}

/// The per-account, versioned records.
#[derive(Clone, Copy)]
enum Record {
    DeviceList,
    Kill,
}

impl Record {
    fn select(self) -> &'static str {
        match self {
            Self::DeviceList => "SELECT data FROM device_lists WHERE account = $1",
            Self::Kill => "SELECT data FROM kill_records WHERE account = $1",
        }
    }

    fn upsert(self) -> &'static str {
        match self {
            Self::DeviceList => {
                "INSERT INTO device_lists (account, version, data) VALUES ($1, $2, $3) \
                 ON CONFLICT (account) DO UPDATE SET version = excluded.version, data = excluded.data"
            }
            Self::Kill => {
                "INSERT INTO kill_records (account, version, data) VALUES ($1, $2, $3) \
                 ON CONFLICT (account) DO UPDATE SET version = excluded.version, data = excluded.data"
            }
        }
    }
}

async fn account_record(
    c: &mut PgConnection,
    record: Record,
    account: &AccountId,
) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar(record.select())
        .bind(&account.0[..])
        .fetch_optional(&mut *c)
        .await
}

async fn put_account_record(
    c: &mut PgConnection,
    record: Record,
    account: &AccountId,
    version: u64,
    data: Vec<u8>,
) -> Result<(), sqlx::Error> {
    sqlx::query(record.upsert())
        .bind(&account.0[..])
        .bind(ms(version))
        .bind(data)
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// Serializes changes to one account's records.
async fn lock_account(c: &mut PgConnection, account: &AccountId) -> Result<bool, sqlx::Error> {
    Ok(
        sqlx::query("SELECT 1 FROM accounts WHERE account = $1 FOR UPDATE")
            .bind(&account.0[..])
            .fetch_optional(&mut *c)
            .await?
            .is_some(),
    )
}

fn count(row: &sqlx::postgres::PgRow, i: usize) -> Result<u64, sqlx::Error> {
    Ok(unsigned(row.try_get::<i64, _>(i)?))
}

impl Store for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM accounts), \
             (SELECT count(*) FROM devices WHERE NOT revoked), \
             (SELECT count(*) FROM groups), \
             (SELECT coalesce(sum(last_seq), 0)::int8 FROM mailbox_heads) \
             - (SELECT coalesce(sum(removed), 0)::int8 FROM mailbox_tails), \
             (SELECT count(*) FROM key_packages)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        (|| {
            Ok(Stats {
                accounts: count(&row, 0)?,
                live_devices: count(&row, 1)?,
                groups: count(&row, 2)?,
                pending_deliveries: count(&row, 3)?,
                key_packages: count(&row, 4)?,
            })
        })()
        .map_err(map_err)
    }

    async fn revoke_device(&self, device: DeviceId) -> Result<bool, StoreError> {
        transaction!(async {
            let mut tx = self.pool.begin().await?;
            let n =
                sqlx::query("UPDATE devices SET revoked = TRUE WHERE device = $1 AND NOT revoked")
                    .bind(&device.0[..])
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            if n == 0 {
                return TxResult::<bool, StoreError>::Ok(false);
            }
            drop_device_data(&mut tx, &device.0).await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    async fn add_invites(&self, hashes: Vec<[u8; 32]>, expires_ms: u64) -> Result<(), StoreError> {
        let hashes: Vec<Vec<u8>> = hashes.iter().map(|h| h.to_vec()).collect();
        transaction!(async {
            sqlx::query(
                "INSERT INTO invites (hash, expires_ms) SELECT h, $2 FROM UNNEST($1::bytea[]) AS t(h) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&hashes)
            .bind(ms(expires_ms))
            .execute(&self.pool)
            .await?;
            TxResult::<(), StoreError>::Ok(())
        })
    }

    async fn register(&self, a: NewAccount) -> Result<(), RegisterError> {
        let list = encode(&a.device_list)?;
        transaction!(async {
            let mut tx = self.pool.begin().await?;
            if let Some(h) = a.invite_hash {
                let n = sqlx::query("DELETE FROM invites WHERE hash = $1 AND expires_ms > $2")
                    .bind(&h[..])
                    .bind(ms(a.now_ms))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if n != 1 {
                    return refuse(RegisterError::InvalidInvite);
                }
            }
            let taken = sqlx::query("SELECT 1 FROM accounts WHERE handle = $1")
                .bind(a.handle.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            if taken.is_some() {
                return refuse(RegisterError::HandleTaken);
            }
            let exists = sqlx::query(
                "SELECT 1 FROM accounts WHERE account = $1 UNION SELECT 1 FROM devices WHERE device = $2",
            )
            .bind(&a.account.0[..])
            .bind(&a.device.0[..])
            .fetch_optional(&mut *tx)
            .await?;
            if exists.is_some() {
                return refuse(RegisterError::AlreadyRegistered);
            }
            let inserted = sqlx::query(
                "INSERT INTO accounts (account, handle, created_ms) VALUES ($1, $2, $3)",
            )
            .bind(&a.account.0[..])
            .bind(a.handle.as_str())
            .bind(ms(a.now_ms))
            .execute(&mut *tx)
            .await;
            if let Err(e) = inserted {
                // Another node registered the same handle or key a moment ago.
                return match e.as_database_error().map(|d| d.is_unique_violation()) {
                    Some(true)
                        if e.as_database_error().and_then(|d| d.constraint())
                            == Some("accounts_handle_key") =>
                    {
                        refuse(RegisterError::HandleTaken)
                    }
                    Some(true) => refuse(RegisterError::AlreadyRegistered),
                    _ => Err(Fail::Db(e)),
                };
            }
            let dev = sqlx::query(
                "INSERT INTO devices (device, account, created_ms) VALUES ($1, $2, $3)",
            )
            .bind(&a.device.0[..])
            .bind(&a.account.0[..])
            .bind(ms(a.now_ms))
            .execute(&mut *tx)
            .await;
            if let Err(e) = dev {
                if e.as_database_error()
                    .is_some_and(|d| d.is_unique_violation())
                {
                    return refuse(RegisterError::AlreadyRegistered);
                }
                return Err(Fail::Db(e));
            }
            put_account_record(
                &mut tx,
                Record::DeviceList,
                &a.account,
                a.device_list.version,
                list.clone(),
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    async fn device(&self, device: DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT d.account, a.handle, d.revoked FROM devices d \
             JOIN accounts a ON a.account = d.account WHERE d.device = $1",
        )
        .bind(&device.0[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let account: Vec<u8> = row.try_get(0).map_err(map_err)?;
        let handle: String = row.try_get(1).map_err(map_err)?;
        Ok(Some(DeviceRecord {
            account: AccountId(arr(account)?),
            handle: Handle::new(&handle)
                .map_err(|_| StoreError::Internal("stored handle invalid".into()))?,
            revoked: row.try_get(2).map_err(map_err)?,
        }))
    }

    async fn upload_key_packages(
        &self,
        device: DeviceId,
        one_time: Vec<StoredKeyPackage>,
        last_resort: Option<StoredKeyPackage>,
        cap: u32,
    ) -> Result<KeyPackageStock, StoreError> {
        transaction!(async {
            let mut tx = self.pool.begin().await?;
            // One upload per device at a time, so the cap holds.
            sqlx::query("SELECT 1 FROM devices WHERE device = $1 FOR UPDATE")
                .bind(&device.0[..])
                .fetch_optional(&mut *tx)
                .await?;
            let mut have = stock(&mut tx, &device).await?.one_time;
            for kp in &one_time {
                if have >= cap {
                    break;
                }
                let n = sqlx::query(
                    "INSERT INTO key_packages (hash, device, data) VALUES ($1, $2, $3) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(&kp.hash[..])
                .bind(&device.0[..])
                .bind(&kp.data)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                have += u32::try_from(n).unwrap_or(0);
            }
            if let Some(kp) = &last_resort {
                sqlx::query(
                    "INSERT INTO last_resort_key_packages (device, hash, data) VALUES ($1, $2, $3) \
                     ON CONFLICT (device) DO UPDATE SET hash = excluded.hash, data = excluded.data",
                )
                .bind(&device.0[..])
                .bind(&kp.hash[..])
                .bind(&kp.data)
                .execute(&mut *tx)
                .await?;
            }
            let s = stock(&mut tx, &device).await?;
            tx.commit().await?;
            TxResult::<_, StoreError>::Ok(s)
        })
    }

    async fn key_package_stock(&self, device: DeviceId) -> Result<KeyPackageStock, StoreError> {
        let mut c = self.pool.acquire().await.map_err(map_err)?;
        stock(&mut c, &device).await.map_err(map_err)
    }

    async fn claim_key_packages(
        &self,
        handle: Handle,
    ) -> Result<Option<(AccountId, Vec<Claimed>)>, StoreError> {
        transaction!(async {
            let mut tx = self.pool.begin().await?;
            let account: Option<Vec<u8>> =
                sqlx::query_scalar("SELECT account FROM accounts WHERE handle = $1")
                    .bind(handle.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(account) = account else {
                return TxResult::<_, StoreError>::Ok(None);
            };
            let mut out = Vec::new();
            for d in live_devices(&mut tx, &account).await? {
                out.extend(take_key_package(&mut tx, &d).await?);
            }
            tx.commit().await?;
            Ok(Some((AccountId(arr(account)?), out)))
        })
    }

    async fn claim_device_key_package(
        &self,
        device: DeviceId,
    ) -> Result<Option<Claimed>, StoreError> {
        transaction!(async {
            let mut tx = self.pool.begin().await?;
            let live = sqlx::query("SELECT 1 FROM devices WHERE device = $1 AND NOT revoked")
                .bind(&device.0[..])
                .fetch_optional(&mut *tx)
                .await?;
            if live.is_none() {
                return TxResult::<_, StoreError>::Ok(None);
            }
            let got = take_key_package(&mut tx, &device.0).await?;
            tx.commit().await?;
            Ok(got)
        })
    }

    async fn device_list(
        &self,
        account: AccountId,
    ) -> Result<Option<SignedDeviceList>, StoreError> {
        self.read_record(Record::DeviceList, &account).await
    }

    async fn publish_device_list(
        &self,
        list: SignedDeviceList,
        now_ms: u64,
    ) -> Result<DeviceListChange, DeviceListError> {
        let data = encode(&list)?;
        transaction!(async {
            let mut tx = self.pool.begin().await?;
            lock_account(&mut tx, &list.account).await?;
            let current: Option<SignedDeviceList> =
                decode(account_record(&mut tx, Record::DeviceList, &list.account).await?)?;
            if let Some(cur) = current.as_ref().filter(|c| c.version >= list.version) {
                return refuse(DeviceListError::Stale(cur.version));
            }
            let mut added = Vec::new();
            for d in &list.devices {
                let owner: Option<Vec<u8>> =
                    sqlx::query_scalar("SELECT account FROM devices WHERE device = $1")
                        .bind(&d.0[..])
                        .fetch_optional(&mut *tx)
                        .await?;
                match owner {
                    Some(a) if a == list.account.0 => {}
                    Some(_) => return refuse(DeviceListError::ForeignDevice),
                    None => {
                        let r = sqlx::query(
                            "INSERT INTO devices (device, account, created_ms) VALUES ($1, $2, $3)",
                        )
                        .bind(&d.0[..])
                        .bind(&list.account.0[..])
                        .bind(ms(now_ms))
                        .execute(&mut *tx)
                        .await;
                        match r {
                            Ok(_) => added.push(*d),
                            Err(e)
                                if e.as_database_error()
                                    .is_some_and(|d| d.is_unique_violation()) =>
                            {
                                return refuse(DeviceListError::ForeignDevice);
                            }
                            Err(e) => return Err(Fail::Db(e)),
                        }
                    }
                }
            }
            let mut revoked = Vec::new();
            for d in live_devices(&mut tx, &list.account.0).await? {
                let d = DeviceId(arr(d)?);
                if !list.devices.contains(&d) {
                    revoked.push(d);
                }
            }
            for d in &revoked {
                sqlx::query("UPDATE devices SET revoked = TRUE WHERE device = $1")
                    .bind(&d.0[..])
                    .execute(&mut *tx)
                    .await?;
                for sql in [
                    "DELETE FROM key_packages WHERE device = $1",
                    "DELETE FROM last_resort_key_packages WHERE device = $1",
                    "DELETE FROM group_members WHERE device = $1",
                ] {
                    sqlx::query(sql).bind(&d.0[..]).execute(&mut *tx).await?;
                }
            }
            put_account_record(
                &mut tx,
                Record::DeviceList,
                &list.account,
                list.version,
                data.clone(),
            )
            .await?;
            tx.commit().await?;
            Ok(DeviceListChange { added, revoked })
        })
    }

    async fn set_kill_record(&self, r: SignedKillRecord) -> Result<bool, StoreError> {
        let data = encode(&r)?;
        transaction!(async {
            let mut tx = self.pool.begin().await?;
            lock_account(&mut tx, &r.account).await?;
            let old: Option<SignedKillRecord> =
                decode(account_record(&mut tx, Record::Kill, &r.account).await?)?;
            if old.is_some_and(|o| o.version >= r.version) {
                return TxResult::<_, StoreError>::Ok(false);
            }
            put_account_record(&mut tx, Record::Kill, &r.account, r.version, data.clone()).await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    async fn kill_record(
        &self,
        account: AccountId,
    ) -> Result<Option<SignedKillRecord>, StoreError> {
        self.read_record(Record::Kill, &account).await
    }

    async fn wipe_target(&self, handle: Handle) -> Result<Option<WipeTarget>, StoreError> {
        let mut c = self.pool.acquire().await.map_err(map_err)?;
        let account: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT account FROM accounts WHERE handle = $1")
                .bind(handle.as_str())
                .fetch_optional(&mut *c)
                .await
                .map_err(map_err)?;
        // An unknown handle runs the same queries, on an account id no key
        // can have, so its answer takes as long as an account's.
        let found = account.is_some();
        let account = account.unwrap_or_else(|| vec![0; 32]);
        let devices = live_devices(&mut c, &account).await.map_err(map_err)?;
        let account = AccountId(arr(account)?);
        let record = decode(
            account_record(&mut c, Record::Kill, &account)
                .await
                .map_err(map_err)?,
        )?;
        if !found {
            return Ok(None);
        }
        Ok(Some(WipeTarget {
            account,
            record,
            devices: devices
                .into_iter()
                .map(|d| arr(d).map(DeviceId))
                .collect::<Result<_, _>>()?,
        }))
    }

    async fn forget_device(&self, device: DeviceId) -> Result<(), StoreError> {
        transaction!(async {
            let mut tx = self.pool.begin().await?;
            drop_device_data(&mut tx, &device.0).await?;
            sqlx::query("DELETE FROM devices WHERE device = $1")
                .bind(&device.0[..])
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            TxResult::<_, StoreError>::Ok(())
        })
    }

    async fn begin_blob(
        &self,
        blob: BlobId,
        sender: DeviceId,
        group: GroupId,
        total: u64,
        expires_ms: u64,
    ) -> Result<Option<BlobState>, StoreError> {
        transaction!(async {
            let mut tx = self.pool.begin().await?;
            let existing = sqlx::query("SELECT sender, total, received FROM blobs WHERE blob = $1")
                .bind(&blob.0[..])
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(row) = existing {
                let owner: Vec<u8> = row.try_get(0)?;
                return TxResult::<_, StoreError>::Ok((owner == sender.0).then_some(BlobState {
                    total: unsigned(row.try_get(1)?),
                    received: unsigned(row.try_get(2)?),
                }));
            }
            let all = members(&mut tx, &group).await?;
            if !all.contains(&sender) {
                return Ok(None);
            }
            let inserted = sqlx::query(
                "INSERT INTO blobs (blob, sender, total, received, expires_ms) VALUES ($1, $2, $3, 0, $4) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&blob.0[..])
            .bind(&sender.0[..])
            .bind(ms(total))
            .bind(ms(expires_ms))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                // Registered by someone else a moment ago: theirs.
                return Ok(None);
            }
            let to: Vec<Vec<u8>> = all
                .iter()
                .filter(|d| **d != sender)
                .map(|d| d.0.to_vec())
                .collect();
            sqlx::query(
                "INSERT INTO blob_recipients (blob, device) SELECT $1, d FROM UNNEST($2::bytea[]) AS t(d) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&blob.0[..])
            .bind(&to)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Some(BlobState { total, received: 0 }))
        })
    }

    async fn blob_progress(&self, blob: BlobId, received: u64) -> Result<(), StoreError> {
        sqlx::query("UPDATE blobs SET received = $2 WHERE blob = $1")
            .bind(&blob.0[..])
            .bind(ms(received))
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn blob_for(
        &self,
        blob: BlobId,
        device: DeviceId,
        now_ms: u64,
    ) -> Result<Option<BlobState>, StoreError> {
        let row = sqlx::query(
            "SELECT b.total, b.received FROM blobs b JOIN blob_recipients r ON r.blob = b.blob \
             WHERE b.blob = $1 AND r.device = $2 AND b.expires_ms > $3",
        )
        .bind(&blob.0[..])
        .bind(&device.0[..])
        .bind(ms(now_ms))
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.map(|r| {
            Ok(BlobState {
                total: unsigned(r.try_get(0)?),
                received: unsigned(r.try_get(1)?),
            })
        })
        .transpose()
        .map_err(map_err)
    }

    async fn blob_fetched(&self, blob: BlobId, device: DeviceId) -> Result<bool, StoreError> {
        transaction!(async {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT 1 FROM blobs WHERE blob = $1 FOR UPDATE")
                .bind(&blob.0[..])
                .fetch_optional(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM blob_recipients WHERE blob = $1 AND device = $2")
                .bind(&blob.0[..])
                .bind(&device.0[..])
                .execute(&mut *tx)
                .await?;
            let left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM blob_recipients WHERE blob = $1")
                    .bind(&blob.0[..])
                    .fetch_one(&mut *tx)
                    .await?;
            let done = left == 0;
            if done {
                sqlx::query("DELETE FROM blobs WHERE blob = $1")
                    .bind(&blob.0[..])
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            TxResult::<_, StoreError>::Ok(done)
        })
    }

    async fn purge_blobs(&self, now_ms: u64) -> Result<Vec<BlobId>, StoreError> {
        let gone: Vec<Vec<u8>> = transaction!(async {
            let mut tx = self.pool.begin().await?;
            let gone: Vec<Vec<u8>> =
                sqlx::query_scalar("DELETE FROM blobs WHERE expires_ms <= $1 RETURNING blob")
                    .bind(ms(now_ms))
                    .fetch_all(&mut *tx)
                    .await?;
            sqlx::query("DELETE FROM blob_recipients WHERE blob = ANY($1)")
                .bind(&gone)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            TxResult::<_, StoreError>::Ok(gone)
        })?;
        gone.into_iter().map(|v| arr(v).map(BlobId)).collect()
    }

    async fn send_to_device(
        &self,
        m: Outgoing,
        recipient: DeviceId,
        mailbox_cap: MailboxCap,
    ) -> Result<SendOutcome, SendError> {
        let key = m.seen_key();
        transaction!(async {
            let mut tx = self.pool.begin().await?;
            if !first_send(&mut tx, &key, m.expires_ms).await? {
                return Ok(SendOutcome::duplicate());
            }
            let Some(posted) = insert_message(&mut tx, &m, &[recipient], mailbox_cap).await? else {
                return refuse(SendError::MailboxFull);
            };
            tx.commit().await?;
            Ok(SendOutcome {
                duplicate: false,
                posted,
            })
        })
    }

    async fn commit(&self, w: CommitWrite) -> Result<CommitOutcome, CommitError> {
        let key = seen_key(&w.sender.0, &w.msg_id);
        transaction!(async {
            let mut tx = self.pool.begin().await?;
            // Lock the group's row (creating a placeholder at epoch 0 for a
            // new group): concurrent commits to one group queue here.
            let current: i64 = sqlx::query_scalar(
                "INSERT INTO groups (group_id, epoch) VALUES ($1, 0) \
                 ON CONFLICT (group_id) DO UPDATE SET epoch = groups.epoch RETURNING epoch",
            )
            .bind(&w.group.0[..])
            .fetch_one(&mut *tx)
            .await?;
            // Read after the lock, so a retry that raced its original sees it.
            let applied: Option<i64> =
                sqlx::query_scalar("SELECT epoch FROM seen_commits WHERE key = $1")
                    .bind(&key[..])
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(epoch) = applied {
                return Ok(CommitOutcome {
                    epoch: unsigned(epoch),
                    commit: Vec::new(),
                    welcome: Vec::new(),
                });
            }
            let current = unsigned(current);
            if current != w.epoch {
                return refuse(CommitError::StaleEpoch(current));
            }
            let before = if current == 0 {
                Vec::new()
            } else {
                let m = members(&mut tx, &w.group).await?;
                if !m.contains(&w.sender) && !w.joins {
                    return refuse(CommitError::NotMember);
                }
                m
            };
            let new_epoch = w.epoch + 1;
            sqlx::query("UPDATE groups SET epoch = $2 WHERE group_id = $1")
                .bind(&w.group.0[..])
                .bind(ms(new_epoch))
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO group_states (group_id, state, group_info) VALUES ($1, $2, $3) \
                 ON CONFLICT (group_id) DO UPDATE SET state = excluded.state, \
                 group_info = excluded.group_info",
            )
            .bind(&w.group.0[..])
            .bind(&w.state)
            .bind(&w.group_info)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM group_proposals WHERE group_id = $1")
                .bind(&w.group.0[..])
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM group_members WHERE group_id = $1")
                .bind(&w.group.0[..])
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO group_members (group_id, device) SELECT $1, d FROM UNNEST($2::bytea[]) AS t(d) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&w.group.0[..])
            .bind(ids(&w.members))
            .execute(&mut *tx)
            .await?;
            // A device that left alone stays unrouted while the tree still
            // has it; its leave is forgotten once the tree leaves it out or
            // this commit adds it again.
            sqlx::query(
                "DELETE FROM group_leaves WHERE group_id = $1 AND (device = ANY($2) OR device NOT IN \
                 (SELECT device FROM group_members WHERE group_id = $1))",
            )
            .bind(&w.group.0[..])
            .bind(ids(&w.welcome_recipients))
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "DELETE FROM group_members WHERE group_id = $1 AND device IN \
                 (SELECT device FROM group_leaves WHERE group_id = $1)",
            )
            .bind(&w.group.0[..])
            .execute(&mut *tx)
            .await?;
            let mut commit = Vec::new();
            if let Some(m) = &w.commit {
                let to: Vec<DeviceId> = before.into_iter().filter(|d| *d != w.sender).collect();
                let Some(posted) = insert_message(&mut tx, m, &to, w.mailbox_cap).await? else {
                    return refuse(CommitError::MailboxFull);
                };
                commit = posted;
            }
            let mut welcome = Vec::new();
            if let Some(m) = &w.welcome {
                let Some(posted) =
                    insert_message(&mut tx, m, &w.welcome_recipients, w.mailbox_cap).await?
                else {
                    return refuse(CommitError::MailboxFull);
                };
                welcome = posted;
            }
            sqlx::query("INSERT INTO seen_commits (key, epoch, expires_ms) VALUES ($1, $2, $3)")
                .bind(&key[..])
                .bind(ms(new_epoch))
                .bind(ms(w.expires_ms))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(CommitOutcome {
                epoch: new_epoch,
                commit,
                welcome,
            })
        })
    }

    async fn group_state(&self, group: GroupId) -> Result<Option<GroupState>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let row: Option<(i64, Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT g.epoch, s.state, s.group_info FROM groups g \
             JOIN group_states s ON s.group_id = g.group_id WHERE g.group_id = $1",
        )
        .bind(&group.0[..])
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some((epoch, state, group_info)) = row else {
            return Ok(None);
        };
        let proposals: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT data FROM group_proposals WHERE group_id = $1 AND epoch = $2 ORDER BY id",
        )
        .bind(&group.0[..])
        .bind(epoch)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some(GroupState {
            epoch: unsigned(epoch),
            state,
            group_info,
            proposals,
        }))
    }

    async fn applied_commit(
        &self,
        sender: DeviceId,
        msg_id: MessageId,
    ) -> Result<Option<u64>, StoreError> {
        let epoch: Option<i64> =
            sqlx::query_scalar("SELECT epoch FROM seen_commits WHERE key = $1")
                .bind(&seen_key(&sender.0, &msg_id)[..])
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?;
        Ok(epoch.map(unsigned))
    }

    async fn propose(&self, p: ProposalWrite) -> Result<SendOutcome, CommitError> {
        let m = &p.message;
        let key = m.seen_key();
        transaction!(async {
            let mut tx = self.pool.begin().await?;
            // Ordered against commits like a send, and only for the epoch
            // it was checked against.
            let current: Option<i64> =
                sqlx::query_scalar("SELECT epoch FROM groups WHERE group_id = $1 FOR SHARE")
                    .bind(&m.group.0[..])
                    .fetch_optional(&mut *tx)
                    .await?;
            let current = current.map_or(0, unsigned);
            if current != p.epoch {
                return refuse(CommitError::StaleEpoch(current));
            }
            let all = members(&mut tx, &m.group).await?;
            if !all.contains(&m.sender) {
                return refuse(CommitError::NotMember);
            }
            if !first_send(&mut tx, &key, m.expires_ms).await? {
                return Ok(SendOutcome::duplicate());
            }
            let to: Vec<DeviceId> = all.into_iter().filter(|d| *d != m.sender).collect();
            let Some(posted) = insert_message(&mut tx, m, &to, p.mailbox_cap).await? else {
                return refuse(CommitError::MailboxFull);
            };
            sqlx::query("INSERT INTO group_proposals (group_id, epoch, data) VALUES ($1, $2, $3)")
                .bind(&m.group.0[..])
                .bind(ms(p.epoch))
                .bind(&m.payload)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(SendOutcome {
                duplicate: false,
                posted,
            })
        })
    }

    async fn send(&self, m: Outgoing, mailbox_cap: MailboxCap) -> Result<SendOutcome, SendError> {
        // Group-committed with the sends that arrive meanwhile (`batched`).
        let pool = self.pool.clone();
        self.sends
            .submit((m, mailbox_cap), |batch| async move {
                send_batch(&pool, &batch).await
            })
            .await?
    }

    async fn fetch(
        &self,
        device: DeviceId,
        after: u64,
        limit: u32,
        now_ms: u64,
    ) -> Result<Vec<MailboxEntry>, StoreError> {
        let mut c = self.pool.acquire().await.map_err(map_err)?;
        mailbox_after(&mut c, &device, after, limit, now_ms).await
    }

    async fn fetch_many(
        &self,
        wants: Vec<(DeviceId, u64)>,
        limit: u32,
        now_ms: u64,
    ) -> Result<Vec<Option<Vec<MailboxEntry>>>, StoreError> {
        if wants.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&[u8]> = wants.iter().map(|(d, _)| &d.0[..]).collect();
        let afters: Vec<i64> = wants.iter().map(|(_, a)| ms(*a)).collect();
        // One query for every device: which are live (a row with a NULL
        // entry for a live device with nothing to deliver), and up to
        // `limit` entries of each, by one index range scan per device.
        let rows = sqlx::query(
            "SELECT w.i, e.seq, e.group_id, e.sender, e.msg_id, e.kind, e.server_ms, e.payload \
             FROM unnest($1::bytea[], $2::int8[]) WITH ORDINALITY AS w(device, after, i) \
             JOIN devices d ON d.device = w.device AND NOT d.revoked \
             LEFT JOIN LATERAL ( \
                 SELECT b.seq, m.group_id, m.sender, m.msg_id, m.kind, m.server_ms, m.payload \
                 FROM mailbox b JOIN messages m ON m.id = b.message \
                 WHERE b.device = w.device AND b.seq > w.after AND m.expires_ms > $4 \
                 ORDER BY b.seq LIMIT $3) e ON true \
             ORDER BY w.i, e.seq",
        )
        .bind(&ids)
        .bind(&afters)
        .bind(i64::from(limit))
        .bind(ms(now_ms))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let mut out: Vec<Option<Vec<MailboxEntry>>> = vec![None; wants.len()];
        for r in rows {
            let i: i64 = r.try_get(0).map_err(map_err)?;
            let slot = usize::try_from(i - 1)
                .ok()
                .and_then(|i| out.get_mut(i))
                .ok_or_else(|| StoreError::Internal(format!("no device {i} was asked for")))?;
            let entries = slot.get_or_insert_with(Vec::new);
            // A live device with nothing to deliver: one row of NULLs.
            if let Some(seq) = r.try_get::<Option<i64>, _>(1).map_err(map_err)? {
                entries.push(entry(seq, &r, 2)?);
            }
        }
        Ok(out)
    }

    async fn mailbox_heads(
        &self,
        devices: Vec<DeviceId>,
    ) -> Result<Vec<(DeviceId, u64)>, StoreError> {
        let mut out = Vec::with_capacity(devices.len());
        // One index lookup per device, in bounded batches.
        for chunk in devices.chunks(8192) {
            let ids: Vec<&[u8]> = chunk.iter().map(|d| &d.0[..]).collect();
            let rows = sqlx::query(
                "SELECT h.device, h.last_seq FROM unnest($1::bytea[]) AS d(device) \
                 JOIN mailbox_heads h ON h.device = d.device",
            )
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
            for r in rows {
                let device: Vec<u8> = r.try_get(0).map_err(map_err)?;
                let seq: i64 = r.try_get(1).map_err(map_err)?;
                out.push((DeviceId(arr(device)?), unsigned(seq)));
            }
        }
        Ok(out)
    }

    async fn ack(&self, device: DeviceId, seqs: Vec<u64>) -> Result<(), StoreError> {
        // Group-committed with the acks that arrive meanwhile (`batched`).
        let pool = self.pool.clone();
        self.acks
            .submit((device, seqs), |batch| async move {
                let r = ack_batch(&pool, &batch).await;
                vec![r; batch.len()]
            })
            .await?
    }

    async fn purge_expired(&self, now_ms: u64) -> Result<u64, StoreError> {
        let now = ms(now_ms);
        transaction!(async {
            let mut tx = self.pool.begin().await?;
            // Every node purges; one at a time does the work.
            let mine: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                .bind(PURGE_LOCK)
                .fetch_one(&mut *tx)
                .await?;
            if !mine {
                return TxResult::<_, StoreError>::Ok(0);
            }
            sqlx::query(concat!(
                "WITH gone AS (DELETE FROM mailbox b USING messages m \
                 WHERE b.message = m.id AND m.expires_ms <= $1 \
                 RETURNING b.device, length(m.payload) AS size), \
                 n AS (SELECT device, count(*) AS k, sum(size)::int8 AS bytes FROM gone \
                 GROUP BY device) ",
                count_removed!()
            ))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let n = sqlx::query("DELETE FROM messages WHERE expires_ms <= $1")
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            // Messages every recipient acknowledged whose last acks raced
            // and whose second look never ran (`release_messages`). A
            // message being sent is not seen: its row and its entries
            // commit together.
            sqlx::query(
                "DELETE FROM messages m WHERE NOT EXISTS \
                 (SELECT 1 FROM mailbox b WHERE b.message = m.id)",
            )
            .execute(&mut *tx)
            .await?;
            for sql in [
                "DELETE FROM seen_sends WHERE expires_ms <= $1",
                "DELETE FROM seen_commits WHERE expires_ms <= $1",
                "DELETE FROM invites WHERE expires_ms <= $1",
                "DELETE FROM kill_guesses WHERE until_ms <= $1",
            ] {
                sqlx::query(sql).bind(now).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(n)
        })
    }

    async fn kill_guesses(&self, key: [u8; 32], now_ms: u64) -> Result<Guesses, StoreError> {
        let row = sqlx::query(
            "SELECT failures, until_ms FROM kill_guesses WHERE key = $1 AND until_ms > $2",
        )
        .bind(&key[..])
        .bind(ms(now_ms))
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        let Some(row) = row else {
            return Ok(Guesses::default());
        };
        let failures: i32 = row.try_get(0).map_err(map_err)?;
        let until: i64 = row.try_get(1).map_err(map_err)?;
        Ok(Guesses {
            failures: u32::try_from(failures).unwrap_or(0),
            until_ms: unsigned(until),
        })
    }

    async fn kill_guess_failed(
        &self,
        keys: Vec<[u8; 32]>,
        now_ms: u64,
        window_ms: u64,
    ) -> Result<(), StoreError> {
        let mut keys: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
        // One lock order for every writer.
        keys.sort();
        keys.dedup();
        let (now, until) = (ms(now_ms), ms(now_ms.saturating_add(window_ms)));
        transaction!(async {
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "INSERT INTO kill_guesses (key, failures, until_ms) \
                 SELECT k, 1, $3 FROM UNNEST($1::bytea[]) AS t(k) ORDER BY k \
                 ON CONFLICT (key) DO UPDATE SET \
                 failures = CASE WHEN kill_guesses.until_ms > $2 THEN kill_guesses.failures + 1 ELSE 1 END, \
                 until_ms = CASE WHEN kill_guesses.until_ms > $2 THEN kill_guesses.until_ms ELSE $3 END",
            )
            .bind(&keys)
            .bind(now)
            .bind(until)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            TxResult::<_, StoreError>::Ok(())
        })
    }

    async fn set_block(
        &self,
        account: AccountId,
        blocked: AccountId,
        block: bool,
    ) -> Result<(), StoreError> {
        let sql = if block {
            "INSERT INTO blocks (account, blocked) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM blocks WHERE account = $1 AND blocked = $2"
        };
        sqlx::query(sql)
            .bind(&account.0[..])
            .bind(&blocked.0[..])
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn blocked_by(&self, handle: Handle, account: AccountId) -> Result<bool, StoreError> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM blocks b JOIN accounts a ON a.account = b.account \
             WHERE a.handle = $1 AND b.blocked = $2)",
        )
        .bind(handle.as_str())
        .bind(&account.0[..])
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)
    }

    async fn leave_group(&self, group: GroupId, device: DeviceId) -> Result<(), StoreError> {
        transaction!(async {
            let mut tx = self.pool.begin().await?;
            // Ordered against commits to the group, which rewrite its members.
            let exists: Option<i64> =
                sqlx::query_scalar("SELECT epoch FROM groups WHERE group_id = $1 FOR UPDATE")
                    .bind(&group.0[..])
                    .fetch_optional(&mut *tx)
                    .await?;
            if exists.is_none() {
                return TxResult::<_, StoreError>::Ok(());
            }
            sqlx::query(
                "INSERT INTO group_leaves (group_id, device) \
                 SELECT group_id, device FROM group_members WHERE group_id = $1 AND device = $2 \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&group.0[..])
            .bind(&device.0[..])
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM group_members WHERE group_id = $1 AND device = $2")
                .bind(&group.0[..])
                .bind(&device.0[..])
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    async fn directory_write(&self, w: DirectoryWrite) -> Result<bool, StoreError> {
        transaction!(async {
            let mut tx = self.pool.begin().await?;
            if let Some(epoch) = w.epoch {
                // The row lock orders writers; the first to commit an
                // epoch wins it.
                let stored: Option<i64> = sqlx::query_scalar(
                    "SELECT epoch FROM directory_epoch WHERE singleton = 0 FOR UPDATE",
                )
                .fetch_optional(&mut *tx)
                .await?;
                let newer = stored.is_none_or(|s| epoch > unsigned(s));
                if w.newer_only && !newer {
                    return TxResult::<_, StoreError>::Ok(false);
                }
                // A first epoch raced by another node: the primary key
                // refuses the second insert, and the retry sees the row.
                sqlx::query(
                    "INSERT INTO directory_epoch (singleton, epoch) VALUES (0, $1) \
                     ON CONFLICT (singleton) DO UPDATE SET epoch = excluded.epoch",
                )
                .bind(ms(epoch))
                .execute(&mut *tx)
                .await?;
            }
            if !w.records.is_empty() {
                let (ids, records): (Vec<&[u8]>, Vec<&[u8]>) = w
                    .records
                    .iter()
                    .map(|(i, r)| (i.as_slice(), r.as_slice()))
                    .unzip();
                sqlx::query(
                    "INSERT INTO directory_records (id, record) \
                     SELECT * FROM UNNEST($1::bytea[], $2::bytea[]) \
                     ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                )
                .bind(ids)
                .bind(records)
                .execute(&mut *tx)
                .await?;
            }
            if !w.states.is_empty() {
                let labels: Vec<&[u8]> = w.states.iter().map(|s| s.0.as_slice()).collect();
                let epochs: Vec<i64> = w.states.iter().map(|s| ms(s.1)).collect();
                let records: Vec<&[u8]> = w.states.iter().map(|s| s.2.as_slice()).collect();
                sqlx::query(
                    "INSERT INTO directory_states (label, epoch, record) \
                     SELECT * FROM UNNEST($1::bytea[], $2::bigint[], $3::bytea[]) \
                     ON CONFLICT (label, epoch) DO UPDATE SET record = excluded.record",
                )
                .bind(labels)
                .bind(epochs)
                .bind(records)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    async fn directory_records(&self, ids: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, StoreError> {
        sqlx::query_scalar("SELECT record FROM directory_records WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)
    }

    async fn directory_states(&self, labels: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, StoreError> {
        sqlx::query_scalar("SELECT record FROM directory_states WHERE label = ANY($1)")
            .bind(labels)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)
    }

    async fn directory_turn(&self) -> Result<DirectoryTurn, StoreError> {
        // A transaction's advisory lock, held by an open transaction: when
        // the turn is dropped the transaction rolls back (the pool flushes
        // the rollback before it lends the connection again), and a node
        // that dies mid-turn ends its session and its turn with it.
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(DIRECTORY_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        Ok(DirectoryTurn::holding(tx))
    }

    async fn put_directory_root(&self, epoch: u64, hash: [u8; 32]) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO directory_roots (epoch, hash) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(ms(epoch))
        .bind(&hash[..])
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn directory_roots(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, [u8; 32])>, StoreError> {
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT epoch, hash FROM directory_roots WHERE epoch >= $1 AND epoch <= $2 \
             ORDER BY epoch",
        )
        .bind(ms(from))
        .bind(ms(to))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.into_iter()
            .map(|(e, h)| Ok((unsigned(e), arr::<32>(h)?)))
            .collect()
    }
}
