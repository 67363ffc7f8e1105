//! The QUIC node: one endpoint, connections to peers, one stream per (peer, application).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use bytes::{BufMut as _, Bytes, BytesMut};
use nodosum_proto::{
    AppId, FrameError, Limits, MessageDecoder, NodeId, StreamInit, message_header,
};
use prometheus_client::registry::Registry;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, ReadError, RecvStream, SendStream, VarInt, WriteError};
use tokio::io::AsyncReadExt;
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::{Config, Congestion};
use crate::gate::{Gate, Role};
use crate::inbox::{AppReceiver, Inbox, hosted};
use crate::metrics::{AppLabel, KindLabel, Metrics, PathCounts, ReasonLabel, Traffic};
use crate::queue;
use crate::resolve::{self, Attach, StreamSide};
use crate::tls::{HandshakeTracker, TlsConfigs, TlsError, TlsIdentity, node_id_from_cert};

/// Application error codes used when closing connections and resetting or stopping streams.
pub mod codes {
    /// Connection closed by [`QuicNode::close`](crate::QuicNode::close).
    pub const SHUTDOWN: u32 = 0x00;
    /// Connection closed by [`QuicNode::disconnect`](crate::QuicNode::disconnect).
    pub const DISCONNECT: u32 = 0x01;
    /// Connection closed because the pair has a preferred connection (simultaneous dial).
    pub const DUPLICATE: u32 = 0x02;
    /// The certificate's node ID differs from the node ID that was dialled.
    pub const IDENTITY_MISMATCH: u32 = 0x03;
    /// The acceptance policy refused the peer's node ID (or it is the local ID).
    pub const REJECTED: u32 = 0x04;
    /// Connection closed because its handshake did not complete within
    /// [`Config::handshake_timeout`](crate::Config::handshake_timeout) (sent once the
    /// connection can carry it: by a server, or by a client in its 0-RTT phase).
    pub const HANDSHAKE_TIMEOUT: u32 = 0x05;
    /// Connection closed because the peer connected again while it was established (the
    /// peer restarted, or lost it without this node hearing): the new one replaces it.
    pub const SUPERSEDED: u32 = 0x06;
    /// Stream refused: the application is not registered on the receiving node.
    pub const STREAM_UNKNOWN_APP: u32 = 0x10;
    /// Stream reset: a message exceeded the receiver's size limit.
    pub const STREAM_FRAME_TOO_LARGE: u32 = 0x11;
    /// Stream refused: the first frame was not a valid `StreamInit` in time.
    pub const STREAM_BAD_INIT: u32 = 0x12;
    /// Stream stopped: the application's receiver was dropped.
    pub const STREAM_APP_CLOSED: u32 = 0x13;
    /// Stream reset while shutting down or when its peer went away.
    pub const STREAM_CLOSED: u32 = 0x14;
}

fn code(c: u32) -> VarInt {
    VarInt::from_u32(c)
}

/// How a connection's TLS handshake went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeKind {
    /// Full handshake with certificate verification.
    Full,
    /// Resumed from a session ticket: no certificate exchange, same peer identity.
    Resumed,
    /// Resumed with 0-RTT accepted by the server (dialling side only; see the crate docs
    /// for what is sent early).
    ZeroRtt,
}

impl HandshakeKind {
    fn label(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Resumed => "resumed",
            Self::ZeroRtt => "zero_rtt",
        }
    }
}

/// Why a handshake or an established connection was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectReason {
    /// The peer's certificate does not chain to our CA (or ours not to theirs); this
    /// includes a certificate from a different CA with the same name (bad signature).
    UnknownCa,
    /// A certificate has expired or is not yet valid.
    Expired,
    /// The certificate's node ID is not the dialled one.
    IdentityMismatch,
    /// Another certificate problem (bad usage, no node ID, ...).
    BadCertificate,
    /// The client presented no certificate.
    NoClientCert,
    /// No common ALPN protocol.
    Alpn,
    /// The acceptance policy refused the node ID.
    Policy,
    /// The peer claimed our own node ID.
    SelfConnection,
    /// The peer closed the connection with [`codes::REJECTED`].
    RejectedByPeer,
    /// The handshake timed out.
    Timeout,
    /// Another TLS alert, by number.
    Tls(u8),
    /// Anything else, as text.
    Other(String),
}

impl RejectReason {
    fn label(&self) -> &'static str {
        match self {
            Self::UnknownCa => "unknown_ca",
            Self::Expired => "expired",
            Self::IdentityMismatch => "identity_mismatch",
            Self::BadCertificate => "bad_certificate",
            Self::NoClientCert => "no_client_cert",
            Self::Alpn => "alpn",
            Self::Policy => "policy",
            Self::SelfConnection => "self",
            Self::RejectedByPeer => "rejected_by_peer",
            Self::Timeout => "timeout",
            Self::Tls(_) => "tls",
            Self::Other(_) => "other",
        }
    }
}

/// Why a peer has no connection any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    /// Closed locally with this application code.
    Local {
        /// One of [`codes`].
        code: u64,
    },
    /// Closed by the peer with this application code.
    Peer {
        /// The peer's code (one of [`codes`] for a Nodosum peer).
        code: u64,
    },
    /// No packet within the idle timeout.
    TimedOut,
    /// A transport error, as text.
    Transport(String),
}

/// Something that happened to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer has a connection (it had none).
    Up {
        /// The peer.
        node: NodeId,
        /// Its address.
        addr: SocketAddr,
        /// How the handshake went.
        kind: HandshakeKind,
        /// Whether this node dialled the connection.
        initiated_locally: bool,
    },
    /// The peer lost its last connection.
    Down {
        /// The peer.
        node: NodeId,
        /// Why.
        reason: DownReason,
    },
    /// A handshake failed or a connection was refused after it.
    Rejected {
        /// The peer's node ID, when known (dialled or read from its certificate).
        node: Option<NodeId>,
        /// The remote address.
        addr: SocketAddr,
        /// Why.
        reason: RejectReason,
    },
    /// The peer refused a stream of ours (e.g. unknown application).
    StreamRefused {
        /// The peer.
        node: NodeId,
        /// The application.
        app: AppId,
        /// The peer's stop code, one of [`codes`].
        code: u64,
    },
}

/// Binding the endpoint or registering an application failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid; every problem is listed.
    #[error("invalid configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    /// The TLS identity or configuration is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The socket could not be created or bound.
    #[error("socket error")]
    Io(#[from] io::Error),
    /// Not called inside a tokio runtime.
    #[error("no tokio runtime")]
    NoRuntime,
    /// The application already has a live receiver.
    #[error("application {0} is already registered")]
    AppRegistered(AppId),
    /// The node was closed (or its last handle dropped).
    #[error("the node is closed")]
    Closed,
    /// A new TLS identity names another node than the one this node is.
    #[error("the new certificate is for node {found}, not for this node {current}")]
    IdentityChanged {
        /// This node's ID.
        current: NodeId,
        /// The node ID in the new certificate.
        found: NodeId,
    },
}

/// A message could not be queued or was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The node is neither connected nor to be connected.
    #[error("unknown peer {node}")]
    UnknownPeer {
        /// The peer.
        node: NodeId,
    },
    /// `try_send` only: the (peer, application) queue is full. Nothing was queued.
    #[error("send queue to {node} for {app} is full")]
    QueueFull {
        /// The peer.
        node: NodeId,
        /// The application.
        app: AppId,
    },
    /// The peer was disconnected; queued messages were dropped.
    #[error("peer {node} is gone")]
    PeerGone {
        /// The peer.
        node: NodeId,
    },
    /// The peer has no such application; messages queued for it were dropped. The next
    /// send tries again.
    #[error("peer {node} has no application {app}")]
    UnknownApplication {
        /// The peer.
        node: NodeId,
        /// The application.
        app: AppId,
    },
    /// The payload exceeds the configured message size limit.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The node is shutting down.
    #[error("node is closing")]
    Closed,
}

/// Open connections, streams and peers, for leak checks and dashboards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Established connections (including duplicates being drained).
    pub connections: usize,
    /// Streams not yet closed at both ends (reading, or finishing a handover).
    pub streams: usize,
    /// Peers known (to be connected, or connected).
    pub peers: usize,
    /// (peer, application) send lanes.
    pub lanes: usize,
    /// Outgoing handshakes in progress.
    pub dialing: usize,
}

/// The current connection of a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The peer's address as seen now (follows migration).
    pub remote_addr: SocketAddr,
    /// Whether this node dialled it.
    pub initiated_locally: bool,
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// How its handshake went.
    pub kind: HandshakeKind,
    /// The congestion controller this side sends with ([`Config::congestion`]).
    pub congestion: Congestion,
    /// Its congestion window, in bytes.
    pub cwnd: u64,
    /// Packets sent on it so far.
    pub sent_packets: u64,
    /// Of those, packets declared lost (and their data sent again).
    pub lost_packets: u64,
    /// Times its congestion controller reduced the window (after loss).
    pub congestion_events: u64,
}

/// The controller a connection runs, read back from quinn (every connection gets one of
/// the two factories [`Config::transport`] installs).
fn congestion_of(conn: &quinn::Connection) -> Congestion {
    if conn
        .congestion_state()
        .into_any()
        .is::<quinn::congestion::Bbr>()
    {
        Congestion::Bbr
    } else {
        Congestion::Cubic
    }
}

/// The acceptance policy: may this (CA-verified) node ID connect?
pub type AcceptPolicy = Arc<dyn Fn(&NodeId) -> bool + Send + Sync>;

type AppTx = queue::Sender<(NodeId, Bytes)>;

/// How an application's messages may travel, given to
/// [`QuicNode::register_app_with`]. The default is the safe choice for any application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppOptions {
    /// The application's messages are replay-safe: receiving one of them twice, or once
    /// more on a connection that then fails, does no harm (idempotent messages such as
    /// "my state is X", reads, pings). Only such messages travel as 0-RTT data on a
    /// reconnect and may be delivered before the peer's handshake completes; see the crate
    /// documentation. Default `false`: the application's messages wait for the handshake.
    ///
    /// Both ends decide for themselves: a sender sends 0-RTT data only for an application
    /// it registered as replay-safe, a receiver delivers early data only to an application
    /// it registered as replay-safe (and holds it until the handshake completes otherwise).
    pub replay_safe: bool,
}

impl AppOptions {
    /// Options of a replay-safe application (see [`AppOptions::replay_safe`]).
    pub fn replay_safe() -> Self {
        Self { replay_safe: true }
    }
}

/// What 0-RTT did on this node since it was bound (see the crate documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EarlyData {
    /// Messages this node wrote as 0-RTT data, before its dialled connection's handshake
    /// completed (replay-safe applications only).
    pub sent: u64,
    /// Messages this node wrote as 0.5-RTT data: on a replay-safe stream that arrived on
    /// a connection it accepted, before that connection's handshake completed.
    pub answered_early: u64,
    /// Messages written again on a new stream because the server rejected the 0-RTT data,
    /// or the early stream they were written on (0-RTT or 0.5-RTT) failed or was given up
    /// before its handshake completed.
    pub resent: u64,
    /// Messages delivered to applications of this node before the handshake of the
    /// connection they arrived on completed (received as 0-RTT data; replay-safe
    /// applications only).
    pub delivered: u64,
    /// Streams that arrived before their connection's handshake completed and were held
    /// unread until it did (not replay-safe, or the peer still had a connection or a
    /// stream of the application here).
    pub held: u64,
}

#[derive(Default)]
struct EarlyCounters {
    sent: AtomicU64,
    answered_early: AtomicU64,
    resent: AtomicU64,
    delivered: AtomicU64,
    held: AtomicU64,
}

/// A registered application: where its messages go, and the end of its receiver
/// watcher (dropping the entry ends the watcher, so the receiver sees the end).
struct AppEntry {
    tx: AppTx,
    /// Where the application's stream readers find its receiver.
    inbox: Arc<Inbox>,
    replay_safe: bool,
    _watcher: oneshot::Sender<()>,
}

/// A node's QUIC endpoint and its connections. Cheap to clone.
///
/// Dropping the last clone closes the endpoint; [`close`](Self::close) does it gracefully.
#[derive(Clone)]
pub struct QuicNode {
    inner: Arc<Inner>,
    _guard: Arc<DropGuard>,
}

impl fmt::Debug for QuicNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicNode")
            .field("node_id", &self.inner.local_id)
            .finish_non_exhaustive()
    }
}

struct DropGuard(Arc<Inner>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.shut(codes::SHUTDOWN);
    }
}

struct Inner {
    local_id: NodeId,
    config: Config,
    endpoint: quinn::Endpoint,
    /// Replaced by [`QuicNode::set_identity`]; each dial clones the current one.
    client_config: RwLock<quinn::ClientConfig>,
    /// Tells full from resumed handshakes; kept across identity reloads.
    tracker: Arc<HandshakeTracker>,
    metrics: Metrics,
    state: Mutex<State>,
    apps: RwLock<HashMap<AppId, AppEntry>>,
    policy: RwLock<AcceptPolicy>,
    events: broadcast::Sender<Event>,
    closing: AtomicBool,
    next_conn_id: AtomicU64,
    /// Identifies dial loops (from 1; see `Peer::dial_id`).
    next_dial_id: AtomicU64,
    connections: AtomicUsize,
    streams: AtomicUsize,
    dialing: AtomicUsize,
    early: EarlyCounters,
}

#[derive(Default)]
struct State {
    peers: HashMap<NodeId, Peer>,
}

struct Peer {
    desired: Option<SocketAddr>,
    dialer: Option<Arc<Dialer>>,
    /// Which dial loop is this peer's (`dialer`): an aborted loop may still be in the
    /// middle of a poll, and must neither dial nor register a connection for the peer.
    dial_id: u64,
    conns: Vec<ConnEntry>,
    current: watch::Sender<Option<ConnRef>>,
    /// A dialled connection whose handshake is in progress with 0-RTT keys: the lanes of
    /// replay-safe applications may write on it before it becomes `current`.
    early: watch::Sender<Option<EarlyRef>>,
    lanes: HashMap<AppId, Lane>,
    /// The accepted connection, still in its handshake, whose early streams were handed
    /// to this peer's lanes (see [`Inner::admit_early`]): one at a time.
    admitted: Option<u64>,
}

impl Peer {
    fn new() -> Self {
        Self {
            desired: None,
            dialer: None,
            dial_id: 0,
            conns: Vec::new(),
            current: watch::Sender::new(None),
            early: watch::Sender::new(None),
            lanes: HashMap::new(),
            admitted: None,
        }
    }
}

/// A connection before its handshake completed: the identity it will have once
/// registered (its ID and stream counter), and the connection.
#[derive(Clone)]
struct EarlyRef {
    id: u64,
    conn: quinn::Connection,
    live: Arc<Live>,
}

/// The ID and stream counter of a connection, taken before its handshake completes so
/// that streams opened early count on it.
#[derive(Clone)]
struct Slot {
    id: u64,
    live: Arc<Live>,
}

/// A dial whose handshake is under way (see [`Inner::start_dial`]).
struct Dialled {
    slot: Slot,
    handshake: Handshake,
}

enum Handshake {
    /// Resuming with 0-RTT keys: the connection is usable (and offered to the peer's
    /// replay-safe lanes) until `accepted` says whether the server took the early data.
    Early {
        conn: quinn::Connection,
        accepted: quinn::ZeroRttAccepted,
    },
    /// A full or resumed handshake without early data.
    Connecting(quinn::Connecting),
}

/// The accepting side's decision about a connection whose handshake is in progress,
/// for the streams that arrived before it completed.
#[derive(Clone)]
enum Outcome {
    Pending,
    /// Established and registered: the held streams go to their lanes.
    Ready(ConnRef),
    /// The handshake failed or the peer was refused: the held streams end unread.
    Failed,
}

struct ConnEntry {
    cref: ConnRef,
    loser: bool,
    /// When the connection was established.
    since: std::time::Instant,
}

#[derive(Clone)]
struct ConnRef {
    id: u64,
    conn: quinn::Connection,
    initiated_by_us: bool,
    kind: HandshakeKind,
    live: Arc<Live>,
}

/// Streams alive on one connection, so a duplicate is closed only once drained.
#[derive(Default)]
struct Live {
    count: AtomicUsize,
    /// Streams accepted before the handshake completed and not handed to their lane yet:
    /// a lane waits for them before opening a stream of its own on the connection (the
    /// peer's stream is the one to use).
    unrouted: AtomicUsize,
    changed: Notify,
}

