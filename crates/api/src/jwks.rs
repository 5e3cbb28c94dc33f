//! The token verification keys and where they come from: PEM public keys, JWKS documents (RFC
//! 7517) read from a file or fetched from the identity provider's URL, and the key set
//! [`crate::auth::Authenticator`] swaps while requests are served.
//!
//! Of a JWKS, a key is used only when plinth can verify with it and its issuer meant it for
//! that: an RSA key (RS256) or an EC P-256 key (ES256); `use` absent or `sig`; `key_ops` absent
//! or holding `verify`; `alg` absent or the algorithm its type verifies (a P-256 key declared
//! `ES384`, or an RSA key declared `PS256`, is never used). Other keys are skipped, never an
//! error: identity providers publish encryption keys and newer key types in the same document.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use plinth_domain::ports::Chain;
use plinth_http_client::{HttpClient, RetryPolicy, Timeouts};
use serde::Deserialize;

/// Bounds of one JWKS fetch: it runs in the background, or (for a token naming an unknown key
/// id) while one request waits.
pub(crate) const FETCH_TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(2),
    request: Duration::from_secs(5),
};

/// One key tokens can be verified with.
pub(crate) struct VerificationKey {
    /// The JWK's `kid`; `None` for PEM keys and JWKs without one.
    pub kid: Option<String>,
    /// The one algorithm the key verifies.
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

/// Every key in use, by source; a refresh replaces one source's keys and leaves the others.
#[derive(Clone, Default)]
pub(crate) struct KeySet {
    /// `auth.public_key_files`, read once at start.
    pub pem: Arc<[VerificationKey]>,
    /// `auth.jwks_file`, re-read on every refresh.
    pub file: Arc<[VerificationKey]>,
    /// `auth.jwks_url`, fetched on every refresh.
    pub url: Arc<[VerificationKey]>,
}

impl KeySet {
    pub fn iter(&self) -> impl Iterator<Item = &VerificationKey> {
        self.pem
            .iter()
            .chain(self.file.iter())
            .chain(self.url.iter())
    }

    pub fn len(&self) -> usize {
        self.pem.len() + self.file.len() + self.url.len()
    }

