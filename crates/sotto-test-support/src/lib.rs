//! Helpers for tests that run the real thing on loopback: the
//! `sotto-server` binary as a child process (so it can be SIGKILLed and
//! restarted), the `sotto` binary in its own profile directory, and the
//! server library's `run` in-process on `127.0.0.1:0`, and real MLS members
//! for tests that speak the raw protocol ([`mls`]). A failing CLI call
//! panics with a report of the command, its output and the files involved.
//! A [`World`] made with [`World::with_fake_time`] runs its binaries on a
//! wall clock the test moves ([`FakeTime`]) instead of sleeping.

pub mod balancer;
pub mod cluster;
mod fake_time;
pub mod malice;
pub mod mls;
pub mod proxy;
pub mod services;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;

use sotto_server::bus::LocalBus;
use sotto_server::datadir::DataDir;
use sotto_server::{ServerConfig, Shared};

pub use fake_time::FakeTime;

/// The directory the workspace's binaries are built into, found from the
/// test executable (`target/<profile>/deps/<test>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    if deps.ends_with("deps") {
        deps.parent().expect("profile dir").to_owned()
    } else {
        deps.to_owned()
    }
}

/// The path of a workspace binary; panics with a hint if it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not built: run the tests with `cargo test --workspace` (or `cargo build --workspace` first)",
        p.display()
    );
    p
}

/// The result of a command, with everything needed to explain a failure.
#[derive(Debug)]
pub struct Run {
    /// The command line.
    pub cmd: String,
    /// Its output.
    pub out: Output,
}

impl Run {
    /// Standard output as text.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }

    /// Standard error as text.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }

    fn report(&self) -> String {
        format!(
            "command: {}\nstatus: {}\n--- stdout\n{}--- stderr\n{}",
            self.cmd,
            self.out.status,
            self.stdout(),
            self.stderr()
        )
    }

    /// Asserts success; returns stdout.
    #[track_caller]
    pub fn ok(&self) -> String {
        assert!(
            self.out.status.success(),
            "command failed\n{}",
            self.report()
        );
        self.stdout()
    }

    /// Asserts failure with a one-line error on stderr containing `needle`
    /// (after the warnings the command gathered before it failed, each a
    /// line of its own).
    #[track_caller]
    pub fn fails_with(&self, needle: &str) {
        assert!(
            !self.out.status.success(),
            "command should have failed\n{}",
            self.report()
        );
        let err = self.stderr();
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        let Some((last, before)) = lines.split_last() else {
            panic!("expected an error line\n{}", self.report());
        };
        assert!(
            before.iter().all(|l| l.starts_with("sotto: ")
                && (l.contains("WARNING") || l.contains("ALARM") || l.contains("warning"))),
            "expected warnings before the one error line\n{}",
            self.report()
        );
        assert!(
            last.contains(needle),
            "expected an error containing {needle:?}\n{}",
            self.report()
        );
    }
}

/// A `sotto` profile in a directory, unlocked with a fixed passphrase.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The profile directory.
    pub dir: PathBuf,
    /// Its passphrase.
    pub passphrase: String,
    time: Option<FakeTime>,
}

impl Profile {
    /// A profile at `dir` (not created until used).
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            passphrase: "correct horse battery staple".into(),
            time: None,
        }
    }

    /// The same profile, its `sotto` run on `time`.
    pub fn on_fake_time(mut self, time: FakeTime) -> Self {
        self.time = Some(time);
        self
    }

    /// `sotto --profile DIR ARGS...` with the passphrase in the environment
    /// (and on the profile's fake time), for a caller that runs it itself.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_with(args, &self.passphrase)
    }

    fn command_with(&self, args: &[&str], passphrase: &str) -> Command {
        let mut c = Command::new(bin("sotto"));
        c.arg("--profile").arg(&self.dir).args(args);
        c.env("SOTTO_PASSPHRASE", passphrase)
            .env_remove("SOTTO_PROFILE");
        if let Some(t) = &self.time {
            t.apply(&mut c);
        }
        c
    }

    /// Runs `sotto --profile DIR ARGS...` with the passphrase in the environment.
    pub fn sotto(&self, args: &[&str]) -> Run {
        self.sotto_with(args, &self.passphrase)
    }

    /// Runs `sotto` with extra environment variables.
    pub fn sotto_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut c = self.command(args);
        for (k, v) in env {
            c.env(k, v);
        }
        run(c)
    }

    /// Starts `sotto` in the background with piped output.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sotto")
    }

    /// Runs `sotto` with another passphrase.
    pub fn sotto_with(&self, args: &[&str], passphrase: &str) -> Run {
        run(self.command_with(args, passphrase))
    }
}

impl Profile {
    /// (sender, text) of each message `sotto receive --json` shows.
    #[track_caller]
    pub fn received(&self) -> Vec<(String, String)> {
        sender_and_text(&self.sotto(&["receive", "--json"]).ok())
    }

