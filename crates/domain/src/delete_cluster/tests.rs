//! `DeleteCluster` on the ports' doubles: the order of the steps, what is and is not deleted,
//! the group retried while in use, how a stopped deletion ends, and how a `DELETE` begins.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use super::*;
use crate::found_cluster::{FoundCluster, FoundingPorts};
use crate::model::{
    ClusterStatus, IdempotencyKey, NodeAddresses, NodeName, NodeOrdinal, OperationState, ReplicaId,
    RequestFingerprint, SecurityGroupId,
};
use crate::ports::compute::{MockCompute, TaggedResource, Tags};
use crate::ports::dns::MockDns;
use crate::ports::operations::{IdempotentOperation, MockOperations};
use crate::ports::pki::MockPki;
use crate::ports::repo::{ClusterDetails, ClusterSecurityGroups, MockRepo, NodePlacement};
use crate::testing::{RecordingObserver, cluster_details, founding_settings, operation_record};

const DEADLINE: Duration = Duration::from_secs(60);

fn org() -> OrgId {
    OrgId::parse("org-a").unwrap()
}

fn leasing() -> Leasing {
    Leasing {
        owner: ReplicaId::new("replica-a"),
        lease: Duration::from_secs(30),
    }
}

fn idempotency_settings() -> IdempotencySettings {
    IdempotencySettings {
        retention: Duration::from_secs(3600),
    }
}

/// A ready 2-node cluster whose VMs are vm-1 and vm-2, with the group plinth created (sg-made)
/// and one the caller passed (sg-theirs).
fn ready(cluster: ClusterId) -> ClusterDetails {
    let node = |n: u8| NodePlacement {
        ordinal: NodeOrdinal::new(n).unwrap(),
        name: NodeName::new(cluster, NodeOrdinal::new(n).unwrap()),
        vm_id: VmId::parse(&format!("vm-{n}")).unwrap(),
        addresses: NodeAddresses {
            ipv4: Ipv4Addr::new(127, 10, 0, n),
            ipv6: None,
            public_ipv4: None,
        },
    };
    ClusterDetails {
        nodes: vec![node(1), node(2)],
        security_groups: ClusterSecurityGroups {
            attached: vec![
                SecurityGroupId::parse("sg-made").unwrap(),
                SecurityGroupId::parse("sg-theirs").unwrap(),
            ],
            created: Some(SecurityGroupId::parse("sg-made").unwrap()),
        },
        ..cluster_details("org-a", cluster, ClusterStatus::Deleting)
    }
}

struct Doubles {
    repo: MockRepo,
    operations: MockOperations,
    compute: MockCompute,
    dns: Option<MockDns>,
    observer: Arc<RecordingObserver>,
    /// Every call the deletion made, in order.
    calls: Arc<Mutex<Vec<String>>>,
}

impl Doubles {
    fn new() -> Self {
        Self {
            repo: MockRepo::new(),
            operations: MockOperations::new(),
            compute: MockCompute::new(),
            dns: None,
            observer: Arc::default(),
            calls: Arc::default(),
        }
    }

    fn use_case(
        self,
    ) -> (
        Arc<DeleteCluster>,
        Arc<RecordingObserver>,
        Arc<Mutex<Vec<String>>>,
    ) {
        let ports = DeletionPorts {
            repo: Arc::new(self.repo),
            operations: Arc::new(self.operations),
            compute: Arc::new(self.compute),
            dns: self.dns.map(|d| Arc::new(d) as Arc<dyn Dns>),
            observer: Arc::clone(&self.observer) as Arc<dyn Observer>,
        };
        let use_case = DeleteCluster::new(ports, leasing(), DEADLINE, idempotency_settings());
        (Arc::new(use_case), self.observer, self.calls)
    }
}

/// Doubles for deleting `cluster` (as [`ready`]) step by step; `vm_2` is what deleting vm-2
/// answers, `group_in_use` how many times the group is refused as in use first.
fn deleting(cluster: ClusterId, vm_2: Result<(), ComputeError>, group_in_use: usize) -> Doubles {
    let mut d = Doubles::new();
    let record = |calls: &Arc<Mutex<Vec<String>>>, call: String| calls.lock().unwrap().push(call);
    let calls = Arc::clone(&d.calls);
    d.operations
        .expect_renew_lease()
        .returning(move |_, step, _| {
            record(&calls, format!("step {step}"));
            Ok(())
        });
    d.repo
        .expect_find_cluster()
        .withf(move |o, id| *o == org() && *id == cluster)
        .returning(move |_, _| Ok(Some(ready(cluster))));
    let mut dns = MockDns::new();
    let calls = Arc::clone(&d.calls);
    dns.expect_delete_address_records()
        .times(1)
        .returning(move |name| {
            record(&calls, format!("dns {name}"));
            Ok(())
        });
    d.dns = Some(dns);
    let calls = Arc::clone(&d.calls);
    d.compute
        .expect_list_vms()
        .withf(move |key, value| key == tags::CLUSTER_ID && value == cluster.to_string())
        .returning(move |_, _| {
            record(&calls, "list vms".to_owned());
            // vm-3 carries the cluster's tag but no row names it: it goes too.
            Ok(vec![TaggedResource {
                id: "vm-3".to_owned(),
                tags: Tags::new(),
                created_at: time::OffsetDateTime::now_utc(),
            }])
        });
    let calls = Arc::clone(&d.calls);
    let mut vm_2 = Some(vm_2);
    d.compute.expect_delete_vm().returning(move |id| {
        record(&calls, format!("delete {id}"));
        match id.as_str() {
            "vm-2" => vm_2.take().unwrap_or(Ok(())),
            _ => Ok(()),
        }
    });
    let calls = Arc::clone(&d.calls);
    let mut refusals = group_in_use;
    d.compute
        .expect_delete_security_group()
        .withf(|group| group.as_str() == "sg-made")
        .returning(move |group| {
            record(&calls, format!("delete {group}"));
            if refusals > 0 {
                refusals -= 1;
                return Err(ComputeError::Conflict("in use".into()));
            }
            Ok(())
        });
    d
}

