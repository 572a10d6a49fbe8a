//! Scenario `cluster`: one-to-one store-and-forward delivery to online
//! recipients, durable before the acknowledgement, through the real
//! `sotto-server` binary (release build) over real TLS, on three setups run
//! back to back with the same load:
//! 1. one node on the embedded SQLite store;
//! 2. one node on PostgreSQL;
//! 3. two nodes on PostgreSQL and NATS, every sender on node A and every
//!    recipient on node B (each message crosses nodes).
//!
//! The load generator speaks the protocol directly (it is not measuring the
//! client's MLS work): `pairs` senders each send opaque 300-byte payloads
//! (the size of an MLS application message with a short text) one after
//! the other, each waiting for the server's acknowledgement; their
//! recipients stay connected and acknowledge deliveries in batches.
//! Latency is from the start of a send to its delivery at the recipient.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sotto_client::ServerLink;
use sotto_client::transport::{Connection, Event};
use sotto_core::{AccountKey, DeviceKey};
use sotto_proto::{
    Blob, CommitRequest, GroupId, Handle, LoginRequest, MessageId, PROTOCOL_VERSION,
    RegisterRequest, Request, Response, SendRequest, WelcomeOut,
};
use sotto_test_support::ServerProcess;
use sotto_test_support::services::{NatsProcess, PgDatabase, free_port};

const PAYLOAD: usize = 300;

struct Device {
    account: AccountKey,
    device: DeviceKey,
    handle: Handle,
}

async fn register(
    link: &ServerLink,
    invite: String,
    name: &str,
) -> anyhow::Result<(Device, Connection)> {
    let d = Device {
        account: AccountKey::generate(),
        device: DeviceKey::generate(),
        handle: Handle::new(name)?,
    };
    let mut conn = Connection::connect(link).await?;
    let t = sotto_proto::register_transcript(
        &conn.hello().challenge,
        &d.handle,
        &d.account.id(),
        &d.device.id(),
    );
    let r = conn
        .request(Request::Register(Box::new(RegisterRequest {
            version: PROTOCOL_VERSION,
            handle: d.handle.clone(),
            account: d.account.id(),
            device: d.device.id(),
            invite: Some(invite),
            pow_nonce: None,
            account_signature: d.account.sign(&t),
            device_signature: d.device.sign(&t),
            device_list: d.account.sign_device_list(1, vec![d.device.id()]),
        })))
        .await?;
    anyhow::ensure!(matches!(r, Response::LoggedIn(_)), "register: {r:?}");
    Ok((d, conn))
}

async fn login(link: &ServerLink, d: &Device) -> anyhow::Result<Connection> {
    let mut conn = Connection::connect(link).await?;
    let t = sotto_proto::login_transcript(&conn.hello().challenge, &d.device.id());
    let r = conn
        .request(Request::Login(LoginRequest {
            version: PROTOCOL_VERSION,
            device: d.device.id(),
            signature: d.device.sign(&t),
        }))
        .await?;
    anyhow::ensure!(matches!(r, Response::LoggedIn(_)), "login: {r:?}");
    Ok(conn)
}

/// One setup's result.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) setup: &'static str,
    pub(crate) delivered: usize,
    pub(crate) per_second: f64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) max: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the load against senders' and recipients' links.
async fn load(
    send_link: &ServerLink,
    recv_link: &ServerLink,
    invites: Vec<String>,
    pairs: usize,
    duration: Duration,
) -> anyhow::Result<(usize, Vec<Duration>, Duration)> {
    let mut invites = invites.into_iter();
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for i in 0..pairs {
        let (s, mut sconn) = register(
            send_link,
            invites.next().unwrap_or_default(),
            &format!("sender{i}"),
        )
        .await?;
        let (r, rconn) = register(
            recv_link,
            invites.next().unwrap_or_default(),
            &format!("recipient{i}"),
        )
        .await?;
        drop(rconn);
        let mut g = [0u8; 32];
        g[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let g = GroupId(g);
        let resp = sconn
            .request(Request::Commit(CommitRequest {
                group: g,
                epoch: 0,
                msg_id: MessageId(rand::random()),
                commit: None,
                welcome: Some(WelcomeOut {
                    welcome: Blob(vec![0; PAYLOAD]),
                    recipients: vec![r.device.id()],
                }),
                members: vec![s.device.id(), r.device.id()],
            }))
            .await?;
        anyhow::ensure!(matches!(resp, Response::Committed { .. }), "{resp:?}");
        senders.push((sconn, g));
        receivers.push(r);
    }
    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // Recipients: connected before the senders start; they drain the Welcome.
    let mut listeners = Vec::new();
    for r in receivers {
        let mut conn = login(recv_link, &r).await?;
        let stop = stop.clone();
        listeners.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut acks = Vec::new();
            loop {
                let ev = tokio::time::timeout(Duration::from_millis(500), conn.next_event()).await;
                match ev {
                    Ok(Ok(Event::Deliver(d))) => {
                        let p = &d.envelope.payload.0;
                        if p.len() == PAYLOAD && p[8] == 1 {
                            let sent = u64::from_be_bytes(p[..8].try_into().unwrap_or_default());
                            let now = origin.elapsed().as_nanos() as u64;
                            lat.push(Duration::from_nanos(now.saturating_sub(sent)));
                        }
                        acks.push(d.seq);
                        if acks.len() >= 32 {
                            let seqs = std::mem::take(&mut acks);
                            let _ = conn.request(Request::Ack { seqs }).await;
                        }
                    }
                    Ok(Ok(Event::Synced)) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        if !acks.is_empty() {
                            let seqs = std::mem::take(&mut acks);
                            let _ = conn.request(Request::Ack { seqs }).await;
                        }
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                    }
                }
            }
            lat
        }));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (mut conn, g) in senders {
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while started.elapsed() < duration {
                let mut payload = vec![0u8; PAYLOAD];
                let t = origin.elapsed().as_nanos() as u64;
                payload[..8].copy_from_slice(&t.to_be_bytes());
                payload[8] = 1;
                let r = conn
                    .request(Request::Send(SendRequest {
                        group: g,
                        msg_id: MessageId(rand::random()),
                        payload: Blob(payload),
                        ttl_ms: None,
                    }))
                    .await;
                if matches!(r, Ok(Response::Accepted { .. })) {
                    n += 1;
                }
            }
            n
        }));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await?;
    }
    let elapsed = started.elapsed();
    // Give the last deliveries time to arrive, then stop the listeners.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let mut lat = Vec::new();
    for l in listeners {
        lat.extend(l.await?);
    }
    anyhow::ensure!(
        lat.len() == sent,
        "{} of {sent} acknowledged messages were delivered",
        lat.len()
    );
    Ok((sent, lat, elapsed))
}

