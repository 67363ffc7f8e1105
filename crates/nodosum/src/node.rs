//! The node: starts gossip, QUIC and discovery from one [`Config`] and wires them together.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use nodosum_discovery::{Candidate, DiscovererHandle, RegistrationHandle};
use nodosum_gossip::{Gossip, MemberState, MembershipEvent};
use nodosum_proto::{AppId, IdError, Keyring, Member, Metadata, NodeId};
use nodosum_quic::{AppOptions, QuicNode, TlsIdentity};
use prometheus_client::registry::Registry;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::app::{
    AppShared, Application, PendingRequests, REPLY_APP, RESERVED_PREFIX, Targets, read_replies,
};
use crate::config::Config;
use crate::dev_ca;
use crate::error::{Error, SendError};
use crate::metrics::Metrics;

/// Something that happened to the cluster or to this node's connections.
#[derive(Debug, Clone)]
pub enum NodeEvent {
    /// A membership change seen by gossip.
    Membership(MembershipEvent),
    /// A QUIC connection change.
    Connection(nodosum_quic::Event),
}

/// A snapshot of the node's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Lifeguard local health: 0 is healthy; it rises while this node's own probes fail.
    pub health_score: u32,
    /// Members (this node included) by state.
    pub members: HashMap<MemberState, usize>,
    /// Peers with an established QUIC connection.
    pub connected_peers: usize,
    /// How discovery's rounds went; `None` when no backend is configured.
    pub discovery: Option<nodosum_discovery::DiscoveryStatus>,
    /// Whether the node is shutting down.
    pub shutting_down: bool,
}

/// A running Nodosum node. See the crate documentation for the lifecycle.
///
/// Dropping it stops everything at once, without a graceful leave (peers detect it as
/// failed); prefer [`Node::shutdown`].
pub struct Node {
    shared: Arc<Shared>,
    gossip: Option<Arc<Gossip>>,
    registry: Arc<Mutex<Registry>>,
    events: broadcast::Sender<NodeEvent>,
    tasks: Vec<JoinHandle<()>>,
    discoverer: Option<DiscovererHandle>,
    registration: Option<RegistrationHandle>,
    gossip_addr: SocketAddr,
    quic_addr: SocketAddr,
    /// `limits.max_app_id_len`: the longest application name streams can carry.
    max_app_id_len: usize,
    /// The configuration the node started with: where its credentials are read from.
    config: Config,
}

impl std::fmt::Debug for Node {
    // Not the configuration: it may hold the gossip keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.shared.id)
            .field("gossip_addr", &self.gossip_addr)
            .field("quic_addr", &self.quic_addr)
            .finish_non_exhaustive()
    }
}

