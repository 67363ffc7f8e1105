//! Applications: named channels between nodes, with messages and request/response.
//!
//! Every payload an application sends carries a one-byte kind in front, so that messages
//! and requests share the application's stream and keep their order per sender:
//!
//! ```text
//! message:     [0x00][payload]
//! request:     [0x01][u64 LE request id][body]
//! response:    [0x02][u64 LE request id][body]
//! no response: [0x03][u64 LE request id]       (the handler dropped the request)
//! ```
//!
//! Responses of every application travel on one internal channel per peer,
//! `_nodosum/reply`, read by the node itself, so a response never waits behind requests
//! queued for a busy handler. Request IDs are unique per node.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use nodosum_proto::{AppId, NodeId};
use nodosum_quic::AppReceiver;
use tokio::sync::oneshot;

use crate::error::{RequestError, SendError};
use crate::node::Shared;

const KIND_MESSAGE: u8 = 0x00;
const KIND_REQUEST: u8 = 0x01;
const KIND_RESPONSE: u8 = 0x02;
const KIND_NO_RESPONSE: u8 = 0x03;
const ID_LEN: usize = 8;

/// Prefix of the node's internal application names; users cannot register them.
pub(crate) const RESERVED_PREFIX: &str = "_nodosum/";

/// The node's own channel for responses (under [`RESERVED_PREFIX`]).
pub(crate) const REPLY_APP: &str = "_nodosum/reply";

/// The nodes a message goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// One node.
    Node(NodeId),
    /// Several nodes (each once, however often it is listed).
    Nodes(Vec<NodeId>),
    /// Every alive member except this node (none while it is alone: the send succeeds
    /// without sending anything).
    All,
}

impl From<NodeId> for Targets {
    fn from(node: NodeId) -> Self {
        Self::Node(node)
    }
}

impl From<&NodeId> for Targets {
    fn from(node: &NodeId) -> Self {
        Self::Node(node.clone())
    }
}

impl From<Vec<NodeId>> for Targets {
    fn from(nodes: Vec<NodeId>) -> Self {
        Self::Nodes(nodes)
    }
}

/// Something another node sent to this application.
#[derive(Debug)]
pub enum Incoming {
    /// A one-way message.
    Message {
        /// The sender.
        from: NodeId,
        /// The payload.
        payload: Bytes,
    },
    /// A request waiting for [`Request::respond`].
    Request(Request),
}

/// A request from another node. Respond with [`respond`](Self::respond); dropping it
/// without responding tells the requester at once ([`RequestError::NoResponse`]).
#[derive(Debug)]
pub struct Request {
    from: NodeId,
    id: u64,
    body: Bytes,
    node: Option<Arc<Shared>>,
}

impl Request {
    /// The requesting node.
    pub fn from(&self) -> &NodeId {
        &self.from
    }

    /// The request body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Sends `body` back to the requester.
    pub async fn respond(mut self, body: impl Into<Bytes>) -> Result<(), SendError> {
        let node = self.node.take().expect("a request is answered once");
        let frame = encode(KIND_RESPONSE, Some(self.id), &body.into());
        node.check_target(&self.from)?;
        let reply_app = node.reply_app.clone();
        node.quic
            .send(&self.from, &reply_app, frame)
            .await
            .map_err(|e| node.send_error(&reply_app, e))
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            let frame = encode(KIND_NO_RESPONSE, Some(self.id), &[]);
            // Best effort: the requester times out if this cannot be queued.
            let _ = node.quic.try_send(&self.from, &node.reply_app, frame);
        }
    }
}

/// A registered application: send to other nodes, receive from them.
///
/// Dropping it unregisters the name on this node; [`AppSender`] clones can still send.
#[derive(Debug)]
pub struct Application {
    sender: AppSender,
    data: AppReceiver,
}

/// The sending half of an [`Application`]: cheap to clone and share between tasks.
#[derive(Debug, Clone)]
pub struct AppSender {
    shared: Arc<AppShared>,
}

/// A request waiting for its response.
#[derive(Debug)]
pub(crate) struct Pending {
    node: NodeId,
    reply: oneshot::Sender<Result<Bytes, RequestError>>,
}

/// The requests of all applications of a node that wait for a response.
#[derive(Debug, Default)]
pub(crate) struct PendingRequests {
    map: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
}

pub(crate) struct AppShared {
    app: AppId,
    node: Arc<Shared>,
}

impl std::fmt::Debug for AppShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppShared")
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

