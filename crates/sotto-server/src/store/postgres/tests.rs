//! What only the PostgreSQL store's insides show: which locks an ack and a
//! send take, what a refused send leaves in the tables, and the migration
//! that split mailbox heads from tails. The behaviour every backend shares
//! is the conformance suite's (`tests/store_postgres.rs`).

use std::borrow::Cow;
use std::time::Duration;

use sotto_proto::{EnvelopeKind, GroupId};
use sotto_test_support::services::PgDatabase;
use sqlx::PgPool;

use super::PgStore;
use super::batched::send_batch;
use crate::store::conformance::{NOW, cap, create, dev, out};
use crate::store::{SendError, Store};

async fn fresh() -> (PgDatabase, PgStore, PgPool) {
    let db = tokio::task::spawn_blocking(PgDatabase::create)
        .await
        .unwrap();
    let store = PgStore::connect(&db.url, 8).await.expect("connect");
    let raw = PgPool::connect(&db.url).await.expect("connect");
    (db, store, raw)
}

/// Rows in `table`, one of this file's own names.
async fn count(raw: &PgPool, table: &'static str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(raw)
        .await
        .unwrap()
}

/// Backends of this database waiting for a row lock.
async fn lock_waiters(raw: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(raw)
    .await
    .unwrap()
}

/// An ack finishes while a send holds its mailbox's head (as a send batch
/// does from its head statement to its commit): acks count what leaves a
/// mailbox in `mailbox_tails`, which no send locks. Before, an ack batch
/// locked the heads of every mailbox it touched, and at 8,000 devices half
/// of what sends waited for was acks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_waits_for_no_send() {
    let (_db, s, raw) = fresh().await;
    let g = GroupId([1; 32]);
    s.commit(create(g, dev(1), vec![dev(1), dev(2)]))
        .await
        .unwrap();
    s.send(out(g, dev(1), 1, EnvelopeKind::Application), cap(10))
        .await
        .unwrap();
    let held = s.fetch(dev(2), 0, 10, NOW).await.unwrap();
    assert_eq!(held.len(), 1);

    // A send in flight to dev(2): its head row locked, not committed.
    let mut sending = raw.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM mailbox_heads WHERE device = $1 FOR UPDATE")
        .bind(&dev(2).0[..])
        .execute(&mut *sending)
        .await
        .unwrap();

    // The ack either finishes or is seen waiting for a lock: no clock
    // decides which.
    let ack = {
        let s = s.clone();
        let seq = held[0].seq;
        tokio::spawn(async move { s.ack(dev(2), vec![seq]).await })
    };
    loop {
        if ack.is_finished() {
            ack.await.unwrap().expect("the ack is stored");
            break;
        }
        assert_eq!(
            lock_waiters(&raw).await,
            0,
            "the ack waits for the send's lock on the mailbox head"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sending.rollback().await.unwrap();
    assert_eq!(s.stats().await.unwrap().pending_deliveries, 0);
    assert!(s.fetch(dev(2), 0, 10, NOW).await.unwrap().is_empty());
    assert_eq!(count(&raw, "messages").await, 0, "the acked message stays");
}

/// A batch's refused and duplicate sends leave no message row behind,
/// although their messages are written before the heads are locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_leaves_no_row_for_a_refused_or_repeated_send() {
    let (_db, s, raw) = fresh().await;
    let open = GroupId([2; 32]);
    let full = GroupId([3; 32]);
    s.commit(create(open, dev(1), vec![dev(1), dev(2)]))
        .await
        .unwrap();
    s.commit(create(full, dev(1), vec![dev(1), dev(3)]))
        .await
        .unwrap();
    s.send(out(full, dev(1), 1, EnvelopeKind::Application), cap(1))
        .await
        .unwrap();
    assert_eq!(count(&raw, "messages").await, 1);

    let answers = send_batch(
        &raw,
        &[
            (out(open, dev(1), 2, EnvelopeKind::Application), cap(10)),
            (out(open, dev(1), 2, EnvelopeKind::Application), cap(10)),
            (out(full, dev(1), 3, EnvelopeKind::Application), cap(1)),
            (out(open, dev(1), 4, EnvelopeKind::Application), cap(10)),
        ],
    )
    .await;
    let stored: Vec<Option<bool>> = answers
        .iter()
        .map(|a| a.as_ref().ok().map(|o| o.duplicate))
        .collect();
    assert_eq!(stored, [Some(false), Some(true), None, Some(false)]);
    assert!(matches!(answers[2], Err(SendError::MailboxFull)));
    // The first message, and the two new ones of the batch.
    assert_eq!(count(&raw, "messages").await, 3);
    assert_eq!(count(&raw, "mailbox").await, 3);
    let got: Vec<u8> = s
        .fetch(dev(2), 0, 10, NOW)
        .await
        .unwrap()
        .iter()
        .map(|e| e.envelope.msg_id.0[0])
        .collect();
    assert_eq!(got, [2, 4]);
    assert_eq!(s.stats().await.unwrap().pending_deliveries, 3);
}

/// Migration 0007 keeps what waits in each mailbox: a database written
/// before it, with entries waiting and others acked, counts the same
/// entries and bytes after it, and the mailbox cap holds on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_migration_keeps_what_waits() {
    let db = tokio::task::spawn_blocking(PgDatabase::create)
        .await
        .unwrap();
    let raw = PgPool::connect(&db.url).await.unwrap();
    let mut before = sqlx::migrate!("./migrations");
    let upto = before
        .migrations
        .iter()
        .position(|m| m.version == 7)
        .expect("migration 7");
    before.migrations = Cow::Owned(before.migrations[..upto].to_vec());
    before.run(&raw).await.unwrap();
    // dev(2): seven entries handed out, two waiting (20 bytes); dev(3):
    // three handed out, all acked.
    sqlx::query(
        "INSERT INTO mailbox_heads (device, last_seq, pending, pending_bytes) \
         VALUES ($1, 7, 2, 20), ($2, 3, 0, 0)",
    )
    .bind(&dev(2).0[..])
    .bind(&dev(3).0[..])
    .execute(&raw)
    .await
    .unwrap();

    let s = PgStore::connect(&db.url, 4).await.expect("migrates");
    assert_eq!(s.stats().await.unwrap().pending_deliveries, 2);
    let g = GroupId([4; 32]);
    s.commit(create(g, dev(1), vec![dev(1), dev(2), dev(3)]))
        .await
        .unwrap();
    // Three entries at most: dev(2) has room for one more.
    let first = s
        .send(out(g, dev(1), 1, EnvelopeKind::Application), cap(3))
        .await
        .unwrap();
    let seqs: Vec<(u8, u64)> = first
        .posted
        .iter()
        .map(|p| (p.device.0[1], p.seq))
        .collect();
    assert_eq!(seqs, [(dev(2).0[1], 8), (dev(3).0[1], 4)]);
    assert!(matches!(
        s.send(out(g, dev(1), 2, EnvelopeKind::Application), cap(3))
            .await,
        Err(SendError::MailboxFull)
    ));
    // Bytes: 20 waiting and 10 just sent; another 10 would pass 35.
    let bytes = crate::store::MailboxCap {
        messages: 100,
        bytes: 35,
    };
    assert!(matches!(
        s.send(out(g, dev(1), 3, EnvelopeKind::Application), bytes)
            .await,
        Err(SendError::MailboxFull)
    ));
}
