//! MLS conversations through `openmls`. Every conversation is an MLS group
//! whose leaves are devices; each function here is one step of the protocol
//! over a caller-provided `openmls` provider, so the caller decides where the
//! state lives and which transaction it belongs to.

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_traits::OpenMlsProvider;
use sotto_proto::{AccountId, DeviceId};

use crate::identity::{CredentialIdentity, DeviceKey};

/// The ciphersuite of new conversations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Suite {
    /// `MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519`: X-Wing (ML-KEM-768 +
    /// X25519) hybrid key exchange, the default.
    #[default]
    PostQuantum,
    /// `MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519`: classical.
    Classical,
}

impl Suite {
    /// The MLS ciphersuite.
    pub fn ciphersuite(self) -> Ciphersuite {
        match self {
            Self::PostQuantum => Ciphersuite::MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519,
            Self::Classical => Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519,
        }
    }

    /// The name used in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::PostQuantum => "xwing",
            Self::Classical => "x25519",
        }
    }

    /// The suite of an MLS ciphersuite, if Sotto speaks it.
    pub fn from_ciphersuite(cs: Ciphersuite) -> Option<Self> {
        [Self::PostQuantum, Self::Classical]
            .into_iter()
            .find(|s| s.ciphersuite() == cs)
    }

    /// Parses a configuration name.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "xwing" => Some(Self::PostQuantum),
            "x25519" => Some(Self::Classical),
            _ => None,
        }
    }
}

/// What can go wrong in an MLS step.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A KeyPackage did not parse or verify.
    #[error("invalid key package: {0}")]
    InvalidKeyPackage(String),
    /// A KeyPackage is valid but not for the device the server said.
    #[error("key package does not belong to the expected device")]
    KeyPackageMismatch,
    /// A Welcome could not be processed.
    #[error("invalid welcome: {0}")]
    InvalidWelcome(String),
    /// A group member's credential does not match its leaf key, or names an
    /// account other than the one expected.
    #[error("forged credential in group")]
    ForgedCredential,
    /// A device was added that its account's signed device list does not name.
    #[error("a device was added that its account did not sign for")]
    GhostDevice,
    /// No such group in the local state.
    #[error("unknown conversation")]
    UnknownGroup,
    /// A message of an epoch this device has not reached: its state of the
    /// group is behind the other members' (restored from an older backup,
    /// say). The epoch in the message is not authenticated yet: a server
    /// can make it up, so this only ever leads to asking to be re-added.
    #[error("message of epoch {message}, this device is at epoch {local}: out of sync")]
    Behind {
        /// This device's epoch of the group.
        local: u64,
        /// The epoch the message claims.
        message: u64,
    },
    /// A message could not be processed (wrong epoch, replay, forgery, garbage).
    #[error("message rejected: {0}")]
    Rejected(String),
    /// The local MLS state could not be read or written.
    #[error("mls storage: {0}")]
    Storage(String),
    /// A bug.
    #[error("internal mls error: {0}")]
    Internal(String),
}

pub(crate) fn internal(e: impl std::fmt::Display) -> CoreError {
    CoreError::Internal(e.to_string())
}

pub(crate) fn storage(e: impl std::fmt::Debug) -> CoreError {
    CoreError::Storage(format!("{e:?}"))
}

fn create_config(
    suite: Suite,
    extensions: Extensions<GroupContext>,
) -> Result<MlsGroupCreateConfig, CoreError> {
    Ok(MlsGroupCreateConfig::builder()
        .with_group_context_extensions(extensions)
        .ciphersuite(suite.ciphersuite())
        .capabilities(capabilities())
        .use_ratchet_tree_extension(true)
        .padding_size(64)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(20, 1000))
        .max_past_epochs(0)
        .build())
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .padding_size(64)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(20, 1000))
        .max_past_epochs(0)
        .build()
}

/// The capabilities every Sotto leaf advertises: the defaults plus the
/// last-resort KeyPackage extension and Sotto's group metadata extension.
pub(crate) fn capabilities() -> Capabilities {
    Capabilities::new(
        None,
        None,
        Some(&[
            ExtensionType::LastResort,
            ExtensionType::Unknown(crate::group::META_EXTENSION),
            ExtensionType::Unknown(crate::group::TIMER_EXTENSION),
        ]),
        None,
        None,
    )
}

