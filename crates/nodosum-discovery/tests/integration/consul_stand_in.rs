//! A stand-in for the Consul agent's HTTP API, implementing the documented endpoints this
//! crate uses, on 127.0.0.1 (plain HTTP or HTTPS with a test CA):
//!
//! - `GET /v1/health/service/:service` with `passing`, `tag` (all must match), `dc`, and
//!   blocking queries (`index` + `wait`, answer held until the index passes `index` or
//!   `wait` elapses; `X-Consul-Index` on every answer). JSON shape as in Consul's health
//!   endpoint documentation: `[{"Node": {...}, "Service": {...}, "Checks": [...]}]`.
//! - `PUT /v1/agent/service/register` (TTL checks start critical), `PUT
//!   /v1/agent/check/pass/:check_id` (404 for an unknown check), `PUT
//!   /v1/agent/service/deregister/:service_id` (404 for an unknown service).
//! - 403 on a missing or wrong `X-Consul-Token` when a token is required.
//! - Fault knobs: the next N answers 500, slow answers, a forced (e.g. backwards) index,
//!   a garbage body.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// One service instance in the catalog.
#[derive(Debug, Clone)]
pub(crate) struct Instance {
    pub(crate) datacenter: String,
    pub(crate) node: String,
    pub(crate) node_address: String,
    pub(crate) id: String,
    pub(crate) service: String,
    pub(crate) address: String,
    pub(crate) port: i64,
    pub(crate) tags: Vec<String>,
    pub(crate) meta: BTreeMap<String, String>,
    pub(crate) check_id: String,
    pub(crate) status: &'static str,
}

impl Instance {
    /// A passing instance of `nodosum` in dc1 on node `agent-<id>` at 127.0.0.1.
    pub(crate) fn new(id: &str, address: &str, port: i64) -> Self {
        Self {
            datacenter: "dc1".into(),
            node: format!("agent-{id}"),
            node_address: "127.0.0.1".into(),
            id: id.into(),
            service: "nodosum".into(),
            address: address.into(),
            port,
            tags: Vec::new(),
            meta: BTreeMap::new(),
            check_id: format!("service:{id}"),
            status: "passing",
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "Node": {
                "ID": format!("00000000-0000-0000-0000-{:012}", self.node.len()),
                "Node": self.node,
                "Address": self.node_address,
                "Datacenter": self.datacenter,
                "TaggedAddresses": {"lan": self.node_address, "wan": self.node_address},
                "Meta": {"consul-network-segment": ""},
                "CreateIndex": 5,
                "ModifyIndex": 5
            },
            "Service": {
                "ID": self.id,
                "Service": self.service,
                "Tags": self.tags,
                "Address": self.address,
                "TaggedAddresses": {},
                "Meta": self.meta,
                "Port": self.port,
                "Weights": {"Passing": 1, "Warning": 1},
                "EnableTagOverride": false,
                "CreateIndex": 7,
                "ModifyIndex": 7
            },
            "Checks": [
                {
                    "Node": self.node,
                    "CheckID": "serfHealth",
                    "Name": "Serf Health Status",
                    "Status": "passing",
                    "Notes": "",
                    "Output": "Agent alive and reachable",
                    "ServiceID": "",
                    "ServiceName": "",
                    "ServiceTags": []
                },
                {
                    "Node": self.node,
                    "CheckID": self.check_id,
                    "Name": format!("{} TTL", self.service),
                    "Status": self.status,
                    "Notes": "",
                    "Output": "",
                    "ServiceID": self.id,
                    "ServiceName": self.service,
                    "ServiceTags": self.tags
                }
            ]
        })
    }
}

/// A request as the stand-in saw it.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: Vec<(String, String)>,
    pub(crate) token: Option<String>,
}

impl Recorded {
    pub(crate) fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The stand-in's state; tests change it through [`StandIn::with`].
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    pub(crate) index: u64,
    pub(crate) instances: Vec<Instance>,
    pub(crate) required_token: Option<String>,
    pub(crate) fail_next: u32,
    pub(crate) delay: Option<Duration>,
    pub(crate) forced_index: Option<u64>,
    pub(crate) garbage_body: bool,
    pub(crate) requests: Vec<Recorded>,
    pub(crate) registrations: Vec<Value>,
    pub(crate) passes: Vec<String>,
    pub(crate) deregistrations: Vec<String>,
}

#[derive(Debug)]
struct Shared {
    catalog: Mutex<Catalog>,
    index: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Catalog> {
        self.catalog.lock().expect("stand-in lock")
    }

    /// Bumps the index after a change and wakes blocked queries.
    fn bump(&self, c: &mut Catalog) {
        c.index += 1;
        self.index.send_replace(c.index);
    }
}

