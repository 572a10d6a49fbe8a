//! Newtype identifiers. An account and a device are named by their Ed25519
//! public keys, so an id is self-certifying: whoever can sign with the key
//! owns the id, and no registry is needed to bind the two.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

macro_rules! key_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The id as lowercase hex.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Parses 64 hex digits.
            pub fn from_hex(s: &str) -> Option<Self> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).ok()?;
                Some(Self(out))
            }

            /// The first 8 bytes as hex: enough to tell ids apart on screen.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..8])
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
    };
}

key_id!(
    /// An account: the public half of its Ed25519 identity key.
    AccountId
);
key_id!(
    /// A device: the public half of its Ed25519 device key, which is also the
    /// signature key of the device's MLS leaves.
    DeviceId
);

impl DeviceId {
    /// No device: the sender of an envelope that names none (an
    /// application message, [`crate::EnvelopeKind::names_sender`]). The
    /// all-zero encoding is a point of small order: no device can register
    /// it, as signatures by such a key are refused (`sotto_rules::signed`
    /// verifies strictly).
    pub const NONE: Self = Self([0; 32]);
}

/// A message id, chosen at random by the sending device. The server drops a
/// second send with the same id in the same scope ([`crate::dedup_scope`]:
/// the sender device, or an application message's group); clients drop a
/// second delivery the same way.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// The id as lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 32 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.to_hex())
    }
}

/// An attachment's blob on the server: 16 random bytes chosen by the uploader.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlobId(pub [u8; 16]);

impl BlobId {
    /// The id as lowercase hex (also the blob's file name on the server).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({})", self.to_hex())
    }
}

/// An MLS group id as the server sees it: 32 opaque bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupId(pub [u8; 32]);

impl GroupId {
    /// The id of the one-to-one conversation between two accounts. It follows
    /// from the pair alone, so two people who write to each other at the same
    /// moment race for the same group and end up in one conversation.
    pub fn direct(a: &AccountId, b: &AccountId) -> Self {
        let (lo, hi) = if a.0 <= b.0 { (a, b) } else { (b, a) };
        let mut h = Sha256::new();
        h.update(b"sotto-direct-conversation-v1");
        h.update(lo.0);
        h.update(hi.0);
        Self(h.finalize().into())
    }

    /// The id as lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

impl fmt::Debug for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupId({})", hex::encode(&self.0[..8]))
    }
}

/// A handle (`alice`): 3 to 32 characters of `a-z`, `0-9`, `_`, `-` and `.`,
/// starting with a letter or digit. Unique per server; lowercase only so that
/// `Alice` and `alice` cannot be two people.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Handle(String);

/// Why a string is not a handle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a handle is 3 to 32 characters of a-z, 0-9, '_', '-' or '.', starting with a letter or digit"
)]
pub struct InvalidHandle;

impl Handle {
    /// Validates and wraps a handle.
    pub fn new(s: &str) -> Result<Self, InvalidHandle> {
        let ok_len = (3..=32).contains(&s.len());
        let ok_first = s
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b));
        if ok_len && ok_first && ok_chars {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidHandle)
        }
    }

    /// The handle as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Handle {
    type Error = InvalidHandle;
    fn try_from(s: String) -> Result<Self, InvalidHandle> {
        Self::new(&s)
    }
}

impl From<Handle> for String {
    fn from(h: Handle) -> String {
        h.0
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Handle({})", self.0)
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature(#[serde(with = "sig_serde")] pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signature(..)")
    }
}

mod sig_serde {
    //! serde for `[u8; 64]`, which serde does not derive.
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let b: &[u8] = Deserialize::deserialize(d)?;
        b.try_into()
            .map_err(|_| D::Error::invalid_length(b.len(), &"64 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_validated() {
        for good in ["alice", "bob_2", "a.b-c", "007"] {
            assert!(Handle::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "ab",
            "Alice",
            "-bob",
            "bob smith",
            "élodie",
            &"x".repeat(33),
        ] {
            assert_eq!(Handle::new(bad), Err(InvalidHandle), "{bad}");
        }
    }

    #[test]
    fn direct_group_id_is_symmetric_and_distinct() {
        let a = AccountId([1; 32]);
        let b = AccountId([2; 32]);
        let c = AccountId([3; 32]);
        assert_eq!(GroupId::direct(&a, &b), GroupId::direct(&b, &a));
        assert_ne!(GroupId::direct(&a, &b), GroupId::direct(&a, &c));
    }
}
