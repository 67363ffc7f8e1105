//! Nodosum's stream manager (`nodosum_quic::QuicNode`) driven through its public API, with
//! the same certificates, exchanges and stall scenario as the baselines.
//!
//! Two nodes in one process: [`crate::pki::CLIENT_NAME`] dials [`crate::pki::SERVER_NAME`]. The server
//! node runs an `echo` application that sends every message back to its sender and a
//! `data` application that counts messages and answers an empty one with the count, both
//! over Nodosum's own per-application streams.
//!
//! [`NodosumSetup`] measures connection set-up the way an application sees it: from
//! `connect` to the first echoed message, with a fresh client node (full handshake), a
//! client that reconnects with an ordinary application (resumption; its message waits for
//! the handshake), or one that reconnects with a replay-safe application (its message
//! travels as 0-RTT data and the server delivers it before the handshake completes).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use nodosum_proto::{AppId, NodeId};
use nodosum_quic::{
    AppOptions, AppReceiver, Config, Event, HandshakeKind, LaneSender, QuicNode, TlsIdentity,
};
use tokio::task::JoinSet;

use crate::pki::{Identity, Pki};
use crate::stall::{self, StallResult};
use crate::{DATA_APP, ECHO_APP, EXCHANGE_TIMEOUT};

fn tls_identity(pki: &Pki, id: &Identity) -> TlsIdentity {
    TlsIdentity {
        ca_roots: vec![pki.ca.clone()],
        cert_chain: id.chain.clone(),
        key: id.key.clone_key(),
    }
}

fn app(name: &[u8]) -> anyhow::Result<AppId> {
    Ok(AppId::new(String::from_utf8(name.to_vec())?)?)
}

/// Binds both nodes on loopback with `config` and waits until the client is connected.
async fn pair(pki: &Pki, config: &Config) -> anyhow::Result<(QuicNode, QuicNode, NodeId)> {
    let server = QuicNode::bind(config.clone(), &tls_identity(pki, &pki.server), None)?;
    let client = QuicNode::bind(config.clone(), &tls_identity(pki, &pki.client), None)?;
    let server_id = server.node_id().clone();
    connect(&client, server_id.clone(), server.local_addr()?).await?;
    Ok((client, server, server_id))
}

/// Bench configuration: development defaults on 127.0.0.1.
pub fn config() -> Config {
    Config::development()
}

/// An established pair of nodes speaking ping and push.
#[derive(Debug)]
pub struct NodosumLink {
    _client: QuicNode,
    _server: QuicNode,
    /// Cached (peer, application) lanes, as a hot sender keeps them.
    echo: LaneSender,
    data: LaneSender,
    echo_rx: AppReceiver,
    data_rx: AppReceiver,
    /// The payloads pushed so far, as static `Bytes` (see [`NodosumLink::push`]).
    payloads: Vec<Bytes>,
    _tasks: JoinSet<()>,
}

impl NodosumLink {
    /// Starts both nodes, the server's applications, and connects.
    pub async fn start(pki: &Pki) -> anyhow::Result<Self> {
        let (client, server, peer) = pair(pki, &config()).await?;
        let (echo, data) = (app(ECHO_APP)?, app(DATA_APP)?);
        let echo_rx = client.register_app(echo.clone())?;
        let data_rx = client.register_app(data.clone())?;
        let mut tasks = JoinSet::new();
        spawn_echo(&mut tasks, &server, &echo)?;
        let mut server_data = server.register_app(data.clone())?;
        let (node, app_id) = (server.clone(), data.clone());
        tasks.spawn(async move {
            let mut count = 0u64;
            while let Some((from, msg)) = server_data.recv().await {
                if msg.is_empty() {
                    let ack = Bytes::copy_from_slice(&count.to_le_bytes());
                    if node.send(&from, &app_id, ack).await.is_err() {
                        return;
                    }
                } else {
                    count += 1;
                }
            }
        });
        Ok(Self {
            echo: client.sender(&peer, &echo),
            data: client.sender(&peer, &data),
            _client: client,
            _server: server,
            echo_rx,
            data_rx,
            payloads: Vec::new(),
            _tasks: tasks,
        })
    }

