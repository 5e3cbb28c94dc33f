//! `POST /clusters/{id}/credentials`: a new admin kubeconfig for a ready cluster, named after the
//! caller and expiring when asked. Nothing of it is kept; each issue is an audit event.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use plinth_domain::credentials::CredentialsLifetime;
use plinth_domain::model::ClusterId;
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::bodies::{CredentialsBody, rfc3339};
use super::secret::SecretField;
use super::{AppState, read_json_body};
use crate::auth::Caller;
use crate::problem::{ApiError, FieldError, Problem};

/// The optional body of `POST /clusters/{id}/credentials`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialsRequestBody {
    /// How long the credentials work, seconds: 600 to 2592000 (30 days); default
    /// `credentials.default_expiration_secs`.
    #[schema(minimum = 600, maximum = 2_592_000)]
    expiration_seconds: Option<i64>,
}

/// Issues an admin kubeconfig for one of the organization's ready clusters: its client
/// certificate's CN is the caller's token subject, O `system:masters`, and it expires at
/// `expires_at` (to the second). The body is optional.
#[utoipa::path(post, path = "/clusters/{id}/credentials", tag = "clusters",
    params(("id" = String, Path, format = Uuid, description = "Cluster id")),
    request_body(content = Option<CredentialsRequestBody>, description = "Optional"),
    responses((status = 201, body = CredentialsBody, headers(("Cache-Control" = String, description = "no-store"))),
        (status = 400, description = "A bad expiration_seconds, or another field", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token has no subject a certificate can name", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The cluster is not ready yet (`cluster-not-ready`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn issue_credentials(
    caller: Caller,
    state: web::Data<AppState>,
    id: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let cluster = ClusterId::parse(&id)
        .map_err(|_| ApiError::not_found(format!("no cluster {id} in your organization")))?;
    let lifetime = requested_lifetime(&req, payload).await?;
    let subject = caller.subject.as_deref().ok_or_else(|| {
        ApiError::new(
            actix_web::http::StatusCode::FORBIDDEN,
            "unusable-subject",
            "credentials name who asked for them, and this token has no `sub` claim",
        )
    })?;
    let issued = state
        .credentials
        .issue(&caller.org, cluster, subject, lifetime)
        .await?;
    Ok(HttpResponse::Created()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(CredentialsBody {
            kubeconfig: SecretField::from(issued.kubeconfig),
            expires_at: rfc3339(issued.expires_at),
        }))
}

/// The body's `expiration_seconds`, if it has a body at all.
async fn requested_lifetime(
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<Option<CredentialsLifetime>, ApiError> {
    let declared_empty = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "0");
    let no_body = declared_empty
        || (!req.headers().contains_key(header::CONTENT_LENGTH)
            && !req.headers().contains_key(header::TRANSFER_ENCODING));
    if no_body {
        return Ok(None);
    }
    let body = read_json_body(req, payload).await?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::malformed(format!("the body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::invalid(vec![FieldError::new(
            "(body)",
            "the body must be a JSON object",
        )]));
    }
    let parsed: CredentialsRequestBody = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "(body)".to_owned()
        } else {
            path
        };
        ApiError::invalid(vec![FieldError::new(field, e.into_inner().to_string())])
    })?;
    parsed
        .expiration_seconds
        .map(|secs| {
            u64::try_from(secs)
                .ok()
                .and_then(|secs| CredentialsLifetime::from_secs(secs).ok())
                .ok_or_else(|| {
                    ApiError::invalid(vec![FieldError::new(
                        "expiration_seconds",
                        format!(
                            "must be an integer from {} to {}",
                            CredentialsLifetime::MIN_SECS,
                            CredentialsLifetime::MAX_SECS
                        ),
                    )])
                })
        })
        .transpose()
}
