//! The `Repo` contract against a real PostgreSQL 15: foundings round-trip, transactions are
//! all-or-nothing, names are unique per organization, listing is org-scoped and pages, VM
//! identities come from the compute service's rows, and private keys are sealed at rest.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use diesel::sql_types::{Nullable, Text};
use diesel::{QueryableByName, sql_query};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use ipnet::IpNet;
use plinth_diesel_pg::testing::TestDatabase;
use plinth_diesel_pg::{Envelope, EnvelopeError, PgRepo, PgSettings, Slot};
use plinth_domain::model::{
    BootstrapTokenHash, ClusterId, NodeAddresses, NodeName, NodeOrdinal, OrgId, SecretText,
    SecurityGroupChoice, SecurityGroupId, VmId,
};
use plinth_domain::ports::pki::SharedClientCerts;
use plinth_domain::ports::repo::{
    ApiServerNodeRecord, ClusterSecurityGroups, EtcdNodeRecord, NewClusterRecord, NodePlacement,
    PageRequest, Repo, RepoError,
};
use plinth_domain::testing::{cluster_record, pem_certified};
use time::OffsetDateTime;

// ---- fixtures ---------------------------------------------------------------------------------

fn master_key(byte: u8) -> SecretText {
    use base64::Engine as _;
    SecretText::new(base64::engine::general_purpose::STANDARD.encode([byte; 32]))
}

fn envelope(primary: &str, keys: &[(&str, u8)]) -> Envelope {
    Envelope::new(
        primary,
        keys.iter()
            .map(|(id, byte)| ((*id).to_owned(), master_key(*byte))),
    )
    .unwrap()
}

fn repo_with(db: &TestDatabase, envelope: Envelope) -> PgRepo {
    let mut settings = PgSettings::new(SecretText::new(db.url()));
    settings.max_connections = 4;
    PgRepo::new(&settings, envelope).unwrap()
}

fn repo(db: &TestDatabase) -> PgRepo {
    repo_with(db, envelope("k1", &[("k1", 1)]))
}

fn org(id: &str) -> OrgId {
    OrgId::parse(id).unwrap()
}

fn vm_id(cluster: ClusterId, n: u8) -> VmId {
    VmId::parse(&format!("vm-{}-{n}", &cluster.to_string()[..8])).unwrap()
}

/// Node `n` of a cluster; `site` keeps the addresses of clusters in one test apart (the compute
/// service's table refuses an address twice).
fn placement(cluster: ClusterId, site: u8, n: u8) -> NodePlacement {
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

/// Writes a `vms` row the way the compute service does: on its own connection, committed.
async fn insert_vm(
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

/// A whole founding through the port: the sequence `FoundCluster` runs, in one transaction.
async fn found(
    repo: &PgRepo,
    compute: &mut AsyncPgConnection,
    record: &NewClusterRecord,
    site: u8,
) {
    let id = record.id;
    let count = record.spec.control_plane_count.get();
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
    }
    let mut tx = repo.begin().await.unwrap();
    tx.insert_cluster(record).await.unwrap();
    let group = SecurityGroupId::parse(&format!("sg-{}", &id.to_string()[..8])).unwrap();
    tx.record_security_groups(
        id,
        &ClusterSecurityGroups {
            attached: vec![group.clone()],
            created: Some(group),
        },
    )
    .await
    .unwrap();
    let vm_ids: Vec<VmId> = (1..=count).map(|n| vm_id(id, n)).collect();
    let identities = tx.vm_identities(&vm_ids).await.unwrap();
    assert_eq!(identities.len(), usize::from(count));
    let nodes: Vec<NodePlacement> = (1..=count).map(|n| placement(id, site, n)).collect();
    let etcd: Vec<EtcdNodeRecord> = nodes
        .iter()
        .map(|node| EtcdNodeRecord {
            cluster_id: id,
            node: node.clone(),
            cert: pem_certified(&format!("{}-etcd", node.name)),
        })
        .collect();
    let apiserver: Vec<ApiServerNodeRecord> = nodes
        .iter()
        .map(|node| ApiServerNodeRecord {
            cluster_id: id,
            node: node.clone(),
            cert: pem_certified(&format!("{}-apiserver", node.name)),
            kubelet_cert: pem_certified(&format!("{}-kubelet", node.name)),
            bootstrap_token_hash: BootstrapTokenHash::of(&format!("token-{}", node.name)),
            bootstrap_token_expires_at: record.created_at + time::Duration::hours(24),
        })
        .collect();
    tx.insert_etcd_nodes(&etcd).await.unwrap();
    tx.insert_apiserver_nodes(&apiserver).await.unwrap();
    tx.insert_shared_certs(id, &shared(id)).await.unwrap();
    tx.commit().await.unwrap();
}

fn shared(cluster: ClusterId) -> SharedClientCerts {
    SharedClientCerts::try_from_fn(|which| {
        Ok::<_, std::convert::Infallible>(pem_certified(&format!("{cluster}-{which}")))
    })
    .unwrap()
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    count: i64,
}

async fn count_rows(conn: &mut AsyncPgConnection, table: &str) -> i64 {
    sql_query(format!("SELECT count(*) AS count FROM {table}"))
        .get_result::<Count>(conn)
        .await
        .unwrap()
        .count
}

async fn total_rows(conn: &mut AsyncPgConnection) -> i64 {
    let mut total = 0;
    for table in ["kubeclusters", "etcdnodes", "apiservernodes"] {
        total += count_rows(conn, table).await;
    }
    total
}

fn now() -> OffsetDateTime {
    // PostgreSQL keeps microseconds; truncate so round-trips compare equal.
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1000 * 1000)
        .unwrap()
}

