//! The compute service over real HTTP on loopback, on a real PostgreSQL: authentication,
//! problem+json errors, subnets, groups and rules, VMs and their addresses, idempotency, fault
//! injection and the OpenAPI document.

#![allow(clippy::unwrap_used)]

use plinth_compute_sim::{RunningSim, SimSettings, start};
use plinth_diesel_pg::testing::TestDatabase;
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

const TOKEN: &str = "test-compute-token";

struct Sim {
    _db: TestDatabase,
    sim: RunningSim,
    client: Client,
}

impl Sim {
    async fn start() -> Self {
        let db = TestDatabase::create().await;
        let sim = start(SimSettings::new(db.url(), TOKEN)).await.unwrap();
        Self {
            _db: db,
            sim,
            client: Client::new(),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_with(method, path, body, Some(TOKEN), None).await
    }

    async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.sim.base_url()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let is_problem = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("application/problem+json"));
        let text = response.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        if status.is_client_error() || status.is_server_error() {
            assert!(is_problem, "{status} without problem+json: {text}");
            assert_eq!(value["status"], status.as_u16(), "{text}");
            assert!(value["detail"].is_string(), "{text}");
        }
        (status, value)
    }

    async fn vm(&self, name: &str, groups: &[&str]) -> (StatusCode, Value) {
        self.call(Method::POST, "/v1/vms", Some(vm_body(name, groups)))
            .await
    }
}