impl Application {
    pub(crate) fn new(node: Arc<Shared>, app: AppId, data: AppReceiver) -> Self {
        let shared = Arc::new(AppShared { app, node });
        shared.node.register_app(&shared);
        Self {
            sender: AppSender { shared },
            data,
        }
    }

    /// The application's name.
    pub fn name(&self) -> &AppId {
        &self.sender.shared.app
    }

    /// The next message or request from another node, in order per sender. `None` once
    /// the node is shut down.
    ///
    /// While nobody calls it, this application's streams stop being read and QUIC flow
    /// control slows this application's senders, and only them.
    pub async fn receive(&mut self) -> Option<Incoming> {
        loop {
            let (from, mut frame) = self.data.recv().await?;
            let shared = &self.sender.shared;
            shared.node.metrics.received(&shared.app, frame.len());
            if frame.is_empty() {
                shared.node.drop_frame(&shared.app, &from, "empty");
                continue;
            }
            match frame.get_u8() {
                KIND_MESSAGE => {
                    return Some(Incoming::Message {
                        from,
                        payload: frame,
                    });
                }
                KIND_REQUEST => match split_id(frame) {
                    Some((id, body)) => {
                        let node = Some(Arc::clone(&shared.node));
                        return Some(Incoming::Request(Request {
                            from,
                            id,
                            body,
                            node,
                        }));
                    }
                    None => shared.node.drop_frame(&shared.app, &from, "short request"),
                },
                _ => shared.node.drop_frame(&shared.app, &from, "unknown kind"),
            }
        }
    }

    /// A sending handle for other tasks.
    pub fn sender(&self) -> AppSender {
        self.sender.clone()
    }

    /// Sends a one-way message; waits while a target's queue is full.
    pub async fn send(
        &self,
        payload: impl Into<Bytes>,
        to: impl Into<Targets>,
    ) -> Result<(), SendError> {
        self.sender.send(payload, to).await
    }

    /// Sends a one-way message without waiting; a full queue is [`SendError::QueueFull`].
    pub fn try_send(
        &self,
        payload: impl Into<Bytes>,
        to: impl Into<Targets>,
    ) -> Result<(), SendError> {
        self.sender.try_send(payload, to)
    }

    /// Sends a request to `node` and waits for its response, at most `timeout`.
    pub async fn request(
        &self,
        node: &NodeId,
        body: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Bytes, RequestError> {
        self.sender.request(node, body, timeout).await
    }

    /// The alive members this application can send to (this node excluded).
    pub fn nodes(&self) -> Vec<NodeId> {
        self.sender.nodes()
    }
}

impl Drop for Application {
    fn drop(&mut self) {
        // Closing the application in the transport ends its streams and lanes to every
        // peer (and theirs to us) and unregisters it, so the name can be registered again
        // at once; messages still queued for it are dropped.
        let shared = &self.sender.shared;
        shared.node.unregister_app(&shared.app);
        shared.node.quic.close_app(&shared.app);
    }
}

impl AppSender {
    /// The application's name.
    pub fn name(&self) -> &AppId {
        &self.shared.app
    }