impl Live {
    /// Waits until every stream accepted early was handed to its lane.
    async fn routed(&self) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.unrouted.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Counts a stream accepted before its connection's handshake completed until it is
/// handed to its lane (or ends).
struct Unrouted(Arc<Live>);

impl Unrouted {
    fn new(live: &Arc<Live>) -> Self {
        live.unrouted.fetch_add(1, Ordering::AcqRel);
        Self(live.clone())
    }
}

impl Drop for Unrouted {
    fn drop(&mut self) {
        self.0.unrouted.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

struct Lane {
    tx: queue::Sender<Bytes>,
    ctl: mpsc::UnboundedSender<LaneCtl>,
    shared: Arc<LaneShared>,
    task: JoinHandle<()>,
}

struct LaneShared {
    failure: Mutex<Option<SendError>>,
    gate: Gate,
    /// Set when the application was closed (here or at the peer): the writer resets its
    /// streams and every reader of the lane stops.
    closed: Closed,
    /// Set when the lane leaves its peer's map: a cached [`LaneSender`] looks up afresh.
    detached: AtomicBool,
    /// The current stream while the writer has nothing to do (see `Writer::park`):
    /// senders then write into it themselves, without a hop through the writer task.
    direct: Mutex<Direct>,
    /// Wakes a parked writer: a message was queued, or a direct write left a rest.
    work: Notify,
    /// Frame limits, for the headers of direct writes.
    limits: Limits,
    /// Outgoing message counters of the lane's application.
    traffic: Traffic,
}

/// The stream a parked writer lends to its senders.
#[derive(Default)]
struct Direct {
    send: Option<SendStream>,
    /// The unwritten end of a frame a direct write could only write in part; the writer
    /// writes it before anything else.
    rest: Vec<Bytes>,
    /// When the last direct write happened.
    last: Option<std::time::Instant>,
}

/// A direct write follows the previous one only after this long; messages sent closer
/// together go through the writer, which batches them into large writes (one direct
/// write per message would make quinn send a small packet per message). A lone message,
/// or a request answered after a round trip, goes out directly.
const DIRECT_SPACING: Duration = Duration::from_micros(10);

/// What [`LaneShared::try_direct`] did with a message.
enum DirectWrite {
    /// Written (or its unwritten rest handed to the writer): the message is on its way.
    Written,
    /// Not written at all: queue it.
    Queue(Bytes),
}

impl LaneShared {
    fn new(limits: Limits, traffic: Traffic) -> Self {
        Self {
            failure: Mutex::new(None),
            gate: Gate::default(),
            closed: Closed::default(),
            detached: AtomicBool::new(false),
            direct: Mutex::new(Direct::default()),
            work: Notify::new(),
            limits,
            traffic,
        }
    }

    fn detach(&self) {
        self.detached.store(true, Ordering::Release);
    }

    /// Writes `msg` straight into the lane's stream if the writer parked it there and
    /// nothing is queued before it (a queued message holds a queue slot, and a writer
    /// holding messages it took and has not written yet does not park, so order is
    /// kept). Never waits: a stream without room (flow control) or busy leaves the
    /// message to the queue; a write that fit only in part hands its rest to the writer.
    fn try_direct(&self, tx: &queue::Sender<Bytes>, msg: Bytes) -> DirectWrite {
        let queue_empty = || tx.is_empty();
        if !queue_empty() || self.closed.is_closed() || self.detached.load(Ordering::Acquire) {
            return DirectWrite::Queue(msg);
        }
        let Ok(mut direct) = self.direct.try_lock() else {
            return DirectWrite::Queue(msg);
        };
        let Direct {
            send: Some(send),
            rest,
            last,
        } = &mut *direct
        else {
            return DirectWrite::Queue(msg);
        };
        // Checked again under the lock: the writer takes the stream back before it takes
        // a message from the queue.
        if !rest.is_empty() || !queue_empty() {
            return DirectWrite::Queue(msg);
        }
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < DIRECT_SPACING) {
            return DirectWrite::Queue(msg);
        }
        let Ok(header) = message_header(msg.len(), &self.limits) else {
            return DirectWrite::Queue(msg);
        };
        let len = msg.len();
        let mut chunks = frame_chunks(header, &msg);
        // One poll, never waiting: quinn either takes (part of) the frame now or has no
        // room, in which case the waker is never used (the writer polls with its own).
        let polled = {
            let write = send.write_chunks(&mut chunks);
            let mut write = std::pin::pin!(write);
            write
                .as_mut()
                .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        };
        match polled {
            std::task::Poll::Ready(Ok(_)) => {
                *last = Some(now);
                rest.extend(chunks.into_iter().filter(|c| !c.is_empty()));
                let partial = !rest.is_empty();
                drop(direct);
                if partial {
                    self.work.notify_one();
                }
                self.traffic.add(1, len as u64);
                DirectWrite::Written
            }
            // Stream gone or no room: the writer meets the same on its own write and
            // handles it (refusal, closed application, lost stream).
            std::task::Poll::Ready(Err(_)) | std::task::Poll::Pending => DirectWrite::Queue(msg),
        }
    }
}

/// A one-way "closed" flag that tasks can wait for.
#[derive(Default)]
struct Closed {
    flag: AtomicBool,
    notify: Notify,
}

impl Closed {
    fn close(&self) {
        self.flag.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn is_closed(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }
}

enum LaneCtl {
    Attach(Attached),
    Drain,
}

struct Attached {
    conn: u64,
    reader: u64,
    send: SendStream,
    done: oneshot::Receiver<Done>,
    /// For a replay-safe stream that arrived before its (accepted) connection's handshake
    /// completed: the handshake's outcome.
    handshake: Option<watch::Receiver<Outcome>>,
}

/// The end of a stream's reading half, with the guard that keeps the stream counted until
/// its sending half is finished too.
type Done = (ReadEnd, StreamGuard);

/// How the reading half of a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadEnd {
    /// The peer finished its half after everything was delivered.
    Finished,
    /// The peer reset its half with this code.
    Reset(u64),
    /// We stopped reading with this code (bad frame, no receiver).
    Stopped(u32),
    /// The connection is gone.
    Lost,
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Written only by a whole-value replacement, so never seen half-updated.
    m.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The endpoint's server and client configurations for `identity`.
fn quinn_configs(
    identity: &TlsIdentity,
    config: &Config,
    tracker: &Arc<HandshakeTracker>,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), Error> {
    let tls = TlsConfigs::new(identity, &config.alpn, tracker)?;
    let transport = config.transport();
    let server_crypto = QuicServerConfig::try_from(tls.server).map_err(|e| {
        TlsError::Rustls(rustls::Error::General(format!("no QUIC cipher suite: {e}")))
    })?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server_config.transport_config(transport.clone());
    let client_crypto = QuicClientConfig::try_from(tls.client).map_err(|e| {
        TlsError::Rustls(rustls::Error::General(format!("no QUIC cipher suite: {e}")))
    })?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
    client_config.transport_config(transport);
    Ok((server_config, client_config))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the maps half-updated in a way that
    // matters more than stopping the node, so poisoning is ignored.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl QuicNode {
    /// Binds the endpoint and starts accepting connections. Must run inside a tokio runtime;
    /// use a multi-thread runtime so quinn's endpoint and connection drivers (spawned tasks)
    /// run on worker threads rather than on the caller's `block_on` thread.
    ///
    /// Metrics are registered under `nodosum_quic_*` in `registry` when given.
    pub fn bind(
        config: Config,
        identity: &TlsIdentity,
        registry: Option<&mut Registry>,
    ) -> Result<Self, Error> {
        config.validate().map_err(Error::Config)?;
        let local_id = identity.node_id()?;
        let tracker = Arc::new(HandshakeTracker::default());
        let (server_config, client_config) = quinn_configs(identity, &config, &tracker)?;

        let runtime = quinn::default_runtime().ok_or(Error::NoRuntime)?;
        let socket = udp_socket(&config, config.bind_addr)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server_config),
            socket,
            runtime,
        )?;
        let (events, _) = broadcast::channel(config.event_capacity);
        let inner = Arc::new(Inner {
            local_id,
            metrics: Metrics::new(registry),
            config,
            endpoint,
            client_config: RwLock::new(client_config),
            tracker,
            state: Mutex::new(State::default()),
            apps: RwLock::new(HashMap::new()),
            policy: RwLock::new(Arc::new(|_: &NodeId| true)),
            events,
            closing: AtomicBool::new(false),
            next_conn_id: AtomicU64::new(1),
            next_dial_id: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
            dialing: AtomicUsize::new(0),
            early: EarlyCounters::default(),
        });
        tokio::spawn(accept_loop(inner.clone()));
        info!(node = %inner.local_id, addr = ?inner.endpoint.local_addr().ok(), "quic endpoint bound");
        Ok(Self {
            _guard: Arc::new(DropGuard(inner.clone())),
            inner,
        })
    }

    /// This node's ID (from its certificate).
    pub fn node_id(&self) -> &NodeId {
        &self.inner.local_id
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// Sets the acceptance policy for incoming connections (default: every CA-verified
    /// node). A refused node's connection is closed with [`codes::REJECTED`], counted and
    /// reported as [`Event::Rejected`]. The policy runs on every established incoming
    /// connection, so it must be quick (e.g. a membership lookup).
    pub fn set_accept_policy(&self, policy: impl Fn(&NodeId) -> bool + Send + Sync + 'static) {
        *self
            .inner
            .policy
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(policy);
    }

    /// Replaces this node's TLS identity (CA roots, certificate chain, key), for certificate
    /// renewal and CA rotation without a restart. Handshakes from now on, accepted and
    /// dialled, use the new one; established connections keep the identities they were
    /// authenticated with. Session tickets issued under the old identity are not resumed,
    /// so the next connection to each peer is a full handshake.
    ///
    /// The new certificate must name this node: one for another node ID is refused with
    /// [`Error::IdentityChanged`], as is an unusable identity ([`Error::Tls`]), and the
    /// current identity stays.
    pub fn set_identity(&self, identity: &TlsIdentity) -> Result<(), Error> {
        let found = identity.node_id()?;
        if found != self.inner.local_id {
            return Err(Error::IdentityChanged {
                current: self.inner.local_id.clone(),
                found,
            });
        }
        let (server, client) = quinn_configs(identity, &self.inner.config, &self.inner.tracker)?;
        self.inner.endpoint.set_server_config(Some(server));
        *self
            .inner
            .client_config
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = client;
        info!(node = %self.inner.local_id, "tls identity replaced");
        Ok(())
    }

    /// Subscribes to events. A subscriber that falls more than `event_capacity` events
    /// behind sees `Lagged` and misses the oldest ones.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Registers an application; its messages from every peer arrive on the receiver.
    /// Registering again is allowed once the previous receiver was dropped or the
    /// application was closed with [`close_app`](Self::close_app).
    ///
    /// Dropping the receiver closes the application like `close_app` does (shortly after,
    /// from a background task; call `close_app` to do it at once).
    ///
    /// The application's messages are not replay-safe: they never travel as 0-RTT data
    /// (see [`register_app_with`](Self::register_app_with)).
    pub fn register_app(&self, app: AppId) -> Result<AppReceiver, Error> {
        self.register_app_with(app, AppOptions::default())
    }

    /// Like [`register_app`](Self::register_app), with options: a replay-safe
    /// application's messages travel as 0-RTT data on reconnects (see [`AppOptions`]).
    pub fn register_app_with(&self, app: AppId, options: AppOptions) -> Result<AppReceiver, Error> {
        let (tx, rx) = queue::channel(self.inner.config.app_receiver_capacity, queue::TAKE);
        let inbox = Arc::new(Inbox::default());
        let (unregistered_tx, unregistered) = oneshot::channel();
        let stale = {
            let mut st = lock(&self.inner.state);
            let mut apps = self.inner.write_apps();
            // Checked under the apps lock that `shut` clears them under: a registration
            // is either cleared with the others or refused.
            if self.inner.closing.load(Ordering::Acquire) {
                return Err(Error::Closed);
            }
            if apps.get(&app).is_some_and(|e| !e.tx.is_closed()) {
                return Err(Error::AppRegistered(app));
            }
            // A dropped receiver whose watcher has not run yet: its lanes end now, so the
            // new registration starts with fresh streams.
            let stale = if apps.remove(&app).is_some() {
                take_app_lanes(&mut st, &app)
            } else {
                Vec::new()
            };
            apps.insert(
                app.clone(),
                AppEntry {
                    tx: tx.clone(),
                    inbox: inbox.clone(),
                    replay_safe: options.replay_safe,
                    _watcher: unregistered_tx,
                },
            );
            stale
        };
        close_lanes(stale);
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            tokio::select! {
                () = tx.closed() => {}
                // Closed with `close_app`, or registered again.
                _ = unregistered => return,
            }
            if let Some(inner) = inner.upgrade() {
                inner.close_app(&app, Some(&tx));
            }
        });
        Ok(AppReceiver::new(rx, inbox))
    }

    /// Closes application `app` on this node: it is unregistered (peers' new streams for
    /// it are refused with [`codes::STREAM_UNKNOWN_APP`]), and every stream of it, to
    /// every peer, is reset and stopped with [`codes::STREAM_APP_CLOSED`]. The peers
    /// then end their lanes for it too (resetting their halves, which ends our readers),
    /// so stream and lane counts return to what they were before the application was
    /// used, on both sides. An idle reader is not woken by the close itself (that would
    /// register a waker on every read): it ends on the peer's reset, at its next
    /// message, or with the connection. Other applications and the
    /// connections are not touched.
    ///
    /// Messages still queued for `app` (in either direction) are dropped and counted;
    /// a `send` waiting on a full queue of such a lane gets
    /// [`SendError::UnknownApplication`]. The application can be registered again at
    /// once; sends then open new streams lazily. Closing an unregistered application
    /// ends its send lanes.
    pub fn close_app(&self, app: &AppId) {
        self.inner.close_app(app, None);
    }

    /// Keeps a connection to `node` at `addr`: dials now if there is none, and redials
    /// with backoff whenever it is lost, until [`disconnect`](Self::disconnect). Calling
    /// it again updates the address. The local node ID is ignored.
    ///
    /// The first handshake starts within this call (it never waits for it): with a
    /// session ticket, a replay-safe application's `send` right after it travels as 0-RTT
    /// data (see the [crate docs](crate)).
    pub fn connect(&self, node: NodeId, addr: SocketAddr) {
        if node == self.inner.local_id {
            return;
        }
        let mut st = lock(&self.inner.state);
        // Checked under the lock: `close` sets it before taking the peers' dialers.
        if self.inner.closing.load(Ordering::Acquire) {
            return;
        }
        let peer = st.peers.entry(node.clone()).or_insert_with(Peer::new);
        peer.desired = Some(addr);
        if peer.dialer.as_ref().is_none_or(|d| d.is_finished()) {
            peer.dial_id = self.inner.next_dial_id.fetch_add(1, Ordering::Relaxed);
            // The first attempt starts here rather than in the loop's task: a connection
            // in its 0-RTT phase is then offered before this call returns, so the next
            // `send` of a replay-safe application writes its message as early data at
            // once (see `Inner::lane`), whenever the loop's task gets to run.
            let connected = peer.current.borrow().is_some();
            let first = (!connected).then(|| {
                let dialing = Dialing::new(&self.inner);
                (addr, self.inner.start_dial(peer, &node, addr), dialing)
            });
            let dial = dial_loop(self.inner.clone(), node, peer.dial_id, first);
            let dialer = Dialer::new();
            peer.dialer = Some(dialer.clone());
            drop(st);
            dialer.start(Box::pin(dial));
        }
    }

    /// Forgets `node`: stops redialling, closes its connections with
    /// [`codes::DISCONNECT`], ends its streams; pending and queued sends fail with
    /// [`SendError::PeerGone`].
    pub fn disconnect(&self, node: &NodeId) {
        let peer = lock(&self.inner.state).peers.remove(node);
        if let Some(peer) = peer {
            self.inner.drop_peer(node, peer, codes::DISCONNECT);
        }
    }

    /// Queues `msg` for `app` on `node`, waiting while the queue is full.
    ///
    /// `Ok` means queued: delivery is in order per (peer, application) while the
    /// connection lives; a message written to a connection that then breaks is lost.
    pub async fn send(&self, node: &NodeId, app: &AppId, msg: Bytes) -> Result<(), SendError> {
        let (tx, shared, written) = self.inner.lane(node, app, &msg)?;
        if written {
            return Ok(());
        }
        let msg = match shared.try_direct(&tx, msg) {
            DirectWrite::Written => return Ok(()),
            DirectWrite::Queue(msg) => msg,
        };
        match tx.send(msg).await {
            Ok(first) => {
                if first {
                    shared.work.notify_one();
                }
                Ok(())
            }
            Err(_) => Err(self.inner.lane_failed(node, app, &shared)),
        }
    }

    /// Queues `msg` without waiting; [`SendError::QueueFull`] when the queue is full.
    pub fn try_send(&self, node: &NodeId, app: &AppId, msg: Bytes) -> Result<(), SendError> {
        let (tx, shared, written) = self.inner.lane(node, app, &msg)?;
        if written {
            return Ok(());
        }
        let msg = match shared.try_direct(&tx, msg) {
            DirectWrite::Written => return Ok(()),
            DirectWrite::Queue(msg) => msg,
        };
        match tx.try_send(msg) {
            Ok(first) => {
                if first {
                    shared.work.notify_one();
                }
                Ok(())
            }
            Err(queue::TrySendError::Full(_)) => {
                self.inner.metrics.send_error(app.as_str(), "queue_full", 1);
                Err(SendError::QueueFull {
                    node: node.clone(),
                    app: app.clone(),
                })
            }
            Err(queue::TrySendError::Closed(_)) => Err(self.inner.lane_failed(node, app, &shared)),
        }
    }

