//! The bus conformance suite on the local bus and on NATS (two nodes, each
//! with its own connection to the machine's NATS server;
//! `SOTTO_TEST_NATS` names another), plus a NATS outage: wake-ups resume
//! by themselves when NATS is back.

/// The cluster's key in these tests.
fn key() -> sotto_server::bus::carried::MailKey {
    sotto_server::bus::carried::MailKey::derive(&[42; 32])
}

mod local {
    use sotto_server::bus::LocalBus;

    async fn fresh() -> ((), LocalBus, LocalBus) {
        let b = LocalBus::new();
        ((), b.clone(), b)
    }

    sotto_server::bus_conformance_tests!(fresh());
}

mod nats {
    use super::key;
    use sotto_server::bus::nats::NatsBus;

    /// Two nodes on a subject prefix of their own, so tests running at the
    /// same time do not wake each other.
    async fn fresh() -> ((), NatsBus, NatsBus) {
        let url = sotto_test_support::services::nats_url();
        let prefix = format!("sotto-test-{:x}", rand::random::<u64>());
        let a = NatsBus::connect(&url, &prefix, key())
            .await
            .expect("NATS is required");
        let b = NatsBus::connect(&url, &prefix, key())
            .await
            .expect("NATS is required");
        ((), a, b)
    }

    sotto_server::bus_conformance_tests!(fresh());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_ups_resume_after_a_nats_outage() {
    use sotto_proto::DeviceId;
    use sotto_server::bus::Bus;
    use sotto_server::bus::nats::NatsBus;
    use std::time::Duration;

    let mut nats = tokio::task::spawn_blocking(sotto_test_support::services::NatsProcess::start)
        .await
        .unwrap();
    let a = NatsBus::connect(&nats.url(), "sotto", key()).await.unwrap();
    let b = NatsBus::connect(&nats.url(), "sotto", key()).await.unwrap();
    let d = DeviceId([7; 32]);
    let sub = a.subscribe(d).await;
    b.publish(&[d]);
    tokio::time::timeout(Duration::from_secs(10), sub.notified())
        .await
        .expect("wake-up before the outage");

    // NATS goes away; a publish meanwhile is lost for the other node, and
    // publishing neither blocks nor fails.
    nats = tokio::task::spawn_blocking(move || {
        nats.stop();
        nats
    })
    .await
    .unwrap();
    b.publish(&[d]);
    a.publish(&[DeviceId([8; 32])]);
    // NATS is back: the node wakes its subscriptions once (mail may have
    // arrived meanwhile), and cross-node wake-ups work again.
    let _nats = tokio::task::spawn_blocking(move || {
        nats.start_again();
        nats
    })
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(30), sub.notified())
        .await
        .expect("woken when the bus came back");
    let mut ok = false;
    for _ in 0..100 {
        b.publish(&[d]);
        if tokio::time::timeout(Duration::from_millis(300), sub.notified())
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
    }
    assert!(ok, "cross-node wake-ups work again");
}

/// A node whose key differs (another `directory.key`) opens none of the
/// mail the others carry, and counts it; its wake-ups still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_key_opens_no_carried_mail() {
    use sotto_proto::{DeviceId, EncodedEnvelope};
    use sotto_server::bus::Bus;
    use sotto_server::bus::carried::MailKey;
    use sotto_server::bus::nats::NatsBus;
    use sotto_server::store::Posted;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    let url = sotto_test_support::services::nats_url();
    let prefix = format!("sotto-test-{:x}", rand::random::<u64>());
    let a = NatsBus::connect(&url, &prefix, key()).await.unwrap();
    let stranger = NatsBus::connect(&url, &prefix, MailKey::derive(&[43; 32]))
        .await
        .unwrap();
    let opened = Arc::new(AtomicU64::new(0));
    let counted = opened.clone();
    stranger.receive_mail(Arc::new(move |_, _| {
        counted.fetch_add(1, Ordering::Relaxed);
    }));
    let envelope = Arc::new(EncodedEnvelope::new(&sotto_proto::Envelope {
        group: sotto_proto::GroupId([1; 32]),
        sender: DeviceId([2; 32]),
        msg_id: sotto_proto::MessageId([3; 16]),
        kind: sotto_proto::EnvelopeKind::Application,
        server_time_ms: 4,
        payload: sotto_proto::Blob(vec![5; 10]),
    }));
    let posted = [Posted {
        device: DeviceId([6; 32]),
        seq: 2,
        after: 1,
    }];
    for _ in 0..3 {
        a.carry(&posted, &envelope);
    }
    let mut rejected = 0;
    for _ in 0..100 {
        rejected = stranger.mail_rejected();
        if rejected >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rejected, 3, "every carried message refused");
    assert_eq!(opened.load(Ordering::Relaxed), 0);
    let sub = stranger.subscribe(DeviceId([6; 32])).await;
    a.publish(&[DeviceId([6; 32])]);
    tokio::time::timeout(Duration::from_secs(10), sub.notified())
        .await
        .expect("wake-ups do not depend on the key");
}

/// A bus dropped by every holder stops receiving carried mail and lets go
/// of its sink (the node's watch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_bus_lets_go_of_its_sink() {
    use sotto_server::bus::Bus;
    use sotto_server::bus::nats::NatsBus;
    use std::sync::Arc;
    use std::time::Duration;

    let url = sotto_test_support::services::nats_url();
    let prefix = format!("sotto-test-{:x}", rand::random::<u64>());
    let bus = NatsBus::connect(&url, &prefix, key()).await.unwrap();
    let held = Arc::new(());
    let in_sink = held.clone();
    bus.receive_mail(Arc::new(move |_, _| {
        let _ = &in_sink;
    }));
    let clone = bus.clone();
    drop(bus);
    assert_eq!(Arc::strong_count(&held), 2, "a clone still holds it");
    drop(clone);
    let mut released = false;
    for _ in 0..100 {
        if Arc::strong_count(&held) == 1 {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(released, "the receiving task still holds the sink");
}
