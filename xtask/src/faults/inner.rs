//! The orchestrator, running inside the switch namespace: it reaches every node at
//! `10.77.0.K`, starts them (each in its own namespace through `ip netns exec`), runs the
//! load next to itself, injects the scenario's fault, measures, heals, and writes the
//! summary for the outer process.

use std::fs::OpenOptions;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};

use super::json::{self, Fields as _, Value};
use super::net::{self, node_ip, node_ns};
use super::resp;
use super::{Args, ClockKind, Plan, SUMMARY_FILE, Scenario, Summary};
use crate::cluster::http_get;
use crate::util::on_path;

const GOSSIP_PORT: u16 = 6969;
const QUIC_PORT: u16 = 6970;
const RESP_PORT: u16 = 6379;
const ADMIN_PORT: u16 = 9090;

/// Highest loss (percent) at which no healthy node may be declared failed.
const NO_FALSE_FAILURES_UP_TO: f64 = 1.0;

fn addr(k: u8, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(node_ip(k), port))
}

fn node_id(k: u8) -> String {
    format!("node-{k}")
}

pub(crate) fn run(args: &Args, dir: &Path) -> anyhow::Result<()> {
    let plan = Plan::new(args, args.scenario)?;
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;
    let mycel = args.mycel.clone().context("--mycel is required")?;
    let loader = args.loader.clone().context("--loader is required")?;

    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix} [{elapsed}] {msg}")
            .expect("valid template"),
    );
    bar.set_prefix(plan.scenario.name());
    bar.enable_steady_tick(Duration::from_millis(120));

    let mut run = Run {
        nodes: Nodes {
            list: (1..=plan.nodes)
                .map(|k| Node {
                    k,
                    child: None,
                    should_run: false,
                    log: dir.join(format!("node-{k}.log")),
                })
                .collect(),
            mycel,
            data: dir.join("dev-data"),
            replicas: plan.replicas,
            skew: plan.skewed.map(|k| (k, args.clock_offset)),
            clocks: clocks(args.clock_kind),
        },
        load: None,
        plan: plan.clone(),
        args: args.clone(),
        bar,
        interrupted,
        notes: Vec::new(),
    };
    let result = run.scenario(&loader, dir);
    run.bar.finish_and_clear();
    let summary = match result {
        Ok((times, load)) => judge(&plan, args, &times, &load, std::mem::take(&mut run.notes)),
        Err(e) => {
            run.nodes.kill_all();
            let mut s = Summary {
                scenario: plan.scenario.name().to_owned(),
                nodes: plan.nodes,
                replicas: plan.replicas,
                ..Summary::default()
            };
            s.notes = std::mem::take(&mut run.notes);
            s.failures.push(format!("{e:#}"));
            s
        }
    };
    std::fs::write(dir.join(SUMMARY_FILE), summary.to_text())
        .with_context(|| format!("writing {}", dir.display()))?;
    run.nodes.stop_all();
    if summary.passed() {
        Ok(())
    } else {
        bail!("{}", summary.failures.join("; "))
    }
}

/// What the orchestrator measured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Times {
    pub(crate) detect: Option<Duration>,
    pub(crate) served: Option<Duration>,
    pub(crate) healed: Option<Duration>,
    /// lossy: `(observer, subject)` pairs where a healthy node was seen failed.
    pub(crate) false_failures: Vec<(u8, u8)>,
}

/// The load's summary line, as far as the verdict needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LoadSummary {
    pub(crate) acked: u64,
    pub(crate) failed_writes: u64,
    pub(crate) pending_writes: u64,
    pub(crate) reads: u64,
    pub(crate) read_errors: u64,
    pub(crate) errors: Vec<(String, u64)>,
    pub(crate) keys: u64,
    pub(crate) lost_keys: Vec<String>,
    pub(crate) lost_writes: u64,
    pub(crate) stale_reads: u64,
    pub(crate) absent_reads: u64,
    pub(crate) divergent_keys: Vec<String>,
    pub(crate) unreadable_keys: Vec<String>,
    pub(crate) linearizable_keys: u64,
    pub(crate) unknown_keys: u64,
    pub(crate) violations: Vec<String>,
}

