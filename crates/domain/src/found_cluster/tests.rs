//! The founding sequence proven with mockall doubles: every step in order, every hard stop with
//! no commit and exactly the right compensation, and the soft DNS step.
//!
//! One builder, [`mocks`], turns a [`Scenario`] into expectations. All expectations share one
//! `Sequence`, so every scenario also proves the order of the calls it expects; a call with no
//! expectation (a step after the failing one, a commit after a failure) panics and fails the test.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mockall::Sequence;

use super::*;
use crate::model::{BootstrapTokenHash, SubnetId};
use crate::ports::compute::{ComputeError, MockCompute, Subnet};
use crate::ports::dns::{DnsError, MockDns};
use crate::ports::pki::{MockPki, PkiError};
use crate::ports::repo::{MockRepo, MockRepoTx, RepoError};
use crate::testing::{ZONE, certified, cluster_ca, founding_settings, service_account};

/// The shared client certs, in signing order: subject CN and issuer.
const SHARED: [(&str, &str); 6] = [
    ("kube-apiserver-etcd-client", "etcd-ca"),
    ("kube-etcd-healthcheck-client", "etcd-ca"),
    ("front-proxy-client", "front-proxy-ca"),
    ("kube-apiserver-kubelet-client", "ca"),
    ("system:kube-controller-manager", "ca"),
    ("system:kube-scheduler", "ca"),
];
const CREATED_GROUP: &str = "sg-created";

/// Where a scenario fails; `Nothing` is the happy path. Variants are in founding order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailAt {
    CreateCa,
    CreateServiceAccountKey,
    BeginTransaction,
    InsertCluster,
    SubnetLookup,
    CreateSecurityGroup,
    AddIngressRule,
    RecordSecurityGroups,
    /// The k-th VM creation (1-based) fails; the others succeed.
    CreateVm(u8),
    VmIdentityLookup,
    VmAddressDeadline,
    SignEtcdCert(u8),
    SignApiserverCert(u8),
    SignKubeletCert(u8),
    /// The i-th (0-based) shared client cert of `SHARED` fails.
    SignSharedCert(usize),
    InsertEtcdNodes,
    InsertApiserverNodes,
    InsertSharedCerts,
    SignAdminCert,
    Commit,
    Nothing,
}

impl FailAt {
    /// The failing step's position; a step runs when its stage is at most the failing one's.
    fn stage(self) -> u8 {
        match self {
            Self::CreateCa => 1,
            Self::CreateServiceAccountKey => 2,
            Self::BeginTransaction => 3,
            Self::InsertCluster => 4,
            Self::SubnetLookup => 5,
            Self::CreateSecurityGroup => 6,
            Self::AddIngressRule => 7,
            Self::RecordSecurityGroups => 8,
            Self::CreateVm(_) => 9,
            Self::VmIdentityLookup | Self::VmAddressDeadline => 10,
            Self::SignEtcdCert(_) | Self::SignApiserverCert(_) | Self::SignKubeletCert(_) => 11,
            Self::SignSharedCert(_) => 12,
            Self::InsertEtcdNodes => 13,
            Self::InsertApiserverNodes => 14,
            Self::InsertSharedCerts => 15,
            Self::SignAdminCert => 16,
            Self::Commit => 17,
            Self::Nothing => u8::MAX,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DnsMode {
    Publishes,
    Fails,
    Disabled,
}

#[derive(Debug, Clone)]
struct Scenario {
    count: u8,
    given_groups: Option<&'static [&'static str]>,
    subnet_has_ipv6: bool,
    fail_at: FailAt,
    dns: DnsMode,
    /// Deleting VM 2 and the created group fail during compensation.
    cleanup_fails: bool,
    /// VM 2's first read-back row has no IPv4 yet.
    vm2_address_arrives_late: bool,
    /// VM creations may happen in any order (they are left out of the sequence).
    vms_in_any_order: bool,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            count: 3,
            given_groups: None,
            subnet_has_ipv6: true,
            fail_at: FailAt::Nothing,
            dns: DnsMode::Publishes,
            cleanup_fails: false,
            vm2_address_arrives_late: false,
            vms_in_any_order: false,
        }
    }
}

/// What the doubles saw, for assertions after the run.
#[derive(Debug, Default)]
struct Captured {
    cluster: Option<NewClusterRecord>,
    security_group: Option<NewSecurityGroup>,
    rules: Vec<IngressRule>,
    recorded_groups: Option<ClusterSecurityGroups>,
    vms: Vec<NewVm>,
    vm_lookups: Vec<Vec<VmId>>,
    serving_requests: Vec<(String, ServingCertRequest)>,
    client_requests: Vec<(String, ClientCertRequest)>,
    etcd_rows: Vec<EtcdNodeRecord>,
    apiserver_rows: Vec<ApiServerNodeRecord>,
    shared_certs: Option<SharedClientCerts>,
    dns_records: Option<AddressRecords>,
}

struct Mocks {
    repo: MockRepo,
    compute: MockCompute,
    pki: MockPki,
    dns: Option<MockDns>,
    captured: Arc<Mutex<Captured>>,
}

impl Mocks {
    fn into_use_case(self) -> (FoundCluster, Arc<Mutex<Captured>>) {
        let compute: Arc<dyn Compute> = Arc::new(self.compute);
        Self::assemble(self.repo, compute, self.pki, self.dns, self.captured)
    }

    fn assemble(
        repo: MockRepo,
        compute: Arc<dyn Compute>,
        pki: MockPki,
        dns: Option<MockDns>,
        captured: Arc<Mutex<Captured>>,
    ) -> (FoundCluster, Arc<Mutex<Captured>>) {
        let dns = dns.map(|d| Arc::new(d) as Arc<dyn Dns>);
        let use_case = FoundCluster::new(
            Arc::new(repo),
            compute,
            Arc::new(pki),
            dns,
            founding_settings(),
        );
        (use_case, captured)
    }
}

