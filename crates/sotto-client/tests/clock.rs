//! Disappearing messages and clocks that disagree (C5): a receiver whose
//! clock is an hour ahead of the server's keeps a message for its whole
//! timer, measured on its own clock from receipt. The skew is played by
//! handing the receiver its real deliveries with the server's receive time
//! an hour earlier (`Client::process_server_frame`): to the receiver that
//! is exactly a server, and sender, whose clocks are an hour behind its own.
//!
//! Expiry itself is tested on clocks the test moves (`ManualClock`), never
//! by sleeping through a timer.

use sotto_client::Client;
use sotto_proto::{Delivery, ServerFrame};
use sotto_server::ServerConfig;
use sotto_server::store::Store as _;
use sotto_test_support::InProcessServer;
use tempfile::TempDir;

mod common;

const HOUR_MS: u64 = 3_600_000;

async fn register(server: &InProcessServer, dir: &std::path::Path, name: &str) -> Client {
    common::register(dir, &server.link, server.invite(), name).await
}

#[tokio::test]
async fn a_receiver_an_hour_ahead_keeps_a_disappearing_message_for_its_timer() {
    let tmp = TempDir::new().unwrap();
    let server = InProcessServer::start(tmp.path(), ServerConfig::default()).await;
    let mut alice = register(&server, tmp.path(), "alice").await;
    let mut bob = register(&server, tmp.path(), "bob").await;
    alice.send("bob", "hello").await.unwrap();
    alice.set_timer("bob", Some(30)).await.unwrap();
    alice.send("bob", "gone in 30 s").await.unwrap();

    let store = server.data.store().unwrap();
    let inbox = store
        .fetch(bob.identity().device, 0, 100, sotto_test_support::now_ms())
        .await
        .unwrap();
    let before = sotto_test_support::now_ms();
    for e in inbox {
        let mut d = Delivery {
            seq: e.seq,
            envelope: e.envelope,
        };
        d.envelope.server_time_ms -= HOUR_MS;
        let frame = sotto_proto::encode_server(&ServerFrame::Deliver(d));
        let outcome = bob.process_server_frame(&frame).unwrap().unwrap();
        assert!(!outcome.starts_with("dropped"), "{outcome}");
    }
    let after = sotto_test_support::now_ms();

    let texts: Vec<String> = bob
        .history("alice")
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["hello", "gone in 30 s"]);
    // It goes 30 s after bob received it, on bob's clock.
    let due = bob.next_expiry().unwrap().expect("a disappearing message");
    assert!(
        (before + 30_000..=after + 30_000).contains(&due),
        "due at {due}, received between {before} and {after}"
    );
}

/// A 30-second timer on both sides' clocks, moved by the test: the message
/// is in both stores until its 30 s are up on each side's clock (the
/// sender's from sending, the receiver's from receipt), then in neither,
/// and a profile reopened after its time also drops it at once.
#[tokio::test]
async fn disappearing_messages_go_when_the_clock_says_so() {
    use sotto_client::ManualClock;
    use std::sync::Arc;

    let tmp = TempDir::new().unwrap();
    let server = InProcessServer::start(tmp.path(), ServerConfig::default()).await;
    let mut alice = register(&server, tmp.path(), "alice").await;
    let mut bob = register(&server, tmp.path(), "bob").await;
    let start = sotto_test_support::now_ms();
    let (alice_clock, bob_clock) = (ManualClock::at(start), ManualClock::at(start));
    alice.set_clock(Arc::new(alice_clock.clone()));
    bob.set_clock(Arc::new(bob_clock.clone()));
    let texts = |c: &mut Client, with: &str| -> Vec<String> {
        c.history(with)
            .unwrap()
            .into_iter()
            .map(|m| m.text)
            .collect()
    };
    alice.send("bob", "stays").await.unwrap();
    alice.set_timer("bob", Some(30)).await.unwrap();
    alice.send("bob", "gone in 30 s").await.unwrap();
    // Bob receives ten (of his) seconds later.
    bob_clock.advance(10_000);
    bob.receive(std::time::Duration::ZERO, |_| {})
        .await
        .unwrap();
    assert_eq!(texts(&mut bob, "alice"), ["stays", "gone in 30 s"]);

    alice_clock.advance(29_999);
    assert_eq!(texts(&mut alice, "bob"), ["stays", "gone in 30 s"]);
    alice_clock.advance(1);
    assert_eq!(texts(&mut alice, "bob"), ["stays"]);

    bob_clock.advance(29_999);
    assert_eq!(texts(&mut bob, "alice"), ["stays", "gone in 30 s"]);
    // Closed when its time comes: gone as soon as the profile opens.
    drop(bob);
    let later = ManualClock::at(sotto_client::Clock::now_ms(&bob_clock) + 1);
    let dir = tmp.path().join("bob");
    let mut bob = Client::open_with_clock(&dir, common::PASS, Arc::new(later)).unwrap();
    assert_eq!(texts(&mut bob, "alice"), ["stays"]);
    server.stop().await;
}
