//! The key directory's requests (`crate::directory`): its VRF key and
//! newest root, lookup proofs, a handle's history (a device's own), and append-only
//! proofs for auditors; and [`Ctx::publish_entry`], which every change of
//! an account's key or device list goes through.
//!
//! The directory follows the store: an entry the store has and the
//! directory does not (a publish that failed after its account was
//! stored, or an account registered before the directory existed) is
//! published when someone looks it up, before the proof is made.

use sotto_proto::{Blob, DirectoryRoot, ErrorCode, Handle, ProtoError, Response};
use sotto_rules::directory::Entry;

use super::{Authed, Ctx};
use crate::bus::Bus;
use crate::directory::DirectoryError;
use crate::store::Store;

impl<S: Store, B: Bus> Ctx<'_, S, B> {
    fn directory_failed(&self, e: &DirectoryError) -> ProtoError {
        match e {
            DirectoryError::Unknown => ProtoError::new(ErrorCode::UnknownHandle),
            DirectoryError::Store(e) => self.log_store(e),
            DirectoryError::Range(why) => ProtoError::with_message(ErrorCode::InvalidRequest, *why),
            DirectoryError::Akd(why) => {
                tracing::error!(error = %why, "key directory failed");
                ProtoError::new(ErrorCode::Internal)
            }
        }
    }

    /// Publishes the entry of a changed account. The change is stored
    /// already; if publishing fails, the next lookup publishes it.
    pub(crate) async fn publish_entry(&self, handle: &Handle, entry: Entry) {
        if let Err(e) = self.shared.directory.publish(handle, entry).await {
            tracing::warn!(error = %e, "key directory entry not published yet");
        }
    }

    /// The entry the store holds for `handle`.
    async fn stored_entry(&self, handle: &Handle) -> Result<Entry, ProtoError> {
        let store = &self.shared.store;
        let account = match store.wipe_target(handle.clone()).await {
            Ok(Some(t)) => t.account,
            Ok(None) => return Err(ProtoError::new(ErrorCode::UnknownHandle)),
            Err(e) => return Err(self.log_store(&e)),
        };
        match store.device_list(account).await {
            Ok(Some(l)) => Ok(Entry::of(&l)),
            Ok(None) => Err(ProtoError::new(ErrorCode::UnknownHandle)),
            Err(e) => Err(self.log_store(&e)),
        }
    }

    /// Publishes the stored entry of `handle` if the directory's newest
    /// differs from it (or is missing). Returns the lookup proof it made
    /// when nothing had to be published (it is the current one).
    async fn catch_up(
        &self,
        handle: &Handle,
    ) -> Result<Option<(DirectoryRoot, Vec<u8>)>, ProtoError> {
        let stored = self.stored_entry(handle).await?;
        match self.shared.directory.lookup(handle).await {
            Ok((root, proof)) => {
                let current = sotto_rules::directory::decode_lookup(&proof)
                    .ok()
                    .and_then(|p| Entry::parse(&p.value.0).ok());
                if current == Some(stored) {
                    return Ok(Some((root, proof)));
                }
            }
            Err(DirectoryError::Unknown) => {}
            Err(e) => return Err(self.directory_failed(&e)),
        }
        self.publish_stored(handle, stored).await?;
        Ok(None)
    }

    async fn publish_stored(&self, handle: &Handle, stored: Entry) -> Result<(), ProtoError> {
        self.shared
            .directory
            .publish(handle, stored)
            .await
            .map(drop)
            .map_err(|e| self.directory_failed(&e))
    }

    /// The VRF public key and the newest root.
    pub(crate) async fn directory_info(&self) -> Result<Response, ProtoError> {
        let root = self
            .shared
            .directory
            .current()
            .await
            .map_err(|e| self.directory_failed(&e))?;
        Ok(Response::DirectoryInfo {
            vrf_key: self.shared.directory.vrf_public(),
            root,
        })
    }

    /// The append-only proof between two epochs (costly to make: counted
    /// against the source's lookup quota).
    pub(crate) async fn directory_audit(&self, from: u64, to: u64) -> Result<Response, ProtoError> {
        self.lookup_allowed()?;
        let (roots, proof) = self
            .shared
            .directory
            .audit(from, to)
            .await
            .map_err(|e| self.directory_failed(&e))?;
        Ok(Response::DirectoryAudit {
            roots,
            proof: Blob(proof),
        })
    }
}

impl<S: Store, B: Bus> Authed<'_, S, B> {
    /// A lookup proof for `handle`, counted like any lookup by handle.
    pub(crate) async fn directory_lookup(&self, handle: Handle) -> Result<Response, ProtoError> {
        self.lookup_allowed()?;
        let (root, proof) = match self.catch_up(&handle).await? {
            Some(current) => current,
            None => self
                .shared
                .directory
                .lookup(&handle)
                .await
                .map_err(|e| self.directory_failed(&e))?,
        };
        Ok(Response::DirectoryProof {
            root,
            proof: Blob(proof),
        })
    }

    /// A handle's history (a device asks for its own; the server does not
    /// tell it which handle is its own, so that a server that renamed the
    /// account shows the device a history it can check). Counted like any
    /// lookup by handle.
    pub(crate) async fn directory_history(&self, handle: Handle) -> Result<Response, ProtoError> {
        self.lookup_allowed()?;
        // Every device asks this at every login: the history proof itself
        // names the newest entry, so it is compared with the store without
        // a lookup proof made only for that; it is made again only when
        // the store's entry had to be published first.
        let stored = self.stored_entry(&handle).await?;
        match self.shared.directory.history(&handle).await {
            Ok((root, proof)) => {
                let newest = sotto_rules::directory::decode_history(&proof)
                    .ok()
                    .and_then(|h| {
                        let newest = h.update_proofs.iter().max_by_key(|u| u.version)?;
                        Entry::parse(&newest.value.0).ok()
                    });
                if newest == Some(stored) {
                    return Ok(Response::DirectoryProof {
                        root,
                        proof: Blob(proof),
                    });
                }
            }
            Err(DirectoryError::Unknown) => {}
            Err(e) => return Err(self.directory_failed(&e)),
        }
        self.publish_stored(&handle, stored).await?;
        let (root, proof) = self
            .shared
            .directory
            .history(&handle)
            .await
            .map_err(|e| self.directory_failed(&e))?;
        Ok(Response::DirectoryProof {
            root,
            proof: Blob(proof),
        })
    }
}
