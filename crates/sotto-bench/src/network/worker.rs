//! The load process of the `network` scenario (`sotto-bench
//! __network-worker`): registers its slice of the devices, makes their
//! conversations with real MLS commits, sends its share of the schedule
//! and counts what each device received (see the parent module).

use std::collections::HashMap;
use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sotto_client::ServerLink;
use sotto_client::transport::{Connection, Event};
use sotto_proto::{Blob, EnvelopeKind, GroupId, Request, Response, SendRequest};

use super::{GRACE, GROUPS_AT_ONCE, MIX, REGISTER_AT_ONCE, since};
use crate::load::{self, Device};
use crate::{payload, sys};

/// `__network-worker`: one load process, driven through its stdin and
/// stdout (one JSON object a line).
pub(crate) fn worker() -> anyhow::Result<()> {
    sys::raise_open_files();
    let mut input = std::io::stdin().lock();
    let mut line = String::new();
    input.read_line(&mut line)?;
    let spec: Value = serde_json::from_str(&line)?;
    let rt = tokio::runtime::Runtime::new()?;
    let out = rt.block_on(work(&spec, &mut input));
    if let Err(e) = &out {
        println!("{}", json!({ "error": format!("{e:#}") }));
    }
    // The devices' tasks are not waited for: the process ends here.
    rt.shutdown_background();
    out
}

/// One conversation a worker sends to: its sender, members (indices into
/// the worker's devices) and class in [`MIX`].
struct Conversation {
    sender: usize,
    members: Vec<usize>,
    class: usize,
}

/// Splits `devices` into conversations: senders first (one per
/// conversation), then the one-to-one recipients, then a pool the groups
/// draw their members from in turn; the rest stay idle. Returns the
/// conversations and each class's group size (capped by the pool).
fn plan(devices: usize, counts: [usize; 4]) -> anyhow::Result<(Vec<Conversation>, Vec<usize>)> {
    let senders: usize = counts.iter().sum();
    let pool_start = senders + counts[0];
    anyhow::ensure!(
        devices > pool_start + 1,
        "{devices} devices are too few for {senders} conversations"
    );
    let pool = devices - pool_start;
    let sizes: Vec<usize> = MIX
        .iter()
        .map(|&(size, _)| if size == 2 { 2 } else { size.min(pool + 1) })
        .collect();
    let mut out = Vec::with_capacity(senders);
    let mut cursor = 0usize;
    for (class, &count) in counts.iter().enumerate() {
        for _ in 0..count {
            let sender = out.len();
            let members = if class == 0 {
                vec![senders + sender]
            } else {
                (0..sizes[class] - 1)
                    .map(|_| {
                        let m = pool_start + cursor % pool;
                        cursor += 1;
                        m
                    })
                    .collect()
            };
            out.push(Conversation {
                sender,
                members,
                class,
            });
        }
    }
    Ok((out, sizes))
}

/// What the devices of a worker saw: (message, recipient device, latency in µs).
type Arrivals = Arc<Mutex<Vec<(u64, u32, u32)>>>;

fn source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % 16) as u8))
}

