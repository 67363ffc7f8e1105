//! `mycel`: a Redis-compatible cache server over the [`mycel::Mycel`] handle.
//!
//! - RESP2/RESP3 on `--resp` (default port 6379): pipelining, inline commands, Redis's
//!   error wording; `redis-cli`, `redis-benchmark` and client libraries work unchanged.
//! - HTTP admin on `--admin` (default port 9090): `/health`, `/ready`, `/members`,
//!   `/metrics`, `/partitions`, `POST /maintenance?freeze=true|false`.
//!
//! Buckets: plain Redis clients use the bucket `default`. `MYCEL.BUCKET name` switches the
//! connection to bucket `name`, `MYCEL.BUCKET name CREATE [PX ms]` creates it first (with a
//! default TTL for keys written without one), `MYCEL.BUCKET` replies with the current
//! bucket. Buckets may also be declared in the config file (`[[buckets]]`). `DBSIZE`,
//! `INFO keyspace` and `FLUSHDB` cover every bucket.
//!
//! This build serves as a single node ([`mycel::Mycel::standalone`]); the cluster flags are
//! parsed and validated into a `nodosum::Config` so that switching the backend to
//! `Mycel::start(node, config)` changes nothing in front of it.

// A server binary talks to its terminal: the ready line and configuration problems.
#![allow(clippy::print_stdout, clippy::print_stderr, reason = "binary output")]

mod admin;
mod cli;
mod metrics;
mod resp;
mod state;

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;
use mycel::Mycel;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, LogFormat, Settings};
use crate::resp::parse::RequestLimits;
use crate::state::{NodeInfo, Shared};

/// How long shutdown waits for connections to finish their in-flight replies.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match cli::resolve(cli) {
        Ok(s) => s,
        Err(problems) => {
            eprintln!(
                "mycel: invalid configuration ({} problem{}):",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            );
            for p in &problems {
                eprintln!("  {p}");
            }
            return ExitCode::from(2);
        }
    };
    init_logging(settings.log_format, settings.verbosity);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mycel: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("mycel: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, verbosity: u8) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(match verbosity {
            0 => "info",
            1 => "debug",
            _ => "trace",
        })
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn bind(flag: &str, addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| {
        let what = match e.kind() {
            std::io::ErrorKind::AddrInUse => "address in use".to_owned(),
            std::io::ErrorKind::AddrNotAvailable => "address not available on this host".to_owned(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            _ => e.to_string(),
        };
        format!("{flag} {addr}: {what}")
    })
}

