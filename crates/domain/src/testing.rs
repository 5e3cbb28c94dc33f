//! Fixtures in the domain's own types, for this crate's unit tests and, with the `mocks` feature,
//! for other crates' tests: founding settings, stand-in certificates and keys, a cluster row and
//! its read-back, an operation, and an observer that records what it is told.
//!
//! They live here rather than in plinth-testkit because the domain's unit tests need them too,
//! and a dev-dependency on testkit would build a second copy of this crate whose types do not
//! match the ones under test.
//!
//! Certificates come in two shapes. [`certified`] is plain text (`cert of <label>`), for doubles
//! whose output a test compares verbatim. [`pem_certified`] is PEM-shaped, for code that handles
//! the text as PEM (bundles, storage); its bodies carry `CERT-<label>` and `SECRET-<label>`, so a
//! test can search a file, a column or a database dump for key material.

#![allow(clippy::unwrap_used)] // fixed fixture values: one that does not parse is a broken test

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use time::OffsetDateTime;

use crate::credentials::CredentialsLifetime;
use crate::found_cluster::{BootstrapBaseUrl, FoundingSettings};
use crate::model::{
    ClusterDefaults, ClusterDnsNames, ClusterId, ClusterName, ClusterSpec, ClusterStatus,
    ControlPlaneCount, DnsZone, FlavorId, ImageId, Networking, OperationId, OperationKind,
    OperationState, OrgId, ReplicaId, SecretText, SecurityGroupChoice, SubnetId,
};
use crate::ports::observer::Observer;
use crate::ports::operations::{OperationProblem, OperationRecord, OrgLimits, ResourceKind};
use crate::ports::pki::{
    CertificateFacts, CertifiedKey, ClusterCa, PkiError, ServiceAccountKeyPair,
};
use crate::ports::repo::{ClusterDetails, ClusterSecurityGroups, ClusterSummary, NewClusterRecord};

/// The DNS zone of test foundings (PowerDNS tests create it; nothing outside resolves `.test`).
pub const ZONE: &str = "k8s.plinth.test";

/// Founding settings for tests: the compute service's `subnet-local` with its `m1.medium` and
/// `debian-12`, [`ZONE`], kubeadm's networking, a 24 h bootstrap token and a 30 s address
/// deadline polled every 100 ms, admin kubeconfigs that live a day. Tests that need other values write
/// `FoundingSettings { vm_address_deadline: …, ..founding_settings() }`.
pub fn founding_settings() -> FoundingSettings {
    FoundingSettings {
        defaults: ClusterDefaults {
            subnet_id: SubnetId::parse("subnet-local").unwrap(),
            flavor: FlavorId::parse("m1.medium").unwrap(),
            image: ImageId::parse("debian-12").unwrap(),
        },
        dns_zone: DnsZone::parse(ZONE).unwrap(),
        networking: Networking::default(),
        // No test serves bundles at this address: VMs in tests never fetch them from here.
        bootstrap_base_url: BootstrapBaseUrl::parse("https://plinth.test:8443").unwrap(),
        bootstrap_ca: None,
        bootstrap_token_ttl: Duration::from_secs(24 * 3600),
        vm_address_deadline: Duration::from_secs(30),
        vm_address_poll_interval: Duration::from_millis(100),
        deadline: Duration::from_secs(600),
        max_in_flight: 8,
        admin_lifetime: CredentialsLifetime::from_secs(86_400).unwrap(),
        limits: OrgLimits {
            max_clusters: 20,
            max_foundings_in_flight: 8,
        },
    }
}

/// A stand-in certificate and key named by `label`: `cert of <label>`, `key of <label>`.
pub fn certified(label: &str) -> CertifiedKey {
    CertifiedKey {
        cert_pem: format!("cert of {label}"),
        key_pem: SecretText::new(format!("key of {label}")),
    }
}

