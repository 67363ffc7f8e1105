//! What the RESP front and the admin API share: the [`Mycel`] handle, this node's
//! identity and addresses, flags and metrics.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use mycel::Mycel;

use crate::metrics::Metrics;
use crate::resp::parse::RequestLimits;

/// This node as the admin API and `INFO` describe it.
#[derive(Debug, Clone)]
pub(crate) struct NodeInfo {
    /// The node's ID.
    pub(crate) id: String,
    /// The cluster's name.
    pub(crate) cluster: String,
    /// Gossip address: bound by the node in cluster mode, as configured with --standalone.
    pub(crate) gossip_addr: SocketAddr,
    /// QUIC address: bound by the node in cluster mode, as configured with --standalone.
    pub(crate) quic_addr: SocketAddr,
    /// The bound RESP address.
    pub(crate) resp_addr: SocketAddr,
    /// The bound admin address.
    pub(crate) admin_addr: SocketAddr,
    /// Configured replication factor.
    pub(crate) replicas: u8,
    /// Number of partitions.
    pub(crate) partitions: u32,
    /// Whether the node was started with `--dev`.
    pub(crate) dev: bool,
}

/// Server-wide state, shared by every connection and the admin API.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The data.
    pub(crate) mycel: Mycel,
    /// Who and where this node is.
    pub(crate) node: NodeInfo,
    /// Prometheus series.
    pub(crate) metrics: Metrics,
    /// Request size limits for RESP connections.
    pub(crate) limits: RequestLimits,
    /// When the server started.
    pub(crate) started: Instant,
    /// True once every listener is bound and the server accepts clients; false again
    /// when shutdown begins.
    pub(crate) serving: AtomicBool,
    /// Maintenance (freeze) mode: partitions do not move. Reported by `/ready` and
    /// `/partitions`.
    pub(crate) maintenance: AtomicBool,
    next_client_id: AtomicU64,
}

impl Shared {
    pub(crate) fn new(mycel: Mycel, node: NodeInfo, limits: RequestLimits) -> Self {
        Self {
            metrics: Metrics::new(),
            mycel,
            node,
            limits,
            started: Instant::now(),
            serving: AtomicBool::new(false),
            maintenance: AtomicBool::new(false),
            next_client_id: AtomicU64::new(1),
        }
    }

    /// A fresh client ID (`CLIENT ID`), unique for the process's lifetime.
    pub(crate) fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether the server is serving.
    pub(crate) fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }

    /// Whether maintenance mode is on.
    /// Whether maintenance mode holds: set here, or (cluster mode) by any member, since
    /// one frozen member pauses migrations cluster-wide.
    pub(crate) fn in_maintenance(&self) -> bool {
        self.maintenance.load(Ordering::Acquire)
            || self.mycel.cluster().is_some_and(|c| c.status().frozen)
    }

    /// Clients connected now.
    pub(crate) fn clients(&self) -> i64 {
        self.metrics.connections.get()
    }
}
