//! Scenario `commits`: G groups of M members (50 × 4) where every member
//! commits a real MLS self-update concurrently in a closed loop for a fixed
//! time, each built on the epoch the member last reached. The server checks
//! each commit against the group's public state (signature, tree, policy,
//! GroupInfo), accepts one per epoch (compare-and-set) and rejects the rest
//! as stale, telling the current epoch; the loser drops its commit, applies
//! the commits it missed (they were pushed to it) and builds a new one.
//! Reported: accepted commits/s, stale rejections, and forks (two commits
//! accepted for one epoch of one group, or a gap), which must be zero.
//! Floor, in the same run: a bare SQLite compare-and-set loop
//! (`UPDATE … SET epoch = epoch + 1 WHERE epoch = ?`) with the same
//! durability (WAL, `synchronous=FULL`) on the same disk.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sotto_client::ClientError;
use sotto_client::transport::{Connection, Event};
use sotto_proto::{EnvelopeKind, ErrorCode, GroupId, Request, Response};

use crate::load::{self, Sotto};
use crate::report::{Table, ratio};
use crate::{Ctx, sys};

struct Size {
    groups: usize,
    members: usize,
    duration: Duration,
}

/// What one member saw.
#[derive(Debug, Default)]
struct Member {
    /// Epochs its accepted commits produced.
    won: Vec<u64>,
    stale: usize,
}

/// Applies pushed commits of `group` until `device` reached `epoch`.
async fn catch_up(
    conn: &mut Connection,
    device: &load::Device,
    group: GroupId,
    epoch: u64,
    acks: &mut Vec<u64>,
) -> anyhow::Result<()> {
    while device.epoch(group) < epoch {
        let ev = match conn.queued_event() {
            Some(ev) => ev,
            None => tokio::time::timeout(Duration::from_secs(10), conn.next_event())
                .await
                .map_err(|_| anyhow::anyhow!("the winning commit never came"))??,
        };
        if let Event::Deliver(d) = ev {
            acks.push(d.seq);
            if d.envelope.kind == EnvelopeKind::Commit {
                device
                    .process(group, &d.envelope.payload.0)
                    .map_err(|e| anyhow::anyhow!("a member could not apply a commit: {e}"))?;
            }
        }
    }
    Ok(())
}

async fn member(
    mut conn: Connection,
    device: load::Device,
    group: GroupId,
    until: Instant,
) -> anyhow::Result<Member> {
    let mut m = Member::default();
    let mut acks = Vec::new();
    while Instant::now() < until {
        let r = conn
            .request(Request::Commit(device.self_update(group)))
            .await;
        match r {
            Ok(Response::Committed { epoch: e }) => {
                device.committed(group);
                m.won.push(e);
            }
            Err(ClientError::Server(e)) => match e.code {
                ErrorCode::StaleEpoch { current } => {
                    m.stale += 1;
                    device.refused(group);
                    catch_up(&mut conn, &device, group, current, &mut acks).await?;
                }
                _ => anyhow::bail!("commit refused: {e:?}"),
            },
            other => anyhow::bail!("commit: {other:?}"),
        }
        if acks.len() >= 32 {
            conn.request(Request::Ack {
                seqs: std::mem::take(&mut acks),
            })
            .await?;
        }
    }
    Ok(m)
}

/// What the Sotto side measured.
struct Outcome {
    accepted: usize,
    stale: usize,
    forks: usize,
    rate: f64,
    /// Server CPU per accepted commit, in ms.
    server_ms: f64,
    /// Cores the load generator used.
    load_cores: f64,
}