fn row(setup: &'static str, (n, mut lat, elapsed): (usize, Vec<Duration>, Duration)) -> Row {
    lat.sort();
    Row {
        setup,
        delivered: n,
        per_second: n as f64 / elapsed.as_secs_f64(),
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        max: lat.last().copied().unwrap_or_default(),
    }
}

fn invites(server: &ServerProcess, n: usize) -> anyhow::Result<Vec<String>> {
    let mut c = std::process::Command::new(sotto_test_support::bin("sotto-server"));
    c.args(["invite", "--count", &n.to_string(), "--data"])
        .arg(&server.data)
        .args(server.store_args());
    let out = c.output()?;
    anyhow::ensure!(
        out.status.success(),
        "invite: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .map(str::to_owned)
        .collect())
}

/// A settings file that lets the load generator register all its devices
/// from one address (the per-source registration quota is for the public).
fn bench_config(dir: &std::path::Path) -> anyhow::Result<String> {
    let p = dir.join("bench.toml");
    std::fs::write(&p, "[limits]\nregistrations_per_source = 1000000\n")?;
    Ok(p.to_str().unwrap_or_default().to_owned())
}

/// Runs the three setups; `pairs` sender/recipient pairs for `secs` seconds each.
pub(crate) async fn run(pairs: usize, secs: u64) -> anyhow::Result<Vec<Row>> {
    let duration = Duration::from_secs(secs);
    let mut rows = Vec::new();

    {
        let tmp = tempfile::TempDir::new()?;
        let config = bench_config(tmp.path())?;
        let s = ServerProcess::start(&tmp.path().join("n"), &["--config", &config]);
        let link = ServerLink::parse(&s.link)?;
        let inv = invites(&s, 2 * pairs)?;
        rows.push(row(
            "1 node, SQLite",
            load(&link, &link, inv, pairs, duration).await?,
        ));
    }
    {
        let tmp = tempfile::TempDir::new()?;
        let db = tokio::task::spawn_blocking(PgDatabase::create).await?;
        let config = bench_config(tmp.path())?;
        let s = ServerProcess::start(
            &tmp.path().join("n"),
            &["--store", &db.url, "--config", &config],
        );
        let link = ServerLink::parse(&s.link)?;
        let inv = invites(&s, 2 * pairs)?;
        rows.push(row(
            "1 node, PostgreSQL",
            load(&link, &link, inv, pairs, duration).await?,
        ));
    }
    {
        let tmp = tempfile::TempDir::new()?;
        let db = tokio::task::spawn_blocking(PgDatabase::create).await?;
        let nats = tokio::task::spawn_blocking(NatsProcess::start).await?;
        let url = nats.url();
        let config = bench_config(tmp.path())?;
        let args = [
            "--store",
            db.url.as_str(),
            "--bus",
            url.as_str(),
            "--config",
            config.as_str(),
        ];
        let a_addr = format!("127.0.0.1:{}", free_port()).parse()?;
        let a = ServerProcess::start_on(&tmp.path().join("a"), a_addr, &args);
        let bdir = tmp.path().join("b");
        std::fs::create_dir_all(&bdir)?;
        for f in ["tls-cert.der", "tls-key.der"] {
            std::fs::copy(a.data.join(f), bdir.join(f))?;
        }
        let b_addr = format!("127.0.0.1:{}", free_port()).parse()?;
        let b = ServerProcess::start_on(&bdir, b_addr, &args);
        let inv = invites(&a, 2 * pairs)?;
        let (la, lb) = (ServerLink::parse(&a.link)?, ServerLink::parse(&b.link)?);
        rows.push(row(
            "2 nodes, PostgreSQL + NATS (cross-node)",
            load(&la, &lb, inv, pairs, duration).await?,
        ));
    }
    Ok(rows)
}

/// Prints the table.
pub(crate) fn print(rows: &[Row], pairs: usize, secs: u64) {
    println!(
        "{pairs} sender/recipient pairs, {secs} s per setup, {PAYLOAD}-byte payloads, each send waits for its acknowledgement\n"
    );
    println!(
        "| setup | delivered | msgs/s | ratio to 1 node SQLite | p50 (ms) | p99 (ms) | max (ms) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let base = rows.first().map_or(1.0, |r| r.per_second);
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
            r.setup,
            r.delivered,
            r.per_second,
            r.per_second / base,
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.max.as_secs_f64() * 1e3,
        );
    }
}
