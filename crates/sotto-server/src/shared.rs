//! What every connection of a node shares: the store, the bus, the
//! configuration, the blob store, the metrics, the limits kept in memory,
//! the watch on connected devices' mailboxes (which hands them new mail), the reader that gathers
//! their mailbox reads, the key directory and the wall clock. Handed to
//! every service at construction; there are no globals.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::ServerConfig;

/// The wall clock, in milliseconds since the Unix epoch: message times,
/// expiries, windows kept in the store. Injected so that tests can set it.
/// (Durations and deadlines use tokio's monotonic clock, which tests pause.)
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now_ms(&self) -> u64;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// What every connection shares.
pub struct Shared<S, B> {
    /// Persistent state.
    pub store: S,
    /// Mailbox notifications.
    pub bus: B,
    /// Configuration.
    pub config: ServerConfig,
    /// Attachment bytes.
    pub blobs: Arc<dyn crate::blobs::BlobStore>,
    /// Counters and latencies for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The wall clock.
    pub clock: Arc<dyn Clock>,
    /// Open connections per source address.
    pub(crate) connections: crate::limits::ConnectionSlots,
    /// KeyPackage claims per claimer, and per (claimer, target account).
    pub(crate) claims: crate::limits::Claims,
    /// Registrations, failed logins and lookups per source address.
    pub(crate) sources: crate::limits::SourceGuards,
    /// The devices connected here, for delivery without the bus.
    pub(crate) watch: crate::watch::MailWatch,
    /// Gathers the connections' mailbox reads.
    pub(crate) mailbox: crate::mailbox::MailboxReader<S>,
    /// The key directory (in the store, under the data directory's VRF key).
    pub directory: crate::directory::KeyDirectory<S>,
}

impl<S: std::fmt::Debug, B: std::fmt::Debug> std::fmt::Debug for Shared<S, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("store", &self.store)
            .field("bus", &self.bus)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S: crate::store::Store, B: crate::bus::Bus> Shared<S, B> {
    /// Shared state for `run`, on the system clock, with the key directory
    /// under `vrf` (`DataDir::directory_key`; every node of a cluster has
    /// the same). Mail the bus carries from other nodes is handed to this
    /// node's connections from now on.
    pub fn new(
        store: S,
        bus: B,
        blobs: Arc<dyn crate::blobs::BlobStore>,
        config: ServerConfig,
        vrf: crate::directory::VrfKey,
    ) -> Self {
        let watch = crate::watch::MailWatch::default();
        let metrics: Arc<crate::metrics::Metrics> = Arc::default();
        let (to, counted) = (watch.clone(), metrics.clone());
        bus.receive_mail(Arc::new(move |posted, envelope| {
            let handed = to.offer(posted, envelope);
            counted.offers.inc_by(handed as u64);
        }));
        Self {
            directory: crate::directory::KeyDirectory::new(store.clone(), vrf),
            mailbox: crate::mailbox::MailboxReader::new(store.clone()),
            store,
            bus,
            blobs,
            config,
            metrics,
            clock: Arc::new(SystemClock),
            connections: Default::default(),
            claims: Default::default(),
            sources: Default::default(),
            watch,
        }
    }

    /// The same on another clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

impl<S, B: crate::bus::Bus> Shared<S, B> {
    /// Tells the recipients of a message just stored, durably: `posted` are
    /// its mailbox entries, `envelope` the message as stored. Their
    /// connections on this node are handed it ([`crate::watch::MailWatch::offer`]);
    /// the bus carries it to the other nodes, if there are any.
    pub(crate) fn post(&self, envelope: &sotto_proto::Envelope, posted: &[crate::store::Posted]) {
        if posted.is_empty() {
            return;
        }
        let here = self.watch.any_connected(posted);
        let carried = self.bus.carries_mail();
        if here || carried {
            let encoded = Arc::new(sotto_proto::EncodedEnvelope::new(envelope));
            if here {
                let handed = self.watch.offer(posted, &encoded);
                self.metrics.offers.inc_by(handed as u64);
            }
            if carried {
                self.bus.carry(posted, &encoded);
            }
        }
    }

    /// Has the connections of devices just revoked, on every node, read
    /// their mailboxes, which tells them they are revoked, before they
    /// deliver anything they were handed.
    pub(crate) fn wake_revoked(&self, devices: &[sotto_proto::DeviceId]) {
        self.watch.wake(devices);
        self.bus.publish(devices);
    }
}
