//! Property tests of the codec over structured frames: every request and
//! server frame round-trips; every truncation, an appended byte and any
//! single-byte change are answered with `Ok` or a `DecodeError`, never a
//! panic; whatever a changed frame decodes to encodes back to a frame that
//! decodes to the same value. (Raw bytes are the fuzz target's job:
//! `fuzz/fuzz_targets/wire_decode.rs`.)

use proptest::prelude::*;
use sotto_proto::{
    Blob, BlobId, ClientFrame, CommitRequest, Delivery, DeviceId, Envelope, EnvelopeKind,
    ErrorCode, GroupId, Handle, LoginRequest, MessageId, ProposeRequest, ProtoError, PutBlob,
    Request, Response, SendRequest, ServerFrame, Signature, UploadKeyPackages, decode_client,
    decode_server, encode_client, encode_server,
};

fn blob() -> impl Strategy<Value = Blob> {
    prop::collection::vec(any::<u8>(), 0..300).prop_map(Blob)
}

fn device() -> impl Strategy<Value = DeviceId> {
    any::<[u8; 32]>().prop_map(DeviceId)
}

fn handle() -> impl Strategy<Value = Handle> {
    prop::collection::vec(0u8..26, 3..20).prop_map(|v| {
        let s: String = v.into_iter().map(|b| char::from(b'a' + b)).collect();
        Handle::new(&s).expect("lowercase letters make a handle")
    })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Ping),
        (
            any::<[u8; 32]>(),
            any::<[u8; 16]>(),
            blob(),
            any::<Option<u64>>()
        )
            .prop_map(|(g, id, payload, ttl_ms)| Request::Send(SendRequest {
                group: GroupId(g),
                msg_id: MessageId(id),
                payload,
                ttl_ms,
            })),
        prop::collection::vec(any::<u64>(), 0..20).prop_map(|seqs| Request::Ack { seqs }),
        handle().prop_map(|handle| Request::ClaimKeyPackages { handle }),
        handle().prop_map(|handle| Request::WipeInfo { handle }),
        (any::<[u8; 32]>(), any::<[u8; 16]>(), blob()).prop_map(|(g, id, proposal)| {
            Request::Propose(ProposeRequest {
                group: GroupId(g),
                msg_id: MessageId(id),
                proposal,
            })
        }),
        any::<[u8; 32]>().prop_map(|g| Request::GetGroupInfo { group: GroupId(g) }),
        (handle(), any::<[u8; 32]>(), any::<u64>()).prop_map(|(handle, proof, pow_nonce)| {
            Request::WipeWithWork {
                wipe: sotto_proto::WipeRequest {
                    handle,
                    server_proof: proof,
                    proofs: Vec::new(),
                },
                pow_nonce,
            }
        }),
        any::<[u8; 32]>().prop_map(|a| Request::Block {
            account: sotto_proto::AccountId(a)
        }),
        any::<[u8; 32]>().prop_map(|a| Request::Unblock {
            account: sotto_proto::AccountId(a)
        }),
        any::<[u8; 32]>().prop_map(|g| Request::Leave { group: GroupId(g) }),
        (
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<[u8; 16]>(),
            blob(),
            blob(),
            prop::option::of(blob()),
            prop::option::of(blob()),
        )
            .prop_map(|(g, epoch, id, commit, group_info, welcome, base)| {
                Request::Commit(CommitRequest {
                    group: GroupId(g),
                    epoch,
                    msg_id: MessageId(id),
                    commit,
                    group_info,
                    welcome,
                    base,
                })
            }),
        (
            prop::collection::vec(blob(), 0..4),
            prop::option::of(blob())
        )
            .prop_map(|(key_packages, last_resort)| {
                Request::UploadKeyPackages(UploadKeyPackages {
                    key_packages,
                    last_resort,
                })
            }),
        (
            any::<[u8; 16]>(),
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<u64>(),
            blob()
        )
            .prop_map(|(b, g, offset, total, data)| Request::PutBlob(PutBlob {
                blob: BlobId(b),
                group: GroupId(g),
                offset,
                total,
                data,
            })),
        (any::<u16>(), device(), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(
            |(version, device, s1, s2)| {
                let mut sig = [0u8; 64];
                sig[..32].copy_from_slice(&s1);
                sig[32..].copy_from_slice(&s2);
                Request::Login(LoginRequest {
                    version,
                    device,
                    signature: Signature(sig),
                })
            }
        ),
        (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(a, s)| {
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&s);
            Request::AccountDeviceList {
                account: sotto_proto::AccountId(a),
                signature: Signature(sig),
            }
        }),
        (
            any::<u16>(),
            device(),
            any::<[u8; 32]>(),
            any::<u64>(),
            prop::collection::vec(device(), 0..4)
        )
            .prop_map(|(version, device, a, list_version, devices)| {
                Request::Restore(Box::new(sotto_proto::RestoreRequest {
                    version,
                    device,
                    device_list: sotto_proto::SignedDeviceList {
                        account: sotto_proto::AccountId(a),
                        version: list_version,
                        devices,
                        signature: Signature([7; 64]),
                    },
                    device_signature: Signature([9; 64]),
                }))
            }),
    ]
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    (any::<u32>(), request()).prop_map(|(req, body)| ClientFrame { req, body })
}

