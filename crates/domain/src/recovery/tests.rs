//! Recovery proven with mockall doubles: abandoned operations are claimed, rolled back from their
//! journal and from the platform's tags, and ended as interrupted; orphans are swept only when
//! they are old enough and belong to no live cluster. Each test's doubles share one `Sequence`,
//! and a call nobody expects (a deletion of something that must stay) panics.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mockall::Sequence;
use time::OffsetDateTime;

use super::*;
use crate::delete_cluster::DeletionPorts;
use crate::found_cluster::IdempotencySettings;
use crate::model::{OperationId, OperationKind, OperationState, OrgId, ReplicaId};
use crate::ports::compute::{MockCompute, Tags};
use crate::ports::operations::{JournalEntry, MockOperations, OperationProblem};
use crate::testing::{Observed, RecordingObserver};

/// The replica recovering.
const ME: &str = "replica-b";
const LEASE: Duration = Duration::from_secs(30);
const GRACE: Duration = Duration::from_secs(3600);

fn recovery(ops: MockOperations, compute: MockCompute) -> (Recovery, Arc<RecordingObserver>) {
    let observer = Arc::new(RecordingObserver::default());
    let (ops, compute): (Arc<dyn Operations>, Arc<dyn Compute>) =
        (Arc::new(ops), Arc::new(compute));
    let deletions = DeleteCluster::new(
        DeletionPorts {
            repo: Arc::new(crate::ports::repo::MockRepo::new()),
            operations: Arc::clone(&ops),
            compute: Arc::clone(&compute),
            dns: None,
            observer: Arc::clone(&observer) as Arc<dyn Observer>,
        },
        leasing(),
        Duration::from_secs(60),
        IdempotencySettings {
            retention: Duration::from_secs(3600),
        },
    );
    let recovery = Recovery::new(
        Arc::new(deletions),
        ops,
        compute,
        Arc::clone(&observer) as Arc<dyn Observer>,
        leasing(),
        GRACE,
    );
    (recovery, observer)
}

fn leasing() -> Leasing {
    Leasing {
        owner: ReplicaId::new(ME),
        lease: LEASE,
    }
}

/// A running operation whose replica went away at `step`.
fn abandoned(step: &str) -> OperationRecord {
    let now = OffsetDateTime::now_utc();
    OperationRecord {
        id: OperationId::new_random(),
        kind: OperationKind::Found,
        org: OrgId::parse("org-1").unwrap(),
        cluster_id: ClusterId::new_random(),
        state: OperationState::Running,
        step: step.to_owned(),
        owner: ReplicaId::new("replica-gone"),
        lease_expires_at: Some(now - time::Duration::minutes(1)),
        problem: None,
        started_at: now - time::Duration::minutes(10),
        ended_at: None,
        journal: Vec::new(),
    }
}

fn entry(kind: ResourceKind, key: String, id: Option<&str>, deleted: bool) -> JournalEntry {
    JournalEntry {
        kind,
        idempotency_key: key,
        resource_id: id.map(str::to_owned),
        deleted,
    }
}

/// A resource as the platform lists it, created `age` ago.
fn tagged(id: &str, tags: &[(&str, &str)], age: Duration) -> TaggedResource {
    TaggedResource {
        id: id.to_owned(),
        tags: tags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<Tags>(),
        created_at: OffsetDateTime::now_utc() - age,
    }
}

/// Every write recovery makes for an operation must name that operation and this replica.
fn ours(lease: &Lease, operation: OperationId) -> bool {
    lease.operation == operation && lease.owner.as_str() == ME
}

fn unavailable() -> RepoError {
    RepoError::Unavailable("injected".into())
}

fn compute_unavailable() -> ComputeError {
    ComputeError::Unavailable("injected".into())
}

