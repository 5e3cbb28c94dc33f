//! The `Operations` contract against a real PostgreSQL 15: a founding claims its name at once
//! (or is refused at once), reads as `provisioning` until its last short transaction, journals
//! its side effects in order, and is fenced by its lease — a replica that lost the operation, or
//! a founding that ended, writes nothing. Expired leases are taken over by exactly one replica,
//! and the server itself bounds every statement and lock wait of the pool's connections.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    LEASE, REPLICA, begin, count_rows, deletion, found, founding, founding_rows, group_of,
    lease_of, lock_operation, now, org, release, repo, repo_configured, snapshot, texts,
};
use diesel::sql_query;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use plinth_diesel_pg::PgRepo;
use plinth_diesel_pg::testing::{MIGRATION_LOCK, TestDatabase, text_on_pool};
use plinth_domain::model::{
    ClusterId, ClusterStatus, Idempotency, IdempotencyKey, OperationId, OperationKind,
    OperationState, OrgId, ReplicaId, RequestFingerprint,
};
use plinth_domain::ports::Chain;
use plinth_domain::ports::operations::{
    DeletionStart, IdempotencyClaim, JournalEntry, Lease, NewDeletion, NewFounding,
    OperationProblem, Operations, OrgLimits, ResourceKind,
};
use plinth_domain::ports::repo::{
    ClusterSecurityGroups, NewClusterRecord, PageRequest, Quota, Repo, RepoError,
};
use plinth_domain::testing::{cluster_record, trust_root_of};

// ---- fixtures ---------------------------------------------------------------------------------

fn problem() -> OperationProblem {
    OperationProblem {
        kind: "compute-refused".into(),
        step: "create_vms".into(),
        detail: "the compute service refused VM 2".into(),
        removed: vec!["vm vm-1".into()],
        left_behind: vec!["security_group sg-1".into()],
    }
}

/// A founding whose lease expired the moment it began (by the database's clock).
async fn begin_expired(repo: &PgRepo, record: &NewClusterRecord) -> Lease {
    let founding = NewFounding {
        lease_for: Duration::ZERO,
        ..founding(record)
    };
    repo.begin_founding(&founding).await.unwrap();
    founding.lease
}

/// Every write of the port, with `lease`, on `record`'s cluster; `key` names a journal entry.
async fn every_write(
    repo: &PgRepo,
    lease: &Lease,
    record: &NewClusterRecord,
    key: &str,
) -> Vec<(&'static str, Result<(), RepoError>)> {
    let (ca, sa) = trust_root_of(record.id);
    let groups = ClusterSecurityGroups {
        attached: vec![group_of(record.id)],
        created: None,
    };
    vec![
        (
            "renew_lease",
            repo.renew_lease(lease, "elsewhere", LEASE).await,
        ),
        (
            "store_trust_root",
            repo.store_trust_root(lease, record.id, &ca, &sa).await,
        ),
        (
            "record_intents",
            repo.record_intents(lease, &[(ResourceKind::Vm, "another/vm/9".into())])
                .await,
        ),
        (
            "record_created",
            repo.record_created(lease, key, "vm-elsewhere").await,
        ),
        ("record_deleted", repo.record_deleted(lease, key).await),
        (
            "record_security_groups",
            repo.record_security_groups(lease, record.id, &groups).await,
        ),
        (
            "finish_founding",
            repo.finish_founding(lease, &founding_rows(record, 9)).await,
        ),
        (
            "fail_operation",
            repo.fail_operation(lease, &problem()).await,
        ),
        ("finish_deletion", repo.finish_deletion(lease).await),
    ]
}

