//! jsonwebtoken's crypto provider on the workspace's RustCrypto generation (p256 0.14,
//! rsa 0.10, sha2 0.11): ES256 and RS256 only. jsonwebtoken's own `rust_crypto` backend would
//! pull the older generation, rsa 0.9 among it, which Marvin (RUSTSEC-2023-0071) affects.
//!
//! Every other algorithm — HS* above all, so that a token "signed" with a public key as an HMAC
//! secret is refused — has no signer or verifier here.

use jsonwebtoken::DecodingKeyKind;
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind, Result};
use jsonwebtoken::jwk::{EllipticCurve, ThumbprintHash};
use jsonwebtoken::signature as signature2;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use pkcs8::DecodePrivateKey as _;
use rsa::pkcs1::{DecodeRsaPrivateKey as _, DecodeRsaPublicKey as _};
use sha2::{Digest, Sha256, Sha384, Sha512};

/// Installs the provider for the process (a no-op when one is installed already).
pub fn install() {
    let _ = PROVIDER.install_default();
}

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory,
    verifier_factory,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: |_| Err(unsupported()),
        rsa_pub_components_from_public_key: |_| Err(unsupported()),
        ec_pub_components_from_private_key: |_, _| Err(unsupported()),
        ed_pub_components_from_private_key: |_, _| Err(unsupported()),
        compute_digest,
    },
};

fn unsupported() -> Error {
    ErrorKind::UnsupportedAlgorithm.into()
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>> {
    Ok(match hash {
        ThumbprintHash::SHA256 => Sha256::digest(data).to_vec(),
        ThumbprintHash::SHA384 => Sha384::digest(data).to_vec(),
        ThumbprintHash::SHA512 => Sha512::digest(data).to_vec(),
        _ => return Err(unsupported()),
    })
}

fn signer_factory(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    match algorithm {
        Algorithm::ES256 => {
            let key = p256::ecdsa::SigningKey::from_pkcs8_der(key.as_bytes())
                .map_err(|_| Error::from(ErrorKind::InvalidEcdsaKey))?;
            Ok(Box::new(Es256Signer(key)))
        }
        Algorithm::RS256 => {
            let key = rsa::PrivateKey::from_pkcs1_der(key.as_bytes())
                .map_err(|e| Error::from(ErrorKind::InvalidRsaKey(e.to_string())))?;
            Ok(Box::new(Rs256Signer(rsa::pkcs1v15::SigningKey::new(key))))
        }
        _ => Err(unsupported()),
    }
}

fn verifier_factory(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    match algorithm {
        Algorithm::ES256 => {
            let bytes = key.try_get_as_bytes()?;
            let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes)
                .map_err(|_| Error::from(ErrorKind::InvalidEcdsaKey))?;
            Ok(Box::new(Es256Verifier(key)))
        }
        Algorithm::RS256 => {
            let key = match key.kind() {
                DecodingKeyKind::SecretOrDer(der) => rsa::PublicKey::from_pkcs1_der(der)
                    .map_err(|e| Error::from(ErrorKind::InvalidRsaKey(e.to_string())))?,
                DecodingKeyKind::RsaModulusExponent { n, e } => {
                    let n = rsa::BoxedUint::from_be_slice_vartime(n);
                    let e = rsa::BoxedUint::from_be_slice_vartime(e);
                    rsa::PublicKey::new(n, e)
                        .map_err(|e| Error::from(ErrorKind::InvalidRsaKey(e.to_string())))?
                }
            };
            Ok(Box::new(Rs256Verifier(rsa::pkcs1v15::VerifyingKey::new(
                key,
            ))))
        }
        _ => Err(unsupported()),
    }
}

struct Es256Signer(p256::ecdsa::SigningKey);
struct Es256Verifier(p256::ecdsa::VerifyingKey);
struct Rs256Signer(rsa::pkcs1v15::SigningKey<Sha256>);
struct Rs256Verifier(rsa::pkcs1v15::VerifyingKey<Sha256>);

fn provider_error(e: impl std::fmt::Display) -> signature2::Error {
    signature2::Error::from_source(e.to_string())
}

impl signature2::Signer<Vec<u8>> for Es256Signer {
    fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, signature2::Error> {
        // JWS ES256 is the fixed-size r || s, not DER.
        let signature: p256::ecdsa::Signature = self.0.try_sign(msg).map_err(provider_error)?;
        Ok(signature.to_bytes().to_vec())
    }
}

impl JwtSigner for Es256Signer {
    fn algorithm(&self) -> Algorithm {
        Algorithm::ES256
    }
}

impl signature2::Verifier<Vec<u8>> for Es256Verifier {
    fn verify(
        &self,
        msg: &[u8],
        signature: &Vec<u8>,
    ) -> std::result::Result<(), signature2::Error> {
        let signature = p256::ecdsa::Signature::from_slice(signature).map_err(provider_error)?;
        self.0.verify(msg, &signature).map_err(provider_error)
    }
}

impl JwtVerifier for Es256Verifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::ES256
    }
}

impl signature2::Signer<Vec<u8>> for Rs256Signer {
    fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, signature2::Error> {
        use rsa::signature::SignatureEncoding as _;
        let signature: rsa::pkcs1v15::Signature = self.0.try_sign(msg).map_err(provider_error)?;
        Ok(signature.to_vec())
    }
}

impl JwtSigner for Rs256Signer {
    fn algorithm(&self) -> Algorithm {
        Algorithm::RS256
    }
}

impl signature2::Verifier<Vec<u8>> for Rs256Verifier {
    fn verify(
        &self,
        msg: &[u8],
        signature: &Vec<u8>,
    ) -> std::result::Result<(), signature2::Error> {
        let signature =
            rsa::pkcs1v15::Signature::try_from(signature.as_slice()).map_err(provider_error)?;
        self.0.verify(msg, &signature).map_err(provider_error)
    }
}

impl JwtVerifier for Rs256Verifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::RS256
    }
}

/// Curves the provider verifies, for JWKS key selection.
pub fn supported_curve(curve: &EllipticCurve) -> bool {
    matches!(curve, EllipticCurve::P256)
}
