//! Helpers shared by the subcommands.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, PoisonError};

use anyhow::{Context, bail};

/// The workspace root (xtask lives one level below it).
pub(crate) fn project_root() -> PathBuf {
    let dir = env!("CARGO_MANIFEST_DIR");
    PathBuf::from(dir)
        .parent()
        .map_or_else(|| PathBuf::from(dir), PathBuf::from)
}

/// The cargo that runs this xtask, so toolchain overrides carry through.
pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(project_root());
    cmd
}

/// Runs `cmd`, echoing it first, and fails if it does not exit successfully.
pub(crate) fn exec(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("$ {}", describe(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed with {status}", describe(cmd));
    }
    Ok(())
}

/// Whether `program` can be found on `PATH`.
pub(crate) fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Ports [`free_tcp`] and [`free_udp`] handed out in this run.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A loopback TCP port free now, never handed out before in this run.
pub(crate) fn free_tcp() -> anyhow::Result<SocketAddr> {
    unused_port(|| TcpListener::bind("127.0.0.1:0")?.local_addr())
}

/// A loopback UDP port free now, never handed out before in this run.
pub(crate) fn free_udp() -> anyhow::Result<SocketAddr> {
    unused_port(|| UdpSocket::bind("127.0.0.1:0")?.local_addr())
}

/// Asks the kernel for a free port (`probe` binds port 0 and lets it go) until it gives
/// one not handed out before. The server a port is meant for binds it only once it has
/// started, and the kernel may give a released port to the very next probe: without
/// the check two servers of one run could be told the same port.
fn unused_port(probe: impl Fn() -> std::io::Result<SocketAddr>) -> anyhow::Result<SocketAddr> {
    const TRIES: usize = 64;
    for _ in 0..TRIES {
        let addr = probe().context("binding a loopback port to find a free one")?;
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
        if handed_out.insert(addr.port()) {
            return Ok(addr);
        }
    }
    bail!("the kernel gave only ports already handed out, {TRIES} times")
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_never_handed_out_twice() {
        let mut seen = BTreeSet::new();
        for _ in 0..200 {
            assert!(seen.insert(free_tcp().unwrap().port()), "a TCP port twice");
            assert!(seen.insert(free_udp().unwrap().port()), "a UDP port twice");
        }
    }
}