    /// Sends `payload` to the server's echo application and waits until it comes back.
    pub async fn ping(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        self.echo.send(Bytes::copy_from_slice(payload)).await?;
        let (_, msg) = self.echo_rx.recv().await.context("echo receiver closed")?;
        ensure!(msg == payload, "bad echo");
        Ok(())
    }

    /// Sends `count` copies of `payload` to the server's data application (the stream
    /// manager batches them), then waits for the acknowledgement that all were received.
    ///
    /// The copies share one static buffer, so that sending one costs no reference
    /// count: the raw QUIC and TCP baselines copy one payload into their write buffer
    /// too, and what the application does to build its messages is measured by neither.
    /// (Clones of one shared `Bytes` would bounce its count between the sending task's
    /// thread and the writer's, about 50 ns a message on this machine.)
    pub async fn push(&mut self, payload: &[u8], count: u64) -> anyhow::Result<()> {
        let msg = match self.payloads.iter().find(|p| p.as_ref() == payload) {
            Some(p) => p.clone(),
            None => {
                // At most one per distinct payload a run pushes (three sizes).
                let leaked: &'static [u8] = Box::leak(payload.to_vec().into_boxed_slice());
                self.payloads.push(Bytes::from_static(leaked));
                Bytes::from_static(leaked)
            }
        };
        for _ in 0..count {
            self.data.send(msg.clone()).await?;
        }
        self.data.send(Bytes::new()).await?;
        let (_, ack) = self.data_rx.recv().await.context("data receiver closed")?;
        ensure!(ack.len() == 8, "bad acknowledgement");
        Ok(())
    }
}

/// Registers the `echo` application on `node`: every message goes back to its sender.
pub fn serve_echo(tasks: &mut JoinSet<()>, node: &QuicNode) -> anyhow::Result<()> {
    spawn_echo(tasks, node, &app(ECHO_APP)?)
}

fn spawn_echo(tasks: &mut JoinSet<()>, node: &QuicNode, echo: &AppId) -> anyhow::Result<()> {
    spawn_echo_with(tasks, node, echo, AppOptions::default())
}

fn spawn_echo_with(
    tasks: &mut JoinSet<()>,
    node: &QuicNode,
    echo: &AppId,
    options: AppOptions,
) -> anyhow::Result<()> {
    let mut rx = node.register_app_with(echo.clone(), options)?;
    let (node, echo) = (node.clone(), echo.clone());
    tasks.spawn(async move {
        let mut reply: Option<LaneSender> = None;
        while let Some((from, msg)) = rx.recv().await {
            let tx = match &mut reply {
                Some(tx) if *tx.node() == from => tx,
                slot => slot.insert(node.sender(&from, &echo)),
            };
            let _ = tx.send(msg).await;
        }
    });
    Ok(())
}

/// Connection set-up through the stream manager: `connect`, one 64 B message to the
/// server's echo application, its echo delivered back.
#[derive(Debug)]
pub struct NodosumSetup {
    pki: Pki,
    server: QuicNode,
    server_id: NodeId,
    addr: SocketAddr,
    echo: AppId,
    /// The reconnecting client of [`NodosumSetup::reconnect`], with its echo receiver.
    client: QuicNode,
    client_rx: AppReceiver,
    /// The server's replay-safe echo application.
    early_echo: AppId,
    /// The reconnecting client of [`NodosumSetup::reconnect_0rtt`] (the same node ID as
    /// `client`, in its own node with its own session tickets; the two never overlap),
    /// with its receiver.
    early_client: QuicNode,
    early_rx: AppReceiver,
    _tasks: JoinSet<()>,
}

/// The replay-safe echo application of the 0-RTT set-up.
const EARLY_ECHO_APP: &str = "echo-0rtt";

