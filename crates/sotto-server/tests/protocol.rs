//! The server's protocol under normal and hostile use, through real TLS
//! WebSocket connections to `run()` on loopback: registration and login,
//! KeyPackages, commits, sends, delivery and acks, and every kind of bad
//! input the hostile checklist names for this stage.

use std::time::Duration;

use sotto_client::transport::{Connection, Event};
use sotto_client::{ClientError, ServerLink};

use sotto_core::DeviceKey;
use sotto_proto::{
    Blob, ClientFrame, CommitRequest, DeviceId, EnvelopeKind, ErrorCode, GroupId, Handle,
    LoginRequest, MessageId, PROTOCOL_VERSION, Request, Response, RestoreRequest, ServerFrame,
    SignedDeviceList, UploadKeyPackages,
};
use sotto_server::{Limits, ServerConfig};
mod common;

use common::{Device, World, create_group, drain, server_error};
use sotto_test_support::InProcessServer;
use tempfile::TempDir;

impl World {
    async fn new() -> Self {
        Self::with(ServerConfig::default()).await
    }
}

#[track_caller]
fn code(r: Result<Response, ClientError>) -> ErrorCode {
    server_error(r).code
}

async fn expect_fatal_then_close(conn: &mut Connection, want: ErrorCode) {
    match conn.read_frame().await {
        Ok(ServerFrame::Fatal(e)) => assert_eq!(e.code, want, "{e:?}"),
        other => panic!("expected a fatal {want:?}, got {other:?}"),
    }
    let next = tokio::time::timeout(Duration::from_secs(5), conn.read_frame())
        .await
        .expect("server did not close the connection");
    assert!(
        matches!(
            next,
            Err(ClientError::Closed(_) | ClientError::Transport(_))
        ),
        "{next:?}"
    );
}

/// A 100-byte message `id` to group `g`.
async fn send(conn: &mut Connection, g: GroupId, id: u8) -> Result<Response, ClientError> {
    common::send(conn, g, id, 100).await
}

#[tokio::test]
async fn malformed_frames_get_a_typed_error_and_the_connection_closes() {
    let w = World::new().await;
    let valid = sotto_proto::encode_client(&ClientFrame {
        req: 1,
        body: Request::ClaimKeyPackages {
            handle: Handle::new("bob").unwrap(),
        },
    });
    let mut trailing = valid.clone();
    trailing.push(0);
    let mut unknown_variant = valid.clone();
    unknown_variant[1] = 250;
    let mut bad_utf8 = valid.clone();
    let n = bad_utf8.len();
    bad_utf8[n - 1] = 0xff;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", valid[..valid.len() - 2].to_vec()),
        ("empty", Vec::new()),
        ("trailing bytes", trailing),
        ("unknown enum value", unknown_variant),
        ("invalid utf-8", bad_utf8),
        (
            "huge length prefix",
            vec![1, 3, 0xff, 0xff, 0xff, 0xff, 0x0f],
        ),
    ];
    for (name, bytes) in cases {
        let mut conn = w.connect().await;
        conn.send_raw(bytes).await.unwrap();
        println!("case: {name}");
        expect_fatal_then_close(&mut conn, ErrorCode::Malformed).await;
    }
}

#[tokio::test]
async fn oversized_frames_are_refused_without_buffering_them() {
    let w = World::new().await;
    // Larger than the application cap, smaller than the WebSocket cap.
    let mut conn = w.connect().await;
    conn.send_raw(vec![0u8; sotto_proto::MAX_FRAME_BYTES + 1])
        .await
        .unwrap();
    expect_fatal_then_close(&mut conn, ErrorCode::TooLarge).await;
    // Larger than the WebSocket cap: the transport refuses it.
    let mut conn = w.connect().await;
    let _ = conn
        .send_raw(vec![0u8; 3 * sotto_proto::MAX_FRAME_BYTES])
        .await;
    expect_fatal_then_close(&mut conn, ErrorCode::TooLarge).await;
    // One WebSocket frame longer than the protocol's fragment size: the
    // transport refuses it, however small the message.
    let mut conn = w.connect().await;
    let _ = conn
        .send_unfragmented(vec![0u8; sotto_proto::WS_FRAGMENT_BYTES + 1])
        .await;
    expect_fatal_then_close(&mut conn, ErrorCode::TooLarge).await;
    // The server is still fine.
    w.person("alice").await;
}

