//! `Foundings`: foundings run as tasks of their own, at most `max_in_flight` at once, to their
//! end whatever becomes of the caller, and shutdown waits for them.
//!
//! Several foundings at once cannot share one `Sequence`, so most tests here run on lenient
//! doubles ([`lenient_use_case`]) that let any number of one-node foundings succeed, their VM
//! creations held behind a gate the test opens. The dropped-handle test runs one founding on the
//! full scenario doubles, so it proves the founding still took every step to its end.

use super::*;
use crate::found_cluster::{
    Foundings, IdempotencySettings, Replay, ReplayError, SubmitError, Submitted,
};
use crate::model::{ClusterStatus, Idempotency, IdempotencyKey, NodeAddresses, RequestFingerprint};
use crate::ports::operations::{IdempotencyClaim, IdempotentOperation};
use crate::ports::repo::ClusterDetails;
use crate::testing::Observed;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

const RETENTION: Duration = Duration::from_secs(24 * 3600);

fn foundings(use_case: FoundCluster) -> Foundings {
    Foundings::new(
        use_case,
        IdempotencySettings {
            retention: RETENTION,
        },
    )
}

type Outcome = tokio::task::JoinHandle<Result<FoundedCluster, FoundClusterError>>;

/// Submits a founding without a key; it must start.
async fn start(foundings: &Foundings, spec: ClusterSpec) -> Outcome {
    match foundings.submit(org(), spec, None).await {
        Ok(Submitted::Started(started)) => started.outcome,
        other => panic!("the founding did not start: {other:?}"),
    }
}

/// Lenient doubles for one-node foundings with a given group; `finished` counts the commits,
/// `begun` keeps the last founding begun. `customize` sets expectations of its own first (they
/// are matched before the lenient ones).
fn lenient_use_case(
    max_in_flight: usize,
    gate: watch::Receiver<bool>,
    observer: Arc<RecordingObserver>,
    finished: Arc<Mutex<usize>>,
    begun: Arc<Mutex<Option<NewFounding>>>,
    customize: impl FnOnce(&mut MockOperations),
) -> FoundCluster {
    let mut ops = MockOperations::new();
    customize(&mut ops);
    ops.expect_begin_founding().returning(move |founding| {
        *begun.lock().unwrap() = Some(founding.clone());
        Ok(())
    });
    ops.expect_renew_lease().returning(|_, _, _| Ok(()));
    ops.expect_store_trust_root().returning(|_, _, _, _| Ok(()));
    ops.expect_record_intents().returning(|_, _| Ok(()));
    ops.expect_record_created().returning(|_, _, _| Ok(()));
    ops.expect_record_security_groups()
        .returning(|_, _, _| Ok(()));
    ops.expect_finish_founding().returning(move |_, _| {
        *finished.lock().unwrap() += 1;
        Ok(())
    });
    let mut compute = MockCompute::new();
    compute.expect_subnet().returning(|id| {
        Ok(Subnet {
            id: id.clone(),
            ipv4_cidr: "127.10.0.0/24".parse().unwrap(),
            ipv6_cidr: None,
            owner: ResourceOwner::Shared,
        })
    });
    compute.expect_security_group().returning(|id| {
        Ok(SecurityGroup {
            id: id.clone(),
            owner: ResourceOwner::Org(org()),
        })
    });
    compute.expect_create_vm().returning(|_| Ok(vm_id(1)));
    let mut compute = StagedCompute::new(compute);
    compute.gate = Some(gate);
    let mut repo = MockRepo::new();
    repo.expect_vm_identities()
        .returning(|_| Ok(vec![identity(1, true)]));
    repo.expect_record_dns_outcome().returning(|_, _| Ok(()));
    let mut pki = MockPki::new();
    pki.expect_create_cluster_ca()
        .returning(|_| Ok(cluster_ca()));
    pki.expect_create_service_account_key()
        .returning(|| Ok(service_account()));
    pki.expect_sign_serving_cert()
        .returning(|_, r| Ok(certified(&r.common_name)));
    pki.expect_sign_client_cert()
        .returning(|_, r| Ok(certified(&r.common_name)));
    pki.expect_certificate_facts()
        .returning(crate::testing::certificate_facts);
    let ports = FoundingPorts {
        repo: Arc::new(repo),
        operations: Arc::new(ops),
        compute: Arc::new(compute),
        pki: Arc::new(pki),
        dns: None,
        observer,
    };
    let settings = FoundingSettings {
        max_in_flight,
        ..founding_settings()
    };
    FoundCluster::new(ports, settings, leasing())
}

