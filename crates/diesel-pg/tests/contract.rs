//! The `Repo` contract against a real PostgreSQL 15, with clusters founded through the
//! `Operations` port the way `FoundCluster` founds them: foundings round-trip, names are unique
//! per organization, listing is org-scoped and pages, VM identities come from the compute
//! service's rows, private keys are sealed at rest, and bootstrap material comes back whole.
//! (The `Operations` port's own contract is in `tests/operations.rs`.)

#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{
    begin, count_rows, deletion, envelope, found, found_expiring, founding, group_of, insert_vm,
    now, org, placement, repo, repo_with, shared, snapshot, texts, vm_id,
};
use diesel::sql_query;
use diesel::sql_types::{Nullable, Timestamptz};
use diesel_async::RunQueryDsl;
use plinth_diesel_pg::testing::TestDatabase;
use plinth_diesel_pg::{EnvelopeError, Slot};
use plinth_domain::model::{
    BootstrapTokenHash, ClusterId, ClusterStatus, NodeName, NodeOrdinal, SecurityGroupChoice,
    SecurityGroupId,
};
use plinth_domain::ports::operations::{DeletionStart, Operations};
use plinth_domain::ports::pki::SharedClientCert;
use plinth_domain::ports::repo::{
    ClusterSecurityGroups, DnsOutcome, NamedCertificate, NodePlacement, PageRequest, Repo,
    RepoError,
};
use plinth_domain::testing::{cluster_record, pem_certified, trust_root_of};
use time::OffsetDateTime;

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
        assert_eq!(details.summary.status, ClusterStatus::Ready);
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
        let (ca, _) = trust_root_of(record.id);
        assert_eq!(details.ca_cert_pem, Some(ca.root.cert_pem));
        let group = group_of(record.id);
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
    assert_eq!(count_rows(&mut conn, "clustercerts").await, 3 * 6);
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
    let lease = begin(&repo, &record).await;
    repo.record_security_groups(
        &lease,
        record.id,
        &ClusterSecurityGroups {
            attached: given.clone(),
            created: None,
        },
    )
    .await
    .unwrap();
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

// ---- names ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_name_taken_in_the_org_is_a_conflict_and_fine_in_another_org() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut compute = db.connect().await;
    // Taken by a founded (ready) cluster…
    found(
        &repo,
        &mut compute,
        &cluster_record("org-a", Some("prod"), 1, now()),
        1,
    )
    .await;
    let mut conn = db.connect().await;
    let operations_before = count_rows(&mut conn, "operations").await;

    let started = Instant::now();
    let err = repo
        .begin_founding(&founding(&cluster_record("org-a", Some("prod"), 3, now())))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let RepoError::Conflict(message) = &err else {
        panic!("expected a conflict, got {err}");
    };
    assert!(message.contains("already exists"), "{message}");
    assert_eq!(count_rows(&mut conn, "operations").await, operations_before);

    repo.begin_founding(&founding(&cluster_record("org-b", Some("prod"), 1, now())))
        .await
        .unwrap();
    // Unnamed clusters never collide.
    repo.begin_founding(&founding(&cluster_record("org-a", None, 1, now())))
        .await
        .unwrap();
    repo.begin_founding(&founding(&cluster_record("org-a", None, 1, now())))
        .await
        .unwrap();
    assert_eq!(count_rows(&mut conn, "kubeclusters").await, 4);
}

