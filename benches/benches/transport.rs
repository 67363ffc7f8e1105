//! Transport baselines, side by side in one run: a raw quinn stream and the multiplexed
//! TCP + TLS 1.3 connection (see the `benches` crate documentation for both).
//!
//! Criterion measures the means; the custom loops after each group record what criterion
//! does not: set-up and latency percentiles, messages per second per size, and the
//! multi-application stall scenario. They print a Markdown summary with every ratio and
//! write it, with the raw figures, to `target/bench-report/transport.{md,json}`.
//!
//! `cargo bench -p benches` takes about two minutes (criterion: 1 s warm-up, 2 s
//! measurement, 20 samples per benchmark; `-- --quick` is shorter still). Without
//! `--bench` (`cargo test --benches`) every benchmark runs once and the custom loops shrink
//! to a smoke test.

// A benchmark reports on its terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::nodosum::{NodosumLink, NodosumSetup};
use benches::pki::{Pki, Resume};
use benches::quic::{QuicLink, QuicServer, Setup};
use benches::stall::{self, StallResult};
use benches::stats::{Summary, process_cpu, write_report};
use benches::tcp::{TcpLink, TcpServer};
use benches::{ServerMode, quic};
use criterion::{BenchmarkId, Criterion, Throughput};
use nodosum_quic::HandshakeKind as NodosumHandshake;
use rustls::HandshakeKind;
use serde_json::{Map, Value, json};
use tokio::runtime::Runtime;
use tokio::sync::Mutex;

/// Message sizes of the throughput benchmarks, with the count sent per iteration (1 MiB).
const SIZES: [(&str, usize, u64); 3] = [
    ("64B", 64, 16 * 1024),
    ("1KiB", 1024, 1024),
    ("64KiB", 64 * 1024, 16),
];

/// Rounds of the throughput figures (each transport once per round).
const THROUGHPUT_ROUNDS: usize = 5;

/// Loss levels of the packet-loss scenario: report key and drop probability.
const LOSS_LEVELS: [(&str, f64); 3] =
    [("loss_0pct", 0.0), ("loss_1pct", 0.01), ("loss_5pct", 0.05)];

/// The report's sections, as `NQBENCH_ONLY` names them.
const SECTIONS: [&str; 6] = [
    "setup",
    "latency",
    "throughput",
    "stall",
    "packet_loss",
    "memory",
];

/// Application counts of the stall scenario.
const APP_COUNTS: [usize; 5] = [1, 5, 10, 20, 50];

struct Ctx {
    rt: Runtime,
    pki: Pki,
    /// Real measurement (`--bench`) rather than a smoke run.
    full: bool,
}

impl Ctx {
    /// Runs `fut` as a spawned task, off the `block_on` thread.
    fn run<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
        self.rt
            .block_on(self.rt.spawn(fut))
            .expect("invariant: benchmark tasks do not panic")
    }

    fn samples(&self, full: usize) -> usize {
        if self.full { full } else { 3 }
    }
}

/// An established link of either transport.
enum Link {
    Tcp(Box<TcpLink>),
    Quic(Box<QuicLink>),
    Nodosum(Box<NodosumLink>),
}

impl Link {
    async fn ping(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        match self {
            Self::Tcp(l) => l.ping(payload).await,
            Self::Quic(l) => l.ping(payload).await,
            Self::Nodosum(l) => l.ping(payload).await,
        }
    }

    async fn push(&mut self, payload: &[u8], count: u64) -> anyhow::Result<()> {
        match self {
            Self::Tcp(l) => l.push(payload, count).await,
            Self::Quic(l) => l.push(payload, count).await,
            Self::Nodosum(l) => l.push(payload, count).await,
        }
    }
}

fn main() {
    // A child process of the packet-loss scenario runs its role and exits.
    if let Some(code) = benches::loss::child_main().or_else(benches::memory::child_main) {
        std::process::exit(code);
    }
    let full = std::env::args().any(|a| a == "--bench");
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .configure_from_args();
    let ctx = Ctx {
        rt: benches::runtime().expect("tokio runtime"),
        pki: Pki::generate().expect("certificates"),
        full,
    };
    // NQBENCH_ONLY=section,... runs only those sections (setup, latency, throughput,
    // stall, packet_loss, memory) and writes `transport-only.{json,md}`, leaving the full report.
    let only = std::env::var("NQBENCH_ONLY").ok();
    if let Some(o) = &only {
        let unknown: Vec<&str> = o.split(',').filter(|s| !SECTIONS.contains(s)).collect();
        if !unknown.is_empty() {
            eprintln!(
                "NQBENCH_ONLY: unknown section(s) {}; the sections are {}",
                unknown.join(", "),
                SECTIONS.join(", ")
            );
            std::process::exit(2);
        }
    }
    let want = |section: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|s| s == section))
    };
    let mut report = Map::new();
    report.insert("machine".into(), machine());
    if want("setup") {
        report.insert("setup".into(), setup(&mut c, &ctx));
    }
    if want("latency") || want("throughput") {
        let links = links(&ctx);
        if want("latency") {
            report.insert("latency_64B".into(), latency(&mut c, &ctx, &links));
        }
        if want("throughput") {
            report.insert("throughput".into(), throughput(&mut c, &ctx, &links));
        }
    }
    if want("stall") {
        report.insert("stall".into(), stall_scenario(&ctx));
    }
    if want("packet_loss") {
        report.insert("packet_loss".into(), packet_loss(&ctx));
    }
    if want("memory") {
        report.insert("memory_per_connection".into(), memory(&ctx));
    }
    c.final_summary();
    let report = Value::Object(report);
    let markdown = markdown(&report);
    println!("\n{markdown}");
    let name = if only.is_some() {
        "transport-only"
    } else {
        "transport"
    };
    match write_report(name, &report) {
        Ok(path) => {
            let md = path.with_extension("md");
            match std::fs::write(&md, &markdown) {
                Ok(()) => println!("report: {} and {}", path.display(), md.display()),
                Err(e) => println!(
                    "report: {}; cannot write {}: {e}",
                    path.display(),
                    md.display()
                ),
            }
        }
        Err(e) => println!("cannot write the report: {e}"),
    }
}

