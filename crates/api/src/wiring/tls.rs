//! plinth's own HTTPS: a certificate chain and its key, read from PEM files at start, made into a
//! rustls server configuration (TLS 1.2 and 1.3, the aws-lc-rs provider reqwest already uses).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use plinth_domain::settings::SettingsError;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A listener's certificate chain and key, checked and ready to serve.
#[derive(Clone)]
pub struct TlsIdentity {
    cert_file: PathBuf,
    config: ServerConfig,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never: only where the certificate comes from.
        f.debug_struct("TlsIdentity")
            .field("cert_file", &self.cert_file)
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Reads the PEM certificate chain `cert` (leaf first) and the PEM key `key` (PKCS#8, SEC1
    /// or PKCS#1) and checks that they belong together; errors name `cert_key` or `key_key`.
    ///
    /// # Errors
    /// A file that cannot be read, holds no certificate or no key, or a key that does not match
    /// the certificate or that rustls cannot sign with.
    pub fn load(
        (cert_key, cert): (&str, &Path),
        (key_key, key): (&str, &Path),
    ) -> Result<Self, SettingsError> {
        let read = |config_key: &str, file: &Path| {
            std::fs::read(file).map_err(|e| {
                SettingsError::new(config_key, format!("cannot read {}: {e}", file.display()))
            })
        };
        let cert_pem = read(cert_key, cert)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                SettingsError::new(
                    cert_key,
                    format!("{} is not PEM certificates: {e}", cert.display()),
                )
            })?;
        if chain.is_empty() {
            return Err(SettingsError::new(
                cert_key,
                format!(
                    "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    cert.display()
                ),
            ));
        }
        let key_pem = read(key_key, key)?;
        let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            SettingsError::new(
                key_key,
                format!(
                    "{} holds no PEM private key (PKCS#8, SEC1 or PKCS#1): {e}",
                    key.display()
                ),
            )
        })?;
        let config = ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| SettingsError::new(cert_key, e))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            SettingsError::new(
                key_key,
                format!("{} cannot serve {}: {e}", key.display(), cert.display()),
            )
        })?;
        Ok(Self {
            cert_file: cert.to_owned(),
            config,
        })
    }

    /// The rustls configuration to serve with.
    pub fn server_config(&self) -> ServerConfig {
        self.config.clone()
    }
}
