//! Bearer-token authentication: JWTs (ES256, RS256) verified against configured public keys
//! (PEM files, a JWKS file, a JWKS URL), with `iss`, `aud`, `exp`, `nbf` and the token's lifetime
//! (`exp - iat`) checked and a small leeway. The caller's organization is the `org_id` claim —
//! never anything in a request body.
//!
//! The JWKS sources are refreshed while plinth serves (see [`Authenticator::spawn_refresh`]), and
//! on demand when a token names a key id no key has, at most once per
//! `auth.jwks_min_refresh_interval_secs`: rotating the identity provider's keys needs no restart.
//! A refresh that fails keeps the last good keys of that source.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use futures::future::LocalBoxFuture;
use jsonwebtoken::{Algorithm, EncodingKey, Header, Validation, errors::ErrorKind};
use plinth_domain::model::{OrgId, SecretText};
use plinth_domain::settings::SettingsError;
use serde::{Deserialize, Serialize};

use crate::jwks::{self, JwksFetcher, KeySet, VerificationKey};
use crate::problem::ApiError;

/// `[auth]`: where the verification keys are and what tokens must say.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds (at most 300).
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// PEM public keys (SPKI "PUBLIC KEY": P-256 for ES256, RSA for RS256), read at start.
    #[serde(default)]
    pub public_key_files: Vec<PathBuf>,
    /// A JWKS document (RFC 7517) of further keys, re-read every `jwks_refresh_secs`.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// The identity provider's JWKS URL (http or https): fetched at start (which fails when it
    /// cannot be) and every `jwks_refresh_secs`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// How often `jwks_file` and `jwks_url` are refreshed, in seconds (1 to 86400).
    #[serde(default = "default_jwks_refresh_secs")]
    pub jwks_refresh_secs: u64,
    /// The least time between two refreshes a token with an unknown `kid` triggers, in seconds
    /// (1 to 3600).
    #[serde(default = "default_jwks_min_refresh_interval_secs")]
    pub jwks_min_refresh_interval_secs: u64,
    /// The longest lifetime (`exp - iat`) a token may have, in seconds (at least 1). Tokens must
    /// carry `iat`, not in the future.
    #[serde(default = "default_max_token_lifetime_secs")]
    pub max_token_lifetime_secs: u64,
    /// The private key `plinth dev-token` signs with: local stacks only.
    #[serde(default)]
    pub dev_signing_key_file: Option<PathBuf>,
}

fn default_leeway_secs() -> u64 {
    30
}

fn default_jwks_refresh_secs() -> u64 {
    300
}

fn default_jwks_min_refresh_interval_secs() -> u64 {
    10
}

fn default_max_token_lifetime_secs() -> u64 {
    86_400
}

