//! Scenario `cluster`: one-to-one store-and-forward delivery to online
//! recipients, durable before the acknowledgement, through the real
//! `sotto-server` binary over real TLS, on three setups run back to back
//! with the same load (`load::direct`, the `direct` scenario's):
//! 1. one node on the embedded SQLite store;
//! 2. one node on PostgreSQL;
//! 3. two nodes on PostgreSQL and NATS, every sender on node A and every
//!    recipient on node B (each message crosses nodes).
//!
//! PostgreSQL and NATS are the machine's (`scripts/services.sh` starts
//! them; `sotto_test_support::services`).

use std::time::Duration;

use std::path::Path;

use sotto_test_support::ServerProcess;
use sotto_test_support::services::{NatsProcess, PgDatabase, free_port};

use crate::load::{self, Outcome, Sotto};
use crate::report::{Table, ms, percentile, ratio};
use crate::{Ctx, payload, sys};

/// `n` nodes on one PostgreSQL store and one NATS bus, each on its own
/// loopback port with its data under `dir`, sharing the first node's TLS
/// identity and directory key (as an operator's nodes behind one name do),
/// pinned to the servers' CPUs, each with an admin endpoint.
pub(crate) fn start_nodes(
    dir: &Path,
    n: usize,
    store: &str,
    bus: &str,
    pinning: &sys::Pinning,
) -> anyhow::Result<Vec<Sotto>> {
    let cfg = load::bench_config(dir)?;
    let args = [
        "--store",
        store,
        "--bus",
        bus,
        "--config",
        cfg.to_str().unwrap_or_default(),
    ];
    let mut nodes: Vec<Sotto> = Vec::with_capacity(n);
    for i in 0..n {
        let data = dir.join(format!("node{i}"));
        if let Some(first) = nodes.first() {
            std::fs::create_dir_all(&data)?;
            for f in ["tls-cert.der", "tls-key.der", "directory.key"] {
                std::fs::copy(first.process.data.join(f), data.join(f))?;
            }
        }
        let addr = format!("127.0.0.1:{}", free_port()).parse()?;
        let admin = load::admin_addr()?;
        let admin_arg = admin.to_string();
        let mut with_admin = args.to_vec();
        with_admin.extend(["--admin-listen", &admin_arg]);
        nodes.push(Sotto::adopt(
            ServerProcess::start_on(&data, addr, &with_admin),
            admin,
            pinning,
        )?);
    }
    Ok(nodes)
}

/// Scenario `cluster`: `pairs` sender/recipient pairs for `secs` seconds per setup.
pub(crate) async fn run(ctx: &Ctx, pairs: usize, secs: u64) -> anyhow::Result<Vec<Table>> {
    let duration = Duration::from_secs(secs);
    let payload = payload::ciphertext()?;
    let mut rows: Vec<(&str, Outcome)> = Vec::new();
    {
        let s = Sotto::sqlite(&ctx.pinning)?;
        let inv = s.invites(2 * pairs)?;
        rows.push((
            "1 node, SQLite",
            load::direct(&s.link, &s.link, inv, pairs, duration, &payload, &[s.pid()]).await?,
        ));
    }
    {
        let tmp = tempfile::tempdir_in(".")?;
        let db = tokio::task::spawn_blocking(PgDatabase::create).await?;
        let s = Sotto::start(tmp.path(), &["--store", &db.url], &ctx.pinning)?;
        let inv = s.invites(2 * pairs)?;
        rows.push((
            "1 node, PostgreSQL",
            load::direct(&s.link, &s.link, inv, pairs, duration, &payload, &[s.pid()]).await?,
        ));
    }
    {
        let tmp = tempfile::tempdir_in(".")?;
        let db = tokio::task::spawn_blocking(PgDatabase::create).await?;
        let nats = tokio::task::spawn_blocking(NatsProcess::start).await?;
        let mut nodes = start_nodes(tmp.path(), 2, &db.url, &nats.url(), &ctx.pinning)?;
        let b = nodes.pop().ok_or_else(|| anyhow::anyhow!("node b"))?;
        let a = nodes.pop().ok_or_else(|| anyhow::anyhow!("node a"))?;
        let inv = a.invites(2 * pairs)?;
        rows.push((
            "2 nodes, PostgreSQL + NATS (cross-node)",
            load::direct(
                &a.link,
                &b.link,
                inv,
                pairs,
                duration,
                &payload,
                &[a.pid(), b.pid()],
            )
            .await?,
        ));
    }
    let mut t = Table::new(
        "cluster",
        "one-to-one delivery on one node (SQLite, PostgreSQL) and two nodes (PostgreSQL + NATS)",
        &[
            "setup",
            "delivered",
            "msgs/s",
            "ratio to 1 node SQLite",
            "p50 (ms)",
            "p99 (ms)",
            "max (ms)",
            "server CPU-µs/msg (all nodes)",
            "load generator cores",
        ],
    );
    let rate = |o: &Outcome| o.sent as f64 / o.elapsed.as_secs_f64().max(1e-9);
    let base = rows.first().map_or(0.0, |r| rate(&r.1));
    for (setup, o) in &rows {
        let mut lat: Vec<Duration> = o.seen.iter().map(|s| s.1).collect();
        lat.sort();
        t.row(vec![
            (*setup).into(),
            o.sent.to_string(),
            format!("{:.0}", rate(o)),
            ratio(rate(o), base),
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            ms(lat.last().copied().unwrap_or_default()),
            format!("{:.0}", o.server_cpu * 1e6 / o.sent.max(1) as f64),
            format!("{:.2}{}", o.load_cores, ctx.bound(o.load_cores)),
        ]);
    }
    t.note(format!(
        "{pairs} sender/recipient pairs, {secs} s per setup, {}-byte MLS ciphertexts, each send waits for its acknowledgement; PostgreSQL and NATS share the servers' CPU",
        payload.len()
    ));
    Ok(vec![t])
}
