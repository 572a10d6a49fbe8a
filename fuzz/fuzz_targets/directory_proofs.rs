//! Key-directory proofs under arbitrary bytes, through the checks every
//! client runs (`sotto_rules::directory`): a lookup proof, a history proof
//! and an append-only proof from a real directory (the server's, on a
//! SQLite store, with entries published over several epochs). The first
//! input byte chooses the proof and the form: raw bytes, or the real proof
//! with (position, xor) mutations and a truncation. Decoding and
//! verifying must return a result, never panic; and a mutated lookup or
//! history proof that still verifies must say exactly what the real one
//! says (anything else would be a forged entry).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sotto_proto::{AccountId, DeviceId, DirectoryRoot, Handle, Signature, SignedDeviceList};
use sotto_rules::directory::{self as d, Entry, Verified};
use sotto_server::directory::{KeyDirectory, VrfKey};

struct Harness {
    key: [u8; 32],
    handle: Handle,
    lookup: (DirectoryRoot, Vec<u8>, Verified),
    history: (DirectoryRoot, Vec<u8>, Vec<Verified>),
    audit: (Vec<[u8; 32]>, Vec<u8>),
    rt: tokio::runtime::Runtime,
    _tmp: tempfile::TempDir,
}

fn list(n: u8, version: u64) -> SignedDeviceList {
    SignedDeviceList {
        account: AccountId([n; 32]),
        version,
        devices: (0..version).map(|i| DeviceId([n ^ i as u8; 32])).collect(),
        signature: Signature([0; 64]),
    }
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let tmp = tempfile::TempDir::new().expect("temp dir");
        let store = sotto_server::store::sqlite::SqliteStore::open(&tmp.path().join("server.db"))
            .expect("store");
        let dir = KeyDirectory::new(store, VrfKey::from_bytes([3; 32]));
        let key = dir.vrf_public();
        let handle = Handle::new("alice").expect("handle");
        let (lookup, history, audit) = rt.block_on(async {
            for (n, name) in [(2u8, "bob"), (3, "carol"), (4, "dave")] {
                let h = Handle::new(name).expect("handle");
                dir.publish(&h, Entry::of(&list(n, 1)))
                    .await
                    .expect("publish");
            }
            for v in 1..=3 {
                dir.publish(&handle, Entry::of(&list(1, v)))
                    .await
                    .expect("publish");
            }
            let (root, proof) = dir.lookup(&handle).await.expect("lookup");
            let v = d::verify_lookup(&key, root, &handle, &proof).expect("a real lookup proof");
            let (hroot, hproof) = dir.history(&handle).await.expect("history");
            let h = d::verify_history(&key, hroot, &handle, &hproof).expect("a real history");
            let audit = dir.audit(0, hroot.epoch).await.expect("audit");
            ((root, proof, v), (hroot, hproof, h), audit)
        });
        Harness {
            key,
            handle,
            lookup,
            history,
            audit,
            rt,
            _tmp: tmp,
        }
    })
}

/// `real` with (position u16 LE, xor byte) triples from `data`, then a
/// truncation by the leftover byte.
fn mutate(real: &[u8], data: &[u8]) -> Vec<u8> {
    let mut p = real.to_vec();
    let mut chunks = data.chunks_exact(3);
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
    p
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let raw = mode & 1 == 0;
    match (mode >> 1) % 3 {
        0 => {
            let (root, real, want) = &h.lookup;
            let bytes = if raw {
                rest.to_vec()
            } else {
                mutate(real, rest)
            };
            if let Ok(got) = d::verify_lookup(&h.key, *root, &h.handle, &bytes) {
                assert_eq!(
                    &got, want,
                    "a changed lookup proof verified to another entry"
                );
            }
        }
        1 => {
            let (root, real, want) = &h.history;
            let bytes = if raw {
                rest.to_vec()
            } else {
                mutate(real, rest)
            };
            if let Ok(got) = d::verify_history(&h.key, *root, &h.handle, &bytes) {
                assert_eq!(
                    &got, want,
                    "a changed history proof verified to another history"
                );
            }
        }
        _ => {
            let (roots, real) = &h.audit;
            let bytes = if raw {
                rest.to_vec()
            } else {
                mutate(real, rest)
            };
            if let Ok(proof) = d::decode_audit(&bytes) {
                let _ = h.rt.block_on(akd::auditor::audit_verify::<d::Config>(
                    roots.clone(),
                    proof,
                ));
            }
        }
    }
});
