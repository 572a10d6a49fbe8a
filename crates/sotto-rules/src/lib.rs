//! The rules of Sotto that need no private key, in one place, so that the
//! server and every client check the same thing with the same code:
//!
//! - [`judge`]: the judgement of every commit and proposal on a group's
//!   public state (who may add, remove, rename; nobody turns into someone
//!   else; added devices on their accounts' signed lists);
//! - [`public`]: the server's view of a group (openmls's `PublicGroup`),
//!   the checks it runs before it accepts a commit or a proposal, and the
//!   reading of MLS framing headers;
//! - [`context`]: Sotto's group-context extensions (metadata, timer) and
//!   their codec;
//! - [`credential`]: what an MLS credential names and how a leaf is checked
//!   against it;
//! - [`directory`]: the key directory's entries and the checks of its
//!   proofs (`akd_core`);
//! - [`signed`]: verification of signed device lists, kill-code records and
//!   wipe orders.
//!
//! Architecture invariant: nothing here makes, holds or reads a private
//! key, and nothing does IO. `sotto-server` depends on this crate and on
//! `sotto-proto` and on no Sotto crate that creates keys (`sotto-core`,
//! `sotto-client`): a test in `sotto-test-support` reads `cargo metadata`
//! and fails if that changes.

pub mod context;
pub mod credential;
pub mod directory;
pub mod error;
pub mod judge;
pub mod public;
pub mod signed;

pub use credential::{CredentialIdentity, leaf_identity};
pub use error::RuleError;
