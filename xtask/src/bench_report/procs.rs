//! Child processes of the report: each in its own process group, registered so that
//! Ctrl-C kills every one of them, and killed again by its guard's `Drop` on any error.

use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};

/// Set by the first Ctrl-C; every wait loop checks it.
pub(crate) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Process groups (leader pids) to kill on Ctrl-C.
static GROUPS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Ctrl-C: remember it, and kill every registered process group at once (the main thread
/// then stops at its next check and the guards' `Drop` reap what is left).
pub(crate) fn install_ctrlc() -> anyhow::Result<()> {
    ctrlc::set_handler(|| {
        INTERRUPTED.store(true, Ordering::SeqCst);
        let groups = GROUPS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for pid in groups {
            kill_group(pid);
        }
    })
    .context("installing the Ctrl-C handler")
}

/// Fails with "interrupted" once Ctrl-C was pressed.
pub(crate) fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn register(pid: u32) {
    GROUPS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(pid);
}

fn unregister(pid: u32) {
    GROUPS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|p| *p != pid);
}

/// SIGKILL to the process group led by `pid` (the whole tree: cargo and what it runs).
fn kill_group(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// SIGKILL to one process.
pub(crate) fn kill_pid(pid: u32) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -KILL {pid} failed with {status}");
    }
    Ok(())
}

/// Registers pids that someone else spawned (the nodes of a `cluster::Cluster`) for the
/// Ctrl-C handler, until dropped.
#[derive(Debug)]
pub(crate) struct Registered(Vec<u32>);

impl Registered {
    pub(crate) fn new(pids: Vec<u32>) -> Self {
        for &p in &pids {
            register(p);
        }
        Self(pids)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        for &p in &self.0 {
            unregister(p);
        }
    }
}

/// A child process in its own process group; dropping it kills the group.
#[derive(Debug)]
pub(crate) struct Owned {
    pub(crate) name: String,
    child: Child,
}

impl Owned {
    /// Spawns `cmd` in a new process group (Ctrl-C on the terminal does not reach it;
    /// the handler kills it).
    pub(crate) fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Self> {
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(cmd, 0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        register(child.id());
        Ok(Self {
            name: name.to_owned(),
            child,
        })
    }

    /// Spawns a long-running server with stdout and stderr to `log`.
    pub(crate) fn server(name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Self> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        Self::spawn(name, cmd)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads the child's piped stdout and stderr to their ends and waits for it.
    pub(crate) fn wait_with_output(mut self) -> anyhow::Result<std::process::Output> {
        let read_all = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut buf);
                }
                buf
            })
        };
        let out = read_all(
            self.child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let err = read_all(
            self.child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let status = self.child.wait().context("waiting for the child")?;
        Ok(std::process::Output {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        })
    }

    /// The exit status if the process has ended.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let pid = self.child.id();
        if self.exited().is_none() {
            kill_group(pid);
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        unregister(pid);
    }
}

/// Runs `cmd` to completion with a spinner showing its latest output line; all output is
/// also written to `log`. Returns the stdout lines. Fails on a non-zero exit (with the
/// log's tail) and on Ctrl-C (the child's group is killed).
pub(crate) fn run_streamed(
    label: &str,
    cmd: &mut Command,
    log: &Path,
) -> anyhow::Result<Vec<String>> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let file = Arc::new(Mutex::new(file));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut owned = Owned::spawn(label, cmd)?;
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix} [{elapsed}] {wide_msg}")
            .expect("invariant: a valid template"),
    );
    bar.set_prefix(label.to_owned());
    bar.enable_steady_tick(Duration::from_millis(120));
    let stdout = owned.child.stdout.take().context("stdout of the child")?;
    let stderr = owned.child.stderr.take().context("stderr of the child")?;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        pump(
            stdout,
            Arc::clone(&file),
            bar.clone(),
            Some(Arc::clone(&lines)),
        ),
        pump(stderr, Arc::clone(&file), bar.clone(), None),
    ];
    let status = loop {
        if let Err(e) = check_interrupted() {
            bar.abandon_with_message("interrupted");
            return Err(e);
        }
        if let Some(status) = owned.exited() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for r in readers {
        let _ = r.join();
    }
    if !status.success() {
        bar.abandon_with_message(format!("failed: {status}"));
        bail!(
            "{label} failed with {status}; the end of {}:\n{}",
            log.display(),
            tail(log, 25)
        );
    }
    bar.finish_with_message("done");
    let lines = std::mem::take(&mut *lines.lock().unwrap_or_else(PoisonError::into_inner));
    Ok(lines)
}

fn pump(
    from: impl Read + Send + 'static,
    log: Arc<Mutex<std::fs::File>>,
    bar: ProgressBar,
    keep: Option<Arc<Mutex<Vec<String>>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            {
                let mut f = log.lock().unwrap_or_else(PoisonError::into_inner);
                let _ = writeln!(f, "{line}");
            }
            let shown = line.trim();
            if !shown.is_empty() {
                bar.set_message(shown.chars().take(100).collect::<String>());
            }
            if let Some(keep) = &keep {
                keep.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
            }
        }
    })
}

/// The last `n` lines of a file.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `program args` and returns its trimmed stdout, or `None` if it cannot run or fails.
pub(crate) fn output_of(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Sends one RESP command (already encoded) and reads the first reply line.
pub(crate) fn resp_roundtrip(addr: SocketAddr, request: &[u8]) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(request)?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

/// Polls `ok` every 200 ms until it holds, failing after `timeout` or on Ctrl-C; on a
/// timeout the error names `what`.
pub(crate) fn wait_until(
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        check_interrupted()?;
        if ok()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} did not happen within {}s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Where the benchmarks write (`$CARGO_TARGET_DIR` or `<root>/target`).
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| crate::util::project_root().join("target"), PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_command_returns_its_stdout_and_logs_both_streams() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let lines = run_streamed(
            "echo",
            Command::new("sh").args(["-c", "echo one; echo two >&2; echo three"]),
            &log,
        )
        .unwrap();
        assert_eq!(lines, ["one", "three"]);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("two") && text.contains("three"), "{text}");
    }

    #[test]
    fn a_failing_command_is_an_error_with_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let err = run_streamed(
            "fail",
            Command::new("sh").args(["-c", "echo broken; exit 3"]),
            &log,
        )
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("broken"), "{text}");
    }

    #[test]
    fn dropping_an_owned_child_kills_it() {
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let owned = Owned::spawn("sleep", &mut cmd).unwrap();
        let pid = owned.pid();
        assert!(GROUPS.lock().unwrap().contains(&pid));
        drop(owned);
        assert!(!GROUPS.lock().unwrap().contains(&pid));
        // Reaped by the guard: no such process any more (pid reuse within the test is
        // practically impossible, and would only make `kill -0` succeed).
        let alive = Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(!alive);
    }
}
