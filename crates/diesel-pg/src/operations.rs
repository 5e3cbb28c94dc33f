//! The `Operations` port on PostgreSQL: the operations journal. Every method is one short
//! transaction on a pooled connection (no transaction outlives a call), and every write that
//! names a lease first locks the operation's row and checks the lease is still the caller's and
//! the operation still runs — the fence that keeps a replica that lost its operation, or a commit
//! racing a rollback, from changing anything.
//!
//! A founding a client sent an idempotency key with keeps that key (`client_idempotency_keys`,
//! per organization) in the same first transaction as its operation and name, so that a retry
//! finds the operation whatever became of it — running, founded, or failed and its cluster row
//! gone. A deletion keeps its key the same way, in the transaction that makes its cluster
//! `deleting`.

use async_trait::async_trait;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use plinth_domain::model::{ClusterId, ClusterStatus, OperationKind, OperationState, ReplicaId};
use plinth_domain::model::{
    IdempotencyKey, OperationId, OrgId, RequestFingerprint, SecurityGroupChoice,
};
use plinth_domain::ports::operations::{
    DeletionStart, FoundingRows, IdempotentOperation, Lease, NewDeletion, NewFounding,
    OperationProblem, OperationRecord, Operations, OrgLimits, ResourceKind,
};
use plinth_domain::ports::pki::{ClusterCa, ServiceAccountKeyPair};
use plinth_domain::ports::repo::{ClusterSecurityGroups, Quota, RepoError};
use std::time::Duration;

use diesel::dsl::sql;
use diesel::expression::{SqlLiteral, TypedExpressionType};
use diesel::sql_types::{Nullable, Timestamptz};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::PgRepo;
use crate::envelope::{SealedRow, Slot};
use crate::errors::{query_error, timed_out};
use crate::rows::{
    JournalRow, NewApiServerNodeRow, NewClusterCertRow, NewClusterRow, NewEtcdNodeRow,
    NewIdempotencyKeyRow, NewJournalRow, NewOperationRow, OperationRow, TrustRootChanges, host,
};
use crate::schema::{
    apiservernodes, client_idempotency_keys, clustercerts, etcdnodes, kubeclusters,
    operation_journal, operations,
};

/// What can end a short transaction.
enum TxError {
    /// The database said no.
    Db(diesel::result::Error),
    /// The operation is not the caller's (any more), or no longer runs.
    LeaseLost,
    /// The write names a cluster that is not the operation's: a caller's mistake, refused so
    /// that a lease never reaches beyond its own operation.
    NotTheOperations(String),
    /// The request cannot be done as the rows stand (no such cluster, one in the wrong state):
    /// the transaction rolls back and the caller gets this error.
    Refused(RepoError),
}

impl From<diesel::result::Error> for TxError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Db(e)
    }
}

/// A journal update that touched no row names an entry the operation never declared: the
/// caller's mistake, refused rather than silently ignored.
fn journal_entry_found(updated: usize, idempotency_key: &str) -> Result<(), TxError> {
    if updated == 0 {
        Err(TxError::NotTheOperations(format!(
            "no journal entry {idempotency_key:?} in this operation"
        )))
    } else {
        Ok(())
    }
}

/// Maps a bounded transaction's outcome into the port's error.
fn settle<T>(
    outcome: Result<Result<T, TxError>, tokio::time::error::Elapsed>,
    doing: &str,
) -> Result<T, RepoError> {
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(TxError::LeaseLost)) => Err(RepoError::LeaseLost),
        Ok(Err(TxError::NotTheOperations(what))) => {
            Err(RepoError::Unexpected(format!("{doing}: {what}").into()))
        }
        Ok(Err(TxError::Refused(e))) => Err(e),
        Ok(Err(TxError::Db(e))) => Err(query_error(e, doing)),
        Err(_) => Err(timed_out(doing)),
    }
}

/// `now() + span` on the database's clock, so that replicas' clocks do not matter.
fn from_now<ST: TypedExpressionType>(span: Duration) -> SqlLiteral<ST> {
    // A number, not text from outside: safe to write into the statement.
    sql(&format!(
        "now() + interval '{} milliseconds'",
        span.as_millis()
    ))
}

/// When a lease taken or renewed now for `lease_for` ends.
fn lease_end(lease_for: Duration) -> SqlLiteral<Nullable<Timestamptz>> {
    from_now(lease_for)
}

/// The database's clock, for columns that may be NULL.
pub(crate) fn db_now() -> diesel::expression::SqlLiteral<Nullable<Timestamptz>> {
    sql("now()")
}

/// Locks the operation's row if `lease` still holds it and it runs; returns the cluster the
/// operation works on.
async fn hold(c: &mut AsyncPgConnection, lease: &Lease) -> Result<Uuid, TxError> {
    hold_with_kind(c, lease).await.map(|(cluster, _)| cluster)
}

