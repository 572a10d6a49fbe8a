//! The client's errors: each one line a person can act on.

use sotto_proto::{ErrorCode, ProtoError};

/// Everything that can go wrong in a client operation.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server link does not parse.
    #[error("bad server link: {0}")]
    BadLink(String),
    /// TCP connect failed or timed out.
    #[error("server unreachable: {0}")]
    Unreachable(String),
    /// The server presented a certificate other than the pinned one.
    #[error("server certificate does not match the pinned fingerprint: refusing to connect")]
    CertificateMismatch,
    /// TLS or WebSocket failure after connecting.
    #[error("connection failed: {0}")]
    Transport(String),
    /// The server sent something that is not protocol.
    #[error("malformed frame from server: {0}")]
    Malformed(String),
    /// The server closed the connection.
    #[error("server closed the connection{0}")]
    Closed(String),
    /// The server did not answer in time.
    #[error("server did not answer in time")]
    Timeout,
    /// The server refused a request.
    #[error("{0}")]
    Server(ProtoError),
    /// The passphrase does not open the local store.
    #[error("wrong passphrase (or not a sotto profile)")]
    WrongPassphrase,
    /// The profile has no account yet.
    #[error("profile has no account: run `sotto register` first")]
    NotRegistered,
    /// The profile already has an account.
    #[error("profile already has an account ({0})")]
    AlreadyRegistered(String),
    /// The local store failed.
    #[error("local store: {0}")]
    Store(String),
    /// An MLS step failed.
    #[error(transparent)]
    Core(#[from] sotto_core::CoreError),
    /// A verified contact's identity key changed; the user must compare and
    /// confirm the new safety number before sending to it.
    #[error(
        "the identity key of {0} changed since you verified it: compare the new safety number (`sotto verify {0}`) and confirm it (`sotto verify {0} --confirm`) before sending"
    )]
    KeyChanged(String),
    /// A wipe order proved the kill code: this device's keys and store are destroyed.
    #[error("this profile was wiped")]
    Wiped,
    /// Something else the user asked for that cannot be done.
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    /// The server's error code, if the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server(e) => Some(e.code),
            _ => None,
        }
    }

    /// Whether trying again later may succeed: the server was unreachable,
    /// the connection broke, or the server asked to retry (busy, storage
    /// unavailable for a moment).
    pub fn is_temporary(&self) -> bool {
        match self {
            Self::Unreachable(_) | Self::Transport(_) | Self::Closed(_) | Self::Timeout => true,
            Self::Server(e) => e.retry_after_ms.is_some(),
            _ => false,
        }
    }
}

impl From<rusqlite::Error> for ClientError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(e.to_string())
    }
}
