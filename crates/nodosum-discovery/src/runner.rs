//! The periodic loop: [`Discoverer`] asks a backend every interval, filters, reports metrics.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nodosum_proto::NodeId;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;

use crate::{Candidate, Discovered, Discovery, Error};

/// Configuration of the [`Discoverer`] loop.
///
/// ```toml
/// [discovery]
/// interval = "30s"
/// jitter = 0.1
/// retry_initial = "1s"
/// retry_max = "2m"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscovererConfig {
    /// Pause after a successful round before the next one starts. Default 30 s: seeds
    /// matter only while joining or healing a partition, after which gossip carries
    /// membership. With Consul blocking queries a round itself lasts until a change or
    /// `wait`, so this pause is also the rate limit Consul's documentation asks for.
    #[serde(with = "crate::duration")]
    pub interval: Duration,
    /// Random spread applied to every delay, as a fraction: 0.1 spreads a 30 s interval over
    /// 27..33 s so that nodes started together do not query the backend in lockstep.
    /// Clamped to 0.0..=0.5. Default 0.1.
    pub jitter: f64,
    /// Delay before retrying after the first failed round; it doubles with every further
    /// consecutive failure. Default 1 s.
    #[serde(with = "crate::duration")]
    pub retry_initial: Duration,
    /// Upper bound of the retry delay. Default 2 min.
    #[serde(with = "crate::duration")]
    pub retry_max: Duration,
}

impl Default for DiscovererConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            jitter: 0.1,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(120),
        }
    }
}

/// When the next round starts: the loop's sans-IO core (no clock, seeded randomness).
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    interval: Duration,
    jitter: f64,
    retry_initial: Duration,
    retry_max: Duration,
    failures: u32,
    rng: SplitMix64,
}

impl Schedule {
    pub(crate) fn new(config: &DiscovererConfig, seed: u64) -> Self {
        let jitter = if config.jitter.is_finite() {
            config.jitter.clamp(0.0, 0.5)
        } else {
            0.0
        };
        let retry_initial = config.retry_initial.max(Duration::from_millis(1));
        Self {
            interval: config.interval.max(Duration::from_millis(1)),
            jitter,
            retry_initial,
            retry_max: config.retry_max.max(retry_initial),
            failures: 0,
            rng: SplitMix64(seed),
        }
    }

    /// Consecutive failed rounds so far.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// The delay after a round that succeeded (`true`) or failed.
    pub(crate) fn handle_round(&mut self, ok: bool) -> Duration {
        let base = if ok {
            self.failures = 0;
            self.interval
        } else {
            self.failures = self.failures.saturating_add(1);
            let doublings = (self.failures - 1).min(30);
            self.retry_initial
                .saturating_mul(1u32 << doublings)
                .min(self.retry_max)
        };
        self.jittered(base)
    }

    fn jittered(&mut self, base: Duration) -> Duration {
        // u in [-1, 1)
        let u = self.rng.next_f64() * 2.0 - 1.0;
        let factor = 1.0 + self.jitter * u;
        Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(base)
    }
}

/// A tiny non-cryptographic generator for jitter (SplitMix64), so schedules are reproducible.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        // 53 high bits make an exactly representable fraction.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabel {
    backend: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    backend: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    backend: String,
    kind: &'static str,
}

/// The loop's Prometheus metrics, registered under the `discovery_` prefix.
#[derive(Debug, Clone, Default)]
struct Metrics {
    rounds: Family<OutcomeLabels, Counter>,
    errors: Family<KindLabels, Counter>,
    skipped: Family<KindLabels, Counter>,
    candidates: Family<BackendLabel, Gauge>,
    new_candidates: Family<BackendLabel, Gauge>,
    last_success: Family<BackendLabel, Gauge<f64, AtomicU64>>,
    consecutive_failures: Family<BackendLabel, Gauge>,
}

