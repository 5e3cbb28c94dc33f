//! `POST /clusters`, `GET /clusters` and `GET /clusters/{id}`.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use plinth_domain::model::ClusterId;
use plinth_domain::ports::repo::PageRequest;
use serde::Deserialize;

use super::bodies::{ClusterBody, ClusterPageBody, ClusterSummaryBody, FoundedClusterBody};
use super::{AppState, create_body, cursor, read_json_body};
use crate::auth::Caller;
use crate::metrics::metrics;
use crate::problem::{ApiError, FieldError, Problem, repo_error};

/// How many clusters a page holds when the caller does not say.
const DEFAULT_PAGE: u32 = 20;

/// Found a cluster: its trust root, its control-plane VMs, its node records; answers with the
/// admin kubeconfig. The organization comes from the bearer token.
#[utoipa::path(post, path = "/clusters", tag = "clusters", request_body = super::create_body::CreateClusterBody,
    responses(
        (status = 201, description = "Founded", body = FoundedClusterBody, headers(("Location" = String))),
        (status = 400, description = "Every broken rule of the body", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The name is taken in the organization", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The compute service refused the request's subnet, groups, flavor or image", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "This replica runs as many foundings as it may (Retry-After)", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "The trust material could not be made", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The compute service failed; what this request created was deleted", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database failed, or the founding was interrupted and rolled back (Retry-After)", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The compute service did not answer in time, or the founding outlasted its deadline; what it made was deleted", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn create_cluster(
    caller: Caller,
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_json_body(&req, payload).await?;
    let (request, mut errors) = create_body::parse(&body)?;
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
    // The founding runs as a task of its own: if this request goes away, it still finishes.
    let founding = state.foundings.submit(caller.org.clone(), spec)?;
    let founded = founding.await.map_err(|e| {
        tracing::error!(error = %e, "a founding task did not finish");
        ApiError::new(
            actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the founding did not finish",
        )
    })??;
    let location = format!("/clusters/{}", founded.cluster_id);
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(FoundedClusterBody::from(founded)))
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
        if errors.is_empty() {
            Ok(PageRequest { limit, after })
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

/// One of the organization's clusters (another organization's is not found).
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
    Ok(HttpResponse::Ok().json(ClusterBody::from(details)))
}