/// Messages longer than a WebSocket fragment cross in fragments both ways
/// (the client refuses a longer frame as the server does): the largest
/// application message goes up in pieces and comes down, pushed live and
/// read from the mailbox, byte for byte.
#[tokio::test]
async fn large_messages_cross_in_fragments_both_ways() {
    let w = World::new().await;
    let (alice, mut alice_conn) = w.person("alice").await;
    let (bob, mut bob_conn) = w.person("bob").await;
    assert!(drain(&mut bob_conn).await.is_empty());
    let g = GroupId([9; 32]);
    create_group(&mut alice_conn, g, &alice, &[&bob]).await;
    let size = sotto_proto::MAX_PAYLOAD_BYTES - 1024;
    let want = common::payload(g, 1, size);
    assert!(want.len() > 10 * sotto_proto::WS_FRAGMENT_BYTES);
    common::send(&mut alice_conn, g, 1, size).await.unwrap();
    let mut live = None;
    while live.is_none() {
        match tokio::time::timeout(Duration::from_secs(5), bob_conn.next_event())
            .await
            .unwrap()
            .unwrap()
        {
            Event::Deliver(d) if d.envelope.kind == EnvelopeKind::Application => live = Some(d),
            Event::Deliver(_) => {}
            Event::Synced => panic!("synced twice"),
        }
    }
    assert_eq!(live.unwrap().envelope.payload.0, want);
    // Again from the mailbox, on a new connection (nothing was acknowledged).
    drop(bob_conn);
    let mut bob_conn = w.login(&bob).await;
    let got = drain(&mut bob_conn).await;
    assert_eq!(got.last().unwrap().envelope.payload.0, want);
}

#[tokio::test]
async fn login_with_a_wrong_signature_or_unknown_device_fails() {
    let w = World::new().await;
    let (alice, _) = w.person("alice").await;
    // Signature over another challenge (a replayed login).
    let mut conn = w.connect().await;
    let t = sotto_proto::login_transcript(&[7; 32], &alice.id());
    let r = conn
        .request(Request::Login(LoginRequest {
            version: PROTOCOL_VERSION,
            device: alice.id(),
            signature: alice.device.sign(&t),
        }))
        .await;
    assert_eq!(code(r), ErrorCode::AuthFailed);
    // The connection is closed after a failed login.
    assert!(conn.request(Request::Ping).await.is_err());
    // A device the server never saw, correctly signed.
    let stranger = DeviceKey::generate();
    let mut conn = w.connect().await;
    let t = sotto_proto::login_transcript(&conn.hello().challenge, &stranger.id());
    let r = conn
        .request(Request::Login(LoginRequest {
            version: PROTOCOL_VERSION,
            device: stranger.id(),
            signature: stranger.sign(&t),
        }))
        .await;
    assert_eq!(code(r), ErrorCode::AuthFailed);
    // Wrong protocol version.
    let mut conn = w.connect().await;
    let t = sotto_proto::login_transcript(&conn.hello().challenge, &alice.id());
    let r = conn
        .request(Request::Login(LoginRequest {
            version: 99,
            device: alice.id(),
            signature: alice.device.sign(&t),
        }))
        .await;
    assert_eq!(code(r), ErrorCode::UnsupportedVersion);
}

#[tokio::test]
async fn registration_checks_invite_and_signatures() {
    let w = World::new().await;
    let invite = w.server.invite();
    let d = Device::new;
    let alice = d("alice");
    let mut conn = w.connect().await;
    let req = w.register_request(&conn, &alice, Some(invite.clone()), None);
    assert!(matches!(
        conn.request(req).await.unwrap(),
        Response::LoggedIn(_)
    ));
    // The same invite again.
    let bob = d("bob");
    let mut conn = w.connect().await;
    let req = w.register_request(&conn, &bob, Some(invite), None);
    assert_eq!(code(conn.request(req).await), ErrorCode::InvalidInvite);
    // No invite on an invite-only server.
    let mut conn = w.connect().await;
    let req = w.register_request(&conn, &bob, None, None);
    assert_eq!(code(conn.request(req).await), ErrorCode::InviteRequired);
    // Device signature by another key: refused, and the invite is not spent.
    let invite = w.server.invite();
    let mut conn = w.connect().await;
    let mut req = w.register_request(&conn, &bob, Some(invite.clone()), None);
    if let Request::Register(r) = &mut req {
        r.device_signature = DeviceKey::generate().sign(b"something else");
    }
    assert_eq!(code(conn.request(req).await), ErrorCode::AuthFailed);
    let mut conn = w.connect().await;
    let req = w.register_request(&conn, &bob, Some(invite), None);
    assert!(matches!(
        conn.request(req).await.unwrap(),
        Response::LoggedIn(_)
    ));
}

