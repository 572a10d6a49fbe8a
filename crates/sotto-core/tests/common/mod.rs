//! What the core test files drive: in-memory peers (an account, a device,
//! its credential, an MLS provider with in-memory storage, and the name key
//! of the group it is in) and the server's side of a group
//! (`sotto_rules::public`: the checks the real server makes on every commit
//! and proposal, with the state it would store).
#![allow(dead_code)] // each test file uses some of them

use std::cell::RefCell;

use openmls::prelude::KeyPackage;
use openmls_libcrux_crypto::{CryptoProvider, Provider};
use sotto_core::group::{self, Change, Renamed, StagedChange};
use sotto_core::mls::{self, Processed};
use sotto_core::names::NameKey;
use sotto_core::{AccountKey, CoreError, CredentialIdentity, DeviceKey, Suite};
use sotto_proto::{GroupId, Handle, SignedDeviceList};
use sotto_rules::public::{self, Accepted, CommitCheck, Held, Start};

pub(crate) struct Peer {
    pub(crate) account: AccountKey,
    pub(crate) device: DeviceKey,
    pub(crate) me: CredentialIdentity,
    pub(crate) provider: Provider,
    /// The group's name as this peer read it last, and its key.
    pub(crate) name: RefCell<Option<Renamed>>,
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
            name: RefCell::new(None),
        }
    }

    /// A new device of this peer's account (restored from a backup: the
    /// same account key, a device key of its own).
    pub(crate) fn new_device(&self) -> Self {
        let account = AccountKey::from_secret(&self.account.secret());
        let device = DeviceKey::generate();
        let me = CredentialIdentity {
            account: account.id(),
            device: device.id(),
            handle: self.me.handle.clone(),
        };
        Self {
            account,
            device,
            me,
            provider: Provider::new().expect("libcrux provider"),
            name: RefCell::new(self.name.borrow().clone()),
        }
    }

    /// A verified KeyPackage of this peer in `suite`.
    pub(crate) fn key_package_in(&self, suite: Suite) -> KeyPackage {
        let kp = mls::key_packages(&self.provider, &self.me, &self.device, suite, 1).unwrap();
        mls::verify_key_package(&self.provider, &kp[0], self.me.account, self.me.device)
            .unwrap()
            .0
    }

    pub(crate) fn key_package(&self) -> KeyPackage {
        self.key_package_in(Suite::PostQuantum)
    }

    /// The account's signed device list (this device only).
    pub(crate) fn list(&self) -> SignedDeviceList {
        self.account.sign_device_list(1, vec![self.me.device])
    }

    /// The name this peer reads for its group.
    pub(crate) fn group_name(&self) -> Option<String> {
        self.name.borrow().as_ref().and_then(|r| r.name.clone())
    }

    fn note(&self, renamed: Option<Renamed>) {
        if let Some(r) = renamed {
            *self.name.borrow_mut() = Some(r);
        }
    }

    /// Stages a commit of `change`.
    pub(crate) fn commit(&self, g: GroupId, change: Change) -> StagedChange {
        self.try_commit(g, change).unwrap().unwrap()
    }

    /// Stages a commit of `change`, if it can be built on this peer's view.
    pub(crate) fn try_commit(
        &self,
        g: GroupId,
        change: Change,
    ) -> Result<Option<StagedChange>, CoreError> {
        let key = self.name.borrow().as_ref().map(|r| r.key.clone());
        group::stage(&self.provider, &self.device, g, change, key.as_ref())
    }

    /// Merges this peer's staged commit (the server accepted it).
    pub(crate) fn merge(&self, g: GroupId) {
        let renamed = mls::merge_pending(&self.provider, g).unwrap();
        self.note(renamed);
    }

    /// Processes a commit, proposal or message of `g`.
    pub(crate) fn apply(&self, g: GroupId, msg: &[u8]) -> Result<Processed, CoreError> {
        let p = mls::process(&self.provider, g, msg)?;
        if let Processed::Commit { renamed, .. } = &p {
            self.note(renamed.clone());
        }
        Ok(p)
    }

    /// Joins from a Welcome bundle.
    pub(crate) fn join(&self, welcome: &[u8]) -> mls::Joined {
        let joined = mls::join(&self.provider, welcome).unwrap();
        *self.name.borrow_mut() = joined.name.clone();
        joined
    }

    /// Encrypts `text` for `g`.
    pub(crate) fn send(&self, g: GroupId, text: &str) -> Vec<u8> {
        mls::encrypt(&self.provider, &self.device, g, text.as_bytes()).unwrap()
    }

    /// Decrypts an application message of `g`.
    pub(crate) fn read(&self, g: GroupId, ct: &[u8]) -> Result<String, CoreError> {
        match mls::process(&self.provider, g, ct)? {
            Processed::Application { plaintext, .. } => Ok(String::from_utf8(plaintext).unwrap()),
            other => panic!("expected an application message, got {other:?}"),
        }
    }
}

