//! Accounts and devices: registration (invite or proof of work), login
//! by a device key's signature over the connection's challenge, the
//! account's signed device list, and blocking another account.

use sotto_proto::{
    AccountId, DeviceId, ErrorCode, LoginRequest, MAX_DEVICES_PER_ACCOUNT, PROTOCOL_VERSION,
    ProtoError, RegisterRequest, Response, RestoreRequest, Session, Signature, SignedDeviceList,
};
use sotto_rules::directory::Entry;
use sotto_rules::signed::{device_list_is_signed, verify};

use super::{Authed, Ctx};
use crate::bus::Bus;
use crate::config::RegistrationMode;
use crate::datadir::invite_hash;
use crate::store::{DeviceListError, DeviceRecord, NewAccount, RegisterError, Store};

impl<S: Store, B: Bus> Ctx<'_, S, B> {
    pub(crate) async fn register(&self, r: RegisterRequest) -> Result<Response, ProtoError> {
        if r.version != PROTOCOL_VERSION {
            return Err(ProtoError::new(ErrorCode::UnsupportedVersion));
        }
        let invite_hash = r.invite.as_deref().map(invite_hash);
        match self.shared.config.registration {
            RegistrationMode::InviteOnly if invite_hash.is_none() => {
                return Err(ProtoError::new(ErrorCode::InviteRequired));
            }
            RegistrationMode::Open { pow_bits } if invite_hash.is_none() => {
                let ok = r.pow_nonce.is_some_and(|n| {
                    sotto_proto::pow::verify(self.challenge, r.handle.as_str(), n, pow_bits)
                });
                if !ok {
                    return Err(ProtoError::new(ErrorCode::ProofOfWorkInvalid));
                }
            }
            _ => {}
        }
        let t = sotto_proto::register_transcript(self.challenge, &r.handle, &r.account, &r.device);
        if !verify(&r.account.0, &t, &r.account_signature)
            || !verify(&r.device.0, &t, &r.device_signature)
        {
            return Err(ProtoError::new(ErrorCode::AuthFailed));
        }
        // Every attempt that reaches the store counts, taken handles too,
        // so registration is no cheap oracle for which handles exist.
        self.shared.sources.registrations.spend(
            self.source,
            &self.shared.config.limits.registrations_per_source,
        )?;
        let res = self
            .shared
            .store
            .register(NewAccount {
                handle: r.handle.clone(),
                account: r.account,
                device: r.device,
                invite_hash,
                now_ms: self.now_ms(),
                device_list: r.device_list.clone(),
            })
            .await;
        match res {
            Ok(()) => {}
            Err(RegisterError::InvalidInvite) => {
                return Err(ProtoError::new(ErrorCode::InvalidInvite));
            }
            Err(RegisterError::HandleTaken) => return Err(ProtoError::new(ErrorCode::HandleTaken)),
            Err(RegisterError::AlreadyRegistered) => {
                return Err(ProtoError::with_message(
                    ErrorCode::InvalidRequest,
                    "keys already registered",
                ));
            }
            Err(RegisterError::Store(e)) => return Err(self.log_store(&e)),
        }
        self.publish_entry(&r.handle, Entry::of(&r.device_list))
            .await;
        let s = Session {
            account: r.account,
            device: r.device,
            handle: r.handle,
            key_packages: 0,
            has_last_resort: false,
            kill_record_version: 0,
        };
        Ok(Response::LoggedIn(s))
    }

    /// Fails closed: a source that failed to authenticate too often waits,
    /// even with a valid signature.
    fn auth_allowed(&self) -> Result<(), ProtoError> {
        let quota = self.shared.config.limits.login_failures_per_source;
        self.shared
            .sources
            .login_failures
            .check(self.source, &quota)
    }

    /// Counts a failed authentication against this source, and answers it.
    fn auth_failed(&self) -> ProtoError {
        let quota = self.shared.config.limits.login_failures_per_source;
        let _ = self
            .shared
            .sources
            .login_failures
            .spend(self.source, &quota);
        ProtoError::new(ErrorCode::AuthFailed)
    }

    pub(crate) async fn login(&self, l: LoginRequest) -> Result<Response, ProtoError> {
        if l.version != PROTOCOL_VERSION {
            return Err(ProtoError::new(ErrorCode::UnsupportedVersion));
        }
        self.auth_allowed()?;
        let rec = self
            .shared
            .store
            .device(l.device)
            .await
            .map_err(|e| self.log_store(&e))?;
        let t = sotto_proto::login_transcript(self.challenge, &l.device);
        // Unknown device, revoked device and bad signature look the same.
        let sig_ok = verify(&l.device.0, &t, &l.signature);
        let Some(rec) = rec.filter(|r| !r.revoked && sig_ok) else {
            return Err(self.auth_failed());
        };
        self.logged_in(l.device, rec).await
    }

    /// The session of a device that proved its key.
    async fn logged_in(&self, device: DeviceId, rec: DeviceRecord) -> Result<Response, ProtoError> {
        let stock = self
            .shared
            .store
            .key_package_stock(device)
            .await
            .map_err(|e| self.log_store(&e))?;
        let kill = self
            .shared
            .store
            .kill_record(rec.account)
            .await
            .map_err(|e| self.log_store(&e))?;
        let s = Session {
            account: rec.account,
            device,
            handle: rec.handle,
            key_packages: stock.one_time,
            has_last_resort: stock.last_resort,
            kill_record_version: kill.map_or(0, |k| k.version),
        };
        Ok(Response::LoggedIn(s))
    }

    /// The device list of the account whose key signed this connection's
    /// challenge: what a device restored from a backup builds its
    /// [`Self::restore`] on. Failures count like failed logins.
    pub(crate) async fn account_device_list(
        &self,
        account: AccountId,
        signature: Signature,
    ) -> Result<Response, ProtoError> {
        self.auth_allowed()?;
        let t = sotto_proto::account_proof_transcript(self.challenge, &account);
        let list = if verify(&account.0, &t, &signature) {
            self.shared
                .store
                .device_list(account)
                .await
                .map_err(|e| self.log_store(&e))?
        } else {
            None
        };
        // Unknown account and bad signature look the same.
        let Some(list) = list else {
            return Err(self.auth_failed());
        };
        let live = self
            .live_devices(list.account, list.devices.iter().copied())
            .await?;
        Ok(Response::AccountDevices { list, live })
    }

    /// Those of `devices` that are live devices of `account` (not revoked,
    /// not forgotten after a wipe).
    async fn live_devices(
        &self,
        account: AccountId,
        devices: impl Iterator<Item = DeviceId>,
    ) -> Result<Vec<DeviceId>, ProtoError> {
        let mut live = Vec::new();
        for d in devices {
            let rec = self
                .shared
                .store
                .device(d)
                .await
                .map_err(|e| self.log_store(&e))?;
            if rec.is_some_and(|r| r.account == account && !r.revoked) {
                live.push(d);
            }
        }
        Ok(live)
    }

    /// A device restored from a backup joins its account on the account
    /// key's signature of the next device list (no other device need be
    /// alive to approve it), and logs in. A repeat whose answer was lost
    /// logs in again.
    pub(crate) async fn restore(&self, r: RestoreRequest) -> Result<Response, ProtoError> {
        if r.version != PROTOCOL_VERSION {
            return Err(ProtoError::new(ErrorCode::UnsupportedVersion));
        }
        self.auth_allowed()?;
        let l = &r.device_list;
        let t = sotto_proto::restore_transcript(self.challenge, &l.account, &r.device);
        let mut unique = l.devices.clone();
        unique.sort();
        unique.dedup();
        let signed = verify(&r.device.0, &t, &r.device_signature) && device_list_is_signed(l);
        let known = self
            .shared
            .store
            .device_list(l.account)
            .await
            .map_err(|e| self.log_store(&e))?;
        let Some(known) = known.filter(|_| signed) else {
            return Err(self.auth_failed());
        };
        if !l.devices.contains(&r.device)
            || unique.len() != l.devices.len()
            || l.devices.len() > MAX_DEVICES_PER_ACCOUNT
        {
            return Err(ProtoError::with_message(
                ErrorCode::InvalidRequest,
                "a device list must name the restored device and hold at most 16 distinct devices",
            ));
        }
        // A wiped or revoked device stays gone: the list names the
        // restored device and live ones only.
        let others = l.devices.iter().copied().filter(|d| *d != r.device);
        if self.live_devices(l.account, others.clone()).await?.len() != others.count() {
            return Err(ProtoError::with_message(
                ErrorCode::InvalidRequest,
                "the list names a device the account no longer has (revoked or wiped)",
            ));
        }
        let rec = self
            .shared
            .store
            .device(r.device)
            .await
            .map_err(|e| self.log_store(&e))?;
        if rec
            .as_ref()
            .is_some_and(|d| d.account != l.account || d.revoked)
        {
            return Err(ProtoError::with_message(
                ErrorCode::InvalidRequest,
                "this device key was revoked, or is another account's",
            ));
        }
        let repeat = known == *l && rec.is_some();
        if !repeat {
            match self
                .shared
                .store
                .publish_device_list(r.device_list.clone(), self.now_ms())
                .await
            {
                Ok(change) => self.shared.wake_revoked(&change.revoked),
                Err(DeviceListError::Stale(v)) => {
                    return Err(ProtoError::with_message(
                        ErrorCode::InvalidRequest,
                        format!("device list version {} is not newer than {v}", l.version),
                    ));
                }
                Err(DeviceListError::ForeignDevice) => {
                    return Err(ProtoError::with_message(
                        ErrorCode::InvalidRequest,
                        "a listed device belongs to another account",
                    ));
                }
                Err(DeviceListError::Store(e)) => return Err(self.log_store(&e)),
            }
        }
        let rec = self
            .shared
            .store
            .device(r.device)
            .await
            .map_err(|e| self.log_store(&e))?
            .filter(|d| !d.revoked && d.account == l.account)
            .ok_or_else(|| ProtoError::new(ErrorCode::Internal))?;
        if !repeat {
            self.publish_entry(&rec.handle, Entry::of(l)).await;
        }
        self.logged_in(r.device, rec).await
    }
}

