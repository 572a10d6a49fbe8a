//! Mail: application messages to a group (only in its current epoch),
//! messages to a device of the same account, and acknowledgements.

use sotto_proto::{
    DeviceId, EnvelopeKind, ErrorCode, MAX_ACKS_PER_FRAME, MAX_PAYLOAD_BYTES, ProtoError, Response,
    SendRequest,
};
use sotto_rules::public;

use super::Authed;
use crate::bus::Bus;
use crate::store::{Outgoing, SendError, Store};

impl<S: Store, B: Bus> Authed<'_, S, B> {
    pub(crate) async fn send(&self, s: SendRequest) -> Result<Response, ProtoError> {
        let device = self.device();
        if s.payload.0.len() > MAX_PAYLOAD_BYTES {
            return Err(ProtoError::new(ErrorCode::TooLarge));
        }
        // Only an MLS application message of this group, and only in the
        // group's current epoch (checked by the store as it stores it): a
        // member meets it before the commit that ends its epoch.
        let Some(epoch) = public::application_epoch(&s.group, &s.payload.0) else {
            return Err(ProtoError::with_message(
                ErrorCode::InvalidRequest,
                "not an MLS application message of this group",
            ));
        };
        let now = self.now_ms();
        let ttl = self.ttl_ms().min(s.ttl_ms.unwrap_or(u64::MAX));
        let m = Outgoing {
            group: s.group,
            sender: device,
            msg_id: s.msg_id,
            kind: EnvelopeKind::Application,
            payload: s.payload.0,
            now_ms: now,
            expires_ms: now.saturating_add(ttl),
            epoch: Some(epoch),
        };
        let envelope = m.envelope();
        match self.shared.store.send(m, self.mailbox_cap()).await {
            Ok(out) => {
                self.shared.post(&envelope, &out.posted);
                self.shared.metrics.messages_accepted.inc();
                Ok(Response::Accepted {
                    duplicate: out.duplicate,
                })
            }
            Err(SendError::NotMember) => Err(ProtoError::new(ErrorCode::NotMember)),
            // Counted with the other errors, by code (`request_errors`).
            Err(SendError::StaleEpoch(current)) => {
                Err(ProtoError::new(ErrorCode::StaleEpoch { current }))
            }
            Err(SendError::MailboxFull) => {
                Err(ProtoError::new(ErrorCode::MailboxFull).retry_after(60_000))
            }
            Err(SendError::Store(e)) => Err(self.log_store(&e)),
        }
    }

    pub(crate) async fn send_to_device(
        &self,
        target: DeviceId,
        msg_id: sotto_proto::MessageId,
        payload: sotto_proto::Blob,
    ) -> Result<Response, ProtoError> {
        let sender = self.device();
        if payload.0.len() > MAX_PAYLOAD_BYTES {
            return Err(ProtoError::new(ErrorCode::TooLarge));
        }
        self.own_device(target).await?;
        let now = self.now_ms();
        let m = Outgoing {
            group: sotto_proto::GroupId([0; 32]),
            sender,
            msg_id,
            kind: EnvelopeKind::Device,
            payload: payload.0,
            now_ms: now,
            expires_ms: now.saturating_add(self.ttl_ms()),
            epoch: None,
        };
        let envelope = m.envelope();
        match self
            .shared
            .store
            .send_to_device(m, target, self.mailbox_cap())
            .await
        {
            Ok(out) => {
                self.shared.post(&envelope, &out.posted);
                self.shared.metrics.messages_accepted.inc();
                Ok(Response::Accepted {
                    duplicate: out.duplicate,
                })
            }
            Err(SendError::MailboxFull) => {
                Err(ProtoError::new(ErrorCode::MailboxFull).retry_after(60_000))
            }
            Err(SendError::NotMember) => Err(ProtoError::new(ErrorCode::UnknownAccount)),
            // Device messages name no epoch.
            Err(SendError::StaleEpoch(_)) => Err(ProtoError::new(ErrorCode::Internal)),
            Err(SendError::Store(e)) => Err(self.log_store(&e)),
        }
    }

    pub(crate) async fn ack(&self, seqs: Vec<u64>) -> Result<Response, ProtoError> {
        let device = self.device();
        if seqs.len() > MAX_ACKS_PER_FRAME {
            return Err(ProtoError::new(ErrorCode::TooLarge));
        }
        self.shared
            .store
            .ack(device, seqs)
            .await
            .map_err(|e| self.log_store(&e))?;
        Ok(Response::Acked)
    }
}