#[tokio::test]
async fn requests_before_login_are_refused() {
    let w = World::new().await;
    let mut conn = w.connect().await;
    let r = send(&mut conn, GroupId([1; 32]), 1).await;
    assert_eq!(code(r), ErrorCode::NotAuthenticated);
    let r = conn
        .request(Request::ClaimKeyPackages {
            handle: Handle::new("alice").unwrap(),
        })
        .await;
    assert_eq!(code(r), ErrorCode::NotAuthenticated);
    assert!(matches!(
        conn.request(Request::Ping).await.unwrap(),
        Response::Pong { .. }
    ));
}

#[tokio::test]
async fn key_packages_are_handed_out_once_then_the_last_resort() {
    let w = World::new().await;
    let (_bob, mut bob_conn) = w.person("bob").await;
    let kps: Vec<Blob> = (0..3u8).map(|i| Blob(vec![i; 64])).collect();
    let upload = UploadKeyPackages {
        key_packages: kps.clone(),
        last_resort: Some(Blob(vec![9; 64])),
    };
    let r = bob_conn
        .request(Request::UploadKeyPackages(upload.clone()))
        .await
        .unwrap();
    assert_eq!(r, Response::KeyPackagesStored { available: 3 });
    // A replayed upload changes nothing.
    let r = bob_conn
        .request(Request::UploadKeyPackages(upload))
        .await
        .unwrap();
    assert_eq!(r, Response::KeyPackagesStored { available: 3 });

    let (_alice, mut alice_conn) = w.person("alice").await;
    let mut seen = Vec::new();
    for _ in 0..5 {
        let r = alice_conn
            .request(Request::ClaimKeyPackages {
                handle: Handle::new("bob").unwrap(),
            })
            .await
            .unwrap();
        let Response::KeyPackages(c) = r else {
            panic!("{r:?}")
        };
        assert_eq!(c.devices.len(), 1);
        seen.push((c.devices[0].key_package.clone(), c.devices[0].last_resort));
    }
    let one_time: Vec<_> = seen
        .iter()
        .filter(|(_, lr)| !lr)
        .map(|(kp, _)| kp.clone())
        .collect();
    assert_eq!(one_time.len(), 3);
    for kp in &kps {
        assert_eq!(
            one_time.iter().filter(|x| *x == kp).count(),
            1,
            "a key package was served twice"
        );
    }
    assert!(seen[3..].iter().all(|(kp, lr)| *lr && kp.0 == vec![9; 64]));

    let r = alice_conn
        .request(Request::ClaimKeyPackages {
            handle: Handle::new("nobody").unwrap(),
        })
        .await;
    assert_eq!(code(r), ErrorCode::UnknownHandle);
}

#[tokio::test]
async fn a_device_without_key_packages_is_reported() {
    let w = World::new().await;
    let (_bob, _c) = w.person("bob").await;
    let (_alice, mut alice_conn) = w.person("alice").await;
    let r = alice_conn
        .request(Request::ClaimKeyPackages {
            handle: Handle::new("bob").unwrap(),
        })
        .await;
    assert_eq!(code(r), ErrorCode::NoKeyPackages);
}

