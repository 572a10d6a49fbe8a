//! The network side of the terminal UI and of the daemon: one task owns
//! the [`Client`], keeps its connection, reconnects with backoff when the
//! server goes away, runs the [`Op`]s it is sent, deletes disappearing
//! messages when their time comes, and reports everything as [`Event`]s
//! over a channel. Front ends never touch the client.

use std::time::Duration;

use sotto_client::{Client, ClientError, ConversationInfo, Updates};
use tokio::sync::mpsc;

use crate::ops::{Op, Outcome, perform};

/// The longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// What a front end asks the worker.
#[derive(Debug)]
pub struct Command {
    /// Chosen by the front end; comes back in [`Event::Done`].
    pub id: u64,
    /// What to do.
    pub op: Op,
}

/// The state of the connection to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    /// Connecting (or reconnecting).
    Connecting,
    /// Connected; messages arrive live.
    Online,
    /// Not connected; the reason, and the seconds until the next attempt.
    Offline {
        /// Why (one line, no secrets).
        reason: String,
        /// Seconds until the next attempt.
        retry_in_s: u64,
    },
}

/// Why a command failed: the error's one line, and its stable kind
/// ([`ClientError::kind`]) for programs that branch on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// [`ClientError::kind`].
    pub kind: &'static str,
    /// The one line a person reads.
    pub message: String,
}

impl From<&ClientError> for Failure {
    fn from(e: &ClientError) -> Self {
        Self {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

/// What the worker reports.
#[derive(Debug)]
pub enum Event {
    /// The connection changed.
    Connection(Connection),
    /// New messages, notices, warnings.
    Updates(Updates),
    /// The conversation list, after anything that may have changed it.
    Conversations(Vec<ConversationInfo>),
    /// A command finished.
    Done {
        /// The command's id.
        id: u64,
        /// Its outcome, or why it failed.
        result: Result<Outcome, Failure>,
    },
    /// The worker stopped for good (this profile was wiped).
    Stopped(String),
}

/// How long until the next disappearing message is due, if one is stored.
fn expiry(client: &Client) -> Option<Duration> {
    let due = client.next_expiry().ok()??;
    Some(Duration::from_millis(due.saturating_sub(client.now_ms())))
}

/// Sleeps for `d`, or forever without one.
async fn until(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Runs until the command channel closes or the event channel is dropped.
pub async fn run(
    mut client: Client,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
) {
    let mut w = Worker {
        events,
        state: None,
        backoff: Duration::from_secs(1),
        directory_check: tokio::time::Instant::now() + DIRECTORY_CHECK,
    };
    if w.run(&mut client, &mut commands).await.is_err() {
        // The front end is gone.
    }
    client.go_offline().await;
}

struct Worker {
    events: mpsc::Sender<Event>,
    state: Option<Connection>,
    backoff: Duration,
    /// When the account's own key-directory entry is checked next (every
    /// login checks it too).
    directory_check: tokio::time::Instant,
}

/// How often a session that stays online checks its own entry in the key
/// directory.
const DIRECTORY_CHECK: Duration = Duration::from_secs(3600);

/// The front end dropped its receiver.
struct Gone;

impl Worker {
    async fn emit(&self, e: Event) -> Result<(), Gone> {
        self.events.send(e).await.map_err(|_| Gone)
    }

    async fn set_state(&mut self, s: Connection) -> Result<(), Gone> {
        if self.state.as_ref() != Some(&s) {
            self.state = Some(s.clone());
            self.emit(Event::Connection(s)).await?;
        }
        Ok(())
    }

    /// Reports updates, if any, and then the conversation list.
    async fn report(&self, client: &mut Client, updates: Updates) -> Result<(), Gone> {
        if updates.is_empty() {
            return Ok(());
        }
        self.emit(Event::Updates(updates)).await?;
        self.list(client).await
    }

    async fn list(&self, client: &mut Client) -> Result<(), Gone> {
        if let Ok(list) = client.conversations() {
            self.emit(Event::Conversations(list)).await?;
        }
        Ok(())
    }

    async fn run(
        &mut self,
        client: &mut Client,
        commands: &mut mpsc::Receiver<Command>,
    ) -> Result<(), Gone> {
        self.list(client).await?;
        loop {
            if !client.is_online() {
                self.set_state(Connection::Connecting).await?;
                match client.go_online().await {
                    Ok(u) => {
                        self.backoff = Duration::from_secs(1);
                        self.directory_check = tokio::time::Instant::now() + DIRECTORY_CHECK;
                        self.set_state(Connection::Online).await?;
                        self.report(client, u).await?;
                    }
                    Err(e) => {
                        if self.fatal(&e).await? {
                            return Ok(());
                        }
                        let wait = self.backoff;
                        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                        self.set_state(Connection::Offline {
                            reason: e.to_string(),
                            retry_in_s: wait.as_secs(),
                        })
                        .await?;
                        tokio::select! {
                            c = commands.recv() => match c {
                                Some(c) => self.command(client, c).await?,
                                None => return Ok(()),
                            },
                            () = tokio::time::sleep(wait) => {}
                            () = until(expiry(client)) => self.expire(client).await?,
                        }
                        continue;
                    }
                }
            }
            tokio::select! {
                c = commands.recv() => match c {
                    Some(c) => self.command(client, c).await?,
                    None => return Ok(()),
                },
                () = until(expiry(client)) => self.expire(client).await?,
                () = tokio::time::sleep_until(self.directory_check) => {
                    self.directory_check = tokio::time::Instant::now() + DIRECTORY_CHECK;
                    match client.check_directory().await {
                        Ok(u) => self.report(client, u).await?,
                        Err(e) => {
                            if self.fatal(&e).await? {
                                return Ok(());
                            }
                        }
                    }
                }
                r = client.pushed() => {
                    let r = match r {
                        Ok(()) => client.process_pushed().await,
                        Err(e) => Err(e),
                    };
                    match r {
                        Ok(u) => self.report(client, u).await?,
                        Err(e) => {
                            if self.fatal(&e).await? {
                                return Ok(());
                            }
                            // Reconnects at the top of the loop.
                        }
                    }
                }
            }
        }
    }

    /// Deletes the disappearing messages whose time came (and their
    /// files), and reports the conversation list if some went.
    async fn expire(&self, client: &mut Client) -> Result<(), Gone> {
        match client.expire() {
            Ok(0) => Ok(()),
            Ok(_) => self.list(client).await,
            // Not at once again: tried on the next wake-up.
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok(())
            }
        }
    }

    /// Reports an error that ends the worker; `true` if it was one.
    async fn fatal(&self, e: &ClientError) -> Result<bool, Gone> {
        if matches!(e, ClientError::Wiped) {
            self.emit(Event::Stopped(e.to_string())).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn command(&mut self, client: &mut Client, c: Command) -> Result<(), Gone> {
        let r = perform(client, &c.op).await;
        if let Err(ClientError::Wiped) = r {
            self.emit(Event::Stopped(ClientError::Wiped.to_string()))
                .await?;
            return Err(Gone);
        }
        let u = client.take_updates().unwrap_or_default();
        if !u.is_empty() {
            self.emit(Event::Updates(u)).await?;
        }
        if !matches!(
            c.op,
            Op::Conversations | Op::History { .. } | Op::Search { .. } | Op::Verify { .. }
        ) {
            self.list(client).await?;
        }
        if client.is_online() {
            self.set_state(Connection::Online).await?;
        }
        self.emit(Event::Done {
            id: c.id,
            result: r.map_err(|e| Failure::from(&e)),
        })
        .await
    }
}