fn lease() -> Lease {
    Lease {
        operation: OperationId::new_random(),
        owner: leasing().owner,
    }
}

#[tokio::test(start_paused = true)]
async fn dns_then_every_vm_then_the_made_group_then_the_rows() {
    let cluster = ClusterId::new_random();
    let mut d = deleting(cluster, Ok(()), 2);
    let calls = Arc::clone(&d.calls);
    d.operations
        .expect_finish_deletion()
        .times(1)
        .returning(move |_| {
            calls.lock().unwrap().push("finish".to_owned());
            Ok(())
        });
    d.operations.expect_fail_operation().never();
    let (use_case, observer, calls) = d.use_case();

    use_case.run(&lease(), &org(), cluster).await;

    let calls = calls.lock().unwrap().clone();
    let position = |call: &str| {
        calls
            .iter()
            .position(|c| c == call)
            .unwrap_or_else(|| panic!("no {call} in {calls:?}"))
    };
    let dns = position(&format!(
        "dns api.cluster-{cluster}.{}",
        founding_settings().dns_zone
    ));
    let vms = ["delete vm-1", "delete vm-2", "delete vm-3"].map(position);
    let group_tries: Vec<usize> = calls
        .iter()
        .enumerate()
        .filter(|(_, c)| *c == "delete sg-made")
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        group_tries.len(),
        3,
        "refused twice as in use, then deleted: {calls:?}"
    );
    let finish = position("finish");
    assert!(
        vms.iter().all(|vm| dns < *vm && *vm < group_tries[0]),
        "{calls:?}"
    );
    assert!(group_tries[2] < finish, "{calls:?}");
    assert!(
        !calls.iter().any(|c| c.contains("sg-theirs")),
        "the caller's group is never touched"
    );
    let steps: Vec<&str> = calls
        .iter()
        .filter_map(|c| c.strip_prefix("step "))
        .collect();
    assert_eq!(
        steps,
        [
            "delete_dns",
            "delete_vms",
            "delete_security_group",
            "remove_rows"
        ]
    );
    assert_eq!(
        observer.seen().ended,
        [(OperationKind::Delete, "succeeded".to_owned())]
    );
}

#[tokio::test(start_paused = true)]
async fn a_compute_failure_ends_the_deletion_failed_and_leaves_the_rows() {
    let cluster = ClusterId::new_random();
    let mut d = deleting(cluster, Err(ComputeError::Unavailable("503".into())), 0);
    d.operations.expect_finish_deletion().never();
    let problem: Arc<Mutex<Option<OperationProblem>>> = Arc::default();
    let seen = Arc::clone(&problem);
    d.operations
        .expect_fail_operation()
        .times(1)
        .returning(move |_, p| {
            *seen.lock().unwrap() = Some(p.clone());
            Ok(())
        });
    let (use_case, observer, calls) = d.use_case();

    use_case.run(&lease(), &org(), cluster).await;

    let problem = problem.lock().unwrap().clone().unwrap();
    assert_eq!(problem.kind, "compute-failed");
    assert_eq!(problem.step, "delete_vms");
    assert!(
        problem.detail.contains("vm-2") && problem.detail.contains("deleting"),
        "{problem:?}"
    );
    assert!(!calls.lock().unwrap().iter().any(|c| c.contains("sg-made")));
    assert_eq!(
        observer.seen().ended,
        [(OperationKind::Delete, "failed_delete_vms".to_owned())]
    );
}

#[tokio::test(start_paused = true)]
async fn a_group_in_use_past_the_deadline_ends_the_deletion_failed() {
    let cluster = ClusterId::new_random();
    let mut d = deleting(cluster, Ok(()), usize::MAX);
    d.operations.expect_finish_deletion().never();
    let problem: Arc<Mutex<Option<OperationProblem>>> = Arc::default();
    let seen = Arc::clone(&problem);
    d.operations
        .expect_fail_operation()
        .times(1)
        .returning(move |_, p| {
            *seen.lock().unwrap() = Some(p.clone());
            Ok(())
        });
    let (use_case, _, _) = d.use_case();
    let started = tokio::time::Instant::now();

    use_case.run(&lease(), &org(), cluster).await;

    assert!(started.elapsed() >= DEADLINE, "{:?}", started.elapsed());
    let problem = problem.lock().unwrap().clone().unwrap();
    assert_eq!(problem.kind, "deletion-deadline");
    assert_eq!(problem.step, "delete_security_group");
}

