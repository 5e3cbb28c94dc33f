//! `PgTx`: the founding's one transaction, on one pooled connection it owns.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use diesel::prelude::*;
use diesel_async::pooled_connection::deadpool::Object;
use diesel_async::{AnsiTransactionManager, AsyncPgConnection, RunQueryDsl, TransactionManager};
use plinth_domain::model::{ClusterId, VmId};
use plinth_domain::ports::context;
use plinth_domain::ports::pki::SharedClientCerts;
use plinth_domain::ports::repo::{
    ApiServerNodeRecord, ClusterSecurityGroups, EtcdNodeRecord, NewClusterRecord, RepoError,
    RepoTx, VmIdentity,
};

use crate::envelope::{Envelope, SealedRow, Slot};
use crate::errors::{query_error, timed_out};
use crate::rows::{
    NewApiServerNodeRow, NewClusterCertRow, NewClusterRow, NewEtcdNodeRow, VmRow, host,
};
use crate::schema::{apiservernodes, clustercerts, etcdnodes, kubeclusters, vms};

/// An open transaction. Committed or rolled back, its connection goes back to the pool; dropped
/// while open (an error path, a panic, a cancelled request), or after a call whose outcome is
/// unknown, its connection is closed instead, which makes the server roll back at once rather
/// than when the pool next recycles it.
pub(crate) struct PgTx {
    conn: Option<Object<AsyncPgConnection>>,
    envelope: Arc<Envelope>,
    timeout: Duration,
}

impl PgTx {
    pub(crate) async fn begin(
        mut conn: Object<AsyncPgConnection>,
        envelope: Arc<Envelope>,
        timeout: Duration,
    ) -> Result<Self, RepoError> {
        const DOING: &str = "beginning a transaction";
        match tokio::time::timeout(
            timeout,
            AnsiTransactionManager::begin_transaction(&mut *conn),
        )
        .await
        {
            Ok(Ok(())) => Ok(Self {
                conn: Some(conn),
                envelope,
                timeout,
            }),
            Ok(Err(e)) => {
                discard(conn);
                Err(query_error(e, DOING))
            }
            Err(_) => {
                discard(conn);
                Err(timed_out(DOING))
            }
        }
    }

    /// Lends the transaction's connection to one statement; [`PgTx::settle`] takes it back.
    fn take_conn(&mut self, doing: &str) -> Result<Object<AsyncPgConnection>, RepoError> {
        self.conn.take().ok_or_else(|| {
            RepoError::Unavailable(
                format!("{doing}: the transaction was aborted by an earlier error").into(),
            )
        })
    }