/// The credential of a device of an account.
pub fn credential(id: &CredentialIdentity) -> CredentialWithKey {
    CredentialWithKey {
        credential: BasicCredential::new(id.to_bytes()).into(),
        signature_key: id.device.0.to_vec().into(),
    }
}

/// The identity a leaf claims, if its credential is a Sotto credential whose
/// device is the leaf's signature key.
pub fn leaf_identity(credential: &Credential, signature_key: &[u8]) -> Option<CredentialIdentity> {
    let basic = BasicCredential::try_from(credential.clone()).ok()?;
    let id = CredentialIdentity::from_bytes(basic.identity())?;
    (id.device.0.as_slice() == signature_key).then_some(id)
}

/// Makes `n` one-time KeyPackages (their private parts go into the
/// provider's storage) and returns them serialized.
pub fn key_packages<P: OpenMlsProvider>(
    provider: &P,
    me: &CredentialIdentity,
    device: &DeviceKey,
    suite: Suite,
    n: usize,
) -> Result<Vec<Vec<u8>>, CoreError> {
    (0..n)
        .map(|_| {
            let b = KeyPackage::builder()
                .leaf_node_capabilities(capabilities())
                .build(suite.ciphersuite(), provider, device, credential(me))
                .map_err(internal)?;
            b.key_package().tls_serialize_detached().map_err(internal)
        })
        .collect()
}

/// Makes a last-resort KeyPackage.
pub fn last_resort_key_package<P: OpenMlsProvider>(
    provider: &P,
    me: &CredentialIdentity,
    device: &DeviceKey,
    suite: Suite,
) -> Result<Vec<u8>, CoreError> {
    let b = KeyPackage::builder()
        .leaf_node_capabilities(capabilities())
        .mark_as_last_resort()
        .build(suite.ciphersuite(), provider, device, credential(me))
        .map_err(internal)?;
    b.key_package().tls_serialize_detached().map_err(internal)
}

/// Parses and verifies a claimed KeyPackage, and checks that it belongs to
/// `account`'s device `device`.
pub fn verify_key_package<P: OpenMlsProvider>(
    provider: &P,
    bytes: &[u8],
    account: AccountId,
    device: DeviceId,
) -> Result<(KeyPackage, CredentialIdentity), CoreError> {
    let kp_in = KeyPackageIn::tls_deserialize_exact(bytes)
        .map_err(|e| CoreError::InvalidKeyPackage(e.to_string()))?;
    let kp = kp_in
        .validate(provider.crypto(), ProtocolVersion::Mls10)
        .map_err(|e| CoreError::InvalidKeyPackage(e.to_string()))?;
    let leaf = kp.leaf_node();
    let id = leaf_identity(leaf.credential(), leaf.signature_key().as_slice())
        .ok_or(CoreError::KeyPackageMismatch)?;
    if id.account != account || id.device != device {
        return Err(CoreError::KeyPackageMismatch);
    }
    Ok((kp, id))
}

/// A new group with its first members added, waiting for the server to
/// accept the commit.
#[derive(Debug)]
pub struct Created {
    /// The Welcome for the added devices.
    pub welcome: Vec<u8>,
    /// Every member device after the commit.
    pub members: Vec<DeviceId>,
}

/// Creates the group `group_id` and stages the commit that adds the owners
/// of `key_packages`. Call [`merge_pending`] once the server accepted it, or
/// [`discard`] if it did not.
///
/// The group takes the ciphersuite of the KeyPackages (which must all agree):
/// a device publishes KeyPackages only in the suite its owner chose, so the
/// invitee's choice decides, and the server cannot change it (KeyPackages are
/// signed by their device).
pub fn create_group<P: OpenMlsProvider>(
    provider: &P,
    me: &CredentialIdentity,
    device: &DeviceKey,
    group_id: sotto_proto::GroupId,
    key_packages: &[KeyPackage],
    meta: Option<&crate::group::GroupMeta>,
) -> Result<Created, CoreError> {
    let first = key_packages
        .first()
        .ok_or_else(|| CoreError::InvalidKeyPackage("no key package".into()))?;
    let cs = first.ciphersuite();
    if key_packages.iter().any(|kp| kp.ciphersuite() != cs) {
        return Err(CoreError::InvalidKeyPackage(
            "key packages of different ciphersuites".into(),
        ));
    }
    let suite = Suite::from_ciphersuite(cs)
        .ok_or_else(|| CoreError::InvalidKeyPackage(format!("unsupported ciphersuite {cs:?}")))?;
    let extensions = match meta {
        Some(m) => crate::group::context_extensions(Some(m), None)?,
        None => Extensions::empty(),
    };
    let mut group = MlsGroup::new_with_group_id(
        provider,
        device,
        &create_config(suite, extensions)?,
        GroupId::from_slice(&group_id.0),
        credential(me),
    )
    .map_err(internal)?;
    let (_commit, welcome, _info) = group
        .add_members(provider, device, key_packages)
        .map_err(internal)?;
    let mut members = vec![device.id()];
    for kp in key_packages {
        let key = kp.leaf_node().signature_key().as_slice();
        members.push(DeviceId(key.try_into().map_err(internal)?));
    }
    Ok(Created {
        welcome: welcome.tls_serialize_detached().map_err(internal)?,
        members,
    })
}

