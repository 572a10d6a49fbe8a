//! The judgement every member's client and the server pass on every
//! commit and proposal, on the group's public state before it: only admins
//! add, remove or change the group's metadata; anyone may leave or update
//! their own leaf; nobody changes who their leaf says they are; every
//! added device is on its account's signed device list; an external
//! commit is only a member device rejoining in place of its own leaf, or a
//! new device of a member account (restored from a backup) joining beside
//! it on its account's signed device list.
//!
//! Because the server runs the same functions on the same public state
//! (the `public` module), a commit it accepts is one every member applies.

use openmls::prelude::*;
use sotto_proto::{AccountId, DeviceId};

use crate::context::{GroupMeta, has_meta_bytes};
use crate::credential::{CredentialIdentity, leaf_identity};
use crate::error::RuleError;

/// The identity of the member at `leaf` in a group's public state.
pub fn member_identity(pg: &PublicGroup, leaf: LeafNodeIndex) -> Option<CredentialIdentity> {
    let l = pg.leaf(leaf)?;
    leaf_identity(l.credential(), l.signature_key().as_slice())
}

/// The member whose own removal a proposal is, if it is one.
pub fn self_removal(pg: &PublicGroup, p: &QueuedProposal) -> Option<CredentialIdentity> {
    let Proposal::Remove(r) = p.proposal() else {
        return None;
    };
    match p.sender() {
        Sender::Member(i) if *i == r.removed() => member_identity(pg, *i),
        _ => None,
    }
}

fn refuse(why: &str) -> RuleError {
    RuleError::Refused(format!("commit refused: {why}"))
}

/// What judging a commit found.
#[derive(Debug)]
pub struct Judged {
    /// Who committed it.
    pub committer: CredentialIdentity,
    /// The signed device lists that vouched for the devices it adds.
    pub device_lists: Vec<sotto_proto::SignedDeviceList>,
    /// Devices it re-adds (their leaf removed and a fresh one added).
    pub readded: Vec<(AccountId, DeviceId)>,
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
/// - the group's policy ([`check_policy`]).
pub fn judge_commit(
    pg: &PublicGroup,
    sender: &Sender,
    staged: &StagedCommit,
    aad: &[u8],
) -> Result<Judged, RuleError> {
    let committer = match sender {
        Sender::Member(i) => member_identity(pg, *i).ok_or(RuleError::ForgedCredential)?,
        Sender::NewMemberCommit => return judge_rejoin(pg, staged, aad),
        _ => return Err(refuse("not from a member")),
    };
    for add in staged.add_proposals() {
        let leaf = add.add_proposal().key_package().leaf_node();
        if leaf_identity(leaf.credential(), leaf.signature_key().as_slice()).is_none() {
            return Err(RuleError::ForgedCredential);
        }
    }
    if let Some(leaf) = staged.update_path_leaf_node() {
        let id = leaf_identity(leaf.credential(), leaf.signature_key().as_slice());
        if id.as_ref() != Some(&committer) {
            return Err(RuleError::ForgedCredential);
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
            return Err(RuleError::ForgedCredential);
        }
    }
    check_policy(pg, &committer, staged)?;
    let device_lists = check_added_devices(staged, aad)?;
    let readded = readded_devices(pg, staged);
    Ok(Judged {
        committer,
        device_lists,
        readded,
    })
}

/// Judges an external commit. Nobody new comes in by external commit; two
/// kinds are one:
///
/// - a rejoin: a member device that lost its state replaces its own leaf
///   by a fresh one (same account, device and handle);
/// - a restore: a new device of an account that has a member device in
///   the group (restored from a backup, with no device of its own to add
///   it) joins beside it, vouched for by its account's signed device list
///   in the commit's authenticated data.
///
/// Either changes nothing else.
fn judge_rejoin(pg: &PublicGroup, staged: &StagedCommit, aad: &[u8]) -> Result<Judged, RuleError> {
    let leaf = staged
        .update_path_leaf_node()
        .ok_or_else(|| refuse("an external commit without a path"))?;
    let id = leaf_identity(leaf.credential(), leaf.signature_key().as_slice())
        .ok_or(RuleError::ForgedCredential)?;
    let mut removed = Vec::new();
    for q in staged.queued_proposals() {
        match q.proposal() {
            Proposal::ExternalInit(_) => {}
            Proposal::Remove(r) => removed.push(member_identity(pg, r.removed())),
            _ => return Err(refuse("an external commit may only rejoin")),
        }
    }
    if removed.is_empty() {
        let account_is_member = pg
            .members()
            .filter_map(|m| member_identity(pg, m.index))
            .any(|m| m.account == id.account && m.handle == id.handle);
        if !account_is_member {
            return Err(refuse("only a device of a member account joins by itself"));
        }
        let lists = device_lists(aad)?;
        let vouched = lists
            .iter()
            .any(|l| l.account == id.account && l.devices.contains(&id.device));
        if !vouched {
            return Err(RuleError::GhostDevice);
        }
        return Ok(Judged {
            readded: Vec::new(),
            committer: id,
            device_lists: lists,
        });
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
pub fn check_policy(
    pg: &PublicGroup,
    committer: &CredentialIdentity,
    staged: &StagedCommit,
) -> Result<(), RuleError> {
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
                    .ok_or(RuleError::ForgedCredential)?;
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
                let has_meta_bytes = has_meta_bytes(e.extensions());
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
pub fn readded_devices(pg: &PublicGroup, staged: &StagedCommit) -> Vec<(AccountId, DeviceId)> {
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

/// The signed device lists a commit carries in its authenticated data,
/// each checked against its account's key.
fn device_lists(aad: &[u8]) -> Result<Vec<sotto_proto::SignedDeviceList>, RuleError> {
    let lists: Vec<sotto_proto::SignedDeviceList> = if aad.is_empty() {
        Vec::new()
    } else {
        postcard::from_bytes(aad).map_err(|_| RuleError::Refused("malformed commit data".into()))?
    };
    if !lists.iter().all(crate::signed::device_list_is_signed) {
        return Err(RuleError::GhostDevice);
    }
    Ok(lists)
}

/// Every device a commit adds must be on its account's signed device list,
/// carried in the commit's authenticated data; returns those lists.
pub fn check_added_devices(
    staged: &StagedCommit,
    aad: &[u8],
) -> Result<Vec<sotto_proto::SignedDeviceList>, RuleError> {
    let lists = device_lists(aad)?;
    for add in staged.add_proposals() {
        let leaf = add.add_proposal().key_package().leaf_node();
        let id = leaf_identity(leaf.credential(), leaf.signature_key().as_slice())
            .ok_or(RuleError::ForgedCredential)?;
        let vouched = lists
            .iter()
            .any(|l| l.account == id.account && l.devices.contains(&id.device));
        if !vouched {
            return Err(RuleError::GhostDevice);
        }
    }
    Ok(lists)
}
