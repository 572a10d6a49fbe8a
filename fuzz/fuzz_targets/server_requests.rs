//! The server's request handling under arbitrary frames, through the real
//! thing: `run()` on loopback with TLS, a registered account with
//! KeyPackages and a group. Each input is a flag byte (bit 0: log in as
//! that account first) and frames, each a u16 LE length and its bytes,
//! sent over one connection. For every frame the server must answer or
//! close the connection with a `Fatal` (never hang), and a second,
//! logged-in connection must still be served after every input. A panic
//! anywhere in the server aborts the process (libFuzzer's panic hook), so
//! it is found.
#![no_main]

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sotto_client::ServerLink;
use sotto_client::transport::Connection;
use sotto_core::DeviceKey;
use sotto_proto::{
    Blob, GroupId, LoginRequest, PROTOCOL_VERSION, RegisterRequest, Request, Response, ServerFrame,
    UploadKeyPackages,
};
use sotto_server::{Limits, Quota, ServerConfig};
use sotto_test_support::InProcessServer;
use sotto_test_support::mls::Member;

struct Harness {
    rt: tokio::runtime::Runtime,
    link: ServerLink,
    /// The account inputs act as (replaced when an input makes the server
    /// forget it, e.g. with `WipeDone`), and how many were made.
    actor: Mutex<(Member, u32)>,
    /// A member of the actors' groups.
    bob: Member,
    /// A connection of another account, pinged after every input.
    watchdog: Mutex<Option<Connection>>,
    watch: DeviceKey,
    server: InProcessServer,
    _tmp: tempfile::TempDir,
    _sigpipe: tokio::signal::unix::Signal,
}

/// Rust's own `main` ignores SIGPIPE; libFuzzer's `main` does not, so a
/// write to a socket the peer closed would kill the process. A handler
/// (never read) replaces the default action.
fn ignore_sigpipe() -> tokio::signal::unix::Signal {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::pipe()).expect("SIGPIPE handler")
}

/// The harness's data (server and profiles) lives as long as the process,
/// which never drops it: under `TMPDIR`, which `scripts/fuzz.sh` points at
/// a RAM disk it removes afterwards.
fn temp_dir() -> tempfile::TempDir {
    tempfile::TempDir::new().expect("temp dir")
}

async fn register(
    server: &InProcessServer,
    link: &ServerLink,
    handle: &str,
) -> (Member, Connection) {
    let m = Member::new(handle);
    let mut conn = Connection::connect(link).await.expect("connect");
    let t = sotto_proto::register_transcript(
        &conn.hello().challenge,
        &m.handle,
        &m.account.id(),
        &m.id(),
    );
    let req = RegisterRequest {
        version: PROTOCOL_VERSION,
        handle: m.handle.clone(),
        account: m.account.id(),
        device: m.id(),
        invite: Some(server.invite()),
        pow_nonce: None,
        account_signature: m.account.sign(&t),
        device_signature: m.device.sign(&t),
        device_list: m.list(),
    };
    let r = conn.request(Request::Register(Box::new(req))).await;
    assert!(matches!(r, Ok(Response::LoggedIn(_))), "{r:?}");
    (m, conn)
}

async fn try_login(link: &ServerLink, device: &DeviceKey) -> Option<Connection> {
    let mut conn = Connection::connect(link).await.expect("connect");
    let t = sotto_proto::login_transcript(&conn.hello().challenge, &device.id());
    let r = conn
        .request(Request::Login(LoginRequest {
            version: PROTOCOL_VERSION,
            device: device.id(),
            signature: device.sign(&t),
        }))
        .await;
    match r {
        Ok(Response::LoggedIn(_)) => Some(conn),
        Err(sotto_client::ClientError::Server(e))
            if e.code == sotto_proto::ErrorCode::AuthFailed =>
        {
            None
        }
        other => panic!("login: {other:?}"),
    }
}

/// A logged-in connection of the current actor, replacing an actor the
/// server was told to forget.
async fn actor_conn(h: &Harness) -> Connection {
    let mut a = h.actor.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = try_login(&h.link, &a.0.device).await {
        return c;
    }
    a.1 += 1;
    a.0 = actor(&h.server, &h.link, &format!("actor{}", a.1), &h.bob).await;
    try_login(&h.link, &a.0.device)
        .await
        .expect("a new actor logs in")
}

