//! Command line and configuration file: flags, the TOML file they override, and the
//! resolution of both into a validated `nodosum::Config` and `mycel::Config`, reporting
//! every problem at once with the flag or field it concerns.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgAction, Parser};
use mycel::BucketOptions;
use nodosum_discovery::{ConsulConfig, DnsConfig, DnsMode, StaticConfig};
use serde::Deserialize;

use crate::auth::{self, Password};
use crate::slowlog::{self, SlowLogConfig};
use crate::tls::{self, RespTls, TlsFiles};

const EXAMPLES: &str = "\
Examples:
  # A one-node cluster on loopback with built-in defaults, then talk to it:
  mycel --dev
  redis-cli -p 6379 SET greeting hello
  redis-cli -p 6379 GET greeting
  curl http://127.0.0.1:9090/health

  # Two more nodes joining it on this machine (or run `cargo xtask cluster`):
  mycel --dev --node-id node-2 --gossip 127.0.0.1:7969 --quic 127.0.0.1:7970 \\
        --resp 127.0.0.1:7379 --admin 127.0.0.1:9190 --seed 127.0.0.1:6969
  mycel --dev --node-id node-3 --gossip 127.0.0.1:8969 --quic 127.0.0.1:8970 \\
        --resp 127.0.0.1:8379 --admin 127.0.0.1:9290 --seed 127.0.0.1:6969

  # Different ports, a 2 GiB budget, debug logs as JSON:
  mycel --dev --resp 127.0.0.1:7000 --admin 127.0.0.1:9100 --max-memory 2gb -v --log-format json

  # A production node (settings may also come from --config mycel.toml; flags win):
  mycel --node-id node-1 --gossip 0.0.0.0:6969 --advertise 10.0.0.1:6969 \\
        --ca ca.pem --cert node-1.pem --key node-1-key.pem --gossip-key /etc/mycel/gossip.key \\
        --seed 10.0.0.2:6969 --seed 10.0.0.3:6969 --replicas 2 \\
        --requirepass-file /etc/mycel/password   # clients: redis-cli -a <password>

Any node serves any key: it forwards the command to the key's primary, which replicates
writes to --replicas - 1 backups before answering. --standalone serves a single node
without gossip or QUIC (and adds MYCEL.BUCKET ... CREATE, which a cluster does not
offer: its buckets are declared in the config file). Strings only. MULTI/EXEC run
single-key commands as one, and WATCH makes EXEC run only if the watched keys did not
change (in a cluster, all keys in one partition: use one hash tag, as {cart:7}:a and
{cart:7}:b). COMMAND LIST
names every command served. Settings are read at start; CONFIG SET changes only the
slow log's two (slowlog-log-slower-than, slowlog-max-len).

Buckets: plain Redis clients use the bucket \"default\". `MYCEL.BUCKET name` switches the
connection to another bucket, `MYCEL.BUCKET name CREATE [PX ms]` creates it first (with a
default TTL; --standalone only), `MYCEL.BUCKET` shows the current one. Buckets can also be
declared in the config file ([[buckets]] name = \"sessions\", default_ttl_ms = 60000), the
same on every node of a cluster.";

/// Mycel: a Redis-compatible in-memory cache server.
#[derive(Debug, Parser)]
#[command(name = "mycel", version, about, after_help = EXAMPLES)]
pub(crate) struct Cli {
    /// Development mode: loopback addresses, built-in defaults, node ID from the hostname
    /// and RESP port, development certificates; needs nothing prepared on disk.
    #[arg(long)]
    pub(crate) dev: bool,
    /// Serve as a single node without gossip or QUIC: no cluster settings are used.
    #[arg(long)]
    pub(crate) standalone: bool,
    /// TOML file with the same settings as these flags (snake_case keys); flags win.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// This node's ID (letters, digits, `-_.`); required outside --dev.
    #[arg(long, value_name = "ID")]
    pub(crate) node_id: Option<String>,
    /// Cluster name; nodes of other clusters are ignored.
    #[arg(long, value_name = "NAME")]
    pub(crate) cluster: Option<String>,
    /// Gossip (UDP) address [default: 127.0.0.1:6969 with --dev, 0.0.0.0:6969 otherwise].
    #[arg(long, value_name = "ADDR")]
    pub(crate) gossip: Option<String>,
    /// Gossip address other nodes reach this one at (required when --gossip is 0.0.0.0).
    #[arg(long, value_name = "ADDR")]
    pub(crate) advertise: Option<String>,
    /// QUIC (UDP) address for node-to-node data [default port 6970].
    #[arg(long, value_name = "ADDR")]
    pub(crate) quic: Option<String>,
    /// Congestion controller of node-to-node QUIC: cubic, or bbr for links that drop
    /// packets at random (quinn's experimental BBR keeps their throughput) [default: cubic].
    #[arg(long, value_name = "cubic|bbr")]
    pub(crate) quic_congestion: Option<String>,
    /// RESP (Redis protocol) listen address [default port 6379; loopback with --dev].
    #[arg(long, value_name = "ADDR")]
    pub(crate) resp: Option<String>,
    /// Also serve RESP over TLS on this address, as Redis's tls-port (`redis-cli --tls
    /// --cacert ca.pem`); needs --resp-tls-cert and --resp-tls-key [default: none].
    #[arg(long, value_name = "ADDR")]
    pub(crate) resp_tls: Option<String>,
    /// The TLS listener's certificate chain (PEM, the server's certificate first); it,
    /// the key and the client CA are reread on SIGHUP, for new connections.
    #[arg(long, value_name = "FILE")]
    pub(crate) resp_tls_cert: Option<PathBuf>,
    /// The TLS listener's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub(crate) resp_tls_key: Option<PathBuf>,
    /// CA (PEM) whose certificates TLS clients must present (`redis-cli --cert --key`)
    /// [default: clients present none].
    #[arg(long, value_name = "FILE")]
    pub(crate) resp_tls_client_ca: Option<PathBuf>,
    /// HTTP admin listen address [default port 9090; loopback with --dev]. Without
    /// --admin-token-file it asks for nothing (--requirepass covers RESP only): bind it
    /// where only operators and the metrics scraper reach it.
    #[arg(long, value_name = "ADDR")]
    pub(crate) admin: Option<String>,
    /// File holding a token (its first line) that the admin API's endpoints other than
    /// /health and /ready need (`Authorization: Bearer <token>`); reread on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub(crate) admin_token_file: Option<PathBuf>,
    /// Gossip address of a node to join through; repeat for several.
    #[arg(long = "seed", value_name = "ADDR")]
    pub(crate) seeds: Vec<String>,
    /// Copies of each partition, the primary included [default: 2].
    #[arg(long, value_name = "N")]
    pub(crate) replicas: Option<String>,
    /// Memory budget of the store: plain bytes or with a unit (`256mb`, `2gb`, `1.5gb`,
    /// `512kib`; kb/mb/gb and kib/mib/gib are powers of 1024, k/m/g of 1000, as in
    /// redis.conf) [default: 256mb].
    #[arg(long, value_name = "BYTES")]
    pub(crate) max_memory: Option<String>,
    /// Threads of the cluster layer (the runtime's workers: gossip, transport,
    /// rebalancing, admin API) [default: one per CPU core]. Several nodes sharing one
    /// machine do best with the cores divided between them. With 1 the node runs on a
    /// single-threaded runtime, on the thread that started it.
    #[arg(long, value_name = "N")]
    pub(crate) threads: Option<String>,
    /// Threads serving client connections, each connection staying on one [default: half
    /// the CPU cores]. A connection's requests are light, so a thread per core would
    /// spend more on waking threads than it gains unless cores are idle. With 0 the
    /// runtime's own threads serve them (the default on a single core: `--threads 1
    /// --resp-threads 0` runs the whole node on one thread).
    #[arg(long, value_name = "N")]
    pub(crate) resp_threads: Option<String>,
    /// Log commands that take at least this many microseconds in the slow log
    /// (`SLOWLOG GET`); 0 logs every command, a negative number none [default: 10000].
    #[arg(long, value_name = "MICROS", allow_hyphen_values = true)]
    pub(crate) slowlog_log_slower_than: Option<String>,
    /// Entries the slow log keeps, the oldest dropped first [default: 128].
    #[arg(long, value_name = "N")]
    pub(crate) slowlog_max_len: Option<String>,
    /// Password clients must give (`AUTH password`, `redis-cli -a`) before any other
    /// command, as Redis's requirepass; it shows in the process list, which
    /// --requirepass-file avoids [default: none, every client is served].
    #[arg(long, value_name = "PASSWORD")]
    pub(crate) requirepass: Option<String>,
    /// File holding the client password (its first line), instead of --requirepass;
    /// reread on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub(crate) requirepass_file: Option<PathBuf>,
    /// CA certificates (PEM) that sign the nodes' certificates (several during a CA
    /// rotation). --ca, --cert and --key are reread on SIGHUP, for new connections.
    #[arg(long, value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,
    /// This node's certificate (PEM), its node ID in the subject.
    #[arg(long, value_name = "FILE")]
    pub(crate) cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub(crate) key: Option<PathBuf>,
    /// Gossip encryption key: base64 of 32 bytes, or a file holding such keys (one per
    /// line, the first seals, all open; reread on SIGHUP, for key rotation).
    #[arg(long, value_name = "KEY|FILE")]
    pub(crate) gossip_key: Option<String>,
    /// How to find seeds: static (the --seed list), dns, consul.
    #[arg(long, value_name = "static|dns|consul")]
    pub(crate) discovery: Option<String>,
    /// dns discovery: the name to look up (a DNS-SD service type or an SRV name).
    #[arg(long, value_name = "NAME")]
    pub(crate) dns_name: Option<String>,
    /// dns discovery: `browse` (DNS-SD) or `srv` [default: browse].
    #[arg(long, value_name = "MODE")]
    pub(crate) dns_mode: Option<String>,
    /// dns discovery: nameserver to ask instead of the system resolver.
    #[arg(long, value_name = "ADDR")]
    pub(crate) dns_nameserver: Option<String>,
    /// consul discovery: agent address [default: http://127.0.0.1:8500].
    #[arg(long, value_name = "URL")]
    pub(crate) consul_addr: Option<String>,
    /// consul discovery: service name [default: nodosum].
    #[arg(long, value_name = "NAME")]
    pub(crate) consul_service: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, value_name = "text|json")]
    pub(crate) log_format: Option<String>,
    /// More logs: -v debug, -vv trace (RUST_LOG, if set, wins).
    #[arg(short, long, action = ArgAction::Count)]
    pub(crate) verbose: u8,
}

