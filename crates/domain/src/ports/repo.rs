//! `Repo`: plinth's durable cluster truth (`kubeclusters`, `etcdnodes`, `apiservernodes`) as the
//! API and the boot path read it, and the compute platform's `vms` table, read-only. The writes
//! of a founding go through the `Operations` port, step by step.

use std::net::{Ipv4Addr, Ipv6Addr};

use async_trait::async_trait;
use time::OffsetDateTime;

use super::BoxError;
use crate::model::{
    BootstrapTokenHash, ClusterId, ClusterName, ClusterSpec, ClusterStatus, Networking,
    NodeAddresses, NodeName, NodeOrdinal, OrgId, SecurityGroupId, VmId,
};
use crate::ports::pki::{CertifiedKey, ClusterCa, ServiceAccountKeyPair, SharedClientCerts};

/// The cluster row a founding claims its name with, before any key or resource is made. Its
/// trust material is stored a step later ([`crate::ports::operations::Operations`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewClusterRecord {
    /// The cluster.
    pub id: ClusterId,
    /// Its organization.
    pub org: OrgId,
    /// The checked request (name, count, subnet, flavor, image, given groups).
    pub spec: ClusterSpec,
    /// In-cluster networking.
    pub networking: Networking,
    /// `api.cluster-{id}.{zone}`.
    pub control_plane_dns_name: String,
    /// `*.apps.cluster-{id}.{zone}`.
    pub ingress_wildcard_dns_name: String,
    /// When the founding started.
    pub created_at: OffsetDateTime,
}

/// The security groups a cluster's VMs ended up with (step 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSecurityGroups {
    /// Every group attached to the control-plane VMs.
    pub attached: Vec<SecurityGroupId>,
    /// The group plinth created for this cluster, if it created one (to delete with it).
    pub created: Option<SecurityGroupId>,
}

/// A VM as the compute platform's `vms` table has it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmIdentity {
    /// The VM.
    pub id: VmId,
    /// Its current name.
    pub name: String,
    /// Private IPv4, once assigned.
    pub ipv4: Option<Ipv4Addr>,
    /// IPv6, if any.
    pub ipv6: Option<Ipv6Addr>,
    /// Public IPv4, if any.
    pub public_ipv4: Option<Ipv4Addr>,
}

/// Where a node is: its ordinal, deterministic name, VM and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlacement {
    /// 1-based position.
    pub ordinal: NodeOrdinal,
    /// `cp-{n}.cluster-{id}.internal`.
    pub name: NodeName,
    /// The node's VM.
    pub vm_id: VmId,
    /// The VM's addresses.
    pub addresses: NodeAddresses,
}

/// One `etcdnodes` row: a node's etcd member identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdNodeRecord {
    /// The cluster.
    pub cluster_id: ClusterId,
    /// The node.
    pub node: NodePlacement,
    /// Server and peer certificate (CN = node name); the adapter encrypts the key.
    pub cert: CertifiedKey,
}

/// One `apiservernodes` row: a node's kube-apiserver identity and its bootstrap credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiServerNodeRecord {
    /// The cluster.
    pub cluster_id: ClusterId,
    /// The node.
    pub node: NodePlacement,
    /// Serving certificate; the adapter encrypts the key.
    pub cert: CertifiedKey,
    /// The node's kubelet client certificate (`system:node:<name>`, `system:nodes`).
    pub kubelet_cert: CertifiedKey,
    /// Hash of the node's bootstrap token; the token itself is only in the VM's userdata.
    pub bootstrap_token_hash: BootstrapTokenHash,
    /// When the bootstrap token stops working.
    pub bootstrap_token_expires_at: OffsetDateTime,
}

/// Everything one node's bootstrap bundle is rendered from, keys opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapMaterial {
    /// The cluster.
    pub cluster_id: ClusterId,
    /// In-cluster networking.
    pub networking: Networking,
    /// `api.cluster-{id}.{zone}`.
    pub control_plane_dns_name: String,
    /// Root and intermediate CAs, with keys.
    pub ca: ClusterCa,
    /// The service-account signer.
    pub service_account: ServiceAccountKeyPair,
    /// The shared client certificates.
    pub shared: SharedClientCerts,
    /// Every node of the cluster, in ordinal order (for etcd's initial cluster).
    pub nodes: Vec<NodePlacement>,
    /// The node the bundle is for.
    pub node: NodePlacement,
    /// Its etcd server and peer certificate.
    pub etcd_cert: CertifiedKey,
    /// Its kube-apiserver serving certificate.
    pub apiserver_cert: CertifiedKey,
    /// Its kubelet client certificate.
    pub kubelet_cert: CertifiedKey,
    /// Hash of its bootstrap token.
    pub bootstrap_token_hash: BootstrapTokenHash,
    /// When the token stops working.
    pub bootstrap_token_expires_at: OffsetDateTime,
    /// When a bundle was first handed out for this token; the token is burned a reuse window
    /// after.
    pub bootstrap_token_first_used_at: Option<OffsetDateTime>,
}

