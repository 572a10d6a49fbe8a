//! A TCP proxy for one link of a cluster (a node to PostgreSQL, a node to
//! NATS), which a fault test cuts and heals to partition that node from
//! that service alone. Cutting resets every connection through it and
//! resets new ones as soon as they are accepted, as a network that refuses
//! them would (a service that is down is refused the same way); healing
//! lets new connections through again. Loopback only.
//! It runs on a thread of its own, so tests without a runtime can use it.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy; stops (closing its connections) when dropped.
#[derive(Debug)]
pub struct LinkProxy {
    /// Where the node connects instead of the service.
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LinkProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub fn start(target: SocketAddr) -> Self {
        let (cut, cut_rx) = watch::channel(false);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            rt.block_on(async move {
                let l = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
                addr_tx
                    .send(l.local_addr().expect("addr"))
                    .expect("report addr");
                loop {
                    let (client, _) = tokio::select! {
                        a = l.accept() => match a { Ok(x) => x, Err(_) => continue },
                        _ = &mut stopped => break,
                    };
                    if *cut_rx.borrow() {
                        reset(client);
                        continue;
                    }
                    tokio::spawn(forward(client, target, cut_rx.clone()));
                }
            });
        });
        let addr = addr_rx.recv().expect("proxy address");
        Self {
            addr,
            cut,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Cuts the link: open connections are closed, new ones refused.
    pub fn cut(&self) {
        let _ = self.cut.send(true);
    }

    /// Heals the link: new connections go through again.
    pub fn heal(&self) {
        let _ = self.cut.send(false);
    }
}

/// Closes with a reset, as a refused or broken connection looks to its client.
fn reset(s: TcpStream) {
    let _ = s.set_zero_linger();
    drop(s);
}

async fn forward(mut client: TcpStream, target: SocketAddr, mut cut: watch::Receiver<bool>) {
    let Ok(mut up) = TcpStream::connect(target).await else {
        return reset(client);
    };
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut up) => {}
        _ = cut.wait_for(|c| *c) => {
            reset(client);
            reset(up);
        }
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.cut();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn forwards_cuts_and_heals() {
        let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in echo.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut b = [0u8; 16];
                    while let Ok(n) = s.read(&mut b) {
                        if n == 0 || s.write_all(&b[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let p = LinkProxy::start(target);
        let round_trip = |s: &mut std::net::TcpStream| {
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            // Through a cut link the write may already fail (reset).
            s.write_all(b"ping")?;
            let mut b = [0u8; 4];
            s.read_exact(&mut b).map(|()| b)
        };
        let mut s = std::net::TcpStream::connect(p.addr).unwrap();
        assert_eq!(&round_trip(&mut s).unwrap(), b"ping");
        p.cut();
        // The open connection is closed; a new one is closed at once.
        let mut b = [0u8; 4];
        assert!(matches!(s.read(&mut b), Ok(0) | Err(_)));
        let mut s = std::net::TcpStream::connect(p.addr).unwrap();
        assert!(round_trip(&mut s).is_err());
        p.heal();
        let mut s = std::net::TcpStream::connect(p.addr).unwrap();
        assert_eq!(&round_trip(&mut s).unwrap(), b"ping");
    }
}
