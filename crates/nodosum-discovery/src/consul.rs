//! Consul: healthy instances from the health endpoint, blocking queries, ACL token, TLS,
//! optional self-registration with a TTL check.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nodosum_proto::NodeId;
use reqwest::header::HeaderValue;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::truncate;
use crate::{BoxFuture, Candidate, Discovered, Discovery, EntryProblem, Error};

/// `Service.Meta` key holding the instance's node ID.
pub const META_NODE_ID: &str = "nodosum_node_id";
/// `Service.Meta` key holding the instance's QUIC port.
pub const META_QUIC_PORT: &str = "nodosum_quic_port";

/// Configuration of [`ConsulDiscovery`].
///
/// ```toml
/// [discovery.consul]
/// address = "https://127.0.0.1:8501"
/// service = "nodosum"
/// tags = ["prod"]
/// datacenter = "dc1"
/// token_file = "/etc/nodosum/consul-token"
/// ca_file = "/etc/nodosum/consul-ca.pem"
/// wait = "60s"
///
/// [discovery.consul.register]
/// id = "node-1"
/// address = "10.0.0.1"
/// port = 6969
/// node_id = "node-1"
/// quic_port = 6970
/// ttl = "15s"
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsulConfig {
    /// Base URL of the Consul agent's HTTP API. `https://` enables TLS. Default
    /// `http://127.0.0.1:8500` (Consul's default HTTP address).
    pub address: String,
    /// The Consul service name the nodes register under and discovery asks for. Letters,
    /// digits, `-`, `_`, `.`. Default `nodosum`.
    pub service: String,
    /// Only instances carrying every one of these tags (`tag=` parameters). Default none.
    pub tags: Vec<String>,
    /// Datacenter to ask (`dc=`). Default: the agent's own.
    pub datacenter: Option<String>,
    /// ACL token sent as `X-Consul-Token`. Default none (anonymous).
    pub token: Option<String>,
    /// File holding the ACL token (whitespace trimmed); read once at construction. Used when
    /// `token` is not set.
    pub token_file: Option<PathBuf>,
    /// PEM file of the CA that signed the agent's HTTPS certificate; when set (or
    /// `ca_pem`), only this CA is trusted. Default: the platform's trust store.
    pub ca_file: Option<PathBuf>,
    /// The same CA as inline PEM text (e.g. from a secret in the environment).
    pub ca_pem: Option<String>,
    /// PEM file with a client certificate chain followed by its private key, for agents
    /// that verify incoming HTTPS clients (`verify_incoming`). Default none.
    pub client_identity_file: Option<PathBuf>,
    /// Use blocking queries (`index` + `wait`) so that a change is delivered as soon as
    /// Consul sees it instead of at the next poll. Default true.
    pub blocking: bool,
    /// Longest a blocking query waits (`wait=`); Consul adds up to `wait / 16` and caps at
    /// 10 min. Default 60 s, so a round reports within a minute even when nothing changes.
    #[serde(with = "crate::duration")]
    pub wait: Duration,
    /// Timeout of a non-blocking request, and the slack added to `wait * 17/16` for a
    /// blocking one. Default 10 s.
    #[serde(with = "crate::duration")]
    pub request_timeout: Duration,
    /// Largest answer body read, in bytes. Default 16 MiB (about 20 000 instances).
    pub max_response_bytes: usize,
    /// Register this node with the agent. Default none.
    pub register: Option<RegistrationConfig>,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        Self {
            address: "http://127.0.0.1:8500".into(),
            service: "nodosum".into(),
            tags: Vec::new(),
            datacenter: None,
            token: None,
            token_file: None,
            ca_file: None,
            ca_pem: None,
            client_identity_file: None,
            blocking: true,
            wait: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            max_response_bytes: 16 << 20,
            register: None,
        }
    }
}

impl fmt::Debug for ConsulConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulConfig")
            .field("address", &self.address)
            .field("service", &self.service)
            .field("tags", &self.tags)
            .field("datacenter", &self.datacenter)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("ca_file", &self.ca_file)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .field("client_identity_file", &self.client_identity_file)
            .field("blocking", &self.blocking)
            .field("wait", &self.wait)
            .field("request_timeout", &self.request_timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("register", &self.register)
            .finish()
    }
}

