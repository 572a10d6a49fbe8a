//! A property test of the server against a model: three devices in a group
//! send (with repeated message ids, under small mailbox caps), reconnect,
//! read and acknowledge in random orders. Whatever the order, a send is
//! answered `Accepted` once per message id and `duplicate` after, or
//! refused with `MailboxFull` and stores nothing; in the end every device
//! has acknowledged every accepted message of the others exactly once,
//! with its first payload, and nothing else.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{World, create_group, drain, send, server_error};
use proptest::prelude::*;
use sotto_client::transport::Connection;
use sotto_proto::{ErrorCode, GroupId, Request, Response};
use sotto_server::{Limits, ServerConfig};

#[derive(Debug, Clone)]
enum Op {
    Send { from: usize, id: u8, size: usize },
    Read { who: usize, ack: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3usize, 1..10u8, 1..20_000usize).prop_map(|(from, id, size)| Op::Send { from, id, size }),
        2 => (0..3usize, any::<bool>()).prop_map(|(who, ack)| Op::Read { who, ack }),
    ]
}

/// Reads `conn`'s backlog; acknowledges it if `ack`; returns the
/// acknowledged (sender index, id, payload) triples.
async fn read(conn: &mut Connection, ack: bool) -> Vec<(usize, u8, Vec<u8>)> {
    let got = drain(conn).await;
    if !ack || got.is_empty() {
        return Vec::new();
    }
    let r = conn
        .request(Request::Ack {
            seqs: got.iter().map(|d| d.seq).collect(),
        })
        .await;
    assert!(matches!(r, Ok(Response::Acked)), "{r:?}");
    got.into_iter()
        .filter(|d| d.envelope.kind == sotto_proto::EnvelopeKind::Application)
        .map(|d| {
            // The envelope names no sender: the id says who sent it.
            assert_eq!(d.envelope.sender, sotto_proto::DeviceId::NONE);
            let id = d.envelope.msg_id.0[0];
            (usize::from(id / 16), id % 16, d.envelope.payload.0)
        })
        .collect()
}

async fn run(ops: Vec<Op>) {
    let w = World::with(ServerConfig {
        limits: Limits {
            mailbox_max_messages: 5,
            mailbox_max_bytes: 50_000,
            ..Limits::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let mut devices = Vec::new();
    let mut conns = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let (d, c) = w.person(name).await;
        devices.push(d);
        conns.push(c);
    }
    let g = GroupId([1; 32]);
    create_group(&mut conns[0], g, &devices[0], &[&devices[1], &devices[2]]).await;
    // Each reader starts from a fresh login, so its backlog is complete;
    // the two Welcomes are read first, so that mailboxes hold only what
    // the model sends.
    for c in conns.drain(..) {
        c.close().await;
    }
    for d in &devices[1..] {
        let mut conn = w.login(d).await;
        let welcome = read(&mut conn, true).await;
        assert!(welcome.is_empty(), "only a Welcome before the first send");
        conn.close().await;
    }
    let mut accepted: BTreeMap<(usize, u8), Vec<u8>> = BTreeMap::new();
    let mut acked: Vec<Vec<(usize, u8, Vec<u8>)>> = vec![Vec::new(); 3];
    let mut sender_conns: Vec<Option<Connection>> = vec![None, None, None];
    for op in ops {
        match op {
            Op::Send { from, id, size } => {
                if sender_conns[from].is_none() {
                    sender_conns[from] = Some(w.login(&devices[from]).await);
                }
                let conn = sender_conns[from].as_mut().unwrap();
                // Ids are per group: each sender's are its own (as random
                // ones are).
                let wire_id = u8::try_from(from * 16).unwrap() + id;
                let payload = common::payload(g, wire_id, size);
                match send(conn, g, wire_id, size).await {
                    Ok(Response::Accepted { duplicate: false }) => {
                        let first = accepted.insert((from, id), payload);
                        assert!(first.is_none(), "({from}, {id}) accepted twice");
                    }
                    Ok(Response::Accepted { duplicate: true }) => {
                        assert!(accepted.contains_key(&(from, id)), "a duplicate of nothing");
                    }
                    Err(e) => {
                        let e = server_error(Err(e));
                        assert_eq!(e.code, ErrorCode::MailboxFull, "{e:?}");
                        assert!(
                            !accepted.contains_key(&(from, id)),
                            "refused after acceptance"
                        );
                    }
                    Ok(other) => panic!("{other:?}"),
                }
            }
            Op::Read { who, ack } => {
                let mut conn = w.login(&devices[who]).await;
                acked[who].extend(read(&mut conn, ack).await);
                conn.close().await;
            }
        }
    }
    // Everyone reads to the end.
    for (who, d) in devices.iter().enumerate() {
        let mut conn = w.login(d).await;
        acked[who].extend(read(&mut conn, true).await);
        conn.close().await;
    }
    for (who, got) in acked.iter().enumerate() {
        let mut want: Vec<(usize, u8, Vec<u8>)> = accepted
            .iter()
            .filter(|((from, _), _)| *from != who)
            .map(|((from, id), p)| (*from, *id, p.clone()))
            .collect();
        let mut got = got.clone();
        want.sort();
        got.sort();
        assert_eq!(got, want, "device {who}");
        let unique: BTreeSet<_> = got.iter().collect();
        assert_eq!(
            unique.len(),
            got.len(),
            "device {who} acknowledged a message twice"
        );
    }
    for c in sender_conns.into_iter().flatten() {
        c.close().await;
    }
    tokio::time::timeout(Duration::from_secs(10), w.stop())
        .await
        .expect("server stops");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn accepted_messages_are_delivered_once_and_refused_ones_leave_nothing(
        ops in prop::collection::vec(op(), 1..40)
    ) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(ops));
    }
}
