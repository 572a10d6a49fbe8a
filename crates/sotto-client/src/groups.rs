//! Group conversations on the client: create, add, remove, leave, rename,
//! promote, list; commits with automatic rebase when another member's commit
//! won the epoch; committing members' leaves; periodic self-updates.

use std::time::Duration;

use openmls::prelude::KeyPackage;
use sotto_core::group::{self, Change, GroupMeta};
use sotto_core::mls;
use sotto_proto::{
    AccountId, Blob, CommitRequest, ErrorCode, GroupId, Handle, ProposeRequest, Request, Response,
    SignedDeviceList,
};
use tokio::time::{Instant, timeout_at};

use crate::ClientError;
use crate::conversation::{Notice, NoticeKind, Warning};
use crate::conversation::{Submitted, Target};
use crate::members::{conversation_name, no_device_left, record_members, settle_wiped};
use crate::profile::Profile;
use crate::store::rows::Pending;
use crate::store::{ContactChange, Provider, rows};
use crate::transport::{Connection, Event, random_id, unexpected};

/// How often a commit is rebuilt after losing its epoch before giving up.
const COMMIT_ATTEMPTS: usize = 8;
/// How long to wait for the commit that won an epoch.
const CATCH_UP_WAIT: Duration = Duration::from_secs(10);

/// A group as `groups` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// The MLS group id.
    pub id: GroupId,
    /// Its name.
    pub name: String,
    /// Its MLS epoch.
    pub epoch: u64,
    /// Member handles, one per account, sorted.
    pub members: Vec<String>,
    /// Admin handles, sorted.
    pub admins: Vec<String>,
    /// Handles of members whose every device left wiped (kill code):
    /// nobody of theirs can read the group any more. Sorted.
    pub no_device_left: Vec<String>,
    /// Whether this account is a member, leaving, or removed.
    pub state: crate::conversation::ConversationState,
    /// The disappearing-message timer in seconds, if set.
    pub disappear_after_s: Option<u64>,
    /// The MLS epoch authenticator, hex: the same on every member in the
    /// same epoch of the same group; members that differ are forked.
    pub epoch_authenticator: String,
}

impl Profile {
    /// Resolves `#<id prefix>`, `@handle`, a group's name, or a handle.
    ///
    /// A group's name is chosen by whoever named the group, a stranger
    /// maybe, so it never shadows a contact: a bare word that names a group
    /// and is the handle of a contact is refused, naming both (`@handle`
    /// for the contact, `#<id>` for the group).
    pub(crate) fn resolve(&self, target: &str) -> Result<Target, ClientError> {
        self.resolve_as(target, true)
    }

    /// [`Client::resolve`]; with `people` false, for operations only a
    /// group can be the target of, a bare word is never taken as a handle
    /// and does not compete with one.
    fn resolve_as(&self, target: &str, people: bool) -> Result<Target, ClientError> {
        if let Some(handle) = target.strip_prefix('@') {
            return Handle::new(handle)
                .map(Target::Handle)
                .map_err(|_| ClientError::Invalid(format!("{target:?} is not a handle")));
        }
        let groups: Vec<_> = self
            .store
            .conversations()?
            .into_iter()
            .filter(|c| c.is_group)
            .collect();
        if let Some(prefix) = target.strip_prefix('#') {
            let hits: Vec<_> = groups
                .iter()
                .filter(|c| c.group.to_hex().starts_with(prefix))
                .collect();
            return match hits.as_slice() {
                [one] => Ok(Target::Group(one.group)),
                [] => Err(ClientError::NotFound(format!("no group with id {target}"))),
                _ => Err(ClientError::Ambiguous(format!(
                    "{target} names several groups: give more of the id"
                ))),
            };
        }
        let mut named: Vec<_> = groups.iter().filter(|c| c.name == target).collect();
        if named.len() > 1 {
            // A group this device was removed from does not compete for its name.
            named.retain(|c| c.state != crate::conversation::ConversationState::Removed);
        }
        let contact = match Handle::new(target) {
            Ok(h) if people && !named.is_empty() && self.store.contact(&h)?.is_some() => Some(h),
            _ => None,
        };
        if let Some(h) = contact {
            let groups: Vec<String> = named
                .iter()
                .map(|c| format!("the group #{}", &c.group.to_hex()[..12]))
                .collect();
            return Err(ClientError::Ambiguous(format!(
                "{target:?} is both your contact @{h} and {}: say which (@{h} or #<id>)",
                groups.join(" and ")
            )));
        }
        match named.as_slice() {
            [one] => Ok(Target::Group(one.group)),
            [] => Handle::new(target)
                .map(Target::Handle)
                .map_err(|_| ClientError::NotFound(format!("no group or handle named {target:?}"))),
            _ => Err(ClientError::Ambiguous(format!(
                "several groups are named {target:?}: use #<id> (see `sotto groups`)"
            ))),
        }
    }

