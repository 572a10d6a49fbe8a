//! Group conversations: their metadata (admins, and the name sealed from
//! the server) in a group context extension, the judgement every client
//! and the server pass on every commit (only admins add, remove or change
//! the metadata; anyone may leave or update their own leaf; nobody changes
//! who their leaf says they are), and the building of commits.
//!
//! The server orders commits (one per epoch) and runs the same judgement
//! ([`crate::public`]) before it accepts one, so that a commit it accepts
//! is one every member applies.

use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::*;
use openmls_traits::OpenMlsProvider;
use serde::{Deserialize, Serialize};
use sotto_proto::{AccountId, DeviceId};

use crate::identity::{CredentialIdentity, DeviceKey};
use crate::mls::{CoreError, internal, leaf_identity, load, storage};
use crate::names::{NameKey, SealedKey, SealedName, WelcomeBundle};

/// The extension type of Sotto's group metadata (private-use range).
pub const META_EXTENSION: u16 = 0xff5a;

/// The extension type of a conversation's disappearing-message timer: a u64
/// of seconds (absent: messages stay).
pub const TIMER_EXTENSION: u16 = 0xff5b;

/// The group context extensions of a conversation: its metadata (groups
/// only), its timer, and the requirement that every member supports both.
pub(crate) fn context_extensions(
    meta: Option<&GroupMeta>,
    timer_s: Option<u64>,
) -> Result<Extensions<GroupContext>, CoreError> {
    let required = RequiredCapabilitiesExtension::new(
        &[
            ExtensionType::Unknown(META_EXTENSION),
            ExtensionType::Unknown(TIMER_EXTENSION),
        ],
        &[],
        &[CredentialType::Basic],
    );
    let mut v = vec![Extension::RequiredCapabilities(required)];
    if let Some(m) = meta {
        v.push(m.to_extension()?);
    }
    if let Some(t) = timer_s {
        v.push(Extension::Unknown(
            TIMER_EXTENSION,
            UnknownExtension(t.to_be_bytes().to_vec()),
        ));
    }
    Extensions::from_vec(v).map_err(internal)
}

pub(crate) fn timer_of(exts: &Extensions<GroupContext>) -> Option<u64> {
    exts.iter().find_map(|e| match e {
        Extension::Unknown(t, UnknownExtension(b)) if *t == TIMER_EXTENSION => {
            <[u8; 8]>::try_from(b.as_slice())
                .ok()
                .map(u64::from_be_bytes)
        }
        _ => None,
    })
}

/// The conversation's disappearing-message timer in seconds, if set.
pub fn timer<P: OpenMlsProvider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
) -> Result<Option<u64>, CoreError> {
    Ok(timer_of(load(provider, group_id)?.extensions()))
}

/// What a group's context says of it: who administers it, and its name
/// sealed under the current name key (see [`crate::names`]). The server
/// reads the admins to judge commits; it cannot read the name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMeta {
    /// Accounts allowed to add and remove others and to change this metadata.
    pub admins: Vec<AccountId>,
    /// The group's name, chosen by its admins, sealed.
    pub name: SealedName,
}

impl GroupMeta {
    fn to_extension(&self) -> Result<Extension, CoreError> {
        Ok(Extension::Unknown(
            META_EXTENSION,
            UnknownExtension(postcard::to_stdvec(self).map_err(internal)?),
        ))
    }

    pub(crate) fn from_extensions(exts: &Extensions<GroupContext>) -> Option<Self> {
        exts.iter().find_map(|e| match e {
            Extension::Unknown(t, UnknownExtension(b)) if *t == META_EXTENSION => {
                let (m, rest) = postcard::take_from_bytes::<Self>(b).ok()?;
                rest.is_empty().then_some(m)
            }
            _ => None,
        })
    }

    /// Whether `account` is an admin.
    pub fn is_admin(&self, account: &AccountId) -> bool {
        self.admins.contains(account)
    }
}

