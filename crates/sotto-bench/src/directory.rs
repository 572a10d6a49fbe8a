//! Scenario `directory`: what the key directory (key transparency) costs.
//! Sotto's directory is the server's `KeyDirectory`: akd over the SQLite
//! store, publishing batched like a group commit. The comparator, in the
//! same run on the same entries: akd alone over its own in-memory database
//! (`AsyncInMemoryDatabase`), the least any akd deployment does.
//!
//! Measured: registration throughput (entries published through
//! `KeyDirectory::publish` by 64 registrations at a time, which share
//! epochs, and one at a time); a lookup proof (time to make, bytes, time
//! for a client to verify); a history proof of a handle with 5 versions;
//! an append-only proof over 10 epochs; and the store's growth per 1,000
//! accounts (bytes of the directory's rows, and of the database file).

use std::sync::Arc;
use std::time::{Duration, Instant};

use akd::append_only_zks::AzksParallelismConfig;
use akd::storage::StorageManager;
use akd::storage::memory::AsyncInMemoryDatabase;
use sotto_proto::{AccountId, DeviceId, Handle, Signature, SignedDeviceList};
use sotto_rules::directory::{self as d, Entry};
use sotto_server::directory::{KeyDirectory, VrfKey};
use sotto_server::store::sqlite::SqliteStore;

use crate::report::{Table, ms, ratio};

/// Registrations that arrive together.
const CONCURRENT: usize = 64;

fn handle(i: usize) -> Handle {
    Handle::new(&format!("user{i}")).expect("handle")
}

