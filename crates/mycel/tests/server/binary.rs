//! The binary's command line, configuration errors, bind errors and signals.

use std::net::TcpListener;

use crate::util::{GUARD, Server, mycel};

#[test]
fn help_explains_the_flags() {
    let out = mycel().arg("--help").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--dev",
        "--config",
        "--node-id",
        "--cluster",
        "--gossip",
        "--quic",
        "--resp",
        "--admin",
        "--seed",
        "--replicas",
        "--max-memory",
        "--ca",
        "--cert",
        "--key",
        "--gossip-key",
        "--discovery",
        "--log-format",
        "--verbose",
        "Examples:",
        "redis-cli",
        "MYCEL.BUCKET",
    ] {
        assert!(text.contains(flag), "{flag} missing from --help:\n{text}");
    }
}

#[test]
fn bad_configuration_lists_every_problem_before_binding() {
    // The admin port is taken: if the server got as far as binding, it would say so.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let admin = taken.local_addr().expect("addr").to_string();
    let out = mycel()
        .args([
            "--node-id",
            "node-1",
            "--resp",
            "not-an-address",
            "--admin",
            &admin,
        ])
        .args([
            "--max-memory",
            "12zb",
            "--replicas",
            "0",
            "--log-format",
            "xml",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "--resp (resp)",
        "--max-memory (max_memory)",
        "--replicas (replicas)",
        "--log-format (log_format)",
        "--ca (ca)",
        "--gossip-key (gossip_key)",
    ] {
        assert!(err.contains(want), "{want} missing from:\n{err}");
    }
    assert!(
        !err.contains("address in use"),
        "bound before validating:\n{err}"
    );
}

#[test]
fn a_port_in_use_names_the_flag() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = mycel()
        .args(["--dev", "--resp", &addr, "--admin", "127.0.0.1:0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("--resp {addr}: address in use")),
        "{err}"
    );
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    crate::util::roundtrip(&mut c, b"PING\r\n", b"+PONG\r\n");
    let status = s.terminate();
    assert!(status.success(), "{status:?}");
    // The open connection was closed by the server.
    crate::util::expect_closed(&mut c);
    let _ = GUARD;
}

#[test]
fn standalone_warns_that_cluster_settings_are_unused() {
    let child = mycel()
        .args([
            "--dev",
            "--standalone",
            "--resp",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--seed",
            "127.0.0.1:7946",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    let pid = child.id();
    let mut child = child;
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let ready = lines.next().expect("ready line").expect("utf-8");
    assert!(ready.starts_with("mycel ready "), "{ready}");
    crate::util::signal(pid, "TERM");
    let out = crate::util::wait_output(child);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--standalone") && err.contains("--seed") && err.contains("ignored"),
        "{err}"
    );
}

/// A signal while the node still waits for its first routing table (here: for a seed
/// that never answers) stops it at once, without announcing it as ready.
#[test]
fn a_signal_during_startup_stops_the_node() {
    // A seed address that is bound, so nothing else answers there, and never replies.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let seed = silent.local_addr().expect("address").to_string();
    // The admin port is picked free and then given to the node, so another process may
    // take it in between (the node then exits, naming the port): that attempt is retried.
    let mut attempts = 0;
    let out = loop {
        attempts += 1;
        let admin = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let child = mycel()
            .args(["--dev", "--resp", "127.0.0.1:0", "--gossip", "127.0.0.1:0"])
            .args(["--quic", "127.0.0.1:0", "--seed", &seed])
            .args(["--admin", &admin.to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run");
        // The admin API answers (not serving yet) once the signal handlers are in place.
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(admin).is_err() {
            assert!(start.elapsed() < GUARD, "the admin API never came up");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        crate::util::signal(child.id(), "INT");
        let out = crate::util::wait_output(child);
        let stolen = String::from_utf8_lossy(&out.stderr)
            .contains(&format!("--admin {admin}: address in use"));
        if !stolen || attempts == 3 {
            break out;
        }
    };
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("mycel ready"), "{stdout}");
}
