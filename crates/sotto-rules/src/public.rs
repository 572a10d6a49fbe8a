//! What the server checks of a group, without any of its secrets. Commits
//! and proposals are MLS PublicMessages (signed, not encrypted: they carry
//! keys and membership changes, never content), so the server tracks each
//! group's public state (ratchet tree, group context) with openmls's
//! `PublicGroup` and runs every commit through the same judgement every
//! member runs ([`crate::judge`]) before it accepts it. A commit the server
//! accepts is then one every honest member applies, and the server's
//! member list is the tree's, not one a client tells it.
//!
//! What the server cannot check: the parts encrypted to members (the path
//! secrets of an update path) and the tags only members can compute. A
//! member that makes those wrong on purpose gets its commit accepted and
//! refused by the others; they recover by rejoining from the GroupInfo the
//! server keeps ([`check_commit`] checks it against the state).
//!
//! The state the server stores is opaque bytes made and read here
//! (postcard of openmls's own serde forms, behind a version byte).

use std::cell::RefCell;

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::public_storage::PublicStorageProvider;
use openmls_traits::storage::{CURRENT_VERSION, traits};
use serde::{Deserialize, Serialize};
use sotto_proto::{AccountId, DeviceId};

use crate::context::{GroupMeta, has_meta_bytes};
use crate::credential::leaf_identity;
use crate::error::{RuleError, internal, refuse};
use crate::judge::{judge_commit, member_identity, self_removal};

/// The first byte of every stored state: the layout below.
const STATE_V1: u8 = 1;

/// A group's public state as the server stores it.
#[derive(Default, Serialize, Deserialize)]
struct Slots {
    #[serde(with = "serde_bytes")]
    tree: Vec<u8>,
    #[serde(with = "serde_bytes")]
    context: Vec<u8>,
    #[serde(with = "serde_bytes")]
    interim: Vec<u8>,
    #[serde(with = "serde_bytes")]
    tag: Vec<u8>,
}

/// The storage `PublicGroup` reads and writes for one group, in memory,
/// turned into [`Slots`] bytes when done. Proposals are kept as openmls
/// wants them for the one step.
#[derive(Default)]
struct PublicStore {
    slots: RefCell<Slots>,
    proposals: RefCell<Vec<(Vec<u8>, Vec<u8>)>>,
}

/// A state that does not decode (only ever a bug or a damaged database).
#[derive(Debug, thiserror::Error)]
#[error("group state: {0}")]
pub struct StateError(String);

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, StateError> {
    postcard::to_stdvec(v).map_err(|e| StateError(e.to_string()))
}

fn dec<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<Option<T>, StateError> {
    if b.is_empty() {
        return Ok(None);
    }
    postcard::from_bytes(b)
        .map(Some)
        .map_err(|e| StateError(e.to_string()))
}

impl PublicStore {
    fn from_state(state: &[u8]) -> Result<Self, RuleError> {
        let (version, rest) = state
            .split_first()
            .ok_or_else(|| internal("empty group state"))?;
        if *version != STATE_V1 {
            return Err(internal(format!("group state of layout {version}")));
        }
        let slots: Slots = postcard::from_bytes(rest).map_err(internal)?;
        Ok(Self {
            slots: RefCell::new(slots),
            proposals: RefCell::default(),
        })
    }

    fn to_state(&self) -> Result<Vec<u8>, RuleError> {
        let mut out = vec![STATE_V1];
        out.extend(postcard::to_stdvec(&*self.slots.borrow()).map_err(internal)?);
        Ok(out)
    }
}

impl PublicStorageProvider<CURRENT_VERSION> for PublicStore {
    type PublicError = StateError;

    fn write_tree<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        TreeSync: traits::TreeSync<CURRENT_VERSION>,
    >(
        &self,
        _: &GroupId,
        tree: &TreeSync,
    ) -> Result<(), StateError> {
        self.slots.borrow_mut().tree = enc(tree)?;
        Ok(())
    }

