//! Replays: a retried `POST /clusters` with the idempotency key of one that already started is
//! answered from that founding, not run again. A founding that succeeded is answered as it was
//! (rebuilt from the rows) with a freshly minted admin kubeconfig, because no kubeconfig is ever
//! stored; one that failed with its stored problem; one still running says so.

use time::OffsetDateTime;

use super::{
    FoundCluster, FoundedCluster, bootstrap_path_template, control_plane_records, suggested_records,
};
use crate::credentials::{AdminKubeconfig, FOUNDING_ADMIN_USER};
use crate::model::{ClusterId, Idempotency, OperationState, OrgId};
use crate::ports::Chain;
use crate::ports::operations::{IdempotentOperation, OperationProblem, OperationRecord};
use crate::ports::repo::{DnsOutcome, RepoError};

/// How a founding that a retried request's key stands for ended, or that it has not.
#[derive(Debug)]
pub enum Replay {
    /// It succeeded: its answer, with a new admin kubeconfig.
    Founded(Box<FoundedCluster>),
    /// It failed: its problem, as first answered.
    Failed(OperationProblem),
    /// It still runs.
    InFlight(Box<OperationRecord>),
}

/// Why a retried request could not be answered from the first one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The key came with another request first.
    #[error("this idempotency key was first used with another request")]
    KeyReused,
    /// The cluster the key founded is gone.
    #[error("cluster {0}, which this idempotency key founded, no longer exists")]
    ClusterGone(ClusterId),
    /// The database failed.
    #[error("reading the founding back failed")]
    Repo(#[source] RepoError),
    /// The new admin kubeconfig could not be made.
    #[error("minting the admin kubeconfig failed: {0}")]
    Mint(String),
}

/// What a replay says when the replica of a founding stopped between its commit and noting
/// what it did about DNS.
const DNS_OUTCOME_UNKNOWN: &str =
    "not known: the founding stopped before noting whether it published the name";

impl FoundCluster {
    /// Answers a request with `idempotency` from the operation its key stands for.
    ///
    /// # Errors
    /// `KeyReused` when the first request was another one; the others when the answer cannot be
    /// rebuilt.
    pub async fn replay(
        &self,
        org: &OrgId,
        idempotency: &Idempotency,
        first: IdempotentOperation,
    ) -> Result<Replay, ReplayError> {
        if first.fingerprint != idempotency.fingerprint {
            return Err(ReplayError::KeyReused);
        }
        let operation = first.operation;
        match operation.state {
            OperationState::Running => Ok(Replay::InFlight(Box::new(operation))),
            OperationState::Failed => Ok(Replay::Failed(operation.problem.unwrap_or_else(|| {
                OperationProblem {
                    kind: super::FailureKind::Interrupted.as_str().to_owned(),
                    step: operation.step.clone(),
                    detail: "the founding failed".to_owned(),
                    removed: Vec::new(),
                    left_behind: Vec::new(),
                }
            }))),
            OperationState::Succeeded => self
                .rebuild(org, &operation)
                .await
                .map(|founded| Replay::Founded(Box::new(founded))),
        }
    }

    async fn rebuild(
        &self,
        org: &OrgId,
        operation: &OperationRecord,
    ) -> Result<FoundedCluster, ReplayError> {
        let cluster = operation.cluster_id;
        let repo = &self.ports.repo;
        let details = repo
            .find_cluster(org, cluster)
            .await
            .map_err(ReplayError::Repo)?
            .ok_or(ReplayError::ClusterGone(cluster))?;
        let root = repo
            .cluster_root_ca(org, cluster)
            .await
            .map_err(ReplayError::Repo)?
            .ok_or(ReplayError::ClusterGone(cluster))?;
        let summary = details.summary;
        let (admin_kubeconfig, _) = AdminKubeconfig {
            cluster,
            control_plane_dns_name: &summary.control_plane_dns_name,
            api_server_port: details.networking.api_server_port(),
            root: &root,
            user: FOUNDING_ADMIN_USER,
            expires_at: self
                .settings
                .admin_lifetime
                .expiry_from(OffsetDateTime::now_utc()),
        }
        .mint(self.ports.pki.as_ref())
        .await
        .map_err(|e| ReplayError::Mint(Chain(&e).to_string()))?;
        let records = control_plane_records(&summary.control_plane_dns_name, &details.nodes);
        let dns = details.dns.unwrap_or(DnsOutcome {
            configured: false,
            error: Some(DNS_OUTCOME_UNKNOWN.to_owned()),
        });
        tracing::info!(cluster_id = %cluster, operation = %operation.id, "answered a retried founding from the first one");
        Ok(FoundedCluster {
            cluster_id: cluster,
            operation_id: operation.id,
            name: summary.name,
            vm_ids: details.nodes.iter().map(|n| n.vm_id.clone()).collect(),
            control_plane_dns_name: summary.control_plane_dns_name,
            admin_kubeconfig,
            networking: details.networking,
            nodes: details.nodes,
            bootstrap_path_template: bootstrap_path_template(cluster),
            ingress_wildcard_dns_name: details.ingress_wildcard_dns_name,
            suggested_dns_records: suggested_records(&records),
            dns_configured: dns.configured,
            dns_error: dns.error,
        })
    }
}