    /// Sends a one-way message; waits while a target's queue is full. With several
    /// targets, the sends to all of them go on together in this call: the message is
    /// queued at once for every target with room, and a peer whose application stopped
    /// reading holds up only its own copy. Cancelled while waiting, the message is queued
    /// for exactly the targets that had room by then.
    pub async fn send(
        &self,
        payload: impl Into<Bytes>,
        to: impl Into<Targets>,
    ) -> Result<(), SendError> {
        let frame = encode(KIND_MESSAGE, None, &payload.into());
        let targets = self.shared.node.resolve(to.into())?;
        if let [node] = &targets[..] {
            return self.shared.send_raw(node, &self.shared.app, frame).await;
        }
        type Sending<'a> =
            std::pin::Pin<Box<dyn Future<Output = (NodeId, Result<(), SendError>)> + Send + 'a>>;
        let mut sending: Vec<Sending<'_>> = targets
            .into_iter()
            .map(|node| {
                let frame = frame.clone();
                Box::pin(async move {
                    let sent = self.shared.send_raw(&node, &self.shared.app, frame).await;
                    (node, sent)
                }) as Sending<'_>
            })
            .collect();
        let mut failed = Vec::new();
        // Polled here rather than spawned, so that dropping this call drops them all.
        std::future::poll_fn(|cx| {
            sending.retain_mut(|send| match send.as_mut().poll(cx) {
                std::task::Poll::Ready((node, sent)) => {
                    if let Err(e) = sent {
                        failed.push((node, e));
                    }
                    false
                }
                std::task::Poll::Pending => true,
            });
            if sending.is_empty() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        combine(false, failed)
    }

    /// Sends a one-way message without waiting; a full queue is [`SendError::QueueFull`].
    pub fn try_send(
        &self,
        payload: impl Into<Bytes>,
        to: impl Into<Targets>,
    ) -> Result<(), SendError> {
        let frame = encode(KIND_MESSAGE, None, &payload.into());
        let targets = self.shared.node.resolve(to.into())?;
        let single = targets.len() == 1;
        let failed = targets
            .into_iter()
            .filter_map(
                |node| match self.shared.try_send_raw(&node, frame.clone()) {
                    Ok(()) => None,
                    Err(e) => Some((node, e)),
                },
            )
            .collect();
        combine(single, failed)
    }

    /// Sends a request to `node` and waits for its response, at most `timeout` in all
    /// (waiting for room in a full queue included). Cancel-safe: a request given up
    /// (timed out, or its future dropped) leaves nothing behind, and a late response
    /// to it is dropped.
    pub async fn request(
        &self,
        node: &NodeId,
        body: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Bytes, RequestError> {
        let started = Instant::now();
        let body = body.into();
        let result = self
            .shared
            .node
            .pending
            .exchange(node, timeout, |id| {
                let frame = encode(KIND_REQUEST, Some(id), &body);
                self.shared.send_raw(node, &self.shared.app, frame)
            })
            .await;
        self.shared
            .node
            .metrics
            .request(&self.shared.app, started.elapsed(), result.is_ok());
        result
    }

    /// The alive members this application can send to (this node excluded).
    pub fn nodes(&self) -> Vec<NodeId> {
        self.shared.node.alive_peers()
    }
}

impl AppShared {
    pub(crate) fn name(&self) -> &AppId {
        &self.app
    }

    async fn send_raw(&self, node: &NodeId, app: &AppId, frame: Bytes) -> Result<(), SendError> {
        self.node.check_target(node)?;
        let len = frame.len();
        match self.node.quic.send(node, app, frame).await {
            Ok(()) => {
                self.node.metrics.sent(&self.app, len);
                Ok(())
            }
            Err(e) => Err(self.node.send_error(&self.app, e)),
        }
    }

    fn try_send_raw(&self, node: &NodeId, frame: Bytes) -> Result<(), SendError> {
        self.node.check_target(node)?;
        let len = frame.len();
        match self.node.quic.try_send(node, &self.app, frame) {
            Ok(()) => {
                self.node.metrics.sent(&self.app, len);
                Ok(())
            }
            Err(e) => Err(self.node.send_error(&self.app, e)),
        }
    }
}

/// The outcome of one send to its targets: a lone target's error as it is, failures among
/// several targets as [`SendError::Partial`] (the others have the message queued).
fn combine(single: bool, mut failed: Vec<(NodeId, SendError)>) -> Result<(), SendError> {
    match failed.pop() {
        None => Ok(()),
        Some((_, e)) if single => Err(e),
        Some(last) => {
            failed.push(last);
            Err(SendError::Partial { failed })
        }
    }
}

/// Removes a request's entry when the request is done or given up (a completed one was
/// removed already).
struct ForgetOnDrop<'a> {
    pending: &'a PendingRequests,
    id: u64,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.pending.remove(self.id);
    }
}

impl PendingRequests {
    /// One request to `node`: registers it, sends it with `send` (given its ID), and waits
    /// for its response, all within `timeout`. Its entry is gone however this ends (also
    /// when the future is dropped).
    async fn exchange<F>(
        &self,
        node: &NodeId,
        timeout: Duration,
        send: impl FnOnce(u64) -> F,
    ) -> Result<Bytes, RequestError>
    where
        F: Future<Output = Result<(), SendError>>,
    {
        let (id, response) = self.add(node);
        let _forget = ForgetOnDrop { pending: self, id };
        let exchange = async {
            send(id).await?;
            response.await.unwrap_or(Err(RequestError::ShutDown))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(RequestError::Timeout {
                    node: node.clone(),
                    timeout,
                })
            })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Pending>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, node: &NodeId) -> (u64, oneshot::Receiver<Result<Bytes, RequestError>>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, response) = oneshot::channel();
        self.lock().insert(
            id,
            Pending {
                node: node.clone(),
                reply,
            },
        );
        (id, response)
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Completes request `id` if `from` is the node it was sent to.
    fn complete(&self, id: u64, from: &NodeId, result: Result<Bytes, RequestError>) -> bool {
        let pending = {
            let mut map = self.lock();
            match map.get(&id) {
                Some(p) if p.node == *from => map.remove(&id),
                _ => None,
            }
        };
        match pending {
            Some(p) => {
                // The requester may have given up (timed out) in the meantime.
                let _ = p.reply.send(result);
                true
            }
            None => false,
        }
    }