impl NodosumSetup {
    /// Starts the server node and a client node that has connected once (so it holds a
    /// session ticket for reconnects).
    pub async fn start(pki: &Pki) -> anyhow::Result<Self> {
        let server = QuicNode::bind(config(), &tls_identity(pki, &pki.server), None)?;
        let echo = app(ECHO_APP)?;
        let mut tasks = JoinSet::new();
        spawn_echo(&mut tasks, &server, &echo)?;
        let early_echo = app(EARLY_ECHO_APP.as_bytes())?;
        spawn_echo_with(&mut tasks, &server, &early_echo, AppOptions::replay_safe())?;
        let client = QuicNode::bind(config(), &tls_identity(pki, &pki.client), None)?;
        let client_rx = client.register_app(echo.clone())?;
        let early_client = QuicNode::bind(config(), &tls_identity(pki, &pki.client), None)?;
        let early_rx =
            early_client.register_app_with(early_echo.clone(), AppOptions::replay_safe())?;
        let mut this = Self {
            pki: pki.clone(),
            server_id: server.node_id().clone(),
            addr: server.local_addr()?,
            server,
            echo,
            client,
            client_rx,
            early_echo,
            early_client,
            early_rx,
            _tasks: tasks,
        };
        this.reconnect().await?;
        this.reconnect_0rtt().await?;
        Ok(this)
    }

    /// A new client node (bound before the clock starts) with no session: a full handshake.
    pub async fn fresh(&self) -> anyhow::Result<Duration> {
        let client = QuicNode::bind(config(), &tls_identity(&self.pki, &self.pki.client), None)?;
        let mut rx = client.register_app(self.echo.clone())?;
        let (elapsed, _) =
            exchange(&client, &mut rx, &self.server_id, self.addr, &self.echo).await?;
        client.close(Duration::from_millis(100)).await;
        self.wait_down().await?;
        Ok(elapsed)
    }

    /// The long-lived client reconnects (resumption, 0-RTT when offered), then disconnects.
    pub async fn reconnect(&mut self) -> anyhow::Result<(Duration, Option<HandshakeKind>)> {
        let result = exchange(
            &self.client,
            &mut self.client_rx,
            &self.server_id,
            self.addr,
            &self.echo,
        )
        .await?;
        self.client.disconnect(&self.server_id);
        self.wait_down().await?;
        Ok(result)
    }

    /// The replay-safe client reconnects (0-RTT: its message is early data), then
    /// disconnects.
    pub async fn reconnect_0rtt(&mut self) -> anyhow::Result<(Duration, Option<HandshakeKind>)> {
        let result = exchange(
            &self.early_client,
            &mut self.early_rx,
            &self.server_id,
            self.addr,
            &self.early_echo,
        )
        .await?;
        self.early_client.disconnect(&self.server_id);
        self.wait_down().await?;
        Ok(result)
    }

    /// Messages the replay-safe client has written as 0-RTT data so far.
    pub fn early_sent(&self) -> u64 {
        self.early_client.early_data().sent
    }

