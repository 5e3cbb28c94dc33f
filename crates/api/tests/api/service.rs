//! What every deployment serves: health, readiness, metrics, the OpenAPI document, request ids,
//! and problems for unknown routes and methods.

use actix_web::http::StatusCode;
use actix_web::test::TestRequest;
use plinth_domain::ports::repo::RepoError;

use crate::support::{Doubles, bearer, send};

#[actix_web::test]
async fn healthz_needs_nothing() {
    let answer = send(&Doubles::new().state(), TestRequest::get().uri("/healthz")).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[actix_web::test]
async fn readyz_follows_the_database() {
    let mut up = Doubles::new();
    up.repo.expect_ping().times(1).returning(|| Ok(()));
    let answer = send(&up.state(), TestRequest::get().uri("/readyz")).await;
    assert_eq!(answer.status, StatusCode::OK);

    let mut down = Doubles::new();
    down.repo
        .expect_ping()
        .returning(|| Err(RepoError::Unavailable("refused".into())));
    let answer = send(&down.state(), TestRequest::get().uri("/readyz")).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.problem(), "database-unavailable");
}

#[actix_web::test]
async fn metrics_are_prometheus_text_with_todays_names() {
    let state = Doubles::new().state();
    send(&state, TestRequest::get().uri("/healthz")).await;
    let answer = send(&state, TestRequest::get().uri("/metrics")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.header("content-type"),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = String::from_utf8_lossy(&answer.body);
    assert!(
        text.contains("# TYPE plinth_http_requests_total counter"),
        "{text}"
    );
    assert!(text.contains("# TYPE plinth_http_request_duration_seconds histogram"));
    assert!(
        text.contains(r#"plinth_http_requests_total{method="GET",route="/healthz",status="200"}"#),
        "{text}"
    );
}

#[actix_web::test]
async fn an_unknown_route_is_a_404_problem_and_a_wrong_method_a_405() {
    let state = Doubles::new().state();
    let answer = send(&state, TestRequest::get().uri("/nothing-here")).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.problem(), "not-found");
    let answer = send(
        &state,
        TestRequest::delete()
            .uri("/clusters")
            .insert_header(bearer("org-a")),
    )
    .await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(answer.problem(), "method-not-allowed");
}

#[actix_web::test]
async fn a_request_id_is_echoed_or_made() {
    let state = Doubles::new().state();
    let answer = send(
        &state,
        TestRequest::get()
            .uri("/healthz")
            .insert_header(("X-Request-Id", "abc-123")),
    )
    .await;
    assert_eq!(answer.header("x-request-id"), "abc-123");
    let answer = send(
        &state,
        TestRequest::get()
            .uri("/healthz")
            .insert_header(("X-Request-Id", "bad id\twith tab")),
    )
    .await;
    assert_eq!(answer.header("x-request-id").len(), 36, "a fresh UUID");
}