    /// Fails every pending request to `node` (it failed or left).
    pub(crate) fn fail_node(&self, node: &NodeId) {
        self.fail_where(
            |p| p.node == *node,
            |p| RequestError::NodeGone {
                node: p.node.clone(),
            },
        );
    }

    /// Fails every pending request (the node shuts down).
    pub(crate) fn fail_all(&self) {
        self.fail_where(|_| true, |_| RequestError::ShutDown);
    }

    fn fail_where(
        &self,
        which: impl Fn(&Pending) -> bool,
        error: impl Fn(&Pending) -> RequestError,
    ) {
        let failed: Vec<Pending> = {
            let mut map = self.lock();
            let ids: Vec<u64> = map
                .iter()
                .filter(|(_, p)| which(p))
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| map.remove(id)).collect()
        };
        for p in failed {
            let e = error(&p);
            let _ = p.reply.send(Err(e));
        }
    }
}

/// Reads the node's reply channel: completes pending requests, never blocks on a handler.
pub(crate) async fn read_replies(node: Weak<Shared>, mut replies: AppReceiver) {
    while let Some((from, mut frame)) = replies.recv().await {
        let Some(node) = node.upgrade() else { break };
        let app = node.reply_app.clone();
        if frame.is_empty() {
            node.drop_frame(&app, &from, "empty reply");
            continue;
        }
        let kind = frame.get_u8();
        let Some((id, body)) = split_id(frame) else {
            node.drop_frame(&app, &from, "short reply");
            continue;
        };
        let result = match kind {
            KIND_RESPONSE => Ok(body),
            KIND_NO_RESPONSE => Err(RequestError::NoResponse { node: from.clone() }),
            _ => {
                node.drop_frame(&app, &from, "unknown reply kind");
                continue;
            }
        };
        // Only the node that was asked can answer.
        if !node.pending.complete(id, &from, result) {
            node.drop_frame(&app, &from, "unexpected reply");
        }
    }
}

fn encode(kind: u8, id: Option<u64>, body: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(1 + ID_LEN + body.len());
    buf.put_u8(kind);
    if let Some(id) = id {
        buf.put_u64_le(id);
    }
    buf.put_slice(body);
    buf.freeze()
}

/// Splits `[kind][u64 id]` off a frame; `None` if it is too short.
fn split_id(mut frame: Bytes) -> Option<(u64, Bytes)> {
    (frame.len() >= ID_LEN).then(|| (frame.get_u64_le(), frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request's entry is gone however it ends: answered, timed out while its send
    /// waits for queue room, or dropped (an outer timeout, a `select!`).
    #[tokio::test]
    async fn a_request_leaves_no_pending_entry_however_it_ends() {
        let pending = PendingRequests::default();
        let node = NodeId::new("n").expect("id");
        let short = Duration::from_millis(10);

        let waits_for_room = pending.exchange(&node, short, |_| std::future::pending());
        assert!(matches!(
            waits_for_room.await,
            Err(RequestError::Timeout { .. })
        ));
        assert!(pending.lock().is_empty());

        let unanswered = pending.exchange(&node, Duration::from_secs(60), |_| async { Ok(()) });
        assert!(tokio::time::timeout(short, unanswered).await.is_err());
        assert!(pending.lock().is_empty());

        let answered = pending.exchange(&node, Duration::from_secs(60), |id| {
            let done = pending.complete(id, &node, Ok(Bytes::from_static(b"yes")));
            async move {
                assert!(done);
                Ok(())
            }
        });
        assert_eq!(answered.await, Ok(Bytes::from_static(b"yes")));
        assert!(pending.lock().is_empty());
    }

    #[test]
    fn frames_have_the_documented_layout() {
        assert_eq!(&encode(KIND_MESSAGE, None, b"hi")[..], b"\x00hi");
        assert_eq!(
            &encode(KIND_REQUEST, Some(258), b"q")[..],
            b"\x01\x02\x01\x00\x00\x00\x00\x00\x00q"
        );
        let mut f = encode(KIND_RESPONSE, Some(7), b"r");
        assert_eq!(f.get_u8(), KIND_RESPONSE);
        assert_eq!(split_id(f), Some((7, Bytes::from_static(b"r"))));
        assert_eq!(split_id(Bytes::from_static(b"short")), None);
    }
}
