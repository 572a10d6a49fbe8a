//! The store watch: delivery that does not depend on the bus.
//!
//! A cluster bus (NATS) may lose wake-ups: while it is down, while this
//! node or another one is cut off from it, or when its queue overflows.
//! The mail itself is always in the store, so every node also reads, every
//! `store_poll`, the heads of the mailboxes of its connected devices (one
//! query for them all, [`crate::store::Store::mailbox_heads`]) and wakes a
//! connection whose device has mail past what it delivered:
//! - at once while this node's bus is down (nothing else will wake it);
//! - while the bus is up, only for mail that was already waiting at the
//!   previous read and is still not delivered (the wake-up of another node
//!   was lost), so a working bus costs no extra mailbox reads.
//!
//! Each head wakes a device once. [`MailWatch`] is the node's list of
//! connected devices and what each connection delivered; [`Judge`] is the
//! decision, without IO; [`poll`] is the task that runs it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sotto_proto::DeviceId;
use tokio::sync::{Notify, watch};

use crate::bus::Bus;
use crate::store::Store;

#[derive(Debug)]
struct Watcher {
    id: u64,
    notify: Arc<Notify>,
    delivered: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    devices: HashMap<DeviceId, Vec<Watcher>>,
}

/// The devices connected to this node, with what each connection delivered.
#[derive(Default)]
pub struct MailWatch {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for MailWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MailWatch")
    }
}

/// One connection's place in the [`MailWatch`]; leaves it on drop.
#[derive(Debug)]
pub struct Watched {
    device: DeviceId,
    id: u64,
    notify: Arc<Notify>,
    delivered: Arc<AtomicU64>,
    inner: Arc<Mutex<Inner>>,
}

impl Watched {
    /// Completes when the watch found mail this connection has not delivered.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// Records the highest sequence number this connection delivered.
    pub fn delivered(&self, seq: u64) {
        self.delivered.fetch_max(seq, Ordering::Relaxed);
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = g.devices.get_mut(&self.device) {
            v.retain(|w| w.id != self.id);
            if v.is_empty() {
                g.devices.remove(&self.device);
            }
        }
    }
}

impl MailWatch {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a thread panicked holding it; the map
        // is consistent at every step.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a connection of `device`.
    pub fn register(&self, device: DeviceId) -> Watched {
        let notify = Arc::new(Notify::new());
        let delivered = Arc::new(AtomicU64::new(0));
        let mut g = self.lock();
        g.next += 1;
        let id = g.next;
        g.devices.entry(device).or_default().push(Watcher {
            id,
            notify: notify.clone(),
            delivered: delivered.clone(),
        });
        Watched {
            device,
            id,
            notify,
            delivered,
            inner: self.inner.clone(),
        }
    }

    /// Each connected device with the least any of its connections delivered.
    pub fn delivered(&self) -> HashMap<DeviceId, u64> {
        self.lock()
            .devices
            .iter()
            .map(|(d, v)| {
                let least = v
                    .iter()
                    .map(|w| w.delivered.load(Ordering::Relaxed))
                    .min()
                    .unwrap_or(0);
                (*d, least)
            })
            .collect()
    }

