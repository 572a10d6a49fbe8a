//! Group conversations among in-memory peers and the server's checks of
//! them: admins, adds and removals, leaving, concurrent commits resolved by
//! rebasing, what removed and new members can and cannot read, names the
//! server cannot read, and commits the server refuses exactly when every
//! member would.

use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::{LeafNodeParameters, MlsGroup, OpenMlsProvider as _};
use sotto_core::group::{self, Change};
use sotto_core::mls::{self, NewConversation, Processed};
use sotto_core::{CoreError, CredentialIdentity, DeviceKey, Suite};
use sotto_proto::GroupId;

mod common;
use common::{Peer, Server, create};

const G: GroupId = GroupId([0x42; 32]);
const NAME: &str = "night-shift ops";

/// alice creates the group with `others`; `admins` administer it (alice
/// promotes the others among them).
fn ops(others: &[&Peer], alice: &Peer, admins: &[&Peer]) -> Server {
    let mut server = Server::new(G);
    create(
        &mut server,
        G,
        alice,
        others,
        NewConversation::Group(NAME),
        Suite::PostQuantum,
    );
    if admins.iter().any(|p| p.me.account != alice.me.account) {
        let c = alice.commit(
            G,
            Change {
                admins: Some(admins.iter().map(|p| p.me.account).collect()),
                ..Change::default()
            },
        );
        server.commit(alice, &c).unwrap();
        alice.merge(G);
        for p in others {
            p.apply(G, &c.commit).unwrap();
        }
    }
    server
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

fn update() -> Change {
    Change {
        self_update: true,
        ..Change::default()
    }
}

/// Both the server and every member refuse `c`, saying `why`.
#[track_caller]
fn refused_everywhere(
    server: &mut Server,
    by: &Peer,
    c: &group::StagedChange,
    others: &[&Peer],
    why: &str,
) {
    let err = server.commit(by, c).unwrap_err();
    assert!(err.to_string().contains(why), "server: {err}");
    for p in others {
        let err = p.apply(G, &c.commit).unwrap_err();
        assert!(err.to_string().contains(why), "{}: {err}", p.me.handle);
    }
    group::clear_pending(&by.provider, G).unwrap();
}

#[test]
fn three_members_talk_and_agree_on_name_and_admins() {
    let (alice, bob, carol) = (Peer::new("alice"), Peer::new("bob"), Peer::new("carol"));
    let server = ops(&[&bob, &carol], &alice, &[&alice]);
    converged(&[&alice, &bob, &carol]);
    for p in [&alice, &bob, &carol] {
        assert_eq!(p.group_name().as_deref(), Some(NAME), "{}", p.me.handle);
    }
    let m = group::meta(&bob.provider, G).unwrap().unwrap();
    assert!(m.is_admin(&alice.me.account) && !m.is_admin(&bob.me.account));
    let ct = bob.send(G, "hi all");
    assert_eq!(alice.read(G, &ct).unwrap(), "hi all");
    assert_eq!(carol.read(G, &ct).unwrap(), "hi all");
    assert_eq!(mls::members(&carol.provider, G).unwrap().len(), 3);
    assert_eq!(
        server.members(),
        [alice.me.device, bob.me.device, carol.me.device]
    );
}

#[test]
fn the_server_reads_the_admins_but_not_the_name() {
    let (alice, bob, carol, dave) = (
        Peer::new("alice"),
        Peer::new("bob"),
        Peer::new("carol"),
        Peer::new("dave"),
    );
    let mut server = ops(&[&bob, &carol], &alice, &[&alice]);
    let old_key = bob.name.borrow().as_ref().unwrap().key.clone();

    // alice removes bob, then renames the group: the new name is sealed
    // under a key of an epoch bob never saw.
    let rm = alice.commit(
        G,
        Change {
            removes: vec![bob.me.device],
            ..Change::default()
        },
    );
    server.commit(&alice, &rm).unwrap();
    alice.merge(G);
    carol.apply(G, &rm.commit).unwrap();
    let rename = alice.commit(
        G,
        Change {
            name: Some("after bob".into()),
            ..Change::default()
        },
    );
    let accepted = server.commit(&alice, &rename).unwrap();
    alice.merge(G);
    carol.apply(G, &rename.commit).unwrap();
    assert_eq!(carol.group_name().as_deref(), Some("after bob"));
    assert_eq!(alice.group_name().as_deref(), Some("after bob"));
    let sealed = group::meta(&carol.provider, G).unwrap().unwrap().name;
    assert_eq!(
        sotto_core::names::open_name(&sealed, &old_key, &G),
        None,
        "a removed member reads the new name"
    );

    // A device added later reads the current name from its Welcome.
    let add = alice.commit(
        G,
        Change {
            adds: vec![dave.key_package()],
            device_lists: vec![dave.list()],
            ..Change::default()
        },
    );
    server.commit(&alice, &add).unwrap();
    alice.merge(G);
    carol.apply(G, &add.commit).unwrap();
    dave.join(add.welcome.as_ref().unwrap());
    assert_eq!(dave.group_name().as_deref(), Some("after bob"));
    converged(&[&alice, &carol, &dave]);

    // Everything the server saw and keeps: state, commits, GroupInfos.
    let seen = [
        accepted.state.as_slice(),
        &rename.commit,
        &rename.group_info,
        &add.commit,
        &add.group_info,
    ];
    for bytes in seen {
        for name in ["after bob", NAME] {
            assert!(
                !bytes.windows(name.len()).any(|w| w == name.as_bytes()),
                "{name:?} in what the server sees"
            );
        }
    }
    let admins = group::meta(&dave.provider, G).unwrap().unwrap().admins;
    assert_eq!(admins, [alice.me.account]);
}

#[test]
fn only_admins_add_or_remove_and_the_server_refuses_what_every_client_refuses() {
    let (alice, bob, carol, dave) = (
        Peer::new("alice"),
        Peer::new("bob"),
        Peer::new("carol"),
        Peer::new("dave"),
    );
    let mut server = ops(&[&bob, &carol], &alice, &[&alice]);
    // bob (not an admin) commits an add: the server refuses it, and so
    // would alice and carol.
    let add = bob.commit(
        G,
        Change {
            adds: vec![dave.key_package()],
            device_lists: vec![dave.list()],
            ..Change::default()
        },
    );
    refused_everywhere(
        &mut server,
        &bob,
        &add,
        &[&alice, &carol],
        "only admins add members",
    );
    let rm = bob.commit(
        G,
        Change {
            removes: vec![carol.me.device],
            ..Change::default()
        },
    );
    refused_everywhere(
        &mut server,
        &bob,
        &rm,
        &[&alice],
        "only admins remove members",
    );
    let rename = bob.commit(
        G,
        Change {
            name: Some("mine".into()),
            ..Change::default()
        },
    );
    refused_everywhere(
        &mut server,
        &bob,
        &rename,
        &[&alice],
        "only admins change the group",
    );
    let coup = bob.commit(
        G,
        Change {
            admins: Some(vec![bob.me.account]),
            ..Change::default()
        },
    );
    refused_everywhere(
        &mut server,
        &bob,
        &coup,
        &[&alice],
        "only admins change the group",
    );
    let none = alice.commit(
        G,
        Change {
            admins: Some(Vec::new()),
            ..Change::default()
        },
    );
    refused_everywhere(
        &mut server,
        &alice,
        &none,
        &[&bob],
        "a group needs an admin",
    );
    // Nothing of that moved the server: a self-update is anyone's right,
    // and lands on the epoch everyone is at.
    let upd = bob.commit(G, update());
    server.commit(&bob, &upd).unwrap();
    bob.merge(G);
    for p in [&alice, &carol] {
        assert!(matches!(
            p.apply(G, &upd.commit).unwrap(),
            Processed::Commit { .. }
        ));
    }
    converged(&[&alice, &bob, &carol]);
    assert_eq!(server.epoch, mls::epoch(&alice.provider, G).unwrap());
}

#[test]
fn nobody_turns_into_someone_else_in_a_self_update() {
    let (alice, bob, carol) = (Peer::new("alice"), Peer::new("bob"), Peer::new("carol"));
    let mut server = ops(&[&bob, &carol], &alice, &[&alice]);
    // bob updates his leaf with a credential naming carol's account and
    // handle (his own device key, as openmls requires).
    let mut g = MlsGroup::load(
        bob.provider.storage(),
        &openmls::prelude::GroupId::from_slice(&G.0),
    )
    .unwrap()
    .unwrap();
    let claimed = CredentialIdentity {
        device: bob.me.device,
        ..carol.me.clone()
    };
    let bundle = g
        .commit_builder()
        .force_self_update(true)
        .leaf_node_parameters(
            LeafNodeParameters::builder()
                .with_credential_with_key(mls::credential(&claimed))
                .build(),
        )
        .load_psks(bob.provider.storage())
        .unwrap()
        .create_group_info(true)
        .use_ratchet_tree_extension(false)
        .build(
            bob.provider.rand(),
            bob.provider.crypto(),
            &bob.device,
            |_| true,
        )
        .unwrap()
        .stage_commit(&bob.provider)
        .unwrap();
    let (commit, _, info) = bundle.into_contents();
    let forged = group::StagedChange {
        epoch: server.epoch,
        commit: commit.tls_serialize_detached().unwrap(),
        group_info: openmls::prelude::MlsMessageOut::from(info.unwrap())
            .tls_serialize_detached()
            .unwrap(),
        welcome: None,
        added: Vec::new(),
    };
    assert!(matches!(
        server.commit(&bob, &forged),
        Err(CoreError::ForgedCredential)
    ));
    for p in [&alice, &carol] {
        assert!(matches!(
            p.apply(G, &forged.commit),
            Err(CoreError::ForgedCredential)
        ));
    }
}

#[test]
fn the_server_refuses_garbage_other_devices_commits_and_mismatched_group_infos() {
    let (alice, bob) = (Peer::new("alice"), Peer::new("bob"));
    let mut server = ops(&[&bob], &alice, &[&alice]);
    let upd = bob.commit(G, update());
    let cases: Vec<(&str, group::StagedChange, &Peer)> = vec![
        (
            "malformed",
            group::StagedChange {
                commit: b"not mls".to_vec(),
                ..clone(&upd)
            },
            &bob,
        ),
        // bob's commit, sent in alice's name.
        ("signed by another device", clone(&upd), &alice),
        (
            "Welcome without devices",
            group::StagedChange {
                welcome: Some(b"w".to_vec()),
                ..clone(&upd)
            },
            &bob,
        ),
        (
            "not a group info",
            group::StagedChange {
                group_info: upd.commit.clone(),
                ..clone(&upd)
            },
            &bob,
        ),
    ];
    for (why, c, by) in cases {
        let err = server.commit(by, &c).unwrap_err();
        assert!(err.to_string().contains(why), "{why}: {err}");
    }
    // A GroupInfo of another state: alice's own self-update's, for bob's commit.
    let other = alice.commit(G, update());
    let mixed = group::StagedChange {
        group_info: other.group_info,
        ..clone(&upd)
    };
    let err = server.commit(&bob, &mixed).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    group::clear_pending(&alice.provider, G).unwrap();
    // The genuine commit still goes through after all that.
    server.commit(&bob, &upd).unwrap();
    bob.merge(G);
    alice.apply(G, &upd.commit).unwrap();
    converged(&[&alice, &bob]);
}

fn clone(c: &group::StagedChange) -> group::StagedChange {
    group::StagedChange {
        epoch: c.epoch,
        commit: c.commit.clone(),
        group_info: c.group_info.clone(),
        welcome: c.welcome.clone(),
        added: c.added.clone(),
    }
}

#[test]
fn removed_member_reads_nothing_after_and_new_member_nothing_before() {
    let (alice, bob, carol, dave) = (
        Peer::new("alice"),
        Peer::new("bob"),
        Peer::new("carol"),
        Peer::new("dave"),
    );
    let mut server = ops(&[&bob, &carol], &alice, &[&alice]);
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
    assert_eq!(c.added, vec![dave.me.device]);
    let accepted = server.commit(&alice, &c).unwrap();
    assert_eq!(accepted.added, vec![dave.me.device]);
    assert_eq!(accepted.recipients, vec![bob.me.device, carol.me.device]);
    assert!(
        accepted.members.contains(&dave.me.device) && !accepted.members.contains(&bob.me.device)
    );
    alice.merge(G);
    dave.join(c.welcome.as_ref().unwrap());
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
    let mut server = ops(&[&bob, &carol], &alice, &[&alice]);
    let leave = group::propose_leave(&carol.provider, &carol.device, G, false).unwrap();
    // Only carol may propose carol's leave.
    let err = server.propose(&bob, &leave).unwrap_err();
    assert!(err.to_string().contains("another device"), "{err}");
    server.propose(&carol, &leave).unwrap();
    for p in [&alice, &bob] {
        match p.apply(G, &leave).unwrap() {
            Processed::Proposal {
                leaving: Some(who),
                wiped: false,
            } => assert_eq!(who.account, carol.me.account),
            other => panic!("{other:?}"),
        }
    }
    // Any other proposal is refused: bob proposing carol's removal.
    let err = server.propose(&bob, b"not mls").unwrap_err();
    assert!(matches!(err, CoreError::Rejected(_)), "{err}");
    let c = bob.commit(G, Change::default());
    let accepted = server.commit(&bob, &c).unwrap();
    assert_eq!(accepted.members.len(), 2);
    bob.merge(G);
    assert!(matches!(
        alice.apply(G, &c.commit).unwrap(),
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
        group::stage(&alice.provider, &alice.device, G, Change::default(), None)
            .unwrap()
            .is_none()
    );
}

#[test]
fn concurrent_adds_by_two_admins_both_land_after_a_rebase() {
    let (alice, bob, carol) = (Peer::new("alice"), Peer::new("bob"), Peer::new("carol"));
    let (dave, erin) = (Peer::new("dave"), Peer::new("erin"));
    let mut server = ops(&[&bob, &carol], &alice, &[&alice, &bob]);
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
    server.commit(&alice, &a).unwrap();
    assert!(server.commit(&bob, &b).is_err());
    alice.merge(G);
    dave.join(a.welcome.as_ref().unwrap());
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
    server.commit(&bob, &b2).unwrap();
    bob.merge(G);
    erin.join(b2.welcome.as_ref().unwrap());
    assert_eq!(erin.group_name().as_deref(), Some(NAME));
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
    let mut server = ops(&[&bob], &alice, &[&alice]);
    // Without any list.
    let c = alice.commit(
        G,
        Change {
            adds: vec![dave.key_package()],
            ..Change::default()
        },
    );
    assert!(matches!(
        server.commit(&alice, &c),
        Err(CoreError::GhostDevice)
    ));
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
        server.commit(&alice, &c),
        Err(CoreError::GhostDevice)
    ));
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
        server.commit(&alice, &c),
        Err(CoreError::GhostDevice)
    ));
    assert!(matches!(
        bob.apply(G, &c.commit),
        Err(CoreError::GhostDevice)
    ));
}