// ---------------------------------------------------------------------------------------
// The Markdown summary: every figure with its ratio to the baseline.

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, key| v.get(key))?.as_f64()
}

fn fmt(x: Option<f64>, scale: f64, digits: usize) -> String {
    x.map_or_else(|| "n/a".into(), |x| format!("{:.digits$}", x / scale))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "n/a".into(),
    }
}

fn markdown(r: &Value) -> String {
    use std::fmt::Write as _;
    let mut md = String::new();
    let cores = r["machine"]["cores"].as_u64().unwrap_or(0);
    let _ = writeln!(
        md,
        "## Transport baselines ({cores} cores, loopback; {})\n",
        r["machine"]["versions"].as_str().unwrap_or("")
    );

    let setup = |name: &str, q: &str| num(r, &["setup", name, q]);
    let _ = writeln!(
        md,
        "### Connection set-up to the first echoed 64 B message (ms)\n\n\
         | handshake | TCP+TLS p50 / p99 | raw QUIC p50 / p99 | Nodosum p50 / p99 | QUIC/TCP p50 | Nodosum/QUIC p50 |\n\
         |---|---|---|---|---|---|"
    );
    for (label, tcp, quic, nodosum) in [
        (
            "full",
            Some("tcp_tls/full"),
            "quic/full",
            Some("nodosum/full"),
        ),
        (
            "resumed",
            Some("tcp_tls/resumed"),
            "quic/resumed",
            Some("nodosum/reconnect"),
        ),
        ("0-RTT", None, "quic/0rtt", Some("nodosum/0rtt")),
    ] {
        let cell = |name: Option<&str>| match name {
            Some(n) => format!(
                "{} / {}",
                fmt(setup(n, "p50_us"), 1000.0, 2),
                fmt(setup(n, "p99_us"), 1000.0, 2)
            ),
            None => "n/a".into(),
        };
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} |",
            cell(tcp),
            cell(Some(quic)),
            cell(nodosum),
            ratio(setup(quic, "p50_us"), tcp.and_then(|t| setup(t, "p50_us"))),
            ratio(
                nodosum.and_then(|n| setup(n, "p50_us")),
                setup(quic, "p50_us")
            ),
        );
    }
    let _ = writeln!(
        md,
        "\n0-RTT / full, p50: raw QUIC {}, Nodosum {} (replay-safe application)\n",
        ratio(setup("quic/0rtt", "p50_us"), setup("quic/full", "p50_us")),
        ratio(
            setup("nodosum/0rtt", "p50_us"),
            setup("nodosum/full", "p50_us")
        )
    );

    let lat = |t: &str, q: &str| num(r, &["latency_64B", t, q]);
    let _ = writeln!(
        md,
        "### 64 B ping-pong round trip (µs)\n\n\
         | transport | p50 | p95 | p99 | p50 vs TCP+TLS | p99 vs TCP+TLS | p99 vs raw QUIC |\n\
         |---|---|---|---|---|---|---|"
    );
    for t in ["tcp_tls", "quic", "nodosum"] {
        let _ = writeln!(
            md,
            "| {t} | {} | {} | {} | {} | {} | {} |",
            fmt(lat(t, "p50_us"), 1.0, 1),
            fmt(lat(t, "p95_us"), 1.0, 1),
            fmt(lat(t, "p99_us"), 1.0, 1),
            ratio(lat(t, "p50_us"), lat("tcp_tls", "p50_us")),
            ratio(lat(t, "p99_us"), lat("tcp_tls", "p99_us")),
            ratio(lat(t, "p99_us"), lat("quic", "p99_us")),
        );
    }

    let tp = |size: &str, t: &str, q: &str| num(r, &["throughput", size, t, q]);
    let _ = writeln!(
        md,
        "\n### Throughput, one application (msgs/s, MB/s; medians of alternating rounds)\n\n\
         CPU: the process's user + system time per message, both ends (they share the \
         process), TCP+TLS / raw QUIC / Nodosum.\n\n\
         | size | TCP+TLS | raw QUIC | Nodosum | QUIC/TCP | Nodosum/QUIC | Nodosum/TCP | CPU µs/msg |\n\
         |---|---|---|---|---|---|---|---|"
    );
    for (size, _, _) in SIZES {
        let cell = |t: &str| {
            format!(
                "{} / {}",
                fmt(tp(size, t, "msgs_per_s"), 1.0, 0),
                fmt(tp(size, t, "mb_per_s"), 1.0, 1)
            )
        };
        let m = |t: &str| tp(size, t, "msgs_per_s");
        let c = |t: &str| fmt(tp(size, t, "cpu_us_per_msg"), 1.0, 2);
        let _ = writeln!(
            md,
            "| {size} | {} | {} | {} | {} | {} | {} | {} / {} / {} |",
            cell("tcp_tls"),
            cell("quic"),
            cell("nodosum"),
            ratio(m("quic"), m("tcp_tls")),
            ratio(m("nodosum"), m("quic")),
            ratio(m("nodosum"), m("tcp_tls")),
            c("tcp_tls"),
            c("quic"),
            c("nodosum"),
        );
    }

    let _ = writeln!(
        md,
        "\n### N applications on one connection, application 0's receiver stalled\n\n\
         1 KiB messages delivered to applications 1..N in the window after a warm-up \
         (N = 1: to the one application, unstalled), and stalled/unstalled.\n\n\
         | N | TCP+TLS unstalled | TCP+TLS stalled | ratio | raw QUIC unstalled | raw QUIC stalled | ratio | Nodosum unstalled | Nodosum stalled | ratio |\n\
         |---|---|---|---|---|---|---|---|---|---|"
    );
    let rows = r["stall"].as_array().cloned().unwrap_or_default();
    for apps in APP_COUNTS {
        let get = |t: &str, k: &str| {
            rows.iter()
                .find(|row| {
                    row["apps"].as_u64() == u64::try_from(apps).ok()
                        && row["transport"].as_str() == Some(t)
                })
                .and_then(|row| num(row, &[k, "delivered_others"]))
        };
        let mut line = format!("| {apps} |");
        for t in ["tcp_tls", "quic", "nodosum"] {
            let (u, st) = (get(t, "unstalled"), get(t, "stalled"));
            let _ = write!(
                line,
                " {} | {} | {} |",
                fmt(u, 1.0, 0),
                fmt(st, 1.0, 0),
                ratio(st, u)
            );
        }
        let _ = writeln!(md, "{line}");
    }
    markdown_loss(&mut md, &r["packet_loss"]);
    markdown_memory(&mut md, &r["memory_per_connection"]);
    md
}