async fn sotto(ctx: &Ctx, size: &Size) -> anyhow::Result<Outcome> {
    let s = Sotto::sqlite(&ctx.pinning)?;
    let n = size.groups * size.members;
    let invites = s.invites(n)?;
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(n);
    for (i, inv) in invites.into_iter().enumerate() {
        let permit = sem.clone().acquire_owned().await?;
        let link = s.link.clone();
        tasks.push(tokio::spawn(async move {
            let r = load::register(&link, None, inv, &format!("member{i}")).await;
            drop(permit);
            r
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for t in tasks {
        conns.push(t.await??);
    }
    // Groups: the first member creates each with every member in it, and
    // the others join from their Welcomes.
    let mut groups = Vec::new();
    for g in 0..size.groups {
        let mut chunk: Vec<(load::Device, Connection)> = conns.drain(..size.members).collect();
        let gid = load::group_id(g);
        {
            let (first, rest) = chunk.split_at_mut(1);
            let others: Vec<&load::Device> = rest.iter().map(|c| &c.0).collect();
            load::make_group(&mut first[0].1, gid, &first[0].0, &others).await?;
        }
        for (d, c) in chunk.iter_mut().skip(1) {
            loop {
                let ev = tokio::time::timeout(Duration::from_secs(10), c.next_event())
                    .await
                    .map_err(|_| anyhow::anyhow!("no Welcome"))??;
                if let Event::Deliver(w) = ev {
                    anyhow::ensure!(
                        w.envelope.kind == EnvelopeKind::Welcome,
                        "{:?}",
                        w.envelope.kind
                    );
                    d.join(&w.envelope.payload.0);
                    c.request(Request::Ack { seqs: vec![w.seq] }).await?;
                    break;
                }
            }
        }
        groups.push((gid, chunk));
    }
    let cpu = sys::CpuWatch::start(s.pid());
    let me = sys::CpuWatch::me();
    let start = Instant::now();
    let until = start + size.duration;
    let mut tasks = Vec::new();
    for (g, members) in groups {
        for (d, c) in members {
            tasks.push((g, tokio::spawn(member(c, d, g, until))));
        }
    }
    let mut won: HashMap<GroupId, Vec<u64>> = HashMap::new();
    let mut stale = 0;
    for (g, t) in tasks {
        let m = t.await??;
        stale += m.stale;
        won.entry(g).or_default().extend(m.won);
    }
    let elapsed = start.elapsed();
    let (server_s, load_cores) = (cpu.seconds(), me.cores());
    let mut accepted = 0;
    let mut forks = 0;
    for (_, mut epochs) in won {
        epochs.sort_unstable();
        accepted += epochs.len();
        // Epochs 2, 3, ... each exactly once (the creation made epoch 1).
        for (i, e) in epochs.iter().enumerate() {
            if *e != i as u64 + 2 {
                forks += 1;
            }
        }
    }
    Ok(Outcome {
        accepted,
        stale,
        forks,
        rate: accepted as f64 / elapsed.as_secs_f64(),
        server_ms: server_s * 1e3 / accepted.max(1) as f64,
        load_cores,
    })
}

/// The bare compare-and-set loop: one connection, random groups, one
/// durable transaction per increment; returns increments per second.
fn sqlite_floor(groups: usize, duration: Duration) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir_in(".")?;
    let db = rusqlite::Connection::open(dir.path().join("cas.db"))?;
    db.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE groups (id INTEGER PRIMARY KEY, epoch INTEGER NOT NULL);",
    )?;
    let mut epochs = vec![1u64; groups];
    for g in 0..groups {
        db.execute("INSERT INTO groups VALUES (?1, 1)", [g as i64])?;
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        let g = rand::random::<u32>() as usize % groups;
        let changed = db.execute(
            "UPDATE groups SET epoch = epoch + 1 WHERE id = ?1 AND epoch = ?2",
            [g as i64, epochs[g] as i64],
        )?;
        anyhow::ensure!(changed == 1, "compare-and-set lost on one connection");
        epochs[g] += 1;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Scenario `commits`.
pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Table>> {
    let size = if ctx.quick {
        Size {
            groups: 4,
            members: 5,
            duration: Duration::from_secs(1),
        }
    } else {
        Size {
            groups: 50,
            members: 4,
            duration: Duration::from_secs(10),
        }
    };
    let o = sotto(ctx, &size).await?;
    let (groups, duration) = (size.groups, size.duration);
    let floor = tokio::task::spawn_blocking(move || sqlite_floor(groups, duration)).await??;
    let mut t = Table::new(
        "commits",
        "every member of every group committing concurrently",
        &[
            "system",
            "accepted commits",
            "accepted commits/s",
            "ratio to floor",
            "stale-commit rejections",
            "forks",
            "server CPU per accepted commit (ms)",
            "load generator cores",
        ],
    );
    t.row(vec![
        "Sotto, 1 node, SQLite".into(),
        o.accepted.to_string(),
        format!("{:.0}", o.rate),
        ratio(o.rate, floor),
        o.stale.to_string(),
        o.forks.to_string(),
        format!("{:.2}", o.server_ms),
        format!("{:.2}{}", o.load_cores, ctx.bound(o.load_cores)),
    ]);
    t.row(vec![
        "floor: bare SQLite compare-and-set, one connection".into(),
        "—".into(),
        format!("{floor:.0}"),
        "1.00".into(),
        "0".into(),
        "0".into(),
        "—".into(),
        "—".into(),
    ]);
    t.note(format!(
        "{} groups × {} members, {} s, real post-quantum self-update commits, each checked by the server against the group's public state, stored for and pushed to the other {} members (who apply it, on the load generator's core)",
        size.groups,
        size.members,
        size.duration.as_secs(),
        size.members - 1
    ));
    let forks = o.forks;
    anyhow::ensure!(
        forks == 0,
        "{forks} forks: two commits accepted for one epoch"
    );
    Ok(vec![t])
}
