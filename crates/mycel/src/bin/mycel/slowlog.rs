//! The slow log (`SLOWLOG`): the latest commands that took longer than a threshold, as
//! Redis keeps them.
//!
//! A command's time is from the start of its execution to its reply, so in cluster mode it
//! includes the round trip to the key's primary and the replication to its backups (what
//! makes a Mycel command slow), but not reading the request or writing the reply. A command
//! run in a batch with its pipeline neighbours (the single-key commands) is logged with the
//! batch's time: its reply was ready only then.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::resp::frame::Frame;

/// Arguments kept per entry; the last one kept says how many more there were.
const MAX_ARGS: usize = 32;

/// Bytes kept per argument; a longer one says how many more bytes it had.
const MAX_ARG_BYTES: usize = 128;

/// The most entries `--slowlog-max-len` accepts: each keeps at most about 5 KiB
/// ([`MAX_ARGS`] arguments of [`MAX_ARG_BYTES`]), so the log stays under 500 MiB.
pub(crate) const MAX_LEN_LIMIT: u64 = 100_000;

/// How the slow log is configured (`--slowlog-log-slower-than`, `--slowlog-max-len`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlowLogConfig {
    /// Commands taking at least this long are logged; `None`: the log is off (Redis's
    /// negative threshold). Zero logs every command.
    pub(crate) slower_than: Option<Duration>,
    /// Entries kept, the oldest dropped first.
    pub(crate) max_len: usize,
}

impl Default for SlowLogConfig {
    /// Redis's defaults: 10 ms, 128 entries.
    fn default() -> Self {
        Self {
            slower_than: Some(Duration::from_millis(10)),
            max_len: 128,
        }
    }
}

impl SlowLogConfig {
    /// The threshold as `CONFIG GET slowlog-log-slower-than` shows it: microseconds, -1
    /// when off.
    pub(crate) fn slower_than_micros(&self) -> i64 {
        self.slower_than
            .map_or(-1, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
    }

    /// The threshold from its `CONFIG` form: microseconds, negative for off.
    pub(crate) fn slower_than_from_micros(micros: i64) -> Option<Duration> {
        u64::try_from(micros).ok().map(Duration::from_micros)
    }
}

/// One logged command.
#[derive(Debug)]
struct Entry {
    id: u64,
    /// Unix time in seconds when it was logged.
    time: u64,
    micros: u64,
    /// The arguments, cut to [`MAX_ARGS`] and [`MAX_ARG_BYTES`].
    args: Vec<Bytes>,
    client: SocketAddr,
    name: Bytes,
}

#[derive(Debug, Default)]
struct Log {
    /// The next entry's ID: never reset, not even by `SLOWLOG RESET`.
    next_id: u64,
    /// Newest first.
    entries: VecDeque<Entry>,
}

/// The node's slow log, shared by every connection.
#[derive(Debug)]
pub(crate) struct SlowLog {
    /// [`SlowLogConfig::slower_than`] in its `CONFIG` form (microseconds, -1: off), read
    /// on every batch and changed by `CONFIG SET`.
    slower_than_micros: AtomicI64,
    /// [`SlowLogConfig::max_len`].
    max_len: AtomicUsize,
    log: Mutex<Log>,
}

impl SlowLog {
    /// An empty log.
    pub(crate) fn new(config: SlowLogConfig) -> Self {
        Self {
            slower_than_micros: AtomicI64::new(config.slower_than_micros()),
            max_len: AtomicUsize::new(config.max_len),
            log: Mutex::default(),
        }
    }

    /// Its configuration.
    pub(crate) fn config(&self) -> SlowLogConfig {
        SlowLogConfig {
            slower_than: SlowLogConfig::slower_than_from_micros(
                self.slower_than_micros.load(Ordering::Relaxed),
            ),
            max_len: self.max_len.load(Ordering::Relaxed),
        }
    }

    /// Changes the configuration (`CONFIG SET`); a shorter log drops its oldest entries
    /// at once.
    pub(crate) fn set_config(&self, config: SlowLogConfig) {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        self.slower_than_micros
            .store(config.slower_than_micros(), Ordering::Relaxed);
        self.max_len.store(config.max_len, Ordering::Relaxed);
        log.entries.truncate(config.max_len);
    }

    /// Whether a command that took `took` is to be logged.
    pub(crate) fn is_slow(&self, took: Duration) -> bool {
        let micros = self.slower_than_micros.load(Ordering::Relaxed);
        u64::try_from(micros).is_ok_and(|t| took.as_micros() >= u128::from(t))
            && self.max_len.load(Ordering::Relaxed) > 0
    }

