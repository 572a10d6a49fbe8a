//! Scenario `watch`: what delivery without the bus costs the store. While a
//! node may lose wake-ups (NATS), it reads the mailbox heads of all its
//! connected devices in one query every `store_poll_ms` (500 ms by
//! default; `sotto_server::watch`). This times that read on PostgreSQL for
//! N connected devices, all of them with a head (the worst case), through
//! the store's own method, and PostgreSQL's execution time for the same
//! query (`EXPLAIN ANALYZE`), without the client's round trip.

use std::time::{Duration, Instant};

use sotto_proto::DeviceId;
use sotto_server::store::Store;
use sotto_server::store::postgres::PgStore;
use sotto_test_support::services::PgDatabase;

use crate::report::{Table, ms, percentile};

/// Scenario `watch` for `sizes` connected devices.
pub(crate) async fn run(sizes: &[usize], reps: usize) -> anyhow::Result<Vec<Table>> {
    let db = tokio::task::spawn_blocking(PgDatabase::create).await?;
    let store = PgStore::connect(&db.url, 8).await?;
    let most = sizes.iter().copied().max().unwrap_or(0);
    let devices: Vec<DeviceId> = (0..most)
        .map(|i| {
            let mut d = [0u8; 32];
            d[..8].copy_from_slice(&(i as u64).to_be_bytes());
            DeviceId(d)
        })
        .collect();
    let ids: Vec<Vec<u8>> = devices.iter().map(|d| d.0.to_vec()).collect();
    let pool = sqlx::PgPool::connect(&db.url).await?;
    sqlx::query(
        "INSERT INTO mailbox_heads (device, last_seq, posted_bytes) \
         SELECT d, 7, 0 FROM unnest($1::bytea[]) AS d",
    )
    .bind(&ids)
    .execute(&pool)
    .await?;
    sqlx::query("ANALYZE mailbox_heads").execute(&pool).await?;
    let mut t = Table::new(
        "watch",
        "Delivery without the bus: one read of the mailbox heads of N connected devices (PostgreSQL)",
        &[
            "connected devices",
            "read p50 (ms)",
            "read max (ms)",
            "PostgreSQL execution",
            "PostgreSQL share at 2 reads/s",
        ],
    );
    for &n in sizes {
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            let started = Instant::now();
            let heads = store.mailbox_heads(devices[..n].to_vec()).await?;
            times.push(started.elapsed());
            anyhow::ensure!(heads.len() == n, "{} heads of {n}", heads.len());
        }
        times.sort();
        let plan: Vec<String> = sqlx::query_scalar(
            "EXPLAIN ANALYZE SELECT h.device, h.last_seq FROM unnest($1::bytea[]) AS d(device) \
             JOIN mailbox_heads h ON h.device = d.device",
        )
        .bind(&ids[..n])
        .fetch_all(&pool)
        .await?;
        let exec_ms: f64 = plan
            .iter()
            .find_map(|l| l.strip_prefix("Execution Time: "))
            .and_then(|v| v.trim_end_matches(" ms").parse().ok())
            .unwrap_or(f64::NAN);
        t.row(vec![
            n.to_string(),
            ms(percentile(&times, 0.5)),
            ms(times.last().copied().unwrap_or(Duration::ZERO)),
            format!("{exec_ms:.2} ms"),
            format!("{:.2} %", exec_ms * 2.0 / 10.0),
        ]);
    }
    t.note(format!(
        "{reps} reads per size through PgStore::mailbox_heads (pool of 8); the share is \
         PostgreSQL's execution time at the default store_poll_ms = 500, of one core"
    ));
    Ok(vec![t])
}
