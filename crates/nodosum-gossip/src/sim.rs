//! Deterministic simulation: many [`Core`]s, a fake clock, a seeded RNG and an in-memory
//! network with loss, delay and partitions. A failing seed reproduces exactly.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nodosum_proto::{Key, Keyring, Member, NodeId};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::config::Config;
use crate::core::Core;
use crate::metrics::Metrics;
use crate::table::{MemberState, MembershipEvent};

enum What {
    Deliver {
        to: usize,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    Timer {
        node: usize,
    },
}

struct Node {
    core: Option<Core>,
    scheduled: Option<Instant>,
    group: u32,
    life: u64,
    /// Extra one-way delay on everything this node sends and receives (an overloaded
    /// or badly connected node).
    lag: Duration,
}

/// A simulated cluster.
pub(crate) struct Sim {
    base: Instant,
    now: Instant,
    nodes: Vec<Node>,
    by_addr: HashMap<SocketAddr, usize>,
    queue: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    payloads: HashMap<u64, What>,
    seq: u64,
    rng: StdRng,
    make_config: Box<dyn Fn(NodeId) -> Config>,
    /// Probability that a datagram is lost.
    pub(crate) loss: f64,
    /// One-way delay range.
    pub(crate) delay: (Duration, Duration),
    /// `Failed` events about members that were running and not partitioned away, as
    /// `(observer, subject)`.
    pub(crate) false_failures: Vec<(usize, usize)>,
    /// Every `Suspect` event, as `(time, observer, subject)`.
    pub(crate) suspicions: usize,
    /// When each node first saw each failed member, for the detection measurements.
    pub(crate) failed_seen: HashMap<usize, Vec<Instant>>,
}

pub(crate) fn node_id(i: usize) -> NodeId {
    NodeId::new(format!("node-{i}")).expect("valid node id")
}

fn addr(i: usize) -> SocketAddr {
    // Never sent to: the simulated network only looks addresses up in its own table.
    let [hi, lo] = u16::try_from(i)
        .expect("fewer than 65536 nodes")
        .to_be_bytes();
    SocketAddr::from(([127, 1, hi, lo], 6969))
}

impl Sim {
    /// `n` nodes that are started but not joined.
    pub(crate) fn new(
        seed: u64,
        n: usize,
        make_config: impl Fn(NodeId) -> Config + 'static,
    ) -> Self {
        let base = Instant::now();
        let mut sim = Self {
            base,
            now: base,
            nodes: Vec::new(),
            by_addr: HashMap::new(),
            queue: BinaryHeap::new(),
            payloads: HashMap::new(),
            seq: 0,
            rng: StdRng::seed_from_u64(seed),
            make_config: Box::new(make_config),
            loss: 0.0,
            delay: (Duration::from_micros(200), Duration::from_millis(2)),
            false_failures: Vec::new(),
            suspicions: 0,
            failed_seen: HashMap::new(),
        };
        for i in 0..n {
            sim.by_addr.insert(addr(i), i);
            sim.nodes.push(Node {
                core: None,
                scheduled: None,
                group: 0,
                life: 1,
                lag: Duration::ZERO,
            });
            sim.boot(i);
        }
        sim
    }

    fn boot(&mut self, i: usize) {
        let mut cfg = (self.make_config)(node_id(i));
        cfg.advertise_addr = Some(addr(i));
        let mut m = Member::new(node_id(i), addr(i), 6970);
        m.incarnation = self.nodes[i].life;
        let seed = self.rng.random();
        let core = Core::new(
            cfg,
            m,
            Keyring::new(Key::from_bytes([42; 32])),
            seed,
            self.now,
            Metrics::default(),
        )
        .expect("valid sim config");
        self.nodes[i].core = Some(core);
        self.nodes[i].scheduled = None;
        self.after(i);
    }

    /// Simulated time since the start.
    pub(crate) fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    pub(crate) fn now(&self) -> Instant {
        self.now
    }

    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    pub(crate) fn core(&self, i: usize) -> Option<&Core> {
        self.nodes[i].core.as_ref()
    }