/// [`hold`], also returning the operation's kind (as stored).
async fn hold_with_kind(
    c: &mut AsyncPgConnection,
    lease: &Lease,
) -> Result<(Uuid, String), TxError> {
    let held: Option<(Uuid, String)> = operations::table
        .filter(operations::id.eq(lease.operation.as_uuid()))
        .filter(operations::owner.eq(lease.owner.as_str()))
        .filter(operations::state.eq(OperationState::Running.as_str()))
        .select((operations::cluster_id, operations::kind))
        .for_update()
        .first(c)
        .await
        .optional()?;
    held.ok_or(TxError::LeaseLost)
}

/// Keeps a client's idempotency key with the operation `key` names (inserted before it, in the
/// same transaction). A key of the organization past its retention is free again: the one
/// taking it replaces it. A key that stands for another operation fails on the primary key
/// (`IdempotencyKeyTaken`); one another transaction is writing right now makes this wait for
/// that transaction, then fail or succeed as it committed or rolled back.
async fn claim_key(
    c: &mut AsyncPgConnection,
    key: NewIdempotencyKeyRow<'_>,
    retain_for: Duration,
) -> QueryResult<()> {
    diesel::delete(
        client_idempotency_keys::table
            .find((key.org_id, key.key))
            .filter(client_idempotency_keys::expires_at.le(diesel::dsl::now)),
    )
    .execute(c)
    .await?;
    diesel::insert_into(client_idempotency_keys::table)
        .values((
            key,
            client_idempotency_keys::expires_at.eq(from_now(retain_for)),
        ))
        .execute(c)
        .await?;
    Ok(())
}

/// Ends a held operation as `succeeded` at its last step, `commit` (inside the caller's
/// transaction, after its own writes).
async fn succeed(c: &mut AsyncPgConnection, lease: &Lease) -> Result<(), TxError> {
    diesel::update(operations::table.find(lease.operation.as_uuid()))
        .set((
            operations::state.eq(OperationState::Succeeded.as_str()),
            operations::step.eq("commit"),
            operations::lease_expires_at.eq(None::<OffsetDateTime>),
            operations::ended_at.eq(db_now()),
            operations::updated_at.eq(diesel::dsl::now),
        ))
        .execute(c)
        .await?;
    Ok(())
}

/// Refuses a founding that would take the organization past its quotas. Foundings of one
/// organization take turns here (a transaction-scoped advisory lock on the organization), so
/// two at once cannot both see room for one; the lock goes with the transaction. The new
/// operation is already inserted: it counts among the running foundings.
async fn check_quotas(
    c: &mut AsyncPgConnection,
    org: &OrgId,
    limits: OrgLimits,
) -> Result<(), TxError> {
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind::<diesel::sql_types::Text, _>(format!("plinth-org:{org}"))
        .execute(c)
        .await?;
    let refused = |quota, limit| TxError::Refused(RepoError::QuotaExceeded { quota, limit });
    let clusters: i64 = kubeclusters::table
        .filter(kubeclusters::org_id.eq(org.as_str()))
        .count()
        .get_result(c)
        .await?;
    if clusters >= i64::from(limits.max_clusters) {
        return Err(refused(Quota::Clusters, limits.max_clusters));
    }
    let running: i64 = operations::table
        .filter(operations::org_id.eq(org.as_str()))
        .filter(operations::kind.eq(OperationKind::Found.as_str()))
        .filter(operations::state.eq(OperationState::Running.as_str()))
        .count()
        .get_result(c)
        .await?;
    if running > i64::from(limits.max_foundings_in_flight) {
        return Err(refused(
            Quota::FoundingsInFlight,
            limits.max_foundings_in_flight,
        ));
    }
    Ok(())
}

/// Checks that every cluster a write names is `own`, the cluster of the lease's operation.
fn only_own(own: Uuid, named: impl IntoIterator<Item = ClusterId>) -> Result<(), TxError> {
    match named.into_iter().find(|cluster| cluster.as_uuid() != own) {
        None => Ok(()),
        Some(other) => Err(TxError::NotTheOperations(format!(
            "cluster {other} is not the operation's (cluster {own})"
        ))),
    }
}

/// The rows of the founding's last transaction, keys sealed: etcd nodes, apiserver nodes, and
/// the shared client certificates.
type SealedRows<'a> = (
    Vec<NewEtcdNodeRow<'a>>,
    Vec<NewApiServerNodeRow<'a>>,
    Vec<NewClusterCertRow<'a>>,
);

