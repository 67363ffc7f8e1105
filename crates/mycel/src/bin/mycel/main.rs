//! `mycel`: a Redis-compatible cache server over the [`mycel::Mycel`] handle.
//!
//! - RESP2/RESP3 on `--resp` (default port 6379): pipelining, inline commands, Redis's
//!   error wording; `redis-cli`, `redis-benchmark` and client libraries work unchanged.
//!   With `--requirepass` clients authenticate first, as with Redis's `requirepass`;
//!   `--resp-tls` serves the same over TLS on a second port, as Redis's `tls-port`.
//!   SIGHUP rereads the TLS files, `--requirepass-file` and `--admin-token-file`.
//! - HTTP admin on `--admin` (default port 9090): `/health`, `/ready`, `/members`,
//!   `/metrics`, `/partitions`, `POST /maintenance?freeze=true|false`; with
//!   `--admin-token-file` all but the first two need `Authorization: Bearer <token>`.
//!
//! Buckets: plain Redis clients use the bucket `default`. `MYCEL.BUCKET name` switches the
//! connection to bucket `name`, `MYCEL.BUCKET name CREATE [PX ms]` creates it first (with a
//! default TTL for keys written without one), `MYCEL.BUCKET` replies with the current
//! bucket. Buckets may also be declared in the config file (`[[buckets]]`). `DBSIZE`,
//! `INFO keyspace` and `FLUSHDB` cover every bucket; `SCAN` and `KEYS` list the
//! connection's bucket.
//!
//! Every node is a cluster member: the flags build a `nodosum::Config`, the node starts
//! (gossip on `--gossip`, QUIC on `--quic`, seeds from `--seed` or discovery, the
//! development CA with `--dev`) and the handle runs on it ([`mycel::Mycel::start`], with
//! `--replicas` copies of each partition). `--dev` alone is a one-node cluster that others
//! can join. `--standalone` serves a single node without networking
//! ([`mycel::Mycel::standalone`]). SIGINT/SIGTERM hand this node's partitions off
//! (`leave`), then shut the node down and exit 0; a second signal exits at once.

// A server binary talks to its terminal: the ready line and configuration problems.
#![allow(clippy::print_stdout, clippy::print_stderr, reason = "binary output")]

mod admin;
mod auth;
mod cli;
mod metrics;
mod resp;
mod slowlog;
mod state;
mod tls;

use std::io::Write as _;
use std::net::SocketAddr;
use std::num::NonZero;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use clap::Parser;
use mycel::{BucketOptions, ClusterConfig, Mycel};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, LogFormat, Settings};
use crate::resp::parse::RequestLimits;
use crate::resp::threads::ConnThreads;
use crate::state::{NodeInfo, Shared};
use crate::tls::SharedAcceptor;