fn entry(i: usize, version: u64) -> Entry {
    let mut a = [0u8; 32];
    a[..8].copy_from_slice(&(i as u64).to_be_bytes());
    Entry::of(&SignedDeviceList {
        account: AccountId(a),
        version,
        devices: vec![DeviceId(a)],
        signature: Signature([0; 64]),
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn db_bytes(path: &std::path::Path) -> anyhow::Result<(u64, u64)> {
    let c = rusqlite::Connection::open(path)?;
    let rows: i64 = c.query_row(
        "SELECT (SELECT COALESCE(SUM(LENGTH(id) + LENGTH(record)), 0) FROM directory_records) \
         + (SELECT COALESCE(SUM(LENGTH(label) + 8 + LENGTH(record)), 0) FROM directory_states)",
        [],
        |r| r.get(0),
    )?;
    let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let size: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok((u64::try_from(rows)?, u64::try_from(pages * size)?))
}

pub(crate) async fn run(accounts: usize) -> anyhow::Result<Vec<Table>> {
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("server.db");
    let store = SqliteStore::open(&path)?;
    let vrf = VrfKey::from_bytes([5; 32]);
    let dir = Arc::new(KeyDirectory::new(store, vrf.clone()));
    let key = dir.vrf_public();
    let (_, empty_file) = {
        dir.current().await?;
        db_bytes(&path)?
    };

    // Registrations, 64 at a time, through the batched publisher.
    let started = Instant::now();
    for wave in (0..accounts).collect::<Vec<_>>().chunks(CONCURRENT) {
        let mut tasks = Vec::new();
        for &i in wave {
            let dir = dir.clone();
            tasks.push(tokio::spawn(async move {
                dir.publish(&handle(i), entry(i, 1)).await
            }));
        }
        for t in tasks {
            t.await??;
        }
    }
    let sotto_bulk = started.elapsed();
    let epochs = dir.current().await?.epoch;
    let (rows, file) = db_bytes(&path)?;

    // The comparator: akd over its in-memory database, the same entries in
    // the same epochs.
    let mem = akd::Directory::<d::Config, _, _>::new(
        StorageManager::new_no_cache(AsyncInMemoryDatabase::new()),
        vrf.clone(),
        AzksParallelismConfig::default(),
    )
    .await?;
    let started = Instant::now();
    for wave in (0..accounts).collect::<Vec<_>>().chunks(CONCURRENT) {
        let updates = wave
            .iter()
            .map(|&i| (d::label(&handle(i)), entry(i, 1).value()))
            .collect();
        mem.publish(updates).await?;
    }
    let mem_bulk = started.elapsed();

    // One registration at a time: an epoch each.
    let singles = 20;
    let mut sotto_one = Vec::new();
    let mut mem_one = Vec::new();
    for v in 2..2 + singles as u64 {
        let i = usize::try_from(v)? % accounts.max(1);
        let t = Instant::now();
        dir.publish(&handle(i), entry(i, v)).await?;
        sotto_one.push(t.elapsed());
        let t = Instant::now();
        mem.publish(vec![(d::label(&handle(i)), entry(i, v).value())])
            .await?;
        mem_one.push(t.elapsed());
    }

    let mut t = Table::new(
        "directory",
        format!("registrations into the key directory ({accounts} accounts)"),
        &["", "Sotto (akd on SQLite)", "akd in memory", "Sotto / akd"],
    );
    let per_s = |d: Duration| accounts as f64 / d.as_secs_f64().max(1e-9);
    t.row(vec![
        format!("registrations/s, {CONCURRENT} at a time"),
        format!("{:.0}", per_s(sotto_bulk)),
        format!("{:.0}", per_s(mem_bulk)),
        ratio(per_s(sotto_bulk), per_s(mem_bulk)),
    ]);
    let (so, me) = (median(sotto_one), median(mem_one));
    t.row(vec![
        "one registration alone (ms per epoch, median)".into(),
        ms(so),
        ms(me),
        ratio(so.as_secs_f64(), me.as_secs_f64()),
    ]);
    t.note(format!(
        "{accounts} accounts took {epochs} epochs with {CONCURRENT} registrations arriving together (the publisher takes everything queued into one epoch)."
    ));
    t.note(format!(
        "Growth: {:.0} KiB of directory rows and {:.0} KiB of database file per 1,000 accounts (one version each).",
        rows as f64 / accounts as f64 * 1000.0 / 1024.0,
        file.saturating_sub(empty_file) as f64 / accounts as f64 * 1000.0 / 1024.0
    ));

    // Proofs, made by the server and checked as a client checks them.
    let mut p = Table::new(
        "directory",
        format!("proofs ({accounts} accounts)"),
        &[
            "proof",
            "bytes",
            "make, Sotto (ms)",
            "make, akd in memory (ms)",
            "verify (ms)",
        ],
    );
    let probes = 20.min(accounts.max(1));
    let (mut make, mut make_mem, mut check, mut size) = (vec![], vec![], vec![], 0);
    for k in 0..probes {
        let h = handle(k * accounts / probes);
        let t0 = Instant::now();
        let (root, proof) = dir.lookup(&h).await?;
        make.push(t0.elapsed());
        let t0 = Instant::now();
        mem.lookup(d::label(&h)).await?;
        make_mem.push(t0.elapsed());
        let t0 = Instant::now();
        d::verify_lookup(&key, root, &h, &proof)?;
        check.push(t0.elapsed());
        size = proof.len();
    }
    p.row(vec![
        "lookup".into(),
        size.to_string(),
        ms(median(make)),
        ms(median(make_mem)),
        ms(median(check)),
    ]);
    // A handle with 5 versions.
    let h = handle(accounts + 1);
    for v in 1..=5 {
        dir.publish(&h, entry(accounts + 1, v)).await?;
        mem.publish(vec![(d::label(&h), entry(accounts + 1, v).value())])
            .await?;
    }
    let (mut make, mut make_mem, mut check, mut size) = (vec![], vec![], vec![], 0);
    for _ in 0..5 {
        let t0 = Instant::now();
        let (root, proof) = dir.history(&h).await?;
        make.push(t0.elapsed());
        let t0 = Instant::now();
        mem.key_history(&d::label(&h), akd::HistoryParams::Complete)
            .await?;
        make_mem.push(t0.elapsed());
        let t0 = Instant::now();
        let got = d::verify_history(&key, root, &h, &proof)?;
        check.push(t0.elapsed());
        anyhow::ensure!(got.len() == 5, "history of {} versions", got.len());
        size = proof.len();
    }
    p.row(vec![
        "history (5 versions)".into(),
        size.to_string(),
        ms(median(make)),
        ms(median(make_mem)),
        ms(median(check)),
    ]);
    let newest = dir.current().await?.epoch;
    let from = newest.saturating_sub(10);
    let t0 = Instant::now();
    let (roots, proof) = dir.audit(from, newest).await?;
    let make = t0.elapsed();
    // The comparator has its own epochs (one per wave of 64, where Sotto's
    // publisher made about two): the same span of 10 at its end.
    let mem_newest = mem.get_epoch_hash().await?.epoch();
    let t0 = Instant::now();
    mem.audit(mem_newest.saturating_sub(10), mem_newest).await?;
    let make_mem = t0.elapsed();
    let t0 = Instant::now();
    akd::auditor::audit_verify::<d::Config>(roots, d::decode_audit(&proof)?).await?;
    let check = t0.elapsed();
    p.row(vec![
        format!("append-only, epochs {from} to {newest}"),
        proof.len().to_string(),
        ms(make),
        ms(make_mem),
        ms(check),
    ]);
    p.note("Make: the server's time for one proof (median); verify: sotto_rules::directory's check, as every client runs it (the auditor's akd::auditor::audit_verify for the append-only proof).");
    p.note("Sotto's directory reads its tree from the store on every proof (no cache: several nodes share it); akd in memory is the floor.");
    Ok(vec![t, p])
}
