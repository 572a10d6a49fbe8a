//! Several server nodes on one PostgreSQL and one NATS (each test starts its
//! own database and, where it breaks them, its own PostgreSQL and NATS
//! servers): people on different nodes talk in real time, a group spans
//! nodes, and killing a node, NATS or PostgreSQL under traffic loses no
//! acknowledged message and duplicates none. Counts are printed
//! (`--nocapture`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sotto_client::{Client, ReceiveEvent};
use sotto_test_support::cluster::Cluster;
use sotto_test_support::services::{NatsProcess, PgDatabase, PgInstance};
use tempfile::TempDir;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// A cluster of `n` nodes on a fresh database of the machine's PostgreSQL
/// and a private NATS, with what must live as long as it.
async fn start_cluster(n: usize) -> (TempDir, PgDatabase, NatsProcess, Cluster) {
    let tmp = TempDir::new().unwrap();
    let db = blocking(PgDatabase::create).await;
    let nats = blocking(NatsProcess::start).await;
    let root = tmp.path().to_owned();
    let (url, bus) = (db.url.clone(), nats.url());
    let cluster = blocking(move || Cluster::start(&root, n, &url, &bus)).await;
    (tmp, db, nats, cluster)
}

/// The value of a counter on a node's `/metrics`.
async fn metric(cluster: &Cluster, node: usize, name: &str) -> u64 {
    let admin = cluster.admin[node];
    let (status, body, _) =
        blocking(move || sotto_test_support::cluster::admin_get(admin, "/metrics")).await;
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {body}"))
}

/// (sender, text, pushed live) of each message a listener saw.
type Heard = Vec<(String, String, bool)>;

