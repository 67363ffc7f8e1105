//! Handshakes, identity checks and every refusal case, with the endpoint serving on.

use std::net::SocketAddr;
use std::sync::Arc;

use nodosum_quic::{
    Config, DevValidity, DownReason, Event, HandshakeKind, QuicNode, RejectReason, TlsIdentity,
    codes,
};
use prometheus_client::registry::Registry;

use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_with_full_handshake_and_reports_identity() {
    init_tracing();
    let ca = ca();
    let a = node(&ca, "alpha");
    let b = node(&ca, "beta");
    let mut a_events = a.events();
    let mut b_events = b.events();
    a.connect(b.node_id().clone(), b.local_addr().unwrap());
    let up = event(&mut a_events, "a up", |e| matches!(e, Event::Up { .. })).await;
    assert_eq!(
        up,
        Event::Up {
            node: id("beta"),
            addr: b.local_addr().unwrap(),
            kind: HandshakeKind::Full,
            initiated_locally: true,
        }
    );
    let up = event(&mut b_events, "b up", |e| matches!(e, Event::Up { .. })).await;
    assert!(matches!(
        up,
        Event::Up { node, kind: HandshakeKind::Full, initiated_locally: false, .. } if node == id("alpha")
    ));
    assert_eq!(a.counts().connections, 1);
    assert_eq!(b.counts().connections, 1);
}

