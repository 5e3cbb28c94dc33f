//! `Pki`: the cluster's trust material — CAs, the service-account signer, leaf certificates.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::BoxError;

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

/// Which of a cluster's CAs signs a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaRole {
    /// `ca`, the cluster root.
    Root,
    /// `etcd-ca`.
    Etcd,
    /// `front-proxy-ca`.
    FrontProxy,
}

impl ClusterCa {
    /// The CA of `role`.
    pub fn get(&self, role: CaRole) -> &CertifiedKey {
        match role {
            CaRole::Root => &self.root,
            CaRole::Etcd => &self.etcd,
            CaRole::FrontProxy => &self.front_proxy,
        }
    }
}

/// The client certificates every control-plane node of a cluster shares: kubeadm's, signed at
/// founding so that a bundle is pure rendering. This is the one list of them: the founding signs
/// them from it, storage keys them by [`SharedClientCert::stored_name`], bundles render them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SharedClientCert {
    /// kube-apiserver talking to etcd.
    ApiserverEtcdClient = 0,
    /// etcd's liveness probe.
    EtcdHealthcheckClient = 1,
    /// kube-apiserver proxying to extension API servers.
    FrontProxyClient = 2,
    /// kube-apiserver talking to kubelets.
    ApiserverKubeletClient = 3,
    /// kube-controller-manager's identity.
    ControllerManager = 4,
    /// kube-scheduler's identity.
    Scheduler = 5,
}

impl SharedClientCert {
    /// Every shared client certificate, in a stable order.
    pub const ALL: [Self; 6] = [
        Self::ApiserverEtcdClient,
        Self::EtcdHealthcheckClient,
        Self::FrontProxyClient,
        Self::ApiserverKubeletClient,
        Self::ControllerManager,
        Self::Scheduler,
    ];

    /// The name it is stored and logged under, e.g. `apiserver-etcd-client` (kubeadm's file
    /// name without the `.crt`).
    pub fn stored_name(self) -> &'static str {
        match self {
            Self::ApiserverEtcdClient => "apiserver-etcd-client",
            Self::EtcdHealthcheckClient => "etcd-healthcheck-client",
            Self::FrontProxyClient => "front-proxy-client",
            Self::ApiserverKubeletClient => "apiserver-kubelet-client",
            Self::ControllerManager => "controller-manager",
            Self::Scheduler => "scheduler",
        }
    }

    /// Subject CN: the user name the component authenticates as.
    pub fn common_name(self) -> &'static str {
        match self {
            Self::ApiserverEtcdClient => "kube-apiserver-etcd-client",
            Self::EtcdHealthcheckClient => "kube-etcd-healthcheck-client",
            Self::FrontProxyClient => "front-proxy-client",
            Self::ApiserverKubeletClient => "kube-apiserver-kubelet-client",
            Self::ControllerManager => "system:kube-controller-manager",
            Self::Scheduler => "system:kube-scheduler",
        }
    }

    /// Subject O, the group, if any. kube-apiserver's kubelet client is in `system:masters`, as
    /// before Kubernetes 1.29: plinth does not run `kubeadm init`, so the
    /// `kubeadm:cluster-admins` binding newer kubeadm relies on does not exist.
    pub fn group(self) -> Option<&'static str> {
        match self {
            Self::ApiserverKubeletClient => Some("system:masters"),
            _ => None,
        }
    }

    /// The CA that signs it: etcd's clients under `etcd-ca` (etcd trusts only that), the
    /// front proxy under `front-proxy-ca`, the rest under `ca`.
    pub fn issuer(self) -> CaRole {
        match self {
            Self::ApiserverEtcdClient | Self::EtcdHealthcheckClient => CaRole::Etcd,
            Self::FrontProxyClient => CaRole::FrontProxy,
            Self::ApiserverKubeletClient | Self::ControllerManager | Self::Scheduler => {
                CaRole::Root
            }
        }
    }

    /// The certificate request that makes it.
    pub fn request(self) -> ClientCertRequest {
        ClientCertRequest {
            common_name: self.common_name().to_owned(),
            organizations: self.group().map(str::to_owned).into_iter().collect(),
            not_after: None,
        }
    }
}

