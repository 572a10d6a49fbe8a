//! Group conversations on this device: their metadata and timer as this
//! device's state holds them, the names a commit sets, and the building
//! of commits. The judgement every member and the server pass on every
//! commit is key-free and lives in `sotto_rules::judge`; the server runs
//! it on the same public state (`sotto_rules::public`) before it accepts
//! a commit, so that a commit it accepts is one every member applies.

use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::*;
use sotto_proto::{AccountId, DeviceId};

pub use sotto_rules::context::{GroupMeta, META_EXTENSION, TIMER_EXTENSION};
use sotto_rules::context::{context_extensions, timer_of};

use crate::error::{CoreError, internal, storage};
use crate::identity::DeviceKey;
use crate::names::{NameKey, SealedKey, WelcomeBundle, open_name, seal_name};
use crate::state::{Provider, load, read};

/// The conversation's disappearing-message timer in seconds, if set.
pub fn timer<P: Provider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
) -> Result<Option<u64>, CoreError> {
    read(provider, group_id, |g| timer_of(g.extensions()))
}

/// The metadata of a group; `None` for a one-to-one conversation.
pub fn meta<P: Provider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
) -> Result<Option<GroupMeta>, CoreError> {
    read(provider, group_id, |g| {
        GroupMeta::from_extensions(g.extensions())
    })
}

/// A group's name after a commit that set it: the name (`None` if the
/// sealed name does not open with the key, which a member can make happen
/// but not hide) and the key it is sealed under now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renamed {
    /// The new name, if it could be read.
    pub name: Option<String>,
    /// The key the name is sealed under now: the client keeps it for the
    /// Welcomes it makes.
    pub key: NameKey,
}

/// The name a staged commit of `g` (at its current epoch) sets, if it sets
/// one: the new sealed name opens with the key exported from the current
/// epoch. Called before the commit is merged.
pub(crate) fn renamed(
    g: &MlsGroup,
    crypto: &impl OpenMlsCrypto,
    staged: &StagedCommit,
) -> Result<Option<Renamed>, CoreError> {
    let before = GroupMeta::from_extensions(g.extensions()).map(|m| m.name);
    let Some(after) = GroupMeta::from_extensions(staged.group_context().extensions()) else {
        return Ok(None);
    };
    if before.as_ref() == Some(&after.name) {
        return Ok(None);
    }
    let key = rename_key(g, crypto)?;
    let gid = group_id_of(g)?;
    Ok(Some(Renamed {
        name: open_name(&after.name, &key, &gid),
        key,
    }))
}

/// The key a rename committed in `g`'s current epoch seals the name under.
fn rename_key(g: &MlsGroup, crypto: &impl OpenMlsCrypto) -> Result<NameKey, CoreError> {
    let exported = g
        .export_secret(
            crypto,
            crate::names::RENAME_LABEL,
            g.group_id().as_slice(),
            32,
        )
        .map_err(internal)?;
    NameKey::from_exported(exported).ok_or_else(|| internal("exported key of the wrong length"))
}

fn group_id_of(g: &MlsGroup) -> Result<sotto_proto::GroupId, CoreError> {
    let id: [u8; 32] = g
        .group_id()
        .as_slice()
        .try_into()
        .map_err(|_| CoreError::Rejected("group id is not 32 bytes".into()))?;
    Ok(sotto_proto::GroupId(id))
}

/// A change to commit.
#[derive(Debug, Default, Clone)]
pub struct Change {
    /// New member devices (verified KeyPackages).
    pub adds: Vec<KeyPackage>,
    /// Devices to remove.
    pub removes: Vec<DeviceId>,
    /// A new name (a group's admins only).
    pub name: Option<String>,
    /// New admins (a group's admins only).
    pub admins: Option<Vec<AccountId>>,
    /// A new disappearing-message timer: `Some(None)` turns it off.
    pub timer: Option<Option<u64>>,
    /// Refresh this device's leaf (post-compromise security).
    pub self_update: bool,
    /// The signed device lists of every account whose devices are added
    /// (peers and the server refuse an added device no list vouches for).
    pub device_lists: Vec<sotto_proto::SignedDeviceList>,
}

