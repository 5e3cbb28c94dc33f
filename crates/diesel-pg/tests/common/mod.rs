//! Fixtures shared by the contract tests: repositories on a test database, foundings through the
//! ports, the compute service's `vms` rows, and raw looks at the tables.

#![allow(dead_code)] // each test binary uses its own share of these

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use diesel::sql_types::{Nullable, Text};
use diesel::{QueryableByName, sql_query};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use ipnet::IpNet;
use plinth_diesel_pg::testing::TestDatabase;
use plinth_diesel_pg::{Envelope, PgRepo, PgSettings};
use plinth_domain::model::{
    BootstrapTokenHash, ClusterId, NodeAddresses, NodeName, NodeOrdinal, OperationId, OrgId,
    ReplicaId, SecretText, SecurityGroupId, VmId,
};
use plinth_domain::ports::operations::{
    FoundingRows, Lease, NewDeletion, NewFounding, Operations, ResourceKind,
};
use plinth_domain::ports::pki::SharedClientCerts;
use plinth_domain::ports::repo::{
    ApiServerNodeRecord, ClusterSecurityGroups, EtcdNodeRecord, NewClusterRecord, NodePlacement,
    Repo,
};
use plinth_domain::testing::{founding_settings, pem_certified, trust_root_of};
use time::OffsetDateTime;

/// The replica the fixtures found clusters as.
pub const REPLICA: &str = "replica-a";

/// How long the fixtures' leases hold: longer than any test.
pub const LEASE: Duration = Duration::from_secs(600);

pub fn master_key(byte: u8) -> SecretText {
    use base64::Engine as _;
    SecretText::new(base64::engine::general_purpose::STANDARD.encode([byte; 32]))
}

pub fn envelope(primary: &str, keys: &[(&str, u8)]) -> Envelope {
    Envelope::new(
        primary,
        keys.iter()
            .map(|(id, byte)| ((*id).to_owned(), master_key(*byte))),
    )
    .unwrap()
}

/// Four connections, the default bounds, unless `adjust` says otherwise.
pub fn repo_configured(db: &TestDatabase, adjust: impl FnOnce(&mut PgSettings)) -> PgRepo {
    let mut settings = PgSettings::new(SecretText::new(db.url()));
    settings.max_connections = 4;
    adjust(&mut settings);
    PgRepo::new(&settings, envelope("k1", &[("k1", 1)])).unwrap()
}

pub fn repo_with(db: &TestDatabase, envelope: Envelope) -> PgRepo {
    let mut settings = PgSettings::new(SecretText::new(db.url()));
    settings.max_connections = 4;
    PgRepo::new(&settings, envelope).unwrap()
}

pub fn repo(db: &TestDatabase) -> PgRepo {
    repo_with(db, envelope("k1", &[("k1", 1)]))
}

pub fn org(id: &str) -> OrgId {
    OrgId::parse(id).unwrap()
}

pub fn lease_of(owner: &str) -> Lease {
    Lease {
        operation: OperationId::new_random(),
        owner: ReplicaId::new(owner),
    }
}

/// The founding of `record` as [`REPLICA`], leased for [`LEASE`].
pub fn founding(record: &NewClusterRecord) -> NewFounding {
    NewFounding {
        lease: lease_of(REPLICA),
        lease_for: LEASE,
        cluster: record.clone(),
        idempotency: None,
        limits: founding_settings().limits,
    }
}

/// Steps 1 and 3 of a founding: the name claimed, the trust material stored. Returns the lease.
pub async fn begin(repo: &PgRepo, record: &NewClusterRecord) -> Lease {
    let founding = founding(record);
    repo.begin_founding(&founding).await.unwrap();
    let (ca, sa) = trust_root_of(record.id);
    repo.store_trust_root(&founding.lease, record.id, &ca, &sa)
        .await
        .unwrap();
    founding.lease
}

pub fn vm_id(cluster: ClusterId, n: u8) -> VmId {
    VmId::parse(&format!("vm-{}-{n}", &cluster.to_string()[..8])).unwrap()
}

pub fn group_of(cluster: ClusterId) -> SecurityGroupId {
    SecurityGroupId::parse(&format!("sg-{}", &cluster.to_string()[..8])).unwrap()
}

