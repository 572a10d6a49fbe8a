//! `sotto daemon --json-rpc`: JSON-RPC 2.0, one JSON object per line, over
//! a Unix socket (any number of local clients) or over standard input and
//! output. Calls go to the [`crate::worker`], which owns the client
//! and its connection; answers go back to the caller, notifications
//! (messages, notices, warnings, connection state) to every client.
//! [`rpc`] is the protocol without IO; this module is the plumbing.

pub mod rpc;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Value, json};
use sotto_client::{Client, Updates};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::worker::{self, Command, Connection, Event};

/// The longest request line accepted; longer lines get an error and are skipped.
const MAX_LINE: usize = 1024 * 1024;
/// Lines queued for a slow client before it is disconnected.
const OUT_QUEUE: usize = 1024;

/// Where the daemon listens.
#[derive(Debug, Clone)]
pub enum Listen {
    /// Standard input and output; the daemon ends when input ends.
    Stdio,
    /// A Unix socket at this path (created with mode 0600, removed at exit).
    Socket(PathBuf),
}

/// Routes answers and notifications to the connected clients.
#[derive(Debug, Default)]
struct Hub {
    clients: HashMap<u64, mpsc::Sender<String>>,
    /// Worker command id → (client, JSON-RPC id; `None` for a notification call).
    pending: HashMap<u64, (u64, Option<Value>)>,
    next_client: u64,
    next_command: u64,
    connection: Value,
}

type Shared = Arc<Mutex<Hub>>;

fn lock(h: &Shared) -> std::sync::MutexGuard<'_, Hub> {
    h.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Serves until input ends (stdio), a signal arrives (socket), or the
/// profile is wiped.
pub async fn serve(client: Client, listen: Listen) -> anyhow::Result<()> {
    let handle = client.handle().to_string();
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (ev_tx, ev_rx) = mpsc::channel(256);
    let worker = tokio::spawn(worker::run(client, cmd_rx, ev_tx));
    let hub: Shared = Arc::new(Mutex::new(Hub {
        connection: json!({ "state": "connecting" }),
        ..Hub::default()
    }));
    let hub_task = tokio::spawn(route(hub.clone(), ev_rx));
    let me = Me {
        hub: hub.clone(),
        commands: cmd_tx,
        handle,
    };
    match listen {
        Listen::Stdio => {
            tokio::select! {
                () = connection(me.clone(), tokio::io::BufReader::new(tokio::io::stdin()), tokio::io::stdout()) => {}
                _ = hub_task => {}
            }
        }
        Listen::Socket(path) => {
            let listener = bind(&path)?;
            let result = tokio::select! {
                r = accept_loop(&listener, &me) => r,
                _ = hub_task => Ok(()),
                r = tokio::signal::ctrl_c() => r.map_err(Into::into),
                () = terminated() => Ok(()),
            };
            let _ = std::fs::remove_file(&path);
            result?;
        }
    }
    drop(me);
    let _ = worker.await;
    Ok(())
}

#[cfg(unix)]
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

fn bind(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        // A socket left by a daemon that died is replaced; a live one, or
        // anything that is not a socket, is not.
        if !meta.file_type().is_socket() {
            anyhow::bail!("{}: exists and is not a socket", path.display());
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("{}: a daemon is already listening there", path.display());
        }
        std::fs::remove_file(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot replace: {e}", path.display()))?;
    }
    bind_private(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Binds a socket at `path` that only this user can connect to from its
/// first moment, whatever the umask: it is bound inside a fresh folder of
/// mode 0700 beside `path`, made 0600 there, then renamed into place (a
/// bound socket keeps working under its new name).
fn bind_private(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // Never an existing folder: `create` fails on one (someone else's too).
    let private = parent.join(format!(".sotto-daemon-{}-{nanos}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let inside = private.join("socket");
    let bound = tokio::net::UnixListener::bind(&inside).and_then(|l| {
        std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&inside, path)?;
        Ok(l)
    });
    let _ = std::fs::remove_file(&inside);
    let _ = std::fs::remove_dir(&private);
    bound
}

async fn accept_loop(l: &tokio::net::UnixListener, me: &Me) -> anyhow::Result<()> {
    loop {
        let (stream, _) = l.accept().await?;
        let (r, w) = stream.into_split();
        tokio::spawn(connection(me.clone(), tokio::io::BufReader::new(r), w));
    }
}

/// What every client connection needs.
#[derive(Debug, Clone)]
struct Me {
    hub: Shared,
    commands: mpsc::Sender<Command>,
    handle: String,
}

/// One client: reads calls, writes answers and notifications.
async fn connection(
    me: Me,
    mut input: impl AsyncBufRead + Unpin + Send,
    mut output: impl AsyncWrite + Unpin + Send + 'static,
) {
    let (tx, mut rx) = mpsc::channel::<String>(OUT_QUEUE);
    let id = {
        let mut h = lock(&me.hub);
        h.next_client += 1;
        let id = h.next_client;
        h.clients.insert(id, tx.clone());
        id
    };
    let writer = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            let ok = output.write_all(line.as_bytes()).await.is_ok()
                && output.write_all(b"\n").await.is_ok()
                && output.flush().await.is_ok();
            if !ok {
                break;
            }
        }
    });
    let mut buf = Vec::new();
    loop {
        let line = match read_line(&mut input, &mut buf).await {
            Ok(Some(Line::Text(l))) => l,
            Ok(Some(Line::TooLong)) => {
                let e = rpc::RpcError {
                    code: rpc::INVALID_REQUEST,
                    message: format!("request longer than {MAX_LINE} bytes"),
                    kind: None,
                };
                if tx.send(rpc::error(&Value::Null, &e)).await.is_err() {
                    break;
                }
                continue;
            }
            Ok(None) | Err(_) => break,
        };
        if line.trim().is_empty() {
            continue;
        }
        if let Some(answer) = call(&me, id, &line).await
            && tx.send(answer).await.is_err()
        {
            break;
        }
    }
    lock(&me.hub).clients.remove(&id);
    drop(tx);
    let _ = writer.await;
}