/// A node's bootstrap token as stored: all a fetch checks before anything is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapTokenRecord {
    /// The node's cluster.
    pub cluster: ClusterId,
    /// The node.
    pub node: NodeName,
    /// The token's hash.
    pub hash: BootstrapTokenHash,
    /// When it stops working.
    pub expires_at: OffsetDateTime,
    /// When a bundle was first handed out for it.
    pub first_used_at: Option<OffsetDateTime>,
}

/// One certificate of a cluster, public part only, for expiry reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedCertificate {
    /// What it is: `ca`, `etcd-ca`, `front-proxy-ca`, a shared client certificate's stored name,
    /// or `<node name>/etcd`, `<node name>/apiserver`, `<node name>/kubelet`.
    pub name: String,
    /// The certificate, PEM.
    pub cert_pem: String,
}

/// A cluster as listed: no key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSummary {
    /// The cluster.
    pub id: ClusterId,
    /// Optional name.
    pub name: Option<ClusterName>,
    /// Provisioning, ready or deleting.
    pub status: ClusterStatus,
    /// Node count.
    pub control_plane_count: u8,
    /// `api.cluster-{id}.{zone}`.
    pub control_plane_dns_name: String,
    /// Founding time.
    pub created_at: OffsetDateTime,
}

/// A cluster with its nodes: no key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDetails {
    /// The listing fields.
    pub summary: ClusterSummary,
    /// The shape it was founded with.
    pub spec: ClusterSpec,
    /// The groups its VMs have.
    pub security_groups: ClusterSecurityGroups,
    /// In-cluster networking.
    pub networking: Networking,
    /// `*.apps.cluster-{id}.{zone}`.
    pub ingress_wildcard_dns_name: String,
    /// Nodes in ordinal order (none while provisioning).
    pub nodes: Vec<NodePlacement>,
    /// Root CA certificate (public), for clients that want to trust the cluster; none until the
    /// founding has made it.
    pub ca_cert_pem: Option<String>,
    /// Whether the founding published the control-plane name; none until it has tried (or if
    /// its replica stopped before it could say).
    pub dns: Option<DnsOutcome>,
}

/// What step 10 did about the control plane's DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsOutcome {
    /// The name was published.
    pub configured: bool,
    /// Why it was not, when it was not.
    pub error: Option<String>,
}

/// Where a page of clusters starts: after this (created_at, id), newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCursor {
    /// Founding time of the last cluster on the previous page.
    pub created_at: OffsetDateTime,
    /// Its id, breaking ties.
    pub id: ClusterId,
}

/// A request for one page of an organization's clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// At most this many clusters (1 to 100; callers clamp).
    pub limit: u32,
    /// Continue after this cluster; `None` for the first page.
    pub after: Option<PageCursor>,
    /// Only clusters with a certificate whose `notAfter` is before this.
    pub expiring_before: Option<OffsetDateTime>,
}

/// One page of clusters, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPage {
    /// The clusters.
    pub clusters: Vec<ClusterSummary>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<PageCursor>,
}

/// What an organization may have at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// Clusters, whatever their status.
    Clusters,
    /// Foundings running at once, across every replica.
    FoundingsInFlight,
}

