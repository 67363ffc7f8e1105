//! Deterministic simulation of the core's modules working together as a cluster would:
//! routing tables from the authority, synchronous primary-to-backup replication with
//! versions, failover, re-replication by snapshot, joins and restarts. No network: the
//! driver moves writes and snapshots between nodes directly, in the order the networked
//! layer is meant to (copy a partition to its new replicas, then switch tables, then drop
//! old copies). It checks the promise Mycel is built around: with RF=2, an acknowledged
//! write survives the loss of any one node.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use nodosum_proto::NodeId;
use proptest::prelude::*;

use crate::checker::{self, Op, Verdict};
use crate::clock::Timestamp;
use crate::placement::Member;
use crate::routing::{Role, RoutingState};
use crate::slot::Partitioning;
use crate::store::{BucketId, BucketOptions, SetOptions, Store, StoreConfig};

const NOW: Timestamp = Timestamp::from_millis(1_000_000);

struct Node {
    member: Member,
    routing: RoutingState,
    store: Store,
    bucket: BucketId,
}

impl Node {
    fn new(name: &str, started_at: u64) -> Self {
        let id = NodeId::new(name).expect("valid id");
        let config = StoreConfig {
            partitioning: partitioning(),
            ..StoreConfig::default()
        };
        let mut store = Store::new(config);
        let bucket = store
            .create_bucket("main", BucketOptions::default())
            .expect("bucket");
        Self {
            member: Member::new(id.clone(), started_at),
            routing: RoutingState::new(id),
            store,
            bucket,
        }
    }
}

fn partitioning() -> Partitioning {
    Partitioning::new(64).expect("valid")
}

#[derive(Default)]
struct Cluster {
    nodes: BTreeMap<String, Node>,
    clock: u64,
    /// Per key: every operation, for the checker.
    history: HashMap<Bytes, Vec<Op<Bytes>>>,
}

impl Cluster {
    fn view(&self) -> Vec<Member> {
        self.nodes.values().map(|n| n.member.clone()).collect()
    }

