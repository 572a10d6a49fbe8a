//! The devices connected to this node, and how mail reaches their
//! connections without a read of the store or a bus:
//! - **Offers.** A write that put a message into mailboxes hands each
//!   connected recipient's connection the entry ([`MailWatch::offer`]): its
//!   sequence number, the last one before it still in the mailbox
//!   ([`crate::store::Posted`]), and the frame's envelope, encoded once for
//!   every recipient. A connection that delivered up to there sends it at
//!   once ([`plan`]); one that is behind (it missed an entry, or its inbox
//!   overflowed) reads its mailbox instead. So one message to a group of a
//!   thousand members on this node costs no mailbox read at all.
//! - **The store watch** below, for wake-ups a cluster bus lost.
//!
//! The store watch: delivery that does not depend on the bus.
//!
//! A cluster bus (NATS) may lose wake-ups: while it is down, while this
//! node or another one is cut off from it, or when its queue overflows.
//! The mail itself is always in the store, so every node also reads, every
//! `store_poll`, the heads of the mailboxes of its connected devices (one
//! query for them all, [`crate::store::Store::mailbox_heads`]) and wakes a
//! connection whose device has mail past what it delivered or was offered
//! (mail offered is on its way; a connection behind on its offers reads
//! its mailbox by itself):
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

use std::collections::VecDeque;

use sotto_proto::{DeviceId, EncodedEnvelope};
use tokio::sync::{Notify, watch};

use crate::bus::Bus;
use crate::store::Store;

/// The most offers a connection holds before it reads its mailbox
/// instead (a connection too slow to take them).
const MAX_OFFERS: usize = 256;

/// A mailbox entry handed to a connection (see the module).
#[derive(Debug, Clone)]
pub struct Offer {
    /// Its sequence number.
    pub seq: u64,
    /// Every earlier entry still in the mailbox is at or before this.
    pub after: u64,
    /// The envelope, encoded.
    pub envelope: Arc<EncodedEnvelope>,
}

/// What a connection was handed since it last looked.
#[derive(Debug, Default)]
struct Inbox {
    offers: VecDeque<Offer>,
    /// Its mailbox must be read: offers were dropped, or the watch found
    /// mail it was not offered.
    read: bool,
}

#[derive(Debug)]
struct Watcher {
    id: u64,
    notify: Arc<Notify>,
    delivered: Arc<AtomicU64>,
    /// The highest sequence number it was offered.
    offered: AtomicU64,
    inbox: Arc<Mutex<Inbox>>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    devices: HashMap<DeviceId, Vec<Watcher>>,
}

/// The devices connected to this node, with what each connection delivered.
/// Clones share it.
#[derive(Default, Clone)]
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
    inbox: Arc<Mutex<Inbox>>,
    inner: Arc<Mutex<Inner>>,
}

impl Watched {
    /// Completes when this connection was offered mail, or the watch found
    /// mail it has not delivered: then [`Watched::take`].
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// The offers since the last call, in the order they were made, and
    /// whether the mailbox must be read as well.
    pub fn take(&self) -> (Vec<Offer>, bool) {
        let mut inbox = self.inbox.lock().unwrap_or_else(|p| p.into_inner());
        let read = std::mem::take(&mut inbox.read);
        let offers = inbox.offers.drain(..).collect();
        // An idle connection keeps no buffer.
        if inbox.offers.capacity() > 8 {
            inbox.offers = VecDeque::new();
        }
        (offers, read)
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
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let mut g = self.lock();
        g.next += 1;
        let id = g.next;
        g.devices.entry(device).or_default().push(Watcher {
            id,
            notify: notify.clone(),
            delivered: delivered.clone(),
            offered: AtomicU64::new(0),
            inbox: inbox.clone(),
        });
        Watched {
            device,
            id,
            notify,
            delivered,
            inbox,
            inner: self.inner.clone(),
        }
    }

