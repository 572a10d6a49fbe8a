//! Scenario `groups`: the cost of group operations for groups of 10, 100
//! and 1000 members, on the default post-quantum suite and, side by side,
//! the classical suite: an add, a removal and a self-update as the committer
//! pays it (stage + merge) and as another member pays it (process), one
//! message's encryption and decryption, and one message's fan-out into the
//! mailboxes of every other member in the embedded store (a durable SQLite
//! transaction). Times are medians over the repetitions.

use std::time::{Duration, Instant};

use openmls_libcrux_crypto::Provider;
use sotto_core::Suite;
use sotto_core::group::{self, Change};
use sotto_core::mls::{self, Processed};
use sotto_proto::{DeviceId, EnvelopeKind, GroupId, MessageId};
use sotto_server::store::sqlite::SqliteStore;
use sotto_server::store::{CommitWrite, MailboxCap, Outgoing, Store};

use crate::members::{Holding, Member, median, us};
use crate::report::{Table, ms};

struct Row {
    suite: Suite,
    n: usize,
    create: Duration,
    add: Duration,
    add_process: Duration,
    remove: Duration,
    remove_process: Duration,
    update: Duration,
    update_process: Duration,
    update_bytes: usize,
    filled_update_bytes: usize,
    welcome_bytes: usize,
    encrypt: Duration,
    decrypt: Duration,
    held_encrypt: Duration,
    held_decrypt: Duration,
    fanout: Duration,
}

const G: GroupId = GroupId([0x5b; 32]);

/// Alice's self-update commit in a group of `n` once the ratchet tree is
/// filled along her copath: after creation, the member at leaf 1, 2, 4, 8,
/// ... (one in each subtree of her copath) commits a self-update, every one
/// of them processing the others'. A commit then carries one path secret
/// per level (about log2(n) HPKE ciphertexts), not one per blank leaf:
/// what a group costs once its members keep their leaves updated (the
/// self-update policy), against the fresh tree of `group_row`.
fn filled_tree_update_bytes(suite: Suite, n: usize) -> anyhow::Result<usize> {
    let g = GroupId([0x5c; 32]);
    let alice_p = Provider::new()?;
    let crowd_p = Provider::new()?;
    let alice = Member::new(0);
    let mut joiners: Vec<(Member, Provider)> = Vec::new();
    let mut kps = Vec::new();
    let mut lists = Vec::new();
    for leaf in 1..n {
        let m = Member::new(leaf);
        lists.push(m.list());
        if leaf.is_power_of_two() {
            let p = Provider::new()?;
            kps.push(m.key_package(&p, suite));
            joiners.push((m, p));
        } else {
            kps.push(m.key_package(&crowd_p, suite));
        }
    }
    let created = mls::create_group(
        &alice_p,
        &alice.me,
        &alice.device,
        g,
        kps,
        lists,
        mls::NewConversation::Group("filled"),
    )?;
    mls::merge_pending(&alice_p, g)?;
    let welcome = created.staged.welcome.unwrap_or_default();
    for (_, p) in &joiners {
        mls::join(p, &welcome)?;
    }
    let update = || Change {
        self_update: true,
        ..Change::default()
    };
    for k in 0..joiners.len() {
        let (m, p) = &joiners[k];
        let s = group::stage(p, &m.device, g, update(), None)?
            .ok_or_else(|| anyhow::anyhow!("no commit"))?;
        mls::merge_pending(p, g)?;
        mls::process(&alice_p, g, &s.commit)?;
        for (j, (_, q)) in joiners.iter().enumerate() {
            if j != k {
                mls::process(q, g, &s.commit)?;
            }
        }
    }
    let s = group::stage(&alice_p, &alice.device, g, update(), None)?
        .ok_or_else(|| anyhow::anyhow!("no commit"))?;
    Ok(s.commit.len())
}

