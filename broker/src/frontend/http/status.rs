//! `GET /api/v1/broker`: the broker's status (version, readiness, uptime, listeners, counts)
//! and the configuration it runs with, every key of the configuration file with its value.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::{config_values, BrokerConfig};
use crate::core::Readiness;
use crate::frontend::http::error::{ApiError, ErrorBody};
use crate::frontend::http::{Caller, Http, Shared};

/// What the server knows at start that the status shows.
#[derive(Debug, Clone)]
pub struct BrokerInfo {
    started: Instant,
    started_at_ms: u64,
    listeners: Listeners,
    config: BTreeMap<String, String>,
}

impl BrokerInfo {
    /// The info of a broker started now with `config`, listening on these addresses.
    pub fn new(
        config: &BrokerConfig,
        native: SocketAddr,
        kafka: Option<SocketAddr>,
        amqp: Option<SocketAddr>,
        http: Option<SocketAddr>,
    ) -> BrokerInfo {
        BrokerInfo {
            started: Instant::now(),
            started_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |elapsed| {
                    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
                }),
            listeners: Listeners {
                native: native.to_string(),
                kafka: kafka.map(|address| address.to_string()),
                amqp: amqp.map(|address| address.to_string()),
                http: http.map(|address| address.to_string()),
            },
            config: config_values(config)
                .into_iter()
                .map(|key| (key.key.to_string(), key.default))
                .collect(),
        }
    }
}

/// The bound listeners.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Listeners {
    /// The native protocol's address.
    pub native: String,
    /// The Kafka listener's address (null: off).
    pub kafka: Option<String>,
    /// The AMQP 0-9-1 listener's address (null: off).
    pub amqp: Option<String>,
    /// The HTTP listener's address (null: off).
    pub http: Option<String>,
}

/// The broker's status.
#[derive(Debug, Serialize, ToSchema)]
pub struct BrokerStatus {
    /// wharfd's version.
    pub version: &'static str,
    /// Ready for writes (as `/health/ready`).
    pub ready: bool,
    /// Why not, when not ready.
    pub not_ready_reason: Option<String>,
    /// When it started, ms since the epoch.
    pub started_at_ms: u64,
    /// How long it has run, ms.
    pub uptime_ms: u64,
    /// Its bound listeners.
    pub listeners: Listeners,
    /// Topics (internal ones hidden).
    pub topics: usize,
    /// Partitions of all topics.
    pub partitions: usize,
    /// Consumer groups; null on a node of a cluster that does not coordinate them (ask
    /// the coordinator: `GET /api/v1/groups` there names it).
    pub groups: Option<usize>,
    /// Queues.
    pub queues: usize,
    /// Every key of the configuration file with the value in force, as TOML values
    /// (`"(unset)"` for an unset optional address).
    pub config: BTreeMap<String, String>,
}

/// The routes of this module.
pub fn routes() -> OpenApiRouter<Arc<Http>> {
    OpenApiRouter::new().routes(routes!(broker_status))
}

/// The broker's status and the configuration it runs with.
#[utoipa::path(
    get,
    path = "/broker",
    tag = "broker",
    responses(
        (status = 200, description = "The status", body = BrokerStatus),
        (status = 503, description = "Recovering", body = ErrorBody),
    )
)]
pub async fn broker_status(State(http): Shared, caller: Caller) -> Result<Response, ApiError> {
    let broker = http.broker()?;
    let info = &http.info;
    let (ready, not_ready_reason) = match broker.readiness() {
        Readiness::Ready => (true, None),
        Readiness::NotReady { reason } => (false, Some(reason)),
    };
    let topics = broker.topic_metadata(&caller, None);
    let status = BrokerStatus {
        version: env!("CARGO_PKG_VERSION"),
        ready,
        not_ready_reason,
        started_at_ms: info.started_at_ms,
        uptime_ms: u64::try_from(info.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        listeners: info.listeners.clone(),
        partitions: topics.iter().map(|topic| topic.partitions.len()).sum(),
        topics: topics.len(),
        // Only the coordinating node has the groups; another one's list is empty.
        groups: broker
            .check_coordinating()
            .is_ok()
            .then(|| broker.list_groups(&caller).len()),
        queues: broker.list_queues(&caller).await.len(),
        config: info.config.clone(),
    };
    Ok(Json(status).into_response())
}
