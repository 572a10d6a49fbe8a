//! The receive path as a state machine (`sotto_core::receive`) among
//! in-memory peers: the typed outcome and events of a Welcome, a message,
//! a commit that adds and removes someone, a rename, a timer change, a
//! duplicate, a conversation left alone, a relabelled delivery set aside
//! and a message for a group this device does not hold.

use sotto_core::group::Change;
use sotto_core::mls::{self, NewConversation};
use sotto_core::receive::{self, Applied, Event, Known, Outcome, Unreadable};
use sotto_core::{AppMessage, Body, CoreError, Suite};
use sotto_proto::{Blob, Envelope, EnvelopeKind, GroupId, MessageId};

mod common;
use common::{Peer, Server, create};

const G: GroupId = GroupId([0x51; 32]);
const NOW: u64 = 1_700_000_000_000;

fn no_rejoin(_: GroupId) -> bool {
    false
}

fn known() -> Known<'static> {
    Known {
        processed: false,
        left: false,
        kill_record: None,
        rejoin_pending: &no_rejoin,
    }
}

fn envelope(kind: EnvelopeKind, from: &Peer, payload: Vec<u8>) -> Envelope {
    Envelope {
        group: G,
        sender: from.me.device,
        msg_id: MessageId([7; 16]),
        kind,
        server_time_ms: NOW - 5,
        payload: Blob(payload),
    }
}

/// `to` applies a delivery of `kind` from `from`.
fn deliver(to: &Peer, kind: EnvelopeKind, from: &Peer, payload: Vec<u8>) -> Applied {
    let env = envelope(kind, from, payload);
    receive::apply(&to.provider, &to.me, &env, &known(), NOW).unwrap()
}

/// `from` sends `text` (as a Sotto message with id `id`).
fn message(from: &Peer, id: u8, text: &str) -> Vec<u8> {
    let app = AppMessage {
        id: MessageId([id; 16]),
        sent_at_ms: NOW - 1_000,
        body: Body::Text(text.into()),
        directory_root: None,
    };
    mls::encrypt(&from.provider, &from.device, G, &app.encode()).unwrap()
}

/// alice commits `change`, the server accepts it, alice merges it; the
/// commit's bytes (and Welcome, if any) are returned.
fn commit(server: &mut Server, alice: &Peer, change: Change) -> (Vec<u8>, Option<Vec<u8>>) {
    let staged = alice.commit(G, change);
    server.commit(alice, &staged).unwrap();
    alice.merge(G);
    (staged.commit, staged.welcome)
}

/// alice creates the group "ops" with `others`, who join by applying the
/// Welcome through the state machine.
fn ops(alice: &Peer, others: &[&Peer]) -> Server {
    let mut server = Server::new(G);
    let kps = others.iter().map(|p| p.key_package()).collect();
    let lists = others.iter().map(|p| p.list()).collect();
    let created = mls::create_group(
        &alice.provider,
        &alice.me,
        &alice.device,
        G,
        kps,
        lists,
        NewConversation::Group("ops"),
    )
    .unwrap();
    server.create(alice, &created).unwrap();
    alice.merge(G);
    let welcome = created.staged.welcome.unwrap();
    for p in others {
        let a = deliver(p, EnvelopeKind::Welcome, alice, welcome.clone());
        let Outcome::Joined(j) = a.outcome else {
            panic!("expected a join, got {:?}", a.outcome)
        };
        assert_eq!(j.group, G);
        assert_eq!(j.by, alice.me);
        assert!(j.is_group);
        assert!(!j.replaced);
        assert_eq!(j.members.len(), others.len() + 1);
        match a.events.as_slice() {
            [Event::Renamed(r)] => assert_eq!(r.name.as_deref(), Some("ops")),
            other => panic!("expected the group's name, got {other:?}"),
        }
    }
    server
}