impl Metrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("discovery");
        r.register(
            "rounds",
            "Discovery rounds by backend and outcome (ok, error)",
            m.rounds.clone(),
        );
        r.register(
            "errors",
            "Discovery backend failures by backend and error kind",
            m.errors.clone(),
        );
        r.register(
            "skipped",
            "Discovery answers dropped without failing the round, by backend and reason",
            m.skipped.clone(),
        );
        r.register(
            "candidates",
            "Candidates found by the last successful round, before filtering",
            m.candidates.clone(),
        );
        r.register(
            "new_candidates",
            "Candidates of the last successful round that are neither this node nor known members",
            m.new_candidates.clone(),
        );
        r.register(
            "last_success_timestamp_seconds",
            "Unix time of the last successful round",
            m.last_success.clone(),
        );
        r.register(
            "consecutive_failures",
            "Failed rounds since the last successful one",
            m.consecutive_failures.clone(),
        );
        m
    }

    fn count_error(&self, backend: &str, error: &Error) {
        match error {
            // A combined backend: count each inner failure under its own backend name.
            Error::AllBackendsFailed { errors } => {
                for e in errors {
                    self.count_error(backend, e);
                }
            }
            Error::Backend { backend, source } => self.count_error(backend, source),
            e => {
                self.errors
                    .get_or_create(&KindLabels {
                        backend: backend.to_owned(),
                        kind: e.kind(),
                    })
                    .inc();
            }
        }
    }
}

/// Decides whether a candidate is already a member (the caller's membership view).
pub type KnownFilter = Arc<dyn Fn(&Candidate) -> bool + Send + Sync>;

/// What one round did, for callers that drive rounds themselves and for tests.
#[derive(Debug)]
pub struct RoundReport {
    /// Whether the backend answered. On failure the previous seeds stay published.
    pub outcome: Result<(), Error>,
    /// Candidates found, before filtering (0 on failure).
    pub found: usize,
    /// Candidates published: neither this node nor known members (0 on failure).
    pub new: usize,
    /// Answers dropped without failing the round.
    pub skipped: usize,
    /// Delay until the next round.
    pub next_in: Duration,
}

/// The periodic discovery loop.
///
/// Every round it asks the backend, drops this node and already-known members, and publishes
/// the remaining candidates on a [`watch`] channel ([`Discoverer::subscribe`]). A failing
/// round publishes nothing (the last published seeds stay), counts the error and retries
/// with exponential backoff; the loop never stops by itself.
///
/// Metrics (registered under `discovery_` in the registry given to [`Discoverer::new`]):
/// `discovery_rounds_total{backend,outcome}`, `discovery_errors_total{backend,kind}`,
/// `discovery_skipped_total{backend,kind}`, `discovery_candidates{backend}`,
/// `discovery_new_candidates{backend}`, `discovery_last_success_timestamp_seconds{backend}`,
/// `discovery_consecutive_failures{backend}`.
pub struct Discoverer {
    backend: Arc<dyn Discovery>,
    schedule: Schedule,
    self_id: Option<NodeId>,
    self_addrs: Vec<SocketAddr>,
    known: Option<KnownFilter>,
    metrics: Metrics,
    tx: watch::Sender<Arc<[Candidate]>>,
}

impl fmt::Debug for Discoverer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discoverer")
            .field("backend", &self.backend)
            .field("schedule", &self.schedule)
            .field("self_id", &self.self_id)
            .field("self_addrs", &self.self_addrs)
            .finish_non_exhaustive()
    }
}

impl Discoverer {
    /// A loop over `backend`, registering its metrics in `registry`.
    pub fn new(
        backend: Arc<dyn Discovery>,
        config: &DiscovererConfig,
        registry: &mut Registry,
    ) -> Self {
        let seed = RandomState::new().hash_one(0x006e_6f64_6f73_756d_u64);
        let (tx, _) = watch::channel(Arc::from(Vec::new()));
        Self {
            backend,
            schedule: Schedule::new(config, seed),
            self_id: None,
            self_addrs: Vec::new(),
            known: None,
            metrics: Metrics::register(registry),
            tx,
        }
    }

    /// Drops candidates with this node's ID or one of its advertised gossip addresses.
    pub fn exclude_self(
        mut self,
        id: Option<NodeId>,
        addrs: impl IntoIterator<Item = SocketAddr>,
    ) -> Self {
        self.self_id = id;
        self.self_addrs = addrs.into_iter().collect();
        self
    }

    /// Drops candidates for which `is_known` returns true (called once per candidate per round).
    pub fn exclude_known(
        mut self,
        is_known: impl Fn(&Candidate) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.known = Some(Arc::new(is_known));
        self
    }

