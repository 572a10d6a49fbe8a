//! The embedded [`Store`]: one SQLite database file in WAL mode with
//! `synchronous=FULL`, so a transaction that returned is on disk, and
//! `secure_delete=ON`, so deleted ciphertext is overwritten. All access goes
//! through one connection, on the store's own thread; SQLite serializes writers
//! anyway, and one connection keeps every write in a single, simple order.
//! Concurrent sends and acknowledgements share a transaction and its fsync
//! (group commit, see [`SqliteStore`]). The schema is versioned like the
//! PostgreSQL store's: numbered migrations in `migrations/sqlite/`, applied
//! on open and counted in `PRAGMA user_version` (the `migrations` module).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

use rusqlite::{Connection, ErrorCode as SqlCode, OptionalExtension, TransactionBehavior, params};
use sotto_proto::{
    AccountId, Blob, BlobId, DeviceId, Envelope, EnvelopeKind, GroupId, Handle, MessageId,
    SignedDeviceList, SignedKillRecord,
};

use super::{
    BlobState, Claimed, CommitError, CommitOutcome, CommitWrite, DeviceListChange, DeviceListError,
    DeviceRecord, DirectoryTurn, DirectoryWrite, GroupState, Guesses, KeyPackageStock, MailboxCap,
    MailboxEntry, NewAccount, Outgoing, Posted, ProposalWrite, RegisterError, SendError,
    SendOutcome, Stats, Store, StoreError, StoredKeyPackage, WipeTarget, seen_key,
};

mod migrations;

/// The SQLite store.
///
/// One connection, owned by one thread (the store thread), which runs the
/// calls sent to it over a channel: no hop through tokio's blocking pool
/// and no lock per call. Sends (to groups and to devices) and
/// acknowledgements are written with group commit: the thread takes every
/// call waiting in its channel, runs the others as it meets them, and
/// writes the batched ones it took in one transaction (a savepoint each, so
/// one refused write does not undo the others), with one fsync for all of
/// them. No write is answered before the transaction holding it is durable.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    thread: Arc<StoreThread>,
    /// Key-directory turns (`Store::directory_turn`): one server uses a
    /// SQLite database, so a lock in memory is every node's.
    directory: Arc<tokio::sync::Mutex<()>>,
}

/// How a batched write is answered once its batch committed (`Ok`) or
/// failed (the error).
type Finish = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A write waiting for the next group commit. Run with the batch's
/// transaction (under a savepoint), it says whether it succeeded and how to
/// answer; run with `None` (the batch failed before its turn), it only
/// answers.
type WriteJob = Box<dyn FnOnce(Option<&Connection>) -> (bool, Finish) + Send>;

/// A call for the store thread.
enum Call {
    /// Runs by itself with the connection: a read, or a write with its own
    /// transaction.
    Alone(Box<dyn FnOnce(&mut Connection) + Send>),
    /// Joins the next group commit.
    Batched(WriteJob),
}

/// At most this many calls are taken from the channel before the batched
/// writes among them are written, so a stream of other calls does not hold
/// them back.
const MAX_TAKEN: usize = 1024;

/// The store thread and the channel to it. When the last handle goes, the
/// channel closes and the thread is waited for: it finishes the calls it
/// was given and closes the database, so a store dropped is closed (and can
/// be reopened, or rewritten by [`pages_of`], at once).
struct StoreThread {
    calls: Option<mpsc::Sender<Call>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for StoreThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreThread")
    }
}

