//! The `Compute` adapter against the real compute service over HTTP on loopback (on a real
//! PostgreSQL): every call, every injected fault as the right error within its bounds, retries
//! and repeats with the caller's idempotency key that never create a second VM or group, listing
//! a founding's resources by tag, owners of subnets and groups, address allocation under
//! concurrency and exhaustion, and credentials the service refuses.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use plinth_compute_sim::store::SubnetSeed;
use plinth_compute_sim::{RunningSim, SimSettings, start};
use plinth_diesel_pg::testing::TestDatabase;
use plinth_domain::found_cluster::tags;
use plinth_domain::model::{FlavorId, ImageId, OrgId, SecretText, SecurityGroupId, SubnetId, VmId};
use plinth_domain::ports::Chain;
use plinth_domain::ports::compute::{
    Compute, ComputeError, IngressRule, NewSecurityGroup, NewVm, ResourceOwner, RuleProtocol,
    TaggedResource,
};
use plinth_http_compute::{HttpCompute, HttpComputeSettings};
use serde_json::{Value, json};

const TOKEN: &str = "test-compute-token";

struct Fixture {
    db: TestDatabase,
    sim: RunningSim,
    compute: HttpCompute,
}

/// A 5-address subnet without public addresses, for exhaustion.
fn tiny_subnet() -> SubnetSeed {
    SubnetSeed {
        id: "subnet-tiny".into(),
        ipv4_cidr: "10.250.0.0/29".parse().unwrap(),
        ipv6_cidr: None,
        public_pool: None,
        owner: "shared".into(),
    }
}

/// A subnet only org-b may use.
fn org_b_subnet() -> SubnetSeed {
    SubnetSeed {
        id: "subnet-org-b".into(),
        ipv4_cidr: "10.251.0.0/24".parse().unwrap(),
        ipv6_cidr: Some("fd00:251::/64".parse().unwrap()),
        public_pool: None,
        owner: "org-b".into(),
    }
}

fn org(id: &str) -> OrgId {
    OrgId::parse(id).unwrap()
}

impl Fixture {
    async fn start() -> Self {
        Self::start_with(|s| s).await
    }

    async fn start_with(adjust: impl FnOnce(HttpComputeSettings) -> HttpComputeSettings) -> Self {
        let db = TestDatabase::create().await;
        let mut settings = SimSettings::new(db.url(), TOKEN);
        settings.subnets.push(tiny_subnet());
        settings.subnets.push(org_b_subnet());
        let sim = start(settings).await.unwrap();
        let mut client = HttpComputeSettings::new(&sim.base_url(), SecretText::new(TOKEN));
        client.request_timeout_ms = 2000;
        client.backoff_base_ms = 20;
        let compute = HttpCompute::new(adjust(client)).unwrap();
        Self { db, sim, compute }
    }

    /// Sets fault rules through the admin endpoint.
    async fn faults(&self, rules: Value) {
        let response = reqwest::Client::new()
            .put(format!("{}/admin/faults", self.sim.base_url()))
            .bearer_auth(TOKEN)
            .json(&rules)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{}",
            response.text().await.unwrap()
        );
    }

    /// The fault rules' counters.
    async fn fault_state(&self) -> Value {
        reqwest::Client::new()
            .get(format!("{}/admin/faults", self.sim.base_url()))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn rows_named(&self, table: &str, name: &str) -> i64 {
        use diesel::sql_types::{BigInt, Text};
        use diesel_async::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let mut conn = self.db.connect().await;
        diesel::sql_query(format!("SELECT count(*) AS n FROM {table} WHERE name = $1"))
            .bind::<Text, _>(name)
            .get_result::<Count>(&mut conn)
            .await
            .unwrap()
            .n
    }

    async fn vm_rows_named(&self, name: &str) -> i64 {
        self.rows_named("vms", name).await
    }

    async fn group_rows_named(&self, name: &str) -> i64 {
        self.rows_named("security_groups", name).await
    }
}

