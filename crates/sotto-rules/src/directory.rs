//! The key directory's rules: what an entry says and how its proofs are
//! checked, shared by the server (which publishes with `akd`) and every
//! client (which verifies with `akd_core`), so that both read an entry with
//! the same code.
//!
//! The directory maps each handle to an [`Entry`]: the account key and the
//! version and hash of the account's signed device list. The server
//! publishes a new version of a handle's entry whenever the account is
//! registered or its device list changes. A client that looks a handle up
//! gets a lookup proof against an epoch's root hash; a device checks its
//! own handle's whole history ([`verify_history`], [`check_own_history`]).
//!
//! Proofs travel as postcard encodings of `akd_core`'s types (their serde
//! form): [`encode`] and the `decode_*` functions, which refuse trailing
//! bytes and never panic.

use akd_core::configuration::{DomainLabel, ExperimentalConfiguration};
use akd_core::verify::history::HistoryParams;
use akd_core::verify::{HistoryVerificationParams, key_history_verify, lookup_verify};
use akd_core::{AkdLabel, AkdValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};
use sotto_proto::{
    AccountId, DirectoryRoot as Root, Handle, SignedDeviceList, device_list_transcript,
};

pub use akd_core::{AppendOnlyProof, HistoryProof, LookupProof};

/// The directory's hash and VRF configuration: `akd`'s current one
/// (BLAKE3), with Sotto's own domain label.
pub type Config = ExperimentalConfiguration<SottoDirectory>;

/// Sotto's domain separation label for the directory's hashes.
#[derive(Clone, Debug)]
pub struct SottoDirectory;

impl DomainLabel for SottoDirectory {
    fn domain_label() -> &'static [u8] {
        b"sotto-key-directory-v1"
    }
}

/// The bytes of an entry's value: account key, device-list version,
/// device-list hash.
pub const ENTRY_LEN: usize = 32 + 8 + 32;

/// What the directory says about a handle at one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The account key.
    pub account: AccountId,
    /// The version of the account's signed device list.
    pub list_version: u64,
    /// [`list_hash`] of that list.
    pub list_hash: [u8; 32],
}

impl Entry {
    /// The entry for an account's current signed device list.
    pub fn of(list: &SignedDeviceList) -> Self {
        Self {
            account: list.account,
            list_version: list.version,
            list_hash: list_hash(list),
        }
    }

    /// Whether `list` is the list this entry names.
    pub fn names(&self, list: &SignedDeviceList) -> bool {
        *self == Self::of(list)
    }

    /// The directory value.
    pub fn value(&self) -> AkdValue {
        let mut v = Vec::with_capacity(ENTRY_LEN);
        v.extend_from_slice(&self.account.0);
        v.extend_from_slice(&self.list_version.to_be_bytes());
        v.extend_from_slice(&self.list_hash);
        AkdValue(v)
    }

    /// Reads a directory value.
    pub fn parse(value: &[u8]) -> Result<Self, DirectoryError> {
        if value.len() != ENTRY_LEN {
            return Err(DirectoryError::Malformed("entry of the wrong length"));
        }
        let mut account = [0u8; 32];
        account.copy_from_slice(&value[..32]);
        let mut version = [0u8; 8];
        version.copy_from_slice(&value[32..40]);
        let mut list_hash = [0u8; 32];
        list_hash.copy_from_slice(&value[40..]);
        Ok(Self {
            account: AccountId(account),
            list_version: u64::from_be_bytes(version),
            list_hash,
        })
    }
}

/// SHA-256 of what the account key signed for its device list (the
/// signature itself is left out: it is not unique).
pub fn list_hash(list: &SignedDeviceList) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"sotto-directory-list-v1\0");
    h.update(device_list_transcript(
        &list.account,
        list.version,
        &list.devices,
    ));
    h.finalize().into()
}

/// The directory label of a handle.
pub fn label(handle: &Handle) -> AkdLabel {
    AkdLabel(handle.as_str().as_bytes().to_vec())
}

