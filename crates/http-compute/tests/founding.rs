//! The domain's `FoundCluster` on the real adapters — this compute adapter against the real
//! compute service, PostgreSQL, the x509 PKI — with 200 ms of injected latency on every VM
//! creation: the VMs are created concurrently (all five calls are in flight at once), and the
//! founding's rows hold the addresses the compute service gave.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use plinth_compute_sim::{SimSettings, start};
use plinth_diesel_pg::testing::TestDatabase;
use plinth_diesel_pg::{Envelope, PgRepo, PgSettings};
use plinth_domain::found_cluster::{BootstrapBaseUrl, FoundCluster, FoundingSettings};
use plinth_domain::model::{
    ClusterDefaults, ClusterRequest, DnsZone, FlavorId, ImageId, Networking, OrgId, SecretText,
    SecurityGroupId, SubnetId, VmId,
};
use plinth_domain::ports::compute::{
    Compute, ComputeError, IngressRule, NewSecurityGroup, NewVm, Subnet,
};
use plinth_domain::ports::repo::Repo;
use plinth_http_compute::{HttpCompute, HttpComputeSettings};
use plinth_x509_pki::{PkiSettings, X509Pki};

const TOKEN: &str = "test-compute-token";

/// Passes calls through, noting when each VM creation started and ended.
struct Timed {
    inner: HttpCompute,
    creations: Mutex<Vec<(Instant, Instant)>>,
}

#[async_trait]
impl Compute for Timed {
    async fn subnet(&self, id: &SubnetId) -> Result<Subnet, ComputeError> {
        self.inner.subnet(id).await
    }
    async fn create_security_group(
        &self,
        g: &NewSecurityGroup,
    ) -> Result<SecurityGroupId, ComputeError> {
        self.inner.create_security_group(g).await
    }
    async fn add_ingress_rule(
        &self,
        g: &SecurityGroupId,
        r: &IngressRule,
    ) -> Result<(), ComputeError> {
        self.inner.add_ingress_rule(g, r).await
    }
    async fn create_vm(&self, vm: &NewVm) -> Result<VmId, ComputeError> {
        let started = Instant::now();
        let result = self.inner.create_vm(vm).await;
        self.creations
            .lock()
            .unwrap()
            .push((started, Instant::now()));
        result
    }
    async fn delete_vm(&self, id: &VmId) -> Result<(), ComputeError> {
        self.inner.delete_vm(id).await
    }
    async fn delete_security_group(&self, id: &SecurityGroupId) -> Result<(), ComputeError> {
        self.inner.delete_security_group(id).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn founding_five_nodes_creates_the_vms_concurrently_on_the_real_compute_service() {
    let db = TestDatabase::create().await;
    let mut sim_settings = SimSettings::new(db.url(), TOKEN);
    sim_settings.faults.insert(
        plinth_compute_sim::faults::Operation::CreateVm,
        serde_json::from_value(serde_json::json!({"latency_ms": 200})).unwrap(),
    );
    let sim = start(sim_settings).await.unwrap();
    let compute = Arc::new(Timed {
        inner: HttpCompute::new(HttpComputeSettings::new(
            &sim.base_url(),
            SecretText::new(TOKEN),
        ))
        .unwrap(),
        creations: Mutex::new(Vec::new()),
    });
    let key = SecretText::new("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=");
    let repo = Arc::new(
        PgRepo::new(
            &PgSettings::new(SecretText::new(db.url())),
            Envelope::new("k1", [("k1".to_owned(), key)]).unwrap(),
        )
        .unwrap(),
    );
    let settings = FoundingSettings {
        defaults: ClusterDefaults {
            subnet_id: SubnetId::parse("subnet-local").unwrap(),
            flavor: FlavorId::parse("m1.medium").unwrap(),
            image: ImageId::parse("debian-12").unwrap(),
        },
        dns_zone: DnsZone::parse("k8s.plinth.test").unwrap(),
        networking: Networking::default(),
        bootstrap_base_url: BootstrapBaseUrl::parse("http://127.0.0.1:8080").unwrap(),
        bootstrap_token_ttl: Duration::from_secs(3600),
        vm_address_deadline: Duration::from_secs(10),
        vm_address_poll_interval: Duration::from_millis(50),
    };
    let use_case = FoundCluster::new(
        repo.clone(),
        compute.clone(),
        Arc::new(X509Pki::new(PkiSettings::default()).unwrap()),
        None,
        settings,
    );
    let org = OrgId::parse("org-a").unwrap();
    let request = ClusterRequest {
        control_plane_count: Some(5),
        ..ClusterRequest::default()
    };

    let started = Instant::now();
    let founded = use_case.found(&org, request).await.unwrap();
    let total = started.elapsed();

    let creations = compute.creations.lock().unwrap().clone();
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
    let details = repo
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
        assert!(vm.user_data.contains(&format!(
            "/bootstrap/{}/nodes/{}",
            founded.cluster_id, node.name
        )));
    }
    assert!(!founded.dns_configured);
    sim.stop().await;
}
