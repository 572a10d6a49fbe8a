//! Scenario `mls`: what Sotto's client core adds to openmls, operation by
//! operation. For groups of N members (2, 10, 100, 1000) on the
//! post-quantum and the classical suite, each on a freshly built tree and
//! on a fully updated one, every operation the client does is done once
//! through the `sotto_core` functions the client calls and once through raw
//! openmls with the same provider, storage and group configuration, in
//! turn, on the same group (so both see the same tree and the same
//! storage); medians of each side and the ratio Sotto / openmls are
//! reported, with the bytes of the commits and Welcomes produced.
//!
//! The operations, Sotto side / openmls side:
//! - create: verify N-1 KeyPackages and create the group with them
//!   (`mls::verify_key_package`, `mls::create_group`, `mls::merge_pending`
//!   / `KeyPackageIn::validate`, `MlsGroup::new_with_group_id`,
//!   `add_members`, `merge_pending_commit`);
//! - join: process the Welcome of an add (`mls::join` / `StagedWelcome`);
//! - add: verify one KeyPackage, commit its add with the account's device
//!   list, merge (`group::stage` + `mls::merge_pending` /
//!   `add_members_without_update` + `merge_pending_commit`: neither adds a
//!   path to an add-only commit);
//! - remove: commit the removal of that member, merge (`group::stage` +
//!   `mls::merge_pending` / leaf lookup + `remove_members` +
//!   `merge_pending_commit`);
//! - self-update: commit with a new leaf, merge (`group::stage` +
//!   `mls::merge_pending` / `self_update` + `merge_pending_commit`);
//! - process commit: another member applies that self-update
//!   (`mls::process` / `process_message` + `merge_staged_commit`);
//! - encrypt / decrypt a 200-byte message (`mls::encrypt`, `mls::process`
//!   / `create_message`, `process_message`).
//!
//! Trees. *Fresh*: Alice creates the group with the other N-1 members in
//! one commit; every inner node not on her own path is blank, so her
//! commits encrypt to each leaf of her copath separately. *Fully updated*:
//! every parent node of the tree holds a key. Having all N members commit
//! an update would need every member to process every commit (O(N²)); here
//! Alice creates the group with one member, who joins and commits a
//! self-update, and then members 2..N-1 join one by one by external commit
//! (each an update of the joiner's whole path, RFC 9420 §12.4.3.2) while
//! only Alice processes every commit. The last joiner is Bob, the member
//! that processes Alice's commits in the measurements; the others never
//! act again. The scenario counts the non-blank parent nodes in Alice's
//! tree before measuring (N-1 of N-1 when fully updated). During the
//! measurements a removal blanks the removed leaf's path; on the updated
//! tree Bob (the last leaf, whose path covers it) commits a self-update
//! after each removal, outside the timings, so every repetition starts
//! from a fully updated tree again.
//!
//! Above, both sides load the group's state from storage for each
//! operation, as every client did before issue 15. A last table has the
//! committer's add, remove and self-update with the group held on both
//! sides ([`held_commits`]), as long-running clients now run them.

use std::time::{Duration, Instant};

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    Capabilities, Ciphersuite, ExtensionType, Extensions, GroupContext, GroupId as MlsGroupId,
    KeyPackage, KeyPackageIn, LeafNodeParameters, MlsGroup, MlsGroupCreateConfig,
    MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn, OpenMlsProvider,
    PURE_PLAINTEXT_WIRE_FORMAT_POLICY, ProcessedMessageContent, ProtocolVersion, RatchetTreeIn,
    SenderRatchetConfiguration, StagedWelcome,
};
use openmls_libcrux_crypto::Provider;
use sotto_core::group::{self, Change, META_EXTENSION, TIMER_EXTENSION};
use sotto_core::mls::{self, Processed};
use sotto_core::{CredentialIdentity, DeviceKey, Suite};
use sotto_proto::{DeviceId, GroupId, SignedDeviceList};

use crate::members::{Holding, Member, median, us};
use crate::report::{Table, ratio};

/// Whether the tree is as created or fully updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tree {
    Fresh,
    Updated,
}

impl Tree {
    fn name(self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::Updated => "fully updated",
        }
    }
}

/// Timings of one operation: Sotto's and openmls's, one per repetition.
#[derive(Default)]
struct Pair {
    sotto: Vec<Duration>,
    raw: Vec<Duration>,
}

impl Pair {
    fn medians(&self) -> Option<(Duration, Duration)> {
        (!self.sotto.is_empty() && !self.raw.is_empty())
            .then(|| (median(self.sotto.clone()), median(self.raw.clone())))
    }
}

/// Timed closure: its value and how long it took.
fn timed<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, Duration)> {
    let t = Instant::now();
    let v = f()?;
    Ok((v, t.elapsed()))
}

/// Byte sizes of what the operations produced (the last repetition's).
#[derive(Debug, Default, Clone, Copy)]
struct Sizes {
    create_welcome: (usize, usize),
    add_commit: (usize, usize),
    add_welcome: (usize, usize),
    remove_commit: (usize, usize),
    update_commit: (usize, usize),
    message: (usize, usize),
}

