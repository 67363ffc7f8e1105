//! One node's local store: buckets of keys with TTLs and versions, under a byte budget.
//!
//! The store is a sans-IO state machine owned by one task: every operation takes the
//! current time ([`Timestamp`]) and, for writes it originates, the routing epoch; the
//! reaper takes a random number generator. Nothing here reads a clock or spawns.
//!
//! - Entries live in a [`quick_cache`] `unsync::Cache`, weighed as key + value +
//!   [`ENTRY_OVERHEAD`] bytes, so the configured budget bounds memory and the cache's
//!   eviction policy (CLOCK-Pro-like with ghost entries) chooses what to drop when an
//!   insert would exceed it. Evictions are reported back and the store's indexes follow.
//! - Each entry carries a [`Version`] `(epoch, seq)`. Writes this node originates as
//!   primary get the next version of their partition and come back as a [`Write`] to
//!   replicate; a replica applies a [`Write`] only if it is newer than what it holds
//!   ([`Store::apply`]), so conflicts resolve by version, never by wall clock. Deletes leave
//!   a tombstone (kept for [`StoreConfig::tombstone_ttl`]) so that an older write arriving
//!   late cannot resurrect a deleted key. An entry evicted to respect the budget leaves
//!   no tombstone; instead the store remembers the version it was evicted at in a small
//!   table of recent evictions (best effort: a bounded table forgets), and a write for a
//!   key it does not hold is not applied if it is older than that (see
//!   [`Applied::Evicted`]).
//! - TTLs are absolute expiry timestamps beside the value: checked on every read, and
//!   removed in the background by [`Store::reap`], which samples keys with a TTL like
//!   Redis's active expiry cycle.
//! - A per-partition key index lets the store stream a partition ([`Store::snapshot`])
//!   and drop it ([`Store::drop_partition`]) without scanning everything.
//!
//! Expired entries are removed locally by each replica when it notices them, without a
//! version: expiry is a function of the replicated expiry time, not a write. The version
//! an expired entry had is remembered like an evicted one's, so a late older write does
//! not bring back a value that a newer (since expired) write replaced.
//!
//! Why `quick_cache` rather than `moka`: with the same 1 M entries (12-byte keys, 100-byte
//! values, shared slices) on this machine kind, quick_cache 0.6's unsync cache used 242
//! bytes per entry and 0.2 µs per insert at its bound; moka 0.12's sync cache used 497
//! bytes and 2.3 µs. quick_cache also enforces the bound inside the insert call and
//! reports what it evicted, which the store's indexes need; moka evicts in batched
//! housekeeping after inserts and tells listeners asynchronously. The store is owned by one
//! task, so moka's concurrency buys nothing here.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quick_cache::{Equivalent, Lifecycle, OptionsBuilder, Weighter, unsync};
use rand_core::Rng;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::error::Error;
use crate::ldouble::LongDouble;
use crate::slot::{Partition, Partitioning};

/// Bytes charged per entry on top of its key and value, for the budget: the cache's slot
/// (key handle, value handle, version, expiry, index positions, list links), its hash
/// table entry, allocator headers and rounding, and the partition index. Measured with the
/// `memory` example: 286 bytes resident per entry for a 10-byte key and a 100-byte value
/// (glibc malloc, 1 M entries), so 176 beyond key and value; a key with a TTL adds 16.
pub const ENTRY_OVERHEAD: u64 = 176;

/// Most buckets a store holds.
pub const MAX_BUCKETS: usize = 1024;

/// Rounds of sampling one [`Store::reap`] call does at most, so a step is bounded.
pub const MAX_REAP_ROUNDS: usize = 16;

/// Default keys sampled per reaper round, as Redis's `ACTIVE_EXPIRE_CYCLE_KEYS_PER_LOOP`.
pub const DEFAULT_REAP_SAMPLE: usize = 20;

/// A write's version: the routing epoch of the primary that made it, then a per-partition
/// sequence number. Ordered by epoch first, so a write made by a newer primary always wins
/// over one made by an older primary.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct Version {
    /// Routing-table epoch of the primary when it made the write.
    pub epoch: u64,
    /// Sequence number within the partition, increasing on each node that orders writes.
    pub seq: u64,
}

/// A live value (`None`: a missing key) and the expiry a write of it keeps.
type ToUpdate = (Option<Arc<[u8]>>, Option<Timestamp>);

/// The local store's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Partitioning of the cluster; must be the same on every node.
    pub partitioning: Partitioning,
    /// The byte budget: total weight (key + value + [`ENTRY_OVERHEAD`] per entry) the store
    /// keeps before evicting. Default 256 MiB.
    pub max_bytes: u64,
    /// Longest key in bytes. Default 64 KiB (Redis allows 512 MiB; a cache key that long
    /// is a mistake).
    pub max_key_len: usize,
    /// Longest value in bytes, unless a bucket sets its own. Default 16 MiB. Values heavier
    /// than about 97 % of `max_bytes` are refused whatever this says.
    pub max_value_len: usize,
    /// How long a delete's tombstone is kept, so that an older write arriving late (during
    /// a hand-off or a rejoin) is recognised as older. Default 60 s: longer than any
    /// partition move should take.
    pub tombstone_ttl: Duration,
    /// Expected number of entries: sizes the cache's tables up front and its ghost list
    /// (half this many recently evicted keys are remembered to improve admission). Default
    /// 65536; raise it for large budgets of small entries.
    pub estimated_items: usize,
}

impl StoreConfig {
    /// Checks that a key of `key_len` bytes with a value of `value_len` bytes may be
    /// stored in a bucket whose own value limit is `bucket_max`: the key and value length
    /// limits, and the budget (an entry heavier than the cache's hot section, about 97 %
    /// of `max_bytes`, is refused whatever the value limit says).
    pub fn check_size(
        &self,
        bucket_max: Option<usize>,
        key_len: usize,
        value_len: usize,
    ) -> Result<(), Error> {
        if key_len > self.max_key_len {
            return Err(Error::KeyTooLarge {
                len: key_len,
                max: self.max_key_len,
            });
        }
        let configured = bucket_max.unwrap_or(self.max_value_len);
        let fits = (self.max_bytes / 100 * 97)
            .saturating_sub(ENTRY_OVERHEAD)
            .saturating_sub(u64::try_from(key_len).unwrap_or(u64::MAX));
        let max = configured.min(usize::try_from(fits).unwrap_or(usize::MAX));
        if value_len > max {
            return Err(Error::ValueTooLarge {
                len: value_len,
                max,
            });
        }
        Ok(())
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            partitioning: Partitioning::default(),
            max_bytes: 256 * 1024 * 1024,
            max_key_len: 64 * 1024,
            max_value_len: 16 * 1024 * 1024,
            tombstone_ttl: Duration::from_secs(60),
            estimated_items: 65536,
        }
    }
}

/// A bucket's options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BucketOptions {
    /// TTL given to entries written without an explicit expiry; `None` keeps them until
    /// deleted or evicted.
    pub default_ttl: Option<Duration>,
    /// Longest value in this bucket; `None` uses [`StoreConfig::max_value_len`].
    pub max_value_len: Option<usize>,
}

/// A bucket handle, valid for the store that issued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketId(u16);

impl BucketId {
    /// The `index`-th bucket of a keyspace whose buckets are numbered in creation order
    /// (the cluster backend of the handle numbers its configured buckets this way).
    pub(crate) const fn from_index(index: u16) -> Self {
        Self(index)
    }

    /// Its position in creation order.
    pub(crate) fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// When a written entry expires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Expiry {
    /// The bucket's default TTL (none if the bucket has none).
    #[default]
    BucketDefault,
    /// Never (`SET` without `EX` in a bucket without default, or `PERSIST`).
    Never,
    /// After this long (`EX`, `PX`).
    After(Duration),
    /// At this time (`EXAT`, `PXAT`); a time in the past makes the entry expired at once.
    At(Timestamp),
    /// Keep the current expiry if the key exists (`KEEPTTL`); the bucket default otherwise.
    Keep,
}

/// When an `EXPIRE` applies: Redis 7's `NX`, `XX`, `GT` and `LT`. As in Redis, a key
/// without an expiry counts as never expiring for `GT` and `LT`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExpireCondition {
    /// Always.
    #[default]
    Always,
    /// `NX`: only a key without an expiry.
    IfNone,
    /// `XX`: only a key with an expiry.
    IfSome,
    /// `GT` (with or without `XX`): only a later expiry than the key's, so never a key
    /// without one.
    IfLater,
    /// `LT`: only an earlier expiry than the key's, so always a key without one.
    IfEarlier,
    /// `XX LT`: only a key with an expiry, and only an earlier one.
    IfSomeEarlier,
}

impl ExpireCondition {
    /// Whether the expiry `at` may replace `current` (`None`: the key has none).
    pub fn allows(self, current: Option<Timestamp>, at: Timestamp) -> bool {
        match self {
            Self::Always => true,
            Self::IfNone => current.is_none(),
            Self::IfSome => current.is_some(),
            Self::IfLater => current.is_some_and(|c| at > c),
            Self::IfEarlier => current.is_none_or(|c| at < c),
            Self::IfSomeEarlier => current.is_some_and(|c| at < c),
        }
    }
}

/// When a `SET` applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Condition {
    /// Always.
    #[default]
    Always,
    /// Only if the key does not exist (`NX`).
    IfAbsent,
    /// Only if the key exists (`XX`).
    IfPresent,
}

/// Options of [`Store::set`], as Redis `SET`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetOptions {
    /// Expiry of the new value.
    pub expiry: Expiry,
    /// Condition on the key's existence.
    pub condition: Condition,
    /// Return the previous value (`GET`), whether or not the write happened.
    pub get: bool,
}

/// What [`Store::set`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetOutcome {
    /// The write to replicate, or `None` if the condition was not met (nothing changed).
    pub write: Option<Write>,
    /// The previous value, if [`SetOptions::get`] was set and the key existed.
    pub previous: Option<Bytes>,
}

/// A versioned write: what a primary sends its backups, and what a snapshot is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// Bucket name (names, not handles, cross the network).
    pub bucket: Arc<str>,
    /// The key.
    pub key: Bytes,
    /// The write's version.
    pub version: Version,
    /// What the write does.
    pub op: WriteOp,
}

/// The effect of a [`Write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// The key holds `value`, expiring at `expires_at` if set.
    Put {
        /// The value.
        value: Bytes,
        /// Absolute expiry.
        expires_at: Option<Timestamp>,
    },
    /// The key is deleted.
    Delete,
}

/// What [`Store::rename`] did (Redis `RENAME`, `RENAMENX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renamed {
    /// The value (and its expiry) now lives under the new key.
    Done,
    /// The source key does not exist (Redis: `ERR no such key`); nothing changed.
    Missing,
    /// Without `replace`, the new key exists (or is the source); nothing changed.
    TargetExists,
}

/// What [`Store::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Applied {
    /// The write was newer and is now held.
    Applied,
    /// The store already holds this version or a newer one; nothing changed.
    Stale {
        /// The version held.
        held: Version,
    },
    /// The key is not held: it was evicted (to respect the budget) or expired at a newer
    /// version. A replicated write and a carried one travel separately, so an older write
    /// can arrive after a newer one was applied and evicted or expired; applying it would
    /// bring back an older value. Nothing changed; the key stays absent.
    Evicted {
        /// The version the key was evicted or expired at.
        at: Version,
    },
}

/// What Redis `WATCH` remembers of a key ([`Store::stamp`]), for
/// [`Store::unchanged`] to tell whether the key was written, deleted, expired or evicted
/// since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyStamp {
    /// The version of the key's value; `None` if it had none (never written, deleted,
    /// expired, evicted).
    pub version: Option<Version>,
    /// The highest version of the key's partition: a key without a value then was
    /// written since if it holds, or was removed at, a newer version.
    pub high: Version,
    /// The routing epoch it was taken at: a key without a value is only followed on the
    /// node that stamped it, while its partition stays there.
    pub epoch: u64,
    /// The store's count of recorded removals and clears (see `EvictedVersions`). Like
    /// `high`, it means something only to the store that took the stamp.
    pub removals: u64,
    /// That store: a node restarted at the same routing epoch has another.
    pub store: u64,
}

/// A key's time to live, as Redis `TTL`/`PTTL` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// The key does not exist (Redis -2).
    Missing,
    /// The key exists and does not expire (Redis -1).
    Persistent,
    /// The key expires at `at`, `remaining` from now.
    Expires {
        /// Absolute expiry.
        at: Timestamp,
        /// Time left.
        remaining: Duration,
    },
}

/// What one [`Store::reap`] step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReapStats {
    /// Keys looked at.
    pub sampled: usize,
    /// Expired entries (and tombstones) removed.
    pub removed: usize,
    /// Sampling rounds run.
    pub rounds: usize,
}

/// Counters and gauges of a store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Entries held, tombstones included.
    pub entries: usize,
    /// Tombstones among them.
    pub tombstones: usize,
    /// Keys with an expiry (tombstones included).
    pub with_ttl: usize,
    /// Current weight in bytes (see [`ENTRY_OVERHEAD`]).
    pub weight: u64,
    /// The byte budget.
    pub capacity: u64,
    /// Entries evicted to respect the budget, since the store was made.
    pub evicted: u64,
    /// Expired entries and tombstones removed (on access or by the reaper), since the store
    /// was made.
    pub expired: u64,
}

/// One node's local store. See the [module docs](self).
pub struct Store {
    config: StoreConfig,
    buckets: Vec<Bucket>,
    bucket_ids: HashMap<Arc<str>, BucketId>,
    cache: unsync::Cache<EntryKey, Entry, EntryWeighter, RandomState, Evictions>,
    /// Keys of each partition; an entry's `part_pos` is its index in its partition's list.
    parts: Vec<PartIndex>,
    /// Keys with an expiry; an entry's `ttl_pos` is its index here.
    ttl_keys: Vec<EntryKey>,
    tombstones: usize,
    evicted: u64,
    /// Versions of recently evicted or expired keys (see [`Applied::Evicted`]).
    evicted_versions: EvictedVersions,
    expired: u64,
    /// Tells this store's [`KeyStamp`]s from another's.
    id: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Bucket {
    name: Arc<str>,
    options: BucketOptions,
}

#[derive(Debug, Default)]
struct PartIndex {
    keys: Vec<EntryKey>,
    /// Highest version written or applied in this partition.
    high: Version,
    /// Counts the times the partition was dropped: evictions remembered from before a
    /// drop no longer hold back the writes of a fresh snapshot.
    generation: u32,
}

/// The versions recent evictions and expiries removed, by key: a direct-mapped table of a
/// fixed size, so it costs a bounded amount of memory however much is removed. It is best
/// effort: a key's slot is taken over by the next removed key that hashes to it, so a
/// removal is remembered for about as many further removals as there are slots (at 100 000
/// evictions per second and 32 768 slots, a third of a second on average; a late write
/// takes a round trip), and forgotten sooner by bad luck.
struct EvictedVersions {
    slots: Vec<EvictedSlot>,
    hasher: SlotHasher,
    /// Removals recorded so far (and clears): a slot's `at` is this count when it was
    /// recorded, so a [`KeyStamp`] tells whether its key's slot changed since.
    count: u64,
    /// `count` at the last [`clear`](Self::clear), which forgets every slot.
    cleared: u64,
}

/// What [`EvictedVersions::since`] knows of a key's removals after a point.
enum Removals {
    /// The key's slot holds its last removal, at this version.
    At(Version),
    /// Its slot was not taken since: no removal of the key since.
    None,
    /// Its slot was taken by another key since (or the table cleared): unknown.
    Forgotten,
}

/// Random keys, so that nobody can aim keys at one slot; in tests FNV-1a, fully specified,
/// so that which keys share a slot never changes.
#[cfg(not(test))]
type SlotHasher = RandomState;
#[cfg(test)]
type SlotHasher = std::hash::BuildHasherDefault<Fnv1a>;

/// 64-bit FNV-1a.
#[cfg(test)]
struct Fnv1a(u64);

#[cfg(test)]
impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

#[cfg(test)]
impl std::hash::Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct EvictedSlot {
    hash: u64,
    version: Version,
    /// The generation of the key's partition when it was evicted.
    generation: u32,
    /// The table's `count` when it was recorded.
    at: u64,
}

impl EvictedVersions {
    /// A slot per 8 KiB of budget, 256 to 32 768 of them (about 1/256 of the budget).
    fn new(max_bytes: u64) -> Self {
        let slots = usize::try_from(max_bytes / 8192)
            .unwrap_or(usize::MAX)
            .clamp(256, 32_768);
        Self::with_slots(slots)
    }

