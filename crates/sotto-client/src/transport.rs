//! The connection to a server: TCP, TLS 1.3 with the certificate pinned to
//! the link's fingerprint (no certificate authorities involved), then a
//! WebSocket carrying one protocol frame per binary message. Requests and
//! pushed deliveries share the socket; [`Connection::request`] keeps
//! deliveries that arrive while it waits for its answer.
//!
//! A link naming several addresses (nodes of one server) is tried from its
//! preferred address on: an address that cannot be reached, or whose TLS
//! handshake fails for another reason than a wrong certificate, passes to
//! the next; a node that answers `Unavailable` is avoided by the next
//! connection ([`ServerLink::preferred`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use sotto_proto::{ClientFrame, Delivery, Request, Response, ServerFrame, ServerHello};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::{ClientError, ServerLink};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The TCP connect deadline per address when a link names several.
const FAILOVER_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts exactly the certificate whose SHA-256 is pinned, and checks the
/// handshake signatures against its key.
#[derive(Debug)]
struct Pinned {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
    mismatch: Arc<AtomicBool>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            self.mismatch.store(true, Ordering::SeqCst);
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What a connection yields besides responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message from the mailbox.
    Deliver(Delivery),
    /// The mailbox backlog has been delivered.
    Synced,
}

/// An open connection to a server.
pub struct Connection {
    ws: WebSocketStream<TlsStream<TcpStream>>,
    /// The link it was made from, and which of its addresses answered.
    link: ServerLink,
    node: usize,
    hello: ServerHello,
    next_req: u32,
    events: VecDeque<Event>,
    /// The server said the backlog is delivered; what follows is pushed live.
    synced: bool,
    /// Whether [`Connection::request`] waits out a short `RateLimited`
    /// and sends the request again ([`Connection::patient`]).
    patient: bool,
}

/// The longest `RateLimited` hint a patient connection waits out (the
/// per-connection request allowance refills within a second); a longer
/// one (a quota per source) is the caller's.
const PATIENT_WAIT: Duration = Duration::from_secs(2);
/// How many times a patient connection sends one request again.
const PATIENT_TRIES: u32 = 30;

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connection")
    }
}

/// The TLS client configuration of a connection: TLS 1.3 with `ring`,
/// accepting exactly the certificate whose SHA-256 is `fingerprint`
/// (`mismatch` is set when another one was offered).
fn client_config(
    fingerprint: [u8; 32],
    mismatch: Arc<AtomicBool>,
) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Pinned {
        fingerprint,
        provider: provider.clone(),
        mismatch,
    };
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Transport(e.to_string()))?
        .dangerous() // not dangerous here: the verifier pins one certificate exactly
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The TLS client configuration [`Connection`] uses, pinned to the
/// certificate with SHA-256 `fingerprint` (benchmarks use it to measure
/// bare TLS beside the protocol).
pub fn pinned_tls_config(fingerprint: [u8; 32]) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    client_config(fingerprint, Arc::new(AtomicBool::new(false)))
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .max_message_size(Some(2 * sotto_proto::MAX_FRAME_BYTES))
        .max_frame_size(Some(sotto_proto::WS_FRAGMENT_BYTES))
}

/// TCP and TLS 1.3 to the server, its certificate checked against the
/// link's pin; no WebSocket yet. (Tests use it to play slow clients.)
pub async fn connect_tls(link: &ServerLink) -> Result<TlsStream<TcpStream>, ClientError> {
    connect_tls_from(link, None).await.map(|(t, _)| t)
}

