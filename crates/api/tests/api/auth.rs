//! Bearer-token refusals: all 401 with `WWW-Authenticate: Bearer`, before any port is touched;
//! and the verification keys: JWKS from a URL (a loopback server here) and a file, refreshed on a
//! schedule and for unknown key ids (rate-limited), keeping the last good keys when a refresh
//! fails; a JWK's `use`, `key_ops` and `alg` honoured; a cap on the tokens' lifetime.

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
        "iss": ISSUER, "aud": AUDIENCE, "sub": "someone", "iat": now(), "exp": now() + 60
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

#[actix_web::test]
async fn a_token_living_longer_than_the_maximum_is_401() {
    // The test app's maximum is the default, one day.
    let long = token_claims(&serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "org_id": "org-a", "iat": now(), "exp": now() + 86_401
    }));
    assert!(
        refused(Some(format!("Bearer {long}")))
            .await
            .contains("lifetime")
    );
    let without_iat = token_claims(&serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "org_id": "org-a", "exp": now() + 60
    }));
    assert!(
        refused(Some(format!("Bearer {without_iat}")))
            .await
            .contains("no iat claim")
    );
    // An iat in the future would stretch any lifetime from now.
    let later = token_claims(&serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "org_id": "org-a", "iat": now() + 3600, "exp": now() + 7200
    }));
    assert!(
        refused(Some(format!("Bearer {later}")))
            .await
            .contains("iat is in the future")
    );
}

mod keys {
    use std::net::TcpListener;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use p256::elliptic_curve::Generate as _;
    use p256::pkcs8::{EncodePrivateKey as _, LineEnding};
    use plinth_api::auth::{AuthSettings, Authenticator};
    use plinth_testkit::http_stub::{Answer, StubServer};
    use serde_json::{Value, json};

    use super::now;
    use crate::support::{AUDIENCE, ISSUER, auth_settings};

    /// A P-256 key of the test's identity provider.
    struct IdpKey {
        kid: &'static str,
        private_pem: String,
        x: String,
        y: String,
    }

    impl IdpKey {
        fn new(kid: &'static str) -> Self {
            let key = p256::ecdsa::SigningKey::generate_from_rng(&mut rand::rng());
            let point = key.verifying_key().to_sec1_point(false);
            let bytes = point.as_bytes();
            Self {
                kid,
                private_pem: key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
                x: URL_SAFE_NO_PAD.encode(&bytes[1..33]),
                y: URL_SAFE_NO_PAD.encode(&bytes[33..65]),
            }
        }

        /// Its JWK, with `use: sig` and `alg: ES256`, then `extra`'s members over those.
        fn jwk_with(&self, extra: &Value) -> Value {
            let mut jwk = json!({
                "kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig", "alg": "ES256",
                "x": self.x, "y": self.y,
            });
            for (name, value) in extra.as_object().unwrap() {
                if value.is_null() {
                    jwk.as_object_mut().unwrap().remove(name);
                } else {
                    jwk[name] = value.clone();
                }
            }
            jwk
        }

        fn jwk(&self) -> Value {
            self.jwk_with(&json!({}))
        }

        /// A valid token of `org-a` signed by this key, naming it by `kid`.
        fn token(&self) -> String {
            self.sign(Some(self.kid), &claims(600))
        }

        fn sign(&self, kid: Option<&str>, claims: &Value) -> String {
            plinth_api::jwt_crypto::install();
            let key = jsonwebtoken::EncodingKey::from_ec_pem(self.private_pem.as_bytes()).unwrap();
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
            header.kid = kid.map(str::to_owned);
            jsonwebtoken::encode(&header, claims, &key).unwrap()
        }
    }

    fn claims(lifetime: u64) -> Value {
        let now = now();
        json!({"iss": ISSUER, "aud": AUDIENCE, "org_id": "org-a", "iat": now, "exp": now + lifetime})
    }

    fn jwks(keys: &[Value]) -> Value {
        json!({ "keys": keys })
    }

    /// `200 OK` with `value`.
    fn json(value: Value) -> Answer {
        Answer::json(&value)
    }