/// The config file: the flags' settings, snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    dev: Option<bool>,
    standalone: Option<bool>,
    node_id: Option<String>,
    cluster: Option<String>,
    gossip: Option<String>,
    advertise: Option<String>,
    quic: Option<String>,
    quic_congestion: Option<String>,
    resp: Option<String>,
    resp_tls: Option<String>,
    resp_tls_cert: Option<PathBuf>,
    resp_tls_key: Option<PathBuf>,
    resp_tls_client_ca: Option<PathBuf>,
    admin: Option<String>,
    admin_token_file: Option<PathBuf>,
    #[serde(default)]
    seeds: Vec<String>,
    replicas: Option<u64>,
    max_memory: Option<Size>,
    threads: Option<u64>,
    resp_threads: Option<u64>,
    slowlog_log_slower_than: Option<i64>,
    slowlog_max_len: Option<u64>,
    requirepass: Option<String>,
    requirepass_file: Option<PathBuf>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    gossip_key: Option<String>,
    discovery: Option<String>,
    dns_name: Option<String>,
    dns_mode: Option<String>,
    dns_nameserver: Option<String>,
    consul_addr: Option<String>,
    consul_service: Option<String>,
    log_format: Option<String>,
    #[serde(default)]
    buckets: Vec<BucketFile>,
}

