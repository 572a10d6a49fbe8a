//! The in-memory peer both core test files drive: an account, a device,
//! its credential and an MLS provider with in-memory storage.

use openmls_libcrux_crypto::Provider;
use sotto_core::{AccountKey, CredentialIdentity, DeviceKey};
use sotto_proto::Handle;

pub(crate) struct Peer {
    pub(crate) account: AccountKey,
    pub(crate) device: DeviceKey,
    pub(crate) me: CredentialIdentity,
    pub(crate) provider: Provider,
}

impl Peer {
    pub(crate) fn new(handle: &str) -> Self {
        let account = AccountKey::generate();
        let device = DeviceKey::generate();
        let me = CredentialIdentity {
            account: account.id(),
            device: device.id(),
            handle: Handle::new(handle).unwrap(),
        };
        Self {
            account,
            device,
            me,
            provider: Provider::new().expect("libcrux provider"),
        }
    }
}