    fn group_target(&self, target: &str) -> Result<GroupId, ClientError> {
        match self.resolve_as(target, false)? {
            Target::Group(g) => Ok(g),
            Target::Handle(_) => Err(ClientError::NotFound(format!("no group named {target:?}"))),
        }
    }

    fn meta(&mut self, g: GroupId) -> Result<GroupMeta, ClientError> {
        // The admins (the name the context holds is sealed; the
        // conversation's row has it in the clear).
        self.store
            .transaction(|p, _| Ok(group::meta(p, g)?))?
            .ok_or_else(|| ClientError::Invalid("not a group".into()))
    }

    fn require_admin(&mut self, g: GroupId, what: &'static str) -> Result<GroupMeta, ClientError> {
        let meta = self.meta(g)?;
        if !meta.is_admin(&self.id.account.id()) {
            return Err(ClientError::NotAdmin(what));
        }
        Ok(meta)
    }

    /// Claims and verifies one KeyPackage of every device of `handle`;
    /// records the handle's account as a contact.
    pub(crate) async fn claim(
        &mut self,
        conn: &mut Connection,
        handle: &Handle,
    ) -> Result<(AccountId, Vec<KeyPackage>, SignedDeviceList), ClientError> {
        let claimed = match conn
            .request(Request::ClaimKeyPackages {
                handle: handle.clone(),
            })
            .await
        {
            Ok(Response::KeyPackages(c)) => c,
            Ok(other) => return Err(unexpected(&other)),
            Err(ClientError::Server(e)) if e.code == ErrorCode::UnknownHandle => {
                return Err(ClientError::NotFound(format!("unknown handle: {handle}")));
            }
            // Every device keeps a last-resort KeyPackage: none at all
            // means the account has no device left.
            Err(ClientError::Server(e)) if e.code == ErrorCode::NoKeyPackages => {
                return Err(ClientError::NoDevices(handle.to_string()));
            }
            Err(e) => return Err(e),
        };
        // Every device the server hands out must be on the account's own
        // signed list: a device the account did not sign for is a ghost.
        let list = &claimed.device_list;
        let ghost = !sotto_core::identity::device_list_is_signed(list)
            || list.account != claimed.account
            || claimed
                .devices
                .iter()
                .any(|d| !list.devices.contains(&d.device));
        if ghost {
            return Err(ClientError::Untrustworthy(format!(
                "the server listed a device for {handle} that {handle}'s account did not sign for"
            )));
        }
        // The account and its list must be the ones the key directory
        // lists for the handle, before anything is recorded.
        self.check_contact(conn, handle, list).await?;
        let mut key_packages: Vec<KeyPackage> = Vec::new();
        let mut foreign = 0;
        let mut warnings = Vec::new();
        let change = self.store.transaction(|p, c| {
            for d in &claimed.devices {
                if let Ok((kp, id)) =
                    mls::verify_key_package(p, &d.key_package.0, claimed.account, d.device)
                {
                    let same_suite = key_packages
                        .first()
                        .is_none_or(|f| f.ciphersuite() == kp.ciphersuite());
                    if id.handle != *handle {
                        foreign += 1;
                    } else if same_suite {
                        key_packages.push(kp);
                    }
                }
            }
            if foreign > 0 {
                return Ok(None);
            }
            let change = rows::put_contact(c, handle, &claimed.account)?;
            if crate::members::note_list(c, list, &mut warnings)? == crate::store::ListChange::Older
            {
                return Err(ClientError::Untrustworthy(format!(
                    "the server served an outdated device list for {handle}"
                )));
            }
            Ok(Some(change))
        })?;
        self.warnings.append(&mut warnings);
        if foreign > 0 {
            return Err(ClientError::Untrustworthy(format!(
                "the server answered for {handle} with keys of someone else"
            )));
        }
        if let Some(ContactChange::Changed { .. }) = change {
            self.warnings.push(Warning::KeyChanged {
                handle: handle.clone(),
            });
        }
        if self
            .store
            .contact_info(handle)?
            .is_some_and(|c| c.needs_confirm)
        {
            return Err(ClientError::KeyChanged(handle.to_string()));
        }
        if key_packages.is_empty() {
            return Err(ClientError::NoKeyPackages(handle.clone()));
        }
        Ok((claimed.account, key_packages, claimed.device_list))
    }

