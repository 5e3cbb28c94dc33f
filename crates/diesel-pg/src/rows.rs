//! Row types and their conversions to and from the domain.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use diesel::prelude::*;
use ipnet::IpNet;
use plinth_domain::model::{
    ClusterId, ClusterName, ClusterSpec, ClusterStatus, ControlPlaneCount, FlavorId, ImageId,
    Networking, NodeAddresses, NodeName, NodeOrdinal, OperationId, OperationKind, OperationState,
    OrgId, ReplicaId, SecurityGroupChoice, SecurityGroupId, SubnetId, VmId,
};
use plinth_domain::ports::operations::{
    JournalEntry, OperationProblem, OperationRecord, ResourceKind,
};
use plinth_domain::ports::repo::{
    ClusterDetails, ClusterSecurityGroups, ClusterSummary, DnsOutcome, NodePlacement, RepoError,
    VmIdentity,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::schema::{
    apiservernodes, client_idempotency_keys, clustercerts, etcdnodes, kubeclusters,
    operation_journal, operations, vms,
};

#[derive(Insertable)]
#[diesel(table_name = kubeclusters)]
pub(crate) struct NewClusterRow<'a> {
    pub id: Uuid,
    pub org_id: &'a str,
    pub name: Option<&'a str>,
    pub control_plane_count: i16,
    pub subnet_id: &'a str,
    pub flavor: &'a str,
    pub image: &'a str,
    pub requested_security_group_ids: Option<Vec<&'a str>>,
    pub pod_cidr: IpNet,
    pub service_cidr: IpNet,
    pub dns_domain: &'a str,
    pub api_server_port: i32,
    pub control_plane_dns_name: &'a str,
    pub ingress_wildcard_dns_name: &'a str,
    pub created_at: OffsetDateTime,
    pub status: &'a str,
}

/// A cluster's trust material, stored once the founding has made it (keys sealed).
#[derive(AsChangeset)]
#[diesel(table_name = kubeclusters)]
pub(crate) struct TrustRootChanges<'a> {
    pub ca_cert: &'a str,
    pub ca_key: String,
    pub etcd_ca_cert: &'a str,
    pub etcd_ca_key: String,
    pub front_proxy_ca_cert: &'a str,
    pub front_proxy_ca_key: String,
    pub sa_public_key: &'a str,
    pub sa_private_key: String,
}

#[derive(Insertable)]
#[diesel(table_name = operations)]
pub(crate) struct NewOperationRow<'a> {
    pub id: Uuid,
    pub kind: &'a str,
    pub org_id: &'a str,
    pub cluster_id: Uuid,
    pub state: &'a str,
    pub step: &'a str,
    pub owner: &'a str,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = operations, check_for_backend(diesel::pg::Pg))]
pub(crate) struct OperationRow {
    pub id: Uuid,
    pub kind: String,
    pub org_id: String,
    pub cluster_id: Uuid,
    pub state: String,
    pub step: String,
    pub owner: String,
    pub lease_expires_at: Option<OffsetDateTime>,
    pub problem: Option<serde_json::Value>,
    pub started_at: OffsetDateTime,
    pub ended_at: Option<OffsetDateTime>,
}

/// A client's idempotency key, kept with the operation it started (`expires_at` is set from the
/// database's clock beside it).
#[derive(Insertable)]
#[diesel(table_name = client_idempotency_keys)]
pub(crate) struct NewIdempotencyKeyRow<'a> {
    pub org_id: &'a str,
    pub key: &'a str,
    pub fingerprint: &'a str,
    pub operation_id: Uuid,
}

#[derive(Insertable)]
#[diesel(table_name = operation_journal)]
pub(crate) struct NewJournalRow<'a> {
    pub operation_id: Uuid,
    pub idempotency_key: &'a str,
    pub kind: &'a str,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = operation_journal, check_for_backend(diesel::pg::Pg))]
pub(crate) struct JournalRow {
    pub operation_id: Uuid,
    pub idempotency_key: String,
    pub kind: String,
    pub resource_id: Option<String>,
    pub deleted: bool,
}

#[derive(Insertable)]
#[diesel(table_name = etcdnodes)]
pub(crate) struct NewEtcdNodeRow<'a> {
    pub cluster_id: Uuid,
    pub ordinal: i16,
    pub node_name: &'a str,
    pub vm_id: &'a str,
    pub ipv4: IpNet,
    pub ipv6: Option<IpNet>,
    pub public_ipv4: Option<IpNet>,
    pub cert: &'a str,
    pub key: String,
}

