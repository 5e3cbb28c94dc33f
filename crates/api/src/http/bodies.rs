//! What the routes answer: the founded cluster, a listing page, one cluster, an operation,
//! fresh credentials.

use plinth_domain::expiry::ExpiryReport;
use plinth_domain::found_cluster::{FoundedCluster, bootstrap_path_template};
use plinth_domain::model::{ClusterId, Networking, OperationId, OperationKind, OperationState};
use plinth_domain::ports::operations::OperationRecord;
use plinth_domain::ports::repo::{ClusterDetails, ClusterSummary, NodePlacement};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::secret::SecretField;
use crate::problem::{ApiError, Problem};

/// In-cluster networking.
#[derive(Debug, Serialize, ToSchema)]
pub struct NetworkingBody {
    /// e.g. `10.244.0.0/16`.
    pub pod_cidr: String,
    /// e.g. `10.96.0.0/12`.
    pub service_cidr: String,
    /// e.g. `cluster.local`.
    pub dns_domain: String,
    /// e.g. `10.96.0.10`.
    pub cluster_dns_ip: String,
    /// e.g. 6443.
    pub api_server_port: u16,
}

impl From<&Networking> for NetworkingBody {
    fn from(n: &Networking) -> Self {
        Self {
            pod_cidr: n.pod_cidr().to_string(),
            service_cidr: n.service_cidr().to_string(),
            dns_domain: n.dns_domain().to_owned(),
            cluster_dns_ip: n.cluster_dns_ip().to_string(),
            api_server_port: n.api_server_port(),
        }
    }
}

/// A control-plane node.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeBody {
    /// `cp-{n}.cluster-{id}.internal`.
    pub name: String,
    /// Its VM.
    pub vm_id: String,
    /// Private IPv4.
    pub ipv4: String,
    /// IPv6, if any.
    pub ipv6: Option<String>,
    /// Public IPv4, if any.
    pub public_ipv4: Option<String>,
}

impl From<&NodePlacement> for NodeBody {
    fn from(n: &NodePlacement) -> Self {
        Self {
            name: n.name.to_string(),
            vm_id: n.vm_id.to_string(),
            ipv4: n.addresses.ipv4.to_string(),
            ipv6: n.addresses.ipv6.map(|ip| ip.to_string()),
            public_ipv4: n.addresses.public_ipv4.map(|ip| ip.to_string()),
        }
    }
}

/// A DNS record the operator may publish.
#[derive(Debug, Serialize, ToSchema)]
pub struct DnsRecordBody {
    /// Fully qualified name.
    pub name: String,
    /// `A` or `AAAA`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Addresses.
    pub values: Vec<String>,
}

/// The answer to `POST /clusters`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FoundedClusterBody {
    /// The new cluster.
    pub cluster_id: String,
    /// The operation that founded it (`GET /operations/{id}`).
    pub operation_id: String,
    /// Its name, if given.
    pub name: Option<String>,
    /// Its VMs, in node order.
    pub vm_ids: Vec<String>,
    /// `api.cluster-{id}.{zone}`.
    pub control_plane_dns_name: String,
    /// kubeconfig YAML of a `system:masters` user for the shared name on port 6443. Keep it
    /// secret: it holds a private key.
    #[schema(value_type = String)]
    pub admin_kubeconfig: SecretField,
    /// In-cluster networking.
    pub networking: NetworkingBody,
    /// The nodes.
    pub nodes: Vec<NodeBody>,
    /// `/bootstrap/{cluster_id}/nodes/{node_name}`, the cluster filled in.
    pub bootstrap_path_template: String,
    /// `*.apps.cluster-{id}.{zone}` (not published).
    pub ingress_wildcard_dns_name: String,
    /// Records to publish if `dns_configured` is false.
    pub suggested_dns_records: Vec<DnsRecordBody>,
    /// Whether plinth published the control-plane name.
    pub dns_configured: bool,
    /// Why not, when it did not.
    pub dns_error: Option<String>,
}

