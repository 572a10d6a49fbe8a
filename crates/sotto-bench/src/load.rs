//! The load generator's Sotto side, shared by every scenario that drives the
//! server: the real `sotto-server` binary started on a loopback port with
//! the bench's limits, devices registered through the real client
//! transport (`sotto_client::transport::Connection`: TLS 1.3 with the pinned
//! certificate, WebSocket, signed registration and login), two-member and
//! M-member groups set up with real MLS commits (which the server checks),
//! and the closed loops that send and receive.
//!
//! A send's timestamp travels in its message id (8 bytes of the load
//! generator's clock, 8 random bytes; ids are the sender's choice in the
//! protocol), so the payload is an untouched MLS ciphertext.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sotto_client::ServerLink;
use sotto_client::transport::{Connection, Event};
use sotto_proto::{
    Blob, EnvelopeKind, GroupId, LoginRequest, MessageId, PROTOCOL_VERSION, RegisterRequest,
    Request, Response, SendRequest,
};
use sotto_test_support::ServerProcess;

use crate::sys;

/// A registered device of the load generator, with an MLS state of its
/// own (the server checks every commit, so groups are made with real ones).
pub(crate) use sotto_test_support::mls::Member as Device;

/// The server's settings for benchmarks: the per-connection request rate
/// limit and the per-source caps (connections, registrations, lookups) are
/// lifted (one load generator on one address plays thousands of devices; a
/// real device never sends 1000 requests/s).
/// Everything else is the default an operator gets.
pub(crate) fn bench_config(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let p = dir.join("bench.toml");
    std::fs::write(
        &p,
        "[limits]\nrequests_per_second = 1000000.0\nrequest_burst = 1000000.0\n\
         max_connections_per_source = 1000000\nmax_connections = 1000000\nmailbox_max_messages = 1000000\n\
         registrations_per_source = 1000000\nlookups_per_source = 1000000\n",
    )?;
    Ok(p)
}

/// A running `sotto-server` for a scenario, pinned to the servers' CPUs.
pub(crate) struct Sotto {
    pub(crate) process: ServerProcess,
    pub(crate) link: ServerLink,
    /// Its admin endpoint (`/metrics`), on loopback.
    admin: std::net::SocketAddr,
    _tmp: Option<tempfile::TempDir>,
}

/// A free loopback address for a node's admin endpoint.
pub(crate) fn admin_addr() -> anyhow::Result<std::net::SocketAddr> {
    Ok(format!("127.0.0.1:{}", sotto_test_support::services::free_port()).parse()?)
}

impl Sotto {
    /// One node on the embedded SQLite store, in a temp directory on the
    /// working directory's disk (fsync costs what it costs there).
    pub(crate) fn sqlite(pinning: &sys::Pinning) -> anyhow::Result<Self> {
        let tmp = tempfile::tempdir_in(".")?;
        let mut s = Self::start(tmp.path(), &[], pinning)?;
        s._tmp = Some(tmp);
        Ok(s)
    }

    /// A node with `extra` flags, its data in `dir`.
    pub(crate) fn start(
        dir: &Path,
        extra: &[&str],
        pinning: &sys::Pinning,
    ) -> anyhow::Result<Self> {
        let bin = sotto_test_support::bin_dir().join("sotto-server");
        anyhow::ensure!(
            bin.exists(),
            "{} not built: build it first (cargo build --release -p sotto-server -p sotto-bench)",
            bin.display()
        );
        std::fs::create_dir_all(dir)?;
        let cfg = bench_config(dir)?;
        let admin = admin_addr()?;
        let admin_arg = admin.to_string();
        let mut args = vec![
            "--config",
            cfg.to_str().unwrap_or_default(),
            "--admin-listen",
            &admin_arg,
        ];
        args.extend_from_slice(extra);
        let process = ServerProcess::start(&dir.join("n"), &args);
        Self::adopt(process, admin, pinning)
    }

    /// A node started elsewhere (the cluster scenario's), pinned here.
    /// `admin` is the address it was given with `--admin-listen`.
    pub(crate) fn adopt(
        process: ServerProcess,
        admin: std::net::SocketAddr,
        pinning: &sys::Pinning,
    ) -> anyhow::Result<Self> {
        if let Some(pid) = process.pid() {
            sys::pin_server(pinning, pid);
        }
        let link = ServerLink::parse(&process.link)?;
        Ok(Self {
            process,
            link,
            admin,
            _tmp: None,
        })
    }

