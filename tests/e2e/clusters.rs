//! `POST /clusters` and the reads, end to end: real HTTP to plinth, real PostgreSQL, the real
//! compute service, a real PowerDNS, and kubectl reading the kubeconfig.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::{Dns, Options, Stack, kubectl_config};
use plinth_compute_sim::faults::Operation;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Whether the Prometheus text `metrics` has a sample of `name` with exactly `labels` (in any
/// order: the format does not fix one).
fn has_sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> bool {
    let mut wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    wanted.sort();
    metrics.lines().any(|line| {
        let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else {
            return false;
        };
        let Some((inside, _value)) = rest.split_once("} ") else {
            return false;
        };
        let mut have: Vec<String> = inside.split(',').map(str::to_owned).collect();
        have.sort();
        have == wanted
    })
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn founding_1_3_and_5_nodes_answers_every_field_stores_the_rows_and_publishes_dns() {
    let stack = Stack::start(Options::default()).await;
    let token = stack.token("org-a");
    for count in [1u64, 3, 5] {
        let (status, headers, body) = stack
            .post_cluster(
                &token,
                json!({"name": format!("c{count}"), "control_plane_count": count}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let id = body["cluster_id"].as_str().unwrap();
        assert_eq!(headers["location"], format!("/clusters/{id}"));
        assert_eq!(body["name"], format!("c{count}"));
        assert_eq!(body["vm_ids"].as_array().unwrap().len() as u64, count);
        let shared = format!("api.cluster-{id}.{}", crate::support::ZONE);
        assert_eq!(body["control_plane_dns_name"], shared.as_str());
        assert_eq!(
            body["networking"],
            json!({"pod_cidr": "10.244.0.0/16", "service_cidr": "10.96.0.0/12", "dns_domain": "cluster.local",
                   "cluster_dns_ip": "10.96.0.10", "api_server_port": 6443})
        );
        let nodes = body["nodes"].as_array().unwrap();
        assert_eq!(nodes.len() as u64, count);
        for (n, node) in nodes.iter().enumerate() {
            assert_eq!(node["name"], format!("cp-{}.cluster-{id}.internal", n + 1));
            assert_eq!(node["vm_id"], body["vm_ids"][n]);
            for key in ["ipv4", "ipv6", "public_ipv4"] {
                assert!(node[key].is_string(), "{key}: {node}");
            }
        }
        assert_eq!(
            body["bootstrap_path_template"],
            format!("/bootstrap/{id}/nodes/{{node_name}}")
        );
        assert_eq!(
            body["ingress_wildcard_dns_name"],
            format!("*.apps.cluster-{id}.{}", crate::support::ZONE)
        );
        assert_eq!(body["suggested_dns_records"][0]["name"], shared.as_str());
        assert_eq!(body["suggested_dns_records"][0]["type"], "A");
        assert_eq!(body["dns_configured"], true, "{body}");
        assert_eq!(body["dns_error"], Value::Null);

        // The rows: one per node and facet.
        let condition = format!("cluster_id = '{id}'");
        assert_eq!(stack.rows("etcdnodes", &condition).await as u64, count);
        assert_eq!(stack.rows("apiservernodes", &condition).await as u64, count);
        assert_eq!(stack.rows("kubeclusters", &format!("id = '{id}'")).await, 1);

        // kubectl reads the kubeconfig and finds the shared name.
        let file = stack.scratch(
            &format!("kubeconfig-{count}"),
            body["admin_kubeconfig"].as_str().unwrap(),
        );
        let config = kubectl_config(&file);
        assert_eq!(
            config["clusters"][0]["cluster"]["server"],
            format!("https://{shared}:6443")
        );
        assert!(
            config["users"][0]["user"]["client-key-data"]
                .as_str()
                .unwrap()
                .len()
                > 100
        );
        assert_eq!(config["current-context"], config["contexts"][0]["name"]);

        // PowerDNS answers the shared name with the nodes' public IPv4s.
        let (dns_status, answers) = stack.pdns.dig(&shared, "A");
        assert_eq!(dns_status, "NOERROR");
        let public: BTreeSet<String> = nodes
            .iter()
            .map(|n| n["public_ipv4"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(answers.into_iter().collect::<BTreeSet<_>>(), public);
        assert_eq!(
            strings(&body["suggested_dns_records"][0]["values"])
                .into_iter()
                .collect::<BTreeSet<_>>(),
            public
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_powerdns_stopped_the_cluster_is_founded_and_dns_reported_not_configured() {
    let stack = Stack::start(Options {
        dns: Dns::Stopped,
        ..Options::default()
    })
    .await;
    let (status, _, body) = stack
        .post_cluster(&stack.token("org-a"), json!({"control_plane_count": 1}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["dns_configured"], false);
    let why = body["dns_error"].as_str().unwrap();
    assert!(why.contains("DNS server unavailable"), "{why}");
    let id = body["cluster_id"].as_str().unwrap();
    assert_eq!(stack.rows("kubeclusters", &format!("id = '{id}'")).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compute_failure_at_vm_2_of_3_is_a_502_and_leaves_nothing_behind() {
    let stack = Stack::start(Options {
        compute_attempts: 1,
        faults: vec![(
            Operation::CreateVm,
            json!({"status": 503, "after_calls": 1, "times": 1}),
        )],
        ..Options::default()
    })
    .await;
    let (status, _, body) = stack
        .post_cluster(&stack.token("org-a"), json!({"control_plane_count": 3}))
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("failed to create VM"),
        "{body}"
    );
    // The two VMs and the group this request made were deleted again, and the body says so.
    let removed = strings(&body["cleanup"]["removed"]);
    assert_eq!(
        removed.iter().filter(|r| r.starts_with("vm ")).count(),
        2,
        "{body}"
    );
    assert_eq!(
        removed
            .iter()
            .filter(|r| r.starts_with("security_group "))
            .count(),
        1,
        "{body}"
    );
    assert_eq!(body["cleanup"]["left_behind"], json!([]));
    // No internals in a 5xx body.
    let text = body.to_string();
    assert!(
        !text.contains("127.0.0.1") && !text.contains("http://"),
        "{text}"
    );
    // Nothing in plinth's tables, nothing left on the compute service.
    for table in [
        "kubeclusters",
        "etcdnodes",
        "apiservernodes",
        "vms",
        "security_groups",
    ] {
        assert_eq!(stack.rows(table, "true").await, 0, "{table}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_invalid_request_is_a_400_listing_its_fields() {
    let stack = Stack::start(Options::default()).await;
    let token = stack.token("org-a");
    for (body, fields) in [
        (
            json!({"control_plane_count": 4}),
            vec!["control_plane_count"],
        ),
        (
            json!({"control_plane_count": 0}),
            vec!["control_plane_count"],
        ),
        (
            json!({"control_plane_count": 9}),
            vec!["control_plane_count"],
        ),
        (
            json!({"control_plane_count": 2.5}),
            vec!["control_plane_count"],
        ),
        (
            json!({"security_group_ids": ["a", "a"]}),
            vec!["security_group_ids[1]"],
        ),
        (
            json!({"security_group_ids": ["a", "b", "c", "d", "e", "f"]}),
            vec!["security_group_ids"],
        ),
        (
            json!({"security_group_ids": []}),
            vec!["security_group_ids"],
        ),
        (json!({"name": "Not_A_Label"}), vec!["name"]),
        (json!({"org_id": "org-b"}), vec!["org_id"]),
        (json!({"colour": "red"}), vec!["colour"]),
        (
            json!({"name": "UPPER", "control_plane_count": 6, "extra": true}),
            vec!["extra", "name", "control_plane_count"],
        ),
        (json!([1, 2]), vec!["(body)"]),
    ] {
        let (status, _, problem) = stack.post_cluster(&token, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {problem}");
        let got: Vec<String> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(got, fields, "{body}: {problem}");
        assert!(
            problem["errors"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["message"].as_str().is_some_and(|m| !m.is_empty()))
        );
    }
    let (_, _, problem) = stack.post_cluster(&token, json!({"org_id": "x"})).await;
    assert!(
        problem["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("comes from your token")
    );

    let malformed = stack
        .request(
            Method::POST,
            "/clusters",
            Some(&token),
            Some("application/json"),
            Some(b"{\"name\":".to_vec()),
        )
        .await;
    assert_eq!(malformed.0, StatusCode::BAD_REQUEST);
    assert!(
        malformed.2["detail"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{}",
        malformed.2
    );

    let big = format!("{{\"name\":\"{}\"}}", "x".repeat(70 * 1024)).into_bytes();
    let (status, _, _) = stack
        .request(
            Method::POST,
            "/clusters",
            Some(&token),
            Some("application/json"),
            Some(big),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let (status, _, problem) = stack
            .request(
                Method::POST,
                "/clusters",
                Some(&token),
                content_type,
                Some(b"{}".to_vec()),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}: {problem}"
        );
    }
    // Nothing was founded by any of them.
    assert_eq!(stack.rows("kubeclusters", "true").await, 0);
    assert_eq!(stack.rows("vms", "true").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn clusters_are_read_and_listed_per_organization_without_key_material() {
    let stack = Stack::start(Options::default()).await;
    let (a, b) = (stack.token("org-a"), stack.token("org-b"));
    let mut ids = Vec::new();
    for i in 0..3 {
        let (status, _, body) = stack
            .post_cluster(
                &a,
                json!({"name": format!("a{i}"), "control_plane_count": 1}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        ids.push(body["cluster_id"].as_str().unwrap().to_owned());
    }
    let (status, _, theirs) = stack
        .post_cluster(&b, json!({"control_plane_count": 1}))
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, _, one) = stack.get(&format!("/clusters/{}", ids[0]), Some(&a)).await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["name"], "a0");
    assert_eq!(one["nodes"].as_array().unwrap().len(), 1);
    assert!(
        one["ca_cert"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert!(!one.to_string().contains("PRIVATE KEY"), "{one}");
    assert_eq!(
        one["created_security_group_id"],
        one["security_group_ids"][0]
    );

    // Another organization's cluster does not exist for this caller.
    let (status, _, _) = stack
        .get(
            &format!("/clusters/{}", theirs["cluster_id"].as_str().unwrap()),
            Some(&a),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = stack.get("/clusters/not-a-uuid", Some(&a)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Pages of 2, newest first, only org-a's.
    let (status, _, first) = stack.get("/clusters?limit=2", Some(&a)).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, _, second) = stack
        .get(&format!("/clusters?limit=2&cursor={cursor}"), Some(&a))
        .await;
    assert_eq!(second["next_cursor"], Value::Null);
    let listed: Vec<String> = first["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["clusters"].as_array().unwrap())
        .map(|c| c["cluster_id"].as_str().unwrap().to_owned())
        .collect();
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(listed, expected);
    let (status, _, problem) = stack.get("/clusters?limit=0&cursor=bogus", Some(&a)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["errors"].as_array().unwrap().len(), 2, "{problem}");
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_get_ids_metrics_count_them_and_the_openapi_document_describes_the_api() {
    let stack = Stack::start(Options::default()).await;
    let response = stack
        .client
        .get(format!("{}/healthz", stack.base))
        .header("X-Request-Id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-request-id"], "trace-me-42");
    let (status, headers, _) = stack.get("/readyz", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["x-request-id"].to_str().unwrap().len(),
        36,
        "a fresh UUID"
    );
    let (status, _, _) = stack
        .post_cluster(&stack.token("org-a"), json!({"control_plane_count": 1}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, _) = stack
        .request(Method::PUT, "/clusters", None, None, None)
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _, _) = stack.get("/nowhere", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let answer = stack
        .client
        .get(format!("{}/metrics", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let metrics = answer.text().await.unwrap();
    for (name, labels) in [
        (
            "plinth_http_requests_total",
            &[
                ("route", "/clusters"),
                ("method", "POST"),
                ("status", "201"),
            ][..],
        ),
        (
            "plinth_http_requests_total",
            &[("route", "/healthz"), ("method", "GET"), ("status", "200")],
        ),
        (
            "plinth_http_request_duration_seconds_bucket",
            &[("route", "/clusters"), ("method", "POST"), ("le", "+Inf")],
        ),
        (
            "plinth_founding_step_duration_seconds_count",
            &[("step", "create_vms")],
        ),
        (
            "plinth_founding_step_duration_seconds_count",
            &[("step", "create_trust_root")],
        ),
        ("plinth_foundings_total", &[("outcome", "created")]),
    ] {
        assert!(
            has_sample(&metrics, name, labels),
            "{name}{labels:?} missing from:\n{metrics}"
        );
    }

    let (status, _, doc) = stack.get("/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/clusters",
        "/clusters/{id}",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path}");
    }
    assert!(doc["paths"]["/clusters"]["post"]["responses"]["201"].is_object());
    assert!(
        doc["components"]["schemas"]["FoundedClusterBody"]["properties"]["admin_kubeconfig"]
            .is_object()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_in_flight_founding_finishes_during_a_graceful_shutdown() {
    let mut stack = Stack::start(Options {
        faults: vec![(Operation::CreateVm, json!({"latency_ms": 1500}))],
        ..Options::default()
    })
    .await;
    let token = stack.token("org-a");
    let client = stack.client.clone();
    let url = format!("{}/clusters", stack.base);
    let in_flight = tokio::spawn(async move {
        client
            .post(url)
            .bearer_auth(token)
            .json(&json!({"control_plane_count": 1}))
            .send()
            .await
            .map(|r| r.status())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.stop_plinth().await;
    let status = in_flight.await.unwrap().unwrap();
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(stack.rows("kubeclusters", "true").await, 1);
    // And nothing new is accepted.
    assert!(
        stack
            .client
            .get(format!("{}/healthz", stack.base))
            .send()
            .await
            .is_err()
    );
}
