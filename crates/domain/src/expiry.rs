//! When a cluster's certificates expire: every CA, shared client certificate and node
//! certificate with its `notAfter`, read from the certificates themselves, and the earliest of
//! them, so that an operator learns of an expiry before the control plane does.

use std::sync::Arc;

use time::OffsetDateTime;

use crate::model::{ClusterId, OrgId};
use crate::ports::pki::{Pki, PkiError};
use crate::ports::repo::{Repo, RepoError};

/// One certificate's expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateExpiry {
    /// What it is, e.g. `ca`, `apiserver-etcd-client`, `cp-1.cluster-<id>.internal/apiserver`.
    pub name: String,
    /// Its `notAfter`.
    pub not_after: OffsetDateTime,
}

/// A cluster's certificates and when the first of them expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiryReport {
    /// Every certificate, CAs first, then the shared ones, then each node's.
    pub certificates: Vec<CertificateExpiry>,
    /// The earliest `notAfter`; none while the cluster has no certificate yet.
    pub earliest: Option<OffsetDateTime>,
}

/// Why no report could be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExpiryError {
    /// The database failed.
    #[error("reading the cluster's certificates failed")]
    Database(#[source] RepoError),
    /// A stored certificate cannot be read.
    #[error("certificate {name} cannot be read")]
    Unreadable {
        /// Which.
        name: String,
        /// Why.
        #[source]
        source: PkiError,
    },
}

/// The use case behind `certificates` in `GET /clusters/{id}`.
#[derive(Clone)]
pub struct CertificateExpiries {
    repo: Arc<dyn Repo>,
    pki: Arc<dyn Pki>,
}

impl std::fmt::Debug for CertificateExpiries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateExpiries")
            .finish_non_exhaustive()
    }
}

impl CertificateExpiries {
    /// Wires the use case.
    pub fn new(repo: Arc<dyn Repo>, pki: Arc<dyn Pki>) -> Self {
        Self { repo, pki }
    }

    /// The certificates of `cluster` of `org` with their expiry; `None` for a cluster the
    /// organization does not have.
    ///
    /// # Errors
    /// `Database`, or `Unreadable` for a stored certificate that does not parse.
    pub async fn report(
        &self,
        org: &OrgId,
        cluster: ClusterId,
    ) -> Result<Option<ExpiryReport>, ExpiryError> {
        let Some(stored) = self
            .repo
            .cluster_certificates(org, cluster)
            .await
            .map_err(ExpiryError::Database)?
        else {
            return Ok(None);
        };
        let certificates = stored
            .into_iter()
            .map(|certificate| {
                let facts =
                    self.pki
                        .certificate_facts(&certificate.cert_pem)
                        .map_err(|source| ExpiryError::Unreadable {
                            name: certificate.name.clone(),
                            source,
                        })?;
                Ok(CertificateExpiry {
                    name: certificate.name,
                    not_after: facts.not_after,
                })
            })
            .collect::<Result<Vec<_>, ExpiryError>>()?;
        let earliest = certificates.iter().map(|c| c.not_after).min();
        Ok(Some(ExpiryReport {
            certificates,
            earliest,
        }))
    }
}
