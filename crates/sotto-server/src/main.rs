//! The `sotto-server` binary: parses flags, opens the data directory and
//! calls [`sotto_server::run`]. Nothing else happens here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use sotto_server::bus::LocalBus;
use sotto_server::datadir::DataDir;
use sotto_server::{RegistrationMode, ServerConfig, Shared};

#[derive(Parser)]
#[command(name = "sotto-server", version, about = "The Sotto messaging server")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Registration {
    /// Only with single-use invite codes.
    Invite,
    /// Anyone, behind a proof of work.
    Open,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server.
    Run {
        /// Data directory; created on first start.
        #[arg(long, env = "SOTTO_DATA", default_value = "sotto-data")]
        data: PathBuf,
        /// Address to listen on.
        #[arg(long, env = "SOTTO_LISTEN", default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
        /// Host and port clients should dial, if not the listen address.
        #[arg(long, env = "SOTTO_PUBLIC_ADDR")]
        public_addr: Option<String>,
        /// How new accounts are admitted.
        #[arg(long, env = "SOTTO_REGISTRATION", value_enum, default_value = "invite")]
        registration: Registration,
        /// Proof-of-work difficulty (leading zero bits) for open registration.
        #[arg(long, env = "SOTTO_POW_BITS", default_value_t = 20)]
        pow_bits: u8,
        /// Days an undelivered message is kept.
        #[arg(long, env = "SOTTO_MAILBOX_TTL_DAYS", default_value_t = 30)]
        mailbox_ttl_days: u64,
        /// Largest attachment accepted, in MiB.
        #[arg(long, env = "SOTTO_MAX_ATTACHMENT_MIB", default_value_t = 25)]
        max_attachment_mib: u64,
    },
    /// Print single-use invite codes (works while the server runs).
    Invite {
        /// Data directory of the server.
        #[arg(long, env = "SOTTO_DATA", default_value = "sotto-data")]
        data: PathBuf,
        /// How many codes.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Days the codes stay valid.
        #[arg(long, default_value_t = 7)]
        valid_days: u64,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SOTTO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match real_main(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sotto-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Invite {
            data,
            count,
            valid_days,
        } => {
            let dir = DataDir::open_existing(&data)?;
            for code in
                dir.create_invites(count, now_ms(), Duration::from_secs(valid_days * 86_400))?
            {
                println!("{code}");
            }
            Ok(())
        }
        Cmd::Run {
            data,
            listen,
            public_addr,
            registration,
            pow_bits,
            mailbox_ttl_days,
            max_attachment_mib,
        } => {
            let dir = DataDir::open_or_create(&data)?;
            let store = dir.store()?;
            let blobs = dir.blob_store()?;
            let tls = dir.tls_identity()?;
            let config = ServerConfig {
                registration: match registration {
                    Registration::Invite => RegistrationMode::InviteOnly,
                    Registration::Open => RegistrationMode::Open { pow_bits },
                },
                mailbox_ttl: Duration::from_secs(mailbox_ttl_days * 86_400),
                limits: sotto_server::Limits {
                    max_attachment_bytes: max_attachment_mib.saturating_mul(1024 * 1024),
                    ..sotto_server::Limits::default()
                },
            };
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                let bound = listener.local_addr()?;
                let host = public_addr.unwrap_or_else(|| bound.to_string());
                let link = format!("sotto://{host}#fp={}", tls.fingerprint());
                dir.write_link(&link)?;
                println!("{link}");
                tracing::info!(%bound, "sotto-server listening");
                let shared = Arc::new(Shared::new(store, LocalBus::new(), Arc::new(blobs), config));
                let shutdown = async {
                    let _ = tokio::signal::ctrl_c().await;
                };
                sotto_server::run(listener, tls.server_config()?, shared, shutdown).await
            })
        }
    }
}
