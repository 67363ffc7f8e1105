//! The HTTP admin API: health, readiness, members, metrics, partitions, maintenance.
//!
//! With `--admin-token-file`, every endpoint but the probes (`/health`, `/ready`) needs
//! `Authorization: Bearer <token>`; anything else gets 401.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::state::Shared;

/// The admin routes over `shared`.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    // Probes stay open: a load balancer or orchestrator asks them without credentials,
    // and they tell no more than whether the node serves.
    let probes = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready));
    let guarded = Router::new()
        .route("/members", get(members))
        .route("/metrics", get(metrics))
        .route("/partitions", get(partitions))
        .route("/maintenance", post(maintenance).get(maintenance_state))
        .route_layer(middleware::from_fn_with_state(shared.clone(), bearer));
    probes.merge(guarded).with_state(shared)
}

/// Lets a request through if the server has no admin token, or if the request carries
/// it (`Authorization: Bearer <token>`); 401 otherwise.
async fn bearer(State(s): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    if !s.admin_token.is_set() {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    if given.is_some_and(|token| s.admin_token.matches(token)) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(json!({
            "error": "this endpoint needs the admin token (--admin-token-file): \
                      Authorization: Bearer <token>"
        })),
    )
        .into_response()
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, axum::Json(body.clone())).into_response()
}

async fn health(State(s): State<Arc<Shared>>) -> Response {
    let unavailable = |reason: &str| {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "status": "unavailable", "reason": reason }),
        )
    };
    if !s.is_serving() {
        return unavailable("not serving (starting or shutting down)");
    }
    let mut body = json!({
        "status": "ok",
        "node_id": s.node.id,
        "mode": s.mycel.mode().as_str(),
        "uptime_seconds": s.started.elapsed().as_secs(),
    });
    if let Some(c) = s.mycel.cluster() {
        let status = c.status();
        if status.epoch == 0 {
            return unavailable("no routing table yet: the cluster is forming");
        }
        let health = c.node().health();
        body["epoch"] = json!(status.epoch);
        body["health_score"] = json!(health.health_score);
        body["connected_peers"] = json!(health.connected_peers);
    }
    json_response(StatusCode::OK, &body)
}

async fn ready(State(s): State<Arc<Shared>>) -> Response {
    let maintenance = s.in_maintenance();
    if !s.is_serving() {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({
                "ready": false,
                "reason": "not serving (starting or shutting down)",
                "maintenance": maintenance,
            }),
        );
    }
    let Some(c) = s.mycel.cluster() else {
        // A standalone node holds every partition itself, so its partitions are always
        // in sync; it is ready whenever it serves.
        return json_response(
            StatusCode::OK,
            &json!({ "ready": true, "partitions_in_sync": true, "maintenance": maintenance }),
        );
    };
    let st = c.status();
    let body = json!({
        "ready": st.ready,
        "partitions_in_sync": st.ready,
        "epoch": st.epoch,
        "replicated": st.replicas,
        "synced": st.synced,
        "awaiting_release": st.awaiting_release,
        "maintenance": maintenance,
    });
    let code = if st.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(code, &body)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

