//! Stream init and routing, unknown applications, isolation of a stalled application,
//! ordering, and oversized frames.

use bytes::{BufMut, Bytes, BytesMut};
use nodosum_proto::{Limits, StreamInit};
use nodosum_quic::{Config, Congestion, QuicNode, SendError, codes};

use crate::handshake::{raw_client_for, raw_connect};
use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_per_app_routes_both_ways_in_order() {
    init_tracing();
    let ca = ca();
    let a = node(&ca, "a");
    let b = node(&ca, "b");
    let mut a_chat = a.register_app(app("chat")).unwrap();
    let mut b_chat = b.register_app(app("chat")).unwrap();
    let mut b_kv = b.register_app(app("kv")).unwrap();
    connect(&a, &b).await;

    for i in 0..2000 {
        a.send(b.node_id(), &app("chat"), seq(i)).await.unwrap();
    }
    a.send(b.node_id(), &app("kv"), Bytes::from_static(b"put"))
        .await
        .unwrap();
    for i in 0..2000 {
        let (from, msg) = recv(&mut b_chat).await;
        assert_eq!(from, id("a"));
        assert_eq!(unseq(&msg), i);
    }
    assert_eq!(recv(&mut b_kv).await, (id("a"), Bytes::from_static(b"put")));
    // b answers on the stream a opened.
    for i in 0..100 {
        b.send(a.node_id(), &app("chat"), seq(i)).await.unwrap();
    }
    for i in 0..100 {
        let (from, msg) = recv(&mut a_chat).await;
        assert_eq!(from, id("b"));
        assert_eq!(unseq(&msg), i);
    }
    assert_eq!(a.counts().streams, 2, "one stream per application");
    assert_eq!(b.counts().streams, 2, "b reused a's streams");
    assert!(matches!(
        a.try_send(
            b.node_id(),
            &app("chat"),
            Bytes::from(vec![0; 5 * 1024 * 1024])
        ),
        Err(SendError::MessageTooLarge { .. })
    ));
    assert!(matches!(
        a.try_send(&id("nobody"), &app("chat"), Bytes::new()),
        Err(SendError::UnknownPeer { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_application_is_refused_without_disturbing_others() {
    init_tracing();
    let ca = ca();
    let a = node(&ca, "a");
    let b = node(&ca, "b");
    let mut b_chat = b.register_app(app("chat")).unwrap();
    let mut a_events = a.events();
    connect(&a, &b).await;
    a.send(b.node_id(), &app("chat"), seq(1)).await.unwrap();
    assert_eq!(unseq(&recv(&mut b_chat).await.1), 1);

    let nope = app("nope");
    let err = guarded("typed error", async {
        loop {
            match a.send(b.node_id(), &nope, seq(0)).await {
                Ok(()) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
                Err(e) => return e,
            }
        }
    })
    .await;
    assert_eq!(
        err,
        SendError::UnknownApplication {
            node: id("b"),
            app: nope.clone()
        }
    );
    event(&mut a_events, "refusal event", |e| {
        matches!(e, nodosum_quic::Event::StreamRefused { code, .. } if *code == u64::from(codes::STREAM_UNKNOWN_APP))
    })
    .await;
    // The connection and the other application are untouched.
    a.send(b.node_id(), &app("chat"), seq(2)).await.unwrap();
    assert_eq!(unseq(&recv(&mut b_chat).await.1), 2);
    assert_eq!(a.counts().connections, 1);
    assert_eq!(b.counts().connections, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_application_does_not_block_the_others() {
    init_tracing();
    let ca = ca();
    let a = node(&ca, "a");
    let b = node(&ca, "b");
    // The stalled application's receiver is never read.
    let _stalled = b.register_app(app("stalled")).unwrap();
    let mut others: Vec<_> = (0..5)
        .map(|i| b.register_app(app(&format!("app{i}"))).unwrap())
        .collect();
    connect(&a, &b).await;

    // Fill the stalled application's whole path: receiver, stream window, send queue.
    let payload = Bytes::from(vec![7u8; 1024]);
    let mut queued = 0u64;
    guarded("stalled lane fills up", async {
        loop {
            match a.try_send(b.node_id(), &app("stalled"), payload.clone()) {
                Ok(()) => queued += 1,
                Err(SendError::QueueFull { .. }) => {
                    // Full only counts once the writer is blocked too (not just behind
                    // on a busy machine): a send that still waits after a pause.
                    let stalled = app("stalled");
                    let send = a.send(b.node_id(), &stalled, payload.clone());
                    match tokio::time::timeout(std::time::Duration::from_millis(300), send).await {
                        Ok(sent) => {
                            sent.unwrap();
                            queued += 1;
                        }
                        Err(_) => break,
                    }
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    assert!(queued > 1024, "the stalled lane buffered {queued} messages");

    const N: u32 = 1000;
    let sender = {
        let a = a.clone();
        let b_id = b.node_id().clone();
        tokio::spawn(async move {
            for i in 0..N {
                for k in 0..5 {
                    let mut msg = BytesMut::with_capacity(1024);
                    msg.put_u32_le(i);
                    msg.put_bytes(0, 1020);
                    a.send(&b_id, &app(&format!("app{k}")), msg.freeze())
                        .await
                        .unwrap();
                }
            }
        })
    };
    // Each flowing application is read by its own task, as independent consumers would.
    let readers: Vec<_> = others
        .drain(..)
        .map(|mut rx| {
            tokio::spawn(async move {
                for i in 0..N {
                    let (_, msg) = recv(&mut rx).await;
                    assert_eq!(unseq(&msg[..4]), i);
                }
                N
            })
        })
        .collect();
    guarded("sender done", sender).await.unwrap();
    for reader in readers {
        assert_eq!(guarded("reader done", reader).await.unwrap(), N);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_resets_only_its_stream() {
    init_tracing();
    let ca = ca();
    let b = node(&ca, "b");
    let mut b_chat = b.register_app(app("chat")).unwrap();
    let mut b_kv = b.register_app(app("kv")).unwrap();
    let raw = raw_client_for(&ca, "raw");
    let conn = raw_connect(&raw, b.local_addr().unwrap(), "b")
        .await
        .unwrap();
    let limits = Limits::default();

    // A well-formed stream first, then one with a frame above the limit.
    let (mut kv_send, _kv_recv) = conn.open_bi().await.unwrap();
    let mut buf = BytesMut::new();
    StreamInit::new(app("kv"))
        .encode(&limits, &mut buf)
        .unwrap();
    nodosum_proto::encode_message(b"first", &limits, &mut buf).unwrap();
    kv_send.write_all(&buf).await.unwrap();
    assert_eq!(
        recv(&mut b_kv).await,
        (id("raw"), Bytes::from_static(b"first"))
    );

    let (mut bad_send, mut bad_recv) = conn.open_bi().await.unwrap();
    let mut buf = BytesMut::new();
    StreamInit::new(app("chat"))
        .encode(&limits, &mut buf)
        .unwrap();
    buf.put_u32_le(u32::try_from(limits.max_message_size).unwrap() + 1);
    bad_send.write_all(&buf).await.unwrap();
    let stopped = guarded("stream stopped", bad_send.stopped()).await.unwrap();
    assert_eq!(
        stopped,
        Some(quinn::VarInt::from_u32(codes::STREAM_FRAME_TOO_LARGE))
    );
    let read = guarded("stream reset", bad_recv.read_chunk(16, true)).await;
    assert!(
        matches!(read, Err(quinn::ReadError::Reset(c)) if c == quinn::VarInt::from_u32(codes::STREAM_FRAME_TOO_LARGE)),
        "{read:?}"
    );

    // The connection and the other application's stream survive.
    let mut buf = BytesMut::new();
    nodosum_proto::encode_message(b"second", &limits, &mut buf).unwrap();
    kv_send.write_all(&buf).await.unwrap();
    assert_eq!(
        recv(&mut b_kv).await,
        (id("raw"), Bytes::from_static(b"second"))
    );
    assert!(conn.close_reason().is_none());
    // A fresh stream for the same application works again.
    let (mut chat_send, _chat_recv) = conn.open_bi().await.unwrap();
    let mut buf = BytesMut::new();
    StreamInit::new(app("chat"))
        .encode(&limits, &mut buf)
        .unwrap();
    nodosum_proto::encode_message(b"hello", &limits, &mut buf).unwrap();
    chat_send.write_all(&buf).await.unwrap();
    assert_eq!(
        recv(&mut b_chat).await,
        (id("raw"), Bytes::from_static(b"hello"))
    );
    assert_eq!(b.counts().connections, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_queued_writes_keep_order_and_content() {
    // Pauses let senders write straight into the idle stream, bursts go through the
    // writer, and b's small stream window (with a receiver that starts late) makes
    // writes block or fit only in part: every path, interleaved, on one lane.
    init_tracing();
    let ca = ca();
    let a = node(&ca, "a");
    let b = node_with(
        &ca.issue(&id("b")).unwrap(),
        Config {
            stream_receive_window: 64 * 1024,
            app_receiver_capacity: 4,
            ..Config::development()
        },
    );
    let mut rx = b.register_app(app("mixed")).unwrap();
    connect(&a, &b).await;
    // First a throttled phase (mostly queued, blocked and partial writes), then one that
    // pauses often (mostly direct writes, some partial).
    const N: u32 = 900;
    const THROTTLED: u32 = 300;
    let message = |i: u32| {
        let len = if i < THROTTLED {
            [8usize, 3000, 40_000][(i % 3) as usize]
        } else {
            [8usize, 3000, 8, 40_000][(i % 4) as usize]
        };
        let mut m = BytesMut::with_capacity(len);
        m.put_u32(i);
        m.resize(len, (i % 251) as u8);
        m.freeze()
    };
    let reader = tokio::spawn(async move {
        // Start late so that a's first writes meet a full window.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        for i in 0..N {
            let (from, msg) = recv(&mut rx).await;
            assert_eq!(from, id("a"));
            assert_eq!(msg, message(i), "message {i}");
        }
        rx
    });
    let mut lane = a.sender(b.node_id(), &app("mixed"));
    for i in 0..N {
        match i % 4 {
            0 => a
                .send(b.node_id(), &app("mixed"), message(i))
                .await
                .unwrap(),
            1 => lane.send(message(i)).await.unwrap(),
            // try_send may find the queue full: then wait like `send`.
            _ => match lane.try_send(message(i)) {
                Err(SendError::QueueFull { .. }) => lane.send(message(i)).await.unwrap(),
                other => other.unwrap(),
            },
        }
        if (i < THROTTLED && i % 7 == 0) || (i >= THROTTLED && i % 3 == 0) {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
    let _rx = guarded("all messages delivered in order", reader)
        .await
        .unwrap();
    assert_eq!(a.counts().streams, 1, "one stream carried every path");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_side_sends_with_its_own_congestion_controller() {
    init_tracing();
    let ca = ca();
    let a = node_with(
        &ca.issue(&id("a")).unwrap(),
        Config {
            congestion: Congestion::Bbr,
            ..Config::development()
        },
    );
    let b = node(&ca, "b");
    let mut a_bulk = a.register_app(app("bulk")).unwrap();
    let mut b_bulk = b.register_app(app("bulk")).unwrap();
    connect(&a, &b).await;

    // Data flows both ways, each side pacing with its own controller. Kept within the
    // initial windows: quinn's BBR can stall a long burst (see `Congestion::Bbr`), which
    // is quinn's behaviour, not what this test checks.
    let chunk = Bytes::from(vec![7; 8 * 1024]);
    for _ in 0..4 {
        a.send(b.node_id(), &app("bulk"), chunk.clone())
            .await
            .unwrap();
        b.send(a.node_id(), &app("bulk"), chunk.clone())
            .await
            .unwrap();
        assert_eq!(recv(&mut b_bulk).await, (id("a"), chunk.clone()));
        assert_eq!(recv(&mut a_bulk).await, (id("b"), chunk.clone()));
    }
    let a_info = a.connection_info(b.node_id()).unwrap();
    let b_info = b.connection_info(a.node_id()).unwrap();
    assert_eq!(a_info.congestion, Congestion::Bbr);
    assert_eq!(b_info.congestion, Congestion::Cubic);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_counters_are_reported_and_counted_when_the_connection_closes() {
    init_tracing();
    let ca = ca();
    let mut registry = prometheus_client::registry::Registry::default();
    let a = QuicNode::bind(
        Config::development(),
        &ca.issue(&id("a")).unwrap(),
        Some(&mut registry),
    )
    .unwrap();
    let b = node(&ca, "b");
    let mut b_bulk = b.register_app(app("bulk")).unwrap();
    connect(&a, &b).await;
    let msg = Bytes::from(vec![9; 1024]);
    for _ in 0..200 {
        a.send(b.node_id(), &app("bulk"), msg.clone())
            .await
            .unwrap();
    }
    for _ in 0..200 {
        assert_eq!(recv(&mut b_bulk).await, (id("a"), msg.clone()));
    }
    let info = a.connection_info(b.node_id()).unwrap();
    // 200 KiB of data take about 140 packets of at most 1,500 bytes (this run sends about
    // 160 with the handshake and acknowledgements).
    assert!(info.sent_packets >= 100, "{info:?}");
    assert!(
        info.lost_packets <= info.sent_packets && info.cwnd > 0,
        "{info:?}"
    );

    // The connection's counters are sampled every 5 s and once more when it closes.
    a.disconnect(b.node_id());
    wait_until("a's connection closed", || a.counts().connections == 0).await;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let counter = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
    };
    assert!(counter("nodosum_quic_packets_sent_total") >= info.sent_packets);
    assert!(counter("nodosum_quic_packets_lost_total") >= info.lost_packets);
    assert!(counter("nodosum_quic_congestion_events_total") >= info.congestion_events);
    counter("nodosum_quic_lost_bytes_total");
}
