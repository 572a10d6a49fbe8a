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
