//! One client connection, the transport only: TLS, the WebSocket upgrade,
//! framing, deadlines, the request allowance, authentication state, and
//! mailbox delivery over the same socket (new mail handed over by the write
//! that stored it, or read from the mailbox). What each request means is the
//! business of [`crate::services`]. Every phase has a deadline; a decoding
//! error or too many protocol errors close the connection. The connection
//! task owns its socket and writes directly (with a write deadline), so a
//! client that stops reading is dropped instead of buffered for.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::RngCore;
use sotto_proto::{
    ClientFrame, Delivery, DeviceId, EncodedEnvelope, ErrorCode, PROTOCOL_VERSION, ProtoError,
    Request, Response, ServerFrame, ServerHello, Session,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as HttpRequest, Response as HttpResponse,
};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::bus::Bus;
use crate::limits::TokenBucket;
use crate::mailbox::FETCH_BATCH;
use crate::services::{Authed, Ctx};
use crate::shared::Shared;
use crate::store::Store;
use crate::watch::Watched;

/// What tungstenite reads at most per call, and the read buffer every
/// connection keeps from its start: a typical request fits; a larger frame
/// grows the buffer to its size (`WebSocketConfig::read_buffer_size`).
const READ_CHUNK: usize = 512;

fn ws_config() -> WebSocketConfig {
    // Small buffers per connection; messages capped near twice the
    // application maximum, frames at the fragment size both sides send
    // (tungstenite's defaults are 64 MiB / 16 MiB).
    WebSocketConfig::default()
        .read_buffer_size(READ_CHUNK)
        .write_buffer_size(0)
        .max_write_buffer_size(2 * sotto_proto::MAX_FRAME_BYTES)
        .max_message_size(Some(2 * sotto_proto::MAX_FRAME_BYTES))
        .max_frame_size(Some(sotto_proto::WS_FRAGMENT_BYTES))
}

/// Serves one TCP connection until it ends or the server stops.
pub(crate) async fn serve<S: Store, B: Bus>(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    shared: Arc<Shared<S, B>>,
    stop: watch::Receiver<bool>,
) {
    let limits = &shared.config.limits;
    // Counted against per-source quotas, never logged.
    let source = tcp
        .peer_addr()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    // Boxed, the handshake's state lives only while it runs: it is not part
    // of the future every idle connection keeps.
    let Some(ws) = Box::pin(handshake(tcp, acceptor, limits.handshake_timeout)).await else {
        return;
    };
    let mut challenge = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut challenge);
    let mut conn = Conn {
        ws,
        shared: shared.clone(),
        challenge,
        source,
        session: None,
        errors: 0,
        last_sent: 0,
        synced: false,
        pump_failed: None,
        bucket: TokenBucket::new(&shared.config.limits),
    };
    if let Err(e) = conn.run(stop).await {
        tracing::debug!(reason = %e, "connection closed");
    }
    let _ = Box::pin(conn.ws.close(None)).await;
}

/// TLS, then the WebSocket upgrade, each under `deadline`.
async fn handshake(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    deadline: Duration,
) -> Option<WebSocketStream<tokio_rustls::server::TlsStream<TcpStream>>> {
    let tls = timeout(deadline, acceptor.accept(tcp)).await.ok()?.ok()?;
    let upgrade =
        tokio_tungstenite::accept_hdr_async_with_config(tls, check_path, Some(ws_config()));
    timeout(deadline, upgrade).await.ok()?.ok()
}