/// `max_memory` in the file: a number of bytes, or text with a unit (`"256mb"`).
#[derive(Debug)]
enum Size {
    Bytes(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of bytes or a size such as \"256mb\"")
            }
            fn visit_u64<E>(self, v: u64) -> Result<Size, E> {
                Ok(Size::Bytes(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size::Bytes)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E>(self, v: &str) -> Result<Size, E> {
                Ok(Size::Text(v.to_owned()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BucketFile {
    name: String,
    default_ttl_ms: Option<u64>,
    max_value_len: Option<usize>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// One configuration problem, named by flag (and config-file key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// The flag or field, e.g. `--max-memory (max_memory)`.
    pub(crate) field: String,
    /// What is wrong.
    pub(crate) message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Everything the server needs, resolved and validated.
#[derive(Debug)]
pub(crate) struct Settings {
    /// `--dev`.
    pub(crate) dev: bool,
    /// `--standalone`: no gossip, no QUIC, the local backend.
    pub(crate) standalone: bool,
    /// RESP listen address.
    pub(crate) resp: SocketAddr,
    /// The RESP-over-TLS listener (`--resp-tls`), if any.
    pub(crate) resp_tls: Option<RespTls>,
    /// Admin listen address.
    pub(crate) admin: SocketAddr,
    /// The nodosum node's configuration (validated, unless `--standalone`, which does not
    /// use it).
    pub(crate) nodosum: nodosum::Config,
    /// Mycel's configuration.
    pub(crate) mycel: mycel::Config,
    /// Buckets to create at start.
    pub(crate) buckets: Vec<(String, BucketOptions)>,
    /// Runtime worker threads (`--threads`); `None`: one per CPU core.
    pub(crate) threads: Option<usize>,
    /// Client connection threads (`--resp-threads`); 0: none, the runtime's threads
    /// serve the connections; `None`: half the CPU cores.
    pub(crate) resp_threads: Option<usize>,
    /// The slow log (`--slowlog-log-slower-than`, `--slowlog-max-len`).
    pub(crate) slowlog: SlowLogConfig,
    /// The client password (`--requirepass`, `--requirepass-file`).
    pub(crate) requirepass: Option<Password>,
    /// `--requirepass-file`, read again on SIGHUP.
    pub(crate) requirepass_file: Option<PathBuf>,
    /// The admin API's token (`--admin-token-file`).
    pub(crate) admin_token: Option<Password>,
    /// `--admin-token-file`, read again on SIGHUP.
    pub(crate) admin_token_file: Option<PathBuf>,
    /// Log format.
    pub(crate) log_format: LogFormat,
    /// `-v` count.
    pub(crate) verbosity: u8,
    /// Whether the node ID was derived from the hostname and RESP port (`--dev` without
    /// `--node-id`); with RESP port 0 it is derived again from the bound port.
    pub(crate) auto_node_id: bool,
    /// Cluster-only settings the user gave, which `--standalone` does not act on.
    pub(crate) cluster_only: Vec<&'static str>,
}

/// The most threads `--threads` and `--resp-threads` accept.
const MAX_THREADS: u64 = 1024;

/// A thread count from its flag (as typed) or its config file key, at least `min`;
/// `Ok(None)`: neither.
fn thread_count(
    flag: Option<String>,
    file: Option<u64>,
    min: u64,
) -> Result<Option<usize>, String> {
    count_in(flag, file, min, MAX_THREADS)
}

/// A count from `min` to `max` from its flag (as typed) or its config file key;
/// `Ok(None)`: neither.
fn count_in(
    flag: Option<String>,
    file: Option<u64>,
    min: u64,
    max: u64,
) -> Result<Option<usize>, String> {
    let range = min..=max;
    let n = match (flag, file) {
        (Some(text), _) => text
            .parse::<u64>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| format!("{text:?} is not a number from {min} to {max}"))?,
        (None, Some(n)) if range.contains(&n) => n,
        (None, Some(n)) => return Err(format!("{n} is not a number from {min} to {max}")),
        (None, None) => return Ok(None),
    };
    usize::try_from(n)
        .map(Some)
        .map_err(|_| format!("{n} is too large for this machine"))
}

/// The slow log's settings from their flags (as typed) or config file keys; a problem for
/// each bad one.
fn slowlog_config(
    p: &mut Problems,
    slower_than: (Option<String>, Option<i64>),
    max_len: (Option<String>, Option<u64>),
) -> SlowLogConfig {
    let mut config = SlowLogConfig::default();
    let field = "--slowlog-log-slower-than (slowlog_log_slower_than)";
    let micros = match slower_than {
        (Some(text), _) => text
            .parse::<i64>()
            .map_err(|_| {
                p.push(
                    field,
                    format!("{text:?} is not a whole number of microseconds"),
                );
            })
            .ok(),
        (None, file) => file,
    };
    if let Some(micros) = micros {
        config.slower_than = u64::try_from(micros).ok().map(Duration::from_micros);
    }
    match count_in(max_len.0, max_len.1, 0, slowlog::MAX_LEN_LIMIT) {
        Ok(Some(n)) => config.max_len = n,
        Ok(None) => {}
        Err(m) => p.push("--slowlog-max-len (slowlog_max_len)", m),
    }
    config
}

/// The flag and config file key of each `nodosum::Config` field the flags set, for
/// problem reports: `(field, flag, key)`, the first field that is the problem's or a
/// prefix of it wins.
const NODOSUM_FLAGS: &[(&str, &str, &str)] = &[
    ("node_id", "--node-id", "node_id"),
    ("cluster", "--cluster", "cluster"),
    ("gossip.bind", "--gossip", "gossip"),
    ("gossip.advertise", "--advertise", "advertise"),
    ("gossip.keys", "--gossip-key", "gossip_key"),
    ("gossip.key_file", "--gossip-key", "gossip_key"),
    ("quic.bind", "--quic", "quic"),
    ("quic.congestion", "--quic-congestion", "quic_congestion"),
    ("tls.ca", "--ca", "ca"),
    ("tls.cert", "--cert", "cert"),
    ("tls.key", "--key", "key"),
    ("discovery.static.seeds", "--seed", "seeds"),
    ("discovery.static", "--seed", "seeds"),
    ("discovery.dns", "--discovery", "discovery"),
    ("discovery.consul", "--discovery", "discovery"),
    ("discovery", "--discovery", "discovery"),
];

const MYCEL_FLAGS: &[(&str, &str, &str)] = &[
    ("replication_factor", "--replicas", "replicas"),
    ("store.max_bytes", "--max-memory", "max_memory"),
    // Derived from the budget (at most half of it).
    ("store.max_value_len", "--max-memory", "max_memory"),
];

/// `--flag (file_key)` for a problem in `field` of the configuration the flags build
/// (`--seed (seeds[1])` for one of a list's items); the field itself if no flag sets it.
fn flag_of(table: &[(&str, &str, &str)], field: &str) -> String {
    table
        .iter()
        .find_map(|&(f, flag, key)| {
            let rest = field.strip_prefix(f)?;
            match rest.chars().next() {
                None | Some('.') => Some(format!("{flag} ({key})")),
                // An item of a list keeps its index (`seeds` is a list in the file too).
                Some('[') if key == "seeds" => Some(format!("{flag} ({key}{rest})")),
                Some('[') => Some(format!("{flag} ({key})")),
                Some(_) => None,
            }
        })
        .unwrap_or_else(|| field.to_owned())
}

struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.to_owned(),
            message: message.into(),
        });
    }
}

/// Resolves flags over the config file into validated settings, or every problem found.
pub(crate) fn resolve(cli: Cli) -> Result<Settings, Vec<Problem>> {
    let mut p = Problems(Vec::new());
    let file = match &cli.config {
        None => FileConfig::default(),
        Some(path) => match load_file(path) {
            Ok(f) => f,
            Err(message) => {
                p.push("--config", message);
                // Nothing else can be judged fairly without the file.
                return Err(p.0);
            }
        },
    };
    let dev = cli.dev || file.dev.unwrap_or(false);
    let standalone = cli.standalone || file.standalone.unwrap_or(false);
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let default_ip = if dev { loopback } else { any };

    let mut addr = |flag: &str, value: Option<String>, default_port: u16| -> SocketAddr {
        let fallback = SocketAddr::new(default_ip, default_port);
        match value {
            None => fallback,
            Some(v) => match parse_addr(&v, default_ip) {
                Ok(a) => a,
                Err(m) => {
                    p.push(flag, m);
                    fallback
                }
            },
        }
    };
    let resp = addr("--resp (resp)", cli.resp.or(file.resp), 6379);
    let admin = addr("--admin (admin)", cli.admin.or(file.admin), 9090);
    let gossip_given = cli.gossip.is_some() || file.gossip.is_some();
    let quic_given = cli.quic.is_some() || file.quic.is_some();
    let gossip = addr(
        "--gossip (gossip)",
        cli.gossip.or(file.gossip),
        nodosum::DEFAULT_GOSSIP_PORT,
    );
    let quic = addr(
        "--quic (quic)",
        cli.quic.or(file.quic),
        nodosum::DEFAULT_QUIC_PORT,
    );
    let advertise_given = cli.advertise.is_some() || file.advertise.is_some();
    let advertise = cli.advertise.or(file.advertise).and_then(|v| {
        parse_addr(&v, default_ip)
            .map_err(|m| p.push("--advertise (advertise)", m))
            .ok()
    });

    let tls_addr = cli
        .resp_tls
        .or(file.resp_tls)
        .map(|v| parse_addr(&v, default_ip).map_err(|m| p.push("--resp-tls (resp_tls)", m)));
    let tls_files = [
        cli.resp_tls_cert.or(file.resp_tls_cert),
        cli.resp_tls_key.or(file.resp_tls_key),
        cli.resp_tls_client_ca.or(file.resp_tls_client_ca),
    ];
    let [cert, key, client_ca] = tls_files.each_ref().map(Option::as_deref);
    let resp_tls = resp_tls(&mut p, tls_addr, cert, key, client_ca);

    let auto_node_id = dev && cli.node_id.is_none() && file.node_id.is_none();
    let node_id_text = cli
        .node_id
        .or(file.node_id)
        .or_else(|| dev.then(|| dev_node_id(resp.port())));
    let node_id = match node_id_text {
        None => {
            p.push("--node-id (node_id)", "required outside --dev");
            None
        }
        Some(text) => match mycel::NodeId::new(text.clone()) {
            Ok(id) => Some(id),
            Err(e) => {
                p.push("--node-id (node_id)", format!("{text:?}: {e}"));
                None
            }
        },
    };

    let replicas_given = cli.replicas.is_some() || file.replicas.is_some();
    let replicas = match cli.replicas {
        Some(text) => text
            .parse::<u8>()
            .map_err(|_| {
                p.push(
                    "--replicas (replicas)",
                    format!("{text:?} is not a number from 1 to 255"),
                );
            })
            .ok(),
        None => file.replicas.and_then(|n| {
            u8::try_from(n)
                .map_err(|_| {
                    p.push(
                        "--replicas (replicas)",
                        format!("{n} is not a number from 1 to 255"),
                    );
                })
                .ok()
        }),
    };
    let max_memory = match (cli.max_memory, file.max_memory) {
        (Some(text), _) | (None, Some(Size::Text(text))) => parse_size(&text)
            .map_err(|m| p.push("--max-memory (max_memory)", m))
            .ok(),
        (None, Some(Size::Bytes(n))) => Some(n),
        (None, None) => None,
    };

    let threads = thread_count(cli.threads, file.threads, 1)
        .map_err(|m| p.push("--threads (threads)", m))
        .ok()
        .flatten();
    let resp_threads = thread_count(cli.resp_threads, file.resp_threads, 0)
        .map_err(|m| p.push("--resp-threads (resp_threads)", m))
        .ok()
        .flatten();

    let slowlog = slowlog_config(
        &mut p,
        (cli.slowlog_log_slower_than, file.slowlog_log_slower_than),
        (cli.slowlog_max_len, file.slowlog_max_len),
    );

    // Flags win over the file as a pair: `--requirepass-file` replaces a `requirepass`
    // in the file, and the other way round.
    let (text, path) = if cli.requirepass.is_some() || cli.requirepass_file.is_some() {
        (cli.requirepass, cli.requirepass_file)
    } else {
        (file.requirepass, file.requirepass_file)
    };
    let (requirepass, requirepass_file) = requirepass(&mut p, text, path);
    let admin_token_file = cli.admin_token_file.or(file.admin_token_file);
    let admin_token = admin_token_file.as_deref().and_then(|path| {
        auth::password_file(path)
            .map_err(|m| p.push("--admin-token-file (admin_token_file)", m))
            .ok()
    });

    let log_format = match cli.log_format.or(file.log_format).as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            p.push(
                "--log-format (log_format)",
                format!("{other:?}: expected text or json"),
            );
            LogFormat::Text
        }
    };

    let congestion_given = cli.quic_congestion.is_some() || file.quic_congestion.is_some();
    let congestion = match cli.quic_congestion.or(file.quic_congestion).as_deref() {
        None | Some("cubic") => nodosum::Congestion::Cubic,
        Some("bbr") => nodosum::Congestion::Bbr,
        Some(other) => {
            p.push(
                "--quic-congestion (quic_congestion)",
                format!("{other:?}: expected cubic or bbr"),
            );
            nodosum::Congestion::Cubic
        }
    };

    let mut seeds = cli.seeds;
    if seeds.is_empty() {
        seeds = file.seeds;
    }
    let discovery_kind = cli.discovery.or(file.discovery);
    let dns_name = cli.dns_name.or(file.dns_name);
    let dns_mode = cli.dns_mode.or(file.dns_mode);
    let dns_nameserver = cli.dns_nameserver.or(file.dns_nameserver);
    let consul_addr = cli.consul_addr.or(file.consul_addr);
    let consul_service = cli.consul_service.or(file.consul_service);
    let cluster = cli.cluster.or(file.cluster);
    let gossip_key = cli.gossip_key.or(file.gossip_key);
    let (ca, cert, key) = (
        cli.ca.or(file.ca),
        cli.cert.or(file.cert),
        cli.key.or(file.key),
    );

    // Options of a discovery method not chosen would be dropped without a word: a
    // forgotten `--discovery dns` must not make a node that never finds its peers.
    for (method, given) in [
        (
            "dns",
            [
                (dns_name.is_some(), "--dns-name (dns_name)"),
                (dns_mode.is_some(), "--dns-mode (dns_mode)"),
                (
                    dns_nameserver.is_some(),
                    "--dns-nameserver (dns_nameserver)",
                ),
            ]
            .as_slice(),
        ),
        (
            "consul",
            [
                (consul_addr.is_some(), "--consul-addr (consul_addr)"),
                (
                    consul_service.is_some(),
                    "--consul-service (consul_service)",
                ),
            ]
            .as_slice(),
        ),
    ] {
        if discovery_kind.as_deref() != Some(method) {
            for (_, field) in given.iter().filter(|(g, _)| *g) {
                p.push(field, format!("only used with --discovery {method}"));
            }
        }
    }

    let mut cluster_only = Vec::new();
    for (given, flag) in [
        (!seeds.is_empty(), "--seed"),
        (discovery_kind.is_some(), "--discovery"),
        (cluster.is_some(), "--cluster"),
        (gossip_given, "--gossip"),
        (advertise_given, "--advertise"),
        (quic_given, "--quic"),
        (congestion_given, "--quic-congestion"),
        (gossip_key.is_some(), "--gossip-key"),
        (
            ca.is_some() || cert.is_some() || key.is_some(),
            "--ca/--cert/--key",
        ),
        (replicas_given, "--replicas"),
    ] {
        if given {
            cluster_only.push(flag);
        }
    }

    let mut nodosum = None;
    if let Some(id) = &node_id {
        let mut c = nodosum::Config::development(id.clone());
        c.gossip.bind = gossip;
        c.gossip.advertise = advertise;
        c.quic.bind = quic;
        c.quic.congestion = congestion;
        if let Some(name) = cluster {
            c.cluster = name;
        }
        if !dev {
            c.cluster = c.cluster.replace("nodosum-dev", nodosum::DEFAULT_CLUSTER);
            c.gossip.profile = nodosum::Profile::Lan;
            c.tls.development = false;
        }
        if dev && (ca.is_some() || cert.is_some() || key.is_some()) {
            // Explicit certificates replace the development CA.
            c.tls.development = false;
        }
        c.tls.ca = ca;
        c.tls.cert = cert;
        c.tls.key = key;
        if let Some(k) = gossip_key {
            if names_a_file(&k) {
                c.gossip.key_file = Some(PathBuf::from(k));
            } else {
                c.gossip.keys = vec![k];
            }
        }
        if !seeds.is_empty() {
            c.discovery.static_seeds = Some(StaticConfig {
                seeds: seeds.clone(),
                ..StaticConfig::default()
            });
        }
        match discovery_kind.as_deref() {
            Some("static") if seeds.is_empty() => {
                p.push(
                    "--discovery (discovery)",
                    "static discovery needs at least one --seed",
                );
            }
            // The seeds were set above.
            None | Some("static") => {}
            Some("dns") => {
                let mut dns = DnsConfig::default();
                match dns_name {
                    Some(n) => dns.name = n,
                    None => p.push("--dns-name (dns_name)", "required with --discovery dns"),
                }
                match dns_mode.as_deref() {
                    None | Some("browse") => dns.mode = DnsMode::Browse,
                    Some("srv") => dns.mode = DnsMode::Srv,
                    Some(other) => p.push(
                        "--dns-mode (dns_mode)",
                        format!("{other:?}: expected browse or srv"),
                    ),
                }
                if let Some(ns) = dns_nameserver {
                    match ns.parse() {
                        Ok(a) => dns.nameserver = Some(a),
                        Err(_) => p.push(
                            "--dns-nameserver (dns_nameserver)",
                            format!("{ns:?} is not an ip:port address"),
                        ),
                    }
                }
                c.discovery.dns = Some(dns);
            }
            Some("consul") => {
                let mut consul = ConsulConfig::default();
                if let Some(a) = consul_addr {
                    consul.address = a;
                }
                if let Some(s) = consul_service {
                    consul.service = s;
                }
                c.discovery.consul = Some(consul);
            }
            Some(other) => p.push(
                "--discovery (discovery)",
                format!("{other:?}: expected static, dns or consul"),
            ),
        }
        let own_certs = dev && !c.tls.development;
        // A standalone node uses none of it: no keys or certificates to demand.
        if let (false, Err(e)) = (standalone, c.validate()) {
            for mut problem in e.problems {
                const REQUIRED: &str = "required outside development: ";
                if own_certs
                    && problem.field == "gossip.keys"
                    && problem.message.starts_with(REQUIRED)
                {
                    // --dev derives its gossip key from the development CA, which explicit
                    // certificates replace.
                    problem.message = format!(
                        "required with --ca/--cert/--key, even with --dev (its key comes from \
                         the development CA): {}",
                        problem.message.trim_start_matches(REQUIRED)
                    );
                }
                p.push(&flag_of(NODOSUM_FLAGS, &problem.field), problem.message);
            }
        }
        nodosum = Some(c);
    }

    let mut m = mycel::Config::default();
    if let Some(r) = replicas {
        m.replication_factor = r;
    }
    if let Some(bytes) = max_memory {
        m.store.max_bytes = bytes;
        // Keep the default value limit workable for small budgets: at most half the budget.
        let half = usize::try_from(bytes / 2).unwrap_or(usize::MAX);
        m.store.max_value_len = m.store.max_value_len.min(half);
    }
    if let Err(problems) = m.validate() {
        for problem in problems {
            p.push(&flag_of(MYCEL_FLAGS, problem.field), problem.problem);
        }
    }

    let mut buckets: Vec<(String, BucketOptions)> = Vec::new();
    for (i, b) in file.buckets.into_iter().enumerate() {
        if b.name.is_empty() || b.name == mycel::DEFAULT_BUCKET {
            p.push(
                &format!("buckets[{i}].name"),
                format!("{:?} is empty or the built-in default bucket", b.name),
            );
            continue;
        }
        if buckets.iter().any(|(name, _)| *name == b.name) {
            p.push(
                &format!("buckets[{i}].name"),
                format!("{:?} is defined twice", b.name),
            );
            continue;
        }
        if b.default_ttl_ms == Some(0) {
            p.push(
                &format!("buckets[{i}].default_ttl_ms"),
                "must be at least 1",
            );
        }
        if b.max_value_len == Some(0) {
            p.push(&format!("buckets[{i}].max_value_len"), "must be at least 1");
        }
        buckets.push((
            b.name,
            BucketOptions {
                default_ttl: b.default_ttl_ms.map(Duration::from_millis),
                max_value_len: b.max_value_len,
            },
        ));
    }

    match nodosum {
        Some(nodosum) if p.0.is_empty() => Ok(Settings {
            dev,
            standalone,
            resp,
            resp_tls,
            admin,
            nodosum,
            mycel: m,
            buckets,
            threads,
            resp_threads,
            slowlog,
            requirepass,
            requirepass_file,
            admin_token,
            admin_token_file,
            log_format,
            verbosity: cli.verbose,
            auto_node_id,
            cluster_only,
        }),
        _ => Err(p.0),
    }
}

