//! Mycel vs Redis through `redis-benchmark`: Debian's `redis-server`, one `mycel` node
//! (`--dev` one-node cluster and `--standalone`) and a 3-node RF=2 cluster reached
//! through one node, side by side in one run; rounds alternate between the servers and
//! the figures are medians.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};

use crate::bench_report::machine::{CpuTimes, process_cpu};
use crate::bench_report::plot::{Bars, Reference};
use crate::bench_report::procs::{
    INTERRUPTED, Owned, Registered, check_interrupted, resp_roundtrip, wait_until,
};
use crate::bench_report::stats::{Cmp, Goal, Table, fmt_count, fmt_num, fmt_ratio, median, ratio};
use crate::bench_report::{Chart, Section};
use crate::cluster::{self, http_get};
use crate::util::{free_tcp, free_udp};

/// The servers compared, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Target {
    Redis,
    MycelDev,
    MycelStandalone,
    MycelCluster,
}

impl Target {
    pub(crate) const ALL: [Self; 4] = [
        Self::Redis,
        Self::MycelDev,
        Self::MycelStandalone,
        Self::MycelCluster,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Redis => "Redis 7",
            Self::MycelDev => "mycel --dev (one-node cluster)",
            Self::MycelStandalone => "mycel --standalone",
            Self::MycelCluster => "mycel 3 nodes RF=2, via node 1",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Self::Redis => "Redis",
            Self::MycelDev => "mycel --dev",
            Self::MycelStandalone => "mycel standalone",
            Self::MycelCluster => "mycel 3-node RF=2",
        }
    }

    /// For file names.
    fn slug(self) -> &'static str {
        match self {
            Self::Redis => "redis-server",
            Self::MycelDev => "mycel-dev",
            Self::MycelStandalone => "mycel-standalone",
            Self::MycelCluster => "mycel-cluster",
        }
    }

    /// The goal ratio to Redis (issue 9): a single node at least 1.0x, the cluster 0.5x.
    fn goal(self) -> Option<f64> {
        match self {
            Self::Redis => None,
            Self::MycelDev | Self::MycelStandalone => Some(1.0),
            Self::MycelCluster => Some(0.5),
        }
    }
}

/// One line of `redis-benchmark --csv`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CsvRow {
    pub(crate) test: String,
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

/// Parses `redis-benchmark --csv` output (redis-benchmark 7: a header line naming the
/// columns `test`, `rps`, `p50_latency_ms`, `p99_latency_ms`, ...).
pub(crate) fn parse_csv(text: &str) -> anyhow::Result<Vec<CsvRow>> {
    let mut lines = text.lines().map(str::trim).filter(|l| l.starts_with('"'));
    let header = split_csv(lines.next().context("no CSV header in the output")?);
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("no `{name}` column in {header:?}"))
    };
    let (test, rps, p50, p99) = (
        col("test")?,
        col("rps")?,
        col("p50_latency_ms")?,
        col("p99_latency_ms")?,
    );
    let mut rows = Vec::new();
    for line in lines {
        let cells = split_csv(line);
        let get = |i: usize| cells.get(i).map_or("", String::as_str);
        let number = |i: usize| {
            get(i)
                .parse::<f64>()
                .with_context(|| format!("bad number {:?} in {line:?}", get(i)))
        };
        rows.push(CsvRow {
            test: get(test).to_owned(),
            rps: number(rps)?,
            p50_ms: number(p50)?,
            p99_ms: number(p99)?,
        });
    }
    if rows.is_empty() {
        bail!("no result lines in the CSV output");
    }
    Ok(rows)
}

/// Splits one CSV line of quoted fields (`"a","b,c"`); quotes doubled inside fields.
fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    out.push(field);
    out
}