fn markdown_memory(md: &mut String, r: &Value) {
    use std::fmt::Write as _;
    let _ = writeln!(
        md,
        "\n### Memory per idle connection (KiB of resident set, after one echo)\n\n\
         {} connections. Serving side: one process holding them all (what a node pays per \
         peer). Client side: TCP and raw QUIC share one client endpoint; Nodosum needs one \
         client node (its own endpoint) per peer ID.\n\n\
         | transport | serving side | client side | serving vs TCP+TLS |\n|---|---|---|---|",
        r["connections"].as_u64().unwrap_or(0)
    );
    if let Some(why) = r["skipped"].as_str() {
        let _ = writeln!(md, "\nNot measured: {why}");
        return;
    }
    for t in benches::memory::TRANSPORTS {
        let _ = writeln!(
            md,
            "| {t} | {} | {} | {} |",
            fmt(num(r, &[t, "server_bytes_per_connection"]), 1024.0, 1),
            fmt(num(r, &[t, "client_bytes_per_connection"]), 1024.0, 1),
            ratio(
                num(r, &[t, "server_bytes_per_connection"]),
                num(r, &["tcp_tls", "server_bytes_per_connection"])
            ),
        );
    }
}

fn markdown_loss(md: &mut String, r: &Value) {
    use std::fmt::Write as _;
    let _ = writeln!(
        md,
        "\n### Packet loss: {} applications on one connection\n",
        r["apps"].as_u64().unwrap_or(0)
    );
    if let Some(why) = r["skipped"].as_str().or_else(|| r["error"].as_str()) {
        let _ = writeln!(md, "Not measured: {why}");
        return;
    }
    let _ = writeln!(
        md,
        "{} B messages, all applications' deliveries per second over {} s, across {}. \
         `drop` is the measured share of packets dropped, `pkt` the mean packet size.\n\n\
         Nodosum (BBR) is Nodosum with `congestion: Bbr`; the others run CUBIC.\n\n\
         | loss | TCP+TLS msgs/s | raw QUIC msgs/s | Nodosum msgs/s | Nodosum (BBR) msgs/s | QUIC/TCP | Nodosum/TCP | Nodosum (BBR)/TCP | Nodosum/QUIC | drop TCP / QUIC / Nodosum / BBR | pkt B TCP / QUIC / Nodosum / BBR |\n\
         |---|---|---|---|---|---|---|---|---|---|---|",
        r["message_bytes"].as_u64().unwrap_or(0),
        r["window_s"].as_f64().unwrap_or(0.0),
        r["link"].as_str().unwrap_or("")
    );
    for (key, _) in LOSS_LEVELS {
        let level = &r[key];
        if level.is_null() {
            continue;
        }
        let m = |t: &str| num(level, &[t, "msgs_per_s"]);
        let each = |k: &str, scale: f64, digits: usize| {
            benches::loss::TRANSPORTS
                .iter()
                .map(|t| fmt(num(level, &[t, k]), scale, digits))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            level["loss_percent"]
                .as_f64()
                .map_or_else(|| key.to_owned(), |p| format!("{p} %")),
            fmt(m("tcp_tls"), 1.0, 0),
            fmt(m("quic"), 1.0, 0),
            fmt(m("nodosum"), 1.0, 0),
            fmt(m("nodosum_bbr"), 1.0, 0),
            ratio(m("quic"), m("tcp_tls")),
            ratio(m("nodosum"), m("tcp_tls")),
            ratio(m("nodosum_bbr"), m("tcp_tls")),
            ratio(m("nodosum"), m("quic")),
            each("drop_ratio_percent", 1.0, 2),
            each("mean_packet_bytes", 1.0, 0),
        );
    }
}

