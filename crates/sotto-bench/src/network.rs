//! Scenario `network`: a day's peak on EncroChat's scale (issue 21).
//! 60,000 devices connected at once, most of them idle, and open-loop
//! traffic (Poisson arrivals) at 1,000 messages/s in all: 80% one-to-one,
//! 15% to groups of 10, 4% to groups of 100 and 1% to groups of 1,000,
//! about 16,000 deliveries/s.
//!
//! No process here may hold more than the open-files limit (20,000 on
//! this machine), so the devices are spread over several server nodes on
//! one PostgreSQL store and one NATS bus, each device connected straight
//! to its node (as a load balancer would spread them), and over several
//! load-generator processes (this binary, `__network-worker`). The
//! largest single node the limit allows runs the same traffic on SQLite.
//!
//! Each worker owns a slice of the devices, spread over every node, and
//! the conversations among them: every group has members on every node,
//! so most deliveries cross nodes. A worker registers its devices (real
//! TLS, signed registration), makes its conversations with real MLS
//! commits, says it is ready, and at the common start sends its share of
//! the schedule: each message is stamped with its scheduled time, so a
//! late send counts its delay. Every device acknowledges what it gets,
//! as a client does. A worker reports each delivery's time from the
//! scheduled send to its arrival, and counts, for every message the
//! server acknowledged, the recipients it reached: none may be missing or
//! reached twice.
//!
//! Workers and this process share the machine's real-time clock: a stamp
//! is nanoseconds since the run's epoch, read in each process.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sotto_client::ServerLink;
use sotto_client::transport::{Connection, Event};
use sotto_proto::{Blob, EnvelopeKind, GroupId, Request, Response, SendRequest};
use sotto_test_support::services::{NatsProcess, PgDatabase};

use crate::load::{self, Device, Sotto};
use crate::report::{Table, ms, percentile};
use crate::{Ctx, cluster, payload, sys};

/// Open files each process needs besides its devices' connections.
const MARGIN: usize = 1000;

/// The traffic mix: each class's group size (2: one-to-one) and share of
/// the messages.
const MIX: [(usize, f64); 4] = [(2, 0.80), (10, 0.15), (100, 0.04), (1000, 0.01)];

/// Conversations of each class of [`MIX`] that one worker makes.
const CONVERSATIONS: [usize; 4] = [1000, 50, 10, 2];
const QUICK_CONVERSATIONS: [usize; 4] = [20, 4, 1, 1];

/// Devices one worker registers at once (the key directory publishes a
/// batch of registrations per epoch: more at once, bigger batches).
const REGISTER_AT_ONCE: usize = 256;
/// Conversations one worker makes at once. Few: a commit that adds 100
/// members to a large group sends each of them a Welcome of about a
/// megabyte (the tree rides beside it), and every node holds a copy per
/// connection until the socket takes it (BENCHMARKS.md, "network").
const GROUPS_AT_ONCE: usize = 2;
/// How long stragglers may take after the last scheduled send.
const GRACE: Duration = Duration::from_secs(30);

/// Nanoseconds since `epoch` on the real-time clock (every process reads
/// the same clock).
fn since(epoch: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    now.saturating_sub(epoch)
}

/// What one setup's run measured.
#[derive(Debug, Default)]
struct Outcome {
    devices: usize,
    workers: usize,
    sizes: Vec<usize>,
    scheduled: usize,
    sent: usize,
    expected: usize,
    delivered: usize,
    lost: usize,
    duplicates: usize,
    latencies: Vec<Duration>,
    window: Duration,
    nodes_cpu: f64,
    helpers_cpu: f64,
    node_rss_kib: Vec<u64>,
    setup_rss_kib: u64,
    helpers_pss_kib: u64,
    disk_bytes: u64,
    load_cpu: f64,
    setup: Duration,
}

/// The sizes of one run.
#[derive(Debug, Clone, Copy)]
struct Size {
    devices: usize,
    nodes: usize,
    workers: usize,
    rate: f64,
    secs: u64,
    conversations: [usize; 4],
}