impl AuthSettings {
    /// Checks the values; keys are named within `[auth]`. The key files are read, and the JWKS
    /// URL fetched, when the [`Authenticator`] is built.
    ///
    /// # Errors
    /// An empty issuer or audience, a leeway over 300 seconds, a JWKS URL that is not an
    /// absolute http(s) URL (or carries credentials or a fragment), or an interval or lifetime
    /// out of its range.
    pub fn check(&self) -> Result<(), SettingsError> {
        if self.issuer.is_empty() {
            return Err(SettingsError::new("issuer", "must be set"));
        }
        if self.audience.is_empty() {
            return Err(SettingsError::new("audience", "must be set"));
        }
        if self.leeway_secs > 300 {
            return Err(SettingsError::new("leeway_secs", "must be at most 300"));
        }
        if let Some(url) = self.jwks_url() {
            check_jwks_url(url).map_err(|why| SettingsError::new("jwks_url", why))?;
        }
        if !(1..=86_400).contains(&self.jwks_refresh_secs) {
            return Err(SettingsError::new(
                "jwks_refresh_secs",
                "must be 1 to 86400",
            ));
        }
        if !(1..=3_600).contains(&self.jwks_min_refresh_interval_secs) {
            return Err(SettingsError::new(
                "jwks_min_refresh_interval_secs",
                "must be 1 to 3600",
            ));
        }
        if self.max_token_lifetime_secs == 0 {
            return Err(SettingsError::new(
                "max_token_lifetime_secs",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    fn key_files(&self) -> impl Iterator<Item = &Path> {
        self.public_key_files
            .iter()
            .map(PathBuf::as_path)
            .filter(|f| !f.as_os_str().is_empty())
    }

    fn jwks(&self) -> Option<&Path> {
        self.jwks_file
            .as_deref()
            .filter(|f| !f.as_os_str().is_empty())
    }

    fn jwks_url(&self) -> Option<&str> {
        self.jwks_url.as_deref().filter(|u| !u.is_empty())
    }
}

fn check_jwks_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must be an http or https URL".into());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry credentials".into());
    }
    if parsed.fragment().is_some() {
        return Err("must not have a fragment".into());
    }
    Ok(())
}

/// Why the verification keys cannot be loaded; names the key and the file or URL.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthSetupError(String);

/// Verifies bearer tokens against a key set that [`Authenticator::spawn_refresh`] and tokens
/// naming unknown key ids refresh while requests are served.
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    settings: AuthSettings,
    /// The keys in use: swapped whole by a refresh, read (an `Arc` clone) by every token.
    keys: RwLock<Arc<KeySet>>,
    fetcher: Option<JwksFetcher>,
    /// Held while refreshing, so refreshes never overlap; when the last one started.
    refreshing: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.inner.snapshot().len())
            .field("issuer", &self.inner.settings.issuer)
            .field("audience", &self.inner.settings.audience)
            .field("jwks_url", &self.inner.settings.jwks_url())
            .finish()
    }
}

/// The claims plinth reads; others are ignored. (`exp`, `iss`, `aud` and `nbf` are checked by
/// jsonwebtoken too.)
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(default)]
    org_id: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    iat: Option<f64>,
    #[serde(default)]
    exp: Option<f64>,
}

/// Who is calling: the organization from the verified token.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The organization the request acts for.
    pub org: OrgId,
    /// The token's subject, for logs.
    pub subject: Option<String>,
}

impl Authenticator {
    /// Loads the configured key files (PEM and JWKS), without a JWKS URL: for that use
    /// [`Authenticator::load`] (or [`Authenticator::start`]), which fetch it. At least one key
    /// is required.
    ///
    /// # Errors
    /// The settings do not check, a file cannot be read or holds no usable key, no key at all,
    /// or `auth.jwks_url` is set.
    pub fn new(settings: AuthSettings) -> Result<Self, AuthSetupError> {
        checked(&settings)?;
        if settings.jwks_url().is_some() {
            return Err(AuthSetupError(
                "auth.jwks_url is set: it is fetched by Authenticator::load, not new".into(),
            ));
        }
        Self::assemble(settings, None, Vec::new())
    }

    /// Loads every configured key: the files, and the JWKS at `auth.jwks_url`, fetched now. The
    /// keys are not refreshed until [`Authenticator::spawn_refresh`] is called (tokens naming an
    /// unknown key id still refresh them).
    ///
    /// # Errors
    /// As [`Authenticator::new`], and the URL cannot be fetched, does not serve a JWKS document,
    /// or serves no usable key.
    pub async fn load(settings: AuthSettings) -> Result<Self, AuthSetupError> {
        checked(&settings)?;
        let Some(url) = settings.jwks_url() else {
            return Self::assemble(settings, None, Vec::new());
        };
        let fetcher =
            JwksFetcher::new(url).map_err(|e| AuthSetupError(format!("auth.jwks_url: {e}")))?;
        let keys = fetcher
            .fetch()
            .await
            .map_err(|e| AuthSetupError(format!("auth.jwks_url: {e}")))?;
        if keys.is_empty() {
            return Err(AuthSetupError(format!(
                "auth.jwks_url: {url} serves no usable key (RSA or EC P-256, use sig, alg RS256 \
                 or ES256)"
            )));
        }
        Self::assemble(settings, Some(fetcher), keys)
    }