fn machine() -> Value {
    json!({
        "cores": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "versions": "quinn 0.11, rustls 0.23 (ring), tokio-rustls 0.26, tokio 1",
    })
}

type Links = Vec<(&'static str, Arc<Mutex<Link>>)>;

fn links(ctx: &Ctx) -> Links {
    let pki = ctx.pki.clone();
    ctx.run(async move {
        // The servers serve until the process exits: forget the handles whose Drop stops them.
        let tcp_server = TcpServer::start(pki.server_config(false)?, ServerMode::EchoData).await?;
        let (tcp, _) = TcpLink::connect(
            tcp_server.addr(),
            Arc::new(pki.client_config(Resume::Never)?),
        )
        .await?;
        let quic_server = QuicServer::start(&pki, ServerMode::EchoData)?;
        let endpoint = quic::client_endpoint()?;
        let quic = QuicLink::connect(
            &endpoint,
            quic::client_config(&pki, Resume::Never)?,
            quic_server.addr()?,
        )
        .await?;
        let nodosum = NodosumLink::start(&pki).await?;
        std::mem::forget(tcp_server);
        std::mem::forget(quic_server);
        std::mem::forget(endpoint);
        let links: Links = vec![
            ("tcp_tls", Arc::new(Mutex::new(Link::Tcp(Box::new(tcp))))),
            ("quic", Arc::new(Mutex::new(Link::Quic(Box::new(quic))))),
            (
                "nodosum",
                Arc::new(Mutex::new(Link::Nodosum(Box::new(nodosum)))),
            ),
        ];
        anyhow::Ok(links)
    })
    .expect("links")
}

// ---------------------------------------------------------------------------------------
// Connection set-up: connect, one 64 B message echoed, close.

#[derive(Clone, Copy)]
enum SetupKind {
    TcpFull,
    TcpResumed,
    QuicFull,
    QuicResumed,
    QuicZeroRtt,
    NodosumFull,
    NodosumReconnect,
    NodosumZeroRtt,
}

impl SetupKind {
    const ALL: [Self; 8] = [
        Self::TcpFull,
        Self::TcpResumed,
        Self::QuicFull,
        Self::QuicResumed,
        Self::QuicZeroRtt,
        Self::NodosumFull,
        Self::NodosumReconnect,
        Self::NodosumZeroRtt,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::TcpFull => "tcp_tls/full",
            Self::TcpResumed => "tcp_tls/resumed",
            Self::QuicFull => "quic/full",
            Self::QuicResumed => "quic/resumed",
            Self::QuicZeroRtt => "quic/0rtt",
            Self::NodosumFull => "nodosum/full",
            Self::NodosumReconnect => "nodosum/reconnect",
            Self::NodosumZeroRtt => "nodosum/0rtt",
        }
    }
}

/// Servers and client state for the set-up measurements.
#[derive(Clone)]
struct SetupRig {
    tcp_addr: std::net::SocketAddr,
    quic_addr: std::net::SocketAddr,
    endpoint: quinn::Endpoint,
    tcp_full: Arc<rustls::ClientConfig>,
    tcp_resumed: Arc<rustls::ClientConfig>,
    quic_full: quinn::ClientConfig,
    quic_resumed: quinn::ClientConfig,
    quic_0rtt: quinn::ClientConfig,
    nodosum: Arc<Mutex<NodosumSetup>>,
}

/// Counts of handshakes that did not go as the variant intends (e.g. not resumed).
#[derive(Default)]
struct Misses(std::sync::atomic::AtomicU64);

