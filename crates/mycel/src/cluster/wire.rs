//! The messages of the `mycel/v1` application and the gossip metadata, with their codecs.
//!
//! Every message is a request body `[u8 version = 1][postcard(Msg)]`, answered by a
//! response body `[u8 version = 1][postcard(Reply)]`. Decoding never panics and never
//! allocates more than the input can fill: postcard bounds sequence pre-allocation, byte
//! strings are copied from the (size-limited) frame, and routing tables are validated on
//! decode. An unknown version or a malformed body is a [`WireError`] for the caller to
//! count and drop.
//!
//! Core types cross the wire through mirrors defined here ([`WireWrite`], [`WireExpiry`],
//! ...), so the store keeps its in-memory types free of serialisation concerns.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nodosum_proto::NodeId;
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::clock::Timestamp;
use crate::error::Error;
use crate::routing::RoutingTable;
use crate::slot::{Partition, Partitioning};
use crate::store::{
    Condition, ExpireCondition, Expiry, KeyStamp, SetOptions, Ttl, Version, Write, WriteOp,
};

/// The protocol version byte in front of every body.
pub(crate) const WIRE_VERSION: u8 = 1;

/// Magic in front of Mycel's gossip metadata, so that other users of the metadata field
/// are told apart.
const META_MAGIC: &[u8; 4] = b"MYCL";

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    /// The body is empty.
    #[error("empty body")]
    Empty,
    /// The version byte is not one this node speaks.
    #[error("unknown protocol version {version}")]
    UnknownVersion {
        /// The version received.
        version: u8,
    },
    /// The body does not decode (or a routing table in it is invalid).
    #[error("malformed body: {reason}")]
    Malformed {
        /// postcard's reason.
        reason: String,
    },
}