/// The upgrade callback: only the protocol's path is served. (Its signature
/// is tungstenite's.)
#[allow(clippy::result_large_err)]
fn check_path(req: &HttpRequest, resp: HttpResponse) -> Result<HttpResponse, ErrorResponse> {
    if req.uri().path() == sotto_proto::WS_PATH {
        Ok(resp)
    } else {
        let mut e = ErrorResponse::new(Some("not found".into()));
        *e.status_mut() = StatusCode::NOT_FOUND;
        Err(e)
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum End {
    #[error("peer closed")]
    Closed,
    #[error("timeout: {0}")]
    Timeout(&'static str),
    #[error("transport: {0}")]
    Transport(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("shutdown")]
    Shutdown,
    #[error("store unavailable")]
    StoreUnavailable,
}

struct Conn<S, B, T> {
    ws: WebSocketStream<T>,
    shared: Arc<Shared<S, B>>,
    challenge: [u8; 32],
    /// The peer's address, for per-source quotas.
    source: std::net::IpAddr,
    session: Option<Session>,
    errors: u32,
    /// Highest mailbox sequence number sent on this connection.
    last_sent: u64,
    synced: bool,
    /// Since when mailbox reads fail (store unavailable): retry on a
    /// timer, and close after `store_outage_close`.
    pump_failed: Option<Instant>,
    /// This connection's request allowance.
    bucket: TokenBucket,
}

impl<S: Store, B: Bus, T: AsyncRead + AsyncWrite + Unpin> Conn<S, B, T> {
    /// Every future this loop awaits that is not the idle wait itself
    /// (the handshake, a request, a delivery, a ping) is boxed: an idle
    /// connection's task then keeps only what waiting takes, not the
    /// largest request handler's state (`an_idle_connection_task_is_small`).
    async fn run(&mut self, mut stop: watch::Receiver<bool>) -> Result<(), End> {
        let device = Box::pin(self.authenticate(&mut stop)).await?;

        // Subscribe before the first read of the mailbox so no notification is missed.
        let sub = Box::pin(self.shared.bus.subscribe(device)).await;
        // And watched through the store, in case the bus loses a wake-up.
        let watched = self.shared.watch.register(device);
        Box::pin(self.pump(device)).await?;
        let limits = &self.shared.config.limits;
        let (ping_interval, idle_timeout) = (limits.ping_interval, limits.idle_timeout);
        let mut ping = tokio::time::interval(ping_interval);
        ping.tick().await;
        let mut last_heard = Instant::now();
        loop {
            watched.delivered(self.last_sent);
            tokio::select! {
                m = self.ws.next() => {
                    last_heard = Instant::now();
                    Box::pin(self.received(m)).await?;
                }
                // Woken from another node, or told to look (revoked).
                () = sub.notified() => Box::pin(self.pump(device)).await?,
                // Handed new mail on this node, or woken by the store watch.
                () = watched.notified() => Box::pin(self.take_mail(device, &watched)).await?,
                // The store was unavailable at the last delivery attempt:
                // try again soon, not only at the next notification.
                () = retry_soon(self.pump_failed.is_some()) => Box::pin(self.pump(device)).await?,
                _ = ping.tick() => {
                    if last_heard.elapsed() > idle_timeout {
                        return Err(End::Timeout("idle"));
                    }
                    Box::pin(self.write_raw(Message::Ping(Vec::new().into()))).await?;
                }
                _ = stop.changed() => return Err(End::Shutdown),
            }
        }
    }

    /// The hello, then only Register, Login and Ping, under a deadline;
    /// the device logged in.
    async fn authenticate(&mut self, stop: &mut watch::Receiver<bool>) -> Result<DeviceId, End> {
        let hello = ServerFrame::Hello(ServerHello {
            versions: vec![PROTOCOL_VERSION],
            challenge: self.challenge,
            registration: self.shared.config.registration.policy(),
        });
        self.write(&hello).await?;
        let deadline = Instant::now() + self.shared.config.limits.auth_timeout;
        while self.session.is_none() {
            let msg = tokio::select! {
                m = self.ws.next() => m,
                () = tokio::time::sleep_until(deadline) => return Err(End::Timeout("authentication")),
                _ = stop.changed() => return Err(End::Shutdown),
            };
            self.received(msg).await?;
        }
        self.session
            .as_ref()
            .map(|s| s.device)
            .ok_or_else(|| End::Protocol("no session".into()))
    }

    /// Decodes and handles one WebSocket message.
    async fn received(
        &mut self,
        msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Result<(), End> {
        if let Some(f) = self.decode(msg).await? {
            self.handle(f).await?;
        }
        Ok(())
    }

    /// The frame in a WebSocket message; `None` for control messages.
    async fn decode(
        &mut self,
        msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Result<Option<ClientFrame>, End> {
        let bytes = match msg {
            None => return Err(End::Closed),
            Some(Err(e)) => {
                // Oversized messages and broken framing end up here.
                let fatal =
                    ProtoError::with_message(ErrorCode::TooLarge, "frame rejected by transport");
                let _ = self.write(&ServerFrame::Fatal(fatal)).await;
                return Err(End::Transport(e.to_string()));
            }
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Close(_))) => return Err(End::Closed),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                return Ok(None);
            }
            Some(Ok(Message::Text(_))) => {
                let fatal = ProtoError::with_message(
                    ErrorCode::Malformed,
                    "text frames are not part of the protocol",
                );
                self.write(&ServerFrame::Fatal(fatal)).await?;
                return Err(End::Protocol("text frame".into()));
            }
        };
        match sotto_proto::decode_client(&bytes) {
            Ok(f) => Ok(Some(f)),
            Err(e) => {
                let code = match e {
                    sotto_proto::DecodeError::TooLarge(_) => ErrorCode::TooLarge,
                    _ => ErrorCode::Malformed,
                };
                let fatal = ProtoError::with_message(code, e.to_string());
                self.write(&ServerFrame::Fatal(fatal)).await?;
                Err(End::Protocol(e.to_string()))
            }
        }
    }

    /// Sends a control message (a ping) under the write deadline.
    async fn write_raw(&mut self, m: Message) -> Result<(), End> {
        written(timeout(self.shared.config.limits.write_timeout, self.ws.send(m)).await)
    }

    /// Sends an encoded frame as one WebSocket message, fragmented past
    /// [`sotto_proto::WS_FRAGMENT_BYTES`], all of it under one write deadline.
    async fn write_bytes(&mut self, bytes: Vec<u8>) -> Result<(), End> {
        let limit = self.shared.config.limits.write_timeout;
        let sent = send_fragmented(&mut self.ws, &[], Bytes::from(bytes));
        written(timeout(limit, sent).await)
    }

    /// Sends the delivery of entry `seq`, `envelope` (shared with the
    /// other recipients), under one write deadline. Past the first
    /// fragment, its frames are slices of the shared envelope: a large
    /// message sent to many connections is not copied for each of them.
    async fn write_delivery(
        &mut self,
        seq: u64,
        envelope: &Arc<EncodedEnvelope>,
    ) -> Result<(), End> {
        let limit = self.shared.config.limits.write_timeout;
        let head = sotto_proto::delivery_head(seq);
        let body = Bytes::from_owner(SharedEnvelope(envelope.clone()));
        written(timeout(limit, send_fragmented(&mut self.ws, &head, body)).await)
    }

    async fn write(&mut self, f: &ServerFrame) -> Result<(), End> {
        self.write_bytes(sotto_proto::encode_server(f)).await
    }

    async fn respond(&mut self, req: u32, result: Result<Response, ProtoError>) -> Result<(), End> {
        if result.is_err() {
            self.errors += 1;
        }
        self.write(&ServerFrame::Response { req, result }).await?;
        if self.errors > self.shared.config.limits.max_protocol_errors && self.session.is_none() {
            return Err(End::Protocol(
                "too many errors before authentication".into(),
            ));
        }
        Ok(())
    }

    async fn handle(&mut self, f: ClientFrame) -> Result<(), End> {
        if !self.bucket.take(&self.shared.config.limits) {
            let e = ProtoError::new(ErrorCode::RateLimited).retry_after(1000);
            return self
                .write(&ServerFrame::Response {
                    req: f.req,
                    result: Err(e),
                })
                .await;
        }
        let kind = request_kind(&f.body);
        let started = Instant::now();
        let ctx = Ctx {
            shared: &self.shared,
            source: self.source,
            challenge: &self.challenge,
        };
        // Only a logged-in connection has a session, and only with one is
        // there an `Authed` to reach the handlers that need a device.
        let result = match (f.body, &self.session) {
            (Request::Ping, _) => Ok(Response::Pong {
                server_time_ms: ctx.now_ms(),
            }),
            // A lost handset's owner wipes it from any machine, without an account.
            (Request::WipeInfo { handle }, _) => ctx.wipe_info(handle).await,
            (Request::Wipe(w), _) => ctx.wipe(w, None).await,
            (Request::WipeWithWork { wipe, pow_nonce }, _) => ctx.wipe(wipe, Some(pow_nonce)).await,
            (Request::Register(r), None) => ctx.register(*r).await,
            (Request::Login(l), None) => ctx.login(l).await,
            (Request::AccountDeviceList { account, signature }, _) => {
                ctx.account_device_list(account, signature).await
            }
            (Request::Restore(r), None) => ctx.restore(*r).await,
            (Request::DirectoryInfo, _) => ctx.directory_info().await,
            (Request::DirectoryAudit { from, to }, _) => ctx.directory_audit(from, to).await,
            (Request::Register(_) | Request::Login(_) | Request::Restore(_), Some(_)) => Err(
                ProtoError::with_message(ErrorCode::InvalidRequest, "already authenticated"),
            ),
            (_, None) => Err(ProtoError::new(ErrorCode::NotAuthenticated)),
            (req, Some(session)) => Authed::new(ctx, session).handle(req).await,
        };
        if let Ok(Response::LoggedIn(s)) = &result {
            self.session = Some(s.clone());
        }
        let m = &self.shared.metrics;
        m.request_seconds
            .get_or_create(&vec![("kind", kind.to_owned())])
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            m.errors
                .get_or_create(&vec![("code", format!("{:?}", e.code))])
                .inc();
            if e.code == ErrorCode::Unavailable {
                m.store_unavailable.inc();
            }
        }
        // A device learns that its commit was applied only after every
        // delivery stored before the commit: it reads the messages of the
        // epoch its commit ends before it merges the commit (docs/PROTOCOL.md).
        if let (Ok(Response::Committed { .. }), Some(s)) = (&result, &self.session) {
            let device = s.device;
            self.pump(device).await?;
        }
        let auth_failed = matches!(&result, Err(e) if e.code == ErrorCode::AuthFailed);
        self.respond(f.req, result).await?;
        if auth_failed {
            // The challenge of this connection is spent; a new attempt needs a new connection.
            return Err(End::Protocol("authentication failed".into()));
        }
        Ok(())
    }

    /// Sends the entries this connection was handed ([`crate::watch`]) that
    /// follow what it sent, without reading them back from the store; reads
    /// its mailbox when told to, or when an entry would skip another.
    async fn take_mail(&mut self, device: DeviceId, watched: &Watched) -> Result<(), End> {
        let (offers, read) = watched.take();
        if read || !self.synced {
            // The read delivers every entry offered (each was written
            // before it was offered); and the first read (the backlog, then
            // `Synced`) comes before any offer.
            return self.pump(device).await;
        }
        let (send, behind) = crate::watch::plan(offers, self.last_sent);
        for o in send {
            self.last_sent = o.seq;
            self.write_delivery(o.seq, &o.envelope).await?;
            self.shared.metrics.deliveries.inc();
            self.shared.metrics.offered_deliveries.inc();
        }
        if behind {
            self.pump(device).await?;
        }
        Ok(())
    }

    /// Sends every mailbox entry after the last one sent. A device revoked
    /// meanwhile is told so and disconnected. Reads go through the node's
    /// [`crate::mailbox::MailboxReader`], with the other connections'.
    async fn pump(&mut self, device: DeviceId) -> Result<(), End> {
        loop {
            let now = self.shared.clock.now_ms();
            let batch = match self.shared.mailbox.read(device, self.last_sent, now).await {
                Ok(Some(b)) => b,
                Ok(None) => {
                    let e =
                        ProtoError::with_message(ErrorCode::AuthFailed, "this device was revoked");
                    let _ = self.write(&ServerFrame::Fatal(e)).await;
                    return Err(End::Protocol("device revoked".into()));
                }
                Err(e) => {
                    self.shared.metrics.store_failed("delivery", &e);
                    let since = *self.pump_failed.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.shared.config.store_outage_close {
                        // This node cannot deliver: the client moves on
                        // (to another node, through its link or balancer).
                        tracing::warn!(error = %e, "mailbox unreadable too long; closing");
                        let e = ProtoError::with_message(
                            ErrorCode::Unavailable,
                            "this node cannot reach its store",
                        )
                        .retry_after(1000);
                        let _ = self.write(&ServerFrame::Fatal(e)).await;
                        return Err(End::StoreUnavailable);
                    }
                    tracing::warn!(error = %e, "mailbox fetch failed; retrying");
                    return Ok(());
                }
            };
            self.pump_failed = None;
            let n = batch.len();
            for entry in batch {
                self.last_sent = entry.seq;
                self.write(&ServerFrame::Deliver(Delivery {
                    seq: entry.seq,
                    envelope: entry.envelope,
                }))
                .await?;
                self.shared.metrics.deliveries.inc();
            }
            if n < FETCH_BATCH as usize {
                break;
            }
        }
        if !self.synced {
            self.synced = true;
            self.write(&ServerFrame::Synced).await?;
        }
        Ok(())
    }
}

/// What a write under a deadline came to.
fn written(
    r: Result<Result<(), tokio_tungstenite::tungstenite::Error>, tokio::time::error::Elapsed>,
) -> Result<(), End> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(End::Transport(e.to_string())),
        Err(_) => Err(End::Timeout("write")),
    }
}