    /// Hands the entries `posted` (of one message, `envelope`) to the
    /// connections of their devices on this node. Only after the write that
    /// made them is durable. Returns how many connections were handed one.
    pub fn offer(&self, posted: &[crate::store::Posted], envelope: &Arc<EncodedEnvelope>) -> usize {
        let g = self.lock();
        let mut handed = 0;
        for p in posted {
            for w in g.devices.get(&p.device).into_iter().flatten() {
                let mut inbox = w.inbox.lock().unwrap_or_else(|p| p.into_inner());
                if inbox.offers.len() >= MAX_OFFERS {
                    // Too slow to take them: it reads its mailbox instead.
                    inbox.offers = VecDeque::new();
                    inbox.read = true;
                } else if !inbox.read {
                    inbox.offers.push_back(Offer {
                        seq: p.seq,
                        after: p.after,
                        envelope: envelope.clone(),
                    });
                }
                drop(inbox);
                w.offered.fetch_max(p.seq, Ordering::Relaxed);
                handed += 1;
                w.notify.notify_one();
            }
        }
        handed
    }

    /// Whether any of `devices` has a connection on this node.
    pub fn any_connected(&self, devices: &[crate::store::Posted]) -> bool {
        let g = self.lock();
        devices.iter().any(|p| g.devices.contains_key(&p.device))
    }

    /// Each connected device with the least any of its connections
    /// reached: delivered, or was offered (and so will deliver, or read
    /// its mailbox, without being woken).
    pub fn reached(&self) -> HashMap<DeviceId, u64> {
        self.lock()
            .devices
            .iter()
            .map(|(d, v)| {
                let least = v
                    .iter()
                    .map(|w| {
                        let delivered = w.delivered.load(Ordering::Relaxed);
                        delivered.max(w.offered.load(Ordering::Relaxed))
                    })
                    .min()
                    .unwrap_or(0);
                (*d, least)
            })
            .collect()
    }

    /// Has every connection of these devices read its mailbox.
    pub fn wake(&self, devices: &[DeviceId]) {
        let g = self.lock();
        for d in devices {
            for w in g.devices.get(d).into_iter().flatten() {
                w.inbox.lock().unwrap_or_else(|p| p.into_inner()).read = true;
                w.notify.notify_one();
            }
        }
    }
}

