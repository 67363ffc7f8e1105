//! The machine and versions the figures were measured on.

use std::sync::OnceLock;
use std::time::Duration;

use crate::bench_report::procs::output_of;
use crate::bench_report::stats::Table;
use crate::util::project_root;

/// `(what, value)` pairs, in report order.
pub(crate) fn describe() -> Vec<(&'static str, String)> {
    let unknown = || "unknown".to_owned();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let nproc =
        std::thread::available_parallelism().map_or_else(|_| unknown(), |n| n.get().to_string());
    let git = |args: &[&str]| {
        let root = project_root();
        let mut all = vec!["-C", root.to_str().unwrap_or(".")];
        all.extend_from_slice(args);
        output_of("git", &all)
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(unknown);
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    vec![
        (
            "date (UTC)",
            output_of("date", &["-u", "+%Y-%m-%d %H:%M:%S"]).unwrap_or_else(unknown),
        ),
        ("cores (nproc)", nproc),
        ("CPU", cpu_model(&cpuinfo).unwrap_or_else(unknown)),
        (
            "memory",
            mem_total_gib(&meminfo).map_or_else(unknown, |g| format!("{g:.1} GiB")),
        ),
        (
            "kernel",
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| unknown(), |s| s.trim().to_owned()),
        ),
        ("rustc", output_of("rustc", &["-V"]).unwrap_or_else(unknown)),
        (
            "redis-server",
            output_of("redis-server", &["--version"]).unwrap_or_else(|| "not installed".into()),
        ),
        (
            "git commit",
            if dirty {
                format!("{commit} (with uncommitted changes)")
            } else {
                commit
            },
        ),
    ]
}

/// The pairs as a two-column Markdown table.
pub(crate) fn table(items: &[(&'static str, String)]) -> String {
    let mut t = Table::new(&["", ""]);
    for (k, v) in items {
        t.row(vec![(*k).to_owned(), v.clone()]);
    }
    t.render()
}

/// The machine's CPU time so far (all cores, clock ticks), from `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuTimes {
    /// Every state, stolen time included.
    pub(crate) total: u64,
    /// Idle, waiting for I/O included.
    pub(crate) idle: u64,
    /// Time the hypervisor ran something else while this machine wanted the CPU.
    pub(crate) steal: u64,
}

impl CpuTimes {
    /// Now (`None` where `/proc/stat` is missing or unreadable).
    pub(crate) fn now() -> Option<Self> {
        parse_cpu_times(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// The share of the CPU time since `earlier` that was stolen, 0..=1.
    pub(crate) fn steal_since(self, earlier: Self) -> Option<f64> {
        self.share_since(earlier, self.steal.saturating_sub(earlier.steal))
    }

    /// The share of the CPU time since `earlier` that ran something (neither idle nor
    /// stolen), 0..=1: near 1 the machine had no core to spare.
    pub(crate) fn busy_since(self, earlier: Self) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let idle = self.idle.saturating_sub(earlier.idle);
        let steal = self.steal.saturating_sub(earlier.steal);
        self.share_since(earlier, total.saturating_sub(idle + steal))
    }

    fn share_since(self, earlier: Self, part: u64) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total).filter(|&t| t > 0)?;
        #[allow(clippy::cast_precision_loss, reason = "tick counts far below 2^52")]
        Some(part as f64 / total as f64)
    }
}

/// The `cpu` line of `/proc/stat`: user nice system idle iowait irq softirq steal ...
fn parse_cpu_times(stat: &str) -> Option<CpuTimes> {
    let fields: Vec<u64> = stat
        .lines()
        .find(|l| l.starts_with("cpu "))?
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // guest and guest_nice (fields 9 and 10) are already counted in user and nice.
    Some(CpuTimes {
        total: fields.iter().take(8).sum(),
        idle: fields.get(3)? + fields.get(4)?,
        steal: *fields.get(7)?,
    })
}

/// The CPU time (user + system, every thread) process `pid` has used so far, from
/// `/proc/PID/stat`; `None` once it is gone or where there is no `/proc`.
pub(crate) fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_process_cpu(&stat, clock_ticks())
}