/// How this node registers itself with the Consul agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrationConfig {
    /// Service instance ID, unique on the agent (`ID`). Required; the node ID is a good
    /// choice.
    pub id: String,
    /// Address other nodes reach this node's gossip port at (`Address`). Default: empty,
    /// meaning the agent's node address.
    pub address: Option<String>,
    /// This node's gossip port (`Port`). Required.
    pub port: u16,
    /// Extra tags (`Tags`). Default none.
    pub tags: Vec<String>,
    /// Extra metadata (`Meta`); the node ID and QUIC port are added under
    /// [`META_NODE_ID`] and [`META_QUIC_PORT`]. Default none.
    pub meta: BTreeMap<String, String>,
    /// This node's ID, published as `Meta.nodosum_node_id`.
    pub node_id: Option<NodeId>,
    /// This node's QUIC port, published as `Meta.nodosum_quic_port`.
    pub quic_port: Option<u16>,
    /// TTL of the health check; the node marks it passing every `ttl / 3`. Default 15 s.
    #[serde(with = "crate::duration")]
    pub ttl: Duration,
    /// The agent removes the instance after its check has been critical this long
    /// (`DeregisterCriticalServiceAfter`), cleaning up after a node that died without
    /// deregistering. Zero disables. Default 1 min (Consul's minimum).
    #[serde(with = "crate::duration")]
    pub deregister_critical_after: Duration,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        Self {
            id: String::new(),
            address: None,
            port: 0,
            tags: Vec::new(),
            meta: BTreeMap::new(),
            node_id: None,
            quic_port: None,
            ttl: Duration::from_secs(15),
            deregister_critical_after: Duration::from_secs(60),
        }
    }
}

/// Discovery through Consul's HTTP API.
///
/// See the crate documentation for which Consul documentation each behaviour follows.
pub struct ConsulDiscovery {
    client: reqwest::Client,
    base: String,
    service: String,
    tags: Vec<String>,
    datacenter: Option<String>,
    token: Option<HeaderValue>,
    blocking: bool,
    wait: Duration,
    request_timeout: Duration,
    max_response_bytes: usize,
    registration: Option<RegistrationConfig>,
    /// Last `X-Consul-Index` (`None`: next query is non-blocking).
    index: Mutex<Option<u64>>,
}

impl fmt::Debug for ConsulDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulDiscovery")
            .field("base", &self.base)
            .field("service", &self.service)
            .field("tags", &self.tags)
            .field("datacenter", &self.datacenter)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("blocking", &self.blocking)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

/// One element of `GET /v1/health/service/:service` (only the fields read here).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthEntry {
    #[serde(default)]
    node: NodeInfo,
    service: ServiceInfo,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NodeInfo {
    #[serde(default)]
    node: String,
    #[serde(default)]
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceInfo {
    #[serde(default, rename = "ID")]
    id: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: i64,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
}

fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn read_file(path: &PathBuf) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::ReadFile {
        path: path.clone(),
        source,
    })
}

fn http_client(config: &ConsulConfig) -> Result<reqwest::Client, Error> {
    // reqwest's rustls backend asks for the process-wide crypto provider; this workspace
    // uses ring everywhere. Installing fails harmlessly when one is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("nodosum-discovery/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(config.request_timeout);
    // Problems with the TLS files name their setting (and file).
    let ca = match (&config.ca_pem, &config.ca_file) {
        (Some(pem), _) => Some(("consul.ca_pem", String::new(), pem.as_bytes().to_vec())),
        (None, Some(path)) => Some((
            "consul.ca_file",
            format!("{}: ", path.display()),
            read_file(path)?,
        )),
        (None, None) => None,
    };
    if let Some((field, file, pem)) = ca {
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| Error::Config {
            field,
            problem: format!("{file}not a PEM certificate bundle: {e}"),
        })?;
        if certs.is_empty() {
            return Err(Error::Config {
                field,
                problem: format!("{file}holds no PEM certificate"),
            });
        }
        builder = builder.tls_certs_only(certs);
    }
    if let Some(path) = &config.client_identity_file {
        let pem = read_file(path)?;
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| Error::Config {
            field: "consul.client_identity_file",
            problem: format!(
                "{}: not a PEM certificate chain and private key: {e}",
                path.display()
            ),
        })?;
        builder = builder.identity(identity);
    }
    builder
        .build()
        .map_err(|source| Error::HttpClient { source })
}