impl SetupRig {
    /// One connection: the time from dialling to the first echoed 64 B message.
    async fn once(&self, kind: SetupKind, misses: &Misses) -> anyhow::Result<Duration> {
        let payload = [7u8; 64];
        let miss = |ok: bool| {
            if !ok {
                misses.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        };
        let elapsed = match kind {
            SetupKind::TcpFull | SetupKind::TcpResumed => {
                let config = match kind {
                    SetupKind::TcpFull => self.tcp_full.clone(),
                    _ => self.tcp_resumed.clone(),
                };
                let start = Instant::now();
                let (mut link, got) = TcpLink::connect(self.tcp_addr, config).await?;
                link.ping(&payload).await?;
                let elapsed = start.elapsed();
                // TLS 1.3 tickets arrive before the echo: the next dial can resume.
                link.close().await;
                let want = match kind {
                    SetupKind::TcpFull => HandshakeKind::Full,
                    _ => HandshakeKind::Resumed,
                };
                miss(got == Some(want));
                elapsed
            }
            SetupKind::QuicFull | SetupKind::QuicResumed => {
                let config = match kind {
                    SetupKind::QuicFull => self.quic_full.clone(),
                    _ => self.quic_resumed.clone(),
                };
                let (setup, elapsed) =
                    quic::connect_and_echo(&self.endpoint, config, self.quic_addr, &payload, false)
                        .await?;
                miss(setup == Setup::OneRtt);
                elapsed
            }
            SetupKind::QuicZeroRtt => {
                let (setup, elapsed) = quic::connect_and_echo(
                    &self.endpoint,
                    self.quic_0rtt.clone(),
                    self.quic_addr,
                    &payload,
                    true,
                )
                .await?;
                miss(setup == Setup::ZeroRttAccepted);
                elapsed
            }
            SetupKind::NodosumFull => self.nodosum.lock().await.fresh().await?,
            SetupKind::NodosumReconnect => {
                let (elapsed, kind) = self.nodosum.lock().await.reconnect().await?;
                miss(matches!(
                    kind,
                    Some(NodosumHandshake::Resumed | NodosumHandshake::ZeroRtt)
                ));
                elapsed
            }
            SetupKind::NodosumZeroRtt => {
                let mut setup = self.nodosum.lock().await;
                let sent = setup.early_sent();
                let (elapsed, kind) = setup.reconnect_0rtt().await?;
                // As intended: 0-RTT accepted and the message written as early data.
                miss(kind == Some(NodosumHandshake::ZeroRtt) && setup.early_sent() > sent);
                elapsed
            }
        };
        Ok(elapsed)
    }
}

/// Shuffles `order` in place (Fisher-Yates with xorshift64 from `seed`: the same orders
/// every run).
fn shuffle(order: &mut [usize], seed: &mut u64) {
    for i in (1..order.len()).rev() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let j = usize::try_from(*seed % (i as u64 + 1)).unwrap_or(0);
        order.swap(i, j);
    }
}

fn setup(c: &mut Criterion, ctx: &Ctx) -> Value {
    let pki = ctx.pki.clone();
    let rig = ctx
        .run(async move {
            let tcp = TcpServer::start(pki.server_config(false)?, ServerMode::EchoData).await?;
            let quic_server = QuicServer::start(&pki, ServerMode::EchoData)?;
            let rig = SetupRig {
                tcp_addr: tcp.addr(),
                quic_addr: quic_server.addr()?,
                endpoint: quic::client_endpoint()?,
                tcp_full: Arc::new(pki.client_config(Resume::Never)?),
                tcp_resumed: Arc::new(pki.client_config(Resume::Tickets)?),
                quic_full: quic::client_config(&pki, Resume::Never)?,
                quic_resumed: quic::client_config(&pki, Resume::Tickets)?,
                quic_0rtt: quic::client_config(&pki, Resume::EarlyData)?,
                nodosum: Arc::new(Mutex::new(NodosumSetup::start(&pki).await?)),
            };
            std::mem::forget(tcp);
            std::mem::forget(quic_server);
            // One connection each so that the resuming clients hold tickets.
            let none = Misses::default();
            for kind in SetupKind::ALL {
                rig.once(kind, &none).await?;
            }
            anyhow::Ok(rig)
        })
        .expect("set-up rig");

    let mut group = c.benchmark_group("setup");
    for kind in SetupKind::ALL {
        group.bench_function(kind.name(), |b| {
            b.iter_custom(|iters| {
                let rig = rig.clone();
                ctx.run(async move {
                    let none = Misses::default();
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += rig.once(kind, &none).await.expect("set-up");
                    }
                    total
                })
            });
        });
    }
    group.finish();

    let n = ctx.samples(300);
    let mut out = Map::new();
    println!("\nconnection set-up to first echoed 64 B message ({n} samples each)");
    // One sample of each kind in turn, so that every kind sees the same machine: the
    // ratios between kinds (0-RTT / full) do not drift with what else the machine did
    // while one kind was measured. Each round in another order, so that every kind
    // follows every other about as often: a sample that follows one which ends with
    // a wait (a Nodosum server noticing the client left) starts with the runtime's
    // workers parked and pays for waking them, about 0.3 ms here; one that follows a
    // raw QUIC close finds them running.
    let (mut samples, misses) = ctx.run(async move {
        let misses: Vec<Misses> = SetupKind::ALL.iter().map(|_| Misses::default()).collect();
        let mut samples = vec![Vec::with_capacity(n); SetupKind::ALL.len()];
        let mut order: Vec<usize> = (0..SetupKind::ALL.len()).collect();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..n {
            shuffle(&mut order, &mut seed);
            for &i in &order {
                let kind = SetupKind::ALL[i];
                samples[i].push(rig.once(kind, &misses[i]).await.expect("set-up"));
            }
        }
        (samples, misses)
    });
    for (i, kind) in SetupKind::ALL.into_iter().enumerate() {
        let s = Summary::of(&mut samples[i]).expect("samples");
        let misses = misses[i].0.load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "  {:<18} p50 {:>8.1} µs  p99 {:>8.1} µs  mean {:>8.1} µs  (not as intended: {misses})",
            kind.name(),
            s.p50_us,
            s.p99_us,
            s.mean_us
        );
        let mut v = s.to_json();
        v["not_as_intended"] = json!(misses);
        out.insert(kind.name().into(), v);
    }
    Value::Object(out)
}

