//! Prometheus metrics: counts and latencies only, never identities (no
//! handle, device, group or address appears as a label).

use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::Stats;

type Labels = Vec<(&'static str, String)>;

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open client connections.
    pub connections: Gauge,
    /// Connections accepted since start.
    pub connections_accepted: Counter,
    /// Connections refused by a connection cap.
    pub connections_refused: Counter,
    /// Messages (application, commit, Welcome, device) stored for delivery.
    pub messages_accepted: Counter,
    /// Mailbox entries pushed to devices.
    pub deliveries: Counter,
    /// Requests answered with an error, by error code.
    pub errors: Family<Labels, Counter>,
    /// Time to answer a request, by request kind.
    pub request_seconds: Family<Labels, Histogram>,
    /// Failed store operations that were temporary (database down, disk full).
    pub store_unavailable: Counter,
    mailbox_pending: Gauge,
    accounts: Gauge,
    live_devices: Gauge,
    groups: Gauge,
    /// Set when shutdown begins: not ready for new connections.
    pub draining: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sotto");
        let m = Self {
            connections: Gauge::default(),
            connections_accepted: Counter::default(),
            connections_refused: Counter::default(),
            messages_accepted: Counter::default(),
            deliveries: Counter::default(),
            errors: Family::default(),
            request_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            store_unavailable: Counter::default(),
            mailbox_pending: Gauge::default(),
            accounts: Gauge::default(),
            live_devices: Gauge::default(),
            groups: Gauge::default(),
            draining: AtomicBool::new(false),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Open client connections",
            m.connections.clone(),
        );
        registry.register(
            "connections_accepted",
            "Connections accepted",
            m.connections_accepted.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused by a connection cap",
            m.connections_refused.clone(),
        );
        registry.register(
            "messages_accepted",
            "Messages stored for delivery",
            m.messages_accepted.clone(),
        );
        registry.register(
            "deliveries",
            "Mailbox entries pushed to devices",
            m.deliveries.clone(),
        );
        registry.register(
            "request_errors",
            "Requests answered with an error",
            m.errors.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer a request",
            m.request_seconds.clone(),
        );
        registry.register(
            "store_unavailable",
            "Store operations that failed because the store was unavailable",
            m.store_unavailable.clone(),
        );
        registry.register(
            "mailbox_pending",
            "Mailbox entries waiting for delivery (whole cluster)",
            m.mailbox_pending.clone(),
        );
        registry.register("accounts", "Registered accounts", m.accounts.clone());
        registry.register(
            "live_devices",
            "Devices that may log in",
            m.live_devices.clone(),
        );
        registry.register("groups", "Groups routed", m.groups.clone());
        Self { registry, ..m }
    }

    /// The Prometheus text exposition, with the store's counts if known.
    pub fn render(&self, stats: Option<Stats>) -> String {
        if let Some(s) = stats {
            let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            self.mailbox_pending.set(g(s.pending_deliveries));
            self.accounts.set(g(s.accounts));
            self.live_devices.set(g(s.live_devices));
            self.groups.set(g(s.groups));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}