thread_local! {
    /// The frame [`decode_shared`] is decoding on this thread, so that byte strings can be
    /// views into it rather than copies.
    static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// `v` as a view into the frame being decoded if it lies within it, else a copy. Views
/// are transient: the store keeps exact-size copies of what it holds, so a view never
/// pins a frame beyond the handling of its message.
fn view(v: &[u8]) -> Bytes {
    SOURCE.with(|source| {
        if let Some(frame) = source.borrow().as_ref() {
            let start = frame.as_ptr().addr();
            let at = v.as_ptr().addr();
            if at >= start && at + v.len() <= start + frame.len() {
                return frame.slice_ref(v);
            }
        }
        Bytes::copy_from_slice(v)
    })
}

/// Bytes that serialise as a byte string (postcard: varint length + the bytes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct WBytes(pub(crate) Bytes);

impl Serialize for WBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for WBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WBytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<WBytes, E> {
                Ok(WBytes(view(v)))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<WBytes, E> {
                Ok(WBytes(Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<WBytes, E> {
                Ok(WBytes(Bytes::from(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<WBytes, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(WBytes(Bytes::from(out)))
            }
        }
        d.deserialize_bytes(V)
    }
}

impl From<Bytes> for WBytes {
    fn from(b: Bytes) -> Self {
        Self(b)
    }
}

/// A UTF-8 name (a bucket) that serialises as a string, held as [`Bytes`] so that decoding
/// and cloning it do not allocate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct WStr(Bytes);

impl std::ops::Deref for WStr {
    type Target = str;

    fn deref(&self) -> &str {
        std::str::from_utf8(&self.0).expect("invariant: built from UTF-8 only")
    }
}

impl From<&str> for WStr {
    fn from(s: &str) -> Self {
        Self(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for WStr {
    fn from(s: String) -> Self {
        Self(Bytes::from(s.into_bytes()))
    }
}

impl Serialize for WStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self)
    }
}

impl<'de> Deserialize<'de> for WStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WStr;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<WStr, E> {
                Ok(WStr(view(v.as_bytes())))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<WStr, E> {
                Ok(WStr::from(v))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<WStr, E> {
                Ok(WStr::from(v))
            }
        }
        d.deserialize_str(V)
    }
}

/// A request between Mycel nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Msg {
    /// A client operation forwarded to the partition's primary at the sender's `epoch`.
    Op {
        /// The sender's routing epoch; the primary answers `NotOwner` unless it is its own.
        epoch: u64,
        /// The operation.
        op: Op,
    },
    /// Writes the primary made at `epoch`, for a backup to apply.
    Replicate {
        /// The primary's routing epoch.
        epoch: u64,
        /// The writes, in the order they were made.
        writes: Vec<WireWrite>,
    },
    /// "Send me your current routing table."
    TableReq,
    /// A routing table (and the one before it, so a node that missed it knows where the
    /// data was).
    TablePush {
        /// The table.
        table: RoutingTable,
        /// The table the sender had before, if any.
        previous: Option<RoutingTable>,
    },
    /// Starts a partition transfer: the receiver installs `table` (if newer), then
    /// snapshots `partitions` and answers with the first page.
    FetchStart {
        /// The fetcher's current table.
        table: RoutingTable,
        /// The fetcher's previous table, if any.
        previous: Option<RoutingTable>,
        /// The partitions wanted.
        partitions: Vec<Partition>,
    },
    /// The next page of transfer `session`.
    FetchNext {
        /// The session from the first page.
        session: u64,
    },
    /// The sender has synced these partitions from the receiver; a receiver that is no
    /// longer their replica may drop them once every new replica released them.
    Release {
        /// The partitions.
        partitions: Vec<Partition>,
    },
    /// Client operations forwarded to the receiver as primary at the sender's `epoch`,
    /// executed in order (answered by [`Reply::Batch`], one result per operation). Only
    /// the single-key operations (see [`Op::batchable`]); appended after the original
    /// variants, so the encodings of those are unchanged.
    Batch {
        /// The sender's routing epoch, as in [`Msg::Op`].
        epoch: u64,
        /// The operations, in the order they are to be applied.
        ops: Vec<Op>,
    },
    /// A [`Msg::Batch`] from a node that takes, in the reply ([`Reply::Carried`]), the
    /// writes of partitions it backs up rather than in a [`Msg::Replicate`] of their own;
    /// it applies them before it answers its clients. Appended, as `Batch`.
    Carry {
        /// The sender's routing epoch, as in [`Msg::Op`].
        epoch: u64,
        /// The operations, in the order they are to be applied.
        ops: Vec<Op>,
    },
    /// A transaction (`MULTI` ... `EXEC`): client operations on one partition, applied by
    /// the receiver as its primary as one (under one hold of its state lock, none
    /// deferred), answered by [`Reply::Batch`]. Only to nodes announcing
    /// [`FEATURE_ATOMIC`]; appended, as `Batch`.
    Atomic {
        /// The sender's routing epoch, as in [`Msg::Op`].
        epoch: u64,
        /// The operations, in the order they are to be applied.
        ops: Vec<Op>,
    },
}

/// An operation executed at a partition's primary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Op {
    /// `GET`.
    Get { bucket: WStr, key: WBytes },
    /// `EXISTS`.
    Exists { bucket: WStr, key: WBytes },
    /// `PTTL`.
    Ttl { bucket: WStr, key: WBytes },
    /// `SET` with options.
    Set {
        bucket: WStr,
        key: WBytes,
        value: WBytes,
        expiry: WireExpiry,
        condition: WireCondition,
        get: bool,
    },
    /// `DEL`.
    Delete { bucket: WStr, key: WBytes },
    /// `PEXPIRE`: expire `after_ms` from the primary's now.
    Expire {
        bucket: WStr,
        key: WBytes,
        after_ms: u64,
    },
    /// `PERSIST`.
    Persist { bucket: WStr, key: WBytes },
    /// `INCRBY`.
    IncrBy {
        bucket: WStr,
        key: WBytes,
        delta: i64,
    },
    /// `MGET` of keys whose partitions share this primary.
    MGet { bucket: WStr, keys: Vec<WBytes> },
    /// `MSET` of keys whose partitions share this primary.
    MSet {
        bucket: WStr,
        entries: Vec<(WBytes, WBytes)>,
    },
    /// Live keys in the partitions the receiver is primary of.
    Count,
    /// Get, or on a miss run the bucket's loader once at the primary (single-flight).
    GetOrLoad { bucket: WStr, key: WBytes },
    /// `PEXPIRE` with a condition (`NX`, `XX`, `GT`, `LT`); appended after the original
    /// variants, so the encodings of those are unchanged.
    ExpireIf {
        bucket: WStr,
        key: WBytes,
        after_ms: u64,
        condition: WireExpireCondition,
    },
    /// `SCAN`/`KEYS` of one partition: a page of its live keys of `bucket` matching
    /// `pattern` (a [`crate::glob`] pattern; all when `None`), from scan order `from` on,
    /// of about `max_bytes` (see `Store::keys`). Appended, as `ExpireIf`.
    Scan {
        bucket: WStr,
        partition: u16,
        pattern: Option<WBytes>,
        from: u64,
        max_bytes: u32,
    },
    /// `APPEND`. Appended, as `ExpireIf`.
    Append {
        bucket: WStr,
        key: WBytes,
        value: WBytes,
    },
    /// `RENAME` (`replace`) or `RENAMENX` of `key` to `to`, a key of the same partition.
    /// Answered with `OpReply::Int`: 1 renamed, 0 `to` kept, -1 no `key`. Appended, as
    /// `ExpireIf`.
    Rename {
        bucket: WStr,
        key: WBytes,
        to: WBytes,
        replace: bool,
    },
    /// `MSETNX` of keys of one partition: all set if none exists (`OpReply::Bool`).
    /// Appended, as `ExpireIf`.
    MSetNx {
        bucket: WStr,
        entries: Vec<(WBytes, WBytes)>,
    },
    /// `COPY` of `key` to `to`, a different key of the same partition (`OpReply::Bool`:
    /// whether it was copied). Appended, as `ExpireIf`.
    Copy {
        bucket: WStr,
        key: WBytes,
        to: WBytes,
        replace: bool,
    },
    /// `INCRBYFLOAT`: the increment's parts ([`LongDouble::to_parts`]; `None` for an
    /// infinity), checked again by the primary. Answered with `OpReply::Value`, the new
    /// value's text. Appended, as `ExpireIf`.
    IncrByFloat {
        bucket: WStr,
        key: WBytes,
        increment: Option<(bool, u64, i64)>,
    },
    /// `SETRANGE`: `value` written from byte `offset` on. Answered with `OpReply::Int`,
    /// the new length. Appended, as `ExpireIf`.
    SetRange {
        bucket: WStr,
        key: WBytes,
        offset: u64,
        value: WBytes,
    },
    /// `FLUSHDB` of one partition: deletes a page of its live keys of `bucket` (those of
    /// `Scan`'s page from scan order `from`, about `max_bytes` of keys), each a replicated
    /// delete. Answered with `OpReply::Cleared`. Only to nodes announcing
    /// [`FEATURE_CLEAR`].
    Clear {
        bucket: WStr,
        partition: u16,
        from: u64,
        max_bytes: u32,
    },
    /// The key's stamp (`WATCH`), answered with `OpReply::Stamp`. Only to nodes
    /// announcing [`FEATURE_WATCH`].
    Stamp { bucket: WStr, key: WBytes },
    /// Whether the key's stamp is still `stamp` (`OpReply::Bool`); in a [`Msg::Atomic`],
    /// one that does not hold stops the transaction (every later operation answers
    /// [`Refusal::WatchFailed`]). Only to nodes announcing [`FEATURE_WATCH`].
    Unchanged {
        bucket: WStr,
        key: WBytes,
        stamp: KeyStamp,
    },
}

/// A response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Reply {
    /// An operation's result.
    Op(OpReply),
    /// A refusal or failure.
    Err(Refusal),
    /// Done (replicate, push, release).
    Ack,
    /// The responder's table and the one before it.
    Table {
        /// The current table, if any.
        table: Option<RoutingTable>,
        /// The previous table, if any.
        previous: Option<RoutingTable>,
    },
    /// A page of a partition transfer.
    Page {
        /// The session to ask `FetchNext` for.
        session: u64,
        /// The source's sync state of each requested partition (first page only).
        statuses: Vec<(Partition, SourceStatus)>,
        /// Writes to apply.
        writes: Vec<WireWrite>,
        /// Whether this was the last page.
        done: bool,
    },
    /// The results of a [`Msg::Batch`], one per operation, in order.
    Batch(Vec<Result<OpReply, Refusal>>),
    /// The results of a [`Msg::Carry`], one per operation, in order, and the writes the
    /// sender backs up, for it to apply as it would a [`Msg::Replicate`]. Appended.
    Carried {
        /// One result per operation.
        results: Vec<Result<OpReply, Refusal>>,
        /// The writes, grouped by the epoch they were made at.
        writes: Vec<CarriedWrites>,
    },
}

/// About how many bytes a message encodes to (at least as many for the operations and
/// writes it carries, which dominate), to size the encoding buffer.
pub(crate) trait SizeHint {
    fn size_hint(&self) -> usize;
}

impl SizeHint for Msg {
    fn size_hint(&self) -> usize {
        16 + match self {
            Self::Op { op, .. } => op.size(),
            Self::Replicate { writes, .. } => writes.iter().map(WireWrite::size).sum(),
            Self::Batch { ops, .. } | Self::Carry { ops, .. } | Self::Atomic { ops, .. } => {
                ops.iter().map(Op::size).sum()
            }
            Self::TableReq
            | Self::TablePush { .. }
            | Self::FetchStart { .. }
            | Self::FetchNext { .. }
            | Self::Release { .. } => 240,
        }
    }
}

impl SizeHint for Reply {
    fn size_hint(&self) -> usize {
        let results = |rs: &[Result<OpReply, Refusal>]| -> usize {
            rs.iter()
                .map(|r| r.as_ref().map_or(16, OpReply::size))
                .sum()
        };
        16 + match self {
            Self::Op(r) => r.size(),
            Self::Batch(rs) => results(rs),
            Self::Carried {
                results: rs,
                writes,
            } => {
                results(rs)
                    + writes
                        .iter()
                        .map(|c| {
                            16 + 4 * c.ops.len()
                                + c.writes.iter().map(WireWrite::size).sum::<usize>()
                        })
                        .sum::<usize>()
            }
            Self::Page {
                writes, statuses, ..
            } => writes.iter().map(WireWrite::size).sum::<usize>() + 8 * statuses.len(),
            Self::Err(_) | Self::Ack | Self::Table { .. } => 240,
        }
    }
}

/// Writes a primary made at `epoch` for the sender of a [`Msg::Carry`], a backup of their
/// partitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct CarriedWrites {
    /// The primary's routing epoch when it made them.
    pub(crate) epoch: u64,
    /// The writes, in the order they were made.
    pub(crate) writes: Vec<WireWrite>,
    /// The operations (indexes into the message's) that made them: their results are only
    /// acknowledged once the writes are applied.
    pub(crate) ops: Vec<u32>,
}

