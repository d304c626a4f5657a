//! The admin API under `/admin/v1/`: read and replace a deployment's
//! traffic and scaling configuration at run time, and read its events.
//!
//! | route | |
//! |---|---|
//! | `GET /admin/v1/deployments` | every deployment with its configuration |
//! | `POST /admin/v1/deployments` | deploy a bento: `{"bento": "name:version" or a registry reference, "name": ...}` |
//! | `GET /admin/v1/deployments/{name}` | one deployment, with running/waiting counts |
//! | `DELETE /admin/v1/deployments/{name}` | undeploy (running calls finish) |
//! | `GET`/`PUT /admin/v1/deployments/{name}/traffic` | traffic JSON (takes effect at once) |
//! | `GET`/`PUT /admin/v1/deployments/{name}/scaling` | scaling policy JSON |
//! | `GET /admin/v1/deployments/{name}/events` | recent events with reasons |
//! | `GET`/`PUT /admin/v1/deployments/{name}/runners/{model}/traffic` | a runner's traffic JSON |
//! | `GET`/`PUT /admin/v1/deployments/{name}/runners/{model}/scaling` | a runner's scaling policy |
//!
//! Every route needs `Authorization: Bearer <token>` (401 otherwise). A `PUT`
//! is validated first (400 naming the field and the rule), then applied and
//! persisted, so it survives a restart.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::deployment::{Deployment, DeploymentSpec};
use crate::fleet::DeployError;
use crate::http::{ApiError, AppState};
use crate::manifest::{RunnerBatching, RunnerConfig, RunnerTraffic, Traffic};
use crate::scale::ScalingPolicy;

/// The admin routes; [`guard`] checks the bearer token before them.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/deployments", get(list).post(deploy))
        .route("/deployments/{name}", get(show).delete(undeploy))
        .route("/deployments/{name}/traffic", get(get_traffic).put(put_traffic))
        .route("/deployments/{name}/scaling", get(get_scaling).put(put_scaling))
        .route("/deployments/{name}/events", get(events))
        .route("/deployments/{name}/runners/{model}/traffic", get(get_runner_traffic).put(put_runner_traffic))
        .route("/deployments/{name}/runners/{model}/scaling", get(get_runner_scaling).put(put_runner_scaling))
        .route(
            "/deployments/{name}/runners/{model}/batching",
            get(get_runner_batching).put(put_runner_batching),
        )
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such admin route: see /admin/v1/deployments")
        })
}

/// Wraps the whole router: under `/admin/` nothing answers without the
/// admin token, not even 404 or 405, so the admin routes cannot be probed.
/// With an API token configured, the same holds for everything else but
/// the probes and `/metrics`, which orchestrators and scrapers call bare.
pub async fn guard(State(app): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path.starts_with("/admin/") {
        let token = app.admin_token.clone();
        return require_token(&token, "the admin API", request, next).await;
    }
    match &app.api_token {
        Some(token)
            if !(matches!(path, "/livez" | "/readyz" | "/metrics") || path.starts_with("/readyz/")) =>
        {
            let token = token.clone();
            require_token(&token, "this API", request, next).await
        }
        _ => next.run(request).await,
    }
}

async fn require_token(expected: &str, what: &str, request: Request, next: Next) -> Response {
    // The scheme is case-insensitive (RFC 9110).
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let refuse = |message: &str| {
        let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        response
    };
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => next.run(request).await,
        Some(_) => refuse(&format!("the token is wrong for {what}")),
        None => refuse(&format!("{what} needs Authorization: Bearer <token>")),
    }
}

/// Compares without an early exit, so timing does not reveal a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn find(app: &AppState, name: &str) -> Result<Arc<Deployment>, ApiError> {
    app.deployments.get(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no deployment named {name:?} (deployments: {})", app.deployments.names().join(", ")),
        )
    })
}

