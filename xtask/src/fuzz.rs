//! `cargo xtask fuzz`: bounded runs of the cargo-fuzz targets in `fuzz/`.

use std::process::Command;
use std::time::Duration;

use anyhow::bail;

use crate::util::{exec, on_path, project_root};

/// The fuzz targets, one per decoder (see `fuzz/fuzz_targets/`).
const TARGETS: &[&str] = &[
    "stream_init",
    "message_frames",
    "member",
    "envelope_open",
    "resp_requests",
];

/// Options of `cargo xtask fuzz`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Seconds to fuzz each target.
    #[arg(long, default_value_t = 60)]
    pub(crate) seconds: u64,
    /// Fuzz only this target (default: all of them in turn).
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    pub(crate) target: Option<String>,
}

/// Runs each target for `--seconds` with libFuzzer. Needs the nightly toolchain and
/// `cargo install cargo-fuzz`; crashes are written to `fuzz/artifacts/<target>/`.
pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    if !on_path("cargo-fuzz") {
        bail!(
            "cargo-fuzz is not installed: run `cargo install cargo-fuzz` (and `rustup toolchain install nightly`)"
        );
    }
    let budget = Duration::from_secs(args.seconds);
    let targets: Vec<&str> = match &args.target {
        Some(t) => vec![t.as_str()],
        None => TARGETS.to_vec(),
    };
    for target in targets {
        eprintln!("fuzzing {target} for {}s", budget.as_secs());
        // Through rustup, not `$CARGO`: the fuzz build needs the nightly toolchain.
        let mut cmd = Command::new("rustup");
        cmd.current_dir(project_root().join("fuzz"));
        cmd.args(["run", "nightly", "cargo", "fuzz", "run", target, "--"]);
        cmd.arg(format!("-max_total_time={}", budget.as_secs()));
        exec(&mut cmd)?;
    }
    Ok(())
}
