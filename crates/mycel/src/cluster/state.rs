//! The node's cluster state behind one mutex: routing table, store, partition sync and
//! hand-off bookkeeping. Sans-IO: methods take `now` and return what to send.
//!
//! Keeping the table and the store under one lock is what makes hand-off safe: a node
//! answering a fetch installs the newer table (and so stops acting as primary) and
//! snapshots in one critical section, and a primary checks ownership and applies a write
//! in one critical section, so no acknowledged write can fall between the two.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use nodosum_proto::NodeId;
use tokio::sync::oneshot;

use super::wire::{
    CarriedWrites, Op, OpReply, Refusal, SourceStatus, WBytes, WStr, WireWrite, set_options,
};
use crate::clock::Timestamp;
use crate::error::Error;
use crate::ldouble::LongDouble;
use crate::routing::{Role, RoutingState, RoutingTable, TableError, TableUpdate};
use crate::slot::{Partition, Partitioning};
use crate::store::{BucketId, ExpireCondition, Renamed, Store, Write};

/// Partitions one transfer covers at most: a source snapshots them in one critical
/// section, so this bounds both the time it holds its lock and the snapshot's memory.
pub(crate) const MAX_PARTITIONS_PER_FETCH: usize = 128;

/// A partition's sync state on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PartSync {
    /// Not a replica here.
    NotReplica,
    /// A replica holding every acknowledged write: serves.
    Synced,
    /// A replica still fetching: `sources` to fetch from, `done` fetched.
    Pending {
        sources: BTreeSet<NodeId>,
        done: BTreeSet<NodeId>,
    },
}

/// The answer of a single-flight load.
pub(crate) type LoadResult = Result<Option<Bytes>, Refusal>;

/// The partitions refused as not-owner or syncing so far in one batch, with the refusal
/// (see [`State::execute_held`]).
#[derive(Debug, Default)]
pub(crate) struct Held(Vec<(Partition, Refusal)>);

/// The partitions `op` touches.
fn op_partitions(op: &Op, partitioning: Partitioning) -> Vec<Partition> {
    match op {
        Op::MGet { keys, .. } => keys
            .iter()
            .map(|k| partitioning.partition_of(&k.0))
            .collect(),
        Op::MSet { entries, .. } | Op::MSetNx { entries, .. } => entries
            .iter()
            .map(|(k, _)| partitioning.partition_of(&k.0))
            .collect(),
        op => vec![op.partition(partitioning)],
    }
}

/// A transfer being served.
#[derive(Debug)]
pub(crate) struct Session {
    /// Remaining writes, in send order (popped from the back).
    writes: Vec<WireWrite>,
    /// Who asked.
    pub(crate) requester: NodeId,
    /// Last activity, for expiry.
    pub(crate) touched: Timestamp,
}

/// What [`State::poll_sync`] asks the shell to do.
#[derive(Debug, Default)]
pub(crate) struct SyncWork {
    /// Fetches to start: source -> partitions.
    pub(crate) fetch: BTreeMap<NodeId, Vec<Partition>>,
    /// Releases to send: source -> partitions.
    pub(crate) release: BTreeMap<NodeId, Vec<Partition>>,
    /// Partitions that became synced.
    pub(crate) synced: usize,
}

/// One single-flight load waiting or running at this primary.
pub(crate) type LoadKey = (Arc<str>, Bytes);

/// What a primary does with a `GetOrLoad`.
#[derive(Debug)]
pub(crate) enum LoadStep {
    /// The value is there.
    Hit(Bytes),
    /// Another load runs; wait for it.
    Wait(oneshot::Receiver<LoadResult>),
    /// This call runs the loader for the key (its own answer arrives on the receiver
    /// too).
    Lead(oneshot::Receiver<LoadResult>, LoadKey),
}

/// The state. See the module docs.
#[derive(Debug)]
pub(crate) struct State {
    /// Changed only by [`State::install`], which keeps `serving` in step.
    routing: RoutingState,
    pub(crate) previous: Option<Arc<RoutingTable>>,
    pub(crate) store: Store,
    /// Its variants change only in [`State::install`] and [`State::poll_sync`], which
    /// keep `serving` in step.
    sync: Vec<PartSync>,
    /// Bit `p` is set when this node is the primary of partition `p` in the installed
    /// table and `p` is synced: the request path's ownership check reads one bit, which
    /// stays in cache, instead of the role and sync state of a random partition.
    serving: Vec<u64>,
    /// Partitions this node no longer replicates, with the new replicas that still have
    /// to release them before they are dropped.
    pub(crate) awaiting: HashMap<Partition, BTreeSet<NodeId>>,
    /// Active Mycel members (this node included).
    pub(crate) alive: BTreeSet<NodeId>,
    /// Sources a fetch is running from.
    pub(crate) fetching: BTreeSet<NodeId>,
    pub(crate) loads: HashMap<LoadKey, Vec<oneshot::Sender<LoadResult>>>,
    pub(crate) sessions: HashMap<u64, Session>,
    next_session: u64,
    /// Highest epoch seen anywhere (a conflicting table included).
    pub(crate) highest_seen: u64,
    /// The installed table, published for readers that do not take the state lock.
    published: PublishedTable,
}

/// What the operations of one critical section share: the quorum check for writes, made
/// at the first write and reused for the rest, and the last bucket name resolved (a
/// batch's operations name the same bucket). Nothing either depends on changes while the
/// state lock is held.
#[derive(Debug)]
pub(crate) struct Section {
    quorum: Quorum,
    bucket: Option<(WStr, BucketId)>,
}

#[derive(Debug)]
enum Quorum {
    /// Minority writes are allowed.
    Skip,
    /// Not checked yet in this critical section.
    Unchecked,
    /// Checked: the outcome.
    Checked(Result<(), Refusal>),
}

impl Section {
    /// A fresh section; `refuse_minority` is the configuration's `refuse_minority_writes`.
    pub(crate) fn new(refuse_minority: bool) -> Self {
        Self {
            quorum: if refuse_minority {
                Quorum::Unchecked
            } else {
                Quorum::Skip
            },
            bucket: None,
        }
    }

    fn check_quorum(&mut self, state: &State) -> Result<(), Refusal> {
        match &self.quorum {
            Quorum::Skip => Ok(()),
            Quorum::Checked(r) => r.clone(),
            Quorum::Unchecked => {
                let r = state.check_quorum();
                self.quorum = Quorum::Checked(r.clone());
                r
            }
        }
    }

    fn bucket(&mut self, store: &Store, name: &WStr) -> Result<BucketId, Refusal> {
        if let Some((n, id)) = &self.bucket
            && n == name
        {
            return Ok(*id);
        }
        let id = store.bucket(name).map_err(|e| Refusal::from_error(&e))?;
        self.bucket = Some((name.clone(), id));
        Ok(id)
    }
}

/// The installed routing table, readable without the state lock: the request path reads
/// it once per batch to pick each operation's primary. [`State::install`] updates it in
/// the same critical section that installs a table, so it never lags the state by more
/// than that section; the primary checks ownership under the state lock anyway.
#[derive(Debug, Clone, Default)]
pub(crate) struct PublishedTable(Arc<Published>);

#[derive(Debug, Default)]
struct Published {
    table: std::sync::RwLock<Option<Arc<RoutingTable>>>,
    /// The table's member count (0 without a table), for a check that takes no lock.
    members: std::sync::atomic::AtomicUsize,
}

