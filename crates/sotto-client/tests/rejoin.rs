//! State loss (C9): a device's profile is restored from an older backup,
//! so its state of its conversations is epochs behind the other members'.
//! Real clients through a real server: the device notices the deliveries it
//! cannot read, asks to be re-added, a member re-adds it, and afterwards
//! everyone reads everyone again and agrees on the epoch and its
//! authenticator; the device was told what it could not read.

use std::path::Path;
use std::time::Duration;

use sotto_client::{Client, Policy, ReceiveEvent};
use sotto_server::ServerConfig;
use sotto_test_support::InProcessServer;
use tempfile::TempDir;

mod common;

use common::PASS;

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
        ..Policy::default()
    }
}

#[tokio::test]
async fn a_device_restored_from_an_old_backup_is_re_added_and_told_what_it_missed() {
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

    // Carol cannot read them: she notices, says so, and asks to be re-added.
    assert!(texts(&mut carol).await.is_empty());
    let warnings = carol.take_warnings();
    let lost: Vec<&String> = warnings
        .iter()
        .filter(|w| w.contains("lost its state"))
        .collect();
    assert_eq!(lost.len(), 2, "one line per conversation: {warnings:?}");
    // Until then she cannot send there.
    let e = carol.send("crew", "am I there?").await.unwrap_err();
    assert!(e.to_string().contains("re-add"), "{e}");

    // The members take the request; one of them re-adds her (the first in
    // the order answers at once, the others drop theirs on seeing it done).
    let mut rounds = 0;
    loop {
        for c in [&mut alice, &mut bob, &mut dave] {
            texts(c).await;
        }
        texts(&mut carol).await;
        let crew_ok = carol.epoch_authenticator("crew").unwrap()
            == alice.epoch_authenticator("crew").unwrap();
        let direct_ok = carol.epoch_authenticator("alice").unwrap()
            == alice.epoch_authenticator("carol").unwrap();
        if crew_ok && direct_ok {
            break;
        }
        rounds += 1;
        assert!(rounds < 5, "carol was not re-added");
    }
    let warnings = carol.take_warnings();
    let told: Vec<&String> = warnings
        .iter()
        .filter(|w| w.contains("could not be read"))
        .collect();
    assert_eq!(told.len(), 2, "{warnings:?}");

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
async fn a_device_restored_from_before_it_joined_a_conversation_is_added_back() {
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

    // The restored profile has no such conversation: it says so and asks.
    assert!(texts(&mut carol).await.is_empty());
    let warnings = carol.take_warnings();
    assert!(
        warnings.iter().any(|w| w.contains("does not have")),
        "{warnings:?}"
    );
    let mut rounds = 0;
    while carol.epoch_authenticator("alice").ok() != alice.epoch_authenticator("carol").ok() {
        texts(&mut alice).await;
        texts(&mut carol).await;
        rounds += 1;
        assert!(rounds < 5, "carol was not added back");
    }
    let warnings = carol.take_warnings();
    assert!(
        warnings.iter().any(|w| w.contains("could not be read")),
        "{warnings:?}"
    );
    alice.send("carol", "you are back").await.unwrap();
    assert_eq!(texts(&mut carol).await, ["alice: you are back"]);
    carol.send("alice", "I am").await.unwrap();
    assert_eq!(texts(&mut alice).await, ["carol: I am"]);
    server.stop().await;
}

#[tokio::test]
async fn members_answering_at_the_same_moment_re_add_once() {
    let tmp = TempDir::new().unwrap();
    let server = InProcessServer::start(tmp.path(), ServerConfig::default()).await;
    let mut alice = register(&server, tmp.path(), "alice").await;
    let mut bob = register(&server, tmp.path(), "bob").await;
    let mut carol = register(&server, tmp.path(), "carol").await;
    let mut dave = register(&server, tmp.path(), "dave").await;
    alice
        .group_create("crew", &["bob", "carol", "dave"])
        .await
        .unwrap();
    for c in [&mut bob, &mut carol, &mut dave] {
        texts(c).await;
    }
    let carol_dir = tmp.path().join("carol");
    let backup = tmp.path().join("carol-backup");
    drop(carol);
    copy_dir(&carol_dir, &backup);
    let mut carol = Client::open(&carol_dir, PASS).unwrap();
    alice.set_policy(often());
    alice.send("crew", "moving on").await.unwrap();
    texts(&mut carol).await;
    drop(carol);
    std::fs::remove_dir_all(&carol_dir).unwrap();
    copy_dir(&backup, &carol_dir);
    let mut carol = Client::open(&carol_dir, PASS).unwrap();
    alice.send("crew", "while carol is lost").await.unwrap();
    assert!(texts(&mut carol).await.is_empty());

    // Nobody waits for their rank: all three answer at the same moment.
    for c in [&mut alice, &mut bob, &mut dave] {
        c.set_policy(Policy {
            readd_step: Duration::ZERO,
            ..Policy::default()
        });
    }
    let (before, _) = alice.epoch_authenticator("crew").unwrap();
    let (a, b, d) = tokio::join!(texts(&mut alice), texts(&mut bob), texts(&mut dave));
    drop((a, b, d));
    // One re-add landed; the others lost the epoch, saw it done and dropped
    // theirs (and nobody commits another one later).
    for c in [&mut alice, &mut bob, &mut dave, &mut carol] {
        texts(c).await;
    }
    for c in [&mut alice, &mut bob, &mut dave] {
        texts(c).await;
    }
    let crew = alice.epoch_authenticator("crew").unwrap();
    assert_eq!(crew.0, before + 1, "exactly one re-add commit");
    for c in [&mut bob, &mut carol, &mut dave] {
        assert_eq!(c.epoch_authenticator("crew").unwrap(), crew);
    }
    carol.send("crew", "back once").await.unwrap();
    for c in [&mut alice, &mut bob, &mut dave] {
        assert_eq!(texts(c).await, ["carol: back once"]);
    }
    server.stop().await;
}
