//! A bounded many-to-one queue whose receiver takes what is queued in batches.
//!
//! The queues of the hot paths (a stream reader delivering to its application, a sender
//! queueing for its lane's writer) move one small message per operation. A general
//! channel pays for each one: a permit taken and given back (a lock on the way back), a
//! block list, a waker woken per message. Here a send is one short lock hold that appends
//! to a `VecDeque`, and wakes the receiver only if it is waiting; the receiver takes a
//! batch under one lock hold and hands it out from a buffer of its own.
//!
//! Bound: at most `capacity` items are queued, and at most `take` more are in the
//! receiver's buffer (their room is given back when they are taken, so that senders can
//! fill the queue while the receiver works through its batch). Memory stays bounded by
//! what the queue was built with, whatever the two sides do.
//!
//! Fairness: senders that had to wait for room go before senders that did not (a new
//! `try_send` finds the queue full while any sender waits), so a sender that waits is not
//! overtaken forever by others that keep finding room first.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update below is a whole-field assignment or a collection call that leaves
    // its collection valid: nothing is half-updated by a panic.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How many items the node's queues hand their receivers at a time: a batch's room is
/// given back at once, and a sender never waits for a receiver that holds a whole
/// queue's worth.
pub(crate) const TAKE: usize = 64;

/// Why [`Sender::try_send`] did not queue an item (returned with it).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TrySendError<T> {
    /// The queue holds `capacity` items, or senders wait for room.
    Full(T),
    /// The receiver is gone.
    Closed(T),
}

/// Why [`AppReceiver::try_recv`](crate::AppReceiver::try_recv) returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// Nothing is queued now.
    #[error("no message is queued")]
    Empty,
    /// Nothing is queued and nothing will be: the application was closed.
    #[error("the application was closed")]
    Disconnected,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Senders waiting for room (see [`Sender::send`]).
    room: Notify,
    /// Tasks waiting for the receiver's end (see [`Sender::closed`]).
    end: Notify,
    capacity: usize,
    /// Most items the receiver takes into its buffer at once.
    take: usize,
    /// Live senders. Counted outside the lock (a lane's sender is cloned per send); the
    /// last one's drop takes the lock to wake the receiver.
    senders: AtomicUsize,
    /// Nothing queued, and the receiver said it holds nothing (see
    /// [`Sender::is_empty`]): written under the lock whenever either changes, read
    /// without it.
    empty: AtomicBool,
    /// `receiver_gone`, readable without the lock.
    gone: AtomicBool,
}

impl<T> Shared<T> {
    /// The receiver is gone (dropped, or closed): no more items are queued. Called with
    /// `st` locked; the caller then wakes everyone with [`wake_all`](Self::wake_all).
    fn end(&self, st: &mut State<T>) {
        st.receiver_gone = true;
        self.gone.store(true, Ordering::Release);
    }

    fn wake_all(&self) {
        self.room.notify_waiters();
        self.end.notify_waiters();
    }
}

struct State<T> {
    items: VecDeque<T>,
    /// The receiver took items since it last said it holds none (see
    /// [`Receiver::idle`]): it may still be working on one.
    holding: bool,
    /// The receiver's waker while it waits for an item.
    waker: Option<Waker>,
    /// Senders inside [`Sender::send`] waiting for room: while there are any, only they
    /// may queue.
    waiting: usize,
    /// The receiver was dropped or closed: nothing more is queued.
    receiver_gone: bool,
}

/// A queue of at most `capacity` items (at least 1), whose receiver takes up to `take`
/// of them at a time (at least 1): a smaller `take` gives room back to the senders
/// sooner, a larger one takes the lock less often.
pub(crate) fn channel<T>(capacity: usize, take: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            holding: false,
            waker: None,
            waiting: 0,
            receiver_gone: false,
        }),
        room: Notify::new(),
        end: Notify::new(),
        capacity: capacity.max(1),
        take: take.max(1),
        senders: AtomicUsize::new(1),
        empty: AtomicBool::new(true),
        gone: AtomicBool::new(false),
    });
    let rx = Receiver {
        shared: shared.clone(),
        buf: VecDeque::new(),
    };
    (Sender { shared }, rx)
}

