//! The key directory: key transparency with `akd` (the auditable key
//! directory WhatsApp runs). Each handle maps to its account key and the
//! version and hash of its signed device list (`sotto_rules::directory`).
//! The server publishes a new epoch when an account is registered or its
//! device list changes, and serves lookup proofs (to anyone looking a
//! handle up), history proofs (to a device, for its own handle) and
//! append-only proofs between epochs (to auditors).
//!
//! Publishing is batched like a group commit: a request that changes an
//! entry queues it and waits; one publisher at a time takes everything
//! queued and publishes it as one epoch, then answers every waiter. A
//! registration thus waits for one epoch, and a burst of registrations
//! shares epochs.
//!
//! The directory's records live in the [`Store`] ([`storage`]), so that
//! several nodes on one PostgreSQL share one directory. Nodes publish in
//! turns ([`Store::directory_turn`]: a PostgreSQL advisory lock), each
//! epoch on top of the one before; each epoch is also written by
//! compare-and-set, so a publish that somehow raced another (a node
//! without turns) is refused whole and published again on top of the
//! winner's epoch. The VRF key is a file of the data directory
//! (`directory.key`) that every node must share.

pub mod conformance;
pub mod storage;

use std::sync::{Arc, Mutex};

use akd::append_only_zks::AzksParallelismConfig;
use akd::ecvrf::{VRFKeyStorage, VRFPrivateKey, VRFPublicKey, VrfError};
use akd::errors::{AkdError, StorageError};
use akd::storage::StorageManager;
use akd::{AkdLabel, HistoryParams};
use sotto_proto::{DirectoryRoot, Handle, MAX_AUDIT_EPOCHS};
use sotto_rules::directory::{self as rules, Config, Entry};
use tokio::sync::{OnceCell, oneshot};
use zeroize::Zeroizing;

use crate::store::{Store, StoreError};
pub use storage::StoreDatabase;

/// The directory's VRF private key (an Ed25519 secret key's 32 bytes).
#[derive(Clone)]
pub struct VrfKey(Arc<Zeroizing<[u8; 32]>>);

impl std::fmt::Debug for VrfKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VrfKey(..)")
    }
}

impl VrfKey {
    /// The key with these bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Arc::new(Zeroizing::new(bytes)))
    }

    /// Its public key, which clients check every proof under.
    pub fn public(&self) -> [u8; 32] {
        let private =
            VRFPrivateKey::try_from(&self.0[..]).expect("any 32 bytes are an Ed25519 secret key");
        VRFPublicKey::from(&private).to_bytes()
    }
}

#[async_trait::async_trait]
impl VRFKeyStorage for VrfKey {
    async fn retrieve(&self) -> Result<Vec<u8>, VrfError> {
        // akd's interface takes the key as a vector; it does not zeroize it.
        Ok(self.0.to_vec())
    }
}

/// Why the directory could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DirectoryError {
    /// The handle has no entry.
    #[error("no such handle in the key directory")]
    Unknown,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// akd failed (a bug, corrupt records, or a request out of range).
    #[error("key directory: {0}")]
    Akd(String),
    /// The audit range is empty, reversed, too long or past the newest epoch.
    #[error("bad audit range: {0}")]
    Range(&'static str),
}

fn akd_err(e: AkdError) -> DirectoryError {
    match e {
        AkdError::Storage(StorageError::NotFound(_)) => DirectoryError::Unknown,
        AkdError::Storage(StorageError::Connection(m)) => {
            DirectoryError::Store(StoreError::Unavailable(m))
        }
        other => DirectoryError::Akd(other.to_string()),
    }
}

type Akd<S> = akd::Directory<Config, StoreDatabase<S>, VrfKey>;

/// An entry waiting to be published, and who waits for it.
struct Pending {
    label: AkdLabel,
    entry: Entry,
    done: oneshot::Sender<Result<DirectoryRoot, DirectoryError>>,
}

/// How often a publish that lost its epoch to another node is tried again.
const PUBLISH_ATTEMPTS: u32 = 8;

