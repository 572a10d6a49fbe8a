//! Recovery of a conversation whose state this device lost (its profile
//! restored from an older backup, say): the device notices deliveries it
//! cannot read because its state is behind (or missing), asks the server to
//! relay a `Rejoin` request with a fresh KeyPackage to the other member
//! devices, and one of them re-adds it: one commit that removes the device's
//! old leaf and adds the fresh KeyPackage, with a Welcome that replaces the
//! stale state (the message history stays).
//!
//! The server never hands out group state: the Welcome comes from a member,
//! authenticated by MLS; the KeyPackage is checked against the asking
//! device's key and account, and its account's signed device list goes into
//! the commit as for any add. Members answer in a deterministic order with a
//! delay per rank, so a big group does not commit the same re-add many times
//! (and the epoch's compare-and-set keeps only one anyway).

use sha2::{Digest, Sha256};
use sotto_core::group::{self, Change};
use sotto_core::mls;
use sotto_core::{CoreError, CredentialIdentity};
use sotto_proto::{Blob, DeviceId, Envelope, ErrorCode, GroupId, Request, Response};

use crate::client::{Outcome, note_list, now_ms, random_id, self_name, unexpected};
use crate::session::Notice;
use crate::store::{ListChange, Provider, rows};
use crate::transport::Connection;
use crate::{Client, ClientError};

/// How long a member waits per rank before it answers a request to be
/// re-added (the first in the order answers at once): the default of
/// [`crate::Policy::readd_step`].
pub const READD_STEP_MS: u64 = 60_000;
/// How long a device waits for its re-add before it asks again.
pub const REJOIN_RETRY_MS: u64 = 3_600_000;

/// Where `device` stands among the members answering `victim`'s request in
/// `g`: the order is the same on every member and differs between requests.
fn rank_key(g: &GroupId, victim: &DeviceId, device: &DeviceId) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"sotto-readd-order-v1\0");
    h.update(g.0);
    h.update(victim.0);
    h.update(device.0);
    h.finalize().into()
}

/// Takes another member device's request to be re-added (an envelope of
/// kind `Rejoin`) inside the delivery's transaction: checked, then
/// remembered with the time this device answers it if nobody did before.
pub(crate) fn readd_request(
    p: &Provider<'_>,
    c: &rusqlite::Connection,
    me: &CredentialIdentity,
    env: &Envelope,
    step: std::time::Duration,
    notices: &mut Vec<Notice>,
) -> Result<Outcome, ClientError> {
    let g = env.group;
    if !mls::has_group(p, g)? || !group::is_active(p, g)? {
        return Ok(Outcome::Dropped(
            "a request to re-add a device to a conversation this device is not in".into(),
        ));
    }
    let members = mls::members(p, g)?;
    let Some(victim) = members.iter().find(|m| m.device == env.sender) else {
        return Ok(Outcome::Dropped(
            "a request to be re-added from a device that is not a member".into(),
        ));
    };
    if victim.device == me.device {
        return Ok(Outcome::Dropped(
            "a request to be re-added in this device's name".into(),
        ));
    }
    // The KeyPackage must be the asking device's own: signed by its key,
    // its credential naming the same account and device.
    mls::verify_key_package(p, &env.payload.0, victim.account, victim.device)?;
    let mut order: Vec<DeviceId> = members
        .iter()
        .map(|m| m.device)
        .filter(|d| *d != victim.device)
        .collect();
    order.sort_by_key(|d| rank_key(&g, &victim.device, d));
    order.dedup();
    let rank = order
        .iter()
        .position(|d| *d == me.device)
        .unwrap_or(order.len());
    let step = u64::try_from(step.as_millis()).unwrap_or(u64::MAX);
    let due = now_ms().saturating_add(step.saturating_mul(rank as u64));
    rows::put_readd(c, &g, &victim.device, &env.payload.0, due)?;
    let name = self_name(c, &g);
    notices.push(Notice::new(
        g,
        format!(
            "{name}: a device of {} lost its state of this conversation and asked to be re-added",
            victim.handle
        ),
    ));
    Ok(Outcome::Stored)
}

