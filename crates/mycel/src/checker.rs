//! A linearizability checker for single-key register histories.
//!
//! Fault tests record, for every operation on a key, when it was invoked, when (and
//! whether) it completed, and what it wrote or read. [`check`] then decides whether some
//! order of the operations, each taking effect at one instant between its invocation and
//! its completion, explains every read: the Wing-Gong search with Lowe's memoisation
//! (as in Knossos and Porcupine), specialised to a register whose value may be absent.
//!
//! Outcomes are handled as a linearizability checker must:
//! - [`Outcome::Ok`]: acknowledged; it took effect between invocation and completion.
//! - [`Outcome::Failed`]: definitely did not take effect (the system said so); it is
//!   ignored.
//! - [`Outcome::Pending`]: unknown (a timeout, a crash): a write may have taken effect at
//!   any time after its invocation, or never; a pending read observed nothing and is
//!   ignored.
//!
//! Two cheap, sound checks run first and name the offending read: a value nobody wrote
//! ([`Violation::UnwrittenValue`]) and a value whose every write began after the read
//! ended ([`Violation::ReadFromFuture`]). Stale reads and lost writes are found by the
//! search ([`Violation::NoLinearization`]). Times are any monotonic clock's ticks; equal
//! times count as concurrent, so the checker never blames a history for clock resolution.
//!
//! Cost: the search is exponential in the number of mutually overlapping operations (the
//! problem is NP-complete in general), bounded by a step budget that yields
//! [`Verdict::Unknown`]; unread overlapping writes are pruned first (quadratic in the
//! writes of a key). Histories of a few thousand operations per key from a handful of
//! concurrent clients check in well under a second.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

/// What an operation did to the register.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OpKind<V> {
    /// Wrote `Some(v)`, or deleted the key (`None`).
    Write(Option<V>),
    /// Read `Some(v)`, or found the key absent (`None`).
    Read(Option<V>),
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Acknowledged at this time.
    Ok {
        /// Completion time, not before the invocation.
        completed: u64,
    },
    /// Definitely did not take effect.
    Failed,
    /// Unknown: no answer (timeout, crash).
    Pending,
}

/// One operation of a single-key history.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Op<V> {
    /// What it did.
    pub kind: OpKind<V>,
    /// Invocation time.
    pub invoked: u64,
    /// How it ended.
    pub outcome: Outcome,
}

impl<V> Op<V> {
    /// An acknowledged write of `value` (`None`: delete) over `[invoked, completed]`.
    pub fn write(value: Option<V>, invoked: u64, completed: u64) -> Self {
        Self {
            kind: OpKind::Write(value),
            invoked,
            outcome: Outcome::Ok { completed },
        }
    }

    /// A completed read that returned `value` over `[invoked, completed]`.
    pub fn read(value: Option<V>, invoked: u64, completed: u64) -> Self {
        Self {
            kind: OpKind::Read(value),
            invoked,
            outcome: Outcome::Ok { completed },
        }
    }

    /// The same operation with another outcome.
    pub fn with_outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }
}

/// The checker's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Some legal order explains every read.
    Linearizable,
    /// No legal order exists.
    NotLinearizable(Violation),
    /// The search hit its step budget before deciding.
    Unknown {
        /// Steps taken.
        steps: u64,
    },
}

/// Why a history is not linearizable. Indices are positions in the checked slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// The read returned a value that is neither the initial value nor written by any
    /// acknowledged or pending write.
    UnwrittenValue {
        /// The read.
        read: usize,
    },
    /// Every write of the value the read returned was invoked after the read completed.
    ReadFromFuture {
        /// The read.
        read: usize,
    },
    /// No order of the operations explains the reads (a stale read, a lost write, ...).
    NoLinearization {
        /// Most operations any attempted order managed to place.
        longest_prefix: usize,
        /// An operation that could not be placed at that point: its completion came while
        /// it was still unexplained.
        stuck_at: usize,
    },
}

/// Default step budget for [`check`]: enough for thousands of operations per key with
/// realistic concurrency.
pub const DEFAULT_MAX_STEPS: u64 = 10_000_000;