/// The key directory of one node.
pub struct KeyDirectory<S> {
    store: S,
    vrf: VrfKey,
    /// The `Akd<S>`, made on first use. Kept as `Any` so that the types
    /// holding a `KeyDirectory<S>` need no `S: Store` bound of their own.
    akd: OnceCell<Box<dyn std::any::Any + Send + Sync>>,
    queue: Mutex<Vec<Pending>>,
    publisher: tokio::sync::Mutex<()>,
}

impl<S> std::fmt::Debug for KeyDirectory<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyDirectory").finish_non_exhaustive()
    }
}

fn root(e: &akd::EpochHash) -> DirectoryRoot {
    DirectoryRoot {
        epoch: e.epoch(),
        hash: e.hash(),
    }
}

impl<S> KeyDirectory<S> {
    /// The directory in `store`, under `vrf`. Nothing is read until first use.
    pub fn new(store: S, vrf: VrfKey) -> Self {
        Self {
            store,
            vrf,
            akd: OnceCell::new(),
            queue: Mutex::new(Vec::new()),
            publisher: tokio::sync::Mutex::new(()),
        }
    }

    /// The VRF public key.
    pub fn vrf_public(&self) -> [u8; 32] {
        self.vrf.public()
    }
}

impl<S: Store> KeyDirectory<S> {
    async fn akd(&self) -> Result<&Akd<S>, DirectoryError> {
        let any = self
            .akd
            .get_or_try_init(|| async {
                // In turn too: akd makes a new directory's first Azks and
                // root with plain writes, not compare-and-set, so a node
                // that found no directory while another made one and
                // published into it would write the empty one over it
                // (`many_nodes_publishing_at_once_all_land` saw lookups of
                // published entries fail to verify).
                let _turn = self.store.directory_turn().await?;
                let mut attempt = 0;
                let akd = loop {
                    attempt += 1;
                    let manager =
                        StorageManager::new_no_cache(StoreDatabase::new(self.store.clone()));
                    match Akd::<S>::new(manager, self.vrf.clone(), AzksParallelismConfig::default())
                        .await
                    {
                        Ok(a) => break a,
                        // Another node created the directory at the same time.
                        Err(AkdError::Storage(StorageError::Transaction(_)))
                            if attempt < PUBLISH_ATTEMPTS => {}
                        Err(e) => return Err(akd_err(e)),
                    }
                };
                // The newest epoch's root, in case its publisher stopped
                // before recording it (and epoch 0's, on a new directory).
                let now = akd.get_epoch_hash().await.map_err(akd_err)?;
                self.store
                    .put_directory_root(now.epoch(), now.hash())
                    .await?;
                Ok::<_, DirectoryError>(Box::new(akd) as Box<dyn std::any::Any + Send + Sync>)
            })
            .await?;
        any.downcast_ref::<Akd<S>>()
            .ok_or_else(|| DirectoryError::Akd("directory of another store type".into()))
    }

    /// The newest root.
    pub async fn current(&self) -> Result<DirectoryRoot, DirectoryError> {
        let akd = self.akd().await?;
        Ok(root(&akd.get_epoch_hash().await.map_err(akd_err)?))
    }