impl Drop for StoreThread {
    fn drop(&mut self) {
        drop(self.calls.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The store thread's loop: waits for a call, takes every other one
/// waiting (up to [`MAX_TAKEN`]), runs the lone ones in order and writes
/// the batched ones together. A call that panics fails (a batched write
/// with its batch, whose transaction is rolled back): its answer is
/// dropped, which its caller sees as an error, and the thread goes on.
fn serve(mut conn: Connection, calls: mpsc::Receiver<Call>) {
    while let Ok(first) = calls.recv() {
        let mut writes = Vec::new();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(call) = next {
            match call {
                Call::Alone(f) => {
                    let _ = catch_unwind(AssertUnwindSafe(|| f(&mut conn)));
                }
                Call::Batched(job) => writes.push(job),
            }
            taken += 1;
            next = if taken < MAX_TAKEN {
                calls.try_recv().ok()
            } else {
                None
            };
        }
        if !writes.is_empty() {
            let _ = catch_unwind(AssertUnwindSafe(|| write_batch(&mut conn, writes)));
        }
    }
}

/// Writes `jobs` in one transaction, each under a savepoint, then answers
/// each with its own result if the transaction committed, or with the error
/// that stopped it.
fn write_batch(c: &mut Connection, jobs: Vec<WriteJob>) {
    let mut finishes = Vec::with_capacity(jobs.len());
    let mut jobs = jobs.into_iter();
    let written = (|| -> Result<(), StoreError> {
        let mut tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(map_err)?;
        for job in jobs.by_ref() {
            let sp = tx.savepoint().map_err(map_err)?;
            let (ok, finish) = job(Some(&sp));
            finishes.push(finish);
            if ok {
                sp.commit().map_err(map_err)?;
            }
            // else: dropping the savepoint rolls back this write, only it.
        }
        tx.commit().map_err(map_err)
    })();
    match written {
        Ok(()) => finishes.into_iter().for_each(|f| f(Ok(()))),
        Err(e) => {
            for f in finishes {
                f(Err(e.clone()));
            }
            for job in jobs {
                job(None).1(Err(e.clone()));
            }
        }
    }
}

fn map_err(e: rusqlite::Error) -> StoreError {
    if unavailable(&e) {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Internal(e.to_string())
    }
}

/// Whether `e` is a passing condition (disk full, locked, I/O), not a bug.
fn unavailable(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(
            SqlCode::DiskFull
                | SqlCode::DatabaseBusy
                | SqlCode::DatabaseLocked
                | SqlCode::SystemIoFailure
                | SqlCode::CannotOpen
                | SqlCode::ReadOnly
        )
    )
}

fn kind_to_i64(k: EnvelopeKind) -> i64 {
    match k {
        EnvelopeKind::Application => 0,
        EnvelopeKind::Commit => 1,
        EnvelopeKind::Welcome => 2,
        EnvelopeKind::Device => 3,
        EnvelopeKind::Wipe => 4,
        EnvelopeKind::Proposal => 5,
    }
}

fn kind_from_i64(k: i64) -> Result<EnvelopeKind, StoreError> {
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

fn arr32(v: Vec<u8>) -> Result<[u8; 32], StoreError> {
    v.try_into()
        .map_err(|_| StoreError::Internal("stored id is not 32 bytes".into()))
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Internal(format!("{v} does not fit a column")))
}

/// One send to a group, inside a group commit's transaction (under its own
/// savepoint): for every member but the sender.
fn send_one(
    c: &Connection,
    m: &Outgoing,
    mailbox_cap: MailboxCap,
) -> Result<SendOutcome, SendError> {
    let all = members(c, &m.group)?;
    if !all.contains(&m.sender) {
        return Err(SendError::NotMember);
    }
    if let Some(epoch) = m.epoch {
        // The statements of every send are prepared once (`prepare_cached`):
        // parsing them again was a tenth of the server's time in `direct`.
        let current: Option<i64> = c
            .prepare_cached("SELECT epoch FROM groups WHERE group_id = ?1")
            .and_then(|mut st| st.query_row([&m.group.0[..]], |r| r.get(0)).optional())
            .map_err(map_err)?;
        let current = current.map_or(0, |e| u64::try_from(e).unwrap_or(0));
        if current != epoch {
            // A resend of a message stored in its epoch is a duplicate.
            let key = m.seen_key();
            let seen: Option<i64> = c
                .prepare_cached("SELECT 1 FROM seen_sends WHERE key = ?1")
                .and_then(|mut st| st.query_row([&key[..]], |r| r.get(0)).optional())
                .map_err(map_err)?;
            return match seen {
                Some(_) => Ok(SendOutcome::duplicate()),
                None => Err(SendError::StaleEpoch(current)),
            };
        }
    }
    let to: Vec<DeviceId> = all.into_iter().filter(|d| *d != m.sender).collect();
    store_once(c, m, to, mailbox_cap)
}

/// Stores `m` for `to`, unless the sender's message id was stored before
/// (then it is a duplicate and nothing is written).
fn store_once(
    c: &Connection,
    m: &Outgoing,
    to: Vec<DeviceId>,
    mailbox_cap: MailboxCap,
) -> Result<SendOutcome, SendError> {
    let key = m.seen_key();
    let fresh = c
        .prepare_cached("INSERT OR IGNORE INTO seen_sends (key, expires_ms) VALUES (?1, ?2)")
        .and_then(|mut st| st.execute(params![&key[..], ms(m.expires_ms)]))
        .map_err(map_err)?;
    if fresh == 0 {
        return Ok(SendOutcome::duplicate());
    }
    let posted = insert_message(c, m, &to, mailbox_cap)?.ok_or(SendError::MailboxFull)?;
    Ok(SendOutcome {
        duplicate: false,
        posted,
    })
}

/// Creates the database file at `path` with mode 0600 if it does not
/// exist, and takes group and other access away from it and its WAL and
/// shared-memory files if they exist.
fn private_files(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let p = std::path::PathBuf::from(p);
            if let Ok(meta) = std::fs::metadata(&p)
                && meta.permissions().mode() & 0o077 != 0
            {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// The page size of the database file. A send and its acknowledgement
/// each rewrite a few pages of several B-trees (the message, its mailbox
/// entry, the dedup key, their indexes) and every transaction writes each
/// page it changed whole to the WAL, so bytes written per message follow
/// the page size: 1 KiB pages write 40% fewer bytes per message than
/// SQLite's default 4 KiB in `sotto-bench direct` (BENCHMARKS.md, "Disk
/// written per message").
const PAGE_SIZE: u32 = 1024;

/// SQLite checkpoints the WAL into the database when the WAL holds this
/// many bytes: 4 MiB, what its default of 1000 pages holds at 4 KiB pages,
/// so deleted rows' old frames stay in the WAL no longer than they did.
/// Counted in pages by SQLite (`wal_autocheckpoint`).
const WAL_CHECKPOINT_BYTES: u32 = 4 << 20;

/// A database at most this large is rewritten at the [`PAGE_SIZE`] when it
/// is opened with another page size (a `VACUUM`, once). Its temporary copy
/// is kept in memory, not in a temporary file outside the data directory,
/// which bounds it; a larger database keeps its page size (OPERATING.md
/// says how to rewrite it with the server stopped).
const REWRITE_AT_MOST_BYTES: u64 = 256 << 20;

/// Gives the database `want` bytes per page if it can, and returns the
/// page size it has. A new database takes it at once; an existing one is
/// rewritten (`VACUUM` outside WAL mode) if it is small enough and no other
/// connection has it open, else it keeps its page size, which only costs
/// disk writes.
fn pages_of(c: &Connection, want: u32) -> Result<u32, StoreError> {
    let size = |c: &Connection| -> Result<u32, StoreError> {
        c.query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(map_err)
    };
    let have = size(c)?;
    if have == want {
        return Ok(have);
    }
    let pages: u64 = c
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .map_err(map_err)?;
    c.pragma_update(None, "page_size", want).map_err(map_err)?;
    if pages == 0 {
        return size(c);
    }
    let bytes = pages.saturating_mul(u64::from(have));
    if bytes > REWRITE_AT_MOST_BYTES {
        tracing::warn!(
            bytes,
            page_size = have,
            "server.db keeps its page size: too large to rewrite on open (OPERATING.md)"
        );
        return Ok(have);
    }
    let rewritten =
        c.execute_batch("PRAGMA temp_store=MEMORY; PRAGMA journal_mode=DELETE; VACUUM;");
    c.execute_batch("PRAGMA temp_store=DEFAULT;")
        .map_err(map_err)?;
    if let Err(e) = rewritten {
        // Another connection has the database open (in WAL mode, which
        // then stays), or the disk is full: it works as it is.
        tracing::warn!(error = %e, page_size = have, "server.db keeps its page size");
    }
    let now = size(c)?;
    if now == want {
        tracing::info!(
            from = have,
            to = now,
            "server.db rewritten with smaller pages"
        );
    }
    Ok(now)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`. The file is
    /// created readable by the server's user only (0600, whatever the
    /// umask), and SQLite gives its WAL and shared-memory files the same
    /// mode; a database left readable by others is made private first.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        private_files(path)
            .map_err(|e| StoreError::Internal(format!("{}: {e}", path.display())))?;
        let conn = Connection::open(path).map_err(map_err)?;
        Self::init(conn)
    }

    /// The schema version (`PRAGMA user_version`) of a database this build
    /// opened: the number of its last migration (`migrations/sqlite/`).
    pub const SCHEMA_VERSION: u32 = migrations::LATEST;

    fn init(mut conn: Connection) -> Result<Self, StoreError> {
        // Room for every statement the store prepares once (rusqlite keeps
        // 16 by default; the store has more, and evicting them means
        // parsing them again).
        conn.set_prepared_statement_cache_capacity(64);
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(map_err)?;
        conn.execute_batch("PRAGMA secure_delete=ON;")
            .map_err(map_err)?;
        let page_size = pages_of(&conn, PAGE_SIZE)?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint={}; PRAGMA synchronous=FULL; \
             PRAGMA foreign_keys=ON;",
            WAL_CHECKPOINT_BYTES / page_size
        ))
        .map_err(map_err)?;
        let applied =
            migrations::migrate(&mut conn, migrations::MIGRATIONS).map_err(|e| match &e {
                migrations::MigrationError::Sqlite { source, .. } if unavailable(source) => {
                    StoreError::Unavailable(e.to_string())
                }
                _ => StoreError::Internal(e.to_string()),
            })?;
        if !applied.is_empty() {
            tracing::info!(?applied, "SQLite store schema migrated");
        }
        let (calls, inbox) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("sotto-store".into())
            .spawn(move || serve(conn, inbox))
            .map_err(|e| StoreError::Internal(format!("cannot start the store thread: {e}")))?;
        Ok(Self {
            thread: Arc::new(StoreThread {
                calls: Some(calls),
                thread: Some(thread),
            }),
            directory: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// Hands `call` to the store thread.
    fn call(&self, call: Call) -> Result<(), StoreError> {
        self.thread
            .calls
            .as_ref()
            .and_then(|c| c.send(call).ok())
            .ok_or_else(|| StoreError::Internal("the store thread stopped".into()))
    }

    async fn with<T, E>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel::<Result<T, E>>();
        self.call(Call::Alone(Box::new(move |c| {
            let _ = reply.send(f(c));
        })))?;
        answer
            .await
            .map_err(|_| E::from(StoreError::Internal("a store call failed".into())))?
    }

    /// Runs `f` in the next group commit (see [`SqliteStore`]); answers once
    /// the transaction holding it is durable. `f` runs under a savepoint and
    /// must not open a transaction itself.
    async fn batched<T, E>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel::<Result<T, E>>();
        let job: WriteJob = Box::new(move |c| {
            let r = match c {
                Some(c) => f(c),
                None => Err(E::from(StoreError::Internal("not written".into()))),
            };
            let ok = r.is_ok();
            let finish: Finish = Box::new(move |committed| {
                let _ = reply.send(committed.map_err(E::from).and(r));
            });
            (ok, finish)
        });
        self.call(Call::Batched(job))?;
        answer.await.unwrap_or_else(|_| {
            Err(E::from(StoreError::Internal(
                "a write was dropped unwritten".into(),
            )))
        })
    }

    /// Invites can be added while a server runs on the same file: this is the
    /// synchronous path used by `sotto-server invite`.
    pub fn add_invites_blocking(
        &self,
        hashes: &[[u8; 32]],
        expires_ms: u64,
    ) -> Result<(), StoreError> {
        let (reply, answer) = mpsc::channel();
        let hashes = hashes.to_vec();
        self.call(Call::Alone(Box::new(move |c| {
            let _ = reply.send(add_invites(c, &hashes, expires_ms));
        })))?;
        answer
            .recv()
            .map_err(|_| StoreError::Internal("a store call failed".into()))?
    }
}

fn add_invites(c: &mut Connection, hashes: &[[u8; 32]], expires_ms: u64) -> Result<(), StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_err)?;
    for h in hashes {
        tx.execute(
            "INSERT OR IGNORE INTO invites (hash, expires_ms) VALUES (?1, ?2)",
            params![&h[..], ms(expires_ms)],
        )
        .map_err(map_err)?;
    }
    tx.commit().map_err(map_err)
}

/// Writes a postcard-encoded, versioned record of an account with `sql`
/// (an upsert of `account`, `version`, `data` as ?1, ?2, ?3).
fn put_account_record<T: serde::Serialize>(
    tx: &rusqlite::Transaction<'_>,
    sql: &str,
    account: &AccountId,
    version: u64,
    record: &T,
) -> Result<(), StoreError> {
    let data = postcard::to_stdvec(record).map_err(|e| StoreError::Internal(e.to_string()))?;
    tx.execute(sql, params![&account.0[..], ms(version), data])
        .map_err(map_err)?;
    Ok(())
}

fn put_list(tx: &rusqlite::Transaction<'_>, l: &SignedDeviceList) -> Result<(), StoreError> {
    put_account_record(
        tx,
        "INSERT INTO device_lists (account, version, data) VALUES (?1, ?2, ?3) \
         ON CONFLICT(account) DO UPDATE SET version = excluded.version, data = excluded.data",
        &l.account,
        l.version,
        l,
    )
}

/// A postcard-encoded record of an account, read by `sql` (which selects
/// one `data` column by `account = ?1`).
fn account_record<T: serde::de::DeserializeOwned>(
    c: &Connection,
    sql: &str,
    account: &AccountId,
) -> Result<Option<T>, StoreError> {
    let data: Option<Vec<u8>> = c
        .query_row(sql, [&account.0[..]], |r| r.get(0))
        .optional()
        .map_err(map_err)?;
    data.map(|d| postcard::from_bytes(&d).map_err(|e| StoreError::Internal(e.to_string())))
        .transpose()
}

fn get_kill(c: &Connection, account: &AccountId) -> Result<Option<SignedKillRecord>, StoreError> {
    account_record(
        c,
        "SELECT data FROM kill_records WHERE account = ?1",
        account,
    )
}

fn get_list(c: &Connection, account: &AccountId) -> Result<Option<SignedDeviceList>, StoreError> {
    account_record(
        c,
        "SELECT data FROM device_lists WHERE account = ?1",
        account,
    )
}

/// Takes a one-time KeyPackage of `d` (deleting it) or its last-resort one.
fn take_key_package(
    tx: &rusqlite::Transaction<'_>,
    d: &[u8],
) -> Result<Option<Claimed>, StoreError> {
    let device = DeviceId(arr32(d.to_vec())?);
    let one: Option<(Vec<u8>, Vec<u8>)> = tx
        .query_row(
            "DELETE FROM key_packages WHERE hash = \
             (SELECT hash FROM key_packages WHERE device = ?1 LIMIT 1) \
             RETURNING hash, data",
            [d],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(map_err)?;
    if let Some((_, data)) = one {
        return Ok(Some(Claimed {
            device,
            data,
            last_resort: false,
        }));
    }
    let lr: Option<Vec<u8>> = tx
        .query_row(
            "SELECT data FROM last_resort_key_packages WHERE device = ?1",
            [d],
            |r| r.get(0),
        )
        .optional()
        .map_err(map_err)?;
    Ok(lr.map(|data| Claimed {
        device,
        data,
        last_resort: true,
    }))
}

/// Entries and payload bytes waiting in `device`'s mailbox.
/// What `device`'s mailbox holds: entries, payload bytes, and the highest
/// sequence number among them (0 if it is empty).
fn mailbox_usage(tx: &Connection, device: &DeviceId) -> Result<(u64, u64, u64), StoreError> {
    let (n, bytes, last): (i64, i64, i64) = tx
        .prepare_cached(
            "SELECT count(*), coalesce(sum(length(m.payload)), 0), coalesce(max(b.seq), 0) \
             FROM mailbox b JOIN messages m ON m.id = b.message WHERE b.device = ?1",
        )
        .and_then(|mut st| st.query_row([&device.0[..]], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))))
        .map_err(map_err)?;
    Ok((
        u64::try_from(n).unwrap_or(0),
        u64::try_from(bytes).unwrap_or(0),
        u64::try_from(last).unwrap_or(0),
    ))
}

/// Up to `limit` unexpired mailbox entries of `device` after `after`.
fn mailbox_after(
    c: &Connection,
    device: &DeviceId,
    after: u64,
    limit: u32,
    now_ms: u64,
) -> Result<Vec<MailboxEntry>, StoreError> {
    let mut stmt = c
        .prepare_cached(
            "SELECT b.seq, m.group_id, m.sender, m.msg_id, m.kind, m.server_ms, m.payload \
             FROM mailbox b JOIN messages m ON m.id = b.message \
             WHERE b.device = ?1 AND b.seq > ?2 AND m.expires_ms > ?4 ORDER BY b.seq LIMIT ?3",
        )
        .map_err(map_err)?;
    let rows = stmt
        .query_map(
            params![&device.0[..], ms(after), i64::from(limit), ms(now_ms)],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Vec<u8>>(6)?,
                ))
            },
        )
        .map_err(map_err)?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, group, sender, msg_id, kind, server_ms, payload) = row.map_err(map_err)?;
        let msg_id: [u8; 16] = msg_id
            .try_into()
            .map_err(|_| StoreError::Internal("stored msg id is not 16 bytes".into()))?;
        out.push(MailboxEntry {
            seq: u64::try_from(seq).unwrap_or(0),
            envelope: Envelope {
                group: GroupId(arr32(group)?),
                sender: DeviceId(arr32(sender)?),
                msg_id: MessageId(msg_id),
                kind: kind_from_i64(kind)?,
                server_time_ms: u64::try_from(server_ms).unwrap_or(0),
                payload: Blob(payload),
            },
        });
    }
    Ok(out)
}

/// Inserts a message and a mailbox row for each recipient (each device
/// once), and returns the entries made. Fails with `None` if a recipient's
/// mailbox would go past its cap. Nothing is written for no recipients.
fn insert_message(
    tx: &Connection,
    m: &Outgoing,
    recipients: &[DeviceId],
    cap: MailboxCap,
) -> Result<Option<Vec<Posted>>, StoreError> {
    let mut to = Vec::with_capacity(recipients.len());
    let mut once = std::collections::HashSet::with_capacity(recipients.len());
    let size = m.payload.len() as u64;
    for r in recipients {
        if !once.insert(*r) {
            continue;
        }
        let (n, bytes, last) = mailbox_usage(tx, r)?;
        if n >= cap.messages || bytes.saturating_add(size) > cap.bytes {
            return Ok(None);
        }
        to.push((*r, last));
    }
    if to.is_empty() {
        return Ok(Some(Vec::new()));
    }
    let id = tx
        .prepare_cached(
            "INSERT INTO messages (group_id, sender, msg_id, kind, server_ms, expires_ms, payload) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .and_then(|mut st| {
            st.insert(params![
                &m.group.0[..],
                &m.stored_sender().0[..],
                &m.msg_id.0[..],
                kind_to_i64(m.kind),
                ms(m.now_ms),
                ms(m.expires_ms),
                &m.payload
            ])
        })
        .map_err(map_err)?;
    let mut stmt = tx
        .prepare_cached("INSERT INTO mailbox (device, message) VALUES (?1, ?2)")
        .map_err(map_err)?;
    let mut posted = Vec::with_capacity(to.len());
    for (device, after) in to {
        // `seq` is the table's rowid.
        let seq = stmt.insert(params![&device.0[..], id]).map_err(map_err)?;
        posted.push(Posted {
            device,
            seq: u64::try_from(seq).unwrap_or(0),
            after,
        });
    }
    Ok(Some(posted))
}

/// After a commit wrote a group's members: a device that left alone stays
/// unrouted while the tree still has it, and its leave is forgotten once
/// the tree leaves it out or a commit adds it again (`welcomed`).
fn forget_leaves(
    tx: &Connection,
    group: &GroupId,
    welcomed: &[DeviceId],
) -> Result<(), StoreError> {
    let mut stmt = tx
        .prepare_cached("DELETE FROM group_leaves WHERE group_id = ?1 AND device = ?2")
        .map_err(map_err)?;
    for d in welcomed {
        stmt.execute(params![&group.0[..], &d.0[..]])
            .map_err(map_err)?;
    }
    tx.execute(
        "DELETE FROM group_leaves WHERE group_id = ?1 AND device NOT IN \
         (SELECT device FROM group_members WHERE group_id = ?1)",
        [&group.0[..]],
    )
    .map_err(map_err)?;
    tx.execute(
        "DELETE FROM group_members WHERE group_id = ?1 AND device IN \
         (SELECT device FROM group_leaves WHERE group_id = ?1)",
        [&group.0[..]],
    )
    .map_err(map_err)?;
    Ok(())
}

fn members(tx: &Connection, group: &GroupId) -> Result<Vec<DeviceId>, StoreError> {
    let mut stmt = tx
        .prepare_cached("SELECT device FROM group_members WHERE group_id = ?1")
        .map_err(map_err)?;
    let rows = stmt
        .query_map([&group.0[..]], |r| r.get::<_, Vec<u8>>(0))
        .map_err(map_err)?;
    let mut out = Vec::new();
    for r in rows {
        out.push(DeviceId(arr32(r.map_err(map_err)?)?));
    }
    Ok(out)
}

fn stock(c: &Connection, device: &DeviceId) -> Result<KeyPackageStock, StoreError> {
    let n: i64 = c
        .query_row(
            "SELECT count(*) FROM key_packages WHERE device = ?1",
            [&device.0[..]],
            |r| r.get(0),
        )
        .map_err(map_err)?;
    let lr: Option<i64> = c
        .query_row(
            "SELECT 1 FROM last_resort_key_packages WHERE device = ?1",
            [&device.0[..]],
            |r| r.get(0),
        )
        .optional()
        .map_err(map_err)?;
    Ok(KeyPackageStock {
        one_time: u32::try_from(n).unwrap_or(u32::MAX),
        last_resort: lr.is_some(),
    })
}

/// Deletes `device`'s mailbox and the messages no other mailbox holds.
fn drop_mailbox(tx: &rusqlite::Transaction<'_>, d: &[u8]) -> Result<(), StoreError> {
    let ids: Vec<i64> = {
        let mut stmt = tx
            .prepare("DELETE FROM mailbox WHERE device = ?1 RETURNING message")
            .map_err(map_err)?;
        let rows = stmt.query_map([d], |r| r.get(0)).map_err(map_err)?;
        rows.collect::<Result<_, _>>().map_err(map_err)?
    };
    for id in ids {
        tx.execute(
            "DELETE FROM messages WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM mailbox WHERE message = ?1)",
            [id],
        )
        .map_err(map_err)?;
    }
    for sql in [
        "DELETE FROM key_packages WHERE device = ?1",
        "DELETE FROM last_resort_key_packages WHERE device = ?1",
        "DELETE FROM group_members WHERE device = ?1",
    ] {
        tx.execute(sql, [d]).map_err(map_err)?;
    }
    Ok(())
}

fn count(c: &Connection, sql: &str) -> Result<u64, StoreError> {
    let n: i64 = c.query_row(sql, [], |r| r.get(0)).map_err(map_err)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.with(|c| count(c, "SELECT 1").map(|_| ())).await
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        self.with(|c| {
            Ok(Stats {
                accounts: count(c, "SELECT count(*) FROM accounts")?,
                live_devices: count(c, "SELECT count(*) FROM devices WHERE revoked = 0")?,
                groups: count(c, "SELECT count(*) FROM groups")?,
                pending_deliveries: count(c, "SELECT count(*) FROM mailbox")?,
                key_packages: count(c, "SELECT count(*) FROM key_packages")?,
            })
        })
        .await
    }

    async fn revoke_device(&self, device: DeviceId) -> Result<bool, StoreError> {
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let n = tx
                .execute(
                    "UPDATE devices SET revoked = 1 WHERE device = ?1 AND revoked = 0",
                    [&device.0[..]],
                )
                .map_err(map_err)?;
            if n == 0 {
                return Ok(false);
            }
            drop_mailbox(&tx, &device.0)?;
            tx.commit().map_err(map_err)?;
            Ok(true)
        })
        .await
    }

    async fn add_invites(&self, hashes: Vec<[u8; 32]>, expires_ms: u64) -> Result<(), StoreError> {
        self.with(move |c| add_invites(c, &hashes, expires_ms))
            .await
    }

    async fn register(&self, a: NewAccount) -> Result<(), RegisterError> {
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            if let Some(h) = a.invite_hash {
                let n = tx
                    .execute(
                        "DELETE FROM invites WHERE hash = ?1 AND expires_ms > ?2",
                        params![&h[..], ms(a.now_ms)],
                    )
                    .map_err(map_err)?;
                if n != 1 {
                    return Err(RegisterError::InvalidInvite);
                }
            }
            let taken: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM accounts WHERE handle = ?1",
                    [a.handle.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(map_err)?;
            if taken.is_some() {
                return Err(RegisterError::HandleTaken);
            }
            let exists: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM accounts WHERE account = ?1 \
                     UNION SELECT 1 FROM devices WHERE device = ?2",
                    params![&a.account.0[..], &a.device.0[..]],
                    |r| r.get(0),
                )
                .optional()
                .map_err(map_err)?;
            if exists.is_some() {
                return Err(RegisterError::AlreadyRegistered);
            }
            tx.execute(
                "INSERT INTO accounts (account, handle, created_ms) VALUES (?1, ?2, ?3)",
                params![&a.account.0[..], a.handle.as_str(), ms(a.now_ms)],
            )
            .map_err(map_err)?;
            tx.execute(
                "INSERT INTO devices (device, account, created_ms) VALUES (?1, ?2, ?3)",
                params![&a.device.0[..], &a.account.0[..], ms(a.now_ms)],
            )
            .map_err(map_err)?;
            put_list(&tx, &a.device_list)?;
            tx.commit().map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn device(&self, device: DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        self.with(move |c| {
            let row: Option<(Vec<u8>, String, i64)> = c
                .query_row(
                    "SELECT d.account, a.handle, d.revoked FROM devices d \
                     JOIN accounts a ON a.account = d.account WHERE d.device = ?1",
                    [&device.0[..]],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(map_err)?;
            let Some((account, handle, revoked)) = row else {
                return Ok(None);
            };
            Ok(Some(DeviceRecord {
                account: AccountId(arr32(account)?),
                handle: Handle::new(&handle)
                    .map_err(|_| StoreError::Internal("stored handle invalid".into()))?,
                revoked: revoked != 0,
            }))
        })
        .await
    }

    async fn upload_key_packages(
        &self,
        device: DeviceId,
        one_time: Vec<StoredKeyPackage>,
        last_resort: Option<StoredKeyPackage>,
        cap: u32,
    ) -> Result<KeyPackageStock, StoreError> {
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let mut have = stock(&tx, &device)?.one_time;
            for kp in one_time {
                if have >= cap {
                    break;
                }
                let n = tx
                    .execute(
                        "INSERT OR IGNORE INTO key_packages (hash, device, data) VALUES (?1, ?2, ?3)",
                        params![&kp.hash[..], &device.0[..], &kp.data],
                    )
                    .map_err(map_err)?;
                have += u32::try_from(n).unwrap_or(0);
            }
            if let Some(kp) = last_resort {
                tx.execute(
                    "INSERT INTO last_resort_key_packages (device, hash, data) VALUES (?1, ?2, ?3) \
                     ON CONFLICT(device) DO UPDATE SET hash = excluded.hash, data = excluded.data",
                    params![&device.0[..], &kp.hash[..], &kp.data],
                )
                .map_err(map_err)?;
            }
            let s = stock(&tx, &device)?;
            tx.commit().map_err(map_err)?;
            Ok(s)
        })
        .await
    }

    async fn key_package_stock(&self, device: DeviceId) -> Result<KeyPackageStock, StoreError> {
        self.with(move |c| stock(c, &device)).await
    }

    async fn claim_key_packages(
        &self,
        handle: Handle,
    ) -> Result<Option<(AccountId, Vec<Claimed>)>, StoreError> {
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let account: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT account FROM accounts WHERE handle = ?1",
                    [handle.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(map_err)?;
            let Some(account) = account else {
                return Ok(None);
            };
            let devices: Vec<Vec<u8>> = {
                let mut stmt = tx
                    .prepare("SELECT device FROM devices WHERE account = ?1 AND revoked = 0")
                    .map_err(map_err)?;
                let rows = stmt.query_map([&account], |r| r.get(0)).map_err(map_err)?;
                rows.collect::<Result<_, _>>().map_err(map_err)?
            };
            let mut out = Vec::new();
            for d in devices {
                out.extend(take_key_package(&tx, &d)?);
            }
            tx.commit().map_err(map_err)?;
            Ok(Some((AccountId(arr32(account)?), out)))
        })
        .await
    }

    async fn claim_device_key_package(
        &self,
        device: DeviceId,
    ) -> Result<Option<Claimed>, StoreError> {
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let live: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM devices WHERE device = ?1 AND revoked = 0",
                    [&device.0[..]],
                    |r| r.get(0),
                )
                .optional()
                .map_err(map_err)?;
            if live.is_none() {
                return Ok(None);
            }
            let got = take_key_package(&tx, &device.0)?;
            tx.commit().map_err(map_err)?;
            Ok(got)
        })
        .await
    }

    async fn device_list(
        &self,
        account: AccountId,
    ) -> Result<Option<SignedDeviceList>, StoreError> {
        self.with(move |c| get_list(c, &account)).await
    }

    async fn publish_device_list(
        &self,
        list: SignedDeviceList,
        now_ms: u64,
    ) -> Result<DeviceListChange, DeviceListError> {
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let current = get_list(&tx, &list.account)?;
            if let Some(cur) = current.as_ref().filter(|c| c.version >= list.version) {
                return Err(DeviceListError::Stale(cur.version));
            }
            let mut added = Vec::new();
            for d in &list.devices {
                let owner: Option<Vec<u8>> = tx
                    .query_row(
                        "SELECT account FROM devices WHERE device = ?1",
                        [&d.0[..]],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(map_err)?;
                match owner {
                    Some(a) if a == list.account.0 => {}
                    Some(_) => return Err(DeviceListError::ForeignDevice),
                    None => {
                        tx.execute(
                            "INSERT INTO devices (device, account, created_ms) VALUES (?1, ?2, ?3)",
                            params![&d.0[..], &list.account.0[..], ms(now_ms)],
                        )
                        .map_err(map_err)?;
                        added.push(*d);
                    }
                }
            }
            let mut revoked = Vec::new();
            {
                let mut stmt = tx
                    .prepare("SELECT device FROM devices WHERE account = ?1 AND revoked = 0")
                    .map_err(map_err)?;
                let rows = stmt
                    .query_map([&list.account.0[..]], |r| r.get::<_, Vec<u8>>(0))
                    .map_err(map_err)?;
                for r in rows {
                    let d = DeviceId(arr32(r.map_err(map_err)?)?);
                    if !list.devices.contains(&d) {
                        revoked.push(d);
                    }
                }
            }
            for d in &revoked {
                tx.execute(
                    "UPDATE devices SET revoked = 1 WHERE device = ?1",
                    [&d.0[..]],
                )
                .map_err(map_err)?;
                tx.execute("DELETE FROM key_packages WHERE device = ?1", [&d.0[..]])
                    .map_err(map_err)?;
                tx.execute(
                    "DELETE FROM last_resort_key_packages WHERE device = ?1",
                    [&d.0[..]],
                )
                .map_err(map_err)?;
                tx.execute("DELETE FROM group_members WHERE device = ?1", [&d.0[..]])
                    .map_err(map_err)?;
            }
            put_list(&tx, &list)?;
            tx.commit().map_err(map_err)?;
            Ok(DeviceListChange { added, revoked })
        })
        .await
    }

    async fn set_kill_record(&self, r: SignedKillRecord) -> Result<bool, StoreError> {
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            if get_kill(&tx, &r.account)?.is_some_and(|old| old.version >= r.version) {
                return Ok(false);
            }
            put_account_record(
                &tx,
                "INSERT INTO kill_records (account, version, data) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(account) DO UPDATE SET version = excluded.version, data = excluded.data",
                &r.account,
                r.version,
                &r,
            )?;
            tx.commit().map_err(map_err)?;
            Ok(true)
        })
        .await
    }

    async fn kill_record(
        &self,
        account: AccountId,
    ) -> Result<Option<SignedKillRecord>, StoreError> {
        self.with(move |c| get_kill(c, &account)).await
    }

    async fn wipe_target(&self, handle: Handle) -> Result<Option<WipeTarget>, StoreError> {
        self.with(move |c| {
            let account: Option<Vec<u8>> = c
                .query_row(
                    "SELECT account FROM accounts WHERE handle = ?1",
                    [handle.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(map_err)?;
            // An unknown handle runs the same queries, on an account id no
            // key can have, so its answer takes as long as an account's.
            let found = account.is_some();
            let account = AccountId(match account {
                Some(a) => arr32(a)?,
                None => [0; 32],
            });
            let mut stmt = c
                .prepare("SELECT device FROM devices WHERE account = ?1 AND revoked = 0")
                .map_err(map_err)?;
            let rows = stmt
                .query_map([&account.0[..]], |r| r.get::<_, Vec<u8>>(0))
                .map_err(map_err)?;
            let mut devices = Vec::new();
            for r in rows {
                devices.push(DeviceId(arr32(r.map_err(map_err)?)?));
            }
            let record = get_kill(c, &account)?;
            Ok(found.then_some(WipeTarget {
                account,
                record,
                devices,
            }))
        })
        .await
    }

    async fn forget_device(&self, device: DeviceId) -> Result<(), StoreError> {
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            drop_mailbox(&tx, &device.0)?;
            tx.execute("DELETE FROM devices WHERE device = ?1", [&device.0[..]])
                .map_err(map_err)?;
            tx.commit().map_err(map_err)
        })
        .await
    }

    async fn begin_blob(
        &self,
        blob: BlobId,
        sender: DeviceId,
        group: GroupId,
        total: u64,
        expires_ms: u64,
    ) -> Result<Option<BlobState>, StoreError> {
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let row: Option<(Vec<u8>, i64, i64)> = tx
                .query_row(
                    "SELECT sender, total, received FROM blobs WHERE blob = ?1",
                    [&blob.0[..]],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(map_err)?;
            if let Some((owner, t, r)) = row {
                return Ok((owner == sender.0).then_some(BlobState {
                    total: u64::try_from(t).unwrap_or(0),
                    received: u64::try_from(r).unwrap_or(0),
                }));
            }
            let all = members(&tx, &group)?;
            if !all.contains(&sender) {
                return Ok(None);
            }
            tx.execute(
                "INSERT INTO blobs (blob, sender, total, received, expires_ms) VALUES (?1, ?2, ?3, 0, ?4)",
                params![&blob.0[..], &sender.0[..], ms(total), ms(expires_ms)],
            )
            .map_err(map_err)?;
            for d in all.iter().filter(|d| **d != sender) {
                tx.execute(
                    "INSERT INTO blob_recipients (blob, device) VALUES (?1, ?2)",
                    params![&blob.0[..], &d.0[..]],
                )
                .map_err(map_err)?;
            }
            tx.commit().map_err(map_err)?;
            Ok(Some(BlobState { total, received: 0 }))
        })
        .await
    }

    async fn blob_progress(&self, blob: BlobId, received: u64) -> Result<(), StoreError> {
        self.with(move |c| {
            c.execute(
                "UPDATE blobs SET received = ?2 WHERE blob = ?1",
                params![&blob.0[..], ms(received)],
            )
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn blob_for(
        &self,
        blob: BlobId,
        device: DeviceId,
        now_ms: u64,
    ) -> Result<Option<BlobState>, StoreError> {
        self.with(move |c| {
            let row: Option<(i64, i64)> = c
                .query_row(
                    "SELECT b.total, b.received FROM blobs b JOIN blob_recipients r ON r.blob = b.blob \
                     WHERE b.blob = ?1 AND r.device = ?2 AND b.expires_ms > ?3",
                    params![&blob.0[..], &device.0[..], ms(now_ms)],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(map_err)?;
            Ok(row.map(|(t, r)| BlobState {
                total: u64::try_from(t).unwrap_or(0),
                received: u64::try_from(r).unwrap_or(0),
            }))
        })
        .await
    }

    async fn blob_fetched(&self, blob: BlobId, device: DeviceId) -> Result<bool, StoreError> {
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            tx.execute(
                "DELETE FROM blob_recipients WHERE blob = ?1 AND device = ?2",
                params![&blob.0[..], &device.0[..]],
            )
            .map_err(map_err)?;
            let left: i64 = tx
                .query_row(
                    "SELECT count(*) FROM blob_recipients WHERE blob = ?1",
                    [&blob.0[..]],
                    |r| r.get(0),
                )
                .map_err(map_err)?;
            let done = left == 0;
            if done {
                tx.execute("DELETE FROM blobs WHERE blob = ?1", [&blob.0[..]])
                    .map_err(map_err)?;
            }
            tx.commit().map_err(map_err)?;
            Ok(done)
        })
        .await
    }

    async fn purge_blobs(&self, now_ms: u64) -> Result<Vec<BlobId>, StoreError> {
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let ids: Vec<Vec<u8>> = {
                let mut st = tx
                    .prepare("DELETE FROM blobs WHERE expires_ms <= ?1 RETURNING blob")
                    .map_err(map_err)?;
                let rows = st.query_map([ms(now_ms)], |r| r.get(0)).map_err(map_err)?;
                rows.collect::<Result<_, _>>().map_err(map_err)?
            };
            for id in &ids {
                tx.execute("DELETE FROM blob_recipients WHERE blob = ?1", [id])
                    .map_err(map_err)?;
            }
            tx.commit().map_err(map_err)?;
            ids.into_iter()
                .map(|v| {
                    <[u8; 16]>::try_from(v)
                        .map(BlobId)
                        .map_err(|_| StoreError::Internal("stored blob id is not 16 bytes".into()))
                })
                .collect()
        })
        .await
    }

    async fn send_to_device(
        &self,
        m: Outgoing,
        recipient: DeviceId,
        mailbox_cap: MailboxCap,
    ) -> Result<SendOutcome, SendError> {
        self.batched(move |c| store_once(c, &m, vec![recipient], mailbox_cap))
            .await
    }

    async fn commit(&self, w: CommitWrite) -> Result<CommitOutcome, CommitError> {
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let key = seen_key(&w.sender.0, &w.msg_id);
            let applied: Option<i64> = tx
                .query_row(
                    "SELECT epoch FROM seen_commits WHERE key = ?1",
                    [&key[..]],
                    |r| r.get(0),
                )
                .optional()
                .map_err(map_err)?;
            if let Some(epoch) = applied {
                // A retry of a commit whose answer was lost.
                return Ok(CommitOutcome {
                    epoch: u64::try_from(epoch).unwrap_or(0),
                    commit: Vec::new(),
                    welcome: Vec::new(),
                });
            }
            let current: Option<i64> = tx
                .query_row(
                    "SELECT epoch FROM groups WHERE group_id = ?1",
                    [&w.group.0[..]],
                    |r| r.get(0),
                )
                .optional()
                .map_err(map_err)?;
            let before = match current {
                None if w.epoch == 0 => Vec::new(),
                None => return Err(CommitError::StaleEpoch(0)),
                Some(e) => {
                    let e = u64::try_from(e).unwrap_or(0);
                    if e != w.epoch {
                        return Err(CommitError::StaleEpoch(e));
                    }
                    let m = members(&tx, &w.group)?;
                    if !m.contains(&w.sender) && !w.joins {
                        return Err(CommitError::NotMember);
                    }
                    m
                }
            };
            let new_epoch = w.epoch + 1;
            tx.execute(
                "INSERT INTO groups (group_id, epoch) VALUES (?1, ?2) \
                 ON CONFLICT(group_id) DO UPDATE SET epoch = excluded.epoch",
                params![&w.group.0[..], ms(new_epoch)],
            )
            .map_err(map_err)?;
            tx.execute(
                "INSERT INTO group_states (group_id, state, group_info) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(group_id) DO UPDATE SET state = excluded.state, \
                 group_info = excluded.group_info",
                params![&w.group.0[..], &w.state, &w.group_info],
            )
            .map_err(map_err)?;
            tx.execute(
                "DELETE FROM group_proposals WHERE group_id = ?1",
                [&w.group.0[..]],
            )
            .map_err(map_err)?;
            tx.execute(
                "DELETE FROM group_members WHERE group_id = ?1",
                [&w.group.0[..]],
            )
            .map_err(map_err)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO group_members (group_id, device) VALUES (?1, ?2)",
                    )
                    .map_err(map_err)?;
                for d in &w.members {
                    stmt.execute(params![&w.group.0[..], &d.0[..]])
                        .map_err(map_err)?;
                }
            }
            forget_leaves(&tx, &w.group, &w.welcome_recipients)?;
            let mut commit = Vec::new();
            if let Some(m) = &w.commit {
                let to: Vec<DeviceId> = before.into_iter().filter(|d| *d != w.sender).collect();
                commit =
                    insert_message(&tx, m, &to, w.mailbox_cap)?.ok_or(CommitError::MailboxFull)?;
            }
            let mut welcome = Vec::new();
            if let Some(m) = &w.welcome {
                welcome = insert_message(&tx, m, &w.welcome_recipients, w.mailbox_cap)?
                    .ok_or(CommitError::MailboxFull)?;
            }
            tx.execute(
                "INSERT INTO seen_commits (key, epoch, expires_ms) VALUES (?1, ?2, ?3)",
                params![&key[..], ms(new_epoch), ms(w.expires_ms)],
            )
            .map_err(map_err)?;
            tx.commit().map_err(map_err)?;
            Ok(CommitOutcome {
                epoch: new_epoch,
                commit,
                welcome,
            })
        })
        .await
    }

    async fn send(&self, m: Outgoing, mailbox_cap: MailboxCap) -> Result<SendOutcome, SendError> {
        self.batched(move |c| send_one(c, &m, mailbox_cap)).await
    }

    async fn group_state(&self, group: GroupId) -> Result<Option<GroupState>, StoreError> {
        self.with(move |c| {
            let row: Option<(i64, Vec<u8>, Vec<u8>)> = c
                .query_row(
                    "SELECT g.epoch, s.state, s.group_info FROM groups g \
                     JOIN group_states s ON s.group_id = g.group_id WHERE g.group_id = ?1",
                    [&group.0[..]],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(map_err)?;
            let Some((epoch, state, group_info)) = row else {
                return Ok(None);
            };
            let mut stmt = c
                .prepare_cached(
                    "SELECT data FROM group_proposals WHERE group_id = ?1 AND epoch = ?2 \
                     ORDER BY id",
                )
                .map_err(map_err)?;
            let proposals = stmt
                .query_map(params![&group.0[..], epoch], |r| r.get(0))
                .map_err(map_err)?
                .collect::<Result<Vec<Vec<u8>>, _>>()
                .map_err(map_err)?;
            Ok(Some(GroupState {
                epoch: u64::try_from(epoch).unwrap_or(0),
                state,
                group_info,
                proposals,
            }))
        })
        .await
    }

    async fn applied_commit(
        &self,
        sender: DeviceId,
        msg_id: MessageId,
    ) -> Result<Option<u64>, StoreError> {
        self.with(move |c| {
            let key = seen_key(&sender.0, &msg_id);
            let epoch: Option<i64> = c
                .query_row(
                    "SELECT epoch FROM seen_commits WHERE key = ?1",
                    [&key[..]],
                    |r| r.get(0),
                )
                .optional()
                .map_err(map_err)?;
            Ok(epoch.map(|e| u64::try_from(e).unwrap_or(0)))
        })
        .await
    }

    async fn propose(&self, p: ProposalWrite) -> Result<SendOutcome, CommitError> {
        self.batched(move |c| {
            let current: Option<i64> = c
                .query_row(
                    "SELECT epoch FROM groups WHERE group_id = ?1",
                    [&p.message.group.0[..]],
                    |r| r.get(0),
                )
                .optional()
                .map_err(map_err)?;
            let current = current.map_or(0, |e| u64::try_from(e).unwrap_or(0));
            if current != p.epoch {
                return Err(CommitError::StaleEpoch(current));
            }
            let out = send_one(c, &p.message, p.mailbox_cap).map_err(|e| match e {
                SendError::NotMember => CommitError::NotMember,
                SendError::StaleEpoch(e) => CommitError::StaleEpoch(e),
                SendError::MailboxFull => CommitError::MailboxFull,
                SendError::Store(e) => CommitError::Store(e),
            })?;
            if !out.duplicate {
                c.execute(
                    "INSERT INTO group_proposals (group_id, epoch, data) VALUES (?1, ?2, ?3)",
                    params![&p.message.group.0[..], ms(p.epoch), &p.message.payload],
                )
                .map_err(map_err)?;
            }
            Ok(out)
        })
        .await
    }

    async fn fetch(
        &self,
        device: DeviceId,
        after: u64,
        limit: u32,
        now_ms: u64,
    ) -> Result<Vec<MailboxEntry>, StoreError> {
        self.with(move |c| mailbox_after(c, &device, after, limit, now_ms))
            .await
    }

    async fn fetch_many(
        &self,
        wants: Vec<(DeviceId, u64)>,
        limit: u32,
        now_ms: u64,
    ) -> Result<Vec<Option<Vec<MailboxEntry>>>, StoreError> {
        self.with(move |c| {
            let mut live = c
                .prepare_cached("SELECT revoked FROM devices WHERE device = ?1")
                .map_err(map_err)?;
            let mut out = Vec::with_capacity(wants.len());
            for (device, after) in wants {
                let revoked: Option<i64> = live
                    .query_row([&device.0[..]], |r| r.get(0))
                    .optional()
                    .map_err(map_err)?;
                out.push(match revoked {
                    Some(0) => Some(mailbox_after(c, &device, after, limit, now_ms)?),
                    _ => None,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn mailbox_heads(
        &self,
        devices: Vec<DeviceId>,
    ) -> Result<Vec<(DeviceId, u64)>, StoreError> {
        self.with(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT max(seq) FROM mailbox WHERE device = ?1")
                .map_err(map_err)?;
            let mut out = Vec::new();
            for d in devices {
                let head: Option<i64> = stmt
                    .query_row(params![&d.0[..]], |r| r.get(0))
                    .map_err(map_err)?;
                if let Some(h) = head {
                    out.push((d, u64::try_from(h).unwrap_or(0)));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn ack(&self, device: DeviceId, seqs: Vec<u64>) -> Result<(), StoreError> {
        self.batched(move |tx| {
            {
                let mut del = tx
                    .prepare_cached(
                        "DELETE FROM mailbox WHERE seq = ?1 AND device = ?2 RETURNING message",
                    )
                    .map_err(map_err)?;
                let mut orphan = tx
                    .prepare_cached(
                        "DELETE FROM messages WHERE id = ?1 \
                         AND NOT EXISTS (SELECT 1 FROM mailbox WHERE message = ?1)",
                    )
                    .map_err(map_err)?;
                for s in seqs {
                    let msg: Option<i64> = del
                        .query_row(params![ms(s), &device.0[..]], |r| r.get(0))
                        .optional()
                        .map_err(map_err)?;
                    if let Some(id) = msg {
                        orphan.execute([id]).map_err(map_err)?;
                    }
                }
            }
            Ok(())
        })
        .await
    }

    async fn purge_expired(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let now = ms(now_ms);
            tx.execute(
                "DELETE FROM mailbox WHERE message IN (SELECT id FROM messages WHERE expires_ms <= ?1)",
                [now],
            )
            .map_err(map_err)?;
            let n = tx
                .execute("DELETE FROM messages WHERE expires_ms <= ?1", [now])
                .map_err(map_err)?;
            tx.execute("DELETE FROM seen_sends WHERE expires_ms <= ?1", [now])
                .map_err(map_err)?;
            tx.execute("DELETE FROM seen_commits WHERE expires_ms <= ?1", [now])
                .map_err(map_err)?;
            tx.execute("DELETE FROM invites WHERE expires_ms <= ?1", [now])
                .map_err(map_err)?;
            tx.execute("DELETE FROM kill_guesses WHERE until_ms <= ?1", [now])
                .map_err(map_err)?;
            tx.commit().map_err(map_err)?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    async fn kill_guesses(&self, key: [u8; 32], now_ms: u64) -> Result<Guesses, StoreError> {
        self.with(move |c| {
            let row: Option<(i64, i64)> = c
                .query_row(
                    "SELECT failures, until_ms FROM kill_guesses WHERE key = ?1 AND until_ms > ?2",
                    params![&key[..], ms(now_ms)],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(map_err)?;
            Ok(row.map_or(Guesses::default(), |(f, u)| Guesses {
                failures: u32::try_from(f).unwrap_or(u32::MAX),
                until_ms: u64::try_from(u).unwrap_or(0),
            }))
        })
        .await
    }

    async fn kill_guess_failed(
        &self,
        keys: Vec<[u8; 32]>,
        now_ms: u64,
        window_ms: u64,
    ) -> Result<(), StoreError> {
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let until = ms(now_ms.saturating_add(window_ms));
            for key in &keys {
                tx.execute(
                    "INSERT INTO kill_guesses (key, failures, until_ms) VALUES (?1, 1, ?3) \
                     ON CONFLICT(key) DO UPDATE SET \
                     failures = CASE WHEN until_ms > ?2 THEN failures + 1 ELSE 1 END, \
                     until_ms = CASE WHEN until_ms > ?2 THEN until_ms ELSE ?3 END",
                    params![&key[..], ms(now_ms), until],
                )
                .map_err(map_err)?;
            }
            tx.commit().map_err(map_err)
        })
        .await
    }

    async fn set_block(
        &self,
        account: AccountId,
        blocked: AccountId,
        block: bool,
    ) -> Result<(), StoreError> {
        self.with(move |c| {
            let sql = if block {
                "INSERT OR IGNORE INTO blocks (account, blocked) VALUES (?1, ?2)"
            } else {
                "DELETE FROM blocks WHERE account = ?1 AND blocked = ?2"
            };
            c.execute(sql, params![&account.0[..], &blocked.0[..]])
                .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn blocked_by(&self, handle: Handle, account: AccountId) -> Result<bool, StoreError> {
        self.with(move |c| {
            c.query_row(
                "SELECT EXISTS (SELECT 1 FROM blocks b JOIN accounts a ON a.account = b.account \
                 WHERE a.handle = ?1 AND b.blocked = ?2)",
                params![handle.as_str(), &account.0[..]],
                |r| r.get(0),
            )
            .map_err(map_err)
        })
        .await
    }

    async fn leave_group(&self, group: GroupId, device: DeviceId) -> Result<(), StoreError> {
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            tx.execute(
                "INSERT OR IGNORE INTO group_leaves (group_id, device) \
                 SELECT group_id, device FROM group_members WHERE group_id = ?1 AND device = ?2",
                params![&group.0[..], &device.0[..]],
            )
            .map_err(map_err)?;
            tx.execute(
                "DELETE FROM group_members WHERE group_id = ?1 AND device = ?2",
                params![&group.0[..], &device.0[..]],
            )
            .map_err(map_err)?;
            tx.commit().map_err(map_err)
        })
        .await
    }

    async fn directory_write(&self, w: DirectoryWrite) -> Result<bool, StoreError> {
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            if let Some(epoch) = w.epoch {
                let stored: Option<i64> = tx
                    .query_row(
                        "SELECT epoch FROM directory_epoch WHERE singleton = 0",
                        [],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(map_err)?;
                let newer = stored.is_none_or(|s| u64::try_from(s).is_ok_and(|s| epoch > s));
                if w.newer_only && !newer {
                    return Ok(false);
                }
                tx.execute(
                    "INSERT INTO directory_epoch (singleton, epoch) VALUES (0, ?1) \
                     ON CONFLICT (singleton) DO UPDATE SET epoch = excluded.epoch",
                    params![to_i64(epoch)?],
                )
                .map_err(map_err)?;
            }
            {
                let mut put = tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO directory_records (id, record) VALUES (?1, ?2)",
                    )
                    .map_err(map_err)?;
                for (id, record) in &w.records {
                    put.execute(params![id, record]).map_err(map_err)?;
                }
                let mut put = tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO directory_states (label, epoch, record) \
                         VALUES (?1, ?2, ?3)",
                    )
                    .map_err(map_err)?;
                for (label, epoch, record) in &w.states {
                    put.execute(params![label, to_i64(*epoch)?, record])
                        .map_err(map_err)?;
                }
            }
            tx.commit().map_err(map_err)?;
            Ok(true)
        })
        .await
    }

    async fn directory_records(&self, ids: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, StoreError> {
        self.with(move |c| {
            let mut get = c
                .prepare_cached("SELECT record FROM directory_records WHERE id = ?1")
                .map_err(map_err)?;
            let mut found = Vec::with_capacity(ids.len());
            for id in &ids {
                if let Some(r) = get
                    .query_row(params![id], |r| r.get::<_, Vec<u8>>(0))
                    .optional()
                    .map_err(map_err)?
                {
                    found.push(r);
                }
            }
            Ok(found)
        })
        .await
    }

    async fn directory_states(&self, labels: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, StoreError> {
        self.with(move |c| {
            let mut get = c
                .prepare_cached("SELECT record FROM directory_states WHERE label = ?1")
                .map_err(map_err)?;
            let mut found = Vec::new();
            for label in &labels {
                let rows = get
                    .query_map(params![label], |r| r.get::<_, Vec<u8>>(0))
                    .map_err(map_err)?;
                for r in rows {
                    found.push(r.map_err(map_err)?);
                }
            }
            Ok(found)
        })
        .await
    }

    async fn put_directory_root(&self, epoch: u64, hash: [u8; 32]) -> Result<(), StoreError> {
        self.with(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO directory_roots (epoch, hash) VALUES (?1, ?2)",
                params![to_i64(epoch)?, &hash[..]],
            )
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn directory_turn(&self) -> Result<DirectoryTurn, StoreError> {
        Ok(DirectoryTurn::holding(
            self.directory.clone().lock_owned().await,
        ))
    }

    async fn directory_roots(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, [u8; 32])>, StoreError> {
        self.with(move |c| {
            let mut q = c
                .prepare_cached(
                    "SELECT epoch, hash FROM directory_roots WHERE epoch >= ?1 AND epoch <= ?2 \
                     ORDER BY epoch",
                )
                .map_err(map_err)?;
            let rows = q
                .query_map(params![to_i64(from)?, to_i64(to)?], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
                })
                .map_err(map_err)?;
            let mut roots = Vec::new();
            for r in rows {
                let (epoch, hash) = r.map_err(map_err)?;
                let epoch = u64::try_from(epoch)
                    .map_err(|_| StoreError::Internal("negative directory epoch".into()))?;
                roots.push((epoch, arr32(hash)?));
            }
            Ok(roots)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call that panics is an error for its caller, not the end of the
    /// store: the next calls, lone and batched, are answered.
    #[tokio::test]
    async fn a_store_call_that_panics_fails_and_the_store_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("server.db")).unwrap();
        let lone = s
            .with(|_| -> Result<(), StoreError> { panic!("a lone call") })
            .await;
        assert!(matches!(lone, Err(StoreError::Internal(_))), "{lone:?}");
        let batched = s
            .batched(|_| -> Result<(), StoreError> { panic!("a batched call") })
            .await;
        assert!(
            matches!(batched, Err(StoreError::Internal(_))),
            "{batched:?}"
        );
        s.add_invites(vec![[7; 32]], u64::MAX / 2).await.unwrap();
        s.ack(DeviceId([1; 32]), vec![1]).await.unwrap();
        assert_eq!(s.stats().await.unwrap().accounts, 0);
    }
}
