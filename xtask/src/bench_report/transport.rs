//! Transport: runs the criterion benchmark of the `benches` crate and renders the JSON it
//! writes (`target/bench-report/transport.json`) with the goals of the nodosum-quic issue.
//!
//! Known sections (`setup`, `latency_64B`, `throughput`, `stall`, and a packet-loss
//! section) get tables, ratios and goals; any other section is rendered as a flat list of
//! its figures, so that new measurements show up without a change here.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::bench_report::plot::{Bars, Lines, Reference};
use crate::bench_report::procs::{run_streamed, target_dir};
use crate::bench_report::stats::{Cmp, Goal, Table, fmt_count, fmt_num, fmt_ratio, ratio};
use crate::bench_report::{Chart, Section};
use crate::util::cargo;

/// Transports in report order: (JSON name, display name).
const TRANSPORTS: [(&str, &str); 3] = [
    ("tcp_tls", "TCP+TLS"),
    ("quic", "raw QUIC"),
    ("nodosum", "Nodosum"),
];

/// The packet-loss scenario's extra transport: Nodosum with `Congestion::Bbr`.
const NODOSUM_BBR: (&str, &str) = ("nodosum_bbr", "Nodosum (BBR)");

/// Top-level keys rendered by a dedicated table.
const KNOWN: [&str; 5] = ["machine", "setup", "latency_64B", "throughput", "stall"];

/// Where the benchmark writes its JSON.
pub(crate) fn bench_json() -> PathBuf {
    target_dir().join("bench-report").join("transport.json")
}

/// Runs `cargo bench -p benches --bench transport [-- --quick]` with a progress spinner;
/// returns the JSON it wrote.
pub(crate) fn run_bench(quick: bool, log: &Path) -> anyhow::Result<PathBuf> {
    let json = bench_json();
    let started = SystemTime::now();
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "benches", "--bench", "transport"]);
    if quick {
        cmd.args(["--", "--quick"]);
    }
    run_streamed("transport benchmark", &mut cmd, log)?;
    let modified = std::fs::metadata(&json)
        .and_then(|m| m.modified())
        .with_context(|| format!("the benchmark wrote no {}", json.display()))?;
    if modified < started {
        bail!(
            "{} is older than this run: the benchmark did not write it",
            json.display()
        );
    }
    Ok(json)
}

/// Reads and parses a transport JSON file.
pub(crate) fn load(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, key| v.get(key))?.as_f64()
}

/// The report section for the benchmark's JSON `r`.
pub(crate) fn render(r: &Value) -> Section {
    let mut s = Section::new("Transport: Nodosum vs raw QUIC vs TCP + TLS 1.3");
    let md = &mut s.markdown;
    if let Some(v) = r
        .get("machine")
        .and_then(|m| m.get("versions"))
        .and_then(Value::as_str)
    {
        let _ = writeln!(md, "Libraries: {v}. Loopback, one process per side pair.\n");
    }
    setup(r, &mut s);
    latency(r, &mut s);
    throughput(r, &mut s);
    stall(r, &mut s);
    if let Some(obj) = r.as_object() {
        for (key, value) in obj {
            if KNOWN.contains(&key.as_str()) {
                continue;
            }
            if key.contains("loss") {
                loss(key, value, &mut s);
            } else if key.contains("memory") {
                memory(key, value, &mut s);
            } else {
                generic(key, value, &mut s);
            }
        }
    }
    s
}

const SETUP_ROWS: [(&str, Option<&str>, &str, Option<&str>); 3] = [
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
];