// ---- expired operations ----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn recovery_claims_expired_operations_and_rolls_each_back_from_its_journal_and_tags() {
    let mut operation = abandoned("create_vms");
    let op = operation.id;
    operation.journal = vec![
        entry(
            ResourceKind::SecurityGroup,
            format!("{op}/security-group"),
            Some("sg-1"),
            false,
        ),
        entry(ResourceKind::Vm, format!("{op}/vm/1"), Some("vm-1"), false),
        // Created, but its answer was lost: only the platform's listing knows it.
        entry(ResourceKind::Vm, format!("{op}/vm/2"), None, false),
        // Deleted already by an earlier, interrupted rollback.
        entry(ResourceKind::Vm, format!("{op}/vm/3"), Some("vm-3"), true),
    ];
    let mut seq = Sequence::new();
    let mut ops = MockOperations::new();
    let mut compute = MockCompute::new();
    ops.expect_claim_expired()
        .withf(|owner, lease_for, limit| {
            owner.as_str() == ME && *lease_for == LEASE && *limit == 16
        })
        .times(1)
        .in_sequence(&mut seq)
        .return_once(move |_, _, _| Ok(vec![operation]));
    let tag = op.to_string();
    compute
        .expect_list_vms()
        .withf(move |key, value| key == tags::OPERATION_ID && value == tag)
        .times(1)
        .in_sequence(&mut seq)
        .returning(move |_, value| {
            Ok(vec![
                tagged(
                    "vm-2",
                    &[(tags::OPERATION_ID, value), (tags::ORDINAL, "2")],
                    GRACE,
                ),
                tagged(
                    "vm-1",
                    &[(tags::OPERATION_ID, value), (tags::ORDINAL, "1")],
                    GRACE,
                ),
            ])
        });
    for vm in ["vm-1", "vm-2"] {
        compute
            .expect_delete_vm()
            .withf(move |id| id.as_str() == vm)
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(()));
    }
    for key in [format!("{op}/vm/1"), format!("{op}/vm/2")] {
        ops.expect_record_deleted()
            .withf(move |lease, k| ours(lease, op) && k == key)
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(()));
    }
    compute
        .expect_list_security_groups()
        .withf(|key, _| key == tags::OPERATION_ID)
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(Vec::new()));
    compute
        .expect_delete_security_group()
        .withf(|id| id.as_str() == "sg-1")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(()));
    let group_key = format!("{op}/security-group");
    ops.expect_record_deleted()
        .withf(move |lease, k| ours(lease, op) && k == group_key)
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(()));
    let problem: Arc<Mutex<Option<OperationProblem>>> = Arc::default();
    let stored = Arc::clone(&problem);
    ops.expect_fail_operation()
        .withf(move |lease, _| ours(lease, op))
        .times(1)
        .in_sequence(&mut seq)
        .returning(move |_, problem| {
            *stored.lock().unwrap() = Some(problem.clone());
            Ok(())
        });

    let (recovery, observer) = recovery(ops, compute);
    assert_eq!(recovery.recover_expired().await.unwrap(), 1);
    drop(recovery);

    let problem = problem.lock().unwrap().take().unwrap();
    assert_eq!(problem.kind, "interrupted");
    assert_eq!(problem.step, "create_vms");
    assert!(problem.detail.contains("create_vms"), "{}", problem.detail);
    assert_eq!(
        problem.removed,
        ["vm vm-1", "vm vm-2", "security_group sg-1"]
    );
    assert!(problem.left_behind.is_empty());
    assert_eq!(
        observer.seen(),
        Observed {
            ended: vec![(OperationKind::Found, "interrupted".to_owned())],
            recovered: vec![OperationKind::Found],
            ..Observed::default()
        }
    );
}

