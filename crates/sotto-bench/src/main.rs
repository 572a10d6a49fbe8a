//! `sotto-bench`: named benchmark scenarios, each run with its comparators
//! back to back in the same process, with the same load generator, payloads
//! and durations, printing one Markdown table per scenario (BENCHMARKS.md
//! is made of them) and, with `--out`, the same tables as JSON or CSV.
//!
//! ```text
//! sotto-bench <scenario>|all [--quick] [--out FILE.json|FILE.csv]
//! ```
//!
//! One module per scenario: `floor` (the machine's own limit), `direct`
//! (1:1 delivery against mosquitto and NATS), `fanout` (one sender to a
//! group), `offline` (queued messages drained on reconnection), `commits`
//! (concurrent commits, compare-and-set on the epoch), `connections` (idle authenticated connections held), `cluster`
//! (1:1 delivery on SQLite, PostgreSQL and two nodes with NATS) and
//! `groups` (client-side MLS group operations), `checks` (the server's check
//! of a commit against openmls's `PublicGroup` alone) and `mls` (Sotto's
//! client core against raw openmls), `directory` (the key directory against
//! akd in memory), `network` (EncroChat's whole network at its peak: 60,000
//! devices over several nodes and load processes, an open-loop mix). Shared parts: `load` (the
//! Sotto load generator), `members` (member devices and their KeyPackages
//! for `groups` and `mls`), `brokers` (the comparators and their clients),
//! `payload` (a real MLS ciphertext), `sys` (CPU, memory, pinning) and
//! `report` (tables).
//!
//! The load generator pins itself to the last CPU and every server to the
//! others (`taskset`), measures its own CPU use, and marks a figure taken
//! while it was saturated as load-generator-bound.

mod brokers;
mod checks;
mod clients;
mod cluster;
mod commits;
mod connections;
mod direct;
mod directory;
mod fanout;
mod floor;
mod groups;
mod load;
mod members;
mod mls;
mod network;
mod offline;
mod payload;
mod report;
mod sys;
mod watch;

use std::path::PathBuf;
use std::time::Instant;

use report::Table;

/// The scenarios `all` runs, in order (`floor` first: the others are given
/// as ratios to it).
const SCENARIOS: &[&str] = &[
    "floor",
    "direct",
    "fanout",
    "offline",
    "commits",
    "connections",
    "cluster",
    "groups",
    "clients",
    "checks",
    "mls",
    "watch",
    "directory",
    "network",
];

/// Scenarios of the benchmark issue that do not exist yet.
const NOT_YET: &[&str] = &[];

/// What every scenario gets: the run's options and the floor, measured once.
pub(crate) struct Ctx {
    pub(crate) quick: bool,
    pub(crate) pinning: sys::Pinning,
    floor: tokio::sync::OnceCell<floor::Floor>,
}

impl Ctx {
    /// The floor of this run (measured on first use).
    pub(crate) async fn floor(&self) -> anyhow::Result<&floor::Floor> {
        self.floor.get_or_try_init(|| floor::measure(self)).await
    }

    /// " (load-generator-bound)" when the load generator used nearly all of
    /// the CPU it may use.
    pub(crate) fn bound(&self, cores: f64) -> &'static str {
        if cores >= 0.9 * sys::load_cores(&self.pinning) {
            " (load-generator-bound)"
        } else {
            ""
        }
    }
}

struct Args {
    scenario: String,
    quick: bool,
    out: Option<PathBuf>,
    rest: Vec<String>,
}

const USAGE: &str = "usage: sotto-bench <scenario>|all [--quick] [--out FILE.json|FILE.csv] [scenario arguments]
scenarios: floor, direct, fanout, offline, commits, connections [SIZES] [all|sotto], cluster [PAIRS] [SECONDS], groups [SIZES] [REPETITIONS], clients [SIZES] [MESSAGES], checks [SIZES], mls [SIZES], watch [SIZES], directory [ACCOUNTS], network [DEVICES] [SECONDS]";

