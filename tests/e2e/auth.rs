//! Authentication end to end: which tokens plinth accepts (ES256 from a PEM key, RS256 from a
//! JWKS) and every kind it refuses, each with 401 and `WWW-Authenticate: Bearer`; and keys
//! rotated at the identity provider (a JWKS URL, served here by a loopback server) and in the
//! JWKS file while plinth runs.

use std::time::{Duration, Instant};

use crate::support::{AUDIENCE, Claims, ISSUER, Options, Stack, now};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit as _, Mac as _};
use plinth_testkit::http_stub::{Answer, StubServer};
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

/// A P-256 key of the identity provider, published in a JWKS by `kid`.
struct IdpKey {
    kid: String,
    private_pem: String,
    x: String,
    y: String,
}

impl IdpKey {
    fn new(kid: &str) -> Self {
        use p256::pkcs8::EncodePrivateKey as _;
        let key = p256::ecdsa::SigningKey::from_slice(&rand::random::<[u8; 32]>()).unwrap();
        let point = key.verifying_key().to_sec1_point(false);
        let bytes = point.as_bytes();
        Self {
            kid: kid.into(),
            private_pem: key.to_pkcs8_pem(pkcs8::LineEnding::LF).unwrap().to_string(),
            x: URL_SAFE_NO_PAD.encode(&bytes[1..33]),
            y: URL_SAFE_NO_PAD.encode(&bytes[33..65]),
        }
    }

    /// Its JWK (`use: sig`, `alg: ES256`), with `extra`'s members over those.
    fn jwk_with(&self, extra: serde_json::Value) -> serde_json::Value {
        let mut jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig", "alg": "ES256",
            "x": self.x, "y": self.y,
        });
        for (name, value) in extra.as_object().unwrap() {
            jwk[name] = value.clone();
        }
        jwk
    }

    fn jwk(&self) -> serde_json::Value {
        self.jwk_with(json!({}))
    }

    fn sign(&self, claims: &impl serde::Serialize) -> String {
        let key = jsonwebtoken::EncodingKey::from_ec_pem(self.private_pem.as_bytes()).unwrap();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    fn token(&self) -> String {
        self.sign(&Claims::valid("org-a"))
    }
}

fn jwks(keys: &[serde_json::Value]) -> String {
    json!({ "keys": keys }).to_string()
}

/// `200 OK` with `body`.
fn ok(body: String) -> Answer {
    Answer::Body(200, body)
}

/// Why an ES256 token whose key plinth does not have is refused: the stack's PEM key has no kid,
/// so it is tried for every ES256 token.
const NOT_VERIFIED: &str = "signature does not verify";

/// The status of `GET /clusters` with `token`, and the problem's detail when refused.
async fn status_of(stack: &Stack, token: &str) -> (StatusCode, String) {
    let (status, _, body) = stack.get("/clusters", Some(token)).await;
    let detail = body["detail"].as_str().unwrap_or_default().to_owned();
    (status, detail)
}

async fn accepted(stack: &Stack, token: &str) {
    let (status, detail) = status_of(stack, token).await;
    assert_eq!(status, StatusCode::OK, "{detail}");
}

