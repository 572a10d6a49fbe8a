//! Proofs of work: find a `nonce` such that a SHA-256 over the connection's
//! challenge, the request's subject and `nonce` starts with `bits` zero bits.
//! The registration of open servers hashes
//! ("sotto-pow-v1\0" ‖ challenge ‖ handle ‖ nonce); a kill-code guess on an
//! account that drew many wrong guesses hashes ("sotto-wipe-pow-v1\0" ‖
//! challenge ‖ handle ‖ server proof ‖ nonce), so each guess costs its own
//! work. The challenge is the connection's, so a solution is good for one
//! connection only.

use sha2::{Digest, Sha256};

fn hash(challenge: &[u8; 32], handle: &str, nonce: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"sotto-pow-v1\0");
    h.update(challenge);
    h.update(handle.as_bytes());
    h.update(nonce.to_le_bytes());
    h.finalize().into()
}

fn wipe_hash(challenge: &[u8; 32], handle: &str, server_proof: &[u8; 32], nonce: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"sotto-wipe-pow-v1\0");
    h.update(challenge);
    h.update((handle.len() as u64).to_le_bytes());
    h.update(handle.as_bytes());
    h.update(server_proof);
    h.update(nonce.to_le_bytes());
    h.finalize().into()
}

fn leading_zero_bits(d: &[u8; 32]) -> u32 {
    let mut n = 0;
    for b in d {
        if *b == 0 {
            n += 8;
        } else {
            n += b.leading_zeros();
            break;
        }
    }
    n
}

/// Whether `nonce` solves the challenge.
pub fn verify(challenge: &[u8; 32], handle: &str, nonce: u64, bits: u8) -> bool {
    leading_zero_bits(&hash(challenge, handle, nonce)) >= u32::from(bits)
}

/// Finds a solution by counting up from zero.
pub fn solve(challenge: &[u8; 32], handle: &str, bits: u8) -> u64 {
    (0u64..)
        .find(|n| verify(challenge, handle, *n, bits))
        .unwrap_or(u64::MAX)
}

/// Whether `nonce` is a proof of work of `bits` for one kill-code guess
/// (`server_proof`) on `handle`, on this connection's challenge.
pub fn verify_wipe(
    challenge: &[u8; 32],
    handle: &str,
    server_proof: &[u8; 32],
    nonce: u64,
    bits: u8,
) -> bool {
    leading_zero_bits(&wipe_hash(challenge, handle, server_proof, nonce)) >= u32::from(bits)
}

/// Finds a proof of work for one kill-code guess by counting up from zero.
pub fn solve_wipe(challenge: &[u8; 32], handle: &str, server_proof: &[u8; 32], bits: u8) -> u64 {
    (0u64..)
        .find(|n| verify_wipe(challenge, handle, server_proof, *n, bits))
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solution_verifies_and_is_bound_to_its_inputs() {
        let c = [7u8; 32];
        let n = solve(&c, "alice", 12);
        assert!(verify(&c, "alice", n, 12));
        // The inputs are fixed, so this is deterministic: the solution for
        // alice on this challenge does not solve another handle or challenge.
        assert!(!verify(&c, "mallory", n, 12));
        assert!(!verify(&[8u8; 32], "alice", n, 12));
    }

    #[test]
    fn a_wipe_solution_is_bound_to_its_guess() {
        let c = [7u8; 32];
        let n = solve_wipe(&c, "alice", &[1; 32], 12);
        assert!(verify_wipe(&c, "alice", &[1; 32], n, 12));
        assert!(!verify_wipe(&c, "alice", &[2; 32], n, 12));
        assert!(!verify_wipe(&[8u8; 32], "alice", &[1; 32], n, 12));
    }
}
