//! A real dnsmasq on 127.0.0.1 with records the test gives, killed on drop.

use std::ffi::OsStr;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running dnsmasq child process.
pub(crate) struct Dnsmasq {
    child: Option<Child>,
    pub(crate) addr: SocketAddr,
    dir: tempfile::TempDir,
    binary: PathBuf,
}

/// The dnsmasq binary: `$DNSMASQ` if set, else `dnsmasq` on `PATH` or in `/usr/sbin`.
fn find_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("DNSMASQ") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "DNSMASQ={} is not a file. The DNS discovery tests need a real dnsmasq: \
             install it with `apt-get update && apt-get install -y dnsmasq`",
            path.display()
        );
        return path;
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("dnsmasq"))
                .collect()
        })
        .unwrap_or_default();
    candidates.push("/usr/sbin/dnsmasq".into());
    candidates.push("/sbin/dnsmasq".into());
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "dnsmasq is not installed, but the DNS discovery tests need a real DNS server. \
             Install it with `apt-get update && apt-get install -y dnsmasq` \
             (or the `dnsmasq-base` package, which ships only the binary); .ci/run does this."
            )
        })
}

/// A port free on 127.0.0.1 for both UDP and TCP.
fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("local addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1");
}

impl Dnsmasq {
    /// Starts dnsmasq on a fresh port, authoritative (`--local`) for `test` and
    /// `cluster.local`, with `records` as extra command-line options.
    pub(crate) fn start<S: AsRef<OsStr>>(records: &[S]) -> Self {
        let mut d = Self {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            dir: tempfile::tempdir().expect("tempdir"),
            binary: find_binary(),
        };
        d.spawn(records);
        d
    }

    /// Stops dnsmasq and starts it again on the same port with other records: dnsmasq
    /// re-reads only some files on SIGHUP, command-line records never.
    pub(crate) fn restart<S: AsRef<OsStr>>(&mut self, records: &[S]) {
        self.stop();
        self.spawn(records);
    }

    /// Stops dnsmasq; the port stays reserved by nobody.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn spawn<S: AsRef<OsStr>>(&mut self, records: &[S]) {
        let log_path = self.dir.path().join("dnsmasq.log");
        let log = File::create(&log_path).expect("log file");
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--keep-in-foreground")
            .arg("--conf-file=/dev/null")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg("--no-poll")
            .arg("--bind-interfaces")
            .arg("--listen-address=127.0.0.1")
            .arg(format!("--port={}", self.addr.port()))
            .arg("--pid-file=")
            .arg("--log-facility=-")
            .arg("--local=/test/")
            .arg("--local=/cluster.local/")
            .args(records)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let mut child = cmd.spawn().expect("spawn dnsmasq");
        // Ready when the TCP listener accepts (dnsmasq binds UDP and TCP together).
        let deadline = Instant::now() + crate::GUARD;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let args: Vec<&OsStr> = records.iter().map(AsRef::as_ref).collect();
                panic!("dnsmasq exited early ({status}); args {args:?}; log:\n{log}");
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "dnsmasq did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}
