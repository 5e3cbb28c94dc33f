//! plinth's `Repo` adapter: durable cluster truth in PostgreSQL (`kubeclusters`, `etcdnodes`,
//! `apiservernodes`), read access to the compute service's `vms`, on diesel-async with a
//! deadpool pool.
//!
//! It implements two ports: `Repo` (what the API and the boot path read, and the boot path's
//! bootstrap-token bookkeeping) and `Operations` (the journal a founding or a deletion writes
//! step by step, each write one short transaction; see [`operations`]). No transaction is held across anything but its own statements. Every
//! database call is bounded: getting a connection, connecting, and each statement have timeouts
//! on plinth's side, and every pooled connection also carries server-side `statement_timeout`,
//! `lock_timeout` and `idle_in_transaction_session_timeout`, so a database that is gone or hung
//! yields `RepoError::Unavailable`, never a hang, and no session can sit on locks. Private keys are sealed by
//! an [`envelope::Envelope`] before they reach a statement; the master keys never touch the
//! database.

mod counters;
pub mod envelope;
mod errors;
mod operations;
mod rows;
mod schema;
mod settings;
#[cfg(feature = "test-support")]
pub mod testing;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use diesel::prelude::*;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, PoolableConnection,
};
use diesel_async::{
    AsyncConnection, AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection,
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures::FutureExt as _;
use plinth_domain::model::{
    BootstrapTokenHash, ClusterId, ClusterStatus, NodeName, OrgId, SecretText, VmId,
};
use plinth_domain::ports::context;
use plinth_domain::ports::pki::{
    CertifiedKey, ClusterCa, ServiceAccountKeyPair, SharedClientCerts,
};
use plinth_domain::ports::repo::{
    BootstrapMaterial, BootstrapTokenRecord, ClusterDetails, ClusterPage, DnsOutcome,
    NamedCertificate, PageCursor, PageRequest, Repo, RepoError, VmIdentity,
};
use plinth_domain::settings::SettingsError;

pub use counters::{private_keys_opened, queries_sent};
pub use envelope::{Envelope, EnvelopeError, MasterKeyError, SealedRow, Slot};
pub use settings::{MasterKeySettings, PgSettings};

use crate::errors::{pool_error, query_error, timed_out};
use crate::operations::db_now;
use crate::rows::{
    ApiServerCertsRow, ApiServerSecretsRow, ClusterCertRow, ClusterDetailsRow, ClusterSecretsRow,
    ClusterSummaryRow, EtcdCertRow, NodeRow, VmRow,
};
use crate::schema::{apiservernodes, clustercerts, etcdnodes, kubeclusters, vms};

/// plinth's own migrations (`migrations/` at the top of the repository), embedded.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// The most clusters one page lists.
pub const MAX_PAGE: u32 = 100;

/// Why the repository could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgSetupError {
    /// A setting cannot work.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The pool settings are unusable.
    #[error("database pool: {0}")]
    Pool(String),
    /// Migrations failed to apply.
    #[error("applying migrations failed: {0}")]
    Migrations(String),
}

/// The `Repo` port on PostgreSQL.
#[derive(Clone)]
pub struct PgRepo {
    pool: Pool<AsyncPgConnection>,
    envelope: Arc<Envelope>,
    statement_timeout: Duration,
    acquire_timeout: Duration,
}

impl std::fmt::Debug for PgRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgRepo")
            .field("pool", &self.pool.status())
            .field("envelope", &self.envelope)
            .finish_non_exhaustive()
    }
}

