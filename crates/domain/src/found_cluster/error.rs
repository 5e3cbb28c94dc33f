use std::fmt;
use std::time::Duration;

use crate::model::{NodeOrdinal, SecurityGroupId, SubnetId, VmId};
use crate::ports::Chain;
use crate::ports::compute::ComputeError;
use crate::ports::operations::{OperationProblem, ResourceKind};
use crate::ports::pki::PkiError;
use crate::ports::repo::{Quota, RepoError};

/// The steps of a founding after the request is validated (docs/ARCHITECTURE.md §1), for
/// errors, spans, metrics and the operation's `step`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FoundingStep {
    /// 1b: the subnet and the given groups exist and are the organization's (or shared);
    /// nothing is written or created before this holds.
    CheckAccess,
    /// 2: commit the operation and the `provisioning` cluster row, claiming the name.
    ClaimName,
    /// 3: cluster CA with intermediates, and the service-account key pair, stored sealed.
    CreateTrustRoot,
    /// 4: use the given groups, or create one for the cluster.
    ResolveSecurityGroups,
    /// 5: one VM per ordinal, concurrently.
    CreateVms,
    /// 6: read each VM's addresses back from the database.
    ReadBackVms,
    /// 7: the node certificates, the shared client certificates, the admin kubeconfig.
    SignNodeCerts,
    /// 8–9: one short transaction: node rows, cluster ready, operation succeeded.
    Commit,
    /// 10: the shared control-plane record (soft).
    PublishDns,
    /// A stopped founding deleting what it made (or recovery doing it for a dead replica).
    RollBack,
}

impl FoundingStep {
    /// A stable snake_case name for logs, metric labels and the stored operation.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CheckAccess => "check_access",
            Self::ClaimName => "claim_name",
            Self::CreateTrustRoot => "create_trust_root",
            Self::ResolveSecurityGroups => "resolve_security_groups",
            Self::CreateVms => "create_vms",
            Self::ReadBackVms => "read_back_vms",
            Self::SignNodeCerts => "sign_node_certs",
            Self::Commit => "commit",
            Self::PublishDns => "publish_dns",
            Self::RollBack => "roll_back",
        }
    }
}

