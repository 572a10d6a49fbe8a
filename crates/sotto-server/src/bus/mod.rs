//! The [`Bus`]: how the part of the server that stored a message tells the
//! connections of its recipient devices on other nodes. This node's
//! connections are handed the message itself (`crate::watch`); so are the
//! other nodes' where the bus carries mail ([`Bus::carry`]); else they are
//! woken and read their mailboxes in the [`crate::store::Store`]. A lost
//! message or wake-up only delays delivery until the next one, the store
//! watch, or the next login: the store has the mail.
//!
//! [`LocalBus`] serves one node; [`nats::NatsBus`] carries wake-ups and
//! mail, sealed ([`carried`]), between nodes through NATS. Both pass
//! [`conformance`].

pub mod carried;
pub mod conformance;
pub mod nats;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use sotto_proto::{DeviceId, EncodedEnvelope};
use tokio::sync::Notify;

use crate::store::Posted;

/// Where mail carried from other nodes goes (this node's
/// `crate::watch::MailWatch::offer`): the entries of one message, and the
/// message.
pub type MailSink = Arc<dyn Fn(&[Posted], &Arc<EncodedEnvelope>) + Send + Sync>;

/// Routes "new mail" notifications to the connections of devices.
pub trait Bus: Send + Sync + 'static {
    /// Starts listening for `device`; notifications stop when the
    /// [`Subscription`] is dropped. When the future completes, every
    /// later publish for `device` reaches it; or the bus could not confirm
    /// the subscription at once (it is down, or slow), and wakes it once
    /// when it does. The future never waits long on another node.
    fn subscribe(&self, device: DeviceId) -> impl Future<Output = Subscription> + Send;
    /// Tells every connection of these devices to look at its mailbox.
    /// Never waits on another node: a bus that cannot keep up drops
    /// notifications (the message stays in the store).
    fn publish(&self, devices: &[DeviceId]);

    /// Whether the bus carries mail to other nodes ([`Bus::carry`]).
    fn carries_mail(&self) -> bool {
        false
    }

    /// Hands a message just stored, durably, to the other nodes: `posted`
    /// are its mailbox entries, `envelope` the message. Each gives it to
    /// its sink ([`Bus::receive_mail`]). It was offered to this node's
    /// connections already (`crate::watch::MailWatch::offer`). Never waits
    /// on another node. Nothing to do for a bus of one node.
    fn carry(&self, posted: &[Posted], envelope: &Arc<EncodedEnvelope>) {
        let _ = (posted, envelope);
    }

    /// Where this node puts the mail other nodes carry; set once, when the
    /// node starts.
    fn receive_mail(&self, sink: MailSink) {
        let _ = sink;
    }

    /// How many carried messages this node could not open so far: not
    /// sealed under its key (another node's `directory.key` differs), or
    /// forged.
    fn mail_rejected(&self) -> u64 {
        0
    }

    /// Whether the bus reaches the other nodes right now (for `/readyz`,
    /// `/busz` and `sotto_bus_connected`). A node-local bus always does.
    fn connected(&self) -> bool {
        true
    }

    /// Whether wake-ups can be lost (a bus between nodes): the node then
    /// also watches the store (`crate::watch`).
    fn may_lose_wakeups(&self) -> bool {
        false
    }
}

/// A live subscription: wait on [`Subscription::notified`].
pub struct Subscription {
    notify: Arc<Notify>,
    on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subscription")
    }
}

impl Subscription {
    /// Completes when the mailbox may have changed since the last call. A
    /// notification sent while nobody waits is kept, so none is missed.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}

type Subscribers = HashMap<DeviceId, Vec<(u64, Arc<Notify>)>>;

/// The bus of a single server node: an in-process map.
#[derive(Debug, Default, Clone)]
pub struct LocalBus {
    inner: Arc<Mutex<(u64, Subscribers)>>,
}

impl LocalBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes every subscription on this node (after a bus outage, when
    /// notifications may have been lost).
    pub fn wake_all(&self) {
        let g = self.lock();
        for v in g.1.values() {
            for (_, n) in v {
                n.notify_one();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Subscribers)> {
        // A poisoned lock only means another thread panicked while holding
        // it; the map itself is always consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Bus for LocalBus {
    async fn subscribe(&self, device: DeviceId) -> Subscription {
        self.subscribe_now(device)
    }

    fn publish(&self, devices: &[DeviceId]) {
        let g = self.lock();
        for d in devices {
            if let Some(v) = g.1.get(d) {
                for (_, n) in v {
                    n.notify_one();
                }
            }
        }
    }
}

impl LocalBus {
    fn subscribe_now(&self, device: DeviceId) -> Subscription {
        let notify = Arc::new(Notify::new());
        let id = {
            let mut g = self.lock();
            g.0 += 1;
            let id = g.0;
            g.1.entry(device).or_default().push((id, notify.clone()));
            id
        };
        let me = self.clone();
        Subscription {
            notify,
            on_drop: Some(Box::new(move || {
                let mut g = me.lock();
                if let Some(v) = g.1.get_mut(&device) {
                    v.retain(|(i, _)| *i != id);
                    if v.is_empty() {
                        g.1.remove(&device);
                    }
                }
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notification_before_wait_is_kept_and_drop_unsubscribes() {
        let bus = LocalBus::new();
        let d = DeviceId([1; 32]);
        let sub = bus.subscribe(d).await;
        bus.publish(&[d]);
        tokio::time::timeout(std::time::Duration::from_secs(1), sub.notified())
            .await
            .expect("kept notification");
        drop(sub);
        assert!(bus.lock().1.is_empty());
    }
}