/// When [`certificate_facts`] says a stand-in certificate expires: kubelet certificates at
/// [`earliest_not_after`], every other one a day later.
pub fn stand_in_not_after(cert_pem: &str) -> OffsetDateTime {
    if cert_pem.contains("kubelet") {
        earliest_not_after()
    } else {
        earliest_not_after() + time::Duration::days(1)
    }
}

/// The earliest `notAfter` of a stand-in cluster (its kubelet certificates'): 2027-12-02 12:00
/// UTC.
pub fn earliest_not_after() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_827_748_800).unwrap()
}

/// What a PKI double says of a stand-in certificate: serial `01`, [`stand_in_not_after`].
pub fn certificate_facts(cert_pem: &str) -> Result<CertificateFacts, PkiError> {
    Ok(CertificateFacts {
        serial_hex: "01".to_owned(),
        not_after: stand_in_not_after(cert_pem),
    })
}

/// A PEM-shaped stand-in certificate (`CERT-<label>`) and key (`SECRET-<label>`).
pub fn pem_certified(label: &str) -> CertifiedKey {
    CertifiedKey {
        cert_pem: format!("-----BEGIN CERTIFICATE-----\nCERT-{label}\n-----END CERTIFICATE-----\n"),
        key_pem: pem_private_key(label),
    }
}

/// A PEM-shaped stand-in private key holding `SECRET-<label>`.
fn pem_private_key(label: &str) -> SecretText {
    SecretText::new(format!(
        "-----BEGIN PRIVATE KEY-----\nSECRET-{label}\n-----END PRIVATE KEY-----\n"
    ))
}

/// A cluster's three CAs from `certify`, labelled `ca`, `etcd-ca` and `front-proxy-ca` (the
/// names of their files in a bundle).
pub fn cluster_ca_with(certify: impl Fn(&str) -> CertifiedKey) -> ClusterCa {
    ClusterCa {
        root: certify("ca"),
        etcd: certify("etcd-ca"),
        front_proxy: certify("front-proxy-ca"),
    }
}

/// The three CAs in the plain shape of [`certified`].
pub fn cluster_ca() -> ClusterCa {
    cluster_ca_with(certified)
}

/// A stand-in service-account key pair: `sa.pub`, `sa.key`.
pub fn service_account() -> ServiceAccountKeyPair {
    ServiceAccountKeyPair {
        public_key_pem: "sa.pub".into(),
        private_key_pem: SecretText::new("sa.key"),
    }
}

/// A PEM-shaped stand-in service-account key pair; the private key holds `SECRET-<label>`.
pub fn pem_service_account(label: &str) -> ServiceAccountKeyPair {
    ServiceAccountKeyPair {
        public_key_pem: format!(
            "-----BEGIN PUBLIC KEY-----\nPUBLIC-{label}\n-----END PUBLIC KEY-----\n"
        ),
        private_key_pem: pem_private_key(label),
    }
}

/// The row of a new cluster of `org` with `count` nodes, created at `created_at`, on
/// [`founding_settings`]' defaults, zone and networking, letting plinth create its security
/// group. Its trust material is [`trust_root_of`] its id.
pub fn cluster_record(
    org: &str,
    name: Option<&str>,
    count: u8,
    created_at: OffsetDateTime,
) -> NewClusterRecord {
    let id = ClusterId::new_random();
    let settings = founding_settings();
    let names = ClusterDnsNames::new(id, &settings.dns_zone);
    NewClusterRecord {
        id,
        org: OrgId::parse(org).unwrap(),
        spec: ClusterSpec {
            name: name.map(|n| ClusterName::parse(n).unwrap()),
            control_plane_count: ControlPlaneCount::new(i64::from(count)).unwrap(),
            subnet_id: settings.defaults.subnet_id,
            flavor: settings.defaults.flavor,
            image: settings.defaults.image,
            security_groups: SecurityGroupChoice::CreateForCluster,
        },
        networking: settings.networking,
        control_plane_dns_name: names.control_plane,
        ingress_wildcard_dns_name: names.ingress_wildcard,
        created_at,
    }
}