impl LoadSummary {
    pub(crate) fn parse(line: &str) -> anyhow::Result<Self> {
        let v = json::parse(line).context("the load's summary is not JSON")?;
        if v.get("type").and_then(Value::as_str) != Some("summary") {
            bail!("not a summary line");
        }
        let strings = |key: &str| -> Vec<String> {
            v.array_or_empty(key)
                .iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        };
        let errors = v
            .get("errors")
            .and_then(Value::as_object)
            .map(|o| {
                o.iter()
                    .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        let violations = v
            .array_or_empty("violations")
            .iter()
            .map(|x| {
                let mut text = format!(
                    "{}: {}",
                    x.get("key").and_then(Value::as_str).unwrap_or("?"),
                    x.get("violation").and_then(Value::as_str).unwrap_or("?")
                );
                if let Some(d) = x.get("detail").and_then(Value::as_str) {
                    text.push_str(": ");
                    text.push_str(d);
                }
                text
            })
            .collect();
        Ok(Self {
            acked: v.u64_or_zero("acked_writes"),
            failed_writes: v.u64_or_zero("failed_writes"),
            pending_writes: v.u64_or_zero("pending_writes"),
            reads: v.u64_or_zero("reads"),
            read_errors: v.u64_or_zero("read_errors"),
            errors,
            keys: v.u64_or_zero("keys"),
            lost_keys: strings("lost_keys"),
            lost_writes: v.u64_or_zero("lost_writes"),
            stale_reads: v.u64_or_zero("stale_reads"),
            absent_reads: v.u64_or_zero("absent_reads"),
            divergent_keys: strings("divergent_keys"),
            unreadable_keys: strings("unreadable_keys"),
            linearizable_keys: v.u64_or_zero("linearizable_keys"),
            unknown_keys: v.u64_or_zero("unknown_keys"),
            violations,
        })
    }
}

fn ms(d: Option<Duration>) -> Option<u64> {
    d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The scenario's row and verdict from what was measured and what the load saw.
pub(crate) fn judge(
    plan: &Plan,
    args: &Args,
    times: &Times,
    load: &LoadSummary,
    mut notes: Vec<String>,
) -> Summary {
    let mut failures = Vec::new();
    if load.lost_writes > 0 || !load.lost_keys.is_empty() {
        let what = format!(
            "{} acknowledged writes lost on {} keys ({})",
            load.lost_writes,
            load.lost_keys.len(),
            load.lost_keys.join(" ")
        );
        if plan.must_keep_every_write() {
            failures.push(what);
        } else {
            notes.push(format!(
                "{what}; allowed: {} nodes failed at once with {} replicas",
                plan.failures, plan.replicas
            ));
        }
    }
    if load.stale_reads > 0 {
        notes.push(format!(
            "{} reads missed a write acknowledged before they began ({} found the key \
             absent): stale reads, or writes lost at the node that served them",
            load.stale_reads, load.absent_reads
        ));
    }
    if !load.divergent_keys.is_empty() {
        notes.push(format!(
            "nodes disagreed on the final value of {}",
            load.divergent_keys.join(" ")
        ));
    }
    if !load.unreadable_keys.is_empty() {
        failures.push(format!(
            "keys not readable through every node after healing: {}",
            load.unreadable_keys.join(" ")
        ));
    }
    if !load.violations.is_empty() {
        // A stale read shows as `NoLinearization`; the other violations name a read no
        // order of any writes explains.
        let tolerated = !plan.reads_must_be_linearizable()
            && load.stale_reads > 0
            && load
                .violations
                .iter()
                .all(|v| v.contains("NoLinearization"));
        let what = format!(
            "{} keys not linearizable, e.g. {}",
            load.violations.len(),
            load.violations[0]
        );
        if tolerated {
            notes.push(format!(
                "{what}; allowed here: reads on the cut-off side are not quorum-checked"
            ));
        } else {
            failures.push(what);
        }
    }
    if load.acked == 0 {
        failures.push("the load got no write acknowledged".to_owned());
    }
    notes.push(format!(
        "{}/{} keys linearizable ({} undecided within the search budget); {} reads",
        load.linearizable_keys, load.keys, load.unknown_keys, load.reads
    ));
    if plan.scenario == Scenario::Lossy {
        let pairs: Vec<String> = times
            .false_failures
            .iter()
            .map(|(o, s)| format!("node-{o} saw node-{s} failed"))
            .collect();
        let what = if pairs.is_empty() {
            format!("{} % loss: no healthy node declared failed", args.loss)
        } else {
            format!("{} % loss: {}", args.loss, pairs.join(", "))
        };
        if !pairs.is_empty() && args.loss <= NO_FALSE_FAILURES_UP_TO {
            failures.push(what);
        } else {
            notes.push(what);
        }
    }
    let error_kinds = load
        .errors
        .iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    Summary {
        scenario: plan.scenario.name().to_owned(),
        nodes: plan.nodes,
        replicas: plan.replicas,
        acked: load.acked,
        lost_writes: load.lost_writes,
        stale_reads: load.stale_reads,
        lost_keys: u64::try_from(load.lost_keys.len()).unwrap_or(u64::MAX),
        errors: load.failed_writes + load.pending_writes + load.read_errors,
        detect_ms: ms(times.detect),
        served_ms: ms(times.served),
        healed_ms: ms(times.healed),
        error_kinds,
        notes,
        failures,
    }
}

/// The sum of every sample of metric `name` (any labels) in an OpenMetrics text.
pub(crate) fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Whether a node's `/partitions` shows a settled table over exactly `group`: ready, no
/// partition moving, and the table's members are the group's nodes.
pub(crate) fn settled(partitions: &Value, group: &[u8]) -> bool {
    let mut members: Vec<&str> = partitions
        .array_or_empty("table_members")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    members.sort_unstable();
    let mut want: Vec<String> = group.iter().map(|&k| node_id(k)).collect();
    want.sort_unstable();
    partitions.get("ready") == Some(&Value::Bool(true))
        && partitions.u64_or_zero("moving") == 0
        && partitions.u64_or_zero("epoch") > 0
        && members == want
}

/// Which clocks of the skewed node to offset: (monotonic and boot, wall). The wall clock
/// needs `faketime`; without it only the monotonic clocks move.
fn clocks(kind: ClockKind) -> (bool, bool) {
    let faketime = on_path("faketime");
    match kind {
        ClockKind::Both => (true, faketime),
        ClockKind::Monotonic => (true, false),
        ClockKind::Wall => (false, faketime),
    }
}

/// One node process slot.
#[derive(Debug)]
struct Node {
    k: u8,
    child: Option<Child>,
    /// Whether it is meant to be running (an exit is then a failure).
    should_run: bool,
    log: PathBuf,
}

/// The nodes; dropping kills whatever still runs.
#[derive(Debug)]
struct Nodes {
    list: Vec<Node>,
    mycel: PathBuf,
    /// `XDG_DATA_HOME` of the nodes: a development CA of this run only.
    data: PathBuf,
    replicas: u8,
    /// The node whose clocks are offset, and by how many seconds.
    skew: Option<(u8, u64)>,
    /// Which of its clocks: (monotonic and boot, wall).
    clocks: (bool, bool),
}

/// The command line that starts node `k` (after `ip netns exec <ns>`), joining `seeds`.
fn node_command(
    mycel: &Path,
    k: u8,
    replicas: u8,
    seeds: &[u8],
    skew: Option<u64>,
    (monotonic, wall): (bool, bool),
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(offset) = skew {
        let o = offset.to_string();
        if monotonic {
            out.extend(
                ["unshare", "--time", "--monotonic", &o, "--boottime", &o].map(str::to_owned),
            );
        }
        if wall {
            out.extend([
                "faketime".to_owned(),
                "-f".to_owned(),
                format!("+{offset}s"),
            ]);
        }
    }
    out.push(mycel.display().to_string());
    out.extend(["--dev", "--node-id"].map(str::to_owned));
    out.push(node_id(k));
    for (flag, port) in [
        ("--gossip", GOSSIP_PORT),
        ("--quic", QUIC_PORT),
        ("--resp", RESP_PORT),
        ("--admin", ADMIN_PORT),
    ] {
        out.push(flag.to_owned());
        out.push(addr(k, port).to_string());
    }
    out.push("--replicas".to_owned());
    out.push(replicas.to_string());
    for &s in seeds {
        out.push("--seed".to_owned());
        out.push(addr(s, GOSSIP_PORT).to_string());
    }
    out
}

/// Sends `signal` to the process group `pgid` (each node leads its own group).
fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

impl Nodes {
    fn node(&mut self, k: u8) -> &mut Node {
        &mut self.list[usize::from(k - 1)]
    }

    /// Starts node `k`; for the node with offset clocks, returns its time namespace's
    /// offsets as the kernel reports them.
    fn start(&mut self, k: u8, seeds: &[u8]) -> anyhow::Result<Option<String>> {
        let skew = self.skew.and_then(|(s, o)| (s == k).then_some(o));
        let words = node_command(&self.mycel, k, self.replicas, seeds, skew, self.clocks);
        let data = self.data.clone();
        let node = self.node(k);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("opening {}", node.log.display()))?;
        writeln!(
            log,
            "=== xtask faults: ip netns exec {} {}",
            node_ns(k),
            words.join(" ")
        )?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &node_ns(k)])
            .args(&words)
            .env("XDG_DATA_HOME", data)
            // faketime shifts the wall clock only; the time namespace shifts the others.
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Its own process group: Ctrl-C reaches the orchestrator only, which then stops
        // the nodes itself; signals go to the whole group.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().with_context(|| format!("starting node-{k}"))?;
        let pid = child.id();
        node.child = Some(child);
        node.should_run = true;
        if skew.is_some() {
            // `ip netns exec` and `unshare` exec in place: the pid is the node's.
            std::thread::sleep(Duration::from_millis(300));
            let offsets = std::fs::read_to_string(format!("/proc/{pid}/timens_offsets"))
                .with_context(|| format!("reading node-{k}'s time namespace offsets"))?;
            return Ok(Some(
                offsets.split_whitespace().collect::<Vec<_>>().join(" "),
            ));
        }
        Ok(None)
    }

