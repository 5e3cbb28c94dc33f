//! Fixtures for plinth's cross-crate tests and benchmarks: a founding stack on real components —
//! a throwaway PostgreSQL database, the compute service on loopback, the PostgreSQL repository
//! and the x509 PKI — so a test adds only the adapter it is about; a PowerDNS, a BIND9 or a Knot
//! DNS per test ([`pdns`], [`rfc2136`]) and `dig` to ask them ([`dig`]); and the helpers for
//! driving external programs ([`process`]); a scripted HTTP server for outbound clients
//! ([`http_stub`]).
//!
//! Fixtures in the domain's own types (founding settings, stand-in certificates) live in
//! `plinth_domain::testing` instead, because the domain's unit tests use them too.

#![allow(clippy::unwrap_used)] // a fixture that cannot start must stop the test loudly

pub mod dig;
pub mod http_stub;
pub mod pdns;
pub mod process;
pub mod rfc2136;

pub use plinth_domain::testing::ZONE;
pub use process::{Process, free_port, output_text, require, run, signal, wait_for_port};

use std::sync::Arc;
use std::time::Duration;

use plinth_compute_sim::faults::{FaultRule, Operation};
use plinth_compute_sim::{RunningSim, SimSettings, start};
use plinth_diesel_pg::testing::TestDatabase;
use plinth_diesel_pg::{Envelope, PgRepo, PgSettings};
use plinth_domain::found_cluster::{FoundCluster, FoundingPorts, FoundingSettings, Leasing};
use plinth_domain::model::{ReplicaId, SecretText};
use plinth_domain::ports::compute::Compute;
use plinth_domain::ports::dns::Dns;
use plinth_domain::ports::observer::Unobserved;
use plinth_domain::testing::founding_settings;
use plinth_x509_pki::{PkiSettings, X509Pki};

/// The compute service's token in fixtures.
pub const COMPUTE_TOKEN: &str = "test-compute-token";
/// A master key for sealing fixture keys (32 bytes of 0x01, base64).
pub const MASTER_KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

/// A database, a compute service on it, and the repository and PKI a founding needs.
#[derive(Debug)]
pub struct FoundingStack {
    /// The test's database (plinth's and the compute service's tables).
    pub db: TestDatabase,
    /// The compute service, listening on loopback.
    pub sim: RunningSim,
    /// The repository on `db`.
    pub repo: Arc<PgRepo>,
    /// The x509 PKI with default settings (P-256, RSA-2048 service-account key).
    pub pki: Arc<X509Pki>,
}

impl FoundingStack {
    /// Starts everything; `faults` are the compute service's rules from the start.
    pub async fn start(faults: &[(Operation, serde_json::Value)]) -> Self {
        let db = TestDatabase::create().await;
        let mut sim_settings = SimSettings::new(db.url(), COMPUTE_TOKEN);
        for (operation, rule) in faults {
            let rule: FaultRule = serde_json::from_value(rule.clone()).unwrap();
            sim_settings.faults.insert(*operation, rule);
        }
        let sim = start(sim_settings).await.unwrap();
        let envelope =
            Envelope::new("k1", [("k1".to_owned(), SecretText::new(MASTER_KEY))]).unwrap();
        let repo =
            Arc::new(PgRepo::new(&PgSettings::new(SecretText::new(db.url())), envelope).unwrap());
        let pki = Arc::new(X509Pki::new(PkiSettings::default()).unwrap());
        Self { db, sim, repo, pki }
    }

    /// The domain's test settings ([`ZONE`], the compute service's `subnet-local`), with a
    /// deadline and poll for a real compute service, which gives addresses within milliseconds:
    /// a short poll keeps the founding's timing the compute service's own.
    pub fn settings() -> FoundingSettings {
        FoundingSettings {
            vm_address_deadline: Duration::from_secs(10),
            vm_address_poll_interval: Duration::from_millis(50),
            ..founding_settings()
        }
    }

    /// The use case on this stack's repository and PKI, with the given compute and DNS.
    pub fn use_case(&self, compute: Arc<dyn Compute>, dns: Option<Arc<dyn Dns>>) -> FoundCluster {
        FoundCluster::new(
            FoundingPorts {
                repo: self.repo.clone(),
                operations: self.repo.clone(),
                compute,
                pki: self.pki.clone(),
                dns,
                observer: Arc::new(Unobserved),
            },
            Self::settings(),
            Leasing {
                owner: ReplicaId::for_this_process(),
                lease: Duration::from_secs(30),
            },
        )
    }
}

/// A `Compute` that passes every call through and notes when each VM creation started and
/// ended, to show whether creations overlapped.
#[derive(Debug)]
pub struct TimedCompute<C> {
    /// The compute adapter under test.
    pub inner: C,
    creations: std::sync::Mutex<Vec<(std::time::Instant, std::time::Instant)>>,
}

impl<C> TimedCompute<C> {
    /// Wraps `inner`.
    pub fn new(inner: C) -> Self {
        Self {
            inner,
            creations: std::sync::Mutex::default(),
        }
    }

    /// The (start, end) of each VM creation so far, and forgets them.
    pub fn take_creations(&self) -> Vec<(std::time::Instant, std::time::Instant)> {
        std::mem::take(&mut *self.creations.lock().unwrap())
    }
}

mod timed {
    use std::time::Instant;

    use async_trait::async_trait;
    use plinth_domain::model::{SecurityGroupId, SubnetId, VmId};
    use plinth_domain::ports::compute::{
        Compute, ComputeError, IngressRule, NewSecurityGroup, NewVm, SecurityGroup, Subnet,
        TaggedResource,
    };

    use super::TimedCompute;

    #[async_trait]
    impl<C: Compute> Compute for TimedCompute<C> {
        async fn subnet(&self, id: &SubnetId) -> Result<Subnet, ComputeError> {
            self.inner.subnet(id).await
        }
        async fn security_group(
            &self,
            id: &SecurityGroupId,
        ) -> Result<SecurityGroup, ComputeError> {
            self.inner.security_group(id).await
        }
        async fn create_security_group(
            &self,
            group: &NewSecurityGroup,
        ) -> Result<SecurityGroupId, ComputeError> {
            self.inner.create_security_group(group).await
        }
        async fn add_ingress_rule(
            &self,
            group: &SecurityGroupId,
            rule: &IngressRule,
        ) -> Result<(), ComputeError> {
            self.inner.add_ingress_rule(group, rule).await
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
        async fn list_vms(
            &self,
            key: &str,
            value: &str,
        ) -> Result<Vec<TaggedResource>, ComputeError> {
            self.inner.list_vms(key, value).await
        }
        async fn list_security_groups(
            &self,
            key: &str,
            value: &str,
        ) -> Result<Vec<TaggedResource>, ComputeError> {
            self.inner.list_security_groups(key, value).await
        }
    }
}
