//! MLS conversations through `openmls`. Every conversation is an MLS group
//! whose leaves are devices; each function here is one step of the protocol
//! over a caller-provided `openmls` provider, so the caller decides where the
//! state lives and which transaction it belongs to.

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
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

pub use crate::error::CoreError;
pub(crate) use crate::error::{internal, storage};
pub use crate::state::PAST_EPOCHS;

// Handshake messages (commits, proposals) are PublicMessages: signed, not
// encrypted, so the server can check them (sotto_rules::public). Application
// messages are always PrivateMessages. Ratchet trees travel beside the
// Welcome (names::WelcomeBundle), not inside its GroupInfo, so the GroupInfo
// a commit hands the server stays small.
fn create_config(
    suite: Suite,
    extensions: Extensions<GroupContext>,
) -> Result<MlsGroupCreateConfig, CoreError> {
    Ok(MlsGroupCreateConfig::builder()
        .with_group_context_extensions(extensions)
        .ciphersuite(suite.ciphersuite())
        .capabilities(capabilities())
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(false)
        .padding_size(MIN_PADDED)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(20, 1000))
        .max_past_epochs(PAST_EPOCHS)
        .build())
}

fn join_config() -> MlsGroupJoinConfig {
    join_config_padded(MIN_PADDED)
}

fn join_config_padded(padding: usize) -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(false)
        .padding_size(padding)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(20, 1000))
        .max_past_epochs(PAST_EPOCHS)
        .build()
}

/// The smallest size bucket of an application message. Application
/// messages are padded with MLS's own padding (zeros inside the encrypted
/// content, which every receiver checks and strips), so that a
/// ciphertext's length tells only its bucket: the content (the message's
/// bytes, their MLS framing and signature) and the AEAD tag fill a power
/// of two from 256 bytes on (256, 512, 1 KiB, ... 128 KiB for the largest
/// text), and the ciphertext is that plus a header of constant size (but
/// for the ciphertext's length prefix, two bytes longer from 16 KiB).
pub const MIN_PADDED: usize = 256;

/// An upper bound of what MLS adds to an application message's bytes
/// inside the encryption (group id, epoch, sender, the Ed25519 signature,
/// length prefixes, the AEAD tag): 83 to 86 bytes measured (`sotto-bench
/// mls`, "Padding"). If it ever fell short, the content would pad to the
/// next power of two, a bucket all the same.
const CONTENT_OVERHEAD: usize = 96;

/// The bucket an application message of `len` bytes is padded to: the
/// length of its encrypted content and tag.
pub fn padded_size(len: usize) -> usize {
    (len.saturating_add(CONTENT_OVERHEAD))
        .max(MIN_PADDED)
        .next_power_of_two()
}