async fn work(spec: &Value, input: &mut impl BufRead) -> anyhow::Result<()> {
    let w = spec["worker"].as_u64().unwrap_or(0) as usize;
    let epoch = spec["epoch"].as_u64().unwrap_or(0);
    let rate = spec["rate"].as_f64().unwrap_or(0.0);
    let secs = spec["secs"].as_u64().unwrap_or(0);
    let counts: [usize; 4] = serde_json::from_value(spec["conversations"].clone())?;
    let invites: Vec<String> = serde_json::from_value(spec["invites"].clone())?;
    let links: Vec<ServerLink> = spec["links"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(ServerLink::parse))
        .into_iter()
        .flatten()
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(!links.is_empty(), "no server links");
    let (conversations, sizes) = plan(invites.len(), counts)?;

    // Every device answers its connection from the moment it is registered
    // (a connection left unread for the server's idle timeout is closed):
    // a sender pumps it while it waits for the others and for its turn to
    // make its conversation, then sends; every other device receives.
    let arrivals: Arrivals = Arc::new(Mutex::new(Vec::new()));
    let got = Arc::new(AtomicUsize::new(0));
    let acked: Acked = Arc::new(Mutex::new(Vec::new()));
    let (registered, all) = tokio::sync::watch::channel(None);
    let turns = Arc::new(tokio::sync::Semaphore::new(GROUPS_AT_ONCE));
    let ciphertext = Arc::new(payload::ciphertext()?);
    let mut queues = Vec::with_capacity(conversations.len());
    let mut made = Vec::with_capacity(conversations.len());
    let mut roles: Vec<Option<Converse>> = Vec::with_capacity(conversations.len());
    for (k, c) in conversations.iter().enumerate() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (done, answer) = tokio::sync::oneshot::channel();
        queues.push(tx);
        made.push(answer);
        roles.push(Some(Converse {
            group: load::group_id(w * 1_000_000 + k),
            me: c.sender,
            members: c.members.clone(),
            all: all.clone(),
            turns: turns.clone(),
            ciphertext: ciphertext.clone(),
            queue: rx,
            acked: acked.clone(),
            made: done,
        }));
    }
    drop(all);

    // Register every device, `REGISTER_AT_ONCE` at a time, through the
    // first node (every node publishing the key directory at once mostly
    // loses its epoch to another: BENCHMARKS.md), then log it in to its
    // own node.
    let sem = Arc::new(tokio::sync::Semaphore::new(REGISTER_AT_ONCE));
    let mut tasks = Vec::with_capacity(invites.len());
    for (i, invite) in invites.into_iter().enumerate() {
        let permit = sem.clone().acquire_owned().await?;
        let first = links[0].clone();
        let node = (i + w) % links.len();
        let link = (node != 0).then(|| links[node].clone());
        let role = roles.get_mut(i).and_then(Option::take);
        let (arrivals, got) = (arrivals.clone(), got.clone());
        tasks.push(tokio::spawn(async move {
            let r = async {
                let (d, mut c) =
                    load::register(&first, Some(source(i)), invite, &format!("w{w}d{i}")).await?;
                if let Some(link) = link {
                    c.close().await;
                    c = load::login(&link, Some(source(i)), &d).await?;
                }
                let task = match role {
                    Some(role) => tokio::spawn(converse(c, role)),
                    None => tokio::spawn(receive(c, i as u32, epoch, arrivals, got)),
                };
                anyhow::Ok((Arc::new(d), task))
            }
            .await;
            drop(permit);
            r
        }));
    }
    let mut devices: Vec<Arc<Device>> = Vec::with_capacity(tasks.len());
    let mut senders = Vec::with_capacity(conversations.len());
    for (i, t) in tasks.into_iter().enumerate() {
        let (d, task) = t.await??;
        devices.push(d);
        if i < conversations.len() {
            senders.push(task);
        }
    }
    registered.send_replace(Some(Arc::new(devices)));
    for m in made {
        m.await
            .map_err(|_| anyhow::anyhow!("a conversation's task ended before making it"))??;
    }
    registered.send_replace(None);
    println!("{}", json!({ "ready": { "sizes": sizes } }));

    let mut line = String::new();
    tokio::task::block_in_place(|| input.read_line(&mut line))?;
    let start: Value = serde_json::from_str(&line)?;
    let start = start["start"].as_u64().unwrap_or(0);

    // The schedule: Poisson arrivals, each given a class by the mix and a
    // conversation of that class at random.
    let schedule = load::poisson_arrivals(rate, Duration::from_secs(secs), 21 + w as u64);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7 + w as u64);
    let by_class: Vec<Vec<usize>> = (0..MIX.len())
        .map(|class| {
            conversations
                .iter()
                .enumerate()
                .filter(|(_, c)| c.class == class)
                .map(|(k, _)| k)
                .collect()
        })
        .collect();
    for (n, at) in schedule.iter().enumerate() {
        let due = start + at.as_nanos() as u64;
        let wait = due.saturating_sub(since(epoch));
        tokio::time::sleep(Duration::from_nanos(wait)).await;
        let mut u: f64 = rng.r#gen();
        let mut class = 0;
        while class + 1 < MIX.len() && u >= MIX[class].1 {
            u -= MIX[class].1;
            class += 1;
        }
        let of = &by_class[class];
        if of.is_empty() {
            continue;
        }
        let k = of[rng.gen_range(0..of.len())];
        let _ = queues[k].send((due, n as u64 + 1));
    }
    drop(queues);
    for s in senders {
        s.await?;
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap_or_else(|p| p.into_inner()));
    let expected: usize = acked.iter().map(|a| a.1).sum();
    load::arrived(&got, expected, GRACE).await;
    // A moment more, for any duplicate still on its way.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut seen = std::mem::take(&mut *arrivals.lock().unwrap_or_else(|p| p.into_inner()));
    let total = seen.len();
    let latencies: Vec<u32> = seen.iter().map(|s| s.2).collect();
    seen.sort_unstable_by_key(|s| (s.0, s.1));
    seen.dedup_by_key(|s| (s.0, s.1));
    let mut reached: HashMap<u64, usize> = HashMap::new();
    for s in &seen {
        *reached.entry(s.0).or_default() += 1;
    }
    let lost: usize = acked
        .iter()
        .map(|(m, want)| want.saturating_sub(reached.get(m).copied().unwrap_or(0)))
        .sum();
    println!(
        "{}",
        json!({ "result": {
            "scheduled": schedule.len(),
            "sent": acked.len(),
            "delivered": seen.len(),
            "duplicates": total - seen.len(),
            "lost": lost,
            "latencies_us": latencies,
        }})
    );
    Ok(())
}

