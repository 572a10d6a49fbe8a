//! Scenario `fanout`: one sender to a group of M online members (10, 100,
//! 1000). The sender sends in a closed loop (next send after the
//! acknowledgement) for a fixed time; every member records each message's
//! arrival. Reported: deliveries per second (from the first send to the
//! last arrival) and each message's time to its last member, p50/p99, under
//! that full load. Then open loop: messages arrive at a fixed rate (a
//! Poisson process, the same schedule for every system), each stamped with
//! its scheduled time, and the table reports the time to the last member
//! at that rate (issue 21: 1000 members at 10 msgs/s). Comparators on the
//! same load: mosquitto (QoS 1, persistence, persistent sessions, one topic
//! with M subscribers) and NATS core (one subject with M subscribers).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::brokers::{Broker, JetStream, Mqtt};
use crate::load::{self, Seen, Sotto, read_stamp, settle, stamp_payload_at};
use crate::report::{Table, ms, percentile, ratio};
use crate::{Ctx, payload, sys};

/// One system's result for one group size.
#[derive(Debug, Default)]
struct Result {
    sent: usize,
    deliveries: usize,
    per_second: f64,
    last_p50: Duration,
    last_p99: Duration,
    last_max: Duration,
    complete: bool,
    load_cores: f64,
}

/// Summarizes what members saw: `start` is when sending began (since origin).
fn summarize(
    sent: usize,
    members: usize,
    start: Duration,
    seen: &[Seen],
    load_cores: f64,
) -> Result {
    let mut last: HashMap<u64, (usize, Duration)> = HashMap::new();
    let mut end = start;
    let mut deliveries = 0;
    for s in seen {
        for &(seq, lat, at) in s {
            let e = last.entry(seq).or_insert((0, Duration::ZERO));
            e.0 += 1;
            e.1 = e.1.max(lat);
            end = end.max(at);
            deliveries += 1;
        }
    }
    let complete = last.len() >= sent && last.values().all(|(n, _)| *n == members);
    let mut times: Vec<Duration> = last.values().map(|v| v.1).collect();
    times.sort();
    Result {
        sent,
        deliveries,
        per_second: deliveries as f64 / (end - start).as_secs_f64().max(1e-9),
        last_p50: percentile(&times, 0.5),
        last_p99: percentile(&times, 0.99),
        last_max: times.last().copied().unwrap_or_default(),
        complete,
        load_cores,
    }
}

/// How the sender sends.
#[derive(Debug, Clone, Copy)]
enum Pace<'a> {
    /// Each send after the previous acknowledgement, for this long.
    Closed(Duration),
    /// One send at each of these times from the start, whatever the
    /// acknowledgements.
    Open(&'a [Duration]),
}

/// Open loop: the rate (messages/s) and for how long.
const OPEN_RATE: f64 = 10.0;

/// Scenario `fanout`.
pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Table>> {
    let (sizes, duration): (&[usize], _) = if ctx.quick {
        (&[10], Duration::from_secs(1))
    } else {
        (&[10, 100, 1000], Duration::from_secs(5))
    };
    let payload = payload::ciphertext()?;
    let mut t = Table::new(
        "fanout",
        "one sender to M online members, same load for every system",
        &[
            "members",
            "system",
            "messages sent",
            "deliveries/s",
            "ratio to Sotto",
            "time to last member p50 (ms)",
            "p99 (ms)",
            "every member got every message",
            "load generator cores",
        ],
    );
    let closed = Pace::Closed(duration);
    for &m in sizes {
        let rows = [
            (
                "Sotto, 1 node, SQLite",
                sotto(ctx, m, closed, &payload).await?,
            ),
            (
                "mosquitto, QoS 1, persistence",
                mqtt(ctx, m, closed, &payload).await?,
            ),
            ("NATS core", nats(ctx, m, closed, &payload).await?),
        ];
        let base = rows[0].1.per_second;
        for (name, r) in rows {
            t.row(vec![
                m.to_string(),
                name.into(),
                r.sent.to_string(),
                format!("{:.0}", r.per_second),
                ratio(r.per_second, base),
                ms(r.last_p50),
                ms(r.last_p99),
                if r.complete {
                    "yes".into()
                } else {
                    format!("no ({} deliveries)", r.deliveries)
                },
                format!("{:.2}{}", r.load_cores, ctx.bound(r.load_cores)),
            ]);
        }
    }
    t.note(format!(
        "{} s of closed-loop sending per system and size; payload {} bytes (a real MLS PrivateMessage); latency under that full load",
        duration.as_secs(),
        payload.len()
    ));
    Ok(vec![t, open(ctx, &payload).await?])
}

