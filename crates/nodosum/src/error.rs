//! Errors of the facade.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use nodosum_proto::{AppId, IdError, NodeId};

use crate::config::ConfigError;

/// Starting a node or registering an application failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid; nothing was bound.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The development CA directory cannot be read or written.
    #[error("development CA in {dir}: {source}")]
    DevCa {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS material is unusable.
    #[error("tls: {0}")]
    Tls(#[from] nodosum_quic::TlsError),
    /// The certificate names another node than `node_id`.
    #[error("tls.cert names node {cert}, but node_id is {config}")]
    IdentityMismatch {
        /// `node_id` from the configuration.
        config: NodeId,
        /// The identity in the certificate.
        cert: NodeId,
    },
    /// The QUIC endpoint could not start.
    #[error("quic.bind {addr}: {source}")]
    Quic {
        /// The address it tried to bind.
        addr: SocketAddr,
        /// Why.
        source: nodosum_quic::Error,
    },
    /// The gossip socket could not start.
    #[error("gossip.bind {addr}: {source}")]
    Gossip {
        /// The address it tried to bind.
        addr: SocketAddr,
        /// Why.
        source: nodosum_gossip::Error,
    },
    /// A discovery backend could not be built from its configuration.
    #[error("discovery: {0}")]
    Discovery(#[from] nodosum_discovery::Error),
    /// The application name is not a valid app ID.
    #[error("invalid application name: {0}")]
    InvalidAppName(#[source] IdError),
    /// Names starting with `_nodosum/` are reserved for the node's own channels.
    #[error("application name {0} is reserved")]
    ReservedAppName(String),
    /// An application of this name is already registered on this node.
    #[error("application {0} is already registered")]
    AppExists(AppId),
    /// Not called inside a tokio runtime.
    #[error("no tokio runtime: start the node inside a multi-thread tokio runtime")]
    NoRuntime,
    /// The node is shut down.
    #[error("node is shut down")]
    ShutDown,
}

/// A message was not queued for (or, after queuing, not delivered to) a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The node is not an alive member of the cluster.
    #[error("unknown node {node}")]
    UnknownNode {
        /// The node.
        node: NodeId,
    },
    /// `try_send` only: the queue to the node is full; nothing was queued.
    #[error("send queue to {node} is full")]
    QueueFull {
        /// The node.
        node: NodeId,
    },
    /// The node failed or left; queued messages to it were dropped.
    #[error("node {node} is gone")]
    NodeGone {
        /// The node.
        node: NodeId,
    },
    /// The node has no application of this name; messages queued for it were dropped.
    #[error("node {node} has no application {app}")]
    NotRegistered {
        /// The node.
        node: NodeId,
        /// The application.
        app: AppId,
    },
    /// The payload (with the request header, where there is one) exceeds the size limit.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// This node is shutting down.
    #[error("node is shut down")]
    ShutDown,
    /// Sending to several nodes failed for some of them; the others have it queued.
    #[error("send failed for {} of the target nodes", failed.len())]
    Partial {
        /// The nodes it failed for, with why.
        failed: Vec<(NodeId, Self)>,
    },
}

/// A request got no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The request could not be sent.
    #[error(transparent)]
    Send(#[from] SendError),
    /// No response within the timeout. The handler may still have run.
    #[error("no response from {node} within {timeout:?}")]
    Timeout {
        /// The node asked.
        node: NodeId,
        /// The timeout that elapsed.
        timeout: Duration,
    },
    /// The node failed or left before it responded. The handler may have run.
    #[error("node {node} is gone")]
    NodeGone {
        /// The node asked.
        node: NodeId,
    },
    /// The node's application dropped the request without responding.
    #[error("node {node} dropped the request without a response")]
    NoResponse {
        /// The node asked.
        node: NodeId,
    },
    /// This node is shutting down.
    #[error("node is shut down")]
    ShutDown,
}

/// `e` with its causes, as one line (`e: cause: its cause`); a cause whose text the
/// message already contains is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("binding --quic")]
        Bind(#[source] std::io::Error),
        #[error("reading ca.pem: {0}")]
        Read(#[source] std::io::Error),
    }

    #[test]
    fn causes_are_appended_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::AddrInUse, "address in use");
        assert_eq!(
            error_chain(&Outer::Bind(io())),
            "binding --quic: address in use"
        );
        // A message that already shows its cause does not repeat it.
        assert_eq!(
            error_chain(&Outer::Read(io())),
            "reading ca.pem: address in use"
        );
    }
}