impl PublishedTable {
    /// The installed table, if any.
    pub(crate) fn get(&self) -> Option<Arc<RoutingTable>> {
        self.0
            .table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The installed table's member count (0 without one).
    pub(crate) fn members(&self) -> usize {
        self.0.members.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set(&self, table: Arc<RoutingTable>) {
        let members = table.members().len();
        *self
            .0
            .table
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(table);
        self.0
            .members
            .store(members, std::sync::atomic::Ordering::Relaxed);
    }
}

impl State {
    pub(crate) fn new(me: NodeId, store: Store) -> Self {
        let n = usize::from(store.config().partitioning.count());
        let mut alive = BTreeSet::new();
        alive.insert(me.clone());
        Self {
            routing: RoutingState::new(me),
            previous: None,
            store,
            sync: vec![PartSync::NotReplica; n],
            serving: vec![0; n.div_ceil(64)],
            awaiting: HashMap::new(),
            alive,
            fetching: BTreeSet::new(),
            loads: HashMap::new(),
            sessions: HashMap::new(),
            next_session: 1,
            highest_seen: 0,
            published: PublishedTable::default(),
        }
    }

    /// A handle to the installed table that reads it without this state's lock.
    pub(crate) fn published(&self) -> PublishedTable {
        self.published.clone()
    }

    pub(crate) fn me(&self) -> &NodeId {
        self.routing.me()
    }

    pub(crate) fn table(&self) -> Option<&Arc<RoutingTable>> {
        self.routing.table()
    }

    /// The installed table's epoch; 0 before the first.
    pub(crate) fn epoch(&self) -> u64 {
        self.routing.epoch()
    }

    /// The table this node should publish for the stable view `view`, if any (see
    /// [`RoutingState::propose`]).
    pub(crate) fn propose(
        &self,
        view: &[crate::placement::Member],
        partitioning: Partitioning,
        replication_factor: u8,
    ) -> Option<RoutingTable> {
        self.routing.propose(view, partitioning, replication_factor)
    }

    /// Offers a table (and the sender's previous one). Returns whether it was installed.
    /// A table that partitions keys differently from this node's store is refused with
    /// [`TableError::PartitionCount`], and a sender's previous table that does is not used
    /// to bridge a missed epoch.
    ///
    /// On install: partitions this node newly replicates become pending with the replicas
    /// of the previous tables as sources; partitions it stops replicating wait for the new
    /// replicas' releases (or are dropped at once if no new replica needs them).
    pub(crate) fn install(
        &mut self,
        table: RoutingTable,
        sender_previous: Option<&RoutingTable>,
    ) -> Result<bool, TableError> {
        let expected = self.store.config().partitioning;
        if table.partitioning() != expected {
            return Err(TableError::PartitionCount {
                expected: expected.count(),
                got: table.partitioning().count(),
            });
        }
        // A sender's previous table only bridges epochs if it partitions keys the same way.
        let sender_previous = sender_previous.filter(|t| t.partitioning() == expected);
        self.highest_seen = self.highest_seen.max(table.epoch());
        let prev = self.routing.table().cloned();
        match self.routing.handle_table(table)? {
            TableUpdate::Installed { .. } => {}
            TableUpdate::Unchanged | TableUpdate::Stale { .. } => return Ok(false),
        }
        let new = Arc::clone(self.routing.table().expect("invariant: just installed"));
        self.published.set(Arc::clone(&new));
        let me = self.me().clone();
        let ids = |t: Option<&RoutingTable>, p: Partition| -> BTreeSet<NodeId> {
            t.map(|t| t.replicas(p).map(|m| m.id.clone()).collect())
                .unwrap_or_default()
        };
        // Whether every table between the previous one and the new one is known: if an
        // epoch was missed, this node may have stopped replicating a partition in it and
        // missed writes, so nothing counts as continuously replicated.
        let prev_epoch = prev.as_ref().map_or(0, |t| t.epoch());
        let bridge = sender_previous.filter(|t| t.epoch() > prev_epoch && t.epoch() < new.epoch());
        let continuous = prev.is_some()
            && match bridge {
                None => prev_epoch + 1 == new.epoch(),
                Some(b) => prev_epoch + 1 == b.epoch() && b.epoch() + 1 == new.epoch(),
            };
        let mut dropped = 0usize;
        for p in new.partitioning().iter() {
            let was = continuous
                && prev.as_ref().is_some_and(|t| t.role(&me, p) != Role::None)
                && bridge.is_none_or(|b| b.role(&me, p) != Role::None);
            let is = new.role(&me, p) != Role::None;
            let new_set = ids(Some(&new), p);
            let prev_set = ids(prev.as_deref(), p);
            let state = &mut self.sync[p.index()];
            if is {
                self.awaiting.remove(&p);
                let mut candidates: BTreeSet<NodeId> = prev_set.clone();
                candidates.extend(ids(sender_previous, p));
                candidates.extend(new_set.iter().cloned());
                candidates.remove(&me);
                // Taking over as primary from a node that may still be alive: fetch from
                // it first. It installs the new table before it snapshots, so it stops
                // serving, and any write it applied but could not replicate is merged
                // here rather than left behind on it alone.
                let old_primaries: BTreeSet<NodeId> = [prev.as_deref(), bridge]
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.primary(p).map(|m| m.id.clone()))
                    .filter(|id| *id != me)
                    .collect();
                let takeover = new.role(&me, p) == Role::Primary && !old_primaries.is_empty();
                match state {
                    PartSync::Synced if was && takeover => {
                        *state = PartSync::Pending {
                            sources: old_primaries,
                            done: BTreeSet::new(),
                        };
                    }
                    PartSync::Synced if was => {}
                    PartSync::Pending { sources, .. } => sources.extend(candidates),
                    _ => {
                        *state = PartSync::Pending {
                            sources: candidates,
                            done: BTreeSet::new(),
                        };
                    }
                }
            } else {
                let had = was || !matches!(state, PartSync::NotReplica);
                *state = PartSync::NotReplica;
                let entry = self.awaiting.remove(&p);
                if had || entry.is_some() {
                    let mut need: BTreeSet<NodeId> = entry
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|id| new_set.contains(id))
                        .collect();
                    need.extend(new_set.difference(&prev_set).cloned());
                    if need.is_empty() {
                        dropped += self.store.drop_partition(p);
                    } else {
                        self.awaiting.insert(p, need);
                    }
                }
            }
        }
        self.previous = prev;
        for p in new.partitioning().iter() {
            self.update_serving(p);
        }
        tracing::info!(
            epoch = new.epoch(),
            members = new.members().len(),
            dropped,
            "routing table installed"
        );
        Ok(true)
    }

    /// A release from `from` for `partitions`: drops those this node no longer replicates
    /// once every new replica released them. Returns entries dropped.
    pub(crate) fn handle_release(&mut self, from: &NodeId, partitions: &[Partition]) -> usize {
        let mut dropped = 0;
        for &p in partitions {
            let Some(need) = self.awaiting.get_mut(&p) else {
                continue;
            };
            need.remove(from);
            if need.is_empty() {
                self.awaiting.remove(&p);
                if matches!(self.sync.get(p.index()), Some(PartSync::NotReplica)) {
                    dropped += self.store.drop_partition(p);
                }
            }
        }
        dropped
    }

    /// Decides which fetches to start, which partitions are now synced (every alive
    /// source fetched), and which releases to send.
    pub(crate) fn poll_sync(&mut self) -> SyncWork {
        let mut work = SyncWork::default();
        let mut newly_synced = Vec::new();
        for (i, state) in self.sync.iter_mut().enumerate() {
            let PartSync::Pending { sources, done } = state else {
                continue;
            };
            let p = Partition::new(u16::try_from(i).expect("invariant: below partition count"));
            let remaining: Vec<&NodeId> = sources
                .iter()
                .filter(|s| !done.contains(*s) && self.alive.contains(*s))
                .collect();
            if remaining.is_empty() {
                for s in done.iter() {
                    work.release.entry(s.clone()).or_default().push(p);
                }
                *state = PartSync::Synced;
                work.synced += 1;
                newly_synced.push(p);
                continue;
            }
            for s in remaining {
                if !self.fetching.contains(s) {
                    let batch = work.fetch.entry(s.clone()).or_default();
                    // The rest waits for the next poll after this transfer.
                    if batch.len() < MAX_PARTITIONS_PER_FETCH {
                        batch.push(p);
                    }
                }
            }
        }
        for source in work.fetch.keys() {
            self.fetching.insert(source.clone());
        }
        for p in newly_synced {
            self.update_serving(p);
        }
        work
    }

    /// Recomputes `p`'s bit in `serving` from its role and sync state.
    fn update_serving(&mut self, p: Partition) {
        let on = matches!(self.routing.check_owner(p, None), Ok(Role::Primary))
            && self.sync.get(p.index()) == Some(&PartSync::Synced);
        if let Some(word) = self.serving.get_mut(p.index() / 64) {
            let bit = 1u64 << (p.index() % 64);
            if on {
                *word |= bit;
            } else {
                *word &= !bit;
            }
        }
    }

    fn is_serving(&self, p: Partition) -> bool {
        self.serving
            .get(p.index() / 64)
            .is_some_and(|word| word & (1u64 << (p.index() % 64)) != 0)
    }

    /// Applies a page fetched from `source`; `statuses` may add sources (a pending
    /// source's own sources).
    pub(crate) fn apply_page(
        &mut self,
        source: &NodeId,
        statuses: &[(Partition, SourceStatus)],
        writes: Vec<WireWrite>,
        now: Timestamp,
    ) -> usize {
        let me = self.me().clone();
        for (p, status) in statuses {
            if let (
                SourceStatus::Pending { sources },
                Some(PartSync::Pending { sources: mine, .. }),
            ) = (status, self.sync.get_mut(p.index()))
            {
                mine.extend(
                    sources
                        .iter()
                        .filter(|s| **s != me && *s != source)
                        .cloned(),
                );
            }
        }
        let mut applied = 0;
        for w in writes {
            let w = Write::from(w);
            match self.store.apply(&w, now) {
                Ok(_) => applied += 1,
                Err(e) => tracing::warn!(error = %e, "fetched write dropped"),
            }
        }
        applied
    }

