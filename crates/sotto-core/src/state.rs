//! Loading a group's MLS state from the caller's provider, with the
//! policy on past epochs applied to groups made before it; and holding
//! loaded groups in memory between operations ([`Held`]), so that a
//! message costs its own cryptography and not a decoding of the group's
//! whole state.
//!
//! openmls writes every change it makes to a group through the provider's
//! storage as it makes it, so a held group and its stored state agree as
//! long as every change to it commits. Three rules keep it so:
//! - a group is taken out of [`Held`] while an operation works on it and
//!   goes back only if the operation succeeded ([`Loaded::kept`]): a
//!   failed openmls call may have changed the group in memory and not in
//!   storage, so its copy is dropped;
//! - what goes back waits for the caller's transaction: [`Held::commit`]
//!   holds it once the transaction committed, [`Held::rollback`] drops it
//!   with the transaction;
//! - another connection may have changed the stored state (another process
//!   on the same profile): the caller tells [`Held::check`] the store's
//!   change counter at the start of each transaction, and a change drops
//!   every held group.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use openmls::prelude::*;
use openmls_traits::OpenMlsProvider;

use crate::error::{CoreError, storage};

/// How many past epochs' message secrets a member keeps, to read
/// application messages of an epoch it has just left. None should need
/// it: the server takes an application message only in the group's
/// current epoch, so every member meets it before the commit that ends
/// the epoch, and a committer reads what the server sent before its
/// commit's answer before it merges. One epoch more is kept as a margin
/// against a path that breaks that order, until this device reads or
/// sends the first application message of the new epoch
/// ([`Loaded::past_epochs_done`]): by the same order, no message of the
/// old epoch can come after that one. Kept longer, its secrets would be
/// written again with every message, and with them the old epoch's
/// member list: 9 MB a message in a group of 1,000 on the post-quantum
/// suite (issue 15). Forward secrecy at rest is bounded by it
/// (THREAT_MODEL.md, C8).
pub const PAST_EPOCHS: usize = 1;

/// An `openmls` provider, which may hold groups loaded between operations.
pub trait Provider: OpenMlsProvider {
    /// The groups this provider holds in memory; `None` (the default)
    /// loads each group from storage for each operation.
    fn held(&self) -> Option<&Held> {
        None
    }
}

/// The in-memory provider that tests and benchmarks use loads each time.
impl Provider for openmls_libcrux_crypto::Provider {}

/// How much [`Held`] keeps: at most `groups` groups, and at most `leaves`
/// leaves in all of them together (a group's memory grows with its
/// leaves: about 3 KB a leaf on the post-quantum suite). The group used
/// least recently goes first; one group is kept whatever its size, unless
/// `groups` is 0, which holds none (each operation loads its group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Groups held at most.
    pub groups: usize,
    /// Leaves held at most, summed over the groups.
    pub leaves: usize,
}

impl Default for Limit {
    /// 64 groups and 10,000 leaves: ten groups of 1,000 members, or 64 of
    /// 150; about 30 MB on the post-quantum suite at the most.
    fn default() -> Self {
        Self {
            groups: 64,
            leaves: 10_000,
        }
    }
}

/// Groups held loaded between operations (see the module's rules).
/// Single-threaded: the store that owns it runs one transaction at a time.
pub struct Held {
    inner: RefCell<Inner>,
}

struct Inner {
    limit: Limit,
    /// The held groups, with their leaf count and last use.
    groups: HashMap<[u8; 32], Entry>,
    /// Groups given back in the transaction under way.
    pending: HashMap<[u8; 32], (MlsGroup, Option<u64>)>,
    /// Groups taken out by an operation under way.
    out: HashSet<[u8; 32]>,
    /// The store's change counter last seen.
    version: Option<i64>,
    tick: u64,
    loads: u64,
}

struct Entry {
    group: MlsGroup,
    /// The epoch whose predecessors' message secrets are gone.
    past_done: Option<u64>,
    leaves: usize,
    used: u64,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = self.inner.borrow();
        write!(f, "Held({} groups, {} loads)", i.groups.len(), i.loads)
    }
}

impl Default for Held {
    fn default() -> Self {
        Self::new(Limit::default())
    }
}

