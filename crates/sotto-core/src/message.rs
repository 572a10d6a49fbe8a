//! What travels inside MLS application messages. The id and the send time
//! are inside the encryption, so the server can neither change them nor
//! read the text.

use serde::{Deserialize, Serialize};
use sotto_proto::MessageId;

/// An application message.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppMessage {
    /// Chosen by the sender; receivers show a message once per id.
    pub id: MessageId,
    /// The sender's clock, ms since the Unix epoch (informational only).
    pub sent_at_ms: u64,
    /// The content.
    pub body: Body,
}

/// Message content.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Plain text.
    Text(String),
    /// An attachment: the server holds its ciphertext as a blob; the key
    /// travels only here, inside MLS.
    File(FileRef),
    /// Plain text replying to an earlier message of the same conversation,
    /// named by its id. The id may be one the receiver does not have (it
    /// joined later, or the message disappeared): receivers show the reply
    /// as a reply to a message they don't have. Appended after `File`, so
    /// the earlier variants keep their postcard indices.
    Reply {
        /// The id of the message replied to.
        to: MessageId,
        /// The text.
        text: String,
    },
}

impl Body {
    /// The id of the message this one replies to, if it is a reply.
    pub fn reply_to(&self) -> Option<MessageId> {
        match self {
            Self::Reply { to, .. } => Some(*to),
            Self::Text(_) | Self::File(_) => None,
        }
    }
}

/// Where an attachment is and how to open it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// The blob on the server.
    pub blob: sotto_proto::BlobId,
    /// The ChaCha20-Poly1305 key it is encrypted with (fresh per file).
    pub key: [u8; 32],
    /// The nonce.
    pub nonce: [u8; 12],
    /// SHA-256 of the ciphertext, checked before decrypting.
    pub sha256: [u8; 32],
    /// The file's name (a name only; receivers strip any path).
    pub name: String,
    /// The plaintext size in bytes.
    pub size: u64,
}

impl std::fmt::Debug for FileRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        write!(f, "FileRef({:?}, {} bytes)", self.blob, self.size)
    }
}

impl Drop for FileRef {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Text(t) => write!(f, "Text({} bytes)", t.len()),
            Self::File(r) => write!(f, "File({} bytes)", r.size),
            Self::Reply { to, text } => write!(f, "Reply({to:?}, {} bytes)", text.len()),
        }
    }
}

impl std::fmt::Debug for AppMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print content.
        write!(f, "AppMessage({:?})", self.id)
    }
}

impl AppMessage {
    /// Encodes for MLS.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes; `None` for bytes that are not an application message.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let (m, rest) = postcard::take_from_bytes(b).ok()?;
        rest.is_empty().then_some(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> MessageId {
        MessageId([b; 16])
    }

    #[test]
    fn a_reply_round_trips() {
        let m = AppMessage {
            id: id(2),
            sent_at_ms: 1_700_000_000_000,
            body: Body::Reply {
                to: id(1),
                text: "yes, at noon".into(),
            },
        };
        let back = AppMessage::decode(&m.encode()).expect("decodes");
        assert!(back == m);
        assert_eq!(back.body.reply_to(), Some(id(1)));
        // Content never shows in debug output.
        assert!(!format!("{:?}", back.body).contains("noon"));
    }

    #[test]
    fn a_reply_to_an_unknown_id_decodes_and_names_that_id() {
        // Any 16 bytes are a valid id: the receiver decides what it has.
        let unknown = MessageId([0xee; 16]);
        let m = AppMessage {
            id: id(3),
            sent_at_ms: 0,
            body: Body::Reply {
                to: unknown,
                text: String::new(),
            },
        };
        let back = AppMessage::decode(&m.encode()).expect("decodes");
        assert_eq!(back.body.reply_to(), Some(unknown));
    }

    #[test]
    fn earlier_variants_keep_their_wire_indices() {
        let text = AppMessage {
            id: id(4),
            sent_at_ms: 5,
            body: Body::Text("hi".into()),
        }
        .encode();
        // id (16 bytes), sent_at_ms (varint 5), then the variant index.
        assert_eq!(text[17], 0);
        let reply = AppMessage {
            id: id(4),
            sent_at_ms: 5,
            body: Body::Reply {
                to: id(1),
                text: "hi".into(),
            },
        }
        .encode();
        assert_eq!(reply[17], 2);
        assert_eq!(Body::Text("x".into()).reply_to(), None);
        // A truncated reply is not a message.
        assert!(AppMessage::decode(&reply[..reply.len() - 1]).is_none());
    }
}
