//! The codec: postcard (compact, varint-prefixed serde) with strict limits.
//!
//! Decoding checks the frame against [`MAX_FRAME_BYTES`] before looking at it,
//! rejects trailing bytes, unknown enum values and invalid UTF-8, and takes
//! byte strings only as long as the bytes present, so a length prefix can never
//! make it allocate more than the frame it was handed.

use serde::{Serialize, de::DeserializeOwned};

use crate::{ClientFrame, MAX_FRAME_BYTES, ServerFrame};

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
