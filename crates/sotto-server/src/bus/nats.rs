//! [`NatsBus`]: "new mail" notifications between server nodes through NATS.
//!
//! Each node keeps a [`LocalBus`] for its own connections and, for each
//! connected device, a NATS subscription on `<prefix>.wake.<device hex>`.
//! Publishing notifies local connections at once and hands the wake-ups to
//! a background task that publishes them to NATS; a node ignores its own
//! wake-ups coming back. NATS carries nothing but device ids: the message
//! is in the [`crate::store::Store`] before anyone is woken, and no answer
//! to a client waits on NATS: a subscription is made in the background
//! (a login never waits for it), and a node starts while NATS is
//! unreachable and connects when it can. When NATS is unreachable, wake-ups
//! for other nodes are dropped (the node watches the store meanwhile,
//! `crate::watch`); when the connection comes back, the node wakes every
//! local subscription once, so mail stored meanwhile is delivered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use rand::RngCore;
use sotto_proto::DeviceId;
use tokio::sync::mpsc;

use super::{Bus, LocalBus, Subscription};

/// Wake-ups queued for NATS before new ones are dropped.
const QUEUE: usize = 65_536;

/// How long a start waits for the first connection before going on without.
const CONNECT_WAIT: Duration = Duration::from_secs(2);

/// How long a subscription waits for NATS to confirm it, only while NATS
/// is connected (then it takes one round trip); a login never waits for a
/// bus that is down.
const SUBSCRIBE_WAIT: Duration = Duration::from_millis(250);

/// How often the client pings NATS: a connection that answers no two
/// pings in a row is dropped, so a silent partition is noticed in seconds.
const PING_INTERVAL: Duration = Duration::from_secs(2);

/// The bus of a node in a cluster.
#[derive(Debug, Clone)]
pub struct NatsBus {
    local: LocalBus,
    client: async_nats::Client,
    prefix: Arc<str>,
    node: Arc<[u8; 16]>,
    queue: mpsc::Sender<Vec<DeviceId>>,
    dropped: Arc<AtomicU64>,
}

/// Why the bus could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to NATS at {url}: {reason}")]
pub struct NatsError {
    url: String,
    reason: String,
}

fn subject(prefix: &str, device: &DeviceId) -> String {
    format!("{prefix}.wake.{}", hex::encode(device.0))
}

