//! The comparators: `mosquitto` and `nats-server` started by the bench on
//! free loopback ports (never installed by it), and the minimal clients the
//! load generator speaks to them: MQTT 3.1.1 written out here (CONNECT,
//! SUBSCRIBE, PUBLISH at QoS 1 with its PUBACK: nothing the broker could do
//! faster with another client), raw NATS for idle connections, and the
//! `async-nats` crate for NATS and JetStream traffic. Both brokers can also
//! listen with TLS (the same kind of self-signed ECDSA P-256 certificate as
//! Sotto's, pinned the same way by the load generator), for comparisons
//! where Sotto's TLS is part of the cost.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use sotto_server::tls::TlsIdentity;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::sys;

/// A broker process on a loopback port; killed on drop.
#[derive(Debug)]
pub(crate) struct Broker {
    child: Child,
    pub(crate) addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// `mosquitto` with persistence on (QoS 1 messages and persistent
    /// sessions are kept in its on-disk database).
    pub(crate) fn mosquitto(pinning: &sys::Pinning) -> anyhow::Result<Self> {
        Self::mosquitto_with(pinning, None)
    }

    /// `mosquitto` as above, its listener speaking TLS with `tls` when given.
    pub(crate) fn mosquitto_with(
        pinning: &sys::Pinning,
        tls: Option<&TlsIdentity>,
    ) -> anyhow::Result<Self> {
        let bin = sys::need("mosquitto", "mosquitto")?;
        // Started as root, mosquitto would switch to the `mosquitto` user,
        // which cannot read the bench's private temp directory (its
        // persistence file, its key): it runs as the bench's user instead.
        let user = Command::new("id").arg("-un").output()?;
        let user = String::from_utf8(user.stdout)?.trim().to_owned();
        Self::start(pinning, |port, dir| {
            let conf = dir.join("mosquitto.conf");
            let mut text = format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n\
                 max_queued_messages 1000000\nmax_inflight_messages 0\nset_tcp_nodelay true\nlog_type error\nuser {user}\n",
                dir.display()
            );
            if let Some(id) = tls {
                let (cert, key) = write_pem(dir, id)?;
                text.push_str(&format!(
                    "certfile {}\nkeyfile {}\ntls_version tlsv1.3\n",
                    cert.display(),
                    key.display()
                ));
            }
            std::fs::write(&conf, text)?;
            let mut c = Command::new(&bin);
            c.arg("-c").arg(&conf);
            Ok(c)
        })
    }

    /// `nats-server`, with JetStream (file store in a temp directory) when
    /// `jetstream` says so.
    pub(crate) fn nats(pinning: &sys::Pinning, jetstream: JetStream) -> anyhow::Result<Self> {
        Self::nats_with(pinning, jetstream, None)
    }

    /// `nats-server` as above, requiring TLS with `tls` when given (NATS
    /// sends its INFO line in clear, then the client starts TLS).
    pub(crate) fn nats_with(
        pinning: &sys::Pinning,
        jetstream: JetStream,
        tls: Option<&TlsIdentity>,
    ) -> anyhow::Result<Self> {
        let bin = sys::need("nats-server", "nats-server")?;
        Self::start(pinning, |port, dir| {
            let mut c = Command::new(&bin);
            c.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
            if jetstream == JetStream::FileStore {
                c.arg("-js").arg("-sd").arg(dir);
            }
            if let Some(id) = tls {
                let (cert, key) = write_pem(dir, id)?;
                c.arg("--tls")
                    .arg("--tlscert")
                    .arg(cert)
                    .arg("--tlskey")
                    .arg(key);
            }
            Ok(c)
        })
    }

    /// Starts the broker `command` makes for a free port and a fresh data
    /// directory. A port can be taken between choosing it and the broker's
    /// bind (the load generator's own connections use ephemeral ports):
    /// a broker that exits at once is started again on another port.
    fn start(
        pinning: &sys::Pinning,
        command: impl Fn(u16, &std::path::Path) -> anyhow::Result<Command>,
    ) -> anyhow::Result<Self> {
        let mut last = None;
        for _ in 0..3 {
            let dir = tempfile::tempdir_in(".")?;
            let port = sotto_test_support::services::free_port();
            let c = command(port, dir.path())?;
            match Self::spawn(c, port, dir, pinning) {
                Ok(b) => return Ok(b),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("broker did not start")))
    }

    fn spawn(
        mut c: Command,
        port: u16,
        dir: tempfile::TempDir,
        pinning: &sys::Pinning,
    ) -> anyhow::Result<Self> {
        let log = std::fs::File::create(dir.path().join("broker.log"))?;
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let child = c.spawn()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut b = Self {
            child,
            addr,
            _dir: dir,
        };
        let t = std::time::Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            let said = || {
                std::fs::read_to_string(b._dir.path().join("broker.log"))
                    .unwrap_or_default()
                    .lines()
                    .last()
                    .unwrap_or("")
                    .to_owned()
            };
            if let Some(status) = b.child.try_wait()? {
                anyhow::bail!("broker exited ({status}) on port {port}: {}", said());
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(10),
                "broker did not start on port {port} in 10 s: {}",
                said()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        sys::pin_server(pinning, b.pid());
        Ok(b)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn nats_url(&self) -> String {
        format!("nats://{}", self.addr)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `nats-server` runs JetStream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JetStream {
    Off,
    FileStore,
}

/// The broker's certificate and key as PEM files in `dir`.
fn write_pem(
    dir: &std::path::Path,
    id: &TlsIdentity,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(
        &cert,
        pem::encode(&pem::Pem::new("CERTIFICATE", id.cert_der.clone())),
    )?;
    std::fs::write(
        &key,
        pem::encode(&pem::Pem::new("PRIVATE KEY", id.key_der.clone())),
    )?;
    Ok((cert, key))
}

/// A client TLS configuration that accepts exactly `id`'s certificate.
pub(crate) fn pinned(id: &TlsIdentity) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut fp = [0u8; 32];
    hex::decode_to_slice(id.fingerprint(), &mut fp)?;
    Ok(sotto_client::transport::pinned_tls_config(fp)?)
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// TCP to `addr` from `source`, then TLS with `tls` when given.
async fn open(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> anyhow::Result<(Reader, Writer)> {
    let tcp = dial(addr, source).await?;
    tcp.set_nodelay(true)?;
    Ok(match tls {
        None => {
            let (r, w) = tcp.into_split();
            (Box::new(r), Box::new(w))
        }
        Some(cfg) => {
            let s = start_tls(tcp, cfg).await?;
            let (r, w) = tokio::io::split(s);
            (Box::new(r), Box::new(w))
        }
    })
}

async fn start_tls(
    tcp: TcpStream,
    cfg: &Arc<rustls::ClientConfig>,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = rustls::pki_types::ServerName::try_from("sotto-server")?;
    Ok(tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await?)
}

/// A minimal MQTT 3.1.1 client connection.
pub(crate) struct Mqtt {
    rd: BufReader<Reader>,
    wr: Writer,
    next_id: u16,
}

impl std::fmt::Debug for Mqtt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mqtt")
            .field("next_id", &self.next_id)
            .finish()
    }
}

/// A PUBLISH received.
#[derive(Debug)]
pub(crate) struct Publish {
    pub(crate) payload: Vec<u8>,
}

fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn mqtt_str(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    remaining_length(body.len(), &mut p);
    p.extend_from_slice(body);
    p
}

impl Mqtt {
    /// Connects with `client_id`; `clean` false keeps a persistent session.
    pub(crate) async fn connect(
        addr: SocketAddr,
        source: Option<std::net::IpAddr>,
        client_id: &str,
        clean: bool,
    ) -> anyhow::Result<Self> {
        Self::connect_with(addr, source, client_id, clean, None).await
    }

    /// [`Mqtt::connect`], over TLS with `tls` when given.
    pub(crate) async fn connect_with(
        addr: SocketAddr,
        source: Option<std::net::IpAddr>,
        client_id: &str,
        clean: bool,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> anyhow::Result<Self> {
        let (r, w) = open(addr, source, tls).await?;
        let mut m = Self {
            rd: BufReader::with_capacity(4096, r),
            wr: w,
            next_id: 1,
        };
        let mut body = Vec::new();
        mqtt_str("MQTT", &mut body);
        body.push(4); // protocol level 3.1.1
        body.push(if clean { 0x02 } else { 0x00 });
        body.extend_from_slice(&60u16.to_be_bytes()); // keepalive seconds
        mqtt_str(client_id, &mut body);
        m.wr.write_all(&packet(0x10, &body)).await?;
        let (t, b) = m.read_packet().await?;
        anyhow::ensure!(
            t >> 4 == 2 && b.get(1) == Some(&0),
            "mqtt: connack {t:#x} {b:?}"
        );
        Ok(m)
    }

    /// Subscribes to `topic` at QoS 1.
    pub(crate) async fn subscribe(&mut self, topic: &str) -> anyhow::Result<()> {
        let mut body = 1u16.to_be_bytes().to_vec();
        mqtt_str(topic, &mut body);
        body.push(1);
        self.wr.write_all(&packet(0x82, &body)).await?;
        loop {
            let (t, b) = self.read_packet().await?;
            if t >> 4 == 9 {
                anyhow::ensure!(b.get(2) == Some(&1), "mqtt: suback {b:?}");
                return Ok(());
            }
        }
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK.
    pub(crate) async fn publish_qos1(&mut self, topic: &str, payload: &[u8]) -> anyhow::Result<()> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let mut body = Vec::with_capacity(payload.len() + topic.len() + 4);
        mqtt_str(topic, &mut body);
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(payload);
        self.wr.write_all(&packet(0x32, &body)).await?;
        loop {
            let (t, b) = self.read_packet().await?;
            if t >> 4 == 4 && b[..2] == id.to_be_bytes() {
                return Ok(());
            }
        }
    }

    /// The next PUBLISH, acknowledged (PUBACK) if it came at QoS 1.
    pub(crate) async fn next_publish(&mut self) -> anyhow::Result<Publish> {
        loop {
            let (t, b) = self.read_packet().await?;
            if t >> 4 != 3 {
                continue;
            }
            let qos = (t >> 1) & 3;
            anyhow::ensure!(b.len() >= 2, "mqtt: short publish");
            let tl = u16::from_be_bytes([b[0], b[1]]) as usize;
            let mut at = 2 + tl;
            if qos > 0 {
                let id = [b[at], b[at + 1]];
                at += 2;
                self.wr.write_all(&[0x40, 2, id[0], id[1]]).await?;
            }
            return Ok(Publish {
                payload: b[at..].to_vec(),
            });
        }
    }

    /// Reads until the connection ends (an idle client; answers nothing,
    /// the broker only expects PINGREQ within the keepalive).
    pub(crate) async fn idle(mut self) {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        tick.tick().await;
        loop {
            tokio::select! {
                r = self.read_packet() => if r.is_err() { return },
                _ = tick.tick() => if self.wr.write_all(&[0xc0, 0]).await.is_err() { return },
            }
        }
    }

    async fn read_packet(&mut self) -> anyhow::Result<(u8, Vec<u8>)> {
        let t = self.rd.read_u8().await?;
        let mut len = 0usize;
        let mut shift = 0;
        loop {
            let b = self.rd.read_u8().await?;
            len |= ((b & 0x7f) as usize) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
            anyhow::ensure!(shift < 28, "mqtt: bad length");
        }
        let mut body = vec![0; len];
        self.rd.read_exact(&mut body).await?;
        Ok((t, body))
    }
}

/// A TCP connection to `addr`, from `source` when given.
pub(crate) async fn dial(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
) -> std::io::Result<TcpStream> {
    match source {
        None => TcpStream::connect(addr).await,
        Some(ip) => {
            let s = tokio::net::TcpSocket::new_v4()?;
            s.bind(SocketAddr::new(ip, 0))?;
            s.connect(addr).await
        }
    }
}

/// An idle NATS client connection (CONNECT, PING/PONG), answering the
/// server's PINGs until it closes. Returns once connected.
/// With `tls`, the INFO line is read in clear and TLS starts after it, as
/// nats-server 2.9 expects.
pub(crate) async fn nats_idle(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut tcp = dial(addr, source).await?;
    // Byte by byte: nothing after the INFO line may be read before TLS.
    let mut info = Vec::new();
    while info.last() != Some(&b'\n') {
        anyhow::ensure!(info.len() < 64 * 1024, "nats: INFO too long");
        info.push(tcp.read_u8().await?);
    }
    anyhow::ensure!(
        info.starts_with(b"INFO"),
        "nats: {:?}",
        String::from_utf8_lossy(&info)
    );
    let (r, mut w): (Reader, Writer) = match &tls {
        None => {
            let (r, w) = tcp.into_split();
            (Box::new(r), Box::new(w))
        }
        Some(cfg) => {
            let (r, w) = tokio::io::split(start_tls(tcp, cfg).await?);
            (Box::new(r), Box::new(w))
        }
    };
    let mut rd = BufReader::with_capacity(1024, r);
    let mut line = String::new();
    w.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
        .await?;
    loop {
        line.clear();
        anyhow::ensure!(
            tokio::io::AsyncBufReadExt::read_line(&mut rd, &mut line).await? > 0,
            "nats: closed"
        );
        if line.starts_with("PONG") {
            break;
        }
    }
    Ok(tokio::spawn(async move {
        let mut line = String::new();
        loop {
            line.clear();
            match tokio::io::AsyncBufReadExt::read_line(&mut rd, &mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) if line.starts_with("PING") => {
                    if w.write_all(b"PONG\r\n").await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
            }
        }
    }))
}
