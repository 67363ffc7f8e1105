//! Identity and trust: another CA, a certificate for another node, racing dials.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use base64::Engine as _;
use nodosum::{Config, Error, Key, MemberState, Node, NodeEvent};
use nodosum_quic::DevCa;

use crate::util::{dev_config, eventually, id, wait_formed, within};

fn shared_key() -> String {
    base64::engine::general_purpose::STANDARD.encode([42u8; 32])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_certificate_from_another_ca_is_never_connected() {
    let ca = tempfile::tempdir().expect("tempdir");
    let rogue_ca = tempfile::tempdir().expect("tempdir");
    let config = |dir: &tempfile::TempDir, name: &str| {
        let mut c = dev_config(dir, name);
        // The same gossip key everywhere: gossip works, only TLS can keep the rogue out.
        c.gossip.keys = vec![shared_key()];
        c
    };
    let a = Node::start(config(&ca, "node-1")).await.expect("start");
    let b = Node::start(config(&ca, "node-2")).await.expect("start");
    let mut events = a.events();
    b.join(vec![a.gossip_addr()]);
    let rogue = Node::start(config(&rogue_ca, "rogue"))
        .await
        .expect("start");
    rogue.join(vec![a.gossip_addr()]);
    let rogue_id = id("rogue");
    eventually("gossip knows the rogue node", || {
        a.members()
            .iter()
            .any(|(m, s)| m.id == rogue_id && *s == MemberState::Alive)
    })
    .await;
    // The rogue dials (or is dialled) and the handshake is refused.
    within("a refused handshake", async {
        loop {
            if let Ok(NodeEvent::Connection(nodosum_quic::Event::Rejected { .. })) =
                events.recv().await
            {
                break;
            }
        }
    })
    .await;
    let mut inbox = a.application("chat").expect("register");
    let rogue_app = rogue.application("chat").expect("register");
    let _ = rogue_app.send("let me in", a.id()).await;
    let b_app = b.application("chat").expect("register");
    eventually("node-2 is connected", || a.health().connected_peers >= 1).await;
    b_app.send("hello", a.id()).await.expect("send");
    match within("a message", inbox.receive()).await {
        Some(nodosum::Incoming::Message { from, .. }) => assert_eq!(from, id("node-2")),
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), inbox.receive())
            .await
            .is_err()
    );
    assert_eq!(a.health().connected_peers, 1, "only node-2 is connected");
}

/// Unusable TLS files are configuration problems, found before anything binds and named
/// by their setting: a certificate naming another node, a key that is not the
/// certificate's, a file without a certificate. Every bad file is named at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_tls_files_are_refused_at_start_naming_the_setting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DevCa::generate("test CA").expect("ca");
    let (cert_pem, key_pem) = ca.issue_pem(&id("someone-else")).expect("issue");
    let (my_cert_pem, _) = ca.issue_pem(&id("me")).expect("issue");
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let ca_pem = write("ca.pem", ca.cert_pem());
    let cert = write("cert.pem", cert_pem);
    let key = write("key.pem", key_pem);
    let my_cert = write("my-cert.pem", my_cert_pem);
    let garbage = write("garbage.pem", "not a certificate\n".to_owned());
    let cases = [
        (
            (ca_pem.clone(), cert.clone(), key.clone()),
            "tls.cert",
            "names node someone-else",
        ),
        (
            (ca_pem.clone(), my_cert, key.clone()),
            "tls.key",
            "KeyMismatch",
        ),
        ((ca_pem, garbage.clone(), key), "tls.cert", "no certificate"),
    ];
    let all_bad = (garbage.clone(), garbage.clone(), garbage);
    for (files, field, says) in cases {
        let mut config = Config::production(
            id("me"),
            "127.0.0.1:1".parse().expect("addr"),
            files,
            &Key::from_bytes([1; 32]),
        );
        config.gossip.bind = "127.0.0.1:0".parse().expect("addr");
        config.gossip.advertise = None;
        config.quic.bind = "127.0.0.1:0".parse().expect("addr");
        match Node::start(config).await {
            Err(Error::Config(e)) => {
                assert!(
                    e.problems
                        .iter()
                        .any(|p| p.field == field && p.message.contains(says)),
                    "{field}: {says:?} in {e:?}"
                );
            }
            other => panic!("expected a configuration problem, got {other:?}"),
        }
    }
    let mut config = Config::production(
        id("me"),
        "127.0.0.1:1".parse().expect("addr"),
        all_bad,
        &Key::from_bytes([1; 32]),
    );
    config.gossip.advertise = None;
    config.gossip.bind = "127.0.0.1:0".parse().expect("addr");
    config.quic.bind = "127.0.0.1:0".parse().expect("addr");
    match Node::start(config).await {
        Err(Error::Config(e)) => {
            let fields: Vec<&str> = e.problems.iter().map(|p| p.field.as_str()).collect();
            assert_eq!(fields, ["tls.ca", "tls.cert", "tls.key"], "{e:?}");
        }
        other => panic!("expected a configuration problem, got {other:?}"),
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_starting_at_once_end_with_one_connection() {
    for round in 0..5 {
        let ca = tempfile::tempdir().expect("tempdir");
        let addrs: Vec<SocketAddr> = (0..2)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_udp_port())))
            .collect();
        let config = |i: usize| {
            let mut c = dev_config(&ca, &format!("node-{i}"));
            c.gossip.bind = addrs[i];
            c
        };
        let (a, b) = tokio::join!(Node::start(config(0)), Node::start(config(1)));
        let (a, b) = (a.expect("start"), b.expect("start"));
        a.join(vec![addrs[1]]);
        b.join(vec![addrs[0]]);
        let nodes = [a, b];
        wait_formed(&nodes).await;
        eventually(
            &format!("round {round}: exactly one connection on each side"),
            || {
                nodes.iter().all(|n| {
                    n.transport_counts().connections == 1 && n.health().connected_peers == 1
                })
            },
        )
        .await;
    }
}
