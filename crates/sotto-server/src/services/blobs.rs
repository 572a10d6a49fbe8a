//! Attachments: encrypted blobs uploaded in chunks by a member of a group,
//! fetched by the members the uploader named, deleted once all fetched.

use sotto_proto::{ErrorCode, ProtoError, Response};

use super::Authed;
use crate::bus::Bus;
use crate::store::Store;

impl<S: Store, B: Bus> Authed<'_, S, B> {
    pub(crate) async fn put_blob(&self, b: sotto_proto::PutBlob) -> Result<Response, ProtoError> {
        let device = self.device();
        if b.total > self.shared.config.limits.max_attachment_bytes {
            return Err(ProtoError::with_message(
                ErrorCode::TooLarge,
                format!(
                    "file too large: this server accepts attachments of up to {} MiB",
                    self.shared.config.limits.max_attachment_bytes / (1024 * 1024)
                ),
            ));
        }
        let end = b.offset.saturating_add(b.data.0.len() as u64);
        if b.data.0.len() > sotto_proto::MAX_BLOB_CHUNK || end > b.total {
            return Err(ProtoError::new(ErrorCode::TooLarge));
        }
        let expires = self.now_ms().saturating_add(self.ttl_ms());
        let state = self
            .shared
            .store
            .begin_blob(b.blob, device, b.group, b.total, expires)
            .await
            .map_err(|e| self.log_store(&e))?
            .ok_or_else(|| ProtoError::new(ErrorCode::NotMember))?;
        if state.total != b.total {
            return Err(ProtoError::with_message(
                ErrorCode::InvalidRequest,
                "blob size changed",
            ));
        }
        if b.offset != state.received {
            // A retried chunk that already arrived is acknowledged again.
            return Ok(Response::BlobProgress {
                received: state.received,
                complete: state.received == state.total,
            });
        }
        let blobs = self.shared.blobs.clone();
        let (id, offset, data) = (b.blob, b.offset, b.data.0);
        tokio::task::spawn_blocking(move || blobs.append(id, offset, &data))
            .await
            .map_err(|_| ProtoError::new(ErrorCode::Internal))?
            .map_err(|e| self.log_store(&e))?;
        self.shared
            .store
            .blob_progress(b.blob, end)
            .await
            .map_err(|e| self.log_store(&e))?;
        Ok(Response::BlobProgress {
            received: end,
            complete: end == b.total,
        })
    }

    pub(crate) async fn get_blob(
        &self,
        blob: sotto_proto::BlobId,
        offset: u64,
    ) -> Result<Response, ProtoError> {
        let device = self.device();
        let state = self
            .shared
            .store
            .blob_for(blob, device, self.now_ms())
            .await
            .map_err(|e| self.log_store(&e))?
            .filter(|s| s.received == s.total)
            .ok_or_else(|| ProtoError::new(ErrorCode::UnknownBlob))?;
        if offset > state.total {
            return Err(ProtoError::new(ErrorCode::InvalidRequest));
        }
        let blobs = self.shared.blobs.clone();
        let data = tokio::task::spawn_blocking(move || {
            blobs.read(blob, offset, sotto_proto::MAX_BLOB_CHUNK)
        })
        .await
        .map_err(|_| ProtoError::new(ErrorCode::Internal))?
        .map_err(|e| self.log_store(&e))?;
        Ok(Response::BlobData {
            total: state.total,
            data: sotto_proto::Blob(data),
        })
    }

    pub(crate) async fn blob_fetched(
        &self,
        blob: sotto_proto::BlobId,
    ) -> Result<Response, ProtoError> {
        let device = self.device();
        let gone = self
            .shared
            .store
            .blob_fetched(blob, device)
            .await
            .map_err(|e| self.log_store(&e))?;
        if gone {
            let blobs = self.shared.blobs.clone();
            let _ = tokio::task::spawn_blocking(move || blobs.delete(blob)).await;
        }
        Ok(Response::Acked)
    }
}
