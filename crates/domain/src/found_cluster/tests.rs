//! The founding saga proven with mockall doubles: the claim first, every step in order, every
//! side effect written down before and after it happens, every hard stop with exactly the right
//! compensation (or none, when another replica owns the operation or the commit may have
//! happened), the deadlines, and the soft DNS step.
//!
//! One builder, [`mocks`], turns a [`Scenario`] into expectations. They share one `Sequence`, so
//! every scenario also proves the order of the calls it expects; a call with no expectation (a
//! step after the failing one, a deletion nobody asked for, a commit after a failure) panics and
//! fails the test. Lease renewals are the one exception: the founding renews at every step and a
//! background ticker renews on its own clock, so renewals at a forward step are unsequenced (and
//! recorded), while the fence, a renewal at step `roll_back`, is in the sequence.

mod supervisor;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mockall::Sequence;
use tokio::sync::{Barrier, watch};
use tokio::time::Instant;

use super::*;
use crate::model::IdempotencyKey;
use crate::model::{BootstrapTokenHash, SubnetId};
use crate::ports::compute::{
    ComputeError, MockCompute, ResourceOwner, SecurityGroup, Subnet, TaggedResource,
};
use crate::ports::dns::{DnsError, MockDns};
use crate::ports::operations::{
    DeletionStart, IdempotentOperation, MockOperations, NewDeletion, OperationProblem,
    OperationRecord,
};
use crate::ports::pki::{
    ClientCertRequest, MockPki, PkiError, ServingCertRequest, SharedClientCert, SharedClientCerts,
};
use crate::ports::repo::{ApiServerNodeRecord, DnsOutcome, EtcdNodeRecord, MockRepo};
use crate::testing::{
    RecordingObserver, ZONE, certified, cluster_ca, founding_settings, service_account,
};

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
/// The replica running the foundings under test.
const REPLICA: &str = "replica-a";
/// Its lease: the ticker renews every 10 s.
const LEASE: Duration = Duration::from_secs(30);
/// The founding settings' whole-founding deadline.
const DEADLINE: Duration = Duration::from_secs(600);

/// Where a scenario fails; `Nothing` is the happy path. Variants are in founding order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailAt {
    /// The name is taken: `begin_founding` answers `Conflict`.
    ClaimName,
    /// The database cannot start the founding.
    ClaimUnavailable,
    /// Renewing the lease on entering this step finds it taken over.
    LeaseLostEntering(FoundingStep),
    CreateCa,
    CreateServiceAccountKey,
    StoreTrustRoot,
    /// The subnet does not exist (checked before the claim).
    SubnetLookup,
    /// A group the request names belongs to another organization (checked before the claim).
    GroupLookup,
    /// Writing down the group about to be created fails.
    RecordGroupIntent,
    CreateSecurityGroup,
    /// Writing down the created group's id fails.
    RecordGroupCreated,
    AddIngressRule,
    RecordSecurityGroups,
    /// Writing down the VMs about to be created fails.
    RecordVmIntents,
    /// The k-th VM creation (1-based) is refused; the others succeed.
    CreateVm(u8),
    /// The k-th VM creation times out, its answer lost, although the platform made the VM.
    CreateVmAnswerLost(u8),
    /// The k-th VM creation never answers: the founding's deadline passes.
    CreateVmHangs(u8),
    /// Writing down the k-th VM's id fails.
    RecordVmCreated(u8),
    VmIdentityLookup,
    VmAddressDeadline,
    /// While it waits for addresses, the ticker finds the lease taken over.
    LeaseLapsesWhileReadingBack,
    SignEtcdCert(u8),
    SignApiserverCert(u8),
    SignKubeletCert(u8),
    /// The i-th (0-based) shared client cert of `SHARED` fails.
    SignSharedCert(usize),
    SignAdminCert,
    /// The last transaction fails; what follows depends on the fence.
    FinishFounding,
    /// The last transaction finds the lease taken over.
    FinishFoundingLeaseLost,
    Nothing,
}

impl FailAt {
    /// The failing call's position; a call runs when its stage is at most the failing one's.
    /// Entering a step (renewing the lease) comes just before the step's first call.
    fn stage(self) -> u8 {
        match self {
            Self::SubnetLookup => 5,
            Self::GroupLookup => 6,
            Self::ClaimName | Self::ClaimUnavailable => 10,
            Self::LeaseLostEntering(step) => entry_stage(step),
            Self::CreateCa => 20,
            Self::CreateServiceAccountKey => 21,
            Self::StoreTrustRoot => 22,
            Self::RecordGroupIntent => 31,
            Self::CreateSecurityGroup => 32,
            Self::RecordGroupCreated => 33,
            Self::AddIngressRule => 34,
            Self::RecordSecurityGroups => 35,
            Self::RecordVmIntents => 40,
            Self::CreateVm(_) | Self::CreateVmAnswerLost(_) | Self::CreateVmHangs(_) => 41,
            Self::RecordVmCreated(_) => 42,
            Self::VmIdentityLookup
            | Self::VmAddressDeadline
            | Self::LeaseLapsesWhileReadingBack => 50,
            Self::SignEtcdCert(_) | Self::SignApiserverCert(_) | Self::SignKubeletCert(_) => 60,
            Self::SignSharedCert(_) => 61,
            Self::SignAdminCert => 62,
            Self::FinishFounding | Self::FinishFoundingLeaseLost => 70,
            Self::Nothing => u8::MAX,
        }
    }
}

/// The stage of entering `step`: after the previous step's calls, before its own.
fn entry_stage(step: FoundingStep) -> u8 {
    match step {
        FoundingStep::CreateTrustRoot => 19,
        FoundingStep::ResolveSecurityGroups => 29,
        FoundingStep::CreateVms => 39,
        FoundingStep::ReadBackVms => 49,
        FoundingStep::SignNodeCerts => 59,
        FoundingStep::Commit => 69,
        other => panic!("the founding does not enter {other} by renewing its lease"),
    }
}

/// What renewing the lease at step `roll_back` (the fence) answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fence {
    /// The operation still runs and is this replica's: nothing can commit it any more.
    Holds,
    /// The operation is no longer this replica's (or no longer runs).
    Lost,
    /// The database cannot be asked.
    Unavailable,
}

/// What reading the operation back after a lost fence answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadBack {
    Succeeded,
    StillRunning,
    Fails,
}

/// How the platform takes the rollback's deletions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cleanup {
    Succeeds,
    /// Deleting VM 2 times out and the group stays in use through every attempt.
    Vm2AndGroupStay,
    /// The group is still in use for the first two attempts.
    GroupBusyTwice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DnsMode {
    Publishes,
    Fails,
    Disabled,
}

/// How a scenario ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Founded,
    /// Stopped at the claim: nothing was made, nothing to undo.
    StoppedAtClaim,
    /// Fenced, rolled back, ended as failed.
    RolledBack,
    /// Another replica owns the operation: nothing undone here.
    Interrupted,
    /// The commit may have happened: nothing undone, nothing ended.
    CommitUnknown,
    /// The fence could not be written: recovery undoes it later.
    LeftToRecovery,
}

#[derive(Debug, Clone)]
struct Scenario {
    count: u8,
    given_groups: Option<&'static [&'static str]>,
    subnet_has_ipv6: bool,
    fail_at: FailAt,
    fence: Fence,
    read_back: ReadBack,
    /// Listing the operation's resources by tag fails during the rollback.
    listing_fails: bool,
    cleanup: Cleanup,
    /// Ending the operation as failed (`fail_operation`) fails.
    ending_fails: bool,
    dns: DnsMode,
    /// VM 2's first read-back row has no IPv4 yet.
    vm2_address_arrives_late: bool,
    /// VM creations may happen in any order (they are left out of the sequence).
    vms_in_any_order: bool,
    /// The last transaction commits at once, but its answer takes this long to arrive.
    commit_answer_delay: Option<Duration>,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            count: 3,
            given_groups: None,
            subnet_has_ipv6: true,
            fail_at: FailAt::Nothing,
            fence: Fence::Holds,
            read_back: ReadBack::Succeeded,
            listing_fails: false,
            cleanup: Cleanup::Succeeds,
            ending_fails: false,
            dns: DnsMode::Publishes,
            vm2_address_arrives_late: false,
            vms_in_any_order: false,
            commit_answer_delay: None,
        }
    }
}

impl Scenario {
    fn failing_at(fail_at: FailAt) -> Self {
        Self {
            fail_at,
            ..Self::default()
        }
    }

    fn reached(&self, at: FailAt) -> bool {
        at.stage() <= self.fail_at.stage()
    }

    fn creates_group(&self) -> bool {
        self.given_groups.is_none()
    }

    fn ending(&self) -> Ending {
        match self.fail_at {
            FailAt::Nothing => Ending::Founded,
            FailAt::SubnetLookup
            | FailAt::GroupLookup
            | FailAt::ClaimName
            | FailAt::ClaimUnavailable => Ending::StoppedAtClaim,
            FailAt::LeaseLostEntering(_)
            | FailAt::LeaseLapsesWhileReadingBack
            | FailAt::FinishFoundingLeaseLost => Ending::Interrupted,
            FailAt::FinishFounding => match (self.fence, self.read_back) {
                (Fence::Holds, _) => Ending::RolledBack,
                (Fence::Lost, ReadBack::Succeeded) => Ending::Founded,
                (Fence::Lost, ReadBack::StillRunning) => Ending::Interrupted,
                (Fence::Lost, ReadBack::Fails) | (Fence::Unavailable, _) => Ending::CommitUnknown,
            },
            _ => match self.fence {
                Fence::Holds => Ending::RolledBack,
                Fence::Lost => Ending::Interrupted,
                Fence::Unavailable => Ending::LeftToRecovery,
            },
        }
    }

    /// How often the operation is fenced: once by a stop that rolls back, and once more before
    /// it when the commit failed (to learn whether it happened).
    fn fences(&self) -> usize {
        match self.fail_at {
            FailAt::Nothing
            | FailAt::SubnetLookup
            | FailAt::GroupLookup
            | FailAt::ClaimName
            | FailAt::ClaimUnavailable
            | FailAt::LeaseLostEntering(_)
            | FailAt::LeaseLapsesWhileReadingBack
            | FailAt::FinishFoundingLeaseLost => 0,
            FailAt::FinishFounding if self.fence == Fence::Holds => 2,
            _ => 1,
        }
    }

    /// The VM that never answers, if any.
    fn hanging_vm(&self) -> Option<u8> {
        match self.fail_at {
            FailAt::CreateVmHangs(k) => Some(k),
            _ => None,
        }
    }

