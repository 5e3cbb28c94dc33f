//! Where the adapter's fresh keys come from: pools made ahead of demand for the RSA algorithms
//! the configuration asks for, or generated on the spot.

use std::sync::{Arc, Weak};

use plinth_domain::ports::pki::{PkiError, ServiceAccountKeyPair};

use crate::keys::{KeyAlgorithm, KeyPair};
use crate::pool::{KeyPool, KeyPoolStats, Pooled};
use crate::settings::PkiSettings;

/// Fresh keys: from a pool when there is one for the algorithm, else made inline. Cheap to
/// clone; the pools stop (and drop their keys) with the last clone.
#[derive(Debug, Clone, Default)]
pub struct KeySource {
    /// The service-account signer's keys (`pki.service_account_key_pool_size`), encoded ahead
    /// too: taking one costs nothing.
    service_account: Option<Arc<KeyPool<ServiceAccountKeyPair>>>,
    /// The CAs' and leaves' keys, when they are RSA (`pki.key_pool_size`).
    certificates: Option<Arc<KeyPool>>,
}

impl KeySource {
    /// Every key made when asked for.
    pub fn inline() -> Self {
        Self::default()
    }

    /// Pools for the RSA algorithms `settings` asks for, sized as configured (0: none); ECDSA
    /// keys take microseconds and are always made inline.
    ///
    /// # Errors
    /// A refill thread could not be started.
    pub fn pooled(settings: &PkiSettings) -> std::io::Result<Self> {
        fn pool<T: Pooled + std::fmt::Debug>(
            algorithm: KeyAlgorithm,
            size: usize,
        ) -> std::io::Result<Option<Arc<KeyPool<T>>>> {
            (algorithm.is_rsa() && size > 0)
                .then(|| KeyPool::start(algorithm, size).map(Arc::new))
                .transpose()
        }
        Ok(Self {
            service_account: pool(
                settings.service_account_key_algorithm,
                settings.service_account_key_pool_size,
            )?,
            certificates: pool(settings.key_algorithm, settings.key_pool_size)?,
        })
    }

    /// A service-account key pair of `algorithm`, encoded.
    pub(crate) fn service_account_key(
        &self,
        algorithm: KeyAlgorithm,
    ) -> Result<ServiceAccountKeyPair, PkiError> {
        Self::from(self.service_account.as_deref(), algorithm)
    }

    /// A CA's or leaf's key of `algorithm`.
    pub(crate) fn certificate_key(&self, algorithm: KeyAlgorithm) -> Result<KeyPair, PkiError> {
        Self::from(self.certificates.as_deref(), algorithm)
    }

    fn from<T: Pooled + std::fmt::Debug>(
        pool: Option<&KeyPool<T>>,
        algorithm: KeyAlgorithm,
    ) -> Result<T, PkiError> {
        match pool {
            Some(pool) if pool.algorithm() == algorithm => pool.take(),
            _ => T::make(algorithm),
        }
    }

    /// The service-account pool's counters, when there is one.
    pub fn service_account_pool(&self) -> Option<KeyPoolStats> {
        self.service_account.as_ref().map(|p| p.stats())
    }

    /// The certificate-key pool's counters, when there is one.
    pub fn certificate_pool(&self) -> Option<KeyPoolStats> {
        self.certificates.as_ref().map(|p| p.stats())
    }

    /// A view of the pools' counters that does not keep them alive (for metrics).
    pub fn watch(&self) -> KeyPoolsWatch {
        KeyPoolsWatch {
            service_account: self.service_account.as_ref().map(Arc::downgrade),
            certificates: self.certificates.as_ref().map(Arc::downgrade),
        }
    }

    /// Waits (at most `limit` in all) until every pool is full; whether they are.
    pub fn wait_full(&self, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        let left = || deadline.saturating_duration_since(std::time::Instant::now());
        self.service_account
            .as_ref()
            .is_none_or(|pool| pool.wait_full(left()))
            && self
                .certificates
                .as_ref()
                .is_none_or(|pool| pool.wait_full(left()))
    }
}

/// The pools' counters while the pools live; see [`KeySource::watch`].
#[derive(Debug, Clone, Default)]
pub struct KeyPoolsWatch {
    service_account: Option<Weak<KeyPool<ServiceAccountKeyPair>>>,
    certificates: Option<Weak<KeyPool<KeyPair>>>,
}

impl KeyPoolsWatch {
    /// The service-account pool's counters, while there is one.
    pub fn service_account(&self) -> Option<KeyPoolStats> {
        self.service_account
            .as_ref()
            .and_then(Weak::upgrade)
            .map(|p| p.stats())
    }

    /// The certificate-key pool's counters, while there is one.
    pub fn certificates(&self) -> Option<KeyPoolStats> {
        self.certificates
            .as_ref()
            .and_then(Weak::upgrade)
            .map(|p| p.stats())
    }
}

impl Pooled for ServiceAccountKeyPair {
    fn make(algorithm: KeyAlgorithm) -> Result<Self, PkiError> {
        let key = KeyPair::generate(algorithm)?;
        Ok(Self {
            public_key_pem: key.public_key_pem()?,
            private_key_pem: key.to_pkcs8_pem()?,
        })
    }
}