/// A key no other creation of this test process uses.
fn fresh_key(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("test-{}/{what}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn new_vm(name: &str, subnet: &str) -> NewVm {
    let mut tags = BTreeMap::new();
    tags.insert("plinth.io/role".to_owned(), "control-plane".to_owned());
    NewVm {
        name: name.to_owned(),
        flavor: FlavorId::parse("m1.medium").unwrap(),
        image: ImageId::parse("debian-12").unwrap(),
        subnet: SubnetId::parse(subnet).unwrap(),
        security_groups: vec![],
        tags,
        user_data: SecretText::new("#!/bin/sh\ntrue\n"),
        idempotency_key: fresh_key("vm"),
    }
}

fn group(name: &str) -> NewSecurityGroup {
    let mut tags = BTreeMap::new();
    tags.insert("plinth.io/cluster-id".to_owned(), "c1".to_owned());
    NewSecurityGroup {
        name: name.to_owned(),
        owner: org("org-a"),
        tags,
        idempotency_key: fresh_key("security-group"),
    }
}

// ---- every call -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn subnet_lookup() {
    let f = Fixture::start().await;
    let subnet = f
        .compute
        .subnet(&SubnetId::parse("subnet-local").unwrap())
        .await
        .unwrap();
    assert_eq!(subnet.ipv4_cidr.to_string(), "127.10.0.0/16");
    assert_eq!(subnet.ipv6_cidr.unwrap().to_string(), "fd00:10::/64");
    assert_eq!(subnet.owner, ResourceOwner::Shared);
    let subnet = f
        .compute
        .subnet(&SubnetId::parse("subnet-org-b").unwrap())
        .await
        .unwrap();
    assert_eq!(subnet.id.as_str(), "subnet-org-b");
    assert_eq!(subnet.ipv4_cidr.to_string(), "10.251.0.0/24");
    assert_eq!(subnet.owner, ResourceOwner::Org(org("org-b")));
    assert!(subnet.owner.admits(&org("org-b")) && !subnet.owner.admits(&org("org-a")));
    let err = f
        .compute
        .subnet(&SubnetId::parse("subnet-none").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, ComputeError::NotFound(_)), "{err}");
    assert!(err.to_string().contains("subnet-none"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn groups_and_rules_are_created_and_a_group_in_use_is_a_conflict() {
    let f = Fixture::start().await;
    let id = f.compute.create_security_group(&group("cp")).await.unwrap();
    for rule in [
        IngressRule {
            protocol: RuleProtocol::Any,
            remote: "127.10.0.0/24".parse().unwrap(),
        },
        IngressRule {
            protocol: RuleProtocol::Tcp { port: 6443 },
            remote: "0.0.0.0/0".parse().unwrap(),
        },
        IngressRule {
            protocol: RuleProtocol::Tcp { port: 6443 },
            remote: "::/0".parse().unwrap(),
        },
    ] {
        f.compute.add_ingress_rule(&id, &rule).await.unwrap();
    }
    let missing = SecurityGroupId::parse("sg-missing").unwrap();
    let rule = IngressRule {
        protocol: RuleProtocol::Any,
        remote: "0.0.0.0/0".parse().unwrap(),
    };
    let err = f
        .compute
        .add_ingress_rule(&missing, &rule)
        .await
        .unwrap_err();
    assert!(matches!(err, ComputeError::NotFound(_)), "{err}");

    let mut vm = new_vm("user", "subnet-local");
    vm.security_groups = vec![id.clone()];
    let vm_id = f.compute.create_vm(&vm).await.unwrap();
    let err = f.compute.delete_security_group(&id).await.unwrap_err();
    assert!(matches!(err, ComputeError::Conflict(_)), "{err}");
    assert!(err.to_string().contains(vm_id.as_str()), "{err}");
    f.compute.delete_vm(&vm_id).await.unwrap();
    f.compute.delete_security_group(&id).await.unwrap();
    // Already gone: still fine, as a retry after a lost answer must be.
    f.compute.delete_security_group(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_belongs_to_the_org_it_is_created_for() {
    let f = Fixture::start().await;
    let for_a = f
        .compute
        .create_security_group(&group("for-a"))
        .await
        .unwrap();
    let for_b = f
        .compute
        .create_security_group(&NewSecurityGroup {
            owner: org("org-b"),
            ..group("for-b")
        })
        .await
        .unwrap();
    let read = f.compute.security_group(&for_a).await.unwrap();
    assert_eq!(read.id, for_a);
    assert_eq!(read.owner, ResourceOwner::Org(org("org-a")));
    assert_eq!(
        f.compute.security_group(&for_b).await.unwrap().owner,
        ResourceOwner::Org(org("org-b"))
    );
    // What the service stored is what plinth asked for.
    let stored: Value = reqwest::Client::new()
        .get(format!("{}/v1/security-groups/{for_b}", f.sim.base_url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stored["owner"], "org-b");

    let missing = SecurityGroupId::parse("sg-missing").unwrap();
    let err = f.compute.security_group(&missing).await.unwrap_err();
    assert!(matches!(err, ComputeError::NotFound(_)), "{err}");
    assert!(err.to_string().contains("sg-missing"), "{err}");

    // A safe read: retried on 5xx like reading a subnet.
    f.faults(json!({"get_security_group": {"status": 503, "times": 2}}))
        .await;
    assert_eq!(
        f.compute.security_group(&for_a).await.unwrap().owner,
        ResourceOwner::Org(org("org-a"))
    );
    f.faults(json!({"get_security_group": {"status": 502}}))
        .await;
    let err = f.compute.security_group(&for_a).await.unwrap_err();
    assert!(matches!(err, ComputeError::Unavailable(_)), "{err}");
    assert!(
        Chain(&err)
            .to_string()
            .starts_with("compute service unavailable: reading a security group: "),
        "{}",
        Chain(&err)
    );
    assert_eq!(f.fault_state().await["get_security_group"]["calls"], 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_is_created_read_and_deleted() {
    let f = Fixture::start().await;
    let id = f
        .compute
        .create_vm(&new_vm("cp-1", "subnet-local"))
        .await
        .unwrap();
    let vm = f.compute.get_vm(&id).await.unwrap();
    assert_eq!(vm.id, id.as_str());
    assert_eq!(vm.name, "cp-1");
    assert_eq!(vm.ipv4.as_deref(), Some("127.10.0.2"));
    assert_eq!(vm.ipv6.as_deref(), Some("fd00:10::2"));
    assert_eq!(vm.public_ipv4.as_deref(), Some("127.20.0.1"));
    assert_eq!(vm.user_data.expose(), "#!/bin/sh\ntrue\n");
    assert_eq!(vm.tags["plinth.io/role"], "control-plane");
    f.compute.delete_vm(&id).await.unwrap();
    let err = f.compute.get_vm(&id).await.unwrap_err();
    assert!(matches!(err, ComputeError::NotFound(_)), "{err}");
    f.compute.delete_vm(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_request_carries_the_services_message() {
    let f = Fixture::start().await;
    let mut vm = new_vm("cp-1", "subnet-local");
    vm.security_groups = vec![SecurityGroupId::parse("sg-ghost").unwrap()];
    let err = f.compute.create_vm(&vm).await.unwrap_err();
    let ComputeError::Rejected(message) = &err else {
        panic!("{err}")
    };
    assert!(
        message.contains("security groups do not exist: sg-ghost"),
        "{message}"
    );
}

// ---- faults -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn each_injected_fault_surfaces_as_the_right_error_within_its_bound() {
    let f = Fixture::start_with(|mut s| {
        s.request_timeout_ms = 500;
        s
    })
    .await;
    let subnet = SubnetId::parse("subnet-local").unwrap();
    f.faults(json!({
        "get_subnet": {"status": 404},
        "create_security_group": {"status": 409},
        "add_rule": {"status": 422},
        "get_vm": {"status": 503},
        "delete_vm": {"latency_ms": 3000},
        "delete_security_group": {"status": 500},
    }))
    .await;

    let bounded = |started: Instant, limit: Duration| {
        let took = started.elapsed();
        assert!(took < limit, "took {took:?}, bound {limit:?}");
    };
    let started = Instant::now();
    let err = f.compute.subnet(&subnet).await.unwrap_err();
    assert!(matches!(err, ComputeError::NotFound(_)), "{err}");
    let err = f
        .compute
        .create_security_group(&group("g"))
        .await
        .unwrap_err();
    assert!(matches!(err, ComputeError::Conflict(_)), "{err}");
    let g = SecurityGroupId::parse("sg-any").unwrap();
    let rule = IngressRule {
        protocol: RuleProtocol::Any,
        remote: "0.0.0.0/0".parse().unwrap(),
    };
    let err = f.compute.add_ingress_rule(&g, &rule).await.unwrap_err();
    let ComputeError::Rejected(message) = &err else {
        panic!("{err}")
    };
    assert!(message.contains("injected fault"), "{message}");
    bounded(started, Duration::from_secs(2));

    // 5xx on a retry-safe call: retried, then Unavailable.
    let started = Instant::now();
    let err = f
        .compute
        .get_vm(&VmId::parse("vm-x").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, ComputeError::Unavailable(_)), "{err}");
    let why = Chain(&err).to_string();
    assert!(
        why.starts_with("compute service unavailable: reading a VM: ")
            && why.ends_with("(503 Service Unavailable)"),
        "{why}"
    );
    bounded(started, Duration::from_secs(3));
    let err = f.compute.delete_security_group(&g).await.unwrap_err();
    assert!(matches!(err, ComputeError::Unavailable(_)), "{err}");

    // Latency past the request timeout: Timeout, after at most 3 attempts of 500 ms.
    let started = Instant::now();
    let err = f
        .compute
        .delete_vm(&VmId::parse("vm-x").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, ComputeError::Timeout(_)), "{err}");
    let why = Chain(&err).to_string();
    assert!(
        why.starts_with("compute call timed out: deleting a VM: no answer within 500ms: "),
        "{why}"
    );
    bounded(started, Duration::from_secs(4));

    let state = f.fault_state().await;
    assert_eq!(
        state["get_vm"]["calls"], 3,
        "a retry-safe call is tried 3 times"
    );
    assert_eq!(
        state["create_security_group"]["calls"], 1,
        "a 409 is an answer, not retried"
    );
    assert_eq!(
        state["add_rule"]["calls"], 1,
        "a 422 is an answer, not retried"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn creations_with_a_key_and_listings_are_retried_rule_creation_is_not() {
    let f = Fixture::start().await;
    f.faults(json!({
        "create_security_group": {"status": 503, "times": 2},
        "add_rule": {"status": 503},
        "list_vms": {"status": 502, "times": 2},
        "list_security_groups": {"status": 503},
    }))
    .await;
    let id = f
        .compute
        .create_security_group(&group("twice"))
        .await
        .unwrap();
    assert_eq!(f.group_rows_named("twice").await, 1);
    let rule = IngressRule {
        protocol: RuleProtocol::Any,
        remote: "0.0.0.0/0".parse().unwrap(),
    };
    let err = f.compute.add_ingress_rule(&id, &rule).await.unwrap_err();
    assert!(matches!(err, ComputeError::Unavailable(_)), "{err}");
    assert!(f.compute.list_vms("k", "v").await.unwrap().is_empty());
    let err = f.compute.list_security_groups("k", "v").await.unwrap_err();
    assert!(matches!(err, ComputeError::Unavailable(_)), "{err}");
    assert!(
        Chain(&err)
            .to_string()
            .starts_with("compute service unavailable: listing security groups by tag: "),
        "{}",
        Chain(&err)
    );

    let state = f.fault_state().await;
    let calls = |operation: &str| state[operation]["calls"].as_u64().unwrap();
    assert_eq!(calls("create_security_group"), 3, "{state}");
    assert_eq!(calls("add_rule"), 1, "adding a rule is never retried");
    assert_eq!(calls("list_vms"), 3, "{state}");
    assert_eq!(calls("list_security_groups"), 3, "{state}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_and_a_dead_service_are_reported_as_such() {
    let f = Fixture::start_with(|mut s| {
        s.token = Some(SecretText::new("not-the-token"));
        s
    })
    .await;
    let err = f
        .compute
        .subnet(&SubnetId::parse("subnet-local").unwrap())
        .await
        .unwrap_err();
    let ComputeError::Unauthorized(message) = &err else {
        panic!("{err}")
    };
    assert_eq!(
        message,
        "reading a subnet: a valid bearer service token is required (401 Unauthorized)"
    );
    let err = f
        .compute
        .security_group(&SecurityGroupId::parse("sg-any").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, ComputeError::Unauthorized(_)), "{err}");
    let err = f
        .compute
        .create_security_group(&group("refused"))
        .await
        .unwrap_err();
    assert!(matches!(err, ComputeError::Unauthorized(_)), "{err}");
    let err = f
        .compute
        .create_vm(&new_vm("refused", "subnet-local"))
        .await
        .unwrap_err();
    assert!(matches!(err, ComputeError::Unauthorized(_)), "{err}");
    assert_eq!(f.group_rows_named("refused").await, 0);
    assert_eq!(f.vm_rows_named("refused").await, 0);

    let base = f.sim.base_url();
    f.sim.stop().await;
    let mut settings = HttpComputeSettings::new(&base, SecretText::new(TOKEN));
    settings.backoff_base_ms = 10;
    let dead = HttpCompute::new(settings).unwrap();
    let started = Instant::now();
    let err = dead
        .subnet(&SubnetId::parse("subnet-local").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, ComputeError::Unavailable(_)), "{err}");
    // The cause is reqwest's, with the address that refused.
    let why = Chain(&err).to_string();
    assert!(
        why.starts_with("compute service unavailable: reading a subnet: "),
        "{why}"
    );
    assert!(why.contains(base.trim_start_matches("http://")), "{why}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_create_whose_answer_is_lost_is_retried_into_the_same_vm() {
    let f = Fixture::start().await;
    // The VM is made, then the answer fails: the adapter retries with the same key.
    f.faults(json!({"create_vm": {"status": 503, "times": 1, "after_effect": true}}))
        .await;
    let id = f
        .compute
        .create_vm(&new_vm("lost-answer", "subnet-local"))
        .await
        .unwrap();
    assert_eq!(
        f.vm_rows_named("lost-answer").await,
        1,
        "the retry made a second VM"
    );
    assert_eq!(f.compute.get_vm(&id).await.unwrap().name, "lost-answer");

    // Failing before the work: the retry makes the one VM.
    f.faults(json!({"create_vm": {"status": 502, "times": 2}}))
        .await;
    f.compute
        .create_vm(&new_vm("refused-twice", "subnet-local"))
        .await
        .unwrap();
    assert_eq!(f.vm_rows_named("refused-twice").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_creation_whose_answer_is_lost_is_retried_into_the_same_group() {
    let f = Fixture::start().await;
    // The group is made, then the answer fails: the adapter retries with the caller's key.
    f.faults(json!({"create_security_group": {"status": 503, "after_effect": true, "times": 1}}))
        .await;
    let lost = group("lost-answer");
    let id = f.compute.create_security_group(&lost).await.unwrap();
    assert_eq!(
        f.group_rows_named("lost-answer").await,
        1,
        "the retry made a second group"
    );
    let state = f.fault_state().await;
    assert_eq!(
        (
            &state["create_security_group"]["calls"],
            &state["create_security_group"]["failures"]
        ),
        (&json!(2), &json!(1))
    );
    // The caller repeating the creation (an unknown outcome resolved after a restart) gets the
    // same group too.
    assert_eq!(f.compute.create_security_group(&lost).await.unwrap(), id);
    assert_eq!(f.group_rows_named("lost-answer").await, 1);
    // Another key is another group.
    let other = NewSecurityGroup {
        idempotency_key: fresh_key("security-group"),
        ..lost.clone()
    };
    assert_ne!(f.compute.create_security_group(&other).await.unwrap(), id);
    assert_eq!(f.group_rows_named("lost-answer").await, 2);
    // The same key for another group is refused, naming the key.
    let changed = NewSecurityGroup {
        name: "changed".into(),
        ..lost.clone()
    };
    let err = f.compute.create_security_group(&changed).await.unwrap_err();
    let ComputeError::Rejected(message) = &err else {
        panic!("{err}")
    };
    assert!(
        message.contains(&lost.idempotency_key) && message.contains("different request"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_callers_key_makes_a_repeated_vm_creation_the_same_vm() {
    let f = Fixture::start().await;
    let vm = new_vm("repeated", "subnet-local");
    let first = f.compute.create_vm(&vm).await.unwrap();
    // Exhausted retries leave the outcome unknown; the caller repeats with the same key later.
    f.faults(json!({"create_vm": {"status": 503, "after_effect": true, "times": 3}}))
        .await;
    let err = f.compute.create_vm(&vm).await.unwrap_err();
    assert!(matches!(err, ComputeError::Unavailable(_)), "{err}");
    assert_eq!(f.compute.create_vm(&vm).await.unwrap(), first);
    assert_eq!(f.vm_rows_named("repeated").await, 1);
    let other = NewVm {
        idempotency_key: fresh_key("vm"),
        ..vm.clone()
    };
    assert_ne!(f.compute.create_vm(&other).await.unwrap(), first);
    assert_eq!(f.vm_rows_named("repeated").await, 2);
}

// ---- listing by tag ---------------------------------------------------------------------------

/// The tags a founding puts on its resources (`FoundCluster`'s tag keys).
fn founding_tags(operation: &str, cluster: &str, ordinal: Option<u8>) -> BTreeMap<String, String> {
    let mut t = BTreeMap::new();
    t.insert(tags::ROLE.to_owned(), tags::ROLE_CONTROL_PLANE.to_owned());
    t.insert(tags::CLUSTER_ID.to_owned(), cluster.to_owned());
    t.insert(tags::ORG_ID.to_owned(), "org-a".to_owned());
    t.insert(tags::OPERATION_ID.to_owned(), operation.to_owned());
    if let Some(ordinal) = ordinal {
        t.insert(tags::ORDINAL.to_owned(), ordinal.to_string());
    }
    t
}

/// What a founding creates, with its keys: one group, then `nodes` VMs in it.
async fn found(
    compute: &HttpCompute,
    operation: &str,
    cluster: &str,
    nodes: u8,
) -> (SecurityGroupId, Vec<VmId>) {
    let group = compute
        .create_security_group(&NewSecurityGroup {
            name: format!("cluster-{cluster}-control-plane"),
            owner: org("org-a"),
            tags: founding_tags(operation, cluster, None),
            idempotency_key: format!("{operation}/security-group"),
        })
        .await
        .unwrap();
    let mut vms = Vec::new();
    for n in 0..nodes {
        let mut vm = new_vm(&format!("{cluster}-cp-{n}"), "subnet-local");
        vm.security_groups = vec![group.clone()];
        vm.tags = founding_tags(operation, cluster, Some(n));
        vm.idempotency_key = format!("{operation}/vm/{n}");
        vms.push(compute.create_vm(&vm).await.unwrap());
    }
    (group, vms)
}

fn ids(resources: &[TaggedResource]) -> Vec<&str> {
    resources.iter().map(|r| r.id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_by_tag_finds_a_foundings_resources() {
    let f = Fixture::start().await;
    let before = time::OffsetDateTime::now_utc() - Duration::from_secs(5);
    let (group, vms) = found(&f.compute, "op-1", "c-1", 3).await;
    let (other_group, other_vms) = found(&f.compute, "op-2", "c-2", 1).await;
    let after = time::OffsetDateTime::now_utc() + Duration::from_secs(5);

    let listed = f
        .compute
        .list_vms(tags::OPERATION_ID, "op-1")
        .await
        .unwrap();
    // Newest first.
    let mut expected: Vec<&str> = vms.iter().map(VmId::as_str).collect();
    expected.reverse();
    assert_eq!(ids(&listed), expected);
    for vm in &listed {
        assert_eq!(vm.tags[tags::CLUSTER_ID], "c-1");
        assert!(before < vm.created_at && vm.created_at < after, "{vm:?}");
    }
    assert_eq!(listed[2].tags[tags::ORDINAL], "0");
    let listed = f
        .compute
        .list_security_groups(tags::OPERATION_ID, "op-1")
        .await
        .unwrap();
    assert_eq!(ids(&listed), [group.as_str()]);
    assert_eq!(listed[0].tags, founding_tags("op-1", "c-1", None));
    assert!(before < listed[0].created_at && listed[0].created_at < after);

    // By another tag: both foundings; by the other operation: only its resources.
    let all = f
        .compute
        .list_vms(tags::ROLE, tags::ROLE_CONTROL_PLANE)
        .await
        .unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(
        ids(&f.compute.list_vms(tags::CLUSTER_ID, "c-2").await.unwrap()),
        [other_vms[0].as_str()]
    );
    assert_eq!(
        ids(&f
            .compute
            .list_security_groups(tags::OPERATION_ID, "op-2")
            .await
            .unwrap()),
        [other_group.as_str()]
    );
    assert!(
        f.compute
            .list_vms(tags::OPERATION_ID, "op-3")
            .await
            .unwrap()
            .is_empty()
    );

    // A repeated founding step (same keys) makes nothing new; a rollback's deletions empty the
    // listings.
    let (again_group, again_vms) = found(&f.compute, "op-1", "c-1", 3).await;
    assert_eq!((again_group, again_vms), (group.clone(), vms.clone()));
    for vm in &vms {
        f.compute.delete_vm(vm).await.unwrap();
    }
    f.compute.delete_security_group(&group).await.unwrap();
    assert!(
        f.compute
            .list_vms(tags::OPERATION_ID, "op-1")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        f.compute
            .list_security_groups(tags::OPERATION_ID, "op-1")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_with_awkward_characters_are_listed_exactly() {
    let f = Fixture::start().await;
    let mut vm = new_vm("awkward", "subnet-local");
    vm.tags.insert("a/b c".into(), "x=y&z+1 é".into());
    let id = f.compute.create_vm(&vm).await.unwrap();
    let listed = f.compute.list_vms("a/b c", "x=y&z+1 é").await.unwrap();
    assert_eq!(ids(&listed), [id.as_str()]);
    assert!(
        f.compute
            .list_vms("a/b c", "x=y&z 1 é")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(f.compute.list_vms("a/b c", "x").await.unwrap().is_empty());
}

// ---- addresses --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_creations_get_fifty_distinct_addresses() {
    let f = Fixture::start().await;
    let vms: Vec<NewVm> = (0..50)
        .map(|i| new_vm(&format!("vm-{i}"), "subnet-local"))
        .collect();
    let ids = futures::future::try_join_all(vms.iter().map(|vm| f.compute.create_vm(vm)))
        .await
        .unwrap();
    let mut private = HashSet::new();
    let mut public = HashSet::new();
    let mut v6 = HashSet::new();
    for id in &ids {
        let vm = f.compute.get_vm(id).await.unwrap();
        let ip: Ipv4Addr = vm.ipv4.unwrap().parse().unwrap();
        assert!(
            ip.octets()[..3] == [127, 10, 0] && !matches!(ip.octets()[3], 0 | 1 | 255),
            "{ip}"
        );
        private.insert(ip);
        public.insert(vm.public_ipv4.unwrap());
        v6.insert(vm.ipv6.unwrap());
    }
    assert_eq!((private.len(), public.len(), v6.len()), (50, 50, 50));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exhausted_subnet_is_a_clear_conflict_and_freed_addresses_are_reused() {
    let f = Fixture::start().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            f.compute
                .create_vm(&new_vm(&format!("t{i}"), "subnet-tiny"))
                .await
                .unwrap(),
        );
    }
    let err = f
        .compute
        .create_vm(&new_vm("t5", "subnet-tiny"))
        .await
        .unwrap_err();
    let ComputeError::CapacityExhausted(message) = &err else {
        panic!("{err}")
    };
    assert!(
        message.contains("subnet-tiny (10.250.0.0/29) has no free IPv4 address left"),
        "{message}"
    );

    let freed = f.compute.get_vm(&ids[2]).await.unwrap().ipv4.unwrap();
    f.compute.delete_vm(&ids[2]).await.unwrap();
    let again = f
        .compute
        .create_vm(&new_vm("t6", "subnet-tiny"))
        .await
        .unwrap();
    assert_eq!(f.compute.get_vm(&again).await.unwrap().ipv4.unwrap(), freed);
}