/// Node `n` of a cluster; `site` keeps the addresses of clusters in one test apart (the compute
/// service's table refuses an address twice).
pub fn placement(cluster: ClusterId, site: u8, n: u8) -> NodePlacement {
    NodePlacement {
        ordinal: NodeOrdinal::new(n).unwrap(),
        name: NodeName::new(cluster, NodeOrdinal::new(n).unwrap()),
        vm_id: vm_id(cluster, n),
        addresses: NodeAddresses {
            ipv4: Ipv4Addr::new(127, 10, site, 10 + n),
            ipv6: (n % 2 == 1)
                .then(|| Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, u16::from(site), u16::from(n))),
            public_ipv4: (n == 1).then(|| Ipv4Addr::new(127, 20, site, 1)),
        },
    }
}

pub fn shared(cluster: ClusterId) -> SharedClientCerts {
    SharedClientCerts::try_from_fn(|which| {
        Ok::<_, std::convert::Infallible>(pem_certified(&format!("{cluster}-{which}")))
    })
    .unwrap()
}

/// When the fixtures' certificates expire: a year after the cluster's founding.
pub fn expiry_of(record: &NewClusterRecord) -> OffsetDateTime {
    record.created_at + time::Duration::days(365)
}

/// What `finish_founding` writes for `record`, its nodes placed at `site`; its certificates
/// expire at [`expiry_of`] the record.
pub fn founding_rows(record: &NewClusterRecord, site: u8) -> FoundingRows {
    let id = record.id;
    let nodes: Vec<NodePlacement> = (1..=record.spec.control_plane_count.get())
        .map(|n| placement(id, site, n))
        .collect();
    FoundingRows {
        cluster: id,
        etcd: nodes
            .iter()
            .map(|node| EtcdNodeRecord {
                cluster_id: id,
                node: node.clone(),
                cert: pem_certified(&format!("{}-etcd", node.name)),
            })
            .collect(),
        apiserver: nodes
            .iter()
            .map(|node| ApiServerNodeRecord {
                cluster_id: id,
                node: node.clone(),
                cert: pem_certified(&format!("{}-apiserver", node.name)),
                kubelet_cert: pem_certified(&format!("{}-kubelet", node.name)),
                bootstrap_token_hash: BootstrapTokenHash::of(&format!("token-{}", node.name)),
                bootstrap_token_expires_at: record.created_at + time::Duration::hours(24),
            })
            .collect(),
        shared: shared(id),
        certificates_expire_at: expiry_of(record),
    }
}

/// Writes a `vms` row the way the compute service does: on its own connection, committed.
pub async fn insert_vm(
    conn: &mut AsyncPgConnection,
    id: &VmId,
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    public: Option<Ipv4Addr>,
) {
    let net = |ip: Option<IpAddr>| ip.map(IpNet::from);
    sql_query(
        "INSERT INTO vms (id, name, status, ipv4, ipv6, public_ipv4, flavor, image, subnet_id) \
         VALUES ($1, $2, 'running', $3, $4, $5, 'm1.medium', 'debian-12', 'subnet-local')",
    )
    .bind::<Text, _>(id.as_str())
    .bind::<Text, _>(format!("{id}.local"))
    .bind::<Nullable<diesel::sql_types::Inet>, _>(net(ipv4.map(IpAddr::V4)))
    .bind::<Nullable<diesel::sql_types::Inet>, _>(net(ipv6.map(IpAddr::V6)))
    .bind::<Nullable<diesel::sql_types::Inet>, _>(net(public.map(IpAddr::V4)))
    .execute(conn)
    .await
    .unwrap();
}

/// A whole founding through the ports, in the order `FoundCluster` runs it: the name claimed,
/// the trust material stored, the security group and VMs journaled before and after they are
/// made (the compute service writes the `vms` rows on its own connection), the groups recorded,
/// the VMs' addresses read back, and the last short transaction. Returns the lease.
pub async fn found(
    repo: &PgRepo,
    compute: &mut AsyncPgConnection,
    record: &NewClusterRecord,
    site: u8,
) -> Lease {
    found_expiring(repo, compute, record, site, expiry_of(record)).await
}

