//! Recovery of a conversation whose state this device lost (its profile
//! restored from an older backup, a commit it could not apply): the device
//! notices deliveries it cannot read because its state is behind (or
//! missing), fetches the group's GroupInfo and ratchet tree from the server
//! (`GetGroupInfo`, devices of member accounts only) and rejoins by itself
//! with an external commit that replaces its own leaf. The message history
//! stays; what was sent while it was out of sync stays unreadable. A new
//! device restored from an encrypted backup (`crate::backup`) joins the
//! same way, with no leaf to replace: its commit adds its leaf beside its
//! account's member devices and carries its account's signed device list.
//!
//! Nothing is taken on the server's word: the GroupInfo is signed by the
//! member who made the epoch, the tree must match the hash in its signed
//! group context, every leaf must carry a valid Sotto credential, and the
//! server and every member accept an external commit only from a member
//! device replacing its own leaf, or from a new device of a member account
//! that its account's signed list names (`sotto_rules::judge`).

use sotto_core::group;
use sotto_core::mls;
use sotto_core::{CoreError, CredentialIdentity};
use sotto_proto::{Blob, CommitRequest, ErrorCode, GroupId, Request, Response};

use crate::ClientError;
use crate::conversation::Submitted;
use crate::conversation::{Notice, NoticeKind, Warning};
use crate::members::{conversation_name, record_members, self_name};
use crate::profile::Profile;
use crate::store::rows;
use crate::transport::Connection;
use crate::transport::{random_id, unexpected};

/// How long a device waits before it tries again to rejoin a conversation
/// after an attempt that did not go through.
pub const REJOIN_RETRY_MS: u64 = 60_000;

/// How many times a rejoin is built again when another commit won the epoch.
const REJOIN_ATTEMPTS: usize = 4;

/// Settles a rejoin the server applied, in its transaction: the
/// conversation is active again, and its user told what it missed.
pub(crate) fn rejoined(
    p: &crate::store::Provider<'_>,
    c: &rusqlite::Connection,
    me: &CredentialIdentity,
    g: GroupId,
    now_ms: u64,
    warnings: &mut Vec<Warning>,
    notices: &mut Vec<Notice>,
) -> Result<(), ClientError> {
    let members = mls::members(p, g)?;
    record_members(c, me, &members, warnings)?;
    let (is_group, name) = conversation_name(p, c, g, me, &members)?;
    rows::put_conversation(c, &g, is_group, &name, now_ms)?;
    rows::set_state(c, &g, crate::conversation::ConversationState::Active)?;
    let missed = rows::rejoin_done(c, &g)?;
    warnings.push(Warning::Rejoined {
        conversation: name.clone(),
        missed: missed.unwrap_or(0),
    });
    notices.push(Notice::new(
        g,
        name,
        NoticeKind::Rejoined {
            missed: missed.unwrap_or(0),
        },
    ));
    Ok(())
}