    /// Its `/metrics` now: each sample's value by its name and labels
    /// (`name{labels}`); empty if the node did not answer.
    pub(crate) fn metrics(&self) -> HashMap<String, f64> {
        let (status, body, _) = sotto_test_support::cluster::admin_get(self.admin, "/metrics");
        if status != 200 {
            return HashMap::new();
        }
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.process.pid().unwrap_or(0)
    }

    /// Restarts the server on the same data (a clean heap after setup).
    pub(crate) fn restart(&mut self, pinning: &sys::Pinning) {
        self.process.restart();
        if let Some(pid) = self.process.pid() {
            sys::pin_server(pinning, pid);
        }
    }

    /// `n` single-use invites from the server's store.
    pub(crate) fn invites(&self, n: usize) -> anyhow::Result<Vec<String>> {
        invites(&self.process, n)
    }
}

/// `n` single-use invites made with `sotto-server invite` on `server`'s store.
pub(crate) fn invites(server: &ServerProcess, n: usize) -> anyhow::Result<Vec<String>> {
    let mut c = std::process::Command::new(sotto_test_support::bin_dir().join("sotto-server"));
    c.args(["invite", "--count", &n.max(1).to_string(), "--data"])
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

async fn connect(link: &ServerLink, source: Option<IpAddr>) -> anyhow::Result<Connection> {
    Ok(match source {
        Some(ip) => Connection::connect_from(link, ip).await?,
        None => Connection::connect(link).await?,
    })
}

/// Registers a new device (account and device keys, signed transcript,
/// signed device list) and returns it with its logged-in connection.
pub(crate) async fn register(
    link: &ServerLink,
    source: Option<IpAddr>,
    invite: String,
    name: &str,
) -> anyhow::Result<(Device, Connection)> {
    let d = Device::new(name);
    let mut conn = connect(link, source).await?;
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

/// Logs a registered device in on a new connection (from `source` when given).
pub(crate) async fn login(
    link: &ServerLink,
    source: Option<IpAddr>,
    d: &Device,
) -> anyhow::Result<Connection> {
    let mut conn = connect(link, source).await?;
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

/// How many devices one commit adds when a big group is made (a commit
/// and its Welcome must fit in one frame).
const ADDS_PER_COMMIT: usize = 100;

/// Makes `group` of `creator` and `others` with real MLS commits (the
/// server checks them): a creation, then adds in batches. The others do
/// not join (the scenarios' receivers count ciphertexts, they do not read
/// them); their Welcomes wait in their mailboxes like any delivery.
pub(crate) async fn make_group(
    sender: &mut Connection,
    group: GroupId,
    creator: &Device,
    others: &[&Device],
) -> anyhow::Result<u64> {
    let mut batches = others.chunks(ADDS_PER_COMMIT);
    let first = batches.next().unwrap_or_default();
    let resp = sender
        .request(Request::Commit(creator.create(group, first)))
        .await?;
    let Response::Committed { mut epoch } = resp else {
        anyhow::bail!("{resp:?}");
    };
    creator.committed(group);
    for batch in batches {
        let resp = sender
            .request(Request::Commit(creator.add(group, batch)))
            .await?;
        let Response::Committed { epoch: now } = resp else {
            anyhow::bail!("{resp:?}");
        };
        epoch = now;
        creator.committed(group);
    }
    Ok(epoch)
}

/// The group id of pair or group `i`.
pub(crate) fn group_id(i: usize) -> GroupId {
    let mut g = [0u8; 32];
    g[..8].copy_from_slice(&(i as u64).to_be_bytes());
    GroupId(g)
}

/// A message id carrying the send time (ns since `origin`) and a sequence number.
pub(crate) fn stamped_id(origin: Instant, seq: u64) -> MessageId {
    stamped_id_at(origin.elapsed(), seq)
}

/// A message id stamped with the time `at` (since the origin) instead of now.
pub(crate) fn stamped_id_at(at: Duration, seq: u64) -> MessageId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&(at.as_nanos() as u64).to_be_bytes());
    id[8..].copy_from_slice(&seq.to_be_bytes());
    MessageId(id)
}

/// Open-loop arrival times (from the start of sending) for `rate` messages
/// a second over `duration`: a Poisson process (exponential gaps), from a
/// fixed seed so that every system gets the same schedule.
pub(crate) fn poisson_arrivals(rate: f64, duration: Duration, seed: u64) -> Vec<Duration> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut at = Duration::ZERO;
    let mut out = Vec::new();
    loop {
        // 1 - U is in (0, 1]: its logarithm is finite.
        let u: f64 = 1.0 - rng.r#gen::<f64>();
        at += Duration::from_secs_f64(-u.ln() / rate);
        if at >= duration {
            return out;
        }
        out.push(at);
    }
}

