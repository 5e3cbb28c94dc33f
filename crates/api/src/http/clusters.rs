//! `POST /clusters`, `GET /clusters` and `GET /clusters/{id}`.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use plinth_domain::expiry::ExpiryError;
use plinth_domain::model::ClusterId;
use plinth_domain::ports::Chain;
use plinth_domain::ports::repo::PageRequest;
use serde::Deserialize;

use plinth_domain::found_cluster::{FoundedCluster, Replay, Submitted};
use plinth_domain::model::{Idempotency, OperationKind};

use super::bodies::{
    ClusterBody, ClusterPageBody, ClusterSummaryBody, FoundedClusterBody, OperationBody,
};
use super::{AppState, create_body, cursor, idempotency, read_json_body};
use crate::auth::Caller;
use crate::metrics::metrics;
use crate::problem::{ApiError, FieldError, IDEMPOTENT_REPLAYED, Problem, repo_error};

/// How many clusters a page holds when the caller does not say.
const DEFAULT_PAGE: u32 = 20;

/// Found a cluster: its trust root, its control-plane VMs, its node records; answers with the
/// admin kubeconfig. The organization comes from the bearer token. With `Idempotency-Key`, a
/// retry of the same request is answered from the first one; with `Prefer: respond-async`, the
/// answer is the founding's operation as soon as it has claimed its name.
#[utoipa::path(post, path = "/clusters", tag = "clusters", request_body = super::create_body::CreateClusterBody,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters, chosen by the client, kept per organization for `idempotency.retention_hours`. The same key with the same body (key order and white space aside) gets the first request's answer (`Idempotent-Replayed: true`): the same cluster with a newly minted admin kubeconfig, or the same problem."),
        ("Prefer" = Option<String>, Header, description = "`respond-async`: answer 202 with the operation once the founding has claimed its name, and let it run; poll `Location`."),
    ),
    responses(
        (status = 201, description = "Founded (or the replay of a founding that succeeded)", body = FoundedClusterBody, headers(("Location" = String), ("Idempotent-Replayed" = String, description = "`true` on a replay"))),
        (status = 202, description = "`Prefer: respond-async`: the founding runs; poll `Location`", body = OperationBody, headers(("Location" = String, description = "/operations/{id}"), ("Preference-Applied" = String, description = "respond-async"))),
        (status = 400, description = "Every broken rule of the body, and a malformed Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The organization has `limits.max_clusters_per_org` clusters already (`quota-exceeded`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The name is taken in the organization, or a request with this Idempotency-Key is still being processed (`idempotency-in-flight`, Retry-After)", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The compute service refused the request's subnet, groups, flavor or image, or they are not the organization's (or shared); or the Idempotency-Key was first used with another request (`idempotency-key-reused`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "This replica runs as many foundings as it may, or the organization runs `limits.max_foundings_in_flight_per_org` (`too-many-foundings`) (Retry-After)", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "The trust material could not be made", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The compute service failed, or refused plinth's own credentials or lacks a configured default (`compute-misconfigured`); what this request created was deleted", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database failed, the compute service has no capacity left (`capacity-exhausted`), or the founding was interrupted and rolled back (Retry-After)", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The compute service did not answer in time, or the founding outlasted its deadline; what it made was deleted", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn create_cluster(
    caller: Caller,
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let key = idempotency::idempotency_key(&req);
    let body = read_json_body(&req, payload).await?;
    let (request, mut errors) = create_body::parse(&body)?;
    if let Err(refused) = &key {
        errors.insert(0, refused.clone());
    }
    // The domain's rules, for the fields that parsed; a field already reported is not repeated.
    let spec = match request.validate(&state.foundings.settings().defaults) {
        Ok(spec) => Some(spec),
        Err(invalid) => {
            let reported: Vec<String> = errors.iter().map(|e| e.field.clone()).collect();
            errors.extend(
                invalid
                    .0
                    .into_iter()
                    .filter(|v| !reported.contains(&v.field))
                    .map(|v| FieldError::new(v.field, v.message)),
            );
            None
        }
    };
    let Some(spec) = spec.filter(|_| errors.is_empty()) else {
        metrics().outcome("invalid");
        return Err(ApiError::invalid(errors));
    };
    let idempotency = match key {
        Ok(Some(key)) => {
            let parsed: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| ApiError::malformed(format!("the body is not valid JSON: {e}")))?;
            Some(Idempotency {
                key,
                fingerprint: idempotency::fingerprint("POST /clusters", &parsed),
            })
        }
        _ => None,
    };
    let respond_async = idempotency::prefers_async(&req);
    // The founding runs as a task of its own: if this request goes away, it still finishes.
    let submitted = state
        .foundings
        .submit(caller.org.clone(), spec, idempotency)
        .await?;
    match submitted {
        Submitted::Started(started) if respond_async => {
            let operation = state
                .operations
                .operation(started.operation)
                .await
                .ok()
                .flatten();
            let body = operation.as_ref().map_or_else(
                || OperationBody::started(OperationKind::Found, started.operation, started.cluster),
                OperationBody::from,
            );
            Ok(accepted(body, false))
        }
        Submitted::Started(started) => {
            let founded = started.outcome.await.map_err(|e| {
                tracing::error!(error = %e, "a founding task did not finish");
                ApiError::new(
                    actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the founding did not finish",
                )
            })??;
            Ok(founded_response(founded, false))
        }
        Submitted::Replayed(Replay::Founded(founded)) => {
            metrics().outcome("replayed");
            Ok(founded_response(*founded, true))
        }
        Submitted::Replayed(Replay::Failed(problem)) => {
            metrics().outcome("replayed");
            Err(ApiError::from(&problem).replayed())
        }
        Submitted::Replayed(Replay::InFlight(operation)) if respond_async => {
            Ok(accepted(OperationBody::from(&*operation), true))
        }
        Submitted::Replayed(Replay::InFlight(operation)) => Err(ApiError::new(
            actix_web::http::StatusCode::CONFLICT,
            "idempotency-in-flight",
            format!(
                "a request with this Idempotency-Key is still being processed (operation {}); \
                 retry later for its answer",
                operation.id
            ),
        )
        .retry_after(IN_FLIGHT_RETRY_AFTER_SECS)),
    }
}

/// What `Retry-After` says while the first request with a key is still being processed: a
/// founding takes seconds to minutes.
const IN_FLIGHT_RETRY_AFTER_SECS: u64 = 5;

/// 201 with the founded cluster; `Idempotent-Replayed: true` when it answers a retry.
fn founded_response(founded: FoundedCluster, replayed: bool) -> HttpResponse {
    let location = format!("/clusters/{}", founded.cluster_id);
    let mut response = HttpResponse::Created();
    response
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"));
    if replayed {
        response.insert_header((IDEMPOTENT_REPLAYED, "true"));
    }
    response.json(FoundedClusterBody::from(founded))
}

/// 202 with the founding's operation, to poll at `Location`.
fn accepted(operation: OperationBody, replayed: bool) -> HttpResponse {
    let mut response = HttpResponse::Accepted();
    response
        .insert_header((
            header::LOCATION,
            format!("/operations/{}", operation.operation_id),
        ))
        .insert_header(("Preference-Applied", "respond-async"));
    if replayed {
        response.insert_header((IDEMPOTENT_REPLAYED, "true"));
    }
    response.json(operation)
}

/// Query of `GET /clusters`. Both are read as text so that a bad value is reported by name.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// How many clusters, 1 to 100; default 20.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    cursor: Option<String>,
    /// RFC 3339: only clusters with a certificate expiring before then (pass it again with
    /// `cursor` for the next page).
    #[param(value_type = Option<String>, format = DateTime)]
    expiring_before: Option<String>,
}