fn org() -> OrgId {
    OrgId::parse("org-1").unwrap()
}

fn request(s: &Scenario) -> ClusterSpec {
    crate::model::ClusterRequest {
        name: Some("prod".into()),
        control_plane_count: Some(i64::from(s.count)),
        security_group_ids: s
            .given_groups
            .map(|g| g.iter().map(|id| (*id).to_owned()).collect()),
        ..crate::model::ClusterRequest::default()
    }
    .validate(&founding_settings().defaults)
    .unwrap()
}

fn vm_id(n: u8) -> VmId {
    VmId::parse(&format!("vm-{n}")).unwrap()
}

fn identity(n: u8, with_ipv4: bool) -> VmIdentity {
    VmIdentity {
        id: vm_id(n),
        name: format!("vm {n}"),
        ipv4: with_ipv4.then(|| Ipv4Addr::new(127, 10, 0, 10 + n)),
        ipv6: Some(Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, u16::from(n))),
        public_ipv4: Some(Ipv4Addr::new(127, 20, 0, n)),
    }
}

fn ordinal_of(vm: &NewVm) -> u8 {
    vm.tags[tags::ORDINAL].parse().unwrap()
}

fn pki_error() -> PkiError {
    PkiError::Failed("injected".into())
}

fn repo_unavailable() -> RepoError {
    RepoError::Unavailable("injected".into())
}

fn compute_unavailable() -> ComputeError {
    ComputeError::Unavailable("injected".into())
}