/// What applications share with the node.
pub(crate) struct Shared {
    pub(crate) id: NodeId,
    pub(crate) quic: QuicNode,
    pub(crate) metrics: Metrics,
    /// The internal application that carries every application's responses.
    pub(crate) reply_app: AppId,
    pub(crate) pending: PendingRequests,
    members: RwLock<HashMap<NodeId, Member>>,
    apps: Mutex<HashMap<AppId, Weak<AppShared>>>,
    shutting_down: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

const EVENT_CAPACITY: usize = 1024;

impl Node {
    /// Validates `config`, binds QUIC and gossip, starts discovery and joins the seeds it
    /// finds. Returns once the sockets are bound; joining goes on in the background.
    ///
    /// Must be called inside a multi-thread tokio runtime.
    pub async fn start(config: Config) -> Result<Self, Error> {
        config.validate()?;
        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let (identity, dev_key) = tls_identity(&config)?;
        let cert_id = identity.node_id()?;
        if cert_id != config.node_id {
            return Err(Error::IdentityMismatch {
                config: config.node_id.clone(),
                cert: cert_id,
            });
        }
        let keyring = keyring(&config, dev_key)?;
        // Built (which checks every backend's settings, sending nothing) before anything
        // binds: a bad discovery setting fails the start with nothing left running.
        let backends = config.discovery.build()?;

        // Every crate names its own metrics (`nodosum_gossip_*`, `nodosum_quic_*`,
        // `nodosum_app_*`, `nodosum_discovery_*`); applications add theirs (`mycel_*`).
        let mut registry = Registry::default();
        let quic = QuicNode::bind(quic_config(&config), &identity, Some(&mut registry)).map_err(
            |source| Error::Quic {
                addr: config.quic.bind,
                source,
            },
        )?;
        let quic_bound = quic.local_addr().map_err(|e| Error::Quic {
            addr: config.quic.bind,
            source: e.into(),
        })?;
        let quic_port = config.quic.advertise_port.unwrap_or(quic_bound.port());
        let gossip = Gossip::start(gossip_config(&config, quic_port), keyring, &mut registry)
            .map_err(|source| Error::Gossip {
                addr: config.gossip.bind,
                source,
            })?;
        let gossip = Arc::new(gossip);
        let gossip_addr = gossip.local_member().gossip_addr;

        let reply_app = AppId::new(REPLY_APP).expect("valid app id");
        let replies = quic
            .register_app(reply_app.clone())
            .map_err(|source| Error::Quic {
                addr: config.quic.bind,
                source,
            })?;
        let shared = Arc::new(Shared {
            id: config.node_id.clone(),
            quic,
            metrics: Metrics::register(&mut registry),
            reply_app,
            pending: PendingRequests::default(),
            members: RwLock::new(HashMap::new()),
            apps: Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
        });
        let policy = Arc::downgrade(&shared);
        shared.quic.set_accept_policy(move |id| {
            policy
                .upgrade()
                .is_some_and(|s| s.read_members().contains_key(id))
        });

        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let span = tracing::info_span!("node", id = %config.node_id);
        let mut tasks = vec![
            tokio::spawn(
                follow_membership(
                    Arc::clone(&shared),
                    gossip.events(),
                    Arc::downgrade(&gossip),
                    events.clone(),
                )
                .instrument(span.clone()),
            ),
            tokio::spawn(
                forward_connections(shared.quic.events(), events.clone()).instrument(span.clone()),
            ),
            tokio::spawn(read_replies(Arc::downgrade(&shared), replies).instrument(span.clone())),
        ];

        let registration = match &backends.consul {
            Some(consul)
                if config
                    .discovery
                    .consul
                    .as_ref()
                    .is_some_and(|c| c.register.is_some()) =>
            {
                match consul.spawn_registration() {
                    Ok(registration) => Some(registration),
                    Err(e) => {
                        // Nothing started here outlives the failed start.
                        for task in &tasks {
                            task.abort();
                        }
                        shared.quic.close_now();
                        return Err(e.into());
                    }
                }
            }
            _ => None,
        };
        let discoverer = backends.discovery.map(|backend| {
            let known = Arc::downgrade(&shared);
            let handle = nodosum_discovery::Discoverer::new(
                backend,
                &config.discovery.runner,
                registry.sub_registry_with_prefix("nodosum"),
            )
            .exclude_self(Some(config.node_id.clone()), [gossip_addr])
            .exclude_known(move |c: &Candidate| known.upgrade().is_some_and(|s| s.knows(c)))
            .spawn();
            tasks.push(tokio::spawn(
                join_discovered(handle.subscribe(), Arc::downgrade(&gossip))
                    .instrument(span.clone()),
            ));
            handle
        });
        tracing::info!(
            parent: &span,
            gossip = %gossip_addr,
            quic = %quic_bound,
            cluster = %config.cluster,
            "node started"
        );

        Ok(Self {
            shared,
            gossip: Some(gossip),
            registry: Arc::new(Mutex::new(registry)),
            events,
            tasks,
            discoverer,
            registration,
            gossip_addr,
            quic_addr: SocketAddr::new(gossip_addr.ip(), quic_port),
            max_app_id_len: config.limits.max_app_id_len,
            config,
        })
    }

