//! The encrypted envelope around every gossip datagram, and the keyring that seals it.
//!
//! ```text
//! [u8 version = 1][u32 BE key id][12-byte nonce][ciphertext][16-byte GCM tag]
//! ```
//!
//! AES-256-GCM (ring's implementation, the one rustls uses here). The nonce is 96 random
//! bits drawn fresh for every datagram; the associated data is the 5-byte header followed by
//! the cluster name, so a datagram from another cluster, or one whose header was altered,
//! fails authentication like a tampered one. The key id (first 4 bytes of a SHA-256 over a
//! domain label and the key) lets the receiver pick the right installed key instead of
//! trying them all; it reveals nothing about the key.

use std::fmt;

use rand_core::CryptoRng;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::digest;

/// The envelope version this crate writes and reads.
pub const ENVELOPE_VERSION: u8 = 1;

const HEADER_LEN: usize = 1 + 4;
const TAG_LEN: usize = 16;

/// Bytes the envelope adds to a payload: header, nonce and tag.
pub const ENVELOPE_OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;

/// A 256-bit gossip encryption key.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    bytes: [u8; 32],
}

impl Key {
    /// Length of a key in bytes.
    pub const LEN: usize = 32;

    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self { bytes }
    }

    /// A key from a slice, which must be exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyringError> {
        let bytes = <[u8; 32]>::try_from(bytes)
            .map_err(|_| KeyringError::WrongKeyLength { len: bytes.len() })?;
        Ok(Self { bytes })
    }

    /// A fresh random key.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let mut bytes = [0; 32];
        rng.fill_bytes(&mut bytes);
        Self { bytes }
    }

    /// The key's bytes, for storing it.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// The key's public identifier.
    pub fn id(&self) -> KeyId {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"nodosum gossip key id v1\0");
        ctx.update(&self.bytes);
        let d = ctx.finish();
        let h = d.as_ref();
        KeyId(u32::from_be_bytes([h[0], h[1], h[2], h[3]]))
    }
}

/// Never prints key material.
impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.id())
    }
}

/// Public identifier of a [`Key`], written in each envelope's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub u32);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// A keyring operation that cannot be done. The keyring is unchanged after an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// Key material of the wrong length.
    #[error("gossip key is {len} bytes, must be exactly 32")]
    WrongKeyLength {
        /// Length given, in bytes.
        len: usize,
    },
    /// No installed key has this ID.
    #[error("key {id} is not installed")]
    NotInstalled {
        /// The key ID asked for.
        id: KeyId,
    },
    /// The primary key cannot be removed; make another key primary first.
    #[error("key {id} is the primary key and cannot be removed")]
    RemovePrimary {
        /// The primary key's ID.
        id: KeyId,
    },
}

/// Why a datagram could not be opened. Each is a drop to count, never a reason to change
/// membership state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Shorter than an envelope with an empty payload.
    #[error("datagram of {len} bytes is shorter than the {ENVELOPE_OVERHEAD}-byte envelope")]
    TooShort {
        /// Datagram length in bytes.
        len: usize,
    },
    /// An envelope version this node does not read.
    #[error("unsupported envelope version {found}")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// Sealed with a key that is not in the keyring.
    #[error("sealed with key {id}, which is not installed")]
    UnknownKey {
        /// The key ID in the header.
        id: KeyId,
    },
    /// Authentication failed: tampered, truncated, or sealed for another cluster name.
    #[error("authentication failed (tampered, or sealed for another cluster)")]
    Unauthentic,
}

#[derive(Clone)]
struct Entry {
    id: KeyId,
    key: Key,
    aead: LessSafeKey,
}

impl Entry {
    fn new(key: Key) -> Self {
        // A 32-byte key is exactly what AES-256-GCM takes; ring fails only on a length
        // mismatch, which the `Key` type rules out.
        let unbound = UnboundKey::new(&AES_256_GCM, key.as_bytes()).expect("32-byte AES-256 key");
        Self {
            id: key.id(),
            key,
            aead: LessSafeKey::new(unbound),
        }
    }
}

/// The gossip keys of a node: one primary key seals, every installed key opens.
///
/// Rotating keys across a running cluster without a moment where two nodes cannot talk:
/// 1. [`install`](Self::install) the new key on every node (all still seal with the old);
/// 2. [`use_key`](Self::use_key) the new key on every node (each opens both meanwhile);
/// 3. [`remove`](Self::remove) the old key on every node.
#[derive(Clone)]
pub struct Keyring {
    primary: KeyId,
    entries: Vec<Entry>,
}

