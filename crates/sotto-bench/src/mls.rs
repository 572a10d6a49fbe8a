//! Scenario `mls`: what Sotto's client core adds to openmls. For groups of
//! N members (2, 10, 100) on the post-quantum and the classical suite, the
//! same operation is done through `sotto_core` and through raw openmls on
//! the same group, alternately (so both see the same tree and the same
//! storage): encrypting a message (load the group, create the message,
//! serialize, store), decrypting it (`sotto_core::mls::process` checks the
//! group id and the sender's credential on top), and a self-update commit
//! with its merge (`sotto_core::group::stage` adds the group metadata and
//! the commit policy). Reported as medians and as the ratio Sotto / openmls.
//! The group's fresh-tree and filled-tree commit sizes are in `groups`.

use std::time::{Duration, Instant};

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    GroupId as MlsGroupId, LeafNodeParameters, MlsGroup, MlsMessageIn, OpenMlsProvider,
};
use openmls_libcrux_crypto::Provider;
use sotto_core::group::{self, Change, GroupMeta};
use sotto_core::{AccountKey, CredentialIdentity, DeviceKey, Suite, mls};
use sotto_proto::{GroupId, Handle};

use crate::report::{Table, ratio};

struct Person {
    me: CredentialIdentity,
    device: DeviceKey,
    account: AccountKey,
}

fn person(i: usize) -> anyhow::Result<Person> {
    let account = AccountKey::generate();
    let device = DeviceKey::generate();
    let me = CredentialIdentity {
        account: account.id(),
        device: device.id(),
        handle: Handle::new(&format!("member{i:05}"))?,
    };
    Ok(Person {
        me,
        device,
        account,
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// (Sotto, openmls) medians for encrypt, decrypt and self-update.
struct Costs {
    encrypt: (Duration, Duration),
    decrypt: (Duration, Duration),
    update: (Duration, Duration),
}

fn raw_load(p: &Provider, g: GroupId) -> anyhow::Result<MlsGroup> {
    MlsGroup::load(p.storage(), &MlsGroupId::from_slice(&g.0))?
        .ok_or_else(|| anyhow::anyhow!("no group"))
}

fn costs(suite: Suite, n: usize, reps: usize) -> anyhow::Result<Costs> {
    let g = GroupId([0x6d; 32]);
    let (ap, bp, cp) = (Provider::new()?, Provider::new()?, Provider::new()?);
    let alice = person(0)?;
    let bob = person(1)?;
    let mut kps = Vec::new();
    for i in 1..n {
        let (m, p) = if i == 1 {
            (&bob, &bp)
        } else {
            (&person(i)?, &cp)
        };
        let b = mls::key_packages(p, &m.me, &m.device, suite, 1)?;
        kps.push(mls::verify_key_package(p, &b[0], m.me.account, m.me.device)?.0);
    }
    let meta = GroupMeta {
        name: "mls".into(),
        admins: vec![alice.me.account],
    };
    let created = mls::create_group(&ap, &alice.me, &alice.device, g, &kps, Some(&meta))?;
    mls::merge_pending(&ap, g)?;
    mls::join(&bp, &created.welcome)?;
    let _ = &alice.account;
    let text = vec![b'x'; 200];
    let (mut es, mut er, mut ds, mut dr, mut us, mut ur) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..reps {
        // Encrypt: Sotto, then openmls.
        let t = Instant::now();
        let c1 = mls::encrypt(&ap, &alice.device, g, &text)?;
        es.push(t.elapsed());
        let t = Instant::now();
        let c2 = raw_load(&ap, g)?
            .create_message(&ap, &alice.device, &text)?
            .tls_serialize_detached()?;
        er.push(t.elapsed());
        // Decrypt: one each.
        let t = Instant::now();
        mls::process(&bp, g, &c1)?;
        ds.push(t.elapsed());
        let t = Instant::now();
        let msg = MlsMessageIn::tls_deserialize_exact(&c2)?;
        let proto = msg.try_into_protocol_message()?;
        raw_load(&bp, g)?.process_message(&bp, proto)?;
        dr.push(t.elapsed());
        // Self-update with its merge; Bob follows (not timed).
        let t = Instant::now();
        let s = group::stage(
            &ap,
            &alice.device,
            g,
            Change {
                self_update: true,
                ..Change::default()
            },
        )?
        .ok_or_else(|| anyhow::anyhow!("no commit"))?;
        mls::merge_pending(&ap, g)?;
        us.push(t.elapsed());
        mls::process(&bp, g, &s.commit)?;
        let t = Instant::now();
        let mut grp = raw_load(&ap, g)?;
        let bundle = grp.self_update(&ap, &alice.device, LeafNodeParameters::default())?;
        grp.merge_pending_commit(&ap)?;
        let commit = bundle.into_commit().tls_serialize_detached()?;
        ur.push(t.elapsed());
        mls::process(&bp, g, &commit)?;
    }
    Ok(Costs {
        encrypt: (median(es), median(er)),
        decrypt: (median(ds), median(dr)),
        update: (median(us), median(ur)),
    })
}

/// Scenario `mls`.
pub(crate) fn run(quick: bool) -> anyhow::Result<Vec<Table>> {
    let (sizes, reps): (&[usize], usize) = if quick {
        (&[2], 3)
    } else {
        (&[2, 10, 100], 21)
    };
    let us = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1e6);
    let mut t = Table::new(
        "mls",
        "Sotto's client core against raw openmls, same group, alternating",
        &[
            "suite",
            "members",
            "encrypt: Sotto / openmls (µs)",
            "ratio",
            "decrypt: Sotto / openmls (µs)",
            "ratio",
            "self-update + merge: Sotto / openmls (µs)",
            "ratio",
        ],
    );
    for &n in sizes {
        for suite in [Suite::PostQuantum, Suite::Classical] {
            let c = costs(suite, n, reps)?;
            let r = |x: (Duration, Duration)| ratio(x.0.as_secs_f64(), x.1.as_secs_f64());
            t.row(vec![
                suite.name().into(),
                n.to_string(),
                format!("{} / {}", us(c.encrypt.0), us(c.encrypt.1)),
                r(c.encrypt),
                format!("{} / {}", us(c.decrypt.0), us(c.decrypt.1)),
                r(c.decrypt),
                format!("{} / {}", us(c.update.0), us(c.update.1)),
                r(c.update),
            ]);
        }
    }
    t.note(format!("{reps} repetitions of each, medians; 200-byte messages; the openmls side uses the same provider and storage (libcrux, in-memory)"));
    Ok(vec![t])
}