/// The open-loop table: 1000 members at [`OPEN_RATE`] (10 members for 2 s
/// with `--quick`).
async fn open(ctx: &Ctx, payload: &[u8]) -> anyhow::Result<Table> {
    let (m, duration) = if ctx.quick {
        (10, Duration::from_secs(2))
    } else {
        (1000, Duration::from_secs(30))
    };
    let arrivals = load::poisson_arrivals(OPEN_RATE, duration, 21);
    let pace = Pace::Open(&arrivals);
    let mut t = Table::new(
        "fanout_open",
        "one sender to M online members, open loop (Poisson arrivals), same schedule for every system",
        &[
            "members",
            "system",
            "messages/s",
            "messages sent",
            "deliveries/s",
            "time to last member p50 (ms)",
            "p99 (ms)",
            "max (ms)",
            "every member got every message",
            "load generator cores",
        ],
    );
    let rows = [
        ("Sotto, 1 node, SQLite", sotto(ctx, m, pace, payload).await?),
        (
            "mosquitto, QoS 1, persistence",
            mqtt(ctx, m, pace, payload).await?,
        ),
        ("NATS core", nats(ctx, m, pace, payload).await?),
    ];
    for (name, r) in rows {
        t.row(vec![
            m.to_string(),
            name.into(),
            format!("{OPEN_RATE:.0}"),
            r.sent.to_string(),
            format!("{:.0}", r.deliveries as f64 / duration.as_secs_f64()),
            ms(r.last_p50),
            ms(r.last_p99),
            ms(r.last_max),
            if r.complete {
                "yes".into()
            } else {
                format!("no ({} deliveries)", r.deliveries)
            },
            format!("{:.2}{}", r.load_cores, ctx.bound(r.load_cores)),
        ]);
    }
    t.note(format!(
        "{} scheduled messages over {} s; each message's time to its last member counts from its scheduled send time, so a late send counts its delay",
        arrivals.len(),
        duration.as_secs()
    ));
    Ok(t)
}

async fn sotto(ctx: &Ctx, m: usize, pace: Pace<'_>, payload: &[u8]) -> anyhow::Result<Result> {
    let s = Sotto::sqlite(&ctx.pinning)?;
    let mut inv = s.invites(m + 1)?.into_iter();
    let (sender, mut sconn) =
        load::register(&s.link, None, inv.next().unwrap_or_default(), "sender").await?;
    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicUsize::new(0));
    let mut members = Vec::new();
    let mut receivers = Vec::new();
    for i in 0..m {
        let (d, conn) = load::register(
            &s.link,
            None,
            inv.next().unwrap_or_default(),
            &format!("member{i}"),
        )
        .await?;
        members.push(d);
        receivers.push(tokio::spawn(load::receive(
            conn,
            origin,
            stop.clone(),
            got.clone(),
        )));
    }
    let g = load::group_id(1);
    let others: Vec<&load::Device> = members.iter().collect();
    let epoch = load::make_group(&mut sconn, g, &sender, &others).await?;
    let me = sys::CpuWatch::me();
    let start = origin.elapsed();
    let sent = match pace {
        Pace::Closed(duration) => {
            load::send_loop(sconn, (g, epoch), payload.to_vec(), origin, duration).await
        }
        Pace::Open(arrivals) => {
            load::send_paced(sconn, (g, epoch), payload.to_vec(), origin, start, arrivals).await
        }
    };
    let load_cores = me.cores();
    settle(&got, sent * m, Duration::from_secs(30), &stop).await;
    let mut seen = Vec::new();
    for r in receivers {
        seen.push(r.await?);
    }
    Ok(summarize(sent, m, start, &seen, load_cores))
}

