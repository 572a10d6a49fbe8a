//! Group conversations among in-memory peers: admins, adds and removals,
//! leaving, concurrent commits resolved by rebasing, and what removed and
//! new members can and cannot read.

use openmls::prelude::KeyPackage;
use sotto_core::group::{self, Change, GroupMeta};
use sotto_core::mls::{self, Processed};
use sotto_core::{CoreError, CredentialIdentity, DeviceKey, Suite};
use sotto_proto::GroupId;

mod common;
use common::Peer;

impl Peer {
    fn key_package(&self) -> KeyPackage {
        let kp = mls::key_packages(
            &self.provider,
            &self.me,
            &self.device,
            Suite::PostQuantum,
            1,
        )
        .unwrap();
        mls::verify_key_package(&self.provider, &kp[0], self.me.account, self.me.device)
            .unwrap()
            .0
    }

    /// A verified KeyPackage of `owner`, as another peer sees it.
    fn key_package_of(&self, owner: &Peer) -> KeyPackage {
        let kp = mls::key_packages(
            &owner.provider,
            &owner.me,
            &owner.device,
            Suite::PostQuantum,
            1,
        )
        .unwrap();
        mls::verify_key_package(&self.provider, &kp[0], owner.me.account, owner.me.device)
            .unwrap()
            .0
    }

    fn list(&self) -> sotto_proto::SignedDeviceList {
        self.account.sign_device_list(1, vec![self.me.device])
    }

    fn send(&self, g: GroupId, text: &str) -> Vec<u8> {
        mls::encrypt(&self.provider, &self.device, g, text.as_bytes()).unwrap()
    }

    fn read(&self, g: GroupId, ct: &[u8]) -> Result<String, CoreError> {
        match mls::process(&self.provider, g, ct)? {
            Processed::Application { plaintext, .. } => Ok(String::from_utf8(plaintext).unwrap()),
            other => panic!("expected an application message, got {other:?}"),
        }
    }

    fn apply(&self, g: GroupId, commit: &[u8]) -> Result<Processed, CoreError> {
        mls::process(&self.provider, g, commit)
    }

    fn commit(&self, g: GroupId, change: Change) -> group::StagedChange {
        group::stage(&self.provider, &self.device, g, change)
            .unwrap()
            .unwrap()
    }
}

const G: GroupId = GroupId([0x42; 32]);

fn meta(admins: &[&Peer]) -> GroupMeta {
    GroupMeta {
        name: "ops".into(),
        admins: admins.iter().map(|p| p.me.account).collect(),
    }
}

/// alice creates "ops" with bob and carol; `admins` administer it.
fn ops(alice: &Peer, others: &[&Peer], admins: &[&Peer]) {
    let kps: Vec<KeyPackage> = others.iter().map(|p| p.key_package()).collect();
    let created = mls::create_group(
        &alice.provider,
        &alice.me,
        &alice.device,
        G,
        &kps,
        Some(&meta(admins)),
    )
    .unwrap();
    mls::merge_pending(&alice.provider, G).unwrap();
    for p in others {
        mls::join(&p.provider, &created.welcome).unwrap();
    }
}

fn converged(peers: &[&Peer]) {
    let auth: Vec<Vec<u8>> = peers
        .iter()
        .map(|p| group::epoch_authenticator(&p.provider, G).unwrap())
        .collect();
    assert!(
        auth.windows(2).all(|w| w[0] == w[1]),
        "members disagree on the epoch"
    );
}

#[test]
fn three_members_talk_and_agree_on_name_and_admins() {
    let (alice, bob, carol) = (Peer::new("alice"), Peer::new("bob"), Peer::new("carol"));
    ops(&alice, &[&bob, &carol], &[&alice]);
    converged(&[&alice, &bob, &carol]);
    let m = group::meta(&bob.provider, G).unwrap().unwrap();
    assert_eq!(m.name, "ops");
    assert!(m.is_admin(&alice.me.account) && !m.is_admin(&bob.me.account));
    let ct = bob.send(G, "hi all");
    assert_eq!(alice.read(G, &ct).unwrap(), "hi all");
    assert_eq!(carol.read(G, &ct).unwrap(), "hi all");
    assert_eq!(mls::members(&carol.provider, G).unwrap().len(), 3);
}

