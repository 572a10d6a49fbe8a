//! A malicious server forging deliveries (S18, C3): real clients write
//! through a real server; the test takes what the server holds for alice
//! and hands her forged versions first, through the same decoding and
//! processing as a live connection (`Client::process_server_frame`). Each
//! forgery is set aside without storing anything or moving her MLS state;
//! the genuine deliveries afterwards are accepted as if nothing happened.

use sotto_client::Client;
use sotto_proto::{Delivery, EnvelopeKind, MessageId, ServerFrame};
use sotto_server::ServerConfig;
use sotto_server::store::Store as _;
use sotto_test_support::InProcessServer;
use tempfile::TempDir;

mod common;

async fn register(server: &InProcessServer, dir: &std::path::Path, name: &str) -> Client {
    common::register(dir, &server.link, server.invite(), name).await
}

fn frame(d: &Delivery) -> Vec<u8> {
    sotto_proto::encode_server(&ServerFrame::Deliver(d.clone()))
}

fn fresh_id(d: &mut Delivery, n: u8) {
    d.envelope.msg_id = MessageId([n; 16]);
}

fn texts(c: &mut Client, with: &str) -> Vec<String> {
    c.history(with)
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect()
}

#[tokio::test]
async fn every_forged_delivery_is_refused_and_changes_nothing() {
    let tmp = TempDir::new().unwrap();
    let server = InProcessServer::start(tmp.path(), ServerConfig::default()).await;
    let mut alice = register(&server, tmp.path(), "alice").await;
    let mut bob = register(&server, tmp.path(), "bob").await;
    let mut carol = register(&server, tmp.path(), "carol").await;
    bob.send("alice", "hello").await.unwrap();
    carol.send("alice", "hi from carol").await.unwrap();
    bob.send("alice", "second").await.unwrap();

    let store = server.data.store().unwrap();
    let inbox: Vec<Delivery> = store
        .fetch(
            alice.identity().device,
            0,
            100,
            sotto_test_support::now_ms(),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|e| Delivery {
            seq: e.seq,
            envelope: e.envelope,
        })
        .collect();
    let kinds: Vec<EnvelopeKind> = inbox.iter().map(|d| d.envelope.kind).collect();
    use EnvelopeKind::{Application as A, Welcome as W};
    assert_eq!(kinds, [W, A, W, A, A]);
    let (welcome_bob, hello, welcome_carol, from_carol, second) =
        (&inbox[0], &inbox[1], &inbox[2], &inbox[3], &inbox[4]);

    let mut process = |d: &Delivery| alice.process_server_frame(&frame(d)).unwrap().unwrap();
    for d in [welcome_bob, hello, welcome_carol, from_carol] {
        assert_eq!(process(d), "stored");
    }

    let mut forged: Vec<(&str, Delivery)> = Vec::new();
    // An application message's envelope names no sender (MLS does); one
    // that names a device other than MLS's sender is a lie.
    assert_eq!(second.envelope.sender, sotto_proto::DeviceId::NONE);
    let mut f = second.clone();
    f.envelope.sender = welcome_carol.envelope.sender;
    forged.push(("another sender", f));
    let mut f = second.clone();
    let n = f.envelope.payload.0.len();
    f.envelope.payload.0[n - 20] ^= 1;
    forged.push(("altered ciphertext", f));
    let mut f = second.clone();
    f.envelope.payload.0.truncate(n / 2);
    forged.push(("truncated ciphertext", f));
    let mut f = second.clone();
    f.envelope.group = from_carol.envelope.group;
    forged.push(("another conversation", f));
    let mut f = second.clone();
    f.envelope.kind = EnvelopeKind::Commit;
    forged.push(("a message passed off as a commit", f));
    forged.push(("a replayed message", hello.clone()));
    forged.push(("a replayed Welcome", welcome_bob.clone()));
    let mut f = second.clone();
    f.envelope.kind = EnvelopeKind::Wipe;
    forged.push(("a wipe order without the kill code", f));
    let mut f = welcome_carol.clone();
    f.envelope.sender = welcome_bob.envelope.sender;
    forged.push(("a Welcome from a device not in its group", f));

    for (i, (what, mut d)) in forged.into_iter().enumerate() {
        fresh_id(&mut d, 0xf0 + i as u8);
        let outcome = alice.process_server_frame(&frame(&d)).unwrap().unwrap();
        assert!(
            outcome.starts_with("dropped") || outcome == "duplicate",
            "{what} was {outcome}"
        );
        if what == "altered ciphertext" {
            // Never dropped silently: the user is told where. Not from
            // whom: the envelope names no sender, and the ciphertext that
            // does could not be read.
            assert!(
                outcome.starts_with(
                    r#"dropped: Unreadable { what: Message, from: "an unknown member", conversation: "bob","#
                ),
                "{outcome}"
            );
        }
    }
    assert_eq!(texts(&mut alice, "bob"), ["hello"]);
    assert_eq!(texts(&mut alice, "carol"), ["hi from carol"]);

    // The genuine message still decrypts: no forgery moved her state.
    let outcome = alice.process_server_frame(&frame(second)).unwrap().unwrap();
    assert_eq!(outcome, "stored");
    assert_eq!(texts(&mut alice, "bob"), ["hello", "second"]);
    // And the conversation goes on both ways through the server.
    drop(store);
    alice.send("bob", "answer").await.unwrap();
    let mut got = Vec::new();
    bob.receive(std::time::Duration::ZERO, |ev| {
        if let sotto_client::ReceiveEvent::Message(m) = ev {
            got.push(m.text.clone());
        }
    })
    .await
    .unwrap();
    assert_eq!(got, ["answer"]);
}
