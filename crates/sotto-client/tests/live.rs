//! Clients against the server library on loopback: a device that is online
//! gets messages pushed on its open connection, and a profile holds one
//! account behind its passphrase.

use std::sync::mpsc;
use std::time::Duration;

use sotto_client::{Client, ClientError, ReceiveEvent, RegisterOptions, ServerLink, Suite};
use sotto_proto::Handle;
use sotto_server::ServerConfig;
use sotto_test_support::InProcessServer;
use tempfile::TempDir;

const PASS: &str = "test passphrase";

async fn register(server: &InProcessServer, dir: &std::path::Path, name: &str) -> Client {
    let opts = RegisterOptions {
        link: ServerLink::parse(&server.link).unwrap(),
        handle: Handle::new(name).unwrap(),
        invite: Some(server.invite()),
        suite: Suite::PostQuantum,
    };
    Client::register(&dir.join(name), PASS, opts).await.unwrap()
}

#[derive(Debug, PartialEq)]
enum Seen {
    Synced,
    Message(String),
}

#[tokio::test]
async fn online_device_gets_messages_pushed_live() {
    let tmp = TempDir::new().unwrap();
    let server = InProcessServer::start(tmp.path(), ServerConfig::default()).await;
    let mut alice = register(&server, tmp.path(), "alice").await;
    let mut bob = register(&server, tmp.path(), "bob").await;
    alice.send("bob", "before").await.unwrap();

    let (synced_tx, synced_rx) = mpsc::channel();
    let bob_task = tokio::spawn(async move {
        let mut seen = Vec::new();
        bob.receive(Duration::from_secs(3), |ev| match ev {
            ReceiveEvent::Synced => {
                seen.push(Seen::Synced);
                let _ = synced_tx.send(());
            }
            ReceiveEvent::Message(m) => seen.push(Seen::Message(m.text.clone())),
            ReceiveEvent::Dropped(why) => panic!("dropped: {why}"),
        })
        .await
        .unwrap();
        seen
    });
    // Send only once bob's backlog is drained and his connection is live.
    tokio::task::spawn_blocking(move || synced_rx.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("bob never synced");
    alice.send("bob", "live").await.unwrap();
    let seen = bob_task.await.unwrap();
    assert_eq!(
        seen,
        [
            Seen::Message("before".into()),
            Seen::Synced,
            Seen::Message("live".into())
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_profile_holds_one_account() {
    let tmp = TempDir::new().unwrap();
    let server = InProcessServer::start(tmp.path(), ServerConfig::default()).await;
    register(&server, tmp.path(), "alice").await;
    let opts = RegisterOptions {
        link: ServerLink::parse(&server.link).unwrap(),
        handle: Handle::new("alice2").unwrap(),
        invite: Some(server.invite()),
        suite: Suite::PostQuantum,
    };
    let r = Client::register(&tmp.path().join("alice"), PASS, opts).await;
    assert!(matches!(r, Err(ClientError::AlreadyRegistered(_))), "{r:?}");
    assert!(matches!(
        Client::open(&tmp.path().join("alice"), "wrong"),
        Err(ClientError::WrongPassphrase)
    ));
    server.stop().await;
}
