//! What survives the world, against real processes: plinth replicas SIGKILLed at chosen points of
//! a founding (held there by the compute service's injected latency, a row lock, or a DNS server
//! that never answers), a client that hangs up, answers lost after the work was done, two
//! replicas on one database, a name claimed twice at once, and a slow compute service with a
//! small pool. Every test ends by counting, in the database and the compute service, that
//! nothing is half-founded and nothing is orphaned.

use std::time::{Duration, Instant};

use diesel_async::RunQueryDsl as _;
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;

use crate::fleet::{Fleet, FleetOptions};

/// How long recovery may take after a crash: the lease (2 s), a scan (1 s), and the rollback.
const RECOVERY: Duration = Duration::from_secs(20);

/// Starts a founding on `replica` without waiting for its answer.
fn found_in_background(
    fleet: &Fleet,
    base: &str,
    body: serde_json::Value,
) -> tokio::task::JoinHandle<Option<StatusCode>> {
    let request = fleet
        .client
        .post(format!("{base}/clusters"))
        .bearer_auth(fleet.token("org-a"))
        .json(&body);
    tokio::spawn(async move { request.send().await.ok().map(|r| r.status()) })
}

/// Kills a replica holding a founding at a point `reached` shows, starts another, and checks the
/// founding ends with nothing left.
async fn kill_at(rules: serde_json::Value, reached: &str, options: FleetOptions) -> Fleet {
    let fleet = Fleet::start(options).await;
    fleet.faults(rules).await;
    let mut first = fleet.spawn("first");
    let _pending = found_in_background(&fleet, &first.base, json!({"name": "doomed"}));
    fleet.wait_for(reached, 1, Duration::from_secs(20)).await;
    first.kill();
    fleet.faults(json!({})).await;
    let _second = fleet.spawn("second");
    fleet.settles(RECOVERY).await;
    fleet
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_after_its_security_group_a_founding_is_rolled_back_by_the_next_replica() {
    // The group exists; its rules are held.
    let fleet = kill_at(
        json!({"add_rule": Fleet::hold(0, 60_000)}),
        "SELECT id FROM security_groups",
        FleetOptions::default(),
    )
    .await;
    assert_eq!(fleet.count("SELECT id FROM security_groups").await, 0);
    assert_eq!(
        fleet
            .count("SELECT id FROM operations WHERE state = 'failed' AND problem->>'kind' = 'interrupted'")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_after_vm_2_of_3_a_founding_is_rolled_back_by_the_next_replica() {
    let fleet = kill_at(
        json!({"create_vm": Fleet::hold(2, 60_000)}),
        "SELECT 1 FROM vms HAVING count(*) = 2",
        FleetOptions::default(),
    )
    .await;
    assert_eq!(fleet.count("SELECT id FROM vms").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_inside_its_last_transaction_a_founding_is_rolled_back() {
    // Another session holds etcdnodes: the last transaction, the only writer of that table,
    // waits on its first insert, with the operation's row locked.
    let options = FleetOptions {
        lock_timeout_secs: 120,
        ..FleetOptions::default()
    };
    let fleet = Fleet::start(options).await;
    let mut first = fleet.spawn("first");
    let mut blocker = fleet.db.connect().await;
    diesel::sql_query("BEGIN")
        .execute(&mut blocker)
        .await
        .unwrap();
    diesel::sql_query("LOCK TABLE etcdnodes IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let _pending = found_in_background(&fleet, &first.base, json!({"name": "held"}));
    fleet
        .wait_for(
            "SELECT pid FROM pg_locks WHERE NOT granted AND relation = 'etcdnodes'::regclass",
            1,
            Duration::from_secs(20),
        )
        .await;
    first.kill();
    diesel::sql_query("COMMIT")
        .execute(&mut blocker)
        .await
        .unwrap();
    let _second = fleet.spawn("second");
    fleet.settles(RECOVERY).await;
    assert_eq!(fleet.count("SELECT id FROM kubeclusters").await, 0);
    assert_eq!(fleet.count("SELECT id FROM vms").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_just_after_its_last_transaction_a_cluster_stays_founded() {
    // DNS never answers: the founding holds at step 10, after its commit.
    let options = FleetOptions {
        dns_hangs: true,
        ..FleetOptions::default()
    };
    let fleet = Fleet::start(options).await;
    let mut first = fleet.spawn("first");
    let _pending = found_in_background(&fleet, &first.base, json!({"name": "kept"}));
    fleet
        .wait_for(
            "SELECT id FROM kubeclusters WHERE status = 'ready'",
            1,
            Duration::from_secs(20),
        )
        .await;
    first.kill();
    let _second = fleet.spawn("second");
    fleet.settles(RECOVERY).await;
    assert_eq!(
        fleet
            .count("SELECT id FROM operations WHERE state = 'succeeded'")
            .await,
        1
    );
    assert_eq!(fleet.count("SELECT id FROM vms").await, 3);
    assert_eq!(fleet.count("SELECT cluster_id FROM etcdnodes").await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_hangs_up_does_not_stop_its_founding() {
    let fleet = Fleet::start(FleetOptions::default()).await;
    fleet
        .faults(json!({"create_vm": Fleet::hold(0, 1_500)}))
        .await;
    let replica = fleet.spawn("only");
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let hung_up = impatient
        .post(format!("{}/clusters", replica.base))
        .bearer_auth(fleet.token("org-a"))
        .json(&json!({"name": "orphan-request"}))
        .send()
        .await;
    assert!(hung_up.is_err(), "the client gave up before the answer");
    fleet
        .wait_for(
            "SELECT id FROM kubeclusters WHERE status = 'ready' AND name = 'orphan-request'",
            1,
            Duration::from_secs(20),
        )
        .await;
    fleet.settles(RECOVERY).await;
    assert_eq!(fleet.count("SELECT id FROM vms").await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn vm_answers_lost_after_the_work_was_done_leave_no_vm() {
    let fleet = Fleet::start(FleetOptions::default()).await;
    fleet
        .faults(json!({"create_vm": {"status": 503, "after_effect": true}}))
        .await;
    let replica = fleet.spawn("only");
    let (status, problem) = fleet.found(&replica, "org-a", json!({})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{problem}");
    assert!(fleet.compute_calls("create_vm").await >= 3);
    fleet.faults(json!({})).await;
    fleet.settles(RECOVERY).await;
    assert_eq!(fleet.count("SELECT id FROM vms").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_security_group_answer_lost_after_the_work_was_done_leaves_no_group() {
    let fleet = Fleet::start(FleetOptions::default()).await;
    fleet
        .faults(json!({"create_security_group": {"status": 503, "after_effect": true}}))
        .await;
    let replica = fleet.spawn("only");
    let (status, problem) = fleet.found(&replica, "org-a", json!({})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{problem}");
    assert!(fleet.compute_calls("create_security_group").await >= 1);
    fleet.faults(json!({})).await;
    fleet.settles(RECOVERY).await;
    assert_eq!(fleet.count("SELECT id FROM security_groups").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_name_twice_at_once_is_one_cluster_and_a_quick_409() {
    let fleet = Fleet::start(FleetOptions::default()).await;
    // Every operation counted; VM creation slow, so the first founding is still running when
    // the second one asks for the name.
    fleet
        .faults(json!({
            "get_subnet": Fleet::hold(0, 0),
            "create_security_group": Fleet::hold(0, 0),
            "create_vm": Fleet::hold(0, 2_000),
        }))
        .await;
    let replica = fleet.spawn("only");
    let first = found_in_background(&fleet, &replica.base, json!({"name": "twin"}));
    fleet
        .wait_for(
            "SELECT id FROM kubeclusters WHERE name = 'twin'",
            1,
            Duration::from_secs(10),
        )
        .await;
    let started = Instant::now();
    let (status, problem) = fleet
        .found(&replica, "org-a", json!({"name": "twin"}))
        .await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["type"], "https://plinth.dev/problems/name-taken");
    assert!(took < Duration::from_secs(1), "the 409 took {took:?}");
    assert_eq!(first.await.unwrap(), Some(StatusCode::CREATED));
    // Only the winner changed anything at the compute service; each founding read the subnet
    // once, to check its organization may use it before claiming the name.
    assert_eq!(fleet.compute_calls("get_subnet").await, 2);
    assert_eq!(fleet.compute_calls("create_security_group").await, 1);
    assert_eq!(fleet.compute_calls("create_vm").await, 3);
    fleet.settles(RECOVERY).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_foundings_do_not_pin_the_pool() {
    let options = FleetOptions {
        max_connections: 8,
        // All 24 of one organization run at once.
        max_foundings_in_flight_per_org: 24,
        max_clusters_per_org: 24,
        ..FleetOptions::default()
    };
    let fleet = Fleet::start(options).await;
    fleet
        .faults(json!({"create_vm": Fleet::hold(0, 4_000)}))
        .await;
    let replica = fleet.spawn("only");
    let token = fleet.token("org-a");
    let foundings: Vec<_> = (0..24)
        .map(|_| found_in_background(&fleet, &replica.base, json!({"control_plane_count": 1})))
        .collect();
    let get = |path: &str| {
        fleet
            .client
            .get(format!("{}{path}", replica.base))
            .bearer_auth(&token)
            .send()
    };
    // Readiness holds throughout, while the foundings make their keys and while they wait.
    let mut latencies = Vec::new();
    let since = Instant::now();
    loop {
        assert_eq!(get("/readyz").await.unwrap().status(), StatusCode::OK);
        let waiting = fleet
            .count("SELECT id FROM operations WHERE state = 'running' AND step = 'create_vms'")
            .await;
        if waiting == 24 {
            break;
        }
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "only {waiting} of 24 foundings reached create_vms within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // All 24 now wait on the compute service: reads must not wait for them.
    let watching = Instant::now();
    while watching.elapsed() < Duration::from_millis(2_000) {
        let started = Instant::now();
        let listed = get("/clusters").await.unwrap();
        latencies.push(started.elapsed());
        assert_eq!(listed.status(), StatusCode::OK);
        assert_eq!(get("/readyz").await.unwrap().status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    latencies.sort();
    assert!(
        latencies.len() >= 20,
        "only {} reads: {latencies:?}",
        latencies.len()
    );
    let p99 = latencies[latencies.len() * 99 / 100];
    assert!(
        p99 < Duration::from_millis(200),
        "GET /clusters p99 {p99:?}: {latencies:?}"
    );
    for founding in join_all(foundings).await {
        assert_eq!(founding.unwrap(), Some(StatusCode::CREATED));
    }
    fleet.settles(RECOVERY).await;
    assert_eq!(
        fleet
            .count("SELECT id FROM kubeclusters WHERE status = 'ready'")
            .await,
        24
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_share_the_work_and_one_recovers_what_the_other_left() {
    let fleet = Fleet::start(FleetOptions::default()).await;
    let mut doomed = fleet.spawn("doomed");
    let survivor = fleet.spawn("survivor");
    // Foundings on both, quick ones first.
    for i in 0..4 {
        let base = if i % 2 == 0 {
            &doomed.base
        } else {
            &survivor.base
        };
        let (status, problem) = fleet
            .found_on(
                base,
                json!({"name": format!("quick-{i}"), "control_plane_count": 1}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{problem}");
    }
    // Then slow ones on both, and the doomed replica dies in the middle of its own.
    fleet
        .faults(json!({"create_vm": Fleet::hold(0, 3_000)}))
        .await;
    let survivors: Vec<_> = (0..2)
        .map(|_| found_in_background(&fleet, &survivor.base, json!({})))
        .collect();
    let _lost: Vec<_> = (0..2)
        .map(|_| found_in_background(&fleet, &doomed.base, json!({})))
        .collect();
    fleet
        .wait_for(
            "SELECT id FROM operations WHERE state = 'running'",
            4,
            Duration::from_secs(10),
        )
        .await;
    doomed.kill();
    for founding in join_all(survivors).await {
        assert_eq!(founding.unwrap(), Some(StatusCode::CREATED));
    }
    fleet.settles(RECOVERY).await;
    // 4 quick + 2 slow survived; the doomed replica's 2 were rolled back by the survivor.
    assert_eq!(
        fleet
            .count("SELECT id FROM kubeclusters WHERE status = 'ready'")
            .await,
        6
    );
    assert_eq!(
        fleet
            .count("SELECT id FROM operations WHERE state = 'failed' AND problem->>'kind' = 'interrupted'")
            .await,
        2
    );
    assert_eq!(
        fleet
            .count("SELECT DISTINCT owner FROM operations WHERE state = 'succeeded'")
            .await,
        2,
        "both replicas founded clusters"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_founding_in_progress_is_listed_as_provisioning_without_nodes() {
    let fleet = Fleet::start(FleetOptions::default()).await;
    fleet
        .faults(json!({"create_vm": Fleet::hold(0, 2_000)}))
        .await;
    let replica = fleet.spawn("only");
    let founding = found_in_background(&fleet, &replica.base, json!({"name": "soon"}));
    fleet
        .wait_for(
            "SELECT id FROM operations WHERE step = 'create_vms'",
            1,
            Duration::from_secs(10),
        )
        .await;
    let token = fleet.token("org-a");
    let read = |path: String| {
        let request = fleet.client.get(path).bearer_auth(&token);
        async move {
            request
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let page = read(format!("{}/clusters", replica.base)).await;
    assert_eq!(page["clusters"][0]["status"], "provisioning", "{page}");
    let id = page["clusters"][0]["cluster_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cluster = read(format!("{}/clusters/{id}", replica.base)).await;
    assert_eq!(cluster["status"], "provisioning", "{cluster}");
    assert_eq!(cluster["nodes"], json!([]));
    assert_eq!(founding.await.unwrap(), Some(StatusCode::CREATED));
    let cluster = read(format!("{}/clusters/{id}", replica.base)).await;
    assert_eq!(cluster["status"], "ready", "{cluster}");
    assert_eq!(cluster["nodes"].as_array().unwrap().len(), 3);
    assert!(
        cluster["ca_cert"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
}