/// The capabilities every Sotto leaf advertises: the defaults plus the
/// last-resort KeyPackage extension and Sotto's group metadata extension.
pub(crate) fn capabilities() -> Capabilities {
    Capabilities::new(
        None,
        None,
        Some(&[
            ExtensionType::LastResort,
            ExtensionType::Unknown(sotto_rules::context::META_EXTENSION),
            ExtensionType::Unknown(sotto_rules::context::TIMER_EXTENSION),
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

pub use sotto_rules::leaf_identity;

/// Makes `n` one-time KeyPackages (their private parts go into the
/// provider's storage) and returns them serialized.
pub fn key_packages<P: Provider>(
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
pub fn last_resort_key_package<P: Provider>(
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
pub fn verify_key_package<P: Provider>(
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
    /// The GroupInfo of epoch 0 with its ratchet tree (this device alone),
    /// from which the server starts tracking the group.
    pub base: Vec<u8>,
    /// The commit that adds the first members (and, for a group, sets its
    /// metadata), with its GroupInfo and Welcome.
    pub staged: crate::group::StagedChange,
}

/// What a new conversation is: a group with a name (this account its
/// admin), or a one-to-one conversation.
#[derive(Debug, Clone, Copy)]
pub enum NewConversation<'a> {
    /// A group named so.
    Group(&'a str),
    /// A one-to-one conversation.
    Direct,
}

/// Creates the group `group_id` and stages the commit that adds the owners
/// of `key_packages` (each on its account's list in `device_lists`). Call
/// [`merge_pending`] once the server accepted it, or [`discard`] if it did
/// not.
///
/// The group takes the ciphersuite of the KeyPackages (which must all agree):
/// a device publishes KeyPackages only in the suite its owner chose, so the
/// invitee's choice decides, and the server cannot change it (KeyPackages are
/// signed by their device).
pub fn create_group<P: Provider>(
    provider: &P,
    me: &CredentialIdentity,
    device: &DeviceKey,
    group_id: sotto_proto::GroupId,
    key_packages: Vec<KeyPackage>,
    device_lists: Vec<sotto_proto::SignedDeviceList>,
    kind: NewConversation<'_>,
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
    let mut group = MlsGroup::new_with_group_id(
        provider,
        device,
        &create_config(suite, sotto_rules::context::context_extensions(None, None)?)?,
        GroupId::from_slice(&group_id.0),
        credential(me),
    )
    .map_err(internal)?;
    let base = group
        .export_group_info(provider.crypto(), device, true)
        .map_err(internal)?
        .tls_serialize_detached()
        .map_err(internal)?;
    let (name, admins) = match kind {
        NewConversation::Group(n) => (Some(n.to_owned()), Some(vec![me.account])),
        NewConversation::Direct => (None, None),
    };
    let change = crate::group::Change {
        adds: key_packages,
        device_lists,
        name,
        admins,
        ..crate::group::Change::default()
    };
    let staged = crate::group::stage_on(provider, device, &mut group, change, None)?;
    crate::state::hold(provider, group);
    Ok(Created { base, staged })
}

pub use crate::state::{Held, Limit, Provider};
pub(crate) use crate::state::{load, read};

/// Whether the local state has this group.
pub fn has_group<P: Provider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
) -> Result<bool, CoreError> {
    crate::state::exists(provider, group_id)
}

/// Applies the staged commit after the server accepted it; says what the
/// group is called now if the commit named it.
pub fn merge_pending<P: Provider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
) -> Result<Option<crate::group::Renamed>, CoreError> {
    let mut g = load(provider, group_id)?;
    let renamed = match g.pending_commit() {
        Some(staged) => crate::group::renamed(&g, provider.crypto(), staged)?,
        None => None,
    };
    let merged = g.merge_pending_commit(provider).map_err(internal);
    g.kept(merged)?;
    Ok(renamed)
}

/// Forgets a group entirely (used when the server refused its creation).
pub fn discard<P: Provider>(provider: &P, group_id: sotto_proto::GroupId) -> Result<(), CoreError> {
    let mut g = load(provider, group_id)?;
    g.delete(provider.storage()).map_err(storage)
}

/// The group's current epoch.
pub fn epoch<P: Provider>(provider: &P, group_id: sotto_proto::GroupId) -> Result<u64, CoreError> {
    read(provider, group_id, |g| g.epoch().as_u64())
}

/// The members of a group, as (account, device).
pub fn members<P: Provider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
) -> Result<Vec<CredentialIdentity>, CoreError> {
    read(provider, group_id, |g| {
        g.members()
            .map(|m| {
                leaf_identity(&m.credential, &m.signature_key).ok_or(CoreError::ForgedCredential)
            })
            .collect()
    })?
}

/// The ciphersuite of a group, if Sotto speaks it.
pub fn suite_of<P: Provider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
) -> Result<Option<Suite>, CoreError> {
    read(provider, group_id, |g| {
        Suite::from_ciphersuite(g.ciphersuite())
    })
}

/// The HPKE encryption key of `device`'s leaf in the group (it changes when
/// the device updates its leaf or is re-added); `None` if not a member.
pub fn leaf_key<P: Provider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
    device: DeviceId,
) -> Result<Option<Vec<u8>>, CoreError> {
    read(provider, group_id, |g| {
        g.members()
            .find(|m| m.signature_key.as_slice() == device.0.as_slice())
            .map(|m| m.encryption_key)
    })
}

/// Encrypts an application message for the group.
pub fn encrypt<P: Provider>(
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
pub fn encrypt_with_timer<P: Provider>(
    provider: &P,
    device: &DeviceKey,
    group_id: sotto_proto::GroupId,
    plaintext: &[u8],
) -> Result<(Vec<u8>, Option<u64>), CoreError> {
    let mut g = load(provider, group_id)?;
    let timer = sotto_rules::context::timer_of(g.extensions());
    // MLS pads the content to a multiple of the padding size: the bucket
    // itself, so that the content fills it exactly. Stored only when it
    // changes (most messages fall in the first bucket).
    let bucket = padded_size(plaintext.len());
    let padded = if g.configuration().padding_size() == bucket {
        Ok(())
    } else {
        g.set_configuration(provider.storage(), &join_config_padded(bucket))
            .map_err(storage)
    };
    let out = padded
        .and_then(|()| {
            g.create_message(provider, device, plaintext)
                .map_err(internal)
        })
        .and_then(|out| g.past_epochs_done(provider).map(|()| out));
    let out = g.kept(out)?;
    Ok((out.tls_serialize_detached().map_err(internal)?, timer))
}

/// The members of a group this device just joined, each with a Sotto
/// credential naming its leaf key; if one has not, the group is dropped.
fn checked_members<P: Provider>(
    provider: &P,
    group: &mut MlsGroup,
) -> Result<Vec<CredentialIdentity>, CoreError> {
    let members: Option<Vec<CredentialIdentity>> = group
        .members()
        .map(|m| leaf_identity(&m.credential, &m.signature_key))
        .collect();
    match members {
        Some(m) => Ok(m),
        None => {
            group.delete(provider.storage()).map_err(storage)?;
            Err(CoreError::ForgedCredential)
        }
    }
}

/// The result of joining by Welcome.
#[derive(Debug)]
pub struct Joined {
    /// The group.
    pub group_id: sotto_proto::GroupId,
    /// Its members.
    pub members: Vec<CredentialIdentity>,
    /// A group's name and name key (`None` for a one-to-one conversation).
    pub name: Option<crate::group::Renamed>,
}

/// Joins a group from a Welcome bundle. Every member's credential must
/// match its leaf key, or the group is dropped again.
pub fn join<P: Provider>(provider: &P, welcome: &[u8]) -> Result<Joined, CoreError> {
    join_replacing(provider, welcome, |_| false).map(|(j, _)| j)
}

/// Joins a group from a Welcome bundle like [`join`], and may replace a
/// group this device already holds: one it was removed from (inactive)
/// always, since it is over (the device is added again); an active one only
/// if `may_replace` says so for that group (this device asked to be
/// re-added to it), and only by a later epoch. The held state is deleted in the same step;
/// the caller's transaction keeps it if anything fails. Returns the joined
/// group and whether it replaced a held one.
pub fn join_replacing<P: Provider>(
    provider: &P,
    welcome: &[u8],
    may_replace: impl FnOnce(sotto_proto::GroupId) -> bool,
) -> Result<(Joined, bool), CoreError> {
    let invalid = |e: &dyn std::fmt::Display| CoreError::InvalidWelcome(e.to_string());
    let bundle: crate::names::WelcomeBundle =
        postcard::from_bytes(welcome).map_err(|e| invalid(&e))?;
    let msg = MlsMessageIn::tls_deserialize_exact(&bundle.welcome).map_err(|e| invalid(&e))?;
    let MlsMessageBodyIn::Welcome(w) = msg.extract() else {
        return Err(CoreError::InvalidWelcome("not a welcome".into()));
    };
    let tree =
        RatchetTreeIn::tls_deserialize_exact(&bundle.ratchet_tree).map_err(|e| invalid(&e))?;
    let processed =
        ProcessedWelcome::new_from_welcome(provider, &join_config(), w).map_err(|e| invalid(&e))?;
    let gid: [u8; 32] = processed
        .unverified_group_info()
        .group_id()
        .as_slice()
        .try_into()
        .map_err(|_| CoreError::InvalidWelcome("group id is not 32 bytes".into()))?;
    let gid = sotto_proto::GroupId(gid);
    let held = crate::state::load_if_any(provider, gid)?;
    let replaced = held.is_some();
    let mut floor = None;
    if let Some(mut old) = held {
        // A group this device was removed from is over: a Welcome (added
        // again) replaces it. An active one only when this device asked.
        if old.is_active() {
            if !may_replace(gid) {
                return Err(CoreError::InvalidWelcome(
                    "a Welcome into a conversation this device already has".into(),
                ));
            }
            floor = Some(old.epoch().as_u64());
        }
        old.delete(provider.storage()).map_err(storage)?;
    }
    let staged = processed
        .into_staged_welcome(provider, Some(tree))
        .map_err(|e| invalid(&e))?;
    let mut group = staged.into_group(provider).map_err(|e| invalid(&e))?;
    if floor.is_some_and(|f| group.epoch().as_u64() <= f) {
        return Err(CoreError::InvalidWelcome(
            "a Welcome to an epoch this device is past".into(),
        ));
    }
    let members = checked_members(provider, &mut group)?;
    let name = sotto_rules::context::GroupMeta::from_extensions(group.extensions()).map(|meta| {
        // The key comes sealed under this epoch's exporter; a Welcome
        // without one (or with a wrong one) leaves the name unreadable.
        let key = bundle.name_key.as_ref().and_then(|sealed| {
            let epoch_key = group
                .export_secret(provider.crypto(), crate::names::WELCOME_LABEL, &gid.0, 32)
                .ok()
                .and_then(crate::names::NameKey::from_exported)?;
            sealed.open(&epoch_key, &gid)
        });
        match key {
            Some(key) => crate::group::Renamed {
                name: crate::names::open_name(&meta.name, &key, &gid),
                key,
            },
            None => crate::group::Renamed {
                name: None,
                key: crate::names::NameKey::from_bytes([0; 32]),
            },
        }
    });
    crate::state::hold(provider, group);
    Ok((
        Joined {
            group_id: gid,
            members,
            name,
        },
        replaced,
    ))
}

/// A rejoin by external commit, built and applied locally, waiting for
/// the server: if the server does not take it, [`discard`] the group.
#[derive(Debug)]
pub struct Rejoined {
    /// The epoch the commit was built on (the GroupInfo's).
    pub epoch: u64,
    /// The external commit.
    pub commit: Vec<u8>,
    /// The GroupInfo of the epoch it makes.
    pub group_info: Vec<u8>,
    /// The members now.
    pub members: Vec<CredentialIdentity>,
}

/// Rejoins group `group_id` from the server's GroupInfo and ratchet tree,
/// by an external commit that replaces this device's own leaf: what a
/// member device does when its state of the group is lost or behind. A
/// device without a leaf there (a new device restored from a backup)
/// joins beside its account's member devices instead, vouched for by
/// `own_list`, its account's signed device list, which the commit carries.
/// Any state held of the group is deleted first (the caller's transaction
/// keeps it if anything fails). The GroupInfo must be signed by a member
/// of the tree; every leaf must carry a Sotto credential (the server and
/// every member refuse an external commit that is neither).
pub fn rejoin<P: Provider>(
    provider: &P,
    me: &CredentialIdentity,
    device: &DeviceKey,
    own_list: Option<&sotto_proto::SignedDeviceList>,
    group_id: sotto_proto::GroupId,
    group_info: &[u8],
    ratchet_tree: &[u8],
) -> Result<Rejoined, CoreError> {
    let bad = |e: &dyn std::fmt::Display| CoreError::Rejected(format!("cannot rejoin: {e}"));
    let msg = MlsMessageIn::tls_deserialize_exact(group_info).map_err(|e| bad(&e))?;
    let MlsMessageBodyIn::GroupInfo(info) = msg.extract() else {
        return Err(bad(&"not a group info"));
    };
    if info.group_id().as_slice() != group_id.0.as_slice() {
        return Err(bad(&"a group info of another group"));
    }
    let epoch = info.epoch().as_u64();
    let tree = RatchetTreeIn::tls_deserialize_exact(ratchet_tree).map_err(|e| bad(&e))?;
    if let Some(mut old) = crate::state::load_if_any(provider, group_id)? {
        old.delete(provider.storage()).map_err(storage)?;
    }
    let aad = match own_list {
        Some(l) => postcard::to_stdvec(std::slice::from_ref(l)).map_err(internal)?,
        None => Vec::new(),
    };
    let (mut group, bundle) = MlsGroup::external_commit_builder()
        .with_aad(aad)
        .with_ratchet_tree(tree)
        .with_config(join_config())
        .build_group(provider, info, credential(me))
        .map_err(|e| bad(&e))?
        .leaf_node_parameters(
            LeafNodeParameters::builder()
                .with_capabilities(capabilities())
                .build(),
        )
        .load_psks(provider.storage())
        .map_err(storage)?
        .create_group_info(true)
        .use_ratchet_tree_extension(false)
        .build(provider.rand(), provider.crypto(), device, |_| true)
        .map_err(|e| bad(&e))?
        .finalize(provider)
        .map_err(|e| bad(&e))?;
    let members = checked_members(provider, &mut group)?;
    crate::state::hold(provider, group);
    let (commit, _, info) = bundle.into_contents();
    Ok(Rejoined {
        epoch,
        commit: commit.tls_serialize_detached().map_err(internal)?,
        group_info: info
            .map(MlsMessageOut::from)
            .ok_or_else(|| internal("no group info for the new epoch"))?
            .tls_serialize_detached()
            .map_err(internal)?,
        members,
    })
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
        /// The group's new name, if the commit named it.
        renamed: Option<crate::group::Renamed>,
    },
    /// A proposal was stored for the next commit.
    Proposal {
        /// The member that proposed its own removal (a leave), if that is what it is.
        leaving: Option<CredentialIdentity>,
        /// The leave said that its device obeys a wipe order
        /// ([`crate::group::WIPED`]).
        wiped: bool,
    },
    /// A proposal or other message that changes nothing visible.
    Other,
}

/// Decrypts or applies one MLS message of a group.
pub fn process<P: Provider>(
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
    let out = process_on(provider, &mut g, proto);
    g.kept(out)
}

fn process_on<P: Provider>(
    provider: &P,
    g: &mut crate::state::Loaded<'_>,
    proto: ProtocolMessage,
) -> Result<Processed, CoreError> {
    let current = proto.epoch() == g.epoch();
    if proto.epoch() > g.epoch() {
        return Err(CoreError::Behind {
            local: g.epoch().as_u64(),
            message: proto.epoch().as_u64(),
        });
    }
    let processed = g
        .process_message(provider, proto)
        .map_err(|e| CoreError::Rejected(e.to_string()))?;
    let sender = processed.sender().clone();
    let sender_leaf = match &sender {
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
            if current {
                g.past_epochs_done(provider)?;
            }
            Ok(Processed::Application {
                sender,
                plaintext: app.into_bytes(),
                timer_s: sotto_rules::context::timer_of(g.extensions()),
            })
        }
        ProcessedMessageContent::StagedCommitMessage(staged) => {
            let judged =
                sotto_rules::judge::judge_commit(g.public_group(), &sender, &staged, &aad)?;
            let readded = judged.readded.into_iter().map(|(_, d)| d).collect();
            let renamed = crate::group::renamed(g, provider.crypto(), &staged)?;
            let removed_me = staged.self_removed();
            let timer_before = sotto_rules::context::timer_of(g.extensions());
            g.merge_staged_commit(provider, *staged).map_err(internal)?;
            let timer_after = sotto_rules::context::timer_of(g.extensions());
            Ok(Processed::Commit {
                epoch: g.epoch().as_u64(),
                removed_me,
                device_lists: judged.device_lists,
                timer_change: (timer_before != timer_after).then_some(timer_after),
                readded,
                renamed,
            })
        }
        ProcessedMessageContent::ProposalMessage(p) => {
            let leaving = sotto_rules::judge::self_removal(g.public_group(), &p);
            // Only leaves are accepted as standalone proposals; everything
            // else comes inside a commit.
            if leaving.is_none() {
                return Err(CoreError::Rejected(
                    "only a member's own removal may be proposed".into(),
                ));
            }
            g.store_pending_proposal(provider.storage(), *p)
                .map_err(storage)?;
            Ok(Processed::Proposal {
                leaving,
                wiped: aad == crate::group::WIPED,
            })
        }
        _ => Ok(Processed::Other),
    }
}