    /// The test app's settings without its PEM key: only the JWKS sources count.
    fn settings(url: Option<String>, file: Option<PathBuf>) -> AuthSettings {
        AuthSettings {
            public_key_files: Vec::new(),
            jwks_url: url,
            jwks_file: file,
            jwks_refresh_secs: 1,
            jwks_min_refresh_interval_secs: 1,
            ..auth_settings()
        }
    }

    fn scratch_file(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "plinth-api-jwks-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    /// Replaces `file` at once (a refresh never reads half of it).
    fn replace(file: &PathBuf, text: &str) {
        let next = file.with_extension("next");
        std::fs::write(&next, text).unwrap();
        std::fs::rename(next, file).unwrap();
    }

    async fn accepted(authenticator: &Authenticator, token: &str) {
        let caller = authenticator.verify(token).await;
        assert_eq!(caller.unwrap().org.as_str(), "org-a");
    }

    async fn refused(authenticator: &Authenticator, token: &str, why: &str) {
        let reason = authenticator.verify(token).await.unwrap_err();
        assert!(reason.contains(why), "{reason}");
    }

    /// Waits (at most 10 s) until `token` is accepted.
    async fn eventually_accepted(authenticator: &Authenticator, token: &str) -> Duration {
        let start = Instant::now();
        loop {
            match authenticator.verify(token).await {
                Ok(_) => return start.elapsed(),
                Err(reason) => assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "still refused after 10 s: {reason}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn a_rotated_jwks_url_is_picked_up_and_the_removed_key_refused() {
        let (old, new) = (IdpKey::new("2024-old"), IdpKey::new("2025-new"));
        let server = StubServer::start(json(jwks(&[old.jwk()])));
        // Only the schedule refreshes here, not unknown kids.
        let authenticator = Authenticator::load(AuthSettings {
            jwks_min_refresh_interval_secs: 3600,
            ..settings(Some(server.url()), None)
        })
        .await
        .unwrap();
        let refresh = authenticator.spawn_refresh();
        accepted(&authenticator, &old.token()).await;

        // Rotation, first stage: both keys published.
        server.set(json(jwks(&[old.jwk(), new.jwk()])));
        let took = eventually_accepted(&authenticator, &new.token()).await;
        assert!(took < Duration::from_secs(3), "took {took:?}");
        accepted(&authenticator, &old.token()).await;

        // Second stage: the old key withdrawn.
        server.set(json(jwks(&[new.jwk()])));
        server.await_hits(2).await;
        refused(&authenticator, &old.token(), "no configured key").await;
        // Without a kid, the old key's token is tried against the keys there are.
        refused(
            &authenticator,
            &old.sign(None, &claims(600)),
            "signature does not verify",
        )
        .await;
        accepted(&authenticator, &new.token()).await;
        refresh.abort();
    }

    #[tokio::test]
    async fn a_rotated_jwks_file_is_picked_up_without_a_restart() {
        let (old, new) = (IdpKey::new("file-1"), IdpKey::new("file-2"));
        let file = scratch_file("jwks.json");
        replace(&file, &jwks(&[old.jwk()]).to_string());
        // Only the schedule refreshes here, not unknown kids.
        let authenticator = Authenticator::new(AuthSettings {
            jwks_min_refresh_interval_secs: 3600,
            ..settings(None, Some(file.clone()))
        })
        .unwrap();
        let refresh = authenticator.spawn_refresh();
        accepted(&authenticator, &old.token()).await;

        replace(&file, &jwks(&[new.jwk()]).to_string());
        let took = eventually_accepted(&authenticator, &new.token()).await;
        assert!(took < Duration::from_secs(3), "took {took:?}");
        refused(&authenticator, &old.token(), "no configured key").await;

        // A file that cannot be read as a JWKS, or holds no usable key, keeps the last keys.
        replace(&file, "{not json");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        accepted(&authenticator, &new.token()).await;
        replace(
            &file,
            &jwks(&[new.jwk_with(&json!({"use": "enc"}))]).to_string(),
        );
        tokio::time::sleep(Duration::from_millis(2500)).await;
        accepted(&authenticator, &new.token()).await;
        std::fs::remove_file(&file).unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        accepted(&authenticator, &new.token()).await;
        refresh.abort();
        let _ = std::fs::remove_dir_all(file.parent().unwrap());
    }

    #[tokio::test]
    async fn a_key_not_meant_for_signatures_is_never_used() {
        let (signing, enc, ops) = (IdpKey::new("sig"), IdpKey::new("enc"), IdpKey::new("ops"));
        let server = StubServer::start(json(jwks(&[
            signing.jwk(),
            enc.jwk_with(&json!({"use": "enc", "alg": null})),
            ops.jwk_with(&json!({"use": null, "key_ops": ["encrypt"]})),
        ])));
        let authenticator = Authenticator::load(settings(Some(server.url()), None))
            .await
            .unwrap();
        accepted(&authenticator, &signing.token()).await;
        for key in [&enc, &ops] {
            refused(&authenticator, &key.token(), "no configured key").await;
            // Without a kid it is tried only against the signing key.
            refused(
                &authenticator,
                &key.sign(None, &claims(600)),
                "signature does not verify",
            )
            .await;
        }
        // The same keys, meant for signatures, are used.
        server.set(json(jwks(&[
            enc.jwk_with(&json!({"use": "sig"})),
            ops.jwk_with(&json!({"use": null, "key_ops": ["verify"]})),
        ])));
        let again = Authenticator::load(settings(Some(server.url()), None))
            .await
            .unwrap();
        accepted(&again, &enc.token()).await;
        accepted(&again, &ops.token()).await;
    }

    #[tokio::test]
    async fn a_key_whose_alg_is_not_the_token_s_is_never_used() {
        let (es256, es384, rs256, absent) = (
            IdpKey::new("es256"),
            IdpKey::new("es384"),
            IdpKey::new("rs256"),
            IdpKey::new("absent"),
        );
        let server = StubServer::start(json(jwks(&[
            es256.jwk(),
            es384.jwk_with(&json!({"alg": "ES384"})),
            rs256.jwk_with(&json!({"alg": "RS256"})),
            absent.jwk_with(&json!({"alg": null})),
        ])));
        let authenticator = Authenticator::load(settings(Some(server.url()), None))
            .await
            .unwrap();
        accepted(&authenticator, &es256.token()).await;
        accepted(&authenticator, &absent.token()).await;
        for key in [&es384, &rs256] {
            refused(&authenticator, &key.token(), "no configured key").await;
            refused(
                &authenticator,
                &key.sign(None, &claims(600)),
                "signature does not verify",
            )
            .await;
        }
    }

    #[tokio::test]
    async fn an_unknown_kid_refreshes_the_keys_at_most_once_per_interval() {
        let (first, second, third) = (IdpKey::new("k1"), IdpKey::new("k2"), IdpKey::new("k3"));
        let server = StubServer::start(json(jwks(&[first.jwk()])));
        // No scheduled refresh: only unknown kids refresh here.
        let authenticator = Authenticator::load(AuthSettings {
            jwks_refresh_secs: 3600,
            jwks_min_refresh_interval_secs: 2,
            ..settings(Some(server.url()), None)
        })
        .await
        .unwrap();
        let loaded = Instant::now();
        assert_eq!(server.hits(), 1);

        // Too soon after the start: no fetch.
        server.set(json(jwks(&[first.jwk(), second.jwk()])));
        refused(&authenticator, &second.token(), "no configured key").await;
        assert_eq!(server.hits(), 1);

        tokio::time::sleep(Duration::from_secs(2).saturating_sub(loaded.elapsed())).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The unknown kid fetches the keys, and is accepted at once.
        accepted(&authenticator, &second.token()).await;
        assert_eq!(server.hits(), 2);
        let refreshed = Instant::now();
        // Known kids fetch nothing.
        accepted(&authenticator, &first.token()).await;
        accepted(&authenticator, &second.token()).await;
        assert_eq!(server.hits(), 2);

        // A burst of unknown kids within the interval: no further fetch.
        let unknown: Vec<String> = (0..20)
            .map(|i| third.sign(Some(&format!("bogus-{i}")), &claims(600)))
            .collect();
        let answers =
            futures::future::join_all(unknown.iter().map(|t| authenticator.verify(t))).await;
        assert!(answers.iter().all(Result::is_err));
        assert_eq!(server.hits(), 2);
        assert!(refreshed.elapsed() < Duration::from_secs(2));

        // After the interval, one more.
        tokio::time::sleep(Duration::from_secs(2).saturating_sub(refreshed.elapsed())).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let answers =
            futures::future::join_all(unknown.iter().map(|t| authenticator.verify(t))).await;
        assert!(answers.iter().all(Result::is_err));
        assert_eq!(server.hits(), 3);
    }

    #[tokio::test]
    async fn a_failing_jwks_url_keeps_the_last_good_keys() {
        let (good, next) = (IdpKey::new("good"), IdpKey::new("next"));
        let server = StubServer::start(json(jwks(&[good.jwk()])));
        let elsewhere = StubServer::start(json(jwks(&[next.jwk()])));
        let authenticator = Authenticator::load(settings(Some(server.url()), None))
            .await
            .unwrap();
        let refresh = authenticator.spawn_refresh();
        let too_large = format!(
            r#"{{"keys": [], "padding": "{}"}}"#,
            "x".repeat(1024 * 1024 + 1)
        );
        for failure in [
            Answer::Body(500, "{}".into()),
            Answer::Body(404, "{}".into()),
            Answer::Body(200, "{not json".into()),
            Answer::Body(200, r#"{"no": "keys"}"#.into()),
            json(jwks(&[])),
            json(jwks(&[good.jwk_with(&json!({"use": "enc"}))])),
            Answer::Body(200, too_large),
            // Redirects are not followed.
            Answer::Redirect(elsewhere.url()),
        ] {
            server.set(failure.clone());
            server.await_hits(2).await;
            accepted(&authenticator, &good.token()).await;
            refused(&authenticator, &next.token(), "no configured key").await;
        }
        assert_eq!(elsewhere.hits(), 0);
        // The refresh still works once the URL serves keys again...
        server.set(json(jwks(&[good.jwk(), next.jwk()])));
        eventually_accepted(&authenticator, &next.token()).await;
        // ...and with the server gone altogether, the keys stay.
        drop(server);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        accepted(&authenticator, &good.token()).await;
        accepted(&authenticator, &next.token()).await;
        refresh.abort();
    }

    #[tokio::test]
    async fn start_up_fails_naming_the_jwks_url_it_cannot_use() {
        let closed = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let server = StubServer::start(Answer::Body(503, "{}".into()));
        let garbage = StubServer::start(Answer::Body(200, "<html>".into()));
        let keyless = StubServer::start(json(jwks(&[
            IdpKey::new("enc").jwk_with(&json!({"use": "enc"}))
        ])));
        for (url, why) in [
            (format!("http://{closed}/jwks"), "cannot fetch"),
            (server.url(), "503"),
            (garbage.url(), "did not serve a usable JWKS"),
            (keyless.url(), "no usable key"),
        ] {
            let error = Authenticator::load(settings(Some(url), None))
                .await
                .unwrap_err()
                .to_string();
            assert!(error.starts_with("auth.jwks_url: "), "{error}");
            assert!(error.contains(why), "{error}");
        }
        // `new` reads files only; it does not quietly ignore a URL.
        let error = Authenticator::new(settings(Some(server.url()), None)).unwrap_err();
        assert!(error.to_string().contains("auth.jwks_url"), "{error}");
    }

    #[tokio::test]
    async fn the_refresh_ends_when_the_authenticator_is_dropped() {
        let key = IdpKey::new("k");
        let server = StubServer::start(json(jwks(&[key.jwk()])));
        let authenticator = Authenticator::load(settings(Some(server.url()), None))
            .await
            .unwrap();
        let refresh = authenticator.spawn_refresh();
        server.await_hits(1).await;
        drop(authenticator);
        tokio::time::timeout(Duration::from_secs(3), refresh)
            .await
            .expect("the refresh task outlived its authenticator")
            .unwrap();
        // Nothing to refresh: the task ends at once.
        let pem_only = Authenticator::new(auth_settings()).unwrap();
        tokio::time::timeout(Duration::from_secs(1), pem_only.spawn_refresh())
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn the_token_lifetime_is_capped() {
        let key = IdpKey::new("k");
        let server = StubServer::start(json(jwks(&[key.jwk()])));
        let authenticator = Authenticator::load(AuthSettings {
            max_token_lifetime_secs: 600,
            ..settings(Some(server.url()), None)
        })
        .await
        .unwrap();
        accepted(&authenticator, &key.sign(Some("k"), &claims(600))).await;
        refused(
            &authenticator,
            &key.sign(Some("k"), &claims(601)),
            "lifetime (exp - iat) is longer than the 600 seconds",
        )
        .await;
        let mut without_iat = claims(60);
        without_iat.as_object_mut().unwrap().remove("iat");
        refused(
            &authenticator,
            &key.sign(Some("k"), &without_iat),
            "no iat claim",
        )
        .await;
        let mut issued_later = claims(60);
        issued_later["iat"] = json!(now() + 300);
        issued_later["exp"] = json!(now() + 600);
        refused(
            &authenticator,
            &key.sign(Some("k"), &issued_later),
            "iat is in the future",
        )
        .await;
    }

    #[tokio::test]
    async fn the_dev_keys_jwks_verifies_its_tokens_and_no_other_keys() {
        use plinth_domain::model::{OrgId, SecretText};
        let dev = IdpKey::new("unused");
        let signing_key = SecretText::new(dev.private_pem.clone());
        let jwks = plinth_api::auth::dev_jwks(&signing_key).unwrap();
        assert_eq!(jwks["keys"][0]["kid"], plinth_api::auth::DEV_KEY_ID);
        assert_eq!(jwks["keys"][0]["use"], "sig");
        assert_eq!(jwks["keys"][0]["x"], dev.x.as_str());
        assert_eq!(jwks["keys"][0]["y"], dev.y.as_str());
        let file = scratch_file("dev-jwks.json");
        std::fs::write(&file, jwks.to_string()).unwrap();
        let authenticator = Authenticator::start(settings(None, Some(file)))
            .await
            .unwrap();
        let org = OrgId::parse("org-a").unwrap();
        let minted = |key: &SecretText| {
            plinth_api::auth::mint_token(key, ISSUER, AUDIENCE, &org, Duration::from_secs(600))
                .unwrap()
        };
        accepted(&authenticator, &minted(&signing_key)).await;
        let other = SecretText::new(IdpKey::new("other").private_pem);
        refused(&authenticator, &minted(&other), "signature").await;
    }

    #[test]
    fn the_new_settings_are_checked_naming_their_key() {
        let base = auth_settings();
        assert!(base.check().is_ok());
        let cases: Vec<(AuthSettings, &str)> = vec![
            (
                AuthSettings {
                    max_token_lifetime_secs: 0,
                    ..base.clone()
                },
                "max_token_lifetime_secs",
            ),
            (
                AuthSettings {
                    jwks_refresh_secs: 0,
                    ..base.clone()
                },
                "jwks_refresh_secs",
            ),
            (
                AuthSettings {
                    jwks_refresh_secs: 86_401,
                    ..base.clone()
                },
                "jwks_refresh_secs",
            ),
            (
                AuthSettings {
                    jwks_min_refresh_interval_secs: 0,
                    ..base.clone()
                },
                "jwks_min_refresh_interval_secs",
            ),
            (
                AuthSettings {
                    jwks_url: Some("ftp://idp.example.com/jwks".into()),
                    ..base.clone()
                },
                "jwks_url",
            ),
            (
                AuthSettings {
                    jwks_url: Some("/jwks.json".into()),
                    ..base.clone()
                },
                "jwks_url",
            ),
            (
                AuthSettings {
                    jwks_url: Some("https://user:secret@idp.example.com/jwks".into()),
                    ..base.clone()
                },
                "jwks_url",
            ),
        ];
        for (settings, key) in cases {
            let error = settings.check().unwrap_err();
            assert_eq!(error.key, key, "{}", error.reason);
        }
        let https = AuthSettings {
            jwks_url: Some("https://idp.example.com/.well-known/jwks.json".into()),
            ..base
        };
        assert!(https.check().is_ok());
    }
}
