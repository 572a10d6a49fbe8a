//! The conformance suite every [`Bus`] passes. Each check gets two nodes of
//! one fresh bus (for [`super::LocalBus`], the same bus twice);
//! [`crate::bus_conformance_tests`] turns them into tests for a backend.

use std::time::Duration;

use std::sync::{Arc, Mutex};

use sotto_proto::{DeviceId, EncodedEnvelope};
use tokio::sync::Notify;

use super::Bus;
use crate::store::Posted;

/// Long enough for a wake-up to cross a loaded machine; a check fails only
/// if it never arrives.
const ARRIVES: Duration = Duration::from_secs(10);

/// How long a check waits to see that something does not arrive.
const QUIET: Duration = Duration::from_millis(300);

fn dev(n: u16) -> DeviceId {
    let mut d = [0xd0; 32];
    d[..2].copy_from_slice(&n.to_be_bytes());
    DeviceId(d)
}

async fn arrives(sub: &super::Subscription, what: &str) {
    tokio::time::timeout(ARRIVES, sub.notified())
        .await
        .unwrap_or_else(|_| panic!("{what}: no wake-up"));
}

async fn quiet(sub: &super::Subscription) -> bool {
    tokio::time::timeout(QUIET, sub.notified()).await.is_err()
}

/// A publish on the subscriber's own node wakes it; one sent before it
/// waited is kept.
pub async fn wakes_on_the_same_node<B: Bus>(a: B, _b: B) {
    let sub = a.subscribe(dev(1)).await;
    a.publish(&[dev(1)]);
    arrives(&sub, "same node").await;
    a.publish(&[dev(1)]);
    tokio::time::sleep(QUIET).await;
    arrives(&sub, "kept while nobody waited").await;
}

/// A publish on another node wakes the subscriber; other devices' wake-ups
/// do not.
pub async fn wakes_across_nodes<B: Bus>(a: B, b: B) {
    let sub = a.subscribe(dev(2)).await;
    b.publish(&[dev(3)]);
    assert!(quiet(&sub).await, "woken for another device");
    b.publish(&[dev(3), dev(2)]);
    arrives(&sub, "other node").await;
}

/// Every connection of a device is woken, on any node.
pub async fn wakes_every_connection<B: Bus>(a: B, b: B) {
    let on_a = a.subscribe(dev(4)).await;
    let on_b = b.subscribe(dev(4)).await;
    a.publish(&[dev(4)]);
    arrives(&on_a, "connection on the publishing node").await;
    arrives(&on_b, "connection on the other node").await;
}

/// After a subscription is dropped, publishing for its device is harmless
/// and a new subscription works.
pub async fn resubscribes_after_drop<B: Bus>(a: B, b: B) {
    let sub = a.subscribe(dev(5)).await;
    drop(sub);
    b.publish(&[dev(5)]);
    a.publish(&[dev(5)]);
    let sub = a.subscribe(dev(5)).await;
    b.publish(&[dev(5)]);
    arrives(&sub, "after resubscribing").await;
}

/// One publish of many devices wakes each of them.
pub async fn fans_out_to_many<B: Bus>(a: B, b: B) {
    let mut subs = Vec::new();
    for n in 100..600 {
        subs.push(a.subscribe(dev(n)).await);
    }
    let all: Vec<DeviceId> = (100..600).map(dev).collect();
    b.publish(&all);
    for (i, s) in subs.iter().enumerate() {
        arrives(s, &format!("device {i} of 500")).await;
    }
}

/// Mail carried by one node reaches the sink of every other node, once and
/// whole, and not its own node's (its connections were handed it there).
pub async fn carried_mail_reaches_the_other_nodes_only<B: Bus>(a: B, b: B) {
    type Got = Arc<Mutex<Vec<(Vec<Posted>, Vec<u8>)>>>;
    fn sink(got: &Got, arrived: &Arc<Notify>) -> super::MailSink {
        let (got, arrived) = (got.clone(), arrived.clone());
        Arc::new(move |posted, envelope| {
            let mut g = got.lock().unwrap_or_else(|p| p.into_inner());
            g.push((posted.to_vec(), envelope.as_bytes().to_vec()));
            arrived.notify_one();
        })
    }
    let (on_a, on_b): (Got, Got) = Default::default();
    let (arrived_a, arrived_b) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    a.receive_mail(sink(&on_a, &arrived_a));
    b.receive_mail(sink(&on_b, &arrived_b));
    let posted: Vec<Posted> = (0..3)
        .map(|n| Posted {
            device: dev(700 + n),
            seq: 40 + u64::from(n),
            after: 39,
        })
        .collect();
    let envelope = Arc::new(EncodedEnvelope::new(&sotto_proto::Envelope {
        group: sotto_proto::GroupId([7; 32]),
        sender: dev(1),
        msg_id: sotto_proto::MessageId([8; 16]),
        kind: sotto_proto::EnvelopeKind::Application,
        server_time_ms: 9,
        payload: sotto_proto::Blob(vec![10; 2000]),
    }));
    a.carry(&posted, &envelope);
    // Only a bus between nodes has another node (the local bus is given
    // as both, and carries nothing).
    if a.carries_mail() {
        tokio::time::timeout(ARRIVES, arrived_b.notified())
            .await
            .expect("carried mail reached the other node");
    }
    tokio::time::sleep(QUIET).await;
    let got_b = on_b.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if a.carries_mail() {
        assert_eq!(got_b, vec![(posted, envelope.as_bytes().to_vec())]);
    } else {
        assert!(got_b.is_empty(), "the local bus carried mail to itself");
    }
    assert!(
        on_a.lock().unwrap_or_else(|p| p.into_inner()).is_empty(),
        "the carrying node got its own mail back"
    );
}

/// Generates one test per bus check, given an async expression that makes
/// `(guard, node_a, node_b)`.
#[macro_export]
macro_rules! bus_conformance_tests {
    ($make:expr) => {
        $crate::bus_conformance_tests!(@each $make;
            wakes_on_the_same_node,
            wakes_across_nodes,
            wakes_every_connection,
            resubscribes_after_drop,
            fans_out_to_many,
            carried_mail_reaches_the_other_nodes_only,
        );
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (_guard, a, b) = $make.await;
                $crate::bus::conformance::$name(a, b).await;
            }
        )*
    };
}