impl Change {
    fn is_empty(&self) -> bool {
        self.adds.is_empty()
            && self.removes.is_empty()
            && self.name.is_none()
            && self.admins.is_none()
            && self.timer.is_none()
            && !self.self_update
    }
}

/// A staged commit, waiting for the server.
#[derive(Debug)]
pub struct StagedChange {
    /// The epoch it was built on.
    pub epoch: u64,
    /// The commit (an MLS PublicMessage, which the server checks).
    pub commit: Vec<u8>,
    /// The GroupInfo of the epoch the commit makes (with the external
    /// public key, without the ratchet tree, which the server has): what a
    /// member device that lost its state rejoins with.
    pub group_info: Vec<u8>,
    /// The Welcome bundle for the added devices.
    pub welcome: Option<Vec<u8>>,
    /// The devices the commit adds.
    pub added: Vec<DeviceId>,
}

/// Builds and stages a commit of `change` plus any pending proposals (a
/// member's leave). `name_key` is the key the group's name is sealed under
/// now (the Welcome hands it to added devices). Call `mls::merge_pending`
/// once the server accepted it, or [`clear_pending`] if it did not.
/// Returns `None` if there is nothing to commit.
pub fn stage<P: Provider>(
    provider: &P,
    device: &DeviceKey,
    group_id: sotto_proto::GroupId,
    change: Change,
    name_key: Option<&NameKey>,
) -> Result<Option<StagedChange>, CoreError> {
    let mut g = load(provider, group_id)?;
    if change.is_empty() && g.pending_proposals().next().is_none() {
        g.keep();
        return Ok(None);
    }
    let staged = stage_on(provider, device, &mut g, change, name_key).map(Some);
    g.kept(staged)
}