    /// [`Authenticator::load`], then [`Authenticator::spawn_refresh`]: the refresh runs until
    /// the authenticator is dropped.
    ///
    /// # Errors
    /// As [`Authenticator::load`].
    pub async fn start(settings: AuthSettings) -> Result<Self, AuthSetupError> {
        let authenticator = Self::load(settings).await?;
        drop(authenticator.spawn_refresh());
        Ok(authenticator)
    }

    fn assemble(
        settings: AuthSettings,
        fetcher: Option<JwksFetcher>,
        url: Vec<VerificationKey>,
    ) -> Result<Self, AuthSetupError> {
        let mut pem = Vec::new();
        for file in settings.key_files() {
            pem.push(
                jwks::load_pem(file)
                    .map_err(|e| AuthSetupError(format!("auth.public_key_files: {e}")))?,
            );
        }
        let file = match settings.jwks() {
            Some(file) => jwks::read_jwks_file(file)
                .map_err(|e| AuthSetupError(format!("auth.jwks_file: {e}")))?,
            None => Vec::new(),
        };
        let keys = KeySet {
            pem: pem.into(),
            file: file.into(),
            url: url.into(),
        };
        if keys.len() == 0 {
            return Err(AuthSetupError(
                "auth: configure public_key_files, jwks_file or jwks_url; no key means no caller \
                 can be verified"
                    .into(),
            ));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                keys: RwLock::new(Arc::new(keys)),
                fetcher,
                refreshing: tokio::sync::Mutex::new(Some(Instant::now())),
            }),
        })
    }

    /// Starts refreshing the JWKS sources (`auth.jwks_file`, `auth.jwks_url`) every
    /// `auth.jwks_refresh_secs`, on the current tokio runtime. The task ends by itself once the
    /// authenticator is dropped (at its next tick), or at once when there is nothing to refresh;
    /// aborting the handle stops it too. Call it once.
    pub fn spawn_refresh(&self) -> tokio::task::JoinHandle<()> {
        let every = Duration::from_secs(self.inner.settings.jwks_refresh_secs.max(1));
        let refreshes = self.inner.refreshes();
        let inner: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            if !refreshes {
                return;
            }
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                inner.refresh(false).await;
            }
        })
    }

    /// Verifies a token; the error says why it is refused (never echoing the token). A token
    /// naming a key id no key has refreshes the JWKS sources first, unless a refresh started
    /// less than `auth.jwks_min_refresh_interval_secs` ago.
    pub async fn verify(&self, token: &str) -> Result<Caller, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::Json(_)
            | ErrorKind::Base64(_)
            | ErrorKind::Utf8(_)
            | ErrorKind::InvalidToken => {
                "the token is not a well-formed JWT, or its algorithm is not accepted".to_owned()
            }
            _ => format!("the token header is invalid: {e}"),
        })?;
        if !matches!(header.alg, Algorithm::ES256 | Algorithm::RS256) {
            return Err(format!(
                "algorithm {:?} is not accepted; use ES256 or RS256",
                header.alg
            ));
        }
        let mut keys = self.inner.snapshot();
        if let Some(kid) = &header.kid
            && !keys.knows(kid)
            && self.inner.refreshes()
        {
            if self.inner.refresh(true).await {
                tracing::info!(kid = ?kid, "a token named an unknown key id: keys refreshed");
            }
            keys = self.inner.snapshot();
        }
        self.inner.verify_with(&keys, &header, token)
    }
}

