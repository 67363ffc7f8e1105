//! The versioned routing table: who holds which partition, at which epoch.
//!
//! One member, the *authority*, computes and publishes tables; every node installs the
//! table with the highest epoch it has seen and acts only on that one. The authority is
//! the oldest alive member: the one with the smallest `(started_at, node id)` (see
//! [`authority`]), where `started_at` is the start time of the node's current run as the
//! node announced it. Every node evaluates this over the same gossip membership, so they
//! agree on the authority without a vote; a restarted node gets a new, larger `started_at`
//! and stops being the oldest, so authority does not bounce back to a node that just
//! rejoined. The node ID breaks ties, so the choice is total.
//!
//! A table is computed from a *stable view*: the membership after it stopped changing for
//! a stabilisation window ([`ViewStabilizer`]), so a flapping node does not cause a storm
//! of tables. The view is the table's member list; a node that can reach fewer than a
//! majority of it refuses writes ([`RoutingTable::in_majority`]).
//!
//! Replica sets are explicit in the table rather than recomputed by each node: the
//! authority starts from rendezvous placement ([`RoutingTable::compute`]) but may publish
//! intermediate sets while partitions move ([`RoutingTable::with_replicas`]).

use std::sync::Arc;
use std::time::Duration;

use nodosum_proto::NodeId;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::error::Error;
use crate::placement::{Member, place_all};
use crate::slot::{Partition, Partitioning};

/// Largest cluster a table describes; replica indices are `u16`.
pub const MAX_MEMBERS: usize = 4096;

/// Default stabilisation window: membership must be unchanged this long before a new
/// table is computed. Longer than a SWIM suspicion round-trip on a LAN, short enough that
/// a failed primary's partitions are promoted within seconds.
pub const DEFAULT_STABILIZATION_WINDOW: Duration = Duration::from_secs(2);

/// Why a routing table was refused. The node's current table is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// Another table with the same epoch but different content is installed: two
    /// authorities published concurrently (e.g. across a partition). Neither is applied;
    /// the authority must publish a higher epoch.
    #[error("conflicting routing tables for epoch {epoch}")]
    EpochConflict {
        /// The contested epoch.
        epoch: u64,
    },
    /// Epoch 0 is reserved for "no table".
    #[error("routing table epoch 0 is reserved")]
    ZeroEpoch,
    /// The replication factor is 0.
    #[error("replication factor must be at least 1")]
    ZeroReplicationFactor,
    /// The table has no member with a non-zero weight.
    #[error("routing table has no member that can hold partitions")]
    NoMembers,
    /// More members than [`MAX_MEMBERS`].
    #[error("routing table has {len} members, at most {max}")]
    TooManyMembers {
        /// Member count.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Members are not strictly sorted by node ID (or one is listed twice).
    #[error("routing table members are not sorted and unique at {id}")]
    MembersNotSorted {
        /// The first member out of order.
        id: NodeId,
    },
    /// The publishing authority is not a member of the table.
    #[error("routing table authority {id} is not one of its members")]
    AuthorityNotMember {
        /// The authority named.
        id: NodeId,
    },
    /// The flattened replica list has the wrong length.
    #[error("routing table has {len} replica entries, expected {expected}")]
    WrongReplicaCount {
        /// Entries present.
        len: usize,
        /// Entries expected (partitions times set size).
        expected: usize,
    },
    /// The table divides keys into another number of partitions than this node's store
    /// (the nodes of one cluster must be configured with the same partition count).
    /// Raised by the cluster layer, which knows the store's partitioning.
    #[error("routing table has {got} partitions, this node is configured with {expected}")]
    PartitionCount {
        /// This node's partition count.
        expected: u16,
        /// The table's.
        got: u16,
    },
    /// A replica set names a member that does not exist, has weight 0, or names one member
    /// twice.
    #[error("routing table replica set of partition {partition} is invalid")]
    BadReplicaSet {
        /// The partition.
        partition: Partition,
    },
}

/// The role of a node for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// First in the replica set: serves reads and orders writes.
    Primary,
    /// A backup; `rank` 1 is the first backup (promoted first).
    Backup {
        /// Position in the replica set, 1-based among backups.
        rank: u8,
    },
    /// Not in the replica set.
    None,
}

