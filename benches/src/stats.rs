//! Percentiles of latency samples and the JSON report files.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

/// Distribution of a set of samples, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Arithmetic mean.
    pub mean_us: f64,
    /// Median (nearest rank).
    pub p50_us: f64,
    /// 95th percentile (nearest rank).
    pub p95_us: f64,
    /// 99th percentile (nearest rank).
    pub p99_us: f64,
    /// Largest sample.
    pub max_us: f64,
}

impl Summary {
    /// Summarises `samples` (sorted in place); `None` when there are none.
    pub fn of(samples: &mut [Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let rank = |p: f64| {
            // Nearest rank: the smallest sample with at least p of the samples at or below it.
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss,
                reason = "a rank between 1 and the sample count"
            )]
            let r = (p * samples.len() as f64).ceil() as usize;
            us(samples[r.clamp(1, samples.len()) - 1])
        };
        let total: Duration = samples.iter().sum();
        #[allow(clippy::cast_precision_loss, reason = "sample counts are small")]
        let mean_us = us(total) / samples.len() as f64;
        Some(Self {
            n: samples.len(),
            mean_us,
            p50_us: rank(0.50),
            p95_us: rank(0.95),
            p99_us: rank(0.99),
            max_us: us(samples[samples.len() - 1]),
        })
    }

    /// As a JSON object.
    pub fn to_json(&self) -> Value {
        json!({
            "n": self.n,
            "mean_us": self.mean_us,
            "p50_us": self.p50_us,
            "p95_us": self.p95_us,
            "p99_us": self.p99_us,
            "max_us": self.max_us,
        })
    }
}

/// User + system CPU time this process (every thread) has used so far, from
/// `/proc/self/stat`; `None` where there is no `/proc`. Clock ticks are taken as 1/100 s,
/// the `USER_HZ` of every common Linux.
pub fn process_cpu() -> Option<Duration> {
    let ticks = cpu_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    Some(Duration::from_millis(ticks * 10))
}

/// `utime` + `stime` (fields 14 and 15) of a `/proc/PID/stat` line, counted from the last
/// `)`: the command name (field 2) may hold spaces and parentheses.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = stat.rsplit_once(')')?.1;
    // After the command, field 3 (state) comes first: utime and stime are the 12th and 13th.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `target/bench-report` (or `$CARGO_TARGET_DIR/bench-report`).
pub fn report_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(
            || {
                // The workspace root is the parent of this crate's directory.
                let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
                manifest.parent().unwrap_or(manifest).join("target")
            },
            PathBuf::from,
        )
        .join("bench-report")
}

/// Writes `value` as pretty JSON to `report_dir()/<name>.json` and returns the path.
pub fn write_report(name: &str, value: &Value) -> std::io::Result<PathBuf> {
    let dir = report_dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    std::fs::write(&path, text)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let s = Summary::of(&mut samples).unwrap();
        assert_eq!(s.n, 100);
        assert!((s.p50_us - 50.0).abs() < 1e-9);
        assert!((s.p95_us - 95.0).abs() < 1e-9);
        assert!((s.p99_us - 99.0).abs() < 1e-9);
        assert!((s.max_us - 100.0).abs() < 1e-9);
        assert!((s.mean_us - 50.5).abs() < 1e-9);
        assert!(Summary::of(&mut []).is_none());
        let mut one = [Duration::from_micros(7)];
        assert!((Summary::of(&mut one).unwrap().p99_us - 7.0).abs() < 1e-9);
    }

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "77 (a (b) c) R 1 77 77 0 -1 4194304 10 0 0 0 250 130 0 0 20 0 9 0 5 0 0";
        assert_eq!(cpu_ticks(stat), Some(380));
        assert_eq!(cpu_ticks("77 (short) R 1"), None);
        assert_eq!(cpu_ticks("no command"), None);
        assert!(process_cpu().is_some(), "this process has /proc/self/stat");
    }
}