    /// A handle on the (`node`, `app`) send lane that skips the per-send lookup of
    /// [`send`](Self::send): it keeps the lane's queue and looks the lane up again only
    /// after the lane ended (peer dropped, application closed, stream refused). The lane
    /// itself survives reconnects and duplicate-connection handovers, so the handle stays
    /// valid across them. Results are those `send` would give at the same moment; the
    /// peer need not be known yet.
    pub fn sender(&self, node: &NodeId, app: &AppId) -> LaneSender {
        LaneSender {
            inner: self.inner.clone(),
            node: node.clone(),
            app: app.clone(),
            lane: None,
        }
    }

    /// What 0-RTT did on this node so far (messages sent early, resent after a
    /// rejection, delivered early; streams held until their handshake completed).
    pub fn early_data(&self) -> EarlyData {
        let e = &self.inner.early;
        EarlyData {
            sent: e.sent.load(Ordering::Relaxed),
            answered_early: e.answered_early.load(Ordering::Relaxed),
            resent: e.resent.load(Ordering::Relaxed),
            delivered: e.delivered.load(Ordering::Relaxed),
            held: e.held.load(Ordering::Relaxed),
        }
    }

    /// Current counts of connections, streams, peers and lanes.
    pub fn counts(&self) -> Counts {
        let st = lock(&self.inner.state);
        Counts {
            connections: self.inner.connections.load(Ordering::Acquire),
            streams: self.inner.streams.load(Ordering::Acquire),
            peers: st.peers.len(),
            lanes: st.peers.values().map(|p| p.lanes.len()).sum(),
            dialing: self.inner.dialing.load(Ordering::Acquire),
        }
    }

    /// The peer's current connection, if any.
    pub fn connection_info(&self, node: &NodeId) -> Option<ConnectionInfo> {
        let st = lock(&self.inner.state);
        let cur = st.peers.get(node)?.current.borrow().clone()?;
        let path = cur.conn.stats().path;
        Some(ConnectionInfo {
            remote_addr: cur.conn.remote_address(),
            initiated_locally: cur.initiated_by_us,
            rtt: cur.conn.rtt(),
            kind: cur.kind,
            congestion: congestion_of(&cur.conn),
            cwnd: path.cwnd,
            sent_packets: path.sent_packets,
            lost_packets: path.lost_packets,
            congestion_events: path.congestion_events,
        })
    }

    /// Moves the endpoint to a new UDP socket bound to `addr` (connection migration:
    /// peers follow the new address, connections stay up).
    pub fn rebind(&self, addr: SocketAddr) -> io::Result<()> {
        let socket = udp_socket(&self.inner.config, addr)?;
        self.inner.endpoint.rebind(socket)
    }

    /// Closes every connection and the endpoint at once, without draining (what dropping
    /// the last handle does): queued messages are dropped, and application receivers end
    /// once they have received what was delivered.
    pub fn close_now(&self) {
        self.inner.shut(codes::SHUTDOWN);
    }

