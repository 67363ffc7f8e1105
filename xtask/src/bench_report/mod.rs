//! `cargo xtask bench-report`: every benchmark and side-by-side measurement of the
//! project in one run, written as one Markdown report with PNG charts.
//!
//! Sections: the machine and versions; transport (the criterion benchmark of the
//! `benches` crate: Nodosum vs raw QUIC vs TCP + TLS); membership (real `mycel`
//! processes on loopback, and nodosum-gossip's 1,000-member simulation); Mycel vs Redis
//! (`redis-benchmark` against Debian's `redis-server`, a single `mycel` node and a
//! 3-node cluster). Every goal the issues set is listed with its measured ratio and
//! whether it is met.
//!
//! Every child process runs in its own process group and is killed on any error, on
//! Ctrl-C, and when its guard is dropped.

mod machine;
mod membership;
mod plot;
mod procs;
mod redis;
mod stats;
mod transport;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::bench_report::stats::Goal;
use crate::util::on_path;

const ABOUT: &str = "\
Runs the benchmarks and side-by-side measurements and writes one Markdown report with PNG
charts (default target/bench-report/REPORT.md):

  1. the machine and versions (cores, CPU, memory, kernel, rustc, redis-server, git commit);
  2. transport: `cargo bench -p benches --bench transport` (connection set-up full /
     resumed / 0-RTT, 64 B round-trip percentiles, throughput by message size, 1-50
     applications on one connection with one stalled, and any further section the
     benchmark writes, such as packet loss), Nodosum vs raw QUIC vs TCP + TLS 1.3;
  3. membership: time to form clusters of 10/20/50 real `mycel` processes on loopback,
     false positives in a steady window, failure detection after a SIGKILL; and
     nodosum-gossip's simulation at 1,000 members;
  4. Mycel vs Redis: redis-benchmark SET/GET at -P 1 and -P 16 against Debian's
     redis-server, `mycel --dev`, `mycel --standalone` and a 3-node RF=2 cluster reached
     through one node, in alternating rounds (medians).

Every goal of the issues (e.g. Nodosum >= 0.9x raw QUIC at 1 KiB, a single mycel node >=
1.0x Redis, the cluster >= 0.5x) is listed as met / not met. Figures are ratios measured
side by side in one run on this machine: absolute numbers depend on its load.

Output: REPORT.md, the charts (*.png), transport.json and the logs of every step (logs/)
in the output directory. Everything runs on loopback (127.0.0.1), except the transport
benchmark's packet-loss scenario, which (as root) runs inside network namespaces it
creates and removes itself. Needs: redis-server and redis-benchmark (Debian packages
redis-server, redis-tools) for the Redis section, a TrueType font (fonts-dejavu-core, or
BENCH_REPORT_FONT=FILE) for the charts. A full run takes about 20 minutes on 2 cores,
--quick about 10. Ctrl-C stops every process it started.

Examples:
  cargo xtask bench-report --quick
  cargo xtask bench-report --skip transport,membership --rounds 5
  cargo xtask bench-report --skip membership,redis --transport-json target/bench-report/transport.json";

/// The parts of the report that `--skip` can leave out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Part {
    /// The criterion transport benchmark.
    Transport,
    /// Real-process clusters and the 1,000-member simulation.
    Membership,
    /// Mycel vs Redis with redis-benchmark.
    Redis,
}

