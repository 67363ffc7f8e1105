//! The networked cluster layer: Mycel nodes on a [`nodosum::Node`], with routing tables,
//! synchronous replication, partition hand-off and single-flight loading.
//!
//! # Protocol (application `mycel/v1`)
//!
//! Every exchange is a nodosum request whose body is `[version = 1][postcard(Msg)]` and
//! whose response is `[1][postcard(Reply)]` (see `wire.rs`):
//!
//! - `Op { epoch, op }`: a client operation forwarded to the partition's primary.
//! - `Batch { epoch, ops }`: single-key operations forwarded to one primary, applied there
//!   in order, answered one result each (`Reply::Batch`). What concurrent callers forward
//!   to the same primary at the same moment shares one message (a caller's operations are
//!   never split across messages); a reply over [`ClusterConfig::page_bytes`] answers the
//!   rest `Deferred`, and the sender sends those again.
//! - `Carry { epoch, ops }`: a `Batch` from a node that backs up a partition of one of its
//!   writes; the primary returns those writes in its reply (`Reply::Carried`) rather than
//!   in a `Replicate`, and the sender applies them before it answers its clients.
//! - `Replicate { epoch, writes }`: a primary's versioned writes for a backup.
//! - `TableReq` / `TablePush { table, previous }`: routing-table distribution.
//! - `FetchStart { table, previous, partitions }` / `FetchNext { session }`: paginated partition
//!   transfer (pages of at most [`ClusterConfig::page_bytes`]).
//! - `Release { partitions }`: "I have your copy; you may drop it".
//!
//! **Membership.** Each node gossips metadata `MYCL`+version+postcard: its start time,
//! weight, partition count, replication factor, the `leaving`/`frozen` flags and the
//! messages it serves that came after the original set (`features`: `Carry` goes only
//! to a primary that announced it). Only alive (or suspect) members whose metadata
//! decodes, with this node's partition count and replication factor, take part; leaving
//! members are kept out of the view.
//!
//! **Routing.** The view feeds a [`ViewStabilizer`]; once it is stable, the oldest member
//! of the view (the authority) publishes the next [`RoutingTable`] (epoch + 1) and pushes
//! it to every member; it re-pushes its table every
//! [`ClusterConfig::table_resend_interval`], and a node without a table asks for one. A
//! lone node is its own authority and owns every partition (after
//! [`ClusterConfig::bootstrap_delay`]). The authority publishes only
//! while it reaches a majority of its current table's view (when
//! [`Config::refuse_minority_writes`]; it need not be in that view itself: a node that
//! joined a one-node table with an older start time takes over), and not while any member
//! is frozen.
//!
//! **Operations.** The node computes the key's partition and sends `Op` to the primary of
//! its current table with its epoch, or executes locally when it is the primary. The
//! primary checks, in one critical section with the store operation, that it is the synced
//! primary at exactly that epoch and (for writes) that it is in a majority; otherwise it
//! answers `NotOwner { epoch }` (never forwarding again), `Syncing`, or for a write
//! `QuorumLost` (also for a partition still syncing: a write there would not be accepted
//! after the sync either while the node is cut off). The forwarding node
//! refreshes its table from the answering node (or pushes its newer one there) and retries
//! a bounded number of times ([`ClusterError::Retry`]).
//!
//! **Batches.** [`Cluster::batch`] (a RESP pipeline's run of single-key commands) groups
//! its operations by primary, executes the local ones, sends one `Batch` per remote
//! primary at once, and retries refused ones (not-owner, syncing, deferred, not
//! delivered) in later rounds, still in their order. Refusals are per partition and hit
//! every later operation of that partition in the same message, so operations on one key
//! never overtake each other.
//!
//! **Writes.** The primary applies the write to its store (which gives it a version
//! `(epoch, seq)`), replicates it to every backup of the partition that is an alive
//! member, and acknowledges only after every backup applied it (a backup that forwarded
//! the write itself applies it from the primary's reply, before acknowledging it). A
//! backup applies only at the primary's epoch and only for partitions it backs up there
//! (a backup behind gets the primary's table pushed and the write again). A replication
//! failure after the local apply is reported as [`Error::Timeout`]: the write may or may
//! not persist.
//!
//! **Hand-off.** A node that installs a table in which it replicates a partition it did
//! not replicate before marks it pending and fetches it from every alive replica of the
//! previous tables (its own and the sender's) and of the new table; a source that is itself
//! pending names its own sources, which are fetched too. A source answering a fetch first
//! installs the fetcher's table (so it stops acting as primary under the same lock) and
//! then snapshots, so no write it acknowledged is missed. Pages merge by version. Only
//! when every alive source was fetched is the partition synced and served; the fetcher
//! then sends `Release` to its sources, and a source that no longer replicates the
//! partition drops it once every new replica released it. A failed primary's first
//! backup is primary in the next table (rendezvous order) and already holds every
//! acknowledged write; new backups fetch from it at once.
//!
//! **Leave, freeze, readiness.** [`Cluster::leave`] announces `leaving`; the authority
//! publishes a table without the node, whose partitions are fetched and released by their
//! new replicas; `leave` returns when nothing awaits release, or early when, for a
//! stabilisation window, every other member of the table is seen leaving too (the whole
//! cluster stops; nobody could take over). [`Cluster::set_frozen`]
//! announces `frozen`, which pauses new tables (and so migrations) cluster-wide.
//! [`Cluster::ready`] says every partition this node replicates is synced.
//!
//! **Single flight.** `get_or_load` runs at the primary: a miss registers the caller as
//! the leader or as a waiter in the same critical section as the read, the leader runs
//! the bucket's loader (registered on every node with [`Cluster::set_loader`]), stores the
//! value (unless the key was set meanwhile), replicates it, and answers every waiter.
//!
//! # What it is not
//!
//! Not a consensus system: membership is SWIM's, the authority is the oldest member, and
//! two authorities that cannot see each other may publish the same epoch (nodes then keep
//! their table and the next epoch settles it). A starting node must hear of the cluster
//! within [`ClusterConfig::bootstrap_delay`], or it publishes a one-node table of its own
//! (two such lineages do not merge their data). While a partition moves, its new primary
//! answers `Syncing` until the transfer completes (writes to that partition pause
//! briefly; they are not forwarded to the old owner; a primary cut off from the majority
//! answers writes `QuorumLost` instead). A node that missed an epoch
//! refetches every partition it replicates rather than trust its copy. `mset` is atomic
//! per request (at most [`ClusterConfig::page_bytes`] of one primary's pairs), not
//! across requests. A partition's copy on a node that is no longer its
//! replica is kept until released (or evicted by the byte budget).

mod metrics;
mod state;
mod wire;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use nodosum::{
    AppSender, Application, Incoming, Metadata, Node, NodeId, Request, RequestError, SendError,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::metrics::Metrics;
use self::state::{Held, LoadKey, LoadResult, LoadStep, PublishedTable, Section, State};
use self::wire::{CarriedWrites, Msg, Op, OpReply, Refusal, Reply, WBytes, WStr, WireWrite};
use crate::clock::Timestamp;
use crate::config::{Config, ConfigProblem};
use crate::error::Error;
use crate::ldouble::LongDouble;
use crate::placement::{DEFAULT_WEIGHT, Member};
use crate::routing::{Role, RoutingTable, ViewStabilizer, authority};
use crate::slot::Partition;
use crate::store::{
    BucketId, BucketOptions, ExpireCondition, KeyStamp, Renamed, SetOptions, Store, Ttl, Write,
};

/// The nodosum application name of the protocol.
pub const APP_NAME: &str = "mycel/v1";

/// The bucket every cluster has unless configured otherwise.
pub const CLUSTER_DEFAULT_BUCKET: &str = "default";

/// A loader's future: the value for a missing key, or `None` (nothing is stored).
pub type LoadFuture = Pin<Box<dyn Future<Output = Option<Bytes>> + Send>>;

/// A per-bucket loader for [`Cluster::get_or_load`]; register the same on every node.
pub type Loader = Arc<dyn Fn(Bytes) -> LoadFuture + Send + Sync>;

/// The cluster layer's configuration. Every node must use the same partitioning,
/// replication factor and buckets.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Placement, consistency and the local store.
    pub mycel: Config,
    /// Buckets and their options. Default: one bucket, [`CLUSTER_DEFAULT_BUCKET`].
    pub buckets: Vec<(String, BucketOptions)>,
    /// This node's placement weight. Default [`DEFAULT_WEIGHT`].
    pub weight: u32,
    /// How long one operation may take in all, retries included. Default 5 s.
    pub op_timeout: Duration,
    /// How long one request to another node may take (forward, replicate, table).
    /// Default 2 s.
    pub request_timeout: Duration,
    /// How long a fetch page may take. Default 10 s.
    pub fetch_timeout: Duration,
    /// How long a loader may run. Default 10 s.
    pub load_timeout: Duration,
    /// How often the authority re-sends its table to everyone. Default 2 s.
    pub table_resend_interval: Duration,
    /// Period of the background step (membership, tables, transfers, expiry). Default
    /// 50 ms.
    pub tick_interval: Duration,
    /// Largest page of a partition transfer, a replication batch or one partition's keys
    /// in a `SCAN` step, in bytes. Default 1 MiB.
    pub page_bytes: usize,
    /// The nodosum message size limit (`limits.max_message_size`) this node runs with.
    /// Default 4 MiB, nodosum's default.
    pub max_message_size: usize,
    /// Not-owner answers an operation tolerates before failing with
    /// [`ClusterError::Retry`]. Default 8.
    pub max_not_owner_retries: u32,
    /// How long a node that sees no other member waits after starting before it
    /// publishes a table of its own (a one-node cluster), so that a node joining an
    /// existing cluster learns of it first. Default 5 s.
    pub bootstrap_delay: Duration,
    /// Bandwidth cap for partition transfers into this node, in bytes per second, shared
    /// by all sources; `None` is unbounded. Default 64 MiB/s, so a rebalance does not
    /// starve client traffic.
    pub max_fetch_bytes_per_sec: Option<u64>,
    /// Requests from other nodes handled at once; further requests wait unread, so QUIC
    /// flow control slows their senders. Default 4096.
    pub max_concurrent_requests: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        let mut mycel = Config::default();
        // One value must fit in one replication message under nodosum's 4 MiB default.
        mycel.store.max_value_len = 1024 * 1024;
        Self {
            mycel,
            buckets: vec![(CLUSTER_DEFAULT_BUCKET.to_owned(), BucketOptions::default())],
            weight: DEFAULT_WEIGHT,
            op_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(2),
            fetch_timeout: Duration::from_secs(10),
            load_timeout: Duration::from_secs(10),
            table_resend_interval: Duration::from_secs(2),
            tick_interval: Duration::from_millis(50),
            page_bytes: 1024 * 1024,
            max_message_size: 4 * 1024 * 1024,
            max_not_owner_retries: 8,
            bootstrap_delay: Duration::from_secs(5),
            max_fetch_bytes_per_sec: Some(64 * 1024 * 1024),
            max_concurrent_requests: 4096,
        }
    }
}

impl ClusterConfig {
    /// Checks every rule, the core [`Config`]'s included; returns every problem.
    pub fn validate(&self) -> Result<(), Vec<ConfigProblem>> {
        let mut problems = self.mycel.validate().err().unwrap_or_default();
        let mut bad = |field, problem: String| problems.push(ConfigProblem { field, problem });
        let s = &self.mycel.store;
        let biggest = s
            .max_value_len
            .max(
                self.buckets
                    .iter()
                    .filter_map(|(_, o)| o.max_value_len)
                    .max()
                    .unwrap_or(0),
            )
            .saturating_add(s.max_key_len)
            .saturating_add(self.page_bytes)
            .saturating_add(4096);
        if biggest > self.max_message_size {
            bad(
                "store.max_value_len",
                format!(
                    "largest value + store.max_key_len + page_bytes + 4096 = {biggest} exceeds max_message_size ({})",
                    self.max_message_size
                ),
            );
        }
        if self.page_bytes == 0 {
            bad("page_bytes", "must be at least 1".into());
        }
        if self.buckets.is_empty() {
            bad("buckets", "at least one bucket is needed".into());
        }
        if self.weight == 0 {
            bad("weight", "must be at least 1".into());
        }
        if self.request_timeout > self.op_timeout {
            bad(
                "request_timeout",
                format!(
                    "{:?} must not exceed op_timeout ({:?})",
                    self.request_timeout, self.op_timeout
                ),
            );
        }
        if self.max_concurrent_requests == 0 {
            bad("max_concurrent_requests", "must be at least 1".into());
        }
        if self.tick_interval.is_zero() {
            bad("tick_interval", "must not be zero".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A core error: [`Error::QuorumLost`], [`Error::Timeout`] (the write may or may not
    /// persist), [`Error::ValueTooLarge`], [`Error::BucketUnknown`], ...
    #[error(transparent)]
    Mycel(#[from] Error),
    /// No routing table yet: the cluster is forming. Nothing changed; retry.
    #[error("no routing table yet; the cluster is forming")]
    NoTable,
    /// The partition is being transferred to its new replica. Nothing changed; retry.
    #[error("partition {partition} is still being transferred; retry")]
    Syncing {
        /// The partition.
        partition: Partition,
    },
    /// Ownership kept moving: the operation gave up after `attempts` not-owner answers.
    /// Nothing changed; retry.
    #[error("gave up after {attempts} not-owner answers (last epoch {epoch}); retry")]
    Retry {
        /// Not-owner answers received.
        attempts: u32,
        /// The last epoch named.
        epoch: u64,
    },
    /// The primary could not be reached before the operation's deadline. A read changed
    /// nothing; a write was not delivered.
    #[error("primary {node} unreachable")]
    Unreachable {
        /// The primary.
        node: NodeId,
    },
    /// The primary has no loader for the bucket.
    #[error("no loader registered for bucket {bucket:?}")]
    NoLoader {
        /// The bucket.
        bucket: String,
    },
    /// A node answered something this node does not understand.
    #[error("unexpected answer from {node}")]
    Protocol {
        /// The node.
        node: NodeId,
    },
    /// The configuration has problems; nothing was started.
    #[error("invalid configuration: {}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidConfig {
        /// Every problem.
        problems: Vec<ConfigProblem>,
    },
    /// The nodosum node refused (registering the application, publishing metadata).
    #[error(transparent)]
    Node(#[from] nodosum::Error),
    /// [`Cluster::leave`] timed out before a routing table without this node was in use
    /// and every partition handed off was released by its new replicas (they are still
    /// served from here until the node shuts down).
    #[error(
        "leave incomplete: the cluster had not taken this node's partitions over \
         ({awaiting} handed off but not yet released)"
    )]
    LeaveIncomplete {
        /// Partitions still awaiting release.
        awaiting: usize,
    },
    /// A member runs an older version that does not know the operation (a rolling
    /// upgrade is under way). Nothing changed.
    #[error("member {node} runs an older version without {operation}; upgrade it first")]
    OlderMember {
        /// The member.
        node: NodeId,
        /// The operation.
        operation: &'static str,
    },
}

/// What [`Cluster::set`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetResult {
    /// Whether the value was written (false: an NX/XX condition was not met).
    pub applied: bool,
    /// The previous value, if [`SetOptions::get`] was set and the key existed.
    pub previous: Option<Bytes>,
}

/// One single-key operation of a batch ([`Cluster::batch`], `Mycel::batch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// The value of `key` ([`BatchReply::Value`]).
    Get {
        /// The key.
        key: Bytes,
    },
    /// Whether `key` exists ([`BatchReply::Bool`]).
    Exists {
        /// The key.
        key: Bytes,
    },
    /// `key`'s time to live ([`BatchReply::Ttl`]).
    Ttl {
        /// The key.
        key: Bytes,
    },
    /// Redis `SET` ([`BatchReply::Set`]).
    Set {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
        /// Expiry, condition, `GET`.
        options: SetOptions,
    },
    /// Deletes `key`; whether it existed ([`BatchReply::Bool`]).
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Expire `after` from now (zero deletes); whether the key exists
    /// ([`BatchReply::Bool`]).
    Expire {
        /// The key.
        key: Bytes,
        /// From now.
        after: Duration,
        /// When it applies (`NX`, `XX`, `GT`, `LT`).
        condition: ExpireCondition,
    },
    /// Removes the expiry; whether there was one ([`BatchReply::Bool`]).
    Persist {
        /// The key.
        key: Bytes,
    },
    /// Adds `delta` to the integer in `key`; the new value ([`BatchReply::Int`]).
    IncrBy {
        /// The key.
        key: Bytes,
        /// The increment.
        delta: i64,
    },
    /// `key`'s [`KeyStamp`] at its primary, what Redis `WATCH` remembers
    /// ([`BatchReply::Stamp`]).
    Stamp {
        /// The key.
        key: Bytes,
    },
    /// Whether `key`'s stamp is still `stamp` ([`BatchReply::Bool`]). In a transaction,
    /// one that does not hold stops it: no operation after it runs (each answers
    /// [`Error::WatchedKeyChanged`]), which is Redis `EXEC` after `WATCH` when the checks
    /// come first.
    Unchanged {
        /// The key.
        key: Bytes,
        /// Its stamp when it was watched.
        stamp: KeyStamp,
    },
}

/// The result of one [`BatchOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchReply {
    /// `Get`.
    Value(Option<Bytes>),
    /// `Exists`, `Delete`, `Expire`, `Persist`.
    Bool(bool),
    /// `Ttl`.
    Ttl(Ttl),
    /// `Set`.
    Set(SetResult),
    /// `IncrBy`.
    Int(i64),
    /// `Stamp`.
    Stamp(KeyStamp),
}