#[test]
fn a_message_comes_out_decrypted_with_its_sender() {
    let (alice, bob) = (Peer::new("alice"), Peer::new("bob"));
    let _server = ops(&alice, &[&bob]);
    let a = deliver(
        &bob,
        EnvelopeKind::Application,
        &alice,
        message(&alice, 1, "hi"),
    );
    let Outcome::Message(m) = a.outcome else {
        panic!("expected a message, got {:?}", a.outcome)
    };
    assert!(a.events.is_empty());
    assert_eq!(m.id, MessageId([1; 16]));
    assert_eq!(m.sender, alice.me);
    assert_eq!(m.body, Body::Text("hi".into()));
    assert_eq!(m.sent_at_ms, NOW - 1_000);
    assert_eq!(m.received_at_ms, NOW);
    assert_eq!((m.timer_s, m.expires_at_ms), (None, None));
}

#[test]
fn a_commit_that_adds_and_removes_says_who_joined_and_who_left() {
    let (alice, bob, dave, carol) = (
        Peer::new("alice"),
        Peer::new("bob"),
        Peer::new("dave"),
        Peer::new("carol"),
    );
    let mut server = ops(&alice, &[&bob, &dave]);
    let (c, welcome) = commit(
        &mut server,
        &alice,
        Change {
            adds: vec![carol.key_package()],
            device_lists: vec![carol.list()],
            removes: vec![dave.me.device],
            ..Change::default()
        },
    );
    let a = deliver(&bob, EnvelopeKind::Commit, &alice, c.clone());
    let Outcome::Commit(done) = a.outcome else {
        panic!("expected a commit, got {:?}", a.outcome)
    };
    assert_eq!(done.epoch, server.epoch);
    assert!(done.is_group);
    let mut handles: Vec<&str> = done.members.iter().map(|m| m.handle.as_str()).collect();
    handles.sort_unstable();
    assert_eq!(handles, ["alice", "bob", "carol"]);
    assert_eq!(
        a.events,
        [
            Event::DeviceList(carol.list()),
            Event::MemberJoined(carol.me.handle.clone()),
            Event::MemberLeft(dave.me.handle.clone()),
        ]
    );
    // dave reads his own removal.
    let a = deliver(&dave, EnvelopeKind::Commit, &alice, c);
    assert!(matches!(a.outcome, Outcome::Commit(_)), "{:?}", a.outcome);
    assert_eq!(a.events, [Event::Removed]);
    // carol joins by the Welcome.
    let a = deliver(&carol, EnvelopeKind::Welcome, &alice, welcome.unwrap());
    assert!(matches!(a.outcome, Outcome::Joined(_)), "{:?}", a.outcome);
}

#[test]
fn a_rename_and_a_timer_change_are_events_and_the_timer_applies_to_messages() {
    let (alice, bob) = (Peer::new("alice"), Peer::new("bob"));
    let mut server = ops(&alice, &[&bob]);
    let (c, _) = commit(
        &mut server,
        &alice,
        Change {
            name: Some("night shift".into()),
            ..Change::default()
        },
    );
    let a = deliver(&bob, EnvelopeKind::Commit, &alice, c);
    assert!(matches!(a.outcome, Outcome::Commit(_)), "{:?}", a.outcome);
    match a.events.as_slice() {
        [Event::Renamed(r)] => assert_eq!(r.name.as_deref(), Some("night shift")),
        other => panic!("expected a rename, got {other:?}"),
    }
    let (c, _) = commit(
        &mut server,
        &alice,
        Change {
            timer: Some(Some(60)),
            ..Change::default()
        },
    );
    let a = deliver(&bob, EnvelopeKind::Commit, &alice, c);
    assert_eq!(a.events, [Event::TimerChanged(Some(60))]);
    let a = deliver(
        &bob,
        EnvelopeKind::Application,
        &alice,
        message(&alice, 2, "soon gone"),
    );
    let Outcome::Message(m) = a.outcome else {
        panic!("expected a message, got {:?}", a.outcome)
    };
    assert_eq!(m.timer_s, Some(60));
    assert_eq!(m.expires_at_ms, Some(NOW + 60_000));
    let (c, _) = commit(
        &mut server,
        &alice,
        Change {
            timer: Some(None),
            ..Change::default()
        },
    );
    let a = deliver(&bob, EnvelopeKind::Commit, &alice, c);
    assert_eq!(a.events, [Event::TimerChanged(None)]);
}

