//! plinth's `Pki` adapter: a cluster's root CA with kubeadm's `etcd-ca` and `front-proxy-ca`
//! intermediates, the service-account key pair, and serving and client leaf certificates, built
//! with x509-cert on p256 and rsa (no OpenSSL).
//!
//! What it issues is checked by the programs that consume it — OpenSSL (`verify -x509_strict`),
//! Go's crypto/x509 through kubectl and a real etcd cluster — in this crate's `tests/`.
//! Key generation and signing run on tokio's blocking pool, so a founding never stalls the
//! executor. Private keys leave only as PKCS#8 PEM inside a `SecretText`.

mod certs;
mod keys;
mod pool;
mod settings;
mod source;

use async_trait::async_trait;
use plinth_domain::model::ClusterId;
use plinth_domain::ports::context;
use plinth_domain::ports::pki::{
    CertificateFacts, CertifiedKey, ClientCertRequest, ClusterCa, Pki, PkiError,
    ServiceAccountKeyPair, ServingCertRequest,
};

pub use certs::{
    certificate_facts, create_cluster_ca, create_cluster_ca_from, create_service_account_key,
    create_service_account_key_from, sign_client_cert, sign_client_cert_from, sign_serving_cert,
    sign_serving_cert_from,
};
pub use keys::{KeyAlgorithm, UnknownKeyAlgorithm};
pub use pool::KeyPoolStats;
pub use settings::{MAX_KEY_POOL_SIZE, PkiSettings, PkiSettingsError};
pub use source::{KeyPoolsWatch, KeySource};

/// The `Pki` port on x509-cert. The synchronous functions it wraps are public too, for tools and
/// benchmarks that have no runtime (they make every key inline).
#[derive(Debug, Clone)]
pub struct X509Pki {
    settings: PkiSettings,
    keys: KeySource,
}

impl X509Pki {
    /// An adapter issuing with `settings`, checked first, making every key when asked for.
    pub fn new(settings: PkiSettings) -> Result<Self, PkiSettingsError> {
        settings.validate()?;
        Ok(Self {
            settings,
            keys: KeySource::inline(),
        })
    }

    /// An adapter issuing with `settings` whose RSA keys come from pools made ahead of demand
    /// (`service_account_key_pool_size`, `key_pool_size`), filling from now on.
    ///
    /// # Errors
    /// Settings that cannot work, or a refill thread that could not start.
    pub fn with_key_pools(settings: PkiSettings) -> Result<Self, PkiSetupError> {
        settings.validate()?;
        let keys = KeySource::pooled(&settings).map_err(PkiSetupError::Pool)?;
        Ok(Self { settings, keys })
    }

    /// Where its keys come from (the pools' counters).
    pub fn keys(&self) -> &KeySource {
        &self.keys
    }

    /// Runs CPU-heavy work (RSA key generation takes tens of milliseconds) off the executor.
    async fn off_executor<T, F>(&self, work: F) -> Result<T, PkiError>
    where
        T: Send + 'static,
        F: FnOnce(&PkiSettings, &KeySource) -> Result<T, PkiError> + Send + 'static,
    {
        let (settings, keys) = (self.settings.clone(), self.keys.clone());
        tokio::task::spawn_blocking(move || work(&settings, &keys))
            .await
            .map_err(|e| PkiError::Failed(context("the signing task did not finish", e)))?
    }
}

