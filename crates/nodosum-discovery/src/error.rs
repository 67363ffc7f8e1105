//! The crate's error type.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use nodosum_proto::IdError;

/// Everything that can go wrong in discovery.
///
/// Construction errors (`Config`, which also covers unusable TLS files, `InvalidSeed`,
/// `ReadFile`, `HttpClient`) are returned by the
/// backends' `new`; nothing was started. Round errors are returned by
/// [`Discovery::discover`](crate::Discovery::discover) (the backend could not answer; nothing
/// the caller knew is lost) or carried in [`Discovered::skipped`](crate::Discovered::skipped)
/// (one answer was dropped, the round went on).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration field has a value that cannot work.
    #[error("invalid configuration: {field}: {problem}")]
    Config {
        /// Field path, e.g. `dns.name`.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// A static seed entry is not `[id@]host:port`.
    #[error("static seed {entry:?}: {problem}")]
    InvalidSeed {
        /// The entry as configured.
        entry: String,
        /// What is wrong with it.
        problem: SeedProblem,
    },
    /// Resolving a static seed's host name failed.
    #[error("static seed {entry:?} did not resolve: {source}")]
    Resolve {
        /// The entry as configured.
        entry: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// A static seed's host name resolved to no address.
    #[error("static seed {entry:?} resolved to no address")]
    NoAddress {
        /// The entry as configured.
        entry: String,
    },
    /// Resolving a name took longer than the configured timeout.
    #[error("resolving {entry:?} took longer than {after:?}")]
    ResolveTimeout {
        /// The name or entry being resolved.
        entry: String,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// Not one static seed resolved this round.
    #[error("no static seed resolved ({} failed)", errors.len())]
    NoSeedResolved {
        /// One error per configured entry.
        errors: Vec<Self>,
    },

    /// A DNS query failed (server unreachable, timeout, SERVFAIL, REFUSED...).
    #[error("DNS {record_type} lookup of {name:?} failed: {source}")]
    Dns {
        /// The name queried.
        name: String,
        /// The record type queried (`PTR`, `SRV`, `TXT`, `A/AAAA`).
        record_type: &'static str,
        /// The resolver's error.
        #[source]
        source: Box<hickory_resolver::net::NetError>,
    },
    /// The DNS resolver could not be set up (e.g. unreadable `/etc/resolv.conf`).
    #[error("DNS resolver setup failed: {source}")]
    DnsSetup {
        /// The resolver's error.
        #[source]
        source: Box<hickory_resolver::net::NetError>,
    },
    /// An SRV record points to a host name with no A or AAAA record.
    #[error("SRV record of {name:?} points to {target:?}, which has no address record")]
    SrvTargetWithoutAddress {
        /// The name holding the SRV record.
        name: String,
        /// The SRV target.
        target: String,
    },
    /// An SRV record's target is `.`: by RFC 2782 the service is decidedly not available there.
    #[error("SRV record of {name:?} has target \".\" (service not available)")]
    SrvTargetRoot {
        /// The name holding the SRV record.
        name: String,
    },
    /// An SRV record has port 0, which cannot be a gossip port.
    #[error("SRV record of {name:?} (target {target:?}) has port 0")]
    SrvPortZero {
        /// The name holding the SRV record.
        name: String,
        /// The SRV target.
        target: String,
    },
    /// A DNS-SD instance named by a PTR record has no SRV record.
    #[error("DNS-SD instance {instance:?} has no SRV record")]
    InstanceWithoutSrv {
        /// The instance name.
        instance: String,
    },
    /// A TXT record string of a DNS-SD instance could not be used.
    #[error("TXT record of {instance:?}: entry {entry:?}: {problem}")]
    MalformedTxt {
        /// The instance name.
        instance: String,
        /// The TXT string, lossily decoded and truncated to 64 characters.
        entry: String,
        /// What is wrong with it.
        problem: TxtProblem,
    },

    /// An HTTP request to Consul failed below HTTP (connection refused, TLS, reset).
    #[error("Consul request to {url} failed: {source}")]
    ConsulRequest {
        /// The request URL (without the token, which travels in a header).
        url: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// Consul did not answer within the request timeout.
    #[error("Consul request to {url} got no answer within {after:?}")]
    ConsulTimeout {
        /// The request URL.
        url: String,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// Consul answered 403: the ACL token is missing, wrong or lacks a permission.
    #[error(
        "Consul refused {url} (403 Forbidden): missing, wrong or insufficient ACL token: {body}"
    )]
    ConsulForbidden {
        /// The request URL.
        url: String,
        /// Consul's explanation (truncated).
        body: String,
    },
    /// Consul answered with another non-success status.
    #[error("Consul answered {status} to {url}: {body}")]
    ConsulStatus {
        /// The request URL.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The answer body (truncated).
        body: String,
    },
    /// A Consul answer was larger than the configured limit; it was not read further.
    #[error("Consul answer from {url} exceeds {max} bytes")]
    ConsulTooLarge {
        /// The request URL.
        url: String,
        /// The limit in bytes.
        max: usize,
    },
    /// A Consul answer is not JSON of the documented shape.
    #[error("Consul answer from {url} is not of the documented shape: {source}")]
    ConsulDecode {
        /// The request URL.
        url: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// One entry of a Consul health answer could not be used.
    #[error("Consul entry {service_id:?} on node {node:?}: {problem}")]
    ConsulEntry {
        /// `Service.ID` of the entry.
        service_id: String,
        /// `Node.Node` of the entry.
        node: String,
        /// What is wrong with it.
        problem: EntryProblem,
    },
    /// Reading a configured file failed.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Building the HTTP client failed.
    #[error("building the HTTP client failed: {source}")]
    HttpClient {
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },

    /// One backend of a [`Multi`](crate::Multi) failed; the others' results were kept.
    #[error("discovery backend {backend} failed: {source}")]
    Backend {
        /// The failing backend's name.
        backend: String,
        /// Its error.
        #[source]
        source: Box<Self>,
    },
    /// Every backend of a [`Multi`](crate::Multi) failed.
    #[error("all {} discovery backends failed", errors.len())]
    AllBackendsFailed {
        /// One [`Error::Backend`] per backend.
        errors: Vec<Self>,
    },
}

impl Error {
    /// A short, stable label for metrics (`errors_total{kind=...}`, `skipped_total{reason=...}`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Config { .. } => "config",
            Self::InvalidSeed { .. } => "invalid_seed",
            Self::Resolve { .. } => "resolve",
            Self::NoAddress { .. } => "no_address",
            Self::ResolveTimeout { .. } => "resolve_timeout",
            Self::NoSeedResolved { .. } => "no_seed_resolved",
            Self::Dns { .. } => "dns",
            Self::DnsSetup { .. } => "dns_setup",
            Self::SrvTargetWithoutAddress { .. } => "srv_target_without_address",
            Self::SrvTargetRoot { .. } => "srv_target_root",
            Self::SrvPortZero { .. } => "srv_port_zero",
            Self::InstanceWithoutSrv { .. } => "instance_without_srv",
            Self::MalformedTxt { .. } => "malformed_txt",
            Self::ConsulRequest { .. } => "consul_request",
            Self::ConsulTimeout { .. } => "consul_timeout",
            Self::ConsulForbidden { .. } => "consul_forbidden",
            Self::ConsulStatus { .. } => "consul_status",
            Self::ConsulTooLarge { .. } => "consul_too_large",
            Self::ConsulDecode { .. } => "consul_decode",
            Self::ConsulEntry { .. } => "consul_entry",
            Self::ReadFile { .. } => "read_file",
            Self::HttpClient { .. } => "http_client",
            Self::Backend { .. } => "backend",
            Self::AllBackendsFailed { .. } => "all_backends_failed",
        }
    }
}

/// Why a static seed entry is not `[id@]host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SeedProblem {
    /// The entry has no `:port`.
    #[error("missing :port")]
    MissingPort,
    /// The port is not a number in 1..=65535.
    #[error("port {port:?} is not a number in 1..=65535")]
    InvalidPort {
        /// The port text.
        port: String,
    },
    /// The host part is empty.
    #[error("empty host")]
    EmptyHost,
    /// The `id@` prefix is not a valid node ID.
    #[error("invalid node id: {0}")]
    InvalidNodeId(#[source] IdError),
}

/// Why a DNS-SD TXT string was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TxtProblem {
    /// The string is not UTF-8.
    #[error("not UTF-8")]
    NotUtf8,
    /// The string starts with `=` (RFC 6763 §6.4: such strings are silently ignored).
    #[error("empty key")]
    EmptyKey,
    /// `id=` holds an invalid node ID.
    #[error("invalid node id: {0}")]
    InvalidNodeId(#[source] IdError),
    /// `quic=` does not hold a port in 1..=65535.
    #[error("invalid QUIC port {value:?}")]
    InvalidPort {
        /// The value text.
        value: String,
    },
}

/// Why a Consul health entry was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryProblem {
    /// Neither `Service.Address` nor `Node.Address` is set.
    #[error("no address (Service.Address and Node.Address are empty)")]
    NoAddress,
    /// The address is neither an IP literal nor a name that resolves.
    #[error("address {address:?} does not resolve")]
    UnresolvableAddress {
        /// The address text.
        address: String,
    },
    /// `Service.Port` is 0 or above 65535.
    #[error("port {port} is not in 1..=65535")]
    InvalidPort {
        /// The port as sent.
        port: i64,
    },
    /// The node ID in `Service.Meta` is invalid.
    #[error("invalid node id in meta: {0}")]
    InvalidNodeId(#[source] IdError),
    /// The QUIC port in `Service.Meta` is not a port.
    #[error("invalid QUIC port {value:?} in meta")]
    InvalidQuicPort {
        /// The value text.
        value: String,
    },
}

/// Truncates untrusted text for error messages and logs.
pub(crate) fn truncate(text: &str, max_chars: usize) -> String {
    let mut out: String = text.chars().take(max_chars).collect();
    if text.chars().nth(max_chars).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_marks_cut_text() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdef", 3), "abc…");
    }

    #[test]
    fn display_names_the_entry() {
        let e = Error::InvalidSeed {
            entry: "host".into(),
            problem: SeedProblem::MissingPort,
        };
        assert_eq!(e.to_string(), "static seed \"host\": missing :port");
        assert_eq!(e.kind(), "invalid_seed");
    }
}
