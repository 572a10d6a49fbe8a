//! The Sotto client library: it owns what `sotto-core` leaves out, the
//! socket, the files and the clock. The `sotto` command line, its terminal
//! UI and its JSON-RPC daemon are all built on it, and a Rust bot uses it
//! the same way, without JSON.
//!
//! [`link`] parses server links, [`transport`] is the pinned TLS WebSocket
//! connection, [`store`] the encrypted local store (SQLCipher) that also
//! holds the MLS state, [`client`] the operations (register, send,
//! receive, groups, verification, disappearing messages, files) and
//! [`session`] the long-running use: one kept connection, pushed
//! deliveries processed as they arrive; [`names`] says which characters
//! of others' names and texts hide or reorder text.
//!
//! # Example: an echo bot
//!
//! ```no_run
//! use sotto_client::{Client, ClientError};
//!
//! # async fn bot() -> Result<(), ClientError> {
//! // A profile made with `sotto register`, unlocked with its passphrase.
//! let mut client = Client::open("bot-profile".as_ref(), "passphrase")?;
//! // Connect, take the backlog, and keep the connection from now on.
//! let mut updates = client.go_online().await?;
//! loop {
//!     // Messages from this account's other devices come too: skip them.
//!     for m in updates.messages.iter().filter(|m| !m.outgoing) {
//!         // `conversation` names a one-to-one conversation by the peer's
//!         // handle; a group by its name. `@handle` and `#<id>` are
//!         // unambiguous (a group's name may be a contact's handle).
//!         let to = if m.conversation == m.sender {
//!             format!("@{}", m.sender)
//!         } else {
//!             format!("#{}", m.group.to_hex())
//!         };
//!         client.send(&to, &format!("echo: {}", m.text)).await?;
//!     }
//!     client.pushed().await?; // waits for the server (cancel-safe)
//!     updates = client.process_pushed().await?;
//! }
//! # }
//! ```
//!
//! Architecture invariant: a delivered message is acknowledged to the
//! server only after the MLS state change, the decrypted message and the
//! dedup marker were committed in one local transaction.

pub mod audit;
pub mod backup;
mod blocks;
pub mod client;
pub mod clock;
mod content;
mod conversation;
pub mod devices;
mod directory;
pub mod error;
pub mod files;
mod groups;
mod inbox;
pub mod killcode;
pub mod link;
mod members;
pub mod names;
mod profile;
mod receipts;
mod receive;
pub mod rejoin;
mod send;
pub mod session;
pub mod store;
pub mod transport;

pub use client::{
    Change, Client, Policy, ReceiveEvent, ReceivedMessage, RegisterOptions, Sent, Verification,
    Warning,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use conversation::{NotSentBecause, Receipt, Unread};
pub use error::ClientError;
pub use groups::GroupInfo;
pub use link::ServerLink;
pub use session::{
    ConversationInfo, ConversationState, Member, Notice, NoticeKind, Trust, Updates,
};
pub use sotto_core::Suite;