    /// Graceful shutdown: stops accepting sends, lets every stream writer flush its queue
    /// and finish its stream until `deadline`, then closes all connections with
    /// [`codes::SHUTDOWN`] and waits (again at most `deadline`) for the peers to
    /// acknowledge.
    pub async fn close(&self, deadline: Duration) {
        let inner = &self.inner;
        inner.closing.store(true, Ordering::Release);
        let lanes: Vec<Lane> = {
            let mut st = lock(&inner.state);
            st.peers
                .values_mut()
                .flat_map(|p| {
                    if let Some(d) = p.dialer.take() {
                        d.abort();
                    }
                    p.desired = None;
                    p.lanes
                        .drain()
                        .map(|(_, lane)| {
                            lane.shared.detach();
                            lane
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let mut tasks = Vec::with_capacity(lanes.len());
        for lane in lanes {
            let _ = lane.ctl.send(LaneCtl::Drain);
            tasks.push(lane.task);
        }
        let drained = tokio::time::timeout(deadline, async {
            for task in tasks {
                let _ = task.await;
            }
        })
        .await;
        if drained.is_err() {
            warn!("shutdown deadline passed before all streams drained");
        }
        inner.shut(codes::SHUTDOWN);
        let _ = tokio::time::timeout(deadline, inner.endpoint.wait_idle()).await;
    }
}

/// A lane's queue and shared state, as a [`LaneSender`] caches them.
type LaneRef = (queue::Sender<Bytes>, Arc<LaneShared>);

/// A cached sender for one (peer, application), from [`QuicNode::sender`]. Cloning it
/// is cheap; each clone caches the lane on its own.
#[derive(Clone)]
pub struct LaneSender {
    inner: Arc<Inner>,
    node: NodeId,
    app: AppId,
    lane: Option<LaneRef>,
}

impl fmt::Debug for LaneSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LaneSender")
            .field("node", &self.node)
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

impl LaneSender {
    /// The peer.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The application.
    pub fn app(&self) -> &AppId {
        &self.app
    }

    /// The lane's queue, looking it up when none is cached; `None` when a lane created
    /// for `msg` already wrote it (as 0-RTT data, see [`Inner::lane`]).
    fn queue(&mut self, msg: &Bytes) -> Result<Option<&LaneRef>, SendError> {
        let limits = &self.inner.config.limits;
        let len = msg.len();
        if message_header(len, limits).is_err() {
            self.inner
                .metrics
                .send_error(self.app.as_str(), "too_large", 1);
            return Err(SendError::MessageTooLarge {
                len,
                max: limits.max_message_size,
            });
        }
        if self.inner.closing.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        // As for `QuicNode::send`: a lane that left the map (peer dropped, application
        // closed) is replaced; one that ended but is still in it reports why, once.
        if let Some((tx, shared)) = &self.lane {
            if shared.detached.load(Ordering::Acquire) {
                self.lane = None;
            } else if tx.is_closed() {
                return Err(self.failed());
            }
        }
        if self.lane.is_none() {
            let (tx, shared, written) = self.inner.lane(&self.node, &self.app, msg)?;
            self.lane = Some((tx, shared));
            if written {
                return Ok(None);
            }
        }
        Ok(self.lane.as_ref())
    }

    /// The lane ended: report why (as `send` does) and look it up afresh next time.
    fn failed(&mut self) -> SendError {
        match self.lane.take() {
            Some((_, shared)) => self.inner.lane_failed(&self.node, &self.app, &shared),
            None => SendError::PeerGone {
                node: self.node.clone(),
            },
        }
    }

    /// Like [`QuicNode::send`]: queues `msg`, waiting while the queue is full.
    pub async fn send(&mut self, msg: Bytes) -> Result<(), SendError> {
        let Some((tx, shared)) = self.queue(&msg)? else {
            return Ok(());
        };
        let msg = match shared.try_direct(tx, msg) {
            DirectWrite::Written => return Ok(()),
            DirectWrite::Queue(msg) => msg,
        };
        match tx.send(msg).await {
            Ok(first) => {
                if first {
                    shared.work.notify_one();
                }
                Ok(())
            }
            Err(_) => Err(self.failed()),
        }
    }

    /// Like [`QuicNode::try_send`]: [`SendError::QueueFull`] when the queue is full.
    pub fn try_send(&mut self, msg: Bytes) -> Result<(), SendError> {
        let Some((tx, shared)) = self.queue(&msg)? else {
            return Ok(());
        };
        let msg = match shared.try_direct(tx, msg) {
            DirectWrite::Written => return Ok(()),
            DirectWrite::Queue(msg) => msg,
        };
        match tx.try_send(msg) {
            Ok(first) => {
                if first {
                    shared.work.notify_one();
                }
                Ok(())
            }
            Err(queue::TrySendError::Full(_)) => {
                self.inner
                    .metrics
                    .send_error(self.app.as_str(), "queue_full", 1);
                Err(SendError::QueueFull {
                    node: self.node.clone(),
                    app: self.app.clone(),
                })
            }
            Err(queue::TrySendError::Closed(_)) => Err(self.failed()),
        }
    }
}

fn udp_socket(config: &Config, addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = socket.set_send_buffer_size(config.udp_send_buffer) {
        warn!(error = %e, "cannot size UDP send buffer");
    }
    if let Err(e) = socket.set_recv_buffer_size(config.udp_recv_buffer) {
        warn!(error = %e, "cannot size UDP receive buffer");
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    debug!(
        send = socket.send_buffer_size().ok(),
        recv = socket.recv_buffer_size().ok(),
        "UDP socket buffers (the kernel reports twice the requested size, capped by wmem_max/rmem_max)"
    );
    Ok(socket.into())
}

/// Removes the lanes of `app` from every peer.
fn take_app_lanes(st: &mut State, app: &AppId) -> Vec<Lane> {
    st.peers
        .values_mut()
        .filter_map(|p| p.lanes.remove(app))
        .inspect(|l| l.shared.detach())
        .collect()
}

/// Tells the writers and readers of removed lanes that their application is closed.
fn close_lanes(lanes: Vec<Lane>) {
    for lane in lanes {
        lane.shared.closed.close();
        // Dropping the lane drops its queue sender and control channel; the writer sees
        // `closed` first and resets its streams.
    }
}

impl Inner {
    fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// Counts a handshake that failed (dialled for `node`, or incoming) and reports it.
    fn handshake_failed(&self, node: Option<NodeId>, addr: SocketAddr, reason: RejectReason) {
        self.metrics
            .handshake_failures
            .get_or_create(&ReasonLabel {
                reason: reason.label(),
            })
            .inc();
        self.emit(Event::Rejected { node, addr, reason });
    }

    fn write_apps(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<AppId, AppEntry>> {
        self.apps
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Unregisters `app` (only if its sender is still `only` when given) and closes its
    /// lanes. Lock order: state, then apps.
    fn close_app(&self, app: &AppId, only: Option<&AppTx>) {
        let lanes = {
            let mut st = lock(&self.state);
            let mut apps = self.write_apps();
            if let Some(only) = only
                && !apps.get(app).is_some_and(|e| e.tx.same_channel(only))
            {
                return;
            }
            apps.remove(app);
            take_app_lanes(&mut st, app)
        };
        if !lanes.is_empty() {
            debug!(%app, lanes = lanes.len(), "application closed");
        }
        close_lanes(lanes);
    }

    /// Removes the lane whose writer ended on its own, if it is still in the map.
    fn remove_lane(&self, node: &NodeId, app: &AppId, shared: &Arc<LaneShared>) {
        let mut st = lock(&self.state);
        if let Some(peer) = st.peers.get_mut(node)
            && peer
                .lanes
                .get(app)
                .is_some_and(|l| Arc::ptr_eq(&l.shared, shared))
            && let Some(lane) = peer.lanes.remove(app)
        {
            lane.shared.detach();
        }
    }

    fn local_is_smaller(&self, peer: &NodeId) -> bool {
        self.local_id < *peer
    }

    /// Closes everything now (used by `close` after draining and by the drop guard). The
    /// applications' registrations end too, so their receivers return `None` once they
    /// have received what was delivered.
    fn shut(&self, close_code: u32) {
        self.closing.store(true, Ordering::Release);
        let peers: Vec<(NodeId, Peer)> = lock(&self.state).peers.drain().collect();
        for (node, peer) in peers {
            self.drop_peer(&node, peer, close_code);
        }
        self.endpoint.close(code(close_code), b"shutdown");
        let apps = std::mem::take(&mut *self.write_apps());
        drop(apps);
    }

    // Takes the peer by value: dropping its parts is what ends its lanes.
    #[allow(clippy::needless_pass_by_value)]
    fn drop_peer(&self, node: &NodeId, peer: Peer, close_code: u32) {
        let Peer {
            dialer,
            conns,
            current,
            lanes,
            ..
        } = peer;
        if let Some(d) = &dialer {
            d.abort();
        }
        for lane in lanes.values() {
            *lock(&lane.shared.failure) = Some(SendError::PeerGone { node: node.clone() });
            lane.shared.detach();
        }
        // The lanes' senders and the `current` watch go first: a writer woken by the
        // closing connection then sees the peer gone before it could take another
        // message from its queue (which would let a waiting send succeed).
        drop(lanes);
        drop(current);
        let reason: &[u8] = if close_code == codes::SHUTDOWN {
            b"shutdown"
        } else {
            b"disconnect"
        };
        for c in &conns {
            c.cref.conn.close(code(close_code), reason);
        }
    }

    /// The sender of `(node, app)`'s lane, creating the lane if needed. A lane created
    /// here for a replay-safe application while the peer's dialled connection is in its
    /// 0-RTT phase writes `msg` at once as early data (see [`Writer::write_first_early`]);
    /// the flag says whether it did, in which case `msg` is sent and must not be queued.
    fn lane(
        self: &Arc<Self>,
        node: &NodeId,
        app: &AppId,
        msg: &Bytes,
    ) -> Result<(queue::Sender<Bytes>, Arc<LaneShared>, bool), SendError> {
        let max = self.config.limits.max_message_size;
        let len = msg.len();
        if message_header(len, &self.config.limits).is_err() {
            self.metrics.send_error(app.as_str(), "too_large", 1);
            return Err(SendError::MessageTooLarge { len, max });
        }
        if self.closing.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        let mut st = lock(&self.state);
        let Some(peer) = st.peers.get_mut(node) else {
            return Err(SendError::UnknownPeer { node: node.clone() });
        };
        let (lane, written) = self.lane_of(node, peer, app, Some(msg));
        Ok((lane.tx.clone(), lane.shared.clone(), written))
    }

    /// `(node, app)`'s lane, created (with its writer task) if there is none; `first`: the
    /// message a sender is about to send, written early by a new lane if it can (see
    /// [`lane`](Self::lane)).
    fn lane_of<'p>(
        self: &Arc<Self>,
        node: &NodeId,
        peer: &'p mut Peer,
        app: &AppId,
        first: Option<&Bytes>,
    ) -> (&'p Lane, bool) {
        // Looked up first so the common case does not clone the application ID.
        if peer.lanes.contains_key(app) {
            let lane = peer
                .lanes
                .get(app)
                .expect("invariant: the lane was just found under the same lock");
            return (lane, false);
        }
        let (tx, rx) = queue::channel(self.config.send_queue_len, queue::TAKE);
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let traffic = self.metrics.traffic(app.as_str(), "out");
        let shared = Arc::new(LaneShared::new(self.config.limits, traffic.clone()));
        let mut init = BytesMut::new();
        let init_ok = StreamInit::new(app.clone())
            .encode(&self.config.limits, &mut init)
            .is_ok();
        let mut writer = Writer {
            inner: self.clone(),
            peer: node.clone(),
            app: app.clone(),
            rx: LaneQueue::new(rx),
            ctl: ctl_rx,
            current: peer.current.subscribe(),
            early: peer.early.subscribe(),
            early_tried: None,
            handshake: None,
            cur: None,
            init: init.freeze(),
            shared: shared.clone(),
            ctl_open: true,
            retiring: Vec::new(),
            draining: false,
            traffic,
            kept: Replay::default(),
            resend: Replay::default(),
            scratch: BytesMut::new(),
        };
        let written = init_ok && first.is_some_and(|msg| writer.write_first_early(msg));
        let task = tokio::spawn(writer.run(init_ok));
        let lane = peer.lanes.entry(app.clone()).or_insert(Lane {
            tx,
            ctl,
            shared,
            task,
        });
        (lane, written)
    }

    /// The error for a send whose lane is closed; removes a failed lane so the next send
    /// starts afresh.
    fn lane_failed(&self, node: &NodeId, app: &AppId, shared: &Arc<LaneShared>) -> SendError {
        let failure = lock(&shared.failure).clone();
        self.remove_lane(node, app, shared);
        if self.closing.load(Ordering::Acquire) {
            return SendError::Closed;
        }
        failure.unwrap_or(SendError::PeerGone { node: node.clone() })
    }

    fn app_sender(&self, app: &AppId) -> Option<AppTx> {
        self.apps
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(app)
            .filter(|e| !e.tx.is_closed())
            .map(|e| e.tx.clone())
    }

    /// The inbox of registered application `app`, for its stream readers.
    fn app_inbox(&self, app: &AppId) -> Option<Arc<Inbox>> {
        self.apps
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(app)
            .map(|e| e.inbox.clone())
    }

    fn app_replay_safe(&self, app: &AppId) -> bool {
        self.apps
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(app)
            .is_some_and(|e| e.replay_safe && !e.tx.is_closed())
    }

    /// A connection ID and stream counter for a connection about to be established.
    fn slot(&self) -> Slot {
        Slot {
            id: self.next_conn_id.fetch_add(1, Ordering::Relaxed),
            live: Arc::new(Live::default()),
        }
    }

    /// Withdraws the early connection `id` (established, failed or refused).
    fn clear_early(peer: &Peer, id: u64) {
        peer.early.send_if_modified(|e| {
            let ours = e.as_ref().is_some_and(|e| e.id == id);
            if ours {
                *e = None;
            }
            ours
        });
    }

    fn withdraw_early(&self, node: &NodeId, id: u64) {
        if let Some(peer) = lock(&self.state).peers.get(node) {
            Self::clear_early(peer, id);
        }
    }

    /// Whether a stream of `app` that arrived from `node` before its connection's
    /// handshake completed may deliver now: the application is replay-safe, and `node`
    /// has no connection and no stream of `app` here (so nothing the peer sent earlier
    /// can still be waiting to be delivered, and a replayed flight cannot interleave with
    /// a live connection's messages). If so, `node` becomes a known peer, so that the
    /// stream can become its lane's stream and the application's answers leave on it at
    /// once (0.5-RTT); [`early_decided`](Self::early_decided) undoes that if the
    /// handshake fails.
    ///
    /// Only while the handshake (`outcome`) is in progress, checked under the state lock:
    /// a failed handshake is decided before its peer is forgotten under that lock, so a
    /// late admission cannot leave behind a peer that nothing forgets.
    ///
    /// Only for one such connection (`conn`) of a peer at a time: another one's early
    /// streams are held until its handshake completes. So when one fails, the peer it is
    /// forgotten with has no other connection's early streams in its lanes.
    fn admit_early(
        &self,
        node: &NodeId,
        app: &AppId,
        conn: u64,
        outcome: &watch::Receiver<Outcome>,
    ) -> bool {
        let mut st = lock(&self.state);
        if !self.app_replay_safe(app)
            || self.closing.load(Ordering::Acquire)
            || outcome.borrow().is_decided()
        {
            return false;
        }
        let admitted = st.peers.get(node).is_none_or(|p| {
            p.conns.is_empty()
                && p.admitted.is_none_or(|c| c == conn)
                && p.lanes.get(app).is_none_or(|l| l.shared.gate.is_empty())
        });
        if admitted {
            st.peers
                .entry(node.clone())
                .or_insert_with(Peer::new)
                .admitted = Some(conn);
        }
        admitted
    }

    /// The handshake of accepted connection `conn` from `node` is decided (it `failed`,
    /// or the connection is registered). A failure removes `node` if it has no
    /// connection, is not to be connected (as when its last connection closes) and has
    /// no other connection's early streams (see [`admit_early`](Self::admit_early)).
    fn early_decided(&self, node: &NodeId, conn: u64, failed: bool) {
        let mut st = lock(&self.state);
        let Some(p) = st.peers.get_mut(node) else {
            return;
        };
        if p.admitted == Some(conn) {
            p.admitted = None;
        }
        let idle = failed && p.conns.is_empty() && p.desired.is_none() && p.admitted.is_none();
        let peer = if idle { st.peers.remove(node) } else { None };
        drop(st);
        if let Some(peer) = peer {
            self.drop_peer(node, peer, codes::DISCONNECT);
        }
    }

    /// Whether an incoming connection from `node` may be established (and, before its
    /// handshake completes, have replay-safe data delivered).
    fn acceptable(&self, node: &NodeId) -> Result<(), RejectReason> {
        if *node == self.local_id {
            return Err(RejectReason::SelfConnection);
        }
        let policy = self
            .policy
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if policy(node) {
            Ok(())
        } else {
            Err(RejectReason::Policy)
        }
    }

    /// Starts a dial of `node` at `addr` (never waits). With a session ticket that allows
    /// early data, the connection is offered to `peer`'s replay-safe lanes at once, in its
    /// 0-RTT phase: they write as 0-RTT data while the handshake runs (see the crate docs).
    fn start_dial(
        &self,
        peer: &Peer,
        node: &NodeId,
        addr: SocketAddr,
    ) -> Result<Dialled, RejectReason> {
        self.tracker.reset_client(node.as_str());
        let connecting = self
            .endpoint
            .connect_with(read(&self.client_config).clone(), addr, node.as_str())
            .map_err(|e| RejectReason::Other(e.to_string()))?;
        let slot = self.slot();
        let handshake = match connecting.into_0rtt() {
            Ok((conn, accepted)) => {
                // rustls offers a ticket only to the server name it was issued under (the
                // node ID, verified by the full handshake that issued it), and 0-RTT data
                // is encrypted with that session's secret: only that peer can read it.
                debug!(peer = %node, "dialling with 0-RTT keys");
                peer.early.send_replace(Some(EarlyRef {
                    id: slot.id,
                    conn: conn.clone(),
                    live: slot.live.clone(),
                }));
                Handshake::Early { conn, accepted }
            }
            Err(connecting) => Handshake::Connecting(connecting),
        };
        Ok(Dialled { slot, handshake })
    }

    /// Completes a dial started by [`start_dial`](Self::start_dial).
    async fn finish_dial(
        &self,
        peer: &NodeId,
        dialled: Dialled,
    ) -> Result<(quinn::Connection, HandshakeKind, Slot), RejectReason> {
        let Dialled { slot, handshake } = dialled;
        let limit = self.config.handshake_timeout;
        let (conn, zero_rtt) = match handshake {
            Handshake::Early { conn, accepted } => {
                let Ok(accepted) = tokio::time::timeout(limit, accepted).await else {
                    close_timed_out(&conn);
                    self.withdraw_early(peer, slot.id);
                    return Err(RejectReason::Timeout);
                };
                if let Some(e) = conn.close_reason() {
                    self.withdraw_early(peer, slot.id);
                    return Err(classify(&e));
                }
                (conn, accepted)
            }
            // Dropping a handshake in progress abandons its connection.
            Handshake::Connecting(connecting) => {
                match tokio::time::timeout(limit, connecting).await {
                    Ok(connected) => (connected.map_err(|e| classify(&e))?, false),
                    Err(_) => return Err(RejectReason::Timeout),
                }
            }
        };
        let full = self.tracker.take_client(peer.as_str());
        let kind = match (zero_rtt, full) {
            (true, _) => HandshakeKind::ZeroRtt,
            (false, true) => HandshakeKind::Full,
            (false, false) => HandshakeKind::Resumed,
        };
        // The verifier already refused a mismatching certificate; this re-check guards the
        // resumed path, whose identity comes from the original session.
        if peer_id(&conn).as_ref() != Ok(peer) {
            self.withdraw_early(peer, slot.id);
            conn.close(code(codes::IDENTITY_MISMATCH), b"identity mismatch");
            return Err(RejectReason::IdentityMismatch);
        }
        Ok((conn, kind, slot))
    }

    /// Adds an established connection to its peer: one we accepted, or one dialled by
    /// the dial loop `dialled`. Returns `None` if it was closed instead.
    fn register(
        self: &Arc<Self>,
        node: NodeId,
        conn: quinn::Connection,
        dialled: Option<u64>,
        kind: HandshakeKind,
        slot: Slot,
        arrived: Option<std::time::Instant>,
    ) -> Option<ConnRef> {
        let initiated_by_us = dialled.is_some();
        let cref = ConnRef {
            id: slot.id,
            conn,
            initiated_by_us,
            kind,
            live: slot.live,
        };
        let local_is_smaller = self.local_is_smaller(&node);
        let mut superseded = Vec::new();
        let losers = {
            let mut st = lock(&self.state);
            if self.closing.load(Ordering::Acquire) {
                cref.conn.close(code(codes::SHUTDOWN), b"shutdown");
                return None;
            }
            // A dial whose peer was disconnected meanwhile: `disconnect` aborts the dial
            // loop, but an abort does not stop a poll already under way, which can finish
            // the handshake and get here, also after the peer was connected again (with a
            // dial loop of its own). Kept, the connection would outlive its peer entry, or
            // join the new one behind its dial loop's back.
            if let Some(dial) = dialled
                && !dialling(&st, &node, dial)
            {
                drop(st);
                debug!(peer = %node, id = cref.id, "dialled peer was disconnected, closing");
                cref.conn.close(code(codes::DISCONNECT), b"disconnect");
                return None;
            }
            let peer = st.peers.entry(node.clone()).or_insert_with(Peer::new);
            let was_down = peer.current.borrow().is_none();
            // A peer dials only while it has no connection to this node, or in a
            // simultaneous dial: one it started before it had completed its side of our
            // connection's handshake, which takes it at most `handshake_timeout` after
            // ours completed. So a connection of the peer's whose first packet (`arrived`)
            // came later than that after an established one means the peer has lost that
            // one (it restarted, or closed it and the close never arrived): it is replaced
            // now, instead of being preferred until its idle timeout, with every message
            // sent into it lost. (This assumes the peer's `handshake_timeout` is not
            // longer than this node's.)
            if let Some(arrived) = arrived {
                let limit = self.config.handshake_timeout;
                for c in peer
                    .conns
                    .iter_mut()
                    .filter(|c| !c.loser && arrived.saturating_duration_since(c.since) > limit)
                {
                    c.loser = true;
                    superseded.push(c.cref.clone());
                }
            }
            peer.conns.push(ConnEntry {
                cref: cref.clone(),
                loser: false,
                since: std::time::Instant::now(),
            });
            self.connections.fetch_add(1, Ordering::AcqRel);
            self.metrics.connections.inc();
            let losers = recompute(peer, local_is_smaller);
            // After `current`: a lane that finds the early connection withdrawn then finds
            // it current (or knows it lost).
            Self::clear_early(peer, cref.id);
            // Up and Down are sent under the state lock, so that they reach listeners in
            // the order of the state changes: a redial must not announce Up before the
            // closed connection's Down.
            if was_down {
                self.emit(Event::Up {
                    node: node.clone(),
                    addr: cref.conn.remote_address(),
                    kind,
                    initiated_locally: initiated_by_us,
                });
            }
            losers
        };
        self.metrics
            .handshakes
            .get_or_create(&KindLabel { kind: kind.label() })
            .inc();
        debug!(peer = %node, id = cref.id, initiated_by_us, ?kind, "connection established");
        for old in superseded {
            info!(peer = %node, id = old.id, "peer connected again; its older connection is closed");
            old.conn.close(code(codes::SUPERSEDED), b"superseded");
        }
        for loser in losers {
            tokio::spawn(drain_duplicate(self.clone(), node.clone(), loser));
        }
        tokio::spawn(drive_connection(self.clone(), node, cref.clone()));
        Some(cref)
    }
}

/// Picks the peer's current connection and marks the others as duplicates; returns the
/// newly marked duplicates.
fn recompute(peer: &mut Peer, local_is_smaller: bool) -> Vec<ConnRef> {
    let best = peer
        .conns
        .iter()
        .filter(|c| !c.loser)
        .max_by_key(|c| {
            (
                resolve::preferred(c.cref.initiated_by_us, local_is_smaller),
                c.cref.id,
            )
        })
        .map(|c| c.cref.clone());
    let best_id = best.as_ref().map(|c| c.id);
    let mut losers = Vec::new();
    for c in &mut peer.conns {
        if Some(c.cref.id) != best_id && !c.loser {
            c.loser = true;
            losers.push(c.cref.clone());
        }
    }
    if peer.current.borrow().as_ref().map(|c| c.id) != best_id {
        peer.current.send_replace(best);
    }
    losers
}

fn peer_id(conn: &quinn::Connection) -> Result<NodeId, RejectReason> {
    let certs = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or(RejectReason::BadCertificate)?;
    let first = certs.first().ok_or(RejectReason::BadCertificate)?;
    node_id_from_cert(first).map_err(|_| RejectReason::BadCertificate)
}

fn classify(e: &ConnectionError) -> RejectReason {
    let (raw, text) = match e {
        ConnectionError::TransportError(t) => (u64::from(t.code), t.reason.clone()),
        ConnectionError::ConnectionClosed(c) => (
            u64::from(c.error_code),
            String::from_utf8_lossy(&c.reason).into_owned(),
        ),
        ConnectionError::ApplicationClosed(a) => {
            return match u32::try_from(a.error_code.into_inner()) {
                Ok(codes::REJECTED) => RejectReason::RejectedByPeer,
                Ok(codes::IDENTITY_MISMATCH) => RejectReason::IdentityMismatch,
                // The peer gave up waiting for our side of the handshake.
                Ok(codes::HANDSHAKE_TIMEOUT) => RejectReason::Timeout,
                _ => RejectReason::Other(a.to_string()),
            };
        }
        ConnectionError::TimedOut => return RejectReason::Timeout,
        other => return RejectReason::Other(other.to_string()),
    };
    // TLS alerts travel as QUIC CRYPTO_ERROR codes 0x100 + alert (RFC 9001 section 4.8).
    match raw.checked_sub(0x100).and_then(|a| u8::try_from(a).ok()) {
        // unknown_ca, or decrypt_error: a same-named CA with another key signed it.
        Some(48 | 51) => RejectReason::UnknownCa,
        Some(45) => RejectReason::Expired,
        Some(116) => RejectReason::NoClientCert,
        Some(120) => RejectReason::Alpn,
        Some(42..=46) if text.to_ascii_lowercase().contains("mismatch") => {
            RejectReason::IdentityMismatch
        }
        Some(42..=46) => RejectReason::BadCertificate,
        Some(alert) => RejectReason::Tls(alert),
        None => RejectReason::Other(text),
    }
}

fn down_reason(e: &ConnectionError) -> DownReason {
    match e {
        ConnectionError::LocallyClosed => DownReason::Local {
            code: u64::from(codes::SHUTDOWN),
        },
        ConnectionError::ApplicationClosed(a) => DownReason::Peer {
            code: a.error_code.into_inner(),
        },
        ConnectionError::TimedOut => DownReason::TimedOut,
        other => DownReason::Transport(other.to_string()),
    }
}

async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        tokio::spawn(handle_incoming(inner.clone(), incoming));
    }
}

async fn handle_incoming(inner: Arc<Inner>, incoming: quinn::Incoming) {
    let arrived = std::time::Instant::now();
    let addr = incoming.remote_address();
    let failed = |e: &ConnectionError| {
        let reason = classify(e);
        warn!(%addr, ?reason, error = %e, "incoming handshake failed");
        inner.handshake_failed(None, addr, reason);
    };
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(e) => return failed(&e),
    };
    let slot = inner.slot();
    let conn_id = slot.id;
    let limit = inner.config.handshake_timeout;
    // Streams that arrive before the handshake completes (0-RTT data of a resumed
    // session) wait for this decision; see `early_stream`.
    let (outcome, outcome_rx) = watch::channel(Outcome::Pending);
    let mut early_node = None;
    let conn = match connecting.into_0rtt() {
        // Always the case for an accepting endpoint (0.5-RTT).
        Ok((conn, established)) => {
            // A resumed session restores the client's certificate chain from the ticket,
            // so a resuming peer is identified (and checked) before the handshake
            // completes; a full handshake is not, and its streams simply wait.
            if let Ok(node) = peer_id(&conn)
                && inner.acceptable(&node).is_ok()
            {
                tokio::spawn(accept_early(
                    inner.clone(),
                    node.clone(),
                    conn.clone(),
                    slot.clone(),
                    outcome_rx,
                ));
                early_node = Some(node);
            }
            let completed = tokio::time::timeout(limit, established).await.is_ok();
            if !completed {
                close_timed_out(&conn);
            }
            if let Some(e) = conn.close_reason() {
                outcome.send_replace(Outcome::Failed);
                if let Some(node) = &early_node {
                    inner.early_decided(node, conn_id, true);
                }
                return failed(if completed {
                    &e
                } else {
                    &ConnectionError::TimedOut
                });
            }
            conn
        }
        // Dropping a handshake in progress abandons its connection.
        Err(connecting) => match tokio::time::timeout(limit, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return failed(&e),
            Err(_) => return failed(&ConnectionError::TimedOut),
        },
    };
    let refuse = |node: Option<NodeId>, reason: RejectReason, close: u32| {
        warn!(%addr, ?node, ?reason, "incoming connection refused");
        outcome.send_replace(Outcome::Failed);
        if let Some(node) = &early_node {
            inner.early_decided(node, conn_id, true);
        }
        conn.close(code(close), reason.label().as_bytes());
        inner
            .metrics
            .rejected
            .get_or_create(&ReasonLabel {
                reason: reason.label(),
            })
            .inc();
        inner.emit(Event::Rejected { node, addr, reason });
    };
    let node = match peer_id(&conn) {
        Ok(node) => node,
        Err(reason) => return refuse(None, reason, codes::IDENTITY_MISMATCH),
    };
    if let Err(reason) = inner.acceptable(&node) {
        return refuse(Some(node), reason, codes::REJECTED);
    }
    if let Some(early) = early_node.as_ref().filter(|n| **n != node) {
        // Cannot happen with one session; never hand a stream to another peer's lane.
        outcome.send_replace(Outcome::Failed);
        inner.early_decided(early, conn_id, true);
    }
    let kind = if inner.tracker.take_server(node.as_str()) {
        HandshakeKind::Full
    } else {
        HandshakeKind::Resumed
    };
    let registered = inner.register(node.clone(), conn, None, kind, slot, Some(arrived));
    if registered.is_none() {
        outcome.send_replace(Outcome::Failed);
    }
    if let Some(cref) = &registered {
        outcome.send_if_modified(|o| {
            let pending = matches!(o, Outcome::Pending);
            if pending {
                *o = Outcome::Ready(cref.clone());
            }
            pending
        });
    }
    if early_node.is_some() || registered.is_none() {
        inner.early_decided(&node, conn_id, registered.is_none());
    }
}

/// Accepts the streams of an incoming connection until its handshake is decided (then
/// `drive_connection` accepts them, or the connection is gone).
async fn accept_early(
    inner: Arc<Inner>,
    node: NodeId,
    conn: quinn::Connection,
    slot: Slot,
    outcome: watch::Receiver<Outcome>,
) {
    let mut decided = outcome.clone();
    loop {
        tokio::select! {
            biased;
            _ = decided.wait_for(Outcome::is_decided) => return,
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    tokio::spawn(early_stream(
                        inner.clone(),
                        (node.clone(), conn.clone(), slot.clone()),
                        (StreamGuard::new(&inner, &slot.live), Unrouted::new(&slot.live)),
                        outcome.clone(),
                        send,
                        recv,
                    ));
                }
                Err(_) => return,
            },
        }
    }
}

/// A stream that arrived before its connection's handshake completed. A replay-safe
/// application's stream goes to its lane at once when nothing of the peer's for that
/// application is in flight here (see [`Inner::admit_early`]): its messages are delivered
/// as they arrive, and the lane answers on it as 0.5-RTT data. Anything else is held
/// unread until the handshake completes, and then goes to its lane like any other stream;
/// if the handshake never completes (a replayed flight, a refused peer), it ends with the
/// connection and nothing held is delivered.
async fn early_stream(
    inner: Arc<Inner>,
    (node, conn, slot): (NodeId, quinn::Connection, Slot),
    (guard, unrouted): (StreamGuard, Unrouted),
    mut outcome: watch::Receiver<Outcome>,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let Some((app, buf)) = read_init(&inner, &node, &mut send, &mut recv).await else {
        return;
    };
    let decided = outcome.borrow().is_decided();
    let (cref, handshake) = if !decided && inner.admit_early(&node, &app, slot.id, &outcome) {
        // The identity the connection will have once registered.
        let cref = ConnRef {
            id: slot.id,
            conn,
            initiated_by_us: false,
            kind: HandshakeKind::Resumed,
            live: slot.live,
        };
        (cref, Some(outcome))
    } else {
        if !decided {
            inner.early.held.fetch_add(1, Ordering::Relaxed);
            debug!(peer = %node, %app, "stream held until the handshake completes");
        }
        let decision = outcome
            .wait_for(Outcome::is_decided)
            .await
            .map(|o| o.clone());
        let Ok(Outcome::Ready(cref)) = decision else {
            let _ = recv.stop(code(codes::STREAM_CLOSED));
            let _ = send.reset(code(codes::STREAM_CLOSED));
            return;
        };
        (cref, None)
    };
    let guards = (guard, Some(unrouted));
    route_stream(inner, node, cref, send, recv, app, buf, guards, handshake).await;
}

impl Outcome {
    fn is_decided(&self) -> bool {
        !matches!(self, Self::Pending)
    }
}

/// Gives up a connection whose handshake outlived `Config::handshake_timeout`.
fn close_timed_out(conn: &quinn::Connection) {
    conn.close(code(codes::HANDSHAKE_TIMEOUT), b"handshake timeout");
}

/// Whether the handshake `outcome` watches is still in progress (an outcome whose sender
/// is gone is decided: the connection's task ended).
fn in_handshake(outcome: &watch::Receiver<Outcome>) -> bool {
    !outcome.borrow().is_decided() && outcome.has_changed().is_ok()
}

/// A peer's dial loop. `connect` polls it once itself and spawns it as a task only when
/// it is first woken (by its handshake, its timer, or whatever else it waits on). So
/// `connect` makes no task runnable but quinn's connection driver, and nothing wakes an
/// idle worker before the caller's first `send` has written its 0-RTT data. A second
/// runnable task would wake one to steal the driver: on a small machine that stalls the
/// caller for up to a millisecond while the other worker runs the handshake, and the
/// first message then leaves as 1-RTT data.
///
/// The loop is never dropped inside a wake-up. quinn wakes it while holding its
/// connection's lock, and a runtime that is shutting down drops a task it is asked to
/// spawn at once: had that task owned the loop, dropping the loop's connection handle
/// would take the same lock again. So the task spawned on the first wake-up owns only
/// the dialer, and takes the loop out of `handoff` when it first runs; a loop it never
/// took is dropped by [`abort`](Self::abort) (every peer that gives up its dialer
/// aborts it) or with the dialer.
struct Dialer {
    stage: Mutex<DialStage>,
    /// The loop between its first wake-up and its task's first poll.
    handoff: Mutex<Option<DialFuture>>,
    runtime: tokio::runtime::Handle,
}

type DialFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

enum DialStage {
    /// Polled once, waiting for its waker.
    Parked(DialFuture),
    /// Being polled by `connect`; `woken` if its waker fired meanwhile.
    Polling { woken: bool },
    /// In `handoff`, its task being spawned (never under this lock).
    Spawning,
    /// Running as a task.
    Task(JoinHandle<()>),
    /// Finished (or panicked) within its first poll, or aborted before it became a task.
    Ended,
}

impl Dialer {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            stage: Mutex::new(DialStage::Polling { woken: false }),
            handoff: Mutex::new(None),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Polls `dial` once (never under the state lock: the loop may take it), then parks
    /// it until its waker fires, or spawns it at once if the waker fired meanwhile. A
    /// panic stays here, as it would in a task: the dialer ends, and the next `connect`
    /// starts a new loop.
    fn start(self: &Arc<Self>, mut dial: DialFuture) {
        if matches!(*lock(&self.stage), DialStage::Ended) {
            return;
        }
        let waker = std::task::Waker::from(self.clone());
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            dial.as_mut()
                .poll(&mut std::task::Context::from_waker(&waker))
        }));
        let mut stage = lock(&self.stage);
        match (std::mem::replace(&mut *stage, DialStage::Ended), polled) {
            (DialStage::Polling { woken: false }, Ok(std::task::Poll::Pending)) => {
                *stage = DialStage::Parked(dial);
                return;
            }
            (DialStage::Polling { woken: true }, Ok(std::task::Poll::Pending)) => {
                *stage = DialStage::Spawning;
            }
            (_, Err(_)) => {
                warn!("dial loop panicked");
                return;
            }
            // Finished, or aborted meanwhile: `dial` is dropped after the lock.
            _ => return,
        }
        drop(stage);
        self.spawn(dial);
    }

    /// Hands `dial` (the stage is `Spawning`) to a new task. If the dialer was aborted
    /// meanwhile (possibly before `dial` was in `handoff` for `abort` to take), the task
    /// takes it and drops it instead of running it.
    fn spawn(self: &Arc<Self>, dial: DialFuture) {
        *lock(&self.handoff) = Some(dial);
        let this = self.clone();
        let task = self.runtime.spawn(async move {
            let dial = lock(&this.handoff).take();
            let aborted = matches!(*lock(&this.stage), DialStage::Ended);
            drop(this);
            if let Some(dial) = dial
                && !aborted
            {
                dial.await;
            }
        });
        let mut stage = lock(&self.stage);
        if matches!(*stage, DialStage::Spawning) {
            *stage = DialStage::Task(task);
        }
    }

    fn abort(&self) {
        let parked = match std::mem::replace(&mut *lock(&self.stage), DialStage::Ended) {
            DialStage::Task(task) => {
                task.abort();
                None
            }
            DialStage::Parked(dial) => Some(dial),
            DialStage::Polling { .. } | DialStage::Spawning | DialStage::Ended => None,
        };
        let handed = lock(&self.handoff).take();
        // Dropped outside the locks: it ends the dial (its connection and counting
        // guard), which may wake it.
        drop((parked, handed));
    }

    fn is_finished(&self) -> bool {
        match &*lock(&self.stage) {
            DialStage::Task(task) => task.is_finished(),
            DialStage::Ended => true,
            DialStage::Parked(_) | DialStage::Polling { .. } | DialStage::Spawning => false,
        }
    }
}