/// Sets up the doubles for a scenario: every step up to the failing one, then the rollback and
/// the compensation that failure calls for — and nothing else.
fn mocks(s: &Scenario) -> Mocks {
    let mut seq = Sequence::new();
    let captured = Arc::new(Mutex::new(Captured::default()));
    let mut repo = MockRepo::new();
    let mut tx = MockRepoTx::new();
    let mut compute = MockCompute::new();
    let mut pki = MockPki::new();
    let fail = s.fail_at;
    let reached = |step: FailAt| step.stage() <= fail.stage();
    let count = s.count;

    // Step 2: trust root.
    pki.expect_create_cluster_ca()
        .times(1)
        .in_sequence(&mut seq)
        .returning(move |_| match fail {
            FailAt::CreateCa => Err(pki_error()),
            _ => Ok(cluster_ca()),
        });
    if reached(FailAt::CreateServiceAccountKey) {
        pki.expect_create_service_account_key()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move || match fail {
                FailAt::CreateServiceAccountKey => Err(pki_error()),
                _ => Ok(service_account()),
            });
    }

    // Step 3: transaction and cluster row. The tx double is handed out when `begin` is called,
    // after all its expectations below are set.
    let tx_slot: Arc<Mutex<Option<MockRepoTx>>> = Arc::default();
    if reached(FailAt::BeginTransaction) {
        let slot = Arc::clone(&tx_slot);
        repo.expect_begin()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move || match fail {
                FailAt::BeginTransaction => Err(repo_unavailable()),
                _ => {
                    let tx = slot.lock().unwrap().take().expect("begin is called once");
                    Ok(Box::new(tx) as Box<dyn RepoTx>)
                }
            });
    }
    if reached(FailAt::InsertCluster) {
        let captured = Arc::clone(&captured);
        tx.expect_insert_cluster()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |record| {
                captured.lock().unwrap().cluster = Some(record.clone());
                match fail {
                    FailAt::InsertCluster => Err(RepoError::Conflict("name taken".into())),
                    _ => Ok(()),
                }
            });
    }

    // Step 4: security groups.
    let creates_group = s.given_groups.is_none();
    if creates_group && reached(FailAt::SubnetLookup) {
        let ipv6 = s.subnet_has_ipv6;
        compute
            .expect_subnet()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |id| match fail {
                FailAt::SubnetLookup => Err(ComputeError::NotFound(id.to_string())),
                _ => Ok(Subnet {
                    id: id.clone(),
                    ipv4_cidr: "127.10.0.0/24".parse().unwrap(),
                    ipv6_cidr: ipv6.then(|| "fd00:10::/64".parse().unwrap()),
                }),
            });
    }
    if creates_group && reached(FailAt::CreateSecurityGroup) {
        let captured = Arc::clone(&captured);
        compute
            .expect_create_security_group()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |group| {
                captured.lock().unwrap().security_group = Some(group.clone());
                match fail {
                    FailAt::CreateSecurityGroup => Err(ComputeError::Rejected("quota".into())),
                    _ => Ok(SecurityGroupId::parse(CREATED_GROUP).unwrap()),
                }
            });
    }
    if creates_group && reached(FailAt::AddIngressRule) {
        let rules = if fail == FailAt::AddIngressRule {
            1
        } else if s.subnet_has_ipv6 {
            3
        } else {
            2
        };
        let captured = Arc::clone(&captured);
        compute
            .expect_add_ingress_rule()
            .times(rules)
            .in_sequence(&mut seq)
            .returning(move |group, rule| {
                assert_eq!(group.as_str(), CREATED_GROUP);
                captured.lock().unwrap().rules.push(*rule);
                match fail {
                    FailAt::AddIngressRule => Err(compute_unavailable()),
                    _ => Ok(()),
                }
            });
    }
    if reached(FailAt::RecordSecurityGroups) {
        let captured = Arc::clone(&captured);
        tx.expect_record_security_groups()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_, groups| {
                captured.lock().unwrap().recorded_groups = Some(groups.clone());
                match fail {
                    FailAt::RecordSecurityGroups => Err(repo_unavailable()),
                    _ => Ok(()),
                }
            });
    }

    // Step 5: one VM per ordinal; `CreateVm(k)` fails only the k-th.
    if reached(FailAt::CreateVm(0)) {
        for n in 1..=count {
            let captured = Arc::clone(&captured);
            let expectation = compute.expect_create_vm();
            expectation.withf(move |vm| ordinal_of(vm) == n).times(1);
            if !s.vms_in_any_order {
                expectation.in_sequence(&mut seq);
            }
            expectation.returning(move |vm| {
                captured.lock().unwrap().vms.push(vm.clone());
                match fail {
                    FailAt::CreateVm(k) if k == n => Err(ComputeError::Rejected(
                        "no capacity for flavor m1.medium".into(),
                    )),
                    _ => Ok(vm_id(n)),
                }
            });
        }
    }

    // Step 6: read-back.
    if reached(FailAt::VmIdentityLookup) {
        let late = s.vm2_address_arrives_late;
        let calls = match fail {
            FailAt::VmAddressDeadline => 2..usize::MAX,
            _ if late => 2..3,
            _ => 1..2,
        };
        let captured = Arc::clone(&captured);
        tx.expect_vm_identities()
            .times(calls)
            .in_sequence(&mut seq)
            .returning(move |ids| {
                let mut seen = captured.lock().unwrap();
                seen.vm_lookups.push(ids.to_vec());
                let first_read = seen.vm_lookups.len() == 1;
                match fail {
                    FailAt::VmIdentityLookup => Err(repo_unavailable()),
                    // VM 3 never gets an address; VM 2's row is not even there.
                    FailAt::VmAddressDeadline => Ok(vec![identity(1, true), identity(3, false)]),
                    _ => Ok((1..=count)
                        .map(|n| identity(n, !(late && first_read && n == 2)))
                        .collect()),
                }
            });
    }

    // Step 7: per node an etcd cert under etcd-ca, an apiserver cert and a kubelet client cert
    // under ca; then the shared client certs. Nodes (and the shared certs) are signed
    // concurrently, so after a failure the later ones may or may not be asked.
    if reached(FailAt::SignEtcdCert(0)) {
        let failing_node = match fail {
            FailAt::SignEtcdCert(k) | FailAt::SignApiserverCert(k) | FailAt::SignKubeletCert(k) => {
                k
            }
            _ => u8::MAX,
        };
        for n in 1..=count {
            for kind in ["etcd", "apiserver", "kubelet"] {
                let fails = match fail {
                    FailAt::SignEtcdCert(k) => k == n && kind == "etcd",
                    FailAt::SignApiserverCert(k) => k == n && kind == "apiserver",
                    FailAt::SignKubeletCert(k) => k == n && kind == "kubelet",
                    _ => false,
                };
                // On the failing node, what comes after the failure is never asked for.
                let after_failure = n == failing_node
                    && match fail {
                        FailAt::SignEtcdCert(_) => kind != "etcd",
                        FailAt::SignApiserverCert(_) => kind == "kubelet",
                        _ => false,
                    };
                if after_failure {
                    continue;
                }
                let node_prefix = format!("cp-{n}.");
                let captured = Arc::clone(&captured);
                let in_order = n <= failing_node || failing_node == u8::MAX;
                if kind == "kubelet" {
                    let expectation = pki.expect_sign_client_cert();
                    let cn = format!("system:node:{node_prefix}");
                    expectation
                        .withf(move |issuer_key, request| {
                            issuer_key.cert_pem == "cert of ca"
                                && request.common_name.starts_with(&cn)
                        })
                        .returning(move |issuer_key, request| {
                            captured
                                .lock()
                                .unwrap()
                                .client_requests
                                .push((issuer_key.cert_pem.clone(), request.clone()));
                            if fails {
                                Err(pki_error())
                            } else {
                                Ok(certified(&format!("kubelet {}", request.common_name)))
                            }
                        });
                    if in_order {
                        expectation.times(1).in_sequence(&mut seq);
                    } else {
                        expectation.times(0..=1);
                    }
                    continue;
                }
                let issuer = if kind == "etcd" { "etcd-ca" } else { "ca" };
                let expectation = pki.expect_sign_serving_cert();
                expectation
                    .withf(move |issuer_key, request| {
                        issuer_key.cert_pem == format!("cert of {issuer}")
                            && request.sans.dns_names[0].starts_with(&node_prefix)
                    })
                    .returning(move |issuer_key, request| {
                        captured
                            .lock()
                            .unwrap()
                            .serving_requests
                            .push((issuer_key.cert_pem.clone(), request.clone()));
                        if fails {
                            Err(pki_error())
                        } else {
                            Ok(certified(&format!("{kind} {}", request.sans.dns_names[0])))
                        }
                    });
                if in_order {
                    expectation.times(1).in_sequence(&mut seq);
                } else {
                    expectation.times(0..=1);
                }
            }
        }
    }
    if reached(FailAt::SignSharedCert(0)) {
        let failing = match fail {
            FailAt::SignSharedCert(i) => i,
            _ => usize::MAX,
        };
        for (i, (cn, issuer)) in SHARED.into_iter().enumerate() {
            let captured = Arc::clone(&captured);
            let expectation = pki.expect_sign_client_cert();
            expectation
                .withf(move |issuer_key, request| {
                    issuer_key.cert_pem == format!("cert of {issuer}") && request.common_name == cn
                })
                .returning(move |issuer_key, request| {
                    captured
                        .lock()
                        .unwrap()
                        .client_requests
                        .push((issuer_key.cert_pem.clone(), request.clone()));
                    if i == failing {
                        Err(pki_error())
                    } else {
                        Ok(certified(cn))
                    }
                });
            if i <= failing {
                expectation.times(1).in_sequence(&mut seq);
            } else {
                expectation.times(0..=1);
            }
        }
    }

    // Step 8: node rows.
    if reached(FailAt::InsertEtcdNodes) {
        let captured = Arc::clone(&captured);
        tx.expect_insert_etcd_nodes()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |rows| {
                captured.lock().unwrap().etcd_rows = rows.to_vec();
                match fail {
                    FailAt::InsertEtcdNodes => Err(repo_unavailable()),
                    _ => Ok(()),
                }
            });
    }
    if reached(FailAt::InsertApiserverNodes) {
        let captured = Arc::clone(&captured);
        tx.expect_insert_apiserver_nodes()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |rows| {
                captured.lock().unwrap().apiserver_rows = rows.to_vec();
                match fail {
                    FailAt::InsertApiserverNodes => Err(repo_unavailable()),
                    _ => Ok(()),
                }
            });
    }

    // Step 9: admin cert, commit.
    if reached(FailAt::InsertSharedCerts) {
        let captured = Arc::clone(&captured);
        tx.expect_insert_shared_certs()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_, certs| {
                captured.lock().unwrap().shared_certs = Some(certs.clone());
                match fail {
                    FailAt::InsertSharedCerts => Err(repo_unavailable()),
                    _ => Ok(()),
                }
            });
    }
    if reached(FailAt::SignAdminCert) {
        let captured = Arc::clone(&captured);
        pki.expect_sign_client_cert()
            .withf(|_, request| request.common_name == "kubernetes-admin")
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |issuer, request| {
                captured
                    .lock()
                    .unwrap()
                    .client_requests
                    .push((issuer.cert_pem.clone(), request.clone()));
                match fail {
                    FailAt::SignAdminCert => Err(pki_error()),
                    _ => Ok(certified("admin")),
                }
            });
    }
    if reached(FailAt::Commit) {
        tx.expect_commit()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move || match fail {
                FailAt::Commit => Err(repo_unavailable()),
                _ => Ok(()),
            });
    }

    // A hard stop once the transaction is open: roll back, then delete what was created.
    let stopped_in_tx =
        fail != FailAt::Nothing && fail != FailAt::Commit && reached(FailAt::InsertCluster);
    if stopped_in_tx {
        tx.expect_rollback()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|| Ok(()));
    }
    if fail != FailAt::Nothing {
        for n in expected_created_vms(s) {
            let result_fails = s.cleanup_fails && n == 2;
            compute
                .expect_delete_vm()
                .withf(move |id| *id == vm_id(n))
                .times(1)
                .in_sequence(&mut seq)
                .returning(move |_| {
                    if result_fails {
                        Err(ComputeError::Timeout("DELETE /v1/vms/vm-2".into()))
                    } else {
                        Ok(())
                    }
                });
        }
        if expects_created_group(s) {
            let result_fails = s.cleanup_fails;
            compute
                .expect_delete_security_group()
                .withf(|id| id.as_str() == CREATED_GROUP)
                .times(1)
                .in_sequence(&mut seq)
                .returning(move |_| {
                    if result_fails {
                        Err(ComputeError::Conflict("in use by vm-2".into()))
                    } else {
                        Ok(())
                    }
                });
        }
    }
    *tx_slot.lock().unwrap() = Some(tx);

    // Step 10: DNS, only after the commit.
    let dns = match s.dns {
        DnsMode::Disabled => None,
        mode => {
            let mut dns = MockDns::new();
            if fail == FailAt::Nothing {
                let captured = Arc::clone(&captured);
                dns.expect_upsert_address_records()
                    .times(1)
                    .in_sequence(&mut seq)
                    .returning(move |records| {
                        captured.lock().unwrap().dns_records = Some(records.clone());
                        match mode {
                            DnsMode::Fails => Err(DnsError::Unavailable(
                                "connection refused (127.0.0.1:8081)".into(),
                            )),
                            _ => Ok(()),
                        }
                    });
            }
            Some(dns)
        }
    };

    Mocks {
        repo,
        compute,
        pki,
        dns,
        captured,
    }
}

