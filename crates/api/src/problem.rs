//! Errors as RFC 9457 `application/problem+json`, and the one place where domain errors become
//! HTTP statuses. 5xx bodies say what failed in general terms; the details go to the log.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpResponse, ResponseError};
use plinth_domain::FoundClusterError;
use plinth_domain::bootstrap::FetchBundleError;
use plinth_domain::found_cluster::{CreatedResource, FoundingFailure};
use plinth_domain::ports::Chain;
use plinth_domain::ports::compute::ComputeError;
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
}

const TYPE_BASE: &str = "https://plinth.dev/problems/";

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
        }
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
        response.json(&*self.problem)
    }
}

/// A repository failure outside a founding: unavailable is 503, anything else 500.
pub fn repo_error(e: &RepoError) -> ApiError {
    tracing::error!(error = %Chain(e), "repository call failed");
    match e {
        RepoError::Unavailable(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database-unavailable",
            "the database is unavailable; try again",
        ),
        _ => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred",
        ),
    }
}

fn resource(r: &CreatedResource) -> String {
    match r {
        CreatedResource::Vm(id) => format!("vm {id}"),
        CreatedResource::SecurityGroup(id) => format!("security_group {id}"),
    }
}

/// Status and public detail of a compute failure: the caller's input (a subnet or group that
/// does not exist, a refused request) is 422 with the compute service's words; the platform
/// failing is 502, or 504 when it did not answer in time.
fn compute(e: &ComputeError, doing: &str) -> (StatusCode, &'static str, String) {
    match e {
        ComputeError::NotFound(m) | ComputeError::Rejected(m) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "compute-refused",
            format!("the compute service refused {doing}: {m}"),
        ),
        ComputeError::Timeout(_) => (
            StatusCode::GATEWAY_TIMEOUT,
            "compute-timeout",
            format!("the compute service did not answer in time while {doing}"),
        ),
        ComputeError::Conflict(m) => (
            StatusCode::CONFLICT,
            "compute-conflict",
            format!("the compute service could not go on with {doing}: {m}"),
        ),
        _ => (
            StatusCode::BAD_GATEWAY,
            "compute-failed",
            format!("the compute service failed while {doing}"),
        ),
    }
}

impl From<FetchBundleError> for ApiError {
    fn from(e: FetchBundleError) -> Self {
        match e {
            // One answer for every refusal, so a caller learns nothing about what exists.
            FetchBundleError::Unauthorized => ApiError::unauthorized("invalid bootstrap token"),
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

impl From<FoundClusterError> for ApiError {
    fn from(e: FoundClusterError) -> Self {
        let (failure, cleanup) = (e.failure(), e.cleanup());
        let database = |doing: &str| {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "database-unavailable",
                format!("the database failed while {doing}; nothing was founded"),
            )
        };
        let (status, kind, detail) = match failure {
            FoundingFailure::CreateCa(_)
            | FoundingFailure::CreateServiceAccountKey(_)
            | FoundingFailure::SignCertificate { .. }
            | FoundingFailure::RenderKubeconfig(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "trust-material-failed",
                "the cluster's trust material could not be made; nothing was founded".to_owned(),
            ),
            FoundingFailure::InsertCluster(RepoError::Conflict(m)) => {
                (StatusCode::CONFLICT, "name-taken", m.clone())
            }
            FoundingFailure::BeginTransaction(_) | FoundingFailure::InsertCluster(_) => {
                database("starting the founding")
            }
            FoundingFailure::RecordSecurityGroups(_) | FoundingFailure::InsertNodes(_) => {
                database("storing the cluster")
            }
            FoundingFailure::Commit(_) => database("committing the cluster"),
            FoundingFailure::SubnetLookup { source, subnet } => {
                compute(source, &format!("reading subnet {subnet}"))
            }
            FoundingFailure::CreateSecurityGroup(source) => {
                compute(source, "creating the control-plane security group")
            }
            FoundingFailure::AddIngressRule { source, .. } => {
                compute(source, "opening the control-plane security group")
            }
            FoundingFailure::CreateVms(failures) => {
                let ordinals: Vec<String> = failures
                    .iter()
                    .map(|(ordinal, _)| format!("cp-{ordinal}"))
                    .collect();
                let (status, kind, _) = compute(&failures[0].1, "");
                let reason = match status {
                    StatusCode::UNPROCESSABLE_ENTITY | StatusCode::CONFLICT => {
                        format!(": {}", failures[0].1)
                    }
                    _ => String::new(),
                };
                (
                    status,
                    kind,
                    format!(
                        "the compute service failed to create VM(s) {}{reason}",
                        ordinals.join(", ")
                    ),
                )
            }
            FoundingFailure::VmIdentityLookup(_) => (
                StatusCode::BAD_GATEWAY,
                "vm-lookup-failed",
                "the VMs' addresses could not be read".to_owned(),
            ),
            FoundingFailure::VmAddressesDeadline {
                waiting_for,
                waited,
            } => (
                StatusCode::GATEWAY_TIMEOUT,
                "vm-addresses-timeout",
                format!(
                    "{} VM(s) had no private IPv4 after {}s",
                    waiting_for.len(),
                    waited.as_secs()
                ),
            ),
        };
        if status.is_server_error() {
            tracing::error!(step = %failure.step(), error = %Chain(failure), cleanup = %cleanup, "founding failed");
        } else {
            tracing::info!(step = %failure.step(), error = %Chain(failure), "founding refused");
        }
        let mut error = ApiError::new(status, kind, detail);
        if !(cleanup.removed.is_empty() && cleanup.left_behind.is_empty()) {
            error.problem.cleanup = Some(CleanupBody {
                removed: cleanup.removed.iter().map(resource).collect(),
                left_behind: cleanup
                    .left_behind
                    .iter()
                    .map(|(r, _)| resource(r))
                    .collect(),
            });
        }
        error
    }
}
