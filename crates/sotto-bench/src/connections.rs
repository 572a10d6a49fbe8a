//! Scenario `connections`: N authenticated, idle device connections held
//! by one server (10k, 50k, 100k; `--quick`: 200), each answering the
//! server's keepalives. Reported per system: the server's resident memory
//! per connection (userland), the kernel's (TCP buffers and slab, both ends
//! of each loopback connection, machine-wide, so noisy), the p99 time to
//! connect and authenticate, and the server's CPU while every connection
//! idles for a keepalive period. Comparators on the same N: mosquitto (MQTT
//! CONNECT, keepalive 60 s with PINGREQ every 30 s) and nats-server (CONNECT
//! and PING/PONG), each once in clear and once with TLS 1.3, since Sotto's
//! connections always carry TLS. Connections are spread over 16 loopback
//! source addresses (127.0.0.1-16), past the ~28k ephemeral ports of one
//! address.
//!
//! Every process needs N open files plus a margin; a step that the
//! machine's open-files limit does not allow is reported as not run, with
//! the limit, instead of being measured on fewer connections.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sotto_client::transport::Event;
use sotto_server::tls::TlsIdentity;

use crate::brokers::{self, Broker, JetStream, Mqtt};
use crate::load::{self, Sotto};
use crate::report::{Table, ms, percentile, ratio};
use crate::{Ctx, sys};

/// The systems compared, in the table's order. Sotto always speaks TLS
/// 1.3 (and WebSocket); each broker is measured in clear and with TLS 1.3
/// (the same kind of certificate, ECDSA P-256, and the same client side).
const SYSTEMS: [&str; 5] = [
    "Sotto, 1 node, SQLite (TLS)",
    "mosquitto, TCP",
    "mosquitto, TLS",
    "nats-server, TCP",
    "nats-server, TLS",
];

/// Open files each process needs besides the connections.
const MARGIN: usize = 1000;

fn source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % 16) as u8))
}

/// Kernel memory in use, bytes: TCP buffer pages plus slab (machine-wide).
fn kernel_bytes() -> f64 {
    let slab_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("Slab:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    sys::tcp_mem_pages() as f64 * 4096.0 + slab_kib * 1024.0
}

#[derive(Debug, Default)]
struct Held {
    n: usize,
    rss_per_conn: f64,
    kernel_per_conn: f64,
    connect_p99: Duration,
    idle_cores: f64,
    server_rss_kib: u64,
}

/// Opens `n` connections with `connect` (64 at a time), then measures.
async fn hold<F, Fut>(n: usize, pid: u32, idle: Duration, connect: F) -> anyhow::Result<Held>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<tokio::task::JoinHandle<()>>> + Send + 'static,
{
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = sys::rss_kib(pid).0;
    let k0 = kernel_bytes();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let f = connect(i);
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let h = f.await;
            drop(permit);
            h.map(|h| (h, t.elapsed()))
        }));
    }
    let mut held = Vec::with_capacity(n);
    let mut lat = Vec::with_capacity(n);
    for t in tasks {
        let (h, d) = t.await??;
        held.push(h);
        lat.push(d);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu = sys::CpuWatch::start(pid);
    tokio::time::sleep(idle).await;
    let idle_cores = cpu.cores();
    let rss1 = sys::rss_kib(pid).0;
    let k1 = kernel_bytes();
    let alive = held.iter().filter(|h| !h.is_finished()).count();
    anyhow::ensure!(
        alive == n,
        "only {alive} of {n} connections were still open after the idle period"
    );
    for h in &held {
        h.abort();
    }
    lat.sort();
    Ok(Held {
        n,
        rss_per_conn: rss1.saturating_sub(rss0) as f64 * 1024.0 / n as f64,
        kernel_per_conn: (k1 - k0).max(0.0) / n as f64,
        connect_p99: percentile(&lat, 0.99),
        idle_cores,
        server_rss_kib: rss1,
    })
}

async fn sotto(ctx: &Ctx, n: usize, idle: Duration) -> anyhow::Result<Held> {
    let mut s = Sotto::sqlite(&ctx.pinning)?;
    let invites = s.invites(n)?;
    // Setup: register every device (64 at a time); not measured.
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(n);
    for (i, inv) in invites.into_iter().enumerate() {
        let permit = sem.clone().acquire_owned().await?;
        let link = s.link.clone();
        tasks.push(tokio::spawn(async move {
            let r = load::register(&link, Some(source(i)), inv, &format!("conn{i}")).await;
            drop(permit);
            r
        }));
    }
    let mut devices = Vec::with_capacity(n);
    for t in tasks {
        let (d, conn) = t.await??;
        conn.close().await;
        devices.push(Arc::new(d));
    }
    // Measure from a fresh process: the registrations' heap is not the
    // connections'.
    s.restart(&ctx.pinning);
    let link = s.link.clone();
    hold(n, s.pid(), idle, move |i| {
        let (link, d) = (link.clone(), devices[i].clone());
        async move {
            let mut conn = load::login(&link, Some(source(i)), &d).await?;
            // Wait for the (empty) backlog, so the connection is fully set up.
            while !matches!(conn.next_event().await?, Event::Synced) {}
            Ok(tokio::spawn(async move {
                while conn.next_event().await.is_ok() {}
            }))
        }
    })
    .await
}

