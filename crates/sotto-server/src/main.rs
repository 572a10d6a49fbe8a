//! The `sotto-server` binary: loads the settings (defaults, `--config`
//! file, `SOTTO_*` environment, flags), opens the store and the bus they
//! name and calls [`sotto_server::run`]; plus the operator's commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use sotto_server::bus::nats::NatsBus;
use sotto_server::bus::{Bus, LocalBus};
use sotto_server::datadir::DataDir;
use sotto_server::settings::{BusKind, Settings, StoreKind};
use sotto_server::store::Store;
use sotto_server::store::postgres::PgStore;
use sotto_server::{Clock as _, Shared, SystemClock, admin};

#[derive(Parser)]
#[command(
    name = "sotto-server",
    version = env!("SOTTO_VERSION"),
    about = "The Sotto messaging server"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Flags every command shares; each overrides the same key of the config
/// file and the environment.
#[derive(Args)]
struct Common {
    /// TOML settings file (see `sotto-server config`).
    #[arg(long, env = "SOTTO_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory; created on first start.
    #[arg(long)]
    data: Option<PathBuf>,
    /// `sqlite` (embedded) or a postgres:// URL.
    #[arg(long)]
    store: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server.
    Run {
        #[command(flatten)]
        common: Common,
        /// Address to listen on.
        #[arg(long)]
        listen: Option<String>,
        /// Host and port clients should dial, if not the listen address.
        #[arg(long)]
        public_addr: Option<String>,
        /// `local` or a nats:// URL (several nodes).
        #[arg(long)]
        bus: Option<String>,
        /// How new accounts are admitted: invite or open.
        #[arg(long)]
        registration: Option<String>,
        /// Proof-of-work difficulty (leading zero bits) for open registration.
        #[arg(long)]
        pow_bits: Option<u8>,
        /// Days an undelivered message is kept.
        #[arg(long)]
        mailbox_ttl_days: Option<u64>,
        /// Largest attachment accepted, in MiB.
        #[arg(long)]
        max_attachment_mib: Option<u64>,
        /// Address for /healthz, /readyz and /metrics (plain HTTP).
        #[arg(long)]
        admin_listen: Option<String>,
        /// Attachment directory (shared by all nodes of a cluster).
        #[arg(long)]
        blob_dir: Option<String>,
    },
    /// Print single-use invite codes (works while the server runs).
    Invite {
        #[command(flatten)]
        common: Common,
        /// How many codes.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Days the codes stay valid.
        #[arg(long, default_value_t = 7)]
        valid_days: u64,
    },
    /// Print what the server holds, as counts.
    Stats {
        #[command(flatten)]
        common: Common,
    },
    /// Manage devices.
    Devices {
        #[command(subcommand)]
        cmd: DevicesCmd,
    },
    /// Print a config file with every key at its default.
    Config,
}

#[derive(Subcommand)]
enum DevicesCmd {
    /// Lock a device out (stolen, compromised): it can no longer log in; its
    /// waiting mail, KeyPackages and group memberships are deleted.
    Revoke {
        /// The device id, in hex (as `sotto devices` shows it).
        device: String,
        #[command(flatten)]
        common: Common,
    },
}

