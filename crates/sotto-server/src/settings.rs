//! The operator's settings: built-in defaults, then a TOML file
//! (`--config`), then `SOTTO_*` environment variables, then command-line
//! flags, each overriding the one before. Every key of the file has an
//! environment variable: `SOTTO_` and the key's path in capitals joined by
//! `_` (`limits.max_connections` is `SOTTO_LIMITS_MAX_CONNECTIONS`). A key
//! the server does not know is an error that names it, so a typo in a
//! security setting cannot pass unnoticed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Limits, Quota, RegistrationMode, ServerConfig};

/// Every setting, as in the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Data directory: TLS identity and server link, and with the embedded
    /// store its database and attachments.
    pub data: PathBuf,
    /// Address to listen on.
    pub listen: String,
    /// Host and port clients dial (the load balancer's), if not `listen`.
    pub public_addr: String,
    /// `sqlite` (embedded, in the data directory) or a `postgres://` URL.
    pub store: String,
    /// Most pooled PostgreSQL connections of this node.
    pub store_max_connections: u32,
    /// `local` (one node) or a `nats://` URL (several, comma-separated).
    pub bus: String,
    /// Prefix of the NATS subjects, so clusters can share one NATS.
    pub bus_subject_prefix: String,
    /// With a NATS bus: milliseconds between reads of the mailbox heads of
    /// this node's connected devices (delivery when NATS loses wake-ups);
    /// 0 turns it off.
    pub store_poll_ms: u64,
    /// Seconds a connection may fail to read its mailbox from the store
    /// before it is closed with a retryable error (its client moves on).
    pub store_outage_close_secs: u64,
    /// Attachment directory (default: `blobs` in the data directory). Nodes
    /// of a cluster must share it.
    pub blob_dir: String,
    /// `invite` or `open`.
    pub registration: String,
    /// Proof-of-work difficulty (leading zero bits) for open registration.
    pub pow_bits: u8,
    /// Days an undelivered message is kept.
    pub mailbox_ttl_days: u64,
    /// Largest attachment accepted, in MiB.
    pub max_attachment_mib: u64,
    /// Address of the plain-HTTP admin endpoint (`/healthz`, `/readyz`,
    /// `/metrics`); empty for none. Keep it off the public network.
    pub admin_listen: String,
    /// `text` or `json`.
    pub log_format: String,
    /// A `tracing` filter (`info`, `warn,sotto_server=debug`, ...).
    pub log_level: String,
    /// Seconds a shutdown waits for connections to close before it cuts them.
    pub shutdown_grace_secs: u64,
    /// Caps and deadlines.
    pub limits: LimitSettings,
}

/// [`Limits`] as settings (durations in seconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)]
pub struct LimitSettings {
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub handshake_timeout_secs: u64,
    pub auth_timeout_secs: u64,
    pub ping_interval_secs: u64,
    pub idle_timeout_secs: u64,
    pub write_timeout_secs: u64,
    pub mailbox_max_messages: u64,
    pub max_key_packages: u32,
    pub max_key_package_bytes: usize,
    pub max_group_devices: usize,
    pub max_protocol_errors: u32,
    pub requests_per_second: f64,
    pub request_burst: f64,
    pub kill_code_guesses: u32,
    pub kill_code_pow_bits: u8,
    pub kill_code_window_secs: u64,
    pub claims_per_claimer: u32,
    pub claims_per_target: u32,
    pub claim_window_secs: u64,
    pub purge_interval_secs: u64,
    pub mailbox_max_bytes: u64,
    pub registrations_per_source: u32,
    pub registrations_window_secs: u64,
    pub login_failures_per_source: u32,
    pub login_failures_window_secs: u64,
    pub lookups_per_source: u32,
    pub lookups_window_secs: u64,
}

