//! The HTTP admin API: health, readiness, members, metrics, partitions, maintenance.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::state::Shared;

/// The admin routes over `shared`.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/members", get(members))
        .route("/metrics", get(metrics))
        .route("/partitions", get(partitions))
        .route("/maintenance", post(maintenance).get(maintenance_state))
        .with_state(shared)
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, axum::Json(body.clone())).into_response()
}

async fn health(State(s): State<Arc<Shared>>) -> Response {
    if s.is_serving() {
        json_response(
            StatusCode::OK,
            &json!({
                "status": "ok",
                "node_id": s.node.id,
                "mode": s.mycel.mode().as_str(),
                "uptime_seconds": s.started.elapsed().as_secs(),
            }),
        )
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "status": "unavailable", "reason": "not serving (starting or shutting down)" }),
        )
    }
}

async fn ready(State(s): State<Arc<Shared>>) -> Response {
    // A standalone node holds every partition itself, so its partitions are always in
    // sync; it is ready whenever it serves.
    let maintenance = s.in_maintenance();
    if s.is_serving() {
        json_response(
            StatusCode::OK,
            &json!({
                "ready": true,
                "partitions_in_sync": true,
                "maintenance": maintenance,
            }),
        )
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({
                "ready": false,
                "reason": "not serving (starting or shutting down)",
                "maintenance": maintenance,
            }),
        )
    }
}

async fn members(State(s): State<Arc<Shared>>) -> Response {
    let n = &s.node;
    json_response(
        StatusCode::OK,
        &json!([{
            "id": n.id,
            "state": "alive",
            "gossip_addr": n.gossip_addr.to_string(),
            "quic_addr": n.quic_addr.to_string(),
            "incarnation": 0,
            "metadata": {
                "resp": n.resp_addr.to_string(),
                "admin": n.admin_addr.to_string(),
                "mode": s.mycel.mode().as_str(),
            },
        }]),
    )
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    match s.mycel.stats().await {
        Ok(stats) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            s.metrics.render(&stats),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn partitions(State(s): State<Arc<Shared>>) -> Response {
    let n = &s.node;
    json_response(
        StatusCode::OK,
        &json!({
            "epoch": 1,
            "partitions": n.partitions,
            "replicas": n.replicas,
            "maintenance": s.in_maintenance(),
            "moving": 0,
            "nodes": { n.id.clone(): { "primary": n.partitions, "backup": 0 } },
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
        Some("true" | "on" | "1") => true,
        Some("false" | "off" | "0") => false,
        other => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({ "error": format!("freeze must be true or false, got {other:?}") }),
            );
        }
    };
    let was = s.maintenance.swap(freeze, Ordering::AcqRel);
    if was != freeze {
        tracing::info!(freeze, "maintenance mode changed");
    }
    json_response(StatusCode::OK, &json!({ "maintenance": freeze }))
}

async fn maintenance_state(State(s): State<Arc<Shared>>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({ "maintenance": s.in_maintenance() }),
    )
}