fn parse(args: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut scenario = None;
    let mut quick = false;
    let mut out = None;
    let mut rest = Vec::new();
    let mut it = args;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--out" => {
                out = Some(PathBuf::from(
                    it.next()
                        .ok_or_else(|| anyhow::anyhow!("--out needs a file"))?,
                ))
            }
            "-h" | "--help" => anyhow::bail!("{USAGE}"),
            _ if scenario.is_none() => scenario = Some(a),
            _ => rest.push(a),
        }
    }
    let scenario = scenario.ok_or_else(|| anyhow::anyhow!("{USAGE}"))?;
    if scenario != "all" && !SCENARIOS.contains(&scenario.as_str()) {
        if NOT_YET.contains(&scenario.as_str()) {
            anyhow::bail!(
                "scenario {scenario} is not implemented yet (BENCHMARKS.md lists what is missing)"
            );
        }
        anyhow::bail!("unknown scenario {scenario:?}\n{USAGE}");
    }
    if let Some(o) = &out {
        let ext = o.extension().and_then(|e| e.to_str()).unwrap_or("");
        anyhow::ensure!(
            ext == "json" || ext == "csv",
            "--out: use a .json or .csv file"
        );
    }
    Ok(Args {
        scenario,
        quick,
        out,
        rest,
    })
}

/// The group sizes of a scenario: the first argument (`10,100,1000`), or
/// `quick` or `full` by default.
fn sizes(rest: &[String], quick: bool, q: &[usize], full: &[usize]) -> anyhow::Result<Vec<usize>> {
    match rest.first() {
        Some(s) => Ok(s.split(',').map(str::parse).collect::<Result<_, _>>()?),
        None if quick => Ok(q.to_vec()),
        None => Ok(full.to_vec()),
    }
}

async fn run_one(name: &str, ctx: &Ctx, rest: &[String]) -> anyhow::Result<Vec<Table>> {
    match name {
        "floor" => floor::run(ctx).await,
        "direct" => direct::run(ctx).await,
        "fanout" => fanout::run(ctx).await,
        "offline" => offline::run(ctx).await,
        "commits" => commits::run(ctx).await,
        "connections" => {
            let sizes = sizes(rest, ctx.quick, &[200], &[10_000, 50_000, 100_000])?;
            let sotto_only = match rest.get(1).map(String::as_str) {
                None | Some("all") => false,
                Some("sotto") => true,
                Some(other) => anyhow::bail!("connections: {other:?} is neither all nor sotto"),
            };
            connections::run(ctx, &sizes, sotto_only).await
        }
        "cluster" => {
            let (pairs, secs) = if ctx.quick { (2, 1) } else { (20, 10) };
            let pairs = rest
                .first()
                .map(|s| s.parse())
                .transpose()?
                .unwrap_or(pairs);
            let secs = rest.get(1).map(|s| s.parse()).transpose()?.unwrap_or(secs);
            cluster::run(ctx, pairs, secs).await
        }
        "mls" => {
            let quick = ctx.quick;
            let sizes: Option<Vec<usize>> = rest
                .first()
                .map(|s| s.split(',').map(str::parse).collect::<Result<_, _>>())
                .transpose()?;
            tokio::task::spawn_blocking(move || mls::run(quick, sizes)).await?
        }
        "checks" => {
            let sizes = sizes(rest, ctx.quick, &[4], &[10, 100, 1000])?;
            let reps = if ctx.quick { 2 } else { 10 };
            tokio::task::spawn_blocking(move || checks::run(&sizes, reps)).await?
        }
        "groups" => {
            let sizes = sizes(rest, ctx.quick, &[4], &[10, 100, 1000])?;
            let reps = rest
                .get(1)
                .map(|s| s.parse())
                .transpose()?
                .unwrap_or(if ctx.quick { 1 } else { 5 });
            // It makes its own runtime for the store: off this one.
            tokio::task::spawn_blocking(move || groups::run(&sizes, reps)).await?
        }
        "clients" => {
            let sizes = sizes(rest, ctx.quick, &[2, 4], &[2, 100, 1000])?;
            let messages = rest
                .get(1)
                .map(|s| s.parse())
                .transpose()?
                .unwrap_or(if ctx.quick { 3 } else { 200 });
            clients::run(ctx, &sizes, messages).await
        }
        "directory" => {
            let accounts = rest
                .first()
                .map(|s| s.parse())
                .transpose()?
                .unwrap_or(if ctx.quick { 100 } else { 5_000 });
            directory::run(accounts).await
        }
        "network" => {
            let devices = rest.first().map(|s| s.parse()).transpose()?;
            let secs = rest.get(1).map(|s| s.parse()).transpose()?;
            network::run(ctx, devices, secs).await
        }
        "watch" => {
            let sizes = sizes(rest, ctx.quick, &[100], &[100, 1_000, 10_000])?;
            watch::run(&sizes, if ctx.quick { 3 } else { 21 }).await
        }
        other => anyhow::bail!("unknown scenario {other:?}"),
    }
}