/// One row: a suite, a group size, a tree.
struct Costs {
    suite: Suite,
    n: usize,
    tree: Tree,
    /// Non-blank parent nodes in Alice's tree before the measurements, and
    /// the tree's parent nodes (N-1).
    filled: (usize, usize),
    create: Option<(Duration, Duration)>,
    join: (Duration, Duration),
    add: (Duration, Duration),
    remove: (Duration, Duration),
    update: (Duration, Duration),
    process: (Duration, Duration),
    encrypt: (Duration, Duration),
    decrypt: (Duration, Duration),
    sizes: Sizes,
}

// ---- The openmls side: the same configuration as sotto_core's, raw calls. ----

fn capabilities() -> Capabilities {
    Capabilities::new(
        None,
        None,
        Some(&[
            ExtensionType::LastResort,
            ExtensionType::Unknown(META_EXTENSION),
            ExtensionType::Unknown(TIMER_EXTENSION),
        ]),
        None,
        None,
    )
}

fn create_config(cs: Ciphersuite, exts: Extensions<GroupContext>) -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .with_group_context_extensions(exts)
        .ciphersuite(cs)
        .capabilities(capabilities())
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .padding_size(64)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(20, 1000))
        .max_past_epochs(0)
        .build()
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .padding_size(64)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(20, 1000))
        .max_past_epochs(0)
        .build()
}

fn mls_gid(g: GroupId) -> MlsGroupId {
    MlsGroupId::from_slice(&g.0)
}

fn raw_load(p: &Provider, g: GroupId) -> anyhow::Result<MlsGroup> {
    MlsGroup::load(p.storage(), &mls_gid(g))?.ok_or_else(|| anyhow::anyhow!("no group"))
}

fn raw_validate(p: &Provider, kp: &[u8]) -> anyhow::Result<KeyPackage> {
    Ok(KeyPackageIn::tls_deserialize_exact(kp)?.validate(p.crypto(), ProtocolVersion::Mls10)?)
}

/// Creates `g` with the owners of `kps`; returns the Welcome's bytes.
fn raw_create(
    p: &Provider,
    alice: &Member,
    g: GroupId,
    kps: &[Vec<u8>],
    cs: Ciphersuite,
    exts: Extensions<GroupContext>,
) -> anyhow::Result<Vec<u8>> {
    let kps = kps
        .iter()
        .map(|b| raw_validate(p, b))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut grp = MlsGroup::new_with_group_id(
        p,
        &alice.device,
        &create_config(cs, exts),
        mls_gid(g),
        mls::credential(&alice.me),
    )?;
    let (_commit, welcome, _) = grp.add_members(p, &alice.device, &kps)?;
    let welcome = welcome.tls_serialize_detached()?;
    grp.merge_pending_commit(p)?;
    Ok(welcome)
}

fn raw_join(p: &Provider, welcome: &[u8], tree: RatchetTreeIn) -> anyhow::Result<()> {
    let MlsMessageBodyIn::Welcome(w) = MlsMessageIn::tls_deserialize_exact(welcome)?.extract()
    else {
        anyhow::bail!("not a Welcome");
    };
    StagedWelcome::new_from_welcome(p, &join_config(), w, Some(tree))?.into_group(p)?;
    Ok(())
}

/// Adds the owner of `kp`; returns the commit, the Welcome and the ratchet
/// tree the joiner needs beside it (the group's GroupInfos carry none, as
/// Sotto's do not).
fn raw_add(
    p: &Provider,
    device: &DeviceKey,
    g: GroupId,
    kp: &[u8],
) -> anyhow::Result<(Vec<u8>, Vec<u8>, RatchetTreeIn)> {
    let kp = raw_validate(p, kp)?;
    let mut grp = raw_load(p, g)?;
    let (commit, welcome, _) = grp.add_members_without_update(p, device, &[kp])?;
    let out = (
        commit.tls_serialize_detached()?,
        welcome.tls_serialize_detached()?,
    );
    grp.merge_pending_commit(p)?;
    Ok((out.0, out.1, grp.export_ratchet_tree().into()))
}

/// Removes the member device `gone`; returns the commit.
fn raw_remove(
    p: &Provider,
    device: &DeviceKey,
    g: GroupId,
    gone: DeviceId,
) -> anyhow::Result<Vec<u8>> {
    let mut grp = raw_load(p, g)?;
    let leaf = grp
        .members()
        .find(|m| m.signature_key.as_slice() == gone.0.as_slice())
        .ok_or_else(|| anyhow::anyhow!("not a member"))?
        .index;
    let (commit, _, _) = grp.remove_members(p, device, &[leaf])?;
    let commit = commit.tls_serialize_detached()?;
    grp.merge_pending_commit(p)?;
    Ok(commit)
}

fn raw_update(p: &Provider, device: &DeviceKey, g: GroupId) -> anyhow::Result<Vec<u8>> {
    let mut grp = raw_load(p, g)?;
    let bundle = grp.self_update(p, device, LeafNodeParameters::default())?;
    grp.merge_pending_commit(p)?;
    Ok(bundle.into_commit().tls_serialize_detached()?)
}

/// Processes a message; applies it if it is a commit.
fn raw_process(p: &Provider, g: GroupId, bytes: &[u8]) -> anyhow::Result<()> {
    let proto = MlsMessageIn::tls_deserialize_exact(bytes)?.try_into_protocol_message()?;
    let mut grp = raw_load(p, g)?;
    let processed = grp.process_message(p, proto)?;
    if let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() {
        grp.merge_staged_commit(p, *staged)?;
    }
    Ok(())
}