// ---- foundings -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn founded_clusters_of_1_3_and_5_nodes_read_back_whole() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut compute = db.connect().await;
    for count in [1, 3, 5] {
        let record = cluster_record("org-a", Some(&format!("c{count}")), count, now());
        found(&repo, &mut compute, &record, count).await;

        let details = repo
            .find_cluster(&org("org-a"), record.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(details.summary.id, record.id);
        assert_eq!(details.summary.name, record.spec.name);
        assert_eq!(details.summary.control_plane_count, count);
        assert_eq!(
            details.summary.control_plane_dns_name,
            record.control_plane_dns_name
        );
        assert_eq!(details.summary.created_at, record.created_at);
        assert_eq!(details.spec, record.spec);
        assert_eq!(details.networking, record.networking);
        assert_eq!(
            details.ingress_wildcard_dns_name,
            record.ingress_wildcard_dns_name
        );
        assert_eq!(details.ca_cert_pem, record.ca.root.cert_pem);
        let group = SecurityGroupId::parse(&format!("sg-{}", &record.id.to_string()[..8])).unwrap();
        assert_eq!(
            details.security_groups.attached,
            std::slice::from_ref(&group)
        );
        assert_eq!(details.security_groups.created, Some(group));
        let expected: Vec<NodePlacement> = (1..=count)
            .map(|n| placement(record.id, count, n))
            .collect();
        assert_eq!(details.nodes, expected);
    }
    let mut conn = db.connect().await;
    assert_eq!(count_rows(&mut conn, "etcdnodes").await, 9);
    assert_eq!(count_rows(&mut conn, "apiservernodes").await, 9);
}

