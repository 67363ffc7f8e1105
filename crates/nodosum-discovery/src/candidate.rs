//! What a discovery round yields: [`Candidate`] seeds, and the [`Discovery`] trait.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use nodosum_proto::NodeId;

use crate::Error;

/// A boxed, `Send` future, so that [`Discovery`] stays dyn-compatible.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A seed a node may try to join through.
///
/// Only `gossip_addr` is certain; the node ID and QUIC port are filled in where the backend
/// knows them (DNS-SD TXT records, Consul service metadata, `id@host:port` static entries).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// The seed's gossip (SWIM, UDP) address.
    pub gossip_addr: SocketAddr,
    /// The seed's node ID, where the backend publishes it.
    pub node_id: Option<NodeId>,
    /// The seed's QUIC port, where the backend publishes it.
    pub quic_port: Option<u16>,
}

impl Candidate {
    /// A candidate known only by its gossip address.
    pub fn new(gossip_addr: SocketAddr) -> Self {
        Self {
            gossip_addr,
            node_id: None,
            quic_port: None,
        }
    }

    /// Fills in whatever `other` (a candidate for the same address) knows and `self` does not.
    pub(crate) fn absorb(&mut self, other: Self) {
        if self.node_id.is_none() {
            self.node_id = other.node_id;
        }
        if self.quic_port.is_none() {
            self.quic_port = other.quic_port;
        }
    }
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.node_id {
            Some(id) => write!(f, "{id}@{}", self.gossip_addr),
            None => write!(f, "{}", self.gossip_addr),
        }
    }
}

/// The result of one successful discovery round.
///
/// `skipped` holds the answers that were dropped without failing the round (a malformed
/// DNS record, a Consul entry without an address, one static entry that does not resolve,
/// one backend of a [`Multi`](crate::Multi) that is down). Each is logged by the backend;
/// the [`Discoverer`](crate::Discoverer) counts them by [`Error::kind`].
#[derive(Debug, Default)]
pub struct Discovered {
    /// Seeds found, de-duplicated by gossip address.
    pub candidates: Vec<Candidate>,
    /// Answers dropped during the round, with the reason.
    pub skipped: Vec<Error>,
}

impl Discovered {
    /// Adds a candidate, merging it into an existing one with the same gossip address.
    pub(crate) fn push(&mut self, candidate: Candidate) {
        match self
            .candidates
            .iter_mut()
            .find(|c| c.gossip_addr == candidate.gossip_addr)
        {
            Some(existing) => existing.absorb(candidate),
            None => self.candidates.push(candidate),
        }
    }

    /// Records a dropped answer and logs it.
    pub(crate) fn skip(&mut self, backend: &str, error: Error) {
        tracing::warn!(backend, kind = error.kind(), %error, "discovery answer skipped");
        self.skipped.push(error);
    }
}

/// A source of seed candidates.
///
/// `discover` is called once per round by the [`Discoverer`](crate::Discoverer) (or directly by
/// the caller) and returns the *current* candidates: it is not incremental, so a seed that
/// disappeared from the backend is simply absent from the next answer. An `Err` means the
/// backend could not answer at all this round (server down, timeout, access denied); the
/// caller keeps what it knew and retries later.
///
/// The trait is dyn-compatible: hold backends as `Box<dyn Discovery>` or `Arc<dyn Discovery>`.
pub trait Discovery: Send + Sync + fmt::Debug {
    /// A short, stable name for logs and metric labels (`static`, `dns`, `consul`, `multi`).
    fn name(&self) -> &str;

    /// Returns the current candidates.
    fn discover(&self) -> BoxFuture<'_, Result<Discovered, Error>>;
}

impl<T: Discovery + ?Sized> Discovery for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn discover(&self) -> BoxFuture<'_, Result<Discovered, Error>> {
        (**self).discover()
    }
}

impl<T: Discovery + ?Sized> Discovery for Box<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn discover(&self) -> BoxFuture<'_, Result<Discovered, Error>> {
        (**self).discover()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_merges_by_address() {
        let addr: SocketAddr = "127.0.0.1:6969".parse().expect("literal");
        let mut d = Discovered::default();
        d.push(Candidate::new(addr));
        d.push(Candidate {
            gossip_addr: addr,
            node_id: Some(NodeId::new("a").expect("valid")),
            quic_port: Some(6970),
        });
        d.push(Candidate {
            gossip_addr: addr,
            node_id: Some(NodeId::new("b").expect("valid")),
            quic_port: None,
        });
        assert_eq!(d.candidates.len(), 1);
        assert_eq!(
            d.candidates[0].node_id.as_ref().map(NodeId::as_str),
            Some("a")
        );
        assert_eq!(d.candidates[0].quic_port, Some(6970));
    }
}