/// Handles one request line; returns an immediate answer, if any (the
/// answers of operations come later, through [`route`]).
async fn call(me: &Me, client: u64, line: &str) -> Option<String> {
    let c = match rpc::parse(line) {
        Ok(c) => c,
        Err((id, e)) => return Some(rpc::error(&id, &e)),
    };
    let answer = |r: Result<Value, rpc::RpcError>| {
        let id = c.id.clone()?;
        Some(match r {
            Ok(v) => rpc::result(&id, v),
            Err(e) => rpc::error(&id, &e),
        })
    };
    match rpc::method(&c.method, &c.params) {
        Err(e) => answer(Err(e)),
        Ok(rpc::Method::Local(rpc::Local::Status)) => {
            let connection = lock(&me.hub).connection.clone();
            answer(Ok(json!({
                "api_version": rpc::API_VERSION,
                "handle": me.handle,
                "connection": connection,
            })))
        }
        Ok(rpc::Method::Op(op)) => {
            let cmd = {
                let mut h = lock(&me.hub);
                h.next_command += 1;
                let cmd = h.next_command;
                h.pending.insert(cmd, (client, c.id.clone()));
                cmd
            };
            if me.commands.send(Command { id: cmd, op }).await.is_err() {
                lock(&me.hub).pending.remove(&cmd);
                return answer(Err(rpc::failed("the daemon is stopping".into())));
            }
            None
        }
    }
}

/// Sends the worker's events where they belong.
async fn route(hub: Shared, mut events: mpsc::Receiver<Event>) {
    while let Some(e) = events.recv().await {
        match e {
            Event::Done { id, result } => {
                let (client, rpc_id, tx) = {
                    let mut h = lock(&hub);
                    let Some((client, rpc_id)) = h.pending.remove(&id) else {
                        continue;
                    };
                    let tx = h.clients.get(&client).cloned();
                    (client, rpc_id, tx)
                };
                let (Some(rpc_id), Some(tx)) = (rpc_id, tx) else {
                    continue;
                };
                let line = match result {
                    Ok(o) => rpc::result(&rpc_id, o.to_json()),
                    Err(f) => rpc::error(&rpc_id, &rpc::failed_with(f)),
                };
                if tx.try_send(line).is_err() {
                    lock(&hub).clients.remove(&client);
                }
            }
            Event::Updates(u) => broadcast(&hub, updates(&u)),
            Event::Connection(c) => {
                let v = connection_json(&c);
                lock(&hub).connection = v.clone();
                broadcast(&hub, vec![rpc::notification("connection", v)]);
            }
            Event::Conversations(_) => {}
            Event::Stopped(why) => {
                broadcast(
                    &hub,
                    vec![rpc::notification("stopped", json!({ "reason": why }))],
                );
                return;
            }
        }
    }
}

fn connection_json(c: &Connection) -> Value {
    match c {
        Connection::Connecting => json!({ "state": "connecting" }),
        Connection::Online => json!({ "state": "online" }),
        Connection::Offline { reason, retry_in_s } => {
            json!({ "state": "offline", "reason": reason, "retry_in_s": retry_in_s })
        }
    }
}

fn updates(u: &Updates) -> Vec<String> {
    let mut out = Vec::new();
    for m in &u.messages {
        let mut j = crate::message_json(m);
        j["conversation_id"] = json!(m.group.to_hex());
        j["outgoing"] = json!(m.outgoing);
        out.push(rpc::notification("message", j));
    }
    for n in &u.notices {
        out.push(rpc::notification(
            "notice",
            json!({ "conversation_id": n.conversation.to_hex(), "text": crate::notice::text(n) }),
        ));
    }
    for r in &u.receipts {
        out.push(rpc::notification(
            "receipt",
            json!({
                "conversation_id": r.conversation.to_hex(),
                "id": r.id.to_hex(),
                "delivered_to": r.delivered_to,
                "read_by": r.read_by,
            }),
        ));
    }
    for w in &u.warnings {
        out.push(rpc::notification(
            "warning",
            json!({ "kind": w.kind(), "text": crate::warning::text(w) }),
        ));
    }
    out
}

/// Sends lines to every client; a client too slow to take them is dropped.
fn broadcast(hub: &Shared, lines: Vec<String>) {
    let mut h = lock(hub);
    h.clients
        .retain(|_, tx| lines.iter().all(|l| tx.try_send(l.clone()).is_ok()));
}

enum Line {
    Text(String),
    TooLong,
}

/// Reads one line of at most [`MAX_LINE`] bytes; invalid UTF-8 is replaced
/// (and then fails to parse as JSON). `None` at the end of input.
async fn read_line(
    r: &mut (impl AsyncBufRead + Unpin),
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Line>> {
    buf.clear();
    let mut too_long = false;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(if buf.is_empty() && !too_long {
                None
            } else if too_long {
                Some(Line::TooLong)
            } else {
                Some(Line::Text(String::from_utf8_lossy(buf).into_owned()))
            });
        }
        let (take, end) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        if !too_long {
            if buf.len() + take > MAX_LINE {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(&chunk[..take]);
            }
        }
        r.consume(take + usize::from(end));
        if end {
            return Ok(Some(if too_long {
                Line::TooLong
            } else {
                Line::Text(String::from_utf8_lossy(buf).into_owned())
            }));
        }
    }
}
