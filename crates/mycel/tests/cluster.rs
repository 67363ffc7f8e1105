//! Mycel clusters of real nodosum nodes on 127.0.0.1: replication survives a hard kill,
//! joins and leaves hand partitions off under load, a minority refuses writes, TTLs and
//! single-flight loading work across nodes.
//!
//! Every test asserts data; timeouts are only guards against hangs. Tests run one at a
//! time (a shared lock) so that a busy two-core machine does not starve the gossip of
//! several clusters at once.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mycel::{
    BatchOp, BatchReply, Cluster, ClusterConfig, ClusterError, Condition, Config, Error,
    ExpireCondition, Expiry, Loader, Mycel, Partitioning, SetOptions, Ttl, checker,
};
use nodosum::{Node, NodeId};
use tempfile::TempDir;

/// Upper bound for anything a test waits for: a hang guard, not a timing claim.
const PATIENCE: Duration = Duration::from_secs(40);

const BUCKET: &str = "default";

/// Per key: the last acknowledged value and the later values whose outcome is unknown.
type History = Arc<Mutex<Vec<(u64, Vec<u64>)>>>;

static SERIAL: LazyLock<tokio::sync::Mutex<()>> = LazyLock::new(|| tokio::sync::Mutex::new(()));

fn id(s: &str) -> NodeId {
    NodeId::new(s).expect("valid node id")
}

fn config() -> ClusterConfig {
    let mut c = ClusterConfig::default();
    c.mycel.stabilization_window = Duration::from_millis(300);
    c.mycel.store.partitioning = Partitioning::new(256).expect("valid partition count");
    c.mycel.store.estimated_items = 4096;
    c.bootstrap_delay = Duration::from_secs(1);
    c.table_resend_interval = Duration::from_millis(500);
    c
}

async fn start(ca: &TempDir, name: &str, seeds: &[&Cluster]) -> Cluster {
    start_with(ca, name, seeds, config()).await
}

async fn start_with(
    ca: &TempDir,
    name: &str,
    seeds: &[&Cluster],
    config: ClusterConfig,
) -> Cluster {
    let mut c = nodosum::Config::development(id(name));
    c.tls.dev_ca_dir = Some(ca.path().join("dev-ca"));
    let node = Node::start(c).await.expect("node starts");
    node.join(seeds.iter().map(|s| s.node().gossip_addr()).collect());
    Cluster::start(node, config).await.expect("cluster starts")
}

/// `n` nodes `node-1`.. joined through the first, converged on one table.
async fn cluster(n: usize) -> (TempDir, Vec<Cluster>) {
    let ca = tempfile::tempdir().expect("tempdir");
    let first = start(&ca, "node-1", &[]).await;
    let mut nodes = vec![first];
    for i in 2..=n {
        let c = start(&ca, &format!("node-{i}"), &[&nodes[0]]).await;
        nodes.push(c);
    }
    converged(&nodes.refs()).await;
    (ca, nodes)
}

/// Waits until every node has installed the same table, whose members are exactly these
/// nodes, and every node is ready (all its partitions synced).
async fn converged(nodes: &[&Cluster]) {
    let want: Vec<NodeId> = {
        let mut ids: Vec<NodeId> = nodes.iter().map(|c| c.id().clone()).collect();
        ids.sort();
        ids
    };
    eventually("the cluster converges on one table and is ready", || {
        let statuses: Vec<_> = nodes.iter().map(|c| c.status()).collect();
        let epoch = statuses[0].epoch;
        epoch > 0
            && statuses
                .iter()
                .all(|s| s.epoch == epoch && s.members == want && s.ready)
    })
    .await;
}

trait AsRefs {
    fn refs(&self) -> Vec<&Cluster>;
}

