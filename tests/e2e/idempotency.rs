//! Retry-safe and asynchronous foundings, and admin credentials on demand, against real `plinth
//! serve` processes, the compute service and PostgreSQL: a retried `POST /clusters` with its
//! `Idempotency-Key` is answered from the first one (a fresh kubeconfig that openssl and kubectl
//! accept, or the same problem), never founds a second cluster, and leaves nothing behind; a
//! client that prefers not to wait polls the operation; credentials expire to the second and no
//! private key reaches the logs or the database.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::fleet::{Fleet, FleetOptions, Replica, pki_file};
use crate::tls::{
    assert_kubectl_accepted, kubeconfig_parts, kubectl_through_s_server, verified_client,
};

const KEY: &str = "Idempotency-Key";

/// A fleet of one replica whose compute service follows `faults`.
async fn fleet_with(faults: Value) -> (Fleet, Replica) {
    let fleet = Fleet::start(FleetOptions::default()).await;
    let replica = fleet.spawn("replica");
    fleet.faults(faults).await;
    (fleet, replica)
}

async fn post(
    fleet: &Fleet,
    replica: &Replica,
    org: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    fleet
        .send(
            &replica.base,
            Method::POST,
            "/clusters",
            org,
            headers,
            Some(body),
        )
        .await
}