    /// A transfer from `source` of `partitions` completed.
    pub(crate) fn fetch_done(&mut self, source: &NodeId, partitions: &[Partition]) {
        self.fetching.remove(source);
        for p in partitions {
            if let Some(PartSync::Pending { done, .. }) = self.sync.get_mut(p.index()) {
                done.insert(source.clone());
            }
        }
    }

    /// A transfer from `source` failed; it is retried on a later poll while `source` lives.
    pub(crate) fn fetch_failed(&mut self, source: &NodeId) {
        self.fetching.remove(source);
    }

    /// Serves the start of a transfer: installs the fetcher's table first (so that this
    /// node stops acting as primary of those partitions), then snapshots them.
    pub(crate) fn start_session(
        &mut self,
        requester: &NodeId,
        table: RoutingTable,
        previous: Option<&RoutingTable>,
        partitions: &[Partition],
        now: Timestamp,
    ) -> Result<(u64, Vec<(Partition, SourceStatus)>), Refusal> {
        // One transfer per requester at a time: a new one replaces the old.
        self.sessions.retain(|_, s| s.requester != *requester);
        match self.install(table, previous) {
            Ok(_) => {}
            // Its partition numbers name other keys here: nothing to serve.
            Err(e @ TableError::PartitionCount { .. }) => {
                tracing::warn!(from = %requester, error = %e, "fetch refused");
                return Err(Refusal::BadRequest);
            }
            Err(e) => tracing::warn!(error = %e, "table in a fetch refused"),
        }
        let mut statuses = Vec::with_capacity(partitions.len());
        let mut writes = Vec::new();
        for &p in partitions {
            if !self.store.config().partitioning.contains(p) {
                continue;
            }
            let status = match &self.sync[p.index()] {
                PartSync::Synced => SourceStatus::Synced,
                PartSync::NotReplica => SourceStatus::NotReplica,
                PartSync::Pending { sources, done } => SourceStatus::Pending {
                    sources: sources.difference(done).cloned().collect(),
                },
            };
            statuses.push((p, status));
            writes.extend(self.store.snapshot(p, now).map(|w| WireWrite::from(&w)));
        }
        writes.reverse();
        let id = self.next_session;
        self.next_session = self.next_session.wrapping_add(1).max(1);
        self.sessions.insert(
            id,
            Session {
                writes,
                requester: requester.clone(),
                touched: now,
            },
        );
        Ok((id, statuses))
    }

    /// The next page of `session`, at most `max_bytes` (at least one write); `None` if the
    /// session is unknown. The session ends with its last page.
    pub(crate) fn next_page(
        &mut self,
        session: u64,
        requester: &NodeId,
        max_bytes: usize,
        now: Timestamp,
    ) -> Option<(Vec<WireWrite>, bool)> {
        let s = self.sessions.get_mut(&session)?;
        if s.requester != *requester {
            return None;
        }
        s.touched = now;
        let mut page = Vec::new();
        let mut size = 0;
        while let Some(w) = s.writes.last() {
            if !page.is_empty() && size + w.size() > max_bytes {
                break;
            }
            size += w.size();
            page.extend(s.writes.pop());
        }
        let done = s.writes.is_empty();
        if done {
            self.sessions.remove(&session);
        }
        Some((page, done))
    }

    /// Forgets sessions idle since before `cutoff`.
    pub(crate) fn expire_sessions(&mut self, cutoff: Timestamp) {
        self.sessions.retain(|_, s| s.touched >= cutoff);
    }

    /// Whether this node is in a majority of its table's view.
    pub(crate) fn check_quorum(&self) -> Result<(), Refusal> {
        self.routing
            .check_quorum(self.alive.iter())
            .map_err(|e| Refusal::from_error(&e))
    }

    /// Checks that this node is the synced primary of `p` at `epoch` (None: local).
    pub(crate) fn check_primary(&self, p: Partition, epoch: Option<u64>) -> Result<(), Refusal> {
        if self.is_serving(p) && epoch.is_none_or(|e| e == self.routing.epoch()) {
            debug_assert_eq!(self.explain_primary(p, epoch), Ok(()), "serving bit set");
            return Ok(());
        }
        let r = self.explain_primary(p, epoch);
        debug_assert!(r.is_err(), "serving bit of {p} clear for a synced primary");
        r
    }

    /// [`State::check_primary`] from the role and sync state themselves: the refusal.
    fn explain_primary(&self, p: Partition, epoch: Option<u64>) -> Result<(), Refusal> {
        match self.routing.check_owner(p, epoch) {
            Ok(Role::Primary) => {}
            Ok(_) => {
                return Err(Refusal::NotOwner {
                    epoch: self.routing.epoch(),
                });
            }
            Err(e) => return Err(Refusal::from_error(&e)),
        }
        match self.sync.get(p.index()) {
            Some(PartSync::Synced) => Ok(()),
            _ => Err(Refusal::Syncing { partition: p }),
        }
    }

    /// [`State::execute`] for one operation of a batch: once an operation was refused as
    /// not-owner or syncing, every later one on the same partition gets the same refusal
    /// unexecuted. The batch's lock is released between runs and ownership may change in
    /// between, while the sender retries refused operations in their order: a later write
    /// to a key must not be applied before an earlier, refused one.
    /// Its writes to replicate are appended to `writes`.
    pub(crate) fn execute_held(
        &mut self,
        op: &Op,
        epoch: Option<u64>,
        section: &mut Section,
        now: Timestamp,
        held: &mut Held,
        writes: &mut Vec<Write>,
    ) -> Result<OpReply, Refusal> {
        let partitioning = self.store.config().partitioning;
        if !held.0.is_empty() {
            let parts = op_partitions(op, partitioning);
            if let Some((_, r)) = held.0.iter().find(|(p, _)| parts.contains(p)) {
                return Err(r.clone());
            }
        }
        // Not-owner and syncing come from the ownership check alone: the operation's
        // partitions are held from here on.
        if let Err(r) = self.check_owner_or_quorum(op, epoch, section) {
            if matches!(r, Refusal::NotOwner { .. } | Refusal::Syncing { .. }) {
                held.0.extend(
                    op_partitions(op, partitioning)
                        .into_iter()
                        .map(|p| (p, r.clone())),
                );
            }
            return Err(r);
        }
        self.execute_owned(op, section, now, writes)
    }

    /// Executes `op` as primary: the ownership check, the quorum check for writes and the
    /// store operation happen in this one critical section. Returns the reply and the
    /// writes to replicate. `GetOrLoad` and `Count` are not handled here.
    pub(crate) fn execute(
        &mut self,
        op: &Op,
        epoch: Option<u64>,
        refuse_minority: bool,
        now: Timestamp,
    ) -> Result<(OpReply, Vec<Write>), Refusal> {
        let mut writes = Vec::new();
        let reply = self.execute_into(
            op,
            epoch,
            &mut Section::new(refuse_minority),
            now,
            &mut writes,
        )?;
        Ok((reply, writes))
    }

    /// [`State::execute`] with what the operations of one critical section share; the
    /// writes to replicate are appended to `writes`.
    pub(crate) fn execute_into(
        &mut self,
        op: &Op,
        epoch: Option<u64>,
        section: &mut Section,
        now: Timestamp,
        writes: &mut Vec<Write>,
    ) -> Result<OpReply, Refusal> {
        self.check_owner_or_quorum(op, epoch, section)?;
        self.execute_owned(op, section, now, writes)
    }

    /// [`State::check_op_owner`], except that a write refused as syncing is refused as
    /// [`Refusal::QuorumLost`] instead when this node is cut off from the majority: the
    /// caller is told at once, as for a synced partition, rather than retrying until the
    /// partition is synced. Writes that pass the ownership check have their quorum
    /// checked in [`State::execute_owned`].
    fn check_owner_or_quorum(
        &self,
        op: &Op,
        epoch: Option<u64>,
        section: &mut Section,
    ) -> Result<(), Refusal> {
        match self.check_op_owner(op, epoch) {
            Err(r @ Refusal::Syncing { .. }) if op.is_write() => {
                section.check_quorum(self)?;
                Err(r)
            }
            result => result,
        }
    }

    /// Checks that this node is the synced primary of every key of `op` (see
    /// [`State::check_primary`]); the only source of not-owner and syncing refusals. For
    /// several keys, a not-owner refusal wins over a syncing one, whatever the keys' order.
    fn check_op_owner(&self, op: &Op, epoch: Option<u64>) -> Result<(), Refusal> {
        let partitioning = self.store.config().partitioning;
        let check_all = |keys: &mut dyn Iterator<Item = &Bytes>| {
            let mut syncing = None;
            for k in keys {
                match self.check_primary(partitioning.partition_of(k), epoch) {
                    Ok(()) => {}
                    Err(r @ Refusal::Syncing { .. }) => {
                        syncing.get_or_insert(r);
                    }
                    Err(r) => return Err(r),
                }
            }
            syncing.map_or(Ok(()), Err)
        };
        match op {
            Op::MGet { keys, .. } => check_all(&mut keys.iter().map(|k| &k.0)),
            Op::MSet { entries, .. } | Op::MSetNx { entries, .. } => {
                check_all(&mut entries.iter().map(|(k, _)| &k.0))
            }
            Op::Scan { partition, .. } | Op::Clear { partition, .. } => {
                let p = Partition::new(*partition);
                if !partitioning.contains(p) {
                    return Err(Refusal::BadRequest);
                }
                self.check_primary(p, epoch)
            }
            op => op.key().map_or(Ok(()), |k| {
                self.check_primary(partitioning.partition_of(k), epoch)
            }),
        }
    }