impl Profile {
    /// Rejoins every conversation this device found itself out of sync
    /// with (and did not try within [`REJOIN_RETRY_MS`]).
    pub(crate) async fn rejoin_lost(&mut self, conn: &mut Connection) -> Result<(), ClientError> {
        let now = self.now_ms();
        let due = self.store.transaction(|_, c| {
            rows::rejoins_to_ask(c, now.saturating_sub(REJOIN_RETRY_MS).max(1))
        })?;
        for g in due {
            match self.rejoin(conn, g).await {
                Ok(()) => {}
                // Busy or unavailable: tried again by a later command.
                Err(e) if e.is_temporary() => {
                    self.store
                        .transaction(|_, c| rows::rejoin_asked(c, &g, now))?;
                    break;
                }
                Err(ClientError::Server(e)) => {
                    self.store
                        .transaction(|_, c| rows::rejoin_asked(c, &g, now))?;
                    let conversation = self.store.transaction(|_, c| Ok(self_name(c, &g)))?;
                    self.warnings.push(Warning::RejoinFailed {
                        conversation,
                        reason: e.to_string(),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Rejoins `g` by external commit, from the server's current GroupInfo
    /// and tree; built again if another commit won the epoch meanwhile.
    pub(crate) async fn rejoin(
        &mut self,
        conn: &mut Connection,
        g: GroupId,
    ) -> Result<(), ClientError> {
        for _ in 0..REJOIN_ATTEMPTS {
            let (group_info, tree) = match conn.request(Request::GetGroupInfo { group: g }).await {
                Ok(Response::GroupInfo {
                    group_info,
                    ratchet_tree,
                    ..
                }) => (group_info.0, ratchet_tree.0),
                Ok(other) => return Err(unexpected(&other)),
                Err(ClientError::Server(e)) if e.code == ErrorCode::NotMember => {
                    // Removed while this device was away (or a group the
                    // server made up): there is nothing to rejoin.
                    return self.not_a_member_any_more(g);
                }
                Err(e) => return Err(e),
            };
            let me = self.id.credential();
            let device = &self.id.device;
            // What vouches for this device where it has no leaf to replace
            // (restored from a backup): its account's list, naming it.
            let own = self
                .store
                .device_list(&me.account)?
                .filter(|l| l.devices.contains(&me.device));
            let req = self.store.transaction(|p, c| {
                let r = mls::rejoin(p, &me, device, own.as_ref(), g, &group_info, &tree)?;
                let req = CommitRequest {
                    group: g,
                    epoch: r.epoch,
                    msg_id: random_id(),
                    commit: Blob(r.commit),
                    group_info: Blob(r.group_info),
                    welcome: None,
                    base: None,
                };
                rows::put_pending_commit(c, &req, &rows::Pending::Rejoin)?;
                Ok(req)
            })?;
            match self.submit(conn, req, rows::Pending::Rejoin).await? {
                Submitted::Committed(_) => return Ok(()),
                Submitted::Lost(_) => continue,
            }
        }
        Err(ClientError::TryAgain(
            "the conversation kept moving while this device rejoined it; trying again later".into(),
        ))
    }

    /// Notes that this device is out of sync in `g` (`missing`: it does
    /// not hold the conversation at all) and tells its user, once.
    pub(crate) fn mark_out_of_sync(
        &mut self,
        g: GroupId,
        missing: bool,
    ) -> Result<(), ClientError> {
        let news = self.store.transaction(|_, c| {
            let news = rows::note_out_of_sync(c, &g)?;
            Ok(news.then(|| self_name(c, &g)))
        })?;
        if let Some(name) = news {
            self.warnings.push(Warning::OutOfSync {
                conversation: name.clone(),
                missing,
            });
            let now = self.now_ms();
            self.notices
                .push(Notice::new(g, name, NoticeKind::OutOfSync { missing }).at(now));
        }
        Ok(())
    }

    fn not_a_member_any_more(&mut self, g: GroupId) -> Result<(), ClientError> {
        let known = self.store.conversation(&g)?.is_some();
        let name = self.store.transaction(|_, c| {
            rows::rejoin_done(c, &g)?;
            if known {
                rows::set_state(c, &g, crate::conversation::ConversationState::Removed)?;
            }
            Ok(self_name(c, &g))
        })?;
        if known {
            let now = self.now_ms();
            self.notices
                .push(Notice::new(g, name, NoticeKind::Removed).at(now));
        }
        Ok(())
    }

    /// Whether this device is out of sync in `g` and waits to rejoin it
    /// (it cannot read or send there until then).
    pub(crate) fn out_of_sync(&mut self, g: GroupId) -> Result<bool, ClientError> {
        self.store.transaction(|_, c| rows::rejoin_pending(c, &g))
    }

    /// A conversation's MLS epoch and epoch authenticator (by group name,
    /// `#id` or the peer's handle). Every member in the same epoch of the
    /// same group has the same authenticator; members that differ are
    /// forked (a different commit applied on each side) and can compare
    /// them out of band.
    pub(crate) fn epoch_authenticator(
        &mut self,
        target: &str,
    ) -> Result<(u64, Vec<u8>), ClientError> {
        let g = self.conversation_id(target)?;
        self.store.transaction(|p, _| {
            let epoch = match mls::epoch(p, g) {
                Ok(e) => e,
                Err(CoreError::UnknownGroup) => {
                    return Err(ClientError::NotFound(format!("no conversation {target}")));
                }
                Err(e) => return Err(e.into()),
            };
            Ok((epoch, group::epoch_authenticator(p, g)?))
        })
    }
}