impl Op {
    /// The key the operation is routed by (`None` for `Count`; the first key of a
    /// multi-key operation).
    pub(crate) fn key(&self) -> Option<&Bytes> {
        match self {
            Self::Get { key, .. }
            | Self::Exists { key, .. }
            | Self::Ttl { key, .. }
            | Self::Set { key, .. }
            | Self::Delete { key, .. }
            | Self::Expire { key, .. }
            | Self::ExpireIf { key, .. }
            | Self::Persist { key, .. }
            | Self::IncrBy { key, .. }
            | Self::Append { key, .. }
            | Self::Rename { key, .. }
            | Self::Copy { key, .. }
            | Self::IncrByFloat { key, .. }
            | Self::SetRange { key, .. }
            | Self::GetOrLoad { key, .. }
            | Self::Stamp { key, .. }
            | Self::Unchanged { key, .. } => Some(&key.0),
            Self::MGet { keys, .. } => keys.first().map(|k| &k.0),
            Self::MSet { entries, .. } | Self::MSetNx { entries, .. } => {
                entries.first().map(|(k, _)| &k.0)
            }
            Self::Count | Self::Scan { .. } | Self::Clear { .. } => None,
        }
    }

    /// The partition whose primary executes the operation: its (first) key's, a scan's
    /// or clear's own, the empty key's for `Count`. A scan's or clear's partition may be
    /// out of range (it comes from a peer); [`Partitioning::contains`] tells.
    pub(crate) fn partition(&self, partitioning: Partitioning) -> Partition {
        match self {
            Self::Scan { partition, .. } | Self::Clear { partition, .. } => {
                Partition::new(*partition)
            }
            op => partitioning.partition_of(op.key().map_or(&[][..], |k| &k[..])),
        }
    }

    /// The [`MemberMeta::features`] a node announces when it decodes the operation: none
    /// for the original ones. A node that does not decode an operation refuses the whole
    /// message that carries it. The operations appended after `ExpireIf` came before
    /// `Carry`, so [`FEATURE_CARRY`] tells for them.
    pub(crate) fn needs(&self) -> u32 {
        match self {
            Self::Scan { .. }
            | Self::Append { .. }
            | Self::Rename { .. }
            | Self::MSetNx { .. }
            | Self::Copy { .. }
            | Self::IncrByFloat { .. }
            | Self::SetRange { .. } => FEATURE_CARRY,
            Self::Clear { .. } => FEATURE_CLEAR,
            Self::Stamp { .. } | Self::Unchanged { .. } => FEATURE_WATCH,
            Self::Get { .. }
            | Self::Exists { .. }
            | Self::Ttl { .. }
            | Self::Set { .. }
            | Self::Delete { .. }
            | Self::Expire { .. }
            | Self::ExpireIf { .. }
            | Self::Persist { .. }
            | Self::IncrBy { .. }
            | Self::MGet { .. }
            | Self::MSet { .. }
            | Self::Count
            | Self::GetOrLoad { .. } => 0,
        }
    }

    /// Whether the operation changes data.
    pub(crate) fn is_write(&self) -> bool {
        matches!(
            self,
            Self::Set { .. }
                | Self::Delete { .. }
                | Self::Expire { .. }
                | Self::ExpireIf { .. }
                | Self::Persist { .. }
                | Self::IncrBy { .. }
                | Self::Append { .. }
                | Self::Rename { .. }
                | Self::MSet { .. }
                | Self::MSetNx { .. }
                | Self::Copy { .. }
                | Self::IncrByFloat { .. }
                | Self::SetRange { .. }
                | Self::Clear { .. }
        )
    }

