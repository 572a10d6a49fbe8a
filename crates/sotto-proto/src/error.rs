//! Typed protocol errors. A server answers a request it cannot carry out with
//! a [`ProtoError`]; the client turns the code into one line for the user.
//! Messages are lowercase, without a trailing period, and never carry secrets
//! or internal detail (that goes to the server's log).

use std::fmt;

use serde::{Deserialize, Serialize};

/// What went wrong, in a form a client can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The frame could not be decoded; the connection is closed after this.
    Malformed,
    /// The frame or a field in it is larger than the protocol allows.
    TooLarge,
    /// The client speaks a protocol version the server does not.
    UnsupportedVersion,
    /// The request needs an authenticated device.
    NotAuthenticated,
    /// Login or registration signature did not verify, or the device is unknown or revoked.
    AuthFailed,
    /// The invite code is unknown, expired or already used.
    InvalidInvite,
    /// This server registers only with an invite code.
    InviteRequired,
    /// The proof of work is missing or does not meet the difficulty.
    ProofOfWorkInvalid,
    /// The handle is already registered.
    HandleTaken,
    /// The handle is not a valid handle.
    InvalidHandle,
    /// No account has this handle.
    UnknownHandle,
    /// No such account or device.
    UnknownAccount,
    /// The account and kill code do not match (which of the two is not said).
    InvalidKillCode,
    /// No such blob, or not one this device may fetch (or it expired).
    UnknownBlob,
    /// The target has no KeyPackage to hand out (not even a last-resort one).
    NoKeyPackages,
    /// A commit was built on an epoch that is no longer the group's current one.
    StaleEpoch {
        /// The group's epoch on the server now.
        current: u64,
    },
    /// The device is not a member of the group on the server.
    NotMember,
    /// The server's checks refused a commit or proposal (not valid MLS on
    /// the group's state, or against the group's policy: a non-admin's
    /// add, a device no signed list vouches for, ...); the message says
    /// which. Nothing was stored.
    InvalidCommit,
    /// The request is not valid in this state (e.g. an empty member list).
    InvalidRequest,
    /// Too many requests; retry after `retry_after_ms`.
    RateLimited,
    /// A recipient's mailbox is full.
    MailboxFull,
    /// The server cannot serve this now (storage unavailable, disk full); retry later.
    Unavailable,
    /// A bug on the server.
    Internal,
    /// This request needs a proof of work of `bits` bits (a kill-code guess
    /// on an account that drew many wrong guesses: send `WipeWithWork`).
    ProofOfWorkRequired {
        /// The difficulty.
        bits: u8,
    },
}

/// A protocol error: a code, a short human-readable message and, where a
/// retry makes sense, how long to wait.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtoError {
    /// What went wrong.
    pub code: ErrorCode,
    /// One lowercase line for a person.
    pub message: String,
    /// When set, the request may be retried after this many milliseconds.
    pub retry_after_ms: Option<u64>,
}

impl ProtoError {
    /// An error with the default message for `code`.
    pub fn new(code: ErrorCode) -> Self {
        Self {
            code,
            message: code.default_message().to_owned(),
            retry_after_ms: None,
        }
    }

    /// An error with its own message.
    pub fn with_message(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// Marks the error as retryable after `ms` milliseconds.
    pub fn retry_after(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }
}

impl ErrorCode {
    /// The message a server sends when it has nothing more specific to say.
    pub fn default_message(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed frame",
            Self::TooLarge => "too large",
            Self::UnsupportedVersion => "unsupported protocol version",
            Self::NotAuthenticated => "not authenticated",
            Self::AuthFailed => "authentication failed",
            Self::InvalidInvite => "invalid invite code",
            Self::InviteRequired => "this server requires an invite code",
            Self::ProofOfWorkInvalid => "proof of work missing or invalid",
            Self::HandleTaken => "handle already taken",
            Self::InvalidHandle => "invalid handle",
            Self::UnknownHandle => "unknown handle",
            Self::UnknownAccount => "unknown account or device",
            Self::InvalidKillCode => "wrong account or kill code",
            Self::UnknownBlob => "no such attachment (or it expired)",
            Self::NoKeyPackages => "the contact has no key packages left",
            Self::StaleEpoch { .. } => "the group moved to a newer epoch",
            Self::NotMember => "not a member of this group",
            Self::InvalidCommit => "the server refused this change to the group",
            Self::InvalidRequest => "invalid request",
            Self::RateLimited => "slow down",
            Self::MailboxFull => "a recipient's mailbox is full",
            Self::Unavailable => "server temporarily unavailable",
            Self::Internal => "internal server error",
            Self::ProofOfWorkRequired { .. } => "a proof of work is required",
        }
    }
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(ms) = self.retry_after_ms {
            write!(f, " (retry in {ms} ms)")?;
        }
        Ok(())
    }
}

impl std::error::Error for ProtoError {}