fn small_cluster() -> ClusterSpec {
    request(&Scenario {
        count: 1,
        given_groups: Some(&["sg-a"]),
        ..Scenario::default()
    })
}

/// The lenient doubles behind a closed gate, with what they report.
struct Lenient {
    foundings: Foundings,
    open: watch::Sender<bool>,
    observer: Arc<RecordingObserver>,
    finished: Arc<Mutex<usize>>,
    begun: Arc<Mutex<Option<NewFounding>>>,
}

fn lenient(max_in_flight: usize) -> Lenient {
    lenient_doubles(max_in_flight, |_| {})
}

/// Lenient doubles for four foundings at once, with expectations of `customize`'s first.
fn lenient_with(customize: impl FnOnce(&mut MockOperations)) -> Lenient {
    lenient_doubles(4, customize)
}

fn lenient_doubles(max_in_flight: usize, customize: impl FnOnce(&mut MockOperations)) -> Lenient {
    let (open, gate) = watch::channel(false);
    let observer = Arc::new(RecordingObserver::default());
    let finished = Arc::new(Mutex::new(0));
    let begun = Arc::new(Mutex::new(None));
    let use_case = lenient_use_case(
        max_in_flight,
        gate,
        Arc::clone(&observer),
        Arc::clone(&finished),
        Arc::clone(&begun),
        customize,
    );
    Lenient {
        foundings: foundings(use_case),
        open,
        observer,
        finished,
        begun,
    }
}

#[tokio::test(start_paused = true)]
async fn at_most_max_in_flight_foundings_run_at_once_and_the_next_is_turned_away() {
    let l = lenient(2);
    let first = start(&l.foundings, small_cluster()).await;
    let second = start(&l.foundings, small_cluster()).await;
    assert_eq!(l.foundings.in_flight(), 2);
    assert!(matches!(
        l.foundings.submit(org(), small_cluster(), None).await,
        Err(SubmitError::Busy)
    ));

    l.open.send(true).unwrap();
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    assert_eq!(l.foundings.in_flight(), 0);
    // A slot that came back takes the next one.
    start(&l.foundings, small_cluster())
        .await
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*l.finished.lock().unwrap(), 3);

    let Observed {
        in_flight, ended, ..
    } = l.observer.seen();
    assert_eq!(in_flight[..2], [1, 2], "{in_flight:?}");
    assert!(in_flight.iter().all(|n| *n <= 2), "{in_flight:?}");
    assert_eq!(in_flight.last(), Some(&0), "{in_flight:?}");
    assert_eq!(ended.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_founding_whose_handle_is_dropped_still_runs_to_its_commit() {
    // The full scenario doubles: every step in order, checked when the last `Foundings` drops.
    let s = Scenario::default();
    let (open, gate) = watch::channel(false);
    let harness = mocks(&s).harness(&s, |compute| compute.gate = Some(gate));
    let captured = Arc::clone(&harness.captured);
    let observer = Arc::clone(&harness.observer);
    let foundings = foundings(harness.use_case);

    drop(start(&foundings, request(&s)).await);
    // The founding is held at its VM creations, its caller gone.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(foundings.in_flight(), 1);
    assert!(captured.lock().unwrap().rows.is_none());

    open.send(true).unwrap();
    assert_eq!(foundings.drain(Duration::from_secs(60)).await, 0);
    let seen = captured.lock().unwrap();
    assert_eq!(seen.rows.as_ref().map(|r| r.etcd.len()), Some(3));
    assert!(seen.dns_records.is_some());
    drop(seen);
    assert_eq!(
        observer.seen().ended,
        [(OperationKind::Found, "succeeded".to_owned())]
    );
    drop(foundings); // the last reference to the doubles: checks their call counts
}

#[tokio::test(start_paused = true)]
async fn drain_refuses_new_foundings_and_waits_for_those_in_flight() {
    let l = lenient(4);
    let running = start(&l.foundings, small_cluster()).await;
    let started = Instant::now();
    let (left, ()) = tokio::join!(l.foundings.drain(Duration::from_secs(60)), async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(matches!(
            l.foundings.submit(org(), small_cluster(), None).await,
            Err(SubmitError::ShuttingDown)
        ));
        assert_eq!(*l.finished.lock().unwrap(), 0, "still held at the gate");
        l.open.send(true).unwrap();
    });
    assert_eq!(left, 0);
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(5),
        "drained once it ended"
    );
    assert_eq!(*l.finished.lock().unwrap(), 1);
    running.await.unwrap().unwrap();
    assert!(matches!(
        l.foundings.submit(org(), small_cluster(), None).await,
        Err(SubmitError::ShuttingDown)
    ));
}

