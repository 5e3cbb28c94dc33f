//! Admin credentials on demand: a kubeconfig for one of an organization's clusters whose client
//! certificate (`system:masters`) names who asked for it and expires when they asked. Nothing of
//! it is stored: a lost kubeconfig is replaced by issuing another, and each issue is an audit
//! event (who, which cluster, which serial, until when), never the key.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use time::OffsetDateTime;

use crate::found_cluster::{KubeconfigSpec, render_kubeconfig};
use crate::model::{ClusterId, ClusterStatus, InvalidValue, OrgId, SecretText};
use crate::ports::Chain;
use crate::ports::pki::{CertifiedKey, ClientCertRequest, Pki, PkiError};
use crate::ports::repo::{Repo, RepoError};
use crate::settings::SettingsError;

/// The group of every admin credential: plinth does not run `kubeadm init`, so the
/// `kubeadm:cluster-admins` binding newer kubeadm relies on does not exist.
pub const ADMIN_GROUP: &str = "system:masters";

/// The user of the admin kubeconfig a founding (or its replay) answers with.
pub const FOUNDING_ADMIN_USER: &str = "kubernetes-admin";

/// The tracing target of audit events.
pub const AUDIT_TARGET: &str = "plinth::audit";

/// How long an admin credential lives: 10 minutes to 30 days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredentialsLifetime(Duration);

impl CredentialsLifetime {
    /// The shortest lifetime, seconds.
    pub const MIN_SECS: u64 = 600;
    /// The longest lifetime, seconds (30 days).
    pub const MAX_SECS: u64 = 2_592_000;

    /// A lifetime of `secs` seconds.
    ///
    /// # Errors
    /// Outside 600 to 2,592,000.
    pub fn from_secs(secs: u64) -> Result<Self, InvalidValue> {
        if (Self::MIN_SECS..=Self::MAX_SECS).contains(&secs) {
            Ok(Self(Duration::from_secs(secs)))
        } else {
            Err(InvalidValue(format!(
                "must be from {} to {} seconds",
                Self::MIN_SECS,
                Self::MAX_SECS
            )))
        }
    }

    /// The lifetime.
    pub fn as_duration(self) -> Duration {
        self.0
    }

    /// The expiry of a credential issued at `now`, to the whole second (what `notAfter` holds).
    pub fn expiry_from(self, now: OffsetDateTime) -> OffsetDateTime {
        let end = now + self.0;
        end.replace_nanosecond(0).unwrap_or(end)
    }
}

/// `[credentials]` as configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsSection {
    /// Lifetime of an admin credential whose request names none (and of the founding's own).
    pub default_expiration_secs: u64,
}

impl CredentialsSection {
    /// The checked default lifetime; errors name their key within the section.
    ///
    /// # Errors
    /// A default outside the allowed lifetimes.
    pub fn default_lifetime(&self) -> Result<CredentialsLifetime, SettingsError> {
        CredentialsLifetime::from_secs(self.default_expiration_secs)
            .map_err(|InvalidValue(why)| SettingsError::new("default_expiration_secs", why))
    }
}

/// A freshly issued admin credential.
#[derive(Debug, Clone)]
pub struct AdminCredentials {
    /// The kubeconfig, client key included.
    pub kubeconfig: SecretText,
    /// The client certificate's `notAfter`.
    pub expires_at: OffsetDateTime,
    /// The client certificate's serial, lowercase hex.
    pub serial_hex: String,
}

/// Where an admin kubeconfig points, and who it is for.
#[derive(Debug)]
pub(crate) struct AdminKubeconfig<'a> {
    pub(crate) cluster: ClusterId,
    /// `api.cluster-{id}.{zone}`.
    pub(crate) control_plane_dns_name: &'a str,
    pub(crate) api_server_port: u16,
    /// The cluster's root CA, key opened.
    pub(crate) root: &'a CertifiedKey,
    /// The certificate's CN: the Kubernetes user name.
    pub(crate) user: &'a str,
    pub(crate) expires_at: OffsetDateTime,
}

/// Why an admin kubeconfig could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MintError {
    #[error("signing the admin client certificate failed")]
    Sign(#[source] PkiError),
    #[error("rendering the admin kubeconfig failed: {0}")]
    Render(String),
}

impl AdminKubeconfig<'_> {
    /// Signs a client certificate under the root CA and renders the kubeconfig around it.
    pub(crate) async fn mint(
        &self,
        pki: &dyn Pki,
    ) -> Result<(SecretText, CertifiedKey), MintError> {
        let request = ClientCertRequest {
            common_name: self.user.to_owned(),
            organizations: vec![ADMIN_GROUP.to_owned()],
            not_after: Some(self.expires_at),
        };
        let client = pki
            .sign_client_cert(self.root, &request)
            .await
            .map_err(MintError::Sign)?;
        let cluster_name = self.cluster.label();
        let user_name = format!("{cluster_name}-admin");
        let server = format!(
            "https://{}:{}",
            self.control_plane_dns_name, self.api_server_port
        );
        let kubeconfig = render_kubeconfig(&KubeconfigSpec {
            cluster_name: &cluster_name,
            server: &server,
            ca_cert_pem: &self.root.cert_pem,
            user_name: &user_name,
            client: &client,
        })
        .map_err(MintError::Render)?;
        Ok((kubeconfig, client))
    }
}