/// An immutable, validated routing table.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TableParts")]
pub struct RoutingTable {
    epoch: u64,
    authority: NodeId,
    partitioning: Partitioning,
    replication_factor: u8,
    members: Vec<Member>,
    set_len: u8,
    replicas: Vec<u16>,
}

/// The unvalidated shape of a [`RoutingTable`] on the wire.
#[derive(Deserialize)]
struct TableParts {
    epoch: u64,
    authority: NodeId,
    partitioning: Partitioning,
    replication_factor: u8,
    members: Vec<Member>,
    set_len: u8,
    replicas: Vec<u16>,
}

impl TryFrom<TableParts> for RoutingTable {
    type Error = TableError;
    fn try_from(p: TableParts) -> Result<Self, TableError> {
        let table = Self {
            epoch: p.epoch,
            authority: p.authority,
            partitioning: p.partitioning,
            replication_factor: p.replication_factor,
            members: p.members,
            set_len: p.set_len,
            replicas: p.replicas,
        };
        table.validate()?;
        Ok(table)
    }
}

impl RoutingTable {
    /// Computes the rendezvous placement of every partition over `members` (any order;
    /// the table keeps them sorted by ID) at `epoch`, published by `authority`.
    pub fn compute(
        epoch: u64,
        authority: NodeId,
        partitioning: Partitioning,
        replication_factor: u8,
        mut members: Vec<Member>,
    ) -> Result<Self, TableError> {
        members.sort_by(|a, b| a.id.cmp(&b.id));
        let eligible = members.iter().filter(|m| m.weight > 0).count();
        let set_len = u8::try_from(eligible.min(usize::from(replication_factor)))
            .expect("invariant: bounded by a u8");
        let mut replicas = Vec::with_capacity(usize::from(partitioning.count()) * eligible);
        if members.len() <= MAX_MEMBERS {
            for set in place_all(&members, partitioning, replication_factor) {
                replicas.extend(
                    set.into_iter()
                        .map(|i| u16::try_from(i).expect("invariant: below MAX_MEMBERS")),
                );
            }
        }
        let table = Self {
            epoch,
            authority,
            partitioning,
            replication_factor,
            members,
            set_len,
            replicas,
        };
        table.validate()?;
        Ok(table)
    }

    /// The same table at `epoch` with `partition`'s replica set replaced by `set` (node IDs,
    /// primary first; exactly as many as the table's set size).
    pub fn with_replicas(
        &self,
        epoch: u64,
        partition: Partition,
        set: &[NodeId],
    ) -> Result<Self, TableError> {
        let bad = TableError::BadReplicaSet { partition };
        if !self.partitioning.contains(partition) || set.len() != usize::from(self.set_len) {
            return Err(bad);
        }
        let mut next = self.clone();
        next.epoch = epoch;
        let start = partition.index() * usize::from(self.set_len);
        for (slot, id) in next.replicas[start..].iter_mut().zip(set) {
            let i = self.member_index(id).ok_or_else(|| bad.clone())?;
            *slot = u16::try_from(i).expect("invariant: validated below MAX_MEMBERS");
        }
        next.validate()?;
        Ok(next)
    }

    /// Checks every structural rule; tables from the wire are checked on decode.
    pub fn validate(&self) -> Result<(), TableError> {
        if self.epoch == 0 {
            return Err(TableError::ZeroEpoch);
        }
        if self.replication_factor == 0 {
            return Err(TableError::ZeroReplicationFactor);
        }
        if self.members.len() > MAX_MEMBERS {
            return Err(TableError::TooManyMembers {
                len: self.members.len(),
                max: MAX_MEMBERS,
            });
        }
        for pair in self.members.windows(2) {
            if pair[0].id >= pair[1].id {
                return Err(TableError::MembersNotSorted {
                    id: pair[1].id.clone(),
                });
            }
        }
        let eligible = self.members.iter().filter(|m| m.weight > 0).count();
        if eligible == 0 {
            return Err(TableError::NoMembers);
        }
        if self.member_index(&self.authority).is_none() {
            return Err(TableError::AuthorityNotMember {
                id: self.authority.clone(),
            });
        }
        let set_len = usize::from(self.set_len);
        if set_len != eligible.min(usize::from(self.replication_factor)) {
            return Err(TableError::WrongReplicaCount {
                len: self.replicas.len(),
                expected: usize::from(self.partitioning.count()) * eligible,
            });
        }
        let expected = usize::from(self.partitioning.count()) * set_len;
        if self.replicas.len() != expected {
            return Err(TableError::WrongReplicaCount {
                len: self.replicas.len(),
                expected,
            });
        }
        for (p, set) in self.replicas.chunks_exact(set_len).enumerate() {
            let partition = Partition::new(u16::try_from(p).expect("invariant: below count"));
            for (k, &i) in set.iter().enumerate() {
                let ok = self
                    .members
                    .get(usize::from(i))
                    .is_some_and(|m| m.weight > 0)
                    && !set[..k].contains(&i);
                if !ok {
                    return Err(TableError::BadReplicaSet { partition });
                }
            }
        }
        Ok(())
    }

