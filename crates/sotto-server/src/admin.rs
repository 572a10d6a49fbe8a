//! The admin endpoint: plain HTTP/1.1 on its own listener (keep it on
//! loopback or a management network), three read-only paths:
//! - `/healthz`: 200 while the process serves;
//! - `/readyz`: 200 when the store answers and the node is not draining,
//!   else 503 (a load balancer stops sending it new clients);
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
use crate::server::Shared;
use crate::store::Store;

const MAX_REQUEST: usize = 8 * 1024;
const DEADLINE: Duration = Duration::from_secs(5);

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
            let store_ok = matches!(
                tokio::time::timeout(Duration::from_secs(2), shared.store.ping()).await,
                Ok(Ok(()))
            );
            if shared.metrics.is_draining() {
                respond(&mut tcp, 503, "draining\n").await;
            } else if store_ok {
                respond(&mut tcp, 200, "ready\n").await;
            } else {
                respond(&mut tcp, 503, "store unavailable\n").await;
            }
        }
        "/metrics" => {
            let stats = tokio::time::timeout(Duration::from_secs(2), shared.store.stats())
                .await
                .ok()
                .and_then(Result::ok);
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
