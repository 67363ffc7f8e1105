//! `cargo xtask faults`: a Mycel cluster in network namespaces, a client load that records
//! every operation, a fault, and a verdict from the single-key linearizability checker.
//!
//! The command (as root) builds `mycel` and the `fault_load` example, creates one network
//! namespace per node plus a "switch" namespace holding a bridge (see [`net`]), and runs
//! itself again inside the switch namespace (a hidden `--in-switch` flag) to orchestrate:
//! start the nodes, start the load, inject the fault, measure, heal, verify ([`inner`]).
//! When that returns (or fails, or Ctrl-C arrives) the namespaces are deleted, and with
//! them everything that ran inside.

mod inner;
mod json;
mod net;
mod resp;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::util::{cargo, exec, on_path, project_root};

const ABOUT: &str = "\
Every scenario starts a cluster of 3 to 5 `mycel` nodes, one per network namespace (10.77.0.K),
joined by a bridge in a switch namespace (10.77.0.254) where the client load runs: --clients
threads doing SET/GET on --keys keys through every node, each write with a unique value,
every operation recorded with its times and outcome. After a warm-up the fault is injected
and measured, then healed; the load then reads every key through every node and checks
each key's history with mycel's linearizability checker.

Scenarios:
  kill             SIGKILL one node (--victim, default the last), wait until the others
                   declare it failed and serve every key, restart it, wait until it is back
  partition        cut one node's link at the switch (ip link down; its clients lose it
                   too), then restore it
  split            iptables DROP between a majority and a minority (5 nodes: 3 | 2, with
                   3 replicas by default so that every partition keeps a copy), then heal;
                   the clients still reach both sides, so what the minority answers is
                   checked too (it must refuse writes; its reads may be stale, see below)
  rolling-restart  SIGTERM every node in turn (it hands its partitions off and leaves),
                   restart it, wait until the cluster is formed again
  lossy            drop --loss % (1 by default, at most 20) of the packets every node (or
                   --lossy-nodes K) receives, at random (iptables -m statistic), for
                   --lossy-secs; at 1 % or less no healthy node may be declared failed
  clock            node 1 runs with its monotonic and boot clocks offset by --clock-offset
                   seconds (a time namespace) and its wall clock too when `faketime` is
                   installed (--clock-kind picks); then the kill scenario runs: versions,
                   not clocks, order writes, so nothing may be lost
  all              every scenario above, one after the other

The summary table per scenario:
  acked     writes the cluster acknowledged
  lost      acknowledged writes the final state does not explain (must be 0 when fewer
            nodes fail than there are replicas; the run fails otherwise)
  stale     reads that missed a write acknowledged before they began (a stale read, or
            a write lost at the node that served the read; any fails the history check)
  errors    operations that got an error or no answer (refusals, timeouts, resets)
  detect    fault -> every surviving node sees the failure (kill: failed; rolling: left)
  served    fault -> the surviving nodes serve every key again (a GET of every load key
            and a SET of a probe key per load key, through every surviving node)
  healed    restart or heal -> every node sees every other alive, all have installed the
            same routing table over every node with no partition moving, and every node
            serves every key (the cluster counts as formed by the same rule at start)
A run also fails when a key cannot be read after healing, or when any key's history is
not linearizable, except by stale reads in partition and split: Mycel checks no quorum for
reads, so a primary cut off from the majority serves reads from its copy until it learns
of the next routing table. Those two scenarios report such histories and fail only on
lost writes or on reads no order can explain otherwise (a value nobody wrote, or read
before it was written).

Needs root, `ip` (iproute2) and, for split and lossy, `iptables`. Nothing is configured
outside the namespaces it creates (named mfx-*; ones left by an interrupted run are
removed at start). Node and load logs (target/xtask-faults/run-PID/) are kept, and their
paths printed, when a run fails or with --keep-logs. The binaries under test are pinned
(hard-linked) at start, so a concurrent build cannot swap them during a run.";

