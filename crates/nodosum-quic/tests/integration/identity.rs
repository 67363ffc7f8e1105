//! Replacing a running node's TLS identity: certificate renewal and CA rotation.

use nodosum_quic::{Error, Event, HandshakeKind, QuicNode, RejectReason, TlsError, TlsIdentity};

use crate::util::*;

fn is_up(e: &Event) -> bool {
    matches!(e, Event::Up { .. })
}

fn is_unknown_ca(e: &Event) -> bool {
    matches!(
        e,
        Event::Rejected {
            reason: RejectReason::UnknownCa,
            ..
        }
    )
}

/// `name`'s certificate from `ca`, trusting `ca` and every root of `also`.
fn identity(ca: &nodosum_quic::DevCa, name: &str, also: &[&nodosum_quic::DevCa]) -> TlsIdentity {
    let mut identity = ca.issue(&id(name)).unwrap();
    for other in also {
        let roots = other.issue(&id("x")).unwrap().ca_roots;
        identity.ca_roots.extend(roots);
    }
    identity
}

/// A CA rotation: `alpha` starts with a certificate of the old CA, `beta` already trusts only
/// the new one, `gamma` only the old one and holds a session ticket of `alpha`'s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_identity_serves_new_handshakes_and_spares_open_connections() {
    init_tracing();
    let (old_ca, new_ca) = (ca(), other_ca());
    let alpha = node_with(
        &identity(&old_ca, "alpha", &[]),
        nodosum_quic::Config::development(),
    );
    let beta = node(&new_ca, "beta");
    let gamma = node(&old_ca, "gamma");
    let mut alpha_rx = alpha.register_app(app("chat")).unwrap();
    let mut gamma_rx = gamma.register_app(app("chat")).unwrap();
    let alpha_addr = alpha.local_addr().unwrap();

    // gamma connects under the old identity and gets a session ticket.
    let mut gamma_events = gamma.events();
    connect(&gamma, &alpha).await;
    gamma
        .send(&id("alpha"), &app("chat"), seq(1))
        .await
        .unwrap();
    assert_eq!(unseq(&recv(&mut alpha_rx).await.1), 1);

    // beta does not trust alpha's certificate yet.
    let mut beta_events = beta.events();
    beta.connect(id("alpha"), alpha_addr);
    event(&mut beta_events, "beta refuses the old CA", is_unknown_ca).await;
    beta.disconnect(&id("alpha"));

    // Another node's certificate, or a key that is not the certificate's, is refused and
    // changes nothing.
    let err = alpha
        .set_identity(&identity(&new_ca, "beta", &[&old_ca]))
        .unwrap_err();
    assert!(
        matches!(&err, Error::IdentityChanged { current, found } if *current == id("alpha") && *found == id("beta")),
        "{err:?}"
    );
    let mut mismatched = identity(&new_ca, "alpha", &[&old_ca]);
    mismatched.key = new_ca.issue(&id("alpha")).unwrap().key;
    let err = alpha.set_identity(&mismatched).unwrap_err();
    assert!(matches!(err, Error::Tls(TlsError::Rustls(_))), "{err:?}");
    beta.connect(id("alpha"), alpha_addr);
    event(&mut beta_events, "still the old certificate", is_unknown_ca).await;
    beta.disconnect(&id("alpha"));

    // The renewed certificate comes from the new CA; alpha trusts both CAs meanwhile.
    alpha
        .set_identity(&identity(&new_ca, "alpha", &[&old_ca]))
        .unwrap();
    beta.connect(id("alpha"), alpha_addr);
    let up = event(&mut beta_events, "beta accepts the new CA", is_up).await;
    assert!(
        matches!(up, Event::Up { ref node, kind: HandshakeKind::Full, .. } if *node == id("alpha")),
        "{up:?}"
    );
    beta.send(&id("alpha"), &app("chat"), seq(2)).await.unwrap();
    assert_eq!(unseq(&recv(&mut alpha_rx).await.1), 2);
    // alpha dials out with its new certificate too: delta trusts only the new CA.
    let delta = node(&new_ca, "delta");
    let mut delta_rx = delta.register_app(app("chat")).unwrap();
    alpha.connect(id("delta"), delta.local_addr().unwrap());
    alpha
        .send(&id("delta"), &app("chat"), seq(3))
        .await
        .unwrap();
    assert_eq!(unseq(&recv(&mut delta_rx).await.1), 3);

    // The connection gamma opened under the old identity carries on, both ways.
    gamma
        .send(&id("alpha"), &app("chat"), seq(4))
        .await
        .unwrap();
    assert_eq!(unseq(&recv(&mut alpha_rx).await.1), 4);
    alpha.connect(id("gamma"), gamma.local_addr().unwrap());
    alpha
        .send(&id("gamma"), &app("chat"), seq(5))
        .await
        .unwrap();
    assert_eq!(unseq(&recv(&mut gamma_rx).await.1), 5);

    // gamma's ticket was issued under the old identity: its reconnect does not resume it
    // but verifies the new certificate, which gamma (trusting the old CA only) refuses.
    alpha.disconnect(&id("gamma"));
    event(&mut gamma_events, "gamma's connection closed", |e| {
        matches!(e, Event::Down { .. })
    })
    .await;
    event(&mut gamma_events, "gamma refuses the new CA", is_unknown_ca).await;
    assert!(
        gamma.connection_info(&id("alpha")).is_none(),
        "gamma resumed a session of the old identity"
    );
}

/// Renewing a certificate from the same CA: peers that hold tickets reconnect with a full
/// handshake and go on as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_from_the_same_ca_is_verified_afresh() {
    init_tracing();
    let ca = ca();
    let a: QuicNode = node(&ca, "a");
    let b = node(&ca, "b");
    let mut b_rx = b.register_app(app("chat")).unwrap();
    let mut a_events = a.events();
    a.connect(id("b"), b.local_addr().unwrap());
    event(&mut a_events, "first up", is_up).await;
    a.send(&id("b"), &app("chat"), seq(1)).await.unwrap();
    assert_eq!(unseq(&recv(&mut b_rx).await.1), 1);

    b.set_identity(&ca.issue(&id("b")).unwrap()).unwrap();
    b.disconnect(&id("a"));
    event(&mut a_events, "down", |e| matches!(e, Event::Down { .. })).await;
    let up = event(&mut a_events, "up again", is_up).await;
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
    a.send(&id("b"), &app("chat"), seq(2)).await.unwrap();
    assert_eq!(unseq(&recv(&mut b_rx).await.1), 2);
}
