//! `cargo xtask test`: the project's one test command.

use crate::util::{cargo, exec, on_path};

/// Options of `cargo xtask test`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Also run the tests marked `#[ignore]` (long simulations, large clusters).
    #[arg(long)]
    pub(crate) ignored: bool,
    /// Only run tests whose name contains this filter.
    pub(crate) filter: Option<String>,
}

/// Programs the integration tests run as real peers, and the Debian package of each.
const PEERS: &[(&str, &str)] = &[
    ("dnsmasq", "dnsmasq"),
    ("redis-cli", "redis-tools"),
    ("redis-benchmark", "redis-tools"),
];

/// Runs every test of the workspace: the doc tests first (nextest does not run them), then
/// everything else with cargo-nextest when it is installed (parallel, one process per
/// test) or `cargo test` otherwise, so the run ends with the main summary.
pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    ensure_peers()?;
    let mut doc = cargo();
    doc.args(["test", "--workspace", "--doc"]);
    if let Some(filter) = &args.filter {
        doc.arg(filter);
    }
    exec(&mut doc)?;
    let mut cmd = cargo();
    if on_path("cargo-nextest") {
        // Libraries, binaries and integration tests; benchmarks only need to compile, which
        // clippy's `--all-targets` run checks.
        cmd.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
        if args.ignored {
            cmd.arg("--run-ignored=all");
        }
        if let Some(filter) = &args.filter {
            cmd.arg(filter);
        }
    } else {
        cmd.args(["test", "--workspace", "--no-fail-fast"]);
        if let Some(filter) = &args.filter {
            cmd.arg(filter);
        }
        if args.ignored {
            cmd.args(["--", "--include-ignored"]);
        }
    }
    exec(&mut cmd)
}

/// Makes sure the real peers the tests talk to are installed: installs the missing ones
/// with apt-get when running as root on Debian, otherwise says what to install.
fn ensure_peers() -> anyhow::Result<()> {
    let mut missing: Vec<&str> = PEERS
        .iter()
        .filter(|(bin, _)| !on_path(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root || !on_path("apt-get") {
        anyhow::bail!(
            "the tests need {}: install with `apt-get install -y {}` (as root), then run again",
            missing.join(" and "),
            missing.join(" ")
        );
    }
    eprintln!(
        "installing {} for the integration tests",
        missing.join(", ")
    );
    exec(std::process::Command::new("apt-get").args(["update", "-q"]))?;
    exec(
        std::process::Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
}
