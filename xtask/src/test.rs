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

/// Runs every test of the workspace: with cargo-nextest when it is installed (parallel,
/// one process per test), otherwise with `cargo test`; then the doc tests, which nextest
/// does not run.
pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let mut cmd = cargo();
    if on_path("cargo-nextest") {
        cmd.args([
            "nextest",
            "run",
            "--workspace",
            "--all-targets",
            "--no-fail-fast",
        ]);
        if args.ignored {
            cmd.arg("--run-ignored=all");
        }
        if let Some(filter) = &args.filter {
            cmd.arg(filter);
        }
    } else {
        cmd.args(["test", "--workspace", "--all-targets", "--no-fail-fast"]);
        if let Some(filter) = &args.filter {
            cmd.arg(filter);
        }
        if args.ignored {
            cmd.args(["--", "--include-ignored"]);
        }
    }
    exec(&mut cmd)?;
    let mut doc = cargo();
    doc.args(["test", "--workspace", "--doc"]);
    if let Some(filter) = &args.filter {
        doc.arg(filter);
    }
    exec(&mut doc)
}