/// Options of `cargo xtask faults`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = ABOUT)]
pub(crate) struct Args {
    /// The fault to inject (`--help` describes each).
    #[arg(value_enum, default_value_t = Scenario::Kill)]
    pub(crate) scenario: Scenario,
    /// Number of nodes, 3 to 5 [default: 5 for split, 3 otherwise].
    #[arg(long, value_parser = clap::value_parser!(u8).range(3..=5))]
    pub(crate) nodes: Option<u8>,
    /// Copies of each partition [default: 3 for split with 5 nodes, 2 otherwise].
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub(crate) replicas: Option<u8>,
    /// The node to kill, cut off or (clock) restart, 1-based [default: the last].
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub(crate) victim: Option<u8>,
    /// Seconds of load before the fault.
    #[arg(long, default_value_t = 3)]
    pub(crate) warmup: u64,
    /// Seconds the fault lasts after it has been detected and worked around.
    #[arg(long, default_value_t = 3)]
    pub(crate) hold: u64,
    /// Seconds of load after healing, before the final check.
    #[arg(long, default_value_t = 2)]
    pub(crate) cooldown: u64,
    /// lossy: percentage of received packets dropped (above 0, at most 20).
    #[arg(long, default_value_t = 1.0, value_parser = parse_loss)]
    pub(crate) loss: f64,
    /// lossy: `all` nodes or one node number.
    #[arg(long, default_value = "all", value_parser = parse_target)]
    pub(crate) lossy_nodes: LossTarget,
    /// lossy: seconds under loss.
    #[arg(long, default_value_t = 20)]
    pub(crate) lossy_secs: u64,
    /// clock: offset of node 1's clocks, in seconds.
    #[arg(long, default_value_t = 86_400)]
    pub(crate) clock_offset: u64,
    /// clock: which of node 1's clocks to offset (the wall clock needs `faketime`).
    #[arg(long, value_enum, default_value_t = ClockKind::Both)]
    pub(crate) clock_kind: ClockKind,
    /// Client threads of the load.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub(crate) clients: u16,
    /// Distinct keys of the load.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) keys: u32,
    /// Operations per second of the load, all clients together.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) rate: u32,
    /// Seconds any single wait (forming, detection, recovery) may take before the run fails.
    #[arg(long, default_value_t = 60)]
    pub(crate) timeout: u64,
    /// Build and run `mycel` in release mode (default: the debug build the tests use).
    #[arg(long)]
    pub(crate) release: bool,
    /// Use the `mycel` and `fault_load` binaries already built in target/ (no cargo build).
    #[arg(long)]
    pub(crate) no_build: bool,
    /// Keep the node and load logs even when every scenario passes.
    #[arg(long)]
    pub(crate) keep_logs: bool,
    /// Internal: orchestrate inside the switch namespace, writing to this directory.
    #[arg(long, hide = true, value_name = "DIR")]
    pub(crate) in_switch: Option<PathBuf>,
    /// Internal: the `mycel` binary.
    #[arg(long, hide = true, value_name = "FILE")]
    pub(crate) mycel: Option<PathBuf>,
    /// Internal: the `fault_load` binary.
    #[arg(long, hide = true, value_name = "FILE")]
    pub(crate) loader: Option<PathBuf>,
}

/// A fault scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Scenario {
    Kill,
    Partition,
    Split,
    RollingRestart,
    Lossy,
    Clock,
    All,
}

impl Scenario {
    const EACH: [Self; 6] = [
        Self::Kill,
        Self::Partition,
        Self::Split,
        Self::RollingRestart,
        Self::Lossy,
        Self::Clock,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Partition => "partition",
            Self::Split => "split",
            Self::RollingRestart => "rolling-restart",
            Self::Lossy => "lossy",
            Self::Clock => "clock",
            Self::All => "all",
        }
    }

    fn expand(self) -> Vec<Self> {
        if self == Self::All {
            Self::EACH.to_vec()
        } else {
            vec![self]
        }
    }
}

/// Which clocks the clock scenario offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ClockKind {
    /// Monotonic and boot clocks (a time namespace), and the wall clock if `faketime` is
    /// installed.
    Both,
    /// Monotonic and boot clocks only.
    Monotonic,
    /// The wall clock only (`faketime`).
    Wall,
}

impl ClockKind {
    fn name(self) -> &'static str {
        match self {
            Self::Both => "both",
            Self::Monotonic => "monotonic",
            Self::Wall => "wall",
        }
    }
}

/// Which nodes get a lossy link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LossTarget {
    All,
    Node(u8),
}

fn parse_loss(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if v > 0.0 && v <= 20.0 {
        Ok(v)
    } else {
        Err(format!("{v} is not above 0 and at most 20 (percent)"))
    }
}

