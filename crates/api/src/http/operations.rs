//! `GET /operations/{id}`: where a founding is, for a client that did not wait for it.

use actix_web::{HttpResponse, web};
use plinth_domain::model::OperationId;

use super::AppState;
use super::bodies::OperationBody;
use crate::auth::Caller;
use crate::problem::{ApiError, Problem, repo_error};

/// One of the organization's operations (another organization's is not found): its state, the
/// step it is at, and its problem once it failed.
#[utoipa::path(get, path = "/operations/{id}", tag = "operations",
    params(("id" = String, Path, format = Uuid, description = "Operation id")),
    responses((status = 200, body = OperationBody),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get_operation(
    caller: Caller,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let not_found = || ApiError::not_found(format!("no operation {id} in your organization"));
    let operation = OperationId::parse(&id).map_err(|_| not_found())?;
    let record = state
        .operations
        .operation(operation)
        .await
        .map_err(|e| repo_error(&e))?
        .filter(|record| record.org == caller.org)
        .ok_or_else(not_found)?;
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(OperationBody::from(&record)))
}