pub(crate) fn load<P: OpenMlsProvider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
) -> Result<MlsGroup, CoreError> {
    MlsGroup::load(provider.storage(), &GroupId::from_slice(&group_id.0))
        .map_err(storage)?
        .ok_or(CoreError::UnknownGroup)
}

/// Whether the local state has this group.
pub fn has_group<P: OpenMlsProvider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
) -> Result<bool, CoreError> {
    Ok(
        MlsGroup::load(provider.storage(), &GroupId::from_slice(&group_id.0))
            .map_err(storage)?
            .is_some(),
    )
}

/// Applies the staged commit after the server accepted it.
pub fn merge_pending<P: OpenMlsProvider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
) -> Result<(), CoreError> {
    let mut g = load(provider, group_id)?;
    g.merge_pending_commit(provider).map_err(internal)
}

/// Forgets a group entirely (used when the server refused its creation).
pub fn discard<P: OpenMlsProvider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
) -> Result<(), CoreError> {
    let mut g = load(provider, group_id)?;
    g.delete(provider.storage()).map_err(storage)
}

/// The group's current epoch.
pub fn epoch<P: OpenMlsProvider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
) -> Result<u64, CoreError> {
    Ok(load(provider, group_id)?.epoch().as_u64())
}

/// The members of a group, as (account, device).
pub fn members<P: OpenMlsProvider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
) -> Result<Vec<CredentialIdentity>, CoreError> {
    let g = load(provider, group_id)?;
    g.members()
        .map(|m| leaf_identity(&m.credential, &m.signature_key).ok_or(CoreError::ForgedCredential))
        .collect()
}

/// The ciphersuite of a group, if Sotto speaks it.
pub fn suite_of<P: OpenMlsProvider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
) -> Result<Option<Suite>, CoreError> {
    Ok(Suite::from_ciphersuite(
        load(provider, group_id)?.ciphersuite(),
    ))
}

/// The HPKE encryption key of `device`'s leaf in the group (it changes when
/// the device updates its leaf or is re-added); `None` if not a member.
pub fn leaf_key<P: OpenMlsProvider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
    device: DeviceId,
) -> Result<Option<Vec<u8>>, CoreError> {
    Ok(load(provider, group_id)?
        .members()
        .find(|m| m.signature_key.as_slice() == device.0.as_slice())
        .map(|m| m.encryption_key))
}

/// Encrypts an application message for the group.
pub fn encrypt<P: OpenMlsProvider>(
    provider: &P,
    device: &DeviceKey,
    group_id: sotto_proto::GroupId,
    plaintext: &[u8],
) -> Result<Vec<u8>, CoreError> {
    Ok(encrypt_with_timer(provider, device, group_id, plaintext)?.0)
}

/// Encrypts an application message for the group; also returns the
/// conversation's disappearing timer (in seconds), read from the same load
/// of the group state.
pub fn encrypt_with_timer<P: OpenMlsProvider>(
    provider: &P,
    device: &DeviceKey,
    group_id: sotto_proto::GroupId,
    plaintext: &[u8],
) -> Result<(Vec<u8>, Option<u64>), CoreError> {
    let mut g = load(provider, group_id)?;
    let timer = crate::group::timer_of(g.extensions());
    let out = g
        .create_message(provider, device, plaintext)
        .map_err(internal)?;
    Ok((out.tls_serialize_detached().map_err(internal)?, timer))
}

/// The result of joining by Welcome.
#[derive(Debug)]
pub struct Joined {
    /// The group.
    pub group_id: sotto_proto::GroupId,
    /// Its members.
    pub members: Vec<CredentialIdentity>,
}

