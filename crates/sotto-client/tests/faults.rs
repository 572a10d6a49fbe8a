//! The cluster under the faults operators meet (issue 18), against a real
//! PostgreSQL and a real NATS, each node reaching them through a
//! [`LinkProxy`] of its own so that one node can be cut off from one
//! service: NATS killed, PostgreSQL killed, a node SIGKILLed, one node
//! partitioned from NATS, one node partitioned from PostgreSQL; and a node
//! that starts while NATS is down serves at once, logins as fast as before.
//!
//! Two people on two nodes (each with a link naming both nodes, their own
//! first) write to each other every [`EVERY`] before, during and after the
//! fault. Each case checks that every message arrived exactly once, in
//! order, and that while the fault lasted no acknowledged message took
//! longer than the case's bound to arrive; each ends by itself within
//! [`CASE_DEADLINE`]. Figures are printed (`--nocapture`).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sotto_client::{Client, Sent};
use sotto_test_support::cluster::{Cluster, admin_get};
use sotto_test_support::proxy::LinkProxy;
use sotto_test_support::services::{NatsProcess, PgInstance};
use tempfile::TempDir;
use tokio::time::Instant;

/// Time between two messages of one person.
const EVERY: Duration = Duration::from_millis(250);
/// Traffic before the fault, during it, and after it is healed.
const BEFORE: Duration = Duration::from_secs(1);
const DURING: Duration = Duration::from_secs(4);
/// The bound on a delivery while the bus is lost: about a second by design
/// (two store polls of 500 ms: a node that still has NATS waits one poll
/// before it doubts it), with room for a loaded CI machine (1.76 s seen
/// there), and still well under [`DURING`]: without the store watch the
/// first message of the fault waits for the bus to heal, about 4 s.
const WITHOUT_BUS: Duration = Duration::from_secs(3);
const AFTER: Duration = Duration::from_millis(1500);
/// How long people listen after the last message.
const QUIET: Duration = Duration::from_secs(4);
/// No message takes longer than this to arrive, whatever the fault.
const WORST: Duration = Duration::from_secs(5);
/// A case that has not ended by then fails.
const CASE_DEADLINE: Duration = Duration::from_secs(120);

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// A private PostgreSQL and NATS, a proxy per node for each, two nodes.
struct Rig {
    pg: PgInstance,
    nats: NatsProcess,
    pg_links: Vec<LinkProxy>,
    nats_links: Vec<LinkProxy>,
    cluster: Cluster,
    tmp: TempDir,
}

async fn rig() -> Rig {
    blocking(|| {
        let tmp = TempDir::new().unwrap();
        let pg = PgInstance::start();
        let nats = NatsProcess::start();
        let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let pg_links: Vec<LinkProxy> = (0..2).map(|_| LinkProxy::start(at(pg.port))).collect();
        let nats_links: Vec<LinkProxy> = (0..2).map(|_| LinkProxy::start(at(nats.port))).collect();
        let each: Vec<(String, String)> = (0..2)
            .map(|i| {
                (
                    format!("postgres://postgres@{}/postgres", pg_links[i].addr),
                    format!("nats://{}", nats_links[i].addr),
                )
            })
            .collect();
        let cluster = Cluster::start_each(tmp.path(), &each);
        Rig {
            pg,
            nats,
            pg_links,
            nats_links,
            cluster,
            tmp,
        }
    })
    .await
}

/// What one run of traffic saw.
#[derive(Default)]
struct Log {
    /// Text -> when its send was acknowledged (None: queued, flushed later).
    sent: HashMap<String, Option<Instant>>,
    /// (receiver, sender, text, when it was shown) in arrival order.
    got: Vec<(String, String, String, Instant)>,
}

type Shared = Arc<Mutex<Log>>;

fn record(log: &Shared, me: &str, u: sotto_client::Updates) {
    let now = Instant::now();
    let mut l = log.lock().unwrap();
    for m in u.messages {
        l.got.push((me.to_owned(), m.sender, m.text, now));
    }
}

