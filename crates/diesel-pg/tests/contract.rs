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
    begin, count_rows, envelope, found, founding, group_of, insert_vm, now, org, placement, repo,
    repo_with, shared, texts, vm_id,
};
use diesel::sql_query;
use diesel_async::RunQueryDsl;
use plinth_diesel_pg::testing::TestDatabase;
use plinth_diesel_pg::{EnvelopeError, Slot};
use plinth_domain::model::{
    ClusterId, ClusterStatus, NodeName, NodeOrdinal, SecurityGroupChoice, SecurityGroupId,
};
use plinth_domain::ports::operations::Operations;
use plinth_domain::ports::repo::{
    ClusterSecurityGroups, DnsOutcome, NodePlacement, PageRequest, Repo, RepoError,
};
use plinth_domain::testing::{cluster_record, pem_certified, trust_root_of};

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
    let capped = repo
        .list_clusters(
            &org("org-a"),
            &PageRequest {
                limit: 1000,
                after: None,
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
