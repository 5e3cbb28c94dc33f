//! Errors as RFC 9457 `application/problem+json`, and the one place where domain errors become
//! HTTP statuses. 5xx bodies say what failed in general terms; the details go to the log.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpResponse, ResponseError};
use plinth_domain::FoundClusterError;
use plinth_domain::bootstrap::{FetchBundleError, ReissueError};
use plinth_domain::credentials::CredentialsError;
use plinth_domain::delete_cluster::DeleteError;
use plinth_domain::found_cluster::{FailureKind, ReplayError, SubmitError};
use plinth_domain::ports::Chain;
use plinth_domain::ports::operations::OperationProblem;
use plinth_domain::ports::repo::RepoError;
use serde::Serialize;
use utoipa::ToSchema;

/// One broken rule of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// The field, e.g. `control_plane_count` or `security_group_ids[2]`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// `field` breaks a rule: `message`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// What a stopped founding did about the resources it had created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct CleanupBody {
    /// Deleted again, e.g. `vm vm-1`, `security_group sg-1`.
    pub removed: Vec<String>,
    /// Still there: an operator must delete these.
    pub left_behind: Vec<String>,
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI reference naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong here, for a person.
    pub detail: String,
    /// Every broken rule, for validation errors.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// For a founding that stopped: what it cleaned up and what it left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<CleanupBody>,
}

/// An error answered as problem+json.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} {}", problem.status, problem.detail)]
pub struct ApiError {
    // Boxed: errors travel in every handler's `Result`, which should stay small.
    problem: Box<Problem>,
    bearer_challenge: Option<String>,
    /// Seconds for `Retry-After`, when trying again later can help.
    retry_after: Option<u64>,
    /// The answer of an earlier request with the same idempotency key.
    replayed: bool,
}

/// What `Retry-After` says when this replica is busy or a dependency is down.
pub(crate) const RETRY_AFTER_SECS: u64 = 2;

const TYPE_BASE: &str = "https://plinth.dev/problems/";

/// The header that marks the answer of an earlier request with the same idempotency key.
pub const IDEMPOTENT_REPLAYED: &str = "Idempotent-Replayed";

impl ApiError {
    /// A problem of `kind` (a short slug) with `detail`.
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Self {
        Self {
            problem: Box::new(Problem {
                kind: format!("{TYPE_BASE}{kind}"),
                title: status.canonical_reason().unwrap_or("Error").to_owned(),
                status: status.as_u16(),
                detail: detail.into(),
                errors: Vec::new(),
                cleanup: None,
            }),
            bearer_challenge: None,
            retry_after: None,
            replayed: false,
        }
    }

    /// The same error, marked as the answer of an earlier request with the same idempotency
    /// key (`Idempotent-Replayed: true`).
    #[must_use]
    pub fn replayed(mut self) -> Self {
        self.replayed = true;
        self
    }

    /// The same error with `Retry-After: <seconds>`.
    #[must_use]
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// 400 with every broken rule.
    pub fn invalid(errors: Vec<FieldError>) -> Self {
        let mut error = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-request",
            format!("the request breaks {} rule(s); see errors", errors.len()),
        );
        error.problem.errors = errors;
        error
    }

    /// 400 for a body that is not JSON at all.
    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed-request", detail)
    }

    /// 401 with a `WWW-Authenticate: Bearer` challenge saying why.
    pub fn unauthorized(reason: &str) -> Self {
        let mut error = Self::new(StatusCode::UNAUTHORIZED, "unauthorized", reason);
        error.bearer_challenge = Some(format!(
            "Bearer error=\"invalid_token\", error_description=\"{}\"",
            reason.replace('"', "'")
        ));
        error
    }

    /// 401 when no credentials came at all.
    pub fn unauthenticated() -> Self {
        let mut error = Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a bearer token is required (Authorization: Bearer <JWT>)",
        );
        error.bearer_challenge = Some("Bearer".to_owned());
        error
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The problem document.
    pub fn problem(&self) -> &Problem {
        &self.problem
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status());
        response.insert_header((header::CONTENT_TYPE, "application/problem+json"));
        if let Some(challenge) = &self.bearer_challenge {
            response.insert_header((header::WWW_AUTHENTICATE, challenge.clone()));
        }
        if let Some(seconds) = self.retry_after {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        if self.replayed {
            response.insert_header((IDEMPOTENT_REPLAYED, "true"));
        }
        response.json(&*self.problem)
    }
}

/// A repository failure outside a founding: unavailable is 503, anything else 500.
pub fn repo_error(e: &RepoError) -> ApiError {
    tracing::error!(error = %Chain(e), "repository call failed");
    match e {
        RepoError::Unavailable(_) => {
            let mut error = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database-unavailable",
                "the database is unavailable; try again",
            );
            error.retry_after = Some(RETRY_AFTER_SECS);
            error
        }
        _ => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred",
        ),
    }
}

impl From<FetchBundleError> for ApiError {
    fn from(e: FetchBundleError) -> Self {
        match e {
            // One answer for every refusal, so a caller learns nothing about what exists.
            FetchBundleError::Unauthorized | FetchBundleError::Burned => {
                ApiError::unauthorized("invalid bootstrap token")
            }
            FetchBundleError::Unavailable(why) => repo_error(&why),
            other => {
                tracing::error!(error = %Chain(&other), "bootstrap bundle cannot be rendered");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the bundle cannot be rendered",
                )
            }
        }
    }
}

