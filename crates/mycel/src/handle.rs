//! The async handle applications embed: [`Mycel`].
//!
//! One method set, two backends:
//!
//! - [`Mycel::standalone`]: a local [`Store`] behind a mutex, with the sampled expiry
//!   reaper running as a tokio task. Every partition lives here.
//! - [`Mycel::start`]: cluster mode on a [`nodosum::Node`]: each call goes to the key's
//!   partition primary through the [`Cluster`] layer, which replicates writes to the
//!   backups before acknowledging them. Buckets are the ones configured in
//!   [`ClusterConfig::buckets`] (the same on every node); the handle maps its
//!   [`BucketId`]s to their names.
//!
//! A few methods have no single cluster operation. They are either composed from two
//! cluster operations (documented as not atomic on the method: [`Mycel::get_del`],
//! [`Mycel::get_ex`]) or refused with [`Error::Unsupported`] ([`Mycel::flush`],
//! [`Mycel::stats`], creating buckets at run time); cluster mode never silently acts on
//! this node's data alone.
//!
//! Locking discipline (standalone): the store's mutex is held for one store operation
//! (or one multi-key operation) and never across an `.await`, so hold times stay in the
//! sub-microsecond range and a tokio worker never blocks on another task's I/O.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::task::AbortHandle;

use crate::clock::Timestamp;
use crate::cluster::{BatchOp, BatchReply, Cluster, ClusterConfig, ClusterError};
use crate::config::Config;
use crate::error::Error;
use crate::ldouble::LongDouble;
use crate::slot::Partition;
use crate::store::{
    BucketId, BucketOptions, DEFAULT_REAP_SAMPLE, ExpireCondition, KeyStamp, Renamed, SetOptions,
    Store, Ttl,
};

/// Name of the bucket created by every backend, used by clients that do not pick one.
pub const DEFAULT_BUCKET: &str = "default";

/// How often the reaper samples keys with a TTL: 10 times a second, Redis's default `hz`.
pub const REAP_INTERVAL: Duration = Duration::from_millis(100);

/// The routing epoch a standalone node writes at: it is the only owner of every partition
/// and never changes ownership.
const STANDALONE_EPOCH: u64 = 1;

/// Which backend a [`Mycel`] handle runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One node holding every partition locally ([`Mycel::standalone`]).
    Standalone,
    /// A member of a cluster ([`Mycel::start`]).
    Cluster,
}

impl Mode {
    /// Lowercase name, for logs, `INFO` and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::Cluster => "cluster",
        }
    }
}

/// What [`Mycel::set`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetReply {
    /// Whether the value was written (false when an `NX`/`XX` condition was not met).
    pub written: bool,
    /// The previous value, if [`SetOptions::get`] was set and the key existed.
    pub previous: Option<Bytes>,
}

/// What [`Mycel::get_ex`] does to the key's expiry after reading it (Redis `GETEX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetEx {
    /// Leave it.
    Keep,
    /// Expire `Duration` from now.
    After(Duration),
    /// Expire at this time.
    At(Timestamp),
    /// Remove the expiry.
    Persist,
}

/// The most key bytes one standalone [`Mycel::scan`] step takes from one partition
/// (clusters use [`ClusterConfig::page_bytes`]).
const SCAN_PAGE_BYTES: usize = 1 << 20;

/// One step of [`Mycel::scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    /// The cursor of the next step; 0 when the scan is complete.
    pub cursor: u64,
    /// The keys this step found, in no particular order.
    pub keys: Vec<Bytes>,
}

/// Figures of a node's store, for `INFO`, `DBSIZE` and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Live keys (expired-but-not-yet-reaped keys included, as Redis counts them).
    pub keys: usize,
    /// Live keys with an expiry.
    pub expires: usize,
    /// Bytes used by the store's budget accounting (key + value + per-entry overhead).
    pub used_bytes: u64,
    /// The byte budget.
    pub max_bytes: u64,
    /// Entries evicted to respect the budget since start.
    pub evicted: u64,
    /// Expired entries removed since start.
    pub expired: u64,
}

/// A handle to Mycel: cheap to clone (one `Arc`), usable from any task.
///
/// Every method returns `Result<_, Error>`; in standalone mode only size limits, unknown
/// buckets and integer errors occur, while cluster mode adds [`Error::Timeout`],
/// [`Error::QuorumLost`], [`Error::TryAgain`], [`Error::Cluster`] and
/// [`Error::Unsupported`].
#[derive(Debug, Clone)]
pub struct Mycel {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    default_bucket: BucketId,
    backend: Backend,
}

#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per handle, behind its Arc; boxing would add a pointer chase per call"
)]
enum Backend {
    Local(Local),
    Cluster(Clustered),
}

#[derive(Debug)]
struct Local {
    store: Mutex<Store>,
    reaper: Mutex<Option<AbortHandle>>,
}

impl Local {
    fn stop_reaper(&self) {
        if let Some(reaper) = lock(&self.reaper).take() {
            reaper.abort();
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        self.stop_reaper();
    }
}

#[derive(Debug)]
struct Clustered {
    cluster: Cluster,
    /// Bucket names by [`BucketId::index`], in [`ClusterConfig::buckets`] order.
    names: Vec<Arc<str>>,
    options: Vec<BucketOptions>,
}

impl Clustered {
    fn name(&self, id: BucketId) -> Result<&str, Error> {
        self.names
            .get(id.index())
            .map(|n| &**n)
            .ok_or_else(|| Error::BucketUnknown {
                name: format!("{id:?}"),
            })
    }
}

/// The handle's error for a cluster-layer error: core errors pass through, transient
/// conditions become [`Error::TryAgain`], the rest [`Error::Cluster`].
fn cluster_error(e: ClusterError) -> Error {
    match e {
        ClusterError::Mycel(e) => e,
        ClusterError::InvalidConfig { problems } => Error::InvalidConfig { problems },
        e @ (ClusterError::NoTable
        | ClusterError::Syncing { .. }
        | ClusterError::Retry { .. }
        | ClusterError::Unreachable { .. }) => Error::TryAgain {
            reason: e.to_string(),
        },
        e => Error::Cluster {
            reason: e.to_string(),
        },
    }
}

/// Milliseconds from now until `at`, zero if `at` is not in the future.
fn until(at: Timestamp) -> Duration {
    Duration::from_millis(at.as_millis().saturating_sub(now().as_millis()))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the store half-updated in a way later
    // operations could observe as memory unsafety; keep serving rather than cascading.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The current wall-clock time as the core's [`Timestamp`]: the one place this crate reads
/// the system clock. Expiry times are absolute, so replicas (later) expire together.
pub fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Timestamp::from_millis(ms)
}

impl Mycel {
    /// A single node holding every partition locally, with the [`DEFAULT_BUCKET`].
    ///
    /// Validates `config` first ([`Error::InvalidConfig`] lists every problem). Spawns the
    /// expiry reaper on the current tokio runtime; it stops when the last handle is dropped
    /// or on [`shutdown`](Self::shutdown).
    pub async fn standalone(config: Config) -> Result<Self, Error> {
        config
            .validate()
            .map_err(|problems| Error::InvalidConfig { problems })?;
        let mut store = Store::new(config.store.clone());
        let default_bucket = store.create_bucket(DEFAULT_BUCKET, BucketOptions::default())?;
        let inner = Arc::new(Inner {
            config,
            default_bucket,
            backend: Backend::Local(Local {
                store: Mutex::new(store),
                reaper: Mutex::new(None),
            }),
        });
        let task = tokio::spawn(reap(Arc::downgrade(&inner)));
        if let Backend::Local(local) = &inner.backend {
            *lock(&local.reaper) = Some(task.abort_handle());
        }
        tracing::debug!("mycel standalone backend started");
        Ok(Self { inner })
    }