fn vm_body(name: &str, groups: &[&str]) -> Value {
    json!({
        "name": name,
        "flavor": "m1.medium",
        "image": "debian-12",
        "subnet_id": "subnet-local",
        "security_group_ids": groups,
        "tags": {"plinth.io/role": "control-plane"},
        "user_data": "#!/bin/sh\necho hi\n",
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_without_the_service_token_are_refused() {
    let sim = Sim::start().await;
    let url = format!("{}/v1/subnets/subnet-local", sim.sim.base_url());
    let response = sim.client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let (status, _) = sim
        .call_with(
            Method::GET,
            "/v1/subnets/subnet-local",
            None,
            Some("wrong-token"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = sim.call(Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = sim.call(Method::GET, "/readyz", None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_problem_details_that_say_what_is_wrong() {
    let sim = Sim::start().await;
    let (status, body) = sim.call(Method::GET, "/v1/nothing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = sim
        .call(
            Method::POST,
            "/v1/vms",
            Some(json!({"name": "x", "extra": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("invalid JSON body"),
        "{body}"
    );
    let (status, body) = sim.vm("", &[]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["detail"].as_str().unwrap().contains("name"), "{body}");
    let mut unknown_subnet = vm_body("a", &[]);
    unknown_subnet["subnet_id"] = json!("subnet-nowhere");
    let (status, body) = sim
        .call(Method::POST, "/v1/vms", Some(unknown_subnet))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["detail"].as_str().unwrap().contains("subnet-nowhere"),
        "{body}"
    );
    let (status, body) = sim.vm("a", &["sg-missing"]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["detail"].as_str().unwrap().contains("sg-missing"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn subnets_groups_and_rules() {
    let sim = Sim::start().await;
    let (status, subnet) = sim
        .call(Method::GET, "/v1/subnets/subnet-local", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        subnet,
        json!({"id": "subnet-local", "ipv4_cidr": "127.10.0.0/24", "ipv6_cidr": "fd00:10::/64"})
    );
    let (status, _) = sim.call(Method::GET, "/v1/subnets/none", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, group) = sim
        .call(
            Method::POST,
            "/v1/security-groups",
            Some(json!({"name": "cp", "tags": {"k": "v"}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = group["id"].as_str().unwrap();
    assert_eq!(group["tags"], json!({"k": "v"}));
    let rules_path = format!("/v1/security-groups/{id}/rules");
    for (rule, expected) in [
        (
            json!({"protocol": "any", "remote_cidr": "127.10.0.0/24"}),
            StatusCode::CREATED,
        ),
        (
            json!({"protocol": "tcp", "port": 6443, "remote_cidr": "0.0.0.0/0"}),
            StatusCode::CREATED,
        ),
        (
            json!({"protocol": "tcp", "port": 6443, "remote_cidr": "::/0"}),
            StatusCode::CREATED,
        ),
        (
            json!({"protocol": "tcp", "remote_cidr": "0.0.0.0/0"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"protocol": "any", "port": 1, "remote_cidr": "0.0.0.0/0"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"protocol": "icmp", "remote_cidr": "0.0.0.0/0"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"protocol": "any", "remote_cidr": "nonsense"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let (status, body) = sim
            .call(Method::POST, &rules_path, Some(rule.clone()))
            .await;
        assert_eq!(status, expected, "{rule} -> {body}");
    }
    let (status, _) = sim
        .call(
            Method::POST,
            "/v1/security-groups/sg-none/rules",
            Some(json!({"protocol": "any", "remote_cidr": "0.0.0.0/0"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // In use by a VM: 409 until the VM is gone.
    let (status, vm) = sim.vm("user", &[id]).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = sim
        .call(Method::DELETE, &format!("/v1/security-groups/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains(vm["id"].as_str().unwrap()),
        "{body}"
    );
    let (status, _) = sim
        .call(
            Method::DELETE,
            &format!("/v1/vms/{}", vm["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = sim
        .call(Method::DELETE, &format!("/v1/security-groups/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = sim
        .call(Method::DELETE, &format!("/v1/security-groups/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn vms_get_addresses_from_the_subnet_pool_and_keep_their_userdata() {
    let sim = Sim::start().await;
    let (status, vm) = sim.vm("cp-1", &[]).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(vm["ipv4"], "127.10.0.2");
    assert_eq!(vm["ipv6"], "fd00:10::2");
    assert_eq!(vm["public_ipv4"], "127.20.0.1");
    assert_eq!(vm["status"], "running");
    let id = vm["id"].as_str().unwrap();
    let (status, read) = sim.call(Method::GET, &format!("/v1/vms/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["user_data"], "#!/bin/sh\necho hi\n");
    assert_eq!(read["tags"], json!({"plinth.io/role": "control-plane"}));
    let (_, second) = sim.vm("cp-2", &[]).await;
    assert_eq!(second["ipv4"], "127.10.0.3");
    assert_eq!(second["public_ipv4"], "127.20.0.2");
    let (status, _) = sim.call(Method::GET, "/v1/vms/vm-none", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_with_the_same_idempotency_key_returns_the_same_vm() {
    let sim = Sim::start().await;
    let body = vm_body("cp-1", &[]);
    let (first_status, first) = sim
        .call_with(
            Method::POST,
            "/v1/vms",
            Some(body.clone()),
            Some(TOKEN),
            Some("key-1"),
        )
        .await;
    let (again_status, again) = sim
        .call_with(
            Method::POST,
            "/v1/vms",
            Some(body.clone()),
            Some(TOKEN),
            Some("key-1"),
        )
        .await;
    assert_eq!(
        (first_status, again_status),
        (StatusCode::CREATED, StatusCode::OK)
    );
    assert_eq!(first["id"], again["id"]);
    assert_eq!(first["ipv4"], again["ipv4"]);
    let (status, body) = sim
        .call_with(
            Method::POST,
            "/v1/vms",
            Some(vm_body("cp-2", &[])),
            Some(TOKEN),
            Some("key-1"),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("different request"),
        "{body}"
    );
    let (status, other) = sim
        .call_with(
            Method::POST,
            "/v1/vms",
            Some(vm_body("cp-1", &[])),
            Some(TOKEN),
            Some("key-2"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(other["id"], first["id"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_are_set_seen_and_cleared_through_the_admin_endpoint() {
    let sim = Sim::start().await;
    let (status, state) = sim
        .call(
            Method::PUT,
            "/admin/faults",
            Some(
                json!({"create_vm": {"status": 503, "times": 1}, "get_subnet": {"latency_ms": 50}}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{state}");
    let (status, _) = sim.vm("a", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = sim.vm("a", &[]).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, state) = sim.call(Method::GET, "/admin/faults", None).await;
    assert_eq!(state["create_vm"]["calls"], 2);
    assert_eq!(state["create_vm"]["failures"], 1);
    let (status, body) = sim
        .call(
            Method::PUT,
            "/admin/faults",
            Some(json!({"get_vm": {"status": 200}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, _) = sim
        .call(
            Method::PUT,
            "/admin/faults",
            Some(json!({"get_subnet": null})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, state) = sim.call(Method::GET, "/admin/faults", None).await;
    assert!(state.get("get_subnet").is_none(), "{state}");
    let (status, _) = sim.call(Method::DELETE, "/admin/faults", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, state) = sim.call(Method::GET, "/admin/faults", None).await;
    assert_eq!(state, json!({}));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_describes_every_route() {
    let sim = Sim::start().await;
    let (status, doc) = sim.call(Method::GET, "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/v1/subnets/{id}",
        "/v1/security-groups",
        "/v1/security-groups/{id}/rules",
        "/v1/security-groups/{id}",
        "/v1/vms",
        "/v1/vms/{id}",
        "/admin/faults",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert!(doc["components"]["schemas"]["VmBody"].is_object());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}
