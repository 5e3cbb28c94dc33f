//! The compute service over real HTTP on loopback, on a real PostgreSQL: authentication,
//! problem+json errors, subnets, groups and rules, VMs and their addresses, idempotency of VM and
//! group creation, listing by tag, owners of subnets and groups (and the migration that brought
//! them), the problem types of the two 409s, fault injection and the OpenAPI document.

#![allow(clippy::unwrap_used)]

use plinth_compute_sim::store::SubnetSeed;
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
        Self::start_with(Vec::new()).await
    }

    /// A sim seeding `subnet-local` and `subnets`.
    async fn start_with(subnets: Vec<SubnetSeed>) -> Self {
        let db = TestDatabase::create().await;
        let mut settings = SimSettings::new(db.url(), TOKEN);
        settings.subnets.extend(subnets);
        let sim = start(settings).await.unwrap();
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

    async fn keyed(&self, path: &str, body: Value, key: &str) -> (StatusCode, Value) {
        self.call_with(Method::POST, path, Some(body), Some(TOKEN), Some(key))
            .await
    }

    /// `GET /v1/<kind>` with these query parameters, percent-encoded.
    async fn list(&self, kind: &str, params: &[(&str, &str)]) -> (StatusCode, Value) {
        let mut url = reqwest::Url::parse("http://x/").unwrap();
        url.set_path(&format!("/v1/{kind}"));
        if !params.is_empty() {
            url.query_pairs_mut().extend_pairs(params);
        }
        let path = &url.as_str()["http://x".len()..];
        self.call(Method::GET, path, None).await
    }

    /// The ids `GET /v1/<kind>?tag=<tag>` answers, in its order.
    async fn listed(&self, kind: &str, tag: &str) -> Vec<String> {
        let (status, body) = self.list(kind, &[("tag", tag)]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let field = kind.replace('-', "_");
        body[field.as_str()]
            .as_array()
            .unwrap_or_else(|| panic!("no {field} in {body}"))
            .iter()
            .map(|item| item["id"].as_str().unwrap().to_owned())
            .collect()
    }

    async fn vm(&self, name: &str, groups: &[&str]) -> (StatusCode, Value) {
        self.call(Method::POST, "/v1/vms", Some(vm_body(name, groups)))
            .await
    }
}

fn seed(id: &str, ipv4_cidr: &str, public_pool: Option<&str>, owner: &str) -> SubnetSeed {
    SubnetSeed {
        id: id.into(),
        ipv4_cidr: ipv4_cidr.parse().unwrap(),
        ipv6_cidr: None,
        public_pool: public_pool.map(|p| p.parse().unwrap()),
        owner: owner.into(),
    }
}

/// Whether a problem's type is the one its last path segment names.
fn problem_type_ends_with(problem: &Value, segment: &str) -> bool {
    problem["type"]
        .as_str()
        .is_some_and(|t| t.starts_with("https://") && t.ends_with(&format!("/{segment}")))
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
        json!({"id": "subnet-local", "ipv4_cidr": "127.10.0.0/16", "ipv6_cidr": "fd00:10::/64", "owner": "shared"})
    );
    let (status, _) = sim.call(Method::GET, "/v1/subnets/none", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, group) = sim
        .call(
            Method::POST,
            "/v1/security-groups",
            Some(json!({"name": "cp", "owner": "org-a", "tags": {"k": "v"}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = group["id"].as_str().unwrap();
    assert_eq!(group["tags"], json!({"k": "v"}));
    assert_eq!(group["owner"], "org-a");
    // Read back as it was created.
    let (status, read) = sim
        .call(Method::GET, &format!("/v1/security-groups/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{read}");
    assert_eq!(read, group);
    let (status, missing) = sim
        .call(Method::GET, "/v1/security-groups/sg-none", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        missing["detail"].as_str().unwrap().contains("sg-none"),
        "{missing}"
    );
    assert_eq!(missing["type"], "about:blank");
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

    // In use by a VM: 409 (type in-use) until the VM is gone.
    let (status, vm) = sim.vm("user", &[id]).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = sim
        .call(Method::DELETE, &format!("/v1/security-groups/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(problem_type_ends_with(&body, "in-use"), "{body}");
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
    let (status, _) = sim
        .call(Method::GET, &format!("/v1/security-groups/{id}"), None)
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

fn group_body(name: &str, cluster: &str) -> Value {
    json!({"name": name, "owner": "org-a", "tags": {"plinth.io/cluster-id": cluster, "plinth.io/role": "control-plane"}})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_with_the_same_idempotency_key_returns_the_same_group() {
    let sim = Sim::start().await;
    let path = "/v1/security-groups";
    let body = group_body("cp", "c1");
    let (first_status, first) = sim.keyed(path, body.clone(), "op-1/security-group").await;
    let (again_status, again) = sim.keyed(path, body.clone(), "op-1/security-group").await;
    assert_eq!(
        (first_status, again_status),
        (StatusCode::CREATED, StatusCode::OK),
        "{first} {again}"
    );
    assert_eq!(first, again, "a replay answers the first group as it was");
    let id = first["id"].as_str().unwrap();
    assert_eq!(
        sim.listed("security-groups", "plinth.io/cluster-id=c1")
            .await,
        [id]
    );

    // The same key with another body is refused; nothing is made.
    let (status, refused) = sim
        .keyed(path, group_body("other", "c1"), "op-1/security-group")
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("op-1/security-group was used with a different request"),
        "{refused}"
    );
    assert_eq!(
        sim.listed("security-groups", "plinth.io/cluster-id=c1")
            .await,
        [id]
    );

    // Keys that are not 1 to 255 visible characters.
    let long = "k".repeat(256);
    for bad in ["", "a b", long.as_str()] {
        let (status, problem) = sim.keyed(path, body.clone(), bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}: {problem}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key"),
            "{problem}"
        );
    }
    let (status, _) = sim.keyed(path, body.clone(), &"k".repeat(255)).await;
    assert_eq!(status, StatusCode::CREATED);

    // Without a key, every request makes a group.
    let (_, one) = sim.call(Method::POST, path, Some(body.clone())).await;
    let (_, two) = sim.call(Method::POST, path, Some(body.clone())).await;
    assert_ne!(one["id"], two["id"]);

    // Deleting the group frees its key.
    let (status, _) = sim
        .call(Method::DELETE, &format!("{path}/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, fresh) = sim.keyed(path, body, "op-1/security-group").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(fresh["id"], first["id"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_retries_of_one_group_key_make_one_group() {
    let sim = Sim::start().await;
    let body = group_body("cp", "c-race");
    let answers = futures::future::join_all((0..8).map(|_| {
        sim.keyed(
            "/v1/security-groups",
            body.clone(),
            "op-race/security-group",
        )
    }))
    .await;
    let created = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|(status, group)| { status.is_success() && group["id"] == answers[0].1["id"] })
    );
    assert_eq!(
        sim.listed("security-groups", "plinth.io/cluster-id=c-race")
            .await
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn vm_and_group_keys_are_apart() {
    let sim = Sim::start().await;
    let (status, vm) = sim
        .keyed("/v1/vms", vm_body("cp-1", &[]), "shared-key")
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // The VM's key makes a new group rather than replaying (or refusing) as the VM.
    let (status, group) = sim
        .keyed("/v1/security-groups", group_body("cp", "c1"), "shared-key")
        .await;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    assert!(group["id"].as_str().unwrap().starts_with("sg-"), "{group}");
    // And each replays as its own kind.
    let (status, again) = sim
        .keyed("/v1/security-groups", group_body("cp", "c1"), "shared-key")
        .await;
    assert_eq!((status, &again["id"]), (StatusCode::OK, &group["id"]));
    let (status, again) = sim
        .keyed("/v1/vms", vm_body("cp-1", &[]), "shared-key")
        .await;
    assert_eq!((status, &again["id"]), (StatusCode::OK, &vm["id"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn vms_and_groups_are_listed_by_tag() {
    let sim = Sim::start().await;
    let tagged_vm = |name: &str, cluster: &str| {
        let mut body = vm_body(name, &[]);
        body["tags"]["plinth.io/cluster-id"] = json!(cluster);
        body
    };
    let mut vms = Vec::new();
    for (name, cluster) in [("a-1", "a"), ("b-1", "b"), ("a-2", "a"), ("x", "a=b")] {
        let (status, vm) = sim
            .call(Method::POST, "/v1/vms", Some(tagged_vm(name, cluster)))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{vm}");
        vms.push(vm["id"].as_str().unwrap().to_owned());
    }
    let mut groups = Vec::new();
    for cluster in ["a", "b"] {
        let (status, group) = sim
            .call(
                Method::POST,
                "/v1/security-groups",
                Some(group_body(cluster, cluster)),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{group}");
        assert!(
            time::OffsetDateTime::parse(
                group["created_at"].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339
            )
            .is_ok(),
            "{group}"
        );
        groups.push(group["id"].as_str().unwrap().to_owned());
    }

    // Only what carries the tag, newest first, whole bodies.
    assert_eq!(
        sim.listed("vms", "plinth.io/cluster-id=a").await,
        [vms[2].clone(), vms[0].clone()]
    );
    assert_eq!(
        sim.listed("vms", "plinth.io/cluster-id=b").await,
        [vms[1].clone()]
    );
    assert_eq!(
        sim.listed("security-groups", "plinth.io/cluster-id=a")
            .await,
        [groups[0].clone()]
    );
    assert_eq!(
        sim.listed("vms", "plinth.io/role=control-plane")
            .await
            .len(),
        4
    );
    let (_, listing) = sim.list("vms", &[("tag", "plinth.io/cluster-id=b")]).await;
    let (_, mut read) = sim
        .call(Method::GET, &format!("/v1/vms/{}", vms[1]), None)
        .await;
    // A listing is the VM as read, less its userdata (secrets a listing has no need to carry).
    assert!(read["user_data"].is_string(), "{read}");
    read.as_object_mut().unwrap().remove("user_data");
    assert_eq!(listing["vms"][0], read);
    let (_, listing) = sim
        .list("security-groups", &[("tag", "plinth.io/cluster-id=b")])
        .await;
    assert_eq!(listing["security_groups"][0]["name"], "b");
    assert_eq!(listing["security_groups"][0]["owner"], "org-a");
    assert_eq!(
        listing["security_groups"][0]["tags"],
        json!({"plinth.io/cluster-id": "b", "plinth.io/role": "control-plane"})
    );

    // Split at the first '=': the value may hold one. A key alone matches nothing.
    assert_eq!(
        sim.listed("vms", "plinth.io/cluster-id=a=b").await,
        [vms[3].clone()]
    );
    assert!(sim.listed("vms", "plinth.io/cluster-id=").await.is_empty());
    assert!(sim.listed("vms", "plinth.io/cluster-id=c").await.is_empty());
    assert!(sim.listed("security-groups", "nobody=a").await.is_empty());
    // Unencoded, as a person would type it.
    let (status, raw) = sim
        .call(Method::GET, "/v1/vms?tag=plinth.io/cluster-id=b", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(raw["vms"][0]["id"], vms[1].as_str());

    // A deleted resource is no longer listed.
    let (status, _) = sim
        .call(Method::DELETE, &format!("/v1/vms/{}", vms[0]), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        sim.listed("vms", "plinth.io/cluster-id=a").await,
        [vms[2].clone()]
    );
    let (status, _) = sim
        .call(
            Method::DELETE,
            &format!("/v1/security-groups/{}", groups[0]),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(
        sim.listed("security-groups", "plinth.io/cluster-id=a")
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listing_needs_exactly_one_well_formed_tag_parameter() {
    let sim = Sim::start().await;
    for kind in ["vms", "security-groups"] {
        for params in [
            &[][..],
            &[("tag", "a=1"), ("tag", "b=2")][..],
            &[("tag", "no-equals-sign")][..],
            &[("tag", "=value")][..],
            &[("tag", "a=1"), ("limit", "5")][..],
            &[("tags", "a=1")][..],
        ] {
            let (status, problem) = sim.list(kind, params).await;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{kind} {params:?}: {problem}"
            );
            assert!(
                problem["detail"].as_str().unwrap().contains("tag"),
                "{kind} {params:?}: {problem}"
            );
        }
        let (status, _) = sim
            .call_with(
                Method::GET,
                &format!("/v1/{kind}?tag=a=1"),
                None,
                None,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_faults_are_injected_like_the_others() {
    let sim = Sim::start().await;
    let (status, state) = sim
        .call(
            Method::PUT,
            "/admin/faults",
            Some(json!({
                "list_vms": {"status": 503, "times": 1},
                "list_security_groups": {"status": 500, "after_calls": 1},
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{state}");
    let (status, _) = sim.list("vms", &[("tag", "a=1")]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = sim.list("vms", &[("tag", "a=1")]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = sim.list("security-groups", &[("tag", "a=1")]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = sim.list("security-groups", &[("tag", "a=1")]).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let (_, state) = sim.call(Method::GET, "/admin/faults", None).await;
    assert_eq!(
        (&state["list_vms"]["calls"], &state["list_vms"]["failures"]),
        (&json!(2), &json!(1))
    );
    assert_eq!(
        (
            &state["list_security_groups"]["calls"],
            &state["list_security_groups"]["failures"]
        ),
        (&json!(2), &json!(1))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_creation_whose_answer_is_lost_is_replayed_by_its_key() {
    let sim = Sim::start().await;
    let (status, _) = sim
        .call(
            Method::PUT,
            "/admin/faults",
            Some(
                json!({"create_security_group": {"status": 503, "after_effect": true, "times": 1}}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let body = group_body("cp", "c-lost");
    let (status, _) = sim
        .keyed(
            "/v1/security-groups",
            body.clone(),
            "op-lost/security-group",
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // The group exists although its answer was lost; the retry gets it.
    let made = sim
        .listed("security-groups", "plinth.io/cluster-id=c-lost")
        .await;
    assert_eq!(made.len(), 1);
    let (status, group) = sim
        .keyed("/v1/security-groups", body, "op-lost/security-group")
        .await;
    assert_eq!(
        (status, group["id"].as_str().unwrap()),
        (StatusCode::OK, made[0].as_str())
    );
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
    for (path, method) in [
        ("/v1/vms", "get"),
        ("/v1/vms", "post"),
        ("/v1/security-groups", "get"),
        ("/v1/security-groups", "post"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing"
        );
    }
    for path in ["/v1/vms", "/v1/security-groups"] {
        let params = doc["paths"][path]["get"]["parameters"].as_array().unwrap();
        let tag = params.iter().find(|p| p["name"] == "tag").unwrap();
        assert_eq!(
            (&tag["in"], &tag["required"]),
            (&json!("query"), &json!(true))
        );
        assert!(
            tag["description"]
                .as_str()
                .unwrap()
                .contains("at most 1000"),
            "{tag}"
        );
        let params = doc["paths"][path]["post"]["parameters"].as_array().unwrap();
        assert!(
            params
                .iter()
                .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"),
            "{path}: {params:?}"
        );
        assert!(doc["paths"][path]["post"]["responses"]["200"].is_object());
    }
    assert!(
        doc["paths"]["/v1/security-groups/{id}"]["get"]["responses"]["200"].is_object(),
        "GET /v1/security-groups/{{id}} missing"
    );
    assert!(doc["paths"]["/v1/security-groups/{id}"]["get"]["responses"]["404"].is_object());
    // Owners, and which of them a creation needs.
    let schemas = &doc["components"]["schemas"];
    for schema in ["SubnetBody", "NewSecurityGroupBody", "SecurityGroupBody"] {
        let owner = &schemas[schema]["properties"]["owner"];
        assert!(
            owner["description"].as_str().unwrap().contains("shared")
                && owner["pattern"] == "^[A-Za-z0-9._:-]{1,128}$",
            "{schema}: {owner}"
        );
        assert!(
            schemas[schema]["required"]
                .as_array()
                .unwrap()
                .contains(&json!("owner")),
            "{schema}"
        );
    }
    // The two 409s say their problem types.
    let conflict = |path: &str, method: &str| {
        doc["paths"][path][method]["responses"]["409"]["description"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        conflict("/v1/vms", "post").contains("/capacity-exhausted"),
        "{}",
        conflict("/v1/vms", "post")
    );
    assert!(
        conflict("/v1/security-groups/{id}", "delete").contains("/in-use"),
        "{}",
        conflict("/v1/security-groups/{id}", "delete")
    );
    let problem_type = schemas["Problem"]["properties"]["type"]["description"]
        .as_str()
        .unwrap();
    assert!(
        problem_type.contains("capacity-exhausted") && problem_type.contains("in-use"),
        "{problem_type}"
    );
    for schema in ["VmBody", "VmList", "SecurityGroupList"] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "{schema} missing"
        );
    }
    assert!(
        doc["components"]["schemas"]["SecurityGroupBody"]["properties"]["created_at"].is_object()
    );
    let operations = doc["components"]["schemas"]["Operation"].to_string();
    assert!(
        operations.contains("list_vms")
            && operations.contains("list_security_groups")
            && operations.contains("get_security_group"),
        "{operations}"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

// ---- owners -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_group_is_created_for_a_well_formed_owner_only() {
    let sim = Sim::start().await;
    let path = "/v1/security-groups";
    for owner in ["shared", "org-b", "Org.1_x:y-z", &"o".repeat(128)] {
        let (status, group) = sim
            .call(
                Method::POST,
                path,
                Some(json!({"name": "g", "owner": owner})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{owner}: {group}");
        assert_eq!(group["owner"], owner);
        let (_, read) = sim
            .call(
                Method::GET,
                &format!("{path}/{}", group["id"].as_str().unwrap()),
                None,
            )
            .await;
        assert_eq!(read["owner"], owner);
    }

    // No owner: the body is not the schema's (400, as for any other missing field).
    let (status, problem) = sim
        .call(Method::POST, path, Some(json!({"name": "g"})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("owner"),
        "{problem}"
    );
    // A malformed owner: 422, naming it.
    let long = "o".repeat(129);
    for owner in ["", "org b", "org/b", "orgé", long.as_str()] {
        let (status, problem) = sim
            .call(
                Method::POST,
                path,
                Some(json!({"name": "g", "owner": owner})),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{owner:?}: {problem}"
        );
        assert!(
            problem["detail"].as_str().unwrap().contains("owner"),
            "{problem}"
        );
    }
    let (status, problem) = sim
        .call(Method::POST, path, Some(json!({"name": "g", "owner": 7})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");

    // The owner is part of the request an idempotency key stands for.
    let body = group_body("cp", "c-owner");
    let (status, _) = sim.keyed(path, body.clone(), "op-owner").await;
    assert_eq!(status, StatusCode::CREATED);
    let mut other = body;
    other["owner"] = json!("org-b");
    let (status, problem) = sim.keyed(path, other, "op-owner").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
}

#[tokio::test(flavor = "multi_thread")]
async fn per_org_subnets_are_seeded_with_their_owner_and_reseeded() {
    let sim = Sim::start_with(vec![seed("subnet-b", "10.251.0.0/24", None, "org-b")]).await;
    let (status, subnet) = sim.call(Method::GET, "/v1/subnets/subnet-b", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        subnet,
        json!({"id": "subnet-b", "ipv4_cidr": "10.251.0.0/24", "ipv6_cidr": null, "owner": "org-b"})
    );
    let (_, local) = sim
        .call(Method::GET, "/v1/subnets/subnet-local", None)
        .await;
    assert_eq!(local["owner"], "shared");

    // A restart seeds the configured owner over the stored one.
    let Sim {
        _db: db,
        sim: running,
        client,
    } = sim;
    running.stop().await;
    let mut settings = SimSettings::new(db.url(), TOKEN);
    settings
        .subnets
        .push(seed("subnet-b", "10.251.0.0/24", None, "org-c"));
    let sim = Sim {
        _db: db,
        sim: start(settings).await.unwrap(),
        client,
    };
    let (_, subnet) = sim.call(Method::GET, "/v1/subnets/subnet-b", None).await;
    assert_eq!(subnet["owner"], "org-c");

    // A malformed owner does not start.
    let mut settings = SimSettings::new(sim._db.url(), TOKEN);
    settings
        .subnets
        .push(seed("subnet-x", "10.252.0.0/24", None, "org x"));
    let err = start(settings).await.unwrap_err().to_string();
    assert!(err.contains("owner") && err.contains("subnet-x"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_owner_migration_gives_existing_rows_a_sensible_owner() {
    use diesel::sql_types::Text;
    use diesel_async::{AsyncMigrationHarness, RunQueryDsl};
    use diesel_migrations::MigrationHarness;

    #[derive(diesel::QueryableByName, Debug, PartialEq)]
    struct Owned {
        #[diesel(sql_type = Text)]
        id: String,
        #[diesel(sql_type = Text)]
        owner: String,
    }

    let db = TestDatabase::create_empty().await;
    let mut harness = AsyncMigrationHarness::new(db.connect().await);
    // Up to the migration before owners.
    for _ in 0..3 {
        harness
            .run_next_migration(plinth_compute_sim::store::MIGRATIONS)
            .unwrap();
    }
    let mut conn = harness.into_inner();
    for insert in [
        "INSERT INTO subnets (id, ipv4_cidr) VALUES ('subnet-old', '10.9.0.0/24')",
        "INSERT INTO security_groups (id, name, tags) VALUES \
             ('sg-plinth', 'cluster-c1-control-plane', '{\"plinth.io/org-id\": \"org-a\"}'), \
             ('sg-hand', 'by-hand', '{\"team\": \"infra\"}'), \
             ('sg-odd', 'odd-tag', '{\"plinth.io/org-id\": \"not an org\"}')",
    ] {
        diesel::sql_query(insert).execute(&mut conn).await.unwrap();
    }
    let mut harness = AsyncMigrationHarness::new(conn);
    let applied = harness
        .run_pending_migrations(plinth_compute_sim::store::MIGRATIONS)
        .unwrap();
    assert!(!applied.is_empty());
    let mut conn = harness.into_inner();
    let owners =
        |table: &str| diesel::sql_query(format!("SELECT id, owner FROM {table} ORDER BY id"));
    let subnets: Vec<Owned> = owners("subnets").load(&mut conn).await.unwrap();
    assert_eq!(
        subnets,
        [Owned {
            id: "subnet-old".into(),
            owner: "shared".into()
        }]
    );
    let groups: Vec<Owned> = owners("security_groups").load(&mut conn).await.unwrap();
    let groups: Vec<(&str, &str)> = groups
        .iter()
        .map(|g| (g.id.as_str(), g.owner.as_str()))
        .collect();
    assert_eq!(
        groups,
        [
            ("sg-hand", "shared"),
            ("sg-odd", "shared"),
            ("sg-plinth", "org-a")
        ]
    );
    // New rows must name their owner, and a well-formed one.
    for insert in [
        "INSERT INTO security_groups (id, name) VALUES ('sg-new', 'n')",
        "INSERT INTO security_groups (id, name, owner) VALUES ('sg-new', 'n', 'org a')",
        "INSERT INTO subnets (id, ipv4_cidr) VALUES ('subnet-new', '10.8.0.0/24')",
    ] {
        assert!(
            diesel::sql_query(insert).execute(&mut conn).await.is_err(),
            "{insert}"
        );
    }
}

// ---- telling 409s apart -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn running_out_of_addresses_is_a_capacity_exhausted_conflict() {
    let sim = Sim::start_with(vec![
        // .2 to .6: five VMs.
        seed("subnet-tiny", "10.250.0.0/29", None, "shared"),
        // Plenty of private addresses, a public pool of two.
        seed(
            "subnet-pool",
            "10.251.0.0/24",
            Some("127.30.0.0/30"),
            "org-b",
        ),
    ])
    .await;
    let in_subnet = |name: &str, subnet: &str| {
        let mut body = vm_body(name, &[]);
        body["subnet_id"] = json!(subnet);
        body
    };
    for i in 0..5 {
        let (status, vm) = sim
            .call(
                Method::POST,
                "/v1/vms",
                Some(in_subnet(&format!("t{i}"), "subnet-tiny")),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{vm}");
    }
    let (status, problem) = sim
        .call(
            Method::POST,
            "/v1/vms",
            Some(in_subnet("t5", "subnet-tiny")),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem_type_ends_with(&problem, "capacity-exhausted"),
        "{problem}"
    );
    assert_eq!(
        problem["detail"],
        "subnet subnet-tiny (10.250.0.0/29) has no free IPv4 address left"
    );

    for i in 0..2 {
        let (status, _) = sim
            .call(
                Method::POST,
                "/v1/vms",
                Some(in_subnet(&format!("p{i}"), "subnet-pool")),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (status, problem) = sim
        .call(
            Method::POST,
            "/v1/vms",
            Some(in_subnet("p2", "subnet-pool")),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem_type_ends_with(&problem, "capacity-exhausted"),
        "{problem}"
    );
    assert_eq!(
        problem["detail"],
        "public address pool 127.30.0.0/30 has no free address left"
    );

    // Other problems keep about:blank, an injected 409 included.
    let (status, _) = sim
        .call(
            Method::PUT,
            "/admin/faults",
            Some(json!({"delete_security_group": {"status": 409}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, problem) = sim
        .call(Method::DELETE, "/v1/security-groups/sg-any", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem["type"], "about:blank", "{problem}");
    let (status, problem) = sim.vm("", &[]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["type"], "about:blank", "{problem}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reading_a_group_takes_faults_like_the_other_operations() {
    let sim = Sim::start().await;
    let (_, group) = sim
        .call(
            Method::POST,
            "/v1/security-groups",
            Some(group_body("cp", "c-faults")),
        )
        .await;
    let path = format!("/v1/security-groups/{}", group["id"].as_str().unwrap());
    let (status, state) = sim
        .call(
            Method::PUT,
            "/admin/faults",
            Some(json!({"get_security_group": {"status": 503, "times": 1, "after_calls": 1}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{state}");
    let (status, _) = sim.call(Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK, "the first call is spared");
    let (status, problem) = sim.call(Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(problem["detail"], "injected fault");
    let (status, read) = sim.call(Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read, group);
    let (_, state) = sim.call(Method::GET, "/admin/faults", None).await;
    assert_eq!(
        (
            &state["get_security_group"]["calls"],
            &state["get_security_group"]["failures"]
        ),
        (&json!(3), &json!(1))
    );
    // Other operations are untouched by its rule.
    let (status, _) = sim
        .call(Method::GET, "/v1/subnets/subnet-local", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(state.get("get_subnet").is_none(), "{state}");
}