fn group_row(
    suite: Suite,
    n: usize,
    reps: usize,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<Row> {
    let alice_p = Provider::new()?;
    let bob_p = Provider::new()?;
    let crowd_p = Provider::new()?;
    let alice = Member::new(0);
    let bob = Member::new(1);
    let crowd: Vec<Member> = (2..n + 2 * reps + 2).map(Member::new).collect();
    let mut kps = vec![bob.key_package(&bob_p, suite)];
    kps.extend(
        crowd[..n - 2]
            .iter()
            .map(|m| m.key_package(&crowd_p, suite)),
    );
    let mut lists = vec![bob.list()];
    lists.extend(crowd[..n - 2].iter().map(Member::list));
    let t = Instant::now();
    let created = mls::create_group(
        &alice_p,
        &alice.me,
        &alice.device,
        G,
        kps,
        lists,
        mls::NewConversation::Group("bench"),
    )?;
    mls::merge_pending(&alice_p, G)?;
    let create = t.elapsed();
    let welcome = created.staged.welcome.unwrap_or_default();
    let welcome_bytes = welcome.len();
    mls::join(&bob_p, &welcome)?;

    let commit = |change: Change| -> anyhow::Result<(Duration, Duration, usize)> {
        let t = Instant::now();
        let s = group::stage(&alice_p, &alice.device, G, change, None)?.expect("a change");
        mls::merge_pending(&alice_p, G)?;
        let staged = t.elapsed();
        let t = Instant::now();
        let p = mls::process(&bob_p, G, &s.commit)?;
        let processed = t.elapsed();
        anyhow::ensure!(matches!(p, Processed::Commit { .. }), "not a commit");
        Ok((staged, processed, s.commit.len()))
    };
    let (mut add, mut add_p, mut rm, mut rm_p, mut up, mut up_p) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut update_bytes = 0;
    for r in 0..reps {
        let newcomer = &crowd[n - 2 + r];
        let (a, b, _) = commit(Change {
            adds: vec![newcomer.key_package(&crowd_p, suite)],
            device_lists: vec![newcomer.list()],
            ..Change::default()
        })?;
        add.push(a);
        add_p.push(b);
        let (a, b, _) = commit(Change {
            removes: vec![crowd[r].me.device],
            ..Change::default()
        })?;
        rm.push(a);
        rm_p.push(b);
        let (a, b, bytes) = commit(Change {
            self_update: true,
            ..Change::default()
        })?;
        up.push(a);
        up_p.push(b);
        update_bytes = bytes;
    }
    let text = vec![b'x'; 1024];
    let (mut enc, mut dec) = (vec![], vec![]);
    for _ in 0..reps * 5 {
        let t = Instant::now();
        let ct = mls::encrypt(&alice_p, &alice.device, G, &text)?;
        enc.push(t.elapsed());
        let t = Instant::now();
        mls::process(&bob_p, G, &ct)?;
        dec.push(t.elapsed());
    }
    // The same, with both groups held: the first round loads them.
    let (alice_h, bob_h) = (Holding::new(&alice_p), Holding::new(&bob_p));
    let (mut held_enc, mut held_dec) = (vec![], vec![]);
    for k in 0..=reps * 5 {
        let t = Instant::now();
        let ct = mls::encrypt(&alice_h, &alice.device, G, &text)?;
        alice_h.held.commit();
        let e = t.elapsed();
        let t = Instant::now();
        mls::process(&bob_h, G, &ct)?;
        bob_h.held.commit();
        if k > 0 {
            held_enc.push(e);
            held_dec.push(t.elapsed());
        }
    }
    anyhow::ensure!(
        alice_h.held.loads() == 1 && bob_h.held.loads() == 1,
        "a held group was loaded again"
    );
    let fanout = rt.block_on(store_fanout(n, reps))?;
    let filled_update_bytes = filled_tree_update_bytes(suite, n)?;
    Ok(Row {
        suite,
        n,
        create,
        add: median(add),
        add_process: median(add_p),
        remove: median(rm),
        remove_process: median(rm_p),
        update: median(up),
        update_process: median(up_p),
        update_bytes,
        filled_update_bytes,
        welcome_bytes,
        encrypt: median(enc),
        decrypt: median(dec),
        held_encrypt: median(held_enc),
        held_decrypt: median(held_dec),
        fanout,
    })
}

/// One message into the mailboxes of the n-1 other members, durably.
async fn store_fanout(n: usize, reps: usize) -> anyhow::Result<Duration> {
    // On the working directory's disk, not a RAM-backed /tmp: fsync must cost what it costs.
    let dir = tempfile::tempdir_in(".")?;
    let store = SqliteStore::open(&dir.path().join("server.db"))?;
    let members: Vec<DeviceId> = (0..n)
        .map(|i| {
            let mut d = [0u8; 32];
            d[..8].copy_from_slice(&(i as u64).to_be_bytes());
            DeviceId(d)
        })
        .collect();
    store
        .commit(CommitWrite {
            state: Vec::new(),
            group_info: Vec::new(),
            commit: None,
            welcome: None,
            welcome_recipients: Vec::new(),
            group: G,
            sender: members[0],
            epoch: 0,
            members: members.clone(),
            joins: false,
            mailbox_cap: MailboxCap::UNLIMITED,
            msg_id: MessageId([0xc0; 16]),
            expires_ms: u64::MAX / 2,
        })
        .await?;
    let mut times = Vec::new();
    for r in 0..reps * 5 {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(r as u64).to_be_bytes());
        let m = Outgoing {
            group: G,
            sender: members[0],
            msg_id: MessageId(id),
            kind: EnvelopeKind::Application,
            payload: vec![0u8; 1200],
            now_ms: 1,
            expires_ms: u64::MAX / 2,
            epoch: Some(1),
        };
        let t = Instant::now();
        store.send(m, MailboxCap::UNLIMITED).await?;
        times.push(t.elapsed());
    }
    Ok(median(times))
}

