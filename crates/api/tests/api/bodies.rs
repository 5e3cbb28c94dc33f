//! Bad bodies of `POST /clusters`: each answered with a problem, and no port touched (the
//! doubles have no expectations, so any call would panic).

use actix_web::http::StatusCode;
use actix_web::test::TestRequest;

use crate::support::{Doubles, bearer, post_cluster, send};

async fn refuse(request: TestRequest) -> (StatusCode, String, serde_json::Value) {
    let answer = send(&Doubles::new().state(), request).await;
    let problem = answer.problem();
    (answer.status, problem, answer.json())
}

fn fields(problem: &serde_json::Value) -> Vec<&str> {
    problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect()
}

#[actix_web::test]
async fn every_broken_rule_is_listed_at_once() {
    let (status, kind, problem) = refuse(post_cluster(
        r#"{"name":"Not A Label","control_plane_count":4,"security_group_ids":["sg-1","sg-1"]}"#,
    ))
    .await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::BAD_REQUEST, "invalid-request")
    );
    assert_eq!(
        fields(&problem),
        ["name", "control_plane_count", "security_group_ids[1]"]
    );
}

#[actix_web::test]
async fn unknown_mistyped_and_domain_rules_are_reported_together() {
    let (status, _, problem) = refuse(post_cluster(
        r#"{"colour":"red","control_plane_count":"3","name":"-bad-"}"#,
    ))
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(fields(&problem), ["colour", "control_plane_count", "name"]);
}

#[actix_web::test]
async fn an_org_id_in_the_body_is_refused_with_a_reason() {
    let (status, _, problem) = refuse(post_cluster(r#"{"org_id":"org-b"}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(fields(&problem), ["org_id"]);
    assert!(
        problem["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("token")
    );
}

#[actix_web::test]
async fn a_body_that_is_not_json_is_400_malformed() {
    let (status, kind, _) = refuse(post_cluster("{\"name\":")).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::BAD_REQUEST, "malformed-request")
    );
}

#[actix_web::test]
async fn a_body_that_is_not_an_object_is_400() {
    let (status, _, problem) = refuse(post_cluster("[1, 2]")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(fields(&problem), ["(body)"]);
}

#[actix_web::test]
async fn another_content_type_is_415() {
    let request = TestRequest::post()
        .uri("/clusters")
        .insert_header(bearer("org-a"))
        .insert_header(("Content-Type", "text/plain"))
        .set_payload("{}");
    let (status, kind, _) = refuse(request).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type")
    );
}

#[actix_web::test]
async fn a_body_over_64_kib_is_413() {
    let big = format!(r#"{{"name":"{}"}}"#, "a".repeat(70 * 1024));
    let (status, kind, _) = refuse(post_cluster(&big)).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large")
    );
}

#[actix_web::test]
async fn a_bad_page_query_names_each_parameter() {
    let request = TestRequest::get()
        .uri("/clusters?limit=0&cursor=not-a-cursor")
        .insert_header(bearer("org-a"));
    let (status, kind, problem) = refuse(request).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::BAD_REQUEST, "invalid-request")
    );
    assert_eq!(fields(&problem), ["limit", "cursor"]);
}