impl fmt::Display for FoundingStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a founding stopped. Each variant is one hard stop of docs/ARCHITECTURE.md §1; the port
/// error that caused it is its `source`.
#[derive(Debug, thiserror::Error)]
pub enum FoundingFailure {
    /// The operation and cluster row could not be committed (`Conflict`: the name is taken in
    /// the organization). Nothing was made.
    #[error("claiming the cluster's name failed")]
    ClaimName(#[source] RepoError),
    /// The cluster CA (or an intermediate) could not be created.
    #[error("creating the cluster CA failed")]
    CreateCa(#[source] PkiError),
    /// The service-account key pair could not be created.
    #[error("creating the service-account key pair failed")]
    CreateServiceAccountKey(#[source] PkiError),
    /// The trust material could not be stored.
    #[error("storing the cluster's trust material failed")]
    StoreTrustRoot(#[source] RepoError),
    /// The journal could not be written (an intent, a created resource, the lease).
    #[error("writing the operation's journal failed")]
    Journal(#[source] RepoError),
    /// The subnet could not be read.
    #[error("looking up subnet {subnet} failed")]
    SubnetLookup {
        /// The subnet.
        subnet: SubnetId,
        /// Whether it is the deployment's default (the request named none): then its absence
        /// is the deployment's misconfiguration, not the caller's mistake.
        default: bool,
        /// The compute error.
        source: ComputeError,
    },
    /// A security group the request names could not be read.
    #[error("reading security group {group} failed")]
    GroupLookup {
        /// The group.
        group: SecurityGroupId,
        /// The compute error.
        source: ComputeError,
    },
    /// The subnet or a group belongs to another organization.
    #[error("{0} does not belong to the organization")]
    NotTheOrganizations(String),
    /// The cluster's security group could not be created.
    #[error("creating the control-plane security group failed")]
    CreateSecurityGroup(#[source] ComputeError),
    /// A rule could not be added to the cluster's security group.
    #[error("adding a rule to security group {group} failed")]
    AddIngressRule {
        /// The group.
        group: SecurityGroupId,
        /// The compute error.
        source: ComputeError,
    },
    /// The cluster's security groups could not be recorded.
    #[error("recording the cluster's security groups failed")]
    RecordSecurityGroups(#[source] RepoError),
    /// One or more VM creations failed; each failed ordinal with its error.
    #[error("creating control-plane VMs failed: {}", list_vm_failures(.0))]
    CreateVms(Vec<(NodeOrdinal, ComputeError)>),
    /// The `vms` rows could not be read.
    #[error("reading VM identities failed")]
    VmIdentityLookup(#[source] RepoError),
    /// Some VMs had no private IPv4 in the database before the deadline.
    #[error(
        "VMs {} had no private IPv4 after {}s",
        list_vm_ids(waiting_for),
        waited.as_secs_f32()
    )]
    VmAddressesDeadline {
        /// The VMs still without an address.
        waiting_for: Vec<VmId>,
        /// How long the founding waited.
        waited: Duration,
    },
    /// A certificate could not be signed.
    #[error("signing the {certificate} certificate failed")]
    SignCertificate {
        /// Which certificate, e.g. `etcd cert of cp-2.cluster-….internal`.
        certificate: String,
        /// The PKI error.
        source: PkiError,
    },
    /// The admin kubeconfig could not be rendered.
    #[error("rendering the admin kubeconfig failed: {0}")]
    RenderKubeconfig(String),
    /// The last transaction did not commit (read back: the operation still runs).
    #[error("committing the founding failed")]
    Commit(#[source] RepoError),
    /// Whether the last transaction committed is not known: the database could not be asked.
    /// Nothing is rolled back; recovery finishes the operation one way or the other.
    #[error("whether the founding committed is not known")]
    CommitUnknown(#[source] RepoError),
    /// The whole founding outlasted its deadline.
    #[error("the founding did not finish within {}s", .0.as_secs())]
    Deadline(Duration),
    /// Another replica took the operation over (this one's lease lapsed); it finishes it.
    #[error("the operation was taken over by another replica")]
    Interrupted,
}

/// The classes of failure a caller sees: each is one problem type (and one HTTP status) at the
/// service's edge, the same for a founding answered live and for one read back later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The name is taken in the organization.
    NameTaken,
    /// A key or certificate could not be made.
    TrustMaterialFailed,
    /// plinth's database failed.
    DatabaseUnavailable,
    /// The compute service refused the request's subnet, groups, flavor or image.
    ComputeRefused,
    /// The compute service could not go on (e.g. no address left).
    ComputeConflict,
    /// The compute service failed.
    ComputeFailed,
    /// The compute service did not answer in time.
    ComputeTimeout,
    /// The VMs' rows could not be read.
    VmLookupFailed,
    /// The VMs had no address by the deadline.
    VmAddressesTimeout,
    /// The founding outlasted its deadline.
    FoundingDeadline,
    /// The replica running the founding went away; recovery rolled it back.
    Interrupted,
    /// The DNS server failed (a deletion removing the cluster's records).
    DnsFailed,
    /// The compute service refused plinth's own credentials, or the deployment's defaults do
    /// not exist there: the operator must fix the configuration.
    ComputeMisconfigured,
    /// The compute service has no capacity left; trying again later may work.
    CapacityExhausted,
    /// The organization has as many clusters as it may.
    QuotaExceeded,
    /// The organization runs as many foundings as it may at once.
    TooManyFoundings,
    /// A deletion outlasted its deadline; the cluster stays `deleting`.
    DeletionDeadline,
}

impl FailureKind {
    /// The problem type's slug, e.g. `compute-refused`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NameTaken => "name-taken",
            Self::TrustMaterialFailed => "trust-material-failed",
            Self::DatabaseUnavailable => "database-unavailable",
            Self::ComputeRefused => "compute-refused",
            Self::ComputeConflict => "compute-conflict",
            Self::ComputeFailed => "compute-failed",
            Self::ComputeTimeout => "compute-timeout",
            Self::VmLookupFailed => "vm-lookup-failed",
            Self::VmAddressesTimeout => "vm-addresses-timeout",
            Self::FoundingDeadline => "founding-deadline",
            Self::Interrupted => "interrupted",
            Self::DnsFailed => "dns-failed",
            Self::ComputeMisconfigured => "compute-misconfigured",
            Self::CapacityExhausted => "capacity-exhausted",
            Self::QuotaExceeded => "quota-exceeded",
            Self::TooManyFoundings => "too-many-foundings",
            Self::DeletionDeadline => "deletion-deadline",
        }
    }

    /// The kind a slug names.
    pub fn parse(slug: &str) -> Option<Self> {
        [
            Self::NameTaken,
            Self::TrustMaterialFailed,
            Self::DatabaseUnavailable,
            Self::ComputeRefused,
            Self::ComputeConflict,
            Self::ComputeFailed,
            Self::ComputeTimeout,
            Self::VmLookupFailed,
            Self::VmAddressesTimeout,
            Self::FoundingDeadline,
            Self::Interrupted,
            Self::DnsFailed,
            Self::DeletionDeadline,
            Self::ComputeMisconfigured,
            Self::CapacityExhausted,
            Self::QuotaExceeded,
            Self::TooManyFoundings,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == slug)
    }
}

/// A compute failure's class and its words for the caller: the caller's input refused is the
/// platform's message; the platform failing says only what plinth was doing.
pub(crate) fn compute_failure(e: &ComputeError, doing: &str) -> (FailureKind, String) {
    match e {
        ComputeError::NotFound(m) | ComputeError::Rejected(m) => (
            FailureKind::ComputeRefused,
            format!("the compute service refused {doing}: {m}"),
        ),
        ComputeError::Timeout(_) => (
            FailureKind::ComputeTimeout,
            format!("the compute service did not answer in time while {doing}"),
        ),
        ComputeError::Conflict(m) => (
            FailureKind::ComputeConflict,
            format!("the compute service could not go on with {doing}: {m}"),
        ),
        ComputeError::Unauthorized(_) => (
            FailureKind::ComputeMisconfigured,
            format!("the compute service refused plinth's own credentials while {doing}"),
        ),
        ComputeError::CapacityExhausted(m) => (
            FailureKind::CapacityExhausted,
            format!("the compute service has no capacity for {doing}: {m}; try again later"),
        ),
        _ => (
            FailureKind::ComputeFailed,
            format!("the compute service failed while {doing}"),
        ),
    }
}

impl FoundingFailure {
    /// The class of failure, and what to tell the caller (never internals).
    pub fn classify(&self) -> (FailureKind, String) {
        let database = |doing: &str| {
            (
                FailureKind::DatabaseUnavailable,
                format!("the database failed while {doing}; nothing was founded"),
            )
        };
        match self {
            Self::CreateCa(_)
            | Self::CreateServiceAccountKey(_)
            | Self::SignCertificate { .. }
            | Self::RenderKubeconfig(_) => (
                FailureKind::TrustMaterialFailed,
                "the cluster's trust material could not be made; nothing was founded".to_owned(),
            ),
            Self::ClaimName(RepoError::Conflict(m)) => (FailureKind::NameTaken, m.clone()),
            Self::ClaimName(RepoError::QuotaExceeded {
                quota: Quota::Clusters,
                limit,
            }) => (
                FailureKind::QuotaExceeded,
                format!(
                    "your organization has {limit} clusters, as many as it may; delete one \
                     first"
                ),
            ),
            Self::ClaimName(RepoError::QuotaExceeded {
                quota: Quota::FoundingsInFlight,
                limit,
            }) => (
                FailureKind::TooManyFoundings,
                format!(
                    "your organization has {limit} foundings running, as many as it may at \
                     once; try again when one has ended"
                ),
            ),
            Self::ClaimName(_) => database("starting the founding"),
            Self::StoreTrustRoot(_) | Self::Journal(_) | Self::RecordSecurityGroups(_) => {
                database("storing the cluster")
            }
            Self::Commit(_) => database("committing the cluster"),
            Self::CommitUnknown(_) => (
                FailureKind::DatabaseUnavailable,
                "the database failed while committing the cluster; whether it was founded is \
                 not known yet: GET /clusters shows it once it is"
                    .to_owned(),
            ),
            Self::SubnetLookup {
                source: ComputeError::NotFound(_),
                subnet,
                default: true,
            } => (
                FailureKind::ComputeMisconfigured,
                format!(
                    "the deployment's default subnet {subnet} does not exist at the compute \
                     service; nothing was founded"
                ),
            ),
            Self::SubnetLookup { source, subnet, .. } => {
                compute_failure(source, &format!("reading subnet {subnet}"))
            }
            Self::GroupLookup { source, group } => {
                compute_failure(source, &format!("reading security group {group}"))
            }
            Self::NotTheOrganizations(what) => (
                FailureKind::ComputeRefused,
                format!("{what} does not belong to your organization; nothing was founded"),
            ),
            Self::CreateSecurityGroup(source) => {
                compute_failure(source, "creating the control-plane security group")
            }
            Self::AddIngressRule { source, .. } => {
                compute_failure(source, "opening the control-plane security group")
            }
            Self::CreateVms(failures) => {
                let ordinals: Vec<String> = failures
                    .iter()
                    .map(|(ordinal, _)| format!("cp-{ordinal}"))
                    .collect();
                let (kind, _) = failures
                    .first()
                    .map_or((FailureKind::ComputeFailed, String::new()), |(_, e)| {
                        compute_failure(e, "")
                    });
                let reason = match (kind, failures.first()) {
                    (
                        FailureKind::ComputeRefused
                        | FailureKind::ComputeConflict
                        | FailureKind::CapacityExhausted,
                        Some((_, e)),
                    ) => {
                        format!(": {e}")
                    }
                    _ => String::new(),
                };
                (
                    kind,
                    format!(
                        "the compute service failed to create VM(s) {}{reason}",
                        ordinals.join(", ")
                    ),
                )
            }
            Self::VmIdentityLookup(_) => (
                FailureKind::VmLookupFailed,
                "the VMs' addresses could not be read".to_owned(),
            ),
            Self::VmAddressesDeadline {
                waiting_for,
                waited,
            } => (
                FailureKind::VmAddressesTimeout,
                format!(
                    "{} VM(s) had no private IPv4 after {}s",
                    waiting_for.len(),
                    waited.as_secs()
                ),
            ),
            Self::Deadline(limit) => (
                FailureKind::FoundingDeadline,
                format!(
                    "the founding did not finish within {}s; what it made was deleted",
                    limit.as_secs()
                ),
            ),
            Self::Interrupted => (
                FailureKind::Interrupted,
                "the founding was interrupted and is being rolled back; try again".to_owned(),
            ),
        }
    }

    /// Whether the founding's own resources must be deleted now. Not when another replica owns
    /// the operation, nor when the commit may have happened: recovery decides those.
    pub fn rolls_back(&self) -> bool {
        !matches!(self, Self::Interrupted | Self::CommitUnknown(_))
    }
}

fn list_vm_failures(failures: &[(NodeOrdinal, ComputeError)]) -> String {
    failures
        .iter()
        .map(|(ordinal, e)| format!("cp-{ordinal}: {}", Chain(e)))
        .collect::<Vec<_>>()
        .join("; ")
}

fn list_vm_ids(ids: &[VmId]) -> String {
    ids.iter().map(VmId::as_str).collect::<Vec<_>>().join(", ")
}

/// A platform resource a founding created (or may have created) before it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreatedResource {
    /// A control-plane VM.
    Vm(VmId),
    /// The cluster's security group.
    SecurityGroup(SecurityGroupId),
    /// A creation whose outcome is not known and could not be looked up.
    Unknown {
        /// What it would be.
        kind: ResourceKind,
        /// The key it was sent with.
        idempotency_key: String,
    },
}

impl fmt::Display for CreatedResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vm(id) => write!(f, "vm {id}"),
            Self::SecurityGroup(id) => write!(f, "security_group {id}"),
            Self::Unknown {
                kind,
                idempotency_key,
            } => write!(f, "{} of key {idempotency_key}", kind.as_str()),
        }
    }
}

/// What a stopped founding did about the resources it had created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Deleted again.
    pub removed: Vec<CreatedResource>,
    /// Still there, each with why it could not be deleted: someone must remove these.
    pub left_behind: Vec<(CreatedResource, String)>,
}