    /// Whether the operation may travel in a [`Msg::Batch`]: the single-key operations
    /// and partition scans and clears, which the primary executes at once (not
    /// `GetOrLoad`, `Count`, `MGet`, `MSet`).
    pub(crate) fn batchable(&self) -> bool {
        matches!(
            self,
            Self::Get { .. }
                | Self::Exists { .. }
                | Self::Ttl { .. }
                | Self::Set { .. }
                | Self::Delete { .. }
                | Self::Expire { .. }
                | Self::ExpireIf { .. }
                | Self::Persist { .. }
                | Self::IncrBy { .. }
                | Self::Scan { .. }
                | Self::Clear { .. }
                | Self::Stamp { .. }
                | Self::Unchanged { .. }
        )
    }

    /// Approximate encoded size, for paging: key, value and bucket name (which every
    /// operation carries, and whose length no limit bounds) plus the fixed fields.
    pub(crate) fn size(&self) -> usize {
        let value = match self {
            Self::Set { value, .. } | Self::Append { value, .. } | Self::SetRange { value, .. } => {
                value.0.len()
            }
            Self::Rename { to, .. } | Self::Copy { to, .. } => to.0.len(),
            Self::MSetNx { entries, .. } | Self::MSet { entries, .. } => {
                entries.iter().map(|(k, v)| k.0.len() + v.0.len() + 8).sum()
            }
            Self::MGet { keys, .. } => keys.iter().map(|k| k.0.len() + 4).sum(),
            Self::Scan {
                pattern: Some(p), ..
            } => p.0.len(),
            _ => 0,
        };
        let bucket = match self {
            Self::Get { bucket, .. }
            | Self::Exists { bucket, .. }
            | Self::Ttl { bucket, .. }
            | Self::Set { bucket, .. }
            | Self::Delete { bucket, .. }
            | Self::Expire { bucket, .. }
            | Self::ExpireIf { bucket, .. }
            | Self::Persist { bucket, .. }
            | Self::IncrBy { bucket, .. }
            | Self::MGet { bucket, .. }
            | Self::MSet { bucket, .. }
            | Self::GetOrLoad { bucket, .. }
            | Self::Scan { bucket, .. }
            | Self::Append { bucket, .. }
            | Self::Rename { bucket, .. }
            | Self::MSetNx { bucket, .. }
            | Self::Copy { bucket, .. }
            | Self::IncrByFloat { bucket, .. }
            | Self::SetRange { bucket, .. }
            | Self::Clear { bucket, .. }
            | Self::Stamp { bucket, .. }
            | Self::Unchanged { bucket, .. } => bucket.len(),
            Self::Count => 0,
        };
        self.key().map_or(0, Bytes::len) + value + bucket + 48
    }
}

impl OpReply {
    /// Approximate encoded size, for bounding a batch's reply.
    pub(crate) fn size(&self) -> usize {
        let bytes = |v: &Option<WBytes>| v.as_ref().map_or(0, |b| b.0.len());
        16 + match self {
            Self::Value(v) | Self::Set { previous: v, .. } => bytes(v),
            Self::Values(vs) => vs.iter().map(|v| bytes(v) + 4).sum(),
            Self::Keys { keys, .. } => keys.iter().map(|k| k.0.len() + 4).sum(),
            _ => 0,
        }
    }
}

/// The result of an [`Op`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum OpReply {
    /// A value or none.
    Value(Option<WBytes>),
    /// Values of an `MGet`, in key order.
    Values(Vec<Option<WBytes>>),
    /// Whether something held or happened.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A count.
    Count(u64),
    /// A time to live.
    Ttl(WireTtl),
    /// A `SET`'s outcome.
    Set {
        /// Whether the write happened.
        applied: bool,
        /// The previous value, if asked for.
        previous: Option<WBytes>,
    },
    /// Nothing to report.
    Unit,
    /// A page of a partition's keys (`Op::Scan`), and the scan order to resume from if
    /// the partition has more. Appended, as `Op::Scan`.
    Keys {
        keys: Vec<WBytes>,
        next: Option<u64>,
    },
    /// What an `Op::Clear` deleted, and the scan order to go on from if the partition has
    /// more. Appended, as `Op::Clear`.
    Cleared { deleted: u64, next: Option<u64> },
    /// An `Op::Stamp`'s stamp. Appended, as `Op::Stamp`.
    Stamp(KeyStamp),
}

/// Why a node refused or failed a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Refusal {
    /// Not the primary (or not a replica) at this node's `epoch`.
    NotOwner { epoch: u64 },
    /// A backup is at an older `epoch` than the replicating primary.
    Behind { epoch: u64 },
    /// The partition is still being fetched here; retry shortly.
    Syncing { partition: Partition },
    /// Outside a majority of the last stable view.
    QuorumLost,
    /// Replication did not complete; the write may or may not persist.
    Timeout,
    /// Value too large.
    ValueTooLarge { len: u64, max: u64 },
    /// Key too large.
    KeyTooLarge { len: u64, max: u64 },
    /// Unknown bucket.
    BucketUnknown { name: String },
    /// Not an integer.
    NotAnInteger,
    /// Increment overflow.
    Overflow,
    /// No loader for the bucket at the primary.
    NoLoader { bucket: String },
    /// Unknown fetch session (expired or never started).
    UnknownSession,
    /// The request could not be understood.
    BadRequest,
    /// Not executed: the batch's reply had reached its size bound before this operation
    /// (every later operation of the batch is deferred too). Nothing changed; send again.
    Deferred,
    /// Not a number (`INCRBYFLOAT`).
    NotAFloat,
    /// The sum is not finite (`INCRBYFLOAT`).
    NotFinite,
    /// Not executed: an `Op::Unchanged` before it in the transaction did not hold.
    /// Appended; only in answers to [`FEATURE_WATCH`] operations.
    WatchFailed,
}