    /// The VMs the platform has when the founding stops.
    fn platform_vms(&self) -> Vec<u8> {
        match self.fail_at {
            FailAt::CreateVm(k) => (1..=self.count).filter(|n| *n != k).collect(),
            f if f.stage() >= FailAt::CreateVm(0).stage() => (1..=self.count).collect(),
            _ => Vec::new(),
        }
    }

    /// The VMs whose ids the founding had written down (in memory at least) when it stopped.
    fn journaled_vms(&self) -> Vec<u8> {
        match self.fail_at {
            FailAt::CreateVm(k) | FailAt::CreateVmAnswerLost(k) => {
                (1..=self.count).filter(|n| *n != k).collect()
            }
            // The creations that answered are still waiting for the one that does not.
            FailAt::CreateVmHangs(_) => Vec::new(),
            _ => self.platform_vms(),
        }
    }

    fn vm_intents(&self) -> bool {
        self.reached(FailAt::RecordVmIntents)
    }

    fn group_intent(&self) -> bool {
        self.creates_group() && self.reached(FailAt::RecordGroupIntent)
    }

    /// The group was created (and its id is known: it is written down in memory first).
    fn group_exists(&self) -> bool {
        self.creates_group() && self.fail_at.stage() > FailAt::CreateSecurityGroup.stage()
    }

    /// The VMs the rollback deletes: what the platform lists, or without a listing what the
    /// journal knows.
    fn vms_to_delete(&self) -> Vec<u8> {
        if self.listing_fails {
            self.journaled_vms()
        } else {
            self.platform_vms()
        }
    }

    fn vm_deletion_fails(&self, n: u8) -> bool {
        self.cleanup == Cleanup::Vm2AndGroupStay && n == 2
    }

    /// The cleanup report a rolled-back scenario must end with: (removed, left behind).
    fn expected_cleanup(&self, op: OperationId) -> (Vec<CreatedResource>, Vec<CreatedResource>) {
        let mut removed = Vec::new();
        let mut left = Vec::new();
        if self.listing_fails && self.vm_intents() {
            let known = self.journaled_vms();
            for n in (1..=self.count).filter(|n| !known.contains(n)) {
                left.push(CreatedResource::Unknown {
                    kind: ResourceKind::Vm,
                    idempotency_key: format!("{op}/vm/{n}"),
                });
            }
        }
        for n in self.vms_to_delete() {
            let vm = CreatedResource::Vm(vm_id(n));
            if self.vm_deletion_fails(n) {
                left.push(vm);
            } else {
                removed.push(vm);
            }
        }
        if self.listing_fails && self.group_intent() && !self.group_exists() {
            left.push(CreatedResource::Unknown {
                kind: ResourceKind::SecurityGroup,
                idempotency_key: format!("{op}/security-group"),
            });
        }
        if self.group_exists() {
            let group = CreatedResource::SecurityGroup(created_group());
            if self.cleanup == Cleanup::Vm2AndGroupStay {
                left.push(group);
            } else {
                removed.push(group);
            }
        }
        (removed, left)
    }
}

/// What the doubles saw, for assertions after the run.
#[derive(Debug, Default)]
struct Captured {
    founding: Option<NewFounding>,
    trust_root: Option<(ClusterId, ClusterCa, ServiceAccountKeyPair)>,
    /// The step of every lease renewal but the fence, in call order.
    steps: Vec<String>,
    intents: Vec<(ResourceKind, String)>,
    created: Vec<(String, String)>,
    deleted: Vec<String>,
    /// Every journal write and every platform call, in call order, e.g. `intend <key>`,
    /// `create <key>`, `created <key> <id>`, `delete <id>`, `deleted <key>`.
    events: Vec<String>,
    security_group: Option<NewSecurityGroup>,
    rules: Vec<IngressRule>,
    recorded_groups: Option<ClusterSecurityGroups>,
    vms: Vec<NewVm>,
    vm_lookups: Vec<Vec<VmId>>,
    serving_requests: Vec<(String, ServingCertRequest)>,
    client_requests: Vec<(String, ClientCertRequest)>,
    rows: Option<FoundingRows>,
    /// The last transaction committed: the operation no longer runs.
    committed: bool,
    dns_records: Option<AddressRecords>,
    dns_outcome: Option<DnsOutcome>,
    problem: Option<OperationProblem>,
}

impl Captured {
    fn operation(&self) -> OperationId {
        self.founding
            .as_ref()
            .expect("the founding was begun")
            .lease
            .operation
    }

    /// Where `event` happened; panics when it did not.
    fn position(&self, event: &str) -> usize {
        self.events
            .iter()
            .position(|e| e == event)
            .unwrap_or_else(|| panic!("no event {event:?} in {:#?}", self.events))
    }

    fn etcd_rows(&self) -> &[EtcdNodeRecord] {
        &self.rows.as_ref().expect("the founding committed").etcd
    }

    fn apiserver_rows(&self) -> &[ApiServerNodeRecord] {
        &self
            .rows
            .as_ref()
            .expect("the founding committed")
            .apiserver
    }

    fn shared_certs(&self) -> &SharedClientCerts {
        &self.rows.as_ref().expect("the founding committed").shared
    }
}

type Shared = Arc<Mutex<Captured>>;

struct Mocks {
    repo: MockRepo,
    operations: MockOperations,
    compute: MockCompute,
    pki: MockPki,
    dns: Option<MockDns>,
    captured: Shared,
}

/// A use case on a scenario's doubles, with what they capture and what the observer hears.
struct Harness {
    use_case: FoundCluster,
    captured: Shared,
    observer: Arc<RecordingObserver>,
}

impl Mocks {
    /// Wires the doubles into a use case; `stage` holds back VM creations if the test needs it.
    fn harness(self, s: &Scenario, stage: impl FnOnce(&mut StagedCompute)) -> Harness {
        let mut compute = StagedCompute::new(self.compute);
        compute.hangs = s.hanging_vm();
        stage(&mut compute);
        let observer = Arc::new(RecordingObserver::default());
        let operations = StagedOperations {
            inner: self.operations,
            commit_answer_delay: s.commit_answer_delay,
        };
        let ports = FoundingPorts {
            repo: Arc::new(self.repo),
            operations: Arc::new(operations),
            compute: Arc::new(compute),
            pki: Arc::new(self.pki),
            dns: self.dns.map(|d| Arc::new(d) as Arc<dyn Dns>),
            observer: Arc::clone(&observer) as Arc<dyn Observer>,
        };
        let use_case = FoundCluster::new(ports, founding_settings(), leasing());
        Harness {
            use_case,
            captured: self.captured,
            observer,
        }
    }
}

/// What a founding answered, and what the doubles and the observer saw.
struct Run {
    result: Result<FoundedCluster, FoundClusterError>,
    seen: Captured,
    ended: Vec<(OperationKind, String)>,
    /// Virtual time the founding took.
    elapsed: Duration,
}

impl Harness {
    async fn found(self, s: &Scenario) -> Run {
        let started = Instant::now();
        let result = self.use_case.found(&org(), request(s)).await;
        let elapsed = started.elapsed();
        drop(self.use_case); // checks every double's call counts now, inside the test
        let seen = std::mem::take(&mut *self.captured.lock().unwrap());
        Run {
            result,
            seen,
            ended: self.observer.seen().ended,
            elapsed,
        }
    }
}