async fn refused(stack: &Stack, token: &str, why: &str) {
    let (status, detail) = status_of(stack, token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{detail}");
    assert!(detail.contains(why), "{detail}");
}

/// Waits (at most 10 s) until `token` is accepted; how long that took.
async fn eventually_accepted(stack: &Stack, token: &str) -> Duration {
    let start = Instant::now();
    loop {
        let (status, detail) = status_of(stack, token).await;
        if status == StatusCode::OK {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still refused after 10 s: {detail}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Replaces the stack's JWKS file at once.
fn replace_jwks_file(stack: &Stack, text: &str) {
    let next = stack.scratch("jwks.json.next", text);
    std::fs::rename(&next, next.with_file_name("jwks.json")).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_rotated_at_the_idp_and_in_the_file_work_without_a_restart() {
    let (first, second) = (IdpKey::new("idp-2025-01"), IdpKey::new("idp-2025-02"));
    let (encryption, es384) = (IdpKey::new("idp-enc"), IdpKey::new("idp-es384"));
    let idp = StubServer::start(ok(jwks(&[
        first.jwk(),
        encryption.jwk_with(json!({"use": "enc"})),
        es384.jwk_with(json!({"alg": "ES384"})),
    ])));
    // Only the schedule refreshes here: unknown kids would, at most once an hour.
    let stack = Stack::start(Options {
        auth: format!(
            "jwks_url = \"{}\"\njwks_refresh_secs = 1\n\
             jwks_min_refresh_interval_secs = 3600\nmax_token_lifetime_secs = 3600\n",
            idp.url()
        ),
        ..Options::default()
    })
    .await;

    // Every source at once: the URL, the file (RS256 rsa-1) and the PEM key.
    accepted(&stack, &first.token()).await;
    accepted(&stack, &stack.rs256(&Claims::valid("org-a"), Some("rsa-1"))).await;
    accepted(&stack, &stack.token("org-a")).await;
    // Keys not meant for signatures, or for another algorithm, are not used. (An ES256 token
    // naming a kid no key has is still tried against the kid-less PEM key, in vain.)
    refused(&stack, &encryption.token(), NOT_VERIFIED).await;
    refused(&stack, &es384.token(), NOT_VERIFIED).await;

    // The lifetime cap.
    let mut long = Claims::valid("org-a");
    long.exp = Some(long.iat + 3601);
    refused(&stack, &first.sign(&long), "lifetime").await;
    let mut just = Claims::valid("org-a");
    just.exp = Some(just.iat + 3600);
    accepted(&stack, &first.sign(&just)).await;
    let iatless = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "e2e", "org_id": "org-a", "exp": now() + 60
    });
    refused(&stack, &first.sign(&iatless), "no iat claim").await;

    // The IdP rotates: the new key is used within the refresh interval, the old one refused.
    idp.set(ok(jwks(&[second.jwk()])));
    let took = eventually_accepted(&stack, &second.token()).await;
    assert!(took < Duration::from_secs(4), "took {took:?}");
    refused(&stack, &first.token(), NOT_VERIFIED).await;

    // The file rotates too.
    let file_key = IdpKey::new("file-2");
    replace_jwks_file(&stack, &jwks(&[file_key.jwk()]));
    let took = eventually_accepted(&stack, &file_key.token()).await;
    assert!(took < Duration::from_secs(4), "took {took:?}");
    refused(
        &stack,
        &stack.rs256(&Claims::valid("org-a"), Some("rsa-1")),
        "no configured key",
    )
    .await;

    // The IdP failing keeps the last good keys: errors, garbage, an empty set, then no server.
    for (status, body) in [
        (500, "{}".to_owned()),
        (200, "<html>maintenance</html>".to_owned()),
        (200, jwks(&[])),
    ] {
        idp.set(Answer::Body(status, body));
        idp.await_hits(2).await;
        accepted(&stack, &second.token()).await;
        accepted(&stack, &file_key.token()).await;
    }
    drop(idp);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    accepted(&stack, &second.token()).await;
    refused(&stack, &first.token(), NOT_VERIFIED).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_kid_refreshes_the_keys_at_most_once_per_interval() {
    let (first, second) = (IdpKey::new("k1"), IdpKey::new("k2"));
    let idp = StubServer::start(ok(jwks(&[first.jwk()])));
    // No scheduled refresh during the test: only unknown kids refresh.
    let stack = Stack::start(Options {
        auth: format!(
            "jwks_url = \"{}\"\njwks_refresh_secs = 3600\njwks_min_refresh_interval_secs = 2\n",
            idp.url()
        ),
        ..Options::default()
    })
    .await;
    assert_eq!(idp.hits(), 1, "fetched once at start");
    accepted(&stack, &first.token()).await;

    // The IdP publishes a key plinth has not seen; its first token makes plinth fetch, and is
    // accepted at once.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    idp.set(ok(jwks(&[first.jwk(), second.jwk()])));
    accepted(&stack, &second.token()).await;
    assert_eq!(idp.hits(), 2);
    let fetched = Instant::now();

    // Unknown kids within the interval fetch nothing more.
    for i in 0..10 {
        let stranger = IdpKey::new(&format!("unknown-{i}"));
        refused(&stack, &stranger.token(), NOT_VERIFIED).await;
    }
    assert!(fetched.elapsed() < Duration::from_secs(2));
    assert_eq!(idp.hits(), 2);

    // After it, one more.
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(fetched.elapsed())).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..5 {
        let stranger = IdpKey::new(&format!("later-{i}"));
        refused(&stack, &stranger.token(), NOT_VERIFIED).await;
    }
    assert_eq!(idp.hits(), 3);
}
