//! Key pairs: generation, PKCS#8 / SPKI PEM, and signing a certificate builder.

use std::fmt;
use std::str::FromStr;

use const_oid::db::rfc5912::{ID_EC_PUBLIC_KEY, RSA_ENCRYPTION};
use der::pem::LineEnding;
use p256::elliptic_curve::Generate as _;
use pkcs8::{
    DecodePrivateKey, EncodePrivateKey, EncodePublicKey, PrivateKeyInfoRef, SecretDocument,
};
use plinth_domain::model::SecretText;
use plinth_domain::ports::context;
use plinth_domain::ports::pki::PkiError;
use sha2::Sha256;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::Certificate;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};

/// The key algorithms plinth issues with: kubeadm's `encryptionAlgorithm` set, minus P-384.
/// Configured by name: `ecdsa-p256`, `rsa-2048`, `rsa-3072`, `rsa-4096`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256: fast, and accepted by every Kubernetes component.
    EcdsaP256,
    /// RSA, 2048 bits, PKCS#1 v1.5 signatures with SHA-256.
    Rsa2048,
    /// RSA, 3072 bits.
    Rsa3072,
    /// RSA, 4096 bits.
    Rsa4096,
}

impl KeyAlgorithm {
    /// The names configuration accepts.
    pub const NAMES: [&'static str; 4] = ["ecdsa-p256", "rsa-2048", "rsa-3072", "rsa-4096"];

    /// Whether it is one of the RSA sizes (whose keys take tens of milliseconds to make).
    pub fn is_rsa(self) -> bool {
        !matches!(self, Self::EcdsaP256)
    }

    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Self::EcdsaP256 => Self::NAMES[0],
            Self::Rsa2048 => Self::NAMES[1],
            Self::Rsa3072 => Self::NAMES[2],
            Self::Rsa4096 => Self::NAMES[3],
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A key algorithm name configuration does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown key algorithm {0:?}; expected one of ecdsa-p256, rsa-2048, rsa-3072, rsa-4096")]
pub struct UnknownKeyAlgorithm(pub String);

impl FromStr for KeyAlgorithm {
    type Err = UnknownKeyAlgorithm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ecdsa-p256" => Ok(Self::EcdsaP256),
            "rsa-2048" => Ok(Self::Rsa2048),
            "rsa-3072" => Ok(Self::Rsa3072),
            "rsa-4096" => Ok(Self::Rsa4096),
            other => Err(UnknownKeyAlgorithm(other.to_owned())),
        }
    }
}

impl TryFrom<String> for KeyAlgorithm {
    type Error = UnknownKeyAlgorithm;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        name.parse()
    }
}

/// A private key. Both variants wipe their secret material on drop.
pub(crate) enum KeyPair {
    P256(p256::ecdsa::SigningKey),
    Rsa(Box<rsa::PrivateKey>),
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::P256(_) => "KeyPair::P256(<redacted>)",
            Self::Rsa(_) => "KeyPair::Rsa(<redacted>)",
        })
    }
}

impl KeyPair {
    /// A fresh key from the thread's CSPRNG.
    pub(crate) fn generate(algorithm: KeyAlgorithm) -> Result<Self, PkiError> {
        let bits = match algorithm {
            KeyAlgorithm::EcdsaP256 => {
                return Ok(Self::P256(p256::ecdsa::SigningKey::generate_from_rng(
                    &mut rand::rng(),
                )));
            }
            KeyAlgorithm::Rsa2048 => 2048,
            KeyAlgorithm::Rsa3072 => 3072,
            KeyAlgorithm::Rsa4096 => 4096,
        };
        rsa::PrivateKey::new(&mut rand::rng(), bits)
            .map(|key| Self::Rsa(Box::new(key)))
            .map_err(|e| PkiError::Failed(context(format!("generating an RSA-{bits} key"), e)))
    }

    /// Reads a PKCS#8 PEM private key (P-256 or RSA).
    pub(crate) fn from_pkcs8_pem(pem: &str) -> Result<Self, String> {
        let label = der::pem::decode_label(pem.as_bytes())
            .map_err(|e| format!("the key is not PEM: {e}"))?;
        if label != "PRIVATE KEY" {
            return Err(format!(
                "expected a PKCS#8 \"PRIVATE KEY\", found {label:?}"
            ));
        }
        let (_, document) =
            SecretDocument::from_pem(pem).map_err(|e| format!("the key is not PKCS#8: {e}"))?;
        let info = PrivateKeyInfoRef::try_from(document.as_bytes())
            .map_err(|e| format!("the key is not PKCS#8: {e}"))?;
        match info.algorithm.oid {
            ID_EC_PUBLIC_KEY => p256::ecdsa::SigningKey::from_pkcs8_der(document.as_bytes())
                .map(Self::P256)
                .map_err(|e| format!("not a P-256 key: {e}")),
            RSA_ENCRYPTION => rsa::PrivateKey::from_pkcs8_der(document.as_bytes())
                .map(|key| Self::Rsa(Box::new(key)))
                .map_err(|e| format!("not an RSA key: {e}")),
            other => Err(format!("unsupported key algorithm {other}")),
        }
    }