impl PgRepo {
    fn seal(
        &self,
        key: &plinth_domain::model::SecretText,
        slot: Slot<'_>,
    ) -> Result<String, RepoError> {
        self.envelope.seal(key, slot).map_err(|e| {
            RepoError::Unexpected(plinth_domain::ports::context(
                format!("encrypting {}.{}", slot.table, slot.column),
                e,
            ))
        })
    }

    /// The sealed node and shared-certificate rows of the founding's last transaction.
    fn founding_rows<'a>(&self, rows: &'a FoundingRows) -> Result<SealedRows<'a>, RepoError> {
        let mut etcd = Vec::with_capacity(rows.etcd.len());
        for record in &rows.etcd {
            let row_id = SealedRow::Node(record.cluster_id, record.node.ordinal).to_string();
            let node = &record.node;
            etcd.push(NewEtcdNodeRow {
                cluster_id: record.cluster_id.as_uuid(),
                ordinal: i16::from(node.ordinal.get()),
                node_name: node.name.as_str(),
                vm_id: node.vm_id.as_str(),
                ipv4: host(node.addresses.ipv4.into()),
                ipv6: node.addresses.ipv6.map(|ip| host(ip.into())),
                public_ipv4: node.addresses.public_ipv4.map(|ip| host(ip.into())),
                cert: &record.cert.cert_pem,
                key: self.seal(
                    &record.cert.key_pem,
                    Slot {
                        table: "etcdnodes",
                        column: "key",
                        row: &row_id,
                    },
                )?,
            });
        }
        let mut apiserver = Vec::with_capacity(rows.apiserver.len());
        for record in &rows.apiserver {
            let row_id = SealedRow::Node(record.cluster_id, record.node.ordinal).to_string();
            let slot = |column| Slot {
                table: "apiservernodes",
                column,
                row: &row_id,
            };
            let node = &record.node;
            apiserver.push(NewApiServerNodeRow {
                cluster_id: record.cluster_id.as_uuid(),
                ordinal: i16::from(node.ordinal.get()),
                node_name: node.name.as_str(),
                vm_id: node.vm_id.as_str(),
                ipv4: host(node.addresses.ipv4.into()),
                ipv6: node.addresses.ipv6.map(|ip| host(ip.into())),
                public_ipv4: node.addresses.public_ipv4.map(|ip| host(ip.into())),
                cert: &record.cert.cert_pem,
                key: self.seal(&record.cert.key_pem, slot("key"))?,
                bootstrap_token_hash: record.bootstrap_token_hash.as_str(),
                bootstrap_token_expires_at: record.bootstrap_token_expires_at,
                kubelet_cert: Some(&record.kubelet_cert.cert_pem),
                kubelet_key: Some(self.seal(&record.kubelet_cert.key_pem, slot("kubelet_key"))?),
            });
        }
        let mut shared = Vec::with_capacity(6);
        for (which, cert) in rows.shared.iter() {
            let row_id = SealedRow::SharedCert(rows.cluster, which).to_string();
            shared.push(NewClusterCertRow {
                cluster_id: rows.cluster.as_uuid(),
                name: which.stored_name(),
                cert: &cert.cert_pem,
                key: self.seal(
                    &cert.key_pem,
                    Slot {
                        table: "clustercerts",
                        column: "key",
                        row: &row_id,
                    },
                )?,
            });
        }
        Ok((etcd, apiserver, shared))
    }

    /// One operation with its journal, on `c`.
    /// One operation row with its journal, bounded like a statement.
    async fn with_journal(
        &self,
        c: &mut AsyncPgConnection,
        row: OperationRow,
        doing: &str,
    ) -> Result<Option<OperationRecord>, RepoError> {
        let loaded =
            tokio::time::timeout(self.statement_timeout, Self::load_operations(c, vec![row]))
                .await
                .map_err(|_| timed_out(doing))??;
        Ok(loaded.into_iter().next())
    }

    async fn load_operations(
        c: &mut AsyncPgConnection,
        rows: Vec<OperationRow>,
    ) -> Result<Vec<OperationRecord>, RepoError> {
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let journal: Vec<JournalRow> = operation_journal::table
            .filter(operation_journal::operation_id.eq_any(&ids))
            .order(operation_journal::position.asc())
            .select(JournalRow::as_select())
            .load(c)
            .await
            .map_err(|e| query_error(e, "reading operation journals"))?;
        let mut by_operation: std::collections::HashMap<Uuid, Vec<JournalRow>> =
            std::collections::HashMap::new();
        for row in journal {
            by_operation.entry(row.operation_id).or_default().push(row);
        }
        rows.into_iter()
            .map(|row| {
                let journal = by_operation.remove(&row.id).unwrap_or_default();
                row.into_record(journal)
            })
            .collect()
    }
}