    /// Waits until the server has forgotten the client, so that the next dial is not a
    /// duplicate of a closing connection (nor answered on it). Not just until it has no
    /// connection: the server answers 0-RTT data before its side of the handshake
    /// completed, so it may register a connection only after the client closed it.
    async fn wait_down(&self) -> anyhow::Result<()> {
        tokio::time::timeout(EXCHANGE_TIMEOUT, async {
            while self.server.counts().peers > 0 {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            anyhow::Ok(())
        })
        .await
        .context("server kept the connection")?
    }
}

/// Dials, sends one 64 B message to the echo application and waits for its echo: the time
/// taken and the handshake kind the client reported.
///
/// Untimed afterwards, as for raw quinn: one more echo, so that the server's session
/// tickets (sent once its side of the handshake completes, after a 0.5-RTT answer) reach
/// the client before it disconnects; otherwise a client that reconnects in a loop runs
/// out of tickets and falls back to full handshakes.
async fn exchange(
    client: &QuicNode,
    rx: &mut AppReceiver,
    server_id: &NodeId,
    addr: SocketAddr,
    echo: &AppId,
) -> anyhow::Result<(Duration, Option<HandshakeKind>)> {
    let mut events = client.events();
    let payload = Bytes::from_static(&[7u8; 64]);
    let start = std::time::Instant::now();
    client.connect(server_id.clone(), addr);
    client.send(server_id, echo, payload.clone()).await?;
    let (_, msg) = tokio::time::timeout(EXCHANGE_TIMEOUT, rx.recv())
        .await
        .context("no echo")?
        .context("echo receiver closed")?;
    let elapsed = start.elapsed();
    ensure!(msg == payload, "bad echo");
    client.send(server_id, echo, payload.clone()).await?;
    tokio::time::timeout(EXCHANGE_TIMEOUT, rx.recv())
        .await
        .context("no second echo")?
        .context("echo receiver closed")?;
    // With 0-RTT the echo can arrive before the dialler has announced the connection.
    let kind = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        loop {
            match events.recv().await {
                Ok(Event::Up { kind, .. }) => return Some(kind),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten();
    Ok((elapsed, kind))
}

/// The configuration of the stall and packet-loss scenarios: application receivers hold
/// [`stall::QUEUE`] messages like the baselines' queues.
pub fn stall_config() -> Config {
    let mut config = config();
    config.app_receiver_capacity = stall::QUEUE;
    config
}

/// The receiving applications of the stall and packet-loss scenarios on a node: one
/// counting consumer per application, application 0 parked when stalled.
#[derive(Debug)]
pub struct StallApps {
    counters: Arc<Vec<AtomicU64>>,
    _parked: Option<AppReceiver>,
    _tasks: JoinSet<()>,
}

impl StallApps {
    /// Registers applications `app-0` .. `app-{apps-1}` on `node`.
    pub fn register(node: &QuicNode, apps: usize, stalled: bool) -> anyhow::Result<Self> {
        let counters: Arc<Vec<AtomicU64>> =
            Arc::new((0..apps).map(|_| AtomicU64::new(0)).collect());
        let mut tasks = JoinSet::new();
        let mut parked = None;
        for i in 0..apps {
            let mut rx = node.register_app(app(&stall::app_name(i))?)?;
            if stalled && i == 0 {
                parked = Some(rx);
                continue;
            }
            let counters = counters.clone();
            tasks.spawn(async move {
                while rx.recv().await.is_some() {
                    counters[i].fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        Ok(Self {
            counters,
            _parked: parked,
            _tasks: tasks,
        })
    }

    /// Messages each application has received so far.
    pub fn delivered(&self) -> Vec<u64> {
        self.counters
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

/// Starts one producer per application on `node`, each sending [`stall::MESSAGE`]-byte
/// messages to `peer` as fast as its lane takes them.
pub fn spawn_producers(
    node: &QuicNode,
    peer: &NodeId,
    apps: usize,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let msg = Bytes::from(vec![0xA5; stall::MESSAGE]);
    for i in 0..apps {
        let id = app(&stall::app_name(i))?;
        let (node, peer, msg) = (node.clone(), peer.clone(), msg.clone());
        tasks.spawn(async move { while node.send(&peer, &id, msg.clone()).await.is_ok() {} });
    }
    Ok(())
}

/// Dials `server_id` at `addr` from `client` and waits until the connection is up.
pub async fn connect(client: &QuicNode, server_id: NodeId, addr: SocketAddr) -> anyhow::Result<()> {
    let mut events = client.events();
    client.connect(server_id.clone(), addr);
    tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        loop {
            match events.recv().await {
                Ok(Event::Up { node, .. }) if node == server_id => return Ok(()),
                Ok(Event::Rejected { reason, .. }) => bail!("connection refused: {reason:?}"),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => bail!("event stream ended: {e}"),
            }
        }
    })
    .await
    .context("connecting")?
}

/// The [`TlsIdentity`] of `id` under the benchmark CA.
pub fn identity(pki: &Pki, id: &Identity) -> TlsIdentity {
    tls_identity(pki, id)
}

/// Runs the stall scenario (see [`stall`]) over Nodosum: one stream per application,
/// application receivers holding [`stall::QUEUE`] messages like the baselines' queues.
pub async fn run_stall(
    pki: &Pki,
    apps: usize,
    stalled: bool,
    window: Duration,
) -> anyhow::Result<StallResult> {
    let (client, server, peer) = pair(pki, &stall_config()).await?;
    let receivers = StallApps::register(&server, apps, stalled)?;
    let mut tasks = JoinSet::new();
    spawn_producers(&client, &peer, apps, &mut tasks)?;
    let result = stall::measure(apps, stalled, window, || receivers.delivered()).await;
    drop(tasks);
    drop(receivers);
    client.close(Duration::from_millis(100)).await;
    server.close(Duration::from_millis(100)).await;
    Ok(result)
}
