//! The member table: this node's view of every other member, and the events that view
//! changes produce.
//!
//! foca reports members going up, down and being renamed, but not suspicion; the table
//! also folds in what foca applied about suspicion (from the updates it decoded and the
//! suspicions it raised itself), using foca's own precedence rules, and is reconciled
//! against foca's full state from time to time.

use std::collections::HashMap;

use foca::State;
use nodosum_proto::{Member, NodeId};

use crate::identity::GossipId;

/// What this node believes about a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed a probe; will be declared failed unless it refutes in time.
    Suspect,
    /// Declared failed after a suspicion timed out.
    Failed,
    /// Left the cluster gracefully.
    Left,
}

impl MemberState {
    /// Alive or suspect: still counted as a member.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Alive | Self::Suspect)
    }

    /// Lowercase name, as used in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Suspect => "suspect",
            Self::Failed => "failed",
            Self::Left => "left",
        }
    }
}

/// A change in this node's view of the cluster.
///
/// Per member, events follow `Joined (Updated | Suspect | Alive)* (Failed | Left)`, and a
/// member that comes back after it was declared failed or left (a restart, or refuting a
/// false failure with a new life) starts again with `Joined`. `Alive` is only sent after
/// `Suspect`.
///
/// A member that restarts before this node declared it failed is seen as `Updated` with a
/// higher incarnation, like a metadata change: gossip cannot tell the two apart, so a
/// consumer that keeps per-peer state must not assume an `Updated` peer kept it (the QUIC
/// transport replaces such a peer's old connection by itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A member became known as alive (first seen, or back after failing or leaving).
    Joined(Member),
    /// A live member changed its identity: new incarnation, metadata or addresses.
    Updated(Member),
    /// A member is suspected of having failed.
    Suspect(Member),
    /// A suspected member refuted the suspicion.
    Alive(Member),
    /// A member was declared failed.
    Failed(Member),
    /// A member left gracefully.
    Left(Member),
}