/// Joins by external commit, as the member `m` with its provider `p`;
/// returns the commit.
fn raw_external_join(p: &Provider, m: &Member, group_info: &[u8]) -> anyhow::Result<Vec<u8>> {
    let MlsMessageBodyIn::GroupInfo(gi) =
        MlsMessageIn::tls_deserialize_exact(group_info)?.extract()
    else {
        anyhow::bail!("not a GroupInfo");
    };
    let (mut grp, bundle) = MlsGroup::external_commit_builder()
        .with_config(join_config())
        .build_group(p, gi, mls::credential(&m.me))?
        .leaf_node_parameters(
            LeafNodeParameters::builder()
                .with_capabilities(capabilities())
                .build(),
        )
        .load_psks(p.storage())?
        .build(p.rand(), p.crypto(), &m.device, |_| true)?
        .finalize(p)?;
    grp.merge_pending_commit(p)?;
    Ok(bundle.into_commit().tls_serialize_detached()?)
}

// ---- The Sotto side: the sotto_core calls the client makes. ----

fn sotto_create<P: mls::Provider>(
    p: &P,
    alice: &Member,
    g: GroupId,
    kps: &[Vec<u8>],
    owners: &[(CredentialIdentity, SignedDeviceList)],
) -> anyhow::Result<Vec<u8>> {
    let kps = kps
        .iter()
        .zip(owners)
        .map(|(b, (o, _))| Ok(mls::verify_key_package(p, b, o.account, o.device)?.0))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let lists = owners.iter().map(|(_, l)| l.clone()).collect();
    let created = mls::create_group(
        p,
        &alice.me,
        &alice.device,
        g,
        kps,
        lists,
        mls::NewConversation::Group("mls"),
    )?;
    mls::merge_pending(p, g)?;
    created
        .staged
        .welcome
        .ok_or_else(|| anyhow::anyhow!("no welcome"))
}

/// Stages a change and merges it (as the client does once the server
/// accepted it).
fn commit<P: mls::Provider>(
    p: &P,
    device: &DeviceKey,
    g: GroupId,
    change: Change,
) -> anyhow::Result<group::StagedChange> {
    let s =
        group::stage(p, device, g, change, None)?.ok_or_else(|| anyhow::anyhow!("no commit"))?;
    mls::merge_pending(p, g)?;
    Ok(s)
}

/// Adds the owner of `kp` (vouched for by `list`, the account's signed
/// device list the server hands out with it); returns the commit and the
/// Welcome.
fn sotto_add<P: mls::Provider>(
    p: &P,
    device: &DeviceKey,
    g: GroupId,
    kp: &[u8],
    owner: &CredentialIdentity,
    list: SignedDeviceList,
) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let (kp, _) = mls::verify_key_package(p, kp, owner.account, owner.device)?;
    let s = commit(
        p,
        device,
        g,
        Change {
            adds: vec![kp],
            device_lists: vec![list],
            ..Change::default()
        },
    )?;
    Ok((s.commit, s.welcome.unwrap_or_default()))
}

fn self_update() -> Change {
    Change {
        self_update: true,
        ..Change::default()
    }
}

fn expect_commit(p: Processed) -> anyhow::Result<()> {
    anyhow::ensure!(matches!(p, Processed::Commit { .. }), "not a commit");
    Ok(())
}

// ---- The group under test. ----

/// Alice (the member measured committing and encrypting) and Bob (the
/// member measured processing) in one group.
struct Bench {
    suite: Suite,
    n: usize,
    tree: Tree,
    g: GroupId,
    alice: Member,
    ap: Provider,
    bob: Member,
    bp: Provider,
    /// The fresh tree's creation inputs (the measured creations reuse them).
    kps: Vec<Vec<u8>>,
    owners: Vec<(CredentialIdentity, SignedDeviceList)>,
    next_member: usize,
}

impl Bench {
    fn base(suite: Suite, n: usize, tree: Tree) -> anyhow::Result<Self> {
        anyhow::ensure!(n >= 2, "a group of at least 2");
        let alice = Member::new(0);
        Ok(Self {
            suite,
            n,
            tree,
            g: GroupId([0x6d; 32]),
            alice,
            ap: Provider::new()?,
            bob: Member::new(1),
            bp: Provider::new()?,
            kps: Vec::new(),
            owners: Vec::new(),
            next_member: n,
        })
    }

    /// Alice creates the group with all N-1 others in one commit; Bob (leaf
    /// 1) joins from its Welcome.
    fn fresh(suite: Suite, n: usize) -> anyhow::Result<Self> {
        let mut b = Self::base(suite, n, Tree::Fresh)?;
        let crowd = Provider::new()?;
        b.kps.push(b.bob.key_package_bytes(&b.bp, suite));
        b.owners.push((b.bob.me.clone(), b.bob.list()));
        for i in 2..n {
            let m = Member::new(i);
            b.kps.push(m.key_package_bytes(&crowd, suite));
            b.owners.push((m.me.clone(), m.list()));
        }
        let welcome = sotto_create(&b.ap, &b.alice, b.g, &b.kps, &b.owners)?;
        mls::join(&b.bp, &welcome)?;
        Ok(b)
    }

