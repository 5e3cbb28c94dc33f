//! Prints how long a 5-node founding spends creating its VMs when every VM creation takes
//! 200 ms on the compute service: concurrent creation keeps the step near one creation's time
//! instead of five. Real compute service, PostgreSQL and x509 PKI; no DNS.
//!
//! `make bench` (it starts PostgreSQL), or with PLINTH_TEST_DATABASE_URL set:
//! `cargo bench -p plinth-http-compute --bench founding_vms`.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use plinth_compute_sim::faults::Operation;
use plinth_domain::model::{ClusterRequest, OrgId, SecretText};
use plinth_domain::ports::compute::Compute as _;
use plinth_http_compute::{HttpCompute, HttpComputeSettings};
use plinth_testkit::{COMPUTE_TOKEN, FoundingStack, TimedCompute};

const RUNS: usize = 15;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn line(label: &str, mut samples: Vec<Duration>, note: &str) {
    samples.sort();
    println!(
        "{label:<18} median {:>7.1} ms   min {:>7.1} ms   max {:>7.1} ms   ({note})",
        ms(samples[samples.len() / 2]),
        ms(samples[0]),
        ms(samples[samples.len() - 1])
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let stack =
        FoundingStack::start(&[(Operation::CreateVm, serde_json::json!({"latency_ms": 200}))])
            .await;
    let settings = HttpComputeSettings::new(&stack.sim.base_url(), SecretText::new(COMPUTE_TOKEN));
    let compute = Arc::new(TimedCompute::new(HttpCompute::new(settings).unwrap()));
    let use_case = stack.use_case(compute.clone(), None);
    let org = OrgId::parse("org-bench").unwrap();
    let (mut steps, mut totals) = (Vec::new(), Vec::new());
    for run in 0..=RUNS {
        let spec = ClusterRequest {
            control_plane_count: Some(5),
            ..ClusterRequest::default()
        }
        .validate(&use_case.settings().defaults)
        .unwrap();
        let started = Instant::now();
        let founded = use_case.found(&org, spec).await.unwrap();
        let total = started.elapsed();
        let creations = compute.take_creations();
        let first = creations.iter().map(|(s, _)| *s).min().unwrap();
        let last = creations.iter().map(|(_, e)| *e).max().unwrap();
        // Free the addresses for the next run.
        for id in &founded.vm_ids {
            compute.inner.delete_vm(id).await.unwrap();
        }
        if run > 0 {
            // The first run warms the pools up.
            steps.push(last - first);
            totals.push(total);
        }
    }
    println!("plinth-http-compute: 5-node founding, 200 ms injected per VM creation (n={RUNS})");
    line("VM creation step", steps, "sequential would be >= 1000 ms");
    line(
        "whole founding",
        totals,
        "P-256 PKI, RSA-2048 SA key, no DNS",
    );
}