#[test]
fn only_admins_add_or_remove_and_every_client_enforces_it() {
    let (alice, bob, carol, dave) = (
        Peer::new("alice"),
        Peer::new("bob"),
        Peer::new("carol"),
        Peer::new("dave"),
    );
    ops(&alice, &[&bob, &carol], &[&alice]);
    // bob (not an admin) commits an add; alice and carol refuse it.
    let add = bob.commit(
        G,
        Change {
            adds: vec![dave.key_package()],
            ..Change::default()
        },
    );
    for p in [&alice, &carol] {
        let err = p.apply(G, &add.commit).unwrap_err();
        assert!(err.to_string().contains("only admins add members"), "{err}");
    }
    // ... and a removal of carol.
    group::clear_pending(&bob.provider, G).unwrap();
    let rm = bob.commit(
        G,
        Change {
            removes: vec![carol.me.device],
            ..Change::default()
        },
    );
    let err = alice.apply(G, &rm.commit).unwrap_err();
    assert!(
        err.to_string().contains("only admins remove members"),
        "{err}"
    );
    // ... and a rename.
    group::clear_pending(&bob.provider, G).unwrap();
    let mut m = meta(&[&alice, &bob]);
    m.name = "mine".into();
    let rename = bob.commit(
        G,
        Change {
            meta: Some(m),
            ..Change::default()
        },
    );
    assert!(alice.apply(G, &rename.commit).is_err());
    // A self-update is anyone's right.
    group::clear_pending(&bob.provider, G).unwrap();
    let upd = bob.commit(
        G,
        Change {
            self_update: true,
            ..Change::default()
        },
    );
    mls::merge_pending(&bob.provider, G).unwrap();
    for p in [&alice, &carol] {
        assert!(matches!(
            p.apply(G, &upd.commit).unwrap(),
            Processed::Commit { .. }
        ));
    }
    converged(&[&alice, &bob, &carol]);
}

#[test]
fn removed_member_reads_nothing_after_and_new_member_nothing_before() {
    let (alice, bob, carol, dave) = (
        Peer::new("alice"),
        Peer::new("bob"),
        Peer::new("carol"),
        Peer::new("dave"),
    );
    ops(&alice, &[&bob, &carol], &[&alice]);
    let before_dave = alice.send(G, "before dave");
    assert_eq!(bob.read(G, &before_dave).unwrap(), "before dave");
    assert_eq!(carol.read(G, &before_dave).unwrap(), "before dave");

    let c = alice.commit(
        G,
        Change {
            adds: vec![dave.key_package()],
            removes: vec![bob.me.device],
            device_lists: vec![dave.list()],
            ..Change::default()
        },
    );
    assert_eq!(c.welcome_recipients, vec![dave.me.device]);
    assert!(c.members.contains(&dave.me.device) && !c.members.contains(&bob.me.device));
    mls::merge_pending(&alice.provider, G).unwrap();
    mls::join(&dave.provider, c.welcome.as_ref().unwrap()).unwrap();
    assert!(matches!(
        carol.apply(G, &c.commit).unwrap(),
        Processed::Commit {
            removed_me: false,
            ..
        }
    ));
    assert!(matches!(
        bob.apply(G, &c.commit).unwrap(),
        Processed::Commit {
            removed_me: true,
            ..
        }
    ));
    assert!(!group::is_active(&bob.provider, G).unwrap());

    // Forced delivery of a message after bob's removal: he cannot read it.
    let after = alice.send(G, "after bob");
    assert!(bob.read(G, &after).is_err());
    assert_eq!(carol.read(G, &after).unwrap(), "after bob");
    assert_eq!(dave.read(G, &after).unwrap(), "after bob");
    // Dave cannot read what was sent before he joined.
    assert!(dave.read(G, &before_dave).is_err());
    converged(&[&alice, &carol, &dave]);
}

#[test]
fn a_member_leaves_by_proposal_and_an_admin_commits_it() {
    let (alice, bob, carol) = (Peer::new("alice"), Peer::new("bob"), Peer::new("carol"));
    ops(&alice, &[&bob, &carol], &[&alice]);
    let leave = group::propose_leave(&carol.provider, &carol.device, G).unwrap();
    for p in [&alice, &bob] {
        match p.apply(G, &leave).unwrap() {
            Processed::Proposal { leaving: Some(who) } => assert_eq!(who.account, carol.me.account),
            other => panic!("{other:?}"),
        }
    }
    let c = alice.commit(G, Change::default());
    assert_eq!(c.members.len(), 2);
    mls::merge_pending(&alice.provider, G).unwrap();
    assert!(matches!(
        bob.apply(G, &c.commit).unwrap(),
        Processed::Commit { .. }
    ));
    assert!(matches!(
        carol.apply(G, &c.commit).unwrap(),
        Processed::Commit {
            removed_me: true,
            ..
        }
    ));
    converged(&[&alice, &bob]);
    // Nothing left to commit.
    assert!(
        group::stage(&alice.provider, &alice.device, G, Change::default())
            .unwrap()
            .is_none()
    );
}