/// The VMs a failing scenario created before it stopped.
fn expected_created_vms(s: &Scenario) -> Vec<u8> {
    match s.fail_at {
        FailAt::CreateVm(k) => (1..=s.count).filter(|n| *n != k).collect(),
        f if f.stage() > FailAt::CreateVm(0).stage() => (1..=s.count).collect(),
        _ => Vec::new(),
    }
}

fn expects_created_group(s: &Scenario) -> bool {
    s.given_groups.is_none() && s.fail_at.stage() > FailAt::CreateSecurityGroup.stage()
}

async fn found(
    s: &Scenario,
) -> (
    Result<FoundedCluster, FoundClusterError>,
    Arc<Mutex<Captured>>,
) {
    let (use_case, captured) = mocks(s).into_use_case();
    let result = use_case.found(&org(), request(s)).await;
    drop(use_case); // checks every double's call counts now, inside the test
    (result, captured)
}

/// Runs a scenario that must stop at `fail_at`, and checks the cleanup report lists exactly the
/// resources the run created.
async fn stop_at(fail_at: FailAt) -> FoundingFailure {
    stop_with(Scenario {
        fail_at,
        ..Scenario::default()
    })
    .await
}

async fn stop_with(s: Scenario) -> FoundingFailure {
    let (result, _) = found(&s).await;
    let Err(FoundClusterError::Failed { failure, cleanup }) = result else {
        panic!("expected a hard stop at {:?}, got {result:?}", s.fail_at);
    };
    let mut expected: Vec<CreatedResource> = expected_created_vms(&s)
        .into_iter()
        .map(|n| CreatedResource::Vm(vm_id(n)))
        .collect();
    if expects_created_group(&s) {
        expected.push(CreatedResource::SecurityGroup(
            SecurityGroupId::parse(CREATED_GROUP).unwrap(),
        ));
    }
    assert_eq!(cleanup.removed, expected, "cleanup of {:?}", s.fail_at);
    assert!(cleanup.is_clean());
    failure
}

