//! The admin API under `/admin/v1/`: read and replace a deployment's
//! traffic and scaling configuration at run time, and read its events.
//!
//! | route | |
//! |---|---|
//! | `GET /admin/v1/deployments` | every deployment with its configuration |
//! | `GET /admin/v1/deployments/{name}` | one deployment, with running/waiting counts |
//! | `GET`/`PUT /admin/v1/deployments/{name}/traffic` | traffic JSON (takes effect at once) |
//! | `GET`/`PUT /admin/v1/deployments/{name}/scaling` | scaling policy JSON |
//! | `GET /admin/v1/deployments/{name}/events` | recent events with reasons |
//!
//! Every route needs `Authorization: Bearer <token>` (401 otherwise). A `PUT`
//! is validated first (400 naming the field and the rule), then applied and
//! persisted, so it survives a restart.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::deployment::Deployment;
use crate::http::{ApiError, AppState};
use crate::manifest::Traffic;
use crate::scale::ScalingPolicy;

/// The admin routes, behind the bearer-token check.
pub fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/deployments", get(list))
        .route("/deployments/{name}", get(show))
        .route("/deployments/{name}/traffic", get(get_traffic).put(put_traffic))
        .route("/deployments/{name}/scaling", get(get_scaling).put(put_scaling))
        .route("/deployments/{name}/events", get(events))
        .route_layer(middleware::from_fn_with_state(state, require_token))
}

async fn require_token(State(app): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), app.admin_token.as_bytes()) => {
            next.run(request).await
        }
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "the admin token is wrong").into_response(),
        None => ApiError::new(StatusCode::UNAUTHORIZED, "the admin API needs Authorization: Bearer <token>")
            .into_response(),
    }
}

/// Compares without an early exit, so timing does not reveal a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn find(app: &AppState, name: &str) -> Result<Arc<Deployment>, ApiError> {
    app.deployments
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no deployment named {name:?}")))
}

fn summary(d: &Deployment) -> Value {
    let config = d.config();
    json!({
        "name": d.name(),
        "bento": config.bento,
        "ready": d.is_ready(),
        "not_ready_reason": d.not_ready_reason(),
        "apis": d.bento().apis.iter().map(|a| &a.name).collect::<Vec<_>>(),
        "running": d.gate().running(),
        "waiting": d.gate().waiting(),
        "traffic": config.traffic,
        "scaling": config.scaling,
    })
}

async fn list(State(app): State<Arc<AppState>>) -> Json<Value> {
    Json(Value::Array(app.deployments.values().map(|d| summary(d)).collect()))
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
    body: Bytes,
) -> Result<Json<Traffic>, ApiError> {
    let d = find(&app, &name)?;
    let traffic: Traffic = parse(&body)?;
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
    body: Bytes,
) -> Result<Json<ScalingPolicy>, ApiError> {
    let d = find(&app, &name)?;
    let scaling = ScalingPolicy::from_json(&body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.0))?;
    d.set_scaling(scaling).map_err(internal)?;
    Ok(Json(d.config().scaling))
}

async fn events(State(app): State<Arc<AppState>>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(find(&app, &name)?.events())))
}

/// JSON with errors that name the field.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path == "." { inner.to_string() } else { format!("{path}: {inner}") };
        ApiError::new(StatusCode::BAD_REQUEST, message)
    })
}

fn internal(e: anyhow::Error) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
}