impl std::fmt::Display for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Clusters => "clusters",
            Self::FoundingsInFlight => "foundings in flight",
        })
    }
}

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    /// A uniqueness rule was broken, e.g. a cluster name already used in the organization.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A row the call needs does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The database could not be reached, or the connection was lost.
    #[error("database unavailable")]
    Unavailable(#[source] BoxError),
    /// The organization's idempotency key already stands for another operation (one that
    /// started at the same time, say): answer from that one.
    #[error("the idempotency key is taken")]
    IdempotencyKeyTaken,
    /// The organization is at one of its quotas (nothing was written).
    #[error("the organization's quota of {limit} {quota} is reached")]
    QuotaExceeded {
        /// Which quota.
        quota: Quota,
        /// Its limit.
        limit: u32,
    },
    /// The operation is no longer this replica's: its lease expired and another replica took
    /// it over (or it ended). The caller must stop working on it.
    #[error("the operation's lease is no longer held by this replica")]
    LeaseLost,
    /// Anything else, e.g. a stored value that cannot be read back.
    #[error("unexpected database failure")]
    Unexpected(#[source] BoxError),
}

/// Durable cluster truth.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Repo: Send + Sync {
    /// Whether the database answers (readiness).
    ///
    /// # Errors
    /// `Unavailable` when it does not.
    async fn ping(&self) -> Result<(), RepoError>;

    /// One cluster of an organization with its nodes; another organization's is `None`.
    ///
    /// # Errors
    /// `Unavailable`, or `Unexpected` for rows that cannot be read back.
    async fn find_cluster(
        &self,
        org: &OrgId,
        id: ClusterId,
    ) -> Result<Option<ClusterDetails>, RepoError>;

    /// A page of an organization's clusters, newest first.
    ///
    /// # Errors
    /// As for [`Repo::find_cluster`].
    async fn list_clusters(
        &self,
        org: &OrgId,
        page: &PageRequest,
    ) -> Result<ClusterPage, RepoError>;

    /// Reads the `vms` rows of these VMs as committed now; VMs without a row are left out.
    ///
    /// # Errors
    /// `Unavailable`, or `Unexpected` for a row that cannot be read.
    async fn vm_identities(&self, ids: &[VmId]) -> Result<Vec<VmIdentity>, RepoError>;

    /// Notes what step 10 did about the cluster's DNS name (after its founding ended, so no
    /// lease is involved); a cluster that is gone is no error.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn record_dns_outcome(
        &self,
        cluster: ClusterId,
        outcome: &DnsOutcome,
    ) -> Result<(), RepoError>;

    /// The root CA of one of an organization's clusters, key opened, for signing a client
    /// certificate; `None` for another organization's cluster, or one without trust material.
    ///
    /// # Errors
    /// `Unavailable`, or `Unexpected` for a sealed key that does not open.
    async fn cluster_root_ca(
        &self,
        org: &OrgId,
        cluster: ClusterId,
    ) -> Result<Option<CertifiedKey>, RepoError>;

    /// The node whose current bootstrap token hashes to `token`, if any: one indexed read,
    /// nothing opened, so that a wrong token costs no more than that.
    ///
    /// # Errors
    /// `Unavailable`, or `Unexpected` for a row that cannot be read back.
    async fn bootstrap_token(
        &self,
        token: &BootstrapTokenHash,
    ) -> Result<Option<BootstrapTokenRecord>, RepoError>;

    /// Notes that a bundle was handed out for `node`'s token `token` (the first time only; a
    /// token replaced meanwhile is left alone).
    ///
    /// # Errors
    /// `Unavailable`.
    async fn note_bootstrap_fetch(
        &self,
        cluster: ClusterId,
        node: &NodeName,
        token: &BootstrapTokenHash,
    ) -> Result<(), RepoError>;

    /// Gives node `node` of one of `org`'s ready clusters a new bootstrap token (the old one
    /// stops working at once, and the new one has not been used); whether there was such a
    /// node.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn replace_bootstrap_token(
        &self,
        org: &OrgId,
        cluster: ClusterId,
        node: &NodeName,
        token: &BootstrapTokenHash,
        expires_at: OffsetDateTime,
    ) -> Result<bool, RepoError>;

    /// Every certificate of one of `org`'s clusters (CAs, shared client certificates, each
    /// node's), public parts only; `None` for a cluster the organization does not have.
    ///
    /// # Errors
    /// `Unavailable`, or `Unexpected` for rows that cannot be read back.
    async fn cluster_certificates(
        &self,
        org: &OrgId,
        cluster: ClusterId,
    ) -> Result<Option<Vec<NamedCertificate>>, RepoError>;

    /// What node `node` of `cluster` needs to boot, keys opened; `None` if there is no such
    /// node. (Callers must check the node's bootstrap token before using any of it.)
    ///
    /// # Errors
    /// `Unavailable`, or `Unexpected` for a sealed key that does not open.
    async fn bootstrap_material(
        &self,
        cluster: ClusterId,
        node: &NodeName,
    ) -> Result<Option<BootstrapMaterial>, RepoError>;
}