fn main() -> anyhow::Result<()> {
    let mut argv = std::env::args().skip(1).peekable();
    if argv.peek().map(String::as_str) == Some("__echo") {
        let kind = argv.nth(1).unwrap_or_default();
        return floor::serve_echo(&kind);
    }
    if argv.peek().map(String::as_str) == Some("__network-worker") {
        return network::worker();
    }
    let args = match parse(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let files = sys::raise_open_files();
    let pinning = sys::pin_load_generator();
    let ctx = Ctx {
        quick: args.quick,
        pinning,
        floor: tokio::sync::OnceCell::new(),
    };
    let header = serde_json::json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": sys::machine(),
        "load_generator_cpus": ctx.pinning.load,
        "server_cpus": ctx.pinning.server,
        "open_files_limit": files,
        "quick": args.quick,
    });
    println!(
        "machine: {}; load generator on CPU {}, servers on CPU {}; open files {files}{}\n",
        sys::machine(),
        ctx.pinning.load.as_deref().unwrap_or("any (not pinned)"),
        ctx.pinning.server.as_deref().unwrap_or("any (not pinned)"),
        if args.quick { "; --quick" } else { "" }
    );
    let rt = tokio::runtime::Runtime::new()?;
    let names: Vec<&str> = if args.scenario == "all" {
        SCENARIOS.to_vec()
    } else {
        vec![args.scenario.as_str()]
    };
    let mut tables = Vec::new();
    let mut failed = Vec::new();
    for name in names {
        let t = Instant::now();
        match rt.block_on(run_one(name, &ctx, &args.rest)) {
            Ok(ts) => {
                for table in &ts {
                    println!("{}", table.markdown());
                }
                eprintln!("[{name}: {:.1} s]", t.elapsed().as_secs_f64());
                tables.extend(ts);
            }
            Err(e) => {
                eprintln!("scenario {name} failed: {e:#}");
                failed.push(name);
            }
        }
    }
    if args.scenario == "all" && !NOT_YET.is_empty() {
        println!("Not implemented yet: {}.", NOT_YET.join(", "));
    }
    if let Some(out) = &args.out {
        report::write(out, &tables, &header)?;
    }
    anyhow::ensure!(failed.is_empty(), "failed: {}", failed.join(", "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> anyhow::Result<Args> {
        parse(s.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn the_command_line_is_parsed_then_checked() {
        let a = args("direct --quick --out r.json").unwrap();
        assert_eq!((a.scenario.as_str(), a.quick), ("direct", true));
        assert!(args("all --out r.txt").is_err());
        assert!(args("nonsense").is_err());
        assert!(args("mls --quick").is_ok());
    }
}
