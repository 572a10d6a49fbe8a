//! The client's processing of server frames under arbitrary bytes, on a
//! real client: registered on a real server, in a one-to-one conversation
//! and a group, with its encrypted store. The first input byte chooses the
//! form: even, the rest is a raw frame; odd, a real delivery captured from
//! the server (chosen by the second byte) with its message id replaced and
//! its payload, kind and sender mutated by the rest. Among the real
//! deliveries are hostile texts (escape sequences, `\r`, bidirectional
//! overrides), a group renamed to a contact's handle, and every kind of
//! typed content (a reply, reactions, an edit, a deletion for everyone,
//! receipts). Processing must
//! return a result, never panic, and leave the store readable; no group
//! name it keeps hides or reorders text (C10).
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use sotto_client::{Change, Client, RegisterOptions, ServerLink, Suite};
use sotto_proto::{Delivery, EnvelopeKind, Handle, MessageId, ServerFrame};
use sotto_server::ServerConfig;
use sotto_server::store::Store as _;
use sotto_test_support::InProcessServer;

const PASS: &str = "fuzz passphrase";

/// A text that tries to steer a terminal (title, clear screen, bell, C1
/// CSI, bidirectional override, `\r` over the line).
const HOSTILE: &str = "hi\x1b]0;pwned\x07\x1b[2J\u{9b}31m\u{202e}gnp.exe\rbank: send money\x7f";

struct Harness {
    client: Mutex<Client>,
    templates: Vec<Delivery>,
    _server: InProcessServer,
    _rt: tokio::runtime::Runtime,
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

async fn person(tmp: &std::path::Path, server: &InProcessServer, name: &str) -> Client {
    let opts = RegisterOptions {
        link: ServerLink::parse(&server.link).expect("link"),
        handle: Handle::new(name).expect("handle"),
        invite: Some(server.invite()),
        suite: Suite::PostQuantum,
    };
    Client::register(&tmp.join(name), PASS, opts)
        .await
        .expect("register")
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
        let (server, alice, templates) = rt.block_on(async {
            let server = InProcessServer::start(tmp.path(), ServerConfig::default()).await;
            let mut alice = person(tmp.path(), &server, "alice").await;
            let mut bob = person(tmp.path(), &server, "bob").await;
            let mut carol = person(tmp.path(), &server, "carol").await;
            bob.send("alice", "hello alice").await.expect("send");
            bob.group_create("crew", &["alice", "carol"])
                .await
                .expect("group");
            carol
                .receive(std::time::Duration::ZERO, |_| {})
                .await
                .expect("receive");
            bob.send("alice", HOSTILE).await.expect("send");
            bob.send("crew", HOSTILE).await.expect("send");
            // Every kind of content, on the first message of each.
            let first = bob.history("crew").expect("history")[0].id;
            let direct = bob.history("alice").expect("history")[0].id;
            bob.send_reply("crew", first, HOSTILE).await.expect("reply");
            for (to, id) in [("crew", first), ("alice", direct)] {
                let changes = [
                    Change::React {
                        to: id,
                        emoji: Some("👍".into()),
                    },
                    Change::React {
                        to: id,
                        emoji: None,
                    },
                    Change::Edit {
                        of: id,
                        text: HOSTILE.into(),
                    },
                    Change::Delete { of: id },
                ];
                for c in changes {
                    bob.change(to, c).await.expect("change");
                }
            }
            // Carol's receipts for the group's messages.
            carol
                .receive(std::time::Duration::ZERO, |_| {})
                .await
                .expect("receive");
            for i in 0..3 {
                bob.send("alice", &format!("one to one {i}"))
                    .await
                    .expect("send");
                bob.send("crew", &format!("to the group {i}"))
                    .await
                    .expect("send");
                carol
                    .send("crew", &format!("carol {i}"))
                    .await
                    .expect("send");
            }
            // A group named after alice's contact carol (a name alice's
            // client must not let shadow the handle).
            bob.group_rename("crew", "carol").await.expect("rename");
            // Everything in alice's mailbox, as the server would deliver it.
            let store = server.data.store().expect("store");
            let me = alice.identity().device;
            let entries = store
                .fetch(me, 0, 1000, sotto_test_support::now_ms())
                .await
                .expect("fetch");
            let templates: Vec<Delivery> = entries
                .into_iter()
                .map(|e| Delivery {
                    seq: e.seq,
                    envelope: e.envelope,
                })
                .collect();
            assert!(templates.len() >= 10, "{} deliveries", templates.len());
            // Alice processes the first half for real: she joins both
            // conversations; the rest stay undelivered, for mutation.
            for d in &templates[..templates.len() / 2] {
                let bytes = sotto_proto::encode_server(&ServerFrame::Deliver(d.clone()));
                alice.process_server_frame(&bytes).expect("a real delivery");
            }
            (server, alice, templates)
        });
        Harness {
            client: Mutex::new(alice),
            templates,
            _server: server,
            _rt: rt,
            _tmp: tmp,
            _sigpipe: sigpipe,
        }
    })
}

fn mutated(h: &Harness, data: &[u8]) -> Option<Vec<u8>> {
    let (&pick, rest) = data.split_first()?;
    let mut d = h.templates[usize::from(pick) % h.templates.len()].clone();
    let (id, rest) = rest.split_at(rest.len().min(16));
    let mut msg_id = [0u8; 16];
    msg_id[..id.len()].copy_from_slice(id);
    d.envelope.msg_id = MessageId(msg_id);
    let mut rest = rest;
    if let Some((&k, r)) = rest.split_first() {
        // Now and then another kind, or another sender.
        match k {
            0 => d.envelope.kind = EnvelopeKind::Commit,
            1 => d.envelope.kind = EnvelopeKind::Application,
            2 => d.envelope.kind = EnvelopeKind::Welcome,
            3 => d.envelope.kind = EnvelopeKind::Wipe,
            4 => d.envelope.kind = EnvelopeKind::Device,
            5 => {
                let other = &h.templates[usize::from(pick / 2) % h.templates.len()];
                d.envelope.sender = other.envelope.sender;
            }
            6 => d.envelope.kind = EnvelopeKind::Proposal,
            _ => {}
        }
        rest = r;
    }
    // (position u16 LE, xor byte) triples, then a truncation.
    let p = &mut d.envelope.payload.0;
    let mut chunks = rest.chunks_exact(3);
    for c in &mut chunks {
        if p.is_empty() {
            break;
        }
        let at = usize::from(u16::from_le_bytes([c[0], c[1]])) % p.len();
        p[at] ^= c[2];
    }
    if let [cut] = chunks.remainder() {
        let keep = p.len().saturating_sub(usize::from(*cut));
        p.truncate(keep);
    }
    Some(sotto_proto::encode_server(&ServerFrame::Deliver(d)))
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        match mutated(h, rest) {
            Some(b) => b,
            None => return,
        }
    };
    let mut client = h.client.lock().unwrap_or_else(|p| p.into_inner());
    let _ = client.process_server_frame(&bytes);
    client.contacts().expect("the store stays readable");
    for c in client.conversations().expect("the store stays readable") {
        if c.is_group {
            assert!(
                sotto_client::names::group_name(&c.name) == Some(c.name.as_str())
                    || c.name.starts_with("unnamed group #"),
                "a group name that hides text: {:?}",
                c.name
            );
        }
    }
});