/// Scenario `network`: the cluster at `devices` (60,000 by default), then
/// the largest single SQLite node, each for `secs` seconds of traffic.
pub(crate) async fn run(
    ctx: &Ctx,
    devices: Option<usize>,
    secs: Option<u64>,
) -> anyhow::Result<Vec<Table>> {
    let files = sys::open_files_limit() as usize;
    let per_process = files.saturating_sub(MARGIN);
    anyhow::ensure!(
        per_process >= 100,
        "open-files limit {files} leaves no room for devices"
    );
    let (devices, single, rate, secs, conversations) = if ctx.quick {
        (
            devices.unwrap_or(500),
            250,
            40.0,
            secs.unwrap_or(3),
            QUICK_CONVERSATIONS,
        )
    } else {
        let single = (per_process / 1000) * 1000;
        (
            devices.unwrap_or(60_000),
            single,
            1000.0,
            secs.unwrap_or(60),
            CONVERSATIONS,
        )
    };
    let spread = devices.div_ceil(per_process).max(2);
    let cluster = Size {
        devices,
        nodes: spread,
        workers: spread,
        rate,
        secs,
        conversations,
    };
    let alone = Size {
        devices: single.min(per_process),
        nodes: 1,
        workers: single.div_ceil(per_process).max(2),
        rate,
        secs,
        conversations,
    };
    let mut rows = Vec::new();
    {
        let tmp = tempfile::tempdir_in(".")?;
        let db = tokio::task::spawn_blocking(PgDatabase::create).await?;
        let nats = tokio::task::spawn_blocking(NatsProcess::start).await?;
        let nodes = cluster::start_nodes(
            tmp.path(),
            cluster.nodes,
            &db.url,
            &nats.url(),
            &ctx.pinning,
        )?;
        let mut helpers = sys::pids_named("postgres");
        helpers.extend(nats.pid());
        let name = format!("{} nodes, PostgreSQL + NATS", cluster.nodes);
        rows.push((
            name,
            cluster,
            measured(ctx, one(&nodes, &helpers, cluster).await)?,
        ));
    }
    {
        let s = Sotto::sqlite(&ctx.pinning)?;
        let o = one(std::slice::from_ref(&s), &[], alone).await;
        rows.push(("1 node, SQLite".to_owned(), alone, measured(ctx, o)?));
    }
    let mut t = Table::new(
        "network",
        "EncroChat's peak: devices connected at once, open-loop mix (80% one-to-one, 15% groups of 10, 4% of 100, 1% of 1000)",
        &[
            "setup",
            "devices",
            "group sizes",
            "messages/s",
            "messages acked",
            "deliveries/s",
            "not delivered 30 s after the schedule",
            "delivered twice",
            "p50 (ms)",
            "p99 (ms)",
            "p999 (ms)",
            "server nodes CPU (cores)",
            "PostgreSQL + NATS CPU (cores)",
            "RSS per node, max (MiB)",
            "RSS nodes total after setup (MiB)",
            "RSS nodes total after traffic (MiB)",
            "PostgreSQL + NATS PSS (MiB)",
            "disk written per message (KB)",
            "load generator cores",
        ],
    );
    for (name, size, o) in &rows {
        let o = match o {
            Ok(o) => o,
            Err(e) => {
                let mut row = vec![
                    format!("{name}, {} load processes", size.workers),
                    size.devices.to_string(),
                    format!("failed: {e}"),
                ];
                row.resize(t.columns.len(), "—".into());
                t.row(row);
                continue;
            }
        };
        let window = o.window.as_secs_f64().max(1e-9);
        let sizes: Vec<String> = o.sizes.iter().map(ToString::to_string).collect();
        t.row(vec![
            format!("{name}, {} load processes", o.workers),
            o.devices.to_string(),
            sizes.join("/"),
            format!("{:.0}", o.scheduled as f64 / secs as f64),
            o.sent.to_string(),
            format!("{:.0}", o.delivered as f64 / secs as f64),
            o.lost.to_string(),
            o.duplicates.to_string(),
            ms(percentile(&o.latencies, 0.5)),
            ms(percentile(&o.latencies, 0.99)),
            ms(percentile(&o.latencies, 0.999)),
            format!("{:.2}", o.nodes_cpu / window),
            format!("{:.2}", o.helpers_cpu / window),
            format!(
                "{:.0}",
                o.node_rss_kib.iter().max().copied().unwrap_or(0) as f64 / 1024.0
            ),
            format!("{:.0}", o.setup_rss_kib as f64 / 1024.0),
            format!("{:.0}", o.node_rss_kib.iter().sum::<u64>() as f64 / 1024.0),
            format!("{:.0}", o.helpers_pss_kib as f64 / 1024.0),
            format!("{:.1}", o.disk_bytes as f64 / 1000.0 / o.sent.max(1) as f64),
            format!("{:.2}", o.load_cpu / window),
        ]);
    }
    let setup: Vec<String> = rows
        .iter()
        .filter_map(|(n, _, o)| {
            Some(format!(
                "{n}: {:.0} s",
                o.as_ref().ok()?.setup.as_secs_f64()
            ))
        })
        .collect();
    t.note(format!(
        "{secs} s of Poisson arrivals at {rate:.0} msgs/s in all; latency from each message's scheduled send to each recipient device (a late send counts its delay); every device acknowledges what it gets; not delivered = recipients of acknowledged messages not reached 30 s after the last scheduled send (a backlog still draining counts here); CPU and disk over the sending window and its drain; disk = bytes the nodes, PostgreSQL and NATS wrote (write_bytes) per acknowledged message; the machine's PostgreSQL and NATS share the nodes' CPUs, the load processes share one CPU; setup (registration, MLS groups, not measured): {}",
        setup.join(", ")
    ));
    Ok(vec![t])
}