async fn mqtt(ctx: &Ctx, m: usize, pace: Pace<'_>, payload: &[u8]) -> anyhow::Result<Result> {
    let b = Broker::mosquitto(&ctx.pinning)?;
    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicUsize::new(0));
    let mut receivers = Vec::new();
    for i in 0..m {
        let mut r = Mqtt::connect(b.addr, None, &format!("m{i}"), false).await?;
        r.subscribe("g/1").await?;
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
    }
    let mut s = Mqtt::connect(b.addr, None, "sender", true).await?;
    let mut payload = payload.to_vec();
    let me = sys::CpuWatch::me();
    let start = origin.elapsed();
    let mut sent = 0usize;
    while let Some(at) = next_send(pace, origin, start, sent).await {
        sent += 1;
        stamp_payload_at(&mut payload, at, sent as u64);
        s.publish_qos1("g/1", &payload).await?;
    }
    let load_cores = me.cores();
    settle(&got, sent * m, Duration::from_secs(30), &stop).await;
    let mut seen = Vec::new();
    for r in receivers {
        seen.push(r.await?);
    }
    Ok(summarize(sent, m, start, &seen, load_cores))
}

async fn nats(ctx: &Ctx, m: usize, pace: Pace<'_>, payload: &[u8]) -> anyhow::Result<Result> {
    let b = Broker::nats(&ctx.pinning, JetStream::Off)?;
    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicUsize::new(0));
    let mut receivers = Vec::new();
    for _ in 0..m {
        let c = async_nats::connect(b.nats_url()).await?;
        let mut sub = c.subscribe("g.1").await?;
        c.flush().await?;
        let (stop, got) = (stop.clone(), got.clone());
        receivers.push(tokio::spawn(async move {
            let _c = c;
            let mut seen = Vec::new();
            loop {
                match tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
                    Ok(Some(msg)) => {
                        seen.push(read_stamp(&msg.payload, origin));
                        got.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None) => break,
                    Err(_) if stop.load(Ordering::SeqCst) => break,
                    Err(_) => {}
                }
            }
            seen
        }));
    }
    let c = async_nats::connect(b.nats_url()).await?;
    let mut payload = payload.to_vec();
    let me = sys::CpuWatch::me();
    let start = origin.elapsed();
    let mut sent = 0usize;
    while let Some(at) = next_send(pace, origin, start, sent).await {
        sent += 1;
        stamp_payload_at(&mut payload, at, sent as u64);
        c.publish("g.1", payload.clone().into()).await?;
        c.flush().await?;
    }
    let load_cores = me.cores();
    settle(&got, sent * m, Duration::from_secs(30), &stop).await;
    let mut seen = Vec::new();
    for r in receivers {
        seen.push(r.await?);
    }
    Ok(summarize(sent, m, start, &seen, load_cores))
}

/// The comparators' send schedule: given how many were sent, waits for the
/// next send and returns its stamp (since `origin`): now in a closed loop,
/// the scheduled time in an open one; `None` when sending is over.
async fn next_send(
    pace: Pace<'_>,
    origin: Instant,
    start: Duration,
    sent: usize,
) -> Option<Duration> {
    match pace {
        Pace::Closed(duration) => {
            let now = origin.elapsed();
            (now < start + duration).then_some(now)
        }
        Pace::Open(arrivals) => {
            let due = start + *arrivals.get(sent)?;
            tokio::time::sleep_until((origin + due).into()).await;
            Some(due)
        }
    }
}