/// The messages each sender had acknowledged: (message, recipients).
type Acked = Arc<Mutex<Vec<(u64, usize)>>>;

/// What a sender needs to make its conversation and then send to it.
struct Converse {
    group: GroupId,
    /// Its own index among the worker's devices.
    me: usize,
    members: Vec<usize>,
    /// Every device of the worker, once all are registered.
    all: tokio::sync::watch::Receiver<Option<Arc<Vec<Arc<Device>>>>>,
    /// Turns to make a conversation ([`GROUPS_AT_ONCE`] at a time).
    turns: Arc<tokio::sync::Semaphore>,
    ciphertext: Arc<Vec<u8>>,
    queue: tokio::sync::mpsc::UnboundedReceiver<(u64, u64)>,
    acked: Acked,
    /// Told when the conversation is made (or why not).
    made: tokio::sync::oneshot::Sender<anyhow::Result<()>>,
}

/// Waits for `ready` while answering `conn` (its pings, anything pushed).
async fn pumping<T>(conn: &mut Connection, ready: impl Future<Output = T>) -> T {
    tokio::pin!(ready);
    let mut open = true;
    loop {
        tokio::select! {
            v = &mut ready => return v,
            ev = conn.next_event(), if open => open = ev.is_ok(),
        }
    }
}

/// A sender: waits (answering its connection) until every device is
/// registered and its turn comes, makes its conversation with real MLS
/// commits, then sends what it is handed.
async fn converse(mut conn: Connection, mut c: Converse) {
    let made = async {
        let all = pumping(&mut conn, c.all.wait_for(Option::is_some))
            .await
            .map_err(|_| anyhow::anyhow!("the worker went away"))?
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no devices"))?;
        let turn = pumping(&mut conn, c.turns.clone().acquire_owned()).await?;
        let members: Vec<&Device> = c.members.iter().map(|m| all[*m].as_ref()).collect();
        let epoch = load::make_group(&mut conn, c.group, &all[c.me], &members).await?;
        drop(turn);
        anyhow::Ok(epoch)
    }
    .await;
    drop(c.all);
    let epoch = match made {
        Ok(e) => {
            let _ = c.made.send(Ok(()));
            e
        }
        Err(e) => {
            let _ = c.made.send(Err(e));
            return;
        }
    };
    let payload = payload::for_group(&c.ciphertext, c.group, epoch);
    send(conn, c.group, payload, c.queue, (c.acked, c.members.len())).await;
}

