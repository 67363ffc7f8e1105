//! Two network namespaces joined by a veth pair, with random packet loss from an iptables
//! `statistic` rule: the lossy link of the packet-loss scenario (see [`crate::loss`]).
//!
//! The namespaces are `nqbench-<pid>-s` (server side, `10.77.0.1/24` on `nqb0`) and
//! `nqbench-<pid>-c` (client side, `10.77.0.2/24` on `nqb1`); nothing is configured in
//! the root namespace. Both veth ends have `gso_max_segs 1`, so that TCP segments and QUIC
//! datagrams cross the link (and the drop rule) one wire packet at a time rather than as
//! 64 KiB offload bundles, and an MTU of 1500. Each namespace's INPUT chain holds a
//! counting rule and, when loss is set, `-m statistic --mode random --probability P -j
//! DROP`: every packet, in both directions, is dropped with probability P.
//!
//! [`Lab`] removes both namespaces when dropped (also while unwinding from a panic), and
//! [`Lab::create`] first removes namespaces left behind by earlier runs whose process is
//! gone. Needs root, `ip` (iproute2) and `iptables`; [`unavailable`] says why not.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

/// Prefix of every namespace this module creates.
pub const PREFIX: &str = "nqbench-";

/// Address of the server side.
pub const SERVER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1));

/// Address of the client side.
pub const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 2));

/// Why the lab cannot be built here (not root, or a tool missing); `None` when it can.
pub fn unavailable() -> Option<String> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false);
    if !root {
        return Some("not running as root (network namespaces and iptables need it)".into());
    }
    for (tool, arg) in [("ip", "-V"), ("iptables", "-V")] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!("`{tool}` is not available"));
        }
    }
    None
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes `nqbench-*` namespaces whose creating process no longer runs.
pub fn remove_stale() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        let alive = !pid.is_empty() && std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !alive || pid == std::process::id().to_string() {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

/// Packet counters of one namespace's INPUT chain since the last [`Lab::set_loss`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets that reached INPUT.
    pub packets: u64,
    /// Their bytes (IP headers included).
    pub bytes: u64,
    /// Packets the statistic rule dropped.
    pub dropped: u64,
}

impl Counters {
    fn add(self, o: Self) -> Self {
        Self {
            packets: self.packets + o.packets,
            bytes: self.bytes + o.bytes,
            dropped: self.dropped + o.dropped,
        }
    }
}

/// The two namespaces and their veth link; removed on drop.
#[derive(Debug)]
pub struct Lab {
    /// Namespace of the server side ([`SERVER_IP`]).
    pub server_ns: String,
    /// Namespace of the client side ([`CLIENT_IP`]).
    pub client_ns: String,
}

impl Lab {
    /// Removes stale namespaces, then creates and links both.
    pub fn create() -> anyhow::Result<Self> {
        remove_stale();
        let pid = std::process::id();
        let lab = Self {
            server_ns: format!("{PREFIX}{pid}-s"),
            client_ns: format!("{PREFIX}{pid}-c"),
        };
        // From here on `lab`'s Drop removes whatever part was created.
        let (s, c) = (lab.server_ns.as_str(), lab.client_ns.as_str());
        run("ip", &["netns", "add", s])?;
        run("ip", &["netns", "add", c])?;
        // Created directly inside the namespaces: the root namespace never sees them.
        run(
            "ip",
            &[
                "link", "add", "nqb0", "netns", s, "type", "veth", "peer", "name", "nqb1", "netns",
                c,
            ],
        )?;
        for (ns, dev, addr) in [(s, "nqb0", "10.77.0.1/24"), (c, "nqb1", "10.77.0.2/24")] {
            run(
                "ip",
                &[
                    "-n",
                    ns,
                    "link",
                    "set",
                    dev,
                    "mtu",
                    "1500",
                    "gso_max_segs",
                    "1",
                ],
            )?;
            run("ip", &["-n", ns, "addr", "add", addr, "dev", dev])?;
            run("ip", &["-n", ns, "link", "set", dev, "up"])?;
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        }
        lab.set_loss(0.0)?;
        Ok(lab)
    }