impl Keyring {
    /// A keyring holding `primary` only.
    pub fn new(primary: Key) -> Self {
        let entry = Entry::new(primary);
        Self {
            primary: entry.id,
            entries: vec![entry],
        }
    }

    /// The ID of the key that seals.
    pub fn primary(&self) -> KeyId {
        self.primary
    }

    /// IDs of all installed keys, the primary among them.
    pub fn key_ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.entries.iter().map(|e| e.id)
    }

    /// The installed key with this ID, for persisting the keyring.
    pub fn key(&self, id: KeyId) -> Option<&Key> {
        self.entries.iter().find(|e| e.id == id).map(|e| &e.key)
    }

    /// Adds a key for opening datagrams. Installing a key twice is a no-op.
    pub fn install(&mut self, key: Key) -> KeyId {
        let id = key.id();
        if !self.entries.iter().any(|e| e.key == key) {
            self.entries.push(Entry::new(key));
        }
        id
    }

    /// Makes an installed key the one that seals.
    pub fn use_key(&mut self, id: KeyId) -> Result<(), KeyringError> {
        if !self.entries.iter().any(|e| e.id == id) {
            return Err(KeyringError::NotInstalled { id });
        }
        self.primary = id;
        Ok(())
    }

    /// Removes an installed key that is not the primary.
    pub fn remove(&mut self, id: KeyId) -> Result<(), KeyringError> {
        if id == self.primary {
            return Err(KeyringError::RemovePrimary { id });
        }
        let before = self.entries.len();
        self.entries.retain(|e| e.id != id);
        if self.entries.len() == before {
            return Err(KeyringError::NotInstalled { id });
        }
        Ok(())
    }

    fn primary_entry(&self) -> &Entry {
        // `primary` always names an entry: `use_key` checks it and `remove` refuses it.
        self.entries
            .iter()
            .find(|e| e.id == self.primary)
            .expect("primary key is installed")
    }

    /// Seals `payload` for `cluster` with the primary key and a fresh random nonce.
    pub fn seal(&self, cluster: &str, payload: &[u8], rng: &mut impl CryptoRng) -> Vec<u8> {
        let entry = self.primary_entry();
        let mut nonce = [0; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(ENVELOPE_OVERHEAD + payload.len());
        out.push(ENVELOPE_VERSION);
        out.extend_from_slice(&entry.id.0.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(payload);
        let aad = associated_data(&out[..HEADER_LEN], cluster);
        let mut body = out.split_off(HEADER_LEN + NONCE_LEN);
        // Sealing fails only when the payload exceeds GCM's 64 GiB bound, far beyond any
        // datagram.
        entry
            .aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .expect("datagram far below the AES-GCM length limit");
        out.extend_from_slice(&body);
        out
    }

    /// Opens a datagram sealed for `cluster` with any installed key, returning the payload.
    pub fn open(&self, cluster: &str, datagram: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        if datagram.len() < ENVELOPE_OVERHEAD {
            return Err(EnvelopeError::TooShort {
                len: datagram.len(),
            });
        }
        let (header, rest) = datagram.split_at(HEADER_LEN);
        if header[0] != ENVELOPE_VERSION {
            return Err(EnvelopeError::UnsupportedVersion { found: header[0] });
        }
        let id = KeyId(u32::from_be_bytes([
            header[1], header[2], header[3], header[4],
        ]));
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = <[u8; NONCE_LEN]>::try_from(nonce).expect("split at NONCE_LEN");
        let aad = associated_data(header, cluster);
        let mut candidates = self.entries.iter().filter(|e| e.id == id).peekable();
        if candidates.peek().is_none() {
            return Err(EnvelopeError::UnknownKey { id });
        }
        // Two installed keys share an ID only by a 1-in-2^32 accident; try each then.
        for entry in candidates {
            let mut buf = sealed.to_vec();
            let nonce = Nonce::assume_unique_for_key(nonce);
            if let Ok(plain) = entry.aead.open_in_place(nonce, Aad::from(&aad), &mut buf) {
                let len = plain.len();
                buf.truncate(len);
                return Ok(buf);
            }
        }
        Err(EnvelopeError::Unauthentic)
    }
}

fn associated_data(header: &[u8], cluster: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + cluster.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(cluster.as_bytes());
    aad
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("primary", &self.primary)
            .field(
                "keys",
                &self.entries.iter().map(|e| e.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn key(n: u8) -> Key {
        Key::from_bytes([n; 32])
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    #[test]
    fn seal_open_round_trip_and_layout() {
        let ring = Keyring::new(key(1));
        let sealed = ring.seal("prod", b"hello", &mut rng());
        assert_eq!(sealed.len(), ENVELOPE_OVERHEAD + 5);
        assert_eq!(sealed[0], ENVELOPE_VERSION);
        assert_eq!(&sealed[1..5], &key(1).id().0.to_be_bytes());
        assert_eq!(ring.open("prod", &sealed).unwrap(), b"hello");
    }

    #[test]
    fn nonces_differ_per_datagram() {
        let ring = Keyring::new(key(1));
        let mut r = rng();
        let a = ring.seal("c", b"same", &mut r);
        let b = ring.seal("c", b"same", &mut r);
        assert_ne!(a[5..17], b[5..17]);
        assert_ne!(a, b);
    }

    #[test]
    fn wrong_cluster_wrong_key_and_tampering_fail() {
        let ring = Keyring::new(key(1));
        let sealed = ring.seal("prod", b"payload", &mut rng());
        assert_eq!(
            ring.open("staging", &sealed),
            Err(EnvelopeError::Unauthentic)
        );
        let other = Keyring::new(key(2));
        assert_eq!(
            other.open("prod", &sealed),
            Err(EnvelopeError::UnknownKey { id: key(1).id() })
        );
        let mut v2 = sealed.clone();
        v2[0] = 2;
        assert_eq!(
            ring.open("prod", &v2),
            Err(EnvelopeError::UnsupportedVersion { found: 2 })
        );
        assert_eq!(
            ring.open("prod", &sealed[..10]),
            Err(EnvelopeError::TooShort { len: 10 })
        );
        let mut truncated = sealed.clone();
        truncated.pop();
        assert_eq!(
            ring.open("prod", &truncated),
            Err(EnvelopeError::Unauthentic)
        );
    }

    #[test]
    fn rotation_never_leaves_a_gap() {
        // Two nodes rotate from key 1 to key 2 one step at a time, in the worst order:
        // after every single step on either node, each can still open what the other seals.
        let mut a = Keyring::new(key(1));
        let mut b = Keyring::new(key(1));
        let talk = |x: &Keyring, y: &Keyring| {
            let mut r = rng();
            y.open("c", &x.seal("c", b"m", &mut r)).is_ok()
                && x.open("c", &y.seal("c", b"m", &mut r)).is_ok()
        };
        let new = key(2).id();
        let old = key(1).id();
        a.install(key(2));
        assert!(talk(&a, &b));
        b.install(key(2));
        assert!(talk(&a, &b));
        a.use_key(new).unwrap();
        assert!(talk(&a, &b));
        b.use_key(new).unwrap();
        assert!(talk(&a, &b));
        a.remove(old).unwrap();
        assert!(talk(&a, &b));
        b.remove(old).unwrap();
        assert!(talk(&a, &b));
        assert_eq!(a.key_ids().collect::<Vec<_>>(), vec![new]);
    }

    #[test]
    fn keyring_operations_are_checked() {
        let mut ring = Keyring::new(key(1));
        assert_eq!(
            ring.remove(key(1).id()),
            Err(KeyringError::RemovePrimary { id: key(1).id() })
        );
        assert_eq!(
            ring.use_key(key(9).id()),
            Err(KeyringError::NotInstalled { id: key(9).id() })
        );
        assert_eq!(
            ring.remove(key(9).id()),
            Err(KeyringError::NotInstalled { id: key(9).id() })
        );
        assert_eq!(ring.install(key(2)), ring.install(key(2)));
        assert_eq!(ring.key_ids().count(), 2);
        assert_eq!(
            Key::from_slice(&[0; 31]),
            Err(KeyringError::WrongKeyLength { len: 31 })
        );
        assert!(
            !format!("{:?}", key(3)).contains("3, 3"),
            "Debug must not print key bytes"
        );
    }

    proptest! {
        #[test]
        fn any_bit_flip_is_rejected(payload in proptest::collection::vec(any::<u8>(), 0..200), bit in any::<prop::sample::Index>()) {
            let ring = Keyring::new(key(1));
            let mut sealed = ring.seal("cluster", &payload, &mut rng());
            let bit = bit.index(sealed.len() * 8);
            sealed[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(ring.open("cluster", &sealed).is_err());
        }

        #[test]
        fn round_trips_any_payload(payload in proptest::collection::vec(any::<u8>(), 0..1500), seed in any::<u64>(), cluster in "\\PC{0,30}") {
            let ring = Keyring::new(key(4));
            let sealed = ring.seal(&cluster, &payload, &mut StdRng::seed_from_u64(seed));
            prop_assert_eq!(ring.open(&cluster, &sealed).unwrap(), payload);
        }

        #[test]
        fn garbage_never_opens(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let ring = Keyring::new(key(5));
            prop_assert!(ring.open("c", &data).is_err());
        }
    }
}
