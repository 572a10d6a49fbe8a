//! Sotto's wire protocol: every type that crosses the network between a client
//! and a server, and the one codec that turns them into bytes and back.
//!
//! Architecture invariant: this crate does no IO and has no async code. It is
//! the only crate that defines what goes over the wire; the server and the
//! client both speak through these types. Decoding never panics and never
//! allocates more than the bytes it was given (see [`codec`]).

pub mod codec;
pub mod error;
pub mod frame;
pub mod ids;
pub mod pow;

pub use codec::{
    DecodeError, EncodedEnvelope, decode_client, decode_server, delivery_head, encode_client,
    encode_server,
};
pub use error::{ErrorCode, ProtoError};
pub use frame::*;
pub use ids::*;

/// The version of the wire protocol this crate speaks. Sent in `Register` and
/// `Login`; a server answers an unknown version with [`ErrorCode::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u16 = 3;

/// The largest encoded frame either side accepts, in bytes. Sized for the
/// commits and Welcomes of large post-quantum groups (a Welcome carries the
/// ratchet tree, about 1.5 KiB per member with X-Wing keys).
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// The largest payload of one WebSocket frame, either way. A message
/// longer than this goes as a fragmented WebSocket message (RFC 6455 §5.4),
/// in pieces of this size ([`ws_fragments`]); a single WebSocket frame
/// longer than this is refused. The WebSocket library keeps each
/// connection's read and write buffers at the largest frame they held, so
/// this bounds what a connection keeps after a large message (a commit or
/// Welcome of a large group is megabytes) at about 4 KiB.
pub const WS_FRAGMENT_BYTES: usize = 4 * 1024;

/// The pieces a message of `len` bytes is sent in, one WebSocket frame
/// each: [`WS_FRAGMENT_BYTES`] at most, in order, at least one (an empty
/// message is one empty frame).
pub fn ws_fragments(len: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let pieces = len.div_ceil(WS_FRAGMENT_BYTES).max(1);
    (0..pieces).map(move |i| i * WS_FRAGMENT_BYTES..len.min((i + 1) * WS_FRAGMENT_BYTES))
}

/// The largest MLS application message in one frame.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// The largest MLS commit or Welcome in one frame.
pub const MAX_HANDSHAKE_BYTES: usize = MAX_FRAME_BYTES - 64 * 1024;

/// How many KeyPackages one upload may carry.
pub const MAX_KEY_PACKAGES_PER_UPLOAD: usize = 100;

/// How many deliveries or acks one frame may carry.
pub const MAX_ACKS_PER_FRAME: usize = 512;

/// How many member devices a group may have on the server.
pub const MAX_GROUP_DEVICES: usize = 10_000;

/// The WebSocket path of protocol version 1.
pub const WS_PATH: &str = "/v1/ws";