impl NatsBus {
    /// Starts the bus for the NATS server(s) at `url` (`nats://host:port`,
    /// several comma-separated). `prefix` namespaces the subjects, so
    /// several Sotto clusters can share one NATS. Returns at once, whether
    /// NATS is reachable or not: the connection is made (and remade, forever)
    /// in the background. Fails only on a URL it cannot use.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, NatsError> {
        let local = LocalBus::new();
        let waker = local.clone();
        // The first connection made during the start wakes nobody (nothing
        // was missed); any later one, and the first if the node started
        // without NATS, wakes every local connection.
        let first_missed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connected_before = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (missed, before) = (first_missed.clone(), connected_before.clone());
        let client = async_nats::ConnectOptions::new()
            .name("sotto-server")
            .connection_timeout(Duration::from_secs(2))
            .ping_interval(PING_INTERVAL)
            .max_reconnects(None)
            .retry_on_initial_connect()
            .event_callback(move |event| {
                let waker = waker.clone();
                let (missed, before) = (missed.clone(), before.clone());
                async move {
                    match event {
                        async_nats::Event::Connected
                            if !before.swap(true, Ordering::SeqCst)
                                && !missed.load(Ordering::SeqCst) =>
                        {
                            tracing::info!("bus connected");
                        }
                        // Wake-ups from other nodes may have been lost
                        // before this (re)connection.
                        async_nats::Event::Connected => {
                            tracing::info!("bus connected; waking local connections");
                            waker.wake_all();
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("bus disconnected; cross-node wake-ups are paused");
                        }
                        other => tracing::debug!(event = %other, "bus event"),
                    }
                }
            })
            .connect(url)
            .await
            .map_err(|e| NatsError {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        let started = tokio::time::Instant::now();
        while client.connection_state() != async_nats::connection::State::Connected {
            if started.elapsed() >= CONNECT_WAIT {
                tracing::warn!(
                    "bus unreachable; serving without it and connecting in the background"
                );
                first_missed.store(true, Ordering::SeqCst);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut node = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut node);
        let (queue, rx) = mpsc::channel(QUEUE);
        let bus = Self {
            local,
            client,
            prefix: prefix.into(),
            node: Arc::new(node),
            queue,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        tokio::spawn(bus.clone().publisher(rx));
        Ok(bus)
    }

    /// Wake-ups dropped because NATS could not keep up or was down.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Publishes queued wake-ups; ends when every [`NatsBus`] clone is gone.
    async fn publisher(self, mut rx: mpsc::Receiver<Vec<DeviceId>>) {
        let client = self.client.clone();
        let prefix = self.prefix.clone();
        let node = bytes::Bytes::copy_from_slice(&self.node[..]);
        let dropped = self.dropped.clone();
        // Only the receiver keeps the task alive, not a sender of our own.
        drop(self);
        while let Some(devices) = rx.recv().await {
            for d in devices {
                if client
                    .publish(subject(&prefix, &d), node.clone())
                    .await
                    .is_err()
                {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

impl Bus for NatsBus {
    async fn subscribe(&self, device: DeviceId) -> Subscription {
        let mut local = self.local.subscribe_now(device);
        let notify = local.notify.clone();
        let on_drop = local.on_drop.take();
        let subject = subject(&self.prefix, &device);
        let client = self.client.clone();
        let node = self.node.clone();
        let waker = notify.clone();
        // A probe of our own, published after the subscription on the same
        // connection: when it comes back, the server has the subscription,
        // so every later publish from any node reaches it. (The client's
        // `flush` only writes the socket; it does not wait for the server.)
        // Only a connected bus is waited for, and briefly: a probe that
        // comes back after the wait wakes the connection once, to read what
        // a wake-up published before then missed. If it never does (NATS is
        // down), the store watch and the wake-up of every connection on
        // reconnection stand in.
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let mut probe = b"probe".to_vec();
        probe.extend_from_slice(&rand::random::<[u8; 16]>());
        let task = tokio::spawn(async move {
            let mut sub = match client.subscribe(subject.clone()).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "bus subscription failed");
                    return;
                }
            };
            let mut ready = Some(ready_tx);
            if client
                .publish(subject, bytes::Bytes::from(probe.clone()))
                .await
                .is_err()
            {
                // No confirmation will come: read the mailbox once more.
                ready = None;
                waker.notify_one();
            }
            while let Some(m) = sub.next().await {
                if m.payload[..] == probe[..] {
                    // Nobody waited any more: wake the connection instead.
                    if let Some(r) = ready.take()
                        && r.send(()).is_err()
                    {
                        waker.notify_one();
                    }
                } else if m.payload[..] != node[..] && !m.payload.starts_with(b"probe") {
                    waker.notify_one();
                }
            }
        });
        if self.connected() {
            let _ = tokio::time::timeout(SUBSCRIBE_WAIT, ready_rx).await;
        }
        Subscription {
            notify,
            on_drop: Some(Box::new(move || {
                // Dropping the NATS subscriber (with its task) unsubscribes.
                task.abort();
                if let Some(f) = on_drop {
                    f();
                }
            })),
        }
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn may_lose_wakeups(&self) -> bool {
        true
    }

    fn publish(&self, devices: &[DeviceId]) {
        self.local.publish(devices);
        self.publish_elsewhere(devices);
    }

    fn publish_elsewhere(&self, devices: &[DeviceId]) {
        if devices.is_empty() {
            return;
        }
        if self.queue.try_send(devices.to_vec()).is_err() {
            self.dropped
                .fetch_add(devices.len() as u64, Ordering::Relaxed);
        }
    }
}