/// The line that tells a user this device found itself out of sync in
/// conversation `name` (`missing`: it does not hold the conversation at all).
pub(crate) fn lost_text(name: &str, missing: bool) -> String {
    if missing {
        format!(
            "{name}: messages arrive for a conversation this device does not have \
             (restored from an older backup?): asking its members to add this device"
        )
    } else {
        format!(
            "{name}: this device lost its state of this conversation \
             (restored from an older backup?): asking the other members to re-add it; \
             until then it cannot read or send there"
        )
    }
}

/// The line that tells a user this device was re-added to `name` by `by`
/// after `missed` deliveries it could not read.
pub(crate) fn readded_text(
    name: &str,
    by: Option<&CredentialIdentity>,
    missed: Option<u64>,
) -> String {
    let by = by.map_or_else(|| "a member".to_owned(), |m| m.handle.to_string());
    format!(
        "{name}: this device was re-added by {by} after losing its state of the conversation; \
         messages sent to it while it was out of sync could not be read ({} deliveries set aside)",
        missed.unwrap_or(0)
    )
}

impl Client {
    /// Asks to be re-added to every conversation this device found itself
    /// out of sync with (and not asked about within [`REJOIN_RETRY_MS`]).
    pub(crate) async fn ask_rejoins(&mut self, conn: &mut Connection) -> Result<(), ClientError> {
        let now = now_ms();
        let due = self.store.transaction(|_, c| {
            rows::rejoins_to_ask(c, now.saturating_sub(REJOIN_RETRY_MS).max(1))
        })?;
        for g in due {
            let me = self.id.credential();
            let device = &self.id.device;
            let default = self.id.suite;
            // A fresh KeyPackage for the re-add, in the conversation's suite.
            let kp = self.store.transaction(|p, _| {
                let suite = if mls::has_group(p, g)? {
                    mls::suite_of(p, g)?.unwrap_or(default)
                } else {
                    default
                };
                Ok(mls::key_packages(p, &me, device, suite, 1)?.pop())
            })?;
            let Some(kp) = kp else { continue };
            let req = Request::Rejoin {
                group: g,
                msg_id: random_id(),
                key_package: Blob(kp),
            };
            match conn.request(req).await {
                Ok(Response::Accepted { .. }) => {
                    self.store
                        .transaction(|_, c| rows::rejoin_asked(c, &g, now))?;
                }
                Ok(other) => return Err(unexpected(&other)),
                Err(ClientError::Server(e)) if e.code == ErrorCode::NotMember => {
                    // Removed while this device was away (or a group the
                    // server made up): there is nothing to rejoin.
                    let known = self.store.conversation(&g)?.is_some();
                    let name = self.store.transaction(|_, c| {
                        rows::rejoin_done(c, &g)?;
                        if known {
                            rows::set_state(c, &g, "removed")?;
                        }
                        Ok(self_name(c, &g))
                    })?;
                    if known {
                        self.notices.push(Notice::new(
                            g,
                            format!("you are no longer a member of {name}"),
                        ));
                    }
                }
                Err(ClientError::Server(e)) if e.code == ErrorCode::RateLimited => {
                    self.store
                        .transaction(|_, c| rows::rejoin_asked(c, &g, now))?;
                }
                // Busy or unavailable: asked again by the next command.
                Err(ClientError::Server(_)) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Answers the requests to be re-added that are due: re-adds the device
    /// with its KeyPackage, unless another member did already.
    pub(crate) async fn answer_rejoins(
        &mut self,
        conn: &mut Connection,
    ) -> Result<(), ClientError> {
        let due = self
            .store
            .transaction(|_, c| rows::readds_due(c, now_ms()))?;
        let mine = self.id.account.id();
        for (g, victim, kp_bytes) in due {
            if self.out_of_sync(g)? {
                // This device is behind there itself: it cannot commit
                // until it is re-added; the request waits.
                continue;
            }
            let state = self.store.transaction(|p, _| {
                if !mls::has_group(p, g)? || !group::is_active(p, g)? {
                    return Ok(None);
                }
                let Some(m) = mls::members(p, g)?.into_iter().find(|m| m.device == victim) else {
                    return Ok(None);
                };
                let key = mls::leaf_key(p, g, victim)?;
                let kp = mls::verify_key_package(p, &kp_bytes, m.account, victim)
                    .ok()
                    .map(|(kp, _)| kp);
                Ok(kp.map(|kp| (m.account, key, kp)))
            })?;
            let Some((account, key, kp)) = state else {
                self.store
                    .transaction(|_, c| rows::delete_readd(c, &g, &victim))?;
                continue;
            };
            // The device must be on its account's signed list, which goes
            // into the commit for the other members to check.
            let list = match conn.request(Request::GetDeviceList { account }).await {
                Ok(Response::DeviceList(l)) => l,
                Ok(other) => return Err(unexpected(&other)),
                Err(e) if e.is_temporary() => return Ok(()),
                Err(ClientError::Server(_)) => {
                    self.store
                        .transaction(|_, c| rows::delete_readd(c, &g, &victim))?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut warnings = Vec::new();
            let valid = sotto_core::identity::device_list_is_signed(&list)
                && list.account == account
                && list.devices.contains(&victim)
                && (account == mine
                    || self.store.transaction(|_, c| {
                        Ok(note_list(c, &list, &mut warnings)? != ListChange::Older)
                    })?);
            self.warnings.append(&mut warnings);
            if !valid {
                self.store
                    .transaction(|_, c| rows::delete_readd(c, &g, &victim))?;
                continue;
            }
            let result = self
                .commit_with_retry(conn, g, |p| {
                    // Another member re-added it meanwhile (its leaf is new),
                    // or it left: nothing to do.
                    if mls::leaf_key(p, g, victim)? != key {
                        return Ok(Change::default());
                    }
                    Ok(Change {
                        removes: vec![victim],
                        adds: vec![kp.clone()],
                        device_lists: vec![list.clone()],
                        ..Change::default()
                    })
                })
                .await;
            match result {
                Err(e) if e.is_temporary() => return Ok(()),
                Err(ClientError::Core(e)) => {
                    self.warnings.push(format!(
                        "could not re-add a device of {}: {e}",
                        list.account.short()
                    ));
                }
                Err(ClientError::Invalid(e)) => {
                    self.warnings
                        .push(format!("could not re-add a device: {e}"));
                }
                Err(e) => return Err(e),
                Ok(_) => {}
            }
            self.store
                .transaction(|_, c| rows::delete_readd(c, &g, &victim))?;
        }
        Ok(())
    }

    /// Whether this device waits to be re-added to `g` (it cannot read or
    /// send there until then).
    pub(crate) fn out_of_sync(&mut self, g: GroupId) -> Result<bool, ClientError> {
        self.store.transaction(|_, c| rows::rejoin_pending(c, &g))
    }

    /// A conversation's MLS epoch and epoch authenticator (by group name,
    /// `#id` or the peer's handle). Every member in the same epoch of the
    /// same group has the same authenticator; members that differ are
    /// forked (a different commit applied on each side) and can compare
    /// them out of band.
    pub fn epoch_authenticator(&mut self, target: &str) -> Result<(u64, Vec<u8>), ClientError> {
        let g = self.conversation_id(target)?;
        self.store.transaction(|p, _| {
            let epoch = match mls::epoch(p, g) {
                Ok(e) => e,
                Err(CoreError::UnknownGroup) => {
                    return Err(ClientError::Invalid(format!("no conversation {target}")));
                }
                Err(e) => return Err(e.into()),
            };
            Ok((epoch, group::epoch_authenticator(p, g)?))
        })
    }
}