/// A broker's certificate (when it listens with TLS) and the client side's
/// configuration pinning it.
fn tls_pair(tls: bool) -> anyhow::Result<Option<(TlsIdentity, Arc<rustls::ClientConfig>)>> {
    if !tls {
        return Ok(None);
    }
    let id = TlsIdentity::generate()?;
    let cfg = brokers::pinned(&id)?;
    Ok(Some((id, cfg)))
}

async fn mosquitto(ctx: &Ctx, n: usize, idle: Duration, tls: bool) -> anyhow::Result<Held> {
    let tls = tls_pair(tls)?;
    let b = Broker::mosquitto_with(&ctx.pinning, tls.as_ref().map(|t| &t.0))?;
    let addr = b.addr;
    let cfg = tls.map(|t| t.1);
    hold(n, b.pid(), idle, move |i| {
        let cfg = cfg.clone();
        async move {
            let m = Mqtt::connect_with(addr, Some(source(i)), &format!("c{i}"), true, cfg.as_ref())
                .await?;
            Ok(tokio::spawn(m.idle()))
        }
    })
    .await
}

async fn nats(ctx: &Ctx, n: usize, idle: Duration, tls: bool) -> anyhow::Result<Held> {
    let tls = tls_pair(tls)?;
    let b = Broker::nats_with(&ctx.pinning, JetStream::Off, tls.as_ref().map(|t| &t.0))?;
    let addr = b.addr;
    let cfg = tls.map(|t| t.1);
    hold(n, b.pid(), idle, move |i| {
        brokers::nats_idle(addr, Some(source(i)), cfg.clone())
    })
    .await
}

/// Scenario `connections`: at `sizes` (by default 10k, 50k and 100k;
/// `--quick`: 200), every system, or Sotto alone when `sotto_only`.
pub(crate) async fn run(
    ctx: &Ctx,
    sizes: &[usize],
    sotto_only: bool,
) -> anyhow::Result<Vec<Table>> {
    let idle = if ctx.quick {
        Duration::from_secs(1)
    } else {
        // A full keepalive period: the server pings every connection every 30 s.
        Duration::from_secs(31)
    };
    let floor = ctx.floor().await?.rss_per_idle;
    let files = sys::open_files_limit() as usize;
    let mut t = Table::new(
        "connections",
        "N authenticated idle connections held by one server",
        &[
            "N",
            "system",
            "userland RSS per connection (bytes)",
            "ratio to floor idle socket",
            "kernel per connection, both ends (bytes)",
            "connect p99 (ms)",
            "idle server CPU (% of a core)",
            "server RSS total (MiB)",
        ],
    );
    // When the open-files limit stops a step, the largest round N it allows
    // is measured too (before the steps it stops), so the curve goes as far
    // as the machine lets it.
    let most = (files.saturating_sub(MARGIN) / 1000) * 1000;
    let mut steps = sizes.to_vec();
    if let Some(i) = steps.iter().position(|&n| n + MARGIN > files)
        && (i == 0 || steps[i - 1] < most)
        && most > 0
    {
        steps.insert(i, most);
    }
    for n in steps {
        if n + MARGIN > files {
            for name in SYSTEMS {
                let mut row = vec![
                    n.to_string(),
                    name.into(),
                    format!(
                        "not run: needs {} open files per process, this machine's limit is {files} (the container's hard RLIMIT_NOFILE; prlimit cannot raise it)",
                        n + MARGIN
                    ),
                ];
                row.resize(t.columns.len(), "—".into());
                t.row(row);
            }
            continue;
        }
        let mut rows = vec![(SYSTEMS[0], sotto(ctx, n, idle).await?)];
        if !sotto_only {
            rows.push((SYSTEMS[1], mosquitto(ctx, n, idle, false).await?));
            rows.push((SYSTEMS[2], mosquitto(ctx, n, idle, true).await?));
            rows.push((SYSTEMS[3], nats(ctx, n, idle, false).await?));
            rows.push((SYSTEMS[4], nats(ctx, n, idle, true).await?));
        }
        for (name, h) in rows {
            t.row(vec![
                h.n.to_string(),
                name.into(),
                format!("{:.0}", h.rss_per_conn),
                ratio(h.rss_per_conn, floor),
                format!("{:.0}", h.kernel_per_conn),
                ms(h.connect_p99),
                format!("{:.1}", h.idle_cores * 100.0),
                format!("{:.0}", h.server_rss_kib as f64 / 1024.0),
            ]);
        }
    }
    t.note(format!(
        "idle period measured: {} s after all were connected; floor idle TLS WebSocket (same run): {floor:.0} bytes; Sotto's connect is TCP + TLS 1.3 + WebSocket + signed login + backlog sync, MQTT's (TLS 1.3 +) CONNECT/CONNACK, NATS's INFO, (TLS 1.3,) CONNECT/PING/PONG",
        idle.as_secs()
    ));
    Ok(vec![t])
}
