//! Seed discovery for Nodosum: where to find other nodes to join through.
//!
//! A [`Discovery`] backend answers "which nodes could I join through right now?" with
//! [`Candidate`]s (a gossip address, plus node ID and QUIC port where known). Backends:
//! [`StaticDiscovery`] (a list of `host:port`), [`DnsDiscovery`] (DNS-SD browsing or plain SRV
//! records, e.g. a Kubernetes headless Service) and [`Multi`] (several at once). The
//! [`Discoverer`] runs a backend periodically, drops this node and known members, and
//! publishes the rest with metrics.
//!
//! What this crate is not: it does not join, probe or connect to anything; it only finds
//! addresses. Membership is gossip's job once a node has joined.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod candidate;
mod consul;
mod dns;
mod duration;
mod error;
mod multi;
mod runner;
mod static_list;

pub use candidate::{BoxFuture, Candidate, Discovered, Discovery};
pub use consul::{
    ConsulConfig, ConsulDiscovery, META_NODE_ID, META_QUIC_PORT, RegistrationConfig,
    RegistrationHandle,
};
pub use dns::{DnsConfig, DnsDiscovery, DnsMode, TXT_KEY_ID, TXT_KEY_QUIC};
pub use error::{EntryProblem, Error, SeedProblem, TxtProblem};
pub use multi::Multi;
pub use runner::{Discoverer, DiscovererConfig, DiscovererHandle, KnownFilter, RoundReport};
pub use static_list::{StaticConfig, StaticDiscovery};