    /// Cluster mode: starts the [`Cluster`] layer on `node` and routes every call to the
    /// key's partition primary.
    ///
    /// The buckets are `config.buckets` (the [`DEFAULT_BUCKET`] is added first if it is
    /// not declared); every node of the cluster must declare the same ones. Join `node`
    /// to its seeds before or right after this call (a `nodosum::Config` with static
    /// discovery does it by itself). Validates `config` first ([`Error::InvalidConfig`]).
    pub async fn start(node: nodosum::Node, mut config: ClusterConfig) -> Result<Self, Error> {
        if !config.buckets.iter().any(|(n, _)| n == DEFAULT_BUCKET) {
            config
                .buckets
                .insert(0, (DEFAULT_BUCKET.to_owned(), BucketOptions::default()));
        }
        let names: Vec<Arc<str>> = config
            .buckets
            .iter()
            .map(|(n, _)| Arc::from(n.as_str()))
            .collect();
        let options = config.buckets.iter().map(|(_, o)| o.clone()).collect();
        let default_index = names
            .iter()
            .position(|n| &**n == DEFAULT_BUCKET)
            .expect("invariant: the default bucket was added above");
        let default_bucket = BucketId::from_index(u16::try_from(default_index).map_err(|_| {
            Error::TooManyBuckets {
                max: usize::from(u16::MAX),
            }
        })?);
        if u16::try_from(names.len()).is_err() {
            return Err(Error::TooManyBuckets {
                max: usize::from(u16::MAX),
            });
        }
        let mycel_config = config.mycel.clone();
        let cluster = Cluster::start(node, config).await.map_err(cluster_error)?;
        tracing::debug!(id = %cluster.id(), "mycel cluster backend started");
        Ok(Self {
            inner: Arc::new(Inner {
                config: mycel_config,
                default_bucket,
                backend: Backend::Cluster(Clustered {
                    cluster,
                    names,
                    options,
                }),
            }),
        })
    }

    /// The backend this handle runs on.
    pub fn mode(&self) -> Mode {
        match self.inner.backend {
            Backend::Local(_) => Mode::Standalone,
            Backend::Cluster(_) => Mode::Cluster,
        }
    }

    /// The cluster layer underneath, in cluster mode: membership, routing status,
    /// readiness, maintenance mode and the nodosum node.
    pub fn cluster(&self) -> Option<&Cluster> {
        match &self.inner.backend {
            Backend::Local(_) => None,
            Backend::Cluster(c) => Some(&c.cluster),
        }
    }

    /// The configuration the handle was started with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Cluster mode: hands this node's partitions off to the other members (see
    /// [`Cluster::leave`]), waiting at most `timeout`. The handle keeps serving through
    /// the other members meanwhile. Standalone: nothing to hand off, returns at once.
    pub async fn leave(&self, timeout: Duration) -> Result<(), Error> {
        match &self.inner.backend {
            Backend::Local(_) => Ok(()),
            Backend::Cluster(c) => c.cluster.leave(timeout).await.map_err(cluster_error),
        }
    }

