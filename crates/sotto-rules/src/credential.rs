//! What an MLS credential of Sotto names: the account, the device and the
//! account's handle. A leaf is accepted only if its signature key is the
//! device key its credential names.

use openmls::prelude::{BasicCredential, Credential};
use serde::{Deserialize, Serialize};
use sotto_proto::{AccountId, DeviceId, Handle};

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

/// The identity of a leaf whose credential names the leaf's own signature
/// key; `None` for anything else.
pub fn leaf_identity(credential: &Credential, signature_key: &[u8]) -> Option<CredentialIdentity> {
    let basic = BasicCredential::try_from(credential.clone()).ok()?;
    let id = CredentialIdentity::from_bytes(basic.identity())?;
    (id.device.0.as_slice() == signature_key).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

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
