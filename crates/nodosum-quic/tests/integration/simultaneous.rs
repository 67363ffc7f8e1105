//! Two nodes dialling each other at once end with one connection, the same one on both
//! sides, and lose no message.

use nodosum_quic::{Config, QuicNode};
use prometheus_client::registry::Registry;

use crate::util::*;

const ROUNDS: usize = 20;
const MESSAGES: u32 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dial_converges_without_losing_messages() {
    init_tracing();
    let ca = ca();
    let chat = app("chat");
    let mut races = 0;
    for round in 0..ROUNDS {
        let mut a_registry = Registry::default();
        let a = QuicNode::bind(
            Config::development(),
            &ca.issue(&id(&format!("a{round}"))).unwrap(),
            Some(&mut a_registry),
        )
        .unwrap();
        let b = node(&ca, &format!("b{round}"));
        let mut a_rx = a.register_app(chat.clone()).unwrap();
        let mut b_rx = b.register_app(chat.clone()).unwrap();
        a.connect(b.node_id().clone(), b.local_addr().unwrap());
        b.connect(a.node_id().clone(), a.local_addr().unwrap());
        // Both send at once, before either knows which connection survives.
        let send_all = |from: QuicNode, to: QuicNode| {
            let chat = chat.clone();
            tokio::spawn(async move {
                for i in 0..MESSAGES {
                    from.send(to.node_id(), &chat, seq(i)).await.unwrap();
                }
            })
        };
        let ta = send_all(a.clone(), b.clone());
        let tb = send_all(b.clone(), a.clone());
        for (rx, from) in [(&mut b_rx, a.node_id()), (&mut a_rx, b.node_id())] {
            for i in 0..MESSAGES {
                let (sender, msg) = recv(rx).await;
                assert_eq!(&sender, from);
                assert_eq!(unseq(&msg), i, "round {round}: order or loss");
            }
        }
        ta.await.unwrap();
        tb.await.unwrap();
        // Converged: no dial in flight and one connection on each side.
        let (a2, b2) = (a.clone(), b.clone());
        wait_until("one connection each", move || {
            let (ca, cb) = (a2.counts(), b2.counts());
            ca.dialing == 0 && cb.dialing == 0 && ca.connections == 1 && cb.connections == 1
        })
        .await;
        // Both agree which connection survived...
        let a_dialled = a.connection_info(b.node_id()).unwrap().initiated_locally;
        assert_ne!(
            a_dialled,
            b.connection_info(a.node_id()).unwrap().initiated_locally
        );
        // ...and when both dials completed, it is the one the smaller ID ("a..") dialled.
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &a_registry).unwrap();
        if text.contains("nodosum_quic_handshakes_total{kind=\"full\"} 2") {
            races += 1;
            assert!(
                a_dialled,
                "round {round}: duplicate resolved the wrong way: {:?} {:?} {:?} {:?}",
                a.counts(),
                b.counts(),
                a.connection_info(b.node_id()),
                b.connection_info(a.node_id())
            );
        }
        // Streams are opened lazily: if every message went out before the handover, none
        // is left. One more message each way leaves exactly one stream, shared by both
        // directions.
        a.send(b.node_id(), &chat, seq(MESSAGES)).await.unwrap();
        b.send(a.node_id(), &chat, seq(MESSAGES)).await.unwrap();
        assert_eq!(unseq(&recv(&mut b_rx).await.1), MESSAGES);
        assert_eq!(unseq(&recv(&mut a_rx).await.1), MESSAGES);
        let (a2, b2) = (a.clone(), b.clone());
        let (a3, b3) = (a.clone(), b.clone());
        wait_until_dbg(
            "one stream each",
            move || a2.counts().streams == 1 && b2.counts().streams == 1,
            move || format!("round {round}: {:?} {:?}", a3.counts(), b3.counts()),
        )
        .await;
    }
    tracing::info!(
        races,
        rounds = ROUNDS,
        "simultaneous dials that produced two connections"
    );
}