#[test]
fn a_processed_delivery_is_a_duplicate_and_a_left_conversation_ignored() {
    let (alice, bob) = (Peer::new("alice"), Peer::new("bob"));
    let _server = ops(&alice, &[&bob]);
    let ct = message(&alice, 3, "once");
    let env = envelope(EnvelopeKind::Application, &alice, ct.clone());
    let seen = Known {
        processed: true,
        ..known()
    };
    let a = receive::apply(&bob.provider, &bob.me, &env, &seen, NOW).unwrap();
    assert!(matches!(a.outcome, Outcome::Duplicate), "{:?}", a.outcome);
    assert!(a.events.is_empty());
    let left = Known {
        left: true,
        ..known()
    };
    let a = receive::apply(&bob.provider, &bob.me, &env, &left, NOW).unwrap();
    assert!(matches!(a.outcome, Outcome::Ignored), "{:?}", a.outcome);
    // Neither touched the MLS state: the message still decrypts once.
    let a = deliver(&bob, EnvelopeKind::Application, &alice, ct.clone());
    assert!(matches!(a.outcome, Outcome::Message(_)), "{:?}", a.outcome);
    let env = envelope(EnvelopeKind::Application, &alice, ct);
    let err = receive::apply(&bob.provider, &bob.me, &env, &known(), NOW).unwrap_err();
    assert!(matches!(err, CoreError::Rejected(_)), "{err:?}");
}

#[test]
fn what_cannot_be_read_is_set_aside_or_makes_the_device_rejoin() {
    let (alice, bob, eve) = (Peer::new("alice"), Peer::new("bob"), Peer::new("eve"));
    let _server = ops(&alice, &[&bob]);
    // A message relabelled as a commit by the server.
    let env = envelope(EnvelopeKind::Commit, &alice, message(&alice, 4, "x"));
    let err = receive::apply(&bob.provider, &bob.me, &env, &known(), NOW).unwrap_err();
    match receive::unreadable(&bob.provider, &env, err) {
        Unreadable::SetAside(s) => {
            assert_eq!(s.kind, EnvelopeKind::Commit);
            assert_eq!(s.sender, Some(alice.me.clone()));
            assert_eq!(s.epoch, Some(1));
        }
        other => panic!("expected it set aside, got {other:?}"),
    }
    // A message of a group eve does not hold: she is out of sync there.
    let env = envelope(EnvelopeKind::Application, &alice, message(&alice, 5, "y"));
    let err = receive::apply(&eve.provider, &eve.me, &env, &known(), NOW).unwrap_err();
    match receive::unreadable(&eve.provider, &env, err) {
        Unreadable::OutOfSync(o) => assert!(o.missing),
        other => panic!("expected out of sync, got {other:?}"),
    }
    // A wipe order without a kill record is dropped.
    let a = deliver(&bob, EnvelopeKind::Wipe, &alice, vec![1, 2, 3]);
    assert!(
        matches!(a.outcome, Outcome::Dropped(receive::Dropped::InvalidWipe)),
        "{:?}",
        a.outcome
    );
}

#[test]
fn a_one_to_one_conversation_is_not_a_group() {
    let (alice, bob) = (Peer::new("alice"), Peer::new("bob"));
    let mut server = Server::new(G);
    create(
        &mut server,
        G,
        &alice,
        &[&bob],
        NewConversation::Direct,
        Suite::PostQuantum,
    );
    let (c, _) = commit(
        &mut server,
        &alice,
        Change {
            timer: Some(Some(30)),
            ..Change::default()
        },
    );
    let a = deliver(&bob, EnvelopeKind::Commit, &alice, c);
    let Outcome::Commit(done) = a.outcome else {
        panic!("expected a commit, got {:?}", a.outcome)
    };
    assert!(!done.is_group);
    assert_eq!(a.events, [Event::TimerChanged(Some(30))]);
}
