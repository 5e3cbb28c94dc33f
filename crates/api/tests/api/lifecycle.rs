//! `DELETE /clusters/{id}`, `POST /clusters/{id}/nodes/{node}/bootstrap-token` and certificate
//! expiry in `GET /clusters` and `GET /clusters/{id}`, over the doubles: every status and header.
//! (Against real services: the workspace's `tests/e2e/lifecycle.rs`.)

use actix_web::http::StatusCode;
use actix_web::test::TestRequest;
use plinth_domain::model::{ClusterId, ClusterStatus, NodeName, NodeOrdinal, OperationState};
use plinth_domain::ports::operations::DeletionStart;
use plinth_domain::ports::repo::{ClusterPage, NamedCertificate, RepoError};
use plinth_domain::testing::{cluster_details, earliest_not_after, operation_record};

use crate::support::{Doubles, bearer, send};

fn delete(cluster: ClusterId) -> TestRequest {
    TestRequest::delete()
        .uri(&format!("/clusters/{cluster}"))
        .insert_header(bearer("org-a"))
}

#[actix_web::test]
async fn a_delete_answers_202_with_the_operation_to_poll() {
    let cluster = ClusterId::new_random();
    let mut doubles = Doubles::new();
    doubles
        .operations
        .expect_begin_deletion()
        .times(1)
        .returning(|_| Ok(DeletionStart::Started));
    doubles.operations.expect_operation().returning(|id| {
        let mut running = operation_record("org-a", OperationState::Running, None);
        running.id = id;
        running.kind = plinth_domain::model::OperationKind::Delete;
        Ok(Some(running))
    });
    // The deletion then runs on its own; here the cluster is already gone.
    doubles
        .operations
        .expect_renew_lease()
        .returning(|_, _, _| Ok(()));
    doubles
        .repo
        .expect_find_cluster()
        .returning(|_, _| Ok(None));
    doubles
        .operations
        .expect_finish_deletion()
        .returning(|_| Ok(()));
    let answer = send(&doubles.state(), delete(cluster)).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{:?}", answer.body);
    let body = answer.json();
    assert_eq!(body["kind"], "delete");
    assert_eq!(
        answer.header("location"),
        format!("/operations/{}", body["operation_id"].as_str().unwrap())
    );
}

#[actix_web::test]
async fn deleting_what_is_unknown_or_still_founded_is_refused() {
    for (error, status, kind) in [
        (
            RepoError::NotFound("no such cluster".into()),
            StatusCode::NOT_FOUND,
            "not-found",
        ),
        (
            RepoError::Conflict("the cluster is still being founded".into()),
            StatusCode::CONFLICT,
            "cluster-provisioning",
        ),
    ] {
        let mut doubles = Doubles::new();
        let mut error = Some(error);
        doubles
            .operations
            .expect_begin_deletion()
            .returning(move |_| Err(error.take().unwrap()));
        let answer = send(&doubles.state(), delete(ClusterId::new_random())).await;
        assert_eq!(answer.status, status);
        assert_eq!(answer.problem(), kind);
    }
    let mut doubles = Doubles::new();
    doubles.operations.expect_begin_deletion().never();
    let answer = send(
        &doubles.state(),
        delete(ClusterId::new_random()).insert_header(("Idempotency-Key", "")),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.json()["errors"][0]["field"], "Idempotency-Key");
}

#[actix_web::test]
async fn a_new_bootstrap_token_is_201_not_cached_and_404_for_what_the_org_does_not_have() {
    let cluster = ClusterId::new_random();
    let node = NodeName::new(cluster, NodeOrdinal::new(1).unwrap());
    let mut doubles = Doubles::new();
    let known = node.clone();
    doubles
        .repo
        .expect_replace_bootstrap_token()
        .returning(move |org, id, name, _, _| {
            Ok(org.as_str() == "org-a" && id == cluster && *name == known)
        });
    let state = doubles.state();
    let post = |org: &str, node: &str| {
        TestRequest::post()
            .uri(&format!("/clusters/{cluster}/nodes/{node}/bootstrap-token"))
            .insert_header(bearer(org))
    };
    let answer = send(&state, post("org-a", node.as_str())).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
    assert_eq!(answer.header("cache-control"), "no-store");
    let body = answer.json();
    let token = body["token"].as_str().unwrap();
    assert!(body["user_data"].as_str().unwrap().contains(token));
    for (org, node) in [("org-b", node.as_str()), ("org-a", "cp-9.elsewhere")] {
        let answer = send(&state, post(org, node)).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{org} {node}");
    }
}

#[actix_web::test]
async fn a_cluster_reports_each_certificates_expiry_and_the_earliest() {
    let cluster = ClusterId::new_random();
    let mut doubles = Doubles::new();
    doubles.repo.expect_find_cluster().returning(move |_, _| {
        Ok(Some(cluster_details(
            "org-a",
            cluster,
            ClusterStatus::Ready,
        )))
    });
    doubles
        .repo
        .expect_cluster_certificates()
        .returning(|_, _| {
            Ok(Some(vec![
                NamedCertificate {
                    name: "ca".into(),
                    cert_pem: "cert of ca".into(),
                },
                NamedCertificate {
                    name: "cp-1/kubelet".into(),
                    cert_pem: "cert of kubelet".into(),
                },
            ]))
        });
    doubles
        .pki
        .expect_certificate_facts()
        .returning(plinth_domain::testing::certificate_facts);
    let request = TestRequest::get()
        .uri(&format!("/clusters/{cluster}"))
        .insert_header(bearer("org-a"));
    let answer = send(&doubles.state(), request).await;
    assert_eq!(answer.status, StatusCode::OK);
    let certificates = &answer.json()["certificates"];
    let earliest = earliest_not_after()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert_eq!(certificates["earliest_not_after"], earliest);
    assert_eq!(certificates["certificates"][1]["name"], "cp-1/kubelet");
    assert_eq!(certificates["certificates"][1]["not_after"], earliest);
}

#[actix_web::test]
async fn expiring_before_reaches_the_listing_and_a_bad_one_is_400() {
    let mut doubles = Doubles::new();
    doubles
        .repo
        .expect_list_clusters()
        .withf(|_, page| {
            page.expiring_before
                == Some(time::OffsetDateTime::from_unix_timestamp(1_893_456_000).unwrap())
        })
        .times(1)
        .returning(|_, _| {
            Ok(ClusterPage {
                clusters: Vec::new(),
                next: None,
            })
        });
    let state = doubles.state();
    let list = |query: &str| {
        TestRequest::get()
            .uri(&format!("/clusters?{query}"))
            .insert_header(bearer("org-a"))
    };
    let answer = send(&state, list("expiring_before=2030-01-01T00:00:00Z")).await;
    assert_eq!(answer.status, StatusCode::OK);
    let answer = send(&state, list("expiring_before=next-week")).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.json()["errors"][0]["field"], "expiring_before");
}