/// Joins a group from a Welcome. Every member's credential must match its
/// leaf key, or the group is dropped again.
pub fn join<P: OpenMlsProvider>(provider: &P, welcome: &[u8]) -> Result<Joined, CoreError> {
    let msg = MlsMessageIn::tls_deserialize_exact(welcome)
        .map_err(|e| CoreError::InvalidWelcome(e.to_string()))?;
    let MlsMessageBodyIn::Welcome(w) = msg.extract() else {
        return Err(CoreError::InvalidWelcome("not a welcome".into()));
    };
    let staged = StagedWelcome::new_from_welcome(provider, &join_config(), w, None)
        .map_err(|e| CoreError::InvalidWelcome(e.to_string()))?;
    let mut group = staged
        .into_group(provider)
        .map_err(|e| CoreError::InvalidWelcome(e.to_string()))?;
    let members: Option<Vec<CredentialIdentity>> = group
        .members()
        .map(|m| leaf_identity(&m.credential, &m.signature_key))
        .collect();
    let Some(members) = members else {
        group.delete(provider.storage()).map_err(storage)?;
        return Err(CoreError::ForgedCredential);
    };
    let gid: [u8; 32] = group
        .group_id()
        .as_slice()
        .try_into()
        .map_err(|_| CoreError::InvalidWelcome("group id is not 32 bytes".into()))?;
    Ok(Joined {
        group_id: sotto_proto::GroupId(gid),
        members,
    })
}

/// Joins a group from a Welcome like [`join`], and may replace a group
/// this device already holds: only if `may_replace` says so for that group
/// (this device asked to be re-added to it), and only by a later epoch
/// than the one held or when the held state is inactive (this device's
/// leaf was removed). The held state is deleted in the same step; the
/// caller's transaction keeps it if anything fails. Returns the joined
/// group and whether it replaced a held one.
pub fn join_replacing<P: OpenMlsProvider>(
    provider: &P,
    welcome: &[u8],
    may_replace: impl FnOnce(sotto_proto::GroupId) -> bool,
) -> Result<(Joined, bool), CoreError> {
    let msg = MlsMessageIn::tls_deserialize_exact(welcome)
        .map_err(|e| CoreError::InvalidWelcome(e.to_string()))?;
    let MlsMessageBodyIn::Welcome(w) = msg.extract() else {
        return Err(CoreError::InvalidWelcome("not a welcome".into()));
    };
    let processed = ProcessedWelcome::new_from_welcome(provider, &join_config(), w)
        .map_err(|e| CoreError::InvalidWelcome(e.to_string()))?;
    let gid: [u8; 32] = processed
        .unverified_group_info()
        .group_id()
        .as_slice()
        .try_into()
        .map_err(|_| CoreError::InvalidWelcome("group id is not 32 bytes".into()))?;
    let gid = sotto_proto::GroupId(gid);
    let held = MlsGroup::load(provider.storage(), &GroupId::from_slice(&gid.0)).map_err(storage)?;
    let replaced = held.is_some();
    let mut floor = None;
    if let Some(mut old) = held {
        if !may_replace(gid) {
            return Err(CoreError::InvalidWelcome(
                "a Welcome into a conversation this device already has".into(),
            ));
        }
        if old.is_active() {
            floor = Some(old.epoch().as_u64());
        }
        old.delete(provider.storage()).map_err(storage)?;
    }
    let staged = processed
        .into_staged_welcome(provider, None)
        .map_err(|e| CoreError::InvalidWelcome(e.to_string()))?;
    let mut group = staged
        .into_group(provider)
        .map_err(|e| CoreError::InvalidWelcome(e.to_string()))?;
    if floor.is_some_and(|f| group.epoch().as_u64() <= f) {
        return Err(CoreError::InvalidWelcome(
            "a Welcome to an epoch this device is past".into(),
        ));
    }
    let members: Option<Vec<CredentialIdentity>> = group
        .members()
        .map(|m| leaf_identity(&m.credential, &m.signature_key))
        .collect();
    let Some(members) = members else {
        group.delete(provider.storage()).map_err(storage)?;
        return Err(CoreError::ForgedCredential);
    };
    Ok((
        Joined {
            group_id: gid,
            members,
        },
        replaced,
    ))
}