/// A setup's outcome for the table: with `--quick` (CI) a failure fails
/// the scenario; in a full run it is a result, shown in its row (the
/// other setup still runs).
/// With `--quick` a message lost or delivered twice fails it too: at 40
/// msgs/s every delivery has long arrived when the 30 s are over.
fn measured(ctx: &Ctx, o: anyhow::Result<Outcome>) -> anyhow::Result<Result<Outcome, String>> {
    match o {
        Ok(o) if ctx.quick && (o.lost > 0 || o.duplicates > 0) => Err(anyhow::anyhow!(
            "{} deliveries of acknowledged messages missing, {} twice",
            o.lost,
            o.duplicates
        )),
        Ok(o) => Ok(Ok(o)),
        Err(e) if ctx.quick => Err(e),
        Err(e) => Ok(Err(format!("{e:#}"))),
    }
}

/// A worker process and its pipes.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    fn spawn(spec: &Value) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("__network-worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow::anyhow!("worker stdin"))?;
        let stdout = BufReader::new(
            child
                .stdout
                .take()
                .ok_or_else(|| anyhow::anyhow!("worker stdout"))?,
        );
        let mut w = Self {
            child,
            stdin,
            stdout,
        };
        w.say(spec)?;
        Ok(w)
    }

    fn say(&mut self, v: &Value) -> anyhow::Result<()> {
        writeln!(self.stdin, "{v}")?;
        Ok(self.stdin.flush()?)
    }

    /// The worker's next line, which must carry `key`.
    fn hear(&mut self, key: &str) -> anyhow::Result<Value> {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line)?;
        anyhow::ensure!(n > 0, "network worker exited before saying {key}");
        let mut v: Value = serde_json::from_str(&line)?;
        if let Some(e) = v.get("error") {
            anyhow::bail!("network worker: {e}");
        }
        v.get_mut(key)
            .map(Value::take)
            .ok_or_else(|| anyhow::anyhow!("network worker said {line:?}, not {key}"))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the traffic on `nodes` (their pids measured, and `helpers`'s:
/// PostgreSQL, NATS) with `size.workers` load processes.
async fn one(nodes: &[Sotto], helpers: &[u32], size: Size) -> anyhow::Result<Outcome> {
    let started = std::time::Instant::now();
    let mut invites = load::invites(&nodes[0].process, size.devices)?.into_iter();
    let epoch = since(0);
    let links: Vec<&str> = nodes.iter().map(|n| n.process.link.as_str()).collect();
    let mut workers = Vec::with_capacity(size.workers);
    for w in 0..size.workers {
        let devices = size.devices / size.workers + usize::from(w < size.devices % size.workers);
        let invites: Vec<String> = invites.by_ref().take(devices).collect();
        workers.push(Worker::spawn(&json!({
            "worker": w,
            "links": links,
            "invites": invites,
            "epoch": epoch,
            "rate": size.rate / size.workers as f64,
            "secs": size.secs,
            "conversations": size.conversations,
        }))?);
    }
    let mut sizes = Vec::new();
    for w in &mut workers {
        let ready = tokio::task::block_in_place(|| w.hear("ready"))?;
        sizes = serde_json::from_value(ready["sizes"].clone())?;
    }
    let setup = started.elapsed();
    // Every worker starts its schedule at the same moment.
    let start = since(epoch) + 500_000_000;
    let node_pids: Vec<u32> = nodes.iter().map(Sotto::pid).collect();
    let helpers: Vec<u32> = helpers.to_vec();
    let worker_pids: Vec<u32> = workers.iter().map(|w| w.child.id()).collect();
    let written = |pids: &[u32]| -> HashMap<u32, u64> {
        pids.iter().map(|p| (*p, sys::written_bytes(*p))).collect()
    };
    let every: Vec<u32> = node_pids.iter().chain(&helpers).copied().collect();
    let disk0 = written(&every);
    let cpu0 = |pids: &[u32]| pids.iter().map(|p| sys::cpu_seconds(*p)).sum::<f64>();
    let setup_rss_kib = node_pids.iter().map(|p| sys::rss_kib(*p).0).sum();
    let (n0, h0, l0) = (cpu0(&node_pids), cpu0(&helpers), cpu0(&worker_pids));
    for w in &mut workers {
        w.say(&json!({ "start": start }))?;
    }
    let mut o = Outcome {
        devices: size.devices,
        workers: size.workers,
        sizes,
        setup,
        setup_rss_kib,
        ..Outcome::default()
    };
    let mut results = Vec::new();
    for w in &mut workers {
        results.push(tokio::task::block_in_place(|| w.hear("result"))?);
    }
    o.window = Duration::from_nanos(since(epoch).saturating_sub(start));
    o.nodes_cpu = cpu0(&node_pids) - n0;
    o.helpers_cpu = cpu0(&helpers) - h0;
    o.load_cpu = cpu0(&worker_pids) - l0;
    o.node_rss_kib = node_pids.iter().map(|p| sys::rss_kib(*p).0).collect();
    o.helpers_pss_kib = helpers.iter().map(|p| sys::pss_kib(*p)).sum();
    let disk1 = written(&every);
    o.disk_bytes = disk1
        .iter()
        .map(|(p, b)| b.saturating_sub(disk0.get(p).copied().unwrap_or(0)))
        .sum();
    for r in results {
        let count = |k: &str| r[k].as_u64().unwrap_or(0) as usize;
        o.scheduled += count("scheduled");
        o.sent += count("sent");
        o.expected += count("expected");
        o.delivered += count("delivered");
        o.lost += count("lost");
        o.duplicates += count("duplicates");
        if let Some(l) = r["latencies_us"].as_array() {
            o.latencies.extend(
                l.iter()
                    .filter_map(Value::as_u64)
                    .map(Duration::from_micros),
            );
        }
    }
    o.latencies.sort();
    Ok(o)
}

/// `__network-worker`: one load process, driven through its stdin and
/// stdout (one JSON object a line).
pub(crate) fn worker() -> anyhow::Result<()> {
    sys::raise_open_files();
    let mut input = std::io::stdin().lock();
    let mut line = String::new();
    input.read_line(&mut line)?;
    let spec: Value = serde_json::from_str(&line)?;
    let rt = tokio::runtime::Runtime::new()?;
    let out = rt.block_on(work(&spec, &mut input));
    if let Err(e) = &out {
        println!("{}", json!({ "error": format!("{e:#}") }));
    }
    // The devices' tasks are not waited for: the process ends here.
    rt.shutdown_background();
    out
}

/// One conversation a worker sends to: its sender, members (indices into
/// the worker's devices) and class in [`MIX`].
struct Conversation {
    sender: usize,
    members: Vec<usize>,
    class: usize,
}

/// Splits `devices` into conversations: senders first (one per
/// conversation), then the one-to-one recipients, then a pool the groups
/// draw their members from in turn; the rest stay idle. Returns the
/// conversations and each class's group size (capped by the pool).
fn plan(devices: usize, counts: [usize; 4]) -> anyhow::Result<(Vec<Conversation>, Vec<usize>)> {
    let senders: usize = counts.iter().sum();
    let pool_start = senders + counts[0];
    anyhow::ensure!(
        devices > pool_start + 1,
        "{devices} devices are too few for {senders} conversations"
    );
    let pool = devices - pool_start;
    let sizes: Vec<usize> = MIX
        .iter()
        .map(|&(size, _)| if size == 2 { 2 } else { size.min(pool + 1) })
        .collect();
    let mut out = Vec::with_capacity(senders);
    let mut cursor = 0usize;
    for (class, &count) in counts.iter().enumerate() {
        for _ in 0..count {
            let sender = out.len();
            let members = if class == 0 {
                vec![senders + sender]
            } else {
                (0..sizes[class] - 1)
                    .map(|_| {
                        let m = pool_start + cursor % pool;
                        cursor += 1;
                        m
                    })
                    .collect()
            };
            out.push(Conversation {
                sender,
                members,
                class,
            });
        }
    }
    Ok((out, sizes))
}

/// What the devices of a worker saw: (message, recipient device, latency in µs).
type Arrivals = Arc<Mutex<Vec<(u64, u32, u32)>>>;

fn source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % 16) as u8))
}

