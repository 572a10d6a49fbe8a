//! Every configurable limit of the server, hit through real TLS WebSocket
//! connections to `run()` on loopback: each answers with its typed error
//! and a retry hint where waiting helps, keeps what it already accepted,
//! and leaves the server serving. Slow and silent clients are dropped.

mod common;

use std::time::Duration;

use common::{Device, World, assert_rate_limited, create_group, drain, send, server_error};
use futures_util::{SinkExt, StreamExt};
use sotto_client::transport::{Connection, connect_tls};
use sotto_proto::{
    ClientFrame, ErrorCode, GroupId, Handle, RegistrationPolicy, Request, Response, ServerFrame,
    WipeRequest,
};
use sotto_server::{Limits, Quota, RegistrationMode, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

fn with_limits(limits: Limits) -> ServerConfig {
    ServerConfig {
        limits,
        ..ServerConfig::default()
    }
}

fn quota(count: u32) -> Quota {
    Quota {
        count,
        window: Duration::from_secs(3600),
    }
}

#[tokio::test]
async fn a_mailbox_over_its_byte_cap_refuses_more_and_keeps_what_it_accepted() {
    let w = World::with(with_limits(Limits {
        mailbox_max_bytes: 100_000,
        ..Limits::default()
    }))
    .await;
    let (alice, mut a) = w.person("alice").await;
    let (bob, b) = w.person("bob").await;
    b.close().await;
    let g = GroupId([3; 32]);
    create_group(&mut a, g, &alice, &[&bob]).await; // a Welcome of some KiB
    send(&mut a, g, 1, 40_000).await.unwrap();
    send(&mut a, g, 2, 40_000).await.unwrap();
    let e = server_error(send(&mut a, g, 3, 40_000).await);
    assert_eq!(e.code, ErrorCode::MailboxFull, "{e:?}");
    assert!(e.retry_after_ms.is_some(), "{e:?}");

    // Everything accepted before is delivered; acking makes room.
    let mut bc = w.login(&bob).await;
    let got = drain(&mut bc).await;
    let sizes: Vec<usize> = got.iter().map(|d| d.envelope.payload.0.len()).collect();
    assert_eq!(got[0].envelope.kind, sotto_proto::EnvelopeKind::Welcome);
    assert!(sizes[0] < 20_000, "a Welcome of {} bytes", sizes[0]);
    let framed = common::payload(g, 1, 40_000).len();
    assert_eq!(sizes[1..], [framed, framed]);
    let r = bc
        .request(Request::Ack {
            seqs: got.iter().map(|d| d.seq).collect(),
        })
        .await;
    assert!(matches!(r, Ok(Response::Acked)), "{r:?}");
    let r = send(&mut a, g, 3, 40_000).await;
    assert!(
        matches!(r, Ok(Response::Accepted { duplicate: false })),
        "the refused message was remembered as sent: {r:?}"
    );
}

#[tokio::test]
async fn registrations_per_source_are_limited_taken_handles_included() {
    let w = World::with(with_limits(Limits {
        registrations_per_source: quota(2),
        ..Limits::default()
    }))
    .await;
    w.person("alice").await;
    // A try for a taken handle counts too: no free oracle for handles.
    let mut c = w.connect().await;
    let again = Device::new("alice");
    let req = w.register_request(&c, &again, Some(w.server.invite()), None);
    assert_eq!(
        server_error(c.request(req).await).code,
        ErrorCode::HandleTaken
    );
    let mut c = w.connect().await;
    let carol = Device::new("carol");
    let req = w.register_request(&c, &carol, Some(w.server.invite()), None);
    assert_rate_limited(c.request(req).await);
    // Carol was not registered.
    let login = World::login_request(&c, &carol);
    assert_eq!(
        server_error(c.request(login).await).code,
        ErrorCode::AuthFailed
    );
}

#[tokio::test]
async fn failed_logins_per_source_lock_the_source_out_even_with_a_valid_key() {
    let w = World::with(with_limits(Limits {
        login_failures_per_source: quota(2),
        ..Limits::default()
    }))
    .await;
    let (alice, c) = w.person("alice").await;
    c.close().await;
    for _ in 0..2 {
        let mut c = w.connect().await;
        let stranger = Device::new("mallory");
        let r = c.request(World::login_request(&c, &stranger)).await;
        assert_eq!(server_error(r).code, ErrorCode::AuthFailed);
    }
    let mut c = w.connect().await;
    assert_rate_limited(c.request(World::login_request(&c, &alice)).await);
}

#[tokio::test]
async fn lookups_per_source_are_limited_before_and_after_login() {
    let w = World::with(with_limits(Limits {
        lookups_per_source: quota(3),
        ..Limits::default()
    }))
    .await;
    let (_alice, mut a) = w.person("alice").await;
    let unknown = Handle::new("nobody").unwrap();
    let claim = || Request::ClaimKeyPackages {
        handle: Handle::new("nobody").unwrap(),
    };
    assert_eq!(
        server_error(a.request(claim()).await).code,
        ErrorCode::UnknownHandle
    );
    let r = a
        .request(Request::GetDeviceList {
            account: sotto_proto::AccountId([5; 32]),
        })
        .await;
    assert_eq!(server_error(r).code, ErrorCode::UnknownAccount);
    let mut anon = w.connect().await;
    let r = anon
        .request(Request::WipeInfo {
            handle: unknown.clone(),
        })
        .await;
    assert!(matches!(r, Ok(Response::WipeInfo { .. })), "{r:?}");
    // The source's quota is spent, on every connection.
    assert_rate_limited(anon.request(Request::WipeInfo { handle: unknown }).await);
    assert_rate_limited(a.request(claim()).await);
    // Requests that look nothing up still pass.
    assert!(matches!(
        a.request(Request::Ping).await,
        Ok(Response::Pong { .. })
    ));
}

#[tokio::test]
async fn wipe_answers_do_not_tell_unknown_handles_from_accounts() {
    let w = World::with(ServerConfig::default()).await;
    let (_bob, _b) = w.person("bob").await;
    let mut transcripts = Vec::new();
    for handle in ["bob", "ghost"] {
        let handle = Handle::new(handle).unwrap();
        let mut c = w.connect().await;
        let mut seen = Vec::new();
        match c
            .request(Request::WipeInfo {
                handle: handle.clone(),
            })
            .await
        {
            Ok(Response::WipeInfo { devices, .. }) => {
                seen.push(format!("{} devices", devices.len()))
            }
            other => panic!("{other:?}"),
        }
        for _ in 0..6 {
            // A new connection each time: errors before login close one.
            let mut c = w.connect().await;
            let r = c
                .request(Request::Wipe(WipeRequest {
                    handle: handle.clone(),
                    server_proof: [1; 32],
                    proofs: Vec::new(),
                }))
                .await;
            let e = server_error(r);
            seen.push(format!("{:?} {}", e.code, e.retry_after_ms.is_some()));
            if e.code == ErrorCode::RateLimited {
                break;
            }
        }
        transcripts.push(seen);
    }
    assert_eq!(transcripts[0], transcripts[1]);
    assert_eq!(
        transcripts[0].last().map(String::as_str),
        Some("RateLimited true"),
        "{transcripts:?}"
    );
}

#[tokio::test]
async fn open_registration_takes_a_proof_of_work_for_this_connection() {
    let w = World::with(ServerConfig {
        registration: RegistrationMode::Open { pow_bits: 16 },
        ..ServerConfig::default()
    })
    .await;
    let d = Device::new("alice");
    let mut c = w.connect().await;
    assert_eq!(
        c.hello().registration,
        RegistrationPolicy::Open { pow_bits: 16 }
    );
    let req = w.register_request(&c, &d, None, None);
    assert_eq!(
        server_error(c.request(req).await).code,
        ErrorCode::ProofOfWorkInvalid
    );
    // A solution for another connection's challenge does not count.
    let other = w.connect().await;
    let stale = sotto_proto::pow::solve(&other.hello().challenge, "alice", 16);
    if !sotto_proto::pow::verify(&c.hello().challenge, "alice", stale, 16) {
        let req = w.register_request(&c, &d, None, Some(stale));
        assert_eq!(
            server_error(c.request(req).await).code,
            ErrorCode::ProofOfWorkInvalid
        );
    }
    let mut c = w.connect().await;
    let nonce = sotto_proto::pow::solve(&c.hello().challenge, "alice", 16);
    let req = w.register_request(&c, &d, None, Some(nonce));
    assert!(matches!(c.request(req).await, Ok(Response::LoggedIn(_))));
}

#[tokio::test]
async fn the_total_connection_cap_holds_and_frees_places() {
    let w = World::with(with_limits(Limits {
        max_connections: 2,
        ..Limits::default()
    }))
    .await;
    let first = w.connect().await;
    let _second = w.connect().await;
    assert!(
        Connection::connect(&w.link).await.is_err(),
        "a third connection was accepted"
    );
    first.close().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if Connection::connect(&w.link).await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the freed place was not given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads raw bytes until the server closes the stream; `false` if it is
/// still open at the deadline.
async fn closed_by_server<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, r.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {} // pings and the like: read, never answered
        }
    }
}

