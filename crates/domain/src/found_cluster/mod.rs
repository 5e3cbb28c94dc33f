//! `FoundCluster`: the founding sequence of `POST /clusters` (docs/ARCHITECTURE.md §1, steps 2
//! to 10; step 1, validation, makes the [`ClusterSpec`] it takes).

mod error;
mod kubeconfig;
mod settings;
mod userdata;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use futures::future::{join_all, try_join_all};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use time::OffsetDateTime;
use tokio::time::Instant;
use tracing::{Instrument, info_span};

pub use error::{CleanupReport, CreatedResource, FoundClusterError, FoundingFailure, FoundingStep};
pub use kubeconfig::{KubeconfigSpec, render_kubeconfig};
pub use settings::{FoundingSection, FoundingSettings};
pub use userdata::{
    BootstrapBaseUrl, bootstrap_path, bootstrap_path_template, render_userdata_shim,
};

use crate::model::{
    BootstrapToken, ClusterDnsNames, ClusterId, ClusterName, ClusterSpec, Networking,
    NodeAddresses, NodeName, NodeOrdinal, OrgId, SecretText, SecurityGroupChoice, SecurityGroupId,
    VmId, apiserver_sans, etcd_sans,
};
use crate::ports::Chain;
use crate::ports::compute::{
    Compute, ComputeError, IngressRule, NewSecurityGroup, NewVm, RuleProtocol, Tags,
};
use crate::ports::dns::{AddressRecords, Dns};
use crate::ports::pki::{
    CertifiedKey, ClientCertRequest, ClusterCa, Pki, PkiError, ServiceAccountKeyPair,
    ServingCertRequest, SharedClientCert, SharedClientCerts,
};
use crate::ports::repo::{
    ApiServerNodeRecord, ClusterSecurityGroups, EtcdNodeRecord, NewClusterRecord, NodePlacement,
    Repo, RepoTx, VmIdentity,
};

/// Tag keys put on every VM and security group plinth creates.
pub mod tags {
    /// `control-plane` on VMs and groups.
    pub const ROLE: &str = "plinth.io/role";
    /// The cluster id.
    pub const CLUSTER_ID: &str = "plinth.io/cluster-id";
    /// The organization id.
    pub const ORG_ID: &str = "plinth.io/org-id";
    /// The node ordinal (VMs only).
    pub const ORDINAL: &str = "plinth.io/ordinal";
    /// The role value of control-plane resources.
    pub const ROLE_CONTROL_PLANE: &str = "control-plane";
}

/// The admin client certificate's subject: a `system:masters` user, because plinth does not run
/// `kubeadm init` and so cannot rely on the `kubeadm:cluster-admins` binding existing.
const ADMIN_COMMON_NAME: &str = "kubernetes-admin";
const ADMIN_GROUP: &str = "system:masters";
const APISERVER_COMMON_NAME: &str = "kube-apiserver";
const NODES_GROUP: &str = "system:nodes";
/// Why `dns_configured` is false when the deployment has no DNS adapter.
pub const DNS_NOT_CONFIGURED: &str = "DNS is not configured for this deployment";

/// A suggested DNS record for the operator's own DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuggestedDnsRecord {
    /// Fully qualified name.
    pub name: String,
    /// `A` or `AAAA`.
    pub record_type: &'static str,
    /// Addresses.
    pub values: Vec<String>,
}

/// A founded cluster: what `POST /clusters` answers.
#[derive(Debug, Clone)]
pub struct FoundedCluster {
    /// The new cluster.
    pub cluster_id: ClusterId,
    /// Its optional name.
    pub name: Option<ClusterName>,
    /// Its VMs in ordinal order.
    pub vm_ids: Vec<VmId>,
    /// `api.cluster-{id}.{zone}`.
    pub control_plane_dns_name: String,
    /// kubeconfig of a `system:masters` user, pointing at the shared name.
    pub admin_kubeconfig: SecretText,
    /// In-cluster networking.
    pub networking: Networking,
    /// Nodes in ordinal order.
    pub nodes: Vec<NodePlacement>,
    /// `/bootstrap/{cluster_id}/nodes/{node_name}` with the cluster filled in.
    pub bootstrap_path_template: String,
    /// `*.apps.cluster-{id}.{zone}` (not published).
    pub ingress_wildcard_dns_name: String,
    /// Records the operator may publish (what step 10 tries to publish).
    pub suggested_dns_records: Vec<SuggestedDnsRecord>,
    /// Whether step 10 published the control-plane name.
    pub dns_configured: bool,
    /// Why it did not, when it did not.
    pub dns_error: Option<String>,
}

