//! What the bench reads from the machine: CPU time and resident memory of a
//! process (from `/proc`), the kernel's TCP buffer pages, CPU pinning with
//! `taskset`, the machine's description, and where a comparator's binary is.
//! Linux only, like the servers it measures.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// Clock ticks per second of `/proc/PID/stat` times.
fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU seconds a process has used so far (all its threads).
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    (ticks(11) + ticks(12)) / ticks_per_second()
}

/// Resident memory of a process in KiB (`VmRSS`), and its peak (`VmHWM`).
pub(crate) fn rss_kib(pid: u32) -> (u64, u64) {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return (0, 0);
    };
    (
        field(&status, "VmRSS:").unwrap_or(0),
        field(&status, "VmHWM:").unwrap_or(0),
    )
}

/// The number after `name` on its line of a `/proc` file (`VmRSS:   123 kB`,
/// `write_bytes: 123`).
fn field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `field` of the `/proc` file at `path`; 0 when it cannot be read.
fn proc_field(path: &str, name: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| field(&s, name))
        .unwrap_or(0)
}

/// Pages of memory the kernel has allocated to TCP socket buffers, machine-wide
/// (`/proc/net/sockstat`, `TCP: … mem N`).
pub(crate) fn tcp_mem_pages() -> u64 {
    std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("TCP:"))?.to_owned();
            let mut it = line.split_whitespace();
            while let Some(w) = it.next() {
                if w == "mem" {
                    return it.next()?.parse().ok();
                }
            }
            None
        })
        .unwrap_or(0)
}

/// CPU use of a process over a window: a fraction of one core.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuWatch {
    pid: u32,
    cpu: f64,
    at: Instant,
}

impl CpuWatch {
    pub(crate) fn start(pid: u32) -> Self {
        Self {
            pid,
            cpu: cpu_seconds(pid),
            at: Instant::now(),
        }
    }

    /// Watches the bench itself (the load generator).
    pub(crate) fn me() -> Self {
        Self::start(std::process::id())
    }

    /// CPU seconds used since the start.
    pub(crate) fn seconds(&self) -> f64 {
        cpu_seconds(self.pid) - self.cpu
    }

    /// Cores used on average since the start (1.0 = one core busy).
    pub(crate) fn cores(&self) -> f64 {
        self.seconds() / self.at.elapsed().as_secs_f64().max(1e-9)
    }
}

/// Bytes a process caused to be written to storage over a window
/// ([`written_bytes`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DiskWatch {
    pid: u32,
    bytes: u64,
}

impl DiskWatch {
    pub(crate) fn start(pid: u32) -> Self {
        Self {
            pid,
            bytes: written_bytes(pid),
        }
    }

    /// Bytes written since the start.
    pub(crate) fn bytes(&self) -> u64 {
        written_bytes(self.pid).saturating_sub(self.bytes)
    }
}

/// How many CPUs this process may run on.
pub(crate) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The CPU list the load generator is pinned to, and the one servers get.
/// With fewer than two CPUs nothing is pinned.
pub(crate) struct Pinning {
    pub(crate) load: Option<String>,
    pub(crate) server: Option<String>,
}

/// Pins this process (the load generator) to the last CPU; servers go on
/// the others (see [`pin_server`]). Returns what was done, for the report.
pub(crate) fn pin_load_generator() -> Pinning {
    let n = cpus();
    if n < 2 || which("taskset").is_none() {
        return Pinning {
            load: None,
            server: None,
        };
    }
    let load = format!("{}", n - 1);
    let server = if n == 2 {
        "0".to_owned()
    } else {
        format!("0-{}", n - 2)
    };
    let ok = taskset(std::process::id(), &load);
    Pinning {
        load: ok.then_some(load),
        server: ok.then_some(server),
    }
}

fn taskset(pid: u32, cpus: &str) -> bool {
    Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Moves a server process (all its threads) to the servers' CPUs.
pub(crate) fn pin_server(pinning: &Pinning, pid: u32) {
    if let Some(cpus) = &pinning.server {
        taskset(pid, cpus);
    }
}

/// The load generator's CPU limit: the cores it is pinned to.
pub(crate) fn load_cores(pinning: &Pinning) -> f64 {
    if pinning.load.is_some() {
        1.0
    } else {
        cpus() as f64
    }
}

/// A binary on `PATH` or in the sbin directories Debian installs daemons to.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A comparator's binary, or an error naming the Debian package to install.
pub(crate) fn need(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    which(name).ok_or_else(|| {
        anyhow::anyhow!(
            "{name} is not installed: this scenario's comparator needs it (Debian: apt-get install {package}); sotto-bench installs nothing itself"
        )
    })
}

/// One line describing the machine: CPU model and count, memory, kernel.
pub(crate) fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let n = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    format!("{n} × {model}, {mem_gib:.0} GiB, Linux {}", kernel.trim())
}

/// The soft limit on open files of this process.
pub(crate) fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            let l = s
                .lines()
                .find(|l| l.starts_with("Max open files"))?
                .to_owned();
            l.split_whitespace().nth(3)?.parse().ok()
        })
        .unwrap_or(1024)
}

/// Raises this process's open-files limit to its hard limit with `prlimit`
/// (children inherit it); returns the limit in force afterwards.
pub(crate) fn raise_open_files() -> u64 {
    let hard = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            let l = s
                .lines()
                .find(|l| l.starts_with("Max open files"))?
                .to_owned();
            l.split_whitespace().nth(4)?.parse::<u64>().ok()
        });
    if let Some(hard) = hard {
        let _ = Command::new("prlimit")
            .args([
                "--pid",
                &std::process::id().to_string(),
                &format!("--nofile={hard}:{hard}"),
            ])
            .output();
    }
    open_files_limit()
}

/// Bytes a process has caused to be written to storage so far
/// (`write_bytes` of `/proc/PID/io`: what reached the block layer, WAL
/// and checkpoints included); 0 when it cannot be read.
pub(crate) fn written_bytes(pid: u32) -> u64 {
    proc_field(&format!("/proc/{pid}/io"), "write_bytes:")
}

/// The ids of the running processes named `name` (`/proc/PID/comm`), such
/// as every process of the machine's PostgreSQL.
pub(crate) fn pids_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .collect()
}

/// Proportional set size of a process in KiB (`Pss` of
/// `/proc/PID/smaps_rollup`): shared pages divided among their sharers,
/// so the sum over a server's processes counts its shared memory once.
pub(crate) fn pss_kib(pid: u32) -> u64 {
    proc_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}
