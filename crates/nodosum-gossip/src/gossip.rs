//! The tokio shell: a UDP socket and one task driving the [`Core`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use nodosum_proto::{Key, KeyId, Keyring, Member, Metadata};
use prometheus_client::registry::Registry;
use rand::TryRng;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::core::Core;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::table::{MemberState, MembershipEvent};

/// A running gossip node. Dropping it stops the node at once, without announcing a leave
/// (others will detect it as failed); call [`Gossip::leave`] for a graceful exit.
#[derive(Debug)]
pub struct Gossip {
    core: Arc<Mutex<Core>>,
    wake: Arc<Notify>,
    events: broadcast::Sender<MembershipEvent>,
    local_addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Gossip {
    /// Binds the UDP socket, registers metrics under `nodosum_gossip` in `registry`, and
    /// spawns the node's task. The node is alone until [`join`](Self::join) is called (or
    /// another node joins through it).
    ///
    /// Must be called from within a Tokio runtime.
    pub fn start(config: Config, keyring: Keyring, registry: &mut Registry) -> Result<Self, Error> {
        config.validate()?;
        let rt = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let std_socket = bind(&config)?;
        let local_addr = std_socket.local_addr().map_err(|source| Error::Bind {
            addr: config.bind_addr,
            source,
        })?;
        let socket = {
            let _guard = rt.enter();
            UdpSocket::from_std(std_socket).map_err(|source| Error::Bind {
                addr: config.bind_addr,
                source,
            })?
        };
        let incarnation = config.incarnation.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        });
        let member = Member {
            id: config.node_id.clone(),
            gossip_addr: config.advertise_addr.unwrap_or(local_addr),
            quic_port: config.quic_port,
            incarnation,
            metadata: config.metadata.clone(),
        };
        let seed = rand::rngs::SysRng
            .try_next_u64()
            .map_err(|e| Error::Random(e.to_string()))?;
        let metrics = Metrics::default();
        metrics.register(registry);
        let max = config.max_datagram_size;
        let (events, _) = broadcast::channel(config.event_capacity);
        let core = Core::new(config, member, keyring, seed, now(), metrics)?;
        tracing::info!(addr = %local_addr, member = %core.local_member().id, "gossip started");
        let core = Arc::new(Mutex::new(core));
        let wake = Arc::new(Notify::new());
        let task = rt.spawn(run(core.clone(), socket, wake.clone(), events.clone(), max));
        Ok(Self {
            core,
            wake,
            events,
            local_addr,
            task: Some(task),
        })
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This node's identity as others see it.
    pub fn local_member(&self) -> Member {
        self.lock().local_member().clone()
    }

    /// Joins the cluster through any of `seeds` (gossip addresses), retrying with
    /// exponential backoff in the background until one answers. Watch
    /// [`events`](Self::events) or [`num_members`](Self::num_members) for the outcome.
    pub fn join(&self, seeds: Vec<SocketAddr>) {
        self.lock().join(now(), seeds);
        self.wake.notify_one();
    }

    /// Leaves gracefully: tells the cluster, which marks this node `Left` at once, sends
    /// the announcement and stops the task.
    pub async fn leave(mut self) -> Result<(), Error> {
        self.lock().leave(now());
        self.wake.notify_one();
        if let Some(task) = self.task.take() {
            task.await.map_err(|_| Error::Stopped)?;
        }
        Ok(())
    }

    /// A receiver of membership events from now on.
    ///
    /// A receiver that falls more than `event_capacity` events behind gets
    /// [`RecvError::Lagged`](tokio::sync::broadcast::error::RecvError::Lagged); it should
    /// then take [`members`](Self::members) as the truth and carry on.
    pub fn events(&self) -> broadcast::Receiver<MembershipEvent> {
        self.events.subscribe()
    }

    /// Every other member this node knows of, with its state (failed and departed ones
    /// are remembered for `remove_down_after`).
    pub fn members(&self) -> Vec<(Member, MemberState)> {
        self.lock().members()
    }