impl PgRepo {
    /// Builds the pool (lazily: no connection is opened until one is needed).
    pub fn new(settings: &PgSettings, envelope: Envelope) -> Result<Self, PgSetupError> {
        settings.check()?;
        let connect_timeout = settings.connect_timeout()?;
        let acquire_timeout = settings.acquire_timeout()?;
        let session = settings.session_settings()?;
        let mut config = ManagerConfig::<AsyncPgConnection>::default();
        config.custom_setup = Box::new(move |url| {
            let url = url.to_owned();
            let session = session.clone();
            async move {
                let connecting = async {
                    let mut conn = AsyncPgConnection::establish(&url).await?;
                    conn.set_instrumentation(counters::CountQueries);
                    // The server enforces the bounds too: a statement, a lock wait or a
                    // transaction left idle cannot outlive them whatever plinth does.
                    conn.batch_execute(&session)
                        .await
                        .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
                    Ok(conn)
                };
                tokio::time::timeout(connect_timeout, connecting)
                    .await
                    .unwrap_or_else(|_| {
                        Err(diesel::ConnectionError::BadConnection(format!(
                            "connecting timed out after {connect_timeout:?}"
                        )))
                    })
            }
            .boxed()
        });
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
            settings.url.expose(),
            config,
        );
        let pool = Pool::builder(manager)
            .max_size(settings.max_connections.max(1))
            .wait_timeout(Some(acquire_timeout))
            .create_timeout(Some(connect_timeout))
            .recycle_timeout(Some(connect_timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| PgSetupError::Pool(e.to_string()))?;
        Ok(Self {
            pool,
            envelope: Arc::new(envelope),
            statement_timeout: settings.statement_timeout()?,
            acquire_timeout,
        })
    }

    /// The envelope sealing this repository's keys, for tests that open stored values.
    #[cfg(feature = "test-support")]
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    async fn connection(&self, doing: &str) -> Result<Lent, RepoError> {
        // The pool bounds waiting and connecting; this bounds the two together.
        match tokio::time::timeout(self.acquire_timeout * 2, self.pool.get()).await {
            Ok(Ok(conn)) => Ok(Lent(Some(conn))),
            Ok(Err(e)) => Err(pool_error(e, doing)),
            Err(_) => Err(timed_out(doing)),
        }
    }

    /// Applies plinth's pending migrations; returns the versions it applied (none when the
    /// schema is current). Needs a multi-threaded tokio runtime.
    pub async fn migrate(&self) -> Result<Vec<String>, PgSetupError> {
        let conn = self
            .connection("migrating")
            .await
            .map_err(|e| PgSetupError::Migrations(e.to_string()))?;
        // Out of the pool for good: the migration lock is the session's, and a session that ends
        // with this call cannot keep it, however the call ends (an error, a cancelled start-up).
        run_migrations(Box::new(conn.detach()), MIGRATIONS).await
    }
}

/// A pooled connection lent to one call. It goes back to the pool only when no transaction is
/// left open on it: a call cancelled or timed out half-way through a transaction (its caller
/// gave up, plinth's own bound fired) leaves the transaction open, holding its row locks — the
/// operation's row, a name's index entry — until the pool next hands that connection out or the
/// server's idle-in-transaction timeout ends it. Such a connection is closed instead, so the
/// server rolls the transaction back and releases its locks now.
pub(crate) struct Lent(Option<Object<AsyncPgConnection>>);

impl Lent {
    /// Takes the connection out of the pool: it closes when the caller drops it.
    fn detach(mut self) -> AsyncPgConnection {
        Object::take(
            self.0
                .take()
                .expect("a lent connection is there until it is dropped"),
        )
    }
}

impl std::ops::Deref for Lent {
    type Target = AsyncPgConnection;

    fn deref(&self) -> &AsyncPgConnection {
        self.0
            .as_ref()
            .expect("a lent connection is there until it is dropped")
    }
}

impl std::ops::DerefMut for Lent {
    fn deref_mut(&mut self) -> &mut AsyncPgConnection {
        self.0
            .as_mut()
            .expect("a lent connection is there until it is dropped")
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(mut conn) = self.0.take() {
            // Inside a transaction, or unsure whether a BEGIN/COMMIT/ROLLBACK went through.
            if PoolableConnection::is_broken(&mut *conn) {
                drop(Object::take(conn));
            }
        }
    }
}

