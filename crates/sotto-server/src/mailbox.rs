//! Reading mailboxes for delivery, gathered. A message to a large group
//! wakes every member's connection at once, and each used to read its
//! device record and then its mailbox on its own: two store round trips per
//! delivery, which on SQLite are two calls to the store's thread. The [`MailboxReader`] gathers the reads
//! that arrive together into one [`Store::fetch_many`], as the SQLite
//! store's group commit gathers writes: a read that finds fewer than
//! [`MAX_TASKS`] batches running starts one in its own task; reads arriving
//! while they run wait for the next batch, which one of them takes. More
//! than one batch at a time keeps a slow read (a PostgreSQL connection
//! being replaced) from holding up every delivery of the node.

use std::sync::{Arc, Mutex, PoisonError};

use sotto_proto::DeviceId;
use tokio::sync::oneshot;

use crate::store::{MailboxEntry, Store, StoreError};

/// Entries read per device per read (a connection with more reads again).
pub(crate) const FETCH_BATCH: u32 = 64;

/// The most devices read in one batch: bounds what one batch holds in
/// memory (each device's read is at most [`FETCH_BATCH`] entries).
const MAX_DEVICES: usize = 64;

/// The most batches read at the same time.
const MAX_TASKS: usize = 4;

/// A device's next entries: `None` if it is unknown or revoked.
pub(crate) type Next = Result<Option<Vec<MailboxEntry>>, StoreError>;

struct Want {
    device: DeviceId,
    after: u64,
    now_ms: u64,
    reply: oneshot::Sender<Next>,
}

#[derive(Default)]
struct Queue {
    wants: Vec<Want>,
    /// Tasks reading batches (each takes what is queued when it is free).
    running: usize,
}

/// Gathers the mailbox reads of a node's connections (see the module).
pub(crate) struct MailboxReader<S> {
    store: S,
    queue: Arc<Mutex<Queue>>,
}

impl<S: Store + 'static> MailboxReader<S> {
    pub(crate) fn new(store: S) -> Self {
        Self {
            store,
            queue: Arc::default(),
        }
    }

    /// What `device` is delivered next: `None` if it is unknown or revoked,
    /// else up to [`FETCH_BATCH`] unexpired entries after `after`.
    pub(crate) async fn read(&self, device: DeviceId, after: u64, now_ms: u64) -> Next {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            q.wants.push(Want {
                device,
                after,
                now_ms,
                reply,
            });
            let start = q.running < MAX_TASKS;
            if start {
                q.running += 1;
            }
            start
        };
        if start {
            // In its own task: a connection that goes away mid-read does not
            // take the other connections' reads with it.
            tokio::spawn(run(self.store.clone(), Running(Some(self.queue.clone()))));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::Internal("the mailbox reader stopped".into())))
    }
}

/// Reads batches until the queue is empty.
async fn run<S: Store>(store: S, mut running: Running) {
    loop {
        let batch: Vec<Want> = {
            let Some(queue) = &running.0 else { return };
            let mut q = queue.lock().unwrap_or_else(PoisonError::into_inner);
            if q.wants.is_empty() {
                q.running -= 1;
                drop(q);
                running.0 = None;
                return;
            }
            let n = q.wants.len().min(MAX_DEVICES);
            q.wants.drain(..n).collect()
        };
        // Read together, they are read at the latest of their times.
        let now_ms = batch.iter().map(|w| w.now_ms).max().unwrap_or(0);
        let wants = batch.iter().map(|w| (w.device, w.after)).collect();
        match store.fetch_many(wants, FETCH_BATCH, now_ms).await {
            Ok(got) if got.len() == batch.len() => {
                for (w, next) in batch.into_iter().zip(got) {
                    // A reader that went away needs no answer.
                    let _ = w.reply.send(Ok(next));
                }
            }
            Ok(got) => {
                let e = StoreError::Internal(format!(
                    "{} mailboxes read for {} devices",
                    got.len(),
                    batch.len()
                ));
                for w in batch {
                    let _ = w.reply.send(Err(e.clone()));
                }
            }
            Err(e) => {
                for w in batch {
                    let _ = w.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// A running task's claim on the queue. Should the task end any other way
/// than by emptying the queue (a panic in the store, the runtime shutting
/// down), the claim is given up; if no other task runs, the queued reads
/// fail, so their connections retry instead of waiting for ever, and the
/// next read starts a new task.
struct Running(Option<Arc<Mutex<Queue>>>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(queue) = self.0.take() {
            let mut q = queue.lock().unwrap_or_else(PoisonError::into_inner);
            q.running -= 1;
            if q.running == 0 {
                q.wants.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use sotto_proto::{EnvelopeKind, GroupId};

    use super::*;
    use crate::store::conformance::{NOW, account, cap, create, dev, out};
    use crate::store::sqlite::SqliteStore;

    /// Many connections reading at once each get their own mailbox, a
    /// revoked or unknown device gets `None`, and later reads start a new
    /// batch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_reads_each_get_their_own_mailbox() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("server.db")).unwrap();
        // More than one batch's worth of devices.
        let members: Vec<u8> = (1..=100).collect();
        for n in &members {
            store.register(account(*n)).await.unwrap();
        }
        // Every device is in a group of its own with device 1, and is sent
        // one to five messages.
        for n in &members[1..] {
            let g = GroupId([*n; 32]);
            store
                .commit(create(g, dev(1), vec![dev(1), dev(*n)]))
                .await
                .unwrap();
            for i in 0..=*n % 5 {
                store
                    .send(out(g, dev(1), i, EnvelopeKind::Application), cap(1000))
                    .await
                    .unwrap();
            }
        }
        assert!(store.revoke_device(dev(100)).await.unwrap());
        let reader = Arc::new(MailboxReader::new(store.clone()));
        for round in 0..3u64 {
            let mut reads = tokio::task::JoinSet::new();
            for n in members.iter().copied().chain([0x7f]) {
                let reader = reader.clone();
                reads.spawn(async move {
                    let got = reader.read(dev(n), round, NOW).await;
                    (n, got.unwrap())
                });
            }
            while let Some(r) = reads.join_next().await {
                let (n, got) = r.unwrap();
                match n {
                    100 | 0x7f => assert!(got.is_none(), "device {n}"),
                    1 => assert_eq!(got.unwrap().len(), 0),
                    _ => {
                        let got = got.unwrap();
                        let want = store.fetch(dev(n), round, FETCH_BATCH, NOW).await.unwrap();
                        let ids: Vec<_> = got.iter().map(|e| e.envelope.msg_id).collect();
                        let want_ids: Vec<_> = want.iter().map(|e| e.envelope.msg_id).collect();
                        assert_eq!(ids, want_ids, "device {n}");
                        assert!(!ids.is_empty() || round > 0);
                        assert!(got.iter().all(|e| e.envelope.group == GroupId([n; 32])));
                        assert!(got.iter().all(|e| e.seq > round));
                    }
                }
            }
        }
        assert_eq!(reader.queue.lock().unwrap().running, 0);
    }
}