#[async_trait]
impl Operations for PgRepo {
    async fn begin_founding(&self, founding: &NewFounding) -> Result<(), RepoError> {
        const DOING: &str = "claiming the cluster's name";
        let cluster = &founding.cluster;
        let spec = &cluster.spec;
        let requested = match &spec.security_groups {
            SecurityGroupChoice::Given(ids) => Some(ids.iter().map(|id| id.as_str()).collect()),
            SecurityGroupChoice::CreateForCluster => None,
        };
        let cluster_row = NewClusterRow {
            id: cluster.id.as_uuid(),
            org_id: cluster.org.as_str(),
            name: spec.name.as_ref().map(|n| n.as_str()),
            control_plane_count: i16::from(spec.control_plane_count.get()),
            subnet_id: spec.subnet_id.as_str(),
            flavor: spec.flavor.as_str(),
            image: spec.image.as_str(),
            requested_security_group_ids: requested,
            pod_cidr: cluster.networking.pod_cidr().into(),
            service_cidr: cluster.networking.service_cidr().into(),
            dns_domain: cluster.networking.dns_domain(),
            api_server_port: i32::from(cluster.networking.api_server_port()),
            control_plane_dns_name: &cluster.control_plane_dns_name,
            ingress_wildcard_dns_name: &cluster.ingress_wildcard_dns_name,
            created_at: cluster.created_at,
            status: ClusterStatus::Provisioning.as_str(),
        };
        let operation = NewOperationRow {
            id: founding.lease.operation.as_uuid(),
            kind: OperationKind::Found.as_str(),
            org_id: cluster.org.as_str(),
            cluster_id: cluster.id.as_uuid(),
            state: OperationState::Running.as_str(),
            step: "claim_name",
            owner: founding.lease.owner.as_str(),
        };
        let claim = founding.idempotency.as_ref().map(|claim| {
            let row = NewIdempotencyKeyRow {
                org_id: cluster.org.as_str(),
                key: claim.idempotency.key.as_str(),
                fingerprint: claim.idempotency.fingerprint.as_str(),
                operation_id: founding.lease.operation.as_uuid(),
            };
            (row, claim.retain_for)
        });
        let lease_for = founding.lease_for;
        let (org, limits) = (&cluster.org, founding.limits);
        let mut conn = self.connection(DOING).await?;
        let outcome = tokio::time::timeout(
            self.statement_timeout,
            conn.transaction::<_, TxError, _>(async |c| {
                // The operation first: the key refers to it, and it conflicts with nothing.
                diesel::insert_into(operations::table)
                    .values((
                        operation,
                        operations::lease_expires_at.eq(lease_end(lease_for)),
                    ))
                    .execute(c)
                    .await?;
                // The key before the name, so that a retry whose first attempt still holds
                // the name learns that its key is taken (and is answered from that attempt),
                // not that its name is. A founding sending the same key at the same moment
                // waits here on this one's uncommitted row, then finds it taken.
                if let Some((key, retain_for)) = claim {
                    claim_key(c, key, retain_for).await?;
                }
                check_quotas(c, org, limits).await?;
                diesel::insert_into(kubeclusters::table)
                    .values(cluster_row)
                    .execute(c)
                    .await?;
                Ok(())
            }),
        )
        .await;
        settle(outcome, DOING)
    }

    async fn renew_lease(
        &self,
        lease: &Lease,
        step: &str,
        lease_for: Duration,
    ) -> Result<(), RepoError> {
        const DOING: &str = "renewing an operation's lease";
        let mut conn = self.connection(DOING).await?;
        let query = diesel::update(
            operations::table
                .filter(operations::id.eq(lease.operation.as_uuid()))
                .filter(operations::owner.eq(lease.owner.as_str()))
                .filter(operations::state.eq(OperationState::Running.as_str())),
        )
        .set((
            operations::step.eq(step),
            operations::lease_expires_at.eq(lease_end(lease_for)),
            operations::updated_at.eq(diesel::dsl::now),
        ));
        match tokio::time::timeout(self.statement_timeout, query.execute(&mut *conn)).await {
            Ok(Ok(1)) => Ok(()),
            Ok(Ok(_)) => Err(RepoError::LeaseLost),
            Ok(Err(e)) => Err(query_error(e, DOING)),
            Err(_) => Err(timed_out(DOING)),
        }
    }