impl Refusal {
    /// Whether the operation was not executed and may be sent again as it is: the
    /// refusals a router retries (not-owner, syncing, deferred).
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::NotOwner { .. } | Self::Syncing { .. } | Self::Deferred
        )
    }

    /// The refusal for a core error.
    pub(crate) fn from_error(e: &Error) -> Self {
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        match e {
            Error::NotOwner { epoch } => Self::NotOwner { epoch: *epoch },
            Error::Timeout => Self::Timeout,
            Error::QuorumLost => Self::QuorumLost,
            Error::ValueTooLarge { len, max } => Self::ValueTooLarge {
                len: n(*len),
                max: n(*max),
            },
            Error::KeyTooLarge { len, max } => Self::KeyTooLarge {
                len: n(*len),
                max: n(*max),
            },
            Error::BucketUnknown { name } => Self::BucketUnknown { name: name.clone() },
            Error::NotAnInteger => Self::NotAnInteger,
            Error::Overflow => Self::Overflow,
            Error::NotAFloat => Self::NotAFloat,
            Error::NotFinite => Self::NotFinite,
            Error::WatchedKeyChanged => Self::WatchFailed,
            _ => Self::BadRequest,
        }
    }
}

/// A source's state for a partition it is asked to transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum SourceStatus {
    /// A replica holding every acknowledged write.
    Synced,
    /// A replica still fetching from these nodes: the fetcher must ask them too.
    Pending { sources: Vec<NodeId> },
    /// Not a replica; whatever it holds is sent.
    NotReplica,
}

/// [`Write`] on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireWrite {
    /// Bucket name.
    pub(crate) bucket: String,
    /// Key.
    pub(crate) key: WBytes,
    /// Version.
    pub(crate) version: Version,
    /// The value and expiry, or `None` for a delete.
    pub(crate) put: Option<(WBytes, Option<Timestamp>)>,
}

impl WireWrite {
    /// Approximate encoded size, for paging.
    pub(crate) fn size(&self) -> usize {
        let value = self.put.as_ref().map_or(0, |(v, _)| v.0.len());
        self.bucket.len() + self.key.0.len() + value + 32
    }
}

impl From<&Write> for WireWrite {
    fn from(w: &Write) -> Self {
        Self {
            bucket: w.bucket.to_string(),
            key: WBytes(w.key.clone()),
            version: w.version,
            put: match &w.op {
                WriteOp::Put { value, expires_at } => Some((WBytes(value.clone()), *expires_at)),
                WriteOp::Delete => None,
            },
        }
    }
}

impl From<WireWrite> for Write {
    fn from(w: WireWrite) -> Self {
        Self {
            bucket: Arc::from(w.bucket),
            key: w.key.0,
            version: w.version,
            op: match w.put {
                Some((value, expires_at)) => WriteOp::Put {
                    value: value.0,
                    expires_at,
                },
                None => WriteOp::Delete,
            },
        }
    }
}

/// [`Expiry`] on the wire; relative expiries are resolved by the primary's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum WireExpiry {
    BucketDefault,
    Never,
    AfterMs(u64),
    At(Timestamp),
    Keep,
}

impl From<Expiry> for WireExpiry {
    fn from(e: Expiry) -> Self {
        match e {
            Expiry::BucketDefault => Self::BucketDefault,
            Expiry::Never => Self::Never,
            Expiry::After(d) => Self::AfterMs(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            Expiry::At(t) => Self::At(t),
            Expiry::Keep => Self::Keep,
        }
    }
}

impl From<WireExpiry> for Expiry {
    fn from(e: WireExpiry) -> Self {
        match e {
            WireExpiry::BucketDefault => Self::BucketDefault,
            WireExpiry::Never => Self::Never,
            WireExpiry::AfterMs(ms) => Self::After(Duration::from_millis(ms)),
            WireExpiry::At(t) => Self::At(t),
            WireExpiry::Keep => Self::Keep,
        }
    }
}

/// [`ExpireCondition`] on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum WireExpireCondition {
    Always,
    IfNone,
    IfSome,
    IfLater,
    IfEarlier,
    IfSomeEarlier,
}

impl From<ExpireCondition> for WireExpireCondition {
    fn from(c: ExpireCondition) -> Self {
        match c {
            ExpireCondition::Always => Self::Always,
            ExpireCondition::IfNone => Self::IfNone,
            ExpireCondition::IfSome => Self::IfSome,
            ExpireCondition::IfLater => Self::IfLater,
            ExpireCondition::IfEarlier => Self::IfEarlier,
            ExpireCondition::IfSomeEarlier => Self::IfSomeEarlier,
        }
    }
}

impl From<WireExpireCondition> for ExpireCondition {
    fn from(c: WireExpireCondition) -> Self {
        match c {
            WireExpireCondition::Always => Self::Always,
            WireExpireCondition::IfNone => Self::IfNone,
            WireExpireCondition::IfSome => Self::IfSome,
            WireExpireCondition::IfLater => Self::IfLater,
            WireExpireCondition::IfEarlier => Self::IfEarlier,
            WireExpireCondition::IfSomeEarlier => Self::IfSomeEarlier,
        }
    }
}

/// [`Condition`] on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum WireCondition {
    Always,
    IfAbsent,
    IfPresent,
}

impl From<Condition> for WireCondition {
    fn from(c: Condition) -> Self {
        match c {
            Condition::Always => Self::Always,
            Condition::IfAbsent => Self::IfAbsent,
            Condition::IfPresent => Self::IfPresent,
        }
    }
}

impl From<WireCondition> for Condition {
    fn from(c: WireCondition) -> Self {
        match c {
            WireCondition::Always => Self::Always,
            WireCondition::IfAbsent => Self::IfAbsent,
            WireCondition::IfPresent => Self::IfPresent,
        }
    }
}

/// The options of a `SET` as they travel.
pub(crate) fn set_options(expiry: WireExpiry, condition: WireCondition, get: bool) -> SetOptions {
    SetOptions {
        expiry: expiry.into(),
        condition: condition.into(),
        get,
    }
}

/// [`Ttl`] on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum WireTtl {
    Missing,
    Persistent,
    Expires { at: Timestamp, remaining_ms: u64 },
}

impl From<Ttl> for WireTtl {
    fn from(t: Ttl) -> Self {
        match t {
            Ttl::Missing => Self::Missing,
            Ttl::Persistent => Self::Persistent,
            Ttl::Expires { at, remaining } => Self::Expires {
                at,
                remaining_ms: u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX),
            },
        }
    }
}