fn setup(r: &Value, s: &mut Section) {
    let Some(setup) = r.get("setup") else {
        let _ = writeln!(s.markdown, "_No connection set-up figures in this run._\n");
        return;
    };
    let ms = |name: &str, q: &str| num(setup, &[name, q]).map(|us| us / 1000.0);
    let mut t = Table::new(&[
        "handshake",
        "TCP+TLS p50 / p99 ms",
        "raw QUIC p50 / p99 ms",
        "Nodosum p50 / p99 ms",
        "raw QUIC / TCP (p50)",
        "Nodosum / raw QUIC (p50)",
    ]);
    let cell = |name: Option<&str>| {
        name.map_or_else(
            || "n/a".to_owned(),
            |n| {
                format!(
                    "{} / {}",
                    fmt_num(ms(n, "p50_us"), 2),
                    fmt_num(ms(n, "p99_us"), 2)
                )
            },
        )
    };
    for (label, tcp, quic, nodosum) in SETUP_ROWS {
        t.row(vec![
            label.to_owned(),
            cell(tcp),
            cell(Some(quic)),
            cell(nodosum),
            fmt_ratio(ratio(ms(quic, "p50_us"), tcp.and_then(|t| ms(t, "p50_us")))),
            fmt_ratio(ratio(
                nodosum.and_then(|n| ms(n, "p50_us")),
                ms(quic, "p50_us"),
            )),
        ]);
    }
    let misses: Vec<String> = setup
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let n = v.get("not_as_intended")?.as_u64()?;
            (n > 0).then(|| format!("{k}: {n}"))
        })
        .collect();
    let _ = writeln!(
        s.markdown,
        "### Connection set-up (dial to the first echoed 64 B message)\n\n{}",
        t.render()
    );
    if !misses.is_empty() {
        let _ = writeln!(
            s.markdown,
            "Handshakes that did not go as the row intends (e.g. not resumed): {}.\n",
            misses.join(", ")
        );
    }
    let zero_rtt = ratio(ms("quic/0rtt", "p50_us"), ms("quic/full", "p50_us"));
    // A replay-safe application's reconnect: its first message is 0-RTT data.
    let nodosum_zero_rtt = ratio(ms("nodosum/0rtt", "p50_us"), ms("nodosum/full", "p50_us"));
    s.goals.push(Goal::new(
        "transport",
        "0-RTT reconnect to first message / full handshake, raw QUIC p50",
        zero_rtt,
        Cmp::AtMost,
        0.45,
    ));
    s.goals.push(Goal::new(
        "transport",
        "Nodosum 0-RTT reconnect to first message / Nodosum full handshake, p50",
        nodosum_zero_rtt,
        Cmp::AtMost,
        0.45,
    ));
    let labels: Vec<String> = SETUP_ROWS.iter().map(|r| r.0.to_owned()).collect();
    let series = TRANSPORTS
        .iter()
        .map(|&(t, name)| {
            let values = SETUP_ROWS
                .iter()
                .map(|&(_, tcp, quic, nodosum)| {
                    let key = match t {
                        "tcp_tls" => tcp,
                        "quic" => Some(quic),
                        _ => nodosum,
                    };
                    key.and_then(|k| ms(k, "p50_us"))
                })
                .collect();
            (name.to_owned(), values)
        })
        .collect();
    s.charts.push(Chart::Bars(
        "transport-setup.png",
        "Connection set-up, p50",
        Bars {
            title: "Connection set-up to the first echoed message, p50".into(),
            y_label: "ms".into(),
            categories: labels,
            series,
            references: vec![],
        },
    ));
}

fn latency(r: &Value, s: &mut Section) {
    let Some(lat) = r.get("latency_64B") else {
        return;
    };
    let us = |t: &str, q: &str| num(lat, &[t, q]);
    let mut t = Table::new(&[
        "transport",
        "p50 µs",
        "p95 µs",
        "p99 µs",
        "p50 / TCP+TLS",
        "p99 / raw QUIC",
    ]);
    for (key, name) in TRANSPORTS {
        t.row(vec![
            name.to_owned(),
            fmt_num(us(key, "p50_us"), 1),
            fmt_num(us(key, "p95_us"), 1),
            fmt_num(us(key, "p99_us"), 1),
            fmt_ratio(ratio(us(key, "p50_us"), us("tcp_tls", "p50_us"))),
            fmt_ratio(ratio(us(key, "p99_us"), us("quic", "p99_us"))),
        ]);
    }
    let _ = writeln!(
        s.markdown,
        "### 64 B ping-pong round trip\n\n{}",
        t.render()
    );
    s.goals.push(Goal::new(
        "transport",
        "Nodosum / raw QUIC, 64 B round trip p99",
        ratio(us("nodosum", "p99_us"), us("quic", "p99_us")),
        Cmp::AtMost,
        1.2,
    ));
}

