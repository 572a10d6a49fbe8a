//! Kill codes and wipes: the account's signed kill-code record, the salts
//! a wipe needs (same shape for an unknown handle), and the wipe itself:
//! guesses limited per source and, past the account's allowance, paid
//! with proof of work; counters in the store, shared across nodes.

use sha2::{Digest, Sha256};
use sotto_proto::{
    DeviceId, EnvelopeKind, ErrorCode, MAX_DEVICES_PER_ACCOUNT, ProtoError, Response,
};
use sotto_rules::signed::{kill_proof_matches, kill_record_is_signed};

use super::{Authed, Ctx};
use crate::bus::Bus;
use crate::store::{MailboxCap, Outgoing, SendError, Store};

impl<S: Store, B: Bus> Ctx<'_, S, B> {
    pub(crate) async fn wipe_info(
        &self,
        handle: sotto_proto::Handle,
    ) -> Result<Response, ProtoError> {
        self.lookup_allowed()?;
        let target = self
            .shared
            .store
            .wipe_target(handle.clone())
            .await
            .map_err(|e| self.log_store(&e))?;
        let real = target.and_then(|t| t.record.map(|r| (r, t.devices)));
        Ok(match real {
            Some((r, live)) => Response::WipeInfo {
                server_salt: r.server_salt,
                devices: r
                    .devices
                    .iter()
                    .filter(|d| live.contains(&d.device))
                    .map(|d| (d.device, d.salt))
                    .collect(),
            },
            // Same shape for an unknown account or one without a kill code:
            // salts derived from the handle, stable across calls.
            None => {
                let h = |tag: &[u8]| -> [u8; 32] {
                    let mut d = Sha256::new();
                    d.update(b"sotto-wipe-decoy");
                    d.update(tag);
                    d.update(handle.as_str().as_bytes());
                    d.finalize().into()
                };
                let mut salt = [0u8; 16];
                salt.copy_from_slice(&h(b"server")[..16]);
                let mut dsalt = [0u8; 16];
                dsalt.copy_from_slice(&h(b"device")[..16]);
                Response::WipeInfo {
                    server_salt: salt,
                    devices: vec![(DeviceId(h(b"id")), dsalt)],
                }
            }
        })
    }

    /// The store keys of the kill-code guesses at `account`: the account's
    /// own (every source), and this source's (an IPv4 address, an IPv6 /64,
    /// which one holder has whole). Hashed: the store keeps no address.
    pub(crate) fn guess_keys(&self, account: &sotto_proto::AccountId) -> ([u8; 32], [u8; 32]) {
        let whole = Sha256::new()
            .chain_update(b"sotto-kill-guesses-account-v1\0")
            .chain_update(account.0)
            .finalize()
            .into();
        let prefix: Vec<u8> = match self.source {
            std::net::IpAddr::V4(a) => a.octets().to_vec(),
            std::net::IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => v4.octets().to_vec(),
                None => a.octets()[..8].to_vec(),
            },
        };
        let source = Sha256::new()
            .chain_update(b"sotto-kill-guesses-source-v1\0")
            .chain_update(account.0)
            .chain_update(&prefix)
            .finalize()
            .into();
        (whole, source)
    }

    /// Whether a kill-code guess at `account` may be checked: this source
    /// has wrong guesses left (fail closed, for this source only), and once
    /// the account drew its allowance of wrong guesses from anyone, the
    /// guess carries a proof of work. The right code from another source
    /// is never refused, only made to cost the work.
    pub(crate) async fn guess_allowed(
        &self,
        account: &sotto_proto::AccountId,
        w: &sotto_proto::WipeRequest,
        pow_nonce: Option<u64>,
    ) -> Result<(), ProtoError> {
        let limits = &self.shared.config.limits;
        let (whole, source) = self.guess_keys(account);
        let now = self.now_ms();
        let store = &self.shared.store;
        let mine = store
            .kill_guesses(source, now)
            .await
            .map_err(|e| self.log_store(&e))?;
        if mine.failures >= limits.kill_code_guesses {
            return Err(ProtoError::with_message(
                ErrorCode::RateLimited,
                "too many wrong kill codes",
            )
            .retry_after(mine.until_ms.saturating_sub(now).max(1)));
        }
        let all = store
            .kill_guesses(whole, now)
            .await
            .map_err(|e| self.log_store(&e))?;
        if all.failures >= limits.kill_code_guesses {
            let bits = limits.kill_code_pow_bits;
            let worked = pow_nonce.is_some_and(|n| {
                sotto_proto::pow::verify_wipe(
                    self.challenge,
                    w.handle.as_str(),
                    &w.server_proof,
                    n,
                    bits,
                )
            });
            if !worked {
                return Err(ProtoError::with_message(
                    ErrorCode::ProofOfWorkRequired { bits },
                    "this account drew many wrong kill codes: a proof of work is required",
                ));
            }
        }
        Ok(())
    }

    /// Counts a wrong guess at `account`, for it and for this source.
    pub(crate) async fn guess_failed(&self, account: &sotto_proto::AccountId) -> ProtoError {
        let (whole, source) = self.guess_keys(account);
        let window = u64::try_from(self.shared.config.limits.kill_code_window.as_millis())
            .unwrap_or(u64::MAX);
        match self
            .shared
            .store
            .kill_guess_failed(vec![whole, source], self.now_ms(), window)
            .await
        {
            Ok(()) => ProtoError::new(ErrorCode::InvalidKillCode),
            // A guess that could not be counted was not checked either.
            Err(e) => self.log_store(&e),
        }
    }

    pub(crate) async fn wipe(
        &self,
        w: sotto_proto::WipeRequest,
        pow_nonce: Option<u64>,
    ) -> Result<Response, ProtoError> {
        self.lookup_allowed()?;
        let target = self
            .shared
            .store
            .wipe_target(w.handle.clone())
            .await
            .map_err(|e| self.log_store(&e))?;
        let Some(target) = target else {
            // An unknown handle runs out of guesses like an account does,
            // so the answers do not tell which handles exist.
            let decoy = sotto_proto::AccountId(
                Sha256::new()
                    .chain_update(b"sotto-wipe-decoy-account")
                    .chain_update(w.handle.as_str().as_bytes())
                    .finalize()
                    .into(),
            );
            self.guess_allowed(&decoy, &w, pow_nonce).await?;
            return Err(self.guess_failed(&decoy).await);
        };
        self.guess_allowed(&target.account, &w, pow_nonce).await?;
        let Some(record) = target.record else {
            return Err(self.guess_failed(&target.account).await);
        };
        if !kill_proof_matches(&w.server_proof, &record.server_check) {
            return Err(self.guess_failed(&target.account).await);
        }
        let now = self.now_ms();
        let mut queued = 0u32;
        for (device, proof) in w.proofs.iter().filter(|(d, _)| target.devices.contains(d)) {
            let order = sotto_proto::WipeOrder {
                device: *device,
                proof: *proof,
            };
            let m = Outgoing {
                group: sotto_proto::GroupId([0; 32]),
                sender: *device,
                msg_id: sotto_proto::MessageId(rand::random()),
                kind: EnvelopeKind::Wipe,
                payload: postcard::to_stdvec(&order).unwrap_or_default(),
                now_ms: now,
                expires_ms: now.saturating_add(self.ttl_ms()),
                epoch: None,
            };
            let envelope = m.envelope();
            match self
                .shared
                .store
                .send_to_device(m, *device, MailboxCap::UNLIMITED)
                .await
            {
                Ok(out) => {
                    self.shared.post(&envelope, &out.posted);
                    self.shared.metrics.messages_accepted.inc();
                    queued += 1;
                }
                Err(SendError::Store(e)) => return Err(self.log_store(&e)),
                Err(_) => {}
            }
        }
        tracing::warn!(devices = queued, "wipe orders queued for an account");
        Ok(Response::WipeQueued { devices: queued })
    }
}