/// Checks a single-key register `history` that starts at `initial`, taking at most
/// `max_steps` search steps.
pub fn check<V: Eq + Hash>(initial: Option<&V>, history: &[Op<V>], max_steps: u64) -> Verdict {
    // Intern values: the search state is a small integer.
    let mut ids: HashMap<&V, u32> = HashMap::new();
    let initial_id = intern(&mut ids, initial);

    // Keep what constrains the order: acknowledged ops and pending writes.
    let mut ops: Vec<SearchOp> = Vec::new();
    for (index, op) in history.iter().enumerate() {
        let end = match (&op.kind, op.outcome) {
            (_, Outcome::Failed) | (OpKind::Read(_), Outcome::Pending) => continue,
            (_, Outcome::Ok { completed }) => completed.max(op.invoked),
            (OpKind::Write(_), Outcome::Pending) => u64::MAX,
        };
        let (write, value) = match &op.kind {
            OpKind::Write(v) => (true, intern(&mut ids, v.as_ref())),
            OpKind::Read(v) => (false, intern(&mut ids, v.as_ref())),
        };
        ops.push(SearchOp {
            index,
            write,
            value,
            start: op.invoked,
            end,
        });
    }

    if let Some(v) = precheck(initial_id, &ops) {
        return Verdict::NotLinearizable(v);
    }
    let ops = drop_shadowed_writes(ops);
    search(initial_id, &ops, max_steps)
}