/// One person: online, sending to `peer` every [`EVERY`] until the time
/// `stop` names (set once the fault is healed), showing what is pushed,
/// reconnecting (to another node if need be) when the connection breaks;
/// then listens for [`QUIET`].
async fn talk(
    mut c: Client,
    me: &'static str,
    peer: &'static str,
    stop: tokio::sync::watch::Receiver<Option<Instant>>,
    log: Shared,
) -> Client {
    let mut next_send = Instant::now();
    let mut k = 0;
    let mut retry = Instant::now();
    loop {
        let now = Instant::now();
        let stop_at = *stop.borrow();
        let quiet_at = stop_at.map_or(now + QUIET, |s| s + QUIET);
        if now >= quiet_at {
            break;
        }
        if !c.is_online() {
            if now < retry {
                tokio::time::sleep_until(retry.min(quiet_at)).await;
                continue;
            }
            match c.go_online().await {
                Ok(u) => record(&log, me, u),
                Err(e) if e.is_temporary() => retry = Instant::now() + Duration::from_millis(200),
                Err(e) => panic!("{me}: unexpected error going online: {e}"),
            }
            continue;
        }
        let sending = stop_at.is_none_or(|s| now < s);
        tokio::select! {
            r = c.pushed() => {
                if r.is_ok() {
                    match c.process_pushed().await {
                        Ok(u) => record(&log, me, u),
                        Err(e) if e.is_temporary() => {}
                        Err(e) => panic!("{me}: unexpected error receiving: {e}"),
                    }
                }
            }
            () = tokio::time::sleep_until(next_send), if sending => {
                let text = format!("{me} #{k}");
                match c.send(peer, &text).await {
                    Ok(Sent::Accepted(_)) => {
                        log.lock().unwrap().sent.insert(text, Some(Instant::now()));
                        k += 1;
                        next_send += EVERY;
                    }
                    // In the outbox: the next connection sends it.
                    Ok(Sent::Queued(_)) => {
                        log.lock().unwrap().sent.insert(text, None);
                        k += 1;
                        next_send += EVERY;
                    }
                    Err(e) if e.is_temporary() => {
                        next_send = Instant::now() + Duration::from_millis(100);
                    }
                    Err(e) => panic!("{me}: unexpected error sending: {e}"),
                }
            }
            () = tokio::time::sleep_until(quiet_at.min(now + Duration::from_millis(200))) => {}
        }
    }
    c
}

/// What a case measured.
#[derive(Debug)]
struct Report {
    sent: usize,
    queued: usize,
    delivered: usize,
    lost: usize,
    duplicates: usize,
    /// The longest delay from acknowledgement to arrival of a message
    /// acknowledged while the fault lasted (and of any message).
    worst_during_fault: Duration,
    worst: Duration,
}

/// Runs traffic between alice (node 0 first) and bob (node 1 first), with
/// `fault` applied after [`BEFORE`] and `heal` after [`DURING`]; checks
/// exactly-once delivery in order, and returns the figures.
async fn traffic(
    mut rig: Rig,
    fault: impl FnOnce(&mut Rig) + Send + 'static,
    heal: impl FnOnce(&mut Rig) + Send + 'static,
) -> (Rig, Report) {
    let mut alice = common::register(
        rig.tmp.path(),
        &rig.cluster.failover_link(&[0, 1]),
        rig.cluster.invite(),
        "alice",
    )
    .await;
    let mut bob = common::register(
        rig.tmp.path(),
        &rig.cluster.failover_link(&[1, 0]),
        rig.cluster.invite(),
        "bob",
    )
    .await;
    persist!(alice.send("bob", "hello"));
    persist!(bob.go_online());
    persist!(alice.go_online());

    let log: Shared = Arc::default();
    let start = Instant::now();
    let (stop, stop_rx) = tokio::sync::watch::channel(None);
    let a = tokio::spawn(talk(alice, "alice", "bob", stop_rx.clone(), log.clone()));
    let b = tokio::spawn(talk(bob, "bob", "alice", stop_rx, log.clone()));
    tokio::time::sleep_until(start + BEFORE).await;
    // Faults block (killing and starting processes): off the runtime.
    let fault_from = Instant::now();
    rig = blocking(move || {
        fault(&mut rig);
        rig
    })
    .await;
    tokio::time::sleep_until(fault_from + DURING).await;
    rig = blocking(move || {
        heal(&mut rig);
        rig
    })
    .await;
    let fault_to = Instant::now();
    let _ = stop.send(Some(fault_to + AFTER));
    let (_alice, _bob) = (a.await.unwrap(), b.await.unwrap());

    let log = log.lock().unwrap();
    let mut r = Report {
        sent: log.sent.len(),
        queued: log.sent.values().filter(|t| t.is_none()).count(),
        delivered: log.got.len(),
        lost: 0,
        duplicates: 0,
        worst_during_fault: Duration::ZERO,
        worst: Duration::ZERO,
    };
    for (text, acked) in &log.sent {
        let arrivals: Vec<&Instant> = log
            .got
            .iter()
            .filter(|(_, _, t, _)| t == text)
            .map(|(_, _, _, at)| at)
            .collect();
        match arrivals.len() {
            0 => r.lost += 1,
            1 => {}
            n => r.duplicates += n - 1,
        }
        if let (Some(acked), Some(at)) = (acked, arrivals.first()) {
            let delay = at.saturating_duration_since(*acked);
            r.worst = r.worst.max(delay);
            if *acked >= fault_from && *acked <= fault_to {
                r.worst_during_fault = r.worst_during_fault.max(delay);
            }
        }
    }
    // Nothing arrives that was not sent, and each sender's order holds.
    for (me, from, text, _) in &log.got {
        assert!(
            log.sent.contains_key(text),
            "{me} got {text:?} from {from}, never sent"
        );
    }
    for (me, peer) in [("alice", "bob"), ("bob", "alice")] {
        let arrived: Vec<usize> = log
            .got
            .iter()
            .filter(|(m, f, _, _)| m == me && f == peer)
            .filter_map(|(_, _, t, _)| t.rsplit('#').next()?.parse().ok())
            .collect();
        assert!(
            arrived.windows(2).all(|w| w[0] < w[1]),
            "{me} got {peer}'s messages out of order: {arrived:?}"
        );
    }
    drop(log);
    (rig, r)
}

