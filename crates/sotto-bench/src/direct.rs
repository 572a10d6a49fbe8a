//! Scenario `direct`: one-to-one store-and-forward delivery to online
//! recipients. `pairs` senders each write to their own recipient in a
//! closed loop (the next send after the acknowledgement) for a fixed time;
//! latency is from the start of a send to its arrival at the recipient.
//! Same load, same payload (a real MLS ciphertext), same durations for:
//! Sotto (one node, SQLite, durable before the acknowledgement), mosquitto
//! at QoS 1 with persistence (PUBACK, persistent sessions), NATS JetStream
//! on its file store (publish acknowledgement, durable pull consumers) and
//! NATS core (no persistence: the ceiling of a non-durable broker).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::brokers::{Broker, JetStream, Mqtt};
use crate::load::{self, Outcome, Sotto, read_stamp, settle, stamp_payload};
use crate::report::{Table, ms, percentile, ratio};
use crate::{Ctx, payload, sys};

/// The size of the run.
pub(crate) struct Size {
    pub(crate) pairs: usize,
    pub(crate) duration: Duration,
}

fn size(ctx: &Ctx) -> Size {
    if ctx.quick {
        Size {
            pairs: 4,
            duration: Duration::from_secs(1),
        }
    } else {
        Size {
            pairs: 32,
            duration: Duration::from_secs(10),
        }
    }
}

/// Scenario `direct`.
pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Table>> {
    let floor = ctx.floor().await?.wss.per_second;
    let size = size(ctx);
    let payload = payload::ciphertext()?;
    let mut rows: Vec<(&str, &str, Outcome)> = Vec::new();

    let sotto = Sotto::sqlite(&ctx.pinning)?;
    let inv = sotto.invites(2 * size.pairs)?;
    let o = load::direct(
        &sotto.link,
        &sotto.link,
        inv,
        size.pairs,
        size.duration,
        &payload,
        &[sotto.pid()],
    )
    .await?;
    drop(sotto);
    rows.push(("Sotto, 1 node, SQLite", "yes (fsync per transaction)", o));

    let b = Broker::mosquitto(&ctx.pinning)?;
    rows.push((
        "mosquitto, QoS 1, persistence",
        "no (periodic snapshot)",
        mqtt(&b, &size, &payload).await?,
    ));
    drop(b);

    let b = Broker::nats(&ctx.pinning, JetStream::FileStore)?;
    rows.push((
        "NATS JetStream, file store",
        "no (written, not fsynced)",
        jetstream(&b, &size, &payload).await?,
    ));
    drop(b);

    let b = Broker::nats(&ctx.pinning, JetStream::Off)?;
    rows.push((
        "NATS core (non-durable ceiling)",
        "no (memory only)",
        nats_core(&b, &size, &payload).await?,
    ));
    drop(b);

    let mut t = Table::new(
        "direct",
        "one-to-one delivery to online recipients, same load for every system",
        &[
            "system",
            "durable before ack",
            "delivered / acknowledged",
            "msgs/s",
            "ratio to Sotto",
            "ratio to floor (TLS WebSocket pipelined)",
            "p50 (ms)",
            "p99 (ms)",
            "p999 (ms)",
            "p99 ≤ 50 ms",
            "server CPU-µs/msg",
            "server disk KB/msg",
            "load generator cores",
        ],
    );
    let base = rows.first().map_or(0.0, |r| rate(&r.2));
    for (name, durable, o) in &rows {
        let mut lat: Vec<Duration> = o.seen.iter().map(|s| s.1).collect();
        lat.sort();
        let p99 = percentile(&lat, 0.99);
        t.row(vec![
            (*name).into(),
            (*durable).into(),
            format!("{} / {}", o.seen.len(), o.sent),
            format!("{:.0}", rate(o)),
            ratio(rate(o), base),
            ratio(rate(o), floor),
            ms(percentile(&lat, 0.5)),
            ms(p99),
            ms(percentile(&lat, 0.999)),
            if p99 <= Duration::from_millis(50) {
                "yes"
            } else {
                "no"
            }
            .into(),
            format!("{:.0}", o.server_cpu * 1e6 / o.sent.max(1) as f64),
            format!("{:.1}", o.disk_bytes as f64 / 1000.0 / o.sent.max(1) as f64),
            format!("{:.2}{}", o.load_cores, ctx.bound(o.load_cores)),
        ]);
    }
    t.note(format!(
        "{} sender/recipient pairs, {} s per system, payload {} bytes (a real MLS PrivateMessage, post-quantum suite); each send waits for its acknowledgement (PUBACK, JetStream publish ack, NATS flush)",
        size.pairs,
        size.duration.as_secs(),
        payload.len()
    ));
    t.note(format!(
        "floor (same run): {floor:.0} msgs/s pipelined over TLS WebSocket"
    ));
    t.note(
        "server disk = bytes the server process caused to be written to storage (write_bytes of /proc/PID/io: SQLite's WAL and checkpoints, a broker's files) from the first send to the recipients' last acknowledgement, per acknowledged message; target (issue 21): ≤ 4 KB per message delivered and acknowledged",
    );
    Ok(vec![t])
}