#[tokio::test(start_paused = true)]
async fn drain_gives_up_after_its_limit_and_counts_those_still_running() {
    let l = lenient(4);
    let _first = start(&l.foundings, small_cluster()).await;
    let _second = start(&l.foundings, small_cluster()).await;
    let started = Instant::now();
    assert_eq!(l.foundings.drain(Duration::from_secs(30)).await, 2);
    assert_eq!(started.elapsed(), Duration::from_secs(30));
    assert_eq!(*l.finished.lock().unwrap(), 0);
}

// ---- idempotency --------------------------------------------------------------------------------

fn idempotency(body: &[u8]) -> Idempotency {
    Idempotency {
        key: IdempotencyKey::parse("retry-7f3a").unwrap(),
        fingerprint: RequestFingerprint::of("POST /clusters", body),
    }
}

/// A founding of org-1 that began with the request's key, in `state`.
fn first_founding(state: OperationState, problem: Option<OperationProblem>) -> OperationRecord {
    crate::testing::operation_record(org().as_str(), state, problem)
}

/// Doubles for a request whose key is known: the lookup answers `first`, nothing may begin.
fn replaying(
    first: &OperationRecord,
    fingerprint: &RequestFingerprint,
    repo: MockRepo,
    pki: MockPki,
) -> Foundings {
    let mut ops = MockOperations::new();
    let (found, fingerprint) = (first.clone(), fingerprint.clone());
    ops.expect_idempotent_operation()
        .withf(|o, k| *o == org() && k.as_str() == "retry-7f3a")
        .times(1)
        .returning(move |_, _| {
            Ok(Some(IdempotentOperation {
                fingerprint: fingerprint.clone(),
                operation: found.clone(),
            }))
        });
    ops.expect_begin_founding().never();
    let ports = FoundingPorts {
        repo: Arc::new(repo),
        operations: Arc::new(ops),
        compute: Arc::new(MockCompute::new()),
        pki: Arc::new(pki),
        dns: None,
        observer: Arc::new(RecordingObserver::default()),
    };
    foundings(FoundCluster::new(ports, founding_settings(), leasing()))
}

fn founded_details(first: &OperationRecord, dns: Option<DnsOutcome>) -> ClusterDetails {
    let placement = NodePlacement {
        ordinal: NodeOrdinal::new(1).unwrap(),
        name: NodeName::new(first.cluster_id, NodeOrdinal::new(1).unwrap()),
        vm_id: vm_id(1),
        addresses: NodeAddresses {
            ipv4: Ipv4Addr::new(127, 10, 0, 11),
            ipv6: None,
            public_ipv4: Some(Ipv4Addr::new(127, 20, 0, 1)),
        },
    };
    ClusterDetails {
        nodes: vec![placement],
        dns,
        ..crate::testing::cluster_details(org().as_str(), first.cluster_id, ClusterStatus::Ready)
    }
}