    /// The authority proposes a table for the current view; every partition's new
    /// replicas are filled from a surviving old replica before anyone switches, then old
    /// copies are dropped.
    fn settle(&mut self) {
        let view = self.view();
        let Some(table) = self
            .nodes
            .values()
            .find_map(|n| n.routing.propose(&view, partitioning(), 2))
        else {
            return;
        };
        let old = self
            .nodes
            .values()
            .filter_map(|n| n.routing.table().cloned())
            .max_by_key(|t| t.epoch());
        if let Some(old) = &old {
            for change in old.changes(&table) {
                let p = change.partition;
                let source = change
                    .from
                    .iter()
                    .find(|id| self.nodes.contains_key(id.as_str()))
                    .cloned();
                if let Some(source) = source {
                    let snapshot: Vec<_> =
                        self.nodes[source.as_str()].store.snapshot(p, NOW).collect();
                    for target in change.to.iter().filter(|id| !change.from.contains(id)) {
                        let node = self.nodes.get_mut(target.as_str()).expect("target alive");
                        for w in &snapshot {
                            node.store.apply(w, NOW).expect("snapshot applies");
                        }
                    }
                }
            }
        }
        for node in self.nodes.values_mut() {
            node.routing
                .handle_table(table.clone())
                .expect("one authority, one table per epoch");
        }
        if let Some(old) = &old {
            for change in old.changes(&table) {
                for id in change.from.iter().filter(|id| !change.to.contains(id)) {
                    if let Some(node) = self.nodes.get_mut(id.as_str()) {
                        node.store.drop_partition(change.partition);
                    }
                }
            }
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// A client write through the primary, replicated to every backup before the ack.
    fn write(&mut self, key: &Bytes, value: &Bytes) {
        let start = self.tick();
        let table = self
            .nodes
            .values()
            .next()
            .and_then(|n| n.routing.table().cloned())
            .expect("settled");
        let p = partitioning().partition_of(key);
        let replicas: Vec<NodeId> = table.replicas(p).map(|m| m.id.clone()).collect();
        let primary = self.nodes.get_mut(replicas[0].as_str()).expect("alive");
        assert_eq!(primary.routing.check_owner(p, None), Ok(Role::Primary));
        let epoch = primary.routing.epoch();
        let out = primary
            .store
            .set(
                primary.bucket,
                key.clone(),
                value.clone(),
                SetOptions::default(),
                NOW,
                epoch,
            )
            .expect("set");
        let write = out.write.expect("unconditional set writes");
        for backup in &replicas[1..] {
            let node = self.nodes.get_mut(backup.as_str()).expect("alive");
            assert!(matches!(
                node.routing.check_owner(p, Some(epoch)),
                Ok(Role::Backup { .. })
            ));
            node.store.apply(&write, NOW).expect("apply");
        }
        let end = self.tick();
        self.history.entry(key.clone()).or_default().push(Op::write(
            Some(value.clone()),
            start,
            end,
        ));
    }

    fn read(&mut self, key: &Bytes) -> Option<Bytes> {
        let start = self.tick();
        let p = partitioning().partition_of(key);
        let primary = self
            .nodes
            .values()
            .find(|n| n.routing.check_owner(p, None) == Ok(Role::Primary))
            .map(|n| n.member.id.as_str().to_owned())
            .expect("every partition has a primary");
        let node = self.nodes.get_mut(&primary).expect("alive");
        let got = node.store.get(node.bucket, key, NOW);
        let end = self.tick();
        self.history
            .entry(key.clone())
            .or_default()
            .push(Op::read(got.clone(), start, end));
        got
    }
}

#[derive(Debug, Clone)]
enum Step {
    Write(u8, u8),
    Read(u8),
    /// Kill a node (if at least 3 remain), then settle.
    Kill(u8),
    /// Start a new node, or restart a killed one with an empty store, then settle.
    Join(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Step::Write(k, v)),
        3 => any::<u8>().prop_map(Step::Read),
        1 => any::<u8>().prop_map(Step::Kill),
        1 => any::<u8>().prop_map(Step::Join),
    ]
}

fn key(k: u8) -> Bytes {
    Bytes::from(format!("key-{}", k % 40))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn acknowledged_writes_survive_any_single_failure(steps in proptest::collection::vec(step(), 1..120)) {
        let mut cluster = Cluster::default();
        let mut started = 0u64;
        for name in ["n0", "n1", "n2"] {
            started += 1;
            cluster.nodes.insert(name.into(), Node::new(name, started));
        }
        cluster.settle();
        let mut acked: BTreeMap<Bytes, Bytes> = BTreeMap::new();
        for step in steps {
            match step {
                Step::Write(k, v) => {
                    let value = Bytes::from(vec![v, k]);
                    cluster.write(&key(k), &value);
                    acked.insert(key(k), value);
                }
                Step::Read(k) => {
                    let got = cluster.read(&key(k));
                    prop_assert_eq!(got.as_ref(), acked.get(&key(k)));
                }
                Step::Kill(n) => {
                    if cluster.nodes.len() >= 3 {
                        let victim = cluster.nodes.keys().nth(usize::from(n) % cluster.nodes.len()).cloned().expect("in range");
                        cluster.nodes.remove(&victim);
                        cluster.settle();
                    }
                }
                Step::Join(n) => {
                    let name = format!("n{}", n % 6);
                    if !cluster.nodes.contains_key(&name) {
                        started += 1;
                        cluster.nodes.insert(name.clone(), Node::new(&name, started));
                        cluster.settle();
                    }
                }
            }
        }
        // Every acknowledged write is readable with its latest value.
        for (k, v) in &acked {
            let got = cluster.read(k);
            prop_assert_eq!(got.as_ref(), Some(v));
        }
        let histories = cluster.history.iter().map(|(k, h)| (k.clone(), &h[..]));
        prop_assert!(checker::check_keys(histories, checker::DEFAULT_MAX_STEPS).is_ok());
        // Every partition is back at full replication, each copy at the same version.
        let table = cluster.nodes.values().next().and_then(|n| n.routing.table().cloned()).expect("table");
        for p in partitioning().iter() {
            let versions: Vec<_> = table
                .replicas(p)
                .map(|m| cluster.nodes[m.id.as_str()].store.high_version(p))
                .collect();
            prop_assert_eq!(versions.len(), 2.min(cluster.nodes.len()));
            prop_assert!(versions.windows(2).all(|w| w[0] == w[1]), "replicas of {} disagree: {:?}", p, versions);
        }
    }
}

#[test]
fn an_unsettled_kill_of_both_replicas_loses_data_and_the_checker_sees_it() {
    // The negative control: drop both copies of a partition without re-replication, and
    // the history of that key is no longer linearizable.
    let mut cluster = Cluster::default();
    for (i, name) in ["n0", "n1", "n2"].into_iter().enumerate() {
        cluster
            .nodes
            .insert(name.into(), Node::new(name, i as u64 + 1));
    }
    cluster.settle();
    let k = key(1);
    cluster.write(&k, &Bytes::from_static(b"v1"));
    let table = cluster.nodes["n0"].routing.table().cloned().expect("table");
    let p = partitioning().partition_of(&k);
    for m in table.replicas(p) {
        let node = cluster.nodes.get_mut(m.id.as_str()).expect("alive");
        node.store.drop_partition(p);
    }
    assert_eq!(cluster.read(&k), None);
    let h = &cluster.history[&k];
    assert!(matches!(
        checker::check(None, h, 1_000),
        Verdict::NotLinearizable(_)
    ));
}