/// An envelope every recipient shares, as the bytes of WebSocket frames.
struct SharedEnvelope(Arc<EncodedEnvelope>);

impl AsRef<[u8]> for SharedEnvelope {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Sends `head` then `body` as one binary WebSocket message: one frame,
/// or, past [`sotto_proto::WS_FRAGMENT_BYTES`], a fragmented message of
/// frames of that size at most, each flushed before the next is made (so
/// the WebSocket's write buffer never holds more than one). Only the first
/// frame is copied (the head is a few bytes); the others are slices of
/// `body`.
async fn send_fragmented<T: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<T>,
    head: &[u8],
    body: Bytes,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let total = head.len() + body.len();
    let mut opcode = OpCode::Data(Data::Binary);
    let mut pieces = sotto_proto::ws_fragments(total).peekable();
    while let Some(piece) = pieces.next() {
        let last = pieces.peek().is_none();
        // The head is shorter than a piece: only the first has any of it.
        let payload = if piece.start < head.len() {
            let mut first = Vec::with_capacity(piece.len());
            first.extend_from_slice(&head[piece.start..]);
            first.extend_from_slice(&body[..piece.end - head.len()]);
            Bytes::from(first)
        } else {
            body.slice(piece.start - head.len()..piece.end - head.len())
        };
        let message = if piece.start == 0 && last {
            Message::Binary(payload)
        } else {
            Message::Frame(Frame::message(payload, opcode, last))
        };
        ws.send(message).await?;
        opcode = OpCode::Data(Data::Continue);
    }
    Ok(())
}