async fn work(spec: &Value, input: &mut impl BufRead) -> anyhow::Result<()> {
    let w = spec["worker"].as_u64().unwrap_or(0) as usize;
    let epoch = spec["epoch"].as_u64().unwrap_or(0);
    let rate = spec["rate"].as_f64().unwrap_or(0.0);
    let secs = spec["secs"].as_u64().unwrap_or(0);
    let counts: [usize; 4] = serde_json::from_value(spec["conversations"].clone())?;
    let invites: Vec<String> = serde_json::from_value(spec["invites"].clone())?;
    let links: Vec<ServerLink> = spec["links"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(ServerLink::parse))
        .into_iter()
        .flatten()
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(!links.is_empty(), "no server links");
    let (conversations, sizes) = plan(invites.len(), counts)?;

    // Every device answers its connection from the moment it is registered
    // (a connection left unread for the server's idle timeout is closed):
    // a sender pumps it while it waits for the others and for its turn to
    // make its conversation, then sends; every other device receives.
    let arrivals: Arrivals = Arc::new(Mutex::new(Vec::new()));
    let got = Arc::new(AtomicUsize::new(0));
    let acked: Acked = Arc::new(Mutex::new(Vec::new()));
    let (registered, all) = tokio::sync::watch::channel(None);
    let turns = Arc::new(tokio::sync::Semaphore::new(GROUPS_AT_ONCE));
    let ciphertext = Arc::new(payload::ciphertext()?);
    let mut queues = Vec::with_capacity(conversations.len());
    let mut made = Vec::with_capacity(conversations.len());
    let mut roles: Vec<Option<Converse>> = Vec::with_capacity(conversations.len());
    for (k, c) in conversations.iter().enumerate() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (done, answer) = tokio::sync::oneshot::channel();
        queues.push(tx);
        made.push(answer);
        roles.push(Some(Converse {
            group: load::group_id(w * 1_000_000 + k),
            me: c.sender,
            members: c.members.clone(),
            all: all.clone(),
            turns: turns.clone(),
            ciphertext: ciphertext.clone(),
            queue: rx,
            acked: acked.clone(),
            made: done,
        }));
    }
    drop(all);

    // Register every device, `REGISTER_AT_ONCE` at a time, through the
    // first node (every node publishing the key directory at once mostly
    // loses its epoch to another: BENCHMARKS.md), then log it in to its
    // own node.
    let sem = Arc::new(tokio::sync::Semaphore::new(REGISTER_AT_ONCE));
    let mut tasks = Vec::with_capacity(invites.len());
    for (i, invite) in invites.into_iter().enumerate() {
        let permit = sem.clone().acquire_owned().await?;
        let first = links[0].clone();
        let node = (i + w) % links.len();
        let link = (node != 0).then(|| links[node].clone());
        let role = roles.get_mut(i).and_then(Option::take);
        let (arrivals, got) = (arrivals.clone(), got.clone());
        tasks.push(tokio::spawn(async move {
            let r = async {
                let (d, mut c) =
                    load::register(&first, Some(source(i)), invite, &format!("w{w}d{i}")).await?;
                if let Some(link) = link {
                    c.close().await;
                    c = load::login(&link, Some(source(i)), &d).await?;
                }
                let task = match role {
                    Some(role) => tokio::spawn(converse(c, role)),
                    None => tokio::spawn(receive(c, i as u32, epoch, arrivals, got)),
                };
                anyhow::Ok((Arc::new(d), task))
            }
            .await;
            drop(permit);
            r
        }));
    }
    let mut devices: Vec<Arc<Device>> = Vec::with_capacity(tasks.len());
    let mut senders = Vec::with_capacity(conversations.len());
    for (i, t) in tasks.into_iter().enumerate() {
        let (d, task) = t.await??;
        devices.push(d);
        if i < conversations.len() {
            senders.push(task);
        }
    }
    registered.send_replace(Some(Arc::new(devices)));
    for m in made {
        m.await
            .map_err(|_| anyhow::anyhow!("a conversation's task ended before making it"))??;
    }
    registered.send_replace(None);
    println!("{}", json!({ "ready": { "sizes": sizes } }));

    let mut line = String::new();
    tokio::task::block_in_place(|| input.read_line(&mut line))?;
    let start: Value = serde_json::from_str(&line)?;
    let start = start["start"].as_u64().unwrap_or(0);

    // The schedule: Poisson arrivals, each given a class by the mix and a
    // conversation of that class at random.
    let schedule = load::poisson_arrivals(rate, Duration::from_secs(secs), 21 + w as u64);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7 + w as u64);
    let by_class: Vec<Vec<usize>> = (0..MIX.len())
        .map(|class| {
            conversations
                .iter()
                .enumerate()
                .filter(|(_, c)| c.class == class)
                .map(|(k, _)| k)
                .collect()
        })
        .collect();
    for (n, at) in schedule.iter().enumerate() {
        let due = start + at.as_nanos() as u64;
        let wait = due.saturating_sub(since(epoch));
        tokio::time::sleep(Duration::from_nanos(wait)).await;
        let mut u: f64 = rng.r#gen();
        let mut class = 0;
        while class + 1 < MIX.len() && u >= MIX[class].1 {
            u -= MIX[class].1;
            class += 1;
        }
        let of = &by_class[class];
        if of.is_empty() {
            continue;
        }
        let k = of[rng.gen_range(0..of.len())];
        let _ = queues[k].send((due, n as u64 + 1));
    }
    drop(queues);
    for s in senders {
        s.await?;
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap_or_else(|p| p.into_inner()));
    let expected: usize = acked.iter().map(|a| a.1).sum();
    let deadline = tokio::time::Instant::now() + GRACE;
    while got.load(Ordering::Relaxed) < expected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A moment more, for any duplicate still on its way.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut seen = std::mem::take(&mut *arrivals.lock().unwrap_or_else(|p| p.into_inner()));
    let total = seen.len();
    let latencies: Vec<u32> = seen.iter().map(|s| s.2).collect();
    seen.sort_unstable_by_key(|s| (s.0, s.1));
    seen.dedup_by_key(|s| (s.0, s.1));
    let mut reached: HashMap<u64, usize> = HashMap::new();
    for s in &seen {
        *reached.entry(s.0).or_default() += 1;
    }
    let lost: usize = acked
        .iter()
        .map(|(m, want)| want.saturating_sub(reached.get(m).copied().unwrap_or(0)))
        .sum();
    println!(
        "{}",
        json!({ "result": {
            "scheduled": schedule.len(),
            "sent": acked.len(),
            "expected": expected,
            "delivered": seen.len(),
            "duplicates": total - seen.len(),
            "lost": lost,
            "latencies_us": latencies,
        }})
    );
    Ok(())
}