impl From<WireTtl> for Ttl {
    fn from(t: WireTtl) -> Self {
        match t {
            WireTtl::Missing => Self::Missing,
            WireTtl::Persistent => Self::Persistent,
            WireTtl::Expires { at, remaining_ms } => Self::Expires {
                at,
                remaining: Duration::from_millis(remaining_ms),
            },
        }
    }
}

/// [`MemberMeta::features`]: the node serves [`Msg::Carry`] (and so decodes every
/// operation up to [`Op::SetRange`], which came before it).
pub(crate) const FEATURE_CARRY: u32 = 1;

/// [`MemberMeta::features`]: the node decodes [`Op::Clear`] (`FLUSHDB` in a cluster).
pub(crate) const FEATURE_CLEAR: u32 = 2;

/// [`MemberMeta::features`]: the node serves [`Msg::Atomic`] (`MULTI`/`EXEC`).
pub(crate) const FEATURE_ATOMIC: u32 = 4;

/// [`MemberMeta::features`]: the node decodes [`Op::Stamp`] and [`Op::Unchanged`]
/// (`WATCH`).
pub(crate) const FEATURE_WATCH: u32 = 8;

/// What a node announces about itself in its gossip metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MemberMeta {
    /// Start of this run, ms since the Unix epoch (picks the authority).
    pub(crate) started_at: u64,
    /// Placement weight.
    pub(crate) weight: u32,
    /// The node's partition count; members with another count are ignored.
    pub(crate) partitions: u16,
    /// The node's replication factor; members with another are ignored.
    pub(crate) replication_factor: u8,
    /// The node is handing off its partitions before it leaves.
    pub(crate) leaving: bool,
    /// The node asks the authority not to publish tables (maintenance).
    pub(crate) frozen: bool,
    /// Messages added after the original set that the node serves (`FEATURE_*` bits):
    /// a peer sends them only to nodes that announce them, so a cluster can run two
    /// versions side by side during a rolling upgrade. Appended; a node from before it
    /// announces none.
    pub(crate) features: u32,
}

/// [`MemberMeta`] as nodes from before `features` announce it.
#[derive(Deserialize)]
struct MemberMetaBeforeFeatures {
    started_at: u64,
    weight: u32,
    partitions: u16,
    replication_factor: u8,
    leaving: bool,
    frozen: bool,
}

impl MemberMeta {
    /// `MYCL`, the version byte, then postcard.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = META_MAGIC.to_vec();
        out.push(WIRE_VERSION);
        // Serialising plain integers and booleans into a Vec cannot fail.
        out.extend(postcard::to_allocvec(self).expect("invariant: plain struct encodes"));
        out
    }

    /// `None` unless `bytes` are Mycel metadata of a version this node speaks.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let rest = bytes.strip_prefix(META_MAGIC.as_slice())?;
        let (&version, body) = rest.split_first()?;
        if version != WIRE_VERSION {
            return None;
        }
        postcard::from_bytes(body).ok().or_else(|| {
            let old: MemberMetaBeforeFeatures = postcard::from_bytes(body).ok()?;
            Some(Self {
                started_at: old.started_at,
                weight: old.weight,
                partitions: old.partitions,
                replication_factor: old.replication_factor,
                leaving: old.leaving,
                frozen: old.frozen,
                features: 0,
            })
        })
    }
}

/// Encodes `value` with the version byte in front.
pub(crate) fn encode<T: Serialize + SizeHint>(value: &T) -> Bytes {
    // Sized up front: a batch of writes grown by doubling would be copied several times.
    let mut out = Vec::with_capacity(value.size_hint().max(64));
    out.push(WIRE_VERSION);
    // Every type here serialises infallibly into a Vec (no maps with non-string keys, no
    // unsupported types).
    Bytes::from(postcard::to_extend(value, out).expect("invariant: wire types encode"))
}

/// Decodes a versioned body.
pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, WireError> {
    let (&version, body) = bytes.split_first().ok_or(WireError::Empty)?;
    if version != WIRE_VERSION {
        return Err(WireError::UnknownVersion { version });
    }
    postcard::from_bytes(body).map_err(|e| WireError::Malformed {
        reason: e.to_string(),
    })
}

