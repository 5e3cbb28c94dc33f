//! `DeleteCluster`: `DELETE /clusters/{id}` as a journaled operation, run and recovered like a
//! founding but rolled forward, never back: once a cluster is `deleting`, the only way out is
//! gone.
//!
//! The order is the one that leaves nothing billable or misleading behind: the control plane's
//! DNS records first (nothing points at VMs about to go), then every VM (concurrently; one that
//! is already gone counts as deleted), then the security group plinth created for the cluster
//! (the compute service refuses it while VMs still use it, so that is retried with backoff until
//! the deadline; groups the caller passed in are never touched), and last, in one transaction,
//! the cluster's rows with every sealed key. Every step is safe to run again, so a deletion
//! whose replica died is finished by whichever replica's recovery takes it over, and one that
//! stopped (the compute service down past the deadline) leaves the cluster `deleting` until
//! another `DELETE` finishes it.

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::join_all;
use tracing::Instrument as _;

use crate::found_cluster::{
    FailureKind, Foundings, IdempotencySettings, Leasing, SubmitError, compute_failure, keep_lease,
    tags,
};
use crate::model::{ClusterId, Idempotency, OperationId, OperationKind, OrgId, VmId};
use crate::ports::Chain;
use crate::ports::compute::{Compute, ComputeError};
use crate::ports::dns::{Dns, DnsError};
use crate::ports::observer::Observer;
use crate::ports::operations::{
    DeletionStart, IdempotencyClaim, Lease, NewDeletion, OperationProblem, OperationRecord,
    Operations,
};
use crate::ports::repo::{Repo, RepoError};

/// The first pause before asking again to delete a group still in use; it doubles up to
/// [`GROUP_RETRY_MAX_PAUSE`].
const GROUP_RETRY_FIRST_PAUSE: Duration = Duration::from_millis(200);
const GROUP_RETRY_MAX_PAUSE: Duration = Duration::from_secs(5);

/// Where a deletion is, as noted with its operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeletionStep {
    /// The operation is committed; nothing deleted yet.
    Begin,
    /// Removing the control plane's DNS records.
    DeleteDns,
    /// Deleting the VMs.
    DeleteVms,
    /// Deleting the security group plinth created.
    DeleteSecurityGroup,
    /// Removing the rows.
    RemoveRows,
}

impl DeletionStep {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Begin => "begin",
            Self::DeleteDns => "delete_dns",
            Self::DeleteVms => "delete_vms",
            Self::DeleteSecurityGroup => "delete_security_group",
            Self::RemoveRows => "remove_rows",
        }
    }
}