fn parse_target(s: &str) -> Result<LossTarget, String> {
    if s == "all" {
        return Ok(LossTarget::All);
    }
    match s.parse::<u8>() {
        Ok(k @ 1..=5) => Ok(LossTarget::Node(k)),
        _ => Err(format!(
            "{s:?}: expected `all` or a node number from 1 to 5"
        )),
    }
}

/// One scenario's settings, defaults resolved and checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    pub(crate) scenario: Scenario,
    pub(crate) nodes: u8,
    pub(crate) replicas: u8,
    pub(crate) victim: u8,
    /// split: the nodes cut off from the rest (the last ones).
    pub(crate) minority: Vec<u8>,
    /// lossy: the nodes whose received packets are dropped at random.
    pub(crate) lossy: Vec<u8>,
    /// clock: the node with offset clocks.
    pub(crate) skewed: Option<u8>,
    /// Nodes that fail at once.
    pub(crate) failures: u8,
}

impl Plan {
    pub(crate) fn new(args: &Args, scenario: Scenario) -> anyhow::Result<Self> {
        let nodes = args
            .nodes
            .unwrap_or(if scenario == Scenario::Split { 5 } else { 3 });
        let replicas = args
            .replicas
            .unwrap_or(if scenario == Scenario::Split && nodes >= 5 {
                3
            } else {
                2
            });
        if replicas > nodes {
            bail!("--replicas {replicas} is more than --nodes {nodes}");
        }
        let victim = args.victim.unwrap_or(nodes);
        if victim > nodes {
            bail!("--victim {victim} is not one of the {nodes} nodes");
        }
        let skewed = (scenario == Scenario::Clock).then_some(1);
        if skewed == Some(victim) {
            bail!("clock: node 1 has the offset clock; pick another --victim");
        }
        let minority: Vec<u8> = if scenario == Scenario::Split {
            let m = (nodes - 1) / 2;
            (nodes - m + 1..=nodes).collect()
        } else {
            Vec::new()
        };
        let lossy = match (scenario, args.lossy_nodes) {
            (Scenario::Lossy, LossTarget::All) => (1..=nodes).collect(),
            (Scenario::Lossy, LossTarget::Node(k)) if k <= nodes => vec![k],
            (Scenario::Lossy, LossTarget::Node(k)) => {
                bail!("--lossy-nodes {k} is not one of the {nodes} nodes")
            }
            _ => Vec::new(),
        };
        let failures = match scenario {
            Scenario::Split => u8::try_from(minority.len()).unwrap_or(u8::MAX),
            Scenario::Lossy => 0,
            _ => 1,
        };
        Ok(Self {
            scenario,
            nodes,
            replicas,
            victim,
            minority,
            lossy,
            skewed,
            failures,
        })
    }

    /// Whether every read must be linearizable. Mycel does not check a quorum for reads: a
    /// primary cut off from the majority answers reads from its copy until it learns of the
    /// next routing table (it refuses writes as soon as it sees the majority gone), so in a
    /// partition, and just after it heals, a read may miss the newest writes. Those
    /// scenarios report such stale reads; every other scenario fails on them.
    pub(crate) fn reads_must_be_linearizable(&self) -> bool {
        !matches!(self.scenario, Scenario::Partition | Scenario::Split)
    }

    /// Whether acknowledged writes must all survive: fewer nodes fail than hold a copy.
    pub(crate) fn must_keep_every_write(&self) -> bool {
        self.failures < self.replicas
    }
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    if let Some(dir) = &args.in_switch {
        return inner::run(args, dir);
    }
    let plans: Vec<Plan> = args
        .scenario
        .expand()
        .into_iter()
        .map(|s| Plan::new(args, s))
        .collect::<anyhow::Result<_>>()?;
    preflight(args, &plans)?;

    let run_dir = target_dir()
        .join("xtask-faults")
        .join(format!("run-{}", std::process::id()));
    let bin_dir = run_dir.join("bin");
    std::fs::create_dir_all(&bin_dir).with_context(|| format!("creating {}", bin_dir.display()))?;
    // Pin this executable and the binaries under test: another build may replace the
    // originals in target/ while the scenarios run (restarts must run the same code).
    let exe = pin(
        &std::env::current_exe().context("locating the xtask binary")?,
        &bin_dir,
    )?;
    let (mycel, loader) = build(args.release, args.no_build)?;
    let (mycel, loader) = (pin(&mycel, &bin_dir)?, pin(&loader, &bin_dir)?);
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    // The orchestrator inside the switch namespace shares this process group, so Ctrl-C
    // reaches it too: it stops the nodes, then this process removes the namespaces.
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;
    net::remove_stale()?;

