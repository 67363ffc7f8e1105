//! Membership: real `mycel` processes on loopback (time to form, false positives in a
//! steady window, failure detection after a SIGKILL) and the 1,000-member simulation of
//! nodosum-gossip (its existing test and measurement, run optimised).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::bench_report::plot::Bars;
use crate::bench_report::procs::{
    INTERRUPTED, Registered, check_interrupted, kill_pid, run_streamed,
};
use crate::bench_report::stats::{Table, fmt_num, median};
use crate::bench_report::{Chart, Section};
use crate::cluster::{self, http_get};
use crate::util::cargo;

/// Figures of one real-process cluster.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClusterRun {
    pub(crate) nodes: u16,
    /// From starting the processes until every node lists every node alive.
    pub(crate) form_s: f64,
    pub(crate) steady_s: f64,
    /// `/members` polls of every node during the steady window.
    pub(crate) polls: u64,
    /// Entries `suspect` or `failed` among those polls (every node was healthy).
    pub(crate) bad_observations: u64,
    /// Increase of the gossip suspicion counters, summed over the nodes.
    pub(crate) suspicions: Option<f64>,
    /// Increase of the failed-probe counters, summed over the nodes.
    pub(crate) probes_failed: Option<f64>,
    /// Seconds from the SIGKILL until each survivor listed the victim failed.
    pub(crate) detected: Vec<f64>,
    pub(crate) survivors: usize,
}