    /// PKCS#8 PEM ("PRIVATE KEY").
    pub(crate) fn to_pkcs8_pem(&self) -> Result<SecretText, PkiError> {
        let pem = match self {
            Self::P256(key) => key.to_pkcs8_pem(LineEnding::LF),
            Self::Rsa(key) => key.to_pkcs8_pem(LineEnding::LF),
        }
        .map_err(|e| PkiError::Failed(context("encoding a private key", e)))?;
        // `pem` is Zeroizing and wipes itself; the copy lives in a SecretText, which does too.
        Ok(SecretText::new(pem.as_str()))
    }

    /// SPKI PEM ("PUBLIC KEY").
    pub(crate) fn public_key_pem(&self) -> Result<String, PkiError> {
        match self {
            Self::P256(key) => key.verifying_key().to_public_key_pem(LineEnding::LF),
            Self::Rsa(key) => key.to_public_key().to_public_key_pem(LineEnding::LF),
        }
        .map_err(|e| PkiError::Failed(context("encoding a public key", e)))
    }

    /// The public key as it goes into a certificate.
    pub(crate) fn spki(&self) -> Result<SubjectPublicKeyInfoOwned, PkiError> {
        match self {
            Self::P256(key) => SubjectPublicKeyInfoOwned::from_key(key.verifying_key()),
            Self::Rsa(key) => SubjectPublicKeyInfoOwned::from_key(&key.to_public_key()),
        }
        .map_err(|e| PkiError::Failed(context("encoding a public key", e)))
    }

    /// RSA keys also do key encipherment (TLS RSA key exchange); kubeadm sets it for them.
    pub(crate) fn is_rsa(&self) -> bool {
        matches!(self, Self::Rsa(_))
    }

    /// Signs the certificate: ecdsa-with-SHA256, or sha256WithRSAEncryption (PKCS#1 v1.5, blinded).
    pub(crate) fn sign<P: BuilderProfile>(
        &self,
        builder: CertificateBuilder<P>,
    ) -> Result<Certificate, PkiError> {
        match self {
            Self::P256(key) => builder.build::<_, p256::ecdsa::DerSignature>(key),
            Self::Rsa(key) => {
                let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new((**key).clone());
                builder.build::<_, rsa::pkcs1v15::Signature>(&signer)
            }
        }
        .map_err(|e| PkiError::Failed(context("signing a certificate", e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_round_trip() {
        for name in KeyAlgorithm::NAMES {
            assert_eq!(name.parse::<KeyAlgorithm>().unwrap().name(), name);
        }
        let err = "rsa-1024".parse::<KeyAlgorithm>().unwrap_err();
        assert!(err.to_string().contains("rsa-1024"), "{err}");
    }

    #[test]
    fn pkcs8_pem_round_trips_for_both_kinds() {
        for algorithm in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa2048] {
            let key = KeyPair::generate(algorithm).unwrap();
            let pem = key.to_pkcs8_pem().unwrap();
            assert!(pem.expose().starts_with("-----BEGIN PRIVATE KEY-----\n"));
            let back = KeyPair::from_pkcs8_pem(pem.expose()).unwrap();
            assert_eq!(back.spki().unwrap(), key.spki().unwrap());
            assert_eq!(back.is_rsa(), algorithm != KeyAlgorithm::EcdsaP256);
        }
    }

    #[test]
    fn foreign_pem_is_refused_with_a_reason() {
        let err = KeyPair::from_pkcs8_pem("not pem").unwrap_err();
        assert!(err.contains("not PEM"), "{err}");
        let cert_label = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = KeyPair::from_pkcs8_pem(cert_label).unwrap_err();
        assert!(err.contains("PRIVATE KEY"), "{err}");
    }

    #[test]
    fn debug_never_prints_key_material() {
        let key = KeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
        assert_eq!(format!("{key:?}"), "KeyPair::P256(<redacted>)");
    }
}