impl Held {
    /// Holds at most `limit`.
    pub fn new(limit: Limit) -> Self {
        Self {
            inner: RefCell::new(Inner {
                limit,
                groups: HashMap::new(),
                pending: HashMap::new(),
                out: HashSet::new(),
                version: None,
                tick: 0,
                loads: 0,
            }),
        }
    }

    /// At the start of a transaction: `version` is the store's counter of
    /// changes made by other connections (SQLite's `data_version`). If it
    /// moved since the last call, every held group is dropped.
    pub fn check(&self, version: i64) {
        let mut i = self.inner.borrow_mut();
        if i.version != Some(version) {
            i.groups.clear();
            i.version = Some(version);
        }
        i.pending.clear();
        i.out.clear();
    }

    /// The caller's transaction committed: the groups given back in it are
    /// held, and the least recently used go if the limit is passed.
    pub fn commit(&self) {
        let mut i = self.inner.borrow_mut();
        let pending: Vec<_> = i.pending.drain().collect();
        if i.limit.groups == 0 {
            return;
        }
        for (id, (group, past_done)) in pending {
            i.tick += 1;
            let leaves = group.public_group().treesync().full_leaves().count();
            let used = i.tick;
            i.groups.insert(
                id,
                Entry {
                    group,
                    past_done,
                    leaves,
                    used,
                },
            );
        }
        i.evict();
    }

    /// The caller's transaction rolled back: what it gave back is dropped
    /// (what it took was already).
    pub fn rollback(&self) {
        self.inner.borrow_mut().pending.clear();
    }

    /// Drops every held group.
    pub fn clear(&self) {
        let mut i = self.inner.borrow_mut();
        i.groups.clear();
        i.pending.clear();
    }

    /// Holds at most `limit` from now on (dropping what is over it).
    pub fn set_limit(&self, limit: Limit) {
        let mut i = self.inner.borrow_mut();
        i.limit = limit;
        if limit.groups == 0 {
            i.groups.clear();
        }
        i.evict();
    }

    /// How many groups are held.
    pub fn len(&self) -> usize {
        self.inner.borrow().groups.len()
    }

    /// Whether no group is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many times a group was loaded from storage since this was made.
    pub fn loads(&self) -> u64 {
        self.inner.borrow().loads
    }

    /// Takes the group out for an operation: held, or `None` to load it.
    /// An operation that takes a group another one holds out would work
    /// on a second copy, and the copy given back last would win: refused.
    fn take(&self, id: &[u8; 32]) -> Result<Option<(MlsGroup, Option<u64>)>, CoreError> {
        let mut i = self.inner.borrow_mut();
        if !i.out.insert(*id) {
            return Err(crate::error::internal("a group taken out twice at once"));
        }
        if let Some(g) = i.pending.remove(id) {
            return Ok(Some(g));
        }
        Ok(i.groups.remove(id).map(|e| (e.group, e.past_done)))
    }

    fn put_back(&self, id: &[u8; 32]) {
        self.inner.borrow_mut().out.remove(id);
    }

    fn give(&self, id: [u8; 32], group: MlsGroup, past_done: Option<u64>) {
        let mut i = self.inner.borrow_mut();
        i.out.remove(&id);
        i.pending.insert(id, (group, past_done));
    }

    fn count_load(&self) {
        self.inner.borrow_mut().loads += 1;
    }
}

impl Inner {
    fn evict(&mut self) {
        loop {
            let leaves: usize = self.groups.values().map(|e| e.leaves).sum();
            let over = self.groups.len() > self.limit.groups || leaves > self.limit.leaves;
            if !over || self.groups.len() <= 1 {
                return;
            }
            let oldest = self
                .groups
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                self.groups.remove(&id);
            }
        }
    }
}

/// A group taken out for one operation. Dropped, it is forgotten; it goes
/// back to the provider's [`Held`] only through [`Loaded::kept`] or
/// [`Loaded::keep`].
pub(crate) struct Loaded<'p> {
    group: Option<MlsGroup>,
    id: [u8; 32],
    held: Option<&'p Held>,
    past_done: Option<u64>,
}