/// The metadata of a group; `None` for a one-to-one conversation.
pub fn meta<P: OpenMlsProvider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
) -> Result<Option<GroupMeta>, CoreError> {
    Ok(GroupMeta::from_extensions(
        load(provider, group_id)?.extensions(),
    ))
}

/// The identity of the member at `leaf` in a group's public state.
pub(crate) fn member_identity(pg: &PublicGroup, leaf: LeafNodeIndex) -> Option<CredentialIdentity> {
    let l = pg.leaf(leaf)?;
    leaf_identity(l.credential(), l.signature_key().as_slice())
}

/// The member whose own removal a proposal is, if it is one.
pub(crate) fn self_removal(pg: &PublicGroup, p: &QueuedProposal) -> Option<CredentialIdentity> {
    let Proposal::Remove(r) = p.proposal() else {
        return None;
    };
    match p.sender() {
        Sender::Member(i) if *i == r.removed() => member_identity(pg, *i),
        _ => None,
    }
}

fn refuse(why: &str) -> CoreError {
    CoreError::Rejected(format!("commit refused: {why}"))
}

/// What judging a commit found.
#[derive(Debug)]
pub(crate) struct Judged {
    /// Who committed it.
    pub(crate) committer: CredentialIdentity,
    /// The signed device lists that vouched for the devices it adds.
    pub(crate) device_lists: Vec<sotto_proto::SignedDeviceList>,
    /// Devices it re-adds (their leaf removed and a fresh one added).
    pub(crate) readded: Vec<(AccountId, DeviceId)>,
}

/// Judges a commit against the group's state before it. Every member's
/// client runs this on every commit it processes, and the server on every
/// commit it accepts (on the same public state), so a commit the server
/// lets through is one every member takes:
///
/// - the committer is a member whose credential names its leaf's key;
/// - every added leaf has a Sotto credential, and is on its account's
///   signed device list (carried in the commit's authenticated data);
/// - a leaf that changes (the committer's path, an update) keeps its
///   account, device and handle: nobody turns into someone else;
/// - the group's policy ([`check_commit`]).
pub(crate) fn judge_commit(
    pg: &PublicGroup,
    sender: &Sender,
    staged: &StagedCommit,
    aad: &[u8],
) -> Result<Judged, CoreError> {
    let committer = match sender {
        Sender::Member(i) => member_identity(pg, *i).ok_or(CoreError::ForgedCredential)?,
        Sender::NewMemberCommit => return judge_rejoin(pg, staged),
        _ => return Err(refuse("not from a member")),
    };
    for add in staged.add_proposals() {
        let leaf = add.add_proposal().key_package().leaf_node();
        if leaf_identity(leaf.credential(), leaf.signature_key().as_slice()).is_none() {
            return Err(CoreError::ForgedCredential);
        }
    }
    if let Some(leaf) = staged.update_path_leaf_node() {
        let id = leaf_identity(leaf.credential(), leaf.signature_key().as_slice());
        if id.as_ref() != Some(&committer) {
            return Err(CoreError::ForgedCredential);
        }
    }
    for u in staged.update_proposals() {
        let leaf = u.update_proposal().leaf_node();
        let before = match u.sender() {
            Sender::Member(j) => member_identity(pg, *j),
            _ => None,
        };
        let after = leaf_identity(leaf.credential(), leaf.signature_key().as_slice());
        if before.is_none() || before != after {
            return Err(CoreError::ForgedCredential);
        }
    }
    check_commit(pg, &committer, staged)?;
    let device_lists = check_added_devices(staged, aad)?;
    let readded = readded_devices(pg, staged);
    Ok(Judged {
        committer,
        device_lists,
        readded,
    })
}

