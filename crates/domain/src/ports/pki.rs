//! `Pki`: the cluster's trust material — CAs, the service-account signer, leaf certificates.

use async_trait::async_trait;

use crate::model::{ClusterId, SecretText, SubjectAltNames};

/// A certificate with its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifiedKey {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM.
    pub key_pem: SecretText,
}

/// A cluster's certificate authorities: one root and kubeadm's two role intermediates under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterCa {
    /// `ca`: signs apiserver serving certs and every cluster client cert.
    pub root: CertifiedKey,
    /// `etcd-ca`, under `ca`: signs etcd node certs and etcd clients; etcd trusts only it.
    pub etcd: CertifiedKey,
    /// `front-proxy-ca`, under `ca`: signs front-proxy-client.
    pub front_proxy: CertifiedKey,
}

/// The key pair kube-apiserver signs and verifies service-account tokens with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountKeyPair {
    /// SPKI PEM (`sa.pub`).
    pub public_key_pem: String,
    /// PKCS#8 PEM (`sa.key`).
    pub private_key_pem: SecretText,
}

/// A serving certificate to sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingCertRequest {
    /// Subject CN, e.g. `kube-apiserver` or the node name.
    pub common_name: String,
    /// Every name and address a client may dial.
    pub sans: SubjectAltNames,
    /// Also allow clientAuth, as etcd members need for peer traffic.
    pub client_auth: bool,
}

/// A client certificate to sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertRequest {
    /// Subject CN: the Kubernetes user name, e.g. `kubernetes-admin`.
    pub common_name: String,
    /// Subject O values: the Kubernetes groups, e.g. `system:masters`.
    pub organizations: Vec<String>,
}

/// Why trust material could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The request cannot be turned into a certificate (e.g. a SAN the encoding refuses).
    #[error("invalid certificate request: {0}")]
    InvalidRequest(String),
    /// The issuer's certificate or key cannot be used (unparsable, wrong pairing).
    #[error("unusable issuer: {0}")]
    UnusableIssuer(String),
    /// Anything else, e.g. the blocking pool was shut down.
    #[error("certificate operation failed: {0}")]
    Failed(String),
}

/// Creates and signs a cluster's trust material.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Pki: Send + Sync {
    /// Creates `cluster`'s root CA and its `etcd-ca` and `front-proxy-ca` intermediates.
    async fn create_cluster_ca(&self, cluster: ClusterId) -> Result<ClusterCa, PkiError>;

    /// Creates the service-account signing key pair.
    async fn create_service_account_key(&self) -> Result<ServiceAccountKeyPair, PkiError>;

    /// Signs a serving certificate (serverAuth, and clientAuth when asked) with a fresh key.
    async fn sign_serving_cert(
        &self,
        issuer: &CertifiedKey,
        request: &ServingCertRequest,
    ) -> Result<CertifiedKey, PkiError>;

    /// Signs a client certificate (clientAuth) with a fresh key.
    async fn sign_client_cert(
        &self,
        issuer: &CertifiedKey,
        request: &ClientCertRequest,
    ) -> Result<CertifiedKey, PkiError>;
}
