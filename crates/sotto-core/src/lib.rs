//! The client core of Sotto: identity keys, MLS conversations through
//! `openmls`, and the encoding of what users send each other.
//!
//! Architecture invariant: this crate does no IO of its own. It opens no
//! socket and no file and reads no clock: time comes in as arguments, and MLS
//! state goes through the `openmls` provider the caller hands in (the client
//! passes one backed by its encrypted store, tests one backed by memory).
//! Every function takes bytes and returns bytes and events, so two or more
//! in-memory peers can drive a conversation deterministically.
//!
//! The rules that need no key (the commit judgement, credentials, signed
//! device lists and kill-code records) live in `sotto-rules`, which the
//! server shares; this crate re-exports what its callers use of them.

mod error;
pub mod group;
pub mod identity;
pub mod killcode;
pub mod message;
pub mod mls;
pub mod names;
pub mod receive;
mod state;
pub mod verify;

pub use identity::{AccountKey, CredentialIdentity, DeviceKey};
pub use message::{AppMessage, Body, Content, Refused};
pub use mls::{CoreError, Suite};