/// [`connect_tls`] from a given local address, if any, trying the link's
/// addresses in turn; returns which one answered (its index in
/// [`ServerLink::authorities`]).
async fn connect_tls_from(
    link: &ServerLink,
    source: Option<std::net::IpAddr>,
) -> Result<(TlsStream<TcpStream>, usize), ClientError> {
    let all = link.authorities();
    let dial_timeout = if all.len() > 1 {
        FAILOVER_CONNECT_TIMEOUT
    } else {
        CONNECT_TIMEOUT
    };
    let start = link.preferred();
    let mut last = None;
    for k in 0..all.len() {
        let i = (start + k) % all.len();
        match connect_tls_to(&all[i], link.fingerprint, source, dial_timeout).await {
            Ok(t) => {
                link.prefer(i);
                return Ok((t, i));
            }
            // A wrong certificate is never passed over: it may be an attack.
            Err(ClientError::CertificateMismatch) => return Err(ClientError::CertificateMismatch),
            Err(e) => {
                tracing::debug!(error = %e, "server address failed; trying the next");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| ClientError::Unreachable("no address".into())))
}

/// TCP and TLS to one address.
async fn connect_tls_to(
    authority: &str,
    fingerprint: [u8; 32],
    source: Option<std::net::IpAddr>,
    dial_timeout: Duration,
) -> Result<TlsStream<TcpStream>, ClientError> {
    let unreachable = |e: String| ClientError::Unreachable(format!("{authority}: {e}"));
    let dial = async {
        let Some(ip) = source else {
            return TcpStream::connect(authority).await;
        };
        let addr = tokio::net::lookup_host(authority)
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(ip, 0))?;
        socket.connect(addr).await
    };
    let tcp = match timeout(dial_timeout, dial).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Err(_) => return Err(unreachable("timed out".into())),
    };
    let _ = tcp.set_nodelay(true);
    let mismatch = Arc::new(AtomicBool::new(false));
    let cfg = client_config(fingerprint, mismatch.clone())?;
    let name =
        ServerName::try_from("sotto-server").map_err(|e| ClientError::Transport(e.to_string()))?;
    match timeout(CONNECT_TIMEOUT, TlsConnector::from(cfg).connect(name, tcp)).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(_)) if mismatch.load(Ordering::SeqCst) => Err(ClientError::CertificateMismatch),
        Ok(Err(e)) => Err(ClientError::Transport(format!("tls: {e}"))),
        Err(_) => Err(ClientError::Timeout),
    }
}

impl Connection {
    /// Connects, checks the pinned certificate, upgrades to WebSocket and
    /// reads the server's hello.
    pub async fn connect(link: &ServerLink) -> Result<Self, ClientError> {
        Self::connect_via(link, None).await
    }

    /// [`Connection::connect`] from the given local address (load generators
    /// spread many connections over several loopback addresses this way, past
    /// the ephemeral-port limit of one source address).
    pub async fn connect_from(
        link: &ServerLink,
        source: std::net::IpAddr,
    ) -> Result<Self, ClientError> {
        Self::connect_via(link, Some(source)).await
    }

    async fn connect_via(
        link: &ServerLink,
        source: Option<std::net::IpAddr>,
    ) -> Result<Self, ClientError> {
        let (tls, node) = connect_tls_from(link, source).await?;
        let url = format!("wss://{}{}", link.authorities()[node], sotto_proto::WS_PATH);
        let upgrade = tokio_tungstenite::client_async_with_config(url, tls, Some(ws_config()));
        let (mut ws, _) = match timeout(CONNECT_TIMEOUT, upgrade).await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => return Err(ClientError::Transport(format!("websocket: {e}"))),
            Err(_) => return Err(ClientError::Timeout),
        };
        let hello = match timeout(CONNECT_TIMEOUT, read_frame(&mut ws)).await {
            Ok(Ok(ServerFrame::Hello(h))) => h,
            Ok(Ok(other)) => {
                return Err(ClientError::Malformed(format!(
                    "expected hello, got {other:?}"
                )));
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(ClientError::Timeout),
        };
        if !hello.versions.contains(&sotto_proto::PROTOCOL_VERSION) {
            return Err(ClientError::Invalid(format!(
                "server speaks protocol versions {:?}, this client {}",
                hello.versions,
                sotto_proto::PROTOCOL_VERSION
            )));
        }
        Ok(Self {
            ws,
            link: link.clone(),
            node,
            hello,
            next_req: 1,
            events: VecDeque::new(),
            synced: false,
            patient: false,
        })
    }