/// The RESP-over-TLS listener from its address (`None`: not asked for; `Err`: a bad
/// address, already reported) and files, or problems naming the flag at fault.
fn resp_tls(
    p: &mut Problems,
    addr: Option<Result<SocketAddr, ()>>,
    cert: Option<&Path>,
    key: Option<&Path>,
    client_ca: Option<&Path>,
) -> Option<RespTls> {
    let Some(addr) = addr else {
        for (given, field) in [
            (cert.is_some(), tls::CERT_FLAG),
            (key.is_some(), tls::KEY_FLAG),
            (client_ca.is_some(), tls::CLIENT_CA_FLAG),
        ] {
            if given {
                p.push(field, "only used with --resp-tls");
            }
        }
        return None;
    };
    let (Some(cert), Some(key)) = (cert, key) else {
        for (missing, field) in [
            (cert.is_none(), tls::CERT_FLAG),
            (key.is_none(), tls::KEY_FLAG),
        ] {
            if missing {
                p.push(field, "required with --resp-tls");
            }
        }
        return None;
    };
    let files = TlsFiles {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        client_ca: client_ca.map(Path::to_path_buf),
    };
    match files.load() {
        Ok(acceptor) => Some(RespTls {
            addr: addr.ok()?,
            files,
            acceptor,
        }),
        Err((field, message)) => {
            p.push(field, message);
            None
        }
    }
}