impl BatchOp {
    /// The operation's key.
    pub fn key(&self) -> &Bytes {
        match self {
            Self::Get { key }
            | Self::Exists { key }
            | Self::Ttl { key }
            | Self::Set { key, .. }
            | Self::Delete { key }
            | Self::Expire { key, .. }
            | Self::Persist { key }
            | Self::IncrBy { key, .. }
            | Self::Stamp { key }
            | Self::Unchanged { key, .. } => key,
        }
    }

    /// Whether the operation may change the store.
    fn is_write(&self) -> bool {
        !matches!(
            self,
            Self::Get { .. }
                | Self::Exists { .. }
                | Self::Ttl { .. }
                | Self::Stamp { .. }
                | Self::Unchanged { .. }
        )
    }

    /// Runs the operation on `store` at `epoch`, with the single-operation methods'
    /// semantics: a standalone node's store, and a lone member's
    /// ([`Inner::lone_batch`]).
    pub(crate) fn apply(
        self,
        store: &mut Store,
        bucket: BucketId,
        now: Timestamp,
        epoch: u64,
    ) -> Result<BatchReply, Error> {
        Ok(match self {
            Self::Get { key } => BatchReply::Value(store.get(bucket, &key, now)),
            Self::Exists { key } => BatchReply::Bool(store.exists(bucket, &key, now)),
            Self::Ttl { key } => BatchReply::Ttl(store.ttl(bucket, &key, now)),
            Self::Set {
                key,
                value,
                options,
            } => {
                let outcome = store.set(bucket, key, value, options, now, epoch)?;
                BatchReply::Set(SetResult {
                    applied: outcome.write.is_some(),
                    previous: outcome.previous,
                })
            }
            Self::Delete { key } => {
                BatchReply::Bool(store.delete(bucket, key, now, epoch)?.is_some())
            }
            Self::Expire {
                key,
                after,
                condition,
            } => BatchReply::Bool(
                store
                    .expire(
                        bucket,
                        key,
                        now.saturating_add(after),
                        condition,
                        now,
                        epoch,
                    )?
                    .is_some(),
            ),
            Self::Persist { key } => {
                BatchReply::Bool(store.persist(bucket, key, now, epoch)?.is_some())
            }
            Self::IncrBy { key, delta } => {
                BatchReply::Int(store.incr_by(bucket, key, delta, now, epoch)?.0)
            }
            Self::Stamp { key } => BatchReply::Stamp(store.stamp(bucket, &key, now, epoch)),
            Self::Unchanged { key, stamp } => {
                BatchReply::Bool(store.unchanged(bucket, &key, &stamp, now, epoch))
            }
        })
    }

    fn into_op(self, bucket: WStr) -> Op {
        match self {
            Self::Get { key } => Op::Get {
                bucket,
                key: WBytes(key),
            },
            Self::Exists { key } => Op::Exists {
                bucket,
                key: WBytes(key),
            },
            Self::Ttl { key } => Op::Ttl {
                bucket,
                key: WBytes(key),
            },
            Self::Set {
                key,
                value,
                options,
            } => Op::Set {
                bucket,
                key: WBytes(key),
                value: WBytes(value),
                expiry: options.expiry.into(),
                condition: options.condition.into(),
                get: options.get,
            },
            Self::Delete { key } => Op::Delete {
                bucket,
                key: WBytes(key),
            },
            // The unconditional form as it always traveled, so older nodes understand it.
            Self::Expire {
                key,
                after,
                condition: ExpireCondition::Always,
            } => Op::Expire {
                bucket,
                key: WBytes(key),
                after_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
            },
            Self::Expire {
                key,
                after,
                condition,
            } => Op::ExpireIf {
                bucket,
                key: WBytes(key),
                after_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
                condition: condition.into(),
            },
            Self::Persist { key } => Op::Persist {
                bucket,
                key: WBytes(key),
            },
            Self::IncrBy { key, delta } => Op::IncrBy {
                bucket,
                key: WBytes(key),
                delta,
            },
            Self::Stamp { key } => Op::Stamp {
                bucket,
                key: WBytes(key),
            },
            Self::Unchanged { key, stamp } => Op::Unchanged {
                bucket,
                key: WBytes(key),
                stamp,
            },
        }
    }
}

/// The batch reply for what the primary answered to `op`, or `None` if the kinds do not
/// match.
fn batch_reply(op: &Op, reply: OpReply) -> Option<BatchReply> {
    Some(match (op, reply) {
        (Op::Get { .. }, OpReply::Value(v)) => BatchReply::Value(v.map(|b| b.0)),
        (
            Op::Exists { .. }
            | Op::Delete { .. }
            | Op::Expire { .. }
            | Op::ExpireIf { .. }
            | Op::Persist { .. }
            | Op::Unchanged { .. },
            OpReply::Bool(b),
        ) => BatchReply::Bool(b),
        (Op::Stamp { .. }, OpReply::Stamp(s)) => BatchReply::Stamp(s),
        (Op::Ttl { .. }, OpReply::Ttl(t)) => BatchReply::Ttl(t.into()),
        (Op::Set { .. }, OpReply::Set { applied, previous }) => BatchReply::Set(SetResult {
            applied,
            previous: previous.map(|b| b.0),
        }),
        (Op::IncrBy { .. }, OpReply::Int(v)) => BatchReply::Int(v),
        _ => return None,
    })
}

/// How many partitions one member holds in a routing table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The member.
    pub node: NodeId,
    /// Partitions it is primary of.
    pub primaries: usize,
    /// Partitions it backs up.
    pub backups: usize,
}

/// A member's Mycel gossip metadata, decoded (see [`decode_metadata`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberMetadata {
    /// Start of the member's run, ms since the Unix epoch (the oldest is the authority).
    pub started_at_ms: u64,
    /// Placement weight.
    pub weight: u32,
    /// Its partition count (members with another count are ignored).
    pub partitions: u16,
    /// Its replication factor (members with another are ignored).
    pub replication_factor: u8,
    /// It is handing its partitions off before it leaves.
    pub leaving: bool,
    /// It asks for no new tables (maintenance).
    pub frozen: bool,
}

/// Decodes a member's gossip metadata as Mycel announces it; `None` if it is not Mycel
/// metadata of a version this node speaks.
pub fn decode_metadata(bytes: &[u8]) -> Option<MemberMetadata> {
    wire::MemberMeta::decode(bytes).map(|m| MemberMetadata {
        started_at_ms: m.started_at,
        weight: m.weight,
        partitions: m.partitions,
        replication_factor: m.replication_factor,
        leaving: m.leaving,
        frozen: m.frozen,
    })
}

/// A snapshot of this node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// Epoch of the installed table (0: none).
    pub epoch: u64,
    /// The table's members.
    pub members: Vec<NodeId>,
    /// Active Mycel members this node sees, itself included.
    pub alive: Vec<NodeId>,
    /// Partitions this node is primary of.
    pub primaries: usize,
    /// Partitions this node replicates (primary or backup).
    pub replicas: usize,
    /// Of those, how many are synced.
    pub synced: usize,
    /// Partitions handed off but not yet released.
    pub awaiting_release: usize,
    /// Whether this node is in the installed table and every partition it replicates is
    /// synced.
    pub ready: bool,
    /// Whether maintenance mode holds: this node or another member is frozen (as last
    /// seen), so no new tables are published ([`Cluster::set_frozen`]).
    pub frozen: bool,
}

/// A Mycel node in a cluster. See the [module docs](self).
///
/// Dropping it stops the cluster tasks and the node at once (peers see a failure); use
/// [`leave`](Self::leave) then [`shutdown`](Self::shutdown) to hand off first.
pub struct Cluster {
    inner: Arc<Inner>,
    node: Option<Arc<Node>>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.inner.me)
            .finish_non_exhaustive()
    }
}

struct Inner {
    me: NodeId,
    config: ClusterConfig,
    node: Weak<Node>,
    sender: AppSender,
    state: Mutex<State>,
    /// The installed table without the state lock (see [`PublishedTable`]).
    table: PublishedTable,
    shell: Mutex<Shell>,
    loaders: RwLock<HashMap<String, Loader>>,
    metrics: Metrics,
    started_at: u64,
    started: Instant,
    leaving: AtomicBool,
    /// Alive members other than this one that are not leaving and have a weight, as of the
    /// last background step (`usize::MAX` before the first): who could take partitions
    /// over.
    successors: AtomicUsize,
    frozen: AtomicBool,
    /// Whether another member was frozen at the last background step.
    others_frozen: AtomicBool,
    /// The [`wire::MemberMeta::features`] other members announced, as of the last
    /// background step (a node from before a feature would refuse its messages).
    features: RwLock<HashMap<NodeId, u32>>,
    table_changed: tokio::sync::Notify,
    refreshing: Mutex<HashSet<NodeId>>,
    /// When the transfer bandwidth is next free (see [`pace`]).
    fetch_free_at: Mutex<Instant>,
    /// Replication waiting to be sent, per backup and epoch (see [`Inner::replicate`]).
    outbox: Mutex<HashMap<(NodeId, u64), Vec<Queued>>>,
    /// Forwarded operations waiting to be sent, per primary and epoch (see
    /// [`Inner::enqueue_ops`]).
    forwards: Mutex<HashMap<(NodeId, u64), Vec<QueuedOps>>>,
}

/// One caller's operations for one primary, waiting in [`Inner::forwards`]; they travel
/// together, in order, in one message, and `done` gets that message's outcome.
struct QueuedOps {
    ops: Vec<Op>,
    size: usize,
    timeout: Duration,
    done: tokio::sync::oneshot::Sender<Delivery>,
}

/// The outcome of sending queued operations to a primary.
#[derive(Debug, Clone)]
enum Delivery {
    /// One result per operation, in order.
    Results(Vec<Result<OpReply, Refusal>>),
    /// The primary refused the whole message (or its answer made no sense).
    Refused(Refusal),
    /// The primary could not decode the message (a `Carry` to a node from before it) and
    /// applied none of it: safe to send again in another form. Otherwise as `BadRequest`.
    Undecodable,
    /// Not delivered: safe to send again.
    NotDelivered,
    /// Delivered (maybe) and unanswered.
    Lost,
}

impl Delivery {
    /// The outcome of the `i`th operation (a write when `write`).
    fn attempt(&self, i: usize, write: bool) -> Result<OpReply, Attempt> {
        match self {
            Self::Results(rs) => match rs.get(i) {
                Some(Ok(r)) => Ok(r.clone()),
                Some(Err(r)) => Err(Attempt::Refused(r.clone())),
                None => Err(Attempt::Refused(Refusal::BadRequest)),
            },
            Self::Refused(r) => Err(Attempt::Refused(r.clone())),
            Self::Undecodable => Err(Attempt::Refused(Refusal::BadRequest)),
            Self::NotDelivered => Err(Attempt::Unreachable),
            Self::Lost if !write => Err(Attempt::Unreachable),
            Self::Lost => Err(Attempt::Indeterminate),
        }
    }
}

/// Operations executed under one hold of the state lock in a batch, so that a long batch
/// lets other tasks in between.
const LOCK_RUN: usize = 64;

/// Keys a `FLUSHDB` deletes per partition and message (their lengths plus 4 bytes each):
/// small, as a primary holds its lock for up to [`LOCK_RUN`] such pages at a time.
const FLUSH_PAGE_BYTES: usize = 16 * 1024;

/// How [`Inner::at_primary_batch`] executes a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchMode {
    /// In runs of [`LOCK_RUN`] operations, every one executed (this node's callers).
    Runs,
    /// In runs, and once the results exceed [`ClusterConfig::page_bytes`] the rest are
    /// deferred (a peer's message, whose reply must fit in one).
    Bounded,
    /// All under one hold of the lock, none deferred (a transaction).
    Atomic,
}

/// An operation of a batch waiting to be retried, and why (for the error if time runs
/// out).
#[derive(Debug, Clone)]
enum Retryable {
    NotOwner { epoch: u64 },
    Syncing { partition: Partition },
    Unreachable { node: NodeId },
    Deferred,
    Unsent,
}

/// One operation's writes for one backup, waiting in [`Inner::outbox`]; `done` gets the
/// backup's answer to the message that carried them.
struct Queued {
    writes: Vec<WireWrite>,
    size: usize,
    done: tokio::sync::oneshot::Sender<Result<(), Refusal>>,
}

/// Writes [`Inner::replicate`] leaves to the sender of a [`Msg::Carry`], a backup of
/// their partitions, to take in the reply instead of a `Replicate` of their own.
struct Carrier {
    /// The sender.
    to: NodeId,
    /// Bytes the reply may still grow by.
    budget: usize,
    /// The writes taken, each with its index in the `writes` given to `replicate`.
    taken: Vec<(usize, WireWrite)>,
}

/// State only the background step touches.
struct Shell {
    stabilizer: ViewStabilizer,
    stable: Option<Vec<Member>>,
    last_push: Option<Instant>,
    last_table_req: Option<Instant>,
    rng: SplitMix,
    /// Peers already reported as incompatible (logged once each).
    incompatible: HashSet<NodeId>,
}

/// How one attempt at the primary ended.
enum Attempt {
    Refused(Refusal),
    /// Not delivered: safe to retry.
    Unreachable,
    /// Delivered (maybe) and unanswered: a write may or may not have happened.
    Indeterminate,
}

/// One operation's outcome in a round of [`Inner::route_rounds`]: its index, who answered
/// (an index into the round's remote primaries; None: this node) and how.
type RoundAttempt = (usize, Option<usize>, Result<OpReply, Attempt>);

/// A request that got no usable answer.
enum CallError {
    Transport(RequestError),
    Decode,
}

impl Cluster {
    /// Joins the Mycel protocol on `node`: validates `config`, registers the `mycel/v1`
    /// application, publishes this node's metadata and starts the background tasks. Join
    /// the node to its seeds before (or right after) this call.
    pub async fn start(node: Node, config: ClusterConfig) -> Result<Self, ClusterError> {
        config
            .validate()
            .map_err(|problems| ClusterError::InvalidConfig { problems })?;
        let mut store = Store::new(config.mycel.store.clone());
        for (name, options) in &config.buckets {
            store.create_bucket(name, options.clone())?;
        }
        let app = node.application(APP_NAME)?;
        let me = node.id().clone();
        let started_at = wall_clock().as_millis();
        let node = Arc::new(node);
        let metrics = node.with_registry(Metrics::register);
        let state = State::new(me.clone(), store);
        let inner = Arc::new(Inner {
            me,
            sender: app.sender(),
            node: Arc::downgrade(&node),
            table: state.published(),
            state: Mutex::new(state),
            shell: Mutex::new(Shell {
                stabilizer: ViewStabilizer::new(config.mycel.stabilization_window),
                stable: None,
                last_push: None,
                last_table_req: None,
                incompatible: HashSet::new(),
                rng: SplitMix(started_at ^ 0x9e37_79b9_7f4a_7c15),
            }),
            config,
            loaders: RwLock::new(HashMap::new()),
            metrics,
            started_at,
            started: Instant::now(),
            leaving: AtomicBool::new(false),
            successors: AtomicUsize::new(usize::MAX),
            frozen: AtomicBool::new(false),
            others_frozen: AtomicBool::new(false),
            features: RwLock::new(HashMap::new()),
            table_changed: tokio::sync::Notify::new(),
            refreshing: Mutex::new(HashSet::new()),
            fetch_free_at: Mutex::new(Instant::now()),
            outbox: Mutex::new(HashMap::new()),
            forwards: Mutex::new(HashMap::new()),
        });
        inner.publish_meta(&node)?;
        let tasks = vec![
            tokio::spawn(receive_loop(
                Arc::downgrade(&inner),
                app,
                inner.config.max_concurrent_requests,
            )),
            tokio::spawn(tick_loop(Arc::downgrade(&inner))),
        ];
        tracing::info!(id = %inner.me, "mycel cluster layer started");
        Ok(Self {
            inner,
            node: Some(node),
            tasks,
        })
    }

