//! The Sotto server as a library: [`run`] serves the protocol on a listener
//! until told to stop; the `sotto-server` binary only parses its flags, opens
//! the data directory and calls it. Tests call the same [`run`].
//!
//! Architecture invariant: the server never sees plaintext. MLS messages,
//! KeyPackages and Welcomes are opaque bytes here; the server routes them by
//! group and device, which it learns from the clients' commit requests.
//!
//! Architecture invariant: storage sits behind [`store::Store`] and routing of
//! "new mail" notifications behind [`bus::Bus`]; nothing else in the server
//! touches a database or another node.

pub mod admin;
pub mod blobs;
pub mod bus;
pub mod config;
mod conn;
pub mod datadir;
pub mod directory;
mod limits;
mod mailbox;
pub mod metrics;
mod server;
mod services;
pub mod settings;
mod shared;
pub mod store;
pub mod tls;
pub mod watch;

pub use config::{Limits, Quota, RegistrationMode, ServerConfig};
pub use server::run;
pub use shared::{Clock, Shared, SystemClock};