/// The client password from its flag or file (either, not both), or a problem; and the
/// file, which a reload (SIGHUP) reads again.
fn requirepass(
    p: &mut Problems,
    text: Option<String>,
    path: Option<PathBuf>,
) -> (Option<Password>, Option<PathBuf>) {
    const FLAG: &str = "--requirepass (requirepass)";
    const FILE_FLAG: &str = "--requirepass-file (requirepass_file)";
    let (field, read) = match (text, &path) {
        (None, None) => return (None, None),
        (Some(_), Some(_)) => {
            p.push(
                FLAG,
                "give either --requirepass or --requirepass-file, not both",
            );
            return (None, None);
        }
        (Some(text), None) => (
            FLAG,
            auth::password(text.as_bytes()).map_err(|m| format!("the password is {m}")),
        ),
        (None, Some(path)) => (FILE_FLAG, auth::password_file(path)),
    };
    match read {
        Ok(password) => (Some(password), path),
        Err(message) => {
            p.push(field, message);
            (None, None)
        }
    }
}

fn load_file(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// `host:port`, `:port` or a bare `port` (on `default_ip`).
fn parse_addr(text: &str, default_ip: IpAddr) -> Result<SocketAddr, String> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    let port = text.strip_prefix(':').unwrap_or(text);
    if let Ok(port) = port.parse::<u16>() {
        return Ok(SocketAddr::new(default_ip, port));
    }
    if let Some((host, port)) = text.rsplit_once(':')
        && host == "localhost"
        && let Ok(port) = port.parse::<u16>()
    {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    Err(format!("{text:?} is not an ip:port address"))
}

/// Parses a byte size: `1048576`, `256mb`, `1.5gb`, `512KiB`, `2g`. Case-insensitive.
/// `kb/mb/gb/tb` and `kib/mib/gib/tib` are powers of 1024, `k/m/g/t` powers of 1000, as in
/// redis.conf.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let bad = || format!("{text:?} is not a size (examples: 1048576, 256mb, 1.5gb, 512kib)");
    let mult: u128 = match unit.trim() {
        "" | "b" => 1,
        "k" => 1_000,
        "kb" | "kib" => 1 << 10,
        "m" => 1_000_000,
        "mb" | "mib" => 1 << 20,
        "g" => 1_000_000_000,
        "gb" | "gib" => 1 << 30,
        "t" => 1_000_000_000_000,
        "tb" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() || frac.len() > 9 || frac.contains('.') {
        return Err(bad());
    }
    let int: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let frac_value: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad())?
    };
    let scale = 10u128.pow(u32::try_from(frac.len()).map_err(|_| bad())?);
    let bytes = int
        .checked_mul(mult)
        .and_then(|b| b.checked_add(frac_value * mult / scale))
        .ok_or_else(bad)?;
    u64::try_from(bytes).map_err(|_| format!("{text:?} is too large"))
}