    /// (sender, text) of each message `sotto history CONVERSATION --json`
    /// lists, oldest first.
    #[track_caller]
    pub fn history(&self, conversation: &str) -> Vec<(String, String)> {
        sender_and_text(&self.sotto(&["history", conversation, "--json"]).ok())
    }

    /// Runs `sotto` with `input` on standard input.
    pub fn sotto_stdin(&self, args: &[&str], input: &str) -> Run {
        use std::io::Write;
        let mut c = self.command(args);
        let cmd = format!("{c:?} < {input:?}");
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        let out = child.wait_with_output().expect("wait");
        Run { cmd, out }
    }
}

/// Runs `sotto` without a profile (e.g. `sotto wipe`).
pub fn sotto_anywhere(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut c = Command::new(bin("sotto"));
    c.args(args)
        .env_remove("SOTTO_PROFILE")
        .env_remove("SOTTO_PASSPHRASE");
    for (k, v) in env {
        c.env(k, v);
    }
    run(c)
}

/// Runs a command to completion with no stdin.
pub fn run(mut c: Command) -> Run {
    let cmd = format!("{c:?}");
    let out = c
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    Run { cmd, out }
}

/// The `sotto-server` binary running as a child process.
#[derive(Debug)]
pub struct ServerProcess {
    child: Option<Child>,
    /// The data directory.
    pub data: PathBuf,
    /// The server link it printed.
    pub link: String,
    /// The address it listens on.
    pub addr: SocketAddr,
    extra: Vec<String>,
    time: Option<FakeTime>,
}

impl ServerProcess {
    /// Starts a server on a free loopback port with a new data directory.
    pub fn start(data: &Path, extra: &[&str]) -> Self {
        Self::launch(data, None, extra, None)
    }

    /// The same on `time` (also across restarts, and for its invites).
    pub fn start_on_fake_time(data: &Path, extra: &[&str], time: FakeTime) -> Self {
        Self::launch(data, None, extra, Some(time))
    }

    /// Starts a server listening on `addr` (its link may name another
    /// address: `--public-addr` in `extra`).
    pub fn start_on(data: &Path, addr: SocketAddr, extra: &[&str]) -> Self {
        Self::launch(data, Some(addr), extra, None)
    }

    fn launch(
        data: &Path,
        addr: Option<SocketAddr>,
        extra: &[&str],
        time: Option<FakeTime>,
    ) -> Self {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let listen = addr.map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
        let (child, link) = Self::spawn(data, &listen, &extra, time.as_ref());
        Self {
            child: Some(child),
            data: data.to_owned(),
            addr: addr.unwrap_or_else(|| link_addr(&link)),
            link,
            extra,
            time,
        }
    }

    fn spawn(
        data: &Path,
        listen: &str,
        extra: &[String],
        time: Option<&FakeTime>,
    ) -> (Child, String) {
        let mut c = Command::new(bin("sotto-server"));
        c.args(["run", "--listen", listen, "--data"])
            .arg(data)
            .args(extra)
            .env("SOTTO_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(t) = time {
            t.apply(&mut c);
        }
        let mut child = c.spawn().expect("spawn sotto-server");
        let stdout = child.stdout.take().expect("server stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read server link");
        assert!(
            line.starts_with("sotto://"),
            "server printed {line:?} instead of its link"
        );
        (child, line.trim().to_owned())
    }

    /// Kills the server with SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            if self.time.is_some() {
                FakeTime::killed(c.id());
            }
        }
    }

    /// Starts the server again on the same data directory and port.
    pub fn restart(&mut self) {
        self.kill9();
        let (child, link) = Self::spawn(
            &self.data,
            &self.addr.to_string(),
            &self.extra,
            self.time.as_ref(),
        );
        assert_eq!(link, self.link, "the server link changed across a restart");
        self.child = Some(child);
    }

    /// A fresh single-use invite code (made while the server runs, in the
    /// store it runs on).
    pub fn invite(&self) -> String {
        let mut c = Command::new(bin("sotto-server"));
        c.args(["invite", "--data"]).arg(&self.data);
        c.args(self.store_args());
        if let Some(t) = &self.time {
            t.apply(&mut c);
        }
        run(c).ok().trim().to_owned()
    }

    /// The `--store`/`--config` flags it was started with.
    pub fn store_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut it = self.extra.iter();
        while let Some(a) = it.next() {
            if a == "--store" || a == "--config" {
                out.push(a.clone());
                out.extend(it.next().cloned());
            }
        }
        out
    }

    /// The process id while it runs (benchmarks read its CPU and memory).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends SIGTERM and waits for the process to exit (a graceful stop).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let c = self.child.as_mut().expect("server running");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let status = c.wait().expect("wait for server");
        self.child = None;
        status
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn link_addr(link: &str) -> SocketAddr {
    let rest = link.strip_prefix("sotto://").expect("link scheme");
    let authority = rest.split('#').next().expect("authority");
    authority.parse().expect("link authority is an address")
}