    /// Reads this node's credentials again from where its configuration names them and
    /// puts them in use, for certificate renewal and key rotation without a restart:
    /// - the TLS files (`tls.ca`, `tls.cert`, `tls.key`; with `tls.development`, the
    ///   development CA), for every handshake from now on, accepted or dialled.
    ///   Connections already open keep the identities they were authenticated with;
    /// - the gossip keys (`gossip.keys`, then the lines of `gossip.key_file`): the first
    ///   seals, all open, and a key no longer listed opens nothing. Rotating a cluster's
    ///   key is three edits of the key file, each followed by a reload of every node
    ///   before the next: add the new key after the old one; move it first; remove the
    ///   old one.
    ///
    /// Everything is read and checked before anything changes: a file that does not load
    /// or a certificate for another node is an error naming the setting at fault, and
    /// the node keeps all its credentials as they were. It reads files, so async code
    /// calls it through `spawn_blocking`.
    pub fn reload_credentials(&self) -> Result<(), Error> {
        self.config.validate()?;
        let (identity, dev_key) = tls_identity(&self.config)?;
        let keyring = keyring(&self.config, dev_key)?;
        let gossip = self.gossip.as_ref().ok_or(Error::ShutDown)?;
        // `validate` checked that the certificate names this node; the files may have
        // changed since.
        match self.shared.quic.set_identity(&identity) {
            Ok(()) => {}
            Err(nodosum_quic::Error::IdentityChanged { current, found }) => {
                return Err(Error::IdentityMismatch {
                    config: current,
                    cert: found,
                });
            }
            Err(nodosum_quic::Error::Tls(e)) => return Err(Error::Tls(e)),
            Err(source) => {
                return Err(Error::Quic {
                    addr: self.config.quic.bind,
                    source,
                });
            }
        }
        let keys = keyring.key_ids().count();
        gossip.set_keyring(keyring);
        tracing::info!(node = %self.shared.id, gossip_keys = keys, "credentials reloaded");
        Ok(())
    }

    /// This node's ID.
    pub fn id(&self) -> &NodeId {
        &self.shared.id
    }

    /// The gossip address other nodes use for this node (seed it to others).
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    /// The QUIC address other nodes dial.
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// Joins the cluster through these gossip addresses, in addition to discovery.
    pub fn join(&self, seeds: Vec<SocketAddr>) {
        if let Some(g) = &self.gossip {
            g.join(seeds);
        }
    }

    /// Registers an application named `name` on this node.
    pub fn application(&self, name: &str) -> Result<Application, Error> {
        self.application_with(name, AppOptions::default())
    }

    /// Like [`application`](Self::application), with transport options. With
    /// [`AppOptions::replay_safe`], the application's messages (not its requests and
    /// responses, which travel on an internal application) travel as 0-RTT data when a
    /// connection to a peer is re-established, and may be delivered before the peer's
    /// handshake completed, the peer's answers leaving at once as 0.5-RTT data: use it
    /// only for messages that do no harm when received twice (see `nodosum_quic`'s
    /// documentation). The peer must register the application as replay-safe too, or it
    /// holds such messages until the handshake completes.
    pub fn application_with(&self, name: &str, options: AppOptions) -> Result<Application, Error> {
        if self.shared.shutting_down.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        if name.starts_with(RESERVED_PREFIX) {
            return Err(Error::ReservedAppName(name.to_owned()));
        }
        if name.len() > self.max_app_id_len {
            return Err(Error::InvalidAppName(IdError::TooLong {
                len: name.len(),
                max: self.max_app_id_len,
            }));
        }
        let app = AppId::new(name).map_err(Error::InvalidAppName)?;
        let data = self
            .shared
            .quic
            .register_app_with(app.clone(), options)
            .map_err(|e| match e {
                nodosum_quic::Error::AppRegistered(app) => Error::AppExists(app),
                nodosum_quic::Error::Closed => Error::ShutDown,
                other => Error::Quic {
                    addr: self.quic_addr,
                    source: other,
                },
            })?;
        Ok(Application::new(Arc::clone(&self.shared), app, data))
    }

    /// Every member gossip knows, this node first, with its state.
    pub fn members(&self) -> Vec<(Member, MemberState)> {
        let Some(g) = &self.gossip else {
            return Vec::new();
        };
        let mut all = vec![(g.local_member(), MemberState::Alive)];
        all.extend(
            g.members()
                .into_iter()
                .filter(|(m, _)| m.id != self.shared.id),
        );
        all
    }

    /// The alive peers (this node excluded).
    pub fn peers(&self) -> Vec<NodeId> {
        self.shared.alive_peers()
    }

    /// This node's current gossip identity.
    pub fn local_member(&self) -> Option<Member> {
        self.gossip.as_ref().map(|g| g.local_member())
    }

