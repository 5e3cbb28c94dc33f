//! `FoundCluster`: the founding sequence of `POST /clusters` (docs/ARCHITECTURE.md §1, steps 2
//! to 10; step 1, validation, makes the [`ClusterSpec`] it takes), as a journaled saga.
//!
//! A founding first commits its operation and its `provisioning` cluster row (which claims the
//! name), then writes down every side effect before it happens (with the idempotency key it is
//! sent with) and after (with the resource's id), and ends with one short transaction that
//! inserts the node rows and makes the cluster `ready`. No transaction is held across a compute
//! call. While it runs, its replica renews the operation's lease; if the replica dies, another
//! one's recovery finds the lease expired and rolls the founding back from its journal.

mod certs;
mod error;
mod kubeconfig;
mod replay;
mod rollback;
mod settings;
mod supervisor;
mod userdata;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{join_all, try_join_all};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use time::OffsetDateTime;
use tokio::time::Instant;
use tracing::{Instrument, info_span};

pub(crate) use error::compute_failure;
pub use error::{
    CleanupReport, CreatedResource, FailureKind, FoundClusterError, FoundingFailure, FoundingStep,
};
pub use kubeconfig::{KubeconfigSpec, render_kubeconfig};
pub use replay::{Replay, ReplayError};
pub(crate) use rollback::roll_back;
pub use settings::{FoundingSection, FoundingSettings, LimitsSection};
pub use supervisor::{
    Foundings, IdempotencySection, IdempotencySettings, Slot, Started, SubmitError, Submitted,
};
pub use userdata::{
    BootstrapBaseUrl, BootstrapCa, bootstrap_path, bootstrap_path_template, render_userdata_shim,
};

use crate::model::{
    BootstrapToken, ClusterDnsNames, ClusterId, ClusterName, ClusterSpec, Networking,
    NodeAddresses, NodeName, NodeOrdinal, OperationId, OperationKind, OperationState, OrgId,
    ReplicaId, SecretText, SecurityGroupChoice, SecurityGroupId, VmId,
};
use crate::ports::Chain;
use crate::ports::compute::{
    Compute, IngressRule, NewSecurityGroup, NewVm, RuleProtocol, Subnet, Tags,
};
use crate::ports::dns::{AddressRecords, Dns};
use crate::ports::observer::Observer;
use crate::ports::operations::{
    FoundingRows, IdempotencyClaim, JournalEntry, Lease, NewFounding, Operations, ResourceKind,
};
use crate::ports::pki::{ClusterCa, Pki, ServiceAccountKeyPair};
use crate::ports::repo::{
    ClusterSecurityGroups, DnsOutcome, NewClusterRecord, NodePlacement, Repo, RepoError, VmIdentity,
};

/// Tag keys put on every VM and security group plinth creates.
pub mod tags {
    /// `control-plane` on VMs and groups.
    pub const ROLE: &str = "plinth.io/role";
    /// The cluster id.
    pub const CLUSTER_ID: &str = "plinth.io/cluster-id";
    /// The organization id.
    pub const ORG_ID: &str = "plinth.io/org-id";
    /// The operation that created the resource: a rollback finds by it what its journal does
    /// not know (a creation whose answer was lost).
    pub const OPERATION_ID: &str = "plinth.io/operation-id";
    /// The node ordinal (VMs only).
    pub const ORDINAL: &str = "plinth.io/ordinal";
    /// The role value of control-plane resources.
    pub const ROLE_CONTROL_PLANE: &str = "control-plane";
}

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
    /// The operation that founded it.
    pub operation_id: OperationId,
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

/// Who works on operations, and for how long a lease holds without renewal.
#[derive(Debug, Clone)]
pub struct Leasing {
    /// This replica.
    pub owner: ReplicaId,
    /// A lease's length; the holder renews it at a third of that.
    pub lease: Duration,
}

/// The ports a founding drives.
#[derive(Clone)]
pub struct FoundingPorts {
    /// Cluster truth, read (the `vms` rows).
    pub repo: Arc<dyn Repo>,
    /// The operations journal: every write of a founding.
    pub operations: Arc<dyn Operations>,
    /// The platform's compute API.
    pub compute: Arc<dyn Compute>,
    /// Trust material.
    pub pki: Arc<dyn Pki>,
    /// DNS; `None`: the deployment publishes nothing.
    pub dns: Option<Arc<dyn Dns>>,
    /// Where counts of outcomes go.
    pub observer: Arc<dyn Observer>,
}

