//! The conformance suite every [`Store`] backend passes. Each check takes a
//! fresh, empty store; [`crate::store_conformance_tests`] turns them into one
//! `#[tokio::test]` each for a backend. The key directory's tables have
//! their own checks (`crate::directory::conformance`), which every backend's
//! tests run too.

use sotto_proto::{
    AccountId, DeviceId, DeviceKill, EnvelopeKind, GroupId, Handle, MessageId, Signature,
    SignedDeviceList, SignedKillRecord,
};

use super::{
    CommitError, CommitWrite, DeviceListError, GroupState, MailboxCap, MailboxEntry, NewAccount,
    Outgoing, Posted, ProposalWrite, RegisterError, SendError, Store, StoredKeyPackage,
};

/// A cap on entries only.
pub(crate) fn cap(messages: u64) -> MailboxCap {
    MailboxCap {
        messages,
        bytes: u64::MAX,
    }
}

pub(crate) const NOW: u64 = 1_800_000_000_000;
const DAY: u64 = 86_400_000;

pub(crate) fn account(n: u8) -> NewAccount {
    NewAccount {
        handle: Handle::new(&format!("user{n}")).unwrap(),
        account: AccountId([n; 32]),
        device: DeviceId([n | 0x80; 32]),
        invite_hash: None,
        now_ms: NOW,
        device_list: list(n, 1, &[dev(n)]),
    }
}

/// A device list (the store does not check signatures; the server does).
pub(crate) fn list(n: u8, version: u64, devices: &[DeviceId]) -> SignedDeviceList {
    SignedDeviceList {
        account: AccountId([n; 32]),
        version,
        devices: devices.to_vec(),
        signature: Signature([0; 64]),
    }
}

pub(crate) fn dev(n: u8) -> DeviceId {
    DeviceId([n | 0x80; 32])
}

pub(crate) fn out(group: GroupId, sender: DeviceId, id: u8, kind: EnvelopeKind) -> Outgoing {
    Outgoing {
        group,
        sender,
        msg_id: MessageId([id; 16]),
        kind,
        payload: vec![id; 10],
        now_ms: NOW,
        expires_ms: NOW + DAY,
        epoch: None,
    }
}

/// An application message of `sender` encrypted in `epoch`.
fn app(group: GroupId, sender: DeviceId, id: u8, epoch: u64) -> Outgoing {
    Outgoing {
        epoch: Some(epoch),
        ..out(group, sender, id, EnvelopeKind::Application)
    }
}

pub(crate) fn create(group: GroupId, by: DeviceId, members: Vec<DeviceId>) -> CommitWrite {
    CommitWrite {
        state: b"state at 1".to_vec(),
        group_info: b"info at 1".to_vec(),
        commit: None,
        welcome: None,
        welcome_recipients: Vec::new(),
        group,
        sender: by,
        epoch: 0,
        members,
        joins: false,
        mailbox_cap: cap(1000),
        msg_id: MessageId(rand_id()),
        expires_ms: NOW + DAY,
    }
}

fn rand_id() -> [u8; 16] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&N.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    id
}

/// Invites are single-use, expire, and are not spent by a failed registration.
pub async fn invites_are_single_use<S: Store>(s: S) {
    s.add_invites(vec![[1; 32], [2; 32]], NOW + DAY)
        .await
        .unwrap();
    s.add_invites(vec![[3; 32]], NOW - 1).await.unwrap();
    let with = |n: u8, inv: u8| NewAccount {
        invite_hash: Some([inv; 32]),
        ..account(n)
    };
    s.register(with(1, 1)).await.unwrap();
    assert!(matches!(
        s.register(with(2, 1)).await,
        Err(RegisterError::InvalidInvite)
    ));
    assert!(matches!(
        s.register(with(2, 3)).await,
        Err(RegisterError::InvalidInvite)
    ));
    assert!(matches!(
        s.register(with(2, 9)).await,
        Err(RegisterError::InvalidInvite)
    ));
    // Handle taken: refused, and invite 2 is still good afterwards.
    let mut taken = with(2, 2);
    taken.handle = Handle::new("user1").unwrap();
    assert!(matches!(
        s.register(taken).await,
        Err(RegisterError::HandleTaken)
    ));
    s.register(with(2, 2)).await.unwrap();
    // The same keys again.
    let mut again = account(2);
    again.handle = Handle::new("other").unwrap();
    assert!(matches!(
        s.register(again).await,
        Err(RegisterError::AlreadyRegistered)
    ));
    let rec = s.device(dev(1)).await.unwrap().unwrap();
    assert_eq!(rec.account, AccountId([1; 32]));
    assert_eq!(rec.handle.as_str(), "user1");
    assert!(!rec.revoked);
    assert!(s.device(dev(9)).await.unwrap().is_none());
}

/// KeyPackages: idempotent upload, a cap, claimed once, then last resort.
pub async fn key_packages_are_claimed_once<S: Store>(s: S) {
    s.register(account(1)).await.unwrap();
    let kp = |n: u8| StoredKeyPackage {
        hash: [n; 32],
        data: vec![n; 8],
    };
    let st = s
        .upload_key_packages(dev(1), vec![kp(1), kp(2), kp(2), kp(3)], None, 2)
        .await
        .unwrap();
    assert_eq!((st.one_time, st.last_resort), (2, false));
    let st = s
        .upload_key_packages(dev(1), vec![], Some(kp(9)), 2)
        .await
        .unwrap();
    assert_eq!((st.one_time, st.last_resort), (2, true));
    let h = Handle::new("user1").unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        let (acc, c) = s.claim_key_packages(h.clone()).await.unwrap().unwrap();
        assert_eq!(acc, AccountId([1; 32]));
        assert_eq!(c.len(), 1);
        got.push((c[0].data.clone(), c[0].last_resort));
    }
    assert_ne!(got[0].0, got[1].0);
    assert!(!got[0].1 && !got[1].1);
    assert_eq!(got[2], (vec![9; 8], true));
    assert_eq!(got[3], (vec![9; 8], true));
    assert_eq!(s.key_package_stock(dev(1)).await.unwrap().one_time, 0);
    assert!(
        s.claim_key_packages(Handle::new("nobody").unwrap())
            .await
            .unwrap()
            .is_none()
    );
}

/// Commits: compare-and-set on the epoch, membership, fan-out.
pub async fn commits_compare_and_set<S: Store>(s: S) {
    let g = GroupId([7; 32]);
    let mut c = create(g, dev(1), vec![dev(1), dev(2)]);
    c.welcome = Some(out(g, dev(1), 1, EnvelopeKind::Welcome));
    c.welcome_recipients = vec![dev(2)];
    let o = s.commit(c.clone()).await.unwrap();
    assert_eq!(o.epoch, 1);
    assert_eq!(o.recipients(), vec![dev(2)]);
    // The same commit again (its answer was lost): answered, not reapplied.
    let again = s.commit(c.clone()).await.unwrap();
    assert_eq!((again.epoch, again.recipients().len()), (1, 0));
    assert_eq!(s.fetch(dev(2), 0, 10, NOW).await.unwrap().len(), 1);
    // Another commit on the same epoch is stale.
    let mut other = c;
    other.msg_id = MessageId([0xee; 16]);
    assert!(matches!(
        s.commit(other).await,
        Err(CommitError::StaleEpoch(1))
    ));
    // An outsider cannot commit; a member on the right epoch can.
    let mut outsider = create(g, dev(3), vec![dev(3)]);
    outsider.epoch = 1;
    assert!(matches!(
        s.commit(outsider).await,
        Err(CommitError::NotMember)
    ));
    let mut next = create(g, dev(2), vec![dev(1), dev(2), dev(3)]);
    next.epoch = 1;
    next.commit = Some(out(g, dev(2), 2, EnvelopeKind::Commit));
    let o = s.commit(next).await.unwrap();
    assert_eq!(o.epoch, 2);
    assert_eq!(o.recipients(), vec![dev(1)]);
    // A device that joins by its commit (a new device of a member account,
    // checked by the rules) needs no routing before it, and has it after.
    let mut joins = create(g, dev(4), vec![dev(1), dev(2), dev(3), dev(4)]);
    joins.epoch = 2;
    joins.joins = true;
    joins.commit = Some(out(g, dev(4), 3, EnvelopeKind::Commit));
    let o = s.commit(joins).await.unwrap();
    assert_eq!(o.epoch, 3);
    assert_eq!(o.recipients(), vec![dev(1), dev(2), dev(3)]);
    let r = s
        .send(out(g, dev(1), 4, EnvelopeKind::Application), cap(10))
        .await
        .unwrap();
    assert_eq!(r.recipients().len(), 3);
    // A commit on an unknown group at epoch > 0 is stale.
    let mut ghost = create(GroupId([8; 32]), dev(1), vec![dev(1)]);
    ghost.epoch = 4;
    assert!(matches!(
        s.commit(ghost).await,
        Err(CommitError::StaleEpoch(0))
    ));
}