    async fn store_trust_root(
        &self,
        lease: &Lease,
        cluster: ClusterId,
        ca: &ClusterCa,
        service_account: &ServiceAccountKeyPair,
    ) -> Result<(), RepoError> {
        const DOING: &str = "storing the cluster's trust material";
        let row_id = SealedRow::Cluster(cluster).to_string();
        let slot = |column| Slot {
            table: "kubeclusters",
            column,
            row: &row_id,
        };
        let changes = TrustRootChanges {
            ca_cert: &ca.root.cert_pem,
            ca_key: self.seal(&ca.root.key_pem, slot("ca_key"))?,
            etcd_ca_cert: &ca.etcd.cert_pem,
            etcd_ca_key: self.seal(&ca.etcd.key_pem, slot("etcd_ca_key"))?,
            front_proxy_ca_cert: &ca.front_proxy.cert_pem,
            front_proxy_ca_key: self.seal(&ca.front_proxy.key_pem, slot("front_proxy_ca_key"))?,
            sa_public_key: &service_account.public_key_pem,
            sa_private_key: self.seal(&service_account.private_key_pem, slot("sa_private_key"))?,
        };
        let mut conn = self.connection(DOING).await?;
        let outcome = tokio::time::timeout(
            self.statement_timeout,
            conn.transaction::<_, TxError, _>(async |c| {
                only_own(hold(c, lease).await?, [cluster])?;
                let updated = diesel::update(
                    kubeclusters::table
                        .find(cluster.as_uuid())
                        .filter(kubeclusters::status.eq(ClusterStatus::Provisioning.as_str())),
                )
                .set((changes, kubeclusters::updated_at.eq(diesel::dsl::now)))
                .execute(c)
                .await?;
                if updated == 1 {
                    Ok(())
                } else {
                    Err(TxError::Db(diesel::result::Error::NotFound))
                }
            }),
        )
        .await;
        settle(outcome, DOING)
    }

    async fn record_intents(
        &self,
        lease: &Lease,
        intents: &[(ResourceKind, String)],
    ) -> Result<(), RepoError> {
        const DOING: &str = "journaling side effects";
        let rows: Vec<NewJournalRow<'_>> = intents
            .iter()
            .map(|(kind, key)| NewJournalRow {
                operation_id: lease.operation.as_uuid(),
                idempotency_key: key,
                kind: kind.as_str(),
            })
            .collect();
        let mut conn = self.connection(DOING).await?;
        let outcome = tokio::time::timeout(
            self.statement_timeout,
            conn.transaction::<_, TxError, _>(async |c| {
                hold(c, lease).await?;
                diesel::insert_into(operation_journal::table)
                    .values(rows)
                    .on_conflict_do_nothing()
                    .execute(c)
                    .await?;
                Ok(())
            }),
        )
        .await;
        settle(outcome, DOING)
    }

    async fn record_created(
        &self,
        lease: &Lease,
        idempotency_key: &str,
        resource_id: &str,
    ) -> Result<(), RepoError> {
        const DOING: &str = "journaling a created resource";
        let mut conn = self.connection(DOING).await?;
        let outcome = tokio::time::timeout(
            self.statement_timeout,
            conn.transaction::<_, TxError, _>(async |c| {
                hold(c, lease).await?;
                let updated = diesel::update(
                    operation_journal::table.find((lease.operation.as_uuid(), idempotency_key)),
                )
                .set((
                    operation_journal::resource_id.eq(resource_id),
                    operation_journal::updated_at.eq(diesel::dsl::now),
                ))
                .execute(c)
                .await?;
                journal_entry_found(updated, idempotency_key)
            }),
        )
        .await;
        settle(outcome, DOING)
    }

    async fn record_deleted(&self, lease: &Lease, idempotency_key: &str) -> Result<(), RepoError> {
        const DOING: &str = "journaling a deleted resource";
        let mut conn = self.connection(DOING).await?;
        let outcome = tokio::time::timeout(
            self.statement_timeout,
            conn.transaction::<_, TxError, _>(async |c| {
                hold(c, lease).await?;
                let updated = diesel::update(
                    operation_journal::table.find((lease.operation.as_uuid(), idempotency_key)),
                )
                .set((
                    operation_journal::deleted.eq(true),
                    operation_journal::updated_at.eq(diesel::dsl::now),
                ))
                .execute(c)
                .await?;
                journal_entry_found(updated, idempotency_key)
            }),
        )
        .await;
        settle(outcome, DOING)
    }

    async fn record_security_groups(
        &self,
        lease: &Lease,
        cluster: ClusterId,
        groups: &ClusterSecurityGroups,
    ) -> Result<(), RepoError> {
        const DOING: &str = "recording the cluster's security groups";
        let attached: Vec<&str> = groups.attached.iter().map(|g| g.as_str()).collect();
        let created = groups.created.as_ref().map(|g| g.as_str());
        let mut conn = self.connection(DOING).await?;
        let outcome = tokio::time::timeout(
            self.statement_timeout,
            conn.transaction::<_, TxError, _>(async |c| {
                only_own(hold(c, lease).await?, [cluster])?;
                diesel::update(kubeclusters::table.find(cluster.as_uuid()))
                    .set((
                        kubeclusters::security_group_ids.eq(attached),
                        kubeclusters::created_security_group_id.eq(created),
                        kubeclusters::updated_at.eq(diesel::dsl::now),
                    ))
                    .execute(c)
                    .await?;
                Ok(())
            }),
        )
        .await;
        settle(outcome, DOING)
    }

