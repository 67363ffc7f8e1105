//! Memory per connection: the resident-set growth of holding N idle connections, each
//! after one echoed 64 B message (so Nodosum and raw quinn have their per-application
//! stream open), per transport.
//!
//! The serving side runs in a child process (this executable re-run with a hidden role,
//! on loopback, no namespaces), so its figure is what one node pays per peer connection
//! and nothing else: the parent reads the child's `VmRSS` from `/proc/<pid>/status`
//! after one warm-up connection and again after N more. The parent holds the N clients
//! and reads its own growth too: for TCP + TLS and raw quinn that is one more connection
//! on a shared client endpoint; for Nodosum each client is a node of its own (one node
//! per peer ID), so it includes an endpoint and its tasks.
//!
//! RSS moves in pages and allocator arenas, so the figures are approximate (a few KiB per
//! connection at N = 200); they are meant to compare transports side by side.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use nodosum_proto::{AppId, NodeId};
use nodosum_quic::{AppReceiver, DevCa, QuicNode, TlsIdentity};

use crate::netns::ChildProc;
use crate::pki::{Identity, Pki, Resume};
use crate::quic::{QuicLink, QuicServer};
use crate::tcp::{TcpLink, TcpServer};
use crate::{ECHO_APP, EXCHANGE_TIMEOUT, ServerMode, nodosum, quic};

const SERVER_ROLE: &str = "__nqbench-mem-server";
const CA_CERT_ENV: &str = "NQBENCH_CA_CERT";
const CA_KEY_ENV: &str = "NQBENCH_CA_KEY";
const CA_NAME: &str = "nqbench CA";

/// The transports measured, by report name.
pub const TRANSPORTS: [&str; 3] = ["tcp_tls", "quic", "nodosum"];

/// Resident set size of process `pid` (`"self"` for this one), in bytes.
pub fn rss_bytes(pid: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .context("VmRSS")?;
    Ok(kib * 1024)
}

/// A development CA for these measurements: one identity per Nodosum client node.
pub fn dev_ca() -> anyhow::Result<DevCa> {
    Ok(DevCa::generate(CA_NAME)?)
}

fn identity(id: &TlsIdentity) -> Identity {
    Identity {
        chain: id.cert_chain.clone(),
        key: id.key.clone_key(),
    }
}

/// The baselines' [`Pki`] with certificates from `ca`.
pub fn pki_of(ca: &DevCa) -> anyhow::Result<Pki> {
    let issue = |name: &str| -> anyhow::Result<Identity> {
        Ok(identity(&ca.issue(&NodeId::new(name.to_owned())?)?))
    };
    Ok(Pki {
        ca: ca.cert_der(),
        server: issue(crate::pki::SERVER_NAME)?,
        client: issue(crate::pki::CLIENT_NAME)?,
    })
}

/// The child's entry point: `Some(exit code)` when started as the memory server.
pub fn child_main() -> Option<i32> {
    let mut args = std::env::args().skip(1);
    if args.next()? != SERVER_ROLE {
        return None;
    }
    let transport = args.next().unwrap_or_default();
    Some(match run_server(&transport) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{SERVER_ROLE}: {e:#}");
            1
        }
    })
}

fn run_server(transport: &str) -> anyhow::Result<()> {
    let ca = DevCa::from_pem(
        CA_NAME,
        &std::env::var(CA_CERT_ENV).context(CA_CERT_ENV)?,
        &std::env::var(CA_KEY_ENV).context(CA_KEY_ENV)?,
    )?;
    let rt = crate::runtime()?;
    let transport = transport.to_owned();
    let (port, keep): (u16, Box<dyn std::any::Any + Send>) = rt.block_on(async move {
        anyhow::Ok(match transport.as_str() {
            "tcp_tls" => {
                let pki = pki_of(&ca)?;
                let server =
                    TcpServer::start(pki.server_config(false)?, ServerMode::EchoData).await?;
                (
                    server.addr().port(),
                    Box::new(server) as Box<dyn std::any::Any + Send>,
                )
            }
            "quic" => {
                let pki = pki_of(&ca)?;
                let server = QuicServer::start(&pki, ServerMode::EchoData)?;
                (server.addr()?.port(), Box::new(server) as _)
            }
            "nodosum" => {
                let id = ca.issue(&NodeId::new(crate::pki::SERVER_NAME.to_owned())?)?;
                let node = QuicNode::bind(nodosum::config(), &id, None)?;
                let mut tasks = tokio::task::JoinSet::new();
                nodosum::serve_echo(&mut tasks, &node)?;
                (node.local_addr()?.port(), Box::new((node, tasks)) as _)
            }
            other => bail!("unknown transport {other}"),
        })
    })?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready {port}")?;
        out.flush()?;
    }
    // Serve until the parent closes our stdin.
    std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())?;
    std::mem::forget(keep);
    rt.shutdown_background();
    Ok(())
}