/// A registered account with KeyPackages and a group with `bob` (real
/// MLS: the server checks the commit).
async fn actor(server: &InProcessServer, link: &ServerLink, handle: &str, bob: &Member) -> Member {
    let (me, mut c) = register(server, link, handle).await;
    let up = UploadKeyPackages {
        key_packages: (0..20u8).map(|i| Blob(vec![i, 1, 2, 3])).collect(),
        last_resort: Some(Blob(vec![9, 9, 9])),
    };
    c.request(Request::UploadKeyPackages(up))
        .await
        .expect("upload");
    let mut group = [0u8; 32];
    let n = handle.len().min(32);
    group[..n].copy_from_slice(&handle.as_bytes()[..n]);
    let r = c
        .request(Request::Commit(me.create(GroupId(group), &[bob])))
        .await;
    assert!(matches!(r, Ok(Response::Committed { .. })), "{r:?}");
    me.committed(GroupId(group));
    me
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let sigpipe = rt.block_on(async { ignore_sigpipe() });
        let tmp = temp_dir();
        let unlimited = Quota {
            count: u32::MAX,
            window: Duration::from_secs(3600),
        };
        let config = ServerConfig {
            // Every input comes from one address: per-source quotas would
            // soon refuse the harness's own logins.
            limits: Limits {
                requests_per_second: 1e9,
                request_burst: 1e9,
                max_connections_per_source: 100_000,
                registrations_per_source: unlimited,
                login_failures_per_source: unlimited,
                lookups_per_source: unlimited,
                ..Limits::default()
            },
            ..ServerConfig::default()
        };
        let (server, link, actor, bob, watch) = rt.block_on(async {
            let server = InProcessServer::start(tmp.path(), config).await;
            let link = ServerLink::parse(&server.link).expect("link");
            let (bob, _b) = register(&server, &link, "bob").await;
            let (watch, _w) = register(&server, &link, "watch").await;
            let actor = actor(&server, &link, "actor0", &bob).await;
            (server, link, actor, bob, watch.device)
        });
        Harness {
            rt,
            link,
            actor: Mutex::new((actor, 0)),
            bob,
            watchdog: Mutex::new(None),
            watch,
            server,
            _tmp: tmp,
            _sigpipe: sigpipe,
        }
    })
}

/// Splits the input into frames: u16 LE length, then that many bytes.
fn frames(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while rest.len() >= 2 && out.len() < 16 {
        let n = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        out.push(&rest[2..2 + n]);
        rest = &rest[2 + n..];
    }
    out
}

async fn one_input(h: &Harness, data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut conn = if flags & 1 == 1 {
        actor_conn(h).await
    } else {
        Connection::connect(&h.link).await.expect("connect")
    };
    'frames: for f in frames(rest) {
        if conn.send_raw(f.to_vec()).await.is_err() {
            break;
        }
        loop {
            match tokio::time::timeout(Duration::from_secs(20), conn.read_frame()).await {
                Err(_) => panic!("the server neither answered a frame nor closed the connection"),
                Ok(Ok(ServerFrame::Response { .. })) => break,
                Ok(Ok(ServerFrame::Deliver(_) | ServerFrame::Synced)) => {}
                Ok(Ok(ServerFrame::Hello(_))) => panic!("a second hello"),
                // Fatal, then the close; or the close itself.
                Ok(Ok(ServerFrame::Fatal(_)) | Err(_)) => break 'frames,
            }
        }
    }
    conn.close().await;

    // The server still serves a logged-in device.
    let mut w = h.watchdog.lock().unwrap_or_else(|p| p.into_inner());
    let alive = match w.as_mut() {
        Some(c) => matches!(c.request(Request::Ping).await, Ok(Response::Pong { .. })),
        None => false,
    };
    if !alive {
        let mut c = try_login(&h.link, &h.watch)
            .await
            .expect("the watchdog account logs in");
        let r = c.request(Request::Ping).await;
        assert!(matches!(r, Ok(Response::Pong { .. })), "{r:?}");
        *w = Some(c);
    }
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    h.rt.block_on(one_input(h, data));
});
