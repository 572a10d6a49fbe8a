//! Group conversations: their metadata (name, admins) in a group context
//! extension that every member's client reads, the policy every client
//! enforces on commits it receives (only admins add, remove or change the
//! metadata; anyone may leave or update their own leaf), and the building of
//! commits.
//!
//! The server orders commits (one per epoch) but does not judge them: the
//! members do, here.

use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::*;
use openmls_traits::OpenMlsProvider;
use serde::{Deserialize, Serialize};
use sotto_proto::{AccountId, DeviceId};

use crate::identity::{CredentialIdentity, DeviceKey};
use crate::mls::{CoreError, internal, leaf_identity, load, storage};

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
        v.push(m.to_extension());
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

/// What a group is called and who administers it. Lives in the MLS group
/// context, so every member agrees on it and only a commit changes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMeta {
    /// The group's name, chosen by its admins.
    pub name: String,
    /// Accounts allowed to add and remove others and to change this metadata.
    pub admins: Vec<AccountId>,
}

impl GroupMeta {
    fn to_extension(&self) -> Extension {
        Extension::Unknown(
            META_EXTENSION,
            UnknownExtension(postcard::to_stdvec(self).unwrap_or_default()),
        )
    }

    fn from_extensions(exts: &Extensions<GroupContext>) -> Option<Self> {
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

/// The member whose own removal a proposal is, if it is one.
pub(crate) fn self_removal(g: &MlsGroup, p: &QueuedProposal) -> Option<CredentialIdentity> {
    let Proposal::Remove(r) = p.proposal() else {
        return None;
    };
    match p.sender() {
        Sender::Member(i) if *i == r.removed() => {
            let m = g.member_at(*i)?;
            leaf_identity(&m.credential, &m.signature_key)
        }
        _ => None,
    }
}

fn refuse(why: &str) -> CoreError {
    CoreError::Rejected(format!("commit refused: {why}"))
}

/// The policy on a commit from `committer`, judged against the group
/// before the commit: adds, removals of other accounts and metadata
/// changes need an admin; a member's own leave (proposed by itself) and
/// removals of the committer's own devices do not.
pub(crate) fn check_commit(
    g: &MlsGroup,
    committer: &CredentialIdentity,
    staged: &StagedCommit,
) -> Result<(), CoreError> {
    let meta = GroupMeta::from_extensions(g.extensions());
    let is_admin = meta
        .as_ref()
        .is_some_and(|m| m.is_admin(&committer.account));
    // A re-add (a member device that lost its state gets a fresh leaf):
    // the same commit removes the device's leaf and adds the same account's
    // same device back. Any member may do that; nobody new comes in.
    let readded = readded_devices(g, staged);
    for q in staged.queued_proposals() {
        match q.proposal() {
            Proposal::Add(add) => {
                let leaf = add.key_package().leaf_node();
                let id = leaf_identity(leaf.credential(), leaf.signature_key().as_slice())
                    .ok_or(CoreError::ForgedCredential)?;
                let readd = readded.contains(&(id.account, id.device));
                if !is_admin && id.account != committer.account && !readd {
                    return Err(refuse("only admins add members"));
                }
            }
            Proposal::Remove(r) => {
                let removed = g
                    .member_at(r.removed())
                    .and_then(|m| leaf_identity(&m.credential, &m.signature_key))
                    .ok_or_else(|| refuse("removal of an unknown leaf"))?;
                let own_leave = matches!(q.sender(), Sender::Member(i) if *i == r.removed());
                let readd = readded.contains(&(removed.account, removed.device));
                if !is_admin && !own_leave && removed.account != committer.account && !readd {
                    return Err(refuse("only admins remove members"));
                }
            }
            Proposal::GroupContextExtensions(e) => {
                let new = GroupMeta::from_extensions(e.extensions());
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
pub(crate) fn readded_devices(g: &MlsGroup, staged: &StagedCommit) -> Vec<(AccountId, DeviceId)> {
    let removed: Vec<CredentialIdentity> = staged
        .remove_proposals()
        .filter_map(|r| g.member_at(r.remove_proposal().removed()))
        .filter_map(|m| leaf_identity(&m.credential, &m.signature_key))
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

/// A change to commit.
#[derive(Debug, Default, Clone)]
pub struct Change {
    /// New member devices (verified KeyPackages).
    pub adds: Vec<KeyPackage>,
    /// Devices to remove.
    pub removes: Vec<DeviceId>,
    /// New metadata.
    pub meta: Option<GroupMeta>,
    /// A new disappearing-message timer: `Some(None)` turns it off.
    pub timer: Option<Option<u64>>,
    /// Refresh this device's leaf (post-compromise security).
    pub self_update: bool,
    /// The signed device lists of every account whose devices are added
    /// (peers refuse an added device no list vouches for).
    pub device_lists: Vec<sotto_proto::SignedDeviceList>,
}

/// A staged commit, waiting for the server.
#[derive(Debug)]
pub struct StagedChange {
    /// The epoch it was built on.
    pub epoch: u64,
    /// The commit for the current members.
    pub commit: Vec<u8>,
    /// The Welcome for added devices.
    pub welcome: Option<Vec<u8>>,
    /// Who the Welcome is for.
    pub welcome_recipients: Vec<DeviceId>,
    /// Every member device after the commit.
    pub members: Vec<DeviceId>,
}

fn device_of(m: &Member) -> Option<DeviceId> {
    m.signature_key.as_slice().try_into().ok().map(DeviceId)
}

/// Builds and stages a commit of `change` plus any pending proposals (a
/// member's leave). Call `mls::merge_pending` once the server accepted it,
/// or [`clear_pending`] if it did not. Returns `None` if there is nothing
/// to commit.
pub fn stage<P: OpenMlsProvider>(
    provider: &P,
    device: &DeviceKey,
    group_id: sotto_proto::GroupId,
    change: Change,
) -> Result<Option<StagedChange>, CoreError> {
    let mut g = load(provider, group_id)?;
    let nothing = change.adds.is_empty()
        && change.removes.is_empty()
        && change.meta.is_none()
        && change.timer.is_none()
        && !change.self_update
        && g.pending_proposals().next().is_none();
    if nothing {
        return Ok(None);
    }
    let epoch = g.epoch().as_u64();
    let current_meta = GroupMeta::from_extensions(g.extensions());
    let current_timer = timer_of(g.extensions());
    let before: Vec<Member> = g.members().collect();
    let mut removed_leaves = Vec::new();
    for d in &change.removes {
        let m = before
            .iter()
            .find(|m| device_of(m) == Some(*d))
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
    if !change.device_lists.is_empty() {
        g.set_aad(postcard::to_stdvec(&change.device_lists).map_err(internal)?);
    }
    let mut builder = g
        .commit_builder()
        .consume_proposal_store(true)
        .force_self_update(change.self_update)
        .propose_adds(change.adds)
        .propose_removals(removed_leaves);
    if change.meta.is_some() || change.timer.is_some() {
        let meta = change.meta.clone().or(current_meta);
        let timer = change.timer.unwrap_or(current_timer);
        builder = builder
            .propose_group_context_extensions(context_extensions(meta.as_ref(), timer)?)
            .map_err(internal)?;
    }
    let bundle = builder
        .load_psks(provider.storage())
        .map_err(storage)?
        .build(provider.rand(), provider.crypto(), device, |_| true)
        .map_err(|e| CoreError::Rejected(e.to_string()))?
        .stage_commit(provider)
        .map_err(internal)?;
    let welcome = bundle
        .to_welcome_msg()
        .map(|w| w.tls_serialize_detached())
        .transpose()
        .map_err(internal)?;
    let (commit, _, _) = bundle.into_contents();
    let commit = commit.tls_serialize_detached().map_err(internal)?;
    // Members after: the tree minus every removal the commit carries
    // (ours and pending leaves), plus the adds.
    let pending = g
        .pending_commit()
        .ok_or_else(|| CoreError::Internal("no pending commit after staging".into()))?;
    let gone: Vec<LeafNodeIndex> = pending
        .remove_proposals()
        .map(|r| r.remove_proposal().removed())
        .collect();
    let mut members: Vec<DeviceId> = before
        .iter()
        .filter(|m| !gone.contains(&m.index))
        .filter_map(device_of)
        .collect();
    members.extend(added.iter().copied());
    Ok(Some(StagedChange {
        epoch,
        commit,
        welcome_recipients: if welcome.is_some() { added } else { Vec::new() },
        welcome,
        members,
    }))
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