/// A group's public state, GroupInfo and proposals: kept per epoch, the
/// proposals only for the epoch they were accepted in, dropped by the
/// next commit.
pub async fn group_state_and_proposals<S: Store>(s: S) {
    let g = GroupId([9; 32]);
    assert_eq!(s.group_state(g).await.unwrap(), None);
    let c = create(g, dev(1), vec![dev(1), dev(2), dev(3)]);
    s.commit(c.clone()).await.unwrap();
    assert_eq!(s.applied_commit(dev(1), c.msg_id).await.unwrap(), Some(1));
    assert_eq!(s.applied_commit(dev(2), c.msg_id).await.unwrap(), None);
    let at_1 = GroupState {
        epoch: 1,
        state: b"state at 1".to_vec(),
        group_info: b"info at 1".to_vec(),
        proposals: Vec::new(),
    };
    assert_eq!(s.group_state(g).await.unwrap().as_ref(), Some(&at_1));
    let propose = |by: DeviceId, id: u8, epoch: u64| ProposalWrite {
        message: out(g, by, id, EnvelopeKind::Proposal),
        epoch,
        mailbox_cap: cap(1000),
    };
    let o = s.propose(propose(dev(3), 40, 1)).await.unwrap();
    assert!(!o.duplicate);
    assert_eq!(o.recipients(), vec![dev(1), dev(2)]);
    // Stored once, for the others, with its kind.
    assert!(s.propose(propose(dev(3), 40, 1)).await.unwrap().duplicate);
    let got = s.fetch(dev(2), 0, 10, NOW).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].envelope.kind, EnvelopeKind::Proposal);
    assert!(matches!(
        s.propose(propose(dev(9), 41, 1)).await,
        Err(CommitError::NotMember)
    ));
    assert!(matches!(
        s.propose(propose(dev(2), 42, 0)).await,
        Err(CommitError::StaleEpoch(1))
    ));
    assert_eq!(
        s.group_state(g).await.unwrap().unwrap().proposals,
        vec![vec![40u8; 10]]
    );
    // The next commit takes the new state and drops the epoch's proposals.
    let mut next = create(g, dev(1), vec![dev(1), dev(2)]);
    next.epoch = 1;
    next.state = b"state at 2".to_vec();
    next.group_info = b"info at 2".to_vec();
    next.commit = Some(out(g, dev(1), 43, EnvelopeKind::Commit));
    s.commit(next).await.unwrap();
    assert_eq!(
        s.group_state(g).await.unwrap(),
        Some(GroupState {
            epoch: 2,
            state: b"state at 2".to_vec(),
            group_info: b"info at 2".to_vec(),
            proposals: Vec::new(),
        })
    );
    assert!(matches!(
        s.propose(propose(dev(3), 44, 2)).await,
        Err(CommitError::NotMember)
    ));
}

/// Sends: fan-out to members but the sender, dedup of an application
/// message by (group, id), caps; the stored message names no sender.
pub async fn sends_fan_out_once<S: Store>(s: S) {
    let g = GroupId([7; 32]);
    let other = GroupId([8; 32]);
    s.commit(create(g, dev(1), vec![dev(1), dev(2), dev(3)]))
        .await
        .unwrap();
    s.commit(create(other, dev(1), vec![dev(1), dev(3)]))
        .await
        .unwrap();
    let r = s
        .send(out(g, dev(1), 1, EnvelopeKind::Application), cap(3))
        .await
        .unwrap();
    assert!(!r.duplicate);
    assert_eq!(r.recipients().len(), 2);
    let r = s
        .send(out(g, dev(1), 1, EnvelopeKind::Application), cap(3))
        .await
        .unwrap();
    assert!(r.duplicate);
    assert!(r.recipients().is_empty());
    // An application message's id is unique within its group, whoever
    // sends it (the store does not keep who did): ids are random, so only a
    // replay repeats one.
    let r = s
        .send(out(g, dev(2), 1, EnvelopeKind::Application), cap(3))
        .await
        .unwrap();
    assert!(r.duplicate);
    // The same id in another group is another message.
    assert!(
        !s.send(out(other, dev(1), 1, EnvelopeKind::Application), cap(3))
            .await
            .unwrap()
            .duplicate
    );
    assert!(
        !s.send(out(g, dev(2), 2, EnvelopeKind::Application), cap(3))
            .await
            .unwrap()
            .duplicate
    );
    // dev(3) now holds three messages: at the cap.
    assert!(matches!(
        s.send(out(g, dev(1), 3, EnvelopeKind::Application), cap(3))
            .await,
        Err(SendError::MailboxFull)
    ));
    assert!(matches!(
        s.send(out(g, dev(9), 4, EnvelopeKind::Application), cap(3))
            .await,
        Err(SendError::NotMember)
    ));
    let m = s.fetch(dev(3), 0, 10, NOW).await.unwrap();
    let got: Vec<_> = m
        .iter()
        .map(|d| (d.envelope.group, d.envelope.msg_id.0[0], d.envelope.sender))
        .collect();
    assert_eq!(
        got,
        [
            (g, 1, DeviceId::NONE),
            (other, 1, DeviceId::NONE),
            (g, 2, DeviceId::NONE)
        ]
    );
    assert!(m[0].seq < m[1].seq && m[1].seq < m[2].seq);
    assert_eq!(m[0].envelope.payload.0, vec![1; 10]);
    assert_eq!(s.fetch(dev(1), 0, 10, NOW).await.unwrap().len(), 1);
}