/// Samples of one (target, pipeline, command).
#[derive(Debug, Clone, Default)]
pub(crate) struct Samples {
    pub(crate) rps: Vec<f64>,
    pub(crate) p50_ms: Vec<f64>,
    pub(crate) p99_ms: Vec<f64>,
    /// Share of the machine's CPU time stolen by the hypervisor during each run.
    pub(crate) steal: Vec<f64>,
    /// Share of the machine's CPU time busy (neither idle nor stolen) during each run.
    pub(crate) busy: Vec<f64>,
    /// CPU time (user + system) per request of each server process, in µs, per run;
    /// the processes in a fixed order (the cluster's node 1, the entry, first).
    pub(crate) cpu_us: Vec<Vec<f64>>,
}

/// Every sample, keyed by (target, pipeline depth, command).
pub(crate) type Results = BTreeMap<(Target, u32, String), Samples>;

/// Settings of the comparison.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) requests: u64,
    pub(crate) rounds: u32,
    pub(crate) targets: Vec<Target>,
}

/// Pipeline depths compared.
pub(crate) const PIPELINES: [u32; 2] = [1, 16];

/// Commands compared.
pub(crate) const COMMANDS: [&str; 2] = ["SET", "GET"];

/// Every (pipeline depth, command) measured, in run and report order.
fn categories() -> impl Iterator<Item = (u32, &'static str)> {
    PIPELINES
        .iter()
        .flat_map(|&p| COMMANDS.iter().map(move |&c| (p, c)))
}

/// The running servers; dropping it stops all of them.
#[derive(Debug, Default)]
struct Servers {
    owned: Vec<Owned>,
    cluster: Option<(cluster::Cluster, Registered)>,
    resp: BTreeMap<Target, SocketAddr>,
    /// The server processes of each target, whose CPU time each run reads.
    pids: BTreeMap<Target, Vec<u32>>,
}

/// Waits until `addr` answers `SET` with `+OK` (a cluster serves only once it has a
/// routing table, and a node only once it bound its port).
fn wait_serving(what: &str, addr: SocketAddr, owned: Option<&mut Owned>) -> anyhow::Result<()> {
    let probe = b"*3\r\n$3\r\nSET\r\n$13\r\nbench:probe:0\r\n$1\r\n1\r\n";
    let mut owned = owned;
    wait_until(
        &format!("{what} serving SET"),
        Duration::from_secs(60),
        || {
            if let Some(o) = owned.as_deref_mut()
                && let Some(status) = o.exited()
            {
                bail!("{} exited during start-up with {status}", o.name);
            }
            Ok(resp_roundtrip(addr, probe).is_ok_and(|r| r == "+OK"))
        },
    )
}

