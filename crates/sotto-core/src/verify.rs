//! Safety numbers: what two people compare (read aloud or scan) to know that
//! the keys their clients use are really each other's.
//!
//! Each side's half is 30 digits derived from its account identity key with
//! 5200 iterations of SHA-512 (the construction of Signal's numeric
//! fingerprints); the safety number is the two halves in a fixed order, so
//! both people see the same 60 digits. It depends on the identity keys only:
//! adding or removing devices does not change it.

use sha2::{Digest, Sha512};
use sotto_proto::AccountId;

const ITERATIONS: usize = 5200;
const VERSION: u16 = 0;

fn half(account: &AccountId) -> String {
    let mut h = Sha512::new();
    h.update(VERSION.to_be_bytes());
    h.update(account.0);
    h.update(b"sotto-account");
    let mut digest = h.finalize();
    for _ in 1..ITERATIONS {
        let mut h = Sha512::new();
        h.update(digest);
        h.update(account.0);
        digest = h.finalize();
    }
    digest[..30]
        .chunks(5)
        .map(|c| {
            let n = c.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect()
}

/// The 60-digit safety number of two accounts; the same from either side.
pub fn safety_number(a: &AccountId, b: &AccountId) -> String {
    let (x, y) = (half(a), half(b));
    if x <= y { x + &y } else { y + &x }
}

/// The safety number in twelve groups of five digits.
pub fn grouped(number: &str) -> String {
    number
        .as_bytes()
        .chunks(5)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_sixty_digits_and_key_dependent() {
        let (a, b, c) = (AccountId([1; 32]), AccountId([2; 32]), AccountId([3; 32]));
        let n = safety_number(&a, &b);
        assert_eq!(n, safety_number(&b, &a));
        assert_eq!(n.len(), 60);
        assert!(n.bytes().all(|d| d.is_ascii_digit()));
        assert_ne!(n, safety_number(&a, &c));
        assert_eq!(grouped(&n).split(' ').count(), 12);
    }
}