    pub(crate) fn is_running(&self, i: usize) -> bool {
        self.nodes[i].core.is_some()
    }

    /// Node `i` joins through the given seeds.
    pub(crate) fn join(&mut self, i: usize, seeds: &[usize]) {
        let now = self.now;
        if let Some(c) = &mut self.nodes[i].core {
            c.join(now, seeds.iter().map(|&s| addr(s)).collect());
        }
        self.after(i);
    }

    /// Stops node `i` without a word, like a crash.
    pub(crate) fn kill(&mut self, i: usize) {
        self.nodes[i].core = None;
        self.nodes[i].scheduled = None;
    }

    /// Node `i` leaves gracefully.
    pub(crate) fn leave(&mut self, i: usize) {
        let now = self.now;
        if let Some(c) = &mut self.nodes[i].core {
            c.leave(now);
        }
        self.after(i);
    }

    /// Restarts a killed node `i` with a higher incarnation and joins it through `seed`.
    pub(crate) fn restart(&mut self, i: usize, seed: usize) {
        self.kill(i);
        self.nodes[i].life += 1;
        self.boot(i);
        self.join(i, &[seed]);
    }

    /// Puts each node in a group; datagrams between groups are lost.
    pub(crate) fn partition(&mut self, group_of: impl Fn(usize) -> u32) {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            n.group = group_of(i);
        }
    }

    /// Adds `lag` to every datagram node `i` sends or receives.
    pub(crate) fn set_lag(&mut self, i: usize, lag: Duration) {
        self.nodes[i].lag = lag;
    }

    pub(crate) fn heal(&mut self) {
        self.partition(|_| 0);
    }

    fn push(&mut self, at: Instant, what: What) {
        self.seq += 1;
        self.payloads.insert(self.seq, what);
        self.queue.push(Reverse((at, self.seq, 0)));
    }

    /// Collects what node `i` produced and reschedules its timer.
    fn after(&mut self, i: usize) {
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        let mut sends = Vec::new();
        while let Some(t) = core.poll_transmit() {
            sends.push(t);
        }
        let mut events = Vec::new();
        while let Some(e) = core.poll_event() {
            events.push(e);
        }
        let next = core.poll_timeout();
        let from = addr(i);
        for t in sends {
            let Some(&to) = self.by_addr.get(&t.dst) else {
                continue;
            };
            if self.nodes[i].group != self.nodes[to].group {
                continue;
            }
            if self.loss > 0.0 && self.rng.random::<f64>() < self.loss {
                continue;
            }
            let (lo, hi) = self.delay;
            let d = if hi > lo {
                lo + (hi - lo).mul_f64(self.rng.random::<f64>())
            } else {
                lo
            };
            let at = self.now + d + self.nodes[i].lag + self.nodes[to].lag;
            self.push(
                at,
                What::Deliver {
                    to,
                    from,
                    bytes: t.bytes,
                },
            );
        }
        for e in events {
            self.observe(i, &e);
        }
        if next != self.nodes[i].scheduled {
            self.nodes[i].scheduled = next;
            if let Some(at) = next {
                self.push(at, What::Timer { node: i });
            }
        }
    }

    fn observe(&mut self, observer: usize, e: &MembershipEvent) {
        let subject = |m: &Member| -> Option<usize> {
            m.id.as_str()
                .strip_prefix("node-")
                .and_then(|s| s.parse().ok())
        };
        match e {
            MembershipEvent::Suspect(_) => self.suspicions += 1,
            MembershipEvent::Failed(m) => {
                let Some(s) = subject(m) else { return };
                // Lives at or above the node's boot incarnation are this process (it
                // renews its identity by counting up); older ones are a previous life.
                let life = self.nodes[s].life;
                let healthy = self.nodes[s]
                    .core
                    .as_ref()
                    .is_some_and(|c| !c.has_left() && m.incarnation >= life);
                if healthy && self.nodes[s].group == self.nodes[observer].group {
                    self.false_failures.push((observer, s));
                }
                self.failed_seen.entry(s).or_default().push(self.now);
            }
            _ => {}
        }
    }