    async fn finish_founding(&self, lease: &Lease, rows: &FoundingRows) -> Result<(), RepoError> {
        const DOING: &str = "committing the founding";
        let (etcd, apiserver, shared) = self.founding_rows(rows)?;
        let cluster = rows.cluster.as_uuid();
        let certificates_expire_at = rows.certificates_expire_at;
        let named = std::iter::once(rows.cluster)
            .chain(rows.etcd.iter().map(|r| r.cluster_id))
            .chain(rows.apiserver.iter().map(|r| r.cluster_id));
        let mut conn = self.connection(DOING).await?;
        let outcome = tokio::time::timeout(
            self.statement_timeout,
            conn.transaction::<_, TxError, _>(async |c| {
                only_own(hold(c, lease).await?, named)?;
                diesel::insert_into(etcdnodes::table)
                    .values(etcd)
                    .execute(c)
                    .await?;
                diesel::insert_into(apiservernodes::table)
                    .values(apiserver)
                    .execute(c)
                    .await?;
                diesel::insert_into(clustercerts::table)
                    .values(shared)
                    .execute(c)
                    .await?;
                diesel::update(kubeclusters::table.find(cluster))
                    .set((
                        kubeclusters::status.eq(ClusterStatus::Ready.as_str()),
                        // With the certificates it dates: `expiring_before` listings read it.
                        kubeclusters::certificates_expire_at.eq(Some(certificates_expire_at)),
                        kubeclusters::updated_at.eq(diesel::dsl::now),
                    ))
                    .execute(c)
                    .await?;
                succeed(c, lease).await
            }),
        )
        .await;
        settle(outcome, DOING)
    }

    async fn fail_operation(
        &self,
        lease: &Lease,
        problem: &OperationProblem,
    ) -> Result<(), RepoError> {
        const DOING: &str = "ending a failed operation";
        let problem = serde_json::to_value(problem).map_err(|e| {
            RepoError::Unexpected(plinth_domain::ports::context("encoding a problem", e))
        })?;
        let mut conn = self.connection(DOING).await?;
        let outcome = tokio::time::timeout(
            self.statement_timeout,
            conn.transaction::<_, TxError, _>(async |c| {
                let cluster = hold(c, lease).await?;
                // Node rows and shared certificates go with the row (ON DELETE CASCADE).
                diesel::delete(
                    kubeclusters::table
                        .find(cluster)
                        .filter(kubeclusters::status.eq(ClusterStatus::Provisioning.as_str())),
                )
                .execute(c)
                .await?;
                diesel::update(operations::table.find(lease.operation.as_uuid()))
                    .set((
                        operations::state.eq(OperationState::Failed.as_str()),
                        operations::problem.eq(Some(problem)),
                        operations::lease_expires_at.eq(None::<OffsetDateTime>),
                        operations::ended_at.eq(db_now()),
                        operations::updated_at.eq(diesel::dsl::now),
                    ))
                    .execute(c)
                    .await?;
                Ok(())
            }),
        )
        .await;
        settle(outcome, DOING)
    }

    async fn operation(&self, id: OperationId) -> Result<Option<OperationRecord>, RepoError> {
        const DOING: &str = "reading an operation";
        let mut conn = self.connection(DOING).await?;
        let query = operations::table
            .find(id.as_uuid())
            .select(OperationRow::as_select());
        let row = tokio::time::timeout(self.statement_timeout, query.first(&mut *conn))
            .await
            .map_err(|_| timed_out(DOING))?
            .optional()
            .map_err(|e| query_error(e, DOING))?;
        let Some(row) = row else {
            return Ok(None);
        };
        self.with_journal(&mut conn, row, DOING).await
    }

    async fn claim_expired(
        &self,
        owner: &ReplicaId,
        lease_for: Duration,
        limit: u32,
    ) -> Result<Vec<OperationRecord>, RepoError> {
        const DOING: &str = "claiming expired operations";
        let mut conn = self.connection(DOING).await?;
        // SKIP LOCKED: replicas claiming at once take disjoint operations, and an operation
        // whose owner is in the middle of a write (holding its row) is not taken from it.
        let expired = operations::table
            .filter(operations::state.eq(OperationState::Running.as_str()))
            .filter(operations::lease_expires_at.lt(db_now()))
            .order(operations::lease_expires_at.asc())
            .limit(i64::from(limit))
            .select(operations::id)
            .for_update()
            .skip_locked();
        let outcome = tokio::time::timeout(
            self.statement_timeout,
            conn.transaction::<_, TxError, _>(async |c| {
                let ids: Vec<Uuid> = expired.load(c).await?;
                Ok(
                    diesel::update(operations::table.filter(operations::id.eq_any(ids)))
                        .set((
                            operations::owner.eq(owner.as_str()),
                            operations::lease_expires_at.eq(lease_end(lease_for)),
                            operations::updated_at.eq(diesel::dsl::now),
                        ))
                        .returning(OperationRow::as_returning())
                        .get_results(c)
                        .await?,
                )
            }),
        )
        .await;
        let claimed = settle(outcome, DOING)?;
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        tokio::time::timeout(
            self.statement_timeout,
            Self::load_operations(&mut conn, claimed),
        )
        .await
        .map_err(|_| timed_out(DOING))?
    }