/// The status of each class of founding failure.
fn status_of(kind: FailureKind) -> StatusCode {
    match kind {
        FailureKind::NameTaken | FailureKind::ComputeConflict => StatusCode::CONFLICT,
        FailureKind::QuotaExceeded => StatusCode::FORBIDDEN,
        FailureKind::TooManyFoundings => StatusCode::TOO_MANY_REQUESTS,
        FailureKind::TrustMaterialFailed => StatusCode::INTERNAL_SERVER_ERROR,
        FailureKind::DatabaseUnavailable | FailureKind::Interrupted => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        FailureKind::ComputeRefused => StatusCode::UNPROCESSABLE_ENTITY,
        FailureKind::ComputeFailed
        | FailureKind::VmLookupFailed
        | FailureKind::DnsFailed
        | FailureKind::ComputeMisconfigured => StatusCode::BAD_GATEWAY,
        FailureKind::CapacityExhausted => StatusCode::SERVICE_UNAVAILABLE,
        FailureKind::ComputeTimeout
        | FailureKind::VmAddressesTimeout
        | FailureKind::FoundingDeadline
        | FailureKind::DeletionDeadline => StatusCode::GATEWAY_TIMEOUT,
    }
}

impl From<&OperationProblem> for ApiError {
    /// A founding's failure as the caller sees it, live or read back from its operation.
    fn from(problem: &OperationProblem) -> Self {
        let status =
            FailureKind::parse(&problem.kind).map_or(StatusCode::INTERNAL_SERVER_ERROR, status_of);
        let mut error = ApiError::new(status, &problem.kind, problem.detail.clone());
        if !(problem.removed.is_empty() && problem.left_behind.is_empty()) {
            error.problem.cleanup = Some(CleanupBody {
                removed: problem.removed.clone(),
                left_behind: problem.left_behind.clone(),
            });
        }
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            error.retry_after = Some(RETRY_AFTER_SECS);
        }
        error
    }
}

impl From<FoundClusterError> for ApiError {
    fn from(e: FoundClusterError) -> Self {
        let problem = e.problem();
        let error = ApiError::from(&problem);
        if error.status().is_server_error() {
            tracing::error!(step = %e.step(), error = %Chain(&e), "founding failed");
        } else {
            tracing::info!(step = %e.step(), error = %Chain(&e), "founding refused");
        }
        error
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Busy => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-foundings",
                e.to_string(),
            )
            .retry_after(RETRY_AFTER_SECS),
            SubmitError::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting-down",
                e.to_string(),
            )
            .retry_after(RETRY_AFTER_SECS),
            SubmitError::Claim(e) => e.into(),
            SubmitError::Lookup(e) => repo_error(&e),
            SubmitError::Replay(ReplayError::KeyReused) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "this Idempotency-Key was first sent with another request; use a new key for a \
                 new request",
            ),
            SubmitError::Replay(ReplayError::ClusterGone(cluster)) => ApiError::not_found(format!(
                "cluster {cluster}, which this Idempotency-Key founded, no longer exists"
            )),
            SubmitError::Replay(ReplayError::Repo(e)) => repo_error(&e),
            other => {
                tracing::error!(error = %Chain(&other), "a founding request could not be answered");
                internal("the founding request could not be answered")
            }
        }
    }
}

impl From<CredentialsError> for ApiError {
    fn from(e: CredentialsError) -> Self {
        match e {
            CredentialsError::NotFound(cluster) => {
                ApiError::not_found(format!("no cluster {cluster} in your organization"))
            }
            CredentialsError::NotReady { .. } => {
                ApiError::new(StatusCode::CONFLICT, "cluster-not-ready", e.to_string())
                    .retry_after(RETRY_AFTER_SECS)
            }
            CredentialsError::UnusableSubject(why) => ApiError::new(
                StatusCode::FORBIDDEN,
                "unusable-subject",
                format!("the token's subject cannot name a certificate: {why}"),
            ),
            CredentialsError::Repo(e) => repo_error(&e),
            other => {
                tracing::error!(error = %Chain(&other), "issuing admin credentials failed");
                internal("the credentials could not be issued")
            }
        }
    }
}

impl From<DeleteError> for ApiError {
    fn from(e: DeleteError) -> Self {
        match e {
            DeleteError::NotFound(_) => ApiError::not_found(e.to_string()),
            DeleteError::StillFounding(why) => ApiError::new(
                StatusCode::CONFLICT,
                "cluster-provisioning",
                format!("{why}; delete it once it is ready"),
            )
            .retry_after(RETRY_AFTER_SECS),
            DeleteError::KeyReused => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "this Idempotency-Key was first sent with another request; use a new key for a \
                 new request",
            ),
            DeleteError::Unavailable(e) => e.into(),
            DeleteError::Database(e) => repo_error(&e),
            other => {
                tracing::error!(error = %Chain(&other), "a deletion could not be started");
                internal("the deletion could not be started")
            }
        }
    }
}

impl From<ReissueError> for ApiError {
    fn from(e: ReissueError) -> Self {
        match e {
            ReissueError::NotFound { .. } => ApiError::not_found(e.to_string()),
            ReissueError::Database(e) => repo_error(&e),
            other => {
                tracing::error!(error = %Chain(&other), "re-issuing a bootstrap token failed");
                internal("the token could not be issued")
            }
        }
    }
}

/// 500 saying `detail`; the cause goes to the log.
fn internal(detail: &str) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
}