/// Receives for `wait` on its own task; `synced` fires when the backlog is
/// drained, so what arrives afterwards was pushed live. Returns the client
/// and the (sender, text, pushed live) of every message.
fn listen(
    mut c: Client,
    wait: Duration,
) -> (
    tokio::sync::oneshot::Receiver<()>,
    tokio::task::JoinHandle<(Client, Heard)>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut tx = Some(tx);
        let mut live = false;
        let mut got = Vec::new();
        c.receive(wait, |ev| match ev {
            ReceiveEvent::Synced => {
                live = true;
                if let Some(t) = tx.take() {
                    let _ = t.send(());
                }
            }
            ReceiveEvent::Message(m) => got.push((m.sender.clone(), m.text.clone(), live)),
            ReceiveEvent::Dropped(_) | ReceiveEvent::Notice(_) | ReceiveEvent::Receipt(_) => {}
        })
        .await
        .unwrap();
        (c, got)
    });
    (rx, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_on_different_nodes_talk_in_real_time() {
    let (tmp, _db, _nats, cluster) = start_cluster(3).await;
    let mut people = Vec::new();
    for (i, name) in ["alice", "bob", "carol"].iter().enumerate() {
        // Each person's device talks to a node of their own.
        people.push(
            common::register(tmp.path(), &cluster.node_link(i), cluster.invite(), name).await,
        );
    }
    let mut carol = people.pop().unwrap();
    let mut bob = people.pop().unwrap();
    let alice = people.pop().unwrap();

    // Alice waits on node 0 while Bob writes through node 1.
    let (synced, waiting) = listen(alice, Duration::from_secs(5));
    synced.await.unwrap();
    let offered_before = metric(&cluster, 0, "sotto_offered_deliveries_total").await;
    bob.send("alice", "hello from node 1").await.unwrap();
    let (mut alice, got) = waiting.await.unwrap();
    assert_eq!(
        got,
        vec![("bob".to_owned(), "hello from node 1".to_owned(), true)],
        "pushed to alice's node at once"
    );
    // Carried to node 0 on the bus and sent from there, without a read of
    // alice's mailbox; every node opened what the others carried.
    let offered = metric(&cluster, 0, "sotto_offered_deliveries_total").await;
    assert!(offered > offered_before, "{offered_before} -> {offered}");
    for node in 0..3 {
        assert_eq!(
            metric(&cluster, node, "sotto_bus_mail_rejected_total").await,
            0
        );
    }

    // A group whose members are on three nodes.
    alice.group_create("crew", &["bob", "carol"]).await.unwrap();
    carol.receive(Duration::ZERO, |_| {}).await.unwrap();
    let (synced, waiting) = listen(carol, Duration::from_secs(5));
    synced.await.unwrap();
    bob.receive(Duration::ZERO, |_| {}).await.unwrap();
    bob.send("crew", "bob to the crew").await.unwrap();
    let (_carol, got) = waiting.await.unwrap();
    assert_eq!(
        got,
        vec![("bob".to_owned(), "bob to the crew".to_owned(), true)]
    );
    let mut at_alice = Vec::new();
    alice
        .receive(Duration::from_millis(300), |ev| {
            if let ReceiveEvent::Message(m) = ev {
                at_alice.push(m.text.clone());
            }
        })
        .await
        .unwrap();
    assert_eq!(at_alice, vec!["bob to the crew".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_traffic_loses_nothing() {
    let (tmp, _db, _nats, cluster) = start_cluster(3).await;
    let names = ["alice", "bob", "carol", "dave"];
    let mut clients = Vec::new();
    for n in names {
        // Through the balancer: any node may serve any command.
        clients.push(common::register(tmp.path(), &cluster.link, cluster.invite(), n).await);
    }
    common::set_up_conversations(&mut clients, &names).await;

    // One node at a time is SIGKILLed, then started again; its clients
    // reconnect through the balancer to the others.
    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let stop = stop.clone();
        let mut cluster = cluster;
        std::thread::spawn(move || {
            let mut kills = 0;
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(300));
                let n = kills % cluster.nodes.len();
                cluster.nodes[n].kill9();
                std::thread::sleep(Duration::from_millis(300));
                cluster.nodes[n].restart();
                kills += 1;
            }
            (cluster, kills)
        })
    };
    let mut traffic = common::send_traffic(clients, &names, 20).await;
    stop.store(true, Ordering::SeqCst);
    let (_cluster, kills) = blocking(move || killer.join().unwrap()).await;
    let c = common::drain_and_check(&mut traffic, &names).await;
    println!("node sigkills: {kills}, {c:?}");
    assert!(kills >= 2, "nodes were killed only {kills} times");
    assert_eq!((c.lost, c.duplicates), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_and_postgres_restarts_lose_nothing() {
    let tmp = TempDir::new().unwrap();
    let pg = blocking(PgInstance::start).await;
    let nats = blocking(NatsProcess::start).await;
    let root = tmp.path().to_owned();
    let (url, bus) = (pg.url(), nats.url());
    let cluster = blocking(move || Cluster::start(&root, 2, &url, &bus)).await;
    let names = ["alice", "bob", "carol"];
    let mut clients = Vec::new();
    for n in names {
        clients.push(common::register(tmp.path(), &cluster.link, cluster.invite(), n).await);
    }
    common::set_up_conversations(&mut clients, &names).await;

    // NATS is stopped and started again, then PostgreSQL crashes (immediate
    // shutdown) and comes back, three times while people write.
    let stop = Arc::new(AtomicBool::new(false));
    let breaker = {
        let stop = stop.clone();
        let (mut pg, mut nats) = (pg, nats);
        std::thread::spawn(move || {
            let mut cycles = 0;
            while !stop.load(Ordering::SeqCst) && cycles < 3 {
                std::thread::sleep(Duration::from_millis(300));
                nats.stop();
                std::thread::sleep(Duration::from_millis(700));
                nats.start_again();
                std::thread::sleep(Duration::from_millis(300));
                pg.crash();
                std::thread::sleep(Duration::from_millis(700));
                pg.start_again();
                cycles += 1;
            }
            (pg, nats, cycles)
        })
    };
    let mut traffic = common::send_traffic(clients, &names, 20).await;
    stop.store(true, Ordering::SeqCst);
    let (_pg, _nats, cycles) = blocking(move || breaker.join().unwrap()).await;
    let mut cluster = cluster;
    for node in &mut cluster.nodes {
        assert!(
            node.is_running(),
            "a node exited while its services were down"
        );
    }
    let c = common::drain_and_check(&mut traffic, &names).await;
    println!(
        "NATS and PostgreSQL restart cycles: {cycles}, sends answered with a temporary error: {}, {c:?}",
        traffic.temporary_errors
    );
    assert!(cycles >= 1, "the services were never restarted");
    assert_eq!((c.lost, c.duplicates), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_reaching_two_nodes_at_once_keep_one_epoch_order() {
    let (tmp, _db, _nats, cluster) = start_cluster(2).await;
    let mut people = Vec::new();
    for (i, name) in ["alice", "bob", "carol", "dave"].iter().enumerate() {
        // alice and carol on node 0, bob and dave on node 1.
        people.push(
            common::register(
                tmp.path(),
                &cluster.node_link(i % 2),
                cluster.invite(),
                name,
            )
            .await,
        );
    }
    let mut dave = people.pop().unwrap();
    let mut carol = people.pop().unwrap();
    let mut bob = people.pop().unwrap();
    let mut alice = people.pop().unwrap();
    alice.group_create("crew", &["bob"]).await.unwrap();
    bob.receive(Duration::ZERO, |_| {}).await.unwrap();
    alice.group_promote("crew", "bob").await.unwrap();
    bob.receive(Duration::ZERO, |_| {}).await.unwrap();

    // Two admins on two nodes add someone at the same moment, on the same
    // epoch: the store lets one commit win, the other client rebases.
    let (a, b) = tokio::join!(
        alice.group_add("crew", &["carol"]),
        bob.group_add("crew", &["dave"])
    );
    a.unwrap();
    b.unwrap();
    for c in [&mut alice, &mut bob, &mut carol, &mut dave] {
        persist!(c.receive(Duration::from_millis(300), |_| {}));
    }
    let view = |c: &mut Client| {
        let g = c.groups().unwrap();
        let crew = g.iter().find(|g| g.name == "crew").expect("in crew");
        (crew.epoch, crew.members.clone())
    };
    let everyone = ["alice", "bob", "carol", "dave"]
        .map(str::to_owned)
        .to_vec();
    let seen: Vec<_> = [&mut alice, &mut bob, &mut carol, &mut dave]
        .into_iter()
        .map(view)
        .collect();
    for s in &seen {
        assert_eq!(
            s, &seen[0],
            "every member sees the same epoch and members: {seen:?}"
        );
    }
    assert_eq!(seen[0].1, everyone);
    // And the group still carries messages both ways across nodes.
    dave.send("crew", "dave here").await.unwrap();
    let mut got = Vec::new();
    carol
        .receive(Duration::from_millis(300), |ev| {
            if let ReceiveEvent::Message(m) = ev {
                got.push(m.text.clone());
            }
        })
        .await
        .unwrap();
    assert_eq!(got, vec!["dave here".to_owned()]);
}