    fn with_slots(slots: usize) -> Self {
        let slots = slots.next_power_of_two();
        Self {
            slots: vec![EvictedSlot::default(); slots],
            hasher: SlotHasher::default(),
            count: 0,
            cleared: 0,
        }
    }

    fn hash(&self, bucket: u16, key: &[u8]) -> u64 {
        self.hasher.hash_one((bucket, key))
    }

    fn index(&self, hash: u64) -> usize {
        // Truncation intended: the low bits pick the slot.
        #[allow(clippy::cast_possible_truncation)]
        let low = hash as usize;
        low & (self.slots.len() - 1)
    }

    fn record(&mut self, hash: u64, version: Version, generation: u32) {
        let i = self.index(hash);
        self.count += 1;
        self.slots[i] = EvictedSlot {
            hash,
            version,
            generation,
            at: self.count,
        };
    }

    /// What the table knows of the removals of the key with `hash` (in a partition of
    /// `generation`) since its `count` was `since`.
    fn since(&self, hash: u64, generation: u32, since: u64) -> Removals {
        if since < self.cleared {
            return Removals::Forgotten;
        }
        match self.get(hash, generation) {
            Some(version) => Removals::At(version),
            None if self.slots[self.index(hash)].at > since => Removals::Forgotten,
            None => Removals::None,
        }
    }

    /// The version the key with `hash` was evicted at, if remembered for `generation`.
    fn get(&self, hash: u64, generation: u32) -> Option<Version> {
        let slot = self.slots[self.index(hash)];
        (slot.hash == hash && slot.generation == generation && slot.version != Version::default())
            .then_some(slot.version)
    }

    fn clear(&mut self) {
        self.slots.fill(EvictedSlot::default());
        self.count += 1;
        self.cleared = self.count;
    }
}

/// A stored key: the bucket id (2 bytes, big-endian) then the key. Up to
/// [`INLINE_KEY`] bytes are held in place, so that a lookup compares the key in the cache
/// slot it already loaded instead of following a pointer to another cache line; a longer
/// one is one shared allocation, so that the cache and the indexes hold handles to the
/// same bytes. Either way the handle is 24 bytes.
#[derive(Debug, Clone)]
enum EntryKey {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Shared(Arc<[u8]>),
}

/// Longest bucket id + key held in place by an [`EntryKey`] (a 20-byte key).
const INLINE_KEY: usize = 22;

impl EntryKey {
    fn new(bucket: u16, key: &[u8]) -> Self {
        let [b0, b1] = bucket.to_be_bytes();
        let len = key.len() + 2;
        if len <= INLINE_KEY {
            let mut bytes = [0u8; INLINE_KEY];
            bytes[0] = b0;
            bytes[1] = b1;
            bytes[2..len].copy_from_slice(key);
            return Self::Inline {
                len: u8::try_from(len).expect("invariant: at most INLINE_KEY"),
                bytes,
            };
        }
        // A chain of exact-size iterators: collected in one allocation.
        Self::Shared([b0, b1].into_iter().chain(key.iter().copied()).collect())
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Shared(b) => b,
        }
    }

    fn bucket(&self) -> u16 {
        let b = self.as_bytes();
        u16::from_be_bytes([b[0], b[1]])
    }

    fn key(&self) -> &[u8] {
        &self.as_bytes()[2..]
    }
}

impl PartialEq for EntryKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for EntryKey {}

impl Hash for EntryKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u16(self.bucket());
        state.write(self.key());
    }
}

/// A page from `sorted` (keys by scan order) of the keys `listed` accepts: up to the
/// first whose bytes would take it past `max_bytes`, moved on to the next order so that
/// keys of one order are never split, and that order (`None` if the page holds them all).
/// The first listed order's keys are always taken.
fn fill_page(
    sorted: &[(u64, &EntryKey)],
    max_bytes: usize,
    listed: impl Fn(&EntryKey) -> bool,
) -> (Vec<Bytes>, Option<u64>) {
    let mut page = Vec::new();
    let mut taken = 0usize;
    let mut last = None;
    for &(order, k) in sorted {
        if !listed(k) {
            continue;
        }
        let len = k.key().len() + 4;
        if taken > 0 && taken + len > max_bytes && last != Some(order) {
            return (page, Some(order));
        }
        taken += len;
        last = Some(order);
        page.push(Bytes::copy_from_slice(k.key()));
    }
    (page, None)
}

/// The order in which [`Store::keys`] lists a partition's keys: a 48-bit hash of the
/// key, fixed (no seed), so that every node of a cluster agrees and a scan resumes on
/// whichever node holds the partition next.
pub fn scan_order(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key) >> 16
}

/// A borrowed key for lookups; hashes exactly like [`EntryKey`].
struct KeyRef<'a> {
    bucket: u16,
    key: &'a [u8],
}

impl Hash for KeyRef<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u16(self.bucket);
        state.write(self.key);
    }
}

impl Equivalent<EntryKey> for KeyRef<'_> {
    fn equivalent(&self, k: &EntryKey) -> bool {
        self.bucket == k.bucket() && self.key == k.key()
    }
}

const NO_POS: u32 = u32::MAX;

/// What [`Store::set_in_place`] did: the whole `set`, or nothing (the key and value back).
enum InPlace {
    Done(SetOutcome),
    No(Bytes, Bytes),
}

#[derive(Debug, Clone)]
struct Entry {
    /// `None` for a tombstone. An exact-size copy, never a view into a caller's buffer.
    value: Option<Arc<[u8]>>,
    version: Version,
    /// Milliseconds since the Unix epoch; 0 for no expiry.
    expires_at: u64,
    part_pos: u32,
    ttl_pos: u32,
}

impl Entry {
    fn expiry(&self) -> Option<Timestamp> {
        (self.expires_at != 0).then_some(Timestamp::from_millis(self.expires_at))
    }

    fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at != 0 && self.expires_at <= now.as_millis()
    }
}

#[derive(Debug, Clone)]
struct EntryWeighter;

impl Weighter<EntryKey, Entry> for EntryWeighter {
    fn weight(&self, key: &EntryKey, val: &Entry) -> u64 {
        entry_weight(key.key().len(), val.value.as_ref().map_or(0, |v| v.len()))
    }
}

/// What an entry of a `key_len`-byte key and a `value_len`-byte value weighs against the
/// byte budget ([`StoreConfig::max_bytes`]): both lengths plus [`ENTRY_OVERHEAD`].
#[must_use]
pub fn entry_weight(key_len: usize, value_len: usize) -> u64 {
    let len = u64::try_from(key_len.saturating_add(value_len)).unwrap_or(u64::MAX);
    len.saturating_add(ENTRY_OVERHEAD)
}

/// Collects what the cache evicts during one insert.
#[derive(Debug, Clone, Default)]
struct Evictions;

impl Lifecycle<EntryKey, Entry> for Evictions {
    type RequestState = Vec<(EntryKey, Entry)>;

    fn begin_request(&self) -> Self::RequestState {
        Vec::new()
    }

    fn on_evict(&self, state: &mut Self::RequestState, key: EntryKey, val: Entry) {
        state.push((key, val));
    }
}

/// Which index an entry position refers to.
#[derive(Clone, Copy)]
enum Index {
    Part(usize),
    Ttl,
}

impl Store {
    /// An empty store with no buckets.
    pub fn new(config: StoreConfig) -> Self {
        let options = OptionsBuilder::new()
            .estimated_items_capacity(config.estimated_items)
            .weight_capacity(config.max_bytes)
            .build()
            .expect("invariant: estimated items and weight capacity are always valid");
        let cache =
            unsync::Cache::with_options(options, EntryWeighter, RandomState::new(), Evictions);
        let parts = config
            .partitioning
            .iter()
            .map(|_| PartIndex::default())
            .collect();
        Self {
            // Another for each store, of this process or another (std seeds each
            // `RandomState` afresh).
            id: RandomState::new().hash_one(0u8),
            evicted_versions: EvictedVersions::new(config.max_bytes),
            config,
            buckets: Vec::new(),
            bucket_ids: HashMap::new(),
            cache,
            parts,
            ttl_keys: Vec::new(),
            tombstones: 0,
            evicted: 0,
            expired: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Adds a bucket.
    pub fn create_bucket(&mut self, name: &str, options: BucketOptions) -> Result<BucketId, Error> {
        if self.bucket_ids.contains_key(name) {
            return Err(Error::BucketExists { name: name.into() });
        }
        if self.buckets.len() >= MAX_BUCKETS {
            return Err(Error::TooManyBuckets { max: MAX_BUCKETS });
        }
        let id = BucketId(u16::try_from(self.buckets.len()).expect("invariant: below MAX_BUCKETS"));
        let name: Arc<str> = name.into();
        self.buckets.push(Bucket {
            name: name.clone(),
            options,
        });
        self.bucket_ids.insert(name, id);
        Ok(id)
    }

    /// The bucket called `name`.
    pub fn bucket(&self, name: &str) -> Result<BucketId, Error> {
        self.bucket_ids
            .get(name)
            .copied()
            .ok_or_else(|| Error::BucketUnknown { name: name.into() })
    }

    /// The name of bucket `id`.
    pub fn bucket_name(&self, id: BucketId) -> Option<&Arc<str>> {
        self.buckets.get(usize::from(id.0)).map(|b| &b.name)
    }

    /// The options of bucket `id`.
    pub fn bucket_options(&self, id: BucketId) -> Option<&BucketOptions> {
        self.buckets.get(usize::from(id.0)).map(|b| &b.options)
    }

    /// The value of `key`, if it exists and has not expired. Counts as a use for eviction.
    pub fn get(&mut self, bucket: BucketId, key: &[u8], now: Timestamp) -> Option<Bytes> {
        let k = KeyRef {
            bucket: bucket.0,
            key,
        };
        let entry = self.cache.get(&k)?;
        if entry.is_expired(now) {
            self.remove_expired(&k);
            return None;
        }
        entry.value.clone().map(Bytes::from_owner)
    }

    /// Whether `key` exists (and has not expired). Not a use for eviction.
    pub fn exists(&mut self, bucket: BucketId, key: &[u8], now: Timestamp) -> bool {
        self.live(bucket, key, now).is_some()
    }

    /// The time to live of `key`.
    pub fn ttl(&mut self, bucket: BucketId, key: &[u8], now: Timestamp) -> Ttl {
        match self.live(bucket, key, now) {
            None => Ttl::Missing,
            Some(e) => match e.expiry() {
                None => Ttl::Persistent,
                Some(at) => Ttl::Expires {
                    at,
                    remaining: at.saturating_since(now),
                },
            },
        }
    }

    /// `key`'s [`KeyStamp`] at `now` (an expired value counts as none), on a node at
    /// routing epoch `epoch`.
    pub fn stamp(&self, bucket: BucketId, key: &[u8], now: Timestamp, epoch: u64) -> KeyStamp {
        let k = KeyRef {
            bucket: bucket.0,
            key,
        };
        let part = &self.parts[self.config.partitioning.partition_of(key).index()];
        KeyStamp {
            version: self
                .cache
                .peek(&k)
                .filter(|e| e.value.is_some() && !e.is_expired(now))
                .map(|e| e.version),
            high: part.high,
            epoch,
            removals: self.evicted_versions.count,
            store: self.id,
        }
    }

    /// Whether `key` is as it was when `stamp` was taken, on a node at routing epoch
    /// `epoch`: the same value (the same version, not expired), or still none, with
    /// nothing written to it since.
    ///
    /// For a key that had no value, "nothing written since" is read from what the store
    /// holds (a tombstone or expired entry at most as new as the stamp's partition
    /// version) or, once the entry is gone, from the table of recent removals (a removal
    /// at most as new). When that table's slot for the key was taken by another key
    /// since (a bounded table: likelier the more keys are evicted, expired or reaped as
    /// tombstones meanwhile, per slot), or the store was cleared, any write to the
    /// partition since counts as a change. After a change of routing epoch (the
    /// partition may have moved: a new owner knows nothing of the removals here), or on
    /// another store (the node restarted), a key that had no value counts as changed.
    /// Those are spurious changes, never missed ones.
    pub fn unchanged(
        &self,
        bucket: BucketId,
        key: &[u8],
        stamp: &KeyStamp,
        now: Timestamp,
        epoch: u64,
    ) -> bool {
        let k = KeyRef {
            bucket: bucket.0,
            key,
        };
        let entry = self.cache.peek(&k);
        let live = |e: &Entry| e.value.is_some() && !e.is_expired(now);
        if let Some(version) = stamp.version {
            return entry.is_some_and(|e| e.version == version && live(e));
        }
        if epoch != stamp.epoch || stamp.store != self.id {
            return false;
        }
        let part = &self.parts[self.config.partitioning.partition_of(key).index()];
        match entry {
            Some(e) => !live(e) && e.version <= stamp.high,
            None => {
                let hash = self.evicted_versions.hash(bucket.0, key);
                match self
                    .evicted_versions
                    .since(hash, part.generation, stamp.removals)
                {
                    Removals::At(removed) => removed <= stamp.high,
                    Removals::None => true,
                    Removals::Forgotten => part.high <= stamp.high,
                }
            }
        }
    }

    /// The version of `key`'s entry, tombstones included (for replication and tests).
    pub fn version(&self, bucket: BucketId, key: &[u8]) -> Option<Version> {
        let k = KeyRef {
            bucket: bucket.0,
            key,
        };
        self.cache.peek(&k).map(|e| e.version)
    }

    /// Sets `key` to `value` as Redis `SET` does, as primary at routing epoch `epoch`.
    ///
    /// Size limits are checked first ([`Error::KeyTooLarge`], [`Error::ValueTooLarge`]);
    /// on error nothing changed. The new entry may evict others to respect the budget.
    pub fn set(
        &mut self,
        bucket: BucketId,
        key: Bytes,
        value: Bytes,
        options: SetOptions,
        now: Timestamp,
        epoch: u64,
    ) -> Result<SetOutcome, Error> {
        let default_ttl = self.bucket_ref(bucket)?.options.default_ttl;
        self.check_size(bucket, &key, value.len())?;
        let (key, value) =
            match self.set_in_place(bucket, key, value, &options, default_ttl, now, epoch) {
                InPlace::Done(outcome) => return Ok(outcome),
                InPlace::No(key, value) => (key, value),
            };
        let current = self.live(bucket, &key, now).cloned();
        let previous = if options.get {
            current
                .as_ref()
                .and_then(|e| e.value.clone())
                .map(Bytes::from_owner)
        } else {
            None
        };
        let live_expiry = current.as_ref().map(Entry::expiry);
        let Some(expires_at) = admit(&options, live_expiry, default_ttl, now) else {
            return Ok(SetOutcome {
                write: None,
                previous,
            });
        };
        let stored = Arc::from(&value[..]);
        let write = self.local_put(bucket, key, stored, value, expires_at, epoch);
        Ok(SetOutcome {
            write: Some(write),
            previous,
        })
    }

    /// `set`'s common case in one cache lookup: the key has a live (or tombstone) entry
    /// whose weight the new value does not exceed and whose expiry index membership does
    /// not change, so the entry is updated where it is (no eviction can be needed and no
    /// index moves). Anything else is left to the general path.
    #[allow(
        clippy::too_many_arguments,
        reason = "set's own arguments, passed through once"
    )]
    fn set_in_place(
        &mut self,
        bucket: BucketId,
        key: Bytes,
        value: Bytes,
        options: &SetOptions,
        default_ttl: Option<Duration>,
        now: Timestamp,
        epoch: u64,
    ) -> InPlace {
        let k = KeyRef {
            bucket: bucket.0,
            key: &key,
        };
        let Some(mut entry) = self.cache.get_mut(&k) else {
            return InPlace::No(key, value);
        };
        if entry.is_expired(now) {
            return InPlace::No(key, value);
        }
        let live = entry.value.is_some();
        let previous = if options.get {
            entry.value.clone().map(Bytes::from_owner)
        } else {
            None
        };
        let live_expiry = live.then(|| entry.expiry());
        let Some(expires_at) = admit(options, live_expiry, default_ttl, now) else {
            return InPlace::Done(SetOutcome {
                write: None,
                previous,
            });
        };
        let at = expires_at.map_or(0, |t| t.as_millis().max(1));
        let old_len = entry.value.as_ref().map_or(0, |v| v.len());
        if value.len() > old_len || (at != 0) != (entry.ttl_pos != NO_POS) {
            return InPlace::No(key, value);
        }
        let partition = self.config.partitioning.partition_of(&key);
        let part = &mut self.parts[partition.index()];
        let version = Version {
            epoch: epoch.max(part.high.epoch),
            seq: part.high.seq.saturating_add(1),
        };
        part.high = version;
        if !live {
            self.tombstones -= 1;
        }
        match entry.value.as_mut().and_then(Arc::get_mut) {
            // The same length and no reader holds the old value (a reply being written
            // shares it): overwrite it where it is, no allocation.
            Some(old) if old.len() == value.len() => old.copy_from_slice(&value),
            _ => entry.value = Some(Arc::from(&value[..])),
        }
        entry.version = version;
        entry.expires_at = at;
        // Dropping the guard lets the cache account for the (not larger) new weight.
        drop(entry);
        InPlace::Done(SetOutcome {
            write: Some(Write {
                bucket: self.buckets[usize::from(bucket.0)].name.clone(),
                key,
                version,
                op: WriteOp::Put { value, expires_at },
            }),
            previous,
        })
    }