/// `fetch_many` reads each mailbox as `fetch` does, in the order asked
/// (one device twice included), and answers `None` for a revoked or
/// unknown device.
pub async fn fetch_many_reads_like_fetch<S: Store>(s: S) {
    for n in 1..=3 {
        s.register(account(n)).await.unwrap();
    }
    let g = GroupId([7; 32]);
    s.commit(create(g, dev(1), vec![dev(1), dev(2), dev(3)]))
        .await
        .unwrap();
    for i in 1..=5 {
        s.send(out(g, dev(1), i, EnvelopeKind::Application), cap(100))
            .await
            .unwrap();
    }
    s.send(out(g, dev(2), 6, EnvelopeKind::Application), cap(100))
        .await
        .unwrap();
    let gone = Outgoing {
        expires_ms: NOW - 1,
        ..out(g, dev(1), 7, EnvelopeKind::Application)
    };
    s.send(gone, cap(100)).await.unwrap();
    let ids = |m: &[MailboxEntry]| -> Vec<(u64, u8)> {
        m.iter().map(|e| (e.seq, e.envelope.msg_id.0[0])).collect()
    };
    let all = s.fetch(dev(3), 0, 100, NOW).await.unwrap();
    assert_eq!(all.len(), 6);
    let after = all[1].seq;
    let wants = vec![
        (dev(3), after),
        (dev(1), 0),
        (DeviceId([0x55; 32]), 0),
        (dev(2), 0),
        (dev(3), 0),
    ];
    let got = s.fetch_many(wants.clone(), 3, NOW).await.unwrap();
    assert_eq!(got.len(), wants.len());
    for ((device, after), got) in wants.iter().zip(&got) {
        if device.0[0] == 0x55 {
            assert!(got.is_none());
            continue;
        }
        let want = s.fetch(*device, *after, 3, NOW).await.unwrap();
        assert_eq!(
            ids(got.as_ref().unwrap()),
            ids(&want),
            "{device:?} after {after}"
        );
    }
    assert_eq!(
        ids(got[0].as_ref().unwrap()),
        ids(&all[2..5]),
        "entries after `after`, at most `limit`"
    );
    assert!(s.revoke_device(dev(2)).await.unwrap());
    let got = s
        .fetch_many(vec![(dev(2), 0), (dev(3), 0)], 10, NOW)
        .await
        .unwrap();
    assert!(got[0].is_none(), "a revoked device");
    assert_eq!(ids(got[1].as_ref().unwrap()), ids(&all));
    assert!(s.fetch_many(Vec::new(), 10, NOW).await.unwrap().is_empty());
}

/// The byte cap: a write that would take a mailbox past it is refused
/// whole, what is already there stays, and an ack makes room again.
pub async fn mailbox_byte_cap<S: Store>(s: S) {
    let g = GroupId([8; 32]);
    s.commit(create(g, dev(1), vec![dev(1), dev(2)]))
        .await
        .unwrap();
    let bytes = MailboxCap {
        messages: 1000,
        bytes: 25,
    };
    // Payloads are 10 bytes: two fit in 25, a third does not.
    for id in 1..=2 {
        s.send(out(g, dev(1), id, EnvelopeKind::Application), bytes)
            .await
            .unwrap();
    }
    assert!(matches!(
        s.send(out(g, dev(1), 3, EnvelopeKind::Application), bytes)
            .await,
        Err(SendError::MailboxFull)
    ));
    let m = s.fetch(dev(2), 0, 10, NOW).await.unwrap();
    assert_eq!(m.len(), 2, "a refused write touched the mailbox");
    s.ack(dev(2), vec![m[0].seq]).await.unwrap();
    // The refused id was not remembered as sent: the retry goes through.
    assert!(
        !s.send(out(g, dev(1), 3, EnvelopeKind::Application), bytes)
            .await
            .unwrap()
            .duplicate
    );
    assert_eq!(s.fetch(dev(2), 0, 10, NOW).await.unwrap().len(), 2);
}

/// Fetch pages in order; acks delete only the owner's entries; expiry purges.
pub async fn fetch_ack_and_expiry<S: Store>(s: S) {
    let g = GroupId([7; 32]);
    s.commit(create(g, dev(1), vec![dev(1), dev(2), dev(3)]))
        .await
        .unwrap();
    for i in 1..=5 {
        s.send(out(g, dev(1), i, EnvelopeKind::Application), cap(100))
            .await
            .unwrap();
    }
    let first = s.fetch(dev(2), 0, 3, NOW).await.unwrap();
    assert_eq!(first.len(), 3);
    let rest = s.fetch(dev(2), first[2].seq, 3, NOW).await.unwrap();
    assert_eq!(rest.len(), 2);
    let ids: Vec<u8> = first
        .iter()
        .chain(&rest)
        .map(|m| m.envelope.msg_id.0[0])
        .collect();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
    // Sequence numbers are per mailbox: dev(3) acking its own first two
    // leaves dev(2)'s mailbox alone.
    let of3 = s.fetch(dev(3), 0, 2, NOW).await.unwrap();
    s.ack(dev(3), of3.iter().map(|m| m.seq).collect())
        .await
        .unwrap();
    assert_eq!(s.fetch(dev(2), 0, 10, NOW).await.unwrap().len(), 5);
    assert_eq!(s.fetch(dev(3), 0, 10, NOW).await.unwrap().len(), 3);
    // Acks are idempotent.
    s.ack(dev(2), first.iter().map(|m| m.seq).collect())
        .await
        .unwrap();
    s.ack(dev(2), first.iter().map(|m| m.seq).collect())
        .await
        .unwrap();
    assert_eq!(s.fetch(dev(2), 0, 10, NOW).await.unwrap().len(), 2);
    assert_eq!(s.fetch(dev(3), 0, 10, NOW).await.unwrap().len(), 3);
    // Expired messages are not delivered even before the purge...
    assert!(s.fetch(dev(3), 0, 10, NOW + DAY).await.unwrap().is_empty());
    // ... and the purge removes them from every mailbox. Messages 1 and 2
    // left with their last acks; 3, 4 and 5 are still held.
    assert_eq!(s.purge_expired(NOW + DAY - 1).await.unwrap(), 0);
    assert_eq!(s.purge_expired(NOW + DAY).await.unwrap(), 3);
    assert_eq!(s.stats().await.unwrap().pending_deliveries, 0);
    assert!(s.fetch(dev(2), 0, 10, NOW).await.unwrap().is_empty());
    assert!(s.fetch(dev(3), 0, 10, NOW).await.unwrap().is_empty());
    // The dedup window expired with them.
    assert!(
        !s.send(out(g, dev(1), 1, EnvelopeKind::Application), cap(100))
            .await
            .unwrap()
            .duplicate
    );
}

/// A mailbox's head is the last sequence number handed out: a node that
/// lost its bus compares it with what it delivered.
pub async fn mailbox_heads_follow_sends<S: Store>(s: S) {
    let g = GroupId([8; 32]);
    s.commit(create(g, dev(1), vec![dev(1), dev(2), dev(3)]))
        .await
        .unwrap();
    for i in 1..=3 {
        s.send(out(g, dev(1), i, EnvelopeKind::Application), cap(100))
            .await
            .unwrap();
    }
    let two = s
        .fetch(dev(2), 0, 10, NOW)
        .await
        .unwrap()
        .last()
        .map(|m| m.seq);
    let three = s
        .fetch(dev(3), 0, 10, NOW)
        .await
        .unwrap()
        .last()
        .map(|m| m.seq);
    let mut heads = s.mailbox_heads(vec![dev(2), dev(3), dev(9)]).await.unwrap();
    heads.sort();
    assert_eq!(
        heads,
        vec![(dev(2), two.unwrap()), (dev(3), three.unwrap())],
        "heads of the devices with mail, none for a device without"
    );
    assert!(s.mailbox_heads(Vec::new()).await.unwrap().is_empty());
    s.send(out(g, dev(2), 4, EnvelopeKind::Application), cap(100))
        .await
        .unwrap();
    let heads = s.mailbox_heads(vec![dev(3)]).await.unwrap();
    assert_eq!(heads.len(), 1);
    assert!(heads[0].1 > three.unwrap(), "a new message moves the head");
}

