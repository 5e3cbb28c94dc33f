//! Prints how long a 5-node founding spends creating its VMs when every VM creation takes
//! 200 ms on the compute service: concurrent creation keeps the step near one creation's time
//! instead of five. Real compute service, PostgreSQL and x509 PKI; no DNS.
//!
//! `make bench` (it starts PostgreSQL), or with PLINTH_TEST_DATABASE_URL set:
//! `cargo bench -p plinth-http-compute --bench founding_vms`.

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
use plinth_http_compute::{HttpCompute, HttpComputeSettings};
use plinth_x509_pki::{PkiSettings, X509Pki};

const TOKEN: &str = "bench-compute-token";
const RUNS: usize = 15;

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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
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
        repo,
        compute.clone(),
        Arc::new(X509Pki::new(PkiSettings::default()).unwrap()),
        None,
        settings,
    );
    let org = OrgId::parse("org-bench").unwrap();
    let mut steps = Vec::new();
    let mut totals = Vec::new();
    for run in 0..=RUNS {
        compute.creations.lock().unwrap().clear();
        let request = ClusterRequest {
            control_plane_count: Some(5),
            ..ClusterRequest::default()
        };
        let started = Instant::now();
        let founded = use_case.found(&org, request).await.unwrap();
        let total = started.elapsed();
        let creations = compute.creations.lock().unwrap().clone();
        let first = creations.iter().map(|(s, _)| *s).min().unwrap();
        let last = creations.iter().map(|(_, e)| *e).max().unwrap();
        // Free the addresses for the next run.
        for id in &founded.vm_ids {
            compute.inner.delete_vm(id).await.unwrap();
        }
        if run > 0 {
            steps.push(last - first);
            totals.push(total);
        }
    }
    steps.sort();
    totals.sort();
    println!("plinth-http-compute: 5-node founding, 200 ms injected per VM creation (n={RUNS})");
    println!(
        "VM creation step   median {:>7.1} ms   min {:>7.1} ms   max {:>7.1} ms   (sequential would be >= 1000 ms)",
        ms(steps[RUNS / 2]),
        ms(steps[0]),
        ms(steps[RUNS - 1])
    );
    println!(
        "whole founding     median {:>7.1} ms   min {:>7.1} ms   max {:>7.1} ms   (P-256 PKI, RSA-2048 SA key, no DNS)",
        ms(totals[RUNS / 2]),
        ms(totals[0]),
        ms(totals[RUNS - 1])
    );
    sim.stop().await;
}
