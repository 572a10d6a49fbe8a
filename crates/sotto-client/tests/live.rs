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

mod common;

use common::{PASS, Raw};

async fn register(server: &InProcessServer, dir: &std::path::Path, name: &str) -> Client {
    common::register(dir, &server.link, server.invite(), name).await
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
            ReceiveEvent::Dropped(why) => panic!("dropped: {why:?}"),
            ReceiveEvent::Notice(_) | ReceiveEvent::Receipt(_) => {}
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

async fn raw(server: &InProcessServer, name: &str) -> Raw {
    Raw::register(&server.link, server.invite(), name, 0).await
}

/// Claims one KeyPackage of `handle`; returns whether it was the last-resort one.
async fn claim(r: &mut Raw, handle: &str) -> bool {
    r.claim(handle).await.devices[0].last_resort
}

async fn receive_all(c: &mut Client) -> (Vec<String>, Vec<sotto_client::Warning>) {
    let mut msgs = Vec::new();
    let mut dropped = Vec::new();
    c.receive(Duration::ZERO, |ev| match ev {
        ReceiveEvent::Message(m) => msgs.push(m.text.clone()),
        ReceiveEvent::Dropped(why) => dropped.push(why.clone()),
        ReceiveEvent::Synced | ReceiveEvent::Notice(_) | ReceiveEvent::Receipt(_) => {}
    })
    .await
    .unwrap();
    (msgs, dropped)
}

#[tokio::test]
async fn key_packages_are_refilled_and_the_last_resort_keeps_a_device_reachable() {
    let tmp = TempDir::new().unwrap();
    let server = InProcessServer::start(tmp.path(), ServerConfig::default()).await;
    let mut bob = register(&server, tmp.path(), "bob").await;
    let mut mallory = raw(&server, "mallory").await;
    // Mallory drains bob's one-time KeyPackages.
    let mut one_time = 0;
    while !claim(&mut mallory, "bob").await {
        one_time += 1;
        assert!(one_time <= 100, "the stock never ran out");
    }
    assert!(
        one_time >= 10,
        "only {one_time} one-time key packages were uploaded"
    );
    // With only the last resort left, alice can still reach bob.
    let mut alice = register(&server, tmp.path(), "alice").await;
    alice.send("bob", "via last resort").await.unwrap();
    // Bob's next connection refills the stock.
    assert_eq!(receive_all(&mut bob).await.0, ["via last resort"]);
    assert!(
        !claim(&mut mallory, "bob").await,
        "the stock was not refilled"
    );
    server.stop().await;
}

#[tokio::test]
async fn garbage_from_a_peer_is_set_aside_and_the_mailbox_keeps_moving() {
    use sotto_proto::{Blob, GroupId, MessageId, Request, SendRequest};
    let tmp = TempDir::new().unwrap();
    let server = InProcessServer::start(tmp.path(), ServerConfig::default()).await;
    let mut bob = register(&server, tmp.path(), "bob").await;
    let mut alice = register(&server, tmp.path(), "alice").await;
    let mut mallory = raw(&server, "mallory").await;
    // Mallory makes a group with bob on the server (a real commit, which
    // the server checks; the Welcome it cannot read is junk) and sends him
    // more junk.
    let g = GroupId([0x66; 32]);
    let claimed = mallory.claim("bob").await;
    let mut create = mallory.create_request_with(g, &claimed);
    create.welcome = Some(Blob(b"not a welcome".to_vec()));
    let r = mallory.conn.request(Request::Commit(create)).await.unwrap();
    assert!(
        matches!(r, sotto_proto::Response::Committed { .. }),
        "{r:?}"
    );
    for (i, junk) in [vec![], vec![0xff; 300], b"\x00\x01garbage".to_vec()]
        .into_iter()
        .enumerate()
    {
        // The server takes only MLS application messages of the group
        // (it reads their clear header): junk never reaches a mailbox.
        let r = mallory
            .conn
            .request(Request::Send(SendRequest {
                group: g,
                msg_id: MessageId([i as u8 + 2; 16]),
                payload: Blob(junk),
                ttl_ms: None,
            }))
            .await;
        match r {
            Err(ClientError::Server(e)) => {
                assert_eq!(e.code, sotto_proto::ErrorCode::InvalidRequest, "{e:?}")
            }
            other => panic!("junk accepted: {other:?}"),
        }
    }
    alice.send("bob", "real message").await.unwrap();
    let (msgs, dropped) = receive_all(&mut bob).await;
    assert_eq!(msgs, ["real message"]);
    assert_eq!(dropped.len(), 1, "the junk Welcome: {dropped:?}");
    // Set aside means acknowledged: nothing comes again.
    let (msgs, dropped) = receive_all(&mut bob).await;
    assert!(
        msgs.is_empty() && dropped.is_empty(),
        "{msgs:?} {dropped:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn devices_commit_self_updates_by_policy() {
    let tmp = TempDir::new().unwrap();
    let server = InProcessServer::start(tmp.path(), ServerConfig::default()).await;
    let mut alice = register(&server, tmp.path(), "alice").await;
    let mut bob = register(&server, tmp.path(), "bob").await;
    alice.group_create("pcs", &["bob"]).await.unwrap();
    alice.set_policy(sotto_client::Policy {
        messages: 2,
        max_age: Duration::from_secs(3600),
    });
    let epoch = |c: &mut Client| c.groups().unwrap()[0].epoch;
    assert_eq!(epoch(&mut alice), 1);
    alice.send("pcs", "one").await.unwrap();
    assert_eq!(epoch(&mut alice), 1);
    alice.send("pcs", "two").await.unwrap();
    assert_eq!(epoch(&mut alice), 2, "no self-update after two messages");
    alice.send("pcs", "three").await.unwrap();
    let mut texts = Vec::new();
    bob.receive(Duration::ZERO, |ev| {
        if let ReceiveEvent::Message(m) = ev {
            texts.push(m.text.clone());
        }
    })
    .await
    .unwrap();
    assert_eq!(texts, ["one", "two", "three"]);
    assert_eq!(epoch(&mut bob), 2);
    server.stop().await;
}

/// Issue 19: a member sends while another renames the group, both on
/// long-running sessions (as the daemon runs them). Every message the
/// server accepted reaches every other member, once and in order, and
/// nothing is dropped: the server takes a message only in the group's
/// current epoch (a sender that lost the race encrypts it again after
/// catching up), and the renaming member reads what came before its
/// commit before it merges it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_racing_renames_all_arrive_once() {
    const MESSAGES: usize = 120;
    const RENAMES: usize = 15;
    let tmp = TempDir::new().unwrap();
    let server = InProcessServer::start(tmp.path(), ServerConfig::default()).await;
    let mut alice = register(&server, tmp.path(), "alice").await;
    let mut bob = register(&server, tmp.path(), "bob").await;
    let mut carol = register(&server, tmp.path(), "carol").await;
    alice.group_create("ops", &["bob", "carol"]).await.unwrap();
    bob.go_online().await.unwrap();
    alice.go_online().await.unwrap();
    let id = format!("#{}", bob.groups().unwrap()[0].id.to_hex());
    let gid = id.clone();

    let sender = tokio::spawn(async move {
        for n in 0..MESSAGES {
            bob.send(&id, &format!("m{n:03}")).await.unwrap();
            bob.process_pushed().await.unwrap();
        }
        bob
    });
    let renamer = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut warnings = Vec::new();
        for n in 0..RENAMES {
            alice.group_rename(&gid, &format!("ops {n}")).await.unwrap();
            let u = alice.process_pushed().await.unwrap();
            got.extend(u.messages.into_iter().map(|m| m.text));
            warnings.extend(u.warnings);
        }
        (alice, got, warnings)
    });
    let mut bob = sender.await.unwrap();
    let (mut alice, mut alice_got, mut alice_warnings) = renamer.await.unwrap();
    assert!(bob.take_warnings().is_empty());
    // Alice reads what is still on its way.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while alice_got.len() < MESSAGES && tokio::time::Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(500), alice.pushed()).await;
        let u = alice.process_pushed().await.unwrap();
        alice_got.extend(u.messages.into_iter().map(|m| m.text));
        alice_warnings.extend(u.warnings);
    }
    let (carol_got, carol_dropped) = receive_all(&mut carol).await;
    let want: Vec<String> = (0..MESSAGES).map(|n| format!("m{n:03}")).collect();
    assert!(alice_warnings.is_empty(), "alice: {alice_warnings:?}");
    assert!(carol_dropped.is_empty(), "carol: {carol_dropped:?}");
    assert_eq!(alice_got, want, "alice");
    assert_eq!(carol_got, want, "carol");
    assert_eq!(
        alice.groups().unwrap()[0].name,
        format!("ops {}", RENAMES - 1)
    );
    server.stop().await;
}
