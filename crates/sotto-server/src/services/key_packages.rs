//! KeyPackages: a device's upload, and claims by others (one-time first,
//! then the last resort), limited per claimer and per target.

use sha2::{Digest, Sha256};
use sotto_proto::{
    ClaimedKeyPackage, ClaimedKeyPackages, DeviceId, ErrorCode, MAX_KEY_PACKAGES_PER_UPLOAD,
    ProtoError, Response, UploadKeyPackages,
};

use super::Authed;
use crate::bus::Bus;
use crate::store::{Store, StoredKeyPackage};

impl<S: Store, B: Bus> Authed<'_, S, B> {
    pub(crate) async fn upload(&self, u: UploadKeyPackages) -> Result<Response, ProtoError> {
        let device = self.device();
        let limits = &self.shared.config.limits;
        if u.key_packages.len() > MAX_KEY_PACKAGES_PER_UPLOAD {
            return Err(ProtoError::with_message(
                ErrorCode::TooLarge,
                "too many key packages",
            ));
        }
        let all = u.key_packages.iter().chain(u.last_resort.iter());
        if all
            .clone()
            .any(|kp| kp.0.len() > limits.max_key_package_bytes || kp.0.is_empty())
        {
            return Err(ProtoError::with_message(
                ErrorCode::TooLarge,
                "key package too large",
            ));
        }
        let conv = |b: sotto_proto::Blob| StoredKeyPackage {
            hash: Sha256::digest(&b.0).into(),
            data: b.0,
        };
        let one_time = u.key_packages.into_iter().map(conv).collect();
        let last_resort = u.last_resort.map(conv);
        let stock = self
            .shared
            .store
            .upload_key_packages(device, one_time, last_resort, limits.max_key_packages)
            .await
            .map_err(|e| self.log_store(&e))?;
        Ok(Response::KeyPackagesStored {
            available: stock.one_time,
        })
    }

    pub(crate) async fn claim(&self, handle: sotto_proto::Handle) -> Result<Response, ProtoError> {
        let claimer = self.device();
        self.lookup_allowed()?;
        self.shared
            .claims
            .spend(&self.shared.config.limits, claimer, &handle)?;
        // Someone who blocked this account is, to it, a handle without an
        // account: no KeyPackage to add them with.
        let account = self.account();
        if self
            .shared
            .store
            .blocked_by(handle.clone(), account)
            .await
            .map_err(|e| self.log_store(&e))?
        {
            return Err(ProtoError::new(ErrorCode::UnknownHandle));
        }
        let got = self
            .shared
            .store
            .claim_key_packages(handle)
            .await
            .map_err(|e| self.log_store(&e))?;
        let Some((account, claimed)) = got else {
            return Err(ProtoError::new(ErrorCode::UnknownHandle));
        };
        if claimed.is_empty() {
            return Err(ProtoError::new(ErrorCode::NoKeyPackages));
        }
        self.key_packages(account, claimed).await
    }

    /// Claimed KeyPackages with the account's signed device list.
    pub(crate) async fn key_packages(
        &self,
        account: sotto_proto::AccountId,
        claimed: Vec<crate::store::Claimed>,
    ) -> Result<Response, ProtoError> {
        let device_list = self
            .shared
            .store
            .device_list(account)
            .await
            .map_err(|e| self.log_store(&e))?
            .ok_or_else(|| ProtoError::new(ErrorCode::Internal))?;
        Ok(Response::KeyPackages(ClaimedKeyPackages {
            device_list,
            account,
            devices: claimed
                .into_iter()
                .map(|c| ClaimedKeyPackage {
                    device: c.device,
                    key_package: sotto_proto::Blob(c.data),
                    last_resort: c.last_resort,
                })
                .collect(),
        }))
    }

    pub(crate) async fn claim_device(&self, device: DeviceId) -> Result<Response, ProtoError> {
        self.own_device(device).await?;
        let account = self.account();
        let claimed = self
            .shared
            .store
            .claim_device_key_package(device)
            .await
            .map_err(|e| self.log_store(&e))?
            .ok_or_else(|| ProtoError::new(ErrorCode::NoKeyPackages))?;
        self.key_packages(account, vec![claimed]).await
    }
}