    async fn live_clusters(&self, clusters: &[ClusterId]) -> Result<Vec<ClusterId>, RepoError> {
        const DOING: &str = "reading which clusters live";
        let ids: Vec<Uuid> = clusters.iter().map(ClusterId::as_uuid).collect();
        let mut conn = self.connection(DOING).await?;
        let with_rows = kubeclusters::table
            .filter(kubeclusters::id.eq_any(&ids))
            .select(kubeclusters::id);
        let rows: Vec<Uuid> =
            tokio::time::timeout(self.statement_timeout, with_rows.load(&mut *conn))
                .await
                .map_err(|_| timed_out(DOING))?
                .map_err(|e| query_error(e, DOING))?;
        let running = operations::table
            .filter(operations::cluster_id.eq_any(&ids))
            .filter(operations::state.eq(OperationState::Running.as_str()))
            .select(operations::cluster_id);
        let running: Vec<Uuid> =
            tokio::time::timeout(self.statement_timeout, running.load(&mut *conn))
                .await
                .map_err(|_| timed_out(DOING))?
                .map_err(|e| query_error(e, DOING))?;
        let mut live: Vec<ClusterId> = rows
            .into_iter()
            .chain(running)
            .map(ClusterId::from_uuid)
            .collect();
        live.sort();
        live.dedup();
        Ok(live)
    }

    async fn begin_deletion(&self, deletion: &NewDeletion) -> Result<DeletionStart, RepoError> {
        const DOING: &str = "starting a cluster's deletion";
        let cluster = deletion.cluster.as_uuid();
        let operation = NewOperationRow {
            id: deletion.lease.operation.as_uuid(),
            kind: OperationKind::Delete.as_str(),
            org_id: deletion.org.as_str(),
            cluster_id: cluster,
            state: OperationState::Running.as_str(),
            step: "begin",
            owner: deletion.lease.owner.as_str(),
        };
        let claim = deletion.idempotency.as_ref().map(|claim| {
            let row = NewIdempotencyKeyRow {
                org_id: deletion.org.as_str(),
                key: claim.idempotency.key.as_str(),
                fingerprint: claim.idempotency.fingerprint.as_str(),
                operation_id: deletion.lease.operation.as_uuid(),
            };
            (row, claim.retain_for)
        });
        let lease_for = deletion.lease_for;
        let org = deletion.org.as_str();
        let mut conn = self.connection(DOING).await?;
        let outcome = tokio::time::timeout(
            self.statement_timeout,
            conn.transaction::<_, TxError, _>(async |c| {
                // The cluster's row first, locked: two deletions of one cluster take turns here,
                // and the second finds the first's operation (a committed one: after waiting,
                // each statement reads what has been committed since). A founding cannot end, nor
                // a deletion finish, in between.
                let status: Option<String> = kubeclusters::table
                    .filter(kubeclusters::id.eq(cluster))
                    .filter(kubeclusters::org_id.eq(org))
                    .select(kubeclusters::status)
                    .for_update()
                    .first(c)
                    .await
                    .optional()?;
                match status.as_deref() {
                    // Another organization's cluster is as absent as one that never was.
                    None => {
                        return Err(TxError::Refused(RepoError::NotFound(format!(
                            "cluster {cluster}"
                        ))));
                    }
                    Some(status) if status == ClusterStatus::Provisioning.as_str() => {
                        return Err(TxError::Refused(RepoError::Conflict(format!(
                            "cluster {cluster} is still being founded"
                        ))));
                    }
                    // Ready, or deleting after a deletion that stopped (or still runs).
                    Some(_) => {}
                }
                let running: Option<OperationRow> = operations::table
                    .filter(operations::cluster_id.eq(cluster))
                    .filter(operations::kind.eq(OperationKind::Delete.as_str()))
                    .filter(operations::state.eq(OperationState::Running.as_str()))
                    .select(OperationRow::as_select())
                    .first(c)
                    .await
                    .optional()?;
                if let Some(running) = running {
                    // Nothing written: the caller answers with that deletion.
                    return Ok(Some(running));
                }
                // The operation before its key (the key refers to it); a taken key fails the
                // whole transaction, so nothing of this deletion is written then either.
                diesel::insert_into(operations::table)
                    .values((
                        operation,
                        operations::lease_expires_at.eq(lease_end(lease_for)),
                    ))
                    .execute(c)
                    .await?;
                if let Some((key, retain_for)) = claim {
                    claim_key(c, key, retain_for).await?;
                }
                diesel::update(kubeclusters::table.find(cluster))
                    .set((
                        kubeclusters::status.eq(ClusterStatus::Deleting.as_str()),
                        kubeclusters::updated_at.eq(diesel::dsl::now),
                    ))
                    .execute(c)
                    .await?;
                Ok(None)
            }),
        )
        .await;
        let Some(running) = settle(outcome, DOING)? else {
            return Ok(DeletionStart::Started);
        };
        let id = running.id;
        let running = self.with_journal(&mut conn, running, DOING).await?;
        running
            .map(|record| DeletionStart::AlreadyRunning(Box::new(record)))
            .ok_or_else(|| {
                RepoError::Unexpected(format!("{DOING}: operation {id} could not be read").into())
            })
    }