/// Applies `migrations` on `conn` (blocking work, moved off the executor's core threads).
pub(crate) async fn run_migrations<C>(
    conn: C,
    migrations: EmbeddedMigrations,
) -> Result<Vec<String>, PgSetupError>
where
    C: std::ops::DerefMut<Target = AsyncPgConnection> + Send + 'static,
{
    let mut conn = conn;
    // Replicas starting together take turns: the lock is the session's, so it goes with the
    // connection if this process dies, and is released here otherwise.
    take_migration_lock(&mut conn).await?;
    // A migration may rewrite a large table: the bounds meant for requests would cancel it half
    // way. The connection is used for nothing else and closes afterwards.
    for lift in ["SET statement_timeout = 0", "SET lock_timeout = 0"] {
        diesel::sql_query(lift)
            .execute(&mut *conn)
            .await
            .map_err(|e| PgSetupError::Migrations(format!("lifting the request bounds: {e}")))?;
    }
    let mut harness = AsyncMigrationHarness::new(conn);
    let applied = harness
        .run_pending_migrations(migrations)
        .map(|applied| applied.iter().map(ToString::to_string).collect())
        .map_err(|e| PgSetupError::Migrations(e.to_string()));
    let mut conn = harness.into_inner();
    diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<diesel::sql_types::BigInt, _>(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await
        .map_err(|e| PgSetupError::Migrations(format!("releasing the migration lock: {e}")))?;
    applied
}

/// The advisory lock migrations run under ("plinth-migrate").
const MIGRATION_LOCK: i64 = 0x706c_696e_7468_6d67;

/// How long a replica waits for another one's migrations.
const MIGRATION_LOCK_WAIT: Duration = Duration::from_secs(600);

/// How often a waiting replica tries the lock again.
const MIGRATION_LOCK_POLL: Duration = Duration::from_millis(100);

/// Takes the migration lock, waiting while another replica migrates. It asks again and again
/// rather than waiting inside one statement: the session's own `lock_timeout` and
/// `statement_timeout` would cancel such a wait as soon as another replica's migrations take
/// longer than they allow, failing a start-up that only had to wait its turn.
async fn take_migration_lock(conn: &mut AsyncPgConnection) -> Result<(), PgSetupError> {
    let started = std::time::Instant::now();
    loop {
        let taken: bool = diesel::select(
            diesel::dsl::sql::<diesel::sql_types::Bool>("pg_try_advisory_lock(")
                .bind::<diesel::sql_types::BigInt, _>(MIGRATION_LOCK)
                .sql(")"),
        )
        .get_result(conn)
        .await
        .map_err(|e| PgSetupError::Migrations(format!("taking the migration lock: {e}")))?;
        if taken {
            return Ok(());
        }
        if started.elapsed() >= MIGRATION_LOCK_WAIT {
            return Err(PgSetupError::Migrations(format!(
                "another replica has been migrating for {MIGRATION_LOCK_WAIT:?}"
            )));
        }
        tokio::time::sleep(MIGRATION_LOCK_POLL).await;
    }
}

#[async_trait]
impl Repo for PgRepo {
    async fn ping(&self) -> Result<(), RepoError> {
        const DOING: &str = "checking the database";
        let mut conn = self.connection(DOING).await?;
        let query = diesel::select(1.into_sql::<diesel::sql_types::Integer>());
        match tokio::time::timeout(self.statement_timeout, query.get_result::<i32>(&mut *conn))
            .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(query_error(e, DOING)),
            Err(_) => Err(timed_out(DOING)),
        }
    }

    async fn vm_identities(&self, ids: &[VmId]) -> Result<Vec<VmIdentity>, RepoError> {
        const DOING: &str = "reading VM identities";
        let ids: Vec<&str> = ids.iter().map(VmId::as_str).collect();
        let mut conn = self.connection(DOING).await?;
        let query = vms::table
            .filter(vms::id.eq_any(ids))
            .select(VmRow::as_select());
        let rows: Vec<VmRow> = tokio::time::timeout(self.statement_timeout, query.load(&mut *conn))
            .await
            .map_err(|_| timed_out(DOING))?
            .map_err(|e| query_error(e, DOING))?;
        rows.into_iter().map(VmRow::into_identity).collect()
    }

    async fn find_cluster(
        &self,
        org: &OrgId,
        id: ClusterId,
    ) -> Result<Option<ClusterDetails>, RepoError> {
        const DOING: &str = "reading a cluster";
        let mut conn = self.connection(DOING).await?;
        let cluster = kubeclusters::table
            .filter(kubeclusters::org_id.eq(org.as_str()))
            .filter(kubeclusters::id.eq(id.as_uuid()))
            .select(ClusterDetailsRow::as_select());
        let found = tokio::time::timeout(
            self.statement_timeout,
            cluster.first(&mut *conn).await_optional(),
        )
        .await
        .map_err(|_| timed_out(DOING))?
        .map_err(|e| query_error(e, DOING))?;
        let Some(row) = found else {
            return Ok(None);
        };
        let nodes = apiservernodes::table
            .filter(apiservernodes::cluster_id.eq(id.as_uuid()))
            .order(apiservernodes::ordinal.asc())
            .select(NodeRow::as_select());
        let nodes: Vec<NodeRow> =
            tokio::time::timeout(self.statement_timeout, nodes.load(&mut *conn))
                .await
                .map_err(|_| timed_out(DOING))?
                .map_err(|e| query_error(e, DOING))?;
        row.into_details(nodes).map(Some)
    }

    async fn list_clusters(
        &self,
        org: &OrgId,
        page: &PageRequest,
    ) -> Result<ClusterPage, RepoError> {
        const DOING: &str = "listing clusters";
        let limit = page.limit.clamp(1, MAX_PAGE);
        let mut conn = self.connection(DOING).await?;
        let mut query = kubeclusters::table
            .filter(kubeclusters::org_id.eq(org.as_str()))
            .select(ClusterSummaryRow::as_select())
            .order((kubeclusters::created_at.desc(), kubeclusters::id.desc()))
            .limit(i64::from(limit) + 1)
            .into_boxed();
        if let Some(after) = page.after {
            // Row comparison, so PostgreSQL walks (org_id, created_at DESC, id DESC) directly.
            query = query.filter(
                diesel::dsl::sql::<diesel::sql_types::Bool>("(created_at, id) < (")
                    .bind::<diesel::sql_types::Timestamptz, _>(after.created_at)
                    .sql(", ")
                    .bind::<diesel::sql_types::Uuid, _>(after.id.as_uuid())
                    .sql(")"),
            );
        }
        if let Some(before) = page.expiring_before {
            // A cluster without an expiry (provisioning, or founded before plinth kept it) is
            // never selected: NULL is before nothing. The keyset order is unchanged, so the
            // cursor pages the filtered list as it pages the whole one.
            query = query.filter(kubeclusters::certificates_expire_at.lt(before));
        }
        let mut rows: Vec<ClusterSummaryRow> =
            tokio::time::timeout(self.statement_timeout, query.load(&mut *conn))
                .await
                .map_err(|_| timed_out(DOING))?
                .map_err(|e| query_error(e, DOING))?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let clusters = rows
            .into_iter()
            .map(ClusterSummaryRow::into_summary)
            .collect::<Result<Vec<_>, _>>()?;
        let next = if more {
            clusters.last().map(|last| PageCursor {
                created_at: last.created_at,
                id: last.id,
            })
        } else {
            None
        };
        Ok(ClusterPage { clusters, next })
    }

    async fn record_dns_outcome(
        &self,
        cluster: ClusterId,
        outcome: &DnsOutcome,
    ) -> Result<(), RepoError> {
        const DOING: &str = "recording a cluster's DNS outcome";
        let mut conn = self.connection(DOING).await?;
        // No lease: the founding has ended. A cluster deleted since updates nothing, which is
        // no error: there is nothing left to say it about.
        let query = diesel::update(kubeclusters::table.find(cluster.as_uuid())).set((
            kubeclusters::dns_configured.eq(Some(outcome.configured)),
            kubeclusters::dns_error.eq(outcome.error.as_deref()),
            kubeclusters::updated_at.eq(diesel::dsl::now),
        ));
        tokio::time::timeout(self.statement_timeout, query.execute(&mut *conn))
            .await
            .map_err(|_| timed_out(DOING))?
            .map_err(|e| query_error(e, DOING))?;
        Ok(())
    }

    async fn cluster_root_ca(
        &self,
        org: &OrgId,
        cluster: ClusterId,
    ) -> Result<Option<CertifiedKey>, RepoError> {
        const DOING: &str = "reading a cluster's root CA";
        let mut conn = self.connection(DOING).await?;
        // Scoped by organization, so that one organization cannot have a certificate signed by
        // another's CA.
        let query = kubeclusters::table
            .filter(kubeclusters::org_id.eq(org.as_str()))
            .filter(kubeclusters::id.eq(cluster.as_uuid()))
            .select((kubeclusters::ca_cert, kubeclusters::ca_key));
        let found: Option<(Option<String>, Option<String>)> = tokio::time::timeout(
            self.statement_timeout,
            query.first(&mut *conn).await_optional(),
        )
        .await
        .map_err(|_| timed_out(DOING))?
        .map_err(|e| query_error(e, DOING))?;
        let (cert_pem, sealed) = match found {
            // A provisioning cluster has no trust material until its founding's step 3.
            None | Some((None, None)) => return Ok(None),
            Some((Some(cert_pem), Some(sealed))) => (cert_pem, sealed),
            // Both are stored in one statement: half of the pair is corrupt data.
            Some(_) => {
                return Err(RepoError::Unexpected(
                    format!("cluster {cluster} has half of its root CA").into(),
                ));
            }
        };
        let key_pem = self.open(
            &sealed,
            "kubeclusters",
            "ca_key",
            &SealedRow::Cluster(cluster).to_string(),
        )?;
        Ok(Some(CertifiedKey { cert_pem, key_pem }))
    }

    async fn bootstrap_token(
        &self,
        token: &BootstrapTokenHash,
    ) -> Result<Option<BootstrapTokenRecord>, RepoError> {
        const DOING: &str = "looking a bootstrap token up";
        let mut conn = self.connection(DOING).await?;
        let query = apiservernodes::table
            .filter(apiservernodes::bootstrap_token_hash.eq(token.as_str()))
            .select((
                apiservernodes::cluster_id,
                apiservernodes::node_name,
                apiservernodes::bootstrap_token_hash,
                apiservernodes::bootstrap_token_expires_at,
                apiservernodes::bootstrap_token_first_used_at,
            ));
        type TokenRow = (
            uuid::Uuid,
            String,
            String,
            time::OffsetDateTime,
            Option<time::OffsetDateTime>,
        );
        let row: Option<TokenRow> =
            tokio::time::timeout(self.statement_timeout, query.first(&mut *conn))
                .await
                .map_err(|_| timed_out(DOING))?
                .optional()
                .map_err(|e| query_error(e, DOING))?;
        row.map(|(cluster, node, hash, expires_at, first_used_at)| {
            let cluster = ClusterId::from_uuid(cluster);
            let (_, node) = NodeName::find(cluster, &node).ok_or_else(|| {
                RepoError::Unexpected(
                    format!("apiservernodes.node_name {node:?} is no node of {cluster}").into(),
                )
            })?;
            Ok(BootstrapTokenRecord {
                cluster,
                node,
                hash: BootstrapTokenHash::from_stored(hash),
                expires_at,
                first_used_at,
            })
        })
        .transpose()
    }

    async fn note_bootstrap_fetch(
        &self,
        cluster: ClusterId,
        node: &NodeName,
        token: &BootstrapTokenHash,
    ) -> Result<(), RepoError> {
        const DOING: &str = "noting a bootstrap token's first use";
        let mut conn = self.connection(DOING).await?;
        // The first fetch with this very token only: a later one keeps the first time (the
        // reuse window runs from it), and a token replaced meanwhile is another token, whose
        // first use this is not. Matching no row (a node or cluster gone since) is no error.
        let query = diesel::update(
            apiservernodes::table
                .filter(apiservernodes::cluster_id.eq(cluster.as_uuid()))
                .filter(apiservernodes::node_name.eq(node.as_str()))
                .filter(apiservernodes::bootstrap_token_hash.eq(token.as_str()))
                .filter(apiservernodes::bootstrap_token_first_used_at.is_null()),
        )
        .set(apiservernodes::bootstrap_token_first_used_at.eq(db_now()));
        tokio::time::timeout(self.statement_timeout, query.execute(&mut *conn))
            .await
            .map_err(|_| timed_out(DOING))?
            .map_err(|e| query_error(e, DOING))?;
        Ok(())
    }

    async fn replace_bootstrap_token(
        &self,
        org: &OrgId,
        cluster: ClusterId,
        node: &NodeName,
        token: &BootstrapTokenHash,
        expires_at: time::OffsetDateTime,
    ) -> Result<bool, RepoError> {
        const DOING: &str = "replacing a node's bootstrap token";
        let mut conn = self.connection(DOING).await?;
        // Scoped by organization, so that one organization cannot re-issue another's token, and
        // to ready clusters: a provisioning one has no nodes, a deleting one boots none. The
        // check and the write are one statement, so a token is re-issued only for a cluster that
        // was ready when it ran (a deletion beginning at that moment may follow it; the node
        // cannot use the token then, as bootstrap material is read for ready clusters only).
        let ready_in_org = kubeclusters::table
            .filter(kubeclusters::id.eq(cluster.as_uuid()))
            .filter(kubeclusters::org_id.eq(org.as_str()))
            .filter(kubeclusters::status.eq(ClusterStatus::Ready.as_str()));
        let query = diesel::update(
            apiservernodes::table
                .filter(apiservernodes::cluster_id.eq(cluster.as_uuid()))
                .filter(apiservernodes::node_name.eq(node.as_str()))
                .filter(diesel::dsl::exists(ready_in_org)),
        )
        .set((
            apiservernodes::bootstrap_token_hash.eq(token.as_str()),
            apiservernodes::bootstrap_token_expires_at.eq(expires_at),
            // A new token has not been used: its reuse window has not started.
            apiservernodes::bootstrap_token_first_used_at.eq(None::<time::OffsetDateTime>),
        ));
        let updated = tokio::time::timeout(self.statement_timeout, query.execute(&mut *conn))
            .await
            .map_err(|_| timed_out(DOING))?
            .map_err(|e| query_error(e, DOING))?;
        Ok(updated == 1)
    }

    async fn cluster_certificates(
        &self,
        org: &OrgId,
        cluster: ClusterId,
    ) -> Result<Option<Vec<NamedCertificate>>, RepoError> {
        const DOING: &str = "reading a cluster's certificates";
        let id = cluster.as_uuid();
        let cas = kubeclusters::table
            .filter(kubeclusters::org_id.eq(org.as_str()))
            .filter(kubeclusters::id.eq(id))
            .select((
                kubeclusters::ca_cert,
                kubeclusters::etcd_ca_cert,
                kubeclusters::front_proxy_ca_cert,
            ));
        let shared = clustercerts::table
            .filter(clustercerts::cluster_id.eq(id))
            .order(clustercerts::name.asc())
            .select((clustercerts::name, clustercerts::cert));
        let etcd = etcdnodes::table
            .filter(etcdnodes::cluster_id.eq(id))
            .order(etcdnodes::ordinal.asc())
            .select(EtcdCertRow::as_select());
        let apiserver = apiservernodes::table
            .filter(apiservernodes::cluster_id.eq(id))
            .order(apiservernodes::ordinal.asc())
            .select(ApiServerCertsRow::as_select());
        let mut conn = self.connection(DOING).await?;
        // One snapshot: a cluster that is founded or deleted between the reads does not come
        // back with half of its certificates.
        let mut snapshot = conn.build_transaction().read_only().repeatable_read();
        let read = snapshot.run(async |c| {
            let Some(cas) = cas.first::<CaCerts>(c).await.optional()? else {
                return Ok::<_, diesel::result::Error>(None);
            };
            let shared: Vec<(String, String)> = shared.load(c).await?;
            let etcd: Vec<EtcdCertRow> = etcd.load(c).await?;
            let apiserver: Vec<ApiServerCertsRow> = apiserver.load(c).await?;
            Ok(Some((cas, shared, etcd, apiserver)))
        });
        let Some(((ca, etcd_ca, front_proxy_ca), shared, etcd, apiserver)) =
            tokio::time::timeout(self.statement_timeout, read)
                .await
                .map_err(|_| timed_out(DOING))?
                .map_err(|e| query_error(e, DOING))?
        else {
            return Ok(None);
        };
        let named = |name: String, cert_pem: String| NamedCertificate { name, cert_pem };
        // CAs (those stored: a provisioning cluster may have none yet), the shared client
        // certificates by name, then each node's by ordinal: etcd, apiserver, kubelet.
        let mut certs: Vec<NamedCertificate> = [
            ("ca", ca),
            ("etcd-ca", etcd_ca),
            ("front-proxy-ca", front_proxy_ca),
        ]
        .into_iter()
        .filter_map(|(name, cert)| cert.map(|cert| named(name.to_owned(), cert)))
        .chain(shared.into_iter().map(|(name, cert)| named(name, cert)))
        .collect();
        let mut nodes: std::collections::BTreeMap<i16, Vec<NamedCertificate>> =
            std::collections::BTreeMap::new();
        for row in etcd {
            nodes
                .entry(row.ordinal)
                .or_default()
                .push(named(format!("{}/etcd", row.node_name), row.cert));
        }
        for row in apiserver {
            let node = nodes.entry(row.ordinal).or_default();
            node.push(named(format!("{}/apiserver", row.node_name), row.cert));
            // Nodes founded before bundles existed have no kubelet certificate.
            if let Some(kubelet) = row.kubelet_cert {
                node.push(named(format!("{}/kubelet", row.node_name), kubelet));
            }
        }
        certs.extend(nodes.into_values().flatten());
        Ok(Some(certs))
    }

    async fn bootstrap_material(
        &self,
        cluster: ClusterId,
        node: &NodeName,
    ) -> Result<Option<BootstrapMaterial>, RepoError> {
        self.load_bootstrap_material(cluster, node).await
    }
}

