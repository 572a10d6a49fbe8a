//! Shared by the client tests: registration, and traffic under faults (the
//! crash and cluster tests): people send to each other (one-to-one and in a
//! group) through whatever is being broken; afterwards every message the
//! server acknowledged must have reached every other member exactly once,
//! in the order its sender sent it.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::time::Duration;

use sotto_client::{Client, ReceiveEvent, RegisterOptions, ServerLink, Suite};
use sotto_proto::Handle;

pub const PASS: &str = "fault test passphrase";

/// Registers `name` in `dir` through `link` with `invite`.
pub async fn register(dir: &std::path::Path, link: &str, invite: String, name: &str) -> Client {
    let opts = RegisterOptions {
        link: ServerLink::parse(link).unwrap(),
        handle: Handle::new(name).unwrap(),
        invite: Some(invite),
        suite: Suite::PostQuantum,
    };
    Client::register(&dir.join(name), PASS, opts).await.unwrap()
}

/// A raw protocol client with an MLS state of its own, registered with
/// fresh keys (and `key_packages` KeyPackages on the server): what an
/// attacker with an account can do.
pub struct Raw {
    pub member: sotto_test_support::mls::Member,
    pub conn: sotto_client::transport::Connection,
}

impl Raw {
    pub async fn register(link: &str, invite: String, name: &str, key_packages: usize) -> Self {
        use openmls::prelude::tls_codec::Serialize as _;
        use sotto_proto::{Blob, PROTOCOL_VERSION, RegisterRequest, Request, Response};
        let member = sotto_test_support::mls::Member::new(name);
        let mut conn =
            sotto_client::transport::Connection::connect(&ServerLink::parse(link).unwrap())
                .await
                .unwrap();
        let t = sotto_proto::register_transcript(
            &conn.hello().challenge,
            &member.handle,
            &member.account.id(),
            &member.id(),
        );
        let r = conn
            .request(Request::Register(Box::new(RegisterRequest {
                version: PROTOCOL_VERSION,
                handle: member.handle.clone(),
                account: member.account.id(),
                device: member.id(),
                invite: Some(invite),
                pow_nonce: None,
                account_signature: member.account.sign(&t),
                device_signature: member.device.sign(&t),
                device_list: member.list(),
            })))
            .await
            .unwrap();
        assert!(matches!(r, Response::LoggedIn(_)), "{r:?}");
        if key_packages > 0 {
            let kps = (0..key_packages)
                .map(|_| Blob(member.key_package().tls_serialize_detached().unwrap()))
                .collect();
            let r = conn
                .request(Request::UploadKeyPackages(sotto_proto::UploadKeyPackages {
                    key_packages: kps,
                    last_resort: None,
                }))
                .await
                .unwrap();
            assert!(matches!(r, Response::KeyPackagesStored { .. }), "{r:?}");
        }
        Self { member, conn }
    }

    pub fn device(&self) -> sotto_proto::DeviceId {
        self.member.id()
    }

    /// Takes what its mailbox holds: joins from a Welcome, applies commits.
    pub async fn take_mail(&mut self, g: sotto_proto::GroupId) {
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(2), self.conn.next_event()).await;
            let Ok(ev) = ev else { return };
            let sotto_client::transport::Event::Deliver(d) = ev.unwrap() else {
                continue;
            };
            match d.envelope.kind {
                sotto_proto::EnvelopeKind::Welcome => self.member.join(&d.envelope.payload.0),
                _ if d.envelope.group == g => {
                    let _ = self.member.process(g, &d.envelope.payload.0);
                }
                _ => {}
            }
            self.conn
                .request(sotto_proto::Request::Ack { seqs: vec![d.seq] })
                .await
                .unwrap();
        }
    }

    /// Claims `handle`'s KeyPackages and creates group `g` with them.
    pub fn create_request_with(
        &self,
        g: sotto_proto::GroupId,
        claimed: &sotto_proto::ClaimedKeyPackages,
    ) -> sotto_proto::CommitRequest {
        let kps = claimed
            .devices
            .iter()
            .map(|d| {
                self.member
                    .verify(&d.key_package.0, claimed.account, d.device)
            })
            .collect();
        self.member
            .create_with(g, kps, vec![claimed.device_list.clone()])
    }

    /// Claims the KeyPackages of `handle`.
    pub async fn claim(&mut self, handle: &str) -> sotto_proto::ClaimedKeyPackages {
        use sotto_proto::{Request, Response};
        match self
            .conn
            .request(Request::ClaimKeyPackages {
                handle: Handle::new(handle).unwrap(),
            })
            .await
            .unwrap()
        {
            Response::KeyPackages(c) => c,
            other => panic!("expected key packages, got {other:?}"),
        }
    }
}