    let mut rows = Vec::new();
    for plan in &plans {
        if interrupted.load(Ordering::SeqCst) {
            break;
        }
        let dir = run_dir.join(plan.scenario.name());
        std::fs::create_dir_all(&dir)?;
        eprintln!(
            "\n== {}: {} nodes, {} replicas ==",
            plan.scenario.name(),
            plan.nodes,
            plan.replicas
        );
        let outcome = run_one(args, plan, &dir, [&exe, &mycel, &loader], &interrupted);
        let row = match std::fs::read_to_string(dir.join(SUMMARY_FILE)) {
            Ok(text) => Summary::from_text(&text),
            Err(_) => Summary::failed(plan, "no summary: the orchestrator failed"),
        };
        let row = match outcome {
            Err(e) if row.passed() => Summary::failed(plan, &format!("{e:#}")),
            Err(e) => {
                eprintln!("{}: {e:#}", plan.scenario.name());
                row
            }
            Ok(()) => row,
        };
        rows.push(row);
    }
    println!("\n{}", table(&rows));
    let _ = std::fs::remove_dir_all(&bin_dir);
    let failed: Vec<&Summary> = rows.iter().filter(|r| !r.passed()).collect();
    let interrupted = interrupted.load(Ordering::SeqCst);
    if failed.is_empty() && !interrupted && !args.keep_logs {
        let _ = std::fs::remove_dir_all(&run_dir);
    } else {
        println!("logs (nodes, load): {}", run_dir.display());
        for dir in std::fs::read_dir(&run_dir).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if f.path().extension().is_some_and(|e| e == "log") {
                    println!("  {}", f.path().display());
                }
            }
        }
    }
    if interrupted {
        bail!("interrupted");
    }
    if !failed.is_empty() {
        let names: Vec<&str> = failed.iter().map(|r| r.scenario.as_str()).collect();
        bail!("failed: {}", names.join(", "));
    }
    if rows.len() < plans.len() {
        bail!("not every scenario ran");
    }
    Ok(())
}

/// Creates the network for one scenario, runs the orchestrator inside it, removes it.
fn run_one(
    args: &Args,
    plan: &Plan,
    dir: &Path,
    [exe, mycel, loader]: [&Path; 3],
    interrupted: &AtomicBool,
) -> anyhow::Result<()> {
    let topology = net::Topology::create(plan.nodes)?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", net::SWITCH])
        .arg(exe)
        .args(inner_args(args, plan, dir, mycel, loader))
        .stdin(Stdio::null())
        .spawn()
        .context("starting the orchestrator in the switch namespace")?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if interrupted.load(Ordering::SeqCst) {
            // It received the Ctrl-C too; give it time to stop its nodes.
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while std::time::Instant::now() < deadline {
                if child.try_wait()?.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(topology);
    match status {
        None => bail!("interrupted"),
        Some(s) if s.success() => Ok(()),
        Some(s) => bail!("the orchestrator exited with {s}"),
    }
}

/// The orchestrator's command line (after the program name).
fn inner_args(args: &Args, plan: &Plan, dir: &Path, mycel: &Path, loader: &Path) -> Vec<String> {
    let target = match args.lossy_nodes {
        LossTarget::All => "all".to_owned(),
        LossTarget::Node(k) => k.to_string(),
    };
    let mut out: Vec<String> = [
        "faults",
        plan.scenario.name(),
        "--nodes",
        &plan.nodes.to_string(),
        "--replicas",
        &plan.replicas.to_string(),
        "--victim",
        &plan.victim.to_string(),
        "--warmup",
        &args.warmup.to_string(),
        "--hold",
        &args.hold.to_string(),
        "--cooldown",
        &args.cooldown.to_string(),
        "--loss",
        &args.loss.to_string(),
        "--lossy-nodes",
        &target,
        "--lossy-secs",
        &args.lossy_secs.to_string(),
        "--clock-offset",
        &args.clock_offset.to_string(),
        "--clock-kind",
        args.clock_kind.name(),
        "--clients",
        &args.clients.to_string(),
        "--keys",
        &args.keys.to_string(),
        "--rate",
        &args.rate.to_string(),
        "--timeout",
        &args.timeout.to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for (flag, path) in [
        ("--in-switch", dir),
        ("--mycel", mycel),
        ("--loader", loader),
    ] {
        out.push(flag.to_owned());
        out.push(path.display().to_string());
    }
    out
}

/// The effective user ID from `/proc/self/status` text.
fn effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse().ok())
}

fn preflight(args: &Args, plans: &[Plan]) -> anyhow::Result<()> {
    if !cfg!(target_os = "linux") {
        bail!("`cargo xtask faults` needs Linux (network namespaces)");
    }
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc")?;
    if effective_uid(&status) != Some(0) {
        bail!(
            "`cargo xtask faults` needs root: it creates network namespaces, veth pairs, a \
             bridge and iptables rules. Run it as root (e.g. `sudo -E cargo xtask faults`)."
        );
    }
    if !on_path("ip") {
        bail!("`ip` (iproute2) is not installed: apt-get install iproute2");
    }
    let needs_iptables = plans
        .iter()
        .any(|p| matches!(p.scenario, Scenario::Split | Scenario::Lossy));
    if needs_iptables && !on_path("iptables") {
        bail!("split and lossy need `iptables`: apt-get install iptables");
    }
    if plans.iter().any(|p| p.scenario == Scenario::Clock) {
        if !on_path("unshare") {
            bail!("clock needs `unshare` (util-linux) for a time namespace");
        }
        if args.clock_kind == ClockKind::Wall && !on_path("faketime") {
            bail!("--clock-kind wall needs `faketime`: apt-get install faketime");
        }
    }
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| project_root().join("target"), PathBuf::from)
}

