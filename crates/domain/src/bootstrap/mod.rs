//! The boot path (docs/ARCHITECTURE.md §6): a node proves it is that node with its bootstrap token and gets
//! exactly the files it must run, in kubeadm's layout — rendered from persisted rows only,
//! nothing signed at fetch time.

mod manifests;
mod reissue;

use std::sync::Arc;

use time::OffsetDateTime;

use crate::found_cluster::{KubeconfigSpec, render_kubeconfig};
pub use reissue::{ReissueError, ReissueToken, ReissuedToken};

use crate::model::{BootstrapTokenHash, ClusterId, NodeName, SecretText};
use crate::ports::Chain;
use crate::ports::pki::{CertifiedKey, SharedClientCert};
use crate::ports::repo::{BootstrapMaterial, Repo, RepoError};
use crate::settings::{SettingsError, positive};

/// What a deployment configures about the control plane its nodes run: the `[bootstrap]`
/// section (check it with [`BundleSettings::checked`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleSettings {
    /// e.g. `v1.32.4`: the tag of kube-apiserver, kube-controller-manager and kube-scheduler.
    pub kubernetes_version: String,
    /// e.g. `registry.k8s.io`.
    pub image_repository: String,
    /// e.g. `registry.k8s.io/etcd:3.5.16-0`.
    pub etcd_image: String,
    /// How long a node's token keeps working after its first bundle was handed out, seconds
    /// (a node that failed half-way may fetch again meanwhile; after it, the token in the VM's
    /// userdata is worth nothing).
    #[serde(default = "default_token_reuse_window_secs")]
    pub token_reuse_window_secs: u64,
}

fn default_token_reuse_window_secs() -> u64 {
    600
}

impl BundleSettings {
    /// The settings as configured, checked; errors name their key within the section.
    ///
    /// # Errors
    /// A value that is not a plain image reference or tag.
    pub fn checked(self) -> Result<Self, SettingsError> {
        let window = positive("token_reuse_window_secs", self.token_reuse_window_secs)?;
        Ok(Self {
            token_reuse_window_secs: window,
            ..Self::new(
                &self.kubernetes_version,
                &self.image_repository,
                &self.etcd_image,
            )?
        })
    }

    /// How long a token keeps working after its first fetch.
    pub fn token_reuse_window(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.token_reuse_window_secs)
    }

    /// Checks the values are plain image references.
    ///
    /// # Errors
    /// A value that is not a plain image reference or tag, naming its key.
    pub fn new(
        kubernetes_version: &str,
        image_repository: &str,
        etcd_image: &str,
    ) -> Result<Self, SettingsError> {
        let plain = |what: &str, value: &str| {
            let ok = !value.is_empty()
                && value.len() <= 255
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"./:-_@".contains(&b));
            if ok {
                Ok(())
            } else {
                Err(SettingsError::new(
                    what,
                    format!("{value:?} is not an image reference or tag"),
                ))
            }
        };
        plain("kubernetes_version", kubernetes_version)?;
        plain("image_repository", image_repository)?;
        plain("etcd_image", etcd_image)?;
        Ok(Self {
            kubernetes_version: kubernetes_version.to_owned(),
            image_repository: image_repository.trim_end_matches('/').to_owned(),
            etcd_image: etcd_image.to_owned(),
            token_reuse_window_secs: default_token_reuse_window_secs(),
        })
    }
}

impl Default for BundleSettings {
    fn default() -> Self {
        Self {
            kubernetes_version: "v1.32.4".to_owned(),
            image_repository: "registry.k8s.io".to_owned(),
            etcd_image: "registry.k8s.io/etcd:3.5.16-0".to_owned(),
            token_reuse_window_secs: default_token_reuse_window_secs(),
        }
    }
}

/// One file of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleFile {
    /// Absolute path on the node, e.g. `/etc/kubernetes/pki/ca.crt`.
    pub path: String,
    /// Unix mode: 0600 for keys and kubeconfigs, 0644 otherwise.
    pub mode: u32,
    /// The contents (secret: keys and kubeconfigs are among them).
    pub contents: SecretText,
}