#[tokio::test(flavor = "multi_thread")]
async fn given_security_groups_round_trip() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut record = cluster_record("org-a", None, 1, now());
    let given = vec![
        SecurityGroupId::parse("sg-a").unwrap(),
        SecurityGroupId::parse("sg-b").unwrap(),
    ];
    record.spec.security_groups = SecurityGroupChoice::Given(given.clone());
    let mut tx = repo.begin().await.unwrap();
    tx.insert_cluster(&record).await.unwrap();
    tx.record_security_groups(
        record.id,
        &ClusterSecurityGroups {
            attached: given.clone(),
            created: None,
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let details = repo
        .find_cluster(&org("org-a"), record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        details.spec.security_groups,
        SecurityGroupChoice::Given(given.clone())
    );
    assert_eq!(
        details.security_groups,
        ClusterSecurityGroups {
            attached: given,
            created: None
        }
    );
    assert!(details.nodes.is_empty());
}

// ---- all or nothing --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_rolled_back_founding_leaves_no_rows() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let record = cluster_record("org-a", Some("gone"), 3, now());
    let mut tx = repo.begin().await.unwrap();
    tx.insert_cluster(&record).await.unwrap();
    let node = placement(record.id, 0, 1);
    tx.insert_etcd_nodes(&[EtcdNodeRecord {
        cluster_id: record.id,
        node,
        cert: pem_certified("x"),
    }])
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    let mut conn = db.connect().await;
    assert_eq!(total_rows(&mut conn).await, 0);
    assert!(
        repo.find_cluster(&org("org-a"), record.id)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_founding_leaves_no_rows_and_releases_its_locks_at_once() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let first = cluster_record("org-a", Some("same-name"), 1, now());
    let mut tx = repo.begin().await.unwrap();
    tx.insert_cluster(&first).await.unwrap();
    drop(tx); // an error path, a panic, a cancelled request: no commit, no rollback call

    let mut conn = db.connect().await;
    assert_eq!(total_rows(&mut conn).await, 0);
    // Had the dropped transaction stayed open (say, idle in the pool until its next checkout),
    // this insert from another pool would wait on its unique-index entry for "same-name" until
    // the statement timeout; it goes through at once.
    let second = cluster_record("org-a", Some("same-name"), 1, now());
    let other_replica = self::repo(&db);
    let mut tx = other_replica.begin().await.unwrap();
    tokio::time::timeout(Duration::from_secs(3), tx.insert_cluster(&second))
        .await
        .expect("the dropped transaction still holds its locks")
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count_rows(&mut conn, "kubeclusters").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_failed_statement_the_transaction_refuses_further_work() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let record = cluster_record("org-a", None, 1, now());
    let mut tx = repo.begin().await.unwrap();
    tx.insert_cluster(&record).await.unwrap();
    // The same primary key again: the statement fails, and the transaction is over.
    let err = tx.insert_cluster(&record).await.unwrap_err();
    assert!(matches!(err, RepoError::Conflict(_)), "{err}");
    let err = tx.commit().await.unwrap_err();
    assert!(matches!(err, RepoError::Unavailable(_)), "{err}");
    let mut conn = db.connect().await;
    assert_eq!(total_rows(&mut conn).await, 0);
}

// ---- names ------------------------------------------------------------------------------------

async fn insert_and_commit(repo: &PgRepo, record: &NewClusterRecord) -> Result<(), RepoError> {
    let mut tx = repo.begin().await?;
    tx.insert_cluster(record).await?;
    tx.commit().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_taken_in_the_org_is_a_conflict_and_fine_in_another_org() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    insert_and_commit(&repo, &cluster_record("org-a", Some("prod"), 1, now()))
        .await
        .unwrap();

    let err = insert_and_commit(&repo, &cluster_record("org-a", Some("prod"), 3, now()))
        .await
        .unwrap_err();
    let RepoError::Conflict(message) = &err else {
        panic!("expected a conflict, got {err}");
    };
    assert!(message.contains("already exists"), "{message}");

    insert_and_commit(&repo, &cluster_record("org-b", Some("prod"), 1, now()))
        .await
        .unwrap();
    // Unnamed clusters never collide.
    insert_and_commit(&repo, &cluster_record("org-a", None, 1, now()))
        .await
        .unwrap();
    insert_and_commit(&repo, &cluster_record("org-a", None, 1, now()))
        .await
        .unwrap();
    let mut conn = db.connect().await;
    assert_eq!(count_rows(&mut conn, "kubeclusters").await, 4);
}

// ---- reading ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn another_orgs_cluster_is_not_found() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let record = cluster_record("org-a", None, 1, now());
    insert_and_commit(&repo, &record).await.unwrap();
    assert!(
        repo.find_cluster(&org("org-b"), record.id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        repo.find_cluster(&org("org-a"), ClusterId::new_random())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_is_org_scoped_newest_first_and_pages_without_gaps_or_repeats() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let base = now() - time::Duration::hours(1);
    let mut expected = Vec::new();
    for i in 0..8i64 {
        // Two clusters share each timestamp, so the id must break ties.
        let created = base + time::Duration::seconds(i / 2);
        let record = cluster_record("org-a", None, 1, created);
        insert_and_commit(&repo, &record).await.unwrap();
        expected.push((record.created_at, record.id));
        insert_and_commit(&repo, &cluster_record("org-b", None, 1, created))
            .await
            .unwrap();
    }
    expected.sort_by(|a, b| b.cmp(a)); // newest first, then id descending

    let mut seen = Vec::new();
    let mut page = PageRequest {
        limit: 3,
        after: None,
    };
    let mut sizes = Vec::new();
    loop {
        let result = repo.list_clusters(&org("org-a"), &page).await.unwrap();
        sizes.push(result.clusters.len());
        seen.extend(result.clusters.iter().map(|c| (c.created_at, c.id)));
        match result.next {
            Some(next) => page.after = Some(next),
            None => break,
        }
    }
    assert_eq!(sizes, [3, 3, 2]);
    assert_eq!(seen, expected);

    let all = repo
        .list_clusters(
            &org("org-a"),
            &PageRequest {
                limit: 100,
                after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(all.clusters.len(), 8);
    assert!(all.next.is_none());
    let none = repo
        .list_clusters(
            &org("org-c"),
            &PageRequest {
                limit: 10,
                after: None,
            },
        )
        .await
        .unwrap();
    assert!(none.clusters.is_empty() && none.next.is_none());
    // A limit of 0 or above the maximum is clamped, not an error.
    let clamped = repo
        .list_clusters(
            &org("org-a"),
            &PageRequest {
                limit: 0,
                after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(clamped.clusters.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn vm_identities_come_from_rows_another_connection_committed() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut compute = db.connect().await;
    let record = cluster_record("org-a", None, 3, now());
    let mut tx = repo.begin().await.unwrap();
    tx.insert_cluster(&record).await.unwrap();

    // Written and committed by the compute service after the founding's transaction began.
    let (a, b, c) = (
        vm_id(record.id, 1),
        vm_id(record.id, 2),
        vm_id(record.id, 3),
    );
    insert_vm(
        &mut compute,
        &a,
        Some(Ipv4Addr::new(127, 10, 0, 11)),
        Some("fd00:10::1".parse().unwrap()),
        Some(Ipv4Addr::new(127, 20, 0, 1)),
    )
    .await;
    insert_vm(&mut compute, &b, None, None, None).await;

    let mut found = tx
        .vm_identities(&[a.clone(), b.clone(), c.clone()])
        .await
        .unwrap();
    found.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(found.len(), 2, "VM c has no row yet and is left out");
    assert_eq!(found[0].id, a);
    assert_eq!(found[0].name, format!("{a}.local"));
    assert_eq!(found[0].ipv4, Some(Ipv4Addr::new(127, 10, 0, 11)));
    assert_eq!(found[0].ipv6, Some("fd00:10::1".parse().unwrap()));
    assert_eq!(found[0].public_ipv4, Some(Ipv4Addr::new(127, 20, 0, 1)));
    assert_eq!((found[1].id.clone(), found[1].ipv4), (b.clone(), None));

    // Later reads in the same transaction see rows committed since.
    insert_vm(
        &mut compute,
        &c,
        Some(Ipv4Addr::new(127, 10, 0, 13)),
        None,
        None,
    )
    .await;
    let found = tx.vm_identities(std::slice::from_ref(&c)).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].ipv4, Some(Ipv4Addr::new(127, 10, 0, 13)));
    tx.rollback().await.unwrap();
}

// ---- keys at rest -----------------------------------------------------------------------------

#[derive(QueryableByName)]
struct Sealed {
    #[diesel(sql_type = Text)]
    value: String,
}

async fn column(conn: &mut AsyncPgConnection, sql: &str) -> Vec<String> {
    sql_query(sql)
        .load::<Sealed>(conn)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.value)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn private_keys_are_sealed_bound_to_their_row_and_column() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut compute = db.connect().await;
    let one = cluster_record("org-a", None, 3, now());
    let two = cluster_record("org-a", None, 1, now());
    found(&repo, &mut compute, &one, 1).await;
    found(&repo, &mut compute, &two, 2).await;
    let mut conn = db.connect().await;

    let mut sealed = Vec::new();
    for sql in [
        "SELECT ca_key AS value FROM kubeclusters",
        "SELECT etcd_ca_key AS value FROM kubeclusters",
        "SELECT front_proxy_ca_key AS value FROM kubeclusters",
        "SELECT sa_private_key AS value FROM kubeclusters",
        "SELECT key AS value FROM etcdnodes",
        "SELECT key AS value FROM apiservernodes",
        "SELECT kubelet_key AS value FROM apiservernodes",
        "SELECT key AS value FROM clustercerts",
    ] {
        sealed.extend(column(&mut conn, sql).await);
    }
    assert_eq!(sealed.len(), 4 * 2 + 4 * 2 + 4 + 6 * 2);
    for value in &sealed {
        assert!(value.starts_with("v1:k1:"), "{value}");
        assert!(!value.contains("BEGIN"), "{value}");
        assert!(!value.contains("SECRET-"), "{value}");
    }

    // The repository's envelope opens a value in its own slot…
    let ca_key = &column(
        &mut conn,
        &format!(
            "SELECT ca_key AS value FROM kubeclusters WHERE id = '{}'",
            one.id
        ),
    )
    .await[0];
    let row = one.id.to_string();
    let slot = |column| Slot {
        table: "kubeclusters",
        column,
        row: &row,
    };
    assert_eq!(
        repo.envelope().open(ca_key, slot("ca_key")).unwrap(),
        one.ca.root.key_pem
    );
    // …and nowhere else: another column, another row.
    assert_eq!(
        repo.envelope().open(ca_key, slot("sa_private_key")),
        Err(EnvelopeError::Unauthentic)
    );
    let other_row = two.id.to_string();
    let moved = Slot {
        table: "kubeclusters",
        column: "ca_key",
        row: &other_row,
    };
    assert_eq!(
        repo.envelope().open(ca_key, moved),
        Err(EnvelopeError::Unauthentic)
    );

    // A ciphertext copied to another row in the database fails to open there.
    sql_query(format!(
        "UPDATE kubeclusters SET ca_key = (SELECT ca_key FROM kubeclusters WHERE id = '{}') WHERE id = '{}'",
        one.id, two.id
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let copied = &column(
        &mut conn,
        &format!(
            "SELECT ca_key AS value FROM kubeclusters WHERE id = '{}'",
            two.id
        ),
    )
    .await[0];
    assert_eq!(
        repo.envelope().open(copied, moved),
        Err(EnvelopeError::Unauthentic)
    );

    // Node keys: bound to "<cluster>/<ordinal>" of their own table.
    let node_key = &column(
        &mut conn,
        &format!(
            "SELECT key AS value FROM etcdnodes WHERE cluster_id = '{}' AND ordinal = 2",
            one.id
        ),
    )
    .await[0];
    let node_row = format!("{}/2", one.id);
    let etcd_slot = Slot {
        table: "etcdnodes",
        column: "key",
        row: &node_row,
    };
    let node_name = NodeName::new(one.id, NodeOrdinal::new(2).unwrap());
    assert_eq!(
        repo.envelope().open(node_key, etcd_slot).unwrap(),
        pem_certified(&format!("{node_name}-etcd")).key_pem
    );
    let api_slot = Slot {
        table: "apiservernodes",
        ..etcd_slot
    };
    assert_eq!(
        repo.envelope().open(node_key, api_slot),
        Err(EnvelopeError::Unauthentic)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_sealed_under_an_old_master_key_read_after_rotation() {
    let db = TestDatabase::create().await;
    let old = repo_with(&db, envelope("k1", &[("k1", 1)]));
    let record = cluster_record("org-a", None, 1, now());
    insert_and_commit(&old, &record).await.unwrap();

    let rotated = repo_with(&db, envelope("k2", &[("k2", 2), ("k1", 1)]));
    let newer = cluster_record("org-a", None, 1, now());
    insert_and_commit(&rotated, &newer).await.unwrap();

    let mut conn = db.connect().await;
    let query = |id: ClusterId| {
        format!("SELECT sa_private_key AS value FROM kubeclusters WHERE id = '{id}'")
    };
    let old_value = column(&mut conn, &query(record.id)).await.remove(0);
    let new_value = column(&mut conn, &query(newer.id)).await.remove(0);
    assert!(old_value.starts_with("v1:k1:"));
    assert!(new_value.starts_with("v1:k2:"));
    let row = record.id.to_string();
    let slot = Slot {
        table: "kubeclusters",
        column: "sa_private_key",
        row: &row,
    };
    assert_eq!(
        rotated.envelope().open(&old_value, slot).unwrap(),
        record.service_account.private_key_pem
    );
    let forgot_k1 = envelope("k2", &[("k2", 2)]);
    assert_eq!(
        forgot_k1.open(&old_value, slot),
        Err(EnvelopeError::UnknownKey("k1".into()))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dump_of_the_database_holds_no_private_key() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut compute = db.connect().await;
    found(
        &repo,
        &mut compute,
        &cluster_record("org-a", Some("dumped"), 3, now()),
        1,
    )
    .await;

    let pg_dump = "/usr/lib/postgresql/15/bin/pg_dump";
    let output = std::process::Command::new(pg_dump)
        .args(["--data-only", "--no-owner", "--dbname", db.url()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let dump = String::from_utf8(output.stdout).unwrap();
    assert!(dump.contains("dumped"), "the dump holds the founding");
    assert!(
        dump.contains("BEGIN CERTIFICATE"),
        "certificates are public and stored as PEM"
    );
    assert!(
        !dump.contains("PRIVATE KEY"),
        "a private key is in the dump"
    );
    assert!(!dump.contains("SECRET-"), "key material is in the dump");
}

// ---- migrations -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn migrating_a_current_schema_changes_nothing() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    assert_eq!(repo.migrate().await.unwrap(), Vec::<String>::new());
    assert_eq!(repo.migrate().await.unwrap(), Vec::<String>::new());
    repo.ping().await.unwrap();
}

// ---- bootstrap material -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_nodes_bootstrap_material_comes_back_whole_with_its_keys_opened() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut compute = db.connect().await;
    let record = cluster_record("org-a", Some("boot"), 3, now());
    found(&repo, &mut compute, &record, 1).await;
    let other = cluster_record("org-a", None, 1, now());
    found(&repo, &mut compute, &other, 2).await;

    let node = NodeName::new(record.id, NodeOrdinal::new(2).unwrap());
    let material = repo
        .bootstrap_material(record.id, &node)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(material.cluster_id, record.id);
    assert_eq!(material.node, placement(record.id, 1, 2));
    assert_eq!(
        material.nodes,
        (1..=3)
            .map(|n| placement(record.id, 1, n))
            .collect::<Vec<_>>()
    );
    assert_eq!(material.ca, record.ca);
    assert_eq!(material.service_account, record.service_account);
    assert_eq!(material.shared, shared(record.id));
    assert_eq!(material.etcd_cert, pem_certified(&format!("{node}-etcd")));
    assert_eq!(
        material.apiserver_cert,
        pem_certified(&format!("{node}-apiserver"))
    );
    assert_eq!(
        material.kubelet_cert,
        pem_certified(&format!("{node}-kubelet"))
    );
    assert!(
        material
            .bootstrap_token_hash
            .matches(&format!("token-{node}"))
    );
    assert_eq!(
        material.bootstrap_token_expires_at,
        record.created_at + time::Duration::hours(24)
    );
    assert_eq!(material.networking, record.networking);

    // A node of another cluster, or a node the cluster does not have: nothing.
    let foreign = NodeName::new(other.id, NodeOrdinal::new(1).unwrap());
    assert!(
        repo.bootstrap_material(record.id, &foreign)
            .await
            .unwrap()
            .is_none()
    );
    let missing = NodeName::new(record.id, NodeOrdinal::new(5).unwrap());
    assert!(
        repo.bootstrap_material(record.id, &missing)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        repo.bootstrap_material(ClusterId::new_random(), &node)
            .await
            .unwrap()
            .is_none()
    );
}