    /// Seeds the jitter generator, for reproducible schedules.
    pub fn with_rng_seed(mut self, seed: u64) -> Self {
        self.schedule.rng = SplitMix64(seed);
        self
    }

    /// The published seeds: after each successful round, its new candidates.
    pub fn subscribe(&self) -> watch::Receiver<Arc<[Candidate]>> {
        self.tx.subscribe()
    }

    /// Runs one round now: ask, filter, publish, count. Returns what happened and when the
    /// next round is due.
    pub async fn round(&mut self) -> RoundReport {
        let name = self.backend.name().to_owned();
        let result = self.backend.discover().await;
        let label = BackendLabel {
            backend: name.clone(),
        };
        match result {
            Ok(Discovered {
                candidates,
                skipped,
            }) => {
                let found = candidates.len();
                let wanted =
                    |c: &Candidate| !self.is_self(c) && !self.known.as_ref().is_some_and(|k| k(c));
                let mut fresh: Vec<Candidate> = candidates.into_iter().filter(wanted).collect();
                if !skipped.is_empty() {
                    // Part of the round failed (a backend of a combination, or entries that
                    // did not resolve): what it could not see may still be there, so the
                    // seeds already published stay, with what it found added.
                    let published = self.tx.borrow().clone();
                    for c in published.iter().filter(|c| wanted(c)) {
                        if !fresh.contains(c) {
                            fresh.push(c.clone());
                        }
                    }
                }
                let new = fresh.len();
                for s in &skipped {
                    match s {
                        // A failed backend inside a combination is an error of that backend.
                        Error::Backend { .. } => self.metrics.count_error(&name, s),
                        _ => {
                            self.metrics
                                .skipped
                                .get_or_create(&KindLabels {
                                    backend: name.clone(),
                                    kind: s.kind(),
                                })
                                .inc();
                        }
                    }
                }
                let m = &self.metrics;
                m.rounds
                    .get_or_create(&OutcomeLabels {
                        backend: name.clone(),
                        outcome: "ok",
                    })
                    .inc();
                m.candidates.get_or_create(&label).set(gauge_value(found));
                m.new_candidates.get_or_create(&label).set(gauge_value(new));
                m.consecutive_failures.get_or_create(&label).set(0);
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                m.last_success.get_or_create(&label).set(now);
                tracing::debug!(backend = %name, found, new, skipped = skipped.len(), "discovery round");
                self.tx.send_replace(Arc::from(fresh));
                RoundReport {
                    outcome: Ok(()),
                    found,
                    new,
                    skipped: skipped.len(),
                    next_in: self.schedule.handle_round(true),
                }
            }
            Err(error) => {
                let next_in = self.schedule.handle_round(false);
                let m = &self.metrics;
                m.rounds
                    .get_or_create(&OutcomeLabels {
                        backend: name.clone(),
                        outcome: "error",
                    })
                    .inc();
                m.count_error(&name, &error);
                m.consecutive_failures
                    .get_or_create(&label)
                    .set(i64::from(self.schedule.failures()));
                tracing::warn!(
                    backend = %name,
                    %error,
                    failures = self.schedule.failures(),
                    retry_in = ?next_in,
                    "discovery round failed; keeping previous seeds"
                );
                RoundReport {
                    outcome: Err(error),
                    found: 0,
                    new: 0,
                    skipped: 0,
                    next_in,
                }
            }
        }
    }

    fn is_self(&self, c: &Candidate) -> bool {
        self.self_addrs.contains(&c.gossip_addr)
            || (self.self_id.is_some() && c.node_id == self.self_id)
    }

    /// Runs the loop on the current tokio runtime: a first round at once, then one per
    /// interval (or backoff delay), until the handle is shut down or dropped.
    pub fn spawn(mut self) -> DiscovererHandle {
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let trigger = Arc::new(Notify::new());
        let rx = self.subscribe();
        let wake = Arc::clone(&trigger);
        let (status_tx, status) = watch::channel(DiscoveryStatus::default());
        let task = tokio::spawn(async move {
            loop {
                let report = tokio::select! {
                    r = self.round() => r,
                    _ = &mut stop_rx => return,
                };
                status_tx.send_modify(|s| s.record(&report));
                tokio::select! {
                    () = tokio::time::sleep(report.next_in) => {}
                    () = wake.notified() => {}
                    _ = &mut stop_rx => return,
                }
            }
        });
        DiscovererHandle {
            stop: Some(stop_tx),
            trigger,
            rx,
            status,
            task,
        }
    }
}