/// Everything one node needs, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The cluster.
    pub cluster_id: ClusterId,
    /// The node.
    pub node_name: NodeName,
    /// The files, in a stable order.
    pub files: Vec<BundleFile>,
}

impl Bundle {
    /// The directories the files live in, parents first (for archive formats that want them).
    pub fn directories(&self) -> Vec<String> {
        let mut dirs: Vec<String> = Vec::new();
        for file in &self.files {
            let mut at = String::new();
            let parts: Vec<&str> = file.path.trim_start_matches('/').split('/').collect();
            for part in &parts[..parts.len() - 1] {
                at.push('/');
                at.push_str(part);
                if !dirs.contains(&at) {
                    dirs.push(at.clone());
                }
            }
        }
        dirs
    }
}

const PKI: &str = "/etc/kubernetes/pki";
const PUBLIC: u32 = 0o644;
const PRIVATE: u32 = 0o600;

fn file(path: String, mode: u32, contents: SecretText) -> BundleFile {
    BundleFile {
        path,
        mode,
        contents,
    }
}

fn pair(files: &mut Vec<BundleFile>, base: &str, cert: &CertifiedKey) {
    files.push(file(
        format!("{PKI}/{base}.crt"),
        PUBLIC,
        SecretText::new(&cert.cert_pem),
    ));
    files.push(file(
        format!("{PKI}/{base}.key"),
        PRIVATE,
        cert.key_pem.clone(),
    ));
}

/// Renders a node's bundle: kubeadm's `/etc/kubernetes/pki`, the component kubeconfigs (whose
/// server is the first control-plane node's address), and the static pod manifests.
pub fn render_bundle(
    material: &BootstrapMaterial,
    settings: &BundleSettings,
) -> Result<Bundle, String> {
    let m = material;
    let mut files = Vec::with_capacity(40);
    pair(&mut files, "ca", &m.ca.root);
    files.push(file(
        format!("{PKI}/sa.key"),
        PRIVATE,
        m.service_account.private_key_pem.clone(),
    ));
    files.push(file(
        format!("{PKI}/sa.pub"),
        PUBLIC,
        SecretText::new(&m.service_account.public_key_pem),
    ));
    pair(&mut files, "apiserver", &m.apiserver_cert);
    pair(
        &mut files,
        "apiserver-kubelet-client",
        m.shared.get(SharedClientCert::ApiserverKubeletClient),
    );
    pair(
        &mut files,
        "apiserver-etcd-client",
        m.shared.get(SharedClientCert::ApiserverEtcdClient),
    );
    pair(&mut files, "front-proxy-ca", &m.ca.front_proxy);
    pair(
        &mut files,
        "front-proxy-client",
        m.shared.get(SharedClientCert::FrontProxyClient),
    );
    pair(&mut files, "etcd/ca", &m.ca.etcd);
    pair(&mut files, "etcd/server", &m.etcd_cert);
    pair(&mut files, "etcd/peer", &m.etcd_cert);
    pair(
        &mut files,
        "etcd/healthcheck-client",
        m.shared.get(SharedClientCert::EtcdHealthcheckClient),
    );

    let first = m
        .nodes
        .first()
        .ok_or_else(|| format!("cluster {} has no nodes", m.cluster_id))?;
    let server = format!(
        "https://{}:{}",
        first.addresses.ipv4,
        m.networking.api_server_port()
    );
    let cluster_name = m.cluster_id.label();
    let kubelet_user = format!("system:node:{}", m.node.name);
    for (name, user, client) in [
        (
            "controller-manager.conf",
            SharedClientCert::ControllerManager.common_name(),
            m.shared.get(SharedClientCert::ControllerManager),
        ),
        (
            "scheduler.conf",
            SharedClientCert::Scheduler.common_name(),
            m.shared.get(SharedClientCert::Scheduler),
        ),
        ("kubelet.conf", kubelet_user.as_str(), &m.kubelet_cert),
    ] {
        let yaml = render_kubeconfig(&KubeconfigSpec {
            cluster_name: &cluster_name,
            server: &server,
            ca_cert_pem: &m.ca.root.cert_pem,
            user_name: user,
            client,
        })?;
        files.push(file(format!("/etc/kubernetes/{name}"), PRIVATE, yaml));
    }
    for (name, yaml) in manifests::render(m, settings)? {
        files.push(file(
            format!("/etc/kubernetes/manifests/{name}"),
            PUBLIC,
            SecretText::new(yaml),
        ));
    }
    Ok(Bundle {
        cluster_id: m.cluster_id,
        node_name: m.node.name.clone(),
        files,
    })
}

