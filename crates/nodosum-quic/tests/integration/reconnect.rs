//! Reconnects with TLS resumption, pending sends when a peer goes away, migration.

use bytes::Bytes;
use nodosum_quic::{Event, HandshakeKind, SendError};

use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_resumes_the_tls_session() {
    init_tracing();
    let ca = ca();
    let a = node(&ca, "a");
    let b = node(&ca, "b");
    let mut b_rx = b.register_app(app("chat")).unwrap();
    let mut a_events = a.events();
    let mut b_events = b.events();
    a.connect(b.node_id().clone(), b.local_addr().unwrap());
    let first = event(&mut a_events, "first up", |e| matches!(e, Event::Up { .. })).await;
    assert!(matches!(
        first,
        Event::Up {
            kind: HandshakeKind::Full,
            ..
        }
    ));
    a.send(b.node_id(), &app("chat"), seq(1)).await.unwrap();
    assert_eq!(unseq(&recv(&mut b_rx).await.1), 1);
    event(&mut b_events, "b up", |e| matches!(e, Event::Up { .. })).await;

    for round in 0..3u32 {
        // b drops a; a still wants b and redials with its session ticket.
        b.disconnect(a.node_id());
        event(&mut a_events, "down", |e| matches!(e, Event::Down { .. })).await;
        let up = event(&mut a_events, "up again", |e| matches!(e, Event::Up { .. })).await;
        let Event::Up { kind, .. } = up else {
            unreachable!()
        };
        assert!(
            matches!(kind, HandshakeKind::Resumed | HandshakeKind::ZeroRtt),
            "round {round}: reconnect was {kind:?}"
        );
        let server_up = event(&mut b_events, "b sees a again", |e| {
            matches!(e, Event::Up { .. })
        })
        .await;
        assert!(
            matches!(
                server_up,
                Event::Up {
                    kind: HandshakeKind::Resumed,
                    ..
                }
            ),
            "{server_up:?}"
        );
        // Messages flow on the new connection.
        a.send(b.node_id(), &app("chat"), seq(round + 2))
            .await
            .unwrap();
        assert_eq!(unseq(&recv(&mut b_rx).await.1), round + 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_fails_pending_sends_and_frees_everything() {
    init_tracing();
    let ca = ca();
    let a = node(&ca, "a");
    let b = node(&ca, "b");
    let _stalled = b.register_app(app("stalled")).unwrap();
    connect(&a, &b).await;
    // Send until one send has to wait for good: the stalled receiver, the stream window
    // and the queue are then full. A send that waits only while the writer catches up
    // (a busy machine) completes within the pause and the loop goes on; once the
    // pipeline is stalled, the waiting send stays registered as waiting.
    let payload = Bytes::from(vec![1u8; 16 * 1024]);
    let b_id = id("b");
    let stalled = app("stalled");
    let mut waiting = guarded("a send waits", async {
        loop {
            let mut fut = Box::pin(a.send(&b_id, &stalled, payload.clone()));
            let pending = tokio::select! {
                biased;
                res = &mut fut => {
                    res.unwrap();
                    false
                }
                () = std::future::ready(()) => true,
            };
            if !pending {
                continue;
            }
            match tokio::time::timeout(std::time::Duration::from_millis(300), &mut fut).await {
                Ok(res) => res.unwrap(),
                Err(_) => break Some(fut),
            }
        }
    })
    .await
    .unwrap();
    a.disconnect(b.node_id());
    let res = guarded("waiting send ends", &mut waiting).await;
    assert_eq!(res, Err(SendError::PeerGone { node: id("b") }));
    assert!(matches!(
        a.send(b.node_id(), &app("stalled"), Bytes::new()).await,
        Err(SendError::UnknownPeer { .. })
    ));
    let (a2, b2) = (a.clone(), b.clone());
    let (a3, b3) = (a.clone(), b.clone());
    wait_until_dbg(
        "all freed",
        move || a2.counts() == Default::default() && b2.counts() == Default::default(),
        move || format!("{:?} {:?}", a3.counts(), b3.counts()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_survives_rebinding_the_socket() {
    init_tracing();
    let ca = ca();
    let a = node(&ca, "a");
    let b = node(&ca, "b");
    let mut b_rx = b.register_app(app("chat")).unwrap();
    connect(&a, &b).await;
    a.send(b.node_id(), &app("chat"), seq(1)).await.unwrap();
    assert_eq!(unseq(&recv(&mut b_rx).await.1), 1);
    let before = b.connection_info(a.node_id()).unwrap().remote_addr;

    a.rebind("127.0.0.1:0".parse().unwrap()).unwrap();
    let after_local = a.local_addr().unwrap();
    assert_ne!(before, after_local);
    a.send(b.node_id(), &app("chat"), seq(2)).await.unwrap();
    assert_eq!(unseq(&recv(&mut b_rx).await.1), 2);
    let b2 = b.clone();
    wait_until("b follows the new address", move || {
        b2.connection_info(&id("a"))
            .is_some_and(|c| c.remote_addr == after_local)
    })
    .await;
    assert_eq!(a.counts().connections, 1);
    assert_eq!(b.counts().connections, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_sender_survives_reconnects_and_application_restarts() {
    init_tracing();
    let ca = ca();
    let a = node(&ca, "a");
    let b = node(&ca, "b");
    let chat = app("chat");
    let mut b_rx = b.register_app(chat.clone()).unwrap();
    let mut tx = a.sender(b.node_id(), &chat);
    assert!(matches!(
        tx.send(seq(0)).await,
        Err(SendError::UnknownPeer { .. })
    ));
    let mut a_events = a.events();
    connect(&a, &b).await;
    tx.send(seq(1)).await.unwrap();
    assert_eq!(recv(&mut b_rx).await, (id("a"), seq(1)));

    // b drops the connection; a redials and the same handle keeps working.
    b.disconnect(a.node_id());
    event(&mut a_events, "down", |e| matches!(e, Event::Down { .. })).await;
    event(&mut a_events, "up again", |e| matches!(e, Event::Up { .. })).await;
    for i in 2..100 {
        tx.try_send(seq(i)).unwrap();
    }
    for i in 2..100 {
        assert_eq!(recv(&mut b_rx).await, (id("a"), seq(i)));
    }

    // b closes the application: a's lane ends; once b registers again the same handle
    // opens a new lane and stream.
    drop(b_rx);
    let a2 = a.clone();
    wait_until("a's lane ended", move || a2.counts().lanes == 0).await;
    let mut b_rx = b.register_app(chat.clone()).unwrap();
    tx.send(seq(100)).await.unwrap();
    assert_eq!(recv(&mut b_rx).await, (id("a"), seq(100)));

    // a forgets b: the lane ends with the peer entry; a's handle reports the peer as
    // unknown, like `send`.
    a.disconnect(b.node_id());
    assert!(matches!(
        tx.send(seq(101)).await,
        Err(SendError::UnknownPeer { .. })
    ));
}

/// A peer that crashed (its connection silent, never closed) and connects again from a
/// new process replaces its old connection at once: messages to it are not sent into the
/// dead connection until its idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_replaces_its_silent_connection() {
    init_tracing();
    let ca = ca();
    let config = nodosum_quic::Config {
        handshake_timeout: std::time::Duration::from_millis(300),
        // Far beyond the test's guard: only the replacement can deliver in time.
        max_idle_timeout: std::time::Duration::from_secs(600),
        ..nodosum_quic::Config::development()
    };
    let a = node_with(&ca.issue(&id("a")).unwrap(), config);
    let _a_rx = a.register_app(app("chat")).unwrap();

    // The first life of "b" runs on a runtime of its own, which the crash drops: its
    // tasks and socket go away without a word to "a".
    let crashing = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (b1, mut b1_rx) = {
        let _runtime = crashing.enter();
        let b1 = node(&ca, "b");
        let rx = b1.register_app(app("chat")).unwrap();
        (b1, rx)
    };
    connect(&a, &b1).await;
    a.send(b1.node_id(), &app("chat"), seq(1)).await.unwrap();
    assert_eq!(recv(&mut b1_rx).await, (id("a"), seq(1)));
    std::mem::forget((b1, b1_rx));
    crashing.shutdown_background();

    // Older than a simultaneous dial could be.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let b2 = node(&ca, "b");
    let mut b2_rx = b2.register_app(app("chat")).unwrap();
    b2.connect(a.node_id().clone(), a.local_addr().unwrap());
    let (a2, b2_addr) = (a.clone(), b2.local_addr().unwrap());
    wait_until("a uses b's new connection", move || {
        a2.connection_info(&id("b"))
            .is_some_and(|c| c.remote_addr == b2_addr)
    })
    .await;
    a.send(&id("b"), &app("chat"), seq(2)).await.unwrap();
    assert_eq!(recv(&mut b2_rx).await, (id("a"), seq(2)));
}