/// Device lists add and revoke devices; stale and foreign lists are refused.
pub async fn device_lists_add_and_revoke<S: Store>(s: S) {
    s.register(account(1)).await.unwrap();
    s.register(account(2)).await.unwrap();
    assert_eq!(
        s.device_list(AccountId([1; 32]))
            .await
            .unwrap()
            .unwrap()
            .version,
        1
    );
    let second = DeviceId([0x11; 32]);
    let ch = s
        .publish_device_list(list(1, 2, &[dev(1), second]), NOW)
        .await
        .unwrap();
    assert_eq!((ch.added, ch.revoked), (vec![second], vec![]));
    let rec = s.device(second).await.unwrap().unwrap();
    assert_eq!(rec.account, AccountId([1; 32]));
    assert!(matches!(
        s.publish_device_list(list(1, 2, &[dev(1)]), NOW).await,
        Err(DeviceListError::Stale(2))
    ));
    assert!(matches!(
        s.publish_device_list(list(1, 3, &[dev(1), dev(2)]), NOW)
            .await,
        Err(DeviceListError::ForeignDevice)
    ));
    // The second device has a KeyPackage, can be claimed by device, then is revoked.
    let kp = StoredKeyPackage {
        hash: [5; 32],
        data: vec![5; 8],
    };
    s.upload_key_packages(second, vec![kp], None, 10)
        .await
        .unwrap();
    let g = GroupId([3; 32]);
    s.commit(create(g, dev(1), vec![dev(1), second]))
        .await
        .unwrap();
    let c = s.claim_device_key_package(second).await.unwrap().unwrap();
    assert_eq!((c.device, c.data), (second, vec![5; 8]));
    assert!(s.claim_device_key_package(second).await.unwrap().is_none());
    let ch = s
        .publish_device_list(list(1, 3, &[dev(1)]), NOW)
        .await
        .unwrap();
    assert_eq!(ch.revoked, vec![second]);
    assert!(s.device(second).await.unwrap().unwrap().revoked);
    // A revoked device gets nothing more.
    s.send(out(g, dev(1), 9, EnvelopeKind::Application), cap(10))
        .await
        .unwrap();
    assert!(s.fetch(second, 0, 10, NOW).await.unwrap().is_empty());
    assert_eq!(
        s.device_list(AccountId([1; 32]))
            .await
            .unwrap()
            .unwrap()
            .devices,
        vec![dev(1)]
    );
}

/// Device-to-device messages go to one device, once.
pub async fn device_messages_are_stored_once<S: Store>(s: S) {
    let m = out(GroupId([0; 32]), dev(1), 4, EnvelopeKind::Device);
    assert!(
        !s.send_to_device(m.clone(), dev(2), cap(10))
            .await
            .unwrap()
            .duplicate
    );
    assert!(
        s.send_to_device(m, dev(2), cap(10))
            .await
            .unwrap()
            .duplicate
    );
    // Its id is unique per sender device, which it names: another
    // device's same id is another message.
    let m = out(GroupId([0; 32]), dev(3), 4, EnvelopeKind::Device);
    assert!(
        !s.send_to_device(m, dev(2), cap(10))
            .await
            .unwrap()
            .duplicate
    );
    let got = s.fetch(dev(2), 0, 10, NOW).await.unwrap();
    let senders: Vec<_> = got
        .iter()
        .map(|d| (d.envelope.kind, d.envelope.sender))
        .collect();
    assert_eq!(
        senders,
        [
            (EnvelopeKind::Device, dev(1)),
            (EnvelopeKind::Device, dev(3))
        ]
    );
}

/// Blobs: only members upload, only other members fetch, the record goes
/// when every recipient fetched it or when it expires.
pub async fn blobs_are_tracked<S: Store>(s: S) {
    let g = GroupId([7; 32]);
    s.commit(create(g, dev(1), vec![dev(1), dev(2), dev(3)]))
        .await
        .unwrap();
    let b = sotto_proto::BlobId([1; 16]);
    assert!(
        s.begin_blob(b, dev(9), g, 10, NOW + DAY)
            .await
            .unwrap()
            .is_none()
    );
    let st = s
        .begin_blob(b, dev(1), g, 10, NOW + DAY)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((st.total, st.received), (10, 0));
    // Another sender cannot take over the id.
    assert!(
        s.begin_blob(b, dev(2), g, 10, NOW + DAY)
            .await
            .unwrap()
            .is_none()
    );
    s.blob_progress(b, 10).await.unwrap();
    assert_eq!(
        s.begin_blob(b, dev(1), g, 10, NOW + DAY)
            .await
            .unwrap()
            .unwrap()
            .received,
        10
    );
    assert!(
        s.blob_for(b, dev(1), NOW).await.unwrap().is_none(),
        "the sender is no recipient"
    );
    assert!(s.blob_for(b, dev(9), NOW).await.unwrap().is_none());
    assert_eq!(
        s.blob_for(b, dev(2), NOW).await.unwrap().unwrap().received,
        10
    );
    assert!(
        s.blob_for(b, dev(2), NOW + DAY).await.unwrap().is_none(),
        "expired"
    );
    assert!(!s.blob_fetched(b, dev(2)).await.unwrap());
    assert!(
        s.blob_for(b, dev(2), NOW).await.unwrap().is_none(),
        "fetched once"
    );
    assert!(s.blob_fetched(b, dev(3)).await.unwrap());
    // Expiry.
    let b2 = sotto_proto::BlobId([2; 16]);
    s.begin_blob(b2, dev(1), g, 5, NOW + DAY)
        .await
        .unwrap()
        .unwrap();
    assert!(s.purge_blobs(NOW).await.unwrap().is_empty());
    assert_eq!(s.purge_blobs(NOW + DAY).await.unwrap(), vec![b2]);
    assert!(s.blob_for(b2, dev(2), NOW).await.unwrap().is_none());
}

/// Operator stats count what is stored; an operator revoke locks a device
/// out and deletes what it had.
pub async fn stats_and_operator_revoke<S: Store>(s: S) {
    s.ping().await.unwrap();
    assert_eq!(s.stats().await.unwrap(), super::Stats::default());
    s.register(account(1)).await.unwrap();
    s.register(account(2)).await.unwrap();
    s.upload_key_packages(dev(2), vec![kp(1), kp(2)], Some(kp(3)), 10)
        .await
        .unwrap();
    let g = GroupId([7; 32]);
    s.commit(create(g, dev(1), vec![dev(1), dev(2)]))
        .await
        .unwrap();
    s.send(out(g, dev(1), 1, EnvelopeKind::Application), cap(10))
        .await
        .unwrap();
    let st = s.stats().await.unwrap();
    assert_eq!(
        (
            st.accounts,
            st.live_devices,
            st.groups,
            st.pending_deliveries,
            st.key_packages
        ),
        (2, 2, 1, 1, 2)
    );
    assert!(s.revoke_device(dev(2)).await.unwrap());
    assert!(!s.revoke_device(dev(2)).await.unwrap());
    assert!(!s.revoke_device(DeviceId([0x55; 32])).await.unwrap());
    assert!(s.device(dev(2)).await.unwrap().unwrap().revoked);
    assert!(s.fetch(dev(2), 0, 10, NOW).await.unwrap().is_empty());
    assert!(s.claim_device_key_package(dev(2)).await.unwrap().is_none());
    let st = s.stats().await.unwrap();
    assert_eq!(
        (st.live_devices, st.pending_deliveries, st.key_packages),
        (1, 0, 0)
    );
    // No longer a member: a send reaches nobody.
    let r = s
        .send(out(g, dev(1), 2, EnvelopeKind::Application), cap(10))
        .await
        .unwrap();
    assert!(r.recipients().is_empty());
}

fn kp(n: u8) -> StoredKeyPackage {
    StoredKeyPackage {
        hash: [n; 32],
        data: vec![n; 8],
    }
}