/// The messages each sender had acknowledged: (message, recipients).
type Acked = Arc<Mutex<Vec<(u64, usize)>>>;

/// What a sender needs to make its conversation and then send to it.
struct Converse {
    group: GroupId,
    /// Its own index among the worker's devices.
    me: usize,
    members: Vec<usize>,
    /// Every device of the worker, once all are registered.
    all: tokio::sync::watch::Receiver<Option<Arc<Vec<Arc<Device>>>>>,
    /// Turns to make a conversation ([`GROUPS_AT_ONCE`] at a time).
    turns: Arc<tokio::sync::Semaphore>,
    ciphertext: Arc<Vec<u8>>,
    queue: tokio::sync::mpsc::UnboundedReceiver<(u64, u64)>,
    acked: Acked,
    /// Told when the conversation is made (or why not).
    made: tokio::sync::oneshot::Sender<anyhow::Result<()>>,
}

/// Waits for `ready` while answering `conn` (its pings, anything pushed).
async fn pumping<T>(conn: &mut Connection, ready: impl Future<Output = T>) -> T {
    tokio::pin!(ready);
    let mut open = true;
    loop {
        tokio::select! {
            v = &mut ready => return v,
            ev = conn.next_event(), if open => open = ev.is_ok(),
        }
    }
}