    /// Changes this node's gossip metadata; others see an `Updated` event.
    pub fn update_metadata(&self, metadata: Metadata) -> Result<(), Error> {
        let gossip = self.gossip.as_ref().ok_or(Error::ShutDown)?;
        gossip
            .update_metadata(metadata)
            .map_err(|source| Error::Gossip {
                addr: self.gossip_addr,
                source,
            })
    }

    /// Membership and connection events from now on. Events are a notification, not a
    /// log: a slow subscriber can lag (its receiver says how many it missed), and when the
    /// node itself misses gossip events it resynchronises its members without replaying
    /// them. [`members`](Self::members) is the current state.
    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    /// Health score, members by state, connected peers.
    pub fn health(&self) -> Health {
        let mut members = HashMap::new();
        for (_, state) in self.members() {
            *members.entry(state).or_default() += 1;
        }
        Health {
            health_score: self.gossip.as_ref().map_or(0, |g| g.health_score()),
            members,
            connected_peers: self
                .shared
                .alive_peers()
                .iter()
                .filter(|p| self.shared.quic.connection_info(p).is_some())
                .count(),
            discovery: self.discoverer.as_ref().map(DiscovererHandle::status),
            shutting_down: self.shared.shutting_down.load(Ordering::Acquire),
        }
    }

    /// Counts of QUIC connections and streams (for leak checks and dashboards).
    pub fn transport_counts(&self) -> nodosum_quic::Counts {
        self.shared.quic.counts()
    }

    /// Registers more metrics (an application's) in the node's registry.
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        f(&mut self.registry.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// All metrics in the Prometheus text exposition format.
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        // Encoding into a String only fails if the String's `fmt::Write` fails, which it
        // does not.
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String");
        out
    }

    /// Leaves gracefully: deregisters from Consul, stops following membership, lets
    /// outgoing streams drain for at most `drain` (until each peer has read everything
    /// sent to it), closes the connections, and then announces the leave over gossip.
    /// Draining comes first because a peer that learns of the leave disconnects at once,
    /// which would drop what it had not read yet. Meanwhile (up to twice `drain`: the
    /// drain, then waiting for the closes to be acknowledged) peers still count this node
    /// alive: sends to it fail or are lost, requests to it time out, and they may redial
    /// it. Dropped before it completes, the shutdown announces nothing, and peers detect
    /// the node as failed.
    pub async fn shutdown(mut self, drain: Duration) {
        self.shared.shutting_down.store(true, Ordering::Release);
        self.shared.pending.fail_all();
        if let Some(r) = self.registration.take()
            && let Err(e) = r.shutdown().await
        {
            tracing::warn!(error = %e, "consul deregistration failed");
        }
        if let Some(d) = self.discoverer.take() {
            d.shutdown().await;
        }
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        self.shared.quic.close(drain).await;
        if let Some(gossip) = self.gossip.take() {
            match Arc::try_unwrap(gossip) {
                Ok(gossip) => {
                    if let Err(e) = gossip.leave().await {
                        tracing::warn!(error = %e, "graceful leave failed");
                    }
                }
                Err(_) => tracing::warn!("gossip still in use; stopped without a leave"),
            }
        }
        tracing::info!(id = %self.shared.id, "node shut down");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shared.shutting_down.store(true, Ordering::Release);
        self.shared.pending.fail_all();
        for task in &self.tasks {
            task.abort();
        }
        // Applications and senders still held elsewhere keep the transport alive;
        // nothing follows membership any more, so it closes now.
        self.shared.quic.close_now();
    }
}

impl Shared {
    fn read_members(&self) -> std::sync::RwLockReadGuard<'_, HashMap<NodeId, Member>> {
        self.members.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_members(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<NodeId, Member>> {
        self.members.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_apps(&self) -> std::sync::MutexGuard<'_, HashMap<AppId, Weak<AppShared>>> {
        self.apps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn knows(&self, c: &Candidate) -> bool {
        let members = self.read_members();
        c.node_id
            .as_ref()
            .is_some_and(|id| members.contains_key(id))
            || members.values().any(|m| m.gossip_addr == c.gossip_addr)
    }

    pub(crate) fn register_app(&self, app: &Arc<AppShared>) {
        self.lock_apps()
            .insert(app.name().clone(), Arc::downgrade(app));
    }

    pub(crate) fn unregister_app(&self, app: &AppId) {
        self.lock_apps().remove(app);
    }

    pub(crate) fn alive_peers(&self) -> Vec<NodeId> {
        let mut peers: Vec<NodeId> = self.read_members().keys().cloned().collect();
        peers.sort();
        peers
    }

    /// The nodes `targets` names now (maybe none: `All` without other members). A node
    /// shutting down refuses whatever the targets, even none.
    pub(crate) fn resolve(&self, targets: Targets) -> Result<Vec<NodeId>, SendError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(SendError::ShutDown);
        }
        Ok(match targets {
            Targets::Node(n) => vec![n],
            Targets::Nodes(mut n) => {
                let mut seen = std::collections::HashSet::with_capacity(n.len());
                n.retain(|node| seen.insert(node.clone()));
                n
            }
            Targets::All => self.alive_peers(),
        })
    }