    /// Alice creates the group with member 1, who joins and commits a
    /// self-update; members 2..N-1 join by external commit, Bob last; Alice
    /// processes every commit.
    fn updated(suite: Suite, n: usize) -> anyhow::Result<Self> {
        let b = Self::base(suite, n, Tree::Updated)?;
        let (m1, p1);
        let (first, first_p) = if n == 2 {
            (&b.bob, &b.bp)
        } else {
            m1 = Member::new(1);
            p1 = Provider::new()?;
            (&m1, &p1)
        };
        let kp = first.key_package_bytes(first_p, suite);
        let welcome = sotto_create(
            &b.ap,
            &b.alice,
            b.g,
            &[kp],
            &[(first.me.clone(), first.list())],
        )?;
        mls::join(first_p, &welcome)?;
        let s = commit(first_p, &first.device, b.g, self_update())?;
        expect_commit(mls::process(&b.ap, b.g, &s.commit)?)?;
        // Alice keeps her group loaded while the others join (setup, not
        // measured): one state load for all joins, not two per join.
        let mut ag = raw_load(&b.ap, b.g)?;
        for i in 2..n {
            let gi = ag
                .export_group_info(b.ap.crypto(), &b.alice.device, true)?
                .tls_serialize_detached()?;
            let commit = if i == n - 1 {
                raw_external_join(&b.bp, &b.bob, &gi)?
            } else {
                raw_external_join(&Provider::new()?, &Member::new(i), &gi)?
            };
            // Sotto's policy takes members' commits only (an external
            // commit has no member sender): Alice applies these raw.
            let proto =
                MlsMessageIn::tls_deserialize_exact(&commit)?.try_into_protocol_message()?;
            let ProcessedMessageContent::StagedCommitMessage(staged) =
                ag.process_message(&b.ap, proto)?.into_content()
            else {
                anyhow::bail!("not a commit");
            };
            ag.merge_staged_commit(&b.ap, *staged)?;
        }
        Ok(b)
    }

    /// Non-blank parent nodes in Alice's tree, and the tree's parent nodes.
    fn filled(&self) -> anyhow::Result<(usize, usize)> {
        let grp = raw_load(&self.ap, self.g)?;
        anyhow::ensure!(grp.members().count() == self.n, "group of the wrong size");
        Ok((grp.export_ratchet_tree().parents().count(), self.n - 1))
    }

    /// One member added, its Welcome processed, the member removed again
    /// (Bob processes both commits); on the updated tree Bob then refills
    /// the removed leaf's path with a self-update (not timed).
    fn add_join_remove(
        &mut self,
        sotto: bool,
        t: &mut [&mut Pair; 3],
        sizes: &mut Sizes,
    ) -> anyhow::Result<()> {
        let (g, ap, bp, dev) = (self.g, &self.ap, &self.bp, &self.alice.device);
        let newcomer = Member::new(self.next_member);
        self.next_member += 1;
        let np = Provider::new()?;
        let kp = newcomer.key_package_bytes(&np, self.suite);
        let list = newcomer.list();
        let gone = newcomer.me.device;
        if sotto {
            let ((c, w), ta) = timed(|| sotto_add(ap, dev, g, &kp, &newcomer.me, list))?;
            expect_commit(mls::process(bp, g, &c)?)?;
            let (_, tj) = timed(|| Ok(mls::join(&np, &w)?))?;
            let removes = vec![gone];
            let (r, tr) = timed(|| {
                commit(
                    ap,
                    dev,
                    g,
                    Change {
                        removes,
                        ..Change::default()
                    },
                )
            })?;
            expect_commit(mls::process(bp, g, &r.commit)?)?;
            t[0].sotto.push(ta);
            t[1].sotto.push(tj);
            t[2].sotto.push(tr);
            sizes.add_commit.0 = c.len();
            sizes.add_welcome.0 = w.len();
            sizes.remove_commit.0 = r.commit.len();
        } else {
            let ((c, w, tree), ta) = timed(|| raw_add(ap, dev, g, &kp))?;
            raw_process(bp, g, &c)?;
            let (_, tj) = timed(|| raw_join(&np, &w, tree))?;
            let (r, tr) = timed(|| raw_remove(ap, dev, g, gone))?;
            raw_process(bp, g, &r)?;
            t[0].raw.push(ta);
            t[1].raw.push(tj);
            t[2].raw.push(tr);
            sizes.add_commit.1 = c.len();
            sizes.add_welcome.1 = w.len();
            sizes.remove_commit.1 = r.len();
        }
        if self.tree == Tree::Updated {
            let s = commit(bp, &self.bob.device, g, self_update())?;
            expect_commit(mls::process(ap, g, &s.commit)?)?;
        }
        Ok(())
    }

