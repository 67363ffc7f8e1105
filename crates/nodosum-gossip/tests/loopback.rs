//! Real UDP sockets on 127.0.0.1: several gossip nodes in one process.
//!
//! Timings use the `local` preset; every wait is a generous failure guard, and the
//! assertions are about states and events, never about how long things took.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::net::SocketAddr;
use std::time::Duration;

use nodosum_gossip::{Config, Gossip, MemberState, MembershipEvent};
use nodosum_proto::{Key, Keyring, Metadata, NodeId};
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tokio::sync::broadcast;

const GUARD: Duration = Duration::from_secs(30);

struct Node {
    gossip: Gossip,
    registry: Registry,
}

fn start(name: &str, cluster: &str, key: u8) -> Node {
    let mut config = Config::local(NodeId::new(name).unwrap());
    config.cluster_name = cluster.to_owned();
    let mut registry = Registry::default();
    let gossip = Gossip::start(
        config,
        Keyring::new(Key::from_bytes([key; 32])),
        &mut registry,
    )
    .expect("start gossip");
    Node { gossip, registry }
}

fn metrics(node: &Node) -> String {
    let mut s = String::new();
    encode(&mut s, &node.registry).unwrap();
    s
}

fn state_of(node: &Node, name: &str) -> Option<MemberState> {
    node.gossip
        .members()
        .into_iter()
        .find(|(m, _)| m.id.as_str() == name)
        .map(|(_, s)| s)
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn cluster(n: usize, cluster: &str) -> Vec<Node> {
    let nodes: Vec<Node> = (0..n)
        .map(|i| start(&format!("node-{i}"), cluster, 1))
        .collect();
    let seed: SocketAddr = nodes[0].gossip.local_addr();
    for node in &nodes[1..] {
        node.gossip.join(vec![seed]);
    }
    eventually("all nodes see each other", || {
        nodes.iter().all(|x| {
            x.gossip.num_members() == n
                && x.gossip
                    .members()
                    .iter()
                    .filter(|(_, s)| *s == MemberState::Alive)
                    .count()
                    == n - 1
        })
    })
    .await;
    nodes
}

/// Receives events until one matches `want` (a member's table entry changes as a datagram
/// is handled; its event goes out when the node's task next polls its core, a moment
/// later). Returns every event received, the match last.
async fn until_event(
    rx: &mut broadcast::Receiver<MembershipEvent>,
    what: &str,
    want: impl Fn(&MembershipEvent) -> bool,
) -> Vec<MembershipEvent> {
    let mut seen = Vec::new();
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    let found = want(&e);
                    seen.push(e);
                    if found {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    };
    if tokio::time::timeout(GUARD, wait).await.is_err() {
        panic!("no event: {what}; saw {seen:?}");
    }
    seen
}

fn drain(rx: &mut broadcast::Receiver<MembershipEvent>) -> Vec<MembershipEvent> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_converge_then_one_crashes_and_one_leaves() {
    let mut nodes = cluster(5, "five").await;
    let mut events = nodes[0].gossip.events();

    // Each member carries the identity the facade needs.
    let (m, _) = nodes[1]
        .gossip
        .members()
        .into_iter()
        .find(|(m, _)| m.id.as_str() == "node-0")
        .unwrap();
    assert_eq!(m.gossip_addr, nodes[0].gossip.local_addr());
    assert_eq!(m, nodes[0].gossip.local_member());

    // Hard stop: the handle is dropped without leaving, which aborts its task.
    drop(nodes.pop());
    eventually("node-4 is seen failed by all", || {
        nodes
            .iter()
            .all(|n| state_of(n, "node-4") == Some(MemberState::Failed))
    })
    .await;

    // Graceful leave.
    let leaver = nodes.pop().unwrap();
    leaver.gossip.leave().await.unwrap();
    eventually("node-3 is seen left by all", || {
        nodes
            .iter()
            .all(|n| state_of(n, "node-3") == Some(MemberState::Left))
    })
    .await;
    assert!(nodes.iter().all(|n| n.gossip.num_members() == 3));

    let mut seen = until_event(
        &mut events,
        "Left for node-3",
        |e| matches!(e, MembershipEvent::Left(m) if m.id.as_str() == "node-3"),
    )
    .await;
    seen.extend(drain(&mut events));
    assert!(
        seen.iter()
            .any(|e| matches!(e, MembershipEvent::Failed(m) if m.id.as_str() == "node-4")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, MembershipEvent::Left(m) if m.id.as_str() == "node-3")),
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, MembershipEvent::Failed(m) if m.id.as_str() == "node-3")),
        "a graceful leave must not look like a failure: {seen:?}"
    );
    eventually("the member gauges follow", || {
        let m = metrics(&nodes[0]);
        m.contains("nodosum_gossip_members{state=\"alive\"} 2")
            && m.contains("nodosum_gossip_members{state=\"left\"} 1")
            && m.contains("nodosum_gossip_members{state=\"failed\"} 1")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_or_wrong_cluster_cannot_join() {
    let nodes = cluster(2, "prod").await;
    let seed = nodes[0].gossip.local_addr();
    let wrong_key = start("intruder", "prod", 9);
    let wrong_cluster = start("neighbour", "staging", 1);
    wrong_key.gossip.join(vec![seed]);
    wrong_cluster.gossip.join(vec![seed]);
    eventually("both kinds of drops are counted", || {
        let m = metrics(&nodes[0]);
        m.contains("reason=\"unknown_key\"") && m.contains("reason=\"unauthentic\"")
    })
    .await;
    // Give the retries time to keep failing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(wrong_key.gossip.num_members(), 1);
    assert_eq!(wrong_cluster.gossip.num_members(), 1);
    for n in &nodes {
        assert_eq!(n.gossip.num_members(), 2);
        assert_eq!(state_of(n, "intruder"), None);
        assert_eq!(state_of(n, "neighbour"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_across_a_live_cluster_loses_no_member() {
    let nodes = cluster(4, "rotating").await;
    let mut events: Vec<_> = nodes.iter().map(|n| n.gossip.events()).collect();
    let old = Key::from_bytes([1; 32]).id();
    let new_key = Key::from_bytes([2; 32]);
    let settle = || tokio::time::sleep(Duration::from_millis(700));

    for n in &nodes {
        n.gossip.install_key(new_key.clone());
    }
    settle().await;
    for n in &nodes {
        n.gossip.use_key(new_key.id()).unwrap();
        settle().await;
    }
    for n in &nodes {
        n.gossip.remove_key(old).unwrap();
    }
    settle().await;
    settle().await;

    for n in &nodes {
        assert_eq!(n.gossip.keys(), (vec![new_key.id()], new_key.id()));
        assert_eq!(n.gossip.num_members(), 4);
    }
    for rx in &mut events {
        let seen = drain(rx);
        assert!(
            !seen
                .iter()
                .any(|e| matches!(e, MembershipEvent::Failed(_) | MembershipEvent::Left(_))),
            "membership lost during rotation: {seen:?}"
        );
    }
    // Only the new key opens the cluster now.
    let newcomer = start("newcomer", "rotating", 2);
    newcomer.gossip.join(vec![nodes[0].gossip.local_addr()]);
    eventually("a node with the new key joins", || {
        newcomer.gossip.num_members() == 5
    })
    .await;
    assert!(
        nodes[0].gossip.remove_key(new_key.id()).is_err(),
        "the primary cannot be removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_updates_spread_as_updated_events() {
    let nodes = cluster(3, "meta").await;
    let mut events = nodes[2].gossip.events();
    let before = nodes[0].gossip.local_member();
    nodes[0]
        .gossip
        .update_metadata(Metadata::new(b"zone=b".to_vec()).unwrap())
        .unwrap();
    eventually("node-2 sees the new metadata", || {
        nodes[2].gossip.members().iter().any(|(m, s)| {
            m.id.as_str() == "node-0"
                && m.metadata.as_bytes() == b"zone=b"
                && *s == MemberState::Alive
        })
    })
    .await;
    let mut seen = until_event(
        &mut events,
        "Updated for node-0",
        |e| matches!(e, MembershipEvent::Updated(m) if m.id.as_str() == "node-0"),
    )
    .await;
    let Some(MembershipEvent::Updated(updated)) = seen.last().cloned() else {
        unreachable!("until_event returns the match last");
    };
    seen.extend(drain(&mut events));
    assert!(updated.incarnation > before.incarnation);
    assert!(
        !seen.iter().any(|e| matches!(e, MembershipEvent::Failed(_))),
        "{seen:?}"
    );
}