    /// Publishes `entry` for `handle` in the next epoch and waits until it
    /// is published; answers that epoch's root.
    pub async fn publish(
        &self,
        handle: &Handle,
        entry: Entry,
    ) -> Result<DirectoryRoot, DirectoryError> {
        let (done, mut answer) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Pending {
                label: rules::label(handle),
                entry,
                done,
            });
        let _publisher = self.publisher.lock().await;
        // The publisher before took ours along.
        if let Ok(r) = answer.try_recv() {
            return r;
        }
        let batch = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            // A publisher that was dropped took ours and never answered.
            return Err(DirectoryError::Akd("publisher vanished".into()));
        }
        let result = self.publish_batch(&batch).await;
        for p in batch {
            let _ = p.done.send(result.clone());
        }
        answer
            .await
            .unwrap_or_else(|_| Err(DirectoryError::Akd("publisher vanished".into())))
    }

    async fn publish_batch(&self, batch: &[Pending]) -> Result<DirectoryRoot, DirectoryError> {
        let akd = self.akd().await?;
        // One update per label: the last queued is the newest.
        let mut updates: Vec<(AkdLabel, akd::AkdValue)> = Vec::with_capacity(batch.len());
        for p in batch.iter().rev() {
            if !updates.iter().any(|(l, _)| *l == p.label) {
                updates.push((p.label.clone(), p.entry.value()));
            }
        }
        // One node at a time: without turns, four nodes registering at
        // once lost each other's epochs until their retries ran out.
        let _turn = self.store.directory_turn().await?;
        let mut attempt = 0;
        let published = loop {
            attempt += 1;
            match akd.publish(updates.clone()).await {
                Ok(e) => break e,
                Err(AkdError::Storage(StorageError::Transaction(_)))
                    if attempt < PUBLISH_ATTEMPTS =>
                {
                    tokio::task::yield_now().await;
                }
                Err(e) => return Err(akd_err(e)),
            }
        };
        self.store
            .put_directory_root(published.epoch(), published.hash())
            .await?;
        drop(_turn);
        Ok(root(&published))
    }

    /// akd reports any storage failure during a lookup as "not found":
    /// the store says whether the handle really has no entry.
    async fn unknown(&self, handle: &Handle) -> DirectoryError {
        match self
            .store
            .directory_states(vec![rules::label(handle).0])
            .await
        {
            Ok(states) if states.is_empty() => DirectoryError::Unknown,
            Ok(_) => DirectoryError::Store(StoreError::Unavailable(
                "the key directory's store failed during a lookup".into(),
            )),
            Err(e) => DirectoryError::Store(e),
        }
    }

    /// A lookup proof for `handle` at the newest epoch.
    pub async fn lookup(
        &self,
        handle: &Handle,
    ) -> Result<(DirectoryRoot, Vec<u8>), DirectoryError> {
        let akd = self.akd().await?;
        match akd.lookup(rules::label(handle)).await.map_err(akd_err) {
            Ok((proof, epoch)) => Ok((root(&epoch), rules::encode(&proof))),
            Err(DirectoryError::Unknown) => Err(self.unknown(handle).await),
            Err(e) => Err(e),
        }
    }

    /// The whole history of `handle`, with its proof, at the newest epoch.
    pub async fn history(
        &self,
        handle: &Handle,
    ) -> Result<(DirectoryRoot, Vec<u8>), DirectoryError> {
        let akd = self.akd().await?;
        match akd
            .key_history(&rules::label(handle), HistoryParams::Complete)
            .await
            .map_err(akd_err)
        {
            Ok((proof, epoch)) => Ok((root(&epoch), rules::encode(&proof))),
            Err(DirectoryError::Unknown) => Err(self.unknown(handle).await),
            Err(e) => Err(e),
        }
    }

    /// The append-only proof from `from` to `to`, and the root hash of
    /// every epoch from `from` to `to`.
    pub async fn audit(
        &self,
        from: u64,
        to: u64,
    ) -> Result<(Vec<[u8; 32]>, Vec<u8>), DirectoryError> {
        if from >= to {
            return Err(DirectoryError::Range(
                "the first epoch must come before the last",
            ));
        }
        if to - from > MAX_AUDIT_EPOCHS {
            return Err(DirectoryError::Range("too many epochs for one request"));
        }
        let akd = self.akd().await?;
        if to > akd.get_epoch_hash().await.map_err(akd_err)?.epoch() {
            return Err(DirectoryError::Range("past the newest epoch"));
        }
        let proof = akd.audit(from, to).await.map_err(akd_err)?;
        let roots = self.store.directory_roots(from, to).await?;
        let complete = roots.len() as u64 == to - from + 1
            && roots.iter().zip(from..).all(|((e, _), want)| *e == want);
        if !complete {
            return Err(DirectoryError::Akd(format!(
                "root hashes of epochs {from}..={to} are not all recorded"
            )));
        }
        Ok((
            roots.into_iter().map(|(_, h)| h).collect(),
            rules::encode(&proof),
        ))
    }
}
