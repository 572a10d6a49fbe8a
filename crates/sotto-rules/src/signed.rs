//! Verification of what accounts sign: device lists, kill-code records,
//! and the wipe orders a kill code proves. Signing and the kill-code KDF
//! live with the keys, in `sotto-core`.

use sha2::{Digest, Sha256};
use sotto_proto::{DeviceId, Signature, SignedDeviceList, SignedKillRecord, WipeOrder};
use subtle::ConstantTimeEq;

/// Whether `sig` is `key`'s Ed25519 signature of `msg` (strict: no
/// malleable or small-order encodings).
pub fn verify(key: &[u8; 32], msg: &[u8], sig: &Signature) -> bool {
    let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(key) else {
        return false;
    };
    vk.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&sig.0))
        .is_ok()
}

/// Whether a device list carries a valid signature of its account's key.
pub fn device_list_is_signed(l: &SignedDeviceList) -> bool {
    let t = sotto_proto::device_list_transcript(&l.account, l.version, &l.devices);
    verify(&l.account.0, &t, &l.signature)
}

/// Whether the account key signed a kill-code record.
pub fn kill_record_is_signed(r: &SignedKillRecord) -> bool {
    verify(
        &r.account.0,
        &sotto_proto::kill_record_transcript(r),
        &r.signature,
    )
}

/// The check value a record keeps instead of a kill-code proof.
pub fn kill_check(proof: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"sotto-kill-check-v1");
    h.update(proof);
    h.finalize().into()
}

/// Constant-time comparison of a proof against a check value.
pub fn kill_proof_matches(proof: &[u8; 32], check_value: &[u8; 32]) -> bool {
    kill_check(proof).ct_eq(check_value).into()
}

/// Whether device `me` must obey `order`: it is for this device, and its
/// proof matches this device's entry in the account's signed record.
pub fn wipe_order_is_valid(order: &WipeOrder, me: DeviceId, record: &SignedKillRecord) -> bool {
    if order.device != me || !kill_record_is_signed(record) {
        return false;
    }
    record
        .devices
        .iter()
        .find(|d| d.device == me)
        .is_some_and(|d| kill_proof_matches(&order.proof, &d.check))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `DeviceId::NONE` (all zeros, the sender of an envelope that names
    /// none) is a point of order 4: with a lax check, a signature of zero
    /// scalar and a small-order R verifies under it for about one message
    /// in four, so anyone could register it. The strict check refuses them.
    #[test]
    fn the_none_device_id_signs_nothing() {
        let mut minus_one = [0xff; 32];
        minus_one[0] = 0xec;
        minus_one[31] = 0x7f;
        let mut minus_t4 = [0; 32];
        minus_t4[31] = 0x80;
        let mut identity = [0; 32];
        identity[0] = 1;
        let small = [identity, minus_one, [0; 32], minus_t4];
        for m in 0..32u8 {
            let msg = sotto_proto::register_transcript(
                &[m; 32],
                &sotto_proto::Handle::new("mallory").unwrap(),
                &sotto_proto::AccountId([1; 32]),
                &DeviceId::NONE,
            );
            for r in small {
                let mut sig = [0; 64];
                sig[..32].copy_from_slice(&r);
                assert!(!verify(&DeviceId::NONE.0, &msg, &Signature(sig)));
            }
        }
    }
}