impl Default for LimitSettings {
    fn default() -> Self {
        let l = Limits::default();
        Self {
            max_connections: l.max_connections,
            max_connections_per_source: l.max_connections_per_source,
            handshake_timeout_secs: l.handshake_timeout.as_secs(),
            auth_timeout_secs: l.auth_timeout.as_secs(),
            ping_interval_secs: l.ping_interval.as_secs(),
            idle_timeout_secs: l.idle_timeout.as_secs(),
            write_timeout_secs: l.write_timeout.as_secs(),
            mailbox_max_messages: l.mailbox_max_messages,
            max_key_packages: l.max_key_packages,
            max_key_package_bytes: l.max_key_package_bytes,
            max_group_devices: l.max_group_devices,
            max_protocol_errors: l.max_protocol_errors,
            requests_per_second: l.requests_per_second,
            request_burst: l.request_burst,
            kill_code_guesses: l.kill_code_guesses,
            kill_code_pow_bits: l.kill_code_pow_bits,
            kill_code_window_secs: l.kill_code_window.as_secs(),
            claims_per_claimer: l.claims_per_claimer,
            claims_per_target: l.claims_per_target,
            claim_window_secs: l.claim_window.as_secs(),
            purge_interval_secs: l.purge_interval.as_secs(),
            mailbox_max_bytes: l.mailbox_max_bytes,
            registrations_per_source: l.registrations_per_source.count,
            registrations_window_secs: l.registrations_per_source.window.as_secs(),
            login_failures_per_source: l.login_failures_per_source.count,
            login_failures_window_secs: l.login_failures_per_source.window.as_secs(),
            lookups_per_source: l.lookups_per_source.count,
            lookups_window_secs: l.lookups_per_source.window.as_secs(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data: PathBuf::from("sotto-data"),
            listen: "127.0.0.1:7443".into(),
            public_addr: String::new(),
            store: "sqlite".into(),
            store_max_connections: 16,
            bus: "local".into(),
            bus_subject_prefix: "sotto".into(),
            store_poll_ms: 500,
            store_outage_close_secs: 3,
            blob_dir: String::new(),
            registration: "invite".into(),
            pow_bits: 20,
            mailbox_ttl_days: 30,
            max_attachment_mib: 25,
            admin_listen: String::new(),
            log_format: "text".into(),
            log_level: "info".into(),
            shutdown_grace_secs: 10,
            limits: LimitSettings::default(),
        }
    }
}

/// Where the server keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// The embedded SQLite database in the data directory.
    Sqlite,
    /// PostgreSQL at this URL.
    Postgres(String),
}

/// How nodes wake each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusKind {
    /// One node.
    Local,
    /// NATS at this URL.
    Nats(String),
}

type Table = toml::map::Map<String, toml::Value>;

/// Keys present in `have` but not in `known`, as dotted paths.
fn unknown_keys(known: &Table, have: &Table, prefix: &str, out: &mut BTreeSet<String>) {
    for (k, v) in have {
        let path = format!("{prefix}{k}");
        match (known.get(k), v) {
            (None, _) => {
                out.insert(path);
            }
            (Some(toml::Value::Table(kt)), toml::Value::Table(ht)) => {
                unknown_keys(kt, ht, &format!("{path}."), out);
            }
            _ => {}
        }
    }
}

