//! Keys to slots and slots to partitions, as Redis Cluster hashes keys.
//!
//! A key's [`Slot`] is `CRC16(key) mod 16384` with the CRC16-XMODEM variant Redis uses
//! (polynomial 0x1021, initial value 0, no reflection), hashing only the `{hash tag}` when
//! the key has one, exactly as Redis's `keyHashSlot`: the tag is the bytes between the first
//! `{` and the first `}` after it, and is used only when it is not empty. Keys that share a
//! tag share a slot, so multi-key operations on them stay on one node.
//!
//! Slots are grouped into a fixed number of [`Partition`]s (the unit of placement and of
//! data movement); [`Partitioning`] holds that number, which must divide 16384.

use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Number of key slots, as in Redis Cluster.
pub const SLOTS: u16 = 16384;

/// Default number of partitions: 4 slots per partition, about 40 partitions per node at
/// 100 nodes (fine-grained moves, even memory split).
pub const DEFAULT_PARTITIONS: u16 = 4096;

/// A key slot, `0..16384`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Slot(u16);

impl Slot {
    /// The slot of `key`, honouring a `{hash tag}` (Redis `CLUSTER KEYSLOT`).
    pub fn of(key: &[u8]) -> Self {
        Self(crc16(hash_tag(key)) & (SLOTS - 1))
    }

    /// The slot number.
    pub fn get(self) -> u16 {
        self.0
    }
}

/// A partition number, `0..Partitioning::count()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Partition(u16);

impl Partition {
    /// Wraps a partition number; [`Partitioning::contains`] says whether it is in range.
    pub fn new(n: u16) -> Self {
        Self(n)
    }

    /// The partition number.
    pub fn get(self) -> u16 {
        self.0
    }

    /// The partition number as an index.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How many partitions the 16384 slots are grouped into; fixed per cluster.
///
/// The count divides 16384 (so it is a power of two up to 16384), and each partition holds
/// `16384 / count` consecutive slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct Partitioning {
    count: u16,
}

impl Partitioning {
    /// Checks that `count` is in `1..=16384` and divides 16384.
    pub fn new(count: u32) -> Result<Self, Error> {
        match u16::try_from(count) {
            Ok(c) if c != 0 && c <= SLOTS && SLOTS.is_multiple_of(c) => Ok(Self { count: c }),
            _ => Err(Error::InvalidPartitionCount { count }),
        }
    }

    /// Number of partitions.
    pub fn count(self) -> u16 {
        self.count
    }

    /// Slots per partition.
    pub fn slots_per_partition(self) -> u16 {
        SLOTS / self.count
    }

    /// The partition holding `slot`.
    pub fn partition_of_slot(self, slot: Slot) -> Partition {
        Partition(slot.0 / self.slots_per_partition())
    }

    /// The partition holding `key`.
    pub fn partition_of(self, key: &[u8]) -> Partition {
        self.partition_of_slot(Slot::of(key))
    }

    /// The partition every key of `keys` is in; `None` if they are in several (or there
    /// are none). Operations atomic at one primary need one.
    pub fn common_partition<'k>(
        self,
        keys: impl IntoIterator<Item = &'k [u8]>,
    ) -> Option<Partition> {
        let mut keys = keys.into_iter().map(|k| self.partition_of(k));
        let first = keys.next()?;
        keys.all(|p| p == first).then_some(first)
    }

    /// The slots of `partition`.
    pub fn slots(self, partition: Partition) -> Range<u16> {
        let per = self.slots_per_partition();
        let start = partition.0.saturating_mul(per).min(SLOTS);
        start..start.saturating_add(per).min(SLOTS)
    }

    /// Whether `partition` is in range.
    pub fn contains(self, partition: Partition) -> bool {
        partition.0 < self.count
    }

    /// All partitions in order.
    pub fn iter(self) -> impl Iterator<Item = Partition> + Clone {
        (0..self.count).map(Partition)
    }
}