    /// Runs the next queued step; false when nothing is queued.
    pub(crate) fn step(&mut self) -> bool {
        let Some(Reverse((at, seq, _))) = self.queue.pop() else {
            return false;
        };
        self.now = self.now.max(at);
        let Some(what) = self.payloads.remove(&seq) else {
            return true;
        };
        match what {
            What::Deliver { to, from, bytes } => {
                let now = self.now;
                if let Some(c) = &mut self.nodes[to].core {
                    c.handle_datagram(now, from, &bytes);
                    self.after(to);
                }
            }
            What::Timer { node } => {
                if self.nodes[node].scheduled == Some(at) {
                    self.nodes[node].scheduled = None;
                    let now = self.now;
                    if let Some(c) = &mut self.nodes[node].core {
                        c.handle_timeout(now);
                    }
                    self.after(node);
                }
            }
        }
        true
    }

    /// Runs for `d` of simulated time.
    pub(crate) fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(Reverse((at, _, _))) = self.queue.peek() {
            if *at > end {
                break;
            }
            self.step();
        }
        self.now = end;
    }

    /// Runs until `done` holds (checked every `check` of simulated time) or `limit`
    /// passes; returns whether it held.
    pub(crate) fn run_until(
        &mut self,
        limit: Duration,
        check: Duration,
        mut done: impl FnMut(&Self) -> bool,
    ) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            self.run_for(check);
        }
        done(self)
    }

    /// Whether every running node sees exactly the running nodes, all alive.
    pub(crate) fn converged(&self) -> bool {
        let running: Vec<usize> = (0..self.len()).filter(|&i| self.is_running(i)).collect();
        // Counts first: cheap, and only a converged view passes them.
        let counts_match = running.iter().all(|&i| {
            let c = self.core(i).expect("running");
            c.num_members() == running.len() && c.num_alive() + 1 == running.len()
        });
        counts_match
            && running.iter().all(|&i| {
                let c = self.core(i).expect("running");
                running
                    .iter()
                    .all(|&j| j == i || c.member_state(&node_id(j)) == Some(MemberState::Alive))
            })
    }

    /// Whether every running node other than `subject` sees it as `state`.
    pub(crate) fn all_see(&self, subject: usize, state: MemberState) -> bool {
        let id = node_id(subject);
        (0..self.len())
            .filter(|&i| i != subject && self.is_running(i))
            .all(|i| {
                self.core(i)
                    .is_some_and(|c| c.member_state(&id) == Some(state))
            })
    }

    /// Runs a reconciliation on every node and returns the total corrections needed.
    pub(crate) fn reconcile_all(&mut self) -> usize {
        let mut total = 0;
        for n in &mut self.nodes {
            if let Some(c) = &mut n.core {
                total += c.reconcile();
            }
        }
        total
    }
}

/// A cluster of `n` lan-configured nodes joined through node 0 (in batches, as a rolling
/// start would) and converged.
pub(crate) fn converged_cluster(
    seed: u64,
    n: usize,
    make: impl Fn(NodeId) -> Config + 'static,
) -> Sim {
    let mut sim = Sim::new(seed, n, make);
    for i in 1..n {
        sim.join(i, &[0]);
        if i % 50 == 0 {
            sim.run_for(Duration::from_millis(100));
        }
    }
    let ok = sim.run_until(
        Duration::from_secs(120),
        Duration::from_millis(500),
        Sim::converged,
    );
    assert!(ok, "{n} members did not converge (seed {seed})");
    sim
}