/// What a connection that delivered up to `last_sent` does with `offers`
/// (in the order they were made): the ones it sends at once, in order, and
/// whether it must then read its mailbox, because an offer would skip an
/// entry it has not delivered (entries are offered in the order their
/// writes finished, which is not always their order in the mailbox).
/// Offers it delivered already (read from the store) are dropped.
pub fn plan(offers: Vec<Offer>, mut last_sent: u64) -> (Vec<Offer>, bool) {
    let mut send = Vec::with_capacity(offers.len());
    for o in offers {
        if o.seq <= last_sent {
            continue;
        }
        if o.after > last_sent {
            return (send, true);
        }
        last_sent = o.seq;
        send.push(o);
    }
    (send, false)
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
    /// connections `reached` ([`MailWatch::reached`]), and whether this
    /// node's bus is connected.
    pub fn judge(
        &mut self,
        heads: &[(DeviceId, u64)],
        reached: &HashMap<DeviceId, u64>,
        bus_connected: bool,
    ) -> Vec<DeviceId> {
        let mut wake = Vec::new();
        let mut seen = HashMap::with_capacity(heads.len());
        for &(d, head) in heads {
            let Some(&done) = reached.get(&d) else {
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
            if !seen.contains_key(d) && reached.contains_key(d) && s.woken_at > 0 {
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
/// did not announce, until `stop` turns true; counts the carried mail the
/// bus could not open. Runs only with a bus that may
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
    let mut rejected = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let bus_connected = shared.bus.connected();
        shared.metrics.set_bus_connected(bus_connected);
        let now_rejected = shared.bus.mail_rejected();
        shared
            .metrics
            .bus_mail_rejected
            .inc_by(now_rejected.saturating_sub(rejected));
        rejected = now_rejected;
        let reached = shared.watch.reached();
        if reached.is_empty() {
            continue;
        }
        let devices: Vec<DeviceId> = reached.keys().copied().collect();
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
                let wake = judge.judge(&heads, &reached, bus_connected);
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

    fn offer(seq: u64, after: u64) -> Offer {
        let envelope = sotto_proto::Envelope {
            group: sotto_proto::GroupId([1; 32]),
            sender: DeviceId::NONE,
            msg_id: sotto_proto::MessageId([2; 16]),
            kind: sotto_proto::EnvelopeKind::Application,
            server_time_ms: 3,
            payload: sotto_proto::Blob(vec![4]),
        };
        Offer {
            seq,
            after,
            envelope: Arc::new(EncodedEnvelope::new(&envelope)),
        }
    }

    fn seqs(offers: &[Offer]) -> Vec<u64> {
        offers.iter().map(|o| o.seq).collect()
    }

    #[test]
    fn offers_are_sent_only_while_nothing_is_skipped() {
        // Entries that follow one another are sent, whatever the gaps
        // between their sequence numbers (entries of other devices).
        let (send, read) = plan(vec![offer(11, 10), offer(15, 11), offer(20, 15)], 10);
        assert_eq!((seqs(&send), read), (vec![11, 15, 20], false));
        // An entry before the first offer left the mailbox (acknowledged
        // through another connection): nothing is skipped.
        let (send, read) = plan(vec![offer(30, 0)], 20);
        assert_eq!((seqs(&send), read), (vec![30], false));
        // Offered out of order: the later entry waits for a read.
        let (send, read) = plan(vec![offer(15, 11), offer(11, 10)], 10);
        assert_eq!((seqs(&send), read), (vec![], true));
        // Sent up to the gap, then read.
        let (send, read) = plan(vec![offer(11, 10), offer(20, 15), offer(25, 20)], 10);
        assert_eq!((seqs(&send), read), (vec![11], true));
        // Entries delivered already (by a read) are dropped.
        let (send, read) = plan(vec![offer(11, 10), offer(12, 11), offer(13, 12)], 12);
        assert_eq!((seqs(&send), read), (vec![13], false));
    }

    #[tokio::test]
    async fn offers_reach_every_connection_of_a_device_and_overflow_into_a_read() {
        let w = MailWatch::default();
        let a = w.register(d(1));
        let b = w.register(d(1));
        let other = w.register(d(2));
        let o = offer(5, 4);
        let posted = [crate::store::Posted {
            device: d(1),
            seq: 5,
            after: 4,
        }];
        assert!(w.any_connected(&posted));
        assert_eq!(w.offer(&posted, &o.envelope), 2);
        for c in [&a, &b] {
            tokio::time::timeout(Duration::from_secs(1), c.notified())
                .await
                .expect("offered");
            let (offers, read) = c.take();
            assert_eq!((seqs(&offers), read), (vec![5], false));
            assert_eq!(*offers[0].envelope, *o.envelope);
        }
        let (offers, read) = other.take();
        assert!(offers.is_empty() && !read);
        // A connection that does not take its offers reads instead.
        for seq in 0..=MAX_OFFERS as u64 {
            let p = crate::store::Posted {
                device: d(1),
                seq: 10 + seq,
                after: 9 + seq,
            };
            w.offer(&[p], &o.envelope);
        }
        let (offers, read) = a.take();
        assert!(offers.is_empty() && read);
        // The store watch's wake-up is a read too.
        w.wake(&[d(2)]);
        assert!(other.take().1);
        drop((a, b, other));
        assert!(!w.any_connected(&posted));
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
        assert_eq!(w.reached().get(&d(1)), Some(&7));
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
        assert!(!w.reached().contains_key(&d(1)));
    }

    #[test]
    fn mail_offered_counts_as_reached_until_every_connection_has_it() {
        let w = MailWatch::default();
        let a = w.register(d(1));
        let b = w.register(d(1));
        a.delivered(4);
        b.delivered(4);
        let entry = |seq| crate::store::Posted {
            device: d(1),
            seq,
            after: seq - 1,
        };
        // Offered, not yet delivered: on its way, so the watch leaves it.
        w.offer(&[entry(5), entry(6)], &offer(5, 4).envelope);
        assert_eq!(w.reached().get(&d(1)), Some(&6));
        let mut j = Judge::default();
        assert!(j.judge(&[(d(1), 6)], &w.reached(), false).is_empty());
        // A connection opened since was offered nothing: it must read.
        let late = w.register(d(1));
        assert_eq!(w.reached().get(&d(1)), Some(&0));
        assert_eq!(j.judge(&[(d(1), 6)], &w.reached(), false), vec![d(1)]);
        drop((a, b, late));
    }
}
