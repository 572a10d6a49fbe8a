//! Scenario `floor`: what this machine does with no messenger in the way.
//! A minimal tokio echo server (its own process, pinned like the servers)
//! over plain TCP and over TLS 1.3 + WebSocket with the same TLS and
//! WebSocket settings as `sotto-server` (ring, 4 KiB read buffer), driven by
//! the same load generator: ping-pong round trips on one connection
//! (p50/p99), pipelined 300-byte messages on several connections (msgs/s),
//! and the echo server's resident memory per idle TLS WebSocket. The other
//! scenarios give their rates as ratios to the pipelined TLS WebSocket rate
//! measured in the same run.

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::report::{Table, ms, percentile};
use crate::{Ctx, sys};

/// Bytes per message in the floor's measurements.
pub(crate) const PAYLOAD: usize = 300;

/// The floor's figures.
#[derive(Debug, Clone, Default)]
pub(crate) struct Floor {
    pub(crate) tcp: Transport,
    pub(crate) wss: Transport,
    /// Echo server RSS per idle TLS WebSocket, bytes.
    pub(crate) rss_per_idle: f64,
    /// The same per idle plain TCP socket (the tokio task and socket alone).
    pub(crate) rss_per_idle_tcp: f64,
    pub(crate) idle: usize,
}

/// One transport's figures.
#[derive(Debug, Clone, Default)]
pub(crate) struct Transport {
    pub(crate) rtt_p50: Duration,
    pub(crate) rtt_p99: Duration,
    pub(crate) per_second: f64,
    pub(crate) server_cpu_us: f64,
    pub(crate) load_cores: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp,
    Wss,
}

fn ws_config() -> WebSocketConfig {
    // The same as sotto-server's connections.
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
}

/// The echo server, run as `sotto-bench __echo tcp|wss`: prints its port
/// and certificate fingerprint, then echoes every message.
pub(crate) fn serve_echo(kind: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let id = sotto_server::tls::TlsIdentity::generate()?;
        println!("{port} {}", id.fingerprint());
        let acceptor = tokio_rustls::TlsAcceptor::from(id.server_config()?);
        let wss = kind == "wss";
        loop {
            let (mut tcp, _) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if !wss {
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n) = tcp.read(&mut buf).await {
                        if n == 0 || tcp.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut ws) =
                    tokio_tungstenite::accept_async_with_config(tls, Some(ws_config())).await
                else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_binary() && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    })
}

struct Echo {
    child: Child,
    addr: SocketAddr,
    fingerprint: [u8; 32],
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Echo {
    fn target(&self) -> (SocketAddr, [u8; 32]) {
        (self.addr, self.fingerprint)
    }

    fn start(kind: Kind, ctx: &Ctx) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["__echo", if kind == Kind::Wss { "wss" } else { "tcp" }])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut line = String::new();
        std::io::BufReader::new(
            child
                .stdout
                .take()
                .ok_or_else(|| anyhow::anyhow!("echo stdout"))?,
        )
        .read_line(&mut line)?;
        let (port, fp) = line
            .trim()
            .split_once(' ')
            .ok_or_else(|| anyhow::anyhow!("echo server said {line:?}"))?;
        let link = sotto_client::ServerLink::parse(&format!("sotto://127.0.0.1:{port}#fp={fp}"))?;
        sys::pin_server(&ctx.pinning, child.id());
        Ok(Self {
            child,
            addr: format!("127.0.0.1:{port}").parse()?,
            fingerprint: link.fingerprint,
        })
    }
}

/// A client connection to the echo server.
enum Client {
    Tcp(TcpStream),
    Wss(Box<WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>>),
}

impl Client {
    async fn connect(echo: (SocketAddr, [u8; 32]), kind: Kind) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(echo.0).await?;
        tcp.set_nodelay(true)?;
        if kind == Kind::Tcp {
            return Ok(Self::Tcp(tcp));
        }
        let cfg = sotto_client::transport::pinned_tls_config(echo.1)?;
        let name = rustls::pki_types::ServerName::try_from("sotto-server")?;
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await?;
        let url = format!("wss://{}/", echo.0);
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(url, tls, Some(ws_config())).await?;
        Ok(Self::Wss(Box::new(ws)))
    }

    async fn send(&mut self, msg: &[u8]) -> anyhow::Result<()> {
        match self {
            Self::Tcp(t) => t.write_all(msg).await?,
            Self::Wss(w) => w.send(Message::Binary(msg.to_vec().into())).await?,
        }
        Ok(())
    }

    async fn recv(&mut self, buf: &mut [u8]) -> anyhow::Result<()> {
        match self {
            Self::Tcp(t) => {
                t.read_exact(buf).await?;
            }
            Self::Wss(w) => loop {
                match w.next().await {
                    Some(Ok(Message::Binary(b))) => {
                        anyhow::ensure!(b.len() == buf.len(), "echo size");
                        buf.copy_from_slice(&b);
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                    None => anyhow::bail!("echo closed"),
                }
            },
        }
        Ok(())
    }
}

