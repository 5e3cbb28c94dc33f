//! `Idempotency-Key`, `Prefer: respond-async`, `GET /operations/{id}` and
//! `POST /clusters/{id}/credentials` over the doubles: what each outcome answers, header for
//! header. (The same against real PostgreSQL, compute and openssl is in the workspace's `tests/`.)

use actix_web::http::StatusCode;
use actix_web::test::TestRequest;
use plinth_domain::model::{OperationState, RequestFingerprint};
use plinth_domain::ports::operations::{IdempotentOperation, OperationProblem, OperationRecord};
use plinth_domain::testing::operation_record;
use time::OffsetDateTime;

use crate::support::{Doubles, Fail, bearer, founding, post_cluster, send};

/// Doubles whose key lookup answers `first` as begun with the body `first_body`.
fn known_key(first: OperationRecord, first_body: &str) -> Doubles {
    let mut doubles = Doubles::new();
    let value: serde_json::Value = serde_json::from_str(first_body).unwrap();
    // The fingerprint the service makes: SHA-256 of the route and the canonical body.
    let canonical = serde_json::to_string(&value).unwrap();
    let fingerprint = RequestFingerprint::of("POST /clusters", canonical.as_bytes());
    doubles
        .operations
        .expect_idempotent_operation()
        .withf(|org, key| org.as_str() == "org-a" && key.as_str() == "key-1")
        .times(1)
        .returning(move |_, _| {
            Ok(Some(IdempotentOperation {
                fingerprint: fingerprint.clone(),
                operation: first.clone(),
            }))
        });
    doubles.operations.expect_begin_founding().never();
    doubles
}

fn with_key(request: TestRequest, key: &str) -> TestRequest {
    request.insert_header(("Idempotency-Key", key))
}

#[actix_web::test]
async fn a_malformed_key_is_a_400_naming_the_header_and_starts_nothing() {
    for key in ["", "has space", &"k".repeat(256), "tab\tkey"] {
        let mut doubles = Doubles::new();
        doubles.operations.expect_idempotent_operation().never();
        doubles.operations.expect_begin_founding().never();
        let answer = send(&doubles.state(), with_key(post_cluster("{}"), key)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{key:?}");
        assert_eq!(answer.problem(), "invalid-request");
        assert_eq!(
            answer.json()["errors"][0]["field"],
            "Idempotency-Key",
            "{key:?}"
        );
    }
}

#[actix_web::test]
async fn the_same_key_with_another_body_is_422_key_reused() {
    let first = operation_record("org-a", OperationState::Succeeded, None);
    let doubles = known_key(first, r#"{"name":"prod"}"#);
    let answer = send(
        &doubles.state(),
        with_key(post_cluster(r#"{"name":"staging"}"#), "key-1"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.problem(), "idempotency-key-reused");
}

#[actix_web::test]
async fn a_retry_of_a_failed_founding_gets_its_status_and_problem_marked_replayed() {
    let problem = OperationProblem {
        kind: "compute-failed".to_owned(),
        step: "create_vms".to_owned(),
        detail: "the compute service answered 503".to_owned(),
        removed: vec!["security_group sg-1".to_owned()],
        left_behind: vec![],
    };
    let first = operation_record("org-a", OperationState::Failed, Some(problem));
    // Key order and white space do not make another request.
    let doubles = known_key(first, r#"{"name":"prod","control_plane_count":3}"#);
    let answer = send(
        &doubles.state(),
        with_key(
            post_cluster("{ \"control_plane_count\": 3,\n \"name\": \"prod\" }"),
            "key-1",
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.problem(), "compute-failed");
    assert_eq!(answer.header("idempotent-replayed"), "true");
    assert_eq!(
        answer.json()["cleanup"]["removed"][0],
        "security_group sg-1"
    );
}

#[actix_web::test]
async fn a_retry_while_the_first_runs_is_409_in_flight_or_202_when_async() {
    let first = operation_record("org-a", OperationState::Running, None);
    let id = first.id;
    let answer = send(
        &known_key(first.clone(), "{}").state(),
        with_key(post_cluster("{}"), "key-1"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert_eq!(answer.problem(), "idempotency-in-flight");
    assert_eq!(answer.header("retry-after"), "5");

    let answer = send(
        &known_key(first, "{}").state(),
        with_key(post_cluster("{}"), "key-1").insert_header(("Prefer", "respond-async")),
    )
    .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    assert_eq!(answer.header("location"), format!("/operations/{id}"));
    assert_eq!(answer.header("idempotent-replayed"), "true");
    assert_eq!(answer.json()["state"], "running");
}

#[actix_web::test]
async fn respond_async_answers_202_with_the_operation_once_the_name_is_claimed() {
    let mut doubles = founding(Fail::Nothing, false);
    let stored = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = std::sync::Arc::clone(&stored);
    doubles.operations.expect_operation().returning(move |id| {
        let mut running = operation_record("org-a", OperationState::Running, None);
        running.id = id;
        running.step = "create_trust_root".to_owned();
        *seen.lock().unwrap() = Some(running.clone());
        Ok(Some(running))
    });
    let answer = send(
        &doubles.state(),
        post_cluster("{}").insert_header(("Prefer", "return=minimal, respond-async")),
    )
    .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{:?}", answer.body);
    assert_eq!(answer.header("preference-applied"), "respond-async");
    let body = answer.json();
    let id = body["operation_id"].as_str().unwrap();
    assert_eq!(answer.header("location"), format!("/operations/{id}"));
    assert_eq!(body["kind"], "found");
    assert_eq!(body["state"], "running");
    assert_eq!(body["step"], "create_trust_root");
    assert!(body.get("admin_kubeconfig").is_none());
    assert!(stored.lock().unwrap().is_some());
}

#[actix_web::test]
async fn an_operation_is_shown_to_its_organization_only() {
    let problem = OperationProblem {
        kind: "interrupted".to_owned(),
        step: "create_vms".to_owned(),
        detail: "the replica went away".to_owned(),
        removed: vec!["vm vm-1".to_owned()],
        left_behind: vec![],
    };
    let mut failed = operation_record("org-a", OperationState::Failed, Some(problem));
    failed.ended_at = Some(OffsetDateTime::now_utc());
    let id = failed.id;
    let get = |org: &str, id: &str| {
        TestRequest::get()
            .uri(&format!("/operations/{id}"))
            .insert_header(bearer(org))
    };

    let mut doubles = Doubles::new();
    let shown = failed.clone();
    doubles
        .operations
        .expect_operation()
        .returning(move |_| Ok(Some(shown.clone())));
    let state = doubles.state();
    let answer = send(&state, get("org-a", &id.to_string())).await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    assert_eq!(body["operation_id"], id.to_string());
    assert_eq!(body["state"], "failed");
    assert_eq!(body["cluster_id"], failed.cluster_id.to_string());
    assert!(body["ended_at"].is_string());
    assert_eq!(body["problem"]["status"], 503);
    assert_eq!(
        body["problem"]["type"],
        "https://plinth.dev/problems/interrupted"
    );
    assert_eq!(body["problem"]["cleanup"]["removed"][0], "vm vm-1");

    for (org, id) in [
        ("org-b", id.to_string()),
        ("org-a", "not-a-uuid".to_owned()),
    ] {
        let answer = send(&state, get(org, &id)).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{org} {id}");
        assert_eq!(answer.problem(), "not-found");
    }
}