fn leasing() -> Leasing {
    Leasing {
        owner: ReplicaId::new(REPLICA),
        lease: LEASE,
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

fn created_group() -> SecurityGroupId {
    SecurityGroupId::parse(CREATED_GROUP).unwrap()
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

/// How the platform lists one of an operation's VMs.
fn listed_vm(operation: &str, n: u8) -> TaggedResource {
    let mut tags = Tags::new();
    tags.insert(tags::ROLE.to_owned(), tags::ROLE_CONTROL_PLANE.to_owned());
    tags.insert(tags::OPERATION_ID.to_owned(), operation.to_owned());
    tags.insert(tags::ORDINAL.to_owned(), n.to_string());
    TaggedResource {
        id: vm_id(n).to_string(),
        tags,
        created_at: OffsetDateTime::now_utc(),
    }
}

fn listed_group(operation: &str) -> TaggedResource {
    let mut tags = Tags::new();
    tags.insert(tags::ROLE.to_owned(), tags::ROLE_CONTROL_PLANE.to_owned());
    tags.insert(tags::OPERATION_ID.to_owned(), operation.to_owned());
    TaggedResource {
        id: CREATED_GROUP.to_owned(),
        tags,
        created_at: OffsetDateTime::now_utc(),
    }
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

fn push(captured: &Shared, event: String) {
    captured.lock().unwrap().events.push(event);
}

/// Sets up the doubles for a scenario: every call up to the failing one, then the fence, the
/// rollback and the ending that failure calls for — and nothing else.
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom in founding order
fn mocks(s: &Scenario) -> Mocks {
    let mut seq = Sequence::new();
    let captured: Shared = Arc::default();
    let mut repo = MockRepo::new();
    let mut ops = MockOperations::new();
    let mut compute = MockCompute::new();
    let mut pki = MockPki::new();
    pki.expect_certificate_facts()
        .returning(crate::testing::certificate_facts);
    let fail = s.fail_at;
    let count = s.count;

    // Before the claim: the subnet, and any group the request names, are the organization's.
    {
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
                    owner: ResourceOwner::Shared,
                }),
            });
        if !s.creates_group() && s.reached(FailAt::GroupLookup) {
            compute
                .expect_security_group()
                .times(s.given_groups.map_or(0, <[_]>::len))
                .returning(move |id| match fail {
                    FailAt::GroupLookup => Ok(SecurityGroup {
                        id: id.clone(),
                        owner: ResourceOwner::Org(OrgId::parse("another-org").unwrap()),
                    }),
                    _ => Ok(SecurityGroup {
                        id: id.clone(),
                        owner: ResourceOwner::Org(org()),
                    }),
                });
        }
    }

    // Step 2: the claim, before anything else is written.
    if s.reached(FailAt::ClaimName) {
        let captured = Arc::clone(&captured);
        ops.expect_begin_founding()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |founding| {
                let mut seen = captured.lock().unwrap();
                seen.founding = Some(founding.clone());
                seen.events.push("begin".into());
                match fail {
                    FailAt::ClaimName => Err(RepoError::Conflict(
                        "a cluster named prod exists in org-1".into(),
                    )),
                    FailAt::ClaimUnavailable => Err(repo_unavailable()),
                    _ => Ok(()),
                }
            });
    }

    // Renewals at a forward step: on entering each step, and by the ticker whenever its clock
    // says. Unsequenced; the fence (step `roll_back`) is set up below, in the sequence.
    {
        let captured = Arc::clone(&captured);
        ops.expect_renew_lease()
            .withf(|_, step, _| step != FoundingStep::RollBack.as_str())
            .returning(move |lease, step, _| {
                assert_eq!(lease.owner.as_str(), REPLICA);
                let mut seen = captured.lock().unwrap();
                assert_eq!(Some(lease), seen.founding.as_ref().map(|f| &f.lease));
                seen.steps.push(step.to_owned());
                let renewals_here = seen.steps.iter().filter(|s| *s == step).count();
                if seen.committed {
                    // The operation succeeded: it has no lease to renew any more.
                    return Err(RepoError::LeaseLost);
                }
                match fail {
                    FailAt::LeaseLostEntering(at) if at.as_str() == step => {
                        Err(RepoError::LeaseLost)
                    }
                    FailAt::LeaseLapsesWhileReadingBack
                        if step == FoundingStep::ReadBackVms.as_str() && renewals_here > 1 =>
                    {
                        Err(RepoError::LeaseLost)
                    }
                    _ => Ok(()),
                }
            });
    }

    // Step 3: trust root.
    if s.reached(FailAt::CreateCa) {
        pki.expect_create_cluster_ca()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_| match fail {
                FailAt::CreateCa => Err(pki_error()),
                _ => Ok(cluster_ca()),
            });
    }
    // Asked for side by side with the CA: a failing CA does not spare it.
    if s.reached(FailAt::CreateCa) {
        pki.expect_create_service_account_key()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move || match fail {
                FailAt::CreateServiceAccountKey => Err(pki_error()),
                _ => Ok(service_account()),
            });
    }
    if s.reached(FailAt::StoreTrustRoot) {
        let captured = Arc::clone(&captured);
        ops.expect_store_trust_root()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_, cluster, ca, sa| {
                captured.lock().unwrap().trust_root = Some((cluster, ca.clone(), sa.clone()));
                match fail {
                    FailAt::StoreTrustRoot => Err(repo_unavailable()),
                    _ => Ok(()),
                }
            });
    }

    // Step 4: security groups, the created one journaled before and after.
    let creates_group = s.creates_group();
    if creates_group && s.reached(FailAt::RecordGroupIntent) {
        let captured = Arc::clone(&captured);
        ops.expect_record_intents()
            .withf(|_, intents| {
                intents
                    .iter()
                    .all(|(k, _)| *k == ResourceKind::SecurityGroup)
            })
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_, intents| {
                record_intents(&captured, intents);
                match fail {
                    FailAt::RecordGroupIntent => Err(repo_unavailable()),
                    _ => Ok(()),
                }
            });
    }
    if creates_group && s.reached(FailAt::CreateSecurityGroup) {
        let captured = Arc::clone(&captured);
        compute
            .expect_create_security_group()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |group| {
                let mut seen = captured.lock().unwrap();
                seen.security_group = Some(group.clone());
                seen.events
                    .push(format!("create {}", group.idempotency_key));
                match fail {
                    FailAt::CreateSecurityGroup => Err(ComputeError::Rejected("quota".into())),
                    _ => Ok(created_group()),
                }
            });
    }
    if creates_group && s.reached(FailAt::RecordGroupCreated) {
        let captured = Arc::clone(&captured);
        ops.expect_record_created()
            .withf(|_, key, _| key.ends_with("/security-group"))
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_, key, id| {
                record_created(&captured, key, id);
                match fail {
                    FailAt::RecordGroupCreated => Err(repo_unavailable()),
                    _ => Ok(()),
                }
            });
    }
    if creates_group && s.reached(FailAt::AddIngressRule) {
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
    if s.reached(FailAt::RecordSecurityGroups) {
        let captured = Arc::clone(&captured);
        ops.expect_record_security_groups()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_, _, groups| {
                captured.lock().unwrap().recorded_groups = Some(groups.clone());
                match fail {
                    FailAt::RecordSecurityGroups => Err(repo_unavailable()),
                    _ => Ok(()),
                }
            });
    }

    // Step 5: every VM written down, all created at once, each id written down.
    if s.reached(FailAt::RecordVmIntents) {
        let captured = Arc::clone(&captured);
        ops.expect_record_intents()
            .withf(|_, intents| intents.iter().all(|(k, _)| *k == ResourceKind::Vm))
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_, intents| {
                record_intents(&captured, intents);
                match fail {
                    FailAt::RecordVmIntents => Err(repo_unavailable()),
                    _ => Ok(()),
                }
            });
    }
    // Each creation is written down as soon as it answers: create 1, its id, create 2, ….
    if s.reached(FailAt::CreateVm(0)) {
        for n in 1..=count {
            if s.hanging_vm() != Some(n) {
                // (A hanging VM is held in `StagedCompute`: it never reaches the platform.)
                let captured = Arc::clone(&captured);
                let expectation = compute.expect_create_vm();
                expectation.withf(move |vm| ordinal_of(vm) == n).times(1);
                if !s.vms_in_any_order {
                    expectation.in_sequence(&mut seq);
                }
                expectation.returning(move |vm| {
                    let mut seen = captured.lock().unwrap();
                    seen.vms.push(vm.clone());
                    seen.events.push(format!("create {}", vm.idempotency_key));
                    match fail {
                        FailAt::CreateVm(k) if k == n => Err(ComputeError::Rejected(
                            "no capacity for flavor m1.medium".into(),
                        )),
                        FailAt::CreateVmAnswerLost(k) if k == n => {
                            Err(ComputeError::Timeout("POST /v1/vms".into()))
                        }
                        _ => Ok(vm_id(n)),
                    }
                });
            }
            let answered = match fail {
                FailAt::CreateVm(k) | FailAt::CreateVmAnswerLost(k) => k != n,
                FailAt::CreateVmHangs(k) => k != n,
                _ => true,
            };
            if !answered {
                continue;
            }
            let captured = Arc::clone(&captured);
            let suffix = format!("/vm/{n}");
            let expectation = ops.expect_record_created();
            expectation
                .withf(move |_, key, _| key.ends_with(&suffix))
                .times(1);
            if !s.vms_in_any_order {
                expectation.in_sequence(&mut seq);
            }
            expectation.returning(move |_, key, id| {
                record_created(&captured, key, id);
                match fail {
                    FailAt::RecordVmCreated(k) if k == n => Err(repo_unavailable()),
                    _ => Ok(()),
                }
            });
        }
    }

    // Step 6: read-back.
    if s.reached(FailAt::VmIdentityLookup) {
        let late = s.vm2_address_arrives_late;
        let calls = match fail {
            FailAt::VmAddressDeadline | FailAt::LeaseLapsesWhileReadingBack => 2..usize::MAX,
            _ if late => 2..3,
            _ => 1..2,
        };
        let captured = Arc::clone(&captured);
        repo.expect_vm_identities()
            .times(calls)
            .in_sequence(&mut seq)
            .returning(move |ids| {
                let mut seen = captured.lock().unwrap();
                seen.vm_lookups.push(ids.to_vec());
                let first_read = seen.vm_lookups.len() == 1;
                match fail {
                    FailAt::VmIdentityLookup => Err(repo_unavailable()),
                    // VM 3 never gets an address; VM 2's row is not even there.
                    FailAt::VmAddressDeadline | FailAt::LeaseLapsesWhileReadingBack => {
                        Ok(vec![identity(1, true), identity(3, false)])
                    }
                    _ => Ok((1..=count)
                        .map(|n| identity(n, !(late && first_read && n == 2)))
                        .collect()),
                }
            });
    }

    // Step 7: per node an etcd cert under etcd-ca, an apiserver cert and a kubelet client cert
    // under ca; then the shared client certs; then the admin's. Nodes (and the shared certs)
    // are signed concurrently, so after a failure the later ones may or may not be asked.
    if s.reached(FailAt::SignEtcdCert(0)) {
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
    if s.reached(FailAt::SignSharedCert(0)) {
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
    if s.reached(FailAt::SignAdminCert) {
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

    // Steps 8–9: the one short transaction.
    if s.reached(FailAt::FinishFounding) {
        let captured = Arc::clone(&captured);
        ops.expect_finish_founding()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_, rows| {
                let mut seen = captured.lock().unwrap();
                seen.rows = Some(rows.clone());
                seen.events.push("finish".into());
                match fail {
                    FailAt::FinishFounding => Err(repo_unavailable()),
                    FailAt::FinishFoundingLeaseLost => Err(RepoError::LeaseLost),
                    _ => {
                        seen.committed = true;
                        Ok(())
                    }
                }
            });
    }

    // The fence, and after a lost one at the commit, the operation read back.
    if s.fences() > 0 {
        let fence = s.fence;
        let captured = Arc::clone(&captured);
        ops.expect_renew_lease()
            .withf(|_, step, _| step == FoundingStep::RollBack.as_str())
            .times(s.fences())
            .in_sequence(&mut seq)
            .returning(move |lease, _, _| {
                assert_eq!(lease.owner.as_str(), REPLICA);
                push(&captured, "fence".into());
                match fence {
                    Fence::Holds => Ok(()),
                    Fence::Lost => Err(RepoError::LeaseLost),
                    Fence::Unavailable => Err(repo_unavailable()),
                }
            });
    }
    if fail == FailAt::FinishFounding && s.fence == Fence::Lost {
        let read_back = s.read_back;
        let captured = Arc::clone(&captured);
        ops.expect_operation()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |id| {
                let mut seen = captured.lock().unwrap();
                seen.events.push("read back".into());
                let founding = seen.founding.clone().expect("the founding was begun");
                assert_eq!(id, founding.lease.operation);
                let state = match read_back {
                    ReadBack::Succeeded => OperationState::Succeeded,
                    ReadBack::StillRunning => OperationState::Running,
                    ReadBack::Fails => return Err(repo_unavailable()),
                };
                Ok(Some(operation_record(&founding, state)))
            });
    }

    // The rollback: everything the operation made, by journal and by tag, VMs before the group;
    // each deletion written down; then the operation ended as failed.
    if s.ending() == Ending::RolledBack {
        set_up_rollback(s, &mut seq, &mut ops, &mut compute, &captured);
    }

    // Step 10: DNS, only once the cluster is founded.
    let dns = match s.dns {
        DnsMode::Disabled => None,
        mode => {
            let mut dns = MockDns::new();
            if s.ending() == Ending::Founded {
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
    // What step 10 did, kept for a replay of the request.
    if s.ending() == Ending::Founded {
        let captured = Arc::clone(&captured);
        repo.expect_record_dns_outcome()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |cluster, outcome| {
                let mut seen = captured.lock().unwrap();
                assert_eq!(Some(cluster), seen.founding.as_ref().map(|f| f.cluster.id));
                seen.dns_outcome = Some(outcome.clone());
                Ok(())
            });
    }

    Mocks {
        repo,
        operations: ops,
        compute,
        pki,
        dns,
        captured,
    }
}

fn set_up_rollback(
    s: &Scenario,
    seq: &mut Sequence,
    ops: &mut MockOperations,
    compute: &mut MockCompute,
    captured: &Shared,
) {
    let platform_vms = s.platform_vms();
    let listing_fails = s.listing_fails;
    {
        let captured = Arc::clone(captured);
        compute
            .expect_list_vms()
            .withf(|key, _| key == tags::OPERATION_ID)
            .times(1)
            .in_sequence(seq)
            .returning(move |_, operation| {
                let mut seen = captured.lock().unwrap();
                assert_eq!(operation, seen.operation().to_string());
                seen.events.push("list vms".into());
                if listing_fails {
                    return Err(compute_unavailable());
                }
                Ok(platform_vms
                    .iter()
                    .map(|n| listed_vm(operation, *n))
                    .collect())
            });
    }
    let to_delete = s.vms_to_delete();
    for n in to_delete.iter().copied() {
        let fails = s.vm_deletion_fails(n);
        let captured = Arc::clone(captured);
        compute
            .expect_delete_vm()
            .withf(move |id| *id == vm_id(n))
            .times(1)
            .in_sequence(seq)
            .returning(move |id| {
                push(&captured, format!("delete {id}"));
                if fails {
                    Err(ComputeError::Timeout("DELETE /v1/vms/vm-2".into()))
                } else {
                    Ok(())
                }
            });
    }
    for n in to_delete.into_iter().filter(|n| !s.vm_deletion_fails(*n)) {
        let suffix = format!("/vm/{n}");
        let captured = Arc::clone(captured);
        ops.expect_record_deleted()
            .withf(move |_, key| key.ends_with(&suffix))
            .times(1)
            .in_sequence(seq)
            .returning(move |lease, key| {
                record_deleted(&captured, lease, key);
                Ok(())
            });
    }
    let group_exists = s.group_exists();
    {
        let captured = Arc::clone(captured);
        compute
            .expect_list_security_groups()
            .withf(|key, _| key == tags::OPERATION_ID)
            .times(1)
            .in_sequence(seq)
            .returning(move |_, operation| {
                let mut seen = captured.lock().unwrap();
                assert_eq!(operation, seen.operation().to_string());
                seen.events.push("list groups".into());
                if listing_fails {
                    return Err(compute_unavailable());
                }
                Ok(group_exists
                    .then(|| listed_group(operation))
                    .into_iter()
                    .collect())
            });
    }
    if group_exists {
        let (attempts, busy) = match s.cleanup {
            Cleanup::Succeeds => (1, 0),
            Cleanup::GroupBusyTwice => (3, 2),
            Cleanup::Vm2AndGroupStay => (6, 6),
        };
        let deletions = Arc::clone(captured);
        let mut attempt = 0;
        compute
            .expect_delete_security_group()
            .withf(|id| id.as_str() == CREATED_GROUP)
            .times(attempts)
            .in_sequence(seq)
            .returning(move |id| {
                attempt += 1;
                push(&deletions, format!("delete {id}"));
                if attempt <= busy {
                    Err(ComputeError::Conflict("in use by vm-2".into()))
                } else {
                    Ok(())
                }
            });
        if s.cleanup != Cleanup::Vm2AndGroupStay {
            let captured = Arc::clone(captured);
            ops.expect_record_deleted()
                .withf(|_, key| key.ends_with("/security-group"))
                .times(1)
                .in_sequence(seq)
                .returning(move |lease, key| {
                    record_deleted(&captured, lease, key);
                    Ok(())
                });
        }
    }
    let ending_fails = s.ending_fails;
    let captured = Arc::clone(captured);
    ops.expect_fail_operation()
        .times(1)
        .in_sequence(seq)
        .returning(move |lease, problem| {
            assert_eq!(lease.owner.as_str(), REPLICA);
            let mut seen = captured.lock().unwrap();
            seen.problem = Some(problem.clone());
            seen.events.push("fail".into());
            if ending_fails {
                Err(repo_unavailable())
            } else {
                Ok(())
            }
        });
}

fn record_intents(captured: &Shared, intents: &[(ResourceKind, String)]) {
    let mut seen = captured.lock().unwrap();
    for (kind, key) in intents {
        seen.events.push(format!("intend {key}"));
        seen.intents.push((*kind, key.clone()));
    }
}

fn record_created(captured: &Shared, key: &str, id: &str) {
    let mut seen = captured.lock().unwrap();
    seen.events.push(format!("created {key} {id}"));
    seen.created.push((key.to_owned(), id.to_owned()));
}

fn record_deleted(captured: &Shared, lease: &Lease, key: &str) {
    assert_eq!(lease.owner.as_str(), REPLICA);
    let mut seen = captured.lock().unwrap();
    seen.events.push(format!("deleted {key}"));
    seen.deleted.push(key.to_owned());
}

fn operation_record(founding: &NewFounding, state: OperationState) -> OperationRecord {
    OperationRecord {
        id: founding.lease.operation,
        kind: OperationKind::Found,
        org: founding.cluster.org.clone(),
        cluster_id: founding.cluster.id,
        state,
        step: FoundingStep::RollBack.as_str().to_owned(),
        owner: ReplicaId::new(REPLICA),
        lease_expires_at: None,
        problem: None,
        started_at: founding.cluster.created_at,
        ended_at: None,
        journal: Vec::new(),
    }
}

/// A compute double whose VM creations can be held back: at a barrier until all of them have
/// started (so only concurrent creations get through), behind a gate a test opens, or for good
/// (a creation that never answers).
struct StagedCompute {
    inner: MockCompute,
    barrier: Option<Barrier>,
    gate: Option<watch::Receiver<bool>>,
    hangs: Option<u8>,
}

impl StagedCompute {
    fn new(inner: MockCompute) -> Self {
        Self {
            inner,
            barrier: None,
            gate: None,
            hangs: None,
        }
    }
}

#[async_trait]
impl Compute for StagedCompute {
    async fn subnet(&self, id: &SubnetId) -> Result<Subnet, ComputeError> {
        self.inner.subnet(id).await
    }
    async fn security_group(&self, id: &SecurityGroupId) -> Result<SecurityGroup, ComputeError> {
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
        if let Some(barrier) = &self.barrier {
            barrier.wait().await;
        }
        if let Some(gate) = &self.gate {
            let mut gate = gate.clone();
            gate.wait_for(|open| *open)
                .await
                .expect("the test keeps the gate's sender");
        }
        if self.hangs == Some(ordinal_of(vm)) {
            tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
        }
        self.inner.create_vm(vm).await
    }
    async fn delete_vm(&self, id: &VmId) -> Result<(), ComputeError> {
        self.inner.delete_vm(id).await
    }
    async fn delete_security_group(&self, id: &SecurityGroupId) -> Result<(), ComputeError> {
        self.inner.delete_security_group(id).await
    }
    async fn list_vms(&self, key: &str, value: &str) -> Result<Vec<TaggedResource>, ComputeError> {
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

/// An operations double whose commit can answer late: the transaction commits when it is
/// called, its answer arrives `commit_answer_delay` later (a slow network, a busy server).
struct StagedOperations {
    inner: MockOperations,
    commit_answer_delay: Option<Duration>,
}

#[async_trait]
impl Operations for StagedOperations {
    async fn begin_founding(&self, founding: &NewFounding) -> Result<(), RepoError> {
        self.inner.begin_founding(founding).await
    }
    async fn renew_lease(
        &self,
        lease: &Lease,
        step: &str,
        lease_for: Duration,
    ) -> Result<(), RepoError> {
        self.inner.renew_lease(lease, step, lease_for).await
    }
    async fn store_trust_root(
        &self,
        lease: &Lease,
        cluster: ClusterId,
        ca: &ClusterCa,
        service_account: &ServiceAccountKeyPair,
    ) -> Result<(), RepoError> {
        self.inner
            .store_trust_root(lease, cluster, ca, service_account)
            .await
    }
    async fn record_intents(
        &self,
        lease: &Lease,
        intents: &[(ResourceKind, String)],
    ) -> Result<(), RepoError> {
        self.inner.record_intents(lease, intents).await
    }
    async fn record_created(
        &self,
        lease: &Lease,
        idempotency_key: &str,
        resource_id: &str,
    ) -> Result<(), RepoError> {
        self.inner
            .record_created(lease, idempotency_key, resource_id)
            .await
    }
    async fn record_deleted(&self, lease: &Lease, idempotency_key: &str) -> Result<(), RepoError> {
        self.inner.record_deleted(lease, idempotency_key).await
    }
    async fn record_security_groups(
        &self,
        lease: &Lease,
        cluster: ClusterId,
        groups: &ClusterSecurityGroups,
    ) -> Result<(), RepoError> {
        self.inner
            .record_security_groups(lease, cluster, groups)
            .await
    }
    async fn finish_founding(&self, lease: &Lease, rows: &FoundingRows) -> Result<(), RepoError> {
        let answer = self.inner.finish_founding(lease, rows).await;
        if let Some(delay) = self.commit_answer_delay {
            tokio::time::sleep(delay).await;
        }
        answer
    }
    async fn fail_operation(
        &self,
        lease: &Lease,
        problem: &OperationProblem,
    ) -> Result<(), RepoError> {
        self.inner.fail_operation(lease, problem).await
    }
    async fn operation(&self, id: OperationId) -> Result<Option<OperationRecord>, RepoError> {
        self.inner.operation(id).await
    }
    async fn claim_expired(
        &self,
        owner: &ReplicaId,
        lease_for: Duration,
        limit: u32,
    ) -> Result<Vec<OperationRecord>, RepoError> {
        self.inner.claim_expired(owner, lease_for, limit).await
    }
    async fn live_clusters(&self, clusters: &[ClusterId]) -> Result<Vec<ClusterId>, RepoError> {
        self.inner.live_clusters(clusters).await
    }
    async fn idempotent_operation(
        &self,
        org: &OrgId,
        key: &IdempotencyKey,
    ) -> Result<Option<IdempotentOperation>, RepoError> {
        self.inner.idempotent_operation(org, key).await
    }
    async fn purge_idempotency_keys(&self) -> Result<u64, RepoError> {
        self.inner.purge_idempotency_keys().await
    }
    async fn begin_deletion(&self, deletion: &NewDeletion) -> Result<DeletionStart, RepoError> {
        self.inner.begin_deletion(deletion).await
    }
    async fn finish_deletion(&self, lease: &Lease) -> Result<(), RepoError> {
        self.inner.finish_deletion(lease).await
    }
}

async fn found(s: &Scenario) -> Run {
    mocks(s).harness(s, |_| {}).found(s).await
}

/// How a stopped founding ended, checked against its scenario.
struct Stopped {
    step: FoundingStep,
    failure: FoundingFailure,
    cleanup: CleanupReport,
    /// The problem the caller is told (and the operation is ended with, after a rollback).
    problem: OperationProblem,
    seen: Captured,
    elapsed: Duration,
}

/// Runs a scenario that must stop at `fail_at` (with the default fence and cleanup).
async fn stop_at(fail_at: FailAt) -> Stopped {
    stop_with(Scenario::failing_at(fail_at)).await
}

/// Runs a scenario that must stop, and checks what every stop must: the cleanup report lists
/// exactly what the rollback deleted and left (nothing when there was no rollback), the
/// operation was ended with the problem the caller is told (only after a rollback), and the
/// observer heard the outcome once.
async fn stop_with(s: Scenario) -> Stopped {
    let Run {
        result,
        seen,
        ended,
        elapsed,
    } = found(&s).await;
    let Err(error) = result else {
        panic!("expected a hard stop at {:?}, got {result:?}", s.fail_at);
    };
    let problem = error.problem();
    let FoundClusterError::Failed {
        step,
        failure,
        cleanup,
    } = error;
    if s.ending() == Ending::RolledBack {
        let (removed, left) = s.expected_cleanup(seen.operation());
        assert_eq!(cleanup.removed, removed, "removed by {:?}", s.fail_at);
        let left_behind: Vec<CreatedResource> =
            cleanup.left_behind.iter().map(|(r, _)| r.clone()).collect();
        assert_eq!(left_behind, left, "left behind by {:?}", s.fail_at);
        assert_eq!(seen.problem.as_ref(), Some(&problem));
    } else {
        assert_eq!(cleanup, CleanupReport::default(), "{:?}", s.fail_at);
        assert_eq!(seen.problem, None, "the operation is not ended here");
    }
    match failure {
        // The replica that took the operation over reports how it ended.
        FoundingFailure::Interrupted => assert_eq!(ended, []),
        _ => assert_eq!(ended, [(OperationKind::Found, format!("failed_{step}"))]),
    }
    Stopped {
        step,
        failure,
        cleanup,
        problem,
        seen,
        elapsed,
    }
}

// ---- the happy path -------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
#[allow(clippy::too_many_lines)] // one founding's every argument, in step order
async fn happy_path_claims_the_name_first_and_runs_every_step_in_order() {
    let run = found(&Scenario::default()).await;
    let founded = run.result.unwrap();
    let seen = &run.seen;

    // Every double was called in founding order (the shared Sequence), each exactly as often
    // as expected (checked when the doubles dropped). Now the arguments.
    let id = founded.cluster_id;
    let op = founded.operation_id;
    let founding = seen.founding.as_ref().unwrap();
    assert_eq!(founding.lease.operation, op);
    assert_eq!(founding.lease.owner.as_str(), REPLICA);
    assert_eq!(
        founding.lease_for, LEASE,
        "the claim leases the operation for one lease"
    );
    let cluster = &founding.cluster;
    assert_eq!(cluster.id, id);
    assert_eq!(cluster.org, org());
    assert_eq!(cluster.spec.name.as_ref().unwrap().as_str(), "prod");
    assert_eq!(cluster.networking, Networking::default());
    assert_eq!(
        cluster.control_plane_dns_name,
        format!("api.cluster-{id}.{ZONE}")
    );
    assert_eq!(
        cluster.ingress_wildcard_dns_name,
        format!("*.apps.cluster-{id}.{ZONE}")
    );
    assert_eq!(
        seen.trust_root,
        Some((id, cluster_ca(), service_account())),
        "step 3 stores the CA and the service-account keys with the cluster"
    );

    let group = seen.security_group.as_ref().unwrap();
    assert_eq!(group.name, format!("cluster-{id}-control-plane"));
    assert_eq!(group.idempotency_key, format!("{op}/security-group"));
    assert_eq!(group.tags[tags::CLUSTER_ID], id.to_string());
    assert_eq!(group.tags[tags::ORG_ID], "org-1");
    assert_eq!(group.tags[tags::ROLE], "control-plane");
    assert_eq!(group.tags[tags::OPERATION_ID], op.to_string());
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
            attached: vec![created_group()],
            created: Some(created_group()),
        })
    );

    // The journal: the group, then every VM, by their idempotency keys and then their ids.
    assert_eq!(
        seen.intents,
        [
            (ResourceKind::SecurityGroup, format!("{op}/security-group")),
            (ResourceKind::Vm, format!("{op}/vm/1")),
            (ResourceKind::Vm, format!("{op}/vm/2")),
            (ResourceKind::Vm, format!("{op}/vm/3")),
        ]
    );
    assert_eq!(
        seen.created,
        [
            (format!("{op}/security-group"), CREATED_GROUP.to_owned()),
            (format!("{op}/vm/1"), "vm-1".to_owned()),
            (format!("{op}/vm/2"), "vm-2".to_owned()),
            (format!("{op}/vm/3"), "vm-3".to_owned()),
        ]
    );

    assert_eq!(seen.vms.len(), 3);
    for (vm, n) in seen.vms.iter().zip(1u8..) {
        assert_eq!(vm.name, format!("cp-{n}.cluster-{id}.internal"));
        assert_eq!(vm.idempotency_key, format!("{op}/vm/{n}"));
        assert_eq!(vm.flavor.as_str(), "m1.medium");
        assert_eq!(vm.image.as_str(), "debian-12");
        assert_eq!(vm.subnet.as_str(), "subnet-local");
        assert_eq!(vm.security_groups, [created_group()]);
        assert_eq!(vm.tags[tags::ROLE], "control-plane");
        assert_eq!(vm.tags[tags::CLUSTER_ID], id.to_string());
        assert_eq!(vm.tags[tags::ORG_ID], "org-1");
        assert_eq!(vm.tags[tags::OPERATION_ID], op.to_string());
        assert_eq!(vm.tags[tags::ORDINAL], n.to_string());
        assert!(vm.user_data.expose().contains(&format!(
            "PLINTH_BOOTSTRAP_URL=https://plinth.test:8443/bootstrap/{id}/nodes/cp-{n}.cluster-{id}.internal\n"
        )));
    }
    assert_eq!(seen.vm_lookups, [vec![vm_id(1), vm_id(2), vm_id(3)]]);

    // Step 7: 2 serving certs per node; etcd under etcd-ca (server+client), apiserver under ca.
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

    // Steps 8–9: one row per node and facet, in ordinal order, with that node's cert.
    let rows = seen.rows.as_ref().unwrap();
    assert_eq!(rows.cluster, id);
    assert_eq!(seen.etcd_rows().len(), 3);
    assert_eq!(seen.apiserver_rows().len(), 3);
    for (n, (etcd, api)) in (1u8..).zip(seen.etcd_rows().iter().zip(seen.apiserver_rows())) {
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
    // The cluster keeps the earliest expiry of all its certificates (here its kubelets').
    assert_eq!(
        seen.rows.as_ref().unwrap().certificates_expire_at,
        crate::testing::earliest_not_after()
    );
    // Only the admin's certificate ends at a time of its own: a day (the deployment's default
    // for admin credentials) after the founding started, to the second.
    let ends: Vec<Option<OffsetDateTime>> = seen
        .client_requests
        .iter()
        .map(|(_, r)| r.not_after)
        .collect();
    let admin_ends = (cluster.created_at + time::Duration::days(1))
        .replace_nanosecond(0)
        .unwrap();
    assert_eq!(ends.last(), Some(&Some(admin_ends)));
    assert!(
        ends[..ends.len() - 1].iter().all(Option::is_none),
        "{ends:?}"
    );
    let shared = seen.shared_certs();
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
    assert_eq!(
        seen.dns_outcome,
        Some(DnsOutcome {
            configured: true,
            error: None
        }),
        "the DNS outcome is kept for a replay"
    );
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

    // Nothing was deleted or fenced, and the observer heard one success.
    assert!(seen.deleted.is_empty());
    assert!(!seen.events.iter().any(|e| e == "fence"));
    assert_eq!(run.ended, [(OperationKind::Found, "succeeded".to_owned())]);
}

#[tokio::test(start_paused = true)]
async fn every_step_is_noted_with_the_operation_as_its_lease_is_renewed() {
    let run = found(&Scenario::default()).await;
    run.result.unwrap();
    let mut steps = run.seen.steps.clone();
    steps.dedup();
    assert_eq!(
        steps,
        [
            "create_trust_root",
            "resolve_security_groups",
            "create_vms",
            "read_back_vms",
            "sign_node_certs",
            "commit",
        ]
    );
}

/// `intend <key>` before `create <key>` before `created <key> <id>`, for every key.
fn assert_journaled_around_its_creation(seen: &Captured, key: &str, id: &str) {
    let intended = seen.position(&format!("intend {key}"));
    let created = seen.position(&format!("create {key}"));
    let noted = seen.position(&format!("created {key} {id}"));
    assert!(
        intended < created && created < noted,
        "{key}: intended at {intended}, created at {created}, noted at {noted}"
    );
}

#[tokio::test(start_paused = true)]
async fn every_side_effect_is_written_down_before_and_after_it_happens() {
    // VM creations out of the sequence and all at once: the event log alone proves the order.
    let s = Scenario {
        vms_in_any_order: true,
        ..Scenario::default()
    };
    let harness = mocks(&s).harness(&s, |compute| compute.barrier = Some(Barrier::new(3)));
    let run = harness.found(&s).await;
    let founded = run.result.unwrap();
    let seen = &run.seen;
    let op = founded.operation_id;
    assert_journaled_around_its_creation(seen, &format!("{op}/security-group"), CREATED_GROUP);
    for n in 1..=3 {
        assert_journaled_around_its_creation(seen, &format!("{op}/vm/{n}"), &format!("vm-{n}"));
    }
    // Every VM is written down before the first one is asked for.
    let last_intent = seen.position(&format!("intend {op}/vm/3"));
    let first_create = seen
        .events
        .iter()
        .position(|e| e.starts_with(&format!("create {op}/vm/")))
        .unwrap();
    assert!(last_intent < first_create, "{:#?}", seen.events);
    assert!(seen.position("finish") > seen.position(&format!("created {op}/vm/3 vm-3")));
}

#[tokio::test(start_paused = true)]
async fn each_node_row_holds_the_hash_of_the_token_in_that_nodes_userdata() {
    let run = found(&Scenario::default()).await;
    run.result.unwrap();
    let seen = &run.seen;
    let mut hashes = Vec::new();
    for (vm, row) in seen.vms.iter().zip(seen.apiserver_rows()) {
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
    let run = found(&Scenario::default()).await;
    let founded = run.result.unwrap();
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
async fn given_security_groups_are_used_and_none_is_created_or_journaled() {
    let s = Scenario {
        given_groups: Some(&["sg-a", "sg-b"]),
        ..Scenario::default()
    };
    // The doubles have no expectation for subnet, create_security_group or add_ingress_rule,
    // nor for a security-group intent: any such call would panic.
    let run = found(&s).await;
    let founded = run.result.unwrap();
    let seen = &run.seen;
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
    let op = founded.operation_id;
    assert!(
        seen.intents
            .iter()
            .all(|(kind, key)| *kind == ResourceKind::Vm && key.starts_with(&format!("{op}/vm/")))
    );
}

#[tokio::test(start_paused = true)]
async fn a_subnet_without_ipv6_gets_no_ipv6_rule() {
    let s = Scenario {
        subnet_has_ipv6: false,
        ..Scenario::default()
    };
    let run = found(&s).await;
    run.result.unwrap();
    assert_eq!(run.seen.rules.len(), 2);
    assert!(run.seen.rules.iter().all(|r| r.remote.addr().is_ipv4()));
}

#[tokio::test(start_paused = true)]
async fn one_and_seven_node_clusters_are_founded() {
    for count in [1, 7] {
        let s = Scenario {
            count,
            ..Scenario::default()
        };
        let run = found(&s).await;
        let founded = run.result.unwrap();
        assert_eq!(founded.nodes.len(), usize::from(count));
        assert_eq!(run.seen.etcd_rows().len(), usize::from(count));
        assert_eq!(run.seen.intents.len(), usize::from(count) + 1);
    }
}

#[tokio::test(start_paused = true)]
async fn the_read_back_waits_until_every_vm_has_its_private_ipv4() {
    let s = Scenario {
        vm2_address_arrives_late: true,
        ..Scenario::default()
    };
    let run = found(&s).await;
    let founded = run.result.unwrap();
    assert_eq!(run.seen.vm_lookups.len(), 2);
    assert_eq!(run.elapsed, Duration::from_millis(100), "one poll interval");
    assert_eq!(
        founded.nodes[1].addresses.ipv4,
        Ipv4Addr::new(127, 10, 0, 12)
    );
}

#[tokio::test(start_paused = true)]
async fn the_lease_is_renewed_at_a_third_of_its_length_while_a_step_waits() {
    let stop = stop_at(FailAt::VmAddressDeadline).await;
    let renewals = stop
        .seen
        .steps
        .iter()
        .filter(|s| *s == "read_back_vms")
        .count();
    // One on entering the step, then the ticker at 10 s and 20 s (and maybe 30 s) of the 30 s
    // wait.
    assert!((3..=4).contains(&renewals), "{renewals} renewals");
}

// ---- concurrency ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn vms_are_created_concurrently() {
    let s = Scenario {
        count: 5,
        vms_in_any_order: true,
        ..Scenario::default()
    };
    // Each creation waits at the barrier until all five have started: made one after another,
    // the first would wait for good.
    let harness = mocks(&s).harness(&s, |compute| compute.barrier = Some(Barrier::new(5)));
    let run = tokio::time::timeout(Duration::from_secs(60), harness.found(&s))
        .await
        .expect("VM creations ran one after another: the first never got past the barrier");
    let founded = run.result.unwrap();
    assert_eq!(founded.vm_ids.len(), 5);
    assert_eq!(run.elapsed, Duration::ZERO);
}

// ---- the soft step ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_dns_failure_still_founds_the_cluster_and_says_why() {
    let s = Scenario {
        dns: DnsMode::Fails,
        ..Scenario::default()
    };
    let run = found(&s).await;
    let founded = run.result.unwrap();
    assert!(!founded.dns_configured);
    let why = founded.dns_error.unwrap();
    assert!(why.contains("DNS server unavailable"), "{why}");
    assert!(why.contains("connection refused"), "{why}");
    assert_eq!(founded.suggested_dns_records[0].values.len(), 3);
    assert_eq!(run.ended, [(OperationKind::Found, "succeeded".to_owned())]);
}

#[tokio::test(start_paused = true)]
async fn a_deployment_without_dns_reports_it_as_not_configured() {
    let s = Scenario {
        dns: DnsMode::Disabled,
        ..Scenario::default()
    };
    let run = found(&s).await;
    let founded = run.result.unwrap();
    assert!(!founded.dns_configured);
    assert_eq!(founded.dns_error.as_deref(), Some(DNS_NOT_CONFIGURED));
}

// ---- the claim -------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_taken_name_stops_at_the_claim_before_any_key_or_resource_is_made() {
    // No PKI, compute, journal or fence expectation is set: any such call would panic.
    let stop = stop_at(FailAt::ClaimName).await;
    assert_eq!(stop.step, FoundingStep::ClaimName);
    assert!(
        matches!(
            stop.failure,
            FoundingFailure::ClaimName(RepoError::Conflict(_))
        ),
        "{}",
        stop.failure
    );
    assert_eq!(stop.problem.kind, "name-taken");
    assert_eq!(stop.problem.detail, "a cluster named prod exists in org-1");
    assert_eq!(stop.seen.events, ["begin"]);
    assert!(stop.seen.steps.is_empty(), "no lease was renewed");
    let founding = stop.seen.founding.unwrap();
    assert_eq!(founding.cluster.spec.name.unwrap().as_str(), "prod");
    assert_eq!(founding.cluster.org, org());
}

#[tokio::test(start_paused = true)]
async fn a_database_that_cannot_start_the_founding_stops_at_the_claim() {
    let stop = stop_at(FailAt::ClaimUnavailable).await;
    assert!(
        matches!(
            stop.failure,
            FoundingFailure::ClaimName(RepoError::Unavailable(_))
        ),
        "{}",
        stop.failure
    );
    assert_eq!(stop.problem.kind, "database-unavailable");
    assert_eq!(stop.seen.events, ["begin"]);
}

// ---- every hard stop -------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_ca_failure_ends_the_operation_with_nothing_to_delete() {
    let stop = stop_at(FailAt::CreateCa).await;
    assert!(
        matches!(stop.failure, FoundingFailure::CreateCa(_)),
        "{}",
        stop.failure
    );
    assert_eq!(stop.step, FoundingStep::CreateTrustRoot);
    assert_eq!(stop.problem.kind, "trust-material-failed");
    assert_eq!(
        stop.seen.events,
        ["begin", "fence", "list vms", "list groups", "fail"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_service_account_key_failure_ends_the_operation_with_nothing_to_delete() {
    let stop = stop_at(FailAt::CreateServiceAccountKey).await;
    assert!(
        matches!(stop.failure, FoundingFailure::CreateServiceAccountKey(_)),
        "{}",
        stop.failure
    );
    assert!(stop.cleanup.removed.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_trust_root_storage_failure_ends_the_operation_with_nothing_to_delete() {
    let stop = stop_at(FailAt::StoreTrustRoot).await;
    assert!(
        matches!(stop.failure, FoundingFailure::StoreTrustRoot(_)),
        "{}",
        stop.failure
    );
    assert_eq!(stop.step, FoundingStep::CreateTrustRoot);
    assert_eq!(stop.problem.kind, "database-unavailable");
}

#[tokio::test(start_paused = true)]
async fn a_missing_default_subnet_stops_before_anything_is_written() {
    let stop = stop_at(FailAt::SubnetLookup).await;
    assert_eq!(stop.step, FoundingStep::CheckAccess);
    let FoundingFailure::SubnetLookup {
        subnet,
        source,
        default,
    } = &stop.failure
    else {
        panic!("{}", stop.failure);
    };
    assert_eq!(subnet.as_str(), "subnet-local");
    assert!(matches!(source, ComputeError::NotFound(_)));
    // The request named no subnet: the deployment's default is missing, not the caller's.
    assert!(default);
    assert_eq!(stop.problem.kind, "compute-misconfigured");
    assert!(stop.seen.founding.is_none(), "nothing was claimed");
    assert!(stop.seen.events.is_empty(), "{:?}", stop.seen.events);
}

#[tokio::test(start_paused = true)]
async fn another_organizations_group_stops_the_founding_before_anything_is_written() {
    let s = Scenario {
        fail_at: FailAt::GroupLookup,
        given_groups: Some(&["sg-a", "sg-b"]),
        ..Scenario::default()
    };
    let run = found(&s).await;
    let error = run.result.unwrap_err();
    assert_eq!(error.step(), FoundingStep::CheckAccess);
    assert!(
        matches!(error.failure(), FoundingFailure::NotTheOrganizations(what) if what.starts_with("security group sg-")),
        "{}",
        error.failure()
    );
    let problem = error.problem();
    assert_eq!(problem.kind, "compute-refused");
    assert!(
        problem
            .detail
            .contains("does not belong to your organization"),
        "{problem:?}"
    );
    assert!(run.seen.founding.is_none(), "nothing was claimed");
    assert_eq!(
        run.ended,
        [(OperationKind::Found, "failed_check_access".to_owned())]
    );
}

#[test]
fn a_resource_admits_its_own_organization_or_any_when_shared() {
    let (a, b) = (org(), OrgId::parse("org-2").unwrap());
    assert!(ResourceOwner::Shared.admits(&a));
    assert!(ResourceOwner::Org(a.clone()).admits(&a));
    assert!(!ResourceOwner::Org(a.clone()).admits(&b));
    assert_eq!(
        ResourceOwner::parse("shared").unwrap(),
        ResourceOwner::Shared
    );
    assert_eq!(
        ResourceOwner::parse("org-1").unwrap(),
        ResourceOwner::Org(a)
    );
    assert!(ResourceOwner::parse("not an org").is_err());
}

#[tokio::test(start_paused = true)]
async fn a_group_that_could_not_be_written_down_is_never_created() {
    let stop = stop_at(FailAt::RecordGroupIntent).await;
    assert!(
        matches!(stop.failure, FoundingFailure::Journal(_)),
        "{}",
        stop.failure
    );
    assert!(stop.cleanup.removed.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_security_group_creation_failure_rolls_back_and_creates_nothing() {
    let stop = stop_at(FailAt::CreateSecurityGroup).await;
    assert!(
        matches!(
            stop.failure,
            FoundingFailure::CreateSecurityGroup(ComputeError::Rejected(_))
        ),
        "{}",
        stop.failure
    );
    assert!(stop.cleanup.removed.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_group_whose_id_could_not_be_written_down_is_still_deleted() {
    for listing_fails in [false, true] {
        // Without the listing too: the founding keeps the id in memory for its own rollback.
        let stop = stop_with(Scenario {
            fail_at: FailAt::RecordGroupCreated,
            listing_fails,
            ..Scenario::default()
        })
        .await;
        assert!(
            matches!(stop.failure, FoundingFailure::Journal(_)),
            "{}",
            stop.failure
        );
        assert_eq!(
            stop.cleanup.removed,
            [CreatedResource::SecurityGroup(created_group())]
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_rule_failure_deletes_the_group_it_created() {
    let stop = stop_at(FailAt::AddIngressRule).await;
    assert!(
        matches!(stop.failure, FoundingFailure::AddIngressRule { .. }),
        "{}",
        stop.failure
    );
    let op = stop.seen.operation();
    assert_eq!(stop.seen.deleted, [format!("{op}/security-group")]);
}

#[tokio::test(start_paused = true)]
async fn a_failure_to_record_the_groups_deletes_the_group_it_created() {
    let stop = stop_at(FailAt::RecordSecurityGroups).await;
    assert!(
        matches!(stop.failure, FoundingFailure::RecordSecurityGroups(_)),
        "{}",
        stop.failure
    );
}

#[tokio::test(start_paused = true)]
async fn vms_that_could_not_be_written_down_are_never_created() {
    let stop = stop_at(FailAt::RecordVmIntents).await;
    assert!(
        matches!(stop.failure, FoundingFailure::Journal(_)),
        "{}",
        stop.failure
    );
    assert_eq!(stop.step, FoundingStep::CreateVms);
    assert_eq!(
        stop.cleanup.removed,
        [CreatedResource::SecurityGroup(created_group())]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failure_of_the_kth_vm_creation_deletes_the_other_vms_and_the_group() {
    for (count, k) in [(3, 1), (3, 2), (3, 3), (5, 4), (1, 1)] {
        let stop = stop_with(Scenario {
            count,
            fail_at: FailAt::CreateVm(k),
            ..Scenario::default()
        })
        .await;
        let FoundingFailure::CreateVms(failures) = &stop.failure else {
            panic!("{}", stop.failure);
        };
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].0.get(), k);
        assert!(stop.failure.to_string().contains("no capacity"));
        assert_eq!(stop.problem.kind, "compute-refused");
    }
}

#[tokio::test(start_paused = true)]
async fn a_vm_failure_with_given_groups_deletes_only_the_vms() {
    let stop = stop_with(Scenario {
        given_groups: Some(&["sg-a"]),
        fail_at: FailAt::CreateVm(2),
        ..Scenario::default()
    })
    .await;
    assert!(matches!(stop.failure, FoundingFailure::CreateVms(_)));
    assert_eq!(
        stop.cleanup.removed,
        [CreatedResource::Vm(vm_id(1)), CreatedResource::Vm(vm_id(3))]
    );
}

#[tokio::test(start_paused = true)]
async fn a_vm_whose_answer_was_lost_is_found_by_its_tag_and_deleted() {
    let stop = stop_at(FailAt::CreateVmAnswerLost(2)).await;
    let FoundingFailure::CreateVms(failures) = &stop.failure else {
        panic!("{}", stop.failure);
    };
    assert!(
        matches!(failures.as_slice(), [(ordinal, ComputeError::Timeout(_))] if ordinal.get() == 2)
    );
    assert_eq!(stop.problem.kind, "compute-timeout");
    let op = stop.seen.operation();
    // VM 2 was never written down with an id; the listing under the operation's tag found it,
    // and its deletion is written down against the key it was created with.
    assert!(!stop.seen.created.iter().any(|(_, id)| id == "vm-2"));
    assert_eq!(
        stop.cleanup.removed,
        [
            CreatedResource::Vm(vm_id(1)),
            CreatedResource::Vm(vm_id(2)),
            CreatedResource::Vm(vm_id(3)),
            CreatedResource::SecurityGroup(created_group()),
        ]
    );
    assert_eq!(
        stop.seen.deleted,
        [
            format!("{op}/vm/1"),
            format!("{op}/vm/2"),
            format!("{op}/vm/3"),
            format!("{op}/security-group"),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_vm_whose_answer_was_lost_is_reported_left_behind_when_the_listing_fails() {
    let stop = stop_with(Scenario {
        fail_at: FailAt::CreateVmAnswerLost(2),
        listing_fails: true,
        ..Scenario::default()
    })
    .await;
    let op = stop.seen.operation();
    let unknown = CreatedResource::Unknown {
        kind: ResourceKind::Vm,
        idempotency_key: format!("{op}/vm/2"),
    };
    assert_eq!(stop.cleanup.left_behind.len(), 1);
    let (left, why) = &stop.cleanup.left_behind[0];
    assert_eq!(left, &unknown);
    assert!(why.contains("compute service unavailable"), "{why}");
    assert_eq!(stop.problem.left_behind, [format!("vm of key {op}/vm/2")]);
    // What the journal knows is still deleted.
    assert_eq!(
        stop.cleanup.removed,
        [
            CreatedResource::Vm(vm_id(1)),
            CreatedResource::Vm(vm_id(3)),
            CreatedResource::SecurityGroup(created_group()),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_vm_whose_id_could_not_be_written_down_is_still_deleted() {
    let stop = stop_with(Scenario {
        fail_at: FailAt::RecordVmCreated(2),
        listing_fails: true,
        ..Scenario::default()
    })
    .await;
    assert!(
        matches!(stop.failure, FoundingFailure::Journal(_)),
        "{}",
        stop.failure
    );
    // The ids after the failing write are written down too: every creation is settled.
    assert_eq!(stop.seen.created.len(), 4);
    assert!(stop.cleanup.left_behind.is_empty());
    assert!(
        stop.cleanup
            .removed
            .contains(&CreatedResource::Vm(vm_id(2)))
    );
}

#[tokio::test(start_paused = true)]
async fn a_vm_identity_lookup_failure_deletes_every_vm_and_the_group() {
    let stop = stop_at(FailAt::VmIdentityLookup).await;
    assert!(
        matches!(stop.failure, FoundingFailure::VmIdentityLookup(_)),
        "{}",
        stop.failure
    );
    assert_eq!(stop.problem.kind, "vm-lookup-failed");
}

#[tokio::test(start_paused = true)]
async fn the_read_back_deadline_stops_the_founding_and_names_the_waiting_vms() {
    let stop = stop_at(FailAt::VmAddressDeadline).await;
    let FoundingFailure::VmAddressesDeadline {
        waiting_for,
        waited,
    } = &stop.failure
    else {
        panic!("{}", stop.failure);
    };
    assert_eq!(waiting_for, &[vm_id(2), vm_id(3)]);
    assert_eq!(*waited, Duration::from_secs(30));
    // The deadline bounds the whole read-back (paused clock: this is virtual time).
    assert_eq!(stop.elapsed, Duration::from_secs(30));
    assert!(stop.failure.to_string().contains("vm-2, vm-3"));
    assert_eq!(stop.problem.kind, "vm-addresses-timeout");
}

#[tokio::test(start_paused = true)]
async fn an_etcd_cert_signing_failure_deletes_every_vm_and_the_group() {
    for k in [1, 2, 3] {
        let stop = stop_at(FailAt::SignEtcdCert(k)).await;
        let FoundingFailure::SignCertificate { certificate, .. } = &stop.failure else {
            panic!("{}", stop.failure);
        };
        assert!(
            certificate.starts_with(&format!("etcd cert of cp-{k}.")),
            "{certificate}"
        );
        assert_eq!(stop.step, FoundingStep::SignNodeCerts);
    }
}

#[tokio::test(start_paused = true)]
async fn an_apiserver_cert_signing_failure_deletes_every_vm_and_the_group() {
    let stop = stop_at(FailAt::SignApiserverCert(2)).await;
    let FoundingFailure::SignCertificate { certificate, .. } = &stop.failure else {
        panic!("{}", stop.failure);
    };
    assert!(
        certificate.starts_with("apiserver cert of cp-2."),
        "{certificate}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_kubelet_cert_signing_failure_deletes_every_vm_and_the_group() {
    let stop = stop_at(FailAt::SignKubeletCert(3)).await;
    let FoundingFailure::SignCertificate { certificate, .. } = &stop.failure else {
        panic!("{}", stop.failure);
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
        let stop = stop_at(FailAt::SignSharedCert(i)).await;
        let FoundingFailure::SignCertificate { certificate, .. } = &stop.failure else {
            panic!("{}", stop.failure);
        };
        assert_eq!(certificate, label);
    }
}

#[tokio::test(start_paused = true)]
async fn an_admin_cert_signing_failure_deletes_every_vm_and_the_group() {
    let stop = stop_at(FailAt::SignAdminCert).await;
    let FoundingFailure::SignCertificate { certificate, .. } = &stop.failure else {
        panic!("{}", stop.failure);
    };
    assert_eq!(certificate, "admin client");
    assert_eq!(stop.problem.kind, "trust-material-failed");
}

#[tokio::test(start_paused = true)]
async fn the_stored_problem_names_the_kind_the_step_and_what_was_removed() {
    let stop = stop_at(FailAt::CreateVm(2)).await;
    assert_eq!(stop.problem.kind, "compute-refused");
    assert_eq!(stop.problem.step, "create_vms");
    assert!(
        stop.problem.detail.contains("cp-2") && stop.problem.detail.contains("no capacity"),
        "{}",
        stop.problem.detail
    );
    assert_eq!(
        stop.problem.removed,
        ["vm vm-1", "vm vm-3", "security_group sg-created"]
    );
    assert!(stop.problem.left_behind.is_empty());
    // Fenced before the first deletion, each deletion written down once done, ended last.
    let seen = &stop.seen;
    let op = seen.operation();
    assert!(seen.position("fence") < seen.position("list vms"));
    for (deleted, key) in [
        ("vm-1", format!("{op}/vm/1")),
        ("vm-3", format!("{op}/vm/3")),
        (CREATED_GROUP, format!("{op}/security-group")),
    ] {
        assert!(
            seen.position(&format!("delete {deleted}")) < seen.position(&format!("deleted {key}"))
        );
    }
    assert_eq!(seen.events.last().map(String::as_str), Some("fail"));
}

// ---- the commit and its fence ----------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_commit_that_did_not_happen_is_fenced_then_rolled_back() {
    let stop = stop_at(FailAt::FinishFounding).await;
    assert!(
        matches!(stop.failure, FoundingFailure::Commit(_)),
        "{}",
        stop.failure
    );
    assert_eq!(stop.step, FoundingStep::Commit);
    assert_eq!(stop.problem.kind, "database-unavailable");
    let seen = &stop.seen;
    assert!(seen.position("finish") < seen.position("fence"));
    assert!(seen.position("fence") < seen.position("list vms"));
    assert_eq!(stop.cleanup.removed.len(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_commit_that_did_happen_is_read_back_as_a_founded_cluster() {
    let s = Scenario {
        fail_at: FailAt::FinishFounding,
        fence: Fence::Lost,
        read_back: ReadBack::Succeeded,
        ..Scenario::default()
    };
    let run = found(&s).await;
    let founded = run.result.unwrap();
    assert!(
        founded.dns_configured,
        "DNS is published as for any founding"
    );
    assert_eq!(founded.vm_ids, [vm_id(1), vm_id(2), vm_id(3)]);
    assert!(run.seen.deleted.is_empty());
    assert_eq!(run.seen.problem, None);
    assert!(run.seen.position("fence") < run.seen.position("read back"));
    assert_eq!(run.ended, [(OperationKind::Found, "succeeded".to_owned())]);
}

#[tokio::test(start_paused = true)]
async fn a_commit_whose_outcome_cannot_be_read_back_deletes_nothing() {
    let stop = stop_with(Scenario {
        fail_at: FailAt::FinishFounding,
        fence: Fence::Lost,
        read_back: ReadBack::Fails,
        ..Scenario::default()
    })
    .await;
    assert!(
        matches!(stop.failure, FoundingFailure::CommitUnknown(_)),
        "{}",
        stop.failure
    );
    assert_eq!(stop.step, FoundingStep::Commit);
    assert!(stop.problem.detail.contains("not known"));
}

#[tokio::test(start_paused = true)]
async fn a_commit_whose_fence_cannot_be_written_deletes_nothing() {
    let stop = stop_with(Scenario {
        fail_at: FailAt::FinishFounding,
        fence: Fence::Unavailable,
        ..Scenario::default()
    })
    .await;
    assert!(
        matches!(stop.failure, FoundingFailure::CommitUnknown(_)),
        "{}",
        stop.failure
    );
    assert_eq!(stop.seen.events.last().map(String::as_str), Some("fence"));
}

#[tokio::test(start_paused = true)]
async fn a_failed_commit_of_an_operation_another_replica_runs_is_left_to_it() {
    let stop = stop_with(Scenario {
        fail_at: FailAt::FinishFounding,
        fence: Fence::Lost,
        read_back: ReadBack::StillRunning,
        ..Scenario::default()
    })
    .await;
    assert!(
        matches!(stop.failure, FoundingFailure::Interrupted),
        "{}",
        stop.failure
    );
}

#[tokio::test(start_paused = true)]
async fn a_commit_that_finds_the_lease_lost_is_left_to_the_new_owner() {
    let stop = stop_at(FailAt::FinishFoundingLeaseLost).await;
    assert!(
        matches!(stop.failure, FoundingFailure::Interrupted),
        "{}",
        stop.failure
    );
    assert_eq!(stop.step, FoundingStep::Commit);
    assert_eq!(stop.problem.kind, "interrupted");
}

#[tokio::test(start_paused = true)]
async fn a_commit_whose_answer_comes_late_is_not_mistaken_for_a_lost_lease() {
    // The transaction commits at once; its answer takes 15 s, past where the ticker would have
    // renewed (10 s) and found the operation no longer running. The commit runs outside the
    // ticker, so its own answer decides.
    let s = Scenario {
        commit_answer_delay: Some(Duration::from_secs(15)),
        ..Scenario::default()
    };
    let run = found(&s).await;
    let founded = run.result.unwrap();
    assert_eq!(founded.vm_ids, [vm_id(1), vm_id(2), vm_id(3)]);
    assert!(founded.dns_configured);
    assert_eq!(
        run.seen.steps.iter().filter(|s| *s == "commit").count(),
        1,
        "nothing renewed the lease during the commit: {:?}",
        run.seen.steps
    );
    assert_eq!(run.elapsed, Duration::from_secs(15));
    assert_eq!(run.ended, [(OperationKind::Found, "succeeded".to_owned())]);
}

// ---- leases, fences and the deadline ---------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_lease_lost_at_any_step_stops_the_founding_as_interrupted_and_deletes_nothing() {
    for step in [
        FoundingStep::CreateTrustRoot,
        FoundingStep::ResolveSecurityGroups,
        FoundingStep::CreateVms,
        FoundingStep::ReadBackVms,
        FoundingStep::SignNodeCerts,
        FoundingStep::Commit,
    ] {
        let stop = stop_at(FailAt::LeaseLostEntering(step)).await;
        assert!(
            matches!(stop.failure, FoundingFailure::Interrupted),
            "{step}: {}",
            stop.failure
        );
        assert_eq!(stop.step, step);
        assert!(stop.seen.deleted.is_empty());
        assert!(!stop.seen.events.iter().any(|e| e.starts_with("delete")));
    }
}

#[tokio::test(start_paused = true)]
async fn a_lease_lost_while_waiting_for_addresses_stops_the_founding_at_the_next_renewal() {
    let stop = stop_at(FailAt::LeaseLapsesWhileReadingBack).await;
    assert!(
        matches!(stop.failure, FoundingFailure::Interrupted),
        "{}",
        stop.failure
    );
    assert_eq!(stop.step, FoundingStep::ReadBackVms);
    // The ticker's first renewal, at a third of the lease: not the 30 s address deadline.
    assert_eq!(stop.elapsed, LEASE / 3);
}

#[tokio::test(start_paused = true)]
async fn a_founding_past_its_deadline_is_rolled_back_from_the_platforms_listing() {
    // VM 2's creation never answers; VMs 1 and 3 answered but wait for it, so their ids are not
    // written down yet: the listing under the operation's tag finds all three.
    let stop = stop_at(FailAt::CreateVmHangs(2)).await;
    assert!(
        matches!(stop.failure, FoundingFailure::Deadline(d) if d == DEADLINE),
        "{}",
        stop.failure
    );
    assert_eq!(stop.step, FoundingStep::CreateVms);
    assert_eq!(stop.elapsed, DEADLINE);
    assert_eq!(stop.problem.kind, "founding-deadline");
    assert_eq!(
        stop.cleanup.removed,
        [
            CreatedResource::Vm(vm_id(1)),
            CreatedResource::Vm(vm_id(2)),
            CreatedResource::Vm(vm_id(3)),
            CreatedResource::SecurityGroup(created_group()),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_stop_whose_fence_is_lost_is_left_to_the_replica_that_took_over() {
    let stop = stop_with(Scenario {
        fail_at: FailAt::CreateVm(2),
        fence: Fence::Lost,
        ..Scenario::default()
    })
    .await;
    assert!(
        matches!(stop.failure, FoundingFailure::Interrupted),
        "{}",
        stop.failure
    );
    assert_eq!(stop.seen.events.last().map(String::as_str), Some("fence"));
}

#[tokio::test(start_paused = true)]
async fn a_stop_whose_fence_cannot_be_written_is_left_to_recovery() {
    let stop = stop_with(Scenario {
        fail_at: FailAt::CreateVm(2),
        fence: Fence::Unavailable,
        ..Scenario::default()
    })
    .await;
    // The caller learns what stopped the founding; recovery deletes what it made.
    assert!(
        matches!(stop.failure, FoundingFailure::CreateVms(_)),
        "{}",
        stop.failure
    );
    assert_eq!(stop.seen.events.last().map(String::as_str), Some("fence"));
}

// ---- the rollback itself ---------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn what_could_not_be_cleaned_up_is_reported() {
    let stop = stop_with(Scenario {
        fail_at: FailAt::FinishFounding,
        cleanup: Cleanup::Vm2AndGroupStay,
        ..Scenario::default()
    })
    .await;
    let cleanup = &stop.cleanup;
    assert_eq!(
        cleanup.removed,
        [CreatedResource::Vm(vm_id(1)), CreatedResource::Vm(vm_id(3))]
    );
    assert_eq!(cleanup.left_behind.len(), 2);
    let op = stop.seen.operation();
    // Only what is gone is written down as deleted.
    assert_eq!(
        stop.seen.deleted,
        [format!("{op}/vm/1"), format!("{op}/vm/3")]
    );
    assert_eq!(
        stop.problem.left_behind,
        ["vm vm-2", "security_group sg-created"]
    );
    let text = stopped(stop.step, stop.failure, stop.cleanup).to_string();
    assert!(text.contains("cleaned up vm vm-1, vm vm-3"), "{text}");
    assert!(
        text.contains("could not clean up vm vm-2 (compute call timed out"),
        "{text}"
    );
    assert!(
        text.contains("security_group sg-created (conflict"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_group_still_in_use_is_deleted_once_the_platform_lets_go_of_it() {
    let stop = stop_with(Scenario {
        fail_at: FailAt::CreateVm(2),
        cleanup: Cleanup::GroupBusyTwice,
        ..Scenario::default()
    })
    .await;
    assert!(
        stop.cleanup
            .removed
            .contains(&CreatedResource::SecurityGroup(created_group()))
    );
    // Two pauses, 200 ms then 400 ms, between the three attempts.
    assert_eq!(stop.elapsed, Duration::from_millis(600));
}

#[tokio::test(start_paused = true)]
async fn a_failure_to_end_the_operation_still_answers_with_what_was_cleaned_up() {
    let stop = stop_with(Scenario {
        fail_at: FailAt::SignAdminCert,
        ending_fails: true,
        ..Scenario::default()
    })
    .await;
    assert!(matches!(
        stop.failure,
        FoundingFailure::SignCertificate { .. }
    ));
    assert_eq!(stop.cleanup.removed.len(), 4);
}
