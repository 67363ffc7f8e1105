//! The identity foca gossips: a nodosum [`Member`] plus a leave marker.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock};

use nodosum_proto::{Member, NodeId};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What foca knows a member as.
///
/// Cloning is cheap (foca clones identities into every header it writes), and equality
/// checks the pointer before the fields. Two identities with the same node ID are the same
/// node ([`foca::Identity::Addr`] is the node ID); the newer life wins an address conflict.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct GossipId(Arc<Inner>);

struct Inner {
    member: Member,
    /// The node ID's fingerprint, computed once: foca compares addresses in linear scans
    /// over all members, so this must be cheap.
    addr: NodeAddr,
    /// Set on the identity a node switches to right before it leaves, so that everyone
    /// who learns that identity is down knows it left instead of failing.
    leaving: bool,
}

impl PartialEq for Inner {
    fn eq(&self, o: &Self) -> bool {
        self.addr == o.addr && self.leaving == o.leaving && self.member == o.member
    }
}
impl Eq for Inner {}

impl GossipId {
    pub(crate) fn new(member: Member) -> Self {
        Self::build(member, false)
    }

    fn build(member: Member, leaving: bool) -> Self {
        let addr = NodeAddr::of(member.id.as_str());
        Self(Arc::new(Inner {
            member,
            addr,
            leaving,
        }))
    }

    pub(crate) fn member(&self) -> &Member {
        &self.0.member
    }

    pub(crate) fn id(&self) -> &NodeId {
        &self.0.member.id
    }

    pub(crate) fn is_leaving(&self) -> bool {
        self.0.leaving
    }

    /// The identity announced before a graceful leave: same life, marked leaving, which
    /// wins the conflict with the unmarked one.
    pub(crate) fn leaving(&self) -> Self {
        Self::build(self.0.member.clone(), true)
    }

    /// A newer life of this node carrying `member`'s fields with a higher incarnation.
    pub(crate) fn successor(&self, mut member: Member) -> Self {
        member.incarnation = self.0.member.incarnation.saturating_add(1);
        Self::new(member)
    }

    fn rank(&self) -> (u64, bool) {
        (self.0.member.incarnation, self.0.leaving)
    }
}

impl fmt::Debug for GossipId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{}#{}{}",
            self.0.member.id,
            self.0.member.gossip_addr,
            self.0.member.incarnation,
            if self.0.leaving { "(leaving)" } else { "" }
        )
    }
}

/// A node ID's 128-bit fingerprint under per-process random keys: equal for equal node
/// IDs, and unequal for different ones except with negligible probability that nobody
/// outside this process can aim for. Never sent anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NodeAddr(u64, u64);

impl NodeAddr {
    fn of(id: &str) -> Self {
        static KEYS: OnceLock<(RandomState, RandomState)> = OnceLock::new();
        let (a, b) = KEYS.get_or_init(|| (RandomState::new(), RandomState::new()));
        Self(a.hash_one(id), b.hash_one(id))
    }
}

impl foca::Identity for GossipId {
    type Addr = NodeAddr;

    fn renew(&self) -> Option<Self> {
        // A node that left must stay gone even if someone tells it that it is down.
        if self.is_leaving() {
            return None;
        }
        Some(self.successor(self.0.member.clone()))
    }

    fn addr(&self) -> NodeAddr {
        self.0.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.rank() > adversary.rank()
    }
}

/// On the wire: the versioned member encoding, then the leave marker.
impl Serialize for GossipId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&self.0.member, self.0.leaving).serialize(s)
    }
}

impl<'de> Deserialize<'de> for GossipId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (member, leaving) = <(Member, bool)>::deserialize(d)?;
        Ok(Self::build(member, leaving))
    }
}

#[cfg(test)]
mod tests {
    use foca::Identity;

    use super::*;

    fn id(name: &str, inc: u64) -> GossipId {
        let mut m = Member::new(
            NodeId::new(name).unwrap(),
            "127.0.0.1:1".parse().unwrap(),
            2,
        );
        m.incarnation = inc;
        GossipId::new(m)
    }

    #[test]
    fn same_node_id_is_same_addr_and_newer_life_wins() {
        let a1 = id("a", 1);
        let a2 = a1.renew().unwrap();
        assert!(a1.addr() == a2.addr());
        assert!(a1.addr() != id("b", 1).addr());
        assert_eq!(a2.member().incarnation, 2);
        assert!(a2.win_addr_conflict(&a1));
        assert!(!a1.win_addr_conflict(&a2));
        let leaving = a2.leaving();
        assert!(leaving.win_addr_conflict(&a2));
        assert!(
            leaving.renew().is_none(),
            "a leaving node never rejoins by itself"
        );
    }

    #[test]
    fn round_trips_through_postcard() {
        let a = id("a", 9).leaving();
        let bytes = postcard::to_allocvec(&a).unwrap();
        let back: GossipId = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(a, back);
        assert!(postcard::from_bytes::<GossipId>(&bytes[..bytes.len() - 1]).is_err());
    }
}