/// Many commits on one epoch at once (as from several server nodes): exactly
/// one wins, the others learn the new epoch; the same for creating a group.
pub async fn concurrent_commits_one_wins<S: Store>(s: S) {
    let s = std::sync::Arc::new(s);
    let g = GroupId([9; 32]);
    let all: Vec<DeviceId> = (1..=8).map(dev).collect();
    let mut tasks = Vec::new();
    for n in 1..=8u8 {
        let (s, all) = (s.clone(), all.clone());
        tasks.push(tokio::spawn(async move {
            s.commit(create(g, dev(n), all)).await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(o) => {
                assert_eq!(o.epoch, 1);
                won += 1;
            }
            Err(CommitError::StaleEpoch(1)) => {}
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!(won, 1, "one creation wins");
    let mut tasks = Vec::new();
    for n in 1..=8u8 {
        let s = s.clone();
        let mut c = create(g, dev(n), (1..=8).map(dev).collect());
        c.epoch = 1;
        c.commit = Some(out(g, dev(n), n, EnvelopeKind::Commit));
        tasks.push(tokio::spawn(async move { s.commit(c).await }));
    }
    let mut won = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(o) => won.push(o.epoch),
            Err(CommitError::StaleEpoch(2)) => {}
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!(won, vec![2], "one commit per epoch");
    // Every other member got exactly that one commit, the winner nothing.
    let mut got = Vec::new();
    for n in 1..=8u8 {
        got.push(s.fetch(dev(n), 0, 100, NOW).await.unwrap().len());
    }
    assert_eq!(got.iter().sum::<usize>(), 7, "{got:?}");
    assert!(got.iter().all(|n| *n <= 1), "{got:?}");
}

/// Every recipient of a group message acks it at the same moment (as a
/// group's devices do when it is pushed to them): each ack succeeds, and
/// once the last is in, the message itself is gone, not left behind by two
/// last acks that each saw the other's entry.
pub async fn concurrent_acks_release_the_message<S: Store>(s: S) {
    let s = std::sync::Arc::new(s);
    let g = GroupId([12; 32]);
    const MEMBERS: u8 = 40;
    s.commit(create(g, dev(1), (1..=MEMBERS + 1).map(dev).collect()))
        .await
        .unwrap();
    for i in 1..=3 {
        s.send(out(g, dev(1), i, EnvelopeKind::Application), cap(100))
            .await
            .unwrap();
    }
    let mut acks = Vec::new();
    for n in 2..=MEMBERS + 1 {
        let s = s.clone();
        acks.push(tokio::spawn(async move {
            let got = s.fetch(dev(n), 0, 10, NOW).await.unwrap();
            assert_eq!(got.len(), 3);
            s.ack(dev(n), got.iter().map(|e| e.seq).collect())
                .await
                .unwrap();
        }));
    }
    for a in acks {
        a.await.unwrap();
    }
    assert_eq!(s.stats().await.unwrap().pending_deliveries, 0);
    // The purge finds nothing left to expire: the messages left with
    // their last acks.
    assert_eq!(s.purge_expired(NOW + DAY).await.unwrap(), 0);
}

/// Senders writing while a reader follows its mailbox with a cursor (as a
/// connection's delivery loop does): the reader sees every entry exactly
/// once and each sender's messages in the order they were sent; acks bring
/// the mailbox back to empty.
pub async fn concurrent_sends_keep_mailbox_order<S: Store>(s: S) {
    let s = std::sync::Arc::new(s);
    let g = GroupId([10; 32]);
    s.commit(create(g, dev(1), (1..=5).map(dev).collect()))
        .await
        .unwrap();
    const PER_SENDER: u8 = 40;
    let mut senders = Vec::new();
    for n in 2..=5u8 {
        let s = s.clone();
        senders.push(tokio::spawn(async move {
            for i in 0..PER_SENDER {
                let mut m = out(g, dev(n), i, EnvelopeKind::Application);
                m.msg_id.0[1] = n;
                s.send(m, cap(10_000)).await.unwrap();
            }
        }));
    }
    let reader = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut cursor = 0;
            let mut seen: Vec<(u8, u8)> = Vec::new();
            while seen.len() < 4 * usize::from(PER_SENDER) {
                let batch = s.fetch(dev(1), cursor, 7, NOW).await.unwrap();
                if batch.is_empty() {
                    tokio::task::yield_now().await;
                    continue;
                }
                for e in &batch {
                    assert!(e.seq > cursor);
                    cursor = e.seq;
                    seen.push((e.envelope.msg_id.0[1], e.envelope.msg_id.0[0]));
                }
                s.ack(dev(1), batch.iter().map(|e| e.seq).collect())
                    .await
                    .unwrap();
            }
            seen
        })
    };
    for t in senders {
        t.await.unwrap();
    }
    let seen = tokio::time::timeout(std::time::Duration::from_secs(60), reader)
        .await
        .expect("the reader saw every message (none skipped by its cursor)")
        .unwrap();
    for n in 2..=5u8 {
        let from: Vec<u8> = seen
            .iter()
            .filter(|(s, _)| *s == n)
            .map(|(_, i)| *i)
            .collect();
        assert_eq!(
            from,
            (0..PER_SENDER).collect::<Vec<_>>(),
            "sender {n} in order, once"
        );
    }
    assert!(s.fetch(dev(1), 0, 10, NOW).await.unwrap().is_empty());
    // dev(1) acked everything; the others each hold 3 * PER_SENDER.
    assert_eq!(
        s.stats().await.unwrap().pending_deliveries,
        4 * 3 * u64::from(PER_SENDER)
    );
}

/// Many sends at the same moment, some refused (a non-member, a full
/// mailbox) and some repeated: each gets its own answer, a refusal stores
/// nothing and undoes no other send, a repeated id is stored once. (The
/// SQLite store writes concurrent sends in one transaction: this is what
/// its per-send savepoints must keep.)
pub async fn concurrent_sends_get_their_own_answers<S: Store>(s: S) {
    let s = std::sync::Arc::new(s);
    let open = GroupId([11; 32]);
    let full = GroupId([12; 32]);
    s.commit(create(open, dev(1), vec![dev(1), dev(2), dev(3)]))
        .await
        .unwrap();
    s.commit(create(full, dev(1), vec![dev(1), dev(4)]))
        .await
        .unwrap();
    // dev(4)'s mailbox holds one message at most.
    s.send(out(full, dev(1), 200, EnvelopeKind::Application), cap(1))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for round in 0..10u8 {
        for (kind, group, sender, id) in [
            ("ok", open, dev(2), round),
            ("ok", open, dev(3), 100 + round),
            ("not member", open, dev(9), 50 + round),
            ("full", full, dev(1), 150 + round),
            // Both copies of one id from dev(2): one is new, one a duplicate.
            ("twice", open, dev(2), 30 + round),
            ("twice", open, dev(2), 30 + round),
        ] {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let limit = if group == full { 1 } else { 10_000 };
                let r = s
                    .send(
                        out(group, sender, id, EnvelopeKind::Application),
                        cap(limit),
                    )
                    .await;
                (kind, id, r)
            }));
        }
    }
    let mut twice: std::collections::HashMap<u8, Vec<bool>> = Default::default();
    for t in tasks {
        let (kind, id, r) = t.await.unwrap();
        match (kind, r) {
            ("ok", Ok(o)) => assert!(!o.duplicate && o.recipients().len() == 2, "{id}: {o:?}"),
            ("not member", Err(SendError::NotMember)) => {}
            ("full", Err(SendError::MailboxFull)) => {}
            ("twice", Ok(o)) => twice.entry(id).or_default().push(o.duplicate),
            (kind, r) => panic!("{kind} {id}: unexpected {r:?}"),
        }
    }
    for (id, mut d) in twice {
        d.sort();
        assert_eq!(d, [false, true], "id {id}: one stored, one duplicate");
    }
    // dev(1) holds every accepted send once: 10 + 10 from dev(2) and 10
    // from dev(3); nothing of the refused ones.
    let got = s.fetch(dev(1), 0, 1000, NOW).await.unwrap();
    let mut ids: Vec<u8> = got.iter().map(|e| e.envelope.msg_id.0[0]).collect();
    ids.sort_unstable();
    let mut want: Vec<u8> = (0..10).chain(30..40).chain(100..110).collect();
    want.sort_unstable();
    assert_eq!(ids, want);
    let held = s.fetch(dev(4), 0, 10, NOW).await.unwrap();
    assert_eq!(held.len(), 1);
    // A refused send left no trace: once there is room, its retry is new.
    s.ack(dev(4), vec![held[0].seq]).await.unwrap();
    let retry = s
        .send(out(full, dev(1), 150, EnvelopeKind::Application), cap(1))
        .await
        .unwrap();
    assert!(!retry.duplicate, "the refused send was remembered as sent");
}

