//! Helpers: development nodes sharing one temporary development CA.

use std::future::Future;
use std::time::Duration;

use nodosum::{Config, Node, NodeId};
use tempfile::TempDir;

/// Upper bound for anything a test waits for; a guard against hangs, not a timing claim.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

pub(crate) fn id(s: &str) -> NodeId {
    NodeId::new(s).expect("valid node id")
}

/// A development node with the LAN timing profile: on a busy 2-core machine running many
/// nodes of many tests at once, the aggressive `local` profile can suspect a starved node
/// and drop what was queued to it, which is correct behaviour but not what these tests
/// are about.
pub(crate) fn dev_config(ca: &TempDir, name: &str) -> Config {
    let mut c = Config::development(id(name));
    c.tls.dev_ca_dir = Some(ca.path().join("dev-ca"));
    c.gossip.profile = nodosum::Profile::Lan;
    c
}

pub(crate) async fn start(ca: &TempDir, name: &str, seeds: &[&Node]) -> Node {
    start_with(dev_config(ca, name), seeds).await
}

async fn start_with(config: Config, seeds: &[&Node]) -> Node {
    let node = Node::start(config).await.expect("node starts");
    node.join(seeds.iter().map(|n| n.gossip_addr()).collect());
    node
}

/// Starts `n` nodes (`node-1`..) joined through the first and waits until every node sees
/// every other as an alive, connected peer.
pub(crate) async fn cluster(n: usize) -> (TempDir, Vec<Node>) {
    cluster_with(n, |_| {}).await
}

/// [`cluster`], each node's configuration changed by `tweak` first.
pub(crate) async fn cluster_with(n: usize, tweak: fn(&mut Config)) -> (TempDir, Vec<Node>) {
    let ca = tempfile::tempdir().expect("tempdir");
    let mut nodes: Vec<Node> = Vec::with_capacity(n);
    for i in 1..=n {
        let mut config = dev_config(&ca, &format!("node-{i}"));
        tweak(&mut config);
        let seeds: Vec<&Node> = nodes.first().into_iter().collect();
        let node = start_with(config, &seeds).await;
        nodes.push(node);
    }
    wait_formed(&nodes).await;
    (ca, nodes)
}

/// Waits until every node sees every other as alive over exactly one connection each:
/// duplicate connections from simultaneous dials have been handed over and closed. (A
/// message sent while a duplicate is being handed over can, rarely, be lost: a known
/// limitation of nodosum-quic; these tests are about delivery in a settled cluster.)
pub(crate) async fn wait_formed(nodes: &[Node]) {
    let want = nodes.len() - 1;
    eventually(
        "every node sees every other alive over one connection each",
        || {
            // The connection count includes duplicates still closing: with it, one
            // connected peer each means one connection each.
            nodes.iter().all(|n| {
                n.peers().len() == want
                    && n.transport_counts().connections == want
                    && n.health().connected_peers == want
            })
        },
    )
    .await;
}

/// Polls `check` until it holds; panics after [`PATIENCE`].
pub(crate) async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Awaits `fut`, failing the test after [`PATIENCE`].
pub(crate) async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}