impl std::fmt::Debug for FoundingPorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FoundingPorts")
            .field("dns", &self.dns.is_some())
            .finish_non_exhaustive()
    }
}

/// The use case: founds a cluster through the ports.
#[derive(Debug)]
pub struct FoundCluster {
    ports: FoundingPorts,
    settings: FoundingSettings,
    leasing: Leasing,
}

/// A founding to start.
#[derive(Debug, Clone)]
pub struct FoundingRequest {
    /// For whom.
    pub org: OrgId,
    /// The checked request.
    pub spec: ClusterSpec,
    /// The client's idempotency key, to keep with the operation.
    pub idempotency: Option<IdempotencyClaim>,
}

/// A founding whose operation and name are committed: [`FoundCluster::complete`] runs the rest.
pub struct Claimed(Founding);

impl Claimed {
    /// Its operation.
    pub fn operation_id(&self) -> OperationId {
        self.0.lease.operation
    }

    /// Its cluster.
    pub fn cluster_id(&self) -> ClusterId {
        self.0.cluster_id
    }
}

impl std::fmt::Debug for Claimed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claimed")
            .field("operation", &self.0.lease.operation)
            .field("cluster", &self.0.cluster_id)
            .finish_non_exhaustive()
    }
}

/// A VM the founding asks for, with the token its shim holds.
struct PlannedNode {
    ordinal: NodeOrdinal,
    name: NodeName,
    token: BootstrapToken,
    vm: NewVm,
}

/// What steps 3 to 7 make: the last transaction's rows, and what the answer needs.
struct Prepared {
    rows: FoundingRows,
    nodes: Vec<NodePlacement>,
    admin_kubeconfig: SecretText,
}

/// Per-founding facts every step reads, and what it has done so far.
struct Founding {
    cluster_id: ClusterId,
    lease: Lease,
    org: OrgId,
    spec: ClusterSpec,
    names: ClusterDnsNames,
    created_at: OffsetDateTime,
    /// The step it is at, for the lease renewals and the error.
    step: Mutex<FoundingStep>,
    /// Its side effects as far as this replica knows them, for its own rollback.
    journal: Mutex<Vec<JournalEntry>>,
    /// The subnet as read when its access was checked.
    subnet: std::sync::OnceLock<Subnet>,
}