fn summary(d: &Deployment) -> Value {
    let config = d.config();
    let runners: serde_json::Map<String, Value> = d
        .runners()
        .into_iter()
        .map(|(name, runner)| {
            let config = config.runners.get(&name).cloned().unwrap_or_default();
            let mut status = json!(runner.status());
            status["traffic"] = json!(config.traffic);
            status["scaling"] = json!(config.scaling);
            let batching = runner.batching();
            status["batching"] = json!({
                "max_batch_size": batching.max_batch_size,
                "max_latency_ms": batching.max_latency.map(|d| d.as_millis() as u64),
            });
            (name, status)
        })
        .collect();
    json!({
        "name": d.name(),
        "bento": config.bento,
        "ready": d.is_ready(),
        "not_ready_reason": d.not_ready_reason(),
        "apis": d.bento().apis.iter().map(|a| &a.name).collect::<Vec<_>>(),
        "running": d.gate().running(),
        "waiting": d.gate().waiting(),
        "traffic": config.traffic,
        "replicas": d.replicas(),
        "scaling": config.scaling,
        "resources": config.resources,
        "runners": runners,
    })
}

async fn list(State(app): State<Arc<AppState>>) -> Json<Value> {
    Json(Value::Array(app.deployments.all().iter().map(|d| summary(d)).collect()))
}

/// The body of `POST /admin/v1/deployments`.
#[derive(serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct DeployRequest {
    /// `name[:version]` of a bento in the store.
    bento: String,
    /// Defaults to the bento's name.
    #[serde(default)]
    name: Option<String>,
    /// Overrides the bento's traffic defaults.
    #[serde(default)]
    traffic: Option<Traffic>,
    /// Overrides the bento's `[resources]`.
    #[serde(default)]
    resources: Option<crate::devices::Resources>,
}

async fn deploy(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request: DeployRequest = parse(&headers, &body)?;
    let bad = |field: &str, e: crate::tag::TagError| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("{field}: {e}"))
    };
    let bento = if crate::oci::registry::is_reference(&request.bento) {
        crate::oci::registry::parse_reference(&request.bento)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bento: {e:#}")))?;
        // A registry reference: pulled (with its models) first.
        let store = app.deployments.store();
        let progress = crate::oci::registry::Progress::hidden();
        crate::oci::registry::pull_bento(store, &request.bento, progress).await.map_err(|e| {
            ApiError::new(StatusCode::BAD_GATEWAY, format!("bento: pulling {}: {e:#}", request.bento))
        })?
    } else {
        request.bento.parse().map_err(|e| bad("bento", e))?
    };
    if let Some(name) = &request.name {
        crate::tag::check_part(name, "deployment name", name).map_err(|e| bad("name", e))?;
    }
    if let Some(traffic) = &request.traffic {
        traffic.validate().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    }
    if let Some(resources) = &request.resources {
        resources.validate().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    }
    let spec =
        DeploymentSpec { bento, name: request.name, traffic: request.traffic, resources: request.resources };
    match app.deployments.deploy(&spec).await {
        Ok(d) => {
            d.keep_across_restarts().map_err(internal)?;
            Ok((StatusCode::CREATED, Json(summary(&d))))
        }
        Err(e @ DeployError::Exists(_)) => Err(ApiError::new(StatusCode::CONFLICT, e.to_string())),
        Err(e @ DeployError::Reserved) => Err(ApiError::new(StatusCode::BAD_REQUEST, e.to_string())),
        // Most often the bento or one of its models is not in the store.
        Err(DeployError::Prepare(e)) => Err(ApiError::new(StatusCode::NOT_FOUND, format!("{e:#}"))),
    }
}

async fn undeploy(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match app.deployments.undeploy(&name).map_err(internal)? {
        Some(d) => Ok(Json(json!({"name": d.name(), "undeployed": true}))),
        None => Err(find(&app, &name).err().expect("no such deployment")),
    }
}

async fn show(State(app): State<Arc<AppState>>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let d = find(&app, &name)?;
    Ok(Json(summary(&d)))
}