    /// Processes deliveries until the local group reached `epoch`. If it
    /// cannot get there (a commit of its epoch it could not apply, or
    /// nothing arrives), the conversation is marked out of sync, for
    /// [`Client::rejoin`].
    pub(crate) async fn catch_up(
        &mut self,
        conn: &mut Connection,
        g: GroupId,
        epoch: u64,
    ) -> Result<(), ClientError> {
        let deadline = Instant::now() + CATCH_UP_WAIT;
        let mut acks = Vec::new();
        let mut dropped = Vec::new();
        loop {
            let (now, active) = self
                .store
                .transaction(|p, _| Ok((mls::epoch(p, g)?, group::is_active(p, g)?)))?;
            if !active {
                Self::ack(conn, &mut acks).await?;
                return Err(ClientError::NotMember(
                    "this device was removed from the group".into(),
                ));
            }
            if now >= epoch || self.out_of_sync(g)? {
                break;
            }
            if self.refused_commits.contains(&(g, now)) {
                // The server took a commit of this epoch that this device
                // could not apply: it is out of sync now.
                self.refused_commits.retain(|(x, _)| *x != g);
                self.mark_out_of_sync(g, false)?;
                break;
            }
            let Ok(ev) = timeout_at(deadline, conn.next_event()).await else {
                // What would bring this device to the server's epoch never
                // came (it was set aside on an earlier connection, say):
                // out of sync as well.
                self.mark_out_of_sync(g, false)?;
                break;
            };
            if let Event::Deliver(d) = ev? {
                self.handle_event(conn, &d, &mut dropped).await?;
                acks.push(d.seq);
            }
        }
        self.warnings.append(&mut dropped);
        Self::ack(conn, &mut acks).await
    }