// ---------------------------------------------------------------------------------------
// Latency: 64 B ping-pong on an established connection.

fn latency(c: &mut Criterion, ctx: &Ctx, links: &Links) -> Value {
    let mut group = c.benchmark_group("latency_64B");
    for &(name, ref link) in links {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let link = link.clone();
                ctx.run(async move {
                    let mut link = link.lock().await;
                    let payload = [1u8; 64];
                    let start = Instant::now();
                    for _ in 0..iters {
                        link.ping(&payload).await.expect("ping");
                    }
                    start.elapsed()
                })
            });
        });
    }
    group.finish();

    let n = ctx.samples(20_000);
    let mut out = Map::new();
    println!("\n64 B ping-pong round trip ({n} samples each)");
    for &(name, ref link) in links {
        let link = link.clone();
        let mut samples = ctx.run(async move {
            let mut link = link.lock().await;
            let payload = [1u8; 64];
            let mut samples = Vec::with_capacity(n);
            for _ in 0..n {
                let start = Instant::now();
                link.ping(&payload).await.expect("ping");
                samples.push(start.elapsed());
            }
            samples
        });
        let s = Summary::of(&mut samples).expect("samples");
        println!(
            "  {name:<8} p50 {:>7.1} µs  p95 {:>7.1} µs  p99 {:>7.1} µs  mean {:>7.1} µs",
            s.p50_us, s.p95_us, s.p99_us, s.mean_us
        );
        out.insert(name.into(), s.to_json());
    }
    Value::Object(out)
}

// ---------------------------------------------------------------------------------------
// Throughput: one application, messages of 64 B / 1 KiB / 64 KiB, 1 MiB per iteration.

fn throughput(c: &mut Criterion, ctx: &Ctx, links: &Links) -> Value {
    for (label, size, count) in SIZES {
        let mut group = c.benchmark_group(format!("throughput_{label}"));
        group.throughput(Throughput::Elements(count));
        for &(name, ref link) in links {
            group.bench_with_input(BenchmarkId::from_parameter(name), &size, |b, &size| {
                b.iter_custom(|iters| {
                    let link = link.clone();
                    ctx.run(async move {
                        let mut link = link.lock().await;
                        let payload = vec![3u8; size];
                        let start = Instant::now();
                        for _ in 0..iters {
                            link.push(&payload, count).await.expect("push");
                        }
                        start.elapsed()
                    })
                });
            });
        }
        group.finish();
    }

    // Rounds that go through the transports in turn (the first one rotates), so that a
    // slow spell of the machine hits them alike; each figure is the median of its rounds.
    let (window, rounds) = if ctx.full {
        (Duration::from_millis(500), THROUGHPUT_ROUNDS)
    } else {
        (Duration::from_millis(20), 1)
    };
    let mut out = Map::new();
    println!(
        "\nthroughput, one application, {rounds} rounds of {window:?} per transport (medians)"
    );
    for (label, size, count) in SIZES {
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); links.len()];
        // CPU time of the whole process (both ends) per message, µs.
        let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); links.len()];
        for round in 0..rounds {
            for k in 0..links.len() {
                let t = (k + round) % links.len();
                let link = links[t].1.clone();
                let cpu0 = process_cpu();
                let (sent, elapsed) = ctx.run(async move {
                    let mut link = link.lock().await;
                    let payload = vec![3u8; size];
                    let start = Instant::now();
                    let mut sent = 0u64;
                    while start.elapsed() < window {
                        link.push(&payload, count).await.expect("push");
                        sent += count;
                    }
                    (sent, start.elapsed())
                });
                #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
                rates[t].push(sent as f64 / elapsed.as_secs_f64());
                if let (Some(before), Some(after)) = (cpu0, process_cpu()) {
                    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
                    cpu[t].push(after.saturating_sub(before).as_secs_f64() * 1e6 / sent as f64);
                }
            }
        }
        let mut row = Map::new();
        for ((&(name, _), mut samples), mut cpu) in links.iter().zip(rates).zip(cpu) {
            samples.sort_by(f64::total_cmp);
            cpu.sort_by(f64::total_cmp);
            let msgs = samples[samples.len() / 2];
            let cpu_us = cpu.get(cpu.len() / 2).copied();
            #[allow(clippy::cast_precision_loss, reason = "sizes far below 2^52")]
            let mbs = msgs * size as f64 / 1e6;
            println!(
                "  {label:>6} {name:<8} {msgs:>12.0} msgs/s {mbs:>9.1} MB/s {:>7} µs CPU/msg  (rounds {:.0}-{:.0})",
                cpu_us.map_or_else(|| "-".to_owned(), |c| format!("{c:.2}")),
                samples[0],
                samples[samples.len() - 1]
            );
            row.insert(
                name.into(),
                json!({
                    "msgs_per_s": msgs,
                    "mb_per_s": mbs,
                    "cpu_us_per_msg": cpu_us,
                    "samples_msgs_per_s": samples,
                    "samples_cpu_us_per_msg": cpu,
                }),
            );
        }
        out.insert(label.into(), Value::Object(row));
    }
    Value::Object(out)
}