fn throughput(r: &Value, s: &mut Section) {
    let Some(tp) = r.get("throughput").and_then(Value::as_object) else {
        return;
    };
    let mut t = Table::new(&[
        "size",
        "TCP+TLS msgs/s (MB/s)",
        "raw QUIC msgs/s (MB/s)",
        "Nodosum msgs/s (MB/s)",
        "raw QUIC / TCP",
        "Nodosum / raw QUIC",
        "Nodosum / TCP",
        "CPU µs/msg, TCP / QUIC / Nodosum",
    ]);
    let mut sizes: Vec<&String> = tp.keys().collect();
    sizes.sort_by_key(|k| size_bytes(k));
    for size in &sizes {
        let row = &tp[size.as_str()];
        let m = |t: &str| num(row, &[t, "msgs_per_s"]);
        let cell = |t: &str| {
            format!(
                "{} ({})",
                fmt_count(m(t)),
                fmt_num(num(row, &[t, "mb_per_s"]), 1)
            )
        };
        t.row(vec![
            (*size).clone(),
            cell("tcp_tls"),
            cell("quic"),
            cell("nodosum"),
            fmt_ratio(ratio(m("quic"), m("tcp_tls"))),
            fmt_ratio(ratio(m("nodosum"), m("quic"))),
            fmt_ratio(ratio(m("nodosum"), m("tcp_tls"))),
            ["tcp_tls", "quic", "nodosum"]
                .map(|t| fmt_num(num(row, &[t, "cpu_us_per_msg"]), 2))
                .join(" / "),
        ]);
    }
    let _ = writeln!(
        s.markdown,
        "### Throughput, one application, by message size\n\n{}\n\
         Each figure is the median of rounds that go through the transports in turn. \
         On a clean loopback TCP + TLS moves more bytes per core than userspace QUIC; \
         the QUIC goal is against raw quinn. CPU is the benchmark process's user + system \
         time per message, sender and receiver together (both ends run in it): unlike the \
         rates it hardly depends on what else the machine was doing.\n",
        t.render()
    );
    s.goals.push(Goal::new(
        "transport",
        "Nodosum / raw QUIC, 1 KiB msgs/s",
        ratio(
            num(
                tp.get("1KiB").unwrap_or(&Value::Null),
                &["nodosum", "msgs_per_s"],
            ),
            num(
                tp.get("1KiB").unwrap_or(&Value::Null),
                &["quic", "msgs_per_s"],
            ),
        ),
        Cmp::AtLeast,
        0.9,
    ));
    let series = TRANSPORTS
        .iter()
        .map(|&(key, name)| {
            let values = sizes
                .iter()
                .map(|size| num(&tp[size.as_str()], &[key, "mb_per_s"]))
                .collect();
            (name.to_owned(), values)
        })
        .collect();
    s.charts.push(Chart::Bars(
        "transport-throughput.png",
        "Throughput by message size",
        Bars {
            title: "Throughput, one application, by message size".into(),
            y_label: "MB/s".into(),
            categories: sizes.iter().map(|s| (*s).clone()).collect(),
            series,
            references: vec![],
        },
    ));
}

/// `64B` -> 64, `1KiB` -> 1024, `64KiB` -> 65536 (unknown labels sort last).
fn size_bytes(label: &str) -> u64 {
    let (digits, unit): (String, String) = label.chars().partition(char::is_ascii_digit);
    let n: u64 = digits.parse().unwrap_or(u64::MAX / 4096);
    match unit.to_ascii_lowercase().as_str() {
        "kib" | "kb" | "k" => n * 1024,
        "mib" | "mb" | "m" => n * 1024 * 1024,
        _ => n,
    }
}

/// One stall row's `delivered_others` for (transport, apps, stalled?).
fn stall_figure(rows: &[Value], transport: &str, apps: u64, kind: &str) -> Option<f64> {
    rows.iter()
        .find(|row| {
            row["apps"].as_u64() == Some(apps) && row["transport"].as_str() == Some(transport)
        })
        .and_then(|row| {
            num(row, &[kind, "msgs_per_s"]).or_else(|| num(row, &[kind, "delivered_others"]))
        })
}