    /// Whether `node` can be sent to now.
    pub(crate) fn check_target(&self, node: &NodeId) -> Result<(), SendError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(SendError::ShutDown);
        }
        if !self.read_members().contains_key(node) {
            return Err(SendError::UnknownNode { node: node.clone() });
        }
        Ok(())
    }

    /// Counts and logs a malformed frame.
    pub(crate) fn drop_frame(&self, app: &AppId, from: &NodeId, why: &'static str) {
        self.metrics.dropped(app, why);
        tracing::debug!(%app, %from, why, "dropped a malformed application frame");
    }

    /// Maps a transport send error, counting it.
    pub(crate) fn send_error(&self, app: &AppId, e: nodosum_quic::SendError) -> SendError {
        use nodosum_quic::SendError as Q;
        let (reason, err) = match e {
            Q::UnknownPeer { node } => ("unknown_node", SendError::UnknownNode { node }),
            Q::QueueFull { node, .. } => ("queue_full", SendError::QueueFull { node }),
            Q::PeerGone { node } => ("node_gone", SendError::NodeGone { node }),
            Q::UnknownApplication { node, app } => {
                ("not_registered", SendError::NotRegistered { node, app })
            }
            Q::MessageTooLarge { len, max } => {
                ("too_large", SendError::MessageTooLarge { len, max })
            }
            Q::Closed => ("shut_down", SendError::ShutDown),
        };
        self.metrics.send_error(app, reason);
        err
    }

    fn member_up(&self, member: &Member) {
        if member.id == self.id {
            return;
        }
        self.write_members()
            .insert(member.id.clone(), member.clone());
        self.quic.connect(member.id.clone(), member.quic_addr());
    }

    fn member_down(&self, member: &Member) {
        if member.id == self.id {
            return;
        }
        self.write_members().remove(&member.id);
        self.quic.disconnect(&member.id);
        self.pending.fail_node(&member.id);
    }

    /// Rebuilds the member view from gossip's (after missing events): members gossip no
    /// longer lists are down too.
    fn resync(&self, gossip: &Gossip) {
        let listed = gossip.members();
        for (member, state) in &listed {
            if state.is_active() {
                self.member_up(member);
            } else {
                self.member_down(member);
            }
        }
        let gone: Vec<Member> = self
            .read_members()
            .values()
            .filter(|m| !listed.iter().any(|(l, _)| l.id == m.id))
            .cloned()
            .collect();
        for member in &gone {
            self.member_down(member);
        }
    }
}