fn rate(o: &Outcome) -> f64 {
    o.sent as f64 / o.elapsed.as_secs_f64().max(1e-9)
}

/// What a comparator's run is measured by: the load generator's CPU, and
/// the broker's CPU and writes to storage.
struct Watch {
    me: sys::CpuWatch,
    server: sys::CpuWatch,
    disk: sys::DiskWatch,
}

impl Watch {
    fn start(broker: u32) -> Self {
        Self {
            me: sys::CpuWatch::me(),
            server: sys::CpuWatch::start(broker),
            disk: sys::DiskWatch::start(broker),
        }
    }
}

/// Joins receivers after the senders finished: waits for every delivery (or
/// a grace period), measures, and checks nothing acknowledged was lost.
async fn finish(
    sent: usize,
    elapsed: Duration,
    Watch { me, server, disk }: Watch,
    got: &AtomicUsize,
    stop: &AtomicBool,
    receivers: Vec<tokio::task::JoinHandle<load::Seen>>,
) -> anyhow::Result<Outcome> {
    let load_cores = me.cores();
    settle(got, sent, Duration::from_secs(10), stop).await;
    let server_cpu = server.seconds();
    let mut seen = Vec::new();
    for r in receivers {
        seen.extend(r.await?);
    }
    // After the receivers' last acknowledgements.
    let disk_bytes = disk.bytes();
    // A comparator that loses messages is reported (column "delivered"),
    // not failed: NATS core promises nothing. Sotto's run fails instead
    // (`load::direct`).
    Ok(Outcome {
        sent,
        seen,
        elapsed,
        server_cpu,
        load_cores,
        disk_bytes,
    })
}

async fn mqtt(b: &Broker, size: &Size, payload: &[u8]) -> anyhow::Result<Outcome> {
    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicUsize::new(0));
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for i in 0..size.pairs {
        let mut r = Mqtt::connect(b.addr, None, &format!("r{i}"), false).await?;
        r.subscribe(&format!("d/{i}")).await?;
        let (stop, got) = (stop.clone(), got.clone());
        receivers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                match tokio::time::timeout(Duration::from_millis(200), r.next_publish()).await {
                    Ok(Ok(p)) => {
                        seen.push(read_stamp(&p.payload, origin));
                        got.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(_)) => break,
                    Err(_) if stop.load(Ordering::SeqCst) => break,
                    Err(_) => {}
                }
            }
            seen
        }));
        senders.push(Mqtt::connect(b.addr, None, &format!("s{i}"), true).await?);
    }
    let watch = Watch::start(b.pid());
    let started = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            let mut payload = payload.to_vec();
            let duration = size.duration;
            tokio::spawn(async move {
                let topic = format!("d/{i}");
                let mut n = 0usize;
                while started.elapsed() < duration {
                    stamp_payload(&mut payload, origin, n as u64);
                    s.publish_qos1(&topic, &payload).await?;
                    n += 1;
                }
                anyhow::Ok(n)
            })
        })
        .collect();
    let mut sent = 0;
    for t in tasks {
        sent += t.await??;
    }
    finish(sent, started.elapsed(), watch, &got, &stop, receivers).await
}

