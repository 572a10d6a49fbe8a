//! Delivery and read receipts (MIMI's message status reports).
//!
//! - "Delivered" means a device of the recipient decrypted the message;
//!   "read", that one showed it to its user. Both are kept per member
//!   account, the highest status counting; "accepted by the server" is
//!   what a message without receipts shows.
//! - Batching: a device owes a receipt for every message it stores from
//!   another account (`receipts_out`), and sends what it owes as one
//!   message per conversation per batch (a drain of the mailbox, a push),
//!   up to [`MAX_RECEIPTS`] statuses each. A read receipt replaces the
//!   delivery receipt it implies.
//! - Only conversations of at most [`RECEIPT_MEMBERS`] member accounts get
//!   receipts. In a larger group a message shows "accepted by the server"
//!   and costs no receipts at all: a group of 1,000 would otherwise send
//!   999 receipts (each to 999 devices) for every batch a message starts.
//! - Read receipts can be turned off for the profile and, either way, per
//!   conversation. Delivery receipts are always sent where receipts are.
//! - Receipts are recorded only for this account's own messages, from
//!   other accounts; a receipt never asks for a receipt.

use rusqlite::{Connection, OptionalExtension, params};
use sotto_core::message::{MAX_RECEIPTS, status};
use sotto_core::{Body, mls};
use sotto_proto::{AccountId, GroupId, MessageId};

use crate::ClientError;
use crate::conversation::ConversationState;
use crate::profile::Profile;
use crate::transport::Connection as Conn;

/// The largest conversation, in member accounts, that gets receipts.
pub(crate) const RECEIPT_MEMBERS: usize = 32;

/// The profile setting's key in the `profile` table.
const READ_RECEIPTS: &str = "read_receipts";

/// Records the statuses the member `from` reported at `at_ms` for this
/// account's messages of `g` (`from_us`: the member is this account);
/// returns the messages whose receipts changed.
pub(crate) fn record(
    c: &Connection,
    g: &GroupId,
    (from, from_us): (&AccountId, bool),
    at_ms: u64,
    statuses: &[(MessageId, u8)],
) -> Result<Vec<MessageId>, ClientError> {
    if from_us {
        // This account's own devices do not report to each other.
        return Ok(Vec::new());
    }
    let mut ours = c.prepare_cached(
        "SELECT 1 FROM messages WHERE id = ?1 AND group_id = ?2 AND outgoing = 1 AND deleted = 0",
    )?;
    let mut put = c.prepare_cached(
        "INSERT INTO receipts (msg_id, account, status, at_ms) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (msg_id, account) DO UPDATE SET status = excluded.status, at_ms = excluded.at_ms \
         WHERE excluded.status > receipts.status",
    )?;
    let at = i64::try_from(at_ms).unwrap_or(i64::MAX);
    let mut changed = Vec::new();
    for (id, st) in statuses {
        if !matches!(*st, status::DELIVERED | status::READ) || changed.contains(id) {
            continue;
        }
        if ours
            .query_row(params![&id.0[..], &g.0[..]], |_| Ok(()))
            .optional()?
            .is_none()
        {
            continue;
        }
        if put.execute(params![&id.0[..], &from.0[..], st, at])? > 0 {
            changed.push(*id);
        }
    }
    Ok(changed)
}