/// Completes after a second if `armed`, never otherwise.
async fn retry_soon(armed: bool) {
    if armed {
        tokio::time::sleep(Duration::from_secs(1)).await;
    } else {
        std::future::pending::<()>().await;
    }
}

/// A request's name in metrics.
fn request_kind(r: &Request) -> &'static str {
    match r {
        Request::Register(_) => "register",
        Request::Login(_) => "login",
        Request::UploadKeyPackages(_) => "upload_key_packages",
        Request::ClaimKeyPackages { .. } => "claim_key_packages",
        Request::Commit(_) => "commit",
        Request::Send(_) => "send",
        Request::Ack { .. } => "ack",
        Request::Ping => "ping",
        Request::PublishDeviceList(_) => "publish_device_list",
        Request::GetDeviceList { .. } => "get_device_list",
        Request::ClaimDeviceKeyPackage { .. } => "claim_device_key_package",
        Request::SendToDevice { .. } => "send_to_device",
        Request::SetKillCode(_) => "set_kill_code",
        Request::GetKillRecord => "get_kill_record",
        Request::WipeInfo { .. } => "wipe_info",
        Request::Wipe(_) => "wipe",
        Request::WipeDone => "wipe_done",
        Request::WipeWithWork { .. } => "wipe",
        Request::Block { .. } | Request::Unblock { .. } => "block",
        Request::Leave { .. } => "leave",
        Request::PutBlob(_) => "put_blob",
        Request::GetBlob { .. } => "get_blob",
        Request::BlobFetched { .. } => "blob_fetched",
        Request::Propose(_) => "propose",
        Request::GetGroupInfo { .. } => "group_info",
        Request::AccountDeviceList { .. } => "account_device_list",
        Request::Restore(_) => "restore",
        Request::DirectoryInfo => "directory_info",
        Request::DirectoryLookup { .. } => "directory_lookup",
        Request::DirectoryHistory { .. } => "directory_history",
        Request::DirectoryAudit { .. } => "directory_audit",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::LocalBus;
    use crate::bus::nats::NatsBus;
    use crate::store::postgres::PgStore;
    use crate::store::sqlite::SqliteStore;

    /// The size of what `f` returns: for an `async fn`, its future, which
    /// a connection's task keeps for as long as the connection lives.
    fn output_size<A, B, C, D, R>(_: fn(A, B, C, D) -> R) -> usize {
        size_of::<R>()
    }

    /// An idle connection's task holds its connection and what waiting
    /// for the next event takes, not the state of the handshake or of the
    /// largest request handler, which only a busy connection needs (they
    /// are boxed). The bound is what the connection's own state takes
    /// (TLS, WebSocket, session) plus a margin. Before the boxing, every
    /// connection's task took 10.6 KB (heaptrack, release build), more
    /// than any other part of an idle connection.
    #[test]
    fn an_idle_connection_task_is_small() {
        type Tls = tokio_rustls::server::TlsStream<TcpStream>;
        let conn = size_of::<Conn<SqliteStore, LocalBus, Tls>>();
        for task in [
            output_size(serve::<SqliteStore, LocalBus>),
            output_size(serve::<PgStore, NatsBus>),
        ] {
            eprintln!("connection {conn} bytes, its task {task} bytes");
            assert!(
                task <= conn + 2048,
                "a connection's task takes {task} bytes, its state {conn}"
            );
        }
    }
}
