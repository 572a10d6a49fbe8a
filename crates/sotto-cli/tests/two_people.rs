//! Two people talk through the real `sotto-server` binary with the real
//! `sotto` binary, each in their own temp directory: registration with
//! invites, messages both ways, offline delivery, a SIGKILLed server, what
//! is on disk, and the errors a user sees.

use serde_json::Value;
use sotto_test_support::{Profile, World, files_containing, files_under};

fn receive_json(p: &Profile) -> Vec<Value> {
    p.sotto(&["receive", "--json"])
        .ok()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad json line {l:?}: {e}")))
        .collect()
}

/// The message lines of `receive` or `history` output (not the `* `
/// lines of conversation notices).
fn messages(out: &str) -> String {
    out.lines()
        .filter(|l| !l.starts_with("* "))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn texts(v: &[Value]) -> Vec<&str> {
    v.iter().map(|m| m["text"].as_str().unwrap()).collect()
}

#[test]
fn alice_and_bob_talk_both_ways() {
    let w = World::new(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");

    alice.sotto(&["send", "bob", "hello bob"]).ok();
    let got = receive_json(&bob);
    assert_eq!(got.len(), 1, "{got:?}");
    let m = &got[0];
    assert_eq!(m["text"], "hello bob");
    assert_eq!(m["sender"], "alice");
    assert_eq!(m["conversation"], "alice");
    assert_eq!(m["id"].as_str().unwrap().len(), 32);
    assert!(m["sent_at"].as_u64().unwrap() > 0);
    assert!(m["received_at"].as_u64().unwrap() >= m["sent_at"].as_u64().unwrap() - 5_000);

    bob.sotto(&["send", "alice", "hi alice"]).ok();
    let out = alice.sotto(&["receive"]).ok();
    assert_eq!(out, "bob: hi alice\n");

    // Text from standard input.
    alice
        .sotto_stdin(&["send", "bob", "-"], "from stdin\n")
        .ok();
    assert_eq!(texts(&receive_json(&bob)), ["from stdin"]);

    // The conversation is reused: one more message each way.
    alice.sotto(&["send", "bob", "again"]).ok();
    assert_eq!(texts(&receive_json(&bob)), ["again"]);
    assert!(alice.sotto(&["contacts"]).ok().starts_with("bob\t"));
    assert!(bob.sotto(&["contacts"]).ok().starts_with("alice\t"));
}

#[test]
fn offline_recipient_gets_every_message_once_in_order() {
    let w = World::new(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");
    for t in ["one", "two", "three"] {
        alice.sotto(&["send", "bob", t]).ok();
    }
    assert_eq!(texts(&receive_json(&bob)), ["one", "two", "three"]);
    assert!(receive_json(&bob).is_empty(), "messages shown twice");
}

#[test]
fn message_accepted_before_sigkill_is_delivered_once_after_restart() {
    let mut w = World::new(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");
    alice.sotto(&["send", "bob", "survives the crash"]).ok();
    w.server.kill9();
    bob.sotto(&["receive"]).fails_with("unreachable");
    w.server.restart();
    assert_eq!(texts(&receive_json(&bob)), ["survives the crash"]);
    assert!(receive_json(&bob).is_empty());
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn a_delivery_repeated_after_a_lost_ack_is_shown_once() {
    let mut w = World::new(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");
    alice.sotto(&["send", "bob", "only once"]).ok();
    // Snapshot the server while the message waits in bob's mailbox.
    w.server.kill9();
    let snapshot = w.root.join("snapshot");
    copy_dir(&w.server.data, &snapshot);
    w.server.restart();
    assert_eq!(texts(&receive_json(&bob)), ["only once"]);
    // Roll the server back to before bob's ack: it delivers the message again.
    w.server.kill9();
    std::fs::remove_dir_all(&w.server.data).unwrap();
    copy_dir(&snapshot, &w.server.data);
    w.server.restart();
    let again = bob.sotto(&["receive", "--json"]);
    assert_eq!(again.ok(), "", "a redelivered message was shown twice");
    assert_eq!(
        again.stderr(),
        "",
        "a redelivered message was reported as a failure"
    );
    // The conversation goes on.
    alice.sotto(&["send", "bob", "after"]).ok();
    assert_eq!(texts(&receive_json(&bob)), ["after"]);
}

#[test]
fn no_message_text_or_secret_on_disk() {
    let w = World::new(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");
    let secret_a = "the eagle lands at midnight";
    let secret_b = "bring the blue folder";
    alice.sotto(&["send", "bob", secret_a]).ok();
    // Bob is offline: the server holds the ciphertext now.
    let server_files = files_under(&w.server.data);
    assert!(!server_files.is_empty());
    for needle in [secret_a.as_bytes(), secret_b.as_bytes()] {
        assert!(files_containing(&w.server.data, needle).is_empty());
    }
    assert_eq!(texts(&receive_json(&bob)), [secret_a]);
    bob.sotto(&["send", "alice", secret_b]).ok();
    assert_eq!(texts(&receive_json(&alice)), [secret_b]);
    for dir in [&w.server.data, &alice.dir, &bob.dir] {
        for needle in [
            secret_a.as_bytes(),
            secret_b.as_bytes(),
            alice.passphrase.as_bytes(),
        ] {
            let hits = files_containing(dir, needle);
            assert!(hits.is_empty(), "plaintext found in {hits:?}");
        }
    }
    // The profile database is encrypted from its first byte: no SQLite header.
    for p in [&alice, &bob] {
        let db = std::fs::read(p.dir.join("sotto.db")).unwrap();
        assert!(
            !db.starts_with(b"SQLite format 3"),
            "profile database is not encrypted"
        );
    }
}

#[test]
fn both_write_first_at_the_same_moment_and_end_in_one_conversation() {
    let w = World::new(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| alice.sotto(&["send", "bob", "from alice"]));
        let b = s.spawn(|| bob.sotto(&["send", "alice", "from bob"]));
        (a.join().unwrap(), b.join().unwrap())
    });
    a.ok();
    b.ok();
    assert_eq!(texts(&receive_json(&bob)), ["from alice"]);
    assert_eq!(texts(&receive_json(&alice)), ["from bob"]);
    alice.sotto(&["send", "bob", "still one conversation"]).ok();
    assert_eq!(texts(&receive_json(&bob)), ["still one conversation"]);
}

#[test]
fn registration_errors_are_one_clear_line() {
    let w = World::new(&[]);
    let link = w.server.link.clone();
    let invite = w.server.invite();
    w.profile("alice")
        .sotto(&["register", &link, "--name", "alice", "--invite", &invite])
        .ok();
    // A used invite.
    w.profile("bob")
        .sotto(&["register", &link, "--name", "bob", "--invite", &invite])
        .fails_with("invalid invite code");
    // A made-up invite.
    w.profile("carol")
        .sotto(&[
            "register",
            &link,
            "--name",
            "carol",
            "--invite",
            "00112233445566778899aabbccddeeff",
        ])
        .fails_with("invalid invite code");
    // No invite on an invite-only server.
    w.profile("dave")
        .sotto(&["register", &link, "--name", "dave"])
        .fails_with("requires an invite code");
    // A taken handle.
    let fresh = w.server.invite();
    w.profile("eve")
        .sotto(&["register", &link, "--name", "alice", "--invite", &fresh])
        .fails_with("handle already taken");
    // Not a handle.
    w.profile("frank")
        .sotto(&["register", &link, "--name", "Frank!", "--invite", &fresh])
        .fails_with("a handle is 3 to 32 characters");
    // A bad link.
    w.profile("gina")
        .sotto(&["register", "http://example.org", "--name", "gina"])
        .fails_with("bad server link");
}

#[test]
fn client_refuses_a_server_whose_certificate_does_not_match_the_link() {
    let w = World::new(&[]);
    let (addr, _) = w.server.link.split_once('#').unwrap();
    let wrong = format!("{addr}#fp={}", "00".repeat(32));
    let invite = w.server.invite();
    w.profile("alice")
        .sotto(&["register", &wrong, "--name", "alice", "--invite", &invite])
        .fails_with("certificate does not match");
    // The invite was not spent by the refused attempt.
    w.profile("alice2")
        .sotto(&[
            "register",
            &w.server.link,
            "--name",
            "alice",
            "--invite",
            &invite,
        ])
        .ok();
}

#[test]
fn usage_errors_are_one_clear_line() {
    let w = World::new(&[]);
    let alice = w.person("alice");
    alice
        .sotto(&["send", "nobody", "hi"])
        .fails_with("unknown handle: nobody");
    alice
        .sotto(&["send", "alice", "hi"])
        .fails_with("cannot send to yourself");
    alice
        .sotto_with(&["receive"], "not the passphrase")
        .fails_with("wrong passphrase");
    w.profile("nobody-here")
        .sotto(&["receive"])
        .fails_with("run `sotto register` first");
    // A server that is not there.
    let (_, fp) = w.server.link.split_once('#').unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let invite = w.server.invite();
    w.profile("bob")
        .sotto(&[
            "register",
            &format!("sotto://127.0.0.1:{port}#{fp}"),
            "--name",
            "bob",
            "--invite",
            &invite,
        ])
        .fails_with("server unreachable");
}

#[test]
fn open_registration_needs_no_invite_but_a_proof_of_work() {
    let w = World::new(&["--registration", "open", "--pow-bits", "10"]);
    let alice = w.profile("alice");
    alice
        .sotto(&["register", &w.server.link, "--name", "alice"])
        .ok();
    let bob = w.person("bob"); // an invite is still accepted
    alice.sotto(&["send", "bob", "open door"]).ok();
    assert_eq!(texts(&receive_json(&bob)), ["open door"]);
}

#[test]
fn classical_suite_is_selectable_and_mixes_with_post_quantum() {
    let w = World::new(&[]);
    let classic = |name: &str| {
        let p = w.profile(name);
        let invite = w.server.invite();
        p.sotto(&[
            "register",
            &w.server.link,
            "--name",
            name,
            "--invite",
            &invite,
            "--suite",
            "x25519",
        ])
        .ok();
        p
    };
    let alice = classic("alice");
    let bob = classic("bob");
    let carol = w.person("carol"); // post-quantum
    alice.sotto(&["send", "bob", "classic"]).ok();
    assert_eq!(texts(&receive_json(&bob)), ["classic"]);
    // A conversation takes the invitee's suite, whoever starts it.
    alice.sotto(&["send", "carol", "to pq"]).ok();
    assert_eq!(texts(&receive_json(&carol)), ["to pq"]);
    carol.sotto(&["send", "bob", "to classic"]).ok();
    assert_eq!(texts(&receive_json(&bob)), ["to classic"]);
}

#[test]
fn a_profile_restored_from_an_old_backup_says_so_and_rejoins() {
    let w = World::new(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");
    alice.sotto(&["send", "bob", "before the backup"]).ok();
    assert_eq!(bob.sotto(&["receive"]).ok(), "alice: before the backup\n");
    let backup = bob.dir.with_file_name("bob-backup");
    copy_dir(&bob.dir, &backup);
    // The conversation moves on (a commit: the timer), then bob's
    // profile is restored from the copy.
    alice.sotto(&["disappear", "bob", "1d"]).ok();
    alice.sotto(&["send", "bob", "after the backup"]).ok();
    bob.sotto(&["receive"]).ok();
    std::fs::remove_dir_all(&bob.dir).unwrap();
    copy_dir(&backup, &bob.dir);

    alice.sotto(&["send", "bob", "while bob is lost"]).ok();
    // bob cannot read it: he says so and rejoins from the server's state.
    let r = bob.sotto(&["receive"]);
    assert_eq!(r.ok(), "");
    assert!(r.stderr().contains("lost its state"), "{}", r.stderr());
    assert!(r.stderr().contains("rejoined"), "{}", r.stderr());
    assert!(r.stderr().contains("could not be read"), "{}", r.stderr());
    alice.sotto(&["receive"]).ok();
    alice.sotto(&["send", "bob", "welcome back"]).ok();
    assert_eq!(bob.sotto(&["receive"]).ok(), "alice: welcome back\n");
    bob.sotto(&["send", "alice", "thanks"]).ok();
    assert_eq!(alice.sotto(&["receive"]).ok(), "bob: thanks\n");
}

/// C11: a text that tries to retitle the terminal, clear it, ring the
/// bell, and overwrite its line with `\r` is printed by `receive` and
/// `history` with its controls as visible escapes (the chat app's test,
/// `hostile_text_is_drawn_with_its_controls_visible`, draws the same
/// text); `--json` gives it exactly as sent.
#[test]
fn hostile_text_is_shown_visible_on_the_terminal_and_exact_in_json() {
    use sotto_cli::display::{HOSTILE, visible};
    let w = World::new(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");
    alice.sotto(&["send", "bob", HOSTILE]).ok();
    alice
        .sotto(&["send", "bob", "line one\nbob: line two"])
        .ok();
    let shown = messages(&bob.sotto(&["receive"]).ok());
    assert_eq!(
        shown,
        format!(
            "alice: {}\nalice: line one\\nbob: line two\n",
            visible(HOSTILE)
        )
    );
    assert!(shown.starts_with("alice: hi\\e]0;pwned\\x07\\e[2J\\u{9b}31m\\u{202e}gnp.exe\\rbank"));
    let history = messages(&bob.sotto(&["history", "alice"]).ok());
    assert_eq!(history, shown);
    for out in [&shown, &history] {
        let raw: Vec<char> = out
            .chars()
            .filter(|c| *c != '\n' && sotto_client::names::hides_text(*c))
            .collect();
        assert!(raw.is_empty(), "printed as is: {raw:?}");
    }
    // JSON is exact.
    let json: Vec<Value> = bob
        .sotto(&["history", "alice", "--json"])
        .ok()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(texts(&json), [HOSTILE, "line one\nbob: line two"]);
}

/// A text of only spaces, tabs and newlines is refused like an empty one,
/// from the argument and from standard input; nothing is sent.
#[test]
fn a_text_of_only_whitespace_is_refused() {
    let w = World::new(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");
    alice.sotto(&["send", "bob", "first"]).ok();
    alice
        .sotto(&["send", "bob", "  \t \n "])
        .fails_with("empty message");
    alice
        .sotto_stdin(&["send", "bob", "-"], " \n\n\t\n")
        .fails_with("empty message");
    alice
        .sotto(&["send", "bob", ""])
        .fails_with("empty message");
    bob.sotto(&["receive"]).ok();
    let history: Vec<Value> = bob
        .sotto(&["history", "alice", "--json"])
        .ok()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(texts(&history), ["first"]);
}

/// A ciphertext altered on the server is dropped with one line of
/// `sotto:` on stderr; the libraries' own log lines (openmls's, coloured)
/// stay off the terminal unless SOTTO_LOG asks for them.
#[test]
fn a_tampered_message_is_one_line_on_stderr_and_no_library_log() {
    let w = World::new(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");
    alice.sotto(&["send", "bob", "first"]).ok();
    assert_eq!(messages(&bob.sotto(&["receive"]).ok()), "alice: first\n");
    alice.sotto(&["send", "bob", "second"]).ok();
    let db = w.server_db();
    let (row, mut altered): (i64, Vec<u8>) = db
        .query_row(
            "SELECT rowid, payload FROM messages WHERE kind = 0 ORDER BY rowid DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    // A bit of the ciphertext, near its end (the AEAD tag).
    let at = altered.len() - 3;
    altered[at] ^= 0x40;
    db.execute(
        "UPDATE messages SET payload = ?1 WHERE rowid = ?2",
        rusqlite::params![altered, row],
    )
    .unwrap();
    let r = bob.sotto(&["receive"]);
    assert_eq!(messages(&r.ok()), "");
    let stderr = r.stderr();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("sotto: dropped a message that could not be processed"),
        "{stderr}"
    );
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
}

#[test]
fn a_failed_registration_leaves_the_profile_free() {
    let w = World::new(&[]);
    let alice = w.person("alice");
    let (addr, fp) = w.server.link.split_once('#').unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let wrong_port = format!("sotto://127.0.0.1:{port}#{fp}");
    let wrong_cert = format!("{addr}#fp={}", "00".repeat(32));
    let invite = w.server.invite();
    let bob = w.profile("bob");
    let register = |link: &str, name: &str| {
        bob.sotto(&["register", link, "--name", name, "--invite", &invite])
    };
    register(&wrong_port, "bob").fails_with("server unreachable");
    register(&wrong_cert, "bobby").fails_with("certificate does not match");
    register(&w.server.link, "alice").fails_with("handle already taken");
    bob.sotto(&["receive"])
        .fails_with("run `sotto register` first");
    // Any handle, any server: the next attempt just works.
    register(&w.server.link, "bob").ok();
    alice.sotto(&["send", "bob", "welcome"]).ok();
    let got = bob.sotto(&["receive"]).ok();
    assert!(got.ends_with("alice: welcome\n"), "{got}");

    // A profile whose registration failed can be linked instead.
    let invite = w.server.invite();
    w.profile("alice-laptop")
        .sotto(&[
            "register",
            &wrong_port,
            "--name",
            "x-y-z",
            "--invite",
            &invite,
        ])
        .fails_with("server unreachable");
    let laptop = w.link_device(&alice, "alice-laptop");
    laptop.sotto(&["send", "bob", "from the laptop"]).ok();
    let got = bob.sotto(&["receive"]).ok();
    assert!(got.ends_with("alice: from the laptop\n"), "{got}");
}

/// `--version` names the commit the binaries were built from (what a
/// member compares with a published release, docs/OPERATING.md).
#[test]
fn the_version_names_the_commit_built_from() {
    // Outside a git checkout (a source archive) the build cannot know it.
    let head = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |o| String::from_utf8(o.stdout).unwrap().trim().to_owned(),
        );
    for name in ["sotto", "sotto-server"] {
        let out = std::process::Command::new(sotto_test_support::bin(name))
            .arg("--version")
            .output()
            .unwrap();
        let v = String::from_utf8(out.stdout).unwrap();
        let want = format!(
            "{name} {} (commit {head}; rustc ",
            env!("CARGO_PKG_VERSION")
        );
        assert!(v.starts_with(&want), "{name}: {v:?}");
    }
}
