//! The HTTP front end (`--http-listen`, 127.0.0.1:7480; issue #17): Prometheus metrics,
//! Kubernetes health probes and the admin JSON API, on axum (hyper, tokio).
//!
//! Like every front end it only translates: a handler parses the request, makes one core
//! call (or a few reads), and renders the answer; domain errors become HTTP statuses in one
//! place ([`error`]). The listener starts before the core has recovered, so the liveness
//! probe answers during recovery and the readiness probe says why it is not ready yet.
//!
//! | route | module |
//! |---|---|
//! | `GET /`, `GET /console/...` | [`console`]: the web console |
//! | `GET /health/live`, `GET /health/ready` | [`health`] |
//! | `GET /metrics` | [`metrics`] (docs/METRICS.md) |
//! | `/api/v1/...` | [`admin`] (docs/HTTP.md) |
//! | `GET /api/v1/broker` | [`status`]: status and configuration |
//! | `GET /api/v1/groups/{group}/topics/{topic}/stream` | [`group_stream`]: SSE in a consumer group |
//! | `/api/v1/exchanges`, `/bindings`, `/publish`, `/queues/{queue}` (declare, delete, get) | [`exchanges`] |
//! | `GET`, `POST`, `DELETE /api/v1/acls` | [`acls`]: ACLs (issue #18) |
//! | `GET /api/v1/openapi.json` | [`openapi`]: the OpenAPI document, generated from the handlers |
//! | `/api/v1/topics/{topic}/partitions/{partition}/records`, `.../stream` | [`stream`]: produce, Server-Sent Events |
//! | `/api/v1/topics/{topic}/partitions/{partition}/ws`, `/api/v1/queues/{queue}/ws` | [`websocket`] |
//! | `GET /api/v1/queues/{queue}/stream` | [`queue_stream`]: SSE consumer of a queue |
//! | `/api/v1/tokens` (create, list), `/api/v1/tokens/{id}` (revoke) | [`tokens`]: bearer tokens |
//! | every route | [`auth`]: Basic and Bearer credentials, 401 |
//!
//! Limits: at most `connections_max` connections (the broker's, shared setting), request
//! bodies of at most [`BODY_BYTES_MAX`], and [`REQUEST_TIMEOUT`] per request.
//!
//! **Architecture invariant:** this module calls only the core (and `net` for its
//! listener), and it never panics on a request: bad JSON, a bad path or an unknown name is
//! an error answer with a JSON body.

pub mod acls;
pub mod admin;
pub mod auth;
pub mod console;
pub mod error;
pub mod exchanges;
pub mod group_stream;
pub mod health;
pub mod metrics;
pub mod openapi;
pub mod queue_stream;
pub mod status;
pub mod stream;
pub mod tokens;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;

use crate::core::{AuthPolicy, Broker, Session};
use crate::net::listener::{CappedListener, CappedStream};
use crate::net::tls::{Tls, TlsIncoming};
use error::ApiError;

/// Largest request body: admin requests are small JSON documents; 1 MiB leaves room for a
/// topic with many config overrides and keeps a client from making the broker buffer more.
pub const BODY_BYTES_MAX: usize = 1024 * 1024;

/// Longest a request may take before it is answered 503: admin calls create and delete
/// topics on the blocking pool (seconds at most on a healthy disk); a scrape reads memory.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP front end's shared state: the core once it has recovered.
#[derive(Debug)]
pub struct Http {
    broker: OnceLock<Arc<Broker>>,
    /// Whether requests must carry credentials; set with the core.
    auth: OnceLock<AuthPolicy>,
    /// Turns true on shutdown: streams end.
    shutdown: watch::Receiver<bool>,
    /// Start time, listeners and configuration, for `GET /api/v1/broker`.
    info: status::BrokerInfo,
}

impl Http {
    /// A front end with no core yet (recovery runs): health answers, the rest is 503.
    pub fn new(shutdown: watch::Receiver<bool>, info: status::BrokerInfo) -> Arc<Http> {
        Arc::new(Http {
            broker: OnceLock::new(),
            auth: OnceLock::new(),
            shutdown,
            info,
        })
    }

    /// Hands over the recovered core and the authentication policy; from now on the front
    /// end is ready.
    pub fn set_broker(&self, broker: Arc<Broker>, auth: AuthPolicy) {
        let _ = self.auth.set(auth);
        let _ = self.broker.set(broker);
    }

    /// The core, or 503 while it recovers.
    fn broker(&self) -> Result<&Arc<Broker>, ApiError> {
        self.broker.get().ok_or_else(ApiError::recovering)
    }
}

/// The core caller of one request: its principal (checked by [`auth::authenticate`]) and
/// the client's address, so the core's ACL checks see who asks. A handler takes it as an
/// argument; a request that bypassed the middleware (none should) acts as anonymous.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<Session>);

impl std::ops::Deref for Caller {
    type Target = Session;

    fn deref(&self) -> &Session {
        &self.0
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Caller, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(|| Caller(Arc::new(Session::new()))))
    }
}

/// The state every handler gets.
type Shared = State<Arc<Http>>;

