//! Kill-code guessing against the real server on loopback, from several
//! source addresses (127.0.0.N): wrong guesses lock out the source that
//! made them, never the owner's right code from elsewhere, which only has
//! to carry a proof of work once the account drew many wrong guesses; and
//! the counters live in the store, so a restart keeps them.

mod common;

use std::net::IpAddr;

use common::{Device, World, server_error};
use sotto_client::transport::Connection;
use sotto_proto::{ErrorCode, Handle, Request, Response, WipeRequest};
use sotto_server::{Limits, ServerConfig};

const CODE: &str = "orange-umbrella-42";
const BITS: u8 = 10;

fn config() -> ServerConfig {
    ServerConfig {
        limits: Limits {
            kill_code_pow_bits: BITS,
            ..Limits::default()
        },
        ..ServerConfig::default()
    }
}

fn source(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

async fn from(w: &World, n: u8) -> Connection {
    Connection::connect_from(&w.link, source(n)).await.unwrap()
}

/// Registers `alice` with a kill code for her one device.
async fn alice_with_code(w: &World) -> Device {
    let (alice, mut a) = w.person("alice").await;
    let record = sotto_core::killcode::make_record(&alice.account, 1, CODE, &[alice.id()]).unwrap();
    let r = a.request(Request::SetKillCode(record)).await;
    assert!(matches!(r, Ok(Response::KillCodeStored)), "{r:?}");
    a.close().await;
    alice
}

/// The wipe request of `code` for alice, with the salts the server gives.
async fn request_for(w: &World, code: &str) -> WipeRequest {
    let mut c = w.connect().await;
    let handle = Handle::new("alice").unwrap();
    let Ok(Response::WipeInfo {
        server_salt,
        devices,
    }) = c
        .request(Request::WipeInfo {
            handle: handle.clone(),
        })
        .await
    else {
        panic!("no wipe info");
    };
    sotto_core::killcode::wipe_request(code, handle, &server_salt, &devices).unwrap()
}

fn wrong_guess(i: u32) -> WipeRequest {
    let mut proof = [0u8; 32];
    proof[..4].copy_from_slice(&i.to_le_bytes());
    WipeRequest {
        handle: Handle::new("alice").unwrap(),
        server_proof: proof,
        proofs: Vec::new(),
    }
}

/// One guess on a fresh connection from 127.0.0.`n`, paying the proof of
/// work when the server asks for it.
async fn guess(w: &World, n: u8, req: WipeRequest) -> Result<Response, sotto_proto::ProtoError> {
    let mut c = from(w, n).await;
    match c.request(Request::Wipe(req.clone())).await {
        Err(sotto_client::ClientError::Server(e)) => {
            let ErrorCode::ProofOfWorkRequired { bits } = e.code else {
                return Err(e);
            };
            let nonce = sotto_proto::pow::solve_wipe(
                &c.hello().challenge,
                req.handle.as_str(),
                &req.server_proof,
                bits,
            );
            c.request(Request::WipeWithWork {
                wipe: req,
                pow_nonce: nonce,
            })
            .await
            .map_err(|e| server_error(Err(e)))
        }
        other => Ok(other.unwrap()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owners_right_code_works_after_others_spent_many_wrong_guesses() {
    let w = World::with(config()).await;
    let _alice = alice_with_code(&w).await;
    let right = request_for(&w, CODE).await;

    // Twenty sources spend five wrong guesses each: a hundred in the window.
    let mut n = 0;
    for s in 2..22u8 {
        for _ in 0..5 {
            n += 1;
            let e = guess(&w, s, wrong_guess(n)).await.unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidKillCode, "{e:?}");
        }
        // That source is out of guesses, the right code included.
        let e = guess(&w, s, right.clone()).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited, "{e:?}");
        assert!(e.retry_after_ms.is_some(), "{e:?}");
    }
    // Past the account's allowance a bare guess is not even checked.
    let mut c = from(&w, 30).await;
    let e = server_error(c.request(Request::Wipe(right.clone())).await);
    assert_eq!(e.code, ErrorCode::ProofOfWorkRequired { bits: BITS });
    let e = server_error(
        c.request(Request::WipeWithWork {
            wipe: right.clone(),
            pow_nonce: u64::MAX,
        })
        .await,
    );
    assert_eq!(e.code, ErrorCode::ProofOfWorkRequired { bits: BITS });

    // The owner, from elsewhere, with the right code: the wipe is queued.
    let queued = sotto_client::killcode::wipe(&w.link, &Handle::new("alice").unwrap(), CODE)
        .await
        .expect("the right code works");
    assert_eq!(queued, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_code_guesses_survive_a_restart() {
    let dir = tempfile::TempDir::new().unwrap();
    let w = World::at(dir.path(), config()).await;
    let _alice = alice_with_code(&w).await;
    let right = request_for(&w, CODE).await;
    for i in 0..5 {
        let e = guess(&w, 2, wrong_guess(i)).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidKillCode, "{e:?}");
    }
    w.stop().await;

    let w = World::at(dir.path(), config()).await;
    // The source that guessed is still locked out, the right code included.
    let e = guess(&w, 2, right.clone()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::RateLimited, "{e:?}");
    // The account still remembers its wrong guesses: work is required.
    let mut c = from(&w, 3).await;
    let e = server_error(c.request(Request::Wipe(right.clone())).await);
    assert_eq!(e.code, ErrorCode::ProofOfWorkRequired { bits: BITS });
    // And with it, the right code from another source works.
    let r = guess(&w, 3, right).await;
    assert!(
        matches!(r, Ok(Response::WipeQueued { devices: 1 })),
        "{r:?}"
    );
}