fn stall(r: &Value, s: &mut Section) {
    let Some(rows) = r.get("stall").and_then(Value::as_array) else {
        return;
    };
    let mut apps: Vec<u64> = rows.iter().filter_map(|r| r["apps"].as_u64()).collect();
    apps.sort_unstable();
    apps.dedup();
    let mut t = Table::new(&[
        "apps",
        "TCP+TLS unstalled",
        "TCP+TLS stalled",
        "ratio",
        "raw QUIC unstalled",
        "raw QUIC stalled",
        "ratio",
        "Nodosum unstalled",
        "Nodosum stalled",
        "ratio",
    ]);
    let mut lines: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for &(key, name) in &TRANSPORTS {
        let pts = apps
            .iter()
            .filter_map(|&n| {
                let r = ratio(
                    stall_figure(rows, key, n, "stalled"),
                    stall_figure(rows, key, n, "unstalled"),
                )?;
                #[allow(clippy::cast_precision_loss, reason = "small counts")]
                Some((n as f64, r))
            })
            .collect();
        lines.push((name.to_owned(), pts));
    }
    for &n in &apps {
        let mut row = vec![n.to_string()];
        for (key, _) in TRANSPORTS {
            let (u, st) = (
                stall_figure(rows, key, n, "unstalled"),
                stall_figure(rows, key, n, "stalled"),
            );
            row.extend([fmt_count(u), fmt_count(st), fmt_ratio(ratio(st, u))]);
        }
        t.row(row);
    }
    let _ = writeln!(
        s.markdown,
        "### N applications on one connection, application 0's receiver stalled\n\n\
         1 KiB messages per second delivered to the other applications, with application 0 \
         reading (unstalled) or never reading (stalled); N = 1 is the one application, \
         unstalled.\n\n{}",
        t.render()
    );
    let most = apps.last().copied().unwrap_or(50);
    let nodosum = ratio(
        stall_figure(rows, "nodosum", most, "stalled"),
        stall_figure(rows, "nodosum", most, "unstalled"),
    );
    let tcp = ratio(
        stall_figure(rows, "tcp_tls", most, "stalled"),
        stall_figure(rows, "tcp_tls", most, "unstalled"),
    );
    s.goals.push(Goal::new(
        "transport",
        format!("{most} apps, one stalled: Nodosum others' throughput stalled / unstalled"),
        nodosum,
        Cmp::AtLeast,
        0.9,
    ));
    s.goals.push(Goal::new(
        "transport",
        format!(
            "{most} apps, one stalled: the TCP+TLS baseline is shown stalling (stalled / unstalled)"
        ),
        tcp,
        Cmp::AtMost,
        0.1,
    ));
    s.charts.push(Chart::Lines(
        "transport-stall.png",
        "Others' throughput with one application stalled",
        Lines {
            title: "Others' throughput with one stalled application (stalled / unstalled)".into(),
            x_label: "applications on the connection".into(),
            y_label: "stalled / unstalled".into(),
            series: lines,
            references: vec![Reference {
                y: 0.9,
                label: "goal 0.9x".into(),
            }],
        },
    ));
}

/// Finds `(loss %, transport, msgs/s)` triples anywhere in a loss section.
fn loss_points(
    v: &Value,
    loss: Option<f64>,
    transport: Option<&str>,
    out: &mut Vec<(f64, String, f64)>,
) {
    match v {
        Value::Object(map) => {
            let here_loss = ["loss_pct", "loss_percent", "percent"]
                .iter()
                .find_map(|k| map.get(*k).and_then(Value::as_f64))
                .or_else(|| {
                    ["loss", "probability", "drop"]
                        .iter()
                        .find_map(|k| map.get(*k).and_then(Value::as_f64))
                        .map(|p| if p <= 1.0 { p * 100.0 } else { p })
                })
                .or(loss);
            let here_transport = map.get("transport").and_then(Value::as_str).or(transport);
            let figure = ["msgs_per_s", "aggregate_msgs_per_s", "delivered_per_s"]
                .iter()
                .find_map(|k| map.get(*k).and_then(Value::as_f64));
            if let (Some(l), Some(t), Some(m)) = (here_loss, here_transport, figure) {
                out.push((l, t.to_owned(), m));
                return;
            }
            for (k, child) in map {
                let key_loss = parse_percent(k);
                let key_transport = TRANSPORTS
                    .iter()
                    .chain([&NODOSUM_BBR])
                    .find(|(t, _)| t == k)
                    .map(|(t, _)| *t);
                loss_points(
                    child,
                    key_loss.or(here_loss),
                    key_transport.or(here_transport),
                    out,
                );
            }
        }
        Value::Array(items) => {
            for item in items {
                loss_points(item, loss, transport, out);
            }
        }
        _ => {}
    }
}

/// `1%`, `1pct`, `loss_1`, `0.01` -> percent.
fn parse_percent(key: &str) -> Option<f64> {
    let digits: String = key
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let x: f64 = digits.parse().ok()?;
    Some(if x < 1.0 && key.contains('.') && !key.contains('%') {
        x * 100.0
    } else {
        x
    })
}

