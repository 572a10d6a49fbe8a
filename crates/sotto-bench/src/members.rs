//! What the client-side MLS scenarios (`groups`, `mls`) share: a member
//! device with its account, its KeyPackages and its signed device list, and
//! medians of timings.

use std::time::Duration;

use openmls::prelude::KeyPackage;
use openmls_libcrux_crypto::Provider;
use sotto_core::{AccountKey, CredentialIdentity, DeviceKey, Suite, mls};
use sotto_proto::{Handle, SignedDeviceList};

/// One member device and the account it belongs to.
pub(crate) struct Member {
    pub(crate) account: AccountKey,
    pub(crate) device: DeviceKey,
    pub(crate) me: CredentialIdentity,
}

impl Member {
    pub(crate) fn new(i: usize) -> Self {
        let account = AccountKey::generate();
        let device = DeviceKey::generate();
        let me = CredentialIdentity {
            account: account.id(),
            device: device.id(),
            handle: Handle::new(&format!("member{i:05}")).expect("valid handle"),
        };
        Self {
            account,
            device,
            me,
        }
    }

    /// A one-time KeyPackage as the server hands it out (serialized); its
    /// private part goes into `p`.
    pub(crate) fn key_package_bytes(&self, p: &Provider, suite: Suite) -> Vec<u8> {
        mls::key_packages(p, &self.me, &self.device, suite, 1)
            .expect("key package")
            .remove(0)
    }

    /// A one-time KeyPackage, verified as the client verifies it.
    pub(crate) fn key_package(&self, p: &Provider, suite: Suite) -> KeyPackage {
        let b = self.key_package_bytes(p, suite);
        mls::verify_key_package(p, &b, self.me.account, self.me.device)
            .expect("valid")
            .0
    }

    /// The account's signed list naming this device.
    pub(crate) fn list(&self) -> SignedDeviceList {
        self.account.sign_device_list(1, vec![self.me.device])
    }
}

pub(crate) fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub(crate) fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}
