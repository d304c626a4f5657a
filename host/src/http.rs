//! The HTTP surface: routes, request checks, and the one place where
//! failures become status codes.
//!
//! * `POST /{deployment}/{api}`: JSON in, JSON out.
//! * `GET /livez`, `GET /readyz` (503 until the models of every deployment
//!   the host was started with are loaded), `GET /readyz/{deployment}`,
//!   `GET /metrics`, `GET /docs.json`.
//!
//! Every response carries `x-request-id` (the caller's, or a new one). Every
//! error is JSON `{"error": "..."}` naming the problem.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tracing::Instrument;

use crate::deployment::{Deployment, DeploymentError};
use crate::instance::CallFailure;
use crate::metrics::{ApiLabels, Metrics, RequestLabels};
use crate::traffic::Rejection;

/// The request/response header carrying the request id.
pub const REQUEST_ID: &str = "x-request-id";

/// What the handlers share.
pub struct AppState {
    pub deployments: crate::fleet::Fleet,
    pub metrics: Metrics,
    /// Largest accepted request body, in bytes.
    pub max_request_bytes: usize,
    /// The bearer token of the admin API.
    pub admin_token: String,
    /// The bearer token the APIs require, if they require one.
    pub api_token: Option<String>,
}

impl AppState {
    pub fn new(
        deployments: crate::fleet::Fleet,
        metrics: Metrics,
        max_request_bytes: usize,
        admin_token: String,
        api_token: Option<String>,
    ) -> AppState {
        AppState { deployments, metrics, max_request_bytes, admin_token, api_token }
    }
}

/// The router with every route and the request-id layer.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/readyz/{deployment}", get(deployment_readyz))
        .route("/metrics", get(metrics))
        .route("/docs.json", get(docs))
        .route("/{deployment}/{api}", post(call_api))
        .nest("/admin/v1", crate::admin::router())
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route (the Allow header lists the allowed ones)",
            )
        })
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such route: APIs are POST /{deployment}/{api}, the admin API is under /admin/v1/deployments",
            )
        })
        .layer(middleware::from_fn_with_state(Arc::clone(&state), crate::admin::guard))
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

/// A failure as the client sees it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), retry_after: None }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<DeploymentError> for ApiError {
    fn from(e: DeploymentError) -> ApiError {
        let mut retry_after = None;
        let status = match &e {
            DeploymentError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            DeploymentError::Rejected(rejection) => match rejection {
                Rejection::QueueFull { retry_after: after, .. } => {
                    retry_after = Some(after.as_secs());
                    StatusCode::SERVICE_UNAVAILABLE
                }
                Rejection::Timeout(_) | Rejection::CannotMeetDeadline { .. } => StatusCode::GATEWAY_TIMEOUT,
            },
            DeploymentError::Call(failure) => match failure {
                CallFailure::BadInput(_) => StatusCode::BAD_REQUEST,
                CallFailure::UnknownApi(_) => StatusCode::NOT_FOUND,
                CallFailure::Timeout(_) | CallFailure::RunnerTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
                CallFailure::Overloaded(_) => {
                    retry_after = Some(1);
                    StatusCode::SERVICE_UNAVAILABLE
                }
                CallFailure::Internal(_)
                | CallFailure::Trap(_)
                | CallFailure::MemoryLimit { .. }
                | CallFailure::Host(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        };
        ApiError { status, message: e.to_string(), retry_after }
    }
}

/// The host is ready when the deployments it was started with are. Those
/// added through the admin API do not count (a bad one must not take a
/// serving host out of rotation); each has its own `/readyz/{deployment}`.
async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    let waiting: Vec<String> = app
        .deployments
        .all()
        .iter()
        .filter(|d| !d.config().restore)
        .filter_map(|d| d.not_ready_reason().map(|why| format!("{}: {why}", d.name())))
        .collect();
    if waiting.is_empty() {
        "ok\n".into_response()
    } else {
        let message = format!("not ready: {}", waiting.join("; "));
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message).into_response()
    }
}

async fn deployment_readyz(State(app): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    match app.deployments.get(&name) {
        None => ApiError::new(StatusCode::NOT_FOUND, format!("no deployment named {name:?}")).into_response(),
        Some(d) => match d.not_ready_reason() {
            None => "ok\n".into_response(),
            Some(why) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {name}: {why}"))
                .into_response(),
        },
    }
}

async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    // Reading device memory may open a GPU context: not on the executor.
    let encoded = tokio::task::spawn_blocking(move || app.metrics.encode()).await;
    match encoded {
        Ok(text) => {
            ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
                .into_response()
        }
        Err(e) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {e}")).into_response()
        }
    }
}

async fn docs(State(app): State<Arc<AppState>>) -> Response {
    let deployments = app.deployments.all();
    Json(crate::openapi::document(deployments.iter().map(|d| d.as_ref()))).into_response()
}

async fn call_api(
    State(app): State<Arc<AppState>>,
    Path((deployment, api)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(d) = app.deployments.get(&deployment) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no deployment named {deployment:?} (deployments: {})",
                app.deployments.names().join(", ")
            ),
        ));
    };
    if d.api(&api).is_none() {
        let known: Vec<&str> = d.bento().apis.iter().map(|a| a.name.as_str()).collect();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("deployment {deployment:?} has no API named {api:?} (APIs: {})", known.join(", ")),
        ));
    }

    let labels = ApiLabels { deployment: deployment.clone(), api: api.clone() };
    let in_progress = InProgress::enter(app.metrics.in_progress.get_or_create(&labels).clone());
    let started = Instant::now();
    let result = handle_call(&app, &d, &api, &headers, body).await;
    drop(in_progress);

    let status = match &result {
        Ok(_) => StatusCode::OK,
        Err(e) => e.status,
    };
    let request_labels = RequestLabels { deployment, api, status: status.as_u16() };
    app.metrics.requests.get_or_create(&request_labels).inc();
    app.metrics.duration.get_or_create(&request_labels).observe(started.elapsed().as_secs_f64());
    if let Err(e) = &result
        && e.status.is_server_error()
    {
        tracing::warn!(status = status.as_u16(), error = %e.message, "call failed");
    }
    let bytes = result?;
    Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

/// Counts a request in progress until dropped, also when the request's
/// future is dropped early (client gone) or unwinds.
struct InProgress(prometheus_client::metrics::gauge::Gauge);

impl InProgress {
    fn enter(gauge: prometheus_client::metrics::gauge::Gauge) -> InProgress {
        gauge.inc();
        InProgress(gauge)
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn handle_call(
    app: &AppState,
    d: &Deployment,
    api: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    check_json_content_type(headers)?;
    let limit = app.max_request_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body exceeds the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
            too_large()
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, format!("could not read the request body: {e}"))
        }
    })?;
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the request body is not valid JSON: {e}"),
        ));
    }
    let output = d.call(api, &bytes).await?;
    Ok(Bytes::from(output))
}

pub(crate) fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let unsupported = |what: String| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("{what}; send Content-Type: application/json"),
        )
    };
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(unsupported("the request has no Content-Type".into()));
    };
    let text = value.to_str().unwrap_or("");
    let essence = text.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json")) {
        Ok(())
    } else {
        Err(unsupported(format!("Content-Type {text:?} is not JSON")))
    }
}

/// Takes the caller's `x-request-id` or makes one, runs the request in a
/// span carrying it, and returns it on the response.
async fn request_id(request: Request, next: Next) -> Response {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| {
            format!("{:08x}-{:08x}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
        });
    let span =
        tracing::info_span!("request", id = %id, method = %request.method(), path = %request.uri().path());
    let mut response = next.run(request).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}