    /// The node underneath.
    pub fn node(&self) -> &Node {
        self.node
            .as_ref()
            .expect("invariant: present until shutdown")
    }

    /// This node's ID.
    pub fn id(&self) -> &NodeId {
        &self.inner.me
    }

    /// Registers the loader of `bucket` for [`get_or_load`](Self::get_or_load) on this
    /// node (it runs here when this node is the key's primary).
    pub fn set_loader(&self, bucket: &str, loader: Loader) {
        self.inner
            .loaders
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(bucket.to_owned(), loader);
    }

    /// The value of `key`, read at its primary.
    pub async fn get(
        &self,
        bucket: &str,
        key: impl Into<Bytes>,
    ) -> Result<Option<Bytes>, ClusterError> {
        let key = key.into();
        let op = Op::Get {
            bucket: bucket.into(),
            key: WBytes(key.clone()),
        };
        match self.inner.route(&key, op, false).await? {
            OpReply::Value(v) => Ok(v.map(|b| b.0)),
            _ => Err(self.inner.protocol()),
        }
    }

    /// Sets `key` as Redis `SET` with `options`; acknowledged once every alive backup
    /// applied it.
    pub async fn set(
        &self,
        bucket: &str,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        options: SetOptions,
    ) -> Result<SetResult, ClusterError> {
        let key = key.into();
        let op = Op::Set {
            bucket: bucket.into(),
            key: WBytes(key.clone()),
            value: WBytes(value.into()),
            expiry: options.expiry.into(),
            condition: options.condition.into(),
            get: options.get,
        };
        match self.inner.route(&key, op, true).await? {
            OpReply::Set { applied, previous } => Ok(SetResult {
                applied,
                previous: previous.map(|b| b.0),
            }),
            _ => Err(self.inner.protocol()),
        }
    }

    /// Deletes `key`; whether it existed.
    pub async fn delete(&self, bucket: &str, key: impl Into<Bytes>) -> Result<bool, ClusterError> {
        let key = key.into();
        let op = Op::Delete {
            bucket: bucket.into(),
            key: WBytes(key.clone()),
        };
        self.inner.route_bool(&key, op, true).await
    }

    /// Whether `key` exists.
    pub async fn exists(&self, bucket: &str, key: impl Into<Bytes>) -> Result<bool, ClusterError> {
        let key = key.into();
        let op = Op::Exists {
            bucket: bucket.into(),
            key: WBytes(key.clone()),
        };
        self.inner.route_bool(&key, op, false).await
    }

    /// Makes `key` expire `after` from now at the primary; whether the key exists.
    pub async fn expire(
        &self,
        bucket: &str,
        key: impl Into<Bytes>,
        after: Duration,
    ) -> Result<bool, ClusterError> {
        self.expire_if(bucket, key, after, ExpireCondition::Always)
            .await
    }

    /// [`expire`](Self::expire) if `condition` holds at the primary; whether the key
    /// exists and the condition held.
    pub async fn expire_if(
        &self,
        bucket: &str,
        key: impl Into<Bytes>,
        after: Duration,
        condition: ExpireCondition,
    ) -> Result<bool, ClusterError> {
        let key = key.into();
        let op = BatchOp::Expire {
            key: key.clone(),
            after,
            condition,
        }
        .into_op(bucket.into());
        self.inner.route_bool(&key, op, true).await
    }

    /// Removes `key`'s expiry; whether it had one.
    pub async fn persist(&self, bucket: &str, key: impl Into<Bytes>) -> Result<bool, ClusterError> {
        let key = key.into();
        let op = Op::Persist {
            bucket: bucket.into(),
            key: WBytes(key.clone()),
        };
        self.inner.route_bool(&key, op, true).await
    }

    /// `key`'s time to live at its primary.
    pub async fn ttl(&self, bucket: &str, key: impl Into<Bytes>) -> Result<Ttl, ClusterError> {
        let key = key.into();
        let op = Op::Ttl {
            bucket: bucket.into(),
            key: WBytes(key.clone()),
        };
        match self.inner.route(&key, op, false).await? {
            OpReply::Ttl(t) => Ok(t.into()),
            _ => Err(self.inner.protocol()),
        }
    }

    /// Adds `delta` to the integer in `key`, atomically at the primary; the new value.
    pub async fn incr_by(
        &self,
        bucket: &str,
        key: impl Into<Bytes>,
        delta: i64,
    ) -> Result<i64, ClusterError> {
        let key = key.into();
        let op = Op::IncrBy {
            bucket: bucket.into(),
            key: WBytes(key.clone()),
            delta,
        };
        match self.inner.route(&key, op, true).await? {
            OpReply::Int(v) => Ok(v),
            _ => Err(self.inner.protocol()),
        }
    }

    /// Adds `increment` to the number in `key` as Redis's `INCRBYFLOAT` does (a missing
    /// key counts as 0), atomically at the primary; the new value's text.
    pub async fn incr_by_float(
        &self,
        bucket: &str,
        key: impl Into<Bytes>,
        increment: LongDouble,
    ) -> Result<Bytes, ClusterError> {
        let key = key.into();
        let op = Op::IncrByFloat {
            bucket: bucket.into(),
            key: WBytes(key.clone()),
            increment: increment.to_parts(),
        };
        match self.inner.route(&key, op, true).await? {
            OpReply::Value(Some(v)) => Ok(v.0),
            _ => Err(self.inner.protocol()),
        }
    }

