//! Two in-memory peers drive a conversation through the core: KeyPackages,
//! group creation, Welcome, messages both ways, replays and forgeries.

use sotto_core::mls::{self, Processed};
use sotto_core::{AppMessage, Body, CoreError, Suite};
use sotto_proto::{GroupId, MessageId};

mod common;
use common::{Peer, Server};

fn text(id: u8, t: &str) -> Vec<u8> {
    AppMessage {
        id: MessageId([id; 16]),
        sent_at_ms: 1,
        body: Body::Text(t.into()),
        directory_root: None,
    }
    .encode()
}

fn setup(suite: Suite) -> (Peer, Peer, GroupId) {
    let alice = Peer::new("alice");
    let bob = Peer::new("bob");
    let kps = mls::key_packages(&bob.provider, &bob.me, &bob.device, suite, 2).unwrap();
    let (kp, id) =
        mls::verify_key_package(&alice.provider, &kps[0], bob.account.id(), bob.device.id())
            .unwrap();
    assert_eq!(id.handle.as_str(), "bob");
    let gid = GroupId::direct(&alice.account.id(), &bob.account.id());
    let created = mls::create_group(
        &alice.provider,
        &alice.me,
        &alice.device,
        gid,
        vec![kp],
        vec![bob.list()],
        mls::NewConversation::Direct,
    )
    .unwrap();
    assert_eq!(created.staged.added, vec![bob.device.id()]);
    // The server checks the creation and routes to both devices.
    let mut server = Server::new(gid);
    let accepted = server.create(&alice, &created).unwrap();
    assert_eq!(accepted.members, vec![alice.device.id(), bob.device.id()]);
    assert_eq!(accepted.added, vec![bob.device.id()]);
    alice.merge(gid);
    let joined = bob.join(created.staged.welcome.as_ref().unwrap());
    assert_eq!(joined.group_id, gid);
    assert_eq!(joined.members.len(), 2);
    assert!(
        joined.name.is_none(),
        "a one-to-one conversation has no name"
    );
    (alice, bob, gid)
}

fn exchange(suite: Suite) {
    let (alice, bob, gid) = setup(suite);
    let ct = mls::encrypt(&alice.provider, &alice.device, gid, &text(1, "hello bob")).unwrap();
    match mls::process(&bob.provider, gid, &ct).unwrap() {
        Processed::Application {
            sender,
            plaintext,
            timer_s,
        } => {
            assert_eq!(timer_s, None);
            assert_eq!(sender.account, alice.account.id());
            assert_eq!(sender.device, alice.device.id());
            assert_eq!(sender.handle.as_str(), "alice");
            let m = AppMessage::decode(&plaintext).unwrap();
            assert_eq!(m.body, Body::Text("hello bob".into()));
        }
        other => panic!("expected application message, got {other:?}"),
    }
    // S4: the same ciphertext a second time is refused, state unchanged.
    assert!(matches!(
        mls::process(&bob.provider, gid, &ct),
        Err(CoreError::Rejected(_))
    ));
    let back = mls::encrypt(&bob.provider, &bob.device, gid, &text(2, "hi alice")).unwrap();
    assert!(matches!(
        mls::process(&alice.provider, gid, &back).unwrap(),
        Processed::Application { .. }
    ));
    // The ciphertext does not contain the text.
    assert!(!ct.windows(9).any(|w| w == b"hello bob"));
}

#[test]
fn post_quantum_conversation_both_ways() {
    exchange(Suite::PostQuantum);
}

#[test]
fn classical_conversation_both_ways() {
    exchange(Suite::Classical);
}

#[test]
fn key_package_of_another_device_is_refused() {
    let bob = Peer::new("bob");
    let mallory = Peer::new("mallory");
    let kps = mls::key_packages(
        &mallory.provider,
        &mallory.me,
        &mallory.device,
        Suite::PostQuantum,
        1,
    )
    .unwrap();
    // The server claims this KeyPackage is bob's device: the client refuses it.
    let r = mls::verify_key_package(&bob.provider, &kps[0], bob.account.id(), bob.device.id());
    assert!(matches!(r, Err(CoreError::KeyPackageMismatch)));
    let r = mls::verify_key_package(
        &bob.provider,
        &kps[0][..kps[0].len() - 3],
        mallory.account.id(),
        mallory.device.id(),
    );
    assert!(matches!(r, Err(CoreError::InvalidKeyPackage(_))));
}

#[test]
fn tampered_ciphertext_and_welcome_are_rejected() {
    let (alice, bob, gid) = setup(Suite::PostQuantum);
    let mut ct = mls::encrypt(&alice.provider, &alice.device, gid, &text(3, "x")).unwrap();
    let n = ct.len();
    ct[n - 5] ^= 1;
    assert!(matches!(
        mls::process(&bob.provider, gid, &ct),
        Err(CoreError::Rejected(_))
    ));
    assert!(matches!(
        mls::join(&bob.provider, b"garbage"),
        Err(CoreError::InvalidWelcome(_))
    ));
}

#[test]
fn last_resort_key_package_is_marked_and_valid() {
    let bob = Peer::new("bob");
    let lr = mls::last_resort_key_package(&bob.provider, &bob.me, &bob.device, Suite::PostQuantum)
        .unwrap();
    let (kp, _) =
        mls::verify_key_package(&bob.provider, &lr, bob.account.id(), bob.device.id()).unwrap();
    assert!(kp.last_resort());
}