// ---- the happy path -------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn happy_path_runs_every_step_in_order() {
    let (result, captured) = found(&Scenario::default()).await;
    let founded = result.unwrap();
    let seen = captured.lock().unwrap();

    // Every double was called in founding order (the shared Sequence), each exactly as often
    // as expected (checked when the doubles dropped). Now the arguments.
    let id = founded.cluster_id;
    let cluster = seen.cluster.as_ref().unwrap();
    assert_eq!(cluster.id, id);
    assert_eq!(cluster.org, org());
    assert_eq!(cluster.spec.name.as_ref().unwrap().as_str(), "prod");
    assert_eq!(cluster.ca, cluster_ca());
    assert_eq!(
        cluster.control_plane_dns_name,
        format!("api.cluster-{id}.{ZONE}")
    );

    let group = seen.security_group.as_ref().unwrap();
    assert_eq!(group.name, format!("cluster-{id}-control-plane"));
    assert_eq!(group.tags[tags::CLUSTER_ID], id.to_string());
    assert_eq!(group.tags[tags::ORG_ID], "org-1");
    assert_eq!(group.tags[tags::ROLE], "control-plane");
    assert_eq!(
        seen.rules,
        [
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
        ]
    );
    assert_eq!(
        seen.recorded_groups,
        Some(ClusterSecurityGroups {
            attached: vec![SecurityGroupId::parse(CREATED_GROUP).unwrap()],
            created: Some(SecurityGroupId::parse(CREATED_GROUP).unwrap()),
        })
    );

    assert_eq!(seen.vms.len(), 3);
    for (vm, n) in seen.vms.iter().zip(1u8..) {
        assert_eq!(vm.name, format!("cp-{n}.cluster-{id}.internal"));
        assert_eq!(vm.flavor.as_str(), "m1.medium");
        assert_eq!(vm.image.as_str(), "debian-12");
        assert_eq!(vm.subnet.as_str(), "subnet-local");
        assert_eq!(
            vm.security_groups,
            [SecurityGroupId::parse(CREATED_GROUP).unwrap()]
        );
        assert_eq!(vm.tags[tags::ROLE], "control-plane");
        assert_eq!(vm.tags[tags::CLUSTER_ID], id.to_string());
        assert_eq!(vm.tags[tags::ORG_ID], "org-1");
        assert_eq!(vm.tags[tags::ORDINAL], n.to_string());
        assert!(vm.user_data.expose().contains(&format!(
            "PLINTH_BOOTSTRAP_URL=https://plinth.test:8443/bootstrap/{id}/nodes/cp-{n}.cluster-{id}.internal\n"
        )));
    }
    assert_eq!(seen.vm_lookups, [vec![vm_id(1), vm_id(2), vm_id(3)]]);

    // Step 7: 2 certs per node; etcd under etcd-ca (server+client), apiserver under ca.
    assert_eq!(seen.serving_requests.len(), 6);
    for (pair, n) in seen.serving_requests.chunks(2).zip(1u8..) {
        let node = format!("cp-{n}.cluster-{id}.internal");
        let (etcd_issuer, etcd) = &pair[0];
        assert_eq!(etcd_issuer, "cert of etcd-ca");
        assert_eq!(etcd.common_name, node);
        assert!(etcd.client_auth);
        assert_eq!(etcd.sans.dns_names, [node.as_str(), "localhost"]);
        let (api_issuer, api) = &pair[1];
        assert_eq!(api_issuer, "cert of ca");
        assert_eq!(api.common_name, "kube-apiserver");
        assert!(!api.client_auth);
        assert_eq!(api.sans.dns_names[1], format!("api.cluster-{id}.{ZONE}"));
        assert!(
            api.sans
                .ip_addresses
                .contains(&"10.96.0.1".parse().unwrap())
        );
        assert!(
            api.sans
                .ip_addresses
                .contains(&Ipv4Addr::new(127, 10, 0, 10 + n).into())
        );
    }

    // Step 8: one row per node and facet, in ordinal order, with that node's cert.
    assert_eq!(seen.etcd_rows.len(), 3);
    assert_eq!(seen.apiserver_rows.len(), 3);
    for (n, (etcd, api)) in (1u8..).zip(seen.etcd_rows.iter().zip(&seen.apiserver_rows)) {
        let node = format!("cp-{n}.cluster-{id}.internal");
        for placement in [&etcd.node, &api.node] {
            assert_eq!(placement.ordinal.get(), n);
            assert_eq!(placement.name.as_str(), node);
            assert_eq!(placement.vm_id, vm_id(n));
            assert_eq!(placement.addresses.ipv4, Ipv4Addr::new(127, 10, 0, 10 + n));
        }
        assert_eq!(etcd.cluster_id, id);
        assert_eq!(etcd.cert.cert_pem, format!("cert of etcd {node}"));
        assert_eq!(api.cert.cert_pem, format!("cert of apiserver {node}"));
        assert_eq!(
            api.kubelet_cert.cert_pem,
            format!("cert of kubelet system:node:{node}")
        );
        assert_eq!(
            api.bootstrap_token_expires_at - cluster.created_at,
            time::Duration::hours(24)
        );
    }

    // Kubelet client certs (one per node), the shared client certs, then the admin cert.
    let clients: Vec<(String, String, Vec<String>)> = seen
        .client_requests
        .iter()
        .map(|(issuer, r)| {
            (
                issuer.clone(),
                r.common_name.clone(),
                r.organizations.clone(),
            )
        })
        .collect();
    let mut expected: Vec<(String, String, Vec<String>)> = (1..=3)
        .map(|n| {
            (
                "cert of ca".to_owned(),
                format!("system:node:cp-{n}.cluster-{id}.internal"),
                vec!["system:nodes".to_owned()],
            )
        })
        .collect();
    for (cn, issuer) in SHARED {
        let groups = if cn == "kube-apiserver-kubelet-client" {
            vec!["system:masters".to_owned()]
        } else {
            vec![]
        };
        expected.push((format!("cert of {issuer}"), cn.to_owned(), groups));
    }
    expected.push((
        "cert of ca".to_owned(),
        "kubernetes-admin".to_owned(),
        vec!["system:masters".to_owned()],
    ));
    assert_eq!(clients, expected);
    let shared = seen.shared_certs.as_ref().unwrap();
    assert_eq!(
        shared.get(SharedClientCert::ApiserverEtcdClient),
        &certified("kube-apiserver-etcd-client")
    );
    assert_eq!(
        shared.get(SharedClientCert::Scheduler),
        &certified("system:kube-scheduler")
    );

    // Step 10 and the answer.
    let records = seen.dns_records.as_ref().unwrap();
    assert_eq!(records.name, format!("api.cluster-{id}.{ZONE}"));
    assert_eq!(
        records.ipv4,
        [
            Ipv4Addr::new(127, 20, 0, 1),
            Ipv4Addr::new(127, 20, 0, 2),
            Ipv4Addr::new(127, 20, 0, 3)
        ]
    );
    assert_eq!(records.ipv6.len(), 3);
    assert!(founded.dns_configured);
    assert_eq!(founded.dns_error, None);
    assert_eq!(founded.vm_ids, [vm_id(1), vm_id(2), vm_id(3)]);
    assert_eq!(founded.name.unwrap().as_str(), "prod");
    assert_eq!(founded.nodes.len(), 3);
    assert_eq!(
        founded.bootstrap_path_template,
        format!("/bootstrap/{id}/nodes/{{node_name}}")
    );
    assert_eq!(
        founded.ingress_wildcard_dns_name,
        format!("*.apps.cluster-{id}.{ZONE}")
    );
    assert_eq!(founded.suggested_dns_records.len(), 2);
    assert_eq!(founded.suggested_dns_records[0].record_type, "A");
    assert_eq!(
        founded.suggested_dns_records[0].values,
        ["127.20.0.1", "127.20.0.2", "127.20.0.3"]
    );
    assert_eq!(founded.suggested_dns_records[1].record_type, "AAAA");
    assert_eq!(founded.networking, Networking::default());
}