impl From<FoundedCluster> for FoundedClusterBody {
    fn from(f: FoundedCluster) -> Self {
        Self {
            cluster_id: f.cluster_id.to_string(),
            operation_id: f.operation_id.to_string(),
            name: f.name.map(|n| n.to_string()),
            vm_ids: f.vm_ids.iter().map(ToString::to_string).collect(),
            control_plane_dns_name: f.control_plane_dns_name,
            admin_kubeconfig: f.admin_kubeconfig.into(),
            networking: (&f.networking).into(),
            nodes: f.nodes.iter().map(NodeBody::from).collect(),
            bootstrap_path_template: f.bootstrap_path_template,
            ingress_wildcard_dns_name: f.ingress_wildcard_dns_name,
            suggested_dns_records: f
                .suggested_dns_records
                .into_iter()
                .map(|r| DnsRecordBody {
                    name: r.name,
                    kind: r.record_type.to_owned(),
                    values: r.values,
                })
                .collect(),
            dns_configured: f.dns_configured,
            dns_error: f.dns_error,
        }
    }
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A cluster in a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterSummaryBody {
    /// Id.
    pub cluster_id: String,
    /// Name, if any.
    pub name: Option<String>,
    /// `provisioning` while its founding runs, then `ready`.
    pub status: String,
    /// Node count.
    pub control_plane_count: u8,
    /// `api.cluster-{id}.{zone}`.
    pub control_plane_dns_name: String,
    /// RFC 3339.
    pub created_at: String,
}

impl From<&ClusterSummary> for ClusterSummaryBody {
    fn from(s: &ClusterSummary) -> Self {
        Self {
            cluster_id: s.id.to_string(),
            name: s.name.as_ref().map(ToString::to_string),
            status: s.status.to_string(),
            control_plane_count: s.control_plane_count,
            control_plane_dns_name: s.control_plane_dns_name.clone(),
            created_at: rfc3339(s.created_at),
        }
    }
}

/// One page of the organization's clusters, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterPageBody {
    /// The clusters.
    pub clusters: Vec<ClusterSummaryBody>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// One cluster, without key material.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterBody {
    /// Id.
    pub cluster_id: String,
    /// Name, if any.
    pub name: Option<String>,
    /// `provisioning` while its founding runs (no nodes yet), then `ready`; `deleting` while
    /// (or after a failed) deletion.
    pub status: String,
    /// Node count.
    pub control_plane_count: u8,
    /// Subnet.
    pub subnet_id: String,
    /// VM size.
    pub flavor: String,
    /// VM image.
    pub image: String,
    /// Groups the VMs have.
    pub security_group_ids: Vec<String>,
    /// The group plinth created for the cluster, if any.
    pub created_security_group_id: Option<String>,
    /// `api.cluster-{id}.{zone}`.
    pub control_plane_dns_name: String,
    /// `*.apps.cluster-{id}.{zone}`.
    pub ingress_wildcard_dns_name: String,
    /// In-cluster networking.
    pub networking: NetworkingBody,
    /// The nodes.
    pub nodes: Vec<NodeBody>,
    /// The cluster CA certificate (public), PEM; absent until the founding has made it.
    pub ca_cert: Option<String>,
    /// `/bootstrap/{cluster_id}/nodes/{node_name}`.
    pub bootstrap_path_template: String,
    /// When its certificates expire; absent for a cluster without any yet.
    pub certificates: Option<CertificatesBody>,
    /// Whether plinth published the control-plane name; absent until the founding has tried.
    pub dns_configured: Option<bool>,
    /// Why not, when it did not.
    pub dns_error: Option<String>,
    /// RFC 3339.
    pub created_at: String,
}

impl From<ClusterDetails> for ClusterBody {
    fn from(d: ClusterDetails) -> Self {
        Self {
            cluster_id: d.summary.id.to_string(),
            name: d.summary.name.as_ref().map(ToString::to_string),
            status: d.summary.status.to_string(),
            control_plane_count: d.summary.control_plane_count,
            subnet_id: d.spec.subnet_id.to_string(),
            flavor: d.spec.flavor.to_string(),
            image: d.spec.image.to_string(),
            security_group_ids: d
                .security_groups
                .attached
                .iter()
                .map(ToString::to_string)
                .collect(),
            created_security_group_id: d.security_groups.created.as_ref().map(ToString::to_string),
            control_plane_dns_name: d.summary.control_plane_dns_name.clone(),
            ingress_wildcard_dns_name: d.ingress_wildcard_dns_name,
            networking: (&d.networking).into(),
            nodes: d.nodes.iter().map(NodeBody::from).collect(),
            ca_cert: d.ca_cert_pem,
            bootstrap_path_template: bootstrap_path_template(d.summary.id),
            certificates: None,
            dns_configured: d.dns.as_ref().map(|dns| dns.configured),
            dns_error: d.dns.and_then(|dns| dns.error),
            created_at: rfc3339(d.summary.created_at),
        }
    }
}

