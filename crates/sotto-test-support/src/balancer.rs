//! A TCP load balancer for cluster tests, as an operator would put HAProxy
//! or a cloud balancer in TCP mode in front of the nodes: each new
//! connection goes to the next node in turn that accepts it; TLS passes
//! through untouched (the nodes share one TLS identity). It runs on a thread
//! of its own, so tests without a runtime can use it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};

/// A running balancer; stops when dropped.
#[derive(Debug)]
pub struct Balancer {
    /// Where clients connect.
    pub addr: SocketAddr,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Balancer {
    /// Listens on a free loopback port and spreads connections over `backends`.
    pub fn start(backends: Vec<SocketAddr>) -> Self {
        let backends = Arc::new(Mutex::new(backends));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let list = backends.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("balancer runtime");
            rt.block_on(async move {
                let l = TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind balancer");
                addr_tx
                    .send(l.local_addr().expect("addr"))
                    .expect("report addr");
                let next = Arc::new(AtomicUsize::new(0));
                loop {
                    let (client, _) = tokio::select! {
                        a = l.accept() => match a { Ok(x) => x, Err(_) => continue },
                        _ = &mut stopped => break,
                    };
                    let list = list.clone();
                    let next = next.clone();
                    tokio::spawn(async move {
                        let nodes = list.lock().map(|v| v.clone()).unwrap_or_default();
                        let start = next.fetch_add(1, Ordering::Relaxed);
                        for i in 0..nodes.len() {
                            let node = nodes[(start + i) % nodes.len()];
                            if let Ok(mut up) = TcpStream::connect(node).await {
                                let mut client = client;
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                                return;
                            }
                        }
                    });
                }
            });
        });
        let addr = addr_rx.recv().expect("balancer address");
        Self {
            addr,
            backends,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Replaces the nodes new connections go to.
    pub fn set_backends(&self, nodes: Vec<SocketAddr>) {
        if let Ok(mut v) = self.backends.lock() {
            *v = nodes;
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
