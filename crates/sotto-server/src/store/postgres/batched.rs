//! Group commit for the PostgreSQL store. Sends and acknowledgements that
//! arrive while a batch is being written wait for the next batch, which
//! takes them all in one transaction: one commit, one WAL flush, and a
//! handful of round trips for the whole batch instead of each.
//!
//! Why: with a transaction per send, at 1,000 sends/s on two nodes, half of
//! the database's busy connections sat in `COMMIT` waiting for the WAL
//! write lock, and most of the rest waited for their node's next statement
//! (BENCHMARKS.md, "network"). And the recipients of one group message ack
//! at once: a transaction each held the pool for seconds.
//!
//! Inside a batch, each send gets the answer it would have had alone, in the
//! batch's order (the conformance suite's `concurrent_sends_*` checks): a
//! refused send stores nothing and undoes no other, and an id seen before,
//! or earlier in the batch, is a duplicate. Locks are taken in the order
//! every writer takes them: groups, then send ids, then mailbox heads, each
//! sorted. The heads are locked last, after the messages' rows are written,
//! and held for two statements and the commit: every send to a mailbox
//! waits for them.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use sotto_proto::DeviceId;
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::oneshot;

use super::{ATTEMPTS, Fail, TxResult, arr, kind_to_i16, map_err, ms, retryable, unsigned};
use crate::store::{MailboxCap, Outgoing, Posted, SendError, SendOutcome, StoreError};

/// Requests waiting for the next batch (see the module): `T` a request,
/// `R` its answer.
pub(super) struct Gather<T, R> {
    waiting: Mutex<Vec<(T, oneshot::Sender<R>)>>,
    /// Held while a batch is written.
    writer: tokio::sync::Mutex<()>,
}

impl<T, R> Default for Gather<T, R> {
    fn default() -> Self {
        Self {
            waiting: Mutex::new(Vec::new()),
            writer: tokio::sync::Mutex::new(()),
        }
    }
}

impl<T, R> std::fmt::Debug for Gather<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gather")
    }
}

