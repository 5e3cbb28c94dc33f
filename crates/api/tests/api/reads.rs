//! `GET /clusters` and `GET /clusters/{id}`: organization scope and repository failures.

use actix_web::http::StatusCode;
use actix_web::test::TestRequest;
use plinth_domain::model::ClusterId;
use plinth_domain::ports::repo::{ClusterPage, RepoError};

use crate::support::{Doubles, bearer, send};

#[actix_web::test]
async fn a_listing_asks_for_the_callers_organization_only() {
    let mut doubles = Doubles::new();
    doubles
        .repo
        .expect_list_clusters()
        .withf(|org, page| org.as_str() == "org-a" && page.limit == 7 && page.after.is_none())
        .times(1)
        .returning(|_, _| {
            Ok(ClusterPage {
                clusters: Vec::new(),
                next: None,
            })
        });
    let request = TestRequest::get()
        .uri("/clusters?limit=7")
        .insert_header(bearer("org-a"));
    let answer = send(&doubles.state(), request).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.json(),
        serde_json::json!({"clusters": [], "next_cursor": null})
    );
}

#[actix_web::test]
async fn an_unavailable_database_is_503_and_a_broken_one_500() {
    for (error, status, kind) in [
        (
            RepoError::Unavailable("refused".into()),
            StatusCode::SERVICE_UNAVAILABLE,
            "database-unavailable",
        ),
        (
            RepoError::Unexpected("corrupt row".into()),
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
        ),
    ] {
        let mut doubles = Doubles::new();
        let mut error = Some(error);
        doubles
            .repo
            .expect_list_clusters()
            .returning(move |_, _| Err(error.take().unwrap()));
        let request = TestRequest::get()
            .uri("/clusters")
            .insert_header(bearer("org-a"));
        let answer = send(&doubles.state(), request).await;
        assert_eq!(answer.status, status);
        assert_eq!(answer.problem(), kind);
        assert!(!String::from_utf8_lossy(&answer.body).contains("corrupt row"));
    }
}

#[actix_web::test]
async fn another_organizations_cluster_is_404() {
    let id = ClusterId::new_random();
    let mut doubles = Doubles::new();
    doubles
        .repo
        .expect_find_cluster()
        .withf(move |org, asked| org.as_str() == "org-b" && *asked == id)
        .returning(|_, _| Ok(None));
    let request = TestRequest::get()
        .uri(&format!("/clusters/{id}"))
        .insert_header(bearer("org-b"));
    let answer = send(&doubles.state(), request).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.problem(), "not-found");
}

#[actix_web::test]
async fn an_id_that_is_not_a_uuid_is_404_without_a_query() {
    let request = TestRequest::get()
        .uri("/clusters/not-a-uuid")
        .insert_header(bearer("org-a"));
    let answer = send(&Doubles::new().state(), request).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.problem(), "not-found");
}