    /// The table's epoch (at least 1).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The member that published the table.
    pub fn authority(&self) -> &NodeId {
        &self.authority
    }

    /// The partitioning the table covers.
    pub fn partitioning(&self) -> Partitioning {
        self.partitioning
    }

    /// The configured replication factor.
    pub fn replication_factor(&self) -> u8 {
        self.replication_factor
    }

    /// The stable view the table was computed from, sorted by node ID.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Whether `id` is in the table's view.
    pub fn contains(&self, id: &NodeId) -> bool {
        self.member_index(id).is_some()
    }

    /// The replica set of `partition`, primary first; empty for a partition out of range.
    pub fn replicas(&self, partition: Partition) -> impl Iterator<Item = &Member> + '_ {
        let set_len = usize::from(self.set_len);
        let start = partition.index() * set_len;
        self.replicas
            .get(start..start + set_len)
            .unwrap_or(&[])
            .iter()
            .map(|&i| &self.members[usize::from(i)])
    }

    /// The primary of `partition`.
    pub fn primary(&self, partition: Partition) -> Option<&Member> {
        self.replicas(partition).next()
    }

    /// The index in [`members`](Self::members) of `partition`'s primary: compared with
    /// [`index_of`](Self::index_of) a node, it tells whether the node is the primary
    /// without comparing IDs (as the request path does for every key).
    pub fn primary_index(&self, partition: Partition) -> Option<usize> {
        if self.set_len == 0 {
            return None;
        }
        let start = partition.index() * usize::from(self.set_len);
        self.replicas.get(start).map(|&i| usize::from(i))
    }

    /// `id`'s index in [`members`](Self::members), if it is one.
    pub fn index_of(&self, id: &NodeId) -> Option<usize> {
        self.member_index(id)
    }

    /// The role of `id` for `partition`.
    pub fn role(&self, id: &NodeId, partition: Partition) -> Role {
        match self.replicas(partition).position(|m| m.id == *id) {
            Some(0) => Role::Primary,
            Some(k) => Role::Backup {
                rank: u8::try_from(k).expect("invariant: sets are at most u8 long"),
            },
            None => Role::None,
        }
    }

    /// Partitions whose replica set includes `id`.
    pub fn partitions_of<'a>(&'a self, id: &'a NodeId) -> impl Iterator<Item = Partition> + 'a {
        self.partitioning
            .iter()
            .filter(move |&p| self.role(id, p) != Role::None)
    }

    /// Whether `me`, reaching the members in `reachable` (itself included automatically),
    /// is in a strict majority of this table's view. A node that is not in the view is in
    /// no majority.
    pub fn in_majority<'a>(
        &self,
        me: &NodeId,
        reachable: impl IntoIterator<Item = &'a NodeId>,
    ) -> bool {
        let Some(mine) = self.member_index(me) else {
            return false;
        };
        let mut seen = self.members_seen(reachable);
        if let Some(s) = seen.get_mut(mine) {
            *s = true;
        }
        Self::count_seen(&seen) * 2 > self.members.len()
    }

    /// Which of this table's members (by index) are among `ids`.
    fn members_seen<'a>(&self, ids: impl IntoIterator<Item = &'a NodeId>) -> Vec<bool> {
        let mut seen = vec![false; self.members.len()];
        for i in ids.into_iter().filter_map(|id| self.member_index(id)) {
            if let Some(s) = seen.get_mut(i) {
                *s = true;
            }
        }
        seen
    }

    fn count_seen(seen: &[bool]) -> usize {
        seen.iter().filter(|s| **s).count()
    }

    /// Whether `me` and the members in `reachable` together are a strict majority of this
    /// table's view, whether or not `me` is in it. The test for publishing the next table:
    /// the authority of a new view may be a node the current table does not know yet (it
    /// joined with an older start time than the one-node table's owner), and it must
    /// still be able to take over, as long as it speaks for a majority of the old view.
    pub fn reaches_majority<'a>(
        &self,
        me: &'a NodeId,
        reachable: impl IntoIterator<Item = &'a NodeId>,
    ) -> bool {
        let seen = self.members_seen(reachable.into_iter().chain(std::iter::once(me)));
        Self::count_seen(&seen) * 2 > self.members.len()
    }

    /// The partitions whose replica set differs between this table and `next` (same
    /// partitioning), with both sets: the work a rebalance has to do.
    pub fn changes<'a>(&'a self, next: &'a Self) -> impl Iterator<Item = PartitionChange> + 'a {
        self.partitioning.iter().filter_map(move |p| {
            let from: Vec<NodeId> = self.replicas(p).map(|m| m.id.clone()).collect();
            let to: Vec<NodeId> = next.replicas(p).map(|m| m.id.clone()).collect();
            (from != to).then_some(PartitionChange {
                partition: p,
                from,
                to,
            })
        })
    }

    fn member_index(&self, id: &NodeId) -> Option<usize> {
        self.members.binary_search_by(|m| m.id.cmp(id)).ok()
    }
}

