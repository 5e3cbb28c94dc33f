//! Authentication end to end: which tokens plinth accepts (ES256 from a PEM key, RS256 from a
//! JWKS) and every kind it refuses, each with 401 and `WWW-Authenticate: Bearer`.

use crate::support::{Claims, Options, Stack, now};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit as _, Mac as _};
use reqwest::StatusCode;
use serde_json::json;

/// A token with `alg: none` and no signature.
fn unsigned(claims: &Claims) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
    format!("{header}.{body}.")
}

/// HS256 "signed" with the server's public key as the HMAC secret: the classic key confusion.
fn hs256_with_public_key(claims: &Claims, public_pem: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
    let input = format!("{header}.{body}");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(public_pem.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn accepted_tokens_and_refused_ones() {
    let stack = Stack::start(Options::default()).await;

    // Accepted: ES256 (PEM key), RS256 (JWKS key, by kid and without).
    for token in [
        stack.token("org-a"),
        stack.rs256(&Claims::valid("org-a"), Some("rsa-1")),
        stack.rs256(&Claims::valid("org-a"), None),
    ] {
        let (status, _, body) = stack.get("/clusters", Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    let foreign = {
        let other = p256::ecdsa::SigningKey::from_slice(&rand::random::<[u8; 32]>()).unwrap();
        use p256::pkcs8::EncodePrivateKey as _;
        let pem = other.to_pkcs8_pem(pkcs8::LineEnding::LF).unwrap();
        let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
            &Claims::valid("org-a"),
            &key,
        )
        .unwrap()
    };
    let bend = |f: &dyn Fn(&mut Claims)| {
        let mut claims = Claims::valid("org-a");
        f(&mut claims);
        claims
    };
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing", None, "bearer token is required"),
        (
            "not a JWT",
            Some("not.a.jwt".into()),
            "not a well-formed JWT",
        ),
        (
            "expired",
            Some(stack.es256(&bend(&|c| c.exp = Some(now() - 3600)))),
            "expired",
        ),
        (
            "not yet valid",
            Some(stack.es256(&bend(&|c| c.nbf = Some(now() + 3600)))),
            "not valid yet",
        ),
        (
            "no exp",
            Some(stack.es256(&bend(&|c| c.exp = None))),
            "no exp claim",
        ),
        (
            "wrong issuer",
            Some(stack.es256(&bend(&|c| c.iss = Some("https://evil.test".into())))),
            "issuer",
        ),
        (
            "wrong audience",
            Some(stack.es256(&bend(&|c| c.aud = Some("someone-else".into())))),
            "audience",
        ),
        (
            "no org_id",
            Some(stack.es256(&bend(&|c| c.org_id = None))),
            "no org_id",
        ),
        (
            "bad org_id",
            Some(stack.es256(&bend(&|c| c.org_id = Some("a/b".into())))),
            "org_id is invalid",
        ),
        (
            "alg none",
            Some(unsigned(&Claims::valid("org-a"))),
            "not a well-formed JWT, or its algorithm is not accepted",
        ),
        (
            "HS256 with the public key",
            Some(hs256_with_public_key(
                &Claims::valid("org-a"),
                &stack.keys.es256_public_pem,
            )),
            "HS256",
        ),
        ("signed by a foreign key", Some(foreign), "signature"),
        (
            "unknown kid",
            Some(stack.rs256(&Claims::valid("org-a"), Some("rsa-9"))),
            "no configured key",
        ),
    ];
    for (label, token, reason) in cases {
        let (status, headers, problem) = stack.get("/clusters", token.as_deref()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{label}: {problem}");
        let challenge = headers["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Bearer"), "{label}: {challenge}");
        assert!(
            problem["detail"].as_str().unwrap().contains(reason),
            "{label}: {problem}"
        );
    }

    // A founding needs a token too, and nothing happens without one.
    let (status, _, _) = stack
        .request(
            reqwest::Method::POST,
            "/clusters",
            None,
            Some("application/json"),
            Some(json!({}).to_string().into_bytes()),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(stack.rows("vms", "true").await, 0);
}
