//! Scenario `checks`: what the server's check of one commit costs (protocol
//! 3: the server checks every commit before it accepts it), for groups of
//! 10, 100 and 1000 members. Sotto's side is exactly what the server runs
//! per commit, `sotto_rules::public::check_commit`: the stored state decoded,
//! the commit processed on openmls's `PublicGroup`, the members' judgement,
//! the GroupInfo checked, the new state encoded. The comparator, on the
//! same commits in the same run: openmls's `PublicGroup` alone, kept in
//! memory (`process_message` and `merge_commit`), the least any server
//! that tracks a group's public state does. The commits are self-updates of
//! one member on the freshly created tree (the worst case: a path secret
//! per leaf of the copath subtrees).

use std::time::{Duration, Instant};

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    MlsMessageBodyIn, MlsMessageIn, OpenMlsProvider as _, ProcessedMessageContent, ProposalStore,
    PublicGroup,
};
use openmls_libcrux_crypto::{CryptoProvider, Provider};
use openmls_memory_storage::MemoryStorage;

use sotto_core::group::{self, Change};
use sotto_core::mls::{self, NewConversation};
use sotto_core::{DeviceKey, Suite};
use sotto_proto::GroupId;
use sotto_rules::public::{self, CommitCheck, Held, Start};

use crate::members::{Member, median};
use crate::report::{Table, ms, ratio};

const G: GroupId = GroupId([0x5d; 32]);

struct Row {
    suite: Suite,
    n: usize,
    sotto: Duration,
    raw: Duration,
    commit_bytes: usize,
    state_bytes: usize,
}

fn self_update(p: &Provider, device: &DeviceKey) -> anyhow::Result<group::StagedChange> {
    group::stage(
        p,
        device,
        G,
        Change {
            self_update: true,
            ..Change::default()
        },
        None,
    )?
    .ok_or_else(|| anyhow::anyhow!("nothing to commit"))
}

fn row(suite: Suite, n: usize, reps: usize) -> anyhow::Result<Row> {
    let crypto = CryptoProvider::new()?;
    let alice_p = Provider::new()?;
    let crowd_p = Provider::new()?;
    let alice = Member::new(0);
    let crowd: Vec<Member> = (1..n).map(Member::new).collect();
    let kps = crowd
        .iter()
        .map(|m| m.key_package(&crowd_p, suite))
        .collect();
    let lists = crowd.iter().map(Member::list).collect();
    let created = mls::create_group(
        &alice_p,
        &alice.me,
        &alice.device,
        G,
        kps,
        lists,
        NewConversation::Group("checks"),
    )?;
    // The server's state from the creation, as the server makes it.
    let accepted = public::check_commit(
        &crypto,
        &CommitCheck {
            group: &G,
            sender: alice.me.device,
            start: Start::Base(&created.base),
            commit: &created.staged.commit,
            group_info: &created.staged.group_info,
            has_welcome: true,
        },
    )?;
    let mut state = accepted.state;
    mls::merge_pending(&alice_p, G)?;
    // The comparator's public group, from a GroupInfo with the tree.
    let info = {
        let g = openmls::prelude::MlsGroup::load(
            alice_p.storage(),
            &openmls::prelude::GroupId::from_slice(&G.0),
        )?
        .ok_or_else(|| anyhow::anyhow!("no group"))?;
        g.export_group_info(alice_p.crypto(), &alice.device, true)?
            .tls_serialize_detached()?
    };
    let MlsMessageBodyIn::GroupInfo(info) = MlsMessageIn::tls_deserialize_exact(&info)?.extract()
    else {
        anyhow::bail!("not a group info");
    };
    let tree = info
        .extensions()
        .ratchet_tree()
        .ok_or_else(|| anyhow::anyhow!("no tree"))?
        .ratchet_tree()
        .clone();
    let storage = MemoryStorage::default();
    let (mut raw, _) =
        PublicGroup::from_external(&crypto, &storage, tree, info, ProposalStore::new())?;

    let (mut sotto_t, mut raw_t) = (Vec::new(), Vec::new());
    let mut commit_bytes = 0;
    for r in 0..reps {
        let s = self_update(&alice_p, &alice.device)?;
        commit_bytes = s.commit.len();
        let sotto_side = |state: &[u8]| -> anyhow::Result<(Vec<u8>, Duration)> {
            let t = Instant::now();
            let a = public::check_commit(
                &crypto,
                &CommitCheck {
                    group: &G,
                    sender: alice.me.device,
                    start: Start::Held(Held {
                        state,
                        proposals: &[],
                    }),
                    commit: &s.commit,
                    group_info: &s.group_info,
                    has_welcome: false,
                },
            )?;
            Ok((a.state, t.elapsed()))
        };
        let mut raw_side = || -> anyhow::Result<Duration> {
            let t = Instant::now();
            let proto =
                MlsMessageIn::tls_deserialize_exact(&s.commit)?.try_into_protocol_message()?;
            let processed = raw.process_message(&crypto, proto)?;
            let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content()
            else {
                anyhow::bail!("not a commit");
            };
            raw.merge_commit(&storage, *staged)?;
            Ok(t.elapsed())
        };
        // Each side goes first every other repetition.
        if r % 2 == 0 {
            let (next, d) = sotto_side(&state)?;
            sotto_t.push(d);
            raw_t.push(raw_side()?);
            state = next;
        } else {
            raw_t.push(raw_side()?);
            let (next, d) = sotto_side(&state)?;
            sotto_t.push(d);
            state = next;
        }
        mls::merge_pending(&alice_p, G)?;
    }
    Ok(Row {
        suite,
        n,
        sotto: median(sotto_t),
        raw: median(raw_t),
        commit_bytes,
        state_bytes: state.len(),
    })
}

/// Scenario `checks`.
pub(crate) fn run(sizes: &[usize], reps: usize) -> anyhow::Result<Vec<Table>> {
    let mut t = Table::new(
        "checks",
        "the server's check of one commit, against openmls's PublicGroup alone",
        &[
            "suite",
            "members",
            "Sotto's check (ms)",
            "openmls PublicGroup, in memory (ms)",
            "ratio",
            "commit (bytes)",
            "stored state (bytes)",
        ],
    );
    for &n in sizes {
        for suite in [Suite::PostQuantum, Suite::Classical] {
            let r = row(suite, n, reps)?;
            let ratio = ratio(r.sotto.as_secs_f64(), r.raw.as_secs_f64());
            t.row(vec![
                r.suite.name().into(),
                r.n.to_string(),
                ms(r.sotto),
                ms(r.raw),
                ratio,
                r.commit_bytes.to_string(),
                r.state_bytes.to_string(),
            ]);
        }
    }
    t.note(format!(
        "{reps} self-update commits per size on the freshly created tree, medians; each side goes first every other commit; Sotto's check decodes and encodes the stored state each time (the server keeps no group in memory), the comparator keeps its group in memory"
    ));
    Ok(vec![t])
}