impl<S: Store, B: Bus> Authed<'_, S, B> {
    pub(crate) async fn set_kill_code(
        &self,
        r: sotto_proto::SignedKillRecord,
    ) -> Result<Response, ProtoError> {
        let account = self.account();
        if r.account != account
            || !kill_record_is_signed(&r)
            || r.devices.len() > MAX_DEVICES_PER_ACCOUNT
        {
            return Err(ProtoError::with_message(
                ErrorCode::InvalidRequest,
                "a kill-code record must be signed by the account",
            ));
        }
        match self.shared.store.set_kill_record(r).await {
            Ok(true) => Ok(Response::KillCodeStored),
            Ok(false) => Err(ProtoError::with_message(
                ErrorCode::InvalidRequest,
                "a newer kill code is set",
            )),
            Err(e) => Err(self.log_store(&e)),
        }
    }

    pub(crate) async fn get_kill_record(&self) -> Result<Response, ProtoError> {
        let account = self.account();
        let r = self
            .shared
            .store
            .kill_record(account)
            .await
            .map_err(|e| self.log_store(&e))?;
        Ok(Response::KillRecord(r))
    }

    pub(crate) async fn wipe_done(&self) -> Result<Response, ProtoError> {
        let device = self.device();
        self.shared
            .store
            .forget_device(device)
            .await
            .map_err(|e| self.log_store(&e))?;
        Ok(Response::Forgotten)
    }
}