    /// Ends one bounded statement: on success the connection goes back to the transaction; after
    /// a failure or a timeout its state is unknown, so it is discarded (the server rolls back).
    fn settle<T>(
        &mut self,
        conn: Object<AsyncPgConnection>,
        doing: &str,
        outcome: Result<QueryResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, RepoError> {
        match outcome {
            Ok(Ok(value)) => {
                self.conn = Some(conn);
                Ok(value)
            }
            Ok(Err(e)) => {
                discard(conn);
                Err(query_error(e, doing))
            }
            Err(_) => {
                discard(conn);
                Err(timed_out(doing))
            }
        }
    }

    fn abort(&mut self) {
        if let Some(conn) = self.conn.take() {
            discard(conn);
        }
    }

    fn seal(
        &self,
        key: &plinth_domain::model::SecretText,
        slot: Slot<'_>,
    ) -> Result<String, RepoError> {
        self.envelope.seal(key, slot).map_err(|e| {
            RepoError::Unexpected(context(
                format!("encrypting {}.{}", slot.table, slot.column),
                e,
            ))
        })
    }

    async fn finish(mut self: Box<Self>, commit: bool) -> Result<(), RepoError> {
        let doing = if commit { "committing" } else { "rolling back" };
        let Some(mut conn) = self.conn.take() else {
            return Err(RepoError::Unavailable(
                format!("{doing}: the transaction was aborted by an earlier error").into(),
            ));
        };
        let finished = if commit {
            tokio::time::timeout(
                self.timeout,
                AnsiTransactionManager::commit_transaction(&mut *conn),
            )
            .await
        } else {
            tokio::time::timeout(
                self.timeout,
                AnsiTransactionManager::rollback_transaction(&mut *conn),
            )
            .await
        };
        match finished {
            Ok(Ok(())) => Ok(()), // `conn` drops back into the pool, clean
            Ok(Err(e)) => {
                discard(conn);
                Err(query_error(e, doing))
            }
            Err(_) => {
                discard(conn);
                Err(timed_out(doing))
            }
        }
    }
}

impl Drop for PgTx {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Takes a connection out of the pool for good and closes it.
fn discard(conn: Object<AsyncPgConnection>) {
    drop(Object::take(conn));
}

#[async_trait]
impl RepoTx for PgTx {
    async fn insert_cluster(&mut self, cluster: &NewClusterRecord) -> Result<(), RepoError> {
        let row_id = SealedRow::Cluster(cluster.id).to_string();
        let slot = |column| Slot {
            table: "kubeclusters",
            column,
            row: &row_id,
        };
        let spec = &cluster.spec;
        let requested = match &spec.security_groups {
            plinth_domain::model::SecurityGroupChoice::Given(ids) => {
                Some(ids.iter().map(|id| id.as_str()).collect())
            }
            plinth_domain::model::SecurityGroupChoice::CreateForCluster => None,
        };
        let row = NewClusterRow {
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
            ca_cert: &cluster.ca.root.cert_pem,
            ca_key: self.seal(&cluster.ca.root.key_pem, slot("ca_key"))?,
            etcd_ca_cert: &cluster.ca.etcd.cert_pem,
            etcd_ca_key: self.seal(&cluster.ca.etcd.key_pem, slot("etcd_ca_key"))?,
            front_proxy_ca_cert: &cluster.ca.front_proxy.cert_pem,
            front_proxy_ca_key: self
                .seal(&cluster.ca.front_proxy.key_pem, slot("front_proxy_ca_key"))?,
            sa_public_key: &cluster.service_account.public_key_pem,
            sa_private_key: self.seal(
                &cluster.service_account.private_key_pem,
                slot("sa_private_key"),
            )?,
            created_at: cluster.created_at,
        };
        const DOING: &str = "inserting the cluster";
        let mut conn = self.take_conn(DOING)?;
        let query = diesel::insert_into(kubeclusters::table).values(row);
        let outcome = tokio::time::timeout(self.timeout, query.execute(&mut *conn)).await;
        self.settle(conn, DOING, outcome).map(|_| ())
    }

    async fn record_security_groups(
        &mut self,
        cluster: ClusterId,
        groups: &ClusterSecurityGroups,
    ) -> Result<(), RepoError> {
        let attached: Vec<&str> = groups.attached.iter().map(|g| g.as_str()).collect();
        let created = groups.created.as_ref().map(|g| g.as_str());
        const DOING: &str = "recording the cluster's security groups";
        let mut conn = self.take_conn(DOING)?;
        let query = diesel::update(kubeclusters::table.find(cluster.as_uuid())).set((
            kubeclusters::security_group_ids.eq(attached),
            kubeclusters::created_security_group_id.eq(created),
            kubeclusters::updated_at.eq(diesel::dsl::now),
        ));
        let outcome = tokio::time::timeout(self.timeout, query.execute(&mut *conn)).await;
        let updated = self.settle(conn, DOING, outcome)?;
        if updated == 1 {
            Ok(())
        } else {
            Err(RepoError::NotFound(format!("cluster {cluster}")))
        }
    }

    async fn vm_identities(&mut self, ids: &[VmId]) -> Result<Vec<VmIdentity>, RepoError> {
        let ids: Vec<&str> = ids.iter().map(VmId::as_str).collect();
        const DOING: &str = "reading VM identities";
        let mut conn = self.take_conn(DOING)?;
        let query = vms::table
            .filter(vms::id.eq_any(ids))
            .select(VmRow::as_select());
        let outcome = tokio::time::timeout(self.timeout, query.load(&mut *conn)).await;
        let rows: Vec<VmRow> = self.settle(conn, DOING, outcome)?;
        rows.into_iter().map(VmRow::into_identity).collect()
    }