    /// Whether a key carries this `kid`.
    pub fn knows(&self, kid: &str) -> bool {
        self.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// The key ids of `keys`, for logs (key ids are public; the keys are never logged).
pub(crate) fn kids(keys: &[VerificationKey]) -> Vec<&str> {
    keys.iter()
        .map(|k| k.kid.as_deref().unwrap_or("(no kid)"))
        .collect()
}

/// Reads a PEM public key: P-256 (ES256) or RSA (RS256).
pub(crate) fn load_pem(file: &Path) -> Result<VerificationKey, String> {
    let pem = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if let Ok(key) = DecodingKey::from_ec_pem(pem.as_bytes()) {
        // jsonwebtoken accepts P-384 here too; only P-256 (ES256) is verified.
        let point = key.try_get_as_bytes().map_err(|e| e.to_string())?;
        p256::ecdsa::VerifyingKey::from_sec1_bytes(point)
            .map_err(|_| format!("{} is an EC key but not P-256 (ES256)", file.display()))?;
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
    Err(format!(
        "{} is not a PEM public key (P-256 or RSA, \"BEGIN PUBLIC KEY\")",
        file.display()
    ))
}

/// Reads a JWKS file.
pub(crate) fn read_jwks_file(file: &Path) -> Result<Vec<VerificationKey>, String> {
    let text = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    parse_jwks(&text).map_err(|e| format!("{} is not a usable JWKS document: {e}", file.display()))
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

/// The usable keys of a JWKS document (see the module's documentation for which).
///
/// # Errors
/// The document is not a JWKS, or an RSA or EC key in it is malformed.
pub(crate) fn parse_jwks(text: &[u8]) -> Result<Vec<VerificationKey>, String> {
    let document: Document = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    let mut keys = Vec::new();
    for value in document.keys {
        let kty = value.get("kty").and_then(serde_json::Value::as_str);
        let kid = value
            .get("kid")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
        let named = || {
            kid.as_deref()
                .map_or_else(String::new, |k| format!(" {k:?}"))
        };
        let jwk: Jwk = match serde_json::from_value(value.clone()) {
            Ok(jwk) => jwk,
            Err(e) if matches!(kty, Some("RSA" | "EC")) => {
                return Err(format!("the key{} is malformed: {e}", named()));
            }
            Err(_) => {
                tracing::debug!(kid = ?kid, kty = ?kty, "JWKS key of an unknown type skipped");
                continue;
            }
        };
        let algorithm = match usable(&jwk) {
            Ok(algorithm) => algorithm,
            Err(why) => {
                tracing::debug!(kid = ?kid, why, "JWKS key not used");
                continue;
            }
        };
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|e| format!("the key{} is unusable: {e}", named()))?;
        keys.push(VerificationKey {
            kid: jwk.common.key_id.clone(),
            algorithm,
            key,
        });
    }
    Ok(keys)
}

/// The algorithm `jwk` verifies, or why it is not used.
fn usable(jwk: &Jwk) -> Result<Algorithm, &'static str> {
    let (algorithm, declared) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (Algorithm::RS256, KeyAlgorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            (Algorithm::ES256, KeyAlgorithm::ES256)
        }
        _ => return Err("neither an RSA nor an EC P-256 key"),
    };
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => return Err("its use is not sig"),
    }
    if let Some(operations) = &jwk.common.key_operations
        && !operations.contains(&KeyOperations::Verify)
    {
        return Err("its key_ops do not include verify");
    }
    match jwk.common.key_algorithm {
        Some(alg) if alg != declared => Err("its alg is not the one its key type verifies"),
        _ => Ok(algorithm),
    }
}

/// Fetches the JWKS at `auth.jwks_url`: one attempt, bounded by [`FETCH_TIMEOUTS`], no
/// redirects followed, at most [`plinth_http_client::MAX_BODY_BYTES`] read.
#[derive(Debug)]
pub(crate) struct JwksFetcher {
    client: HttpClient,
    /// Path and query, appended to the client's base (scheme and authority).
    path: String,
    url: String,
}

impl JwksFetcher {
    /// A fetcher of `url`, an absolute http(s) URL (checked by `AuthSettings::check`).
    pub fn new(url: &str) -> Result<Self, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let path = match parsed.query() {
            Some(query) => format!("{}?{query}", parsed.path()),
            None => parsed.path().to_owned(),
        };
        let full = parsed.as_str();
        let base = full
            .strip_suffix(path.as_str())
            .ok_or_else(|| format!("{url:?} cannot be split into a base and a path"))?;
        let client = HttpClient::new("jwks", base, FETCH_TIMEOUTS)
            .map_err(|e| format!("cannot set up an HTTP client: {}", Chain(&e)))?;
        Ok(Self {
            client,
            path,
            url: full.to_owned(),
        })
    }

    /// The usable keys the URL serves now.
    ///
    /// # Errors
    /// No answer, an answer other than 200, or a body that is not a JWKS.
    pub async fn fetch(&self) -> Result<Vec<VerificationKey>, String> {
        let answer = self
            .client
            .send(RetryPolicy::ONCE, reqwest::Method::GET, &self.path, |r| {
                r.header(reqwest::header::ACCEPT, "application/json")
            })
            .await
            .map_err(|e| format!("cannot fetch {}: {}", self.url, Chain(&e)))?;
        if answer.status != reqwest::StatusCode::OK {
            return Err(format!(
                "{} answered {}: {}",
                self.url,
                answer.status,
                answer.message()
            ));
        }
        parse_jwks(&answer.body)
            .map_err(|e| format!("{} did not serve a usable JWKS document: {e}", self.url))
    }
}