#[test]
fn concurrent_adds_by_two_admins_both_land_after_a_rebase() {
    let (alice, bob, carol) = (Peer::new("alice"), Peer::new("bob"), Peer::new("carol"));
    let (dave, erin) = (Peer::new("dave"), Peer::new("erin"));
    ops(&alice, &[&bob, &carol], &[&alice, &bob]);
    let dave_kp = dave.key_package();
    let erin_kp = erin.key_package();
    let a = alice.commit(
        G,
        Change {
            adds: vec![dave_kp],
            device_lists: vec![dave.list()],
            ..Change::default()
        },
    );
    let b = bob.commit(
        G,
        Change {
            adds: vec![erin_kp.clone()],
            device_lists: vec![erin.list()],
            ..Change::default()
        },
    );
    assert_eq!(a.epoch, b.epoch);
    // The server takes alice's; bob's is stale: he drops it, applies
    // alice's, and builds his again on the new epoch.
    mls::merge_pending(&alice.provider, G).unwrap();
    mls::join(&dave.provider, a.welcome.as_ref().unwrap()).unwrap();
    group::clear_pending(&bob.provider, G).unwrap();
    bob.apply(G, &a.commit).unwrap();
    carol.apply(G, &a.commit).unwrap();
    let b2 = bob.commit(
        G,
        Change {
            adds: vec![erin_kp],
            device_lists: vec![erin.list()],
            ..Change::default()
        },
    );
    assert_eq!(b2.epoch, a.epoch + 1);
    mls::merge_pending(&bob.provider, G).unwrap();
    mls::join(&erin.provider, b2.welcome.as_ref().unwrap()).unwrap();
    for p in [&alice, &carol, &dave] {
        p.apply(G, &b2.commit).unwrap();
    }
    converged(&[&alice, &bob, &carol, &dave, &erin]);
    assert_eq!(mls::members(&erin.provider, G).unwrap().len(), 5);
    let ct = erin.send(G, "hello from erin");
    for p in [&alice, &bob, &carol, &dave] {
        assert_eq!(p.read(G, &ct).unwrap(), "hello from erin");
    }
}

#[test]
fn a_device_no_signed_list_vouches_for_is_refused() {
    let (alice, bob, dave) = (Peer::new("alice"), Peer::new("bob"), Peer::new("dave"));
    ops(&alice, &[&bob], &[&alice]);
    // Without any list.
    let c = alice.commit(
        G,
        Change {
            adds: vec![dave.key_package()],
            ..Change::default()
        },
    );
    assert!(matches!(
        bob.apply(G, &c.commit),
        Err(CoreError::GhostDevice)
    ));
    group::clear_pending(&alice.provider, G).unwrap();
    // With dave's list, but one that does not name this device (a ghost the
    // server slipped in under dave's account).
    let ghost = DeviceKey::generate();
    let ghost_me = CredentialIdentity {
        device: ghost.id(),
        ..dave.me.clone()
    };
    let kp = mls::key_packages(&dave.provider, &ghost_me, &ghost, Suite::PostQuantum, 1).unwrap();
    let (kp, _) =
        mls::verify_key_package(&alice.provider, &kp[0], dave.me.account, ghost.id()).unwrap();
    let c = alice.commit(
        G,
        Change {
            adds: vec![kp],
            device_lists: vec![dave.list()],
            ..Change::default()
        },
    );
    assert!(matches!(
        bob.apply(G, &c.commit),
        Err(CoreError::GhostDevice)
    ));
    // A forged list (signed by another key) does not help.
    group::clear_pending(&alice.provider, G).unwrap();
    let mut forged = dave.list();
    forged.devices.push(ghost.id());
    let kp2 = mls::key_packages(&dave.provider, &ghost_me, &ghost, Suite::PostQuantum, 1).unwrap();
    let (kp2, _) =
        mls::verify_key_package(&alice.provider, &kp2[0], dave.me.account, ghost.id()).unwrap();
    let c = alice.commit(
        G,
        Change {
            adds: vec![kp2],
            device_lists: vec![forged],
            ..Change::default()
        },
    );
    assert!(matches!(
        bob.apply(G, &c.commit),
        Err(CoreError::GhostDevice)
    ));
}