/// Judges an external commit: only a rejoin is one, a member device that
/// lost its state replacing its own leaf by a fresh one (same account,
/// device and handle) and changing nothing else. Nobody new comes in by
/// external commit.
fn judge_rejoin(pg: &PublicGroup, staged: &StagedCommit) -> Result<Judged, CoreError> {
    let leaf = staged
        .update_path_leaf_node()
        .ok_or_else(|| refuse("an external commit without a path"))?;
    let id = leaf_identity(leaf.credential(), leaf.signature_key().as_slice())
        .ok_or(CoreError::ForgedCredential)?;
    let mut removed = Vec::new();
    for q in staged.queued_proposals() {
        match q.proposal() {
            Proposal::ExternalInit(_) => {}
            Proposal::Remove(r) => removed.push(member_identity(pg, r.removed())),
            _ => return Err(refuse("an external commit may only rejoin")),
        }
    }
    if removed != [Some(id.clone())] {
        return Err(refuse(
            "only a member device rejoins, in place of its own leaf",
        ));
    }
    Ok(Judged {
        readded: vec![(id.account, id.device)],
        committer: id,
        device_lists: Vec::new(),
    })
}

/// The policy on a commit from `committer`, judged against the group
/// before the commit: adds, removals of other accounts and metadata
/// changes need an admin; a member's own leave (proposed by itself) and
/// removals of the committer's own devices do not. The commit that
/// creates a group (from epoch 0) sets its metadata, naming the committer
/// an admin.
pub(crate) fn check_commit(
    pg: &PublicGroup,
    committer: &CredentialIdentity,
    staged: &StagedCommit,
) -> Result<(), CoreError> {
    let meta = GroupMeta::from_extensions(pg.group_context().extensions());
    let creation = pg.group_context().epoch().as_u64() == 0;
    let is_admin = meta
        .as_ref()
        .is_some_and(|m| m.is_admin(&committer.account));
    // A re-add (a member device that lost its state gets a fresh leaf):
    // the same commit removes the device's leaf and adds the same account's
    // same device back. Any member may do that; nobody new comes in.
    let readded = readded_devices(pg, staged);
    // At creation the creator alone is in the group: its adds are the
    // creation itself.
    let may_add = is_admin || creation;
    for q in staged.queued_proposals() {
        match q.proposal() {
            Proposal::Add(add) => {
                let leaf = add.key_package().leaf_node();
                let id = leaf_identity(leaf.credential(), leaf.signature_key().as_slice())
                    .ok_or(CoreError::ForgedCredential)?;
                let readd = readded.contains(&(id.account, id.device));
                if !may_add && id.account != committer.account && !readd {
                    return Err(refuse("only admins add members"));
                }
            }
            Proposal::Remove(r) => {
                let removed = member_identity(pg, r.removed())
                    .ok_or_else(|| refuse("removal of an unknown leaf"))?;
                let own_leave = matches!(q.sender(), Sender::Member(i) if *i == r.removed());
                let readd = readded.contains(&(removed.account, removed.device));
                if !is_admin && !own_leave && removed.account != committer.account && !readd {
                    return Err(refuse("only admins remove members"));
                }
            }
            Proposal::GroupContextExtensions(e) => {
                let new = GroupMeta::from_extensions(e.extensions());
                let has_meta_bytes = e
                    .extensions()
                    .iter()
                    .any(|x| matches!(x, Extension::Unknown(t, _) if *t == META_EXTENSION));
                if new.is_none() && has_meta_bytes {
                    return Err(refuse("malformed group metadata"));
                }
                match (&meta, new) {
                    // A group: only admins change it, and it keeps an admin.
                    (Some(_), Some(new)) => {
                        if !is_admin {
                            return Err(refuse("only admins change the group"));
                        }
                        if new.admins.is_empty() {
                            return Err(refuse("a group needs an admin"));
                        }
                    }
                    (Some(_), None) => return Err(refuse("group metadata removed")),
                    // Creating a group: its creator is an admin.
                    (None, Some(new)) if creation => {
                        if !new.is_admin(&committer.account) {
                            return Err(refuse("a new group's creator is its admin"));
                        }
                    }
                    // A one-to-one conversation: either side sets the timer,
                    // nobody turns it into a group.
                    (None, Some(_)) => return Err(refuse("a conversation cannot become a group")),
                    (None, None) => {}
                }
            }
            Proposal::Update(_) => {}
            _ => return Err(refuse("unsupported proposal")),
        }
    }
    Ok(())
}