#[tokio::test(start_paused = true)]
async fn each_node_row_holds_the_hash_of_the_token_in_that_nodes_userdata() {
    let (result, captured) = found(&Scenario::default()).await;
    result.unwrap();
    let seen = captured.lock().unwrap();
    let mut hashes = Vec::new();
    for (vm, row) in seen.vms.iter().zip(&seen.apiserver_rows) {
        let token = vm
            .user_data
            .expose()
            .lines()
            .find_map(|l| l.strip_prefix("PLINTH_BOOTSTRAP_TOKEN="))
            .unwrap();
        assert_eq!(row.bootstrap_token_hash, BootstrapTokenHash::of(token));
        assert!(!vm.user_data.expose().contains("BEGIN"));
        hashes.push(row.bootstrap_token_hash.as_str().to_owned());
    }
    hashes.dedup();
    assert_eq!(hashes.len(), 3, "every node gets its own token");
}

#[tokio::test(start_paused = true)]
async fn the_admin_kubeconfig_points_at_the_shared_name_with_the_cluster_ca() {
    let (result, _) = found(&Scenario::default()).await;
    let founded = result.unwrap();
    let config: yaml_serde::Value =
        yaml_serde::from_str(founded.admin_kubeconfig.expose()).unwrap();
    let id = founded.cluster_id;
    assert_eq!(
        config["clusters"][0]["cluster"]["server"].as_str(),
        Some(format!("https://api.cluster-{id}.{ZONE}:6443").as_str())
    );
    use base64::Engine as _;
    let decode = |v: &yaml_serde::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    assert_eq!(
        decode(&config["clusters"][0]["cluster"]["certificate-authority-data"]),
        b"cert of ca"
    );
    assert_eq!(
        decode(&config["users"][0]["user"]["client-certificate-data"]),
        b"cert of admin"
    );
    assert_eq!(
        config["current-context"].as_str(),
        Some(format!("cluster-{id}-admin@cluster-{id}").as_str())
    );
}

#[tokio::test(start_paused = true)]
async fn given_security_groups_are_used_and_none_is_created() {
    let s = Scenario {
        given_groups: Some(&["sg-a", "sg-b"]),
        ..Scenario::default()
    };
    // The doubles have no expectation for subnet, create_security_group or add_ingress_rule:
    // any such call would panic.
    let (result, captured) = found(&s).await;
    result.unwrap();
    let seen = captured.lock().unwrap();
    let given = vec![
        SecurityGroupId::parse("sg-a").unwrap(),
        SecurityGroupId::parse("sg-b").unwrap(),
    ];
    assert_eq!(
        seen.recorded_groups,
        Some(ClusterSecurityGroups {
            attached: given.clone(),
            created: None,
        })
    );
    assert!(seen.vms.iter().all(|vm| vm.security_groups == given));
}

#[tokio::test(start_paused = true)]
async fn a_subnet_without_ipv6_gets_no_ipv6_rule() {
    let s = Scenario {
        subnet_has_ipv6: false,
        ..Scenario::default()
    };
    let (result, captured) = found(&s).await;
    result.unwrap();
    assert!(
        captured
            .lock()
            .unwrap()
            .rules
            .iter()
            .all(|r| r.remote.addr().is_ipv4())
    );
}

#[tokio::test(start_paused = true)]
async fn one_and_seven_node_clusters_are_founded() {
    for count in [1, 7] {
        let s = Scenario {
            count,
            ..Scenario::default()
        };
        let (result, captured) = found(&s).await;
        let founded = result.unwrap();
        assert_eq!(founded.nodes.len(), usize::from(count));
        assert_eq!(captured.lock().unwrap().etcd_rows.len(), usize::from(count));
    }
}