fn assert_all_lease_lost(results: Vec<(&'static str, Result<(), RepoError>)>) {
    for (write, result) in results {
        assert!(
            matches!(result, Err(RepoError::LeaseLost)),
            "{write}: expected LeaseLost, got {result:?}"
        );
    }
}

fn first_page() -> PageRequest {
    PageRequest {
        limit: 100,
        after: None,
        expiring_before: None,
    }
}

fn chain(e: &RepoError) -> String {
    Chain(e).to_string()
}

// ---- claiming the name ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_name_taken_by_a_provisioning_cluster_is_a_quick_conflict_that_writes_nothing() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let other_replica = self::repo(&db);
    let first = cluster_record("org-a", Some("prod"), 1, now());
    let first_lease = begin(&repo, &first).await; // still provisioning
    let mut conn = db.connect().await;
    let before = snapshot(&mut conn).await;

    for replica in [&repo, &other_replica] {
        let second = cluster_record("org-a", Some("prod"), 3, now());
        let started = Instant::now();
        let err = replica
            .begin_founding(&founding(&second))
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(500),
            "the conflict took {took:?}"
        );
        let RepoError::Conflict(message) = &err else {
            panic!("expected a conflict, got {err:?}");
        };
        assert!(message.contains("already exists"), "{message}");
    }
    assert_eq!(
        snapshot(&mut conn).await,
        before,
        "a refused founding wrote something"
    );

    // Another organization may use the name.
    repo.begin_founding(&founding(&cluster_record("org-b", Some("prod"), 1, now())))
        .await
        .unwrap();
    // Once the first founding failed, its name is free again.
    repo.fail_operation(&first_lease, &problem()).await.unwrap();
    repo.begin_founding(&founding(&cluster_record("org-a", Some("prod"), 1, now())))
        .await
        .unwrap();
    assert_eq!(count_rows(&mut conn, "kubeclusters").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_reads_as_provisioning_until_its_founding_finishes() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let record = cluster_record("org-a", Some("growing"), 3, now());
    let founding = founding(&record);
    repo.begin_founding(&founding).await.unwrap();

    let details = repo
        .find_cluster(&record.org, record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(details.summary.status, ClusterStatus::Provisioning);
    assert_eq!(details.summary.name, record.spec.name);
    assert_eq!(details.spec, record.spec);
    assert!(details.nodes.is_empty());
    assert_eq!(details.ca_cert_pem, None);
    assert!(details.security_groups.attached.is_empty());
    assert_eq!(details.security_groups.created, None);
    let listed = repo
        .list_clusters(&record.org, &first_page())
        .await
        .unwrap();
    assert_eq!(listed.clusters.len(), 1);
    assert_eq!(listed.clusters[0].id, record.id);
    assert_eq!(listed.clusters[0].status, ClusterStatus::Provisioning);

    let lease = founding.lease;
    let (ca, sa) = trust_root_of(record.id);
    repo.store_trust_root(&lease, record.id, &ca, &sa)
        .await
        .unwrap();
    let details = repo
        .find_cluster(&record.org, record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(details.summary.status, ClusterStatus::Provisioning);
    assert_eq!(details.ca_cert_pem, Some(ca.root.cert_pem.clone()));
    assert!(details.nodes.is_empty());

    repo.finish_founding(&lease, &founding_rows(&record, 1))
        .await
        .unwrap();
    let details = repo
        .find_cluster(&record.org, record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(details.summary.status, ClusterStatus::Ready);
    assert_eq!(details.nodes.len(), 3);
    let listed = repo
        .list_clusters(&record.org, &first_page())
        .await
        .unwrap();
    assert_eq!(listed.clusters[0].status, ClusterStatus::Ready);
    let mut conn = db.connect().await;
    for (table, rows) in [("etcdnodes", 3), ("apiservernodes", 3), ("clustercerts", 6)] {
        assert_eq!(count_rows(&mut conn, table).await, rows, "{table}");
    }
    let operation = repo.operation(lease.operation).await.unwrap().unwrap();
    assert_eq!(operation.state, OperationState::Succeeded);
    assert_eq!(operation.lease_expires_at, None);
    assert!(operation.ended_at.is_some());
    assert_eq!(operation.problem, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_founding_s_last_transaction_is_all_or_nothing() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut conn = db.connect().await;

    // Without its trust material a cluster cannot become ready: nothing is written.
    let bare = cluster_record("org-a", None, 1, now());
    let bare_founding = founding(&bare);
    repo.begin_founding(&bare_founding).await.unwrap();
    let before = snapshot(&mut conn).await;
    repo.finish_founding(&bare_founding.lease, &founding_rows(&bare, 1))
        .await
        .unwrap_err();
    assert_eq!(snapshot(&mut conn).await, before);

    // A row that breaks a rule half-way (node 1 twice): nothing is written either…
    let record = cluster_record("org-a", None, 3, now());
    let lease = begin(&repo, &record).await;
    let before = snapshot(&mut conn).await;
    let mut rows = founding_rows(&record, 2);
    rows.apiserver.push(rows.apiserver[0].clone());
    repo.finish_founding(&lease, &rows).await.unwrap_err();
    assert_eq!(snapshot(&mut conn).await, before);
    let operation = repo.operation(lease.operation).await.unwrap().unwrap();
    assert_eq!(operation.state, OperationState::Running);

    // …and the operation, still running and still leased, can finish with good rows.
    repo.finish_founding(&lease, &founding_rows(&record, 2))
        .await
        .unwrap();
    assert_eq!(count_rows(&mut conn, "apiservernodes").await, 3);
}

// ---- the journal ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn the_journal_reads_back_in_the_order_written() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let record = cluster_record("org-a", None, 3, now());
    let lease = begin(&repo, &record).await;
    let op = lease.operation;
    let key = |what: &str| format!("{op}/{what}");

    repo.record_intents(&lease, &[(ResourceKind::SecurityGroup, key("sg"))])
        .await
        .unwrap();
    repo.record_created(&lease, &key("sg"), "sg-1")
        .await
        .unwrap();
    let vms: Vec<(ResourceKind, String)> = (1..=3)
        .map(|n| (ResourceKind::Vm, key(&format!("vm/{n}"))))
        .collect();
    repo.record_intents(&lease, &vms).await.unwrap();
    repo.record_created(&lease, &key("vm/2"), "vm-2")
        .await
        .unwrap();
    repo.record_created(&lease, &key("vm/1"), "vm-1")
        .await
        .unwrap();
    repo.record_deleted(&lease, &key("vm/1")).await.unwrap();
    // Journaling intents again (a retried step) changes nothing: no second entry, no lost id,
    // no new place in the order.
    repo.record_intents(&lease, &vms).await.unwrap();
    repo.record_intents(&lease, &[(ResourceKind::SecurityGroup, key("sg"))])
        .await
        .unwrap();

    let operation = repo.operation(op).await.unwrap().unwrap();
    let entry = |kind, what: &str, id: Option<&str>, deleted| JournalEntry {
        kind,
        idempotency_key: key(what),
        resource_id: id.map(str::to_owned),
        deleted,
    };
    assert_eq!(
        operation.journal,
        [
            entry(ResourceKind::SecurityGroup, "sg", Some("sg-1"), false),
            entry(ResourceKind::Vm, "vm/1", Some("vm-1"), true),
            entry(ResourceKind::Vm, "vm/2", Some("vm-2"), false),
            entry(ResourceKind::Vm, "vm/3", None, false),
        ]
    );
    assert_eq!(operation.id, op);
    assert_eq!(operation.kind, OperationKind::Found);
    assert_eq!(operation.org, record.org);
    assert_eq!(operation.cluster_id, record.id);
    assert_eq!(operation.state, OperationState::Running);
    assert_eq!(operation.owner, lease.owner);
    assert_eq!(operation.problem, None);
    assert_eq!(operation.ended_at, None);
    // The lease runs from the database's clock: the same `now()` that stamped the start.
    assert_eq!(
        operation.lease_expires_at,
        Some(operation.started_at + LEASE)
    );

    // Renewing notes the step and extends the lease from the database's now.
    repo.renew_lease(&lease, "create_vms", Duration::from_secs(30))
        .await
        .unwrap();
    let renewed = repo.operation(op).await.unwrap().unwrap();
    assert_eq!(renewed.step, "create_vms");
    let mut conn = db.connect().await;
    let lease_left = texts(
        &mut conn,
        &format!("SELECT (lease_expires_at - updated_at)::text AS value FROM operations WHERE id = '{op}'"),
    )
    .await;
    assert_eq!(lease_left, ["00:00:30"]);
    assert_eq!(renewed.journal, operation.journal);

    assert!(
        repo.operation(OperationId::new_random())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn journaling_an_entry_the_operation_never_declared_is_refused() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let record = cluster_record("org-a", None, 1, now());
    let lease = begin(&repo, &record).await;
    let declared = format!("{}/vm/1", lease.operation);
    repo.record_intents(&lease, &[(ResourceKind::Vm, declared.clone())])
        .await
        .unwrap();
    let undeclared = format!("{}/vm/2", lease.operation);

    let created = repo.record_created(&lease, &undeclared, "vm-2").await;
    let deleted = repo.record_deleted(&lease, &undeclared).await;

    for (call, result) in [("record_created", created), ("record_deleted", deleted)] {
        match result {
            Err(RepoError::Unexpected(e)) => assert!(
                e.to_string().contains(&undeclared),
                "{call}: the error does not name the key: {e}"
            ),
            other => panic!("{call}: expected a refusal, got {other:?}"),
        }
    }
    let journal = repo
        .operation(lease.operation)
        .await
        .unwrap()
        .unwrap()
        .journal;
    assert_eq!(journal.len(), 1, "{journal:?}");
    assert_eq!(journal[0].resource_id, None);
}

// ---- the lease fence --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn writes_with_a_lease_that_is_not_the_operations_are_lease_lost_and_write_nothing() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let record = cluster_record("org-a", None, 1, now());
    let lease = begin(&repo, &record).await;
    let key = format!("{}/vm/1", lease.operation);
    repo.record_intents(&lease, &[(ResourceKind::Vm, key.clone())])
        .await
        .unwrap();
    let mut conn = db.connect().await;
    let before = snapshot(&mut conn).await;

    let another_replica = Lease {
        operation: lease.operation,
        owner: ReplicaId::new("replica-b"),
    };
    let no_such_operation = lease_of(REPLICA);
    for stranger in [another_replica, no_such_operation] {
        assert_all_lease_lost(every_write(&repo, &stranger, &record, &key).await);
        assert_eq!(snapshot(&mut conn).await, before, "{stranger:?} wrote");
    }

    // The owner is not disturbed.
    repo.record_created(&lease, &key, "vm-1").await.unwrap();
    repo.finish_founding(&lease, &founding_rows(&record, 1))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn once_a_founding_ended_its_lease_writes_nothing() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut compute = db.connect().await;
    let mut conn = db.connect().await;

    // Succeeded: the cluster is ready, and stays so (fail_operation does not remove it).
    let founded = cluster_record("org-a", None, 1, now());
    let lease = found(&repo, &mut compute, &founded, 1).await;
    let before = snapshot(&mut conn).await;
    let key = format!("{}/vm/1", lease.operation);
    assert_all_lease_lost(every_write(&repo, &lease, &founded, &key).await);
    assert_eq!(snapshot(&mut conn).await, before);
    let details = repo
        .find_cluster(&founded.org, founded.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(details.summary.status, ClusterStatus::Ready);

    // Failed: nothing comes back.
    let failed = cluster_record("org-a", None, 1, now());
    let lease = begin(&repo, &failed).await;
    let key = format!("{}/vm/1", lease.operation);
    repo.record_intents(&lease, &[(ResourceKind::Vm, key.clone())])
        .await
        .unwrap();
    repo.fail_operation(&lease, &problem()).await.unwrap();
    let before = snapshot(&mut conn).await;
    assert_all_lease_lost(every_write(&repo, &lease, &failed, &key).await);
    assert_eq!(snapshot(&mut conn).await, before);
    assert!(
        repo.find_cluster(&failed.org, failed.id)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_writes_only_its_own_operations_cluster() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mine = cluster_record("org-a", None, 1, now());
    let lease = begin(&repo, &mine).await;
    let theirs = cluster_record("org-a", None, 1, now());
    begin(&repo, &theirs).await; // another founding, still running
    let mut conn = db.connect().await;
    let before = snapshot(&mut conn).await;

    let (ca, sa) = trust_root_of(mine.id);
    let groups = ClusterSecurityGroups {
        attached: vec![group_of(mine.id)],
        created: None,
    };
    let mut strays = founding_rows(&mine, 1);
    strays.etcd[0].cluster_id = theirs.id;
    let writes = [
        (
            "store_trust_root",
            repo.store_trust_root(&lease, theirs.id, &ca, &sa).await,
        ),
        (
            "record_security_groups",
            repo.record_security_groups(&lease, theirs.id, &groups)
                .await,
        ),
        (
            "finish_founding",
            repo.finish_founding(&lease, &founding_rows(&theirs, 1))
                .await,
        ),
        (
            "finish_founding with a stray row",
            repo.finish_founding(&lease, &strays).await,
        ),
        // A founding's lease cannot end its operation as a deletion (removing the cluster).
        (
            "finish_deletion with a founding's lease",
            repo.finish_deletion(&lease).await,
        ),
    ];
    for (write, result) in writes {
        assert!(
            matches!(result, Err(RepoError::Unexpected(_))),
            "{write}: {result:?}"
        );
    }
    assert_eq!(
        snapshot(&mut conn).await,
        before,
        "another cluster was written"
    );

    // The lease is still good for its own cluster.
    repo.finish_founding(&lease, &founding_rows(&mine, 1))
        .await
        .unwrap();
}

// ---- failing ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_founding_keeps_its_problem_and_journal_and_loses_its_cluster_row() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut conn = db.connect().await;
    let kept = cluster_record("org-a", None, 1, now());
    let kept_lease = begin(&repo, &kept).await;

    let record = cluster_record("org-a", Some("doomed"), 1, now());
    let lease = begin(&repo, &record).await;
    let key = format!("{}/security-group", lease.operation);
    repo.record_intents(&lease, &[(ResourceKind::SecurityGroup, key.clone())])
        .await
        .unwrap();
    repo.record_created(&lease, &key, "sg-1").await.unwrap();
    repo.record_security_groups(
        &lease,
        record.id,
        &ClusterSecurityGroups {
            attached: vec![group_of(record.id)],
            created: Some(group_of(record.id)),
        },
    )
    .await
    .unwrap();
    // Something hanging off the row (as a later step might leave).
    sql_query(format!(
        "INSERT INTO clustercerts (cluster_id, name, cert, key) VALUES ('{}', 'admin', 'c', 'v1:k1:x')",
        record.id
    ))
    .execute(&mut conn)
    .await
    .unwrap();

    repo.fail_operation(&lease, &problem()).await.unwrap();

    let operation = repo.operation(lease.operation).await.unwrap().unwrap();
    assert_eq!(operation.state, OperationState::Failed);
    assert_eq!(operation.problem, Some(problem()));
    assert_eq!(operation.lease_expires_at, None);
    assert!(operation.ended_at.is_some());
    assert_eq!(operation.cluster_id, record.id);
    assert_eq!(
        operation.journal,
        [JournalEntry {
            kind: ResourceKind::SecurityGroup,
            idempotency_key: key,
            resource_id: Some("sg-1".into()),
            deleted: false,
        }]
    );
    assert!(
        repo.find_cluster(&record.org, record.id)
            .await
            .unwrap()
            .is_none()
    );
    let listed = repo
        .list_clusters(&record.org, &first_page())
        .await
        .unwrap();
    assert_eq!(
        listed.clusters.iter().map(|c| c.id).collect::<Vec<_>>(),
        [kept.id]
    );
    assert_eq!(count_rows(&mut conn, "clustercerts").await, 0);
    // The other founding is untouched.
    let other = repo.operation(kept_lease.operation).await.unwrap().unwrap();
    assert_eq!(other.state, OperationState::Running);
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_an_operation_never_removes_a_ready_cluster() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let record = cluster_record("org-a", None, 1, now());
    let lease = begin(&repo, &record).await;
    // However it came to be ready while its operation still runs, the cluster stays.
    let mut conn = db.connect().await;
    sql_query(format!(
        "UPDATE kubeclusters SET status = 'ready', certificates_expire_at = now() + interval '1 year' \
         WHERE id = '{}'",
        record.id
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    repo.fail_operation(&lease, &problem()).await.unwrap();
    let operation = repo.operation(lease.operation).await.unwrap().unwrap();
    assert_eq!(operation.state, OperationState::Failed);
    let details = repo
        .find_cluster(&record.org, record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(details.summary.status, ClusterStatus::Ready);
}

// ---- taking over ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn claim_expired_takes_over_only_running_operations_whose_lease_expired() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut conn = db.connect().await;
    let record = |name: &str| cluster_record("org-a", Some(name), 1, now());

    let healthy = begin(&repo, &record("healthy")).await;
    let expired: Vec<Lease> = {
        let mut leases = Vec::new();
        for name in ["e1", "e2", "e3"] {
            leases.push(begin_expired(&repo, &record(name)).await);
        }
        leases
    };
    let e1_key = format!("{}/vm/1", expired[0].operation);
    repo.record_intents(&expired[0], &[(ResourceKind::Vm, e1_key.clone())])
        .await
        .unwrap();
    // Expired, but ended before anyone claimed them.
    let failed = begin_expired(&repo, &record("failed")).await;
    repo.fail_operation(&failed, &problem()).await.unwrap();
    let succeeded_record = record("succeeded");
    let succeeded = begin_expired(&repo, &succeeded_record).await;
    let (ca, sa) = trust_root_of(succeeded_record.id);
    repo.store_trust_root(&succeeded, succeeded_record.id, &ca, &sa)
        .await
        .unwrap();
    repo.finish_founding(&succeeded, &founding_rows(&succeeded_record, 1))
        .await
        .unwrap();

    let b = ReplicaId::new("replica-b");
    // At most `limit` at a time, and then the rest.
    let first = repo.claim_expired(&b, LEASE, 2).await.unwrap();
    assert_eq!(first.len(), 2);
    let rest = repo.claim_expired(&b, LEASE, 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert!(repo.claim_expired(&b, LEASE, 10).await.unwrap().is_empty());
    let mut claimed: Vec<OperationId> = first.iter().chain(&rest).map(|o| o.id).collect();
    claimed.sort();
    let mut wanted: Vec<OperationId> = expired.iter().map(|l| l.operation).collect();
    wanted.sort();
    assert_eq!(claimed, wanted);
    for record in first.iter().chain(&rest) {
        assert_eq!(record.state, OperationState::Running);
        assert_eq!(record.owner, b);
        assert!(record.lease_expires_at.unwrap() > record.started_at + (LEASE / 2));
        // The journal comes with the claim.
        let journal: Vec<&str> = record
            .journal
            .iter()
            .map(|e| e.idempotency_key.as_str())
            .collect();
        if record.id == expired[0].operation {
            assert_eq!(journal, [e1_key.as_str()]);
        } else {
            assert!(journal.is_empty());
        }
    }

    // The claimer's lease runs from the database's clock.
    let lease_left = texts(
        &mut conn,
        &format!(
            "SELECT (lease_expires_at - updated_at)::text AS value FROM operations WHERE id = '{}'",
            expired[0].operation
        ),
    )
    .await;
    assert_eq!(lease_left, ["00:10:00"]);

    // The healthy one is still its owner's.
    let untouched = repo.operation(healthy.operation).await.unwrap().unwrap();
    assert_eq!(untouched.owner, healthy.owner);
    repo.renew_lease(&healthy, "create_vms", LEASE)
        .await
        .unwrap();

    // The old owner of a claimed operation can change nothing; the new one can.
    let before = snapshot(&mut conn).await;
    assert!(matches!(
        repo.renew_lease(&expired[0], "create_vms", LEASE).await,
        Err(RepoError::LeaseLost)
    ));
    assert!(matches!(
        repo.record_created(&expired[0], &e1_key, "vm-1").await,
        Err(RepoError::LeaseLost)
    ));
    assert!(matches!(
        repo.fail_operation(&expired[0], &problem()).await,
        Err(RepoError::LeaseLost)
    ));
    assert_eq!(snapshot(&mut conn).await, before);
    let taken = Lease {
        operation: expired[0].operation,
        owner: b,
    };
    repo.record_created(&taken, &e1_key, "vm-1").await.unwrap();
    repo.fail_operation(&taken, &problem()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_claiming_at_once_take_disjoint_sets() {
    const OPERATIONS: usize = 24;
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut all = Vec::new();
    for n in 0..OPERATIONS {
        // An organization each: one org's foundings in flight are bounded by its quota.
        let org = format!("org-{n}");
        let lease = begin_expired(&repo, &cluster_record(&org, None, 1, now())).await;
        all.push(lease.operation);
    }

    // Two replicas (two pools), each claiming from three tasks at once, small batches.
    let replicas = [self::repo(&db), self::repo(&db)];
    let mut tasks = Vec::new();
    for (r, replica) in replicas.iter().enumerate() {
        for _ in 0..3 {
            let replica = replica.clone();
            let owner = ReplicaId::new(format!("replica-{r}"));
            tasks.push(tokio::spawn(async move {
                let mut claimed = Vec::new();
                for _ in 0..=OPERATIONS {
                    let batch = replica.claim_expired(&owner, LEASE, 3).await.unwrap();
                    if batch.is_empty() {
                        return (owner, claimed);
                    }
                    claimed.extend(batch.into_iter().map(|o| o.id));
                }
                panic!("{owner} went on claiming: leases it took count as expired");
            }));
        }
    }
    let mut seen = Vec::new();
    for task in tasks {
        let (owner, claimed) = task.await.unwrap();
        for id in claimed {
            let stored = repo.operation(id).await.unwrap().unwrap();
            assert_eq!(stored.owner, owner, "{id} is not its claimer's");
            seen.push(id);
        }
    }
    seen.sort();
    let claimed_once = {
        let mut unique = seen.clone();
        unique.dedup();
        unique
    };
    assert_eq!(seen, claimed_once, "an operation was claimed twice");
    all.sort();
    assert_eq!(seen, all, "an expired operation was not claimed");
}

#[tokio::test(flavor = "multi_thread")]
async fn claiming_skips_an_operation_whose_owner_is_mid_write_without_waiting() {
    let db = TestDatabase::create().await;
    let repo = repo_configured(&db, |s| {
        s.lock_timeout_secs = 1;
        s.statement_timeout_secs = 2;
    });
    let busy = begin_expired(&repo, &cluster_record("org-a", None, 1, now())).await;
    let free = begin_expired(&repo, &cluster_record("org-a", None, 1, now())).await;
    let mut owner = db.connect().await;
    lock_operation(&mut owner, busy.operation).await;

    let b = ReplicaId::new("replica-b");
    let started = Instant::now();
    let claimed = repo.claim_expired(&b, LEASE, 10).await.unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "claiming waited {took:?}"
    );
    assert_eq!(
        claimed.iter().map(|o| o.id).collect::<Vec<_>>(),
        [free.operation]
    );

    release(&mut owner).await;
    let claimed = repo.claim_expired(&b, LEASE, 10).await.unwrap();
    assert_eq!(
        claimed.iter().map(|o| o.id).collect::<Vec<_>>(),
        [busy.operation]
    );
}

// ---- orphans ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn live_clusters_are_those_with_a_row_or_a_running_operation() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut compute = db.connect().await;
    let mut conn = db.connect().await;

    let ready = cluster_record("org-a", None, 1, now());
    found(&repo, &mut compute, &ready, 1).await;
    let provisioning = cluster_record("org-a", None, 1, now());
    begin(&repo, &provisioning).await;
    let failed = cluster_record("org-a", None, 1, now());
    let lease = begin(&repo, &failed).await;
    repo.fail_operation(&lease, &problem()).await.unwrap();
    // A running operation whose row is gone (deleted by hand): its resources are not orphans.
    let rowless = cluster_record("org-a", None, 1, now());
    begin(&repo, &rowless).await;
    sql_query(format!(
        "DELETE FROM kubeclusters WHERE id = '{}'",
        rowless.id
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let unknown = ClusterId::new_random();

    let mut live = repo
        .live_clusters(&[ready.id, provisioning.id, failed.id, rowless.id, unknown])
        .await
        .unwrap();
    live.sort();
    let mut expected = vec![ready.id, provisioning.id, rowless.id];
    expected.sort();
    assert_eq!(live, expected);
    assert!(repo.live_clusters(&[]).await.unwrap().is_empty());
    assert!(
        repo.live_clusters(&[failed.id, unknown])
            .await
            .unwrap()
            .is_empty()
    );
}

// ---- the server's own bounds ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn pooled_connections_carry_the_server_side_bounds() {
    let db = TestDatabase::create().await;
    let repo = repo_configured(&db, |s| {
        s.statement_timeout_secs = 1;
        s.lock_timeout_secs = 1;
        s.idle_in_transaction_timeout_secs = 2;
    });
    for (setting, expected) in [
        ("statement_timeout", "1s"),
        ("lock_timeout", "1s"),
        ("idle_in_transaction_session_timeout", "2s"),
    ] {
        let value = text_on_pool(
            &repo,
            &format!("SELECT current_setting('{setting}') AS value"),
        )
        .await
        .unwrap();
        assert_eq!(value, expected, "{setting}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_cancels_a_statement_past_statement_timeout() {
    let db = TestDatabase::create().await;
    let repo = repo_configured(&db, |s| s.statement_timeout_secs = 1);
    // Nothing on plinth's side bounds this call below 30 s: the server ends it.
    let started = Instant::now();
    let err = text_on_pool(&repo, "SELECT pg_sleep(5)::text AS value")
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, RepoError::Unavailable(_)), "{}", chain(&err));
    assert!(chain(&err).contains("statement timeout"), "{}", chain(&err));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "the statement ran {took:?}"
    );
    // The pool goes on serving.
    repo.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lock_wait_past_lock_timeout_is_unavailable_and_the_operation_still_runs() {
    let db = TestDatabase::create().await;
    // plinth's own bound is 2 s: ending in about 1 s is the server's lock_timeout.
    let repo = repo_configured(&db, |s| {
        s.lock_timeout_secs = 1;
        s.statement_timeout_secs = 2;
    });
    let record = cluster_record("org-a", None, 1, now());
    let lease = begin(&repo, &record).await;
    let mut other = db.connect().await;
    lock_operation(&mut other, lease.operation).await;

    let started = Instant::now();
    let err = repo
        .finish_founding(&lease, &founding_rows(&record, 1))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, RepoError::Unavailable(_)), "{}", chain(&err));
    assert!(chain(&err).contains("lock timeout"), "{}", chain(&err));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1800),
        "the lock wait lasted {took:?}"
    );
    let started = Instant::now();
    let err = repo.renew_lease(&lease, "commit", LEASE).await.unwrap_err();
    assert!(matches!(err, RepoError::Unavailable(_)), "{}", chain(&err));
    assert!(started.elapsed() < Duration::from_millis(1800));
    release(&mut other).await;

    let operation = repo.operation(lease.operation).await.unwrap().unwrap();
    assert_eq!(operation.state, OperationState::Running);
    let details = repo
        .find_cluster(&record.org, record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(details.summary.status, ClusterStatus::Provisioning);
    assert!(details.nodes.is_empty());
    repo.finish_founding(&lease, &founding_rows(&record, 1))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_write_leaves_no_transaction_holding_locks() {
    let db = TestDatabase::create().await;
    let settings = |s: &mut plinth_diesel_pg::PgSettings| {
        s.lock_timeout_secs = 1;
        s.statement_timeout_secs = 2;
    };
    let repo = repo_configured(&db, settings);
    let record = cluster_record("org-a", None, 1, now());
    let lease = begin(&repo, &record).await;
    let mut other = db.connect().await;
    lock_operation(&mut other, lease.operation).await;

    // A write waiting for the row is cancelled (its request went away, say)…
    let key = |n: u8| format!("{}/vm/{n}", lease.operation);
    let cancelled = tokio::time::timeout(
        Duration::from_millis(300),
        repo.record_intents(&lease, &[(ResourceKind::Vm, key(1))]),
    )
    .await;
    assert!(cancelled.is_err(), "the write was meant to be waiting");
    // …then the row is free: nothing of the cancelled write may sit on it now, neither for this
    // replica nor for another.
    release(&mut other).await;
    let other_replica = repo_configured(&db, settings);
    for (n, replica) in [(2, &other_replica), (3, &repo)] {
        let started = Instant::now();
        replica
            .record_intents(&lease, &[(ResourceKind::Vm, key(n))])
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_millis(500));
    }
    let journal = repo
        .operation(lease.operation)
        .await
        .unwrap()
        .unwrap()
        .journal;
    assert_eq!(
        journal
            .iter()
            .map(|e| e.idempotency_key.clone())
            .collect::<Vec<_>>(),
        [key(2), key(3)],
        "the cancelled write committed"
    );
}

// ---- idempotency keys -------------------------------------------------------------------------

/// How long the tests' idempotency keys are kept: longer than any test.
const RETAIN: Duration = Duration::from_secs(3600);

fn key(raw: &str) -> IdempotencyKey {
    IdempotencyKey::parse(raw).unwrap()
}

/// The fingerprint of a founding request whose body is `body`.
fn fingerprint(body: &str) -> RequestFingerprint {
    RequestFingerprint::of("POST /clusters", body.as_bytes())
}

/// The founding of `record` by a request that sent `raw_key` with body `body`.
fn keyed(record: &NewClusterRecord, raw_key: &str, body: &str) -> NewFounding {
    NewFounding {
        idempotency: Some(IdempotencyClaim {
            idempotency: Idempotency {
                key: key(raw_key),
                fingerprint: fingerprint(body),
            },
            retain_for: RETAIN,
        }),
        ..founding(record)
    }
}

/// Rows of kubeclusters, operations and client_idempotency_keys.
async fn counts(conn: &mut diesel_async::AsyncPgConnection) -> [i64; 3] {
    [
        count_rows(conn, "kubeclusters").await,
        count_rows(conn, "operations").await,
        count_rows(conn, "client_idempotency_keys").await,
    ]
}

/// Moves `org`'s key `raw_key` past its retention, by the database's clock.
async fn expire(conn: &mut diesel_async::AsyncPgConnection, org: &str, raw_key: &str) {
    let updated = sql_query(
        "UPDATE client_idempotency_keys SET expires_at = now() - interval '1 second' \
         WHERE org_id = $1 AND key = $2",
    )
    .bind::<diesel::sql_types::Text, _>(org)
    .bind::<diesel::sql_types::Text, _>(raw_key)
    .execute(conn)
    .await
    .unwrap();
    assert_eq!(updated, 1, "no key {raw_key:?} of {org}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_is_kept_with_its_founding_and_leads_back_to_the_operation_per_organization() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut conn = db.connect().await;
    let record = cluster_record("org-a", Some("prod"), 3, now());
    let founding = keyed(&record, "retry-1", "body-a");
    repo.begin_founding(&founding).await.unwrap();
    let journaled = format!("{}/security-group", founding.lease.operation);
    repo.record_intents(
        &founding.lease,
        &[(ResourceKind::SecurityGroup, journaled.clone())],
    )
    .await
    .unwrap();

    let found = repo
        .idempotent_operation(&record.org, &key("retry-1"))
        .await
        .unwrap()
        .expect("the key was not kept");
    assert_eq!(found.fingerprint, fingerprint("body-a"));
    assert_eq!(found.operation.id, founding.lease.operation);
    assert_eq!(found.operation.cluster_id, record.id);
    assert_eq!(found.operation.org, record.org);
    assert_eq!(found.operation.state, OperationState::Running);
    assert_eq!(found.operation.journal.len(), 1);
    assert_eq!(found.operation.journal[0].idempotency_key, journaled);
    assert_eq!(
        Some(found.operation),
        repo.operation(founding.lease.operation).await.unwrap()
    );
    // Kept for `retain_for` from the founding's commit, by the database's clock.
    let kept_for = texts(
        &mut conn,
        "SELECT extract(epoch FROM expires_at - created_at)::text AS value FROM client_idempotency_keys",
    )
    .await;
    assert_eq!(
        kept_for
            .iter()
            .map(|s| s.parse::<f64>().unwrap())
            .collect::<Vec<_>>(),
        [RETAIN.as_secs_f64()]
    );
    assert_eq!(
        repo.idempotent_operation(&record.org, &key("retry-2"))
            .await
            .unwrap(),
        None
    );

    // Atomic with the founding: one refused (its name is taken) keeps no key.
    let clash = cluster_record("org-a", Some("prod"), 1, now());
    let err = repo
        .begin_founding(&keyed(&clash, "retry-2", "body-clash"))
        .await
        .unwrap_err();
    assert!(matches!(err, RepoError::Conflict(_)), "{err:?}");
    assert_eq!(
        repo.idempotent_operation(&record.org, &key("retry-2"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(counts(&mut conn).await, [1, 1, 1]);

    // Another organization's key of the same text is its own.
    let other = cluster_record("org-b", Some("prod"), 1, now());
    let other_founding = keyed(&other, "retry-1", "body-b");
    repo.begin_founding(&other_founding).await.unwrap();
    let theirs = repo
        .idempotent_operation(&other.org, &key("retry-1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(theirs.fingerprint, fingerprint("body-b"));
    assert_eq!(theirs.operation.id, other_founding.lease.operation);
    assert_eq!(theirs.operation.cluster_id, other.id);
    let ours = repo
        .idempotent_operation(&record.org, &key("retry-1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ours.operation.id, founding.lease.operation);
    assert_eq!(ours.fingerprint, fingerprint("body-a"));
    assert_eq!(counts(&mut conn).await, [2, 2, 2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taken_key_is_refused_before_the_name_and_writes_nothing() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut conn = db.connect().await;
    let first = cluster_record("org-a", Some("prod"), 1, now());
    let first_founding = keyed(&first, "retry-1", "body-a");
    repo.begin_founding(&first_founding).await.unwrap();
    let before = snapshot(&mut conn).await;
    assert_eq!(counts(&mut conn).await, [1, 1, 1]);

    // The same key with another name, and with the same name (a retry whose first attempt still
    // holds the name): the key is what is taken, whatever the request.
    for (name, body) in [("other", "body-a"), ("other", "body-b"), ("prod", "body-a")] {
        let again = cluster_record("org-a", Some(name), 1, now());
        let err = repo
            .begin_founding(&keyed(&again, "retry-1", body))
            .await
            .unwrap_err();
        assert!(
            matches!(err, RepoError::IdempotencyKeyTaken),
            "{name}, {body}: expected IdempotencyKeyTaken, got {err:?}"
        );
        assert_eq!(counts(&mut conn).await, [1, 1, 1]);
        assert_eq!(
            snapshot(&mut conn).await,
            before,
            "a refused founding wrote something"
        );
    }
    // The name alone is still a conflict, and keeps no key either.
    let err = repo
        .begin_founding(&keyed(
            &cluster_record("org-a", Some("prod"), 1, now()),
            "retry-2",
            "body-a",
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, RepoError::Conflict(_)), "{err:?}");
    assert_eq!(snapshot(&mut conn).await, before);

    let kept = repo
        .idempotent_operation(&first.org, &key("retry-1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.operation.id, first_founding.lease.operation);
    assert_eq!(kept.fingerprint, fingerprint("body-a"));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_foundings_sending_one_key_at_once_found_one_cluster() {
    let db = TestDatabase::create().await;
    let (one, two) = (repo(&db), repo(&db));
    let mut conn = db.connect().await;
    for round in 0..8 {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let raw_key = format!("at-once-{round}");
        let foundings = [
            keyed(&cluster_record("org-a", None, 1, now()), &raw_key, "body"),
            keyed(&cluster_record("org-a", None, 1, now()), &raw_key, "body"),
        ];
        let racing = [
            (one.clone(), foundings[0].clone()),
            (two.clone(), foundings[1].clone()),
        ]
        .map(|(replica, founding)| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                replica.begin_founding(&founding).await
            })
        });
        let mut outcomes = Vec::new();
        for task in racing {
            outcomes.push(task.await.unwrap());
        }
        let winners: Vec<usize> = (0..2).filter(|&i| outcomes[i].is_ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {outcomes:?}");
        let (winner, loser) = (winners[0], 1 - winners[0]);
        assert!(
            matches!(outcomes[loser], Err(RepoError::IdempotencyKeyTaken)),
            "round {round}: {outcomes:?}"
        );
        let kept = one
            .idempotent_operation(&foundings[winner].cluster.org, &key(&raw_key))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kept.operation.id, foundings[winner].lease.operation);
        assert_eq!(
            one.operation(foundings[loser].lease.operation)
                .await
                .unwrap(),
            None
        );
        let rounds = i64::from(round) + 1;
        assert_eq!(counts(&mut conn).await, [rounds, rounds, rounds]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_founding_waits_for_another_ones_uncommitted_key_and_then_knows_whether_it_is_taken() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let holder = cluster_record("org-a", None, 1, now());
    let holder_founding = founding(&holder);
    repo.begin_founding(&holder_founding).await.unwrap();
    let mut other = db.connect().await;

    for commit in [false, true] {
        // Another founding's transaction has written the key and not committed yet.
        other
            .batch_execute(&format!(
                "BEGIN; INSERT INTO client_idempotency_keys (org_id, key, fingerprint, operation_id, \
                 expires_at) VALUES ('org-a', 'contended', '{}', '{}', now() + interval '1 hour');",
                fingerprint("first").as_str(),
                holder_founding.lease.operation
            ))
            .await
            .unwrap();
        let waiting = tokio::spawn({
            let repo = repo.clone();
            let founding = keyed(
                &cluster_record("org-a", None, 1, now()),
                "contended",
                "second",
            );
            async move { (repo.begin_founding(&founding).await, founding) }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !waiting.is_finished(),
            "a founding with a key another one is writing did not wait for it"
        );
        other
            .batch_execute(if commit { "COMMIT" } else { "ROLLBACK" })
            .await
            .unwrap();
        let (outcome, founding) = waiting.await.unwrap();
        let kept = repo
            .idempotent_operation(&holder.org, &key("contended"))
            .await
            .unwrap()
            .unwrap();
        if commit {
            assert!(
                matches!(outcome, Err(RepoError::IdempotencyKeyTaken)),
                "{outcome:?}"
            );
            assert_eq!(kept.operation.id, holder_founding.lease.operation);
        } else {
            // The other one gave up: the key was free after all.
            outcome.unwrap();
            assert_eq!(kept.operation.id, founding.lease.operation);
            assert_eq!(kept.fingerprint, fingerprint("second"));
            sql_query("DELETE FROM client_idempotency_keys")
                .execute(&mut other)
                .await
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_key_reads_as_absent_is_replaced_and_is_purged() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut conn = db.connect().await;
    assert_eq!(repo.purge_idempotency_keys().await.unwrap(), 0);
    let old = keyed(&cluster_record("org-a", None, 1, now()), "old", "first");
    let fresh = keyed(&cluster_record("org-a", None, 1, now()), "fresh", "fresh");
    let theirs = keyed(&cluster_record("org-b", None, 1, now()), "old", "theirs");
    for founding in [&old, &fresh, &theirs] {
        repo.begin_founding(founding).await.unwrap();
    }
    assert_eq!(repo.purge_idempotency_keys().await.unwrap(), 0);

    expire(&mut conn, "org-a", "old").await;
    let org_a = old.cluster.org.clone();
    assert_eq!(
        repo.idempotent_operation(&org_a, &key("old"))
            .await
            .unwrap(),
        None,
        "an expired key still leads to its operation"
    );
    // Only that one: the other organization's key of the same text, and the fresh key, stand.
    assert_eq!(
        repo.idempotent_operation(&theirs.cluster.org, &key("old"))
            .await
            .unwrap()
            .unwrap()
            .operation
            .id,
        theirs.lease.operation
    );
    assert!(
        repo.idempotent_operation(&org_a, &key("fresh"))
            .await
            .unwrap()
            .is_some()
    );

    // A new founding takes the expired key over, whatever its request.
    let again = keyed(&cluster_record("org-a", None, 1, now()), "old", "second");
    repo.begin_founding(&again).await.unwrap();
    let replaced = repo
        .idempotent_operation(&org_a, &key("old"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(replaced.operation.id, again.lease.operation);
    assert_eq!(replaced.fingerprint, fingerprint("second"));
    assert_eq!(counts(&mut conn).await, [4, 4, 3]);
    // The replaced key's operation is still there, for the record.
    assert!(repo.operation(old.lease.operation).await.unwrap().is_some());

    // Purging forgets the expired keys only.
    expire(&mut conn, "org-a", "fresh").await;
    expire(&mut conn, "org-b", "old").await;
    assert_eq!(repo.purge_idempotency_keys().await.unwrap(), 2);
    assert_eq!(
        texts(
            &mut conn,
            "SELECT org_id || ' ' || key AS value FROM client_idempotency_keys"
        )
        .await,
        ["org-a old"]
    );
    assert_eq!(repo.purge_idempotency_keys().await.unwrap(), 0);
    assert_eq!(counts(&mut conn).await, [4, 4, 1]);
    // And a purged key is free.
    repo.begin_founding(&keyed(
        &cluster_record("org-a", None, 1, now()),
        "fresh",
        "again",
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_foundings_key_still_leads_to_the_failure() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut conn = db.connect().await;
    let record = cluster_record("org-a", Some("doomed"), 1, now());
    let founding = keyed(&record, "retry-1", "body");
    repo.begin_founding(&founding).await.unwrap();
    let (ca, sa) = trust_root_of(record.id);
    repo.store_trust_root(&founding.lease, record.id, &ca, &sa)
        .await
        .unwrap();

    repo.fail_operation(&founding.lease, &problem())
        .await
        .unwrap();

    assert_eq!(counts(&mut conn).await, [0, 1, 1]);
    let kept = repo
        .idempotent_operation(&record.org, &key("retry-1"))
        .await
        .unwrap()
        .expect("the failed founding's key is gone");
    assert_eq!(kept.fingerprint, fingerprint("body"));
    assert_eq!(kept.operation.id, founding.lease.operation);
    assert_eq!(kept.operation.cluster_id, record.id);
    assert_eq!(kept.operation.state, OperationState::Failed);
    assert_eq!(kept.operation.problem, Some(problem()));
    // The name is free again, the key is not: a retry is answered from the failure.
    let err = repo
        .begin_founding(&keyed(
            &cluster_record("org-a", Some("doomed"), 1, now()),
            "retry-1",
            "body",
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, RepoError::IdempotencyKeyTaken), "{err:?}");
    repo.begin_founding(&keyed(
        &cluster_record("org-a", Some("doomed"), 1, now()),
        "retry-2",
        "body",
    ))
    .await
    .unwrap();
}

// ---- deletions --------------------------------------------------------------------------------

/// The deletion of `org`'s `cluster` by a request that sent `raw_key` with body `body`.
fn deletion_keyed(org: &OrgId, cluster: ClusterId, raw_key: &str, body: &str) -> NewDeletion {
    NewDeletion {
        idempotency: Some(IdempotencyClaim {
            idempotency: Idempotency {
                key: key(raw_key),
                fingerprint: fingerprint(body),
            },
            retain_for: RETAIN,
        }),
        ..deletion(org, cluster)
    }
}

/// Rows of `table` whose `column` is `cluster`.
async fn rows_of(
    conn: &mut diesel_async::AsyncPgConnection,
    table: &str,
    column: &str,
    cluster: ClusterId,
) -> i64 {
    texts(
        conn,
        &format!("SELECT count(*)::text AS value FROM {table} WHERE {column} = '{cluster}'"),
    )
    .await[0]
        .parse()
        .unwrap()
}

/// The cluster's row, node rows and shared certificates: kubeclusters, etcdnodes,
/// apiservernodes, clustercerts.
async fn cluster_rows(conn: &mut diesel_async::AsyncPgConnection, cluster: ClusterId) -> [i64; 4] {
    [
        rows_of(conn, "kubeclusters", "id", cluster).await,
        rows_of(conn, "etcdnodes", "cluster_id", cluster).await,
        rows_of(conn, "apiservernodes", "cluster_id", cluster).await,
        rows_of(conn, "clustercerts", "cluster_id", cluster).await,
    ]
}

/// Running deletions of `cluster`.
async fn running_deletions(conn: &mut diesel_async::AsyncPgConnection, cluster: ClusterId) -> i64 {
    texts(
        conn,
        &format!(
            "SELECT count(*)::text AS value FROM operations \
             WHERE cluster_id = '{cluster}' AND kind = 'delete' AND state = 'running'"
        ),
    )
    .await[0]
        .parse()
        .unwrap()
}

async fn status_of(repo: &PgRepo, record: &NewClusterRecord) -> Option<ClusterStatus> {
    repo.find_cluster(&record.org, record.id)
        .await
        .unwrap()
        .map(|details| details.summary.status)
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_unknown_another_orgs_or_a_provisioning_cluster_is_refused_and_writes_nothing()
{
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut compute = db.connect().await;
    let mut conn = db.connect().await;
    let ready = cluster_record("org-a", Some("ready"), 1, now());
    found(&repo, &mut compute, &ready, 1).await;
    let young = cluster_record("org-a", Some("young"), 1, now());
    let young_lease = begin(&repo, &young).await;
    let before = snapshot(&mut conn).await;

    for (who, cluster) in [("org-b", ready.id), ("org-a", ClusterId::new_random())] {
        for attempt in [
            deletion(&org(who), cluster),
            deletion_keyed(&org(who), cluster, "delete-1", "body"),
        ] {
            let err = repo.begin_deletion(&attempt).await.unwrap_err();
            assert!(
                matches!(err, RepoError::NotFound(_)),
                "{who} {cluster}: {err:?}"
            );
        }
    }
    for attempt in [
        deletion(&young.org, young.id),
        deletion_keyed(&young.org, young.id, "delete-1", "body"),
    ] {
        let err = repo.begin_deletion(&attempt).await.unwrap_err();
        let RepoError::Conflict(message) = &err else {
            panic!("expected a conflict, got {err:?}");
        };
        assert!(message.contains("still being founded"), "{message}");
    }
    assert_eq!(
        snapshot(&mut conn).await,
        before,
        "a refused deletion wrote something"
    );
    assert_eq!(status_of(&repo, &ready).await, Some(ClusterStatus::Ready));
    // The founding goes on undisturbed.
    repo.finish_founding(&young_lease, &founding_rows(&young, 2))
        .await
        .unwrap();
    assert_eq!(status_of(&repo, &young).await, Some(ClusterStatus::Ready));
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_ready_cluster_starts_one_deletion_and_another_begin_answers_with_it() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut compute = db.connect().await;
    let mut conn = db.connect().await;
    let record = cluster_record("org-a", Some("doomed"), 3, now());
    found(&repo, &mut compute, &record, 1).await;
    let neighbour = cluster_record("org-a", None, 1, now());
    found(&repo, &mut compute, &neighbour, 2).await;

    let first = deletion(&record.org, record.id);
    assert_eq!(
        repo.begin_deletion(&first).await.unwrap(),
        DeletionStart::Started
    );

    // Deleting, with everything it had until the deletion's last transaction.
    let details = repo
        .find_cluster(&record.org, record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(details.summary.status, ClusterStatus::Deleting);
    assert_eq!(details.nodes.len(), 3);
    assert_eq!(cluster_rows(&mut conn, record.id).await, [1, 3, 3, 6]);
    let listed = repo
        .list_clusters(&record.org, &first_page())
        .await
        .unwrap();
    let listed: Vec<(ClusterId, ClusterStatus)> =
        listed.clusters.iter().map(|c| (c.id, c.status)).collect();
    assert!(listed.contains(&(record.id, ClusterStatus::Deleting)));
    assert!(listed.contains(&(neighbour.id, ClusterStatus::Ready)));
    let operation = repo
        .operation(first.lease.operation)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(operation.kind, OperationKind::Delete);
    assert_eq!(operation.org, record.org);
    assert_eq!(operation.cluster_id, record.id);
    assert_eq!(operation.state, OperationState::Running);
    assert_eq!(operation.step, "begin");
    assert_eq!(operation.owner, first.lease.owner);
    assert_eq!(operation.problem, None);
    assert_eq!(operation.ended_at, None);
    assert!(operation.journal.is_empty());
    // Leased from the database's clock.
    assert_eq!(
        operation.lease_expires_at,
        Some(operation.started_at + LEASE)
    );
    assert_eq!(running_deletions(&mut conn, record.id).await, 1);
    // No key was sent, none is kept.
    assert_eq!(count_rows(&mut conn, "client_idempotency_keys").await, 0);

    // The deletion journals what it deletes; another begin answers with it, journal and all,
    // and writes nothing: no operation, no key, no change to the cluster.
    let vm_key = format!("{}/vm/1", first.lease.operation);
    repo.record_intents(&first.lease, &[(ResourceKind::Vm, vm_key.clone())])
        .await
        .unwrap();
    let running = repo
        .operation(first.lease.operation)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(running.journal.len(), 1);
    let before = snapshot(&mut conn).await;
    let another_replica = NewDeletion {
        lease: lease_of("replica-b"),
        ..deletion(&record.org, record.id)
    };
    for again in [
        deletion(&record.org, record.id),
        deletion_keyed(&record.org, record.id, "delete-2", "body"),
        another_replica,
    ] {
        match repo.begin_deletion(&again).await.unwrap() {
            DeletionStart::AlreadyRunning(answered) => assert_eq!(*answered, running),
            DeletionStart::Started => panic!("a second deletion started"),
        }
        assert_eq!(
            snapshot(&mut conn).await,
            before,
            "answering with the running deletion wrote something"
        );
        assert_eq!(repo.operation(again.lease.operation).await.unwrap(), None);
    }
    assert_eq!(
        repo.idempotent_operation(&record.org, &key("delete-2"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(running_deletions(&mut conn, record.id).await, 1);
    assert_eq!(
        status_of(&repo, &neighbour).await,
        Some(ClusterStatus::Ready)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_deletions_of_one_cluster_at_once_start_one() {
    let db = TestDatabase::create().await;
    let (one, two) = (repo(&db), repo(&db));
    let mut compute = db.connect().await;
    let mut conn = db.connect().await;
    for round in 0..6u8 {
        let record = cluster_record("org-a", None, 1, now());
        found(&one, &mut compute, &record, round + 1).await;
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let attempts = [
            deletion_keyed(&record.org, record.id, &format!("a-{round}"), "body"),
            deletion_keyed(&record.org, record.id, &format!("b-{round}"), "body"),
        ];
        let racing = [
            (one.clone(), attempts[0].clone()),
            (two.clone(), attempts[1].clone()),
        ]
        .map(|(replica, attempt)| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                replica.begin_deletion(&attempt).await
            })
        });
        let mut outcomes = Vec::new();
        for task in racing {
            outcomes.push(task.await.unwrap().unwrap());
        }
        let started: Vec<usize> = (0..2)
            .filter(|&i| outcomes[i] == DeletionStart::Started)
            .collect();
        assert_eq!(started.len(), 1, "round {round}: {outcomes:?}");
        let (winner, loser) = (started[0], 1 - started[0]);
        let DeletionStart::AlreadyRunning(answered) = &outcomes[loser] else {
            panic!("round {round}: {outcomes:?}");
        };
        assert_eq!(answered.id, attempts[winner].lease.operation);
        assert_eq!(running_deletions(&mut conn, record.id).await, 1);
        let loser_key = &attempts[loser]
            .idempotency
            .as_ref()
            .unwrap()
            .idempotency
            .key;
        assert_eq!(
            one.idempotent_operation(&record.org, loser_key)
                .await
                .unwrap(),
            None,
            "round {round}: the answered request's key was kept"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deletion_keeps_its_key_and_a_taken_key_starts_nothing() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut compute = db.connect().await;
    let mut conn = db.connect().await;
    let first = cluster_record("org-a", None, 1, now());
    let second = cluster_record("org-a", None, 1, now());
    let theirs = cluster_record("org-b", None, 1, now());
    for (site, record) in [&first, &second, &theirs].into_iter().enumerate() {
        found(&repo, &mut compute, record, u8::try_from(site).unwrap() + 1).await;
    }

    let keyed_deletion = deletion_keyed(&first.org, first.id, "delete-1", "body-1");
    assert_eq!(
        repo.begin_deletion(&keyed_deletion).await.unwrap(),
        DeletionStart::Started
    );
    let kept = repo
        .idempotent_operation(&first.org, &key("delete-1"))
        .await
        .unwrap()
        .expect("the deletion's key was not kept");
    assert_eq!(kept.fingerprint, fingerprint("body-1"));
    assert_eq!(kept.operation.id, keyed_deletion.lease.operation);
    assert_eq!(kept.operation.kind, OperationKind::Delete);
    assert_eq!(kept.operation.cluster_id, first.id);
    let kept_for = texts(
        &mut conn,
        "SELECT extract(epoch FROM expires_at - created_at)::text AS value FROM client_idempotency_keys",
    )
    .await;
    assert_eq!(
        kept_for
            .iter()
            .map(|s| s.parse::<f64>().unwrap())
            .collect::<Vec<_>>(),
        [RETAIN.as_secs_f64()]
    );

    // The same key for another cluster: taken, and nothing is written.
    let before = snapshot(&mut conn).await;
    for body in ["body-1", "body-2"] {
        let err = repo
            .begin_deletion(&deletion_keyed(&second.org, second.id, "delete-1", body))
            .await
            .unwrap_err();
        assert!(matches!(err, RepoError::IdempotencyKeyTaken), "{err:?}");
        assert_eq!(
            snapshot(&mut conn).await,
            before,
            "a refused deletion wrote something"
        );
    }
    assert_eq!(status_of(&repo, &second).await, Some(ClusterStatus::Ready));
    // Another organization's key of the same text is its own.
    assert_eq!(
        repo.begin_deletion(&deletion_keyed(&theirs.org, theirs.id, "delete-1", "x"))
            .await
            .unwrap(),
        DeletionStart::Started
    );
    // Past its retention, the key is free again: the deletion taking it replaces it.
    expire(&mut conn, "org-a", "delete-1").await;
    let again = deletion_keyed(&second.org, second.id, "delete-1", "body-2");
    assert_eq!(
        repo.begin_deletion(&again).await.unwrap(),
        DeletionStart::Started
    );
    let replaced = repo
        .idempotent_operation(&second.org, &key("delete-1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(replaced.operation.id, again.lease.operation);
    assert_eq!(replaced.fingerprint, fingerprint("body-2"));
    assert_eq!(
        status_of(&repo, &second).await,
        Some(ClusterStatus::Deleting)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn finishing_a_deletion_removes_the_cluster_with_every_row_hanging_off_it() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut compute = db.connect().await;
    let mut conn = db.connect().await;
    let doomed = cluster_record("org-a", Some("doomed"), 3, now());
    let founding_lease = found(&repo, &mut compute, &doomed, 1).await;
    let kept = cluster_record("org-a", Some("kept"), 1, now());
    found(&repo, &mut compute, &kept, 2).await;
    let started = deletion(&doomed.org, doomed.id);
    repo.begin_deletion(&started).await.unwrap();
    let lease = started.lease;
    assert_eq!(cluster_rows(&mut conn, doomed.id).await, [1, 3, 3, 6]);
    assert_eq!(
        repo.live_clusters(&[doomed.id]).await.unwrap(),
        [doomed.id],
        "a deleting cluster's resources are not orphans"
    );

    // Not this lease's: nothing changes.
    let before = snapshot(&mut conn).await;
    for stranger in [
        Lease {
            operation: lease.operation,
            owner: ReplicaId::new("replica-b"),
        },
        lease_of(REPLICA),
    ] {
        let err = repo.finish_deletion(&stranger).await.unwrap_err();
        assert!(matches!(err, RepoError::LeaseLost), "{err:?}");
        assert_eq!(snapshot(&mut conn).await, before, "{stranger:?} wrote");
    }

    repo.finish_deletion(&lease).await.unwrap();

    assert_eq!(cluster_rows(&mut conn, doomed.id).await, [0, 0, 0, 0]);
    assert_eq!(status_of(&repo, &doomed).await, None);
    // The other cluster keeps all of its rows.
    assert_eq!(cluster_rows(&mut conn, kept.id).await, [1, 1, 1, 6]);
    assert_eq!(status_of(&repo, &kept).await, Some(ClusterStatus::Ready));
    assert_eq!(count_rows(&mut conn, "etcdnodes").await, 1);
    assert_eq!(count_rows(&mut conn, "apiservernodes").await, 1);
    assert_eq!(count_rows(&mut conn, "clustercerts").await, 6);
    let operation = repo.operation(lease.operation).await.unwrap().unwrap();
    assert_eq!(operation.state, OperationState::Succeeded);
    assert_eq!(operation.lease_expires_at, None);
    assert!(operation.ended_at.is_some());
    assert_eq!(operation.problem, None);
    // Operations stay, for the record: the founding's as well.
    assert_eq!(
        repo.operation(founding_lease.operation)
            .await
            .unwrap()
            .unwrap()
            .state,
        OperationState::Succeeded
    );
    // Neither a row nor a running operation: what is left of it is an orphan.
    assert!(repo.live_clusters(&[doomed.id]).await.unwrap().is_empty());
    // Ended: the lease writes nothing more.
    let before = snapshot(&mut conn).await;
    let err = repo.finish_deletion(&lease).await.unwrap_err();
    assert!(matches!(err, RepoError::LeaseLost), "{err:?}");
    assert_eq!(snapshot(&mut conn).await, before);
    // The name is free again.
    repo.begin_founding(&founding(&cluster_record(
        "org-a",
        Some("doomed"),
        1,
        now(),
    )))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_deletion_leaves_the_cluster_deleting_and_another_deletion_can_start() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut compute = db.connect().await;
    let mut conn = db.connect().await;
    let record = cluster_record("org-a", None, 3, now());
    found(&repo, &mut compute, &record, 1).await;
    let first = deletion(&record.org, record.id);
    repo.begin_deletion(&first).await.unwrap();
    let vm_key = format!("{}/vm/1", first.lease.operation);
    repo.record_intents(&first.lease, &[(ResourceKind::Vm, vm_key.clone())])
        .await
        .unwrap();

    repo.fail_operation(&first.lease, &problem()).await.unwrap();

    let failed = repo
        .operation(first.lease.operation)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.state, OperationState::Failed);
    assert_eq!(failed.problem, Some(problem()));
    assert_eq!(failed.journal.len(), 1);
    // The cluster stays deleting, with every row: its resources may be partly gone.
    let details = repo
        .find_cluster(&record.org, record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(details.summary.status, ClusterStatus::Deleting);
    assert_eq!(details.nodes.len(), 3);
    assert_eq!(cluster_rows(&mut conn, record.id).await, [1, 3, 3, 6]);
    assert_eq!(running_deletions(&mut conn, record.id).await, 0);
    assert_eq!(repo.live_clusters(&[record.id]).await.unwrap(), [record.id]);
    // A deleting cluster boots no node.
    let node = plinth_domain::model::NodeName::new(
        record.id,
        plinth_domain::model::NodeOrdinal::new(1).unwrap(),
    );
    assert_eq!(
        repo.bootstrap_material(record.id, &node).await.unwrap(),
        None
    );

    // Another DELETE starts a new deletion.
    let second = deletion(&record.org, record.id);
    assert_eq!(
        repo.begin_deletion(&second).await.unwrap(),
        DeletionStart::Started
    );
    let running = repo
        .operation(second.lease.operation)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(running.kind, OperationKind::Delete);
    assert_eq!(running.state, OperationState::Running);
    assert!(running.journal.is_empty());
    assert_eq!(running_deletions(&mut conn, record.id).await, 1);
    assert_eq!(
        repo.operation(first.lease.operation)
            .await
            .unwrap()
            .unwrap(),
        failed,
        "the failed deletion changed"
    );
    repo.finish_deletion(&second.lease).await.unwrap();
    assert_eq!(cluster_rows(&mut conn, record.id).await, [0, 0, 0, 0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_deletion_is_taken_over_and_finished_by_its_new_owner() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut compute = db.connect().await;
    let mut conn = db.connect().await;
    let record = cluster_record("org-a", None, 1, now());
    found(&repo, &mut compute, &record, 1).await;
    let expired = NewDeletion {
        lease_for: Duration::ZERO,
        ..deletion(&record.org, record.id)
    };
    repo.begin_deletion(&expired).await.unwrap();
    // Expired but running: another DELETE still answers with it.
    assert!(matches!(
        repo.begin_deletion(&deletion(&record.org, record.id))
            .await
            .unwrap(),
        DeletionStart::AlreadyRunning(running) if running.id == expired.lease.operation
    ));

    let b = ReplicaId::new("replica-b");
    let claimed = repo.claim_expired(&b, LEASE, 10).await.unwrap();
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert_eq!(claimed[0].id, expired.lease.operation);
    assert_eq!(claimed[0].kind, OperationKind::Delete);
    assert_eq!(claimed[0].cluster_id, record.id);
    assert_eq!(claimed[0].owner, b);
    assert_eq!(claimed[0].state, OperationState::Running);

    // The old owner can no longer finish it; the new one can.
    let before = snapshot(&mut conn).await;
    let err = repo.finish_deletion(&expired.lease).await.unwrap_err();
    assert!(matches!(err, RepoError::LeaseLost), "{err:?}");
    assert_eq!(snapshot(&mut conn).await, before);
    assert_eq!(
        status_of(&repo, &record).await,
        Some(ClusterStatus::Deleting)
    );
    let taken = Lease {
        operation: expired.lease.operation,
        owner: b,
    };
    repo.finish_deletion(&taken).await.unwrap();
    assert_eq!(status_of(&repo, &record).await, None);
    assert_eq!(cluster_rows(&mut conn, record.id).await, [0, 0, 0, 0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foundings_lease_cannot_end_its_operation_as_a_deletion() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut conn = db.connect().await;
    let record = cluster_record("org-a", None, 1, now());
    let lease = begin(&repo, &record).await;
    // However its cluster came to be deleting while the founding still runs, the founding's
    // lease does not remove it.
    sql_query(format!(
        "UPDATE kubeclusters SET status = 'deleting', \
         certificates_expire_at = now() + interval '1 year' WHERE id = '{}'",
        record.id
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let before = snapshot(&mut conn).await;
    let err = repo.finish_deletion(&lease).await.unwrap_err();
    let RepoError::Unexpected(e) = &err else {
        panic!("expected a refusal, got {err:?}");
    };
    assert!(e.to_string().contains("not a deletion"), "{e}");
    assert_eq!(snapshot(&mut conn).await, before);
}

// ---- migrations -------------------------------------------------------------------------------

fn migrations_in_the_repository() -> Vec<String> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../migrations");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_dir())
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_migrating_at_once_apply_each_migration_once() {
    let expected = migrations_in_the_repository();
    for _ in 0..5 {
        let db = TestDatabase::create_empty().await;
        let (a, b) = (repo(&db), repo(&db));
        // Both connected already, so that they start migrating together, each on a task of its
        // own (diesel's migration harness blocks its thread while it runs).
        a.ping().await.unwrap();
        b.ping().await.unwrap();
        let migrating = [a.clone(), b.clone()]
            .map(|replica| tokio::spawn(async move { replica.migrate().await }));
        let [from_a, from_b] = migrating;
        let (from_a, from_b) = (
            from_a.await.unwrap().unwrap(),
            from_b.await.unwrap().unwrap(),
        );
        assert!(
            from_a.is_empty() || from_b.is_empty(),
            "both applied migrations: {from_a:?} {from_b:?}"
        );
        let mut applied: Vec<String> = from_a.into_iter().chain(from_b).collect();
        applied.sort();
        assert_eq!(applied.len(), expected.len());
        for (version, name) in applied.iter().zip(&expected) {
            assert!(
                name.replace('-', "").starts_with(&version.replace('-', "")),
                "{version} vs {name}"
            );
        }
        let mut conn = db.connect().await;
        assert_eq!(
            count_rows(&mut conn, "__diesel_schema_migrations").await,
            i64::try_from(expected.len()).unwrap()
        );
        assert!(a.migrate().await.unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_waits_for_another_replicas_migrations_however_long_they_take() {
    let db = TestDatabase::create_empty().await;
    // Another replica is migrating: it holds the lock longer than this one's lock_timeout and
    // statement_timeout.
    let mut other = db.connect().await;
    other
        .batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
        .await
        .unwrap();
    let repo = repo_configured(&db, |s| {
        s.lock_timeout_secs = 1;
        s.statement_timeout_secs = 1;
    });
    let migrating = tokio::spawn({
        let repo = repo.clone();
        async move { repo.migrate().await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !migrating.is_finished(),
        "migrating went ahead (or gave up) while another replica held the lock: {:?}",
        migrating.await
    );
    // The other replica is done (here: it applied nothing); this one migrates.
    other
        .batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
        .await
        .unwrap();
    let applied = tokio::time::timeout(Duration::from_secs(5), migrating)
        .await
        .expect("migrating did not go on once the lock was free")
        .unwrap()
        .unwrap();
    assert_eq!(applied.len(), migrations_in_the_repository().len());
}

// ---- quotas -------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn an_organization_at_its_cluster_quota_founds_no_more_and_others_are_unaffected() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let limits = OrgLimits {
        max_clusters: 2,
        max_foundings_in_flight: 10,
    };
    let with_limits = |record: &NewClusterRecord| NewFounding {
        limits,
        ..founding(record)
    };
    for _ in 0..2 {
        let record = cluster_record("org-a", None, 1, now());
        repo.begin_founding(&with_limits(&record)).await.unwrap();
    }
    let mut conn = db.connect().await;
    let before = snapshot(&mut conn).await;
    let third = cluster_record("org-a", None, 1, now());
    match repo.begin_founding(&with_limits(&third)).await {
        Err(RepoError::QuotaExceeded {
            quota: Quota::Clusters,
            limit: 2,
        }) => {}
        other => panic!("expected the cluster quota, got {other:?}"),
    }
    assert_eq!(
        snapshot(&mut conn).await,
        before,
        "a refused founding wrote something"
    );
    let elsewhere = cluster_record("org-b", None, 1, now());
    repo.begin_founding(&with_limits(&elsewhere)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn foundings_at_once_stop_at_the_organizations_limit_even_when_they_race() {
    let db = TestDatabase::create().await;
    let repo = Arc::new(repo(&db));
    let limits = OrgLimits {
        max_clusters: 100,
        max_foundings_in_flight: 3,
    };
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let repo = Arc::clone(&repo);
            tokio::spawn(async move {
                let record = cluster_record("org-a", None, 1, now());
                repo.begin_founding(&NewFounding {
                    limits,
                    ..founding(&record)
                })
                .await
            })
        })
        .collect();
    let mut started = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => started += 1,
            Err(RepoError::QuotaExceeded {
                quota: Quota::FoundingsInFlight,
                limit: 3,
            }) => {}
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(started, 3, "exactly the limit's worth run at once");
    let mut conn = db.connect().await;
    let running = texts(
        &mut conn,
        "SELECT id::text AS value FROM operations WHERE state = 'running'",
    )
    .await;
    assert_eq!(running.len(), 3, "{running:?}");
}
