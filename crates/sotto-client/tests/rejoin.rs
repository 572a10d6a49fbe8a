//! Devices that fall out of a conversation's state and get back by
//! themselves, real clients through a real server:
//! - state loss (C9): a profile restored from an older backup is epochs
//!   behind; the device notices the deliveries it cannot read, rejoins by
//!   external commit, and afterwards everyone reads everyone again and
//!   agrees on the epoch and its authenticator; it was told what it could
//!   not read;
//! - a commit the members reject (S11): a rogue member's commit the server
//!   checked and took, but no other member can apply; the members rejoin
//!   from the server's state, and the admin removes the rogue.

use std::path::Path;
use std::time::Duration;

use sotto_client::{Client, Policy, ReceiveEvent, Warning};
use sotto_proto::{Request, Response};
use sotto_server::ServerConfig;
use sotto_test_support::InProcessServer;
use tempfile::TempDir;

mod common;

use common::{PASS, Raw};

async fn register(server: &InProcessServer, dir: &Path, name: &str) -> Client {
    common::register(dir, &server.link, server.invite(), name).await
}

/// New messages shown by one `receive`, as "sender: text".
async fn texts(c: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    c.receive(Duration::ZERO, |ev| {
        if let ReceiveEvent::Message(m) = ev {
            out.push(format!("{}: {}", m.sender, m.text));
        }
    })
    .await
    .unwrap();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn often() -> Policy {
    Policy {
        messages: 1,
        max_age: Duration::from_secs(86_400),
    }
}

#[tokio::test]
async fn a_device_restored_from_an_old_backup_rejoins_and_is_told_what_it_missed() {
    let tmp = TempDir::new().unwrap();
    let server = InProcessServer::start(tmp.path(), ServerConfig::default()).await;
    let mut alice = register(&server, tmp.path(), "alice").await;
    let mut bob = register(&server, tmp.path(), "bob").await;
    let mut carol = register(&server, tmp.path(), "carol").await;
    let mut dave = register(&server, tmp.path(), "dave").await;

    // A group of three (alice is its admin) and alice's one-to-one
    // conversation with carol.
    alice.group_create("crew", &["bob", "carol"]).await.unwrap();
    alice.send("carol", "hi carol").await.unwrap();
    texts(&mut bob).await;
    assert_eq!(texts(&mut carol).await, ["alice: hi carol"]);
    carol.send("crew", "carol before the backup").await.unwrap();

    // Carol's profile is backed up (copied while closed).
    let carol_dir = tmp.path().join("carol");
    let backup = tmp.path().join("carol-backup");
    drop(carol);
    copy_dir(&carol_dir, &backup);
    let mut carol = Client::open(&carol_dir, PASS).unwrap();

    // The conversations move on: an add, self-updates after every message
    // (alice's and carol's), messages both ways; carol keeps up.
    alice.set_policy(often());
    carol.set_policy(often());
    alice.group_add("crew", &["dave"]).await.unwrap();
    alice.send("crew", "dave is in").await.unwrap();
    bob.send("crew", "hello dave").await.unwrap();
    alice.send("carol", "a secret for carol").await.unwrap();
    assert_eq!(
        texts(&mut carol).await,
        [
            "alice: dave is in",
            "bob: hello dave",
            "alice: a secret for carol"
        ]
    );
    carol.send("crew", "carol after the backup").await.unwrap();
    carol.send("alice", "carol answers").await.unwrap();
    for c in [&mut alice, &mut bob, &mut dave] {
        texts(c).await;
    }
    let (moved, _) = carol.epoch_authenticator("crew").unwrap();

    // Carol's profile is restored from the backup: her state of both
    // conversations is epochs behind.
    drop(carol);
    std::fs::remove_dir_all(&carol_dir).unwrap();
    copy_dir(&backup, &carol_dir);
    let mut carol = Client::open(&carol_dir, PASS).unwrap();
    let (restored, _) = carol.epoch_authenticator("crew").unwrap();
    assert!(
        restored < moved,
        "the backup is behind: {restored} < {moved}"
    );
    assert_eq!(
        carol.history("crew").unwrap().len(),
        1,
        "the backup has what carol had then"
    );

    alice.send("crew", "while carol is lost").await.unwrap();
    alice.send("carol", "direct while lost").await.unwrap();
    bob.send("crew", "bob while carol is lost").await.unwrap();

    // Carol cannot read them: she notices, says so, and rejoins both
    // conversations by herself, at once.
    assert!(texts(&mut carol).await.is_empty());
    let warnings = carol.take_warnings();
    let lost: Vec<&Warning> = warnings
        .iter()
        .filter(|w| matches!(w, Warning::OutOfSync { missing: false, .. }))
        .collect();
    assert_eq!(lost.len(), 2, "one line per conversation: {warnings:?}");
    let told: Vec<&Warning> = warnings
        .iter()
        .filter(|w| matches!(w, Warning::Rejoined { .. }))
        .collect();
    assert_eq!(told.len(), 2, "{warnings:?}");
    // The others take her rejoins and see that she is back.
    for c in [&mut alice, &mut bob, &mut dave] {
        texts(c).await;
    }
    assert_eq!(
        carol.epoch_authenticator("crew").unwrap(),
        alice.epoch_authenticator("crew").unwrap()
    );
    assert_eq!(
        carol.epoch_authenticator("alice").unwrap(),
        alice.epoch_authenticator("carol").unwrap()
    );

    // Everyone reads everyone again.
    alice.send("crew", "welcome back").await.unwrap();
    bob.send("crew", "hi again").await.unwrap();
    alice.send("carol", "direct again").await.unwrap();
    assert_eq!(
        texts(&mut carol).await,
        [
            "alice: welcome back",
            "bob: hi again",
            "alice: direct again"
        ]
    );
    carol.send("crew", "I am back").await.unwrap();
    carol.send("alice", "back in direct").await.unwrap();
    let got = texts(&mut alice).await;
    assert!(got.contains(&"carol: I am back".to_owned()), "{got:?}");
    assert!(got.contains(&"carol: back in direct".to_owned()), "{got:?}");
    for c in [&mut bob, &mut dave] {
        let got = texts(c).await;
        assert!(got.contains(&"carol: I am back".to_owned()), "{got:?}");
    }
    for c in [&mut alice, &mut bob, &mut dave, &mut carol] {
        texts(c).await;
    }

    // All agree on the epoch and its authenticator, in both conversations.
    let crew = alice.epoch_authenticator("crew").unwrap();
    for c in [&mut bob, &mut carol, &mut dave] {
        assert_eq!(c.epoch_authenticator("crew").unwrap(), crew);
    }
    assert_eq!(
        carol.epoch_authenticator("alice").unwrap(),
        alice.epoch_authenticator("carol").unwrap()
    );
    // Carol kept her history (what the backup had, and what came since).
    let history: Vec<String> = carol
        .history("crew")
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(history.first().unwrap(), "carol before the backup");
    assert!(history.contains(&"welcome back".to_owned()));
    assert_eq!(
        alice.groups().unwrap()[0].members,
        ["alice", "bob", "carol", "dave"]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_device_restored_from_before_it_joined_a_conversation_rejoins_it() {
    let tmp = TempDir::new().unwrap();
    let server = InProcessServer::start(tmp.path(), ServerConfig::default()).await;
    let mut alice = register(&server, tmp.path(), "alice").await;
    let carol = register(&server, tmp.path(), "carol").await;

    // Carol's backup is older than her conversation with alice.
    let carol_dir = tmp.path().join("carol");
    let backup = tmp.path().join("carol-backup");
    drop(carol);
    copy_dir(&carol_dir, &backup);
    let mut carol = Client::open(&carol_dir, PASS).unwrap();
    alice.send("carol", "first").await.unwrap();
    assert_eq!(texts(&mut carol).await, ["alice: first"]);
    carol.send("alice", "hello alice").await.unwrap();
    texts(&mut alice).await;

    drop(carol);
    std::fs::remove_dir_all(&carol_dir).unwrap();
    copy_dir(&backup, &carol_dir);
    let mut carol = Client::open(&carol_dir, PASS).unwrap();
    alice.send("carol", "while carol is missing").await.unwrap();

    // The restored profile has no such conversation: it says so and
    // rejoins it from the server's GroupInfo.
    assert!(texts(&mut carol).await.is_empty());
    let warnings = carol.take_warnings();
    assert!(
        warnings
            .iter()
            .any(|w| matches!(w, Warning::OutOfSync { missing: true, .. })),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| matches!(w, Warning::Rejoined { .. })),
        "{warnings:?}"
    );
    texts(&mut alice).await;
    assert_eq!(
        carol.epoch_authenticator("alice").ok(),
        alice.epoch_authenticator("carol").ok()
    );
    alice.send("carol", "you are back").await.unwrap();
    assert_eq!(texts(&mut carol).await, ["alice: you are back"]);
    carol.send("alice", "I am").await.unwrap();
    assert_eq!(texts(&mut alice).await, ["carol: I am"]);
    server.stop().await;
}

#[tokio::test]
async fn a_commit_the_server_took_and_every_member_refuses_is_recovered_by_rejoining() {
    let tmp = TempDir::new().unwrap();
    let server = InProcessServer::start(tmp.path(), ServerConfig::default()).await;
    let mut alice = register(&server, tmp.path(), "alice").await;
    let mut bob = register(&server, tmp.path(), "bob").await;
    let mut mallory = Raw::register(&server.link, server.invite(), "mallory", 3).await;
    let g = alice
        .group_create("crew", &["bob", "mallory"])
        .await
        .unwrap();
    texts(&mut bob).await;
    mallory.take_mail(g).await;
    assert_eq!(
        mallory.member.epoch(g),
        alice.epoch_authenticator("crew").unwrap().0
    );

    // mallory commits a self-update whose membership tag she broke on
    // purpose: signed, consistent with its GroupInfo, so the server (which
    // cannot check the tag) takes it; alice and bob cannot apply it. The
    // server is now at an epoch only mallory reached.
    let mut rogue = mallory.member.self_update(g);
    *rogue.commit.0.last_mut().unwrap() ^= 1;
    let r = mallory.conn.request(Request::Commit(rogue)).await.unwrap();
    assert!(matches!(r, Response::Committed { .. }), "{r:?}");
    mallory.member.committed(g);
    let server_epoch = mallory.member.epoch(g);

    // alice removes mallory: her commit loses the epoch, the commit that
    // won is one she cannot apply; she rejoins from the server's state
    // and commits the removal there.
    alice.group_remove("crew", &["mallory"]).await.unwrap();
    let warnings = alice.take_warnings();
    assert!(
        warnings
            .iter()
            .any(|w| matches!(w, Warning::Rejoined { .. })),
        "{warnings:?}"
    );
    let (epoch, _) = alice.epoch_authenticator("crew").unwrap();
    assert!(epoch > server_epoch, "{epoch} > {server_epoch}");
    // bob took the rogue commit for garbage, then alice's rejoin and her
    // removal are of epochs he has not reached: he rejoins too.
    texts(&mut bob).await;
    texts(&mut alice).await;
    assert_eq!(
        bob.epoch_authenticator("crew").unwrap(),
        alice.epoch_authenticator("crew").unwrap()
    );
    assert_eq!(alice.groups().unwrap()[0].members, ["alice", "bob"]);
    alice.send("crew", "just us").await.unwrap();
    assert_eq!(texts(&mut bob).await, ["alice: just us"]);
    bob.send("crew", "good").await.unwrap();
    assert_eq!(texts(&mut alice).await, ["bob: good"]);
    server.stop().await;
}