/// A scenario's world: a temp directory, the real server binary running on
/// a data directory inside it, and profiles beside it.
#[derive(Debug)]
pub struct World {
    _tmp: tempfile::TempDir,
    /// The temp directory.
    pub root: PathBuf,
    /// The server.
    pub server: ServerProcess,
    time: Option<FakeTime>,
}

impl World {
    /// A new world; `extra` goes to `sotto-server run`.
    pub fn new(extra: &[&str]) -> Self {
        Self::make(extra, false)
    }

    /// A new world whose server and profiles run on one wall clock the
    /// test moves ([`World::fake_time`]); fails without libfaketime.
    #[track_caller]
    pub fn with_fake_time(extra: &[&str]) -> Self {
        Self::make(extra, true)
    }

    #[track_caller]
    fn make(extra: &[&str], fake_time: bool) -> Self {
        let tmp = tempfile::TempDir::new().expect("temp dir");
        let root = tmp.path().to_owned();
        let time = fake_time.then(|| FakeTime::new(&root.join("clock")));
        let server = ServerProcess::launch(&root.join("server"), None, extra, time.clone());
        Self {
            _tmp: tmp,
            root,
            server,
            time,
        }
    }

    /// The clock of a world made with [`World::with_fake_time`].
    #[track_caller]
    pub fn fake_time(&self) -> &FakeTime {
        self.time
            .as_ref()
            .expect("this world runs on the real clock: make it with World::with_fake_time")
    }

    /// A profile directory in the world (not registered).
    pub fn profile(&self, name: &str) -> Profile {
        let p = Profile::new(self.root.join(name));
        match &self.time {
            Some(t) => p.on_fake_time(t.clone()),
            None => p,
        }
    }

    /// A person registered with an invite under handle `name`.
    #[track_caller]
    pub fn person(&self, name: &str) -> Profile {
        let p = self.profile(name);
        let invite = self.server.invite();
        p.sotto(&[
            "register",
            &self.server.link,
            "--name",
            name,
            "--invite",
            &invite,
        ])
        .ok();
        p
    }

    /// Links a new device to `first`'s account (`sotto link` on a new
    /// profile, `sotto devices approve` on `first`), under profile `dir_name`.
    #[track_caller]
    pub fn link_device(&self, first: &Profile, dir_name: &str) -> Profile {
        use std::io::Read;
        let second = self.profile(dir_name);
        let mut child = second.spawn(&["link", &self.server.link, "--wait", "60"]);
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut code = String::new();
        out.read_line(&mut code).expect("read the link code");
        assert!(code.starts_with("sotto-link:"), "link printed {code:?}");
        first.sotto(&["devices", "approve", code.trim()]).ok();
        let status = child.wait().expect("wait for link");
        let mut rest = String::new();
        out.read_to_string(&mut rest).expect("stdout");
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            e.read_to_string(&mut err).expect("stderr");
        }
        assert!(status.success(), "link failed: {rest}\n{err}");
        assert!(rest.contains("linked: this device is now"), "{rest}");
        second
    }

    /// The server's database, for checks and for playing a malicious server.
    pub fn server_db(&self) -> rusqlite::Connection {
        let db = rusqlite::Connection::open(self.server.data.join("server.db")).expect("server db");
        db.busy_timeout(std::time::Duration::from_secs(5))
            .expect("busy timeout");
        db
    }
}

/// The server library running in this process on `127.0.0.1:0`.
#[derive(Debug)]
pub struct InProcessServer {
    /// The server link.
    pub link: String,
    /// The data directory.
    pub data: DataDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl InProcessServer {
    /// Starts `run` with `config` on a new data directory under `dir`.
    pub async fn start(dir: &Path, config: ServerConfig) -> Self {
        let data = DataDir::open_or_create(&dir.join("server")).expect("data dir");
        let store = data.store().expect("store");
        let tls = data.tls_identity().expect("tls identity");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let link = format!("sotto://{addr}#fp={}", tls.fingerprint());
        let blobs = data.blob_store().expect("blob store");
        let vrf = data.directory_key().expect("directory key");
        let shared = Arc::new(Shared::new(
            store,
            LocalBus::new(),
            Arc::new(blobs),
            config,
            vrf,
        ));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tls_cfg = tls.server_config().expect("tls config");
        let task = tokio::spawn(sotto_server::run(listener, tls_cfg, shared, async {
            let _ = rx.await;
        }));
        Self {
            link,
            data,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// A fresh invite code.
    pub fn invite(&self) -> String {
        self.data
            .create_invites(1, now_ms(), std::time::Duration::from_secs(3600))
            .expect("invite")
            .remove(0)
    }

    /// Stops the server and waits until every connection has closed.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task").expect("server run");
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// (sender, text) of each line of `sotto receive --json` or `history
/// --json` output.
#[track_caller]
pub fn sender_and_text(out: &str) -> Vec<(String, String)> {
    out.lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad json line {l:?}: {e}"));
            let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            (field("sender"), field("text"))
        })
        .collect()
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The files under `dir` whose raw bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| {
            std::fs::read(p)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
        .collect()
}