/// A client endpoint speaking raw quinn with a hand-built rustls config.
fn raw_client(
    server_roots: &[rustls::pki_types::CertificateDer<'static>],
    client: Option<&TlsIdentity>,
    alpn: &[u8],
) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    for r in server_roots {
        roots.add(r.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut tls = match client {
        Some(ident) => builder
            .with_client_auth_cert(ident.cert_chain.clone(), ident.key.clone_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

pub(crate) async fn raw_connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    name: &str,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    guarded("raw handshake", endpoint.connect(addr, name).unwrap()).await
}

pub(crate) fn raw_client_for(ca: &nodosum_quic::DevCa, name: &str) -> quinn::Endpoint {
    let ident = ca.issue(&id(name)).unwrap();
    raw_client(&ident.ca_roots, Some(&ident), nodosum_quic::DEFAULT_ALPN)
}

fn is_rejected(reason: RejectReason) -> impl Fn(&Event) -> bool {
    move |e| matches!(e, Event::Rejected { reason: r, .. } if *r == reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_typed_counted_and_the_endpoint_keeps_serving() {
    init_tracing();
    let ca = ca();
    let mut registry = Registry::default();
    let server = QuicNode::bind(
        Config::development(),
        &ca.issue(&id("server")).unwrap(),
        Some(&mut registry),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let mut server_events = server.events();

    // Wrong CA: the client trusts another CA and the server does not know the client's.
    let other_ca = other_ca();
    let stranger = node(&other_ca, "stranger");
    let mut stranger_events = stranger.events();
    stranger.connect(id("server"), addr);
    event(
        &mut stranger_events,
        "client refuses server cert",
        is_rejected(RejectReason::UnknownCa),
    )
    .await;
    event(
        &mut server_events,
        "server sees unknown ca",
        is_rejected(RejectReason::UnknownCa),
    )
    .await;
    stranger.disconnect(&id("server"));
    // A CA with the same name but another key is just as foreign.
    let twin = node(&crate::util::ca(), "twin");
    let mut twin_events = twin.events();
    twin.connect(id("server"), addr);
    event(
        &mut twin_events,
        "client refuses same-named foreign CA",
        is_rejected(RejectReason::UnknownCa),
    )
    .await;
    twin.disconnect(&id("server"));

    // Server trusts the client's CA but the client presents a certificate from another CA.
    let foreign = other_ca.issue(&id("foreign")).unwrap();
    let ep = raw_client(
        &ca.issue(&id("x")).unwrap().ca_roots,
        Some(&foreign),
        b"mycorrizal-quic",
    );
    if let Ok(conn) = raw_connect(&ep, addr, "server").await {
        // TLS 1.3: the client may finish before the server refuses; then it is closed.
        guarded("foreign client closed", conn.closed()).await;
    }
    event(
        &mut server_events,
        "server refuses foreign client cert",
        is_rejected(RejectReason::UnknownCa),
    )
    .await;

    // Wrong ALPN.
    let ident = ca.issue(&id("alpn-client")).unwrap();
    let ep = raw_client(&ident.ca_roots, Some(&ident), b"something-else");
    assert!(raw_connect(&ep, addr, "server").await.is_err());
    event(
        &mut server_events,
        "alpn refused",
        is_rejected(RejectReason::Alpn),
    )
    .await;

    // No client certificate.
    let ep = raw_client(&ident.ca_roots, None, b"mycorrizal-quic");
    let res = raw_connect(&ep, addr, "server").await;
    if let Ok(conn) = res {
        // TLS 1.3: the client may finish before the server refuses; then it is closed.
        guarded("no-cert connection closed", conn.closed()).await;
    }
    event(
        &mut server_events,
        "no client cert refused",
        is_rejected(RejectReason::NoClientCert),
    )
    .await;

    // Expired client certificate.
    let expired = ca.issue_with(&id("old"), DevValidity::Expired).unwrap();
    let ep = raw_client(&expired.ca_roots, Some(&expired), b"mycorrizal-quic");
    if let Ok(conn) = raw_connect(&ep, addr, "server").await {
        guarded("expired connection closed", conn.closed()).await;
    }
    event(
        &mut server_events,
        "expired refused",
        is_rejected(RejectReason::Expired),
    )
    .await;

    // Certificate identity differs from the dialled node ID.
    let dialler = node(&ca, "dialler");
    let mut dialler_events = dialler.events();
    dialler.connect(id("somebody-else"), addr);
    event(
        &mut dialler_events,
        "identity mismatch",
        is_rejected(RejectReason::IdentityMismatch),
    )
    .await;
    dialler.disconnect(&id("somebody-else"));

    // The endpoint still serves a well-behaved node.
    let good = node(&ca, "good");
    connect(&good, &server).await;
    assert_eq!(server.counts().connections, 1);

    // The server counts a refusal when it processes the dialler's alert, which may be
    // after the dialler reported it.
    let encode = || {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    };
    let reasons = [
        "unknown_ca",
        "alpn",
        "no_client_cert",
        "expired",
        "identity_mismatch",
    ];
    let counted = || {
        let text = encode();
        reasons.iter().all(|reason| {
            text.contains(&format!(
                "nodosum_quic_handshake_failures_total{{reason=\"{reason}\"}}"
            ))
        })
    };
    wait_until_dbg("every refusal counted", counted, &encode).await;
    assert!(
        encode().contains("nodosum_quic_connections 1"),
        "{}",
        encode()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acceptance_policy_refuses_unexpected_nodes() {
    init_tracing();
    let ca = ca();
    let server = node(&ca, "server");
    server.set_accept_policy(|node| node.as_str() != "intruder");
    let mut server_events = server.events();
    let intruder = node(&ca, "intruder");
    let mut intruder_events = intruder.events();
    intruder.connect(id("server"), server.local_addr().unwrap());
    let refused = event(&mut server_events, "policy refusal", |e| {
        matches!(e, Event::Rejected { .. })
    })
    .await;
    assert!(matches!(
        refused,
        Event::Rejected { node: Some(n), reason: RejectReason::Policy, .. } if n == id("intruder")
    ));
    event(&mut intruder_events, "intruder closed by peer", |e| {
        matches!(e, Event::Down { reason: DownReason::Peer { code }, .. } if *code == u64::from(codes::REJECTED))
            || matches!(e, Event::Rejected { reason: RejectReason::RejectedByPeer, .. })
    })
    .await;
    intruder.disconnect(&id("server"));
    assert_eq!(server.counts().peers, 0);
    // Allowed nodes still get in.
    let friend = node(&ca, "friend");
    connect(&friend, &server).await;
}