/// A proof that did not hold, or bytes that are no proof.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// The bytes do not decode.
    #[error("malformed directory proof: {0}")]
    Malformed(&'static str),
    /// The proof does not verify against the root.
    #[error("directory proof does not verify: {0}")]
    Invalid(String),
    /// The proof verifies but says something else than the server's answer.
    #[error("the key directory disagrees: {0}")]
    Disagrees(String),
    /// The root is older than one already seen.
    #[error("the key directory went back from epoch {seen} to {served}")]
    Stale {
        /// The newest epoch this client has seen.
        seen: u64,
        /// The epoch served now.
        served: u64,
    },
}

/// The wire form of a proof.
pub fn encode<T: Serialize>(proof: &T) -> Vec<u8> {
    // The proof types hold only vectors, integers and arrays: they always
    // encode.
    postcard::to_allocvec(proof).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DirectoryError> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((v, [])) => Ok(v),
        Ok(_) => Err(DirectoryError::Malformed("trailing bytes")),
        Err(_) => Err(DirectoryError::Malformed("does not decode")),
    }
}

/// Reads a lookup proof.
pub fn decode_lookup(bytes: &[u8]) -> Result<LookupProof, DirectoryError> {
    decode(bytes)
}

/// Reads a history proof.
pub fn decode_history(bytes: &[u8]) -> Result<HistoryProof, DirectoryError> {
    decode(bytes)
}

/// Reads an append-only proof.
pub fn decode_audit(bytes: &[u8]) -> Result<AppendOnlyProof, DirectoryError> {
    decode(bytes)
}

/// A verified entry and the version of the handle it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The entry.
    pub entry: Entry,
    /// The handle's version in the directory (1 for its first entry).
    pub version: u64,
    /// The epoch the entry was published in.
    pub epoch: u64,
}

/// Checks a lookup proof for `handle` against `root`, under the
/// directory's VRF public key.
pub fn verify_lookup(
    vrf_key: &[u8; 32],
    root: Root,
    handle: &Handle,
    proof: &[u8],
) -> Result<Verified, DirectoryError> {
    let proof = decode_lookup(proof)?;
    let r = lookup_verify::<Config>(vrf_key, root.hash, root.epoch, label(handle), proof)
        .map_err(|e| DirectoryError::Invalid(e.to_string()))?;
    Ok(Verified {
        entry: Entry::parse(&r.value.0)?,
        version: r.version,
        epoch: r.epoch,
    })
}

/// Checks a history proof for `handle` against `root`: every version the
/// handle ever had, newest first.
pub fn verify_history(
    vrf_key: &[u8; 32],
    root: Root,
    handle: &Handle,
    proof: &[u8],
) -> Result<Vec<Verified>, DirectoryError> {
    let proof = decode_history(proof)?;
    let params = HistoryVerificationParams::Default {
        history_params: HistoryParams::Complete,
    };
    let results =
        key_history_verify::<Config>(vrf_key, root.hash, root.epoch, label(handle), proof, params)
            .map_err(|e| DirectoryError::Invalid(e.to_string()))?;
    results
        .into_iter()
        .map(|r| {
            Ok(Verified {
                entry: Entry::parse(&r.value.0)?,
                version: r.version,
                epoch: r.epoch,
            })
        })
        .collect()
}

/// What a device finds wrong in its own handle's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tampering {
    /// A version names another account key: someone else was shown as this
    /// handle.
    ForeignAccount {
        /// The directory version.
        version: u64,
        /// The epoch it was published in.
        epoch: u64,
    },
    /// A version names an older device list than the version before it: a
    /// list was rolled back.
    RolledBack {
        /// The directory version.
        version: u64,
        /// The epoch it was published in.
        epoch: u64,
    },
    /// The newest version does not name the account's current signed list.
    NotCurrent {
        /// The directory version.
        version: u64,
    },
}

impl std::fmt::Display for Tampering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ForeignAccount { version, epoch } => write!(
                f,
                "version {version} (epoch {epoch}) of your handle names another account key"
            ),
            Self::RolledBack { version, epoch } => write!(
                f,
                "version {version} (epoch {epoch}) of your handle rolls your device list back"
            ),
            Self::NotCurrent { version } => write!(
                f,
                "the newest version ({version}) of your handle does not name your current device list"
            ),
        }
    }
}

