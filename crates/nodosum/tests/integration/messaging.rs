//! Applications: delivery, ordering, isolation, errors.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use nodosum::{Error, Incoming, NodeId, SendError, Targets};

use crate::util::{cluster, id, within};

async fn next_message(app: &mut nodosum::Application) -> (NodeId, Bytes) {
    match within("a message", app.receive()).await {
        Some(Incoming::Message { from, payload }) => (from, payload),
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_reaches_every_other() {
    let (_ca, nodes) = cluster(3).await;
    let mut apps: Vec<_> = nodes
        .iter()
        .map(|n| n.application("chat").expect("register"))
        .collect();
    for (i, app) in apps.iter().enumerate() {
        app.send(format!("from {i}"), Targets::All)
            .await
            .expect("broadcast");
    }
    for (i, app) in apps.iter_mut().enumerate() {
        let mut got = Vec::new();
        for _ in 0..2 {
            let (from, payload) = next_message(app).await;
            got.push((from, String::from_utf8(payload.to_vec()).expect("utf8")));
        }
        got.sort();
        let want: Vec<(NodeId, String)> = (0..3)
            .filter(|&j| j != i)
            .map(|j| (id(&format!("node-{}", j + 1)), format!("from {j}")))
            .collect();
        assert_eq!(got, want);
    }
}

/// Application names are checked against the configured limit when registered, not
/// when their first stream cannot carry them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_over_the_configured_limit_is_refused() {
    let ca = tempfile::tempdir().expect("tempdir");
    let mut config = crate::util::dev_config(&ca, "node-1");
    config.limits.max_app_id_len = 20;
    let node = nodosum::Node::start(config).await.expect("start");
    node.application(&"a".repeat(20)).expect("at the limit");
    assert!(matches!(
        node.application(&"a".repeat(21)),
        Err(Error::InvalidAppName(nodosum_proto::IdError::TooLong {
            len: 21,
            max: 20
        }))
    ));
}

/// A send to several nodes queues the message for those with room at once and waits
/// for the full ones together: a peer whose application stopped reading holds up only
/// its own copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_target_does_not_hold_up_the_others() {
    let (_ca, nodes) = crate::util::cluster_with(3, |c| c.quic.send_queue_len = 2).await;
    let sender = nodes[0].application("fanout").expect("register");
    let mut reading = nodes[1].application("fanout").expect("register");
    let _stalled = nodes[2].application("fanout").expect("register");
    let (fast, slow) = (nodes[1].id().clone(), nodes[2].id().clone());
    // Fill the stalled node's receiver (1024 messages), its stream window (1 MiB) and
    // then the queue: once nothing drains, the queue stays full.
    let kib = Bytes::from(vec![0u8; 1024]);
    let stall_guard = std::time::Instant::now();
    loop {
        assert!(
            stall_guard.elapsed() < Duration::from_secs(30),
            "never stalled"
        );
        let send = sender.send(kib.clone(), Targets::Node(slow.clone()));
        match tokio::time::timeout(Duration::from_millis(200), send).await {
            Ok(sent) => sent.expect("queued"),
            Err(_) => break,
        }
    }
    let both = {
        let sender = sender.sender();
        tokio::spawn(async move {
            sender
                .send("to both", Targets::Nodes(vec![slow, fast]))
                .await
        })
    };
    let (from, payload) = next_message(&mut reading).await;
    assert_eq!(
        (from, &payload[..]),
        (nodes[0].id().clone(), &b"to both"[..])
    );
    both.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_listed_twice_gets_a_message_once() {
    let (_ca, nodes) = cluster(2).await;
    let sender = nodes[0].application("chat").expect("register");
    let mut receiver = nodes[1].application("chat").expect("register");
    let twice = Targets::Nodes(vec![nodes[1].id().clone(), nodes[1].id().clone()]);
    sender.send("once", twice).await.expect("send");
    sender
        .send("next", Targets::Node(nodes[1].id().clone()))
        .await
        .expect("send");
    assert_eq!(next_message(&mut receiver).await.1, Bytes::from("once"));
    assert_eq!(next_message(&mut receiver).await.1, Bytes::from("next"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_apps_times_100_messages_arrive_in_order_per_sender() {
    let (_ca, nodes) = cluster(3).await;
    let names = ["a", "b", "c"];
    let mut receivers: Vec<_> = names
        .iter()
        .map(|n| nodes[0].application(n).expect("register"))
        .collect();
    let senders: Vec<Vec<_>> = nodes[1..]
        .iter()
        .map(|node| {
            names
                .iter()
                .map(|n| node.application(n).expect("register"))
                .collect()
        })
        .collect();
    let target = nodes[0].id().clone();
    for app_senders in &senders {
        for app in app_senders {
            for i in 0..100u32 {
                app.send(Bytes::copy_from_slice(&i.to_le_bytes()), &target)
                    .await
                    .expect("send");
            }
        }
    }
    for rx in &mut receivers {
        let mut next: HashMap<NodeId, u32> = HashMap::new();
        for _ in 0..200 {
            let (from, payload) = next_message(rx).await;
            let n = u32::from_le_bytes(payload[..].try_into().expect("4 bytes"));
            let expected = next.entry(from.clone()).or_default();
            assert_eq!(n, *expected, "out of order from {from} on {}", rx.name());
            *expected += 1;
        }
        assert_eq!(next.values().copied().collect::<Vec<_>>(), vec![100, 100]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_application_does_not_stall_the_others() {
    let (_ca, nodes) = cluster(2).await;
    let target = nodes[0].id().clone();
    // `slow` is registered but never read: its inbox and stream windows fill up.
    let _slow_rx = nodes[0].application("slow").expect("register");
    let mut fast_rx = nodes[0].application("fast").expect("register");
    let slow = nodes[1].application("slow").expect("register");
    let fast = nodes[1].application("fast").expect("register");
    let payload = Bytes::from(vec![7u8; 16 * 1024]);
    // Far more than the slow application's inbox and flow-control windows hold.
    let mut stuck = 0;
    for _ in 0..4096 {
        match slow.try_send(payload.clone(), &target) {
            Ok(()) => {}
            Err(SendError::QueueFull { .. }) => stuck += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(
        stuck > 0,
        "the slow application's queue should have filled up"
    );
    for i in 0..500u32 {
        fast.send(Bytes::copy_from_slice(&i.to_le_bytes()), &target)
            .await
            .expect("fast send");
    }
    for i in 0..500u32 {
        let (_, p) = next_message(&mut fast_rx).await;
        assert_eq!(p[..], i.to_le_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_typed() {
    let (_ca, nodes) = cluster(2).await;
    let app = nodes[0].application("only-here").expect("register");
    assert!(matches!(
        nodes[0].application("only-here"),
        Err(Error::AppExists(_))
    ));
    assert!(matches!(
        nodes[0].application("_nodosum/x"),
        Err(Error::ReservedAppName(_))
    ));
    assert!(matches!(
        nodes[0].application(""),
        Err(Error::InvalidAppName(_))
    ));
    assert!(matches!(
        app.send("x", &id("nobody")).await,
        Err(SendError::UnknownNode { .. })
    ));
    assert!(matches!(
        app.send(vec![0u8; 5 * 1024 * 1024], nodes[1].id()).await,
        Err(SendError::MessageTooLarge { .. })
    ));
    // The peer has no such application: the first send is accepted, then refused.
    let peer = nodes[1].id().clone();
    within("refusal of an unknown application", async {
        loop {
            match app.send("x", &peer).await {
                Err(SendError::NotRegistered { node, app }) => {
                    assert_eq!((node, app.as_str()), (peer.clone(), "only-here"));
                    break;
                }
                Ok(()) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => panic!("unexpected {e}"),
            }
        }
    })
    .await;
    drop(app);
    // Once dropped, the name can be registered again.
    nodes[0]
        .application("only-here")
        .expect("re-register after drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_node_sends_to_nobody_until_it_shuts_down() {
    let (_ca, mut nodes) = cluster(1).await;
    let node = nodes.pop().expect("one node");
    let app = node.application("solo").expect("register");
    // No other member: a send to all sends nothing, and succeeds.
    app.send("x", Targets::All)
        .await
        .expect("nobody to send to");
    app.try_send("x", Targets::Nodes(Vec::new()))
        .expect("nobody to send to");
    within("shutdown", node.shutdown(Duration::from_secs(1))).await;
    // Shut down, the node refuses every send, even one to nobody.
    assert!(matches!(
        app.send("x", Targets::All).await,
        Err(SendError::ShutDown)
    ));
    assert!(matches!(
        app.try_send("x", Targets::All),
        Err(SendError::ShutDown)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_safe_application_sends_and_answers_like_any_other() {
    let (_ca, nodes) = cluster(2).await;
    let mut inbox = nodes[0]
        .application_with("presence", nodosum::AppOptions::replay_safe())
        .expect("register");
    let outbox = nodes[1]
        .application_with("presence", nodosum::AppOptions::replay_safe())
        .expect("register");
    let to = id("node-1");
    for i in 0..20u32 {
        outbox
            .send(i.to_le_bytes().to_vec(), &to)
            .await
            .expect("send");
    }
    for i in 0..20u32 {
        let (from, payload) = next_message(&mut inbox).await;
        assert_eq!(from, id("node-2"));
        assert_eq!(&payload[..], i.to_le_bytes());
    }
    // The name is taken like any other registration's.
    assert!(matches!(
        nodes[0].application_with("presence", nodosum::AppOptions::default()),
        Err(Error::AppExists(_))
    ));
}
