//! Mail carried between nodes: a message just stored, with its mailbox
//! entries, sent once to every other node of the cluster so that their
//! connections are handed it (`crate::watch::MailWatch::offer`) as this
//! node's are, without a wake-up per device and a read of each mailbox.
//!
//! NATS sees no more than before: each carried message is sealed with
//! ChaCha20-Poly1305 under a key only the nodes hold, and a NATS client
//! that is not a node can neither read nor forge one.
//! - The cluster's secret is derived from the data directory's
//!   `directory.key`, which every node of a cluster shares already
//!   (`crate::datadir::DataDir::mail_key`). A node with another key opens
//!   nothing the others send ([`Opener::rejected`]).
//! - Each node process draws a random 16-byte id at start and seals under
//!   its own key: HKDF-SHA256 of the secret, with the id as its info. The
//!   nonce is a counter, so no nonce is used twice under a key.
//! - The bytes on the bus: `MAGIC | node id (16) | counter (8, big-endian) |
//!   ciphertext and tag`; the first 28 bytes are the associated data.
//! - A receiver takes from each node only counters above the last it took
//!   (NATS keeps the order of one publisher), so a message replayed on
//!   NATS is dropped while the receiver runs. After the receiver restarts,
//!   a replay can at most hand a device an entry again, which its
//!   connection drops (`crate::watch::plan`) or its client does (by
//!   message id).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sotto_proto::{DeviceId, EncodedEnvelope};
use zeroize::Zeroizing;

use crate::store::Posted;

/// The first bytes of every carried message (and of this format's version).
const MAGIC: &[u8; 4] = b"SMC1";

/// Magic, node id, counter.
const HEADER: usize = 4 + 16 + 8;

/// The most nodes a receiver keeps keys and counters for; more (a cluster
/// restarted many times) and it starts over, which only forgets counters.
const MAX_NODES: usize = 1024;

/// HKDF's salt: what the key is for.
const SALT: &[u8] = b"sotto cluster bus: carried mail v1";

/// The cluster's secret, from which each node's sealing key is derived.
#[derive(Clone)]
pub struct MailKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MailKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MailKey(..)")
    }
}

impl MailKey {
    /// The key derived from a secret every node of the cluster holds.
    pub fn derive(secret: &[u8]) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(Some(SALT), secret)
            .expand(b"cluster", &mut key[..])
            .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 length"));
        Self(key)
    }

    /// The sealing key of the node `node`.
    fn node_cipher(&self, node: &[u8; 16]) -> ChaCha20Poly1305 {
        let mut key = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::from_prk(&self.0[..])
            .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 key"))
            .expand(node, &mut key[..])
            .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 length"));
        ChaCha20Poly1305::new(Key::from_slice(&key[..]))
    }
}

/// The plaintext of a carried message.
#[derive(Serialize, Deserialize)]
struct Wire {
    /// `(device, seq, after)` of each entry ([`Posted`]).
    entries: Vec<(DeviceId, u64, u64)>,
    /// The envelope, encoded ([`EncodedEnvelope::as_bytes`]).
    #[serde(with = "serde_bytes")]
    envelope: Vec<u8>,
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    *Nonce::from_slice(&n)
}

/// Seals this node's carried mail.
pub struct Sealer {
    node: [u8; 16],
    cipher: ChaCha20Poly1305,
    counter: AtomicU64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").finish_non_exhaustive()
    }
}

impl Sealer {
    /// The sealer of the node `node` (random, drawn at the node's start).
    pub fn new(key: &MailKey, node: [u8; 16]) -> Self {
        Self {
            node,
            cipher: key.node_cipher(&node),
            counter: AtomicU64::new(0),
        }
    }

    /// The bytes that carry `posted` (the entries of one message) and its
    /// `envelope` to the other nodes.
    pub fn seal(&self, posted: &[Posted], envelope: &EncodedEnvelope) -> Vec<u8> {
        let wire = Wire {
            entries: posted.iter().map(|p| (p.device, p.seq, p.after)).collect(),
            envelope: envelope.as_bytes().to_vec(),
        };
        // Plain data into a Vec: cannot fail.
        let plain = postcard::to_stdvec(&wire).unwrap_or_default();
        let counter = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(MAGIC);
        header[4..20].copy_from_slice(&self.node);
        header[20..].copy_from_slice(&counter.to_be_bytes());
        let sealed = self
            .cipher
            .encrypt(
                &nonce(counter),
                Payload {
                    msg: &plain,
                    aad: &header,
                },
            )
            .unwrap_or_else(|_| unreachable!("ChaCha20-Poly1305 seals any length we send"));
        let mut out = Vec::with_capacity(HEADER + sealed.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&sealed);
        out
    }
}

/// Mail carried from another node, opened.
#[derive(Debug, PartialEq, Eq)]
pub struct Carried {
    /// The message's mailbox entries.
    pub posted: Vec<Posted>,
    /// The message.
    pub envelope: EncodedEnvelope,
}

/// Why carried bytes were not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// This node's own message, come back.
    #[error("sent by this node")]
    Own,
    /// Not carried mail of this format.
    #[error("not carried mail")]
    Malformed,
    /// Not sealed under this cluster's key, or altered.
    #[error("not sealed under this cluster's key")]
    Unauthentic,
    /// A counter at or below one taken from that node before.
    #[error("replayed")]
    Replayed,
}