/// Owes a delivery receipt for a message just stored from another account.
pub(crate) fn owe_delivered(
    c: &Connection,
    g: &GroupId,
    id: &MessageId,
) -> Result<(), ClientError> {
    c.prepare_cached(
        "INSERT OR IGNORE INTO receipts_out (group_id, msg_id, status) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![&g.0[..], &id.0[..], status::DELIVERED])?;
    Ok(())
}

/// Whether read receipts are on for `g` (its own setting, else the
/// profile's; on unless turned off).
fn read_receipts_on(c: &Connection, g: &GroupId) -> Result<bool, ClientError> {
    let own: Option<Option<i64>> = c
        .query_row(
            "SELECT read_receipts FROM conversations WHERE group_id = ?1",
            [&g.0[..]],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(Some(v)) = own {
        return Ok(v != 0);
    }
    let profile: Option<Vec<u8>> = c
        .query_row("SELECT v FROM profile WHERE k = ?1", [READ_RECEIPTS], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(profile.as_deref() != Some(b"off"))
}

/// Marks the messages of `g` from other accounts read (they were shown to
/// the user), owing a read receipt for each where read receipts are on.
/// Returns how many were newly read.
pub(crate) fn mark_read(c: &Connection, g: &GroupId) -> Result<usize, ClientError> {
    let on = read_receipts_on(c, g)?;
    if on {
        c.execute(
            "INSERT OR REPLACE INTO receipts_out (group_id, msg_id, status) \
             SELECT group_id, id, ?2 FROM messages \
             WHERE group_id = ?1 AND outgoing = 0 AND read_sent = 0 AND deleted = 0",
            params![&g.0[..], status::READ],
        )?;
    }
    Ok(c.execute(
        "UPDATE messages SET read_sent = 1 WHERE group_id = ?1 AND outgoing = 0 AND read_sent = 0",
        [&g.0[..]],
    )?)
}

/// Sets read receipts for the profile (`None`) or one conversation
/// (`Some`: `on` `None` goes back to the profile's setting).
pub(crate) fn set_read_receipts(
    c: &Connection,
    g: Option<&GroupId>,
    on: Option<bool>,
) -> Result<(), ClientError> {
    match g {
        None => {
            let v: &[u8] = if on == Some(false) { b"off" } else { b"on" };
            c.execute(
                "INSERT OR REPLACE INTO profile (k, v) VALUES (?1, ?2)",
                params![READ_RECEIPTS, v],
            )?;
        }
        Some(g) => {
            c.execute(
                "UPDATE conversations SET read_receipts = ?2 WHERE group_id = ?1",
                params![&g.0[..], on.map(i64::from)],
            )?;
        }
    }
    Ok(())
}

impl Profile {
    /// Sends the receipts this device owes: one message per conversation
    /// (per [`MAX_RECEIPTS`] statuses). A conversation over
    /// [`RECEIPT_MEMBERS`] accounts, or no longer active, gets none: its
    /// debts are dropped. A receipt that cannot go now waits in the outbox
    /// like any message.
    pub(crate) async fn flush_receipts(&mut self, conn: &mut Conn) -> Result<(), ClientError> {
        let groups: Vec<GroupId> = {
            let mut st = self
                .store
                .conn()
                .prepare("SELECT DISTINCT group_id FROM receipts_out")?;
            let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
            let mut out = Vec::new();
            for g in rows {
                if let Ok(g) = <[u8; 32]>::try_from(g?) {
                    out.push(GroupId(g));
                }
            }
            out
        };
        for g in groups {
            let active =
                self.store.conversation(&g)?.map(|c| c.state) == Some(ConversationState::Active);
            let small = active
                && self.store.transaction(|p, _| {
                    let mut accounts: Vec<_> =
                        mls::members(p, g)?.into_iter().map(|m| m.account).collect();
                    accounts.sort_unstable_by_key(|a| a.0);
                    accounts.dedup();
                    Ok(accounts.len() <= RECEIPT_MEMBERS)
                })?;
            let owed: Vec<(MessageId, u8)> = {
                let mut st = self
                    .store
                    .conn()
                    .prepare("SELECT msg_id, status FROM receipts_out WHERE group_id = ?1")?;
                let rows =
                    st.query_map([&g.0[..]], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get(1)?)))?;
                let mut out = Vec::new();
                for row in rows {
                    let (id, st) = row?;
                    if let Ok(id) = <[u8; 16]>::try_from(id) {
                        out.push((MessageId(id), st));
                    }
                }
                out
            };
            if small {
                for chunk in owed.chunks(MAX_RECEIPTS) {
                    match self.send_body(conn, g, Body::Receipt(chunk.to_vec())).await {
                        Ok(_) => {}
                        // Owed still: sent with the next batch.
                        Err(e) if e.is_temporary() => return Ok(()),
                        // The conversation cannot take it (this device left
                        // it, lost its state): receipts are not worth
                        // keeping a debt for.
                        Err(_) => break,
                    }
                }
            }
            self.store.transaction(|_, c| {
                let mut del = c.prepare_cached(
                    "DELETE FROM receipts_out WHERE group_id = ?1 AND msg_id = ?2 AND status = ?3",
                )?;
                for (id, st) in &owed {
                    del.execute(params![&g.0[..], &id.0[..], st])?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::Applied;
    use crate::content::tests::{G, from as from_at, who};
    use crate::store::Store;

    /// Message `id`, received at time `id`.
    fn from(
        store: &mut Store,
        sender: &sotto_core::CredentialIdentity,
        id: u8,
        body: Body,
    ) -> Applied {
        from_at(store, sender, id, u64::from(id), body)
    }

    fn owed(store: &Store) -> Vec<(Vec<u8>, u8)> {
        let mut st = store
            .conn()
            .prepare("SELECT msg_id, status FROM receipts_out ORDER BY msg_id")
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// Receipts count for this account's messages only, from other
    /// accounts, each member once with the highest status it reported.
    #[test]
    fn receipts_count_members_once_and_only_for_this_accounts_messages() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_unencrypted(dir.path()).unwrap();
        let (me, my_other_device, bob, carol) = (
            who("myself", 1),
            who("myself", 1),
            who("bob", 3),
            who("carol", 4),
        );
        from(&mut store, &me, 1, Body::Text("mine".into()));
        from(&mut store, &bob, 2, Body::Text("bob's".into()));
        let receipt =
            |st: u8| Body::Receipt(vec![(MessageId([1; 16]), st), (MessageId([2; 16]), st)]);
        // Bob: delivered, then read, then delivered again (late): read.
        assert_eq!(
            from(&mut store, &bob, 10, receipt(status::DELIVERED)),
            Applied::Receipted(vec![MessageId([1; 16])])
        );
        from(&mut store, &bob, 11, receipt(status::READ));
        assert_eq!(
            from(&mut store, &bob, 12, receipt(status::DELIVERED)),
            Applied::Receipted(vec![])
        );
        from(&mut store, &carol, 13, receipt(status::DELIVERED));
        // This account's other device and unknown statuses count for nothing.
        from(&mut store, &my_other_device, 14, receipt(status::READ));
        from(
            &mut store,
            &carol,
            15,
            Body::Receipt(vec![(MessageId([1; 16]), 6)]),
        );
        let h = store.history(&G, 0).unwrap();
        assert_eq!((h[0].delivered_to, h[0].read_by), (2, 1));
        assert_eq!(
            (h[1].delivered_to, h[1].read_by),
            (0, 0),
            "not this account's message"
        );
        assert_eq!(store.receipt_counts(&MessageId([1; 16])).unwrap(), (2, 1));
    }

    /// A message from another account is owed a delivery receipt once
    /// stored (the receive path), and a read receipt once shown, unless
    /// read receipts are off for the profile or the conversation.
    #[test]
    fn read_receipts_follow_the_profile_and_the_conversation() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_unencrypted(dir.path()).unwrap();
        let bob = who("bob", 3);
        store
            .transaction(|_, c| {
                crate::store::rows::put_conversation(c, &G, true, "ops", 0)?;
                Ok(())
            })
            .unwrap();
        let mark = |store: &mut Store| store.transaction(|_, c| mark_read(c, &G)).unwrap();
        from(&mut store, &bob, 1, Body::Text("one".into()));
        store
            .transaction(|_, c| owe_delivered(c, &G, &MessageId([1; 16])))
            .unwrap();
        assert_eq!(owed(&store), [(vec![1; 16], status::DELIVERED)]);
        assert_eq!(mark(&mut store), 1);
        // The read receipt replaces the delivery receipt it implies.
        assert_eq!(owed(&store), [(vec![1; 16], status::READ)]);
        assert_eq!(mark(&mut store), 0, "read once");
        store
            .conn()
            .execute("DELETE FROM receipts_out", [])
            .unwrap();
        // Off for the profile: read, and nobody told.
        store
            .transaction(|_, c| set_read_receipts(c, None, Some(false)))
            .unwrap();
        from(&mut store, &bob, 2, Body::Text("two".into()));
        assert_eq!(mark(&mut store), 1);
        assert!(owed(&store).is_empty());
        // On for this conversation, whatever the profile says.
        store
            .transaction(|_, c| set_read_receipts(c, Some(&G), Some(true)))
            .unwrap();
        from(&mut store, &bob, 3, Body::Text("three".into()));
        assert_eq!(mark(&mut store), 1);
        assert_eq!(owed(&store), [(vec![3; 16], status::READ)]);
        // Back to the profile's setting: off.
        store
            .transaction(|_, c| set_read_receipts(c, Some(&G), None))
            .unwrap();
        from(&mut store, &bob, 4, Body::Text("four".into()));
        assert_eq!(mark(&mut store), 1);
        assert_eq!(owed(&store).len(), 1);
    }
}