/// A long-running operation (a founding), as `GET /operations/{id}` shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperationBody {
    /// Id.
    pub operation_id: String,
    /// `found`.
    pub kind: String,
    /// `running`, `succeeded` or `failed`.
    pub state: String,
    /// The step it is at (or ended at), e.g. `create_vms`.
    pub step: String,
    /// Its cluster (gone again when a founding failed).
    pub cluster_id: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339; absent while it runs.
    pub ended_at: Option<String>,
    /// Why it failed, as the request that ran it would have been answered.
    pub problem: Option<Problem>,
}

impl OperationBody {
    /// An operation that has just started, when its row cannot be read back.
    pub fn started(kind: OperationKind, operation: OperationId, cluster: ClusterId) -> Self {
        Self {
            operation_id: operation.to_string(),
            kind: kind.to_string(),
            state: OperationState::Running.to_string(),
            step: "begin".to_owned(),
            cluster_id: cluster.to_string(),
            started_at: rfc3339(OffsetDateTime::now_utc()),
            ended_at: None,
            problem: None,
        }
    }
}

impl From<&OperationRecord> for OperationBody {
    fn from(o: &OperationRecord) -> Self {
        Self {
            operation_id: o.id.to_string(),
            kind: o.kind.to_string(),
            state: o.state.to_string(),
            step: o.step.clone(),
            cluster_id: o.cluster_id.to_string(),
            started_at: rfc3339(o.started_at),
            ended_at: o.ended_at.map(rfc3339),
            problem: o
                .problem
                .as_ref()
                .map(|p| ApiError::from(p).problem().clone()),
        }
    }
}

/// A freshly issued admin kubeconfig.
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialsBody {
    /// kubeconfig YAML of a `system:masters` user named after the caller. Keep it secret: it
    /// holds a private key.
    #[schema(value_type = String)]
    pub kubeconfig: SecretField,
    /// When its client certificate expires (its `notAfter`), RFC 3339.
    pub expires_at: String,
}

/// A node's new bootstrap token.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReissuedTokenBody {
    /// The token (shown once; plinth keeps only its hash).
    #[schema(value_type = String)]
    pub token: SecretField,
    /// When it stops working (sooner once a bundle was fetched with it), RFC 3339.
    pub expires_at: String,
    /// The node's userdata shim with the new token, for a VM rebuilt.
    #[schema(value_type = String)]
    pub user_data: SecretField,
}

/// One certificate's expiry.
#[derive(Debug, Serialize, ToSchema)]
pub struct CertificateExpiryBody {
    /// e.g. `ca`, `etcd-ca`, `apiserver-etcd-client`, `cp-1.cluster-<id>.internal/apiserver`.
    pub name: String,
    /// Its `notAfter`, RFC 3339.
    pub not_after: String,
}

/// When a cluster's certificates expire.
#[derive(Debug, Serialize, ToSchema)]
pub struct CertificatesBody {
    /// The earliest `notAfter` of all, RFC 3339; absent while there is none yet.
    pub earliest_not_after: Option<String>,
    /// Every certificate: the CAs, the shared client certificates, then each node's.
    pub certificates: Vec<CertificateExpiryBody>,
}

impl From<ExpiryReport> for CertificatesBody {
    fn from(report: ExpiryReport) -> Self {
        Self {
            earliest_not_after: report.earliest.map(rfc3339),
            certificates: report
                .certificates
                .into_iter()
                .map(|c| CertificateExpiryBody {
                    name: c.name,
                    not_after: rfc3339(c.not_after),
                })
                .collect(),
        }
    }
}