fn kind() -> impl Strategy<Value = EnvelopeKind> {
    prop_oneof![
        Just(EnvelopeKind::Application),
        Just(EnvelopeKind::Commit),
        Just(EnvelopeKind::Welcome),
        Just(EnvelopeKind::Device),
        Just(EnvelopeKind::Wipe),
        Just(EnvelopeKind::Proposal),
    ]
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        Just(ServerFrame::Synced),
        (
            any::<u64>(),
            any::<[u8; 32]>(),
            device(),
            any::<[u8; 16]>(),
            kind(),
            any::<u64>(),
            blob()
        )
            .prop_map(|(seq, g, sender, id, kind, t, payload)| {
                ServerFrame::Deliver(Delivery {
                    seq,
                    envelope: Envelope {
                        group: GroupId(g),
                        sender,
                        msg_id: MessageId(id),
                        kind,
                        server_time_ms: t,
                        payload,
                    },
                })
            }),
        (any::<u32>(), any::<u64>()).prop_map(|(req, t)| ServerFrame::Response {
            req,
            result: Ok(Response::Pong { server_time_ms: t }),
        }),
        (
            any::<u32>(),
            any::<[u8; 32]>(),
            prop::collection::vec(device(), 0..4)
        )
            .prop_map(|(req, a, devices)| ServerFrame::Response {
                req,
                result: Ok(Response::AccountDevices {
                    list: sotto_proto::SignedDeviceList {
                        account: sotto_proto::AccountId(a),
                        version: 2,
                        devices: devices.clone(),
                        signature: Signature([1; 64]),
                    },
                    live: devices,
                }),
            }),
        (any::<u32>(), any::<Option<u64>>(), any::<u64>()).prop_map(|(req, retry, cur)| {
            ServerFrame::Response {
                req,
                result: Err(ProtoError {
                    code: ErrorCode::StaleEpoch { current: cur },
                    message: "stale".into(),
                    retry_after_ms: retry,
                }),
            }
        }),
        any::<Option<u64>>().prop_map(|retry| ServerFrame::Fatal(ProtoError {
            code: ErrorCode::RateLimited,
            message: "slow down".into(),
            retry_after_ms: retry,
        })),
    ]
}

/// Decodes `bytes` both ways; whatever decodes must survive a re-encoding.
fn decode_is_total(bytes: &[u8]) {
    if let Ok(f) = decode_client(bytes) {
        assert_eq!(decode_client(&encode_client(&f)), Ok(f));
    }
    if let Ok(f) = decode_server(bytes) {
        assert_eq!(decode_server(&encode_server(&f)), Ok(f));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_frames_round_trip_and_survive_damage(
        f in client_frame(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let bytes = encode_client(&f);
        prop_assert_eq!(decode_client(&bytes), Ok(f));
        for n in 0..bytes.len() {
            prop_assert!(decode_client(&bytes[..n]).is_err(), "a prefix of {} bytes decoded", n);
        }
        let mut longer = bytes.clone();
        longer.push(byte);
        prop_assert_eq!(
            decode_client(&longer),
            Err(sotto_proto::DecodeError::TrailingBytes(1))
        );
        let mut changed = bytes;
        let i = at.index(changed.len());
        changed[i] = byte;
        decode_is_total(&changed);
    }

    #[test]
    fn server_frames_round_trip_and_survive_damage(
        f in server_frame(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let bytes = encode_server(&f);
        prop_assert_eq!(decode_server(&bytes), Ok(f));
        for n in 0..bytes.len() {
            prop_assert!(decode_server(&bytes[..n]).is_err(), "a prefix of {} bytes decoded", n);
        }
        let mut changed = bytes;
        let i = at.index(changed.len());
        changed[i] = byte;
        decode_is_total(&changed);
    }
}

proptest! {
    /// A message's WebSocket fragments cover it once, in order, none
    /// longer than the cap and none empty but the only one of an empty
    /// message.
    #[test]
    fn ws_fragments_cover_a_message_in_capped_pieces(len in 0usize..5 * sotto_proto::WS_FRAGMENT_BYTES) {
        let pieces: Vec<_> = sotto_proto::ws_fragments(len).collect();
        prop_assert_eq!(pieces.len(), len.div_ceil(sotto_proto::WS_FRAGMENT_BYTES).max(1));
        let mut at = 0;
        for p in &pieces {
            prop_assert_eq!(p.start, at);
            prop_assert!(p.len() <= sotto_proto::WS_FRAGMENT_BYTES);
            prop_assert!(!p.is_empty() || len == 0);
            at = p.end;
        }
        prop_assert_eq!(at, len);
    }
}
