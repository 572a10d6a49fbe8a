//! Why a rule refused something.

/// Why a commit, proposal, credential or signed record was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    /// A group member's credential does not match its leaf key, or names an
    /// account other than the one expected.
    #[error("forged credential in group")]
    ForgedCredential,
    /// A device was added that its account's signed device list does not name.
    #[error("a device was added that its account did not sign for")]
    GhostDevice,
    /// Not valid MLS on the group's state, or against the group's policy;
    /// says which (never a secret).
    #[error("{0}")]
    Refused(String),
    /// A bug, or a damaged stored state.
    #[error("internal error: {0}")]
    Internal(String),
}

pub(crate) fn internal(e: impl std::fmt::Display) -> RuleError {
    RuleError::Internal(e.to_string())
}

pub(crate) fn refuse(why: impl std::fmt::Display) -> RuleError {
    RuleError::Refused(why.to_string())
}