/// A running stand-in; stops on drop.
pub(crate) struct StandIn {
    pub(crate) url: String,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StandIn {
    /// Serves plain HTTP on 127.0.0.1.
    pub(crate) async fn start(instances: Vec<Instance>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (shared, router) = Self::router(instances);
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("serve");
        });
        Self {
            url: format!("http://{addr}"),
            shared,
            task,
        }
    }

    /// Serves HTTPS on 127.0.0.1 with a certificate for `localhost` and `127.0.0.1` signed
    /// by a fresh CA; returns the CA's PEM.
    pub(crate) async fn start_tls(instances: Vec<Instance>) -> (Self, String) {
        let (server_config, ca_pem, _) = tls_server_config(false);
        Self::serve_tls(instances, server_config, ca_pem).await
    }

    /// Like [`Self::start_tls`], but requires a client certificate from the same CA
    /// (Consul's `verify_incoming`); also returns a client identity PEM (chain + key).
    pub(crate) async fn start_mtls(instances: Vec<Instance>) -> (Self, String, String) {
        let (server_config, ca_pem, identity) = tls_server_config(true);
        let (me, ca) = Self::serve_tls(instances, server_config, ca_pem).await;
        (me, ca, identity)
    }

    async fn serve_tls(
        instances: Vec<Instance>,
        server_config: rustls::ServerConfig,
        ca_pem: String,
    ) -> (Self, String) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let listener = TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(Arc::new(server_config)),
        };
        let (shared, router) = Self::router(instances);
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("serve");
        });
        let me = Self {
            url: format!("https://localhost:{}", addr.port()),
            shared,
            task,
        };
        (me, ca_pem)
    }

    fn router(instances: Vec<Instance>) -> (Arc<Shared>, Router) {
        let (index, _) = watch::channel(10);
        let shared = Arc::new(Shared {
            catalog: Mutex::new(Catalog {
                index: 10,
                instances,
                ..Catalog::default()
            }),
            index,
        });
        let router = Router::new()
            .route("/v1/health/service/{service}", get(health))
            .route("/v1/agent/service/register", put(register))
            .route("/v1/agent/check/pass/{check_id}", put(pass))
            .route("/v1/agent/service/deregister/{service_id}", put(deregister))
            .with_state(Arc::clone(&shared));
        (shared, router)
    }

    /// Reads or changes the catalog; a change of `instances` must go through [`Self::change`].
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Catalog) -> T) -> T {
        f(&mut self.shared.lock())
    }

    /// Changes the catalog and bumps the index, as a Raft write would.
    pub(crate) fn change(&self, f: impl FnOnce(&mut Catalog)) {
        let mut c = self.shared.lock();
        f(&mut c);
        self.shared.bump(&mut c);
    }

    /// Health requests seen so far.
    pub(crate) fn health_requests(&self) -> Vec<Recorded> {
        self.with(|c| {
            c.requests
                .iter()
                .filter(|r| r.path.starts_with("/v1/health/"))
                .cloned()
                .collect()
        })
    }
}

fn record(
    shared: &Shared,
    method: &str,
    path: String,
    query: Vec<(String, String)>,
    headers: &HeaderMap,
) {
    let token = headers
        .get("X-Consul-Token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    shared.lock().requests.push(Recorded {
        method: method.into(),
        path,
        query,
        token,
    });
}

/// 403 as Consul answers it for a missing or unknown token, or `None` when allowed.
fn acl(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    let required = shared.lock().required_token.clone()?;
    let sent = headers.get("X-Consul-Token").and_then(|v| v.to_str().ok());
    match sent {
        Some(t) if t == required => None,
        Some(_) => Some((StatusCode::FORBIDDEN, "ACL not found").into_response()),
        None => Some((StatusCode::FORBIDDEN, "Permission denied").into_response()),
    }
}

fn parse_wait(text: &str) -> Option<Duration> {
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    if let Some(s) = text.strip_suffix('s') {
        return s.parse().ok().map(Duration::from_secs);
    }
    if let Some(m) = text.strip_suffix('m') {
        return m.parse::<u64>().ok().map(|m| Duration::from_secs(m * 60));
    }
    None
}