/// Starts `nodes` mycel processes (reusing `cargo xtask cluster`'s helpers), measures,
/// and kills them all.
pub(crate) fn measure_cluster(
    binary: &Path,
    nodes: u16,
    steady: Duration,
    form_timeout: Duration,
) -> anyhow::Result<ClusterRun> {
    let binary = binary.to_path_buf();
    let started = Instant::now();
    let mut c = cluster::start(&binary, nodes, 2)?;
    let pids: Vec<u32> = c.nodes.iter().map(cluster::NodeProc::pid).collect();
    let _registered = Registered::new(pids.clone());
    cluster::wait_formed(&mut c, form_timeout, &INTERRUPTED)?;
    let mut run = ClusterRun {
        nodes,
        form_s: started.elapsed().as_secs_f64(),
        ..ClusterRun::default()
    };
    let admins: Vec<SocketAddr> = c.nodes.iter().map(|n| n.admin).collect();

    // Steady window: every node is healthy, so any suspect/failed entry is a false one.
    let metrics_sum = |suffix: &str| -> Option<f64> {
        admins
            .iter()
            .map(|a| {
                http_get(*a, "/metrics")
                    .ok()
                    .map(|t| metric_sum(&t, suffix))
            })
            .sum()
    };
    let (s0, p0) = (
        metrics_sum("gossip_suspicions_total"),
        metrics_sum("gossip_probes_failed_total"),
    );
    let window_start = Instant::now();
    while window_start.elapsed() < steady {
        check_interrupted()?;
        for a in &admins {
            if let Ok(body) = http_get(*a, "/members") {
                run.polls += 1;
                run.bad_observations += u64::try_from(
                    member_states(&body)
                        .iter()
                        .filter(|(_, s)| s == "suspect" || s == "failed")
                        .count(),
                )
                .unwrap_or(u64::MAX);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    run.steady_s = window_start.elapsed().as_secs_f64();
    let (s1, p1) = (
        metrics_sum("gossip_suspicions_total"),
        metrics_sum("gossip_probes_failed_total"),
    );
    run.suspicions = s0.zip(s1).map(|(a, b)| b - a);
    run.probes_failed = p0.zip(p1).map(|(a, b)| b - a);

    // Failure detection: SIGKILL the newest node, wait until every survivor lists it failed.
    let victim = c.nodes.last().context("a cluster without nodes")?;
    let victim_id = victim.id.clone();
    let victim_pid = victim.pid();
    let survivors: Vec<SocketAddr> = admins[..admins.len() - 1].to_vec();
    run.survivors = survivors.len();
    kill_pid(victim_pid)?;
    let killed = Instant::now();
    let mut seen: Vec<Option<f64>> = vec![None; survivors.len()];
    let detect_timeout = Duration::from_secs(60);
    while seen.iter().any(Option::is_none) && killed.elapsed() < detect_timeout {
        check_interrupted()?;
        for (i, a) in survivors.iter().enumerate() {
            if seen[i].is_some() {
                continue;
            }
            if let Ok(body) = http_get(*a, "/members") {
                let states = member_states(&body);
                let state = states.iter().find(|(id, _)| *id == victim_id);
                if state.is_none_or(|(_, s)| s == "failed") {
                    seen[i] = Some(killed.elapsed().as_secs_f64());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    run.detected = seen.into_iter().flatten().collect();
    drop(c);
    Ok(run)
}

/// `(id, state)` of every entry of a `/members` body.
pub(crate) fn member_states(body: &str) -> Vec<(String, String)> {
    let Ok(Value::Array(items)) = serde_json::from_str::<Value>(body) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|m| {
            Some((
                m.get("id")?.as_str()?.to_owned(),
                m.get("state")?.as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// Sum of every sample of Prometheus text whose metric name ends with `suffix` (any
/// labels), e.g. `gossip_suspicions_total`.
pub(crate) fn metric_sum(text: &str, suffix: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name_labels, value) = l.rsplit_once(' ')?;
            let name = name_labels.split('{').next()?.trim();
            if name.ends_with(suffix) {
                value.trim().parse::<f64>().ok()
            } else {
                None
            }
        })
        .sum()
}

/// Renders the real-process runs.
pub(crate) fn render_clusters(runs: &[ClusterRun], s: &mut Section) {
    let mut t = Table::new(&[
        "nodes",
        "form s",
        "steady window s",
        "suspect/failed seen for healthy nodes (in polls)",
        "suspicions raised (metrics)",
        "probes failed (metrics)",
        "crash seen: first / median / all survivors s",
        "survivors that saw it",
    ]);
    for r in runs {
        let first = r.detected.iter().copied().reduce(f64::min);
        let all = (r.detected.len() == r.survivors)
            .then(|| r.detected.iter().copied().reduce(f64::max))
            .flatten();
        t.row(vec![
            r.nodes.to_string(),
            fmt_num(Some(r.form_s), 2),
            fmt_num(Some(r.steady_s), 0),
            format!("{} (in {})", r.bad_observations, r.polls),
            fmt_num(r.suspicions, 0),
            fmt_num(r.probes_failed, 0),
            format!(
                "{} / {} / {}",
                fmt_num(first, 2),
                fmt_num(median(&r.detected), 2),
                all.map_or_else(|| "not all within 60 s".to_owned(), |a| format!("{a:.2}"))
            ),
            format!("{}/{}", r.detected.len(), r.survivors),
        ]);
    }
    let _ = writeln!(
        s.markdown,
        "### Real `mycel` processes on loopback (release build, `--dev`)\n\n\
         `--dev` nodes use Nodosum's `local` gossip profile (probe every 300 ms, 150 ms \
         probe timeout, suspicion multiplier 4), tighter than the `lan` profile of \
         production nodes and of the simulation below. \
         Each cluster is started fresh (node 1 is the seed of the others). *Form*: from \
         starting the processes until every node's `/members` lists every node alive. \
         *Steady window*: every node's `/members` is polled every 0.5 s while all are \
         healthy; any `suspect` or `failed` entry is a false positive, and the gossip \
         counters of `/metrics` show suspicions and failed probes over the window. *Crash*: \
         the newest node is SIGKILLed, then the survivors' `/members` are polled every \
         50 ms until each lists it `failed`.\n\n{}",
        t.render()
    );
    if !runs.is_empty() {
        let categories = runs.iter().map(|r| format!("{} nodes", r.nodes)).collect();
        let all = |r: &ClusterRun| {
            (r.detected.len() == r.survivors)
                .then(|| r.detected.iter().copied().reduce(f64::max))
                .flatten()
        };
        s.charts.push(Chart::Bars(
            "membership.png",
            "Formation and failure detection, real processes",
            Bars {
                title: "mycel processes on loopback: formation and crash detection".into(),
                y_label: "seconds".into(),
                categories,
                series: vec![
                    (
                        "form (all see all alive)".into(),
                        runs.iter().map(|r| Some(r.form_s)).collect(),
                    ),
                    (
                        "crash seen, median survivor".into(),
                        runs.iter().map(|r| median(&r.detected)).collect(),
                    ),
                    (
                        "crash seen by all survivors".into(),
                        runs.iter().map(all).collect(),
                    ),
                ],
                references: vec![],
            },
        ));
    }
}

/// What the simulation run produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SimRun {
    /// The command that ran.
    pub(crate) command: String,
    /// `finished in X s` of the test harness.
    pub(crate) wall_s: Option<f64>,
    pub(crate) passed: bool,
    pub(crate) detection: Vec<Detection>,
    pub(crate) false_positives: Vec<FalsePositives>,
}

/// One `detection n=...` line of the measurement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Detection {
    pub(crate) n: u64,
    pub(crate) samples: u64,
    pub(crate) p50_s: f64,
    pub(crate) p99_s: f64,
    pub(crate) max_s: f64,
    pub(crate) undetected: u64,
}

/// One `false positives n=...` line of the measurement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FalsePositives {
    pub(crate) n: u64,
    pub(crate) loss: f64,
    pub(crate) false_failures: u64,
    pub(crate) suspicions: u64,
    pub(crate) simulated_s: u64,
    pub(crate) member_hours: f64,
}

/// Runs the simulation at 1,000 members: with `measure`, nodosum-gossip's ignored
/// measurement (`MEASURE_SIZES=1000`: detection of 10 crashes, false failures at 0/1/5 %
/// loss; several minutes), otherwise its 1,000-member convergence test.
pub(crate) fn run_sim(measure: bool, log: &Path) -> anyhow::Result<SimRun> {
    let mut cmd = cargo();
    cmd.args(["test", "--release", "-p", "nodosum-gossip", "--lib"]);
    if measure {
        cmd.env("MEASURE_SIZES", "1000").args([
            "measure_detection_and_false_positives",
            "--",
            "--ignored",
            "--nocapture",
        ]);
    } else {
        cmd.args(["a_thousand_members_converge", "--", "--nocapture"]);
    }
    let command = format!(
        "{}cargo {}",
        if measure { "MEASURE_SIZES=1000 " } else { "" },
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let lines = run_streamed("1,000-member simulation", &mut cmd, log)?;
    let mut run = parse_sim(&lines);
    run.command = command;
    if !run.passed {
        bail!("the simulation test did not pass; see {}", log.display());
    }
    Ok(run)
}

/// Parses the test harness output and the measurement lines.
pub(crate) fn parse_sim(lines: &[String]) -> SimRun {
    let mut run = SimRun::default();
    for line in lines {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("test result: ") {
            run.passed = rest.starts_with("ok.") && rest.contains(" 1 passed");
            run.wall_s = rest
                .rsplit_once("finished in ")
                .and_then(|(_, t)| t.trim_end_matches('s').parse().ok());
        } else if let Some(rest) = line.strip_prefix("detection n=") {
            let n = rest.split(':').next().and_then(|n| n.parse().ok());
            let field = |k: &str| {
                rest.split_whitespace()
                    .find_map(|w| w.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            };
            let dur = |k: &str| field(k).and_then(parse_debug_duration);
            if let (Some(n), Some(p50_s), Some(p99_s), Some(max_s)) =
                (n, dur("p50"), dur("p99"), dur("max"))
            {
                run.detection.push(Detection {
                    n,
                    samples: field("samples").and_then(|v| v.parse().ok()).unwrap_or(0),
                    p50_s,
                    p99_s,
                    max_s,
                    undetected: field("undetected")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                });
            }
        } else if let Some(fp) = line
            .strip_prefix("false positives n=")
            .and_then(parse_false_positives)
        {
            run.false_positives.push(fp);
        }
    }
    run
}

/// `1000 loss=0.01: 0 false failures, 3 suspicions in 60 s (16.7 member-hours; ...)`
fn parse_false_positives(rest: &str) -> Option<FalsePositives> {
    let (head, tail) = rest.split_once(':')?;
    let mut head = head.split_whitespace();
    let n = head.next()?.parse().ok()?;
    let loss = head.next()?.strip_prefix("loss=")?.parse().ok()?;
    let words: Vec<&str> = tail.split_whitespace().collect();
    let before = |w: &str| {
        words
            .iter()
            .position(|x| x.trim_matches(|c: char| !c.is_alphanumeric() && c != '-') == w)
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| words.get(i))
            .map(|s| s.trim_start_matches('('))
    };
    let false_failures = before("false")?.parse().ok()?;
    let suspicions = before("suspicions")?.parse().ok()?;
    let simulated_s = words
        .iter()
        .position(|w| *w == "in")
        .and_then(|i| words.get(i + 1))?
        .parse()
        .ok()?;
    let member_hours = before("member-hours")?.parse().ok()?;
    Some(FalsePositives {
        n,
        loss,
        false_failures,
        suspicions,
        simulated_s,
        member_hours,
    })
}

/// Seconds of a `Duration`'s `Debug` text: `8.7s`, `870.5ms`, `12µs`, `3ns`.
pub(crate) fn parse_debug_duration(text: &str) -> Option<f64> {
    let text = text.trim().trim_end_matches(',');
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (value, unit) = text.split_at(split);
    let value: f64 = value.parse().ok()?;
    let scale = match unit {
        "s" => 1.0,
        "ms" => 1e-3,
        "µs" | "us" => 1e-6,
        "ns" => 1e-9,
        _ => return None,
    };
    Some(value * scale)
}

/// Renders the simulation run (or why there is none).
pub(crate) fn render_sim(sim: Result<&SimRun, &str>, s: &mut Section) {
    let _ = writeln!(
        s.markdown,
        "### Simulation at 1,000 members (nodosum-gossip's sans-IO core, simulated clock \
         and network, LAN defaults with a 5 s member-list sync)\n"
    );
    let run = match sim {
        Ok(run) => run,
        Err(why) => {
            let _ = writeln!(s.markdown, "_Not run: {why}._\n");
            return;
        }
    };
    let _ = writeln!(
        s.markdown,
        "Command: `{}` — {} (test wall time {} s, compile excluded).\n",
        run.command,
        if run.passed { "passed" } else { "failed" },
        fmt_num(run.wall_s, 1)
    );
    if run.detection.is_empty() && run.false_positives.is_empty() {
        let _ = writeln!(
            s.markdown,
            "This is the convergence test: 1,000 members started and joined until every \
             member's view holds all 1,000 alive, with no false failure on the way and \
             every view equal to foca's. The detection and false-positive measurement at \
             1,000 members takes several minutes and runs without `--quick` (or with \
             `--sim-measure`).\n"
        );
        return;
    }
    if !run.detection.is_empty() {
        let mut t = Table::new(&[
            "members",
            "crashes",
            "seen by all: p50 s",
            "p99 s",
            "max s",
            "undetected",
        ]);
        for d in &run.detection {
            t.row(vec![
                d.n.to_string(),
                d.samples.to_string(),
                format!("{:.2}", d.p50_s),
                format!("{:.2}", d.p99_s),
                format!("{:.2}", d.max_s),
                d.undetected.to_string(),
            ]);
        }
        let _ = writeln!(
            s.markdown,
            "Failure detection (simulated time until every member sees the crashed one \
             failed):\n\n{}",
            t.render()
        );
    }
    if !run.false_positives.is_empty() {
        let mut t = Table::new(&[
            "members",
            "packet loss",
            "simulated s",
            "member-hours",
            "false failures",
            "suspicions",
        ]);
        for f in &run.false_positives {
            t.row(vec![
                f.n.to_string(),
                format!("{:.0}%", f.loss * 100.0),
                f.simulated_s.to_string(),
                format!("{:.1}", f.member_hours),
                f.false_failures.to_string(),
                f.suspicions.to_string(),
            ]);
        }
        let _ = writeln!(
            s.markdown,
            "False positives (healthy members declared failed) under random loss:\n\n{}",
            t.render()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_member_states() {
        let body = r#"[{"id":"node-1","state":"alive","incarnation":1},
                       {"id":"node-2","state":"failed"},{"state":"alive"}]"#;
        assert_eq!(
            member_states(body),
            [
                ("node-1".to_owned(), "alive".to_owned()),
                ("node-2".to_owned(), "failed".to_owned())
            ]
        );
        assert!(member_states("not json").is_empty());
    }

    #[test]
    fn sums_prometheus_samples_by_suffix() {
        let text = "# HELP nodosum_gossip_suspicions Members this node came to suspect\n\
                    # TYPE nodosum_gossip_suspicions counter\n\
                    nodosum_gossip_suspicions_total 3\n\
                    nodosum_gossip_members{state=\"failed\"} 1\n\
                    nodosum_gossip_members{state=\"alive\"} 9\n\
                    other_suspicions_total_x 100\n";
        assert!((metric_sum(text, "gossip_suspicions_total") - 3.0).abs() < 1e-9);
        assert!((metric_sum(text, "gossip_members") - 10.0).abs() < 1e-9);
        assert!(metric_sum(text, "absent").abs() < 1e-9);
    }

    #[test]
    fn parses_debug_durations() {
        assert_eq!(parse_debug_duration("8.5s"), Some(8.5));
        assert_eq!(parse_debug_duration("870ms"), Some(0.87));
        assert_eq!(parse_debug_duration("12µs"), Some(12e-6));
        assert_eq!(parse_debug_duration("0ns"), Some(0.0));
        assert_eq!(parse_debug_duration("5 minutes"), None);
        assert_eq!(parse_debug_duration("s"), None);
    }

    #[test]
    fn parses_the_measurement_and_the_harness() {
        let lines: Vec<String> = [
            "running 1 test",
            "detection n=1000: samples=10 p50=8.712s p99=10.2s max=10.2s undetected=0 (wall 190.5s)",
            "false positives n=1000 loss=0.01: 2 false failures, 37 suspicions in 60 s (16.7 member-hours; 0.120 per member-hour) (wall 61.2s)",
            "false positives n=1000 loss=0: 0 false failures, 0 suspicions in 60 s (16.7 member-hours; 0.000 per member-hour) (wall 58s)",
            "test sim::tests::measure_detection_and_false_positives ... ok",
            "test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 320 filtered out; finished in 412.37s",
        ]
        .map(String::from)
        .to_vec();
        let run = parse_sim(&lines);
        assert!(run.passed);
        assert_eq!(run.wall_s, Some(412.37));
        assert_eq!(
            run.detection,
            [Detection {
                n: 1000,
                samples: 10,
                p50_s: 8.712,
                p99_s: 10.2,
                max_s: 10.2,
                undetected: 0
            }]
        );
        assert_eq!(run.false_positives.len(), 2);
        assert_eq!(
            run.false_positives[0],
            FalsePositives {
                n: 1000,
                loss: 0.01,
                false_failures: 2,
                suspicions: 37,
                simulated_s: 60,
                member_hours: 16.7
            }
        );
        let mut s = Section::new("m");
        render_sim(Ok(&run), &mut s);
        assert!(
            s.markdown
                .contains("| 1000 | 10 | 8.71 | 10.20 | 10.20 | 0 |"),
            "{}",
            s.markdown
        );
        assert!(
            s.markdown.contains("| 1000 | 1% | 60 | 16.7 | 2 | 37 |"),
            "{}",
            s.markdown
        );
    }

    #[test]
    fn a_failed_harness_is_not_passed() {
        let lines = ["test result: FAILED. 0 passed; 1 failed; finished in 3.00s".to_owned()];
        let run = parse_sim(&lines);
        assert!(!run.passed);
        let mut s = Section::new("m");
        render_sim(Err("no such test"), &mut s);
        assert!(s.markdown.contains("_Not run: no such test._"));
    }

    #[test]
    fn renders_cluster_runs() {
        let run = ClusterRun {
            nodes: 10,
            form_s: 2.5,
            steady_s: 10.0,
            polls: 200,
            bad_observations: 0,
            suspicions: Some(0.0),
            probes_failed: Some(1.0),
            detected: vec![3.0, 4.0, 5.0],
            survivors: 3,
        };
        let mut partial = run.clone();
        partial.detected.pop();
        let mut s = Section::new("m");
        render_clusters(&[run, partial], &mut s);
        assert!(
            s.markdown
                .contains("| 10 | 2.50 | 10 | 0 (in 200) | 0 | 1 | 3.00 / 4.00 / 5.00 | 3/3 |"),
            "{}",
            s.markdown
        );
        assert!(
            s.markdown.contains("not all within 60 s | 2/3 |"),
            "{}",
            s.markdown
        );
        assert_eq!(s.charts.len(), 1);
    }
}
