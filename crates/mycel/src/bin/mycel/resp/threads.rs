//! The threads that serve client connections (`--resp-threads`): a single-threaded
//! runtime each, every connection pinned to one of them.
//!
//! A connection does little work per request (parse, a store call, a reply). On the
//! work-stealing runtime most of a request's cost at low pipelining was the scheduler's:
//! workers parking and waking each other as single requests arrived. A pinned
//! connection sleeps and wakes with its thread's `epoll_wait` alone, as a Redis I/O
//! thread does. Work a command spawns (`tokio::spawn`) runs on the same thread.
//!
//! With none (`--resp-threads 0`) the node's runtime serves the connections itself: on a
//! node given a single thread, a request then never crosses threads at all.

use std::io;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Threads with a single-threaded runtime each; [`ConnThreads::next`] picks them in turn.
pub(crate) struct ConnThreads {
    threads: Vec<(Handle, oneshot::Sender<()>, JoinHandle<()>)>,
    next: usize,
}

impl ConnThreads {
    /// Starts `n` threads (none for 0).
    pub(crate) fn start(n: usize) -> io::Result<Self> {
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("mycel-resp-{i}"))
                .spawn(move || {
                    let _ = runtime.block_on(stopped);
                })?;
            threads.push((handle, stop, thread));
        }
        Ok(Self { threads, next: 0 })
    }

    /// The runtime of the next connection; `None` without threads.
    pub(crate) fn next(&mut self) -> Option<&Handle> {
        let i = self.next;
        let (handle, _, _) = self.threads.get(i)?;
        self.next = (i + 1) % self.threads.len();
        Some(handle)
    }

    /// Stops every thread, dropping the tasks still on it, and waits for them to end.
    /// (Dropping `self` stops them too, without waiting.)
    pub(crate) fn stop(self) {
        for (_, stop, thread) in self.threads {
            let _ = stop.send(());
            if thread.join().is_err() {
                tracing::warn!("a connection thread panicked");
            }
        }
    }
}