fn loss(key: &str, value: &Value, s: &mut Section) {
    let apps = value.get("apps").and_then(Value::as_u64);
    if let Some(why) = value.get("skipped").and_then(Value::as_str) {
        let _ = writeln!(
            s.markdown,
            "### Packet loss (`{key}`)\n\nNot measured in this run: {why}.\n"
        );
        for l in [1, 5] {
            s.goals.push(Goal::new(
                "transport",
                format!("{l}% packet loss: Nodosum / TCP+TLS aggregate multi-application msgs/s"),
                None,
                Cmp::AtLeast,
                1.5,
            ));
        }
        return;
    }
    let mut points = Vec::new();
    loss_points(value, None, None, &mut points);
    let mut levels: Vec<f64> = points.iter().map(|p| p.0).collect();
    levels.sort_by(f64::total_cmp);
    levels.dedup();
    if levels.is_empty() {
        generic(key, value, s);
        return;
    }
    let get = |l: f64, t: &str| {
        points
            .iter()
            .find(|p| (p.0 - l).abs() < 1e-9 && p.1 == t)
            .map(|p| p.2)
    };
    let mut t = Table::new(&[
        "loss",
        "TCP+TLS msgs/s",
        "raw QUIC msgs/s",
        "Nodosum msgs/s",
        "Nodosum (BBR) msgs/s",
        "raw QUIC / TCP",
        "Nodosum / TCP",
        "Nodosum (BBR) / TCP",
    ]);
    for &l in &levels {
        t.row(vec![
            format!("{l}%"),
            fmt_count(get(l, "tcp_tls")),
            fmt_count(get(l, "quic")),
            fmt_count(get(l, "nodosum")),
            fmt_count(get(l, NODOSUM_BBR.0)),
            fmt_ratio(ratio(get(l, "quic"), get(l, "tcp_tls"))),
            fmt_ratio(ratio(get(l, "nodosum"), get(l, "tcp_tls"))),
            fmt_ratio(ratio(get(l, NODOSUM_BBR.0), get(l, "tcp_tls"))),
        ]);
        if l > 0.0 {
            s.goals.push(Goal::new(
                "transport",
                format!("{l}% packet loss: Nodosum / TCP+TLS aggregate multi-application msgs/s"),
                ratio(get(l, "nodosum"), get(l, "tcp_tls")),
                Cmp::AtLeast,
                1.5,
            ));
            if get(l, NODOSUM_BBR.0).is_some() {
                s.goals.push(Goal::new(
                    "transport",
                    format!(
                        "{l}% packet loss, congestion = bbr: Nodosum (BBR) / TCP+TLS aggregate \
                         multi-application msgs/s"
                    ),
                    ratio(get(l, NODOSUM_BBR.0), get(l, "tcp_tls")),
                    Cmp::AtLeast,
                    1.5,
                ));
            }
        }
    }
    let _ = writeln!(
        s.markdown,
        "### Packet loss (`{key}`): aggregate throughput of {} applications on one connection over a lossy link\n\n{}{}",
        apps.map_or_else(|| "several".to_owned(), |a| a.to_string()),
        value
            .get("link")
            .and_then(Value::as_str)
            .map_or_else(String::new, |l| format!("Link: {l}.\n\n")),
        t.render()
    );
    let categories = levels.iter().map(|l| format!("{l}% loss")).collect();
    let series = [
        ("quic", "raw QUIC / TCP+TLS"),
        ("nodosum", "Nodosum / TCP+TLS"),
        (NODOSUM_BBR.0, "Nodosum (BBR) / TCP+TLS"),
    ]
    .iter()
    .map(|&(t, name)| {
        let values = levels
            .iter()
            .map(|&l| ratio(get(l, t), get(l, "tcp_tls")))
            .collect();
        (name.to_owned(), values)
    })
    .collect();
    s.charts.push(Chart::Bars(
        "transport-loss.png",
        "Throughput under packet loss relative to TCP+TLS",
        Bars {
            title: "Aggregate throughput under packet loss, relative to TCP+TLS".into(),
            y_label: "x TCP+TLS".into(),
            categories,
            series,
            references: vec![
                Reference {
                    y: 1.0,
                    label: "TCP+TLS".into(),
                },
                Reference {
                    y: 1.5,
                    label: "goal 1.5x (1 % and 5 %)".into(),
                },
            ],
        },
    ));
    let mut rest = Vec::new();
    flatten(value, key, &mut rest);
    let _ = writeln!(
        s.markdown,
        "<details><summary>all figures of <code>{key}</code></summary>\n\n{}\n</details>\n",
        leaves_table(&rest)
    );
}

