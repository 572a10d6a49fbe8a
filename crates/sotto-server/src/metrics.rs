//! Prometheus metrics: counts and latencies only, never identities (no
//! handle, device, group or address appears as a label).
//!
//! The store's counts (`sotto_mailbox_pending`, `sotto_accounts`, ...) are
//! read at scrape time and left out of a scrape whose read failed or timed
//! out (`sotto_store_up` is then 0), so a dashboard never shows stale
//! values as current.

use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::{Stats, StoreError};

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
    /// New mailbox entries handed to connections on this node by the write
    /// that made them (`crate::watch`).
    pub offers: Counter,
    /// Deliveries sent from such an entry, without a mailbox read.
    pub offered_deliveries: Counter,
    /// Requests answered with an error, by error code.
    pub errors: Family<Labels, Counter>,
    /// Time to answer a request, by request kind.
    pub request_seconds: Family<Labels, Histogram>,
    /// Failed store operations that were temporary (database down, disk full),
    /// in requests and in background work.
    pub store_unavailable: Counter,
    /// Every failed store operation, by the work it was for (`request`,
    /// `delivery`, `watch`, `purge`, `readiness`, `stats`).
    pub store_failures: Family<Labels, Counter>,
    /// 1 if the store answered this scrape's read of its counts, else 0.
    store_up: Gauge,
    /// 1 while this node's bus reaches the other nodes, else 0.
    bus_connected: Gauge,
    /// Reads of the mailbox heads by the store watch.
    pub store_polls: Counter,
    /// Connections woken by the store watch (mail whose bus wake-up was lost).
    pub store_poll_wakeups: Counter,
    /// Mail carried by the bus that this node could not open: not sealed
    /// under its key (another node's `directory.key` differs) or forged.
    pub bus_mail_rejected: Counter,
    store_registry: Registry,
    mailbox_pending: Gauge,
    accounts: Gauge,
    live_devices: Gauge,
    groups: Gauge,
    /// Set when shutdown begins: not ready for new connections.
    pub draining: AtomicBool,
    /// Whether the store answered its last readiness check (true until a
    /// check says otherwise: the store answered at start).
    store_reachable: AtomicBool,
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
            offers: Counter::default(),
            offered_deliveries: Counter::default(),
            errors: Family::default(),
            request_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            store_unavailable: Counter::default(),
            store_failures: Family::default(),
            store_up: Gauge::default(),
            bus_connected: Gauge::default(),
            store_polls: Counter::default(),
            store_poll_wakeups: Counter::default(),
            bus_mail_rejected: Counter::default(),
            store_registry: Registry::default(),
            mailbox_pending: Gauge::default(),
            accounts: Gauge::default(),
            live_devices: Gauge::default(),
            groups: Gauge::default(),
            draining: AtomicBool::new(false),
            store_reachable: AtomicBool::new(true),
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
            "offers",
            "New mailbox entries handed to this node's connections by their write",
            m.offers.clone(),
        );
        registry.register(
            "offered_deliveries",
            "Deliveries sent from a handed entry, without a mailbox read",
            m.offered_deliveries.clone(),
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
            "store_failures",
            "Failed store operations, by the work they were for",
            m.store_failures.clone(),
        );
        registry.register(
            "store_up",
            "Whether the store answered this scrape (else its counts are left out)",
            m.store_up.clone(),
        );
        registry.register(
            "bus_connected",
            "Whether this node's bus reaches the other nodes",
            m.bus_connected.clone(),
        );
        registry.register(
            "store_polls",
            "Reads of the mailbox heads of connected devices",
            m.store_polls.clone(),
        );
        registry.register(
            "store_poll_wakeups",
            "Connections woken by a read of the store (a bus wake-up was lost)",
            m.store_poll_wakeups.clone(),
        );
        registry.register(
            "bus_mail_rejected",
            "Mail carried by the bus not sealed under this node's key (directory.key differs, or forged)",
            m.bus_mail_rejected.clone(),
        );
        let mut store_registry = Registry::with_prefix("sotto");
        store_registry.register(
            "mailbox_pending",
            "Mailbox entries waiting for delivery (whole cluster)",
            m.mailbox_pending.clone(),
        );
        store_registry.register("accounts", "Registered accounts", m.accounts.clone());
        store_registry.register(
            "live_devices",
            "Devices that may log in",
            m.live_devices.clone(),
        );
        store_registry.register("groups", "Groups routed", m.groups.clone());
        Self {
            registry,
            store_registry,
            ..m
        }
    }

    /// Counts a failed store operation of `work`.
    pub fn store_failed(&self, work: &str, e: &StoreError) {
        self.store_failures
            .get_or_create(&vec![("work", work.to_owned())])
            .inc();
        if matches!(e, StoreError::Unavailable(_)) {
            self.store_unavailable.inc();
        }
    }

    /// Counts a store operation of `work` that did not answer in time.
    pub fn store_timed_out(&self, work: &str) {
        self.store_failed(work, &StoreError::Unavailable("timed out".into()));
    }

    /// Records whether the bus reaches the other nodes.
    pub fn set_bus_connected(&self, connected: bool) {
        self.bus_connected.set(i64::from(connected));
    }

    /// The Prometheus text exposition, with the store's counts if this
    /// scrape read them (`None`: the store did not answer; they are left
    /// out and `sotto_store_up` is 0).
    pub fn render(&self, stats: Option<Stats>) -> String {
        self.store_up.set(i64::from(stats.is_some()));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        if let Some(s) = stats {
            let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            self.mailbox_pending.set(g(s.pending_deliveries));
            self.accounts.set(g(s.accounts));
            self.live_devices.set(g(s.live_devices));
            self.groups.set(g(s.groups));
            let mut counts = String::new();
            let _ = encode(&mut counts, &self.store_registry);
            // Each encoding ends with the `# EOF` line; keep the last one.
            if let Some(head) = out.strip_suffix("# EOF\n") {
                out = format!("{head}{counts}");
            }
        }
        out
    }

    /// Records the outcome of a readiness check of the store.
    pub fn set_store_reachable(&self, reachable: bool) {
        self.store_reachable.store(reachable, Ordering::Relaxed);
    }

    /// Whether the store answered its last readiness check.
    pub fn store_reachable(&self) -> bool {
        self.store_reachable.load(Ordering::Relaxed)
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_counts_are_left_out_when_the_store_did_not_answer() {
        let m = Metrics::new();
        let fresh = m.render(Some(Stats {
            accounts: 3,
            ..Stats::default()
        }));
        assert!(fresh.contains("sotto_accounts 3"), "{fresh}");
        assert!(fresh.contains("sotto_store_up 1"), "{fresh}");
        assert_eq!(fresh.matches("# EOF").count(), 1, "{fresh}");
        assert!(fresh.ends_with("# EOF\n"));
        let stale = m.render(None);
        assert!(!stale.contains("sotto_accounts"), "{stale}");
        assert!(stale.contains("sotto_store_up 0"), "{stale}");
        m.store_failed("purge", &StoreError::Unavailable("down".into()));
        m.store_failed("purge", &StoreError::Internal("bug".into()));
        let after = m.render(None);
        assert!(
            after.contains("sotto_store_failures_total{work=\"purge\"} 2"),
            "{after}"
        );
        assert!(after.contains("sotto_store_unavailable_total 1"), "{after}");
    }
}
