//! `GET /healthz`, `GET /readyz` and `GET /metrics`.

use actix_web::{HttpResponse, web};

use super::AppState;
use crate::metrics::{CONTENT_TYPE, metrics};
use crate::problem::{ApiError, Problem, repo_error};

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// The database answers.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200), (status = 503, body = Problem, content_type = "application/problem+json")))]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.repo.ping().await.map_err(|e| repo_error(&e))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ready"})))
}

/// Prometheus metrics, in the Prometheus text format (404 here when `server.metrics_listen`
/// serves them on an address of their own).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, content_type = "text/plain; version=0.0.4"),
        (status = 404, description = "Served on `server.metrics_listen` instead", body = Problem, content_type = "application/problem+json")))]
pub async fn prometheus(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !state.metrics_here {
        return Err(ApiError::not_found("no such route"));
    }
    Ok(exposition())
}

/// The metrics, for the metrics listener.
pub async fn metrics_only() -> HttpResponse {
    exposition()
}

fn exposition() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(CONTENT_TYPE)
        .body(metrics().render())
}
