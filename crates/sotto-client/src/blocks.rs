//! Defence against strangers: blocking an account and leaving a
//! conversation alone.
//!
//! A blocked account is kept on this device (`blocked`: its messages are
//! dropped unread, its invitations refused and the conversation they open
//! left at once) and on the server (its devices can no longer claim this
//! account's KeyPackages). Leaving alone proposes this device's removal,
//! asks the server to stop routing the conversation here, and marks the
//! conversation removed at once, without waiting for another member to
//! commit the removal (`left_groups` then drops whatever still comes).

use rusqlite::{Connection, OptionalExtension, params};
use sotto_proto::{AccountId, GroupId, Handle, Request, Response};

use crate::ClientError;
use crate::conversation::Target;
use crate::profile::Profile;
use crate::store::rows;
use crate::transport::Connection as ServerConnection;
use crate::transport::unexpected;

/// Whether this profile blocked `account`.
pub(crate) fn is_blocked(c: &Connection, account: &AccountId) -> Result<bool, ClientError> {
    Ok(c.query_row(
        "SELECT EXISTS (SELECT 1 FROM blocked WHERE account = ?1)",
        [&account.0[..]],
        |r| r.get(0),
    )?)
}

/// Whether this device left `g` alone (or refused its invitation).
pub(crate) fn is_left(c: &Connection, g: &GroupId) -> Result<bool, ClientError> {
    Ok(c.query_row(
        "SELECT 1 FROM left_groups WHERE group_id = ?1",
        [&g.0[..]],
        |r| r.get::<_, i64>(0),
    )
    .optional()?
    .is_some())
}

/// Remembers that this device is out of `g` for good (until a Welcome).
pub(crate) fn mark_left(c: &Connection, g: &GroupId) -> Result<(), ClientError> {
    c.execute(
        "INSERT OR IGNORE INTO left_groups (group_id) VALUES (?1)",
        [&g.0[..]],
    )?;
    Ok(())
}

/// A Welcome took this device back into `g`.
pub(crate) fn unmark_left(c: &Connection, g: &GroupId) -> Result<(), ClientError> {
    c.execute("DELETE FROM left_groups WHERE group_id = ?1", [&g.0[..]])?;
    Ok(())
}

impl Profile {
    /// Blocks `handle` (a known contact): its messages are dropped unread,
    /// its invitations refused, and the server refuses its claims of this
    /// account's KeyPackages.
    /// (`h` and `account` from [`Profile::known_contact`].)
    pub(crate) async fn block(
        &mut self,
        conn: &mut ServerConnection,
        h: &Handle,
        account: AccountId,
    ) -> Result<(), ClientError> {
        match conn.request(Request::Block { account }).await? {
            Response::Acked => {}
            other => return Err(unexpected(&other)),
        }
        self.store.transaction(|_, c| {
            c.execute(
                "INSERT INTO blocked (account, handle) VALUES (?1, ?2) \
                 ON CONFLICT(account) DO UPDATE SET handle = excluded.handle",
                params![&account.0[..], h.as_str()],
            )?;
            Ok(())
        })?;
        Ok(())
    }

    /// The account of a blocked handle.
    pub(crate) fn blocked_account(&mut self, handle: &str) -> Result<AccountId, ClientError> {
        let h = Handle::new(handle.strip_prefix('@').unwrap_or(handle))
            .map_err(|e| ClientError::Invalid(format!("{handle}: {e}")))?;
        self.store
            .transaction(|_, c| {
                Ok(c.query_row(
                    "SELECT account FROM blocked WHERE handle = ?1",
                    [h.as_str()],
                    |r| r.get::<_, Vec<u8>>(0),
                )
                .optional()?)
            })?
            .and_then(|a| <[u8; 32]>::try_from(a).ok())
            .map(AccountId)
            .ok_or_else(|| ClientError::NotFound(format!("{h} is not blocked")))
    }

    /// Undoes [`Profile::block`].
    pub(crate) async fn unblock(
        &mut self,
        conn: &mut ServerConnection,
        account: AccountId,
    ) -> Result<(), ClientError> {
        match conn.request(Request::Unblock { account }).await? {
            Response::Acked => {}
            other => return Err(unexpected(&other)),
        }
        self.store.transaction(|_, c| {
            c.execute("DELETE FROM blocked WHERE account = ?1", [&account.0[..]])?;
            Ok(())
        })?;
        Ok(())
    }

    /// The handles this profile blocked, sorted.
    pub(crate) fn blocked(&mut self) -> Result<Vec<Handle>, ClientError> {
        self.store.transaction(|_, c| {
            let mut stmt = c.prepare("SELECT handle FROM blocked ORDER BY handle")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for r in rows {
                if let Ok(h) = Handle::new(&r?) {
                    out.push(h);
                }
            }
            Ok(out)
        })
    }

    /// A known contact by handle (not this account), for blocking.
    pub(crate) fn known_contact(&self, handle: &str) -> Result<(Handle, AccountId), ClientError> {
        let h = Handle::new(handle.strip_prefix('@').unwrap_or(handle))
            .map_err(|e| ClientError::Invalid(format!("{handle}: {e}")))?;
        let account = self.store.contact(&h)?.ok_or_else(|| {
            ClientError::NotFound(format!("{h} is not a contact of this profile"))
        })?;
        if account == self.id.account.id() {
            return Err(ClientError::Invalid("cannot block yourself".into()));
        }
        Ok((h, account))
    }

    /// Leaves a conversation (a group, or the one-to-one conversation with
    /// a handle) alone: proposes this device's removal for whichever
    /// member commits next, tells the server to stop routing it here, and
    /// forgets its state now. The history stays.
    pub(crate) async fn leave_alone(
        &mut self,
        conn: &mut ServerConnection,
        target: &str,
    ) -> Result<GroupId, ClientError> {
        let g = match self.resolve(target)? {
            Target::Group(g) => g,
            Target::Handle(peer) => {
                let me = self.id.account.id();
                let Some(acc) = self.store.contact(&peer)? else {
                    return Err(ClientError::NotFound(format!(
                        "no conversation with {peer} to leave"
                    )));
                };
                GroupId::direct(&me, &acc)
            }
        };
        if !self.has_group(g)? {
            return Err(ClientError::NotMember(
                "you are no longer a member of this conversation".into(),
            ));
        }
        // Best effort: the removal is for the others' trees; leaving here
        // does not depend on anyone committing it.
        if !self.out_of_sync(g)? {
            let _ = self.propose_leave(conn, g).await;
        }
        match conn.request(Request::Leave { group: g }).await? {
            Response::Acked => {}
            other => return Err(unexpected(&other)),
        }
        // Shown like a removal; what still comes is dropped unread.
        self.store.transaction(|_, c| {
            mark_left(c, &g)?;
            rows::set_state(c, &g, crate::conversation::ConversationState::Removed)
        })?;
        Ok(g)
    }

    /// Refuses an invitation into `g` that an account this profile blocked
    /// sent: the server stops routing the conversation here.
    pub(crate) async fn refuse_conversation(
        &mut self,
        conn: &mut ServerConnection,
        g: GroupId,
    ) -> Result<(), ClientError> {
        match conn.request(Request::Leave { group: g }).await? {
            Response::Acked => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}