/// `utime` and `stime` (fields 14 and 15, in clock ticks) of a `/proc/PID/stat` line. The
/// command name (field 2) is in parentheses and may itself hold spaces and parentheses:
/// the fields are counted from the last `)`.
fn parse_process_cpu(stat: &str, ticks_per_second: u64) -> Option<Duration> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name: state (3), ppid (4), ... utime (14), stime (15).
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime + stime;
    let per = ticks_per_second.max(1);
    #[allow(clippy::cast_possible_truncation, reason = "below one second per tick")]
    let nanos = ((ticks % per) * 1_000_000_000 / per) as u32;
    Some(Duration::new(ticks / per, nanos))
}

/// The kernel's clock ticks per second for process times (`getconf CLK_TCK`; 100, the
/// value on every common Linux, where `getconf` is missing).
fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        output_of("getconf", &["CLK_TCK"])
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// The first `model name` of `/proc/cpuinfo`.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

/// `MemTotal` of `/proc/meminfo` in GiB.
fn mem_total_gib(meminfo: &str) -> Option<f64> {
    let kib: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_model_and_memory() {
        let cpu = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n";
        assert_eq!(cpu_model(cpu).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(cpu_model("processor : 0\n"), None);
        let mem = "MemTotal:       24117248 kB\nMemFree: 1 kB\n";
        let gib = mem_total_gib(mem).unwrap();
        assert!((gib - 23.0).abs() < 1e-9, "{gib}");
        assert_eq!(mem_total_gib("nothing"), None);
    }

    #[test]
    fn parses_cpu_times_and_the_stolen_share() {
        let stat = "cpu  100 5 20 800 10 0 5 60 7 0\ncpu0 50 2 10 400 5 0 2 30 0 0\nintr 1\n";
        let t0 = parse_cpu_times(stat).unwrap();
        assert_eq!(
            t0,
            CpuTimes {
                total: 1000,
                idle: 810,
                steal: 60
            }
        );
        let t1 = CpuTimes {
            total: 1200,
            idle: 860,
            steal: 110,
        };
        let share = t1.steal_since(t0).unwrap();
        assert!((share - 0.25).abs() < 1e-9, "{share}");
        // 200 ticks: 50 idle, 50 stolen, 100 busy.
        let busy = t1.busy_since(t0).unwrap();
        assert!((busy - 0.5).abs() < 1e-9, "{busy}");
        assert_eq!(t0.busy_since(t1), None, "time runs forward");
        assert_eq!(t0.steal_since(t0), None, "no time passed");
        assert_eq!(parse_cpu_times("cpu  1 2 x\n"), None);
        assert_eq!(parse_cpu_times("cpu  1 2 3\n"), None, "no steal column");
        assert!(CpuTimes::now().is_some(), "this machine has /proc/stat");
    }

    #[test]
    fn parses_process_cpu_time() {
        // A command name with spaces and parentheses; utime 250, stime 130 ticks.
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 130 0 0 20 0 3 0 100 0 0";
        assert_eq!(
            parse_process_cpu(stat, 100),
            Some(Duration::from_millis(3800))
        );
        assert_eq!(
            parse_process_cpu(stat, 1000),
            Some(Duration::from_millis(380))
        );
        assert_eq!(parse_process_cpu("4242 (cut) S 1 2", 100), None);
        assert_eq!(parse_process_cpu("no name at all", 100), None);
        // This process's own time grows while it computes.
        let me = std::process::id();
        let before = process_cpu(me).expect("this process has a /proc entry");
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while process_cpu(me) == Some(before) && start.elapsed() < Duration::from_secs(10) {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_add(i));
            }
        }
        assert!(process_cpu(me).unwrap() > before, "{x}");
        assert_eq!(process_cpu(u32::MAX), None, "no such process");
    }

    #[test]
    fn describes_this_machine() {
        let items = describe();
        assert!(items.iter().any(|(k, _)| *k == "rustc"));
        let text = table(&items);
        assert!(text.contains("| cores (nproc) |"), "{text}");
    }
}