impl std::task::Wake for Dialer {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let dial = {
            let mut stage = lock(&self.stage);
            match std::mem::replace(&mut *stage, DialStage::Ended) {
                DialStage::Parked(dial) => {
                    *stage = DialStage::Spawning;
                    dial
                }
                DialStage::Polling { .. } => {
                    *stage = DialStage::Polling { woken: true };
                    return;
                }
                other => {
                    *stage = other;
                    return;
                }
            }
        };
        self.spawn(dial);
    }
}

/// Counts a dial in progress while it lives: also when the dialler is aborted
/// mid-handshake, or before its task first ran (a dial started by `connect`).
struct Dialing(Arc<Inner>);

impl Dialing {
    fn new(inner: &Arc<Inner>) -> Self {
        inner.dialing.fetch_add(1, Ordering::AcqRel);
        Self(inner.clone())
    }
}

impl Drop for Dialing {
    fn drop(&mut self) {
        self.0.dialing.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether dial loop `dial` is still the one of `node`, which is still to be connected.
fn dialling(st: &State, node: &NodeId, dial: u64) -> bool {
    st.peers
        .get(node)
        .is_some_and(|p| p.dial_id == dial && p.desired.is_some())
}

/// Dials `node` while it is to be connected and has no connection, with backoff after
/// failures. `first`: the first attempt, already started by [`QuicNode::connect`] (and
/// counted in `dialing`).
async fn dial_loop(
    inner: Arc<Inner>,
    node: NodeId,
    dial: u64,
    mut first: Option<(SocketAddr, Result<Dialled, RejectReason>, Dialing)>,
) {
    let mut backoff = inner.config.reconnect_initial_backoff;
    loop {
        let (addr, started, dialing) = match first.take() {
            Some(started) => started,
            None => {
                if inner.closing.load(Ordering::Acquire) {
                    return;
                }
                let mut current = {
                    let st = lock(&inner.state);
                    if !dialling(&st, &node, dial) {
                        return;
                    }
                    let Some(peer) = st.peers.get(&node) else {
                        return;
                    };
                    if peer.desired.is_none() {
                        return;
                    }
                    peer.current.subscribe()
                };
                if current.borrow_and_update().is_some() {
                    if current.wait_for(Option::is_none).await.is_err() {
                        return;
                    }
                    continue;
                }
                let st = lock(&inner.state);
                let peer = st.peers.get(&node).filter(|_| dialling(&st, &node, dial));
                let Some((peer, addr)) = peer.and_then(|p| Some((p, p.desired?))) else {
                    return;
                };
                let dialing = Dialing::new(&inner);
                (addr, inner.start_dial(peer, &node, addr), dialing)
            }
        };
        let result = match started {
            Ok(dialled) => inner.finish_dial(&node, dialled).await,
            Err(reason) => Err(reason),
        };
        match result {
            Ok((conn, kind, slot)) => {
                backoff = inner.config.reconnect_initial_backoff;
                let registered = inner.register(node.clone(), conn, Some(dial), kind, slot, None);
                drop(dialing);
                if registered.is_none() {
                    return;
                }
            }
            Err(reason) => {
                drop(dialing);
                warn!(peer = %node, %addr, ?reason, "dial failed");
                inner.handshake_failed(Some(node.clone()), addr, reason);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(inner.config.reconnect_max_backoff);
            }
        }
    }
}

/// Runs an established connection: accepts its streams, samples its RTT and path
/// counters and removes it from its peer when it closes.
async fn drive_connection(inner: Arc<Inner>, node: NodeId, cref: ConnRef) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut counted = PathCounts::default();
    let reason = loop {
        tokio::select! {
            accepted = cref.conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    tokio::spawn(accept_stream(inner.clone(), node.clone(), cref.clone(), send, recv));
                }
                Err(e) => break e,
            },
            _ = tick.tick() => {
                inner.metrics.rtt.observe(cref.conn.rtt().as_secs_f64());
                counted = inner.metrics.path(counted, &cref.conn.stats().path);
            }
        }
    };
    // quinn keeps a closed connection's statistics: the last packets are counted too.
    inner.metrics.path(counted, &cref.conn.stats().path);
    debug!(peer = %node, id = cref.id, %reason, "connection closed");
    inner.connections.fetch_sub(1, Ordering::AcqRel);
    inner.metrics.connections.dec();
    let mut st = lock(&inner.state);
    let Some(peer) = st.peers.get_mut(&node) else {
        return;
    };
    let was_up = peer.current.borrow().is_some();
    peer.conns.retain(|c| c.cref.id != cref.id);
    let losers = recompute(peer, inner.local_is_smaller(&node));
    debug_assert!(losers.is_empty(), "survivors were already ranked");
    if was_up && peer.current.borrow().is_none() {
        // Under the state lock, before a redial can register (see `register`).
        inner.emit(Event::Down {
            node: node.clone(),
            reason: down_reason(&reason),
        });
    }
    if peer.conns.is_empty() && peer.desired.is_none() {
        let peer = st.peers.remove(&node);
        drop(st);
        if let Some(peer) = peer {
            inner.drop_peer(&node, peer, codes::DISCONNECT);
        }
    }
}

/// Closes a duplicate connection once it carries no stream. The node with the larger ID
/// (which dialled it) closes it: it gives streams up last, after reading the smaller
/// node's end (see `Writer::abandon`), and counts each until its own end is acknowledged;
/// data that arrived stays readable at the smaller node after the close. The smaller
/// node waits for that, up to `duplicate_linger`.
async fn drain_duplicate(inner: Arc<Inner>, node: NodeId, cref: ConnRef) {
    debug!(peer = %node, id = cref.id, "duplicate connection, draining");
    if inner.local_is_smaller(&node) {
        tokio::select! {
            _ = cref.conn.closed() => {}
            _ = tokio::time::sleep(inner.config.duplicate_linger) => {
                cref.conn.close(code(codes::DUPLICATE), b"duplicate connection");
            }
        }
        return;
    }
    loop {
        let notified = cref.live.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if cref.live.count.load(Ordering::Acquire) == 0 {
            // Let stream data already in flight arrive (like QUIC's own 3 PTO closing
            // period) before deciding the duplicate is empty.
            let grace = (cref.conn.rtt() * 3).max(Duration::from_millis(5));
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = cref.conn.closed() => return,
            }
            if cref.live.count.load(Ordering::Acquire) == 0 {
                break;
            }
            continue;
        }
        tokio::select! {
            _ = notified => {}
            _ = cref.conn.closed() => return,
        }
    }
    cref.conn
        .close(code(codes::DUPLICATE), b"duplicate connection");
}

/// A reader's place in its lane's delivery [`Gate`]; leaves it when dropped.
struct ReaderSlot {
    shared: Arc<LaneShared>,
    id: u64,
}

impl ReaderSlot {
    fn new(shared: Arc<LaneShared>, role: Role) -> Self {
        let id = shared.gate.register(role);
        Self { shared, id }
    }
}

impl Drop for ReaderSlot {
    fn drop(&mut self) {
        self.shared.gate.remove(self.id);
    }
}

/// Counts a stream while its reader runs.
struct StreamGuard {
    inner: Arc<Inner>,
    live: Arc<Live>,
    app: Option<AppId>,
}

impl StreamGuard {
    fn new(inner: &Arc<Inner>, live: &Arc<Live>) -> Self {
        inner.streams.fetch_add(1, Ordering::AcqRel);
        live.count.fetch_add(1, Ordering::AcqRel);
        Self {
            inner: inner.clone(),
            live: live.clone(),
            app: None,
        }
    }

    fn set_app(&mut self, app: &AppId) {
        self.inner
            .metrics
            .streams
            .get_or_create(&AppLabel {
                app: app.as_str().to_owned(),
            })
            .inc();
        self.app = Some(app.clone());
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(app) = &self.app {
            self.inner
                .metrics
                .streams
                .get_or_create(&AppLabel {
                    app: app.as_str().to_owned(),
                })
                .dec();
        }
        self.inner.streams.fetch_sub(1, Ordering::AcqRel);
        self.live.count.fetch_sub(1, Ordering::AcqRel);
        self.live.changed.notify_waiters();
    }
}

/// Reads the `StreamInit` of a peer-opened stream and hands the stream to its lane.
async fn accept_stream(
    inner: Arc<Inner>,
    node: NodeId,
    cref: ConnRef,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let guard = StreamGuard::new(&inner, &cref.live);
    let Some((app, buf)) = read_init(&inner, &node, &mut send, &mut recv).await else {
        return;
    };
    route_stream(inner, node, cref, send, recv, app, buf, (guard, None), None).await;
}

/// Reads a peer-opened stream's `StreamInit`: its application and what followed it.
/// `None` when the stream ended or was refused (already handled).
async fn read_init(
    inner: &Inner,
    node: &NodeId,
    send: &mut SendStream,
    recv: &mut RecvStream,
) -> Option<(AppId, BytesMut)> {
    let limits = inner.config.limits;
    let mut buf = BytesMut::new();
    let init = tokio::time::timeout(inner.config.stream_init_timeout, async {
        loop {
            match StreamInit::decode(&mut buf, &limits) {
                Ok(Some(init)) => return Ok(init),
                Ok(None) => {}
                Err(e) => return Err(Some(e)),
            }
            match recv
                .read_chunk(StreamInit::HEADER_LEN + limits.max_app_id_len, true)
                .await
            {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                Ok(None) | Err(_) => return Err(None),
            }
        }
    })
    .await;
    match init {
        Ok(Ok(init)) => Some((init.app_id, buf)),
        // Finished (or lost) before its first frame: a stream given up before use.
        Ok(Err(None)) => {
            let _ = send.finish();
            None
        }
        Ok(Err(Some(e))) => {
            warn!(peer = %node, error = %e, "bad stream init");
            inner.metrics.stream_error("bad_init");
            let _ = recv.stop(code(codes::STREAM_BAD_INIT));
            let _ = send.reset(code(codes::STREAM_BAD_INIT));
            None
        }
        Err(_) => {
            warn!(peer = %node, "stream init timed out");
            inner.metrics.stream_error("init_timeout");
            let _ = recv.stop(code(codes::STREAM_BAD_INIT));
            let _ = send.reset(code(codes::STREAM_BAD_INIT));
            None
        }
    }
}