impl Default for Partitioning {
    fn default() -> Self {
        Self {
            count: DEFAULT_PARTITIONS,
        }
    }
}

impl TryFrom<u16> for Partitioning {
    type Error = Error;
    fn try_from(count: u16) -> Result<Self, Error> {
        Self::new(u32::from(count))
    }
}

impl From<Partitioning> for u16 {
    fn from(p: Partitioning) -> Self {
        p.count
    }
}

/// The part of `key` that is hashed: the `{hash tag}` if there is a non-empty one, else
/// the whole key (Redis `keyHashSlot`).
pub fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return key;
    };
    let rest = &key[open + 1..];
    match rest.iter().position(|&b| b == b'}') {
        Some(close) if close > 0 => &rest[..close],
        _ => key,
    }
}

/// CRC16-XMODEM (CCITT polynomial 0x1021, initial value 0), as Redis's `crc16.c`.
///
/// Eight bytes per step ("slicing by 8"): the CRC is linear, so the CRC register is
/// folded into the next two bytes and each of the eight bytes is looked up in the table
/// for its distance from the end of the step. The eight lookups do not depend on each
/// other, where the byte-at-a-time loop waits for each lookup before the next; the
/// request path computes this for every key.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0u16;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let [hi, lo] = crc.to_be_bytes();
        crc = CRC16_TABLES[7][usize::from(c[0] ^ hi)]
            ^ CRC16_TABLES[6][usize::from(c[1] ^ lo)]
            ^ CRC16_TABLES[5][usize::from(c[2])]
            ^ CRC16_TABLES[4][usize::from(c[3])]
            ^ CRC16_TABLES[3][usize::from(c[4])]
            ^ CRC16_TABLES[2][usize::from(c[5])]
            ^ CRC16_TABLES[1][usize::from(c[6])]
            ^ CRC16_TABLES[0][usize::from(c[7])];
    }
    chunks.remainder().iter().fold(crc, |crc, &b| {
        let index = usize::from((crc >> 8) ^ u16::from(b));
        (crc << 8) ^ CRC16_TABLES[0][index]
    })
}

/// `CRC16_TABLES[k][i]`: the CRC of byte `i` followed by `k` zero bytes.
const CRC16_TABLES: [[u16; 256]; 8] = crc16_tables();