impl CleanupReport {
    /// Whether the failed founding left nothing behind.
    pub fn is_clean(&self) -> bool {
        self.left_behind.is_empty()
    }

    /// The stored problem of an operation that stopped with this cleanup.
    pub fn problem(&self, kind: FailureKind, step: &str, detail: String) -> OperationProblem {
        OperationProblem {
            kind: kind.as_str().to_owned(),
            step: step.to_owned(),
            detail,
            removed: self.removed.iter().map(ToString::to_string).collect(),
            left_behind: self
                .left_behind
                .iter()
                .map(|(r, _)| r.to_string())
                .collect(),
        }
    }
}

impl fmt::Display for CleanupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.removed.is_empty() {
            let removed: Vec<String> = self.removed.iter().map(ToString::to_string).collect();
            write!(f, "; cleaned up {}", removed.join(", "))?;
        }
        if !self.left_behind.is_empty() {
            let left: Vec<String> = self
                .left_behind
                .iter()
                .map(|(r, why)| format!("{r} ({why})"))
                .collect();
            write!(f, "; could not clean up {}", left.join(", "))?;
        }
        Ok(())
    }
}

/// Why `FoundCluster` did not found a cluster: a hard stop. Nothing was committed, and what the
/// founding had created was deleted as far as possible (see `cleanup`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FoundClusterError {
    /// A hard stop at one of the steps.
    #[error("founding stopped at step {step}{cleanup}")]
    Failed {
        /// The step the founding was at.
        step: FoundingStep,
        /// What stopped it.
        #[source]
        failure: FoundingFailure,
        /// What was deleted again, and what was left behind.
        cleanup: CleanupReport,
    },
}

impl FoundClusterError {
    /// The step the founding was at when it stopped.
    pub fn step(&self) -> FoundingStep {
        match self {
            Self::Failed { step, .. } => *step,
        }
    }

    /// The failure that stopped the founding.
    pub fn failure(&self) -> &FoundingFailure {
        match self {
            Self::Failed { failure, .. } => failure,
        }
    }

    /// What the stopped founding cleaned up and left behind.
    pub fn cleanup(&self) -> &CleanupReport {
        match self {
            Self::Failed { cleanup, .. } => cleanup,
        }
    }

    /// Whether the founding did not start because its idempotency key already stands for
    /// another operation.
    pub fn key_taken(&self) -> bool {
        matches!(
            self.failure(),
            FoundingFailure::ClaimName(RepoError::IdempotencyKeyTaken)
        )
    }

    /// The failure as it is stored with the operation and shown to the caller.
    pub fn problem(&self) -> OperationProblem {
        let (kind, detail) = self.failure().classify();
        self.cleanup().problem(kind, self.step().as_str(), detail)
    }
}