/// Scenario `groups`.
pub(crate) fn run(sizes: &[usize], reps: usize) -> anyhow::Result<Vec<Table>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut t = Table::new(
        "groups",
        "group operations, post-quantum (X-Wing) beside classical (X25519)",
        &[
            "suite",
            "members",
            "create (ms)",
            "add: commit / process (ms)",
            "remove: commit / process (ms)",
            "self-update: commit / process (ms)",
            "self-update commit (bytes)",
            "self-update commit, tree filled along the copath (bytes)",
            "Welcome at creation (bytes)",
            "1 KiB message: encrypt / decrypt (µs)",
            "same, group held: encrypt / decrypt (µs)",
            "fan-out to all mailboxes (ms)",
        ],
    );
    for &n in sizes {
        for suite in [Suite::PostQuantum, Suite::Classical] {
            let r = group_row(suite, n, reps, &rt)?;
            t.row(vec![
                r.suite.name().into(),
                r.n.to_string(),
                ms(r.create),
                format!("{} / {}", ms(r.add), ms(r.add_process)),
                format!("{} / {}", ms(r.remove), ms(r.remove_process)),
                format!("{} / {}", ms(r.update), ms(r.update_process)),
                r.update_bytes.to_string(),
                r.filled_update_bytes.to_string(),
                r.welcome_bytes.to_string(),
                format!("{} / {}", us(r.encrypt), us(r.decrypt)),
                format!("{} / {}", us(r.held_encrypt), us(r.held_decrypt)),
                ms(r.fanout),
            ]);
        }
    }
    t.note(format!("{reps} repetitions per operation, medians"));
    t.note("\"self-update commit\" is on the freshly created tree (inner nodes blank: one ciphertext per leaf of each copath subtree); \"tree filled\" is the same commit after the members at leaves 1, 2, 4, … committed self-updates, as a self-update policy keeps a group");
    Ok(vec![t])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_scenario_runs_and_measures_something() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        for suite in [Suite::PostQuantum, Suite::Classical] {
            let r = group_row(suite, 4, 1, &rt).unwrap();
            assert_eq!(r.n, 4);
            assert!(r.update_bytes > 0 && r.welcome_bytes > r.update_bytes / 4);
            assert!(r.filled_update_bytes > 0);
            assert!(r.add > Duration::ZERO && r.fanout > Duration::ZERO);
        }
    }
}
