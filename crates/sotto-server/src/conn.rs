//! One client connection: TLS, the WebSocket upgrade, authentication, then
//! requests and mailbox delivery over the same socket. Every phase has a
//! deadline; a decoding error or too many protocol errors close the
//! connection. The connection task owns its socket and writes directly
//! (with a write deadline), so a client that stops reading is dropped
//! instead of buffered for.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::{Signature as EdSignature, VerifyingKey};
use futures_util::{SinkExt, StreamExt};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sotto_proto::{
    ClaimedKeyPackage, ClaimedKeyPackages, ClientFrame, CommitRequest, Delivery, DeviceId,
    EnvelopeKind, ErrorCode, LoginRequest, MAX_ACKS_PER_FRAME, MAX_DEVICES_PER_ACCOUNT,
    MAX_HANDSHAKE_BYTES, MAX_KEY_PACKAGES_PER_UPLOAD, MAX_PAYLOAD_BYTES, PROTOCOL_VERSION,
    ProposeRequest, ProtoError, RegisterRequest, Request, Response, SendRequest, ServerFrame,
    ServerHello, Session, Signature, SignedDeviceList, UploadKeyPackages,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as HttpRequest, Response as HttpResponse,
};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::bus::Bus;
use crate::config::RegistrationMode;
use crate::datadir::invite_hash;
use crate::server::{Shared, now_ms};
use crate::store::{
    CommitError, CommitWrite, DeviceListError, MailboxCap, NewAccount, Outgoing, ProposalWrite,
    RegisterError, SendError, Store, StoreError, StoredKeyPackage,
};

/// How many mailbox entries are read per store call.
const FETCH_BATCH: u32 = 64;

fn ws_config() -> WebSocketConfig {
    // Small buffers per connection; messages capped near twice the
    // application maximum (tungstenite's defaults are 64 MiB / 16 MiB).
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(2 * sotto_proto::MAX_FRAME_BYTES)
        .max_message_size(Some(2 * sotto_proto::MAX_FRAME_BYTES))
        .max_frame_size(Some(2 * sotto_proto::MAX_FRAME_BYTES))
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
    let Ok(Ok(tls)) = timeout(limits.handshake_timeout, acceptor.accept(tcp)).await else {
        return;
    };
    let upgrade =
        tokio_tungstenite::accept_hdr_async_with_config(tls, check_path, Some(ws_config()));
    let Ok(Ok(ws)) = timeout(limits.handshake_timeout, upgrade).await else {
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
        pump_failed: false,
        tokens: shared.config.limits.request_burst,
        refilled: Instant::now(),
    };
    if let Err(e) = conn.run(stop).await {
        tracing::debug!(reason = %e, "connection closed");
    }
    let _ = conn.ws.close(None).await;
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
    /// The last mailbox read failed (store unavailable): retry on a timer.
    pump_failed: bool,
    tokens: f64,
    refilled: Instant,
}

fn store_error(e: &StoreError) -> ProtoError {
    match e {
        StoreError::Unavailable(_) => ProtoError::new(ErrorCode::Unavailable).retry_after(1000),
        StoreError::Internal(_) => ProtoError::new(ErrorCode::Internal),
    }
}

/// Whether a device list carries a valid signature of its account's key.
fn list_signed(l: &SignedDeviceList) -> bool {
    let t = sotto_proto::device_list_transcript(&l.account, l.version, &l.devices);
    verify(&l.account.0, &t, &l.signature)
}

fn verify(key: &[u8; 32], msg: &[u8], sig: &Signature) -> bool {
    let Ok(vk) = VerifyingKey::from_bytes(key) else {
        return false;
    };
    vk.verify_strict(msg, &EdSignature::from_bytes(&sig.0))
        .is_ok()
}