/// Application messages only in the group's current epoch: one of an
/// epoch a commit ended is refused (and names the epoch now), a resend of
/// one stored in its epoch is still a duplicate, and while sends race a
/// commit every send the store took is ahead of the commit in every other
/// member's mailbox (so each member reads it before it leaves the epoch).
pub async fn sends_only_in_the_current_epoch<S: Store>(s: S) {
    let s = std::sync::Arc::new(s);
    let g = GroupId([12; 32]);
    s.commit(create(g, dev(1), vec![dev(1), dev(2), dev(3)]))
        .await
        .unwrap();
    assert!(
        !s.send(app(g, dev(1), 1, 1), cap(1000))
            .await
            .unwrap()
            .duplicate
    );
    let mut next = create(g, dev(2), vec![dev(1), dev(2), dev(3)]);
    next.epoch = 1;
    next.msg_id = MessageId([0xe1; 16]);
    next.commit = Some(out(g, dev(2), 0xe1, EnvelopeKind::Commit));
    assert_eq!(s.commit(next).await.unwrap().epoch, 2);
    assert!(matches!(
        s.send(app(g, dev(1), 2, 1), cap(1000)).await,
        Err(SendError::StaleEpoch(2))
    ));
    assert!(matches!(
        s.send(app(g, dev(1), 2, 3), cap(1000)).await,
        Err(SendError::StaleEpoch(2))
    ));
    assert!(
        s.send(app(g, dev(1), 1, 1), cap(1000))
            .await
            .unwrap()
            .duplicate
    );
    assert!(
        !s.send(app(g, dev(1), 3, 2), cap(1000))
            .await
            .unwrap()
            .duplicate
    );
    let m = s.fetch(dev(3), 0, 10, NOW).await.unwrap();
    let ids: Vec<u8> = m.iter().map(|e| e.envelope.msg_id.0[0]).collect();
    assert_eq!(ids, vec![1, 0xe1, 3], "refused sends stored nothing");

    // Sends at epoch 2 race the commit that ends it.
    let sender = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut taken = Vec::new();
            for i in 10..90u8 {
                match s.send(app(g, dev(1), i, 2), cap(1000)).await {
                    Ok(o) => {
                        assert!(!o.duplicate);
                        taken.push(i);
                    }
                    Err(SendError::StaleEpoch(3)) => {}
                    Err(e) => panic!("send {i}: {e}"),
                }
            }
            taken
        })
    };
    tokio::task::yield_now().await;
    let mut third = create(g, dev(2), vec![dev(1), dev(2), dev(3)]);
    third.epoch = 2;
    third.msg_id = MessageId([0xe2; 16]);
    third.commit = Some(out(g, dev(2), 0xe2, EnvelopeKind::Commit));
    assert_eq!(s.commit(third).await.unwrap().epoch, 3);
    let taken = sender.await.unwrap();
    let m = s.fetch(dev(3), 0, 1000, NOW).await.unwrap();
    let ids: Vec<u8> = m.iter().map(|e| e.envelope.msg_id.0[0]).collect();
    let commit_at = ids.iter().position(|i| *i == 0xe2).unwrap();
    let before: Vec<u8> = ids[..commit_at]
        .iter()
        .copied()
        .filter(|i| (10..90).contains(i))
        .collect();
    assert_eq!(
        before, taken,
        "every send taken is ahead of the commit, in order"
    );
    assert!(ids[commit_at..].iter().all(|i| !(10..90).contains(i)));
}

/// Wrong kill-code guesses count per key inside a window, several keys in
/// one call; a new window starts after the old one ended; purging drops
/// ended windows only.
pub async fn kill_guesses_count_per_key_and_window<S: Store>(s: S) {
    let (a, b) = ([1u8; 32], [2u8; 32]);
    const WINDOW: u64 = 900_000;
    assert_eq!(s.kill_guesses(a, NOW).await.unwrap().failures, 0);
    s.kill_guess_failed(vec![a, b], NOW, WINDOW).await.unwrap();
    s.kill_guess_failed(vec![a], NOW + 10, WINDOW)
        .await
        .unwrap();
    let g = s.kill_guesses(a, NOW + 20).await.unwrap();
    assert_eq!((g.failures, g.until_ms), (2, NOW + WINDOW));
    assert_eq!(s.kill_guesses(b, NOW + 20).await.unwrap().failures, 1);
    // The window ends: nothing counts, and the next failure starts anew.
    assert_eq!(s.kill_guesses(a, NOW + WINDOW).await.unwrap().failures, 0);
    s.kill_guess_failed(vec![a], NOW + WINDOW + 5, WINDOW)
        .await
        .unwrap();
    let g = s.kill_guesses(a, NOW + WINDOW + 6).await.unwrap();
    assert_eq!((g.failures, g.until_ms), (1, NOW + 2 * WINDOW + 5));
    s.purge_expired(NOW + WINDOW + 6).await.unwrap();
    assert_eq!(
        s.kill_guesses(a, NOW + WINDOW + 6).await.unwrap().failures,
        1
    );
    assert_eq!(s.kill_guesses(b, NOW).await.unwrap().failures, 0, "purged");
    // Concurrent failures are all counted.
    let s = std::sync::Arc::new(s);
    let c = [3u8; 32];
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.kill_guess_failed(vec![c, a], NOW, WINDOW).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s.kill_guesses(c, NOW + 1).await.unwrap().failures, 20);
}

/// Blocks are per (blocker, blocked) and idempotent; a device that left a
/// group alone gets none of its sends, stays unrouted after a commit whose
/// tree still has it, and is routed again once a commit adds it anew.
pub async fn blocks_and_leaving_alone<S: Store>(s: S) {
    for n in 1..=3 {
        s.register(account(n)).await.unwrap();
    }
    let user = |n: u8| Handle::new(&format!("user{n}")).unwrap();
    assert!(!s.blocked_by(user(1), AccountId([2; 32])).await.unwrap());
    s.set_block(AccountId([1; 32]), AccountId([2; 32]), true)
        .await
        .unwrap();
    s.set_block(AccountId([1; 32]), AccountId([2; 32]), true)
        .await
        .unwrap();
    assert!(s.blocked_by(user(1), AccountId([2; 32])).await.unwrap());
    assert!(!s.blocked_by(user(1), AccountId([3; 32])).await.unwrap());
    assert!(!s.blocked_by(user(2), AccountId([1; 32])).await.unwrap());
    assert!(!s.blocked_by(user(9), AccountId([2; 32])).await.unwrap());
    s.set_block(AccountId([1; 32]), AccountId([2; 32]), false)
        .await
        .unwrap();
    assert!(!s.blocked_by(user(1), AccountId([2; 32])).await.unwrap());

    let g = GroupId([21; 32]);
    s.commit(create(g, dev(1), vec![dev(1), dev(2), dev(3)]))
        .await
        .unwrap();
    s.leave_group(g, dev(2)).await.unwrap();
    s.leave_group(GroupId([22; 32]), dev(2)).await.unwrap(); // no such group
    let sent = s
        .send(out(g, dev(1), 1, EnvelopeKind::Application), cap(1000))
        .await
        .unwrap();
    assert_eq!(sent.recipients(), vec![dev(3)]);
    // A commit whose tree still has the device: still not routed.
    let mut next = create(g, dev(3), vec![dev(1), dev(2), dev(3)]);
    next.epoch = 1;
    next.commit = Some(out(g, dev(3), 2, EnvelopeKind::Commit));
    let o = s.commit(next).await.unwrap();
    assert_eq!(o.recipients(), vec![dev(1)]);
    let sent = s
        .send(out(g, dev(1), 3, EnvelopeKind::Application), cap(1000))
        .await
        .unwrap();
    assert_eq!(sent.recipients(), vec![dev(3)]);
    assert!(matches!(
        s.send(out(g, dev(2), 4, EnvelopeKind::Application), cap(1000))
            .await,
        Err(SendError::NotMember)
    ));
    // Added again (a Welcome for it): routed again.
    let mut again = create(g, dev(1), vec![dev(1), dev(2), dev(3)]);
    again.epoch = 2;
    again.welcome = Some(out(g, dev(1), 5, EnvelopeKind::Welcome));
    again.welcome_recipients = vec![dev(2)];
    s.commit(again).await.unwrap();
    let mut sent = s
        .send(out(g, dev(1), 6, EnvelopeKind::Application), cap(1000))
        .await
        .unwrap()
        .recipients();
    sent.sort();
    assert_eq!(sent, vec![dev(2), dev(3)]);
}