async fn get_traffic(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Traffic>, ApiError> {
    Ok(Json(find(&app, &name)?.config().traffic))
}

async fn put_traffic(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Traffic>, ApiError> {
    let d = find(&app, &name)?;
    let traffic: Traffic = parse(&headers, &body)?;
    traffic.validate().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    d.set_traffic(traffic).map_err(internal)?;
    Ok(Json(d.config().traffic))
}

async fn get_scaling(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<ScalingPolicy>, ApiError> {
    Ok(Json(find(&app, &name)?.config().scaling))
}

async fn put_scaling(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ScalingPolicy>, ApiError> {
    let d = find(&app, &name)?;
    check_body(&headers, &body)?;
    let scaling = ScalingPolicy::from_json(&body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.0))?;
    d.set_scaling(scaling).map_err(internal)?;
    Ok(Json(d.config().scaling))
}

/// A deployment's runner configuration, or 404 naming the runners there are.
fn runner_config(d: &Deployment, model: &str) -> Result<RunnerConfig, ApiError> {
    let config = d.config();
    config.runners.get(model).cloned().ok_or_else(|| {
        let known: Vec<&str> = config.runners.keys().map(String::as_str).collect();
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("deployment {:?} has no runner {model:?} (runners: {})", d.name(), known.join(", ")),
        )
    })
}

async fn get_runner_traffic(
    State(app): State<Arc<AppState>>,
    Path((name, model)): Path<(String, String)>,
) -> Result<Json<RunnerTraffic>, ApiError> {
    Ok(Json(runner_config(find(&app, &name)?.as_ref(), &model)?.traffic))
}

async fn put_runner_traffic(
    State(app): State<Arc<AppState>>,
    Path((name, model)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<RunnerTraffic>, ApiError> {
    let d = find(&app, &name)?;
    runner_config(&d, &model)?;
    let traffic: RunnerTraffic = parse(&headers, &body)?;
    traffic.validate().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("runners.{model}.{e}")))?;
    d.set_runner_traffic(&model, traffic).map_err(not_loaded)?;
    Ok(Json(runner_config(&d, &model)?.traffic))
}

async fn get_runner_scaling(
    State(app): State<Arc<AppState>>,
    Path((name, model)): Path<(String, String)>,
) -> Result<Json<ScalingPolicy>, ApiError> {
    Ok(Json(runner_config(find(&app, &name)?.as_ref(), &model)?.scaling))
}

async fn put_runner_scaling(
    State(app): State<Arc<AppState>>,
    Path((name, model)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ScalingPolicy>, ApiError> {
    let d = find(&app, &name)?;
    runner_config(&d, &model)?;
    check_body(&headers, &body)?;
    let bad = |e: String| ApiError::new(StatusCode::BAD_REQUEST, format!("runners.{model}.scaling.{e}"));
    let scaling = ScalingPolicy::from_json(&body).map_err(|e| bad(e.0))?;
    crate::manifest::RunnerConfig::check_runner_replicas(&scaling).map_err(bad)?;
    d.set_runner_scaling(&model, scaling).map_err(not_loaded)?;
    Ok(Json(runner_config(&d, &model)?.scaling))
}

async fn get_runner_batching(
    State(app): State<Arc<AppState>>,
    Path((name, model)): Path<(String, String)>,
) -> Result<Json<RunnerBatching>, ApiError> {
    Ok(Json(runner_config(find(&app, &name)?.as_ref(), &model)?.batching))
}

async fn put_runner_batching(
    State(app): State<Arc<AppState>>,
    Path((name, model)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<RunnerBatching>, ApiError> {
    let d = find(&app, &name)?;
    runner_config(&d, &model)?;
    let batching: RunnerBatching = parse(&headers, &body)?;
    batching
        .validate()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("runners.{model}.{e}")))?;
    d.set_runner_batching(&model, batching).map_err(not_loaded)?;
    Ok(Json(runner_config(&d, &model)?.batching))
}

/// A runner that exists in the configuration but is not made yet (the
/// deployment's models are still loading, or failed to).
fn not_loaded(e: anyhow::Error) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, format!("{e:#}; the deployment's models are not loaded"))
}

async fn events(State(app): State<Arc<AppState>>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(find(&app, &name)?.events())))
}

/// A JSON object body (a `PUT` replaces the whole configuration, so an
/// array or `null` is refused rather than read as "all defaults"), with
/// errors that name the field.
fn parse<T: DeserializeOwned + serde::Serialize>(headers: &HeaderMap, body: &[u8]) -> Result<T, ApiError> {
    check_body(headers, body)?;
    crate::json::decode(body).map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, m))
}

/// A JSON content type and a body that is a JSON object.
fn check_body(headers: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
    crate::http::check_json_content_type(headers)?;
    match serde_json::from_slice::<Value>(body) {
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("the request body is not valid JSON: {e}"),
            ));
        }
        Ok(Value::Object(_)) => {}
        Ok(_) => {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "the request body must be a JSON object"));
        }
    }
    Ok(())
}

fn internal(e: anyhow::Error) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
}