    fn write_interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        _: &GroupId,
        hash: &InterimTranscriptHash,
    ) -> Result<(), StateError> {
        self.slots.borrow_mut().interim = enc(hash)?;
        Ok(())
    }

    fn write_context<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupContext: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        _: &GroupId,
        context: &GroupContext,
    ) -> Result<(), StateError> {
        self.slots.borrow_mut().context = enc(context)?;
        Ok(())
    }

    fn write_confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        _: &GroupId,
        tag: &ConfirmationTag,
    ) -> Result<(), StateError> {
        self.slots.borrow_mut().tag = enc(tag)?;
        Ok(())
    }

    fn queue_proposal<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        _: &GroupId,
        proposal_ref: &ProposalRef,
        proposal: &QueuedProposal,
    ) -> Result<(), StateError> {
        let r = enc(proposal_ref)?;
        let p = enc(proposal)?;
        let mut ps = self.proposals.borrow_mut();
        ps.retain(|(x, _)| *x != r);
        ps.push((r, p));
        Ok(())
    }

    fn queued_proposals<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        _: &GroupId,
    ) -> Result<Vec<(ProposalRef, QueuedProposal)>, StateError> {
        self.proposals
            .borrow()
            .iter()
            .map(|(r, p)| {
                let r = dec(r)?.ok_or_else(|| StateError("empty proposal ref".into()))?;
                let p = dec(p)?.ok_or_else(|| StateError("empty proposal".into()))?;
                Ok((r, p))
            })
            .collect()
    }

    fn tree<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        TreeSync: traits::TreeSync<CURRENT_VERSION>,
    >(
        &self,
        _: &GroupId,
    ) -> Result<Option<TreeSync>, StateError> {
        dec(&self.slots.borrow().tree)
    }

    fn group_context<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupContext: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        _: &GroupId,
    ) -> Result<Option<GroupContext>, StateError> {
        dec(&self.slots.borrow().context)
    }

    fn interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        _: &GroupId,
    ) -> Result<Option<InterimTranscriptHash>, StateError> {
        dec(&self.slots.borrow().interim)
    }

    fn confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        _: &GroupId,
    ) -> Result<Option<ConfirmationTag>, StateError> {
        dec(&self.slots.borrow().tag)
    }

    fn delete_tree<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        _: &GroupId,
    ) -> Result<(), StateError> {
        self.slots.borrow_mut().tree.clear();
        Ok(())
    }

    fn delete_confirmation_tag<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        _: &GroupId,
    ) -> Result<(), StateError> {
        self.slots.borrow_mut().tag.clear();
        Ok(())
    }

    fn delete_context<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        _: &GroupId,
    ) -> Result<(), StateError> {
        self.slots.borrow_mut().context.clear();
        Ok(())
    }

    fn delete_interim_transcript_hash<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        _: &GroupId,
    ) -> Result<(), StateError> {
        self.slots.borrow_mut().interim.clear();
        Ok(())
    }

    fn remove_proposal<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        _: &GroupId,
        proposal_ref: &ProposalRef,
    ) -> Result<(), StateError> {
        let r = enc(proposal_ref)?;
        self.proposals.borrow_mut().retain(|(x, _)| *x != r);
        Ok(())
    }

    fn clear_proposal_queue<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        _: &GroupId,
    ) -> Result<(), StateError> {
        self.proposals.borrow_mut().clear();
        Ok(())
    }
}

/// What the server holds of a group: its public state and the proposals
/// of its current epoch (as they were sent).
#[derive(Debug, Clone, Copy)]
pub struct Held<'a> {
    /// The state [`Accepted::state`] returned last.
    pub state: &'a [u8],
    /// The proposals accepted in the current epoch, in order.
    pub proposals: &'a [Vec<u8>],
}

/// A commit the server accepts, and what follows from it.
#[derive(Debug)]
pub struct Accepted {
    /// The epoch the commit makes.
    pub epoch: u64,
    /// The group's public state after it.
    pub state: Vec<u8>,
    /// Every member device after it.
    pub members: Vec<DeviceId>,
    /// The member devices before it, except the committer: they get the commit.
    pub recipients: Vec<DeviceId>,
    /// The devices it adds: they get the Welcome.
    pub added: Vec<DeviceId>,
    /// The committer was not in the group before: a new device of a
    /// member account that joined by external commit (restored from a
    /// backup).
    pub joined: bool,
}

fn device_of(leaf: &LeafNode) -> Option<DeviceId> {
    leaf.signature_key()
        .as_slice()
        .try_into()
        .ok()
        .map(DeviceId)
}