/// The devices a commit re-adds: (account, device) of every leaf it
/// removes whose very device it also adds (a fresh KeyPackage of the same
/// device key, credential naming the same account).
pub(crate) fn readded_devices(
    pg: &PublicGroup,
    staged: &StagedCommit,
) -> Vec<(AccountId, DeviceId)> {
    let removed: Vec<CredentialIdentity> = staged
        .remove_proposals()
        .filter_map(|r| member_identity(pg, r.remove_proposal().removed()))
        .collect();
    staged
        .add_proposals()
        .filter_map(|a| {
            let leaf = a.add_proposal().key_package().leaf_node();
            leaf_identity(leaf.credential(), leaf.signature_key().as_slice())
        })
        .filter(|a| {
            removed
                .iter()
                .any(|r| r.account == a.account && r.device == a.device)
        })
        .map(|a| (a.account, a.device))
        .collect()
}

/// Every device a commit adds must be on its account's signed device list,
/// carried in the commit's authenticated data; returns those lists.
pub(crate) fn check_added_devices(
    staged: &StagedCommit,
    aad: &[u8],
) -> Result<Vec<sotto_proto::SignedDeviceList>, CoreError> {
    let lists: Vec<sotto_proto::SignedDeviceList> = if aad.is_empty() {
        Vec::new()
    } else {
        postcard::from_bytes(aad)
            .map_err(|_| CoreError::Rejected("malformed commit data".into()))?
    };
    if !lists.iter().all(crate::identity::device_list_is_signed) {
        return Err(CoreError::GhostDevice);
    }
    for add in staged.add_proposals() {
        let leaf = add.add_proposal().key_package().leaf_node();
        let id = leaf_identity(leaf.credential(), leaf.signature_key().as_slice())
            .ok_or(CoreError::ForgedCredential)?;
        let vouched = lists
            .iter()
            .any(|l| l.account == id.account && l.devices.contains(&id.device));
        if !vouched {
            return Err(CoreError::GhostDevice);
        }
    }
    Ok(lists)
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
        name: after.name.open(&key, &gid),
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
pub fn stage<P: OpenMlsProvider>(
    provider: &P,
    device: &DeviceKey,
    group_id: sotto_proto::GroupId,
    change: Change,
    name_key: Option<&NameKey>,
) -> Result<Option<StagedChange>, CoreError> {
    let mut g = load(provider, group_id)?;
    if change.is_empty() && g.pending_proposals().next().is_none() {
        return Ok(None);
    }
    stage_on(provider, device, &mut g, change, name_key).map(Some)
}

pub(crate) fn stage_on<P: OpenMlsProvider>(
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
                let sealed = SealedName::seal(n, &key, &gid);
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
pub fn clear_pending<P: OpenMlsProvider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
) -> Result<(), CoreError> {
    let mut g = load(provider, group_id)?;
    g.clear_pending_commit(provider.storage()).map_err(storage)
}

/// Proposes this device's removal (leaving); another member commits it.
pub fn propose_leave<P: OpenMlsProvider>(
    provider: &P,
    device: &DeviceKey,
    group_id: sotto_proto::GroupId,
) -> Result<Vec<u8>, CoreError> {
    let mut g = load(provider, group_id)?;
    let msg = g.leave_group(provider, device).map_err(internal)?;
    msg.tls_serialize_detached().map_err(internal)
}

/// Whether this device is still a member (false after its removal).
pub fn is_active<P: OpenMlsProvider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
) -> Result<bool, CoreError> {
    Ok(load(provider, group_id)?.is_active())
}

/// The epoch authenticator: equal on every member in the same epoch.
pub fn epoch_authenticator<P: OpenMlsProvider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
) -> Result<Vec<u8>, CoreError> {
    Ok(load(provider, group_id)?
        .epoch_authenticator()
        .as_slice()
        .to_vec())
}