    /// Logs a command that [`is_slow`](Self::is_slow) found slow: its arguments as the
    /// client sent them, who sent it and its name (`CLIENT SETNAME`) now.
    pub(crate) fn push(&self, took: Duration, args: &[Bytes], client: SocketAddr, name: Bytes) {
        let redacted = redact(args);
        let args = redacted.as_deref().unwrap_or(args);
        let kept = if args.len() > MAX_ARGS {
            let mut kept: Vec<Bytes> = args[..MAX_ARGS - 1].iter().map(cut).collect();
            kept.push(Bytes::from(format!(
                "... ({} more arguments)",
                args.len() - (MAX_ARGS - 1)
            )));
            kept
        } else {
            args.iter().map(cut).collect()
        };
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let id = log.next_id;
        log.next_id += 1;
        log.entries.push_front(Entry {
            id,
            time,
            micros: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            args: kept,
            client,
            name,
        });
        // Read under the lock, so a concurrent `set_config` cannot leave a longer log.
        log.entries.truncate(self.max_len.load(Ordering::Relaxed));
    }

    /// `SLOWLOG GET`: the newest `count` entries (all of them for `None`), newest first.
    pub(crate) fn get(&self, count: Option<usize>) -> Frame {
        let int = |n: u64| Frame::Integer(i64::try_from(n).unwrap_or(i64::MAX));
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let count = count.unwrap_or(usize::MAX);
        Frame::Array(
            log.entries
                .iter()
                .take(count)
                .map(|e| {
                    Frame::Array(vec![
                        int(e.id),
                        int(e.time),
                        int(e.micros),
                        Frame::Array(e.args.iter().cloned().map(Frame::Bulk).collect()),
                        Frame::bulk(e.client.to_string()),
                        Frame::Bulk(e.name.clone()),
                    ])
                })
                .collect(),
        )
    }

    /// `SLOWLOG LEN`.
    pub(crate) fn len(&self) -> usize {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .len()
    }

