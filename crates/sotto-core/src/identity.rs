//! Identity keys. An account has one Ed25519 identity key; each device has
//! its own Ed25519 device key, which signs logins to the server and is the
//! signature key of the device's MLS leaves. The MLS credential names both,
//! so a peer can tell which account and which device sent what.

use ed25519_dalek::{Signer as _, SigningKey};
use openmls_traits::signatures::{Signer, SignerError};
use openmls_traits::types::SignatureScheme;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use sotto_proto::{AccountId, DeviceId, Handle, Signature, SignedDeviceList};
use zeroize::Zeroizing;

macro_rules! signing_key {
    ($(#[$doc:meta])* $name:ident, $id:ident) => {
        $(#[$doc])*
        /// The secret half is zeroized when dropped and never printed.
        pub struct $name(SigningKey);

        impl $name {
            /// A fresh key from the operating system's randomness.
            pub fn generate() -> Self {
                Self(SigningKey::generate(&mut OsRng))
            }

            /// Restores a key from its 32 secret bytes.
            pub fn from_secret(bytes: &[u8; 32]) -> Self {
                Self(SigningKey::from_bytes(bytes))
            }

            /// The 32 secret bytes, for the encrypted store only.
            pub fn secret(&self) -> Zeroizing<[u8; 32]> {
                Zeroizing::new(self.0.to_bytes())
            }

            /// The public id.
            pub fn id(&self) -> $id {
                $id(self.0.verifying_key().to_bytes())
            }

            /// Signs `msg`.
            pub fn sign(&self, msg: &[u8]) -> Signature {
                Signature(self.0.sign(msg).to_bytes())
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.id())
            }
        }
    };
}

signing_key!(
    /// The account identity key.
    AccountKey,
    AccountId
);
signing_key!(
    /// A device key.
    DeviceKey,
    DeviceId
);

impl AccountKey {
    /// Signs a device list of this account.
    pub fn sign_device_list(&self, version: u64, devices: Vec<DeviceId>) -> SignedDeviceList {
        let t = sotto_proto::device_list_transcript(&self.id(), version, &devices);
        SignedDeviceList {
            account: self.id(),
            version,
            devices,
            signature: self.sign(&t),
        }
    }
}

/// Whether a device list carries a valid signature of its account's key.
pub fn device_list_is_signed(l: &SignedDeviceList) -> bool {
    let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&l.account.0) else {
        return false;
    };
    let t = sotto_proto::device_list_transcript(&l.account, l.version, &l.devices);
    vk.verify_strict(&t, &ed25519_dalek::Signature::from_bytes(&l.signature.0))
        .is_ok()
}

impl Signer for DeviceKey {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        Ok(self.0.sign(payload).to_bytes().to_vec())
    }

    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// What an MLS basic credential carries: the account, the device and the
/// account's handle on its server. A leaf is only accepted if its signature
/// key is the device key named here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialIdentity {
    /// The account.
    pub account: AccountId,
    /// The device; equal to the leaf's signature key.
    pub device: DeviceId,
    /// The account's handle.
    pub handle: Handle,
}

impl CredentialIdentity {
    /// The credential's identity bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(72);
        v.extend_from_slice(b"sotto1");
        v.extend_from_slice(&self.account.0);
        v.extend_from_slice(&self.device.0);
        v.extend_from_slice(self.handle.as_str().as_bytes());
        v
    }

    /// Parses identity bytes; `None` if they are not a Sotto credential.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let rest = b.strip_prefix(b"sotto1")?;
        if rest.len() < 64 {
            return None;
        }
        let mut a = [0u8; 32];
        let mut d = [0u8; 32];
        a.copy_from_slice(&rest[..32]);
        d.copy_from_slice(&rest[32..64]);
        let handle = Handle::new(std::str::from_utf8(&rest[64..]).ok()?).ok()?;
        Some(Self {
            account: AccountId(a),
            device: DeviceId(d),
            handle,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips_and_debug_hides_secret() {
        let k = DeviceKey::generate();
        let k2 = DeviceKey::from_secret(&k.secret());
        assert_eq!(k.id(), k2.id());
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(&hex::encode(*k.secret())));
    }

    #[test]
    fn device_lists_verify_only_unchanged() {
        let a = AccountKey::generate();
        let mut l = a.sign_device_list(2, vec![DeviceId([1; 32]), DeviceId([2; 32])]);
        assert!(device_list_is_signed(&l));
        l.devices.push(DeviceId([3; 32]));
        assert!(!device_list_is_signed(&l));
        let mut l = a.sign_device_list(2, vec![DeviceId([1; 32])]);
        l.version = 3;
        assert!(!device_list_is_signed(&l));
        let mut l = a.sign_device_list(2, vec![DeviceId([1; 32])]);
        l.account = AccountKey::generate().id();
        assert!(!device_list_is_signed(&l));
    }

    #[test]
    fn credential_identity_round_trips_and_rejects_garbage() {
        let c = CredentialIdentity {
            account: AccountId([1; 32]),
            device: DeviceId([2; 32]),
            handle: Handle::new("alice").unwrap(),
        };
        assert_eq!(
            CredentialIdentity::from_bytes(&c.to_bytes()),
            Some(c.clone())
        );
        assert_eq!(CredentialIdentity::from_bytes(b"alice"), None);
        assert_eq!(CredentialIdentity::from_bytes(&c.to_bytes()[..66]), None);
    }
}
