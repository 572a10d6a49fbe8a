//! The external services a cluster test runs against, for real:
//! - [`PgDatabase`]: a fresh database on the machine's PostgreSQL
//!   (`SOTTO_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/postgres`),
//!   dropped afterwards;
//! - [`PgInstance`]: a private PostgreSQL server in a temp directory, which a
//!   test may kill and start again without disturbing other tests;
//! - [`NatsProcess`]: a private `nats-server` on a free port, likewise.
//!
//! None of them skips: a test that cannot reach or start its server fails,
//! saying what is missing.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The machine's PostgreSQL, as an admin URL.
pub fn postgres_admin_url() -> String {
    std::env::var("SOTTO_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The machine's NATS server.
pub fn nats_url() -> String {
    std::env::var("SOTTO_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// Runs `sql` on the admin database (on a thread of its own, so it works
/// inside and outside an async runtime).
fn admin_sql(url: String, sql: String) -> Result<(), String> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&url)
                .await
                .map_err(|e| format!("cannot reach PostgreSQL at {url}: {e}"))?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut c)
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        })
    })
    .join()
    .map_err(|_| "admin thread panicked".to_owned())?
}

/// `url` with its database name replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let root = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    format!("{root}/{db}{query}")
}

/// A fresh, empty database; dropped (with its connections) on drop.
#[derive(Debug)]
pub struct PgDatabase {
    admin: String,
    name: String,
    /// Its URL.
    pub url: String,
}

impl PgDatabase {
    /// Creates one on the machine's PostgreSQL.
    #[track_caller]
    pub fn create() -> Self {
        Self::create_on(&postgres_admin_url())
    }

    /// Creates one on the server behind `admin` (a URL to any database there).
    #[track_caller]
    pub fn create_on(admin: &str) -> Self {
        let name = format!("sotto_test_{:016x}", rand_u64());
        admin_sql(admin.to_owned(), format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("PostgreSQL is required for this test: {e}"));
        Self {
            admin: admin.to_owned(),
            url: with_database(admin, &name),
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = admin_sql(
            self.admin.clone(),
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// A free loopback TCP port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited at start: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on port {port} within 30 s");
}

/// A private `nats-server` on a free loopback port.
#[derive(Debug)]
pub struct NatsProcess {
    child: Option<Child>,
    /// Its port (kept across restarts).
    pub port: u16,
}

impl NatsProcess {
    /// Starts one.
    pub fn start() -> Self {
        let mut n = Self {
            child: None,
            port: free_port(),
        };
        n.spawn();
        n
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let mut c = Command::new("nats-server");
        c.args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = c.spawn().unwrap_or_else(|e| {
            panic!("nats-server is required for this test (Debian package nats-server): {e}")
        });
        wait_for_port(self.port, "nats-server", &mut child);
        self.child = Some(child);
    }

    /// Its process id while it runs (benchmarks read its CPU and memory).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills it (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn start_again(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private PostgreSQL server in a temp directory, on a free port.
#[derive(Debug)]
pub struct PgInstance {
    _dir: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
    /// Its port (kept across restarts).
    pub port: u16,
}

/// The directory holding `initdb` and `postgres`.
fn pg_bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("SOTTO_TEST_PG_BIN") {
        return PathBuf::from(d);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|r| r.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .filter(|p| p.join("initdb").exists())
        .unwrap_or_else(|| {
            panic!("PostgreSQL server binaries are required (Debian package postgresql)")
        })
}

/// PostgreSQL refuses to run as root: run it as `postgres` then.
fn as_pg_user(c: &mut Command, dir: &Path) {
    use std::os::unix::process::CommandExt;
    if current_uid() != 0 {
        return;
    }
    let uid = user_id("-u");
    let gid = user_id("-g");
    let _ = Command::new("chown")
        .args(["-R", &format!("{uid}:{gid}")])
        .arg(dir)
        .status();
    c.uid(uid).gid(gid);
}

fn current_uid() -> u32 {
    let out = Command::new("id").arg("-u").output().expect("id -u");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(1)
}

fn user_id(flag: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .expect("id postgres");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("a `postgres` user is needed to run PostgreSQL as root"))
}

impl PgInstance {
    /// Initialises and starts one.
    pub fn start() -> Self {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let data = dir.path().join("pg");
        let bin = pg_bin_dir();
        std::fs::create_dir_all(&data).expect("pg dir");
        let mut init = Command::new(bin.join("initdb"));
        init.args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "-D"])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_pg_user(&mut init, dir.path());
        let out = init.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Self {
            _dir: dir,
            data,
            bin,
            child: None,
            port: free_port(),
        };
        pg.spawn();
        pg
    }

    /// An admin URL.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn spawn(&mut self) {
        let mut c = Command::new(self.bin.join("postgres"));
        c.arg("-D")
            .arg(&self.data)
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=on",
                "-c",
                "synchronous_commit=on",
                "-c",
            ])
            .arg(format!("unix_socket_directories={}", self.data.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_pg_user(&mut c, &self.data);
        let mut child = c.spawn().expect("start postgres");
        wait_for_port(self.port, "postgres", &mut child);
        // Listening is not yet accepting: wait until a query works.
        let deadline = Instant::now() + Duration::from_secs(30);
        while admin_sql(self.url(), "SELECT 1".into()).is_err() {
            assert!(Instant::now() < deadline, "postgres did not accept queries");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.child = Some(child);
    }

    /// Stops the server the hard way (`SIGQUIT`: immediate shutdown, no
    /// checkpoint; it recovers from its WAL on the next start, as after a crash).
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-QUIT", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub fn start_again(&mut self) {
        self.crash();
        self.spawn();
    }
}

impl Drop for PgInstance {
    fn drop(&mut self) {
        self.crash();
    }
}
