//! Seed discovery for Nodosum: where a node finds other nodes to join through.
//!
//! A [`Discovery`] backend answers "which nodes could I join through right now?" with
//! [`Candidate`]s: a gossip address, plus the node ID and QUIC port where the backend knows
//! them. The [`Discoverer`] asks a backend periodically, drops this node and members it
//! already knows, publishes the rest on a `watch` channel and reports metrics.
//!
//! | backend | source | node ID / QUIC port |
//! | --- | --- | --- |
//! | [`StaticDiscovery`] | `[id@]host:port` list, names resolved every round | ID from `id@` |
//! | [`DnsDiscovery`], [`DnsMode::Browse`] | DNS-SD: PTR → SRV + TXT → A/AAAA | TXT `id=`, `quic=` |
//! | [`DnsDiscovery`], [`DnsMode::Srv`] | one name's SRV records (Kubernetes headless Service) | no |
//! | [`ConsulDiscovery`] | `GET /v1/health/service/<name>?passing=true` | `Service.Meta` |
//! | [`Multi`] | several of the above, merged by gossip address | from any |
//!
//! What this crate is not: it joins, probes and connects to nothing; it only finds
//! addresses. Once a node has joined, gossip carries membership and discovery only helps
//! heal partitions and restarts.
//!
//! # Errors and partial answers
//!
//! [`Discovery::discover`] returns `Err` when the backend could not answer at all this round
//! (DNS server unreachable, Consul 5xx / 403 / timeout, no static entry resolved). Answers it
//! could not use are dropped one by one, logged, and listed in [`Discovered::skipped`] with
//! their typed reason (an SRV target without address, TXT garbage, a Consul entry without
//! address, one static name that does not resolve, one backend of a [`Multi`] that is down).
//! The [`Discoverer`] never stops on errors and never wipes the seeds it published: it keeps
//! them, counts the error and retries with exponential backoff.
//!
//! # Using it (the facade's side)
//!
//! ```no_run
//! # async fn example() -> Result<(), nodosum_discovery::Error> {
//! use std::collections::HashSet;
//! use std::net::SocketAddr;
//! use std::sync::{Arc, RwLock};
//!
//! use nodosum_discovery::{Discoverer, DiscoveryConfig};
//! use prometheus_client::registry::Registry;
//!
//! let config: DiscoveryConfig = Default::default(); // from the node's TOML
//! let backends = config.build()?;
//! let mut registry = Registry::default();
//! let members: Arc<RwLock<HashSet<SocketAddr>>> = Arc::default(); // the gossip view
//! let me: SocketAddr = "10.0.0.1:6969".parse().expect("literal");
//!
//! let registration = match &backends.consul {
//!     Some(consul) => consul.spawn_registration().ok(), // None when not configured
//!     None => None,
//! };
//! if let Some(backend) = backends.discovery {
//!     let known = Arc::clone(&members);
//!     let handle = Discoverer::new(backend, &config.runner, &mut registry)
//!         .exclude_self(None, [me])
//!         .exclude_known(move |c| known.read().expect("lock").contains(&c.gossip_addr))
//!         .spawn();
//!     let mut seeds = handle.subscribe();
//!     while seeds.changed().await.is_ok() {
//!         let fresh = seeds.borrow_and_update().clone();
//!         for candidate in fresh.iter() {
//!             // join through candidate.gossip_addr ...
//!             # let _ = candidate;
//!         }
//!     }
//! }
//! // On graceful shutdown:
//! if let Some(r) = registration {
//!     r.shutdown().await?; // deregisters from Consul
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Configuration
//!
//! Every config struct is serde `Deserialize` with documented defaults; [`DiscoveryConfig`]
//! groups them. Durations are written `"30s"`, `"500ms"`, `"5m"` or as integer seconds.
//!
//! ## The loop ([`DiscovererConfig`])
//!
//! ```toml
//! [discovery]
//! interval = "30s"      # pause after a successful round
//! jitter = 0.1          # +-10 % on every delay
//! retry_initial = "1s"  # first retry after a failed round, doubling...
//! retry_max = "2m"      # ...up to this
//! ```
//!
//! Metrics, registered under `discovery_` in the registry passed to [`Discoverer::new`]
//! (pass `registry.sub_registry_with_prefix("nodosum")` to get `nodosum_discovery_*`):
//! `discovery_rounds_total{backend,outcome}`, `discovery_errors_total{backend,kind}` (a
//! [`Multi`]'s failing members are counted under their own backend name),
//! `discovery_skipped_total{backend,kind}`, `discovery_candidates{backend}`,
//! `discovery_new_candidates{backend}`, `discovery_last_success_timestamp_seconds{backend}`,
//! `discovery_consecutive_failures{backend}`. `kind` is [`Error::kind`].
//!
//! ## Static ([`StaticConfig`])
//!
//! ```toml
//! [discovery.static]
//! seeds = ["10.0.0.1:6969", "node-2@seed-2.example.com:6969", "[fd00::3]:6969"]
//! resolve_timeout = "5s"
//! # nameserver = "10.0.0.53:53"  # ask this DNS server instead of the system resolver
//! ```
//!
//! Names go through the system resolver (`getaddrinfo`), or the configured `nameserver`,
//! at every round, concurrently, so a seed whose
//! name starts resolving later (a pod that got its DNS entry after us) is picked up.
//! A malformed entry is refused at construction with [`Error::InvalidSeed`] naming it.
//!
//! ## DNS-SD ([`DnsConfig`], [`DnsMode::Browse`])
//!
//! ```toml
//! [discovery.dns]
//! mode = "browse"
//! name = "_nodosum._udp.example.com."
//! # nameserver = "10.0.0.53:53"   # default: the system resolver
//! timeout = "5s"
//! attempts = 2
//! ```
//!
//! The zone publishes one instance per node (RFC 6763):
//!
//! ```text
//! _nodosum._udp.example.com.          PTR  node-1._nodosum._udp.example.com.
//! node-1._nodosum._udp.example.com.   SRV  0 0 6969 host-1.example.com.
//! node-1._nodosum._udp.example.com.   TXT  "txtvers=1" "id=node-1" "quic=6970"
//! host-1.example.com.                 A    10.0.0.1
//! ```
//!
//! TXT keys read ([`TXT_KEY_ID`], [`TXT_KEY_QUIC`]), case-insensitive, first occurrence
//! wins, others ignored (RFC 6763 §6.4-6.5):
//!
//! - `id=<node id>`: the node's ID ([`nodosum_proto::NodeId`] rules);
//! - `quic=<port>`: its QUIC port, 1..=65535.
//!
//! A string that is not UTF-8, has an empty key, or an invalid value is skipped
//! ([`Error::MalformedTxt`]); the instance is still used without that value. Several SRV
//! records per instance are ordered by priority, then weight (highest first); every address
//! of every target becomes a candidate.
//!
//! ## Kubernetes headless Service ([`DnsMode::Srv`])
//!
//! ```yaml
//! apiVersion: v1
//! kind: Service
//! metadata:
//!   name: nodosum
//!   namespace: default
//! spec:
//!   clusterIP: None                 # headless: DNS returns the pods themselves
//!   publishNotReadyAddresses: true  # seeds are needed before readiness
//!   selector:
//!     app: nodosum
//!   ports:
//!     - name: gossip
//!       port: 6969
//!       protocol: UDP
//! ```
//!
//! ```toml
//! [discovery.dns]
//! mode = "srv"
//! name = "_gossip._udp.nodosum.default.svc.cluster.local."
//! ```
//!
//! CoreDNS answers one SRV record per pod (`0 100 6969 <pod>.nodosum.default.svc.cluster.local.`)
//! and an A record per target. Node IDs and QUIC ports are not in DNS in this mode; gossip
//! learns them on join.
//!
//! ## Consul ([`ConsulConfig`])
//!
//! ```toml
//! [discovery.consul]
//! address = "https://127.0.0.1:8501"
//! service = "nodosum"
//! tags = ["prod"]
//! datacenter = "dc1"
//! token_file = "/etc/nodosum/consul-token"
//! ca_file = "/etc/nodosum/consul-ca.pem"
//! # client_identity_file = "/etc/nodosum/consul-client.pem"  # cert chain + key, for verify_incoming
//! blocking = true
//! wait = "60s"
//!
//! [discovery.consul.register]   # optional: register this node
//! id = "node-1"
//! address = "10.0.0.1"
//! port = 6969
//! node_id = "node-1"
//! quic_port = 6970
//! ttl = "15s"
//! deregister_critical_after = "1m"
//! ```
//!
//! Which Consul documentation (developer.hashicorp.com/consul/api-docs) each behaviour follows:
//!
//! - **Healthy instances**, *Health HTTP Endpoint → List Service Instances for Service*
//!   (`/health/service/:service`): `passing=true` keeps instances whose checks all pass;
//!   one `tag=` parameter per configured tag (instances must carry all of them); `dc=` for
//!   the datacenter. The answer is an array of `{"Node": {...}, "Service": {...}, "Checks":
//!   [...]}`; read are `Service.ID`, `Service.Address`, `Service.Port`, `Service.Meta` and
//!   `Node.Node`, `Node.Address`. An empty `Service.Address` means the instance uses its
//!   node's address, so `Node.Address` is used (as the catalog documentation describes for
//!   `ServiceAddress`). A host name there is resolved. Node ID and QUIC port come from
//!   `Service.Meta` keys [`META_NODE_ID`] and [`META_QUIC_PORT`] (Consul allows letters,
//!   digits, `-` and `_` in meta keys). Unusable entries are skipped
//!   ([`Error::ConsulEntry`]).
//! - **Blocking queries**, *Features → Blocking Queries*: the first query is plain and
//!   learns `X-Consul-Index`; later ones send `index=<last>&wait=<wait>` and Consul holds the
//!   answer until the index moves past it or `wait` (at most 10 min, plus up to `wait/16`)
//!   elapses; the request timeout allows for both. From *Implementation Details*: when the
//!   returned index is lower than the previous one the index is reset to 0 (next query
//!   plain); an index below 1 is replaced by 1 so a query never spins; the loop is rate
//!   limited by [`DiscovererConfig::interval`] rather than by a sleep before delivery.
//! - **ACL token**, *API structure → Authentication*: sent in the `X-Consul-Token`
//!   header (never in the URL); a 403 answer becomes [`Error::ConsulForbidden`].
//! - **TLS**, *Agent configuration → TLS* (`ca_file`, `verify_incoming`): with `ca_file` or
//!   `ca_pem` only that CA is trusted (like `CONSUL_CACERT`); otherwise the platform's trust
//!   store. `client_identity_file` presents a client certificate (like
//!   `CONSUL_CLIENT_CERT`/`CONSUL_CLIENT_KEY`) for agents with `verify_incoming`.
//! - **Self-registration**, *Agent → Service → Register Service*
//!   (`PUT /agent/service/register?replace-existing-checks=true`) with fields `ID`, `Name`,
//!   `Tags`, `Address`, `Port`, `Meta` and an embedded `Check` with `CheckID`
//!   (`service:<id>`, the name Consul gives a service's check), `TTL` and
//!   `DeregisterCriticalServiceAfter`; *Agent → Checks → TTL Check Pass*
//!   (`PUT /agent/check/pass/:check_id`) every `ttl/3`, re-registering when the pass fails
//!   (the agent lost the service, e.g. after a restart without state); *Agent → Service →
//!   Deregister Service* (`PUT /agent/service/deregister/:service_id`) on
//!   [`RegistrationHandle::shutdown`].
//!
//! Every answer body is read up to [`ConsulConfig::max_response_bytes`], never beyond.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod candidate;
mod config;
mod consul;
mod dns;
pub mod duration;
mod error;
mod multi;
mod runner;
mod static_list;

pub use candidate::{BoxFuture, Candidate, Discovered, Discovery};
pub use config::{Backends, DiscoveryConfig};
pub use consul::{
    ConsulConfig, ConsulDiscovery, META_NODE_ID, META_QUIC_PORT, RegistrationConfig,
    RegistrationHandle,
};
pub use dns::{DnsConfig, DnsDiscovery, DnsMode, TXT_KEY_ID, TXT_KEY_QUIC};
pub use error::{EntryProblem, Error, SeedProblem, TxtProblem};
pub use multi::Multi;
pub use runner::{
    Discoverer, DiscovererConfig, DiscovererHandle, DiscoveryStatus, KnownFilter, RoundReport,
};
pub use static_list::{StaticConfig, StaticDiscovery};