/// A sender: waits (answering its connection) until every device is
/// registered and its turn comes, makes its conversation with real MLS
/// commits, then sends what it is handed.
async fn converse(mut conn: Connection, mut c: Converse) {
    let made = async {
        let all = pumping(&mut conn, c.all.wait_for(Option::is_some))
            .await
            .map_err(|_| anyhow::anyhow!("the worker went away"))?
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no devices"))?;
        let turn = pumping(&mut conn, c.turns.clone().acquire_owned()).await?;
        let members: Vec<&Device> = c.members.iter().map(|m| all[*m].as_ref()).collect();
        let epoch = load::make_group(&mut conn, c.group, &all[c.me], &members).await?;
        drop(turn);
        anyhow::Ok(epoch)
    }
    .await;
    drop(c.all);
    let epoch = match made {
        Ok(e) => {
            let _ = c.made.send(Ok(()));
            e
        }
        Err(e) => {
            let _ = c.made.send(Err(e));
            return;
        }
    };
    let payload = payload::for_group(&c.ciphertext, c.group, epoch);
    send(conn, c.group, payload, c.queue, (c.acked, c.members.len())).await;
}

/// A conversation's sender: sends each message it is handed (stamped with
/// its scheduled time) and waits for the acknowledgement, which comes
/// after the durable write; keeps answering its connection meanwhile.
async fn send(
    mut conn: Connection,
    group: GroupId,
    payload: Vec<u8>,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<(u64, u64)>,
    (acked, recipients): (Acked, usize),
) {
    let mut open = true;
    loop {
        tokio::select! {
            next = queue.recv() => {
                let Some((due, n)) = next else { break };
                let r = conn
                    .request(Request::Send(SendRequest {
                        group,
                        msg_id: load::stamped_id_at(Duration::from_nanos(due), n),
                        payload: Blob(payload.clone()),
                        ttl_ms: None,
                    }))
                    .await;
                if matches!(r, Ok(Response::Accepted { .. })) {
                    acked
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((n, recipients));
                }
            }
            ev = conn.next_event(), if open => open = ev.is_ok(),
        }
    }
}

