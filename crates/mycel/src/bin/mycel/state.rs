//! What the RESP front and the admin API share: the [`Mycel`] handle, this node's
//! identity and addresses, flags and metrics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use mycel::Mycel;
use tokio::sync::Notify;

use crate::auth::{Password, Secret};
use crate::metrics::Metrics;
use crate::resp::cmd::KillFilter;
use crate::resp::parse::RequestLimits;
use crate::slowlog::{SlowLog, SlowLogConfig};

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
    /// Its RESP-over-TLS address (`--resp-tls`), if it has one.
    pub(crate) resp_tls_addr: Option<SocketAddr>,
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
    /// The commands that took longest (`SLOWLOG`).
    pub(crate) slowlog: SlowLog,
    /// The password clients must authenticate with (`--requirepass`), if any.
    pub(crate) requirepass: Secret,
    /// The token the admin API's non-probe endpoints need (`--admin-token-file`), if any.
    pub(crate) admin_token: Secret,
    /// When the server started.
    pub(crate) started: Instant,
    /// True once every listener is bound and the server accepts clients; false again
    /// when shutdown begins.
    pub(crate) serving: AtomicBool,
    /// Maintenance (freeze) mode: partitions do not move. Reported by `/ready` and
    /// `/partitions`.
    pub(crate) maintenance: AtomicBool,
    next_client_id: AtomicU64,
    /// The connected clients, for `CLIENT LIST`.
    clients: Arc<Mutex<BTreeMap<u64, Client>>>,
}

/// A connected client as `CLIENT INFO` and `CLIENT LIST` describe it.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    /// The client's address.
    pub(crate) addr: SocketAddr,
    /// The address it connected to.
    pub(crate) laddr: SocketAddr,
    /// When it connected, and what it did last.
    pub(crate) activity: Arc<Activity>,
    /// Pulled by `CLIENT KILL` from another connection.
    pub(crate) kill: Arc<KillSwitch>,
    /// `CLIENT SETNAME`.
    pub(crate) name: Option<Bytes>,
    /// `CLIENT SETINFO LIB-NAME`.
    pub(crate) lib_name: Option<Bytes>,
    /// `CLIENT SETINFO LIB-VER`.
    pub(crate) lib_ver: Option<Bytes>,
    /// Protocol version: 2, or 3 after `HELLO 3`.
    pub(crate) resp: u8,
}

impl Client {
    /// A new connection's entry.
    pub(crate) fn new(addr: SocketAddr, laddr: SocketAddr) -> Self {
        Self {
            addr,
            laddr,
            activity: Arc::new(Activity {
                since: Instant::now(),
                last_ms: AtomicU64::new(0),
                cmd: Mutex::new("NULL"),
            }),
            kill: Arc::default(),
            name: None,
            lib_name: None,
            lib_ver: None,
            resp: 2,
        }
    }

    /// Its line of `CLIENT LIST`, with Redis's field names (those Mycel has).
    pub(crate) fn line(&self, id: u64, out: &mut String) {
        let text = |v: &Option<Bytes>| {
            v.as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned()
        };
        // Writing into a String cannot fail.
        let a = &self.activity;
        let age_ms = a.since.elapsed().as_millis();
        let idle_ms = age_ms.saturating_sub(u128::from(a.last_ms.load(Ordering::Relaxed)));
        let cmd = *a.cmd.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = writeln!(
            out,
            "id={id} addr={} laddr={} name={} age={} idle={} flags=N db=0 cmd={cmd} user=default resp={} lib-name={} lib-ver={}",
            self.addr,
            self.laddr,
            text(&self.name),
            age_ms / 1000,
            idle_ms / 1000,
            self.resp,
            text(&self.lib_name),
            text(&self.lib_ver),
        );
    }
}

/// When a connection started and what it did last: written by its task, read by
/// `CLIENT LIST` (`age`, `idle`, `cmd`).
#[derive(Debug)]
pub(crate) struct Activity {
    since: Instant,
    /// Milliseconds from `since` to the last read that brought requests.
    last_ms: AtomicU64,
    /// The last command's name (`NULL` before the first, as in Redis).
    cmd: Mutex<&'static str>,
}