    /// The rest of [`State::execute_into`], once ownership was checked.
    fn execute_owned(
        &mut self,
        op: &Op,
        section: &mut Section,
        now: Timestamp,
        writes: &mut Vec<Write>,
    ) -> Result<OpReply, Refusal> {
        if op.is_write() {
            section.check_quorum(self)?;
        }
        let e = self.routing.epoch();
        let err = |e: Error| Refusal::from_error(&e);
        let store = &mut self.store;
        let mut bucket_of = |store: &Store, name: &WStr| section.bucket(store, name);
        // Keys and values are cloned (a reference count) only where the store keeps them.
        let reply = match op {
            Op::Get { bucket, key } => {
                let b = bucket_of(store, bucket)?;
                OpReply::Value(store.get(b, &key.0, now).map(WBytes))
            }
            Op::Exists { bucket, key } => {
                let b = bucket_of(store, bucket)?;
                OpReply::Bool(store.exists(b, &key.0, now))
            }
            Op::Ttl { bucket, key } => {
                let b = bucket_of(store, bucket)?;
                OpReply::Ttl(store.ttl(b, &key.0, now).into())
            }
            Op::Stamp { bucket, key } => {
                let b = bucket_of(store, bucket)?;
                OpReply::Stamp(store.stamp(b, &key.0, now, e))
            }
            Op::Unchanged { bucket, key, stamp } => {
                let b = bucket_of(store, bucket)?;
                OpReply::Bool(store.unchanged(b, &key.0, stamp, now, e))
            }
            Op::Set {
                bucket,
                key,
                value,
                expiry,
                condition,
                get,
            } => {
                let b = bucket_of(store, bucket)?;
                let outcome = store
                    .set(
                        b,
                        key.0.clone(),
                        value.0.clone(),
                        set_options(*expiry, *condition, *get),
                        now,
                        e,
                    )
                    .map_err(err)?;
                let applied = outcome.write.is_some();
                writes.extend(outcome.write);
                OpReply::Set {
                    applied,
                    previous: outcome.previous.map(WBytes),
                }
            }
            Op::Delete { bucket, key } => {
                let b = bucket_of(store, bucket)?;
                let w = store.delete(b, key.0.clone(), now, e).map_err(err)?;
                let done = w.is_some();
                writes.extend(w);
                OpReply::Bool(done)
            }
            Op::Expire {
                bucket,
                key,
                after_ms,
            }
            | Op::ExpireIf {
                bucket,
                key,
                after_ms,
                ..
            } => {
                let condition = match op {
                    Op::ExpireIf { condition, .. } => (*condition).into(),
                    _ => ExpireCondition::Always,
                };
                let b = bucket_of(store, bucket)?;
                let at = now.saturating_add(std::time::Duration::from_millis(*after_ms));
                let w = store
                    .expire(b, key.0.clone(), at, condition, now, e)
                    .map_err(err)?;
                let done = w.is_some();
                writes.extend(w);
                OpReply::Bool(done)
            }
            Op::Persist { bucket, key } => {
                let b = bucket_of(store, bucket)?;
                let w = store.persist(b, key.0.clone(), now, e).map_err(err)?;
                let done = w.is_some();
                writes.extend(w);
                OpReply::Bool(done)
            }
            Op::IncrBy { bucket, key, delta } => {
                let b = bucket_of(store, bucket)?;
                let (v, w) = store
                    .incr_by(b, key.0.clone(), *delta, now, e)
                    .map_err(err)?;
                writes.push(w);
                OpReply::Int(v)
            }
            Op::MGet { bucket, keys } => {
                let b = bucket_of(store, bucket)?;
                let values = keys
                    .iter()
                    .map(|k| store.get(b, &k.0, now).map(WBytes))
                    .collect();
                OpReply::Values(values)
            }
            Op::MSet { bucket, entries } => {
                let b = bucket_of(store, bucket)?;
                // Check every size first, so that a refused entry changes nothing.
                for (k, v) in entries {
                    store.check_size(b, &k.0, v.0.len()).map_err(err)?;
                }
                writes.reserve(entries.len());
                for (k, v) in entries {
                    let outcome = store
                        .set(b, k.0.clone(), v.0.clone(), set_options_default(), now, e)
                        .map_err(err)?;
                    writes.extend(outcome.write);
                }
                OpReply::Unit
            }
            Op::MSetNx { bucket, entries } => {
                let keys = entries.iter().map(|(k, _)| &k.0[..]);
                if store.config().partitioning.common_partition(keys).is_none() {
                    return Err(Refusal::BadRequest);
                }
                let b = bucket_of(store, bucket)?;
                let pairs: Vec<(Bytes, Bytes)> = entries
                    .iter()
                    .map(|(k, v)| (k.0.clone(), v.0.clone()))
                    .collect();
                let ws = store.set_all_absent(b, &pairs, now, e).map_err(err)?;
                let done = ws.is_some();
                writes.extend(ws.into_iter().flatten());
                OpReply::Bool(done)
            }
            Op::Copy {
                bucket,
                key,
                to,
                replace,
            }
            | Op::Rename {
                bucket,
                key,
                to,
                replace,
            } => {
                let copy = matches!(op, Op::Copy { .. });
                let keys = [&key.0[..], &to.0[..]];
                if (copy && key == to)
                    || store.config().partitioning.common_partition(keys).is_none()
                {
                    return Err(Refusal::BadRequest);
                }
                let b = bucket_of(store, bucket)?;
                if copy {
                    let w = store
                        .copy(b, &key.0, to.0.clone(), *replace, now, e)
                        .map_err(err)?;
                    let done = w.is_some();
                    writes.extend(w);
                    OpReply::Bool(done)
                } else {
                    let (done, ws) = store
                        .rename(b, key.0.clone(), to.0.clone(), *replace, now, e)
                        .map_err(err)?;
                    writes.extend(ws);
                    OpReply::Int(match done {
                        Renamed::Done => 1,
                        Renamed::TargetExists => 0,
                        Renamed::Missing => -1,
                    })
                }
            }
            Op::IncrByFloat {
                bucket,
                key,
                increment,
            } => {
                let b = bucket_of(store, bucket)?;
                let increment = match *increment {
                    None => LongDouble::INFINITY,
                    Some((neg, sig, exp)) => {
                        LongDouble::from_parts(neg, sig, exp).ok_or(Refusal::BadRequest)?
                    }
                };
                let (value, w) = store
                    .incr_by_float(b, key.0.clone(), increment, now, e)
                    .map_err(err)?;
                writes.push(w);
                OpReply::Value(Some(WBytes(value)))
            }
            Op::SetRange {
                bucket,
                key,
                offset,
                value,
            } => {
                let b = bucket_of(store, bucket)?;
                let (len, w) = store
                    .set_range(b, key.0.clone(), *offset, &value.0, now, e)
                    .map_err(err)?;
                writes.extend(w);
                OpReply::Int(i64::try_from(len).unwrap_or(i64::MAX))
            }
            Op::Append { bucket, key, value } => {
                let b = bucket_of(store, bucket)?;
                let (len, w) = store
                    .append(b, key.0.clone(), &value.0, now, e)
                    .map_err(err)?;
                writes.push(w);
                OpReply::Int(i64::try_from(len).unwrap_or(i64::MAX))
            }
            Op::Scan {
                bucket,
                partition,
                pattern,
                from,
                max_bytes,
            } => {
                let b = bucket_of(store, bucket)?;
                let (keys, next) = store.keys(
                    b,
                    Partition::new(*partition),
                    pattern.as_ref().map(|p| &p.0[..]),
                    *from,
                    usize::try_from(*max_bytes).unwrap_or(usize::MAX),
                    now,
                );
                OpReply::Keys {
                    keys: keys.into_iter().map(WBytes).collect(),
                    next,
                }
            }
            Op::Clear {
                bucket,
                partition,
                from,
                max_bytes,
            } => {
                let b = bucket_of(store, bucket)?;
                let (keys, next) = store.keys(
                    b,
                    Partition::new(*partition),
                    None,
                    *from,
                    usize::try_from(*max_bytes).unwrap_or(usize::MAX),
                    now,
                );
                let mut deleted = 0;
                for key in keys {
                    if let Some(w) = store.delete(b, key, now, e).map_err(err)? {
                        deleted += 1;
                        writes.push(w);
                    }
                }
                OpReply::Cleared { deleted, next }
            }
            Op::Count | Op::GetOrLoad { .. } => return Err(Refusal::BadRequest),
        };
        Ok(reply)
    }