/// A cluster's three CA certificates (root, etcd, front proxy), each once stored.
type CaCerts = (Option<String>, Option<String>, Option<String>);

impl PgRepo {
    fn open(
        &self,
        sealed: &str,
        table: &str,
        column: &str,
        row: &str,
    ) -> Result<SecretText, RepoError> {
        self.envelope
            .open(sealed, Slot { table, column, row })
            .map_err(|e| {
                RepoError::Unexpected(context(format!("opening {table}.{column} of {row}"), e))
            })
    }

    async fn load_bootstrap_material(
        &self,
        cluster: ClusterId,
        node: &NodeName,
    ) -> Result<Option<BootstrapMaterial>, RepoError> {
        const DOING: &str = "reading a node's bootstrap material";
        let bound = |e: tokio::time::error::Elapsed| {
            let _ = e;
            timed_out(DOING)
        };
        let id = cluster.as_uuid();
        let mut conn = self.connection(DOING).await?;
        let limit = self.statement_timeout;

        let row = kubeclusters::table
            .find(id)
            .filter(kubeclusters::status.eq(ClusterStatus::Ready.as_str()))
            .select(ClusterSecretsRow::as_select());
        let Some(row) = tokio::time::timeout(limit, row.first(&mut *conn).await_optional())
            .await
            .map_err(bound)?
            .map_err(|e| query_error(e, DOING))?
        else {
            return Ok(None);
        };
        let nodes = apiservernodes::table
            .filter(apiservernodes::cluster_id.eq(id))
            .order(apiservernodes::ordinal.asc())
            .select(NodeRow::as_select());
        let nodes: Vec<NodeRow> = tokio::time::timeout(limit, nodes.load(&mut *conn))
            .await
            .map_err(bound)?
            .map_err(|e| query_error(e, DOING))?;
        let nodes = nodes
            .into_iter()
            .map(|n| n.into_placement(cluster))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(placement) = nodes.iter().find(|n| &n.name == node).cloned() else {
            return Ok(None);
        };
        let ordinal = i16::from(placement.ordinal.get());
        let apiserver = apiservernodes::table
            .find((id, ordinal))
            .select(ApiServerSecretsRow::as_select());
        let apiserver: ApiServerSecretsRow =
            tokio::time::timeout(limit, apiserver.first(&mut *conn))
                .await
                .map_err(bound)?
                .map_err(|e| query_error(e, DOING))?;
        let etcd = etcdnodes::table
            .find((id, ordinal))
            .select((etcdnodes::cert, etcdnodes::key));
        let (etcd_cert, etcd_key): (String, String) =
            tokio::time::timeout(limit, etcd.first(&mut *conn))
                .await
                .map_err(bound)?
                .map_err(|e| query_error(e, DOING))?;
        let shared = clustercerts::table
            .filter(clustercerts::cluster_id.eq(id))
            .select(ClusterCertRow::as_select());
        let shared: Vec<ClusterCertRow> = tokio::time::timeout(limit, shared.load(&mut *conn))
            .await
            .map_err(bound)?
            .map_err(|e| query_error(e, DOING))?;

        let cluster_row = SealedRow::Cluster(cluster).to_string();
        let node_row = SealedRow::Node(cluster, placement.ordinal).to_string();
        let pair = |cert: String, sealed: &str, table: &str, column: &str, row: &str| {
            Ok::<_, RepoError>(CertifiedKey {
                cert_pem: cert,
                key_pem: self.open(sealed, table, column, row)?,
            })
        };
        let shared = SharedClientCerts::try_from_fn(|which| {
            let name = which.stored_name();
            let row = shared.iter().find(|r| r.name == name).ok_or_else(|| {
                RepoError::NotFound(format!(
                    "cluster {cluster} has no {name} certificate (founded before bundles existed)"
                ))
            })?;
            pair(
                row.cert.clone(),
                &row.key,
                "clustercerts",
                "key",
                &SealedRow::SharedCert(cluster, which).to_string(),
            )
        })?;
        let (Some(kubelet_cert), Some(kubelet_key)) =
            (apiserver.kubelet_cert, apiserver.kubelet_key)
        else {
            return Err(RepoError::NotFound(format!(
                "node {node} has no kubelet certificate (founded before bundles existed)"
            )));
        };
        Ok(Some(BootstrapMaterial {
            cluster_id: cluster,
            networking: rows::networking(
                cluster,
                row.pod_cidr,
                row.service_cidr,
                &row.dns_domain,
                row.api_server_port,
            )?,
            control_plane_dns_name: row.control_plane_dns_name,
            ca: ClusterCa {
                root: pair(
                    need(row.ca_cert, "ca_cert")?,
                    &need(row.ca_key, "ca_key")?,
                    "kubeclusters",
                    "ca_key",
                    &cluster_row,
                )?,
                etcd: pair(
                    need(row.etcd_ca_cert, "etcd_ca_cert")?,
                    &need(row.etcd_ca_key, "etcd_ca_key")?,
                    "kubeclusters",
                    "etcd_ca_key",
                    &cluster_row,
                )?,
                front_proxy: pair(
                    need(row.front_proxy_ca_cert, "front_proxy_ca_cert")?,
                    &need(row.front_proxy_ca_key, "front_proxy_ca_key")?,
                    "kubeclusters",
                    "front_proxy_ca_key",
                    &cluster_row,
                )?,
            },
            service_account: ServiceAccountKeyPair {
                public_key_pem: need(row.sa_public_key, "sa_public_key")?,
                private_key_pem: self.open(
                    &need(row.sa_private_key, "sa_private_key")?,
                    "kubeclusters",
                    "sa_private_key",
                    &cluster_row,
                )?,
            },
            shared,
            etcd_cert: pair(etcd_cert, &etcd_key, "etcdnodes", "key", &node_row)?,
            apiserver_cert: pair(
                apiserver.cert,
                &apiserver.key,
                "apiservernodes",
                "key",
                &node_row,
            )?,
            kubelet_cert: pair(
                kubelet_cert,
                &kubelet_key,
                "apiservernodes",
                "kubelet_key",
                &node_row,
            )?,
            bootstrap_token_hash: BootstrapTokenHash::from_stored(apiserver.bootstrap_token_hash),
            bootstrap_token_expires_at: apiserver.bootstrap_token_expires_at,
            bootstrap_token_first_used_at: apiserver.bootstrap_token_first_used_at,
            node: placement,
            nodes,
        }))
    }
}

/// A column a ready cluster always has (the schema's CHECK says so); `None` is corrupt data.
fn need(value: Option<String>, column: &str) -> Result<String, RepoError> {
    value.ok_or_else(|| RepoError::Unexpected(format!("a ready cluster has no {column}").into()))
}

/// `first(..).optional()` as a future: a missing row is `Ok(None)`.
trait AwaitOptional<T> {
    async fn await_optional(self) -> QueryResult<Option<T>>;
}

impl<T, F> AwaitOptional<T> for F
where
    F: std::future::Future<Output = QueryResult<T>>,
{
    async fn await_optional(self) -> QueryResult<Option<T>> {
        self.await.optional()
    }
}