impl Inner {
    fn snapshot(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether there is a JWKS source to refresh.
    fn refreshes(&self) -> bool {
        self.fetcher.is_some() || self.settings.jwks().is_some()
    }

    /// Re-reads the JWKS file and fetches the URL, and swaps in what they hold now; a source
    /// that fails, or holds no usable key any more, keeps its last good keys (with a warning).
    /// `on_demand` (an unknown key id) does nothing when a refresh started less than
    /// `jwks_min_refresh_interval_secs` ago. Whether it refreshed.
    async fn refresh(&self, on_demand: bool) -> bool {
        let mut last = self.refreshing.lock().await;
        let least = Duration::from_secs(self.settings.jwks_min_refresh_interval_secs);
        if on_demand && last.is_some_and(|at| at.elapsed() < least) {
            return false;
        }
        *last = Some(Instant::now());
        let mut next = KeySet::clone(&self.snapshot());
        if let Some(file) = self.settings.jwks() {
            let read = jwks::read_jwks_file(file);
            if let Some(keys) = take("auth.jwks_file", &next.file, read) {
                next.file = keys;
            }
        }
        if let Some(fetcher) = &self.fetcher {
            let fetched = fetcher.fetch().await;
            if let Some(keys) = take("auth.jwks_url", &next.url, fetched) {
                next.url = keys;
            }
        }
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        true
    }

    fn verify_with(&self, keys: &KeySet, header: &Header, token: &str) -> Result<Caller, String> {
        let candidates: Vec<&VerificationKey> = keys
            .iter()
            .filter(|k| k.algorithm == header.alg)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(wanted), Some(have)) => wanted == have,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err("no configured key matches the token's algorithm and key id".into());
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.settings.leeway_secs;
        let mut last = String::from("the token's signature does not verify");
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    self.check_lifetime(&data.claims)?;
                    let org = data
                        .claims
                        .org_id
                        .ok_or_else(|| "the token has no org_id claim".to_owned())?;
                    let org = OrgId::parse(&org)
                        .map_err(|e| format!("the token's org_id is invalid: {e}"))?;
                    return Ok(Caller {
                        org,
                        subject: data.claims.sub,
                    });
                }
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => {
                            "the token's signature does not verify".into()
                        }
                        ErrorKind::ExpiredSignature => "the token has expired".into(),
                        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
                        ErrorKind::InvalidIssuer => "the token's issuer is not accepted".into(),
                        ErrorKind::InvalidAudience => "the token's audience is not accepted".into(),
                        ErrorKind::MissingRequiredClaim(claim) => {
                            format!("the token has no {claim} claim")
                        }
                        _ => format!("the token is invalid: {e}"),
                    };
                    if !matches!(e.kind(), ErrorKind::InvalidSignature) {
                        // The signature verified; the claims are what is wrong.
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    /// `iat` is required and not in the future (beyond the leeway), and `exp - iat` is at most
    /// `max_token_lifetime_secs`; together they bound how long any token works.
    fn check_lifetime(&self, claims: &Claims) -> Result<(), String> {
        let iat = claims
            .iat
            .ok_or_else(|| "the token has no iat claim".to_owned())?;
        let exp = claims
            .exp
            .ok_or_else(|| "the token has no exp claim".to_owned())?;
        let now = jsonwebtoken::get_current_timestamp() as f64;
        if iat > now + self.settings.leeway_secs as f64 {
            return Err("the token's iat is in the future".into());
        }
        let max = self.settings.max_token_lifetime_secs;
        if exp - iat > max as f64 {
            return Err(format!(
                "the token's lifetime (exp - iat) is longer than the {max} seconds accepted"
            ));
        }
        Ok(())
    }
}

/// Installs the crypto provider and checks `settings`, naming the key.
fn checked(settings: &AuthSettings) -> Result<(), AuthSetupError> {
    crate::jwt_crypto::install();
    settings
        .check()
        .map_err(|e| AuthSetupError(format!("auth.{}: {}", e.key, e.reason)))
}