/// The development node ID: the hostname (made a valid ID) and the RESP port.
pub(crate) fn dev_node_id(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let mut id: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if !id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        id.insert_str(0, "mycel");
    }
    id.truncate(200);
    format!("{id}-{port}")
}

/// Whether `--gossip-key`'s value is a file rather than a base64 key: it exists, or it
/// looks like a path (a `.` or `~`, which base64 never has, or a `/` in something that
/// is not a 32-byte key's 44 characters), so a mistyped path is reported as a file that
/// cannot be read, not as bad base64.
fn names_a_file(value: &str) -> bool {
    Path::new(value).exists()
        || value.contains(['.', '~'])
        || (value.contains('/') && value.len() != 44)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from(std::iter::once("mycel").chain(args.iter().copied()))
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576"), Ok(1_048_576));
        assert_eq!(parse_size("256mb"), Ok(256 << 20));
        assert_eq!(parse_size("256MB"), Ok(256 << 20));
        assert_eq!(parse_size("2gb"), Ok(2 << 30));
        assert_eq!(parse_size("1.5gb"), Ok(3 << 29));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1k"), Ok(1000));
        assert_eq!(parse_size("0.5mib"), Ok(1 << 19));
        for bad in ["", "mb", "1.2.3gb", "12zb", "-1", "1e9", "99999999999tb"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dev_needs_nothing() {
        let s = resolve(cli(&["--dev"])).expect("valid");
        assert!(s.dev);
        assert!(s.resp.ip().is_loopback() && s.resp.port() == 6379);
        assert!(s.admin.ip().is_loopback() && s.admin.port() == 9090);
        assert!(s.nodosum.node_id.as_str().ends_with("-6379"));
        assert!(s.cluster_only.is_empty());
        assert_eq!(s.threads, None, "one worker per core unless told");
        assert_eq!(s.resp_threads, None, "half the cores unless told");
    }

    #[test]
    fn slowlog_from_flag_or_file() {
        let s = resolve(cli(&["--dev"])).expect("valid");
        assert_eq!(s.slowlog, SlowLogConfig::default());
        let s = resolve(cli(&[
            "--dev",
            "--slowlog-log-slower-than",
            "-1",
            "--slowlog-max-len",
            "0",
        ]))
        .expect("valid");
        assert_eq!(
            s.slowlog,
            SlowLogConfig {
                slower_than: None,
                max_len: 0
            }
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mycel.toml");
        let file = path.to_str().expect("utf-8");
        std::fs::write(
            &path,
            "dev = true\nslowlog_log_slower_than = 250\nslowlog_max_len = 7\n",
        )
        .expect("write");
        let s = resolve(cli(&["--config", file, "--slowlog-max-len", "9"])).expect("valid");
        assert_eq!(
            s.slowlog,
            SlowLogConfig {
                slower_than: Some(Duration::from_micros(250)),
                max_len: 9
            },
            "the flag wins over the file"
        );
        std::fs::write(&path, "dev = true\nslowlog_max_len = 100001\n").expect("write");
        let problems = resolve(cli(&["--config", file, "--slowlog-log-slower-than", "1ms"]))
            .expect_err("invalid");
        let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "--slowlog-log-slower-than (slowlog_log_slower_than)",
                "--slowlog-max-len (slowlog_max_len)"
            ],
            "{problems:?}"
        );
    }

    #[test]
    fn requirepass_from_flag_file_or_config() {
        let accepts = |s: &Settings, password: &'static str| {
            let given = crate::resp::cmd::Credentials {
                user: None,
                password: bytes::Bytes::from_static(password.as_bytes()),
            };
            auth::check(s.requirepass.as_ref(), &given).is_ok()
        };
        let s = resolve(cli(&["--dev"])).expect("valid");
        assert!(s.requirepass.is_none(), "no password unless told");
        let s = resolve(cli(&["--dev", "--requirepass", "s3cret"])).expect("valid");
        assert!(accepts(&s, "s3cret") && !accepts(&s, "s3cre"));

        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("password");
        // The first line, without its line ending.
        std::fs::write(&secret, "from file\r\nsecond line\n").expect("write");
        let secret_arg = secret.to_str().expect("utf-8");
        let s = resolve(cli(&["--dev", "--requirepass-file", secret_arg])).expect("valid");
        assert!(accepts(&s, "from file") && !accepts(&s, "from file\r"));
        let config = dir.path().join("mycel.toml");
        std::fs::write(&config, "dev = true\nrequirepass = \"in config\"\n").expect("write");
        let config_arg = config.to_str().expect("utf-8");
        let s = resolve(cli(&["--config", config_arg])).expect("valid");
        assert!(accepts(&s, "in config"));
        // A flag wins over the file, whichever of the two each gives.
        let s = resolve(cli(&[
            "--config",
            config_arg,
            "--requirepass-file",
            secret_arg,
        ]))
        .expect("valid");
        assert!(accepts(&s, "from file") && !accepts(&s, "in config"));

        let field = |args: &[&str]| {
            let problems = resolve(cli(args)).expect_err("invalid");
            assert_eq!(problems.len(), 1, "{problems:?}");
            (problems[0].field.clone(), problems[0].message.clone())
        };
        let both = field(&[
            "--dev",
            "--requirepass",
            "a",
            "--requirepass-file",
            secret_arg,
        ]);
        assert_eq!(both.0, "--requirepass (requirepass)");
        assert_eq!(
            field(&["--dev", "--requirepass", ""]),
            (
                "--requirepass (requirepass)".to_owned(),
                "the password is empty".to_owned()
            )
        );
        let missing = dir.path().join("missing");
        let (f, m) = field(&[
            "--dev",
            "--requirepass-file",
            missing.to_str().expect("utf-8"),
        ]);
        assert_eq!(f, "--requirepass-file (requirepass_file)");
        assert!(m.contains("cannot read") && m.contains("missing"), "{m}");
        // The admin token file follows the same rules under its own name.
        let missing_arg = missing.to_str().expect("utf-8");
        let (f, m) = field(&["--dev", "--admin-token-file", missing_arg]);
        assert_eq!(f, "--admin-token-file (admin_token_file)");
        assert!(m.contains("cannot read") && m.contains("missing"), "{m}");
        let s = resolve(cli(&["--dev", "--admin-token-file", secret_arg])).expect("valid");
        assert!(s.admin_token.is_some() && s.requirepass.is_none());
        std::fs::write(&secret, "\nsecond line\n").expect("write");
        let (f, m) = field(&["--dev", "--requirepass-file", secret_arg]);
        assert_eq!(f, "--requirepass-file (requirepass_file)");
        assert!(
            m.starts_with("the first line of ") && m.ends_with(" is empty"),
            "{m}"
        );
        std::fs::write(&secret, "x".repeat(auth::MAX_PASSWORD_LEN + 1)).expect("write");
        let (_, m) = field(&["--dev", "--requirepass-file", secret_arg]);
        assert!(m.contains("longer than 4096 bytes"), "{m}");
        std::fs::write(&secret, "x".repeat(auth::MAX_PASSWORD_LEN) + "\n").expect("write");
        assert!(resolve(cli(&["--dev", "--requirepass-file", secret_arg])).is_ok());
    }

    #[test]
    fn threads_from_flag_or_file() {
        for (flag, key, field) in [
            ("--threads", "threads", "--threads (threads)"),
            (
                "--resp-threads",
                "resp_threads",
                "--resp-threads (resp_threads)",
            ),
        ] {
            let get = |s: Settings| {
                if key == "threads" {
                    (s.threads, s.resp_threads)
                } else {
                    (s.resp_threads, s.threads)
                }
            };
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("mycel.toml");
            let file = path.to_str().expect("utf-8");
            assert_eq!(
                get(resolve(cli(&["--dev", flag, "3"])).expect("valid")),
                (Some(3), None),
                "{flag}"
            );
            std::fs::write(&path, format!("dev = true\n{key} = 2\n")).expect("write");
            assert_eq!(
                get(resolve(cli(&["--config", file])).expect("valid")),
                (Some(2), None),
                "{key}"
            );
            assert_eq!(
                get(resolve(cli(&["--config", file, flag, "1"])).expect("valid")),
                (Some(1), None),
                "{flag} wins over {key}"
            );
            std::fs::write(&path, format!("dev = true\n{key} = 5000\n")).expect("write");
            let problems = resolve(cli(&["--config", file])).expect_err("too many");
            assert_eq!(problems[0].field, field);
            for bad in ["many", "1025", "2.5"] {
                let problems = resolve(cli(&["--dev", flag, bad])).expect_err("invalid");
                assert_eq!(problems[0].field, field, "{bad}");
            }
        }
        // No runtime threads is no node; no connection threads leaves the connections
        // to the runtime's threads.
        let problems = resolve(cli(&["--dev", "--threads", "0"])).expect_err("invalid");
        assert_eq!(problems[0].field, "--threads (threads)");
        let s = resolve(cli(&["--dev", "--resp-threads", "0"])).expect("valid");
        assert_eq!(s.resp_threads, Some(0));
    }

    #[test]
    fn dev_with_own_certificates_says_why_it_needs_a_gossip_key() {
        let problems = resolve(cli(&[
            "--dev",
            "--node-id",
            "n1",
            "--ca",
            "/nonexistent/ca.pem",
            "--cert",
            "/nonexistent/n1.pem",
            "--key",
            "/nonexistent/n1-key.pem",
        ]))
        .expect_err("invalid");
        let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            all.iter().any(|p| p.starts_with(
                "--gossip-key (gossip_key): required with --ca/--cert/--key, even with --dev"
            ) && p.contains("head -c 32 /dev/urandom | base64")),
            "{all:?}"
        );
    }

    #[test]
    fn a_gossip_key_that_looks_like_a_path_is_read_as_a_file() {
        for path in [
            "/etc/mycel/gossip.key",
            "gossip.key",
            "~/k",
            "keys/gossip",
            "/tmp",
        ] {
            assert!(names_a_file(path), "{path}");
        }
        // 32 random bytes in base64, `/` and `+` included.
        for key in [
            "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=",
            "a/b+cd//q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq8M=",
        ] {
            assert!(!names_a_file(key), "{key}");
        }
        let problems = resolve(cli(&[
            "--node-id",
            "n1",
            "--gossip-key",
            "/nonexistent/gossip.key",
        ]))
        .expect_err("invalid");
        let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            all.iter().any(|p| p.contains("--gossip-key (gossip_key)")
                && p.contains("/nonexistent/gossip.key")),
            "{all:?}"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_flag() {
        let problems = resolve(cli(&[
            "--resp",
            "nope",
            "--max-memory",
            "12zb",
            "--replicas",
            "0",
            "--log-format",
            "xml",
            "--discovery",
            "carrier-pigeon",
            "--threads",
            "0",
        ]))
        .expect_err("invalid");
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        for want in [
            "--threads (threads)",
            "--resp (resp)",
            "--max-memory (max_memory)",
            "--node-id (node_id)",
            "--log-format (log_format)",
        ] {
            assert!(fields.contains(&want), "{want} missing from {fields:?}");
        }
        // Without a node ID the cluster config cannot be built; with one, its problems show.
        let problems = resolve(cli(&[
            "--node-id",
            "n1",
            "--replicas",
            "0",
            "--discovery",
            "dns",
        ]))
        .expect_err("invalid");
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let all = text.join("\n");
        for want in [
            "--replicas (replicas)",
            "--dns-name (dns_name)",
            "--gossip-key (gossip_key)",
            "--ca (ca)",
            "--advertise (advertise)",
        ] {
            assert!(all.contains(want), "{want} missing from:\n{all}");
        }
    }

    #[test]
    fn discovery_settings_are_used_or_refused() {
        let s = resolve(cli(&[
            "--dev",
            "--discovery",
            "static",
            "--seed",
            "127.0.0.1:7001",
        ]))
        .expect("static discovery with a seed");
        assert!(s.nodosum.discovery.static_seeds.is_some());
        let fields = |args: &[&str]| -> Vec<String> {
            resolve(cli(args))
                .expect_err("invalid")
                .into_iter()
                .map(|p| p.field)
                .collect()
        };
        assert_eq!(
            fields(&["--dev", "--discovery", "static"]),
            ["--discovery (discovery)"]
        );
        // A forgotten --discovery: the options of the other methods are not dropped silently.
        assert_eq!(
            fields(&[
                "--dev",
                "--dns-name",
                "_mycel._udp.local",
                "--consul-service",
                "m"
            ]),
            ["--dns-name (dns_name)", "--consul-service (consul_service)"]
        );
        assert_eq!(
            fields(&[
                "--dev",
                "--discovery",
                "consul",
                "--dns-nameserver",
                "127.0.0.1:53"
            ]),
            ["--dns-nameserver (dns_nameserver)"]
        );
    }

    #[test]
    fn file_problems_name_the_file_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mycel.toml");
        let file = path.to_str().expect("utf-8");
        std::fs::write(
            &path,
            "dev = true\n[[buckets]]\nname = \"a\"\n[[buckets]]\nname = \"b\"\nmax_value_len = 0\n[[buckets]]\nname = \"a\"\n",
        )
        .expect("write");
        let problems = resolve(cli(&["--config", file, "--max-memory", "0"])).expect_err("invalid");
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(
            text[0].starts_with("--max-memory (max_memory): "),
            "{text:?}"
        );
        assert_eq!(text[1], "buckets[1].max_value_len: must be at least 1");
        assert_eq!(text[2], "buckets[2].name: \"a\" is defined twice");
        std::fs::write(&path, "dev = true\nmax_memory = -5\n").expect("write");
        let problems = resolve(cli(&["--config", file])).expect_err("invalid");
        assert!(
            problems[0]
                .message
                .contains("expected a number of bytes or a size such as \"256mb\""),
            "{problems:?}"
        );
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mycel.toml");
        std::fs::write(
            &path,
            "dev = true\nresp = \"127.0.0.1:7001\"\nmax_memory = \"64mb\"\n[[buckets]]\nname = \"sessions\"\ndefault_ttl_ms = 1000\n",
        )
        .expect("write");
        let s = resolve(cli(&[
            "--config",
            path.to_str().expect("utf-8"),
            "--resp",
            "127.0.0.1:7002",
        ]))
        .expect("valid");
        assert_eq!(s.resp.port(), 7002);
        assert_eq!(s.mycel.store.max_bytes, 64 << 20);
        assert_eq!(s.buckets[0].0, "sessions");
        std::fs::write(&path, "dev = true\nbogus = 1\n").expect("write");
        let problems =
            resolve(cli(&["--config", path.to_str().expect("utf-8")])).expect_err("unknown key");
        assert!(problems[0].message.contains("bogus"), "{problems:?}");
    }

    #[test]
    fn the_example_config_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/mycel.toml");
        let s = resolve(cli(&["--config", path])).expect("valid");
        assert!(s.dev);
        assert_eq!(s.mycel.store.max_bytes, 256 << 20);
        let names: Vec<&str> = s.buckets.iter().map(|b| b.0.as_str()).collect();
        assert_eq!(names, ["sessions", "pages"]);
        assert_eq!(
            s.buckets[0].1.default_ttl,
            Some(Duration::from_secs(30 * 60))
        );
    }

    #[test]
    fn cluster_settings_are_noted() {
        let s = resolve(cli(&[
            "--dev",
            "--seed",
            "127.0.0.1:7000",
            "--replicas",
            "3",
        ]))
        .expect("valid");
        assert_eq!(s.cluster_only, ["--seed", "--replicas"]);
        assert_eq!(s.mycel.replication_factor, 3);
    }

    #[test]
    fn quic_congestion_from_flag_or_file() {
        let s = resolve(cli(&["--dev"])).expect("valid");
        assert_eq!(s.nodosum.quic.congestion, nodosum::Congestion::Cubic);
        let s = resolve(cli(&["--dev", "--quic-congestion", "bbr"])).expect("valid");
        assert_eq!(s.nodosum.quic.congestion, nodosum::Congestion::Bbr);
        assert_eq!(s.cluster_only, ["--quic-congestion"]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mycel.toml");
        std::fs::write(&file, "dev = true\nquic_congestion = \"bbr\"\n").unwrap();
        let s = resolve(cli(&["--config", file.to_str().unwrap()])).expect("valid");
        assert_eq!(s.nodosum.quic.congestion, nodosum::Congestion::Bbr);
        let problems = resolve(cli(&["--dev", "--quic-congestion", "reno"])).expect_err("invalid");
        let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(all.len(), 1, "{all:?}");
        assert!(
            all[0].contains("--quic-congestion (quic_congestion)")
                && all[0].contains("cubic or bbr"),
            "{all:?}"
        );
    }

    #[test]
    fn a_malformed_seed_is_named_with_its_flag() {
        let problems =
            resolve(cli(&["--dev", "--seed", "nope", "--replicas", "0"])).expect_err("invalid");
        let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
        for want in ["--seed (seeds[0])", "--replicas"] {
            assert!(all.iter().any(|p| p.contains(want)), "{want} in {all:?}");
        }
    }

    #[test]
    fn a_standalone_server_needs_no_cluster_settings() {
        let s = resolve(cli(&["--standalone", "--node-id", "s1"])).expect("valid");
        assert!(s.standalone && !s.dev);
        // The same without --standalone is a cluster node, which needs keys and
        // certificates.
        let problems = resolve(cli(&["--node-id", "s1"])).expect_err("invalid");
        let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(all.iter().any(|p| p.contains("--gossip-key")), "{all:?}");
    }
}