fn devices(pg: &PublicGroup) -> Vec<DeviceId> {
    pg.members()
        .filter_map(|m| m.signature_key.as_slice().try_into().ok().map(DeviceId))
        .collect()
}

fn protocol_message(
    bytes: &[u8],
    group: &sotto_proto::GroupId,
) -> Result<ProtocolMessage, RuleError> {
    let malformed = |e: &dyn std::fmt::Display| refuse(format!("malformed message: {e}"));
    let msg = MlsMessageIn::tls_deserialize_exact(bytes).map_err(|e| malformed(&e))?;
    let proto = msg.try_into_protocol_message().map_err(|e| malformed(&e))?;
    if !matches!(proto, ProtocolMessage::PublicMessage(_)) {
        return Err(refuse("not a public message"));
    }
    if proto.group_id().as_slice() != group.0.as_slice() {
        return Err(refuse("a message of another group"));
    }
    Ok(proto)
}

/// Loads a stored state.
fn load_state(
    group: &sotto_proto::GroupId,
    state: &[u8],
) -> Result<(PublicGroup, PublicStore), RuleError> {
    let store = PublicStore::from_state(state)?;
    let pg = PublicGroup::load(&store, &GroupId::from_slice(&group.0))
        .map_err(internal)?
        .ok_or_else(|| internal("incomplete group state"))?;
    Ok((pg, store))
}

/// Loads the held state with its proposals applied (each checked again).
fn load(
    crypto: &impl OpenMlsCrypto,
    group: &sotto_proto::GroupId,
    held: Held<'_>,
) -> Result<(PublicGroup, PublicStore), RuleError> {
    let (mut pg, store) = load_state(group, held.state)?;
    for p in held.proposals {
        let processed = pg
            .process_message(crypto, protocol_message(p, group)?)
            .map_err(refuse)?;
        let ProcessedMessageContent::ProposalMessage(q) = processed.into_content() else {
            return Err(internal("a held proposal is not a proposal"));
        };
        pg.add_proposal(&store, *q).map_err(internal)?;
    }
    Ok((pg, store))
}

/// The public state a group starts from: `base`, the GroupInfo of its
/// epoch 0 with the ratchet tree, signed by its only member, `sender`.
fn from_base(
    crypto: &impl OpenMlsCrypto,
    group: &sotto_proto::GroupId,
    sender: DeviceId,
    base: &[u8],
) -> Result<(PublicGroup, PublicStore), RuleError> {
    let msg = MlsMessageIn::tls_deserialize_exact(base).map_err(refuse)?;
    let MlsMessageBodyIn::GroupInfo(info) = msg.extract() else {
        return Err(refuse("the base is not a group info"));
    };
    if info.group_id().as_slice() != group.0.as_slice() || info.epoch().as_u64() != 0 {
        return Err(refuse("the base is not epoch 0 of this group"));
    }
    let tree = info
        .extensions()
        .ratchet_tree()
        .map(|t| t.ratchet_tree().clone())
        .ok_or_else(|| refuse("the base has no ratchet tree"))?;
    let store = PublicStore::default();
    let (pg, _) = PublicGroup::from_external(crypto, &store, tree, info, ProposalStore::new())
        .map_err(refuse)?;
    let only = pg.members().collect::<Vec<_>>();
    let creator = match only.as_slice() {
        [m] if m.signature_key.as_slice() == sender.0.as_slice() => {
            leaf_identity(&m.credential, &m.signature_key).ok_or(RuleError::ForgedCredential)?
        }
        _ => return Err(refuse("a new group holds only its creator")),
    };
    let exts = pg.group_context().extensions();
    let meta_bytes = has_meta_bytes(exts);
    match GroupMeta::from_extensions(exts) {
        Some(m) if !m.is_admin(&creator.account) => {
            return Err(refuse("a new group's creator is its admin"));
        }
        None if meta_bytes => return Err(refuse("malformed group metadata")),
        _ => {}
    }
    Ok((pg, store))
}