impl std::fmt::Debug for RoutingTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutingTable")
            .field("epoch", &self.epoch)
            .field("authority", &self.authority)
            .field("partitions", &self.partitioning.count())
            .field("replication_factor", &self.replication_factor)
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

/// A partition whose replica set changes between two tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionChange {
    /// The partition.
    pub partition: Partition,
    /// Its replica set in the older table, primary first.
    pub from: Vec<NodeId>,
    /// Its replica set in the newer table, primary first.
    pub to: Vec<NodeId>,
}

/// The authority among `members`: the oldest, i.e. the smallest `(started_at, id)`.
pub fn authority(members: &[Member]) -> Option<&Member> {
    members
        .iter()
        .min_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)))
}

/// What [`RoutingState::handle_table`] did with a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableUpdate {
    /// The table is newer and is now current.
    Installed {
        /// The epoch replaced (0 if there was none).
        previous: u64,
    },
    /// The same table is already current.
    Unchanged,
    /// The table is older than the current one and was ignored.
    Stale {
        /// The current epoch.
        current: u64,
    },
}

/// A node's routing state: the highest-epoch table it has seen.
#[derive(Debug, Clone)]
pub struct RoutingState {
    me: NodeId,
    current: Option<Arc<RoutingTable>>,
    /// This node's role in each partition of `current`, by partition index: the
    /// ownership check of every request reads it instead of comparing node IDs.
    roles: Vec<Role>,
}

impl RoutingState {
    /// No table yet.
    pub fn new(me: NodeId) -> Self {
        Self {
            me,
            current: None,
            roles: Vec::new(),
        }
    }

    /// This node's ID.
    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// The current table, if any.
    pub fn table(&self) -> Option<&Arc<RoutingTable>> {
        self.current.as_ref()
    }

    /// The current epoch; 0 before the first table.
    pub fn epoch(&self) -> u64 {
        self.current.as_ref().map_or(0, |t| t.epoch)
    }

    /// Offers a table (from the authority, a peer, or this node as authority). Newer
    /// tables are installed, older ones ignored; the same epoch with different content is
    /// an [`TableError::EpochConflict`] and leaves the current table in place.
    pub fn handle_table(&mut self, table: RoutingTable) -> Result<TableUpdate, TableError> {
        table.validate()?;
        let previous = self.epoch();
        match &self.current {
            Some(cur) if table.epoch < cur.epoch => Ok(TableUpdate::Stale { current: cur.epoch }),
            Some(cur) if table.epoch == cur.epoch => {
                if **cur == table {
                    Ok(TableUpdate::Unchanged)
                } else {
                    tracing::warn!(epoch = table.epoch, "conflicting routing tables");
                    Err(TableError::EpochConflict { epoch: table.epoch })
                }
            }
            _ => {
                tracing::debug!(previous, epoch = table.epoch, "routing table installed");
                self.roles = table
                    .partitioning()
                    .iter()
                    .map(|p| table.role(&self.me, p))
                    .collect();
                self.current = Some(Arc::new(table));
                Ok(TableUpdate::Installed { previous })
            }
        }
    }