/// A supervisor for `begin`: any founding it would run is not part of these tests.
fn supervisor() -> Foundings {
    let ports = FoundingPorts {
        repo: Arc::new(MockRepo::new()),
        operations: Arc::new(MockOperations::new()),
        compute: Arc::new(MockCompute::new()),
        pki: Arc::new(MockPki::new()),
        dns: None,
        observer: Arc::new(RecordingObserver::default()),
    };
    Foundings::new(
        FoundCluster::new(ports, founding_settings(), leasing()),
        idempotency_settings(),
    )
}

#[tokio::test]
async fn begin_refuses_what_cannot_be_deleted_and_answers_a_deletion_already_running() {
    let cluster = ClusterId::new_random();
    let running = operation_record("org-a", OperationState::Running, None);
    let for_begin = running.clone();
    let mut d = Doubles::new();
    let mut answers = vec![
        Ok(DeletionStart::AlreadyRunning(Box::new(for_begin))),
        Err(RepoError::Conflict("cluster is still being founded".into())),
        Err(RepoError::NotFound("no such cluster".into())),
    ];
    d.operations
        .expect_begin_deletion()
        .times(3)
        .returning(move |deletion| {
            assert_eq!(deletion.org, org());
            assert_eq!(deletion.cluster, cluster);
            assert_eq!(deletion.idempotency, None);
            answers.pop().unwrap()
        });
    let (use_case, _, _) = d.use_case();
    let foundings = supervisor();

    let begun = use_case.begin(&foundings, &org(), cluster, None).await;
    assert!(
        matches!(begun, Err(DeleteError::NotFound(id)) if id == cluster),
        "{begun:?}"
    );
    let begun = use_case.begin(&foundings, &org(), cluster, None).await;
    assert!(
        matches!(begun, Err(DeleteError::StillFounding(_))),
        "{begun:?}"
    );
    let begun = use_case.begin(&foundings, &org(), cluster, None).await;
    match begun {
        Ok(DeletionBegun::AlreadyRunning(op)) => assert_eq!(op.id, running.id),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        foundings.in_flight(),
        0,
        "no slot is kept by a deletion that did not start"
    );
}

#[tokio::test]
async fn a_known_key_answers_its_operation_or_refuses_another_request() {
    let cluster = ClusterId::new_random();
    let key = IdempotencyKey::parse("delete-once").unwrap();
    let route = format!("DELETE /clusters/{cluster}");
    let asked = Idempotency {
        key: key.clone(),
        fingerprint: RequestFingerprint::of(&route, b""),
    };
    let first = operation_record("org-a", OperationState::Succeeded, None);
    let (stored, fingerprint) = (first.clone(), asked.fingerprint.clone());
    let mut d = Doubles::new();
    d.operations
        .expect_idempotent_operation()
        .times(2)
        .returning(move |_, _| {
            Ok(Some(IdempotentOperation {
                fingerprint: fingerprint.clone(),
                operation: stored.clone(),
            }))
        });
    d.operations.expect_begin_deletion().never();
    let (use_case, _, _) = d.use_case();
    let foundings = supervisor();

    match use_case
        .begin(&foundings, &org(), cluster, Some(asked))
        .await
    {
        Ok(DeletionBegun::Replayed(op)) => assert_eq!(op.id, first.id),
        other => panic!("{other:?}"),
    }
    let other = Idempotency {
        key,
        fingerprint: RequestFingerprint::of("DELETE /clusters/another", b""),
    };
    let begun = use_case
        .begin(&foundings, &org(), cluster, Some(other))
        .await;
    assert!(matches!(begun, Err(DeleteError::KeyReused)), "{begun:?}");
}

#[tokio::test(start_paused = true)]
async fn a_started_deletion_runs_to_its_end_in_a_slot_of_the_supervisor() {
    let cluster = ClusterId::new_random();
    let mut d = deleting(cluster, Ok(()), 0);
    d.operations
        .expect_begin_deletion()
        .times(1)
        .returning(|deletion| {
            assert_eq!(
                deletion.lease_for,
                leasing().lease,
                "the lease is the replica's"
            );
            Ok(DeletionStart::Started)
        });
    d.operations
        .expect_finish_deletion()
        .times(1)
        .returning(|_| Ok(()));
    let (use_case, observer, _) = d.use_case();
    let foundings = supervisor();

    let begun = use_case.begin(&foundings, &org(), cluster, None).await;
    assert!(
        matches!(begun, Ok(DeletionBegun::Started { .. })),
        "{begun:?}"
    );
    assert_eq!(foundings.drain(Duration::from_secs(60)).await, 0);
    assert_eq!(
        observer.seen().ended,
        [(OperationKind::Delete, "succeeded".to_owned())]
    );
}
