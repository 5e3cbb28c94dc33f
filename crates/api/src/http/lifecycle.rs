//! A cluster's life after its founding: `DELETE /clusters/{id}`, and a new bootstrap token for
//! one of its nodes (`POST /clusters/{id}/nodes/{node_name}/bootstrap-token`).

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use plinth_domain::delete_cluster::DeletionBegun;
use plinth_domain::model::{ClusterId, Idempotency, OperationKind, RequestFingerprint};

use super::bodies::{OperationBody, ReissuedTokenBody, rfc3339};
use super::{AppState, idempotency};
use crate::auth::Caller;
use crate::problem::{ApiError, IDEMPOTENT_REPLAYED, Problem};

/// Deletes one of the organization's clusters: its DNS records, its VMs, the security group
/// plinth created for it (never one the caller passed in), then its rows and every sealed key.
/// The deletion runs on its own; poll `Location`. While it runs the cluster is `deleting`; once
/// it succeeded, the cluster is gone (404). A deletion that stopped (say, the compute service
/// was down past `founding.deadline_secs`) leaves the cluster `deleting`: `DELETE` it again.
#[utoipa::path(delete, path = "/clusters/{id}", tag = "clusters",
    params(("id" = String, Path, format = Uuid, description = "Cluster id"),
        ("Idempotency-Key" = Option<String>, Header, description = "As on `POST /clusters`: a retry with the same key answers the first request's operation")),
    responses(
        (status = 202, description = "The deletion runs (or already ran, for a retry with the same key; or already runs: its operation)", body = OperationBody,
         headers(("Location" = String, description = "/operations/{id}"), ("Idempotent-Replayed" = String, description = "`true` on a replay"))),
        (status = 400, description = "A malformed Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The cluster is still being founded (`cluster-provisioning`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The Idempotency-Key was first used with another request", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn delete_cluster(
    caller: Caller,
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let cluster = ClusterId::parse(&id)
        .map_err(|_| ApiError::not_found(format!("no cluster {id} in your organization")))?;
    let key = idempotency::idempotency_key(&req).map_err(|e| ApiError::invalid(vec![e]))?;
    let idempotency = key.map(|key| Idempotency {
        key,
        fingerprint: RequestFingerprint::of(&format!("DELETE /clusters/{cluster}"), b""),
    });
    let begun = state
        .deletions
        .begin(&state.foundings, &caller.org, cluster, idempotency)
        .await?;
    let (body, replayed) = match begun {
        DeletionBegun::Started { operation } => {
            let stored = state.operations.operation(operation).await.ok().flatten();
            let body = stored.as_ref().map_or_else(
                || OperationBody::started(OperationKind::Delete, operation, cluster),
                OperationBody::from,
            );
            (body, false)
        }
        DeletionBegun::AlreadyRunning(operation) => (OperationBody::from(&*operation), false),
        DeletionBegun::Replayed(operation) => (OperationBody::from(&*operation), true),
    };
    let mut response = HttpResponse::Accepted();
    response.insert_header((
        header::LOCATION,
        format!("/operations/{}", body.operation_id),
    ));
    if replayed {
        response.insert_header((IDEMPOTENT_REPLAYED, "true"));
    }
    Ok(response.json(body))
}

/// Gives a node of one of the organization's ready clusters a new bootstrap token: the old one
/// stops working at once. The answer holds the token and the node's userdata shim with it, for
/// a VM rebuilt or a node that boots late; the token works until `expires_at`, or
/// `bootstrap.token_reuse_window_secs` after its first fetch.
#[utoipa::path(post, path = "/clusters/{id}/nodes/{node_name}/bootstrap-token", tag = "clusters",
    params(("id" = String, Path, format = Uuid, description = "Cluster id"),
           ("node_name" = String, Path, description = "cp-{n}.cluster-{id}.internal")),
    responses(
        (status = 201, body = ReissuedTokenBody, headers(("Cache-Control" = String, description = "no-store"))),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such node in a ready cluster of the organization", body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn reissue_bootstrap_token(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (cluster, node) = path.into_inner();
    let cluster = ClusterId::parse(&cluster)
        .map_err(|_| ApiError::not_found(format!("no cluster {cluster} in your organization")))?;
    let issued = state.tokens.reissue(&caller.org, cluster, &node).await?;
    Ok(HttpResponse::Created()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(ReissuedTokenBody {
            token: issued.token.into(),
            expires_at: rfc3339(issued.expires_at),
            user_data: issued.user_data.into(),
        }))
}