impl std::ops::Deref for Loaded<'_> {
    type Target = MlsGroup;
    fn deref(&self) -> &MlsGroup {
        self.group
            .as_ref()
            .expect("a loaded group until it is kept")
    }
}

impl std::ops::DerefMut for Loaded<'_> {
    fn deref_mut(&mut self) -> &mut MlsGroup {
        self.group
            .as_mut()
            .expect("a loaded group until it is kept")
    }
}

impl Drop for Loaded<'_> {
    fn drop(&mut self) {
        if let Some(held) = self.held {
            held.put_back(&self.id);
        }
    }
}

impl Loaded<'_> {
    /// Gives the group back (to be held once the transaction commits).
    pub(crate) fn keep(mut self) {
        if let (Some(held), Some(group)) = (self.held, self.group.take()) {
            held.give(self.id, group, self.past_done);
        }
    }

    /// This device read or made an application message of the group's
    /// current epoch: the message secrets of past epochs go (once an
    /// epoch; see [`PAST_EPOCHS`]).
    pub(crate) fn past_epochs_done<P: Provider>(&mut self, provider: &P) -> Result<(), CoreError> {
        let epoch = self.epoch().as_u64();
        if self.past_done == Some(epoch) {
            return Ok(());
        }
        self.delete_past_epoch_secrets(provider, PastEpochDeletion::delete_all())
            .map_err(storage)?;
        self.past_done = Some(epoch);
        Ok(())
    }

    /// Gives the group back if `result` is a success, and returns it.
    pub(crate) fn kept<T, E>(self, result: Result<T, E>) -> Result<T, E> {
        if result.is_ok() {
            self.keep();
        }
        result
    }
}

/// The group, taken from the held ones or loaded from storage;
/// `UnknownGroup` if this device holds none.
pub(crate) fn load<P: Provider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
) -> Result<Loaded<'_>, CoreError> {
    load_if_any(provider, group_id)?.ok_or(CoreError::UnknownGroup)
}

/// Like [`load`], with `None` if this device holds no such group.
pub(crate) fn load_if_any<P: Provider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
) -> Result<Option<Loaded<'_>>, CoreError> {
    let held = provider.held();
    let (taken, past_done) = match held {
        Some(h) => h.take(&group_id.0)?.unzip(),
        None => (None, None),
    };
    // From here on, dropping `loaded` puts the group back as not taken.
    let mut loaded = Loaded {
        group: taken,
        id: group_id.0,
        held,
        past_done: past_done.flatten(),
    };
    if loaded.group.is_some() {
        return Ok(Some(loaded));
    }
    let Some(mut g) =
        MlsGroup::load(provider.storage(), &GroupId::from_slice(&group_id.0)).map_err(storage)?
    else {
        return Ok(None);
    };
    if let Some(h) = held {
        h.count_load();
    }
    // Groups made before members kept past epochs get the policy now.
    let policy = PastEpochDeletionPolicy::MaxEpochs(PAST_EPOCHS);
    if *g.past_epoch_deletion_policy() != policy {
        g.set_past_epoch_deletion_policy(provider, policy)
            .map_err(storage)?;
    }
    loaded.group = Some(g);
    Ok(Some(loaded))
}

/// Reads the group with `f`, and holds it.
pub(crate) fn read<P: Provider, T>(
    provider: &P,
    group_id: sotto_proto::GroupId,
    f: impl FnOnce(&MlsGroup) -> T,
) -> Result<T, CoreError> {
    let g = load(provider, group_id)?;
    let out = f(&g);
    g.keep();
    Ok(out)
}

/// Whether the group is held in memory or stored (loaded and held then:
/// it is about to be used).
pub(crate) fn exists<P: Provider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
) -> Result<bool, CoreError> {
    Ok(load_if_any(provider, group_id)?.map(Loaded::keep).is_some())
}

/// Holds a group just made or joined (once the transaction commits).
pub(crate) fn hold<P: Provider>(provider: &P, group: MlsGroup) {
    if let (Some(held), Ok(id)) = (
        provider.held(),
        <[u8; 32]>::try_from(group.group_id().as_slice()),
    ) {
        held.give(id, group, None);
    }
}
