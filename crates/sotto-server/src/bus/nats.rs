//! [`NatsBus`]: "new mail" notifications between server nodes through NATS.
//!
//! Each node keeps a [`LocalBus`] for its own connections and, for each
//! connected device, a NATS subscription on `<prefix>.wake.<device hex>`.
//! Publishing notifies local connections at once and hands the wake-ups to
//! a background task that publishes them to NATS; a node ignores its own
//! wake-ups coming back.
//!
//! A message just stored is carried to the other nodes once, on
//! `<prefix>.mail`, which every node subscribes to, sealed under the
//! cluster's key (`super::carried`): each node hands it to its own
//! connections of the recipients (the sink set by [`Bus::receive_mail`]).
//! One that does not fit in a NATS message wakes its devices instead.
//! NATS sees device ids and sealed bytes only. The message is in the
//! [`crate::store::Store`] before it is carried or anyone is woken, and no
//! answer to a client waits on NATS: a subscription is made in the background
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

use super::carried::{MailKey, Opener, Refused, Sealer};
use super::{Bus, LocalBus, MailSink, Subscription};
use crate::store::Posted;
use sotto_proto::EncodedEnvelope;

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
#[derive(Clone)]
pub struct NatsBus {
    local: LocalBus,
    client: async_nats::Client,
    prefix: Arc<str>,
    node: Arc<[u8; 16]>,
    queue: mpsc::Sender<Outbound>,
    dropped: Arc<AtomicU64>,
    sealer: Arc<Sealer>,
    opener: Arc<Opener>,
    sink: Arc<std::sync::OnceLock<MailSink>>,
    /// The task receiving carried mail, stopped with the last clone.
    receiver: Arc<Stop>,
}

/// Aborts a task when dropped.
#[derive(Debug, Default)]
struct Stop(std::sync::OnceLock<tokio::task::AbortHandle>);

impl Drop for Stop {
    fn drop(&mut self) {
        if let Some(task) = self.0.get() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("prefix", &self.prefix)
            .field("connected", &self.connected())
            .finish_non_exhaustive()
    }
}

/// What the publisher task sends.
#[derive(Debug)]
enum Outbound {
    /// Wake-ups for these devices.
    Wake(Vec<DeviceId>),
    /// A sealed message for the other nodes, and the devices to wake
    /// instead if NATS does not take a message that large.
    Mail(bytes::Bytes, Vec<DeviceId>),
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

fn mail_subject(prefix: &str) -> String {
    format!("{prefix}.mail")
}

impl NatsBus {
    /// Starts the bus for the NATS server(s) at `url` (`nats://host:port`,
    /// several comma-separated). `prefix` namespaces the subjects, so
    /// several Sotto clusters can share one NATS; `key` seals the mail
    /// carried between nodes, and must be the same on every node. Returns
    /// soon, whether NATS is reachable or not: the connection is made (and
    /// remade, forever) in the background. Fails only on a URL it cannot
    /// use.
    pub async fn connect(url: &str, prefix: &str, key: MailKey) -> Result<Self, NatsError> {
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
            sealer: Arc::new(Sealer::new(&key, node)),
            opener: Arc::new(Opener::new(key, node)),
            sink: Arc::default(),
            receiver: Arc::default(),
        };
        tokio::spawn(bus.clone().publisher(rx));
        bus.receive_carried().await;
        Ok(bus)
    }

    /// Subscribes to the mail other nodes carry, and hands each message
    /// to the sink. While NATS is connected, waits (briefly) until NATS
    /// confirms the subscription, so mail carried after the start arrives.
    async fn receive_carried(&self) {
        let (client, subject) = (self.client.clone(), mail_subject(&self.prefix));
        let (opener, sink) = (self.opener.clone(), self.sink.clone());
        // Our own message comes back once the subscription is in place.
        let probe = bytes::Bytes::from(self.sealer.seal(&[], &probe_envelope()));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut sub = match client.subscribe(subject.clone()).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "bus subscription to carried mail failed");
                    return;
                }
            };
            let mut ready = Some(ready_tx);
            if client.publish(subject, probe).await.is_err() {
                ready = None;
            }
            while let Some(m) = sub.next().await {
                match opener.open(&m.payload) {
                    Ok(carried) if carried.posted.is_empty() => {}
                    Ok(carried) => {
                        if let Some(sink) = sink.get() {
                            sink(&carried.posted, &Arc::new(carried.envelope));
                        }
                    }
                    Err(Refused::Own) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Err(Refused::Unauthentic) => {
                        let n = opener.rejected();
                        // The first, then ever more rarely.
                        if n.is_power_of_two() {
                            tracing::warn!(
                                rejected = n,
                                "carried mail that is not sealed under this node's key: is \
                                 directory.key the same on every node?"
                            );
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "carried mail dropped"),
                }
            }
        });
        let _ = self.receiver.0.set(task.abort_handle());
        if self.connected() {
            let _ = tokio::time::timeout(CONNECT_WAIT, ready_rx).await;
        }
    }

    /// Wake-ups and carried messages dropped because NATS could not keep
    /// up or was down.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Publishes queued wake-ups and mail; ends when every [`NatsBus`]
    /// clone is gone.
    async fn publisher(self, mut rx: mpsc::Receiver<Outbound>) {
        let client = self.client.clone();
        let prefix = self.prefix.clone();
        let node = bytes::Bytes::copy_from_slice(&self.node[..]);
        let dropped = self.dropped.clone();
        let mail = mail_subject(&prefix);
        // Only the receiver keeps the task alive, not a sender of our own.
        drop(self);
        while let Some(out) = rx.recv().await {
            let devices = match out {
                Outbound::Wake(devices) => devices,
                Outbound::Mail(sealed, devices) => match client.publish(mail.clone(), sealed).await
                {
                    Ok(()) => continue,
                    Err(e)
                        if e.kind() == async_nats::client::PublishErrorKind::MaxPayloadExceeded =>
                    {
                        devices
                    }
                    Err(_) => {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                },
            };
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

/// The envelope of the probe that confirms the mail subscription.
fn probe_envelope() -> EncodedEnvelope {
    EncodedEnvelope::new(&sotto_proto::Envelope {
        group: sotto_proto::GroupId([0; 32]),
        sender: DeviceId::NONE,
        msg_id: sotto_proto::MessageId([0; 16]),
        kind: sotto_proto::EnvelopeKind::Device,
        server_time_ms: 0,
        payload: sotto_proto::Blob(Vec::new()),
    })
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
        if devices.is_empty() {
            return;
        }
        if self
            .queue
            .try_send(Outbound::Wake(devices.to_vec()))
            .is_err()
        {
            self.dropped
                .fetch_add(devices.len() as u64, Ordering::Relaxed);
        }
    }

    fn carries_mail(&self) -> bool {
        true
    }

    fn carry(&self, posted: &[Posted], envelope: &Arc<EncodedEnvelope>) {
        if posted.is_empty() {
            return;
        }
        let sealed = bytes::Bytes::from(self.sealer.seal(posted, envelope));
        let devices = posted.iter().map(|p| p.device).collect();
        if self
            .queue
            .try_send(Outbound::Mail(sealed, devices))
            .is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn mail_rejected(&self) -> u64 {
        self.opener.rejected()
    }

    fn receive_mail(&self, sink: MailSink) {
        if self.sink.set(sink).is_err() {
            tracing::warn!("a second sink for carried mail was ignored");
        }
    }
}
