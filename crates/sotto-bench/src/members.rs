//! What the client-side MLS scenarios (`groups`, `mls`) share: a member
//! device with its account, its KeyPackages and its signed device list, a
//! provider that holds its groups as a long-running client does, and
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

/// The provider `p`, holding its groups loaded between operations as a
/// long-running client's store does (`mls::Held`); each
/// operation counts as committed at once (memory storage has no
/// transactions).
pub(crate) struct Holding<'a> {
    p: &'a Provider,
    pub(crate) held: mls::Held,
}

impl<'a> Holding<'a> {
    pub(crate) fn new(p: &'a Provider) -> Self {
        Self {
            p,
            held: mls::Held::default(),
        }
    }
}

impl std::fmt::Debug for Holding<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Holding({:?})", self.held)
    }
}

impl openmls::prelude::OpenMlsProvider for Holding<'_> {
    type CryptoProvider = <Provider as openmls::prelude::OpenMlsProvider>::CryptoProvider;
    type RandProvider = <Provider as openmls::prelude::OpenMlsProvider>::RandProvider;
    type StorageProvider = <Provider as openmls::prelude::OpenMlsProvider>::StorageProvider;

    fn storage(&self) -> &Self::StorageProvider {
        self.p.storage()
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        self.p.crypto()
    }

    fn rand(&self) -> &Self::RandProvider {
        self.p.rand()
    }
}

impl mls::Provider for Holding<'_> {
    fn held(&self) -> Option<&mls::Held> {
        Some(&self.held)
    }
}

pub(crate) fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub(crate) fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}
