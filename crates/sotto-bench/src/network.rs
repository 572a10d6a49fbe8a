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
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use sotto_test_support::services::{NatsProcess, PgDatabase};

use crate::load::{self, Sotto};
use crate::report::{Table, ms, percentile};
use crate::{Ctx, cluster, sys};

mod worker;
pub(crate) use worker::worker;

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
    /// The nodes' own counters over the traffic (`/metrics`).
    inside: Inside,
}

/// What the nodes' `/metrics` counted over the traffic, summed over nodes.
#[derive(Debug, Default)]
struct Inside {
    deliveries: f64,
    offered: f64,
    watch_wakeups: f64,
    send_seconds: f64,
    sends: f64,
    ack_seconds: f64,
    acks: f64,
}

impl Inside {
    /// The counters of `after` less those of `before`, summed over nodes.
    fn between(before: &[HashMap<String, f64>], after: &[HashMap<String, f64>]) -> Self {
        let diff = |name: &str| -> f64 {
            before
                .iter()
                .zip(after)
                .map(|(b, a)| {
                    a.get(name).copied().unwrap_or(0.0) - b.get(name).copied().unwrap_or(0.0)
                })
                .sum()
        };
        Self {
            deliveries: diff("sotto_deliveries_total"),
            offered: diff("sotto_offered_deliveries_total"),
            watch_wakeups: diff("sotto_store_poll_wakeups_total"),
            send_seconds: diff("sotto_request_duration_seconds_sum{kind=\"send\"}"),
            sends: diff("sotto_request_duration_seconds_count{kind=\"send\"}"),
            ack_seconds: diff("sotto_request_duration_seconds_sum{kind=\"ack\"}"),
            acks: diff("sotto_request_duration_seconds_count{kind=\"ack\"}"),
        }
    }
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
            "deliveries sent from an offer (%)",
            "store watch wake-ups",
            "send in the server, mean (ms)",
            "ack in the server, mean (ms)",
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
            format!(
                "{:.1}",
                100.0 * o.inside.offered / o.inside.deliveries.max(1.0)
            ),
            format!("{:.0}", o.inside.watch_wakeups),
            format!(
                "{:.1}",
                1e3 * o.inside.send_seconds / o.inside.sends.max(1.0)
            ),
            format!("{:.1}", 1e3 * o.inside.ack_seconds / o.inside.acks.max(1.0)),
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
        "{secs} s of Poisson arrivals at {rate:.0} msgs/s in all; latency from each message's scheduled send to each recipient device (a late send counts its delay); every device acknowledges what it gets; not delivered = recipients of acknowledged messages not reached 30 s after the last scheduled send (a backlog still draining counts here); CPU and disk over the sending window and its drain; disk = bytes the nodes, PostgreSQL and NATS wrote (write_bytes) per acknowledged message; the machine's PostgreSQL and NATS share the nodes' CPUs, the load processes share one CPU; the last four columns are the nodes' own `/metrics` over the same window, summed over nodes (an offer is a delivery sent without a mailbox read; a store watch wake-up is a connection made to read its mailbox because mail reached neither it nor an offer); setup (registration, MLS groups, not measured): {}",
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
    let scrape = || -> Vec<HashMap<String, f64>> {
        tokio::task::block_in_place(|| nodes.iter().map(Sotto::metrics).collect())
    };
    let metrics0 = scrape();
    // On stderr, for whoever profiles the traffic alone.
    eprintln!(
        "network: {} devices on {} nodes set up in {:.0} s; {} s of traffic",
        size.devices,
        nodes.len(),
        setup.as_secs_f64(),
        size.secs
    );
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
    o.inside = Inside::between(&metrics0, &scrape());
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