pub(crate) fn stage_on<P: Provider>(
    provider: &P,
    device: &DeviceKey,
    g: &mut MlsGroup,
    change: Change,
    name_key: Option<&NameKey>,
) -> Result<StagedChange, CoreError> {
    let epoch = g.epoch().as_u64();
    let gid = group_id_of(g)?;
    let current_meta = GroupMeta::from_extensions(g.extensions());
    let current_timer = timer_of(g.extensions());
    let mut removed_leaves = Vec::new();
    for d in &change.removes {
        let m = g
            .members()
            .find(|m| m.signature_key.as_slice() == d.0.as_slice())
            .ok_or_else(|| CoreError::Rejected(format!("{} is not in the group", d.short())))?;
        removed_leaves.push(m.index);
    }
    let added: Vec<DeviceId> = change
        .adds
        .iter()
        .filter_map(|kp| {
            kp.leaf_node()
                .signature_key()
                .as_slice()
                .try_into()
                .ok()
                .map(DeviceId)
        })
        .collect();
    // The key the Welcome hands on: the current one, or the one a rename
    // in this commit seals the new name under.
    let mut welcome_key = name_key.cloned();
    let context_change = change.name.is_some() || change.admins.is_some() || change.timer.is_some();
    let new_meta = if change.name.is_some() || change.admins.is_some() {
        let admins = match change.admins {
            Some(a) => a,
            None => current_meta
                .as_ref()
                .map(|m| m.admins.clone())
                .ok_or_else(|| CoreError::Rejected("not a group".into()))?,
        };
        let name = match &change.name {
            Some(n) => {
                let key = rename_key(g, provider.crypto())?;
                let sealed = seal_name(n, &key, &gid);
                welcome_key = Some(key);
                sealed
            }
            None => current_meta
                .as_ref()
                .map(|m| m.name.clone())
                .ok_or_else(|| CoreError::Rejected("not a group".into()))?,
        };
        Some(GroupMeta { admins, name })
    } else {
        current_meta
    };
    if !change.device_lists.is_empty() {
        g.set_aad(postcard::to_stdvec(&change.device_lists).map_err(internal)?);
    }
    let mut builder = g
        .commit_builder()
        .consume_proposal_store(true)
        .force_self_update(change.self_update)
        .propose_adds(change.adds)
        .propose_removals(removed_leaves);
    if context_change {
        let timer = change.timer.unwrap_or(current_timer);
        builder = builder
            .propose_group_context_extensions(context_extensions(new_meta.as_ref(), timer)?)
            .map_err(internal)?;
    }
    let bundle = builder
        .load_psks(provider.storage())
        .map_err(storage)?
        .create_group_info(true)
        .use_ratchet_tree_extension(false)
        .build(provider.rand(), provider.crypto(), device, |_| true)
        .map_err(|e| CoreError::Rejected(e.to_string()))?
        .stage_commit(provider)
        .map_err(internal)?;
    let welcome = bundle.to_welcome_msg();
    let (commit, _, group_info) = bundle.into_contents();
    let commit = commit.tls_serialize_detached().map_err(internal)?;
    let group_info = group_info
        .map(MlsMessageOut::from)
        .ok_or_else(|| internal("no group info for the new epoch"))?
        .tls_serialize_detached()
        .map_err(internal)?;
    let welcome = match welcome {
        None => None,
        Some(w) => {
            let pending = g
                .pending_commit()
                .ok_or_else(|| internal("no pending commit after staging"))?;
            let tree = pending
                .export_ratchet_tree(provider.crypto(), g.export_ratchet_tree())
                .map_err(internal)?
                .ok_or_else(|| internal("no ratchet tree of the new epoch"))?;
            let name_key = match (&new_meta, welcome_key) {
                (Some(_), Some(k)) => {
                    let epoch_key = NameKey::from_exported(
                        pending
                            .export_secret(
                                provider.crypto(),
                                crate::names::WELCOME_LABEL,
                                &gid.0,
                                32,
                            )
                            .map_err(internal)?,
                    )
                    .ok_or_else(|| internal("exported key of the wrong length"))?;
                    Some(SealedKey::seal(&k, &epoch_key, &gid))
                }
                _ => None,
            };
            let b = WelcomeBundle {
                welcome: w.tls_serialize_detached().map_err(internal)?,
                ratchet_tree: tree.tls_serialize_detached().map_err(internal)?,
                name_key,
            };
            Some(postcard::to_stdvec(&b).map_err(internal)?)
        }
    };
    Ok(StagedChange {
        epoch,
        commit,
        group_info,
        welcome,
        added,
    })
}

/// Drops a staged commit the server refused.
pub fn clear_pending<P: Provider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
) -> Result<(), CoreError> {
    let mut g = load(provider, group_id)?;
    let cleared = g.clear_pending_commit(provider.storage()).map_err(storage);
    g.kept(cleared)
}

/// The authenticated data of the leave a device proposes as it obeys a
/// wipe order: the members learn that the device was wiped, not only that
/// it left, and a group shows an account whose every device left so as
/// having no device left.
pub const WIPED: &[u8] = b"sotto-wiped-v1";

/// Proposes this device's removal (leaving); another member commits it.
/// `wiped`: the device leaves because it obeys a wipe order ([`WIPED`]).
pub fn propose_leave<P: Provider>(
    provider: &P,
    device: &DeviceKey,
    group_id: sotto_proto::GroupId,
    wiped: bool,
) -> Result<Vec<u8>, CoreError> {
    let mut g = load(provider, group_id)?;
    if wiped {
        g.set_aad(WIPED.to_vec());
    }
    let msg = g.leave_group(provider, device).map_err(internal);
    g.kept(msg)?.tls_serialize_detached().map_err(internal)
}

/// Whether this device is still a member (false after its removal).
pub fn is_active<P: Provider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
) -> Result<bool, CoreError> {
    read(provider, group_id, |g| g.is_active())
}

/// The epoch authenticator: equal on every member in the same epoch.
pub fn epoch_authenticator<P: Provider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
) -> Result<Vec<u8>, CoreError> {
    read(provider, group_id, |g| {
        g.epoch_authenticator().as_slice().to_vec()
    })
}