/// Opens the carried mail of the other nodes.
pub struct Opener {
    key: MailKey,
    own: [u8; 16],
    /// Each node heard from: its key, and the next counter it may use.
    nodes: Mutex<HashMap<[u8; 16], (ChaCha20Poly1305, u64)>>,
    rejected: AtomicU64,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener").finish_non_exhaustive()
    }
}

impl Opener {
    /// The opener of the node `own`, which skips its own messages.
    pub fn new(key: MailKey, own: [u8; 16]) -> Self {
        Self {
            key,
            own,
            nodes: Mutex::default(),
            rejected: AtomicU64::new(0),
        }
    }

    /// How many messages were not authentic so far: sealed under another
    /// key (a node whose `directory.key` differs), or forged.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Opens carried bytes.
    pub fn open(&self, bytes: &[u8]) -> Result<Carried, Refused> {
        let (header, sealed) = bytes.split_at_checked(HEADER).ok_or(Refused::Malformed)?;
        if &header[..4] != MAGIC {
            return Err(Refused::Malformed);
        }
        let mut node = [0u8; 16];
        node.copy_from_slice(&header[4..20]);
        if node == self.own {
            return Err(Refused::Own);
        }
        let mut c = [0u8; 8];
        c.copy_from_slice(&header[20..]);
        let counter = u64::from_be_bytes(c);
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let known = nodes
            .get(&node)
            .map(|(cipher, next)| (cipher.clone(), *next));
        let (cipher, next) = known.unwrap_or_else(|| (self.key.node_cipher(&node), 0));
        if counter < next {
            return Err(Refused::Replayed);
        }
        let plain = cipher
            .decrypt(
                &nonce(counter),
                Payload {
                    msg: sealed,
                    aad: header,
                },
            )
            .map_err(|_| {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                Refused::Unauthentic
            })?;
        // Only an authentic message makes a node known.
        if nodes.len() >= MAX_NODES && !nodes.contains_key(&node) {
            nodes.clear();
        }
        nodes.insert(node, (cipher, counter.saturating_add(1)));
        drop(nodes);
        let wire: Wire = postcard::from_bytes(&plain).map_err(|_| Refused::Malformed)?;
        let envelope =
            EncodedEnvelope::from_bytes(wire.envelope).map_err(|_| Refused::Malformed)?;
        let posted = wire
            .entries
            .into_iter()
            .map(|(device, seq, after)| Posted { device, seq, after })
            .collect();
        Ok(Carried { posted, envelope })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> EncodedEnvelope {
        EncodedEnvelope::new(&sotto_proto::Envelope {
            group: sotto_proto::GroupId([1; 32]),
            sender: DeviceId([2; 32]),
            msg_id: sotto_proto::MessageId([3; 16]),
            kind: sotto_proto::EnvelopeKind::Application,
            server_time_ms: 4,
            payload: sotto_proto::Blob(vec![5; 100]),
        })
    }

    fn posted() -> Vec<Posted> {
        (1..=3u8)
            .map(|n| Posted {
                device: DeviceId([n; 32]),
                seq: 10 * u64::from(n),
                after: 10 * u64::from(n) - 1,
            })
            .collect()
    }

    #[test]
    fn mail_opens_on_other_nodes_once_and_in_order() {
        let key = MailKey::derive(&[7; 32]);
        let a = Sealer::new(&key, [1; 16]);
        let b = Opener::new(key.clone(), [2; 16]);
        let first = a.seal(&posted(), &envelope());
        let second = a.seal(&posted()[..1], &envelope());
        let opened = b.open(&first).unwrap();
        assert_eq!(opened.posted, posted());
        assert_eq!(opened.envelope, envelope());
        assert_eq!(b.open(&second).unwrap().posted, posted()[..1]);
        // Replays, of the last one or an earlier one, are dropped.
        assert_eq!(b.open(&second), Err(Refused::Replayed));
        assert_eq!(b.open(&first), Err(Refused::Replayed));
        // The sealing node skips its own.
        let own = Opener::new(key, [1; 16]);
        assert_eq!(own.open(&first), Err(Refused::Own));
        assert_eq!(b.rejected(), 0);
    }

    #[test]
    fn another_key_or_any_altered_byte_is_refused() {
        let key = MailKey::derive(&[7; 32]);
        let sealed = Sealer::new(&key, [1; 16]).seal(&posted(), &envelope());
        let other = Opener::new(MailKey::derive(&[8; 32]), [2; 16]);
        assert_eq!(other.open(&sealed), Err(Refused::Unauthentic));
        assert_eq!(other.rejected(), 1);
        let b = Opener::new(key, [2; 16]);
        for i in 4..sealed.len() {
            let mut altered = sealed.clone();
            altered[i] ^= 0x40;
            let refused = b.open(&altered).unwrap_err();
            // A changed node id may name this node; anything else is
            // caught by the tag.
            assert!(
                matches!(refused, Refused::Unauthentic | Refused::Own),
                "byte {i}: {refused:?}"
            );
        }
        for len in 0..sealed.len() {
            assert!(b.open(&sealed[..len]).is_err(), "truncated to {len}");
        }
        // Nothing forged made a node known, or spent a counter.
        assert!(b.open(&sealed).is_ok());
    }

    #[test]
    fn two_nodes_never_share_a_key() {
        let key = MailKey::derive(&[7; 32]);
        let a = Sealer::new(&key, [1; 16]).seal(&posted(), &envelope());
        // The same counter from another node id: the bytes after the
        // header differ, as the keys do.
        let b = Sealer::new(&key, [3; 16]).seal(&posted(), &envelope());
        assert_ne!(a[HEADER..], b[HEADER..]);
    }
}
