//! Step 7: every certificate a founding signs, and the rows they go into.

use futures::future::try_join_all;
use time::OffsetDateTime;

use super::{FoundCluster, Founding, FoundingFailure, PlannedNode};
use crate::credentials::{AdminKubeconfig, FOUNDING_ADMIN_USER, MintError};
use crate::model::{SecretText, apiserver_sans, etcd_sans};
use crate::ports::pki::{
    CertifiedKey, ClientCertRequest, ClusterCa, PkiError, ServingCertRequest, SharedClientCert,
    SharedClientCerts,
};
use crate::ports::repo::{ApiServerNodeRecord, EtcdNodeRecord, NodePlacement};

const APISERVER_COMMON_NAME: &str = "kube-apiserver";
const NODES_GROUP: &str = "system:nodes";

/// A node's own certificates.
pub(super) struct NodeCerts {
    etcd: CertifiedKey,
    apiserver: CertifiedKey,
    kubelet: CertifiedKey,
}

/// What step 7 makes: the node rows' certificates and the shared ones.
pub(super) struct Signed {
    pub(super) nodes: Vec<NodeCerts>,
    pub(super) shared: SharedClientCerts,
    pub(super) admin_kubeconfig: SecretText,
}

impl FoundCluster {
    /// Step 7: per node, an etcd server+peer cert under `etcd-ca`, an apiserver serving cert and
    /// a kubelet client cert under `ca`; then the client certs all nodes share, and the admin's.
    /// Nodes are signed concurrently (the PKI adapter works off the executor); nothing is signed
    /// at fetch time.
    pub(super) async fn sign_certs(
        &self,
        f: &Founding,
        ca: &ClusterCa,
        nodes: &[NodePlacement],
    ) -> Result<Signed, FoundingFailure> {
        let networking = &self.settings.networking;
        let node_certs = try_join_all(nodes.iter().map(|node| async move {
            let etcd = ServingCertRequest {
                common_name: node.name.as_str().to_owned(),
                sans: etcd_sans(&node.name, &node.addresses),
                client_auth: true,
            };
            let etcd = self
                .serving(&ca.etcd, &etcd, || format!("etcd cert of {}", node.name))
                .await?;
            let apiserver = ServingCertRequest {
                common_name: APISERVER_COMMON_NAME.to_owned(),
                sans: apiserver_sans(
                    &node.name,
                    &f.names.control_plane,
                    networking,
                    &node.addresses,
                ),
                client_auth: false,
            };
            let apiserver = self
                .serving(&ca.root, &apiserver, || {
                    format!("apiserver cert of {}", node.name)
                })
                .await?;
            let kubelet = ClientCertRequest {
                common_name: format!("system:node:{}", node.name),
                organizations: vec![NODES_GROUP.to_owned()],
                not_after: None,
            };
            let kubelet = self
                .client(&ca.root, &kubelet, || {
                    format!("kubelet client cert of {}", node.name)
                })
                .await?;
            Ok(NodeCerts {
                etcd,
                apiserver,
                kubelet,
            })
        }))
        .await?;

        let shared = try_join_all(SharedClientCert::ALL.map(|which| {
            let issuer = ca.get(which.issuer());
            let request = which.request();
            async move {
                self.client(issuer, &request, || which.stored_name().to_owned())
                    .await
            }
        }))
        .await?;
        let shared = shared.try_into().map(SharedClientCerts::new).map_err(|_| {
            FoundingFailure::SignCertificate {
                certificate: "shared client".to_owned(),
                source: PkiError::Failed("a shared client certificate is missing".into()),
            }
        })?;
        let admin_kubeconfig = self.admin_kubeconfig(f, &ca.root).await?;
        Ok(Signed {
            nodes: node_certs,
            shared,
            admin_kubeconfig,
        })
    }

    async fn serving(
        &self,
        issuer: &CertifiedKey,
        request: &ServingCertRequest,
        what: impl FnOnce() -> String,
    ) -> Result<CertifiedKey, FoundingFailure> {
        self.ports
            .pki
            .sign_serving_cert(issuer, request)
            .await
            .map_err(|source| FoundingFailure::SignCertificate {
                certificate: what(),
                source,
            })
    }