/// The documented `/api/v1` routes with their OpenAPI document ([`openapi`]).
fn api_routes() -> utoipa_axum::router::OpenApiRouter<Arc<Http>> {
    utoipa_axum::router::OpenApiRouter::with_openapi(openapi::base())
        .nest("/api/v1", admin::routes())
}

/// The routes with their limits.
pub fn router(http: Arc<Http>) -> Router {
    let (api, document) = api_routes().split_for_parts();
    metrics::set_routes(&document, UNDOCUMENTED_ROUTES);
    // Rendered once: the document is the same for the broker's whole life.
    let document = Arc::new(document.to_pretty_json().unwrap_or_default());
    Router::new()
        .route("/", get(console::index))
        .route("/console/console.js", get(console::script))
        .route("/console/console.css", get(console::style))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(metrics::scrape))
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let document = document.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        document.as_str().to_owned(),
                    )
                }
            }),
        )
        .merge(api)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            http.clone(),
            auth::authenticate,
        ))
        .layer(middleware::from_fn(time_limit))
        .layer(middleware::from_fn(refuse_over_limit))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(middleware::from_fn(metrics::observe))
        .with_state(http)
}

/// The routes [`router`] serves beside the documented `/api/v1` ones, as the request
/// metrics name them (`METHOD /path`).
const UNDOCUMENTED_ROUTES: &[&str] = &[
    "GET /",
    "GET /console/console.js",
    "GET /console/console.css",
    "GET /health/live",
    "GET /health/ready",
    "GET /metrics",
    "GET /api/v1/openapi.json",
];

/// Serves `router` on `listener` (over TLS with `tls`: HTTPS) until `shutdown` turns true
/// (or its sender is dropped), then lets in-flight requests finish.
pub async fn serve(
    http: Arc<Http>,
    listener: CappedListener,
    tls: Option<Arc<Tls>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let stop = async move {
        while !*shutdown.borrow_and_update() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
    };
    let app = router(http).into_make_service_with_connect_info::<PeerAddr>();
    let served = match tls {
        None => {
            axum::serve(Capped(listener), app)
                .with_graceful_shutdown(stop)
                .await
        }
        Some(tls) => match TlsIncoming::start(listener, tls) {
            Ok(incoming) => {
                axum::serve(CappedTls(incoming), app)
                    .with_graceful_shutdown(stop)
                    .await
            }
            Err(error) => Err(error),
        },
    };
    if let Err(error) = served {
        tracing::warn!(%error, "http listener stopped");
    }
}

/// The client's address, for the failed-login limit and logs ([`auth`]).
#[derive(Debug, Clone)]
pub struct PeerAddr(pub SocketAddr, pub Option<Arc<str>>);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Capped>> for PeerAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Capped>) -> PeerAddr {
        let refusal = stream
            .io()
            .get_ref()
            .refusal()
            .map(|refusal| refusal.to_string().into());
        PeerAddr(*stream.remote_addr(), refusal)
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, CappedTls>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, CappedTls>) -> PeerAddr {
        let refusal = stream
            .io()
            .get_ref()
            .get_ref()
            .0
            .refusal()
            .map(|refusal| refusal.to_string().into());
        PeerAddr(*stream.remote_addr(), refusal)
    }
}

/// A connection whose address is over `connections_per_ip_max` gets 429 Too Many Requests
/// with `Connection: close` on its first request, and nothing else (issue #18).
async fn refuse_over_limit(request: Request, next: Next) -> Response {
    let refusal = request
        .extensions()
        .get::<axum::extract::ConnectInfo<PeerAddr>>()
        .and_then(|info| info.0 .1.clone());
    let Some(refusal) = refusal else {
        return next.run(request).await;
    };
    let mut response = ApiError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        "too_many_connections",
        refusal.to_string(),
    )
    .into_response();
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// [`CappedListener`] as axum's listener.
struct Capped(CappedListener);

impl axum::serve::Listener for Capped {
    type Io = Counted<CappedStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, peer) = self.0.accept().await;
        (Counted::new(stream), peer)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// [`TlsIncoming`] (handshaken connections of a [`CappedListener`]) as axum's listener.
struct CappedTls(TlsIncoming);

impl axum::serve::Listener for CappedTls {
    type Io = Counted<tokio_rustls::server::TlsStream<CappedStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, peer) = self.0.accept().await;
        (Counted::new(stream), peer)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.0.local_addr())
    }
}

/// A connection of the HTTP listener, counted in its metrics (`wharf_listener_connections`
/// and `..._accepted_total` with `listener="http"`) from accept to drop.
#[derive(Debug)]
pub struct Counted<T> {
    inner: T,
}

impl<T> Counted<T> {
    fn new(inner: T) -> Counted<T> {
        crate::metrics::HTTP.connection_opened();
        Counted { inner }
    }

    /// The stream it counts.
    fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T> Drop for Counted<T> {
    fn drop(&mut self) {
        crate::metrics::HTTP.connection_closed();
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffer: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(context, buffer)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        bytes: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(context, bytes)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffers: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(context)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(context)
    }
}

/// Answers 503 with a JSON error when a request takes longer than [`REQUEST_TIMEOUT`].
async fn time_limit(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::timed_out(REQUEST_TIMEOUT).into_response(),
    }
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route for {} {}",
        request.method(),
        request.uri().path()
    ))
}