/// What a refresh of one source keeps: the new keys, or `None` (keep the last good ones) when
/// reading them failed or they hold no usable key where there were some. Logs why, never a key.
fn take(
    source: &'static str,
    current: &Arc<[VerificationKey]>,
    read: Result<Vec<VerificationKey>, String>,
) -> Option<Arc<[VerificationKey]>> {
    match read {
        Err(e) => {
            tracing::warn!(source, error = %e, "refreshing the token verification keys failed; keeping the last good ones");
            None
        }
        Ok(keys) if keys.is_empty() && !current.is_empty() => {
            tracing::warn!(
                source,
                "the refreshed JWKS holds no usable key; keeping the last good ones"
            );
            None
        }
        Ok(keys) => {
            let (before, after) = (jwks::kids(current), jwks::kids(&keys));
            if before == after {
                tracing::debug!(
                    source,
                    keys = keys.len(),
                    "token verification keys refreshed"
                );
            } else {
                tracing::info!(source, kids = ?after, previously = ?before, "token verification keys changed");
            }
            Some(keys.into())
        }
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let presented = presented(req);
        Box::pin(async move {
            let (authenticator, token) = presented?;
            authenticator.verify(&token).await.map_err(|reason| {
                tracing::info!(reason = %reason, "bearer token refused");
                ApiError::unauthorized(&reason)
            })
        })
    }
}

/// The authenticator and the bearer token of `req`.
fn presented(req: &HttpRequest) -> Result<(web::Data<Authenticator>, String), ApiError> {
    let Some(authenticator) = req.app_data::<web::Data<Authenticator>>() else {
        return Err(ApiError::unauthenticated());
    };
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthenticated());
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <JWT>`"))?;
    Ok((authenticator.clone(), token.to_owned()))
}

/// Claims of a token minted by [`mint_token`].
#[derive(Debug, Serialize)]
struct MintedClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    org_id: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
}

/// Mints an ES256 token for `org` with the PKCS#8 PEM P-256 key `signing_key` (the local
/// development key of `plinth dev-token`).
pub fn mint_token(
    signing_key: &SecretText,
    issuer: &str,
    audience: &str,
    org: &OrgId,
    ttl: std::time::Duration,
) -> Result<String, String> {
    crate::jwt_crypto::install();
    let key = EncodingKey::from_ec_pem(signing_key.expose().as_bytes())
        .map_err(|e| format!("the signing key is not a P-256 PKCS#8 PEM key: {e}"))?;
    let now = jsonwebtoken::get_current_timestamp();
    let claims = MintedClaims {
        iss: issuer,
        aud: audience,
        sub: "dev",
        org_id: org.as_str(),
        iat: now,
        nbf: now,
        exp: now + ttl.as_secs(),
    };
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(DEV_KEY_ID.to_owned());
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| e.to_string())
}

/// The `kid` of the local development key, in its tokens and in [`dev_jwks`].
pub const DEV_KEY_ID: &str = "plinth-dev";

/// The JWKS (RFC 7517) of the PKCS#8 PEM P-256 key `signing_key`'s public half, as an identity
/// provider would publish it: one `EC` key, `use` `sig`, `alg` `ES256`, `kid` [`DEV_KEY_ID`].
///
/// # Errors
/// A key that is not P-256 PKCS#8 PEM.
pub fn dev_jwks(signing_key: &SecretText) -> Result<serde_json::Value, String> {
    use base64::Engine as _;
    use p256::pkcs8::DecodePrivateKey as _;
    let key = p256::ecdsa::SigningKey::from_pkcs8_pem(signing_key.expose())
        .map_err(|e| format!("the signing key is not a P-256 PKCS#8 PEM key: {e}"))?;
    // Uncompressed SEC1: 0x04, then x and y, 32 bytes each.
    let point = key.verifying_key().to_sec1_point(false);
    let (x, y) = point.as_bytes()[1..].split_at(32);
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    Ok(serde_json::json!({"keys": [{
        "kty": "EC",
        "crv": "P-256",
        "use": "sig",
        "alg": "ES256",
        "kid": DEV_KEY_ID,
        "x": b64(x),
        "y": b64(y),
    }]}))
}