/// Every write that fills mailboxes says which entries it made, and each
/// is what a read gives back: the sequence number, the envelope as
/// `Outgoing::envelope` makes it, and an `after` no undelivered earlier
/// entry of the mailbox lies past. Connections deliver from these without
/// reading (`crate::watch`), so a wrong one loses or reorders mail.
pub async fn posted_entries_are_what_fetch_reads<S: Store>(s: S) {
    for n in 1..=4 {
        s.register(account(n)).await.unwrap();
    }
    let g = GroupId([8; 32]);
    // Checks each entry against the mailbox as it is now.
    async fn check<S: Store>(s: &S, m: &Outgoing, posted: &[Posted], what: &str) {
        for p in posted {
            let got = s.fetch(p.device, p.seq - 1, 1, NOW).await.unwrap();
            assert_eq!(got.len(), 1, "{what}: {p:?}");
            assert_eq!(got[0].seq, p.seq, "{what}");
            assert_eq!(got[0].envelope, m.envelope(), "{what}");
            assert!(p.after < p.seq, "{what}: {p:?}");
            let all = s.fetch(p.device, 0, 1000, NOW).await.unwrap();
            assert!(
                all.iter()
                    .filter(|e| e.seq < p.seq)
                    .all(|e| e.seq <= p.after),
                "{what}: {p:?} skips an entry of {all:?}"
            );
        }
    }
    let mut first = create(g, dev(1), vec![dev(1), dev(2), dev(3)]);
    let welcome = out(g, dev(1), 1, EnvelopeKind::Welcome);
    first.welcome = Some(welcome.clone());
    first.welcome_recipients = vec![dev(2), dev(3)];
    let o = s.commit(first).await.unwrap();
    assert!(o.commit.is_empty());
    assert_eq!(
        o.welcome.iter().map(|p| p.device).collect::<Vec<_>>(),
        vec![dev(2), dev(3)]
    );
    check(&s, &welcome, &o.welcome, "welcome").await;
    let mut last = std::collections::HashMap::new();
    for i in 2..=6 {
        let m = out(g, dev(1 + i % 2), i, EnvelopeKind::Application);
        let o = s.send(m.clone(), cap(100)).await.unwrap();
        assert_eq!(o.posted.len(), 2, "every member but the sender");
        check(&s, &m, &o.posted, "send").await;
        for p in &o.posted {
            let before = last.insert(p.device, p.seq).unwrap_or(0);
            assert!(p.seq > before, "a later send, a later entry: {p:?}");
        }
        // A duplicate makes no entry.
        let again = s.send(m, cap(100)).await.unwrap();
        assert!(again.duplicate && again.posted.is_empty());
    }
    // Acknowledged entries leave the mailbox; the next entry still skips
    // nothing that is there.
    let waiting = s.fetch(dev(3), 0, 100, NOW).await.unwrap();
    s.ack(dev(3), waiting[..3].iter().map(|e| e.seq).collect())
        .await
        .unwrap();
    let m = out(g, dev(1), 7, EnvelopeKind::Application);
    let o = s.send(m.clone(), cap(100)).await.unwrap();
    check(&s, &m, &o.posted, "after acks").await;
    s.ack(
        dev(3),
        s.fetch(dev(3), 0, 100, NOW)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect(),
    )
    .await
    .unwrap();
    let m = out(g, dev(2), 8, EnvelopeKind::Application);
    let o = s.send(m.clone(), cap(100)).await.unwrap();
    check(&s, &m, &o.posted, "into an empty mailbox").await;
    // A commit with a Welcome: each message's own entries.
    let mut next = create(g, dev(1), vec![dev(1), dev(2), dev(3), dev(4)]);
    next.epoch = 1;
    let (commit, welcome) = (
        out(g, dev(1), 9, EnvelopeKind::Commit),
        out(g, dev(1), 10, EnvelopeKind::Welcome),
    );
    next.commit = Some(commit.clone());
    next.welcome = Some(welcome.clone());
    next.welcome_recipients = vec![dev(4)];
    let o = s.commit(next).await.unwrap();
    assert_eq!(o.commit.len(), 2);
    assert_eq!(o.welcome.len(), 1);
    check(&s, &commit, &o.commit, "commit").await;
    check(&s, &welcome, &o.welcome, "welcome to a new member").await;
    let mut to: Vec<DeviceId> = o.commit.iter().map(|p| p.device).collect();
    to.sort();
    assert_eq!(
        to,
        vec![dev(2), dev(3)],
        "the members before, but the sender"
    );
    assert_eq!(o.welcome[0].device, dev(4));
    // A message to a device, and a proposal.
    let m = out(GroupId([0; 32]), dev(1), 11, EnvelopeKind::Device);
    let o = s.send_to_device(m.clone(), dev(1), cap(100)).await.unwrap();
    assert_eq!(o.recipients(), vec![dev(1)]);
    check(&s, &m, &o.posted, "device message").await;
    let m = out(g, dev(4), 12, EnvelopeKind::Proposal);
    let o = s
        .propose(ProposalWrite {
            message: m.clone(),
            epoch: 2,
            mailbox_cap: cap(100),
        })
        .await
        .unwrap();
    assert_eq!(o.posted.len(), 3);
    check(&s, &m, &o.posted, "proposal").await;
}

/// A kill-code record of account `n` (the store does not check it; the
/// server does): `tag` stands for its salts and check values.
fn kill(n: u8, version: u64, devices: &[DeviceId], tag: u8) -> SignedKillRecord {
    SignedKillRecord {
        account: AccountId([n; 32]),
        version,
        server_salt: [tag; 16],
        server_check: [tag; 32],
        devices: devices
            .iter()
            .map(|d| DeviceKill {
                device: *d,
                salt: [tag; 16],
                check: [tag ^ 0xff; 32],
            })
            .collect(),
        signature: Signature([tag; 64]),
    }
}

/// Kill-code records: one per account, replaced only by a higher version
/// (an equal or older one is refused and changes nothing), read back
/// whole.
pub async fn kill_records_are_versioned<S: Store>(s: S) {
    s.register(account(1)).await.unwrap();
    s.register(account(2)).await.unwrap();
    let (a, b) = (AccountId([1; 32]), AccountId([2; 32]));
    assert_eq!(s.kill_record(a).await.unwrap(), None);
    let v2 = kill(1, 2, &[dev(1)], 0x21);
    assert!(s.set_kill_record(v2.clone()).await.unwrap());
    assert_eq!(s.kill_record(a).await.unwrap(), Some(v2.clone()));
    assert_eq!(s.kill_record(b).await.unwrap(), None, "per account");
    // Older and equal versions are refused, whatever they hold.
    assert!(!s.set_kill_record(kill(1, 1, &[], 0x11)).await.unwrap());
    assert!(!s.set_kill_record(kill(1, 2, &[], 0x22)).await.unwrap());
    assert_eq!(s.kill_record(a).await.unwrap(), Some(v2));
    // A newer one replaces it whole.
    let second = DeviceId([0x11; 32]);
    let v7 = kill(1, 7, &[dev(1), second], 0x71);
    assert!(s.set_kill_record(v7.clone()).await.unwrap());
    assert_eq!(s.kill_record(a).await.unwrap(), Some(v7.clone()));
    // Another account's record is its own.
    let other = kill(2, 1, &[dev(2)], 0x12);
    assert!(s.set_kill_record(other.clone()).await.unwrap());
    assert_eq!(s.kill_record(b).await.unwrap(), Some(other));
    assert_eq!(s.kill_record(a).await.unwrap(), Some(v7));
}