async fn run(mut settings: Settings) -> Result<(), String> {
    if !settings.cluster_only.is_empty() {
        tracing::warn!(
            settings = %settings.cluster_only.join(", "),
            "this build serves as a single node: cluster settings were validated but are not used yet"
        );
    }
    let mut signals = Signals::install()?;
    let mycel = Mycel::standalone(settings.mycel.clone())
        .await
        .map_err(|e| e.to_string())?;
    for (name, options) in &settings.buckets {
        mycel
            .create_bucket(name, options.clone())
            .await
            .map_err(|e| format!("bucket {name:?}: {e}"))?;
    }

    let resp_listener = bind("--resp", settings.resp).await?;
    let admin_listener = bind("--admin", settings.admin).await?;
    let resp_addr = resp_listener.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = admin_listener.local_addr().map_err(|e| e.to_string())?;

    if settings.auto_node_id && settings.resp.port() == 0 {
        match mycel::NodeId::new(cli::dev_node_id(resp_addr.port())) {
            Ok(id) => settings.nodosum.node_id = id,
            Err(e) => tracing::warn!(error = %e, "keeping the node ID derived before binding"),
        }
    }
    let store = &settings.mycel.store;
    let limits = RequestLimits {
        // A value longer than the store accepts is refused by the parser already, before
        // it is buffered; keys are far shorter.
        max_bulk_len: store.max_value_len.max(store.max_key_len).max(64 * 1024),
        ..RequestLimits::default()
    };
    let node = NodeInfo {
        id: settings.nodosum.node_id.as_str().to_owned(),
        cluster: settings.nodosum.cluster.clone(),
        gossip_addr: settings
            .nodosum
            .gossip
            .advertise
            .unwrap_or(settings.nodosum.gossip.bind),
        quic_addr: settings.nodosum.quic.bind,
        resp_addr,
        admin_addr,
        replicas: settings.mycel.replication_factor,
        partitions: u32::from(store.partitioning.count()),
        dev: settings.dev,
    };
    let shared = Arc::new(Shared::new(mycel.clone(), node, limits));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let resp_task = tokio::spawn(accept_loop(
        resp_listener,
        shared.clone(),
        shutdown_rx.clone(),
    ));
    let mut admin_shutdown = shutdown_rx.clone();
    let admin_task = tokio::spawn(
        axum::serve(admin_listener, admin::router(shared.clone()))
            .with_graceful_shutdown(async move {
                let _ = admin_shutdown.changed().await;
            })
            .into_future(),
    );
    shared.serving.store(true, Ordering::Release);
    tracing::info!(
        node_id = %shared.node.id,
        resp = %resp_addr,
        admin = %admin_addr,
        mode = shared.mycel.mode().as_str(),
        dev = shared.node.dev,
        "mycel serving"
    );
    // One machine-readable line for scripts and tests that start on port 0.
    println!(
        "mycel ready resp={resp_addr} admin={admin_addr} node_id={}",
        shared.node.id
    );
    let _ = std::io::stdout().flush();

    signals.recv().await;
    tracing::info!(
        "shutting down: no new connections, finishing in-flight replies (a second signal exits at once)"
    );
    shared.serving.store(false, Ordering::Release);
    tokio::spawn(async move {
        signals.recv().await;
        eprintln!("mycel: second signal, exiting now");
        std::process::exit(130);
    });
    let _ = shutdown_tx.send(true);
    if let Err(e) = resp_task.await {
        tracing::warn!(error = %e, "RESP listener task failed");
    }
    match tokio::time::timeout(DRAIN_TIMEOUT, admin_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "admin server failed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "admin server task failed"),
        Err(_) => tracing::warn!("admin server did not stop in time"),
    }
    mycel.shutdown(DRAIN_TIMEOUT).await;
    tracing::info!("stopped");
    Ok(())
}

/// Accepts RESP clients until shutdown, then waits (bounded) for open connections to
/// answer what they were executing.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tracing::trace!(%peer, "client connected");
                    shared.metrics.connections_total.inc();
                    shared.metrics.connections.inc();
                    let shared = shared.clone();
                    let rx = shutdown.clone();
                    conns.spawn(async move {
                        resp::conn::serve(stream, shared.clone(), rx).await;
                        shared.metrics.connections.dec();
                    });
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let open = conns.len();
    if open > 0 {
        tracing::info!(open, "waiting for connections to finish");
    }
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = conns.len(),
            "connections did not finish in time; closing them"
        );
        conns.abort_all();
    }
}

/// SIGINT and SIGTERM, listened to from before the server announces it is ready, so that
/// no signal sent after the ready line meets the default (killing) disposition.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    fn install() -> Result<Self, String> {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate())
            .map_err(|e| format!("cannot listen for SIGTERM: {e}"))?;
        let int = signal(SignalKind::interrupt())
            .map_err(|e| format!("cannot listen for SIGINT: {e}"))?;
        Ok(Self { term, int })
    }

    #[cfg(not(unix))]
    fn install() -> Result<Self, String> {
        Ok(Self {})
    }

    #[cfg(unix)]
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received"),
            _ = self.int.recv() => tracing::info!("SIGINT received"),
        }
    }

    #[cfg(not(unix))]
    async fn recv(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}