/// Kills a random member of a converged cluster and returns how long until every other
/// member saw it failed.
pub(crate) fn detection_time(sim: &mut Sim, victim: usize, limit: Duration) -> Option<Duration> {
    let start = sim.now();
    let ok = sim.run_until(limit, Duration::from_millis(50), |s| {
        s.all_see(victim, MemberState::Failed)
    });
    if !ok {
        return None;
    }
    sim.failed_seen
        .get(&victim)
        .and_then(|v| v.iter().max())
        .map(|t| *t - start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lan(id: NodeId) -> Config {
        Config::lan(id)
    }

    #[test]
    fn ten_members_converge_and_the_view_follows_foca() {
        let mut sim = converged_cluster(1, 10, lan);
        sim.run_for(Duration::from_secs(30));
        assert!(sim.converged());
        assert_eq!(sim.reconcile_all(), 0, "member table diverged from foca");
        assert!(sim.false_failures.is_empty());
    }

    /// LAN timings with a 5 s member-list sync instead of 30 s, so that big clusters
    /// converge in fewer simulated seconds.
    fn lan_fast_sync(id: NodeId) -> Config {
        let mut c = Config::lan(id);
        c.sync_interval = Duration::from_secs(5);
        c
    }

    #[test]
    fn three_hundred_members_converge() {
        let mut sim = converged_cluster(7, 300, lan_fast_sync);
        assert!(sim.false_failures.is_empty());
        assert_eq!(sim.reconcile_all(), 0);
    }

    /// foca looks members up linearly, so a 1,000-member run costs about 10^9 lookups:
    /// some 20 s optimised but minutes unoptimised. Run it with `cargo test --release`.
    #[test]
    #[cfg_attr(
        debug_assertions,
        ignore = "needs an optimised build: cargo test --release"
    )]
    fn a_thousand_members_converge() {
        let mut sim = converged_cluster(7, 1000, lan_fast_sync);
        assert!(sim.false_failures.is_empty());
        assert_eq!(sim.reconcile_all(), 0);
    }

    #[test]
    fn a_killed_member_is_declared_failed_by_everyone_in_time() {
        for seed in 0..5 {
            let mut sim = converged_cluster(seed, 10, lan);
            let cfg = lan(node_id(0));
            sim.kill(3);
            let t = detection_time(&mut sim, 3, Duration::from_secs(60))
                .unwrap_or_else(|| panic!("seed {seed}: not everyone saw the failure"));
            // Expected: found by some prober within ~2 periods, suspected one period later,
            // declared down after the suspicion timeout, then gossiped. Bound generously.
            let bound = cfg.foca_config(10).suspect_to_down_after + cfg.probe_interval * 8;
            assert!(
                t <= bound,
                "seed {seed}: detection took {t:?}, bound {bound:?}"
            );
            assert!(
                sim.false_failures.is_empty(),
                "seed {seed}: {:?}",
                sim.false_failures
            );
        }
    }

    #[test]
    fn no_false_failures_under_loss() {
        for (loss, seed) in [(0.01, 11), (0.05, 12)] {
            let mut sim = converged_cluster(seed, 20, lan);
            sim.loss = loss;
            sim.run_for(Duration::from_secs(600));
            assert!(
                sim.false_failures.is_empty(),
                "loss {loss}, seed {seed}: healthy members declared failed: {:?}",
                sim.false_failures
            );
            sim.loss = 0.0;
            assert!(sim.run_until(
                Duration::from_secs(30),
                Duration::from_secs(1),
                Sim::converged
            ));
        }
    }

    #[test]
    fn a_partition_heals_and_views_reconverge() {
        let mut sim = converged_cluster(3, 12, lan);
        sim.partition(|i| u32::from(i >= 6));
        sim.run_for(Duration::from_secs(30));
        // Each side has declared the other failed.
        for i in 6..12 {
            let c = sim.core(i).unwrap();
            assert_eq!(c.member_state(&node_id(0)), Some(MemberState::Failed));
            assert_eq!(c.num_members(), 6);
        }
        sim.heal();
        let ok = sim.run_until(
            Duration::from_secs(180),
            Duration::from_secs(1),
            Sim::converged,
        );
        assert!(ok, "views did not reconverge after the partition healed");
    }

    /// Nodes cut off from every other until they declared them all failed (here both
    /// members of a pair) still find each other once the network heals: with no active
    /// member, a node joins again through the failed ones.
    #[test]
    fn nodes_left_alone_by_a_partition_merge_again() {
        let mut sim = converged_cluster(3, 2, lan);
        sim.partition(|i| u32::from(i >= 1));
        sim.run_for(Duration::from_secs(60));
        for i in 0..2 {
            let c = sim.core(i).unwrap();
            assert_eq!(c.member_state(&node_id(1 - i)), Some(MemberState::Failed));
        }
        sim.heal();
        let ok = sim.run_until(
            Duration::from_secs(120),
            Duration::from_secs(1),
            Sim::converged,
        );
        assert!(ok, "the pair did not merge after the partition healed");
    }

    #[test]
    fn a_restarted_member_is_the_same_node_coming_back() {
        let mut sim = converged_cluster(5, 8, lan);
        sim.kill(4);
        assert!(detection_time(&mut sim, 4, Duration::from_secs(60)).is_some());
        sim.restart(4, 0);
        assert!(sim.run_until(
            Duration::from_secs(60),
            Duration::from_millis(200),
            Sim::converged
        ));
        for i in (0..8).filter(|&i| i != 4) {
            let c = sim.core(i).unwrap();
            let me: Vec<_> = c
                .members()
                .into_iter()
                .filter(|(m, _)| m.id == node_id(4))
                .collect();
            assert_eq!(me.len(), 1, "one entry per node ID");
            assert_eq!(me[0].0.incarnation, 2);
            assert_eq!(me[0].1, MemberState::Alive);
        }
        // A fast restart (before anyone noticed) is accepted too.
        sim.restart(2, 0);
        assert!(sim.run_until(
            Duration::from_secs(60),
            Duration::from_millis(200),
            Sim::converged
        ));
        assert_eq!(
            sim.core(0)
                .unwrap()
                .members()
                .iter()
                .filter(|(m, _)| m.id == node_id(2))
                .count(),
            1
        );
    }

    #[test]
    fn join_retries_until_a_seed_answers() {
        let mut sim = Sim::new(21, 3, lan);
        sim.join(1, &[0]);
        sim.run_for(Duration::from_secs(2));
        // Node 2's seed is unreachable for a while: it keeps asking with backoff.
        sim.partition(|i| u32::from(i == 2));
        sim.join(2, &[0]);
        sim.run_for(Duration::from_secs(5));
        assert_eq!(sim.core(2).unwrap().num_members(), 1);
        sim.heal();
        assert!(sim.run_until(
            Duration::from_secs(30),
            Duration::from_millis(100),
            Sim::converged
        ));
    }

    #[test]
    fn an_isolated_node_loses_health_and_recovers() {
        let mut sim = converged_cluster(23, 6, lan);
        assert!((0..6).all(|i| sim.core(i).unwrap().health_score() == 0));
        // Node 5 can reach nobody: its own probes fail, so it slows down instead of
        // racing to accuse everyone.
        sim.partition(|i| u32::from(i == 5));
        sim.run_for(Duration::from_secs(4));
        let sick = sim.core(5).unwrap().health_score();
        assert!(sick > 0, "health score stayed {sick}");
        assert!(sick <= Config::lan(node_id(5)).max_health_score);
        assert!((0..5).all(|i| sim.core(i).unwrap().health_score() <= 1));
        sim.heal();
        assert!(
            sim.run_until(Duration::from_secs(120), Duration::from_millis(500), |s| {
                s.converged() && s.core(5).unwrap().health_score() == 0
            })
        );
    }

    #[test]
    fn a_graceful_leave_is_seen_as_left() {
        let mut sim = converged_cluster(9, 10, lan);
        sim.leave(5);
        assert!(
            sim.run_until(Duration::from_secs(10), Duration::from_millis(50), |s| s
                .all_see(5, MemberState::Left))
        );
        assert!(sim.false_failures.is_empty());
    }

    #[test]
    #[ignore = "hours: foca's linear member lookups make convergence cost grow as n^3"]
    fn ten_thousand_members_converge() {
        let t = Instant::now();
        let sim = converged_cluster(10, 10_000, lan_fast_sync);
        println!(
            "10000 members converged after {:?} simulated, {:?} wall",
            sim.elapsed(),
            t.elapsed()
        );
    }

    fn percentile(sorted: &[Duration], p: f64) -> Duration {
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index into a short vector"
        )]
        let i = ((sorted.len() - 1) as f64 * p).round() as usize;
        sorted[i]
    }

    /// Figures for the report (not assertions): time until every member sees a crashed
    /// member failed, and false failures per member-hour under loss, default LAN config.
    /// `MEASURE_SIZES=10,100 cargo test --release -p nodosum-gossip --lib measure -- --ignored --nocapture`
    #[test]
    #[ignore = "measurement: run optimised with --ignored --nocapture"]
    fn measure_detection_and_false_positives() {
        let sizes: Vec<usize> = std::env::var("MEASURE_SIZES")
            .unwrap_or_else(|_| "10,100,1000".to_owned())
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        let mult: Option<u32> = std::env::var("MEASURE_SUSPICION_MULT")
            .ok()
            .and_then(|m| m.parse().ok());
        let config = move |id| {
            let mut c = lan_fast_sync(id);
            if let Some(m) = mult {
                c.suspicion_mult = m;
            }
            c
        };
        for &n in &sizes {
            let wall = Instant::now();
            // (fresh clusters, crashes per cluster)
            let (clusters, kills) = match n {
                0..=20 => (100, 1),
                21..=200 => (10, 5),
                _ => (1, 10),
            };
            let mut samples = Vec::new();
            let mut undetected = 0;
            for c in 0..clusters {
                let seed = 1000 + c;
                let mut sim = converged_cluster(seed, n, config);
                for k in 0..kills {
                    let victim = 1 + (usize::try_from(seed).unwrap() * 7 + k * 13) % (n - 1);
                    if !sim.is_running(victim) {
                        continue;
                    }
                    sim.kill(victim);
                    match detection_time(&mut sim, victim, Duration::from_secs(120)) {
                        Some(t) => samples.push(t),
                        None => undetected += 1,
                    }
                    sim.run_for(Duration::from_secs(10));
                }
            }
            samples.sort();
            println!(
                "detection n={n}: samples={} p50={:?} p99={:?} max={:?} undetected={undetected} (wall {:?})",
                samples.len(),
                percentile(&samples, 0.5),
                percentile(&samples, 0.99),
                samples.last().copied().unwrap_or_default(),
                wall.elapsed()
            );
            // Costly at 1,000 members (about a wall second per simulated one).
            let lags: &[u64] = if n <= 200 { &[300, 600, 900] } else { &[] };
            for &lag_ms in lags {
                let secs: u64 = if n <= 20 { 3600 } else { 300 };
                let mut sim = converged_cluster(78, n, config);
                let (s0, f0) = (sim.suspicions, sim.false_failures.len());
                sim.set_lag(1, Duration::from_millis(lag_ms));
                sim.run_for(Duration::from_secs(secs));
                let ff = sim.false_failures.len() - f0;
                let ff_lagging = sim.false_failures[f0..]
                    .iter()
                    .filter(|(_, s)| *s == 1)
                    .count();
                println!(
                    "lagging member n={n} (+{lag_ms} ms each way): {ff} false failures ({ff_lagging} of the lagging one), {} suspicions in {secs} s, its health score now {}",
                    sim.suspicions - s0,
                    sim.core(1).map_or(0, Core::health_score)
                );
            }
            for loss in [0.0, 0.01, 0.05] {
                let wall = Instant::now();
                let secs: u64 = match n {
                    0..=20 => 3600,
                    21..=200 => 900,
                    _ => 60,
                };
                let mut sim = converged_cluster(77, n, config);
                let (s0, f0) = (sim.suspicions, sim.false_failures.len());
                sim.loss = loss;
                sim.run_for(Duration::from_secs(secs));
                #[expect(clippy::cast_precision_loss, reason = "small counts")]
                let member_hours = (n as f64) * (secs as f64) / 3600.0;
                let ff = sim.false_failures.len() - f0;
                #[expect(clippy::cast_precision_loss, reason = "small counts")]
                let per_mh = ff as f64 / member_hours;
                println!(
                    "false positives n={n} loss={loss}: {ff} false failures, {} suspicions in {secs} s ({member_hours:.1} member-hours; {per_mh:.3} per member-hour) (wall {:?})",
                    sim.suspicions - s0,
                    wall.elapsed()
                );
            }
        }
    }
}