// ---------------------------------------------------------------------------------------
// N applications on one connection, application 0's receiver stalled or not.

fn stall_scenario(ctx: &Ctx) -> Value {
    let window = if ctx.full {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(50)
    };
    println!(
        "\n{} B messages to N apps on one connection for {window:?}: delivered to apps 1..N \
         (N = 1 unstalled: to the one app)",
        stall::MESSAGE
    );
    let mut out = Vec::new();
    for apps in APP_COUNTS {
        for transport in ["tcp_tls", "quic", "nodosum"] {
            let mut row = Map::new();
            row.insert("apps".into(), json!(apps));
            row.insert("transport".into(), json!(transport));
            let mut results: Vec<StallResult> = Vec::new();
            for stalled in [false, true] {
                if apps == 1 && stalled {
                    continue;
                }
                let pki = ctx.pki.clone();
                let result = ctx
                    .run(async move {
                        match transport {
                            "tcp_tls" => stall::run_tcp(&pki, apps, stalled, window).await,
                            "quic" => stall::run_quic(&pki, apps, stalled, window).await,
                            _ => benches::nodosum::run_stall(&pki, apps, stalled, window).await,
                        }
                    })
                    .expect("stall scenario");
                row.insert(
                    if stalled { "stalled" } else { "unstalled" }.into(),
                    result.to_json(),
                );
                results.push(result);
            }
            let line: Vec<String> = results
                .iter()
                .map(|r| {
                    format!(
                        "{}: {:>8} msgs (min/app {:>6}, starved {:>2}; {:>6} in warm-up)",
                        if r.stalled { "stalled" } else { "unstalled" },
                        r.delivered_others,
                        r.min_per_app,
                        r.starved,
                        r.before_window
                    )
                })
                .collect();
            println!("  N={apps:<3} {transport:<8} {}", line.join("  "));
            out.push(Value::Object(row));
        }
    }
    Value::Array(out)
}

// ---------------------------------------------------------------------------------------
// Packet loss: N applications across a lossy veth link between two network namespaces.