    /// Deletes `key` as primary at `epoch`; `None` if it did not exist.
    pub fn delete(
        &mut self,
        bucket: BucketId,
        key: Bytes,
        now: Timestamp,
        epoch: u64,
    ) -> Result<Option<Write>, Error> {
        self.bucket_ref(bucket)?;
        if self.live(bucket, &key, now).is_none() {
            return Ok(None);
        }
        Ok(Some(self.local_delete(bucket, key, now, epoch)))
    }

    /// Sets `key`'s expiry to `at` as primary at `epoch` (Redis `EXPIRE`, `PEXPIREAT`) if
    /// `condition` allows it; a time not after `now` deletes the key. `None` if the key
    /// does not exist or the condition does not hold.
    pub fn expire(
        &mut self,
        bucket: BucketId,
        key: Bytes,
        at: Timestamp,
        condition: ExpireCondition,
        now: Timestamp,
        epoch: u64,
    ) -> Result<Option<Write>, Error> {
        self.bucket_ref(bucket)?;
        let Some((value, current)) = self.live_value(bucket, &key, now) else {
            return Ok(None);
        };
        if !condition.allows(current, at) {
            return Ok(None);
        }
        if at <= now {
            return Ok(Some(self.local_delete(bucket, key, now, epoch)));
        }
        let wire = Bytes::from_owner(value.clone());
        Ok(Some(self.local_put(
            bucket,
            key,
            value,
            wire,
            Some(at),
            epoch,
        )))
    }

    /// Removes `key`'s expiry as primary at `epoch` (Redis `PERSIST`); `None` if the key
    /// does not exist or has no expiry.
    pub fn persist(
        &mut self,
        bucket: BucketId,
        key: Bytes,
        now: Timestamp,
        epoch: u64,
    ) -> Result<Option<Write>, Error> {
        self.bucket_ref(bucket)?;
        let Some(entry) = self.live(bucket, &key, now) else {
            return Ok(None);
        };
        let (Some(value), Some(_)) = (entry.value.clone(), entry.expiry()) else {
            return Ok(None);
        };
        let wire = Bytes::from_owner(value.clone());
        Ok(Some(self.local_put(bucket, key, value, wire, None, epoch)))
    }

    /// Adds `delta` to the decimal integer in `key` as primary at `epoch` (Redis `INCRBY`);
    /// a missing key counts as 0 and gets the bucket's default TTL, an existing key keeps
    /// its TTL. Returns the new value and the write to replicate.
    pub fn incr_by(
        &mut self,
        bucket: BucketId,
        key: Bytes,
        delta: i64,
        now: Timestamp,
        epoch: u64,
    ) -> Result<(i64, Write), Error> {
        // The result is at most 20 bytes; only the key's length is checked up front.
        self.check_size(bucket, &key, 0)?;
        let (value, expires_at) = self.value_to_update(bucket, &key, now)?;
        let current = value.map_or(Ok(0), |v| parse_i64(&v))?;
        let next = current.checked_add(delta).ok_or(Error::Overflow)?;
        let text = next.to_string();
        let wire = Bytes::copy_from_slice(text.as_bytes());
        let write = self.local_put(
            bucket,
            key,
            Arc::from(text.as_bytes()),
            wire,
            expires_at,
            epoch,
        );
        Ok((next, write))
    }

