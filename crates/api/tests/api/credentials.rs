//! `POST /clusters/{id}/credentials` over the doubles: the body's rules, who gets what, and the
//! answer's shape. (Real certificates checked with openssl and kubectl are in `tests/`.)

use actix_web::http::StatusCode;
use actix_web::test::TestRequest;
use plinth_domain::model::{ClusterId, ClusterStatus};
use plinth_domain::ports::pki::CertificateFacts;
use plinth_domain::testing::{certified, cluster_details};
use serde_json::json;
use time::OffsetDateTime;

use crate::support::{AUDIENCE, Doubles, ISSUER, bearer, send, token_claims};

/// Doubles with `cluster` of org-a in `status`; signing is allowed `signs` times.
fn doubles(cluster: ClusterId, status: ClusterStatus, signs: usize) -> Doubles {
    let mut d = Doubles::new();
    d.repo.expect_find_cluster().returning(move |org, id| {
        Ok((org.as_str() == "org-a" && id == cluster)
            .then(|| cluster_details("org-a", cluster, status)))
    });
    d.repo
        .expect_cluster_root_ca()
        .returning(|_, _| Ok(Some(certified("ca"))));
    d.pki
        .expect_sign_client_cert()
        .times(signs)
        .returning(|_, request| {
            assert_eq!(request.organizations, ["system:masters"]);
            Ok(certified(&format!("client {}", request.common_name)))
        });
    d.pki.expect_certificate_facts().returning(|_| {
        Ok(CertificateFacts {
            serial_hex: "01".to_owned(),
            not_after: OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap(),
        })
    });
    d
}

fn post(cluster: ClusterId, body: Option<&str>) -> TestRequest {
    let request = TestRequest::post()
        .uri(&format!("/clusters/{cluster}/credentials"))
        .insert_header(bearer("org-a"));
    match body {
        Some(body) => request
            .insert_header(("Content-Type", "application/json"))
            .set_payload(body.to_owned()),
        None => request,
    }
}

#[actix_web::test]
async fn a_ready_cluster_gets_a_kubeconfig_that_is_not_cached() {
    let cluster = ClusterId::new_random();
    for body in [None, Some("{}"), Some(r#"{"expiration_seconds":600}"#)] {
        let answer = send(
            &doubles(cluster, ClusterStatus::Ready, 1).state(),
            post(cluster, body),
        )
        .await;
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "{body:?}: {:?}",
            answer.body
        );
        assert_eq!(answer.header("cache-control"), "no-store");
        let json = answer.json();
        assert_eq!(json["expires_at"], "2030-03-17T17:46:40Z");
        let kubeconfig = json["kubeconfig"].as_str().unwrap();
        assert!(kubeconfig.starts_with("apiVersion: v1"), "{kubeconfig}");
    }
}

#[actix_web::test]
async fn an_expiration_out_of_range_or_another_field_is_a_400_naming_it() {
    let cluster = ClusterId::new_random();
    for (body, field) in [
        (r#"{"expiration_seconds":599}"#, "expiration_seconds"),
        (r#"{"expiration_seconds":2592001}"#, "expiration_seconds"),
        (r#"{"expiration_seconds":-1}"#, "expiration_seconds"),
        (r#"{"expiration_seconds":"600"}"#, "expiration_seconds"),
        (r#"{"expiration_seconds":60.5}"#, "expiration_seconds"),
        (r#"{"user":"root"}"#, "user"),
        ("[1]", "(body)"),
    ] {
        let answer = send(
            &doubles(cluster, ClusterStatus::Ready, 0).state(),
            post(cluster, Some(body)),
        )
        .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer.problem(), "invalid-request", "{body}");
        assert_eq!(answer.json()["errors"][0]["field"], field, "{body}");
    }
}

#[actix_web::test]
async fn another_organizations_cluster_is_404_and_a_provisioning_one_409() {
    let cluster = ClusterId::new_random();
    let request = TestRequest::post()
        .uri(&format!("/clusters/{cluster}/credentials"))
        .insert_header(bearer("org-b"));
    let answer = send(&doubles(cluster, ClusterStatus::Ready, 0).state(), request).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.problem(), "not-found");

    let answer = send(
        &doubles(cluster, ClusterStatus::Provisioning, 0).state(),
        post(cluster, None),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert_eq!(answer.problem(), "cluster-not-ready");
}

#[actix_web::test]
async fn a_token_without_a_subject_gets_no_credentials() {
    let cluster = ClusterId::new_random();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let token = token_claims(&json!({
        "iss": ISSUER, "aud": AUDIENCE, "org_id": "org-a", "iat": now, "exp": now + 600,
    }));
    let request = TestRequest::post()
        .uri(&format!("/clusters/{cluster}/credentials"))
        .insert_header(("Authorization", format!("Bearer {token}")));
    let answer = send(&doubles(cluster, ClusterStatus::Ready, 0).state(), request).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(answer.problem(), "unusable-subject");
}
