//! 0-RTT: replay-safe applications' messages travel as early data on reconnects, other
//! applications' never do, early data of a handshake that never completes is held (or,
//! for a replay-safe application, delivered without disturbing anything), and rejected
//! 0-RTT data is written again exactly once.
//!
//! A UDP relay between client and server holds the server's datagrams (or the client's
//! handshake packets) until the test releases them: while it does, the client (or the
//! server) cannot complete its handshake, so "before the handshake completed" is a state
//! the test controls rather than a race.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use nodosum_proto::{Limits, StreamInit};
use nodosum_quic::{
    AppOptions, AppReceiver, Config, Counts, DevCa, Event, HandshakeKind, QuicNode, RejectReason,
};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::util::*;

/// A UDP relay on 127.0.0.1 between a client and the server at `upstream`. Until
/// [`Relay::release`], it holds one direction's datagrams (and drops them if never
/// released), as [`Hold`] says; everything else passes at once.
struct Relay {
    addr: SocketAddr,
    release: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// What a [`Relay`] holds.
#[derive(Clone, Copy, PartialEq)]
enum Hold {
    /// Every datagram from the server: the client cannot complete its handshake.
    ServerDatagrams,
    /// The client's datagrams that carry Handshake or 1-RTT packets (its Initial and
    /// 0-RTT packets pass): the client completes its handshake, the server cannot. The
    /// server's datagrams wait until a 0-RTT packet of the client passed, so the client's
    /// first data travels as 0-RTT data rather than (held) 1-RTT data.
    ClientHandshake,
}

/// The kinds of the coalesced QUIC v1 packets in a datagram (RFC 9000, section 17), as a
/// bit mask: `1 << 0` Initial, `1 << 1` 0-RTT, `1 << 2` Handshake, `1 << 3` 1-RTT.
fn packet_kinds(datagram: &[u8]) -> u8 {
    fn varint(d: &mut &[u8]) -> Option<usize> {
        let first = *d.first()?;
        let len = 1usize << (first >> 6);
        let bytes = d.get(..len)?;
        let v = bytes[1..]
            .iter()
            .fold(u64::from(first & 0x3f), |v, b| (v << 8) | u64::from(*b));
        *d = &d[len..];
        usize::try_from(v).ok()
    }
    fn skip(d: &mut &[u8], n: usize) -> Option<()> {
        *d = d.get(n..)?;
        Some(())
    }
    /// The next packet's type (0 Initial, 1 0-RTT, 2 Handshake, 3 1-RTT), skipping it;
    /// `None` at the end (or at padding).
    fn next(d: &mut &[u8]) -> Option<u8> {
        let first = *d.first()?;
        if first & 0x80 == 0 {
            // A short header runs to the end of the datagram; a zero byte is padding.
            *d = &[];
            return (first & 0x40 != 0).then_some(3);
        }
        let kind = (first >> 4) & 0x03;
        skip(d, 5)?;
        let dcid = usize::from(*d.first()?);
        skip(d, 1 + dcid)?;
        let scid = usize::from(*d.first()?);
        skip(d, 1 + scid)?;
        if kind == 0 {
            let token = varint(d)?;
            skip(d, token)?;
        }
        let len = varint(d)?;
        skip(d, len)?;
        Some(kind)
    }
    let mut d = datagram;
    let mut kinds = 0;
    while let Some(kind) = next(&mut d) {
        kinds |= 1 << kind;
    }
    kinds
}

const ZERO_RTT: u8 = 1 << 1;
const BEYOND_0RTT: u8 = 1 << 2 | 1 << 3;

impl Relay {
    /// Holds the server's datagrams.
    async fn start(upstream: SocketAddr) -> Self {
        Self::holding(upstream, Hold::ServerDatagrams).await
    }