/// Checks the GroupInfo a committer hands in for the epoch its commit
/// makes: signed by the committer, of exactly the state the server now
/// holds (context and confirmation tag), with the external public key a
/// rejoining device needs.
fn check_group_info(
    crypto: &impl OpenMlsCrypto,
    pg: &PublicGroup,
    committer: &LeafNode,
    bytes: &[u8],
) -> Result<(), RuleError> {
    let msg = MlsMessageIn::tls_deserialize_exact(bytes).map_err(refuse)?;
    let MlsMessageBodyIn::GroupInfo(info) = msg.extract() else {
        return Err(refuse("not a group info"));
    };
    if info.extensions().external_pub().is_none() || info.extensions().ratchet_tree().is_some() {
        return Err(refuse(
            "a group info needs the external key and no ratchet tree",
        ));
    }
    // The signed part starts with the context, the extensions and the
    // confirmation tag: those must be the server's own.
    let mut expected = pg
        .group_context()
        .tls_serialize_detached()
        .map_err(internal)?;
    expected.extend(
        info.extensions()
            .tls_serialize_detached()
            .map_err(internal)?,
    );
    expected.extend(
        pg.confirmation_tag()
            .tls_serialize_detached()
            .map_err(internal)?,
    );
    let payload = info.unsigned_payload().map_err(internal)?;
    if !payload.starts_with(&expected) {
        return Err(refuse("the group info does not match the commit"));
    }
    let key = OpenMlsSignaturePublicKey::from_signature_key(
        committer.signature_key().clone(),
        pg.ciphersuite().signature_algorithm(),
    );
    info.verify_no_out(crypto, &key)
        .map_err(|_| refuse("the group info is not signed by the committer"))?;
    Ok(())
}

/// Where a checked commit starts from.
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    /// The state the server holds of the group.
    Held(Held<'a>),
    /// The group's creation: the GroupInfo of its epoch 0 with its ratchet
    /// tree, signed by its only member, the sender.
    Base(&'a [u8]),
}

/// A commit for the server to check, as a device handed it in.
#[derive(Debug, Clone, Copy)]
pub struct CommitCheck<'a> {
    /// The group.
    pub group: &'a sotto_proto::GroupId,
    /// The authenticated device that sent it.
    pub sender: DeviceId,
    /// What it is built on.
    pub start: Start<'a>,
    /// The commit (an MLS PublicMessage).
    pub commit: &'a [u8],
    /// The GroupInfo of the epoch it makes.
    pub group_info: &'a [u8],
    /// Whether the request carries a Welcome: it must exactly when the
    /// commit adds devices.
    pub has_welcome: bool,
}

/// Checks a commit from the authenticated device `c.sender`: against the
/// state the server holds, or as the group's creation from its base. On
/// success the commit, the GroupInfo and the new state are consistent and
/// every member will apply the commit.
pub fn check_commit(
    crypto: &impl OpenMlsCrypto,
    c: &CommitCheck<'_>,
) -> Result<Accepted, RuleError> {
    let CommitCheck {
        group,
        sender,
        start,
        commit,
        group_info,
        has_welcome: welcome,
    } = *c;
    let (mut pg, store) = match start {
        Start::Held(h) => load(crypto, group, h)?,
        Start::Base(b) => from_base(crypto, group, sender, b)?,
    };
    let creation = matches!(start, Start::Base(_));
    let before = devices(&pg);
    let processed = pg
        .process_message(crypto, protocol_message(commit, group)?)
        .map_err(refuse)?;
    let from = processed.sender().clone();
    let external = matches!(from, Sender::NewMemberCommit);
    let aad = processed.aad().to_vec();
    let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
        return Err(refuse("not a commit"));
    };
    let judged = judge_commit(&pg, &from, &staged, &aad)?;
    if judged.committer.device != sender {
        return Err(refuse("the commit is signed by another device"));
    }
    let added: Vec<DeviceId> = staged
        .add_proposals()
        .filter_map(|a| device_of(a.add_proposal().key_package().leaf_node()))
        .collect();
    if external && (creation || welcome) {
        return Err(refuse(
            "a rejoin neither creates a group nor welcomes anyone",
        ));
    }
    let adds = !added.is_empty();
    if welcome != adds {
        return Err(refuse(if welcome {
            "a Welcome without devices to add"
        } else {
            "devices added without a Welcome"
        }));
    }
    pg.merge_commit(&store, *staged).map_err(internal)?;
    let committer = pg
        .members()
        .find(|m| m.signature_key.as_slice() == sender.0.as_slice())
        .and_then(|m| pg.leaf(m.index))
        .ok_or_else(|| refuse("the committer left the group"))?
        .clone();
    check_group_info(crypto, &pg, &committer, group_info)?;
    let joined = external && !before.contains(&sender);
    Ok(Accepted {
        joined,
        epoch: pg.group_context().epoch().as_u64(),
        state: store.to_state()?,
        members: devices(&pg),
        recipients: before.into_iter().filter(|d| *d != sender).collect(),
        added,
    })
}