    /// Makes [`Connection::request`] wait out a `RateLimited` answer of at
    /// most two seconds and send the request again: the server refused it
    /// before doing anything, so nothing happens twice. What the client
    /// library's operations use (a group of 200 makes 400 requests on one
    /// connection); tests of the limits keep connections impatient.
    pub fn patient(mut self) -> Self {
        self.patient = true;
        self
    }

    /// The server's hello.
    pub fn hello(&self) -> &ServerHello {
        &self.hello
    }

    /// Sends a request and waits for its response; deliveries that arrive
    /// meanwhile are kept for [`Connection::next_event`].
    pub async fn request(&mut self, body: Request) -> Result<Response, ClientError> {
        // The frame keeps the body, so that sending it again (patient)
        // copies nothing.
        let mut frame = ClientFrame { req: 0, body };
        let mut tries = 0;
        loop {
            let r = self.request_once(&mut frame).await;
            match &r {
                Err(ClientError::Server(e))
                    if self.patient
                        && e.code == sotto_proto::ErrorCode::RateLimited
                        && tries < PATIENT_TRIES =>
                {
                    let wait = Duration::from_millis(e.retry_after_ms.unwrap_or(1000));
                    if wait > PATIENT_WAIT {
                        return r;
                    }
                    tries += 1;
                    tokio::time::sleep(wait).await;
                }
                _ => return r,
            }
        }
    }

    /// Sends `frame` under the next request number and waits for its response.
    async fn request_once(&mut self, frame: &mut ClientFrame) -> Result<Response, ClientError> {
        let req = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        frame.req = req;
        let bytes = sotto_proto::encode_client(frame);
        self.send_raw(bytes).await?;
        let wait = async {
            loop {
                match read_frame(&mut self.ws).await? {
                    ServerFrame::Response { req: r, result } if r == req => {
                        return result.map_err(ClientError::Server);
                    }
                    ServerFrame::Response { .. } => {}
                    ServerFrame::Deliver(d) => self.events.push_back(Event::Deliver(d)),
                    ServerFrame::Synced => {
                        self.synced = true;
                        self.events.push_back(Event::Synced);
                    }
                    ServerFrame::Fatal(e) => return Err(ClientError::Server(e)),
                    ServerFrame::Hello(_) => {
                        return Err(ClientError::Malformed("unexpected hello".into()));
                    }
                }
            }
        };
        let result = timeout(REQUEST_TIMEOUT, wait)
            .await
            .map_err(|_| ClientError::Timeout)?;
        self.noticed(result)
    }

    /// A node that says it cannot serve is avoided by the next connection.
    fn noticed<T>(&self, r: Result<T, ClientError>) -> Result<T, ClientError> {
        if let Err(ClientError::Server(e)) = &r
            && e.code == sotto_proto::ErrorCode::Unavailable
        {
            self.link.avoid(self.node);
        }
        r
    }