/// Why a deletion stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeletionFailure {
    /// The cluster's DNS records could not be removed.
    #[error("removing the DNS records failed")]
    Dns(#[source] DnsError),
    /// The compute service failed to delete a resource.
    #[error("deleting {what} failed")]
    Compute {
        /// e.g. `VM vm-1`.
        what: String,
        /// Why.
        #[source]
        source: ComputeError,
    },
    /// The database failed.
    #[error("the database failed")]
    Database(#[source] RepoError),
    /// The deletion outlasted its deadline.
    #[error("the deletion outlasted its deadline of {0:?}")]
    Deadline(Duration),
    /// Another replica owns the deletion now.
    #[error("the deletion was taken over by another replica")]
    Interrupted,
}

impl DeletionFailure {
    /// The class of failure, and what to tell the caller.
    pub fn classify(&self) -> (FailureKind, String) {
        const STAYS: &str = "the cluster stays `deleting`; DELETE it again to finish";
        match self {
            Self::Dns(_) => (
                FailureKind::DnsFailed,
                format!("the DNS server failed while removing the cluster's records; {STAYS}"),
            ),
            Self::Compute { what, source } => {
                let (kind, detail) = compute_failure(source, &format!("deleting {what}"));
                (kind, format!("{detail}; {STAYS}"))
            }
            Self::Database(_) | Self::Interrupted => (
                FailureKind::DatabaseUnavailable,
                format!("the database failed while deleting the cluster; {STAYS}"),
            ),
            Self::Deadline(limit) => (
                FailureKind::DeletionDeadline,
                format!(
                    "the deletion did not finish within {}s; {STAYS}",
                    limit.as_secs()
                ),
            ),
        }
    }
}

fn database(e: RepoError) -> DeletionFailure {
    match e {
        RepoError::LeaseLost => DeletionFailure::Interrupted,
        other => DeletionFailure::Database(other),
    }
}

/// Why a deletion was not started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeleteError {
    /// The organization has no such cluster.
    #[error("no cluster {0} in your organization")]
    NotFound(ClusterId),
    /// The cluster is still being founded.
    #[error("{0}")]
    StillFounding(String),
    /// The idempotency key was first sent with another request.
    #[error("this idempotency key was first used with another request")]
    KeyReused,
    /// This replica cannot take another operation now, or is shutting down.
    #[error(transparent)]
    Unavailable(SubmitError),
    /// The database failed.
    #[error("the database failed")]
    Database(#[source] RepoError),
}

/// What `DELETE` started, or found running.
#[derive(Debug)]
pub enum DeletionBegun {
    /// A new deletion runs as a task of its own.
    Started {
        /// Its operation.
        operation: OperationId,
    },
    /// A deletion of the cluster already runs.
    AlreadyRunning(Box<OperationRecord>),
    /// The request's idempotency key stands for this operation.
    Replayed(Box<OperationRecord>),
}

/// The ports a deletion drives.
#[derive(Clone)]
pub struct DeletionPorts {
    /// The cluster as stored (its VMs, its group, its name).
    pub repo: Arc<dyn Repo>,
    /// The operations journal.
    pub operations: Arc<dyn Operations>,
    /// The platform's compute API.
    pub compute: Arc<dyn Compute>,
    /// DNS; `None`: the deployment publishes nothing.
    pub dns: Option<Arc<dyn Dns>>,
    /// Where counts of outcomes go.
    pub observer: Arc<dyn Observer>,
}

impl std::fmt::Debug for DeletionPorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeletionPorts")
            .field("dns", &self.dns.is_some())
            .finish_non_exhaustive()
    }
}

/// The use case.
pub struct DeleteCluster {
    ports: DeletionPorts,
    leasing: Leasing,
    deadline: Duration,
    idempotency: IdempotencySettings,
}

