//! The Sotto client driver: it owns what `sotto-core` leaves out, the
//! socket, the files and the clock. [`link`] parses server links,
//! [`transport`] is the pinned TLS WebSocket connection, [`store`] the
//! encrypted local store (SQLCipher) that also holds the MLS state, and
//! [`client`] the operations the CLI offers: register, send, receive.
//!
//! Architecture invariant: a delivered message is acknowledged to the
//! server only after the MLS state change, the decrypted message and the
//! dedup marker were committed in one local transaction.

pub mod client;
pub mod devices;
pub mod error;
pub mod files;
mod groups;
pub mod killcode;
pub mod link;
pub mod store;
pub mod transport;

pub use client::{Client, Policy, ReceiveEvent, ReceivedMessage, RegisterOptions, Verification};
pub use error::ClientError;
pub use groups::GroupInfo;
pub use link::ServerLink;
pub use sotto_core::Suite;