/// Hands a peer-opened stream of `app` to its lane and reads it: a stream on an
/// established connection, or (with the `handshake` outcome) a replay-safe stream
/// admitted before its connection's handshake completed.
#[allow(clippy::too_many_arguments)] // The parts of one accepted stream.
async fn route_stream(
    inner: Arc<Inner>,
    node: NodeId,
    cref: ConnRef,
    mut send: SendStream,
    mut recv: RecvStream,
    app: AppId,
    buf: BytesMut,
    (mut guard, unrouted): (StreamGuard, Option<Unrouted>),
    handshake: Option<watch::Receiver<Outcome>>,
) {
    // Checked under the state lock (as `close_app` removes it) so that a stream accepted
    // while its application closes cannot create a lane behind `close_app`'s back.
    let lane = {
        let mut st = lock(&inner.state);
        if inner.app_sender(&app).is_none() {
            None
        } else {
            Some(st.peers.get_mut(&node).map(|peer| {
                let (lane, _) = inner.lane_of(&node, peer, &app, None);
                (lane.ctl.clone(), lane.shared.clone())
            }))
        }
    };
    let Some(lane) = lane else {
        warn!(peer = %node, %app, "stream for unknown application refused");
        inner.metrics.stream_error("unknown_app");
        let _ = recv.stop(code(codes::STREAM_UNKNOWN_APP));
        let _ = send.reset(code(codes::STREAM_UNKNOWN_APP));
        return;
    };
    guard.set_app(&app);
    let Some((ctl, shared)) = lane else {
        let _ = recv.stop(code(codes::STREAM_CLOSED));
        let _ = send.reset(code(codes::STREAM_CLOSED));
        return;
    };
    let (done_tx, done_rx) = oneshot::channel();
    let reader = ReaderSlot::new(shared, Role::Pending);
    let attached = Attached {
        conn: cref.id,
        reader: reader.id,
        send,
        done: done_rx,
        handshake: handshake.clone(),
    };
    if let Err(mpsc::error::SendError(LaneCtl::Attach(mut a))) = ctl.send(LaneCtl::Attach(attached))
    {
        // The writer ended: the application was closed, or the peer is going away.
        let c = if reader.shared.closed.is_closed() {
            codes::STREAM_APP_CLOSED
        } else {
            codes::STREAM_CLOSED
        };
        let _ = a.send.reset(code(c));
        let _ = recv.stop(code(c));
        return;
    }
    // Queued before the writer can look at it: it adopts this stream.
    drop(unrouted);
    let inbox = inner.app_inbox(&app);
    let reader = read_stream(
        inner,
        cref.conn.clone(),
        node,
        app,
        recv,
        buf,
        done_tx,
        (guard, reader, handshake),
    );
    hosted(inbox, reader).await;
}

/// Delivers a stream's messages to its application, in order, until the stream ends.
/// Messages delivered while `handshake` (a stream admitted before its connection's
/// handshake completed) is in progress are counted as delivered early.
#[allow(clippy::too_many_arguments)] // One call site per stream origin; a struct adds nothing.
async fn read_stream(
    inner: Arc<Inner>,
    conn: quinn::Connection,
    node: NodeId,
    app: AppId,
    mut recv: RecvStream,
    mut buf: BytesMut,
    done: oneshot::Sender<Done>,
    (guard, reader, mut handshake): (StreamGuard, ReaderSlot, Option<watch::Receiver<Outcome>>),
) {
    let decoder = MessageDecoder::new(&inner.config.limits);
    let traffic = inner.metrics.traffic(app.as_str(), "in");
    let mut app_tx: Option<AppTx> = None;
    // Messages and bytes delivered since the counters were last updated (once per read).
    let (mut msgs, mut bytes) = (0u64, 0u64);
    // Size of the next read: grows while reads fill it, so a busy stream reads (and
    // copies out of quinn) up to 64 KiB under one connection lock, while an idle one
    // keeps a small buffer.
    let mut read_size = READ_MIN;
    let end = loop {
        match decoder.decode(&mut buf) {
            Ok(Some(msg)) => {
                if app_tx.is_none() {
                    app_tx = inner.app_sender(&app);
                }
                let Some(tx) = &app_tx else {
                    inner.metrics.stream_error("unknown_app");
                    let _ = recv.stop(code(codes::STREAM_UNKNOWN_APP));
                    break ReadEnd::Stopped(codes::STREAM_UNKNOWN_APP);
                };
                let len = msg.len() as u64;
                if reader.shared.closed.is_closed() {
                    break app_closed(&mut recv);
                }
                if let Some(outcome) = &handshake {
                    if in_handshake(outcome) {
                        // Counted first, so that whoever sees the message sees it counted.
                        inner.early.delivered.fetch_add(1, Ordering::Relaxed);
                    } else {
                        handshake = None;
                    }
                }
                // Messages of a stream given up in a handover go first (see `gate`). The
                // checks are atomics; waiting (and watching the connection, which takes
                // its lock) happens only when needed.
                if !reader.shared.gate.may_deliver(reader.id) {
                    tokio::select! {
                        () = reader.shared.gate.wait(reader.id) => {}
                        () = reader.shared.closed.wait() => break app_closed(&mut recv),
                        _ = conn.closed() => break ReadEnd::Lost,
                    }
                }
                match tx.try_send((node.clone(), msg)) {
                    Ok(_) => {}
                    Err(queue::TrySendError::Closed(_)) => break app_closed(&mut recv),
                    // A stalled application must not pin a stream of a connection that is
                    // gone or of an application that was closed.
                    Err(queue::TrySendError::Full(item)) => tokio::select! {
                        sent = tx.send(item) => if sent.is_err() {
                            break app_closed(&mut recv);
                        },
                        () = reader.shared.closed.wait() => break app_closed(&mut recv),
                        _ = conn.closed() => {
                            inner.metrics.send_error(app.as_str(), "undelivered", 1);
                            break ReadEnd::Lost;
                        }
                    },
                }
                msgs += 1;
                bytes += len;
            }
            Ok(None) => {
                if msgs > 0 {
                    traffic.add(msgs, bytes);
                    (msgs, bytes) = (0, 0);
                }
                // Whatever follows a partial frame is appended; the decoder's frames are
                // split off the front without copying.
                if buf.capacity() - buf.len() < read_size / 2 {
                    buf.reserve(read_size);
                }
                // At most `read_size` per call, however much room a growing buffer has:
                // quinn copies under the connection's lock.
                let spare = (buf.capacity() - buf.len()).min(read_size);
                match recv.read_buf(&mut (&mut buf).limit(spare)).await {
                    Ok(0) => {
                        if !buf.is_empty() {
                            inner.metrics.stream_error("truncated");
                        }
                        break ReadEnd::Finished;
                    }
                    Ok(n) => {
                        read_size = if n == spare {
                            (read_size * 2).min(READ_MAX)
                        } else {
                            (read_size / 2).max(READ_MIN)
                        };
                    }
                    Err(e) => {
                        // quinn's read errors travel inside the io::Error.
                        let e = e.into_inner().and_then(|e| e.downcast::<ReadError>().ok());
                        break match e.map(|e| *e) {
                            Some(ReadError::Reset(c)) => ReadEnd::Reset(c.into_inner()),
                            _ => ReadEnd::Lost,
                        };
                    }
                }
            }
            Err(e) => {
                warn!(peer = %node, %app, error = %e, "bad frame, stream reset");
                let reason = match e {
                    FrameError::MessageTooLarge { .. } => "frame_too_large",
                    _ => "bad_frame",
                };
                inner.metrics.stream_error(reason);
                let _ = recv.stop(code(codes::STREAM_FRAME_TOO_LARGE));
                break ReadEnd::Stopped(codes::STREAM_FRAME_TOO_LARGE);
            }
        }
    };
    if msgs > 0 {
        traffic.add(msgs, bytes);
    }
    let reader_id = reader.id;
    drop(reader);
    debug!(peer = %node, %app, reader = reader_id, ?end, "stream reader ended");
    let _ = done.send((end, guard));
}

/// Smallest and largest read from a stream into its reader's buffer.
const READ_MIN: usize = 4 * 1024;
const READ_MAX: usize = 64 * 1024;

/// Stops reading a stream whose application was closed (here, or its receiver dropped).
fn app_closed(recv: &mut RecvStream) -> ReadEnd {
    let _ = recv.stop(code(codes::STREAM_APP_CLOSED));
    ReadEnd::Stopped(codes::STREAM_APP_CLOSED)
}

/// Finishes a stream this side does not use, once the peer finished its half (so
/// everything the peer wrote on it was delivered first).
async fn finish_unused(mut send: SendStream, done: oneshot::Receiver<Done>) {
    match done.await {
        Ok((ReadEnd::Finished, guard)) => {
            let _ = send.finish();
            finish_acked(send, guard).await;
        }
        Ok((ReadEnd::Stopped(c), _)) => {
            let _ = send.reset(code(c));
        }
        _ => {
            let _ = send.reset(code(codes::STREAM_CLOSED));
        }
    }
}

/// Keeps a finished stream counted until the peer acknowledged all of it, so a duplicate
/// connection is not closed under data still in flight (data that arrived stays readable
/// after the close).
// Takes the guard by value: dropping it at the end is the point.
#[allow(clippy::needless_pass_by_value)]
async fn finish_acked(send: SendStream, guard: StreamGuard) {
    let _ = send.stopped().await;
    drop(guard);
}

struct Current {
    conn: u64,
    reader: u64,
    /// Our half; `None` only while parked for direct writes (see `Writer::park`).
    send: Option<SendStream>,
    done: oneshot::Receiver<Done>,
    opened_by_us: bool,
    needs_init: bool,
    /// On a connection whose handshake had not completed (opened by us on a dialled
    /// connection before it was registered, or `accepted`): until it does, the writer
    /// follows that handshake rather than the peer's current connection.
    early: bool,
    /// Opened while the handshake was still running, so its data is 0-RTT data (quinn's
    /// view: an early stream opened after the handshake completed, before the connection
    /// was registered, is an ordinary stream that a rejection of 0-RTT does not touch).
    zero_rtt: bool,
    /// An early stream the peer opened on a connection this node accepted (its writes
    /// are 0.5-RTT data): it follows `Writer::handshake` rather than the peer's early
    /// connection.
    accepted: bool,
}

impl Current {
    fn reset(&mut self, c: u32) {
        if let Some(send) = self.send.as_mut() {
            let _ = send.reset(code(c));
        }
    }

    fn finish(&mut self) {
        if let Some(send) = self.send.as_mut() {
            let _ = send.finish();
        }
    }
}

enum Exit {
    /// Queue closed (drain or lane removed): finish gracefully.
    Done,
    /// The peer is gone.
    PeerGone,
    /// The peer refused the stream.
    Refused(SendError),
    /// The application was closed here or at the peer: reset every stream of the lane.
    AppClosed,
}

/// What woke a waiting writer.
enum Wake {
    Closed,
    Ctl(Option<LaneCtl>),
    ReadEnd(Option<Done>),
    Changed(bool),
    Retired(usize, Option<Done>),
    Msg(Option<Bytes>),
    Work,
}

/// Messages up to this size are copied into the writer's batch buffer.
const COPY_BELOW: usize = 4096;

/// Bytes a message of `len` takes in the writer's batch buffer: its header, and its
/// payload when that is copied too.
fn copied_len(len: usize) -> usize {
    if len <= COPY_BELOW { 4 + len } else { 4 }
}

/// One message's frame for a write of its own: a small message copied behind its header
/// (one chunk, the second empty), a large one as its own chunk after the header.
fn frame_chunks(header: [u8; 4], msg: &Bytes) -> [Bytes; 2] {
    if msg.len() <= COPY_BELOW {
        let mut frame = BytesMut::with_capacity(4 + msg.len());
        frame.extend_from_slice(&header);
        frame.extend_from_slice(msg);
        [frame.freeze(), Bytes::new()]
    } else {
        [Bytes::copy_from_slice(&header), msg.clone()]
    }
}

/// The single owner of a (peer, application) lane: its queue, its current stream, and
/// every decision about which stream to use.
struct Writer {
    inner: Arc<Inner>,
    peer: NodeId,
    app: AppId,
    rx: LaneQueue,
    ctl: mpsc::UnboundedReceiver<LaneCtl>,
    current: watch::Receiver<Option<ConnRef>>,
    /// The peer's dialled connection in its 0-RTT phase, for a replay-safe application.
    early: watch::Receiver<Option<EarlyRef>>,
    /// The early connection this lane opened a stream on (it opens at most one).
    early_tried: Option<u64>,
    /// The handshake of the accepted connection the current (accepted early) stream is on.
    handshake: Option<watch::Receiver<Outcome>>,
    cur: Option<Current>,
    init: Bytes,
    shared: Arc<LaneShared>,
    ctl_open: bool,
    /// Streams given up and not yet finished by the peer.
    retiring: Vec<Retiring>,
    /// `close` asked to flush and finish.
    draining: bool,
    traffic: Traffic,
    /// What was written on the current early stream (as 0-RTT data, or as 0.5-RTT data on
    /// an accepted connection), until its handshake confirms it: if the server rejects
    /// 0-RTT, the handshake fails, or the stream is given up first, it is written again.
    kept: Replay,
    /// Messages to write (again) before anything queued, on the next stream.
    resend: Replay,
    /// The batch buffer: each batch is split off its front, so the next one fills the
    /// rest of the same allocation (about one allocation per `write_batch_bytes`
    /// written, however few messages each batch holds). Released when the writer parks.
    scratch: BytesMut,
}

/// A lane's send queue as its writer reads it: messages are taken out of the queue up
/// to [`queue::TAKE`] at a time (their room is free at once). The writer lends its
/// stream to direct writes only once it has written every message it took and nothing
/// is queued (see `Writer::park` and [`LaneQueue::idle`]), so a direct write never
/// overtakes a message the writer holds.
struct LaneQueue {
    rx: queue::Receiver<Bytes>,
}

impl LaneQueue {
    fn new(rx: queue::Receiver<Bytes>) -> Self {
        Self { rx }
    }

    /// The next message if one is queued now, without waiting.
    fn try_recv(&mut self) -> Option<Bytes> {
        self.rx.try_recv().ok()
    }

    /// The next message; `None` once the queue is closed and everything was taken.
    async fn recv(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }

    /// Nothing queued and nothing taken but not handed out yet.
    fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// As [`is_empty`](Self::is_empty), and the writer holds no message either (it wrote
    /// every one it was handed): senders may now write directly (see
    /// [`LaneShared::try_direct`]), and the next one queued wakes the writer.
    fn idle(&mut self) -> bool {
        self.rx.idle()
    }

    /// Refuses further messages (queued ones can still be taken).
    fn close(&mut self) {
        self.rx.close();
    }

    /// Closes the queue and drops everything in it; how many messages that was.
    fn close_and_clear(&mut self) -> u64 {
        self.rx.close_and_clear() as u64
    }
}

/// Framed messages (each `[len][payload]`, possibly in several chunks) and their count.
#[derive(Default)]
struct Replay {
    chunks: Vec<Bytes>,
    msgs: u64,
}

