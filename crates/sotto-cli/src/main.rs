//! The `sotto` binary: parse the command line, unlock the profile, run one
//! operation, print the result. Every failure is one line on stderr and a
//! non-zero exit.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use sotto_cli::display::{message_line, visible};
use sotto_cli::ops::Op;
use sotto_client::{Client, ReceiveEvent, RegisterOptions, ServerLink, Suite};
use sotto_proto::Handle;
use zeroize::Zeroizing;

#[derive(Parser)]
#[command(
    name = "sotto",
    version = env!("SOTTO_VERSION"),
    about = "Sotto: end-to-end encrypted messaging over MLS"
)]
struct Cli {
    /// Profile directory (the encrypted local store).
    #[arg(long, env = "SOTTO_PROFILE", global = true)]
    profile: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum SuiteArg {
    /// MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519 (post-quantum hybrid).
    Xwing,
    /// MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519 (classical).
    X25519,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create an account on a server.
    Register {
        /// The server link (sotto://HOST:PORT#fp=...).
        link: String,
        /// The handle to claim.
        #[arg(long)]
        name: String,
        /// Invite code from the server's operator.
        #[arg(long)]
        invite: Option<String>,
        /// Ciphersuite for conversations this device creates.
        #[arg(long, value_enum, default_value = "xwing")]
        suite: SuiteArg,
    },
    /// Send a message (TEXT `-` reads it from standard input).
    Send {
        /// A handle, a group's name, or `#<group id prefix>`.
        to: String,
        /// The text.
        text: String,
        /// Reply to this message of the conversation: its id, or a unique
        /// prefix of it, as `receive --json` and `history` print it.
        #[arg(long, value_name = "ID")]
        reply_to: Option<String>,
    },
    /// React to a message with an emoji (replacing your reaction to it), or
    /// take your reaction back with --remove.
    React {
        /// A handle, a group's name, or `#<group id prefix>`.
        conversation: String,
        /// The message: its id, or a unique prefix of it, as `receive
        /// --json` and `history --json` print it.
        message: String,
        /// The emoji.
        #[arg(required_unless_present = "remove")]
        emoji: Option<String>,
        /// Take your reaction back.
        #[arg(long, conflicts_with = "emoji")]
        remove: bool,
    },
    /// Turn read receipts on or off: for the profile, or with
    /// --conversation for one conversation (`default`: it follows the
    /// profile again). Delivery receipts are always sent in conversations of
    /// at most 32 members.
    ReadReceipts {
        /// `on`, `off`, or (with --conversation) `default`.
        #[arg(value_parser = ["on", "off", "default"])]
        state: String,
        /// A handle, a group's name, or `#<group id prefix>`.
        #[arg(long)]
        conversation: Option<String>,
    },
    /// Who reacted to a message, and with what.
    Reactions {
        /// A handle, a group's name, or `#<group id prefix>`.
        conversation: String,
        /// The message: its id, or a unique prefix of it.
        message: String,
    },
    /// Edit one of your messages: every member's devices show the new text,
    /// marked as edited.
    Edit {
        /// A handle, a group's name, or `#<group id prefix>`.
        conversation: String,
        /// The message: its id, or a unique prefix of it.
        message: String,
        /// The new text.
        text: String,
    },
    /// Delete one of your messages for everyone: its text is erased from
    /// every member's devices, and a tombstone remains.
    Delete {
        /// A handle, a group's name, or `#<group id prefix>`.
        conversation: String,
        /// The message: its id, or a unique prefix of it.
        message: String,
    },
    /// Send a file: encrypted here, uploaded as an opaque blob.
    SendFile {
        /// A handle, a group's name, or `#<group id prefix>`.
        to: String,
        /// The file.
        path: PathBuf,
    },
    /// Receive pending messages, then wait for more.
    Receive {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Seconds to keep listening after the backlog.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// List known contacts.
    Contacts,
    /// Link this new profile to an existing account: shows a code to approve
    /// on one of the account's devices, then waits for the approval.
    Link {
        /// The server link (sotto://HOST:PORT#fp=...).
        link: String,
        /// Seconds to wait for the approval.
        #[arg(long, default_value_t = 600)]
        wait: u64,
    },
    /// Write an encrypted backup (history, contacts, verification states,
    /// settings), or restore one on a new machine as a new device.
    Backup {
        #[command(subcommand)]
        cmd: BackupCmd,
    },
    /// List this account's devices, approve a new one, or revoke one.
    Devices {
        #[command(subcommand)]
        cmd: Option<DevicesCmd>,
    },
    /// Make a conversation's messages disappear after DURATION (30s, 5m, 2h,
    /// 7d), or `off`.
    Disappear {
        /// A handle, a group's name, or `#<group id prefix>`.
        conversation: String,
        /// The duration, or `off`.
        duration: String,
    },
    /// The stored messages of a conversation.
    History {
        /// A handle, a group's name, or `#<group id prefix>`.
        conversation: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Search the stored messages: those with every word of TEXT (the last
    /// one may be the beginning of a word), newest first.
    Search {
        /// The words; case and accents don't matter.
        text: String,
        /// Only in this conversation: a handle, a group's name, or
        /// `#<group id prefix>`.
        #[arg(long)]
        conversation: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Set the kill code that wipes this account's devices remotely.
    #[command(subcommand)]
    KillCode(KillCodeCmd),
    /// Wipe every device of an account, from any machine (no profile needed).
    Wipe {
        /// The server link.
        link: String,
        /// The account's handle.
        #[arg(long)]
        account: String,
        /// The kill code (or SOTTO_KILL_CODE, or a prompt).
        #[arg(long)]
        kill_code: Option<String>,
    },
    /// Check, as an independent auditor, that the server's key directory
    /// only grew between two epochs (no profile needed).
    Audit {
        /// The server link.
        link: String,
        /// The first epoch.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// The last epoch (default: the newest).
        #[arg(long)]
        to: Option<u64>,
    },
    /// Set a duress passphrase: unlocking with it silently destroys this profile.
    #[command(subcommand)]
    Duress(DuressCmd),
    /// Show the safety number with a contact (and a QR code to scan).
    Verify {
        /// The contact's handle.
        handle: String,
        /// Mark the contact verified: you compared the number with them.
        #[arg(long)]
        confirm: bool,
    },
    /// Manage groups.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Block an account: its messages, invitations and key package claims
    /// are refused.
    Block {
        /// The contact's handle.
        handle: String,
    },
    /// Unblock an account.
    Unblock {
        /// The handle.
        handle: String,
    },
    /// List the accounts this profile blocked.
    Blocked,
    /// List groups with their members and epoch.
    Groups {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// The terminal chat app.
    Chat,
    /// Serve the client to other programs (bots): JSON-RPC 2.0, one object
    /// per line, on a Unix socket or on standard input and output.
    Daemon {
        /// Speak JSON-RPC 2.0 (the only protocol so far; see docs/JSON-RPC.md).
        #[arg(long, required = true)]
        json_rpc: bool,
        /// The Unix socket to listen on; standard input and output without it.
        #[arg(long)]
        socket: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KillCodeCmd {
    /// Choose the kill code (prompted twice, or SOTTO_KILL_CODE).
    Set,
}

#[derive(Subcommand)]
enum DuressCmd {
    /// Choose the duress passphrase (prompted twice, or SOTTO_DURESS_PASSPHRASE).
    Set,
}

#[derive(Subcommand)]
enum BackupCmd {
    /// Write the backup to FILE (a new file) and show its recovery key,
    /// once: it is stored nowhere.
    Create {
        /// Where to write it.
        file: PathBuf,
    },
    /// Restore the backup in FILE into this new profile (the recovery key
    /// prompted, or SOTTO_RECOVERY_KEY): a new device of the account,
    /// which joins its conversations again.
    Restore {
        /// The backup.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum DevicesCmd {
    /// Approve a new device from the code `sotto link` shows on it.
    Approve {
        /// The link code (sotto-link:...).
        code: String,
    },
    /// Revoke a device (by id or id prefix) from the account and every conversation.
    Revoke {
        /// The device id, or a prefix of it.
        id: String,
    },
}

#[derive(Subcommand)]
enum GroupCmd {
    /// Create a group; you become its admin.
    Create {
        /// The group's name.
        name: String,
        /// Handles of the first members.
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Add members (admins only).
    Add {
        /// The group's name or `#<id prefix>`.
        group: String,
        /// Handles to add.
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Remove members with all their devices (admins only).
    Remove {
        /// The group's name or `#<id prefix>`.
        group: String,
        /// Handles to remove.
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Leave a conversation now, alone: a group, or the one-to-one
    /// conversation with a handle. Nobody else has to be online.
    Leave {
        /// The group's name, `#<id prefix>`, or a handle.
        group: String,
    },
    /// Rename a group (admins only).
    Rename {
        /// The group's name or `#<id prefix>`.
        group: String,
        /// The new name.
        name: String,
    },
    /// Make a member an admin (admins only).
    Promote {
        /// The group's name or `#<id prefix>`.
        group: String,
        /// The member's handle.
        member: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // What the user should see is printed as one line; libraries' log lines
    // (openmls, rustls, through the `log` bridge) only when SOTTO_LOG asks.
    let filter = tracing_subscriber::EnvFilter::try_from_env("SOTTO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    if matches!(cli.cmd, Cmd::Chat) {
        // The screen belongs to the app: no log lines over it.
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::sink)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sotto: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sotto: {}", visible(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn passphrase(confirm: bool) -> anyhow::Result<Zeroizing<String>> {
    if let Ok(p) = std::env::var("SOTTO_PASSPHRASE") {
        return Ok(Zeroizing::new(p));
    }
    if !std::io::stdin().is_terminal() {
        bail!("no passphrase: set SOTTO_PASSPHRASE or run on a terminal");
    }
    let p = Zeroizing::new(rpassword::prompt_password("passphrase: ")?);
    if confirm {
        let again = Zeroizing::new(rpassword::prompt_password("passphrase again: ")?);
        if *again != *p {
            bail!("the passphrases differ");
        }
    }
    Ok(p)
}

/// A secret from the environment or, on a terminal, a prompt (twice when `confirm`).
fn secret(var: &str, prompt: &str, confirm: bool) -> anyhow::Result<Zeroizing<String>> {
    if let Ok(v) = std::env::var(var) {
        return Ok(Zeroizing::new(v));
    }
    if !std::io::stdin().is_terminal() {
        bail!("set {var} or run on a terminal");
    }
    let a = Zeroizing::new(rpassword::prompt_password(format!("{prompt}: "))?);
    if confirm {
        let b = Zeroizing::new(rpassword::prompt_password(format!("{prompt} again: "))?);
        if *a != *b {
            bail!("the two entries differ");
        }
    }
    Ok(a)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Cmd::Wipe {
        link,
        account,
        kill_code,
    } = &cli.cmd
    {
        let link = ServerLink::parse(link)?;
        let handle = Handle::new(account).with_context(|| account.clone())?;
        let code = match kill_code {
            Some(c) => Zeroizing::new(c.clone()),
            None => secret("SOTTO_KILL_CODE", "kill code", false)?,
        };
        let n = sotto_client::killcode::wipe(&link, &handle, &code).await?;
        println!("wipe ordered for {n} device(s) of {handle}");
        return Ok(());
    }
    if let Cmd::Audit { link, from, to } = &cli.cmd {
        let link = ServerLink::parse(link)?;
        let a = sotto_client::audit::audit(&link, *from, *to).await?;
        println!(
            "the key directory only grew from epoch {} to {}: every append-only proof holds",
            a.from, a.to
        );
        println!("root hash of epoch {}: {}", a.to, hex::encode(a.root));
        println!("directory key: {}", hex::encode(a.vrf_key));
        return Ok(());
    }
    let profile = cli
        .profile
        .context("no profile: pass --profile DIR or set SOTTO_PROFILE")?;
    match cli.cmd {
        Cmd::Wipe { .. } | Cmd::Audit { .. } => unreachable!("handled above"),
        Cmd::Chat => {
            if !std::io::stdout().is_terminal() {
                bail!("sotto chat needs a terminal");
            }
            let pass = passphrase(false)?;
            let c = Client::open(&profile, &pass)?;
            drop(pass);
            sotto_cli::tui::run(c).await?;
        }
        Cmd::Daemon {
            json_rpc: _,
            socket,
        } => {
            let pass = passphrase(false)?;
            let c = Client::open(&profile, &pass)?;
            drop(pass);
            let listen = match socket {
                Some(p) => sotto_cli::daemon::Listen::Socket(p),
                None => sotto_cli::daemon::Listen::Stdio,
            };
            sotto_cli::daemon::serve(c, listen).await?;
        }
        Cmd::Disappear {
            conversation,
            duration,
        } => {
            let after_s = if duration == "off" {
                None
            } else {
                Some(
                    sotto_client::client::parse_duration(&duration).with_context(|| {
                        format!("{duration:?} is not a duration (like 30s, 5m, 2h, 7d) or `off`")
                    })?,
                )
            };
            perform(
                &profile,
                Op::Disappear {
                    conversation,
                    after_s,
                },
            )
            .await?;
        }
        Cmd::History { conversation, json } => {
            let pass = passphrase(false)?;
            let mut c = Client::open(&profile, &pass)?;
            for m in c.history(&conversation)? {
                if json {
                    println!("{}", sotto_cli::message_json(&m));
                } else {
                    println!("{}", message_line(&m));
                }
            }
        }
        Cmd::Search {
            text,
            conversation,
            json,
        } => {
            let pass = passphrase(false)?;
            let mut c = Client::open(&profile, &pass)?;
            for m in c.search(&text, conversation.as_deref())? {
                if json {
                    println!("{}", sotto_cli::message_json(&m));
                } else {
                    // As `history` prints it, after the conversation.
                    println!("[{}] {}", visible(&m.conversation), message_line(&m));
                }
            }
        }
        Cmd::KillCode(KillCodeCmd::Set) => {
            let pass = passphrase(false)?;
            let mut c = Client::open(&profile, &pass)?;
            let code = secret("SOTTO_KILL_CODE", "kill code", true)?;
            let n = c.kill_code_set(&code).await?;
            warn(&mut c);
            println!("kill code set for {n} device(s); set it again after linking a new device");
        }
        Cmd::Duress(DuressCmd::Set) => {
            let pass = passphrase(false)?;
            let c = Client::open(&profile, &pass)?;
            let duress = secret("SOTTO_DURESS_PASSPHRASE", "duress passphrase", true)?;
            if *duress == *pass {
                bail!("the duress passphrase must differ from the passphrase");
            }
            c.set_duress(&duress)?;
            println!("duress passphrase set");
        }
        Cmd::Register {
            link,
            name,
            invite,
            suite,
        } => {
            let link = ServerLink::parse(&link)?;
            let handle = Handle::new(&name).with_context(|| name.clone())?;
            let pass = passphrase(!sotto_client::store::Store::db_path(&profile).exists())?;
            let opts = RegisterOptions {
                link,
                handle,
                invite,
                suite: match suite {
                    SuiteArg::Xwing => Suite::PostQuantum,
                    SuiteArg::X25519 => Suite::Classical,
                },
            };
            let c = Client::register(&profile, &pass, opts).await?;
            println!(
                "registered {} (account {})",
                c.handle(),
                c.identity().account.short()
            );
        }
        Cmd::Send { to, text, reply_to } => {
            let text = if text == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s.trim_end_matches('\n').to_owned()
            } else {
                text
            };
            if text.trim().is_empty() {
                bail!("empty message");
            }
            perform(&profile, Op::Send { to, text, reply_to }).await?;
        }
        Cmd::SendFile { to, path } => {
            perform(&profile, Op::SendFile { to, path }).await?;
        }
        Cmd::React {
            conversation,
            message,
            emoji,
            remove: _,
        } => {
            let op = Op::React {
                to: conversation,
                message,
                emoji,
            };
            perform(&profile, op).await?;
        }
        Cmd::ReadReceipts {
            state,
            conversation,
        } => {
            let on = match state.as_str() {
                "on" => Some(true),
                "off" => Some(false),
                _ if conversation.is_none() => bail!("`default` needs --conversation"),
                _ => None,
            };
            perform(&profile, Op::ReadReceipts { conversation, on }).await?;
        }
        Cmd::Reactions {
            conversation,
            message,
        } => {
            let op = Op::Reactions {
                to: conversation,
                message,
            };
            perform(&profile, op).await?;
        }
        Cmd::Edit {
            conversation,
            message,
            text,
        } => {
            let op = Op::Edit {
                to: conversation,
                message,
                text,
            };
            perform(&profile, op).await?;
        }
        Cmd::Delete {
            conversation,
            message,
        } => {
            let op = Op::Delete {
                to: conversation,
                message,
            };
            perform(&profile, op).await?;
        }
        Cmd::Receive { json, wait } => {
            let pass = passphrase(false)?;
            let mut c = Client::open(&profile, &pass)?;
            let mut out = std::io::stdout().lock();
            let mut failed = None;
            c.receive(Duration::from_secs(wait), |ev| match ev {
                ReceiveEvent::Message(m) => {
                    let line = if json {
                        sotto_cli::message_json(m).to_string()
                    } else if m.conversation == m.sender {
                        message_line(m)
                    } else {
                        format!("[{}] {}", visible(&m.conversation), message_line(m))
                    };
                    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
                        failed.get_or_insert(e);
                    }
                }
                ReceiveEvent::Dropped(why) => {
                    eprintln!(
                        "sotto: dropped a message that could not be processed: {}",
                        visible(&sotto_cli::warning::text(why))
                    );
                }
                // Beside the warnings, so that standard output stays the
                // stream of messages.
                ReceiveEvent::Notice(n) => {
                    eprintln!("sotto: {}", visible(&sotto_cli::notice::text(n)));
                }
                // Receipts of this account's messages: `history` shows them.
                ReceiveEvent::Synced | ReceiveEvent::Receipt(_) => {}
            })
            .await?;
            warn(&mut c);
            if let Some(e) = failed {
                return Err(e.into());
            }
        }
        Cmd::Group(g) => {
            let op = match g {
                GroupCmd::Create { name, members } => Op::GroupCreate { name, members },
                GroupCmd::Add { group, members } => Op::GroupAdd { group, members },
                GroupCmd::Remove { group, members } => Op::GroupRemove { group, members },
                GroupCmd::Leave { group } => Op::GroupLeave { group },
                GroupCmd::Rename { group, name } => Op::GroupRename { group, name },
                GroupCmd::Promote { group, member } => Op::GroupPromote { group, member },
            };
            perform(&profile, op).await?;
        }
        Cmd::Block { handle } => perform(&profile, Op::Block { handle }).await?,
        Cmd::Unblock { handle } => perform(&profile, Op::Unblock { handle }).await?,
        Cmd::Blocked => perform(&profile, Op::Blocked).await?,
        Cmd::Groups { json } => {
            let pass = passphrase(false)?;
            let mut c = Client::open(&profile, &pass)?;
            for g in c.groups()? {
                if json {
                    println!("{}", sotto_cli::group_json(&g));
                } else {
                    let gone = if g.no_device_left.is_empty() {
                        String::new()
                    } else {
                        format!(" no device left: {}", visible(&g.no_device_left.join(",")))
                    };
                    println!(
                        "#{} {} [{}] epoch {} members: {} admins: {}{gone}",
                        &g.id.to_hex()[..12],
                        visible(&g.name),
                        g.state,
                        g.epoch,
                        visible(&g.members.join(",")),
                        visible(&g.admins.join(","))
                    );
                }
            }
        }
        Cmd::Contacts => {
            let pass = passphrase(false)?;
            let c = Client::open(&profile, &pass)?;
            for k in c.contacts()? {
                let status = if k.needs_confirm {
                    "KEY CHANGED (was verified)"
                } else if k.verified {
                    "verified"
                } else if k.key_changed {
                    "KEY CHANGED"
                } else {
                    "unverified"
                };
                println!("{}\t{}\t{status}", visible(&k.handle), k.account.to_hex());
            }
        }
        Cmd::Link { link, wait } => {
            let link = ServerLink::parse(&link)?;
            let pass = passphrase(!sotto_client::store::Store::db_path(&profile).exists())?;
            let code = sotto_client::devices::link_start(&profile, &pass, &link)?;
            let text = code.to_text();
            println!("{text}");
            let qr = qrcode::QrCode::new(&text)?;
            eprintln!(
                "{}",
                qr.render::<qrcode::render::unicode::Dense1x2>()
                    .quiet_zone(true)
                    .build()
            );
            eprintln!("approve on one of your devices: sotto devices approve {text}");
            std::io::stdout().flush()?;
            let c = Client::link_wait(&profile, &pass, Duration::from_secs(wait)).await?;
            println!("linked: this device is now {}", c.handle());
        }
        Cmd::Backup {
            cmd: BackupCmd::Create { file },
        } => {
            let pass = passphrase(false)?;
            let mut c = Client::open(&profile, &pass)?;
            drop(pass);
            let (key, n) = c.create_backup(&file)?;
            println!(
                "backup written to {}: {} conversation(s), {} message(s), {} contact(s)",
                file.display(),
                n.conversations,
                n.messages,
                n.contacts
            );
            println!("recovery key (write it down: it is shown this once and stored nowhere):");
            println!("  {}", &*key.to_text());
        }
        Cmd::Backup {
            cmd: BackupCmd::Restore { file },
        } => {
            let key = secret("SOTTO_RECOVERY_KEY", "recovery key", false)?;
            let key = sotto_client::backup::RecoveryKey::parse(&key)?;
            let pass = passphrase(!sotto_client::store::Store::db_path(&profile).exists())?;
            let (mut c, r) = Client::restore_backup(&profile, &pass, &file, &key).await?;
            drop(pass);
            println!(
                "restored {} as a new device: {} conversation(s), {} message(s), {} contact(s)",
                c.handle(),
                r.summary.conversations,
                r.summary.messages,
                r.summary.contacts
            );
            println!("joined {} conversation(s) again", r.rejoined);
            if r.waiting > 0 {
                println!(
                    "{} conversation(s) could not be joined now: tried again by the next command",
                    r.waiting
                );
            }
            println!(
                "your other devices stay on the account: revoke a lost one with `sotto devices revoke ID`"
            );
            warn(&mut c);
        }
        Cmd::Devices { cmd } => {
            let pass = passphrase(false)?;
            let mut c = Client::open(&profile, &pass)?;
            match cmd {
                None => {
                    for d in c.devices().await? {
                        let mark = if d.this_device { "\tthis device" } else { "" };
                        println!("{}{mark}", d.id.to_hex());
                    }
                }
                Some(DevicesCmd::Approve { code }) => {
                    let n = c.approve(&code).await?;
                    println!("approved: the new device was added to {n} conversation(s)");
                }
                Some(DevicesCmd::Revoke { id }) => {
                    let d = c.revoke(&id).await?;
                    println!("revoked {}", d.to_hex());
                }
            }
            warn(&mut c);
        }
        Cmd::Verify { handle, confirm } => {
            if confirm {
                perform(&profile, Op::VerifyConfirm { handle }).await?;
            } else {
                let pass = passphrase(false)?;
                let c = Client::open(&profile, &pass)?;
                let v = c.verification(&handle)?;
                println!("safety number with {handle}:");
                println!("{}", safety_number_lines(&v.number));
                let qr = qrcode::QrCode::new(format!("sotto-safety:v0:{}", v.number))?;
                println!(
                    "{}",
                    qr.render::<qrcode::render::unicode::Dense1x2>()
                        .quiet_zone(true)
                        .build()
                );
                if v.contact.needs_confirm {
                    println!("WARNING: {handle}'s identity key changed since you verified it.");
                }
                println!(
                    "{handle} is {}. Compare this number with theirs (in person or on a call you trust); if it matches, run `sotto verify {handle} --confirm`.",
                    if v.contact.verified {
                        "verified"
                    } else {
                        "not verified"
                    }
                );
            }
        }
    }
    Ok(())
}

/// Runs one shared operation on the profile and prints its summary line
/// (and the client's warnings on stderr).
async fn perform(profile: &std::path::Path, op: Op) -> anyhow::Result<()> {
    let pass = passphrase(false)?;
    let mut c = Client::open(profile, &pass)?;
    let outcome = sotto_cli::ops::perform(&mut c, &op).await;
    // What was found before a failure is shown too (an alarm, a changed key).
    warn(&mut c);
    let outcome = outcome?;
    // A queued message is safe, but not sent: a script must know (exit 1).
    if let sotto_cli::ops::Outcome::Sent(sotto_client::Sent::Queued(id)) = outcome {
        anyhow::bail!(
            "not sent yet: message {} is queued and goes out with the next command that reaches the server",
            id.to_hex()
        );
    }
    println!("{}", visible(&sotto_cli::ops::summary(&op, &outcome)));
    Ok(())
}

/// Prints what the client wants the user to know (key changes) to stderr.
fn warn(c: &mut Client) {
    for w in c.take_warnings() {
        eprintln!("sotto: {}", visible(&sotto_cli::warning::text(&w)));
    }
}

fn safety_number_lines(n: &str) -> String {
    n.as_bytes()
        .chunks(30)
        .map(|half| {
            half.chunks(5)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}
