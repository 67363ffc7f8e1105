//! An application's receiving end, and how its stream readers reach it without a task hop.
//!
//! Every stream of an application has a reader: a future that decodes the stream's
//! messages and delivers them, in order, into the application's bounded channel (see
//! `node::read_stream`). The reader lives in its own task (its *shell*), which polls it
//! whenever quinn wakes it. While the application waits in [`AppReceiver::recv`] with an
//! empty channel, though, a reader that quinn wakes is polled by the receiving task
//! itself: the message reaches the application with one wake-up (quinn's connection
//! driver -> application) instead of two (driver -> reader task -> application), as with
//! a raw quinn stream read by the application. Besides the hop's own cost, tokio runs at
//! most three tasks in a row from a worker's LIFO slot; with the extra hop a request and
//! its answer (driver -> reader -> application -> driver) went over that limit, and the
//! fourth wake-up went through the run queue and woke the other worker: a futex call, a
//! cross-thread hand-over and contention on quinn's connection lock on every message.
//!
//! The reader is the same future either way, so everything it guarantees (order, the
//! handover gate, bounded memory through the channel and QUIC flow control, its end
//! reported to the lane's writer) holds whoever polls it. A wake-up goes to the receiver
//! only while it is parked in `recv` (it then polls the readers woken for it before it
//! returns); at any other time, and for the readers still listed when `recv` returns or
//! is cancelled, it goes to the shell. So a reader never depends on the application
//! calling `recv` again: a stalled, busy or dropped receiver leaves its readers to their
//! shells, as before. The shell owns the reader: when the shell task ends or is dropped,
//! so is the reader.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use nodosum_proto::NodeId;

use crate::queue::{self, TryRecvError};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here is left half-updated by a panic that matters more than the panic.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Receives `(sender, message)` pairs of one application, in order per sender.
///
/// Returned by [`QuicNode::register_app`](crate::QuicNode::register_app). Dropping it
/// closes the application (see there).
pub struct AppReceiver {
    rx: queue::Receiver<(NodeId, Bytes)>,
    inbox: Arc<Inbox>,
}

impl fmt::Debug for AppReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppReceiver")
            .field("queued", &self.rx.len())
            .finish_non_exhaustive()
    }
}

impl AppReceiver {
    pub(crate) fn new(rx: queue::Receiver<(NodeId, Bytes)>, inbox: Arc<Inbox>) -> Self {
        Self { rx, inbox }
    }

    /// The next message: `(sender, payload)`, in order per sender. `None` once the
    /// application was closed (or the node shut down) and everything queued was received.
    ///
    /// Cancel-safe: a message is removed from the queue only when returned.
    pub async fn recv(&mut self) -> Option<(NodeId, Bytes)> {
        let Self { rx, inbox } = self;
        // Whatever ends this call (a message, or the future being dropped), readers
        // woken for it and not polled yet go back to their own tasks.
        let _unpark = Unpark(inbox);
        std::future::poll_fn(|cx| poll_recv(rx, inbox, cx)).await
    }

    /// The next message if one is queued now, without waiting.
    pub fn try_recv(&mut self) -> Result<(NodeId, Bytes), TryRecvError> {
        self.rx.try_recv()
    }
}

impl Drop for AppReceiver {
    fn drop(&mut self) {
        self.inbox.unpark();
    }
}

