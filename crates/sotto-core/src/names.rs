//! Group names the server cannot read. A group's metadata lives in its MLS
//! group context, which the server sees in full since it checks commits
//! (see `sotto_rules::public`); the admins must stay readable for that, the
//! name must not. So the context holds the name sealed (ChaCha20-Poly1305)
//! under a *name key* only members have:
//!
//! - whenever a commit built on epoch `e` sets the name (the commit that
//!   creates a group, from epoch 0, and every rename), a key exported from
//!   epoch `e`
//!   (`MLS-Exporter("sotto-name-key-v1", group id, 32)`), which every
//!   member of `e` derives itself when it processes the commit, and which
//!   members removed before `e` never learn;
//! - a new member gets the current key in its Welcome bundle, sealed under
//!   a key exported from the epoch it joins.
//!
//! The sealed name carries a hash of its key, so a member handing a joiner
//! a key cannot make the same sealed name read differently for it.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sotto_proto::GroupId;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The exporter label of the key a rename seals the new name under.
pub(crate) const RENAME_LABEL: &str = "sotto-name-key-v1";
/// The exporter label of the key that seals the name key in a Welcome bundle.
pub(crate) const WELCOME_LABEL: &str = "sotto-welcome-name-key-v1";

/// The key a group's name is sealed under. Printed as its length only.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct NameKey(pub(crate) [u8; 32]);

impl std::fmt::Debug for NameKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NameKey(..)")
    }
}

impl NameKey {
    #[cfg(test)]
    fn random() -> Self {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        Self(k)
    }

    /// A key from exported bytes (32 of them).
    pub(crate) fn from_exported(mut bytes: Vec<u8>) -> Option<Self> {
        let key = <[u8; 32]>::try_from(bytes.as_slice()).ok().map(Self);
        bytes.zeroize();
        key
    }

    /// The key as stored by the client.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A key the client stored.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    fn check(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"sotto-name-key-check-v1\0");
        h.update(self.0);
        h.finalize().into()
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.0))
    }
}

fn aad(label: &[u8], group: &GroupId) -> Vec<u8> {
    let mut a = label.to_vec();
    a.extend_from_slice(&group.0);
    a
}

/// ChaCha20-Poly1305 under `key` with a random nonce; additional data
/// `label ‖ group`.
fn seal(key: &NameKey, label: &[u8], group: &GroupId, plain: &[u8]) -> ([u8; 12], Vec<u8>) {
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ciphertext = key
        .cipher()
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plain,
                aad: &aad(label, group),
            },
        )
        .unwrap_or_default();
    (nonce, ciphertext)
}

/// The plaintext of [`seal`], if `key` and the additional data fit.
fn open(
    key: &NameKey,
    label: &[u8],
    group: &GroupId,
    nonce: &[u8; 12],
    ciphertext: &[u8],
) -> Option<Vec<u8>> {
    key.cipher()
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: &aad(label, group),
            },
        )
        .ok()
}

const NAME_AAD: &[u8] = b"sotto-group-name-v1\0";
const KEY_AAD: &[u8] = b"sotto-welcome-name-key-v1\0";

pub use sotto_rules::context::SealedName;

/// Seals `name` for group `group`.
pub(crate) fn seal_name(name: &str, key: &NameKey, group: &GroupId) -> SealedName {
    let (nonce, ciphertext) = seal(key, NAME_AAD, group, name.as_bytes());
    SealedName {
        check: key.check(),
        nonce,
        ciphertext,
    }
}

/// The name, if `key` is the one it was sealed under.
pub fn open_name(sealed: &SealedName, key: &NameKey, group: &GroupId) -> Option<String> {
    if key.check() != sealed.check {
        return None;
    }
    String::from_utf8(open(
        key,
        NAME_AAD,
        group,
        &sealed.nonce,
        &sealed.ciphertext,
    )?)
    .ok()
}

/// What the server relays as a Welcome: the MLS Welcome, the ratchet tree
/// and, for a group,
/// the current name key sealed under a key exported from the epoch the
/// Welcome joins.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WelcomeBundle {
    #[serde(with = "serde_bytes")]
    pub(crate) welcome: Vec<u8>,
    /// The ratchet tree of the epoch joined (the Welcome's GroupInfo does
    /// not carry it; its hash in the signed group context checks it).
    #[serde(with = "serde_bytes")]
    pub(crate) ratchet_tree: Vec<u8>,
    pub(crate) name_key: Option<SealedKey>,
}

/// A name key sealed for the joiners of one epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SealedKey {
    nonce: [u8; 12],
    #[serde(with = "serde_bytes")]
    ciphertext: Vec<u8>,
}

impl SealedKey {
    /// Seals `key` under `epoch_key` (exported from the epoch joined).
    pub(crate) fn seal(key: &NameKey, epoch_key: &NameKey, group: &GroupId) -> Self {
        let (nonce, ciphertext) = seal(epoch_key, KEY_AAD, group, &key.0);
        Self { nonce, ciphertext }
    }

    /// The name key, if `epoch_key` opens it.
    pub(crate) fn open(&self, epoch_key: &NameKey, group: &GroupId) -> Option<NameKey> {
        let mut plain = open(epoch_key, KEY_AAD, group, &self.nonce, &self.ciphertext)?;
        let key = <[u8; 32]>::try_from(plain.as_slice()).ok().map(NameKey);
        plain.zeroize();
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: GroupId = GroupId([7; 32]);

    #[test]
    fn a_sealed_name_opens_only_with_its_key_and_group() {
        let key = NameKey::random();
        let sealed = seal_name("ops room", &key, &G);
        assert_eq!(open_name(&sealed, &key, &G).as_deref(), Some("ops room"));
        assert_eq!(open_name(&sealed, &NameKey::random(), &G), None);
        assert_eq!(open_name(&sealed, &key, &GroupId([8; 32])), None);
        let mut bent = sealed.clone();
        bent.ciphertext[0] ^= 1;
        assert_eq!(open_name(&bent, &key, &G), None);
        assert!(
            !sealed
                .ciphertext
                .windows(8)
                .any(|w| w == b"ops room".as_slice()),
            "the name is in the clear"
        );
    }

    #[test]
    fn a_sealed_key_opens_only_with_the_epoch_key() {
        let key = NameKey::random();
        let epoch = NameKey::random();
        let sealed = SealedKey::seal(&key, &epoch, &G);
        assert_eq!(sealed.open(&epoch, &G), Some(key));
        assert_eq!(sealed.open(&NameKey::random(), &G), None);
        assert_eq!(sealed.open(&epoch, &GroupId([8; 32])), None);
    }
}