async fn jetstream(b: &Broker, size: &Size, payload: &[u8]) -> anyhow::Result<Outcome> {
    use async_nats::jetstream::{self, consumer, stream};
    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicUsize::new(0));
    let admin = jetstream::new(async_nats::connect(b.nats_url()).await?);
    let st = admin
        .create_stream(stream::Config {
            name: "D".into(),
            subjects: vec!["d.>".into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for i in 0..size.pairs {
        // Each recipient on its own connection, like a device.
        let js = jetstream::new(async_nats::connect(b.nats_url()).await?);
        st.create_consumer(consumer::pull::Config {
            durable_name: Some(format!("r{i}")),
            filter_subject: format!("d.{i}"),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
        let c: consumer::PullConsumer = js
            .get_stream("D")
            .await?
            .get_consumer(&format!("r{i}"))
            .await
            .map_err(|e| anyhow::anyhow!("jetstream consumer: {e}"))?;
        let mut msgs = c.messages().await?;
        let (stop, got) = (stop.clone(), got.clone());
        receivers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                match tokio::time::timeout(Duration::from_millis(200), msgs.next()).await {
                    Ok(Some(Ok(m))) => {
                        seen.push(read_stamp(&m.payload, origin));
                        got.fetch_add(1, Ordering::Relaxed);
                        let _ = m.ack().await;
                    }
                    Ok(_) => break,
                    Err(_) if stop.load(Ordering::SeqCst) => break,
                    Err(_) => {}
                }
            }
            seen
        }));
        senders.push(jetstream::new(async_nats::connect(b.nats_url()).await?));
    }
    let watch = Watch::start(b.pid());
    let started = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, js)| {
            let mut payload = payload.to_vec();
            let duration = size.duration;
            tokio::spawn(async move {
                let subject = format!("d.{i}");
                let mut n = 0usize;
                while started.elapsed() < duration {
                    stamp_payload(&mut payload, origin, n as u64);
                    js.publish(subject.clone(), payload.clone().into())
                        .await?
                        .await?;
                    n += 1;
                }
                anyhow::Ok(n)
            })
        })
        .collect();
    let mut sent = 0;
    for t in tasks {
        sent += t.await??;
    }
    finish(sent, started.elapsed(), watch, &got, &stop, receivers).await
}

async fn nats_core(b: &Broker, size: &Size, payload: &[u8]) -> anyhow::Result<Outcome> {
    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicUsize::new(0));
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for i in 0..size.pairs {
        let c = async_nats::connect(b.nats_url()).await?;
        let mut sub = c.subscribe(format!("d.{i}")).await?;
        c.flush().await?;
        let (stop, got) = (stop.clone(), got.clone());
        receivers.push(tokio::spawn(async move {
            let _c = c;
            let mut seen = Vec::new();
            loop {
                match tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
                    Ok(Some(m)) => {
                        seen.push(read_stamp(&m.payload, origin));
                        got.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None) => break,
                    Err(_) if stop.load(Ordering::SeqCst) => break,
                    Err(_) => {}
                }
            }
            seen
        }));
        senders.push(async_nats::connect(b.nats_url()).await?);
    }
    let watch = Watch::start(b.pid());
    let started = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let mut payload = payload.to_vec();
            let duration = size.duration;
            tokio::spawn(async move {
                let subject = format!("d.{i}");
                let mut n = 0usize;
                while started.elapsed() < duration {
                    stamp_payload(&mut payload, origin, n as u64);
                    c.publish(subject.clone(), payload.clone().into()).await?;
                    c.flush().await?;
                    n += 1;
                }
                anyhow::Ok(n)
            })
        })
        .collect();
    let mut sent = 0;
    for t in tasks {
        sent += t.await??;
    }
    finish(sent, started.elapsed(), watch, &got, &stop, receivers).await
}