impl AsRefs for Vec<Cluster> {
    fn refs(&self) -> Vec<&Cluster> {
        self.iter().collect()
    }
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Retries an operation that may meet a transition (a typed retry error) until it works.
async fn settled<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClusterError>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{what} kept failing: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn key(i: usize) -> Bytes {
    Bytes::from(format!("key-{i}"))
}

async fn write_keys(nodes: &[&Cluster], n: usize, round: usize) -> BTreeMap<usize, Bytes> {
    let mut acked = BTreeMap::new();
    for i in 0..n {
        let node = nodes[(i + round) % nodes.len()];
        let value = Bytes::from(format!("value-{i}-round-{round}"));
        node.set(BUCKET, key(i), value.clone(), SetOptions::default())
            .await
            .unwrap_or_else(|e| panic!("write of key {i} through {} failed: {e}", node.id()));
        acked.insert(i, value);
    }
    acked
}

async fn assert_readable(nodes: &[&Cluster], acked: &BTreeMap<usize, Bytes>) {
    for node in nodes {
        for (&i, value) in acked {
            let got = settled("read", || node.get(BUCKET, key(i))).await;
            assert_eq!(
                got.as_ref(),
                Some(value),
                "key {i} read through {}",
                node.id()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_kill_loses_no_acknowledged_write() {
    let _serial = SERIAL.lock().await;
    let (_ca, mut nodes) = cluster(3).await;
    let mut acked = write_keys(&nodes.refs(), 500, 0).await;
    // Overwrite half, so that "latest value" is tested, not just "some value".
    for (i, v) in write_keys(&nodes.refs(), 250, 1).await {
        acked.insert(i, v);
    }
    // Kill the oldest node: the authority, and the primary of about a third of the keys.
    let killed = nodes.remove(0);
    let before = nodes[0].status().epoch;
    assert!(killed.status().primaries > 0);
    drop(killed);
    let survivors = nodes.refs();
    converged(&survivors).await;
    assert!(
        nodes[0].status().epoch > before,
        "a new table was published"
    );
    assert_readable(&survivors, &acked).await;
    // Every survivor holds every partition again (rf 2 over 2 nodes): re-replication
    // happened, not read repair.
    for n in &nodes {
        assert_eq!(n.status().replicas, 256);
    }
    assert_eq!(settled("len", || nodes[0].len()).await, 500);
}

/// A metric's value in a node's Prometheus text (0 when absent).
fn metric(node: &Cluster, name: &str) -> u64 {
    node.node()
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_forwarded_by_their_backup_come_back_in_the_reply() {
    let _serial = SERIAL.lock().await;
    let (_ca, mut nodes) = cluster(3).await;
    // Every write enters through node-2: the primaries hand node-2 the writes of the
    // partitions it backs up in their reply, and it applies them before acknowledging.
    let acked = write_keys(&[&nodes[1]], 300, 0).await;
    let carried = |n: &Cluster| metric(n, "mycel_carried_writes_total");
    assert!(carried(&nodes[0]) > 0 && carried(&nodes[2]) > 0);
    assert_eq!(carried(&nodes[1]), 0, "node-2 forwarded nothing to itself");
    assert!(
        carried(&nodes[0]) + carried(&nodes[2]) < metric(&nodes[1], "mycel_forwarded_ops_total")
    );
    // They are on node-2 when acknowledged: with node-1 gone without a word, its
    // partitions are served by their backups, node-2 among them.
    drop(nodes.remove(0));
    converged(&nodes.refs()).await;
    assert_readable(&nodes.refs(), &acked).await;
    assert_eq!(metric(&nodes[0], "mycel_replicate_failures_total"), 0);
}

/// Per key, every operation with its times and outcome, for [`mycel::checker`].
type Ops = Arc<Mutex<Vec<Vec<checker::Op<u64>>>>>;

/// A task writing increasing values to `KEYS` keys, round-robin through `nodes`, that
/// records per key the last acknowledged value and the later values whose outcome is
/// unknown (a definite refusal changed nothing and is not recorded), and a task reading
/// the keys concurrently; both record every operation for the linearizability checker.
struct Writer {
    history: History,
    ops: Ops,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

const KEYS: usize = 40;

impl Writer {
    fn spawn(nodes: Vec<Arc<Cluster>>) -> Self {
        let history: History = Arc::new(Mutex::new(vec![(0, Vec::new()); KEYS]));
        let ops: Ops = Arc::new(Mutex::new(vec![Vec::new(); KEYS]));
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicUsize::new(0));
        let epoch = std::time::Instant::now();
        let ticks = move || {
            u64::try_from(epoch.elapsed().as_micros())
                .expect("test runs for less than 500 000 years")
        };
        let writer = {
            let (nodes, history, ops, stop, acks) = (
                nodes.clone(),
                history.clone(),
                ops.clone(),
                stop.clone(),
                acks.clone(),
            );
            tokio::spawn(async move {
                let mut counter = 0u64;
                while !stop.load(Ordering::Acquire) {
                    for k in 0..KEYS {
                        counter += 1;
                        let node = &nodes[usize::try_from(counter).expect("small") % nodes.len()];
                        let value = Bytes::from(counter.to_string());
                        let invoked = ticks();
                        let result = node.set(BUCKET, key(k), value, SetOptions::default()).await;
                        let op = checker::Op::write(Some(counter), invoked, ticks());
                        let mut h = history.lock().expect("history lock");
                        let op = match result {
                            Ok(_) => {
                                h[k] = (counter, Vec::new());
                                acks.fetch_add(1, Ordering::Relaxed);
                                op
                            }
                            // Definitely not applied: refused before any effect.
                            Err(
                                ClusterError::Syncing { .. }
                                | ClusterError::Retry { .. }
                                | ClusterError::NoTable
                                | ClusterError::Unreachable { .. }
                                | ClusterError::Mycel(Error::QuorumLost),
                            ) => op.with_outcome(checker::Outcome::Failed),
                            // Unknown: may or may not have taken effect.
                            Err(_) => {
                                h[k].1.push(counter);
                                op.with_outcome(checker::Outcome::Pending)
                            }
                        };
                        ops.lock().expect("ops lock")[k].push(op);
                    }
                }
            })
        };
        let reader = {
            let (ops, stop) = (ops.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0usize;
                while !stop.load(Ordering::Acquire) {
                    i += 1;
                    let k = (i * 7) % KEYS;
                    let node = &nodes[i % nodes.len()];
                    let invoked = ticks();
                    // A failed read observed nothing.
                    if let Ok(got) = node.get(BUCKET, key(k)).await {
                        let value = got.map(|b| {
                            std::str::from_utf8(&b)
                                .expect("utf-8")
                                .parse::<u64>()
                                .expect("a number")
                        });
                        let op = checker::Op::read(value, invoked, ticks());
                        ops.lock().expect("ops lock")[k].push(op);
                    }
                }
            })
        };
        Self {
            history,
            ops,
            stop,
            acks,
            tasks: vec![writer, reader],
        }
    }

    fn acks(&self) -> usize {
        self.acks.load(Ordering::Relaxed)
    }

    /// Stops both tasks; checks every key's history for linearizability (reads during
    /// the move included) and returns the per-key acknowledgements.
    async fn stop(self) -> Vec<(u64, Vec<u64>)> {
        self.stop.store(true, Ordering::Release);
        for t in self.tasks {
            t.await.expect("task finished");
        }
        let ops = self.ops.lock().expect("ops lock").clone();
        let mut reads = 0;
        for (k, history) in ops.iter().enumerate() {
            reads += history
                .iter()
                .filter(|op| matches!(op.kind, checker::OpKind::Read(_)))
                .count();
            let verdict = checker::check(None, history, checker::DEFAULT_MAX_STEPS);
            assert!(
                !matches!(verdict, checker::Verdict::NotLinearizable(_)),
                "key {k}: {verdict:?}"
            );
        }
        assert!(reads > 0, "the reader observed something");
        self.history.lock().expect("history lock").clone()
    }
}

/// Every key reads, through every node, its last acknowledged value or a later value
/// whose outcome was unknown: no acknowledged write is lost or rolled back.
async fn assert_history(nodes: &[&Cluster], history: &[(u64, Vec<u64>)]) {
    for node in nodes {
        for (k, (last_acked, unknown)) in history.iter().enumerate() {
            assert!(*last_acked > 0, "key {k} was acknowledged at least once");
            let got = settled("read", || node.get(BUCKET, key(k))).await;
            let got: u64 = std::str::from_utf8(&got.expect("key present"))
                .expect("utf-8")
                .parse()
                .expect("a number");
            assert!(
                got == *last_acked || (got > *last_acked && unknown.contains(&got)),
                "key {k} through {}: read {got}, last acknowledged {last_acked}, unknown {unknown:?}",
                node.id()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_under_write_load_loses_no_acknowledged_write() {
    let _serial = SERIAL.lock().await;
    let (ca, nodes) = cluster(2).await;
    let nodes: Vec<Arc<Cluster>> = nodes.into_iter().map(Arc::new).collect();
    let writer = Writer::spawn(nodes.clone());
    eventually("writes are flowing", || writer.acks() > 200).await;
    let third = Arc::new(start(&ca, "node-3", &[&nodes[0]]).await);
    let all = [nodes[0].clone(), nodes[1].clone(), third.clone()];
    let refs: Vec<&Cluster> = all.iter().map(|c| &**c).collect();
    converged(&refs).await;
    let at_convergence = writer.acks();
    eventually("writes continue after the move", || {
        writer.acks() > at_convergence + 200
    })
    .await;
    let history = writer.stop().await;
    assert!(
        third.status().primaries > 0,
        "the new node took partitions over"
    );
    assert_history(&refs, &history).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_kill_under_write_load_loses_no_acknowledged_write() {
    let _serial = SERIAL.lock().await;
    let (_ca, mut nodes) = cluster(3).await;
    let victim = nodes.remove(1);
    let survivors: Vec<Arc<Cluster>> = nodes.into_iter().map(Arc::new).collect();
    let writer = Writer::spawn(survivors.clone());
    eventually("writes are flowing", || writer.acks() > 200).await;
    assert!(victim.status().primaries > 0);
    drop(victim);
    let refs: Vec<&Cluster> = survivors.iter().map(|c| &**c).collect();
    converged(&refs).await;
    let at_convergence = writer.acks();
    eventually("writes continue after the failover", || {
        writer.acks() > at_convergence + 200
    })
    .await;
    let history = writer.stop().await;
    assert_history(&refs, &history).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_leave_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let (_ca, mut nodes) = cluster(3).await;
    let acked = write_keys(&nodes.refs(), 300, 0).await;
    let leaving = nodes.pop().expect("three nodes");
    assert!(leaving.status().replicas > 0);
    tokio::time::timeout(PATIENCE, leaving.leave(PATIENCE))
        .await
        .expect("leave finishes")
        .expect("hand-off completes");
    assert_eq!(leaving.status().replicas, 0);
    leaving.shutdown(Duration::from_secs(2)).await;
    let survivors = nodes.refs();
    converged(&survivors).await;
    assert_readable(&survivors, &acked).await;
}

/// When every member leaves at once (the whole cluster stops), nobody can take the
/// partitions over: each leave ends as soon as it sees the others leaving too, rather
/// than waiting out its timeout for a table that cannot come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_leaving_at_once_does_not_wait_for_a_hand_off() {
    let _serial = SERIAL.lock().await;
    let (_ca, nodes) = cluster(3).await;
    write_keys(&nodes.refs(), 30, 0).await;
    let all = async {
        tokio::join!(
            nodes[0].leave(PATIENCE),
            nodes[1].leave(PATIENCE),
            nodes[2].leave(PATIENCE)
        )
    };
    let (a, b, c) = tokio::time::timeout(PATIENCE, all)
        .await
        .expect("the leaves end");
    for r in [a, b, c] {
        r.expect("nobody to hand off to is not an incomplete leave");
    }
    for n in nodes {
        n.shutdown(Duration::from_secs(2)).await;
    }
}

/// But a member of the table that is not seen (crashed, maybe restarting) might take
/// over: the others do not take the quick way out, they wait for a hand-off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_does_not_give_up_on_a_missing_member() {
    let _serial = SERIAL.lock().await;
    let (_ca, mut nodes) = cluster(3).await;
    write_keys(&nodes.refs(), 30, 0).await;
    // Gone without a leave: first suspect, then failed; never leaving.
    drop(nodes.pop());
    let patience = Duration::from_secs(5);
    let (a, b) = tokio::join!(nodes[0].leave(patience), nodes[1].leave(patience));
    for r in [a, b] {
        assert!(
            matches!(r, Err(ClusterError::LeaveIncomplete { .. })),
            "{r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_refuses_writes() {
    let _serial = SERIAL.lock().await;
    let (_ca, mut nodes) = cluster(3).await;
    let lone = nodes.remove(0);
    let epoch = lone.status().epoch;
    // The other two vanish without a leave: the lone node is a minority of its table.
    drop(nodes);
    eventually("the lone node sees the others gone", || {
        lone.status().alive == vec![lone.id().clone()]
    })
    .await;
    for i in 0..20 {
        let result = lone.set(BUCKET, key(i), "x", SetOptions::default()).await;
        assert!(
            matches!(result, Err(ClusterError::Mycel(Error::QuorumLost))),
            "write {i}: {result:?}"
        );
    }
    assert!(matches!(
        lone.incr_by(BUCKET, "counter", 1).await,
        Err(ClusterError::Mycel(Error::QuorumLost))
    ));
    // No table of its own: the lone node cannot publish a table without a majority of
    // the last one (it may have published one without the first node it saw fail, while
    // the other still counted).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = lone.status();
    assert!(status.epoch >= epoch);
    assert!(status.members.len() > 1, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_and_ttl_across_nodes() {
    let _serial = SERIAL.lock().await;
    let (_ca, nodes) = cluster(3).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    // TTL set on one node, seen and enforced through the others.
    let short = SetOptions {
        expiry: Expiry::After(Duration::from_millis(300)),
        ..SetOptions::default()
    };
    a.set(BUCKET, "short", "gone soon", short)
        .await
        .expect("set");
    a.set(BUCKET, "kept", "stays", SetOptions::default())
        .await
        .expect("set");
    match b.ttl(BUCKET, "short").await.expect("ttl") {
        Ttl::Expires { remaining, .. } => assert!(remaining <= Duration::from_millis(300)),
        Ttl::Missing => {} // already expired on a very slow machine
        other => panic!("unexpected ttl {other:?}"),
    }
    assert_eq!(c.ttl(BUCKET, "kept").await.expect("ttl"), Ttl::Persistent);
    for node in [a, b, c] {
        let mut gone = false;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !gone {
            gone = node.get(BUCKET, "short").await.expect("get").is_none();
            assert!(tokio::time::Instant::now() < deadline, "expiry");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            node.get(BUCKET, "kept").await.expect("get").as_deref(),
            Some(&b"stays"[..])
        );
    }
    // EXPIRE and PERSIST through other nodes.
    assert!(
        b.expire(BUCKET, "kept", Duration::from_secs(600))
            .await
            .expect("expire")
    );
    assert!(matches!(
        c.ttl(BUCKET, "kept").await.expect("ttl"),
        Ttl::Expires { .. }
    ));
    assert!(c.persist(BUCKET, "kept").await.expect("persist"));
    assert_eq!(a.ttl(BUCKET, "kept").await.expect("ttl"), Ttl::Persistent);
    assert!(
        !a.expire(BUCKET, "missing", Duration::from_secs(1))
            .await
            .expect("expire")
    );

    // Atomic increments from every node.
    for (i, node) in [a, b, c, a, b, c].iter().enumerate() {
        node.incr_by(BUCKET, "counter", i64::try_from(i).expect("small") + 1)
            .await
            .expect("incr");
    }
    assert_eq!(
        c.get(BUCKET, "counter").await.expect("get").as_deref(),
        Some(&b"21"[..])
    );
    assert!(matches!(
        a.incr_by(BUCKET, "kept", 1).await,
        Err(ClusterError::Mycel(Error::NotAnInteger))
    ));

    // NX / XX and GET.
    let nx = SetOptions {
        condition: Condition::IfAbsent,
        get: true,
        ..SetOptions::default()
    };
    let r = b.set(BUCKET, "kept", "other", nx).await.expect("set nx");
    assert!(!r.applied);
    assert_eq!(r.previous.as_deref(), Some(&b"stays"[..]));

    // Multi-key operations split by owner.
    let entries: Vec<(Bytes, Bytes)> = (0..50)
        .map(|i| (Bytes::from(format!("m{i}")), Bytes::from(format!("v{i}"))))
        .collect();
    a.mset(BUCKET, entries.clone()).await.expect("mset");
    let mut keys: Vec<Bytes> = entries.iter().map(|(k, _)| k.clone()).collect();
    keys.push(Bytes::from_static(b"absent"));
    let values = b.mget(BUCKET, keys).await.expect("mget");
    for (i, (_, v)) in entries.iter().enumerate() {
        assert_eq!(values[i].as_ref(), Some(v));
    }
    assert_eq!(values[50], None);

    // Delete and exists, and the cluster-wide count.
    assert!(c.exists(BUCKET, "m7").await.expect("exists"));
    assert!(a.delete(BUCKET, "m7").await.expect("delete"));
    assert!(!b.exists(BUCKET, "m7").await.expect("exists"));
    assert!(!b.delete(BUCKET, "m7").await.expect("delete"));
    // 49 m-keys, kept, counter.
    assert_eq!(c.len().await.expect("len"), 51);

    // Typed errors.
    assert!(matches!(
        a.get("no-such-bucket", "k").await,
        Err(ClusterError::Mycel(Error::BucketUnknown { .. }))
    ));
    let big = Bytes::from(vec![0u8; 2 * 1024 * 1024]);
    assert!(matches!(
        b.set(BUCKET, "big", big, SetOptions::default()).await,
        Err(ClusterError::Mycel(Error::ValueTooLarge { .. }))
    ));
}

/// Every key of `range` (a call may stop within a partition: resumed from there), sorted.
async fn all_keys(node: &Cluster, range: Range<u16>, pattern: Option<&'static str>) -> Vec<Bytes> {
    let (mut keys, mut at) = (Vec::new(), Some((range.start, 0)));
    while let Some((start, from)) = at {
        let (page, stopped) = settled("keys", || {
            node.keys(BUCKET, start..range.end, from, pattern.map(Bytes::from))
        })
        .await;
        keys.extend(page);
        at = stopped;
    }
    keys.sort();
    keys
}

/// `keys` reads each partition at its primary, through any node: every key exactly once,
/// filtered by a pattern, nothing from partitions past the end; a partition with more
/// than a page of keys is listed in pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_listed_once_through_every_node() {
    let _serial = SERIAL.lock().await;
    let ca = tempfile::tempdir().expect("tempdir");
    let mut small_pages = config();
    small_pages.page_bytes = 512;
    let mut nodes = vec![start_with(&ca, "node-1", &[], small_pages.clone()).await];
    for name in ["node-2", "node-3"] {
        let c = start_with(&ca, name, &[&nodes[0]], small_pages.clone()).await;
        nodes.push(c);
    }
    converged(&nodes.refs()).await;
    let acked = write_keys(&nodes.refs(), 300, 0).await;
    let all: Vec<Bytes> = {
        let mut all: Vec<Bytes> = acked.keys().map(|&i| key(i)).collect();
        all.sort();
        all
    };
    for node in &nodes {
        assert_eq!(
            all_keys(node, 0..256, None).await,
            all,
            "through {}",
            node.id()
        );
        // Two halves (the second running past the last partition) make the whole.
        let mut halves = all_keys(node, 0..100, None).await;
        halves.extend(all_keys(node, 100..u16::MAX, None).await);
        halves.sort();
        assert_eq!(halves, all, "halves through {}", node.id());
        let want: Vec<Bytes> = (10..20).map(key).collect();
        assert_eq!(
            all_keys(node, 0..256, Some("key-1?")).await,
            want,
            "pattern through {}",
            node.id()
        );
        assert!(all_keys(node, 256..300, None).await.is_empty());
        assert!(node.keys("no-such-bucket", 0..256, 0, None).await.is_err());
    }
    // 300 keys of one partition are more than a 512-byte page: listed in pages, each
    // ending within the partition, exactly once (the pattern leaves out the other keys
    // that partition may hold).
    let tagged: Vec<Bytes> = (0..300).map(|i| Bytes::from(format!("{{t}}{i}"))).collect();
    for k in &tagged {
        nodes[0]
            .set(BUCKET, k.clone(), "v", SetOptions::default())
            .await
            .expect("set");
    }
    for node in &nodes {
        let p = config().mycel.store.partitioning.partition_of(b"{t}").get();
        let (mut listed, mut from, mut pages) = (Vec::new(), 0, 0);
        loop {
            let (page, stopped) = settled("keys", || {
                node.keys(BUCKET, p..p + 1, from, Some("{t}*".into()))
            })
            .await;
            listed.extend(page);
            pages += 1;
            match stopped {
                Some((at, next)) => {
                    assert_eq!(at, p);
                    from = next;
                }
                None => break,
            }
        }
        assert!(pages > 3, "{pages} pages");
        listed.sort();
        let mut want = tagged.clone();
        want.sort();
        assert_eq!(listed, want, "through {}", node.id());
    }
}

/// `flush` through any node deletes every key of every bucket at its primary and at its
/// backups, in pages when a partition holds more than one: no node holds a live key
/// afterwards, and the cluster takes writes as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_deletes_every_key_at_primaries_and_backups() {
    let _serial = SERIAL.lock().await;
    let ca = tempfile::tempdir().expect("tempdir");
    let mut config = config();
    config.page_bytes = 512;
    config
        .buckets
        .push(("other".to_owned(), mycel::BucketOptions::default()));
    let mut nodes = vec![start_with(&ca, "node-1", &[], config.clone()).await];
    for name in ["node-2", "node-3"] {
        let c = start_with(&ca, name, &[&nodes[0]], config.clone()).await;
        nodes.push(c);
    }
    converged(&nodes.refs()).await;
    write_keys(&nodes.refs(), 300, 0).await;
    // One partition with far more than a page of keys.
    for i in 0..200 {
        let k = Bytes::from(format!("{{tag}}{i}"));
        nodes[0]
            .set(BUCKET, k, "v", SetOptions::default())
            .await
            .expect("set");
    }
    for i in 0..50 {
        nodes[2]
            .set("other", key(i), "v", SetOptions::default())
            .await
            .expect("set");
    }
    let held = |n: &Cluster| n.local_stats().keys;
    // Two copies of each key (RF 2), spread over the three nodes.
    assert_eq!(nodes.iter().map(held).sum::<usize>(), 2 * 550);

    let deleted = settled("flush", || nodes[1].flush()).await;
    assert_eq!(deleted, 550);
    for node in &nodes {
        assert_eq!(held(node), 0, "{} still holds keys", node.id());
        assert_eq!(settled("len", || node.len()).await, 0);
        assert_eq!(
            settled("get", || node.get(BUCKET, key(7))).await,
            None,
            "through {}",
            node.id()
        );
    }
    assert_eq!(settled("flush", || nodes[2].flush()).await, 0);
    let acked = write_keys(&nodes.refs(), 20, 1).await;
    assert_readable(&nodes.refs(), &acked).await;
}

/// Optimistic read-modify-write through every node of three (Redis `WATCH`): each
/// caller reads a counter with its stamp, then writes the value plus one in a
/// transaction that first checks the stamp, again while the check fails. No increment
/// is lost (the check catches every write in between), and none is applied twice (a
/// failed check stops the transaction: the write after it does not run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_transaction_runs_only_if_the_key_is_unchanged() {
    let _serial = SERIAL.lock().await;
    let (_ca, nodes) = cluster(3).await;
    let nodes: Vec<Arc<Cluster>> = nodes.into_iter().map(Arc::new).collect();
    let counter = Bytes::from_static(b"{watch}counter");
    let (callers, rounds) = (6, 25);
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let node = Arc::clone(&nodes[c % nodes.len()]);
            let counter = counter.clone();
            tokio::spawn(async move {
                for _ in 0..rounds {
                    loop {
                        let read = vec![
                            BatchOp::Stamp {
                                key: counter.clone(),
                            },
                            BatchOp::Get {
                                key: counter.clone(),
                            },
                        ];
                        let results = node.transaction(BUCKET, read).await.expect("read");
                        let (Ok(BatchReply::Stamp(stamp)), Ok(BatchReply::Value(value))) =
                            (&results[0], &results[1])
                        else {
                            panic!("through {}: {results:?}", node.id());
                        };
                        let n: u64 = value.as_ref().map_or(0, |v| {
                            std::str::from_utf8(v)
                                .expect("utf-8")
                                .parse()
                                .expect("number")
                        });
                        let write = vec![
                            BatchOp::Unchanged {
                                key: counter.clone(),
                                stamp: *stamp,
                            },
                            BatchOp::Set {
                                key: counter.clone(),
                                value: Bytes::from((n + 1).to_string()),
                                options: SetOptions::default(),
                            },
                        ];
                        let results = node.transaction(BUCKET, write).await.expect("write");
                        match (&results[0], &results[1]) {
                            (Ok(BatchReply::Bool(true)), Ok(BatchReply::Set(_))) => break,
                            (
                                Ok(BatchReply::Bool(false)),
                                Err(ClusterError::Mycel(Error::WatchedKeyChanged)),
                            ) => {}
                            other => panic!("through {}: {other:?}", node.id()),
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("caller");
    }
    let total = settled("get", || nodes[0].get(BUCKET, counter.clone())).await;
    assert_eq!(total, Some(Bytes::from((callers * rounds).to_string())));

    // A write through another node between the stamp and the check: the check fails
    // and nothing after it runs; a delete, and a write then a delete, change the stamp
    // too.
    let stamp_of = |node: Arc<Cluster>, key: Bytes| async move {
        match node.transaction(BUCKET, vec![BatchOp::Stamp { key }]).await {
            Ok(mut r) => match r.pop() {
                Some(Ok(BatchReply::Stamp(s))) => s,
                other => panic!("{other:?}"),
            },
            Err(e) => panic!("{e}"),
        }
    };
    let check = |key: &Bytes, stamp| {
        vec![
            BatchOp::Unchanged {
                key: key.clone(),
                stamp,
            },
            BatchOp::IncrBy {
                key: Bytes::from_static(b"{watch}side"),
                delta: 1,
            },
        ]
    };
    // The check failed, and the operation after it did not run.
    let stopped = |results: &[Result<BatchReply, ClusterError>]| {
        matches!(
            results,
            [
                Ok(BatchReply::Bool(false)),
                Err(ClusterError::Mycel(Error::WatchedKeyChanged))
            ]
        )
    };
    let stamp = stamp_of(Arc::clone(&nodes[0]), counter.clone()).await;
    nodes[1]
        .set(
            BUCKET,
            counter.clone(),
            Bytes::from_static(b"0"),
            SetOptions::default(),
        )
        .await
        .expect("set");
    let results = nodes[2]
        .transaction(BUCKET, check(&counter, stamp))
        .await
        .expect("check");
    assert!(stopped(&results), "{results:?}");
    let fresh = Bytes::from_static(b"{watch}fresh");
    let stamp = stamp_of(Arc::clone(&nodes[1]), fresh.clone()).await;
    assert_eq!(stamp.version, None);
    nodes[0]
        .set(
            BUCKET,
            fresh.clone(),
            Bytes::from_static(b"1"),
            SetOptions::default(),
        )
        .await
        .expect("set");
    nodes[0]
        .delete(BUCKET, fresh.clone())
        .await
        .expect("delete");
    let results = nodes[2]
        .transaction(BUCKET, check(&fresh, stamp))
        .await
        .expect("check");
    assert!(stopped(&results), "{results:?}");
    // Unchanged: the check holds and the rest runs.
    let stamp = stamp_of(Arc::clone(&nodes[2]), counter.clone()).await;
    let results = nodes[0]
        .transaction(BUCKET, check(&counter, stamp))
        .await
        .expect("check");
    assert!(
        matches!(
            results[..],
            [Ok(BatchReply::Bool(true)), Ok(BatchReply::Int(1))]
        ),
        "{results:?}"
    );
}

/// A transaction's operations are applied by their partition's primary as one: no other
/// caller's operation comes between them, however many there are (more than one hold
/// of the lock takes in a batch) and whoever else forwards to that primary meanwhile.
/// Callers on every node, the primary's included, each increment a counter 70 times and
/// read it in one transaction: each sees 70 consecutive values and reads the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_is_applied_as_one() {
    let _serial = SERIAL.lock().await;
    let (_ca, nodes) = cluster(3).await;
    let nodes: Vec<Arc<Cluster>> = nodes.into_iter().map(Arc::new).collect();
    let counter = Bytes::from_static(b"{atomic}counter");
    let (callers, rounds, increments) = (6, 20, 70);
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let node = Arc::clone(&nodes[c % nodes.len()]);
            let counter = counter.clone();
            tokio::spawn(async move {
                for _ in 0..rounds {
                    let mut ops: Vec<BatchOp> = (0..increments)
                        .map(|_| BatchOp::IncrBy {
                            key: counter.clone(),
                            delta: 1,
                        })
                        .collect();
                    ops.push(BatchOp::Get {
                        key: counter.clone(),
                    });
                    let results = node
                        .transaction(BUCKET, ops)
                        .await
                        .unwrap_or_else(|e| panic!("through {}: {e}", node.id()));
                    let values: Vec<i64> = results[..increments]
                        .iter()
                        .map(|r| match r {
                            Ok(BatchReply::Int(v)) => *v,
                            other => panic!("through {}: {other:?}", node.id()),
                        })
                        .collect();
                    let first = values[0];
                    assert!(
                        values.iter().zip(first..).all(|(v, want)| *v == want),
                        "another increment came between, through {}: {values:?}",
                        node.id()
                    );
                    let Ok(BatchReply::Value(Some(read))) = &results[increments] else {
                        panic!("through {}: {:?}", node.id(), results[increments]);
                    };
                    assert_eq!(read, &Bytes::from(values[increments - 1].to_string()));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("caller");
    }
    let total = settled("get", || nodes[0].get(BUCKET, counter.clone())).await;
    let want = callers * rounds * increments;
    assert_eq!(total, Some(Bytes::from(want.to_string())));
    // Keys of two partitions: refused, nothing run.
    let partitioning = config().mycel.store.partitioning;
    let other = (0..)
        .map(key)
        .find(|k| partitioning.partition_of(k) != partitioning.partition_of(&counter))
        .expect("a key of another partition");
    let ops = vec![
        BatchOp::IncrBy {
            key: counter.clone(),
            delta: 1,
        },
        BatchOp::IncrBy {
            key: other,
            delta: 1,
        },
    ];
    assert!(matches!(
        nodes[1].transaction(BUCKET, ops).await,
        Err(ClusterError::Mycel(Error::CrossSlot))
    ));
    let total = settled("get", || nodes[0].get(BUCKET, counter.clone())).await;
    assert_eq!(total, Some(Bytes::from(want.to_string())));
}

/// `Mycel::get_del` reads and deletes as one, also through a node that is not the key's
/// primary: increments made meanwhile through the other nodes are either in a value some
/// `get_del` returns or still in the key. Every node takes the key with `get_del` over
/// and over while every node increments it; what they took plus what is left is every
/// increment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_del_loses_no_write_made_meanwhile() {
    let _serial = SERIAL.lock().await;
    let ca = tempfile::tempdir().expect("tempdir");
    let mut handles: Vec<Mycel> = Vec::new();
    for i in 1..=3 {
        let mut c = nodosum::Config::development(id(&format!("node-{i}")));
        c.tls.dev_ca_dir = Some(ca.path().join("dev-ca"));
        let node = Node::start(c).await.expect("node starts");
        if let Some(first) = handles.first() {
            let seed = first.cluster().expect("cluster").node().gossip_addr();
            node.join(vec![seed]);
        }
        handles.push(Mycel::start(node, config()).await.expect("mycel starts"));
    }
    converged(
        &handles
            .iter()
            .map(|m| m.cluster().expect("cluster"))
            .collect::<Vec<_>>(),
    )
    .await;
    let bucket = handles[0].default_bucket();
    let key = Bytes::from_static(b"taken");
    let increments = 100;
    let done = Arc::new(AtomicBool::new(false));
    let takers: Vec<_> = handles
        .iter()
        .map(|m| {
            let (m, key, done) = (m.clone(), key.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                let mut taken = 0;
                while !done.load(Ordering::Acquire) {
                    if let Some(v) = m.get_del(bucket, key.clone()).await.expect("get_del") {
                        taken += parse(&v);
                    }
                    // At the primary, `get_del` completes without waiting for anything.
                    tokio::task::yield_now().await;
                }
                taken
            })
        })
        .collect();
    let writers: Vec<_> = handles
        .iter()
        .map(|m| {
            let (m, key) = (m.clone(), key.clone());
            tokio::spawn(async move {
                for _ in 0..increments {
                    m.incr_by(bucket, key.clone(), 1).await.expect("incr");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    done.store(true, Ordering::Release);
    let mut taken = 0;
    for t in takers {
        taken += t.await.expect("taker");
    }
    let left = handles[0].get(bucket, &key).await.expect("get");
    assert_eq!(taken + left.map_or(0, |v| parse(&v)), 3 * increments);
}

fn parse(v: &[u8]) -> i64 {
    std::str::from_utf8(v)
        .expect("utf-8")
        .parse()
        .expect("an integer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flight_loads_once_for_concurrent_misses_from_every_node() {
    let _serial = SERIAL.lock().await;
    let (_ca, nodes) = cluster(3).await;
    let runs = Arc::new(AtomicUsize::new(0));
    for node in &nodes {
        let runs = runs.clone();
        let loader: Loader = Arc::new(move |key: Bytes| {
            let runs = runs.clone();
            Box::pin(async move {
                runs.fetch_add(1, Ordering::SeqCst);
                // Slow enough that the misses overlap; correctness does not depend on it.
                tokio::time::sleep(Duration::from_millis(200)).await;
                if key.as_ref() == b"nothing" {
                    None
                } else {
                    Some(Bytes::from(format!(
                        "loaded {}",
                        String::from_utf8_lossy(&key)
                    )))
                }
            })
        });
        node.set_loader(BUCKET, loader);
    }
    let nodes: Vec<Arc<Cluster>> = nodes.into_iter().map(Arc::new).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let node = nodes[i % 3].clone();
        tasks.spawn(async move { node.get_or_load(BUCKET, "hot").await });
    }
    while let Some(result) = tasks.join_next().await {
        let value = result.expect("task").expect("get_or_load");
        assert_eq!(value.as_deref(), Some(&b"loaded hot"[..]));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the loader ran once");
    // The loaded value is stored: a plain get from any node sees it.
    for node in &nodes {
        assert_eq!(
            node.get(BUCKET, "hot").await.expect("get").as_deref(),
            Some(&b"loaded hot"[..])
        );
    }
    // A loader that finds nothing stores nothing.
    assert_eq!(
        nodes[1].get_or_load(BUCKET, "nothing").await.expect("load"),
        None
    );
    assert_eq!(nodes[2].get(BUCKET, "nothing").await.expect("get"), None);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freeze_pauses_migrations_until_thawed() {
    let _serial = SERIAL.lock().await;
    let (ca, mut nodes) = cluster(2).await;
    let epoch = nodes[0].status().epoch;
    // node-1 is the authority (the oldest); frozen, it publishes nothing.
    nodes[0].set_frozen(true).expect("freeze");
    let third = start(&ca, "node-3", &[&nodes[0]]).await;
    eventually("every node sees three members", || {
        nodes
            .iter()
            .chain([&third])
            .all(|n| n.status().alive.len() == 3)
    })
    .await;
    // Well past the stabilisation window: still the old table, nothing moved.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(nodes[0].status().epoch, epoch);
    assert_eq!(nodes[0].status().members.len(), 2);
    eventually("the new node learns the current table", || {
        third.status().epoch == epoch
    })
    .await;
    assert_eq!(third.status().replicas, 0);
    // Not in the table yet: it holds nothing it should, but it is not ready either.
    assert!(!third.ready(), "{:?}", third.status());
    // It serves through the owners meanwhile.
    settled("write through the new node", || {
        third.set(BUCKET, "during-freeze", "ok", SetOptions::default())
    })
    .await;
    nodes[0].set_frozen(false).expect("thaw");
    nodes.push(third);
    converged(&nodes.refs()).await;
    assert!(nodes[0].status().epoch > epoch);
    assert!(nodes[2].status().replicas > 0);
    eventually("the new node is ready once in the table and synced", || {
        nodes[2].ready()
    })
    .await;
    assert_eq!(
        nodes[2]
            .get(BUCKET, "during-freeze")
            .await
            .expect("get")
            .as_deref(),
        Some(&b"ok"[..])
    );
    // The cluster layer's metrics are in the node's registry.
    let text = nodes[0].node().metrics_text();
    for name in [
        "mycel_table_epoch",
        "mycel_partitions_owned",
        "mycel_partitions_synced",
        "mycel_fetch_bytes",
        "mycel_forwarded_ops",
        "mycel_not_owner",
    ] {
        assert!(text.contains(name), "{name} missing from metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_that_restarts_rejoins_without_losing_or_resurrecting() {
    let _serial = SERIAL.lock().await;
    let (ca, mut nodes) = cluster(3).await;
    let mut acked = write_keys(&nodes.refs(), 200, 0).await;
    // A key deleted while the node is away must stay deleted after it is back.
    nodes[0]
        .set(BUCKET, "doomed", "x", SetOptions::default())
        .await
        .expect("set");
    let killed = nodes.pop().expect("three nodes");
    drop(killed);
    converged(&nodes.refs()).await;
    for (i, v) in write_keys(&nodes.refs(), 100, 1).await {
        acked.insert(i, v);
    }
    assert!(nodes[1].delete(BUCKET, "doomed").await.expect("delete"));
    // The same node ID comes back with an empty store and a new start time.
    let back = start(&ca, "node-3", &[&nodes[0]]).await;
    nodes.push(back);
    converged(&nodes.refs()).await;
    assert!(
        nodes[2].status().replicas > 0,
        "the restarted node holds data again"
    );
    assert_readable(&nodes.refs(), &acked).await;
    for node in &nodes {
        assert_eq!(node.get(BUCKET, "doomed").await.expect("get"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_leave_of_the_authority_under_write_load_is_linearizable() {
    let _serial = SERIAL.lock().await;
    let (_ca, mut nodes) = cluster(3).await;
    // node-1 is the oldest: the authority; its backups are promoted while it still lives.
    let leaving = nodes.remove(0);
    let stay: Vec<Arc<Cluster>> = nodes.into_iter().map(Arc::new).collect();
    let writer = Writer::spawn(stay.clone());
    eventually("writes are flowing", || writer.acks() > 200).await;
    assert!(leaving.status().primaries > 0);
    tokio::time::timeout(PATIENCE, leaving.leave(PATIENCE))
        .await
        .expect("leave finishes")
        .expect("hand-off completes");
    leaving.shutdown(Duration::from_secs(2)).await;
    let refs: Vec<&Cluster> = stay.iter().map(|c| &**c).collect();
    converged(&refs).await;
    let at_convergence = writer.acks();
    eventually("writes continue after the leave", || {
        writer.acks() > at_convergence + 200
    })
    .await;
    let history = writer.stop().await;
    assert_history(&refs, &history).await;
}

/// Whether a cluster batch result equals the standalone model's (times to live by kind
/// only: the remaining time differs by how long the call took).
fn same(got: &Result<BatchReply, ClusterError>, want: &Result<BatchReply, Error>) -> bool {
    match (got, want) {
        (Ok(BatchReply::Ttl(a)), Ok(BatchReply::Ttl(b))) => {
            std::mem::discriminant(a) == std::mem::discriminant(b)
        }
        (Ok(a), Ok(b)) => a == b,
        (Err(ClusterError::Mycel(a)), Err(b)) => a == b,
        _ => false,
    }
}

/// A deterministic mix of every batchable operation over `keys`, with failures in it: an
/// increment of a non-integer and a value over the size limit.
fn batch_ops(keys: &[Bytes], len: usize, seed: usize, big: usize) -> Vec<BatchOp> {
    (0..len)
        .map(|i| {
            let key = keys[(i * 7 + seed) % keys.len()].clone();
            match (i + seed) % 11 {
                0 | 1 => BatchOp::Set {
                    key,
                    value: Bytes::from(format!("{i}")),
                    options: SetOptions::default(),
                },
                2 => BatchOp::Get { key },
                3 => BatchOp::IncrBy { key, delta: 3 },
                4 => BatchOp::Set {
                    key,
                    value: Bytes::from(format!("text-{i}")),
                    options: SetOptions {
                        get: true,
                        condition: Condition::IfPresent,
                        ..SetOptions::default()
                    },
                },
                5 => BatchOp::Delete { key },
                6 => BatchOp::Exists { key },
                7 => BatchOp::Expire {
                    key,
                    after: Duration::from_secs(600),
                    // The conditions that do not compare times (which differ by how
                    // long the calls took).
                    condition: [
                        ExpireCondition::Always,
                        ExpireCondition::IfNone,
                        ExpireCondition::IfSome,
                    ][i % 3],
                },
                8 => BatchOp::Ttl { key },
                9 => BatchOp::Persist { key },
                _ => BatchOp::Set {
                    key,
                    value: Bytes::from(vec![b'x'; big]),
                    options: SetOptions::default(),
                },
            }
        })
        .collect()
}

/// Checks `ops` run through `node` as one batch against a standalone store running them
/// one by one, and returns how many failed (as the model also did).
async fn check_batch(node: &Cluster, model: &Mycel, ops: Vec<BatchOp>) -> usize {
    let want = model.batch(model.default_bucket(), ops.clone()).await;
    let got = node.batch(BUCKET, ops.clone()).await;
    assert_eq!(got.len(), ops.len());
    for (i, ((op, g), w)) in ops.iter().zip(&got).zip(&want).enumerate() {
        assert!(
            same(g, w),
            "operation {i} ({op:?}) through {}: got {g:?}, the model {w:?}",
            node.id()
        );
    }
    want.iter().filter(|w| w.is_err()).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_apply_in_order_per_key_and_fail_per_operation() {
    let _serial = SERIAL.lock().await;
    // Small pages: a batch's operations for one primary span several messages and
    // rounds, and replies of large values are deferred and sent again.
    let mut config = config();
    config.page_bytes = 4096;
    let max_value = config.mycel.store.max_value_len;
    let ca = tempfile::tempdir().expect("tempdir");
    let a = start_with(&ca, "node-1", &[], config.clone()).await;
    let b = start_with(&ca, "node-2", &[&a], config.clone()).await;
    let c = start_with(&ca, "node-3", &[&a], config.clone()).await;
    let nodes = vec![a, b, c];
    converged(&nodes.refs()).await;
    let model_config = |max_value_len| {
        let mut m = Config::default();
        m.store.max_value_len = max_value_len;
        m
    };

    // One caller: 20 keys over every primary, 300 operations with failures in them.
    let model = Mycel::standalone(model_config(max_value))
        .await
        .expect("model");
    let keys: Vec<Bytes> = (0..20).map(|i| Bytes::from(format!("batch-{i}"))).collect();
    let failed = check_batch(&nodes[0], &model, batch_ops(&keys, 300, 0, max_value + 1)).await;
    assert!(failed > 20, "the batch had failing operations: {failed}");

    // Same-key order with values larger than a page: every read sees the write before it.
    let big = Bytes::from("big");
    let mut ops = Vec::new();
    for round in 0..6u8 {
        ops.push(BatchOp::Set {
            key: big.clone(),
            value: Bytes::from(vec![b'a' + round; 3000]),
            options: SetOptions::default(),
        });
        for _ in 0..3 {
            ops.push(BatchOp::Get { key: big.clone() });
        }
    }
    let got = nodes[1].batch(BUCKET, ops).await;
    for (i, r) in got.iter().enumerate() {
        let round = u8::try_from(i / 4).expect("few rounds");
        let want = Bytes::from(vec![b'a' + round; 3000]);
        match r {
            Ok(BatchReply::Set(s)) => assert!(s.applied, "write {i}"),
            Ok(BatchReply::Value(v)) => assert_eq!(v.as_ref(), Some(&want), "read {i}"),
            other => panic!("operation {i}: {other:?}"),
        }
    }

    // Concurrent callers through every node share messages; each sees its own order.
    let mut tasks = Vec::new();
    let nodes = Arc::new(nodes);
    for caller in 0..9usize {
        let nodes = Arc::clone(&nodes);
        tasks.push(tokio::spawn(async move {
            let model = Mycel::standalone(model_config(max_value))
                .await
                .expect("model");
            let keys: Vec<Bytes> = (0..8)
                .map(|i| Bytes::from(format!("caller-{caller}-{i}")))
                .collect();
            let node = &nodes[caller % nodes.len()];
            for round in 0..3 {
                check_batch(node, &model, batch_ops(&keys, 40, caller + round, 16)).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("caller");
    }
}

/// A lone node runs a batch on its store directly (no wire operations, no rounds): its
/// answers, failures included, are a standalone store's, for a pipeline of one and for
/// batches of several runs of the state lock; and the node that joins it afterwards
/// takes over the values it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_node_answers_batches_as_a_standalone_store() {
    let _serial = SERIAL.lock().await;
    let (ca, nodes) = cluster(1).await;
    let max_value = config().mycel.store.max_value_len;
    let mut model_config = Config::default();
    model_config.store.max_value_len = max_value;
    let model = Mycel::standalone(model_config).await.expect("model");
    let keys: Vec<Bytes> = (0..20).map(|i| Bytes::from(format!("lone-{i}"))).collect();
    let big = max_value + 1;
    let failed = check_batch(&nodes[0], &model, batch_ops(&keys, 300, 0, big)).await;
    assert!(failed > 20, "the batch had failing operations: {failed}");
    // A pipeline of one, and one longer than a lock run.
    check_batch(&nodes[0], &model, batch_ops(&keys, 1, 3, big)).await;
    check_batch(&nodes[0], &model, batch_ops(&keys, 200, 5, 16)).await;

    let mut nodes = nodes;
    let joiner = start(&ca, "node-2", &[&nodes[0]]).await;
    nodes.push(joiner);
    converged(&nodes.refs()).await;
    let reads: Vec<BatchOp> = keys
        .iter()
        .map(|k| BatchOp::Get { key: k.clone() })
        .collect();
    let want = model.batch(model.default_bucket(), reads.clone()).await;
    for node in &nodes {
        let got = node.batch(BUCKET, reads.clone()).await;
        for ((k, g), w) in keys.iter().zip(&got).zip(&want) {
            assert!(
                same(g, w),
                "{k:?} through {}: {g:?}, the model {w:?}",
                node.id()
            );
        }
    }
}

/// Batches of writes each followed by a read of the same key, run while a third node
/// joins two and partitions move: whatever rounds of retries a batch goes through, a read
/// that follows an acknowledged write of the same batch sees exactly that write, and
/// every last acknowledged value is readable afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_keep_same_key_order_while_partitions_move() {
    batches_during_a_join(2).await;
}

/// The same with one node that a second joins: before the join every batch runs on the
/// lone node's store directly, without rounds (a batch the join interrupts between two
/// runs of it takes the general path for the rest); from the join on, batches are split
/// between the two primaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_a_lone_node_keep_order_when_a_second_joins() {
    batches_during_a_join(1).await;
}

/// Runs the batches of the two tests above on a cluster of `initial` nodes that one more
/// node joins.
async fn batches_during_a_join(initial: usize) {
    let _serial = SERIAL.lock().await;
    let (ca, nodes) = cluster(initial).await;
    let nodes: Vec<Arc<Cluster>> = nodes.into_iter().map(Arc::new).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let batches = Arc::new(AtomicUsize::new(0));
    let task = {
        let (nodes, stop, batches) = (nodes.clone(), Arc::clone(&stop), Arc::clone(&batches));
        tokio::spawn(async move {
            // 80 operations: a lone node runs them in two holds of its lock, so a join
            // can land between them.
            let keys: Vec<Bytes> = (0..40)
                .map(|i| Bytes::from(format!("moving-{i}")))
                .collect();
            // Per key: the last acknowledged value and later values of unknown outcome.
            let mut acked: BTreeMap<Bytes, (Bytes, Vec<Bytes>)> = BTreeMap::new();
            let mut n = 0usize;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                let mut ops = Vec::new();
                for k in &keys {
                    ops.push(BatchOp::Set {
                        key: k.clone(),
                        value: Bytes::from(format!("{n}")),
                        options: SetOptions::default(),
                    });
                    ops.push(BatchOp::Get { key: k.clone() });
                }
                let results = nodes[n % nodes.len()].batch(BUCKET, ops).await;
                let mut all_ok = true;
                for (k, pair) in keys.iter().zip(results.chunks(2)) {
                    match (&pair[0], &pair[1]) {
                        (Ok(BatchReply::Set(s)), read) => {
                            assert!(s.applied, "an unconditional set applies");
                            acked.insert(k.clone(), (Bytes::from(format!("{n}")), Vec::new()));
                            match read {
                                Ok(BatchReply::Value(v)) => assert_eq!(
                                    v.as_deref(),
                                    Some(format!("{n}").as_bytes()),
                                    "batch {n}: the read of {k:?} follows its write"
                                ),
                                Ok(other) => panic!("unexpected reply {other:?}"),
                                Err(_) => all_ok = false,
                            }
                        }
                        (Ok(other), _) => panic!("unexpected reply {other:?}"),
                        (Err(_), _) => {
                            all_ok = false;
                            if let Some((_, unknown)) = acked.get_mut(k) {
                                unknown.push(Bytes::from(format!("{n}")));
                            }
                        }
                    }
                }
                if all_ok {
                    batches.fetch_add(1, Ordering::AcqRel);
                }
            }
            acked
        })
    };
    eventually("batches are flowing", || {
        batches.load(Ordering::Acquire) > 10
    })
    .await;
    let name = format!("node-{}", initial + 1);
    let joiner = Arc::new(start(&ca, &name, &[&nodes[0]]).await);
    let mut all = nodes.clone();
    all.push(joiner.clone());
    let refs: Vec<&Cluster> = all.iter().map(|c| &**c).collect();
    converged(&refs).await;
    let at_convergence = batches.load(Ordering::Acquire);
    eventually("batches continue after the move", || {
        batches.load(Ordering::Acquire) > at_convergence + 10
    })
    .await;
    stop.store(true, Ordering::Release);
    let acked = task.await.expect("batch task");
    assert!(
        joiner.status().primaries > 0,
        "the new node took partitions over"
    );
    for node in &refs {
        for (k, (last, unknown)) in &acked {
            let got = settled("read", || node.get(BUCKET, k.clone()))
                .await
                .expect("an acknowledged key exists");
            assert!(
                got == last || unknown.contains(&got),
                "{k:?} through {}: {got:?}, last acknowledged {last:?}",
                node.id()
            );
        }
    }
}