    /// Alice's self-update (timed) and Bob processing it (timed).
    fn update_process(
        &self,
        sotto: bool,
        t: &mut [&mut Pair; 2],
        sizes: &mut Sizes,
    ) -> anyhow::Result<()> {
        let (g, ap, bp, dev) = (self.g, &self.ap, &self.bp, &self.alice.device);
        if sotto {
            let (s, tu) = timed(|| commit(ap, dev, g, self_update()))?;
            let (_, tp) = timed(|| expect_commit(mls::process(bp, g, &s.commit)?))?;
            t[0].sotto.push(tu);
            t[1].sotto.push(tp);
            sizes.update_commit.0 = s.commit.len();
        } else {
            let (c, tu) = timed(|| raw_update(ap, dev, g))?;
            let (_, tp) = timed(|| raw_process(bp, g, &c))?;
            t[0].raw.push(tu);
            t[1].raw.push(tp);
            sizes.update_commit.1 = c.len();
        }
        Ok(())
    }

    /// Encrypts a message as Alice; returns it.
    fn encrypt(&self, sotto: bool, t: &mut Pair, sizes: &mut Sizes) -> anyhow::Result<Vec<u8>> {
        let text = [b'x'; 200];
        let (g, ap, dev) = (self.g, &self.ap, &self.alice.device);
        if sotto {
            let (c, d) = timed(|| Ok(mls::encrypt(ap, dev, g, &text)?))?;
            t.sotto.push(d);
            sizes.message.0 = c.len();
            Ok(c)
        } else {
            let (c, d) = timed(|| {
                Ok(raw_load(ap, g)?
                    .create_message(ap, dev, &text)?
                    .tls_serialize_detached()?)
            })?;
            t.raw.push(d);
            sizes.message.1 = c.len();
            Ok(c)
        }
    }

    /// Decrypts a message as Bob.
    fn decrypt(&self, sotto: bool, c: &[u8], t: &mut Pair) -> anyhow::Result<()> {
        let (g, bp) = (self.g, &self.bp);
        if sotto {
            let (p, d) = timed(|| Ok(mls::process(bp, g, c)?))?;
            anyhow::ensure!(matches!(p, Processed::Application { .. }), "not a message");
            t.sotto.push(d);
        } else {
            let (_, d) = timed(|| raw_process(bp, g, c))?;
            t.raw.push(d);
        }
        Ok(())
    }

    /// Creates a group like the fresh one, in a provider of its own;
    /// returns the Welcome's size.
    fn create(&self, sotto: bool, t: &mut Pair) -> anyhow::Result<usize> {
        let p = Provider::new()?;
        let g = GroupId([0x6e; 32]);
        if sotto {
            let (w, d) = timed(|| sotto_create(&p, &self.alice, g, &self.kps, &self.owners))?;
            t.sotto.push(d);
            Ok(w.len())
        } else {
            // The same group context as Sotto's (its metadata extension).
            let exts = raw_load(&self.ap, self.g)?.extensions().clone();
            let cs = self.suite.ciphersuite();
            let (w, d) = timed(|| raw_create(&p, &self.alice, g, &self.kps, cs, exts))?;
            t.raw.push(d);
            Ok(w.len())
        }
    }

    /// Every operation, `reps` times (creation `create_reps` times, on the
    /// fresh tree only), each repetition alternating which side goes first.
    fn measure(mut self, reps: usize, create_reps: usize) -> anyhow::Result<Costs> {
        let filled = self.filled()?;
        let mut sizes = Sizes::default();
        let [
            mut add,
            mut join,
            mut remove,
            mut update,
            mut process,
            mut enc,
            mut dec,
            mut create,
        ] = std::array::from_fn(|_| Pair::default());
        for r in 0..reps {
            let order = if r % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for sotto in order {
                self.add_join_remove(sotto, &mut [&mut add, &mut join, &mut remove], &mut sizes)?;
            }
            for sotto in order {
                self.update_process(sotto, &mut [&mut update, &mut process], &mut sizes)?;
            }
            let mut msgs = Vec::new();
            for sotto in order {
                msgs.push((sotto, self.encrypt(sotto, &mut enc, &mut sizes)?));
            }
            for (sotto, c) in msgs {
                self.decrypt(sotto, &c, &mut dec)?;
            }
        }
        if self.tree == Tree::Fresh {
            for r in 0..create_reps {
                let order = if r % 2 == 0 {
                    [true, false]
                } else {
                    [false, true]
                };
                for sotto in order {
                    let w = self.create(sotto, &mut create)?;
                    if sotto {
                        sizes.create_welcome.0 = w;
                    } else {
                        sizes.create_welcome.1 = w;
                    }
                }
            }
        }
        let m = |p: &Pair| p.medians().ok_or_else(|| anyhow::anyhow!("no measurement"));
        Ok(Costs {
            suite: self.suite,
            n: self.n,
            tree: self.tree,
            filled,
            create: create.medians(),
            join: m(&join)?,
            add: m(&add)?,
            remove: m(&remove)?,
            update: m(&update)?,
            process: m(&process)?,
            encrypt: m(&enc)?,
            decrypt: m(&dec)?,
            sizes,
        })
    }
}

fn costs(
    suite: Suite,
    n: usize,
    tree: Tree,
    reps: usize,
    create_reps: usize,
) -> anyhow::Result<Costs> {
    let b = match tree {
        Tree::Fresh => Bench::fresh(suite, n)?,
        Tree::Updated => Bench::updated(suite, n)?,
    };
    b.measure(reps, create_reps)
}

