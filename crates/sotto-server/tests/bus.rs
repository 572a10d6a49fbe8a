//! The bus conformance suite on the local bus and on NATS (two nodes, each
//! with its own connection to the machine's NATS server;
//! `SOTTO_TEST_NATS` names another), plus a NATS outage: wake-ups resume
//! by themselves when NATS is back.

mod local {
    use sotto_server::bus::LocalBus;

    async fn fresh() -> ((), LocalBus, LocalBus) {
        let b = LocalBus::new();
        ((), b.clone(), b)
    }

    sotto_server::bus_conformance_tests!(fresh());
}

mod nats {
    use sotto_server::bus::nats::NatsBus;

    /// Two nodes on a subject prefix of their own, so tests running at the
    /// same time do not wake each other.
    async fn fresh() -> ((), NatsBus, NatsBus) {
        let url = sotto_test_support::services::nats_url();
        let prefix = format!("sotto-test-{:x}", rand::random::<u64>());
        let a = NatsBus::connect(&url, &prefix)
            .await
            .expect("NATS is required");
        let b = NatsBus::connect(&url, &prefix)
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
    let a = NatsBus::connect(&nats.url(), "sotto").await.unwrap();
    let b = NatsBus::connect(&nats.url(), "sotto").await.unwrap();
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
