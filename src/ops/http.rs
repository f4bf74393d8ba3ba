//! HTTP for operators: `/healthz` (alive), `/readyz` (database, broker and
//! relay all usable; the JSON says which is not, and where mail goes) and
//! `/metrics` (Prometheus).

use super::health::Health;
use super::metrics::Metrics;
use crate::mail::relay::{Breaker, CircuitState};
use crate::store::Store;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;

/// What the endpoints read.
#[derive(Clone)]
pub struct OpsState {
    pub store: Store,
    pub health: Arc<Health>,
    pub breaker: Arc<Breaker>,
    pub metrics: Metrics,
    /// Where mail goes, as `/readyz` says it.
    pub relay: Relay,
}

/// Where mail goes: `"relay": "smtp"` or `"relay": "outbox"` in `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    /// To the relay in `smtp.url`.
    Smtp,
    /// No `smtp.url`: `.eml` files in `smtp.outbox_dir`, reaching no mailbox.
    Outbox,
}

impl Relay {
    fn as_str(self) -> &'static str {
        match self {
            Self::Smtp => "smtp",
            Self::Outbox => "outbox",
        }
    }
}

/// The router.
pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(s): State<OpsState>) -> impl IntoResponse {
    let db_ok = s.store.ping().await.is_ok() && s.health.db();
    let amqp_ok = s.health.amqp();
    let circuit = s.breaker.state();
    let relay_ok = circuit != CircuitState::Open;
    let ready = db_ok && amqp_ok && relay_ok;
    let body = json!({
        "ready": ready,
        "database": if db_ok { "ok" } else { "unavailable" },
        "broker": if amqp_ok { "consuming" } else { "not consuming" },
        "broker_reason": if amqp_ok { None } else { s.health.amqp_reason() },
        "relay_circuit": circuit.as_str(),
        "relay_reason": if relay_ok { None } else { s.breaker.last_reason() },
        "relay": s.relay.as_str(),
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

async fn metrics(State(s): State<OpsState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}