/// The server's view of one group: what `sotto_rules::public` accepted.
pub(crate) struct Server {
    group: GroupId,
    crypto: CryptoProvider,
    state: Option<Vec<u8>>,
    proposals: Vec<Vec<u8>>,
    group_info: Vec<u8>,
    pub(crate) epoch: u64,
}

impl Server {
    pub(crate) fn new(group: GroupId) -> Self {
        Self {
            group,
            crypto: CryptoProvider::new().unwrap(),
            state: None,
            proposals: Vec::new(),
            group_info: Vec::new(),
            epoch: 0,
        }
    }

    /// Checks and applies a group's creation by `by`.
    pub(crate) fn create(&mut self, by: &Peer, c: &mls::Created) -> Result<Accepted, CoreError> {
        assert!(self.state.is_none());
        self.take(by, Some(&c.base), &c.staged)
    }

    /// Checks and applies a commit by `by`.
    pub(crate) fn commit(&mut self, by: &Peer, s: &StagedChange) -> Result<Accepted, CoreError> {
        self.take(by, None, s)
    }

    fn take(
        &mut self,
        by: &Peer,
        base: Option<&[u8]>,
        s: &StagedChange,
    ) -> Result<Accepted, CoreError> {
        if s.epoch != self.epoch {
            return Err(CoreError::Rejected(format!("stale epoch {}", s.epoch)));
        }
        let held = self.state.as_deref().map(|state| Held {
            state,
            proposals: &self.proposals,
        });
        let start = match (held, base) {
            (Some(h), None) => Start::Held(h),
            (None, Some(b)) => Start::Base(b),
            _ => return Err(CoreError::Rejected("a group is created once".into())),
        };
        let a = public::check_commit(
            &self.crypto,
            &CommitCheck {
                group: &self.group,
                sender: by.me.device,
                start,
                commit: &s.commit,
                group_info: &s.group_info,
                has_welcome: s.welcome.is_some(),
            },
        )?;
        self.state = Some(a.state.clone());
        self.group_info = s.group_info.clone();
        self.proposals.clear();
        self.epoch = a.epoch;
        Ok(a)
    }

    /// Checks and queues a proposal by `by`.
    pub(crate) fn propose(&mut self, by: &Peer, p: &[u8]) -> Result<(), CoreError> {
        let held = Held {
            state: self.state.as_deref().unwrap(),
            proposals: &self.proposals,
        };
        public::check_proposal(&self.crypto, &self.group, by.me.device, held, p)?;
        self.proposals.push(p.to_vec());
        Ok(())
    }

    /// `by` rejoins from what the server hands out (GroupInfo and tree);
    /// the server checks the external commit like any other.
    pub(crate) fn rejoin(&mut self, by: &Peer) -> Result<(Accepted, Vec<u8>), CoreError> {
        self.rejoin_vouched(by, None)
    }

    /// `by` joins by external commit, carrying `list` (its account's
    /// signed device list) as a device restored from a backup does.
    pub(crate) fn rejoin_vouched(
        &mut self,
        by: &Peer,
        list: Option<&SignedDeviceList>,
    ) -> Result<(Accepted, Vec<u8>), CoreError> {
        let tree = public::ratchet_tree(&self.group, self.state.as_deref().unwrap()).unwrap();
        let r = mls::rejoin(
            &by.provider,
            &by.me,
            &by.device,
            list,
            self.group,
            &self.group_info,
            &tree,
        )?;
        let staged = StagedChange {
            epoch: r.epoch,
            commit: r.commit,
            group_info: r.group_info,
            welcome: None,
            added: Vec::new(),
        };
        let a = self.commit(by, &staged)?;
        Ok((a, staged.commit))
    }

    /// The member devices the server routes to.
    pub(crate) fn members(&self) -> Vec<sotto_proto::DeviceId> {
        public::members(&self.group, self.state.as_deref().unwrap()).unwrap()
    }
}

/// `by` creates `g` with `others` (a group named `name`, or a one-to-one
/// conversation), the server accepts it and the others join.
pub(crate) fn create(
    server: &mut Server,
    g: GroupId,
    by: &Peer,
    others: &[&Peer],
    kind: mls::NewConversation<'_>,
    suite: Suite,
) {
    let kps: Vec<KeyPackage> = others.iter().map(|p| p.key_package_in(suite)).collect();
    let lists = others.iter().map(|p| p.list()).collect();
    let created = mls::create_group(&by.provider, &by.me, &by.device, g, kps, lists, kind).unwrap();
    let accepted = server.create(by, &created).unwrap();
    assert_eq!(accepted.epoch, 1);
    assert!(accepted.recipients.is_empty());
    let welcome = created.staged.welcome.as_ref().unwrap();
    by.merge(g);
    for p in others {
        let joined = p.join(welcome);
        assert_eq!(joined.group_id, g);
    }
}

/// A name key no group uses (for tests that need one to be wrong).
pub(crate) fn stray_key() -> NameKey {
    NameKey::from_bytes([9; 32])
}