impl<S: Store, B: Bus, T: AsyncRead + AsyncWrite + Unpin> Conn<S, B, T> {
    async fn run(&mut self, mut stop: watch::Receiver<bool>) -> Result<(), End> {
        let hello = ServerFrame::Hello(ServerHello {
            versions: vec![PROTOCOL_VERSION],
            challenge: self.challenge,
            registration: self.shared.config.registration.policy(),
        });
        self.write(&hello).await?;

        // Authentication phase: only Register, Login and Ping, under a deadline.
        let deadline = Instant::now() + self.shared.config.limits.auth_timeout;
        while self.session.is_none() {
            let msg = tokio::select! {
                m = self.ws.next() => m,
                () = tokio::time::sleep_until(deadline) => return Err(End::Timeout("authentication")),
                _ = stop.changed() => return Err(End::Shutdown),
            };
            if let Some(f) = self.decode(msg).await? {
                self.handle(f).await?;
            }
        }
        let Some(device) = self.session.as_ref().map(|s| s.device) else {
            return Err(End::Protocol("no session".into()));
        };

        // Subscribe before the first read of the mailbox so no notification is missed.
        let sub = self.shared.bus.subscribe(device).await;
        self.pump(device).await?;
        let limits = self.shared.config.limits.clone();
        let mut ping = tokio::time::interval(limits.ping_interval);
        ping.tick().await;
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                m = self.ws.next() => {
                    last_heard = Instant::now();
                    if let Some(f) = self.decode(m).await? {
                        self.handle(f).await?;
                    }
                }
                () = sub.notified() => self.pump(device).await?,
                // The store was unavailable at the last delivery attempt:
                // try again soon, not only at the next notification.
                () = retry_soon(self.pump_failed) => self.pump(device).await?,
                _ = ping.tick() => {
                    if last_heard.elapsed() > limits.idle_timeout {
                        return Err(End::Timeout("idle"));
                    }
                    self.write_raw(Message::Ping(Vec::new().into())).await?;
                }
                _ = stop.changed() => return Err(End::Shutdown),
            }
        }
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

    async fn write_raw(&mut self, m: Message) -> Result<(), End> {
        match timeout(self.shared.config.limits.write_timeout, self.ws.send(m)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(End::Transport(e.to_string())),
            Err(_) => Err(End::Timeout("write")),
        }
    }

    async fn write(&mut self, f: &ServerFrame) -> Result<(), End> {
        self.write_raw(Message::Binary(sotto_proto::encode_server(f).into()))
            .await
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

    fn take_token(&mut self) -> bool {
        let l = &self.shared.config.limits;
        let now = Instant::now();
        let dt = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + dt * l.requests_per_second).min(l.request_burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    async fn handle(&mut self, f: ClientFrame) -> Result<(), End> {
        if !self.take_token() {
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
        let result = match (f.body, self.session.is_some()) {
            (Request::Ping, _) => Ok(Response::Pong {
                server_time_ms: now_ms(),
            }),
            // A lost handset's owner wipes it from any machine, without an account.
            (Request::WipeInfo { handle }, _) => self.wipe_info(handle).await,
            (Request::Wipe(w), _) => self.wipe(w, None).await,
            (Request::WipeWithWork { wipe, pow_nonce }, _) => {
                self.wipe(wipe, Some(pow_nonce)).await
            }
            (Request::Register(r), false) => self.register(*r).await,
            (Request::Login(l), false) => self.login(l).await,
            (Request::Register(_) | Request::Login(_), true) => Err(ProtoError::with_message(
                ErrorCode::InvalidRequest,
                "already authenticated",
            )),
            (_, false) => Err(ProtoError::new(ErrorCode::NotAuthenticated)),
            (Request::UploadKeyPackages(u), true) => self.upload(u).await,
            (Request::ClaimKeyPackages { handle }, true) => self.claim(handle).await,
            (Request::Commit(c), true) => self.commit(c).await,
            (Request::Send(s), true) => self.send(s).await,
            (Request::Ack { seqs }, true) => self.ack(seqs).await,
            (Request::PublishDeviceList(l), true) => self.publish_devices(l).await,
            (Request::GetDeviceList { account }, true) => self.get_devices(account).await,
            (Request::ClaimDeviceKeyPackage { device }, true) => self.claim_device(device).await,
            (
                Request::SendToDevice {
                    device,
                    msg_id,
                    payload,
                },
                true,
            ) => self.send_to_device(device, msg_id, payload).await,
            (Request::SetKillCode(r), true) => self.set_kill_code(r).await,
            (Request::GetKillRecord, true) => self.get_kill_record().await,
            (Request::WipeDone, true) => self.wipe_done().await,
            (Request::PutBlob(b), true) => self.put_blob(b).await,
            (Request::GetBlob { blob, offset }, true) => self.get_blob(blob, offset).await,
            (Request::BlobFetched { blob }, true) => self.blob_fetched(blob).await,
            (Request::Propose(p), true) => self.propose(p).await,
            (Request::GetGroupInfo { group }, true) => self.group_info(group).await,
            (Request::Block { account }, true) => self.block(account, true).await,
            (Request::Unblock { account }, true) => self.block(account, false).await,
            (Request::Leave { group }, true) => self.leave(group).await,
        };
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

    fn device(&self) -> Result<DeviceId, ProtoError> {
        self.session
            .as_ref()
            .map(|s| s.device)
            .ok_or_else(|| ProtoError::new(ErrorCode::NotAuthenticated))
    }

    async fn register(&mut self, r: RegisterRequest) -> Result<Response, ProtoError> {
        if r.version != PROTOCOL_VERSION {
            return Err(ProtoError::new(ErrorCode::UnsupportedVersion));
        }
        let invite_hash = r.invite.as_deref().map(invite_hash);
        match self.shared.config.registration {
            RegistrationMode::InviteOnly if invite_hash.is_none() => {
                return Err(ProtoError::new(ErrorCode::InviteRequired));
            }
            RegistrationMode::Open { pow_bits } if invite_hash.is_none() => {
                let ok = r.pow_nonce.is_some_and(|n| {
                    sotto_proto::pow::verify(&self.challenge, r.handle.as_str(), n, pow_bits)
                });
                if !ok {
                    return Err(ProtoError::new(ErrorCode::ProofOfWorkInvalid));
                }
            }
            _ => {}
        }
        let t = sotto_proto::register_transcript(&self.challenge, &r.handle, &r.account, &r.device);
        if !verify(&r.account.0, &t, &r.account_signature)
            || !verify(&r.device.0, &t, &r.device_signature)
        {
            return Err(ProtoError::new(ErrorCode::AuthFailed));
        }
        // Every attempt that reaches the store counts, taken handles too,
        // so registration is no cheap oracle for which handles exist.
        self.shared.sources.registrations.check(
            self.source,
            &self.shared.config.limits.registrations_per_source,
            true,
        )?;
        let res = self
            .shared
            .store
            .register(NewAccount {
                handle: r.handle.clone(),
                account: r.account,
                device: r.device,
                invite_hash,
                now_ms: now_ms(),
                device_list: r.device_list.clone(),
            })
            .await;
        match res {
            Ok(()) => {}
            Err(RegisterError::InvalidInvite) => {
                return Err(ProtoError::new(ErrorCode::InvalidInvite));
            }
            Err(RegisterError::HandleTaken) => return Err(ProtoError::new(ErrorCode::HandleTaken)),
            Err(RegisterError::AlreadyRegistered) => {
                return Err(ProtoError::with_message(
                    ErrorCode::InvalidRequest,
                    "keys already registered",
                ));
            }
            Err(RegisterError::Store(e)) => return Err(self.log_store(&e)),
        }
        let s = Session {
            account: r.account,
            device: r.device,
            handle: r.handle,
            key_packages: 0,
            has_last_resort: false,
            kill_record_version: 0,
        };
        self.session = Some(s.clone());
        Ok(Response::LoggedIn(s))
    }

    fn log_store(&self, e: &StoreError) -> ProtoError {
        match e {
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "store unavailable; client told to retry");
            }
            StoreError::Internal(_) => tracing::error!(error = %e, "store operation failed"),
        }
        store_error(e)
    }

    async fn login(&mut self, l: LoginRequest) -> Result<Response, ProtoError> {
        if l.version != PROTOCOL_VERSION {
            return Err(ProtoError::new(ErrorCode::UnsupportedVersion));
        }
        // Fail closed: a source that failed too often waits, even with a
        // valid signature.
        let quota = self.shared.config.limits.login_failures_per_source;
        let failures = &self.shared.sources.login_failures;
        failures.check(self.source, &quota, false)?;
        let rec = self
            .shared
            .store
            .device(l.device)
            .await
            .map_err(|e| self.log_store(&e))?;
        let t = sotto_proto::login_transcript(&self.challenge, &l.device);
        // Unknown device, revoked device and bad signature look the same.
        let sig_ok = verify(&l.device.0, &t, &l.signature);
        let Some(rec) = rec.filter(|r| !r.revoked && sig_ok) else {
            let _ = failures.check(self.source, &quota, true);
            return Err(ProtoError::new(ErrorCode::AuthFailed));
        };
        let stock = self
            .shared
            .store
            .key_package_stock(l.device)
            .await
            .map_err(|e| self.log_store(&e))?;
        let kill = self
            .shared
            .store
            .kill_record(rec.account)
            .await
            .map_err(|e| self.log_store(&e))?;
        let s = Session {
            account: rec.account,
            device: l.device,
            handle: rec.handle,
            key_packages: stock.one_time,
            has_last_resort: stock.last_resort,
            kill_record_version: kill.map_or(0, |k| k.version),
        };
        self.session = Some(s.clone());
        Ok(Response::LoggedIn(s))
    }

    async fn upload(&mut self, u: UploadKeyPackages) -> Result<Response, ProtoError> {
        let device = self.device()?;
        let limits = &self.shared.config.limits;
        if u.key_packages.len() > MAX_KEY_PACKAGES_PER_UPLOAD {
            return Err(ProtoError::with_message(
                ErrorCode::TooLarge,
                "too many key packages",
            ));
        }
        let all = u.key_packages.iter().chain(u.last_resort.iter());
        if all
            .clone()
            .any(|kp| kp.0.len() > limits.max_key_package_bytes || kp.0.is_empty())
        {
            return Err(ProtoError::with_message(
                ErrorCode::TooLarge,
                "key package too large",
            ));
        }
        let conv = |b: sotto_proto::Blob| StoredKeyPackage {
            hash: Sha256::digest(&b.0).into(),
            data: b.0,
        };
        let one_time = u.key_packages.into_iter().map(conv).collect();
        let last_resort = u.last_resort.map(conv);
        let stock = self
            .shared
            .store
            .upload_key_packages(device, one_time, last_resort, limits.max_key_packages)
            .await
            .map_err(|e| self.log_store(&e))?;
        Ok(Response::KeyPackagesStored {
            available: stock.one_time,
        })
    }

    /// Counts a KeyPackage claim; `Err` when the claimer used up its window,
    /// in total or for this target (fail closed: the claim is refused).
    fn claim_allowed(
        &self,
        claimer: DeviceId,
        target: &sotto_proto::Handle,
    ) -> Result<(), ProtoError> {
        let l = &self.shared.config.limits;
        let mut c = self.shared.claims.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let start = *c.window_start.get_or_insert(now);
        if now.duration_since(start) > l.claim_window {
            *c = crate::server::Claims {
                window_start: Some(now),
                ..Default::default()
            };
        }
        let left = l
            .claim_window
            .saturating_sub(now.duration_since(c.window_start.unwrap_or(now)));
        let retry = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
        let total = c.per_claimer.get(&claimer).copied().unwrap_or(0);
        let pair = c
            .per_pair
            .get(&(claimer, target.clone()))
            .copied()
            .unwrap_or(0);
        if total >= l.claims_per_claimer || pair >= l.claims_per_target {
            return Err(ProtoError::with_message(
                ErrorCode::RateLimited,
                "too many key package claims",
            )
            .retry_after(retry));
        }
        *c.per_claimer.entry(claimer).or_insert(0) += 1;
        *c.per_pair.entry((claimer, target.clone())).or_insert(0) += 1;
        Ok(())
    }

    /// Counts a lookup by handle or account against the source's quota.
    fn lookup_allowed(&self) -> Result<(), ProtoError> {
        self.shared.sources.lookups.check(
            self.source,
            &self.shared.config.limits.lookups_per_source,
            true,
        )
    }

    /// The cap of every recipient's mailbox.
    fn mailbox_cap(&self) -> MailboxCap {
        let l = &self.shared.config.limits;
        MailboxCap {
            messages: l.mailbox_max_messages,
            bytes: l.mailbox_max_bytes,
        }
    }

    async fn claim(&mut self, handle: sotto_proto::Handle) -> Result<Response, ProtoError> {
        let claimer = self.device()?;
        self.lookup_allowed()?;
        self.claim_allowed(claimer, &handle)?;
        // Someone who blocked this account is, to it, a handle without an
        // account: no KeyPackage to add them with.
        let account = self.account()?;
        if self
            .shared
            .store
            .blocked_by(handle.clone(), account)
            .await
            .map_err(|e| self.log_store(&e))?
        {
            return Err(ProtoError::new(ErrorCode::UnknownHandle));
        }
        let got = self
            .shared
            .store
            .claim_key_packages(handle)
            .await
            .map_err(|e| self.log_store(&e))?;
        let Some((account, claimed)) = got else {
            return Err(ProtoError::new(ErrorCode::UnknownHandle));
        };
        if claimed.is_empty() {
            return Err(ProtoError::new(ErrorCode::NoKeyPackages));
        }
        self.key_packages(account, claimed).await
    }

    /// Claimed KeyPackages with the account's signed device list.
    async fn key_packages(
        &self,
        account: sotto_proto::AccountId,
        claimed: Vec<crate::store::Claimed>,
    ) -> Result<Response, ProtoError> {
        let device_list = self
            .shared
            .store
            .device_list(account)
            .await
            .map_err(|e| self.log_store(&e))?
            .ok_or_else(|| ProtoError::new(ErrorCode::Internal))?;
        Ok(Response::KeyPackages(ClaimedKeyPackages {
            device_list,
            account,
            devices: claimed
                .into_iter()
                .map(|c| ClaimedKeyPackage {
                    device: c.device,
                    key_package: sotto_proto::Blob(c.data),
                    last_resort: c.last_resort,
                })
                .collect(),
        }))
    }

    fn outgoing(
        &self,
        c: &CommitRequest,
        kind: EnvelopeKind,
        payload: Vec<u8>,
        sender: DeviceId,
    ) -> Outgoing {
        let now = now_ms();
        Outgoing {
            group: c.group,
            sender,
            msg_id: c.msg_id,
            kind,
            payload,
            now_ms: now,
            expires_ms: now.saturating_add(ttl_ms(&self.shared.config.mailbox_ttl)),
            epoch: None,
        }
    }

    /// A commit, checked against the group's public state
    /// (`sotto_core::public`) before the store applies it with a
    /// compare-and-set on the epoch: the server accepts only commits every
    /// member will apply, and routes to the members the tree names.
    async fn commit(&mut self, mut c: CommitRequest) -> Result<Response, ProtoError> {
        let device = self.device()?;
        let too_big = [
            Some(&c.commit),
            Some(&c.group_info),
            c.welcome.as_ref(),
            c.base.as_ref(),
        ]
        .into_iter()
        .flatten()
        .any(|b| b.0.len() > MAX_HANDSHAKE_BYTES);
        if too_big {
            return Err(ProtoError::new(ErrorCode::TooLarge));
        }
        // A repeat of a commit whose answer was lost: its epoch, nothing else.
        match self.shared.store.applied_commit(device, c.msg_id).await {
            Ok(Some(epoch)) => return Ok(Response::Committed { epoch }),
            Ok(None) => {}
            Err(e) => return Err(self.log_store(&e)),
        }
        let held = match self.shared.store.group_state(c.group).await {
            Ok(h) => h,
            Err(e) => return Err(self.log_store(&e)),
        };
        match &held {
            Some(h) if h.epoch != c.epoch => {
                return Err(ProtoError::new(ErrorCode::StaleEpoch { current: h.epoch }));
            }
            None if c.epoch != 0 => {
                return Err(ProtoError::with_message(
                    ErrorCode::NotMember,
                    "the server holds no such conversation",
                ));
            }
            _ => {}
        }
        let (group, welcome) = (c.group, c.welcome.is_some());
        // The bytes go to the check and come back for the store (a commit
        // or GroupInfo may be megabytes: not copied).
        let commit = std::mem::take(&mut c.commit.0);
        let group_info = std::mem::take(&mut c.group_info.0);
        let base = c.base.take();
        let (accepted, commit, group_info) = tokio::task::spawn_blocking(move || {
            let crypto = openmls_libcrux_crypto::CryptoProvider::new()
                .map_err(|e| sotto_core::CoreError::Internal(format!("{e:?}")))?;
            let held = held.as_ref().map(|h| sotto_core::public::Held {
                state: &h.state,
                proposals: &h.proposals,
            });
            sotto_core::public::check_commit(
                &crypto,
                &group,
                device,
                held,
                base.as_ref().map(|b| b.0.as_slice()),
                &commit,
                &group_info,
                welcome,
            )
            .map(|a| (a, commit, group_info))
        })
        .await
        .map_err(|_| ProtoError::new(ErrorCode::Internal))?
        .map_err(refused)?;
        if accepted.members.len() > self.shared.config.limits.max_group_devices {
            return Err(ProtoError::new(ErrorCode::TooLarge));
        }
        let welcome = c.welcome.take();
        let w = CommitWrite {
            state: accepted.state,
            group_info,
            commit: Some(self.outgoing(&c, EnvelopeKind::Commit, commit, device)),
            welcome: welcome.map(|w| self.outgoing(&c, EnvelopeKind::Welcome, w.0, device)),
            welcome_recipients: accepted.added,
            group: c.group,
            sender: device,
            epoch: c.epoch,
            members: accepted.members,
            mailbox_cap: self.mailbox_cap(),
            msg_id: c.msg_id,
            expires_ms: now_ms().saturating_add(ttl_ms(&self.shared.config.mailbox_ttl)),
        };
        match self.shared.store.commit(w).await {
            Ok(out) => {
                self.shared.bus.publish(&out.recipients);
                self.shared.metrics.messages_accepted.inc();
                Ok(Response::Committed { epoch: out.epoch })
            }
            Err(e) => Err(self.commit_error(e)),
        }
    }

    /// The answer to a commit or proposal the store did not apply.
    fn commit_error(&self, e: CommitError) -> ProtoError {
        match e {
            CommitError::StaleEpoch(current) => ProtoError::new(ErrorCode::StaleEpoch { current }),
            CommitError::NotMember => ProtoError::new(ErrorCode::NotMember),
            CommitError::MailboxFull => ProtoError::new(ErrorCode::MailboxFull).retry_after(60_000),
            CommitError::Store(e) => self.log_store(&e),
        }
    }

    /// A member's proposal (its own leave), checked like a commit, queued
    /// for the epoch's next commit and delivered to the other members.
    async fn propose(&mut self, p: ProposeRequest) -> Result<Response, ProtoError> {
        let device = self.device()?;
        if p.proposal.0.len() > MAX_PAYLOAD_BYTES {
            return Err(ProtoError::new(ErrorCode::TooLarge));
        }
        let held = match self.shared.store.group_state(p.group).await {
            Ok(Some(h)) => h,
            Ok(None) => return Err(ProtoError::new(ErrorCode::NotMember)),
            Err(e) => return Err(self.log_store(&e)),
        };
        let epoch = held.epoch;
        let (group, proposal) = (p.group, p.proposal.0.clone());
        tokio::task::spawn_blocking(move || {
            let crypto = openmls_libcrux_crypto::CryptoProvider::new()
                .map_err(|e| sotto_core::CoreError::Internal(format!("{e:?}")))?;
            let held = sotto_core::public::Held {
                state: &held.state,
                proposals: &held.proposals,
            };
            sotto_core::public::check_proposal(&crypto, &group, device, held, &proposal)
        })
        .await
        .map_err(|_| ProtoError::new(ErrorCode::Internal))?
        .map_err(refused)?;
        let now = now_ms();
        let w = ProposalWrite {
            message: Outgoing {
                group: p.group,
                sender: device,
                msg_id: p.msg_id,
                kind: EnvelopeKind::Proposal,
                payload: p.proposal.0,
                now_ms: now,
                expires_ms: now.saturating_add(ttl_ms(&self.shared.config.mailbox_ttl)),
                epoch: None,
            },
            epoch,
            mailbox_cap: self.mailbox_cap(),
        };
        match self.shared.store.propose(w).await {
            Ok(out) => {
                self.shared.bus.publish(&out.recipients);
                self.shared.metrics.messages_accepted.inc();
                Ok(Response::Accepted {
                    duplicate: out.duplicate,
                })
            }
            Err(e) => Err(self.commit_error(e)),
        }
    }

    /// The GroupInfo and ratchet tree of a group, for one of its member
    /// devices that lost its state and rejoins by external commit.
    async fn group_info(&mut self, group: sotto_proto::GroupId) -> Result<Response, ProtoError> {
        let device = self.device()?;
        let held = match self.shared.store.group_state(group).await {
            Ok(Some(h)) => h,
            Ok(None) => return Err(ProtoError::new(ErrorCode::NotMember)),
            Err(e) => return Err(self.log_store(&e)),
        };
        let (epoch, group_info) = (held.epoch, held.group_info.clone());
        let tree = tokio::task::spawn_blocking(move || {
            sotto_core::public::ratchet_tree_for(&group, &held.state, device)
        })
        .await
        .map_err(|_| ProtoError::new(ErrorCode::Internal))?
        .map_err(|e| {
            tracing::error!(error = %e, "a stored group state does not load");
            ProtoError::new(ErrorCode::Internal)
        })?;
        let Some(ratchet_tree) = tree else {
            return Err(ProtoError::new(ErrorCode::NotMember));
        };
        Ok(Response::GroupInfo {
            epoch,
            group_info: sotto_proto::Blob(group_info),
            ratchet_tree: sotto_proto::Blob(ratchet_tree),
        })
    }

    async fn send(&mut self, s: SendRequest) -> Result<Response, ProtoError> {
        let device = self.device()?;
        if s.payload.0.len() > MAX_PAYLOAD_BYTES {
            return Err(ProtoError::new(ErrorCode::TooLarge));
        }
        // Only an MLS application message of this group, and only in the
        // group's current epoch (checked by the store as it stores it): a
        // member meets it before the commit that ends its epoch.
        let Some(epoch) = sotto_core::public::application_epoch(&s.group, &s.payload.0) else {
            return Err(ProtoError::with_message(
                ErrorCode::InvalidRequest,
                "not an MLS application message of this group",
            ));
        };
        let now = now_ms();
        let ttl = ttl_ms(&self.shared.config.mailbox_ttl).min(s.ttl_ms.unwrap_or(u64::MAX));
        let m = Outgoing {
            group: s.group,
            sender: device,
            msg_id: s.msg_id,
            kind: EnvelopeKind::Application,
            payload: s.payload.0,
            now_ms: now,
            expires_ms: now.saturating_add(ttl),
            epoch: Some(epoch),
        };
        match self.shared.store.send(m, self.mailbox_cap()).await {
            Ok(out) => {
                self.shared.bus.publish(&out.recipients);
                self.shared.metrics.messages_accepted.inc();
                Ok(Response::Accepted {
                    duplicate: out.duplicate,
                })
            }
            Err(SendError::NotMember) => Err(ProtoError::new(ErrorCode::NotMember)),
            // Counted with the other errors, by code (`request_errors`).
            Err(SendError::StaleEpoch(current)) => {
                Err(ProtoError::new(ErrorCode::StaleEpoch { current }))
            }
            Err(SendError::MailboxFull) => {
                Err(ProtoError::new(ErrorCode::MailboxFull).retry_after(60_000))
            }
            Err(SendError::Store(e)) => Err(self.log_store(&e)),
        }
    }

    fn account(&self) -> Result<sotto_proto::AccountId, ProtoError> {
        self.session
            .as_ref()
            .map(|s| s.account)
            .ok_or_else(|| ProtoError::new(ErrorCode::NotAuthenticated))
    }

    async fn publish_devices(&mut self, l: SignedDeviceList) -> Result<Response, ProtoError> {
        let device = self.device()?;
        let account = self.account()?;
        let mut unique = l.devices.clone();
        unique.sort();
        unique.dedup();
        let ok = l.account == account
            && l.devices.contains(&device)
            && unique.len() == l.devices.len()
            && l.devices.len() <= MAX_DEVICES_PER_ACCOUNT
            && list_signed(&l);
        if !ok {
            return Err(ProtoError::with_message(
                ErrorCode::InvalidRequest,
                "a device list must be signed by the account, name this device, and hold at most 16 distinct devices",
            ));
        }
        let version = l.version;
        match self.shared.store.publish_device_list(l, now_ms()).await {
            Ok(change) => {
                // Revoked devices' connections wake up and find themselves revoked.
                self.shared.bus.publish(&change.revoked);
                Ok(Response::DeviceListStored { version })
            }
            Err(DeviceListError::Stale(v)) => Err(ProtoError::with_message(
                ErrorCode::InvalidRequest,
                format!("device list version {version} is not newer than {v}"),
            )),
            Err(DeviceListError::ForeignDevice) => Err(ProtoError::with_message(
                ErrorCode::InvalidRequest,
                "a listed device belongs to another account",
            )),
            Err(DeviceListError::Store(e)) => Err(self.log_store(&e)),
        }
    }

    async fn get_devices(
        &mut self,
        account: sotto_proto::AccountId,
    ) -> Result<Response, ProtoError> {
        // Reading one's own list is no lookup of anyone.
        if account != self.account()? {
            self.lookup_allowed()?;
        }
        match self.shared.store.device_list(account).await {
            Ok(Some(l)) => Ok(Response::DeviceList(l)),
            Ok(None) => Err(ProtoError::new(ErrorCode::UnknownAccount)),
            Err(e) => Err(self.log_store(&e)),
        }
    }

    /// A device of the caller's own account, live.
    async fn own_device(&self, device: DeviceId) -> Result<(), ProtoError> {
        let account = self.account()?;
        match self.shared.store.device(device).await {
            Ok(Some(r)) if r.account == account && !r.revoked => Ok(()),
            Ok(_) => Err(ProtoError::new(ErrorCode::UnknownAccount)),
            Err(e) => Err(self.log_store(&e)),
        }
    }

    async fn claim_device(&mut self, device: DeviceId) -> Result<Response, ProtoError> {
        self.own_device(device).await?;
        let account = self.account()?;
        let claimed = self
            .shared
            .store
            .claim_device_key_package(device)
            .await
            .map_err(|e| self.log_store(&e))?
            .ok_or_else(|| ProtoError::new(ErrorCode::NoKeyPackages))?;
        self.key_packages(account, vec![claimed]).await
    }

    async fn send_to_device(
        &mut self,
        target: DeviceId,
        msg_id: sotto_proto::MessageId,
        payload: sotto_proto::Blob,
    ) -> Result<Response, ProtoError> {
        let sender = self.device()?;
        if payload.0.len() > MAX_PAYLOAD_BYTES {
            return Err(ProtoError::new(ErrorCode::TooLarge));
        }
        self.own_device(target).await?;
        let now = now_ms();
        let m = Outgoing {
            group: sotto_proto::GroupId([0; 32]),
            sender,
            msg_id,
            kind: EnvelopeKind::Device,
            payload: payload.0,
            now_ms: now,
            expires_ms: now.saturating_add(ttl_ms(&self.shared.config.mailbox_ttl)),
            epoch: None,
        };
        match self
            .shared
            .store
            .send_to_device(m, target, self.mailbox_cap())
            .await
        {
            Ok(out) => {
                self.shared.bus.publish(&out.recipients);
                self.shared.metrics.messages_accepted.inc();
                Ok(Response::Accepted {
                    duplicate: out.duplicate,
                })
            }
            Err(SendError::MailboxFull) => {
                Err(ProtoError::new(ErrorCode::MailboxFull).retry_after(60_000))
            }
            Err(SendError::NotMember) => Err(ProtoError::new(ErrorCode::UnknownAccount)),
            // Device messages name no epoch.
            Err(SendError::StaleEpoch(_)) => Err(ProtoError::new(ErrorCode::Internal)),
            Err(SendError::Store(e)) => Err(self.log_store(&e)),
        }
    }

    async fn set_kill_code(
        &mut self,
        r: sotto_proto::SignedKillRecord,
    ) -> Result<Response, ProtoError> {
        let account = self.account()?;
        let t = sotto_proto::kill_record_transcript(&r);
        if r.account != account
            || !verify(&account.0, &t, &r.signature)
            || r.devices.len() > MAX_DEVICES_PER_ACCOUNT
        {
            return Err(ProtoError::with_message(
                ErrorCode::InvalidRequest,
                "a kill-code record must be signed by the account",
            ));
        }
        match self.shared.store.set_kill_record(r).await {
            Ok(true) => Ok(Response::KillCodeStored),
            Ok(false) => Err(ProtoError::with_message(
                ErrorCode::InvalidRequest,
                "a newer kill code is set",
            )),
            Err(e) => Err(self.log_store(&e)),
        }
    }

    async fn get_kill_record(&mut self) -> Result<Response, ProtoError> {
        let account = self.account()?;
        let r = self
            .shared
            .store
            .kill_record(account)
            .await
            .map_err(|e| self.log_store(&e))?;
        Ok(Response::KillRecord(r))
    }

    async fn wipe_info(&mut self, handle: sotto_proto::Handle) -> Result<Response, ProtoError> {
        self.lookup_allowed()?;
        let target = self
            .shared
            .store
            .wipe_target(handle.clone())
            .await
            .map_err(|e| self.log_store(&e))?;
        let real = target.and_then(|t| t.record.map(|r| (r, t.devices)));
        Ok(match real {
            Some((r, live)) => Response::WipeInfo {
                server_salt: r.server_salt,
                devices: r
                    .devices
                    .iter()
                    .filter(|d| live.contains(&d.device))
                    .map(|d| (d.device, d.salt))
                    .collect(),
            },
            // Same shape for an unknown account or one without a kill code:
            // salts derived from the handle, stable across calls.
            None => {
                let h = |tag: &[u8]| -> [u8; 32] {
                    let mut d = Sha256::new();
                    d.update(b"sotto-wipe-decoy");
                    d.update(tag);
                    d.update(handle.as_str().as_bytes());
                    d.finalize().into()
                };
                let mut salt = [0u8; 16];
                salt.copy_from_slice(&h(b"server")[..16]);
                let mut dsalt = [0u8; 16];
                dsalt.copy_from_slice(&h(b"device")[..16]);
                Response::WipeInfo {
                    server_salt: salt,
                    devices: vec![(DeviceId(h(b"id")), dsalt)],
                }
            }
        })
    }

    /// The store keys of the kill-code guesses at `account`: the account's
    /// own (every source), and this source's (an IPv4 address, an IPv6 /64,
    /// which one holder has whole). Hashed: the store keeps no address.
    fn guess_keys(&self, account: &sotto_proto::AccountId) -> ([u8; 32], [u8; 32]) {
        let whole = Sha256::new()
            .chain_update(b"sotto-kill-guesses-account-v1\0")
            .chain_update(account.0)
            .finalize()
            .into();
        let prefix: Vec<u8> = match self.source {
            std::net::IpAddr::V4(a) => a.octets().to_vec(),
            std::net::IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => v4.octets().to_vec(),
                None => a.octets()[..8].to_vec(),
            },
        };
        let source = Sha256::new()
            .chain_update(b"sotto-kill-guesses-source-v1\0")
            .chain_update(account.0)
            .chain_update(&prefix)
            .finalize()
            .into();
        (whole, source)
    }

    /// Whether a kill-code guess at `account` may be checked: this source
    /// has wrong guesses left (fail closed, for this source only), and once
    /// the account drew its allowance of wrong guesses from anyone, the
    /// guess carries a proof of work. The right code from another source
    /// is never refused, only made to cost the work.
    async fn guess_allowed(
        &self,
        account: &sotto_proto::AccountId,
        w: &sotto_proto::WipeRequest,
        pow_nonce: Option<u64>,
    ) -> Result<(), ProtoError> {
        let limits = &self.shared.config.limits;
        let (whole, source) = self.guess_keys(account);
        let now = now_ms();
        let store = &self.shared.store;
        let mine = store
            .kill_guesses(source, now)
            .await
            .map_err(|e| self.log_store(&e))?;
        if mine.failures >= limits.kill_code_guesses {
            return Err(ProtoError::with_message(
                ErrorCode::RateLimited,
                "too many wrong kill codes",
            )
            .retry_after(mine.until_ms.saturating_sub(now).max(1)));
        }
        let all = store
            .kill_guesses(whole, now)
            .await
            .map_err(|e| self.log_store(&e))?;
        if all.failures >= limits.kill_code_guesses {
            let bits = limits.kill_code_pow_bits;
            let worked = pow_nonce.is_some_and(|n| {
                sotto_proto::pow::verify_wipe(
                    &self.challenge,
                    w.handle.as_str(),
                    &w.server_proof,
                    n,
                    bits,
                )
            });
            if !worked {
                return Err(ProtoError::with_message(
                    ErrorCode::ProofOfWorkRequired { bits },
                    "this account drew many wrong kill codes: a proof of work is required",
                ));
            }
        }
        Ok(())
    }

    /// Counts a wrong guess at `account`, for it and for this source.
    async fn guess_failed(&self, account: &sotto_proto::AccountId) -> ProtoError {
        let (whole, source) = self.guess_keys(account);
        let window = u64::try_from(self.shared.config.limits.kill_code_window.as_millis())
            .unwrap_or(u64::MAX);
        match self
            .shared
            .store
            .kill_guess_failed(vec![whole, source], now_ms(), window)
            .await
        {
            Ok(()) => ProtoError::new(ErrorCode::InvalidKillCode),
            // A guess that could not be counted was not checked either.
            Err(e) => self.log_store(&e),
        }
    }

    async fn wipe(
        &mut self,
        w: sotto_proto::WipeRequest,
        pow_nonce: Option<u64>,
    ) -> Result<Response, ProtoError> {
        self.lookup_allowed()?;
        let target = self
            .shared
            .store
            .wipe_target(w.handle.clone())
            .await
            .map_err(|e| self.log_store(&e))?;
        let Some(target) = target else {
            // An unknown handle runs out of guesses like an account does,
            // so the answers do not tell which handles exist.
            let decoy = sotto_proto::AccountId(
                Sha256::new()
                    .chain_update(b"sotto-wipe-decoy-account")
                    .chain_update(w.handle.as_str().as_bytes())
                    .finalize()
                    .into(),
            );
            self.guess_allowed(&decoy, &w, pow_nonce).await?;
            return Err(self.guess_failed(&decoy).await);
        };
        self.guess_allowed(&target.account, &w, pow_nonce).await?;
        let Some(record) = target.record else {
            return Err(self.guess_failed(&target.account).await);
        };
        let check = {
            let mut h = Sha256::new();
            h.update(b"sotto-kill-check-v1");
            h.update(w.server_proof);
            let c: [u8; 32] = h.finalize().into();
            c
        };
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            &check[..],
            &record.server_check[..],
        )) {
            return Err(self.guess_failed(&target.account).await);
        }
        let now = now_ms();
        let mut queued = 0u32;
        for (device, proof) in w.proofs.iter().filter(|(d, _)| target.devices.contains(d)) {
            let order = sotto_proto::WipeOrder {
                device: *device,
                proof: *proof,
            };
            let m = Outgoing {
                group: sotto_proto::GroupId([0; 32]),
                sender: *device,
                msg_id: sotto_proto::MessageId(rand::random()),
                kind: EnvelopeKind::Wipe,
                payload: postcard::to_stdvec(&order).unwrap_or_default(),
                now_ms: now,
                expires_ms: now.saturating_add(ttl_ms(&self.shared.config.mailbox_ttl)),
                epoch: None,
            };
            match self
                .shared
                .store
                .send_to_device(m, *device, MailboxCap::UNLIMITED)
                .await
            {
                Ok(out) => {
                    self.shared.bus.publish(&out.recipients);
                    self.shared.metrics.messages_accepted.inc();
                    queued += 1;
                }
                Err(SendError::Store(e)) => return Err(self.log_store(&e)),
                Err(_) => {}
            }
        }
        tracing::warn!(devices = queued, "wipe orders queued for an account");
        Ok(Response::WipeQueued { devices: queued })
    }

    async fn put_blob(&mut self, b: sotto_proto::PutBlob) -> Result<Response, ProtoError> {
        let device = self.device()?;
        if b.total > self.shared.config.limits.max_attachment_bytes {
            return Err(ProtoError::with_message(
                ErrorCode::TooLarge,
                format!(
                    "file too large: this server accepts attachments of up to {} MiB",
                    self.shared.config.limits.max_attachment_bytes / (1024 * 1024)
                ),
            ));
        }
        let end = b.offset.saturating_add(b.data.0.len() as u64);
        if b.data.0.len() > sotto_proto::MAX_BLOB_CHUNK || end > b.total {
            return Err(ProtoError::new(ErrorCode::TooLarge));
        }
        let expires = now_ms().saturating_add(ttl_ms(&self.shared.config.mailbox_ttl));
        let state = self
            .shared
            .store
            .begin_blob(b.blob, device, b.group, b.total, expires)
            .await
            .map_err(|e| self.log_store(&e))?
            .ok_or_else(|| ProtoError::new(ErrorCode::NotMember))?;
        if state.total != b.total {
            return Err(ProtoError::with_message(
                ErrorCode::InvalidRequest,
                "blob size changed",
            ));
        }
        if b.offset != state.received {
            // A retried chunk that already arrived is acknowledged again.
            return Ok(Response::BlobProgress {
                received: state.received,
                complete: state.received == state.total,
            });
        }
        let blobs = self.shared.blobs.clone();
        let (id, offset, data) = (b.blob, b.offset, b.data.0);
        tokio::task::spawn_blocking(move || blobs.append(id, offset, &data))
            .await
            .map_err(|_| ProtoError::new(ErrorCode::Internal))?
            .map_err(|e| self.log_store(&e))?;
        self.shared
            .store
            .blob_progress(b.blob, end)
            .await
            .map_err(|e| self.log_store(&e))?;
        Ok(Response::BlobProgress {
            received: end,
            complete: end == b.total,
        })
    }

    async fn get_blob(
        &mut self,
        blob: sotto_proto::BlobId,
        offset: u64,
    ) -> Result<Response, ProtoError> {
        let device = self.device()?;
        let state = self
            .shared
            .store
            .blob_for(blob, device, now_ms())
            .await
            .map_err(|e| self.log_store(&e))?
            .filter(|s| s.received == s.total)
            .ok_or_else(|| ProtoError::new(ErrorCode::UnknownBlob))?;
        if offset > state.total {
            return Err(ProtoError::new(ErrorCode::InvalidRequest));
        }
        let blobs = self.shared.blobs.clone();
        let data = tokio::task::spawn_blocking(move || {
            blobs.read(blob, offset, sotto_proto::MAX_BLOB_CHUNK)
        })
        .await
        .map_err(|_| ProtoError::new(ErrorCode::Internal))?
        .map_err(|e| self.log_store(&e))?;
        Ok(Response::BlobData {
            total: state.total,
            data: sotto_proto::Blob(data),
        })
    }

    async fn blob_fetched(&mut self, blob: sotto_proto::BlobId) -> Result<Response, ProtoError> {
        let device = self.device()?;
        let gone = self
            .shared
            .store
            .blob_fetched(blob, device)
            .await
            .map_err(|e| self.log_store(&e))?;
        if gone {
            let blobs = self.shared.blobs.clone();
            let _ = tokio::task::spawn_blocking(move || blobs.delete(blob)).await;
        }
        Ok(Response::Acked)
    }

    async fn wipe_done(&mut self) -> Result<Response, ProtoError> {
        let device = self.device()?;
        self.shared
            .store
            .forget_device(device)
            .await
            .map_err(|e| self.log_store(&e))?;
        Ok(Response::Forgotten)
    }

    /// This account blocks (or unblocks) `blocked`: its claims of this
    /// account's KeyPackages are refused.
    async fn block(
        &mut self,
        blocked: sotto_proto::AccountId,
        on: bool,
    ) -> Result<Response, ProtoError> {
        let account = self.account()?;
        self.shared
            .store
            .set_block(account, blocked, on)
            .await
            .map_err(|e| self.log_store(&e))?;
        Ok(Response::Acked)
    }

    /// This device leaves `group` alone: no more routing of it here.
    async fn leave(&mut self, group: sotto_proto::GroupId) -> Result<Response, ProtoError> {
        let device = self.device()?;
        self.shared
            .store
            .leave_group(group, device)
            .await
            .map_err(|e| self.log_store(&e))?;
        Ok(Response::Acked)
    }

    async fn ack(&mut self, seqs: Vec<u64>) -> Result<Response, ProtoError> {
        let device = self.device()?;
        if seqs.len() > MAX_ACKS_PER_FRAME {
            return Err(ProtoError::new(ErrorCode::TooLarge));
        }
        self.shared
            .store
            .ack(device, seqs)
            .await
            .map_err(|e| self.log_store(&e))?;
        Ok(Response::Acked)
    }

    /// Sends every mailbox entry after the last one sent. A device revoked
    /// meanwhile is told so and disconnected.
    async fn pump(&mut self, device: DeviceId) -> Result<(), End> {
        if let Ok(rec) = self.shared.store.device(device).await
            && rec.is_none_or(|r| r.revoked)
        {
            {
                let e = ProtoError::with_message(ErrorCode::AuthFailed, "this device was revoked");
                let _ = self.write(&ServerFrame::Fatal(e)).await;
                return Err(End::Protocol("device revoked".into()));
            }
        }
        loop {
            let batch = match self
                .shared
                .store
                .fetch(device, self.last_sent, FETCH_BATCH, now_ms())
                .await
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "mailbox fetch failed; retrying");
                    self.pump_failed = true;
                    return Ok(());
                }
            };
            self.pump_failed = false;
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
    }
}

fn ttl_ms(d: &Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A commit or proposal the checks refused: the client is told why (the
/// reason names a rule or an MLS check, never a secret).
fn refused(e: sotto_core::CoreError) -> ProtoError {
    match e {
        sotto_core::CoreError::Internal(why) | sotto_core::CoreError::Storage(why) => {
            tracing::error!(error = %why, "checking a group change failed");
            ProtoError::new(ErrorCode::Internal)
        }
        e => ProtoError::with_message(ErrorCode::InvalidCommit, e.to_string()),
    }
}