    /// Stages the change `make` computes, sends it, and on a lost epoch
    /// applies the winning commit and tries again. `None` if there was
    /// nothing to commit.
    pub(crate) async fn commit_with_retry(
        &mut self,
        conn: &mut Connection,
        g: GroupId,
        make: impl Fn(&Provider<'_>) -> Result<Change, ClientError>,
    ) -> Result<Option<u64>, ClientError> {
        for _ in 0..COMMIT_ATTEMPTS {
            if self.out_of_sync(g)? {
                // Its commits would be of an epoch the group has left:
                // rejoin first, then build the change on the new state.
                self.rejoin(conn, g).await?;
            }
            let Some(req) = self.stage_and_remember(g, &make)? else {
                return Ok(None);
            };
            match self.submit(conn, req, Pending::Commit).await? {
                Submitted::Committed(epoch) => return Ok(Some(epoch)),
                Submitted::Lost(current) => self.catch_up(conn, g, current).await?,
            }
        }
        Err(ClientError::TryAgain(format!(
            "the group kept moving: gave up after {COMMIT_ATTEMPTS} attempts; try again"
        )))
    }

    /// Stages the change `make` computes and remembers the commit in the
    /// same transaction: if its answer is lost, the next connection resends
    /// the very same commit (the server applies a commit id once).
    fn stage_and_remember(
        &mut self,
        g: GroupId,
        make: &impl Fn(&Provider<'_>) -> Result<Change, ClientError>,
    ) -> Result<Option<CommitRequest>, ClientError> {
        let device = &self.id.device;
        self.store.transaction(|p, c| {
            let key = rows::name_key(c, &g)?;
            let Some(s) = group::stage(p, device, g, make(p)?, key.as_ref())? else {
                return Ok(None);
            };
            let req = CommitRequest {
                group: g,
                epoch: s.epoch,
                msg_id: random_id(),
                commit: Blob(s.commit),
                group_info: Blob(s.group_info),
                welcome: s.welcome.map(Blob),
                base: None,
            };
            rows::put_pending_commit(c, &req, &Pending::Commit)?;
            Ok(Some(req))
        })
    }

    /// Sends a remembered commit and settles it: merged if the server
    /// applied it (now or before a lost answer), dropped if another commit
    /// won the epoch or the server's checks refused it. A lost connection
    /// leaves it remembered for the next connection.
    pub(crate) async fn submit(
        &mut self,
        conn: &mut Connection,
        req: CommitRequest,
        what: Pending,
    ) -> Result<Submitted, ClientError> {
        let (g, base) = (req.group, req.epoch);
        match conn.request(Request::Commit(req)).await {
            Ok(Response::Committed { epoch }) => {
                if what != Pending::Rejoin {
                    self.read_before_merge(conn, g, base).await?;
                }
                let me = self.id.credential();
                let now = self.now_ms();
                let mut warnings = Vec::new();
                let mut notices = Vec::new();
                self.store.transaction(|p, c| {
                    // An external commit is applied as it is built.
                    if what != Pending::Rejoin
                        && let Some(renamed) = mls::merge_pending(p, g)?
                    {
                        rows::put_name(c, &g, &renamed, now)?;
                    }
                    match &what {
                        Pending::Creation { name, is_group } => {
                            rows::put_conversation(c, &g, *is_group, name, now)?;
                        }
                        Pending::Commit => {
                            let members = mls::members(p, g)?;
                            record_members(c, &me, &members, &mut warnings)?;
                            let (is_group, name) = conversation_name(p, c, g, &me, &members)?;
                            rows::put_conversation(c, &g, is_group, &name, now)?;
                            for handle in settle_wiped(c, &g, &members)? {
                                notices.push(Notice::new(
                                    g,
                                    name.clone(),
                                    NoticeKind::NoDeviceLeft { handle },
                                ));
                            }
                        }
                        Pending::Rejoin => {
                            crate::rejoin::rejoined(
                                p,
                                c,
                                &me,
                                g,
                                now,
                                &mut warnings,
                                &mut notices,
                            )?;
                        }
                    }
                    rows::delete_pending_commit(c, &g)
                })?;
                self.warnings.append(&mut warnings);
                self.notices.extend(notices.into_iter().map(|n| n.at(now)));
                Ok(Submitted::Committed(epoch))
            }
            Err(ClientError::Server(e)) if matches!(e.code, ErrorCode::StaleEpoch { .. }) => {
                let ErrorCode::StaleEpoch { current } = e.code else {
                    unreachable!("matched above")
                };
                self.drop_pending(g, &what)?;
                Ok(Submitted::Lost(current))
            }
            Err(ClientError::Server(e)) if e.code == ErrorCode::InvalidCommit => {
                // The server's checks (the same every member makes) refused
                // it: it will never go through.
                self.drop_pending(g, &what)?;
                Err(ClientError::Server(e))
            }
            Ok(other) => Err(unexpected(&other)),
            Err(e) => Err(e),
        }
    }

    /// Processes the deliveries the server sent ahead of its answer to this
    /// device's commit of `g` on epoch `base`: the server sends every
    /// delivery stored before the commit first, and the messages of `base`
    /// among them must be read before the commit is merged (merging leaves
    /// that epoch's keys behind). Stops at the first one of `g` past
    /// `base`, which came after the commit; the rest stays queued.
    async fn read_before_merge(
        &mut self,
        conn: &mut Connection,
        g: GroupId,
        base: u64,
    ) -> Result<(), ClientError> {
        let mut acks = Vec::new();
        let mut dropped = Vec::new();
        let before = |d: &sotto_proto::Delivery| {
            d.envelope.group != g
                || sotto_rules::public::message_epoch(&g, &d.envelope.payload.0)
                    .is_none_or(|e| e <= base)
        };
        while let Some(d) = conn.take_queued_delivery(before) {
            self.handle_event(conn, &d, &mut dropped).await?;
            acks.push(d.seq);
        }
        self.warnings.append(&mut dropped);
        Self::ack(conn, &mut acks).await
    }

    /// Forgets a commit the server did not apply, and undoes it locally.
    fn drop_pending(&mut self, g: GroupId, what: &Pending) -> Result<(), ClientError> {
        self.store.transaction(|p, c| {
            match what {
                Pending::Creation { .. } | Pending::Rejoin => mls::discard(p, g)?,
                Pending::Commit => group::clear_pending(p, g)?,
            }
            rows::delete_pending_commit(c, &g)
        })
    }

    /// Settles the commits whose answers were lost on an earlier connection.
    pub(crate) async fn settle_pending_commits(
        &mut self,
        conn: &mut Connection,
    ) -> Result<(), ClientError> {
        for (req, what) in self.store.transaction(|_, c| rows::pending_commits(c))? {
            match self.submit(conn, req, what).await {
                // Refused: said once, and dropped.
                Err(ClientError::Server(e)) if e.code == ErrorCode::InvalidCommit => {
                    self.warnings.push(Warning::ChangeRefused {
                        reason: e.to_string(),
                    });
                }
                Err(e) => return Err(e),
                Ok(_) => {}
            }
        }
        Ok(())
    }

    /// Rejoins where this device lost its state, and commits the leaves
    /// other members proposed.
    pub(crate) async fn commit_proposals(
        &mut self,
        conn: &mut Connection,
    ) -> Result<(), ClientError> {
        self.rejoin_lost(conn).await?;
        // Leaves another commit left out: proposed again on the new epoch.
        while let Some(g) = self.leaves.pop_first() {
            let leaving = self.store.transaction(|p, c| {
                Ok(group::is_active(p, g)?
                    && rows::conversation_state(c, &g)?
                        == Some(crate::conversation::ConversationState::Leaving))
            })?;
            if leaving && !self.out_of_sync(g)? {
                self.propose_leave(conn, g).await?;
            }
        }
        while let Some(g) = self.proposals.pop_first() {
            let active = self.store.transaction(|p, _| Ok(group::is_active(p, g)?))?;
            if active && !self.out_of_sync(g)? {
                self.commit_with_retry(conn, g, |_| Ok(Change::default()))
                    .await?;
            }
        }
        Ok(())
    }

    /// Commits a self-update in `g` if the policy says it is time.
    pub(crate) async fn maybe_self_update(
        &mut self,
        conn: &mut Connection,
        g: GroupId,
    ) -> Result<(), ClientError> {
        let Some(c) = self.store.conversation(&g)? else {
            return Ok(());
        };
        let age = self.now_ms().saturating_sub(c.last_update_ms);
        let due = c.sent_since_update >= self.policy.messages
            || u128::from(age) >= self.policy.max_age.as_millis();
        if !due {
            return Ok(());
        }
        self.commit_with_retry(conn, g, |_| {
            Ok(Change {
                self_update: true,
                ..Change::default()
            })
        })
        .await?;
        let now = self.now_ms();
        self.store.transaction(|_, c| rows::updated(c, &g, now))
    }

    /// Creates a group named `name` with `members` (handles); this account
    /// is its admin.
    /// (`name` checked by [`valid_name`], `handles` by [`Profile::handles`].)
    pub(crate) async fn group_create(
        &mut self,
        conn: &mut Connection,
        name: &str,
        handles: &[Handle],
    ) -> Result<GroupId, ClientError> {
        self.sync(conn).await?;
        let mut kps = Vec::new();
        let mut lists = Vec::new();
        for h in handles {
            let (_, k, l) = self.claim(conn, h).await?;
            kps.extend(k);
            lists.push(l);
        }
        let mut id = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        let g = GroupId(id);
        if !self
            .create_conversation(conn, g, kps, lists, Some(name))
            .await?
        {
            return Err(ClientError::TryAgain(
                "the new group's id is taken: try again".into(),
            ));
        }
        Ok(g)
    }

    /// Creates the MLS group `g` with `kps` (their accounts' signed lists
    /// in `lists`) and this account's other devices (of the same suite):
    /// a group named `group_name`, or a one-to-one conversation. The
    /// server starts tracking it from the creation commit; the local group
    /// stays only if the server applies it; `false` if another creation
    /// of `g` won. If the answer is lost, the next connection settles it.
    pub(crate) async fn create_conversation(
        &mut self,
        conn: &mut Connection,
        g: GroupId,
        mut kps: Vec<KeyPackage>,
        mut lists: Vec<SignedDeviceList>,
        group_name: Option<&str>,
    ) -> Result<bool, ClientError> {
        let suite = kps.first().map(|k| k.ciphersuite());
        let (own, own_list) = self.own_other_devices(conn).await?;
        let own: Vec<KeyPackage> = own
            .into_iter()
            .filter(|k| Some(k.ciphersuite()) == suite)
            .collect();
        if !own.is_empty() {
            kps.extend(own);
            lists.push(own_list);
        }
        let me = self.id.credential();
        let device = &self.id.device;
        let what = Pending::Creation {
            name: group_name.map_or_else(|| self.peer_names(&kps), str::to_owned),
            is_group: group_name.is_some(),
        };
        let kind = match group_name {
            Some(n) => mls::NewConversation::Group(n),
            None => mls::NewConversation::Direct,
        };
        let req = self.store.transaction(|p, c| {
            let created = mls::create_group(p, &me, device, g, kps, lists, kind)?;
            let req = CommitRequest {
                group: g,
                epoch: 0,
                msg_id: random_id(),
                commit: Blob(created.staged.commit),
                group_info: Blob(created.staged.group_info),
                welcome: created.staged.welcome.map(Blob),
                base: Some(Blob(created.base)),
            };
            rows::put_pending_commit(c, &req, &what)?;
            Ok(req)
        })?;
        match self.submit(conn, req, what).await? {
            Submitted::Committed(_) => Ok(true),
            Submitted::Lost(_) => Ok(false),
        }
    }

    /// A one-to-one conversation's name: the peer's handle.
    fn peer_names(&self, kps: &[KeyPackage]) -> String {
        let mine = self.id.account.id();
        let mut names: Vec<String> = kps
            .iter()
            .filter_map(|k| {
                let leaf = k.leaf_node();
                mls::leaf_identity(leaf.credential(), leaf.signature_key().as_slice())
            })
            .filter(|id| id.account != mine)
            .map(|id| id.handle.to_string())
            .collect();
        names.sort();
        names.dedup();
        names.join(",")
    }

    pub(crate) fn handles(&self, members: &[&str]) -> Result<Vec<Handle>, ClientError> {
        let mut out: Vec<Handle> = Vec::new();
        for m in members {
            let h = Handle::new(m).map_err(|e| ClientError::Invalid(format!("{m}: {e}")))?;
            if h == self.id.handle {
                return Err(ClientError::Invalid(
                    "you are a member of your own groups already".into(),
                ));
            }
            if !out.contains(&h) {
                out.push(h);
            }
        }
        if out.is_empty() {
            return Err(ClientError::Invalid("name at least one member".into()));
        }
        Ok(out)
    }

    /// Adds `members` (handles) to a group; admins only.
    /// (`handles` checked by [`Profile::handles`].)
    pub(crate) async fn group_add(
        &mut self,
        conn: &mut Connection,
        target: &str,
        handles: &[Handle],
    ) -> Result<u64, ClientError> {
        self.sync(conn).await?;
        let g = self.group_target(target)?;
        self.require_admin(g, "add members")?;
        let present = self.member_handles(g)?;
        let mut kps = Vec::new();
        let mut lists = Vec::new();
        for h in handles {
            if present.contains(h) {
                return Err(ClientError::Invalid(format!("{h} is a member already")));
            }
            let (_, k, l) = self.claim(conn, h).await?;
            kps.extend(k);
            lists.push(l);
        }
        let epoch = self
            .commit_with_retry(conn, g, |_| {
                Ok(Change {
                    adds: kps.clone(),
                    device_lists: lists.clone(),
                    ..Change::default()
                })
            })
            .await?;
        epoch.ok_or_else(|| ClientError::Invalid("nothing to add".into()))
    }

    fn member_handles(&mut self, g: GroupId) -> Result<Vec<Handle>, ClientError> {
        let members = self.store.transaction(|p, _| Ok(mls::members(p, g)?))?;
        let mut out: Vec<Handle> = members.into_iter().map(|m| m.handle).collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Removes `members` (handles, all their devices) from a group; admins only.
    /// (`handles` checked by [`Profile::handles`].)
    pub(crate) async fn group_remove(
        &mut self,
        conn: &mut Connection,
        target: &str,
        handles: &[Handle],
    ) -> Result<u64, ClientError> {
        self.sync(conn).await?;
        let g = self.group_target(target)?;
        self.require_admin(g, "remove members")?;
        for h in handles {
            if !self.member_handles(g)?.contains(h) {
                return Err(ClientError::NotFound(format!("{h} is not a member")));
            }
        }
        let epoch = self
            .commit_with_retry(conn, g, |p| {
                // Recomputed on every attempt: a rebase may have removed some already.
                let removes = mls::members(p, g)?
                    .into_iter()
                    .filter(|m| handles.contains(&m.handle))
                    .map(|m| m.device)
                    .collect();
                Ok(Change {
                    removes,
                    ..Change::default()
                })
            })
            .await?;
        // The removed member's meta (admins) is cleaned up too.
        let meta = self.meta(g)?;
        let gone: Vec<AccountId> = self
            .store
            .contacts()?
            .into_iter()
            .filter(|c| handles.iter().any(|x| x.as_str() == c.handle))
            .map(|c| c.account)
            .collect();
        if meta.admins.iter().any(|a| gone.contains(a)) {
            let admins: Vec<AccountId> = meta
                .admins
                .iter()
                .filter(|a| !gone.contains(a))
                .copied()
                .collect();
            self.commit_with_retry(conn, g, |_| {
                Ok(Change {
                    admins: Some(admins.clone()),
                    ..Change::default()
                })
            })
            .await?;
        }
        epoch.ok_or_else(|| ClientError::Invalid("nothing to remove".into()))
    }

    /// Renames a group; admins only.
    /// (`name` checked by [`valid_name`].)
    pub(crate) async fn group_rename(
        &mut self,
        conn: &mut Connection,
        target: &str,
        name: &str,
    ) -> Result<(), ClientError> {
        self.sync(conn).await?;
        let g = self.group_target(target)?;
        self.require_admin(g, "rename the group")?;
        self.commit_with_retry(conn, g, |_| {
            Ok(Change {
                name: Some(name.to_owned()),
                ..Change::default()
            })
        })
        .await?;
        Ok(())
    }

    /// Makes `member` an admin of a group; admins only.
    pub(crate) async fn group_promote(
        &mut self,
        conn: &mut Connection,
        target: &str,
        handle: &Handle,
    ) -> Result<(), ClientError> {
        self.sync(conn).await?;
        let g = self.group_target(target)?;
        self.require_admin(g, "promote members")?;
        self.commit_with_retry(conn, g, |p| {
            let meta =
                group::meta(p, g)?.ok_or_else(|| ClientError::Invalid("not a group".into()))?;
            let account = mls::members(p, g)?
                .into_iter()
                .find(|m| m.handle == *handle)
                .map(|m| m.account)
                .ok_or_else(|| ClientError::NotFound(format!("{handle} is not a member")))?;
            let mut admins = meta.admins;
            if !admins.contains(&account) {
                admins.push(account);
            }
            Ok(Change {
                admins: Some(admins),
                ..Change::default()
            })
        })
        .await?;
        Ok(())
    }

    /// Leaves a conversation, a group or the one-to-one conversation with
    /// a handle, alone: proposes this device's removal (for whichever
    /// member commits next), the server stops routing it here and this
    /// device marks it removed at once (`crate::blocks`).
    pub(crate) async fn group_leave(
        &mut self,
        conn: &mut Connection,
        target: &str,
    ) -> Result<(), ClientError> {
        self.sync(conn).await?;
        if let Target::Group(g) = self.resolve(target)? {
            let meta = self.meta(g)?;
            let me = self.id.account.id();
            let members = self.member_handles(g)?;
            if meta.admins == [me] && members.len() > 1 {
                return Err(ClientError::Invalid(
                    "you are the group's only admin: promote another member first".into(),
                ));
            }
        }
        self.leave_alone(conn, target).await?;
        Ok(())
    }

    /// The request proposing this device's leave of `g` (`wiped`: as it
    /// obeys a wipe order, which the members are told).
    pub(crate) fn leave_request(
        &mut self,
        g: GroupId,
        wiped: bool,
    ) -> Result<Request, ClientError> {
        let device = &self.id.device;
        let proposal = self
            .store
            .transaction(|p, _| Ok(group::propose_leave(p, device, g, wiped)?))?;
        Ok(Request::Propose(ProposeRequest {
            group: g,
            msg_id: random_id(),
            proposal: Blob(proposal),
        }))
    }

    /// Proposes this device's removal from `g` (checked by the server
    /// against the group's epoch, and built again when another commit
    /// moved it on meanwhile).
    pub(crate) async fn propose_leave(
        &mut self,
        conn: &mut Connection,
        g: GroupId,
    ) -> Result<(), ClientError> {
        for _ in 0..COMMIT_ATTEMPTS {
            match conn.request(self.leave_request(g, false)?).await {
                Ok(Response::Accepted { .. }) => return Ok(()),
                Ok(other) => return Err(unexpected(&other)),
                Err(ClientError::Server(e)) if matches!(e.code, ErrorCode::StaleEpoch { .. }) => {
                    let ErrorCode::StaleEpoch { current } = e.code else {
                        unreachable!("matched above")
                    };
                    self.catch_up(conn, g, current).await?;
                    if self.out_of_sync(g)? {
                        self.rejoin(conn, g).await?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::TryAgain(format!(
            "the group kept moving: gave up after {COMMIT_ATTEMPTS} attempts; try again"
        )))
    }

    /// Every group this profile knows, with members and epoch.
    pub(crate) fn groups(&mut self) -> Result<Vec<GroupInfo>, ClientError> {
        let mut out = Vec::new();
        for c in self
            .store
            .conversations()?
            .into_iter()
            .filter(|c| c.is_group)
        {
            let g = c.group;
            let (epoch, authenticator, members, meta, timer, gone) =
                self.store.transaction(|p, c| {
                    Ok((
                        mls::epoch(p, g)?,
                        group::epoch_authenticator(p, g)?,
                        mls::members(p, g)?,
                        group::meta(p, g)?,
                        group::timer(p, g)?,
                        no_device_left(c, &g)?,
                    ))
                })?;
            let mut names: Vec<String> = members.iter().map(|m| m.handle.to_string()).collect();
            names.sort();
            names.dedup();
            let mut admins: Vec<String> = meta
                .map(|m| {
                    members
                        .iter()
                        .filter(|x| m.admins.contains(&x.account))
                        .map(|x| x.handle.to_string())
                        .collect()
                })
                .unwrap_or_default();
            admins.sort();
            admins.dedup();
            out.push(GroupInfo {
                id: g,
                name: c.name,
                epoch,
                members: if c.state == crate::conversation::ConversationState::Removed {
                    Vec::new()
                } else {
                    names
                },
                admins,
                no_device_left: gone,
                state: c.state,
                disappear_after_s: timer,
                epoch_authenticator: authenticator.iter().map(|b| format!("{b:02x}")).collect(),
            });
        }
        Ok(out)
    }
}

pub(crate) fn valid_name(name: &str) -> Result<String, ClientError> {
    crate::names::group_name(name)
        .map(str::to_owned)
        .ok_or_else(|| {
            ClientError::Invalid(
                "a group name is 1 to 64 bytes of visible characters (no control characters, \
             bidirectional overrides or invisible ones), not starting with '#' or '@'"
                    .into(),
            )
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sotto_proto::{Handle, Request, Response};
    use sotto_server::ServerConfig;
    use sotto_test_support::InProcessServer;

    use super::*;
    use crate::{Client, ReceiveEvent, RegisterOptions, ServerLink, Suite};

    async fn register(server: &InProcessServer, dir: &std::path::Path, name: &str) -> Client {
        let opts = RegisterOptions {
            link: ServerLink::parse(&server.link).unwrap(),
            handle: Handle::new(name).unwrap(),
            invite: Some(server.invite()),
            suite: Suite::PostQuantum,
        };
        Client::register(&dir.join(name), "pass", opts)
            .await
            .unwrap()
    }

    async fn texts(c: &mut Client) -> Vec<String> {
        let mut out = Vec::new();
        c.receive(Duration::ZERO, |ev| {
            if let ReceiveEvent::Message(m) = ev {
                out.push(m.text.clone());
            }
        })
        .await
        .unwrap();
        out
    }

    #[tokio::test]
    async fn a_commit_whose_answer_was_lost_is_settled_on_the_next_connection() {
        let tmp = tempfile::TempDir::new().unwrap();
        let server = InProcessServer::start(tmp.path(), ServerConfig::default()).await;
        let mut alice = register(&server, tmp.path(), "alice").await;
        let mut bob = register(&server, tmp.path(), "bob").await;
        let g = alice.group_create("ops", &["bob"]).await.unwrap();
        texts(&mut bob).await;

        // Alice renames the group; the server applies the commit, and the
        // answer never reaches her (the connection dies first).
        let req = alice
            .p
            .stage_and_remember(g, &|_| {
                Ok(Change {
                    name: Some("renamed".into()),
                    ..Change::default()
                })
            })
            .unwrap()
            .unwrap();
        // A bare connection (the client's own would settle the commit).
        let mut conn = Connection::connect(&alice.p.id.link).await.unwrap();
        let device = alice.p.id.device.id();
        let t = sotto_proto::login_transcript(&conn.hello().challenge, &device);
        let login = sotto_proto::LoginRequest {
            version: sotto_proto::PROTOCOL_VERSION,
            device,
            signature: alice.p.id.device.sign(&t),
        };
        assert!(matches!(
            conn.request(Request::Login(login)).await.unwrap(),
            Response::LoggedIn(_)
        ));
        let r = conn.request(Request::Commit(req.clone())).await.unwrap();
        assert_eq!(r, Response::Committed { epoch: 2 });
        drop(conn);
        assert_eq!(alice.groups().unwrap()[0].epoch, 1, "not merged yet");

        // Her next command settles it: the server answers the same commit
        // with the epoch it produced, and she merges it.
        alice
            .send("renamed", "after the lost answer")
            .await
            .unwrap();
        let info = alice.groups().unwrap();
        assert_eq!((info[0].epoch, info[0].name.as_str()), (2, "renamed"));
        assert_eq!(texts(&mut bob).await, ["after the lost answer"]);
        assert_eq!(bob.groups().unwrap()[0].name, "renamed");
        server.stop().await;
    }
}
