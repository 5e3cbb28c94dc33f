//! Bearer-token refusals: all 401 with `WWW-Authenticate: Bearer`, before any port is touched.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::test::TestRequest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::support::{AUDIENCE, Doubles, ISSUER, send, token, token_claims, token_with};

async fn refused(authorization: Option<String>) -> String {
    let mut request = TestRequest::get().uri("/clusters");
    if let Some(value) = authorization {
        request = request.insert_header(("Authorization", value));
    }
    let answer = send(&Doubles::new().state(), request).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{:?}", answer.body);
    assert_eq!(answer.problem(), "unauthorized");
    assert!(answer.header("www-authenticate").starts_with("Bearer"));
    answer.json()["detail"].as_str().unwrap().to_owned()
}

#[actix_web::test]
async fn no_token_is_401_asking_for_one() {
    assert!(refused(None).await.contains("bearer token is required"));
}

#[actix_web::test]
async fn a_header_that_is_not_bearer_is_401() {
    let basic = format!("Basic {}", URL_SAFE_NO_PAD.encode("u:p"));
    assert!(refused(Some(basic)).await.contains("Bearer <JWT>"));
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[actix_web::test]
async fn an_expired_token_is_401() {
    let expired = token_claims(&serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "org_id": "org-a", "exp": now() - 60
    }));
    assert!(
        refused(Some(format!("Bearer {expired}")))
            .await
            .contains("expired")
    );
}

#[actix_web::test]
async fn a_token_without_an_organization_is_401() {
    let orgless = token_claims(&serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "someone", "exp": now() + 60
    }));
    assert!(
        refused(Some(format!("Bearer {orgless}")))
            .await
            .contains("org_id")
    );
}

#[actix_web::test]
async fn a_foreign_issuer_or_audience_is_401() {
    let other_issuer = token_with(
        "org-a",
        "https://evil.test",
        AUDIENCE,
        Duration::from_secs(60),
    );
    assert!(
        refused(Some(format!("Bearer {other_issuer}")))
            .await
            .contains("issuer")
    );
    let other_audience = token_with("org-a", ISSUER, "kubernetes", Duration::from_secs(60));
    assert!(
        refused(Some(format!("Bearer {other_audience}")))
            .await
            .contains("audience")
    );
}

#[actix_web::test]
async fn a_tampered_signature_is_401() {
    let mut parts: Vec<String> = token("org-a").split('.').map(str::to_owned).collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    claims["org_id"] = "org-b".into();
    parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
    assert!(
        refused(Some(format!("Bearer {}", parts.join("."))))
            .await
            .contains("signature")
    );
}

#[actix_web::test]
async fn alg_none_and_hs256_are_refused() {
    let claims = URL_SAFE_NO_PAD.encode(
        serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "org_id": "org-a", "exp": 4_000_000_000u64})
            .to_string(),
    );
    for alg in ["none", "HS256"] {
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
        let forged = format!("Bearer {header}.{claims}.");
        refused(Some(forged)).await;
    }
}
