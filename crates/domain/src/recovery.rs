//! `Recovery`: what every replica runs in the background so that nothing a founding made is
//! left behind, whatever dies when.
//!
//! - [`Recovery::recover_expired`] takes over operations whose replica stopped renewing their
//!   lease (it died, was killed, lost the database): it rolls a founding back from its journal,
//!   and finishes a deletion.
//!   Any number of replicas may run it at once: each operation goes to one of them.
//! - [`Recovery::sweep_orphans`] lists the platform's resources by plinth's tags and deletes
//!   those whose cluster has neither a row nor a running operation, once they are older than a
//!   grace period: belt and braces for a resource created but never journaled.
//! - [`Recovery::purge_idempotency_keys`] forgets clients' idempotency keys past their retention.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use time::OffsetDateTime;
use tracing::Instrument as _;

use crate::delete_cluster::DeleteCluster;
use crate::found_cluster::{CreatedResource, FailureKind, Leasing, roll_back, tags};
use crate::model::{ClusterId, OperationKind, SecurityGroupId, VmId};
use crate::ports::Chain;
use crate::ports::compute::{Compute, ComputeError, TaggedResource};
use crate::ports::observer::Observer;
use crate::ports::operations::{Lease, OperationRecord, Operations, ResourceKind};
use crate::ports::repo::RepoError;
use crate::settings::{SettingsError, seconds};

/// How many expired operations one pass takes over.
const CLAIM_BATCH: u32 = 16;

/// `[recovery]` as configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoverySection {
    /// An operation lease's length, seconds.
    pub lease_secs: u64,
    /// How often a replica looks for expired operations, seconds.
    pub scan_interval_secs: u64,
    /// How old an untracked resource must be before the sweep deletes it, seconds.
    pub orphan_grace_secs: u64,
    /// How often a replica sweeps for orphans, seconds.
    pub orphan_sweep_interval_secs: u64,
}

/// How recovery runs.
#[derive(Debug, Clone)]
pub struct RecoverySettings {
    /// An operation lease's length: a replica that stops renewing loses its operations after it.
    pub lease: Duration,
    /// How often to look for expired operations.
    pub scan_interval: Duration,
    /// How old an untracked resource must be before the sweep deletes it.
    pub orphan_grace: Duration,
    /// How often to sweep for orphans.
    pub orphan_sweep_interval: Duration,
}

impl RecoverySection {
    /// The checked settings; errors name their key within the section.
    ///
    /// # Errors
    /// A zero duration.
    pub fn settings(&self) -> Result<RecoverySettings, SettingsError> {
        Ok(RecoverySettings {
            lease: seconds("lease_secs", self.lease_secs)?,
            scan_interval: seconds("scan_interval_secs", self.scan_interval_secs)?,
            orphan_grace: seconds("orphan_grace_secs", self.orphan_grace_secs)?,
            orphan_sweep_interval: seconds(
                "orphan_sweep_interval_secs",
                self.orphan_sweep_interval_secs,
            )?,
        })
    }
}

/// The recovery use case.
pub struct Recovery {
    deletions: Arc<DeleteCluster>,
    operations: Arc<dyn Operations>,
    compute: Arc<dyn Compute>,
    observer: Arc<dyn Observer>,
    leasing: Leasing,
    orphan_grace: Duration,
}

impl std::fmt::Debug for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovery")
            .field("leasing", &self.leasing)
            .field("orphan_grace", &self.orphan_grace)
            .finish_non_exhaustive()
    }
}

impl Recovery {
    /// Wires the use case for the replica `leasing.owner`; `deletions` finishes the deletions
    /// it takes over.
    pub fn new(
        deletions: Arc<DeleteCluster>,
        operations: Arc<dyn Operations>,
        compute: Arc<dyn Compute>,
        observer: Arc<dyn Observer>,
        leasing: Leasing,
        orphan_grace: Duration,
    ) -> Self {
        Self {
            deletions,
            operations,
            compute,
            observer,
            leasing,
            orphan_grace,
        }
    }