impl Activity {
    /// The connection read requests now.
    pub(crate) fn touch(&self) {
        let ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// It runs `cmd` now; `last` is what this connection stored before (the lock is
    /// taken only when the name changes).
    pub(crate) fn command(&self, last: &mut &'static str, cmd: &'static str) {
        if *last != cmd {
            *last = cmd;
            *self.cmd.lock().unwrap_or_else(PoisonError::into_inner) = cmd;
        }
    }
}

/// How `CLIENT KILL` on one connection closes another, whichever thread serves it.
#[derive(Debug, Default)]
pub(crate) struct KillSwitch {
    pulled: AtomicBool,
    notify: Notify,
}

impl KillSwitch {
    /// Closes the connection: it sends nothing more (not even the replies it is
    /// preparing), as Redis drops a killed client's pending output.
    fn pull(&self) {
        self.pulled.store(true, Ordering::Release);
        // A permit is kept when the connection is not waiting right now.
        self.notify.notify_one();
    }

    /// Whether the connection was killed.
    pub(crate) fn pulled(&self) -> bool {
        self.pulled.load(Ordering::Acquire)
    }

    /// Completes once the connection was killed. One future serves the whole life of a
    /// connection: it registers once, not at every read.
    pub(crate) fn wait(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

/// A client's entry in the list of connected clients, removed when this is dropped (when
/// its connection ends).
#[derive(Debug)]
pub(crate) struct Registration {
    id: u64,
    clients: Arc<Mutex<BTreeMap<u64, Client>>>,
}

impl Registration {
    /// The client's ID (`CLIENT ID`).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Changes the client's entry.
    pub(crate) fn update(&self, f: impl FnOnce(&mut Client)) {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = clients.get_mut(&self.id) {
            f(c);
        }
    }

    /// A copy of the client's entry.
    pub(crate) fn get(&self) -> Option<Client> {
        let clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        clients.get(&self.id).cloned()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        clients.remove(&self.id);
    }
}

impl Shared {
    pub(crate) fn new(
        mycel: Mycel,
        node: NodeInfo,
        limits: RequestLimits,
        slowlog: SlowLogConfig,
        (requirepass, admin_token): (Option<Password>, Option<Password>),
    ) -> Self {
        Self {
            requirepass: Secret::new(requirepass),
            admin_token: Secret::new(admin_token),
            metrics: Metrics::new(),
            mycel,
            node,
            limits,
            slowlog: SlowLog::new(slowlog),
            started: Instant::now(),
            serving: AtomicBool::new(false),
            maintenance: AtomicBool::new(false),
            next_client_id: AtomicU64::new(1),
            clients: Arc::default(),
        }
    }

    /// Registers a new connection under a fresh client ID (`CLIENT ID`), unique for the
    /// process's lifetime; it is listed until the registration is dropped.
    pub(crate) fn register_client(&self, client: Client) -> Registration {
        let id = self.next_client_id.fetch_add(1, Ordering::Relaxed);
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        clients.insert(id, client);
        Registration {
            id,
            clients: self.clients.clone(),
        }
    }

    /// `CLIENT LIST`: every connected client, or those of `ids` in their order (an ID
    /// given twice is listed twice, as in Redis), one line each.
    pub(crate) fn client_list(&self, ids: Option<&[i64]>) -> String {
        let clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        match ids {
            None => {
                for (&id, c) in clients.iter() {
                    c.line(id, &mut out);
                }
            }
            Some(ids) => {
                for id in ids.iter().filter_map(|&id| u64::try_from(id).ok()) {
                    if let Some(c) = clients.get(&id) {
                        c.line(id, &mut out);
                    }
                }
            }
        }
        out
    }

    /// `CLIENT KILL` from connection `me`: closes every other connection that `filter`
    /// matches and takes it out of the list at once. Returns how many matched, and
    /// whether `me` matched too (then the caller closes itself after its reply).
    pub(crate) fn kill_clients(&self, filter: &KillFilter, me: u64) -> (usize, bool) {
        if filter.none {
            return (0, false);
        }
        let text_is = |want: &Option<Bytes>, addr: &SocketAddr| {
            want.as_ref()
                .is_none_or(|w| w.as_ref() == addr.to_string().as_bytes())
        };
        let mut killed = 0;
        let mut myself = false;
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        clients.retain(|&id, c| {
            let matches = filter.id.is_none_or(|want| want == id)
                && text_is(&filter.addr, &c.addr)
                && text_is(&filter.laddr, &c.laddr);
            if !matches || (id == me && filter.skip_me) {
                return true;
            }
            killed += 1;
            if id == me {
                myself = true;
                return true;
            }
            c.kill.pull();
            false
        });
        (killed, myself)
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