#[tokio::test]
async fn a_retry_of_a_founding_that_succeeded_is_answered_from_the_rows_with_a_new_kubeconfig() {
    let first = first_founding(OperationState::Succeeded, None);
    let asked = idempotency(b"{}");
    let details = founded_details(
        &first,
        Some(DnsOutcome {
            configured: false,
            error: Some("PowerDNS answered 503".to_owned()),
        }),
    );
    let cluster = first.cluster_id;
    let mut repo = MockRepo::new();
    let found = details.clone();
    repo.expect_find_cluster()
        .withf(move |o, id| *o == org() && *id == cluster)
        .times(1)
        .returning(move |_, _| Ok(Some(found.clone())));
    repo.expect_cluster_root_ca()
        .withf(move |o, id| *o == org() && *id == cluster)
        .times(1)
        .returning(|_, _| Ok(Some(certified("ca"))));
    let mut pki = MockPki::new();
    let asked_at = OffsetDateTime::now_utc();
    pki.expect_sign_client_cert()
        .withf(move |issuer, r| {
            let day = (asked_at + time::Duration::days(1))
                .replace_nanosecond(0)
                .unwrap();
            issuer == &certified("ca")
                && r.common_name == "kubernetes-admin"
                && r.organizations == ["system:masters"]
                && r.not_after
                    .is_some_and(|t| (t - day).abs() <= time::Duration::seconds(2))
        })
        .times(1)
        .returning(|_, _| Ok(certified("a new admin")));
    let foundings = replaying(&first, &asked.fingerprint, repo, pki);

    let answer = foundings.submit(org(), small_cluster(), Some(asked)).await;

    let Ok(Submitted::Replayed(Replay::Founded(founded))) = answer else {
        panic!("not a replay of the founding: {answer:?}");
    };
    assert_eq!(founded.cluster_id, cluster);
    assert_eq!(founded.operation_id, first.id);
    assert_eq!(founded.vm_ids, [vm_id(1)]);
    assert_eq!(founded.nodes, details.nodes);
    assert_eq!(founded.name, details.summary.name);
    assert_eq!(
        founded.control_plane_dns_name,
        details.summary.control_plane_dns_name
    );
    assert_eq!(
        founded.ingress_wildcard_dns_name,
        details.ingress_wildcard_dns_name
    );
    assert_eq!(founded.suggested_dns_records[0].values, ["127.20.0.1"]);
    assert!(!founded.dns_configured);
    assert_eq!(founded.dns_error.as_deref(), Some("PowerDNS answered 503"));
    let kubeconfig = founded.admin_kubeconfig.expose();
    assert!(
        kubeconfig.contains(&STANDARD.encode("cert of a new admin")),
        "{kubeconfig}"
    );
    assert_eq!(foundings.in_flight(), 0, "a replay takes no slot");
}

#[tokio::test]
async fn a_retry_of_a_founding_that_failed_or_still_runs_answers_so() {
    let problem = OperationProblem {
        kind: "compute-refused".to_owned(),
        step: "create_vms".to_owned(),
        detail: "flavor m9.huge is unknown".to_owned(),
        removed: vec!["security group sg-1".to_owned()],
        left_behind: vec![],
    };
    let failed = first_founding(OperationState::Failed, Some(problem.clone()));
    let asked = idempotency(b"{}");
    let foundings = replaying(&failed, &asked.fingerprint, MockRepo::new(), MockPki::new());
    match foundings
        .submit(org(), small_cluster(), Some(asked.clone()))
        .await
    {
        Ok(Submitted::Replayed(Replay::Failed(answered))) => assert_eq!(answered, problem),
        other => panic!("not the stored problem: {other:?}"),
    }

    let running = first_founding(OperationState::Running, None);
    let foundings = replaying(
        &running,
        &asked.fingerprint,
        MockRepo::new(),
        MockPki::new(),
    );
    match foundings.submit(org(), small_cluster(), Some(asked)).await {
        Ok(Submitted::Replayed(Replay::InFlight(op))) => assert_eq!(op.id, running.id),
        other => panic!("not in flight: {other:?}"),
    }
}

