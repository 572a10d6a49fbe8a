//! The client's errors: each one line a person can act on.

use sotto_proto::{ErrorCode, Handle, ProtoError};

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
    /// No conversation, group, contact, message or device goes by the
    /// name given (the sentence says which).
    #[error("{0}")]
    NotFound(String),
    /// The name given fits several: a group's name that is also a
    /// contact's handle, several groups of one name, an id prefix of
    /// several messages or devices. The sentence says how to say which.
    #[error("{0}")]
    Ambiguous(String),
    /// This account is not (or no longer) an active member of the
    /// conversation: removed, leaving, or left.
    #[error("{0}")]
    NotMember(String),
    /// Only the group's admins may do this (the action is named).
    #[error("only admins {0}")]
    NotAdmin(&'static str),
    /// The contact has no KeyPackage this device can use (none valid, or
    /// none of this suite).
    #[error("{0} has no key package this device can use")]
    NoKeyPackages(Handle),
    /// Nobody can receive: the account (named) has no device left, or none
    /// left in this one-to-one conversation (wiped by its kill code, every
    /// device revoked, or it left). A message would go nowhere, so none
    /// is sent.
    #[error(
        "{0} has no device left here (wiped, revoked, or left the conversation): nobody would receive this"
    )]
    NoDevices(String),
    /// The server answered with something its own signatures or the
    /// account's do not back: keys of another account, a device list the
    /// account did not sign, or an outdated one. Refused; worth an alarm.
    #[error("{0}: refusing")]
    Untrustworthy(String),
    /// The conversation kept moving (other members' commits, a peer
    /// creating it at the same moment): nothing was lost, and trying again
    /// shortly succeeds.
    #[error("{0}")]
    TryAgain(String),
    /// Something else the user asked for that cannot be done, as asked.
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
    /// the connection broke, the server asked to retry (busy, storage
    /// unavailable for a moment), or the conversation kept moving.
    pub fn is_temporary(&self) -> bool {
        match self {
            Self::Unreachable(_)
            | Self::Transport(_)
            | Self::Closed(_)
            | Self::Timeout
            | Self::TryAgain(_) => true,
            Self::Server(e) => e.retry_after_ms.is_some(),
            _ => false,
        }
    }
}

impl ClientError {
    /// A stable, machine-readable name of the variant, for programs that
    /// branch on it (the JSON-RPC daemon sends it as `error.data.kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadLink(_) => "bad_link",
            Self::Unreachable(_) => "unreachable",
            Self::CertificateMismatch => "certificate_mismatch",
            Self::Transport(_) => "transport",
            Self::Malformed(_) => "malformed",
            Self::Closed(_) => "closed",
            Self::Timeout => "timeout",
            Self::Server(_) => "server",
            Self::WrongPassphrase => "wrong_passphrase",
            Self::NotRegistered => "not_registered",
            Self::AlreadyRegistered(_) => "already_registered",
            Self::Store(_) => "store",
            Self::Core(_) => "mls",
            Self::KeyChanged(_) => "key_changed",
            Self::Wiped => "wiped",
            Self::NotFound(_) => "not_found",
            Self::Ambiguous(_) => "ambiguous",
            Self::NotMember(_) => "not_member",
            Self::NotAdmin(_) => "not_admin",
            Self::NoKeyPackages(_) => "no_key_packages",
            Self::NoDevices(_) => "no_devices",
            Self::Untrustworthy(_) => "untrustworthy",
            Self::TryAgain(_) => "try_again",
            Self::Invalid(_) => "invalid",
        }
    }
}

impl From<rusqlite::Error> for ClientError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(e.to_string())
    }
}