fn merge(base: &mut Table, over: Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Replaces each key that has a `SOTTO_*` variable with its value, parsed
/// as the key's type.
fn apply_env(
    table: &mut Table,
    prefix: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), String> {
    for (k, v) in table.iter_mut() {
        let name = format!("{prefix}_{}", k.to_ascii_uppercase());
        if let toml::Value::Table(t) = v {
            apply_env(t, &name, env)?;
            continue;
        }
        let Some(raw) = env(&name) else { continue };
        let bad = |what: &str| format!("{name}={raw:?}: expected {what}");
        *v = match v {
            toml::Value::Integer(_) => {
                toml::Value::Integer(raw.trim().parse().map_err(|_| bad("an integer"))?)
            }
            toml::Value::Float(_) => {
                toml::Value::Float(raw.trim().parse().map_err(|_| bad("a number"))?)
            }
            toml::Value::Boolean(_) => {
                toml::Value::Boolean(raw.trim().parse().map_err(|_| bad("true or false"))?)
            }
            _ => toml::Value::String(raw),
        };
    }
    Ok(())
}

impl Settings {
    /// Defaults, then the file at `path` (if any), then the environment
    /// (`env` looks a variable up; the binary passes `std::env::var`).
    pub fn load(path: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        let defaults = toml::Value::try_from(Self::default()).map_err(|e| e.to_string())?;
        let toml::Value::Table(mut table) = defaults else {
            return Err("settings are not a table".into());
        };
        if let Some(path) = path {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let file: Table = toml::from_str(&text)
                .map_err(|e| format!("{} is not valid TOML: {e}", path.display()))?;
            let mut unknown = BTreeSet::new();
            unknown_keys(&table, &file, "", &mut unknown);
            if !unknown.is_empty() {
                let list: Vec<String> = unknown.into_iter().collect();
                return Err(format!(
                    "unknown keys in {}: {}",
                    path.display(),
                    list.join(", ")
                ));
            }
            merge(&mut table, file);
        }
        apply_env(&mut table, "SOTTO", env)?;
        let s: Self = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| format!("invalid settings: {e}"))?;
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> Result<(), String> {
        self.store_kind()?;
        self.bus_kind()?;
        self.registration_mode()?;
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(format!(
                "log_format {:?}: expected \"text\" or \"json\"",
                self.log_format
            ));
        }
        if self.limits.requests_per_second <= 0.0 || self.limits.request_burst < 1.0 {
            return Err("limits.requests_per_second must be > 0 and request_burst >= 1".into());
        }
        if self.store_max_connections < 2 {
            // The key directory's publishing turn holds one connection
            // while the publish itself reads and writes through others.
            return Err("store_max_connections must be at least 2".into());
        }
        if self.limits.kill_code_pow_bits > 32 {
            // A proof of work the owner cannot pay would lock the right code out.
            return Err("limits.kill_code_pow_bits must be at most 32".into());
        }
        Ok(())
    }

    /// The store this names.
    pub fn store_kind(&self) -> Result<StoreKind, String> {
        match self.store.as_str() {
            "sqlite" | "" => Ok(StoreKind::Sqlite),
            u if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                Ok(StoreKind::Postgres(u.to_owned()))
            }
            _ => Err("store: expected \"sqlite\" or a postgres:// URL".into()),
        }
    }

    /// The bus this names.
    pub fn bus_kind(&self) -> Result<BusKind, String> {
        match self.bus.as_str() {
            "local" | "" => Ok(BusKind::Local),
            u if u.starts_with("nats://") || u.starts_with("tls://") => {
                Ok(BusKind::Nats(u.to_owned()))
            }
            _ => Err("bus: expected \"local\" or a nats:// URL".into()),
        }
    }

    fn registration_mode(&self) -> Result<RegistrationMode, String> {
        match self.registration.as_str() {
            "invite" => Ok(RegistrationMode::InviteOnly),
            "open" => Ok(RegistrationMode::Open {
                pow_bits: self.pow_bits,
            }),
            other => Err(format!(
                "registration {other:?}: expected \"invite\" or \"open\""
            )),
        }
    }

    /// The attachment directory.
    pub fn blob_dir(&self) -> PathBuf {
        if self.blob_dir.is_empty() {
            self.data.join("blobs")
        } else {
            PathBuf::from(&self.blob_dir)
        }
    }

    /// The configuration [`crate::run`] takes.
    pub fn server_config(&self) -> Result<ServerConfig, String> {
        let l = &self.limits;
        let secs = Duration::from_secs;
        Ok(ServerConfig {
            registration: self.registration_mode()?,
            mailbox_ttl: secs(self.mailbox_ttl_days.saturating_mul(86_400)),
            limits: Limits {
                max_connections: l.max_connections,
                handshake_timeout: secs(l.handshake_timeout_secs),
                auth_timeout: secs(l.auth_timeout_secs),
                ping_interval: secs(l.ping_interval_secs.max(1)),
                idle_timeout: secs(l.idle_timeout_secs),
                write_timeout: secs(l.write_timeout_secs),
                mailbox_max_messages: l.mailbox_max_messages,
                max_key_packages: l.max_key_packages,
                max_key_package_bytes: l.max_key_package_bytes,
                max_group_devices: l.max_group_devices,
                max_protocol_errors: l.max_protocol_errors,
                requests_per_second: l.requests_per_second,
                request_burst: l.request_burst,
                kill_code_guesses: l.kill_code_guesses,
                kill_code_pow_bits: l.kill_code_pow_bits,
                kill_code_window: secs(l.kill_code_window_secs),
                purge_interval: secs(l.purge_interval_secs.max(1)),
                max_attachment_bytes: self.max_attachment_mib.saturating_mul(1024 * 1024),
                max_connections_per_source: l.max_connections_per_source,
                claims_per_claimer: l.claims_per_claimer,
                claims_per_target: l.claims_per_target,
                claim_window: secs(l.claim_window_secs),
                mailbox_max_bytes: l.mailbox_max_bytes,
                registrations_per_source: Quota {
                    count: l.registrations_per_source,
                    window: secs(l.registrations_window_secs),
                },
                login_failures_per_source: Quota {
                    count: l.login_failures_per_source,
                    window: secs(l.login_failures_window_secs),
                },
                lookups_per_source: Quota {
                    count: l.lookups_per_source,
                    window: secs(l.lookups_window_secs),
                },
            },
            shutdown_grace: secs(self.shutdown_grace_secs),
            store_poll: Duration::from_millis(self.store_poll_ms),
            store_outage_close: secs(self.store_outage_close_secs.max(1)),
        })
    }

    /// The whole file with every key at its default, for `sotto-server config`.
    pub fn default_file() -> String {
        toml::to_string(&Self::default()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn file(text: &str) -> (tempfile::NamedTempFile, PathBuf) {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        let p = f.path().to_owned();
        (f, p)
    }

    #[test]
    fn defaults_round_trip_through_the_file_format() {
        let (_f, p) = file(&Settings::default_file());
        assert_eq!(
            Settings::load(Some(&p), &no_env).unwrap(),
            Settings::default()
        );
    }

    #[test]
    fn file_then_environment_override_defaults() {
        let (_f, p) = file(
            "store = \"postgres://db/sotto\"\nbus = \"nats://n:4222\"\n[limits]\nmax_connections = 7\nidle_timeout_secs = 9\n",
        );
        let env = |k: &str| match k {
            "SOTTO_LIMITS_MAX_CONNECTIONS" => Some("11".to_owned()),
            "SOTTO_REGISTRATION" => Some("open".to_owned()),
            _ => None,
        };
        let s = Settings::load(Some(&p), &env).unwrap();
        assert_eq!(
            s.store_kind().unwrap(),
            StoreKind::Postgres("postgres://db/sotto".into())
        );
        assert_eq!(s.bus_kind().unwrap(), BusKind::Nats("nats://n:4222".into()));
        assert_eq!(s.limits.max_connections, 11, "environment beats file");
        assert_eq!(s.limits.idle_timeout_secs, 9, "file beats default");
        let c = s.server_config().unwrap();
        assert_eq!(c.registration, RegistrationMode::Open { pow_bits: 20 });
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(9));
    }

    #[test]
    fn the_shipped_example_config_loads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/sotto-server.toml");
        let s = Settings::load(Some(&p), &no_env).unwrap();
        assert!(matches!(s.store_kind().unwrap(), StoreKind::Postgres(_)));
        assert!(matches!(s.bus_kind().unwrap(), BusKind::Nats(_)));
        assert_eq!(s.limits.kill_code_guesses, 2);
    }

    #[test]
    fn a_store_pool_of_one_connection_is_refused() {
        let (_f, p) = file("store_max_connections = 1\n");
        let e = Settings::load(Some(&p), &no_env).unwrap_err();
        assert!(e.contains("store_max_connections"), "{e}");
        let (_f, p) = file("store_max_connections = 2\n");
        assert_eq!(
            Settings::load(Some(&p), &no_env)
                .unwrap()
                .store_max_connections,
            2
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let (_f, p) = file("listen = \"0.0.0.0:1\"\nstroe = \"x\"\n[limits]\nmax_conections = 1\n");
        let e = Settings::load(Some(&p), &no_env).unwrap_err();
        assert!(
            e.contains("stroe") && e.contains("limits.max_conections"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        let env = |k: &str| (k == "SOTTO_POW_BITS").then(|| "lots".to_owned());
        let e = Settings::load(None, &env).unwrap_err();
        assert!(e.contains("SOTTO_POW_BITS"), "{e}");
        let (_f, p) = file("store = \"mysql://x\"\n");
        assert!(
            Settings::load(Some(&p), &no_env)
                .unwrap_err()
                .contains("store")
        );
        let (_f, p) = file("registration = \"anyone\"\n");
        assert!(
            Settings::load(Some(&p), &no_env)
                .unwrap_err()
                .contains("registration")
        );
    }
}