async fn transport(kind: Kind, ctx: &Ctx) -> anyhow::Result<Transport> {
    let echo = Echo::start(kind, ctx)?;
    let (round_trips, conns, window, secs) = if ctx.quick {
        (200, 4, 16, 1)
    } else {
        (5000, 16, 32, 5)
    };
    let msg = vec![0x5a; PAYLOAD];
    let mut buf = vec![0; PAYLOAD];
    let mut c = Client::connect(echo.target(), kind).await?;
    let mut rtt = Vec::with_capacity(round_trips);
    for _ in 0..round_trips {
        let t = Instant::now();
        c.send(&msg).await?;
        c.recv(&mut buf).await?;
        rtt.push(t.elapsed());
    }
    rtt.sort();
    let duration = Duration::from_secs(secs);
    let mut clients = Vec::new();
    for _ in 0..conns {
        clients.push(Client::connect(echo.target(), kind).await?);
    }
    let cpu = sys::CpuWatch::start(echo.child.id());
    let me = sys::CpuWatch::me();
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let msg = msg.clone();
            tokio::spawn(async move {
                let mut buf = vec![0; PAYLOAD];
                let mut n = 0usize;
                for _ in 0..window {
                    c.send(&msg).await?;
                }
                while start.elapsed() < duration {
                    c.recv(&mut buf).await?;
                    n += 1;
                    c.send(&msg).await?;
                }
                anyhow::Ok(n)
            })
        })
        .collect();
    let mut n = 0;
    for t in tasks {
        n += t.await??;
    }
    let elapsed = start.elapsed();
    Ok(Transport {
        rtt_p50: percentile(&rtt, 0.5),
        rtt_p99: percentile(&rtt, 0.99),
        per_second: n as f64 / elapsed.as_secs_f64(),
        server_cpu_us: cpu.seconds() * 1e6 / n.max(1) as f64,
        load_cores: me.cores(),
    })
}

async fn idle_rss(ctx: &Ctx, kind: Kind) -> anyhow::Result<(f64, usize)> {
    let echo = Echo::start(kind, ctx)?;
    let n = if ctx.quick { 200 } else { 5000 };
    // Warm up the allocator and the runtime with a few connections first.
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(Client::connect(echo.target(), kind).await?);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = sys::rss_kib(echo.child.id()).0;
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let p = sem.clone().acquire_owned().await?;
        let target = echo.target();
        tasks.push(tokio::spawn(async move {
            let _p = p;
            Client::connect(target, kind).await
        }));
    }
    for t in tasks {
        held.push(t.await??);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = sys::rss_kib(echo.child.id()).0;
    Ok((after.saturating_sub(before) as f64 * 1024.0 / n as f64, n))
}

/// Measures the floor (once per run; later scenarios reuse it).
pub(crate) async fn measure(ctx: &Ctx) -> anyhow::Result<Floor> {
    let tcp = transport(Kind::Tcp, ctx).await?;
    let wss = transport(Kind::Wss, ctx).await?;
    let (rss_per_idle, idle) = idle_rss(ctx, Kind::Wss).await?;
    let (rss_per_idle_tcp, _) = idle_rss(ctx, Kind::Tcp).await?;
    Ok(Floor {
        tcp,
        wss,
        rss_per_idle,
        rss_per_idle_tcp,
        idle,
    })
}

/// Scenario `floor`.
pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Table>> {
    let f = ctx.floor().await?;
    let mut t = Table::new(
        "floor",
        "minimal tokio echo server, same machine, same load generator",
        &[
            "transport",
            "ping-pong RTT p50 (ms)",
            "RTT p99 (ms)",
            "pipelined 300 B msgs/s",
            "echo server CPU-µs/msg",
            "load generator cores",
            "echo server RSS per idle socket (bytes)",
        ],
    );
    for (name, x, rss) in [
        ("TCP", &f.tcp, format!("{:.0}", f.rss_per_idle_tcp)),
        (
            "TLS 1.3 + WebSocket",
            &f.wss,
            format!("{:.0}", f.rss_per_idle),
        ),
    ] {
        t.row(vec![
            name.into(),
            ms(x.rtt_p50),
            ms(x.rtt_p99),
            format!("{:.0}", x.per_second),
            format!("{:.1}", x.server_cpu_us),
            format!("{:.2}{}", x.load_cores, ctx.bound(x.load_cores)),
            if rss.is_empty() { "—".into() } else { rss },
        ]);
    }
    t.note(format!(
        "pipelined: {} connections with {} messages in flight each; idle sockets: {} TLS WebSockets held open",
        if ctx.quick { 4 } else { 16 },
        if ctx.quick { 16 } else { 32 },
        f.idle
    ));
    Ok(vec![t])
}