/// The use case: founds a cluster through the four ports.
pub struct FoundCluster {
    repo: Arc<dyn Repo>,
    compute: Arc<dyn Compute>,
    pki: Arc<dyn Pki>,
    dns: Option<Arc<dyn Dns>>,
    settings: FoundingSettings,
}

impl std::fmt::Debug for FoundCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FoundCluster")
            .field("dns", &self.dns.is_some())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The platform resources one founding created, so that a hard stop can delete exactly them.
#[derive(Debug, Default)]
struct Created {
    security_group: Option<SecurityGroupId>,
    vms: Vec<VmId>,
}

/// A VM the founding asked for, with the token its shim holds.
struct PlannedNode {
    ordinal: NodeOrdinal,
    name: NodeName,
    token: BootstrapToken,
    vm: NewVm,
}

/// Everything steps 3 to 9 produce, ready for the commit.
struct Prepared {
    nodes: Vec<NodePlacement>,
    admin_kubeconfig: SecretText,
}

/// A node's own certificates.
struct NodeCerts {
    etcd: CertifiedKey,
    apiserver: CertifiedKey,
    kubelet: CertifiedKey,
}

/// Per-founding facts every step reads.
struct Founding<'a> {
    cluster_id: ClusterId,
    org: &'a OrgId,
    spec: &'a ClusterSpec,
    names: ClusterDnsNames,
    created_at: OffsetDateTime,
}

impl FoundCluster {
    /// Wires the use case. `dns: None` is a deployment without DNS: foundings then report
    /// `dns_configured = false`.
    pub fn new(
        repo: Arc<dyn Repo>,
        compute: Arc<dyn Compute>,
        pki: Arc<dyn Pki>,
        dns: Option<Arc<dyn Dns>>,
        settings: FoundingSettings,
    ) -> Self {
        Self {
            repo,
            compute,
            pki,
            dns,
            settings,
        }
    }

    /// The settings in use.
    pub fn settings(&self) -> &FoundingSettings {
        &self.settings
    }

    /// Founds a cluster of shape `spec` (a request validated against [`Self::settings`]'
    /// defaults) for `org`. On a hard stop nothing is committed and the VMs and security group
    /// this call created are deleted again (the error reports what could not be).
    pub async fn found(
        &self,
        org: &OrgId,
        spec: ClusterSpec,
    ) -> Result<FoundedCluster, FoundClusterError> {
        let cluster_id = ClusterId::new_random();
        let founding = Founding {
            cluster_id,
            org,
            spec: &spec,
            names: ClusterDnsNames::new(cluster_id, &self.settings.dns_zone),
            created_at: OffsetDateTime::now_utc(),
        };
        let span = info_span!("found_cluster", cluster_id = %cluster_id, org = %org);
        self.run(&founding).instrument(span).await
    }

