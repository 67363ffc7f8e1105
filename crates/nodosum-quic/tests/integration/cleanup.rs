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

const CHURN_APPS: usize = 100;

/// Connections, streams and lanes of both nodes.
fn counts(a: &nodosum_quic::QuicNode, b: &nodosum_quic::QuicNode) -> [nodosum_quic::Counts; 2] {
    [a.counts(), b.counts()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_applications_frees_their_streams_on_both_nodes() {
    init_tracing();
    let ca = ca();
    let a = node(&ca, "a");
    let b = node(&ca, "b");
    connect(&a, &b).await;
    let baseline = counts(&a, &b);
    assert_eq!(baseline[0].streams + baseline[1].streams, 0);
    // Another application keeps flowing from b to a while the others open and close.
    let mut steady_rx = a.register_app(app("steady")).unwrap();
    let _steady_b = b.register_app(app("steady")).unwrap();
    let steady = {
        let b = b.clone();
        let to = a.node_id().clone();
        tokio::spawn(async move {
            for i in 0..3000 {
                b.send(&to, &app("steady"), seq(i)).await.unwrap();
                if i % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    // The steady stream is open (one stream and one lane on each node) from here on.
    assert_eq!(recv(&mut steady_rx).await, (id("b"), seq(0)));
    for round in 0..3u32 {
        let name = |i: usize| app(&format!("churn-{i}"));
        let mut a_rx: Vec<_> = (0..CHURN_APPS)
            .map(|i| a.register_app(name(i)).unwrap())
            .collect();
        let mut b_rx: Vec<_> = (0..CHURN_APPS)
            .map(|i| b.register_app(name(i)).unwrap())
            .collect();
        for i in 0..CHURN_APPS {
            b.send(a.node_id(), &name(i), seq(round)).await.unwrap();
            a.send(b.node_id(), &name(i), seq(round)).await.unwrap();
        }
        for rx in a_rx.iter_mut().chain(b_rx.iter_mut()) {
            assert_eq!(unseq(&recv(rx).await.1), round);
        }
        assert_eq!(a.counts().lanes, CHURN_APPS + 1, "round {round}");
        for i in 0..CHURN_APPS {
            a.close_app(&name(i));
            b.close_app(&name(i));
        }
        let (a2, b2) = (a.clone(), b.clone());
        let (a3, b3) = (a.clone(), b.clone());
        wait_until_dbg(
            "counts back at the baseline (plus the steady app)",
            move || {
                counts(&a2, &b2).iter().zip(&baseline).all(|(now, base)| {
                    now.connections == base.connections
                        && now.streams == base.streams + 1
                        && now.lanes == base.lanes + 1
                })
            },
            move || format!("{:?}", counts(&a3, &b3)),
        )
        .await;
        // The receivers of closed applications see the end of their messages.
        for rx in &mut a_rx {
            assert!(guarded("receiver ends", rx.recv()).await.is_none());
        }
    }
    for i in 1..3000 {
        assert_eq!(
            recv(&mut steady_rx).await,
            (id("b"), seq(i)),
            "the steady application loses nothing"
        );
    }
    guarded("steady sender", steady).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_receiver_closes_the_application_and_it_can_register_again() {
    init_tracing();
    let ca = ca();
    let a = node(&ca, "a");
    let b = node(&ca, "b");
    connect(&a, &b).await;
    let chat = app("chat");
    let mut b_rx = b.register_app(chat.clone()).unwrap();
    a.send(b.node_id(), &chat, seq(1)).await.unwrap();
    assert_eq!(recv(&mut b_rx).await, (id("a"), seq(1)));
    assert_eq!((a.counts().streams, b.counts().streams), (1, 1));
    assert_eq!((a.counts().lanes, b.counts().lanes), (1, 1));

    // Only b's receiver goes away (a never registered "chat"): both sides clean up.
    drop(b_rx);
    let (a2, b2) = (a.clone(), b.clone());
    let (a3, b3) = (a.clone(), b.clone());
    wait_until_dbg(
        "streams and lanes gone on both nodes",
        move || {
            counts(&a2, &b2)
                .iter()
                .all(|c| c.streams == 0 && c.lanes == 0 && c.connections == 1)
        },
        move || format!("{:?}", counts(&a3, &b3)),
    )
    .await;

    // Registered again: a's next send opens a new stream lazily and is delivered.
    let mut b_rx = b.register_app(chat.clone()).unwrap();
    a.send(b.node_id(), &chat, seq(2)).await.unwrap();
    assert_eq!(recv(&mut b_rx).await, (id("a"), seq(2)));
    assert_eq!((a.counts().lanes, b.counts().lanes), (1, 1));
    assert_eq!((a.counts().streams, b.counts().streams), (1, 1));
}

/// `connect` starts the first dial itself; a `disconnect` (or `close`) before the dial's
/// task ever ran cancels it without leaving it counted. On a one-thread runtime the task
/// has certainly not run in between.
#[tokio::test]
async fn a_dial_cancelled_before_its_task_ran_is_not_counted() {
    init_tracing();
    let ca = ca();
    let a = node(&ca, "a");
    let b = node(&ca, "b");
    a.connect(b.node_id().clone(), b.local_addr().unwrap());
    assert_eq!(a.counts().dialing, 1);
    a.disconnect(b.node_id());
    let a2 = a.clone();
    wait_until("the cancelled dial is not counted", move || {
        a2.counts().dialing == 0
    })
    .await;
    a.connect(b.node_id().clone(), b.local_addr().unwrap());
    a.close(std::time::Duration::from_secs(1)).await;
    let a2 = a.clone();
    wait_until("nothing is counted after close", move || {
        a2.counts() == nodosum_quic::Counts::default()
    })
    .await;
}

/// Closing a node ends its applications' receivers once they have received what was
/// delivered (also with a peer still connected), and refuses new registrations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_node_ends_its_receivers() {
    init_tracing();
    let ca = ca();
    let (a, b) = (node(&ca, "a"), node(&ca, "b"));
    let mut a_rx = a.register_app(app("chat")).unwrap();
    let mut b_rx = b.register_app(app("chat")).unwrap();
    connect(&a, &b).await;
    b.send(a.node_id(), &app("chat"), seq(1)).await.unwrap();
    assert_eq!(recv(&mut a_rx).await, (id("b"), seq(1)));
    a.send(b.node_id(), &app("chat"), seq(2)).await.unwrap();
    a.close(std::time::Duration::from_secs(5)).await;
    assert_eq!(recv(&mut b_rx).await, (id("a"), seq(2)));
    assert!(guarded("a's receiver ends", a_rx.recv()).await.is_none());
    assert!(matches!(
        a.register_app(app("late")),
        Err(nodosum_quic::Error::Closed)
    ));
    // A node dropped without `close` does the same.
    let mut c_rx = {
        let c = node(&ca, "c");
        c.register_app(app("chat")).unwrap()
    };
    assert!(guarded("c's receiver ends", c_rx.recv()).await.is_none());
}