    /// Live keys in the partitions this node is the primary of.
    pub(crate) fn count_primary(&self, now: Timestamp) -> u64 {
        let Some(table) = self.routing.table() else {
            return 0;
        };
        let me = self.me();
        let mut n = 0u64;
        for p in table.partitioning().iter() {
            if table.role(me, p) == Role::Primary {
                let live = self
                    .store
                    .snapshot(p, now)
                    .filter(|w| matches!(w.op, crate::store::WriteOp::Put { .. }))
                    .count();
                n += u64::try_from(live).unwrap_or(u64::MAX);
            }
        }
        n
    }

    /// The single-flight step of a `GetOrLoad` at the primary, in one critical section
    /// with the read, so that a load finishing in between cannot be missed.
    pub(crate) fn begin_load(
        &mut self,
        bucket: &str,
        key: &Bytes,
        epoch: Option<u64>,
        now: Timestamp,
    ) -> Result<LoadStep, Refusal> {
        let p = self.store.config().partitioning.partition_of(key);
        self.check_primary(p, epoch)?;
        let b = self
            .store
            .bucket(bucket)
            .map_err(|e| Refusal::from_error(&e))?;
        if let Some(v) = self.store.get(b, key, now) {
            return Ok(LoadStep::Hit(v));
        }
        let name = Arc::clone(self.store.bucket_name(b).expect("invariant: bucket exists"));
        let (tx, rx) = oneshot::channel();
        match self.loads.get_mut(&(Arc::clone(&name), key.clone())) {
            Some(waiters) => {
                waiters.push(tx);
                Ok(LoadStep::Wait(rx))
            }
            None => {
                let load_key = (name, key.clone());
                self.loads.insert(load_key.clone(), vec![tx]);
                Ok(LoadStep::Lead(rx, load_key))
            }
        }
    }

    /// Ends a load: stores a loaded value (unless the key was set meanwhile, or this
    /// node is no longer its primary) and hands back the waiters and the write.
    pub(crate) fn finish_load(
        &mut self,
        key: &LoadKey,
        loaded: &LoadResult,
        refuse_minority: bool,
        now: Timestamp,
    ) -> (
        Vec<oneshot::Sender<LoadResult>>,
        Option<Write>,
        Option<Bytes>,
    ) {
        let waiters = self.loads.remove(key).unwrap_or_default();
        let Ok(Some(value)) = loaded else {
            return (waiters, None, None);
        };
        let p = self.store.config().partitioning.partition_of(&key.1);
        let quorum = !refuse_minority || self.check_quorum().is_ok();
        if self.check_primary(p, None).is_err() || !quorum {
            return (waiters, None, None);
        }
        let Ok(b) = self.store.bucket(&key.0) else {
            return (waiters, None, None);
        };
        let options = crate::store::SetOptions {
            condition: crate::store::Condition::IfAbsent,
            get: true,
            ..crate::store::SetOptions::default()
        };
        let epoch = self.routing.epoch();
        match self
            .store
            .set(b, key.1.clone(), value.clone(), options, now, epoch)
        {
            Ok(outcome) => (waiters, outcome.write, outcome.previous),
            Err(e) => {
                tracing::warn!(error = %e, "loaded value not stored");
                (waiters, None, None)
            }
        }
    }

    /// Applies writes replicated by the primary at `epoch`: only at the same epoch, and
    /// only for partitions this node backs up there.
    pub(crate) fn handle_replicate(
        &mut self,
        epoch: u64,
        writes: Vec<WireWrite>,
        now: Timestamp,
    ) -> Result<(), Refusal> {
        let mine = self.routing.epoch();
        if epoch > mine {
            return Err(Refusal::Behind { epoch: mine });
        }
        if epoch < mine {
            return Err(Refusal::NotOwner { epoch: mine });
        }
        let table = self
            .routing
            .table()
            .expect("invariant: epoch > 0 means a table");
        let partitioning = table.partitioning();
        for w in &writes {
            let p = partitioning.partition_of(&w.key.0);
            if !matches!(table.role(self.me(), p), Role::Backup { .. }) {
                return Err(Refusal::NotOwner { epoch: mine });
            }
        }
        for w in writes {
            let w = Write::from(w);
            if let Err(e) = self.store.apply(&w, now) {
                tracing::warn!(error = %e, "replicated write refused");
                return Err(Refusal::from_error(&e));
            }
        }
        Ok(())
    }

    /// Applies the writes a primary carried back in its reply to this node's `Carry`
    /// (see [`Self::handle_replicate`]); the operations of a group that did not apply are
    /// answered [`Refusal::Timeout`] in `results`: they happened at the primary, not at
    /// every replica. Returns the groups refused, with why.
    pub(crate) fn apply_carried(
        &mut self,
        results: &mut [Result<OpReply, Refusal>],
        carried: Vec<CarriedWrites>,
        now: Timestamp,
    ) -> Vec<Refusal> {
        let mut refused = Vec::new();
        for group in carried {
            if let Err(r) = self.handle_replicate(group.epoch, group.writes, now) {
                for i in group.ops {
                    if let Some(result @ Ok(_)) =
                        usize::try_from(i).ok().and_then(|i| results.get_mut(i))
                    {
                        *result = Err(Refusal::Timeout);
                    }
                }
                refused.push(r);
            }
        }
        refused
    }

    /// Partitions this node replicates in its table, and how many of them are synced.
    pub(crate) fn replica_counts(&self) -> (usize, usize, usize) {
        let Some(table) = self.routing.table() else {
            return (0, 0, 0);
        };
        let me = self.me();
        let mut primary = 0;
        let mut replica = 0;
        let mut synced = 0;
        for p in table.partitioning().iter() {
            match table.role(me, p) {
                Role::None => continue,
                Role::Primary => primary += 1,
                Role::Backup { .. } => {}
            }
            replica += 1;
            if self.sync[p.index()] == PartSync::Synced {
                synced += 1;
            }
        }
        (primary, replica, synced)
    }
}