impl<T: Send + 'static, R: Send + 'static> Gather<T, R> {
    /// Queues `item` and answers it once the batch holding it is written.
    /// The caller that finds no batch being written writes every request
    /// waiting, with `write` (one answer per request, in their order).
    pub(super) async fn submit<F, Fut>(&self, item: T, write: F) -> Result<R, StoreError>
    where
        F: FnOnce(Vec<T>) -> Fut,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        let (done, mut answer) = oneshot::channel();
        self.queue().push((item, done));
        let writer = self.writer.lock().await;
        // The batch before took ours along.
        if let Ok(r) = answer.try_recv() {
            return Ok(r);
        }
        let (items, dones): (Vec<T>, Vec<_>) =
            std::mem::take(&mut *self.queue()).into_iter().unzip();
        let written = write(items);
        // Written on a task of its own: a request whose caller goes away
        // (its connection closed) still answers the others in its batch.
        let task = tokio::spawn(async move {
            for (done, r) in dones.into_iter().zip(written.await) {
                let _ = done.send(r);
            }
        });
        let _ = task.await;
        drop(writer);
        answer
            .await
            .map_err(|_| StoreError::Internal("a batched write vanished".into()))
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<(T, oneshot::Sender<R>)>> {
        // A poisoned lock only means a thread panicked holding it; the queue
        // is consistent at every step.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Deletes those of `messages` (the ids deleted mailbox entries held) that
/// no mailbox entry holds any more. No row is counted down: the recipients
/// of a group message ack at once, and a counter on the message's row
/// made each ack wait for the one before it to commit (a thousand acks of
/// one Welcome held the pool for seconds). Inside a transaction, an entry
/// another transaction is deleting at the same moment still counts, so the
/// last two acks may each leave the message to the other: [`ack_batch`]
/// runs this again after its commit, when the last to commit sees every
/// deletion, and `purge_expired` sweeps what a crash in between left.
pub(super) async fn release_messages(
    c: &mut PgConnection,
    mut messages: Vec<i64>,
) -> Result<(), sqlx::Error> {
    if messages.is_empty() {
        return Ok(());
    }
    messages.sort_unstable();
    messages.dedup();
    sqlx::query(
        "DELETE FROM messages m WHERE m.id = ANY($1) \
         AND NOT EXISTS (SELECT 1 FROM mailbox b WHERE b.message = m.id)",
    )
    .bind(&messages)
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// Deletes the mailbox entries of a batch of acks (device, sequence
/// numbers) in one transaction, counts them in their mailboxes' tails (no
/// lock a send takes: `count_removed!`), and after the commit deletes the
/// messages no entry holds any more.
pub(super) async fn ack_batch(pool: &PgPool, acks: &[QueuedAck]) -> Result<(), StoreError> {
    let mut devices: Vec<Vec<u8>> = Vec::new();
    let mut seqs: Vec<i64> = Vec::new();
    for (d, s) in acks {
        for seq in s {
            devices.push(d.0.to_vec());
            seqs.push(ms(*seq));
        }
    }
    if devices.is_empty() {
        return Ok(());
    }
    let held: Vec<i64> = transaction!(async {
        let mut tx = pool.begin().await?;
        let held: Vec<i64> = sqlx::query_scalar(concat!(
            "WITH gone AS (DELETE FROM mailbox b USING UNNEST($1::bytea[], $2::int8[]) AS t(d, s) \
             WHERE b.device = t.d AND b.seq = t.s RETURNING b.device, b.message), \
             n AS (SELECT g.device, count(*) AS k, \
             coalesce(sum(length(m.payload)), 0)::int8 AS bytes \
             FROM gone g JOIN messages m ON m.id = g.message GROUP BY g.device), \
             up AS (",
            count_removed!(),
            ") SELECT message FROM gone"
        ))
        .bind(&devices)
        .bind(&seqs)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        TxResult::<_, StoreError>::Ok(held)
    })?;
    // After the commit: see `release_messages`.
    let mut c = pool.acquire().await.map_err(map_err)?;
    release_messages(&mut c, held).await.map_err(map_err)?;
    Ok(())
}

/// A send waiting for its batch, with its recipients' mailbox cap.
pub(super) type QueuedSend = (Outgoing, MailboxCap);

/// An ack waiting for its batch: a device's sequence numbers.
pub(super) type QueuedAck = (DeviceId, Vec<u64>);

/// Writes a batch of sends to groups in one transaction (see the module);
/// answers each as [`crate::store::Store::send`] does.
pub(super) async fn send_batch(
    pool: &PgPool,
    sends: &[QueuedSend],
) -> Vec<Result<SendOutcome, SendError>> {
    if sends.is_empty() {
        return Vec::new();
    }
    let written: Result<_, StoreError> = transaction!(async {
        let mut tx = pool.begin().await?;
        let answers = send_in(&mut tx, sends).await?;
        tx.commit().await?;
        TxResult::<_, StoreError>::Ok(answers)
    });
    written.unwrap_or_else(|e| sends.iter().map(|_| Err(e.clone().into())).collect())
}

/// Where a send stands once its group was read.
enum Checked {
    Refused(SendError),
    /// Encrypted in an epoch that ended (the group's now): refused, unless
    /// its id was stored before (a resend: a duplicate).
    Stale(u64),
    /// To these devices (sorted), if its id is new.
    To(Vec<DeviceId>),
}

/// A mailbox head as locked, then as the batch leaves it: the last
/// sequence number handed out, the bytes ever posted, and how many entries
/// and bytes wait (posted less what its tail counts as gone).
#[derive(Clone, Copy)]
struct Head {
    last: i64,
    posted_bytes: i64,
    pending: i64,
    bytes: i64,
    changed: bool,
}

fn protocol(what: &str) -> sqlx::Error {
    sqlx::Error::Protocol(format!("{what} is not 32 bytes"))
}

/// The sends of a batch inside its transaction.
async fn send_in(
    tx: &mut PgConnection,
    sends: &[QueuedSend],
) -> Result<Vec<Result<SendOutcome, SendError>>, sqlx::Error> {
    // Every group's row, share-locked in one order: each send is ordered
    // before or after a commit to its group, never across one.
    let mut groups: Vec<&[u8]> = sends.iter().map(|(m, _)| &m.group.0[..]).collect();
    groups.sort_unstable();
    groups.dedup();
    let mut epochs: HashMap<[u8; 32], u64> = HashMap::new();
    for r in sqlx::query(
        "SELECT group_id, epoch FROM groups WHERE group_id = ANY($1) ORDER BY group_id FOR SHARE",
    )
    .bind(&groups)
    .fetch_all(&mut *tx)
    .await?
    {
        let g = arr(r.try_get(0)?).map_err(|_| protocol("a group id"))?;
        epochs.insert(g, unsigned(r.try_get(1)?));
    }
    let mut members: HashMap<[u8; 32], Vec<DeviceId>> = HashMap::new();
    for r in sqlx::query("SELECT group_id, device FROM group_members WHERE group_id = ANY($1)")
        .bind(&groups)
        .fetch_all(&mut *tx)
        .await?
    {
        let g = arr(r.try_get(0)?).map_err(|_| protocol("a group id"))?;
        let d = arr(r.try_get(1)?).map_err(|_| protocol("a member"))?;
        members.entry(g).or_default().push(DeviceId(d));
    }
    let checked: Vec<Checked> = sends
        .iter()
        .map(|(m, _)| {
            let all = members.get(&m.group.0).map_or(&[][..], Vec::as_slice);
            if !all.contains(&m.sender) {
                return Checked::Refused(SendError::NotMember);
            }
            let current = epochs.get(&m.group.0).copied().unwrap_or(0);
            if m.epoch.is_some_and(|e| e != current) {
                return Checked::Stale(current);
            }
            let mut to: Vec<DeviceId> = all.iter().filter(|d| **d != m.sender).copied().collect();
            to.sort_unstable();
            to.dedup();
            Checked::To(to)
        })
        .collect();
    let keys: Vec<[u8; 32]> = sends.iter().map(|(m, _)| m.seen_key()).collect();

    // The ids of the sends that may be stored, recorded: those recorded
    // before (or by another node's batch that committed meanwhile) are not
    // returned. In one order, as every writer records them.
    let mut fresh_keys: Vec<&[u8]> = Vec::new();
    let mut expiries: Vec<i64> = Vec::new();
    let mut stale_keys: Vec<&[u8]> = Vec::new();
    for ((c, k), (m, _)) in checked.iter().zip(&keys).zip(sends) {
        match c {
            Checked::To(_) => {
                fresh_keys.push(&k[..]);
                expiries.push(ms(m.expires_ms));
            }
            Checked::Stale(_) => stale_keys.push(&k[..]),
            Checked::Refused(_) => {}
        }
    }
    let mut order: Vec<usize> = (0..fresh_keys.len()).collect();
    order.sort_unstable_by_key(|&i| fresh_keys[i]);
    let (sorted_keys, sorted_expiries): (Vec<&[u8]>, Vec<i64>) =
        order.iter().map(|&i| (fresh_keys[i], expiries[i])).unzip();
    let recorded: HashSet<Vec<u8>> = sqlx::query_scalar(
        "INSERT INTO seen_sends (key, expires_ms) \
         SELECT k, e FROM UNNEST($1::bytea[], $2::int8[]) AS t(k, e) \
         ON CONFLICT DO NOTHING RETURNING key",
    )
    .bind(&sorted_keys)
    .bind(&sorted_expiries)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let seen_before: HashSet<Vec<u8>> = if stale_keys.is_empty() {
        HashSet::new()
    } else {
        sqlx::query_scalar("SELECT key FROM seen_sends WHERE key = ANY($1)")
            .bind(&stale_keys)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect()
    };

    // The sends that will be stored unless a mailbox is full: their
    // messages are inserted before any mailbox head is locked, so that the
    // locks are held for the last two statements and the commit only.
    let candidates: Vec<(usize, &[DeviceId])> = checked
        .iter()
        .zip(&keys)
        .enumerate()
        .filter_map(|(i, (c, k))| match c {
            Checked::To(to) if !to.is_empty() && recorded.contains(&k[..]) => {
                Some((i, to.as_slice()))
            }
            _ => None,
        })
        .collect();
    let ids = insert_messages(tx, sends, &candidates).await?;
    let id_of: HashMap<usize, i64> = candidates.iter().map(|(i, _)| *i).zip(ids).collect();

    // The heads of every mailbox a new message may go to, locked in one
    // order (made if missing), as they are before this batch.
    let mut devices: Vec<&[u8]> = candidates
        .iter()
        .flat_map(|(_, to)| to.iter())
        .map(|d| &d.0[..])
        .collect();
    devices.sort_unstable();
    devices.dedup();
    let mut heads: HashMap<DeviceId, Head> = HashMap::with_capacity(devices.len());
    if !devices.is_empty() {
        for r in sqlx::query(
            "WITH h AS (INSERT INTO mailbox_heads (device, last_seq, posted_bytes) \
             SELECT d, 0, 0 FROM UNNEST($1::bytea[]) AS t(d) ORDER BY d \
             ON CONFLICT (device) DO UPDATE SET last_seq = mailbox_heads.last_seq \
             RETURNING device, last_seq, posted_bytes) \
             SELECT h.device, h.last_seq, h.posted_bytes, h.last_seq - coalesce(t.removed, 0), \
             h.posted_bytes - coalesce(t.removed_bytes, 0) \
             FROM h LEFT JOIN mailbox_tails t ON t.device = h.device",
        )
        .bind(&devices)
        .fetch_all(&mut *tx)
        .await?
        {
            let d = arr(r.try_get(0)?).map_err(|_| protocol("a mailbox head's device"))?;
            heads.insert(
                DeviceId(d),
                Head {
                    last: r.try_get(1)?,
                    posted_bytes: r.try_get(2)?,
                    pending: r.try_get(3)?,
                    bytes: r.try_get(4)?,
                    changed: false,
                },
            );
        }
    }

    // Each send in turn, as if alone.
    let mut answers = Vec::with_capacity(sends.len());
    let mut stored: HashSet<&[u8]> = HashSet::new();
    let mut entries: Vec<(i64, Vec<Posted>)> = Vec::new();
    let mut unused: Vec<i64> = Vec::new();
    for (i, ((c, k), (m, cap))) in checked.iter().zip(&keys).zip(sends).enumerate() {
        let answer = match c {
            Checked::Refused(e) => Err(clone_refusal(e)),
            Checked::Stale(_) if seen_before.contains(&k[..]) || stored.contains(&k[..]) => {
                Ok(SendOutcome::duplicate())
            }
            Checked::Stale(current) => Err(SendError::StaleEpoch(*current)),
            Checked::To(_) if !recorded.contains(&k[..]) || stored.contains(&k[..]) => {
                // A second send of one id in a batch: its message unused.
                unused.extend(id_of.get(&i));
                Ok(SendOutcome::duplicate())
            }
            Checked::To(to) => match post(&mut heads, to, m, *cap) {
                Some(posted) => {
                    stored.insert(&k[..]);
                    if let Some(&id) = id_of.get(&i) {
                        entries.push((id, posted.clone()));
                    }
                    Ok(SendOutcome {
                        duplicate: false,
                        posted,
                    })
                }
                None => {
                    unused.extend(id_of.get(&i));
                    Err(SendError::MailboxFull)
                }
            },
        };
        answers.push(answer);
    }
    // Ids recorded for sends that were all refused: forgotten, so that a
    // retry once there is room is new; and their messages deleted.
    let forget: Vec<&[u8]> = recorded
        .iter()
        .map(Vec::as_slice)
        .filter(|k| !stored.contains(k))
        .collect();
    if !forget.is_empty() {
        sqlx::query("DELETE FROM seen_sends WHERE key = ANY($1)")
            .bind(&forget)
            .execute(&mut *tx)
            .await?;
    }
    if !unused.is_empty() {
        sqlx::query("DELETE FROM messages WHERE id = ANY($1)")
            .bind(&unused)
            .execute(&mut *tx)
            .await?;
    }
    write_entries(tx, &entries, &heads).await?;
    Ok(answers)
}

/// `SendError` holds no data that cannot be rebuilt: a refusal decided
/// once, answered once.
fn clone_refusal(e: &SendError) -> SendError {
    match e {
        SendError::NotMember => SendError::NotMember,
        SendError::StaleEpoch(n) => SendError::StaleEpoch(*n),
        SendError::MailboxFull => SendError::MailboxFull,
        SendError::Store(s) => SendError::Store(s.clone()),
    }
}

/// Hands `m` an entry in each of `to`'s mailboxes, on the heads as the
/// batch left them; `None` (and no head changed) if a mailbox would go
/// over `cap`.
fn post(
    heads: &mut HashMap<DeviceId, Head>,
    to: &[DeviceId],
    m: &Outgoing,
    cap: MailboxCap,
) -> Option<Vec<Posted>> {
    let size = i64::try_from(m.payload.len()).unwrap_or(i64::MAX);
    let (max_n, max_bytes) = (ms(cap.messages), ms(cap.bytes));
    let fits = to.iter().all(|d| {
        heads
            .get(d)
            .is_some_and(|h| h.pending < max_n && h.bytes.saturating_add(size) <= max_bytes)
    });
    if !fits {
        return None;
    }
    let mut posted = Vec::with_capacity(to.len());
    for d in to {
        let h = heads.get_mut(d)?;
        h.last += 1;
        h.pending += 1;
        h.bytes = h.bytes.saturating_add(size);
        h.posted_bytes = h.posted_bytes.saturating_add(size);
        h.changed = true;
        // A mailbox's sequence numbers follow one another (its head row
        // counts them): the entry before this one is `last - 1`.
        posted.push(Posted {
            device: *d,
            seq: unsigned(h.last),
            after: unsigned(h.last - 1),
        });
    }
    Some(posted)
}

/// Inserts the messages of `candidates` (`(index in sends, recipients)`);
/// returns their ids, in that order.
async fn insert_messages(
    tx: &mut PgConnection,
    sends: &[QueuedSend],
    candidates: &[(usize, &[DeviceId])],
) -> Result<Vec<i64>, sqlx::Error> {
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let at = |i: usize| &sends[i].0;
    let each = |f: &dyn Fn(&Outgoing) -> i64| -> Vec<i64> {
        candidates.iter().map(|(i, _)| f(at(*i))).collect()
    };
    // Ids drawn first (a CTE with a volatile function is computed once),
    // so each message's id is known by its place in the batch.
    let rows = sqlx::query(
        "WITH t AS MATERIALIZED (SELECT u.*, \
         nextval(pg_get_serial_sequence('messages', 'id')) AS id \
         FROM UNNEST($1::bytea[], $2::bytea[], $3::bytea[], $4::int2[], $5::int8[], \
         $6::int8[], $7::int4[], $8::bytea[]) WITH ORDINALITY AS u(g, s, mi, k, sm, e, r, p, i)), \
         ins AS (INSERT INTO messages (id, group_id, sender, msg_id, kind, server_ms, \
         expires_ms, remaining, payload) OVERRIDING SYSTEM VALUE \
         SELECT id, g, s, mi, k, sm, e, r, p FROM t) \
         SELECT i, id FROM t",
    )
    .bind(
        candidates
            .iter()
            .map(|(i, _)| &at(*i).group.0[..])
            .collect::<Vec<_>>(),
    )
    .bind(
        candidates
            .iter()
            .map(|(i, _)| at(*i).stored_sender().0.to_vec())
            .collect::<Vec<_>>(),
    )
    .bind(
        candidates
            .iter()
            .map(|(i, _)| &at(*i).msg_id.0[..])
            .collect::<Vec<_>>(),
    )
    .bind(
        candidates
            .iter()
            .map(|(i, _)| kind_to_i16(at(*i).kind))
            .collect::<Vec<_>>(),
    )
    .bind(each(&|m| ms(m.now_ms)))
    .bind(each(&|m| ms(m.expires_ms)))
    // `remaining` is written for the schema's sake only (`release_messages`).
    .bind(
        candidates
            .iter()
            .map(|(_, to)| i32::try_from(to.len()).unwrap_or(i32::MAX))
            .collect::<Vec<_>>(),
    )
    .bind(
        candidates
            .iter()
            .map(|(i, _)| &at(*i).payload[..])
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut ids = vec![0i64; candidates.len()];
    for r in rows {
        let i: i64 = r.try_get(0)?;
        let slot = usize::try_from(i - 1)
            .ok()
            .and_then(|i| ids.get_mut(i))
            .ok_or_else(|| sqlx::Error::Protocol(format!("no message {i} was inserted")))?;
        *slot = r.try_get(1)?;
    }
    Ok(ids)
}

/// Inserts the mailbox entries of the messages stored (`(message id,
/// entries)`) and writes back the heads they changed, in one statement.
async fn write_entries(
    tx: &mut PgConnection,
    entries: &[(i64, Vec<Posted>)],
    heads: &HashMap<DeviceId, Head>,
) -> Result<(), sqlx::Error> {
    let changed: Vec<(&DeviceId, &Head)> = heads.iter().filter(|(_, h)| h.changed).collect();
    if changed.is_empty() {
        return Ok(());
    }
    let mut devices: Vec<&[u8]> = Vec::new();
    let mut seqs: Vec<i64> = Vec::new();
    let mut of: Vec<i64> = Vec::new();
    for (id, posted) in entries {
        for p in posted {
            devices.push(&p.device.0[..]);
            seqs.push(ms(p.seq));
            of.push(*id);
        }
    }
    sqlx::query(
        "WITH e AS (INSERT INTO mailbox (device, seq, message) \
         SELECT d, s, m FROM UNNEST($1::bytea[], $2::int8[], $3::int8[]) AS t(d, s, m)) \
         UPDATE mailbox_heads h SET last_seq = u.l, posted_bytes = u.b \
         FROM UNNEST($4::bytea[], $5::int8[], $6::int8[]) AS u(d, l, b) WHERE h.device = u.d",
    )
    .bind(&devices)
    .bind(&seqs)
    .bind(&of)
    .bind(changed.iter().map(|(d, _)| &d.0[..]).collect::<Vec<_>>())
    .bind(changed.iter().map(|(_, h)| h.last).collect::<Vec<_>>())
    .bind(
        changed
            .iter()
            .map(|(_, h)| h.posted_bytes)
            .collect::<Vec<_>>(),
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}