impl ListQuery {
    fn page(&self) -> Result<PageRequest, ApiError> {
        let mut errors = Vec::new();
        let limit = match self.limit.as_deref() {
            None => DEFAULT_PAGE,
            Some(raw) => match raw.parse::<u32>() {
                Ok(n @ 1..=100) => n,
                _ => {
                    errors.push(FieldError::new("limit", "must be an integer from 1 to 100"));
                    DEFAULT_PAGE
                }
            },
        };
        let after = self.cursor.as_deref().and_then(|raw| {
            let decoded = cursor::decode(raw);
            if decoded.is_none() {
                errors.push(FieldError::new(
                    "cursor",
                    "is not a cursor this API handed out",
                ));
            }
            decoded
        });
        let expiring_before = self.expiring_before.as_deref().and_then(|raw| {
            let parsed =
                time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339);
            if parsed.is_err() {
                errors.push(FieldError::new(
                    "expiring_before",
                    "is not an RFC 3339 time, e.g. 2027-01-31T00:00:00Z",
                ));
            }
            parsed.ok()
        });
        if errors.is_empty() {
            Ok(PageRequest {
                limit,
                after,
                expiring_before,
            })
        } else {
            Err(ApiError::invalid(errors))
        }
    }
}

/// The organization's clusters, newest first, a page at a time.
#[utoipa::path(get, path = "/clusters", tag = "clusters", params(ListQuery),
    responses((status = 200, body = ClusterPageBody),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list_clusters(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = query.page()?;
    let page = state
        .repo
        .list_clusters(&caller.org, &page)
        .await
        .map_err(|e| repo_error(&e))?;
    Ok(HttpResponse::Ok().json(ClusterPageBody {
        clusters: page.clusters.iter().map(ClusterSummaryBody::from).collect(),
        next_cursor: page.next.as_ref().map(cursor::encode),
    }))
}

/// One of the organization's clusters (another organization's is not found), with when each of
/// its certificates expires.
#[utoipa::path(get, path = "/clusters/{id}", tag = "clusters",
    params(("id" = String, Path, format = Uuid, description = "Cluster id")),
    responses((status = 200, body = ClusterBody),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get_cluster(
    caller: Caller,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let not_found = || ApiError::not_found(format!("no cluster {id} in your organization"));
    let cluster = ClusterId::parse(&id).map_err(|_| not_found())?;
    let details = state
        .repo
        .find_cluster(&caller.org, cluster)
        .await
        .map_err(|e| repo_error(&e))?
        .ok_or_else(not_found)?;
    let report = state
        .expiries
        .report(&caller.org, cluster)
        .await
        .map_err(|e| match e {
            ExpiryError::Database(e) => repo_error(&e),
            other => {
                tracing::error!(error = %Chain(&other), "reading a cluster's certificates failed");
                ApiError::new(
                    actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the cluster's certificates cannot be read",
                )
            }
        })?;
    let mut body = ClusterBody::from(details);
    body.certificates = report
        .filter(|r| !r.certificates.is_empty())
        .map(Into::into);
    Ok(HttpResponse::Ok().json(body))
}