    /// Wakes every connection of these devices.
    pub fn wake(&self, devices: &[DeviceId]) {
        let g = self.lock();
        for d in devices {
            for w in g.devices.get(d).into_iter().flatten() {
                w.notify.notify_one();
            }
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    /// The head at the previous read, if the device was behind it then.
    behind_at: Option<u64>,
    /// The head the device was last woken for.
    woken_at: u64,
}

/// Which devices to wake after a read of the heads; remembers what it saw.
#[derive(Debug, Default)]
pub struct Judge {
    seen: HashMap<DeviceId, Seen>,
}

impl Judge {
    /// The devices to wake, given the `heads` just read, what their
    /// connections `delivered`, and whether this node's bus is connected.
    pub fn judge(
        &mut self,
        heads: &[(DeviceId, u64)],
        delivered: &HashMap<DeviceId, u64>,
        bus_connected: bool,
    ) -> Vec<DeviceId> {
        let mut wake = Vec::new();
        let mut seen = HashMap::with_capacity(heads.len());
        for &(d, head) in heads {
            let Some(&done) = delivered.get(&d) else {
                continue;
            };
            if head <= done {
                continue;
            }
            let mut s = self.seen.get(&d).copied().unwrap_or_default();
            let lost = s.behind_at.is_some_and(|prev| done < prev);
            if head > s.woken_at && (!bus_connected || lost) {
                wake.push(d);
                s.woken_at = head;
            }
            s.behind_at = Some(head);
            seen.insert(d, s);
        }
        // Devices gone or caught up are forgotten, except what they were
        // woken for (a head whose entries expired is not woken for again).
        for (d, s) in &self.seen {
            if !seen.contains_key(d) && delivered.contains_key(d) && s.woken_at > 0 {
                seen.insert(
                    *d,
                    Seen {
                        behind_at: None,
                        woken_at: s.woken_at,
                    },
                );
            }
        }
        self.seen = seen;
        wake
    }
}

/// What the poll task reads and wakes: the node's store, bus, watch and
/// metrics.
pub(crate) struct Polled<'a, S, B> {
    pub(crate) store: &'a S,
    pub(crate) bus: &'a B,
    pub(crate) watch: &'a MailWatch,
    pub(crate) metrics: &'a crate::metrics::Metrics,
}

/// Reads the heads every `every` and wakes connections whose mail the bus
/// did not announce, until `stop` turns true. Runs only with a bus that may
/// lose wake-ups ([`Bus::may_lose_wakeups`]).
pub(crate) async fn poll<S: Store, B: Bus>(
    shared: Polled<'_, S, B>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    if every.is_zero() || !shared.bus.may_lose_wakeups() {
        return;
    }
    let mut judge = Judge::default();
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let bus_connected = shared.bus.connected();
        shared.metrics.set_bus_connected(bus_connected);
        let delivered = shared.watch.delivered();
        if delivered.is_empty() {
            continue;
        }
        let devices: Vec<DeviceId> = delivered.keys().copied().collect();
        // A store that does not answer within the interval counts as down;
        // the next read tries again.
        let read = tokio::time::timeout(
            every.max(Duration::from_millis(100)),
            shared.store.mailbox_heads(devices),
        )
        .await;
        shared.metrics.store_polls.inc();
        match read {
            Ok(Ok(heads)) => {
                let wake = judge.judge(&heads, &delivered, bus_connected);
                if !wake.is_empty() {
                    shared.metrics.store_poll_wakeups.inc_by(wake.len() as u64);
                    shared.watch.wake(&wake);
                }
            }
            Ok(Err(e)) => {
                shared.metrics.store_failed("watch", &e);
                tracing::debug!(error = %e, "reading mailbox heads failed");
            }
            Err(_) => shared.metrics.store_timed_out("watch"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> DeviceId {
        DeviceId([n; 32])
    }

    #[test]
    fn a_lost_bus_wakes_at_once_and_once_per_head() {
        let mut j = Judge::default();
        let delivered = HashMap::from([(d(1), 3), (d(2), 5)]);
        let heads = [(d(1), 4), (d(2), 5)];
        assert_eq!(j.judge(&heads, &delivered, false), vec![d(1)]);
        // Not delivered yet (the pump is running): not woken again.
        assert!(j.judge(&heads, &delivered, false).is_empty());
        // New mail: woken again.
        assert_eq!(j.judge(&[(d(1), 6)], &delivered, false), vec![d(1)]);
    }

    #[test]
    fn a_working_bus_is_trusted_for_one_interval() {
        let mut j = Judge::default();
        let mut delivered = HashMap::from([(d(1), 3)]);
        // Mail the bus is delivering right now: left to the bus.
        assert!(j.judge(&[(d(1), 4)], &delivered, true).is_empty());
        // Delivered by the next read: nothing to do.
        delivered.insert(d(1), 4);
        assert!(j.judge(&[(d(1), 4)], &delivered, true).is_empty());
        // Mail that is still waiting one read later: its wake-up was lost.
        assert!(j.judge(&[(d(1), 5)], &delivered, true).is_empty());
        assert_eq!(j.judge(&[(d(1), 6)], &delivered, true), vec![d(1)]);
        // A head whose entries are gone (expired) is not woken for again.
        assert!(j.judge(&[(d(1), 6)], &delivered, true).is_empty());
        assert!(j.judge(&[(d(1), 6)], &delivered, false).is_empty());
    }

    #[test]
    fn devices_not_connected_are_ignored() {
        let mut j = Judge::default();
        assert!(j.judge(&[(d(9), 4)], &HashMap::new(), false).is_empty());
    }

    #[tokio::test]
    async fn the_watch_wakes_only_the_devices_named_and_forgets_dropped_ones() {
        let w = MailWatch::default();
        let a = w.register(d(1));
        let b = w.register(d(2));
        a.delivered(7);
        a.delivered(3);
        assert_eq!(w.delivered().get(&d(1)), Some(&7));
        w.wake(&[d(1)]);
        tokio::time::timeout(Duration::from_secs(1), a.notified())
            .await
            .expect("woken");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), b.notified())
                .await
                .is_err()
        );
        drop(a);
        assert!(!w.delivered().contains_key(&d(1)));
    }
}
