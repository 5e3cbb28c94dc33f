//! The domain's `FoundCluster` on the real adapters — this compute adapter against the real
//! compute service, PostgreSQL, the x509 PKI — with 200 ms of injected latency on every VM
//! creation: the VMs are created concurrently (all five calls are in flight at once), and the
//! founding's rows hold the addresses the compute service gave.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use plinth_compute_sim::faults::Operation;
use plinth_domain::model::{ClusterRequest, OrgId, SecretText};
use plinth_domain::ports::repo::Repo;
use plinth_http_compute::{HttpCompute, HttpComputeSettings};
use plinth_testkit::{COMPUTE_TOKEN, FoundingStack, TimedCompute};

#[tokio::test(flavor = "multi_thread")]
async fn founding_five_nodes_creates_the_vms_concurrently_on_the_real_compute_service() {
    let stack =
        FoundingStack::start(&[(Operation::CreateVm, serde_json::json!({"latency_ms": 200}))])
            .await;
    let settings = HttpComputeSettings::new(&stack.sim.base_url(), SecretText::new(COMPUTE_TOKEN));
    let compute = Arc::new(TimedCompute::new(HttpCompute::new(settings).unwrap()));
    let use_case = stack.use_case(compute.clone(), None);
    let org = OrgId::parse("org-a").unwrap();
    let request = ClusterRequest {
        control_plane_count: Some(5),
        ..ClusterRequest::default()
    };

    let started = Instant::now();
    let spec = request.validate(&use_case.settings().defaults).unwrap();
    let founded = use_case.found(&org, spec).await.unwrap();
    let total = started.elapsed();

    let creations = compute.take_creations();
    assert_eq!(creations.len(), 5);
    let first_start = creations.iter().map(|(s, _)| *s).min().unwrap();
    let last_start = creations.iter().map(|(s, _)| *s).max().unwrap();
    let first_end = creations.iter().map(|(_, e)| *e).min().unwrap();
    let last_end = creations.iter().map(|(_, e)| *e).max().unwrap();
    // Concurrency, by order rather than by the clock: every creation began before any ended.
    assert!(last_start < first_end, "VM creations ran one after another");
    println!(
        "founding 5 nodes with 200 ms injected per VM creation: VM creation step {:?} \
         (sum of the five calls {:?}), whole founding {:?}",
        last_end - first_start,
        creations.iter().map(|(s, e)| *e - *s).sum::<Duration>(),
        total
    );

    // The rows hold what the compute service recorded.
    let details = stack
        .repo
        .find_cluster(&org, founded.cluster_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(details.nodes.len(), 5);
    for node in &details.nodes {
        let vm = compute.inner.get_vm(&node.vm_id).await.unwrap();
        assert_eq!(vm.ipv4.unwrap(), node.addresses.ipv4.to_string());
        assert_eq!(
            vm.public_ipv4.unwrap(),
            node.addresses.public_ipv4.unwrap().to_string()
        );
        assert_eq!(vm.name, node.name.as_str());
        assert_eq!(
            vm.tags["plinth.io/cluster-id"],
            founded.cluster_id.to_string()
        );
        assert_eq!(vm.tags["plinth.io/ordinal"], node.ordinal.to_string());
        assert!(vm.user_data.expose().contains(&format!(
            "/bootstrap/{}/nodes/{}",
            founded.cluster_id, node.name
        )));
    }
    assert!(!founded.dns_configured);
}
