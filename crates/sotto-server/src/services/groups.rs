//! Groups: commits and proposals checked with `sotto_rules::public` before
//! the store applies them with a compare-and-set on the epoch, the
//! GroupInfo and tree for a member that rejoins, and leaving alone.

use sotto_proto::{
    CommitRequest, DeviceId, EnvelopeKind, ErrorCode, MAX_HANDSHAKE_BYTES, MAX_PAYLOAD_BYTES,
    ProposeRequest, ProtoError, Response,
};
use sotto_rules::RuleError;
use sotto_rules::public;

use super::{Authed, Ctx, refused};
use crate::bus::Bus;
use crate::store::{CommitError, CommitWrite, Outgoing, ProposalWrite, Store};

impl<S: Store, B: Bus> Ctx<'_, S, B> {
    pub(crate) fn outgoing(
        &self,
        c: &CommitRequest,
        kind: EnvelopeKind,
        payload: Vec<u8>,
        sender: DeviceId,
    ) -> Outgoing {
        let now = self.now_ms();
        Outgoing {
            group: c.group,
            sender,
            msg_id: c.msg_id,
            kind,
            payload,
            now_ms: now,
            expires_ms: now.saturating_add(self.ttl_ms()),
            epoch: None,
        }
    }
}

impl<S: Store, B: Bus> Authed<'_, S, B> {
    /// A commit, checked against the group's public state
    /// (`sotto_rules::public`) before the store applies it with a
    /// compare-and-set on the epoch: the server accepts only commits every
    /// member will apply, and routes to the members the tree names.
    pub(crate) async fn commit(&self, mut c: CommitRequest) -> Result<Response, ProtoError> {
        let device = self.device();
        let too_big = [
            Some(&c.commit),
            Some(&c.group_info),
            c.welcome.as_ref(),
            c.base.as_ref(),
        ]
        .into_iter()
        .flatten()
        .any(|b| b.0.len() > MAX_HANDSHAKE_BYTES);
        if too_big {
            return Err(ProtoError::new(ErrorCode::TooLarge));
        }
        // A repeat of a commit whose answer was lost: its epoch, nothing else.
        match self.shared.store.applied_commit(device, c.msg_id).await {
            Ok(Some(epoch)) => return Ok(Response::Committed { epoch }),
            Ok(None) => {}
            Err(e) => return Err(self.log_store(&e)),
        }
        let held = match self.shared.store.group_state(c.group).await {
            Ok(h) => h,
            Err(e) => return Err(self.log_store(&e)),
        };
        match &held {
            Some(h) if h.epoch != c.epoch => {
                return Err(ProtoError::new(ErrorCode::StaleEpoch { current: h.epoch }));
            }
            None if c.epoch != 0 => {
                return Err(ProtoError::with_message(
                    ErrorCode::NotMember,
                    "the server holds no such conversation",
                ));
            }
            _ => {}
        }
        let (group, welcome) = (c.group, c.welcome.is_some());
        // The bytes go to the check and come back for the store (a commit
        // or GroupInfo may be megabytes: not copied).
        let commit = std::mem::take(&mut c.commit.0);
        let group_info = std::mem::take(&mut c.group_info.0);
        let base = c.base.take();
        let (accepted, commit, group_info) = tokio::task::spawn_blocking(move || {
            let crypto = openmls_libcrux_crypto::CryptoProvider::new()
                .map_err(|e| RuleError::Internal(format!("{e:?}")))?;
            let start = match (&held, &base) {
                (Some(h), None) => public::Start::Held(public::Held {
                    state: &h.state,
                    proposals: &h.proposals,
                }),
                (None, Some(b)) => public::Start::Base(&b.0),
                (Some(_), Some(_)) => {
                    return Err(RuleError::Refused("the group exists already".into()));
                }
                (None, None) => {
                    return Err(RuleError::Refused("a new group needs its base".into()));
                }
            };
            let check = public::CommitCheck {
                group: &group,
                sender: device,
                start,
                commit: &commit,
                group_info: &group_info,
                has_welcome: welcome,
            };
            public::check_commit(&crypto, &check).map(|a| (a, commit, group_info))
        })
        .await
        .map_err(|_| ProtoError::new(ErrorCode::Internal))?
        .map_err(refused)?;
        if accepted.members.len() > self.shared.config.limits.max_group_devices {
            return Err(ProtoError::new(ErrorCode::TooLarge));
        }
        let welcome = c.welcome.take();
        let w = CommitWrite {
            state: accepted.state,
            group_info,
            commit: Some(self.outgoing(&c, EnvelopeKind::Commit, commit, device)),
            welcome: welcome.map(|w| self.outgoing(&c, EnvelopeKind::Welcome, w.0, device)),
            welcome_recipients: accepted.added,
            group: c.group,
            sender: device,
            epoch: c.epoch,
            members: accepted.members,
            joins: accepted.joined,
            mailbox_cap: self.mailbox_cap(),
            msg_id: c.msg_id,
            expires_ms: self.now_ms().saturating_add(self.ttl_ms()),
        };
        let commit_envelope = w.commit.as_ref().map(Outgoing::envelope);
        let welcome_envelope = w.welcome.as_ref().map(Outgoing::envelope);
        match self.shared.store.commit(w).await {
            Ok(out) => {
                if let Some(e) = &commit_envelope {
                    self.shared.post(e, &out.commit);
                }
                if let Some(e) = &welcome_envelope {
                    self.shared.post(e, &out.welcome);
                }
                self.shared.metrics.messages_accepted.inc();
                Ok(Response::Committed { epoch: out.epoch })
            }
            Err(e) => Err(self.commit_error(e)),
        }
    }

    /// The answer to a commit or proposal the store did not apply.
    pub(crate) fn commit_error(&self, e: CommitError) -> ProtoError {
        match e {
            CommitError::StaleEpoch(current) => ProtoError::new(ErrorCode::StaleEpoch { current }),
            CommitError::NotMember => ProtoError::new(ErrorCode::NotMember),
            CommitError::MailboxFull => ProtoError::new(ErrorCode::MailboxFull).retry_after(60_000),
            CommitError::Store(e) => self.log_store(&e),
        }
    }

    /// A member's proposal (its own leave), checked like a commit, queued
    /// for the epoch's next commit and delivered to the other members.
    pub(crate) async fn propose(&self, p: ProposeRequest) -> Result<Response, ProtoError> {
        let device = self.device();
        if p.proposal.0.len() > MAX_PAYLOAD_BYTES {
            return Err(ProtoError::new(ErrorCode::TooLarge));
        }
        let held = match self.shared.store.group_state(p.group).await {
            Ok(Some(h)) => h,
            Ok(None) => return Err(ProtoError::new(ErrorCode::NotMember)),
            Err(e) => return Err(self.log_store(&e)),
        };
        let epoch = held.epoch;
        let (group, proposal) = (p.group, p.proposal.0.clone());
        tokio::task::spawn_blocking(move || {
            let crypto = openmls_libcrux_crypto::CryptoProvider::new()
                .map_err(|e| RuleError::Internal(format!("{e:?}")))?;
            let held = public::Held {
                state: &held.state,
                proposals: &held.proposals,
            };
            public::check_proposal(&crypto, &group, device, held, &proposal)
        })
        .await
        .map_err(|_| ProtoError::new(ErrorCode::Internal))?
        .map_err(refused)?;
        let now = self.now_ms();
        let w = ProposalWrite {
            message: Outgoing {
                group: p.group,
                sender: device,
                msg_id: p.msg_id,
                kind: EnvelopeKind::Proposal,
                payload: p.proposal.0,
                now_ms: now,
                expires_ms: now.saturating_add(self.ttl_ms()),
                epoch: None,
            },
            epoch,
            mailbox_cap: self.mailbox_cap(),
        };
        let envelope = w.message.envelope();
        match self.shared.store.propose(w).await {
            Ok(out) => {
                self.shared.post(&envelope, &out.posted);
                self.shared.metrics.messages_accepted.inc();
                Ok(Response::Accepted {
                    duplicate: out.duplicate,
                })
            }
            Err(e) => Err(self.commit_error(e)),
        }
    }

    /// The GroupInfo and ratchet tree of a group, for a device of one of
    /// its member accounts, to join it by external commit: a member device
    /// that lost its state, or a new device restored from a backup.
    pub(crate) async fn group_info(
        &self,
        group: sotto_proto::GroupId,
    ) -> Result<Response, ProtoError> {
        let account = self.account();
        let held = match self.shared.store.group_state(group).await {
            Ok(Some(h)) => h,
            Ok(None) => return Err(ProtoError::new(ErrorCode::NotMember)),
            Err(e) => return Err(self.log_store(&e)),
        };
        let (epoch, group_info) = (held.epoch, held.group_info.clone());
        let tree = tokio::task::spawn_blocking(move || {
            public::ratchet_tree_for(&group, &held.state, account)
        })
        .await
        .map_err(|_| ProtoError::new(ErrorCode::Internal))?
        .map_err(|e| {
            tracing::error!(error = %e, "a stored group state does not load");
            ProtoError::new(ErrorCode::Internal)
        })?;
        let Some(ratchet_tree) = tree else {
            return Err(ProtoError::new(ErrorCode::NotMember));
        };
        Ok(Response::GroupInfo {
            epoch,
            group_info: sotto_proto::Blob(group_info),
            ratchet_tree: sotto_proto::Blob(ratchet_tree),
        })
    }

    /// This device leaves `group` alone: no more routing of it here.
    pub(crate) async fn leave(&self, group: sotto_proto::GroupId) -> Result<Response, ProtoError> {
        let device = self.device();
        self.shared
            .store
            .leave_group(group, device)
            .await
            .map_err(|e| self.log_store(&e))?;
        Ok(Response::Acked)
    }
}