/// Checks many keys' histories (each from an absent initial value); the first verdict
/// that is not [`Verdict::Linearizable`] is returned with its key.
pub fn check_keys<'a, K, V: Eq + Hash + 'a>(
    histories: impl IntoIterator<Item = (K, &'a [Op<V>])>,
    max_steps: u64,
) -> Result<(), (K, Verdict)> {
    for (key, history) in histories {
        match check(None, history, max_steps) {
            Verdict::Linearizable => {}
            other => return Err((key, other)),
        }
    }
    Ok(())
}

/// The small integer standing for `v`; 0 is "absent".
fn intern<'a, V: Eq + Hash>(ids: &mut HashMap<&'a V, u32>, v: Option<&'a V>) -> u32 {
    match v {
        None => 0,
        Some(v) => {
            let next = u32::try_from(ids.len() + 1).unwrap_or(u32::MAX);
            *ids.entry(v).or_insert(next)
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct SearchOp {
    index: usize,
    write: bool,
    value: u32,
    start: u64,
    end: u64,
}

fn precheck(initial: u32, ops: &[SearchOp]) -> Option<Violation> {
    let mut earliest_write: HashMap<u32, u64> = HashMap::new();
    for op in ops.iter().filter(|o| o.write) {
        let e = earliest_write.entry(op.value).or_insert(op.start);
        *e = (*e).min(op.start);
    }
    for op in ops.iter().filter(|o| !o.write) {
        if op.value == initial {
            continue;
        }
        match earliest_write.get(&op.value) {
            None => return Some(Violation::UnwrittenValue { read: op.index }),
            Some(&start) if start > op.end => {
                return Some(Violation::ReadFromFuture { read: op.index });
            }
            Some(_) => {}
        }
    }
    None
}

/// Removes writes that cannot matter, which keeps the search small when many writes
/// overlap (the search is exponential in overlapping operations).
///
/// A write `w` whose value no read returned, and whose interval contains the interval of
/// another write `x` still in the history, is dropped. This preserves the verdict both
/// ways: an order of the full history minus `w` is still an order (no read saw `w`'s
/// value, so no read sat between `w` and the next write); and an order without `w` extends
/// to one with `w` placed just before `x`, which lies inside `w`'s interval, where `x`
/// overwrites it before anything reads. Applied one write at a time, each step keeps the
/// verdict, so the whole pass does.
fn drop_shadowed_writes(ops: Vec<SearchOp>) -> Vec<SearchOp> {
    let read_values: HashSet<u32> = ops.iter().filter(|o| !o.write).map(|o| o.value).collect();
    let mut keep = vec![true; ops.len()];
    for i in 0..ops.len() {
        let w = ops[i];
        if !w.write || read_values.contains(&w.value) {
            continue;
        }
        let shadowed = ops
            .iter()
            .enumerate()
            .any(|(j, x)| j != i && keep[j] && x.write && w.start <= x.start && x.end <= w.end);
        if shadowed {
            keep[i] = false;
        }
    }
    ops.into_iter()
        .zip(keep)
        .filter_map(|(op, k)| k.then_some(op))
        .collect()
}

/// Wing-Gong-Lowe search over a doubly linked list of call and return events.
fn search(initial: u32, ops: &[SearchOp], max_steps: u64) -> Verdict {
    let n = ops.len();
    // Events: 2i is op i's call, 2i+1 its return. Sorted by time, calls before returns at
    // equal times (equal times are concurrent). Among calls at one time, reads come first:
    // any order is correct (every call is tried on backtracking), but trying a read as soon
    // as the state allows it finds the usual orders without exploring write permutations.
    let mut order: Vec<usize> = (0..2 * n).collect();
    order.sort_by_key(|&e| {
        let op = &ops[e / 2];
        if e % 2 == 0 {
            (op.start, u8::from(op.write))
        } else {
            (op.end, 2)
        }
    });
    // Linked list over events with a head sentinel at index 2n.
    let head = 2 * n;
    let mut next = vec![usize::MAX; 2 * n + 1];
    let mut prev = vec![usize::MAX; 2 * n + 1];
    let mut last = head;
    for &e in &order {
        next[last] = e;
        prev[e] = last;
        last = e;
    }
    next[last] = usize::MAX;

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, u32)> = HashSet::new();
    let mut stack: Vec<(usize, u32)> = Vec::new();
    let mut state = initial;
    let mut entry = next[head];
    let mut steps = 0u64;
    let mut longest = 0usize;
    let mut stuck_at = ops.first().map_or(0, |o| o.index);

    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        let (p, nx) = (prev[e], next[e]);
        next[p] = nx;
        if nx != usize::MAX {
            prev[nx] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        let (p, nx) = (prev[e], next[e]);
        next[p] = e;
        if nx != usize::MAX {
            prev[nx] = e;
        }
    };

    loop {
        if next[head] == usize::MAX {
            return Verdict::Linearizable;
        }
        steps += 1;
        if steps > max_steps {
            return Verdict::Unknown { steps };
        }
        let e = entry;
        let i = e / 2;
        let op = &ops[i];
        if e % 2 == 0 {
            let legal = op.write || op.value == state;
            let new_state = if op.write { op.value } else { state };
            let mut placed = false;
            if legal {
                linearized[i / 64] |= 1 << (i % 64);
                if seen.insert((linearized.clone(), new_state)) {
                    stack.push((e, state));
                    state = new_state;
                    // Lift the call, then its return.
                    unlink(&mut next, &mut prev, e);
                    unlink(&mut next, &mut prev, e + 1);
                    entry = next[head];
                    placed = true;
                } else {
                    linearized[i / 64] &= !(1 << (i % 64));
                }
            }
            if !placed {
                entry = next[e];
            }
        } else {
            // A return reached while its operation is unplaced: undo the last choice.
            if stack.len() >= longest {
                longest = stack.len();
                stuck_at = op.index;
            }
            let Some((call, prev_state)) = stack.pop() else {
                return Verdict::NotLinearizable(Violation::NoLinearization {
                    longest_prefix: longest,
                    stuck_at,
                });
            };
            state = prev_state;
            let j = call / 2;
            linearized[j / 64] &= !(1 << (j % 64));
            // Put back in reverse order: the return, then the call.
            relink(&mut next, &mut prev, call + 1);
            relink(&mut next, &mut prev, call);
            entry = next[call];
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ok(history: &[Op<u32>]) -> Verdict {
        check(None, history, DEFAULT_MAX_STEPS)
    }

    fn w(v: u32, a: u64, b: u64) -> Op<u32> {
        Op::write(Some(v), a, b)
    }

    fn r(v: Option<u32>, a: u64, b: u64) -> Op<u32> {
        Op::read(v, a, b)
    }

    #[test]
    fn sequential_history_passes() {
        let h = [
            r(None, 0, 1),
            w(1, 2, 3),
            r(Some(1), 4, 5),
            w(2, 6, 7),
            r(Some(2), 8, 9),
            Op::write(None, 10, 11),
            r(None, 12, 13),
        ];
        assert_eq!(ok(&h), Verdict::Linearizable);
        assert_eq!(ok(&[]), Verdict::Linearizable);
    }

    #[test]
    fn concurrent_reads_may_see_either_value() {
        // w2 overlaps both reads: one may see 1 and the next 2, not the other way round.
        let h = [w(1, 0, 1), w(2, 2, 10), r(Some(1), 3, 4), r(Some(2), 5, 6)];
        assert_eq!(ok(&h), Verdict::Linearizable);
        let h = [w(1, 0, 1), w(2, 2, 10), r(Some(2), 3, 4), r(Some(1), 5, 6)];
        assert!(matches!(
            ok(&h),
            Verdict::NotLinearizable(Violation::NoLinearization { .. })
        ));
        // Two concurrent writes can be ordered either way.
        let h = [w(1, 0, 5), w(2, 0, 5), r(Some(1), 6, 7)];
        assert_eq!(ok(&h), Verdict::Linearizable);
    }

    #[test]
    fn stale_read_fails() {
        let h = [w(1, 0, 1), w(2, 2, 3), r(Some(1), 4, 5)];
        assert_eq!(
            ok(&h),
            Verdict::NotLinearizable(Violation::NoLinearization {
                longest_prefix: 2,
                stuck_at: 2
            })
        );
    }

    #[test]
    fn lost_write_fails() {
        // An acknowledged write, then the key reads as absent.
        let h = [w(1, 0, 1), r(None, 2, 3)];
        assert!(matches!(ok(&h), Verdict::NotLinearizable(_)));
        // Lost after a node kill: later writes' reads skip back.
        let h = [w(1, 0, 1), w(2, 2, 3), r(Some(2), 4, 5), r(Some(1), 6, 7)];
        assert!(matches!(ok(&h), Verdict::NotLinearizable(_)));
    }

    #[test]
    fn read_from_the_future_fails() {
        let h = [r(Some(7), 0, 1), w(7, 2, 3)];
        assert_eq!(
            ok(&h),
            Verdict::NotLinearizable(Violation::ReadFromFuture { read: 0 })
        );
        // Overlapping is fine: the write may take effect before the read returns.
        let h = [r(Some(7), 0, 2), w(7, 2, 3)];
        assert_eq!(ok(&h), Verdict::Linearizable);
    }

    #[test]
    fn unwritten_and_failed_values_fail() {
        assert_eq!(
            ok(&[w(1, 0, 1), r(Some(9), 2, 3)]),
            Verdict::NotLinearizable(Violation::UnwrittenValue { read: 1 })
        );
        let failed = w(5, 0, 1).with_outcome(Outcome::Failed);
        assert_eq!(
            ok(&[failed, r(Some(5), 2, 3)]),
            Verdict::NotLinearizable(Violation::UnwrittenValue { read: 1 })
        );
    }

    #[test]
    fn pending_writes_may_or_may_not_happen() {
        let pending = w(2, 2, 0).with_outcome(Outcome::Pending);
        // Never seen: fine.
        assert_eq!(
            ok(&[w(1, 0, 1), pending.clone(), r(Some(1), 10, 11)]),
            Verdict::Linearizable
        );
        // Seen long after its invocation: fine.
        assert_eq!(
            ok(&[w(1, 0, 1), pending.clone(), r(Some(2), 100, 101)]),
            Verdict::Linearizable
        );
        // But once seen, it cannot be unseen.
        let h = [w(1, 0, 1), pending, r(Some(2), 3, 4), r(Some(1), 5, 6)];
        assert!(matches!(ok(&h), Verdict::NotLinearizable(_)));
        // Pending and failed reads constrain nothing.
        let h = [
            w(1, 0, 1),
            r(Some(3), 2, 3).with_outcome(Outcome::Pending),
            r(None, 2, 3).with_outcome(Outcome::Failed),
        ];
        assert_eq!(ok(&h), Verdict::Linearizable);
    }

    #[test]
    fn initial_value_and_budget() {
        let h = [r(Some(4), 0, 1)];
        assert_eq!(check(Some(&4), &h, 100), Verdict::Linearizable);
        assert!(matches!(check(None, &h, 100), Verdict::NotLinearizable(_)));
        // Many fully concurrent writes then a read of the first: the unread writes are
        // shadowed and dropped, so this is quick.
        let mut h: Vec<Op<u32>> = (1..=200).map(|v| w(v, 0, 100)).collect();
        h.push(r(Some(1), 200, 201));
        assert_eq!(check(None, &h, 1_000), Verdict::Linearizable);
        // And still wrong when the read is stale.
        h.push(w(500, 300, 301));
        h.push(r(Some(1), 400, 401));
        assert!(matches!(
            check(None, &h, 1_000),
            Verdict::NotLinearizable(_)
        ));
        // Concurrent writes that are all read cannot be dropped; a tiny budget gives up.
        let mut h: Vec<Op<u32>> = (1..=20).map(|v| w(v, 0, 100)).collect();
        h.extend((1..=20).map(|v| r(Some(v), 0, 100)));
        assert!(matches!(check(None, &h, 10), Verdict::Unknown { .. }));
        assert_eq!(ok(&h), Verdict::Linearizable);
    }

    #[test]
    fn check_keys_names_the_key() {
        let good = [w(1, 0, 1), r(Some(1), 2, 3)];
        let bad = [w(1, 0, 1), r(None, 2, 3)];
        let histories = [("a", &good[..]), ("b", &bad[..])];
        let err = check_keys(histories, DEFAULT_MAX_STEPS).expect_err("b is broken");
        assert_eq!(err.0, "b");
    }

    #[test]
    fn thousands_of_operations_from_concurrent_clients() {
        // 8 clients, 250 operations each, back to back with varied latencies: the shape of a
        // fault test's history for one hot key.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        let mut specs = Vec::new();
        for _client in 0..8 {
            let mut t = rand(10);
            for _ in 0..250 {
                let len = 1 + rand(40);
                specs.push(Spec {
                    start: t,
                    len,
                    point: t + rand(len + 1),
                    write: rand(3) == 0,
                    fate: u8::try_from(rand(10)).expect("small"),
                });
                t += len + rand(5);
            }
        }
        let mut h = execute(&specs);
        assert_eq!(h.len(), 2000);
        assert_eq!(check(None, &h, DEFAULT_MAX_STEPS), Verdict::Linearizable);
        // The last acknowledged write, read back long after, but as the value before it.
        let end = h
            .iter()
            .map(|o| match o.outcome {
                Outcome::Ok { completed } => completed,
                _ => o.invoked,
            })
            .max()
            .expect("non-empty");
        h.push(w(77_777, end + 10, end + 11));
        h.push(w(88_888, end + 20, end + 21));
        h.push(r(Some(77_777), end + 30, end + 31));
        assert!(matches!(
            check(None, &h, DEFAULT_MAX_STEPS),
            Verdict::NotLinearizable(Violation::NoLinearization { .. })
        ));
    }

    /// An acknowledged write: value, invocation, completion.
    type Acked = (u32, u64, u64);

    /// A real register run: each op takes effect at a point inside its interval.
    #[derive(Debug, Clone)]
    struct Spec {
        start: u64,
        len: u64,
        point: u64,
        write: bool,
        fate: u8,
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (0u64..100, 0u64..30, 0u64..=100, any::<bool>(), 0u8..10).prop_map(
            |(start, len, frac, write, fate)| Spec {
                start,
                len,
                point: start + len * frac / 100,
                write,
                fate,
            },
        )
    }

    /// Builds the history of a linearizable execution of `specs`: values are unique,
    /// reads return the state at their point; some writes fail (no effect) or are pending
    /// (effect or not), some reads are pending.
    fn execute(specs: &[Spec]) -> Vec<Op<u32>> {
        let mut order: Vec<usize> = (0..specs.len()).collect();
        order.sort_by_key(|&i| (specs[i].point, i));
        let mut state = None;
        let mut ops: Vec<Option<Op<u32>>> = vec![None; specs.len()];
        for i in order {
            let s = &specs[i];
            let value = u32::try_from(i + 1).expect("small");
            let end = s.start + s.len;
            let op = if s.write {
                match s.fate {
                    0 => w(value, s.start, end).with_outcome(Outcome::Failed),
                    1 => w(value, s.start, end).with_outcome(Outcome::Pending),
                    2 => {
                        state = Some(value);
                        w(value, s.start, end).with_outcome(Outcome::Pending)
                    }
                    _ => {
                        state = Some(value);
                        w(value, s.start, end)
                    }
                }
            } else if s.fate == 0 {
                r(Some(999), s.start, end).with_outcome(Outcome::Pending)
            } else {
                r(state, s.start, end)
            };
            ops[i] = Some(op);
        }
        ops.into_iter()
            .map(|o| o.expect("every op executed"))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn real_executions_pass(specs in proptest::collection::vec(spec(), 0..40)) {
            let h = execute(&specs);
            prop_assert_eq!(check(None, &h, DEFAULT_MAX_STEPS), Verdict::Linearizable);
        }

        #[test]
        fn a_stale_read_is_caught(specs in proptest::collection::vec(spec(), 2..40), pick in any::<prop::sample::Index>()) {
            let mut h = execute(&specs);
            // Acknowledged writes; take a value v and a write w' that began after every
            // write of v completed (values are unique, so one write of v).
            let acked: Vec<(u32, u64, u64)> = h.iter().filter_map(|o| match (&o.kind, o.outcome) {
                (OpKind::Write(Some(v)), Outcome::Ok { completed }) => Some((*v, o.invoked, completed)),
                _ => None,
            }).collect();
            let pairs: Vec<(Acked, Acked)> = acked.iter()
                .flat_map(|&a| acked.iter().filter(move |b| b.1 > a.2).map(move |&b| (a, b)))
                .collect();
            prop_assume!(!pairs.is_empty());
            let ((v, _, _), (_, _, later_end)) = pairs[pick.index(pairs.len())];
            // A read after w' completed that still returns v is stale.
            h.push(r(Some(v), later_end + 1, later_end + 2));
            prop_assert!(matches!(check(None, &h, DEFAULT_MAX_STEPS), Verdict::NotLinearizable(_)));
        }
    }
}