impl ConsulDiscovery {
    /// Validates the configuration, reads the token and TLS files, builds the HTTP client.
    /// Sends nothing.
    pub fn new(config: &ConsulConfig) -> Result<Self, Error> {
        let base = config.address.trim().trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Config {
                field: "consul.address",
                problem: format!("{:?} must start with http:// or https://", config.address),
            });
        }
        if !valid_service_name(&config.service) {
            return Err(Error::Config {
                field: "consul.service",
                problem: format!(
                    "{:?} must be non-empty letters, digits, '-', '_' or '.'",
                    config.service
                ),
            });
        }
        if config.wait > Duration::from_secs(600) || config.wait < Duration::from_secs(1) {
            return Err(Error::Config {
                field: "consul.wait",
                problem: "must be between 1 s and 10 min (Consul's limit)".into(),
            });
        }
        if config.max_response_bytes == 0 {
            return Err(Error::Config {
                field: "consul.max_response_bytes",
                problem: "must be positive".into(),
            });
        }
        if let Some(r) = &config.register {
            validate_registration(r)?;
        }
        let token = match (&config.token, &config.token_file) {
            (Some(t), _) => Some(t.trim().to_owned()),
            (None, Some(path)) => {
                Some(String::from_utf8_lossy(&read_file(path)?).trim().to_owned())
            }
            (None, None) => None,
        };
        let token = match token {
            Some(t) if !t.is_empty() => {
                let mut v = HeaderValue::from_str(&t).map_err(|_| Error::Config {
                    field: "consul.token",
                    problem: "holds characters not allowed in an HTTP header".into(),
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            _ => None,
        };
        Ok(Self {
            client: http_client(config)?,
            base,
            service: config.service.clone(),
            tags: config.tags.clone(),
            datacenter: config.datacenter.clone(),
            token,
            blocking: config.blocking,
            wait: config.wait,
            request_timeout: config.request_timeout,
            max_response_bytes: config.max_response_bytes,
            registration: config.register.clone(),
            index: Mutex::new(None),
        })
    }

    /// The `X-Consul-Index` the next query will block on, if any.
    pub fn blocking_index(&self) -> Option<u64> {
        *self
            .index
            .lock()
            .expect("invariant: index lock is never poisoned")
    }

    fn request(&self, method: Method, path: &str) -> (String, reqwest::RequestBuilder) {
        let url = format!("{}{path}", self.base);
        let mut req = self.client.request(method, &url);
        if let Some(token) = &self.token {
            req = req.header("X-Consul-Token", token.clone());
        }
        (url, req)
    }

    /// Sends `req`, maps transport errors and non-success statuses, reads a bounded body.
    async fn send(
        &self,
        url: &str,
        req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<(reqwest::header::HeaderMap, Vec<u8>), Error> {
        let map_err = |source: reqwest::Error| {
            if source.is_timeout() {
                Error::ConsulTimeout {
                    url: url.to_owned(),
                    after: timeout,
                }
            } else {
                Error::ConsulRequest {
                    url: url.to_owned(),
                    source,
                }
            }
        };
        let fut = async {
            let mut resp = req.timeout(timeout).send().await.map_err(map_err)?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(map_err)? {
                if body.len() + chunk.len() > self.max_response_bytes {
                    return Err(Error::ConsulTooLarge {
                        url: url.to_owned(),
                        max: self.max_response_bytes,
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok((status, headers, body))
        };
        // reqwest's timeout covers the body too; this outer guard only bounds a server
        // that trickles bytes forever.
        let (status, headers, body) =
            tokio::time::timeout(timeout, fut)
                .await
                .map_err(|_| Error::ConsulTimeout {
                    url: url.to_owned(),
                    after: timeout,
                })??;
        let text = || truncate(&String::from_utf8_lossy(&body), 256);
        if status == StatusCode::FORBIDDEN {
            return Err(Error::ConsulForbidden {
                url: url.to_owned(),
                body: text(),
            });
        }
        if !status.is_success() {
            return Err(Error::ConsulStatus {
                url: url.to_owned(),
                status: status.as_u16(),
                body: text(),
            });
        }
        Ok((headers, body))
    }

    async fn run(&self) -> Result<Discovered, Error> {
        let index = if self.blocking {
            self.blocking_index()
        } else {
            None
        };
        let (url, mut req) =
            self.request(Method::GET, &format!("/v1/health/service/{}", self.service));
        let mut query: Vec<(&str, String)> = vec![("passing", "true".into())];
        for tag in &self.tags {
            query.push(("tag", tag.clone()));
        }
        if let Some(dc) = &self.datacenter {
            query.push(("dc", dc.clone()));
        }
        let timeout = match index {
            Some(i) => {
                query.push(("index", i.to_string()));
                query.push(("wait", crate::duration::format(self.wait)));
                // Saturating: durations come from configuration, unbounded.
                self.wait
                    .saturating_add(self.wait / 16)
                    .saturating_add(self.request_timeout)
            }
            None => self.request_timeout,
        };
        req = req.query(&query);
        let (headers, body) = self.send(&url, req, timeout).await?;

        let entries: Vec<HealthEntry> =
            serde_json::from_slice(&body).map_err(|source| Error::ConsulDecode {
                url: url.clone(),
                source,
            })?;
        // Only an answer that decoded moves the index on: blocking on the index of a body
        // that could not be read would wait for the next change and miss this one.
        let new_index = headers
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        self.update_index(index, new_index);
        let mut out = Discovered::default();
        for entry in entries {
            match self.candidate(entry, &mut out).await {
                Ok(c) => out.push(c),
                Err(e) => out.skip(self.name(), e),
            }
        }
        Ok(out)
    }

    /// The index rules of Consul's "Blocking Queries" documentation, "Implementation
    /// Details": reset to 0 (a non-blocking query) when the index goes backwards, and never
    /// block on an index below 1.
    fn update_index(&self, sent: Option<u64>, received: Option<u64>) {
        let mut index = self
            .index
            .lock()
            .expect("invariant: index lock is never poisoned");
        *index = match (sent, received) {
            (_, None) => None,
            (Some(old), Some(new)) if new < old => {
                tracing::info!(old, new, "Consul index went backwards; resetting");
                None
            }
            (_, Some(new)) => Some(new.max(1)),
        };
    }

    async fn candidate(
        &self,
        entry: HealthEntry,
        out: &mut Discovered,
    ) -> Result<Candidate, Error> {
        let problem = |problem| Error::ConsulEntry {
            service_id: truncate(&entry.service.id, 128),
            node: truncate(&entry.node.node, 128),
            problem,
        };
        let port = match u16::try_from(entry.service.port) {
            Ok(p) if p != 0 => p,
            _ => {
                return Err(problem(EntryProblem::InvalidPort {
                    port: entry.service.port,
                }));
            }
        };
        // Consul's health docs: Service.Address is empty when the instance uses its node's
        // address, which is then Node.Address.
        let address = if entry.service.address.is_empty() {
            entry.node.address.as_str()
        } else {
            entry.service.address.as_str()
        };
        if address.is_empty() {
            return Err(problem(EntryProblem::NoAddress));
        }
        let gossip_addr = match address.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, port),
            Err(_) => {
                let lookup = tokio::net::lookup_host((address, port));
                match tokio::time::timeout(self.request_timeout, lookup).await {
                    Ok(Ok(mut addrs)) => match addrs.next() {
                        Some(a) => a,
                        None => {
                            return Err(problem(EntryProblem::UnresolvableAddress {
                                address: truncate(address, 128),
                            }));
                        }
                    },
                    _ => {
                        return Err(problem(EntryProblem::UnresolvableAddress {
                            address: truncate(address, 128),
                        }));
                    }
                }
            }
        };
        let mut candidate = Candidate::new(gossip_addr);
        let meta = entry.service.meta.as_ref();
        if let Some(id) = meta.and_then(|m| m.get(META_NODE_ID)) {
            match NodeId::new(id.as_str()) {
                Ok(id) => candidate.node_id = Some(id),
                Err(e) => out.skip(self.name(), problem(EntryProblem::InvalidNodeId(e))),
            }
        }
        if let Some(q) = meta.and_then(|m| m.get(META_QUIC_PORT)) {
            match q.parse::<u16>() {
                Ok(p) if p != 0 => candidate.quic_port = Some(p),
                _ => out.skip(
                    self.name(),
                    problem(EntryProblem::InvalidQuicPort {
                        value: truncate(q, 16),
                    }),
                ),
            }
        }
        Ok(candidate)
    }

    fn registration(&self) -> Result<&RegistrationConfig, Error> {
        self.registration.as_ref().ok_or_else(|| Error::Config {
            field: "consul.register",
            problem: "self-registration is not configured".into(),
        })
    }

    /// The TTL check's ID: Consul names a service's embedded check `service:<service id>`.
    fn check_id(reg: &RegistrationConfig) -> String {
        format!("service:{}", reg.id)
    }

    /// Registers this node: `PUT /v1/agent/service/register?replace-existing-checks=true`
    /// with a TTL check. The check starts critical until [`ConsulDiscovery::pass_ttl`].
    pub async fn register(&self) -> Result<(), Error> {
        let reg = self.registration()?;
        let mut meta = reg.meta.clone();
        if let Some(id) = &reg.node_id {
            meta.insert(META_NODE_ID.into(), id.to_string());
        }
        if let Some(q) = reg.quic_port {
            meta.insert(META_QUIC_PORT.into(), q.to_string());
        }
        let mut check = serde_json::json!({
            "CheckID": Self::check_id(reg),
            "Name": format!("{} TTL", self.service),
            "TTL": crate::duration::format(reg.ttl),
        });
        if !reg.deregister_critical_after.is_zero() {
            check["DeregisterCriticalServiceAfter"] =
                crate::duration::format(reg.deregister_critical_after).into();
        }
        let body = serde_json::json!({
            "ID": reg.id,
            "Name": self.service,
            "Tags": reg.tags,
            "Address": reg.address.clone().unwrap_or_default(),
            "Port": reg.port,
            "Meta": meta,
            "Check": check,
        });
        let (url, req) = self.request(Method::PUT, "/v1/agent/service/register");
        let req = req
            .query(&[("replace-existing-checks", "true")])
            .json(&body);
        self.send(&url, req, self.request_timeout).await?;
        tracing::info!(id = %reg.id, service = %self.service, "registered with Consul");
        Ok(())
    }

    /// Marks the TTL check passing: `PUT /v1/agent/check/pass/service:<id>`.
    pub async fn pass_ttl(&self) -> Result<(), Error> {
        let reg = self.registration()?;
        let (url, req) = self.request(
            Method::PUT,
            &format!("/v1/agent/check/pass/{}", Self::check_id(reg)),
        );
        self.send(&url, req, self.request_timeout).await?;
        Ok(())
    }

    /// Removes this node: `PUT /v1/agent/service/deregister/<id>`.
    pub async fn deregister(&self) -> Result<(), Error> {
        let reg = self.registration()?;
        let (url, req) = self.request(
            Method::PUT,
            &format!("/v1/agent/service/deregister/{}", reg.id),
        );
        self.send(&url, req, self.request_timeout).await?;
        tracing::info!(id = %reg.id, "deregistered from Consul");
        Ok(())
    }

    /// Registers this node and keeps its TTL check passing every `ttl / 3` until
    /// [`RegistrationHandle::shutdown`], which deregisters it.
    ///
    /// Failures are logged and retried every `ttl / 3`; a failed check pass (e.g. the agent
    /// restarted and forgot the service) leads to registering again.
    pub fn spawn_registration(self: &Arc<Self>) -> Result<RegistrationHandle, Error> {
        let period = (self.registration()?.ttl / 3).max(Duration::from_millis(100));
        let this = Arc::clone(self);
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut registered = false;
            loop {
                let step = async {
                    if !registered {
                        this.register().await?;
                        registered = true;
                    }
                    if let Err(e) = this.pass_ttl().await {
                        registered = false;
                        return Err(e);
                    }
                    Ok::<(), Error>(())
                };
                tokio::select! {
                    r = step => if let Err(e) = r {
                        tracing::warn!(error = %e, "Consul registration: will retry");
                    },
                    _ = &mut stop_rx => break,
                }
                tokio::select! {
                    () = tokio::time::sleep(period) => {}
                    _ = &mut stop_rx => break,
                }
            }
            this.deregister().await
        });
        Ok(RegistrationHandle {
            stop: Some(stop_tx),
            task,
        })
    }
}

fn validate_registration(r: &RegistrationConfig) -> Result<(), Error> {
    if !valid_service_name(&r.id) {
        return Err(Error::Config {
            field: "consul.register.id",
            problem: format!(
                "{:?} must be non-empty letters, digits, '-', '_' or '.'",
                r.id
            ),
        });
    }
    if r.port == 0 {
        return Err(Error::Config {
            field: "consul.register.port",
            problem: "must be the gossip port (1..=65535)".into(),
        });
    }
    if r.ttl < Duration::from_secs(1) {
        return Err(Error::Config {
            field: "consul.register.ttl",
            problem: "must be at least 1 s".into(),
        });
    }
    Ok(())
}

impl Discovery for ConsulDiscovery {
    fn name(&self) -> &str {
        "consul"
    }

    fn discover(&self) -> BoxFuture<'_, Result<Discovered, Error>> {
        Box::pin(self.run())
    }
}

/// A running self-registration (see [`ConsulDiscovery::spawn_registration`]).
#[derive(Debug)]
pub struct RegistrationHandle {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), Error>>,
}

