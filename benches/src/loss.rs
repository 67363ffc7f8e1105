//! The packet-loss scenario: [`APPS`] applications send [`stall::MESSAGE`]-byte messages
//! as fast as they can over one connection across a lossy link, and the figure is the
//! aggregate number of messages delivered per second, per transport (TCP + TLS
//! multiplexed, raw quinn, Nodosum).
//!
//! The link is the veth pair of a [`netns::Lab`]; both endpoints live inside its
//! namespaces. The bench process re-executes itself there (`ip netns exec NS <exe>
//! <role> ...`): a *server* child in the server namespace hosts the receiving
//! applications (counting consumers, as in [`stall`]) and answers `counts` on its stdin
//! with their counters; a *client* child in the client namespace connects and runs the
//! producers until its stdin closes. [`child_main`] is the children's entry point; the
//! bench's `main` calls it first. Children also end when the parent dies (their stdin
//! closes), and [`netns::ChildProc`] kills them if they do not.
//!
//! The transports use the same congestion controller, CUBIC: quinn's default, and set on
//! the TCP socket explicitly; `nodosum_bbr` is Nodosum again with
//! [`Congestion::Bbr`](nodosum_quic::Congestion::Bbr), the choice for such links. The system default here is BBR, whose internal pacing sends
//! one-segment packets (offloads are off on the lossy link) one timer tick at a time and
//! holds TCP at about 65 MB/s on this link even without loss (CUBIC: about 530 MB/s).