// ---- reading ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn another_orgs_cluster_is_not_found() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut compute = db.connect().await;
    let record = cluster_record("org-a", None, 1, now());
    found(&repo, &mut compute, &record, 1).await;
    let provisioning = cluster_record("org-a", None, 1, now());
    begin(&repo, &provisioning).await;
    for id in [record.id, provisioning.id] {
        assert!(
            repo.find_cluster(&org("org-a"), id)
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            repo.find_cluster(&org("org-b"), id)
                .await
                .unwrap()
                .is_none()
        );
    }
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
        repo.begin_founding(&founding(&record)).await.unwrap();
        expected.push((record.created_at, record.id));
        repo.begin_founding(&founding(&cluster_record("org-b", None, 1, created)))
            .await
            .unwrap();
    }
    expected.sort_by(|a, b| b.cmp(a)); // newest first, then id descending

    let mut seen = Vec::new();
    let mut page = PageRequest {
        limit: 3,
        after: None,
        expiring_before: None,
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
                expiring_before: None,
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
                expiring_before: None,
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
                expiring_before: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(clamped.clusters.len(), 1);
    let capped = repo
        .list_clusters(
            &org("org-a"),
            &PageRequest {
                limit: 1000,
                after: None,
                expiring_before: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(capped.clusters.len(), 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn vm_identities_come_from_rows_another_connection_committed() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut compute = db.connect().await;
    let record = cluster_record("org-a", None, 3, now());
    begin(&repo, &record).await;

    // Written and committed by the compute service while the founding runs.
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

    let mut found = repo
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

    // Later reads see rows committed since, and addresses assigned since.
    insert_vm(
        &mut compute,
        &c,
        Some(Ipv4Addr::new(127, 10, 0, 13)),
        None,
        None,
    )
    .await;
    sql_query("UPDATE vms SET ipv4 = '127.10.0.12' WHERE id = $1")
        .bind::<diesel::sql_types::Text, _>(b.as_str())
        .execute(&mut compute)
        .await
        .unwrap();
    let mut found = repo.vm_identities(&[b.clone(), c.clone()]).await.unwrap();
    found.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].ipv4, Some(Ipv4Addr::new(127, 10, 0, 12)));
    assert_eq!(found[1].ipv4, Some(Ipv4Addr::new(127, 10, 0, 13)));
    assert!(repo.vm_identities(&[]).await.unwrap().is_empty());
}

// ---- keys at rest -----------------------------------------------------------------------------

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
        sealed.extend(texts(&mut conn, sql).await);
    }
    assert_eq!(sealed.len(), 4 * 2 + 4 * 2 + 4 + 6 * 2);
    for value in &sealed {
        assert!(value.starts_with("v1:k1:"), "{value}");
        assert!(!value.contains("BEGIN"), "{value}");
        assert!(!value.contains("SECRET-"), "{value}");
    }

    // The repository's envelope opens a value in its own slot…
    let ca_key = &texts(
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
    let (one_ca, _) = trust_root_of(one.id);
    assert_eq!(
        repo.envelope().open(ca_key, slot("ca_key")).unwrap(),
        one_ca.root.key_pem
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
    let copied = &texts(
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
    // And the repository refuses to hand it out as the other cluster's key.
    let node = NodeName::new(two.id, NodeOrdinal::new(1).unwrap());
    let err = repo.bootstrap_material(two.id, &node).await.unwrap_err();
    assert!(matches!(err, RepoError::Unexpected(_)), "{err}");

    // Node keys: bound to "<cluster>/<ordinal>" of their own table.
    let node_key = &texts(
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
    let mut compute = db.connect().await;
    let old = repo_with(&db, envelope("k1", &[("k1", 1)]));
    let record = cluster_record("org-a", None, 1, now());
    found(&old, &mut compute, &record, 1).await;

    let rotated = repo_with(&db, envelope("k2", &[("k2", 2), ("k1", 1)]));
    let newer = cluster_record("org-a", None, 1, now());
    found(&rotated, &mut compute, &newer, 2).await;

    let mut conn = db.connect().await;
    let query = |id: ClusterId| {
        format!("SELECT sa_private_key AS value FROM kubeclusters WHERE id = '{id}'")
    };
    let old_value = texts(&mut conn, &query(record.id)).await.remove(0);
    let new_value = texts(&mut conn, &query(newer.id)).await.remove(0);
    assert!(old_value.starts_with("v1:k1:"));
    assert!(new_value.starts_with("v1:k2:"));
    let row = record.id.to_string();
    let slot = Slot {
        table: "kubeclusters",
        column: "sa_private_key",
        row: &row,
    };
    let (_, old_sa) = trust_root_of(record.id);
    assert_eq!(
        rotated.envelope().open(&old_value, slot).unwrap(),
        old_sa.private_key_pem
    );
    // The rotated repository serves both clusters' bootstrap material.
    for id in [record.id, newer.id] {
        let node = NodeName::new(id, NodeOrdinal::new(1).unwrap());
        let material = rotated
            .bootstrap_material(id, &node)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(material.service_account, trust_root_of(id).1);
    }
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
    // And one stopped half-way, its trust material stored, its operation running.
    begin(&repo, &cluster_record("org-a", Some("halfway"), 1, now())).await;

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
        dump.contains("halfway"),
        "the dump holds the running founding"
    );
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
    let (ca, service_account) = trust_root_of(record.id);
    assert_eq!(material.cluster_id, record.id);
    assert_eq!(
        material.control_plane_dns_name,
        record.control_plane_dns_name
    );
    assert_eq!(material.node, placement(record.id, 1, 2));
    assert_eq!(
        material.nodes,
        (1..=3)
            .map(|n| placement(record.id, 1, n))
            .collect::<Vec<_>>()
    );
    assert_eq!(material.ca, ca);
    assert_eq!(material.service_account, service_account);
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
    assert_eq!(material.bootstrap_token_first_used_at, None);
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

#[tokio::test(flavor = "multi_thread")]
async fn a_provisioning_cluster_has_no_bootstrap_material_yet() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let record = cluster_record("org-a", None, 1, now());
    // Its trust material is stored, but no node exists until the founding's last transaction.
    begin(&repo, &record).await;
    let node = NodeName::new(record.id, NodeOrdinal::new(1).unwrap());
    assert!(
        repo.bootstrap_material(record.id, &node)
            .await
            .unwrap()
            .is_none()
    );
}

// ---- the DNS outcome --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn the_dns_outcome_round_trips_through_find_cluster() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut compute = db.connect().await;
    let record = cluster_record("org-a", Some("named"), 1, now());
    let neighbour = cluster_record("org-a", None, 1, now());
    found(&repo, &mut compute, &record, 1).await;
    found(&repo, &mut compute, &neighbour, 2).await;
    let dns_of = |id| {
        let (repo, org) = (&repo, &record.org);
        async move { repo.find_cluster(org, id).await.unwrap().unwrap().dns }
    };
    assert_eq!(dns_of(record.id).await, None, "no outcome said yet");

    let published = DnsOutcome {
        configured: true,
        error: None,
    };
    repo.record_dns_outcome(record.id, &published)
        .await
        .unwrap();
    assert_eq!(dns_of(record.id).await, Some(published));

    let refused = DnsOutcome {
        configured: false,
        error: Some("the DNS server refused the update: REFUSED".into()),
    };
    repo.record_dns_outcome(record.id, &refused).await.unwrap();
    assert_eq!(dns_of(record.id).await, Some(refused));
    assert_eq!(dns_of(neighbour.id).await, None, "another cluster changed");

    // A cluster that is gone (or never was) is no error, and nothing is written.
    let mut conn = db.connect().await;
    let before = common::snapshot(&mut conn).await;
    repo.record_dns_outcome(
        ClusterId::new_random(),
        &DnsOutcome {
            configured: true,
            error: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(common::snapshot(&mut conn).await, before);
}

// ---- a cluster's root CA ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_clusters_root_ca_comes_back_opened_to_its_own_organization_only() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut compute = db.connect().await;
    let ready = cluster_record("org-a", Some("ready"), 1, now());
    let halfway = cluster_record("org-a", Some("halfway"), 1, now());
    let bare = cluster_record("org-a", Some("bare"), 1, now());
    found(&repo, &mut compute, &ready, 1).await;
    // Trust material stored, the founding still running.
    begin(&repo, &halfway).await;
    // The name claimed, no trust material yet.
    repo.begin_founding(&founding(&bare)).await.unwrap();

    for record in [&ready, &halfway] {
        let (ca, _) = trust_root_of(record.id);
        let root = repo
            .cluster_root_ca(&record.org, record.id)
            .await
            .unwrap()
            .expect("no root CA");
        assert_eq!(root, ca.root, "the root CA of {}", record.id);
        assert!(
            root.key_pem.expose().contains("SECRET-"),
            "the key is not opened"
        );
    }
    assert_eq!(
        repo.cluster_root_ca(&bare.org, bare.id).await.unwrap(),
        None,
        "a cluster without trust material"
    );
    assert_eq!(
        repo.cluster_root_ca(&org("org-b"), ready.id).await.unwrap(),
        None,
        "another organization's cluster"
    );
    assert_eq!(
        repo.cluster_root_ca(&ready.org, ClusterId::new_random())
            .await
            .unwrap(),
        None,
        "an unknown cluster"
    );

    // A sealed key moved to another row does not open there.
    let mut conn = db.connect().await;
    sql_query(format!(
        "UPDATE kubeclusters SET ca_key = (SELECT ca_key FROM kubeclusters WHERE id = '{}') \
         WHERE id = '{}'",
        ready.id, halfway.id
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let err = repo
        .cluster_root_ca(&halfway.org, halfway.id)
        .await
        .unwrap_err();
    assert!(matches!(err, RepoError::Unexpected(_)), "{err:?}");
}

// ---- certificate expiry -----------------------------------------------------------------------

#[derive(diesel::QueryableByName)]
struct Expiry {
    #[diesel(sql_type = Nullable<Timestamptz>)]
    certificates_expire_at: Option<OffsetDateTime>,
}

async fn stored_expiry(
    conn: &mut diesel_async::AsyncPgConnection,
    cluster: ClusterId,
) -> Option<OffsetDateTime> {
    sql_query("SELECT certificates_expire_at FROM kubeclusters WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(cluster.as_uuid())
        .get_result::<Expiry>(conn)
        .await
        .unwrap()
        .certificates_expire_at
}

/// Every page of `org`'s clusters expiring before `before`, `limit` at a time: the ids in the
/// order listed, and the size of each page.
async fn expiring(
    repo: &plinth_diesel_pg::PgRepo,
    who: &str,
    before: OffsetDateTime,
    limit: u32,
) -> (Vec<ClusterId>, Vec<usize>) {
    let mut page = PageRequest {
        limit,
        after: None,
        expiring_before: Some(before),
    };
    let (mut ids, mut sizes) = (Vec::new(), Vec::new());
    loop {
        let listed = repo.list_clusters(&org(who), &page).await.unwrap();
        sizes.push(listed.clusters.len());
        ids.extend(listed.clusters.iter().map(|c| c.id));
        match listed.next {
            Some(next) => page.after = Some(next),
            None => return (ids, sizes),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_certificates_expiry_is_kept_and_listing_selects_clusters_expiring_before_a_time() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut compute = db.connect().await;
    let mut conn = db.connect().await;
    let t = now();
    let base = t - time::Duration::hours(1);
    let days = time::Duration::days;
    // org-a's clusters, oldest first, and when their certificates expire.
    let mut clusters = Vec::new();
    for (i, expires_in) in [1, 10, 100, 5].into_iter().enumerate() {
        let created = base + time::Duration::seconds(i64::try_from(i).unwrap());
        let record = cluster_record("org-a", None, 1, created);
        let site = u8::try_from(i).unwrap() + 1;
        found_expiring(&repo, &mut compute, &record, site, t + days(expires_in)).await;
        clusters.push(record);
    }
    let ids: Vec<ClusterId> = clusters.iter().map(|r| r.id).collect();
    let theirs = cluster_record("org-b", None, 1, base);
    found_expiring(&repo, &mut compute, &theirs, 9, t + days(1)).await;
    // Provisioning: no expiry yet, so never expiring.
    let young = cluster_record("org-a", None, 1, t);
    begin(&repo, &young).await;

    for (record, expires_in) in clusters.iter().zip([1, 10, 100, 5]) {
        assert_eq!(
            stored_expiry(&mut conn, record.id).await,
            Some(t + days(expires_in))
        );
    }
    assert_eq!(stored_expiry(&mut conn, young.id).await, None);

    // Newest first, only those before the bound (strictly), only the organization's.
    assert_eq!(
        expiring(&repo, "org-a", t + days(7), 100).await,
        (vec![ids[3], ids[0]], vec![2])
    );
    assert_eq!(
        expiring(&repo, "org-a", t + days(10), 100).await.0,
        [ids[3], ids[0]]
    );
    assert_eq!(
        expiring(
            &repo,
            "org-a",
            t + days(10) + time::Duration::microseconds(1),
            100
        )
        .await
        .0,
        [ids[3], ids[1], ids[0]]
    );
    assert_eq!(
        expiring(&repo, "org-b", t + days(7), 100).await.0,
        [theirs.id]
    );
    assert_eq!(
        expiring(&repo, "org-a", t - days(1), 100).await,
        (vec![], vec![0])
    );
    // Paged, one at a time: every ready cluster once, the provisioning one never.
    assert_eq!(
        expiring(&repo, "org-a", t + days(1000), 1).await,
        (vec![ids[3], ids[2], ids[1], ids[0]], vec![1, 1, 1, 1])
    );
    assert_eq!(
        expiring(&repo, "org-a", t + days(1000), 3).await,
        (vec![ids[3], ids[2], ids[1], ids[0]], vec![3, 1])
    );
    // Without the bound, everything is listed, the provisioning cluster too.
    let all = repo
        .list_clusters(
            &org("org-a"),
            &PageRequest {
                limit: 100,
                after: None,
                expiring_before: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(all.clusters.len(), 5);

    // A ready cluster must carry its expiry, unless it was founded before it was kept (the
    // migration marks those); such a one is never listed as expiring.
    let unset = sql_query("UPDATE kubeclusters SET certificates_expire_at = NULL WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(ids[0].as_uuid())
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(
        unset
            .to_string()
            .contains("kubeclusters_founded_has_expiry"),
        "{unset}"
    );
    sql_query(
        "UPDATE kubeclusters SET certificates_expire_at = NULL, certificates_expiry_unknown = true \
         WHERE id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(ids[0].as_uuid())
    .execute(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        expiring(&repo, "org-a", t + days(1000), 100).await.0,
        [ids[3], ids[2], ids[1]]
    );
}

// ---- bootstrap tokens -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_bootstrap_tokens_first_use_is_noted_once_and_a_new_token_starts_unused() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut compute = db.connect().await;
    let mut conn = db.connect().await;
    let record = cluster_record("org-a", None, 3, now());
    found(&repo, &mut compute, &record, 1).await;
    let node = NodeName::new(record.id, NodeOrdinal::new(2).unwrap());
    let token = BootstrapTokenHash::of(&format!("token-{node}"));
    let material = |node: NodeName| {
        let repo = &repo;
        async move {
            repo.bootstrap_material(record.id, &node)
                .await
                .unwrap()
                .unwrap()
        }
    };
    let first_used = |node: NodeName| {
        let material = &material;
        async move { material(node).await.bootstrap_token_first_used_at }
    };
    assert_eq!(first_used(node.clone()).await, None);

    // Another token, a node or cluster that is not there: nothing noted, and no error.
    let before = snapshot(&mut conn).await;
    let missing = NodeName::new(record.id, NodeOrdinal::new(5).unwrap());
    repo.note_bootstrap_fetch(record.id, &node, &BootstrapTokenHash::of("wrong"))
        .await
        .unwrap();
    repo.note_bootstrap_fetch(record.id, &missing, &token)
        .await
        .unwrap();
    repo.note_bootstrap_fetch(ClusterId::new_random(), &node, &token)
        .await
        .unwrap();
    assert_eq!(snapshot(&mut conn).await, before);

    // The first fetch is noted (by the database's clock), the next ones keep that time.
    let started = now();
    repo.note_bootstrap_fetch(record.id, &node, &token)
        .await
        .unwrap();
    let noted = first_used(node.clone())
        .await
        .expect("the fetch was not noted");
    assert!(
        noted >= started - time::Duration::seconds(5)
            && noted <= now() + time::Duration::seconds(5),
        "{noted} is not about now ({started})"
    );
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    repo.note_bootstrap_fetch(record.id, &node, &token)
        .await
        .unwrap();
    assert_eq!(first_used(node.clone()).await, Some(noted));
    // Only that node's.
    for n in [1, 3] {
        let other = NodeName::new(record.id, NodeOrdinal::new(n).unwrap());
        assert_eq!(first_used(other).await, None, "node {n}");
    }

    // A new token: the old one is gone, the new one has not been used.
    let new_token = BootstrapTokenHash::of("a new token");
    let new_expiry = now() + time::Duration::hours(2);
    assert!(
        repo.replace_bootstrap_token(&record.org, record.id, &node, &new_token, new_expiry)
            .await
            .unwrap()
    );
    let replaced = material(node.clone()).await;
    assert!(replaced.bootstrap_token_hash.matches("a new token"));
    assert!(
        !replaced
            .bootstrap_token_hash
            .matches(&format!("token-{node}"))
    );
    assert_eq!(replaced.bootstrap_token_expires_at, new_expiry);
    assert_eq!(replaced.bootstrap_token_first_used_at, None);
    // A fetch with the old token (one that began before the replacement) notes nothing.
    repo.note_bootstrap_fetch(record.id, &node, &token)
        .await
        .unwrap();
    assert_eq!(first_used(node.clone()).await, None);
    repo.note_bootstrap_fetch(record.id, &node, &new_token)
        .await
        .unwrap();
    assert!(first_used(node.clone()).await.unwrap() >= noted);
    // The other nodes keep their tokens.
    let kept = material(NodeName::new(record.id, NodeOrdinal::new(1).unwrap())).await;
    assert!(
        kept.bootstrap_token_hash
            .matches(&format!("token-{}", kept.node.name))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bootstrap_token_is_replaced_only_for_a_node_of_the_organizations_ready_cluster() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut compute = db.connect().await;
    let mut conn = db.connect().await;
    let record = cluster_record("org-a", None, 1, now());
    found(&repo, &mut compute, &record, 1).await;
    let doomed = cluster_record("org-a", None, 1, now());
    found(&repo, &mut compute, &doomed, 2).await;
    assert_eq!(
        repo.begin_deletion(&deletion(&doomed.org, doomed.id))
            .await
            .unwrap(),
        DeletionStart::Started
    );
    let young = cluster_record("org-a", None, 1, now());
    begin(&repo, &young).await;
    let node_of = |cluster: ClusterId, n: u8| NodeName::new(cluster, NodeOrdinal::new(n).unwrap());
    let token = BootstrapTokenHash::of("a new token");
    let expiry = now() + time::Duration::hours(2);
    let before = snapshot(&mut conn).await;

    for (what, who, cluster, node) in [
        (
            "another organization",
            "org-b",
            record.id,
            node_of(record.id, 1),
        ),
        (
            "a node it does not have",
            "org-a",
            record.id,
            node_of(record.id, 2),
        ),
        (
            "another cluster's node",
            "org-a",
            record.id,
            node_of(doomed.id, 1),
        ),
        (
            "an unknown cluster",
            "org-a",
            ClusterId::new_random(),
            node_of(record.id, 1),
        ),
        (
            "a deleting cluster",
            "org-a",
            doomed.id,
            node_of(doomed.id, 1),
        ),
        (
            "a provisioning cluster",
            "org-a",
            young.id,
            node_of(young.id, 1),
        ),
    ] {
        assert!(
            !repo
                .replace_bootstrap_token(&org(who), cluster, &node, &token, expiry)
                .await
                .unwrap(),
            "{what}: replaced"
        );
    }
    assert_eq!(
        snapshot(&mut conn).await,
        before,
        "a refused replacement wrote"
    );
    assert!(
        repo.replace_bootstrap_token(
            &record.org,
            record.id,
            &node_of(record.id, 1),
            &token,
            expiry
        )
        .await
        .unwrap()
    );
    assert_ne!(snapshot(&mut conn).await, before);
}

// ---- a cluster's certificates -----------------------------------------------------------------

/// What `cluster_certificates` lists for a cluster founded by the fixtures with `count` nodes.
fn certificates_of(cluster: ClusterId, count: u8) -> Vec<NamedCertificate> {
    let named = |name: String, cert_pem: String| NamedCertificate { name, cert_pem };
    let (ca, _) = trust_root_of(cluster);
    let mut expected = vec![
        named("ca".into(), ca.root.cert_pem),
        named("etcd-ca".into(), ca.etcd.cert_pem),
        named("front-proxy-ca".into(), ca.front_proxy.cert_pem),
    ];
    let mut which = SharedClientCert::ALL.to_vec();
    which.sort_by_key(|w| w.stored_name());
    let certs = shared(cluster);
    expected.extend(
        which
            .into_iter()
            .map(|w| named(w.stored_name().into(), certs.get(w).cert_pem.clone())),
    );
    for n in 1..=count {
        let node = NodeName::new(cluster, NodeOrdinal::new(n).unwrap());
        for facet in ["etcd", "apiserver", "kubelet"] {
            expected.push(named(
                format!("{node}/{facet}"),
                pem_certified(&format!("{node}-{facet}")).cert_pem,
            ));
        }
    }
    expected
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clusters_certificates_are_listed_public_parts_only_to_its_own_organization() {
    let db = TestDatabase::create().await;
    let repo = repo(&db);
    let mut compute = db.connect().await;
    let mut conn = db.connect().await;
    let record = cluster_record("org-a", None, 3, now());
    found(&repo, &mut compute, &record, 1).await;
    let other = cluster_record("org-a", None, 1, now());
    found(&repo, &mut compute, &other, 2).await;

    let certs = repo
        .cluster_certificates(&record.org, record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(certs, certificates_of(record.id, 3));
    assert_eq!(certs.len(), 3 + 6 + 3 * 3);
    for cert in &certs {
        assert!(cert.cert_pem.contains("BEGIN CERTIFICATE"), "{}", cert.name);
        assert!(!cert.cert_pem.contains("SECRET-"), "{}", cert.name);
        assert!(!cert.cert_pem.contains("PRIVATE KEY"), "{}", cert.name);
    }
    assert_eq!(
        repo.cluster_certificates(&other.org, other.id)
            .await
            .unwrap()
            .unwrap(),
        certificates_of(other.id, 1)
    );

    // Another organization's cluster, or an unknown one: nothing.
    assert_eq!(
        repo.cluster_certificates(&org("org-b"), record.id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        repo.cluster_certificates(&record.org, ClusterId::new_random())
            .await
            .unwrap(),
        None
    );

    // While provisioning, what is stored: the CAs once step 3 stored them, before that nothing.
    let halfway = cluster_record("org-a", None, 1, now());
    begin(&repo, &halfway).await;
    assert_eq!(
        repo.cluster_certificates(&halfway.org, halfway.id)
            .await
            .unwrap()
            .unwrap(),
        certificates_of(halfway.id, 0)[..3]
    );
    let bare = cluster_record("org-a", None, 1, now());
    repo.begin_founding(&founding(&bare)).await.unwrap();
    assert_eq!(
        repo.cluster_certificates(&bare.org, bare.id)
            .await
            .unwrap()
            .unwrap(),
        []
    );

    // A node founded before bundles existed has no kubelet certificate; a deleting cluster
    // still lists everything it has.
    sql_query(
        "UPDATE apiservernodes SET kubelet_cert = NULL, kubelet_key = NULL \
         WHERE cluster_id = $1 AND ordinal = 1",
    )
    .bind::<diesel::sql_types::Uuid, _>(other.id.as_uuid())
    .execute(&mut conn)
    .await
    .unwrap();
    repo.begin_deletion(&deletion(&other.org, other.id))
        .await
        .unwrap();
    let without_kubelet: Vec<NamedCertificate> = certificates_of(other.id, 1)
        .into_iter()
        .filter(|c| !c.name.ends_with("/kubelet"))
        .collect();
    assert_eq!(
        repo.cluster_certificates(&other.org, other.id)
            .await
            .unwrap()
            .unwrap(),
        without_kubelet
    );
}
