//! The server is SIGKILLed again and again while four clients write to each
//! other (one-to-one and in a group). Afterwards every message the server
//! acknowledged has reached every other member exactly once, in the order
//! its sender sent it; the counts are printed (run with `--nocapture`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sotto_test_support::ServerProcess;
use tempfile::TempDir;

const PER_SENDER: usize = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_arrives_once_in_order_across_sigkills() {
    let tmp = TempDir::new().unwrap();
    let mut server = ServerProcess::start(&tmp.path().join("server"), &[]);
    let names = ["alice", "bob", "carol", "dave"];
    let mut clients = Vec::new();
    for n in names {
        clients.push(common::register(tmp.path(), &server.link, server.invite(), n).await);
    }
    // The conversations exist before the killing starts: what is tested here
    // is application traffic (see THREAT_MODEL.md on commits whose answer is
    // lost in a crash).
    common::set_up_conversations(&mut clients, &names).await;

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
    let mut traffic = common::send_traffic(clients, &names, PER_SENDER).await;
    stop.store(true, Ordering::SeqCst);
    let (_server, kills) = killer.join().unwrap();

    let c = common::drain_and_check(&mut traffic, &names).await;
    println!("sigkills: {kills}, {c:?}");
    assert!(kills >= 3, "the server was killed only {kills} times");
    assert_eq!((c.lost, c.duplicates), (0, 0));
}
