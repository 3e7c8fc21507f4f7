//! Kubernetes probes. `GET /health/live`: 200 while the process serves HTTP (a liveness
//! probe must not fail during a long recovery, or the pod is restarted before it recovers).
//! `GET /health/ready`: 200 once the core has recovered and can take writes; 503 with a JSON
//! reason while it recovers, when the disk is full, or when a log failed.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::core::Readiness;
use crate::frontend::http::Shared;

/// `GET /health/live`.
pub async fn live() -> Response {
    Json(serde_json::json!({"status": "live"})).into_response()
}

/// `GET /health/ready`.
pub async fn ready(axum::extract::State(http): Shared) -> Response {
    let readiness = match http.broker.get() {
        None => Readiness::NotReady {
            reason: "recovering: the broker is opening its logs".to_string(),
        },
        Some(broker) => broker.readiness(),
    };
    match readiness {
        Readiness::Ready => Json(serde_json::json!({"status": "ready"})).into_response(),
        Readiness::NotReady { reason } => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "not_ready", "reason": reason})),
        )
            .into_response(),
    }
}