const fn crc16_tables() -> [[u16; 256]; 8] {
    let mut tables = [[0u16; 256]; 8];
    let mut i: u16 = 0;
    while i < 256 {
        let mut crc = i << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        tables[0][i as usize] = crc;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            // One more zero byte after the previous table's message.
            let prev = tables[k - 1][i];
            tables[k][i] = (prev << 8) ^ tables[0][(prev >> 8) as usize];
            i += 1;
        }
        k += 1;
    }
    tables
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Bit-by-bit reference implementation, to check the table.
    fn crc16_bitwise(bytes: &[u8]) -> u16 {
        let mut crc = 0u16;
        for &b in bytes {
            crc ^= u16::from(b) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc
    }

    #[test]
    fn crc16_matches_bitwise_at_every_length_around_the_steps() {
        let bytes: Vec<u8> = (0u8..=200)
            .map(|i| i.wrapping_mul(151).wrapping_add(7))
            .collect();
        for len in 0..=bytes.len() {
            assert_eq!(crc16(&bytes[..len]), crc16_bitwise(&bytes[..len]), "{len}");
        }
    }

    #[test]
    fn crc16_check_value() {
        // The standard CRC-16/XMODEM check value, also Redis crc16.c's test vector.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(crc16(b""), 0);
    }

    #[test]
    fn redis_keyslot_values() {
        // Values of Redis `CLUSTER KEYSLOT`.
        assert_eq!(Slot::of(b"foo").get(), 12182);
        assert_eq!(Slot::of(b"bar").get(), 5061);
        assert_eq!(Slot::of(b"somekey").get(), 11058);
        assert_eq!(Slot::of(b"foo{hash_tag}").get(), 2515);
        assert_eq!(Slot::of(b"bar{hash_tag}").get(), 2515);
        assert_eq!(Slot::of(b"").get(), 0);
    }

    #[test]
    fn common_partition_of_keys() {
        let p = Partitioning::default();
        let tagged: [&[u8]; 3] = [b"{u}a", b"{u}b", b"{u}"];
        assert_eq!(p.common_partition(tagged), Some(p.partition_of(b"u")));
        assert_eq!(p.common_partition([&b"{a}k"[..], b"{b}k"]), None);
        assert_eq!(p.common_partition(std::iter::empty()), None);
    }

    #[test]
    fn hash_tag_rules() {
        assert_eq!(
            Slot::of(b"{user1000}.following"),
            Slot::of(b"{user1000}.followers")
        );
        assert_eq!(Slot::of(b"{user1000}.following"), Slot::of(b"user1000"));
        // Empty tag: the whole key is hashed.
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(Slot::of(b"foo{}{bar}").get(), crc16(b"foo{}{bar}") & 0x3fff);
        // First `{`, then the first `}` after it.
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hash_tag(b"}foo{bar}"), b"bar");
        // No closing brace: the whole key.
        assert_eq!(hash_tag(b"foo{bar"), b"foo{bar");
        assert_eq!(hash_tag(b"{"), b"{");
        assert_eq!(hash_tag(b"{}"), b"{}");
    }

    #[test]
    fn partitioning_checks_count() {
        assert!(Partitioning::new(4096).is_ok());
        assert!(Partitioning::new(1).is_ok());
        assert!(Partitioning::new(16384).is_ok());
        for bad in [0, 3, 4095, 16385, 32768, 65536, u32::MAX] {
            assert_eq!(
                Partitioning::new(bad),
                Err(Error::InvalidPartitionCount { count: bad })
            );
        }
        let p = Partitioning::default();
        assert_eq!(p.count(), 4096);
        assert_eq!(p.slots_per_partition(), 4);
        assert_eq!(p.partition_of(b"foo"), Partition::new(12182 / 4));
        assert_eq!(p.slots(Partition::new(3)), 12..16);
        assert_eq!(p.iter().count(), 4096);
    }

    #[test]
    fn partitioning_serde_validates() {
        let ok: Partitioning = postcard_roundtrip(4096);
        assert_eq!(ok.count(), 4096);
        let bytes = postcard::to_allocvec(&3u16).expect("encode");
        assert!(postcard::from_bytes::<Partitioning>(&bytes).is_err());
    }

    fn postcard_roundtrip(count: u16) -> Partitioning {
        let bytes = postcard::to_allocvec(&count).expect("encode");
        postcard::from_bytes(&bytes).expect("decode")
    }

    proptest! {
        #[test]
        fn table_matches_bitwise(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(crc16(&bytes), crc16_bitwise(&bytes));
        }

        #[test]
        fn slot_in_range_and_tag_colocates(
            tag in "[a-z0-9]{1,12}",
            a in "[a-z0-9.:]{0,12}",
            b in "[a-z0-9.:]{0,12}",
        ) {
            let k1 = format!("{a}{{{tag}}}{b}");
            let k2 = format!("{b}{{{tag}}}x{a}");
            prop_assert!(Slot::of(k1.as_bytes()).get() < SLOTS);
            prop_assert_eq!(Slot::of(k1.as_bytes()), Slot::of(k2.as_bytes()));
            prop_assert_eq!(Slot::of(k1.as_bytes()), Slot::of(tag.as_bytes()));
        }

        #[test]
        fn partition_of_slot_in_range(key in proptest::collection::vec(any::<u8>(), 0..32), exp in 0u32..=14) {
            let p = Partitioning::new(1 << exp).expect("power of two divides 16384");
            let slot = Slot::of(&key);
            let part = p.partition_of_slot(slot);
            prop_assert!(p.contains(part));
            prop_assert!(p.slots(part).contains(&slot.get()));
        }
    }
}