#[tokio::test]
async fn a_key_first_used_with_another_request_is_refused_and_starts_nothing() {
    let first = first_founding(OperationState::Succeeded, None);
    let other_request = idempotency(b"{\"control_plane_count\":5}").fingerprint;
    let foundings = replaying(&first, &other_request, MockRepo::new(), MockPki::new());
    let answer = foundings
        .submit(org(), small_cluster(), Some(idempotency(b"{}")))
        .await;
    assert!(
        matches!(answer, Err(SubmitError::Replay(ReplayError::KeyReused))),
        "{answer:?}"
    );
}

#[tokio::test]
async fn a_new_key_is_kept_with_the_founding_for_the_retention_period() {
    let l = lenient_with(|ops| {
        ops.expect_idempotent_operation()
            .times(1)
            .returning(|_, _| Ok(None));
    });
    let asked = idempotency(b"{}");
    let Ok(Submitted::Started(started)) = l
        .foundings
        .submit(org(), small_cluster(), Some(asked.clone()))
        .await
    else {
        panic!("the founding did not start");
    };
    l.open.send(true).unwrap();
    started.outcome.await.unwrap().unwrap();
    let begun = l.begun.lock().unwrap().take().unwrap();
    assert_eq!(begun.lease.operation, started.operation);
    assert_eq!(begun.cluster.id, started.cluster);
    assert_eq!(
        begun.idempotency,
        Some(IdempotencyClaim {
            idempotency: asked,
            retain_for: RETENTION,
        })
    );
}

#[tokio::test]
async fn a_key_taken_by_a_founding_that_began_at_the_same_moment_is_answered_from_it() {
    let running = first_founding(OperationState::Running, None);
    let asked = idempotency(b"{}");
    let (found, fingerprint) = (running.clone(), asked.fingerprint.clone());
    let mut lookups = 0;
    let l = lenient_with(move |ops| {
        // Unknown at first; known once the other request's founding has begun.
        ops.expect_idempotent_operation()
            .times(2)
            .returning(move |_, _| {
                lookups += 1;
                Ok((lookups == 2).then(|| IdempotentOperation {
                    fingerprint: fingerprint.clone(),
                    operation: found.clone(),
                }))
            });
        ops.expect_begin_founding()
            .times(1)
            .returning(|_| Err(RepoError::IdempotencyKeyTaken));
    });
    let answer = l
        .foundings
        .submit(org(), small_cluster(), Some(asked))
        .await;
    match answer {
        Ok(Submitted::Replayed(Replay::InFlight(op))) => assert_eq!(op.id, running.id),
        other => panic!("not answered from the other founding: {other:?}"),
    }
    assert_eq!(l.foundings.in_flight(), 0, "the slot came back");
    assert!(
        l.observer.seen().ended.is_empty(),
        "no founding of its own ended"
    );
}

#[tokio::test]
async fn a_name_that_is_taken_is_a_claim_error_and_frees_the_slot() {
    let l = lenient_with(|ops| {
        ops.expect_begin_founding()
            .times(1)
            .returning(|_| Err(RepoError::Conflict("name prod is taken".into())));
    });
    let answer = l.foundings.submit(org(), small_cluster(), None).await;
    match answer {
        Err(SubmitError::Claim(e)) => {
            assert_eq!(e.step(), FoundingStep::ClaimName);
            assert_eq!(e.problem().kind, "name-taken");
        }
        other => panic!("not a claim error: {other:?}"),
    }
    assert_eq!(l.foundings.in_flight(), 0);
    assert_eq!(
        l.observer.seen().ended,
        [(OperationKind::Found, "failed_claim_name".to_owned())]
    );
}