impl MembershipEvent {
    /// The member the event is about.
    pub fn member(&self) -> &Member {
        match self {
            Self::Joined(m)
            | Self::Updated(m)
            | Self::Suspect(m)
            | Self::Alive(m)
            | Self::Failed(m)
            | Self::Left(m) => m,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    id: GossipId,
    /// foca's (SWIM) incarnation, distinct from the member's life counter.
    swim_inc: u16,
    state: MemberState,
}

/// Events that turn a member's view from `prev` into `(next, state)`.
pub(crate) fn fold(
    prev: Option<(&Member, MemberState)>,
    next: &Member,
    state: MemberState,
    out: &mut Vec<MembershipEvent>,
) {
    let was_active = prev.is_some_and(|(_, s)| s.is_active());
    match (was_active, state.is_active()) {
        (false, true) => {
            out.push(MembershipEvent::Joined(next.clone()));
            if state == MemberState::Suspect {
                out.push(MembershipEvent::Suspect(next.clone()));
            }
        }
        (true, true) => {
            let (pm, ps) = prev.expect("was_active implies prev");
            if pm != next {
                out.push(MembershipEvent::Updated(next.clone()));
            }
            match (ps, state) {
                (MemberState::Alive, MemberState::Suspect) => {
                    out.push(MembershipEvent::Suspect(next.clone()));
                }
                (MemberState::Suspect, MemberState::Alive) => {
                    out.push(MembershipEvent::Alive(next.clone()));
                }
                _ => {}
            }
        }
        (true, false) => out.push(if state == MemberState::Left {
            MembershipEvent::Left(next.clone())
        } else {
            MembershipEvent::Failed(next.clone())
        }),
        (false, false) => {}
    }
}

/// The state foca's `state` means for identity `id`.
pub(crate) fn state_of(id: &GossipId, state: State) -> MemberState {
    match state {
        State::Alive => MemberState::Alive,
        State::Suspect => MemberState::Suspect,
        State::Down if id.is_leaving() => MemberState::Left,
        State::Down => MemberState::Failed,
    }
}

/// This node's view of the other members.
#[derive(Debug, Default)]
pub(crate) struct Table {
    entries: HashMap<NodeId, Entry>,
    counts: [usize; 4],
}

fn slot(s: MemberState) -> usize {
    match s {
        MemberState::Alive => 0,
        MemberState::Suspect => 1,
        MemberState::Failed => 2,
        MemberState::Left => 3,
    }
}

impl Table {
    /// Sets a member's identity and state as foca reported it.
    pub(crate) fn set(
        &mut self,
        id: &GossipId,
        swim_inc: Option<u16>,
        state: MemberState,
        out: &mut Vec<MembershipEvent>,
    ) {
        let prev = self.entries.get(id.id());
        fold(
            prev.map(|e| (e.id.member(), e.state)),
            id.member(),
            state,
            out,
        );
        let swim_inc = swim_inc.or(prev.map(|e| e.swim_inc)).unwrap_or(0);
        if let Some(p) = prev {
            self.counts[slot(p.state)] -= 1;
        }
        self.counts[slot(state)] += 1;
        self.entries.insert(
            id.id().clone(),
            Entry {
                id: id.clone(),
                swim_inc,
                state,
            },
        );
    }

    /// Applies an update foca applied to a known, active identity, with foca's precedence
    /// rules: only suspicion and its refutation are taken from here, the rest comes
    /// through [`set`](Self::set).
    pub(crate) fn hint(
        &mut self,
        id: &GossipId,
        swim_inc: u16,
        state: State,
        out: &mut Vec<MembershipEvent>,
    ) {
        let Some(e) = self.entries.get_mut(id.id()) else {
            return;
        };
        if e.id != *id || !e.state.is_active() {
            return;
        }
        let next = match (e.state, state) {
            (MemberState::Alive, State::Alive) if swim_inc > e.swim_inc => MemberState::Alive,
            (MemberState::Alive, State::Suspect) if swim_inc >= e.swim_inc => MemberState::Suspect,
            (MemberState::Suspect, State::Alive | State::Suspect) if swim_inc > e.swim_inc => {
                state_of(id, state)
            }
            _ => return,
        };
        fold(Some((e.id.member(), e.state)), id.member(), next, out);
        self.counts[slot(e.state)] -= 1;
        self.counts[slot(next)] += 1;
        e.state = next;
        e.swim_inc = swim_inc;
    }

    /// Forgets a member that is no longer active (foca forgot it too).
    pub(crate) fn remove_inactive(&mut self, id: &GossipId) {
        if let Some(e) = self.entries.get(id.id())
            && e.id == *id
            && !e.state.is_active()
        {
            self.counts[slot(e.state)] -= 1;
            self.entries.remove(id.id());
        }
    }

    /// Compares the table with foca's full state (`(identity, swim incarnation, state)`
    /// of every member but this node) and corrects differences, returning how many
    /// entries needed correcting.
    pub(crate) fn reconcile(
        &mut self,
        foca_state: &[(GossipId, u16, State)],
        out: &mut Vec<MembershipEvent>,
    ) -> usize {
        let mut corrections = 0;
        for (id, inc, st) in foca_state {
            let state = state_of(id, *st);
            let same = self.entries.get(id.id()).is_some_and(|e| {
                e.id == *id && e.state == state && (!state.is_active() || e.swim_inc == *inc)
            });
            if !same {
                corrections += 1;
                self.set(id, Some(*inc), state, out);
            }
        }
        if foca_state.len() != self.entries.len() {
            let known: std::collections::HashSet<&NodeId> =
                foca_state.iter().map(|(id, _, _)| id.id()).collect();
            let gone = self.retain_inner(|id| known.contains(id), out);
            corrections += gone;
        }
        corrections
    }

    /// Keeps only the members for which `keep` is true, reporting the rest as failed if
    /// they were active.
    fn retain_inner(
        &mut self,
        mut keep: impl FnMut(&NodeId) -> bool,
        out: &mut Vec<MembershipEvent>,
    ) -> usize {
        let gone: Vec<NodeId> = self
            .entries
            .keys()
            .filter(|id| !keep(id))
            .cloned()
            .collect();
        for id in &gone {
            if let Some(e) = self.entries.remove(id) {
                self.counts[slot(e.state)] -= 1;
                if e.state.is_active() {
                    out.push(MembershipEvent::Failed(e.id.member().clone()));
                }
            }
        }
        gone.len()
    }

    /// Whether applying `(id, swim_inc, state)` would tell foca nothing new: the table
    /// (which follows foca) already holds exactly that.
    pub(crate) fn knows(&self, id: &GossipId, swim_inc: u16, state: State) -> bool {
        self.entries.get(id.id()).is_some_and(|e| {
            e.id == *id
                && match state {
                    State::Down => !e.state.is_active(),
                    State::Alive | State::Suspect => {
                        e.state == state_of(id, state) && e.swim_inc == swim_inc
                    }
                }
        })
    }

    /// The state of a member, if known.
    pub(crate) fn state(&self, id: &NodeId) -> Option<MemberState> {
        self.entries.get(id).map(|e| e.state)
    }

    /// The current identity of a member, if known.
    pub(crate) fn identity(&self, id: &NodeId) -> Option<&GossipId> {
        self.entries.get(id).map(|e| &e.id)
    }

    /// Every known member with its state.
    pub(crate) fn members(&self) -> impl Iterator<Item = (&Member, MemberState)> {
        self.entries.values().map(|e| (e.id.member(), e.state))
    }

    /// How many members are in `state`.
    pub(crate) fn count(&self, state: MemberState) -> usize {
        self.counts[slot(state)]
    }

    /// Alive and suspect members.
    pub(crate) fn num_active(&self) -> usize {
        self.count(MemberState::Alive) + self.count(MemberState::Suspect)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn gid(node: u8, life: u64, leaving: bool) -> GossipId {
        let mut m = Member::new(
            NodeId::new(format!("n{node}")).unwrap(),
            format!("127.0.0.1:{}", 1000 + u16::from(node))
                .parse()
                .unwrap(),
            1,
        );
        m.incarnation = life;
        let id = GossipId::new(m);
        if leaving { id.leaving() } else { id }
    }

    /// What a consumer of the event stream would believe.
    fn replay(events: &[MembershipEvent]) -> BTreeMap<NodeId, (Member, MemberState)> {
        let mut view = BTreeMap::new();
        for e in events {
            let m = e.member().clone();
            let s = match e {
                MembershipEvent::Joined(_)
                | MembershipEvent::Alive(_)
                | MembershipEvent::Updated(_) => view
                    .get(&m.id)
                    .map(|(_, s): &(Member, MemberState)| *s)
                    .filter(|s| s.is_active() && !matches!(e, MembershipEvent::Joined(_)))
                    .map_or(MemberState::Alive, |s| {
                        if matches!(e, MembershipEvent::Alive(_)) {
                            MemberState::Alive
                        } else {
                            s
                        }
                    }),
                MembershipEvent::Suspect(_) => MemberState::Suspect,
                MembershipEvent::Failed(_) => MemberState::Failed,
                MembershipEvent::Left(_) => MemberState::Left,
            };
            view.insert(m.id.clone(), (m, s));
        }
        view
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set(u8, u64, bool, u8, u8),
        Hint(u8, u64, bool, u8, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        let f = (0u8..4, 0u64..3, any::<bool>(), 0u8..4, 0u8..4);
        prop_oneof![
            f.clone()
                .prop_map(|(n, l, lv, i, s)| Op::Set(n, l, lv, i, s)),
            f.prop_map(|(n, l, lv, i, s)| Op::Hint(n, l, lv, i, s)),
        ]
    }

    fn foca_state(s: u8) -> State {
        match s % 3 {
            0 => State::Alive,
            1 => State::Suspect,
            _ => State::Down,
        }
    }

    proptest! {
        /// Whatever foca reports, in whatever order, a consumer replaying the events
        /// believes exactly what the table holds about active members, and the per-state
        /// counts match the entries.
        #[test]
        fn events_replay_to_the_table(ops in proptest::collection::vec(op(), 0..60)) {
            let mut t = Table::default();
            let mut events = Vec::new();
            for o in ops {
                match o {
                    Op::Set(n, l, lv, i, s) => {
                        let id = gid(n, l, lv);
                        let st = state_of(&id, foca_state(s));
                        t.set(&id, Some(u16::from(i)), st, &mut events);
                    }
                    Op::Hint(n, l, lv, i, s) => {
                        t.hint(&gid(n, l, lv), u16::from(i), foca_state(s), &mut events);
                    }
                }
            }
            let view = replay(&events);
            for (m, s) in t.members() {
                if s.is_active() {
                    prop_assert_eq!(view.get(&m.id), Some(&(m.clone(), s)));
                } else if let Some((_, vs)) = view.get(&m.id) {
                    prop_assert!(!vs.is_active(), "consumer still thinks {} is active", m.id);
                }
            }
            for (id, (_, s)) in &view {
                if s.is_active() {
                    prop_assert!(t.state(id).is_some_and(MemberState::is_active));
                }
            }
            let total: usize = [MemberState::Alive, MemberState::Suspect, MemberState::Failed, MemberState::Left]
                .into_iter().map(|s| t.count(s)).sum();
            prop_assert_eq!(total, t.members().count());
            prop_assert_eq!(t.num_active(), t.members().filter(|(_, s)| s.is_active()).count());
        }

        /// Hints follow foca's precedence: a suspicion needs an incarnation at least as
        /// high as the alive one it replaces, a refutation a strictly higher one, and
        /// nothing revives an inactive member.
        #[test]
        fn hints_follow_swim_precedence(i0 in 0u16..5, i1 in 0u16..5, s1 in 0u8..3) {
            let mut t = Table::default();
            let mut ev = Vec::new();
            let id = gid(1, 0, false);
            t.set(&id, Some(i0), MemberState::Alive, &mut ev);
            ev.clear();
            t.hint(&id, i1, foca_state(s1), &mut ev);
            let expect = match foca_state(s1) {
                State::Suspect if i1 >= i0 => MemberState::Suspect,
                _ => MemberState::Alive,
            };
            prop_assert_eq!(t.state(&id.id().clone()), Some(expect));
            t.set(&id, Some(i0), MemberState::Failed, &mut ev);
            t.hint(&id, u16::MAX, State::Alive, &mut ev);
            prop_assert_eq!(t.state(&id.id().clone()), Some(MemberState::Failed));
        }
    }

    #[test]
    fn lifecycle_events() {
        let mut t = Table::default();
        let mut ev = Vec::new();
        let a = gid(1, 0, false);
        t.set(&a, Some(0), MemberState::Alive, &mut ev);
        t.hint(&a, 0, State::Suspect, &mut ev);
        t.hint(&a, 1, State::Alive, &mut ev);
        let a2 = gid(1, 1, false);
        t.set(&a2, None, MemberState::Alive, &mut ev);
        let a2l = a2.leaving();
        t.set(&a2l, None, MemberState::Alive, &mut ev);
        t.set(&a2l, None, MemberState::Left, &mut ev);
        let names: Vec<_> = ev
            .iter()
            .map(|e| match e {
                MembershipEvent::Joined(_) => "joined",
                MembershipEvent::Updated(_) => "updated",
                MembershipEvent::Suspect(_) => "suspect",
                MembershipEvent::Alive(_) => "alive",
                MembershipEvent::Failed(_) => "failed",
                MembershipEvent::Left(_) => "left",
            })
            .collect();
        // The leave marker alone is not an update the application can see.
        assert_eq!(names, ["joined", "suspect", "alive", "updated", "left"]);
        assert_eq!(t.count(MemberState::Left), 1);
        assert_eq!(t.num_active(), 0);
    }
}