    /// `SLOWLOG RESET`: drops every entry (IDs go on from where they were).
    pub(crate) fn reset(&self) {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .clear();
    }
}

/// An argument as an entry keeps it: whole, or its first [`MAX_ARG_BYTES`] and how many
/// more there were.
fn cut(arg: &Bytes) -> Bytes {
    if arg.len() <= MAX_ARG_BYTES {
        // A copy: a slice would keep the whole request buffer alive.
        return Bytes::copy_from_slice(arg);
    }
    let mut kept = arg[..MAX_ARG_BYTES].to_vec();
    kept.extend_from_slice(format!("... ({} more bytes)", arg.len() - MAX_ARG_BYTES).as_bytes());
    Bytes::from(kept)
}

/// `SLOWLOG HELP`, in Redis's words.
pub(crate) const HELP: &[&str] = &[
    "SLOWLOG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GET [<count>]",
    "    Return top <count> entries from the slowlog (default: 10, -1 mean all).",
    "    Entries are made of:",
    "    id, timestamp, time in microseconds, arguments array, client IP and port,",
    "    client name",
    "LEN",
    "    Return the length of the slowlog.",
    "RESET",
    "    Reset the slowlog.",
    "HELP",
    "    Prints this help.",
];

/// What Redis shows of an argument that is a secret.
const REDACTED: &[u8] = b"(redacted)";

/// `args` with their secrets replaced, as Redis logs them: every argument of `AUTH`, the
/// user and password after `HELLO`'s `AUTH`; `None` when there is nothing to hide.
fn redact(args: &[Bytes]) -> Option<Vec<Bytes>> {
    let (cmd, rest) = args.split_first()?;
    let hidden = Bytes::from_static(REDACTED);
    let mut out = args.to_vec();
    if cmd.eq_ignore_ascii_case(b"auth") {
        out[1..].fill(hidden);
        return Some(out);
    }
    if !cmd.eq_ignore_ascii_case(b"hello") {
        return None;
    }
    // Options after the protocol version, walked as `HELLO` reads them (so that a client
    // named `auth` hides nothing else).
    let mut i = 2;
    let mut any = false;
    while let Some(opt) = rest.get(i - 1) {
        if opt.eq_ignore_ascii_case(b"auth") {
            for arg in out.iter_mut().skip(i + 1).take(2) {
                *arg = hidden.clone();
                any = true;
            }
            i += 3;
        } else if opt.eq_ignore_ascii_case(b"setname") {
            i += 2;
        } else {
            i += 1;
        }
    }
    any.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 4000))
    }

    fn words(line: &str) -> Vec<Bytes> {
        line.split(' ').map(|w| Bytes::from(w.to_owned())).collect()
    }

    #[test]
    fn secrets_are_redacted_as_redis_logs_them() {
        let shown = |line: &str| {
            let args = words(line);
            let out = redact(&args).unwrap_or(args);
            out.iter()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(shown("AUTH hunter2"), "AUTH (redacted)");
        assert_eq!(shown("auth bob hunter2"), "auth (redacted) (redacted)");
        assert_eq!(
            shown("HELLO 3 AUTH bob hunter2 SETNAME x"),
            "HELLO 3 AUTH (redacted) (redacted) SETNAME x"
        );
        assert_eq!(
            shown("HELLO 3 SETNAME auth AUTH bob hunter2"),
            "HELLO 3 SETNAME auth AUTH (redacted) (redacted)"
        );
        assert_eq!(shown("HELLO 3 SETNAME x"), "HELLO 3 SETNAME x");
        assert_eq!(shown("HELLO 3 AUTH bob"), "HELLO 3 AUTH (redacted)");
        assert_eq!(shown("GET auth"), "GET auth");
        // Through the log itself.
        let log = SlowLog::new(SlowLogConfig {
            slower_than: Some(Duration::ZERO),
            max_len: 8,
        });
        log.push(Duration::ZERO, &words("AUTH hunter2"), addr(), Bytes::new());
        let got = log.get(None);
        let Frame::Array(entry) = &entries(&got)[0] else {
            panic!("an entry is an array");
        };
        assert_eq!(
            entry[3],
            Frame::Array(vec![Frame::bulk("AUTH"), Frame::bulk("(redacted)")])
        );
    }

    fn args(n: usize) -> Vec<Bytes> {
        (0..n).map(|i| Bytes::from(format!("a{i}"))).collect()
    }

    fn entries(frame: &Frame) -> &[Frame] {
        let Frame::Array(entries) = frame else {
            panic!("not an array: {frame:?}")
        };
        entries
    }

    /// The fields of the log's newest entry.
    fn newest(log: &SlowLog) -> Vec<Frame> {
        match log.get(Some(1)) {
            Frame::Array(mut entries) if entries.len() == 1 => match entries.pop() {
                Some(Frame::Array(fields)) => fields,
                other => panic!("not an entry: {other:?}"),
            },
            other => panic!("not one entry: {other:?}"),
        }
    }

    #[test]
    fn logs_only_at_or_over_the_threshold_and_keeps_the_newest() {
        let log = SlowLog::new(SlowLogConfig {
            slower_than: Some(Duration::from_micros(100)),
            max_len: 3,
        });
        assert!(!log.is_slow(Duration::from_micros(99)));
        assert!(log.is_slow(Duration::from_micros(100)));
        for i in 0..5u64 {
            log.push(
                Duration::from_micros(100 + i),
                &[Bytes::from(format!("cmd{i}"))],
                addr(),
                Bytes::new(),
            );
        }
        assert_eq!(log.len(), 3);
        let all = log.get(None);
        let ids: Vec<_> = entries(&all)
            .iter()
            .map(|e| match e {
                Frame::Array(fields) => fields[0].clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            ids,
            [Frame::Integer(4), Frame::Integer(3), Frame::Integer(2)]
        );
        assert_eq!(entries(&log.get(Some(1))).len(), 1);
        assert_eq!(entries(&log.get(Some(0))).len(), 0);
        log.reset();
        assert_eq!(log.len(), 0);
        log.push(Duration::from_secs(1), &args(1), addr(), Bytes::new());
        let fields = newest(&log);
        assert_eq!(fields[0], Frame::Integer(5), "IDs go on after a reset");
        assert_eq!(fields[2], Frame::Integer(1_000_000));
        assert_eq!(fields[4], Frame::bulk("127.0.0.1:4000"));
    }

    #[test]
    fn a_negative_threshold_or_no_room_logs_nothing() {
        let off = SlowLog::new(SlowLogConfig {
            slower_than: None,
            max_len: 128,
        });
        assert!(!off.is_slow(Duration::from_secs(60)));
        let no_room = SlowLog::new(SlowLogConfig {
            slower_than: Some(Duration::ZERO),
            max_len: 0,
        });
        assert!(!no_room.is_slow(Duration::from_secs(60)));
        assert_eq!(SlowLogConfig::default().slower_than_micros(), 10_000);
        assert_eq!(off.config().slower_than_micros(), -1);
    }

    #[test]
    fn long_requests_are_cut_as_redis_cuts_them() {
        let log = SlowLog::new(SlowLogConfig::default());
        let mut many = args(40);
        many[0] = Bytes::from(vec![b'x'; 200]);
        log.push(Duration::from_secs(1), &many, addr(), Bytes::from("me"));
        let fields = newest(&log);
        let Frame::Array(kept) = &fields[3] else {
            panic!("no arguments")
        };
        assert_eq!(kept.len(), 32);
        let mut first = vec![b'x'; 128];
        first.extend_from_slice(b"... (72 more bytes)");
        assert_eq!(kept[0], Frame::Bulk(Bytes::from(first)));
        assert_eq!(kept[30], Frame::bulk("a30"));
        assert_eq!(kept[31], Frame::bulk("... (9 more arguments)"));
        assert_eq!(fields[5], Frame::bulk("me"));
        // Exactly 32 arguments are kept whole.
        log.push(Duration::from_secs(1), &args(32), addr(), Bytes::new());
        let fields = newest(&log);
        assert!(
            matches!(&fields[3], Frame::Array(a) if a.len() == 32 && a[31] == Frame::bulk("a31"))
        );
    }
}