fn check(what: &str, r: &Report, bound: Duration) {
    println!(
        "{what}: {} sent ({} queued), {} delivered, {} lost, {} duplicates; \
         slowest arrival {:?} during the fault, {:?} overall",
        r.sent, r.queued, r.delivered, r.lost, r.duplicates, r.worst_during_fault, r.worst
    );
    assert!(r.sent >= 20, "{what}: only {} messages sent", r.sent);
    assert_eq!((r.lost, r.duplicates), (0, 0), "{what}: {r:?}");
    assert!(r.worst <= WORST, "{what}: a message took {:?}", r.worst);
    assert!(
        r.worst_during_fault <= bound,
        "{what}: a message took {:?} during the fault (bound {bound:?})",
        r.worst_during_fault
    );
}

/// Runs a case under the deadline.
async fn case(f: impl Future<Output = ()>) {
    tokio::time::timeout(CASE_DEADLINE, f)
        .await
        .expect("the case did not end in time");
}

async fn admin(rig: &Rig, node: usize, path: &'static str) -> (u16, String, Duration) {
    let addr = rig.cluster.admin[node];
    blocking(move || admin_get(addr, path)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed() {
    case(async {
        let (rig, r) = traffic(
            rig().await,
            |rig| rig.nats.stop(),
            |rig| rig.nats.start_again(),
        )
        .await;
        check("NATS killed", &r, WITHOUT_BUS);
        let mut rig = rig;
        for n in 0..2 {
            assert!(rig.cluster.nodes[n].is_running(), "node {n} exited");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed() {
    case(async {
        let (rig, r) = traffic(
            rig().await,
            |rig| rig.pg.crash(),
            |rig| rig.pg.start_again(),
        )
        .await;
        // A message acknowledged in the moment before the crash, whose
        // other node's read of it loses the race with the crash, waits for
        // the database: the whole outage (`DURING`), its restart and the
        // next read's retry (a second). Seen at 4.2-4.3 s in about one run
        // in six under a parallel test run; every other message of the
        // fault arrives within a few hundred ms.
        check("PostgreSQL killed", &r, DURING + Duration::from_secs(2));
        let mut rig = rig;
        for n in 0..2 {
            assert!(rig.cluster.nodes[n].is_running(), "node {n} exited");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_sigkilled() {
    case(async {
        let (_rig, r) = traffic(
            rig().await,
            |rig| rig.cluster.nodes[1].kill9(),
            |rig| rig.cluster.nodes[1].restart(),
        )
        .await;
        check("node 1 SIGKILLed", &r, Duration::from_secs(3));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_partitioned_from_nats() {
    case(async {
        let (tx, rx) = std::sync::mpsc::channel();
        let (rig, r) = traffic(
            rig().await,
            |rig| rig.nats_links[1].cut(),
            move |rig| {
                // Before healing: the cut-off node says so, quickly.
                let (a0, a1) = (rig.cluster.admin[0], rig.cluster.admin[1]);
                let _ = tx.send((
                    admin_get(a1, "/busz"),
                    admin_get(a1, "/readyz"),
                    admin_get(a1, "/metrics"),
                    admin_get(a0, "/busz"),
                ));
                rig.nats_links[1].heal();
            },
        )
        .await;
        check("node 1 cut off from NATS", &r, WITHOUT_BUS);
        let (busz, readyz, metrics, other) = rx.recv().unwrap();
        println!("cut-off node: /busz {busz:?}, /readyz {readyz:?}");
        assert_eq!(busz.0, 503, "{busz:?}");
        assert_eq!(readyz.0, 200, "{readyz:?}");
        assert!(readyz.1.contains("bus disconnected"), "{readyz:?}");
        assert!(readyz.2 < Duration::from_millis(250), "{readyz:?}");
        assert!(metrics.1.contains("sotto_bus_connected 0"), "{}", metrics.1);
        assert_eq!(other.0, 200, "the other node's bus: {other:?}");
        // Healed: the node is connected again.
        let mut healed = false;
        for _ in 0..100 {
            if admin(&rig, 1, "/busz").await.0 == 200 {
                healed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(healed, "node 1 did not reconnect to NATS");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_partitioned_from_postgres() {
    case(async {
        let (tx, rx) = std::sync::mpsc::channel();
        let (_rig, r) = traffic(
            rig().await,
            |rig| rig.pg_links[1].cut(),
            move |rig| {
                let a1 = rig.cluster.admin[1];
                let _ = tx.send((admin_get(a1, "/readyz"), admin_get(a1, "/metrics")));
                rig.pg_links[1].heal();
            },
        )
        .await;
        check("node 1 cut off from PostgreSQL", &r, Duration::from_secs(6));
        let (readyz, metrics) = rx.recv().unwrap();
        println!("cut-off node: /readyz {readyz:?}");
        assert_eq!(readyz.0, 503, "{readyz:?}");
        assert!(readyz.2 < Duration::from_millis(250), "{readyz:?}");
        assert!(metrics.1.contains("sotto_store_up 0"), "{}", metrics.1);
        assert!(!metrics.1.contains("sotto_accounts"), "stale counts shown");
        assert!(
            metrics.1.contains("sotto_store_failures_total"),
            "{}",
            metrics.1
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_and_serves_without_nats() {
    case(async {
        let mut rig = rig().await;
        let tmp = TempDir::new().unwrap();
        let mut alice = common::register(
            tmp.path(),
            &rig.cluster.node_link(1),
            rig.cluster.invite(),
            "alice",
        )
        .await;
        let mut bob = common::register(
            tmp.path(),
            &rig.cluster.node_link(0),
            rig.cluster.invite(),
            "bob",
        )
        .await;
        persist!(alice.send("bob", "hello"));
        persist!(bob.go_online());
        // With NATS up: how long a login takes.
        let t = Instant::now();
        persist!(alice.receive(Duration::ZERO, |_| {}));
        let with_nats = t.elapsed();

        // NATS goes away, and node 1 crashes and starts again meanwhile.
        let started;
        (rig, started) = blocking(move || {
            rig.nats.stop();
            let t = std::time::Instant::now();
            rig.cluster.nodes[1].restart();
            let took = t.elapsed();
            (rig, took)
        })
        .await;
        let (status, body, _) = admin(&rig, 1, "/readyz").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("bus disconnected"), "{body}");
        // It serves: logins take no longer than with NATS, and a message
        // from node 1 reaches bob on node 0 (by the store) meanwhile.
        let t = Instant::now();
        persist!(alice.receive(Duration::ZERO, |_| {}));
        let without_nats = t.elapsed();
        let sent = Instant::now();
        persist!(alice.send("bob", "without NATS"));
        let mut got = None;
        while got.is_none() && sent.elapsed() < Duration::from_secs(5) {
            let pushed = tokio::time::timeout(Duration::from_secs(1), bob.pushed()).await;
            if let Ok(r) = pushed {
                r.unwrap();
                let u = bob.process_pushed().await.unwrap();
                if u.messages.iter().any(|m| m.text == "without NATS") {
                    got = Some(sent.elapsed());
                }
            }
        }
        println!(
            "node started without NATS in {started:?}; login with NATS {with_nats:?}, \
             without {without_nats:?}; delivered across nodes in {got:?}"
        );
        assert!(started < Duration::from_secs(5), "start took {started:?}");
        assert!(
            without_nats < with_nats + Duration::from_millis(500),
            "a login waited for NATS: {without_nats:?} (with NATS: {with_nats:?})"
        );
        let got = got.expect("not delivered without NATS");
        assert!(got < Duration::from_millis(2500), "delivered in {got:?}");

        // NATS comes back: the node connects by itself.
        rig = blocking(move || {
            rig.nats.start_again();
            rig
        })
        .await;
        let mut back = false;
        for _ in 0..100 {
            if admin(&rig, 1, "/busz").await.0 == 200 {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(back, "node 1 did not connect to NATS when it came back");
    })
    .await;
}
