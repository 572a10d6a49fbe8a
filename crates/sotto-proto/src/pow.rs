//! The registration proof of work of open servers: find a `nonce` such that
//! SHA-256("sotto-pow-v1" ‖ challenge ‖ handle ‖ nonce) starts with `bits` zero
//! bits. The challenge is the connection's, so a solution is good for one
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
}