    async fn run(&self, f: &Founding<'_>) -> Result<FoundedCluster, FoundClusterError> {
        let (ca, service_account) = self
            .create_trust_root(f)
            .instrument(step_span(FoundingStep::CreateTrustRoot))
            .await
            .map_err(|failure| stopped(failure, CleanupReport::default()))?;

        let mut tx = self
            .repo
            .begin()
            .instrument(step_span(FoundingStep::OpenTransaction))
            .await
            .map_err(|e| {
                stopped(
                    FoundingFailure::BeginTransaction(e),
                    CleanupReport::default(),
                )
            })?;

        let mut created = Created::default();
        let prepared = self
            .prepare(f, tx.as_mut(), &mut created, ca, service_account)
            .await;
        let committed = match prepared {
            Ok(prepared) => tx
                .commit()
                .instrument(step_span(FoundingStep::Commit))
                .await
                .map(|()| prepared)
                .map_err(FoundingFailure::Commit),
            Err(failure) => {
                if let Err(e) = tx.rollback().await {
                    // The transaction dies with its connection anyway; note it and go on.
                    tracing::warn!(error = %Chain(&e), "rolling back the founding transaction failed");
                }
                Err(failure)
            }
        };
        let prepared = match committed {
            Ok(prepared) => prepared,
            Err(failure) => {
                tracing::warn!(step = %failure.step(), error = %Chain(&failure), "founding stopped");
                let cleanup = self.compensate(created).await;
                return Err(stopped(failure, cleanup));
            }
        };

        let vm_ids = prepared.nodes.iter().map(|n| n.vm_id.clone()).collect();
        let records = control_plane_records(&f.names.control_plane, &prepared.nodes);
        let (dns_configured, dns_error) = self
            .publish_dns(&records)
            .instrument(step_span(FoundingStep::PublishDns))
            .await;
        tracing::info!(dns_configured, "cluster founded");
        Ok(FoundedCluster {
            cluster_id: f.cluster_id,
            name: f.spec.name.clone(),
            vm_ids,
            control_plane_dns_name: f.names.control_plane.clone(),
            admin_kubeconfig: prepared.admin_kubeconfig,
            networking: self.settings.networking.clone(),
            nodes: prepared.nodes,
            bootstrap_path_template: bootstrap_path_template(f.cluster_id),
            ingress_wildcard_dns_name: f.names.ingress_wildcard.clone(),
            suggested_dns_records: suggested_records(&records),
            dns_configured,
            dns_error,
        })
    }

    /// Step 2.
    async fn create_trust_root(
        &self,
        f: &Founding<'_>,
    ) -> Result<(ClusterCa, ServiceAccountKeyPair), FoundingFailure> {
        let ca = self
            .pki
            .create_cluster_ca(f.cluster_id)
            .await
            .map_err(FoundingFailure::CreateCa)?;
        let service_account = self
            .pki
            .create_service_account_key()
            .await
            .map_err(FoundingFailure::CreateServiceAccountKey)?;
        Ok((ca, service_account))
    }

    /// Steps 3 (insert) to 9 (before the commit), inside the transaction.
    async fn prepare(
        &self,
        f: &Founding<'_>,
        tx: &mut dyn RepoTx,
        created: &mut Created,
        ca: ClusterCa,
        service_account: ServiceAccountKeyPair,
    ) -> Result<Prepared, FoundingFailure> {
        let cluster = NewClusterRecord {
            id: f.cluster_id,
            org: f.org.clone(),
            spec: f.spec.clone(),
            networking: self.settings.networking.clone(),
            control_plane_dns_name: f.names.control_plane.clone(),
            ingress_wildcard_dns_name: f.names.ingress_wildcard.clone(),
            ca,
            service_account,
            created_at: f.created_at,
        };
        tx.insert_cluster(&cluster)
            .instrument(step_span(FoundingStep::OpenTransaction))
            .await
            .map_err(FoundingFailure::InsertCluster)?;
        let ca = cluster.ca;

        let groups = self
            .resolve_security_groups(f, tx, created)
            .instrument(step_span(FoundingStep::ResolveSecurityGroups))
            .await?;

        let planned = self.plan_nodes(f, &groups.attached);
        self.create_vms(&planned, created)
            .instrument(step_span(FoundingStep::CreateVms))
            .await?;

        let placements = self
            .read_back_vms(tx, &planned, &created.vms)
            .instrument(step_span(FoundingStep::ReadBackVms))
            .await?;

        let (certs, shared) = self
            .sign_node_certs(f, &ca, &placements)
            .instrument(step_span(FoundingStep::SignNodeCerts))
            .await?;

        self.insert_nodes(f, tx, &planned, &placements, certs, &shared)
            .instrument(step_span(FoundingStep::InsertNodes))
            .await?;

        let admin_kubeconfig = self
            .admin_kubeconfig(f, &ca.root)
            .instrument(step_span(FoundingStep::Commit))
            .await?;
        Ok(Prepared {
            nodes: placements,
            admin_kubeconfig,
        })
    }