fn start_servers(binary: &Path, plan: &Plan, logs: &Path) -> anyhow::Result<Servers> {
    let mut s = Servers::default();
    for &t in &plan.targets {
        check_interrupted()?;
        let resp = free_tcp()?;
        let log = logs.join(format!("redis-{}.log", t.slug()));
        match t {
            Target::Redis => {
                let mut cmd = Command::new("redis-server");
                cmd.args(["--port", &resp.port().to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no"]);
                let mut o = Owned::server("redis-server", &mut cmd, &log)?;
                wait_serving("redis-server", resp, Some(&mut o))?;
                s.pids.insert(t, vec![o.pid()]);
                s.owned.push(o);
            }
            Target::MycelDev | Target::MycelStandalone => {
                let mut cmd = Command::new(binary);
                cmd.arg("--dev");
                if t == Target::MycelStandalone {
                    cmd.arg("--standalone");
                } else {
                    cmd.args(["--node-id", "bench-single"])
                        .args(["--gossip", &free_udp()?.to_string()])
                        .args(["--quic", &free_udp()?.to_string()]);
                }
                cmd.args(["--resp", &resp.to_string()])
                    .args(["--admin", &free_tcp()?.to_string()]);
                let mut o = Owned::server(t.short(), &mut cmd, &log)?;
                wait_serving(t.short(), resp, Some(&mut o))?;
                s.pids.insert(t, vec![o.pid()]);
                s.owned.push(o);
            }
            Target::MycelCluster => {
                let mut c = cluster::start(&binary.to_path_buf(), 3, 2)?;
                let pids: Vec<u32> = c.nodes.iter().map(cluster::NodeProc::pid).collect();
                s.pids.insert(t, pids.clone());
                let registered = Registered::new(pids);
                cluster::wait_formed(&mut c, Duration::from_secs(60), &INTERRUPTED)?;
                let first = c.nodes.first().context("a cluster without nodes")?;
                let resp = first.resp;
                // Every node has taken over its partitions before the figures start.
                let admins: Vec<SocketAddr> = c.nodes.iter().map(|n| n.admin).collect();
                wait_until("3-node cluster ready", Duration::from_secs(60), || {
                    Ok(admins.iter().all(|a| http_get(*a, "/ready").is_ok()))
                })?;
                wait_serving("3-node cluster", resp, None)?;
                s.cluster = Some((c, registered));
                s.resp.insert(t, resp);
                continue;
            }
        }
        s.resp.insert(t, resp);
    }
    Ok(s)
}

/// One `redis-benchmark` run of `test` (`SET` or `GET`) against `addr`.
fn bench_once(
    addr: SocketAddr,
    test: &str,
    requests: u64,
    pipeline: u32,
) -> anyhow::Result<Vec<CsvRow>> {
    let mut cmd = Command::new("redis-benchmark");
    cmd.args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(["-t", &test.to_lowercase(), "-n", &requests.to_string()])
        .args(["-c", "50", "-d", "100", "-r", "100000"])
        .args(["-P", &pipeline.to_string(), "--csv"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = Owned::spawn("redis-benchmark", &mut cmd)?;
    let out = child.wait_with_output()?;
    check_interrupted()?;
    if !out.status.success() {
        bail!(
            "redis-benchmark against {addr} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_csv(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("redis-benchmark output against {addr}"))
}

/// Starts the servers, runs the alternating rounds and stops everything.
pub(crate) fn measure(binary: &Path, plan: &Plan, logs: &Path) -> anyhow::Result<Results> {
    eprintln!("starting {} servers on loopback...", plan.targets.len());
    let servers = start_servers(binary, plan, logs)?;
    let runs = u64::from(plan.rounds)
        * u64::try_from(plan.targets.len() * PIPELINES.len() * COMMANDS.len()).unwrap_or(u64::MAX);
    let bar = ProgressBar::new(runs);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} redis-benchmark [{bar:30}] {pos}/{len} runs [{elapsed}] {wide_msg}",
        )
        .expect("invariant: a valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut results = Results::new();
    for round in 0..plan.rounds {
        // Alternate: each round starts with the next server, so no one always goes first.
        let n = plan.targets.len();
        let offset = usize::try_from(round).unwrap_or(0) % n.max(1);
        for i in 0..n {
            let t = plan.targets[(i + offset) % n];
            let addr = servers.resp[&t];
            let pids = servers.pids.get(&t).map_or(&[][..], Vec::as_slice);
            for (p, test) in categories() {
                bar.set_message(format!("round {} {} {test} -P {p}", round + 1, t.short()));
                let before = (CpuTimes::now(), cpu_of(pids));
                let rows =
                    bench_once(addr, test, plan.requests, p).inspect_err(|_| bar.abandon())?;
                let after = (CpuTimes::now(), cpu_of(pids));
                let machine = after.0.zip(before.0);
                let per_request = per_request_us(&before.1, &after.1, plan.requests);
                for row in rows {
                    let e = results.entry((t, p, row.test.clone())).or_default();
                    e.rps.push(row.rps);
                    e.p50_ms.push(row.p50_ms);
                    e.p99_ms.push(row.p99_ms);
                    e.steal.extend(machine.and_then(|(a, b)| a.steal_since(b)));
                    e.busy.extend(machine.and_then(|(a, b)| a.busy_since(b)));
                    e.cpu_us.extend(per_request.clone());
                }
                bar.inc(1);
            }
        }
    }
    bar.finish_with_message("done");
    drop(servers);
    Ok(results)
}

/// The CPU time each of `pids` has used so far (`None` if one is gone or unreadable).
fn cpu_of(pids: &[u32]) -> Option<Vec<Duration>> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&pid| process_cpu(pid)).collect()
}

/// Each process's CPU time between the two readings per request, in µs.
fn per_request_us(
    before: &Option<Vec<Duration>>,
    after: &Option<Vec<Duration>>,
    requests: u64,
) -> Option<Vec<f64>> {
    let (before, after) = (before.as_ref()?, after.as_ref()?);
    if requests == 0 || before.len() != after.len() {
        return None;
    }
    #[allow(clippy::cast_precision_loss, reason = "request counts far below 2^52")]
    let n = requests as f64;
    Some(
        before
            .iter()
            .zip(after)
            .map(|(b, a)| a.saturating_sub(*b).as_secs_f64() * 1e6 / n)
            .collect(),
    )
}

/// The median figure of (target, pipeline, command).
fn med(r: &Results, t: Target, p: u32, cmd: &str, f: fn(&Samples) -> &Vec<f64>) -> Option<f64> {
    r.get(&(t, p, cmd.to_owned())).and_then(|s| median(f(s)))
}

/// ` (min-max)` of the rounds' rps, when there was more than one round.
fn spread(samples: Option<&Samples>) -> String {
    let Some(s) = samples.filter(|s| s.rps.len() > 1) else {
        return String::new();
    };
    let lo = s.rps.iter().copied().reduce(f64::min);
    let hi = s.rps.iter().copied().reduce(f64::max);
    format!(" ({}-{})", fmt_count(lo), fmt_count(hi))
}

/// How much CPU time the hypervisor took during the runs: on a shared virtual machine a
/// run that lost a large share is slower for reasons outside the servers.
fn steal_note(r: &Results) -> String {
    let worst = r
        .iter()
        .flat_map(|((t, p, _), s)| s.steal.iter().map(move |&x| (x, *t, *p)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let all: Vec<f64> = r.values().flat_map(|s| s.steal.iter().copied()).collect();
    match (median(&all), worst) {
        (Some(mid), Some((max, t, p))) => format!(
            "CPU time stolen by the hypervisor during the runs: median {:.1} %, worst \
             {:.1} % ({}, `-P {p}`); runs that lost more than a few percent are slower for \
             reasons outside the servers.",
            mid * 100.0,
            max * 100.0,
            t.label()
        ),
        _ => "CPU time stolen by the hypervisor: not available on this machine.".to_owned(),
    }
}

/// One cell of the CPU table: the servers' CPU time per request (with each process's
/// share when there are several) and how busy the machine was, medians of the rounds.
fn cpu_cell(samples: Option<&Samples>) -> String {
    let Some(s) = samples else {
        return "n/a".to_owned();
    };
    let totals: Vec<f64> = s.cpu_us.iter().map(|run| run.iter().sum()).collect();
    let Some(total) = median(&totals) else {
        return "n/a".to_owned();
    };
    let mut cell = format!("{total:.1} µs");
    let procs = s.cpu_us.first().map_or(0, Vec::len);
    if procs > 1 && s.cpu_us.iter().all(|run| run.len() == procs) {
        let shares: Vec<String> = (0..procs)
            .map(|i| {
                let of_i: Vec<f64> = s.cpu_us.iter().map(|run| run[i]).collect();
                fmt_num(median(&of_i), 1)
            })
            .collect();
        let _ = write!(cell, " ({})", shares.join(" + "));
    }
    if let Some(busy) = median(&s.busy) {
        let _ = write!(cell, ", {:.0} % busy", busy * 100.0);
    }
    cell
}

/// Where the servers' CPU time goes per request, and whether the cores were the limit.
fn cpu_table(r: &Results, plan: &Plan) -> String {
    let categories: Vec<(u32, &str)> = categories().collect();
    let mut header = vec!["server".to_owned()];
    header.extend(categories.iter().map(|(p, c)| format!("{c} -P {p}")));
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = Table::new(&header);
    for &target in &plan.targets {
        let mut row = vec![target.label().to_owned()];
        row.extend(
            categories
                .iter()
                .map(|&(p, c)| cpu_cell(r.get(&(target, p, c.to_owned())))),
        );
        t.row(row);
    }
    format!(
        "### CPU per request\n\nUser + system CPU time of the server processes during a \
         run divided by its requests (the client's own time is not counted), median of \
         the rounds; for the cluster the sum, with each node's share in brackets (node 1, \
         the one the client talks to, first). *busy*: the share of the machine's CPU time \
         that ran something during the run (neither idle nor stolen). Near 100 % the run \
         was bound by the cores, and fewer µs per request is what makes it faster; well \
         below, requests spent their time waiting (for another process to be scheduled, \
         or for a message between them).\n\n{}",
        t.render()
    )
}

/// The report section: a table per pipeline depth, the goals, a ratio chart.
pub(crate) fn render(r: &Results, plan: &Plan) -> Section {
    let mut s = Section::new("Mycel vs Redis (redis-benchmark)");
    let _ = writeln!(
        s.markdown,
        "`redis-benchmark -h 127.0.0.1 -p PORT -t set|get -n {} -c 50 -d 100 -r 100000 -P 1|16 --csv` \
         (one run per command) against each server on loopback, all started before the first run and left \
         running; {} rounds, each round going through the servers in turn (the starting \
         server rotates), figures are the medians of the rounds, with the range of the \
         rounds' rps in brackets. Redis is Debian's \
         `redis-server` started with `--save '' --appendonly no`. The benchmark client \
         shares the cores with the servers (and the 3-node cluster runs three processes on \
         them).\n",
        plan.requests, plan.rounds
    );
    let rps: fn(&Samples) -> &Vec<f64> = |s| &s.rps;
    let p50: fn(&Samples) -> &Vec<f64> = |s| &s.p50_ms;
    let p99: fn(&Samples) -> &Vec<f64> = |s| &s.p99_ms;
    for p in PIPELINES {
        let mut t = Table::new(&[
            "server",
            "SET rps",
            "SET p50 / p99 ms",
            "SET / Redis",
            "GET rps",
            "GET p50 / p99 ms",
            "GET / Redis",
        ]);
        for &target in &plan.targets {
            let mut row = vec![target.label().to_owned()];
            for cmd in COMMANDS {
                let own = med(r, target, p, cmd, rps);
                row.extend([
                    format!(
                        "{}{}",
                        fmt_count(own),
                        spread(r.get(&(target, p, cmd.to_owned())))
                    ),
                    format!(
                        "{} / {}",
                        fmt_num(med(r, target, p, cmd, p50), 3),
                        fmt_num(med(r, target, p, cmd, p99), 3)
                    ),
                    fmt_ratio(ratio(own, med(r, Target::Redis, p, cmd, rps))),
                ]);
            }
            t.row(row);
        }
        let _ = writeln!(
            s.markdown,
            "### Pipeline depth {p} (`-P {p}`)\n\n{}",
            t.render()
        );
    }
    let _ = writeln!(s.markdown, "{}\n", steal_note(r));
    let _ = writeln!(s.markdown, "{}", cpu_table(r, plan));
    for &target in &plan.targets {
        let Some(goal) = target.goal() else { continue };
        for p in PIPELINES {
            for cmd in COMMANDS {
                s.goals.push(Goal::new(
                    "redis",
                    format!("{} / Redis, {cmd} -P {p} rps", target.short()),
                    ratio(
                        med(r, target, p, cmd, rps),
                        med(r, Target::Redis, p, cmd, rps),
                    ),
                    Cmp::AtLeast,
                    goal,
                ));
            }
        }
    }
    let categories: Vec<(u32, &str)> = categories().collect();
    let series = plan
        .targets
        .iter()
        .filter(|t| **t != Target::Redis)
        .map(|&t| {
            (
                t.short().to_owned(),
                categories
                    .iter()
                    .map(|&(p, c)| ratio(med(r, t, p, c, rps), med(r, Target::Redis, p, c, rps)))
                    .collect(),
            )
        })
        .collect();
    s.charts.push(Chart::Bars(
        "redis-ratio.png",
        "Throughput relative to Redis",
        Bars {
            title: "Throughput relative to Redis 7 (median rps, same run)".into(),
            y_label: "x Redis".into(),
            categories: categories
                .iter()
                .map(|(p, c)| format!("{c} -P {p}"))
                .collect(),
            series,
            references: vec![
                Reference {
                    y: 1.0,
                    label: "single-node goal 1.0x".into(),
                },
                Reference {
                    y: 0.5,
                    label: "cluster goal 0.5x".into(),
                },
            ],
        },
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
\"SET\",\"44642.86\",\"0.737\",\"0.104\",\"0.615\",\"1.367\",\"4.623\",\"5.087\"\n\
\"GET\",\"56179.77\",\"0.569\",\"0.152\",\"0.551\",\"0.799\",\"0.935\",\"4.031\"\n";

    #[test]
    fn parses_redis_benchmark_csv() {
        let rows = parse_csv(CSV).unwrap();
        assert_eq!(
            rows,
            [
                CsvRow {
                    test: "SET".into(),
                    rps: 44642.86,
                    p50_ms: 0.615,
                    p99_ms: 4.623
                },
                CsvRow {
                    test: "GET".into(),
                    rps: 56179.77,
                    p50_ms: 0.551,
                    p99_ms: 0.935
                },
            ]
        );
    }

    #[test]
    fn csv_columns_are_found_by_name_and_noise_is_skipped() {
        let text = "WARNING: something\r\n\"rps\",\"test\",\"p99_latency_ms\",\"p50_latency_ms\"\r\n\"1.5\",\"LPUSH (needed, for x)\",\"3\",\"2\"\r\n";
        let rows = parse_csv(text).unwrap();
        assert_eq!(rows[0].test, "LPUSH (needed, for x)");
        assert!((rows[0].rps - 1.5).abs() < 1e-9);
        assert!((rows[0].p50_ms - 2.0).abs() < 1e-9);
        assert!(parse_csv("").is_err());
        assert!(parse_csv("\"test\",\"rps\"\n\"SET\",\"1\"\n").is_err());
        assert!(parse_csv("\"test\",\"rps\",\"p50_latency_ms\",\"p99_latency_ms\"\n").is_err());
        let bad = "\"test\",\"rps\",\"p50_latency_ms\",\"p99_latency_ms\"\n\"SET\",\"fast\",\"1\",\"2\"\n";
        assert!(parse_csv(bad).is_err());
    }

    #[test]
    fn split_csv_handles_quotes() {
        assert_eq!(split_csv(r#""a","b,c","d""e""#), ["a", "b,c", "d\"e"]);
        assert_eq!(split_csv("x,y"), ["x", "y"]);
    }

    fn results() -> Results {
        let mut r = Results::new();
        let mut put = |t: Target, p: u32, cmd: &str, rps: &[f64]| {
            r.insert(
                (t, p, cmd.to_owned()),
                Samples {
                    rps: rps.to_vec(),
                    p50_ms: vec![0.5; rps.len()],
                    p99_ms: vec![1.5; rps.len()],
                    // 1 % stolen, except 12 % in the cluster's -P 16 SET runs.
                    steal: vec![
                        if t == Target::MycelCluster && p == 16 && cmd == "SET" {
                            0.12
                        } else {
                            0.01
                        };
                        rps.len()
                    ],
                    busy: vec![0.9; rps.len()],
                    // The cluster's three nodes: 30 + 10 + 10 µs in the first round (the median).
                    cpu_us: rps
                        .iter()
                        .map(|&x| {
                            let x = x / f64::from(p);
                            if t == Target::MycelCluster {
                                vec![x * 0.6, x * 0.2, 10.0]
                            } else {
                                vec![x / 10.0]
                            }
                        })
                        .collect(),
                },
            );
        };
        for p in PIPELINES {
            let k = f64::from(p);
            put(Target::Redis, p, "SET", &[100.0 * k, 90.0 * k, 110.0 * k]);
            put(Target::Redis, p, "GET", &[100.0 * k, 100.0 * k, 100.0 * k]);
            put(
                Target::MycelStandalone,
                p,
                "SET",
                &[95.0 * k, 120.0 * k, 101.0 * k],
            );
            put(
                Target::MycelStandalone,
                p,
                "GET",
                &[80.0 * k, 90.0 * k, 85.0 * k],
            );
            put(
                Target::MycelCluster,
                p,
                "SET",
                &[50.0 * k, 40.0 * k, 60.0 * k],
            );
        }
        r
    }

    #[test]
    fn medians_ratios_and_goals() {
        let plan = Plan {
            requests: 1000,
            rounds: 3,
            targets: vec![Target::Redis, Target::MycelStandalone, Target::MycelCluster],
        };
        let s = render(&results(), &plan);
        // Medians: Redis SET 100, standalone SET 101 -> 1.01x; GET 85 / 100 -> 0.85x.
        assert!(
            s.markdown.contains(
                "| mycel --standalone | 101 (95-120) | 0.500 / 1.500 | 1.01x | 85 (80-90) | 0.500 / 1.500 | 0.85x |"
            ),
            "{}",
            s.markdown
        );
        assert!(s.markdown.contains("| mycel 3 nodes RF=2, via node 1 | 800 (640-960) | 0.500 / 1.500 | 0.50x | n/a | n/a / n/a | n/a |"), "{}", s.markdown);
        assert!(
            s.markdown.contains(
                "stolen by the hypervisor during the runs: median 1.0 %, worst 12.0 % \
                 (mycel 3 nodes RF=2, via node 1, `-P 16`)"
            ),
            "{}",
            s.markdown
        );
        // CPU per request: medians of the rounds' sums (50, 42, 58) and of each node's
        // share; one process: its own median.
        assert!(
            s.markdown.contains(
                "| mycel 3 nodes RF=2, via node 1 | 50.0 µs (30.0 + 10.0 + 10.0), 90 % busy | n/a | 50.0 µs (30.0 + 10.0 + 10.0), 90 % busy | n/a |"
            ),
            "{}",
            s.markdown
        );
        assert!(
            s.markdown
                .contains("| mycel --standalone | 10.1 µs, 90 % busy | 8.5 µs, 90 % busy |"),
            "{}",
            s.markdown
        );
        let find = |w: &str| s.goals.iter().find(|g| g.what == w).unwrap();
        assert_eq!(
            find("mycel standalone / Redis, SET -P 1 rps").met(),
            Some(true)
        );
        assert_eq!(
            find("mycel standalone / Redis, GET -P 16 rps").met(),
            Some(false)
        );
        assert_eq!(
            find("mycel 3-node RF=2 / Redis, SET -P 1 rps").met(),
            Some(true)
        );
        assert_eq!(find("mycel 3-node RF=2 / Redis, GET -P 1 rps").met(), None);
        // Two single-node goals... per pipeline and command, none for Redis itself.
        assert_eq!(s.goals.len(), 8);
        assert_eq!(s.charts.len(), 1);
    }
}