/// Takes the messages of the readers woken for a parked receiver, else parks it.
fn poll_recv(
    rx: &mut queue::Receiver<(NodeId, Bytes)>,
    inbox: &Inbox,
    cx: &mut Context<'_>,
) -> Poll<Option<(NodeId, Bytes)>> {
    loop {
        let ready = inbox.take_ready();
        if !ready.is_empty() {
            // The readers deliver into the channel; with a no-op waker registered there
            // first, their deliveries do not wake this (running) task, which would make
            // tokio reschedule it through the run queue.
            if let Poll::Ready(msg) = rx.poll_recv(&mut Context::from_waker(Waker::noop())) {
                for cell in ready {
                    cell.wake_shell();
                }
                return Poll::Ready(msg);
            }
            for cell in &ready {
                cell.run();
            }
        }
        if let Poll::Ready(msg) = rx.poll_recv(cx) {
            return Poll::Ready(msg);
        }
        let mut st = lock(&inbox.state);
        if st.ready.is_empty() {
            inbox.parked.store(true, Ordering::Relaxed);
            if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                st.waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
    }
}

/// Unparks the receiver when a `recv` call ends.
struct Unpark<'a>(&'a Inbox);

impl Drop for Unpark<'_> {
    fn drop(&mut self) {
        self.0.unpark();
    }
}

/// Where an application's readers find its receiver (one per registration).
#[derive(Default)]
pub(crate) struct Inbox {
    state: Mutex<InboxState>,
    /// The receiver waits in `recv` and polls the readers in `ready` before it returns.
    /// Only the receiver changes it, under `state`'s lock, and readers look at it under
    /// that lock; they add to `ready` only while it is set, so a receiver that reads it
    /// unset knows, without the lock, that it has nothing to take or give back.
    parked: AtomicBool,
}

#[derive(Default)]
struct InboxState {
    waker: Option<Waker>,
    ready: Vec<Arc<Cell>>,
}

impl Inbox {
    /// Leaves the parked state; returns the readers woken for the receiver since.
    fn take_ready(&self) -> Vec<Arc<Cell>> {
        if !self.parked.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let mut st = lock(&self.state);
        self.parked.store(false, Ordering::Relaxed);
        let ready = std::mem::take(&mut st.ready);
        drop(st);
        for cell in &ready {
            cell.queued.store(false, Ordering::Release);
        }
        ready
    }

    /// The receiver stops waiting: readers woken for it go to their shells.
    fn unpark(&self) {
        if !self.parked.load(Ordering::Relaxed) {
            return;
        }
        let ready = {
            let mut st = lock(&self.state);
            st.waker = None;
            self.parked.store(false, Ordering::Relaxed);
            std::mem::take(&mut st.ready)
        };
        for cell in ready {
            cell.queued.store(false, Ordering::Release);
            cell.wake_shell();
        }
    }
}

type Reader = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Nobody polls the reader.
const IDLE: u8 = 0;
/// Someone polls it.
const POLLING: u8 = 1;
/// Someone polls it and it was woken meanwhile: it polls again.
const REPOLL: u8 = 2;

/// A reader, pollable by its shell task and by the application's receiver.
struct Cell {
    reader: Mutex<Option<Reader>>,
    /// Who polls (one at a time, see [`Cell::run`]).
    state: AtomicU8,
    /// In the inbox's ready list.
    queued: AtomicBool,
    /// The shell task's waker.
    shell: Mutex<Option<Waker>>,
    /// The application's inbox when it was registered as the reader started.
    inbox: Option<Arc<Inbox>>,
    /// The waker the reader is polled with, whoever polls it.
    waker: Waker,
}

struct CellWaker(Weak<Cell>);

impl Wake for CellWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(cell) = self.0.upgrade() {
            cell.wake();
        }
    }
}

