//! `Foundings`: foundings run as tasks of their own, at most `max_in_flight` at once, to their
//! end whatever becomes of the caller, and shutdown waits for them.
//!
//! Several foundings at once cannot share one `Sequence`, so most tests here run on lenient
//! doubles ([`lenient_use_case`]) that let any number of one-node foundings succeed, their VM
//! creations held behind a gate the test opens. The dropped-handle test runs one founding on the
//! full scenario doubles, so it proves the founding still took every step to its end.

use super::*;
use crate::found_cluster::{Foundings, SubmitError};
use crate::testing::Observed;

/// Lenient doubles for one-node foundings with a given group; `finished` counts the commits.
fn lenient_use_case(
    max_in_flight: usize,
    gate: watch::Receiver<bool>,
    observer: Arc<RecordingObserver>,
    finished: Arc<Mutex<usize>>,
) -> FoundCluster {
    let mut ops = MockOperations::new();
    ops.expect_begin_founding().returning(|_| Ok(()));
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
    compute.expect_create_vm().returning(|_| Ok(vm_id(1)));
    let mut compute = StagedCompute::new(compute);
    compute.gate = Some(gate);
    let mut repo = MockRepo::new();
    repo.expect_vm_identities()
        .returning(|_| Ok(vec![identity(1, true)]));
    let mut pki = MockPki::new();
    pki.expect_create_cluster_ca()
        .returning(|_| Ok(cluster_ca()));
    pki.expect_create_service_account_key()
        .returning(|| Ok(service_account()));
    pki.expect_sign_serving_cert()
        .returning(|_, r| Ok(certified(&r.common_name)));
    pki.expect_sign_client_cert()
        .returning(|_, r| Ok(certified(&r.common_name)));
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
}

fn lenient(max_in_flight: usize) -> Lenient {
    let (open, gate) = watch::channel(false);
    let observer = Arc::new(RecordingObserver::default());
    let finished = Arc::new(Mutex::new(0));
    let use_case = lenient_use_case(
        max_in_flight,
        gate,
        Arc::clone(&observer),
        Arc::clone(&finished),
    );
    Lenient {
        foundings: Foundings::new(use_case),
        open,
        observer,
        finished,
    }
}

#[tokio::test(start_paused = true)]
async fn at_most_max_in_flight_foundings_run_at_once_and_the_next_is_turned_away() {
    let l = lenient(2);
    let first = l.foundings.submit(org(), small_cluster()).unwrap();
    let second = l.foundings.submit(org(), small_cluster()).unwrap();
    assert_eq!(l.foundings.in_flight(), 2);
    assert!(matches!(
        l.foundings.submit(org(), small_cluster()),
        Err(SubmitError::Busy)
    ));

    l.open.send(true).unwrap();
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    assert_eq!(l.foundings.in_flight(), 0);
    // A slot that came back takes the next one.
    l.foundings
        .submit(org(), small_cluster())
        .unwrap()
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
    let foundings = Foundings::new(harness.use_case);

    drop(foundings.submit(org(), request(&s)).unwrap());
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
    let running = l.foundings.submit(org(), small_cluster()).unwrap();
    let started = Instant::now();
    let (left, ()) = tokio::join!(l.foundings.drain(Duration::from_secs(60)), async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(matches!(
            l.foundings.submit(org(), small_cluster()),
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
        l.foundings.submit(org(), small_cluster()),
        Err(SubmitError::ShuttingDown)
    ));
}

#[tokio::test(start_paused = true)]
async fn drain_gives_up_after_its_limit_and_counts_those_still_running() {
    let l = lenient(4);
    let _first = l.foundings.submit(org(), small_cluster()).unwrap();
    let _second = l.foundings.submit(org(), small_cluster()).unwrap();
    let started = Instant::now();
    assert_eq!(l.foundings.drain(Duration::from_secs(30)).await, 2);
    assert_eq!(started.elapsed(), Duration::from_secs(30));
    assert_eq!(*l.finished.lock().unwrap(), 0);
}
