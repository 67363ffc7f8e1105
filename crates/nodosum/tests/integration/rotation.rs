//! Credentials replaced on running nodes: a CA rotation and a gossip key rotation, each
//! by editing files and reloading every node, with the cluster up throughout.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use nodosum::{Config, Error, Key, MembershipEvent, Node, NodeEvent};
use nodosum_quic::DevCa;
use tokio::sync::broadcast;

use crate::util::{eventually, id, wait_formed};

/// A node's credential files in its own directory.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(root: &Path, name: &str) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        Self { dir }
    }

    /// `name`'s files: trusting `ca` alone, a certificate from it, and `key` alone.
    fn issued(root: &Path, name: &str, ca: &DevCa, key: &Key) -> Self {
        let files = Self::new(root, name);
        files.trust(&[ca]);
        files.certificate(ca, name);
        files.keys(&[key]);
        files
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn write(&self, file: &str, text: &str) {
        std::fs::write(self.path(file), text).expect("write");
    }

    /// Trust these CAs.
    fn trust(&self, cas: &[&DevCa]) {
        let pem: String = cas.iter().map(|ca| ca.cert_pem()).collect();
        self.write("ca.pem", &pem);
    }

    /// A certificate for `name` from `ca`.
    fn certificate(&self, ca: &DevCa, name: &str) {
        let (cert, key) = ca.issue_pem(&id(name)).expect("issue");
        self.write("cert.pem", &cert);
        self.write("key.pem", &key);
    }

    /// Gossip keys, the first one sealing.
    fn keys(&self, keys: &[&Key]) {
        let text: String = keys
            .iter()
            .map(|k| base64::engine::general_purpose::STANDARD.encode(k.as_bytes()) + "\n")
            .collect();
        self.write("gossip.keys", &text);
    }

    fn config(&self, name: &str) -> Config {
        let tls = (
            self.path("ca.pem"),
            self.path("cert.pem"),
            self.path("key.pem"),
        );
        let loopback = "127.0.0.1:0".parse().expect("addr");
        let mut c = Config::production(id(name), loopback, tls, &Key::from_bytes([0; 32]));
        c.gossip.keys.clear();
        c.gossip.key_file = Some(self.path("gossip.keys"));
        c.gossip.bind = loopback;
        c.gossip.advertise = None;
        c.quic.bind = loopback;
        c
    }
}

/// Whether `rx` saw a member fail or leave.
fn lost_a_member(rx: &mut broadcast::Receiver<NodeEvent>) -> Option<NodeEvent> {
    while let Ok(e) = rx.try_recv() {
        if matches!(
            e,
            NodeEvent::Membership(MembershipEvent::Failed(_) | MembershipEvent::Left(_))
        ) {
            return Some(e);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_and_gossip_keys_rotate_on_a_running_cluster() {
    let root = tempfile::tempdir().expect("tempdir");
    let (old_ca, new_ca) = (
        DevCa::generate("old CA").expect("ca"),
        DevCa::generate("new CA").expect("ca"),
    );
    let (old_key, new_key) = (Key::from_bytes([1; 32]), Key::from_bytes([2; 32]));
    let names = ["node-1", "node-2"];
    let files: Vec<Files> = names.iter().map(|n| Files::new(root.path(), n)).collect();
    for (f, name) in files.iter().zip(names) {
        f.trust(&[&old_ca]);
        f.certificate(&old_ca, name);
        f.keys(&[&old_key]);
    }
    let mut nodes = Vec::new();
    for (f, name) in files.iter().zip(names) {
        let node = Node::start(f.config(name)).await.expect("start");
        if let Some(first) = nodes.first() {
            let first: &Node = first;
            node.join(vec![first.gossip_addr()]);
        }
        nodes.push(node);
    }
    wait_formed(&nodes).await;
    let mut events: Vec<_> = nodes.iter().map(Node::events).collect();
    let reload_all = |nodes: &[Node]| {
        for n in nodes {
            n.reload_credentials().expect("reload");
        }
    };

    // 1. Trust both CAs; install the new gossip key next to the old one.
    for f in &files {
        f.trust(&[&old_ca, &new_ca]);
        f.keys(&[&old_key, &new_key]);
    }
    reload_all(&nodes);
    // 2. Certificates from the new CA; seal with the new key.
    for (f, name) in files.iter().zip(names) {
        f.certificate(&new_ca, name);
        f.keys(&[&new_key, &old_key]);
    }
    reload_all(&nodes);
    // 3. Trust the new CA alone; drop the old key.
    for f in &files {
        f.trust(&[&new_ca]);
        f.keys(&[&new_key]);
    }
    reload_all(&nodes);

    // Bad files are refused, naming the setting, and change nothing.
    let f = &files[0];
    f.write("gossip.keys", "not base64 at all\n");
    match nodes[0].reload_credentials() {
        Err(Error::Config(e)) => assert!(
            e.problems.iter().any(|p| p.field == "gossip.key_file"),
            "{e:?}"
        ),
        other => panic!("expected a configuration error, got {other:?}"),
    }
    f.keys(&[&new_key]);
    f.certificate(&new_ca, "node-2");
    match nodes[0].reload_credentials() {
        Err(Error::Config(e)) => assert!(
            e.problems
                .iter()
                .any(|p| p.field == "tls.cert" && p.message.contains("names node node-2")),
            "{e:?}"
        ),
        other => panic!("expected a configuration error, got {other:?}"),
    }
    f.certificate(&new_ca, "node-1");

    // A node with only the new CA and the new key joins: the old nodes present
    // certificates of the new CA, trust it, and open the new key.
    let newcomer =
        Node::start(Files::issued(root.path(), "node-3", &new_ca, &new_key).config("node-3"))
            .await
            .expect("start");
    newcomer.join(vec![nodes[0].gossip_addr()]);
    nodes.push(newcomer);
    wait_formed(&nodes).await;
    // The connection made under the old CA between the first two carried on.
    for (rx, name) in events.iter_mut().zip(names) {
        let lost = lost_a_member(rx);
        assert!(lost.is_none(), "{name} lost a member: {lost:?}");
    }

    // A node holding only the old key is no longer heard.
    let stale = Node::start(Files::issued(root.path(), "stale", &new_ca, &old_key).config("stale"))
        .await
        .expect("start");
    stale.join(vec![nodes[0].gossip_addr()]);
    eventually("the old key's datagrams are dropped as unknown", || {
        nodes[0]
            .metrics_text()
            .lines()
            .any(|l| l.contains("reason=\"unknown_key\"") && !l.ends_with(" 0"))
    })
    .await;
    assert!(!nodes[0].peers().contains(&id("stale")));
}