impl RegistrationHandle {
    /// Stops passing the check and deregisters this node (graceful shutdown).
    pub async fn shutdown(mut self) -> Result<(), Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "Consul registration task failed");
                Ok(())
            }
        }
    }
}

impl Drop for RegistrationHandle {
    fn drop(&mut self) {
        // Without shutdown() the agent removes us after `deregister_critical_after`.
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> ConsulDiscovery {
        ConsulDiscovery::new(&ConsulConfig::default()).expect("default config is valid")
    }

    #[test]
    fn index_follows_consul_rules() {
        let d = backend();
        d.update_index(None, Some(10));
        assert_eq!(d.blocking_index(), Some(10));
        d.update_index(Some(10), Some(12));
        assert_eq!(d.blocking_index(), Some(12));
        // Backwards: reset to a non-blocking query.
        d.update_index(Some(12), Some(5));
        assert_eq!(d.blocking_index(), None);
        // Zero: block on 1 instead of spinning.
        d.update_index(None, Some(0));
        assert_eq!(d.blocking_index(), Some(1));
        // No header: nothing to block on.
        d.update_index(Some(1), None);
        assert_eq!(d.blocking_index(), None);
    }

    #[test]
    fn config_validation_names_the_field() {
        let bad = |c: ConsulConfig| match ConsulDiscovery::new(&c) {
            Err(Error::Config { field, .. }) => field,
            other => panic!("expected Config error, got {other:?}"),
        };
        assert_eq!(
            bad(ConsulConfig {
                address: "127.0.0.1:8500".into(),
                ..ConsulConfig::default()
            }),
            "consul.address"
        );
        assert_eq!(
            bad(ConsulConfig {
                service: "a/b".into(),
                ..ConsulConfig::default()
            }),
            "consul.service"
        );
        assert_eq!(
            bad(ConsulConfig {
                wait: Duration::from_secs(601),
                ..ConsulConfig::default()
            }),
            "consul.wait"
        );
        assert_eq!(
            bad(ConsulConfig {
                register: Some(RegistrationConfig {
                    id: "n1".into(),
                    ..RegistrationConfig::default()
                }),
                ..ConsulConfig::default()
            }),
            "consul.register.port"
        );
        assert_eq!(
            bad(ConsulConfig {
                token: Some("bad\ntoken".into()),
                ..ConsulConfig::default()
            }),
            "consul.token"
        );
    }

    #[test]
    fn debug_redacts_the_token() {
        let c = ConsulConfig {
            token: Some("s3cr3t".into()),
            ..ConsulConfig::default()
        };
        assert!(!format!("{c:?}").contains("s3cr3t"));
        let d = ConsulDiscovery::new(&c).expect("valid");
        assert!(!format!("{d:?}").contains("s3cr3t"));
    }

    #[test]
    fn config_deserializes() {
        let c: ConsulConfig = serde_json::from_str(
            r#"{"address":"https://127.0.0.1:8501","tags":["prod"],"wait":"30s",
                "register":{"id":"node-1","port":6969,"node_id":"node-1","quic_port":6970}}"#,
        )
        .expect("valid");
        assert_eq!(c.wait, Duration::from_secs(30));
        let r = c.register.expect("register");
        assert_eq!(r.ttl, Duration::from_secs(15));
        assert_eq!(r.node_id.as_ref().map(NodeId::as_str), Some("node-1"));
    }
}