    /// Appends `value` to `key`'s value (creating it), atomically at the primary; the
    /// new length.
    pub async fn append(
        &self,
        bucket: &str,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<usize, ClusterError> {
        let key = key.into();
        let op = Op::Append {
            bucket: bucket.into(),
            key: WBytes(key.clone()),
            value: WBytes(value.into()),
        };
        match self.inner.route(&key, op, true).await? {
            OpReply::Int(n) => usize::try_from(n).map_err(|_| self.inner.protocol()),
            _ => Err(self.inner.protocol()),
        }
    }

    /// Writes `value` into `key`'s value from byte `offset` on (Redis `SETRANGE`; see
    /// `Store::set_range`), atomically at the primary; the new length.
    pub async fn set_range(
        &self,
        bucket: &str,
        key: impl Into<Bytes>,
        offset: u64,
        value: impl Into<Bytes>,
    ) -> Result<usize, ClusterError> {
        let key = key.into();
        let op = Op::SetRange {
            bucket: bucket.into(),
            key: WBytes(key.clone()),
            offset,
            value: WBytes(value.into()),
        };
        match self.inner.route(&key, op, true).await? {
            OpReply::Int(n) => usize::try_from(n).map_err(|_| self.inner.protocol()),
            _ => Err(self.inner.protocol()),
        }
    }

    /// Sets every pair if none of the keys exists (Redis `MSETNX`), atomically at their
    /// primary: all keys must be of one partition ([`Error::CrossSlot`] otherwise).
    /// Whether they were set.
    pub async fn mset_nx(
        &self,
        bucket: &str,
        pairs: Vec<(Bytes, Bytes)>,
    ) -> Result<bool, ClusterError> {
        let Some(first) = pairs.first().map(|(k, _)| k.clone()) else {
            return Ok(true);
        };
        self.inner
            .one_partition(pairs.iter().map(|(k, _)| &k[..]))?;
        let op = Op::MSetNx {
            bucket: bucket.into(),
            entries: pairs
                .into_iter()
                .map(|(k, v)| (WBytes(k), WBytes(v)))
                .collect(),
        };
        match self.inner.route(&first, op, true).await? {
            OpReply::Bool(done) => Ok(done),
            _ => Err(self.inner.protocol()),
        }
    }

    /// Copies `from`'s value and expiry to `to`, a different key (`replace` false: only
    /// if `to` does not exist), atomically at their primary: both keys must be of one
    /// partition ([`Error::CrossSlot`] otherwise). Whether it was copied.
    pub async fn copy(
        &self,
        bucket: &str,
        from: impl Into<Bytes>,
        to: impl Into<Bytes>,
        replace: bool,
    ) -> Result<bool, ClusterError> {
        let op = |bucket, key, to| Op::Copy {
            bucket,
            key,
            to,
            replace,
        };
        match self.route_pair(bucket, from.into(), to.into(), op).await? {
            OpReply::Bool(done) => Ok(done),
            _ => Err(self.inner.protocol()),
        }
    }

    /// Moves `from`'s value and expiry to `to` (`replace` false: only if `to` does not
    /// exist), atomically at their primary: both keys must be of one partition
    /// ([`Error::CrossSlot`] otherwise; a hash tag keeps keys together).
    pub async fn rename(
        &self,
        bucket: &str,
        from: impl Into<Bytes>,
        to: impl Into<Bytes>,
        replace: bool,
    ) -> Result<Renamed, ClusterError> {
        let op = |bucket, key, to| Op::Rename {
            bucket,
            key,
            to,
            replace,
        };
        match self.route_pair(bucket, from.into(), to.into(), op).await? {
            OpReply::Int(1) => Ok(Renamed::Done),
            OpReply::Int(0) => Ok(Renamed::TargetExists),
            OpReply::Int(-1) => Ok(Renamed::Missing),
            _ => Err(self.inner.protocol()),
        }
    }

    /// Runs the write `op` makes of `bucket`, `from` and `to` at their primary: the two
    /// keys must be of one partition ([`Error::CrossSlot`] otherwise).
    async fn route_pair(
        &self,
        bucket: &str,
        from: Bytes,
        to: Bytes,
        op: impl FnOnce(WStr, WBytes, WBytes) -> Op,
    ) -> Result<OpReply, ClusterError> {
        self.inner.one_partition([&from[..], &to[..]])?;
        let op = op(bucket.into(), WBytes(from.clone()), WBytes(to));
        self.inner.route(&from, op, true).await
    }

    /// The values of `keys`, in order: one request per primary.
    pub async fn mget(
        &self,
        bucket: &str,
        keys: Vec<Bytes>,
    ) -> Result<Vec<Option<Bytes>>, ClusterError> {
        let mut out = vec![None; keys.len()];
        for group in self.inner.group_by_primary(&keys).await? {
            let op = Op::MGet {
                bucket: bucket.into(),
                keys: group.iter().map(|&i| WBytes(keys[i].clone())).collect(),
            };
            match self.inner.route(&keys[group[0]], op, false).await {
                Ok(OpReply::Values(values)) if values.len() == group.len() => {
                    for (&i, v) in group.iter().zip(values) {
                        out[i] = v.map(|b| b.0);
                    }
                }
                Ok(_) => return Err(self.inner.protocol()),
                // The group's keys no longer share a primary: one by one.
                Err(ClusterError::Retry { .. }) => {
                    for &i in &group {
                        out[i] = self.get(bucket, keys[i].clone()).await?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Sets every `(key, value)`: each primary's pairs go in requests of at most
    /// [`ClusterConfig::page_bytes`], each atomic at its primary; nothing is atomic
    /// across requests (a refused or failed one leaves the others applied). Check sizes
    /// first if a partial write matters ([`crate::Mycel::mset`] does).
    pub async fn mset(
        &self,
        bucket: &str,
        entries: Vec<(Bytes, Bytes)>,
    ) -> Result<(), ClusterError> {
        let keys: Vec<Bytes> = entries.iter().map(|(k, _)| k.clone()).collect();
        for group in self.inner.group_by_primary(&keys).await? {
            for chunk in chunk_by_size(
                group.iter().copied(),
                |&i| entries[i].0.len() + entries[i].1.len() + 16,
                self.inner.config.page_bytes,
            ) {
                let op = Op::MSet {
                    bucket: bucket.into(),
                    entries: chunk
                        .iter()
                        .map(|&i| (WBytes(entries[i].0.clone()), WBytes(entries[i].1.clone())))
                        .collect(),
                };
                match self.inner.route(&keys[chunk[0]], op, true).await {
                    Ok(_) => {}
                    Err(ClusterError::Retry { .. }) => {
                        for &i in &chunk {
                            self.set(
                                bucket,
                                entries[i].0.clone(),
                                entries[i].1.clone(),
                                SetOptions::default(),
                            )
                            .await?;
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Runs `ops` on `bucket`, each at its key's primary, and answers each in order.
    ///
    /// The operations for one primary travel in one message (together with what other
    /// callers forward to it at the same moment) and are applied there in order, so
    /// operations on the same key take effect in the order given; operations on different
    /// primaries run concurrently. Each operation succeeds or fails on its own, with the
    /// errors of the single-operation methods (a write whose replication failed answers
    /// [`Error::Timeout`]). Operations refused as not-owner or syncing are retried, still
    /// in order, within [`ClusterConfig::op_timeout`]. A node that is its table's lone
    /// member runs them on its store directly, without messages or rounds.
    pub async fn batch(
        &self,
        bucket: &str,
        ops: Vec<BatchOp>,
    ) -> Vec<Result<BatchReply, ClusterError>> {
        let name = WStr::from(bucket);
        let mut out = Vec::new();
        let ops = self.inner.lone_batch(&name, ops, &mut out);
        if ops.is_empty() {
            return out;
        }
        let ops: Vec<Op> = ops.into_iter().map(|o| o.into_op(name.clone())).collect();
        let results = if let [op] = &ops[..] {
            // A lone operation (a pipeline of one) takes the single-operation path.
            let key = op.key().cloned().unwrap_or_default();
            vec![self.inner.route(&key, op.clone(), op.is_write()).await]
        } else {
            self.inner.route_batch(&ops).await
        };
        out.extend(ops.iter().zip(results).map(|(op, r)| {
            r.and_then(|reply| batch_reply(op, reply).ok_or_else(|| self.inner.protocol()))
        }));
        out
    }

    /// Runs `ops` on `bucket` as one transaction (Redis `MULTI` ... `EXEC`): their
    /// partition's primary applies them in order under one hold of its state lock, so no
    /// other operation comes between them, and replicates their writes before it
    /// answers. Each operation then succeeds or fails on its own, as in
    /// [`batch`](Self::batch).
    ///
    /// Every key must be in one partition ([`Error::CrossSlot`] otherwise, nothing run),
    /// and the primary must know transactions ([`ClusterError::OlderMember`]). While the
    /// partition moves the transaction is retried whole, within
    /// [`ClusterConfig::op_timeout`].
    pub async fn transaction(
        &self,
        bucket: &str,
        ops: Vec<BatchOp>,
    ) -> Result<Vec<Result<BatchReply, ClusterError>>, ClusterError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        self.inner
            .one_partition(ops.iter().map(|op| op.key().as_ref()))?;
        let name = WStr::from(bucket);
        let ops: Vec<Op> = ops.into_iter().map(|o| o.into_op(name.clone())).collect();
        let results = self.inner.route_atomic(&ops).await?;
        Ok(ops
            .iter()
            .zip(results)
            .map(|(op, r)| {
                r.and_then(|reply| batch_reply(op, reply).ok_or_else(|| self.inner.protocol()))
            })
            .collect())
    }

    /// Live keys in the cluster: the sum over members of the keys in the partitions each
    /// is primary of (a scan on every member; approximate while partitions move).
    pub async fn len(&self) -> Result<u64, ClusterError> {
        self.inner.count().await
    }

    /// A page of the live keys of `bucket` in `partitions` (those beyond the partition
    /// count hold nothing) that match `pattern` (a [`crate::glob`] pattern; all when
    /// `None`), from scan order `from` in the first partition on (see
    /// [`Store::keys`](crate::Store::keys)), in partition order.
    ///
    /// Each partition is read at its primary; the partitions of one primary travel in one
    /// message (paged like [`batch`](Self::batch)). A partition with more than
    /// [`ClusterConfig::page_bytes`] of keys ends the page: its position is returned
    /// (partition, scan order), and the partitions after it are left for the next call.
    /// `None` when every partition was read whole.
    pub async fn keys(
        &self,
        bucket: &str,
        partitions: Range<u16>,
        from: u64,
        pattern: Option<Bytes>,
    ) -> Result<(Vec<Bytes>, Option<(u16, u64)>), ClusterError> {
        let count = self.inner.config.mycel.store.partitioning.count();
        let bucket = WStr::from(bucket);
        let max_bytes = u32::try_from(self.inner.config.page_bytes).unwrap_or(u32::MAX);
        let range = partitions.start..partitions.end.min(count);
        let ops: Vec<Op> = range
            .clone()
            .map(|partition| Op::Scan {
                bucket: bucket.clone(),
                partition,
                pattern: pattern.clone().map(WBytes),
                from: if partition == range.start { from } else { 0 },
                max_bytes,
            })
            .collect();
        let mut keys = Vec::new();
        if ops.is_empty() {
            return Ok((keys, None));
        }
        for (partition, result) in range.zip(self.inner.route_batch(&ops).await) {
            match result? {
                OpReply::Keys { keys: page, next } => {
                    keys.extend(page.into_iter().map(|k| k.0));
                    if let Some(next) = next {
                        return Ok((keys, Some((partition, next))));
                    }
                }
                _ => return Err(self.inner.protocol()),
            }
        }
        Ok((keys, None))
    }

    /// Deletes every key of every bucket (Redis `FLUSHDB`); returns how many. Each
    /// partition's primary deletes its keys a page at a time (16 KiB of keys per
    /// partition, the partitions of one primary in one message), every delete
    /// replicated to the backups as any other write. Each partition is gone through once,
    /// in its scan order (the same on every node), so a flush ends even while keys are
    /// being written.
    ///
    /// Not atomic: a write that runs concurrently may outlive it, and a reader may see
    /// some partitions emptied before others, as with any run of deletes. Every member
    /// must know the operation ([`ClusterError::OlderMember`] otherwise, with nothing
    /// deleted).
    pub async fn flush(&self) -> Result<u64, ClusterError> {
        let others: Vec<NodeId> = {
            let st = self.inner.lock();
            st.alive
                .iter()
                .filter(|n| **n != self.inner.me)
                .cloned()
                .collect()
        };
        let older = lacking(
            &self
                .inner
                .features
                .read()
                .unwrap_or_else(PoisonError::into_inner),
            &others,
            wire::FEATURE_CLEAR,
        );
        if let Some(node) = older {
            return Err(ClusterError::OlderMember {
                node,
                operation: "FLUSHDB",
            });
        }
        let count = self.inner.config.mycel.store.partitioning.count();
        let max_bytes =
            u32::try_from(self.inner.config.page_bytes.min(FLUSH_PAGE_BYTES)).unwrap_or(u32::MAX);
        let mut deleted = 0;
        for (name, _) in &self.inner.config.buckets {
            let bucket = WStr::from(name.as_str());
            // Each partition and the scan order to go on from.
            let mut pending: Vec<(u16, u64)> = (0..count).map(|p| (p, 0)).collect();
            while !pending.is_empty() {
                let ops: Vec<Op> = pending
                    .iter()
                    .map(|&(partition, from)| Op::Clear {
                        bucket: bucket.clone(),
                        partition,
                        from,
                        max_bytes,
                    })
                    .collect();
                let results = self.inner.route_batch(&ops).await;
                let mut more = Vec::new();
                for (&(partition, _), result) in pending.iter().zip(results) {
                    match result? {
                        OpReply::Cleared { deleted: n, next } => {
                            deleted += n;
                            more.extend(next.map(|from| (partition, from)));
                        }
                        _ => return Err(self.inner.protocol()),
                    }
                }
                pending = more;
            }
        }
        Ok(deleted)
    }

    /// Whether [`len`](Self::len) is 0.
    pub async fn is_empty(&self) -> Result<bool, ClusterError> {
        Ok(self.len().await? == 0)
    }

    /// The value of `key`; on a miss the bucket's loader runs once at the primary for all
    /// concurrent callers cluster-wide, and its value is stored and replicated.
    pub async fn get_or_load(
        &self,
        bucket: &str,
        key: impl Into<Bytes>,
    ) -> Result<Option<Bytes>, ClusterError> {
        let key = key.into();
        let op = Op::GetOrLoad {
            bucket: bucket.into(),
            key: WBytes(key.clone()),
        };
        match self.inner.route(&key, op, false).await? {
            OpReply::Value(v) => Ok(v.map(|b| b.0)),
            _ => Err(self.inner.protocol()),
        }
    }

    /// Hands this node's partitions off: announces `leaving`, waits until a table without
    /// this node is installed and every partition it held was released by its new
    /// replicas, at most `timeout`. Shut the node down afterwards.
    pub async fn leave(&self, timeout: Duration) -> Result<(), ClusterError> {
        self.inner.leaving.store(true, Ordering::Release);
        self.inner.publish_meta(self.node())?;
        let deadline = Instant::now() + timeout;
        // Since when nobody could take over (see below).
        let mut alone_since: Option<Instant> = None;
        loop {
            {
                let st = self.inner.lock();
                let others = st.alive.iter().any(|n| *n != self.inner.me);
                if !others {
                    tracing::warn!("leaving with no other member to hand off to");
                    return Ok(());
                }
                // The others leave too (the whole cluster stops): nobody can take the
                // partitions over, so waiting would only delay the stop. Only when that
                // holds for a stabilisation window, and every other member of the table
                // is seen (one missing may be restarting, and would take over).
                let nobody = self.inner.successors.load(Ordering::Acquire) == 0
                    && st.table().is_some_and(|t| {
                        t.members()
                            .iter()
                            .all(|m| m.id == self.inner.me || st.alive.contains(&m.id))
                    });
                let now = Instant::now();
                match (nobody, alone_since) {
                    (false, _) => alone_since = None,
                    (true, None) => alone_since = Some(now),
                    (true, Some(since))
                        if now.duration_since(since)
                            >= self.inner.config.mycel.stabilization_window =>
                    {
                        tracing::warn!(
                            "leaving while every other member leaves too: nobody to hand off to"
                        );
                        return Ok(());
                    }
                    (true, Some(_)) => {}
                }
                if let Some(t) = st.table()
                    && !t.contains(&self.inner.me)
                    && st.awaiting.is_empty()
                {
                    tracing::info!(epoch = t.epoch(), "hand-off complete");
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    return Err(ClusterError::LeaveIncomplete {
                        awaiting: st.awaiting.len(),
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Maintenance mode: while any member is frozen, no new routing tables are published
    /// (no partitions move). Announced through gossip metadata.
    pub fn set_frozen(&self, frozen: bool) -> Result<(), ClusterError> {
        self.inner.frozen.store(frozen, Ordering::Release);
        self.inner.publish_meta(self.node())
    }

    /// Whether a table with this node is installed and every partition this node
    /// replicates is synced (a joining or leaving node is not ready).
    pub fn ready(&self) -> bool {
        self.status().ready
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> ClusterStatus {
        self.inner.status()
    }

    /// Every member of this node's routing table with the partitions it holds there (in
    /// member order; empty without a table).
    pub fn placement(&self) -> Vec<Placement> {
        let st = self.inner.lock();
        let Some(table) = st.table() else {
            return Vec::new();
        };
        let mut out: Vec<Placement> = table
            .members()
            .iter()
            .map(|m| Placement {
                node: m.id.clone(),
                primaries: 0,
                backups: 0,
            })
            .collect();
        for p in table.partitioning().iter() {
            for (i, m) in table.replicas(p).enumerate() {
                if let Some(entry) = out.iter_mut().find(|e| e.node == m.id) {
                    if i == 0 {
                        entry.primaries += 1;
                    } else {
                        entry.backups += 1;
                    }
                }
            }
        }
        out
    }

    /// This node's local store: what it holds as primary and as backup (and copies not
    /// yet released), its byte budget, evictions and expiries.
    pub fn local_stats(&self) -> crate::handle::Stats {
        crate::handle::store_stats(&self.inner.lock().store)
    }

    /// Stops the cluster tasks, then shuts the node down gracefully (see
    /// [`Node::shutdown`]). Call [`leave`](Self::leave) first to hand off.
    pub async fn shutdown(mut self, drain: Duration) {
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        let Some(mut node) = self.node.take() else {
            return;
        };
        // Request handlers hold the node only for a moment; wait for them briefly.
        let deadline = Instant::now() + drain;
        loop {
            match Arc::try_unwrap(node) {
                Ok(n) => {
                    n.shutdown(drain).await;
                    return;
                }
                Err(shared) if Instant::now() < deadline => {
                    node = shared;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(_) => {
                    tracing::warn!("node still in use; stopped without a graceful leave");
                    return;
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn shell(&self) -> MutexGuard<'_, Shell> {
        self.shell.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn protocol(&self) -> ClusterError {
        ClusterError::Protocol {
            node: self.me.clone(),
        }
    }

    fn meta(&self) -> wire::MemberMeta {
        wire::MemberMeta {
            started_at: self.started_at,
            weight: self.config.weight,
            partitions: self.config.mycel.store.partitioning.count(),
            replication_factor: self.config.mycel.replication_factor,
            leaving: self.leaving.load(Ordering::Acquire),
            frozen: self.frozen.load(Ordering::Acquire),
            features: wire::FEATURE_CARRY
                | wire::FEATURE_CLEAR
                | wire::FEATURE_ATOMIC
                | wire::FEATURE_WATCH,
        }
    }

    fn publish_meta(&self, node: &Node) -> Result<(), ClusterError> {
        let metadata = Metadata::new(self.meta().encode()).map_err(|_| self.protocol())?;
        node.update_metadata(metadata)?;
        Ok(())
    }

    fn status(&self) -> ClusterStatus {
        let st = self.lock();
        let (primaries, replicas, synced) = st.replica_counts();
        let table = st.table();
        ClusterStatus {
            epoch: st.epoch(),
            members: table
                .map(|t| t.members().iter().map(|m| m.id.clone()).collect())
                .unwrap_or_default(),
            alive: st.alive.iter().cloned().collect(),
            primaries,
            replicas,
            synced,
            awaiting_release: st.awaiting.len(),
            // In the table, too: a joining node replicates nothing yet, which is not the
            // same as holding what it should.
            ready: table.is_some_and(|t| t.contains(&self.me)) && replicas == synced,
            frozen: self.frozen.load(Ordering::Acquire)
                || self.others_frozen.load(Ordering::Acquire),
        }
    }

    /// Installs a table offered by anyone; wakes operations waiting for one.
    fn install(&self, table: RoutingTable, previous: Option<&RoutingTable>) -> bool {
        let installed = {
            let mut st = self.lock();
            match st.install(table, previous) {
                Ok(installed) => installed,
                Err(e) => {
                    tracing::warn!(error = %e, "routing table refused");
                    false
                }
            }
        };
        if installed {
            self.table_changed.notify_waiters();
        }
        installed
    }

    async fn call(&self, to: &NodeId, msg: &Msg, timeout: Duration) -> Result<Reply, CallError> {
        let body = wire::encode(msg);
        let reply = self
            .sender
            .request(to, body, timeout)
            .await
            .map_err(CallError::Transport)?;
        wire::decode_shared::<Reply>(&reply).map_err(|e| {
            tracing::warn!(from = %to, error = %e, "undecodable reply");
            self.metrics.bad_messages.inc();
            CallError::Decode
        })
    }

    /// Asks `from` for its table and installs it; one request per node at a time.
    async fn refresh(&self, from: &NodeId) {
        if *from == self.me {
            return;
        }
        {
            let mut r = self
                .refreshing
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !r.insert(from.clone()) {
                return;
            }
        }
        if let Ok(Reply::Table {
            table: Some(table),
            previous,
        }) = self
            .call(from, &Msg::TableReq, self.config.request_timeout)
            .await
        {
            self.install(table, previous.as_ref());
        }
        self.refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(from);
    }

    fn spawn_refresh(self: &Arc<Self>, from: NodeId) {
        let inner = Arc::clone(self);
        tokio::spawn(async move { inner.refresh(&from).await });
    }

    /// Sends this node's table to `to`.
    async fn push_table(&self, to: &NodeId) {
        let msg = {
            let st = self.lock();
            let Some(table) = st.table() else {
                return;
            };
            Msg::TablePush {
                table: (**table).clone(),
                previous: st.previous.as_deref().cloned(),
            }
        };
        let _ = self.call(to, &msg, self.config.request_timeout).await;
    }

    /// The installed routing table, waiting for one until `deadline`.
    async fn wait_for_table(&self, deadline: Instant) -> Result<Arc<RoutingTable>, ClusterError> {
        loop {
            let notified = self.table_changed.notified();
            if let Some(t) = self.table.get() {
                return Ok(t);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClusterError::NoTable);
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            let _ = tokio::time::timeout(wait, notified).await;
        }
    }

    async fn route_bool(
        self: &Arc<Self>,
        key: &Bytes,
        op: Op,
        write: bool,
    ) -> Result<bool, ClusterError> {
        match self.route(key, op, write).await? {
            OpReply::Bool(b) => Ok(b),
            _ => Err(self.protocol()),
        }
    }

    /// Runs `op` (about `key`'s partition) at the primary: locally, or forwarded with
    /// this node's epoch, refreshing tables and retrying on not-owner answers.
    async fn route(
        self: &Arc<Self>,
        key: &Bytes,
        op: Op,
        write: bool,
    ) -> Result<OpReply, ClusterError> {
        let partition = self.config.mycel.store.partitioning.partition_of(key);
        let op = &op;
        self.route_with(partition, write, |primary: NodeId, epoch: u64| async move {
            if primary == self.me {
                self.at_primary(op.clone(), None)
                    .await
                    .map_err(Attempt::Refused)
            } else {
                self.metrics.forwarded.inc();
                self.forward(&primary, epoch, op.clone(), write).await
            }
        })
        .await
    }

    /// Makes `attempt` at `partition`'s primary (given its ID and the table's epoch)
    /// until it answers, within [`ClusterConfig::op_timeout`]: a not-owner answer
    /// refreshes the table (at most [`ClusterConfig::max_not_owner_retries`] times), a
    /// syncing partition or an unreachable primary is waited for, and an outcome that
    /// cannot be known ([`Attempt::Indeterminate`]) is [`Error::Timeout`]. A `write`
    /// is refused at once by a member outside a majority.
    async fn route_with<T, A: Future<Output = Result<T, Attempt>>>(
        self: &Arc<Self>,
        partition: Partition,
        write: bool,
        mut attempt: impl FnMut(NodeId, u64) -> A,
    ) -> Result<T, ClusterError> {
        let deadline = Instant::now() + self.config.op_timeout;
        let mut not_owner = 0u32;
        let mut last: ClusterError;
        loop {
            let table = self.wait_for_table(deadline).await?;
            let primary = table
                .primary(partition)
                .map(|m| m.id.clone())
                .expect("invariant: a valid table has a primary for every partition");
            // A member outside a majority refuses at once, whoever the primary is: here
            // for a remote primary (which checks again), in `State::execute` for itself;
            // a node not in the table (joining, leaving) leaves the check to the primary.
            if write
                && primary != self.me
                && self.config.mycel.refuse_minority_writes
                && table.contains(&self.me)
            {
                self.lock()
                    .check_quorum()
                    .map_err(|r| self.refusal(r, &self.me))?;
            }
            let backoff = match attempt(primary.clone(), table.epoch()).await {
                Ok(reply) => return Ok(reply),
                Err(Attempt::Refused(Refusal::NotOwner { epoch })) => {
                    not_owner += 1;
                    last = ClusterError::Retry {
                        attempts: not_owner,
                        epoch,
                    };
                    if not_owner > self.config.max_not_owner_retries {
                        break;
                    }
                    if primary != self.me {
                        if epoch > table.epoch() {
                            self.refresh(&primary).await;
                        } else if epoch < table.epoch() {
                            self.push_table(&primary).await;
                        }
                    }
                    Duration::from_millis(10 * u64::from(not_owner))
                }
                Err(Attempt::Refused(Refusal::Syncing { partition })) => {
                    last = ClusterError::Syncing { partition };
                    Duration::from_millis(20)
                }
                Err(Attempt::Refused(Refusal::Deferred)) => {
                    last = ClusterError::Unreachable {
                        node: primary.clone(),
                    };
                    Duration::ZERO
                }
                Err(Attempt::Refused(r)) => return Err(self.refusal(r, &primary)),
                Err(Attempt::Unreachable) => {
                    last = ClusterError::Unreachable {
                        node: primary.clone(),
                    };
                    Duration::from_millis(50)
                }
                Err(Attempt::Indeterminate) => return Err(Error::Timeout.into()),
            };
            if Instant::now() + backoff >= deadline {
                break;
            }
            if !backoff.is_zero() {
                tokio::time::sleep(backoff).await;
            }
        }
        Err(last)
    }

    /// Runs `ops` (at least one, all on one partition) at their primary as one
    /// ([`BatchMode::Atomic`], [`Msg::Atomic`]), retried whole while the partition moves.
    /// A refusal to retry is the whole transaction's: its operations run under one hold
    /// of the primary's lock, where they share the partition's ownership and sync state.
    async fn route_atomic(
        self: &Arc<Self>,
        ops: &[Op],
    ) -> Result<Vec<Result<OpReply, ClusterError>>, ClusterError> {
        let partition = self.partition(&ops[0]);
        let write = ops.iter().any(Op::is_write);
        let needs = ops
            .iter()
            .fold(wire::FEATURE_ATOMIC, |needs, op| needs | op.needs());
        let answered = self
            .route_with(partition, write, |primary: NodeId, epoch: u64| async move {
                let results = if primary == self.me {
                    self.at_primary_batch(ops.iter(), None, BatchMode::Atomic, None)
                        .await
                        .0
                } else {
                    match self.announced(&primary) {
                        // Its metadata not read yet (it just joined): wait for it.
                        None => return Err(Attempt::Unreachable),
                        Some(f) if f & needs != needs => {
                            let operation = if f & wire::FEATURE_ATOMIC == 0 {
                                "MULTI/EXEC"
                            } else {
                                "WATCH"
                            };
                            return Ok(Err(ClusterError::OlderMember {
                                node: primary,
                                operation,
                            }));
                        }
                        Some(_) => {}
                    }
                    self.metrics
                        .forwarded
                        .inc_by(u64::try_from(ops.len()).unwrap_or(u64::MAX));
                    let msg = Msg::Atomic {
                        epoch,
                        ops: ops.to_vec(),
                    };
                    match self
                        .send_ops(&primary, &msg, ops.len(), self.config.request_timeout)
                        .await
                    {
                        Delivery::Results(results) => results,
                        other => {
                            return Err(other
                                .attempt(0, write)
                                .err()
                                .unwrap_or(Attempt::Refused(Refusal::BadRequest)));
                        }
                    }
                };
                match results.first() {
                    Some(Err(
                        r
                        @ (Refusal::NotOwner { .. } | Refusal::Syncing { .. } | Refusal::Deferred),
                    )) => Err(Attempt::Refused(r.clone())),
                    _ => Ok(Ok((primary, results))),
                }
            })
            .await?;
        let (primary, results) = answered?;
        Ok(results
            .into_iter()
            .map(|r| r.map_err(|e| self.refusal(e, &primary)))
            .collect())
    }

    async fn forward(
        self: &Arc<Self>,
        primary: &NodeId,
        epoch: u64,
        op: Op,
        write: bool,
    ) -> Result<OpReply, Attempt> {
        if !op.batchable() {
            let timeout = if matches!(op, Op::GetOrLoad { .. }) {
                self.config.request_timeout + self.config.load_timeout
            } else {
                self.config.request_timeout
            };
            let delivery = self
                .send_ops(primary, &Msg::Op { epoch, op }, 1, timeout)
                .await;
            return delivery.attempt(0, write);
        }
        let rx = self.enqueue_ops(primary, epoch, vec![op]);
        let delivery = rx.await.unwrap_or(Delivery::Lost);
        delivery.attempt(0, write)
    }

    /// Queues `ops` (in order, for one message) to `primary` at `epoch`; the receiver
    /// gets the message's outcome.
    ///
    /// Concurrent callers forwarding to the same primary share messages: the first
    /// spawns a flush ([`Inner::flush_ops`]) that runs after the tasks already scheduled
    /// and sends everything queued by then, in pages of at most
    /// [`ClusterConfig::page_bytes`] made of whole entries (a caller's operations are
    /// never split, so they reach the primary in one message and are applied in order).
    fn enqueue_ops(
        self: &Arc<Self>,
        primary: &NodeId,
        epoch: u64,
        ops: Vec<Op>,
    ) -> tokio::sync::oneshot::Receiver<Delivery> {
        let (done, answer) = tokio::sync::oneshot::channel();
        let size = ops.iter().map(Op::size).sum();
        let key = (primary.clone(), epoch);
        let first = {
            let mut queues = self.forwards.lock().unwrap_or_else(PoisonError::into_inner);
            let queue = queues.entry(key.clone()).or_default();
            queue.push(QueuedOps {
                ops,
                size,
                timeout: self.config.request_timeout,
                done,
            });
            queue.len() == 1
        };
        if first {
            let inner = Arc::clone(self);
            tokio::spawn(async move { inner.flush_ops(key).await });
        }
        answer
    }

    /// Sends what callers queued for `key` (primary, epoch) and hands each its results.
    async fn flush_ops(self: Arc<Self>, key: (NodeId, u64)) {
        // Let the callers already scheduled queue their operations behind these.
        tokio::task::yield_now().await;
        let queued = self
            .forwards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key)
            .unwrap_or_default();
        let (primary, epoch) = key;
        let pages = pages_for(queued, self.features_of(&primary), self.config.page_bytes);
        for page in pages {
            let total: usize = page.iter().map(|q| q.ops.len()).sum();
            let timeout = page
                .iter()
                .map(|q| q.timeout)
                .max()
                .unwrap_or(self.config.request_timeout);
            let mut ops = Vec::with_capacity(total);
            let mut waiters = Vec::with_capacity(page.len());
            for q in page {
                waiters.push((q.ops.len(), q.done));
                ops.extend(q.ops);
            }
            // Writes to a partition this node backs up come back in the reply (`Carry`,
            // to a primary that serves it); otherwise a lone operation travels as `Op`,
            // the batch as `Batch`.
            if total > 1 {
                self.metrics.forward_batches.inc();
            }
            let msg = if self.backs_up_a_write(epoch, &ops) && self.serves_carry(&primary) {
                Msg::Carry { epoch, ops }
            } else {
                plain_ops(epoch, ops)
            };
            let mut delivery = self.send_ops(&primary, &msg, total, timeout).await;
            if let Msg::Carry { epoch, ops } = msg
                && matches!(delivery, Delivery::Undecodable)
            {
                // The primary announced `Carry` but cannot decode it: it restarted into an
                // older version since its metadata was last read. It applied nothing of
                // the message, so the operations go again, as a `Batch`.
                tracing::info!(%primary, "primary refused Carry; sending a Batch instead");
                if let Some(features) = self
                    .features
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_mut(&primary)
                {
                    *features &= !wire::FEATURE_CARRY;
                }
                delivery = self
                    .send_ops(&primary, &plain_ops(epoch, ops), total, timeout)
                    .await;
            }
            match delivery {
                Delivery::Results(rs) => {
                    let mut rs = rs.into_iter();
                    for (n, done) in waiters {
                        let _ = done.send(Delivery::Results(rs.by_ref().take(n).collect()));
                    }
                }
                other => {
                    for (_, done) in waiters {
                        let _ = done.send(other.clone());
                    }
                }
            }
        }
    }

    /// The features `node` announced (see [`wire::MemberMeta::features`]), `None` while
    /// its metadata was not read.
    fn announced(&self, node: &NodeId) -> Option<u32> {
        self.features
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(node)
            .copied()
    }

    /// The features `node` announced; none when its metadata was not read.
    fn features_of(&self, node: &NodeId) -> u32 {
        self.announced(node).unwrap_or(0)
    }

    /// Whether `node` announced that it serves [`Msg::Carry`].
    fn serves_carry(&self, node: &NodeId) -> bool {
        self.features_of(node) & wire::FEATURE_CARRY != 0
    }

    /// Whether one of `ops` is a write to a partition this node backs up in its table at
    /// `epoch`: the primary can hand it the write in its reply ([`Msg::Carry`]).
    fn backs_up_a_write(&self, epoch: u64, ops: &[Op]) -> bool {
        let Some(table) = self.table.get().filter(|t| t.epoch() == epoch) else {
            return false;
        };
        let partitioning = table.partitioning();
        ops.iter().any(|op| {
            op.is_write()
                && matches!(
                    table.role(&self.me, op.partition(partitioning)),
                    Role::Backup { .. }
                )
        })
    }

    /// Sends `msg` (an `Op`, or a `Batch` or `Carry` of `count` operations) and
    /// classifies the outcome.
    async fn send_ops(
        &self,
        primary: &NodeId,
        msg: &Msg,
        count: usize,
        timeout: Duration,
    ) -> Delivery {
        match self.call(primary, msg, timeout).await {
            Ok(Reply::Op(r)) if count == 1 => Delivery::Results(vec![Ok(r)]),
            Ok(Reply::Batch(rs)) if rs.len() == count => Delivery::Results(rs),
            Ok(Reply::Carried {
                mut results,
                writes,
            }) if results.len() == count => {
                self.apply_carried(primary, &mut results, writes);
                Delivery::Results(results)
            }
            // A primary answers every `Carry` it decodes with `Carried`: a refusal of the
            // whole message means it could not decode it (and applied none of it).
            Ok(Reply::Err(Refusal::BadRequest)) if matches!(msg, Msg::Carry { .. }) => {
                Delivery::Undecodable
            }
            Ok(Reply::Err(r)) if count == 1 => Delivery::Results(vec![Err(r)]),
            Ok(Reply::Err(r)) => Delivery::Refused(r),
            Ok(_) | Err(CallError::Decode) => Delivery::Refused(Refusal::BadRequest),
            Err(CallError::Transport(RequestError::Send(SendError::MessageTooLarge {
                len,
                max,
            }))) => Delivery::Refused(Refusal::ValueTooLarge {
                len: u64::try_from(len).unwrap_or(u64::MAX),
                max: u64::try_from(max).unwrap_or(u64::MAX),
            }),
            Err(CallError::Transport(RequestError::Send(_))) => Delivery::NotDelivered,
            Err(CallError::Transport(_)) => Delivery::Lost,
        }
    }

    /// Applies the writes `primary` carried back for this node (a backup of their
    /// partitions), as a `Replicate` from it ([`State::apply_carried`]).
    fn apply_carried(
        &self,
        primary: &NodeId,
        results: &mut [Result<OpReply, Refusal>],
        carried: Vec<CarriedWrites>,
    ) {
        let refused = self.lock().apply_carried(results, carried, wall_clock());
        for r in refused {
            tracing::debug!(%primary, refusal = ?r, "carried writes not applied");
            self.metrics.replicate_failures.inc();
        }
    }

    fn refusal(&self, r: Refusal, node: &NodeId) -> ClusterError {
        let n = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        match r {
            Refusal::NotOwner { epoch } => ClusterError::Retry { attempts: 1, epoch },
            Refusal::Syncing { partition } => ClusterError::Syncing { partition },
            Refusal::QuorumLost => Error::QuorumLost.into(),
            Refusal::Timeout => Error::Timeout.into(),
            Refusal::ValueTooLarge { len, max } => Error::ValueTooLarge {
                len: n(len),
                max: n(max),
            }
            .into(),
            Refusal::KeyTooLarge { len, max } => Error::KeyTooLarge {
                len: n(len),
                max: n(max),
            }
            .into(),
            Refusal::BucketUnknown { name } => Error::BucketUnknown { name }.into(),
            Refusal::NotAnInteger => Error::NotAnInteger.into(),
            Refusal::Overflow => Error::Overflow.into(),
            Refusal::NotAFloat => Error::NotAFloat.into(),
            Refusal::NotFinite => Error::NotFinite.into(),
            Refusal::WatchFailed => Error::WatchedKeyChanged.into(),
            Refusal::NoLoader { bucket } => ClusterError::NoLoader { bucket },
            Refusal::Deferred => ClusterError::Unreachable { node: node.clone() },
            Refusal::Behind { .. } | Refusal::UnknownSession | Refusal::BadRequest => {
                ClusterError::Protocol { node: node.clone() }
            }
        }
    }

    /// Executes `op` as the primary (`epoch`: the forwarder's, None when local).
    async fn at_primary(self: &Arc<Self>, op: Op, epoch: Option<u64>) -> Result<OpReply, Refusal> {
        match op {
            Op::GetOrLoad { bucket, key } => self.load(bucket.to_string(), key.0, epoch).await,
            Op::Count => Ok(OpReply::Count(self.lock().count_primary(wall_clock()))),
            op => {
                let (reply, writes, table) = {
                    let mut st = self.lock();
                    let (reply, writes) = st.execute(
                        &op,
                        epoch,
                        self.config.mycel.refuse_minority_writes,
                        wall_clock(),
                    )?;
                    (reply, writes, st.table().cloned())
                };
                if let (false, Some(table)) = (writes.is_empty(), table) {
                    self.replicate(&table, &writes, None).await?;
                }
                Ok(reply)
            }
        }
    }

    /// Executes `ops` in order as the primary (`epoch`: the forwarder's, None when local),
    /// replicates their writes, and answers each.
    ///
    /// With `carry` (the sender of a [`Msg::Carry`]), the writes of partitions it backs
    /// up are not sent to it but returned, grouped by epoch, for the reply; they count
    /// towards the reply's bound.
    ///
    /// The state lock is taken once per [`LOCK_RUN`] operations, or once for all with
    /// [`BatchMode::Atomic`]. With [`BatchMode::Bounded`], once the results so far exceed
    /// [`ClusterConfig::page_bytes`] the rest are not executed but answered
    /// [`Refusal::Deferred`] (so the reply fits in a message; the sender sends them
    /// again, still in order). A write whose replication fails answers
    /// [`Refusal::Timeout`]; the others are unaffected. Once an operation is refused as
    /// not-owner or syncing, every later operation on the same partition gets the same
    /// answer without being executed: ownership may change while the lock is released
    /// between runs, and the sender retries refused operations in their order, so a later
    /// write to a key must not be applied before an earlier, refused one.
    async fn at_primary_batch<'o>(
        self: &Arc<Self>,
        ops: impl ExactSizeIterator<Item = &'o Op>,
        epoch: Option<u64>,
        mode: BatchMode,
        carry: Option<&NodeId>,
    ) -> (Vec<Result<OpReply, Refusal>>, Vec<CarriedWrites>) {
        let bound = mode == BatchMode::Bounded;
        let lock_run = if mode == BatchMode::Atomic {
            usize::MAX
        } else {
            LOCK_RUN
        };
        let now = wall_clock();
        let refuse = self.config.mycel.refuse_minority_writes;
        let mut results: Vec<Result<OpReply, Refusal>> = Vec::with_capacity(ops.len());
        let mut reply_bytes = 0usize;
        // Writes to replicate, grouped by the table they were made under, each with the
        // index of the operation that made it.
        let mut groups: Vec<(Arc<RoutingTable>, Vec<Write>, Vec<usize>)> = Vec::new();
        let mut held = Held::default();
        // A transaction's `Unchanged` did not hold: nothing after it runs.
        let mut watch_failed = false;
        let mut ops = ops;
        while ops.len() > 0 {
            let mut st = self.lock();
            let mut section = Section::new(refuse);
            let run = ops.len().min(lock_run);
            let mut writes = Vec::new();
            let mut wrote = Vec::new();
            for op in ops.by_ref().take(lock_run) {
                if bound && !results.is_empty() && reply_bytes > self.config.page_bytes {
                    results.push(Err(Refusal::Deferred));
                    continue;
                }
                if watch_failed {
                    results.push(Err(Refusal::WatchFailed));
                    continue;
                }
                if writes.capacity() == 0 && op.is_write() {
                    // Once for the run, not grown write by write (reads allocate nothing).
                    writes.reserve(run);
                    wrote.reserve(run);
                }
                let before = writes.len();
                let result = match op {
                    Op::GetOrLoad { .. } | Op::Count => Err(Refusal::BadRequest),
                    op => st.execute_held(op, epoch, &mut section, now, &mut held, &mut writes),
                };
                if let Ok(reply) = &result {
                    reply_bytes += reply.size();
                    wrote.extend(std::iter::repeat_n(results.len(), writes.len() - before));
                }
                // Refused (moved, say) counts as not holding: the sender learns why
                // from this answer, and retries the whole transaction if it may.
                watch_failed = mode == BatchMode::Atomic
                    && matches!(op, Op::Unchanged { .. })
                    && !matches!(result, Ok(OpReply::Bool(true)));
                results.push(result);
            }
            if writes.is_empty() {
                continue;
            }
            let Some(table) = st.table().cloned() else {
                continue;
            };
            drop(st);
            match groups.last_mut() {
                Some((t, ws, idx)) if t.epoch() == table.epoch() => {
                    ws.extend(writes);
                    idx.extend(wrote);
                }
                _ => groups.push((table, writes, wrote)),
            }
        }
        let mut carried = Vec::new();
        let mut budget = self.config.page_bytes.saturating_sub(reply_bytes);
        for (table, writes, wrote) in groups {
            let mut carrier = carry.map(|to| Carrier {
                to: to.clone(),
                budget,
                taken: Vec::new(),
            });
            if self
                .replicate(&table, &writes, carrier.as_mut())
                .await
                .is_err()
            {
                // Applied here, maybe not at every backup: the write may or may not
                // persist. Never a retryable refusal, or the sender would apply it twice.
                for &i in &wrote {
                    results[i] = Err(Refusal::Timeout);
                }
            }
            let Some(carrier) = carrier.filter(|c| !c.taken.is_empty()) else {
                continue;
            };
            budget = carrier.budget;
            let mut ops: Vec<u32> = carrier
                .taken
                .iter()
                .map(|&(w, _)| u32::try_from(wrote[w]).unwrap_or(u32::MAX))
                .collect();
            ops.dedup();
            self.metrics
                .carried_writes
                .inc_by(u64::try_from(carrier.taken.len()).unwrap_or(u64::MAX));
            carried.push(CarriedWrites {
                epoch: table.epoch(),
                writes: carrier.taken.into_iter().map(|(_, w)| w).collect(),
                ops,
            });
        }
        (results, carried)
    }

    /// [`Cluster::batch`] on the lone member of its table (a single node, or the first
    /// of a cluster before others join): the operations run here on the store, under the
    /// state lock held for a run of [`LOCK_RUN`] at a time, without becoming wire
    /// operations, and their writes go nowhere, since a lone member has no backups (see
    /// [`replicate`](Self::replicate)). Before each run, under its lock, what the general
    /// path would refuse is checked: the table has this node alone, the run's partitions
    /// are served here, the bucket exists, and for a write the quorum holds (with
    /// `refuse_minority_writes`; a table of one is its own majority, but the check is the
    /// general path's). Answers go to `out`; from the first run that fails a check on,
    /// the operations are returned, unexecuted and in order, for the general path (which
    /// answers or refuses them).
    fn lone_batch(
        &self,
        bucket: &WStr,
        ops: Vec<BatchOp>,
        out: &mut Vec<Result<BatchReply, ClusterError>>,
    ) -> Vec<BatchOp> {
        if self.table.members() != 1 {
            return ops;
        }
        let partitioning = self.config.mycel.store.partitioning;
        let refuse = self.config.mycel.refuse_minority_writes;
        let now = wall_clock();
        let mut ops = std::collections::VecDeque::from(ops);
        out.reserve(ops.len());
        while !ops.is_empty() {
            let run = ops.len().min(LOCK_RUN);
            let mut st = self.lock();
            let lone = st
                .table()
                .is_some_and(|t| t.members().len() == 1 && t.index_of(&self.me).is_some());
            let served = lone
                && ops.range(..run).all(|op| {
                    st.check_primary(partitioning.partition_of(op.key()), None)
                        .is_ok()
                });
            let writing = ops.range(..run).any(BatchOp::is_write);
            let bucket_id = match st.store.bucket(bucket) {
                Ok(b) if served && !(writing && refuse && st.check_quorum().is_err()) => b,
                _ => break,
            };
            let epoch = st.epoch();
            for op in ops.drain(..run) {
                let reply = op.apply(&mut st.store, bucket_id, now, epoch);
                out.push(reply.map_err(|e| self.refusal(Refusal::from_error(&e), &self.me)));
            }
        }
        ops.into()
    }

    /// [`Error::CrossSlot`] unless `keys` are all of one partition (an operation atomic
    /// at one primary).
    fn one_partition<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k [u8]>,
    ) -> Result<(), ClusterError> {
        match self.config.mycel.store.partitioning.common_partition(keys) {
            Some(_) => Ok(()),
            None => Err(Error::CrossSlot.into()),
        }
    }

    /// The partition whose primary executes `op` ([`Op::partition`]).
    fn partition(&self, op: &Op) -> Partition {
        op.partition(self.config.mycel.store.partitioning)
    }

    /// Runs `ops` each at its key's primary and answers each in order (see
    /// [`Cluster::batch`]).
    ///
    /// Each round groups the pending operations by primary under the current table,
    /// queues one message's worth per remote primary (at most
    /// [`ClusterConfig::page_bytes`], the rest waits for the next round), executes the
    /// local ones, and collects the answers. Operations refused as not-owner, syncing or
    /// deferred, or not delivered, stay pending in their original order for the next
    /// round; refusals of one partition hit every later operation of that partition in
    /// the same message too, so operations on one key never overtake each other. When
    /// this node is every key's primary, the operations run at once, and the rounds only
    /// take over the ones refused as retryable.
    async fn route_batch(self: &Arc<Self>, ops: &[Op]) -> Vec<Result<OpReply, ClusterError>> {
        let deadline = Instant::now() + self.config.op_timeout;
        // Every key's primary is this node (a pipeline of local keys, or a lone node's
        // batch that `lone_batch` handed on):
        // executed at once, without the rounds' bookkeeping. Only operations refused as
        // retryable (ownership moved meanwhile, partition syncing) go on to the rounds.
        let all_local = self.table.get().is_some_and(|table| {
            let me = table.index_of(&self.me);
            me.is_some()
                && ops
                    .iter()
                    .all(|op| table.primary_index(self.partition(op)) == me)
        });
        if all_local {
            let (results, _) = self
                .at_primary_batch(ops.iter(), None, BatchMode::Runs, None)
                .await;
            if !results
                .iter()
                .any(|r| r.as_ref().is_err_and(Refusal::is_retryable))
            {
                return results
                    .into_iter()
                    .map(|r| r.map_err(|e| self.refusal(e, &self.me)))
                    .collect();
            }
            return self.route_rounds(ops, deadline, Some(results)).await;
        }
        self.route_rounds(ops, deadline, None).await
    }

    /// The rounds of [`route_batch`](Self::route_batch), until `deadline`; `first`: this
    /// node's answers to every operation, executed as their primary, which stand for the
    /// first round.
    async fn route_rounds(
        self: &Arc<Self>,
        ops: &[Op],
        deadline: Instant,
        mut first: Option<Vec<Result<OpReply, Refusal>>>,
    ) -> Vec<Result<OpReply, ClusterError>> {
        let n = ops.len();
        let parts: Vec<Partition> = ops.iter().map(|op| self.partition(op)).collect();
        let mut out: Vec<Option<Result<OpReply, ClusterError>>> = (0..n).map(|_| None).collect();
        let mut last: Vec<Retryable> = vec![Retryable::Unsent; n];
        let mut not_owner = 0u32;
        loop {
            let mut pending: Vec<usize> = Vec::with_capacity(n);
            pending.extend((0..n).filter(|&i| out[i].is_none()));
            if pending.is_empty() {
                break;
            }
            let Ok(table) = self.wait_for_table(deadline).await else {
                for i in pending {
                    out[i] = Some(Err(ClusterError::NoTable));
                }
                break;
            };
            let (attempts, primaries) = match first.take() {
                Some(results) => {
                    let attempts = results
                        .into_iter()
                        .enumerate()
                        .map(|(i, r)| (i, None, r.map_err(Attempt::Refused)))
                        .collect();
                    (attempts, Vec::new())
                }
                None => {
                    self.route_round(ops, &parts, &pending, &table, &mut out)
                        .await
                }
            };
            let mut backoff = Duration::ZERO;
            let mut refresh: BTreeMap<NodeId, u64> = BTreeMap::new();
            let mut saw_not_owner = false;
            for (i, who, attempt) in attempts {
                let primary = who.map_or(&self.me, |j| &primaries[j]);
                let wait = match attempt {
                    Ok(reply) => {
                        out[i] = Some(Ok(reply));
                        continue;
                    }
                    Err(Attempt::Refused(Refusal::NotOwner { epoch })) => {
                        saw_not_owner = true;
                        last[i] = Retryable::NotOwner { epoch };
                        if who.is_some() {
                            refresh.insert(primary.clone(), epoch);
                        }
                        Duration::from_millis(10 * u64::from(not_owner + 1))
                    }
                    Err(Attempt::Refused(Refusal::Syncing { partition })) => {
                        last[i] = Retryable::Syncing { partition };
                        Duration::from_millis(20)
                    }
                    Err(Attempt::Refused(Refusal::Deferred)) => {
                        last[i] = Retryable::Deferred;
                        Duration::ZERO
                    }
                    Err(Attempt::Refused(r)) => {
                        out[i] = Some(Err(self.refusal(r, primary)));
                        continue;
                    }
                    Err(Attempt::Unreachable) => {
                        last[i] = Retryable::Unreachable {
                            node: primary.clone(),
                        };
                        Duration::from_millis(50)
                    }
                    Err(Attempt::Indeterminate) => {
                        out[i] = Some(Err(Error::Timeout.into()));
                        continue;
                    }
                };
                backoff = backoff.max(wait);
            }
            if saw_not_owner {
                not_owner += 1;
                if not_owner > self.config.max_not_owner_retries {
                    break;
                }
                for (primary, epoch) in refresh {
                    if epoch > table.epoch() {
                        self.refresh(&primary).await;
                    } else if epoch < table.epoch() {
                        self.push_table(&primary).await;
                    }
                }
            }
            if Instant::now() + backoff >= deadline {
                break;
            }
            if !backoff.is_zero() {
                tokio::time::sleep(backoff).await;
            }
        }
        out.into_iter()
            .zip(last)
            .map(|(o, last)| {
                o.unwrap_or_else(|| {
                    Err(match last {
                        Retryable::NotOwner { epoch } => ClusterError::Retry {
                            attempts: not_owner,
                            epoch,
                        },
                        Retryable::Syncing { partition } => ClusterError::Syncing { partition },
                        Retryable::Unreachable { node } => ClusterError::Unreachable { node },
                        Retryable::Deferred | Retryable::Unsent => ClusterError::Unreachable {
                            node: self.me.clone(),
                        },
                    })
                })
            })
            .collect()
    }

    /// One round of [`route_rounds`](Self::route_rounds) for the `pending` operations
    /// under `table`: groups them by primary, sends one message's worth to each remote
    /// primary, executes the local ones, and collects each operation's outcome with who
    /// answered it (an index into the returned primaries; None: this node). Writes
    /// refused here for lost quorum are answered in `out`.
    async fn route_round(
        self: &Arc<Self>,
        ops: &[Op],
        parts: &[Partition],
        pending: &[usize],
        table: &RoutingTable,
        out: &mut [Option<Result<OpReply, ClusterError>>],
    ) -> (Vec<RoundAttempt>, Vec<NodeId>) {
        // A member of the table cut off from the majority refuses writes: local ones
        // in `State::execute`, remote ones here (checked at the first one).
        let check_quorum = self.config.mycel.refuse_minority_writes && table.contains(&self.me);
        let mut quorum: Option<Option<Refusal>> = None;
        let mut local: Vec<usize> = Vec::new();
        // Primaries by their index in the table's members (no IDs compared per key).
        let me = table.index_of(&self.me);
        let mut remote: Vec<(usize, Vec<usize>, usize)> = Vec::new();
        let mut held: HashSet<usize> = HashSet::new();
        for &i in pending {
            let primary = table
                .primary_index(parts[i])
                .expect("invariant: a valid table has a primary for every partition");
            if Some(primary) == me {
                local.push(i);
                continue;
            }
            if check_quorum
                && ops[i].is_write()
                && let Some(r) = quorum.get_or_insert_with(|| self.lock().check_quorum().err())
            {
                out[i] = Some(Err(self.refusal(r.clone(), &self.me)));
                continue;
            }
            if held.contains(&primary) {
                continue;
            }
            let size = ops[i].size();
            match remote.iter_mut().find(|(p, _, _)| *p == primary) {
                Some((_, group, bytes)) => {
                    if *bytes + size > self.config.page_bytes {
                        // The rest for this primary waits for the next round.
                        held.insert(primary);
                    } else {
                        group.push(i);
                        *bytes += size;
                    }
                }
                None => {
                    // Sized for a pipeline's share, not grown op by op (a pipeline
                    // usually goes to one or two primaries).
                    let mut group = Vec::with_capacity(pending.len().min(64));
                    group.push(i);
                    remote.push((primary, group, size));
                }
            }
        }
        let sent: Vec<_> = remote
            .into_iter()
            .map(|(primary, group, _)| {
                let primary = table.members()[primary].id.clone();
                let batch = group.iter().map(|&i| ops[i].clone()).collect();
                let rx = self.enqueue_ops(&primary, table.epoch(), batch);
                (primary, group, rx)
            })
            .collect();
        let mut attempts: Vec<RoundAttempt> = Vec::with_capacity(pending.len());
        if !local.is_empty() {
            let batch = local.iter().map(|&i| &ops[i]);
            let (results, _) = self
                .at_primary_batch(batch, None, BatchMode::Runs, None)
                .await;
            for (&i, r) in local.iter().zip(results) {
                attempts.push((i, None, r.map_err(Attempt::Refused)));
            }
        }
        let mut primaries = Vec::with_capacity(sent.len());
        for (primary, group, rx) in sent {
            self.metrics
                .forwarded
                .inc_by(u64::try_from(group.len()).unwrap_or(u64::MAX));
            let delivery = rx.await.unwrap_or(Delivery::Lost);
            for (k, &i) in group.iter().enumerate() {
                let attempt = delivery.attempt(k, ops[i].is_write());
                attempts.push((i, Some(primaries.len()), attempt));
            }
            primaries.push(primary);
        }
        (attempts, primaries)
    }

    /// Sends `writes` to every alive backup of their partitions; Ok once all applied.
    /// Writes for the `carry` node (while its budget lasts) are left in it instead, for
    /// the caller to hand over in its reply.
    ///
    /// Concurrent operations replicating to the same backup at the same epoch share
    /// messages: each operation queues its writes in the [`Inner::outbox`] and the first
    /// one spawns a flush ([`Inner::flush`]) that runs after the tasks already scheduled,
    /// sends everything queued by then in one `Replicate` (pages of at most
    /// [`ClusterConfig::page_bytes`]) and hands the backup's answer to every operation
    /// in it. An operation is still answered only once its backup applied its writes;
    /// the flush runs in its own task, so a caller that gives up never fails the others.
    async fn replicate(
        self: &Arc<Self>,
        table: &RoutingTable,
        writes: &[Write],
        mut carry: Option<&mut Carrier>,
    ) -> Result<(), Refusal> {
        if table.members().len() < 2 {
            // A lone member has no backups.
            return Ok(());
        }
        let partitioning = table.partitioning();
        let mut per_backup: BTreeMap<NodeId, Vec<WireWrite>> = BTreeMap::new();
        {
            let st = self.lock();
            for (i, w) in writes.iter().enumerate() {
                let p = partitioning.partition_of(&w.key);
                for m in table.replicas(p).skip(1) {
                    let carrier = carry.as_deref_mut().filter(|c| c.to == m.id);
                    if m.id == self.me || (carrier.is_none() && !st.alive.contains(&m.id)) {
                        continue;
                    }
                    let wire = WireWrite::from(w);
                    match carrier {
                        Some(c) if wire.size() <= c.budget => {
                            c.budget -= wire.size();
                            c.taken.push((i, wire));
                        }
                        _ => per_backup
                            .entry(m.id.clone())
                            .or_insert_with(|| Vec::with_capacity(writes.len() - i))
                            .push(wire),
                    }
                }
            }
        }
        let epoch = table.epoch();
        // Queue the small ones for every backup first, so the backups are written to at
        // the same time; then the paged ones; then wait for all.
        let mut waiting = Vec::new();
        let mut paged = Vec::new();
        for (backup, ws) in per_backup {
            let size: usize = ws.iter().map(WireWrite::size).sum();
            if size > self.config.page_bytes {
                paged.push((backup, ws));
                continue;
            }
            let (done, answer) = tokio::sync::oneshot::channel();
            let key = (backup.clone(), epoch);
            let first = {
                let mut outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
                let queue = outbox.entry(key.clone()).or_default();
                queue.push(Queued {
                    writes: ws,
                    size,
                    done,
                });
                queue.len() == 1
            };
            if first {
                let inner = Arc::clone(self);
                tokio::spawn(async move { inner.flush(key).await });
            }
            waiting.push((backup, answer));
        }
        let mut outcome = Ok(());
        for (backup, ws) in paged {
            if let Err(r) = self.replicate_paged(&backup, epoch, &ws).await {
                tracing::debug!(%backup, "replication failed");
                outcome = Err(r);
            }
        }
        for (backup, answer) in waiting {
            if let Err(r) = answer.await.unwrap_or(Err(Refusal::Timeout)) {
                tracing::debug!(%backup, "replication failed");
                outcome = Err(r);
            }
        }
        if outcome.is_err() {
            self.metrics.replicate_failures.inc();
        }
        outcome
    }

    /// Sends one operation's writes to `backup` in pages, one after the other.
    async fn replicate_paged(
        &self,
        backup: &NodeId,
        epoch: u64,
        ws: &[WireWrite],
    ) -> Result<(), Refusal> {
        let idx: Vec<usize> = (0..ws.len()).collect();
        for chunk in chunk_by_size(
            idx.iter().copied(),
            |&i| ws[i].size(),
            self.config.page_bytes,
        ) {
            let batch: Vec<WireWrite> = chunk.iter().map(|&i| ws[i].clone()).collect();
            self.replicate_to(backup, epoch, batch).await?;
        }
        Ok(())
    }

    /// Sends what the operations queued for `key` (backup, epoch) and answers them.
    async fn flush(self: Arc<Self>, key: (NodeId, u64)) {
        // Let the operations already scheduled queue their writes behind this one.
        tokio::task::yield_now().await;
        let queued = self
            .outbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key)
            .unwrap_or_default();
        let (backup, epoch) = key;
        for page in chunk_by_size(queued, |q| q.size, self.config.page_bytes) {
            let mut writes = Vec::with_capacity(page.iter().map(|q| q.writes.len()).sum());
            let mut waiters = Vec::with_capacity(page.len());
            for q in page {
                writes.extend(q.writes);
                waiters.push(q.done);
            }
            self.metrics.replication_batches.inc();
            let result = self.replicate_to(&backup, epoch, writes).await;
            for w in waiters {
                let _ = w.send(result.clone());
            }
        }
    }

    async fn replicate_to(
        &self,
        backup: &NodeId,
        epoch: u64,
        writes: Vec<WireWrite>,
    ) -> Result<(), Refusal> {
        let msg = Msg::Replicate { epoch, writes };
        for attempt in 0..2 {
            match self.call(backup, &msg, self.config.request_timeout).await {
                Ok(Reply::Ack) => return Ok(()),
                Ok(Reply::Err(Refusal::Behind { .. })) if attempt == 0 => {
                    self.push_table(backup).await;
                }
                Ok(Reply::Err(Refusal::NotOwner { epoch: theirs })) => {
                    if theirs > epoch {
                        self.refresh(backup).await;
                    }
                    return Err(Refusal::Timeout);
                }
                Err(CallError::Transport(
                    RequestError::NodeGone { .. }
                    | RequestError::Send(SendError::UnknownNode { .. } | SendError::NodeGone { .. }),
                )) if !self.is_active(backup) => {
                    // The backup failed or left: the write lives on at this primary, the
                    // next table gives the partition a new backup that fetches it.
                    return Ok(());
                }
                _ => return Err(Refusal::Timeout),
            }
        }
        Err(Refusal::Timeout)
    }

    /// Whether gossip still counts `id` as a member (alive or suspect).
    fn is_active(&self, id: &NodeId) -> bool {
        let Some(node) = self.node.upgrade() else {
            return false;
        };
        node.members()
            .iter()
            .any(|(m, s)| m.id == *id && s.is_active())
    }

    /// `get_or_load` at the primary.
    async fn load(
        self: &Arc<Self>,
        bucket: String,
        key: Bytes,
        epoch: Option<u64>,
    ) -> Result<OpReply, Refusal> {
        let step = self.lock().begin_load(&bucket, &key, epoch, wall_clock())?;
        let rx = match step {
            LoadStep::Hit(v) => return Ok(OpReply::Value(Some(WBytes(v)))),
            LoadStep::Wait(rx) => rx,
            LoadStep::Lead(rx, load_key) => {
                let inner = Arc::clone(self);
                tokio::spawn(async move { inner.lead_load(load_key).await });
                rx
            }
        };
        let wait = self.config.load_timeout + self.config.request_timeout;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(Ok(v))) => Ok(OpReply::Value(v.map(WBytes))),
            Ok(Ok(Err(r))) => Err(r),
            _ => Err(Refusal::Timeout),
        }
    }

    /// Runs the loader for `key` once and answers everyone waiting for it.
    async fn lead_load(self: Arc<Self>, key: LoadKey) {
        let mut guard = LoadGuard {
            inner: Arc::clone(&self),
            key: Some(key.clone()),
        };
        let loader = self
            .loaders
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&*key.0)
            .cloned();
        let result: LoadResult = match loader {
            None => Err(Refusal::NoLoader {
                bucket: key.0.to_string(),
            }),
            Some(f) => {
                self.metrics.loads.inc();
                tokio::time::timeout(self.config.load_timeout, f(key.1.clone()))
                    .await
                    .map_err(|_| Refusal::Timeout)
            }
        };
        guard.key = None;
        let (waiters, write, previous, table) = {
            let mut st = self.lock();
            let (waiters, write, previous) = st.finish_load(
                &key,
                &result,
                self.config.mycel.refuse_minority_writes,
                wall_clock(),
            );
            (waiters, write, previous, st.table().cloned())
        };
        if let (Some(w), Some(table)) = (write, table)
            && self.replicate(&table, &[w], None).await.is_err()
        {
            tracing::warn!("loaded value not replicated to every backup");
        }
        let answer = match (result, previous) {
            (Ok(Some(_)), Some(current)) => Ok(Some(current)),
            (r, _) => r,
        };
        for w in waiters {
            let _ = w.send(answer.clone());
        }
    }

    async fn group_by_primary(&self, keys: &[Bytes]) -> Result<Vec<Vec<usize>>, ClusterError> {
        let table = self
            .wait_for_table(Instant::now() + self.config.op_timeout)
            .await?;
        let partitioning = table.partitioning();
        let mut groups: BTreeMap<NodeId, Vec<usize>> = BTreeMap::new();
        for (i, k) in keys.iter().enumerate() {
            let p = partitioning.partition_of(k);
            let primary = table
                .primary(p)
                .map(|m| m.id.clone())
                .expect("invariant: every partition has a primary");
            groups.entry(primary).or_default().push(i);
        }
        Ok(groups.into_values().collect())
    }

    async fn count(self: &Arc<Self>) -> Result<u64, ClusterError> {
        let table = self
            .wait_for_table(Instant::now() + self.config.op_timeout)
            .await?;
        let mut total = 0u64;
        for m in table.members() {
            if m.id == self.me {
                total += self.lock().count_primary(wall_clock());
                continue;
            }
            let msg = Msg::Op {
                epoch: table.epoch(),
                op: Op::Count,
            };
            match self.call(&m.id, &msg, self.config.request_timeout).await {
                Ok(Reply::Op(OpReply::Count(n))) => total += n,
                Ok(Reply::Err(r)) => return Err(self.refusal(r, &m.id)),
                Ok(_) | Err(CallError::Decode) => {
                    return Err(ClusterError::Protocol { node: m.id.clone() });
                }
                Err(CallError::Transport(_)) => {
                    return Err(ClusterError::Unreachable { node: m.id.clone() });
                }
            }
        }
        Ok(total)
    }

    /// Executes a `Batch` (or with `carry` a `Carry`) of `ops` from `from` at `epoch`.
    async fn serve_batch(
        self: &Arc<Self>,
        from: &NodeId,
        epoch: u64,
        ops: &[Op],
        (carry, mode): (bool, BatchMode),
    ) -> (Vec<Result<OpReply, Refusal>>, Vec<CarriedWrites>) {
        if epoch > self.lock().epoch() {
            self.spawn_refresh(from.clone());
        }
        let carry = carry.then_some(from);
        let (results, writes) = self
            .at_primary_batch(ops.iter(), Some(epoch), mode, carry)
            .await;
        let refused = results
            .iter()
            .filter(|r| matches!(r, Err(Refusal::NotOwner { .. })))
            .count();
        if refused > 0 {
            self.metrics
                .not_owner
                .inc_by(u64::try_from(refused).unwrap_or(u64::MAX));
        }
        (results, writes)
    }

    /// Serves one request from another node.
    async fn serve(self: &Arc<Self>, from: &NodeId, msg: Msg) -> Reply {
        let now = wall_clock();
        match msg {
            Msg::Op { epoch, op } => {
                if epoch > self.lock().epoch() {
                    self.spawn_refresh(from.clone());
                }
                match self.at_primary(op, Some(epoch)).await {
                    Ok(r) => Reply::Op(r),
                    Err(r) => {
                        if matches!(r, Refusal::NotOwner { .. }) {
                            self.metrics.not_owner.inc();
                        }
                        Reply::Err(r)
                    }
                }
            }
            Msg::Batch { epoch, ops } => {
                let (results, _) = self
                    .serve_batch(from, epoch, &ops, (false, BatchMode::Bounded))
                    .await;
                Reply::Batch(results)
            }
            Msg::Carry { epoch, ops } => {
                let (results, writes) = self
                    .serve_batch(from, epoch, &ops, (true, BatchMode::Bounded))
                    .await;
                Reply::Carried { results, writes }
            }
            Msg::Atomic { epoch, ops } => {
                let (mut results, _) = self
                    .serve_batch(from, epoch, &ops, (false, BatchMode::Atomic))
                    .await;
                bound_reply(&ops, &mut results, self.config.max_message_size);
                Reply::Batch(results)
            }
            Msg::Replicate { epoch, writes } => {
                let result = self.lock().handle_replicate(epoch, writes, now);
                match result {
                    Ok(()) => Reply::Ack,
                    Err(r) => {
                        if matches!(r, Refusal::Behind { .. }) {
                            self.spawn_refresh(from.clone());
                        }
                        Reply::Err(r)
                    }
                }
            }
            Msg::TableReq => {
                let st = self.lock();
                Reply::Table {
                    table: st.table().map(|t| (**t).clone()),
                    previous: st.previous.as_deref().cloned(),
                }
            }
            Msg::TablePush { table, previous } => {
                self.install(table, previous.as_ref());
                Reply::Ack
            }
            Msg::FetchStart {
                table,
                previous,
                partitions,
            } => {
                let (page, statuses, installed_epoch) = {
                    let mut st = self.lock();
                    let before = st.epoch();
                    let (session, statuses) =
                        match st.start_session(from, table, previous.as_ref(), &partitions, now) {
                            Ok(started) => started,
                            Err(refusal) => return Reply::Err(refusal),
                        };
                    let page = st.next_page(session, from, self.config.page_bytes, now);
                    let after = st.epoch();
                    (
                        page.map(|p| (session, p)),
                        statuses,
                        (after > before).then_some(after),
                    )
                };
                if installed_epoch.is_some() {
                    self.table_changed.notify_waiters();
                }
                match page {
                    Some((session, (writes, done))) => {
                        self.count_served(&writes);
                        Reply::Page {
                            session,
                            statuses,
                            writes,
                            done,
                        }
                    }
                    None => Reply::Err(Refusal::UnknownSession),
                }
            }
            Msg::FetchNext { session } => {
                let page = self
                    .lock()
                    .next_page(session, from, self.config.page_bytes, now);
                match page {
                    Some((writes, done)) => {
                        self.count_served(&writes);
                        Reply::Page {
                            session,
                            statuses: Vec::new(),
                            writes,
                            done,
                        }
                    }
                    None => Reply::Err(Refusal::UnknownSession),
                }
            }
            Msg::Release { partitions } => {
                let dropped = self.lock().handle_release(from, &partitions);
                if dropped > 0 {
                    tracing::debug!(%from, dropped, "released partitions dropped");
                }
                Reply::Ack
            }
        }
    }

    fn count_served(&self, writes: &[WireWrite]) {
        let bytes: usize = writes.iter().map(WireWrite::size).sum();
        self.metrics
            .served_bytes
            .inc_by(u64::try_from(bytes).unwrap_or(u64::MAX));
    }

    /// Membership, tables, transfers, sessions and expiry: one background step.
    async fn tick(self: &Arc<Self>) {
        let Some(node) = self.node.upgrade() else {
            return;
        };
        let members = node.members();
        drop(node);
        let now = wall_clock();
        let leaving = self.leaving.load(Ordering::Acquire);
        let mut frozen = self.frozen.load(Ordering::Acquire);
        let mut others_frozen = false;
        let mut view = Vec::new();
        let mut alive = BTreeSet::new();
        alive.insert(self.me.clone());
        if !leaving {
            view.push(Member {
                id: self.me.clone(),
                weight: self.config.weight,
                started_at: self.started_at,
            });
        }
        let partitions = self.config.mycel.store.partitioning.count();
        let rf = self.config.mycel.replication_factor;
        let mut features = HashMap::new();
        for (m, s) in &members {
            if m.id == self.me || !s.is_active() {
                continue;
            }
            let Some(meta) = wire::MemberMeta::decode(m.metadata.as_bytes()) else {
                continue;
            };
            if meta.partitions != partitions || meta.replication_factor != rf {
                if self.shell().incompatible.insert(m.id.clone()) {
                    tracing::warn!(
                        peer = %m.id,
                        partitions = meta.partitions,
                        replication_factor = meta.replication_factor,
                        "peer runs another partitioning or replication factor; ignored"
                    );
                }
                continue;
            }
            alive.insert(m.id.clone());
            others_frozen |= meta.frozen;
            features.insert(m.id.clone(), meta.features);
            if !meta.leaving {
                view.push(Member {
                    id: m.id.clone(),
                    weight: meta.weight,
                    started_at: meta.started_at,
                });
            }
        }
        view.sort_by(|a, b| a.id.cmp(&b.id));
        self.others_frozen.store(others_frozen, Ordering::Release);
        let changed = *self.features.read().unwrap_or_else(PoisonError::into_inner) != features;
        if changed {
            *self
                .features
                .write()
                .unwrap_or_else(PoisonError::into_inner) = features;
        }
        frozen |= others_frozen;
        // Members that could hold partitions (weight 0 never does).
        self.successors.store(
            view.iter()
                .filter(|m| m.id != self.me && m.weight > 0)
                .count(),
            Ordering::Release,
        );
        let auth = authority(&view).map(|m| m.id.clone());

        let mut publish = None;
        let mut resend = false;
        let mut ask = None;
        {
            let mut shell = self.shell();
            shell.stabilizer.handle_view(now, view.clone());
            if let Some(stable) = shell.stabilizer.poll_stable(now) {
                shell.stable = Some(stable);
            }
            if shell.stable.as_ref() != Some(&view) {
                shell.stable = None;
            }
            let mut st = self.lock();
            st.alive = alive;
            let alone_too_early = st.table().is_none()
                && view.len() <= 1
                && self.started.elapsed() < self.config.bootstrap_delay;
            if let (Some(stable), false, false) = (shell.stable.as_ref(), frozen, alone_too_early) {
                let may = !self.config.mycel.refuse_minority_writes
                    || st
                        .table()
                        .is_none_or(|t| t.reaches_majority(&self.me, st.alive.iter()));
                if may
                    && let Some(mut t) =
                        st.propose(stable, self.config.mycel.store.partitioning, rf)
                {
                    if t.epoch() <= st.highest_seen {
                        match RoutingTable::compute(
                            st.highest_seen + 1,
                            self.me.clone(),
                            self.config.mycel.store.partitioning,
                            rf,
                            stable.clone(),
                        ) {
                            Ok(next) => t = next,
                            Err(e) => tracing::warn!(error = %e, "cannot compute table"),
                        }
                    }
                    match st.install(t.clone(), None) {
                        Ok(true) => {
                            tracing::info!(epoch = t.epoch(), "published routing table");
                            publish = Some(t);
                        }
                        Ok(false) => {}
                        Err(e) => tracing::warn!(error = %e, "own table refused"),
                    }
                }
            }
            let due =
                |at: Option<Instant>, every: Duration| at.is_none_or(|t| t.elapsed() >= every);
            if auth.as_ref() == Some(&self.me) && st.table().is_some() {
                resend =
                    publish.is_some() || due(shell.last_push, self.config.table_resend_interval);
                if resend {
                    shell.last_push = Some(Instant::now());
                }
            } else if st.table().is_none() && due(shell.last_table_req, Duration::from_millis(500))
            {
                ask = auth
                    .clone()
                    .filter(|a| *a != self.me)
                    .or_else(|| st.alive.iter().find(|n| **n != self.me).cloned());
                shell.last_table_req = Some(Instant::now());
            }
            let rng = &mut shell.rng;
            st.store.reap(now, rng, crate::store::DEFAULT_REAP_SAMPLE);
            st.expire_sessions(Timestamp::from_millis(
                now.as_millis().saturating_sub(60_000),
            ));
        }
        if publish.is_some() {
            self.table_changed.notify_waiters();
        }
        if resend {
            let targets: Vec<NodeId> = self
                .lock()
                .alive
                .iter()
                .filter(|n| **n != self.me)
                .cloned()
                .collect();
            for to in targets {
                let inner = Arc::clone(self);
                tokio::spawn(async move { inner.push_table(&to).await });
            }
        }
        if let Some(from) = ask {
            self.spawn_refresh(from);
        }
        let work = self.lock().poll_sync();
        if work.synced > 0 {
            tracing::debug!(synced = work.synced, "partitions synced");
            self.metrics
                .partitions_fetched
                .inc_by(u64::try_from(work.synced).unwrap_or(u64::MAX));
        }
        for (source, partitions) in work.fetch {
            let inner = Arc::clone(self);
            tokio::spawn(async move { inner.fetch_from(source, partitions).await });
        }
        for (source, partitions) in work.release {
            let inner = Arc::clone(self);
            tokio::spawn(async move {
                let msg = Msg::Release { partitions };
                for _ in 0..3 {
                    if let Ok(Reply::Ack) = inner
                        .call(&source, &msg, inner.config.request_timeout)
                        .await
                    {
                        return;
                    }
                    if !inner.is_active(&source) {
                        return;
                    }
                }
            });
        }
        self.update_gauges();
    }

    fn update_gauges(&self) {
        let st = self.lock();
        let (primaries, replicas, synced) = st.replica_counts();
        let g = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.metrics
            .epoch
            .set(i64::try_from(st.epoch()).unwrap_or(i64::MAX));
        self.metrics.primaries.set(g(primaries));
        self.metrics.replicas.set(g(replicas));
        self.metrics.synced.set(g(synced));
        self.metrics.awaiting_release.set(g(st.awaiting.len()));
    }

    /// Transfers `partitions` from `source`, page by page.
    async fn fetch_from(self: Arc<Self>, source: NodeId, partitions: Vec<Partition>) {
        let ok = self.fetch_pages(&source, &partitions).await;
        let mut st = self.lock();
        if ok {
            st.fetch_done(&source, &partitions);
        } else {
            st.fetch_failed(&source);
        }
    }

    async fn fetch_pages(&self, source: &NodeId, partitions: &[Partition]) -> bool {
        let (table, previous) = {
            let st = self.lock();
            let Some(table) = st.table().map(|t| (**t).clone()) else {
                return false;
            };
            (table, st.previous.as_deref().cloned())
        };
        let mut msg = Msg::FetchStart {
            table,
            previous,
            partitions: partitions.to_vec(),
        };
        loop {
            match self.call(source, &msg, self.config.fetch_timeout).await {
                Ok(Reply::Page {
                    session,
                    statuses,
                    writes,
                    done,
                }) => {
                    let bytes: usize = writes.iter().map(WireWrite::size).sum();
                    self.metrics
                        .fetch_bytes
                        .inc_by(u64::try_from(bytes).unwrap_or(u64::MAX));
                    self.lock()
                        .apply_page(source, &statuses, writes, wall_clock());
                    if let Some(rate) = self.config.max_fetch_bytes_per_sec {
                        let wait = {
                            let mut free = self
                                .fetch_free_at
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner);
                            pace(&mut free, Instant::now(), bytes, rate)
                        };
                        tokio::time::sleep(wait).await;
                    }
                    if done {
                        tracing::debug!(%source, partitions = partitions.len(), "fetch complete");
                        return true;
                    }
                    msg = Msg::FetchNext { session };
                }
                _ => {
                    tracing::debug!(%source, "fetch failed; retried while the source lives");
                    return false;
                }
            }
        }
    }
}

/// Clears a single-flight entry if its leader dies (a panicking loader), so waiters get an
/// answer and later calls can load again.
struct LoadGuard {
    inner: Arc<Inner>,
    key: Option<LoadKey>,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let waiters = self.inner.lock().loads.remove(&key).unwrap_or_default();
            for w in waiters {
                let _ = w.send(Err(Refusal::Timeout));
            }
        }
    }
}

async fn receive_loop(weak: Weak<Inner>, mut app: Application, limit: usize) {
    let permits = Arc::new(tokio::sync::Semaphore::new(limit));
    while let Some(incoming) = app.receive().await {
        match incoming {
            Incoming::Request(req) => {
                // While every slot is busy this application's stream is not read.
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    return;
                };
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                tokio::spawn(async move {
                    handle_request(inner, req).await;
                    drop(permit);
                });
            }
            Incoming::Message { from, .. } => {
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                inner.metrics.bad_messages.inc();
                tracing::debug!(%from, "unexpected one-way message dropped");
            }
        }
    }
}

async fn handle_request(inner: Arc<Inner>, req: Request) {
    let from = req.from().clone();
    let reply = match wire::decode_shared::<Msg>(req.body()) {
        Ok(msg) => inner.serve(&from, msg).await,
        Err(e) => {
            inner.metrics.bad_messages.inc();
            tracing::warn!(%from, error = %e, "undecodable request dropped");
            Reply::Err(Refusal::BadRequest)
        }
    };
    drop(inner);
    if let Err(e) = req.respond(wire::encode(&reply)).await {
        tracing::debug!(%from, error = %e, "response not sent");
    }
}

async fn tick_loop(inner: Weak<Inner>) {
    let period = match inner.upgrade() {
        Some(i) => i.config.tick_interval,
        None => return,
    };
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.tick().await;
    }
}

/// A leaky bucket over one "free at" instant: `bytes` just transferred at `rate` bytes per
/// second occupy the link for `bytes / rate` after it is free; returns how long to wait
/// before the next transfer.
fn pace(free_at: &mut Instant, now: Instant, bytes: usize, rate: u64) -> Duration {
    let cost = Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64);
    let start = (*free_at).max(now);
    *free_at = start + cost;
    free_at.saturating_duration_since(now)
}

/// Forwarded operations in a message of the original set (not `Carry`): a lone one as
/// `Op`, several as `Batch`.
fn plain_ops(epoch: u64, mut ops: Vec<Op>) -> Msg {
    match ops.pop() {
        Some(op) if ops.is_empty() => Msg::Op { epoch, op },
        last => {
            ops.extend(last);
            Msg::Batch { epoch, ops }
        }
    }
}

/// Room a reply keeps, below the message size limit, for everything but its values.
const REPLY_OVERHEAD: usize = 4096;

/// Makes a transaction's reply ([`Msg::Atomic`]: never deferred, whatever its size) fit
/// in one message of `max_message_size` bytes: past that, its reads answer
/// `ValueTooLarge` (the transaction's reply size) instead of their values. Its writes'
/// results stay, as the writes were made; if they still do not fit (a `SET ... GET`
/// returns the value it replaced), those that return a value answer `Timeout`: made,
/// but what they would return is not known to the caller.
fn bound_reply(ops: &[Op], results: &mut [Result<OpReply, Refusal>], max_message_size: usize) {
    let max = max_message_size.saturating_sub(REPLY_OVERHEAD);
    let total = |results: &[Result<OpReply, Refusal>]| -> usize {
        results
            .iter()
            .map(|r| r.as_ref().map_or(64, OpReply::size))
            .sum()
    };
    let before = total(results);
    if before <= max {
        return;
    }
    for (op, result) in ops.iter().zip(results.iter_mut()) {
        // A watch check's answer stays: it tells whether the rest ran.
        let check = matches!(op, Op::Unchanged { .. } | Op::Stamp { .. });
        if !op.is_write() && !check && result.is_ok() {
            *result = Err(Refusal::ValueTooLarge {
                len: u64::try_from(before).unwrap_or(u64::MAX),
                max: u64::try_from(max).unwrap_or(u64::MAX),
            });
        }
    }
    if total(results) <= max {
        return;
    }
    for result in results.iter_mut() {
        if matches!(
            result,
            Ok(OpReply::Set {
                previous: Some(_),
                ..
            })
        ) {
            *result = Err(Refusal::Timeout);
        }
    }
}

/// The first of `members` that did not announce `feature` in `features`.
fn lacking<'a>(
    features: &HashMap<NodeId, u32>,
    members: impl IntoIterator<Item = &'a NodeId>,
    feature: u32,
) -> Option<NodeId> {
    members
        .into_iter()
        .find(|n| features.get(*n).copied().unwrap_or(0) & feature == 0)
        .cloned()
}

/// The messages that carry `queued` (each caller's operations whole, in pages of about
/// `page_bytes`) to a primary that announced `features`. A caller with an operation the
/// primary is not known to decode ([`Op::needs`] a feature it did not announce) gets a
/// message of its own: a node from before that operation refuses the whole message
/// (`BadRequest`), and that must not fail the other callers' operations.
fn pages_for(queued: Vec<QueuedOps>, features: u32, page_bytes: usize) -> Vec<Vec<QueuedOps>> {
    let unknown = |op: &Op| op.needs() & !features != 0;
    let (alone, shared): (Vec<_>, Vec<_>) =
        queued.into_iter().partition(|q| q.ops.iter().any(unknown));
    let mut pages = chunk_by_size(shared, |q| q.size, page_bytes);
    pages.extend(alone.into_iter().map(|q| vec![q]));
    pages
}

/// Splits `items` into runs whose `size` sums stay within `max` (at least one item each).
fn chunk_by_size<T>(
    items: impl IntoIterator<Item = T>,
    size: impl Fn(&T) -> usize,
    max: usize,
) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for item in items {
        let s = size(&item);
        if !current.is_empty() && bytes + s > max {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += s;
        current.push(item);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The system clock as the core's [`Timestamp`]: the one place the cluster layer reads it.
fn wall_clock() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Timestamp::from_millis(ms)
}

/// SplitMix64: enough randomness to sample keys for expiry.
#[derive(Debug)]
struct SplitMix(u64);

impl rand_core::TryRng for SplitMix {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((self.next() >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.next())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_problems_are_listed() {
        assert_eq!(ClusterConfig::default().validate(), Ok(()));
        let mut c = ClusterConfig::default();
        c.mycel.store.max_value_len = 8 * 1024 * 1024;
        c.mycel.store.max_bytes = 64 * 1024 * 1024;
        c.weight = 0;
        c.request_timeout = Duration::from_secs(60);
        let problems = c.validate().expect_err("invalid");
        let fields: Vec<&str> = problems.iter().map(|p| p.field).collect();
        assert_eq!(fields, ["store.max_value_len", "weight", "request_timeout"]);
    }

    #[test]
    fn transfers_are_paced_to_the_rate() {
        let now = Instant::now();
        let mut free = now;
        // 1 MiB at 1 MiB/s: wait a second; the next MiB queues behind it.
        assert_eq!(
            pace(&mut free, now, 1 << 20, 1 << 20),
            Duration::from_secs(1)
        );
        assert_eq!(
            pace(&mut free, now, 1 << 20, 1 << 20),
            Duration::from_secs(2)
        );
        // After an idle spell the link is free again.
        let later = now + Duration::from_secs(10);
        assert_eq!(
            pace(&mut free, later, 512 << 10, 1 << 20),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn chunks_respect_the_bound() {
        let items: Vec<usize> = (0..10).collect();
        let chunks = chunk_by_size(items, |_| 30, 100);
        assert_eq!(chunks.len(), 4);
        assert!(chunks.iter().all(|c| c.len() * 30 <= 100));
        // An item larger than the bound gets a chunk of its own.
        let big = chunk_by_size([1usize, 2], |_| 500, 100);
        assert_eq!(big, vec![vec![1], vec![2]]);
        assert!(chunk_by_size(Vec::<usize>::new(), |_| 1, 1).is_empty());
    }

    #[test]
    fn a_transaction_reply_too_large_for_a_message_drops_its_reads_values() {
        let bucket = WStr::from("b");
        let key = WBytes(Bytes::from_static(b"k"));
        let ops = [
            Op::Unchanged {
                bucket: bucket.clone(),
                key: key.clone(),
                stamp: KeyStamp {
                    version: None,
                    high: crate::store::Version::default(),
                    epoch: 1,
                    removals: 0,
                    store: 0,
                },
            },
            Op::IncrBy {
                bucket: bucket.clone(),
                key: key.clone(),
                delta: 1,
            },
            Op::Get {
                bucket: bucket.clone(),
                key: key.clone(),
            },
            Op::Get { bucket, key },
        ];
        let value = |n: usize| Ok(OpReply::Value(Some(WBytes(Bytes::from(vec![b'v'; n])))));
        let results = || {
            vec![
                Ok(OpReply::Bool(true)),
                Ok(OpReply::Int(1)),
                value(3 << 20),
                value(3 << 20),
            ]
        };
        let mut fits = results();
        bound_reply(&ops, &mut fits, 8 << 20);
        assert_eq!(fits, results());
        let mut too_large = results();
        bound_reply(&ops, &mut too_large, 4 << 20);
        assert_eq!(
            too_large[..2],
            [Ok(OpReply::Bool(true)), Ok(OpReply::Int(1))],
            "the watch check's and the write's results stay"
        );
        for r in &too_large[2..] {
            assert!(matches!(r, Err(Refusal::ValueTooLarge { .. })), "{r:?}");
        }
        // Writes returning the values they replaced, too large together: made, so not
        // refused, but their values cannot be returned.
        let set = |n: usize| {
            Ok(OpReply::Set {
                applied: true,
                previous: Some(WBytes(Bytes::from(vec![b'v'; n]))),
            })
        };
        let mut sets = vec![Ok(OpReply::Int(1)), set(3 << 20), set(3 << 20)];
        let writes = [ops[1].clone(), ops[1].clone(), ops[1].clone()];
        bound_reply(&writes, &mut sets, 4 << 20);
        assert_eq!(
            sets,
            [
                Ok(OpReply::Int(1)),
                Err(Refusal::Timeout),
                Err(Refusal::Timeout)
            ]
        );
    }

    #[test]
    fn a_member_is_lacking_a_feature_it_did_not_announce() {
        let id = |s: &str| NodeId::new(s).expect("id");
        let features = HashMap::from([
            (id("new"), wire::FEATURE_CARRY | wire::FEATURE_CLEAR),
            (id("old"), wire::FEATURE_CARRY),
        ]);
        let both = [id("new"), id("old")];
        assert_eq!(
            lacking(&features, &both, wire::FEATURE_CLEAR),
            Some(id("old"))
        );
        assert_eq!(lacking(&features, &both, wire::FEATURE_CARRY), None);
        assert_eq!(lacking(&features, &both[..1], wire::FEATURE_CLEAR), None);
        // A member whose metadata was never read announced nothing.
        assert_eq!(
            lacking(&features, &[id("unknown")], wire::FEATURE_CARRY),
            Some(id("unknown"))
        );
    }

    #[test]
    fn operations_an_older_primary_cannot_decode_travel_alone() {
        let bucket = WStr::from("b");
        let key = |k: &str| WBytes(Bytes::copy_from_slice(k.as_bytes()));
        let get = |k: &str| Op::Get {
            bucket: bucket.clone(),
            key: key(k),
        };
        let append = |k: &str| Op::Append {
            bucket: bucket.clone(),
            key: key(k),
            value: key("v"),
        };
        let queued = || {
            [
                vec![get("a"), get("b")],
                vec![get("c"), append("c")],
                vec![get("d")],
                vec![append("e")],
            ]
            .into_iter()
            .map(|ops| QueuedOps {
                size: ops.iter().map(Op::size).sum(),
                ops,
                timeout: Duration::from_secs(1),
                done: tokio::sync::oneshot::channel().0,
            })
            .collect::<Vec<_>>()
        };
        let shape = |pages: Vec<Vec<QueuedOps>>| -> Vec<Vec<usize>> {
            pages
                .iter()
                .map(|p| p.iter().map(|q| q.ops.len()).collect())
                .collect()
        };
        // A primary that announced it knows every operation: one message for all.
        assert_eq!(
            shape(pages_for(queued(), wire::FEATURE_CARRY, 1 << 20)),
            vec![vec![2, 2, 1, 1]]
        );
        // Any other: the callers with an `APPEND` each travel alone (a refusal of their
        // message fails their own operations only), the others together.
        let pages = pages_for(queued(), 0, 1 << 20);
        let alone: Vec<bool> = pages
            .iter()
            .map(|p| p.iter().any(|q| q.ops.iter().any(|op| op.needs() != 0)))
            .collect();
        assert_eq!(shape(pages), vec![vec![2, 1], vec![2], vec![1]]);
        assert_eq!(alone, [false, true, true]);
        // A primary that decodes `APPEND` but not `Clear` (`FLUSHDB`): a clear travels
        // alone, the others together.
        let clear = QueuedOps {
            ops: vec![Op::Clear {
                bucket: bucket.clone(),
                partition: 0,
                from: 0,
                max_bytes: 1024,
            }],
            size: 64,
            timeout: Duration::from_secs(1),
            done: tokio::sync::oneshot::channel().0,
        };
        let mut with_clear = queued();
        with_clear.insert(1, clear);
        assert_eq!(
            shape(pages_for(with_clear, wire::FEATURE_CARRY, 1 << 20)),
            vec![vec![2, 2, 1, 1], vec![1]]
        );
    }
}
