//! Bearer-token authentication: JWTs (ES256, RS256) verified against configured public keys
//! (PEM files, a JWKS file), with `iss`, `aud`, `exp` and `nbf` checked and a small leeway. The
//! caller's organization is the `org_id` claim — never anything in a request body.

use std::path::{Path, PathBuf};

use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use plinth_domain::model::{OrgId, SecretText};
use plinth_domain::settings::SettingsError;
use serde::{Deserialize, Serialize};

use crate::problem::ApiError;

/// `[auth]`: where the verification keys are and what tokens must say.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds (at most 300).
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// PEM public keys (SPKI "PUBLIC KEY": P-256 for ES256, RSA for RS256).
    #[serde(default)]
    pub public_key_files: Vec<PathBuf>,
    /// A JWKS document (RFC 7517) of further keys.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// The private key `plinth dev-token` signs with: local stacks only.
    #[serde(default)]
    pub dev_signing_key_file: Option<PathBuf>,
}

fn default_leeway_secs() -> u64 {
    30
}

impl AuthSettings {
    /// Checks the values; keys are named within `[auth]`. The key files are read when the
    /// [`Authenticator`] is built.
    ///
    /// # Errors
    /// An empty issuer or audience, or a leeway over 300 seconds.
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
}

/// Why the verification keys cannot be loaded; names the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthSetupError(String);

struct VerificationKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Verifies bearer tokens.
pub struct Authenticator {
    keys: Vec<VerificationKey>,
    settings: AuthSettings,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys.len())
            .field("issuer", &self.settings.issuer)
            .field("audience", &self.settings.audience)
            .finish()
    }
}

/// The claims plinth reads; others are ignored.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(default)]
    org_id: Option<String>,
    #[serde(default)]
    sub: Option<String>,
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
    /// Loads every configured key; at least one is required.
    pub fn new(settings: AuthSettings) -> Result<Self, AuthSetupError> {
        crate::jwt_crypto::install();
        let mut keys = Vec::new();
        for file in settings.key_files() {
            keys.push(load_pem(file)?);
        }
        if let Some(file) = settings.jwks() {
            keys.extend(load_jwks(file)?);
        }
        if keys.is_empty() {
            return Err(AuthSetupError(
                "auth: configure public_key_files or jwks_file; no key means no caller can be verified".into(),
            ));
        }
        if settings.issuer.is_empty() || settings.audience.is_empty() {
            return Err(AuthSetupError(
                "auth.issuer and auth.audience must not be empty".into(),
            ));
        }
        Ok(Self { keys, settings })
    }

    /// Verifies a token; the error says why it is refused (never echoing the token).
    pub fn verify(&self, token: &str) -> Result<Caller, String> {
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
        let candidates: Vec<&VerificationKey> = self
            .keys
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
}

fn read(file: &Path) -> Result<String, AuthSetupError> {
    std::fs::read_to_string(file)
        .map_err(|e| AuthSetupError(format!("auth: cannot read {}: {e}", file.display())))
}

fn load_pem(file: &Path) -> Result<VerificationKey, AuthSetupError> {
    let pem = read(file)?;
    if let Ok(key) = DecodingKey::from_ec_pem(pem.as_bytes()) {
        // jsonwebtoken accepts P-384 here too; only P-256 (ES256) is verified.
        let point = key
            .try_get_as_bytes()
            .map_err(|e| AuthSetupError(e.to_string()))?;
        p256::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| {
            AuthSetupError(format!(
                "auth: {} is an EC key but not P-256 (ES256)",
                file.display()
            ))
        })?;
        return Ok(VerificationKey {
            kid: None,
            algorithm: Algorithm::ES256,
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
        return Ok(VerificationKey {
            kid: None,
            algorithm: Algorithm::RS256,
            key,
        });
    }
    Err(AuthSetupError(format!(
        "auth: {} is not a PEM public key (P-256 or RSA, \"BEGIN PUBLIC KEY\")",
        file.display()
    )))
}

fn load_jwks(file: &Path) -> Result<Vec<VerificationKey>, AuthSetupError> {
    let text = read(file)?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| {
        AuthSetupError(format!(
            "auth: {} is not a JWKS document: {e}",
            file.display()
        ))
    })?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            // Other key types are skipped: no token can name them.
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| {
            AuthSetupError(format!(
                "auth: a key of {} is unusable: {e}",
                file.display()
            ))
        })?;
        keys.push(VerificationKey {
            kid: jwk.common.key_id.clone(),
            algorithm,
            key,
        });
    }
    Ok(keys)
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(authenticate(req))
    }
}

fn authenticate(req: &HttpRequest) -> Result<Caller, ApiError> {
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
    authenticator.verify(token).map_err(|reason| {
        tracing::info!(reason = %reason, "bearer token refused");
        ApiError::unauthorized(&reason)
    })
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
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key).map_err(|e| e.to_string())
}