use std::io::{BufRead, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use nodosum_quic::QuicNode;
use tokio::task::JoinSet;

use crate::netns::{self, CLIENT_IP, Counters, Lab, SERVER_IP};
use crate::pki::{Pki, Resume};
use crate::quic::QuicServer;
use crate::stall::{self, Apps};
use crate::tcp::TcpServer;
use crate::{ServerMode, nodosum, quic, tcp};

/// Applications sharing the connection.
pub const APPS: usize = 10;

/// The transports compared, by report name.
pub const TRANSPORTS: [&str; 4] = ["tcp_tls", "quic", "nodosum", "nodosum_bbr"];

/// Nodosum's endpoint configuration for the transport named `transport`.
fn nodosum_config(transport: &str, ip: IpAddr) -> nodosum_quic::Config {
    let mut config = nodosum::stall_config();
    config.bind_addr = SocketAddr::new(ip, 0);
    if transport == "nodosum_bbr" {
        config.congestion = nodosum_quic::Congestion::Bbr;
    }
    config
}

const SERVER_ROLE: &str = "__nqbench-loss-server";
const CLIENT_ROLE: &str = "__nqbench-loss-client";
const PKI_ENV: &str = "NQBENCH_PKI";

/// How long a child may take to start, connect or answer.
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// The children's entry point: `Some(exit code)` when this process was started as one
/// (then the caller exits with it), `None` for a normal run.
pub fn child_main() -> Option<i32> {
    let mut args = std::env::args().skip(1);
    let role = args.next()?;
    let rest: Vec<String> = args.collect();
    let result = match role.as_str() {
        SERVER_ROLE => run_server(&rest),
        CLIENT_ROLE => run_client(&rest),
        _ => return None,
    };
    Some(match result {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{role}: {e:#}");
            1
        }
    })
}

fn pki_from_env() -> anyhow::Result<Pki> {
    Pki::from_text(&std::env::var(PKI_ENV).context(PKI_ENV)?)
}

fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

type CountFn = Box<dyn Fn() -> Vec<u64> + Send>;
type Keep = Box<dyn std::any::Any + Send>;

/// `<transport> <apps> <ip>`: serves on an ephemeral port of `ip`, prints `ready <port>`,
/// answers every `counts` line with the applications' counters, ends at end of input.
fn run_server(args: &[String]) -> anyhow::Result<()> {
    let [transport, apps, ip] = args else {
        bail!("expected <transport> <apps> <ip>");
    };
    let (transport, apps, ip) = (
        transport.clone(),
        apps.parse::<usize>()?,
        ip.parse::<IpAddr>()?,
    );
    let pki = pki_from_env()?;
    let rt = crate::runtime()?;
    let (port, counts, keep): (u16, CountFn, Keep) = rt.block_on(async move {
        anyhow::Ok(match transport.as_str() {
            "tcp_tls" => {
                let apps = Arc::new(Apps::new(apps, false));
                let server = TcpServer::start_on(
                    ip,
                    pki.server_config(false)?,
                    ServerMode::Apps(apps.router()),
                )
                .await?;
                let port = server.addr().port();
                let a = apps.clone();
                (
                    port,
                    Box::new(move || a.delivered()) as CountFn,
                    Box::new((server, apps)) as Keep,
                )
            }
            "quic" => {
                let apps = Arc::new(Apps::new(apps, false));
                let server = QuicServer::start_on(ip, &pki, ServerMode::Apps(apps.router()))?;
                let port = server.addr()?.port();
                let a = apps.clone();
                (
                    port,
                    Box::new(move || a.delivered()) as CountFn,
                    Box::new((server, apps)) as Keep,
                )
            }
            "nodosum" | "nodosum_bbr" => {
                let config = nodosum_config(&transport, ip);
                let node = QuicNode::bind(config, &nodosum::identity(&pki, &pki.server), None)?;
                let apps = Arc::new(nodosum::StallApps::register(&node, apps, false)?);
                let port = node.local_addr()?.port();
                let a = apps.clone();
                (
                    port,
                    Box::new(move || a.delivered()) as CountFn,
                    Box::new((node, apps)) as Keep,
                )
            }
            other => bail!("unknown transport {other}"),
        })
    })?;
    say(&format!("ready {port}"))?;
    for line in std::io::stdin().lock().lines() {
        if line? != "counts" {
            break;
        }
        let c: Vec<String> = counts().iter().map(u64::to_string).collect();
        say(&c.join(" "))?;
    }
    // The process ends right after: no graceful shutdown needed.
    std::mem::forget(keep);
    rt.shutdown_background();
    Ok(())
}

/// `<transport> <apps> <server addr> <bind ip>`: connects, starts the producers, prints
/// `sending`, runs until end of input.
fn run_client(args: &[String]) -> anyhow::Result<()> {
    let [transport, apps, addr, ip] = args else {
        bail!("expected <transport> <apps> <server addr> <bind ip>");
    };
    let (transport, apps) = (transport.clone(), apps.parse::<usize>()?);
    let (addr, ip) = (addr.parse::<SocketAddr>()?, ip.parse::<IpAddr>()?);
    let pki = pki_from_env()?;
    let rt = crate::runtime()?;
    let keep: Keep = rt.block_on(async move {
        let mut tasks = JoinSet::new();
        anyhow::Ok(match transport.as_str() {
            "tcp_tls" => {
                // CUBIC like quinn's default controller (see the module docs).
                let tls = tcp::dial_with(
                    addr,
                    Arc::new(pki.client_config(Resume::Never)?),
                    Some(b"cubic"),
                )
                .await?;
                stall::spawn_tcp_producers(tls, apps, &mut tasks);
                Box::new(tasks) as Keep
            }
            "quic" => {
                let endpoint = quic::client_endpoint_on(ip)?;
                let conn = endpoint
                    .connect_with(
                        quic::client_config(&pki, Resume::Never)?,
                        addr,
                        crate::pki::SERVER_NAME,
                    )?
                    .await?;
                stall::spawn_quic_producers(&conn, apps, &mut tasks).await?;
                Box::new((tasks, conn, endpoint)) as Keep
            }
            "nodosum" | "nodosum_bbr" => {
                let config = nodosum_config(&transport, ip);
                let node = QuicNode::bind(config, &nodosum::identity(&pki, &pki.client), None)?;
                let server = nodosum::identity(&pki, &pki.server).node_id()?;
                nodosum::connect(&node, server.clone(), addr).await?;
                nodosum::spawn_producers(&node, &server, apps, &mut tasks)?;
                Box::new((tasks, node)) as Keep
            }
            other => bail!("unknown transport {other}"),
        })
    })?;
    say("sending")?;
    for line in std::io::stdin().lock().lines() {
        line?;
    }
    std::mem::forget(keep);
    rt.shutdown_background();
    Ok(())
}

/// One transport's figure at one loss level.
#[derive(Debug, Clone)]
pub struct LossRun {
    /// Messages delivered to all applications in the window.
    pub delivered: u64,
    /// The least any one application got.
    pub min_per_app: u64,
    /// The measured window.
    pub elapsed: Duration,
    /// Both namespaces' INPUT counters over the warm-up and the window.
    pub counters: Counters,
}

impl LossRun {
    /// Messages per second delivered, all applications together.
    pub fn rate(&self) -> f64 {
        #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        let delivered = self.delivered as f64;
        delivered / self.elapsed.as_secs_f64()
    }

    /// Packets dropped / packets that reached the drop rule.
    pub fn drop_ratio(&self) -> f64 {
        #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        let r = self.counters.dropped as f64 / self.counters.packets.max(1) as f64;
        r
    }

    /// Mean size of the packets crossing the link (shows offloads are off: about the MTU).
    pub fn mean_packet_bytes(&self) -> f64 {
        #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        let r = self.counters.bytes as f64 / self.counters.packets.max(1) as f64;
        r
    }
}

/// Runs `transport` across `lab` (whose loss is already set): starts both children, waits
/// for the first deliveries, lets it run for `warmup`, then counts over `window`.
pub fn measure(
    lab: &Lab,
    pki: &Pki,
    transport: &str,
    apps: usize,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<LossRun> {
    let exe = std::env::current_exe().context("own executable")?;
    let env = [(PKI_ENV, pki.to_text())];
    let mut server = lab.spawn(
        &lab.server_ns,
        &exe,
        &[
            SERVER_ROLE.into(),
            transport.into(),
            apps.to_string(),
            SERVER_IP.to_string(),
        ],
        &env,
    )?;
    let ready = server.line(CHILD_TIMEOUT).context("server start")?;
    let port: u16 = ready
        .strip_prefix("ready ")
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("server said {ready:?}"))?;
    let client = lab.spawn(
        &lab.client_ns,
        &exe,
        &[
            CLIENT_ROLE.into(),
            transport.into(),
            apps.to_string(),
            SocketAddr::new(SERVER_IP, port).to_string(),
            CLIENT_IP.to_string(),
        ],
        &env,
    )?;
    let mut client = client;
    let sending = client.line(CHILD_TIMEOUT).context("client start")?;
    ensure!(sending == "sending", "client said {sending:?}");
    let mut counts = || -> anyhow::Result<Vec<u64>> {
        server.send("counts")?;
        let line = server.line(CHILD_TIMEOUT)?;
        let c = line
            .split_whitespace()
            .map(str::parse::<u64>)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("counts {line:?}"))?;
        ensure!(c.len() == apps, "{} counts for {apps} apps", c.len());
        Ok(c)
    };
    let started = Instant::now();
    while counts()?.iter().sum::<u64>() == 0 {
        ensure!(started.elapsed() < CHILD_TIMEOUT, "nothing delivered");
        std::thread::sleep(Duration::from_millis(20));
    }
    lab.zero_counters()?;
    std::thread::sleep(warmup);
    let at_open = counts()?;
    let opened = Instant::now();
    std::thread::sleep(window);
    let at_close = counts()?;
    let elapsed = opened.elapsed();
    let counters = lab.counters()?;
    drop(client);
    drop(server);
    let per_app = at_open
        .iter()
        .zip(&at_close)
        .map(|(a, b)| b.saturating_sub(*a));
    Ok(LossRun {
        delivered: per_app.clone().sum(),
        min_per_app: per_app.min().unwrap_or(0),
        elapsed,
        counters,
    })
}

/// Why the scenario cannot run here, if it cannot (see [`netns::unavailable`]).
pub fn unavailable() -> Option<String> {
    netns::unavailable()
}