#[tokio::test(start_paused = true)]
async fn the_read_back_waits_until_every_vm_has_its_private_ipv4() {
    let s = Scenario {
        vm2_address_arrives_late: true,
        ..Scenario::default()
    };
    let (result, captured) = found(&s).await;
    let founded = result.unwrap();
    assert_eq!(captured.lock().unwrap().vm_lookups.len(), 2);
    assert_eq!(
        founded.nodes[1].addresses.ipv4,
        Ipv4Addr::new(127, 10, 0, 12)
    );
}

// ---- the soft step ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_dns_failure_still_founds_the_cluster_and_says_why() {
    let s = Scenario {
        dns: DnsMode::Fails,
        ..Scenario::default()
    };
    let (result, _) = found(&s).await;
    let founded = result.unwrap();
    assert!(!founded.dns_configured);
    let why = founded.dns_error.unwrap();
    assert!(why.contains("DNS server unavailable"), "{why}");
    assert!(why.contains("connection refused"), "{why}");
    assert_eq!(founded.suggested_dns_records[0].values.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_deployment_without_dns_reports_it_as_not_configured() {
    let s = Scenario {
        dns: DnsMode::Disabled,
        ..Scenario::default()
    };
    let (result, _) = found(&s).await;
    let founded = result.unwrap();
    assert!(!founded.dns_configured);
    assert_eq!(founded.dns_error.as_deref(), Some(DNS_NOT_CONFIGURED));
}

// ---- every hard stop -------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_ca_failure_stops_before_anything_is_stored_or_created() {
    let failure = stop_at(FailAt::CreateCa).await;
    assert!(matches!(failure, FoundingFailure::CreateCa(_)), "{failure}");
    assert_eq!(failure.step(), FoundingStep::CreateTrustRoot);
}