    /// Checks that this node holds `partition` and returns its role there, for a request
    /// sent by a peer at `request_epoch` (None for a local client). A peer behind this node, a peer
    /// ahead of it, and a partition this node does not hold are all answered with
    /// [`Error::NotOwner`] carrying this node's epoch: the caller refreshes and retries,
    /// the request is never forwarded again.
    pub fn check_owner(
        &self,
        partition: Partition,
        request_epoch: Option<u64>,
    ) -> Result<Role, Error> {
        let epoch = self.epoch();
        if self.current.is_none() || request_epoch.is_some_and(|e| e != epoch) {
            return Err(Error::NotOwner { epoch });
        }
        match self.roles.get(partition.index()) {
            Some(Role::None) | None => Err(Error::NotOwner { epoch }),
            Some(role) => Ok(*role),
        }
    }

    /// Refuses writes with [`Error::QuorumLost`] unless this node, reaching `reachable`,
    /// is in a majority of the current table's view (see [`RoutingTable::in_majority`]).
    /// Without a table there is no view to be in a majority of.
    pub fn check_quorum<'a>(
        &self,
        reachable: impl IntoIterator<Item = &'a NodeId>,
    ) -> Result<(), Error> {
        match &self.current {
            Some(t) if t.in_majority(&self.me, reachable) => Ok(()),
            _ => Err(Error::QuorumLost),
        }
    }

    /// The table this node should publish for the stable view `view`, if it is the view's
    /// authority and the view (members, weights, replication factor or partitioning)
    /// differs from the current table. The new epoch is one past the current one.
    pub fn propose(
        &self,
        view: &[Member],
        partitioning: Partitioning,
        replication_factor: u8,
    ) -> Option<RoutingTable> {
        let auth = authority(view)?;
        if auth.id != self.me {
            return None;
        }
        let mut sorted = view.to_vec();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(cur) = &self.current {
            let same = cur.members == sorted
                && cur.replication_factor == replication_factor
                && cur.partitioning == partitioning;
            if same {
                return None;
            }
        }
        RoutingTable::compute(
            self.epoch().saturating_add(1),
            self.me.clone(),
            partitioning,
            replication_factor,
            sorted,
        )
        .inspect_err(|e| tracing::warn!(error = %e, "cannot compute routing table"))
        .ok()
    }
}

/// Waits for membership to settle before it is used to compute a table.
///
/// Feed every membership change with [`handle_view`](Self::handle_view); once the view has
/// not changed for the window, [`poll_stable`](Self::poll_stable) returns it once.
#[derive(Debug, Clone)]
pub struct ViewStabilizer {
    window: Duration,
    last: Vec<Member>,
    changed_at: Option<Timestamp>,
}