    async fn client(
        &self,
        issuer: &CertifiedKey,
        request: &ClientCertRequest,
        what: impl FnOnce() -> String,
    ) -> Result<CertifiedKey, FoundingFailure> {
        self.ports
            .pki
            .sign_client_cert(issuer, request)
            .await
            .map_err(|source| FoundingFailure::SignCertificate {
                certificate: what(),
                source,
            })
    }

    /// The admin client cert and its kubeconfig, for the shared name, living as long as the
    /// deployment's default for admin credentials.
    async fn admin_kubeconfig(
        &self,
        f: &Founding,
        root: &CertifiedKey,
    ) -> Result<SecretText, FoundingFailure> {
        let (kubeconfig, _) = AdminKubeconfig {
            cluster: f.cluster_id,
            control_plane_dns_name: &f.names.control_plane,
            api_server_port: self.settings.networking.api_server_port(),
            root,
            user: FOUNDING_ADMIN_USER,
            expires_at: self.settings.admin_lifetime.expiry_from(f.created_at),
        }
        .mint(self.ports.pki.as_ref())
        .await
        .map_err(|e| match e {
            MintError::Sign(source) => FoundingFailure::SignCertificate {
                certificate: "admin client".to_owned(),
                source,
            },
            MintError::Render(why) => FoundingFailure::RenderKubeconfig(why),
        })?;
        Ok(kubeconfig)
    }

    /// The earliest `notAfter` of every certificate the cluster has: its CAs, the shared
    /// client certificates and each node's.
    pub(super) fn earliest_expiry(
        &self,
        ca: &ClusterCa,
        etcd: &[EtcdNodeRecord],
        apiserver: &[ApiServerNodeRecord],
        shared: &SharedClientCerts,
    ) -> Result<OffsetDateTime, FoundingFailure> {
        let certificates = [&ca.root, &ca.etcd, &ca.front_proxy]
            .into_iter()
            .chain(shared.iter().map(|(_, cert)| cert))
            .chain(etcd.iter().map(|row| &row.cert))
            .chain(
                apiserver
                    .iter()
                    .flat_map(|row| [&row.cert, &row.kubelet_cert]),
            );
        let mut earliest: Option<OffsetDateTime> = None;
        for certificate in certificates {
            let facts = self
                .ports
                .pki
                .certificate_facts(&certificate.cert_pem)
                .map_err(|source| FoundingFailure::SignCertificate {
                    certificate: "a certificate read back".to_owned(),
                    source,
                })?;
            earliest = Some(earliest.map_or(facts.not_after, |e| e.min(facts.not_after)));
        }
        earliest.ok_or_else(|| FoundingFailure::SignCertificate {
            certificate: "the cluster's certificates".to_owned(),
            source: PkiError::Failed("the cluster has no certificate".into()),
        })
    }

    /// The rows of the last transaction: one etcd row and one apiserver row per node.
    pub(super) fn node_rows(
        &self,
        f: &Founding,
        planned: &[PlannedNode],
        nodes: &[NodePlacement],
        certs: Vec<NodeCerts>,
    ) -> (Vec<EtcdNodeRecord>, Vec<ApiServerNodeRecord>) {
        let expires_at = f.created_at + self.settings.bootstrap_token_ttl;
        let mut etcd_rows = Vec::with_capacity(nodes.len());
        let mut apiserver_rows = Vec::with_capacity(nodes.len());
        for ((node, plan), certs) in nodes.iter().zip(planned).zip(certs) {
            etcd_rows.push(EtcdNodeRecord {
                cluster_id: f.cluster_id,
                node: node.clone(),
                cert: certs.etcd,
            });
            apiserver_rows.push(ApiServerNodeRecord {
                cluster_id: f.cluster_id,
                node: node.clone(),
                cert: certs.apiserver,
                kubelet_cert: certs.kubelet,
                bootstrap_token_hash: plan.token.hash(),
                bootstrap_token_expires_at: expires_at,
            });
        }
        (etcd_rows, apiserver_rows)
    }
}
