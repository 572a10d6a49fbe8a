//! The admin endpoint: plain HTTP/1.1 on its own listener (keep it on
//! loopback or a management network), four read-only paths:
//! - `/healthz`: 200 while the process serves;
//! - `/readyz`: 200 when the store answers and the node is not draining,
//!   else 503 (a load balancer stops sending it new clients); it answers at
//!   once whatever is down, from the store check [`check_store`] runs in
//!   the background every [`STORE_CHECK_EVERY`] (a store that does not
//!   answer within [`STORE_CHECK_WAIT`] is down), and its body says when
//!   the bus is cut off (the node still delivers, by reading the store:
//!   `crate::watch`);
//! - `/busz`: 200 while the bus reaches the other nodes, else 503;
//! - `/metrics`: Prometheus text format.
//!
//! Requests are parsed with `httparse` under a size cap and a deadline; one
//! request per connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::bus::Bus;
use crate::shared::Shared;
use crate::store::Store;

const MAX_REQUEST: usize = 8 * 1024;
const DEADLINE: Duration = Duration::from_secs(5);

/// How often the store's readiness is checked.
pub const STORE_CHECK_EVERY: Duration = Duration::from_millis(500);

/// How long a readiness check waits for the store.
pub const STORE_CHECK_WAIT: Duration = Duration::from_secs(1);

/// How long `/metrics` waits for the store's counts (then leaves them out).
const STATS_WAIT: Duration = Duration::from_secs(1);

/// Serves the admin endpoint until `stop` turns true.
pub async fn serve<S: Store, B: Bus>(
    listener: TcpListener,
    shared: Arc<Shared<S, B>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (tcp, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(DEADLINE, answer(tcp, shared)).await;
        });
    }
}

/// Pings the store every [`STORE_CHECK_EVERY`] for `/readyz`, until `stop`
/// turns true; a failed or late answer is counted (`readiness`).
pub(crate) async fn check_store<S: Store, B: Bus>(
    shared: Arc<Shared<S, B>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let ok = match tokio::time::timeout(STORE_CHECK_WAIT, shared.store.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                shared.metrics.store_failed("readiness", &e);
                false
            }
            Err(_) => {
                shared.metrics.store_timed_out("readiness");
                false
            }
        };
        shared.metrics.set_store_reachable(ok);
        tokio::select! {
            () = tokio::time::sleep(STORE_CHECK_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn answer<S: Store, B: Bus>(mut tcp: TcpStream, shared: Arc<Shared<S, B>>) {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    let path = loop {
        let Ok(n) = tcp.read(&mut buf[len..]).await else {
            return;
        };
        if n == 0 {
            return;
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                if req.method != Some("GET") {
                    return respond(&mut tcp, 405, "method not allowed\n").await;
                }
                break req.path.unwrap_or("/").to_owned();
            }
            Ok(httparse::Status::Partial) if len < MAX_REQUEST => {}
            _ => return respond(&mut tcp, 400, "bad request\n").await,
        }
    };
    match path.split('?').next().unwrap_or("") {
        "/healthz" => respond(&mut tcp, 200, "ok\n").await,
        "/readyz" => {
            if shared.metrics.is_draining() {
                return respond(&mut tcp, 503, "draining\n").await;
            }
            let store_ok = shared.metrics.store_reachable();
            let bus = shared.bus.connected();
            shared.metrics.set_bus_connected(bus);
            match (store_ok, bus) {
                (false, _) => respond(&mut tcp, 503, "store unavailable\n").await,
                (true, true) => respond(&mut tcp, 200, "ready\n").await,
                (true, false) => {
                    respond(
                        &mut tcp,
                        200,
                        "ready; bus disconnected: delivering by reading the store\n",
                    )
                    .await;
                }
            }
        }
        "/busz" => {
            let bus = shared.bus.connected();
            shared.metrics.set_bus_connected(bus);
            if bus {
                respond(&mut tcp, 200, "bus connected\n").await;
            } else {
                respond(&mut tcp, 503, "bus disconnected\n").await;
            }
        }
        "/metrics" => {
            let stats = match tokio::time::timeout(STATS_WAIT, shared.store.stats()).await {
                Ok(Ok(s)) => Some(s),
                Ok(Err(e)) => {
                    shared.metrics.store_failed("stats", &e);
                    None
                }
                Err(_) => {
                    shared.metrics.store_timed_out("stats");
                    None
                }
            };
            shared.metrics.set_bus_connected(shared.bus.connected());
            let body = shared.metrics.render(stats);
            respond(&mut tcp, 200, &body).await;
        }
        _ => respond(&mut tcp, 404, "not found\n").await,
    }
}

async fn respond(tcp: &mut TcpStream, code: u16, body: &str) {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let content_type = if body.starts_with("# ") {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = tcp.write_all(head.as_bytes()).await;
    let _ = tcp.write_all(body.as_bytes()).await;
    let _ = tcp.shutdown().await;
}
