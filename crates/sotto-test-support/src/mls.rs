//! Real MLS members for tests and benchmarks that speak the raw protocol:
//! the server checks every commit and proposal (protocol 3), so a test that
//! creates a group or commits must bring real MLS messages. A [`Member`] is
//! one device with its keys and its own in-memory MLS state, built on
//! `sotto-core` exactly as the client does.

use std::sync::Mutex;

use openmls::prelude::KeyPackage;
use openmls_libcrux_crypto::Provider;
use sotto_core::group::{self, Change, Renamed, StagedChange};
use sotto_core::mls::{self, NewConversation, Processed};
use sotto_core::{AccountKey, CoreError, CredentialIdentity, DeviceKey, Suite};
use sotto_proto::{
    Blob, CommitRequest, DeviceId, GroupId, Handle, MessageId, ProposeRequest, SignedDeviceList,
};

/// One device of its own account, with its MLS state in memory.
pub struct Member {
    /// The account key.
    pub account: AccountKey,
    /// The device key.
    pub device: DeviceKey,
    /// The handle.
    pub handle: Handle,
    provider: Provider,
    name: Mutex<Option<Renamed>>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Member({})", self.handle)
    }
}

fn request(g: GroupId, s: StagedChange, base: Option<Vec<u8>>) -> CommitRequest {
    CommitRequest {
        group: g,
        epoch: s.epoch,
        msg_id: MessageId(rand::random()),
        commit: Blob(s.commit),
        group_info: Blob(s.group_info),
        welcome: s.welcome.map(Blob),
        base: base.map(Blob),
    }
}

impl Member {
    /// A new account with one device.
    pub fn new(handle: &str) -> Self {
        Self {
            account: AccountKey::generate(),
            device: DeviceKey::generate(),
            handle: Handle::new(handle).expect("a valid handle"),
            provider: Provider::new().expect("libcrux provider"),
            name: Mutex::new(None),
        }
    }

    /// A new device of this member's account (restored from a backup):
    /// the same account key and handle, a device key of its own.
    pub fn new_device(&self) -> Self {
        Self {
            account: AccountKey::from_secret(&self.account.secret()),
            device: DeviceKey::generate(),
            handle: self.handle.clone(),
            provider: Provider::new().expect("libcrux provider"),
            name: Mutex::new(None),
        }
    }

    /// The device id.
    pub fn id(&self) -> DeviceId {
        self.device.id()
    }

    /// The credential identity.
    pub fn me(&self) -> CredentialIdentity {
        CredentialIdentity {
            account: self.account.id(),
            device: self.device.id(),
            handle: self.handle.clone(),
        }
    }

    /// The account's signed device list (this device, version 1), as it
    /// registers with.
    pub fn list(&self) -> SignedDeviceList {
        self.account.sign_device_list(1, vec![self.id()])
    }

    /// A fresh post-quantum KeyPackage of this device, verified.
    pub fn key_package(&self) -> KeyPackage {
        let kp = mls::key_packages(
            &self.provider,
            &self.me(),
            &self.device,
            Suite::PostQuantum,
            1,
        )
        .expect("a key package");
        mls::verify_key_package(&self.provider, &kp[0], self.account.id(), self.id())
            .expect("its own key package verifies")
            .0
    }

    /// The request that creates group `g` with `others` (a group named
    /// `test`, this account its admin). Call [`Member::committed`] once
    /// the server accepted it.
    pub fn create(&self, g: GroupId, others: &[&Member]) -> CommitRequest {
        self.create_with(
            g,
            others.iter().map(|o| o.key_package()).collect(),
            others.iter().map(|o| o.list()).collect(),
        )
    }

    /// The request that creates group `g` with the owners of
    /// `key_packages` (their accounts' signed lists in `lists`).
    pub fn create_with(
        &self,
        g: GroupId,
        key_packages: Vec<KeyPackage>,
        lists: Vec<SignedDeviceList>,
    ) -> CommitRequest {
        let created = mls::create_group(
            &self.provider,
            &self.me(),
            &self.device,
            g,
            key_packages,
            lists,
            NewConversation::Group("test"),
        )
        .expect("a group");
        request(g, created.staged, Some(created.base))
    }

    /// Verifies a claimed KeyPackage of `account`'s `device`.
    pub fn verify(
        &self,
        bytes: &[u8],
        account: sotto_proto::AccountId,
        device: DeviceId,
    ) -> KeyPackage {
        mls::verify_key_package(&self.provider, bytes, account, device)
            .expect("a valid key package")
            .0
    }