/// Options of `cargo xtask bench-report`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = ABOUT)]
pub(crate) struct Args {
    /// Smaller and fewer runs (criterion --quick, 50,000 requests x 3 rounds, 10 s steady
    /// window, the 1,000-member convergence test instead of its measurement): about 10
    /// minutes on 2 cores.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Sections to leave out, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "PART,...")]
    pub(crate) skip: Vec<Part>,
    /// Directory for REPORT.md, the charts and the logs [default: target/bench-report].
    #[arg(long, value_name = "DIR")]
    pub(crate) out: Option<PathBuf>,
    /// Render this transport JSON (as written by the benchmark) instead of running it.
    #[arg(long, value_name = "FILE")]
    pub(crate) transport_json: Option<PathBuf>,
    /// Sizes of the real-process clusters.
    #[arg(long, value_delimiter = ',', default_values_t = [10u16, 20, 50],
          value_parser = clap::value_parser!(u16).range(2..=64), value_name = "N,...")]
    pub(crate) cluster_sizes: Vec<u16>,
    /// Seconds of the steady window that counts false positives [default: 10 with
    /// --quick, 30 otherwise].
    #[arg(long, value_name = "SECS")]
    pub(crate) steady_secs: Option<u64>,
    /// Run the simulation's detection and false-positive measurement at 1,000 members
    /// (several minutes) also with --quick.
    #[arg(long)]
    pub(crate) sim_measure: bool,
    /// Requests per redis-benchmark run [default: 50000 with --quick, 200000 otherwise].
    #[arg(long, value_name = "N")]
    pub(crate) requests: Option<u64>,
    /// Alternating rounds of redis-benchmark [default: 3 with --quick, 5 otherwise].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) rounds: Option<u32>,
}

/// A chart of a section: (file name, alt text, chart).
#[derive(Debug, Clone)]
pub(crate) enum Chart {
    Bars(&'static str, &'static str, plot::Bars),
    Lines(&'static str, &'static str, plot::Lines),
}

/// One section of the report.
#[derive(Debug, Clone)]
pub(crate) struct Section {
    pub(crate) title: String,
    pub(crate) markdown: String,
    pub(crate) goals: Vec<Goal>,
    pub(crate) charts: Vec<Chart>,
}

impl Section {
    pub(crate) fn new(title: &str) -> Self {
        Self {
            title: title.to_owned(),
            markdown: String::new(),
            goals: Vec::new(),
            charts: Vec::new(),
        }
    }

    fn failed(title: &str, e: &anyhow::Error) -> Self {
        let mut s = Self::new(title);
        let _ = writeln!(s.markdown, "**This section failed:** `{e:#}`\n");
        s
    }
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    procs::install_ctrlc()?;
    let started = Instant::now();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| procs::target_dir().join("bench-report"));
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let skip = |p: Part| args.skip.contains(&p);

    let machine = machine::describe();
    let mut sections = Vec::new();
    let mut failures = Vec::new();
    let mut keep = |title: &str, result: anyhow::Result<Section>| -> anyhow::Result<()> {
        match result {
            Ok(s) => sections.push(s),
            Err(e) => {
                procs::check_interrupted()?;
                eprintln!("{title} failed: {e:#}");
                failures.push(title.to_owned());
                sections.push(Section::failed(title, &e));
            }
        }
        Ok(())
    };

    if !skip(Part::Transport) {
        let t = Instant::now();
        keep("Transport", timed(transport_section(args, &out, &logs), t))?;
    }
    let binary = if skip(Part::Membership) && skip(Part::Redis) {
        None
    } else {
        Some(build_mycel(&logs)?)
    };
    if let Some(binary) = &binary {
        if !skip(Part::Membership) {
            let t = Instant::now();
            keep(
                "Membership",
                timed(membership_section(args, binary, &logs), t),
            )?;
        }
        if !skip(Part::Redis) {
            let t = Instant::now();
            keep(
                "Mycel vs Redis",
                timed(redis_section(args, binary, &logs), t),
            )?;
        }
    }

    let report = assemble(args, &machine, &mut sections, &out, started.elapsed());
    let path = out.join("REPORT.md");
    std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    let goals: Vec<Goal> = sections.iter().flat_map(|s| s.goals.clone()).collect();
    println!("\n{}", stats::goals_table(&goals));
    println!(
        "report: {} (charts and logs beside it; {:.0} s)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        bail!(
            "{} failed (the report says why): {}",
            if failures.len() == 1 {
                "a section"
            } else {
                "sections"
            },
            failures.join(", ")
        );
    }
    Ok(())
}

/// Notes how long a section took.
fn timed(section: anyhow::Result<Section>, started: Instant) -> anyhow::Result<Section> {
    section.map(|mut s| {
        let _ = writeln!(
            s.markdown,
            "_This section took {:.0} s._\n",
            started.elapsed().as_secs_f64()
        );
        s
    })
}

