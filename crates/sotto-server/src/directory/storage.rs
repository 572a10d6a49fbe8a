//! `akd`'s storage trait over the server's [`Store`]: the key directory
//! lives in the same database as everything else (SQLite, or PostgreSQL
//! for several nodes), in four tables of its own (`directory_*`).
//!
//! Records are postcard encodings of `akd`'s `DbRecord` (its serde form).
//! Tree nodes and the Azks are stored by akd's binary id; value states by
//! (label, epoch), so that a handle's states are one indexed read.
//!
//! One `batch_set` is one store transaction. akd publishes an epoch as one
//! transaction commit with the Azks in it, so the epoch lands whole or not
//! at all; that write is made with [`DirectoryWrite::newer_only`]: when two
//! nodes publish at once, only the first commits its epoch, the other's
//! batch is refused whole and its publish fails without writing anything
//! (`KeyDirectory` then publishes again on top of the winner's epoch).

use std::collections::HashMap;

use akd::errors::StorageError;
use akd::storage::types::{
    DbRecord, KeyData, StorageType, ValueState, ValueStateKey, ValueStateRetrievalFlag,
};
use akd::storage::{Database, DbSetState, Storable};
use akd::{AkdLabel, AkdValue};

use crate::store::{DirectoryWrite, Store, StoreError};

/// The directory's storage: a [`Store`] seen through akd's trait.
#[derive(Debug, Clone)]
pub struct StoreDatabase<S> {
    store: S,
}

impl<S> StoreDatabase<S> {
    /// The directory's records in `store`.
    pub fn new(store: S) -> Self {
        Self { store }
    }
}

fn storage_err(e: StoreError) -> StorageError {
    match e {
        StoreError::Unavailable(m) => StorageError::Connection(m),
        StoreError::Internal(m) => StorageError::Other(m),
    }
}

fn encode(r: &DbRecord) -> Result<Vec<u8>, StorageError> {
    postcard::to_allocvec(r).map_err(|e| StorageError::Other(format!("encoding a record: {e}")))
}

fn decode(bytes: &[u8]) -> Result<DbRecord, StorageError> {
    postcard::from_bytes(bytes).map_err(|e| StorageError::Other(format!("stored record: {e}")))
}

fn decode_state(bytes: &[u8]) -> Result<ValueState, StorageError> {
    match decode(bytes)? {
        DbRecord::ValueState(s) => Ok(s),
        _ => Err(StorageError::Other(
            "a value-state row holds another record".into(),
        )),
    }
}

/// The state `flag` picks out of one label's states.
fn pick(states: &[ValueState], flag: ValueStateRetrievalFlag) -> Option<&ValueState> {
    use ValueStateRetrievalFlag as F;
    match flag {
        F::MaxEpoch => states.iter().max_by_key(|s| s.epoch),
        F::MinEpoch => states.iter().min_by_key(|s| s.epoch),
        F::SpecificVersion(v) => states.iter().find(|s| s.version == v),
        F::SpecificEpoch(e) => states.iter().find(|s| s.epoch == e),
        F::LeqEpoch(e) => states
            .iter()
            .filter(|s| s.epoch <= e)
            .max_by_key(|s| s.epoch),
    }
}

impl<S: Store> StoreDatabase<S> {
    async fn states(&self, labels: &[AkdLabel]) -> Result<Vec<ValueState>, StorageError> {
        let rows = self
            .store
            .directory_states(labels.iter().map(|l| l.0.clone()).collect())
            .await
            .map_err(storage_err)?;
        rows.iter().map(|r| decode_state(r)).collect()
    }