    /// Stops this handle's backend.
    ///
    /// Standalone: stops the reaper at once; data stays readable through other handles
    /// until the last one is dropped. Cluster: waits (at most `drain`) for the other
    /// clones of the handle to be dropped, then stops the cluster layer and shuts the node
    /// down gracefully (call [`leave`](Self::leave) first to hand off); if other clones
    /// are still alive after `drain`, the last of them stops everything at once when
    /// dropped (peers then see a failure).
    pub async fn shutdown(self, drain: Duration) {
        let deadline = tokio::time::Instant::now() + drain;
        let mut inner = self.inner;
        loop {
            match Arc::try_unwrap(inner) {
                Ok(Inner {
                    backend: Backend::Cluster(c),
                    ..
                }) => {
                    c.cluster.shutdown(drain).await;
                    return;
                }
                Ok(Inner {
                    backend: Backend::Local(local),
                    ..
                }) => {
                    local.stop_reaper();
                    return;
                }
                Err(shared) => {
                    if let Backend::Local(local) = &shared.backend {
                        local.stop_reaper();
                        return;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        tracing::warn!(
                            "handle still in use; the cluster layer stops when the last clone is dropped"
                        );
                        return;
                    }
                    inner = shared;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn local(&self) -> Option<MutexGuard<'_, Store>> {
        match &self.inner.backend {
            Backend::Local(l) => Some(lock(&l.store)),
            Backend::Cluster(_) => None,
        }
    }

    /// The [`DEFAULT_BUCKET`].
    pub fn default_bucket(&self) -> BucketId {
        self.inner.default_bucket
    }

    /// Creates a bucket ([`Error::BucketExists`] if the name is taken). Cluster mode:
    /// buckets are fixed by the configuration, so this answers [`Error::BucketExists`]
    /// for a configured one and [`Error::Unsupported`] otherwise.
    pub async fn create_bucket(
        &self,
        name: &str,
        options: BucketOptions,
    ) -> Result<BucketId, Error> {
        match &self.inner.backend {
            Backend::Local(l) => lock(&l.store).create_bucket(name, options),
            Backend::Cluster(c) if c.names.iter().any(|n| &**n == name) => {
                Err(Error::BucketExists {
                    name: name.to_owned(),
                })
            }
            Backend::Cluster(_) => Err(Error::Unsupported {
                operation: "create_bucket",
            }),
        }
    }

    /// The bucket called `name` ([`Error::BucketUnknown`] if there is none).
    pub async fn bucket(&self, name: &str) -> Result<BucketId, Error> {
        match &self.inner.backend {
            Backend::Local(l) => lock(&l.store).bucket(name),
            Backend::Cluster(c) => c
                .names
                .iter()
                .position(|n| &**n == name)
                .and_then(|i| u16::try_from(i).ok())
                .map(BucketId::from_index)
                .ok_or_else(|| Error::BucketUnknown {
                    name: name.to_owned(),
                }),
        }
    }

    /// The name of bucket `id`.
    pub async fn bucket_name(&self, id: BucketId) -> Result<Arc<str>, Error> {
        let unknown = || Error::BucketUnknown {
            name: format!("{id:?}"),
        };
        match &self.inner.backend {
            Backend::Local(l) => lock(&l.store).bucket_name(id).cloned().ok_or_else(unknown),
            Backend::Cluster(c) => c.names.get(id.index()).cloned().ok_or_else(unknown),
        }
    }

    /// The value of `key`, if it exists and has not expired (cluster: read at the
    /// primary).
    pub async fn get(&self, bucket: BucketId, key: &[u8]) -> Result<Option<Bytes>, Error> {
        match &self.inner.backend {
            Backend::Local(l) => Ok(lock(&l.store).get(bucket, key, now())),
            Backend::Cluster(c) => c
                .cluster
                .get(c.name(bucket)?, Bytes::copy_from_slice(key))
                .await
                .map_err(cluster_error),
        }
    }

    /// Sets `key` to `value` as Redis `SET` does (expiry, `NX`/`XX`, `GET`). Cluster:
    /// acknowledged once every alive backup applied it.
    pub async fn set(
        &self,
        bucket: BucketId,
        key: Bytes,
        value: Bytes,
        options: SetOptions,
    ) -> Result<SetReply, Error> {
        match &self.inner.backend {
            Backend::Local(l) => {
                let outcome =
                    lock(&l.store).set(bucket, key, value, options, now(), STANDALONE_EPOCH)?;
                Ok(SetReply {
                    written: outcome.write.is_some(),
                    previous: outcome.previous,
                })
            }
            Backend::Cluster(c) => {
                let r = c
                    .cluster
                    .set(c.name(bucket)?, key, value, options)
                    .await
                    .map_err(cluster_error)?;
                Ok(SetReply {
                    written: r.applied,
                    previous: r.previous,
                })
            }
        }
    }

    /// Deletes `key`; whether it existed.
    pub async fn delete(&self, bucket: BucketId, key: Bytes) -> Result<bool, Error> {
        match &self.inner.backend {
            Backend::Local(l) => Ok(lock(&l.store)
                .delete(bucket, key, now(), STANDALONE_EPOCH)?
                .is_some()),
            Backend::Cluster(c) => c
                .cluster
                .delete(c.name(bucket)?, key)
                .await
                .map_err(cluster_error),
        }
    }

    /// Deletes `key` and returns the value it had (Redis `GETDEL`): atomic (in a cluster,
    /// one transaction at the key's primary).
    pub async fn get_del(&self, bucket: BucketId, key: Bytes) -> Result<Option<Bytes>, Error> {
        if let Some(mut store) = self.local() {
            let now = now();
            let value = store.get(bucket, &key, now);
            if value.is_some() {
                store.delete(bucket, key, now, STANDALONE_EPOCH)?;
            }
            return Ok(value);
        }
        let delete = BatchOp::Delete { key: key.clone() };
        self.read_then(bucket, key, delete).await
    }

    /// Cluster mode: `key`'s value, read in one transaction with `change` (an operation
    /// on the same key) made right after it, so that no write lands between the two.
    /// While a member runs a version from before transactions: the read, then `change`
    /// if the key was there (a write landing between them is then changed too).
    async fn read_then(
        &self,
        bucket: BucketId,
        key: Bytes,
        change: BatchOp,
    ) -> Result<Option<Bytes>, Error> {
        let Backend::Cluster(c) = &self.inner.backend else {
            return Err(Error::Unsupported {
                operation: "read_then",
            });
        };
        let name = c.name(bucket)?;
        let read = BatchOp::Get { key: key.clone() };
        match c
            .cluster
            .transaction(name, vec![read, change.clone()])
            .await
        {
            Ok(results) => match <[_; 2]>::try_from(results) {
                Ok([Ok(BatchReply::Value(value)), Ok(_)]) => Ok(value),
                Ok([Err(e), _] | [_, Err(e)]) => Err(cluster_error(e)),
                _ => Err(Error::Cluster {
                    reason: "unexpected answer to a read and a change".to_owned(),
                }),
            },
            Err(ClusterError::OlderMember { .. }) => {
                let value = self.get(bucket, &key).await?;
                if value.is_some() {
                    let mut changed = c.cluster.batch(name, vec![change]).await;
                    changed.pop().transpose().map_err(cluster_error)?;
                }
                Ok(value)
            }
            Err(e) => Err(cluster_error(e)),
        }
    }

    /// Reads `key` and changes its expiry (Redis `GETEX`): atomic (in a cluster, one
    /// transaction at the key's primary).
    pub async fn get_ex(
        &self,
        bucket: BucketId,
        key: Bytes,
        action: GetEx,
    ) -> Result<Option<Bytes>, Error> {
        if let Some(mut store) = self.local() {
            let now = now();
            let value = store.get(bucket, &key, now);
            if value.is_some() {
                let at = match action {
                    GetEx::Keep => None,
                    GetEx::After(d) => Some(now.saturating_add(d)),
                    GetEx::At(at) => Some(at),
                    GetEx::Persist => {
                        store.persist(bucket, key.clone(), now, STANDALONE_EPOCH)?;
                        None
                    }
                };
                if let Some(at) = at {
                    store.expire(
                        bucket,
                        key,
                        at,
                        ExpireCondition::Always,
                        now,
                        STANDALONE_EPOCH,
                    )?;
                }
            }
            return Ok(value);
        }
        let expire = |after| BatchOp::Expire {
            key: key.clone(),
            after,
            condition: ExpireCondition::Always,
        };
        let change = match action {
            GetEx::Keep => return self.get(bucket, &key).await,
            GetEx::After(d) => expire(d),
            GetEx::At(at) => expire(until(at)),
            GetEx::Persist => BatchOp::Persist { key: key.clone() },
        };
        self.read_then(bucket, key, change).await
    }

    /// Whether `key` exists.
    pub async fn exists(&self, bucket: BucketId, key: &[u8]) -> Result<bool, Error> {
        match &self.inner.backend {
            Backend::Local(l) => Ok(lock(&l.store).exists(bucket, key, now())),
            Backend::Cluster(c) => c
                .cluster
                .exists(c.name(bucket)?, Bytes::copy_from_slice(key))
                .await
                .map_err(cluster_error),
        }
    }

    /// Makes `key` expire `after` from now (zero deletes it, as Redis does for a
    /// non-positive `EXPIRE`); whether the key existed. Cluster: "now" is the primary's
    /// clock.
    pub async fn expire(
        &self,
        bucket: BucketId,
        key: Bytes,
        after: Duration,
    ) -> Result<bool, Error> {
        self.expire_if(bucket, key, after, ExpireCondition::Always)
            .await
    }

    /// [`expire`](Self::expire) if `condition` holds (Redis 7's `NX`, `XX`, `GT`, `LT`);
    /// whether the key existed and the condition held.
    pub async fn expire_if(
        &self,
        bucket: BucketId,
        key: Bytes,
        after: Duration,
        condition: ExpireCondition,
    ) -> Result<bool, Error> {
        match &self.inner.backend {
            Backend::Local(l) => {
                let now = now();
                let at = now.saturating_add(after);
                Ok(lock(&l.store)
                    .expire(bucket, key, at, condition, now, STANDALONE_EPOCH)?
                    .is_some())
            }
            Backend::Cluster(c) => c
                .cluster
                .expire_if(c.name(bucket)?, key, after, condition)
                .await
                .map_err(cluster_error),
        }
    }

    /// Makes `key` expire at `at` (a time not in the future deletes it); whether the key
    /// existed. Cluster: sent as the time from now on this node's clock to `at`, so the
    /// clock offset between this node and the primary shifts the expiry.
    pub async fn expire_at(
        &self,
        bucket: BucketId,
        key: Bytes,
        at: Timestamp,
    ) -> Result<bool, Error> {
        self.expire_at_if(bucket, key, at, ExpireCondition::Always)
            .await
    }

    /// [`expire_at`](Self::expire_at) if `condition` holds (Redis 7's `EXPIREAT` options);
    /// whether the key existed and the condition held.
    pub async fn expire_at_if(
        &self,
        bucket: BucketId,
        key: Bytes,
        at: Timestamp,
        condition: ExpireCondition,
    ) -> Result<bool, Error> {
        match &self.inner.backend {
            Backend::Local(l) => Ok(lock(&l.store)
                .expire(bucket, key, at, condition, now(), STANDALONE_EPOCH)?
                .is_some()),
            Backend::Cluster(_) => self.expire_if(bucket, key, until(at), condition).await,
        }
    }

    /// Removes `key`'s expiry; whether it had one.
    pub async fn persist(&self, bucket: BucketId, key: Bytes) -> Result<bool, Error> {
        match &self.inner.backend {
            Backend::Local(l) => Ok(lock(&l.store)
                .persist(bucket, key, now(), STANDALONE_EPOCH)?
                .is_some()),
            Backend::Cluster(c) => c
                .cluster
                .persist(c.name(bucket)?, key)
                .await
                .map_err(cluster_error),
        }
    }

    /// `key`'s time to live.
    pub async fn ttl(&self, bucket: BucketId, key: &[u8]) -> Result<Ttl, Error> {
        match &self.inner.backend {
            Backend::Local(l) => Ok(lock(&l.store).ttl(bucket, key, now())),
            Backend::Cluster(c) => c
                .cluster
                .ttl(c.name(bucket)?, Bytes::copy_from_slice(key))
                .await
                .map_err(cluster_error),
        }
    }

    /// Adds `delta` to the decimal integer in `key` (a missing key counts as 0); the new
    /// value. Atomic at the owner.
    pub async fn incr_by(&self, bucket: BucketId, key: Bytes, delta: i64) -> Result<i64, Error> {
        match &self.inner.backend {
            Backend::Local(l) => {
                let (value, _write) =
                    lock(&l.store).incr_by(bucket, key, delta, now(), STANDALONE_EPOCH)?;
                Ok(value)
            }
            Backend::Cluster(c) => c
                .cluster
                .incr_by(c.name(bucket)?, key, delta)
                .await
                .map_err(cluster_error),
        }
    }

    /// Copies `from`'s value and expiry to `to` (Redis `COPY`; with `replace` false an
    /// existing `to` is left alone); whether it was copied (never onto itself). Cluster:
    /// both keys must be of one partition ([`Error::CrossSlot`]).
    pub async fn copy(
        &self,
        bucket: BucketId,
        from: Bytes,
        to: Bytes,
        replace: bool,
    ) -> Result<bool, Error> {
        if from == to {
            return Ok(false);
        }
        match &self.inner.backend {
            Backend::Local(l) => Ok(lock(&l.store)
                .copy(bucket, &from, to, replace, now(), STANDALONE_EPOCH)?
                .is_some()),
            Backend::Cluster(c) => c
                .cluster
                .copy(c.name(bucket)?, from, to, replace)
                .await
                .map_err(cluster_error),
        }
    }

    /// Moves `from`'s value and expiry to `to`, atomically (Redis `RENAME`; with `replace`
    /// false `RENAMENX`, which leaves an existing `to` alone). Cluster: both keys must be
    /// of one partition ([`Error::CrossSlot`]); a hash tag (`{tag}`) keeps keys together.
    pub async fn rename(
        &self,
        bucket: BucketId,
        from: Bytes,
        to: Bytes,
        replace: bool,
    ) -> Result<Renamed, Error> {
        match &self.inner.backend {
            Backend::Local(l) => {
                let (done, _writes) =
                    lock(&l.store).rename(bucket, from, to, replace, now(), STANDALONE_EPOCH)?;
                Ok(done)
            }
            Backend::Cluster(c) => c
                .cluster
                .rename(c.name(bucket)?, from, to, replace)
                .await
                .map_err(cluster_error),
        }
    }

    /// Adds `increment` to the number stored in `key` with Redis's `INCRBYFLOAT`
    /// arithmetic ([`crate::ldouble`]: a missing key counts as 0, an existing one keeps
    /// its expiry); the new value, as stored. [`Error::NotAFloat`] when the stored value
    /// is no number, [`Error::NotFinite`] when the sum is infinite. Atomic at the owner.
    pub async fn incr_by_float(
        &self,
        bucket: BucketId,
        key: Bytes,
        increment: LongDouble,
    ) -> Result<Bytes, Error> {
        match &self.inner.backend {
            Backend::Local(l) => {
                let (value, _write) = lock(&l.store).incr_by_float(
                    bucket,
                    key,
                    increment,
                    now(),
                    STANDALONE_EPOCH,
                )?;
                Ok(value)
            }
            Backend::Cluster(c) => c
                .cluster
                .incr_by_float(c.name(bucket)?, key, increment)
                .await
                .map_err(cluster_error),
        }
    }

    /// Appends `value` to the value of `key` (a missing key is created; an existing one
    /// keeps its expiry); the new length. Atomic at the owner.
    pub async fn append(&self, bucket: BucketId, key: Bytes, value: Bytes) -> Result<usize, Error> {
        match &self.inner.backend {
            Backend::Local(l) => {
                let (len, _write) =
                    lock(&l.store).append(bucket, key, &value, now(), STANDALONE_EPOCH)?;
                Ok(len)
            }
            Backend::Cluster(c) => c
                .cluster
                .append(c.name(bucket)?, key, value)
                .await
                .map_err(cluster_error),
        }
    }

    /// Writes `value` into the value of `key` from byte `offset` on, padding a shorter
    /// value with zero bytes (Redis `SETRANGE`: a missing key is created unless `value`
    /// is empty; an existing one keeps its expiry); the new length. Atomic at the owner.
    pub async fn set_range(
        &self,
        bucket: BucketId,
        key: Bytes,
        offset: u64,
        value: Bytes,
    ) -> Result<usize, Error> {
        match &self.inner.backend {
            Backend::Local(l) => {
                let (len, _write) = lock(&l.store).set_range(
                    bucket,
                    key,
                    offset,
                    &value,
                    now(),
                    STANDALONE_EPOCH,
                )?;
                Ok(len)
            }
            Backend::Cluster(c) => c
                .cluster
                .set_range(c.name(bucket)?, key, offset, value)
                .await
                .map_err(cluster_error),
        }
    }

    /// The values of `keys`, in order. Standalone: under one lock (one consistent read).
    /// Cluster: one read per primary, consistent per primary, not across primaries.
    pub async fn mget(
        &self,
        bucket: BucketId,
        keys: &[Bytes],
    ) -> Result<Vec<Option<Bytes>>, Error> {
        match &self.inner.backend {
            Backend::Local(l) => {
                let now = now();
                let mut store = lock(&l.store);
                Ok(keys.iter().map(|k| store.get(bucket, k, now)).collect())
            }
            Backend::Cluster(c) => c
                .cluster
                .mget(c.name(bucket)?, keys.to_vec())
                .await
                .map_err(cluster_error),
        }
    }

    /// Sets every pair. Sizes (the key and value limits and the memory budget) are
    /// checked for every pair before the first write, so a pair too large writes nothing.
    /// Standalone: all or nothing, and no other operation sees a partial `mset`. Cluster:
    /// each primary's pairs are written in requests of at most
    /// [`ClusterConfig::page_bytes`], each
    /// atomic; a failure after the size check (a timeout, a lost quorum) may leave some
    /// requests applied. The cluster check uses this node's store limits, which every
    /// node of a cluster is expected to share.
    pub async fn mset(&self, bucket: BucketId, pairs: Vec<(Bytes, Bytes)>) -> Result<(), Error> {
        let bucket_max = match &self.inner.backend {
            Backend::Local(l) => lock(&l.store)
                .bucket_options(bucket)
                .map(|o| o.max_value_len),
            Backend::Cluster(c) => c.options.get(bucket.index()).map(|o| o.max_value_len),
        }
        .ok_or_else(|| Error::BucketUnknown {
            name: format!("{bucket:?}"),
        })?;
        for (k, v) in &pairs {
            self.inner
                .config
                .store
                .check_size(bucket_max, k.len(), v.len())?;
        }
        match &self.inner.backend {
            Backend::Local(l) => {
                let now = now();
                let mut store = lock(&l.store);
                for (k, v) in pairs {
                    store.set(bucket, k, v, SetOptions::default(), now, STANDALONE_EPOCH)?;
                }
                Ok(())
            }
            Backend::Cluster(c) => c
                .cluster
                .mset(c.name(bucket)?, pairs)
                .await
                .map_err(cluster_error),
        }
    }

    /// Sets every pair if none of the keys exists (Redis `MSETNX`); whether they were
    /// set. Atomic: standalone under one lock; cluster at the keys' primary, so all keys
    /// must be of one partition ([`Error::CrossSlot`]; a hash tag keeps keys together).
    pub async fn mset_nx(
        &self,
        bucket: BucketId,
        pairs: Vec<(Bytes, Bytes)>,
    ) -> Result<bool, Error> {
        match &self.inner.backend {
            Backend::Local(l) => Ok(lock(&l.store)
                .set_all_absent(bucket, &pairs, now(), STANDALONE_EPOCH)?
                .is_some()),
            Backend::Cluster(c) => c
                .cluster
                .mset_nx(c.name(bucket)?, pairs)
                .await
                .map_err(cluster_error),
        }
    }

    /// Runs single-key operations on `bucket` and answers each, in order; each succeeds
    /// or fails on its own (a pipeline's worth of commands at once).
    ///
    /// Operations on the same key take effect in the order given. Standalone: all under
    /// one hold of the store's lock. Cluster: see [`Cluster::batch`]; the operations for
    /// one primary travel in one message and different primaries are served at the same
    /// time, so a pipeline costs about one round trip rather than one per operation.
    pub async fn batch(
        &self,
        bucket: BucketId,
        ops: Vec<BatchOp>,
    ) -> Vec<Result<BatchReply, Error>> {
        match &self.inner.backend {
            Backend::Local(l) => {
                let now = now();
                let mut store = lock(&l.store);
                ops.into_iter()
                    .map(|op| op.apply(&mut store, bucket, now, STANDALONE_EPOCH))
                    .collect()
            }
            Backend::Cluster(c) => {
                let name = match c.name(bucket) {
                    Ok(n) => n,
                    Err(e) => return ops.iter().map(|_| Err(e.clone())).collect(),
                };
                c.cluster
                    .batch(name, ops)
                    .await
                    .into_iter()
                    .map(|r| r.map_err(cluster_error))
                    .collect()
            }
        }
    }

    /// Runs `ops` on `bucket` as one transaction (Redis `MULTI` ... `EXEC`): in order, no
    /// other operation between them, each then succeeding or failing on its own. In
    /// cluster mode every key must be in one partition ([`Error::CrossSlot`] otherwise,
    /// nothing run; see [`Cluster::transaction`]); standalone, any keys.
    ///
    /// A [`BatchOp::Unchanged`] that does not hold stops the transaction: the operations
    /// after it answer [`Error::WatchedKeyChanged`] without running (see
    /// [`transaction_if`](Self::transaction_if)).
    pub async fn transaction(
        &self,
        bucket: BucketId,
        ops: Vec<BatchOp>,
    ) -> Result<Vec<Result<BatchReply, Error>>, Error> {
        match &self.inner.backend {
            Backend::Local(l) => {
                let now = now();
                // Held for the whole transaction.
                let mut store = lock(&l.store);
                let mut held = true;
                Ok(ops
                    .into_iter()
                    .map(|op| {
                        if !held {
                            return Err(Error::WatchedKeyChanged);
                        }
                        let check = matches!(op, BatchOp::Unchanged { .. });
                        let result = op.apply(&mut store, bucket, now, STANDALONE_EPOCH);
                        held = !check || matches!(result, Ok(BatchReply::Bool(true)));
                        result
                    })
                    .collect())
            }
            Backend::Cluster(c) => {
                let name = c.name(bucket)?;
                let results = c
                    .cluster
                    .transaction(name, ops)
                    .await
                    .map_err(cluster_error)?;
                Ok(results
                    .into_iter()
                    .map(|r| r.map_err(cluster_error))
                    .collect())
            }
        }
    }

    /// The [`KeyStamp`] of each of `keys`, read together at their primary (Redis
    /// `WATCH`): what [`transaction_if`](Self::transaction_if) compares. In cluster mode
    /// the keys must be of one partition ([`Error::CrossSlot`]), and a primary from
    /// before `WATCH` is refused ([`Error::Cluster`], naming it).
    pub async fn stamps(&self, bucket: BucketId, keys: Vec<Bytes>) -> Result<Vec<KeyStamp>, Error> {
        let ops = keys.into_iter().map(|key| BatchOp::Stamp { key }).collect();
        self.transaction(bucket, ops)
            .await?
            .into_iter()
            .map(|result| match result {
                Ok(BatchReply::Stamp(stamp)) => Ok(stamp),
                Err(e) => Err(e),
                Ok(_) => Err(Error::Cluster {
                    reason: "unexpected answer to a key stamp".to_owned(),
                }),
            })
            .collect()
    }

    /// [`transaction`](Self::transaction) if no `watched` key changed since its stamp
    /// (from [`stamps`](Self::stamps); see [`Store::unchanged`]), checked in the
    /// transaction itself, so no write can come between the check and the operations:
    /// Redis `WATCH` ... `EXEC`. `None` when one changed; then nothing ran. An error of a
    /// check is the whole transaction's, and then nothing ran either. In cluster mode the
    /// watched keys must be in the operations' partition.
    pub async fn transaction_if(
        &self,
        bucket: BucketId,
        watched: Vec<(Bytes, KeyStamp)>,
        ops: Vec<BatchOp>,
    ) -> Result<Option<Vec<Result<BatchReply, Error>>>, Error> {
        let checks = watched.len();
        let all = watched
            .into_iter()
            .map(|(key, stamp)| BatchOp::Unchanged { key, stamp })
            .chain(ops)
            .collect();
        let mut results = self.transaction(bucket, all).await?;
        let ran = results.split_off(checks.min(results.len()));
        for check in results {
            match check {
                Ok(BatchReply::Bool(true)) => {}
                Ok(BatchReply::Bool(false)) => return Ok(None),
                Err(e) => return Err(e),
                Ok(_) => {
                    return Err(Error::Cluster {
                        reason: "unexpected answer to a watched key's check".to_owned(),
                    });
                }
            }
        }
        Ok(Some(ran))
    }

    /// One step of a cursor scan over `bucket`'s keys, Redis `SCAN`-style: start with
    /// cursor 0 and pass each returned [`ScanPage::cursor`] to the next step, until it is
    /// 0 again.
    ///
    /// The cursor is where the next step starts: a partition (its low 16 bits) and a
    /// position in that partition's [`scan_order`](crate::store::scan_order) (the bits
    /// above). A step reads partitions (cluster: each at its primary), `count` of them
    /// (at least one), then twice as many and so on while fewer than `count` keys matched
    /// `pattern` (a [`crate::glob`] pattern; all keys when `None`), so a step on a sparse
    /// keyspace still makes progress. A partition with more keys than one page (1 MiB
    /// standalone, [`ClusterConfig::page_bytes`] in a cluster) ends the step within it.
    /// A key present from the first step to the last is returned exactly once, one added
    /// or removed meanwhile at most once. A cursor past the last partition ends the scan.
    pub async fn scan(
        &self,
        bucket: BucketId,
        cursor: u64,
        count: usize,
        pattern: Option<&[u8]>,
    ) -> Result<ScanPage, Error> {
        let partitions = self.inner.config.store.partitioning.count();
        let Some(mut start) = u16::try_from(cursor & 0xffff)
            .ok()
            .filter(|&p| p < partitions)
        else {
            return Ok(ScanPage {
                cursor: 0,
                keys: Vec::new(),
            });
        };
        let mut from = cursor >> 16;
        let pattern = pattern.map(Bytes::copy_from_slice);
        let requested = u16::try_from(count).unwrap_or(u16::MAX).max(1);
        // A step that resumes within a partition reads that partition alone first: it is
        // large, and the partitions after it would be read again after each of its pages.
        let mut width = if from > 0 { 1 } else { requested };
        let mut keys = Vec::new();
        loop {
            let end = start.saturating_add(width).min(partitions);
            let stopped = match &self.inner.backend {
                Backend::Local(l) => {
                    let now = now();
                    let store = lock(&l.store);
                    (start..end).find_map(|p| {
                        let from = if p == start { from } else { 0 };
                        let pattern = pattern.as_deref();
                        let (page, next) = store.keys(
                            bucket,
                            Partition::new(p),
                            pattern,
                            from,
                            SCAN_PAGE_BYTES,
                            now,
                        );
                        keys.extend(page);
                        next.map(|next| (p, next))
                    })
                }
                Backend::Cluster(c) => {
                    let (page, stopped) = c
                        .cluster
                        .keys(c.name(bucket)?, start..end, from, pattern.clone())
                        .await
                        .map_err(cluster_error)?;
                    keys.extend(page);
                    stopped
                }
            };
            if let Some((p, next)) = stopped {
                // `next` is above a listed key's order, so the cursor is not 0.
                return Ok(ScanPage {
                    cursor: (next << 16) | u64::from(p),
                    keys,
                });
            }
            start = end;
            if start == partitions || keys.len() >= count {
                break;
            }
            width = if from > 0 {
                requested
            } else {
                width.saturating_mul(2)
            };
            from = 0;
        }
        Ok(ScanPage {
            cursor: if start == partitions {
                0
            } else {
                u64::from(start)
            },
            keys,
        })
    }

    /// Live keys held (all buckets). Cluster: the whole cluster's count (a scan on every
    /// member; approximate while partitions move).
    pub async fn len(&self) -> Result<usize, Error> {
        match &self.inner.backend {
            Backend::Local(l) => Ok(lock(&l.store).len()),
            Backend::Cluster(c) => {
                let n = c.cluster.len().await.map_err(cluster_error)?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            }
        }
    }

    /// Whether no live keys are held (see [`len`](Self::len)).
    pub async fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len().await? == 0)
    }

    /// Removes every key of every bucket (Redis `FLUSHDB`); buckets stay. Cluster mode:
    /// every partition's primary deletes its keys, replicated as any delete (see
    /// [`Cluster::flush`]: not atomic across partitions).
    pub async fn flush(&self) -> Result<(), Error> {
        match &self.inner.backend {
            Backend::Local(l) => {
                lock(&l.store).clear();
                Ok(())
            }
            Backend::Cluster(c) => c.cluster.flush().await.map(drop).map_err(cluster_error),
        }
    }

    /// Counters and gauges of the local store. Cluster mode: [`Error::Unsupported`] (this
    /// node's store is not the cache's contents; see [`local_stats`](Self::local_stats)
    /// for its figures).
    pub async fn stats(&self) -> Result<Stats, Error> {
        let store = self
            .local()
            .ok_or(Error::Unsupported { operation: "stats" })?;
        Ok(store_stats(&store))
    }

    /// Figures of this node's local store in either mode: standalone, the same as
    /// [`stats`](Self::stats); cluster, what this node holds (its primaries, its backups,
    /// and copies not yet released), not the cluster's total.
    pub async fn local_stats(&self) -> Stats {
        match &self.inner.backend {
            Backend::Local(l) => store_stats(&lock(&l.store)),
            Backend::Cluster(c) => c.cluster.local_stats(),
        }
    }

    /// Runs one reaper step now (tests and tools; the background task does this every
    /// [`REAP_INTERVAL`]). Returns how many expired entries were removed. Cluster mode:
    /// the cluster layer reaps in its own background step; this does nothing and
    /// returns 0.
    pub async fn reap_now(&self) -> usize {
        let Some(mut store) = self.local() else {
            return 0;
        };
        let mut rng = StdRng::seed_from_u64(now().as_millis());
        store.reap(now(), &mut rng, DEFAULT_REAP_SAMPLE).removed
    }
}

/// The handle's figures of a store.
pub(crate) fn store_stats(store: &Store) -> Stats {
    let s = store.stats();
    Stats {
        keys: store.len(),
        expires: s.with_ttl.saturating_sub(s.tombstones),
        used_bytes: s.weight,
        max_bytes: s.capacity,
        evicted: s.evicted,
        expired: s.expired,
    }
}

/// The background reaper: one sampled expiry step every [`REAP_INTERVAL`], until the last
/// handle is gone.
async fn reap(inner: Weak<Inner>) {
    let mut rng = StdRng::seed_from_u64(now().as_millis());
    let mut tick = tokio::time::interval(REAP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let Backend::Local(local) = &inner.backend else {
            return;
        };
        let stats = lock(&local.store).reap(now(), &mut rng, DEFAULT_REAP_SAMPLE);
        if stats.removed > 0 {
            tracing::trace!(
                removed = stats.removed,
                rounds = stats.rounds,
                "reaped expired keys"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::store::{Condition, Expiry};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    }

    /// A full scan returns every key of the bucket exactly once, whatever the step size;
    /// a pattern filters; a cursor past the end ends the scan.
    #[test]
    fn scan_returns_every_key_once() {
        rt().block_on(async {
            let m = Mycel::standalone(Config::default()).await.expect("valid");
            let b = m.default_bucket();
            let other = m
                .create_bucket("other", BucketOptions::default())
                .await
                .expect("bucket");
            let all: BTreeSet<Bytes> = (0..500).map(|i| Bytes::from(format!("k{i}"))).collect();
            for k in &all {
                m.set(b, k.clone(), "v".into(), SetOptions::default())
                    .await
                    .expect("set");
            }
            m.set(other, "elsewhere".into(), "v".into(), SetOptions::default())
                .await
                .expect("set");
            let scan = |count: usize, pattern: Option<&'static [u8]>| {
                let m = m.clone();
                async move {
                    let (mut cursor, mut steps, mut keys) = (0, 0, Vec::new());
                    loop {
                        let page = m.scan(b, cursor, count, pattern).await.expect("scan");
                        keys.extend(page.keys);
                        steps += 1;
                        cursor = page.cursor;
                        if cursor == 0 {
                            return (keys, steps);
                        }
                    }
                }
            };
            for count in [1, 10, 1000, 100_000] {
                let (mut keys, steps) = scan(count, None).await;
                keys.sort();
                assert_eq!(
                    keys,
                    all.iter().cloned().collect::<Vec<_>>(),
                    "COUNT {count}"
                );
                assert!(steps <= 4096, "{steps} steps");
            }
            // 500 keys over 4,096 partitions: a step of one partition widens until it
            // finds one, so the scan takes far fewer steps than partitions.
            assert!(scan(1, None).await.1 < 1000);
            let (keys, _) = scan(10, Some(b"k1?")).await;
            assert_eq!(keys.len(), 10, "{keys:?}");
            assert!(keys.iter().all(|k| k.len() == 3 && k.starts_with(b"k1")));
            assert!(
                m.scan(b, 4096, 10, None).await.expect("scan")
                    == ScanPage {
                        cursor: 0,
                        keys: Vec::new(),
                    }
            );
            assert_eq!(m.scan(b, u64::MAX, 10, None).await.expect("scan").cursor, 0);
        });
    }

    #[test]
    fn standalone_serves_the_method_set() {
        rt().block_on(async {
            let m = Mycel::standalone(Config::default()).await.expect("valid");
            let b = m.default_bucket();
            assert_eq!(m.get(b, b"k").await, Ok(None));
            let r = m
                .set(b, "k".into(), "v".into(), SetOptions::default())
                .await
                .expect("set");
            assert!(r.written);
            let nx = SetOptions {
                condition: Condition::IfAbsent,
                get: true,
                ..SetOptions::default()
            };
            let r = m.set(b, "k".into(), "w".into(), nx).await.expect("set");
            assert_eq!((r.written, r.previous), (false, Some(Bytes::from("v"))));
            assert_eq!(m.incr_by(b, "n".into(), 5).await, Ok(5));
            assert_eq!(m.incr_by(b, "k".into(), 1).await, Err(Error::NotAnInteger));
            m.mset(b, vec![("a".into(), "1".into()), ("b".into(), "2".into())])
                .await
                .expect("mset");
            let got = m
                .mget(b, &["a".into(), "x".into(), "b".into()])
                .await
                .expect("mget");
            assert_eq!(got, vec![Some("1".into()), None, Some("2".into())]);
            assert_eq!(m.len().await, Ok(4));
            assert!(
                m.expire(b, "a".into(), Duration::from_secs(100))
                    .await
                    .expect("expire")
            );
            assert!(matches!(m.ttl(b, b"a").await, Ok(Ttl::Expires { .. })));
            assert_eq!(m.stats().await.expect("stats").expires, 1);
            assert_eq!(m.persist(b, "a".into()).await, Ok(true));
            assert_eq!(m.ttl(b, b"a").await, Ok(Ttl::Persistent));
            assert_eq!(m.delete(b, "a".into()).await, Ok(true));
            assert_eq!(m.delete(b, "a".into()).await, Ok(false));
            assert_eq!(m.get_del(b, "b".into()).await, Ok(Some("2".into())));
            assert_eq!(m.exists(b, b"b").await, Ok(false));
            m.flush().await.expect("flush");
            assert_eq!(m.len().await, Ok(0));
            m.shutdown(Duration::from_secs(1)).await;
        });
    }

    #[test]
    fn mset_is_all_or_nothing() {
        rt().block_on(async {
            let config = Config {
                store: crate::StoreConfig {
                    max_value_len: 4,
                    ..crate::StoreConfig::default()
                },
                ..Config::default()
            };
            let m = Mycel::standalone(config).await.expect("valid");
            let b = m.default_bucket();
            let r = m
                .mset(
                    b,
                    vec![("a".into(), "1".into()), ("b".into(), "too long".into())],
                )
                .await;
            assert_eq!(r, Err(Error::ValueTooLarge { len: 8, max: 4 }));
            assert_eq!(m.exists(b, b"a").await, Ok(false));
        });
        // Within the bucket's value limit but heavier than the memory budget allows.
        rt().block_on(async {
            let config = Config {
                store: crate::StoreConfig {
                    max_bytes: 256 * 1024,
                    max_value_len: 64 * 1024,
                    ..crate::StoreConfig::default()
                },
                ..Config::default()
            };
            let m = Mycel::standalone(config).await.expect("valid");
            let options = BucketOptions {
                max_value_len: Some(1024 * 1024),
                ..BucketOptions::default()
            };
            let b = m.create_bucket("large", options).await.expect("create");
            heavy_mset_writes_nothing(&m, b, 512 * 1024).await;
        });
    }

    /// An `mset` whose second pair, `heavy_len` bytes, is over the memory budget writes
    /// neither pair.
    async fn heavy_mset_writes_nothing(m: &Mycel, b: BucketId, heavy_len: usize) {
        let heavy = Bytes::from(vec![b'x'; heavy_len]);
        let r = m
            .mset(
                b,
                vec![("light".into(), "1".into()), ("heavy".into(), heavy)],
            )
            .await;
        assert!(matches!(r, Err(Error::ValueTooLarge { .. })), "{r:?}");
        assert_eq!(m.exists(b, b"light").await, Ok(false));
    }

    #[test]
    fn buckets_are_separate_keyspaces() {
        rt().block_on(async {
            let m = Mycel::standalone(Config::default()).await.expect("valid");
            let s = m
                .create_bucket("sessions", BucketOptions::default())
                .await
                .expect("create");
            assert_eq!(m.bucket("sessions").await, Ok(s));
            assert!(matches!(
                m.bucket("nope").await,
                Err(Error::BucketUnknown { .. })
            ));
            let d = m.default_bucket();
            m.set(s, "k".into(), "v".into(), SetOptions::default())
                .await
                .expect("set");
            assert_eq!(m.get(d, b"k").await, Ok(None));
            assert_eq!(&*m.bucket_name(s).await.expect("name"), "sessions");
        });
    }

    #[test]
    fn invalid_config_is_refused_with_every_problem() {
        rt().block_on(async {
            let config = Config {
                replication_factor: 0,
                store: crate::StoreConfig {
                    max_key_len: 0,
                    ..crate::StoreConfig::default()
                },
                ..Config::default()
            };
            let Err(Error::InvalidConfig { problems }) = Mycel::standalone(config).await else {
                panic!("accepted an invalid config");
            };
            assert_eq!(problems.len(), 2);
        });
    }

    #[test]
    fn the_reaper_removes_expired_keys_without_reads() {
        rt().block_on(async {
            let m = Mycel::standalone(Config::default()).await.expect("valid");
            let b = m.default_bucket();
            let opts = SetOptions {
                expiry: Expiry::At(Timestamp::from_millis(1)),
                ..SetOptions::default()
            };
            m.set(b, "gone".into(), "v".into(), opts)
                .await
                .expect("set");
            assert_eq!(m.len().await, Ok(1));
            // The background task runs every REAP_INTERVAL; wait for it as a guard only.
            for _ in 0..300 {
                if m.stats().await.expect("stats").expired > 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(m.stats().await.expect("stats").expired, 1);
            assert_eq!(m.len().await, Ok(0));
        });
    }

    /// A one-node cluster on loopback: the handle serves the same method set through the
    /// cluster layer, composes GETDEL/GETEX, and refuses what has no cluster equivalent.
    #[test]
    fn cluster_backend_routes_the_method_set() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let ca = tempfile::tempdir().expect("temp dir");
            let id = nodosum::NodeId::new("handle-test").expect("valid id");
            let mut nc = nodosum::Config::development(id);
            nc.tls.dev_ca_dir = Some(ca.path().join("dev-ca"));
            let node = nodosum::Node::start(nc).await.expect("node starts");
            let mut config = ClusterConfig::default();
            config.mycel.stabilization_window = Duration::from_millis(100);
            config.bootstrap_delay = Duration::ZERO;
            config.buckets = vec![
                ("sessions".to_owned(), BucketOptions::default()),
                (
                    "large".to_owned(),
                    BucketOptions {
                        max_value_len: Some(512 * 1024),
                        ..BucketOptions::default()
                    },
                ),
            ];
            // A budget smaller than the large bucket's value limit, and requests smaller
            // than its values.
            config.mycel.store.max_bytes = 256 * 1024;
            config.mycel.store.max_value_len = 64 * 1024;
            config.page_bytes = 64 * 1024;
            let m = Mycel::start(node, config).await.expect("starts");
            assert_eq!(m.mode(), Mode::Cluster);
            let b = m.default_bucket();
            let s = m.bucket("sessions").await.expect("configured bucket");
            assert_ne!(b, s);
            assert_eq!(&*m.bucket_name(b).await.expect("name"), DEFAULT_BUCKET);
            // Operations wait for the first routing table (bounded by op_timeout).
            let r = m
                .set(b, "k".into(), "v".into(), SetOptions::default())
                .await
                .expect("set");
            assert!(r.written);
            assert_eq!(m.get(b, b"k").await, Ok(Some("v".into())));
            assert_eq!(m.get(s, b"k").await, Ok(None));
            assert_eq!(m.incr_by(b, "n".into(), 5).await, Ok(5));
            assert_eq!(m.incr_by(b, "n".into(), -2).await, Ok(3));
            m.mset(b, vec![("a".into(), "1".into()), ("b".into(), "2".into())])
                .await
                .expect("mset");
            assert_eq!(
                m.mget(b, &["a".into(), "x".into(), "b".into()]).await,
                Ok(vec![Some("1".into()), None, Some("2".into())])
            );
            assert_eq!(m.len().await, Ok(4));
            // A pair over the budget, in a request of its own after the first pair's:
            // refused before anything is sent.
            let large = m.bucket("large").await.expect("configured bucket");
            heavy_mset_writes_nothing(&m, large, 300 * 1024).await;
            assert_eq!(
                m.get_ex(b, "a".into(), GetEx::After(Duration::from_secs(100)))
                    .await,
                Ok(Some("1".into()))
            );
            assert!(matches!(m.ttl(b, b"a").await, Ok(Ttl::Expires { .. })));
            assert_eq!(
                m.get_ex(b, "a".into(), GetEx::Persist).await,
                Ok(Some("1".into()))
            );
            assert_eq!(m.ttl(b, b"a").await, Ok(Ttl::Persistent));
            let past = Timestamp::from_millis(1);
            assert_eq!(m.expire_at(b, "a".into(), past).await, Ok(true));
            assert_eq!(m.exists(b, b"a").await, Ok(false));
            assert_eq!(m.get_del(b, "b".into()).await, Ok(Some("2".into())));
            assert_eq!(m.get_del(b, "b".into()).await, Ok(None));
            assert_eq!(m.delete(b, "k".into()).await, Ok(true));
            m.set(b, "f".into(), "1".into(), SetOptions::default())
                .await
                .expect("set");
            assert_eq!(m.flush().await, Ok(()));
            assert_eq!(m.len().await, Ok(0));
            assert!(matches!(m.stats().await, Err(Error::Unsupported { .. })));
            assert!(matches!(
                m.create_bucket("sessions", BucketOptions::default()).await,
                Err(Error::BucketExists { .. })
            ));
            assert!(matches!(
                m.create_bucket("new", BucketOptions::default()).await,
                Err(Error::Unsupported { .. })
            ));
            let status = m.cluster().expect("cluster mode").status();
            assert!(status.epoch > 0 && status.ready);
            m.leave(Duration::from_secs(5))
                .await
                .expect("alone: nothing to hand off");
            m.shutdown(Duration::from_secs(5)).await;
        });
    }

    #[test]
    fn dropping_the_last_handle_stops_the_reaper() {
        rt().block_on(async {
            let m = Mycel::standalone(Config::default()).await.expect("valid");
            let weak = Arc::downgrade(&m.inner);
            drop(m);
            assert!(weak.upgrade().is_none());
        });
    }
}