impl Founding {
    fn step(&self) -> FoundingStep {
        *self
            .step
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, Vec<JournalEntry>> {
        self.journal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A journal write failed: if the lease is gone, another replica owns the founding now.
fn journal_error(e: RepoError, wrap: fn(RepoError) -> FoundingFailure) -> FoundingFailure {
    match e {
        RepoError::LeaseLost => FoundingFailure::Interrupted,
        other => wrap(other),
    }
}

impl FoundCluster {
    /// Wires the use case. `ports.dns: None` is a deployment without DNS: foundings then report
    /// `dns_configured = false`.
    pub fn new(ports: FoundingPorts, settings: FoundingSettings, leasing: Leasing) -> Self {
        Self {
            ports,
            settings,
            leasing,
        }
    }

    /// The settings in use.
    pub fn settings(&self) -> &FoundingSettings {
        &self.settings
    }

    /// Founds a cluster of shape `spec` (a request validated against [`Self::settings`]'
    /// defaults) for `org`: [`Self::claim`], then [`Self::complete`].
    ///
    /// # Errors
    /// As those two.
    pub async fn found(
        &self,
        org: &OrgId,
        spec: ClusterSpec,
    ) -> Result<FoundedCluster, FoundClusterError> {
        let claimed = self
            .claim(FoundingRequest {
                org: org.clone(),
                spec,
                idempotency: None,
            })
            .await?;
        self.complete(claimed).await
    }

    /// Step 2: commits the founding's operation, its `provisioning` cluster row (claiming the
    /// name) and the request's idempotency key, before any key is made or resource created.
    ///
    /// # Errors
    /// A hard stop at step 2: the name is taken, the key stands for another operation
    /// (`FoundClusterError::key_taken`), or the database failed. Nothing was written.
    pub async fn claim(&self, request: FoundingRequest) -> Result<Claimed, FoundClusterError> {
        let cluster_id = ClusterId::new_random();
        let operation = OperationId::new_random();
        let f = Founding {
            cluster_id,
            lease: Lease {
                operation,
                owner: self.leasing.owner.clone(),
            },
            names: ClusterDnsNames::new(cluster_id, &self.settings.dns_zone),
            org: request.org,
            spec: request.spec,
            created_at: OffsetDateTime::now_utc(),
            step: Mutex::new(FoundingStep::CheckAccess),
            journal: Mutex::default(),
            subnet: std::sync::OnceLock::new(),
        };
        let span = founding_span(&f);
        let claimed = async {
            self.check_access(&f)
                .instrument(step_span(FoundingStep::CheckAccess))
                .await
                .map_err(|failure| (FoundingStep::CheckAccess, failure))?;
            self.begin(&f, request.idempotency)
                .instrument(step_span(FoundingStep::ClaimName))
                .await
                .map_err(|failure| (FoundingStep::ClaimName, failure))
        }
        .instrument(span)
        .await;
        match claimed {
            Ok(()) => Ok(Claimed(f)),
            Err((step, failure)) => {
                let error = stopped(step, failure, CleanupReport::default());
                // A key taken by a founding that started at the same time is no founding of
                // its own: the caller answers from the other one.
                if !error.key_taken() {
                    self.report_outcome(Err(&error));
                }
                Err(error)
            }
        }
    }

    /// Steps 3 to 10 of a claimed founding. On a hard stop nothing is committed and the VMs and
    /// security group the founding created are deleted again (the error reports what could
    /// not be); if this replica loses the operation, the one that takes it over does that.
    ///
    /// # Errors
    /// The step that stopped the founding, why, and what its cleanup did.
    pub async fn complete(&self, claimed: Claimed) -> Result<FoundedCluster, FoundClusterError> {
        let f = claimed.0;
        let result = self.run(&f).instrument(founding_span(&f)).await;
        self.report_outcome(result.as_ref().map(|_| ()));
        result
    }

    fn report_outcome(&self, result: Result<(), &FoundClusterError>) {
        let outcome = match result {
            Ok(()) => "succeeded".to_owned(),
            // The replica that took the operation over reports how it ended.
            Err(e) if matches!(e.failure(), FoundingFailure::Interrupted) => return,
            Err(e) => {
                let (kind, _) = e.failure().classify();
                self.ports
                    .observer
                    .operation_failed(OperationKind::Found, kind.as_str());
                format!("failed_{}", e.step())
            }
        };
        self.ports
            .observer
            .operation_ended(OperationKind::Found, &outcome);
    }

    async fn run(&self, f: &Founding) -> Result<FoundedCluster, FoundClusterError> {
        let deadline = self.settings.deadline;
        // Steps 3 to 7 under the deadline and the lease renewals; the commit after them, outside
        // both: it is one short transaction, and what it did must be read from its own answer
        // (and the fence), not guessed from a deadline or a renewal racing it.
        let prepared = tokio::select! {
            outcome = tokio::time::timeout(deadline, self.forward(f)) => {
                outcome.unwrap_or(Err(FoundingFailure::Deadline(deadline)))
            }
            () = self.keep_lease(f) => Err(FoundingFailure::Interrupted),
        };
        let committed = match prepared {
            Ok(prepared) => self
                .commit(f, &prepared.rows)
                .instrument(step_span(FoundingStep::Commit))
                .await
                .map(|()| prepared),
            Err(failure) => Err(failure),
        };
        match committed {
            Ok(prepared) => Ok(self.answer(f, prepared).await),
            Err(failure) => Err(self.stop(f, failure).await),
        }
    }

    /// Before anything is written: the subnet, and every group the request names, exist and
    /// belong to the organization (or are shared). The compute service is asked under plinth's
    /// own credentials, so this is what keeps one organization out of another's network.
    async fn check_access(&self, f: &Founding) -> Result<(), FoundingFailure> {
        let compute = &self.ports.compute;
        let subnet_id = &f.spec.subnet_id;
        let subnet =
            compute
                .subnet(subnet_id)
                .await
                .map_err(|source| FoundingFailure::SubnetLookup {
                    subnet: subnet_id.clone(),
                    default: *subnet_id == self.settings.defaults.subnet_id,
                    source,
                })?;
        if !subnet.owner.admits(&f.org) {
            return Err(FoundingFailure::NotTheOrganizations(format!(
                "subnet {subnet_id}"
            )));
        }
        if let SecurityGroupChoice::Given(ids) = &f.spec.security_groups {
            let groups = futures::future::join_all(ids.iter().map(|id| async move {
                compute
                    .security_group(id)
                    .await
                    .map_err(|source| FoundingFailure::GroupLookup {
                        group: id.clone(),
                        source,
                    })
            }))
            .await;
            for group in groups {
                let group = group?;
                if !group.owner.admits(&f.org) {
                    return Err(FoundingFailure::NotTheOrganizations(format!(
                        "security group {}",
                        group.id
                    )));
                }
            }
        }
        let _ = f.subnet.set(subnet);
        Ok(())
    }

    /// Step 2: the operation and the `provisioning` cluster row, in one commit. A taken name is
    /// a conflict here, before any key is made or any resource created.
    async fn begin(
        &self,
        f: &Founding,
        idempotency: Option<IdempotencyClaim>,
    ) -> Result<(), FoundingFailure> {
        let founding = NewFounding {
            lease: f.lease.clone(),
            lease_for: self.leasing.lease,
            cluster: NewClusterRecord {
                id: f.cluster_id,
                org: f.org.clone(),
                spec: f.spec.clone(),
                networking: self.settings.networking.clone(),
                control_plane_dns_name: f.names.control_plane.clone(),
                ingress_wildcard_dns_name: f.names.ingress_wildcard.clone(),
                created_at: f.created_at,
            },
            idempotency,
            limits: self.settings.limits,
        };
        self.ports
            .operations
            .begin_founding(&founding)
            .await
            .map_err(FoundingFailure::ClaimName)
    }

    /// Renews the lease until it is lost (see [`keep_lease`]). At the commit a lost lease is no
    /// reason to stop: the commit itself ends the operation (so a renewal racing it finds it
    /// gone), and its own answer, fence and read-back decide.
    async fn keep_lease(&self, f: &Founding) {
        keep_lease(
            self.ports.operations.as_ref(),
            &f.lease,
            self.leasing.lease,
            || f.step().as_str(),
        )
        .await;
    }

    /// Moves to `step`, noting it with the operation (and renewing the lease on the way).
    async fn enter(&self, f: &Founding, step: FoundingStep) -> Result<(), FoundingFailure> {
        *f.step
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = step;
        match self
            .ports
            .operations
            .renew_lease(&f.lease, step.as_str(), self.leasing.lease)
            .await
        {
            Ok(()) => Ok(()),
            Err(RepoError::LeaseLost) => Err(FoundingFailure::Interrupted),
            Err(e) => {
                // The step is only a note; the journal writes that matter check the lease.
                tracing::warn!(step = %step, error = %Chain(&e), "noting the founding's step failed");
                Ok(())
            }
        }
    }

    /// Steps 3 to 7, and the rows of the last transaction.
    async fn forward(&self, f: &Founding) -> Result<Prepared, FoundingFailure> {
        self.enter(f, FoundingStep::CreateTrustRoot).await?;
        let ca = self
            .create_trust_root(f)
            .instrument(step_span(FoundingStep::CreateTrustRoot))
            .await?;

        self.enter(f, FoundingStep::ResolveSecurityGroups).await?;
        let groups = self
            .resolve_security_groups(f)
            .instrument(step_span(FoundingStep::ResolveSecurityGroups))
            .await?;

        self.enter(f, FoundingStep::CreateVms).await?;
        let planned = self.plan_nodes(f, &groups.attached);
        let vm_ids = self
            .create_vms(f, &planned)
            .instrument(step_span(FoundingStep::CreateVms))
            .await?;

        self.enter(f, FoundingStep::ReadBackVms).await?;
        let placements = self
            .read_back_vms(&planned, &vm_ids)
            .instrument(step_span(FoundingStep::ReadBackVms))
            .await?;

        self.enter(f, FoundingStep::SignNodeCerts).await?;
        let signed = self
            .sign_certs(f, &ca, &placements)
            .instrument(step_span(FoundingStep::SignNodeCerts))
            .await?;

        self.enter(f, FoundingStep::Commit).await?;
        let (etcd, apiserver) = self.node_rows(f, &planned, &placements, signed.nodes);
        let certificates_expire_at =
            self.earliest_expiry(&ca, &etcd, &apiserver, &signed.shared)?;
        Ok(Prepared {
            rows: FoundingRows {
                cluster: f.cluster_id,
                etcd,
                apiserver,
                shared: signed.shared,
                certificates_expire_at,
            },
            nodes: placements,
            admin_kubeconfig: signed.admin_kubeconfig,
        })
    }

    /// Step 3: the cluster CA with its intermediates and the service-account key pair, stored
    /// sealed with the cluster row.
    async fn create_trust_root(&self, f: &Founding) -> Result<ClusterCa, FoundingFailure> {
        let pki = &self.ports.pki;
        // Side by side: when the signer's key is not ready-made, its RSA prime search takes a
        // core of its own while the CAs are made on another.
        let (ca, service_account) = futures::join!(
            pki.create_cluster_ca(f.cluster_id),
            pki.create_service_account_key()
        );
        let ca = ca.map_err(FoundingFailure::CreateCa)?;
        let service_account: ServiceAccountKeyPair =
            service_account.map_err(FoundingFailure::CreateServiceAccountKey)?;
        self.ports
            .operations
            .store_trust_root(&f.lease, f.cluster_id, &ca, &service_account)
            .await
            .map_err(|e| journal_error(e, FoundingFailure::StoreTrustRoot))?;
        Ok(ca)
    }

    /// Writes down side effects about to happen.
    async fn intend(
        &self,
        f: &Founding,
        intents: &[(ResourceKind, String)],
    ) -> Result<(), FoundingFailure> {
        f.journal()
            .extend(intents.iter().map(|(kind, key)| JournalEntry {
                kind: *kind,
                idempotency_key: key.clone(),
                resource_id: None,
                deleted: false,
            }));
        self.ports
            .operations
            .record_intents(&f.lease, intents)
            .await
            .map_err(|e| journal_error(e, FoundingFailure::Journal))
    }

    /// Writes down the resource a side effect created (in memory first, so that this replica's
    /// own rollback deletes it even when the journal cannot be written).
    async fn created(
        &self,
        f: &Founding,
        key: &str,
        resource_id: &str,
    ) -> Result<(), FoundingFailure> {
        if let Some(entry) = f.journal().iter_mut().find(|e| e.idempotency_key == key) {
            entry.resource_id = Some(resource_id.to_owned());
        }
        self.ports
            .operations
            .record_created(&f.lease, key, resource_id)
            .await
            .map_err(|e| journal_error(e, FoundingFailure::Journal))
    }

    /// Step 4: the given groups, or a new one allowing all IPv4 from the subnet and the API port
    /// from anywhere.
    async fn resolve_security_groups(
        &self,
        f: &Founding,
    ) -> Result<ClusterSecurityGroups, FoundingFailure> {
        let compute = &self.ports.compute;
        let groups = match &f.spec.security_groups {
            SecurityGroupChoice::Given(ids) => ClusterSecurityGroups {
                attached: ids.clone(),
                created: None,
            },
            SecurityGroupChoice::CreateForCluster => {
                let subnet = f.subnet.get().ok_or_else(|| {
                    FoundingFailure::NotTheOrganizations(format!(
                        "subnet {} (not checked)",
                        f.spec.subnet_id
                    ))
                })?;
                let key = rollback::group_key(f.lease.operation);
                self.intend(f, &[(ResourceKind::SecurityGroup, key.clone())])
                    .await?;
                let group = compute
                    .create_security_group(&NewSecurityGroup {
                        name: format!("{}-control-plane", f.cluster_id.label()),
                        owner: f.org.clone(),
                        tags: resource_tags(f, None),
                        idempotency_key: key.clone(),
                    })
                    .await
                    .map_err(FoundingFailure::CreateSecurityGroup)?;
                self.created(f, &key, group.as_str()).await?;
                let rules = control_plane_rules(
                    subnet.ipv4_cidr,
                    subnet.ipv6_cidr,
                    self.settings.networking.api_server_port(),
                );
                // The rules do not depend on one another: one round trip's time for all.
                try_join_all(rules.iter().map(|rule| async {
                    compute
                        .add_ingress_rule(&group, rule)
                        .await
                        .map_err(|source| FoundingFailure::AddIngressRule {
                            group: group.clone(),
                            source,
                        })
                }))
                .await?;
                ClusterSecurityGroups {
                    attached: vec![group.clone()],
                    created: Some(group),
                }
            }
        };
        self.ports
            .operations
            .record_security_groups(&f.lease, f.cluster_id, &groups)
            .await
            .map_err(|e| journal_error(e, FoundingFailure::RecordSecurityGroups))?;
        Ok(groups)
    }

    fn plan_nodes(&self, f: &Founding, groups: &[SecurityGroupId]) -> Vec<PlannedNode> {
        f.spec
            .control_plane_count
            .ordinals()
            .map(|ordinal| {
                let name = NodeName::new(f.cluster_id, ordinal);
                let token = BootstrapToken::generate();
                let user_data = render_userdata_shim(
                    &self.settings.bootstrap_base_url,
                    self.settings.bootstrap_ca.as_ref(),
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
                    idempotency_key: rollback::vm_key(f.lease.operation, ordinal),
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

    /// Step 5: all VMs at once, each journaled before and after. Every creation runs to its
    /// end, so that the ids of those that succeeded are known and can be deleted if another
    /// failed.
    async fn create_vms(
        &self,
        f: &Founding,
        planned: &[PlannedNode],
    ) -> Result<Vec<VmId>, FoundingFailure> {
        let intents: Vec<(ResourceKind, String)> = planned
            .iter()
            .map(|p| (ResourceKind::Vm, p.vm.idempotency_key.clone()))
            .collect();
        self.intend(f, &intents).await?;
        // Each creation is written down as soon as it answers, so that a deadline that stops
        // the others does not lose the ids of those already made.
        let results = join_all(planned.iter().map(|p| async move {
            let result = self.ports.compute.create_vm(&p.vm).await;
            let journaled = match &result {
                Ok(id) => self.created(f, &p.vm.idempotency_key, id.as_str()).await,
                Err(_) => Ok(()),
            };
            (result, journaled)
        }))
        .await;
        let mut ids = Vec::with_capacity(planned.len());
        let mut failures = Vec::new();
        let mut journal_failure = None;
        for (node, (result, journaled)) in planned.iter().zip(results) {
            if let Err(e) = journaled {
                journal_failure.get_or_insert(e);
            }
            match result {
                Ok(id) => ids.push(id),
                Err(e) => failures.push((node.ordinal, e)),
            }
        }
        if !failures.is_empty() {
            return Err(FoundingFailure::CreateVms(failures));
        }
        match journal_failure {
            Some(failure) => Err(failure),
            None => Ok(ids),
        }
    }

    /// Step 6: reads the VMs' rows until each has its private IPv4, within the deadline. No
    /// transaction: each read is one statement.
    async fn read_back_vms(
        &self,
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
                let rows = self
                    .ports
                    .repo
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

    /// Steps 8 and 9: the one short transaction. When its outcome is not known, the operation
    /// is fenced before anything is undone (see `fence`).
    async fn commit(&self, f: &Founding, rows: &FoundingRows) -> Result<(), FoundingFailure> {
        let ops = &self.ports.operations;
        let failed = match ops.finish_founding(&f.lease, rows).await {
            Ok(()) => return Ok(()),
            Err(RepoError::LeaseLost) => return Err(FoundingFailure::Interrupted),
            Err(e) => e,
        };
        tracing::warn!(error = %Chain(&failed), "the founding's commit failed; reading it back");
        match self.fence(f).await {
            Ok(()) => Err(FoundingFailure::Commit(failed)),
            Err(RepoError::LeaseLost) => match ops.operation(f.lease.operation).await {
                Ok(Some(record)) if record.state == OperationState::Succeeded => Ok(()),
                Ok(_) => Err(FoundingFailure::Interrupted),
                Err(_) => Err(FoundingFailure::CommitUnknown(failed)),
            },
            Err(_) => Err(FoundingFailure::CommitUnknown(failed)),
        }
    }

    /// Moves the founding to its roll-back step. Renewing succeeds only while the operation
    /// still runs as this replica's, so once it has, no commit can happen any more.
    async fn fence(&self, f: &Founding) -> Result<(), RepoError> {
        self.ports
            .operations
            .renew_lease(
                &f.lease,
                FoundingStep::RollBack.as_str(),
                self.leasing.lease,
            )
            .await
    }

    /// A hard stop: unless another replica owns the founding or the commit may have happened,
    /// fence the operation, delete what it made, and end it as failed.
    async fn stop(&self, f: &Founding, failure: FoundingFailure) -> FoundClusterError {
        let step = f.step();
        tracing::warn!(step = %step, error = %Chain(&failure), "founding stopped");
        if !failure.rolls_back() {
            return stopped(step, failure, CleanupReport::default());
        }
        if let Err(e) = self.fence(f).await {
            // Either another replica owns it now, or the database cannot be reached: in both
            // cases recovery (theirs or ours) rolls it back from the journal.
            tracing::warn!(error = %Chain(&e), "the stopped founding is left to recovery");
            let failure = match e {
                RepoError::LeaseLost => FoundingFailure::Interrupted,
                _ => failure,
            };
            return stopped(step, failure, CleanupReport::default());
        }
        let journal = f.journal().clone();
        let cleanup = roll_back(
            self.ports.compute.as_ref(),
            self.ports.operations.as_ref(),
            &f.lease,
            &journal,
        )
        .instrument(step_span(FoundingStep::RollBack))
        .await;
        let error = stopped(step, failure, cleanup);
        let ops = &self.ports.operations;
        if let Err(e) = ops.fail_operation(&f.lease, &error.problem()).await {
            tracing::warn!(error = %Chain(&e), "ending the stopped founding failed; recovery will");
        }
        error
    }

    /// Step 10, and the answer.
    async fn answer(&self, f: &Founding, committed: Prepared) -> FoundedCluster {
        let vm_ids = committed.nodes.iter().map(|n| n.vm_id.clone()).collect();
        let records = control_plane_records(&f.names.control_plane, &committed.nodes);
        let (dns_configured, dns_error) = self
            .publish_dns(&records)
            .instrument(step_span(FoundingStep::PublishDns))
            .await;
        tracing::info!(dns_configured, "cluster founded");
        // Kept for a replay of this request, which answers as this one does.
        let outcome = DnsOutcome {
            configured: dns_configured,
            error: dns_error.clone(),
        };
        if let Err(e) = self
            .ports
            .repo
            .record_dns_outcome(f.cluster_id, &outcome)
            .await
        {
            tracing::warn!(error = %Chain(&e), "noting the DNS outcome failed");
        }
        FoundedCluster {
            cluster_id: f.cluster_id,
            operation_id: f.lease.operation,
            name: f.spec.name.clone(),
            vm_ids,
            control_plane_dns_name: f.names.control_plane.clone(),
            admin_kubeconfig: committed.admin_kubeconfig,
            networking: self.settings.networking.clone(),
            nodes: committed.nodes,
            bootstrap_path_template: bootstrap_path_template(f.cluster_id),
            ingress_wildcard_dns_name: f.names.ingress_wildcard.clone(),
            suggested_dns_records: suggested_records(&records),
            dns_configured,
            dns_error,
        }
    }

    /// Step 10, soft: a failure is reported, never raised.
    async fn publish_dns(&self, records: &AddressRecords) -> (bool, Option<String>) {
        let Some(dns) = &self.ports.dns else {
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
}

/// Renews `lease` at a third of its length (noting the step `step()` says) until it is lost,
/// then returns. A renewal that fails otherwise is retried at the next tick: the lease may well
/// still hold.
pub(crate) async fn keep_lease(
    operations: &dyn Operations,
    lease: &Lease,
    lease_for: Duration,
    step: impl Fn() -> &'static str,
) {
    let every = (lease_for / 3).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        match operations.renew_lease(lease, step(), lease_for).await {
            Ok(()) => {}
            Err(RepoError::LeaseLost) => {
                tracing::warn!("the operation's lease was taken over by another replica");
                return;
            }
            Err(e) => tracing::warn!(error = %Chain(&e), "renewing the operation's lease failed"),
        }
    }
}

fn stopped(
    step: FoundingStep,
    failure: FoundingFailure,
    cleanup: CleanupReport,
) -> FoundClusterError {
    FoundClusterError::Failed {
        step,
        failure,
        cleanup,
    }
}

fn founding_span(f: &Founding) -> tracing::Span {
    info_span!("found_cluster", cluster_id = %f.cluster_id, operation = %f.lease.operation, org = %f.org)
}

fn step_span(step: FoundingStep) -> tracing::Span {
    info_span!("founding_step", step = step.as_str())
}

fn resource_tags(f: &Founding, ordinal: Option<NodeOrdinal>) -> Tags {
    let mut tags = Tags::new();
    tags.insert(tags::ROLE.to_owned(), tags::ROLE_CONTROL_PLANE.to_owned());
    tags.insert(tags::CLUSTER_ID.to_owned(), f.cluster_id.to_string());
    tags.insert(tags::ORG_ID.to_owned(), f.org.to_string());
    tags.insert(tags::OPERATION_ID.to_owned(), f.lease.operation.to_string());
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