async fn health(
    State(shared): State<Arc<Shared>>,
    Path(service): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    record(
        &shared,
        "GET",
        format!("/v1/health/service/{service}"),
        query.clone(),
        &headers,
    );
    if let Some(denied) = acl(&shared, &headers) {
        return denied;
    }
    let param = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.clone());
    let (fail, delay) = {
        let mut c = shared.lock();
        let fail = c.fail_next > 0;
        if fail {
            c.fail_next -= 1;
        }
        (fail, c.delay)
    };
    if fail {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "rpc error making call: No cluster leader",
        )
            .into_response();
    }
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    // Blocking query: hold until the index passes the client's or `wait` elapses
    // (default 5 min, at most 10 min).
    if let Some(min) = param("index")
        .and_then(|i| i.parse::<u64>().ok())
        .filter(|i| *i > 0)
    {
        let wait = param("wait")
            .and_then(|w| parse_wait(&w))
            .unwrap_or(Duration::from_secs(300))
            .min(Duration::from_secs(600));
        let mut rx = shared.index.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        while *rx.borrow_and_update() <= min {
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
    }
    let c = shared.lock();
    let dc = param("dc").unwrap_or_else(|| "dc1".into());
    let passing = matches!(param("passing").as_deref(), Some(v) if v != "false");
    let tags: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.clone())
        .collect();
    let entries: Vec<Value> = c
        .instances
        .iter()
        .filter(|i| i.service == service && i.datacenter == dc)
        .filter(|i| !passing || i.status == "passing")
        .filter(|i| tags.iter().all(|t| i.tags.contains(t)))
        .map(Instance::to_json)
        .collect();
    let index = c.forced_index.unwrap_or(c.index);
    let body = if c.garbage_body {
        "<html>not json</html>".to_owned()
    } else {
        Value::Array(entries).to_string()
    };
    (
        [
            ("X-Consul-Index", index.to_string()),
            ("X-Consul-Knownleader", "true".to_owned()),
            ("Content-Type", "application/json".to_owned()),
        ],
        body,
    )
        .into_response()
}

async fn register(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    record(
        &shared,
        "PUT",
        "/v1/agent/service/register".into(),
        query,
        &headers,
    );
    if let Some(denied) = acl(&shared, &headers) {
        return denied;
    }
    let Ok(v) = serde_json::from_str::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "Request decode failed").into_response();
    };
    let s = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let id = s("ID");
    let mut inst = Instance::new(
        &id,
        &s("Address"),
        v.get("Port").and_then(Value::as_i64).unwrap_or(0),
    );
    inst.service = s("Name");
    inst.node = "agent-local".into();
    inst.tags = v
        .get("Tags")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    inst.meta = v
        .get("Meta")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    if let Some(check) = v.get("Check") {
        if let Some(cid) = check.get("CheckID").and_then(Value::as_str) {
            inst.check_id = cid.to_owned();
        }
        // A TTL check starts critical until its first pass.
        inst.status = "critical";
    }
    let mut c = shared.lock();
    c.registrations.push(v.clone());
    c.instances.retain(|i| i.id != id);
    c.instances.push(inst);
    shared.bump(&mut c);
    StatusCode::OK.into_response()
}

async fn pass(
    State(shared): State<Arc<Shared>>,
    Path(check_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    record(
        &shared,
        "PUT",
        format!("/v1/agent/check/pass/{check_id}"),
        Vec::new(),
        &headers,
    );
    if let Some(denied) = acl(&shared, &headers) {
        return denied;
    }
    let mut c = shared.lock();
    let Some(i) = c.instances.iter_mut().find(|i| i.check_id == check_id) else {
        return (
            StatusCode::NOT_FOUND,
            format!("Unknown check ID {check_id:?}"),
        )
            .into_response();
    };
    let changed = i.status != "passing";
    i.status = "passing";
    c.passes.push(check_id);
    if changed {
        shared.bump(&mut c);
    }
    StatusCode::OK.into_response()
}

async fn deregister(
    State(shared): State<Arc<Shared>>,
    Path(service_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    record(
        &shared,
        "PUT",
        format!("/v1/agent/service/deregister/{service_id}"),
        Vec::new(),
        &headers,
    );
    if let Some(denied) = acl(&shared, &headers) {
        return denied;
    }
    let mut c = shared.lock();
    let before = c.instances.len();
    c.instances.retain(|i| i.id != service_id);
    if c.instances.len() == before {
        return (
            StatusCode::NOT_FOUND,
            format!("Unknown service ID {service_id:?}"),
        )
            .into_response();
    }
    c.deregistrations.push(service_id);
    shared.bump(&mut c);
    StatusCode::OK.into_response()
}

/// TLS on top of a TCP listener, for `axum::serve`.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                continue;
            };
            // A client that refuses our certificate fails here; keep serving others.
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

fn tls_server_config(client_auth: bool) -> (rustls::ServerConfig, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "consul stand-in test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = params.signed_by(&key, &issuer).expect("server cert");

    let client_key = KeyPair::generate().expect("client key");
    let client_params = CertificateParams::new(vec!["node-1".to_owned()]).expect("params");
    let client_cert = client_params
        .signed_by(&client_key, &issuer)
        .expect("client cert");
    let identity = format!("{}{}", client_cert.pem(), client_key.serialize_pem());

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = if client_auth {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca_cert.der().to_vec()))
            .expect("ca root");
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("client verifier");
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server config");
    (config, ca_cert.pem(), identity)
}