    async fn holding(upstream: SocketAddr, hold: Hold) -> Self {
        let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        back.connect(upstream).await.unwrap();
        let addr = front.local_addr().unwrap();
        let (release, mut released) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            // Held datagrams, and whether each came from the client.
            let mut held: Vec<(Vec<u8>, bool)> = Vec::new();
            let mut server_held: Vec<Vec<u8>> = Vec::new();
            let mut seen_0rtt = false;
            let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
            loop {
                tokio::select! {
                    r = front.recv_from(&mut up) => {
                        let Ok((n, from)) = r else { return };
                        client = Some(from);
                        let d = &up[..n];
                        let kinds = packet_kinds(d);
                        if hold == Hold::ClientHandshake
                            && !*released.borrow()
                            && kinds & BEYOND_0RTT != 0
                        {
                            held.push((d.to_vec(), true));
                            continue;
                        }
                        let _ = back.send(d).await;
                        if kinds & ZERO_RTT != 0 && !seen_0rtt {
                            seen_0rtt = true;
                            for d in server_held.drain(..) {
                                let _ = front.send_to(&d, from).await;
                            }
                        }
                    }
                    r = back.recv(&mut down) => {
                        let Ok(n) = r else { return };
                        let d = &down[..n];
                        match hold {
                            Hold::ServerDatagrams if !*released.borrow() => {
                                held.push((d.to_vec(), false));
                            }
                            Hold::ClientHandshake if !seen_0rtt => server_held.push(d.to_vec()),
                            _ => if let Some(c) = client {
                                let _ = front.send_to(d, c).await;
                            },
                        }
                    }
                    r = released.changed() => {
                        if r.is_err() {
                            return;
                        }
                        for (d, from_client) in held.drain(..) {
                            if from_client {
                                let _ = back.send(&d).await;
                            } else if let Some(c) = client {
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

/// The accepting node answers a replay-safe stream that arrived as 0-RTT data at once,
/// as 0.5-RTT data: the answer reaches the dialler while the acceptor's handshake cannot
/// have completed (the relay holds the dialler's handshake packets). Once it completes,
/// the stream is an ordinary one: nothing arrives twice, and order holds both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_to_early_data_leave_before_the_acceptors_handshake_completes() {
    init_tracing();
    let ca = ca();
    let (a, b, mut a_safe, mut b_safe) = resumable_pair(&ca, Config::development()).await;

    let relay = Relay::holding(b.local_addr().unwrap(), Hold::ClientHandshake).await;
    a.connect(b.node_id().clone(), relay.addr);
    a.send(b.node_id(), &app("safe"), seq(1)).await.unwrap();
    assert_eq!(recv(&mut b_safe).await, (id("a"), seq(1)));
    b.send(a.node_id(), &app("safe"), seq(2)).await.unwrap();
    assert_eq!(recv(&mut a_safe).await, (id("b"), seq(2)));
    assert!(
        b.connection_info(a.node_id()).is_none(),
        "b's handshake is held"
    );
    assert_eq!(b.early_data().delivered, 1);
    assert_eq!(b.early_data().answered_early, 1);

    relay.release();
    let (b2, a_id) = (b.clone(), a.node_id().clone());
    wait_until("b is up", move || b2.connection_info(&a_id).is_some()).await;
    for i in 3..10 {
        b.send(a.node_id(), &app("safe"), seq(i)).await.unwrap();
    }
    a.send(b.node_id(), &app("safe"), seq(20)).await.unwrap();
    for i in 3..10 {
        assert_eq!(recv(&mut a_safe).await, (id("b"), seq(i)));
    }
    assert_eq!(recv(&mut b_safe).await, (id("a"), seq(20)));
    assert!(a_safe.try_recv().is_err());
    assert!(b_safe.try_recv().is_err());
    assert_eq!((a.early_data().resent, b.early_data().resent), (0, 0));
    assert_eq!(b.early_data().answered_early, 1);
    for node in [&a, &b] {
        assert_eq!((node.counts().connections, node.counts().streams), (1, 1));
    }
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

/// A raw early-data client for "a" after one full session with `b`, so that it holds a
/// ticket with early data allowed: it wrote "hello" to `safe`, got `b`'s answer on the
/// same stream (the tickets come before it), and closed; `b` has forgotten it.
async fn raw_client_with_ticket(
    ca: &DevCa,
    b: &QuicNode,
    b_safe: &mut AppReceiver,
) -> quinn::Endpoint {
    let raw = raw_early_client(ca, "a");
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
    assert_eq!(recv(b_safe).await, (id("a"), Bytes::from_static(b"hello")));
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
    raw
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
    let raw = raw_client_with_ticket(&ca, &b, &mut b_safe).await;

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

/// A replayed flight's replay-safe stream becomes the lane's stream, and the answer goes
/// out on it. When the real peer connects and opens its own stream meanwhile, that answer
/// is not lost: once the replayed connection is gone, it is written again on the real
/// connection, before anything newer, and the real peer's messages are delivered in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_on_a_replayed_stream_reaches_the_real_peer() {
    init_tracing();
    let ca = ca();
    let b = safe_node(&ca, "b");
    let mut b_safe = safe_app(&b, "safe");
    let _b_plain = b.register_app(app("plain")).unwrap();
    let raw = raw_client_with_ticket(&ca, &b, &mut b_safe).await;

    // A replayed flight (its handshake never completes): b answers on its stream.
    let relay = Relay::start(b.local_addr().unwrap()).await;
    let fake = fake_0rtt_connection(&raw, relay.addr).await;
    assert_eq!(recv(&mut b_safe).await.1, Bytes::from_static(b"early safe"));
    b.send(&id("a"), &app("safe"), seq(1)).await.unwrap();
    let b2 = b.clone();
    wait_until("answer written early", move || {
        b2.early_data().answered_early == 1
    })
    .await;

    // The real "a" connects and opens its own stream.
    let a = safe_node(&ca, "a");
    let mut a_safe = safe_app(&a, "safe");
    connect(&a, &b).await;
    a.send(b.node_id(), &app("safe"), seq(10)).await.unwrap();
    // b holds a's stream (its messages wait behind the replayed stream's)...
    let b2 = b.clone();
    wait_until_dbg(
        "a's stream accepted",
        move || b2.counts().streams == 3,
        || format!("{:?}", b.counts()),
    )
    .await;
    // ...and its lane gives the replayed stream up for it (the test cannot observe that
    // step; it takes microseconds).
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // The replayed connection goes away (here at once; otherwise when it times out).
    fake.close(0u32.into(), b"gone");
    assert_eq!(recv(&mut b_safe).await, (id("a"), seq(10)));
    b.send(a.node_id(), &app("safe"), seq(2)).await.unwrap();
    assert_eq!(recv(&mut a_safe).await, (id("b"), seq(1)));
    assert_eq!(recv(&mut a_safe).await, (id("b"), seq(2)));
    assert!(a_safe.try_recv().is_err());
    assert_eq!(b.early_data().resent, 1);
    drop(relay);
}

/// An accepted handshake that never completes (a replayed flight) is given up after
/// `handshake_timeout`, long before the idle timeout would end it: the peer, its lane and
/// the early streams are gone, and the failure is reported as a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_handshake_that_never_completes_times_out() {
    init_tracing();
    let ca = ca();
    let b = impatient_node(&ca, "b");
    let mut b_safe = safe_app(&b, "safe");
    let _b_plain = b.register_app(app("plain")).unwrap();
    let raw = raw_client_with_ticket(&ca, &b, &mut b_safe).await;

    let mut events = b.events();
    let relay = Relay::start(b.local_addr().unwrap()).await;
    let _fake = fake_0rtt_connection(&raw, relay.addr).await;
    assert_eq!(recv(&mut b_safe).await.1, Bytes::from_static(b"early safe"));
    b.send(&id("a"), &app("safe"), seq(1)).await.unwrap();
    timed_out(&mut events).await;
    forgets_everything(&b).await;
    drop(relay);
}

/// A dialled handshake that never completes (the server's answers never arrive) is given
/// up after `handshake_timeout`, reported as a timeout, and dialled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialled_handshake_that_never_completes_times_out() {
    init_tracing();
    let ca = ca();
    let a = impatient_node(&ca, "a");
    let b = safe_node(&ca, "b");
    let relay = Relay::start(b.local_addr().unwrap()).await;
    let mut events = a.events();
    a.connect(b.node_id().clone(), relay.addr);
    let rejected = timed_out(&mut events).await;
    assert!(
        matches!(&rejected, Event::Rejected { node: Some(n), .. } if n == b.node_id()),
        "{rejected:?}"
    );
    assert!(a.connection_info(b.node_id()).is_none());
    // Still to be connected: the dial loop tries again (and times out again).
    timed_out(&mut events).await;
    a.disconnect(b.node_id());
    forgets_everything(&a).await;
    drop(relay);
}

/// A node that gives up a handshake after 300 ms, and a connection only after far longer
/// than the tests' guard: only the handshake timeout can end a handshake in time.
fn impatient_node(ca: &DevCa, name: &str) -> QuicNode {
    let config = Config {
        handshake_timeout: std::time::Duration::from_millis(300),
        max_idle_timeout: std::time::Duration::from_secs(600),
        ..Config::development()
    };
    node_with(&ca.issue(&id(name)).unwrap(), config)
}

/// The next rejection, which must be a handshake timeout.
async fn timed_out(events: &mut tokio::sync::broadcast::Receiver<Event>) -> Event {
    let rejected = event(events, "handshake given up", |e| {
        matches!(e, Event::Rejected { .. })
    })
    .await;
    assert!(
        matches!(
            rejected,
            Event::Rejected {
                reason: RejectReason::Timeout,
                ..
            }
        ),
        "{rejected:?}"
    );
    rejected
}

/// Waits until `node` has no peer, connection, stream or lane left.
async fn forgets_everything(node: &QuicNode) {
    let (n2, n3) = (node.clone(), node.clone());
    wait_until_dbg(
        "everything forgotten",
        move || n2.counts() == Counts::default(),
        move || format!("{:?}", n3.counts()),
    )
    .await;
}

/// An accepting node takes the early streams of one connection per peer at a time:
/// while one connection's are in the lanes, another's are held until its handshake
/// completes. So when the first fails and the peer is forgotten, nothing of the second
/// goes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_streams_are_taken_from_one_connection_per_peer_at_a_time() {
    init_tracing();
    let ca = ca();
    let b = safe_node(&ca, "b");
    let mut b_safe = safe_app(&b, "safe");
    let mut b_other = safe_app(&b, "other");
    let raw = raw_client_with_ticket(&ca, &b, &mut b_safe).await;

    // Neither handshake completes: the relay holds the server's datagrams.
    let relay = Relay::start(b.local_addr().unwrap()).await;
    let first = fake_0rtt_connection_with(&raw, relay.addr, &[("safe", b"first")]).await;
    assert_eq!(
        recv(&mut b_safe).await,
        (id("a"), Bytes::from_static(b"first"))
    );
    let second = fake_0rtt_connection_with(&raw, relay.addr, &[("other", b"second")]).await;
    let b2 = b.clone();
    wait_until_dbg(
        "the second connection's stream held",
        move || b2.early_data().held == 1,
        || format!("{:?}", b.early_data()),
    )
    .await;
    assert!(b_other.try_recv().is_err());

    // The first fails: the peer is forgotten, the second's stream still waits for its
    // handshake (and ends with it).
    first.close(0u32.into(), b"gone");
    let b2 = b.clone();
    wait_until_dbg(
        "b forgets the first connection's peer",
        move || b2.counts().peers == 0,
        || format!("{:?}", b.counts()),
    )
    .await;
    assert!(b_other.try_recv().is_err());
    second.close(0u32.into(), b"gone");
    forgets_everything(&b).await;
    assert!(b_other.try_recv().is_err());
    drop(relay);
}

/// Dials `addr` with a 0-RTT ticket and writes, as 0-RTT data, one message each for
/// `plain` and `safe` on their own streams.
async fn fake_0rtt_connection(raw: &quinn::Endpoint, addr: SocketAddr) -> quinn::Connection {
    fake_0rtt_connection_with(
        raw,
        addr,
        &[("plain", &b"early plain"[..]), ("safe", b"early safe")],
    )
    .await
}

/// Dials `addr` with a 0-RTT ticket and writes, as 0-RTT data, each `(application,
/// message)` on a stream of its own.
async fn fake_0rtt_connection_with(
    raw: &quinn::Endpoint,
    addr: SocketAddr,
    messages: &[(&str, &[u8])],
) -> quinn::Connection {
    let connecting = raw.connect(addr, "b").unwrap();
    let Ok((fake, _accepted)) = connecting.into_0rtt() else {
        panic!("the raw client has no 0-RTT ticket");
    };
    for &(app_name, msg) in messages {
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
        // Not just until b has no connection to a: b answers before its side of the
        // handshake completed (0.5-RTT), so it may register the connection only after a
        // closed it. A message a sends on the next connection while b still has this one
        // is delivered, but b writes its answer on this one, where it is lost with the
        // connection, as any message is.
        let b3 = b.clone();
        wait_until("b forgets a", move || b3.counts() == Counts::default()).await;
    }
    assert!(a.early_data().sent > 0 && b.early_data().delivered > 0);
    let b3 = b.clone();
    wait_until("b forgets a", move || b3.counts() == Counts::default()).await;
    assert!(a_rx.try_recv().is_err());
}
