//! What can go wrong in the client core.

use sotto_rules::RuleError;

/// What can go wrong in an MLS step.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A KeyPackage did not parse or verify.
    #[error("invalid key package: {0}")]
    InvalidKeyPackage(String),
    /// A KeyPackage is valid but not for the device the server said.
    #[error("key package does not belong to the expected device")]
    KeyPackageMismatch,
    /// A Welcome could not be processed.
    #[error("invalid welcome: {0}")]
    InvalidWelcome(String),
    /// A group member's credential does not match its leaf key, or names an
    /// account other than the one expected.
    #[error("forged credential in group")]
    ForgedCredential,
    /// A device was added that its account's signed device list does not name.
    #[error("a device was added that its account did not sign for")]
    GhostDevice,
    /// No such group in the local state.
    #[error("unknown conversation")]
    UnknownGroup,
    /// A message of an epoch this device has not reached: its state of the
    /// group is behind the other members' (restored from an older backup,
    /// say). The epoch in the message is not authenticated yet: a server
    /// can make it up, so this only ever leads to asking to be re-added.
    #[error("message of epoch {message}, this device is at epoch {local}: out of sync")]
    Behind {
        /// This device's epoch of the group.
        local: u64,
        /// The epoch the message claims.
        message: u64,
    },
    /// A message could not be processed (wrong epoch, replay, forgery, garbage).
    #[error("message rejected: {0}")]
    Rejected(String),
    /// The local MLS state could not be read or written.
    #[error("mls storage: {0}")]
    Storage(String),
    /// A bug.
    #[error("internal mls error: {0}")]
    Internal(String),
}

pub(crate) fn internal(e: impl std::fmt::Display) -> CoreError {
    CoreError::Internal(e.to_string())
}

pub(crate) fn storage(e: impl std::fmt::Debug) -> CoreError {
    CoreError::Storage(format!("{e:?}"))
}

impl From<RuleError> for CoreError {
    fn from(e: RuleError) -> Self {
        match e {
            RuleError::ForgedCredential => Self::ForgedCredential,
            RuleError::GhostDevice => Self::GhostDevice,
            RuleError::Refused(why) => Self::Rejected(why),
            RuleError::Internal(why) => Self::Internal(why),
        }
    }
}
