//! The crate's error type.

use crate::config::ConfigProblem;
use crate::routing::TableError;

/// Why a Mycel operation failed.
///
/// Unless a variant says otherwise, a failed operation changed no state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// This node does not own the key's partition at its routing-table epoch `epoch`; the
    /// caller should refresh its table (at least `epoch`) and retry at the owner. A forwarded
    /// request is answered with this, never forwarded again.
    #[error("not the owner of this partition at routing epoch {epoch}")]
    NotOwner {
        /// The highest routing-table epoch this node has seen.
        epoch: u64,
    },
    /// The operation did not complete in time; it may or may not have taken effect.
    #[error("operation timed out; it may or may not have taken effect")]
    Timeout,
    /// This node is outside a majority of the last stable view and refuses writes.
    #[error("quorum lost: this node is outside a majority of the last stable view")]
    QuorumLost,
    /// The value is larger than the configured maximum.
    #[error("value is {len} bytes, at most {max} allowed")]
    ValueTooLarge {
        /// Length of the value in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The key is larger than the configured maximum.
    #[error("key is {len} bytes, at most {max} allowed")]
    KeyTooLarge {
        /// Length of the key in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// No bucket of that name is configured.
    #[error("unknown bucket {name:?}")]
    BucketUnknown {
        /// The name asked for.
        name: String,
    },
    /// A bucket of that name already exists.
    #[error("bucket {name:?} already exists")]
    BucketExists {
        /// The name asked for.
        name: String,
    },
    /// More buckets than the store supports.
    #[error("too many buckets, at most {max}")]
    TooManyBuckets {
        /// The limit.
        max: usize,
    },
    /// The stored value is not a decimal 64-bit signed integer (Redis: "value is not an
    /// integer or out of range").
    #[error("value is not an integer or out of range")]
    NotAnInteger,
    /// The increment would overflow a 64-bit signed integer (Redis: "increment or decrement
    /// would overflow"). The value is unchanged.
    #[error("increment or decrement would overflow")]
    Overflow,
    /// The stored value or the increment is not a number as Redis's `INCRBYFLOAT` reads
    /// one (see [`crate::ldouble`]). The value is unchanged.
    #[error("value is not a valid float")]
    NotAFloat,
    /// The sum would be infinite (an infinite increment, or one beyond the largest
    /// `long double`). The value is unchanged.
    #[error("increment would produce NaN or Infinity")]
    NotFinite,
    /// A partition count that does not divide the 16384 key slots.
    #[error("partition count {count} must be between 1 and 16384 and divide 16384")]
    InvalidPartitionCount {
        /// The count given.
        count: u32,
    },
    /// The configuration has problems; every one is listed. Nothing was started.
    #[error("invalid configuration: {}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidConfig {
        /// Every problem found, with its field.
        problems: Vec<ConfigProblem>,
    },
    /// The cluster cannot serve this right now: no routing table yet (the cluster is
    /// forming), the key's partition is being transferred, ownership kept moving, or the
    /// key's primary could not be reached. Nothing changed; retry.
    #[error("{reason}; retry")]
    TryAgain {
        /// What the cluster layer reported.
        reason: String,
    },
    /// The cluster layer failed in a way a retry is unlikely to fix (an unexpected
    /// answer from a peer, the node refusing, an incomplete leave).
    #[error("cluster: {reason}")]
    Cluster {
        /// What the cluster layer reported.
        reason: String,
    },
    /// A multi-key operation that is atomic at one primary (`rename`, `mset_nx`, `copy`)
    /// named keys of different partitions; a hash tag (`{user1}.a`, `{user1}.b`) keeps
    /// keys together.
    #[error("keys of different partitions in one operation")]
    CrossSlot,
    /// Not run: a key the transaction watched (`BatchOp::Unchanged`, Redis `WATCH`)
    /// changed since it was watched, so the transaction stopped before this operation.
    #[error("a watched key changed; the transaction was not run")]
    WatchedKeyChanged,
    /// The operation exists only in standalone mode (for example `flush`, creating a
    /// bucket at run time): the cluster layer has no honest equivalent. Nothing changed.
    #[error("{operation} is not supported in cluster mode")]
    Unsupported {
        /// The operation, as its handle method is named.
        operation: &'static str,
    },
    /// A routing table was refused.
    #[error(transparent)]
    Table(#[from] TableError),
}