/// Repetitions (operations, creations) for a group of `n`: even, so that
/// each side goes first equally often (with 11 repetitions Sotto went
/// first 6 times, and one encrypt cell came out at 2–2.6× in two runs).
fn reps_for(n: usize) -> (usize, usize) {
    match n {
        0..=10 => (20, 20),
        11..=100 => (10, 10),
        _ => (4, 2),
    }
}

/// Group sizes with their repetitions (operations, creations).
fn plan(quick: bool, sizes: Option<&[usize]>) -> Vec<(usize, usize, usize)> {
    match (quick, sizes) {
        (true, None) => vec![(2, 2, 2), (10, 2, 2)],
        (true, Some(s)) => s.iter().map(|&n| (n, 2, 2)).collect(),
        (false, s) => s
            .unwrap_or(&[2, 10, 100, 1000])
            .iter()
            .map(|&n| {
                let (r, c) = reps_for(n);
                (n, r, c)
            })
            .collect(),
    }
}

fn bytes(x: (usize, usize)) -> String {
    if x.0 == x.1 {
        x.0.to_string()
    } else {
        format!("{} / {}", x.0, x.1)
    }
}

// ---- Commits as long-running clients make them: the group held. ----

/// The committer's add, remove and self-update (medians, Sotto / openmls)
/// with the group held in memory on both sides, as a long-running client
/// holds it (issue 15): Sotto through a provider that holds its groups
/// (`Holding`), openmls on one `MlsGroup` kept between calls. Each side
/// has its own group of `n` members on a fresh tree, made the same way,
/// and makes the same commits in turn (the first side alternates).
struct HeldCommits {
    suite: Suite,
    n: usize,
    add: (Duration, Duration),
    remove: (Duration, Duration),
    update: (Duration, Duration),
}

fn held_commits(suite: Suite, n: usize, reps: usize) -> anyhow::Result<HeldCommits> {
    let g = GroupId([0x68; 32]);
    let alice = Member::new(0);
    let crowd_p = Provider::new()?;
    let crowd: Vec<Member> = (1..n + reps).map(Member::new).collect();
    let kp = |m: &Member| m.key_package_bytes(&crowd_p, suite);
    // Sotto's side.
    let sp = Provider::new()?;
    let s = Holding::new(&sp);
    let first: Vec<Vec<u8>> = crowd[..n - 1].iter().map(kp).collect();
    let owners: Vec<_> = crowd[..n - 1]
        .iter()
        .map(|m| (m.me.clone(), m.list()))
        .collect();
    sotto_create(&s, &alice, g, &first, &owners)?;
    s.held.commit();
    // openmls's side: the same group context, the group kept.
    let rp = Provider::new()?;
    let exts = raw_load(&sp, g)?.extensions().clone();
    let kps = first
        .iter()
        .map(|b| raw_validate(&rp, b))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut rg = MlsGroup::new_with_group_id(
        &rp,
        &alice.device,
        &create_config(suite.ciphersuite(), exts),
        mls_gid(g),
        mls::credential(&alice.me),
    )?;
    rg.add_members(&rp, &alice.device, &kps)?;
    rg.merge_pending_commit(&rp)?;

    let (mut add, mut remove, mut update) = (Pair::default(), Pair::default(), Pair::default());
    for r in 0..reps {
        let newcomer = &crowd[n - 1 + r];
        let kb = kp(newcomer);
        let sotto_first = r % 2 == 0;
        for side in [sotto_first, !sotto_first] {
            if side {
                let (_, d) = timed(|| {
                    sotto_add(&s, &alice.device, g, &kb, &newcomer.me, newcomer.list())?;
                    s.held.commit();
                    Ok(())
                })?;
                add.sotto.push(d);
                let (_, d) = timed(|| {
                    commit(
                        &s,
                        &alice.device,
                        g,
                        Change {
                            removes: vec![newcomer.me.device],
                            ..Change::default()
                        },
                    )?;
                    s.held.commit();
                    Ok(())
                })?;
                remove.sotto.push(d);
                let (_, d) = timed(|| {
                    commit(&s, &alice.device, g, self_update())?;
                    s.held.commit();
                    Ok(())
                })?;
                update.sotto.push(d);
            } else {
                let (_, d) = timed(|| {
                    let kp = raw_validate(&rp, &kb)?;
                    rg.add_members_without_update(&rp, &alice.device, &[kp])?;
                    rg.merge_pending_commit(&rp)?;
                    let _tree = rg.export_ratchet_tree();
                    Ok(())
                })?;
                add.raw.push(d);
                let (_, d) = timed(|| {
                    let leaf = rg
                        .members()
                        .find(|m| m.signature_key.as_slice() == newcomer.me.device.0.as_slice())
                        .ok_or_else(|| anyhow::anyhow!("not a member"))?
                        .index;
                    rg.remove_members(&rp, &alice.device, &[leaf])?;
                    rg.merge_pending_commit(&rp)?;
                    Ok(())
                })?;
                remove.raw.push(d);
                let (_, d) = timed(|| {
                    rg.self_update(&rp, &alice.device, LeafNodeParameters::default())?;
                    rg.merge_pending_commit(&rp)?;
                    Ok(())
                })?;
                update.raw.push(d);
            }
        }
    }
    anyhow::ensure!(s.held.loads() == 0, "Sotto's held group was loaded again");
    let none = || anyhow::anyhow!("no repetitions");
    Ok(HeldCommits {
        suite,
        n,
        add: add.medians().ok_or_else(none)?,
        remove: remove.medians().ok_or_else(none)?,
        update: update.medians().ok_or_else(none)?,
    })
}