impl Cell {
    fn new(inbox: Option<Arc<Inbox>>, reader: Reader) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            reader: Mutex::new(Some(reader)),
            state: AtomicU8::new(IDLE),
            queued: AtomicBool::new(false),
            shell: Mutex::new(None),
            inbox,
            waker: Waker::from(Arc::new(CellWaker(me.clone()))),
        })
    }

    /// Routes a wake-up: to the receiver while it is parked, else to the shell.
    fn wake(self: &Arc<Self>) {
        if let Some(inbox) = &self.inbox {
            let mut st = lock(&inbox.state);
            if inbox.parked.load(Ordering::Relaxed) {
                if !self.queued.swap(true, Ordering::AcqRel) {
                    st.ready.push(self.clone());
                }
                let waker = st.waker.take();
                drop(st);
                if let Some(waker) = waker {
                    waker.wake();
                }
                return;
            }
        }
        self.wake_shell();
    }

    fn wake_shell(&self) {
        if let Some(waker) = lock(&self.shell).as_ref() {
            waker.wake_by_ref();
        }
    }

    /// Polls the reader unless someone else does (then that poller polls it again).
    /// Whether it has ended.
    fn run(&self) -> bool {
        loop {
            match self
                .state
                .compare_exchange(IDLE, POLLING, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(REPOLL) => return false,
                Err(_) => {
                    if self
                        .state
                        .compare_exchange(POLLING, REPOLL, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return false;
                    }
                    // It went idle (or was asked to repoll) meanwhile: look again.
                }
            }
        }
        loop {
            let ended = {
                let mut reader = lock(&self.reader);
                match reader.as_mut() {
                    None => true,
                    Some(r) => {
                        let ended = r
                            .as_mut()
                            .poll(&mut Context::from_waker(&self.waker))
                            .is_ready();
                        if ended {
                            *reader = None;
                        }
                        ended
                    }
                }
            };
            if ended {
                self.state.store(IDLE, Ordering::Release);
                // Ended by the receiver: the shell task ends too.
                self.wake_shell();
                return true;
            }
            match self
                .state
                .compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return false,
                Err(_) => self.state.store(POLLING, Ordering::Release),
            }
        }
    }
}