fn set_options_default() -> crate::store::SetOptions {
    crate::store::SetOptions::default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::Member;
    use crate::slot::Partitioning;
    use crate::store::{BucketOptions, StoreConfig};

    fn id(s: &str) -> NodeId {
        NodeId::new(s).expect("valid id")
    }

    fn parts() -> Partitioning {
        Partitioning::new(16).expect("valid")
    }

    fn state(me: &str) -> State {
        state_with(me, StoreConfig::default().max_bytes)
    }

    fn state_with(me: &str, max_bytes: u64) -> State {
        let mut store = Store::new(StoreConfig {
            partitioning: parts(),
            max_bytes,
            ..StoreConfig::default()
        });
        store
            .create_bucket("default", BucketOptions::default())
            .expect("bucket");
        State::new(id(me), store)
    }

    fn table(epoch: u64, names: &[&str]) -> RoutingTable {
        let members: Vec<Member> = names
            .iter()
            .enumerate()
            .map(|(i, n)| Member::new(id(n), i as u64))
            .collect();
        RoutingTable::compute(epoch, id(names[0]), parts(), 2, members).expect("valid")
    }

    fn set_op(key: &'static str, value: &'static str) -> Op {
        Op::Set {
            bucket: "default".into(),
            key: WBytes(Bytes::from_static(key.as_bytes())),
            value: WBytes(Bytes::from_static(value.as_bytes())),
            expiry: super::super::wire::WireExpiry::BucketDefault,
            condition: super::super::wire::WireCondition::Always,
            get: false,
        }
    }

    #[test]
    fn a_batch_holds_a_refused_partition_for_its_later_operations() {
        let mut a = state("a");
        a.install(table(1, &["a"]), None).expect("valid");
        a.poll_sync();
        let now = Timestamp::from_millis(1);
        // One operation of a batch sent at epoch 2.
        let run = |a: &mut State, op: Op, held: &mut Held| {
            a.execute_held(
                &op,
                Some(2),
                &mut Section::new(false),
                now,
                held,
                &mut Vec::new(),
            )
        };
        let mut held = Held::default();
        // The sender is at epoch 2, a still at 1: refused as not-owner.
        let first = run(&mut a, set_op("k", "A"), &mut held);
        assert!(
            matches!(first, Err(Refusal::NotOwner { epoch: 1 })),
            "{first:?}"
        );
        // Epoch 2 arrives while the batch's lock is released between runs.
        a.install(table(2, &["a"]), Some(&table(1, &["a"])))
            .expect("valid");
        a.poll_sync();
        // A later write to the same key must not overtake the refused one...
        let later = run(&mut a, set_op("k", "B"), &mut held);
        assert!(
            matches!(later, Err(Refusal::NotOwner { epoch: 1 })),
            "{later:?}"
        );
        // ...nor any operation on its partition, while other partitions go ahead.
        let p = parts().partition_of(b"k");
        let other = (0..1000)
            .map(|i| format!("other-{i}"))
            .find(|key| parts().partition_of(key.as_bytes()) != p)
            .expect("a key elsewhere");
        let other: &'static str = Box::leak(other.into_boxed_str());
        assert!(run(&mut a, set_op(other, "x"), &mut held).is_ok());
        // A new batch starts afresh.
        let mut held = Held::default();
        assert!(run(&mut a, set_op("k", "A"), &mut held).is_ok());
    }

    mod hostile {
        use proptest::prelude::*;

        use super::*;
        use crate::cluster::wire::{WireCondition, WireExpireCondition, WireExpiry};

        fn key() -> impl Strategy<Value = WBytes> {
            prop_oneof![Just(""), Just("a"), Just("{t}b"), Just("{t}c"), Just("n"),]
                .prop_map(|k| WBytes(Bytes::from_static(k.as_bytes())))
        }

        fn value() -> impl Strategy<Value = WBytes> {
            prop_oneof![
                Just(Bytes::from_static(b"10")),
                Just(Bytes::from_static(b"-1.5e3")),
                Just(Bytes::from_static(b"9223372036854775807")),
                Just(Bytes::from_static(b"0x1p16383")),
                proptest::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from),
            ]
            .prop_map(WBytes)
        }

        fn bucket() -> impl Strategy<Value = WStr> {
            prop_oneof![4 => Just("default"), 1 => Just("missing")].prop_map(WStr::from)
        }

        fn int() -> impl Strategy<Value = u64> {
            prop_oneof![
                Just(0),
                Just(1),
                Just(u64::MAX),
                Just(1 << 62),
                0u64..100_000
            ]
        }

        fn expiry() -> impl Strategy<Value = WireExpiry> {
            prop_oneof![
                Just(WireExpiry::BucketDefault),
                Just(WireExpiry::Never),
                Just(WireExpiry::Keep),
                int().prop_map(WireExpiry::AfterMs),
                int().prop_map(|ms| WireExpiry::At(Timestamp::from_millis(ms))),
            ]
        }

        fn expire_condition() -> impl Strategy<Value = WireExpireCondition> {
            prop_oneof![
                Just(WireExpireCondition::Always),
                Just(WireExpireCondition::IfNone),
                Just(WireExpireCondition::IfSome),
                Just(WireExpireCondition::IfLater),
                Just(WireExpireCondition::IfEarlier),
                Just(WireExpireCondition::IfSomeEarlier),
            ]
        }

        fn condition() -> impl Strategy<Value = WireCondition> {
            prop_oneof![
                Just(WireCondition::Always),
                Just(WireCondition::IfAbsent),
                Just(WireCondition::IfPresent),
            ]
        }

        /// Any operation a peer could send, with extreme numbers and a missing bucket
        /// among the ordinary ones.
        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (bucket(), key()).prop_map(|(bucket, key)| Op::Get { bucket, key }),
                (bucket(), key()).prop_map(|(bucket, key)| Op::Ttl { bucket, key }),
                (
                    bucket(),
                    key(),
                    value(),
                    expiry(),
                    condition(),
                    any::<bool>()
                )
                    .prop_map(|(bucket, key, value, expiry, condition, get)| {
                        Op::Set {
                            bucket,
                            key,
                            value,
                            expiry,
                            condition,
                            get,
                        }
                    }),
                (bucket(), key()).prop_map(|(bucket, key)| Op::Delete { bucket, key }),
                (bucket(), key(), int(), expire_condition()).prop_map(
                    |(bucket, key, after_ms, condition)| Op::ExpireIf {
                        bucket,
                        key,
                        after_ms,
                        condition,
                    }
                ),
                (bucket(), key()).prop_map(|(bucket, key)| Op::Persist { bucket, key }),
                (bucket(), key()).prop_map(|(bucket, key)| Op::Stamp { bucket, key }),
                (
                    bucket(),
                    key(),
                    proptest::option::of(any::<(u64, u64)>()),
                    any::<(u64, u64, u64, u64, u64)>()
                )
                    .prop_map(
                        |(bucket, key, version, (high, seq, epoch, removals, store))| {
                            let version_of = |(epoch, seq)| crate::store::Version { epoch, seq };
                            Op::Unchanged {
                                bucket,
                                key,
                                stamp: crate::store::KeyStamp {
                                    version: version.map(version_of),
                                    high: version_of((high, seq)),
                                    epoch,
                                    removals,
                                    store,
                                },
                            }
                        }
                    ),
                (bucket(), key(), any::<i64>()).prop_map(|(bucket, key, delta)| Op::IncrBy {
                    bucket,
                    key,
                    delta
                }),
                (bucket(), key(), any::<bool>(), any::<u64>(), any::<i64>()).prop_map(
                    |(bucket, key, neg, sig, exp)| Op::IncrByFloat {
                        bucket,
                        key,
                        increment: Some((neg, sig, exp)),
                    }
                ),
                (bucket(), key(), value()).prop_map(|(bucket, key, value)| Op::Append {
                    bucket,
                    key,
                    value
                }),
                (bucket(), key(), int(), value()).prop_map(|(bucket, key, offset, value)| {
                    Op::SetRange {
                        bucket,
                        key,
                        offset,
                        value,
                    }
                }),
                (bucket(), key(), key(), any::<bool>()).prop_map(|(bucket, key, to, replace)| {
                    Op::Rename {
                        bucket,
                        key,
                        to,
                        replace,
                    }
                }),
                (bucket(), key(), key(), any::<bool>()).prop_map(|(bucket, key, to, replace)| {
                    Op::Copy {
                        bucket,
                        key,
                        to,
                        replace,
                    }
                }),
                (bucket(), proptest::collection::vec((key(), value()), 0..4))
                    .prop_map(|(bucket, entries)| Op::MSet { bucket, entries }),
                (bucket(), proptest::collection::vec((key(), value()), 0..4))
                    .prop_map(|(bucket, entries)| Op::MSetNx { bucket, entries }),
                (bucket(), proptest::collection::vec(key(), 0..4))
                    .prop_map(|(bucket, keys)| Op::MGet { bucket, keys }),
                (bucket(), any::<u16>(), any::<u64>(), any::<u32>()).prop_map(
                    |(bucket, partition, from, max_bytes)| Op::Scan {
                        bucket,
                        partition,
                        pattern: None,
                        from,
                        max_bytes,
                    }
                ),
                (bucket(), any::<u16>(), any::<u64>(), any::<u32>()).prop_map(
                    |(bucket, partition, from, max_bytes)| Op::Clear {
                        bucket,
                        partition,
                        from,
                        max_bytes,
                    }
                ),
            ]
        }

        proptest! {
            /// Whatever a peer asks of this node as primary is answered or refused: no
            /// panic, the store's indexes stay consistent, and every write made is one
            /// the store applied (a backup replaying it changes nothing here).
            #[test]
            fn operations_from_a_peer_never_panic(
                ops in proptest::collection::vec((op(), 0u64..5_000), 1..40)
            ) {
                let mut st = state("a");
                st.install(table(1, &["a"]), None).expect("valid");
                st.poll_sync();
                let mut now = 1_000_000;
                for (op, step) in ops {
                    now += step;
                    let now = Timestamp::from_millis(now);
                    if let Ok((_, writes)) = st.execute(&op, Some(1), false, now) {
                        for w in &writes {
                            let applied = st.store.apply(w, now);
                            prop_assert!(
                                !matches!(applied, Ok(crate::store::Applied::Applied)),
                                "{op:?} made a write the store had not applied: {w:?}"
                            );
                        }
                    }
                    st.store.check_invariants();
                }
            }
        }
    }

    #[test]
    fn a_lone_first_table_syncs_at_once() {
        let mut s = state("a");
        assert!(s.install(table(1, &["a"]), None).expect("valid"));
        let work = s.poll_sync();
        assert_eq!(work.synced, 16);
        assert!(work.fetch.is_empty());
        let (_, replica, synced) = s.replica_counts();
        assert_eq!((replica, synced), (16, 16));
    }

    #[test]
    fn a_joiner_fetches_from_previous_replicas_and_releases() {
        let mut a = state("a");
        a.install(table(1, &["a"]), None).expect("valid");
        a.poll_sync();
        a.execute(&set_op("k", "v"), None, false, Timestamp::from_millis(1))
            .expect("primary writes");
        let mut b = state("b");
        b.alive.insert(id("a"));
        let t2 = table(2, &["a", "b"]);
        let t1 = table(1, &["a"]);
        b.install(t2.clone(), Some(&t1)).expect("valid");
        let work = b.poll_sync();
        // b replicates every partition (rf 2, 2 members) and has to fetch all from a.
        assert_eq!(work.fetch.get(&id("a")).map(Vec::len), Some(16));
        let wanted = work.fetch[&id("a")].clone();
        // a serves: installs t2 first, snapshots.
        let (session, statuses) = a
            .start_session(&id("b"), t2, None, &wanted, Timestamp::from_millis(2))
            .expect("same partitioning");
        assert_eq!(a.routing.epoch(), 2);
        assert!(statuses.iter().all(|(_, s)| *s == SourceStatus::Synced));
        let (page, done) = a
            .next_page(session, &id("b"), 1 << 20, Timestamp::from_millis(2))
            .expect("session");
        assert!(done);
        assert_eq!(page.len(), 1);
        b.apply_page(&id("a"), &statuses, page, Timestamp::from_millis(3));
        b.fetch_done(&id("a"), &wanted);
        let work = b.poll_sync();
        assert_eq!(work.synced, 16);
        assert_eq!(work.release.get(&id("a")).map(Vec::len), Some(16));
        // a is still a replica of everything, so the release drops nothing.
        assert_eq!(a.handle_release(&id("b"), &wanted), 0);
        let key = Bytes::from_static(b"k");
        let bucket = b.store.bucket("default").expect("bucket");
        assert_eq!(
            b.store.get(bucket, &key, Timestamp::from_millis(4)),
            Some(Bytes::from_static(b"v"))
        );
    }

    #[test]
    fn a_missed_epoch_makes_partitions_refetch() {
        let mut a = state("a");
        a.install(table(1, &["a"]), None).expect("valid");
        a.poll_sync();
        // The next epoch follows: a stays synced everywhere it still replicates.
        a.install(table(2, &["a", "b"]), None).expect("valid");
        let (_, replica, synced) = a.replica_counts();
        assert_eq!((replica, synced), (16, 16));
        // Epoch 3 was missed (a may have been out of it): everything is fetched again.
        a.alive.insert(id("b"));
        a.install(table(4, &["a", "b"]), None).expect("valid");
        let (_, replica, synced) = a.replica_counts();
        assert_eq!((replica, synced), (16, 0));
        assert_eq!(a.poll_sync().fetch.get(&id("b")).map(Vec::len), Some(16));
        // With the missing table supplied by the sender, and a in it, continuity holds.
        let mut c = state("a");
        c.install(table(1, &["a"]), None).expect("valid");
        c.poll_sync();
        c.install(table(3, &["a", "b"]), Some(&table(2, &["a"])))
            .expect("valid");
        let (_, replica, synced) = c.replica_counts();
        assert_eq!((replica, synced), (16, 16));
    }

    #[test]
    fn mset_checks_every_entry_before_writing_any() {
        let mut a = state_with("a", 64 * 1024);
        a.install(table(1, &["a"]), None).expect("valid");
        a.poll_sync();
        let entry =
            |k: &'static str, v: Bytes| (WBytes(Bytes::from_static(k.as_bytes())), WBytes(v));
        let op = |entries| Op::MSet {
            bucket: "default".into(),
            entries,
        };
        // The second value is within the value length limit but heavier than the budget.
        let too_heavy = op(vec![
            entry("a", Bytes::from_static(b"1")),
            entry("b", Bytes::from(vec![b'x'; 64 * 1024])),
        ]);
        assert!(matches!(
            a.execute(&too_heavy, None, true, Timestamp::from_millis(1)),
            Err(Refusal::ValueTooLarge { .. })
        ));
        assert_eq!(a.store.len(), 0);
        let fits = op(vec![
            entry("a", Bytes::from_static(b"1")),
            entry("b", Bytes::from_static(b"2")),
        ]);
        let (_, writes) = a
            .execute(&fits, None, true, Timestamp::from_millis(1))
            .expect("fits");
        assert_eq!((a.store.len(), writes.len()), (2, 2));
    }

    #[test]
    fn a_table_with_another_partition_count_is_refused() {
        let other = Partitioning::new(32).expect("valid");
        let members = |names: &[&str]| -> Vec<Member> {
            names
                .iter()
                .enumerate()
                .map(|(i, n)| Member::new(id(n), i as u64))
                .collect()
        };
        let wide = |epoch| {
            RoutingTable::compute(epoch, id("a"), other, 2, members(&["a", "b"])).expect("valid")
        };
        let mut a = state("a");
        assert_eq!(
            a.install(wide(1), None),
            Err(TableError::PartitionCount {
                expected: 16,
                got: 32
            })
        );
        assert!(a.table().is_none() && a.published().get().is_none());
        // Nothing was installed to serve from: requests are refused, not run.
        assert_eq!(
            a.execute(&set_op("k", "v"), None, true, Timestamp::from_millis(1)),
            Err(Refusal::NotOwner { epoch: 0 })
        );
        // A fetch under such a table names partitions of other keys: refused.
        let all: Vec<Partition> = other.iter().collect();
        assert_eq!(
            a.start_session(&id("b"), wide(2), None, &all, Timestamp::from_millis(1)),
            Err(Refusal::BadRequest)
        );
        // Nor does such a table bridge a missed epoch.
        a.install(table(1, &["a"]), None).expect("valid");
        a.poll_sync();
        a.alive.insert(id("b"));
        a.install(table(3, &["a", "b"]), Some(&wide(2)))
            .expect("valid");
        let (_, replica, synced) = a.replica_counts();
        assert_eq!((replica, synced), (16, 0));
    }

    #[test]
    fn a_promoted_backup_fetches_from_the_old_primary_while_it_lives() {
        let t1 = table(1, &["a", "b"]);
        // Partitions where b was primary and a its backup.
        let taken: Vec<Partition> = parts()
            .iter()
            .filter(|&p| t1.role(&id("b"), p) == Role::Primary)
            .collect();
        assert!(!taken.is_empty());
        for b_alive in [true, false] {
            let mut a = state("a");
            a.install(t1.clone(), None).expect("valid");
            a.alive.insert(id("b"));
            a.poll_sync();
            a.fetch_done(&id("b"), &taken);
            for p in parts().iter() {
                if let Some(PartSync::Pending { .. }) = a.sync.get(p.index()) {
                    a.fetch_done(&id("b"), &[p]);
                }
            }
            a.poll_sync();
            assert_eq!(a.replica_counts(), (16 - taken.len(), 16, 16));
            // b leaves the table: a takes b's primaries over.
            if !b_alive {
                a.alive.remove(&id("b"));
            }
            a.install(table(2, &["a"]), None).expect("valid");
            let work = a.poll_sync();
            if b_alive {
                assert_eq!(work.fetch.get(&id("b")), Some(&taken));
                assert_eq!(a.replica_counts(), (16, 16, 16 - taken.len()));
            } else {
                // Nothing alive to fetch from: the backup's copy is complete.
                assert_eq!(a.replica_counts(), (16, 16, 16));
            }
        }
    }

    #[test]
    fn transfers_are_batched() {
        let big = Partitioning::new(1024).expect("valid");
        let mut store = Store::new(StoreConfig {
            partitioning: big,
            ..StoreConfig::default()
        });
        store
            .create_bucket("default", BucketOptions::default())
            .expect("bucket");
        let mut b = State::new(id("b"), store);
        b.alive.insert(id("a"));
        let members = vec![Member::new(id("a"), 0), Member::new(id("b"), 1)];
        let t = RoutingTable::compute(2, id("a"), big, 2, members).expect("valid");
        b.install(t, None).expect("valid");
        let mut fetched = 0;
        loop {
            let work = b.poll_sync();
            let Some(batch) = work.fetch.get(&id("a")) else {
                break;
            };
            assert!(batch.len() <= MAX_PARTITIONS_PER_FETCH);
            fetched += batch.len();
            b.fetch_done(&id("a"), batch);
        }
        assert_eq!(fetched, 1024);
        assert_eq!(b.replica_counts().2, 1024);
    }

    #[test]
    fn a_node_that_stops_replicating_drops_after_release() {
        let mut a = state("a");
        a.install(table(1, &["a"]), None).expect("valid");
        a.poll_sync();
        a.execute(&set_op("k", "v"), None, false, Timestamp::from_millis(1))
            .expect("primary writes");
        // b and c take over (a leaves the table).
        a.install(table(2, &["b", "c"]), None).expect("valid");
        assert_eq!(a.store.len(), 1, "kept until released");
        let p = parts().partition_of(b"k");
        let t2 = table(2, &["b", "c"]);
        let replicas: Vec<NodeId> = t2.replicas(p).map(|m| m.id.clone()).collect();
        assert_eq!(a.handle_release(&replicas[0], &[p]), 0);
        assert_eq!(a.store.len(), 1, "one new replica still to release");
        assert_eq!(a.handle_release(&replicas[1], &[p]), 1);
        assert_eq!(a.store.len(), 0);
    }

    #[test]
    fn ownership_quorum_and_sync_are_checked_together() {
        let mut a = state("a");
        // No table: not owner.
        assert_eq!(
            a.execute(&set_op("k", "v"), None, true, Timestamp::from_millis(1)),
            Err(Refusal::NotOwner { epoch: 0 })
        );
        let t = table(1, &["a", "b", "c"]);
        a.install(t.clone(), None).expect("valid");
        let p = parts()
            .iter()
            .find(|&p| t.role(&id("a"), p) == Role::Primary)
            .expect("a is primary somewhere");
        // A key in p.
        let key = (0u32..)
            .map(|i| format!("key-{i}"))
            .find(|k| parts().partition_of(k.as_bytes()) == p)
            .expect("some key lands in p");
        let op = |k: &str| Op::Set {
            bucket: "default".into(),
            key: WBytes(Bytes::from(k.to_owned())),
            value: WBytes(Bytes::from_static(b"v")),
            expiry: super::super::wire::WireExpiry::BucketDefault,
            condition: super::super::wire::WireCondition::Always,
            get: false,
        };
        // Pending: the partition is not served. Cut off from the majority, a write is
        // told so rather than to retry until the partition is synced.
        assert!(matches!(
            a.execute(&op(&key), None, false, Timestamp::from_millis(1)),
            Err(Refusal::Syncing { .. })
        ));
        assert_eq!(
            a.execute(&op(&key), None, true, Timestamp::from_millis(1)),
            Err(Refusal::QuorumLost)
        );
        let get = Op::Get {
            bucket: "default".into(),
            key: WBytes(Bytes::from(key.clone())),
        };
        assert!(matches!(
            a.execute(&get.clone(), None, true, Timestamp::from_millis(1)),
            Err(Refusal::Syncing { .. })
        ));
        // In a batch, that refusal is final and holds nothing: a later read of the
        // partition is checked on its own.
        let (mut section, mut held, mut writes) = (Section::new(true), Held::default(), Vec::new());
        let now = Timestamp::from_millis(1);
        let mut run = |a: &mut State, op| {
            a.execute_held(&op, None, &mut section, now, &mut held, &mut writes)
        };
        assert_eq!(run(&mut a, op(&key)), Err(Refusal::QuorumLost));
        assert!(matches!(run(&mut a, get), Err(Refusal::Syncing { .. })));
        // A key of a partition a does not serve as primary: several keys are refused as
        // not-owner whatever their order, never as quorum lost.
        let other = (0u32..)
            .map(|i| format!("other-{i}"))
            .find(|k| t.role(&id("a"), parts().partition_of(k.as_bytes())) != Role::Primary)
            .expect("a is not primary everywhere");
        let mset = |keys: [&str; 2]| Op::MSet {
            bucket: "default".into(),
            entries: keys
                .iter()
                .map(|k| {
                    (
                        WBytes(Bytes::from(k.to_string())),
                        WBytes(Bytes::from_static(b"v")),
                    )
                })
                .collect(),
        };
        for keys in [
            [key.as_str(), other.as_str()],
            [other.as_str(), key.as_str()],
        ] {
            assert_eq!(
                a.execute(&mset(keys), None, true, Timestamp::from_millis(1)),
                Err(Refusal::NotOwner { epoch: 1 }),
                "{keys:?}"
            );
        }
        // In a majority again while still fetching: writes wait for the sync.
        a.alive.insert(id("b"));
        assert!(matches!(
            a.execute(&op(&key), None, true, Timestamp::from_millis(1)),
            Err(Refusal::Syncing { .. })
        ));
        a.alive.remove(&id("b"));
        // No source alive: synced once polled.
        a.poll_sync();
        // Alone among three: quorum lost.
        assert_eq!(
            a.execute(&op(&key), None, true, Timestamp::from_millis(1)),
            Err(Refusal::QuorumLost)
        );
        // Not refusing minority writes: accepted.
        assert!(
            a.execute(&op(&key), None, false, Timestamp::from_millis(1))
                .is_ok()
        );
        a.alive.insert(id("b"));
        let (_, writes) = a
            .execute(&op(&key), Some(1), true, Timestamp::from_millis(1))
            .expect("majority");
        assert_eq!(writes.len(), 1);
        // A request at another epoch is refused with this node's epoch.
        assert_eq!(
            a.execute(&op(&key), Some(2), true, Timestamp::from_millis(1)),
            Err(Refusal::NotOwner { epoch: 1 })
        );
    }

    /// Keys `k0`, `k1`, ... of partitions `node` backs up in `t`.
    fn backed_up_keys<'t>(t: &'t RoutingTable, node: &'t str) -> impl Iterator<Item = String> + 't {
        (0u32..).map(|i| format!("k{i}")).filter(move |k| {
            matches!(
                t.role(&id(node), parts().partition_of(k.as_bytes())),
                Role::Backup { .. }
            )
        })
    }

    /// A put of `key` made at epoch 3, the `seq`th write of that epoch.
    fn put_at_3(key: &str, seq: u64) -> WireWrite {
        WireWrite {
            bucket: "default".into(),
            key: WBytes(Bytes::from(key.to_owned())),
            version: crate::store::Version { epoch: 3, seq },
            put: Some((WBytes(Bytes::from_static(b"v")), None)),
        }
    }

    #[test]
    fn replicate_is_fenced_by_epoch_and_role() {
        let mut b = state("b");
        let t = table(3, &["a", "b"]);
        b.install(t.clone(), None).expect("valid");
        assert_eq!(
            b.handle_replicate(4, vec![put_at_3("x", 1)], Timestamp::from_millis(1)),
            Err(Refusal::Behind { epoch: 3 })
        );
        assert_eq!(
            b.handle_replicate(2, vec![put_at_3("x", 1)], Timestamp::from_millis(1)),
            Err(Refusal::NotOwner { epoch: 3 })
        );
        let backed = backed_up_keys(&t, "b")
            .next()
            .expect("b backs something up");
        assert_eq!(
            b.handle_replicate(3, vec![put_at_3(&backed, 1)], Timestamp::from_millis(1)),
            Ok(())
        );
        assert_eq!(b.store.len(), 1);
    }

    #[test]
    fn carried_writes_that_do_not_apply_leave_their_operations_unacknowledged() {
        let mut b = state("b");
        let t = table(3, &["a", "b"]);
        b.install(t.clone(), None).expect("valid");
        let backed: Vec<String> = backed_up_keys(&t, "b").take(2).collect();
        let set = || {
            Ok(OpReply::Set {
                applied: true,
                previous: None,
            })
        };
        let mut results = vec![set(), set(), Err(Refusal::NotAnInteger), set()];
        let carried = vec![
            // Made at this node's epoch, for partitions it backs up: applied.
            CarriedWrites {
                epoch: 3,
                writes: vec![put_at_3(&backed[0], 1)],
                ops: vec![0],
            },
            // Made at another epoch: refused, so operations 1 and 2 are not acknowledged
            // (2 was refused anyway, and stays so); an index out of range is ignored.
            CarriedWrites {
                epoch: 2,
                writes: vec![put_at_3(&backed[1], 2)],
                ops: vec![1, 2, 99],
            },
        ];
        let refused = b.apply_carried(&mut results, carried, Timestamp::from_millis(1));
        assert_eq!(refused, vec![Refusal::NotOwner { epoch: 3 }]);
        assert_eq!(
            results,
            vec![
                set(),
                Err(Refusal::Timeout),
                Err(Refusal::NotAnInteger),
                set()
            ]
        );
        assert_eq!(b.store.len(), 1, "only the applied group is stored");
    }

    #[test]
    fn pages_are_bounded_and_sessions_belong_to_their_requester() {
        let mut a = state("a");
        let t = table(1, &["a"]);
        a.install(t.clone(), None).expect("valid");
        a.poll_sync();
        for i in 0..50 {
            let key = format!("key-{i}");
            let op = Op::Set {
                bucket: "default".into(),
                key: WBytes(Bytes::from(key)),
                value: WBytes(Bytes::from(vec![7u8; 100])),
                expiry: super::super::wire::WireExpiry::BucketDefault,
                condition: super::super::wire::WireCondition::Always,
                get: false,
            };
            a.execute(&op, None, false, Timestamp::from_millis(1))
                .expect("write");
        }
        let all: Vec<Partition> = parts().iter().collect();
        let (session, _) = a
            .start_session(&id("b"), t, None, &all, Timestamp::from_millis(2))
            .expect("same partitioning");
        assert!(
            a.next_page(session, &id("c"), 1000, Timestamp::from_millis(2))
                .is_none()
        );
        let mut total = 0;
        let mut pages = 0;
        loop {
            let (page, done) = a
                .next_page(session, &id("b"), 1000, Timestamp::from_millis(2))
                .expect("session");
            assert!(page.iter().map(WireWrite::size).sum::<usize>() <= 1000);
            total += page.len();
            pages += 1;
            if done {
                break;
            }
        }
        assert_eq!(total, 50);
        assert!(pages > 1);
        assert!(
            a.next_page(session, &id("b"), 1000, Timestamp::from_millis(2))
                .is_none()
        );
    }
}