    /// Takes over the operations whose lease expired and rolls each back: deletes what its
    /// journal and the platform's tags say it made, removes its cluster row, and ends it as
    /// failed (`interrupted`). Returns how many it ended.
    ///
    /// # Errors
    /// The operations cannot be read or claimed.
    pub async fn recover_expired(&self) -> Result<usize, RepoError> {
        let claimed = self
            .operations
            .claim_expired(&self.leasing.owner, self.leasing.lease, CLAIM_BATCH)
            .await?;
        let mut ended = 0;
        for operation in claimed {
            let span = tracing::info_span!("recover_operation", operation = %operation.id, cluster_id = %operation.cluster_id, kind = %operation.kind);
            if self.recover(&operation).instrument(span).await {
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// Rolls one claimed founding back, or finishes a deletion; whether it ended.
    async fn recover(&self, operation: &OperationRecord) -> bool {
        let lease = Lease {
            operation: operation.id,
            owner: self.leasing.owner.clone(),
        };
        if operation.kind == OperationKind::Delete {
            // A deletion only goes forward: every step is safe to run again.
            tracing::warn!(step = %operation.step, "taking over an abandoned deletion to finish it");
            self.observer.operation_recovered(operation.kind);
            self.deletions.resume(&lease, operation).await;
            return true;
        }
        tracing::warn!(step = %operation.step, "taking over an abandoned operation to roll it back");
        let cleanup = roll_back(
            self.compute.as_ref(),
            self.operations.as_ref(),
            &lease,
            &operation.journal,
        )
        .await;
        let problem = cleanup.problem(
            FailureKind::Interrupted,
            &operation.step,
            format!(
                "the replica running this operation went away at step {}; {}",
                operation.step,
                if cleanup.is_clean() {
                    "what it made was deleted"
                } else {
                    "some of what it made could not be deleted and is listed as left behind"
                }
            ),
        );
        match self.operations.fail_operation(&lease, &problem).await {
            Ok(()) => {
                tracing::info!(
                    removed = cleanup.removed.len(),
                    left_behind = cleanup.left_behind.len(),
                    "abandoned operation rolled back"
                );
                self.observer.operation_recovered(operation.kind);
                self.observer
                    .operation_ended(operation.kind, FailureKind::Interrupted.as_str());
                true
            }
            Err(e) => {
                // It stays running; its new lease expires and the next pass tries again.
                tracing::warn!(error = %Chain(&e), "ending a recovered operation failed");
                false
            }
        }
    }

    /// Deletes plinth's VMs and security groups that belong to no cluster row and no running
    /// operation and are older than the grace period. Returns how many it deleted.
    ///
    /// # Errors
    /// The platform or the database cannot be asked.
    pub async fn sweep_orphans(&self) -> Result<usize, SweepError> {
        let vms = self
            .compute
            .list_vms(tags::ROLE, tags::ROLE_CONTROL_PLANE)
            .await?;
        let groups = self
            .compute
            .list_security_groups(tags::ROLE, tags::ROLE_CONTROL_PLANE)
            .await?;
        let clusters: BTreeSet<ClusterId> =
            vms.iter().chain(&groups).filter_map(cluster_of).collect();
        let clusters: Vec<ClusterId> = clusters.into_iter().collect();
        let live: BTreeSet<ClusterId> = self
            .operations
            .live_clusters(&clusters)
            .await?
            .into_iter()
            .collect();
        let old_enough = OffsetDateTime::now_utc() - self.orphan_grace;
        let orphan = |r: &&TaggedResource| {
            r.created_at < old_enough && cluster_of(r).is_none_or(|c| !live.contains(&c))
        };
        let mut deleted = 0;
        for vm in vms.iter().filter(orphan) {
            let Ok(id) = VmId::parse(&vm.id) else {
                continue;
            };
            deleted += usize::from(self.delete_orphan(
                CreatedResource::Vm(id.clone()),
                ResourceKind::Vm,
                self.compute.delete_vm(&id).await,
            ));
        }
        for group in groups.iter().filter(orphan) {
            let Ok(id) = SecurityGroupId::parse(&group.id) else {
                continue;
            };
            deleted += usize::from(self.delete_orphan(
                CreatedResource::SecurityGroup(id.clone()),
                ResourceKind::SecurityGroup,
                self.compute.delete_security_group(&id).await,
            ));
        }
        Ok(deleted)
    }

    /// Forgets the idempotency keys past their retention, so that a key can start anew; returns
    /// how many.
    ///
    /// # Errors
    /// The database failed.
    pub async fn purge_idempotency_keys(&self) -> Result<usize, RepoError> {
        let purged = self.operations.purge_idempotency_keys().await?;
        Ok(usize::try_from(purged).unwrap_or(usize::MAX))
    }

    fn delete_orphan(
        &self,
        resource: CreatedResource,
        kind: ResourceKind,
        result: Result<(), ComputeError>,
    ) -> bool {
        match result {
            Ok(()) => {
                tracing::warn!(resource = %resource, "deleted an orphaned resource");
                self.observer.orphan_deleted(kind);
                true
            }
            Err(e) => {
                // A VM still using a group makes the group wait for the next sweep.
                tracing::warn!(resource = %resource, error = %Chain(&e), "deleting an orphaned resource failed");
                false
            }
        }
    }
}

/// The cluster a resource is tagged with.
fn cluster_of(resource: &TaggedResource) -> Option<ClusterId> {
    resource
        .tags
        .get(tags::CLUSTER_ID)
        .and_then(|id| ClusterId::parse(id).ok())
}

/// Why a sweep could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SweepError {
    /// The platform could not list its resources.
    #[error("listing the platform's resources failed")]
    Compute(#[from] ComputeError),
    /// The database could not say which clusters live.
    #[error("reading which clusters live failed")]
    Repo(#[from] RepoError),
}

#[cfg(test)]
mod tests;
