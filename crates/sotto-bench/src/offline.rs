//! Scenario `offline`: 1,000 devices are offline while 10,000 messages
//! queue for them (10 each, from 8 senders in closed loops), then all
//! reconnect, spread evenly over 5 s. Reported: the time from the first
//! reconnect to the last message drained, the drain rate, and the server's
//! peak resident memory during the drain. Comparators on the same load:
//! mosquitto (QoS 1, persistent sessions, persistence on) and NATS
//! JetStream (file store, one durable pull consumer per device).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::brokers::{Broker, JetStream, Mqtt};
use crate::load::{self, Sotto};
use crate::report::{Table, ratio};
use crate::{Ctx, payload, sys};

struct Size {
    devices: usize,
    per_device: usize,
    senders: usize,
    spread: Duration,
}

/// One system's result.
#[derive(Debug, Default)]
struct Drained {
    drain: Duration,
    device_p99: Duration,
    messages: usize,
    peak_rss_kib: u64,
}

/// Samples a process's RSS every 20 ms until dropped; the peak in KiB.
struct RssPeak {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssPeak {
    fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                p.fetch_max(sys::rss_kib(pid).0, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Self { peak, task }
    }

    fn stop(self) -> u64 {
        self.task.abort();
        self.peak.load(Ordering::Relaxed)
    }
}

/// Starts `devices` reconnections spread over `spread`, each running
/// `drain(i)` (which returns when device i has all its messages); returns
/// the time from the first start to the last finish, and the p99 of one
/// device's time from its reconnection to its last message.
async fn reconnect_all<F, Fut>(size: &Size, drain: F) -> anyhow::Result<(Duration, Duration)>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let start = Instant::now();
    let step = size.spread / size.devices as u32;
    let mut tasks = Vec::with_capacity(size.devices);
    for i in 0..size.devices {
        tokio::time::sleep_until((start + step * i as u32).into()).await;
        let f = drain(i);
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = tokio::time::timeout(Duration::from_secs(120), f).await;
            (r, t.elapsed())
        }));
    }
    let mut each = Vec::with_capacity(tasks.len());
    for t in tasks {
        let (r, d) = t.await?;
        r.map_err(|_| anyhow::anyhow!("a device did not drain its queue in 120 s"))??;
        each.push(d);
    }
    let total = start.elapsed();
    each.sort();
    Ok((total, crate::report::percentile(&each, 0.99)))
}

