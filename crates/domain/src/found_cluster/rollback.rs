//! Undoing a founding: deleting every resource its operation made. The founding itself does it
//! when it stops; recovery does it for an operation whose replica died. Either way it must find
//! what the journal knows and what it does not (a creation whose answer was lost), so it also
//! lists the platform's resources by the operation's tag. Deleting is idempotent: what is gone
//! already counts as deleted, so a rollback that is itself interrupted can simply run again.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;

use super::tags;
use super::{CleanupReport, CreatedResource};
use crate::model::{OperationId, SecurityGroupId, VmId};
use crate::ports::Chain;
use crate::ports::compute::{Compute, ComputeError, TaggedResource};
use crate::ports::operations::{JournalEntry, Lease, Operations, ResourceKind};

/// How often deleting a security group that is still "in use" is tried: the VMs that used it
/// were deleted a moment ago, and a platform may take a while to let go of them.
const GROUP_ATTEMPTS: u32 = 6;
const GROUP_FIRST_PAUSE: Duration = Duration::from_millis(200);

/// The idempotency key of an operation's security group.
pub(crate) fn group_key(operation: OperationId) -> String {
    format!("{operation}/security-group")
}

/// The idempotency key of an operation's VM for node `ordinal`.
pub(crate) fn vm_key(operation: OperationId, ordinal: impl std::fmt::Display) -> String {
    format!("{operation}/vm/{ordinal}")
}

/// A resource to delete, with its journal key when it has one.
type Targets = BTreeMap<String, (CreatedResource, Option<String>)>;

/// Deletes every VM and the security group of `lease`'s operation: those in `journal` and those
/// the platform lists with the operation's tag. Deletions are written to the journal (a failed
/// write is only logged: the next rollback deletes again, harmlessly).
pub(crate) async fn roll_back(
    compute: &dyn Compute,
    operations: &dyn Operations,
    lease: &Lease,
    journal: &[JournalEntry],
) -> CleanupReport {
    let mut report = CleanupReport::default();
    let op = lease.operation;
    let tag = op.to_string();

    let listed = compute.list_vms(tags::OPERATION_ID, &tag).await;
    let vms = targets(journal, ResourceKind::Vm, listed, &mut report, |id, r| {
        let key = r
            .and_then(|r| r.tags.get(tags::ORDINAL))
            .map(|n| vm_key(op, n));
        VmId::parse(id)
            .ok()
            .map(|id| (CreatedResource::Vm(id), key))
    });
    let deletions = join_all(vms.values().map(|(resource, _)| async move {
        match resource {
            CreatedResource::Vm(id) => compute.delete_vm(id).await,
            _ => Ok(()),
        }
    }))
    .await;
    for ((resource, key), result) in vms.into_values().zip(deletions) {
        settle(operations, lease, &mut report, resource, key, result).await;
    }

    let listed = compute.list_security_groups(tags::OPERATION_ID, &tag).await;
    let groups = targets(
        journal,
        ResourceKind::SecurityGroup,
        listed,
        &mut report,
        |id, _| {
            SecurityGroupId::parse(id)
                .ok()
                .map(|id| (CreatedResource::SecurityGroup(id), Some(group_key(op))))
        },
    );
    for (resource, key) in groups.into_values() {
        let result = match &resource {
            CreatedResource::SecurityGroup(id) => delete_group(compute, id).await,
            _ => Ok(()),
        };
        settle(operations, lease, &mut report, resource, key, result).await;
    }
    report
}

/// What of one kind to delete: the journal's resources not deleted yet, and the listed ones.
/// `make` builds a target from an id and, for a listed resource, the listing.
fn targets(
    journal: &[JournalEntry],
    kind: ResourceKind,
    listed: Result<Vec<TaggedResource>, ComputeError>,
    report: &mut CleanupReport,
    make: impl Fn(&str, Option<&TaggedResource>) -> Option<(CreatedResource, Option<String>)>,
) -> Targets {
    let mut targets = Targets::new();
    for entry in journal.iter().filter(|e| e.kind == kind && !e.deleted) {
        if let Some(id) = &entry.resource_id
            && let Some((resource, _)) = make(id, None)
        {
            targets.insert(id.clone(), (resource, Some(entry.idempotency_key.clone())));
        }
    }
    match listed {
        Ok(listed) => {
            for resource in &listed {
                if !targets.contains_key(&resource.id)
                    && let Some(target) = make(&resource.id, Some(resource))
                {
                    targets.insert(resource.id.clone(), target);
                }
            }
        }
        Err(e) => {
            // Without the listing, a creation whose answer was lost cannot be found now; the
            // orphan sweep finds it by its tags later.
            let why = Chain(&e).to_string();
            tracing::warn!(kind = kind.as_str(), error = %why, "listing an operation's resources failed");
            for entry in journal
                .iter()
                .filter(|e| e.kind == kind && e.resource_id.is_none() && !e.deleted)
            {
                let unknown = CreatedResource::Unknown {
                    kind,
                    idempotency_key: entry.idempotency_key.clone(),
                };
                report.left_behind.push((unknown, why.clone()));
            }
        }
    }
    targets
}

async fn delete_group(compute: &dyn Compute, group: &SecurityGroupId) -> Result<(), ComputeError> {
    let mut pause = GROUP_FIRST_PAUSE;
    let mut attempt = 1;
    loop {
        match compute.delete_security_group(group).await {
            Err(ComputeError::Conflict(_)) if attempt < GROUP_ATTEMPTS => {
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
            result => return result,
        }
    }
}

async fn settle(
    operations: &dyn Operations,
    lease: &Lease,
    report: &mut CleanupReport,
    resource: CreatedResource,
    key: Option<String>,
    result: Result<(), ComputeError>,
) {
    match result {
        Ok(()) => {
            if let Some(key) = key
                && let Err(e) = operations.record_deleted(lease, &key).await
            {
                tracing::warn!(resource = %resource, error = %Chain(&e), "noting a deletion in the journal failed");
            }
            report.removed.push(resource);
        }
        Err(e) => {
            let why = Chain(&e).to_string();
            tracing::error!(resource = %resource, error = %why, "could not delete a resource of a stopped founding; it is left behind");
            report.left_behind.push((resource, why));
        }
    }
}