/// Why credentials were not issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// No such cluster in the organization.
    #[error("no cluster {0} in your organization")]
    NotFound(ClusterId),
    /// The cluster is not ready (its founding still runs).
    #[error("cluster {cluster} is {status}; credentials are issued for ready clusters only")]
    NotReady {
        /// The cluster.
        cluster: ClusterId,
        /// Where it is.
        status: ClusterStatus,
    },
    /// The caller's name cannot be a certificate's CN.
    #[error("the caller cannot be named in a certificate: {0}")]
    UnusableSubject(String),
    /// The database failed.
    #[error("reading the cluster failed")]
    Repo(#[source] RepoError),
    /// The certificate could not be made.
    #[error("issuing the credentials failed: {0}")]
    Issue(String),
}

/// The longest subject a credential's CN takes. X.520 bounds a CN at 64 characters, but
/// Kubernetes identities are often longer and Go accepts them (as the kubelets' do).
pub const MAX_SUBJECT_LEN: usize = 128;

/// The use case: issues admin credentials for an organization's ready cluster.
#[derive(Clone)]
pub struct IssueCredentials {
    repo: Arc<dyn Repo>,
    pki: Arc<dyn Pki>,
    default_lifetime: CredentialsLifetime,
}

impl std::fmt::Debug for IssueCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssueCredentials")
            .field("default_lifetime", &self.default_lifetime)
            .finish_non_exhaustive()
    }
}

impl IssueCredentials {
    /// Wires the use case.
    pub fn new(
        repo: Arc<dyn Repo>,
        pki: Arc<dyn Pki>,
        default_lifetime: CredentialsLifetime,
    ) -> Self {
        Self {
            repo,
            pki,
            default_lifetime,
        }
    }

    /// The lifetime of credentials whose request names none.
    pub fn default_lifetime(&self) -> CredentialsLifetime {
        self.default_lifetime
    }

    /// Issues a kubeconfig for `cluster` of `org` whose certificate names `subject` (the
    /// caller's token subject) and lives `lifetime` (or the default).
    ///
    /// # Errors
    /// `NotFound` for a cluster the organization does not have, `NotReady` while it is being
    /// founded, `UnusableSubject` for a subject no CN can hold, `Repo` or `Issue` otherwise.
    pub async fn issue(
        &self,
        org: &OrgId,
        cluster: ClusterId,
        subject: &str,
        lifetime: Option<CredentialsLifetime>,
    ) -> Result<AdminCredentials, CredentialsError> {
        if subject.is_empty()
            || subject.len() > MAX_SUBJECT_LEN
            || subject.chars().any(char::is_control)
        {
            return Err(CredentialsError::UnusableSubject(format!(
                "a subject has 1 to {MAX_SUBJECT_LEN} bytes and no control characters"
            )));
        }
        let details = self
            .repo
            .find_cluster(org, cluster)
            .await
            .map_err(CredentialsError::Repo)?
            .ok_or(CredentialsError::NotFound(cluster))?;
        if details.summary.status != ClusterStatus::Ready {
            return Err(CredentialsError::NotReady {
                cluster,
                status: details.summary.status,
            });
        }
        let root = self
            .repo
            .cluster_root_ca(org, cluster)
            .await
            .map_err(CredentialsError::Repo)?
            .ok_or(CredentialsError::NotFound(cluster))?;
        let lifetime = lifetime.unwrap_or(self.default_lifetime);
        let expires_at = lifetime.expiry_from(OffsetDateTime::now_utc());
        let credentials = AdminKubeconfig {
            cluster,
            control_plane_dns_name: &details.summary.control_plane_dns_name,
            api_server_port: details.networking.api_server_port(),
            root: &root,
            user: subject,
            expires_at,
        }
        .issue(self.pki.as_ref())
        .await
        .map_err(|e| CredentialsError::Issue(Chain(&e).to_string()))?;
        tracing::info!(
            target: AUDIT_TARGET,
            event = "admin_credentials_issued",
            org = %org,
            subject,
            cluster_id = %cluster,
            serial = %credentials.serial_hex,
            expires_at = %credentials.expires_at,
            "admin credentials issued"
        );
        Ok(credentials)
    }
}

impl AdminKubeconfig<'_> {
    /// Mints the kubeconfig and reads back what the certificate says (serial, `notAfter`).
    pub(crate) async fn issue(&self, pki: &dyn Pki) -> Result<AdminCredentials, MintError> {
        let (kubeconfig, client) = self.mint(pki).await?;
        let facts = pki
            .certificate_facts(&client.cert_pem)
            .map_err(MintError::Sign)?;
        Ok(AdminCredentials {
            kubeconfig,
            expires_at: facts.not_after,
            serial_hex: facts.serial_hex,
        })
    }
}

#[cfg(test)]
mod tests;
