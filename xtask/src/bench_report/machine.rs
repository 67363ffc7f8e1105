//! The machine and versions the figures were measured on.

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
        let total = self.total.checked_sub(earlier.total).filter(|&t| t > 0)?;
        let steal = self.steal.saturating_sub(earlier.steal);
        #[allow(clippy::cast_precision_loss, reason = "tick counts far below 2^52")]
        Some(steal as f64 / total as f64)
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
        steal: *fields.get(7)?,
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
                steal: 60
            }
        );
        let t1 = CpuTimes {
            total: 1200,
            steal: 110,
        };
        let share = t1.steal_since(t0).unwrap();
        assert!((share - 0.25).abs() < 1e-9, "{share}");
        assert_eq!(t0.steal_since(t0), None, "no time passed");
        assert_eq!(parse_cpu_times("cpu  1 2 x\n"), None);
        assert_eq!(parse_cpu_times("cpu  1 2 3\n"), None, "no steal column");
        assert!(CpuTimes::now().is_some(), "this machine has /proc/stat");
    }

    #[test]
    fn describes_this_machine() {
        let items = describe();
        assert!(items.iter().any(|(k, _)| *k == "rustc"));
        let text = table(&items);
        assert!(text.contains("| cores (nproc) |"), "{text}");
    }
}