    /// The request of a commit of `change` to `g`.
    pub fn commit(&self, g: GroupId, change: Change) -> CommitRequest {
        let key = self
            .name
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|r| r.key.clone());
        let s = group::stage(&self.provider, &self.device, g, change, key.as_ref())
            .expect("a commit")
            .expect("something to commit");
        request(g, s, None)
    }

    /// A self-update of this device's leaf in `g`.
    pub fn self_update(&self, g: GroupId) -> CommitRequest {
        self.commit(
            g,
            Change {
                self_update: true,
                ..Change::default()
            },
        )
    }

    /// Adds `others` to `g`.
    pub fn add(&self, g: GroupId, others: &[&Member]) -> CommitRequest {
        self.commit(
            g,
            Change {
                adds: others.iter().map(|o| o.key_package()).collect(),
                device_lists: others.iter().map(|o| o.list()).collect(),
                ..Change::default()
            },
        )
    }

    /// The server accepted this device's last commit: merge it.
    pub fn committed(&self, g: GroupId) {
        if let Some(r) = mls::merge_pending(&self.provider, g).expect("a staged commit") {
            *self.name.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        }
    }

    /// The server refused this device's last commit: drop it.
    pub fn refused(&self, g: GroupId) {
        group::clear_pending(&self.provider, g).expect("a staged commit");
    }

    /// Forgets `g` (a creation that lost the race).
    pub fn discard(&self, g: GroupId) {
        mls::discard(&self.provider, g).expect("a group");
    }

    /// The request of an external commit that rejoins `g` from the
    /// server's GroupInfo and ratchet tree (applied locally already).
    pub fn rejoin(&self, g: GroupId, group_info: &[u8], ratchet_tree: &[u8]) -> CommitRequest {
        self.external_commit(g, group_info, ratchet_tree, None)
    }

    /// The request of an external commit by which this device, new to
    /// `g` (restored from a backup), joins beside its account's member
    /// devices, vouched for by `list` (applied locally already).
    pub fn join_restored(
        &self,
        g: GroupId,
        group_info: &[u8],
        ratchet_tree: &[u8],
        list: &SignedDeviceList,
    ) -> CommitRequest {
        self.external_commit(g, group_info, ratchet_tree, Some(list))
    }

    fn external_commit(
        &self,
        g: GroupId,
        group_info: &[u8],
        ratchet_tree: &[u8],
        list: Option<&SignedDeviceList>,
    ) -> CommitRequest {
        let r = mls::rejoin(
            &self.provider,
            &self.me(),
            &self.device,
            list,
            g,
            group_info,
            ratchet_tree,
        )
        .expect("a rejoin");
        CommitRequest {
            group: g,
            epoch: r.epoch,
            msg_id: MessageId(rand::random()),
            commit: Blob(r.commit),
            group_info: Blob(r.group_info),
            welcome: None,
            base: None,
        }
    }

    /// Joins from a Welcome bundle (as delivered).
    pub fn join(&self, welcome: &[u8]) {
        let joined = mls::join(&self.provider, welcome).expect("a valid welcome");
        *self.name.lock().unwrap_or_else(|p| p.into_inner()) = joined.name;
    }

    /// Processes a delivered commit, proposal or message of `g`.
    pub fn process(&self, g: GroupId, bytes: &[u8]) -> Result<Processed, CoreError> {
        mls::process(&self.provider, g, bytes)
    }

    /// The request that proposes this device's leave from `g`.
    pub fn leave(&self, g: GroupId) -> ProposeRequest {
        ProposeRequest {
            group: g,
            msg_id: MessageId(rand::random()),
            proposal: Blob(
                group::propose_leave(&self.provider, &self.device, g, false).expect("a proposal"),
            ),
        }
    }

    /// An application message for `g`.
    pub fn encrypt(&self, g: GroupId, plaintext: &[u8]) -> Vec<u8> {
        mls::encrypt(&self.provider, &self.device, g, plaintext).expect("an application message")
    }

    /// This device's epoch of `g`.
    pub fn epoch(&self, g: GroupId) -> u64 {
        mls::epoch(&self.provider, g).expect("a group")
    }
}

/// `body` in the MLS framing of an application message of `group` at
/// `epoch` (a PrivateMessage whose header is right and whose sealed parts
/// are `body`): what the server's framing check lets through, for load
/// generators and tests that send opaque bytes. No member can decrypt it.
pub fn framed_application(group: GroupId, epoch: u64, body: &[u8]) -> Vec<u8> {
    // RFC 9420 §6: MLSMessage { version = mls10 (1), wire_format =
    // mls_private_message (2), PrivateMessage { group_id<V>, epoch,
    // content_type = application (1), authenticated_data<V>,
    // encrypted_sender_data<V>, ciphertext<V> } }.
    let mut out = Vec::with_capacity(body.len() + 64);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&2u16.to_be_bytes());
    vector(&mut out, &group.0);
    out.extend_from_slice(&epoch.to_be_bytes());
    out.push(1);
    vector(&mut out, &[]);
    vector(&mut out, &[0x5e; 16]);
    vector(&mut out, body);
    out
}

/// An MLS variable-length vector (RFC 9420 §2.1.2).
fn vector(out: &mut Vec<u8>, bytes: &[u8]) {
    let n = bytes.len();
    if n < 1 << 6 {
        out.push(n as u8);
    } else if n < 1 << 14 {
        out.extend_from_slice(&(0x4000 | n as u16).to_be_bytes());
    } else {
        assert!(n < 1 << 30, "too long for an MLS vector");
        out.extend_from_slice(&(0x8000_0000 | n as u32).to_be_bytes());
    }
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's own reading of the framing agrees, at every length class.
    #[test]
    fn framed_application_reads_as_an_application_message() {
        let g = GroupId([4; 32]);
        for len in [0, 63, 64, 16_383, 16_384, 70_000] {
            let bytes = framed_application(g, 7, &vec![1; len]);
            assert_eq!(
                sotto_rules::public::application_epoch(&g, &bytes),
                Some(7),
                "{len}"
            );
            assert_eq!(
                sotto_rules::public::application_epoch(&GroupId([5; 32]), &bytes),
                None
            );
        }
        assert_eq!(sotto_rules::public::application_epoch(&g, b"junk"), None);
    }
}