/// Why a bundle was not handed out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchBundleError {
    /// No such node, or a wrong, expired or other node's token: deliberately one answer.
    #[error("invalid bootstrap token")]
    Unauthorized,
    /// The node's genuine token, but its reuse window after the first fetch has passed (to the
    /// caller, the same answer as `Unauthorized`).
    #[error("invalid bootstrap token")]
    Burned,
    /// The database could not be read.
    #[error("cluster truth unavailable")]
    Unavailable(#[source] RepoError),
    /// The stored rows cannot make a bundle.
    #[error("the bundle cannot be rendered: {0}")]
    Unrenderable(String),
}

/// The use case behind `GET /bootstrap/{cluster_id}/nodes/{node_name}`.
pub struct FetchBundle {
    repo: Arc<dyn Repo>,
    settings: BundleSettings,
}

impl std::fmt::Debug for FetchBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchBundle")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl FetchBundle {
    /// Wires the use case.
    pub fn new(repo: Arc<dyn Repo>, settings: BundleSettings) -> Self {
        Self { repo, settings }
    }

    /// The bundle of node `node` of cluster `cluster`, for the holder of its token (as they
    /// arrive in the request; anything malformed is simply unauthorized). The token is checked
    /// first, from one indexed read of its hash; nothing is opened (decrypted) for a request
    /// that is refused, so a flood of wrong tokens costs a query each and no key, and an unknown
    /// node and a wrong token take the same path.
    pub async fn fetch(
        &self,
        cluster: &str,
        node: &str,
        token: &str,
    ) -> Result<Bundle, FetchBundleError> {
        let presented = BootstrapTokenHash::of(token);
        let stored = self
            .repo
            .bootstrap_token(&presented)
            .await
            .map_err(FetchBundleError::Unavailable)?
            .ok_or(FetchBundleError::Unauthorized)?;
        // The hash comparison is constant-time; the node's identity and the token's life are
        // checked after it either way.
        let genuine = stored.hash.matches(token);
        let this_node = ClusterId::parse(cluster).is_ok_and(|id| id == stored.cluster)
            && stored.node.as_str() == node;
        let now = OffsetDateTime::now_utc();
        if !(genuine && this_node && now < stored.expires_at) {
            return Err(FetchBundleError::Unauthorized);
        }
        if stored
            .first_used_at
            .is_some_and(|first| now >= first + self.settings.token_reuse_window())
        {
            return Err(FetchBundleError::Burned);
        }
        let material = self
            .repo
            .bootstrap_material(stored.cluster, &stored.node)
            .await
            .map_err(FetchBundleError::Unavailable)?
            .ok_or(FetchBundleError::Unauthorized)?;
        // A token replaced between the two reads: the one presented is no longer the node's.
        if material.bootstrap_token_hash != stored.hash {
            return Err(FetchBundleError::Unauthorized);
        }
        let bundle =
            render_bundle(&material, &self.settings).map_err(FetchBundleError::Unrenderable)?;
        if stored.first_used_at.is_none()
            && let Err(e) = self
                .repo
                .note_bootstrap_fetch(stored.cluster, &stored.node, &stored.hash)
                .await
        {
            // The bundle goes out anyway; the token burns from a later fetch instead.
            tracing::warn!(error = %Chain(&e), "noting a bundle fetch failed");
        }
        Ok(bundle)
    }
}

#[cfg(test)]
mod tests;
