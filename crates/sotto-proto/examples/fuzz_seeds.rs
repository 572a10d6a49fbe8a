//! Writes the seed inputs of the fuzz targets (`fuzz/seeds/`): one valid
//! encoding of every request the server takes after login, in the framing
//! of `server_requests` (a flag byte, then u16 LE length and frame), and
//! the same frames raw for `wire_decode`. Seeds let libFuzzer start past
//! the decoder. Run: `cargo run -p sotto-proto --example fuzz_seeds`.

use std::path::Path;

use sotto_proto::{
    Blob, BlobId, ClientFrame, CommitRequest, DeviceId, GroupId, Handle, MessageId, ProposeRequest,
    PutBlob, Request, SendRequest, UploadKeyPackages, WipeRequest, encode_client,
};

fn main() -> std::io::Result<()> {
    // The group of the fuzz harness's first account ("actor0").
    let mut g = [0u8; 32];
    g[..6].copy_from_slice(b"actor0");
    let group = GroupId(g);
    let handle = |h: &str| Handle::new(h).expect("handle");
    let requests = vec![
        Request::Ping,
        Request::Send(SendRequest {
            group,
            msg_id: MessageId([1; 16]),
            payload: Blob(vec![0xab; 40]),
            ttl_ms: Some(60_000),
        }),
        Request::Ack {
            seqs: vec![1, 2, 3],
        },
        Request::ClaimKeyPackages {
            handle: handle("bob"),
        },
        Request::Commit(CommitRequest {
            group,
            epoch: 1,
            msg_id: MessageId([2; 16]),
            commit: Blob(vec![1, 2, 3]),
            group_info: Blob(vec![3, 2, 1]),
            welcome: Some(Blob(vec![4, 5, 6])),
            base: None,
        }),
        Request::UploadKeyPackages(UploadKeyPackages {
            key_packages: vec![Blob(vec![7; 20])],
            last_resort: Some(Blob(vec![8; 20])),
        }),
        Request::GetDeviceList {
            account: sotto_proto::AccountId([3; 32]),
        },
        Request::ClaimDeviceKeyPackage {
            device: DeviceId([4; 32]),
        },
        Request::GetKillRecord,
        Request::WipeInfo {
            handle: handle("bob"),
        },
        Request::Wipe(WipeRequest {
            handle: handle("bob"),
            server_proof: [5; 32],
            proofs: vec![(DeviceId([6; 32]), [7; 32])],
        }),
        Request::PutBlob(PutBlob {
            blob: BlobId([8; 16]),
            group,
            offset: 0,
            total: 10,
            data: Blob(vec![1; 10]),
        }),
        Request::GetBlob {
            blob: BlobId([8; 16]),
            offset: 0,
        },
        Request::BlobFetched {
            blob: BlobId([8; 16]),
        },
        Request::SendToDevice {
            device: DeviceId([4; 32]),
            msg_id: MessageId([9; 16]),
            payload: Blob(vec![1; 10]),
        },
        Request::Propose(ProposeRequest {
            group,
            msg_id: MessageId([10; 16]),
            proposal: Blob(vec![2; 20]),
        }),
        Request::GetGroupInfo { group },
        Request::WipeWithWork {
            wipe: WipeRequest {
                handle: handle("bob"),
                server_proof: [5; 32],
                proofs: Vec::new(),
            },
            pow_nonce: 7,
        },
        Request::Block {
            account: sotto_proto::AccountId([3; 32]),
        },
        Request::Unblock {
            account: sotto_proto::AccountId([3; 32]),
        },
        Request::Leave { group },
        Request::AccountDeviceList {
            account: sotto_proto::AccountId([3; 32]),
            signature: sotto_proto::Signature([4; 64]),
        },
        Request::Restore(Box::new(sotto_proto::RestoreRequest {
            version: sotto_proto::PROTOCOL_VERSION,
            device: DeviceId([5; 32]),
            device_list: sotto_proto::SignedDeviceList {
                account: sotto_proto::AccountId([3; 32]),
                version: 2,
                devices: vec![DeviceId([5; 32])],
                signature: sotto_proto::Signature([6; 64]),
            },
            device_signature: sotto_proto::Signature([7; 64]),
        })),
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
    for t in ["server_requests", "wire_decode"] {
        std::fs::create_dir_all(root.join(t))?;
    }
    for (i, body) in requests.into_iter().enumerate() {
        let req = u32::try_from(i).unwrap_or(0) + 1;
        let frame = encode_client(&ClientFrame { req, body });
        std::fs::write(root.join(format!("wire_decode/{i:02}")), &frame)?;
        let len = u16::try_from(frame.len()).expect("a small frame");
        let mut input = vec![1u8]; // logged in
        input.extend_from_slice(&len.to_le_bytes());
        input.extend_from_slice(&frame);
        std::fs::write(root.join(format!("server_requests/{i:02}")), input)?;
    }
    Ok(())
}
