//! Starting the server and talking to it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Failure guard for anything that waits.
pub(crate) const GUARD: Duration = Duration::from_secs(30);

/// The built `mycel` binary.
pub(crate) fn mycel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mycel"))
}

/// A running `mycel --dev` on ephemeral loopback ports (a one-node cluster unless started
/// with `--standalone`); killed on drop.
pub(crate) struct Server {
    child: Child,
    pub(crate) resp: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) node_id: String,
    /// The gossip address the node bound (what others use as `--seed`); `None` for a
    /// standalone node, which has none.
    pub(crate) gossip: Option<SocketAddr>,
    /// The RESP-over-TLS address, when started with `--resp-tls`.
    pub(crate) resp_tls: Option<SocketAddr>,
}

impl Server {
    /// Starts `mycel --dev` on 127.0.0.1:0 (RESP, admin, gossip and QUIC) with `extra`
    /// flags and waits for its ready line: a one-node cluster with its routing table.
    pub(crate) fn start(extra: &[&str]) -> Self {
        Self::spawn(&[&["--gossip", "127.0.0.1:0", "--quic", "127.0.0.1:0"], extra].concat())
    }

    /// Starts `mycel --dev --standalone` (no gossip, no QUIC) with `extra` flags.
    pub(crate) fn standalone(extra: &[&str]) -> Self {
        Self::spawn(&[&["--standalone"], extra].concat())
    }

    fn spawn(args: &[&str]) -> Self {
        let mut child = mycel()
            .args(["--dev", "--resp", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mycel");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let line = rx
            .recv_timeout(GUARD)
            .expect("mycel printed its ready line");
        let field = |name: &str| -> String {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("{name} in {line:?}"))
                .to_owned()
        };
        Self {
            resp: field("resp").parse().expect("resp address"),
            admin: field("admin").parse().expect("admin address"),
            node_id: field("node_id"),
            gossip: line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("gossip="))
                .map(|a| a.parse().expect("gossip address")),
            resp_tls: line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("resp_tls="))
                .map(|a| a.parse().expect("resp_tls address")),
            child,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A raw client connection with read/write guards.
    pub(crate) fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.resp).expect("connect");
        s.set_read_timeout(Some(GUARD)).expect("timeout");
        s.set_write_timeout(Some(GUARD)).expect("timeout");
        s
    }

    /// `redis-cli --no-raw -p PORT args...`: its stdout, trimmed at the end.
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        let out = redis_cli()
            .args([
                "--no-raw",
                "-h",
                "127.0.0.1",
                "-p",
                &self.resp.port().to_string(),
            ])
            .args(args)
            .output()
            .expect("run redis-cli");
        assert!(out.status.success(), "redis-cli {args:?} failed: {out:?}");
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim_end()
            .to_owned()
    }

    /// Several commands over one `redis-cli` connection (one command per line on stdin);
    /// its stdout, one reply per line.
    pub(crate) fn cli_session(&self, script: &str) -> String {
        let mut child = redis_cli()
            .args([
                "--no-raw",
                "-h",
                "127.0.0.1",
                "-p",
                &self.resp.port().to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run redis-cli");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write script");
        let out = wait_output(child);
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim_end()
            .to_owned()
    }

    /// An HTTP/1.1 request to the admin API: status and body.
    pub(crate) fn http(&self, method: &str, path: &str) -> (u16, String) {
        self.http_with(method, path, "")
    }

    /// [`http`](Self::http) with extra header lines (each ending in CRLF).
    pub(crate) fn http_with(&self, method: &str, path: &str, headers: &str) -> (u16, String) {
        let mut s = TcpStream::connect(self.admin).expect("connect admin");
        s.set_read_timeout(Some(GUARD)).expect("timeout");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .expect("send request");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read response");
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("status line in {text:?}"));
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// `redis-cli` with `args`, without asserting success: its stdout (trimmed) or, when it
    /// printed nothing there, its stderr. For polling while a cluster settles.
    pub(crate) fn try_cli(&self, args: &[&str]) -> String {
        let out = redis_cli()
            .args([
                "--no-raw",
                "-h",
                "127.0.0.1",
                "-p",
                &self.resp.port().to_string(),
            ])
            .args(args)
            .output()
            .expect("run redis-cli");
        let text = if out.stdout.is_empty() {
            out.stderr
        } else {
            out.stdout
        };
        String::from_utf8_lossy(&text).trim_end().to_owned()
    }

    /// Kills the process at once (SIGKILL): no leave, no drain.
    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit, failing after [`GUARD`].
    pub(crate) fn terminate(self) -> std::process::ExitStatus {
        self.signal_and_wait("TERM")
    }

    /// Sends signal `name` and waits for the exit, failing after [`GUARD`].
    pub(crate) fn signal_and_wait(mut self, name: &str) -> std::process::ExitStatus {
        signal(self.pid(), name);
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                start.elapsed() < GUARD,
                "mycel did not exit after SIG{name}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The value of an unlabelled series in the admin API's `/metrics`.
    pub(crate) fn metric(&self, series: &str) -> u64 {
        let (status, body) = self.http("GET", "/metrics");
        assert_eq!(status, 200, "{body}");
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} in {body}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal to one process by its ID.
pub(crate) fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// Waits for a child, killing it after [`GUARD`].
pub(crate) fn wait_output(mut child: Child) -> Output {
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > GUARD {
            let _ = child.kill();
            panic!("child did not finish within {GUARD:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

fn tool(name: &str) -> Command {
    match Command::new(name).arg("--version").output() {
        Ok(out) if out.status.success() => Command::new(name),
        _ => panic!(
            "`{name}` is required by these tests and was not found: install it with \
             `apt-get install -y redis-tools` (Debian/Ubuntu)"
        ),
    }
}

/// The real `redis-cli`; the test fails with installation advice if it is missing.
pub(crate) fn redis_cli() -> Command {
    tool("redis-cli")
}

/// The real `redis-benchmark`; the test fails with installation advice if it is missing.
pub(crate) fn redis_benchmark() -> Command {
    tool("redis-benchmark")
}

/// Writes `request` and reads exactly `expected.len()` bytes, comparing them.
pub(crate) fn roundtrip(s: &mut TcpStream, request: &[u8], expected: &[u8]) {
    s.write_all(request).expect("write");
    expect_bytes(s, expected);
}

/// Reads exactly `expected.len()` bytes and compares them.
pub(crate) fn expect_bytes(s: &mut TcpStream, expected: &[u8]) {
    let mut got = vec![0; expected.len()];
    s.read_exact(&mut got)
        .unwrap_or_else(|e| panic!("reading {:?}: {e}", String::from_utf8_lossy(expected)));
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(expected)
    );
}

/// Asserts the server closed the connection (EOF, nothing more sent).
pub(crate) fn expect_closed(s: &mut TcpStream) {
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "more bytes after close: {rest:?}"),
        // A reset also means closed.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("expected EOF, got {e}"),
    }
}

/// Polls `f` until it returns true, failing after [`GUARD`].
pub(crate) fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < GUARD,
            "{what} did not happen within {GUARD:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