fn main() -> std::process::ExitCode {
    match real_main(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sotto-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn load(common: &Common) -> anyhow::Result<Settings> {
    let mut s = Settings::load(common.config.as_deref(), &env).map_err(anyhow::Error::msg)?;
    if let Some(d) = &common.data {
        s.data.clone_from(d);
    }
    if let Some(v) = &common.store {
        s.store.clone_from(v);
    }
    Ok(s)
}

fn init_logging(s: &Settings) {
    // `SOTTO_LOG` (a filter) wins over the `log_level` setting.
    let filter = tracing_subscriber::EnvFilter::try_from_env("SOTTO_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&s.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if s.log_format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Runtime::new()?)
}

async fn postgres(s: &Settings, url: &str) -> anyhow::Result<PgStore> {
    PgStore::connect(url, s.store_max_connections)
        .await
        .context("cannot open the PostgreSQL store")
}

/// Runs `$body` with `$store` bound to the store the settings name.
macro_rules! with_store {
    ($settings:expr, $store:ident => $body:expr) => {{
        let s: &Settings = $settings;
        match s.store_kind().map_err(anyhow::Error::msg)? {
            StoreKind::Sqlite => {
                let $store = DataDir::open_existing(&s.data)?.store()?;
                $body
            }
            StoreKind::Postgres(url) => {
                let $store = postgres(s, &url).await?;
                $body
            }
        }
    }};
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Config => {
            print!("{}", Settings::default_file());
            Ok(())
        }
        Cmd::Invite {
            common,
            count,
            valid_days,
        } => {
            let s = load(&common)?;
            runtime()?.block_on(async {
                let (codes, hashes) = sotto_server::datadir::new_invites(count);
                let expires = SystemClock
                    .now_ms()
                    .saturating_add(valid_days.saturating_mul(86_400_000));
                with_store!(&s, store => store.add_invites(hashes, expires).await?);
                for c in codes {
                    println!("{c}");
                }
                Ok(())
            })
        }
        Cmd::Stats { common } => {
            let s = load(&common)?;
            runtime()?.block_on(async {
                let st = with_store!(&s, store => store.stats().await?);
                println!("accounts            {}", st.accounts);
                println!("live devices        {}", st.live_devices);
                println!("groups              {}", st.groups);
                println!("pending deliveries  {}", st.pending_deliveries);
                println!("one-time KeyPackages {}", st.key_packages);
                Ok(())
            })
        }
        Cmd::Devices {
            cmd: DevicesCmd::Revoke { device, common },
        } => {
            let s = load(&common)?;
            let bytes = hex::decode(device.trim()).ok();
            let Some(id) = bytes.and_then(|b| <[u8; 32]>::try_from(b).ok()) else {
                bail!("a device id is 64 hex digits");
            };
            runtime()?.block_on(async {
                let done =
                    with_store!(&s, store => store.revoke_device(sotto_proto::DeviceId(id)).await?);
                if !done {
                    bail!("no live device with that id");
                }
                println!("revoked; it is logged out within one delivery");
                Ok(())
            })
        }
        Cmd::Run {
            common,
            listen,
            public_addr,
            bus,
            registration,
            pow_bits,
            mailbox_ttl_days,
            max_attachment_mib,
            admin_listen,
            blob_dir,
        } => {
            let mut s = load(&common)?;
            macro_rules! set {
                ($($flag:ident => $field:ident),*) => {$(
                    if let Some(v) = $flag { s.$field = v.into(); }
                )*};
            }
            set!(listen => listen, public_addr => public_addr, bus => bus,
                 registration => registration, pow_bits => pow_bits,
                 mailbox_ttl_days => mailbox_ttl_days, max_attachment_mib => max_attachment_mib,
                 admin_listen => admin_listen, blob_dir => blob_dir);
            init_logging(&s);
            runtime()?.block_on(serve_settings(s))
        }
    }
}

async fn serve_settings(s: Settings) -> anyhow::Result<()> {
    let store = s.store_kind().map_err(anyhow::Error::msg)?;
    let bus = s.bus_kind().map_err(anyhow::Error::msg)?;
    let dir = DataDir::open_or_create(&s.data)?;
    match (store, bus) {
        (StoreKind::Sqlite, BusKind::Nats(_)) => bail!(
            "a NATS bus joins several nodes, which need a shared store: set `store` to a postgres:// URL"
        ),
        (StoreKind::Sqlite, BusKind::Local) => {
            let store = dir.store()?;
            serve(s, dir, store, LocalBus::new()).await
        }
        (StoreKind::Postgres(url), BusKind::Local) => {
            let store = postgres(&s, &url).await?;
            serve(s, dir, store, LocalBus::new()).await
        }
        (StoreKind::Postgres(url), BusKind::Nats(nats)) => {
            let store = postgres(&s, &url).await?;
            let bus = NatsBus::connect(&nats, &s.bus_subject_prefix, dir.mail_key()?).await?;
            serve(s, dir, store, bus).await
        }
    }
}

async fn serve<S: Store, B: Bus>(
    s: Settings,
    dir: DataDir,
    store: S,
    bus: B,
) -> anyhow::Result<()> {
    let config = s.server_config().map_err(anyhow::Error::msg)?;
    let tls = dir.tls_identity()?;
    let blobs = sotto_server::blobs::FsBlobStore::open(s.blob_dir())
        .context("cannot open the attachment directory")?;
    let listen: SocketAddr = s
        .listen
        .parse()
        .with_context(|| format!("listen {:?} is not an address", s.listen))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr()?;
    let host = if s.public_addr.is_empty() {
        bound.to_string()
    } else {
        s.public_addr.clone()
    };
    let link = format!("sotto://{host}#fp={}", tls.fingerprint());
    dir.write_link(&link)?;
    let vrf = dir.directory_key()?;
    let shared = Arc::new(Shared::new(store, bus, Arc::new(blobs), config, vrf));
    let (stop_admin, admin_stop) = tokio::sync::watch::channel(false);
    if !s.admin_listen.is_empty() {
        let addr: SocketAddr = s
            .admin_listen
            .parse()
            .with_context(|| format!("admin_listen {:?} is not an address", s.admin_listen))?;
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (admin)"))?;
        tracing::info!(addr = %l.local_addr()?, "admin endpoint listening");
        tokio::spawn(admin::serve(l, shared.clone(), admin_stop));
    }
    println!("{link}");
    tracing::info!(%bound, store = store_name(&s), bus = bus_name(&s), "sotto-server listening");
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| tracing::warn!(error = %e, "no SIGTERM handler"))
            .ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async {
                match term.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
        tracing::info!("shutting down: draining connections");
    };
    let r = sotto_server::run(listener, tls.server_config()?, shared, shutdown).await;
    // Keep answering /readyz with 503 until the very end, then stop.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = stop_admin.send(true);
    r
}

/// The kind of store, for the log (never the URL: it may hold a password).
fn store_name(s: &Settings) -> &'static str {
    match s.store_kind() {
        Ok(StoreKind::Postgres(_)) => "postgres",
        _ => "sqlite",
    }
}

fn bus_name(s: &Settings) -> &'static str {
    match s.bus_kind() {
        Ok(BusKind::Nats(_)) => "nats",
        _ => "local",
    }
}
