//! The multi-application scenario: N applications send 1 KiB messages as fast as they can
//! over one connection for a fixed window; optionally application 0's receiver never reads.
//! The figure is how many messages reached the *other* applications in the window.
//!
//! Both transports get the same shape: each application's producer hands batches of
//! [`BATCH`] pre-encoded messages to its transport, and the receiving side routes every
//! message into the application's bounded queue of [`QUEUE`] messages (the seed's
//! channel size), waiting while it is full.
//! - TCP + TLS: producers share one bounded queue of [`TCP_WRITE_QUEUE`] batches drained
//!   by one writer that coalesces up to 64 KiB per write; one reader per connection.
//!   A full queue of one application blocks that reader, so everyone stops.
//! - QUIC: each application writes its own stream and each stream has its own reader, so
//!   a full queue blocks one stream (until its flow-control window is used up).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::pki::{Pki, Resume};
use crate::quic::{AppStream, QuicServer};
use crate::tcp::TcpServer;
use crate::{IO_CHUNK, ServerMode, put_app, put_message, quic, tcp};

/// Messages an application's receive queue holds (the seed's channel size).
pub const QUEUE: usize = 100;

/// Size of one message in this scenario.
pub const MESSAGE: usize = 1024;

/// Messages per producer hand-off.
pub const BATCH: usize = 16;

/// Batches the TCP connection's shared write queue holds (128 messages, about the seed's
/// 100-item channel).
pub const TCP_WRITE_QUEUE: usize = 8;

/// Runs the producers for a warm-up of a quarter of `window`, then counts over `window`:
/// the figures are steady state, whatever order the scheduler started the producers in.
pub async fn measure(
    apps: usize,
    stalled: bool,
    window: Duration,
    counts: impl Fn() -> Vec<u64>,
) -> StallResult {
    tokio::time::sleep(window / 4).await;
    let at_open = counts();
    tokio::time::sleep(window).await;
    let at_close = counts();
    StallResult::from_counts(apps, stalled, window, &at_open, &at_close)
}

/// The name of application `i`.
pub fn app_name(i: usize) -> Vec<u8> {
    format!("app-{i}").into_bytes()
}

/// Routes received messages to per-application bounded queues.
#[derive(Debug)]
pub struct Router {
    queues: HashMap<Vec<u8>, mpsc::Sender<Bytes>>,
}

impl Router {
    /// Queues `msg` for `app`, waiting while its queue is full; unknown apps are dropped.
    pub async fn deliver(&self, app: &[u8], msg: Bytes) {
        if let Some(queue) = self.queues.get(app) {
            // A closed queue means the scenario is over.
            let _ = queue.send(msg).await;
        }
    }
}

/// The receiving applications: consumers that count, and optionally a stalled app 0.
#[derive(Debug)]
pub struct Apps {
    router: Arc<Router>,
    counters: Arc<Vec<AtomicU64>>,
    _stalled: Option<mpsc::Receiver<Bytes>>,
    _consumers: JoinSet<()>,
}