fn held_table(rows: &[HeldCommits], reps: &[(usize, usize, usize)]) -> Table {
    let mut t = Table::new(
        "mls",
        "the committer's commits with the group held on both sides (issue 15): Sotto / openmls (ms), ratio",
        &["suite", "members", "add", "remove", "self-update"],
    );
    let cell = |x: (Duration, Duration)| {
        format!(
            "{:.2} / {:.2} ({})",
            x.0.as_secs_f64() * 1e3,
            x.1.as_secs_f64() * 1e3,
            ratio(x.0.as_secs_f64(), x.1.as_secs_f64())
        )
    };
    for r in rows {
        t.row(vec![
            r.suite.name().to_owned(),
            r.n.to_string(),
            cell(r.add),
            cell(r.remove),
            cell(r.update),
        ]);
    }
    let reps: Vec<String> = reps.iter().map(|p| format!("{}: {}", p.0, p.1)).collect();
    t.note(format!(
        "fresh trees; medians of (members: repetitions) {}; Sotto's commits also make the GroupInfo the server keeps, and its add exports the tree beside the Welcome (the openmls side exports it too)",
        reps.join(", ")
    ));
    t
}

/// Scenario `mls`, for the group sizes given (default 2, 10, 100, 1000;
/// with `--quick` 2 and 10).
pub(crate) fn run(quick: bool, sizes: Option<Vec<usize>>) -> anyhow::Result<Vec<Table>> {
    let plan = plan(quick, sizes.as_deref());
    anyhow::ensure!(
        plan.iter().all(|p| p.0 >= 2),
        "groups of at least 2 members"
    );
    let mut rows = Vec::new();
    for &(n, reps, create_reps) in &plan {
        for suite in [Suite::PostQuantum, Suite::Classical] {
            for tree in [Tree::Fresh, Tree::Updated] {
                let t = Instant::now();
                rows.push(costs(suite, n, tree, reps, create_reps)?);
                eprintln!(
                    "[mls: {} N={n} {}: {:.1} s]",
                    suite.name(),
                    tree.name(),
                    t.elapsed().as_secs_f64()
                );
            }
        }
    }
    let mut held = Vec::new();
    for &(n, reps, _) in &plan {
        for suite in [Suite::PostQuantum, Suite::Classical] {
            held.push(held_commits(suite, n, reps)?);
        }
    }
    let mut out = tables(&rows, &plan);
    out.push(held_table(&held, &plan));
    out.push(padding_table(quick)?);
    Ok(out)
}

/// What padding to size buckets costs an application message: its
/// ciphertext as Sotto sends it and with no padding at all (openmls with
/// a padding size of 0, in the same group), and the time to encrypt
/// either way, for texts of several lengths (X-Wing, 2 members).
fn padding_table(quick: bool) -> anyhow::Result<Table> {
    let b = Bench::fresh(Suite::PostQuantum, 2)?;
    let (g, ap, dev) = (b.g, &b.ap, &b.alice.device);
    let reps = if quick { 20 } else { 200 };
    let mut t = Table::new(
        "mls",
        "Padding to size buckets: one application message (X-Wing, 2 members)",
        &[
            "plaintext bytes",
            "padded bytes",
            "unpadded bytes",
            "overhead",
            "encrypt padded µs",
            "encrypt unpadded µs",
        ],
    );
    let unpadded = MlsGroupJoinConfig::builder()
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .padding_size(0)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(20, 1000))
        .build();
    for n in [16, 64, 200, 500, 1000, 4000, 16_000, 64_000] {
        let text = vec![b'x'; n];
        let (mut padded_t, mut raw_t) = (Vec::new(), Vec::new());
        let (mut padded_len, mut raw_len) = (0, 0);
        for _ in 0..reps {
            let (c, d) = timed(|| Ok(mls::encrypt(ap, dev, g, &text)?))?;
            padded_t.push(d);
            padded_len = c.len();
            let (c, d) = timed(|| {
                let mut group = raw_load(ap, g)?;
                group.set_configuration(ap.storage(), &unpadded)?;
                Ok(group
                    .create_message(ap, dev, &text)?
                    .tls_serialize_detached()?)
            })?;
            raw_t.push(d);
            raw_len = c.len();
        }
        t.row(vec![
            n.to_string(),
            padded_len.to_string(),
            raw_len.to_string(),
            format!(
                "{:+.0}%",
                (padded_len as f64 / raw_len.max(1) as f64 - 1.0) * 100.0
            ),
            us(median(padded_t)),
            us(median(raw_t)),
        ]);
    }
    t.note(format!(
        "median of {reps} encryptions each; the unpadded one also stores its configuration (set back by the next padded one), so its time is an upper bound"
    ));
    Ok(t)
}