    /// Alive and suspect members, this node included.
    pub fn num_members(&self) -> usize {
        self.lock().num_members()
    }

    /// Lifeguard local health score: 0 when healthy, up to `max_health_score` while this
    /// node's own probes time out (it then probes more slowly).
    pub fn health_score(&self) -> u32 {
        self.lock().health_score()
    }

    /// Replaces this node's metadata; the change spreads as an `Updated` event carrying
    /// a higher incarnation.
    pub fn update_metadata(&self, metadata: Metadata) -> Result<(), Error> {
        let r = self.lock().update_metadata(now(), metadata);
        self.wake.notify_one();
        r
    }

    /// Installs a key for opening datagrams (step 1 of a rotation, on every node).
    pub fn install_key(&self, key: Key) -> KeyId {
        self.lock().install_key(key)
    }

    /// Seals with an installed key from now on (step 2, on every node).
    pub fn use_key(&self, id: KeyId) -> Result<(), Error> {
        Ok(self.lock().use_key(id)?)
    }

    /// Removes a key that is no longer primary (step 3, on every node).
    pub fn remove_key(&self, id: KeyId) -> Result<(), Error> {
        Ok(self.lock().remove_key(id)?)
    }

    /// Replaces the installed keys at once: `keyring`'s primary seals from now on and only
    /// its keys open. A rotation by whole keyrings takes the same three steps, each on
    /// every node before the next: the old key primary with the new one installed; the new
    /// one primary with the old one installed; the new one alone.
    pub fn set_keyring(&self, keyring: Keyring) {
        self.lock().set_keyring(keyring);
    }

    /// The installed key IDs and the primary one.
    pub fn keys(&self) -> (Vec<KeyId>, KeyId) {
        self.lock().keys()
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        lock(&self.core)
    }
}

impl Drop for Gossip {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    // The core has no invariant a panicking holder could break half-way that matters
    // more than keeping membership running.
    core.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

fn bind(config: &Config) -> Result<std::net::UdpSocket, Error> {
    let addr = config.bind_addr;
    let err = |source| Error::Bind { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    if let Err(e) = socket.set_recv_buffer_size(config.recv_buffer_size) {
        tracing::warn!(error = %e, size = config.recv_buffer_size, "cannot size the gossip receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(config.send_buffer_size) {
        tracing::warn!(error = %e, size = config.send_buffer_size, "cannot size the gossip send buffer");
    }
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    Ok(socket.into())
}

async fn run(
    core: Arc<Mutex<Core>>,
    socket: UdpSocket,
    wake: Arc<Notify>,
    events: broadcast::Sender<MembershipEvent>,
    max_datagram: usize,
) {
    // One byte more than allowed, so an oversized datagram shows as such.
    let mut buf = vec![0u8; max_datagram + 1];
    let mut out = Vec::new();
    loop {
        let (deadline, left) = {
            let mut c = lock(&core);
            while let Some(t) = c.poll_transmit() {
                out.push(t);
            }
            while let Some(e) = c.poll_event() {
                // No receiver is fine: nobody is listening.
                let _ = events.send(e);
            }
            (c.poll_timeout(), c.has_left())
        };
        for t in out.drain(..) {
            if let Err(e) = socket.send_to(&t.bytes, t.dst).await {
                tracing::debug!(dst = %t.dst, error = %e, "gossip send failed");
            }
        }
        if left {
            tracing::info!("left the cluster; gossip stopped");
            return;
        }
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => lock(&core).handle_datagram(now(), from, &buf[..n]),
                // e.g. an ICMP port unreachable reported on the next receive.
                Err(e) => tracing::debug!(error = %e, "gossip receive failed"),
            },
            () = sleep => lock(&core).handle_timeout(now()),
            () = wake.notified() => {}
        }
    }
}
