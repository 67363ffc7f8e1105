//! The test network: one network namespace per node and a "switch" namespace with a Linux
//! bridge that every node's veth pair plugs into. Addresses are `10.77.0.K/24` for node K
//! and `10.77.0.254/24` for the bridge, where the orchestrator and the client load run.
//! Nothing is configured in the caller's namespace: each veth pair is created inside the
//! switch namespace with its peer placed straight into the node's namespace.
//!
//! Faults are commands in those namespaces: a link set down at the switch (partition),
//! `iptables` DROP rules between groups (split), and `iptables -m statistic` random drops
//! (a lossy link; this kernel has no netem).

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Every namespace this command creates starts with this (stale ones are removed at start).
pub(crate) const PREFIX: &str = "mfx-";
/// The switch namespace.
pub(crate) const SWITCH: &str = "mfx-sw";
/// The bridge inside the switch namespace.
const BRIDGE: &str = "mfxbr0";
/// The node's side of its veth pair, inside the node's namespace.
pub(crate) const NODE_DEV: &str = "eth0";

/// Node `k`'s namespace (1-based).
pub(crate) fn node_ns(k: u8) -> String {
    format!("{PREFIX}n{k}")
}

/// The switch's side of node `k`'s veth pair.
fn port(k: u8) -> String {
    format!("mfxp{k}")
}

/// Node `k`'s address.
pub(crate) fn node_ip(k: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, k)
}

/// The switch's (orchestrator's) address.
pub(crate) const SWITCH_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 254);

/// A command line as words.
pub(crate) type Line = Vec<String>;

fn line(words: &[&str]) -> Line {
    words.iter().map(|w| (*w).to_owned()).collect()
}

/// The `ip` commands that build the network for `nodes` nodes, in order.
pub(crate) fn setup_commands(nodes: u8) -> Vec<Line> {
    let sw = SWITCH;
    let bridge_addr = format!("{SWITCH_IP}/24");
    let mut out = vec![
        line(&["ip", "netns", "add", sw]),
        line(&["ip", "-n", sw, "link", "set", "lo", "up"]),
        line(&[
            "ip",
            "-n",
            sw,
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
        ]),
        line(&["ip", "-n", sw, "addr", "add", &bridge_addr, "dev", BRIDGE]),
        line(&["ip", "-n", sw, "link", "set", BRIDGE, "up"]),
    ];
    for k in 1..=nodes {
        let ns = node_ns(k);
        let port = port(k);
        let addr = format!("{}/24", node_ip(k));
        out.extend([
            line(&["ip", "netns", "add", &ns]),
            line(&["ip", "-n", &ns, "link", "set", "lo", "up"]),
            line(&[
                "ip", "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", NODE_DEV,
                "netns", &ns,
            ]),
            line(&["ip", "-n", sw, "link", "set", &port, "master", BRIDGE]),
            line(&["ip", "-n", sw, "link", "set", &port, "up"]),
            line(&["ip", "-n", &ns, "addr", "add", &addr, "dev", NODE_DEV]),
            line(&["ip", "-n", &ns, "link", "set", NODE_DEV, "up"]),
        ]);
    }
    out
}

/// Cuts (`up == false`) or restores node `k`'s link at the switch.
pub(crate) fn link_command(k: u8, up: bool) -> Line {
    let state = if up { "up" } else { "down" };
    line(&["ip", "-n", SWITCH, "link", "set", &port(k), state])
}

fn iptables(k: u8, rule: &[&str]) -> Line {
    let ns = node_ns(k);
    let mut l = line(&["ip", "netns", "exec", &ns, "iptables", "-w"]);
    l.extend(rule.iter().map(|w| (*w).to_owned()));
    l
}

/// Rules, applied in the minority nodes' namespaces, that drop all traffic between the
/// `minority` and the `majority` in both directions.
pub(crate) fn split_commands(minority: &[u8], majority: &[u8]) -> Vec<Line> {
    let mut out = Vec::new();
    for &m in minority {
        for &other in majority {
            let ip = node_ip(other).to_string();
            out.push(iptables(m, &["-A", "INPUT", "-s", &ip, "-j", "DROP"]));
            out.push(iptables(m, &["-A", "OUTPUT", "-d", &ip, "-j", "DROP"]));
        }
    }
    out
}