    async fn insert_etcd_nodes(&mut self, nodes: &[EtcdNodeRecord]) -> Result<(), RepoError> {
        let mut rows = Vec::with_capacity(nodes.len());
        for record in nodes {
            let row_id = SealedRow::Node(record.cluster_id, record.node.ordinal).to_string();
            let slot = Slot {
                table: "etcdnodes",
                column: "key",
                row: &row_id,
            };
            let node = &record.node;
            rows.push(NewEtcdNodeRow {
                cluster_id: record.cluster_id.as_uuid(),
                ordinal: i16::from(node.ordinal.get()),
                node_name: node.name.as_str(),
                vm_id: node.vm_id.as_str(),
                ipv4: host(node.addresses.ipv4.into()),
                ipv6: node.addresses.ipv6.map(|ip| host(ip.into())),
                public_ipv4: node.addresses.public_ipv4.map(|ip| host(ip.into())),
                cert: &record.cert.cert_pem,
                key: self.seal(&record.cert.key_pem, slot)?,
            });
        }
        const DOING: &str = "inserting etcd node rows";
        let mut conn = self.take_conn(DOING)?;
        let query = diesel::insert_into(etcdnodes::table).values(rows);
        let outcome = tokio::time::timeout(self.timeout, query.execute(&mut *conn)).await;
        self.settle(conn, DOING, outcome).map(|_| ())
    }

    async fn insert_apiserver_nodes(
        &mut self,
        nodes: &[ApiServerNodeRecord],
    ) -> Result<(), RepoError> {
        let mut rows = Vec::with_capacity(nodes.len());
        for record in nodes {
            let row_id = SealedRow::Node(record.cluster_id, record.node.ordinal).to_string();
            let slot = Slot {
                table: "apiservernodes",
                column: "key",
                row: &row_id,
            };
            let kubelet_slot = Slot {
                table: "apiservernodes",
                column: "kubelet_key",
                row: &row_id,
            };
            let kubelet_key = self.seal(&record.kubelet_cert.key_pem, kubelet_slot)?;
            let node = &record.node;
            rows.push(NewApiServerNodeRow {
                cluster_id: record.cluster_id.as_uuid(),
                ordinal: i16::from(node.ordinal.get()),
                node_name: node.name.as_str(),
                vm_id: node.vm_id.as_str(),
                ipv4: host(node.addresses.ipv4.into()),
                ipv6: node.addresses.ipv6.map(|ip| host(ip.into())),
                public_ipv4: node.addresses.public_ipv4.map(|ip| host(ip.into())),
                cert: &record.cert.cert_pem,
                key: self.seal(&record.cert.key_pem, slot)?,
                bootstrap_token_hash: record.bootstrap_token_hash.as_str(),
                bootstrap_token_expires_at: record.bootstrap_token_expires_at,
                kubelet_cert: Some(&record.kubelet_cert.cert_pem),
                kubelet_key: Some(kubelet_key),
            });
        }
        const DOING: &str = "inserting apiserver node rows";
        let mut conn = self.take_conn(DOING)?;
        let query = diesel::insert_into(apiservernodes::table).values(rows);
        let outcome = tokio::time::timeout(self.timeout, query.execute(&mut *conn)).await;
        self.settle(conn, DOING, outcome).map(|_| ())
    }

    async fn insert_shared_certs(
        &mut self,
        cluster: ClusterId,
        certs: &SharedClientCerts,
    ) -> Result<(), RepoError> {
        let mut rows = Vec::with_capacity(6);
        for (which, cert) in certs.iter() {
            let row_id = SealedRow::SharedCert(cluster, which).to_string();
            let slot = Slot {
                table: "clustercerts",
                column: "key",
                row: &row_id,
            };
            rows.push(NewClusterCertRow {
                cluster_id: cluster.as_uuid(),
                name: which.stored_name(),
                cert: &cert.cert_pem,
                key: self.seal(&cert.key_pem, slot)?,
            });
        }
        const DOING: &str = "inserting the shared client certificates";
        let mut conn = self.take_conn(DOING)?;
        let query = diesel::insert_into(clustercerts::table).values(rows);
        let outcome = tokio::time::timeout(self.timeout, query.execute(&mut *conn)).await;
        self.settle(conn, DOING, outcome).map(|_| ())
    }

    async fn commit(self: Box<Self>) -> Result<(), RepoError> {
        self.finish(true).await
    }

    async fn rollback(self: Box<Self>) -> Result<(), RepoError> {
        self.finish(false).await
    }
}
