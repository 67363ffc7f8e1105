//! `cargo xtask cluster`: a local Mycel cluster on loopback, for trying things out.
//!
//! Builds `mycel` in release mode, starts N nodes on free loopback ports (development
//! certificates, nothing to prepare), waits until every node sees every other alive, prints
//! how to reach them, and runs until Ctrl-C, when the nodes leave gracefully one at a time
//! (each hands its partitions to the ones still running; the last has no one left to hand
//! off to and stops at once).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};

use crate::util::{cargo, exec, free_tcp, free_udp, project_root};

/// Options of `cargo xtask cluster`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub(crate) nodes: u16,
    /// Copies of each partition (primary included).
    #[arg(long, default_value_t = 2)]
    pub(crate) replicas: u8,
    /// Seconds to wait for the cluster to form before giving up.
    #[arg(long, default_value_t = 60)]
    pub(crate) timeout: u64,
    /// Start the cluster, print the table, then stop it again (a smoke test).
    #[arg(long)]
    pub(crate) once: bool,
}

/// One running node.
#[derive(Debug)]
pub(crate) struct NodeProc {
    pub(crate) id: String,
    pub(crate) gossip: SocketAddr,
    pub(crate) quic: SocketAddr,
    pub(crate) resp: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) log: PathBuf,
    child: Child,
}