    /// Sets every pair if none of the keys exists (Redis `MSETNX`), as plain `SET`s;
    /// `None` (nothing written) if one does. Sizes are checked first, so a pair too
    /// large writes nothing either. The writes to replicate, in order.
    pub fn set_all_absent(
        &mut self,
        bucket: BucketId,
        pairs: &[(Bytes, Bytes)],
        now: Timestamp,
        epoch: u64,
    ) -> Result<Option<Vec<Write>>, Error> {
        for (k, v) in pairs {
            self.check_size(bucket, k, v.len())?;
        }
        if pairs
            .iter()
            .any(|(k, _)| self.live(bucket, k, now).is_some())
        {
            return Ok(None);
        }
        let mut writes = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            let outcome = self.set(
                bucket,
                k.clone(),
                v.clone(),
                SetOptions::default(),
                now,
                epoch,
            )?;
            writes.extend(outcome.write);
        }
        Ok(Some(writes))
    }

    /// Copies the value of `from`, with its expiry, to `to` (Redis `COPY`; with `replace`
    /// false an existing `to` is left alone). The write to replicate, or `None` when
    /// nothing was copied (no `from`, or `to` kept). `from` and `to` must differ.
    pub fn copy(
        &mut self,
        bucket: BucketId,
        from: &[u8],
        to: Bytes,
        replace: bool,
        now: Timestamp,
        epoch: u64,
    ) -> Result<Option<Write>, Error> {
        self.bucket_ref(bucket)?;
        let Some((value, expires_at)) = self.live_value(bucket, from, now) else {
            return Ok(None);
        };
        if !replace && self.live(bucket, &to, now).is_some() {
            return Ok(None);
        }
        self.check_size(bucket, &to, value.len())?;
        let wire = Bytes::from_owner(Arc::clone(&value));
        Ok(Some(
            self.local_put(bucket, to, value, wire, expires_at, epoch),
        ))
    }

    /// Moves the value of `from`, with its expiry, to `to` (Redis `RENAME`, or with
    /// `replace` false `RENAMENX`, which leaves an existing `to` alone). Renaming a key to
    /// itself changes nothing (`Done` with `replace`, as Redis answers). The writes to
    /// replicate, in order: the source's delete and the target's put.
    pub fn rename(
        &mut self,
        bucket: BucketId,
        from: Bytes,
        to: Bytes,
        replace: bool,
        now: Timestamp,
        epoch: u64,
    ) -> Result<(Renamed, Vec<Write>), Error> {
        self.bucket_ref(bucket)?;
        let Some((value, expires_at)) = self.live_value(bucket, &from, now) else {
            return Ok((Renamed::Missing, Vec::new()));
        };
        let not_done = if replace {
            Renamed::Done
        } else {
            Renamed::TargetExists
        };
        if from == to || (!replace && self.live(bucket, &to, now).is_some()) {
            return Ok((not_done, Vec::new()));
        }
        self.check_size(bucket, &to, value.len())?;
        let delete = self.local_delete(bucket, from, now, epoch);
        let wire = Bytes::from_owner(Arc::clone(&value));
        let put = self.local_put(bucket, to, value, wire, expires_at, epoch);
        Ok((Renamed::Done, vec![delete, put]))
    }

    /// Adds `increment` to the number in `key` as primary at `epoch`, as Redis's
    /// `INCRBYFLOAT` computes it ([`crate::ldouble`]); a missing key counts as 0 and gets
    /// the bucket's default TTL, an existing key keeps its TTL. Returns the new value's
    /// text (also what is stored) and the write to replicate.
    pub fn incr_by_float(
        &mut self,
        bucket: BucketId,
        key: Bytes,
        increment: LongDouble,
        now: Timestamp,
        epoch: u64,
    ) -> Result<(Bytes, Write), Error> {
        let (value, expires_at) = self.value_to_update(bucket, &key, now)?;
        let current = value.map_or(Ok(LongDouble::ZERO), |v| {
            LongDouble::parse(&v).map_err(|_| Error::NotAFloat)
        })?;
        let text = current
            .checked_add(increment)
            .ok()
            .and_then(LongDouble::to_redis_string)
            .ok_or(Error::NotFinite)?;
        self.check_size(bucket, &key, text.len())?;
        let stored: Arc<[u8]> = Arc::from(text.as_bytes());
        let wire = Bytes::from_owner(Arc::clone(&stored));
        let write = self.local_put(bucket, key, stored, wire.clone(), expires_at, epoch);
        Ok((wire, write))
    }

    /// Appends `suffix` to the value of `key` (Redis `APPEND`; a missing key is created
    /// with the bucket's default TTL, an existing one keeps its expiry); the new length.
    /// The size limits apply to the result, checked before anything is copied.
    pub fn append(
        &mut self,
        bucket: BucketId,
        key: Bytes,
        suffix: &[u8],
        now: Timestamp,
        epoch: u64,
    ) -> Result<(usize, Write), Error> {
        let (old, expires_at) = self.value_to_update(bucket, &key, now)?;
        let old = old.as_deref().unwrap_or_default();
        let len = old.len().saturating_add(suffix.len());
        self.check_size(bucket, &key, len)?;
        let mut value = Vec::with_capacity(len);
        value.extend_from_slice(old);
        value.extend_from_slice(suffix);
        let stored: Arc<[u8]> = Arc::from(value);
        let wire = Bytes::from_owner(Arc::clone(&stored));
        let write = self.local_put(bucket, key, stored, wire, expires_at, epoch);
        Ok((len, write))
    }

    /// Overwrites the value of `key` from byte `offset` on with `part` (Redis `SETRANGE`),
    /// padding with zero bytes when the value is shorter than `offset`; a missing key is
    /// created with the bucket's default TTL, an existing one keeps its expiry. Returns
    /// the new length and the write to replicate, which is `None` when `part` is empty
    /// (nothing changes, and a missing key is not created). The size limits apply to the
    /// result, checked before anything is allocated.
    pub fn set_range(
        &mut self,
        bucket: BucketId,
        key: Bytes,
        offset: u64,
        part: &[u8],
        now: Timestamp,
        epoch: u64,
    ) -> Result<(usize, Option<Write>), Error> {
        let (old, expires_at) = self.value_to_update(bucket, &key, now)?;
        let old = old.as_deref().unwrap_or_default();
        if part.is_empty() {
            return Ok((old.len(), None));
        }
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = offset.saturating_add(part.len());
        let len = end.max(old.len());
        self.check_size(bucket, &key, len)?;
        let mut value = Vec::with_capacity(len);
        value.extend_from_slice(old);
        if value.len() < end {
            value.resize(end, 0);
        }
        value[offset..end].copy_from_slice(part);
        let stored: Arc<[u8]> = Arc::from(value);
        let wire = Bytes::from_owner(Arc::clone(&stored));
        let write = self.local_put(bucket, key, stored, wire, expires_at, epoch);
        Ok((len, Some(write)))
    }

    /// Applies a replicated (or snapshot) write if it is newer than what the store holds
    /// for that key, tombstones included, or, for a key it does not hold, not older than
    /// the version it evicted the key at, if it remembers one ([`Applied::Evicted`]).
    /// Never compares times.
    pub fn apply(&mut self, write: &Write, now: Timestamp) -> Result<Applied, Error> {
        let bucket = self.bucket(&write.bucket)?;
        let k = KeyRef {
            bucket: bucket.0,
            key: &write.key,
        };
        // A put that fits where the held entry is (see `set_in_place`) is applied there,
        // in this one lookup.
        let put = match &write.op {
            WriteOp::Put { value, expires_at } => Some((
                value,
                expires_at.map_or(0, |t| t.as_millis().max(1)),
                self.check_size(bucket, &write.key, value.len()).is_ok(),
            )),
            WriteOp::Delete => None,
        };
        let held_now = self.cache.peek_mut(&k);
        let absent = held_now.is_none();
        if let Some(mut held) = held_now {
            if held.version >= write.version {
                return Ok(Applied::Stale { held: held.version });
            }
            if let Some((value, at, true)) = put {
                let old_len = held.value.as_ref().map_or(0, |v| v.len());
                if value.len() <= old_len && (at != 0) == (held.ttl_pos != NO_POS) {
                    if held.value.is_none() {
                        self.tombstones -= 1;
                    }
                    held.value = Some(Arc::from(&value[..]));
                    held.version = write.version;
                    held.expires_at = at;
                    drop(held);
                    let partition = self.config.partitioning.partition_of(&write.key);
                    let part = &mut self.parts[partition.index()];
                    part.high = part.high.max(write.version);
                    return Ok(Applied::Applied);
                }
            }
        }
        let partition = self.config.partitioning.partition_of(&write.key);
        if absent {
            let generation = self.parts[partition.index()].generation;
            let hash = self.evicted_versions.hash(bucket.0, &write.key);
            if let Some(at) = self.evicted_versions.get(hash, generation)
                && write.version < at
            {
                return Ok(Applied::Evicted { at });
            }
        }
        let key = EntryKey::new(bucket.0, &write.key);
        match &write.op {
            WriteOp::Put { value, expires_at } => {
                self.check_size(bucket, &write.key, value.len())?;
                self.insert(
                    key,
                    Some(Arc::from(&value[..])),
                    write.version,
                    expires_at.map_or(0, |t| t.as_millis().max(1)),
                );
            }
            WriteOp::Delete => {
                let until = now.saturating_add(self.config.tombstone_ttl);
                self.insert(key, None, write.version, until.as_millis().max(1));
            }
        }
        let part = &mut self.parts[partition.index()];
        part.high = part.high.max(write.version);
        Ok(Applied::Applied)
    }

    /// The highest version written or applied in `partition` (default if none).
    pub fn high_version(&self, partition: Partition) -> Version {
        self.parts
            .get(partition.index())
            .map_or_else(Version::default, |p| p.high)
    }

    /// A snapshot of `partition` at `now`, as writes a new owner can [`apply`](Self::apply):
    /// every live entry as a put, every tombstone as a delete, with their versions.
    pub fn snapshot(
        &self,
        partition: Partition,
        now: Timestamp,
    ) -> impl Iterator<Item = Write> + '_ {
        let keys = self
            .parts
            .get(partition.index())
            .map_or(&[][..], |p| &p.keys[..]);
        keys.iter().filter_map(move |k| {
            let e = self.cache.peek(k)?;
            let op = match &e.value {
                Some(value) if !e.is_expired(now) => WriteOp::Put {
                    value: Bytes::from_owner(value.clone()),
                    expires_at: e.expiry(),
                },
                Some(_) => return None,
                None => WriteOp::Delete,
            };
            Some(Write {
                bucket: self.buckets[usize::from(k.bucket())].name.clone(),
                key: Bytes::copy_from_slice(k.key()),
                version: e.version,
                op,
            })
        })
    }

    /// One page of the live keys of `bucket` in `partition` that match `pattern` (a
    /// [`crate::glob`] pattern; every key when `None`), in no particular order. Backs
    /// `SCAN` and `KEYS`. Not a use for eviction.
    ///
    /// Keys are listed in the order of [`scan_order`] (a fixed hash, the same on every
    /// node), from `from` on. When they exceed `max_bytes` (key lengths plus 4 bytes
    /// each), the page ends between two hash values and the value to resume from is
    /// returned; `None` when the partition is done. A page always holds the keys of at
    /// least one hash value, so each page makes progress, and a key present from the
    /// first page to the last is listed exactly once.
    pub fn keys(
        &self,
        bucket: BucketId,
        partition: Partition,
        pattern: Option<&[u8]>,
        from: u64,
        max_bytes: usize,
        now: Timestamp,
    ) -> (Vec<Bytes>, Option<u64>) {
        let Some(part) = self.parts.get(partition.index()) else {
            return (Vec::new(), None);
        };
        // Candidates by the cheap tests (bucket, order: the key is in the index already).
        // The pattern and liveness (a cache lookup each) are checked only for keys that
        // may go into the page.
        let mut found: Vec<(u64, &EntryKey)> = part
            .keys
            .iter()
            .filter(|k| k.bucket() == bucket.0)
            .map(|k| (scan_order(k.key()), k))
            .filter(|&(order, _)| order >= from)
            .collect();
        let listed = |k: &EntryKey| {
            pattern.is_none_or(|p| crate::glob::matches(p, k.key()))
                && self
                    .cache
                    .peek(k)
                    .is_some_and(|e| e.value.is_some() && !e.is_expired(now))
        };
        let bytes: usize = found.iter().map(|(_, k)| k.key().len() + 4).sum();
        if bytes <= max_bytes {
            let keys = found
                .iter()
                .filter(|(_, k)| listed(k))
                .map(|(_, k)| Bytes::copy_from_slice(k.key()))
                .collect();
            return (keys, None);
        }
        // Only the smallest orders need sorting: about two pages' worth, moved to the front
        // in linear time. The page ends within them unless many of them are not listed or
        // longer than average; then everything is sorted.
        let average = (bytes / found.len()).max(1);
        let head = (max_bytes / average)
            .saturating_mul(2)
            .clamp(1, found.len());
        if head < found.len() {
            found.select_nth_unstable_by_key(head, |&(order, _)| order);
        }
        found[..head].sort_unstable_by_key(|&(order, _)| order);
        let page = fill_page(&found[..head], max_bytes, listed);
        if page.1.is_some() || head == found.len() {
            return page;
        }
        found.sort_unstable_by_key(|&(order, _)| order);
        fill_page(&found, max_bytes, listed)
    }

    /// Entries held in `partition`, tombstones and not-yet-reaped expired entries included.
    pub fn partition_len(&self, partition: Partition) -> usize {
        self.parts
            .get(partition.index())
            .map_or(0, |p| p.keys.len())
    }

    /// Forgets `partition` entirely (after its new owner acknowledged a hand-off); returns
    /// how many entries were dropped.
    pub fn drop_partition(&mut self, partition: Partition) -> usize {
        let Some(part) = self.parts.get_mut(partition.index()) else {
            return 0;
        };
        let keys = std::mem::take(&mut part.keys);
        // A partition taken on again later starts from a fresh snapshot: nothing held
        // before can be newer than what that brings.
        part.high = Version::default();
        part.generation = part.generation.wrapping_add(1);
        let n = keys.len();
        for k in keys {
            if let Some((k, e)) = self.cache.remove(&k) {
                self.unindex(&k, &e, None);
            }
        }
        n
    }

    /// Removes every entry (Redis `FLUSHDB` on this node); buckets stay. Versions go on
    /// from where they were, so a key written again never gets a version it had before
    /// (which a [`KeyStamp`] would take for the old value).
    pub fn clear(&mut self) {
        self.cache.clear();
        self.evicted_versions.clear();
        for p in &mut self.parts {
            *p = PartIndex {
                high: p.high,
                ..PartIndex::default()
            };
        }
        self.ttl_keys.clear();
        self.tombstones = 0;
    }

    /// One step of active expiry, like Redis's: look at up to `sample` random keys that
    /// have an expiry, remove the expired ones (and expired tombstones), and repeat while
    /// more than a quarter of a round was expired, at most [`MAX_REAP_ROUNDS`] rounds.
    pub fn reap<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        rng: &mut R,
        sample: usize,
    ) -> ReapStats {
        let mut stats = ReapStats::default();
        while stats.rounds < MAX_REAP_ROUNDS && !self.ttl_keys.is_empty() && sample > 0 {
            stats.rounds += 1;
            let mut looked = 0;
            let mut removed = 0;
            while looked < sample && !self.ttl_keys.is_empty() {
                looked += 1;
                let len = u64::try_from(self.ttl_keys.len()).unwrap_or(u64::MAX);
                let at =
                    usize::try_from(rng.next_u64() % len).expect("invariant: below a usize length");
                let key = self.ttl_keys[at].clone();
                let expired = self.cache.peek(&key).is_some_and(|e| e.is_expired(now));
                if expired {
                    self.remove_expired(&key);
                    removed += 1;
                }
            }
            stats.sampled += looked;
            stats.removed += removed;
            if removed * 4 <= looked {
                break;
            }
        }
        stats
    }

    /// Counters and gauges.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            entries: self.cache.len(),
            tombstones: self.tombstones,
            with_ttl: self.ttl_keys.len(),
            weight: self.cache.weight(),
            capacity: self.cache.capacity(),
            evicted: self.evicted,
            expired: self.expired,
        }
    }

    /// Live entries held (tombstones excluded; expired entries not yet reaped included).
    pub fn len(&self) -> usize {
        self.cache.len() - self.tombstones
    }

    /// Whether the store holds no live entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn bucket_ref(&self, bucket: BucketId) -> Result<&Bucket, Error> {
        self.buckets
            .get(usize::from(bucket.0))
            .ok_or_else(|| Error::BucketUnknown {
                name: format!("#{}", bucket.0),
            })
    }

    /// Checks that `key` with a value of `value_len` bytes may be stored in `bucket` (see
    /// [`StoreConfig::check_size`]). [`Store::set`] checks this first; a caller writing
    /// several entries at once checks them all before the first write.
    pub fn check_size(&self, bucket: BucketId, key: &[u8], value_len: usize) -> Result<(), Error> {
        let bucket_max = self.bucket_options(bucket).and_then(|o| o.max_value_len);
        self.config.check_size(bucket_max, key.len(), value_len)
    }

    /// What a read-modify-write of `key` (`INCRBY`, `INCRBYFLOAT`, `APPEND`, `SETRANGE`) starts
    /// from: the live value (`None` for a missing key) and the expiry the result keeps,
    /// the key's own or, for a new key, the bucket's default TTL from `now`.
    fn value_to_update(
        &mut self,
        bucket: BucketId,
        key: &[u8],
        now: Timestamp,
    ) -> Result<ToUpdate, Error> {
        let default_ttl = self.bucket_ref(bucket)?.options.default_ttl;
        Ok(match self.live_value(bucket, key, now) {
            Some((value, expires_at)) => (Some(value), expires_at),
            None => (None, default_ttl.map(|d| now.saturating_add(d))),
        })
    }

    /// The value and expiry of `key` if it is live (see [`live`](Self::live)).
    fn live_value(
        &mut self,
        bucket: BucketId,
        key: &[u8],
        now: Timestamp,
    ) -> Option<(Arc<[u8]>, Option<Timestamp>)> {
        self.live(bucket, key, now)
            .and_then(|e| Some((e.value.clone()?, e.expiry())))
    }

    /// The entry of `key` if it is live; removes it if it has expired.
    fn live(&mut self, bucket: BucketId, key: &[u8], now: Timestamp) -> Option<&Entry> {
        let k = KeyRef {
            bucket: bucket.0,
            key,
        };
        let expired = self.cache.peek(&k)?.is_expired(now);
        if expired {
            self.remove_expired(&k);
            return None;
        }
        self.cache.peek(&k).filter(|e| e.value.is_some())
    }

    /// Removes an expired entry (or tombstone), remembering its version like an
    /// eviction's, so that an older write arriving late cannot bring the key back.
    fn remove_expired<Q: Hash + Equivalent<EntryKey> + ?Sized>(&mut self, k: &Q) {
        if let Some((k, e)) = self.cache.remove(k) {
            self.expired += 1;
            let partition = self.config.partitioning.partition_of(k.key()).index();
            self.remember_removed(&k, e.version, partition);
            self.unindex(&k, &e, Some(partition));
        }
    }

    /// Remembers that `key` left the store at `version` ([`Applied::Evicted`]).
    fn remember_removed(&mut self, key: &EntryKey, version: Version, partition: usize) {
        let hash = self.evicted_versions.hash(key.bucket(), key.key());
        let generation = self.parts[partition].generation;
        self.evicted_versions.record(hash, version, generation);
    }

    fn next_version(&mut self, partition: Partition, epoch: u64) -> Version {
        let part = &mut self.parts[partition.index()];
        let v = Version {
            epoch: epoch.max(part.high.epoch),
            seq: part.high.seq.saturating_add(1),
        };
        part.high = v;
        v
    }

    fn local_put(
        &mut self,
        bucket: BucketId,
        key: Bytes,
        stored: Arc<[u8]>,
        value: Bytes,
        expires_at: Option<Timestamp>,
        epoch: u64,
    ) -> Write {
        let partition = self.config.partitioning.partition_of(&key);
        let version = self.next_version(partition, epoch);
        // 0 means "no expiry", so an expiry at the epoch itself is stored as 1 ms.
        let at = expires_at.map_or(0, |t| t.as_millis().max(1));
        let entry_key = EntryKey::new(bucket.0, &key);
        self.insert(entry_key, Some(stored), version, at);
        Write {
            bucket: self.buckets[usize::from(bucket.0)].name.clone(),
            key,
            version,
            op: WriteOp::Put { value, expires_at },
        }
    }

    fn local_delete(&mut self, bucket: BucketId, key: Bytes, now: Timestamp, epoch: u64) -> Write {
        let partition = self.config.partitioning.partition_of(&key);
        let version = self.next_version(partition, epoch);
        let until = now.saturating_add(self.config.tombstone_ttl);
        let entry_key = EntryKey::new(bucket.0, &key);
        self.insert(entry_key, None, version, until.as_millis().max(1));
        Write {
            bucket: self.buckets[usize::from(bucket.0)].name.clone(),
            key,
            version,
            op: WriteOp::Delete,
        }
    }

    /// Inserts or replaces an entry, keeping the indexes in step with the cache.
    fn insert(
        &mut self,
        key: EntryKey,
        value: Option<Arc<[u8]>>,
        version: Version,
        expires_at: u64,
    ) {
        let partition = self.config.partitioning.partition_of(key.key()).index();
        let old = self.cache.peek(&key).map(|e| (e.part_pos, e.ttl_pos));
        let mut key = key;
        let (part_pos, old_ttl_pos) = match old {
            Some((part_pos, ttl_pos)) => {
                // Keep the stored key so that the cache and the indexes share one
                // allocation, rather than pinning the old one in the indexes.
                if let Some(stored) = self.parts[partition]
                    .keys
                    .get(usize::try_from(part_pos).unwrap_or(usize::MAX))
                    .filter(|k| **k == key)
                {
                    key = stored.clone();
                }
                (part_pos, ttl_pos)
            }
            None => {
                let keys = &mut self.parts[partition].keys;
                keys.push(key.clone());
                (pos_u32(keys.len() - 1), NO_POS)
            }
        };
        let ttl_pos = match (expires_at != 0, old_ttl_pos != NO_POS) {
            (true, true) => old_ttl_pos,
            (true, false) => {
                self.ttl_keys.push(key.clone());
                pos_u32(self.ttl_keys.len() - 1)
            }
            (false, true) => {
                self.remove_at(Index::Ttl, &key, old_ttl_pos);
                NO_POS
            }
            (false, false) => NO_POS,
        };
        if value.is_none() {
            self.tombstones += 1;
        }
        let entry = Entry {
            value,
            version,
            expires_at,
            part_pos,
            ttl_pos,
        };
        let inserted = key.clone();
        let evicted = self.cache.insert_with_lifecycle(key, entry);
        // The cache reports the value it replaced like an eviction; the new entry took over
        // its index positions, so only the tombstone count follows.
        let replaced_only = self.cache.peek(&inserted).is_some();
        for (k, e) in evicted {
            if replaced_only && k == inserted {
                if e.value.is_none() {
                    self.tombstones -= 1;
                }
                continue;
            }
            self.evicted += 1;
            tracing::trace!(bucket = k.bucket(), "evicted to respect the byte budget");
            let partition = self.config.partitioning.partition_of(k.key()).index();
            self.remember_removed(&k, e.version, partition);
            self.unindex(&k, &e, Some(partition));
        }
    }

    /// Removes a key that has left the cache from the indexes: from its partition's list
    /// when given its partition (`None`: the caller took that whole list).
    fn unindex(&mut self, key: &EntryKey, entry: &Entry, partition: Option<usize>) {
        if entry.value.is_none() {
            self.tombstones -= 1;
        }
        if let Some(partition) = partition {
            self.remove_at(Index::Part(partition), key, entry.part_pos);
        }
        if entry.ttl_pos != NO_POS {
            self.remove_at(Index::Ttl, key, entry.ttl_pos);
        }
    }

    /// Swap-removes `key` from an index where it is expected at `pos`, and tells the key
    /// moved into its place its new position. If the key is not at `pos` (its position was
    /// stale because it was moved while it sat in a batch of evictions), it is searched.
    fn remove_at(&mut self, index: Index, key: &EntryKey, pos: u32) {
        let list = match index {
            Index::Part(p) => &mut self.parts[p].keys,
            Index::Ttl => &mut self.ttl_keys,
        };
        let at = usize::try_from(pos).unwrap_or(usize::MAX);
        let at = if list.get(at) == Some(key) {
            at
        } else {
            match list.iter().position(|k| k == key) {
                Some(at) => at,
                None => return,
            }
        };
        list.swap_remove(at);
        let Some(moved) = list.get(at).cloned() else {
            return;
        };
        if let Some(mut e) = self.cache.peek_mut(&moved) {
            match index {
                Index::Part(_) => e.part_pos = pos_u32(at),
                Index::Ttl => e.ttl_pos = pos_u32(at),
            }
        }
    }
}

/// Whether a set with `options` may go ahead, and the expiry it gives the key: `None`
/// when its condition refuses. `live_expiry` is the expiry of the key's live entry, `None`
/// when the key has none.
fn admit(
    options: &SetOptions,
    live_expiry: Option<Option<Timestamp>>,
    default_ttl: Option<Duration>,
    now: Timestamp,
) -> Option<Option<Timestamp>> {
    let allowed = match options.condition {
        Condition::Always => true,
        Condition::IfAbsent => live_expiry.is_none(),
        Condition::IfPresent => live_expiry.is_some(),
    };
    if !allowed {
        return None;
    }
    let default_expiry = || default_ttl.map(|d| now.saturating_add(d));
    Some(match options.expiry {
        Expiry::BucketDefault => default_expiry(),
        Expiry::Never => None,
        Expiry::After(d) => Some(now.saturating_add(d)),
        Expiry::At(t) => Some(t),
        Expiry::Keep => live_expiry.unwrap_or_else(default_expiry),
    })
}