    async fn get_many<St: Storable>(
        &self,
        ids: &[St::StorageKey],
    ) -> Result<Vec<DbRecord>, StorageError> {
        let bins: Vec<Vec<u8>> = ids.iter().map(St::get_full_binary_key_id).collect();
        if St::data_type() == StorageType::ValueState {
            let mut keys = Vec::with_capacity(bins.len());
            for b in &bins {
                let ValueStateKey(label, epoch) =
                    ValueState::key_from_full_binary(b).map_err(StorageError::Other)?;
                keys.push((AkdLabel(label), epoch));
            }
            let labels: Vec<AkdLabel> = keys.iter().map(|(l, _)| l.clone()).collect();
            let states = self.states(&labels).await?;
            return Ok(keys
                .iter()
                .filter_map(|(l, e)| {
                    states
                        .iter()
                        .find(|s| s.username == *l && s.epoch == *e)
                        .cloned()
                        .map(DbRecord::ValueState)
                })
                .collect());
        }
        let rows = self
            .store
            .directory_records(bins)
            .await
            .map_err(storage_err)?;
        rows.iter().map(|r| decode(r)).collect()
    }
}

#[async_trait::async_trait]
impl<S: Store> Database for StoreDatabase<S> {
    async fn set(&self, record: DbRecord) -> Result<(), StorageError> {
        self.batch_set(vec![record], DbSetState::General).await
    }

    async fn batch_set(
        &self,
        records: Vec<DbRecord>,
        state: DbSetState,
    ) -> Result<(), StorageError> {
        let mut w = DirectoryWrite {
            newer_only: matches!(state, DbSetState::TransactionCommit),
            ..DirectoryWrite::default()
        };
        for r in &records {
            match r {
                DbRecord::ValueState(s) => {
                    w.states.push((s.username.0.clone(), s.epoch, encode(r)?));
                }
                DbRecord::Azks(a) => {
                    w.epoch = Some(a.latest_epoch);
                    w.records.push((r.get_full_binary_id(), encode(r)?));
                }
                DbRecord::TreeNode(_) => w.records.push((r.get_full_binary_id(), encode(r)?)),
            }
        }
        let epoch = w.epoch;
        if self.store.directory_write(w).await.map_err(storage_err)? {
            Ok(())
        } else {
            Err(StorageError::Transaction(format!(
                "directory epoch {} was published by another node first",
                epoch.unwrap_or_default()
            )))
        }
    }

    async fn get<St: Storable>(&self, id: &St::StorageKey) -> Result<DbRecord, StorageError> {
        self.get_many::<St>(std::slice::from_ref(id))
            .await?
            .pop()
            .ok_or_else(|| StorageError::NotFound(format!("{:?} {id:?}", St::data_type())))
    }

    async fn batch_get<St: Storable>(
        &self,
        ids: &[St::StorageKey],
    ) -> Result<Vec<DbRecord>, StorageError> {
        self.get_many::<St>(ids).await
    }

    async fn get_user_data(&self, username: &AkdLabel) -> Result<KeyData, StorageError> {
        let mut states = self.states(std::slice::from_ref(username)).await?;
        if states.is_empty() {
            return Err(StorageError::NotFound(format!("ValueState {username:?}")));
        }
        states.sort_by_key(|s| s.epoch);
        Ok(KeyData { states })
    }

    async fn get_user_state(
        &self,
        username: &AkdLabel,
        flag: ValueStateRetrievalFlag,
    ) -> Result<ValueState, StorageError> {
        let states = self.states(std::slice::from_ref(username)).await?;
        pick(&states, flag)
            .cloned()
            .ok_or_else(|| StorageError::NotFound(format!("ValueState {username:?}")))
    }

    async fn get_user_state_versions(
        &self,
        usernames: &[AkdLabel],
        flag: ValueStateRetrievalFlag,
    ) -> Result<HashMap<AkdLabel, (u64, AkdValue)>, StorageError> {
        let states = self.states(usernames).await?;
        let mut by_label: HashMap<&AkdLabel, Vec<ValueState>> = HashMap::new();
        for s in &states {
            by_label.entry(&s.username).or_default().push(s.clone());
        }
        Ok(by_label
            .into_iter()
            .filter_map(|(label, states)| {
                pick(&states, flag).map(|s| (label.clone(), (s.version, s.value.clone())))
            })
            .collect())
    }
}