async fn members(State(s): State<Arc<Shared>>) -> Response {
    let n = &s.node;
    let Some(c) = s.mycel.cluster() else {
        return json_response(
            StatusCode::OK,
            &json!([{
                "id": n.id,
                "state": "alive",
                // A standalone node binds neither.
                "gossip_addr": null,
                "quic_addr": null,
                "incarnation": 0,
                "metadata": {
                    "resp": n.resp_addr.to_string(),
                    "admin": n.admin_addr.to_string(),
                    "mode": s.mycel.mode().as_str(),
                },
            }]),
        );
    };
    let list: Vec<Value> = c
        .node()
        .members()
        .into_iter()
        .map(|(m, state)| {
            let state = match state {
                nodosum::MemberState::Alive => "alive",
                nodosum::MemberState::Suspect => "suspect",
                nodosum::MemberState::Failed => "failed",
                nodosum::MemberState::Left => "left",
            };
            let quic = std::net::SocketAddr::new(m.gossip_addr.ip(), m.quic_port);
            let meta = m.metadata.as_bytes();
            // The cluster layer's metadata decoded; anything else shown as bytes.
            let metadata = match mycel::decode_metadata(meta) {
                Some(d) => json!({
                    "started_at_ms": d.started_at_ms,
                    "weight": d.weight,
                    "partitions": d.partitions,
                    "replication_factor": d.replication_factor,
                    "leaving": d.leaving,
                    "frozen": d.frozen,
                }),
                None => json!({ "len": meta.len(), "hex": hex(meta) }),
            };
            json!({
                "id": m.id.as_str(),
                "state": state,
                "gossip_addr": m.gossip_addr.to_string(),
                "quic_addr": quic.to_string(),
                "incarnation": m.incarnation,
                "metadata": metadata,
            })
        })
        .collect();
    json_response(StatusCode::OK, &Value::Array(list))
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let text = match s.mycel.cluster() {
        Some(c) => {
            // This node's store (what it holds as primary and backup), then the node's
            // own registry; two expositions in one body: drop the first one's end marker.
            let own = s.metrics.render(&s.mycel.local_stats().await);
            let own = own.trim_end().strip_suffix("# EOF").unwrap_or(&own);
            format!("{own}{}", c.node().metrics_text())
        }
        None => match s.mycel.stats().await {
            Ok(stats) => s.metrics.render(&stats),
            Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        },
    };
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn partitions(State(s): State<Arc<Shared>>) -> Response {
    let n = &s.node;
    let Some(c) = s.mycel.cluster() else {
        return json_response(
            StatusCode::OK,
            &json!({
                "epoch": 1,
                "partitions": n.partitions,
                "replicas": n.replicas,
                "maintenance": s.in_maintenance(),
                "moving": 0,
                "nodes": { n.id.clone(): { "primary": n.partitions, "backup": 0 } },
            }),
        );
    };
    let st = c.status();
    // Every table member's counts from this node's table; sync state is known for this
    // node only.
    let mut nodes = serde_json::Map::new();
    for p in c.placement() {
        let mut entry = json!({ "primary": p.primaries, "backup": p.backups });
        if p.node == *c.id() {
            entry["synced"] = json!(st.synced);
            entry["awaiting_release"] = json!(st.awaiting_release);
        }
        nodes.insert(p.node.as_str().to_owned(), entry);
    }
    if !nodes.contains_key(&n.id) {
        // Not in the table (joining or leaving): its own sync state still counts.
        nodes.insert(
            n.id.clone(),
            json!({
                "primary": 0,
                "backup": 0,
                "synced": st.synced,
                "awaiting_release": st.awaiting_release,
            }),
        );
    }
    json_response(
        StatusCode::OK,
        &json!({
            "epoch": st.epoch,
            "partitions": n.partitions,
            "replicas": n.replicas,
            "maintenance": s.in_maintenance(),
            "moving": st.replicas.saturating_sub(st.synced) + st.awaiting_release,
            "table_members": st.members.iter().map(mycel::NodeId::as_str).collect::<Vec<_>>(),
            "alive": st.alive.iter().map(mycel::NodeId::as_str).collect::<Vec<_>>(),
            "nodes": nodes,
            "ready": st.ready,
        }),
    )
}

#[derive(Debug, Deserialize)]
struct MaintenanceQuery {
    /// `true`/`on` freezes, `false`/`off` unfreezes; absent toggles nothing and only reports.
    freeze: Option<String>,
}

async fn maintenance(State(s): State<Arc<Shared>>, Query(q): Query<MaintenanceQuery>) -> Response {
    let freeze = match q.freeze.as_deref() {
        Some(v)
            if ["true", "on", "1"]
                .iter()
                .any(|t| v.eq_ignore_ascii_case(t)) =>
        {
            true
        }
        Some(v)
            if ["false", "off", "0"]
                .iter()
                .any(|f| v.eq_ignore_ascii_case(f)) =>
        {
            false
        }
        other => {
            let got = other.map_or_else(|| "nothing".to_owned(), |v| format!("{v:?}"));
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({ "error": format!(
                    "the query must say freeze=true or freeze=false (or on/off, 1/0), as in \
                     POST /maintenance?freeze=true; got {got}"
                ) }),
            );
        }
    };
    if let Some(c) = s.mycel.cluster()
        && let Err(e) = c.set_frozen(freeze)
    {
        return json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({ "error": e.to_string() }),
        );
    }
    let was = s.maintenance.swap(freeze, Ordering::AcqRel);
    if was != freeze {
        tracing::info!(freeze, "maintenance mode changed");
    }
    maintenance_state(State(s)).await
}

/// `maintenance`: whether it holds (here or, in a cluster, set by any member); `here`:
/// whether this node set it.
async fn maintenance_state(State(s): State<Arc<Shared>>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "maintenance": s.in_maintenance(),
            "here": s.maintenance.load(Ordering::Acquire),
        }),
    )
}