/// A private link (or copy) of the binary `src` in `dir`.
fn pin(src: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let dst = dir.join(src.file_name().context("a binary has a file name")?);
    if std::fs::hard_link(src, &dst).is_err() {
        std::fs::copy(src, &dst)
            .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    }
    Ok(dst)
}

/// Builds `mycel` and the load example (unless `no_build`); returns their paths.
fn build(release: bool, no_build: bool) -> anyhow::Result<(PathBuf, PathBuf)> {
    if !no_build {
        let mut cmd = cargo();
        cmd.args(["build", "--package", "mycel", "--bin", "mycel"])
            .args(["--example", "fault_load"]);
        if release {
            cmd.arg("--release");
        }
        exec(&mut cmd)?;
    }
    let profile = target_dir().join(if release { "release" } else { "debug" });
    let bins = (
        profile.join("mycel"),
        profile.join("examples").join("fault_load"),
    );
    for b in [&bins.0, &bins.1] {
        if !b.is_file() {
            bail!("{} is missing: run without --no-build", b.display());
        }
    }
    Ok(bins)
}

/// Where the orchestrator leaves its summary for the outer process.
pub(crate) const SUMMARY_FILE: &str = "summary.txt";

/// One scenario's outcome: the row of the summary table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) scenario: String,
    pub(crate) nodes: u8,
    pub(crate) replicas: u8,
    pub(crate) acked: u64,
    pub(crate) lost_writes: u64,
    pub(crate) stale_reads: u64,
    pub(crate) lost_keys: u64,
    pub(crate) errors: u64,
    pub(crate) detect_ms: Option<u64>,
    pub(crate) served_ms: Option<u64>,
    pub(crate) healed_ms: Option<u64>,
    /// Error counts by kind, `kind: n` joined by `, `.
    pub(crate) error_kinds: String,
    /// Other facts worth a line (linearizability, false failures, ...).
    pub(crate) notes: Vec<String>,
    /// Why the scenario failed; empty when it passed.
    pub(crate) failures: Vec<String>,
}

impl Summary {
    fn failed(plan: &Plan, why: &str) -> Self {
        Self {
            scenario: plan.scenario.name().to_owned(),
            nodes: plan.nodes,
            replicas: plan.replicas,
            failures: vec![why.to_owned()],
            ..Self::default()
        }
    }