/// Rules in node `k`'s namespace that count every packet it receives (a rule without a
/// target) and then drop `percent` % of them at random.
pub(crate) fn loss_commands(k: u8, percent: f64) -> Vec<Line> {
    let p = format!("{:.4}", percent / 100.0);
    vec![
        iptables(k, &["-A", "INPUT", "-i", NODE_DEV]),
        iptables(
            k,
            &[
                "-A",
                "INPUT",
                "-i",
                NODE_DEV,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ],
        ),
    ]
}

/// Removes every rule of node `k`'s namespace (only this command puts rules there).
pub(crate) fn flush_commands(k: u8) -> Vec<Line> {
    vec![
        iptables(k, &["-F", "INPUT"]),
        iptables(k, &["-F", "OUTPUT"]),
    ]
}

/// The command that lists node `k`'s INPUT rules with exact packet counters.
pub(crate) fn counters_command(k: u8) -> Line {
    iptables(k, &["-L", "INPUT", "-v", "-n", "-x"])
}

/// From `iptables -L INPUT -v -n -x` output of the [`loss_commands`] rules: packets
/// dropped (DROP rules) and packets received (the counting rule, which has no target).
pub(crate) fn parse_counters(text: &str) -> Option<(u64, u64)> {
    let (mut dropped, mut received) = (0, None);
    for l in text.lines().skip(2) {
        let mut w = l.split_whitespace();
        let Some(pkts) = w.next().and_then(|p| p.parse::<u64>().ok()) else {
            continue;
        };
        let _bytes = w.next();
        if w.next() == Some("DROP") {
            dropped += pkts;
        } else {
            received = Some(received.unwrap_or(0) + pkts);
        }
    }
    Some((dropped, received?))
}