/// Builds `mycel` in release mode (as `cargo xtask cluster` does, but with a spinner, a
/// log, and stopped by Ctrl-C) and returns the binary's path.
fn build_mycel(logs: &Path) -> anyhow::Result<PathBuf> {
    let mut cmd = crate::util::cargo();
    cmd.args(["build", "--release", "--package", "mycel", "--bin", "mycel"]);
    procs::run_streamed(
        "building mycel (release)",
        &mut cmd,
        &logs.join("build-mycel.log"),
    )?;
    Ok(procs::target_dir().join("release").join("mycel"))
}

fn transport_section(args: &Args, out: &Path, logs: &Path) -> anyhow::Result<Section> {
    let (json, ran) = match &args.transport_json {
        Some(file) => (file.clone(), false),
        None => (
            transport::run_bench(args.quick, &logs.join("transport-bench.log"))?,
            true,
        ),
    };
    let value = transport::load(&json)?;
    let copy = out.join("transport.json");
    if copy != json {
        std::fs::copy(&json, &copy).with_context(|| format!("copying {}", json.display()))?;
    }
    let mut s = transport::render(&value);
    let how = if ran {
        format!(
            "`cargo bench -p benches --bench transport{}` in this run",
            if args.quick { " -- --quick" } else { "" }
        )
    } else {
        format!("rendered from `{}` (not re-run)", json.display())
    };
    s.markdown = format!(
        "Figures: {how}; raw figures in `transport.json`. Nodosum is the stream manager \
         (`nodosum_quic::QuicNode`), raw QUIC a quinn stream with no stream manager, TCP+TLS \
         the multiplexed tokio-rustls baseline (mTLS, TLS 1.3).\n\n{}",
        s.markdown
    );
    Ok(s)
}

fn membership_section(args: &Args, binary: &Path, logs: &Path) -> anyhow::Result<Section> {
    let mut s = Section::new("Membership: formation, failure detection, false positives");
    let steady = Duration::from_secs(args.steady_secs.unwrap_or(if args.quick { 10 } else { 30 }));
    let mut runs = Vec::new();
    for &n in &args.cluster_sizes {
        procs::check_interrupted()?;
        eprintln!("membership: {n} mycel processes...");
        match membership::measure_cluster(binary, n, steady, Duration::from_secs(120)) {
            Ok(run) => runs.push(run),
            Err(e) => {
                procs::check_interrupted()?;
                let _ = writeln!(s.markdown, "**{n} nodes failed:** `{e:#}`\n");
            }
        }
    }
    membership::render_clusters(&runs, &mut s);
    let measure = args.sim_measure || !args.quick;
    match membership::run_sim(measure, &logs.join("membership-sim.log")) {
        Ok(sim) => membership::render_sim(Ok(&sim), &mut s),
        Err(e) => {
            procs::check_interrupted()?;
            membership::render_sim(Err(&format!("{e:#}")), &mut s);
        }
    }
    Ok(s)
}

fn redis_section(args: &Args, binary: &Path, logs: &Path) -> anyhow::Result<Section> {
    let missing: Vec<&str> = ["redis-server", "redis-benchmark"]
        .into_iter()
        .filter(|p| !on_path(p))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} not installed (Debian: apt-get install redis-server redis-tools)",
            missing.join(" and ")
        );
    }
    let plan = redis::Plan {
        requests: args
            .requests
            .unwrap_or(if args.quick { 50_000 } else { 200_000 }),
        rounds: args.rounds.unwrap_or(if args.quick { 3 } else { 5 }),
        targets: redis::Target::ALL.to_vec(),
    };
    let results = redis::measure(binary, &plan, logs)?;
    Ok(redis::render(&results, &plan))
}

