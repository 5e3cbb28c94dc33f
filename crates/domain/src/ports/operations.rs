//! `Operations`: the journal of long-running operations. A founding commits its operation and
//! its cluster's name first, writes down every side effect before and after it happens, and ends
//! with one short transaction; each write is checked against the caller's lease, so a replica
//! that lost its operation to another one can change nothing.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::model::{
    ClusterId, Idempotency, IdempotencyKey, OperationId, OperationKind, OperationState, OrgId,
    ReplicaId, RequestFingerprint,
};
use crate::ports::pki::{ClusterCa, ServiceAccountKeyPair, SharedClientCerts};
use crate::ports::repo::{
    ApiServerNodeRecord, ClusterSecurityGroups, EtcdNodeRecord, NewClusterRecord, RepoError,
};

/// The right to work on one operation: held by one replica until its lease expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The operation.
    pub operation: OperationId,
    /// The replica holding it.
    pub owner: ReplicaId,
}

/// A founding to start: its operation and the cluster row that claims the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFounding {
    /// The operation, owned by the replica that starts it.
    pub lease: Lease,
    /// How long the lease holds without renewal, from the database's clock (so that replicas'
    /// clocks do not matter).
    pub lease_for: Duration,
    /// The cluster, `provisioning` until the founding ends.
    pub cluster: NewClusterRecord,
    /// The client's idempotency key, kept with the operation when it sent one.
    pub idempotency: Option<IdempotencyClaim>,
    /// The organization's quotas, checked in the same transaction.
    pub limits: OrgLimits,
}

/// What one organization may have at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrgLimits {
    /// Clusters, whatever their status.
    pub max_clusters: u32,
    /// Foundings running at once, across every replica.
    pub max_foundings_in_flight: u32,
}

/// A deletion to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeletion {
    /// The operation, owned by the replica that starts it.
    pub lease: Lease,
    /// How long the lease holds without renewal, from the database's clock.
    pub lease_for: Duration,
    /// For whom.
    pub org: OrgId,
    /// The cluster to delete.
    pub cluster: ClusterId,
    /// The client's idempotency key, kept with the operation when it sent one.
    pub idempotency: Option<IdempotencyClaim>,
}

/// What `begin_deletion` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeletionStart {
    /// The cluster is `deleting` and the new operation runs.
    Started,
    /// Another deletion of the cluster already runs: nothing was written (the idempotency key
    /// neither); the caller answers with that one.
    AlreadyRunning(Box<OperationRecord>),
}

/// An idempotency key to keep with a new operation: a retried request that sends it again (from
/// the same organization, within `retain_for`) is answered from that operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyClaim {
    /// The key and the request's fingerprint.
    pub idempotency: Idempotency,
    /// How long the key is kept, from the database's clock.
    pub retain_for: Duration,
}

/// The operation an organization's idempotency key stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotentOperation {
    /// The fingerprint of the request that first sent the key.
    pub fingerprint: RequestFingerprint,
    /// The operation that request started.
    pub operation: OperationRecord,
}

/// What kind of platform resource a journal entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// The cluster's security group.
    SecurityGroup,
    /// A control-plane VM.
    Vm,
}

impl ResourceKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SecurityGroup => "security_group",
            Self::Vm => "vm",
        }
    }
}

/// One side effect of an operation, as the journal has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// What kind of resource.
    pub kind: ResourceKind,
    /// The key the creation was (or will be) sent with; unique within the operation.
    pub idempotency_key: String,
    /// The resource's id once the platform said it; `None`: the outcome is not known.
    pub resource_id: Option<String>,
    /// Deleted again.
    pub deleted: bool,
}

/// Why an operation failed, as stored with it and as a replay of it will answer. The service
/// turns `kind` into a status and a problem type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationProblem {
    /// What class of failure, e.g. `compute-refused`, `interrupted`.
    pub kind: String,
    /// The step it stopped at.
    pub step: String,
    /// What went wrong, fit for the caller (no internals).
    pub detail: String,
    /// What was deleted again, e.g. `vm vm-1`.
    #[serde(default)]
    pub removed: Vec<String>,
    /// What is still there.
    #[serde(default)]
    pub left_behind: Vec<String>,
}