    pub(crate) fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// `key=value` lines (repeated keys for lists).
    pub(crate) fn to_text(&self) -> String {
        let ms = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        let mut s = String::new();
        let _ = writeln!(s, "scenario={}", self.scenario);
        let _ = writeln!(s, "nodes={}", self.nodes);
        let _ = writeln!(s, "replicas={}", self.replicas);
        let _ = writeln!(s, "acked={}", self.acked);
        let _ = writeln!(s, "lost_writes={}", self.lost_writes);
        let _ = writeln!(s, "stale_reads={}", self.stale_reads);
        let _ = writeln!(s, "lost_keys={}", self.lost_keys);
        let _ = writeln!(s, "errors={}", self.errors);
        let _ = writeln!(s, "detect_ms={}", ms(self.detect_ms));
        let _ = writeln!(s, "served_ms={}", ms(self.served_ms));
        let _ = writeln!(s, "healed_ms={}", ms(self.healed_ms));
        let _ = writeln!(s, "error_kinds={}", self.error_kinds);
        for n in &self.notes {
            let _ = writeln!(s, "note={}", n.replace('\n', " "));
        }
        for f in &self.failures {
            let _ = writeln!(s, "failure={}", f.replace('\n', " "));
        }
        s
    }

    pub(crate) fn from_text(text: &str) -> Self {
        let mut s = Self::default();
        let num = |v: &str| v.parse::<u64>().unwrap_or(0);
        let small = |v: &str| v.parse::<u8>().unwrap_or(0);
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                "scenario" => s.scenario = v.to_owned(),
                "nodes" => s.nodes = small(v),
                "replicas" => s.replicas = small(v),
                "acked" => s.acked = num(v),
                "lost_writes" => s.lost_writes = num(v),
                "stale_reads" => s.stale_reads = num(v),
                "lost_keys" => s.lost_keys = num(v),
                "errors" => s.errors = num(v),
                "detect_ms" => s.detect_ms = v.parse().ok(),
                "served_ms" => s.served_ms = v.parse().ok(),
                "healed_ms" => s.healed_ms = v.parse().ok(),
                "error_kinds" => s.error_kinds = v.to_owned(),
                "note" => s.notes.push(v.to_owned()),
                "failure" => s.failures.push(v.to_owned()),
                _ => {}
            }
        }
        if s.scenario.is_empty() {
            s.failures.push("unreadable summary".to_owned());
        }
        s
    }
}

fn secs(ms: Option<u64>) -> String {
    ms.map_or_else(
        || "-".to_owned(),
        #[allow(
            clippy::cast_precision_loss,
            reason = "display of a duration in seconds"
        )]
        |ms| format!("{:.2}s", ms as f64 / 1000.0),
    )
}