/// `cluster` of `org` in `status` as [`crate::ports::repo::Repo::find_cluster`] reads it: named
/// `prod`, three nodes' shape on [`founding_settings`]' defaults (no node rows listed), no DNS
/// outcome. Tests that need nodes or a DNS outcome write `ClusterDetails { nodes, ..details }`.
pub fn cluster_details(org: &str, cluster: ClusterId, status: ClusterStatus) -> ClusterDetails {
    let record = cluster_record(org, Some("prod"), 3, OffsetDateTime::now_utc());
    let names = ClusterDnsNames::new(cluster, &founding_settings().dns_zone);
    ClusterDetails {
        summary: ClusterSummary {
            id: cluster,
            name: record.spec.name.clone(),
            status,
            control_plane_count: 3,
            control_plane_dns_name: names.control_plane,
            created_at: record.created_at,
        },
        spec: record.spec,
        security_groups: ClusterSecurityGroups {
            attached: Vec::new(),
            created: None,
        },
        networking: record.networking,
        ingress_wildcard_dns_name: names.ingress_wildcard,
        nodes: Vec::new(),
        ca_cert_pem: Some("cert of ca".to_owned()),
        dns: None,
    }
}

/// A founding of `org` in `state` (with `problem` when it failed), at step `create_vms`, last
/// held by `replica-b`, on a cluster of its own.
pub fn operation_record(
    org: &str,
    state: OperationState,
    problem: Option<OperationProblem>,
) -> OperationRecord {
    OperationRecord {
        id: OperationId::new_random(),
        kind: OperationKind::Found,
        org: OrgId::parse(org).unwrap(),
        cluster_id: ClusterId::new_random(),
        state,
        step: "create_vms".to_owned(),
        owner: ReplicaId::new("replica-b"),
        lease_expires_at: None,
        problem,
        started_at: OffsetDateTime::now_utc(),
        ended_at: None,
        journal: Vec::new(),
    }
}

/// A cluster's trust material for tests: PEM-shaped and labelled with the cluster's id
/// (`<id>-ca`, `<id>-sa`, …), so two clusters' keys never match.
pub fn trust_root_of(id: ClusterId) -> (ClusterCa, ServiceAccountKeyPair) {
    (
        cluster_ca_with(|label| pem_certified(&format!("{id}-{label}"))),
        pem_service_account(&format!("{id}-sa")),
    )
}

/// What a [`RecordingObserver`] was told, in the order it was told.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// `operation_ended`: each operation's kind and outcome.
    pub ended: Vec<(OperationKind, String)>,
    /// `foundings_in_flight`: each count reported.
    pub in_flight: Vec<usize>,
    /// `operation_recovered`: the kind of each operation recovery rolled back.
    pub recovered: Vec<OperationKind>,
    /// `orphan_deleted`: the kind of each orphan the sweep deleted.
    pub orphans: Vec<ResourceKind>,
    /// `operation_failed`: each failed operation's kind and problem kind.
    pub failed: Vec<(OperationKind, String)>,
}

/// An [`Observer`] that remembers every call, for tests that check what the use cases report.
#[derive(Debug, Default)]
pub struct RecordingObserver {
    seen: Mutex<Observed>,
}

impl RecordingObserver {
    /// Everything reported so far.
    pub fn seen(&self) -> Observed {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Observer for RecordingObserver {
    fn operation_ended(&self, kind: OperationKind, outcome: &str) {
        self.lock().ended.push((kind, outcome.to_owned()));
    }

    fn foundings_in_flight(&self, count: usize) {
        self.lock().in_flight.push(count);
    }

    fn operation_failed(&self, kind: OperationKind, problem: &str) {
        self.lock().failed.push((kind, problem.to_owned()));
    }

    fn operation_recovered(&self, kind: OperationKind) {
        self.lock().recovered.push(kind);
    }

    fn orphan_deleted(&self, kind: ResourceKind) {
        self.lock().orphans.push(kind);
    }
}