async fn get(fleet: &Fleet, replica: &Replica, org: &str, path: &str) -> (StatusCode, Value) {
    let (status, _, body) = fleet
        .send(&replica.base, Method::GET, path, org, &[], None)
        .await;
    (status, body)
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The answer without its kubeconfig: what a replay must repeat exactly.
fn without_kubeconfig(answer: &Value) -> Value {
    let mut answer = answer.clone();
    answer.as_object_mut().unwrap().remove("admin_kubeconfig");
    answer
}

/// A `KEY=value` line of a userdata shim.
pub fn shim_value(shim: &str, key: &str) -> String {
    shim.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in the shim"))
        .to_owned()
}

/// Node 1's apiserver certificate and key, fetched as the node does (its token from its
/// userdata at the compute service), written to `dir`.
async fn apiserver_identity(
    fleet: &Fleet,
    founded: &Value,
    label: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let shim = fleet
        .user_data(founded["nodes"][0]["vm_id"].as_str().unwrap())
        .await;
    let (_, bundle) = fleet
        .fetch_bundle(
            &shim_value(&shim, "PLINTH_BOOTSTRAP_URL"),
            &shim_value(&shim, "PLINTH_BOOTSTRAP_TOKEN"),
        )
        .await;
    let file = |path: &str| pki_file(&bundle, path);
    (
        fleet.scratch(&format!("{label}/apiserver.crt"), &file("apiserver.crt")),
        fleet.scratch(&format!("{label}/apiserver.key"), &file("apiserver.key")),
    )
}

/// kubectl, with `kubeconfig`, completes a mutual-TLS handshake against node 1's apiserver
/// certificate under the control plane's name.
async fn kubectl_accepts(fleet: &Fleet, founded: &Value, kubeconfig: &str, label: &str) {
    let (cert, key) = apiserver_identity(fleet, founded, label).await;
    let parts = kubeconfig_parts(kubeconfig);
    let name = founded["control_plane_dns_name"].as_str().unwrap();
    assert_eq!(parts.server, format!("https://{name}:6443"));
    let ca = fleet.scratch(&format!("{label}/ca.crt"), &parts.ca_pem);
    let conf = fleet.scratch(&format!("{label}/admin.conf"), kubeconfig);
    let ip = founded["nodes"][0]["ipv4"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let output = kubectl_through_s_server(
        cert.parent().unwrap(),
        &conf,
        founded["control_plane_dns_name"].as_str().unwrap(),
        ip,
        (&cert, &key, &ca),
    );
    assert_kubectl_accepted(&output);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_success_is_the_same_cluster_with_a_new_kubeconfig_that_kubectl_accepts() {
    let (fleet, replica) = fleet_with(json!({})).await;
    let headers = [(KEY, "deploy-2026-12-01/1")];
    let (status, first_headers, first) = post(
        &fleet,
        &replica,
        "org-a",
        &headers,
        r#"{"name":"retry","control_plane_count":3}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(header(&first_headers, "idempotent-replayed"), "");

    // The same request, its keys in another order and spaced out: the same request.
    let (status, replay_headers, replay) = post(
        &fleet,
        &replica,
        "org-a",
        &headers,
        "{ \"control_plane_count\" : 3,\n  \"name\" : \"retry\" }",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{replay}");
    assert_eq!(header(&replay_headers, "idempotent-replayed"), "true");
    assert_eq!(header(&replay_headers, "cache-control"), "no-store");
    assert_eq!(
        header(&replay_headers, "location"),
        header(&first_headers, "location")
    );
    assert_eq!(without_kubeconfig(&replay), without_kubeconfig(&first));
    let (first_conf, replay_conf) = (
        first["admin_kubeconfig"].as_str().unwrap(),
        replay["admin_kubeconfig"].as_str().unwrap(),
    );
    assert_ne!(first_conf, replay_conf, "a replay mints a new kubeconfig");

    // One founding, one cluster, three VMs: the replay made nothing.
    assert_eq!(fleet.count("SELECT id FROM operations").await, 1);
    assert_eq!(fleet.count("SELECT id FROM kubeclusters").await, 1);
    assert_eq!(fleet.count("SELECT id FROM vms").await, 3);

    // The new kubeconfig's certificate is another one, chains to the cluster CA, and kubectl
    // completes a handshake with it against node 1's apiserver certificate.
    let dir = fleet.scratch("certs/.keep", "");
    let dir = dir.parent().unwrap();
    let (_, _, first_serial) = verified_client(dir, "first", &kubeconfig_parts(first_conf));
    let (subject, _, replay_serial) =
        verified_client(dir, "replay", &kubeconfig_parts(replay_conf));
    assert_ne!(first_serial, replay_serial);
    assert!(subject.contains("O=system:masters"), "{subject}");
    kubectl_accepts(&fleet, &replay, replay_conf, "replay").await;
    fleet.settles(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_a_compute_failure_gets_the_same_problem_and_nothing_is_left() {
    let (fleet, replica) =
        fleet_with(json!({"create_vm": {"status": 500, "after_calls": 1}})).await;
    let headers = [(KEY, "fails-once")];
    let (status, _, problem) = post(&fleet, &replica, "org-a", &headers, "{}").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{problem}");
    assert_eq!(
        problem["type"],
        "https://plinth.dev/problems/compute-failed"
    );

    // The compute service works again; the retry still answers what the first request got.
    fleet.faults(json!({})).await;
    let (replay_status, replay_headers, replay) =
        post(&fleet, &replica, "org-a", &headers, "{}").await;
    assert_eq!(replay_status, status);
    assert_eq!(header(&replay_headers, "idempotent-replayed"), "true");
    assert_eq!(
        header(&replay_headers, "content-type"),
        "application/problem+json"
    );
    assert_eq!(replay, problem);
    assert_eq!(fleet.count("SELECT id FROM operations").await, 1);
    assert_eq!(fleet.count("SELECT id FROM kubeclusters").await, 0);
    fleet.settles(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_requests_with_one_key_at_once_make_one_founding() {
    let (fleet, replica) = fleet_with(json!({"create_vm": Fleet::hold(0, 1500)})).await;
    let headers = [(KEY, "pressed-enter-twice")];
    let body = r#"{"control_plane_count":1}"#;
    let (one, two) = tokio::join!(
        post(&fleet, &replica, "org-a", &headers, body),
        post(&fleet, &replica, "org-a", &headers, body)
    );
    let statuses: BTreeSet<u16> = [one.0.as_u16(), two.0.as_u16()].into();
    let created = [&one, &two]
        .into_iter()
        .filter(|a| a.0 == StatusCode::CREATED)
        .count();
    assert!(created >= 1, "{statuses:?}: {} / {}", one.2, two.2);
    for (status, headers, body) in [&one, &two] {
        match *status {
            StatusCode::CREATED => {}
            StatusCode::CONFLICT => {
                assert_eq!(
                    body["type"],
                    "https://plinth.dev/problems/idempotency-in-flight"
                );
                assert_eq!(header(headers, "retry-after"), "5");
            }
            other => panic!("{other}: {body}"),
        }
    }
    if created == 2 {
        assert_eq!(one.2["cluster_id"], two.2["cluster_id"]);
    }
    fleet
        .wait_for(
            "SELECT id FROM operations WHERE state = 'running'",
            0,
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(fleet.count("SELECT id FROM operations").await, 1);
    assert_eq!(fleet.count("SELECT id FROM kubeclusters").await, 1);
    assert_eq!(fleet.count("SELECT id FROM vms").await, 1);
    fleet.settles(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_belong_to_an_organization_are_checked_and_are_forgotten_after_retention() {
    let (fleet, replica) = fleet_with(json!({})).await;
    let headers = [(KEY, "shared-key")];
    let body = r#"{"control_plane_count":1}"#;
    let (status, _, a) = post(&fleet, &replica, "org-a", &headers, body).await;
    assert_eq!(status, StatusCode::CREATED, "{a}");
    // Another organization's identical key is its own: a second cluster.
    let (status, replayed, b) = post(&fleet, &replica, "org-b", &headers, body).await;
    assert_eq!(status, StatusCode::CREATED, "{b}");
    assert_eq!(header(&replayed, "idempotent-replayed"), "");
    assert_ne!(a["cluster_id"], b["cluster_id"]);

    // The key with another body.
    let (status, _, reused) = post(
        &fleet,
        &replica,
        "org-a",
        &headers,
        r#"{"control_plane_count":1,"name":"other"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reused}");
    assert_eq!(
        reused["type"],
        "https://plinth.dev/problems/idempotency-key-reused"
    );

    // Keys of the wrong shape.
    let long = "k".repeat(256);
    for bad in ["", "two words", long.as_str()] {
        let (status, _, refused) = post(&fleet, &replica, "org-a", &[(KEY, bad)], body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}: {refused}");
        assert_eq!(refused["errors"][0]["field"], KEY, "{refused}");
    }
    let (status, _, refused) = fleet
        .send(
            &replica.base,
            Method::POST,
            "/clusters",
            "org-a",
            &[(KEY, "caf\u{e9}")],
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert_eq!(fleet.count("SELECT id FROM operations").await, 2);

    // Past its retention the key is purged, and the same request founds anew.
    let mut conn = fleet.db.connect().await;
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query(
            "UPDATE client_idempotency_keys SET expires_at = now() - interval '1 second' \
             WHERE org_id = 'org-a'",
        ),
        &mut conn,
    )
    .await
    .unwrap();
    fleet
        .wait_for(
            "SELECT key FROM client_idempotency_keys WHERE org_id = 'org-a'",
            0,
            Duration::from_secs(10),
        )
        .await;
    let (status, replayed, again) = post(&fleet, &replica, "org-a", &headers, body).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(header(&replayed, "idempotent-replayed"), "");
    assert_ne!(again["cluster_id"], a["cluster_id"]);
    assert_eq!(fleet.count("SELECT id FROM kubeclusters").await, 3);
    fleet.settles(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_storm_of_50_requests_with_10_keys_founds_exactly_10_clusters() {
    let (fleet, replica) = fleet_with(json!({"create_vm": Fleet::hold(0, 300)})).await;
    let body = r#"{"control_plane_count":1}"#;
    let keys: Vec<String> = (0..10).map(|n| format!("storm-{n}")).collect();
    let answers: Vec<(String, StatusCode, Value)> = futures::stream::iter(0..50)
        .map(|n| {
            let (fleet, replica, key) = (&fleet, &replica, keys[n % 10].clone());
            async move {
                let (status, _, answer) =
                    post(fleet, replica, "org-a", &[(KEY, key.as_str())], body).await;
                (key, status, answer)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;

    // Every answer is the founding or "still running"; then each key's retry gets its cluster.
    let mut clusters: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (key, status, answer) in &answers {
        match *status {
            StatusCode::CREATED => {
                clusters
                    .entry(key.clone())
                    .or_default()
                    .insert(answer["cluster_id"].as_str().unwrap().to_owned());
            }
            StatusCode::CONFLICT => {
                assert_eq!(
                    answer["type"],
                    "https://plinth.dev/problems/idempotency-in-flight"
                );
            }
            other => panic!("{key}: {other} {answer}"),
        }
    }
    for key in &keys {
        let started = Instant::now();
        let answer = loop {
            let (status, _, answer) = post(&fleet, &replica, "org-a", &[(KEY, key)], body).await;
            if status == StatusCode::CREATED {
                break answer;
            }
            assert_eq!(status, StatusCode::CONFLICT, "{answer}");
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{key} never ended"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        clusters
            .entry(key.clone())
            .or_default()
            .insert(answer["cluster_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(clusters.len(), 10);
    for (key, ids) in &clusters {
        assert_eq!(ids.len(), 1, "{key} answered several clusters: {ids:?}");
    }
    assert_eq!(fleet.count("SELECT id FROM kubeclusters").await, 10);
    assert_eq!(fleet.count("SELECT id FROM operations").await, 10);
    assert_eq!(fleet.count("SELECT id FROM vms").await, 10);
    fleet.settles(Duration::from_secs(10)).await;
}

/// Polls an operation until it has ended; answers its last body.
async fn until_ended(fleet: &Fleet, replica: &Replica, location: &str) -> Value {
    let started = Instant::now();
    loop {
        let (status, operation) = get(fleet, replica, "org-a", location).await;
        assert_eq!(status, StatusCode::OK, "{operation}");
        if operation["state"] != "running" {
            return operation;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{operation}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_async_founding_is_polled_to_its_end_and_then_issues_credentials_that_work() {
    let (fleet, replica) = fleet_with(json!({"create_vm": Fleet::hold(0, 1000)})).await;
    let (status, headers, operation) = post(
        &fleet,
        &replica,
        "org-a",
        &[("Prefer", "respond-async")],
        r#"{"name":"later","control_plane_count":3}"#,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{operation}");
    assert_eq!(header(&headers, "preference-applied"), "respond-async");
    let location = header(&headers, "location").to_owned();
    assert_eq!(
        location,
        format!(
            "/operations/{}",
            operation["operation_id"].as_str().unwrap()
        )
    );
    assert_eq!(operation["kind"], "found");
    assert_eq!(operation["state"], "running");
    let cluster = operation["cluster_id"].as_str().unwrap().to_owned();
    let (status, provisioning) =
        get(&fleet, &replica, "org-a", &format!("/clusters/{cluster}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(provisioning["status"], "provisioning");
    // Credentials wait for a ready cluster; another organization sees no operation.
    let credentials = format!("/clusters/{cluster}/credentials");
    let (status, _, early) = fleet
        .send(
            &replica.base,
            Method::POST,
            &credentials,
            "org-a",
            &[],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{early}");
    assert_eq!(
        early["type"],
        "https://plinth.dev/problems/cluster-not-ready"
    );
    let (status, _) = get(&fleet, &replica, "org-b", &location).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let ended = until_ended(&fleet, &replica, &location).await;
    assert_eq!(ended["state"], "succeeded", "{ended}");
    assert!(ended["ended_at"].is_string(), "{ended}");
    let (_, ready) = get(&fleet, &replica, "org-a", &format!("/clusters/{cluster}")).await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["nodes"].as_array().unwrap().len(), 3);

    // Credentials for alice, for an hour: her name, system:masters, notAfter to the second.
    let response = fleet
        .client
        .post(format!("{}{credentials}", replica.base))
        .bearer_auth(fleet.token_as("org-a", "alice@example.com"))
        .json(&json!({"expiration_seconds": 3600}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(header(response.headers(), "cache-control"), "no-store");
    let issued: Value = response.json().await.unwrap();
    let kubeconfig = issued["kubeconfig"].as_str().unwrap();
    let expires_at = time::OffsetDateTime::parse(
        issued["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let left = expires_at - time::OffsetDateTime::now_utc();
    assert!(
        left > time::Duration::seconds(3590) && left <= time::Duration::seconds(3600),
        "{left}"
    );
    let dir = fleet.scratch("alice/.keep", "");
    let dir = dir.parent().unwrap();
    let (subject, not_after, serial) = verified_client(dir, "alice", &kubeconfig_parts(kubeconfig));
    assert_eq!(subject, "CN=alice@example.com,O=system:masters");
    let iso = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
        expires_at.year(),
        u8::from(expires_at.month()),
        expires_at.day(),
        expires_at.hour(),
        expires_at.minute(),
        expires_at.second()
    );
    assert_eq!(not_after, iso);
    kubectl_accepts(&fleet, &ready, kubeconfig, "alice").await;

    // The issue is an audit event naming who, what and which certificate.
    let logs = fleet.logs();
    let audit = logs
        .lines()
        .find(|l| l.contains("admin_credentials_issued"))
        .unwrap_or_else(|| panic!("no audit event in the logs"));
    assert!(
        audit.contains("alice@example.com") && audit.contains(&cluster),
        "{audit}"
    );
    assert!(
        audit.to_ascii_lowercase().contains(
            &serial
                .to_ascii_lowercase()
                .trim_start_matches('0')
                .to_owned()
        ),
        "{audit} does not name serial {serial}"
    );

    // Out of range.
    for secs in [599, 2_592_001] {
        let (status, _, refused) = fleet
            .send(
                &replica.base,
                Method::POST,
                &credentials,
                "org-a",
                &[],
                Some(&json!({"expiration_seconds": secs}).to_string()),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{secs}: {refused}");
        assert_eq!(refused["errors"][0]["field"], "expiration_seconds");
    }
    let (status, _, _) = fleet
        .send(
            &replica.base,
            Method::POST,
            &credentials,
            "org-b",
            &[],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // No private key in the logs or the database: neither the PEM armour nor the key just
    // issued (its base64 body, as a dump would show it).
    let key_body: String = kubeconfig_parts(kubeconfig)
        .client_key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(
        !logs.contains("PRIVATE KEY"),
        "a private key reached the logs"
    );
    assert!(
        !logs.contains(&key_body[..40]),
        "the issued key reached the logs"
    );
    let dump = plinth_testkit::run(
        "/usr/lib/postgresql/15/bin/pg_dump",
        &["--data-only", fleet.db.url()],
        Duration::from_secs(30),
    );
    assert!(
        dump.status.success(),
        "{}",
        plinth_testkit::output_text(&dump)
    );
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.contains("kubeclusters"),
        "the dump is not of plinth's database"
    );
    assert!(
        !dump.contains("PRIVATE KEY"),
        "a private key is stored in the clear"
    );
    assert!(!dump.contains(&key_body[..40]), "the issued key is stored");
    fleet.settles(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_async_founding_ends_failed_with_its_problem_and_nothing_left() {
    let (fleet, replica) =
        fleet_with(json!({"create_vm": {"status": 500, "after_calls": 1}})).await;
    let (status, headers, operation) = post(
        &fleet,
        &replica,
        "org-a",
        &[("Prefer", "respond-async")],
        r#"{"control_plane_count":3}"#,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{operation}");
    let ended = until_ended(&fleet, &replica, header(&headers, "location")).await;
    assert_eq!(ended["state"], "failed", "{ended}");
    assert_eq!(ended["problem"]["status"], 502, "{ended}");
    assert_eq!(
        ended["problem"]["type"],
        "https://plinth.dev/problems/compute-failed"
    );
    assert!(
        !ended["problem"]["cleanup"]["removed"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{ended}"
    );
    let cluster = operation["cluster_id"].as_str().unwrap();
    let (status, _) = get(&fleet, &replica, "org-a", &format!("/clusters/{cluster}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    fleet.settles(Duration::from_secs(10)).await;
}