/// A conversation's sender: sends each message it is handed (stamped with
/// its scheduled time) and waits for the acknowledgement, which comes
/// after the durable write; keeps answering its connection meanwhile.
async fn send(
    mut conn: Connection,
    group: GroupId,
    payload: Vec<u8>,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<(u64, u64)>,
    (acked, recipients): (Acked, usize),
) {
    let mut open = true;
    loop {
        tokio::select! {
            next = queue.recv() => {
                let Some((due, n)) = next else { break };
                let r = conn
                    .request(Request::Send(SendRequest {
                        group,
                        msg_id: load::stamped_id_at(Duration::from_nanos(due), n),
                        payload: Blob(payload.clone()),
                        ttl_ms: None,
                    }))
                    .await;
                if matches!(r, Ok(Response::Accepted { .. })) {
                    acked
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((n, recipients));
                }
            }
            ev = conn.next_event(), if open => open = ev.is_ok(),
        }
    }
}

/// A device: takes every delivery, records each message's latency, and
/// acknowledges what it got (in one request for what arrived together).
async fn receive(
    mut conn: Connection,
    me: u32,
    epoch: u64,
    arrivals: Arrivals,
    got: Arc<AtomicUsize>,
) {
    let mut acks = Vec::new();
    let take = |ev: Event, acks: &mut Vec<u64>| {
        if let Event::Deliver(d) = ev {
            if d.envelope.kind == EnvelopeKind::Application {
                let (n, lat, _) = load::read_stamp_at(&d.envelope.msg_id.0, since(epoch));
                let lat = u32::try_from(lat.as_micros()).unwrap_or(u32::MAX);
                arrivals
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((n, me, lat));
                got.fetch_add(1, Ordering::Relaxed);
            }
            acks.push(d.seq);
        }
    };
    loop {
        match conn.next_event().await {
            Ok(ev) => take(ev, &mut acks),
            Err(_) => return,
        }
        while acks.len() < 32 {
            match conn.next_event().now_or_never() {
                Some(Ok(ev)) => take(ev, &mut acks),
                Some(Err(_)) => return,
                None => break,
            }
        }
        if !acks.is_empty() {
            let seqs = std::mem::take(&mut acks);
            if conn.request(Request::Ack { seqs }).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::QUICK_CONVERSATIONS;

    #[test]
    fn a_plan_gives_each_conversation_its_own_sender_and_distinct_members() {
        let (convs, sizes) = plan(300, QUICK_CONVERSATIONS).unwrap();
        assert_eq!(convs.len(), QUICK_CONVERSATIONS.iter().sum::<usize>());
        assert_eq!(sizes, vec![2, 10, 100, 255]);
        let senders: std::collections::HashSet<usize> = convs.iter().map(|c| c.sender).collect();
        assert_eq!(senders.len(), convs.len());
        for c in &convs {
            assert_eq!(c.members.len() + 1, sizes[c.class]);
            let distinct: std::collections::HashSet<usize> = c.members.iter().copied().collect();
            assert_eq!(distinct.len(), c.members.len(), "a member twice");
            assert!(!distinct.contains(&c.sender));
            assert!(!c.members.iter().any(|m| senders.contains(m)));
            assert!(c.members.iter().all(|m| *m < 300));
        }
        assert!(plan(40, QUICK_CONVERSATIONS).is_err());
    }
}