#[derive(Insertable)]
#[diesel(table_name = apiservernodes)]
pub(crate) struct NewApiServerNodeRow<'a> {
    pub cluster_id: Uuid,
    pub ordinal: i16,
    pub node_name: &'a str,
    pub vm_id: &'a str,
    pub ipv4: IpNet,
    pub ipv6: Option<IpNet>,
    pub public_ipv4: Option<IpNet>,
    pub cert: &'a str,
    pub key: String,
    pub bootstrap_token_hash: &'a str,
    pub bootstrap_token_expires_at: OffsetDateTime,
    pub kubelet_cert: Option<&'a str>,
    pub kubelet_key: Option<String>,
}

#[derive(Insertable)]
#[diesel(table_name = clustercerts)]
pub(crate) struct NewClusterCertRow<'a> {
    pub cluster_id: Uuid,
    pub name: &'a str,
    pub cert: &'a str,
    pub key: String,
}

/// The sealed columns of a cluster row, for bundles.
#[derive(Queryable, Selectable)]
#[diesel(table_name = kubeclusters, check_for_backend(diesel::pg::Pg))]
pub(crate) struct ClusterSecretsRow {
    pub control_plane_dns_name: String,
    pub pod_cidr: IpNet,
    pub service_cidr: IpNet,
    pub dns_domain: String,
    pub api_server_port: i32,
    pub ca_cert: Option<String>,
    pub ca_key: Option<String>,
    pub etcd_ca_cert: Option<String>,
    pub etcd_ca_key: Option<String>,
    pub front_proxy_ca_cert: Option<String>,
    pub front_proxy_ca_key: Option<String>,
    pub sa_public_key: Option<String>,
    pub sa_private_key: Option<String>,
}

/// A node's sealed apiserver facet, for bundles.
#[derive(Queryable, Selectable)]
#[diesel(table_name = apiservernodes, check_for_backend(diesel::pg::Pg))]
pub(crate) struct ApiServerSecretsRow {
    pub cert: String,
    pub key: String,
    pub kubelet_cert: Option<String>,
    pub kubelet_key: Option<String>,
    pub bootstrap_token_hash: String,
    pub bootstrap_token_expires_at: OffsetDateTime,
    pub bootstrap_token_first_used_at: Option<OffsetDateTime>,
}

/// A node's public apiserver and kubelet certificates, for expiry reports.
#[derive(Queryable, Selectable)]
#[diesel(table_name = apiservernodes, check_for_backend(diesel::pg::Pg))]
pub(crate) struct ApiServerCertsRow {
    pub ordinal: i16,
    pub node_name: String,
    pub cert: String,
    pub kubelet_cert: Option<String>,
}

/// A node's public etcd certificate, for expiry reports.
#[derive(Queryable, Selectable)]
#[diesel(table_name = etcdnodes, check_for_backend(diesel::pg::Pg))]
pub(crate) struct EtcdCertRow {
    pub ordinal: i16,
    pub node_name: String,
    pub cert: String,
}

/// A shared client certificate row.
#[derive(Queryable, Selectable)]
#[diesel(table_name = clustercerts, check_for_backend(diesel::pg::Pg))]
pub(crate) struct ClusterCertRow {
    pub name: String,
    pub cert: String,
    pub key: String,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = kubeclusters, check_for_backend(diesel::pg::Pg))]
pub(crate) struct ClusterSummaryRow {
    pub id: Uuid,
    pub name: Option<String>,
    pub status: String,
    pub control_plane_count: i16,
    pub control_plane_dns_name: String,
    pub created_at: OffsetDateTime,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = kubeclusters, check_for_backend(diesel::pg::Pg))]
pub(crate) struct ClusterDetailsRow {
    #[diesel(embed)]
    pub summary: ClusterSummaryRow,
    pub subnet_id: String,
    pub flavor: String,
    pub image: String,
    pub requested_security_group_ids: Option<Vec<String>>,
    pub security_group_ids: Vec<String>,
    pub created_security_group_id: Option<String>,
    pub pod_cidr: IpNet,
    pub service_cidr: IpNet,
    pub dns_domain: String,
    pub api_server_port: i32,
    pub ingress_wildcard_dns_name: String,
    pub ca_cert: Option<String>,
    pub dns_configured: Option<bool>,
    pub dns_error: Option<String>,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = apiservernodes, check_for_backend(diesel::pg::Pg))]