impl std::fmt::Debug for DeleteCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeleteCluster")
            .field("leasing", &self.leasing)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl DeleteCluster {
    /// Wires the use case: each deletion within `deadline`.
    pub fn new(
        ports: DeletionPorts,
        leasing: Leasing,
        deadline: Duration,
        idempotency: IdempotencySettings,
    ) -> Self {
        Self {
            ports,
            leasing,
            deadline,
            idempotency,
        }
    }

    /// Starts deleting `cluster` of `org` and returns once the cluster is `deleting`; the
    /// deletion runs on as a task of `supervisor`'s (under the bound and drain it shares with
    /// the foundings). A deletion already running, or the operation the request's idempotency
    /// key stands for, is answered instead.
    ///
    /// # Errors
    /// `NotFound`, `StillFounding`, `KeyReused`, `Unavailable` (busy or shutting down), or
    /// `Database`.
    pub async fn begin(
        self: &Arc<Self>,
        supervisor: &Foundings,
        org: &OrgId,
        cluster: ClusterId,
        idempotency: Option<Idempotency>,
    ) -> Result<DeletionBegun, DeleteError> {
        if let Some(replay) = self.replay(org, idempotency.as_ref()).await? {
            return Ok(replay);
        }
        let slot = supervisor.slot().map_err(DeleteError::Unavailable)?;
        let lease = Lease {
            operation: OperationId::new_random(),
            owner: self.leasing.owner.clone(),
        };
        let deletion = NewDeletion {
            lease: lease.clone(),
            lease_for: self.leasing.lease,
            org: org.clone(),
            cluster,
            idempotency: idempotency.clone().map(|idempotency| IdempotencyClaim {
                idempotency,
                retain_for: self.idempotency.retention,
            }),
        };
        match self.ports.operations.begin_deletion(&deletion).await {
            Ok(DeletionStart::Started) => {}
            Ok(DeletionStart::AlreadyRunning(running)) => {
                return Ok(DeletionBegun::AlreadyRunning(running));
            }
            Err(RepoError::NotFound(_)) => return Err(DeleteError::NotFound(cluster)),
            Err(RepoError::Conflict(why)) => return Err(DeleteError::StillFounding(why)),
            Err(RepoError::IdempotencyKeyTaken) => {
                return match self.replay(org, idempotency.as_ref()).await? {
                    Some(replay) => Ok(replay),
                    None => Err(DeleteError::Database(RepoError::IdempotencyKeyTaken)),
                };
            }
            Err(e) => return Err(DeleteError::Database(e)),
        }
        let this = Arc::clone(self);
        let (org, operation) = (org.clone(), lease.operation);
        supervisor.spawn(slot, async move {
            this.run(&lease, &org, cluster).await;
        });
        Ok(DeletionBegun::Started { operation })
    }

    async fn replay(
        &self,
        org: &OrgId,
        idempotency: Option<&Idempotency>,
    ) -> Result<Option<DeletionBegun>, DeleteError> {
        let Some(idempotency) = idempotency else {
            return Ok(None);
        };
        let first = self
            .ports
            .operations
            .idempotent_operation(org, &idempotency.key)
            .await
            .map_err(DeleteError::Database)?;
        match first {
            None => Ok(None),
            Some(first) if first.fingerprint != idempotency.fingerprint => {
                Err(DeleteError::KeyReused)
            }
            Some(first) => Ok(Some(DeletionBegun::Replayed(Box::new(first.operation)))),
        }
    }

    /// Finishes the deletion `operation` that recovery took over under `lease`.
    pub async fn resume(&self, lease: &Lease, operation: &OperationRecord) {
        self.run(lease, &operation.org, operation.cluster_id).await;
    }

    /// Runs every step under the deadline while renewing the lease, then ends the operation:
    /// `succeeded` with the rows gone, or `failed` with the cluster left `deleting`.
    async fn run(&self, lease: &Lease, org: &OrgId, cluster: ClusterId) {
        let span = tracing::info_span!("delete_cluster", cluster_id = %cluster, operation = %lease.operation, org = %org);
        async {
            let step = Mutex::new(DeletionStep::Begin);
            let now = || *step.lock().unwrap_or_else(PoisonError::into_inner);
            let steps = async {
                tokio::time::timeout(self.deadline, self.steps(lease, org, cluster, &step))
                    .await
                    .unwrap_or(Err(DeletionFailure::Deadline(self.deadline)))
            };
            let outcome = tokio::select! {
                outcome = steps => outcome,
                () = keep_lease(self.ports.operations.as_ref(), lease, self.leasing.lease, || now().as_str()) => {
                    Err(DeletionFailure::Interrupted)
                }
            };
            let outcome = match outcome {
                Ok(()) => "succeeded".to_owned(),
                Err(DeletionFailure::Interrupted) => {
                    // The replica that took it over finishes it, and reports how it ended.
                    tracing::warn!("the deletion was taken over by another replica");
                    return;
                }
                Err(failure) => {
                    tracing::warn!(step = now().as_str(), error = %Chain(&failure), "deletion stopped");
                    let (kind, detail) = failure.classify();
                    self.ports
                        .observer
                        .operation_failed(OperationKind::Delete, kind.as_str());
                    let problem = OperationProblem {
                        kind: kind.as_str().to_owned(),
                        step: now().as_str().to_owned(),
                        detail,
                        removed: Vec::new(),
                        left_behind: Vec::new(),
                    };
                    if let Err(e) = self.ports.operations.fail_operation(lease, &problem).await {
                        tracing::warn!(error = %Chain(&e), "ending the stopped deletion failed; recovery will");
                    }
                    format!("failed_{}", now().as_str())
                }
            };
            self.ports.observer.operation_ended(OperationKind::Delete, &outcome);
        }
        .instrument(span)
        .await;
    }

    async fn steps(
        &self,
        lease: &Lease,
        org: &OrgId,
        cluster: ClusterId,
        step: &Mutex<DeletionStep>,
    ) -> Result<(), DeletionFailure> {
        let enter = |next: DeletionStep| async move {
            *step.lock().unwrap_or_else(PoisonError::into_inner) = next;
            self.ports
                .operations
                .renew_lease(lease, next.as_str(), self.leasing.lease)
                .await
                .map_err(database)
        };
        // What the rows say the cluster has; gone already means only the rows' removal is left.
        let details = self
            .ports
            .repo
            .find_cluster(org, cluster)
            .await
            .map_err(database)?;
        if let Some(details) = &details {
            enter(DeletionStep::DeleteDns).await?;
            if let Some(dns) = &self.ports.dns {
                dns.delete_address_records(&details.summary.control_plane_dns_name)
                    .await
                    .map_err(DeletionFailure::Dns)?;
            }

            enter(DeletionStep::DeleteVms).await?;
            self.delete_vms(cluster, details.nodes.iter().map(|n| n.vm_id.clone()))
                .await?;

            enter(DeletionStep::DeleteSecurityGroup).await?;
            if let Some(group) = &details.security_groups.created {
                self.delete_group(group).await?;
            }
        }
        enter(DeletionStep::RemoveRows).await?;
        self.ports
            .operations
            .finish_deletion(lease)
            .await
            .map_err(database)?;
        tracing::info!("cluster deleted");
        Ok(())
    }

    /// Deletes the cluster's VMs: those its rows name and any other carrying its tag.
    async fn delete_vms(
        &self,
        cluster: ClusterId,
        known: impl Iterator<Item = VmId>,
    ) -> Result<(), DeletionFailure> {
        let compute = &self.ports.compute;
        let tagged = compute
            .list_vms(tags::CLUSTER_ID, &cluster.to_string())
            .await
            .map_err(|source| DeletionFailure::Compute {
                what: "the cluster's VMs (listing them)".to_owned(),
                source,
            })?;
        let vms: BTreeSet<String> = known
            .map(|id| id.to_string())
            .chain(tagged.into_iter().map(|vm| vm.id))
            .collect();
        let deletions = vms
            .iter()
            .filter_map(|id| VmId::parse(id).ok())
            .map(|id| async move {
                compute
                    .delete_vm(&id)
                    .await
                    .map_err(|source| DeletionFailure::Compute {
                        what: format!("VM {id}"),
                        source,
                    })
            });
        join_all(deletions).await.into_iter().collect()
    }

    /// Deletes the group plinth created, asking again while the compute service says it is
    /// still in use (its VMs are still going away); the deadline bounds the retries.
    async fn delete_group(
        &self,
        group: &crate::model::SecurityGroupId,
    ) -> Result<(), DeletionFailure> {
        let mut pause = GROUP_RETRY_FIRST_PAUSE;
        loop {
            match self.ports.compute.delete_security_group(group).await {
                Err(ComputeError::Conflict(why)) => {
                    tracing::info!(group = %group, why, "the security group is still in use; asking again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(GROUP_RETRY_MAX_PAUSE);
                }
                result => {
                    return result.map_err(|source| DeletionFailure::Compute {
                        what: format!("security group {group}"),
                        source,
                    });
                }
            }
        }
    }
}