impl ViewStabilizer {
    /// A stabiliser with the given window (see [`DEFAULT_STABILIZATION_WINDOW`]).
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            last: Vec::new(),
            changed_at: None,
        }
    }

    /// The alive membership at `now` (any order). A change restarts the window.
    pub fn handle_view(&mut self, now: Timestamp, mut view: Vec<Member>) {
        view.sort_by(|a, b| a.id.cmp(&b.id));
        if view != self.last {
            self.last = view;
            self.changed_at = Some(now);
        }
    }

    /// The view, once, if it has been unchanged for the window at `now`.
    pub fn poll_stable(&mut self, now: Timestamp) -> Option<Vec<Member>> {
        let at = self.changed_at?;
        if now.saturating_since(at) >= self.window {
            self.changed_at = None;
            return Some(self.last.clone());
        }
        None
    }

    /// When [`poll_stable`](Self::poll_stable) should next be called, if a change is pending.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.changed_at.map(|at| at.saturating_add(self.window))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).expect("valid id")
    }

    fn member(name: &str, started_at: u64) -> Member {
        Member::new(id(name), started_at)
    }

    fn view3() -> Vec<Member> {
        vec![member("c", 30), member("a", 20), member("b", 10)]
    }

    fn small() -> Partitioning {
        Partitioning::new(64).expect("valid")
    }

    fn table(epoch: u64, view: Vec<Member>) -> RoutingTable {
        let auth = authority(&view).expect("non-empty").id.clone();
        RoutingTable::compute(epoch, auth, small(), 2, view).expect("valid table")
    }

    #[test]
    fn authority_is_oldest_then_smallest_id() {
        assert_eq!(authority(&view3()).map(|m| m.id.as_str()), Some("b"));
        let tie = vec![member("z", 5), member("y", 5), member("x", 9)];
        assert_eq!(authority(&tie).map(|m| m.id.as_str()), Some("y"));
        assert!(authority(&[]).is_none());
    }

    #[test]
    fn compute_validates_and_sorts() {
        let t = table(1, view3());
        let ids: Vec<&str> = t.members().iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        for p in small().iter() {
            assert_eq!(t.replicas(p).count(), 2);
            let primary = t.primary(p).expect("has primary");
            assert_eq!(t.role(&primary.id, p), Role::Primary);
            assert_eq!(t.primary_index(p), t.index_of(&primary.id));
            for m in t.members() {
                let is_primary = t.primary_index(p) == t.index_of(&m.id);
                assert_eq!(is_primary, m.id == primary.id, "{} for {p}", m.id);
            }
        }
        assert_eq!(t.index_of(&id("q")), None);
        assert_eq!(
            RoutingTable::compute(0, id("b"), small(), 2, view3()),
            Err(TableError::ZeroEpoch)
        );
        assert_eq!(
            RoutingTable::compute(1, id("q"), small(), 2, view3()),
            Err(TableError::AuthorityNotMember { id: id("q") })
        );
        assert_eq!(
            RoutingTable::compute(1, id("b"), small(), 0, view3()),
            Err(TableError::ZeroReplicationFactor)
        );
        let mut dup = view3();
        dup.push(member("a", 99));
        assert!(matches!(
            RoutingTable::compute(1, id("b"), small(), 2, dup),
            Err(TableError::MembersNotSorted { .. })
        ));
        let drained = vec![member("a", 1).with_weight(0)];
        assert_eq!(
            RoutingTable::compute(1, id("a"), small(), 2, drained),
            Err(TableError::NoMembers)
        );
    }

    #[test]
    fn fewer_members_than_rf() {
        let t = RoutingTable::compute(1, id("a"), small(), 3, vec![member("a", 1)]).expect("valid");
        assert!(small().iter().all(|p| t.replicas(p).count() == 1));
    }

    #[test]
    fn stale_tables_are_ignored() {
        let mut s = RoutingState::new(id("a"));
        assert_eq!(s.epoch(), 0);
        assert_eq!(
            s.handle_table(table(5, view3())),
            Ok(TableUpdate::Installed { previous: 0 })
        );
        let older = table(4, vec![member("a", 20), member("b", 10)]);
        assert_eq!(s.handle_table(older), Ok(TableUpdate::Stale { current: 5 }));
        assert_eq!(s.epoch(), 5);
        assert_eq!(s.table().expect("installed").members().len(), 3);
        assert_eq!(
            s.handle_table(table(5, view3())),
            Ok(TableUpdate::Unchanged)
        );
        // Epochs may jump: a node that missed tables catches up to the highest.
        assert_eq!(
            s.handle_table(table(9, view3())),
            Ok(TableUpdate::Installed { previous: 5 })
        );
    }

    #[test]
    fn same_epoch_different_content_is_a_conflict() {
        let mut s = RoutingState::new(id("a"));
        s.handle_table(table(3, view3())).expect("installs");
        let other = table(3, vec![member("a", 20), member("b", 10)]);
        assert_eq!(
            s.handle_table(other),
            Err(TableError::EpochConflict { epoch: 3 })
        );
        // The current table is untouched.
        assert_eq!(s.table().expect("still there").members().len(), 3);
        // A moved partition at the same epoch is a conflict too.
        let t = table(3, view3());
        let p = Partition::new(0);
        let mut set: Vec<NodeId> = t.replicas(p).map(|m| m.id.clone()).collect();
        set.reverse();
        let moved = t.with_replicas(3, p, &set).expect("valid move");
        assert_eq!(
            s.handle_table(moved),
            Err(TableError::EpochConflict { epoch: 3 })
        );
    }

    #[test]
    fn check_owner_answers_not_owner_with_epoch() {
        let mut s = RoutingState::new(id("a"));
        assert_eq!(
            s.check_owner(Partition::new(0), None),
            Err(Error::NotOwner { epoch: 0 })
        );
        let t = table(7, view3());
        s.handle_table(t.clone()).expect("installs");
        let mine = small()
            .iter()
            .find(|&p| t.role(&id("a"), p) == Role::Primary)
            .expect("a is primary somewhere");
        let not_mine = small()
            .iter()
            .find(|&p| t.role(&id("a"), p) == Role::None)
            .expect("a is absent somewhere");
        assert_eq!(s.check_owner(mine, None), Ok(Role::Primary));
        assert_eq!(s.check_owner(mine, Some(7)), Ok(Role::Primary));
        assert_eq!(
            s.check_owner(mine, Some(6)),
            Err(Error::NotOwner { epoch: 7 })
        );
        assert_eq!(
            s.check_owner(mine, Some(8)),
            Err(Error::NotOwner { epoch: 7 })
        );
        assert_eq!(
            s.check_owner(not_mine, None),
            Err(Error::NotOwner { epoch: 7 })
        );
        // Every partition answers the table's role, also after the next table moved them.
        let t2 = table(8, view3()[1..].to_vec());
        for t in [t, t2] {
            s.handle_table(t.clone()).expect("installs");
            for p in small().iter() {
                let want = match t.role(&id("a"), p) {
                    Role::None => Err(Error::NotOwner { epoch: t.epoch() }),
                    role => Ok(role),
                };
                assert_eq!(s.check_owner(p, None), want, "{p:?}");
            }
        }
    }

    #[test]
    fn only_the_authority_proposes_and_only_on_change() {
        let view = view3();
        let a = RoutingState::new(id("a"));
        assert!(a.propose(&view, small(), 2).is_none());
        let mut b = RoutingState::new(id("b"));
        let t1 = b.propose(&view, small(), 2).expect("b is the authority");
        assert_eq!(t1.epoch(), 1);
        assert_eq!(t1.authority(), &id("b"));
        b.handle_table(t1).expect("installs");
        assert!(b.propose(&view, small(), 2).is_none());
        // Member order does not matter.
        let mut reversed = view.clone();
        reversed.reverse();
        assert!(b.propose(&reversed, small(), 2).is_none());
        // c leaves: epoch 2.
        let without_c = vec![member("a", 20), member("b", 10)];
        let t2 = b.propose(&without_c, small(), 2).expect("view changed");
        assert_eq!(t2.epoch(), 2);
        // b fails: a is now the oldest and takes over at the next epoch.
        let mut a = RoutingState::new(id("a"));
        a.handle_table(t2).expect("installs");
        let without_b = vec![member("a", 20), member("c", 30)];
        let t3 = a.propose(&without_b, small(), 2).expect("a is authority");
        assert_eq!(t3.epoch(), 3);
    }

    #[test]
    fn majority_of_the_stable_view() {
        let t = table(1, view3());
        let (a, b, c) = (id("a"), id("b"), id("c"));
        assert!(t.in_majority(&a, [&b]));
        assert!(t.in_majority(&a, [&a, &b, &c]));
        assert!(!t.in_majority(&a, []));
        assert!(!t.in_majority(&a, [&a]));
        // Strangers do not count, and a stranger is in no majority.
        let x = id("x");
        assert!(!t.in_majority(&a, [&x]));
        assert!(!t.in_majority(&x, [&a, &b, &c]));
        // But a stranger that reaches a majority of the view may publish the next table.
        assert!(t.reaches_majority(&x, [&a, &b]));
        assert!(!t.reaches_majority(&x, [&a]));
        // A member named twice counts once.
        assert!(!t.reaches_majority(&x, [&a, &a]));
        assert!(!t.in_majority(&a, [&a, &a]));
        assert!(!t.reaches_majority(&x, [&x]));
        assert!(t.reaches_majority(&a, [&b]));
        assert!(!t.reaches_majority(&a, []));
        // Four members: two is not a majority.
        let t4 = table(
            1,
            vec![
                member("a", 1),
                member("b", 2),
                member("c", 3),
                member("d", 4),
            ],
        );
        assert!(!t4.in_majority(&a, [&b]));
        assert!(t4.in_majority(&a, [&b, &c]));
    }

    #[test]
    fn quorum_check_refuses_minority_writes() {
        let mut s = RoutingState::new(id("a"));
        assert_eq!(s.check_quorum([]), Err(Error::QuorumLost));
        s.handle_table(table(1, view3())).expect("installs");
        assert_eq!(s.check_quorum([&id("b")]), Ok(()));
        assert_eq!(s.check_quorum([]), Err(Error::QuorumLost));
    }

    #[test]
    fn failover_promotes_the_first_backup() {
        // When a primary leaves, rendezvous order makes its first backup the new primary
        // and every other partition keeps its replica set.
        let full = table(1, view3());
        let without_b = table(2, vec![member("a", 20), member("c", 30)]);
        let changes: Vec<PartitionChange> = full.changes(&without_b).collect();
        let involving_b = small()
            .iter()
            .filter(|&p| full.role(&id("b"), p) != Role::None)
            .count();
        assert_eq!(changes.len(), involving_b);
        for c in &changes {
            assert!(c.from.contains(&id("b")));
            let survivors: Vec<&NodeId> = c.from.iter().filter(|n| **n != id("b")).collect();
            assert_eq!(c.to[0], *survivors[0], "first surviving replica is primary");
            assert!(!c.to.contains(&id("b")));
        }
        assert_eq!(full.changes(&full).count(), 0);
    }

    #[test]
    fn stabilizer_waits_for_quiet() {
        let w = Duration::from_secs(2);
        let mut s = ViewStabilizer::new(w);
        let t = Timestamp::from_millis;
        assert_eq!(s.poll_stable(t(0)), None);
        s.handle_view(t(0), view3());
        assert_eq!(s.poll_timeout(), Some(t(2000)));
        assert_eq!(s.poll_stable(t(1999)), None);
        // A flap restarts the window.
        s.handle_view(t(1500), view3()[..2].to_vec());
        s.handle_view(t(1600), view3());
        assert_eq!(s.poll_stable(t(2000)), None);
        // The same view in another order is no change.
        let mut reordered = view3();
        reordered.reverse();
        s.handle_view(t(3000), reordered);
        let stable = s.poll_stable(t(3600)).expect("quiet for 2 s");
        assert_eq!(stable.len(), 3);
        assert_eq!(s.poll_stable(t(9000)), None);
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn wire_tables_are_validated() {
        let t = table(2, view3());
        let bytes = postcard::to_allocvec(&t).expect("encode");
        let back: RoutingTable = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, t);
        // A replica index out of range is refused on decode.
        let mut bad = t.clone();
        bad.replicas[0] = 99;
        let bytes = postcard::to_allocvec(&bad).expect("encode");
        assert!(postcard::from_bytes::<RoutingTable>(&bytes).is_err());
        let mut bad = t.clone();
        bad.replicas.pop();
        let bytes = postcard::to_allocvec(&bad).expect("encode");
        assert!(postcard::from_bytes::<RoutingTable>(&bytes).is_err());
        let mut bad = t;
        let first = bad.replicas[0];
        bad.replicas[1] = first;
        assert_eq!(
            bad.validate(),
            Err(TableError::BadReplicaSet {
                partition: Partition::new(0)
            })
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(t) = postcard::from_bytes::<RoutingTable>(&bytes) {
                prop_assert!(t.validate().is_ok());
            }
        }

        #[test]
        fn highest_epoch_wins_in_any_order(epochs in proptest::collection::vec(1u64..20, 1..20)) {
            // Each epoch has one canonical table; delivery order must not matter.
            let mut s = RoutingState::new(id("a"));
            for &e in &epochs {
                let update = s.handle_table(table(e, view3()));
                prop_assert!(update.is_ok());
            }
            prop_assert_eq!(s.epoch(), *epochs.iter().max().expect("non-empty"));
        }
    }
}