    /// SIGKILL: the node vanishes without a word.
    fn kill(&mut self, k: u8) {
        let node = self.node(k);
        node.should_run = false;
        if let Some(mut c) = node.child.take() {
            signal_group(c.id(), "KILL");
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the exit (a leave hands partitions off first).
    fn terminate(&mut self, k: u8, guard: Duration) -> anyhow::Result<()> {
        let node = self.node(k);
        node.should_run = false;
        let Some(mut c) = node.child.take() else {
            return Ok(());
        };
        signal_group(c.id(), "TERM");
        let deadline = Instant::now() + guard;
        loop {
            if let Some(status) = c.try_wait()? {
                if !status.success() {
                    bail!("node-{k} exited with {status} after SIGTERM");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                signal_group(c.id(), "KILL");
                let _ = c.wait();
                bail!(
                    "node-{k} did not stop within {}s of SIGTERM",
                    guard.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fails if a node meant to run has exited.
    fn check(&mut self) -> anyhow::Result<()> {
        for n in &mut self.list {
            if !n.should_run {
                continue;
            }
            if let Some(c) = &mut n.child
                && let Some(status) = c.try_wait()?
            {
                bail!(
                    "node-{} exited unexpectedly ({status}); its log: {}",
                    n.k,
                    n.log.display()
                );
            }
        }
        Ok(())
    }

    /// Stops every node: SIGTERM to all, SIGKILL after 10 s.
    fn stop_all(&mut self) {
        for n in &mut self.list {
            n.should_run = false;
            if let Some(c) = &n.child {
                signal_group(c.id(), "TERM");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for n in &mut self.list {
            if let Some(mut c) = n.child.take() {
                while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                signal_group(c.id(), "KILL");
                let _ = c.wait();
            }
        }
    }

    fn kill_all(&mut self) {
        for k in 1..=u8::try_from(self.list.len()).unwrap_or(u8::MAX) {
            self.kill(k);
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// The load process and what its lines said so far.
#[derive(Debug)]
struct Load {
    child: Child,
    stdin: Option<ChildStdin>,
    state: Arc<Mutex<LoadState>>,
}

#[derive(Debug, Default)]
struct LoadState {
    acked: u64,
    errors: u64,
    summary: Option<String>,
}

impl Load {
    fn start(loader: &Path, plan: &Plan, args: &Args, dir: &Path) -> anyhow::Result<Self> {
        let nodes: Vec<String> = (1..=plan.nodes)
            .map(|k| addr(k, RESP_PORT).to_string())
            .collect();
        let log = std::fs::File::create(dir.join("load.log"))?;
        let mut cmd = Command::new(loader);
        cmd.arg("--nodes")
            .arg(nodes.join(","))
            .args(["--clients", &args.clients.to_string()])
            .args(["--keys", &args.keys.to_string()])
            .args(["--rate", &args.rate.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", loader.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("the load's stdout")?;
        let state = Arc::new(Mutex::new(LoadState::default()));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = json::parse(&line) else { continue };
                let mut s = shared.lock().expect("load state lock is never poisoned");
                match v.get("type").and_then(Value::as_str) {
                    Some("progress") => {
                        s.acked = v.u64_or_zero("acked");
                        s.errors = v.u64_or_zero("write_failed")
                            + v.u64_or_zero("write_pending")
                            + v.u64_or_zero("read_errors");
                    }
                    Some("summary") => s.summary = Some(line),
                    _ => {}
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            state,
        })
    }

    fn progress(&self) -> (u64, u64) {
        let s = self
            .state
            .lock()
            .expect("load state lock is never poisoned");
        (s.acked, s.errors)
    }

    /// Tells the load to stop, verify and report; waits for the summary.
    fn finish(&mut self, guard: Duration) -> anyhow::Result<LoadSummary> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "stop");
        }
        let deadline = Instant::now() + guard;
        loop {
            if let Some(line) = self
                .state
                .lock()
                .expect("load state lock is never poisoned")
                .summary
                .clone()
            {
                let _ = self.child.wait();
                return LoadSummary::parse(&line);
            }
            if let Some(status) = self.child.try_wait()? {
                // The reader may still be taking the last line.
                std::thread::sleep(Duration::from_millis(200));
                if self
                    .state
                    .lock()
                    .expect("load state lock is never poisoned")
                    .summary
                    .is_none()
                {
                    bail!("the load exited with {status} without a summary");
                }
                continue;
            }
            if Instant::now() > deadline {
                bail!("the load did not report within {}s", guard.as_secs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal_group(self.child.id(), "KILL");
            let _ = self.child.wait();
        }
    }
}

/// Everything one scenario run holds.
struct Run {
    nodes: Nodes,
    load: Option<Load>,
    plan: Plan,
    args: Args,
    bar: ProgressBar,
    interrupted: Arc<AtomicBool>,
    notes: Vec<String>,
}

impl Run {
    fn say(&self, msg: &str) {
        if self.bar.is_hidden() {
            eprintln!("[{}] {msg}", self.plan.scenario.name());
        } else {
            self.bar.println(format!("  {msg}"));
        }
    }

    fn guard(&self) -> Duration {
        Duration::from_secs(self.args.timeout)
    }

    /// Polls `cond` until it holds; returns how long that took. Fails when a node dies,
    /// on Ctrl-C, or after `--timeout`.
    fn wait_for(&mut self, what: &str, cond: impl Fn(&Self) -> bool) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            self.nodes.check()?;
            if self.interrupted.load(Ordering::SeqCst) {
                bail!("interrupted while waiting: {what}");
            }
            self.status(what);
            if cond(self) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > self.guard() {
                bail!("gave up after {}s waiting: {what}", self.args.timeout);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Keeps the load running for `secs`, watching the nodes.
    fn pause(&mut self, what: &str, secs: u64) -> anyhow::Result<()> {
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            self.nodes.check()?;
            if self.interrupted.load(Ordering::SeqCst) {
                bail!("interrupted: {what}");
            }
            self.status(what);
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn status(&self, what: &str) {
        let load = self.load.as_ref().map_or(String::new(), |l| {
            let (acked, errors) = l.progress();
            format!(" | acked {acked}, errors {errors}")
        });
        self.bar.set_message(format!("{what}{load}"));
    }

    fn members(&self, k: u8) -> Option<Vec<(String, String)>> {
        let body = http_get(addr(k, ADMIN_PORT), "/members").ok()?;
        let v = json::parse(&body).ok()?;
        Some(
            v.as_array()?
                .iter()
                .filter_map(|m| {
                    Some((
                        m.get("id")?.as_str()?.to_owned(),
                        m.get("state")?.as_str()?.to_owned(),
                    ))
                })
                .collect(),
        )
    }

    /// Whether `observer` lists `subject` in one of `states` (`absent` also accepts no
    /// entry at all).
    fn sees(&self, observer: u8, subject: u8, states: &[&str], absent: bool) -> bool {
        let Some(list) = self.members(observer) else {
            return false;
        };
        let id = node_id(subject);
        let mine: Vec<&str> = list
            .iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, s)| s.as_str())
            .collect();
        if mine.is_empty() {
            return absent;
        }
        mine.iter().all(|s| states.contains(s))
    }

    /// Every node of `group` lists every node of `group` alive, and has installed the same
    /// routing table, whose members are exactly `group`, with no partition moving and
    /// every partition in sync (`/partitions`).
    fn formed(&self, group: &[u8]) -> bool {
        let mut epochs = Vec::new();
        for &n in group {
            let Some(list) = self.members(n) else {
                return false;
            };
            let all_alive = group.iter().all(|&m| {
                let id = node_id(m);
                list.iter().any(|(i, s)| *i == id && s == "alive")
            });
            let Some(table) = http_get(addr(n, ADMIN_PORT), "/partitions")
                .ok()
                .and_then(|body| json::parse(&body).ok())
            else {
                return false;
            };
            if !all_alive || !settled(&table, group) {
                return false;
            }
            epochs.push(table.u64_or_zero("epoch"));
        }
        epochs.windows(2).all(|w| w[0] == w[1])
    }

    /// Every node of `group` serves every key (see [`resp::probe_commands`]).
    fn serves(&self, group: &[u8]) -> bool {
        group.iter().all(|&n| {
            resp::pipeline(
                addr(n, RESP_PORT),
                &resp::probe_commands(n, self.args.keys),
                Duration::from_secs(3),
            )
            .is_ok_and(|replies| resp::all_served(&replies).is_ok())
        })
    }

    fn all(&self) -> Vec<u8> {
        (1..=self.plan.nodes).collect()
    }

    fn others(&self, k: u8) -> Vec<u8> {
        self.all().into_iter().filter(|&n| n != k).collect()
    }

    /// Starts the cluster: node 1 first (its development CA and gossip address are
    /// what the rest join), then the others seeded by it; waits until formed.
    fn form(&mut self) -> anyhow::Result<()> {
        if let Some(offsets) = self.nodes.start(1, &[])? {
            let wall = match (self.nodes.clocks.1, self.args.clock_kind) {
                (true, _) => "its wall clock is offset too (faketime)",
                (false, ClockKind::Monotonic) => "its wall clock is the host's",
                (false, _) => "its wall clock is the host's (`faketime` is not installed)",
            };
            let note =
                format!("node-1's clock offsets (/proc/PID/timens_offsets): {offsets}; {wall}");
            self.say(&note);
            self.notes.push(note);
        }
        self.wait_for("node-1 starting", |_| {
            http_get(addr(1, ADMIN_PORT), "/health").is_ok()
        })?;
        for k in 2..=self.plan.nodes {
            self.nodes.start(k, &[1])?;
        }
        let all = self.all();
        let took = self.wait_for("forming the cluster", |r| r.formed(&all))?;
        self.wait_for("every node serving every key", |r| r.serves(&all))?;
        self.say(&format!(
            "{} nodes formed in {:.1}s",
            self.plan.nodes,
            took.as_secs_f64()
        ));
        Ok(())
    }

    fn scenario(&mut self, loader: &Path, dir: &Path) -> anyhow::Result<(Times, LoadSummary)> {
        self.form()?;
        self.load = Some(Load::start(loader, &self.plan, &self.args, dir)?);
        self.pause("warming up under load", self.args.warmup)?;
        let times = match self.plan.scenario {
            Scenario::Kill | Scenario::Clock => self.kill()?,
            Scenario::Partition => self.partition()?,
            Scenario::Split => self.split()?,
            Scenario::RollingRestart => self.rolling()?,
            Scenario::Lossy => self.lossy()?,
            Scenario::All => bail!("`all` is expanded by the caller"),
        };
        self.pause("load after healing", self.args.cooldown)?;
        self.status("final reads through every node and the linearizability check");
        self.say("stopping the load; final reads and linearizability check");
        let guard = Duration::from_secs(240);
        let summary = self.load.as_mut().context("the load runs")?.finish(guard)?;
        Ok((times, summary))
    }

    /// Waits until `group` serves every key after a fault at `t0`; the time since `t0`.
    fn served_since(&mut self, t0: Instant, group: &[u8], what: &str) -> anyhow::Result<Duration> {
        let group = group.to_vec();
        self.wait_for(what, |r| r.serves(&group))?;
        Ok(t0.elapsed())
    }

    /// Waits until the whole cluster is formed and serves every key again after a heal
    /// at `t1`; the time since `t1`.
    fn healed_since(&mut self, t1: Instant) -> anyhow::Result<Duration> {
        let all = self.all();
        self.wait_for("every node alive and ready again", |r| r.formed(&all))?;
        self.wait_for("every node serving every key again", |r| r.serves(&all))?;
        Ok(t1.elapsed())
    }

    fn kill(&mut self) -> anyhow::Result<Times> {
        let v = self.plan.victim;
        let survivors = self.others(v);
        self.say(&format!("SIGKILL node-{v}"));
        let t0 = Instant::now();
        self.nodes.kill(v);
        let s = survivors.clone();
        let detect = self.wait_for(&format!("survivors declaring node-{v} failed"), |r| {
            s.iter().all(|&o| r.sees(o, v, &["failed"], false))
        })?;
        let served = self.served_since(t0, &survivors, "survivors serving every key")?;
        self.say(&format!(
            "node-{v} failed after {:.2}s; survivors serve every key after {:.2}s",
            detect.as_secs_f64(),
            served.as_secs_f64()
        ));
        self.pause("degraded: one node down", self.args.hold)?;
        self.say(&format!("restarting node-{v}"));
        let t1 = Instant::now();
        self.nodes.start(v, &survivors)?;
        let healed = self.healed_since(t1)?;
        self.say(&format!("node-{v} back after {:.2}s", healed.as_secs_f64()));
        Ok(Times {
            detect: Some(detect),
            served: Some(served),
            healed: Some(healed),
            false_failures: Vec::new(),
        })
    }

    fn partition(&mut self) -> anyhow::Result<Times> {
        let v = self.plan.victim;
        let majority = self.others(v);
        self.say(&format!("cutting node-{v}'s link"));
        let t0 = Instant::now();
        net::run(&net::link_command(v, false))?;
        let m = majority.clone();
        let detect = self.wait_for(&format!("the majority declaring node-{v} failed"), |r| {
            m.iter().all(|&o| r.sees(o, v, &["failed"], false))
        })?;
        let served = self.served_since(t0, &majority, "the majority serving every key")?;
        self.say(&format!(
            "node-{v} failed after {:.2}s; the majority serves every key after {:.2}s",
            detect.as_secs_f64(),
            served.as_secs_f64()
        ));
        self.pause("partitioned", self.args.hold)?;
        self.say(&format!("restoring node-{v}'s link"));
        let t1 = Instant::now();
        net::run(&net::link_command(v, true))?;
        let healed = self.healed_since(t1)?;
        self.say(&format!("healed after {:.2}s", healed.as_secs_f64()));
        Ok(Times {
            detect: Some(detect),
            served: Some(served),
            healed: Some(healed),
            false_failures: Vec::new(),
        })
    }

    fn split(&mut self) -> anyhow::Result<Times> {
        let minority = self.plan.minority.clone();
        let majority: Vec<u8> = self
            .all()
            .into_iter()
            .filter(|k| !minority.contains(k))
            .collect();
        self.say(&format!("splitting {majority:?} | {minority:?}"));
        let t0 = Instant::now();
        for l in net::split_commands(&minority, &majority) {
            net::run(&l)?;
        }
        let (maj, min) = (majority.clone(), minority.clone());
        let detect = self.wait_for("the majority declaring the minority failed", |r| {
            maj.iter()
                .all(|&o| min.iter().all(|&s| r.sees(o, s, &["failed"], false)))
        })?;
        let served = self.served_since(t0, &majority, "the majority serving every key")?;
        self.say(&format!(
            "minority failed after {:.2}s; the majority serves every key after {:.2}s",
            detect.as_secs_f64(),
            served.as_secs_f64()
        ));
        self.pause("split", self.args.hold)?;
        self.say("healing the split");
        let t1 = Instant::now();
        for &k in &minority {
            for l in net::flush_commands(k) {
                net::run(&l)?;
            }
        }
        let healed = self.healed_since(t1)?;
        self.say(&format!("healed after {:.2}s", healed.as_secs_f64()));
        Ok(Times {
            detect: Some(detect),
            served: Some(served),
            healed: Some(healed),
            false_failures: Vec::new(),
        })
    }

    fn rolling(&mut self) -> anyhow::Result<Times> {
        let mut times = Times::default();
        let worst = |a: Option<Duration>, b: Duration| Some(a.map_or(b, |a| a.max(b)));
        for k in self.all() {
            let others = self.others(k);
            self.say(&format!("SIGTERM node-{k}"));
            let t0 = Instant::now();
            self.nodes.terminate(k, Duration::from_secs(40))?;
            let o = others.clone();
            let detect = self.wait_for(&format!("the others seeing node-{k} leave"), |r| {
                o.iter().all(|&x| r.sees(x, k, &["left"], true))
            })?;
            let detect = t0.elapsed().max(detect);
            let served = self.served_since(t0, &others, "the others serving every key")?;
            let t1 = Instant::now();
            self.nodes.start(k, &others)?;
            let healed = self.healed_since(t1)?;
            self.say(&format!(
                "node-{k}: left after {:.2}s, keys served after {:.2}s, back after {:.2}s",
                detect.as_secs_f64(),
                served.as_secs_f64(),
                healed.as_secs_f64()
            ));
            times.detect = worst(times.detect, detect);
            times.served = worst(times.served, served);
            times.healed = worst(times.healed, healed);
        }
        self.notes
            .push("times are the slowest of the restarts".to_owned());
        Ok(times)
    }

    fn lossy(&mut self) -> anyhow::Result<Times> {
        let targets = self.plan.lossy.clone();
        let loss = self.args.loss;
        self.say(&format!(
            "dropping {loss} % of the packets nodes {targets:?} receive"
        ));
        for &k in &targets {
            for l in net::loss_commands(k, loss) {
                net::run(&l)?;
            }
        }
        let mut seen: Vec<(u8, u8)> = Vec::new();
        let mut suspects = 0u64;
        let end = Instant::now() + Duration::from_secs(self.args.lossy_secs);
        while Instant::now() < end {
            self.nodes.check()?;
            if self.interrupted.load(Ordering::SeqCst) {
                bail!("interrupted under loss");
            }
            self.status(&format!("{loss} % loss, watching for false failures"));
            for o in self.all() {
                let Some(list) = self.members(o) else {
                    continue;
                };
                for (id, state) in list {
                    let Some(s) = id.strip_prefix("node-").and_then(|n| n.parse::<u8>().ok())
                    else {
                        continue;
                    };
                    match state.as_str() {
                        "failed" if !seen.contains(&(o, s)) => {
                            self.say(&format!("node-{o} declared node-{s} failed"));
                            seen.push((o, s));
                        }
                        "suspect" => suspects += 1,
                        _ => {}
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut dropped = 0;
        let mut received = 0;
        for &k in &targets {
            let text = net::run_output(&net::counters_command(k))?;
            let (d, r) = net::parse_counters(&text).context("reading the drop counters")?;
            dropped += d;
            received += r;
        }
        #[allow(clippy::cast_precision_loss, reason = "a percentage for display")]
        let share = 100.0 * dropped as f64 / received.max(1) as f64;
        let suspicions: f64 = self
            .all()
            .iter()
            .filter_map(|&k| http_get(addr(k, ADMIN_PORT), "/metrics").ok())
            .map(|text| metric_sum(&text, "nodosum_gossip_suspicions_total"))
            .sum();
        self.notes.push(format!(
            "dropped {dropped} of {received} packets the lossy nodes received ({share:.2} %); \
             {suspicions} suspicions raised (gossip metric), {suspects} suspect entries seen \
             polling /members"
        ));
        let t1 = Instant::now();
        for &k in &targets {
            for l in net::flush_commands(k) {
                net::run(&l)?;
            }
        }
        let healed = self.healed_since(t1)?;
        Ok(Times {
            detect: None,
            served: None,
            healed: Some(healed),
            false_failures: seen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Args {
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        <Cli as clap::Parser>::parse_from(std::iter::once("x").chain(words.iter().copied())).args
    }

    const SUMMARY: &str = r#"{"type":"summary","keys":4,"clients":2,"acked_writes":100,"failed_writes":3,"pending_writes":2,"reads":90,"read_errors":5,"errors":{"write connect":3,"write timeout":2,"read connect":5},"ops_checked":200,"lost_keys":[],"lost_writes":0,"stale_reads":0,"absent_reads":0,"divergent_keys":[],"unreadable_keys":[],"linearizable_keys":4,"unknown_keys":0,"violations":[]}"#;

    #[test]
    fn a_clean_kill_passes() {
        let a = args(&["kill"]);
        let plan = Plan::new(&a, Scenario::Kill).unwrap();
        let load = LoadSummary::parse(SUMMARY).unwrap();
        assert_eq!(load.acked, 100);
        assert_eq!(load.errors.len(), 3);
        let times = Times {
            detect: Some(Duration::from_millis(1500)),
            served: Some(Duration::from_millis(2000)),
            healed: Some(Duration::from_millis(4000)),
            false_failures: vec![],
        };
        let s = judge(&plan, &a, &times, &load, vec![]);
        assert!(s.passed(), "{s:?}");
        assert_eq!(s.errors, 10);
        assert_eq!(s.detect_ms, Some(1500));
        assert!(s.error_kinds.contains("write connect: 3"));
        assert!(s.notes.iter().any(|n| n.contains("4/4 keys linearizable")));
    }

    #[test]
    fn lost_writes_and_violations_fail() {
        let a = args(&["kill"]);
        let plan = Plan::new(&a, Scenario::Kill).unwrap();
        let mut load = LoadSummary::parse(SUMMARY).unwrap();
        load.lost_writes = 2;
        load.lost_keys = vec!["fx:1".into()];
        let s = judge(&plan, &a, &Times::default(), &load, vec![]);
        assert!(!s.passed());
        assert!(s.failures[0].contains("2 acknowledged writes lost"));
        // With as many failures as copies, losses are reported, not failed.
        let a2 = args(&["split", "--replicas", "2"]);
        let plan2 = Plan::new(&a2, Scenario::Split).unwrap();
        let s = judge(&plan2, &a2, &Times::default(), &load, vec![]);
        assert!(s.passed(), "{s:?}");
        assert!(s.notes.iter().any(|n| n.contains("allowed")));
        let mut load = LoadSummary::parse(SUMMARY).unwrap();
        load.violations = vec!["fx:2: NoLinearization".into()];
        assert!(!judge(&plan, &a, &Times::default(), &load, vec![]).passed());
        let mut load = LoadSummary::parse(SUMMARY).unwrap();
        load.unreadable_keys = vec!["fx:0".into()];
        assert!(!judge(&plan, &a, &Times::default(), &load, vec![]).passed());
        let mut load = LoadSummary::parse(SUMMARY).unwrap();
        load.acked = 0;
        assert!(!judge(&plan, &a, &Times::default(), &load, vec![]).passed());
        assert!(LoadSummary::parse(r#"{"type":"progress"}"#).is_err());
    }

    #[test]
    fn stale_reads_fail_only_where_reads_must_be_linearizable() {
        let mut load = LoadSummary::parse(SUMMARY).unwrap();
        load.stale_reads = 1;
        load.violations = vec!["fx:3: NoLinearization { longest_prefix: 4, stuck_at: 5 }".into()];
        let a = args(&["partition"]);
        let plan = Plan::new(&a, Scenario::Partition).unwrap();
        let s = judge(&plan, &a, &Times::default(), &load, vec![]);
        assert!(s.passed(), "{s:?}");
        assert!(s.notes.iter().any(|n| n.contains("not quorum-checked")));
        let a = args(&["kill"]);
        let plan = Plan::new(&a, Scenario::Kill).unwrap();
        assert!(!judge(&plan, &a, &Times::default(), &load, vec![]).passed());
        // A value nobody wrote fails everywhere.
        load.violations = vec!["fx:3: UnwrittenValue { read: 2 }".into()];
        let a = args(&["partition"]);
        let plan = Plan::new(&a, Scenario::Partition).unwrap();
        assert!(!judge(&plan, &a, &Times::default(), &load, vec![]).passed());
        // So does a violation without any stale read to explain it.
        load.stale_reads = 0;
        load.violations = vec!["fx:3: NoLinearization { longest_prefix: 4, stuck_at: 5 }".into()];
        assert!(!judge(&plan, &a, &Times::default(), &load, vec![]).passed());
    }

    #[test]
    fn false_failures_fail_only_at_low_loss() {
        let load = LoadSummary::parse(SUMMARY).unwrap();
        let times = Times {
            false_failures: vec![(1, 2)],
            ..Times::default()
        };
        let a = args(&["lossy"]);
        let plan = Plan::new(&a, Scenario::Lossy).unwrap();
        let s = judge(&plan, &a, &times, &load, vec![]);
        assert!(!s.passed());
        assert!(s.failures[0].contains("node-1 saw node-2 failed"));
        let a = args(&["lossy", "--loss", "10"]);
        let plan = Plan::new(&a, Scenario::Lossy).unwrap();
        assert!(judge(&plan, &a, &times, &load, vec![]).passed());
        let s = judge(&plan, &a, &Times::default(), &load, vec![]);
        assert!(
            s.notes
                .iter()
                .any(|n| n.contains("no healthy node declared failed"))
        );
    }

    #[test]
    fn metrics_are_summed_across_labels() {
        let text = "# TYPE nodosum_gossip_suspicions counter\n\
                    nodosum_gossip_suspicions_total 3\n\
                    nodosum_gossip_suspicions_total{peer=\"a\"} 2\n\
                    nodosum_gossip_suspicions_totals 100\n# EOF\n";
        assert!((metric_sum(text, "nodosum_gossip_suspicions_total") - 5.0).abs() < 1e-9);
        assert!(metric_sum(text, "absent").abs() < 1e-9);
    }

    #[test]
    fn a_table_is_settled_only_over_the_whole_group() {
        let table = |members: &str, ready: bool, moving: u32| {
            json::parse(&format!(
                r#"{{"epoch":4,"ready":{ready},"moving":{moving},"table_members":[{members}]}}"#
            ))
            .unwrap()
        };
        let all = r#""node-2","node-1","node-3""#;
        assert!(settled(&table(all, true, 0), &[1, 2, 3]));
        assert!(!settled(&table(all, false, 0), &[1, 2, 3]));
        assert!(!settled(&table(all, true, 12), &[1, 2, 3]));
        // The bootstrap table of the first node alone is not the cluster's.
        assert!(!settled(&table(r#""node-1""#, true, 0), &[1, 2, 3]));
        assert!(!settled(&table(all, true, 0), &[1, 2]));
        assert!(!settled(&json::parse("{}").unwrap(), &[1]));
    }

    #[test]
    fn node_command_lines() {
        let line =
            node_command(Path::new("/bin/mycel"), 2, 2, &[1, 3], None, (true, true)).join(" ");
        assert_eq!(
            line,
            "/bin/mycel --dev --node-id node-2 --gossip 10.77.0.2:6969 --quic 10.77.0.2:6970 \
             --resp 10.77.0.2:6379 --admin 10.77.0.2:9090 --replicas 2 \
             --seed 10.77.0.1:6969 --seed 10.77.0.3:6969"
        );
        let line = node_command(Path::new("m"), 1, 3, &[], Some(86_400), (true, true)).join(" ");
        assert!(line.starts_with(
            "unshare --time --monotonic 86400 --boottime 86400 faketime -f +86400s m --dev"
        ));
        let line = node_command(Path::new("m"), 1, 3, &[], Some(5), (true, false)).join(" ");
        assert!(line.starts_with("unshare --time --monotonic 5 --boottime 5 m --dev"));
        let line = node_command(Path::new("m"), 1, 3, &[], Some(5), (false, true)).join(" ");
        assert!(line.starts_with("faketime -f +5s m --dev"));
    }
}