/// The sending end; cheap to clone.
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        // A new sender comes from a live one: the count cannot be reaching zero now.
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        // The last one. The receiver looks at the count under the lock before it
        // registers its waker, so taken after the count fell, the lock finds either no
        // waker (the receiver will see the count) or the one to wake.
        let waker = lock(&self.shared.state).waker.take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Counts a sender among the waiting ones while it lives.
struct Waiting<'a, T>(&'a Shared<T>);

impl<'a, T> Waiting<'a, T> {
    fn new(shared: &'a Shared<T>) -> Self {
        lock(&shared.state).waiting += 1;
        Self(shared)
    }
}

impl<T> Drop for Waiting<'_, T> {
    fn drop(&mut self) {
        let mut st = lock(&self.0.state);
        st.waiting -= 1;
        let room = st.items.len() < self.0.capacity && st.waiting > 0;
        drop(st);
        if room {
            // Gone without using room it may have been woken for: the others look.
            self.0.room.notify_waiters();
        }
    }
}

impl<T> Sender<T> {
    /// Queues `item` if there is room, no other sender waits for it, and the receiver is
    /// there. `Ok(true)`: the queue was empty and the receiver holds nothing, so a
    /// receiver that waits elsewhere than in `recv` (a parked lane writer) needs telling;
    /// otherwise whoever queued the first item did that.
    pub(crate) fn try_send(&self, item: T) -> Result<bool, TrySendError<T>> {
        self.push(item, false)
    }

    fn push(&self, item: T, waiter: bool) -> Result<bool, TrySendError<T>> {
        let mut st = lock(&self.shared.state);
        if st.receiver_gone {
            return Err(TrySendError::Closed(item));
        }
        if st.items.len() >= self.shared.capacity || (!waiter && st.waiting > 0) {
            return Err(TrySendError::Full(item));
        }
        let first = st.items.is_empty() && !st.holding;
        st.items.push_back(item);
        if first {
            self.shared.empty.store(false, Ordering::Release);
        }
        let waker = st.waker.take();
        drop(st);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(first)
    }

    /// Queues `item`, waiting for room (`Ok` as for [`try_send`](Self::try_send)).
    /// `Err(item)`: the receiver is gone. Dropping the future drops the item unless it
    /// was queued.
    pub(crate) async fn send(&self, item: T) -> Result<bool, T> {
        // As tokio's own channels: a sender that always finds room still yields to the
        // runtime once its task's budget is spent. Otherwise it keeps its worker until
        // the queue is full, and the receiver it wakes waits in that worker's LIFO slot
        // (which no other worker steals from) instead of running beside it.
        tokio::task::consume_budget().await;
        let mut item = match self.try_send(item) {
            Ok(first) => return Ok(first),
            Err(TrySendError::Closed(item)) => return Err(item),
            Err(TrySendError::Full(item)) => item,
        };
        let _waiting = Waiting::new(&self.shared);
        loop {
            // Registered before looking again, so that room given back after this look
            // wakes it (the first look, above, registers nothing: a send that finds room
            // never touches the waiters).
            let room = self.shared.room.notified();
            let mut room = std::pin::pin!(room);
            room.as_mut().enable();
            match self.push(item, true) {
                Ok(first) => return Ok(first),
                Err(TrySendError::Closed(back)) => return Err(back),
                Err(TrySendError::Full(back)) => item = back,
            }
            room.await;
        }
    }

    /// Waits until the receiver is gone.
    pub(crate) async fn closed(&self) {
        let end = self.shared.end.notified();
        let mut end = std::pin::pin!(end);
        end.as_mut().enable();
        if self.is_closed() {
            return;
        }
        end.await;
    }

    /// Whether the receiver is gone.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.gone.load(Ordering::Acquire)
    }

    /// Whether nothing is queued and the receiver said it holds nothing (see
    /// [`Receiver::idle`]); from then on the next item queued is the first one.
    pub(crate) fn is_empty(&self) -> bool {
        self.shared.empty.load(Ordering::Acquire)
    }

    pub(crate) fn same_channel(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

/// The receiving end. Dropping it closes the queue and drops what it holds.
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// Items taken out of the queue and not handed out yet, in order.
    buf: VecDeque<T>,
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let items = {
            let mut st = lock(&self.shared.state);
            self.shared.end(&mut st);
            st.waker = None;
            std::mem::take(&mut st.items)
        };
        // Dropped outside the lock: an item's drop may do anything.
        drop(items);
        self.shared.wake_all();
    }
}

