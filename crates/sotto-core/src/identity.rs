//! Identity keys. An account has one Ed25519 identity key; each device has
//! its own Ed25519 device key, which signs logins to the server and is the
//! signature key of the device's MLS leaves. The MLS credential names both,
//! so a peer can tell which account and which device sent what.

use ed25519_dalek::{Signer as _, SigningKey};
use openmls_traits::signatures::{Signer, SignerError};
use openmls_traits::types::SignatureScheme;
use rand::rngs::OsRng;
use sotto_proto::{AccountId, DeviceId, Signature, SignedDeviceList};
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

pub use sotto_rules::signed::device_list_is_signed;

impl Signer for DeviceKey {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        Ok(self.0.sign(payload).to_bytes().to_vec())
    }

    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

pub use sotto_rules::CredentialIdentity;

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
}