async fn sotto(ctx: &Ctx, size: &Size, payload: &[u8]) -> anyhow::Result<Drained> {
    let s = Sotto::sqlite(&ctx.pinning)?;
    let mut inv = s.invites(size.devices + size.senders)?.into_iter();
    let mut senders = Vec::new();
    for j in 0..size.senders {
        let (d, c) = load::register(
            &s.link,
            None,
            inv.next().unwrap_or_default(),
            &format!("sender{j}"),
        )
        .await?;
        senders.push((d, c, Vec::new()));
    }
    let mut devices = Vec::new();
    for i in 0..size.devices {
        let (d, c) = load::register(
            &s.link,
            None,
            inv.next().unwrap_or_default(),
            &format!("device{i}"),
        )
        .await?;
        c.close().await;
        let (sd, sc, groups) = &mut senders[i % size.senders];
        let epoch = load::make_group(sc, load::group_id(i), sd, &[&d]).await?;
        groups.push((load::group_id(i), epoch));
        devices.push(Arc::new(d));
    }
    // Queue: each sender sends `per_device` messages into each of its groups.
    let origin = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|(_, mut c, groups)| {
            let groups: Vec<(sotto_proto::GroupId, Vec<u8>)> = groups
                .iter()
                .map(|&(g, epoch)| (g, payload::for_group(payload, g, epoch)))
                .collect();
            let per = size.per_device;
            tokio::spawn(async move {
                for k in 0..per {
                    for (g, payload) in &groups {
                        let r = c
                            .request(sotto_proto::Request::Send(sotto_proto::SendRequest {
                                group: *g,
                                msg_id: load::stamped_id(origin, k as u64),
                                payload: sotto_proto::Blob(payload.clone()),
                                ttl_ms: None,
                            }))
                            .await?;
                        anyhow::ensure!(
                            matches!(r, sotto_proto::Response::Accepted { .. }),
                            "{r:?}"
                        );
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let peak = RssPeak::start(s.pid());
    let link = s.link.clone();
    let per = size.per_device;
    let (drain, device_p99) = reconnect_all(size, move |i| {
        let (link, d) = (link.clone(), devices[i].clone());
        async move {
            let mut conn = load::login(&link, None, &d).await?;
            let mut got = 0;
            let mut acks = Vec::new();
            while got < per {
                if let sotto_client::transport::Event::Deliver(m) = conn.next_event().await? {
                    if m.envelope.kind == sotto_proto::EnvelopeKind::Application {
                        got += 1;
                    }
                    acks.push(m.seq);
                }
            }
            conn.request(sotto_proto::Request::Ack { seqs: acks })
                .await?;
            conn.close().await;
            Ok(())
        }
    })
    .await?;
    Ok(Drained {
        drain,
        device_p99,
        messages: size.devices * per,
        peak_rss_kib: peak.stop(),
    })
}

async fn mqtt(ctx: &Ctx, size: &Size, payload: &[u8]) -> anyhow::Result<Drained> {
    let b = Broker::mosquitto(&ctx.pinning)?;
    for i in 0..size.devices {
        let mut m = Mqtt::connect(b.addr, None, &format!("device{i}"), false).await?;
        m.subscribe(&format!("o/{i}")).await?;
    }
    let tasks: Vec<_> = (0..size.senders)
        .map(|j| {
            let (addr, payload, size_devices, per, senders) = (
                b.addr,
                payload.to_vec(),
                size.devices,
                size.per_device,
                size.senders,
            );
            tokio::spawn(async move {
                let mut s = Mqtt::connect(addr, None, &format!("sender{j}"), true).await?;
                for _ in 0..per {
                    for i in (j..size_devices).step_by(senders) {
                        s.publish_qos1(&format!("o/{i}"), &payload).await?;
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let peak = RssPeak::start(b.pid());
    let (addr, per) = (b.addr, size.per_device);
    let (drain, device_p99) = reconnect_all(size, move |i| async move {
        let mut m = Mqtt::connect(addr, None, &format!("device{i}"), false).await?;
        for _ in 0..per {
            m.next_publish().await?;
        }
        Ok(())
    })
    .await?;
    Ok(Drained {
        drain,
        device_p99,
        messages: size.devices * per,
        peak_rss_kib: peak.stop(),
    })
}

async fn jetstream(ctx: &Ctx, size: &Size, payload: &[u8]) -> anyhow::Result<Drained> {
    use async_nats::jetstream::{self, consumer, stream};
    let b = Broker::nats(&ctx.pinning, JetStream::FileStore)?;
    let js = jetstream::new(async_nats::connect(b.nats_url()).await?);
    let st = js
        .create_stream(stream::Config {
            name: "O".into(),
            subjects: vec!["o.>".into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    for i in 0..size.devices {
        st.create_consumer(consumer::pull::Config {
            durable_name: Some(format!("device{i}")),
            filter_subject: format!("o.{i}"),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    }
    let tasks: Vec<_> = (0..size.senders)
        .map(|j| {
            let (url, payload, size_devices, per, senders) = (
                b.nats_url(),
                payload.to_vec(),
                size.devices,
                size.per_device,
                size.senders,
            );
            tokio::spawn(async move {
                let js = jetstream::new(async_nats::connect(url).await?);
                for _ in 0..per {
                    for i in (j..size_devices).step_by(senders) {
                        js.publish(format!("o.{i}"), payload.clone().into())
                            .await?
                            .await?;
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let peak = RssPeak::start(b.pid());
    let (url, per) = (b.nats_url(), size.per_device);
    let (drain, device_p99) = reconnect_all(size, move |i| {
        let url = url.clone();
        async move {
            let js = jetstream::new(async_nats::connect(url).await?);
            let c: consumer::PullConsumer = js
                .get_stream("O")
                .await?
                .get_consumer(&format!("device{i}"))
                .await
                .map_err(|e| anyhow::anyhow!("jetstream consumer: {e}"))?;
            let mut msgs = c.messages().await?;
            for _ in 0..per {
                let m = msgs
                    .next()
                    .await
                    .ok_or_else(|| anyhow::anyhow!("consumer ended"))?
                    .map_err(|e| anyhow::anyhow!("jetstream: {e}"))?;
                m.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
            }
            Ok(())
        }
    })
    .await?;
    Ok(Drained {
        drain,
        device_p99,
        messages: size.devices * per,
        peak_rss_kib: peak.stop(),
    })
}

/// Scenario `offline`.
pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Table>> {
    let size = if ctx.quick {
        Size {
            devices: 20,
            per_device: 5,
            senders: 2,
            spread: Duration::from_millis(200),
        }
    } else {
        Size {
            devices: 1000,
            per_device: 10,
            senders: 8,
            spread: Duration::from_secs(5),
        }
    };
    let payload = payload::ciphertext()?;
    let rows = [
        ("Sotto, 1 node, SQLite", sotto(ctx, &size, &payload).await?),
        (
            "mosquitto, QoS 1, persistent sessions",
            mqtt(ctx, &size, &payload).await?,
        ),
        (
            "NATS JetStream, file store, durable consumers",
            jetstream(ctx, &size, &payload).await?,
        ),
    ];
    let mut t = Table::new(
        "offline",
        "devices offline while messages queue, then all reconnect",
        &[
            "system",
            "messages drained",
            "time to drain all (s)",
            "drain msgs/s",
            "ratio to Sotto",
            "one device: reconnect to last message p99 (ms)",
            "server peak RSS during drain (MiB)",
        ],
    );
    let rate = |d: &Drained| d.messages as f64 / d.drain.as_secs_f64().max(1e-9);
    let base = rate(&rows[0].1);
    for (name, d) in &rows {
        t.row(vec![
            (*name).into(),
            d.messages.to_string(),
            format!("{:.2}", d.drain.as_secs_f64()),
            format!("{:.0}", rate(d)),
            ratio(rate(d), base),
            crate::report::ms(d.device_p99),
            format!("{:.0}", d.peak_rss_kib as f64 / 1024.0),
        ]);
    }
    t.note(format!(
        "{} devices × {} queued messages of {} bytes (a real MLS PrivateMessage) from {} senders; reconnections spread evenly over {:.1} s, so the drain cannot finish sooner",
        size.devices,
        size.per_device,
        payload.len(),
        size.senders,
        size.spread.as_secs_f64()
    ));
    Ok(vec![t])
}