#[tokio::test(start_paused = true)]
async fn an_operation_that_cannot_be_ended_is_not_counted_and_waits_for_the_next_pass() {
    let mut stuck = abandoned("create_vms");
    let stuck_id = stuck.id;
    stuck.journal = vec![entry(
        ResourceKind::Vm,
        format!("{stuck_id}/vm/1"),
        None,
        false,
    )];
    let ended = abandoned("sign_node_certs");
    let ended_id = ended.id;
    let mut seq = Sequence::new();
    let mut ops = MockOperations::new();
    let mut compute = MockCompute::new();
    ops.expect_claim_expired()
        .times(1)
        .in_sequence(&mut seq)
        .return_once(move |_, _, _| Ok(vec![stuck, ended]));

    // The first: the platform cannot list, so its unknown VM is left behind; then ending it
    // fails.
    compute
        .expect_list_vms()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Err(compute_unavailable()));
    compute
        .expect_list_security_groups()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(Vec::new()));
    let problem: Arc<Mutex<Option<OperationProblem>>> = Arc::default();
    let stored = Arc::clone(&problem);
    ops.expect_fail_operation()
        .withf(move |lease, _| ours(lease, stuck_id))
        .times(1)
        .in_sequence(&mut seq)
        .returning(move |_, problem| {
            *stored.lock().unwrap() = Some(problem.clone());
            Err(unavailable())
        });
    // The second made nothing and ends.
    compute
        .expect_list_vms()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(Vec::new()));
    compute
        .expect_list_security_groups()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(Vec::new()));
    ops.expect_fail_operation()
        .withf(move |lease, problem| ours(lease, ended_id) && problem.step == "sign_node_certs")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(()));

    let (recovery, observer) = recovery(ops, compute);
    assert_eq!(recovery.recover_expired().await.unwrap(), 1);
    drop(recovery);

    let problem = problem.lock().unwrap().take().unwrap();
    assert_eq!(problem.left_behind, [format!("vm of key {stuck_id}/vm/1")]);
    assert!(problem.removed.is_empty());
    let seen = observer.seen();
    assert_eq!(seen.recovered, [OperationKind::Found]);
    assert_eq!(seen.ended.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_recovery_that_cannot_claim_touches_nothing() {
    let mut ops = MockOperations::new();
    ops.expect_claim_expired()
        .times(1)
        .returning(|_, _, _| Err(unavailable()));
    let (recovery, observer) = recovery(ops, MockCompute::new());
    assert!(matches!(
        recovery.recover_expired().await,
        Err(RepoError::Unavailable(_))
    ));
    assert_eq!(observer.seen(), Observed::default());
}

#[tokio::test(start_paused = true)]
async fn nothing_expired_means_nothing_is_touched() {
    let mut ops = MockOperations::new();
    ops.expect_claim_expired()
        .times(1)
        .returning(|_, _, _| Ok(Vec::new()));
    let (recovery, observer) = recovery(ops, MockCompute::new());
    assert_eq!(recovery.recover_expired().await.unwrap(), 0);
    assert_eq!(observer.seen(), Observed::default());
}

// ---- orphans ---------------------------------------------------------------------------------

const OLD: Duration = Duration::from_secs(2 * 3600);
const YOUNG: Duration = Duration::from_secs(60);

/// The platform's plinth resources: of cluster `gone` (no row, no operation), an old VM and group
/// and a young VM and group; of cluster `live`, an old VM and group.
fn platform(gone: ClusterId, live: ClusterId, compute: &mut MockCompute, seq: &mut Sequence) {
    let (gone, live) = (gone.to_string(), live.to_string());
    let role = (tags::ROLE, tags::ROLE_CONTROL_PLANE);
    let vms = vec![
        tagged("vm-1", &[role, (tags::CLUSTER_ID, &gone)], OLD),
        tagged("vm-2", &[role, (tags::CLUSTER_ID, &gone)], YOUNG),
        tagged("vm-3", &[role, (tags::CLUSTER_ID, &live)], OLD),
        tagged("vm-4", &[role, (tags::CLUSTER_ID, &gone)], OLD),
    ];
    let groups = vec![
        tagged("sg-1", &[role, (tags::CLUSTER_ID, &gone)], OLD),
        tagged("sg-2", &[role, (tags::CLUSTER_ID, &live)], OLD),
        tagged("sg-3", &[role, (tags::CLUSTER_ID, &gone)], YOUNG),
    ];
    compute
        .expect_list_vms()
        .withf(|key, value| key == tags::ROLE && value == tags::ROLE_CONTROL_PLANE)
        .times(1)
        .in_sequence(seq)
        .return_once(move |_, _| Ok(vms));
    compute
        .expect_list_security_groups()
        .withf(|key, value| key == tags::ROLE && value == tags::ROLE_CONTROL_PLANE)
        .times(1)
        .in_sequence(seq)
        .return_once(move |_, _| Ok(groups));
}

fn live_clusters_asked(
    gone: ClusterId,
    live: ClusterId,
    ops: &mut MockOperations,
    seq: &mut Sequence,
    answer: Result<Vec<ClusterId>, RepoError>,
) {
    ops.expect_live_clusters()
        .withf(move |clusters| {
            let mut asked = clusters.to_vec();
            asked.sort();
            let mut expected = vec![gone, live];
            expected.sort();
            asked == expected
        })
        .times(1)
        .in_sequence(seq)
        .return_once(move |_| answer);
}

#[tokio::test(start_paused = true)]
async fn the_sweep_deletes_only_old_resources_of_clusters_that_are_not_live() {
    let (gone, live) = (ClusterId::new_random(), ClusterId::new_random());
    let mut seq = Sequence::new();
    let mut ops = MockOperations::new();
    let mut compute = MockCompute::new();
    platform(gone, live, &mut compute, &mut seq);
    live_clusters_asked(gone, live, &mut ops, &mut seq, Ok(vec![live]));
    // Only these: the young ones and the live cluster's have no expectation.
    for vm in ["vm-1", "vm-4"] {
        compute
            .expect_delete_vm()
            .withf(move |id| id.as_str() == vm)
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(()));
    }
    compute
        .expect_delete_security_group()
        .withf(|id| id.as_str() == "sg-1")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(()));

    let (recovery, observer) = recovery(ops, compute);
    assert_eq!(recovery.sweep_orphans().await.unwrap(), 3);
    drop(recovery);
    assert_eq!(
        observer.seen().orphans,
        [
            ResourceKind::Vm,
            ResourceKind::Vm,
            ResourceKind::SecurityGroup
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn an_orphan_that_cannot_be_deleted_is_not_counted() {
    let (gone, live) = (ClusterId::new_random(), ClusterId::new_random());
    let mut seq = Sequence::new();
    let mut ops = MockOperations::new();
    let mut compute = MockCompute::new();
    platform(gone, live, &mut compute, &mut seq);
    live_clusters_asked(gone, live, &mut ops, &mut seq, Ok(vec![live]));
    compute
        .expect_delete_vm()
        .withf(|id| id.as_str() == "vm-1")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Err(compute_unavailable()));
    compute
        .expect_delete_vm()
        .withf(|id| id.as_str() == "vm-4")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(()));
    compute
        .expect_delete_security_group()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Err(ComputeError::Conflict("in use by vm-1".into())));

    let (recovery, observer) = recovery(ops, compute);
    assert_eq!(recovery.sweep_orphans().await.unwrap(), 1);
    assert_eq!(observer.seen().orphans, [ResourceKind::Vm]);
}

#[tokio::test(start_paused = true)]
async fn a_sweep_that_cannot_list_the_platform_deletes_nothing() {
    let mut compute = MockCompute::new();
    compute
        .expect_list_vms()
        .times(1)
        .returning(|_, _| Err(compute_unavailable()));
    let (recovery, _) = recovery(MockOperations::new(), compute);
    assert!(matches!(
        recovery.sweep_orphans().await,
        Err(SweepError::Compute(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_sweep_that_cannot_ask_which_clusters_live_deletes_nothing() {
    // Without the answer every cluster would look gone: nothing may be deleted.
    let (gone, live) = (ClusterId::new_random(), ClusterId::new_random());
    let mut seq = Sequence::new();
    let mut ops = MockOperations::new();
    let mut compute = MockCompute::new();
    platform(gone, live, &mut compute, &mut seq);
    live_clusters_asked(gone, live, &mut ops, &mut seq, Err(unavailable()));
    let (recovery, observer) = recovery(ops, compute);
    assert!(matches!(
        recovery.sweep_orphans().await,
        Err(SweepError::Repo(_))
    ));
    assert!(observer.seen().orphans.is_empty());
}
