//! Security boundaries against real services: a bootstrap route that gives nothing away to
//! someone guessing tokens (no key opened, one query at most, then 429, and the same path for an
//! unknown node as for a wrong token), tenancy at the compute layer, and quotas.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::fleet::{Fleet, FleetOptions};
use crate::support::{COMPUTE_TOKEN, Options, Stack};

/// A metric's value from a Prometheus text exposition.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name}"))
        .trim()
        .parse()
        .unwrap()
}

async fn metrics(stack: &Stack) -> String {
    stack
        .client
        .get(format!("{}/metrics", stack.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `GET` a bundle path with `token`: the status and how long it took.
async fn fetch(client: &reqwest::Client, url: &str, token: &str) -> (StatusCode, Duration) {
    let started = Instant::now();
    let status = client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status();
    (status, started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_wrong_tokens_open_no_key_cost_a_query_each_at_most_then_get_429() {
    let stack = Stack::start(Options {
        background_secs: 3600,
        ..Options::default()
    })
    .await;
    let (status, _, founded) = stack
        .post_cluster(&stack.token("org-a"), json!({"control_plane_count": 1}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{founded}");
    let url = format!(
        "{}/bootstrap/{}/nodes/{}",
        stack.base,
        founded["cluster_id"].as_str().unwrap(),
        founded["nodes"][0]["name"].as_str().unwrap()
    );
    // Let the founding's own work settle, then count from here.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = metrics(&stack).await;

    let flood_started = Instant::now();
    let mut statuses = Vec::new();
    for n in 0..1000 {
        statuses.push(
            fetch(&stack.client, &url, &format!("wrong-token-{n}"))
                .await
                .0,
        );
    }

    let flood = flood_started.elapsed();
    let after = metrics(&stack).await;
    let opened = metric(&after, "plinth_private_keys_opened_total")
        - metric(&before, "plinth_private_keys_opened_total");
    let queries = metric(&after, "plinth_database_queries_total")
        - metric(&before, "plinth_database_queries_total");
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    eprintln!(
        "1000 wrong tokens: {refused} × 401, {limited} × 429, {queries} queries, {opened} keys opened"
    );
    assert_eq!(opened, 0, "a refused fetch opened a private key");
    assert!(
        queries <= refused as u64,
        "{queries} queries for {refused} answered refusals"
    );
    assert_eq!(refused + limited, 1000, "{statuses:?}");
    // The first 20 are refused, then the flood is limited; the limit lets one more refusal
    // through per second (bootstrap_refusals_per_minute = 60), and no more.
    let first_limited = statuses
        .iter()
        .position(|s| *s == StatusCode::TOO_MANY_REQUESTS)
        .expect("the flood was never limited");
    assert!(first_limited >= 20, "the burst is 20: {first_limited}");
    let refilled = statuses[first_limited..]
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let refills_in_flood = flood.as_secs() as usize + 1;
    assert!(
        first_limited - 20 + refilled <= refills_in_flood,
        "{} refusals beyond the burst in {flood:?}, at most {refills_in_flood} refill",
        first_limited - 20 + refilled
    );
    // One more (a second if the first met a refill) is limited and says when to come back.
    let mut response = None;
    for _ in 0..2 {
        let answer = stack
            .client
            .get(&url)
            .bearer_auth("one-more")
            .send()
            .await
            .unwrap();
        if answer.status() == StatusCode::TOO_MANY_REQUESTS {
            response = Some(answer);
            break;
        }
    }
    let response = response.expect("two more wrong tokens were not limited");
    assert!(response.headers().contains_key("retry-after"));
}

/// The median of `samples`.
fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_node_and_a_wrong_token_take_the_same_time() {
    let stack = Stack::start(Options {
        background_secs: 3600,
        refusal_burst: 100_000,
        ..Options::default()
    })
    .await;
    let (_, _, founded) = stack
        .post_cluster(&stack.token("org-a"), json!({"control_plane_count": 1}))
        .await;
    let cluster = founded["cluster_id"].as_str().unwrap();
    let node = founded["nodes"][0]["name"].as_str().unwrap();
    let known = format!("{}/bootstrap/{cluster}/nodes/{node}", stack.base);
    let unknown = format!(
        "{}/bootstrap/{cluster}/nodes/{}",
        stack.base,
        node.replacen("cp-1", "cp-7", 1)
    );
    // Warm up, then interleave the two kinds so that load affects both alike. Both are refusals
    // through the same single read; the medians must differ by no more than noise. Measured
    // up to three times: a burst of load on a shared machine can skew one round.
    for _ in 0..50 {
        fetch(&stack.client, &known, "warm-up").await;
    }
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let (mut wrong, mut missing) = (Vec::new(), Vec::new());
        for n in 0..300 {
            let (status, took) = fetch(&stack.client, &known, &format!("wrong-{n}")).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            wrong.push(took);
            let (status, took) = fetch(&stack.client, &unknown, &format!("wrong-{n}")).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            missing.push(took);
        }
        let (wrong, missing) = (median(wrong), median(missing));
        let gap = wrong.abs_diff(missing).as_secs_f64() / wrong.max(missing).as_secs_f64();
        eprintln!(
            "wrong token: median {wrong:?}; unknown node: median {missing:?}; gap {:.1} %",
            gap * 100.0
        );
        rounds.push(gap);
        if gap <= 0.10 {
            return;
        }
    }
    panic!("the medians differ by more than 10 % in every round: {rounds:?}");
}

/// Creates a group owned by `owner` at the compute service; its id.
async fn group_of(fleet: &Fleet, owner: &str) -> String {
    let group: Value = fleet
        .client
        .post(format!("{}/v1/security-groups", fleet.sim.base_url()))
        .bearer_auth(COMPUTE_TOKEN)
        .json(&json!({"name": format!("{owner}-group"), "owner": owner}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    group["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_organization_founds_only_on_its_own_or_shared_subnets_and_groups() {
    let fleet = Fleet::start(FleetOptions {
        org_subnets: vec![("subnet-b".to_owned(), "org-b".to_owned())],
        ..FleetOptions::default()
    })
    .await;
    let replica = fleet.spawn("replica");
    let b_group = group_of(&fleet, "org-b").await;
    // Count every creating call from here on.
    fleet
        .faults(json!({
            "create_vm": Fleet::hold(0, 0),
            "create_security_group": Fleet::hold(0, 0),
        }))
        .await;
    for body in [
        json!({"subnet_id": "subnet-b", "control_plane_count": 1}),
        json!({"security_group_ids": [b_group], "control_plane_count": 1}),
    ] {
        let (status, problem) = fleet.found(&replica, "org-a", body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {problem}"
        );
        assert_eq!(
            problem["type"],
            "https://plinth.dev/problems/compute-refused"
        );
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("does not belong to your organization"),
            "{problem}"
        );
    }
    assert_eq!(fleet.compute_calls("create_vm").await, 0);
    assert_eq!(fleet.compute_calls("create_security_group").await, 0);
    assert_eq!(
        fleet.count("SELECT id FROM kubeclusters").await,
        0,
        "nothing claimed"
    );

    // Org B may use both; the shared subnet serves both organizations.
    let (status, body) = fleet
        .found(
            &replica,
            "org-b",
            json!({"subnet_id": "subnet-b", "security_group_ids": [b_group], "control_plane_count": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for org in ["org-a", "org-b"] {
        let (status, body) = fleet
            .found(&replica, org, json!({"control_plane_count": 1}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{org}: {body}");
    }
    // The group plinth created for org A's cluster is org A's.
    let owners = fleet
        .count("SELECT id FROM security_groups WHERE owner = 'org-a'")
        .await;
    assert_eq!(owners, 1);
    // (Not `settles`: org B's own group belongs to no cluster plinth founded, by design.)
    fleet
        .wait_for(
            "SELECT id FROM operations WHERE state = 'running'",
            0,
            Duration::from_secs(10),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_twenty_first_cluster_of_an_organization_is_refused_and_others_are_not() {
    let fleet = Fleet::start(FleetOptions::default()).await;
    let replica = fleet.spawn("replica");
    for n in 1..=20 {
        let (status, body) = fleet
            .found(&replica, "org-a", json!({"control_plane_count": 1}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "cluster {n}: {body}");
    }
    let (status, problem) = fleet
        .found(&replica, "org-a", json!({"control_plane_count": 1}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert_eq!(
        problem["type"],
        "https://plinth.dev/problems/quota-exceeded"
    );
    assert_eq!(fleet.count("SELECT id FROM kubeclusters").await, 20);
    let (status, body) = fleet
        .found(&replica, "org-b", json!({"control_plane_count": 1}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, _, page) = fleet
        .send(
            &replica.base,
            Method::GET,
            "/clusters?limit=100",
            "org-a",
            &[],
            None,
        )
        .await;
    assert_eq!(page["clusters"].as_array().unwrap().len(), 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_can_be_served_apart_from_the_api() {
    let stack = Stack::start(Options {
        metrics_apart: true,
        ..Options::default()
    })
    .await;
    let on_api = stack
        .client
        .get(format!("{}/metrics", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(on_api.status(), StatusCode::NOT_FOUND);
    let apart = stack
        .client
        .get(format!("{}/metrics", stack.metrics_base.as_ref().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(apart.status(), StatusCode::OK);
    assert!(
        apart
            .text()
            .await
            .unwrap()
            .contains("plinth_http_requests_total")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plinth_refuses_to_start_with_a_plain_http_bootstrap_url_outside_a_test_stack() {
    let fleet = Fleet::start(FleetOptions::default()).await;
    let said = fleet.refused_start(&[
        (
            "PLINTH__FOUNDING__BOOTSTRAP_BASE_URL",
            "http://192.0.2.10:8080",
        ),
        ("PLINTH__FOUNDING__ALLOW_INSECURE_BOOTSTRAP", "false"),
    ]);
    assert!(said.contains("founding.bootstrap_base_url"), "{said}");
    assert!(said.contains("plain http"), "{said}");
    // The same URL starts once a test stack says so (as the fleet's configuration does).
    let replica = fleet.spawn("insecure-allowed");
    assert!(replica.base.starts_with("http://"), "{}", replica.base);
}

#[tokio::test(flavor = "multi_thread")]
async fn plinth_refuses_to_start_with_a_tsig_key_it_cannot_use_naming_the_key() {
    let fleet = Fleet::start(FleetOptions::default()).await;
    let rfc2136 = |key_file: &str, algorithm: &str| {
        fleet.refused_start(&[
            ("PLINTH__DNS__MODE", "rfc2136"),
            ("PLINTH__DNS__RFC2136__SERVER", "127.0.0.1:53"),
            ("PLINTH__DNS__RFC2136__KEY_NAME", "plinth"),
            ("PLINTH__DNS__RFC2136__KEY_SECRET_FILE", key_file),
            ("PLINTH__DNS__RFC2136__KEY_ALGORITHM", algorithm),
        ])
    };
    let said = rfc2136("/nonexistent/plinth-tsig", "hmac-sha256");
    assert!(said.contains("dns.rfc2136.key_secret_file"), "{said}");
    assert!(said.contains("/nonexistent/plinth-tsig"), "{said}");

    let key = std::env::temp_dir().join(format!("plinth-e2e-tsig-{}", std::process::id()));
    std::fs::write(&key, "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMyYg==").unwrap();
    let said = rfc2136(key.to_str().unwrap(), "hmac-md5");
    std::fs::remove_file(&key).unwrap();
    assert!(said.contains("dns.rfc2136.key_algorithm"), "{said}");
    assert!(
        !said.contains("c2VjcmV0"),
        "the secret is never printed: {said}"
    );
}