    /// Replaces both namespaces' INPUT rules: count every packet, drop with probability
    /// `p` (no drop rule at 0). Resets the counters.
    pub fn set_loss(&self, p: f64) -> anyhow::Result<()> {
        let p = format!("{p:.4}");
        for ns in [&self.server_ns, &self.client_ns] {
            let ipt = |args: &[&str]| {
                let mut all = vec!["netns", "exec", ns.as_str(), "iptables", "-w"];
                all.extend_from_slice(args);
                run("ip", &all)
            };
            ipt(&["-F", "INPUT"])?;
            ipt(&["-A", "INPUT"])?;
            if p != "0.0000" {
                ipt(&[
                    "-A",
                    "INPUT",
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    "DROP",
                ])?;
            }
        }
        Ok(())
    }

    /// Zeroes both namespaces' counters.
    pub fn zero_counters(&self) -> anyhow::Result<()> {
        for ns in [&self.server_ns, &self.client_ns] {
            run(
                "ip",
                &["netns", "exec", ns, "iptables", "-w", "-Z", "INPUT"],
            )?;
        }
        Ok(())
    }

    /// Both namespaces' INPUT counters added up.
    pub fn counters(&self) -> anyhow::Result<Counters> {
        let mut total = Counters::default();
        for ns in [&self.server_ns, &self.client_ns] {
            let out = run(
                "ip",
                &[
                    "netns", "exec", ns, "iptables", "-w", "-L", "INPUT", "-v", "-n", "-x",
                ],
            )?;
            total = total.add(parse_counters(&out));
        }
        Ok(total)
    }

    /// Starts `exe args` inside namespace `ns` with piped stdin and stdout.
    pub fn spawn(
        &self,
        ns: &str,
        exe: &std::path::Path,
        args: &[String],
        env: &[(&str, String)],
    ) -> anyhow::Result<ChildProc> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(exe).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        ChildProc::spawn(cmd)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.server_ns, &self.client_ns] {
            // Deleting a namespace deletes its end of the veth pair (and so both).
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}

/// Reads the counting rule (no target) and the DROP rule of `iptables -L -v -n -x`.
fn parse_counters(listing: &str) -> Counters {
    let mut c = Counters::default();
    for line in listing.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(pkts), Some(bytes)) = (
            f.first().and_then(|v| v.parse::<u64>().ok()),
            f.get(1).and_then(|v| v.parse::<u64>().ok()),
        ) else {
            continue;
        };
        if f.get(2) == Some(&"DROP") {
            c.dropped += pkts;
        } else {
            c.packets += pkts;
            c.bytes += bytes;
        }
    }
    c
}

/// A child process with line-based stdin/stdout; killed (if still running) when dropped.
#[derive(Debug)]
pub struct ChildProc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl ChildProc {
    /// Spawns `cmd` with piped stdin and stdout (stderr inherited).
    pub fn spawn(mut cmd: Command) -> anyhow::Result<Self> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning a benchmark child process")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            stdin: child.stdin.take(),
            child,
            lines,
        })
    }

    /// Sends one command line.
    pub fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("child stdin closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// The next line the child prints, waiting at most `timeout`.
    pub fn line(&mut self, timeout: Duration) -> anyhow::Result<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(mpsc::RecvTimeoutError::Timeout) => bail!("child said nothing for {timeout:?}"),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = self.child.try_wait().ok().flatten();
                bail!("child ended (status {status:?})")
            }
        }
    }

    /// The process ID (for memory readings).
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        // Children exit when their stdin closes; kill the ones that do not in time.
        drop(self.stdin.take());
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_from_the_listing() {
        let listing = "Chain INPUT (policy ACCEPT 0 packets, 0 bytes)\n\
            \x20   pkts      bytes target     prot opt in     out     source               destination\n\
            \x20  10000 14000000            0    --  *      *       0.0.0.0/0            0.0.0.0/0\n\
            \x20    101   141400 DROP       0    --  *      *       0.0.0.0/0            0.0.0.0/0            statistic mode random probability 0.01000000000\n";
        assert_eq!(
            parse_counters(listing),
            Counters {
                packets: 10000,
                bytes: 14_000_000,
                dropped: 101
            }
        );
    }
}