/// Turns membership into connections: a member that is alive gets connected (both sides
/// ask; the transport keeps exactly one connection per pair), one that fails or leaves is
/// disconnected and its pending requests fail.
async fn follow_membership(
    shared: Arc<Shared>,
    mut rx: broadcast::Receiver<MembershipEvent>,
    gossip: Weak<Gossip>,
    events: broadcast::Sender<NodeEvent>,
) {
    if let Some(g) = gossip.upgrade() {
        shared.resync(&g);
    }
    loop {
        match rx.recv().await {
            Ok(event) => {
                match &event {
                    MembershipEvent::Joined(m)
                    | MembershipEvent::Updated(m)
                    | MembershipEvent::Alive(m) => {
                        tracing::debug!(member = %m.id, "member up");
                        shared.member_up(m);
                    }
                    MembershipEvent::Suspect(m) => {
                        tracing::debug!(member = %m.id, "member suspect");
                    }
                    MembershipEvent::Failed(m) | MembershipEvent::Left(m) => {
                        tracing::info!(member = %m.id, ?event, "member down");
                        shared.member_down(m);
                    }
                }
                let _ = events.send(NodeEvent::Membership(event));
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "membership events lagged; resynchronising");
                // The events still queued are older than the snapshot below: skipped, so
                // that none of them undoes it.
                rx = rx.resubscribe();
                match gossip.upgrade() {
                    Some(g) => shared.resync(&g),
                    None => break,
                }
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}

async fn forward_connections(
    mut rx: broadcast::Receiver<nodosum_quic::Event>,
    events: broadcast::Sender<NodeEvent>,
) {
    loop {
        match rx.recv().await {
            Ok(event) => {
                let _ = events.send(NodeEvent::Connection(event));
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "connection events lagged; some were not forwarded"
                );
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}

async fn join_discovered(
    mut seeds: tokio::sync::watch::Receiver<Arc<[Candidate]>>,
    gossip: Weak<Gossip>,
) {
    loop {
        let addrs: Vec<SocketAddr> = seeds
            .borrow_and_update()
            .iter()
            .map(|c| c.gossip_addr)
            .collect();
        if !addrs.is_empty() {
            let Some(g) = gossip.upgrade() else { break };
            tracing::debug!(?addrs, "joining discovered seeds");
            g.join(addrs);
        }
        if seeds.changed().await.is_err() {
            break;
        }
    }
}

fn tls_identity(config: &Config) -> Result<(TlsIdentity, Option<nodosum_proto::Key>), Error> {
    let tls = &config.tls;
    if tls.development {
        let dir = tls.dev_ca_dir.clone().unwrap_or_else(dev_ca::default_dir);
        let ca = dev_ca::load_or_create(&dir)?;
        Ok((ca.issue(&config.node_id)?, Some(dev_ca::gossip_key(&ca))))
    } else {
        // `validate` made sure all three are set.
        let (Some(ca), Some(cert), Some(key)) = (&tls.ca, &tls.cert, &tls.key) else {
            unreachable!("validated: tls.ca, tls.cert and tls.key are set")
        };
        Ok((TlsIdentity::from_pem_files(ca, cert, key)?, None))
    }
}

fn keyring(config: &Config, dev_key: Option<nodosum_proto::Key>) -> Result<Keyring, Error> {
    let keys = config
        .gossip_keys()
        .map_err(|problems| crate::ConfigError { problems })?;
    let mut keys = keys.into_iter().chain(dev_key);
    // `validate` requires a key outside development, and development supplies one.
    let primary = keys.next().ok_or_else(|| crate::ConfigError {
        problems: vec![crate::Problem {
            field: "gossip.keys".into(),
            message: "required".into(),
        }],
    })?;
    let mut ring = Keyring::new(primary);
    for key in keys {
        ring.install(key);
    }
    Ok(ring)
}

fn quic_config(config: &Config) -> nodosum_quic::Config {
    let q = &config.quic;
    nodosum_quic::Config {
        bind_addr: q.bind,
        alpn: q.alpn.as_bytes().to_vec(),
        udp_send_buffer: q.udp_buffer_bytes,
        udp_recv_buffer: q.udp_buffer_bytes,
        max_idle_timeout: q.max_idle_timeout,
        keep_alive_interval: q.keep_alive_interval,
        handshake_timeout: q.handshake_timeout,
        max_concurrent_bidi_streams: q.max_concurrent_bidi_streams,
        limits: config.limits.into(),
        send_queue_len: q.send_queue_len,
        congestion: q.congestion,
        max_ack_delay: q.max_ack_delay,
        ..nodosum_quic::Config::default()
    }
}

fn gossip_config(config: &Config, quic_port: u16) -> nodosum_gossip::Config {
    let g = &config.gossip;
    let mut c = g.timings(config.node_id.clone());
    c.cluster_name.clone_from(&config.cluster);
    c.bind_addr = g.bind;
    c.advertise_addr = g.advertise;
    c.quic_port = quic_port;
    c
}