/// Writes the send time and sequence number into the first 16 bytes of a
/// comparator's payload (MQTT and NATS have no message ids).
pub(crate) fn stamp_payload(payload: &mut [u8], origin: Instant, seq: u64) {
    stamp_payload_at(payload, origin.elapsed(), seq);
}

/// The same, stamped with the time `at` (since the origin).
pub(crate) fn stamp_payload_at(payload: &mut [u8], at: Duration, seq: u64) {
    payload[..8].copy_from_slice(&(at.as_nanos() as u64).to_be_bytes());
    payload[8..16].copy_from_slice(&seq.to_be_bytes());
}

/// The send time and sequence number of a stamp; the latency to now.
pub(crate) fn read_stamp(stamp: &[u8], origin: Instant) -> (u64, Duration, Duration) {
    read_stamp_at(stamp, origin.elapsed().as_nanos() as u64)
}

/// The same, at `now` (ns since the stamps' origin, on whatever clock
/// stamped them: the `network` scenario's processes share the real-time
/// clock, not an `Instant`).
pub(crate) fn read_stamp_at(stamp: &[u8], now: u64) -> (u64, Duration, Duration) {
    let sent = u64::from_be_bytes(stamp[..8].try_into().unwrap_or_default());
    let seq = u64::from_be_bytes(stamp[8..16].try_into().unwrap_or_default());
    (
        seq,
        Duration::from_nanos(now.saturating_sub(sent)),
        Duration::from_nanos(now),
    )
}

/// What a receiver saw: (sequence number, latency, arrival since origin).
pub(crate) type Seen = Vec<(u64, Duration, Duration)>;