impl Replay {
    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

/// A stream given up by its lane, waiting for the peer's half to end.
struct Retiring {
    done: oneshot::Receiver<Done>,
    /// Our half, still to be finished once the peer's has ended (larger node ID only).
    send: Option<SendStream>,
}

impl Retiring {
    fn settle(self, done: Option<Done>) {
        if let Some(mut send) = self.send {
            match done {
                Some((ReadEnd::Finished, guard)) => {
                    let _ = send.finish();
                    tokio::spawn(finish_acked(send, guard));
                }
                _ => {
                    let _ = send.reset(code(codes::STREAM_CLOSED));
                }
            }
        }
    }
}

/// The first given-up stream whose peer half has ended, and how. It must be removed at
/// once (a completed oneshot must not be polled again).
async fn next_retired(retiring: &mut [Retiring]) -> (usize, Option<Done>) {
    std::future::poll_fn(|cx| {
        for (i, r) in retiring.iter_mut().enumerate() {
            if let std::task::Poll::Ready(done) = std::pin::Pin::new(&mut r.done).poll(cx) {
                return std::task::Poll::Ready((i, done.ok()));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

impl Writer {
    async fn run(mut self, init_ok: bool) {
        let exit = if init_ok {
            self.run_loop().await
        } else {
            Exit::Refused(SendError::UnknownApplication {
                node: self.peer.clone(),
                app: self.app.clone(),
            })
        };
        match exit {
            // Wait until the peer has read everything and finished its half (bounded by
            // `close`'s deadline): acknowledged data can still be lost if the connection
            // closes before the peer's application read it.
            Exit::Done => {
                // Finish at once whatever the IDs: the peer finishes its half only after
                // reading ours to the end, so its finish confirms delivery.
                if let Some(mut cur) = self.cur.take() {
                    self.shared.gate.retire(cur.reader);
                    if cur.needs_init {
                        cur.reset(codes::STREAM_CLOSED);
                    } else {
                        cur.finish();
                    }
                    self.retiring.push(Retiring {
                        done: cur.done,
                        send: None,
                    });
                }
                while !self.retiring.is_empty() {
                    let (i, done) = next_retired(&mut self.retiring).await;
                    self.retiring.swap_remove(i).settle(done);
                }
            }
            Exit::PeerGone | Exit::Refused(_) => {
                if let Some(mut cur) = self.cur.take() {
                    cur.reset(codes::STREAM_CLOSED);
                }
            }
            // Nothing of a closed application needs delivering: reset our halves (the
            // peer's readers end and so do its lanes), stop our readers, leave the map.
            Exit::AppClosed => {
                debug!(peer = %self.peer, app = %self.app, "application closed, lane ends");
                self.shared.closed.close();
                // Streams the peer opened that were not handed to us yet: a dropped
                // `SendStream` would finish (not reset) its half.
                self.ctl.close();
                let mut attached = Vec::new();
                while let Ok(ctl) = self.ctl.try_recv() {
                    if let LaneCtl::Attach(a) = ctl {
                        attached.push(a.send);
                    }
                }
                let sends = self
                    .cur
                    .take()
                    .and_then(|c| c.send)
                    .into_iter()
                    .chain(self.retiring.drain(..).filter_map(|r| r.send))
                    .chain(attached);
                for mut send in sends {
                    let _ = send.reset(code(codes::STREAM_APP_CLOSED));
                }
                *lock(&self.shared.failure) = Some(SendError::UnknownApplication {
                    node: self.peer.clone(),
                    app: self.app.clone(),
                });
                // Closed before the lane leaves the map: once it is gone, every send on
                // it (also through a cached `LaneSender`) fails.
                self.rx.close();
                self.inner.remove_lane(&self.peer, &self.app, &self.shared);
            }
        }
        if let Exit::Refused(err) = exit {
            let mut failure = lock(&self.shared.failure);
            if failure.is_none() {
                *failure = Some(err);
            }
        }
        let dropped = self.rx.close_and_clear();
        if dropped > 0 {
            self.inner
                .metrics
                .send_error(self.app.as_str(), "dropped", dropped);
        }
    }

    /// Whether nothing but the queue needs attention: no close, control message, end of
    /// the current stream's reading half, connection change or stream being given up.
    /// All atomics; the full `select!` below registers wakers on each source instead.
    fn only_queue_pending(&mut self) -> bool {
        self.retiring.is_empty()
            && self.resend.is_empty()
            && self
                .cur
                .as_ref()
                .is_some_and(|c| c.done.is_empty() && !c.early)
            && !self.shared.closed.is_closed()
            && (!self.ctl_open || self.ctl.is_empty())
            && matches!(self.current.has_changed(), Ok(false))
    }

    async fn run_loop(&mut self) -> Exit {
        loop {
            // Messages of a rejected 0-RTT stream go out before anything queued.
            if !self.resend.is_empty()
                && let Err(exit) = self.write_batch(None).await
            {
                return exit;
            }
            // Fast path while messages are queued: write them without the select below.
            if self.only_queue_pending()
                && let Some(first) = self.rx.try_recv()
            {
                if let Err(exit) = self.write_batch(Some(first)).await {
                    return exit;
                }
                continue;
            }
            let parked = self.park();
            let wake = tokio::select! {
                biased;
                () = self.shared.closed.wait() => Wake::Closed,
                ctl = self.ctl.recv(), if self.ctl_open => Wake::Ctl(ctl),
                end = async {
                    match self.cur.as_mut() {
                        Some(c) => (&mut c.done).await,
                        None => std::future::pending().await,
                    }
                } => Wake::ReadEnd(end.ok()),
                changed = self.current.changed() => Wake::Changed(changed.is_ok()),
                // An early stream follows its connection's handshake (a withdrawn early
                // connection failed, or is current now).
                changed = self.early.changed(), if self.cur.as_ref().is_some_and(|c| c.early && !c.accepted) => {
                    Wake::Changed(changed.is_ok())
                }
                // An accepted early stream follows its connection's handshake (an ended
                // watch is a decided handshake: `follow_current` drops the watch).
                _ = async {
                    match self.handshake.as_mut() {
                        Some(h) => h.changed().await,
                        None => std::future::pending().await,
                    }
                }, if self.cur.as_ref().is_some_and(|c| c.accepted) => Wake::Changed(true),
                (i, done) = next_retired(&mut self.retiring), if !self.retiring.is_empty() => {
                    Wake::Retired(i, done)
                }
                // Nothing is written while a given-up stream is not confirmed read. A
                // parked writer leaves the queue alone: a message it took would be
                // overtaken by direct writes; senders wake it instead.
                msg = self.rx.recv(), if !parked && self.retiring.is_empty() => Wake::Msg(msg),
                () = self.shared.work.notified(), if parked => Wake::Work,
            };
            // Whatever woke us, the stream comes back first (with the rest of a partly
            // written frame, which goes out before anything else).
            if parked && let Err(exit) = self.unpark(matches!(wake, Wake::Closed)).await {
                return exit;
            }
            match wake {
                Wake::Closed => return Exit::AppClosed,
                Wake::Ctl(ctl) => self.on_ctl(ctl).await,
                Wake::ReadEnd(end) => {
                    if let Err(exit) = self.on_read_end(end) {
                        return exit;
                    }
                }
                Wake::Changed(false) => return Exit::PeerGone,
                Wake::Changed(true) => self.follow_current(),
                Wake::Retired(i, done) => self.retiring.swap_remove(i).settle(done),
                Wake::Msg(None) => return Exit::Done,
                Wake::Msg(Some(first)) => {
                    if let Err(exit) = self.write_batch(Some(first)).await {
                        return exit;
                    }
                }
                Wake::Work => {}
            }
        }
    }

    /// Lends the current stream to the senders (see [`LaneShared::try_direct`]) while the
    /// writer waits, when nothing else needs it: a stream that has its `StreamInit`, no
    /// stream being given up, an empty queue, an open application and a lane still in
    /// its map and not draining (so the end of the queue is noticed through `rx`).
    fn park(&mut self) -> bool {
        // `idle` last: it tells the senders the writer holds nothing, which only the
        // writer parking with everything written may say.
        let parkable = self.ctl_open
            && !self.draining
            && self.retiring.is_empty()
            && self.resend.is_empty()
            && !self.shared.closed.is_closed()
            && self
                .cur
                .as_ref()
                .is_some_and(|c| !c.needs_init && !c.early && c.send.is_some())
            && self.rx.idle();
        if !parkable {
            return false;
        }
        // An idle lane keeps no batch buffer (its frozen batches free it once quinn
        // has them acknowledged).
        self.scratch = BytesMut::new();
        let send = self.cur.as_mut().and_then(|c| c.send.take());
        let mut direct = lock(&self.shared.direct);
        direct.send = send;
        true
    }

    /// Takes the stream back from the senders and writes the rest of a frame a direct
    /// write left (unless the application is `closing` anyway).
    async fn unpark(&mut self, closing: bool) -> Result<(), Exit> {
        let (send, mut rest) = {
            let mut direct = lock(&self.shared.direct);
            (direct.send.take(), std::mem::take(&mut direct.rest))
        };
        if let Some(cur) = self.cur.as_mut() {
            cur.send = send;
        }
        if rest.is_empty() || closing {
            return Ok(());
        }
        // The message was counted when its first part went out.
        self.write_chunks(&mut rest, 0, 0).await
    }

    fn current_conn(&self) -> Option<u64> {
        self.current.borrow().as_ref().map(|c| c.id)
    }

    async fn on_ctl(&mut self, ctl: Option<LaneCtl>) {
        match ctl {
            Some(LaneCtl::Attach(a)) => self.on_attach(a).await,
            Some(LaneCtl::Drain) => {
                self.draining = true;
                self.rx.close();
            }
            // The lane left the map; the queue or the peer watch ends the writer.
            None => self.ctl_open = false,
        }
    }

    /// The peer finished, reset or lost the reading half of the current stream.
    fn on_read_end(&mut self, done: Option<Done>) -> Result<(), Exit> {
        let Some(mut cur) = self.cur.take() else {
            return Ok(());
        };
        // The guard inside `done` is dropped after the stream is finished below.
        let (end, guard) = done.map_or((ReadEnd::Lost, None), |(end, g)| (end, Some(g)));
        if cur.early && end == ReadEnd::Lost {
            // Rejected 0-RTT, or the connection failed during its handshake.
            self.cur = Some(cur);
            self.drop_early();
            return Ok(());
        }
        let app_closed = end == ReadEnd::Stopped(codes::STREAM_APP_CLOSED)
            || end == ReadEnd::Reset(u64::from(codes::STREAM_APP_CLOSED));
        if app_closed {
            self.cur = Some(cur);
            return Err(Exit::AppClosed);
        }
        if cur.early {
            // Ended by the peer before the handshake confirmed what was written on it.
            self.resend_kept();
        }
        match end {
            // The peer gave the stream up (it moved to another): give it up too.
            ReadEnd::Finished => {
                cur.finish();
                if let (Some(guard), Some(send)) = (guard, cur.send) {
                    tokio::spawn(finish_acked(send, guard));
                }
            }
            ReadEnd::Stopped(c) => cur.reset(c),
            ReadEnd::Reset(c) => {
                cur.reset(codes::STREAM_CLOSED);
                if c == u64::from(codes::STREAM_UNKNOWN_APP) {
                    return Err(self.refused(c));
                }
            }
            ReadEnd::Lost => cur.reset(codes::STREAM_CLOSED),
        }
        Ok(())
    }

    /// The peer refused our stream with `stop_code`.
    fn refused(&self, stop_code: u64) -> Exit {
        warn!(peer = %self.peer, app = %self.app, code = stop_code, "peer refused stream");
        self.inner.emit(Event::StreamRefused {
            node: self.peer.clone(),
            app: self.app.clone(),
            code: stop_code,
        });
        Exit::Refused(SendError::UnknownApplication {
            node: self.peer.clone(),
            app: self.app.clone(),
        })
    }

    /// Leaves a current stream that is not on the current connection. An early stream
    /// stays while its connection's handshake runs; once the connection is current it
    /// becomes an ordinary stream if the server accepted its 0-RTT data (or it carried
    /// none: opened after the handshake completed), and is written again on a new stream
    /// otherwise.
    ///
    /// An early stream the peer opened on a connection we accepted stays while that
    /// handshake runs. Once it completed, the stream is an ordinary one (0.5-RTT data is
    /// never rejected); if it failed, what was written on it is written again.
    fn follow_current(&mut self) {
        let Some((conn, early, zero_rtt, accepted)) = self
            .cur
            .as_ref()
            .map(|c| (c.conn, c.early, c.zero_rtt, c.accepted))
        else {
            return;
        };
        if early && accepted {
            if self.handshake.as_ref().is_some_and(in_handshake) {
                return;
            }
            let established = self
                .handshake
                .take()
                .is_some_and(|h| matches!(*h.borrow(), Outcome::Ready(_)));
            if !established {
                self.drop_early();
                return;
            }
            if let Some(cur) = self.cur.as_mut() {
                cur.early = false;
                cur.accepted = false;
            }
            self.kept = Replay::default();
        } else if early {
            // `early` first: the connection is made current before it is withdrawn.
            let handshaking = self.early.borrow().as_ref().is_some_and(|e| e.id == conn);
            let current = self.current.borrow().as_ref().map(|c| (c.id, c.kind));
            match current {
                Some((id, kind)) if id == conn && (kind == HandshakeKind::ZeroRtt || !zero_rtt) => {
                    if let Some(cur) = self.cur.as_mut() {
                        cur.early = false;
                    }
                    self.kept = Replay::default();
                }
                Some((id, _)) if id == conn => self.drop_early(),
                _ if handshaking => {}
                _ => self.drop_early(),
            }
            return;
        }
        if Some(conn) != self.current_conn() {
            self.abandon();
        }
    }

    /// Drops the early stream whose 0-RTT data was rejected (or whose connection failed
    /// during its handshake): what was written on it is written again first.
    fn drop_early(&mut self) {
        if let Some(mut cur) = self.cur.take() {
            // A no-op for a rejected stream; ends it on a connection that lives on.
            cur.reset(codes::STREAM_CLOSED);
        }
        self.resend_kept();
    }

    /// The early stream that `kept` was written on is given up before its handshake
    /// said the data arrived: it is written again, first, on the next stream (a
    /// replay-safe application's messages may arrive twice, never not at all).
    fn resend_kept(&mut self) {
        self.handshake = None;
        let mut kept = std::mem::take(&mut self.kept);
        if kept.is_empty() {
            return;
        }
        debug!(peer = %self.peer, app = %self.app, msgs = kept.msgs, "early data not confirmed, writing it again");
        self.inner
            .early
            .resent
            .fetch_add(kept.msgs, Ordering::Relaxed);
        // Anything still to resend is newer than the kept messages.
        kept.chunks.append(&mut self.resend.chunks);
        kept.msgs += self.resend.msgs;
        self.resend = kept;
    }

    /// Gives up the current stream and keeps it in `retiring` until both halves are
    /// finished; nothing is written on a new stream before that. Exactly one side finishes
    /// first, so two sides giving up the same stream never wait for each other: the
    /// smaller node ID finishes at once, the larger one only after reading the smaller's
    /// end. The larger's finish thus confirms that everything the smaller wrote was
    /// delivered; the smaller side orders delivery itself (see `gate`). Control messages
    /// keep being handled meanwhile: the peer's progress may depend on them.
    fn abandon(&mut self) {
        if let Some(mut cur) = self.cur.take() {
            debug!(peer = %self.peer, app = %self.app, conn = cur.conn, reader = cur.reader, needs_init = cur.needs_init, "giving up stream");
            if cur.early {
                self.resend_kept();
            }
            self.shared.gate.retire(cur.reader);
            if cur.needs_init {
                // Opened but never written: the peer has not seen it and wrote nothing on
                // it. Resetting makes the peer drop it (and finish its half, which ends
                // our reader); there is nothing to wait for.
                cur.reset(codes::STREAM_CLOSED);
                return;
            }
            let send = if self.inner.local_is_smaller(&self.peer) {
                cur.finish();
                None
            } else {
                cur.send
            };
            self.retiring.push(Retiring {
                done: cur.done,
                send,
            });
        }
    }

    async fn on_attach(&mut self, a: Attached) {
        // The current stream is settled before the rules look at it: an early one becomes
        // ordinary or is dropped, one whose connection is no longer current is given up
        // (its end may not have been handled yet: control messages come first). Otherwise
        // a stale stream would have an early stream admitted meanwhile rejected.
        self.follow_current();
        // A replay-safe stream that arrived on a connection still in its handshake here,
        // while the peer has no connection and the lane no stream: used at once, so that
        // answers leave as 0.5-RTT data. Otherwise the rules below decide, as for any
        // stream (they never use a stream off the current connection).
        let handshake = a
            .handshake
            .filter(|h| in_handshake(h) && self.cur.is_none() && self.current_conn().is_none());
        if handshake.is_some() {
            debug!(peer = %self.peer, app = %self.app, conn = a.conn, reader = a.reader, "peer opened a stream during the handshake");
        } else {
            let decision = resolve::attach(
                self.cur.as_ref().map(|c| StreamSide {
                    conn: c.conn,
                    opened_by_us: c.opened_by_us,
                }),
                a.conn,
                self.current_conn(),
                self.inner.local_is_smaller(&self.peer),
            );
            debug!(peer = %self.peer, app = %self.app, conn = a.conn, reader = a.reader, ?decision, "peer opened a stream");
            match decision {
                Attach::Reject => {
                    self.shared.gate.retire(a.reader);
                    if self.inner.local_is_smaller(&self.peer) {
                        // Same rule as `abandon`: the smaller side finishes at once.
                        let mut send = a.send;
                        let _ = send.finish();
                    } else {
                        tokio::spawn(finish_unused(a.send, a.done));
                    }
                    return;
                }
                Attach::ReplaceCurrent => self.abandon(),
                Attach::Adopt => {}
            }
        }
        let early = handshake.is_some();
        self.handshake = handshake;
        self.shared.gate.set_current(a.reader);
        self.cur = Some(Current {
            conn: a.conn,
            reader: a.reader,
            send: Some(a.send),
            done: a.done,
            opened_by_us: false,
            needs_init: false,
            early,
            zero_rtt: false,
            accepted: early,
        });
    }

    /// Makes the stream we just opened on `conn` (`early`: in its 0-RTT phase) the
    /// current one, its reading half read by a reader of its own; it still needs its
    /// `StreamInit`.
    fn use_opened(&mut self, conn: &EarlyRef, early: bool, send: SendStream, recv: RecvStream) {
        let zero_rtt = early && recv.is_0rtt();
        let (done_tx, done_rx) = oneshot::channel();
        let mut guard = StreamGuard::new(&self.inner, &conn.live);
        guard.set_app(&self.app);
        let reader = ReaderSlot::new(self.shared.clone(), Role::Current);
        let reader_id = reader.id;
        let reader = read_stream(
            self.inner.clone(),
            conn.conn.clone(),
            self.peer.clone(),
            self.app.clone(),
            recv,
            BytesMut::new(),
            done_tx,
            (guard, reader, None),
        );
        tokio::spawn(hosted(self.inner.app_inbox(&self.app), reader));
        debug!(peer = %self.peer, app = %self.app, conn = conn.id, reader = reader_id, early, "opened stream");
        if early {
            self.early_tried = Some(conn.id);
        }
        self.cur = Some(Current {
            conn: conn.id,
            reader: reader_id,
            send: Some(send),
            done: done_rx,
            opened_by_us: true,
            needs_init: true,
            early,
            zero_rtt,
            accepted: false,
        });
    }

    /// For a lane being created by a send (before its task runs): if the application is
    /// replay-safe and the peer's only connection is a dialled one in its 0-RTT phase,
    /// opens the lane's stream on it and writes the `StreamInit` and `msg` as 0-RTT data,
    /// never waiting. Returns whether `msg` was taken: written (and kept, as any early
    /// data is, until the server accepts it), or, when the peer's stream window allows
    /// only part of it now, its first part, the writer writing the rest before anything
    /// else.
    ///
    /// Left to the writer task, the first message would wait until the runtime schedules
    /// that new task: on a busy machine often after the handshake completed (under a
    /// millisecond on a LAN), so as 1-RTT data.
    fn write_first_early(&mut self, msg: &Bytes) -> bool {
        if self.current.borrow().is_some() || !self.inner.app_replay_safe(&self.app) {
            return false;
        }
        let Some(conn) = self.early.borrow().clone() else {
            return false;
        };
        // The peer's streams that arrived earlier are handed to their lanes first (as in
        // `acquire`); none can have on a connection still in its handshake.
        if conn.live.unrouted.load(Ordering::Acquire) > 0 {
            return false;
        }
        let Ok(header) = message_header(msg.len(), &self.inner.config.limits) else {
            return false;
        };
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let opened = std::pin::pin!(conn.conn.open_bi()).poll(&mut cx);
        let std::task::Poll::Ready(Ok((mut send, recv))) = opened else {
            return false;
        };
        let frame = frame_chunks(header, msg);
        let mut chunks = [self.init.clone(), frame[0].clone(), frame[1].clone()];
        let polled = std::pin::pin!(send.write_chunks(&mut chunks)).poll(&mut cx);
        if !matches!(polled, std::task::Poll::Ready(Ok(_))) || !chunks[0].is_empty() {
            // Not even the `StreamInit` went out whole: the peer cannot route the stream
            // (it drops a stream whose init is cut short), so giving it up loses nothing;
            // the message takes the queue like any other.
            let _ = send.reset(code(codes::STREAM_CLOSED));
            let mut recv = recv;
            let _ = recv.stop(code(codes::STREAM_CLOSED));
            return false;
        }
        self.use_opened(&conn, true, send, recv);
        if let Some(cur) = self.cur.as_mut() {
            cur.needs_init = false;
        }
        // What went out is kept until the server accepts it; the rest of the frame (the
        // peer's stream window was smaller) is written by the writer before anything
        // else, and joins `kept` then (see `write_batch`). Either way the whole frame is
        // written again if the 0-RTT data is rejected.
        let mut kept = Vec::new();
        let mut rest = Vec::new();
        for (whole, left) in frame.iter().zip(&chunks[1..]) {
            let written = whole.len() - left.len();
            if written > 0 {
                kept.push(whole.slice(..written));
            }
            if !left.is_empty() {
                rest.push(left.clone());
            }
        }
        if !rest.is_empty() {
            debug!(peer = %self.peer, app = %self.app, "first message written early in part, the rest follows");
        }
        self.kept = Replay {
            chunks: kept,
            msgs: 1,
        };
        self.resend = Replay {
            chunks: rest,
            msgs: 0,
        };
        self.inner.early.sent.fetch_add(1, Ordering::Relaxed);
        self.traffic.add(1, msg.len() as u64);
        true
    }

    /// Makes sure there is a current stream on the current connection, opening one if
    /// needed (waiting for a connection while the peer has none). A replay-safe
    /// application opens it on a dialled connection in its 0-RTT phase instead of
    /// waiting.
    async fn acquire(&mut self) -> Result<(), Exit> {
        loop {
            while let Ok(ctl) = self.ctl.try_recv() {
                self.on_ctl(Some(ctl)).await;
            }
            self.follow_current();
            let settled = self.retiring.is_empty();
            if settled && self.cur.is_some() {
                return Ok(());
            }
            let replay_safe = self.inner.app_replay_safe(&self.app);
            let (target, early) = match self.current.borrow_and_update().clone() {
                Some(c) => (
                    Some(EarlyRef {
                        id: c.id,
                        conn: c.conn,
                        live: c.live,
                    }),
                    false,
                ),
                // One early stream per early connection: once it failed (0-RTT rejected),
                // its messages wait until the connection is current.
                None if replay_safe => (
                    self.early
                        .borrow_and_update()
                        .clone()
                        .filter(|e| self.early_tried != Some(e.id)),
                    true,
                ),
                None => (None, false),
            };
            // The peer's streams that arrived before the connection was established are
            // handed to their lanes first: if one is ours, it is the stream to use.
            let unrouted = target
                .as_ref()
                .filter(|t| t.live.unrouted.load(Ordering::Acquire) > 0)
                .map(|t| t.live.clone());
            if let Some(conn) =
                target.filter(|_| settled && self.cur.is_none() && unrouted.is_none())
            {
                match conn.conn.open_bi().await {
                    Ok((send, recv)) => {
                        self.use_opened(&conn, early, send, recv);
                        // A stream the peer opened meanwhile is decided before writing.
                        continue;
                    }
                    Err(_) => {
                        if !early && self.current_conn() != Some(conn.id) {
                            continue;
                        }
                    }
                }
            }
            tokio::select! {
                (i, done) = next_retired(&mut self.retiring), if !self.retiring.is_empty() => {
                    self.retiring.swap_remove(i).settle(done);
                }
                changed = self.current.changed() => if changed.is_err() {
                    return Err(Exit::PeerGone);
                },
                changed = self.early.changed(), if replay_safe => if changed.is_err() {
                    return Err(Exit::PeerGone);
                },
                () = async {
                    match &unrouted {
                        Some(live) => live.routed().await,
                        None => std::future::pending().await,
                    }
                } => {}
                ctl = self.ctl.recv(), if self.ctl_open => self.on_ctl(ctl).await,
                () = self.shared.closed.wait() => return Err(Exit::AppClosed),
            }
        }
    }

    /// Writes what is to be written again (see `resend`), then `first` and whatever else
    /// is queued (up to `write_batch_bytes`), in one vectored write.
    async fn write_batch(&mut self, first: Option<Bytes>) -> Result<(), Exit> {
        let limits = self.inner.config.limits;
        let batch = self.inner.config.write_batch_bytes;
        // Small messages are copied behind their headers into one buffer (a copy is
        // cheaper than a chunk each); large ones go out as their own chunk, uncopied.
        let mut chunks: Vec<Bytes> = Vec::with_capacity(4);
        // The batch buffer is never grown in place (a reallocation copies what it holds
        // and, with large buffers, faults in fresh pages): what does not fit starts a new
        // buffer of a whole batch, and the full one goes out as a chunk of its own.
        let spare = |b: &BytesMut| b.capacity() - b.len();
        // A whole batch, and the copied message that crosses its end.
        let whole = batch + 4 + COPY_BELOW;
        let first_copied = first.as_ref().map_or(0, |m| copied_len(m.len()));
        if spare(&self.scratch) < first_copied {
            self.scratch = if self.rx.is_empty() {
                BytesMut::with_capacity(first_copied.max(256))
            } else {
                BytesMut::with_capacity(whole)
            };
        }
        let mut bytes = 0usize;
        let mut count = 0u64;
        let mut next = first;
        while let Some(msg) = next.take() {
            // The length was checked when the message was queued.
            let header = message_header(msg.len(), &limits).unwrap_or([0; 4]);
            bytes += 4 + msg.len();
            count += 1;
            self.scratch.extend_from_slice(&header);
            if msg.len() <= COPY_BELOW {
                self.scratch.extend_from_slice(&msg);
            } else {
                chunks.push(self.scratch.split().freeze());
                chunks.push(msg);
            }
            if bytes < batch {
                next = self.rx.try_recv();
                let need = next.as_ref().map_or(0, |m| copied_len(m.len()));
                if spare(&self.scratch) < need {
                    if !self.scratch.is_empty() {
                        chunks.push(self.scratch.split().freeze());
                    }
                    self.scratch = BytesMut::with_capacity(whole);
                }
            }
        }
        if !self.scratch.is_empty() {
            chunks.push(self.scratch.split().freeze());
        }
        self.acquire().await?;
        // Taken after `acquire`, which may have dropped an early stream into it.
        let resend = std::mem::take(&mut self.resend);
        let Some(cur) = self.cur.as_mut() else {
            return Ok(());
        };
        if !resend.is_empty() {
            chunks.splice(0..0, resend.chunks);
        }
        if cur.early {
            // Kept until the server accepts them (0-RTT data is lost if it rejects it), or
            // until the accepted connection's handshake completes.
            self.kept.chunks.extend(chunks.iter().cloned());
            self.kept.msgs += count + resend.msgs;
            let early = &self.inner.early;
            let counter = if cur.accepted {
                &early.answered_early
            } else {
                &early.sent
            };
            counter.fetch_add(count + resend.msgs, Ordering::Relaxed);
        }
        if cur.needs_init {
            chunks.insert(0, self.init.clone());
            cur.needs_init = false;
        }
        let payload = bytes - 4 * usize::try_from(count).unwrap_or(0);
        self.write_chunks(&mut chunks, count, payload as u64).await
    }

    /// Writes `chunks` (`count` messages, `payload` bytes) on the current stream.
    async fn write_chunks(
        &mut self,
        chunks: &mut [Bytes],
        count: u64,
        payload: u64,
    ) -> Result<(), Exit> {
        let Some(send) = self.cur.as_mut().and_then(|c| c.send.as_mut()) else {
            return Ok(());
        };
        // A write blocked by flow control (the peer's application stalls) must still see
        // its application closed.
        let written = tokio::select! {
            w = send.write_all_chunks(chunks) => w,
            () = self.shared.closed.wait() => {
                self.inner.metrics.send_error(self.app.as_str(), "dropped", count);
                return Err(Exit::AppClosed);
            }
        };
        match written {
            Ok(()) => {
                self.traffic.add(count, payload);
                Ok(())
            }
            Err(e) => {
                // The peer's application is unknown or closed: the lane ends, early or not.
                let refused = match e {
                    WriteError::Stopped(c)
                        if c == code(codes::STREAM_UNKNOWN_APP)
                            || c == code(codes::STREAM_APP_CLOSED) =>
                    {
                        Some(c)
                    }
                    _ => None,
                };
                if refused.is_none() && self.cur.as_ref().is_some_and(|c| c.early) {
                    // Kept: written again once the handshake is decided.
                    self.drop_early();
                    return Ok(());
                }
                self.cur = None;
                self.inner
                    .metrics
                    .send_error(self.app.as_str(), "stream_lost", count);
                match refused {
                    Some(c) if c == code(codes::STREAM_UNKNOWN_APP) => {
                        return Err(self.refused(c.into_inner()));
                    }
                    Some(_) => return Err(Exit::AppClosed),
                    None => {}
                }
                debug!(peer = %self.peer, app = %self.app, error = %e, "stream write failed");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(i: u32) -> Bytes {
        Bytes::copy_from_slice(&i.to_le_bytes())
    }

    #[tokio::test]
    async fn a_lane_queue_hands_out_in_order_and_is_empty_only_with_nothing_taken() {
        let (tx, rx) = queue::channel(200, queue::TAKE);
        let mut queue = LaneQueue::new(rx);
        assert!(queue.is_empty());
        for i in 0..150 {
            tx.try_send(numbered(i)).unwrap();
        }
        assert_eq!(queue.try_recv(), Some(numbered(0)));
        for i in 1..140 {
            assert_eq!(queue.try_recv(), Some(numbered(i)), "message {i}");
        }
        // Nothing is queued, but taken messages are not written yet: a writer that
        // parked now would let direct writes overtake them.
        assert!(!tx.is_empty());
        assert!(!queue.is_empty());
        assert!(!queue.idle());
        for i in 140..150 {
            assert_eq!(queue.recv().await, Some(numbered(i)));
        }
        // All handed out, the last one perhaps not written yet: only the writer, once it
        // has written it, says it holds nothing.
        assert_eq!(queue.try_recv(), None);
        assert!(queue.is_empty());
        assert!(!tx.is_empty());
        assert!(queue.idle());
        assert!(tx.is_empty());
        assert_eq!(tx.try_send(numbered(150)), Ok(true));
        assert_eq!(tx.try_send(numbered(151)), Ok(false));
        assert_eq!(queue.recv().await, Some(numbered(150)));
        tx.try_send(numbered(152)).unwrap();
        // One taken and one queued are dropped (and counted) on close.
        assert_eq!(queue.close_and_clear(), 2);
        assert!(queue.is_empty());
        assert_eq!(queue.try_recv(), None);
        assert_eq!(queue.recv().await, None);
        assert!(tx.try_send(numbered(153)).is_err());
    }

    fn alert(n: u8, reason: &str) -> ConnectionError {
        ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: quinn::TransportErrorCode::crypto(n),
            frame_type: None,
            reason: Bytes::copy_from_slice(reason.as_bytes()),
        })
    }

    #[tokio::test]
    async fn a_dialer_runs_as_a_task_only_once_woken_and_abort_drops_it() {
        // Parked after its first poll; the first wake-up spawns it.
        let (wake, woken) = oneshot::channel::<()>();
        let (done, finished) = oneshot::channel();
        let dialer = Dialer::new();
        dialer.start(Box::pin(async move {
            let _ = woken.await;
            let _ = done.send(());
        }));
        assert!(matches!(*lock(&dialer.stage), DialStage::Parked(_)));
        wake.send(()).unwrap();
        finished.await.unwrap();
        assert!(matches!(*lock(&dialer.stage), DialStage::Task(_)));

        // Aborted while parked: the loop is dropped, never run.
        let (wake, woken) = oneshot::channel::<()>();
        let dialer = Dialer::new();
        dialer.start(Box::pin(async move {
            let _ = woken.await;
        }));
        assert!(!dialer.is_finished());
        dialer.abort();
        assert!(dialer.is_finished() && wake.is_closed());

        // A panic in the first poll stays inside, as in a task, and ends the dialer.
        let dialer = Dialer::new();
        dialer.start(Box::pin(async { panic!("dial loop bug") }));
        assert!(dialer.is_finished());
    }

    /// A wake-up on a runtime that is shutting down (which drops the task it is asked to
    /// spawn at once) leaves the loop with the dialer instead of dropping it inside the
    /// wake-up, where quinn may hold the lock its connection handle takes when dropped;
    /// `abort` drops it.
    #[test]
    fn a_dialer_woken_while_its_runtime_shuts_down_keeps_its_loop_until_aborted() {
        struct Dropped(Arc<AtomicBool>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let dropped = Arc::new(AtomicBool::new(false));
        let (wake, woken) = oneshot::channel::<()>();
        let dialer = {
            let _runtime = rt.enter();
            Dialer::new()
        };
        let guard = Dropped(dropped.clone());
        dialer.start(Box::pin(async move {
            let _guard = guard;
            let _ = woken.await;
        }));
        assert!(matches!(*lock(&dialer.stage), DialStage::Parked(_)));
        drop(rt);
        wake.send(()).unwrap();
        assert!(
            !dropped.load(Ordering::Acquire),
            "dropped inside the wake-up"
        );
        dialer.abort();
        assert!(dropped.load(Ordering::Acquire) && dialer.is_finished());
    }

    #[test]
    fn tls_alerts_map_to_reasons() {
        assert_eq!(classify(&alert(48, "")), RejectReason::UnknownCa);
        assert_eq!(
            classify(&alert(51, "BadSignature")),
            RejectReason::UnknownCa
        );
        assert_eq!(classify(&alert(45, "")), RejectReason::Expired);
        assert_eq!(classify(&alert(116, "")), RejectReason::NoClientCert);
        assert_eq!(classify(&alert(120, "")), RejectReason::Alpn);
        assert_eq!(
            classify(&alert(42, "certificate identity mismatch: dialled \"x\"")),
            RejectReason::IdentityMismatch
        );
        assert_eq!(classify(&alert(42, "")), RejectReason::BadCertificate);
        assert_eq!(classify(&alert(80, "")), RejectReason::Tls(80));
        assert_eq!(classify(&ConnectionError::TimedOut), RejectReason::Timeout);
    }

    #[test]
    fn application_close_codes_map_to_reasons() {
        let close = |c: u32| {
            ConnectionError::ApplicationClosed(quinn::ApplicationClose {
                error_code: code(c),
                reason: Bytes::new(),
            })
        };
        assert_eq!(
            classify(&close(codes::REJECTED)),
            RejectReason::RejectedByPeer
        );
        assert_eq!(
            classify(&close(codes::HANDSHAKE_TIMEOUT)),
            RejectReason::Timeout
        );
        assert_eq!(
            classify(&close(codes::IDENTITY_MISMATCH)),
            RejectReason::IdentityMismatch
        );
        assert_eq!(
            down_reason(&close(codes::DUPLICATE)),
            DownReason::Peer {
                code: u64::from(codes::DUPLICATE)
            }
        );
        assert_eq!(
            down_reason(&ConnectionError::TimedOut),
            DownReason::TimedOut
        );
    }
}