#[test]
fn the_disappearing_timer_is_group_state_set_by_admins() {
    let (alice, bob) = (Peer::new("alice"), Peer::new("bob"));
    ops(&alice, &[&bob], &[&alice]);
    assert_eq!(group::timer(&bob.provider, G).unwrap(), None);
    let c = bob.commit(
        G,
        Change {
            timer: Some(Some(60)),
            ..Change::default()
        },
    );
    assert!(
        alice
            .apply(G, &c.commit)
            .unwrap_err()
            .to_string()
            .contains("only admins")
    );
    group::clear_pending(&bob.provider, G).unwrap();
    let c = alice.commit(
        G,
        Change {
            timer: Some(Some(30)),
            ..Change::default()
        },
    );
    mls::merge_pending(&alice.provider, G).unwrap();
    bob.apply(G, &c.commit).unwrap();
    for p in [&alice, &bob] {
        assert_eq!(group::timer(&p.provider, G).unwrap(), Some(30));
        assert_eq!(group::meta(&p.provider, G).unwrap().unwrap().name, "ops");
    }
    let c = alice.commit(
        G,
        Change {
            timer: Some(None),
            ..Change::default()
        },
    );
    mls::merge_pending(&alice.provider, G).unwrap();
    bob.apply(G, &c.commit).unwrap();
    assert_eq!(group::timer(&bob.provider, G).unwrap(), None);
}

#[test]
fn any_member_re_adds_a_lost_device_but_cannot_swap_in_someone_else() {
    let (alice, bob, carol, dave) = (
        Peer::new("alice"),
        Peer::new("bob"),
        Peer::new("carol"),
        Peer::new("dave"),
    );
    ops(&alice, &[&bob, &carol], &[&alice]);
    // bob (not an admin) replaces carol's leaf by dave: that is an add of a
    // new member, and refused.
    let swap = bob.commit(
        G,
        Change {
            removes: vec![carol.me.device],
            adds: vec![dave.key_package()],
            device_lists: vec![dave.list()],
            ..Change::default()
        },
    );
    let err = alice.apply(G, &swap.commit).unwrap_err();
    assert!(err.to_string().contains("only admins"), "{err}");
    group::clear_pending(&bob.provider, G).unwrap();

    // dave makes a group of his own under the same id with a fresh
    // KeyPackage of carol's: a Welcome into a group she holds is refused
    // when she did not ask to be re-added, and when it would take her back
    // to an epoch she is past.
    for asked in [false, true] {
        let fake = dave.key_package_of(&carol);
        let _ = mls::discard(&dave.provider, G);
        let created =
            mls::create_group(&dave.provider, &dave.me, &dave.device, G, &[fake], None).unwrap();
        let err = mls::join_replacing(&carol.provider, &created.welcome, |_| asked).unwrap_err();
        assert!(
            err.to_string()
                .contains(if asked { "past" } else { "already has" }),
            "{err}"
        );
    }

    // bob re-adds carol (her device lost its state): her leaf goes, a
    // fresh KeyPackage of the same device comes. Everyone accepts it.
    let readd = bob.commit(
        G,
        Change {
            removes: vec![carol.me.device],
            adds: vec![carol.key_package()],
            device_lists: vec![carol.list()],
            ..Change::default()
        },
    );
    mls::merge_pending(&bob.provider, G).unwrap();
    match alice.apply(G, &readd.commit).unwrap() {
        Processed::Commit { readded, .. } => assert_eq!(readded, [carol.me.device]),
        other => panic!("expected a commit, got {other:?}"),
    }
    let (joined, replaced) =
        mls::join_replacing(&carol.provider, &readd.welcome.unwrap(), |g| g == G).unwrap();
    assert!(replaced);
    assert_eq!(joined.members.len(), 3);
    converged(&[&alice, &bob, &carol]);
    let ct = carol.send(G, "back");
    assert_eq!(alice.read(G, &ct).unwrap(), "back");
    assert_eq!(bob.read(G, &ct).unwrap(), "back");
}

#[test]
fn a_message_of_a_later_epoch_says_the_state_is_behind() {
    let (alice, bob) = (Peer::new("alice"), Peer::new("bob"));
    ops(&alice, &[&bob], &[&alice]);
    let upd = alice.commit(
        G,
        Change {
            self_update: true,
            ..Change::default()
        },
    );
    mls::merge_pending(&alice.provider, G).unwrap();
    // bob misses the commit: the next message is of an epoch he has not reached.
    let _ = upd;
    let ct = alice.send(G, "later");
    assert!(matches!(
        bob.read(G, &ct),
        Err(CoreError::Behind {
            local: 1,
            message: 2
        })
    ));
}