/// An operation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationRecord {
    /// The operation.
    pub id: OperationId,
    /// What it does.
    pub kind: OperationKind,
    /// For whom.
    pub org: OrgId,
    /// On which cluster.
    pub cluster_id: ClusterId,
    /// Where it is.
    pub state: OperationState,
    /// The step it reached.
    pub step: String,
    /// The replica that holds it while it runs; once it ended, the one that held it last.
    pub owner: ReplicaId,
    /// Until when that replica's lease holds.
    pub lease_expires_at: Option<OffsetDateTime>,
    /// Why it failed, when it did.
    pub problem: Option<OperationProblem>,
    /// When it started.
    pub started_at: OffsetDateTime,
    /// When it ended.
    pub ended_at: Option<OffsetDateTime>,
    /// Its side effects, in the order they were intended.
    pub journal: Vec<JournalEntry>,
}

/// Everything the founding's last transaction writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundingRows {
    /// The cluster.
    pub cluster: ClusterId,
    /// One `etcdnodes` row per node.
    pub etcd: Vec<EtcdNodeRecord>,
    /// One `apiservernodes` row per node.
    pub apiserver: Vec<ApiServerNodeRecord>,
    /// The client certificates every node shares.
    pub shared: SharedClientCerts,
    /// The earliest `notAfter` of every certificate of the cluster (CAs included), kept with
    /// the cluster for `GET /clusters?expiring_before=`.
    pub certificates_expire_at: OffsetDateTime,
}