#[tokio::test]
async fn slowloris_upgrades_and_silent_logged_in_clients_are_dropped() {
    let w = World::with(with_limits(Limits {
        handshake_timeout: Duration::from_millis(500),
        ping_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(400),
        ..Limits::default()
    }))
    .await;

    // TLS completes, then the upgrade request trickles in and never ends.
    let tls = connect_tls(&w.link).await.unwrap();
    let (mut r, mut wr) = tokio::io::split(tls);
    let trickle = tokio::spawn(async move {
        let head = b"GET /v1/ws HTTP/1.1\r\nHost: sotto\r\nX-Slow: ";
        if wr.write_all(head).await.is_err() {
            return;
        }
        while wr.write_all(b"a").await.is_ok() && wr.flush().await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert!(
        closed_by_server(&mut r).await,
        "a never-ending upgrade kept its connection"
    );
    trickle.abort();

    // Logs in, then neither reads the WebSocket nor answers its pings.
    let (alice, c) = w.person("alice").await;
    c.close().await;
    let tls = connect_tls(&w.link).await.unwrap();
    let url = format!("wss://{}{}", w.link.authority(), sotto_proto::WS_PATH);
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let hello = match ws.next().await {
        Some(Ok(Message::Binary(b))) => match sotto_proto::decode_server(&b).unwrap() {
            ServerFrame::Hello(h) => h,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    let t = sotto_proto::login_transcript(&hello.challenge, &alice.id());
    let login = ClientFrame {
        req: 1,
        body: Request::Login(sotto_proto::LoginRequest {
            version: sotto_proto::PROTOCOL_VERSION,
            device: alice.id(),
            signature: alice.device.sign(&t),
        }),
    };
    ws.send(Message::Binary(sotto_proto::encode_client(&login).into()))
        .await
        .unwrap();
    match ws.next().await {
        Some(Ok(Message::Binary(b))) => assert!(
            matches!(
                sotto_proto::decode_server(&b).unwrap(),
                ServerFrame::Response {
                    result: Ok(Response::LoggedIn(_)),
                    ..
                }
            ),
            "login failed"
        ),
        other => panic!("{other:?}"),
    }
    // From here on only raw TLS reads: no pong ever goes back.
    assert!(
        closed_by_server(ws.get_mut()).await,
        "a silent logged-in client kept its connection"
    );
}

#[tokio::test]
async fn oversized_fields_get_too_large_and_the_connection_goes_on() {
    let w = World::with(with_limits(Limits {
        max_attachment_bytes: 1024,
        max_group_devices: 2,
        ..Limits::default()
    }))
    .await;
    let (alice, mut a) = w.person("alice").await;
    let (bob, _b) = w.person("bob").await;
    let (carol, _c) = w.person("carol").await;
    let g = GroupId([5; 32]);
    create_group(&mut a, g, &alice, &[&bob]).await;
    let too_large = |r| assert_eq!(server_error(r).code, ErrorCode::TooLarge);
    too_large(send(&mut a, g, 1, sotto_proto::MAX_PAYLOAD_BYTES + 1).await);
    let upload = |n: usize, size: usize| {
        Request::UploadKeyPackages(sotto_proto::UploadKeyPackages {
            key_packages: (0..n)
                .map(|i| sotto_proto::Blob(vec![i as u8; size]))
                .collect(),
            last_resort: None,
        })
    };
    too_large(
        a.request(upload(sotto_proto::MAX_KEY_PACKAGES_PER_UPLOAD + 1, 10))
            .await,
    );
    too_large(a.request(upload(1, 16 * 1024 + 1)).await);
    too_large(
        a.request(Request::Ack {
            seqs: vec![1; sotto_proto::MAX_ACKS_PER_FRAME + 1],
        })
        .await,
    );
    too_large(
        a.request(Request::PutBlob(sotto_proto::PutBlob {
            blob: sotto_proto::BlobId([1; 16]),
            group: g,
            offset: 0,
            total: 1025,
            data: sotto_proto::Blob(vec![0; 10]),
        }))
        .await,
    );
    // A group past the size limit (three devices, two allowed), and
    // handshake fields past theirs.
    too_large(
        a.request(Request::Commit(
            alice.create(GroupId([6; 32]), &[&bob, &carol]),
        ))
        .await,
    );
    alice.discard(GroupId([6; 32]));
    too_large(
        a.request(Request::Commit(sotto_proto::CommitRequest {
            group_info: sotto_proto::Blob(vec![0; sotto_proto::MAX_HANDSHAKE_BYTES + 1]),
            ..alice.self_update(g)
        }))
        .await,
    );
    alice.refused(g);
    // Nothing of it was stored, and the connection still serves.
    assert!(matches!(
        send(&mut a, g, 2, 10).await,
        Ok(Response::Accepted { duplicate: false })
    ));
}

#[tokio::test]
async fn repeated_errors_before_login_end_the_connection() {
    let w = World::with(ServerConfig::default()).await;
    let mut c = w.connect().await;
    for _ in 0..3 {
        let r = send(&mut c, GroupId([1; 32]), 1, 10).await;
        assert_eq!(server_error(r).code, ErrorCode::NotAuthenticated);
    }
    // The fourth error is answered, then the connection is closed.
    let r = send(&mut c, GroupId([1; 32]), 1, 10).await;
    assert_eq!(server_error(r).code, ErrorCode::NotAuthenticated);
    let next = tokio::time::timeout(Duration::from_secs(10), c.read_frame())
        .await
        .expect("the connection stayed open");
    assert!(next.is_err(), "{next:?}");
}

#[tokio::test]
async fn a_claimer_who_drains_a_victims_key_packages_is_limited_and_others_still_reach_the_victim()
{
    let w = World::with(with_limits(Limits {
        claims_per_target: 5,
        ..Limits::default()
    }))
    .await;
    let (_victim, mut v) = w.person("victim").await;
    let up = sotto_proto::UploadKeyPackages {
        key_packages: (0..3u8).map(|i| sotto_proto::Blob(vec![i; 8])).collect(),
        last_resort: Some(sotto_proto::Blob(vec![0xee; 8])),
    };
    assert!(matches!(
        v.request(Request::UploadKeyPackages(up)).await,
        Ok(Response::KeyPackagesStored { available: 3 })
    ));
    let claim = || Request::ClaimKeyPackages {
        handle: Handle::new("victim").unwrap(),
    };
    let last_resort = |r: Result<Response, sotto_client::ClientError>| match r {
        Ok(Response::KeyPackages(k)) => k.devices.iter().all(|d| d.last_resort),
        other => panic!("{other:?}"),
    };
    let (_mallory, mut m) = w.person("mallory").await;
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(last_resort(m.request(claim()).await));
    }
    assert_eq!(got, [false, false, false, true, true]);
    assert_rate_limited(m.request(claim()).await);
    // Another person still reaches the victim, through the last resort.
    let (_carol, mut c) = w.person("carol").await;
    assert!(last_resort(c.request(claim()).await));
}
