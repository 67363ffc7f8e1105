//! 0-RTT: replay-safe applications' messages travel as early data on reconnects, other
//! applications' never do, early data of a handshake that never completes is held (or,
//! for a replay-safe application, delivered without disturbing anything), and rejected
//! 0-RTT data is written again exactly once.
//!
//! A UDP relay between client and server holds the server's datagrams until the test
//! releases them: while it does, the client cannot complete its handshake, so "before
//! the handshake completed" is a state the test controls rather than a race.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use nodosum_proto::{Limits, StreamInit};
use nodosum_quic::{
    AppOptions, AppReceiver, Config, Counts, DevCa, Event, HandshakeKind, QuicNode,
};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::util::*;

/// A UDP relay on 127.0.0.1: datagrams from the client go to `upstream` at once; the
/// server's answers are held until [`Relay::release`] (and dropped if never released).
struct Relay {
    addr: SocketAddr,
    release: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Self {
        let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        back.connect(upstream).await.unwrap();
        let addr = front.local_addr().unwrap();
        let (release, mut released) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let mut held: Vec<Vec<u8>> = Vec::new();
            let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
            loop {
                tokio::select! {
                    r = front.recv_from(&mut up) => {
                        let Ok((n, from)) = r else { return };
                        client = Some(from);
                        let _ = back.send(&up[..n]).await;
                    }
                    r = back.recv(&mut down) => {
                        let Ok(n) = r else { return };
                        if *released.borrow() {
                            if let Some(c) = client {
                                let _ = front.send_to(&down[..n], c).await;
                            }
                        } else {
                            held.push(down[..n].to_vec());
                        }
                    }
                    r = released.changed() => {
                        if r.is_err() {
                            return;
                        }
                        if let Some(c) = client {
                            for d in held.drain(..) {
                                let _ = front.send_to(&d, c).await;
                            }
                        }
                    }
                }
            }
        });
        Self {
            addr,
            release,
            task,
        }
    }

    fn release(&self) {
        self.release.send_replace(true);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn safe_node(ca: &DevCa, name: &str) -> QuicNode {
    node_with(&ca.issue(&id(name)).unwrap(), Config::development())
}

/// Registers `name` on `node` as a replay-safe application.
fn safe_app(node: &QuicNode, name: &str) -> AppReceiver {
    node.register_app_with(app(name), AppOptions::replay_safe())
        .unwrap()
}

/// Connects `a` to `b` directly, exchanges a message each way on `safe` (so `a` holds
/// `b`'s session tickets, which arrive before `b`'s first stream data), then disconnects
/// and waits until `b` has forgotten `a`.
async fn first_session(a: &QuicNode, b: &QuicNode, a_rx: &mut AppReceiver, b_rx: &mut AppReceiver) {
    connect(a, b).await;
    a.send(b.node_id(), &app("safe"), seq(100)).await.unwrap();
    assert_eq!(unseq(&recv(b_rx).await.1), 100);
    b.send(a.node_id(), &app("safe"), seq(101)).await.unwrap();
    assert_eq!(unseq(&recv(a_rx).await.1), 101);
    a.disconnect(b.node_id());
    let b2 = b.clone();
    wait_until_dbg(
        "b forgets a",
        move || b2.counts() == Counts::default(),
        || format!("{:?}", b.counts()),
    )
    .await;
}

/// Nodes "a" and "b" (`b` with `b_config`), each with the replay-safe application
/// `safe`, after a first session: `a` holds `b`'s session tickets.
async fn resumable_pair(
    ca: &DevCa,
    b_config: Config,
) -> (QuicNode, QuicNode, AppReceiver, AppReceiver) {
    let a = safe_node(ca, "a");
    let b = node_with(&ca.issue(&id("b")).unwrap(), b_config);
    let mut a_safe = safe_app(&a, "safe");
    let mut b_safe = safe_app(&b, "safe");
    first_session(&a, &b, &mut a_safe, &mut b_safe).await;
    (a, b, a_safe, b_safe)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_safe_messages_travel_as_0rtt_and_others_wait_for_the_handshake() {
    init_tracing();
    let ca = ca();
    let a = safe_node(&ca, "a");
    let b = safe_node(&ca, "b");
    let mut a_safe = safe_app(&a, "safe");
    let _a_plain = a.register_app(app("plain")).unwrap();
    let mut b_safe = safe_app(&b, "safe");
    let mut b_plain = b.register_app(app("plain")).unwrap();
    first_session(&a, &b, &mut a_safe, &mut b_safe).await;
    assert_eq!(
        a.early_data().sent,
        0,
        "a full handshake sends no early data"
    );

    // Reconnect through a relay that holds b's answers: a cannot complete its handshake.
    let relay = Relay::start(b.local_addr().unwrap()).await;
    let mut a_events = a.events();
    a.connect(b.node_id().clone(), relay.addr);
    a.send(b.node_id(), &app("safe"), seq(1)).await.unwrap();
    a.send(b.node_id(), &app("plain"), seq(2)).await.unwrap();
    // The replay-safe message arrives as 0-RTT data and is delivered at once (0.5-RTT),
    // while the handshake cannot have completed on either side.
    assert_eq!(recv(&mut b_safe).await, (id("a"), seq(1)));
    assert!(a.connection_info(b.node_id()).is_none());
    assert!(b.connection_info(a.node_id()).is_none());
    assert_eq!(b.early_data().delivered, 1);
    // The other application's message was not sent: it waits for the handshake.
    assert_eq!(a.early_data().sent, 1);
    assert!(b_plain.try_recv().is_err());
    // b answers at once; the answer waits for b's side of the handshake.
    b.send(a.node_id(), &app("safe"), seq(60)).await.unwrap();

    relay.release();
    let up = event(&mut a_events, "a up", |e| matches!(e, Event::Up { .. })).await;
    assert!(
        matches!(
            up,
            Event::Up {
                kind: HandshakeKind::ZeroRtt,
                ..
            }
        ),
        "{up:?}"
    );
    assert_eq!(recv(&mut b_plain).await, (id("a"), seq(2)));
    assert_eq!(recv(&mut a_safe).await, (id("b"), seq(60)));
    // The early stream is an ordinary stream now: nothing is written twice, order holds.
    for i in 3..20 {
        a.send(b.node_id(), &app("safe"), seq(i)).await.unwrap();
    }
    for i in 3..20 {
        assert_eq!(unseq(&recv(&mut b_safe).await.1), i);
    }
    assert_eq!(a.early_data().resent, 0);
    // Answers flow back on the same stream.
    b.send(a.node_id(), &app("safe"), seq(50)).await.unwrap();
    assert_eq!(unseq(&recv(&mut a_safe).await.1), 50);
    assert_eq!(b.counts().connections, 1);
    assert_eq!(b.counts().streams, 2);
}

/// The first message after `connect` is written as 0-RTT data by the `send` call itself,
/// whether or not the runtime has run the dial's or the lane's task yet: on a one-thread
/// runtime neither has run when `send` returns. Through `QuicNode::send` and through a
/// `LaneSender`, each message arrives once, before the handshake completed.
#[tokio::test]
async fn the_first_message_after_connect_is_early_data_at_once() {
    init_tracing();
    let ca = ca();
    let (a, b, _a_safe, mut b_safe) = resumable_pair(&ca, Config::development()).await;

    let relay = Relay::start(b.local_addr().unwrap()).await;
    a.connect(b.node_id().clone(), relay.addr);
    a.send(b.node_id(), &app("safe"), seq(1)).await.unwrap();
    assert_eq!(a.early_data().sent, 1, "written by send itself");
    a.send(b.node_id(), &app("safe"), seq(2)).await.unwrap();
    assert_eq!(recv(&mut b_safe).await, (id("a"), seq(1)));
    assert_eq!(recv(&mut b_safe).await, (id("a"), seq(2)));
    assert!(a.connection_info(b.node_id()).is_none(), "handshake held");
    relay.release();
    let a2 = a.clone();
    let b_id = b.node_id().clone();
    wait_until("a is up", move || a2.connection_info(&b_id).is_some()).await;
    a.send(b.node_id(), &app("safe"), seq(3)).await.unwrap();
    assert_eq!(recv(&mut b_safe).await, (id("a"), seq(3)));
    assert_eq!(a.early_data().resent, 0);

    // Again through a cached sender, whose lane ends with the disconnect.
    let mut sender = a.sender(b.node_id(), &app("safe"));
    sender.send(seq(4)).await.unwrap();
    assert_eq!(recv(&mut b_safe).await, (id("a"), seq(4)));
    a.disconnect(b.node_id());
    let (b2, a_id) = (b.clone(), a.node_id().clone());
    wait_until("b drops a", move || b2.connection_info(&a_id).is_none()).await;
    a.connect(b.node_id().clone(), b.local_addr().unwrap());
    let sent = a.early_data().sent;
    sender.send(seq(5)).await.unwrap();
    assert_eq!(
        a.early_data().sent,
        sent + 1,
        "written by the sender's call"
    );
    assert_eq!(recv(&mut b_safe).await, (id("a"), seq(5)));
    assert!(b_safe.try_recv().is_err());
}

/// A first message larger than the peer's stream window cannot be written early in one
/// go: the `send` call writes what the window allows, the lane's writer the rest, and the
/// message arrives once, whole, before the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_message_over_the_peer_stream_window_is_sent_once() {
    init_tracing();
    let ca = ca();
    let config = Config {
        stream_receive_window: 512,
        ..Config::development()
    };
    let (a, b, _a_safe, mut b_safe) = resumable_pair(&ca, config).await;

    let big = Bytes::from(vec![7u8; 4000]);
    a.connect(b.node_id().clone(), b.local_addr().unwrap());
    a.send(b.node_id(), &app("safe"), big.clone())
        .await
        .unwrap();
    a.send(b.node_id(), &app("safe"), seq(2)).await.unwrap();
    assert_eq!(recv(&mut b_safe).await, (id("a"), big));
    assert_eq!(recv(&mut b_safe).await, (id("a"), seq(2)));
    a.send(b.node_id(), &app("safe"), seq(3)).await.unwrap();
    assert_eq!(recv(&mut b_safe).await, (id("a"), seq(3)));
    assert!(b_safe.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_0rtt_data_is_delivered_exactly_once() {
    init_tracing();
    let ca = ca();
    let a = safe_node(&ca, "a");
    let b_ident = ca.issue(&id("b")).unwrap();
    let b = node_with(&b_ident, Config::development());
    let mut a_safe = safe_app(&a, "safe");
    let mut b_safe = safe_app(&b, "safe");
    first_session(&a, &b, &mut a_safe, &mut b_safe).await;
    drop(b_safe);
    b.close(std::time::Duration::from_secs(1)).await;

    // "b" restarts: same identity, a new session cache, so a's ticket is unknown and
    // the server rejects the 0-RTT data a writes with it.
    let b = node_with(&b_ident, Config::development());
    let mut b_safe = safe_app(&b, "safe");
    let relay = Relay::start(b.local_addr().unwrap()).await;
    let mut a_events = a.events();
    a.connect(b.node_id().clone(), relay.addr);
    a.send(b.node_id(), &app("safe"), seq(1)).await.unwrap();
    let a2 = a.clone();
    wait_until("written as 0-RTT data", move || a2.early_data().sent == 1).await;
    relay.release();
    let up = event(&mut a_events, "a up", |e| matches!(e, Event::Up { .. })).await;
    assert!(
        matches!(
            up,
            Event::Up {
                kind: HandshakeKind::Full,
                ..
            }
        ),
        "{up:?}"
    );
    assert_eq!(recv(&mut b_safe).await, (id("a"), seq(1)));
    a.send(b.node_id(), &app("safe"), seq(2)).await.unwrap();
    // Exactly once: the next message is the next one, not a second copy.
    assert_eq!(recv(&mut b_safe).await, (id("a"), seq(2)));
    assert_eq!(a.early_data().resent, 1);
    assert_eq!(b.early_data().delivered, 0);
    assert!(b_safe.try_recv().is_err());
}

/// A raw quinn client holding node "a"'s certificate, with 0-RTT enabled: it plays a
/// peer (or an attacker replaying its flight) that writes any application's data early.
fn raw_early_client(ca: &DevCa, name: &str) -> quinn::Endpoint {
    let ident = ca.issue(&id(name)).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for r in &ident.ca_roots {
        roots.add(r.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(ident.cert_chain.clone(), ident.key.clone_key())
        .unwrap();
    tls.alpn_protocols = vec![nodosum_quic::DEFAULT_ALPN.to_vec()];
    tls.enable_early_data = true;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

/// `StreamInit` for `app` followed by one framed message.
fn init_and_message(app_name: &str, msg: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    StreamInit::new(app(app_name))
        .encode(&Limits::default(), &mut out)
        .unwrap();
    out.put_u32_le(u32::try_from(msg.len()).unwrap());
    out.extend_from_slice(msg);
    out.freeze()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_data_of_a_handshake_that_never_completes_is_not_delivered_unless_replay_safe() {
    init_tracing();
    let ca = ca();
    let b = safe_node(&ca, "b");
    let mut b_safe = safe_app(&b, "safe");
    let mut b_plain = b.register_app(app("plain")).unwrap();
    let raw = raw_early_client(&ca, "a");

    // A full session first, so the raw client holds a ticket with early data allowed.
    let conn = guarded(
        "raw handshake",
        raw.connect(b.local_addr().unwrap(), "b").unwrap(),
    )
    .await
    .unwrap();
    let (mut send, mut recv_half) = conn.open_bi().await.unwrap();
    send.write_all(&init_and_message("safe", b"hello"))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut b_safe).await,
        (id("a"), Bytes::from_static(b"hello"))
    );
    // b answers on the same stream; the tickets came before it.
    b.send(&id("a"), &app("safe"), Bytes::from_static(b"back"))
        .await
        .unwrap();
    let mut frame = [0u8; 8];
    guarded("answer", recv_half.read_exact(&mut frame))
        .await
        .unwrap();
    let mut f = &frame[..];
    assert_eq!(f.get_u32_le(), 4);
    assert_eq!(f, b"back");
    conn.close(0u32.into(), b"done");
    let b2 = b.clone();
    wait_until("b forgets a", move || b2.counts() == Counts::default()).await;

    // Now a connection whose handshake never completes (b's answers never reach the
    // client, as for a replayed flight), while "a" has no connection: both applications'
    // data arrives as 0-RTT data.
    let relay = Relay::start(b.local_addr().unwrap()).await;
    let fake = fake_0rtt_connection(&raw, relay.addr).await;
    // The replay-safe application gets its message before any handshake completed, and
    // can answer at once (the answer waits for a connection); the other application's
    // stream is held, unread.
    assert_eq!(
        recv(&mut b_safe).await,
        (id("a"), Bytes::from_static(b"early safe"))
    );
    b.send(&id("a"), &app("safe"), Bytes::from_static(b"answer"))
        .await
        .unwrap();
    let b2 = b.clone();
    wait_until("plain stream held", move || b2.early_data().held == 1).await;
    assert!(b_plain.try_recv().is_err());
    assert_eq!(b.counts().connections, 0);
    assert!(b.connection_info(&id("a")).is_none());
    // It never completes: the held data is never delivered, and the peer, its lane and
    // the streams are gone once the connection is.
    fake.close(0u32.into(), b"gone");
    let b2 = b.clone();
    wait_until_dbg(
        "pending connection forgotten",
        move || b2.counts() == Counts::default(),
        || format!("{:?}", b.counts()),
    )
    .await;
    assert!(b_plain.try_recv().is_err());

    // The real "a" connects.
    let a = safe_node(&ca, "a");
    let _a_safe = safe_app(&a, "safe");
    connect(&a, &b).await;
    a.send(b.node_id(), &app("plain"), seq(30)).await.unwrap();
    a.send(b.node_id(), &app("safe"), seq(31)).await.unwrap();
    assert_eq!(recv(&mut b_plain).await, (id("a"), seq(30)));
    assert_eq!(recv(&mut b_safe).await, (id("a"), seq(31)));

    // A replayed flight while "a" is connected: held whatever the application, never
    // delivered, and the real connection carries on undisturbed.
    let fake = fake_0rtt_connection(&raw, relay.addr).await;
    let b2 = b.clone();
    wait_until("both streams held", move || b2.early_data().held == 3).await;
    assert!(b_plain.try_recv().is_err());
    assert!(b_safe.try_recv().is_err());
    assert_eq!(b.counts().connections, 1);
    a.send(b.node_id(), &app("plain"), seq(32)).await.unwrap();
    assert_eq!(recv(&mut b_plain).await, (id("a"), seq(32)));
    fake.close(0u32.into(), b"gone");
    let b2 = b.clone();
    wait_until_dbg(
        "held streams freed",
        move || b2.counts().streams == 2,
        || format!("{:?}", b.counts()),
    )
    .await;
    a.send(b.node_id(), &app("plain"), seq(33)).await.unwrap();
    a.send(b.node_id(), &app("safe"), seq(34)).await.unwrap();
    assert_eq!(recv(&mut b_plain).await, (id("a"), seq(33)));
    assert_eq!(recv(&mut b_safe).await, (id("a"), seq(34)));
    assert!(b_plain.try_recv().is_err());
    assert!(b_safe.try_recv().is_err());
    assert_eq!(b.counts().connections, 1);
    assert_eq!(b.early_data().delivered, 1);
    drop(relay);
}

/// Dials `addr` with a 0-RTT ticket and writes, as 0-RTT data, one message each for
/// `plain` and `safe` on their own streams.
async fn fake_0rtt_connection(raw: &quinn::Endpoint, addr: SocketAddr) -> quinn::Connection {
    let connecting = raw.connect(addr, "b").unwrap();
    let Ok((fake, _accepted)) = connecting.into_0rtt() else {
        panic!("the raw client has no 0-RTT ticket");
    };
    for (app_name, msg) in [("plain", &b"early plain"[..]), ("safe", b"early safe")] {
        let (mut send, recv) = fake.open_bi().await.unwrap();
        send.write_all(&init_and_message(app_name, msg))
            .await
            .unwrap();
        // Dropping the halves would finish the stream and stop reading it.
        std::mem::forget((send, recv));
    }
    fake
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_0rtt_reconnects_get_each_answer_exactly_once() {
    // The dialler disconnects as soon as its answer arrives, often before its handshake
    // completed: a connection that dies early must not leave anything behind that
    // disturbs (or duplicates answers on) the next one.
    init_tracing();
    let ca = ca();
    let a = safe_node(&ca, "a");
    let b = safe_node(&ca, "b");
    let mut a_rx = safe_app(&a, "echo");
    let mut b_rx = safe_app(&b, "echo");
    let b2 = b.clone();
    tokio::spawn(async move {
        while let Some((from, msg)) = b_rx.recv().await {
            b2.send(&from, &app("echo"), msg).await.unwrap();
        }
    });
    for i in 0..100u32 {
        a.connect(b.node_id().clone(), b.local_addr().unwrap());
        a.send(b.node_id(), &app("echo"), seq(i)).await.unwrap();
        assert_eq!(recv(&mut a_rx).await, (id("b"), seq(i)), "round {i}");
        a.disconnect(b.node_id());
        let (b3, a_id) = (b.clone(), a.node_id().clone());
        wait_until("b drops a", move || b3.connection_info(&a_id).is_none()).await;
    }
    assert!(a.early_data().sent > 0 && b.early_data().delivered > 0);
    let b3 = b.clone();
    wait_until("b forgets a", move || b3.counts() == Counts::default()).await;
    assert!(a_rx.try_recv().is_err());
}
