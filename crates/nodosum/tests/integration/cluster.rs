//! Formation, failure, restart and leave.

use std::time::Duration;

use nodosum::{Incoming, MemberState, Targets};

use crate::util::{cluster, eventually, id, start, wait_formed, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_cluster() {
    let (_ca, nodes) = cluster(3).await;
    for n in &nodes {
        let members = n.members();
        assert_eq!(&members[0].0.id, n.id(), "this node comes first");
        let alive = members
            .iter()
            .filter(|(_, s)| *s == MemberState::Alive)
            .count();
        assert_eq!(alive, 3, "{} sees {members:?}", n.id());
        assert_eq!(n.health().connected_peers, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_node_is_noticed_then_rejoins_and_receives_again() {
    let (ca, mut nodes) = cluster(3).await;
    let crashed = nodes.pop().expect("three nodes");
    drop(crashed); // hard stop: no leave announced
    let victim = id("node-3");
    eventually("node-3 is declared failed by the others", || {
        nodes.iter().all(|n| {
            n.members()
                .iter()
                .any(|(m, s)| m.id == victim && *s == MemberState::Failed)
                && !n.peers().contains(&victim)
        })
    })
    .await;

    let back = start(&ca, "node-3", &[&nodes[0]]).await;
    let mut inbox = back.application("chat").expect("register");
    nodes.push(back);
    wait_formed(&nodes).await;
    let chat = nodes[0].application("chat").expect("register");
    within("delivery to the restarted node", async {
        loop {
            // The restarted node may not have been connected yet when a send was queued.
            let _ = chat.send("welcome back", &victim).await;
            if let Ok(Some(Incoming::Message { from, payload })) =
                tokio::time::timeout(Duration::from_millis(200), inbox.receive()).await
            {
                assert_eq!(from, id("node-1"));
                assert_eq!(&payload[..], b"welcome back");
                break;
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_leave_is_seen_as_left() {
    let (_ca, mut nodes) = cluster(3).await;
    let leaving = nodes.pop().expect("three nodes");
    within("shutdown", leaving.shutdown(Duration::from_secs(5))).await;
    let gone = id("node-3");
    // `members` is gossip's view; the node drops a peer it sends to when it handles the
    // membership event, a moment later (`peers` shows that).
    eventually("node-3 is seen as left", || {
        nodes.iter().all(|n| {
            n.members()
                .iter()
                .any(|(m, s)| m.id == gone && *s == MemberState::Left)
                && !n.peers().contains(&gone)
        })
    })
    .await;
    let chat = nodes[0].application("chat").expect("register");
    assert!(matches!(
        chat.send("x", Targets::Node(gone.clone())).await,
        Err(nodosum::SendError::UnknownNode { .. })
    ));
}

/// A graceful leave delivers everything sent before it (the peer reads it all before it
/// learns of the leave, which makes it disconnect), and ends the leaving node's
/// receivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_leave_delivers_what_was_sent_and_ends_receivers() {
    // Within one stream's flow-control window (1 MiB), so that queueing them never waits.
    const MESSAGES: u32 = 3_000;
    let (_ca, mut nodes) = cluster(2).await;
    let leaving = nodes.pop().expect("two nodes");
    let mut inbox = nodes[0].application("bulk").expect("register");
    let mut leaving_inbox = leaving.application("bulk").expect("register");
    let sender = leaving_inbox.sender();
    let target = Targets::Node(nodes[0].id().clone());
    for i in 0..MESSAGES {
        let mut payload = vec![0u8; 256];
        payload[..4].copy_from_slice(&i.to_le_bytes());
        sender.send(payload, target.clone()).await.expect("queued");
    }
    drop(sender);
    // The peer reads while the node leaves, as an application would.
    let reader = tokio::spawn(async move {
        for i in 0..MESSAGES {
            let Some(Incoming::Message { payload, .. }) = inbox.receive().await else {
                return Err(i);
            };
            assert_eq!(payload[..4], i.to_le_bytes());
        }
        Ok(inbox)
    });
    within("shutdown", leaving.shutdown(Duration::from_secs(20))).await;
    let read = within("every message read", reader).await.expect("reader");
    assert!(
        read.is_ok(),
        "the peer's receiver ended at message {:?}",
        read.err()
    );
    assert!(
        within("receiver ends", leaving_inbox.receive())
            .await
            .is_none()
    );
}

/// A discovery setting that cannot work fails the start before anything binds, and
/// leaves nothing running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_discovery_setting_fails_the_start_before_anything_binds() {
    let ca = tempfile::tempdir().expect("tempdir");
    let mut config = crate::util::dev_config(&ca, "node-1");
    let free = || {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.local_addr().expect("address")
    };
    config.gossip.bind = free();
    config.quic.bind = free();
    config.discovery.static_seeds = Some(nodosum_discovery::StaticConfig {
        seeds: vec!["no port here".to_owned()],
        ..Default::default()
    });
    let err = nodosum::Node::start(config.clone())
        .await
        .expect_err("a seed without a port");
    // Found by the configuration check, which names the entry.
    assert!(matches!(err, nodosum::Error::Config(_)), "{err}");
    assert!(
        err.to_string().contains("discovery.static.seeds[0]"),
        "{err}"
    );
    std::net::UdpSocket::bind(config.gossip.bind).expect("the gossip port is free");
    std::net::UdpSocket::bind(config.quic.bind).expect("the QUIC port is free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_discovery_finds_the_seed_without_an_explicit_join() {
    let ca = tempfile::tempdir().expect("tempdir");
    let first = start(&ca, "node-1", &[]).await;
    let mut config = crate::util::dev_config(&ca, "node-2");
    config.discovery.static_seeds = Some(nodosum_discovery::StaticConfig {
        seeds: vec![first.gossip_addr().to_string()],
        ..Default::default()
    });
    let second = nodosum::Node::start(config).await.expect("start");
    let nodes = [first, second];
    wait_formed(&nodes).await;
    // The round publishes its candidates before it records its status.
    eventually("discovery reports its round", || {
        nodes[1]
            .health()
            .discovery
            .is_some_and(|d| d.ever_succeeded)
    })
    .await;
    let discovery = nodes[1]
        .health()
        .discovery
        .expect("discovery is configured");
    assert!(
        discovery.is_working() && discovery.ever_succeeded,
        "{discovery:?}"
    );
    assert!(nodes[0].health().discovery.is_none());
    // Discovery's series sit beside the other crates' under `nodosum_`.
    let text = nodes[1].metrics_text();
    assert!(
        text.contains("nodosum_discovery_rounds_total{backend=\"static\",outcome=\"ok\"}"),
        "{text}"
    );
}
