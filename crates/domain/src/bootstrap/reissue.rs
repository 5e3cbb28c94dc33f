//! `ReissueToken`: a new bootstrap token for one node, for a node that boots late, a VM rebuilt,
//! or a token that leaked. The old token stops working at once; the answer carries the node's
//! userdata shim with the new token, ready for a new VM.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::credentials::AUDIT_TARGET;
use crate::found_cluster::{BootstrapBaseUrl, BootstrapCa, render_userdata_shim};
use crate::model::{BootstrapToken, ClusterId, NodeName, OrgId, SecretText};
use crate::ports::repo::{Repo, RepoError};

/// A node's new token.
#[derive(Debug, Clone)]
pub struct ReissuedToken {
    /// The token (the only time it is shown; plinth keeps its hash).
    pub token: SecretText,
    /// When it stops working (sooner once it has fetched a bundle).
    pub expires_at: OffsetDateTime,
    /// The node's userdata shim holding the new token.
    pub user_data: SecretText,
}

/// Why no token was issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReissueError {
    /// The organization has no ready cluster with such a node.
    #[error("no node {node} in a ready cluster {cluster} of your organization")]
    NotFound {
        /// The cluster asked for.
        cluster: ClusterId,
        /// The node asked for.
        node: String,
    },
    /// The database failed.
    #[error("the database failed")]
    Database(#[source] RepoError),
}

/// The use case behind `POST /clusters/{id}/nodes/{node_name}/bootstrap-token`.
#[derive(Clone)]
pub struct ReissueToken {
    repo: Arc<dyn Repo>,
    base: BootstrapBaseUrl,
    ca: Option<BootstrapCa>,
    ttl: Duration,
}

impl std::fmt::Debug for ReissueToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReissueToken")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl ReissueToken {
    /// Wires the use case: shims point at `base` and pin `ca` (when given), as a founding's do;
    /// tokens live `ttl`.
    pub fn new(
        repo: Arc<dyn Repo>,
        base: BootstrapBaseUrl,
        ca: Option<BootstrapCa>,
        ttl: Duration,
    ) -> Self {
        Self {
            repo,
            base,
            ca,
            ttl,
        }
    }

    /// Replaces the token of node `node` of `cluster` (one of `org`'s ready clusters).
    ///
    /// # Errors
    /// `NotFound` for anything the organization does not have, `Database` otherwise.
    pub async fn reissue(
        &self,
        org: &OrgId,
        cluster: ClusterId,
        node: &str,
    ) -> Result<ReissuedToken, ReissueError> {
        let not_found = || ReissueError::NotFound {
            cluster,
            node: node.to_owned(),
        };
        let (_, name) = NodeName::find(cluster, node).ok_or_else(not_found)?;
        let token = BootstrapToken::generate();
        let expires_at = OffsetDateTime::now_utc() + self.ttl;
        let replaced = self
            .repo
            .replace_bootstrap_token(org, cluster, &name, &token.hash(), expires_at)
            .await
            .map_err(ReissueError::Database)?;
        if !replaced {
            return Err(not_found());
        }
        tracing::info!(
            target: AUDIT_TARGET,
            event = "bootstrap_token_reissued",
            org = %org,
            cluster_id = %cluster,
            node = %name,
            "bootstrap token re-issued"
        );
        Ok(ReissuedToken {
            user_data: render_userdata_shim(&self.base, self.ca.as_ref(), cluster, &name, &token),
            token: SecretText::new(token.expose()),
            expires_at,
        })
    }
}
