//! The codec: postcard (compact, varint-prefixed serde) with strict limits.
//!
//! Decoding checks the frame against [`MAX_FRAME_BYTES`] before looking at it,
//! rejects trailing bytes, unknown enum values and invalid UTF-8, and takes
//! byte strings only as long as the bytes present, so a length prefix can never
//! make it allocate more than the frame it was handed.

use serde::{Serialize, de::DeserializeOwned};

use crate::{
    Blob, ClientFrame, Delivery, DeviceId, Envelope, EnvelopeKind, GroupId, MAX_FRAME_BYTES,
    MessageId, ServerFrame,
};

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Larger than [`MAX_FRAME_BYTES`].
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// Bytes left over after the frame.
    #[error("{0} trailing bytes after the frame")]
    TrailingBytes(usize),
    /// Not a frame: truncated, bad enum value, bad UTF-8 and the like.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing our own types into a Vec cannot fail: every type here is
    // plain data with no custom fallible Serialize impl.
    postcard::to_stdvec(v).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    let (v, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(v)
}

/// Encodes a client frame.
pub fn encode_client(f: &ClientFrame) -> Vec<u8> {
    encode(f)
}

/// Decodes a client frame.
pub fn decode_client(bytes: &[u8]) -> Result<ClientFrame, DecodeError> {
    decode(bytes)
}

/// Encodes a server frame.
pub fn encode_server(f: &ServerFrame) -> Vec<u8> {
    encode(f)
}

/// An [`Envelope`] encoded once, for the [`ServerFrame::Deliver`] frames
/// of every device it goes to (each [`delivery_head`], then these bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEnvelope(Vec<u8>);

impl EncodedEnvelope {
    /// Encodes `e`.
    pub fn new(e: &Envelope) -> Self {
        Self(encode(e))
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty (never, for an encoded envelope).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Its bytes: the envelope, encoded.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Bytes from [`EncodedEnvelope::as_bytes`], checked: they must be
    /// one whole envelope, as any frame is.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, DecodeError> {
        decode::<Envelope>(&bytes)?;
        Ok(Self(bytes))
    }
}

/// The most bytes [`delivery_head`] takes: the variant tag and a varint.
const DELIVERY_HEAD_MAX: usize = 1 + 10;

/// What `ServerFrame::Deliver(Delivery { seq, envelope })` starts with:
/// the frame is these bytes, then [`EncodedEnvelope::as_bytes`], the same
/// bytes as [`encode_server`] without encoding (or copying) the envelope
/// once per device. The server sends a delivery as these and slices of the
/// envelope every recipient shares.
pub fn delivery_head(seq: u64) -> Vec<u8> {
    // The variant tag, then the fields in order: `seq` as a varint (at
    // most 10 bytes), then the envelope.
    let mut out = Vec::with_capacity(DELIVERY_HEAD_MAX);
    out.extend_from_slice(deliver_tag());
    let mut varint = [0u8; 10];
    out.extend_from_slice(postcard::to_slice(&seq, &mut varint).unwrap_or_default());
    out
}

/// The bytes a [`ServerFrame::Deliver`] starts with (its variant tag),
/// taken from an encoded one so that it follows the enum's order.
fn deliver_tag() -> &'static [u8] {
    static TAG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let envelope = Envelope {
            group: GroupId([0; 32]),
            sender: DeviceId::NONE,
            msg_id: MessageId([0; 16]),
            kind: EnvelopeKind::Application,
            server_time_ms: 0,
            payload: Blob(Vec::new()),
        };
        let body = encode(&envelope).len();
        let mut whole = encode_server(&ServerFrame::Deliver(Delivery { seq: 0, envelope }));
        // `seq` 0 is one byte.
        whole.truncate(whole.len() - body - 1);
        whole
    })
}