/// A device: takes every delivery, records each message's latency, and
/// acknowledges what it got (in one request for what arrived together).
async fn receive(
    mut conn: Connection,
    me: u32,
    epoch: u64,
    arrivals: Arrivals,
    got: Arc<AtomicUsize>,
) {
    let mut acks = Vec::new();
    let take = |ev: Event, acks: &mut Vec<u64>| {
        if let Event::Deliver(d) = ev {
            if d.envelope.kind == EnvelopeKind::Application {
                let id = &d.envelope.msg_id.0;
                let sent = u64::from_be_bytes(id[..8].try_into().unwrap_or_default());
                let n = u64::from_be_bytes(id[8..].try_into().unwrap_or_default());
                let lat = since(epoch).saturating_sub(sent) / 1000;
                arrivals.lock().unwrap_or_else(|p| p.into_inner()).push((
                    n,
                    me,
                    lat.min(u64::from(u32::MAX)) as u32,
                ));
                got.fetch_add(1, Ordering::Relaxed);
            }
            acks.push(d.seq);
        }
    };
    loop {
        match conn.next_event().await {
            Ok(ev) => take(ev, &mut acks),
            Err(_) => return,
        }
        while acks.len() < 32 {
            match conn.next_event().now_or_never() {
                Some(Ok(ev)) => take(ev, &mut acks),
                Some(Err(_)) => return,
                None => break,
            }
        }
        if !acks.is_empty() {
            let seqs = std::mem::take(&mut acks);
            if conn.request(Request::Ack { seqs }).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_gives_each_conversation_its_own_sender_and_distinct_members() {
        let (convs, sizes) = plan(300, QUICK_CONVERSATIONS).unwrap();
        assert_eq!(convs.len(), QUICK_CONVERSATIONS.iter().sum::<usize>());
        assert_eq!(sizes, vec![2, 10, 100, 255]);
        let senders: std::collections::HashSet<usize> = convs.iter().map(|c| c.sender).collect();
        assert_eq!(senders.len(), convs.len());
        for c in &convs {
            assert_eq!(c.members.len() + 1, sizes[c.class]);
            let distinct: std::collections::HashSet<usize> = c.members.iter().copied().collect();
            assert_eq!(distinct.len(), c.members.len(), "a member twice");
            assert!(!distinct.contains(&c.sender));
            assert!(!c.members.iter().any(|m| senders.contains(m)));
            assert!(c.members.iter().all(|m| *m < 300));
        }
        assert!(plan(40, QUICK_CONVERSATIONS).is_err());
    }
}
