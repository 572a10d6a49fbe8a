//! Disappearing messages through the real binaries: the timer is
//! conversation state every member sees; expired messages leave the
//! sender's and recipients' stores and the server, also for a recipient who
//! was offline, and with them their files and every trace in the store's
//! files, also while a daemon keeps the store open.
//!
//! Time: the first two tests run every binary on a wall clock the test
//! moves (`World::with_fake_time`: libfaketime, Debian package `faketime`),
//! so their one-minute timers run out without any wait; the server, which
//! purges expired messages every second of real time, is polled until it
//! has (within seconds). The daemon test is on the real clock: the daemon
//! sleeps on its monotonic clock until the next expiry, which a moved wall
//! clock does not wake, so its two-second timers run out by themselves
//! (polled, no fixed wait).

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use sotto_test_support::{Profile, ServerProcess, World, files_containing};

fn history(p: &Profile, conv: &str) -> Vec<String> {
    p.sotto(&["history", conv])
        .ok()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn application_messages_on_server(server: &ServerProcess) -> i64 {
    let db = rusqlite::Connection::open(server.data.join("server.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.query_row("SELECT count(*) FROM messages WHERE kind = 0", [], |r| {
        r.get(0)
    })
    .unwrap()
}

#[test]
fn a_disappearing_message_leaves_every_store() {
    let w = World::with_fake_time(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");
    alice.sotto(&["send", "bob", "this one stays"]).ok();
    alice
        .sotto(&["disappear", "bob", "soon"])
        .fails_with("is not a duration");
    alice.sotto(&["disappear", "bob", "1m"]).ok();
    let r = bob.sotto(&["receive"]);
    assert_eq!(r.ok(), "alice: this one stays\n");
    assert!(
        r.stderr()
            .contains("alice: messages now disappear after 1m"),
        "{}",
        r.stderr()
    );
    alice.sotto(&["send", "bob", "gone soon"]).ok();
    assert_eq!(bob.sotto(&["receive"]).ok(), "alice: gone soon\n");
    assert_eq!(
        history(&bob, "alice"),
        ["alice: this one stays", "alice: gone soon"]
    );
    // Bob's receipts for the first came in with alice's next command.
    assert_eq!(
        history(&alice, "bob"),
        [
            "alice: this one stays (delivered to 1, read by 1)",
            "alice: gone soon"
        ]
    );
    // 45 s on: not yet (whatever real time the test took, well under 15 s).
    w.fake_time().advance(Duration::from_secs(45));
    assert_eq!(
        history(&bob, "alice"),
        ["alice: this one stays", "alice: gone soon"]
    );
    // 61 s on: gone on both sides.
    w.fake_time().advance(Duration::from_secs(16));
    assert_eq!(history(&bob, "alice"), ["alice: this one stays"]);
    assert_eq!(
        history(&alice, "bob"),
        ["alice: this one stays (delivered to 1, read by 1)"]
    );
    // Off again: new messages stay.
    bob.sotto(&["disappear", "alice", "off"]).ok();
    let r = alice.sotto(&["receive"]);
    assert!(
        r.stderr().contains("bob: messages no longer disappear"),
        "{}",
        r.stderr()
    );
}

#[test]
fn the_server_drops_an_expired_message_an_offline_member_never_fetched() {
    let w = World::with_fake_time(&[]);
    let server = &w.server;
    let alice = w.person("alice");
    let bob = w.person("bob");
    let carol = w.person("carol");
    alice
        .sotto(&["group", "create", "ops", "bob", "carol"])
        .ok();
    bob.sotto(&["receive"]).ok();
    bob.sotto(&["disappear", "ops", "5s"])
        .fails_with("only admins change the group's timer");
    alice.sotto(&["disappear", "ops", "1m"]).ok();
    alice.sotto(&["send", "ops", "ephemeral"]).ok();
    assert_eq!(application_messages_on_server(server), 1);
    // Expiry at 1 min; the server's purge runs every second (of real
    // time), and sees the moved clock at its next run.
    w.fake_time().advance(Duration::from_secs(61));
    assert!(
        eventually(Duration::from_secs(10), || {
            application_messages_on_server(server) == 0
        }),
        "the server kept an expired message"
    );
    // Carol was offline the whole time: she gets the timer, not the message.
    assert_eq!(carol.sotto(&["receive"]).ok(), "");
    let groups = carol.sotto(&["groups", "--json"]).ok();
    assert!(groups.contains(r#""disappear_after_s":60"#), "{groups}");
    assert!(history(&carol, "ops").is_empty());
}

const MINUTE: Duration = Duration::from_secs(60);

/// A daemon on a profile; killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (up to `limit`) until `done` holds; `false` if it never did.
fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

/// The rows of `sql` (a count) in a copy of the profile's store, read with
/// its passphrase as a thief who learnt it would.
fn count_in_copy(p: &Profile, sql: &str) -> i64 {
    let copy = tempfile::tempdir().unwrap();
    for name in ["sotto.db", "sotto.db-wal"] {
        if p.dir.join(name).exists() {
            std::fs::copy(p.dir.join(name), copy.path().join(name)).unwrap();
        }
    }
    let db = rusqlite::Connection::open(copy.path().join("sotto.db")).unwrap();
    db.pragma_update(None, "key", &p.passphrase).unwrap();
    db.query_row(sql, [], |r| r.get(0)).unwrap()
}

fn wal_len(p: &Profile) -> u64 {
    std::fs::metadata(p.dir.join("sotto.db-wal")).map_or(0, |m| m.len())
}

/// C12: bob's daemon runs the whole time. When the timer of alice's text
/// and file runs out, the daemon deletes them by itself: the saved file,
/// its `attachments` row (name, key, hash) and the message go, and the WAL
/// is truncated, so no old frame keeps them; every file of the profile is
/// searched while the daemon still runs.
#[test]
fn a_disappearing_file_and_text_leave_every_file_while_the_daemon_runs() {
    let w = World::new(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");
    alice.sotto(&["send", "bob", "this one stays"]).ok();
    bob.sotto(&["receive"]).ok();
    let daemon = Daemon(
        bob.command(&["daemon", "--json-rpc"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sotto daemon"),
    );
    alice.sotto(&["disappear", "bob", "2s"]).ok();
    let contents = b"the spare key is under the third flowerpot";
    let file = w.root.join("flowerpot-notes.txt");
    std::fs::write(&file, contents).unwrap();
    alice
        .sotto(&["send-file", "bob", file.to_str().unwrap()])
        .ok();
    alice
        .sotto(&["send", "bob", "burn after reading: flowerpot"])
        .ok();
    let saved = bob.dir.join("downloads").join("flowerpot-notes.txt");
    assert!(
        eventually(MINUTE, || saved.exists()),
        "the daemon never saved the file"
    );
    // The timer runs out (for the text a moment after the file: it was
    // received after it); nothing but the daemon touches the profile.
    let text_gone = || {
        count_in_copy(
            &bob,
            "SELECT count(*) FROM messages WHERE body LIKE '%flowerpot%'",
        ) == 0
    };
    assert!(
        eventually(MINUTE, || !saved.exists()
            && text_gone()
            && wal_len(&bob) == 0),
        "after the timer: file there {}, WAL of {} bytes",
        saved.exists(),
        wal_len(&bob)
    );
    let mut daemon = daemon;
    assert!(daemon.0.try_wait().unwrap().is_none(), "the daemon exited");
    for needle in [&contents[..], b"flowerpot-notes"] {
        assert_eq!(
            files_containing(&bob.dir, needle),
            Vec::<std::path::PathBuf>::new(),
            "{:?} is still in the profile",
            String::from_utf8_lossy(needle)
        );
    }
    assert_eq!(count_in_copy(&bob, "SELECT count(*) FROM attachments"), 0);
    assert_eq!(
        count_in_copy(
            &bob,
            "SELECT count(*) FROM messages WHERE body LIKE '%flowerpot%'"
        ),
        0
    );
    assert_eq!(
        count_in_copy(
            &bob,
            "SELECT count(*) FROM messages WHERE body = 'this one stays'"
        ),
        1
    );
    assert!(Path::new(&bob.dir).join("downloads").exists());
    drop(daemon);
}
