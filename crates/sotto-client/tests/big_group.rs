//! A group of 200 members against the real server: one full client (the
//! creator, with its encrypted store) and 199 lightweight members built on
//! the real client core with in-memory MLS state, each on its own TLS
//! connection. Everyone joins, everyone reads the creator's message, and the
//! creator reads a member's.

use std::time::Duration;

use openmls_libcrux_crypto::Provider;
use sotto_client::transport::{Connection, Event};
use sotto_client::{Client, ReceiveEvent, RegisterOptions, ServerLink, Suite};
use sotto_core::mls::{self, Processed};
use sotto_core::{AccountKey, AppMessage, Body, CredentialIdentity, DeviceKey};
use sotto_proto::{
    Blob, EnvelopeKind, GroupId, Handle, LoginRequest, MessageId, PROTOCOL_VERSION,
    RegisterRequest, Request, Response, SendRequest, UploadKeyPackages,
};
use sotto_server::ServerConfig;
use sotto_test_support::InProcessServer;
use tempfile::TempDir;

const MEMBERS: usize = 200;

struct Light {
    device: DeviceKey,
    me: CredentialIdentity,
    provider: Provider,
}

async fn light(server: &InProcessServer, link: &ServerLink, name: &str) -> Light {
    let account = AccountKey::generate();
    let device = DeviceKey::generate();
    let me = CredentialIdentity {
        account: account.id(),
        device: device.id(),
        handle: Handle::new(name).unwrap(),
    };
    let provider = Provider::new().unwrap();
    let mut conn = Connection::connect(link).await.unwrap();
    let t = sotto_proto::register_transcript(
        &conn.hello().challenge,
        &me.handle,
        &me.account,
        &me.device,
    );
    let r = conn
        .request(Request::Register(Box::new(RegisterRequest {
            version: PROTOCOL_VERSION,
            handle: me.handle.clone(),
            account: me.account,
            device: me.device,
            invite: Some(server.invite()),
            pow_nonce: None,
            account_signature: account.sign(&t),
            device_signature: device.sign(&t),
            device_list: account.sign_device_list(1, vec![device.id()]),
        })))
        .await
        .unwrap();
    assert!(matches!(r, Response::LoggedIn(_)));
    let kps = mls::key_packages(&provider, &me, &device, Suite::PostQuantum, 1).unwrap();
    conn.request(Request::UploadKeyPackages(UploadKeyPackages {
        key_packages: kps.into_iter().map(Blob).collect(),
        last_resort: None,
    }))
    .await
    .unwrap();
    conn.close().await;
    Light {
        device,
        me,
        provider,
    }
}

impl Light {
    async fn login(&self, link: &ServerLink) -> Connection {
        let mut conn = Connection::connect(link).await.unwrap();
        let t = sotto_proto::login_transcript(&conn.hello().challenge, &self.me.device);
        let r = conn
            .request(Request::Login(LoginRequest {
                version: PROTOCOL_VERSION,
                device: self.me.device,
                signature: self.device.sign(&t),
            }))
            .await
            .unwrap();
        assert!(matches!(r, Response::LoggedIn(_)));
        conn
    }

    /// Joins from the Welcome in the mailbox and returns the texts of the
    /// application messages that follow it.
    async fn join_and_read(&self, link: &ServerLink) -> (GroupId, Vec<String>) {
        let mut conn = self.login(link).await;
        let mut group = None;
        let mut texts = Vec::new();
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(30), conn.next_event())
                .await
                .unwrap()
                .unwrap();
            let Event::Deliver(d) = ev else { break };
            match d.envelope.kind {
                EnvelopeKind::Welcome => {
                    group = Some(
                        mls::join(&self.provider, &d.envelope.payload.0)
                            .unwrap()
                            .group_id,
                    )
                }
                _ => match mls::process(&self.provider, d.envelope.group, &d.envelope.payload.0)
                    .unwrap()
                {
                    Processed::Application { plaintext, .. } => {
                        match AppMessage::decode(&plaintext).unwrap().body {
                            Body::Text(t) => texts.push(t),
                            other => panic!("{other:?}"),
                        }
                    }
                    other => panic!("{other:?}"),
                },
            }
            conn.request(Request::Ack { seqs: vec![d.seq] })
                .await
                .unwrap();
        }
        conn.close().await;
        (group.expect("no welcome"), texts)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_two_hundred_members() {
    let tmp = TempDir::new().unwrap();
    // Two hundred accounts from one address: more than a source may
    // register by default.
    let config = ServerConfig {
        limits: sotto_server::Limits {
            registrations_per_source: sotto_server::Quota {
                count: 1000,
                window: Duration::from_secs(3600),
            },
            ..sotto_server::Limits::default()
        },
        ..ServerConfig::default()
    };
    let server = InProcessServer::start(tmp.path(), config).await;
    let link = ServerLink::parse(&server.link).unwrap();
    let mut members = Vec::new();
    for i in 1..MEMBERS {
        members.push(light(&server, &link, &format!("member{i:03}")).await);
    }
    let mut alice = Client::register(
        &tmp.path().join("alice"),
        "passphrase",
        RegisterOptions {
            link: link.clone(),
            handle: Handle::new("alice").unwrap(),
            invite: Some(server.invite()),
            suite: Suite::PostQuantum,
        },
    )
    .await
    .unwrap();
    let names: Vec<String> = members.iter().map(|m| m.me.handle.to_string()).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let g = alice.group_create("everyone", &refs).await.unwrap();
    alice
        .send("everyone", "hello, all 199 of you")
        .await
        .unwrap();

    let info = alice.groups().unwrap();
    assert_eq!(info[0].members.len(), MEMBERS);

    for m in &members {
        let (joined, texts) = m.join_and_read(&link).await;
        assert_eq!(joined, g);
        assert_eq!(texts, ["hello, all 199 of you"], "{}", m.me.handle);
        assert_eq!(mls::members(&m.provider, g).unwrap().len(), MEMBERS);
    }

    // One member writes back; alice reads it.
    let last = &members[MEMBERS - 2];
    let ct = mls::encrypt(
        &last.provider,
        &last.device,
        g,
        &AppMessage {
            id: MessageId([7; 16]),
            sent_at_ms: 1,
            body: Body::Text("from the back row".into()),
            directory_root: None,
        }
        .encode(),
    )
    .unwrap();
    let mut conn = last.login(&link).await;
    let r = conn
        .request(Request::Send(SendRequest {
            group: g,
            msg_id: MessageId([7; 16]),
            payload: Blob(ct),
            ttl_ms: None,
        }))
        .await
        .unwrap();
    assert_eq!(r, Response::Accepted { duplicate: false });
    let mut got = Vec::new();
    alice
        .receive(Duration::ZERO, |ev| {
            if let ReceiveEvent::Message(m) = ev {
                got.push((m.sender.clone(), m.text.clone()));
            }
        })
        .await
        .unwrap();
    assert_eq!(
        got,
        [(last.me.handle.to_string(), "from the back row".to_owned())]
    );
    server.stop().await;
}
