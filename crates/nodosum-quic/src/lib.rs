//! Nodosum's data transport: mutual-TLS QUIC connections between nodes, with one
//! long-lived bidirectional stream per application per peer.
//!
//! A [`QuicNode`] owns one quinn endpoint that is both server and client. The caller tells
//! it which peers should be connected ([`QuicNode::connect`] with a node ID and address,
//! [`QuicNode::disconnect`]) and learns what happens through [`Event`]s and [`Counts`].
//! Applications register by [`AppId`](nodosum_proto::AppId) and receive
//! `(sender, message)` pairs; they send with [`QuicNode::send`] (waits while the queue is
//! full) or [`QuicNode::try_send`], or through a [`LaneSender`] ([`QuicNode::sender`])
//! that caches the (peer, application) lane for hot paths.
//!
//! What it is not: it knows nothing about gossip or membership (the facade maps members to
//! `connect`/`disconnect` and the acceptance policy), keeps no application state and does
//! not retransmit messages lost with a broken connection.
//!
//! # Security
//! TLS 1.3 only, ALPN `mycorrizal-quic` (configurable), both sides present certificates
//! verified against the configured CA roots. The peer's node ID is read from its
//! certificate: the first SAN DNS name, or the subject CN when there is no SAN DNS name
//! (see [`node_id_from_cert`]). A dialled server whose certificate names another node is
//! refused during the handshake; an incoming client is checked against the acceptance
//! policy after it and closed with [`codes::REJECTED`] if refused. There is no plaintext
//! mode.
//!
//! # Connections
//! One connection per peer. When two nodes dial each other at once, both keep the
//! connection initiated by the smaller node ID; the other one is drained (its streams hand
//! over to the winner without losing or reordering messages) and closed with
//! [`codes::DUPLICATE`] by the node with the larger ID (its dialler) once no stream is
//! left on it. A peer dials only while it has no connection, or in such a simultaneous
//! dial, which it starts at most [`Config::handshake_timeout`] after the first connection
//! was established here (its side of that handshake is bounded by it). So when the first
//! packet of a peer's new connection arrives later than that after an older connection of
//! it was established, the peer has lost that one (it restarted, or its close never
//! arrived): the older one is closed at once with [`codes::SUPERSEDED`], instead of being
//! kept until its idle timeout while messages sent into it are lost. This assumes the
//! nodes share the handshake timeout. A peer that should be connected is redialled with
//! exponential backoff. A handshake, dialled or accepted, that has not completed after
//! [`Config::handshake_timeout`] is given up and reported as [`RejectReason::Timeout`].
//!
//! Reconnects use TLS session resumption and, when the server offers it, 0-RTT. Resumed
//! handshakes skip certificate verification and keep the identity of the original session.
//!
//! # 0-RTT data: only for replay-safe applications
//! 0-RTT data can be replayed: an attacker who recorded a client's first flight can send
//! it again, to the same or another server holding the ticket keys, and the server cannot
//! tell until the handshake fails to complete (a replayed flight never completes it: the
//! attacker lacks the keys). So 0-RTT carries only messages that are harmless to receive
//! twice, and that is something only the application knows: an application opts in with
//! [`AppOptions::replay_safe`] ([`QuicNode::register_app_with`]); the default is off.
//!
//! - **Dialling side.** While a reconnect's handshake runs with 0-RTT keys, the lanes of
//!   replay-safe applications open their stream on it and write `StreamInit` and their
//!   queued messages as 0-RTT data at once. [`QuicNode::connect`] starts the first dial
//!   before it returns, so when the next `send` of a replay-safe application creates the
//!   lane, that `send` call opens the stream and writes the message itself (as much of
//!   it as the peer's stream window takes at once), without waiting for any task to be
//!   scheduled; lanes that outlive a connection do the same from their own task on the
//!   redial. Every other application's data waits for the
//!   handshake to complete, as on a full handshake. What was written early is kept until
//!   the server accepted it; if the server rejects the 0-RTT data (it lost its ticket
//!   state, e.g. it restarted) or the connection fails during its handshake, those
//!   messages are written again on a new stream once a connection is established, before
//!   anything queued after them.
//! - **Accepting side.** A stream that arrives before its connection's handshake has
//!   completed is delivered at once only if its application is registered here as
//!   replay-safe, the peer's identity is known (rustls restores the client certificate
//!   chain from the resumption ticket; the acceptance policy is applied to it), and the
//!   peer has no connection and no stream of that application here (so nothing it sent
//!   earlier can still be undelivered, and a replay cannot interleave with a live
//!   connection's messages). Such a stream becomes its lane's stream at once, so the
//!   application's answers leave on it as 0.5-RTT data, without waiting for the client's
//!   last handshake flight. They are kept until the handshake completes; if it fails (a
//!   replayed flight never completes it), they are written again on the next stream to
//!   that peer, or dropped with the lane if the peer is forgotten. So an answer of a
//!   replay-safe application can arrive twice, like its 0-RTT messages. Any other early
//!   stream is held unread (QUIC flow control bounds it) until the handshake completes,
//!   and then goes to its lane like any stream; if the handshake never completes, the
//!   connection is closed after [`Config::handshake_timeout`] and the held data is never
//!   delivered. An early connection joins its peer (and can replace or duplicate another
//!   connection) only once its handshake completed, so a replayed flight cannot disturb
//!   the real connection to that peer.
//!
//! What a replay can therefore do: deliver a copy of a replay-safe application's first
//! messages after a reconnect once more, to a node that has no connection to that peer,
//! on a connection that then dies (at the latest after [`Config::handshake_timeout`]).
//! Until it dies, that application's lane to the peer answers on the replayed stream; if
//! the real peer connects meanwhile, the lane answers on the real connection once the
//! real peer opened its own stream of that application there, or once the replayed
//! connection is gone (it cannot tell which of the two is the replay); the real peer's
//! messages on that application may wait until the replayed connection is gone, behind
//! the replayed stream's. What it wrote on the
//! replayed stream is written again on the next stream (or dropped with the lane if this
//! node forgets the peer, like anything queued for a peer it forgets). What a replay
//! cannot do: touch the peer's other applications or its real connection, deliver
//! anything of an application that is not replay-safe, or anything at all from a peer the
//! acceptance policy refuses.
//! A replay-safe application's messages may also arrive twice without an attacker:
//! whatever a lane wrote on an early stream (0-RTT data, or 0.5-RTT answers) is written
//! again on its next stream if that stream ends or is given up before its handshake
//! confirmed it, although the peer may have read it. That happens when a connection
//! fails after the server accepted its 0-RTT data but before the client knew, and when
//! the two nodes' connections to each other meet and the early stream's connection
//! loses. An accepting node takes the early streams of one connection per peer at a
//! time; another connection's are held until its handshake completes. The dialling side reports [`HandshakeKind::ZeroRtt`] when the server accepted
//! 0-RTT; the accepting side reports [`HandshakeKind::Resumed`] for every resumed
//! handshake. [`QuicNode::early_data`] counts what was sent (as 0-RTT and as 0.5-RTT
//! data), resent, delivered and held.
//!
//! # Streams
//! The first message of application A to peer P opens a bidirectional stream that starts
//! with `nodosum_proto::StreamInit`; both directions of that stream then carry A's
//! `[u32 LE len][payload]` messages between the two nodes. A stream for an application the
//! receiver has not registered is reset and stopped with [`codes::STREAM_UNKNOWN_APP`] and
//! the sender's next `send` returns [`SendError::UnknownApplication`]. A frame above the
//! size limit resets only its stream ([`codes::STREAM_FRAME_TOO_LARGE`]). Each (peer,
//! application) has a bounded send queue; its writer coalesces whatever is queued (up to
//! [`Config::write_batch_bytes`]) into one vectored write and never waits to fill a batch.
//! While the writer is idle, a sender writes its message straight into the stream instead
//! (no hop through the writer task; quinn's flow control permitting, else it queues), unless
//! the lane's previous direct write was less than 10 µs before: bursts go through the
//! writer and leave in large writes.
//! An application whose receiver stalls stops only its own streams (QUIC flow control per
//! stream).
//!
//! Each stream's reader runs in its own task and delivers into the application's bounded
//! queue ([`Config::app_receiver_capacity`] messages, plus up to 64 the receiver has taken
//! and not returned yet), in order. While the application waits in [`AppReceiver::recv`] with nothing
//! queued, a reader that quinn wakes is polled by the application's task itself, so a
//! message costs one task wake-up on the receiving side, as on a raw quinn stream; a busy,
//! stalled or dropped receiver leaves its readers to their own tasks.
//!
//! Closing an application ([`QuicNode::close_app`], or dropping its receiver) resets and
//! stops every stream of it with [`codes::STREAM_APP_CLOSED`]; a peer that sees that code
//! ends its own lane for the application, so stream and lane counts return to their
//! baseline on both nodes. Messages still queued for a closed application are dropped;
//! other applications and the connection are untouched. Registering it again starts
//! afresh: the next send opens a new stream.
//!
//! # Runtime
//! Create the node inside a multi-thread tokio runtime: quinn's endpoint and connection
//! drivers and this crate's tasks are spawned onto it, so none of them run on the caller's
//! `block_on` thread.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod gate;
mod inbox;
mod metrics;
mod node;
mod queue;
mod resolve;
mod tls;

pub use config::{Config, Congestion, DEFAULT_PORT, MAX_ACK_DELAY, MIN_ACK_DELAY};
pub use inbox::AppReceiver;
pub use node::{
    AcceptPolicy, AppOptions, ConnectionInfo, Counts, DownReason, EarlyData, Error, Event,
    HandshakeKind, LaneSender, QuicNode, RejectReason, SendError, codes,
};
pub use queue::TryRecvError;
pub use tls::{
    DEFAULT_ALPN, DevCa, DevValidity, IdentityError, PemFile, TlsError, TlsIdentity,
    crypto_provider, node_id_from_cert,
};