#[tokio::test(start_paused = true)]
async fn a_signer_failure_stops_before_anything_is_stored_or_created() {
    let failure = stop_at(FailAt::CreateServiceAccountKey).await;
    assert!(
        matches!(failure, FoundingFailure::CreateServiceAccountKey(_)),
        "{failure}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_transaction_start_failure_stops_before_anything_is_created() {
    let failure = stop_at(FailAt::BeginTransaction).await;
    assert!(
        matches!(
            failure,
            FoundingFailure::BeginTransaction(RepoError::Unavailable(_))
        ),
        "{failure}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_taken_name_stops_with_a_conflict_and_rolls_back() {
    let failure = stop_at(FailAt::InsertCluster).await;
    assert!(
        matches!(
            failure,
            FoundingFailure::InsertCluster(RepoError::Conflict(_))
        ),
        "{failure}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_subnet_lookup_failure_rolls_back_and_creates_nothing() {
    let failure = stop_at(FailAt::SubnetLookup).await;
    let FoundingFailure::SubnetLookup { subnet, source } = failure else {
        panic!("{failure}");
    };
    assert_eq!(subnet.as_str(), "subnet-local");
    assert!(matches!(source, ComputeError::NotFound(_)));
}

#[tokio::test(start_paused = true)]
async fn a_security_group_creation_failure_rolls_back_and_creates_nothing() {
    let failure = stop_at(FailAt::CreateSecurityGroup).await;
    assert!(
        matches!(
            failure,
            FoundingFailure::CreateSecurityGroup(ComputeError::Rejected(_))
        ),
        "{failure}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rule_failure_deletes_the_group_it_created() {
    let failure = stop_at(FailAt::AddIngressRule).await;
    assert!(
        matches!(failure, FoundingFailure::AddIngressRule { .. }),
        "{failure}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failure_to_record_the_groups_deletes_the_group_it_created() {
    let failure = stop_at(FailAt::RecordSecurityGroups).await;
    assert!(
        matches!(failure, FoundingFailure::RecordSecurityGroups(_)),
        "{failure}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failure_of_the_kth_vm_creation_deletes_the_other_vms_and_the_group() {
    for (count, k) in [(3, 1), (3, 2), (3, 3), (5, 4), (1, 1)] {
        let failure = stop_with(Scenario {
            count,
            fail_at: FailAt::CreateVm(k),
            ..Scenario::default()
        })
        .await;
        let FoundingFailure::CreateVms(failures) = &failure else {
            panic!("{failure}");
        };
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].0.get(), k);
        assert!(failure.to_string().contains("no capacity"), "{failure}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_vm_failure_with_given_groups_deletes_only_the_vms() {
    let failure = stop_with(Scenario {
        given_groups: Some(&["sg-a"]),
        fail_at: FailAt::CreateVm(2),
        ..Scenario::default()
    })
    .await;
    assert!(matches!(failure, FoundingFailure::CreateVms(_)));
}

#[tokio::test(start_paused = true)]
async fn a_vm_identity_lookup_failure_deletes_every_vm_and_the_group() {
    let failure = stop_at(FailAt::VmIdentityLookup).await;
    assert!(
        matches!(failure, FoundingFailure::VmIdentityLookup(_)),
        "{failure}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_read_back_deadline_stops_the_founding_and_names_the_waiting_vms() {
    let started = tokio::time::Instant::now();
    let failure = stop_at(FailAt::VmAddressDeadline).await;
    let FoundingFailure::VmAddressesDeadline {
        waiting_for,
        waited,
    } = &failure
    else {
        panic!("{failure}");
    };
    assert_eq!(waiting_for, &[vm_id(2), vm_id(3)]);
    assert_eq!(*waited, Duration::from_secs(30));
    // The deadline bounds the whole read-back (paused clock: this is virtual time).
    assert!(started.elapsed() >= Duration::from_secs(30));
    assert!(started.elapsed() < Duration::from_secs(31));
    assert!(failure.to_string().contains("vm-2, vm-3"), "{failure}");
}

#[tokio::test(start_paused = true)]
async fn an_etcd_cert_signing_failure_deletes_every_vm_and_the_group() {
    for k in [1, 2, 3] {
        let failure = stop_at(FailAt::SignEtcdCert(k)).await;
        let FoundingFailure::SignCertificate { certificate, .. } = &failure else {
            panic!("{failure}");
        };
        assert!(
            certificate.starts_with(&format!("etcd cert of cp-{k}.")),
            "{certificate}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_apiserver_cert_signing_failure_deletes_every_vm_and_the_group() {
    let failure = stop_at(FailAt::SignApiserverCert(2)).await;
    let FoundingFailure::SignCertificate { certificate, .. } = &failure else {
        panic!("{failure}");
    };
    assert!(
        certificate.starts_with("apiserver cert of cp-2."),
        "{certificate}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_kubelet_cert_signing_failure_deletes_every_vm_and_the_group() {
    let failure = stop_at(FailAt::SignKubeletCert(3)).await;
    let FoundingFailure::SignCertificate { certificate, .. } = &failure else {
        panic!("{failure}");
    };
    assert!(
        certificate.starts_with("kubelet client cert of cp-3."),
        "{certificate}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_shared_client_cert_signing_failure_deletes_every_vm_and_the_group() {
    for (i, label) in [
        (0, "apiserver-etcd-client"),
        (3, "apiserver-kubelet-client"),
        (5, "scheduler"),
    ] {
        let failure = stop_at(FailAt::SignSharedCert(i)).await;
        let FoundingFailure::SignCertificate { certificate, .. } = &failure else {
            panic!("{failure}");
        };
        assert_eq!(certificate, label);
    }
}

#[tokio::test(start_paused = true)]
async fn a_shared_cert_row_failure_deletes_every_vm_and_the_group() {
    let failure = stop_at(FailAt::InsertSharedCerts).await;
    assert!(
        matches!(failure, FoundingFailure::InsertNodes(_)),
        "{failure}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_etcd_row_insertion_failure_deletes_every_vm_and_the_group() {
    let failure = stop_at(FailAt::InsertEtcdNodes).await;
    assert!(
        matches!(failure, FoundingFailure::InsertNodes(_)),
        "{failure}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_apiserver_row_insertion_failure_deletes_every_vm_and_the_group() {
    let failure = stop_at(FailAt::InsertApiserverNodes).await;
    assert!(
        matches!(failure, FoundingFailure::InsertNodes(_)),
        "{failure}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_admin_cert_signing_failure_deletes_every_vm_and_the_group() {
    let failure = stop_at(FailAt::SignAdminCert).await;
    let FoundingFailure::SignCertificate { certificate, .. } = &failure else {
        panic!("{failure}");
    };
    assert_eq!(certificate, "admin client");
}

#[tokio::test(start_paused = true)]
async fn a_commit_failure_deletes_every_vm_and_the_group() {
    let failure = stop_at(FailAt::Commit).await;
    assert!(matches!(failure, FoundingFailure::Commit(_)), "{failure}");
    assert_eq!(failure.step(), FoundingStep::Commit);
}

#[tokio::test(start_paused = true)]
async fn what_could_not_be_cleaned_up_is_reported() {
    let s = Scenario {
        fail_at: FailAt::Commit,
        cleanup_fails: true,
        ..Scenario::default()
    };
    let (result, _) = found(&s).await;
    let Err(error @ FoundClusterError::Failed { .. }) = result else {
        panic!("expected a hard stop");
    };
    let cleanup = error.cleanup();
    assert_eq!(
        cleanup.removed,
        [CreatedResource::Vm(vm_id(1)), CreatedResource::Vm(vm_id(3))]
    );
    assert_eq!(cleanup.left_behind.len(), 2);
    assert_eq!(cleanup.left_behind[0].0, CreatedResource::Vm(vm_id(2)));
    assert_eq!(
        cleanup.left_behind[1].0,
        CreatedResource::SecurityGroup(SecurityGroupId::parse(CREATED_GROUP).unwrap())
    );
    let text = error.to_string();
    assert!(text.contains("cleaned up VM vm-1, VM vm-3"), "{text}");
    assert!(
        text.contains("could not clean up VM vm-2 (compute call timed out"),
        "{text}"
    );
    assert!(
        text.contains("security group sg-created (conflict"),
        "{text}"
    );
}

// ---- concurrency ---------------------------------------------------------------------------

/// A compute double whose VM creations each wait until all of them have started: run one after
/// another, the first would wait forever (and the test's bound would fail it).
struct AllAtOnceCompute {
    inner: MockCompute,
    barrier: tokio::sync::Barrier,
}

#[async_trait]
impl Compute for AllAtOnceCompute {
    async fn subnet(&self, id: &SubnetId) -> Result<Subnet, ComputeError> {
        self.inner.subnet(id).await
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
        self.barrier.wait().await;
        self.inner.create_vm(vm).await
    }
    async fn delete_vm(&self, id: &VmId) -> Result<(), ComputeError> {
        self.inner.delete_vm(id).await
    }
    async fn delete_security_group(&self, id: &SecurityGroupId) -> Result<(), ComputeError> {
        self.inner.delete_security_group(id).await
    }
}

#[tokio::test]
async fn vms_are_created_concurrently() {
    let s = Scenario {
        count: 5,
        vms_in_any_order: true,
        ..Scenario::default()
    };
    let mocks = mocks(&s);
    let compute = Arc::new(AllAtOnceCompute {
        inner: mocks.compute,
        barrier: tokio::sync::Barrier::new(5),
    });
    let (use_case, _) = Mocks::assemble(mocks.repo, compute, mocks.pki, mocks.dns, mocks.captured);
    let founded =
        tokio::time::timeout(Duration::from_secs(10), use_case.found(&org(), request(&s)))
            .await
            .expect("VM creations ran one after another: the first never got past the barrier")
            .unwrap();
    assert_eq!(founded.vm_ids.len(), 5);
}
