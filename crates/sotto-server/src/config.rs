//! Server configuration: a plain struct built once by the binary (or a test)
//! and handed to [`crate::run`]. No globals.

use std::time::Duration;

use sotto_proto::RegistrationPolicy;

/// How new accounts are admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationMode {
    /// Only with a single-use invite code from `sotto-server invite`.
    InviteOnly,
    /// Anyone who solves a proof of work of `pow_bits` leading zero bits.
    Open {
        /// Difficulty of the proof of work.
        pow_bits: u8,
    },
}

impl RegistrationMode {
    /// How the mode is announced to clients.
    pub fn policy(&self) -> RegistrationPolicy {
        match *self {
            Self::InviteOnly => RegistrationPolicy::InviteOnly,
            Self::Open { pow_bits } => RegistrationPolicy::Open { pow_bits },
        }
    }
}

/// At most `count` events per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Events allowed per window.
    pub count: u32,
    /// The window.
    pub window: Duration,
}

/// Deadlines and caps that keep one client from exhausting the server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most simultaneous connections.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake and the WebSocket upgrade, each.
    pub handshake_timeout: Duration,
    /// Time allowed between the upgrade and a successful login.
    pub auth_timeout: Duration,
    /// How often the server pings an idle connection.
    pub ping_interval: Duration,
    /// A connection that sends nothing (not even a pong) for this long is closed.
    pub idle_timeout: Duration,
    /// Time allowed for one frame to be written to a client.
    pub write_timeout: Duration,
    /// Most messages waiting in one device's mailbox.
    pub mailbox_max_messages: u64,
    /// Most one-time KeyPackages a device may keep on the server.
    pub max_key_packages: u32,
    /// Largest KeyPackage accepted, in bytes.
    pub max_key_package_bytes: usize,
    /// Most member devices of one group (a commit taking a group past it
    /// is refused).
    pub max_group_devices: usize,
    /// Protocol errors tolerated on one connection before it is closed.
    pub max_protocol_errors: u32,
    /// Requests per second allowed on one connection (token bucket rate).
    pub requests_per_second: f64,
    /// Token bucket burst.
    pub request_burst: f64,
    /// Wrong kill codes allowed per (source address, account) per
    /// `kill_code_window` (then that source waits); and per account from
    /// all sources, after which every guess needs a proof of work of
    /// `kill_code_pow_bits`.
    pub kill_code_guesses: u32,
    /// The proof of work a kill-code guess needs on an account that drew
    /// `kill_code_guesses` wrong guesses in the window.
    pub kill_code_pow_bits: u8,
    /// The window for `kill_code_guesses`.
    pub kill_code_window: Duration,
    /// How often expired messages are deleted.
    pub purge_interval: Duration,
    /// Largest attachment (encrypted blob) accepted, in bytes.
    pub max_attachment_bytes: u64,
    /// Most simultaneous connections from one address.
    pub max_connections_per_source: usize,
    /// KeyPackage claims one device may make per `claim_window`.
    pub claims_per_claimer: u32,
    /// KeyPackage claims one device may make for one account per `claim_window`.
    pub claims_per_target: u32,
    /// The window of the claim limits.
    pub claim_window: Duration,
    /// Most payload bytes waiting in one device's mailbox.
    pub mailbox_max_bytes: u64,
    /// Accounts one source address may register.
    pub registrations_per_source: Quota,
    /// Failed logins one source address may make; then even a valid login
    /// waits for the window to pass.
    pub login_failures_per_source: Quota,
    /// Lookups by handle or account (KeyPackage claims, other accounts' device lists, wipe
    /// requests) one source address may make.
    pub lookups_per_source: Quota,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            handshake_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(30),
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            write_timeout: Duration::from_secs(30),
            mailbox_max_messages: 50_000,
            max_key_packages: 200,
            max_key_package_bytes: 16 * 1024,
            max_group_devices: sotto_proto::MAX_GROUP_DEVICES,
            max_protocol_errors: 3,
            requests_per_second: 50.0,
            request_burst: 200.0,
            kill_code_guesses: 5,
            kill_code_pow_bits: 20,
            kill_code_window: Duration::from_secs(15 * 60),
            purge_interval: Duration::from_secs(1),
            max_attachment_bytes: 25 * 1024 * 1024,
            max_connections_per_source: 1024,
            claims_per_claimer: 1000,
            claims_per_target: 50,
            claim_window: Duration::from_secs(3600),
            mailbox_max_bytes: 256 * 1024 * 1024,
            registrations_per_source: Quota {
                count: 20,
                window: Duration::from_secs(3600),
            },
            login_failures_per_source: Quota {
                count: 100,
                window: Duration::from_secs(600),
            },
            lookups_per_source: Quota {
                count: 2000,
                window: Duration::from_secs(3600),
            },
        }
    }
}

/// Everything [`crate::run`] needs besides the listener, TLS and storage.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Registration mode.
    pub registration: RegistrationMode,
    /// How long an undelivered message is kept.
    pub mailbox_ttl: Duration,
    /// Deadlines and caps.
    pub limits: Limits,
    /// How long a shutdown waits for connections to close before cutting them.
    pub shutdown_grace: Duration,
    /// With a cluster bus, how often the node reads the heads of its
    /// connected devices' mailboxes, so that mail whose wake-up the bus
    /// lost is still delivered (`crate::watch`); zero turns it off.
    pub store_poll: Duration,
    /// A connection that could not read its mailbox from the store for
    /// this long is closed with a retryable error, so its client moves to
    /// a node that can.
    pub store_outage_close: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            registration: RegistrationMode::InviteOnly,
            mailbox_ttl: Duration::from_secs(30 * 24 * 3600),
            limits: Limits::default(),
            shutdown_grace: Duration::from_secs(10),
            store_poll: Duration::from_millis(500),
            store_outage_close: Duration::from_secs(3),
        }
    }
}