/// Runs `reader` as a stream reader of the application whose inbox is `inbox` (none: the
/// application is not registered, the reader only ever runs here). The returned future is
/// the reader's shell; the reader ends when it does.
pub(crate) async fn hosted(
    inbox: Option<Arc<Inbox>>,
    reader: impl Future<Output = ()> + Send + 'static,
) {
    let cell = Cell::new(inbox, Box::pin(reader));
    let _owner = Owner(cell.clone());
    std::future::poll_fn(|cx| {
        {
            let mut shell = lock(&cell.shell);
            if !shell.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *shell = Some(cx.waker().clone());
            }
        }
        if cell.run() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}

/// Drops the reader with its shell.
struct Owner(Arc<Cell>);

impl Drop for Owner {
    fn drop(&mut self) {
        let reader = lock(&self.0.reader).take();
        drop(reader);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::oneshot;
    use tokio::task::Id;

    use super::*;

    type Tx = queue::Sender<(NodeId, Bytes)>;

    /// Waits until `cond` holds; panics after 30 s.
    async fn until(cond: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(30), async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("condition within 30 s");
    }

    fn pair() -> (Tx, AppReceiver, Arc<Inbox>) {
        let (tx, rx) = queue::channel(4, queue::TAKE);
        let inbox = Arc::new(Inbox::default());
        (tx, AppReceiver::new(rx, inbox.clone()), inbox)
    }

    /// A reader that says it started, waits for `go`, then delivers one message and records
    /// which task delivered it.
    async fn reader(
        started: Arc<AtomicBool>,
        go: oneshot::Receiver<()>,
        tx: Tx,
        by: Arc<Mutex<Option<Id>>>,
    ) {
        started.store(true, Ordering::Release);
        if go.await.is_ok() {
            *lock(&by) = tokio::task::try_id();
            let _ = tx
                .send((NodeId::new("peer").unwrap(), Bytes::from_static(b"m")))
                .await;
        }
    }

    /// A receiver with one hosted [`reader`] that has started and waits for `go`.
    struct Started {
        rx: AppReceiver,
        inbox: Arc<Inbox>,
        go: oneshot::Sender<()>,
        by: Arc<Mutex<Option<Id>>>,
        shell: tokio::task::JoinHandle<()>,
    }

    async fn start_reader() -> Started {
        let (tx, rx, inbox) = pair();
        let (go, go_rx) = oneshot::channel();
        let by = Arc::new(Mutex::new(None));
        let started = Arc::new(AtomicBool::new(false));
        let shell = tokio::spawn(hosted(
            Some(inbox.clone()),
            reader(started.clone(), go_rx, tx, by.clone()),
        ));
        until(|| started.load(Ordering::Acquire)).await;
        Started {
            rx,
            inbox,
            go,
            by,
            shell,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_woken_for_a_waiting_receiver_runs_in_the_receiving_task() {
        let Started {
            mut rx,
            inbox,
            go,
            by,
            shell,
        } = start_reader().await;
        let receiving = tokio::spawn(async move {
            let msg = rx.recv().await;
            (msg, tokio::task::id())
        });
        // Parked once the receiving task waits in `recv`.
        until(|| inbox.parked.load(Ordering::Relaxed)).await;
        go.send(()).unwrap();
        let (msg, receiver) = receiving.await.unwrap();
        assert_eq!(msg.unwrap().1, Bytes::from_static(b"m"));
        assert_eq!(*lock(&by), Some(receiver));
        // The reader ended in the receiving task; its shell ends too.
        tokio::time::timeout(Duration::from_secs(30), shell)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_recv_hands_its_readers_back_to_their_shells() {
        let Started {
            mut rx,
            inbox,
            go,
            by,
            shell,
        } = start_reader().await;
        let shell_id = shell.id();
        {
            // Parked, woken for the reader, then dropped without being polled again.
            let mut recv = std::pin::pin!(rx.recv());
            let mut cx = Context::from_waker(Waker::noop());
            assert!(recv.as_mut().poll(&mut cx).is_pending());
            assert!(inbox.parked.load(Ordering::Relaxed));
            go.send(()).unwrap();
            until(|| !lock(&inbox.state).ready.is_empty()).await;
        }
        assert!(!inbox.parked.load(Ordering::Relaxed));
        let msg = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap();
        assert_eq!(msg.unwrap().1, Bytes::from_static(b"m"));
        assert_eq!(*lock(&by), Some(shell_id));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_ends_with_its_shell_and_sees_a_dropped_receiver() {
        struct Flag(Arc<AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let (tx, rx, inbox) = pair();
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = Flag(dropped.clone());
        let shell = tokio::spawn(hosted(Some(inbox.clone()), async move {
            let _flag = flag;
            std::future::pending::<()>().await;
        }));
        shell.abort();
        assert!(shell.await.unwrap_err().is_cancelled());
        assert!(dropped.load(Ordering::Acquire));

        // A reader whose application's receiver is gone learns it from the channel.
        let ended = tokio::spawn(hosted(Some(inbox), async move { tx.closed().await }));
        drop(rx);
        tokio::time::timeout(Duration::from_secs(30), ended)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_readers_deliver_everything_in_order_per_reader() {
        let (tx, mut rx, inbox) = pair();
        let mut shells = Vec::new();
        for r in 0..8u32 {
            let tx = tx.clone();
            shells.push(tokio::spawn(hosted(Some(inbox.clone()), async move {
                let node = NodeId::new(format!("peer-{r}")).unwrap();
                for i in 0..500u32 {
                    let msg = Bytes::copy_from_slice(&i.to_le_bytes());
                    if tx.send((node.clone(), msg)).await.is_err() {
                        return;
                    }
                    if i % 7 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })));
        }
        drop(tx);
        let mut next = std::collections::HashMap::new();
        let mut total = 0;
        while let Some((from, msg)) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap()
        {
            let n = u32::from_le_bytes(msg[..].try_into().unwrap());
            let expected = next.entry(from).or_insert(0u32);
            assert_eq!(n, *expected);
            *expected += 1;
            total += 1;
        }
        assert_eq!(total, 8 * 500);
        for shell in shells {
            shell.await.unwrap();
        }
    }
}
