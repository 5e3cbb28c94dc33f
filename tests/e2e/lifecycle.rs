//! A cluster's life after its founding, against real services: `DELETE` removes its DNS records
//! (dig), VMs, created group and every row, and never a group the caller passed in; a group
//! still in use is retried; a deletion that stops leaves the cluster `deleting` until another
//! `DELETE` finishes it; one whose replica is SIGKILLed is finished by the next. Bootstrap tokens
//! burn a reuse window after their first fetch and can be re-issued; certificate expiries are
//! reported as the certificates say.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::fleet::{Fleet, FleetOptions, Replica, pki_file};
use crate::idempotency::shim_value;
use crate::support::{COMPUTE_TOKEN, Options, Stack};
use crate::tls::openssl;

/// Polls `GET <location>` (an operation) on `base` until it has ended; its last body.
async fn ended(client: &reqwest::Client, base: &str, token: &str, location: &str) -> Value {
    let started = Instant::now();
    loop {
        let operation: Value = client
            .get(format!("{base}{location}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if operation["state"] != "running" {
            return operation;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{operation}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `DELETE /clusters/<id>`: the 202's operation location.
async fn delete(client: &reqwest::Client, base: &str, token: &str, cluster: &str) -> String {
    let response = client
        .delete(format!("{base}/clusters/{cluster}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["kind"], "delete", "{body}");
    assert_eq!(
        location,
        format!("/operations/{}", body["operation_id"].as_str().unwrap())
    );
    location
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_cluster_leaves_no_vm_group_record_or_row_and_the_callers_group_stays() {
    let stack = Stack::start(Options::default()).await;
    let token = stack.token("org-a");
    // A group of the caller's own, passed in at founding.
    let theirs: Value = stack
        .client
        .post(format!("{}/v1/security-groups", stack.sim.base_url()))
        .bearer_auth(COMPUTE_TOKEN)
        .json(&json!({"name": "theirs", "owner": "org-a"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let theirs = theirs["id"].as_str().unwrap().to_owned();
    let (status, _, made) = stack
        .post_cluster(&token, json!({"name": "made", "control_plane_count": 3}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let (status, _, given) = stack
        .post_cluster(
            &token,
            json!({"name": "given", "control_plane_count": 1, "security_group_ids": [theirs]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{given}");
    let name = made["control_plane_dns_name"].as_str().unwrap().to_owned();
    assert_eq!(stack.pdns.dig(&name, "A").1.len(), 3, "published first");
    let id = made["cluster_id"].as_str().unwrap().to_owned();
    let (_, _, details) = stack.get(&format!("/clusters/{id}"), Some(&token)).await;
    let group = details["created_security_group_id"]
        .as_str()
        .unwrap()
        .to_owned();

    for cluster in [&id, given["cluster_id"].as_str().unwrap()] {
        let location = delete(&stack.client, &stack.base, &token, cluster).await;
        let operation = ended(&stack.client, &stack.base, &token, &location).await;
        assert_eq!(operation["state"], "succeeded", "{operation}");
        let (status, _, _) = stack
            .get(&format!("/clusters/{cluster}"), Some(&token))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        for table in [
            "kubeclusters",
            "etcdnodes",
            "apiservernodes",
            "clustercerts",
        ] {
            let column = if table == "kubeclusters" {
                "id"
            } else {
                "cluster_id"
            };
            assert_eq!(
                stack
                    .rows(table, &format!("{column}::text = '{cluster}'"))
                    .await,
                0,
                "{table} still has rows of {cluster}"
            );
        }
        assert_eq!(
            stack
                .rows(
                    "vms",
                    &format!("tags->>'plinth.io/cluster-id' = '{cluster}'")
                )
                .await,
            0,
            "VMs of {cluster} remain"
        );
    }
    let (status, answers) = stack.pdns.dig(&name, "A");
    assert!(answers.is_empty(), "{status}: {answers:?}");
    assert_eq!(
        stack
            .rows("security_groups", &format!("id = '{group}'"))
            .await,
        0
    );
    assert_eq!(
        stack
            .rows("security_groups", &format!("id = '{theirs}'"))
            .await,
        1,
        "the caller's group is never touched"
    );
}

async fn fleet(options: FleetOptions) -> (Fleet, Replica) {
    let fleet = Fleet::start(options).await;
    let replica = fleet.spawn("replica");
    (fleet, replica)
}

/// Founds a cluster of `count` nodes on `replica` as org-a.
async fn founded(fleet: &Fleet, replica: &Replica, count: u8) -> Value {
    let (status, body) = fleet
        .found(replica, "org-a", json!({"control_plane_count": count}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_in_use_is_retried_and_a_stopped_deletion_is_finished_by_another_delete() {
    let (fleet, replica) = fleet(FleetOptions::default()).await;
    let token = fleet.token("org-a");
    // The compute service says the group is in use three times, then lets it go.
    let first = founded(&fleet, &replica, 1).await;
    fleet
        .faults(json!({"delete_security_group": {"status": 409, "times": 3}}))
        .await;
    let cluster = first["cluster_id"].as_str().unwrap();
    let location = delete(&fleet.client, &replica.base, &token, cluster).await;
    let operation = ended(&fleet.client, &replica.base, &token, &location).await;
    assert_eq!(operation["state"], "succeeded", "{operation}");
    assert_eq!(fleet.compute_calls("delete_security_group").await, 4);

    // The compute service fails every VM deletion: the deletion stops, the cluster stays
    // `deleting` and listed; once compute is back, a second DELETE finishes it.
    let second = founded(&fleet, &replica, 3).await;
    let cluster = second["cluster_id"].as_str().unwrap();
    fleet.faults(json!({"delete_vm": {"status": 503}})).await;
    let location = delete(&fleet.client, &replica.base, &token, cluster).await;
    let operation = ended(&fleet.client, &replica.base, &token, &location).await;
    assert_eq!(operation["state"], "failed", "{operation}");
    assert_eq!(
        operation["problem"]["type"],
        "https://plinth.dev/problems/compute-failed"
    );
    assert_eq!(operation["problem"]["status"], 502);
    assert_eq!(operation["step"], "delete_vms", "{operation}");
    let (status, _, listed) = fleet
        .send(&replica.base, Method::GET, "/clusters", "org-a", &[], None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let listed: BTreeMap<&str, &str> = listed["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["cluster_id"].as_str().unwrap(),
                c["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed.get(cluster), Some(&"deleting"), "{listed:?}");

    fleet.faults(json!({})).await;
    let again = delete(&fleet.client, &replica.base, &token, cluster).await;
    assert_ne!(again, location, "a new deletion");
    let operation = ended(&fleet.client, &replica.base, &token, &again).await;
    assert_eq!(operation["state"], "succeeded", "{operation}");
    assert_eq!(fleet.count("SELECT id FROM kubeclusters").await, 0);
    fleet.settles(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deletion_whose_replica_is_killed_is_finished_after_a_restart() {
    let (fleet, mut replica) = fleet(FleetOptions::default()).await;
    let token = fleet.token("org-a");
    let cluster = founded(&fleet, &replica, 3).await["cluster_id"]
        .as_str()
        .unwrap()
        .to_owned();
    fleet
        .faults(json!({"delete_vm": Fleet::hold(0, 3000)}))
        .await;
    let location = delete(&fleet.client, &replica.base, &token, &cluster).await;
    // The deletion is held at its VMs: a second DELETE answers the same operation, and the
    // cluster reads as deleting.
    fleet
        .wait_for(
            "SELECT id FROM operations WHERE kind = 'delete' AND step = 'delete_vms'",
            1,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        delete(&fleet.client, &replica.base, &token, &cluster).await,
        location
    );
    let (_, _, details) = fleet
        .send(
            &replica.base,
            Method::GET,
            &format!("/clusters/{cluster}"),
            "org-a",
            &[],
            None,
        )
        .await;
    assert_eq!(details["status"], "deleting", "{details}");

    replica.kill();
    let next = fleet.spawn("next");
    let operation = ended(&fleet.client, &next.base, &token, &location).await;
    assert_eq!(operation["state"], "succeeded", "{operation}");
    let (status, _, _) = fleet
        .send(
            &next.base,
            Method::GET,
            &format!("/clusters/{cluster}"),
            "org-a",
            &[],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    fleet.settles(Duration::from_secs(20)).await;
    assert_eq!(fleet.count("SELECT id FROM vms").await, 0);
    assert_eq!(fleet.count("SELECT id FROM security_groups").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_burns_after_its_reuse_window_and_a_reissued_one_replaces_it() {
    let options = FleetOptions {
        token_reuse_window_secs: 2,
        ..FleetOptions::default()
    };
    let (fleet, replica) = fleet(options).await;
    let cluster = founded(&fleet, &replica, 1).await;
    let id = cluster["cluster_id"].as_str().unwrap();
    let node = cluster["nodes"][0]["name"].as_str().unwrap();
    let shim = fleet
        .user_data(cluster["nodes"][0]["vm_id"].as_str().unwrap())
        .await;
    let (url, first) = (
        shim_value(&shim, "PLINTH_BOOTSTRAP_URL"),
        shim_value(&shim, "PLINTH_BOOTSTRAP_TOKEN"),
    );
    // Fetched, and fetched again within the window: a node that failed half-way may retry.
    assert_eq!(fleet.fetch_bundle(&url, &first).await.0, StatusCode::OK);
    assert_eq!(fleet.fetch_bundle(&url, &first).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (status, refused) = fleet.fetch_bundle(&url, &first).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{refused}");

    // A new token for the node: it works, and the one before it stops at once.
    let path = format!("/clusters/{id}/nodes/{node}/bootstrap-token");
    let reissue = |org: &'static str| {
        let (fleet, replica, path) = (&fleet, &replica, path.clone());
        async move {
            fleet
                .send(&replica.base, Method::POST, &path, org, &[], None)
                .await
        }
    };
    let (status, headers, issued) = reissue("org-a").await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    assert_eq!(headers["cache-control"], "no-store");
    let second = issued["token"].as_str().unwrap().to_owned();
    let user_data = issued["user_data"].as_str().unwrap();
    assert_eq!(shim_value(user_data, "PLINTH_BOOTSTRAP_TOKEN"), second);
    assert_eq!(shim_value(user_data, "PLINTH_BOOTSTRAP_URL"), url);
    assert!(issued["expires_at"].is_string());
    let (_, _, third) = reissue("org-a").await;
    let third = third["token"].as_str().unwrap().to_owned();
    assert_eq!(
        fleet.fetch_bundle(&url, &second).await.0,
        StatusCode::UNAUTHORIZED,
        "a token replaced before its first use stops at once"
    );
    let (status, bundle) = fleet.fetch_bundle(&url, &third).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bundle["node_name"], node);
    // Another organization cannot.
    let (status, _, _) = reissue("org-b").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (_, _, metrics) = fleet
        .send(&replica.base, Method::GET, "/metrics", "org-a", &[], None)
        .await;
    let metrics = metrics.as_str().unwrap();
    for outcome in ["ok", "refused", "burned"] {
        assert!(
            metrics.contains(&format!(
                "plinth_bootstrap_fetches_total{{outcome=\"{outcome}\"}}"
            )),
            "no {outcome} fetches counted"
        );
    }
}

/// `notAfter` of a PEM certificate as RFC 3339, by openssl.
fn not_after(dir: &std::path::Path, name: &str, pem: &str) -> time::OffsetDateTime {
    let file = crate::support::write(dir, &format!("{}.crt", name.replace('/', "_")), pem);
    let shown = openssl(&[
        "x509",
        "-noout",
        "-enddate",
        "-dateopt",
        "iso_8601",
        "-in",
        file.to_str().unwrap(),
    ]);
    let text = shown
        .trim()
        .strip_prefix("notAfter=")
        .unwrap()
        .replace(' ', "T");
    time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn expiries_are_the_certificates_own_and_expiring_before_selects_by_them() {
    let (fleet, replica) = fleet(FleetOptions::default()).await;
    let cluster = founded(&fleet, &replica, 1).await;
    let other_org = fleet
        .found(&replica, "org-b", json!({"control_plane_count": 1}))
        .await;
    assert_eq!(other_org.0, StatusCode::CREATED);
    let id = cluster["cluster_id"].as_str().unwrap();
    let node = cluster["nodes"][0]["name"].as_str().unwrap();
    let (status, _, details) = fleet
        .send(
            &replica.base,
            Method::GET,
            &format!("/clusters/{id}"),
            "org-a",
            &[],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let reported: BTreeMap<String, time::OffsetDateTime> = details["certificates"]["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                time::OffsetDateTime::parse(
                    c["not_after"].as_str().unwrap(),
                    &time::format_description::well_known::Rfc3339,
                )
                .unwrap(),
            )
        })
        .collect();

    // What the node's bundle holds says the same, certificate by certificate.
    let shim = fleet
        .user_data(cluster["nodes"][0]["vm_id"].as_str().unwrap())
        .await;
    let (_, bundle) = fleet
        .fetch_bundle(
            &shim_value(&shim, "PLINTH_BOOTSTRAP_URL"),
            &shim_value(&shim, "PLINTH_BOOTSTRAP_TOKEN"),
        )
        .await;
    let file = |path: &str| pki_file(&bundle, path);
    let dir = fleet.scratch("expiry/.keep", "");
    let dir = dir.parent().unwrap();
    for (path, name) in [
        ("ca.crt", "ca".to_owned()),
        ("etcd/ca.crt", "etcd-ca".to_owned()),
        ("front-proxy-ca.crt", "front-proxy-ca".to_owned()),
        (
            "apiserver-etcd-client.crt",
            "apiserver-etcd-client".to_owned(),
        ),
        ("apiserver.crt", format!("{node}/apiserver")),
        ("etcd/server.crt", format!("{node}/etcd")),
    ] {
        assert_eq!(
            reported.get(&name),
            Some(&not_after(dir, &name, &file(path))),
            "{name} ({path})"
        );
    }
    let earliest = reported.values().min().unwrap();
    assert_eq!(
        details["certificates"]["earliest_not_after"],
        earliest
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    );

    // Leaves last a year: a bound two years out selects the cluster, half a year out does not.
    let listed = |bound: time::OffsetDateTime| {
        let bound = bound
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let (fleet, replica) = (&fleet, &replica);
        async move {
            let path = format!("/clusters?expiring_before={}", bound.replace('+', "%2B"));
            let (status, _, page) = fleet
                .send(&replica.base, Method::GET, &path, "org-a", &[], None)
                .await;
            assert_eq!(status, StatusCode::OK, "{page}");
            page["clusters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["cluster_id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let now = time::OffsetDateTime::now_utc();
    assert_eq!(listed(now + time::Duration::days(730)).await, [id]);
    assert!(listed(now + time::Duration::days(180)).await.is_empty());
    assert_eq!(listed(*earliest + time::Duration::seconds(1)).await, [id]);
    assert!(listed(*earliest).await.is_empty(), "strictly before");
    let (status, _, refused) = fleet
        .send(
            &replica.base,
            Method::GET,
            "/clusters?expiring_before=soon",
            "org-a",
            &[],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(refused["errors"][0]["field"], "expiring_before");
}
