//! Scenario `clients`: what a message costs the clients themselves. Two
//! real `sotto-client` profiles (on-disk SQLCipher stores, in a temporary
//! directory on the working directory's disk) talk through a real
//! `sotto-server` process, one-to-one (N = 2) or in a group of N members;
//! the other N - 2 members are raw devices that only published a
//! KeyPackage (they never read, and cost the clients nothing but their
//! leaves). Each client is long-running: it keeps its profile open and
//! its groups loaded, as the daemon and the chat app do.
//!
//! Reported per suite and size, over a run of messages of 300 bytes:
//! - the sender's CPU per message (its `send` calls on its kept
//!   connection, as the daemon and the chat app send: encryption, the
//!   store's transaction, TLS) and the recipient's CPU per message (it
//!   comes online and takes the whole backlog: decryption, the store, the
//!   acks), measured as this process's CPU while only that client works
//!   (the server is another process);
//! - the time of one `send` call, and the time from the send call to the
//!   message in the recipient's updates (`pushed`, `process_pushed`), one
//!   message at a time, both online;
//! - the bytes each side wrote to disk per message (`write_bytes` of
//!   `/proc/self/io`: what reached the block layer, WAL and checkpoints
//!   included);
//! - how often each side loaded a group's state from its store during
//!   the run (0 once the group is held).
//!
//! The comparison, in the same run on the same clients and group: each
//! group loaded from the store for each operation (`Limit { groups: 0 }`),
//! as every client did before issue 15 and one-shot commands may still.

use std::time::{Duration, Instant};

use sotto_client::{Client, ReceiveEvent, RegisterOptions, Suite};
use sotto_proto::{Blob, Handle, Request, Response, UploadKeyPackages};

use crate::load::{self, Sotto};
use crate::report::{Table, percentile};
use crate::{Ctx, sys};

const PASS: &str = "bench passphrase";
const TEXT_BYTES: usize = 300;
/// Members a commit adds at most when the group is made (a commit and
/// its Welcome must fit in one frame).
const ADDS_PER_COMMIT: usize = 100;

struct Row {
    messages: usize,
    send_cpu: Duration,
    receive_cpu: Duration,
    send_call: Duration,
    e2e_p50: Duration,
    e2e_p99: Duration,
    send_disk: f64,
    receive_disk: f64,
    send_loads: u64,
    receive_loads: u64,
}

/// Bytes this process has caused to be written to storage so far.
fn written() -> u64 {
    sys::written_bytes(std::process::id())
}

fn cpu_now() -> f64 {
    sys::cpu_seconds(std::process::id())
}

async fn register(
    s: &Sotto,
    dir: &std::path::Path,
    name: &str,
    invite: String,
    suite: Suite,
) -> anyhow::Result<Client> {
    let opts = RegisterOptions {
        link: s.link.clone(),
        handle: Handle::new(name)?,
        invite: Some(invite),
        suite,
    };
    Ok(Client::register(&dir.join(name), PASS, opts).await?)
}

/// A raw member: registered, with one KeyPackage of `suite` on the server.
async fn crowd_member(s: &Sotto, invite: String, name: &str, suite: Suite) -> anyhow::Result<()> {
    let (d, mut conn) = load::register(&s.link, None, invite, name).await?;
    let p = openmls_libcrux_crypto::Provider::new()?;
    let mut kp = sotto_core::mls::key_packages(&p, &d.me(), &d.device, suite, 1)?;
    let r = conn
        .request(Request::UploadKeyPackages(UploadKeyPackages {
            key_packages: vec![Blob(kp.remove(0))],
            last_resort: None,
        }))
        .await?;
    anyhow::ensure!(
        matches!(r, Response::KeyPackagesStored { .. }),
        "upload: {r:?}"
    );
    conn.close().await;
    Ok(())
}

/// Bob receives his backlog; the number of messages it held.
async fn receive_all(bob: &mut Client) -> anyhow::Result<usize> {
    let mut got = 0;
    bob.receive(Duration::ZERO, |ev| {
        if let ReceiveEvent::Message(_) = ev {
            got += 1;
        }
    })
    .await?;
    Ok(got)
}