    /// Step 4: the given groups, or a new one allowing all IPv4 from the subnet and the API port
    /// from anywhere.
    async fn resolve_security_groups(
        &self,
        f: &Founding<'_>,
        tx: &mut dyn RepoTx,
        created: &mut Created,
    ) -> Result<ClusterSecurityGroups, FoundingFailure> {
        let groups = match &f.spec.security_groups {
            SecurityGroupChoice::Given(ids) => ClusterSecurityGroups {
                attached: ids.clone(),
                created: None,
            },
            SecurityGroupChoice::CreateForCluster => {
                let subnet = self
                    .compute
                    .subnet(&f.spec.subnet_id)
                    .await
                    .map_err(|source| FoundingFailure::SubnetLookup {
                        subnet: f.spec.subnet_id.clone(),
                        source,
                    })?;
                let group = self
                    .compute
                    .create_security_group(&NewSecurityGroup {
                        name: format!("{}-control-plane", f.cluster_id.label()),
                        tags: resource_tags(f, None),
                    })
                    .await
                    .map_err(FoundingFailure::CreateSecurityGroup)?;
                created.security_group = Some(group.clone());
                let rules = control_plane_rules(
                    subnet.ipv4_cidr,
                    subnet.ipv6_cidr,
                    self.settings.networking.api_server_port(),
                );
                for rule in &rules {
                    self.compute
                        .add_ingress_rule(&group, rule)
                        .await
                        .map_err(|source| FoundingFailure::AddIngressRule {
                            group: group.clone(),
                            source,
                        })?;
                }
                ClusterSecurityGroups {
                    attached: vec![group.clone()],
                    created: Some(group),
                }
            }
        };
        tx.record_security_groups(f.cluster_id, &groups)
            .await
            .map_err(FoundingFailure::RecordSecurityGroups)?;
        Ok(groups)
    }

    fn plan_nodes(&self, f: &Founding<'_>, groups: &[SecurityGroupId]) -> Vec<PlannedNode> {
        f.spec
            .control_plane_count
            .ordinals()
            .map(|ordinal| {
                let name = NodeName::new(f.cluster_id, ordinal);
                let token = BootstrapToken::generate();
                let user_data = render_userdata_shim(
                    &self.settings.bootstrap_base_url,
                    f.cluster_id,
                    &name,
                    &token,
                );
                let vm = NewVm {
                    name: name.as_str().to_owned(),
                    flavor: f.spec.flavor.clone(),
                    image: f.spec.image.clone(),
                    subnet: f.spec.subnet_id.clone(),
                    security_groups: groups.to_vec(),
                    tags: resource_tags(f, Some(ordinal)),
                    user_data,
                };
                PlannedNode {
                    ordinal,
                    name,
                    token,
                    vm,
                }
            })
            .collect()
    }

