//! A client SIGKILLed again and again while it processes a backlog of
//! commits (membership changes, timer changes) and messages: afterwards its
//! MLS state and store are consistent. Every message is stored exactly
//! once, in each sender's order; every one is shown, none twice by one
//! run (display is at least once: a run killed between showing a message
//! and marking it shown shows it again next time, with the same id; the
//! count of those is printed); no epoch was lost
//! (it agrees with the other members on the group, reads what they send
//! next, and they read what it sends). The counts are printed (run with
//! `--nocapture`).

use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

use serde_json::Value;
use sotto_test_support::{Profile, World};

const ROUNDS: usize = 8;

/// (sender, text) of each JSON line; a line cut by a kill is skipped.
fn texts(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| {
            (
                v["sender"].as_str().unwrap_or_default().to_owned(),
                v["text"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn epoch(p: &Profile, name: &str) -> u64 {
    let out = p.sotto(&["groups", "--json"]).ok();
    let g: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|g| g["name"] == name)
        .collect();
    assert_eq!(g.len(), 1, "{out}");
    g[0]["epoch"].as_u64().unwrap()
}

#[test]
fn a_client_killed_while_processing_commits_loses_no_epoch_and_repeats_no_message() {
    let w = World::new(&[]);
    let (alice, bob, carol, dave) = (
        w.person("alice"),
        w.person("bob"),
        w.person("carol"),
        w.person("dave"),
    );
    alice
        .sotto(&["group", "create", "crew", "bob", "carol"])
        .ok();
    bob.sotto(&["receive"]).ok();
    carol.sotto(&["receive"]).ok();

    // Per round, a backlog for bob: a message from alice, a commit by alice
    // (the timer, or dave in or out), a message from carol, another from
    // alice. Bob's `receive` is killed right after it showed a message
    // (plus a few milliseconds), so it dies in the middle of the backlog,
    // often while applying the commit that follows.
    let mut sent: Vec<(String, String)> = Vec::new();
    let mut runs: Vec<Vec<(String, String)>> = Vec::new();
    let mut kills_while_running = 0;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for k in 0..ROUNDS {
        let a = format!("alice {k}");
        alice.sotto(&["send", "crew", &a]).ok();
        sent.push(("alice".into(), a));
        match k % 4 {
            0 => alice.sotto(&["disappear", "crew", "7d"]).ok(),
            1 => alice.sotto(&["group", "add", "crew", "dave"]).ok(),
            2 => alice.sotto(&["disappear", "crew", "off"]).ok(),
            _ => alice.sotto(&["group", "remove", "crew", "dave"]).ok(),
        };
        let c = format!("carol {k}");
        carol.sotto(&["send", "crew", &c]).ok();
        sent.push(("carol".into(), c));
        let a = format!("alice {k} again");
        alice.sotto(&["send", "crew", &a]).ok();
        sent.push(("alice".into(), a));

        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut child = bob.spawn(&["receive", "--json"]);
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() > 0 {
            std::thread::sleep(Duration::from_millis(x % 20));
            if child.try_wait().unwrap().is_none() {
                kills_while_running += 1;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        runs.push(texts(&(line + &rest)));
    }
    runs.push(texts(&bob.sotto(&["receive", "--json"]).ok()));
    let shown: Vec<(String, String)> = runs.iter().flatten().cloned().collect();

    // Stored: every message once, in each sender's order.
    let history = texts(&bob.sotto(&["history", "crew", "--json"]).ok());
    let mut duplicates = 0;
    let mut lost = 0;
    for m in &sent {
        match history.iter().filter(|h| *h == m).count() {
            0 => lost += 1,
            1 => {}
            n => duplicates += n - 1,
        }
    }
    for who in ["alice", "carol"] {
        let want: Vec<&(String, String)> = sent.iter().filter(|m| m.0 == who).collect();
        let got: Vec<&(String, String)> = history.iter().filter(|m| m.0 == who).collect();
        assert_eq!(got, want, "{who}'s messages out of order or missing");
    }
    // Shown: only what was sent, every message, none twice in one run.
    assert!(shown.iter().all(|m| sent.contains(m)), "{shown:?}");
    let never_shown = sent.iter().filter(|m| !shown.contains(m)).count();
    for run in &runs {
        let mut once = run.clone();
        once.sort();
        once.dedup();
        assert_eq!(
            once.len(),
            run.len(),
            "one run showed a message twice: {run:?}"
        );
    }
    let shown_again = shown.len() - (sent.len() - never_shown);
    println!(
        "client kills: {ROUNDS} ({kills_while_running} while running), messages sent: {}, stored: {}, shown: {}, duplicates: {duplicates}, lost: {lost}, never shown: {never_shown}, shown again after a kill: {shown_again}",
        sent.len(),
        history.len(),
        shown.len()
    );
    assert!(
        kills_while_running >= ROUNDS / 2,
        "only {kills_while_running} kills landed while bob was running"
    );
    assert_eq!((duplicates, lost, never_shown), (0, 0, 0));

    // No lost epoch: bob agrees with the others and talks both ways.
    carol.sotto(&["receive"]).ok();
    let e = epoch(&alice, "crew");
    assert_eq!(epoch(&bob, "crew"), e);
    assert_eq!(epoch(&carol, "crew"), e);
    bob.sotto(&["send", "crew", "bob after the crashes"]).ok();
    for p in [&alice, &carol] {
        assert!(
            texts(&p.sotto(&["receive", "--json"]).ok())
                .contains(&("bob".into(), "bob after the crashes".into()))
        );
    }
    alice.sotto(&["send", "crew", "alice after"]).ok();
    assert_eq!(
        texts(&bob.sotto(&["receive", "--json"]).ok()),
        [("alice".to_owned(), "alice after".to_owned())]
    );
    drop(dave);
}
