//! Mycel: a distributed in-memory cache built on Nodosum: a sans-IO core, a cluster layer,
//! an embeddable async handle and the `mycel` server binary.
//!
//! Mycel stores bytes under keys in named buckets, spread over a cluster: keys map to one
//! of a fixed number of partitions by Redis's CRC16 key slot (with `{hash tag}`s, so
//! related keys stay together), partitions map to an ordered replica set (primary, then
//! backups) by weighted rendezvous hashing, and one deterministic member, the oldest,
//! publishes these placements as a versioned routing table. Writes are ordered by
//! per-partition versions `(epoch, sequence)` assigned by the primary; conflicts resolve by
//! version, never by wall clock.
//!
//! What is here, all deterministic and free of I/O (time and randomness are parameters):
//!
//! - [`slot`]: key -> [`Slot`] -> [`Partition`] ([`Partitioning`]).
//! - [`placement`]: partition -> replica set over weighted [`Member`]s.
//! - [`routing`]: the [`RoutingTable`], the node's [`RoutingState`] (highest epoch wins,
//!   conflicts detected), the authority rule, the majority check and the
//!   [`ViewStabilizer`].
//! - [`store`]: one node's local [`Store`]: buckets, TTLs, Redis-like `SET` options,
//!   versioned replicated writes, a sampled expiry reaper and a byte budget enforced by
//!   `quick_cache`.
//! - [`Config`]: replication factor, stabilisation window, minority-write policy and the
//!   store's limits, with documented defaults and a `validate()` that reports every problem.
//! - [`checker`]: a linearizability checker for single-key register histories, for fault
//!   tests.
//!
//! On top of the core, with I/O:
//!
//! - [`Mycel`]: the async handle applications embed, on one of two backends:
//!   [`Mycel::standalone`] (every partition on this node, the store behind a mutex held
//!   for one operation, the reaper as a tokio task; [`now`] converts the system clock) or
//!   [`Mycel::start`] (cluster mode: the same method set routed through [`Cluster`]).
//! - [`cluster`]: the networked layer over Nodosum ([`Cluster`]).
//! - [`resp`]: the Redis protocol, pure (frames, the request parser with limits, typed
//!   commands with Redis's error wording), for the binary and for fuzzing.
//! - The `mycel` binary (`src/bin/mycel`): a Redis-compatible RESP2/RESP3 server and an
//!   HTTP admin API over a [`Mycel`] handle, a cluster member by default (`--standalone`
//!   for a single node without networking).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod checker;
mod clock;
pub mod cluster;
mod config;
mod error;
pub mod glob;
mod handle;
pub mod ldouble;
pub mod placement;
pub mod resp;
pub mod routing;
pub mod slot;
pub mod store;

#[cfg(test)]
mod sim;

pub use clock::Timestamp;
pub use cluster::{
    BatchOp, BatchReply, Cluster, ClusterConfig, ClusterError, ClusterStatus, LoadFuture, Loader,
    MemberMetadata, Placement, SetResult, decode_metadata,
};
pub use config::{Config, ConfigProblem};
pub use error::Error;
pub use handle::{
    DEFAULT_BUCKET, GetEx, Mode, Mycel, REAP_INTERVAL, ScanPage, SetReply, Stats, now,
};
pub use nodosum_proto::NodeId;
pub use placement::{DEFAULT_REPLICATION_FACTOR, Member};
pub use routing::{
    PartitionChange, Role, RoutingState, RoutingTable, TableError, TableUpdate, ViewStabilizer,
    authority,
};
pub use slot::{Partition, Partitioning, Slot};
pub use store::{
    Applied, BucketId, BucketOptions, Condition, ExpireCondition, Expiry, KeyStamp, Renamed,
    SetOptions, SetOutcome, Store, StoreConfig, Ttl, Version, Write, WriteOp,
};
