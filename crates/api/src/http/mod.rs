//! The HTTP API (docs/ARCHITECTURE.md §3): one module per resource, the answer bodies beside
//! them, and [`app`], which puts the routes, the shared state and the middleware together.
//! Handlers see only the domain's use cases and ports, through [`AppState`].

mod archive;
mod bodies;
mod bootstrap;
mod clusters;
mod create_body;
mod credentials;
mod cursor;
pub mod failures;
pub mod health;
mod idempotency;
mod lifecycle;
pub mod openapi;
mod operations;
pub mod secret;

use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{App, HttpRequest, HttpResponse, middleware, web};
use futures::StreamExt as _;
use plinth_domain::bootstrap::{FetchBundle, ReissueToken};
use plinth_domain::credentials::IssueCredentials;
use plinth_domain::delete_cluster::DeleteCluster;
use plinth_domain::expiry::CertificateExpiries;
use plinth_domain::found_cluster::Foundings;
use plinth_domain::ports::operations::Operations;
use plinth_domain::ports::repo::Repo;

use crate::auth::Authenticator;
use crate::problem::ApiError;
use crate::telemetry;

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the handlers share: the use cases, and the repository for reads.
pub struct AppState {
    /// The foundings of this replica (each runs as a task of its own).
    pub foundings: Foundings,
    /// Admin credentials on demand.
    pub credentials: IssueCredentials,
    /// Deletions (run under the foundings' bound and drain).
    pub deletions: Arc<DeleteCluster>,
    /// New bootstrap tokens for nodes.
    pub tokens: ReissueToken,
    /// Certificate expiry reports.
    pub expiries: CertificateExpiries,
    /// Refused bootstrap fetches per client address.
    pub bootstrap_failures: failures::FailureLimiter,
    /// Whether `/metrics` is served on this listener (not when it has one of its own).
    pub metrics_here: bool,
    /// The bootstrap bundle use case.
    pub bundles: FetchBundle,
    /// Cluster truth, for the reads and readiness.
    pub repo: Arc<dyn Repo>,
    /// The operations journal, for `GET /operations/{id}`.
    pub operations: Arc<dyn Operations>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

/// The whole application: every route over `state`, bearer tokens checked by `authenticator`,
/// every request observed (request id, log line, metrics).
pub fn app(
    state: web::Data<AppState>,
    authenticator: web::Data<Authenticator>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(state)
        .app_data(authenticator)
        .wrap(middleware::from_fn(telemetry::observe))
        .configure(routes)
}

/// The bootstrap route alone (`GET /bootstrap/{cluster_id}/nodes/{node_name}`) over `state`, as
/// served to VMs on `server.bootstrap_listen`; every other path is a 404 problem. Requests are
/// observed, refusals limited and fetches counted as on the main listener: the state is shared.
pub fn bootstrap_app(
    state: web::Data<AppState>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(state)
        .wrap(middleware::from_fn(telemetry::observe))
        .app_data(path_config())
        .route(
            "/bootstrap/{cluster_id}/nodes/{node_name}",
            web::get().to(bootstrap::fetch_bundle),
        )
        .default_service(web::to(no_such_route))
}

fn path_config() -> web::PathConfig {
    web::PathConfig::default()
        .error_handler(|e, _| ApiError::malformed(format!("invalid path: {e}")).into())
}

fn routes(config: &mut web::ServiceConfig) {
    config
        .app_data(
            web::QueryConfig::default()
                .error_handler(|e, _| ApiError::malformed(format!("invalid query: {e}")).into()),
        )
        .app_data(path_config())
        .service(
            web::resource("/clusters")
                .route(web::post().to(clusters::create_cluster))
                .route(web::get().to(clusters::list_clusters))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/clusters/{id}")
                .route(web::get().to(clusters::get_cluster))
                .route(web::delete().to(lifecycle::delete_cluster))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/clusters/{id}/credentials")
                .route(web::post().to(credentials::issue_credentials))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/clusters/{id}/nodes/{node_name}/bootstrap-token")
                .route(web::post().to(lifecycle::reissue_bootstrap_token))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/operations/{id}")
                .route(web::get().to(operations::get_operation))
                .default_service(web::to(method_not_allowed)),
        )
        .route(
            "/bootstrap/{cluster_id}/nodes/{node_name}",
            web::get().to(bootstrap::fetch_bundle),
        )
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(health::prometheus))
        .route("/openapi.json", web::get().to(openapi::serve))
        .default_service(web::to(no_such_route));
}

async fn no_such_route() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("no such route"))
}

async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "this route does not take that method",
    ))
}

/// Reads a JSON request body: refuses another content type (415) and more than
/// [`MAX_BODY_BYTES`] (413) without buffering the excess.
async fn read_json_body(
    req: &HttpRequest,
    mut payload: web::Payload,
) -> Result<web::BytesMut, ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            format!(
                "the body must be JSON (Content-Type: application/json); got {:?}",
                if content_type.is_empty() {
                    "none"
                } else {
                    content_type
                }
            ),
        ));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(too_large());
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::malformed(format!("the body could not be read: {e}")))?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