/// [`found`], the certificates expiring at `expires_at`.
pub async fn found_expiring(
    repo: &PgRepo,
    compute: &mut AsyncPgConnection,
    record: &NewClusterRecord,
    site: u8,
    expires_at: OffsetDateTime,
) -> Lease {
    let id = record.id;
    let count = record.spec.control_plane_count.get();
    let lease = begin(repo, record).await;
    let group = group_of(id);
    let group_key = format!("{}/security-group", lease.operation);
    repo.record_intents(&lease, &[(ResourceKind::SecurityGroup, group_key.clone())])
        .await
        .unwrap();
    repo.record_created(&lease, &group_key, group.as_str())
        .await
        .unwrap();
    repo.record_security_groups(
        &lease,
        id,
        &ClusterSecurityGroups {
            attached: vec![group.clone()],
            created: Some(group),
        },
    )
    .await
    .unwrap();
    let vm_keys: Vec<(ResourceKind, String)> = (1..=count)
        .map(|n| (ResourceKind::Vm, format!("{}/vm/{n}", lease.operation)))
        .collect();
    repo.record_intents(&lease, &vm_keys).await.unwrap();
    for n in 1..=count {
        let node = placement(id, site, n);
        insert_vm(
            compute,
            &node.vm_id,
            Some(node.addresses.ipv4),
            node.addresses.ipv6,
            node.addresses.public_ipv4,
        )
        .await;
        repo.record_created(&lease, &vm_keys[usize::from(n - 1)].1, node.vm_id.as_str())
            .await
            .unwrap();
    }
    let vm_ids: Vec<VmId> = (1..=count).map(|n| vm_id(id, n)).collect();
    let identities = repo.vm_identities(&vm_ids).await.unwrap();
    assert_eq!(identities.len(), usize::from(count));
    let rows = FoundingRows {
        certificates_expire_at: expires_at,
        ..founding_rows(record, site)
    };
    repo.finish_founding(&lease, &rows).await.unwrap();
    lease
}

/// The deletion of `org`'s cluster `cluster` as [`REPLICA`], leased for [`LEASE`], without an
/// idempotency key.
pub fn deletion(org: &OrgId, cluster: ClusterId) -> NewDeletion {
    NewDeletion {
        lease: lease_of(REPLICA),
        lease_for: LEASE,
        org: org.clone(),
        cluster,
        idempotency: None,
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    count: i64,
}

pub async fn count_rows(conn: &mut AsyncPgConnection, table: &str) -> i64 {
    sql_query(format!("SELECT count(*) AS count FROM {table}"))
        .get_result::<Count>(conn)
        .await
        .unwrap()
        .count
}

#[derive(QueryableByName)]
struct Value {
    #[diesel(sql_type = Text)]
    value: String,
}

/// The `value` column (text) of every row `sql` yields.
pub async fn texts(conn: &mut AsyncPgConnection, sql: &str) -> Vec<String> {
    sql_query(sql)
        .load::<Value>(conn)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.value)
        .collect()
}

/// Every row of every table plinth writes, as text: equal snapshots mean nothing was written
/// (not even a timestamp).
pub async fn snapshot(conn: &mut AsyncPgConnection) -> String {
    let mut all = String::new();
    for table in [
        "kubeclusters",
        "etcdnodes",
        "apiservernodes",
        "clustercerts",
        "operations",
        "operation_journal",
        "client_idempotency_keys",
    ] {
        let rows = texts(
            conn,
            &format!(
                "SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '') AS value \
                 FROM {table} t"
            ),
        )
        .await;
        all.push_str(&format!("== {table}\n{}\n", rows.concat()));
    }
    all
}

pub fn now() -> OffsetDateTime {
    // PostgreSQL keeps microseconds; truncate so round-trips compare equal.
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1000 * 1000)
        .unwrap()
}

/// Opens a transaction on `conn` that holds the operation's row lock, as a write of its owner
/// (or a claim) in progress does. [`release`] ends it.
pub async fn lock_operation(conn: &mut AsyncPgConnection, operation: OperationId) {
    conn.batch_execute(&format!(
        "BEGIN; SELECT id FROM operations WHERE id = '{operation}' FOR UPDATE;"
    ))
    .await
    .unwrap();
}

/// Ends the transaction [`lock_operation`] opened, releasing its locks.
pub async fn release(conn: &mut AsyncPgConnection) {
    conn.batch_execute("ROLLBACK").await.unwrap();
}
