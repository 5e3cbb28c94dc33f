use std::fmt;
use std::time::Duration;

use crate::model::{NodeOrdinal, SecurityGroupId, SubnetId, VmId};
use crate::ports::Chain;
use crate::ports::compute::ComputeError;
use crate::ports::pki::PkiError;
use crate::ports::repo::RepoError;

/// The steps of a founding after the request is validated (docs/ARCHITECTURE.md §1), for
/// errors, spans and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FoundingStep {
    /// 2: cluster CA with intermediates, and the service-account key pair.
    CreateTrustRoot,
    /// 3: begin the transaction and insert the cluster row.
    OpenTransaction,
    /// 4: use the given groups, or create one for the cluster.
    ResolveSecurityGroups,
    /// 5: one VM per ordinal, concurrently.
    CreateVms,
    /// 6: read each VM's addresses back from the database.
    ReadBackVms,
    /// 7: one etcd and one apiserver certificate per node.
    SignNodeCerts,
    /// 8: the etcd and apiserver node rows.
    InsertNodes,
    /// 9: admin certificate, kubeconfig, commit.
    Commit,
    /// 10: the shared control-plane record (soft).
    PublishDns,
}

impl FoundingStep {
    /// A stable snake_case name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateTrustRoot => "create_trust_root",
            Self::OpenTransaction => "open_transaction",
            Self::ResolveSecurityGroups => "resolve_security_groups",
            Self::CreateVms => "create_vms",
            Self::ReadBackVms => "read_back_vms",
            Self::SignNodeCerts => "sign_node_certs",
            Self::InsertNodes => "insert_nodes",
            Self::Commit => "commit",
            Self::PublishDns => "publish_dns",
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
    /// The cluster CA (or an intermediate) could not be created.
    #[error("creating the cluster CA failed")]
    CreateCa(#[source] PkiError),
    /// The service-account key pair could not be created.
    #[error("creating the service-account key pair failed")]
    CreateServiceAccountKey(#[source] PkiError),
    /// No transaction could be started.
    #[error("starting the database transaction failed")]
    BeginTransaction(#[source] RepoError),
    /// The cluster row could not be inserted (`Conflict`: the name is taken in the organization).
    #[error("inserting the cluster row failed")]
    InsertCluster(#[source] RepoError),
    /// The subnet could not be read.
    #[error("looking up subnet {subnet} failed")]
    SubnetLookup {
        /// The subnet.
        subnet: SubnetId,
        /// The compute error.
        source: ComputeError,
    },
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
    /// Node rows could not be inserted.
    #[error("inserting node rows failed")]
    InsertNodes(#[source] RepoError),
    /// The admin kubeconfig could not be rendered.
    #[error("rendering the admin kubeconfig failed: {0}")]
    RenderKubeconfig(String),
    /// The transaction could not be committed.
    #[error("committing the founding failed")]
    Commit(#[source] RepoError),
}

impl FoundingFailure {
    /// The step that stopped.
    pub fn step(&self) -> FoundingStep {
        match self {
            Self::CreateCa(_) | Self::CreateServiceAccountKey(_) => FoundingStep::CreateTrustRoot,
            Self::BeginTransaction(_) | Self::InsertCluster(_) => FoundingStep::OpenTransaction,
            Self::SubnetLookup { .. }
            | Self::CreateSecurityGroup(_)
            | Self::AddIngressRule { .. }
            | Self::RecordSecurityGroups(_) => FoundingStep::ResolveSecurityGroups,
            Self::CreateVms(_) => FoundingStep::CreateVms,
            Self::VmIdentityLookup(_) | Self::VmAddressesDeadline { .. } => {
                FoundingStep::ReadBackVms
            }
            Self::SignCertificate { .. } => FoundingStep::SignNodeCerts,
            Self::InsertNodes(_) => FoundingStep::InsertNodes,
            Self::RenderKubeconfig(_) | Self::Commit(_) => FoundingStep::Commit,
        }
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

/// A platform resource a founding created before it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreatedResource {
    /// A control-plane VM.
    Vm(VmId),
    /// The cluster's security group.
    SecurityGroup(SecurityGroupId),
}

impl fmt::Display for CreatedResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vm(id) => write!(f, "VM {id}"),
            Self::SecurityGroup(id) => write!(f, "security group {id}"),
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
    #[error("founding stopped at step {}{cleanup}", failure.step())]
    Failed {
        /// What stopped it.
        #[source]
        failure: FoundingFailure,
        /// What was deleted again, and what was left behind.
        cleanup: CleanupReport,
    },
}

impl FoundClusterError {
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
}