/// The summary table, with each scenario's error breakdown, notes and failures below it.
pub(crate) fn table(rows: &[Summary]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<16} {:>5} {:>7} {:>5} {:>6} {:>7} {:>7} {:>7} {:>7}  result",
        "scenario", "N/RF", "acked", "lost", "stale", "errors", "detect", "served", "healed"
    );
    for r in rows {
        let result = if r.passed() { "ok" } else { "FAILED" };
        let _ = writeln!(
            s,
            "{:<16} {:>5} {:>7} {:>5} {:>6} {:>7} {:>7} {:>7} {:>7}  {result}",
            r.scenario,
            format!("{}/{}", r.nodes, r.replicas),
            r.acked,
            r.lost_writes,
            r.stale_reads,
            r.errors,
            secs(r.detect_ms),
            secs(r.served_ms),
            secs(r.healed_ms),
        );
    }
    for r in rows {
        if !r.error_kinds.is_empty() {
            let _ = writeln!(s, "  {} errors: {}", r.scenario, r.error_kinds);
        }
        for n in &r.notes {
            let _ = writeln!(s, "  {}: {n}", r.scenario);
        }
        for f in &r.failures {
            let _ = writeln!(s, "  {} FAILED: {f}", r.scenario);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Cmd {
        Faults(Args),
    }

    fn parse(words: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(["xtask", "faults"].iter().chain(words)).map(|c| match c.cmd {
            Cmd::Faults(a) => a,
        })
    }

    #[test]
    fn defaults_per_scenario() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.scenario, Scenario::Kill);
        let p = Plan::new(&a, Scenario::Kill).unwrap();
        assert_eq!((p.nodes, p.replicas, p.victim, p.failures), (3, 2, 3, 1));
        assert!(p.must_keep_every_write());
        let p = Plan::new(&a, Scenario::Split).unwrap();
        assert_eq!((p.nodes, p.replicas), (5, 3));
        assert_eq!(p.minority, [4, 5]);
        assert!(p.must_keep_every_write());
        let a = parse(&["split", "--nodes", "3"]).unwrap();
        let p = Plan::new(&a, a.scenario).unwrap();
        assert_eq!((p.replicas, p.minority.clone()), (2, vec![3]));
        let a = parse(&["split", "--nodes", "5", "--replicas", "2"]).unwrap();
        let p = Plan::new(&a, a.scenario).unwrap();
        assert!(!p.must_keep_every_write(), "two failures, two copies");
        let a = parse(&["lossy"]).unwrap();
        let p = Plan::new(&a, a.scenario).unwrap();
        assert_eq!((p.lossy.clone(), p.failures), (vec![1, 2, 3], 0));
        let a = parse(&["lossy", "--lossy-nodes", "2", "--loss", "20"]).unwrap();
        let p = Plan::new(&a, a.scenario).unwrap();
        assert_eq!(p.lossy, [2]);
        let p = Plan::new(&parse(&["clock"]).unwrap(), Scenario::Clock).unwrap();
        assert_eq!((p.skewed, p.victim), (Some(1), 3));
        assert_eq!(Scenario::All.expand().len(), 6);
        assert_eq!(
            parse(&["rolling-restart"]).unwrap().scenario,
            Scenario::RollingRestart
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        for bad in [
            &["--nodes", "2"][..],
            &["--nodes", "6"],
            &["lossy", "--loss", "0"],
            &["lossy", "--loss", "21"],
            &["lossy", "--lossy-nodes", "none"],
            &["nosuch"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let a = parse(&["--replicas", "4"]).unwrap();
        assert!(Plan::new(&a, Scenario::Kill).is_err());
        let a = parse(&["--victim", "5"]).unwrap();
        assert!(Plan::new(&a, Scenario::Kill).is_err());
        let a = parse(&["clock", "--victim", "1"]).unwrap();
        assert!(Plan::new(&a, Scenario::Clock).is_err());
        let a = parse(&["lossy", "--lossy-nodes", "5"]).unwrap();
        assert!(Plan::new(&a, Scenario::Lossy).is_err());
    }

    #[test]
    fn the_orchestrator_gets_the_same_plan() {
        let a = parse(&[
            "all",
            "--nodes",
            "4",
            "--loss",
            "2.5",
            "--keys",
            "10",
            "--hold",
            "7",
            "--clock-kind",
            "wall",
        ])
        .unwrap();
        for s in Scenario::EACH {
            let plan = Plan::new(&a, s).unwrap();
            let words = inner_args(
                &a,
                &plan,
                Path::new("/tmp/d"),
                Path::new("/m"),
                Path::new("/l"),
            );
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            let b = parse(&words[1..]).unwrap();
            assert_eq!(b.scenario, s);
            assert_eq!(Plan::new(&b, s).unwrap(), plan);
            assert_eq!((b.loss, b.keys, b.hold), (2.5, 10, 7));
            assert_eq!(b.clock_kind, ClockKind::Wall);
            assert_eq!(b.in_switch.as_deref(), Some(Path::new("/tmp/d")));
            assert_eq!(b.loader.as_deref(), Some(Path::new("/l")));
        }
    }

    #[test]
    fn root_is_read_from_proc() {
        let status = "Name:\tx\nUid:\t1000\t0\t1000\t1000\nGid:\t0\n";
        assert_eq!(effective_uid(status), Some(0));
        assert_eq!(effective_uid("Uid:\t0\t1000\t0\t0\n"), Some(1000));
        assert_eq!(effective_uid("Name: x\n"), None);
    }

    #[test]
    fn summaries_round_trip_and_tabulate() {
        let s = Summary {
            scenario: "kill".into(),
            nodes: 3,
            replicas: 2,
            acked: 1234,
            lost_writes: 0,
            stale_reads: 3,
            lost_keys: 0,
            errors: 17,
            detect_ms: Some(1520),
            served_ms: Some(2100),
            healed_ms: None,
            error_kinds: "write connect: 9, read timeout: 8".into(),
            notes: vec!["64/64 keys linearizable".into()],
            failures: vec![],
        };
        assert_eq!(Summary::from_text(&s.to_text()), s);
        let mut bad = s.clone();
        bad.scenario = "split".into();
        bad.failures.push("2 acknowledged writes lost".into());
        assert_eq!(Summary::from_text(&bad.to_text()), bad);
        let t = table(&[s, bad]);
        assert!(t.contains("kill"));
        assert!(t.contains("1.52s"));
        assert!(t.contains("FAILED"));
        assert!(t.contains("split FAILED: 2 acknowledged writes lost"));
        assert!(Summary::from_text("garbage").failures.len() == 1);
    }
}