impl<T> Receiver<T> {
    /// The next item; `None` once every sender is gone and nothing is left. With
    /// `Pending`, `cx`'s waker is woken by the next send (or the last sender's drop).
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        // As tokio's own channels: a receiver that always finds an item still yields to
        // the runtime once its task's budget is spent.
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        let item = match self.buf.pop_front() {
            Some(item) => Some(item),
            None => {
                let ended = self.refill(Some(cx.waker()));
                match self.buf.pop_front() {
                    Some(item) => Some(item),
                    None if ended => None,
                    None => return Poll::Pending,
                }
            }
        };
        coop.made_progress();
        Poll::Ready(item)
    }

    /// The next item if one is queued now.
    pub(crate) fn try_recv(&mut self) -> Result<T, TryRecvError> {
        if let Some(item) = self.buf.pop_front() {
            return Ok(item);
        }
        let ended = self.refill(None);
        match self.buf.pop_front() {
            Some(item) => Ok(item),
            None if ended => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// The next item, waiting for one; `None` once every sender is gone and nothing is
    /// left. Cancel-safe.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Items queued or in the buffer.
    pub(crate) fn len(&self) -> usize {
        self.buf.len() + lock(&self.shared.state).items.len()
    }

    /// Whether nothing is queued or in the buffer.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty() && lock(&self.shared.state).items.is_empty()
    }

    /// If nothing is queued or in the buffer: says the receiver holds no item either
    /// (it finished with every one it was handed), so that [`Sender::is_empty`] holds
    /// and the next `try_send` reports the first item. Whether that was so.
    pub(crate) fn idle(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut st = lock(&self.shared.state);
        if !st.items.is_empty() {
            return false;
        }
        st.holding = false;
        self.shared.empty.store(true, Ordering::Release);
        true
    }

    /// With the buffer empty: takes up to `take` queued items into it, and wakes the
    /// senders waiting for the room they leave. With nothing to take, registers `waker`
    /// for the next send. Whether the queue has ended (every sender gone, or closed):
    /// then nothing more comes once the buffer is empty.
    fn refill(&mut self, waker: Option<&Waker>) -> bool {
        debug_assert!(self.buf.is_empty());
        let shared = &*self.shared;
        let (ended, wake) = {
            let mut st = lock(&shared.state);
            if st.items.len() <= shared.take {
                std::mem::swap(&mut st.items, &mut self.buf);
            } else {
                self.buf.extend(st.items.drain(..shared.take));
            }
            let took = !self.buf.is_empty();
            if took {
                st.holding = true;
            }
            let ended = st.receiver_gone || shared.senders.load(Ordering::Acquire) == 0;
            if let Some(waker) = waker
                && !took
                && !ended
                && !st.waker.as_ref().is_some_and(|w| w.will_wake(waker))
            {
                st.waker = Some(waker.clone());
            }
            (ended, took && st.waiting > 0)
        };
        if wake {
            shared.room.notify_waiters();
        }
        ended
    }

    /// Refuses further items; what is queued can still be taken.
    pub(crate) fn close(&mut self) {
        self.shared.end(&mut lock(&self.shared.state));
        self.shared.wake_all();
    }

    /// Closes the queue and drops everything in it; how many items that was.
    pub(crate) fn close_and_clear(&mut self) -> usize {
        let items = {
            let mut st = lock(&self.shared.state);
            self.shared.end(&mut st);
            std::mem::take(&mut st.items)
        };
        self.shared.wake_all();
        let dropped = items.len() + self.buf.len();
        self.buf.clear();
        dropped
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn items_come_out_in_order_and_taking_them_makes_room() {
        let (tx, mut rx) = channel(3, 2);
        for i in 0..3 {
            tx.try_send(i).unwrap();
        }
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        // Two taken (1 is still in the receiver's buffer): two places are free.
        assert_eq!(rx.try_recv(), Ok(0));
        tx.try_send(3).unwrap();
        tx.try_send(4).unwrap();
        assert_eq!(tx.try_send(5), Err(TrySendError::Full(5)));
        assert_eq!(rx.len(), 4);
        for i in 1..5 {
            assert_eq!(rx.try_recv(), Ok(i));
        }
        // Handed out, but only the receiver knows whether it finished with them.
        assert!(rx.is_empty());
        assert!(!tx.is_empty());
        assert!(rx.idle());
        assert!(tx.is_empty());
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        tx.try_send(5).unwrap();
        assert_eq!(rx.try_recv(), Ok(5));
        drop(tx);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[test]
    fn the_receiver_takes_at_most_take_items_at_once() {
        let (tx, mut rx) = channel(10, 4);
        for i in 0..10 {
            tx.try_send(i).unwrap();
        }
        assert_eq!(tx.try_send(10), Err(TrySendError::Full(10)));
        assert_eq!(rx.try_recv(), Ok(0));
        for i in 10..14 {
            tx.try_send(i).unwrap();
        }
        assert_eq!(tx.try_send(14), Err(TrySendError::Full(14)));
        assert_eq!(rx.len(), 13);
        let rest: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(rest, (1..14).collect::<Vec<_>>());
    }

    #[test]
    fn close_refuses_new_items_but_hands_out_the_queued_ones() {
        let (tx, mut rx) = channel(8, 2);
        for i in 0..5 {
            tx.try_send(i).unwrap();
        }
        assert_eq!(rx.try_recv(), Ok(0));
        rx.close();
        assert!(tx.is_closed());
        assert_eq!(tx.try_send(9), Err(TrySendError::Closed(9)));
        let rest: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(rest, [1, 2, 3, 4]);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));

        let (tx, mut rx) = channel(8, 2);
        for i in 0..5 {
            tx.try_send(i).unwrap();
        }
        assert_eq!(rx.try_recv(), Ok(0));
        // One in the buffer, three queued.
        assert_eq!(rx.close_and_clear(), 4);
        assert_eq!(rx.len(), 0);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[test]
    fn a_waiting_receiver_is_woken_once_per_wait_and_by_the_last_sender() {
        let (tx, mut rx) = channel::<u32>(8, 8);
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(rx.poll_recv(&mut cx).is_pending());
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(1)));
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(2)));
        assert!(rx.poll_recv(&mut cx).is_pending());
        let tx2 = tx.clone();
        drop(tx);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        drop(tx2);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(None));
    }

    #[tokio::test]
    async fn a_sender_waits_for_room_and_fails_once_the_receiver_is_gone() {
        let (tx, mut rx) = channel(2, 2);
        tx.try_send(0).unwrap();
        tx.try_send(1).unwrap();
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(2).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(rx.recv().await, Some(0));
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
        waiting.await.unwrap().unwrap();

        tx.try_send(3).unwrap();
        tx.try_send(4).unwrap();
        let blocked = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(5).await }
        });
        tokio::task::yield_now().await;
        drop(rx);
        assert_eq!(blocked.await.unwrap(), Err(5));
        assert!(tx.is_closed());
        assert_eq!(tx.try_send(6), Err(TrySendError::Closed(6)));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_waiting_sender_goes_before_senders_that_did_not_wait() {
        let (tx, mut rx) = channel::<u32>(2, 2);
        tx.try_send(0).unwrap();
        tx.try_send(0).unwrap();
        let waiter = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(1).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        // Room is given back; another sender tries before the waiter runs again.
        assert_eq!(rx.recv().await, Some(0));
        assert_eq!(tx.try_send(2), Err(TrySendError::Full(2)));
        waiter.await.unwrap().unwrap();
        tx.try_send(2).unwrap();
        assert_eq!(rx.recv().await, Some(0));
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_senders_lose_nothing_and_keep_their_order() {
        let (tx, mut rx) = channel::<(usize, u32)>(16, 4);
        let mut tasks = Vec::new();
        for s in 0..4 {
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..5000 {
                    tx.send((s, i)).await.unwrap();
                }
            }));
        }
        drop(tx);
        let mut next = [0u32; 4];
        while let Some((s, i)) = rx.recv().await {
            assert_eq!(i, next[s], "sender {s}");
            next[s] += 1;
            assert!(rx.len() <= 16 + 4);
        }
        assert_eq!(next, [5000; 4]);
        for t in tasks {
            t.await.unwrap();
        }
    }
}
