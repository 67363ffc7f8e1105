//! Delivery order across the streams of one (peer, application).
//!
//! A (peer, application) normally has one stream, but during a handover (duplicate
//! connection, simultaneous open) the peer may write on a new stream while this side is
//! still delivering the old one. Messages on a stream this side has given up ("retired")
//! were written before anything on a newer stream, so:
//!
//! - a retired stream's reader delivers once no stream retired *earlier* is still read;
//! - any other reader (the current stream, or one not yet decided) delivers once no
//!   retired reader is alive.
//!
//! Only the node with the smaller ID needs this: it finishes a stream it gives up at once,
//! while the larger node finishes only after it has read the smaller's end (so the
//! smaller's later writes can never overtake). Retired readers end when the peer finishes
//! the stream, which never depends on this gate, so the wait is bounded.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// What the lane's writer decided about a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Accepted, not decided yet.
    Pending,
    /// The stream the lane uses.
    Current,
    /// Given up (in this order among retired streams): read to its end, never written
    /// again.
    Retired(u64),
}

#[derive(Debug, Default)]
pub(crate) struct Gate {
    readers: Mutex<BTreeMap<u64, Role>>,
    next: AtomicU64,
    next_retired: AtomicU64,
    retired: AtomicUsize,
    changed: Notify,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Role>> {
        self.readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a reader (pending or current); returns its ID.
    pub(crate) fn register(&self, role: Role) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, role);
        id
    }

    /// Marks a reader current (no-op for a reader that has ended or retired).
    pub(crate) fn set_current(&self, id: u64) {
        if let Some(r) = self.lock().get_mut(&id)
            && *r == Role::Pending
        {
            *r = Role::Current;
        }
    }

    /// Marks a reader retired, after every stream retired before (no-op once ended).
    pub(crate) fn retire(&self, id: u64) {
        let mut readers = self.lock();
        if let Some(r) = readers.get_mut(&id)
            && !matches!(r, Role::Retired(_))
        {
            *r = Role::Retired(self.next_retired.fetch_add(1, Ordering::Relaxed));
            self.retired.fetch_add(1, Ordering::AcqRel);
        }
        drop(readers);
        self.changed.notify_waiters();
    }

    /// Removes an ended reader.
    pub(crate) fn remove(&self, id: u64) {
        if matches!(self.lock().remove(&id), Some(Role::Retired(_))) {
            self.retired.fetch_sub(1, Ordering::AcqRel);
        }
        self.changed.notify_waiters();
    }

    /// Whether no reader of the lane is alive.
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Whether reader `id` may deliver its next message now.
    pub(crate) fn may_deliver(&self, id: u64) -> bool {
        if self.retired.load(Ordering::Acquire) == 0 {
            return true;
        }
        let readers = self.lock();
        match readers.get(&id) {
            Some(Role::Retired(mine)) => !readers
                .values()
                .any(|r| matches!(r, Role::Retired(other) if other < mine)),
            Some(_) => !readers.values().any(|r| matches!(r, Role::Retired(_))),
            None => true,
        }
    }

    /// Waits until reader `id` may deliver its next message.
    pub(crate) async fn wait(&self, id: u64) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.may_deliver(id) {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_streams_wait_for_retired_ones() {
        let gate = Gate::default();
        let old = gate.register(Role::Current);
        let new = gate.register(Role::Pending);
        assert!(gate.may_deliver(old) && gate.may_deliver(new));
        gate.retire(old);
        assert!(gate.may_deliver(old));
        assert!(!gate.may_deliver(new));
        gate.remove(old);
        assert!(gate.may_deliver(new));
    }

    #[test]
    fn a_rejected_newer_stream_goes_before_the_current_one() {
        // Simultaneous open: our stream stays current, the peer's is rejected; the peer
        // wrote on its own stream first.
        let gate = Gate::default();
        let ours = gate.register(Role::Current);
        let theirs = gate.register(Role::Pending);
        gate.retire(theirs);
        assert!(gate.may_deliver(theirs));
        assert!(!gate.may_deliver(ours));
        gate.remove(theirs);
        assert!(gate.may_deliver(ours));
    }

    #[test]
    fn retired_streams_drain_in_retirement_order() {
        let gate = Gate::default();
        let a = gate.register(Role::Pending);
        let b = gate.register(Role::Current);
        gate.retire(b);
        gate.retire(a);
        assert!(gate.may_deliver(b));
        assert!(!gate.may_deliver(a));
        gate.remove(b);
        assert!(gate.may_deliver(a));
    }
}