/// Runs one command line quietly and returns its stdout; fails with its stderr.
pub(crate) fn run_output(l: &[String]) -> anyhow::Result<String> {
    let (program, args) = l.split_first().context("empty command line")?;
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not run `{}`", l.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            l.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs one command line quietly; fails with its stderr.
pub(crate) fn run(l: &[String]) -> anyhow::Result<()> {
    run_output(l).map(drop)
}

/// `ip ARGS`, quietly, returning its stdout.
fn output(args: &[&str]) -> anyhow::Result<String> {
    let line: Vec<String> = std::iter::once("ip")
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect();
    run_output(&line)
}

/// Namespace names in `ip netns list` output that carry `prefix`.
pub(crate) fn ours(list: &str, prefix: &str) -> Vec<String> {
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// Kills every process left in namespace `ns`, then deletes it (which removes its veth
/// ends and the bridge).
fn remove(ns: &str) {
    if let Ok(pids) = output(&["netns", "pids", ns]) {
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill")
                .args(["-KILL", pid])
                .stderr(Stdio::null())
                .status();
        }
    }
    if let Err(e) = output(&["netns", "del", ns]) {
        eprintln!("warning: {e}");
    }
}

/// Removes the namespaces an earlier, interrupted run left behind.
pub(crate) fn remove_stale() -> anyhow::Result<()> {
    let list = output(&["netns", "list"])?;
    let stale = ours(&list, PREFIX);
    if !stale.is_empty() {
        eprintln!(
            "removing namespaces left by an earlier run: {}",
            stale.join(" ")
        );
    }
    for ns in stale {
        remove(&ns);
    }
    Ok(())
}

/// The network while it exists: dropping it kills what runs inside and deletes it.
#[derive(Debug)]
pub(crate) struct Topology {
    namespaces: Vec<String>,
}

impl Topology {
    /// Builds the network for `nodes` nodes.
    pub(crate) fn create(nodes: u8) -> anyhow::Result<Self> {
        let mut topo = Self {
            namespaces: vec![SWITCH.to_owned()],
        };
        topo.namespaces.extend((1..=nodes).map(node_ns));
        for l in setup_commands(nodes) {
            // On failure `topo` drops and removes whatever was created.
            run(&l).context("building the test network")?;
        }
        Ok(topo)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Nodes first, the switch (with the bridge) last.
        for ns in self.namespaces.iter().rev() {
            remove(ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(lines: &[Line]) -> Vec<String> {
        lines.iter().map(|l| l.join(" ")).collect()
    }

    #[test]
    fn setup_builds_a_bridge_and_one_veth_per_node() {
        let t = text(&setup_commands(3));
        assert_eq!(t.len(), 5 + 3 * 7);
        assert_eq!(t[0], "ip netns add mfx-sw");
        assert!(t.contains(&"ip -n mfx-sw addr add 10.77.0.254/24 dev mfxbr0".to_owned()));
        assert!(t.contains(
            &"ip -n mfx-sw link add mfxp2 type veth peer name eth0 netns mfx-n2".to_owned()
        ));
        assert!(t.contains(&"ip -n mfx-n3 addr add 10.77.0.3/24 dev eth0".to_owned()));
        assert!(t.contains(&"ip -n mfx-n1 link set lo up".to_owned()));
        // Every command names a namespace of ours: nothing touches the caller's.
        for l in &t {
            assert!(l.contains(" mfx-"), "{l}");
            assert!(!l.contains("127.0.0.1"), "{l}");
        }
        // A namespace exists before anything is done inside it.
        let add = t.iter().position(|l| l == "ip netns add mfx-n2").unwrap();
        let veth = t.iter().position(|l| l.contains("netns mfx-n2")).unwrap();
        assert!(add < veth);
    }

    #[test]
    fn fault_commands() {
        assert_eq!(
            link_command(2, false).join(" "),
            "ip -n mfx-sw link set mfxp2 down"
        );
        assert_eq!(
            link_command(2, true).join(" "),
            "ip -n mfx-sw link set mfxp2 up"
        );
        let split = text(&split_commands(&[4, 5], &[1, 2, 3]));
        assert_eq!(split.len(), 12);
        assert_eq!(
            split[0],
            "ip netns exec mfx-n4 iptables -w -A INPUT -s 10.77.0.1 -j DROP"
        );
        assert_eq!(
            split[1],
            "ip netns exec mfx-n4 iptables -w -A OUTPUT -d 10.77.0.1 -j DROP"
        );
        assert!(
            split
                .iter()
                .all(|l| l.contains("mfx-n4") || l.contains("mfx-n5"))
        );
        assert_eq!(
            text(&loss_commands(1, 1.0)),
            [
                "ip netns exec mfx-n1 iptables -w -A INPUT -i eth0",
                "ip netns exec mfx-n1 iptables -w -A INPUT -i eth0 -m statistic --mode random --probability 0.0100 -j DROP"
            ]
        );
        assert!(text(&loss_commands(3, 20.0))[1].contains("--probability 0.2000"));
        assert_eq!(
            text(&flush_commands(3)),
            [
                "ip netns exec mfx-n3 iptables -w -F INPUT",
                "ip netns exec mfx-n3 iptables -w -F OUTPUT"
            ]
        );
    }

    #[test]
    fn drop_counters_are_read() {
        let text = "Chain INPUT (policy ACCEPT 0 packets, 0 bytes)
    pkts      bytes target     prot opt in     out     source               destination
   10100   909000            0    --  eth0   *       0.0.0.0/0            0.0.0.0/0
     101     9000 DROP       0    --  eth0   *       0.0.0.0/0            0.0.0.0/0            statistic mode random probability 0.00999999978
";
        assert_eq!(parse_counters(text), Some((101, 10100)));
        assert_eq!(parse_counters(""), None);
        assert_eq!(
            counters_command(2).join(" "),
            "ip netns exec mfx-n2 iptables -w -L INPUT -v -n -x"
        );
    }

    #[test]
    fn only_our_namespaces_are_stale() {
        let list = "mfx-n1 (id: 3)\nnqbench-s (id: 1)\nmfx-sw\nother\n";
        assert_eq!(ours(list, PREFIX), ["mfx-n1", "mfx-sw"]);
        assert!(ours("", PREFIX).is_empty());
    }
}