    /// Step 5: all VMs at once. Every creation runs to its end, so that the ids of those that
    /// succeeded are known and can be deleted if another failed.
    async fn create_vms(
        &self,
        planned: &[PlannedNode],
        created: &mut Created,
    ) -> Result<(), FoundingFailure> {
        let results = join_all(planned.iter().map(|p| self.compute.create_vm(&p.vm))).await;
        let mut failures = Vec::new();
        for (node, result) in planned.iter().zip(results) {
            match result {
                Ok(id) => created.vms.push(id),
                Err(e) => failures.push((node.ordinal, e)),
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(FoundingFailure::CreateVms(failures))
        }
    }

    /// Step 6: reads the VMs' rows until each has its private IPv4, within the deadline.
    async fn read_back_vms(
        &self,
        tx: &mut dyn RepoTx,
        planned: &[PlannedNode],
        vm_ids: &[VmId],
    ) -> Result<Vec<NodePlacement>, FoundingFailure> {
        let deadline = self.settings.vm_address_deadline;
        let started = Instant::now();
        let mut pause = self
            .settings
            .vm_address_poll_interval
            .max(Duration::from_millis(10));
        let mut waiting_for = vm_ids.to_vec();
        let polling = async {
            loop {
                let rows = tx
                    .vm_identities(vm_ids)
                    .await
                    .map_err(FoundingFailure::VmIdentityLookup)?;
                match placements(planned, vm_ids, &rows) {
                    Ok(placements) => return Ok(placements),
                    Err(missing) => waiting_for = missing,
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        };
        // The bound covers the reads too, so a stalled query cannot outlast the deadline.
        match tokio::time::timeout(deadline, polling).await {
            Ok(result) => result,
            Err(_elapsed) => Err(FoundingFailure::VmAddressesDeadline {
                waiting_for,
                waited: started.elapsed(),
            }),
        }
    }

    /// Step 7: per node, an etcd server+peer cert under `etcd-ca`, an apiserver serving cert and
    /// a kubelet client cert under `ca`; then the client certs all nodes share. Nodes are signed
    /// concurrently (the PKI adapter works off the executor); nothing is signed at fetch time.
    async fn sign_node_certs(
        &self,
        f: &Founding<'_>,
        ca: &ClusterCa,
        nodes: &[NodePlacement],
    ) -> Result<(Vec<NodeCerts>, SharedClientCerts), FoundingFailure> {
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
        Ok((node_certs, shared))
    }

    async fn serving(
        &self,
        issuer: &CertifiedKey,
        request: &ServingCertRequest,
        what: impl FnOnce() -> String,
    ) -> Result<CertifiedKey, FoundingFailure> {
        self.pki
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
        self.pki
            .sign_client_cert(issuer, request)
            .await
            .map_err(|source| FoundingFailure::SignCertificate {
                certificate: what(),
                source,
            })
    }

    /// Step 8: one etcd row and one apiserver row per node, each kind in one batch, and the
    /// shared client certs.
    async fn insert_nodes(
        &self,
        f: &Founding<'_>,
        tx: &mut dyn RepoTx,
        planned: &[PlannedNode],
        nodes: &[NodePlacement],
        certs: Vec<NodeCerts>,
        shared: &SharedClientCerts,
    ) -> Result<(), FoundingFailure> {
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
        tx.insert_etcd_nodes(&etcd_rows)
            .await
            .map_err(FoundingFailure::InsertNodes)?;
        tx.insert_apiserver_nodes(&apiserver_rows)
            .await
            .map_err(FoundingFailure::InsertNodes)?;
        tx.insert_shared_certs(f.cluster_id, shared)
            .await
            .map_err(FoundingFailure::InsertNodes)
    }

    /// Step 9 before the commit: the admin client cert and its kubeconfig.
    async fn admin_kubeconfig(
        &self,
        f: &Founding<'_>,
        root: &CertifiedKey,
    ) -> Result<SecretText, FoundingFailure> {
        let request = ClientCertRequest {
            common_name: ADMIN_COMMON_NAME.to_owned(),
            organizations: vec![ADMIN_GROUP.to_owned()],
        };
        let client = self
            .client(root, &request, || "admin client".to_owned())
            .await?;
        let cluster_name = f.cluster_id.label();
        let user_name = format!("{cluster_name}-admin");
        let server = format!(
            "https://{}:{}",
            f.names.control_plane,
            self.settings.networking.api_server_port()
        );
        render_kubeconfig(&KubeconfigSpec {
            cluster_name: &cluster_name,
            server: &server,
            ca_cert_pem: &root.cert_pem,
            user_name: &user_name,
            client: &client,
        })
        .map_err(FoundingFailure::RenderKubeconfig)
    }

    /// Step 10, soft: a failure is reported, never raised.
    async fn publish_dns(&self, records: &AddressRecords) -> (bool, Option<String>) {
        let Some(dns) = &self.dns else {
            return (false, Some(DNS_NOT_CONFIGURED.to_owned()));
        };
        match dns.upsert_address_records(records).await {
            Ok(()) => (true, None),
            Err(e) => {
                let why = Chain(&e).to_string();
                tracing::warn!(error = %why, name = %records.name, "publishing the control-plane name failed");
                (false, Some(why))
            }
        }
    }

    /// Deletes what a stopped founding created: VMs first (concurrently), then the group, which
    /// the platform refuses to delete while a VM still uses it.
    async fn compensate(&self, created: Created) -> CleanupReport {
        let mut report = CleanupReport::default();
        let deletions = join_all(created.vms.iter().map(|id| self.compute.delete_vm(id))).await;
        for (id, result) in created.vms.into_iter().zip(deletions) {
            record_cleanup(&mut report, CreatedResource::Vm(id), result);
        }
        if let Some(group) = created.security_group {
            let result = self.compute.delete_security_group(&group).await;
            record_cleanup(&mut report, CreatedResource::SecurityGroup(group), result);
        }
        report
    }
}

fn record_cleanup(
    report: &mut CleanupReport,
    resource: CreatedResource,
    result: Result<(), ComputeError>,
) {
    match result {
        Ok(()) => report.removed.push(resource),
        Err(e) => {
            let why = Chain(&e).to_string();
            tracing::error!(resource = %resource, error = %why, "could not delete a resource of a stopped founding; it is left behind");
            report.left_behind.push((resource, why));
        }
    }
}

fn stopped(failure: FoundingFailure, cleanup: CleanupReport) -> FoundClusterError {
    FoundClusterError::Failed { failure, cleanup }
}

fn step_span(step: FoundingStep) -> tracing::Span {
    info_span!("founding_step", step = step.as_str())
}

fn resource_tags(f: &Founding<'_>, ordinal: Option<NodeOrdinal>) -> Tags {
    let mut tags = Tags::new();
    tags.insert(tags::ROLE.to_owned(), tags::ROLE_CONTROL_PLANE.to_owned());
    tags.insert(tags::CLUSTER_ID.to_owned(), f.cluster_id.to_string());
    tags.insert(tags::ORG_ID.to_owned(), f.org.to_string());
    if let Some(ordinal) = ordinal {
        tags.insert(tags::ORDINAL.to_owned(), ordinal.to_string());
    }
    tags
}

/// The control-plane group's rules: all traffic from the subnet's IPv4 range (etcd peers, the
/// kubelet) and the API port from anywhere, over IPv6 too when the subnet has it.
fn control_plane_rules(
    subnet_v4: Ipv4Net,
    subnet_v6: Option<Ipv6Net>,
    api_port: u16,
) -> Vec<IngressRule> {
    let mut rules = vec![
        IngressRule {
            protocol: RuleProtocol::Any,
            remote: IpNet::V4(subnet_v4),
        },
        IngressRule {
            protocol: RuleProtocol::Tcp { port: api_port },
            remote: IpNet::V4(Ipv4Net::default()),
        },
    ];
    if subnet_v6.is_some() {
        rules.push(IngressRule {
            protocol: RuleProtocol::Tcp { port: api_port },
            remote: IpNet::V6(Ipv6Net::default()),
        });
    }
    rules
}

/// Pairs the planned nodes with their rows, or names the VMs still without a private IPv4.
fn placements(
    planned: &[PlannedNode],
    vm_ids: &[VmId],
    rows: &[VmIdentity],
) -> Result<Vec<NodePlacement>, Vec<VmId>> {
    let mut ready = Vec::with_capacity(planned.len());
    let mut missing = Vec::new();
    for (plan, vm_id) in planned.iter().zip(vm_ids) {
        let row = rows.iter().find(|r| &r.id == vm_id);
        match row.and_then(|r| r.ipv4.map(|ipv4| (r, ipv4))) {
            Some((row, ipv4)) => ready.push(NodePlacement {
                ordinal: plan.ordinal,
                name: plan.name.clone(),
                vm_id: vm_id.clone(),
                addresses: NodeAddresses {
                    ipv4,
                    ipv6: row.ipv6,
                    public_ipv4: row.public_ipv4,
                },
            }),
            None => missing.push(vm_id.clone()),
        }
    }
    if missing.is_empty() {
        Ok(ready)
    } else {
        Err(missing)
    }
}

/// The shared name's records: each node's public IPv4 where it has one, else its private IPv4;
/// and each node's IPv6.
fn control_plane_records(name: &str, nodes: &[NodePlacement]) -> AddressRecords {
    AddressRecords {
        name: name.to_owned(),
        ipv4: nodes
            .iter()
            .map(|n| n.addresses.public_ipv4.unwrap_or(n.addresses.ipv4))
            .collect(),
        ipv6: nodes.iter().filter_map(|n| n.addresses.ipv6).collect(),
    }
}

fn suggested_records(records: &AddressRecords) -> Vec<SuggestedDnsRecord> {
    let mut suggested = vec![SuggestedDnsRecord {
        name: records.name.clone(),
        record_type: "A",
        values: records.ipv4.iter().map(ToString::to_string).collect(),
    }];
    if !records.ipv6.is_empty() {
        suggested.push(SuggestedDnsRecord {
            name: records.name.clone(),
            record_type: "AAAA",
            values: records.ipv6.iter().map(ToString::to_string).collect(),
        });
    }
    suggested
}