/// What processing a message did.
#[derive(Debug)]
pub enum Processed {
    /// An application message from `sender`.
    Application {
        /// The authenticated sender.
        sender: CredentialIdentity,
        /// The decrypted bytes.
        plaintext: Vec<u8>,
        /// The conversation's disappearing timer in seconds, if set.
        timer_s: Option<u64>,
    },
    /// A commit was applied; the group is at `epoch`.
    Commit {
        /// The new epoch.
        epoch: u64,
        /// This device was removed by it; the group is inactive now.
        removed_me: bool,
        /// The signed device lists that vouched for the devices it added.
        device_lists: Vec<sotto_proto::SignedDeviceList>,
        /// The disappearing timer, if the commit changed it: `Some(new)`.
        timer_change: Option<Option<u64>>,
        /// Devices the commit re-added (removed and added back with a fresh
        /// leaf, after they lost their state).
        readded: Vec<DeviceId>,
    },
    /// A proposal was stored for the next commit.
    Proposal {
        /// The member that proposed its own removal (a leave), if that is what it is.
        leaving: Option<CredentialIdentity>,
    },
    /// A proposal or other message that changes nothing visible.
    Other,
}

/// Decrypts or applies one MLS message of a group.
pub fn process<P: OpenMlsProvider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
    bytes: &[u8],
) -> Result<Processed, CoreError> {
    // Garbage is refused before the group is looked up: only a well-formed
    // message of `group_id` can say the group is missing here.
    let msg = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| CoreError::Rejected(e.to_string()))?;
    let proto = msg
        .try_into_protocol_message()
        .map_err(|e| CoreError::Rejected(e.to_string()))?;
    if proto.group_id().as_slice() != group_id.0.as_slice() {
        return Err(CoreError::Rejected("message for another group".into()));
    }
    let mut g = load(provider, group_id)?;
    if proto.epoch() > g.epoch() {
        return Err(CoreError::Behind {
            local: g.epoch().as_u64(),
            message: proto.epoch().as_u64(),
        });
    }
    let processed = g
        .process_message(provider, proto)
        .map_err(|e| CoreError::Rejected(e.to_string()))?;
    let sender_leaf = match processed.sender() {
        Sender::Member(i) => Some(*i),
        _ => None,
    };
    let aad = processed.aad().to_vec();
    match processed.into_content() {
        ProcessedMessageContent::ApplicationMessage(app) => {
            let idx = sender_leaf.ok_or_else(|| {
                CoreError::Rejected("application message from a non-member".into())
            })?;
            let m = g.member_at(idx).ok_or(CoreError::ForgedCredential)?;
            let sender = leaf_identity(&m.credential, &m.signature_key)
                .ok_or(CoreError::ForgedCredential)?;
            Ok(Processed::Application {
                sender,
                plaintext: app.into_bytes(),
                timer_s: crate::group::timer_of(g.extensions()),
            })
        }
        ProcessedMessageContent::StagedCommitMessage(staged) => {
            for add in staged.add_proposals() {
                let leaf = add.add_proposal().key_package().leaf_node();
                if leaf_identity(leaf.credential(), leaf.signature_key().as_slice()).is_none() {
                    return Err(CoreError::ForgedCredential);
                }
            }
            let committer = sender_leaf
                .and_then(|i| g.member_at(i))
                .and_then(|m| leaf_identity(&m.credential, &m.signature_key))
                .ok_or(CoreError::ForgedCredential)?;
            crate::group::check_commit(&g, &committer, &staged)?;
            let device_lists = crate::group::check_added_devices(&staged, &aad)?;
            let readded = crate::group::readded_devices(&g, &staged)
                .into_iter()
                .map(|(_, d)| d)
                .collect();
            let removed_me = staged.self_removed();
            let timer_before = crate::group::timer_of(g.extensions());
            g.merge_staged_commit(provider, *staged).map_err(internal)?;
            let timer_after = crate::group::timer_of(g.extensions());
            Ok(Processed::Commit {
                epoch: g.epoch().as_u64(),
                removed_me,
                device_lists,
                timer_change: (timer_before != timer_after).then_some(timer_after),
                readded,
            })
        }
        ProcessedMessageContent::ProposalMessage(p) => {
            let leaving = crate::group::self_removal(&g, &p);
            // Only leaves are accepted as standalone proposals; everything
            // else comes inside a commit.
            if leaving.is_none() {
                return Err(CoreError::Rejected(
                    "only a member's own removal may be proposed".into(),
                ));
            }
            g.store_pending_proposal(provider.storage(), *p)
                .map_err(storage)?;
            Ok(Processed::Proposal { leaving })
        }
        _ => Ok(Processed::Other),
    }
}
