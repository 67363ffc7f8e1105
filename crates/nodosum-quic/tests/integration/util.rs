//! Helpers shared by the integration tests.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use nodosum_proto::{AppId, NodeId};
use nodosum_quic::{AppReceiver, Config, DevCa, Event, QuicNode, TlsIdentity};
use tokio::sync::broadcast;

/// Failure guard for anything that should happen "soon": generous so a busy machine
/// never flakes; a healthy run takes milliseconds.
pub(crate) const GUARD: Duration = Duration::from_secs(30);

pub(crate) fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

pub(crate) fn app(s: &str) -> AppId {
    AppId::new(s).unwrap()
}

pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub(crate) fn ca() -> DevCa {
    DevCa::generate("test ca").unwrap()
}

pub(crate) fn other_ca() -> DevCa {
    DevCa::generate("another ca").unwrap()
}

pub(crate) fn node_with(identity: &TlsIdentity, config: Config) -> QuicNode {
    QuicNode::bind(config, identity, None).unwrap()
}

pub(crate) fn node(ca: &DevCa, name: &str) -> QuicNode {
    node_with(&ca.issue(&id(name)).unwrap(), Config::development())
}

/// Polls `cond` until it holds; panics with `what` after [`GUARD`].
pub(crate) async fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    wait_until_dbg(what, cond, String::new).await;
}

/// Like [`wait_until`], adding `state()` to the failure message.
pub(crate) async fn wait_until_dbg(
    what: &str,
    mut cond: impl FnMut() -> bool,
    state: impl Fn() -> String,
) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out: {what} {}",
            state()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(crate) async fn guarded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// The next event matching `pred`.
pub(crate) async fn event(
    rx: &mut broadcast::Receiver<Event>,
    what: &str,
    pred: impl Fn(&Event) -> bool,
) -> Event {
    guarded(what, async {
        loop {
            match rx.recv().await {
                Ok(e) if pred(&e) => return e,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("event stream closed"),
            }
        }
    })
    .await
}

pub(crate) async fn recv(rx: &mut AppReceiver) -> (NodeId, Bytes) {
    guarded("message", rx.recv()).await.expect("receiver open")
}

/// Connects `a` to `b` and waits until both see the connection.
pub(crate) async fn connect(a: &QuicNode, b: &QuicNode) {
    a.connect(b.node_id().clone(), b.local_addr().unwrap());
    let (a2, b2) = (a.clone(), b.clone());
    wait_until("connected", move || {
        a2.connection_info(b2.node_id()).is_some() && b2.connection_info(a2.node_id()).is_some()
    })
    .await;
}

pub(crate) fn seq(i: u32) -> Bytes {
    Bytes::copy_from_slice(&i.to_le_bytes())
}

pub(crate) fn unseq(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().unwrap())
}