#[test]
fn the_disappearing_timer_is_group_state_set_by_admins() {
    let (alice, bob) = (Peer::new("alice"), Peer::new("bob"));
    let mut server = ops(&[&bob], &alice, &[&alice]);
    assert_eq!(group::timer(&bob.provider, G).unwrap(), None);
    let c = bob.commit(
        G,
        Change {
            timer: Some(Some(60)),
            ..Change::default()
        },
    );
    refused_everywhere(&mut server, &bob, &c, &[&alice], "only admins");
    let c = alice.commit(
        G,
        Change {
            timer: Some(Some(30)),
            ..Change::default()
        },
    );
    server.commit(&alice, &c).unwrap();
    alice.merge(G);
    bob.apply(G, &c.commit).unwrap();
    for p in [&alice, &bob] {
        assert_eq!(group::timer(&p.provider, G).unwrap(), Some(30));
        assert_eq!(p.group_name().as_deref(), Some(NAME));
    }
    let c = alice.commit(
        G,
        Change {
            timer: Some(None),
            ..Change::default()
        },
    );
    server.commit(&alice, &c).unwrap();
    alice.merge(G);
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
    let mut server = ops(&[&bob, &carol], &alice, &[&alice]);
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
    refused_everywhere(&mut server, &bob, &swap, &[&alice], "only admins");

    // dave makes a group of his own under the same id with a fresh
    // KeyPackage of carol's: a Welcome into a group she holds is refused
    // when she did not ask to be re-added, and when it would take her back
    // to an epoch she is past.
    for asked in [false, true] {
        let fake = carol.key_package();
        let _ = mls::discard(&dave.provider, G);
        let created = mls::create_group(
            &dave.provider,
            &dave.me,
            &dave.device,
            G,
            vec![fake],
            vec![carol.list()],
            NewConversation::Group("fake"),
        )
        .unwrap();
        let err = mls::join_replacing(
            &carol.provider,
            created.staged.welcome.as_ref().unwrap(),
            |_| asked,
        )
        .unwrap_err();
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
    server.commit(&bob, &readd).unwrap();
    bob.merge(G);
    match alice.apply(G, &readd.commit).unwrap() {
        Processed::Commit { readded, .. } => assert_eq!(readded, [carol.me.device]),
        other => panic!("expected a commit, got {other:?}"),
    }
    let (joined, replaced) =
        mls::join_replacing(&carol.provider, readd.welcome.as_ref().unwrap(), |g| g == G).unwrap();
    assert!(replaced);
    assert_eq!(joined.members.len(), 3);
    assert_eq!(joined.name.and_then(|r| r.name).as_deref(), Some(NAME));
    converged(&[&alice, &bob, &carol]);
    let ct = carol.send(G, "back");
    assert_eq!(alice.read(G, &ct).unwrap(), "back");
    assert_eq!(bob.read(G, &ct).unwrap(), "back");
}

#[test]
fn a_message_of_a_later_epoch_says_the_state_is_behind() {
    let (alice, bob) = (Peer::new("alice"), Peer::new("bob"));
    let mut server = ops(&[&bob], &alice, &[&alice]);
    let upd = alice.commit(G, update());
    server.commit(&alice, &upd).unwrap();
    alice.merge(G);
    // bob misses the commit: the next message is of an epoch he has not reached.
    let ct = alice.send(G, "later");
    assert!(matches!(
        bob.read(G, &ct),
        Err(CoreError::Behind {
            local: 1,
            message: 2
        })
    ));
}

#[test]
fn a_device_that_lost_its_state_rejoins_by_itself() {
    let (alice, bob, carol) = (Peer::new("alice"), Peer::new("bob"), Peer::new("carol"));
    let mut server = ops(&[&bob, &carol], &alice, &[&alice]);
    // bob misses two commits (his profile was restored from a backup).
    for _ in 0..2 {
        let upd = alice.commit(G, update());
        server.commit(&alice, &upd).unwrap();
        alice.merge(G);
        carol.apply(G, &upd.commit).unwrap();
    }
    let ct = alice.send(G, "while bob was away");
    assert!(matches!(bob.read(G, &ct), Err(CoreError::Behind { .. })));
    // He rejoins from the server's GroupInfo and tree: his old leaf goes,
    // a fresh one comes, and the others see that he rejoined.
    let (accepted, commit) = server.rejoin(&bob).unwrap();
    assert_eq!(accepted.recipients, [alice.me.device, carol.me.device]);
    assert_eq!(accepted.members.len(), 3);
    for p in [&alice, &carol] {
        match p.apply(G, &commit).unwrap() {
            Processed::Commit { readded, .. } => assert_eq!(readded, [bob.me.device]),
            other => panic!("expected a commit, got {other:?}"),
        }
    }
    converged(&[&alice, &bob, &carol]);
    let back = bob.send(G, "back");
    assert_eq!(alice.read(G, &back).unwrap(), "back");
    assert_eq!(carol.read(G, &back).unwrap(), "back");
    // What was sent while he was out stays unreadable to him.
    assert!(bob.read(G, &ct).is_err());
}

#[test]
fn a_commit_the_server_accepted_and_every_member_refuses_is_recovered_by_rejoining() {
    let (alice, bob, carol) = (Peer::new("alice"), Peer::new("bob"), Peer::new("carol"));
    let mut server = ops(&[&bob, &carol], &alice, &[&alice]);
    // bob's commit with a broken membership tag: signed and consistent as
    // far as the server can see, refused by every member (only they hold
    // the key the tag is checked with). The server moves on; the members
    // cannot.
    let mut rogue = bob.commit(G, update());
    *rogue.commit.last_mut().unwrap() ^= 1;
    server.commit(&bob, &rogue).unwrap();
    bob.merge(G);
    for p in [&alice, &carol] {
        assert!(p.apply(G, &rogue.commit).is_err(), "{}", p.me.handle);
    }
    // Both rejoin, one after the other, from the state the server holds;
    // bob, who is at that state, follows.
    let (_, a) = server.rejoin(&alice).unwrap();
    bob.apply(G, &a).unwrap();
    let (_, c) = server.rejoin(&carol).unwrap();
    bob.apply(G, &c).unwrap();
    alice.apply(G, &c).unwrap();
    converged(&[&alice, &bob, &carol]);
    assert_eq!(server.epoch, mls::epoch(&carol.provider, G).unwrap());
    // And the group works again: an admin's commit lands everywhere.
    let upd = alice.commit(G, update());
    server.commit(&alice, &upd).unwrap();
    alice.merge(G);
    bob.apply(G, &upd.commit).unwrap();
    carol.apply(G, &upd.commit).unwrap();
    converged(&[&alice, &bob, &carol]);
    let ct = carol.send(G, "all good");
    assert_eq!(bob.read(G, &ct).unwrap(), "all good");
}

#[test]
fn nobody_joins_by_external_commit_who_is_not_a_member() {
    let (alice, bob, dave) = (Peer::new("alice"), Peer::new("bob"), Peer::new("dave"));
    let mut server = ops(&[&bob], &alice, &[&alice]);
    let upd = alice.commit(G, update());
    server.commit(&alice, &upd).unwrap();
    alice.merge(G);
    bob.apply(G, &upd.commit).unwrap();
    // dave got hold of the GroupInfo and the tree (as the server could
    // hand them to anyone): his external commit is refused.
    // Even with his own account's signed device list.
    for list in [None, Some(dave.list())] {
        let err = server.rejoin_vouched(&dave, list.as_ref()).unwrap_err();
        assert!(
            err.to_string()
                .contains("only a device of a member account joins by itself"),
            "{err}"
        );
    }
    converged(&[&alice, &bob]);
}

#[test]
fn a_device_restored_from_a_backup_joins_beside_its_account_on_its_signed_list() {
    let (alice, bob, carol) = (Peer::new("alice"), Peer::new("bob"), Peer::new("carol"));
    let mut server = ops(&[&bob, &carol], &alice, &[&alice]);
    // bob's new device has his account key (from the backup) and a device
    // key of its own; his old device is still in the group.
    let bob2 = bob.new_device();
    let both = bob
        .account
        .sign_device_list(2, vec![bob.me.device, bob2.me.device]);
    // Without a list naming it, nobody takes it: not the server, whatever
    // a list says that leaves it out.
    let err = server.rejoin_vouched(&bob2, None).unwrap_err();
    assert!(matches!(err, CoreError::GhostDevice), "{err}");
    let old = bob.account.sign_device_list(1, vec![bob.me.device]);
    let err = server.rejoin_vouched(&bob2, Some(&old)).unwrap_err();
    assert!(matches!(err, CoreError::GhostDevice), "{err}");
    // A list another key signed does not vouch either.
    let mut forged = both.clone();
    forged.signature = carol
        .account
        .sign_device_list(2, both.devices.clone())
        .signature;
    let err = server.rejoin_vouched(&bob2, Some(&forged)).unwrap_err();
    assert!(matches!(err, CoreError::GhostDevice), "{err}");
    // With its account's signed list it joins, beside bob's old device.
    let (accepted, commit) = server.rejoin_vouched(&bob2, Some(&both)).unwrap();
    assert_eq!(accepted.members.len(), 4);
    assert_eq!(
        accepted.recipients,
        [alice.me.device, bob.me.device, carol.me.device]
    );
    for p in [&alice, &bob, &carol] {
        match p.apply(G, &commit).unwrap() {
            Processed::Commit {
                readded,
                device_lists,
                ..
            } => {
                assert!(readded.is_empty());
                assert_eq!(device_lists, std::slice::from_ref(&both));
            }
            other => panic!("expected a commit, got {other:?}"),
        }
    }
    converged(&[&alice, &bob, &bob2, &carol]);
    let hello = bob2.send(G, "restored");
    assert_eq!(alice.read(G, &hello).unwrap(), "restored");
    let back = carol.send(G, "welcome back");
    assert_eq!(bob2.read(G, &back).unwrap(), "welcome back");
}

/// A device that obeys a wipe order says so in its leave's authenticated
/// data: the members learn it was wiped, not that it left; the server
/// takes it like any leave.
#[test]
fn a_wiped_device_leaves_saying_it_was_wiped() {
    let (alice, bob, carol) = (Peer::new("alice"), Peer::new("bob"), Peer::new("carol"));
    let mut server = ops(&[&bob, &carol], &alice, &[&alice]);
    let leave = group::propose_leave(&carol.provider, &carol.device, G, true).unwrap();
    server.propose(&carol, &leave).unwrap();
    for p in [&alice, &bob] {
        match p.apply(G, &leave).unwrap() {
            Processed::Proposal {
                leaving: Some(who),
                wiped: true,
            } => assert_eq!(who, carol.me),
            other => panic!("{other:?}"),
        }
    }
    // Committed like any leave.
    let c = bob.commit(G, Change::default());
    assert_eq!(server.commit(&bob, &c).unwrap().members.len(), 2);
}

/// Application messages are padded to size buckets: every message whose
/// content (with its framing, signature and tag) fits 256 bytes has one
/// ciphertext length, the next ones 512, 1 KiB, 2 KiB..., each plus the
/// same header (its length prefix aside); the receiver reads them as sent.
#[test]
fn application_messages_are_padded_to_size_buckets() {
    let (alice, bob) = (Peer::new("alice"), Peer::new("bob"));
    let _server = ops(&[&bob], &alice, &[&alice]);
    let mut sized = |n: usize| {
        let text = "x".repeat(n);
        let ct = alice.send(G, &text);
        assert_eq!(bob.read(G, &ct).unwrap(), text);
        ct.len()
    };
    let first: Vec<usize> = [0, 1, 10, 80, 150].into_iter().map(&mut sized).collect();
    assert!(first.iter().all(|l| *l == first[0]), "{first:?}");
    let header = first[0] - mls::MIN_PADDED;
    for (n, bucket) in [
        (200, 512),
        (1000, 2048),
        (5, 256),
        (3000, 4096),
        (60_000, 65_536),
    ] {
        assert_eq!(mls::padded_size(n), bucket, "{n}");
        // The ciphertext's length prefix takes two more bytes from 16 KiB.
        let prefix = if bucket >= 16_384 { 2 } else { 0 };
        assert_eq!(sized(n), bucket + header + prefix, "{n} bytes");
    }
    assert!(header < 128, "a header of {header} bytes");
}
