//! The server's requests as services, one module per concern: accounts and
//! login ([`accounts`]), KeyPackages ([`key_packages`]), groups and commits
//! ([`groups`]), sending and mailboxes ([`mail`]), kill codes and wipes
//! ([`kill`]), attachments ([`blobs`]), the key directory ([`directory`]). The connection ([`crate::conn`])
//! keeps the transport and hands each request here.
//!
//! A handler that needs a device is a method of [`Authed`], which only a
//! connection with a session can make ([`Authed::new`] takes the session
//! the login or registration produced): an unauthenticated connection has
//! no way to reach one. What anyone may ask (register, log in, the wipe
//! requests, ping) are methods of [`Ctx`].

pub(crate) mod accounts;
pub(crate) mod blobs;
pub(crate) mod directory;
pub(crate) mod groups;
pub(crate) mod key_packages;
pub(crate) mod kill;
pub(crate) mod mail;

use std::net::IpAddr;
use std::time::Duration;

use sotto_proto::{AccountId, DeviceId, ErrorCode, ProtoError, Request, Response, Session};
use sotto_rules::RuleError;

use crate::bus::Bus;
use crate::shared::Shared;
use crate::store::{MailboxCap, Store, StoreError};

/// What a handler sees of its connection.
pub(crate) struct Ctx<'a, S, B> {
    /// The node's shared state.
    pub(crate) shared: &'a Shared<S, B>,
    /// The peer's address, for per-source quotas (never logged).
    pub(crate) source: IpAddr,
    /// The connection's login challenge.
    pub(crate) challenge: &'a [u8; 32],
}

/// What a handler sees of an authenticated connection: the device that
/// logged in, and its account.
pub(crate) struct Authed<'a, S, B> {
    ctx: Ctx<'a, S, B>,
    session: &'a Session,
}

impl<'a, S, B> std::ops::Deref for Authed<'a, S, B> {
    type Target = Ctx<'a, S, B>;

    fn deref(&self) -> &Self::Target {
        &self.ctx
    }
}

impl<'a, S, B> Authed<'a, S, B> {
    /// The handlers of a connection that logged in as `session`.
    pub(crate) fn new(ctx: Ctx<'a, S, B>, session: &'a Session) -> Self {
        Self { ctx, session }
    }

    /// The authenticated device.
    pub(crate) fn device(&self) -> DeviceId {
        self.session.device
    }

    /// Its account.
    pub(crate) fn account(&self) -> AccountId {
        self.session.account
    }

    /// Its account's handle.
    pub(crate) fn own_handle(&self) -> &sotto_proto::Handle {
        &self.session.handle
    }
}

impl<S: Store, B: Bus> Authed<'_, S, B> {
    /// Answers a request of a logged-in device.
    pub(crate) async fn handle(&self, req: Request) -> Result<Response, ProtoError> {
        match req {
            Request::UploadKeyPackages(u) => self.upload(u).await,
            Request::ClaimKeyPackages { handle } => self.claim(handle).await,
            Request::Commit(c) => self.commit(c).await,
            Request::Send(s) => self.send(s).await,
            Request::Ack { seqs } => self.ack(seqs).await,
            Request::PublishDeviceList(l) => self.publish_devices(l).await,
            Request::GetDeviceList { account } => self.get_devices(account).await,
            Request::ClaimDeviceKeyPackage { device } => self.claim_device(device).await,
            Request::SendToDevice {
                device,
                msg_id,
                payload,
            } => self.send_to_device(device, msg_id, payload).await,
            Request::SetKillCode(r) => self.set_kill_code(r).await,
            Request::GetKillRecord => self.get_kill_record().await,
            Request::WipeDone => self.wipe_done().await,
            Request::PutBlob(b) => self.put_blob(b).await,
            Request::GetBlob { blob, offset } => self.get_blob(blob, offset).await,
            Request::BlobFetched { blob } => self.blob_fetched(blob).await,
            Request::Propose(p) => self.propose(p).await,
            Request::GetGroupInfo { group } => self.group_info(group).await,
            Request::Block { account } => self.block(account, true).await,
            Request::Unblock { account } => self.block(account, false).await,
            Request::Leave { group } => self.leave(group).await,
            Request::DirectoryLookup { handle } => self.directory_lookup(handle).await,
            Request::DirectoryHistory { handle } => self.directory_history(handle).await,
            // Answered by the connection before it gets here.
            Request::Ping
            | Request::Register(_)
            | Request::Login(_)
            | Request::AccountDeviceList { .. }
            | Request::Restore(_)
            | Request::DirectoryInfo
            | Request::DirectoryAudit { .. }
            | Request::WipeInfo { .. }
            | Request::Wipe(_)
            | Request::WipeWithWork { .. } => Err(ProtoError::new(ErrorCode::InvalidRequest)),
        }
    }
}

impl<S: Store, B> Ctx<'_, S, B> {
    /// Now, on the node's wall clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.shared.clock.now_ms()
    }

    /// Counts a store failure and maps it to what the client is told (the
    /// detail goes to the log only).
    pub(crate) fn log_store(&self, e: &StoreError) -> ProtoError {
        self.shared.metrics.store_failed("request", e);
        match e {
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "store unavailable; client told to retry");
            }
            StoreError::Internal(_) => tracing::error!(error = %e, "store operation failed"),
        }
        store_error(e)
    }

    /// Counts a lookup by handle or account against the source's quota.
    pub(crate) fn lookup_allowed(&self) -> Result<(), ProtoError> {
        self.shared
            .sources
            .lookups
            .spend(self.source, &self.shared.config.limits.lookups_per_source)
    }

    /// The cap of every recipient's mailbox.
    pub(crate) fn mailbox_cap(&self) -> MailboxCap {
        let l = &self.shared.config.limits;
        MailboxCap {
            messages: l.mailbox_max_messages,
            bytes: l.mailbox_max_bytes,
        }
    }

    /// The mailbox TTL in milliseconds.
    pub(crate) fn ttl_ms(&self) -> u64 {
        ttl_ms(&self.shared.config.mailbox_ttl)
    }
}

/// What a client is told of a store failure.
pub(crate) fn store_error(e: &StoreError) -> ProtoError {
    match e {
        StoreError::Unavailable(_) => ProtoError::new(ErrorCode::Unavailable).retry_after(1000),
        StoreError::Internal(_) => ProtoError::new(ErrorCode::Internal),
    }
}

fn ttl_ms(d: &Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A commit or proposal the checks refused: the client is told why (the
/// reason names a rule or an MLS check, never a secret).
fn refused(e: RuleError) -> ProtoError {
    match e {
        RuleError::Internal(why) => {
            tracing::error!(error = %why, "checking a group change failed");
            ProtoError::new(ErrorCode::Internal)
        }
        e => ProtoError::with_message(ErrorCode::InvalidCommit, e.to_string()),
    }
}