/// Memory per connection: `{transport: {server_bytes_per_connection, client_...}}`.
fn memory(key: &str, value: &Value, s: &mut Section) {
    let _ = writeln!(
        s.markdown,
        "### Memory per idle connection (`{key}`, resident-set growth){}\n",
        value
            .get("connections")
            .and_then(Value::as_u64)
            .map_or_else(String::new, |n| format!(", {n} connections"))
    );
    if let Some(why) = value.get("skipped").and_then(Value::as_str) {
        let _ = writeln!(s.markdown, "Not measured in this run: {why}.\n");
        return;
    }
    let kib = |t: &str, k: &str| num(value, &[t, k]).map(|b| b / 1024.0);
    let found = TRANSPORTS
        .iter()
        .any(|(t, _)| kib(t, "server_bytes_per_connection").is_some());
    if !found {
        generic(key, value, s);
        return;
    }
    let mut t = Table::new(&[
        "transport",
        "serving side KiB/conn",
        "client side KiB/conn",
        "serving side / TCP+TLS",
        "error",
    ]);
    for (key, name) in TRANSPORTS {
        t.row(vec![
            name.to_owned(),
            fmt_num(kib(key, "server_bytes_per_connection"), 1),
            fmt_num(kib(key, "client_bytes_per_connection"), 1),
            fmt_ratio(ratio(
                kib(key, "server_bytes_per_connection"),
                kib("tcp_tls", "server_bytes_per_connection"),
            )),
            value
                .get(key)
                .and_then(|v| v.get("error"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        ]);
    }
    let _ = writeln!(s.markdown, "{}", t.render());
}

/// Any other section: every figure, by path.
fn generic(key: &str, value: &Value, s: &mut Section) {
    let mut leaves = Vec::new();
    flatten(value, key, &mut leaves);
    let _ = writeln!(
        s.markdown,
        "### `{key}`\n\n{}",
        if leaves.is_empty() {
            "_empty_\n".to_owned()
        } else {
            leaves_table(&leaves)
        }
    );
}

fn leaves_table(leaves: &[(String, String)]) -> String {
    let mut t = Table::new(&["figure", "value"]);
    for (k, v) in leaves.iter().take(400) {
        t.row(vec![format!("`{k}`"), v.clone()]);
    }
    t.render()
}

/// Flattens `v` into `(path, value)` leaves; array elements are named by their
/// `transport`/`apps`/`loss`/`name` fields when they have some.
fn flatten(v: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                flatten(child, &format!("{path}.{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let name: Vec<String> = ["transport", "name", "apps", "loss", "loss_pct", "size"]
                    .iter()
                    .filter_map(|k| match item.get(*k)? {
                        Value::String(s) => Some(s.clone()),
                        Value::Number(n) => Some(format!("{k}={n}")),
                        _ => None,
                    })
                    .collect();
                let label = if name.is_empty() {
                    i.to_string()
                } else {
                    name.join(",")
                };
                flatten(item, &format!("{path}[{label}]"), out);
            }
        }
        Value::Number(n) => {
            let text = n.as_f64().map_or_else(
                || n.to_string(),
                |x| {
                    if x.fract() == 0.0 {
                        fmt_count(Some(x))
                    } else {
                        format!("{x:.3}")
                    }
                },
            );
            out.push((path.to_owned(), text));
        }
        Value::String(s) => out.push((path.to_owned(), s.clone())),
        Value::Bool(b) => out.push((path.to_owned(), b.to_string())),
        Value::Null => out.push((path.to_owned(), "null".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn summary(p50: f64, p99: f64) -> Value {
        json!({ "n": 10, "p50_us": p50, "p95_us": p50, "p99_us": p99, "mean_us": p50, "max_us": p99 })
    }

    fn sample() -> Value {
        json!({
            "machine": { "cores": 2, "versions": "quinn 0.11" },
            "setup": {
                "tcp_tls/full": summary(600.0, 800.0),
                "tcp_tls/resumed": summary(350.0, 450.0),
                "quic/full": summary(900.0, 1000.0),
                "quic/resumed": summary(700.0, 900.0),
                "quic/0rtt": summary(400.0, 700.0),
                "nodosum/full": summary(1400.0, 2000.0),
                "nodosum/reconnect": summary(900.0, 1000.0),
                "nodosum/0rtt": summary(800.0, 1000.0),
            },
            "latency_64B": {
                "tcp_tls": summary(15.0, 16.0),
                "quic": summary(21.0, 25.0),
                "nodosum": summary(45.0, 75.0),
            },
            "throughput": {
                "64KiB": { "tcp_tls": {"msgs_per_s": 18000.0, "mb_per_s": 1200.0}, "quic": {"msgs_per_s": 12000.0, "mb_per_s": 780.0}, "nodosum": {"msgs_per_s": 12500.0, "mb_per_s": 820.0} },
                "1KiB": { "tcp_tls": {"msgs_per_s": 1_000_000.0, "mb_per_s": 1024.0, "cpu_us_per_msg": 1.25}, "quic": {"msgs_per_s": 500_000.0, "mb_per_s": 512.0, "cpu_us_per_msg": 3.5}, "nodosum": {"msgs_per_s": 460_000.0, "mb_per_s": 471.0, "cpu_us_per_msg": 4.25} },
                "64B": { "tcp_tls": {"msgs_per_s": 7e6, "mb_per_s": 448.0}, "quic": {"msgs_per_s": 8e6, "mb_per_s": 512.0}, "nodosum": {"msgs_per_s": 2e6, "mb_per_s": 128.0} },
            },
            "stall": [
                { "apps": 1, "transport": "nodosum", "unstalled": {"delivered_others": 600_000, "msgs_per_s": 600_000.0} },
                { "apps": 50, "transport": "tcp_tls", "unstalled": {"msgs_per_s": 1_000_000.0}, "stalled": {"msgs_per_s": 0.0} },
                { "apps": 50, "transport": "quic", "unstalled": {"msgs_per_s": 800_000.0}, "stalled": {"msgs_per_s": 790_000.0} },
                { "apps": 50, "transport": "nodosum", "unstalled": {"msgs_per_s": 500_000.0}, "stalled": {"msgs_per_s": 400_000.0} },
            ],
            "memory_per_connection": {
                "connections": 10,
                "tcp_tls": { "server_bytes_per_connection": 40960.0, "client_bytes_per_connection": 20480.0 },
                "quic": { "error": "no endpoint" },
                "nodosum": { "server_bytes_per_connection": 81920.0, "client_bytes_per_connection": 409600.0 },
            },
            "future_section": { "nodosum": { "bytes": 123_456 } },
        })
    }

    fn goal<'a>(s: &'a Section, what: &str) -> &'a Goal {
        s.goals
            .iter()
            .find(|g| g.what.contains(what))
            .unwrap_or_else(|| panic!("no goal {what}: {:?}", s.goals))
    }

    #[test]
    fn renders_every_known_section_with_goals() {
        let s = render(&sample());
        let md = &s.markdown;
        assert!(
            md.contains("| full | 0.60 / 0.80 | 0.90 / 1.00 | 1.40 / 2.00 | 1.50x | 1.56x |"),
            "{md}"
        );
        assert!(
            md.contains("| Nodosum | 45.0 | 45.0 | 75.0 | 3.00x | 3.00x |"),
            "{md}"
        );
        // Sizes sorted by bytes, not by name.
        let (a, b, c) = (
            md.find("| 64B |").unwrap(),
            md.find("| 1KiB |").unwrap(),
            md.find("| 64KiB |").unwrap(),
        );
        assert!(a < b && b < c);
        assert!(md.contains("| 1KiB | 1,000,000 (1024.0) | 500,000 (512.0) | 460,000 (471.0) | 0.50x | 0.92x | 0.46x | 1.25 / 3.50 / 4.25 |"), "{md}");
        assert!(md.contains("| 64B | 7,000,000 (448.0) | 8,000,000 (512.0) | 2,000,000 (128.0) | 1.14x | 0.25x | 0.29x | n/a / n/a / n/a |"), "a run without CPU figures: {md}");
        assert!(md.contains("| 50 | 1,000,000 | 0 | 0.00x | 800,000 | 790,000 | 0.99x | 500,000 | 400,000 | 0.80x |"), "{md}");
        let tp = goal(&s, "1 KiB msgs/s");
        assert!((tp.ratio.unwrap() - 0.92).abs() < 1e-9);
        assert_eq!(tp.met(), Some(true));
        assert_eq!(goal(&s, "round trip p99").met(), Some(false));
        assert_eq!(goal(&s, "Nodosum others'").met(), Some(false));
        assert_eq!(goal(&s, "shown stalling").met(), Some(true));
        let zero = goal(&s, "0-RTT");
        assert!((zero.ratio.unwrap() - 400.0 / 900.0).abs() < 1e-9);
        assert_eq!(zero.met(), Some(true));
        assert!(md.contains("| Nodosum | 80.0 | 400.0 | 2.00x |  |"), "{md}");
        assert!(
            md.contains("| raw QUIC | n/a | n/a | n/a | no endpoint |"),
            "{md}"
        );
        // An unknown section is listed, not dropped.
        assert!(
            md.contains("`future_section.nodosum.bytes` | 123,456 |"),
            "{md}"
        );
        assert_eq!(s.charts.len(), 3);
    }

    #[test]
    fn tolerates_missing_sections() {
        let s = render(&json!({ "throughput": {} }));
        assert!(s.markdown.contains("No connection set-up figures"));
        let tp = goal(&s, "1 KiB msgs/s");
        assert_eq!(tp.met(), None);
        let s = render(&json!("not an object"));
        assert!(s.goals.iter().all(|g| g.met().is_none()));
    }

    #[test]
    fn a_loss_section_gets_a_table_and_goals_whatever_its_nesting() {
        let mut r = sample();
        r["loss"] = json!({
            "1%": { "tcp_tls": {"msgs_per_s": 100_000.0}, "quic": {"msgs_per_s": 150_000.0}, "nodosum": {"msgs_per_s": 160_000.0} },
            "5%": { "tcp_tls": {"msgs_per_s": 10_000.0}, "quic": {"msgs_per_s": 12_000.0}, "nodosum": {"msgs_per_s": 14_000.0} },
        });
        let s = render(&r);
        assert!(
            s.markdown
                .contains("| 1% | 100,000 | 150,000 | 160,000 | n/a | 1.50x | 1.60x | n/a |"),
            "{}",
            s.markdown
        );
        assert_eq!(goal(&s, "1% packet loss").met(), Some(true));
        assert_eq!(goal(&s, "5% packet loss").met(), Some(false));

        let mut r = sample();
        r["packet_loss"] = json!([
            { "loss": 0.01, "transport": "tcp_tls", "msgs_per_s": 100.0 },
            { "loss": 0.01, "transport": "nodosum", "msgs_per_s": 200.0 },
        ]);
        let s = render(&r);
        assert!(
            s.markdown
                .contains("| 1% | 100 | n/a | 200 | n/a | n/a | 2.00x | n/a |"),
            "{}",
            s.markdown
        );
    }

    #[test]
    fn the_benchmarks_packet_loss_layout_and_a_skipped_one() {
        let mut r = sample();
        let level = |p: f64, tcp: f64, nodosum: f64, bbr: f64| {
            json!({
                "loss_percent": p,
                "tcp_tls": { "msgs_per_s": tcp, "mb_per_s": 1.0, "drop_ratio_percent": p },
                "quic": { "error": "timed out" },
                "nodosum": { "msgs_per_s": nodosum, "mb_per_s": 1.0 },
                "nodosum_bbr": { "msgs_per_s": bbr, "mb_per_s": 1.0 },
                "nodosum_vs_tcp": nodosum / tcp,
            })
        };
        r["packet_loss"] = json!({
            "apps": 10, "message_bytes": 1024, "window_s": 2.0, "link": "a veth pair",
            "loss_0pct": level(0.0, 300_000.0, 200_000.0, 600_000.0),
            "loss_1pct": level(1.0, 20_000.0, 60_000.0, 100_000.0),
            "loss_5pct": level(5.0, 2_000.0, 2_500.0, 7_000.0),
        });
        let s = render(&r);
        let md = &s.markdown;
        assert!(md.contains("of 10 applications"), "{md}");
        assert!(
            md.contains("| 0% | 300,000 | n/a | 200,000 | 600,000 | n/a | 0.67x | 2.00x |"),
            "{md}"
        );
        assert!(
            md.contains("| 5% | 2,000 | n/a | 2,500 | 7,000 | n/a | 1.25x | 3.50x |"),
            "{md}"
        );
        assert_eq!(goal(&s, "1% packet loss").met(), Some(true));
        assert_eq!(goal(&s, "5% packet loss").met(), Some(false));
        assert_eq!(
            goal(&s, "5% packet loss, congestion = bbr").met(),
            Some(true)
        );
        assert!(!s.goals.iter().any(|g| g.what.starts_with("0% packet")));
        assert!(md.contains("timed out"), "{md}");
        assert!(
            s.charts
                .iter()
                .any(|c| matches!(c, Chart::Bars("transport-loss.png", ..)))
        );

        let mut r = sample();
        r["packet_loss"] = json!({ "apps": 10, "skipped": "not running as root" });
        let s = render(&r);
        assert!(
            s.markdown
                .contains("Not measured in this run: not running as root.")
        );
        assert_eq!(goal(&s, "5% packet loss").met(), None);
    }

    #[test]
    fn size_labels_order_by_bytes() {
        assert_eq!(size_bytes("64B"), 64);
        assert_eq!(size_bytes("1KiB"), 1024);
        assert_eq!(size_bytes("64KiB"), 65536);
        assert!(size_bytes("huge") > size_bytes("64KiB"));
    }
}