fn tables(rows: &[Costs], plan: &[(usize, usize, usize)]) -> Vec<Table> {
    let ops = [
        "create",
        "join",
        "add",
        "remove",
        "self-update",
        "process commit",
        "encrypt",
        "decrypt",
    ];
    let head = ["suite", "members", "tree"];
    let r = |x: (Duration, Duration)| ratio(x.0.as_secs_f64(), x.1.as_secs_f64());
    let ms = |x: (Duration, Duration)| {
        format!(
            "{:.2} / {:.2}",
            x.0.as_secs_f64() * 1e3,
            x.1.as_secs_f64() * 1e3
        )
    };
    let usp = |x: (Duration, Duration)| format!("{} / {}", us(x.0), us(x.1));
    let dash = || "—".to_string();

    let mut cols: Vec<&str> = head.to_vec();
    cols.push("parent nodes filled");
    cols.extend(ops);
    let mut ratios = Table::new(
        "mls",
        "Sotto's client core against raw openmls: time ratio Sotto / openmls per operation",
        &cols,
    );
    let time_cols: Vec<String> = head
        .iter()
        .map(|s| s.to_string())
        .chain(ops.iter().enumerate().map(|(i, o)| {
            format!(
                "{o}: Sotto / openmls ({})",
                if i >= 6 { "µs" } else { "ms" }
            )
        }))
        .collect();
    let time_cols: Vec<&str> = time_cols.iter().map(String::as_str).collect();
    let mut times = Table::new(
        "mls",
        "the same operations: medians, Sotto / openmls",
        &time_cols,
    );
    let mut sizes = Table::new(
        "mls",
        "bytes of what the operations produce (Sotto / openmls where they differ)",
        &[
            "suite",
            "members",
            "tree",
            "Welcome at creation",
            "add: commit",
            "add: Welcome",
            "remove: commit",
            "self-update: commit",
            "200-byte message",
        ],
    );
    for c in rows {
        let id = vec![
            c.suite.name().to_string(),
            c.n.to_string(),
            c.tree.name().to_string(),
        ];
        let all = [
            c.join, c.add, c.remove, c.update, c.process, c.encrypt, c.decrypt,
        ];
        let mut row = id.clone();
        row.push(format!("{} of {}", c.filled.0, c.filled.1));
        row.push(c.create.map(r).unwrap_or_else(dash));
        row.extend(all.iter().map(|&x| r(x)));
        ratios.row(row);
        let mut row = id.clone();
        row.push(c.create.map(ms).unwrap_or_else(dash));
        row.extend(all[..5].iter().map(|&x| ms(x)));
        row.extend(all[5..].iter().map(|&x| usp(x)));
        times.row(row);
        let s = c.sizes;
        let mut row = id;
        row.push(if c.tree == Tree::Fresh {
            bytes(s.create_welcome)
        } else {
            dash()
        });
        row.extend(
            [
                s.add_commit,
                s.add_welcome,
                s.remove_commit,
                s.update_commit,
                s.message,
            ]
            .into_iter()
            .map(bytes),
        );
        sizes.row(row);
    }
    let reps = plan
        .iter()
        .map(|(n, r, c)| format!("N = {n}: {r} ({c} for create)"))
        .collect::<Vec<_>>()
        .join(", ");
    ratios.note(format!("medians over the repetitions, each repetition alternating which side goes first; repetitions per operation and side: {reps}"));
    ratios.note("the openmls side uses the same provider and storage (libcrux, in-memory), the same group configuration and context extensions, and does the same work from the same inputs (serialized KeyPackages and messages in, serialized commits, Welcomes and messages out)");
    ratios.note("fresh: created with all members in one commit (inner nodes blank but the creator's path); fully updated: every parent node holds a key (built by external joins, see BENCHMARKS.md); \"parent nodes filled\" counts them in the committer's tree before measuring");
    ratios.note("add: one member added to the group of N, and the Welcome it joins from; remove: that member removed again (from N + 1); process commit: another member applying the self-update");
    sizes.note("Sotto's add commit carries the account's signed device list of the added device in its authenticated data (peers refuse a device no list vouches for)");
    vec![ratios, times, sizes]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mls_scenario_runs_and_measures_something() {
        for suite in [Suite::PostQuantum, Suite::Classical] {
            let rows: Vec<Costs> = [Tree::Fresh, Tree::Updated]
                .into_iter()
                .map(|tree| costs(suite, 5, tree, 1, 1).unwrap())
                .collect();
            let (fresh, updated) = (&rows[0], &rows[1]);
            assert!(fresh.create.is_some() && updated.create.is_none());
            assert_eq!(updated.filled, (4, 4), "every parent node filled");
            assert!(fresh.filled.0 < 4);
            for c in &rows {
                for (s, r) in [
                    c.join, c.add, c.remove, c.update, c.process, c.encrypt, c.decrypt,
                ] {
                    assert!(s > Duration::ZERO && r > Duration::ZERO);
                }
                let z = c.sizes;
                assert!(z.message.0 > 200 && z.message.0 < 1000);
                assert!(
                    z.add_commit.0 > z.add_commit.1,
                    "the device list is in Sotto's add"
                );
                assert!(z.add_welcome.0 > z.update_commit.0 / 4);
                assert!(z.remove_commit.0 > 0 && z.update_commit.0 > 0);
                assert_eq!(z.update_commit.0, z.update_commit.1);
            }
            assert!(fresh.sizes.create_welcome.0 > 0);
            assert_eq!(tables(&rows, &[(5, 1, 1)]).len(), 3);
        }
    }
}
