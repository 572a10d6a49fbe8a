//! Kill codes: the owner's secret that orders a remote wipe. Neither the
//! devices nor the server keep the code: each keeps the check value
//! SHA-256(Argon2id(code, its own salt)); a wiping client proves the code by
//! sending Argon2id(code, salt) for the server and for every device. A
//! device obeys a wipe order only if the order is for its own device id and
//! the proof matches the check value in the account's kill-code record,
//! which the account key signed, so a server without the code cannot forge
//! a wipe, and an order for one device is worthless against another.
//!
//! The check values allow offline guessing of the code by whoever holds one
//! (the server, or a thief of the unlocked store), slowed by Argon2id
//! (19 MiB, two passes): a kill code must be long enough to resist that.

use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use sotto_proto::{DeviceId, DeviceKill, Handle, SignedKillRecord, WipeRequest};
use zeroize::Zeroizing;

use crate::error::CoreError;
use crate::identity::AccountKey;

/// Fewest characters a kill code may have.
pub const MIN_KILL_CODE_LEN: usize = 8;

fn kdf() -> Result<Argon2<'static>, CoreError> {
    // OWASP's minimum for Argon2id: 19 MiB, 2 iterations, 1 lane.
    let params =
        Params::new(19 * 1024, 2, 1, Some(32)).map_err(|e| CoreError::Internal(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Argon2id(secret, salt): what proves knowledge of a kill code or duress passphrase.
pub fn proof(secret: &str, salt: &[u8; 16]) -> Result<Zeroizing<[u8; 32]>, CoreError> {
    let mut out = Zeroizing::new([0u8; 32]);
    kdf()?
        .hash_password_into(secret.as_bytes(), salt, &mut out[..])
        .map_err(|e| CoreError::Internal(e.to_string()))?;
    Ok(out)
}

pub use sotto_rules::signed::{
    kill_check as check, kill_proof_matches as matches, kill_record_is_signed as record_is_signed,
    wipe_order_is_valid as order_is_valid,
};

fn salt() -> [u8; 16] {
    let mut s = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut s);
    s
}

/// A new kill-code record for `devices`, signed by the account key.
pub fn make_record(
    account: &AccountKey,
    version: u64,
    code: &str,
    devices: &[DeviceId],
) -> Result<SignedKillRecord, CoreError> {
    if code.chars().count() < MIN_KILL_CODE_LEN {
        return Err(CoreError::Rejected(format!(
            "a kill code has at least {MIN_KILL_CODE_LEN} characters"
        )));
    }
    let server_salt = salt();
    let server_check = check(&*proof(code, &server_salt)?);
    let mut entries = Vec::with_capacity(devices.len());
    for d in devices {
        let s = salt();
        entries.push(DeviceKill {
            device: *d,
            salt: s,
            check: check(&*proof(code, &s)?),
        });
    }
    let mut r = SignedKillRecord {
        account: account.id(),
        version,
        server_salt,
        server_check,
        devices: entries,
        signature: sotto_proto::Signature([0; 64]),
    };
    r.signature = account.sign(&sotto_proto::kill_record_transcript(&r));
    Ok(r)
}

/// The wipe request for an account, from its salts and the code.
pub fn wipe_request(
    code: &str,
    handle: Handle,
    server_salt: &[u8; 16],
    devices: &[(DeviceId, [u8; 16])],
) -> Result<WipeRequest, CoreError> {
    let mut proofs = Vec::with_capacity(devices.len());
    for (d, s) in devices {
        proofs.push((*d, *proof(code, s)?));
    }
    Ok(WipeRequest {
        handle,
        server_proof: *proof(code, server_salt)?,
        proofs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_proto::WipeOrder;

    #[test]
    fn orders_are_checked_against_the_signed_record() {
        let account = AccountKey::generate();
        let (a, b) = (DeviceId([1; 32]), DeviceId([2; 32]));
        let r = make_record(&account, 1, "correct kill code", &[a, b]).unwrap();
        assert!(record_is_signed(&r));
        let salts: Vec<_> = r.devices.iter().map(|d| (d.device, d.salt)).collect();
        let req = wipe_request(
            "correct kill code",
            Handle::new("alice").unwrap(),
            &r.server_salt,
            &salts,
        )
        .unwrap();
        assert!(matches(&req.server_proof, &r.server_check));
        let order_a = WipeOrder {
            device: a,
            proof: req.proofs[0].1,
        };
        assert!(order_is_valid(&order_a, a, &r));
        // Bound to its device: a's proof is worthless for b, even relabelled.
        assert!(!order_is_valid(&order_a, b, &r));
        let relabelled = WipeOrder {
            device: b,
            proof: req.proofs[0].1,
        };
        assert!(!order_is_valid(&relabelled, b, &r));
        // A wrong code.
        let wrong = wipe_request(
            "wrong kill code",
            Handle::new("alice").unwrap(),
            &r.server_salt,
            &salts,
        )
        .unwrap();
        assert!(!matches(&wrong.server_proof, &r.server_check));
        assert!(!order_is_valid(
            &WipeOrder {
                device: a,
                proof: wrong.proofs[0].1
            },
            a,
            &r
        ));
        // A record the server altered (its own check value for a).
        let mut forged = r;
        forged.devices[0].check = check(&[7; 32]);
        assert!(!order_is_valid(
            &WipeOrder {
                device: a,
                proof: [7; 32]
            },
            a,
            &forged
        ));
        // Too short a code.
        assert!(make_record(&account, 1, "short", &[a]).is_err());
    }
}