    /// The next delivery or sync marker, waiting for the server to push one.
    /// Cancel-safe: dropping the future loses no event.
    pub async fn next_event(&mut self) -> Result<Event, ClientError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(e);
        }
        let r = self.next_pushed().await;
        self.noticed(r)
    }

    async fn next_pushed(&mut self) -> Result<Event, ClientError> {
        loop {
            match read_frame(&mut self.ws).await? {
                ServerFrame::Deliver(d) => return Ok(Event::Deliver(d)),
                ServerFrame::Synced => {
                    self.synced = true;
                    return Ok(Event::Synced);
                }
                ServerFrame::Fatal(e) => return Err(ClientError::Server(e)),
                ServerFrame::Response { .. } => {}
                ServerFrame::Hello(_) => {
                    return Err(ClientError::Malformed("unexpected hello".into()));
                }
            }
        }
    }

    /// Waits until an event is queued, without taking it. Cancel-safe.
    pub async fn wait_event(&mut self) -> Result<(), ClientError> {
        if self.events.is_empty() {
            let e = self.next_event().await?;
            self.events.push_front(e);
        }
        Ok(())
    }

    /// An event already received and queued, if any; never waits.
    pub fn queued_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The first queued delivery, taken if `take` says so (`None` if there
    /// is none or it is left); a sync marker stays where it is. Never waits.
    pub fn take_queued_delivery(
        &mut self,
        take: impl FnOnce(&Delivery) -> bool,
    ) -> Option<Delivery> {
        let at = self
            .events
            .iter()
            .position(|e| matches!(e, Event::Deliver(_)))?;
        match &self.events[at] {
            Event::Deliver(d) if take(d) => match self.events.remove(at) {
                Some(Event::Deliver(d)) => Some(d),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether the server said the backlog is delivered (after which
    /// deliveries are pushed live and no further sync marker comes).
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Sends raw bytes as one binary message, fragmented past
    /// [`sotto_proto::WS_FRAGMENT_BYTES`] as the protocol asks (tests use it
    /// to send garbage).
    pub async fn send_raw(&mut self, bytes: Vec<u8>) -> Result<(), ClientError> {
        timeout(REQUEST_TIMEOUT, send_fragmented(&mut self.ws, bytes))
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(|e| ClientError::Transport(e.to_string()))
    }

    /// Sends raw bytes as one WebSocket frame, however long (tests use it
    /// to break the protocol's fragment size).
    pub async fn send_unfragmented(&mut self, bytes: Vec<u8>) -> Result<(), ClientError> {
        timeout(REQUEST_TIMEOUT, self.ws.send(Message::Binary(bytes.into())))
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(|e| ClientError::Transport(e.to_string()))
    }

    /// Reads the next frame as it comes (tests use it to see `Fatal` frames).
    pub async fn read_frame(&mut self) -> Result<ServerFrame, ClientError> {
        read_frame(&mut self.ws).await
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        let _ = timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }
}

/// Sends `bytes` as one binary WebSocket message: one frame, or, past
/// [`sotto_proto::WS_FRAGMENT_BYTES`], a fragmented message of frames of
/// that size at most (the server refuses longer frames).
async fn send_fragmented(
    ws: &mut WebSocketStream<TlsStream<TcpStream>>,
    bytes: Vec<u8>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    if bytes.len() <= sotto_proto::WS_FRAGMENT_BYTES {
        return ws.send(Message::Binary(bytes.into())).await;
    }
    let bytes = Bytes::from(bytes);
    let mut opcode = OpCode::Data(Data::Binary);
    let mut pieces = sotto_proto::ws_fragments(bytes.len()).peekable();
    while let Some(piece) = pieces.next() {
        let last = pieces.peek().is_none();
        ws.feed(Message::Frame(Frame::message(
            bytes.slice(piece),
            opcode,
            last,
        )))
        .await?;
        opcode = OpCode::Data(Data::Continue);
    }
    ws.flush().await
}

async fn read_frame(
    ws: &mut WebSocketStream<TlsStream<TcpStream>>,
) -> Result<ServerFrame, ClientError> {
    loop {
        match ws.next().await {
            None => return Err(ClientError::Closed(String::new())),
            Some(Err(e)) => return Err(ClientError::Transport(e.to_string())),
            Some(Ok(Message::Binary(b))) => {
                return sotto_proto::decode_server(&b)
                    .map_err(|e| ClientError::Malformed(e.to_string()));
            }
            Some(Ok(Message::Close(c))) => {
                return Err(ClientError::Closed(
                    c.map(|c| format!(": {}", c.reason)).unwrap_or_default(),
                ));
            }
            Some(Ok(Message::Text(_))) => return Err(ClientError::Malformed("text frame".into())),
            Some(Ok(_)) => {}
        }
    }
}

/// A fresh random message id.
pub(crate) fn random_id() -> sotto_proto::MessageId {
    let mut b = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    sotto_proto::MessageId(b)
}

/// An answer the request does not expect.
pub(crate) fn unexpected(r: &Response) -> ClientError {
    ClientError::Malformed(format!("unexpected response {r:?}"))
}