/// mimalloc rather than glibc malloc: every request allocates and frees small buffers
/// (values, replies, messages between nodes) from several threads, where glibc's arenas
/// cost about a fifth of a node's CPU under `redis-benchmark`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long shutdown waits for connections to finish their in-flight replies.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a graceful leave may take to hand this node's partitions off.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long start-up waits for the first routing table before announcing itself anyway
/// (commands then wait for the table themselves, bounded by the operation timeout).
const TABLE_WAIT: Duration = Duration::from_secs(30);

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
    // One thread: a single-threaded runtime on this thread, rather than a worker that
    // this thread would only wait for (and wake, and be woken by).
    let workers = settings
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, NonZero::get));
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let runtime = match builder.enable_all().build() {
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
    if settings.standalone && !settings.cluster_only.is_empty() {
        tracing::warn!(
            settings = %settings.cluster_only.join(", "),
            "--standalone: cluster settings are ignored"
        );
    }
    let mut signals = Signals::install()?;
    let resp_threads = settings
        .resp_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(0, |n| n.get() / 2));
    let threads = ConnThreads::start(resp_threads)
        .map_err(|e| format!("cannot start {resp_threads} connection threads: {e}"))?;

    let resp_listener = bind("--resp", settings.resp).await?;
    let (tls_listener, tls_files) = match settings.resp_tls.take() {
        Some(t) => {
            let acceptor: SharedAcceptor = Arc::new(RwLock::new(t.acceptor));
            let listener = bind("--resp-tls", t.addr).await?;
            (
                Some((listener, acceptor.clone())),
                Some((t.files, acceptor)),
            )
        }
        None => (None, None),
    };
    let admin_listener = bind("--admin", settings.admin).await?;
    let resp_addr = resp_listener.local_addr().map_err(|e| e.to_string())?;
    let resp_tls_addr = match &tls_listener {
        Some((l, _)) => Some(l.local_addr().map_err(|e| e.to_string())?),
        None => None,
    };
    let admin_addr = admin_listener.local_addr().map_err(|e| e.to_string())?;

    if settings.auto_node_id && settings.resp.port() == 0 {
        match mycel::NodeId::new(cli::dev_node_id(resp_addr.port())) {
            Ok(id) => settings.nodosum.node_id = id,
            Err(e) => tracing::warn!(error = %e, "keeping the node ID derived before binding"),
        }
    }
    let mycel = if settings.standalone {
        start_standalone(&settings).await?
    } else {
        start_cluster(&settings).await?
    };
    let (gossip_addr, quic_addr) = match mycel.cluster() {
        Some(c) => (c.node().gossip_addr(), c.node().quic_addr()),
        None => (
            settings
                .nodosum
                .gossip
                .advertise
                .unwrap_or(settings.nodosum.gossip.bind),
            settings.nodosum.quic.bind,
        ),
    };
    let store = &settings.mycel.store;
    let limits = RequestLimits {
        // A value longer than the store accepts is not buffered: the parser drops its
        // request as it arrives and that request alone gets an error (up to Redis's
        // `proto-max-bulk-len`, the default `max_discard_len`). Keys are far shorter.
        max_bulk_len: store.max_value_len.max(store.max_key_len).max(64 * 1024),
        ..RequestLimits::default()
    };
    let node = NodeInfo {
        id: settings.nodosum.node_id.as_str().to_owned(),
        cluster: settings.nodosum.cluster.clone(),
        gossip_addr,
        quic_addr,
        resp_addr,
        resp_tls_addr,
        admin_addr,
        replicas: settings.mycel.replication_factor,
        partitions: u32::from(store.partitioning.count()),
        dev: settings.dev,
    };
    let shared = Arc::new(Shared::new(
        mycel.clone(),
        node,
        limits,
        settings.slowlog,
        (settings.requirepass.take(), settings.admin_token.take()),
    ));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Listened to from before the ready line, as the other signals are.
    #[cfg(unix)]
    {
        // The node's own credentials are worth rereading when they come from files an
        // operator renews: certificate files (not the development CA) or a gossip key
        // file.
        let node_credentials = mycel.cluster().is_some()
            && (!settings.nodosum.tls.development || settings.nodosum.gossip.key_file.is_some());
        if tls_files.is_some()
            || settings.requirepass_file.is_some()
            || settings.admin_token_file.is_some()
            || node_credentials
        {
            let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| format!("cannot listen for SIGHUP: {e}"))?;
            tokio::spawn(reload_on_hangup(
                hup,
                shared.clone(),
                tls_files,
                (
                    settings.requirepass_file.clone(),
                    settings.admin_token_file.clone(),
                ),
                node_credentials,
            ));
        }
    }

    let resp_task = tokio::spawn(accept_loop(
        resp_listener,
        tls_listener,
        threads,
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
    // Announce readiness once the node can route (the first routing table): scripts and
    // tests that wait for the ready line can send commands at once. A signal meanwhile
    // stops the node without announcing it.
    let table_wait = async {
        let Some(c) = shared.mycel.cluster() else {
            return;
        };
        let start = tokio::time::Instant::now();
        while c.status().epoch == 0 {
            if start.elapsed() >= TABLE_WAIT {
                tracing::warn!(
                    waited = ?TABLE_WAIT,
                    "no routing table yet; serving anyway (commands wait for it)"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let signalled = tokio::select! {
        () = table_wait => false,
        () = signals.recv() => true,
    };
    if !signalled {
        announce(&shared, resp_addr, admin_addr);
        signals.recv().await;
    }
    tracing::info!(
        "shutting down: no new connections, finishing in-flight replies (a second signal exits at once)"
    );
    shared.serving.store(false, Ordering::Release);
    tokio::spawn(async move {
        signals.recv().await;
        eprintln!("mycel: second signal, exiting now");
        std::process::exit(130);
    });
    if shared.mycel.cluster().is_some() {
        // Hand the partitions off while connections are still served (their commands go
        // to the new owners), then stop serving.
        tracing::info!("leaving the cluster: handing partitions off");
        match shared.mycel.leave(LEAVE_TIMEOUT).await {
            Ok(()) => tracing::info!("hand-off complete"),
            Err(e) => tracing::warn!(error = %e, "leaving incompletely; stopping anyway"),
        }
    }
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
    // Connections and the admin API are done: the last other handle goes with `shared`.
    drop(shared);
    mycel.shutdown(DRAIN_TIMEOUT).await;
    tracing::info!("stopped");
    Ok(())
}

/// Marks the node as serving and says so: a log line and one machine-readable line on
/// stdout for scripts and tests that start on port 0.
fn announce(shared: &Shared, resp_addr: SocketAddr, admin_addr: SocketAddr) {
    shared.serving.store(true, Ordering::Release);
    tracing::info!(
        node_id = %shared.node.id,
        resp = %resp_addr,
        admin = %admin_addr,
        mode = shared.mycel.mode().as_str(),
        dev = shared.node.dev,
        "mycel serving"
    );
    // A standalone node has no gossip or QUIC address to show.
    let cluster_addrs = if shared.mycel.cluster().is_some() {
        format!(
            " gossip={} quic={}",
            shared.node.gossip_addr, shared.node.quic_addr
        )
    } else {
        String::new()
    };
    let tls_addr = shared
        .node
        .resp_tls_addr
        .map(|a| format!(" resp_tls={a}"))
        .unwrap_or_default();
    println!(
        "mycel ready resp={resp_addr} admin={admin_addr} node_id={} mode={}{cluster_addrs}{tls_addr}",
        shared.node.id,
        shared.mycel.mode().as_str(),
    );
    let _ = std::io::stdout().flush();
}

/// The standalone backend with the configured buckets.
async fn start_standalone(settings: &Settings) -> Result<Mycel, String> {
    let mycel = Mycel::standalone(settings.mycel.clone())
        .await
        .map_err(|e| e.to_string())?;
    for (name, options) in &settings.buckets {
        mycel
            .create_bucket(name, options.clone())
            .await
            .map_err(|e| format!("bucket {name:?}: {e}"))?;
    }
    Ok(mycel)
}

/// Starts the nodosum node and the cluster backend on it.
async fn start_cluster(settings: &Settings) -> Result<Mycel, String> {
    let mut config = ClusterConfig {
        mycel: settings.mycel.clone(),
        ..ClusterConfig::default()
    };
    config.buckets = std::iter::once((mycel::DEFAULT_BUCKET.to_owned(), BucketOptions::default()))
        .chain(settings.buckets.iter().cloned())
        .collect();
    // One value, its key and a transfer page must fit in one nodosum message: raise the
    // message limit to the configured value size rather than refuse big values.
    let store = &config.mycel.store;
    let largest = settings
        .buckets
        .iter()
        .filter_map(|(_, o)| o.max_value_len)
        .fold(store.max_value_len, usize::max)
        .saturating_add(store.max_key_len)
        .saturating_add(config.page_bytes)
        .saturating_add(4096);
    let mut node_config = settings.nodosum.clone();
    let message_size = node_config.limits.max_message_size.max(largest);
    node_config.limits.max_message_size = message_size;
    config.max_message_size = message_size;
    let discovery = &node_config.discovery;
    let seeds: Vec<SocketAddr> = discovery
        .static_seeds
        .as_ref()
        .map(|s| s.seeds.iter().filter_map(|a| a.parse().ok()).collect())
        .unwrap_or_default();
    let finds_peers =
        discovery.static_seeds.is_some() || discovery.dns.is_some() || discovery.consul.is_some();
    if !finds_peers {
        // Nothing to join: this node founds the cluster, so it need not wait to learn of
        // an existing one before publishing its routing table. Others may join it later.
        config.bootstrap_delay = Duration::ZERO;
    }
    let (gossip, quic) = (node_config.gossip.bind, node_config.quic.bind);
    let node = nodosum::Node::start(node_config).await.map_err(|e| {
        let what = nodosum::error_chain(&e);
        match e {
            nodosum::Error::Gossip { .. } => format!("--gossip {gossip}: {what}"),
            nodosum::Error::Quic { .. } => format!("--quic {quic}: {what}"),
            _ => format!("starting the node: {what}"),
        }
    })?;
    if !seeds.is_empty() {
        // Static discovery joins them too; joining at once saves its first round.
        node.join(seeds);
    }
    tracing::info!(
        node_id = %node.id(),
        gossip = %node.gossip_addr(),
        quic = %node.quic_addr(),
        replicas = config.mycel.replication_factor,
        "node started"
    );
    Mycel::start(node, config).await.map_err(|e| e.to_string())
}

/// Accepts RESP clients until shutdown, then waits (bounded) for open connections to
/// answer what they were executing.
async fn accept_loop(
    listener: TcpListener,
    tls: Option<(TcpListener, SharedAcceptor)>,
    mut threads: ConnThreads,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        let (accepted, acceptor) = tokio::select! {
            accepted = listener.accept() => (accepted, None),
            accepted = async {
                match &tls {
                    Some((l, _)) => l.accept().await,
                    None => std::future::pending().await,
                }
            } => (
                accepted,
                tls.as_ref()
                    .map(|(_, a)| a.read().unwrap_or_else(PoisonError::into_inner).clone()),
            ),
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            _ = shutdown.changed() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                tracing::trace!(%peer, tls = acceptor.is_some(), "client connected");
                hand_over(
                    stream,
                    acceptor,
                    &mut conns,
                    &mut threads,
                    &shared,
                    &shutdown,
                );
            }
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop((listener, tls));
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
    let _ = tokio::task::spawn_blocking(move || threads.stop()).await;
}

/// Serves an accepted connection on the next connection thread, or on this runtime when
/// there are none. The stream leaves this runtime's I/O driver and joins the serving
/// runtime's (the same one without connection threads: a pair of `epoll_ctl` calls per
/// accepted connection, not per request).
fn hand_over(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    conns: &mut JoinSet<()>,
    threads: &mut ConnThreads,
    shared: &Arc<Shared>,
    shutdown: &watch::Receiver<bool>,
) {
    shared.metrics.connections_total.inc();
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot hand a connection to its thread");
            return;
        }
    };
    shared.metrics.connections.inc();
    let shared = shared.clone();
    let shutdown = shutdown.clone();
    let serve = async move {
        match TcpStream::from_std(stream) {
            Ok(stream) => serve(stream, tls, shared.clone(), shutdown).await,
            Err(e) => tracing::warn!(error = %e, "cannot register a connection on its thread"),
        }
        shared.metrics.connections.dec();
    };
    match threads.next() {
        Some(thread) => conns.spawn_on(serve, thread),
        None => conns.spawn(serve),
    };
}

/// Serves an accepted connection: at once, or (from the `--resp-tls` listener) once its
/// TLS handshake completed within [`tls::HANDSHAKE_TIMEOUT`].
async fn serve(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    // Replies are written once per batch; waiting for more would only add latency.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let unknown = || SocketAddr::from(([0, 0, 0, 0], 0));
    let addrs = (
        stream.peer_addr().unwrap_or_else(|_| unknown()),
        stream.local_addr().unwrap_or_else(|_| unknown()),
    );
    let Some(acceptor) = tls else {
        return resp::conn::serve(stream, addrs, shared, shutdown).await;
    };
    match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => resp::conn::serve(stream, addrs, shared, shutdown).await,
        Ok(Err(e)) => {
            tracing::debug!(peer = %addrs.0, error = %e, "TLS handshake failed");
            shared.metrics.tls_handshake_failures.inc();
        }
        Err(_) => {
            tracing::debug!(peer = %addrs.0, "TLS handshake timed out");
            shared.metrics.tls_handshake_failures.inc();
        }
    }
}

/// Reads again, on each SIGHUP, the files a running server can take anew: the TLS
/// listener's certificate, key and client CA (for new connections), the password file
/// (for new `AUTH`s), the admin token file, and with `node_credentials` the node's own
/// certificate files and gossip keys (for new QUIC handshakes and gossip datagrams). A
/// file that does not load is reported and its setting kept (the node's certificate
/// files and gossip keys as a whole).
/// Installed only when there is such a file, so that otherwise SIGHUP keeps its default
/// (ending the process, as when the terminal of `cargo xtask cluster` closes).
#[cfg(unix)]
async fn reload_on_hangup(
    mut hup: tokio::signal::unix::Signal,
    shared: Arc<Shared>,
    tls: Option<(tls::TlsFiles, SharedAcceptor)>,
    (password_file, token_file): (Option<std::path::PathBuf>, Option<std::path::PathBuf>),
    node_credentials: bool,
) {
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP received: reloading files");
        let mut failed = false;
        // Off the runtime's threads: reading a file can block (a slow or remote file
        // system).
        let (files, paths) = (
            tls.as_ref().map(|(f, _)| f.clone()),
            (password_file.clone(), token_file.clone()),
        );
        let mycel = shared.mycel.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let node = node_credentials
                .then(|| mycel.cluster().map(|c| c.node().reload_credentials()))
                .flatten();
            (
                files.map(|f| f.load()),
                paths.0.map(|p| auth::password_file(&p)),
                paths.1.map(|p| auth::password_file(&p)),
                node,
            )
        })
        .await;
        let Ok((tls_loaded, password_loaded, token_loaded, node_loaded)) = loaded else {
            tracing::warn!("reloading failed; keeping the old files");
            shared.metrics.reloads.inc();
            shared.metrics.reload_failures.inc();
            continue;
        };
        if let (Some((files, acceptor)), Some(loaded)) = (&tls, tls_loaded) {
            match loaded {
                Ok(new) => {
                    *acceptor.write().unwrap_or_else(PoisonError::into_inner) = new;
                    tracing::info!(cert = %files.cert.display(), "TLS files reloaded");
                }
                Err((field, message)) => {
                    failed = true;
                    tracing::warn!(%field, %message, "TLS files not reloaded; keeping the old ones");
                }
            }
        }
        match node_loaded {
            Some(Ok(())) => tracing::info!("node certificate and gossip keys reloaded"),
            Some(Err(e)) => {
                failed = true;
                tracing::warn!(
                    error = %nodosum::error_chain(&e),
                    "node certificate and gossip keys not reloaded; keeping the old ones"
                );
            }
            None => {}
        }
        for (what, secret, path, loaded) in [
            (
                "password",
                &shared.requirepass,
                &password_file,
                password_loaded,
            ),
            (
                "admin token",
                &shared.admin_token,
                &token_file,
                token_loaded,
            ),
        ] {
            let (Some(path), Some(loaded)) = (path, loaded) else {
                continue;
            };
            match loaded {
                Ok(new) => {
                    secret.replace(new);
                    tracing::info!(file = %path.display(), "{what} reloaded");
                }
                Err(message) => {
                    failed = true;
                    tracing::warn!(%message, "{what} not reloaded; keeping the old one");
                }
            }
        }
        shared.metrics.reloads.inc();
        if failed {
            shared.metrics.reload_failures.inc();
        }
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