impl NodeProc {
    /// The node's process ID (its process group too: each node runs in its own group).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The nodes of a local cluster; dropping it kills whatever still runs.
#[derive(Debug, Default)]
pub(crate) struct Cluster {
    pub(crate) nodes: Vec<NodeProc>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            let _ = n.child.kill();
            let _ = n.child.wait();
        }
    }
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    // The nodes run in their own process groups, so Ctrl-C reaches only this process,
    // which then stops them one by one (all leaving at once would leave nobody to hand
    // partitions to).
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;

    let binary = build_mycel()?;
    let mut cluster = start(&binary, args.nodes, args.replicas)?;
    wait_formed(
        &mut cluster,
        Duration::from_secs(args.timeout),
        &interrupted,
    )?;
    print_table(&cluster);
    if !args.once {
        println!("\nCtrl-C to stop; node logs are in {}", log_dir().display());
        while !interrupted.load(Ordering::SeqCst) {
            if let Some(n) = exited(&mut cluster) {
                bail!("{} exited unexpectedly; see {}", n.id, n.log.display());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    stop(&mut cluster);
    Ok(())
}

fn log_dir() -> PathBuf {
    project_root().join("target").join("xtask-cluster")
}

/// Builds `mycel` in release mode and returns the binary's path.
pub(crate) fn build_mycel() -> anyhow::Result<PathBuf> {
    eprintln!("building mycel (release)...");
    exec(cargo().args(["build", "--release", "--package", "mycel", "--bin", "mycel"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| project_root().join("target"), PathBuf::from);
    Ok(target.join("release").join("mycel"))
}

/// The nodes share this machine's cores: each gets its share as runtime workers (at
/// least one), and half as many connection threads (none for a node of one thread,
/// whose runtime serves its connections too), rather than every node running a thread
/// per core and the nodes' threads preempting each other.
fn threads_per_node(count: u16) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    (cores / usize::from(count.max(1))).max(1)
}

/// Starts `count` nodes; node 1 is the seed of the others.
pub(crate) fn start(binary: &PathBuf, count: u16, replicas: u8) -> anyhow::Result<Cluster> {
    std::fs::create_dir_all(log_dir())?;
    let mut cluster = Cluster::default();
    let mut seed = None;
    let threads = threads_per_node(count);
    for i in 1..=count {
        let id = format!("node-{i}");
        let (gossip, quic, resp, admin) = (free_udp()?, free_udp()?, free_tcp()?, free_tcp()?);
        let log = log_dir().join(format!("{id}.log"));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(binary);
        cmd.args(["--dev", "--node-id", &id])
            .args(["--gossip", &gossip.to_string(), "--quic", &quic.to_string()])
            .args(["--resp", &resp.to_string(), "--admin", &admin.to_string()])
            .args(["--replicas", &replicas.to_string()])
            .args(["--threads", &threads.to_string()])
            .args(["--resp-threads", &(threads / 2).to_string()]);
        if let Some(seed) = seed {
            cmd.args(["--seed", &SocketAddr::to_string(&seed)]);
        }
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        seed.get_or_insert(gossip);
        cluster.nodes.push(NodeProc {
            id,
            gossip,
            quic,
            resp,
            admin,
            log,
            child,
        });
    }
    Ok(cluster)
}

/// Waits until every node's `/members` lists every node as alive.
pub(crate) fn wait_formed(
    cluster: &mut Cluster,
    timeout: Duration,
    interrupted: &AtomicBool,
) -> anyhow::Result<()> {
    let want = cluster.nodes.len();
    let bar = ProgressBar::new(u64::try_from(want * want).unwrap_or(u64::MAX));
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} forming the cluster [{bar:30}] {pos}/{len} views {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(n) = exited(cluster) {
            bar.abandon();
            bail!(
                "{} exited during start-up; its log:\n{}",
                n.id,
                tail(&n.log)
            );
        }
        let seen: usize = cluster
            .nodes
            .iter()
            .map(|n| alive_members(n.admin).unwrap_or(0).min(want))
            .sum();
        bar.set_position(seen as u64);
        if seen == want * want {
            bar.finish_with_message("formed");
            return Ok(());
        }
        if interrupted.load(Ordering::SeqCst) {
            bar.abandon();
            bail!("interrupted");
        }
        if Instant::now() > deadline {
            bar.abandon();
            bail!(
                "the cluster did not form within {}s; logs in {}",
                timeout.as_secs(),
                log_dir().display()
            );
        }
        bar.tick();
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn exited(cluster: &mut Cluster) -> Option<&NodeProc> {
    let idx = cluster
        .nodes
        .iter_mut()
        .position(|n| matches!(n.child.try_wait(), Ok(Some(_))))?;
    cluster.nodes.get(idx)
}

/// Number of `"state":"alive"` entries in the node's `/members`.
pub(crate) fn alive_members(admin: SocketAddr) -> anyhow::Result<usize> {
    let body = http_get(admin, "/members")?;
    Ok(body.matches("\"alive\"").count())
}

/// A minimal HTTP/1.0 GET on loopback; returns the body of a 2xx answer.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header")?;
    if !head
        .split(' ')
        .nth(1)
        .is_some_and(|code| code.starts_with('2'))
    {
        bail!("{path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_owned())
}

fn print_table(cluster: &Cluster) {
    println!(
        "\n{:<10} {:<18} {:<18} {:<18} {:<18}",
        "node", "resp", "admin", "gossip", "quic"
    );
    for n in &cluster.nodes {
        let [resp, admin, gossip, quic] =
            [n.resp, n.admin, n.gossip, n.quic].map(|a| a.to_string());
        println!(
            "{:<10} {resp:<18} {admin:<18} {gossip:<18} {quic:<18}",
            n.id
        );
    }
    if let Some(first) = cluster.nodes.first() {
        println!(
            "\ntry it:  redis-cli -p {} set hello world",
            first.resp.port()
        );
        println!(
            "         redis-cli -p {} get hello",
            cluster
                .nodes
                .last()
                .map_or(first.resp.port(), |n| n.resp.port())
        );
        println!("         curl http://{}/members", first.admin);
    }
}

/// Asks every node to leave (SIGTERM) and waits for them; kills stragglers after 15 s.
pub(crate) fn stop(cluster: &mut Cluster) {
    eprintln!(
        "stopping {} nodes, one at a time (each hands its partitions off)...",
        cluster.nodes.len()
    );
    // Newest first: the oldest node stays the routing authority until it is alone.
    for n in cluster.nodes.iter_mut().rev() {
        if matches!(n.child.try_wait(), Ok(Some(_))) {
            continue;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &n.child.id().to_string()])
            .status();
        // A node's leave is bounded by its own timeout (20 s); this is a guard above it.
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            match n.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => break None,
            }
        };
        match status {
            Some(s) if s.success() => eprintln!("  {} left", n.id),
            Some(s) => eprintln!("  {} exited with {s}; see {}", n.id, n.log.display()),
            None => {
                eprintln!("  {} did not stop in time; killing it", n.id);
                let _ = n.child.kill();
                let _ = n.child.wait();
            }
        }
    }
}

fn tail(path: &PathBuf) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