fn pos_u32(pos: usize) -> u32 {
    // The cache holds far fewer than 4 billion entries: each weighs at least ENTRY_OVERHEAD
    // bytes of a budget that fits in memory.
    u32::try_from(pos).expect("invariant: fewer than u32::MAX entries")
}

/// Parses a decimal `i64` exactly as Redis's `string2ll`: optional `-`, no `+`, no
/// leading zeros (but `0` itself), no spaces, within range.
pub fn parse_i64(bytes: &[u8]) -> Result<i64, Error> {
    let (neg, digits) = match bytes {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, bytes),
    };
    let valid = match digits {
        [] => false,
        [b'0'] => !neg,
        [first, ..] => (b'1'..=b'9').contains(first) && digits.iter().all(u8::is_ascii_digit),
    };
    if !valid || digits.len() > 19 {
        return Err(Error::NotAnInteger);
    }
    let mut n: i64 = 0;
    for &d in digits {
        let d = i64::from(d - b'0');
        n = n.checked_mul(10).ok_or(Error::NotAnInteger)?;
        n = if neg {
            n.checked_sub(d)
        } else {
            n.checked_add(d)
        }
        .ok_or(Error::NotAnInteger)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    const T0: Timestamp = Timestamp::from_millis(1_000_000);

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_millis(T0.as_millis() + ms)
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    /// The default configuration with a byte budget (and the item count it is sized for).
    fn budgeted(max_bytes: u64, estimated_items: usize) -> StoreConfig {
        StoreConfig {
            max_bytes,
            estimated_items,
            ..StoreConfig::default()
        }
    }

    fn store() -> (Store, BucketId) {
        let mut s = Store::new(StoreConfig::default());
        let id = s
            .create_bucket("main", BucketOptions::default())
            .expect("new bucket");
        (s, id)
    }

    /// [`Store::unchanged`] tells every write, delete, expiry change, expiry and flush of a
    /// watched key since its stamp, and takes a read, or a write to another partition, for
    /// none.
    #[test]
    fn a_stamp_tells_every_change_of_the_key() {
        let (mut s, id) = store();
        let stamp_of = |s: &Store, key: &[u8], now| s.stamp(id, key, now, 1);
        let same =
            |s: &Store, key: &[u8], stamp: &KeyStamp, now| s.unchanged(id, key, stamp, now, 1);
        let set = |s: &mut Store, key: &str, options, now| {
            s.set(id, b(key), b("v"), options, now, 1).expect("set");
        };
        let px = |ms| SetOptions {
            expiry: Expiry::After(Duration::from_millis(ms)),
            ..SetOptions::default()
        };
        let partitioning = s.config().partitioning;
        let elsewhere = (0..)
            .map(|i| format!("other{i}"))
            .find(|k| partitioning.partition_of(k.as_bytes()) != partitioning.partition_of(b"{k}"))
            .expect("a key of another partition");

        // A value: the same version, not expired.
        set(&mut s, "{k}a", SetOptions::default(), T0);
        let stamp = stamp_of(&s, b"{k}a", T0);
        assert!(stamp.version.is_some());
        assert_eq!(s.get(id, b"{k}a", T0), Some(b("v")));
        set(&mut s, &elsewhere, SetOptions::default(), T0);
        assert!(same(&s, b"{k}a", &stamp, T0), "a read, another partition");
        set(&mut s, "{k}a", SetOptions::default(), T0);
        assert!(!same(&s, b"{k}a", &stamp, T0), "the same value again");
        let stamp = stamp_of(&s, b"{k}a", T0);
        s.expire(id, b("{k}a"), at(100), ExpireCondition::Always, T0, 1)
            .expect("expire");
        assert!(!same(&s, b"{k}a", &stamp, T0), "an expiry set");
        let stamp = stamp_of(&s, b"{k}a", T0);
        assert!(!same(&s, b"{k}a", &stamp, at(100)), "expired");

        // No value: nothing written since, whatever became of the entry.
        let none = stamp_of(&s, b"{k}b", T0);
        assert_eq!(none.version, None);
        assert!(same(&s, b"{k}b", &none, T0));
        set(&mut s, "{k}b", px(50), T0);
        assert!(!same(&s, b"{k}b", &none, T0), "written");
        assert!(!same(&s, b"{k}b", &none, at(60)), "written, expired");
        assert!(!s.exists(id, b"{k}b", at(60)), "removes the expired entry");
        assert!(
            !same(&s, b"{k}b", &none, at(60)),
            "written, expired, removed"
        );
        let none = stamp_of(&s, b"{k}c", at(60));
        set(&mut s, "{k}c", SetOptions::default(), at(60));
        s.delete(id, b("{k}c"), at(60), 1).expect("delete");
        assert!(!same(&s, b"{k}c", &none, at(60)), "written, deleted");
        // Deleted before: its tombstone, and once that is gone, the removal's version.
        let deleted = stamp_of(&s, b"{k}c", at(60));
        assert!(same(&s, b"{k}c", &deleted, at(60)));
        let later = at(60).saturating_add(s.config.tombstone_ttl);
        assert!(!s.exists(id, b"{k}c", later));
        assert!(same(&s, b"{k}c", &deleted, later), "the tombstone expired");

        // No value, and other keys of the partition written: unchanged. At another
        // routing epoch (the partition may have moved here): changed.
        let none = stamp_of(&s, b"{k}y", at(60));
        set(&mut s, "{k}other", SetOptions::default(), at(60));
        s.delete(id, b("{k}other"), at(60), 1).expect("delete");
        assert!(
            same(&s, b"{k}y", &none, later),
            "other keys of the partition"
        );
        assert!(!s.unchanged(id, b"{k}y", &none, later, 2), "another epoch");
        let (mut restarted, again) = store();
        assert_eq!(again, id);
        set(&mut restarted, "{k}x", SetOptions::default(), later);
        assert!(!same(&restarted, b"{k}y", &none, later), "another store");

        // A flush: the value is gone, and one written again is not the old one.
        let stamp = stamp_of(&s, b"{k}a", T0);
        let none = stamp_of(&s, b"{k}z", T0);
        s.clear();
        assert!(!same(&s, b"{k}a", &stamp, T0));
        assert!(same(&s, b"{k}z", &none, T0));
        set(&mut s, "{k}a", SetOptions::default(), T0);
        assert!(
            !same(&s, b"{k}a", &stamp, T0),
            "written again after a flush"
        );
        // Even when it was the first write of its partition.
        let (mut s, again) = store();
        assert_eq!(again, id);
        set(&mut s, "{f}a", SetOptions::default(), T0);
        let stamp = stamp_of(&s, b"{f}a", T0);
        s.clear();
        set(&mut s, "{f}a", SetOptions::default(), T0);
        assert!(!same(&s, b"{f}a", &stamp, T0), "the first write again");
    }

    /// A plain `SET` with `EX`/`PX`: the value expires `ttl` after the write.
    fn expiring_after(ttl: Duration) -> SetOptions {
        SetOptions {
            expiry: Expiry::After(ttl),
            ..SetOptions::default()
        }
    }

    fn set(s: &mut Store, id: BucketId, k: &str, v: &str, now: Timestamp) -> SetOutcome {
        s.set(id, b(k), b(v), SetOptions::default(), now, 1)
            .expect("set")
    }

    impl Store {
        /// Every index entry points at a cache entry that points back, and the counts agree.
        pub(crate) fn check_invariants(&self) {
            let mut indexed = 0;
            for (p, part) in self.parts.iter().enumerate() {
                for (i, k) in part.keys.iter().enumerate() {
                    let e = self.cache.peek(k).expect("indexed key is cached");
                    assert_eq!(e.part_pos as usize, i, "part_pos of {k:?}");
                    assert_eq!(self.config.partitioning.partition_of(k.key()).index(), p);
                    indexed += 1;
                }
            }
            assert_eq!(
                indexed,
                self.cache.len(),
                "partition index covers the cache"
            );
            for (i, k) in self.ttl_keys.iter().enumerate() {
                let e = self.cache.peek(k).expect("ttl key is cached");
                assert_eq!(e.ttl_pos as usize, i);
                assert_ne!(e.expires_at, 0);
            }
            let (mut with_ttl, mut tombstones) = (0, 0);
            for (_, e) in self.cache.iter() {
                with_ttl += usize::from(e.expires_at != 0);
                tombstones += usize::from(e.value.is_none());
            }
            assert_eq!(with_ttl, self.ttl_keys.len());
            assert_eq!(tombstones, self.tombstones);
            assert!(self.cache.weight() <= self.cache.capacity());
        }
    }

    #[test]
    fn store_can_move_between_threads() {
        fn send<T: Send + 'static>() {}
        send::<Store>();
        send::<Write>();
    }

    #[test]
    fn buckets() {
        let (mut s, main) = store();
        let other = s
            .create_bucket("other", BucketOptions::default())
            .expect("second bucket");
        assert_eq!(
            s.create_bucket("main", BucketOptions::default()),
            Err(Error::BucketExists {
                name: "main".into()
            })
        );
        assert_eq!(s.bucket("main"), Ok(main));
        assert_eq!(
            s.bucket("nope"),
            Err(Error::BucketUnknown {
                name: "nope".into()
            })
        );
        set(&mut s, main, "k", "1", T0);
        assert_eq!(s.get(main, b"k", T0), Some(b("1")));
        assert_eq!(s.get(other, b"k", T0), None);
        assert!(matches!(
            s.set(BucketId(9), b("k"), b("v"), SetOptions::default(), T0, 1),
            Err(Error::BucketUnknown { .. })
        ));
        s.check_invariants();
    }

    #[test]
    fn keys_held_in_place_and_shared_are_distinct() {
        let (mut s, main) = store();
        let other = s
            .create_bucket("other", BucketOptions::default())
            .expect("second bucket");
        // Around the in-place limit: 19, 20 (the longest in place) and 21 bytes; the
        // empty key; a key that is a prefix of another; a long key.
        let keys: Vec<String> = [19, 20, 21, 0, 1, 64]
            .into_iter()
            .map(|n| "k".repeat(n))
            .chain(["kkkkkkkkkkkkkkkkkkkk\0".to_owned()])
            .collect();
        for (i, k) in keys.iter().enumerate() {
            set(&mut s, main, k, &format!("main-{i}"), T0);
            set(&mut s, other, k, &format!("other-{i}"), T0);
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(s.get(main, k.as_bytes(), T0), Some(b(&format!("main-{i}"))));
            assert_eq!(
                s.get(other, k.as_bytes(), T0),
                Some(b(&format!("other-{i}")))
            );
        }
        assert_eq!(s.len(), keys.len() * 2);
        let inline = EntryKey::new(7, &[1; INLINE_KEY - 2]);
        let shared = EntryKey::new(7, &[1; INLINE_KEY - 1]);
        assert!(matches!(inline, EntryKey::Inline { .. }));
        assert!(matches!(shared, EntryKey::Shared(_)));
        assert_eq!(
            (inline.bucket(), inline.key()),
            (7, &[1; INLINE_KEY - 2][..])
        );
        assert_eq!(
            (shared.bucket(), shared.key()),
            (7, &[1; INLINE_KEY - 1][..])
        );
        assert_eq!(size_of::<EntryKey>(), 24);
        s.check_invariants();
    }

    #[test]
    fn set_conditions_and_get() {
        let (mut s, id) = store();
        let nx = SetOptions {
            condition: Condition::IfAbsent,
            get: true,
            ..SetOptions::default()
        };
        let xx = SetOptions {
            condition: Condition::IfPresent,
            ..SetOptions::default()
        };
        // XX on a missing key does nothing.
        let out = s.set(id, b("k"), b("a"), xx, T0, 1).expect("set");
        assert_eq!(out.write, None);
        assert!(!s.exists(id, b"k", T0));
        // NX on a missing key writes, and GET says there was nothing.
        let out = s.set(id, b("k"), b("a"), nx, T0, 1).expect("set");
        assert!(out.write.is_some());
        assert_eq!(out.previous, None);
        // NX on an existing key does nothing but GET still returns the value.
        let out = s.set(id, b("k"), b("b"), nx, T0, 1).expect("set");
        assert_eq!(out.write, None);
        assert_eq!(out.previous, Some(b("a")));
        assert_eq!(s.get(id, b"k", T0), Some(b("a")));
        // XX on an existing key writes.
        let out = s.set(id, b("k"), b("c"), xx, T0, 1).expect("set");
        assert!(out.write.is_some());
        assert_eq!(out.previous, None, "GET not asked");
        assert_eq!(s.get(id, b"k", T0), Some(b("c")));
        s.check_invariants();
    }

    #[test]
    fn ttl_on_read_and_options() {
        let (mut s, id) = store();
        let ex = expiring_after(Duration::from_secs(10));
        s.set(id, b("k"), b("v"), ex, T0, 1).expect("set");
        assert_eq!(
            s.ttl(id, b"k", at(4_000)),
            Ttl::Expires {
                at: at(10_000),
                remaining: Duration::from_secs(6)
            }
        );
        assert_eq!(s.get(id, b"k", at(9_999)), Some(b("v")));
        assert_eq!(s.get(id, b"k", at(10_000)), None, "expired at the deadline");
        assert_eq!(s.ttl(id, b"k", at(10_000)), Ttl::Missing);
        assert_eq!(s.stats().expired, 1);
        s.check_invariants();

        // A plain SET clears the TTL; KEEPTTL keeps it.
        s.set(id, b("k"), b("v"), ex, T0, 1).expect("set");
        let keep = SetOptions {
            expiry: Expiry::Keep,
            ..SetOptions::default()
        };
        s.set(id, b("k"), b("w"), keep, at(1), 1).expect("set");
        assert!(matches!(s.ttl(id, b"k", at(1)), Ttl::Expires { at: t, .. } if t == at(10_000)));
        set(&mut s, id, "k", "x", at(2));
        assert_eq!(s.ttl(id, b"k", at(2)), Ttl::Persistent);
        s.check_invariants();

        // EXPIRE's conditions: a key without an expiry never expires for GT and LT.
        let if_ = |s: &mut Store, c, t: u64| {
            s.expire(id, b("k"), at(t), c, at(2), 1)
                .expect("ok")
                .is_some()
        };
        assert!(
            !if_(&mut s, ExpireCondition::IfSome, 400),
            "XX: no expiry yet"
        );
        assert!(
            !if_(&mut s, ExpireCondition::IfLater, 400),
            "GT: none is infinite"
        );
        assert!(!if_(&mut s, ExpireCondition::IfSomeEarlier, 400));
        assert_eq!(s.ttl(id, b"k", at(2)), Ttl::Persistent);
        assert!(
            if_(&mut s, ExpireCondition::IfEarlier, 400),
            "LT: below infinite"
        );
        assert!(
            !if_(&mut s, ExpireCondition::IfNone, 300),
            "NX: has one now"
        );
        assert!(!if_(&mut s, ExpireCondition::IfLater, 400), "GT: not later");
        assert!(
            !if_(&mut s, ExpireCondition::IfEarlier, 400),
            "LT: not earlier"
        );
        assert!(if_(&mut s, ExpireCondition::IfLater, 450));
        assert!(if_(&mut s, ExpireCondition::IfSomeEarlier, 420));
        assert!(if_(&mut s, ExpireCondition::IfSome, 430));
        assert!(matches!(s.ttl(id, b"k", at(2)), Ttl::Expires { at: t, .. } if t == at(430)));
        assert!(s.persist(id, b("k"), at(2), 1).expect("ok").is_some());
        s.check_invariants();

        // EXPIRE, PERSIST, EXPIRE in the past.
        assert!(
            s.expire(id, b("k"), at(500), ExpireCondition::Always, at(2), 1)
                .expect("ok")
                .is_some()
        );
        assert!(matches!(s.ttl(id, b"k", at(3)), Ttl::Expires { .. }));
        assert!(s.persist(id, b("k"), at(3), 1).expect("ok").is_some());
        assert!(
            s.persist(id, b("k"), at(3), 1).expect("ok").is_none(),
            "no TTL to remove"
        );
        assert_eq!(s.ttl(id, b"k", at(600)), Ttl::Persistent);
        let w = s
            .expire(id, b("k"), at(600), ExpireCondition::Always, at(600), 1)
            .expect("ok")
            .expect("existed");
        assert_eq!(w.op, WriteOp::Delete);
        assert!(!s.exists(id, b"k", at(600)));
        assert!(
            s.expire(id, b("k"), at(900), ExpireCondition::Always, at(600), 1)
                .expect("ok")
                .is_none()
        );
        assert!(s.persist(id, b("k"), at(600), 1).expect("ok").is_none());
        // EXAT in the past: written but already expired.
        let past = SetOptions {
            expiry: Expiry::At(T0),
            ..SetOptions::default()
        };
        s.set(id, b("p"), b("v"), past, at(5), 1).expect("set");
        assert_eq!(s.get(id, b"p", at(5)), None);
        s.check_invariants();
    }

    #[test]
    fn bucket_default_ttl() {
        let mut s = Store::new(StoreConfig::default());
        let id = s
            .create_bucket(
                "sessions",
                BucketOptions {
                    default_ttl: Some(Duration::from_secs(30)),
                    max_value_len: Some(8),
                },
            )
            .expect("bucket");
        set(&mut s, id, "k", "v", T0);
        assert!(matches!(s.ttl(id, b"k", T0), Ttl::Expires { at: t, .. } if t == at(30_000)));
        let never = SetOptions {
            expiry: Expiry::Never,
            ..SetOptions::default()
        };
        s.set(id, b("k"), b("v"), never, T0, 1).expect("set");
        assert_eq!(s.ttl(id, b"k", T0), Ttl::Persistent);
        // KEEPTTL on a new key falls back to the bucket default.
        let keep = SetOptions {
            expiry: Expiry::Keep,
            ..SetOptions::default()
        };
        s.set(id, b("n"), b("v"), keep, T0, 1).expect("set");
        assert!(matches!(s.ttl(id, b"n", T0), Ttl::Expires { .. }));
        // INCR on a new key gets the default too.
        s.incr_by(id, b("c"), 1, T0, 1).expect("incr");
        assert!(matches!(s.ttl(id, b"c", T0), Ttl::Expires { .. }));
        // The bucket's own value limit.
        assert_eq!(
            s.set(id, b("k"), b("123456789"), SetOptions::default(), T0, 1),
            Err(Error::ValueTooLarge { len: 9, max: 8 })
        );
    }

    #[test]
    fn incr_by_semantics() {
        let (mut s, id) = store();
        assert_eq!(s.incr_by(id, b("n"), 5, T0, 1).map(|r| r.0), Ok(5));
        assert_eq!(s.incr_by(id, b("n"), -7, T0, 1).map(|r| r.0), Ok(-2));
        assert_eq!(s.get(id, b"n", T0), Some(b("-2")));
        set(&mut s, id, "s", "abc", T0);
        assert_eq!(s.incr_by(id, b("s"), 1, T0, 1), Err(Error::NotAnInteger));
        set(&mut s, id, "m", &i64::MAX.to_string(), T0);
        assert_eq!(s.incr_by(id, b("m"), 1, T0, 1), Err(Error::Overflow));
        assert_eq!(
            s.get(id, b"m", T0),
            Some(b(&i64::MAX.to_string())),
            "unchanged"
        );
        // INCR keeps an existing TTL.
        let ex = expiring_after(Duration::from_secs(10));
        s.set(id, b("t"), b("10"), ex, T0, 1).expect("set");
        s.incr_by(id, b("t"), 1, at(1), 1).expect("incr");
        assert!(matches!(s.ttl(id, b"t", at(1)), Ttl::Expires { at: t, .. } if t == at(10_000)));
    }

    #[test]
    fn incr_by_float_semantics() {
        let (mut s, id) = store();
        let f = |t: &str| LongDouble::parse(t.as_bytes()).expect("float");
        let (v, w) = s.incr_by_float(id, b("n"), f("10.5"), T0, 1).expect("incr");
        assert_eq!(v, b("10.5"), "a missing key counts as 0");
        assert_eq!(
            w.op,
            WriteOp::Put {
                value: b("10.5"),
                expires_at: None
            },
            "the text is replicated"
        );
        assert_eq!(
            s.incr_by_float(id, b("n"), f("0.1"), T0, 1).map(|r| r.0),
            Ok(b("10.6"))
        );
        assert_eq!(s.get(id, b"n", T0), Some(b("10.6")));
        // An existing TTL is kept; a value that is no number, or an infinite result, is
        // refused and changes nothing.
        let ex = expiring_after(Duration::from_secs(10));
        s.set(id, b("t"), b("1"), ex, T0, 1).expect("set");
        s.incr_by_float(id, b("t"), f("1"), at(1), 1).expect("incr");
        assert!(matches!(s.ttl(id, b"t", at(1)), Ttl::Expires { at: t, .. } if t == at(10_000)));
        s.set(id, b("s"), b("abc"), SetOptions::default(), T0, 1)
            .expect("set");
        assert_eq!(
            s.incr_by_float(id, b("s"), f("1"), T0, 1).map(|r| r.0),
            Err(Error::NotAFloat)
        );
        assert_eq!(
            s.incr_by_float(id, b("n"), LongDouble::INFINITY, T0, 1)
                .map(|r| r.0),
            Err(Error::NotFinite)
        );
        assert_eq!(s.get(id, b"n", T0), Some(b("10.6")));
        s.check_invariants();
    }

    #[test]
    fn set_range_semantics() {
        let (mut s, id) = store();
        // A missing key: padded with zero bytes up to the offset.
        let (len, w) = s.set_range(id, b("k"), 3, b"ab", T0, 1).expect("set_range");
        assert_eq!(len, 5);
        assert!(w.is_some());
        assert_eq!(s.get(id, b"k", T0), Some(Bytes::from_static(b"\0\0\0ab")));
        // Inside the value, and across its end.
        assert_eq!(s.set_range(id, b("k"), 1, b"XY", T0, 1).map(|r| r.0), Ok(5));
        assert_eq!(s.get(id, b"k", T0), Some(Bytes::from_static(b"\0XYab")));
        assert_eq!(
            s.set_range(id, b("k"), 4, b"123", T0, 1).map(|r| r.0),
            Ok(7)
        );
        assert_eq!(s.get(id, b"k", T0), Some(Bytes::from_static(b"\0XYa123")));
        // An empty part changes nothing and creates nothing.
        assert!(matches!(
            s.set_range(id, b("k"), 100, b"", T0, 1),
            Ok((7, None))
        ));
        assert!(matches!(
            s.set_range(id, b("none"), 100, b"", T0, 1),
            Ok((0, None))
        ));
        assert_eq!(s.get(id, b"none", T0), None);
        // An existing TTL is kept.
        let ex = expiring_after(Duration::from_secs(10));
        s.set(id, b("t"), b("abc"), ex, T0, 1).expect("set");
        s.set_range(id, b("t"), 0, b"z", at(1), 1)
            .expect("set_range");
        assert_eq!(s.get(id, b"t", at(1)), Some(b("zbc")));
        assert!(matches!(s.ttl(id, b"t", at(1)), Ttl::Expires { at: t, .. } if t == at(10_000)));
        // An offset past the value limit is refused before anything is allocated.
        assert!(matches!(
            s.set_range(id, b("k"), u64::MAX, b"x", T0, 1),
            Err(Error::ValueTooLarge { .. })
        ));
        assert!(matches!(
            s.set_range(id, b("big"), 1 << 40, b"x", T0, 1),
            Err(Error::ValueTooLarge { .. })
        ));
        assert_eq!(s.get(id, b"big", T0), None);
        s.check_invariants();
    }

    #[test]
    fn append_semantics() {
        let (mut s, id) = store();
        let (len, w) = s.append(id, b("a"), b"Hello", T0, 1).expect("append");
        assert_eq!(len, 5);
        assert_eq!(
            w.op,
            WriteOp::Put {
                value: b("Hello"),
                expires_at: None
            },
            "replicated whole"
        );
        assert_eq!(s.append(id, b("a"), b" World", T0, 1).map(|r| r.0), Ok(11));
        assert_eq!(s.get(id, b"a", T0), Some(b("Hello World")));
        assert_eq!(s.append(id, b("a"), b"", T0, 1).map(|r| r.0), Ok(11));
        // An existing TTL is kept.
        let ex = expiring_after(Duration::from_secs(10));
        s.set(id, b("t"), b("x"), ex, T0, 1).expect("set");
        s.append(id, b("t"), b"y", at(1), 1).expect("append");
        assert!(matches!(s.ttl(id, b"t", at(1)), Ttl::Expires { at: t, .. } if t == at(10_000)));
        // A result over the value limit is refused and changes nothing.
        let small = s
            .create_bucket(
                "small",
                BucketOptions {
                    max_value_len: Some(8),
                    ..BucketOptions::default()
                },
            )
            .expect("bucket");
        s.append(id, b("k"), b"12345", T0, 1).expect("append");
        s.append(small, b("k"), b"12345", T0, 1).expect("append");
        assert!(matches!(
            s.append(small, b("k"), b"6789", T0, 1),
            Err(Error::ValueTooLarge { len: 9, .. })
        ));
        assert_eq!(s.get(small, b"k", T0), Some(b("12345")));
        s.check_invariants();
    }

    #[test]
    fn copy_semantics() {
        let (mut s, id) = store();
        assert_eq!(s.copy(id, b"a", b("b"), true, T0, 1), Ok(None));
        let ex = expiring_after(Duration::from_secs(10));
        s.set(id, b("a"), b("1"), ex, T0, 1).expect("set");
        set(&mut s, id, "c", "3", T0);
        assert_eq!(s.copy(id, b"a", b("c"), false, T0, 1), Ok(None));
        assert_eq!(s.get(id, b"c", T0), Some(b("3")), "kept");
        let w = s
            .copy(id, b"a", b("c"), true, T0, 1)
            .expect("valid")
            .expect("copied");
        assert_eq!(
            (&w.key, &w.op),
            (
                &b("c"),
                &WriteOp::Put {
                    value: b("1"),
                    expires_at: Some(at(10_000))
                }
            )
        );
        assert_eq!(s.get(id, b"a", T0), Some(b("1")), "the source stays");
        assert_eq!(s.get(id, b"c", T0), Some(b("1")));
        s.check_invariants();
    }

    #[test]
    fn set_all_absent_writes_all_or_nothing() {
        let (mut s, id) = store();
        let pairs = |ks: &[&str]| -> Vec<(Bytes, Bytes)> {
            ks.iter().map(|k| (b(k), b(&format!("v{k}")))).collect()
        };
        let writes = s
            .set_all_absent(id, &pairs(&["a", "b"]), T0, 1)
            .expect("valid")
            .expect("none existed");
        assert_eq!(writes.len(), 2);
        assert_eq!(s.get(id, b"b", T0), Some(b("vb")));
        assert_eq!(s.set_all_absent(id, &pairs(&["c", "a"]), T0, 1), Ok(None));
        assert_eq!(s.get(id, b"c", T0), None, "nothing written");
        assert!(
            s.set_all_absent(id, &[(b("c"), Bytes::from(vec![0u8; 17 << 20]))], T0, 1)
                .is_err()
        );
        assert_eq!(s.get(id, b"c", T0), None);
        s.check_invariants();
    }

    #[test]
    fn rename_semantics() {
        let (mut s, id) = store();
        assert_eq!(
            s.rename(id, b("a"), b("b"), true, T0, 1),
            Ok((Renamed::Missing, Vec::new()))
        );
        let ex = expiring_after(Duration::from_secs(10));
        s.set(id, b("a"), b("1"), ex, T0, 1).expect("set");
        set(&mut s, id, "c", "3", T0);
        // RENAMENX onto an existing key, or a key onto itself: nothing changes.
        assert_eq!(
            s.rename(id, b("a"), b("c"), false, T0, 1),
            Ok((Renamed::TargetExists, Vec::new()))
        );
        assert_eq!(
            s.rename(id, b("a"), b("a"), false, T0, 1),
            Ok((Renamed::TargetExists, Vec::new()))
        );
        assert_eq!(
            s.rename(id, b("a"), b("a"), true, T0, 1),
            Ok((Renamed::Done, Vec::new()))
        );
        // RENAME overwrites and moves the expiry; the delete replicates before the put.
        let (done, writes) = s.rename(id, b("a"), b("c"), true, T0, 1).expect("rename");
        assert_eq!(done, Renamed::Done);
        assert_eq!(writes.len(), 2);
        assert_eq!((&writes[0].key, &writes[0].op), (&b("a"), &WriteOp::Delete));
        assert_eq!(
            (&writes[1].key, &writes[1].op),
            (
                &b("c"),
                &WriteOp::Put {
                    value: b("1"),
                    expires_at: Some(at(10_000))
                }
            )
        );
        assert_eq!(s.get(id, b"a", T0), None);
        assert_eq!(s.get(id, b"c", T0), Some(b("1")));
        assert!(matches!(s.ttl(id, b"c", T0), Ttl::Expires { at: t, .. } if t == at(10_000)));
        assert_eq!(
            s.rename(id, b("c"), b("d"), false, T0, 1).map(|r| r.0),
            Ok(Renamed::Done)
        );
        s.check_invariants();
    }

    #[test]
    fn parse_i64_like_redis() {
        for (text, want) in [
            ("0", Some(0)),
            ("-1", Some(-1)),
            ("42", Some(42)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("-9223372036854775809", None),
            ("", None),
            ("-", None),
            ("-0", None),
            ("01", None),
            ("+1", None),
            (" 1", None),
            ("1 ", None),
            ("1.0", None),
            ("1e3", None),
            ("00000000000000000001", None),
        ] {
            assert_eq!(parse_i64(text.as_bytes()).ok(), want, "{text:?}");
        }
    }

    #[test]
    fn size_limits() {
        let config = StoreConfig {
            max_key_len: 4,
            max_value_len: 16,
            ..StoreConfig::default()
        };
        let mut s = Store::new(config);
        let id = s
            .create_bucket("b", BucketOptions::default())
            .expect("bucket");
        assert_eq!(
            s.set(id, b("12345"), b("v"), SetOptions::default(), T0, 1),
            Err(Error::KeyTooLarge { len: 5, max: 4 })
        );
        assert_eq!(
            s.set(
                id,
                b("k"),
                Bytes::from(vec![0; 17]),
                SetOptions::default(),
                T0,
                1
            ),
            Err(Error::ValueTooLarge { len: 17, max: 16 })
        );
        assert!(s.is_empty());
        // A value heavier than the budget is refused even if the length limit allows it.
        let tiny = StoreConfig {
            max_bytes: 1000,
            ..StoreConfig::default()
        };
        let mut s = Store::new(tiny);
        let id = s
            .create_bucket("b", BucketOptions::default())
            .expect("bucket");
        let max = usize::try_from(970 - ENTRY_OVERHEAD - 1).expect("small");
        assert_eq!(
            s.set(
                id,
                b("k"),
                Bytes::from(vec![0; max + 1]),
                SetOptions::default(),
                T0,
                1
            ),
            Err(Error::ValueTooLarge { len: max + 1, max })
        );
        s.set(
            id,
            b("k"),
            Bytes::from(vec![0; max]),
            SetOptions::default(),
            T0,
            1,
        )
        .expect("fits");
        assert_eq!(s.get(id, b"k", T0).map(|v| v.len()), Some(max));
    }

    #[test]
    fn versions_increase_per_partition_and_epoch_orders_first() {
        let (mut s, id) = store();
        let p = s.config.partitioning.partition_of(b"{t}a");
        let w1 = set(&mut s, id, "{t}a", "1", T0).write.expect("written");
        let w2 = set(&mut s, id, "{t}b", "2", T0).write.expect("written");
        assert_eq!(w1.version, Version { epoch: 1, seq: 1 });
        assert_eq!(w2.version, Version { epoch: 1, seq: 2 });
        let w3 = s
            .set(id, b("{t}a"), b("3"), SetOptions::default(), T0, 4)
            .expect("set")
            .write
            .expect("written");
        assert_eq!(w3.version, Version { epoch: 4, seq: 3 });
        assert!(w3.version > w2.version);
        // An older epoch never produces a smaller version than the partition holds.
        let w4 = s
            .delete(id, b("{t}b"), T0, 2)
            .expect("ok")
            .expect("existed");
        assert!(w4.version > w3.version);
        assert_eq!(s.high_version(p), w4.version);
    }

    #[test]
    fn apply_if_newer_and_tombstones() {
        let (mut primary, pid) = store();
        let (mut backup, bid) = store();
        let w1 = set(&mut primary, pid, "k", "1", T0).write.expect("w1");
        let w2 = set(&mut primary, pid, "k", "2", T0).write.expect("w2");
        let del = primary
            .delete(pid, b("k"), T0, 1)
            .expect("ok")
            .expect("existed");
        assert_eq!(backup.apply(&w2, T0), Ok(Applied::Applied));
        assert_eq!(
            backup.apply(&w1, T0),
            Ok(Applied::Stale { held: w2.version })
        );
        assert_eq!(backup.get(bid, b"k", T0), Some(b("2")));
        assert_eq!(
            backup.apply(&w2, T0),
            Ok(Applied::Stale { held: w2.version }),
            "duplicates are harmless"
        );
        assert_eq!(backup.apply(&del, T0), Ok(Applied::Applied));
        assert_eq!(backup.get(bid, b"k", T0), None);
        // A late, older write does not resurrect the deleted key.
        assert_eq!(
            backup.apply(&w1, T0),
            Ok(Applied::Stale { held: del.version })
        );
        assert!(!backup.exists(bid, b"k", T0));
        assert_eq!(backup.stats().tombstones, 1);
        assert_eq!(backup.len(), 0);
        backup.check_invariants();
        // The tombstone goes after tombstone_ttl.
        let mut rng = StdRng::seed_from_u64(1);
        let later = T0.saturating_add(backup.config.tombstone_ttl);
        let stats = backup.reap(later, &mut rng, 20);
        assert_eq!(stats.removed, 1);
        assert_eq!(backup.stats().entries, 0);
        backup.check_invariants();
        // Unknown bucket.
        let mut foreign = w1;
        foreign.bucket = "nope".into();
        assert!(matches!(
            backup.apply(&foreign, T0),
            Err(Error::BucketUnknown { .. })
        ));
    }

    /// `keys` lists a partition's live keys of one bucket: not tombstones, expired
    /// entries, other buckets' keys or other partitions' keys; a pattern filters them.
    #[test]
    fn keys_of_a_partition() {
        let (mut s, id) = store();
        let other = s
            .create_bucket("other", BucketOptions::default())
            .expect("bucket");
        let p = s.config.partitioning.partition_of(b"{x}");
        for k in ["{x}a1", "{x}a2", "{x}b1", "{x}gone", "{x}old", "y"] {
            set(&mut s, id, k, "v", T0);
        }
        s.set(other, b("{x}a3"), b("v"), SetOptions::default(), T0, 1)
            .expect("set");
        s.delete(id, b("{x}gone"), T0, 1).expect("delete");
        let ex = expiring_after(Duration::from_secs(1));
        s.set(id, b("{x}old"), b("v"), ex, T0, 1).expect("set");
        let keys = |pattern: Option<&[u8]>, now| {
            let (mut out, next) = s.keys(id, p, pattern, 0, usize::MAX, now);
            assert_eq!(next, None);
            out.sort();
            out
        };
        assert_eq!(
            keys(None, T0),
            [b("{x}a1"), b("{x}a2"), b("{x}b1"), b("{x}old")]
        );
        assert_eq!(keys(None, at(2_000)), [b("{x}a1"), b("{x}a2"), b("{x}b1")]);
        assert_eq!(keys(Some(b"*a?"), T0), [b("{x}a1"), b("{x}a2")]);
        assert_eq!(keys(Some(b"nothing*"), T0), Vec::<Bytes>::new());
        let (out, next) = s.keys(id, Partition::new(u16::MAX), None, 0, 0, T0);
        assert!(
            next.is_none() && out.is_empty(),
            "a partition out of range holds nothing"
        );
    }

    /// A partition larger than a page is listed page by page in scan order: every key
    /// present throughout exactly once, while keys come and go between pages.
    #[test]
    fn keys_page_through_a_large_partition() {
        let (mut s, id) = store();
        let p = s.config.partitioning.partition_of(b"{x}");
        let name = |i: usize| format!("{{x}}{i}");
        for i in 0..1000 {
            set(&mut s, id, &name(i), "v", T0);
        }
        let (mut from, mut pages, mut listed) = (0, 0, Vec::new());
        loop {
            let (page, next) = s.keys(id, p, None, from, 200, T0);
            let bytes: usize = page.iter().map(|k| k.len() + 4).sum();
            assert!(!page.is_empty() && bytes <= 200, "{bytes} bytes");
            assert!(page.iter().all(|k| scan_order(k) >= from));
            listed.extend(page);
            pages += 1;
            // Between pages: keys 1000.. arrive, keys 0..100 leave.
            set(&mut s, id, &name(1000 + pages), "v", T0);
            s.delete(id, b(&name(pages)), T0, 1).expect("delete");
            match next {
                Some(n) => {
                    assert!(n > from);
                    from = n;
                }
                None => break,
            }
        }
        assert!(pages > 10, "{pages} pages");
        let mut seen = HashMap::new();
        for k in &listed {
            *seen.entry(k.clone()).or_insert(0) += 1;
        }
        assert!(seen.values().all(|&n| n == 1), "a key listed twice");
        for i in (pages + 1)..1000 {
            assert_eq!(
                seen.get(&b(&name(i))),
                Some(&1),
                "key {i} present throughout"
            );
        }
    }

    #[test]
    fn partition_snapshot_and_drop() {
        let (mut s, id) = store();
        let p = s.config.partitioning.partition_of(b"{x}");
        for i in 0..50 {
            set(&mut s, id, &format!("{{x}}{i}"), "v", T0);
            set(&mut s, id, &format!("other{i}"), "v", T0);
        }
        s.delete(id, b("{x}0"), T0, 1).expect("ok");
        let ex = expiring_after(Duration::from_secs(1));
        s.set(id, b("{x}1"), b("v"), ex, T0, 1).expect("set");
        let snap: Vec<Write> = s.snapshot(p, at(2_000)).collect();
        // 50 keys: one tombstone, one expired (left out), 48 puts.
        assert_eq!(snap.len(), 49);
        assert_eq!(snap.iter().filter(|w| w.op == WriteOp::Delete).count(), 1);
        // A fresh replica fed the snapshot holds the same live data.
        let (mut copy, cid) = store();
        for w in &snap {
            assert_eq!(copy.apply(w, at(2_000)), Ok(Applied::Applied));
        }
        for i in 2..50 {
            assert_eq!(
                copy.get(cid, format!("{{x}}{i}").as_bytes(), at(2_000)),
                Some(b("v"))
            );
        }
        assert!(!copy.exists(cid, b"{x}0", at(2_000)));
        let before = s.stats().entries;
        let n = s.drop_partition(p);
        assert_eq!(n, 50);
        assert_eq!(s.stats().entries, before - 50);
        assert_eq!(s.partition_len(p), 0);
        assert_eq!(s.high_version(p), Version::default());
        assert_eq!(s.get(id, b"{x}5", T0), None);
        assert_eq!(s.get(id, b"other5", T0), Some(b("v")));
        s.check_invariants();
    }

    #[test]
    fn reaper_removes_expired_keys_in_bounded_steps() {
        let (mut s, id) = store();
        let short = expiring_after(Duration::from_secs(1));
        let long = expiring_after(Duration::from_secs(3600));
        for i in 0..2000 {
            s.set(id, b(&format!("s{i}")), b("v"), short, T0, 1)
                .expect("set");
            s.set(id, b(&format!("l{i}")), b("v"), long, T0, 1)
                .expect("set");
            set(&mut s, id, &format!("p{i}"), "v", T0);
        }
        let mut rng = StdRng::seed_from_u64(7);
        // Nothing has expired yet: one round, nothing removed.
        let stats = s.reap(at(10), &mut rng, 20);
        assert_eq!((stats.rounds, stats.removed), (1, 0));
        // Half the keys with a TTL expired: steps are bounded, and repeated steps get
        // every expired key out.
        let first = s.reap(at(2_000), &mut rng, 20);
        assert!(first.rounds > 1, "half expired: keeps sampling, {first:?}");
        let mut total = first.removed;
        for _ in 0..10_000 {
            let stats = s.reap(at(2_000), &mut rng, 20);
            assert!(stats.rounds <= MAX_REAP_ROUNDS);
            assert!(stats.sampled <= 20 * MAX_REAP_ROUNDS);
            total += stats.removed;
            if total == 2000 {
                break;
            }
        }
        assert_eq!(total, 2000);
        // Nothing left to expire: a step is one round.
        let stats = s.reap(at(2_000), &mut rng, 20);
        assert_eq!((stats.rounds, stats.removed, stats.sampled), (1, 0, 20));
        for i in 0..2000 {
            assert!(!s.exists(id, format!("s{i}").as_bytes(), at(2_000)));
        }
        assert_eq!(s.len(), 4000);
        assert_eq!(s.stats().with_ttl, 2000);
        s.check_invariants();
    }

    #[test]
    fn overwrites_in_place_keep_versions_expiries_and_accounting() {
        let (mut s, id) = store();
        set(&mut s, id, "k", "four", T0);
        let weight = s.stats().weight;
        let v1 = s.version(id, b"k").expect("stored");
        // Same size: updated where it is; the weight stays, the version moves on.
        let out = s
            .set(
                id,
                b("k"),
                b("five"),
                SetOptions {
                    get: true,
                    ..SetOptions::default()
                },
                T0,
                1,
            )
            .expect("set");
        assert_eq!(out.previous, Some(b("four")));
        assert!(out.write.as_ref().is_some_and(|w| w.version > v1));
        assert_eq!(s.version(id, b"k"), out.write.map(|w| w.version));
        assert_eq!(s.stats().weight, weight);
        // A reader holding the value keeps what it read: the new one is a copy; with no
        // reader the bytes are overwritten where they are.
        let held = s.get(id, b"k", T0).expect("stored");
        set(&mut s, id, "k", "six!", T0);
        assert_eq!(held, b("five"));
        drop(held);
        set(&mut s, id, "k", "sevn", T0);
        assert_eq!(s.get(id, b"k", T0), Some(b("sevn")));
        assert_eq!(s.stats().weight, weight);
        // Smaller: the weight goes down by the difference.
        set(&mut s, id, "k", "si", T0);
        assert_eq!(s.stats().weight, weight - 2);
        assert_eq!(s.get(id, b"k", T0), Some(b("si")));
        // With an expiry, then KEEPTTL in place: the expiry stays.
        let ttl = |after| expiring_after(Duration::from_millis(after));
        s.set(id, b("k"), b("ab"), ttl(500), T0, 1).expect("set");
        let keep = SetOptions {
            expiry: Expiry::Keep,
            ..SetOptions::default()
        };
        s.set(id, b("k"), b("cd"), keep, at(100), 1).expect("set");
        assert_eq!(
            s.ttl(id, b"k", at(100)),
            Ttl::Expires {
                at: at(500),
                remaining: Duration::from_millis(400)
            }
        );
        // NX on a live key changes nothing; XX on it writes.
        let nx = SetOptions {
            condition: Condition::IfAbsent,
            ..SetOptions::default()
        };
        assert!(
            s.set(id, b("k"), b("zz"), nx, at(100), 1)
                .expect("set")
                .write
                .is_none()
        );
        assert_eq!(s.get(id, b"k", at(100)), Some(b("cd")));
        // A tombstone with an expiry takes an empty value with an expiry in place, and
        // counts as a live key again.
        s.delete(id, b("k"), at(100), 1).expect("delete");
        assert_eq!(s.len(), 0);
        s.set(id, b("k"), b(""), ttl(50), at(100), 1).expect("set");
        assert_eq!(s.len(), 1);
        assert_eq!(s.get(id, b"k", at(100)), Some(b("")));
        // An expired entry is not overwritten in place as if it were live.
        let xx = SetOptions {
            condition: Condition::IfPresent,
            ..SetOptions::default()
        };
        assert!(
            s.set(id, b("k"), b("x"), xx, at(200), 1)
                .expect("set")
                .write
                .is_none()
        );
        assert_eq!(s.get(id, b"k", at(200)), None);
        s.check_invariants();

        // A replica applies a newer put of the same size in place, and refuses an older.
        let w = set(&mut s, id, "r", "1234", at(200))
            .write
            .expect("written");
        let weight = s.stats().weight;
        let newer = Write {
            version: Version {
                epoch: w.version.epoch,
                seq: w.version.seq + 5,
            },
            op: WriteOp::Put {
                value: b("abcd"),
                expires_at: None,
            },
            ..w.clone()
        };
        assert_eq!(s.apply(&newer, at(200)), Ok(Applied::Applied));
        assert_eq!(s.get(id, b"r", at(200)), Some(b("abcd")));
        assert_eq!(s.version(id, b"r"), Some(newer.version));
        assert_eq!(s.stats().weight, weight);
        assert_eq!(
            s.apply(&w, at(200)),
            Ok(Applied::Stale {
                held: newer.version
            })
        );
        let partition = StoreConfig::default().partitioning.partition_of(b"r");
        assert_eq!(s.high_version(partition), newer.version);
        s.check_invariants();
    }

    #[test]
    fn an_older_write_arriving_after_the_newer_expired_is_not_applied() {
        let (mut primary, pid) = store();
        let (mut replica, rid) = store();
        let old = set(&mut primary, pid, "x", "old", T0).write.expect("w");
        let ex = expiring_after(Duration::from_secs(1));
        let new = primary
            .set(pid, b("x"), b("new"), ex, T0, 1)
            .expect("set")
            .write
            .expect("w");
        let other = set(&mut primary, pid, "y", "early", T0).write.expect("w");
        assert_eq!(replica.apply(&new, T0), Ok(Applied::Applied));
        // Noticed on a read, the expiry removes the key.
        assert_eq!(replica.get(rid, b"x", at(1_000)), None);
        assert_eq!(replica.version(rid, b"x"), None);
        // The older write arrives late: applying it would bring back the value the newer
        // write replaced.
        assert_eq!(
            replica.apply(&old, at(1_000)),
            Ok(Applied::Evicted { at: new.version })
        );
        assert_eq!(replica.get(rid, b"x", at(1_000)), None);
        // Removed by the reaper instead: the same.
        let again = primary
            .set(pid, b("x"), b("again"), ex, at(1_000), 1)
            .expect("set")
            .write
            .expect("w");
        assert_eq!(replica.apply(&again, at(1_000)), Ok(Applied::Applied));
        let mut rng = StdRng::seed_from_u64(7);
        let mut rounds = 0;
        while replica.version(rid, b"x").is_some() {
            assert!(rounds < 100, "the reaper never removed the key");
            replica.reap(at(2_000), &mut rng, 20);
            rounds += 1;
        }
        assert_eq!(
            replica.apply(&new, at(2_000)),
            Ok(Applied::Evicted { at: again.version })
        );
        // Other keys, and newer writes of this one, are applied as usual.
        assert_eq!(replica.apply(&other, at(2_000)), Ok(Applied::Applied));
        let newest = set(&mut primary, pid, "x", "newest", at(2_000))
            .write
            .expect("w");
        assert_eq!(replica.apply(&newest, at(2_000)), Ok(Applied::Applied));
        assert_eq!(replica.get(rid, b"x", at(2_000)), Some(b("newest")));
        replica.check_invariants();
    }

    #[test]
    fn an_older_write_arriving_after_the_newer_was_evicted_is_not_applied() {
        let config = budgeted(64 * 1024, 256);
        let (mut primary, pid) = store();
        let mut replica = Store::new(config);
        let rid = replica
            .create_bucket("main", BucketOptions::default())
            .expect("bucket");
        let fill = |primary: &mut Store, replica: &mut Store, i: usize| {
            let filler = set(primary, pid, &format!("{{t}}f{i}"), "v", T0);
            let applied = replica.apply(&filler.write.expect("w"), T0);
            assert_eq!(applied, Ok(Applied::Applied));
        };
        // The replica is full, and evicting, when the key arrives.
        for i in 0..2_000 {
            fill(&mut primary, &mut replica, i);
        }
        assert!(replica.stats().evicted > 0);
        let other = set(&mut primary, pid, "{t}y", "early", T0)
            .write
            .expect("w");
        let old = set(&mut primary, pid, "{t}x", "old", T0).write.expect("w");
        let new = set(&mut primary, pid, "{t}x", "new", T0).write.expect("w");
        assert_eq!(replica.apply(&new, T0), Ok(Applied::Applied));
        // Other keys of the same partition come in until the replica evicts the key.
        let mut i = 2_000;
        while replica.version(rid, b"{t}x").is_some() {
            assert!(i < 20_000, "the key was never evicted");
            fill(&mut primary, &mut replica, i);
            i += 1;
        }
        // The older write arrives late (it travelled another way): applying it would
        // bring the old value back.
        assert_eq!(
            replica.apply(&old, T0),
            Ok(Applied::Evicted { at: new.version })
        );
        assert_eq!(replica.get(rid, b"{t}x", T0), None);
        // The evicted write itself (a re-sync) brings back what was evicted: not older.
        assert_eq!(replica.apply(&new, T0), Ok(Applied::Applied));
        assert_eq!(replica.get(rid, b"{t}x", T0), Some(b("new")));
        // A late write of a key that was not evicted is applied, however old.
        assert!(other.version < new.version);
        assert_eq!(replica.apply(&other, T0), Ok(Applied::Applied));
        assert_eq!(replica.get(rid, b"{t}y", T0), Some(b("early")));
        // A newer write for the key is applied as usual.
        let newest = set(&mut primary, pid, "{t}x", "newest", T0)
            .write
            .expect("w");
        assert_eq!(replica.apply(&newest, T0), Ok(Applied::Applied));
        assert_eq!(replica.get(rid, b"{t}x", T0), Some(b("newest")));
        // A partition dropped and taken on again starts afresh: its snapshot applies.
        let partition = StoreConfig::default().partitioning.partition_of(b"{t}x");
        replica.drop_partition(partition);
        assert_eq!(replica.apply(&old, T0), Ok(Applied::Applied));
        assert_eq!(replica.get(rid, b"{t}x", T0), Some(b("old")));
        replica.check_invariants();
    }

    #[test]
    fn budget_is_enforced_by_eviction() {
        let config = budgeted(64 * 1024, 256);
        let mut s = Store::new(config);
        let id = s
            .create_bucket("b", BucketOptions::default())
            .expect("bucket");
        let value = Bytes::from(vec![7u8; 100]);
        let ex = expiring_after(Duration::from_secs(60));
        for i in 0..5_000u32 {
            let opts = if i % 3 == 0 {
                ex
            } else {
                SetOptions::default()
            };
            s.set(id, b(&format!("key:{i}")), value.clone(), opts, T0, 1)
                .expect("set");
            if i % 5 == 0 {
                s.delete(id, b(&format!("key:{}", i / 2)), T0, 1)
                    .expect("ok");
            }
        }
        let stats = s.stats();
        assert!(stats.weight <= 64 * 1024, "{stats:?}");
        assert!(stats.evicted > 4_000, "{stats:?}");
        assert!(stats.entries < 5_000 * 2 / 10, "{stats:?}");
        // The most recent key survived its own insert.
        assert_eq!(s.get(id, b"key:4999", T0), Some(value));
        s.check_invariants();
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set(u8, u8, Option<u16>),
        SetNx(u8, u8),
        Del(u8),
        Incr(u8, i8),
        Expire(u8, u16),
        Persist(u8),
        Advance(u16),
        Reap,
        DropPartition(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), any::<u8>(), proptest::option::of(1u16..2000))
                .prop_map(|(k, v, t)| Op::Set(k, v, t)),
            (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Op::SetNx(k, v)),
            any::<u8>().prop_map(Op::Del),
            (any::<u8>(), any::<i8>()).prop_map(|(k, d)| Op::Incr(k, d)),
            (any::<u8>(), 0u16..2000).prop_map(|(k, t)| Op::Expire(k, t)),
            any::<u8>().prop_map(Op::Persist),
            (0u16..1000).prop_map(Op::Advance),
            Just(Op::Reap),
            any::<u8>().prop_map(Op::DropPartition),
        ]
    }

    fn key_of(k: u8) -> Bytes {
        // 32 keys, a few sharing a hash tag, so partitions hold several keys.
        Bytes::from(format!("{{t{}}}k{}", k % 4, k % 32))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Paging a partition of keys of any lengths with any page size lists each key
        /// exactly once, each page within the budget unless one order's keys exceed it.
        #[test]
        fn pages_list_each_key_once(
            lens in proptest::collection::vec(1usize..120, 1..300),
            max_bytes in 0usize..2000,
        ) {
            let (mut s, id) = store();
            let p = s.config.partitioning.partition_of(b"{x}");
            let mut want: Vec<Bytes> = Vec::new();
            for (i, len) in lens.iter().enumerate() {
                let mut key = format!("{{x}}{i}-");
                key.extend(std::iter::repeat_n('k', *len));
                set(&mut s, id, &key, "v", T0);
                want.push(b(&key));
            }
            let (mut listed, mut from) = (Vec::new(), 0);
            loop {
                let (page, next) = s.keys(id, p, None, from, max_bytes, T0);
                let bytes: usize = page.iter().map(|k| k.len() + 4).sum();
                let orders: std::collections::BTreeSet<u64> =
                    page.iter().map(|k| scan_order(k)).collect();
                prop_assert!(!page.is_empty());
                prop_assert!(bytes <= max_bytes || orders.len() == 1, "{bytes} > {max_bytes}");
                prop_assert!(page.iter().all(|k| scan_order(k) >= from));
                if let Some(n) = next {
                    prop_assert!(page.iter().all(|k| scan_order(k) < n));
                }
                listed.extend(page);
                match next {
                    Some(n) => from = n,
                    None => break,
                }
            }
            listed.sort();
            want.sort();
            prop_assert_eq!(listed, want);
        }

        /// With a budget that never evicts, the store behaves like a map with expiry times.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec(op(), 1..200), seed in any::<u64>()) {
            let (mut s, id) = store();
            let mut rng = StdRng::seed_from_u64(seed);
            let mut model: BTreeMap<Bytes, (Bytes, Option<Timestamp>)> = BTreeMap::new();
            let mut now = T0;
            for op in ops {
                model.retain(|_, (_, exp)| exp.is_none_or(|e| e > now));
                match op {
                    Op::Set(k, v, ttl) => {
                        let expiry = ttl.map_or(Expiry::BucketDefault, |t| Expiry::After(Duration::from_millis(t.into())));
                        let opts = SetOptions { expiry, ..SetOptions::default() };
                        s.set(id, key_of(k), Bytes::from(vec![v]), opts, now, 1).expect("set");
                        model.insert(key_of(k), (Bytes::from(vec![v]), ttl.map(|t| now.saturating_add(Duration::from_millis(t.into())))));
                    }
                    Op::SetNx(k, v) => {
                        let opts = SetOptions { condition: Condition::IfAbsent, ..SetOptions::default() };
                        let out = s.set(id, key_of(k), Bytes::from(vec![v]), opts, now, 1).expect("set");
                        let absent = !model.contains_key(&key_of(k));
                        prop_assert_eq!(out.write.is_some(), absent);
                        if absent {
                            model.insert(key_of(k), (Bytes::from(vec![v]), None));
                        }
                    }
                    Op::Del(k) => {
                        let w = s.delete(id, key_of(k), now, 1).expect("ok");
                        prop_assert_eq!(w.is_some(), model.remove(&key_of(k)).is_some());
                    }
                    Op::Incr(k, d) => {
                        let got = s.incr_by(id, key_of(k), d.into(), now, 1).map(|r| r.0);
                        let want = match model.get(&key_of(k)) {
                            None => Ok(i64::from(d)),
                            Some((v, _)) => parse_i64(v).map(|n| n + i64::from(d)),
                        };
                        prop_assert_eq!(&got, &want);
                        if let Ok(n) = want {
                            let exp = model.get(&key_of(k)).and_then(|e| e.1);
                            model.insert(key_of(k), (Bytes::from(n.to_string()), exp));
                        }
                    }
                    Op::Expire(k, t) => {
                        let when = now.saturating_add(Duration::from_millis(t.into()));
                        let w = s.expire(id, key_of(k), when, ExpireCondition::Always, now, 1).expect("ok");
                        prop_assert_eq!(w.is_some(), model.contains_key(&key_of(k)));
                        if t == 0 {
                            model.remove(&key_of(k));
                        } else if let Some(e) = model.get_mut(&key_of(k)) {
                            e.1 = Some(when);
                        }
                    }
                    Op::Persist(k) => {
                        let w = s.persist(id, key_of(k), now, 1).expect("ok");
                        let had = model.get(&key_of(k)).is_some_and(|e| e.1.is_some());
                        prop_assert_eq!(w.is_some(), had);
                        if let Some(e) = model.get_mut(&key_of(k)) {
                            e.1 = None;
                        }
                    }
                    Op::Advance(ms) => now = now.saturating_add(Duration::from_millis(ms.into())),
                    Op::Reap => {
                        s.reap(now, &mut rng, 5);
                    }
                    Op::DropPartition(k) => {
                        let p = s.config.partitioning.partition_of(&key_of(k));
                        s.drop_partition(p);
                        model.retain(|key, _| s.config.partitioning.partition_of(key) != p);
                    }
                }
                s.check_invariants();
            }
            model.retain(|_, (_, exp)| exp.is_none_or(|e| e > now));
            for k in 0..32u8 {
                let got = s.get(id, &key_of(k), now);
                prop_assert_eq!(got, model.get(&key_of(k)).map(|e| e.0.clone()));
            }
        }

        /// Under a tight budget the indexes stay consistent with what the cache evicts.
        #[test]
        fn eviction_keeps_indexes_consistent(
            ops in proptest::collection::vec((any::<u16>(), 0usize..400, any::<bool>(), any::<bool>()), 1..300),
        ) {
            let config = budgeted(8 * 1024, 32);
            let mut s = Store::new(config);
            let id = s.create_bucket("b", BucketOptions::default()).expect("bucket");
            for (k, len, ttl, del) in ops {
                let key = Bytes::from(format!("{{p{}}}{k}", k % 8));
                if del {
                    s.delete(id, key, T0, 1).expect("ok");
                } else {
                    let expiry = if ttl { Expiry::After(Duration::from_secs(5)) } else { Expiry::Never };
                    let opts = SetOptions { expiry, ..SetOptions::default() };
                    s.set(id, key, Bytes::from(vec![1; len]), opts, T0, 1).expect("set");
                }
                s.check_invariants();
            }
        }

        /// A replica under a tight budget, its writes arriving in any order, never goes
        /// back to an older version of a key than one it applied (it may forget the key:
        /// evicted), whatever it evicted in between.
        #[test]
        fn an_evicting_replica_never_goes_back_to_an_older_version(
            writes in proptest::collection::vec((0u8..24, 1usize..300), 1..300),
            order in any::<u64>(),
        ) {
            let (mut primary, pid) = store();
            let config = budgeted(8 * 1024, 32);
            let mut replica = Store::new(config);
            let rid = replica.create_bucket("main", BucketOptions::default()).expect("bucket");
            // The table of evictions forgets one when another key takes its slot; here
            // every key has a slot of its own, so nothing may go back.
            replica.evicted_versions = EvictedVersions::with_slots(4096);
            let slots: std::collections::HashSet<u64> = (0..24u8)
                .map(|k| replica.evicted_versions.hash(rid.0, format!("{{p{}}}{k}", k % 3).as_bytes()) & 4095)
                .collect();
            prop_assert_eq!(slots.len(), 24, "the keys share slots");
            let mut made: Vec<Write> = writes
                .iter()
                .map(|&(k, len)| {
                    let key = Bytes::from(format!("{{p{}}}{k}", k % 3));
                    primary
                        .set(pid, key, Bytes::from(vec![k; len]), SetOptions::default(), T0, 1)
                        .expect("set")
                        .write
                        .expect("written")
                })
                .collect();
            // Delivered out of order: a random walk of swaps of neighbours, as messages
            // travelling two ways overtake each other.
            let mut rng = StdRng::seed_from_u64(order);
            for i in (1..made.len()).rev() {
                if rng.next_u32() % 2 == 0 {
                    made.swap(i, i - 1);
                }
            }
            let mut applied: HashMap<Bytes, Version> = HashMap::new();
            for w in &made {
                if replica.apply(w, T0) == Ok(Applied::Applied) {
                    let seen = applied.entry(w.key.clone()).or_default();
                    prop_assert!(w.version > *seen, "applied {:?} after {:?}", w.version, seen);
                    *seen = w.version;
                }
                for (key, seen) in &applied {
                    if let Some(held) = replica.version(rid, key) {
                        prop_assert!(held >= *seen, "{key:?} back at {held:?} after {seen:?}");
                    }
                }
                replica.check_invariants();
            }
        }

        /// Replicas converge on the newest write whatever order writes arrive in.
        #[test]
        fn apply_order_does_not_matter(order in Just((0..12usize).collect::<Vec<_>>()).prop_shuffle()) {
            let (mut primary, pid) = store();
            let mut writes = Vec::new();
            for i in 0..12u8 {
                let epoch = 1 + u64::from(i / 4);
                let w = if i % 5 == 4 {
                    primary.delete(pid, b("k"), T0, epoch).expect("ok")
                } else {
                    primary.set(pid, b("k"), Bytes::from(vec![i]), SetOptions::default(), T0, epoch).expect("set").write
                };
                writes.extend(w);
            }
            let (mut replica, rid) = store();
            for &i in &order {
                if let Some(w) = writes.get(i) {
                    replica.apply(w, T0).expect("apply");
                }
            }
            prop_assert_eq!(replica.get(rid, b"k", T0), primary.get(pid, b"k", T0));
            prop_assert_eq!(replica.version(rid, b"k"), primary.version(pid, b"k"));
            replica.check_invariants();
        }
    }
}