#[tokio::test]
async fn commits_are_compare_and_set_on_the_epoch() {
    let w = World::new().await;
    let (alice, mut alice_conn) = w.person("alice").await;
    let (bob, mut bob_conn) = w.person("bob").await;
    let g = GroupId([5; 32]);
    assert_eq!(create_group(&mut alice_conn, g, &alice, &[&bob]).await, 1);
    // Bob races with a creation of his own: the epoch moved.
    let r = bob_conn
        .request(Request::Commit(bob.create(g, &[&alice])))
        .await;
    assert_eq!(code(r), ErrorCode::StaleEpoch { current: 1 });
    bob.discard(g);
    // He joins alice's group instead (its Welcome waits in his mailbox):
    // a commit on the current epoch goes to the other members.
    let mut bob_conn = w.login(&bob).await;
    let got = drain(&mut bob_conn).await;
    let kinds: Vec<_> = got.iter().map(|d| d.envelope.kind).collect();
    assert_eq!(kinds, [EnvelopeKind::Welcome]);
    bob.join(&got[0].envelope.payload.0);
    let update = bob.self_update(g);
    let r = bob_conn
        .request(Request::Commit(update.clone()))
        .await
        .unwrap();
    assert_eq!(r, Response::Committed { epoch: 2 });
    bob.committed(g);
    // Sent again (its answer lost): answered with the same epoch, applied once.
    let r = bob_conn.request(Request::Commit(update)).await.unwrap();
    assert_eq!(r, Response::Committed { epoch: 2 });
    let got = drain(&mut w.login(&alice).await).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].envelope.kind, EnvelopeKind::Commit);
    assert_eq!(got[0].envelope.sender, bob.id());
    assert!(matches!(
        alice.process(g, &got[0].envelope.payload.0).unwrap(),
        sotto_core::mls::Processed::Commit { epoch: 2, .. }
    ));
    // A commit of the epoch alice left is stale.
    let r = alice_conn
        .request(Request::Commit(CommitRequest {
            epoch: 1,
            ..alice.self_update(g)
        }))
        .await;
    assert_eq!(code(r), ErrorCode::StaleEpoch { current: 2 });
}

#[tokio::test]
async fn duplicate_sends_are_stored_once_and_outsiders_refused() {
    let w = World::new().await;
    let (alice, mut alice_conn) = w.person("alice").await;
    let (bob, _bob_conn) = w.person("bob").await;
    let (_carol, mut carol_conn) = w.person("carol").await;
    let g = GroupId([6; 32]);
    create_group(&mut alice_conn, g, &alice, &[&bob]).await;
    assert_eq!(
        send(&mut alice_conn, g, 1).await.unwrap(),
        Response::Accepted { duplicate: false }
    );
    assert_eq!(
        send(&mut alice_conn, g, 1).await.unwrap(),
        Response::Accepted { duplicate: true }
    );
    assert_eq!(
        send(&mut alice_conn, g, 2).await.unwrap(),
        Response::Accepted { duplicate: false }
    );
    assert_eq!(
        code(send(&mut carol_conn, g, 3).await),
        ErrorCode::NotMember
    );

    let mut bob_conn = w.login(&bob).await;
    let got = drain(&mut bob_conn).await;
    let ids: Vec<_> = got
        .iter()
        .map(|d| (d.envelope.kind, d.envelope.msg_id))
        .collect();
    assert_eq!(
        ids,
        [
            (EnvelopeKind::Welcome, got[0].envelope.msg_id),
            (EnvelopeKind::Application, MessageId([1; 16])),
            (EnvelopeKind::Application, MessageId([2; 16])),
        ]
    );
    assert_eq!(got[1].envelope.payload.0, common::payload(g, 1, 100));
    // The Welcome names its sender, an application message does not (MLS
    // authenticates it inside the ciphertext).
    assert_eq!(got[0].envelope.sender, alice.id());
    assert_eq!(got[1].envelope.sender, DeviceId::NONE);
}

#[tokio::test]
async fn unacknowledged_messages_come_again_acknowledged_ones_do_not() {
    let w = World::new().await;
    let (alice, mut alice_conn) = w.person("alice").await;
    let (bob, bob_conn) = w.person("bob").await;
    drop(bob_conn);
    let g = GroupId([7; 32]);
    create_group(&mut alice_conn, g, &alice, &[&bob]).await;
    send(&mut alice_conn, g, 1).await.unwrap();
    send(&mut alice_conn, g, 2).await.unwrap();

    let mut c = w.login(&bob).await;
    let first = drain(&mut c).await;
    assert_eq!(first.len(), 3);
    c.close().await;
    let mut c = w.login(&bob).await;
    let again = drain(&mut c).await;
    assert_eq!(
        again, first,
        "unacknowledged messages must be delivered again"
    );
    let seqs: Vec<u64> = first.iter().map(|d| d.seq).take(2).collect();
    assert_eq!(
        c.request(Request::Ack { seqs: seqs.clone() })
            .await
            .unwrap(),
        Response::Acked
    );
    // Acks are idempotent, and an ack of someone else's seq does nothing.
    assert_eq!(
        c.request(Request::Ack { seqs }).await.unwrap(),
        Response::Acked
    );
    let mut a = w.login(&alice).await;
    drain(&mut a).await;
    assert_eq!(
        a.request(Request::Ack {
            seqs: vec![first[2].seq]
        })
        .await
        .unwrap(),
        Response::Acked
    );
    c.close().await;
    let mut c = w.login(&bob).await;
    let rest = drain(&mut c).await;
    assert_eq!(rest, first[2..].to_vec());
}