/// Checks a device's own handle history (newest first, as
/// [`verify_history`] returns it) against what the device knows: its
/// account key and the account's current signed device list. Every
/// version must name the account, device-list versions must only go up
/// (the same list twice is allowed), and the newest must be the current
/// list.
pub fn check_own_history(
    history: &[Verified],
    account: &AccountId,
    current: &SignedDeviceList,
) -> Vec<Tampering> {
    let mut found = Vec::new();
    for v in history {
        if v.entry.account != *account {
            found.push(Tampering::ForeignAccount {
                version: v.version,
                epoch: v.epoch,
            });
        }
    }
    // Oldest to newest: each version's list must be newer than the last,
    // or the same list again (published twice, by nodes catching up at
    // once). An older list, or another list under a version already seen,
    // is a rollback or a forgery.
    let mut last: Option<Entry> = None;
    for v in history.iter().rev() {
        if let Some(l) = last
            && (v.entry.list_version < l.list_version
                || (v.entry.list_version == l.list_version && v.entry.list_hash != l.list_hash))
        {
            found.push(Tampering::RolledBack {
                version: v.version,
                epoch: v.epoch,
            });
        }
        if last.is_none_or(|l| v.entry.list_version >= l.list_version) {
            last = Some(v.entry);
        }
    }
    if let Some(newest) = history.first()
        && !newest.entry.names(current)
        && newest.entry.list_version >= current.version
    {
        found.push(Tampering::NotCurrent {
            version: newest.version,
        });
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_proto::{DeviceId, Signature};

    fn list(version: u64) -> SignedDeviceList {
        SignedDeviceList {
            account: AccountId([1; 32]),
            version,
            devices: vec![DeviceId([2; 32])],
            signature: Signature([0; 64]),
        }
    }

    fn at(version: u64, entry: Entry) -> Verified {
        Verified {
            entry,
            version,
            epoch: version * 10,
        }
    }

    #[test]
    fn an_entry_round_trips_and_a_wrong_length_is_refused() {
        let e = Entry::of(&list(3));
        assert_eq!(Entry::parse(&e.value().0), Ok(e));
        assert!(e.names(&list(3)));
        assert!(!e.names(&list(4)));
        assert!(Entry::parse(&e.value().0[1..]).is_err());
        assert!(Entry::parse(&[]).is_err());
    }

    #[test]
    fn garbage_is_no_proof() {
        for bytes in [&[][..], &[0xff; 7][..], &[0u8; 300][..]] {
            assert!(decode_lookup(bytes).is_err());
            assert!(decode_history(bytes).is_err());
            assert!(decode_audit(bytes).is_err());
        }
    }

    #[test]
    fn own_history_catches_a_foreign_key_a_rollback_and_a_stale_newest_entry() {
        let me = AccountId([1; 32]);
        let good = vec![at(2, Entry::of(&list(2))), at(1, Entry::of(&list(1)))];
        assert!(check_own_history(&good, &me, &list(2)).is_empty());
        // A newer list the directory has not caught up with yet is not tampering.
        assert!(check_own_history(&good, &me, &list(3)).is_empty());

        let mut foreign = Entry::of(&list(2));
        foreign.account = AccountId([9; 32]);
        let h = vec![at(2, foreign), at(1, Entry::of(&list(1)))];
        assert_eq!(
            check_own_history(&h, &me, &list(2)),
            vec![
                Tampering::ForeignAccount {
                    version: 2,
                    epoch: 20
                },
                Tampering::NotCurrent { version: 2 }
            ]
        );

        let h = vec![
            at(3, Entry::of(&list(1))),
            at(2, Entry::of(&list(2))),
            at(1, Entry::of(&list(1))),
        ];
        assert_eq!(
            check_own_history(&h, &me, &list(2)),
            vec![Tampering::RolledBack {
                version: 3,
                epoch: 30
            }]
        );

        // The same list published twice is no rollback.
        let h = vec![
            at(3, Entry::of(&list(2))),
            at(2, Entry::of(&list(2))),
            at(1, Entry::of(&list(1))),
        ];
        assert!(check_own_history(&h, &me, &list(2)).is_empty());

        let mut forged = Entry::of(&list(2));
        forged.list_hash = [7; 32];
        let h = vec![at(2, forged), at(1, Entry::of(&list(1)))];
        assert_eq!(
            check_own_history(&h, &me, &list(2)),
            vec![Tampering::NotCurrent { version: 2 }]
        );
    }
}
