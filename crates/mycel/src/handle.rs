//! The async handle applications embed: [`Mycel`].
//!
//! Today the handle has one backend, [`Mycel::standalone`]: a local [`Store`] behind a
//! mutex, with the sampled expiry reaper running as a tokio task. Cluster mode
//! (`Mycel::start(node, config)`, once the `nodosum` facade exists) will keep this exact
//! method set and route each call to the key's partition owner, replicating writes to its
//! backups before they are acknowledged; code written against the handle (the `mycel`
//! binary's RESP front included) does not change.
//!
//! Locking discipline: the store's mutex is held for one store operation (or one
//! multi-key operation) and never across an `.await`, so hold times stay in the
//! sub-microsecond range and a tokio worker never blocks on another task's I/O.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::task::AbortHandle;

use crate::clock::Timestamp;
use crate::config::Config;
use crate::error::Error;
use crate::store::{BucketId, BucketOptions, DEFAULT_REAP_SAMPLE, SetOptions, Store, Ttl};

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
}

impl Mode {
    /// Lowercase name, for logs, `INFO` and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
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
/// buckets and integer errors occur, while cluster mode adds [`Error::NotOwner`],
/// [`Error::Timeout`] and [`Error::QuorumLost`].
#[derive(Debug, Clone)]
pub struct Mycel {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    store: Mutex<Store>,
    default_bucket: BucketId,
    reaper: Mutex<Option<AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(reaper) = lock(&self.reaper).take() {
            reaper.abort();
        }
    }
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
            store: Mutex::new(store),
            default_bucket,
            reaper: Mutex::new(None),
        });
        let task = tokio::spawn(reap(Arc::downgrade(&inner)));
        *lock(&inner.reaper) = Some(task.abort_handle());
        tracing::debug!("mycel standalone backend started");
        Ok(Self { inner })
    }

    /// The backend this handle runs on.
    pub fn mode(&self) -> Mode {
        Mode::Standalone
    }

    /// The configuration the handle was started with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Stops background work (the reaper). Data stays readable until the last handle is
    /// dropped. Idempotent.
    pub async fn shutdown(&self) {
        if let Some(reaper) = lock(&self.inner.reaper).take() {
            reaper.abort();
        }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.inner.store)
    }

    /// The [`DEFAULT_BUCKET`].
    pub fn default_bucket(&self) -> BucketId {
        self.inner.default_bucket
    }

    /// Creates a bucket ([`Error::BucketExists`] if the name is taken).
    pub async fn create_bucket(
        &self,
        name: &str,
        options: BucketOptions,
    ) -> Result<BucketId, Error> {
        self.store().create_bucket(name, options)
    }

    /// The bucket called `name` ([`Error::BucketUnknown`] if there is none).
    pub async fn bucket(&self, name: &str) -> Result<BucketId, Error> {
        self.store().bucket(name)
    }

    /// The name of bucket `id`.
    pub async fn bucket_name(&self, id: BucketId) -> Result<Arc<str>, Error> {
        self.store()
            .bucket_name(id)
            .cloned()
            .ok_or_else(|| Error::BucketUnknown {
                name: format!("{id:?}"),
            })
    }

    /// The value of `key`, if it exists and has not expired.
    pub async fn get(&self, bucket: BucketId, key: &[u8]) -> Result<Option<Bytes>, Error> {
        Ok(self.store().get(bucket, key, now()))
    }

    /// Sets `key` to `value` as Redis `SET` does (expiry, `NX`/`XX`, `GET`).
    pub async fn set(
        &self,
        bucket: BucketId,
        key: Bytes,
        value: Bytes,
        options: SetOptions,
    ) -> Result<SetReply, Error> {
        let outcome = self
            .store()
            .set(bucket, key, value, options, now(), STANDALONE_EPOCH)?;
        Ok(SetReply {
            written: outcome.write.is_some(),
            previous: outcome.previous,
        })
    }

    /// Deletes `key`; whether it existed.
    pub async fn delete(&self, bucket: BucketId, key: Bytes) -> Result<bool, Error> {
        Ok(self
            .store()
            .delete(bucket, key, now(), STANDALONE_EPOCH)?
            .is_some())
    }

    /// Deletes `key` and returns the value it had (Redis `GETDEL`).
    pub async fn get_del(&self, bucket: BucketId, key: Bytes) -> Result<Option<Bytes>, Error> {
        let now = now();
        let mut store = self.store();
        let value = store.get(bucket, &key, now);
        if value.is_some() {
            store.delete(bucket, key, now, STANDALONE_EPOCH)?;
        }
        Ok(value)
    }

    /// Reads `key` and changes its expiry (Redis `GETEX`), atomically.
    pub async fn get_ex(
        &self,
        bucket: BucketId,
        key: Bytes,
        action: GetEx,
    ) -> Result<Option<Bytes>, Error> {
        let now = now();
        let mut store = self.store();
        let value = store.get(bucket, &key, now);
        if value.is_some() {
            match action {
                GetEx::Keep => {}
                GetEx::After(d) => {
                    store.expire(bucket, key, now.saturating_add(d), now, STANDALONE_EPOCH)?;
                }
                GetEx::At(at) => {
                    store.expire(bucket, key, at, now, STANDALONE_EPOCH)?;
                }
                GetEx::Persist => {
                    store.persist(bucket, key, now, STANDALONE_EPOCH)?;
                }
            }
        }
        Ok(value)
    }

    /// Whether `key` exists.
    pub async fn exists(&self, bucket: BucketId, key: &[u8]) -> Result<bool, Error> {
        Ok(self.store().exists(bucket, key, now()))
    }

    /// Makes `key` expire `after` from now (zero deletes it, as Redis does for a
    /// non-positive `EXPIRE`); whether the key existed.
    pub async fn expire(
        &self,
        bucket: BucketId,
        key: Bytes,
        after: Duration,
    ) -> Result<bool, Error> {
        let now = now();
        let at = now.saturating_add(after);
        Ok(self
            .store()
            .expire(bucket, key, at, now, STANDALONE_EPOCH)?
            .is_some())
    }

    /// Makes `key` expire at `at` (a time not in the future deletes it); whether the key
    /// existed.
    pub async fn expire_at(
        &self,
        bucket: BucketId,
        key: Bytes,
        at: Timestamp,
    ) -> Result<bool, Error> {
        Ok(self
            .store()
            .expire(bucket, key, at, now(), STANDALONE_EPOCH)?
            .is_some())
    }

    /// Removes `key`'s expiry; whether it had one.
    pub async fn persist(&self, bucket: BucketId, key: Bytes) -> Result<bool, Error> {
        Ok(self
            .store()
            .persist(bucket, key, now(), STANDALONE_EPOCH)?
            .is_some())
    }

    /// `key`'s time to live.
    pub async fn ttl(&self, bucket: BucketId, key: &[u8]) -> Result<Ttl, Error> {
        Ok(self.store().ttl(bucket, key, now()))
    }

    /// Adds `delta` to the decimal integer in `key` (a missing key counts as 0); the new
    /// value. Atomic at the owner.
    pub async fn incr_by(&self, bucket: BucketId, key: Bytes, delta: i64) -> Result<i64, Error> {
        let (value, _write) = self
            .store()
            .incr_by(bucket, key, delta, now(), STANDALONE_EPOCH)?;
        Ok(value)
    }

    /// The values of `keys`, in order, under one lock (one consistent read).
    pub async fn mget(
        &self,
        bucket: BucketId,
        keys: &[Bytes],
    ) -> Result<Vec<Option<Bytes>>, Error> {
        let now = now();
        let mut store = self.store();
        Ok(keys.iter().map(|k| store.get(bucket, k, now)).collect())
    }

    /// Sets every pair, all or nothing: sizes are checked for every pair before the first
    /// write, and no other operation sees a partial `mset`.
    pub async fn mset(&self, bucket: BucketId, pairs: Vec<(Bytes, Bytes)>) -> Result<(), Error> {
        let now = now();
        let mut store = self.store();
        let max_key = store.config().max_key_len;
        let max_value = store
            .bucket_options(bucket)
            .ok_or_else(|| Error::BucketUnknown {
                name: format!("{bucket:?}"),
            })?
            .max_value_len
            .unwrap_or(store.config().max_value_len);
        for (k, v) in &pairs {
            if k.len() > max_key {
                return Err(Error::KeyTooLarge {
                    len: k.len(),
                    max: max_key,
                });
            }
            if v.len() > max_value {
                return Err(Error::ValueTooLarge {
                    len: v.len(),
                    max: max_value,
                });
            }
        }
        for (k, v) in pairs {
            store.set(bucket, k, v, SetOptions::default(), now, STANDALONE_EPOCH)?;
        }
        Ok(())
    }

    /// Live keys held (all buckets).
    pub async fn len(&self) -> Result<usize, Error> {
        Ok(self.store().len())
    }

    /// Whether no live keys are held.
    pub async fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.store().is_empty())
    }

    /// Removes every key of every bucket (Redis `FLUSHDB`); buckets stay.
    pub async fn flush(&self) -> Result<(), Error> {
        self.store().clear();
        Ok(())
    }

    /// Counters and gauges of the store.
    pub async fn stats(&self) -> Result<Stats, Error> {
        let store = self.store();
        let s = store.stats();
        Ok(Stats {
            keys: store.len(),
            expires: s.with_ttl.saturating_sub(s.tombstones),
            used_bytes: s.weight,
            max_bytes: s.capacity,
            evicted: s.evicted,
            expired: s.expired,
        })
    }

    /// Runs one reaper step now (tests and tools; the background task does this every
    /// [`REAP_INTERVAL`]). Returns how many expired entries were removed.
    pub async fn reap_now(&self) -> usize {
        let mut rng = StdRng::seed_from_u64(now().as_millis());
        self.store()
            .reap(now(), &mut rng, DEFAULT_REAP_SAMPLE)
            .removed
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
        let stats = lock(&inner.store).reap(now(), &mut rng, DEFAULT_REAP_SAMPLE);
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
    use super::*;
    use crate::store::{Condition, Expiry};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
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
            m.shutdown().await;
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
