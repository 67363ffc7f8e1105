//! `cargo xtask`: the project's operations toolbox.
//!
//! One module per subcommand, each with a `run()`; few dependencies, so it builds fast.

// A command-line tool talks to its user on the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bench_report;
mod certs;
mod cluster;
mod faults;
mod fuzz;
mod test;
mod util;

use clap::{Parser, Subcommand};

/// Build, test and operate Nodosum and Mycel.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole test suite, as CI does: unit, property, integration and doc tests.
    Test(test::Args),
    /// Run the cargo-fuzz targets of every decoder for a bounded time each (needs nightly).
    Fuzz(fuzz::Args),
    /// Create a CA and one mTLS certificate + key per node, as PEM files.
    Certs(certs::Args),
    /// Run a local Mycel cluster on loopback until Ctrl-C.
    Cluster(cluster::Args),
    /// Fault scenarios (kill, partition, split, rolling restart, lossy link, clock) on a
    /// cluster in network namespaces, checked for lost writes and linearizability (root).
    Faults(faults::Args),
    /// Run every benchmark and side-by-side measurement; write one Markdown report with charts.
    BenchReport(bench_report::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Test(args) => test::run(&args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Certs(args) => certs::run(&args),
        Command::Cluster(args) => cluster::run(&args),
        Command::Faults(args) => faults::run(&args),
        Command::BenchReport(args) => bench_report::run(&args),
    }
}