/// How the rounds of a running [`Discoverer`] went, for health reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscoveryStatus {
    /// Rounds finished so far.
    pub rounds: u64,
    /// Rounds that failed in a row, up to the last one (0 after a success).
    pub consecutive_failures: u32,
    /// Whether any round has succeeded yet.
    pub ever_succeeded: bool,
    /// The last round's error, if it failed.
    pub last_error: Option<String>,
}

impl DiscoveryStatus {
    fn record(&mut self, report: &RoundReport) {
        self.rounds += 1;
        match &report.outcome {
            Ok(()) => {
                self.consecutive_failures = 0;
                self.ever_succeeded = true;
                self.last_error = None;
            }
            Err(e) => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.last_error = Some(e.to_string());
            }
        }
    }

    /// Whether discovery currently works: the last round, if any, succeeded.
    pub fn is_working(&self) -> bool {
        self.consecutive_failures == 0
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A running [`Discoverer`] loop. Dropping it stops the loop.
#[derive(Debug)]
pub struct DiscovererHandle {
    stop: Option<oneshot::Sender<()>>,
    trigger: Arc<Notify>,
    rx: watch::Receiver<Arc<[Candidate]>>,
    status: watch::Receiver<DiscoveryStatus>,
    task: JoinHandle<()>,
}

impl DiscovererHandle {
    /// The published seeds.
    pub fn subscribe(&self) -> watch::Receiver<Arc<[Candidate]>> {
        self.rx.clone()
    }

    /// How the rounds went so far.
    pub fn status(&self) -> DiscoveryStatus {
        self.status.borrow().clone()
    }

    /// Starts the next round now instead of waiting for the interval (e.g. when this node
    /// finds itself alone).
    pub fn trigger(&self) {
        self.trigger.notify_one();
    }

    /// Stops the loop and waits for it to end (an in-flight round is abandoned).
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for DiscovererHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(jitter: f64) -> DiscovererConfig {
        DiscovererConfig {
            interval: Duration::from_secs(30),
            jitter,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(20),
        }
    }

    #[test]
    fn success_waits_interval_failures_back_off_and_cap() {
        let mut s = Schedule::new(&config(0.0), 1);
        assert_eq!(s.handle_round(true), Duration::from_secs(30));
        let delays: Vec<u64> = (0..7).map(|_| s.handle_round(false).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 20, 20]);
        assert_eq!(s.failures(), 7);
        assert_eq!(s.handle_round(true), Duration::from_secs(30));
        assert_eq!(s.failures(), 0);
        assert_eq!(s.handle_round(false), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_in_bounds_and_varies() {
        let mut s = Schedule::new(&config(0.1), 42);
        let delays: Vec<Duration> = (0..200).map(|_| s.handle_round(true)).collect();
        for d in &delays {
            assert!(
                *d >= Duration::from_secs(27) && *d <= Duration::from_secs(33),
                "{d:?}"
            );
        }
        let first = delays[0];
        assert!(delays.iter().any(|d| *d != first), "jitter never varied");
    }

    #[test]
    fn same_seed_same_schedule() {
        let mut a = Schedule::new(&config(0.3), 7);
        let mut b = Schedule::new(&config(0.3), 7);
        for i in 0..50 {
            assert_eq!(a.handle_round(i % 3 == 0), b.handle_round(i % 3 == 0));
        }
    }

    #[test]
    fn absurd_config_is_clamped() {
        let c = DiscovererConfig {
            interval: Duration::ZERO,
            jitter: f64::NAN,
            retry_initial: Duration::ZERO,
            retry_max: Duration::ZERO,
        };
        let mut s = Schedule::new(&c, 0);
        assert_eq!(s.handle_round(true), Duration::from_millis(1));
        for _ in 0..100 {
            assert_eq!(s.handle_round(false), Duration::from_millis(1));
        }
    }
}