/// Decodes a versioned body whose byte strings become views into `bytes` (no copy per
/// key or value).
pub(crate) fn decode_shared<T: for<'de> Deserialize<'de>>(bytes: &Bytes) -> Result<T, WireError> {
    /// Clears the thread's frame when decoding ends, however it ends.
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            SOURCE.with(|s| s.borrow_mut().take());
        }
    }
    SOURCE.with(|s| *s.borrow_mut() = Some(bytes.clone()));
    let _reset = Reset;
    decode(bytes)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::placement::Member;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).expect("valid id")
    }

    fn table() -> RoutingTable {
        let members = vec![Member::new(id("a"), 1), Member::new(id("b"), 2)];
        RoutingTable::compute(
            3,
            id("a"),
            Partitioning::new(64).expect("valid"),
            2,
            members,
        )
        .expect("valid table")
    }

    fn b(s: &'static str) -> WBytes {
        WBytes(Bytes::from_static(s.as_bytes()))
    }

    fn samples() -> Vec<Msg> {
        vec![
            Msg::Op {
                epoch: 7,
                op: Op::Set {
                    bucket: "default".into(),
                    key: b("k"),
                    value: b("v"),
                    expiry: WireExpiry::AfterMs(1500),
                    condition: WireCondition::IfAbsent,
                    get: true,
                },
            },
            Msg::Op {
                epoch: 1,
                op: Op::MSet {
                    bucket: "b".into(),
                    entries: vec![(b("x"), b("1")), (b("y"), b(""))],
                },
            },
            Msg::Atomic {
                epoch: 9,
                ops: vec![
                    Op::IncrBy {
                        bucket: "default".into(),
                        key: b("{t}n"),
                        delta: 1,
                    },
                    Op::Get {
                        bucket: "default".into(),
                        key: b("{t}n"),
                    },
                ],
            },
            Msg::Carry {
                epoch: 3,
                ops: vec![Op::Delete {
                    bucket: "default".into(),
                    key: b("k"),
                }],
            },
            Msg::Batch {
                epoch: 1,
                ops: vec![Op::ExpireIf {
                    bucket: "b".into(),
                    key: b("k"),
                    after_ms: 5,
                    condition: WireExpireCondition::IfSomeEarlier,
                }],
            },
            Msg::Replicate {
                epoch: 9,
                writes: vec![
                    WireWrite {
                        bucket: "default".into(),
                        key: b("k"),
                        version: Version { epoch: 9, seq: 4 },
                        put: Some((b("value"), Some(Timestamp::from_millis(123)))),
                    },
                    WireWrite {
                        bucket: "default".into(),
                        key: b("gone"),
                        version: Version { epoch: 9, seq: 5 },
                        put: None,
                    },
                ],
            },
            Msg::TableReq,
            Msg::TablePush {
                table: table(),
                previous: None,
            },
            Msg::FetchStart {
                table: table(),
                previous: Some(table()),
                partitions: vec![Partition::new(0), Partition::new(63)],
            },
            Msg::FetchNext { session: u64::MAX },
            Msg::Release {
                partitions: vec![Partition::new(5)],
            },
            Msg::Batch {
                epoch: 4,
                ops: vec![
                    Op::Set {
                        bucket: "default".into(),
                        key: b("a"),
                        value: b("1"),
                        expiry: WireExpiry::BucketDefault,
                        condition: WireCondition::Always,
                        get: false,
                    },
                    Op::Get {
                        bucket: "other".into(),
                        key: b("b"),
                    },
                    Op::IncrBy {
                        bucket: "default".into(),
                        key: b("a"),
                        delta: -3,
                    },
                    Op::Scan {
                        bucket: "default".into(),
                        partition: 63,
                        pattern: Some(b("user:*")),
                        from: 1 << 47,
                        max_bytes: 1 << 20,
                    },
                    Op::Scan {
                        bucket: "other".into(),
                        partition: 0,
                        pattern: None,
                        from: 0,
                        max_bytes: 0,
                    },
                    Op::Clear {
                        bucket: "other".into(),
                        partition: 255,
                        from: 1 << 40,
                        max_bytes: 1 << 16,
                    },
                    Op::Append {
                        bucket: "default".into(),
                        key: b("a"),
                        value: b("tail"),
                    },
                    Op::IncrByFloat {
                        bucket: "default".into(),
                        key: b("f"),
                        increment: Some((true, 1 << 63, -16445)),
                    },
                    Op::SetRange {
                        bucket: "default".into(),
                        key: b("r"),
                        offset: u64::MAX,
                        value: b("part"),
                    },
                    Op::IncrByFloat {
                        bucket: "default".into(),
                        key: b("f"),
                        increment: None,
                    },
                    Op::Rename {
                        bucket: "default".into(),
                        key: b("{t}a"),
                        to: b("{t}b"),
                        replace: false,
                    },
                    Op::MSetNx {
                        bucket: "default".into(),
                        entries: vec![(b("{t}a"), b("1")), (b("{t}b"), b(""))],
                    },
                    Op::Copy {
                        bucket: "default".into(),
                        key: b("{t}a"),
                        to: b("{t}c"),
                        replace: true,
                    },
                ],
            },
            Msg::Atomic {
                epoch: 5,
                ops: vec![
                    Op::Unchanged {
                        bucket: "default".into(),
                        key: b("{t}a"),
                        stamp: KeyStamp {
                            version: Some(Version { epoch: 5, seq: 9 }),
                            high: Version { epoch: 5, seq: 12 },
                            epoch: 5,
                            removals: 77,
                            store: 3,
                        },
                    },
                    Op::Unchanged {
                        bucket: "default".into(),
                        key: b("{t}b"),
                        stamp: KeyStamp {
                            version: None,
                            high: Version::default(),
                            epoch: 0,
                            removals: u64::MAX,
                            store: u64::MAX,
                        },
                    },
                    Op::Stamp {
                        bucket: "default".into(),
                        key: b("{t}c"),
                    },
                ],
            },
        ]
    }

    #[test]
    fn messages_round_trip() {
        for msg in samples() {
            let bytes = encode(&msg);
            assert_eq!(bytes[0], WIRE_VERSION);
            assert_eq!(decode::<Msg>(&bytes), Ok(msg));
        }
        let replies = vec![
            Reply::Op(OpReply::Values(vec![Some(b("a")), None])),
            Reply::Op(OpReply::Ttl(WireTtl::Expires {
                at: Timestamp::from_millis(5),
                remaining_ms: 2,
            })),
            Reply::Err(Refusal::NotOwner { epoch: 4 }),
            Reply::Table {
                table: Some(table()),
                previous: Some(table()),
            },
            Reply::Page {
                session: 3,
                statuses: vec![(
                    Partition::new(1),
                    SourceStatus::Pending {
                        sources: vec![id("c")],
                    },
                )],
                writes: Vec::new(),
                done: true,
            },
            Reply::Batch(vec![
                Ok(OpReply::Set {
                    applied: true,
                    previous: None,
                }),
                Err(Refusal::NotAnInteger),
                Err(Refusal::Deferred),
                Err(Refusal::WatchFailed),
                Ok(OpReply::Stamp(KeyStamp {
                    version: Some(Version { epoch: 1, seq: 2 }),
                    high: Version { epoch: 1, seq: 3 },
                    epoch: 1,
                    removals: 0,
                    store: 0,
                })),
                Ok(OpReply::Value(Some(b("v")))),
                Ok(OpReply::Keys {
                    keys: vec![b("a"), b("")],
                    next: Some(7),
                }),
            ]),
            Reply::Carried {
                results: vec![
                    Ok(OpReply::Set {
                        applied: true,
                        previous: Some(b("old")),
                    }),
                    Err(Refusal::Syncing {
                        partition: Partition::new(2),
                    }),
                ],
                writes: vec![CarriedWrites {
                    epoch: 3,
                    writes: vec![WireWrite {
                        bucket: "default".into(),
                        key: b("k"),
                        version: Version { epoch: 3, seq: 1 },
                        put: None,
                    }],
                    ops: vec![0],
                }],
            },
        ];
        for reply in replies {
            assert_eq!(decode::<Reply>(&encode(&reply)), Ok(reply));
        }
    }

    #[test]
    fn the_original_variants_keep_their_encoding() {
        // Batch, Reply::Batch and Deferred were appended: what older nodes send and
        // expect is unchanged (variant indexes, and a bucket name is a plain string).
        let op = encode(&Msg::Op {
            epoch: 2,
            op: Op::Get {
                bucket: "default".into(),
                key: b("k"),
            },
        });
        assert_eq!(&op[..], b"\x01\x00\x02\x00\x07default\x01k");
        assert_eq!(
            postcard::to_allocvec(&WStr::from("default")).expect("encode"),
            postcard::to_allocvec(&"default".to_owned()).expect("encode")
        );
        assert_eq!(
            &encode(&Reply::Err(Refusal::BadRequest))[..],
            b"\x01\x01\x0c"
        );
    }

    #[test]
    fn shared_decoding_views_the_frame() {
        let frame = encode(&Msg::Batch {
            epoch: 1,
            ops: vec![Op::Set {
                bucket: "default".into(),
                key: b("key"),
                value: b("value"),
                expiry: WireExpiry::Never,
                condition: WireCondition::Always,
                get: false,
            }],
        });
        let range = frame.as_ptr().addr()..frame.as_ptr().addr() + frame.len();
        let Ok(Msg::Batch { ops, .. }) = decode_shared::<Msg>(&frame) else {
            panic!("decodes");
        };
        let Op::Set {
            bucket, key, value, ..
        } = &ops[0]
        else {
            panic!("a set");
        };
        assert_eq!(
            (&**bucket, &key.0[..], &value.0[..]),
            ("default", &b"key"[..], &b"value"[..])
        );
        for view in [&bucket.0, &key.0, &value.0] {
            assert!(
                range.contains(&view.as_ptr().addr()),
                "a view into the frame"
            );
        }
        // Outside decode_shared, and after it, decoding copies.
        let Ok(Msg::Batch { ops, .. }) = decode::<Msg>(&frame) else {
            panic!("decodes");
        };
        let Op::Set { key, .. } = &ops[0] else {
            panic!("a set");
        };
        assert!(!range.contains(&key.0.as_ptr().addr()));
    }

    #[test]
    fn bytes_are_byte_strings() {
        // A byte string is its varint length and the bytes, not one element per byte.
        let body = postcard::to_allocvec(&b("abc")).expect("encode");
        assert_eq!(body, b"\x03abc");
    }

    #[test]
    fn versions_and_garbage_are_rejected() {
        assert_eq!(decode::<Msg>(&[]), Err(WireError::Empty));
        let mut bytes = encode(&Msg::TableReq).to_vec();
        bytes[0] = 2;
        assert_eq!(
            decode::<Msg>(&bytes),
            Err(WireError::UnknownVersion { version: 2 })
        );
        assert!(matches!(
            decode::<Msg>(&[WIRE_VERSION, 0xff, 0xff]),
            Err(WireError::Malformed { .. })
        ));
        // A table with an out-of-range replica index is refused on decode.
        let mut body = encode(&Msg::TablePush {
            table: table(),
            previous: None,
        })
        .to_vec();
        let last = body.len() - 2;
        body[last] = 0x7f;
        assert!(decode::<Msg>(&body).is_err());
        // A claimed length far beyond the input allocates nothing and fails.
        let huge = [WIRE_VERSION, 1, 9, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(decode::<Msg>(&huge).is_err());
    }

    #[test]
    fn metadata_round_trips_and_ignores_strangers() {
        let meta = MemberMeta {
            started_at: 1_700_000_000_000,
            weight: 100,
            partitions: 4096,
            replication_factor: 2,
            leaving: false,
            frozen: true,
            features: FEATURE_CARRY,
        };
        let bytes = meta.encode();
        assert!(bytes.len() <= 512);
        assert_eq!(MemberMeta::decode(&bytes), Some(meta));
        assert_eq!(MemberMeta::decode(b""), None);
        assert_eq!(MemberMeta::decode(b"other app data"), None);
        let mut wrong_version = bytes.clone();
        wrong_version[4] = 9;
        assert_eq!(MemberMeta::decode(&wrong_version), None);
        // Without its last field (one byte here) it reads as a node from before
        // `features`: one that announces none. Shorter still, it does not decode.
        let before_features = MemberMeta {
            features: 0,
            ..meta
        };
        assert_eq!(
            MemberMeta::decode(&bytes[..bytes.len() - 1]),
            Some(before_features)
        );
        assert_eq!(MemberMeta::decode(&bytes[..bytes.len() - 2]), None);
    }

    #[test]
    fn metadata_of_a_node_from_before_features_decodes() {
        // Exactly what such a node encoded: the six fields, nothing after them (postcard:
        // varints for started_at 5, weight 100 and partitions 4096, then the u8 and the
        // two booleans).
        let mut bytes = META_MAGIC.to_vec();
        bytes.push(WIRE_VERSION);
        bytes.extend([0x05, 0x64, 0x80, 0x20, 0x02, 0x01, 0x00]);
        let meta = MemberMeta::decode(&bytes).expect("decodes");
        assert_eq!(meta.features, 0, "announces no features");
        assert!(meta.leaving && meta.partitions == 4096 && meta.started_at == 5);
        // And a node from before reads a new node's metadata: postcard leaves the
        // trailing field unread.
        let new = MemberMeta {
            features: FEATURE_CARRY,
            ..meta
        };
        let encoded = new.encode();
        let old: MemberMetaBeforeFeatures = postcard::from_bytes(&encoded[5..]).unwrap();
        assert!(old.leaving && old.started_at == 5);
    }

    #[test]
    fn writes_convert_both_ways() {
        let w = Write {
            bucket: Arc::from("default"),
            key: Bytes::from_static(b"k"),
            version: Version { epoch: 2, seq: 3 },
            op: WriteOp::Put {
                value: Bytes::from_static(b"v"),
                expires_at: None,
            },
        };
        assert_eq!(Write::from(WireWrite::from(&w)), w);
        let d = Write {
            op: WriteOp::Delete,
            ..w
        };
        assert_eq!(Write::from(WireWrite::from(&d)), d);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Msg>(&bytes);
            let _ = decode::<Reply>(&bytes);
            let _ = MemberMeta::decode(&bytes);
        }

        #[test]
        fn truncations_never_panic(cut in 0usize..64) {
            for msg in samples() {
                let bytes = encode(&msg);
                let at = cut.min(bytes.len());
                let _ = decode::<Msg>(&bytes[..at]);
            }
        }
    }
}