/// Resident-set growth per connection of one transport.
#[derive(Debug, Clone, Copy)]
pub struct PerConnection {
    /// Connections measured (after the warm-up one).
    pub connections: usize,
    /// Growth of the serving process per connection, in bytes.
    pub server_bytes: f64,
    /// Growth of the client process per connection, in bytes.
    pub client_bytes: f64,
}

/// A client connection kept open for the measurement.
#[allow(dead_code)]
enum Held {
    Tcp(Box<TcpLink>),
    Quic(Box<QuicLink>),
    Nodosum(QuicNode, AppReceiver),
}

/// Starts the serving child for `transport`, opens one warm-up connection and then
/// `n` more, all idle after one echo, and reports both sides' growth per connection.
pub async fn measure(
    ca: &DevCa,
    transport: &str,
    n: usize,
    settle: Duration,
) -> anyhow::Result<PerConnection> {
    let exe = std::env::current_exe().context("own executable")?;
    let mut cmd = Command::new(exe);
    cmd.args([SERVER_ROLE, transport])
        .env(CA_CERT_ENV, ca.cert_pem())
        .env(CA_KEY_ENV, ca.key_pem());
    let mut server = ChildProc::spawn(cmd)?;
    let ready = tokio::task::block_in_place(|| server.line(EXCHANGE_TIMEOUT))?;
    let port: u16 = ready
        .strip_prefix("ready ")
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("server said {ready:?}"))?;
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let pid = server.id().to_string();
    let pki = pki_of(ca)?;
    let mut held = Vec::with_capacity(n + 1);
    let quic_endpoint = quic::client_endpoint()?;
    let tcp_config = Arc::new(pki.client_config(Resume::Never)?);
    let quic_config = quic::client_config(&pki, Resume::Never)?;
    let server_id = NodeId::new(crate::pki::SERVER_NAME.to_owned())?;
    let echo = AppId::new(String::from_utf8(ECHO_APP.to_vec())?)?;
    let payload = [5u8; 64];
    let mut before = (0, 0);
    for i in 0..=n {
        if i == 1 {
            tokio::time::sleep(settle).await;
            before = (rss_bytes(&pid)?, rss_bytes("self")?);
        }
        let h = match transport {
            "tcp_tls" => {
                let (mut link, _) = TcpLink::connect(addr, tcp_config.clone()).await?;
                link.ping(&payload).await?;
                Held::Tcp(Box::new(link))
            }
            "quic" => {
                let mut link = QuicLink::connect(&quic_endpoint, quic_config.clone(), addr).await?;
                link.ping(&payload).await?;
                Held::Quic(Box::new(link))
            }
            _ => {
                let id = ca.issue(&NodeId::new(format!("mem-client-{i}"))?)?;
                let node = QuicNode::bind(nodosum::config(), &id, None)?;
                let mut rx = node.register_app(echo.clone())?;
                nodosum::connect(&node, server_id.clone(), addr).await?;
                node.send(&server_id, &echo, Bytes::copy_from_slice(&payload))
                    .await?;
                tokio::time::timeout(EXCHANGE_TIMEOUT, rx.recv())
                    .await
                    .context("no echo")?
                    .context("echo receiver closed")?;
                Held::Nodosum(node, rx)
            }
        };
        held.push(h);
    }
    tokio::time::sleep(settle).await;
    let after = (rss_bytes(&pid)?, rss_bytes("self")?);
    #[allow(clippy::cast_precision_loss, reason = "byte counts far below 2^52")]
    let per = |a: u64, b: u64| (a as f64 - b as f64) / n.max(1) as f64;
    let result = PerConnection {
        connections: n,
        server_bytes: per(after.0, before.0),
        client_bytes: per(after.1, before.1),
    };
    // Dropping the nodes and links closes them; the child ends when its stdin closes.
    drop(held);
    quic_endpoint.close(0u32.into(), b"done");
    tokio::task::block_in_place(|| drop(server));
    Ok(result)
}