/// Decodes a server frame.
pub fn decode_server(bytes: &[u8]) -> Result<ServerFrame, DecodeError> {
    decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    fn sample() -> ClientFrame {
        ClientFrame {
            req: 7,
            body: Request::Send(SendRequest {
                group: GroupId([9; 32]),
                msg_id: MessageId([3; 16]),
                payload: Blob(vec![1, 2, 3, 4, 5]),
                ttl_ms: None,
            }),
        }
    }

    /// A delivery encoded around an envelope encoded once is the frame
    /// `encode_server` makes, for sequence numbers of every varint length.
    #[test]
    fn a_delivery_around_an_encoded_envelope_is_the_same_frame() {
        for (kind, payload) in [
            (EnvelopeKind::Application, vec![7u8; 300]),
            (EnvelopeKind::Commit, Vec::new()),
            (EnvelopeKind::Wipe, vec![1, 2, 3]),
        ] {
            let envelope = Envelope {
                group: GroupId([4; 32]),
                sender: DeviceId([5; 32]),
                msg_id: MessageId([6; 16]),
                kind,
                server_time_ms: 1_700_000_000_123,
                payload: Blob(payload),
            };
            let encoded = EncodedEnvelope::new(&envelope);
            for seq in [0, 1, 127, 128, 300, 1 << 35, u64::MAX] {
                let frame = ServerFrame::Deliver(Delivery {
                    seq,
                    envelope: envelope.clone(),
                });
                let head = delivery_head(seq);
                assert!(head.len() <= DELIVERY_HEAD_MAX);
                let bytes = [&head[..], encoded.as_bytes()].concat();
                assert_eq!(bytes, encode_server(&frame), "seq {seq}");
                assert_eq!(decode_server(&bytes).unwrap(), frame);
            }
        }
    }

    #[test]
    fn an_encoded_envelope_comes_back_from_its_bytes_and_nothing_else_does() {
        let envelope = Envelope {
            group: GroupId([1; 32]),
            sender: DeviceId([2; 32]),
            msg_id: MessageId([3; 16]),
            kind: EnvelopeKind::Commit,
            server_time_ms: 1 << 40,
            payload: Blob(vec![5; 300]),
        };
        let encoded = EncodedEnvelope::new(&envelope);
        let back = EncodedEnvelope::from_bytes(encoded.as_bytes().to_vec()).unwrap();
        assert_eq!(back, encoded);
        let mut longer = encoded.as_bytes().to_vec();
        longer.push(0);
        assert_eq!(
            EncodedEnvelope::from_bytes(longer),
            Err(DecodeError::TrailingBytes(1))
        );
        let short = encoded.as_bytes()[..encoded.len() - 1].to_vec();
        assert!(EncodedEnvelope::from_bytes(short).is_err());
    }

    #[test]
    fn round_trip() {
        let f = sample();
        assert_eq!(decode_client(&encode_client(&f)), Ok(f));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode_client(&sample());
        for n in 0..bytes.len() {
            assert!(
                decode_client(&bytes[..n]).is_err(),
                "prefix of {n} bytes decoded"
            );
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode_client(&sample());
        bytes.push(0);
        assert_eq!(decode_client(&bytes), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn unknown_enum_value_is_rejected() {
        let mut bytes = encode_client(&sample());
        bytes[1] = 200; // the Request variant tag
        assert!(matches!(
            decode_client(&bytes),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        // Send frame whose payload claims 2^35 bytes but carries none.
        let mut bytes = encode_client(&sample());
        let payload_len_at = bytes.len() - 6;
        bytes.truncate(payload_len_at);
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(matches!(
            decode_client(&bytes),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn oversized_frame_is_rejected_before_decoding() {
        let bytes = vec![0u8; MAX_FRAME_BYTES + 1];
        assert_eq!(
            decode_client(&bytes),
            Err(DecodeError::TooLarge(MAX_FRAME_BYTES + 1))
        );
    }

    #[test]
    fn invalid_utf8_in_handle_is_rejected() {
        let f = ClientFrame {
            req: 1,
            body: Request::ClaimKeyPackages {
                handle: Handle::new("bob").unwrap(),
            },
        };
        let mut bytes = encode_client(&f);
        let n = bytes.len();
        bytes[n - 1] = 0xff;
        assert!(matches!(
            decode_client(&bytes),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A deterministic sweep over short byte strings and mutations of a
        // valid frame; decoding must return, never panic.
        let valid = encode_client(&sample());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut b = valid.clone();
            let i = (x as usize) % b.len();
            b[i] = (x >> 32) as u8;
            b.truncate(((x >> 40) as usize) % (b.len() + 1));
            let _ = decode_client(&b);
            let _ = decode_server(&b);
        }
    }
}