/// Receives application messages on `conn` until `stop` is set and nothing
/// arrived for a while, acknowledging in batches of 32.
pub(crate) async fn receive(
    mut conn: Connection,
    origin: Instant,
    stop: Arc<AtomicBool>,
    got: Arc<AtomicUsize>,
) -> Seen {
    let mut seen = Vec::new();
    let mut acks = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_millis(200), conn.next_event()).await;
        match ev {
            Ok(Ok(Event::Deliver(d))) => {
                if d.envelope.kind == EnvelopeKind::Application {
                    seen.push(read_stamp(&d.envelope.msg_id.0, origin));
                    got.fetch_add(1, Ordering::Relaxed);
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
    seen
}

/// Sends `payload` (as one of `group` at `epoch`: [`crate::payload::for_group`])
/// to `group` in a closed loop (each send waits for the
/// server's acknowledgement, which comes after the durable write) until
/// `duration` is over; returns how many were accepted.
pub(crate) async fn send_loop(
    mut conn: Connection,
    (group, epoch): (GroupId, u64),
    payload: Vec<u8>,
    origin: Instant,
    duration: Duration,
) -> usize {
    let payload = crate::payload::for_group(&payload, group, epoch);
    let started = Instant::now();
    let mut n = 0usize;
    let mut seq = 0u64;
    while started.elapsed() < duration {
        seq += 1;
        let r = conn
            .request(Request::Send(SendRequest {
                group,
                msg_id: stamped_id(origin, seq),
                payload: Blob(payload.clone()),
                ttl_ms: None,
            }))
            .await;
        if matches!(r, Ok(Response::Accepted { .. })) {
            n += 1;
        }
    }
    n
}

/// Sends one message at each of `arrivals` (from `start`, since `origin`),
/// open loop: each is stamped with its scheduled time, not the time it went
/// out, so a sender held up by a slow acknowledgement counts the wait in
/// every later message's latency (no coordinated omission). Returns how
/// many were acknowledged.
pub(crate) async fn send_paced(
    mut conn: Connection,
    (group, epoch): (GroupId, u64),
    payload: Vec<u8>,
    origin: Instant,
    start: Duration,
    arrivals: &[Duration],
) -> usize {
    let payload = crate::payload::for_group(&payload, group, epoch);
    let mut n = 0usize;
    for (i, at) in arrivals.iter().enumerate() {
        let due = start + *at;
        tokio::time::sleep_until((origin + due).into()).await;
        let r = conn
            .request(Request::Send(SendRequest {
                group,
                msg_id: stamped_id_at(due, i as u64 + 1),
                payload: Blob(payload.clone()),
                ttl_ms: None,
            }))
            .await;
        if matches!(r, Ok(Response::Accepted { .. })) {
            n += 1;
        }
    }
    n
}

/// The outcome of a load run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome {
    /// Messages the server acknowledged.
    pub(crate) sent: usize,
    /// Deliveries seen by recipients (sequence, latency, arrival).
    pub(crate) seen: Seen,
    /// From the first send to the last send's acknowledgement.
    pub(crate) elapsed: Duration,
    /// Server CPU seconds over the run.
    pub(crate) server_cpu: f64,
    /// Load generator cores used on average over the run.
    pub(crate) load_cores: f64,
    /// Bytes the server wrote to storage from the first send to the
    /// recipients' last acknowledgement ([`sys::DiskWatch`]).
    pub(crate) disk_bytes: u64,
}

/// Waits until `got` reaches `want` or `grace` passes, then sets `stop`.
pub(crate) async fn settle(got: &AtomicUsize, want: usize, grace: Duration, stop: &AtomicBool) {
    arrived(got, want, grace).await;
    stop.store(true, Ordering::SeqCst);
}

/// Waits until `got` reaches `want` or `grace` passes.
pub(crate) async fn arrived(got: &AtomicUsize, want: usize, grace: Duration) {
    let t = Instant::now();
    while got.load(Ordering::Relaxed) < want && t.elapsed() < grace {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One-to-one delivery: `pairs` senders (on `send_link`) each write to their
/// own recipient (on `recv_link`), online throughout, for `duration`.
pub(crate) async fn direct(
    send_link: &ServerLink,
    recv_link: &ServerLink,
    invites: Vec<String>,
    pairs: usize,
    duration: Duration,
    payload: &[u8],
    server_pids: &[u32],
) -> anyhow::Result<Outcome> {
    let mut invites = invites.into_iter();
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for i in 0..pairs {
        let (s, mut sconn) = register(
            send_link,
            None,
            invites.next().unwrap_or_default(),
            &format!("sender{i}"),
        )
        .await?;
        let (r, rconn) = register(
            recv_link,
            None,
            invites.next().unwrap_or_default(),
            &format!("recipient{i}"),
        )
        .await?;
        drop(rconn);
        let epoch = make_group(&mut sconn, group_id(i), &s, &[&r]).await?;
        senders.push((sconn, (group_id(i), epoch)));
        receivers.push(r);
    }
    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicUsize::new(0));
    let mut listeners = Vec::new();
    for r in &receivers {
        let conn = login(recv_link, None, r).await?;
        listeners.push(tokio::spawn(receive(
            conn,
            origin,
            stop.clone(),
            got.clone(),
        )));
    }
    let cpu: Vec<sys::CpuWatch> = server_pids
        .iter()
        .map(|p| sys::CpuWatch::start(*p))
        .collect();
    let disk: Vec<sys::DiskWatch> = server_pids
        .iter()
        .map(|p| sys::DiskWatch::start(*p))
        .collect();
    let me = sys::CpuWatch::me();
    let started = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|(conn, g)| tokio::spawn(send_loop(conn, g, payload.to_vec(), origin, duration)))
        .collect();
    let mut sent = 0;
    for t in tasks {
        sent += t.await?;
    }
    let elapsed = started.elapsed();
    let load_cores = me.cores();
    settle(&got, sent, Duration::from_secs(10), &stop).await;
    let server_cpu = cpu.iter().map(sys::CpuWatch::seconds).sum();
    let mut seen = Vec::new();
    for l in listeners {
        seen.extend(l.await?);
    }
    // After the recipients' last acknowledgements.
    let disk_bytes = disk.iter().map(sys::DiskWatch::bytes).sum();
    anyhow::ensure!(
        seen.len() == sent,
        "{} of {sent} acknowledged messages were delivered",
        seen.len()
    );
    Ok(Outcome {
        sent,
        seen,
        elapsed,
        server_cpu,
        load_cores,
        disk_bytes,
    })
}