/// Draws the charts and puts the report together.
fn assemble(
    args: &Args,
    machine: &[(&'static str, String)],
    sections: &mut [Section],
    out: &Path,
    took: Duration,
) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Nodosum and Mycel: benchmark report\n\n\
         Every figure below was measured in one run of `cargo xtask bench-report{}` on the \
         machine described here, side by side with its baseline. Read the **ratios**: \
         absolute numbers depend on the machine and on whatever else ran on it (this is a \
         small shared machine; benchmark clients, servers and cluster nodes all share its \
         cores). The run took {:.0} s.\n",
        if args.quick { " --quick" } else { "" },
        took.as_secs_f64()
    );
    let _ = writeln!(md, "## Machine and versions\n\n{}", machine::table(machine));
    let goals: Vec<Goal> = sections.iter().flat_map(|s| s.goals.clone()).collect();
    if !goals.is_empty() {
        let _ = writeln!(
            md,
            "## Goals\n\nThe goals of the issues, as ratios of this run.\n\n{}",
            stats::goals_table(&goals)
        );
    }
    for s in sections.iter_mut() {
        let _ = writeln!(md, "## {}\n\n{}", s.title, s.markdown);
        for chart in &s.charts {
            let (file, alt, drawn) = match chart {
                Chart::Bars(file, alt, c) => (*file, *alt, c.draw(&out.join(file))),
                Chart::Lines(file, alt, c) => (*file, *alt, c.draw(&out.join(file))),
            };
            match drawn {
                Ok(()) => {
                    let _ = writeln!(md, "![{alt}]({file})\n");
                }
                Err(e) => {
                    let _ = writeln!(md, "_Chart `{file}` not drawn: {e:#}._\n");
                }
            }
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn options_parse() {
        let cli = Cli::try_parse_from([
            "x",
            "--quick",
            "--skip",
            "transport,redis",
            "--out",
            "/tmp/r",
            "--cluster-sizes",
            "3,5",
        ])
        .unwrap();
        assert!(cli.args.quick);
        assert_eq!(cli.args.skip, [Part::Transport, Part::Redis]);
        assert_eq!(cli.args.cluster_sizes, [3, 5]);
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.args.cluster_sizes, [10, 20, 50]);
        assert!(Cli::try_parse_from(["x", "--skip", "everything"]).is_err());
        assert!(Cli::try_parse_from(["x", "--rounds", "0"]).is_err());
    }

    #[test]
    fn the_long_help_explains_the_report() {
        use clap::CommandFactory as _;
        let help = Cli::command().render_long_help().to_string();
        for needle in [
            "--skip",
            "--quick",
            "Mycel vs Redis",
            "met / not met",
            "Ctrl-C",
        ] {
            assert!(help.contains(needle), "{needle} missing from:\n{help}");
        }
    }

    #[test]
    fn the_report_holds_sections_goals_and_charts() {
        let dir = tempfile::tempdir().unwrap();
        let args = Cli::try_parse_from(["x", "--quick"]).unwrap().args;
        let value: serde_json::Value = serde_json::json!({
            "throughput": { "1KiB": {
                "quic": { "msgs_per_s": 100.0, "mb_per_s": 0.1 },
                "nodosum": { "msgs_per_s": 95.0, "mb_per_s": 0.09 },
                "tcp_tls": { "msgs_per_s": 200.0, "mb_per_s": 0.2 } } }
        });
        let mut sections = vec![
            transport::render(&value),
            Section::failed("Broken", &anyhow::anyhow!("boom")),
        ];
        let md = assemble(
            &args,
            &[("rustc", "rustc 1.0".to_owned())],
            &mut sections,
            dir.path(),
            Duration::from_secs(3),
        );
        assert!(md.contains("| rustc | rustc 1.0 |"), "{md}");
        assert!(
            md.contains(
                "| transport | Nodosum / raw QUIC, 1 KiB msgs/s | 0.95x | >= 0.90x | met |"
            ),
            "{md}"
        );
        assert!(md.contains("**This section failed:** `boom`"), "{md}");
        if plot::font().is_ok() {
            assert!(
                md.contains("![Throughput by message size](transport-throughput.png)"),
                "{md}"
            );
            assert!(dir.path().join("transport-throughput.png").exists());
        } else {
            assert!(md.contains("not drawn"), "{md}");
        }
    }
}