/// One setup of `n` members on `suite`, measured with the groups held
/// and, on the same clients, loaded for each operation.
async fn rows(
    ctx: &Ctx,
    suite: Suite,
    n: usize,
    messages: usize,
) -> anyhow::Result<[(Suite, usize, bool, Row); 2]> {
    let s = Sotto::sqlite(&ctx.pinning)?;
    let tmp = tempfile::tempdir_in(".")?;
    let mut inv = s.invites(n)?.into_iter();
    let mut next_invite = || inv.next().unwrap_or_default();
    let mut alice = register(&s, tmp.path(), "alice", next_invite(), suite).await?;
    let mut bob = register(&s, tmp.path(), "bob", next_invite(), suite).await?;
    let crowd: Vec<String> = (0..n.saturating_sub(2))
        .map(|i| format!("member{i}"))
        .collect();
    for name in &crowd {
        crowd_member(&s, next_invite(), name, suite).await?;
    }
    let target = if n <= 2 {
        "bob".to_owned()
    } else {
        let first: Vec<&str> = std::iter::once("bob")
            .chain(crowd.iter().map(String::as_str))
            .take(ADDS_PER_COMMIT - 1)
            .collect();
        alice.group_create("bench", &first).await?;
        for batch in crowd[first.len() - 1..].chunks(ADDS_PER_COMMIT) {
            let batch: Vec<&str> = batch.iter().map(String::as_str).collect();
            alice.group_add("bench", &batch).await?;
        }
        "bench".to_owned()
    };
    let text = "x".repeat(TEXT_BYTES);
    // Warm-up: the conversation exists on both sides and both hold it.
    for _ in 0..3 {
        alice.send(&target, &text).await?;
    }
    anyhow::ensure!(receive_all(&mut bob).await? == 3, "bob missed the warm-up");
    let bob_target = if n <= 2 { "alice" } else { "bench" };
    bob.send(bob_target, "ready").await?;
    alice.receive(Duration::ZERO, |_| {}).await?;
    let held = measure(&mut alice, &mut bob, &target, &text, messages).await?;
    // The comparison: the same clients, each group loaded for each operation.
    let none = sotto_core::mls::Limit {
        groups: 0,
        leaves: 0,
    };
    alice.set_group_limit(none);
    bob.set_group_limit(none);
    let loaded = measure(&mut alice, &mut bob, &target, &text, messages).await?;
    Ok([(suite, n, true, held), (suite, n, false, loaded)])
}

async fn measure(
    alice: &mut Client,
    bob: &mut Client,
    target: &str,
    text: &str,
    messages: usize,
) -> anyhow::Result<Row> {
    // The sender alone, online as the daemon is (one kept connection).
    bob.go_offline().await;
    alice.go_online().await?;
    let (loads, disk, cpu, t) = (alice.group_loads(), written(), cpu_now(), Instant::now());
    for _ in 0..messages {
        alice.send(target, text).await?;
    }
    let send_call = t.elapsed() / messages as u32;
    let send_cpu = Duration::from_secs_f64((cpu_now() - cpu) / messages as f64);
    let send_disk = (written() - disk) as f64 / messages as f64;
    let send_loads = alice.group_loads() - loads;

    // The recipient alone: it comes online and takes the backlog.
    let (loads, disk, cpu) = (bob.group_loads(), written(), cpu_now());
    let got = bob.go_online().await?.messages.len();
    anyhow::ensure!(got == messages, "bob received {got} of {messages}");
    let receive_cpu = Duration::from_secs_f64((cpu_now() - cpu) / messages as f64);
    let receive_disk = (written() - disk) as f64 / messages as f64;
    let receive_loads = bob.group_loads() - loads;

    // End to end, one message at a time, both online: from alice's send
    // call to the message in bob's updates.
    let mut each = Vec::new();
    for k in 0..messages.min(50) + 2 {
        let t = Instant::now();
        let send = alice.send(target, text);
        let arrive = async {
            loop {
                bob.pushed().await?;
                if !bob.process_pushed().await?.messages.is_empty() {
                    return anyhow::Ok(Instant::now());
                }
            }
        };
        let (sent, at) = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::join!(send, arrive)
        })
        .await?;
        sent?;
        if k >= 2 {
            each.push(at? - t);
        }
    }
    each.sort();
    Ok(Row {
        messages,
        send_cpu,
        receive_cpu,
        send_call,
        e2e_p50: percentile(&each, 0.5),
        e2e_p99: percentile(&each, 0.99),
        send_disk,
        receive_disk,
        send_loads,
        receive_loads,
    })
}

fn ms3(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

pub(crate) async fn run(ctx: &Ctx, sizes: &[usize], messages: usize) -> anyhow::Result<Vec<Table>> {
    let mut t = Table::new(
        "clients",
        "What a message costs the clients (on-disk SQLCipher stores), groups held and loaded each time",
        &[
            "suite",
            "members",
            "groups",
            "messages",
            "sender CPU ms/msg",
            "recipient CPU ms/msg",
            "send call ms",
            "send→shown p50 ms",
            "send→shown p99 ms",
            "sender disk KB/msg",
            "recipient disk KB/msg",
            "state loads (sender/recipient)",
        ],
    );
    for suite in [Suite::PostQuantum, Suite::Classical] {
        for &n in sizes {
            for (suite, n, held, r) in rows(ctx, suite, n.max(2), messages).await? {
                t.row(vec![
                    suite.name().to_owned(),
                    n.to_string(),
                    if held { "held" } else { "loaded each time" }.to_owned(),
                    r.messages.to_string(),
                    ms3(r.send_cpu),
                    ms3(r.receive_cpu),
                    ms3(r.send_call),
                    ms3(r.e2e_p50),
                    ms3(r.e2e_p99),
                    format!("{:.1}", r.send_disk / 1024.0),
                    format!("{:.1}", r.receive_disk / 1024.0),
                    format!("{}/{}", r.send_loads, r.receive_loads),
                ]);
            }
        }
    }
    t.note(format!(
        "{TEXT_BYTES}-byte texts; CPU is this process's while one client works (the server is another process); \
         disk is /proc/self/io write_bytes; targets (issue 15): encrypt and decrypt ≤ 0.3 ms, \
         one-to-one sender + recipient ≤ 1 ms"
    ));
    Ok(vec![t])
}