#[tokio::test]
async fn online_devices_get_messages_pushed_on_the_same_connection() {
    let w = World::new().await;
    let (alice, mut alice_conn) = w.person("alice").await;
    let (bob, mut bob_conn) = w.person("bob").await;
    assert!(drain(&mut bob_conn).await.is_empty());
    let g = GroupId([8; 32]);
    create_group(&mut alice_conn, g, &alice, &[&bob]).await;
    send(&mut alice_conn, g, 1).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), bob_conn.next_event())
            .await
            .unwrap()
            .unwrap()
        {
            Event::Deliver(d) => got.push(d.envelope.kind),
            Event::Synced => panic!("synced twice"),
        }
    }
    assert_eq!(got, [EnvelopeKind::Welcome, EnvelopeKind::Application]);
    // The same connection still serves requests.
    assert!(matches!(
        bob_conn.request(Request::Ping).await.unwrap(),
        Response::Pong { .. }
    ));
}

#[tokio::test]
async fn full_mailboxes_refuse_more_with_a_typed_error() {
    let w = World::with(ServerConfig {
        limits: Limits {
            mailbox_max_messages: 2,
            ..Limits::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let (alice, mut alice_conn) = w.person("alice").await;
    let (bob, _c) = w.person("bob").await;
    let g = GroupId([9; 32]);
    create_group(&mut alice_conn, g, &alice, &[&bob]).await; // the Welcome is one
    send(&mut alice_conn, g, 1).await.unwrap();
    assert_eq!(
        code(send(&mut alice_conn, g, 2).await),
        ErrorCode::MailboxFull
    );
}

#[tokio::test]
async fn request_floods_are_slowed_down() {
    let w = World::with(ServerConfig {
        limits: Limits {
            requests_per_second: 1.0,
            request_burst: 5.0,
            ..Limits::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let mut conn = w.connect().await;
    let mut limited = 0;
    for _ in 0..10 {
        if let Err(ClientError::Server(e)) = conn.request(Request::Ping).await {
            assert_eq!(e.code, ErrorCode::RateLimited);
            assert!(e.retry_after_ms.is_some());
            limited += 1;
        }
    }
    assert!(limited >= 4, "only {limited} of 10 requests were limited");
}

#[tokio::test]
async fn idle_and_unauthenticated_connections_are_closed() {
    let w = World::with(ServerConfig {
        limits: Limits {
            handshake_timeout: Duration::from_millis(300),
            auth_timeout: Duration::from_millis(300),
            ..Limits::default()
        },
        ..ServerConfig::default()
    })
    .await;
    // A TCP connection that never starts TLS.
    let mut tcp = tokio::net::TcpStream::connect(w.link.authority())
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut tcp, &mut buf),
    )
    .await
    .expect("server kept a silent TCP connection open")
    .unwrap_or(0);
    assert_eq!(n, 0);
    // A WebSocket that never logs in.
    let mut conn = w.connect().await;
    let r = tokio::time::timeout(Duration::from_secs(10), conn.read_frame())
        .await
        .expect("server kept an unauthenticated connection open");
    assert!(r.is_err(), "{r:?}");
}

#[tokio::test]
async fn server_stops_cleanly_with_connections_open() {
    let tmp = TempDir::new().unwrap();
    let server = InProcessServer::start(tmp.path(), ServerConfig::default()).await;
    let link = ServerLink::parse(&server.link).unwrap();
    let mut conn = Connection::connect(&link).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .expect("shutdown hung");
    assert!(conn.request(Request::Ping).await.is_err());
}

#[tokio::test]
async fn key_package_claims_are_limited_per_claimer_and_per_target() {
    let w = World::with(ServerConfig {
        limits: Limits {
            claims_per_target: 2,
            claims_per_claimer: 3,
            ..Limits::default()
        },
        ..ServerConfig::default()
    })
    .await;
    for name in ["bob", "carol"] {
        let (_d, mut c) = w.person(name).await;
        let upload = UploadKeyPackages {
            key_packages: (0..5u8)
                .map(|i| Blob(vec![i, name.len() as u8, 7]))
                .collect(),
            last_resort: None,
        };
        c.request(Request::UploadKeyPackages(upload)).await.unwrap();
    }
    let (_alice, mut a) = w.person("alice").await;
    let claim = |h: &str| Request::ClaimKeyPackages {
        handle: Handle::new(h).unwrap(),
    };
    for _ in 0..2 {
        assert!(matches!(
            a.request(claim("bob")).await.unwrap(),
            Response::KeyPackages(_)
        ));
    }
    match a.request(claim("bob")).await {
        Err(ClientError::Server(e)) => {
            assert_eq!(e.code, ErrorCode::RateLimited);
            assert!(e.retry_after_ms.is_some());
        }
        other => panic!("{other:?}"),
    }
    // Another target is still open, until the claimer's own total runs out.
    assert!(matches!(
        a.request(claim("carol")).await.unwrap(),
        Response::KeyPackages(_)
    ));
    assert_eq!(
        code(a.request(claim("carol")).await),
        ErrorCode::RateLimited
    );
}

#[tokio::test]
async fn one_source_cannot_take_every_connection() {
    let w = World::with(ServerConfig {
        limits: Limits {
            max_connections_per_source: 2,
            ..Limits::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let first = w.connect().await;
    let _second = w.connect().await;
    assert!(
        Connection::connect(&w.link).await.is_err(),
        "a third connection from the same address was accepted"
    );
    // Closing one frees its place.
    first.close().await;
    let mut again = None;
    for _ in 0..50 {
        if let Ok(c) = Connection::connect(&w.link).await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(again.is_some(), "the freed place was not given back");
}

/// The group's epoch, GroupInfo and ratchet tree, as the server hands them out.
async fn get_group_info(conn: &mut Connection, g: GroupId) -> (u64, Blob, Blob) {
    match conn
        .request(Request::GetGroupInfo { group: g })
        .await
        .unwrap()
    {
        Response::GroupInfo {
            epoch,
            group_info,
            ratchet_tree,
        } => (epoch, group_info, ratchet_tree),
        other => panic!("expected a group info, got {other:?}"),
    }
}

/// S11: the server refuses what every member would refuse (a non-admin's
/// add, garbage, a proposal in someone else's name), delivers proposals
/// as proposals, and hands a group's GroupInfo only to its members, who
/// rejoin with it.
#[tokio::test]
async fn the_server_checks_commits_and_proposals_and_hands_group_infos_to_members_only() {
    let w = World::new().await;
    let (alice, mut alice_conn) = w.person("alice").await;
    let (bob, _) = w.person("bob").await;
    let (carol, _) = w.person("carol").await;
    let (dave, mut dave_conn) = w.person("dave").await;
    let g = GroupId([7; 32]);
    create_group(&mut alice_conn, g, &alice, &[&bob, &carol]).await;
    let mut bob_conn = w.login(&bob).await;
    let mut carol_conn = w.login(&carol).await;
    for (who, conn) in [(&bob, &mut bob_conn), (&carol, &mut carol_conn)] {
        let got = drain(conn).await;
        who.join(&got[0].envelope.payload.0);
        let seqs = got.iter().map(|d| d.seq).collect();
        assert_eq!(
            conn.request(Request::Ack { seqs }).await.unwrap(),
            Response::Acked
        );
    }
    let invalid = |r: Result<Response, ClientError>, why: &str| {
        let e = server_error(r);
        assert_eq!(e.code, ErrorCode::InvalidCommit, "{e:?}");
        assert!(e.message.contains(why), "{why}: {e:?}");
    };
    // bob is no admin: his add of dave is refused, and reaches nobody.
    let add = bob.add(g, &[&dave]);
    invalid(
        bob_conn.request(Request::Commit(add)).await,
        "only admins add members",
    );
    bob.refused(g);
    invalid(
        bob_conn
            .request(Request::Commit(CommitRequest {
                commit: Blob(b"garbage".to_vec()),
                ..bob.self_update(g)
            }))
            .await,
        "malformed",
    );
    bob.refused(g);
    // carol's leave, sent by bob: refused; sent by carol: delivered to the
    // others as a proposal.
    let leave = carol.leave(g);
    invalid(
        bob_conn.request(Request::Propose(leave.clone())).await,
        "another device",
    );
    let r = carol_conn.request(Request::Propose(leave)).await.unwrap();
    assert_eq!(r, Response::Accepted { duplicate: false });
    for who in [&alice, &bob] {
        let got = drain(&mut w.login(who).await).await;
        let kinds: Vec<_> = got.iter().map(|d| d.envelope.kind).collect();
        assert_eq!(kinds, [EnvelopeKind::Proposal], "{who:?}");
        who.process(g, &got[0].envelope.payload.0).unwrap();
    }
    // alice commits it: the server routes to two devices from now on.
    let c = alice.commit(g, Default::default());
    let r = alice_conn.request(Request::Commit(c)).await.unwrap();
    assert_eq!(r, Response::Committed { epoch: 2 });
    alice.committed(g);
    // The GroupInfo of the epoch: not for dave, nor for carol who left.
    for conn in [&mut dave_conn, &mut carol_conn] {
        let r = conn.request(Request::GetGroupInfo { group: g }).await;
        assert_eq!(code(r), ErrorCode::NotMember);
    }
    // bob lost his state: he rejoins from it, by himself.
    let (epoch, group_info, ratchet_tree) = get_group_info(&mut bob_conn, g).await;
    assert_eq!(epoch, 2);
    let rejoin = bob.rejoin(g, &group_info.0, &ratchet_tree.0);
    let r = bob_conn.request(Request::Commit(rejoin)).await.unwrap();
    assert_eq!(r, Response::Committed { epoch: 3 });
    let got = drain(&mut w.login(&alice).await).await;
    let commit = got
        .iter()
        .find(|d| d.envelope.kind == EnvelopeKind::Commit)
        .expect("bob's rejoin");
    assert!(matches!(
        alice.process(g, &commit.envelope.payload.0).unwrap(),
        sotto_core::mls::Processed::Commit { epoch: 3, .. }
    ));
    assert_eq!(alice.epoch(g), bob.epoch(g));
    // dave cannot join a group he was never in, even with its GroupInfo
    // (bob hands him the current one).
    let (_, group_info, ratchet_tree) = get_group_info(&mut bob_conn, g).await;
    invalid(
        dave_conn
            .request(Request::Commit(dave.rejoin(
                g,
                &group_info.0,
                &ratchet_tree.0,
            )))
            .await,
        "only a device of a member account joins by itself",
    );
}

/// `AccountDeviceList` for `account`'s key on `conn`: the signed list and
/// its live devices.
async fn account_devices(
    conn: &mut Connection,
    account: &sotto_core::AccountKey,
) -> (SignedDeviceList, Vec<DeviceId>) {
    let t = sotto_proto::account_proof_transcript(&conn.hello().challenge, &account.id());
    match conn
        .request(Request::AccountDeviceList {
            account: account.id(),
            signature: account.sign(&t),
        })
        .await
        .unwrap()
    {
        Response::AccountDevices { list, live } => (list, live),
        other => panic!("{other:?}"),
    }
}

/// `Restore` of `new` with `list`, its device signature over `challenge`.
fn restore_request(new: &Device, challenge: &[u8; 32], list: SignedDeviceList) -> Request {
    let t = sotto_proto::restore_transcript(challenge, &list.account, &new.id());
    Request::Restore(Box::new(RestoreRequest {
        version: PROTOCOL_VERSION,
        device: new.id(),
        device_list: list,
        device_signature: new.device.sign(&t),
    }))
}

/// `AccountDeviceList` then `Restore` on a new connection, for `new`, a
/// new device of `old`'s account: the list it signs holds the account's
/// live devices and `new`.
async fn restore(
    w: &World,
    old: &Device,
    new: &Device,
) -> (Connection, Result<Response, ClientError>) {
    let mut conn = w.connect().await;
    let (current, mut devices) = account_devices(&mut conn, &old.account).await;
    devices.push(new.id());
    let list = old.account.sign_device_list(current.version + 1, devices);
    let req = restore_request(new, &conn.hello().challenge, list);
    let r = conn.request(req).await;
    (conn, r)
}

/// A device restored from a backup, with no other device alive to
/// approve it: the account key alone signs it in (and nothing less does),
/// it reads the GroupInfo of its account's groups, and joins them beside
/// its account's device, on its signed list; a stranger's device cannot.
#[tokio::test]
async fn a_restored_device_signs_in_with_the_account_key_and_joins_its_accounts_groups() {
    let w = World::new().await;
    let (alice, mut alice_conn) = w.person("alice").await;
    let (bob, _) = w.person("bob").await;
    let g = GroupId([9; 32]);
    create_group(&mut alice_conn, g, &alice, &[&bob]).await;

    // Without the account key: the device list is not handed out, and a
    // list another key signed, or a device signature over another
    // challenge, signs nobody in.
    let mallory = Device::new("alice");
    let mut conn = w.connect().await;
    let t = sotto_proto::account_proof_transcript(&conn.hello().challenge, &alice.account.id());
    let r = conn
        .request(Request::AccountDeviceList {
            account: alice.account.id(),
            signature: mallory.account.sign(&t),
        })
        .await;
    assert_eq!(code(r), ErrorCode::AuthFailed);
    let mut conn = w.connect().await;
    let mut forged = mallory
        .account
        .sign_device_list(2, vec![alice.id(), mallory.id()]);
    forged.account = alice.account.id();
    let req = restore_request(&mallory, &conn.hello().challenge, forged);
    let r = conn.request(req).await;
    assert_eq!(code(r), ErrorCode::AuthFailed);
    let alice2 = alice.new_device();
    let mut conn = w.connect().await;
    let list = alice
        .account
        .sign_device_list(2, vec![alice.id(), alice2.id()]);
    let r = conn.request(restore_request(&alice2, &[0; 32], list)).await;
    assert_eq!(code(r), ErrorCode::AuthFailed);

    // With it: signed in, and on the account's list beside the old device.
    let (mut conn2, r) = restore(&w, &alice, &alice2).await;
    match r.unwrap() {
        Response::LoggedIn(s) => {
            assert_eq!((s.account, s.device), (alice.account.id(), alice2.id()));
            assert_eq!(s.handle, alice.handle);
        }
        other => panic!("{other:?}"),
    }
    match conn2
        .request(Request::GetDeviceList {
            account: alice.account.id(),
        })
        .await
        .unwrap()
    {
        Response::DeviceList(l) => {
            assert_eq!((l.version, l.devices), (2, vec![alice.id(), alice2.id()]));
        }
        other => panic!("{other:?}"),
    }
    // It logs in like any device from now on; the old one still does.
    drop(w.login(&alice2).await);
    drop(w.login(&alice).await);

    // It joins the group beside alice's first device, vouched for by its
    // list; the server routes to both from then on.
    let list = alice
        .account
        .sign_device_list(2, vec![alice.id(), alice2.id()]);
    let (_, group_info, ratchet_tree) = get_group_info(&mut conn2, g).await;
    let join = alice2.join_restored(g, &group_info.0, &ratchet_tree.0, &list);
    let r = conn2.request(Request::Commit(join)).await.unwrap();
    assert_eq!(r, Response::Committed { epoch: 2 });
    alice
        .process(
            g,
            &drain(&mut w.login(&alice).await).await[0]
                .envelope
                .payload
                .0,
        )
        .unwrap();
    assert_eq!(alice.epoch(g), alice2.epoch(g));

    // A revoked (or wiped) device stays gone: a restore leaves it out, and
    // a list that names it is refused.
    let only2 = alice.account.sign_device_list(3, vec![alice2.id()]);
    let r = conn2
        .request(Request::PublishDeviceList(only2))
        .await
        .unwrap();
    assert_eq!(r, Response::DeviceListStored { version: 3 });
    let alice3 = alice.new_device();
    let mut conn = w.connect().await;
    let (_, live) = account_devices(&mut conn, &alice.account).await;
    assert_eq!(live, [alice2.id()]);
    let list = alice
        .account
        .sign_device_list(4, vec![alice.id(), alice2.id(), alice3.id()]);
    let req = restore_request(&alice3, &conn.hello().challenge, list);
    let r = conn.request(req).await;
    let e = server_error(r);
    assert_eq!(e.code, ErrorCode::InvalidRequest, "{e:?}");
    assert!(e.message.contains("no longer has"), "{e:?}");
    // Nor does a revoked device come back by restoring itself.
    let (_, r) = restore(&w, &alice, &alice).await;
    let e = server_error(r);
    assert_eq!(e.code, ErrorCode::InvalidRequest, "{e:?}");
    assert!(e.message.contains("revoked"), "{e:?}");
    let (_, r) = restore(&w, &alice, &alice3).await;
    assert!(matches!(r, Ok(Response::LoggedIn(_))), "{r:?}");

    // A stranger's device restored into its own account gets neither the
    // group's GroupInfo nor in.
    let (dave, _) = w.person("dave").await;
    let dave2 = dave.new_device();
    let (mut dave_conn, r) = restore(&w, &dave, &dave2).await;
    assert!(matches!(r, Ok(Response::LoggedIn(_))), "{r:?}");
    let r = dave_conn.request(Request::GetGroupInfo { group: g }).await;
    assert_eq!(code(r), ErrorCode::NotMember);
}
