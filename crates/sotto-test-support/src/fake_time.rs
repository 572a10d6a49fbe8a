//! A wall clock the test moves for the binaries it starts, instead of
//! sleeping through their timers (for CLI tests, which cannot hand the
//! processes a `ManualClock`).
//!
//! The binaries run under libfaketime (`LD_PRELOAD`), which adds an offset
//! read from a file to every clock read; `FAKETIME_NO_CACHE` makes it read
//! the file each time, so a process already running (the server, a
//! daemon) sees [`FakeTime::advance`] at once. Only the wall clock
//! (`CLOCK_REALTIME`: `SystemTime`, which message times and expiries are
//! read from) moves; the monotonic clock (`Instant`, tokio's timers) runs
//! on, so a periodic task (the server's purge, every second) still runs
//! on real time and notices the jump at its next tick: poll for its effect
//! with a deadline.
//!
//! Needs the Debian package `faketime` (or `SOTTO_TEST_LIBFAKETIME` naming
//! `libfaketime.so.1`); without it the test fails, saying so.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Where Debian (and `make install`) put the library.
const CANDIDATES: [&str; 3] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
];

/// A moved wall clock shared by every process started on it; clones share
/// one offset, which starts at zero.
#[derive(Debug, Clone)]
pub struct FakeTime {
    lib: PathBuf,
    file: PathBuf,
    offset_ms: Arc<AtomicU64>,
}

impl FakeTime {
    /// A clock at the real time, its offset kept in a file in `dir`.
    #[track_caller]
    pub fn new(dir: &Path) -> Self {
        let lib = library();
        probe(&lib);
        std::fs::create_dir_all(dir).expect("fake time dir");
        let t = Self {
            lib,
            file: dir.join("faketime"),
            offset_ms: Arc::default(),
        };
        t.write();
        t
    }

    /// Moves the clock of every process on it forward by `d`.
    pub fn advance(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).expect("a shorter advance");
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
        self.write();
    }

    /// Runs `c` on this clock.
    pub fn apply(&self, c: &mut Command) {
        c.env("LD_PRELOAD", &self.lib)
            .env("FAKETIME_TIMESTAMP_FILE", &self.file)
            .env("FAKETIME_NO_CACHE", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            // No shared memory for children (libfaketime 0.9.11 on; older
            // ones make it anyway: see `killed`).
            .env("FAKETIME_DISABLE_SHM", "1")
            .env_remove("FAKETIME")
            .env_remove("FAKETIME_SHARED");
    }

    /// Cleans up after process `pid`, run on this clock and killed with
    /// SIGKILL (and reaped): libfaketime 0.9.10 (Debian 12) makes a
    /// semaphore and shared memory named after each process, which only a
    /// normal exit removes.
    pub fn killed(pid: u32) {
        for name in [
            format!("/dev/shm/faketime_shm_{pid}"),
            format!("/dev/shm/sem.faketime_sem_{pid}"),
        ] {
            let _ = std::fs::remove_file(name);
        }
    }

    /// Writes the offset in seconds ("+61", or "+1.500": libfaketime reads
    /// a fraction in the C locale) by renaming a new file over the old:
    /// libfaketime must never read a half-written one (it exits on an
    /// empty spec).
    fn write(&self) {
        let ms = self.offset_ms.load(Ordering::SeqCst);
        let spec = match ms % 1000 {
            0 => format!("+{}\n", ms / 1000),
            frac => format!("+{}.{frac:03}\n", ms / 1000),
        };
        let tmp = self.file.with_extension("new");
        std::fs::write(&tmp, spec).expect("write the fake time");
        std::fs::rename(&tmp, &self.file).expect("replace the fake time");
    }
}

#[track_caller]
fn library() -> PathBuf {
    if let Ok(p) = std::env::var("SOTTO_TEST_LIBFAKETIME") {
        let p = PathBuf::from(p);
        assert!(p.exists(), "SOTTO_TEST_LIBFAKETIME: no {}", p.display());
        return p;
    }
    match CANDIDATES.iter().map(PathBuf::from).find(|p| p.exists()) {
        Some(p) => p,
        None => panic!(
            "libfaketime is required for this test (Debian package faketime; \
             or set SOTTO_TEST_LIBFAKETIME to libfaketime.so.1): none of {CANDIDATES:?}"
        ),
    }
}

/// Checks that a child process under `lib` sees a moved clock (a library
/// that cannot be preloaded is skipped by the loader with a mere warning).
#[track_caller]
fn probe(lib: &Path) {
    const AHEAD_S: u64 = 1_000_000;
    let out = Command::new("date")
        .arg("+%s")
        .env("LD_PRELOAD", lib)
        .env("FAKETIME", format!("+{AHEAD_S}"))
        .output()
        .expect("run date");
    let seen: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let expected = crate::now_ms() / 1000 + AHEAD_S;
    assert!(
        seen.abs_diff(expected) < 60,
        "libfaketime at {} does not move a child's clock (saw {seen}, expected {expected}): {}",
        lib.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