/// Why [`X509Pki::with_key_pools`] could not set up.
#[derive(Debug, thiserror::Error)]
pub enum PkiSetupError {
    /// Settings that cannot work.
    #[error(transparent)]
    Settings(#[from] PkiSettingsError),
    /// A key pool's refill thread.
    #[error("starting a key pool's refill thread")]
    Pool(#[source] std::io::Error),
}

#[async_trait]
impl Pki for X509Pki {
    async fn create_cluster_ca(&self, cluster: ClusterId) -> Result<ClusterCa, PkiError> {
        self.off_executor(move |s, k| create_cluster_ca_from(s, k, cluster))
            .await
    }

    async fn create_service_account_key(&self) -> Result<ServiceAccountKeyPair, PkiError> {
        self.off_executor(create_service_account_key_from).await
    }

    async fn sign_serving_cert(
        &self,
        issuer: &CertifiedKey,
        request: &ServingCertRequest,
    ) -> Result<CertifiedKey, PkiError> {
        let (issuer, request) = (issuer.clone(), request.clone());
        self.off_executor(move |s, k| sign_serving_cert_from(s, k, &issuer, &request))
            .await
    }

    async fn sign_client_cert(
        &self,
        issuer: &CertifiedKey,
        request: &ClientCertRequest,
    ) -> Result<CertifiedKey, PkiError> {
        let (issuer, request) = (issuer.clone(), request.clone());
        self.off_executor(move |s, k| sign_client_cert_from(s, k, &issuer, &request))
            .await
    }

    fn certificate_facts(&self, cert_pem: &str) -> Result<CertificateFacts, PkiError> {
        certificate_facts(cert_pem)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use plinth_domain::model::ClusterId;
    use plinth_domain::ports::Chain;
    use plinth_domain::ports::pki::Pki;

    use super::*;

    /// On a single-threaded runtime, work done on the executor would freeze every other task
    /// until it finished; work on the blocking pool lets them run.
    #[tokio::test(flavor = "current_thread")]
    async fn key_generation_runs_off_the_executor() {
        let pki = X509Pki::new(PkiSettings {
            key_algorithm: KeyAlgorithm::Rsa3072,
            ..PkiSettings::default()
        })
        .unwrap();
        let work =
            tokio::spawn(async move { pki.create_cluster_ca(ClusterId::new_random()).await });
        let started = Instant::now();
        let mut ticks = 0u32;
        while !work.is_finished() {
            tokio::time::sleep(Duration::from_millis(2)).await;
            ticks += 1;
        }
        let elapsed = started.elapsed();
        work.await.unwrap().unwrap();
        // Three RSA-3072 keys take well over 50 ms; the ticker must have run throughout.
        assert!(
            elapsed > Duration::from_millis(50),
            "too fast to tell: {elapsed:?}"
        );
        let expected = elapsed.as_millis() / 2;
        assert!(
            u128::from(ticks) * 4 >= expected,
            "the executor stalled: {ticks} ticks in {elapsed:?}"
        );
    }

    #[tokio::test]
    async fn a_broken_issuer_is_refused_with_the_reason() {
        let pki = X509Pki::new(PkiSettings::default()).unwrap();
        let ca = pki
            .create_cluster_ca(ClusterId::new_random())
            .await
            .unwrap();
        let request = ClientCertRequest {
            common_name: "x".into(),
            organizations: vec![],
            not_after: None,
        };
        let mismatched = CertifiedKey {
            cert_pem: ca.root.cert_pem.clone(),
            key_pem: ca.etcd.key_pem.clone(),
        };
        let err = pki
            .sign_client_cert(&mismatched, &request)
            .await
            .unwrap_err();
        assert!(matches!(err, PkiError::UnusableIssuer(_)), "{err}");
        assert!(Chain(&err).to_string().contains("does not belong"), "{err}");

        let leaf = pki.sign_client_cert(&ca.root, &request).await.unwrap();
        let err = pki.sign_client_cert(&leaf, &request).await.unwrap_err();
        assert!(Chain(&err).to_string().contains("not a CA"), "{err}");

        let garbage = CertifiedKey {
            cert_pem: "nonsense".into(),
            key_pem: ca.root.key_pem.clone(),
        };
        let err = pki.sign_client_cert(&garbage, &request).await.unwrap_err();
        assert!(matches!(err, PkiError::UnusableIssuer(_)), "{err}");
    }

    #[tokio::test]
    async fn requests_the_encodings_cannot_carry_are_refused() {
        let pki = X509Pki::new(PkiSettings::default()).unwrap();
        let ca = pki
            .create_cluster_ca(ClusterId::new_random())
            .await
            .unwrap();
        let serving = |dns: &str| ServingCertRequest {
            common_name: "n".into(),
            sans: plinth_domain::model::SubjectAltNames {
                dns_names: vec![dns.to_owned()],
                ip_addresses: vec![],
            },
            client_auth: false,
        };
        for bad in ["ünï.example", "trailing.dot.", ""] {
            let err = pki
                .sign_serving_cert(&ca.root, &serving(bad))
                .await
                .unwrap_err();
            assert!(matches!(err, PkiError::InvalidRequest(_)), "{bad:?}: {err}");
        }
        let no_sans = ServingCertRequest {
            common_name: "n".into(),
            sans: plinth_domain::model::SubjectAltNames::default(),
            client_auth: false,
        };
        let err = pki.sign_serving_cert(&ca.root, &no_sans).await.unwrap_err();
        assert!(err.to_string().contains("at least one"), "{err}");
        let long_cn = ClientCertRequest {
            common_name: "x".repeat(256),
            organizations: vec![],
            not_after: None,
        };
        let err = pki.sign_client_cert(&ca.root, &long_cn).await.unwrap_err();
        assert!(matches!(err, PkiError::InvalidRequest(_)), "{err}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn pooled_service_account_keys_are_each_used_once_and_misses_counted() {
        let pki = X509Pki::with_key_pools(PkiSettings {
            service_account_key_pool_size: 3,
            ..PkiSettings::default()
        })
        .unwrap();
        assert!(pki.keys().wait_full(Duration::from_secs(60)));
        assert!(
            pki.keys().certificate_pool().is_none(),
            "ECDSA leaves: no pool"
        );
        let mut seen = std::collections::HashSet::new();
        for _ in 0..6 {
            let key = pki.create_service_account_key().await.unwrap();
            assert!(key.public_key_pem.contains("PUBLIC KEY"));
            assert!(seen.insert(key.public_key_pem), "a key was used twice");
        }
        let stats = pki.keys().service_account_pool().unwrap();
        assert_eq!(stats.taken + stats.misses, 6, "{stats:?}");
        assert!(stats.taken >= 3 && stats.misses >= 1, "{stats:?}");
        // The watch sees the pool while it lives, and nothing once the adapter is gone.
        let watch = pki.keys().watch();
        assert_eq!(watch.service_account().map(|s| s.capacity), Some(3));
        drop(pki);
        let deadline = Instant::now() + Duration::from_secs(10);
        while watch.service_account().is_some() {
            assert!(Instant::now() < deadline, "the pool outlives its adapter");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn a_pool_size_of_zero_makes_no_pool_and_an_absurd_one_is_refused() {
        let pki = X509Pki::with_key_pools(PkiSettings {
            service_account_key_pool_size: 0,
            ..PkiSettings::default()
        })
        .unwrap();
        assert!(pki.keys().service_account_pool().is_none());
        let err = X509Pki::with_key_pools(PkiSettings {
            key_pool_size: MAX_KEY_POOL_SIZE + 1,
            ..PkiSettings::default()
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "key_pool_size must be at most 1024");
    }
}