/// The operations journal. Every write that names a [`Lease`] succeeds only while that lease is
/// the operation's and the operation runs; otherwise it is `RepoError::LeaseLost`.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Operations: Send + Sync {
    /// Commits the operation (running, leased), the `provisioning` cluster row and the
    /// idempotency key, if any, together. An expired key of the same organization is replaced.
    /// The organization's quotas are checked in the same transaction, one founding of an
    /// organization at a time, so concurrent foundings cannot overshoot them.
    ///
    /// # Errors
    /// `IdempotencyKeyTaken` when the organization's key stands for another operation (checked
    /// first), `QuotaExceeded` when the organization has `limits.max_clusters` clusters or
    /// `limits.max_foundings_in_flight` running foundings, `Conflict` when the name is taken in
    /// the organization (nothing is written in any of these cases), or `Unavailable`.
    async fn begin_founding(&self, founding: &NewFounding) -> Result<(), RepoError>;

    /// Extends the lease by `lease_for` from now (the database's clock) and notes the step the
    /// operation is at.
    ///
    /// # Errors
    /// `LeaseLost`, or `Unavailable`.
    async fn renew_lease(
        &self,
        lease: &Lease,
        step: &str,
        lease_for: Duration,
    ) -> Result<(), RepoError>;

    /// Stores the cluster's trust material (the adapter seals the private keys).
    ///
    /// # Errors
    /// `LeaseLost`, `Unavailable`, or `Unexpected` when a key cannot be sealed.
    async fn store_trust_root(
        &self,
        lease: &Lease,
        cluster: ClusterId,
        ca: &ClusterCa,
        service_account: &ServiceAccountKeyPair,
    ) -> Result<(), RepoError>;

    /// Writes down side effects about to happen, each with its idempotency key.
    ///
    /// # Errors
    /// `LeaseLost`, or `Unavailable`.
    async fn record_intents(
        &self,
        lease: &Lease,
        intents: &[(ResourceKind, String)],
    ) -> Result<(), RepoError>;

    /// Writes down the resource a side effect created.
    ///
    /// # Errors
    /// `LeaseLost`, or `Unavailable`.
    async fn record_created(
        &self,
        lease: &Lease,
        idempotency_key: &str,
        resource_id: &str,
    ) -> Result<(), RepoError>;

    /// Writes down that a journaled resource was deleted again.
    ///
    /// # Errors
    /// `LeaseLost`, or `Unavailable`.
    async fn record_deleted(&self, lease: &Lease, idempotency_key: &str) -> Result<(), RepoError>;

    /// Records which security groups the cluster's VMs have.
    ///
    /// # Errors
    /// `LeaseLost`, or `Unavailable`.
    async fn record_security_groups(
        &self,
        lease: &Lease,
        cluster: ClusterId,
        groups: &ClusterSecurityGroups,
    ) -> Result<(), RepoError>;

    /// The founding's one short transaction: the node rows and shared certificates, the cluster
    /// `ready`, the operation `succeeded`.
    ///
    /// # Errors
    /// `LeaseLost` (nothing is written), `Unavailable` (the outcome is not known: read the
    /// operation back), or `Unexpected` when a key cannot be sealed.
    async fn finish_founding(&self, lease: &Lease, rows: &FoundingRows) -> Result<(), RepoError>;

    /// Ends the operation as failed with `problem`, and removes its cluster row (and whatever
    /// hangs off it) when it never became ready. The journal stays, for the record.
    ///
    /// # Errors
    /// `LeaseLost`, or `Unavailable`.
    async fn fail_operation(
        &self,
        lease: &Lease,
        problem: &OperationProblem,
    ) -> Result<(), RepoError>;

    /// One operation with its journal.
    ///
    /// # Errors
    /// `Unavailable`, or `Unexpected` for a row that cannot be read.
    async fn operation(&self, id: OperationId) -> Result<Option<OperationRecord>, RepoError>;

    /// Takes over up to `limit` running operations whose lease expired (by the database's
    /// clock), leasing them to `owner` for `lease_for`. Replicas calling it at once get disjoint
    /// sets.
    ///
    /// # Errors
    /// `Unavailable`, or `Unexpected` for a row that cannot be read.
    async fn claim_expired(
        &self,
        owner: &ReplicaId,
        lease_for: Duration,
        limit: u32,
    ) -> Result<Vec<OperationRecord>, RepoError>;

    /// Of `clusters`, those that still have a row or a running operation: their resources are
    /// not orphans.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn live_clusters(&self, clusters: &[ClusterId]) -> Result<Vec<ClusterId>, RepoError>;

    /// Starts deleting one of `org`'s clusters: in one transaction, the cluster becomes
    /// `deleting` and the operation (kind `delete`, running, leased) and the idempotency key, if
    /// any, are committed. A `ready` cluster, and a `deleting` one whose last deletion stopped,
    /// start a new deletion; one whose deletion still runs answers it.
    ///
    /// # Errors
    /// `NotFound` for a cluster the organization does not have, `Conflict` for one still being
    /// founded, `IdempotencyKeyTaken` as for `begin_founding` (nothing written in any case), or
    /// `Unavailable`.
    async fn begin_deletion(&self, deletion: &NewDeletion) -> Result<DeletionStart, RepoError>;

    /// A deletion's last transaction: the cluster's row goes, with every node row, shared
    /// certificate and sealed key that hangs off it, and the operation `succeeded`.
    ///
    /// # Errors
    /// `LeaseLost` (nothing is written), or `Unavailable`.
    async fn finish_deletion(&self, lease: &Lease) -> Result<(), RepoError>;

    /// The operation `org`'s idempotency key stands for, unless the key has expired.
    ///
    /// # Errors
    /// `Unavailable`, or `Unexpected` for a row that cannot be read.
    async fn idempotent_operation(
        &self,
        org: &OrgId,
        key: &IdempotencyKey,
    ) -> Result<Option<IdempotentOperation>, RepoError>;

    /// Forgets idempotency keys past their retention; returns how many.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn purge_idempotency_keys(&self) -> Result<u64, RepoError>;
}