fn packet_loss(ctx: &Ctx) -> Value {
    let (warmup, window, rounds) = if ctx.full {
        (Duration::from_millis(300), Duration::from_secs(1), 3)
    } else {
        (Duration::from_millis(50), Duration::from_millis(200), 1)
    };
    let apps = benches::loss::APPS;
    let mut out = Map::new();
    out.insert("apps".into(), json!(apps));
    out.insert("message_bytes".into(), json!(stall::MESSAGE));
    out.insert("window_s".into(), json!(window.as_secs_f64()));
    out.insert("rounds".into(), json!(rounds));
    out.insert(
        "link".into(),
        json!("a veth pair between two network namespaces (MTU 1500, gso_max_segs 1), iptables random drop on INPUT in both"),
    );
    println!(
        "\npacket loss: {apps} apps x {} B messages, {window:?} per figure, {rounds} rounds \
         (median reported), endpoints in network namespaces",
        stall::MESSAGE
    );
    if let Some(why) = benches::loss::unavailable() {
        println!("  skipped: {why}");
        out.insert("skipped".into(), json!(why));
        return Value::Object(out);
    }
    let lab = match benches::netns::Lab::create() {
        Ok(lab) => lab,
        Err(e) => {
            println!("  skipped: cannot build the namespaces: {e:#}");
            out.insert(
                "skipped".into(),
                json!(format!("cannot build the namespaces: {e:#}")),
            );
            return Value::Object(out);
        }
    };
    // Rounds go over every level and transport in turn, so that a burst of load from
    // elsewhere on the machine hits one sample of each rather than all of one.
    let mut runs: Vec<Vec<Vec<benches::loss::LossRun>>> =
        vec![vec![Vec::new(); benches::loss::TRANSPORTS.len()]; LOSS_LEVELS.len()];
    let mut errors: Vec<Vec<Option<String>>> =
        vec![vec![None; benches::loss::TRANSPORTS.len()]; LOSS_LEVELS.len()];
    'rounds: for _ in 0..rounds {
        for (l, (key, p)) in LOSS_LEVELS.iter().enumerate() {
            if let Err(e) = lab.set_loss(*p) {
                println!("  {key}: cannot set the loss: {e:#}");
                out.insert("error".into(), json!(format!("{e:#}")));
                break 'rounds;
            }
            for (t, transport) in benches::loss::TRANSPORTS.iter().enumerate() {
                match benches::loss::measure(&lab, &ctx.pki, transport, apps, warmup, window) {
                    Ok(run) => {
                        println!(
                            "  loss {:>4.1} % {transport:<8} {:>10.0} msgs/s  (min/app {:>7}, dropped {:.2} % of {} packets, mean {:.0} B)",
                            p * 100.0,
                            run.rate(),
                            run.min_per_app,
                            run.drop_ratio() * 100.0,
                            run.counters.packets,
                            run.mean_packet_bytes()
                        );
                        runs[l][t].push(run);
                    }
                    Err(e) => {
                        println!("  loss {:>4.1} % {transport:<11} failed: {e:#}", p * 100.0);
                        errors[l][t] = Some(format!("{e:#}"));
                    }
                }
            }
        }
    }
    drop(lab);
    for (l, (key, p)) in LOSS_LEVELS.iter().enumerate() {
        let mut level = Map::new();
        level.insert("loss_percent".into(), json!(p * 100.0));
        for (t, transport) in benches::loss::TRANSPORTS.iter().enumerate() {
            let mut samples = runs[l][t].clone();
            if samples.is_empty() {
                let e = errors[l][t].clone().unwrap_or_else(|| "not run".into());
                level.insert((*transport).into(), json!({ "error": e }));
                continue;
            }
            samples.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
            let rates: Vec<f64> = samples.iter().map(benches::loss::LossRun::rate).collect();
            let median = &samples[samples.len() / 2];
            #[allow(clippy::cast_precision_loss, reason = "sizes far below 2^52")]
            let mbs = median.rate() * stall::MESSAGE as f64 / 1e6;
            level.insert(
                (*transport).into(),
                json!({
                    "msgs_per_s": median.rate(),
                    "mb_per_s": mbs,
                    "samples_msgs_per_s": rates,
                    "delivered": median.delivered,
                    "min_per_app": median.min_per_app,
                    "window_s": median.elapsed.as_secs_f64(),
                    "packets": median.counters.packets,
                    "dropped": median.counters.dropped,
                    "drop_ratio_percent": median.drop_ratio() * 100.0,
                    "mean_packet_bytes": median.mean_packet_bytes(),
                }),
            );
        }
        let m = |t: &str| level.get(t).and_then(|v| v["msgs_per_s"].as_f64());
        let r = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => json!(a / b),
            _ => Value::Null,
        };
        let ratios = [
            ("quic_vs_tcp", r(m("quic"), m("tcp_tls"))),
            ("nodosum_vs_tcp", r(m("nodosum"), m("tcp_tls"))),
            ("nodosum_vs_quic", r(m("nodosum"), m("quic"))),
        ];
        for (k, v) in ratios {
            level.insert(k.into(), v);
        }
        out.insert((*key).into(), Value::Object(level));
    }
    Value::Object(out)
}

// ---------------------------------------------------------------------------------------
// Memory: resident-set growth per idle connection.

fn memory(ctx: &Ctx) -> Value {
    let n = if ctx.full { 200 } else { 10 };
    let settle = Duration::from_millis(if ctx.full { 300 } else { 50 });
    let mut out = Map::new();
    out.insert("connections".into(), json!(n));
    println!("\nmemory per idle connection ({n} connections, resident set growth)");
    if !std::path::Path::new("/proc/self/status").exists() {
        println!("  skipped: no /proc");
        out.insert("skipped".into(), json!("no /proc/<pid>/status"));
        return Value::Object(out);
    }
    let ca = Arc::new(benches::memory::dev_ca().expect("development CA"));
    for transport in benches::memory::TRANSPORTS {
        let ca = ca.clone();
        let result =
            ctx.run(async move { benches::memory::measure(&ca, transport, n, settle).await });
        match result {
            Ok(m) => {
                println!(
                    "  {transport:<8} serving side {:>8.1} KiB/conn  client side {:>8.1} KiB/conn",
                    m.server_bytes / 1024.0,
                    m.client_bytes / 1024.0
                );
                out.insert(
                    transport.into(),
                    json!({
                        "server_bytes_per_connection": m.server_bytes,
                        "client_bytes_per_connection": m.client_bytes,
                    }),
                );
            }
            Err(e) => {
                println!("  {transport:<8} failed: {e:#}");
                out.insert(transport.into(), json!({ "error": format!("{e:#}") }));
            }
        }
    }
    Value::Object(out)
}