impl std::fmt::Display for SharedClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.stored_name())
    }
}

/// One certificate of each [`SharedClientCert`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedClientCerts([CertifiedKey; 6]);

impl SharedClientCerts {
    /// The certificates in [`SharedClientCert::ALL`]'s order.
    pub fn new(certs: [CertifiedKey; 6]) -> Self {
        Self(certs)
    }

    /// Builds each certificate with `make`, stopping at the first error.
    ///
    /// # Errors
    /// The first error `make` returns.
    pub fn try_from_fn<E>(
        mut make: impl FnMut(SharedClientCert) -> Result<CertifiedKey, E>,
    ) -> Result<Self, E> {
        let mut certs = Vec::with_capacity(SharedClientCert::ALL.len());
        for which in SharedClientCert::ALL {
            certs.push(make(which)?);
        }
        match certs.try_into() {
            Ok(certs) => Ok(Self(certs)),
            Err(_) => unreachable!("one certificate per SharedClientCert::ALL entry"),
        }
    }

    /// The certificate of `which`.
    pub fn get(&self, which: SharedClientCert) -> &CertifiedKey {
        &self.0[which as usize]
    }

    /// Each certificate with what it is.
    pub fn iter(&self) -> impl Iterator<Item = (SharedClientCert, &CertifiedKey)> {
        SharedClientCert::ALL.into_iter().zip(self.0.iter())
    }
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
    /// `notAfter`, to the second; `None`: the adapter's configured leaf lifetime.
    pub not_after: Option<OffsetDateTime>,
}

/// What a certificate says of itself, for audit records and expiry reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    /// The serial number, lowercase hex.
    pub serial_hex: String,
    /// `notAfter`.
    pub not_after: OffsetDateTime,
}

/// Why trust material could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// The request cannot be turned into a certificate (e.g. a SAN the encoding refuses).
    #[error("invalid certificate request: {0}")]
    InvalidRequest(String),
    /// The issuer's certificate or key cannot be used (unparsable, wrong pairing).
    #[error("unusable issuer")]
    UnusableIssuer(#[source] BoxError),
    /// Anything else, e.g. the blocking pool was shut down.
    #[error("certificate operation failed")]
    Failed(#[source] BoxError),
}

/// Creates and signs a cluster's trust material.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Pki: Send + Sync {
    /// Creates `cluster`'s root CA and its `etcd-ca` and `front-proxy-ca` intermediates.
    ///
    /// # Errors
    /// `Failed` when key generation or signing fails.
    async fn create_cluster_ca(&self, cluster: ClusterId) -> Result<ClusterCa, PkiError>;

    /// Creates the service-account signing key pair.
    ///
    /// # Errors
    /// `Failed` when key generation fails.
    async fn create_service_account_key(&self) -> Result<ServiceAccountKeyPair, PkiError>;

    /// Signs a serving certificate (serverAuth, and clientAuth when asked) with a fresh key.
    ///
    /// # Errors
    /// `InvalidRequest` for a name the encoding refuses, `UnusableIssuer` for an issuer whose
    /// certificate or key cannot be read, `Failed` otherwise.
    async fn sign_serving_cert(
        &self,
        issuer: &CertifiedKey,
        request: &ServingCertRequest,
    ) -> Result<CertifiedKey, PkiError>;

    /// Signs a client certificate (clientAuth) with a fresh key.
    ///
    /// # Errors
    /// As for a serving certificate; also `InvalidRequest` for a `not_after` that is past or
    /// beyond the issuer's own.
    async fn sign_client_cert(
        &self,
        issuer: &CertifiedKey,
        request: &ClientCertRequest,
    ) -> Result<CertifiedKey, PkiError>;

    /// Reads a certificate's serial and expiry.
    ///
    /// # Errors
    /// `InvalidRequest` when `cert_pem` is not a certificate.
    fn certificate_facts(&self, cert_pem: &str) -> Result<CertificateFacts, PkiError>;
}
