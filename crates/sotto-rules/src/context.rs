//! Sotto's group-context extensions and their codec: the metadata of a
//! group (admins, and its name sealed from the server) and a
//! conversation's disappearing-message timer. The server reads the admins
//! and the timer; the name only members can open (`sotto-core`'s names).

use openmls::prelude::*;
use serde::{Deserialize, Serialize};
use sotto_proto::AccountId;

use crate::error::{RuleError, internal};

/// The extension type of Sotto's group metadata (private-use range).
pub const META_EXTENSION: u16 = 0xff5a;

/// The extension type of a conversation's disappearing-message timer: a u64
/// of seconds (absent: messages stay).
pub const TIMER_EXTENSION: u16 = 0xff5b;

/// A group's name sealed under a name key, as the group context carries
/// it: opaque to the server (sealing and opening are the members' business,
/// in `sotto-core`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedName {
    /// SHA-256 of the key (domain-separated): which key opens it.
    pub check: [u8; 32],
    /// The AEAD nonce.
    pub nonce: [u8; 12],
    /// The sealed name.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// What a group's context says of it: who administers it, and its name
/// sealed under the current name key. The server reads the admins to judge
/// commits; it cannot read the name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMeta {
    /// Accounts allowed to add and remove others and to change this metadata.
    pub admins: Vec<AccountId>,
    /// The group's name, chosen by its admins, sealed.
    pub name: SealedName,
}

impl GroupMeta {
    /// The metadata as a group-context extension.
    pub fn to_extension(&self) -> Result<Extension, RuleError> {
        Ok(Extension::Unknown(
            META_EXTENSION,
            UnknownExtension(postcard::to_stdvec(self).map_err(internal)?),
        ))
    }

    /// The metadata in a group context's extensions, if any (and well formed).
    pub fn from_extensions(exts: &Extensions<GroupContext>) -> Option<Self> {
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

/// Whether the extensions carry metadata bytes at all (well formed or not).
pub fn has_meta_bytes(exts: &Extensions<GroupContext>) -> bool {
    exts.iter()
        .any(|e| matches!(e, Extension::Unknown(t, _) if *t == META_EXTENSION))
}

/// The group context extensions of a conversation: its metadata (groups
/// only), its timer, and the requirement that every member supports both.
pub fn context_extensions(
    meta: Option<&GroupMeta>,
    timer_s: Option<u64>,
) -> Result<Extensions<GroupContext>, RuleError> {
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

/// The disappearing-message timer in a group context's extensions.
pub fn timer_of(exts: &Extensions<GroupContext>) -> Option<u64> {
    exts.iter().find_map(|e| match e {
        Extension::Unknown(t, UnknownExtension(b)) if *t == TIMER_EXTENSION => {
            <[u8; 8]>::try_from(b.as_slice())
                .ok()
                .map(u64::from_be_bytes)
        }
        _ => None,
    })
}
