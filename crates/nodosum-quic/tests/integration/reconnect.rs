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
    // More sends than the whole path (receiver 1024, stream window, queue 1024) can take:
    // most of them must still be waiting when the peer goes away.
    const SENDS: usize = 4000;
    let payload = Bytes::from(vec![1u8; 16 * 1024]);
    let pending: Vec<_> = (0..SENDS)
        .map(|_| {
            let (a, p) = (a.clone(), payload.clone());
            tokio::spawn(async move { a.send(&id("b"), &app("stalled"), p).await })
        })
        .collect();
    let a2 = a.clone();
    wait_until("the lane is full", move || {
        matches!(
            a2.try_send(&id("b"), &app("stalled"), Bytes::new()),
            Err(SendError::QueueFull { .. })
        )
    })
    .await;
    a.disconnect(b.node_id());
    let mut gone = 0;
    for task in pending {
        match guarded("pending send ends", task).await.unwrap() {
            Ok(()) => {}
            Err(SendError::PeerGone { node }) => {
                assert_eq!(node, id("b"));
                gone += 1;
            }
            // Tasks that only started after the disconnect.
            Err(SendError::UnknownPeer { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(gone > 0, "no send was waiting when the peer went away");
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
