//! `POST /clusters`: the answer of a founding, and every hard stop's status and problem type.

use actix_web::http::StatusCode;

use std::sync::Arc;

use plinth_domain::found_cluster::{FoundingSettings, Submitted};
use plinth_domain::model::{ClusterRequest, OrgId, SecurityGroupId, SubnetId, VmId};
use plinth_domain::ports::compute::{
    Compute, ComputeError, IngressRule, MockCompute, NewSecurityGroup, NewVm, SecurityGroup,
    Subnet, TaggedResource,
};

use crate::support::{
    ComputeFault, Fail, RepoFault, founding, founding_settings, post_cluster, send,
};

async fn found(fail: Fail) -> crate::support::Answer {
    let state = founding(fail, false).state();
    send(&state, post_cluster(r#"{"name":"prod"}"#)).await
}

/// Status and problem type of a founding stopped at `fail`.
async fn stop(fail: Fail) -> (StatusCode, String) {
    let answer = found(fail).await;
    (answer.status, answer.problem())
}

#[actix_web::test]
async fn a_founding_answers_201_with_location_and_the_kubeconfig() {
    let answer = found(Fail::Nothing).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
    let body = answer.json();
    let id = body["cluster_id"].as_str().unwrap();
    assert_eq!(answer.header("location"), format!("/clusters/{id}"));
    assert_eq!(answer.header("cache-control"), "no-store");
    assert_eq!(body["name"], "prod");
    assert_eq!(body["vm_ids"], serde_json::json!(["vm-1", "vm-2", "vm-3"]));
    assert_eq!(body["nodes"].as_array().unwrap().len(), 3);
    assert!(
        body["admin_kubeconfig"]
            .as_str()
            .unwrap()
            .contains("client-key-data")
    );
    assert_eq!(body["dns_configured"], false);
    assert_eq!(
        body["bootstrap_path_template"],
        format!("/bootstrap/{id}/nodes/{{node_name}}")
    );
}

#[actix_web::test]
async fn trust_material_failures_are_500_without_internals() {
    for fail in [Fail::CreateCa, Fail::ServiceAccountKey, Fail::SignNodeCert] {
        let answer = found(fail).await;
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR, "{fail:?}");
        assert_eq!(answer.problem(), "trust-material-failed");
        let text = String::from_utf8_lossy(&answer.body);
        assert!(
            !text.contains("entropy") && !text.contains("bad SAN"),
            "{text}"
        );
    }
}

#[actix_web::test]
async fn a_taken_name_is_409_name_taken() {
    assert_eq!(
        stop(Fail::Claim(RepoFault::Conflict)).await,
        (StatusCode::CONFLICT, "name-taken".into())
    );
}

#[actix_web::test]
async fn a_database_failure_before_any_side_effect_is_503_with_retry_after() {
    let answer = found(Fail::Claim(RepoFault::Unavailable)).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.problem(), "database-unavailable");
    assert_eq!(answer.header("retry-after"), "2");
}

#[actix_web::test]
async fn a_database_failure_after_side_effects_is_503_and_reports_the_cleanup() {
    for fail in [Fail::RecordGroups, Fail::Commit] {
        let answer = found(fail).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{fail:?}");
        assert_eq!(answer.problem(), "database-unavailable");
        let cleanup = &answer.json()["cleanup"];
        assert!(
            cleanup["removed"]
                .as_array()
                .unwrap()
                .contains(&"security_group sg-created".into()),
            "{fail:?}: {cleanup}"
        );
    }
}

#[actix_web::test]
async fn an_unknown_subnet_is_422_for_the_callers_and_502_for_the_deployments_default() {
    let state = founding(Fail::Subnet(ComputeFault::NotFound), false).state();
    let named = send(&state, post_cluster(r#"{"subnet_id":"subnet-typo"}"#)).await;
    assert_eq!(named.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(named.problem(), "compute-refused");
    assert!(
        named.json()["detail"]
            .as_str()
            .unwrap()
            .contains("no such subnet")
    );
    // No subnet named: the deployment's default is missing, an operator's problem.
    let defaulted = found(Fail::Subnet(ComputeFault::NotFound)).await;
    assert_eq!(defaulted.status, StatusCode::BAD_GATEWAY);
    assert_eq!(defaulted.problem(), "compute-misconfigured");
}

#[actix_web::test]
async fn a_compute_timeout_is_504_compute_timeout() {
    assert_eq!(
        stop(Fail::Subnet(ComputeFault::Timeout)).await,
        (StatusCode::GATEWAY_TIMEOUT, "compute-timeout".into())
    );
}

#[actix_web::test]
async fn a_compute_outage_while_making_the_group_is_502_compute_failed() {
    for fail in [
        Fail::CreateGroup(ComputeFault::Unavailable),
        Fail::AddRule(ComputeFault::Unavailable),
    ] {
        assert_eq!(
            stop(fail).await,
            (StatusCode::BAD_GATEWAY, "compute-failed".into()),
            "{fail:?}"
        );
    }
}

#[actix_web::test]
async fn a_refused_rule_is_422_and_the_group_is_deleted_again() {
    let answer = found(Fail::AddRule(ComputeFault::Rejected)).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.problem(), "compute-refused");
    assert_eq!(
        answer.json()["cleanup"]["removed"],
        serde_json::json!(["security_group sg-created"])
    );
}

#[actix_web::test]
async fn a_refused_vm_is_422_naming_the_node_and_the_reason() {
    let answer = found(Fail::CreateVm(ComputeFault::Rejected)).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.problem(), "compute-refused");
    let body = answer.json();
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("cp-2") && detail.contains("m1.huge"),
        "{detail}"
    );
    let removed = body["cleanup"]["removed"].as_array().unwrap();
    assert!(removed.contains(&"vm vm-1".into()) && removed.contains(&"vm vm-3".into()));
}

