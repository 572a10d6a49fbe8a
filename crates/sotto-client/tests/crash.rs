//! The server is SIGKILLed again and again while four clients write to each
//! other (one-to-one and in a group). Afterwards every message the server
//! acknowledged has reached every other member exactly once, in the order
//! its sender sent it; the counts are printed (run with `--nocapture`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sotto_client::{Client, ClientError, ReceiveEvent, RegisterOptions, ServerLink, Suite};
use sotto_proto::Handle;
use sotto_test_support::ServerProcess;
use tempfile::TempDir;

const PASS: &str = "crash test passphrase";
const PER_SENDER: usize = 30;

async fn register(dir: &std::path::Path, server: &ServerProcess, name: &str) -> Client {
    let opts = RegisterOptions {
        link: ServerLink::parse(&server.link).unwrap(),
        handle: Handle::new(name).unwrap(),
        invite: Some(server.invite()),
        suite: Suite::PostQuantum,
    };
    Client::register(&dir.join(name), PASS, opts).await.unwrap()
}

fn retryable(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Unreachable(_)
            | ClientError::Transport(_)
            | ClientError::Closed(_)
            | ClientError::Timeout
    )
}

/// Retries an operation until the server is back (it is being killed).
macro_rules! persist {
    ($op:expr) => {{
        let mut tries = 0;
        loop {
            match $op.await {
                Ok(v) => break v,
                Err(e) if retryable(&e) => {
                    tries += 1;
                    assert!(tries < 300, "the server never came back: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_arrives_once_in_order_across_sigkills() {
    let tmp = TempDir::new().unwrap();
    let mut server = ServerProcess::start(&tmp.path().join("server"), &[]);
    let names = ["alice", "bob", "carol", "dave"];
    let mut clients = Vec::new();
    for n in names {
        clients.push(register(tmp.path(), &server, n).await);
    }
    clients[0]
        .group_create("crew", &["bob", "carol", "dave"])
        .await
        .unwrap();
    // The conversations exist before the killing starts: what is tested here
    // is application traffic (see THREAT_MODEL.md on commits whose answer is
    // lost in a crash).
    for i in 0..names.len() {
        let peer = names[(i + 1) % names.len()];
        clients[i].send(peer, "hello").await.unwrap();
    }
    for c in clients.iter_mut() {
        c.receive(Duration::ZERO, |_| {}).await.unwrap();
    }

    // The killer: SIGKILL the server every 200 ms and restart it 100 ms later.
    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut kills = 0;
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(200));
                server.kill9();
                std::thread::sleep(Duration::from_millis(100));
                server.restart();
                kills += 1;
            }
            (server, kills)
        })
    };

    // Each client sends PER_SENDER messages, alternating between the group
    // and a one-to-one conversation with the next person; a send counts as
    // acknowledged when `send` returned Ok.
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let peer = names[(i + 1) % names.len()];
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            // Messages shown while flushing the outbox during the traffic.
            let mut seen: Vec<(String, String)> = Vec::new();
            for k in 0..PER_SENDER {
                let (to, text) = if k % 2 == 0 {
                    ("crew".to_owned(), format!("{} #{k} to crew", names[i]))
                } else {
                    (peer.to_owned(), format!("{} #{k} to {peer}", names[i]))
                };
                // A send that reached the outbox is never repeated: the
                // next command that reaches the server sends it (and the
                // server drops a second copy by its id).
                loop {
                    match c.send(&to, &text).await {
                        Ok(_) => break,
                        Err(ClientError::Queued(_)) => {
                            persist!(c.receive(Duration::ZERO, |ev| {
                                if let ReceiveEvent::Message(m) = ev {
                                    seen.push((m.sender.clone(), m.text.clone()));
                                }
                            }));
                            break;
                        }
                        Err(e) if retryable(&e) => {
                            tokio::time::sleep(Duration::from_millis(100)).await
                        }
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
                acked.push((to, text));
            }
            (c, acked, seen)
        }));
    }
    let mut clients = Vec::new();
    let mut acked: Vec<(usize, String, String)> = Vec::new();
    let mut delivered: HashMap<usize, Vec<(String, String)>> = HashMap::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let (c, a, seen) = t.await.unwrap();
        clients.push(c);
        acked.extend(a.into_iter().map(|(to, text)| (i, to, text)));
        delivered.insert(i, seen);
    }
    stop.store(true, Ordering::SeqCst);
    let (_server, kills) = killer.join().unwrap();

    // Everyone drains their mailbox with the server up.
    for (i, c) in clients.iter_mut().enumerate() {
        for _ in 0..3 {
            let mut got = Vec::new();
            persist!(c.receive(Duration::from_millis(300), |ev| {
                if let ReceiveEvent::Message(m) = ev {
                    got.push((m.sender.clone(), m.text.clone()));
                }
            }));
            delivered.entry(i).or_default().extend(got);
        }
    }

    let mut expected = 0;
    let mut lost = 0;
    let mut duplicates = 0;
    for (r, got) in &delivered {
        let me = names[*r];
        for (s, to, text) in &acked {
            if *s == *r {
                continue;
            }
            let for_me = to == "crew" || to == me;
            if !for_me {
                continue;
            }
            expected += 1;
            match got.iter().filter(|(_, t)| t == text).count() {
                0 => lost += 1,
                1 => {}
                n => duplicates += n - 1,
            }
        }
        // Per sender, the order of arrival is the order of sending.
        for (s, name) in names.iter().enumerate() {
            if s == *r {
                continue;
            }
            let sent: Vec<&String> = acked
                .iter()
                .filter(|(x, to, _)| *x == s && (to == "crew" || to == me))
                .map(|(_, _, t)| t)
                .collect();
            let arrived: Vec<&String> = got
                .iter()
                .filter(|(f, _)| f == name)
                .map(|(_, t)| t)
                .collect();
            assert_eq!(arrived, sent, "{me} got {name}'s messages out of order");
        }
    }
    println!(
        "sigkills: {kills}, acknowledged sends: {}, expected deliveries: {expected}, delivered: {}, duplicates: {duplicates}, lost: {lost}",
        acked.len(),
        delivered.values().map(Vec::len).sum::<usize>()
    );
    assert!(kills >= 3, "the server was killed only {kills} times");
    assert_eq!((lost, duplicates), (0, 0));
}