/// Checks a proposal from `sender`: only a member's own removal (leaving)
/// is proposed on its own; everything else comes inside a commit.
pub fn check_proposal(
    crypto: &impl OpenMlsCrypto,
    group: &sotto_proto::GroupId,
    sender: DeviceId,
    held: Held<'_>,
    proposal: &[u8],
) -> Result<(), RuleError> {
    let (pg, _) = load(crypto, group, held)?;
    let processed = pg
        .process_message(crypto, protocol_message(proposal, group)?)
        .map_err(refuse)?;
    let ProcessedMessageContent::ProposalMessage(q) = processed.into_content() else {
        return Err(refuse("not a proposal"));
    };
    match self_removal(&pg, &q) {
        Some(id) if id.device == sender => Ok(()),
        Some(_) => Err(refuse("a proposal signed by another device")),
        None => Err(refuse("only a member's own removal may be proposed")),
    }
}

/// The member devices of a held group.
pub fn members(group: &sotto_proto::GroupId, state: &[u8]) -> Result<Vec<DeviceId>, RuleError> {
    Ok(devices(&load_state(group, state)?.0))
}

/// The ratchet tree of a held group (TLS-encoded), which a rejoining
/// device needs beside the GroupInfo.
pub fn ratchet_tree(group: &sotto_proto::GroupId, state: &[u8]) -> Result<Vec<u8>, RuleError> {
    export_tree(&load_state(group, state)?.0)
}

/// The ratchet tree of a held group, for `device` of `account` only if
/// the account has a member device in it (with a Sotto credential): the
/// device itself, rejoining in place of its own leaf, or a new device of
/// the account (restored from a backup) joining beside it.
pub fn ratchet_tree_for(
    group: &sotto_proto::GroupId,
    state: &[u8],
    account: AccountId,
) -> Result<Option<Vec<u8>>, RuleError> {
    let (pg, _) = load_state(group, state)?;
    let member = pg
        .members()
        .any(|m| member_identity(&pg, m.index).is_some_and(|id| id.account == account));
    member.then(|| export_tree(&pg)).transpose()
}

fn export_tree(pg: &PublicGroup) -> Result<Vec<u8>, RuleError> {
    pg.export_ratchet_tree()
        .tls_serialize_detached()
        .map_err(internal)
}

/// The epoch an application message was encrypted in, read from its MLS
/// framing (a PrivateMessage carries group, epoch and content type in the
/// clear): `None` unless `bytes` is one PrivateMessage of `group` whose
/// content is an application message. The server refuses an application
/// message of any epoch but the group's current one, so that every message
/// it accepts is ordered before the commit that ends its epoch in every
/// member's mailbox, and every member can read it (docs/PROTOCOL.md).
pub fn application_epoch(group: &sotto_proto::GroupId, bytes: &[u8]) -> Option<u64> {
    let msg = MlsMessageIn::tls_deserialize_exact(bytes).ok()?;
    let proto = msg.try_into_protocol_message().ok()?;
    let ok = matches!(proto, ProtocolMessage::PrivateMessage(_))
        && proto.content_type() == ContentType::Application
        && proto.group_id().as_slice() == group.0.as_slice();
    ok.then(|| proto.epoch().as_u64())
}

/// The epoch of any MLS protocol message of `group` (a PrivateMessage or
/// a PublicMessage: commits and proposals), from its clear header; `None`
/// for anything else (a Welcome, another group's message, garbage).
pub fn message_epoch(group: &sotto_proto::GroupId, bytes: &[u8]) -> Option<u64> {
    let msg = MlsMessageIn::tls_deserialize_exact(bytes).ok()?;
    let proto = msg.try_into_protocol_message().ok()?;
    (proto.group_id().as_slice() == group.0.as_slice()).then(|| proto.epoch().as_u64())
}