/// A wipe target names the handle's account, its kill-code record and
/// exactly its live devices: not revoked ones, not forgotten ones, not
/// another account's; an unknown handle has none.
pub async fn wipe_targets_name_live_devices<S: Store>(s: S) {
    s.register(account(1)).await.unwrap();
    s.register(account(2)).await.unwrap();
    let user = |n: u8| Handle::new(&format!("user{n}")).unwrap();
    assert!(s.wipe_target(user(9)).await.unwrap().is_none());
    let t = s.wipe_target(user(1)).await.unwrap().unwrap();
    assert_eq!(t.account, AccountId([1; 32]));
    assert_eq!((t.record, t.devices), (None, vec![dev(1)]));
    let (second, third) = (DeviceId([0x11; 32]), DeviceId([0x12; 32]));
    s.publish_device_list(list(1, 2, &[dev(1), second, third]), NOW)
        .await
        .unwrap();
    let record = kill(1, 1, &[dev(1), second, third], 0x31);
    s.set_kill_record(record.clone()).await.unwrap();
    let sorted = |mut v: Vec<DeviceId>| {
        v.sort();
        v
    };
    let t = s.wipe_target(user(1)).await.unwrap().unwrap();
    assert_eq!(t.account, AccountId([1; 32]));
    assert_eq!(t.record, Some(record.clone()));
    assert_eq!(sorted(t.devices), sorted(vec![dev(1), second, third]));
    // Revoked by the account, by the operator, forgotten after a wipe:
    // none of them is a target any more.
    s.publish_device_list(list(1, 3, &[dev(1), third]), NOW)
        .await
        .unwrap();
    assert_eq!(
        sorted(s.wipe_target(user(1)).await.unwrap().unwrap().devices),
        sorted(vec![dev(1), third])
    );
    assert!(s.revoke_device(third).await.unwrap());
    s.forget_device(dev(1)).await.unwrap();
    let t = s.wipe_target(user(1)).await.unwrap().unwrap();
    assert_eq!((t.record, t.devices), (Some(record), vec![]));
    // The other account is untouched.
    let t = s.wipe_target(user(2)).await.unwrap().unwrap();
    assert_eq!(
        (t.account, t.record, t.devices),
        (AccountId([2; 32]), None, vec![dev(2)])
    );
}

/// A device that wiped itself is forgotten in one step: its record, its
/// whole mailbox, its KeyPackages and its group memberships; the other
/// devices keep their mail (also of the messages they shared with it) and
/// their KeyPackages. Forgetting again, or an unknown device, is no error.
pub async fn forget_device_drops_its_data<S: Store>(s: S) {
    for n in 1..=3 {
        s.register(account(n)).await.unwrap();
    }
    // KeyPackage `i` of device `d`.
    let kp_of = |d: DeviceId, i: u8| {
        let mut hash = [i; 32];
        hash[0] = d.0[0];
        StoredKeyPackage {
            hash,
            data: vec![i; 8],
        }
    };
    for d in [dev(2), dev(3)] {
        s.upload_key_packages(d, vec![kp_of(d, 1), kp_of(d, 2)], Some(kp_of(d, 3)), 10)
            .await
            .unwrap();
    }
    let g = GroupId([30; 32]);
    s.commit(create(g, dev(1), vec![dev(1), dev(2), dev(3)]))
        .await
        .unwrap();
    for id in 1..=2 {
        s.send(out(g, dev(1), id, EnvelopeKind::Application), cap(100))
            .await
            .unwrap();
    }
    s.send_to_device(out(g, dev(3), 3, EnvelopeKind::Device), dev(2), cap(100))
        .await
        .unwrap();
    assert_eq!(s.fetch(dev(2), 0, 10, NOW).await.unwrap().len(), 3);
    let st = s.stats().await.unwrap();
    assert_eq!(
        (st.live_devices, st.pending_deliveries, st.key_packages),
        (3, 5, 4)
    );

    s.forget_device(dev(2)).await.unwrap();
    assert_eq!(s.device(dev(2)).await.unwrap(), None);
    assert!(s.fetch(dev(2), 0, 10, NOW).await.unwrap().is_empty());
    assert!(s.mailbox_heads(vec![dev(2)]).await.unwrap().is_empty());
    let none = s.key_package_stock(dev(2)).await.unwrap();
    assert_eq!((none.one_time, none.last_resort), (0, false));
    assert!(s.claim_device_key_package(dev(2)).await.unwrap().is_none());
    let (acc, claimed) = s
        .claim_key_packages(Handle::new("user2").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (acc, claimed.len()),
        (AccountId([2; 32]), 0),
        "no device left"
    );
    let st = s.stats().await.unwrap();
    assert_eq!(
        (
            st.accounts,
            st.live_devices,
            st.pending_deliveries,
            st.key_packages
        ),
        (3, 2, 2, 2)
    );
    // dev(3) keeps the messages it shared with dev(2), and its KeyPackages.
    let kept = s.fetch(dev(3), 0, 10, NOW).await.unwrap();
    let ids: Vec<u8> = kept.iter().map(|e| e.envelope.msg_id.0[0]).collect();
    assert_eq!(ids, vec![1, 2]);
    assert_eq!(kept[0].envelope.payload.0, vec![1; 10]);
    let kps = s.key_package_stock(dev(3)).await.unwrap();
    assert_eq!((kps.one_time, kps.last_resort), (2, true));
    // No longer a member: the group's sends go past it, and it cannot send.
    let sent = s
        .send(out(g, dev(1), 4, EnvelopeKind::Application), cap(100))
        .await
        .unwrap();
    assert_eq!(sent.recipients(), vec![dev(3)]);
    assert!(matches!(
        s.send(out(g, dev(2), 5, EnvelopeKind::Application), cap(100))
            .await,
        Err(SendError::NotMember)
    ));
    // Idempotent, and nothing for a device the store does not know.
    s.forget_device(dev(2)).await.unwrap();
    s.forget_device(DeviceId([0x55; 32])).await.unwrap();
    assert_eq!(s.stats().await.unwrap().live_devices, 2);
}

/// Generates one test per conformance check for a backend, given an async
/// expression that makes `(guard, store)`: a fresh store and whatever must
/// live as long as it (a temp directory, a database).
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::store_conformance_tests!(@each $make;
            invites_are_single_use,
            group_state_and_proposals,
            key_packages_are_claimed_once,
            commits_compare_and_set,
            sends_fan_out_once,
            mailbox_byte_cap,
            fetch_ack_and_expiry,
            fetch_many_reads_like_fetch,
            posted_entries_are_what_fetch_reads,
            mailbox_heads_follow_sends,
            device_lists_add_and_revoke,
            device_messages_are_stored_once,
            blobs_are_tracked,
            stats_and_operator_revoke,
            concurrent_commits_one_wins,
            concurrent_sends_keep_mailbox_order,
            concurrent_acks_release_the_message,
            concurrent_sends_get_their_own_answers,
            kill_guesses_count_per_key_and_window,
            blocks_and_leaving_alone,
            sends_only_in_the_current_epoch,
            kill_records_are_versioned,
            wipe_targets_name_live_devices,
            forget_device_drops_its_data,
        );
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let (_guard, store) = $make.await;
                $crate::store::conformance::$name(store).await;
            }
        )*
    };
}