/// Retries an operation while its failure is temporary (a server being
/// killed, a database restarting).
#[macro_export]
macro_rules! persist {
    ($op:expr) => {{
        let mut tries = 0;
        loop {
            match $op.await {
                Ok(v) => break v,
                Err(e) if e.is_temporary() => {
                    tries += 1;
                    assert!(tries < 600, "the service never came back: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
    }};
}

/// What a traffic run produced.
pub struct Traffic {
    pub clients: Vec<Client>,
    /// (sender index, conversation, text) of every acknowledged send.
    pub acked: Vec<(usize, String, String)>,
    /// (sender handle, text) shown to each client.
    pub delivered: HashMap<usize, Vec<(String, String)>>,
    /// Sends answered with a temporary failure (retried, or queued).
    pub temporary_errors: usize,
}

/// Creates the group `crew` of everyone and a one-to-one conversation of
/// each person with the next, before any fault.
pub async fn set_up_conversations(clients: &mut [Client], names: &[&str]) {
    let others: Vec<&str> = names[1..].to_vec();
    persist!(clients[0].group_create("crew", &others));
    for i in 0..names.len() {
        let peer = names[(i + 1) % names.len()];
        persist!(clients[i].send(peer, "hello"));
    }
    for c in clients.iter_mut() {
        persist!(c.receive(Duration::ZERO, |_| {}));
    }
}

/// Each client sends `per_sender` messages, alternating between `crew` and
/// a one-to-one conversation with the next person; a send counts as
/// acknowledged when `send` returned Ok (or the message was queued and a
/// later command flushed it).
pub async fn send_traffic(
    clients: Vec<Client>,
    names: &[&'static str],
    per_sender: usize,
) -> Traffic {
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let names = names.to_vec();
        let peer = names[(i + 1) % names.len()];
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut temporary = 0;
            let mut seen: Vec<(String, String)> = Vec::new();
            for k in 0..per_sender {
                let (to, text) = if k % 2 == 0 {
                    ("crew".to_owned(), format!("{} #{k} to crew", names[i]))
                } else {
                    (peer.to_owned(), format!("{} #{k} to {peer}", names[i]))
                };
                // A send that reached the outbox is never repeated: the
                // next command that reaches the server sends it (and the
                // server drops a second copy by its id).
                loop {
                    match c.send(&to, &text).await {
                        Ok(sotto_client::Sent::Accepted(_)) => break,
                        Ok(sotto_client::Sent::Queued(_)) => {
                            temporary += 1;
                            persist!(c.receive(Duration::ZERO, |ev| {
                                if let ReceiveEvent::Message(m) = ev {
                                    seen.push((m.sender.clone(), m.text.clone()));
                                }
                            }));
                            break;
                        }
                        Err(e) if e.is_temporary() => {
                            temporary += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await
                        }
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
                acked.push((to, text));
            }
            (c, acked, seen, temporary)
        }));
    }
    let mut out = Traffic {
        clients: Vec::new(),
        acked: Vec::new(),
        delivered: HashMap::new(),
        temporary_errors: 0,
    };
    for (i, t) in tasks.into_iter().enumerate() {
        let (c, a, seen, temporary) = t.await.unwrap();
        out.temporary_errors += temporary;
        out.clients.push(c);
        out.acked
            .extend(a.into_iter().map(|(to, text)| (i, to, text)));
        out.delivered.insert(i, seen);
    }
    out
}

/// The counts of a check.
#[derive(Debug)]
pub struct Counts {
    pub acknowledged: usize,
    pub expected: usize,
    pub delivered: usize,
    pub duplicates: usize,
    pub lost: usize,
}

/// Everyone drains their mailbox (with the service up); then checks that
/// every acknowledged message arrived exactly once, in order per sender.
pub async fn drain_and_check(t: &mut Traffic, names: &[&str]) -> Counts {
    for (i, c) in t.clients.iter_mut().enumerate() {
        for _ in 0..3 {
            let mut got = Vec::new();
            persist!(c.receive(Duration::from_millis(300), |ev| {
                if let ReceiveEvent::Message(m) = ev {
                    got.push((m.sender.clone(), m.text.clone()));
                }
            }));
            t.delivered.entry(i).or_default().extend(got);
        }
    }
    let mut expected = 0;
    let mut lost = 0;
    let mut duplicates = 0;
    for (r, got) in &t.delivered {
        let me = names[*r];
        for (s, to, text) in &t.acked {
            if *s == *r || !(to == "crew" || to == me) {
                continue;
            }
            expected += 1;
            match got.iter().filter(|(_, t)| t == text).count() {
                0 => lost += 1,
                1 => {}
                n => duplicates += n - 1,
            }
        }
        // Per sender, the order of arrival is the order of sending.
        for (s, name) in names.iter().enumerate() {
            if s == *r {
                continue;
            }
            let sent: Vec<&String> = t
                .acked
                .iter()
                .filter(|(x, to, _)| *x == s && (to == "crew" || to == me))
                .map(|(_, _, t)| t)
                .collect();
            let arrived: Vec<&String> = got
                .iter()
                .filter(|(f, _)| f == name)
                .map(|(_, t)| t)
                .collect();
            assert_eq!(arrived, sent, "{me} got {name}'s messages out of order");
        }
    }
    Counts {
        acknowledged: t.acked.len(),
        expected,
        delivered: t.delivered.values().map(Vec::len).sum(),
        duplicates,
        lost,
    }
}
