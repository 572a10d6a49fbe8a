//! Helpers of the server's integration tests: the server's `run()` on
//! loopback with a given configuration, people registered with raw
//! protocol requests, and small request shorthands.
#![allow(dead_code)] // each test file uses some of them

use std::time::Duration;

use sotto_client::transport::{Connection, Event};
use sotto_client::{ClientError, ServerLink};
use sotto_proto::{
    Blob, ErrorCode, GroupId, LoginRequest, MessageId, PROTOCOL_VERSION, ProtoError,
    RegisterRequest, Request, Response, SendRequest,
};
use sotto_server::ServerConfig;
use sotto_test_support::InProcessServer;
use tempfile::TempDir;

/// A device of its own account with its own MLS state (the server checks
/// every commit, so tests bring real ones).
pub(crate) use sotto_test_support::mls::Member as Device;

pub(crate) struct World {
    _tmp: Option<TempDir>,
    pub(crate) server: InProcessServer,
    pub(crate) link: ServerLink,
}

impl World {
    pub(crate) async fn with(config: ServerConfig) -> Self {
        let tmp = TempDir::new().unwrap();
        let server = InProcessServer::start(tmp.path(), config).await;
        let link = ServerLink::parse(&server.link).unwrap();
        Self {
            _tmp: Some(tmp),
            server,
            link,
        }
    }

    /// A server whose data directory is `dir/server`.
    pub(crate) async fn at(dir: &std::path::Path, config: ServerConfig) -> Self {
        let server = InProcessServer::start(dir, config).await;
        let link = ServerLink::parse(&server.link).unwrap();
        Self {
            _tmp: None,
            server,
            link,
        }
    }

    /// Stops the server and waits for its connections to end.
    pub(crate) async fn stop(self) {
        self.server.stop().await;
    }

    pub(crate) async fn connect(&self) -> Connection {
        Connection::connect(&self.link).await.unwrap()
    }

    pub(crate) fn register_request(
        &self,
        conn: &Connection,
        d: &Device,
        invite: Option<String>,
        pow_nonce: Option<u64>,
    ) -> Request {
        let t = sotto_proto::register_transcript(
            &conn.hello().challenge,
            &d.handle,
            &d.account.id(),
            &d.id(),
        );
        Request::Register(Box::new(RegisterRequest {
            version: PROTOCOL_VERSION,
            handle: d.handle.clone(),
            account: d.account.id(),
            device: d.id(),
            invite,
            pow_nonce,
            account_signature: d.account.sign(&t),
            device_signature: d.device.sign(&t),
            device_list: d.account.sign_device_list(1, vec![d.id()]),
        }))
    }

    /// Registers a new account with an invite; returns its device and a
    /// logged-in connection.
    pub(crate) async fn person(&self, handle: &str) -> (Device, Connection) {
        let d = Device::new(handle);
        let mut conn = self.connect().await;
        let req = self.register_request(&conn, &d, Some(self.server.invite()), None);
        let r = conn.request(req).await;
        assert!(matches!(r, Ok(Response::LoggedIn(_))), "{r:?}");
        (d, conn)
    }

    pub(crate) fn login_request(conn: &Connection, d: &Device) -> Request {
        let t = sotto_proto::login_transcript(&conn.hello().challenge, &d.id());
        Request::Login(LoginRequest {
            version: PROTOCOL_VERSION,
            device: d.id(),
            signature: d.device.sign(&t),
        })
    }

    pub(crate) async fn login(&self, d: &Device) -> Connection {
        let mut conn = self.connect().await;
        let r = conn.request(Self::login_request(&conn, d)).await;
        assert!(matches!(r, Ok(Response::LoggedIn(_))), "{r:?}");
        conn
    }
}

/// The server's error, or a panic saying what came instead.
#[track_caller]
pub(crate) fn server_error(r: Result<Response, ClientError>) -> ProtoError {
    match r {
        Err(ClientError::Server(e)) => e,
        other => panic!("expected a server error, got {other:?}"),
    }
}

/// Asserts a typed "slow down" with a retry hint.
#[track_caller]
pub(crate) fn assert_rate_limited(r: Result<Response, ClientError>) {
    let e = server_error(r);
    assert_eq!(e.code, ErrorCode::RateLimited, "{e:?}");
    assert!(
        e.retry_after_ms.is_some_and(|ms| ms > 0),
        "no retry hint: {e:?}"
    );
}

/// Creates a group of `by` and `others` by a commit from `by` (real MLS,
/// checked by the server); returns its epoch.
pub(crate) async fn create_group(
    conn: &mut Connection,
    g: GroupId,
    by: &Device,
    others: &[&Device],
) -> u64 {
    let r = conn.request(Request::Commit(by.create(g, others))).await;
    match r {
        Ok(Response::Committed { epoch }) => {
            by.committed(g);
            epoch
        }
        other => panic!("expected Committed, got {other:?}"),
    }
}

/// Sends `size` bytes of `id` to group `g`, framed as an application
/// message of its first epoch (`framed_application`), with message id
/// `[id; 16]`.
pub(crate) async fn send(
    conn: &mut Connection,
    g: GroupId,
    id: u8,
    size: usize,
) -> Result<Response, ClientError> {
    send_at(conn, g, 1, id, size).await
}

/// The payload [`send`] sends: `size` bytes of `id` framed as an
/// application message of `g` at epoch 1.
#[allow(dead_code)] // not every test binary compares payloads
pub(crate) fn payload(g: GroupId, id: u8, size: usize) -> Vec<u8> {
    sotto_test_support::mls::framed_application(g, 1, &vec![id; size])
}

/// [`send`] of a message framed in `epoch`.
pub(crate) async fn send_at(
    conn: &mut Connection,
    g: GroupId,
    epoch: u64,
    id: u8,
    size: usize,
) -> Result<Response, ClientError> {
    conn.request(Request::Send(SendRequest {
        group: g,
        msg_id: MessageId([id; 16]),
        payload: Blob(sotto_test_support::mls::framed_application(
            g,
            epoch,
            &vec![id; size],
        )),
        ttl_ms: None,
    }))
    .await
}

/// Reads events until `Synced`, returning the deliveries.
pub(crate) async fn drain(conn: &mut Connection) -> Vec<sotto_proto::Delivery> {
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), conn.next_event())
            .await
            .expect("no Synced from the server")
            .unwrap()
        {
            Event::Deliver(d) => out.push(d),
            Event::Synced => return out,
        }
    }
}