    async fn finish_deletion(&self, lease: &Lease) -> Result<(), RepoError> {
        const DOING: &str = "committing the deletion";
        let mut conn = self.connection(DOING).await?;
        let outcome = tokio::time::timeout(
            self.statement_timeout,
            conn.transaction::<_, TxError, _>(async |c| {
                let (cluster, kind) = hold_with_kind(c, lease).await?;
                // A founding's lease cannot remove its cluster this way.
                if kind != OperationKind::Delete.as_str() {
                    return Err(TxError::NotTheOperations(format!(
                        "operation {} is a {kind:?} operation, not a deletion",
                        lease.operation
                    )));
                }
                // Node rows and shared certificates, with their sealed keys, go with the row
                // (ON DELETE CASCADE).
                let deleted = diesel::delete(
                    kubeclusters::table
                        .find(cluster)
                        .filter(kubeclusters::status.eq(ClusterStatus::Deleting.as_str())),
                )
                .execute(c)
                .await?;
                if deleted == 0 {
                    // Gone already is what this transaction was for; any other state is not the
                    // deletion's to end.
                    let status: Option<String> = kubeclusters::table
                        .find(cluster)
                        .select(kubeclusters::status)
                        .first(c)
                        .await
                        .optional()?;
                    if let Some(status) = status {
                        return Err(TxError::NotTheOperations(format!(
                            "cluster {cluster} is {status}, not deleting"
                        )));
                    }
                }
                succeed(c, lease).await
            }),
        )
        .await;
        settle(outcome, DOING)
    }

    async fn idempotent_operation(
        &self,
        org: &OrgId,
        key: &IdempotencyKey,
    ) -> Result<Option<IdempotentOperation>, RepoError> {
        const DOING: &str = "reading an idempotency key's operation";
        let mut conn = self.connection(DOING).await?;
        // A key past its retention reads as absent even before it is purged: the next founding
        // with it replaces it.
        let query = client_idempotency_keys::table
            .inner_join(operations::table)
            .filter(client_idempotency_keys::org_id.eq(org.as_str()))
            .filter(client_idempotency_keys::key.eq(key.as_str()))
            .filter(client_idempotency_keys::expires_at.gt(diesel::dsl::now))
            .select((
                client_idempotency_keys::fingerprint,
                OperationRow::as_select(),
            ));
        let found: Option<(String, OperationRow)> =
            tokio::time::timeout(self.statement_timeout, query.first(&mut *conn))
                .await
                .map_err(|_| timed_out(DOING))?
                .optional()
                .map_err(|e| query_error(e, DOING))?;
        let Some((fingerprint, row)) = found else {
            return Ok(None);
        };
        Ok(self
            .with_journal(&mut conn, row, DOING)
            .await?
            .map(|operation| IdempotentOperation {
                fingerprint: RequestFingerprint::from_stored(fingerprint),
                operation,
            }))
    }

    async fn purge_idempotency_keys(&self) -> Result<u64, RepoError> {
        const DOING: &str = "purging expired idempotency keys";
        let mut conn = self.connection(DOING).await?;
        let query = diesel::delete(
            client_idempotency_keys::table
                .filter(client_idempotency_keys::expires_at.le(diesel::dsl::now)),
        );
        let purged = tokio::time::timeout(self.statement_timeout, query.execute(&mut *conn))
            .await
            .map_err(|_| timed_out(DOING))?
            .map_err(|e| query_error(e, DOING))?;
        // A count of rows always fits.
        Ok(u64::try_from(purged).unwrap_or(u64::MAX))
    }
}