impl<S: Store, B: Bus> Authed<'_, S, B> {
    pub(crate) async fn publish_devices(
        &self,
        l: SignedDeviceList,
    ) -> Result<Response, ProtoError> {
        let device = self.device();
        let account = self.account();
        let mut unique = l.devices.clone();
        unique.sort();
        unique.dedup();
        let ok = l.account == account
            && l.devices.contains(&device)
            && unique.len() == l.devices.len()
            && l.devices.len() <= MAX_DEVICES_PER_ACCOUNT
            && device_list_is_signed(&l);
        if !ok {
            return Err(ProtoError::with_message(
                ErrorCode::InvalidRequest,
                "a device list must be signed by the account, name this device, and hold at most 16 distinct devices",
            ));
        }
        let version = l.version;
        let entry = Entry::of(&l);
        match self
            .shared
            .store
            .publish_device_list(l, self.now_ms())
            .await
        {
            Ok(change) => {
                // Revoked devices' connections wake up and find themselves revoked.
                self.shared.wake_revoked(&change.revoked);
                self.publish_entry(self.own_handle(), entry).await;
                Ok(Response::DeviceListStored { version })
            }
            Err(DeviceListError::Stale(v)) => Err(ProtoError::with_message(
                ErrorCode::InvalidRequest,
                format!("device list version {version} is not newer than {v}"),
            )),
            Err(DeviceListError::ForeignDevice) => Err(ProtoError::with_message(
                ErrorCode::InvalidRequest,
                "a listed device belongs to another account",
            )),
            Err(DeviceListError::Store(e)) => Err(self.log_store(&e)),
        }
    }

    pub(crate) async fn get_devices(&self, account: AccountId) -> Result<Response, ProtoError> {
        // Reading one's own list is no lookup of anyone.
        if account != self.account() {
            self.lookup_allowed()?;
        }
        match self.shared.store.device_list(account).await {
            Ok(Some(l)) => Ok(Response::DeviceList(l)),
            Ok(None) => Err(ProtoError::new(ErrorCode::UnknownAccount)),
            Err(e) => Err(self.log_store(&e)),
        }
    }

    /// A device of the caller's own account, live.
    pub(crate) async fn own_device(&self, device: DeviceId) -> Result<(), ProtoError> {
        let account = self.account();
        match self.shared.store.device(device).await {
            Ok(Some(r)) if r.account == account && !r.revoked => Ok(()),
            Ok(_) => Err(ProtoError::new(ErrorCode::UnknownAccount)),
            Err(e) => Err(self.log_store(&e)),
        }
    }

    /// This account blocks (or unblocks) `blocked`: its claims of this
    /// account's KeyPackages are refused.
    pub(crate) async fn block(&self, blocked: AccountId, on: bool) -> Result<Response, ProtoError> {
        let account = self.account();
        self.shared
            .store
            .set_block(account, blocked, on)
            .await
            .map_err(|e| self.log_store(&e))?;
        Ok(Response::Acked)
    }
}