#[actix_web::test]
async fn no_free_address_is_409_compute_conflict() {
    assert_eq!(
        stop(Fail::CreateVm(ComputeFault::Conflict)).await,
        (StatusCode::CONFLICT, "compute-conflict".into())
    );
}

#[actix_web::test]
async fn a_vm_outage_is_502_without_the_platforms_words() {
    let answer = found(Fail::CreateVm(ComputeFault::Unavailable)).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.problem(), "compute-failed");
    assert!(!String::from_utf8_lossy(&answer.body).contains("503 from compute"));
}

#[actix_web::test]
async fn unreadable_vm_rows_are_502_vm_lookup_failed() {
    assert_eq!(
        stop(Fail::VmLookup).await,
        (StatusCode::BAD_GATEWAY, "vm-lookup-failed".into())
    );
}

#[actix_web::test]
async fn vms_without_addresses_by_the_deadline_are_504() {
    let answer = found(Fail::NoAddresses).await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(answer.problem(), "vm-addresses-timeout");
    assert_eq!(
        answer.json()["cleanup"]["removed"]
            .as_array()
            .unwrap()
            .len(),
        4,
        "three VMs and the group"
    );
}

#[actix_web::test]
async fn what_could_not_be_cleaned_up_is_listed_as_left_behind() {
    let state = founding(Fail::Commit, true).state();
    let answer = send(&state, post_cluster("{}")).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    let cleanup = &answer.json()["cleanup"];
    assert_eq!(cleanup["removed"], serde_json::json!([]));
    assert_eq!(
        cleanup["left_behind"].as_array().unwrap().len(),
        4,
        "{cleanup}"
    );
}

/// A compute service whose VM creations never answer: a founding on it runs until it is dropped.
struct Hanging(MockCompute);

#[async_trait::async_trait]
impl Compute for Hanging {
    async fn subnet(&self, id: &SubnetId) -> Result<Subnet, ComputeError> {
        self.0.subnet(id).await
    }
    async fn security_group(&self, id: &SecurityGroupId) -> Result<SecurityGroup, ComputeError> {
        self.0.security_group(id).await
    }
    async fn create_security_group(
        &self,
        group: &NewSecurityGroup,
    ) -> Result<SecurityGroupId, ComputeError> {
        self.0.create_security_group(group).await
    }
    async fn add_ingress_rule(
        &self,
        group: &SecurityGroupId,
        rule: &IngressRule,
    ) -> Result<(), ComputeError> {
        self.0.add_ingress_rule(group, rule).await
    }
    async fn create_vm(&self, _: &NewVm) -> Result<VmId, ComputeError> {
        std::future::pending().await
    }
    async fn delete_vm(&self, id: &VmId) -> Result<(), ComputeError> {
        self.0.delete_vm(id).await
    }
    async fn delete_security_group(&self, id: &SecurityGroupId) -> Result<(), ComputeError> {
        self.0.delete_security_group(id).await
    }
    async fn list_vms(&self, key: &str, value: &str) -> Result<Vec<TaggedResource>, ComputeError> {
        self.0.list_vms(key, value).await
    }
    async fn list_security_groups(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<TaggedResource>, ComputeError> {
        self.0.list_security_groups(key, value).await
    }
}

#[actix_web::test]
async fn beyond_max_in_flight_a_founding_is_429_with_retry_after() {
    let mut doubles = founding(Fail::Nothing, false);
    let compute = std::mem::replace(&mut doubles.compute, MockCompute::new());
    let settings = FoundingSettings {
        max_in_flight: 1,
        ..founding_settings()
    };
    let state = doubles.state_with(Arc::new(Hanging(compute)), settings);
    let spec = ClusterRequest::default()
        .validate(&state.foundings.settings().defaults)
        .unwrap();
    let Ok(Submitted::Started(running)) = state
        .foundings
        .submit(OrgId::parse("org-a").unwrap(), spec, None)
        .await
    else {
        panic!("the first founding did not start");
    };
    let answer = send(&state, post_cluster("{}")).await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(answer.problem(), "too-many-foundings");
    assert_eq!(answer.header("retry-after"), "2");
    running.outcome.abort();
}
