//! Open and close many streams and connections; every count returns to zero. Graceful
//! close delivers what was queued.

use bytes::Bytes;

use crate::util::*;

const APPS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_open_and_close_without_leaks() {
    init_tracing();
    let ca = ca();
    let a = node(&ca, "a");
    let b = node(&ca, "b");
    let mut a_rx: Vec<_> = (0..APPS)
        .map(|i| a.register_app(app(&format!("app{i}"))).unwrap())
        .collect();
    let mut b_rx: Vec<_> = (0..APPS)
        .map(|i| b.register_app(app(&format!("app{i}"))).unwrap())
        .collect();
    for cycle in 0..3 {
        connect(&a, &b).await;
        for i in 0..APPS {
            a.send(
                b.node_id(),
                &app(&format!("app{i}")),
                Bytes::from_static(b"ping"),
            )
            .await
            .unwrap();
        }
        for (i, rx) in b_rx.iter_mut().enumerate() {
            assert_eq!(recv(rx).await, (id("a"), Bytes::from_static(b"ping")));
            b.send(
                a.node_id(),
                &app(&format!("app{i}")),
                Bytes::from_static(b"pong"),
            )
            .await
            .unwrap();
        }
        for rx in &mut a_rx {
            assert_eq!(recv(rx).await, (id("b"), Bytes::from_static(b"pong")));
        }
        assert_eq!(a.counts().streams, APPS, "cycle {cycle}");
        assert_eq!(b.counts().streams, APPS, "cycle {cycle}");
        assert_eq!(b.counts().lanes, APPS, "cycle {cycle}");

        a.disconnect(b.node_id());
        let (a2, b2) = (a.clone(), b.clone());
        let (a3, b3) = (a.clone(), b.clone());
        wait_until_dbg(
            "counts back to zero",
            move || a2.counts() == Default::default() && b2.counts() == Default::default(),
            move || format!("{:?} {:?}", a3.counts(), b3.counts()),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_close_delivers_queued_messages() {
    init_tracing();
    let ca = ca();
    let a = node(&ca, "a");
    let b = node(&ca, "b");
    let mut b_rx = b.register_app(app("chat")).unwrap();
    let mut b_events = b.events();
    connect(&a, &b).await;
    for i in 0..1000 {
        a.send(b.node_id(), &app("chat"), seq(i)).await.unwrap();
    }
    let closer = {
        let a = a.clone();
        tokio::spawn(async move { a.close(GUARD).await })
    };
    for i in 0..1000 {
        assert_eq!(unseq(&recv(&mut b_rx).await.1), i);
    }
    guarded("close returns", closer).await.unwrap();
    let down = event(&mut b_events, "b sees a leave", |e| {
        matches!(e, nodosum_quic::Event::Down { .. })
    })
    .await;
    assert!(matches!(
        down,
        nodosum_quic::Event::Down {
            reason: nodosum_quic::DownReason::Peer { code: 0 },
            ..
        }
    ));
    assert!(matches!(
        a.send(b.node_id(), &app("chat"), Bytes::new()).await,
        Err(nodosum_quic::SendError::Closed)
    ));
}