impl Apps {
    /// `n` applications; application 0 never reads when `stall` is set.
    pub fn new(n: usize, stall: bool) -> Self {
        let counters: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let mut queues = HashMap::new();
        let mut consumers = JoinSet::new();
        let mut stalled = None;
        for i in 0..n {
            let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
            queues.insert(app_name(i), tx);
            if stall && i == 0 {
                stalled = Some(rx);
                continue;
            }
            let counters = counters.clone();
            consumers.spawn(async move {
                while rx.recv().await.is_some() {
                    counters[i].fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        Self {
            router: Arc::new(Router { queues }),
            counters,
            _stalled: stalled,
            _consumers: consumers,
        }
    }

    /// The router the server feeds.
    pub fn router(&self) -> Arc<Router> {
        self.router.clone()
    }

    /// Messages each application has consumed so far.
    pub fn delivered(&self) -> Vec<u64> {
        self.counters
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

/// The outcome of one run.
#[derive(Debug, Clone)]
pub struct StallResult {
    /// Applications on the connection (including the stalled one).
    pub apps: usize,
    /// Whether application 0's receiver was stalled.
    pub stalled: bool,
    /// Length of the window.
    pub window: Duration,
    /// Messages delivered to applications 1..N (all N when nothing is stalled and N = 1).
    pub delivered_others: u64,
    /// The least any single one of those applications got.
    pub min_per_app: u64,
    /// How many of those applications got nothing at all in the window.
    pub starved: usize,
    /// Messages those applications got during the warm-up before the window (on a
    /// multiplexed connection: what got through before the stall took hold).
    pub before_window: u64,
}

impl StallResult {
    /// Summarises per-application counts taken when the window opened and when it
    /// closed; application 0 is the stalled one.
    pub fn from_counts(
        apps: usize,
        stalled: bool,
        window: Duration,
        at_open: &[u64],
        at_close: &[u64],
    ) -> Self {
        // With one application and no stall, "the others" is the application itself.
        let first = usize::from(apps > 1 || stalled);
        let others = || {
            at_open[first..]
                .iter()
                .zip(&at_close[first..])
                .map(|(a, b)| b.saturating_sub(*a))
        };
        Self {
            apps,
            stalled,
            window,
            delivered_others: others().sum(),
            min_per_app: others().min().unwrap_or(0),
            starved: others().filter(|&n| n == 0).count(),
            before_window: at_open[first..].iter().sum(),
        }
    }

    /// Messages per second delivered to the other applications.
    pub fn rate(&self) -> f64 {
        #[allow(
            clippy::cast_precision_loss,
            reason = "message counts are far below 2^52"
        )]
        let delivered = self.delivered_others as f64;
        delivered / self.window.as_secs_f64()
    }

    /// As a JSON object.
    pub fn to_json(&self) -> Value {
        json!({
            "apps": self.apps,
            "stalled": self.stalled,
            "window_s": self.window.as_secs_f64(),
            "delivered_others": self.delivered_others,
            "min_per_app": self.min_per_app,
            "starved_apps": self.starved,
            "before_window": self.before_window,
            "msgs_per_s": self.rate(),
        })
    }
}

fn payload_batch(app: Option<&[u8]>) -> Bytes {
    let payload = vec![0xA5; MESSAGE];
    let mut buf = Vec::with_capacity(BATCH * (MESSAGE + 64));
    for _ in 0..BATCH {
        if let Some(app) = app {
            put_app(&mut buf, app);
        }
        put_message(&mut buf, &payload);
    }
    Bytes::from(buf)
}

/// Starts the TCP + TLS side of the producers on `tls`: one task per application handing
/// batches to a shared bounded queue, and one writer coalescing them into 64 KiB writes.
pub fn spawn_tcp_producers(
    mut tls: impl AsyncWrite + Unpin + Send + 'static,
    apps: usize,
    tasks: &mut JoinSet<()>,
) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(TCP_WRITE_QUEUE);
    tasks.spawn(async move {
        let mut buf = Vec::with_capacity(2 * IO_CHUNK);
        while let Some(batch) = rx.recv().await {
            buf.extend_from_slice(&batch);
            while buf.len() < IO_CHUNK {
                match rx.try_recv() {
                    Ok(batch) => buf.extend_from_slice(&batch),
                    Err(_) => break,
                }
            }
            if tls.write_all(&buf).await.is_err() || tls.flush().await.is_err() {
                return;
            }
            buf.clear();
        }
    });
    for i in 0..apps {
        let batch = payload_batch(Some(&app_name(i)));
        let tx = tx.clone();
        tasks.spawn(async move { while tx.send(batch.clone()).await.is_ok() {} });
    }
}

/// Opens one raw quinn stream per application on `conn` and starts a producer writing
/// batches on each.
pub async fn spawn_quic_producers(
    conn: &quinn::Connection,
    apps: usize,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    for i in 0..apps {
        let mut stream = AppStream::open(conn, &app_name(i)).await?;
        let batch = payload_batch(None);
        tasks.spawn(async move { while stream.send().write_chunk(batch.clone()).await.is_ok() {} });
    }
    Ok(())
}

/// Runs the scenario over the multiplexed TCP + TLS baseline.
pub async fn run_tcp(
    pki: &Pki,
    apps: usize,
    stall: bool,
    window: Duration,
) -> anyhow::Result<StallResult> {
    let receivers = Apps::new(apps, stall);
    let server = TcpServer::start(
        pki.server_config(false)?,
        ServerMode::Apps(receivers.router()),
    )
    .await?;
    let tls = tcp::dial(server.addr(), Arc::new(pki.client_config(Resume::Never)?)).await?;
    let mut tasks = JoinSet::new();
    spawn_tcp_producers(tls, apps, &mut tasks);
    let result = measure(apps, stall, window, || receivers.delivered()).await;
    drop(tasks);
    drop(server);
    Ok(result)
}

/// Runs the scenario over raw quinn, one stream per application.
pub async fn run_quic(
    pki: &Pki,
    apps: usize,
    stall: bool,
    window: Duration,
) -> anyhow::Result<StallResult> {
    let receivers = Apps::new(apps, stall);
    let server = QuicServer::start(pki, ServerMode::Apps(receivers.router()))?;
    let endpoint = quic::client_endpoint()?;
    let conn = endpoint
        .connect_with(
            quic::client_config(pki, Resume::Never)?,
            server.addr()?,
            crate::pki::SERVER_NAME,
        )?
        .await?;
    let mut tasks = JoinSet::new();
    spawn_quic_producers(&conn, apps, &mut tasks).await?;
    let result = measure(apps, stall, window, || receivers.delivered()).await;
    drop(tasks);
    conn.close(0u32.into(), b"done");
    endpoint.close(0u32.into(), b"done");
    drop(server);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_exclude_the_stalled_app_and_the_warm_up() {
        let w = Duration::from_secs(1);
        let r = StallResult::from_counts(3, true, w, &[100, 10, 20], &[100, 15, 20]);
        assert_eq!(r.delivered_others, 5);
        assert_eq!(r.min_per_app, 0);
        assert_eq!(r.starved, 1);
        assert_eq!(r.before_window, 30);
        // Unstalled, application 0 is still not one of "the others"...
        let r = StallResult::from_counts(2, false, w, &[0, 0], &[7, 9]);
        assert_eq!(r.delivered_others, 9);
        // ...except when it is the only application.
        let r = StallResult::from_counts(1, false, w, &[4], &[10]);
        assert_eq!((r.delivered_others, r.before_window, r.starved), (6, 4, 0));
        assert!((r.rate() - 6.0).abs() < 1e-9);
    }
}