pub(crate) struct NodeRow {
    pub ordinal: i16,
    pub node_name: String,
    pub vm_id: String,
    pub ipv4: IpNet,
    pub ipv6: Option<IpNet>,
    pub public_ipv4: Option<IpNet>,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = vms, check_for_backend(diesel::pg::Pg))]
pub(crate) struct VmRow {
    pub id: String,
    pub name: String,
    pub ipv4: Option<IpNet>,
    pub ipv6: Option<IpNet>,
    pub public_ipv4: Option<IpNet>,
}

/// A stored value that breaks a domain rule: the row was written by something else, or edited.
fn corrupt(what: impl std::fmt::Display) -> RepoError {
    RepoError::Unexpected(format!("stored data is invalid: {what}").into())
}

pub(crate) fn host(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

fn v4(net: IpNet, what: &str) -> Result<Ipv4Addr, RepoError> {
    match net.addr() {
        IpAddr::V4(ip) => Ok(ip),
        IpAddr::V6(ip) => Err(corrupt(format!("{what} {ip} is not IPv4"))),
    }
}

fn v6(net: IpNet, what: &str) -> Result<Ipv6Addr, RepoError> {
    match net.addr() {
        IpAddr::V6(ip) => Ok(ip),
        IpAddr::V4(ip) => Err(corrupt(format!("{what} {ip} is not IPv6"))),
    }
}

impl VmRow {
    pub(crate) fn into_identity(self) -> Result<VmIdentity, RepoError> {
        Ok(VmIdentity {
            id: VmId::parse(&self.id).map_err(|e| corrupt(format!("vm id: {e}")))?,
            name: self.name,
            ipv4: self.ipv4.map(|n| v4(n, "vm ipv4")).transpose()?,
            ipv6: self.ipv6.map(|n| v6(n, "vm ipv6")).transpose()?,
            public_ipv4: self
                .public_ipv4
                .map(|n| v4(n, "vm public ipv4"))
                .transpose()?,
        })
    }
}

impl ClusterSummaryRow {
    pub(crate) fn into_summary(self) -> Result<ClusterSummary, RepoError> {
        Ok(ClusterSummary {
            id: ClusterId::from_uuid(self.id),
            name: self
                .name
                .as_deref()
                .map(ClusterName::parse)
                .transpose()
                .map_err(|e| corrupt(format!("cluster {} name: {e}", self.id)))?,
            status: ClusterStatus::parse(&self.status)
                .map_err(|e| corrupt(format!("cluster {} status: {e}", self.id)))?,
            control_plane_count: u8::try_from(self.control_plane_count)
                .map_err(|_| corrupt(format!("cluster {} node count", self.id)))?,
            control_plane_dns_name: self.control_plane_dns_name,
            created_at: self.created_at,
        })
    }
}

impl NodeRow {
    pub(crate) fn into_placement(self, cluster: ClusterId) -> Result<NodePlacement, RepoError> {
        let ordinal = u8::try_from(self.ordinal)
            .ok()
            .and_then(|n| NodeOrdinal::new(n).ok())
            .ok_or_else(|| corrupt(format!("node ordinal {}", self.ordinal)))?;
        let name = NodeName::new(cluster, ordinal);
        if name.as_str() != self.node_name {
            return Err(corrupt(format!(
                "node {ordinal} of cluster {cluster} is named {:?}",
                self.node_name
            )));
        }
        Ok(NodePlacement {
            ordinal,
            name,
            vm_id: VmId::parse(&self.vm_id).map_err(|e| corrupt(format!("node vm id: {e}")))?,
            addresses: NodeAddresses {
                ipv4: v4(self.ipv4, "node ipv4")?,
                ipv6: self.ipv6.map(|n| v6(n, "node ipv6")).transpose()?,
                public_ipv4: self
                    .public_ipv4
                    .map(|n| v4(n, "node public ipv4"))
                    .transpose()?,
            },
        })
    }
}

/// Networking from its stored columns.
pub(crate) fn networking(
    cluster: ClusterId,
    pod_cidr: IpNet,
    service_cidr: IpNet,
    dns_domain: &str,
    api_server_port: i32,
) -> Result<Networking, RepoError> {
    let bad =
        |field: &str, e: &dyn std::fmt::Display| corrupt(format!("cluster {cluster} {field}: {e}"));
    let v4net = |net: IpNet, field: &str| match net {
        IpNet::V4(net) => Ok(net),
        IpNet::V6(_) => Err(bad(field, &"not IPv4")),
    };
    Networking::new(
        v4net(pod_cidr, "pod_cidr")?,
        v4net(service_cidr, "service_cidr")?,
        dns_domain,
        u16::try_from(api_server_port).map_err(|e| bad("api_server_port", &e))?,
    )
    .map_err(|e| bad("networking", &e))
}

impl ClusterDetailsRow {
    pub(crate) fn into_details(self, nodes: Vec<NodeRow>) -> Result<ClusterDetails, RepoError> {
        let summary = self.summary.into_summary()?;
        let id = summary.id;
        let bad =
            |field: &str, e: &dyn std::fmt::Display| corrupt(format!("cluster {id} {field}: {e}"));
        let group =
            |raw: &String| SecurityGroupId::parse(raw).map_err(|e| bad("security group", &e));
        let security_groups = match &self.requested_security_group_ids {
            Some(ids) => {
                SecurityGroupChoice::Given(ids.iter().map(group).collect::<Result<_, _>>()?)
            }
            None => SecurityGroupChoice::CreateForCluster,
        };
        let spec = ClusterSpec {
            name: summary.name.clone(),
            control_plane_count: ControlPlaneCount::new(i64::from(summary.control_plane_count))
                .map_err(|e| bad("control_plane_count", &e))?,
            subnet_id: SubnetId::parse(&self.subnet_id).map_err(|e| bad("subnet", &e))?,
            flavor: FlavorId::parse(&self.flavor).map_err(|e| bad("flavor", &e))?,
            image: ImageId::parse(&self.image).map_err(|e| bad("image", &e))?,
            security_groups,
        };
        let networking = networking(
            id,
            self.pod_cidr,
            self.service_cidr,
            &self.dns_domain,
            self.api_server_port,
        )?;
        Ok(ClusterDetails {
            spec,
            security_groups: ClusterSecurityGroups {
                attached: self
                    .security_group_ids
                    .iter()
                    .map(group)
                    .collect::<Result<_, _>>()?,
                created: self
                    .created_security_group_id
                    .as_ref()
                    .map(group)
                    .transpose()?,
            },
            networking,
            ingress_wildcard_dns_name: self.ingress_wildcard_dns_name,
            nodes: nodes
                .into_iter()
                .map(|n| n.into_placement(id))
                .collect::<Result<_, _>>()?,
            ca_cert_pem: self.ca_cert,
            // No outcome yet: the founding has not reached step 10 (or its replica stopped
            // before it could say); the error belongs to an outcome only.
            dns: self.dns_configured.map(|configured| DnsOutcome {
                configured,
                error: self.dns_error,
            }),
            summary,
        })
    }
}

impl OperationRow {
    /// The operation with its journal (rows of this operation, in the order written).
    pub(crate) fn into_record(
        self,
        journal: Vec<JournalRow>,
    ) -> Result<OperationRecord, RepoError> {
        let id = self.id;
        let bad = |field: &str, e: &dyn std::fmt::Display| {
            corrupt(format!("operation {id} {field}: {e}"))
        };
        let journal = journal
            .into_iter()
            .filter(|row| row.operation_id == id)
            .map(|row| {
                let kind = match row.kind.as_str() {
                    "vm" => ResourceKind::Vm,
                    "security_group" => ResourceKind::SecurityGroup,
                    other => return Err(bad("journal kind", &other)),
                };
                Ok(JournalEntry {
                    kind,
                    idempotency_key: row.idempotency_key,
                    resource_id: row.resource_id,
                    deleted: row.deleted,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(OperationRecord {
            id: OperationId::from_uuid(id),
            kind: OperationKind::parse(&self.kind).map_err(|e| bad("kind", &e))?,
            org: OrgId::parse(&self.org_id).map_err(|e| bad("org", &e))?,
            cluster_id: ClusterId::from_uuid(self.cluster_id),
            state: OperationState::parse(&self.state).map_err(|e| bad("state", &e))?,
            step: self.step,
            owner: ReplicaId::new(self.owner),
            lease_expires_at: self.lease_expires_at,
            problem: self
                .problem
                .map(serde_json::from_value::<OperationProblem>)
                .transpose()
                .map_err(|e| bad("problem", &e))?,
            started_at: self.started_at,
            ended_at: self.ended_at,
            journal,
        })
    }
}
