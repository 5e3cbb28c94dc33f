//! `GET /bootstrap/{cluster_id}/nodes/{node_name}`: only the holder of the node's token gets the
//! bundle, as a gzip tar with its digest or as JSON; every refusal is the same 401.

use std::net::Ipv4Addr;

use actix_web::http::StatusCode;
use actix_web::test::TestRequest;
use plinth_domain::model::{
    BootstrapToken, ClusterDnsNames, ClusterId, NodeAddresses, NodeName, NodeOrdinal, VmId,
};
use plinth_domain::ports::pki::SharedClientCerts;
use plinth_domain::ports::repo::{
    BootstrapMaterial, BootstrapTokenRecord, NodePlacement, RepoError,
};
use plinth_domain::testing::{cluster_ca_with, pem_certified, service_account};
use sha2::Digest as _;
use time::OffsetDateTime;

use crate::support::{Doubles, founding_settings, send};

fn material(cluster: ClusterId, token: &BootstrapToken) -> BootstrapMaterial {
    let ordinal = NodeOrdinal::new(1).unwrap();
    let node = NodePlacement {
        ordinal,
        name: NodeName::new(cluster, ordinal),
        vm_id: VmId::parse("vm-1").unwrap(),
        addresses: NodeAddresses {
            ipv4: Ipv4Addr::new(127, 10, 0, 11),
            ipv6: None,
            public_ipv4: None,
        },
    };
    BootstrapMaterial {
        cluster_id: cluster,
        networking: plinth_domain::model::Networking::default(),
        control_plane_dns_name: ClusterDnsNames::new(cluster, &founding_settings().dns_zone)
            .control_plane,
        ca: cluster_ca_with(pem_certified),
        service_account: service_account(),
        shared: SharedClientCerts::try_from_fn(|which| {
            Ok::<_, std::convert::Infallible>(pem_certified(which.stored_name()))
        })
        .unwrap(),
        nodes: vec![node.clone()],
        node,
        etcd_cert: pem_certified("etcd"),
        apiserver_cert: pem_certified("apiserver"),
        kubelet_cert: pem_certified("kubelet"),
        bootstrap_token_hash: token.hash(),
        bootstrap_token_expires_at: OffsetDateTime::now_utc() + time::Duration::hours(1),
        bootstrap_token_first_used_at: None,
    }
}

/// A repository holding node 1 of `cluster`, whose token is `token`.
fn serving(cluster: ClusterId, token: &BootstrapToken) -> Doubles {
    let mut doubles = Doubles::new();
    let material = material(cluster, token);
    let stored = material.clone();
    doubles
        .repo
        .expect_bootstrap_token()
        .returning(move |hash| {
            Ok(
                (hash == &stored.bootstrap_token_hash).then(|| BootstrapTokenRecord {
                    cluster: stored.cluster_id,
                    node: stored.node.name.clone(),
                    hash: stored.bootstrap_token_hash.clone(),
                    expires_at: stored.bootstrap_token_expires_at,
                    first_used_at: None,
                }),
            )
        });
    doubles
        .repo
        .expect_bootstrap_material()
        .returning(move |_, node| Ok((node == &material.node.name).then(|| material.clone())));
    doubles
        .repo
        .expect_note_bootstrap_fetch()
        .returning(|_, _, _| Ok(()));
    doubles
}

fn fetch(cluster: ClusterId, node: u8, token: &str) -> TestRequest {
    let name = NodeName::new(cluster, NodeOrdinal::new(node).unwrap());
    TestRequest::get()
        .uri(&format!("/bootstrap/{cluster}/nodes/{name}"))
        .insert_header(("Authorization", format!("Bearer {token}")))
}

#[actix_web::test]
async fn the_nodes_token_gets_a_tar_gz_with_its_digest() {
    let (cluster, token) = (ClusterId::new_random(), BootstrapToken::generate());
    let state = serving(cluster, &token).state();
    let answer = send(&state, fetch(cluster, 1, token.expose())).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), "application/gzip");
    assert_eq!(answer.header("cache-control"), "no-store");
    let digest: String = sha2::Sha256::digest(&answer.body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(answer.header("x-bundle-sha256"), digest);
}

#[actix_web::test]
async fn accept_json_gets_the_files_as_json() {
    let (cluster, token) = (ClusterId::new_random(), BootstrapToken::generate());
    let state = serving(cluster, &token).state();
    let request = fetch(cluster, 1, token.expose()).insert_header(("Accept", "application/json"));
    let answer = send(&state, request).await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    let files = body["files"].as_array().unwrap();
    let key = files
        .iter()
        .find(|f| f["path"] == "/etc/kubernetes/pki/ca.key")
        .unwrap();
    assert_eq!(key["mode"], "0600");
}

#[actix_web::test]
async fn a_wrong_token_and_an_unknown_node_are_the_same_401() {
    let (cluster, token) = (ClusterId::new_random(), BootstrapToken::generate());
    let state = serving(cluster, &token).state();
    let wrong = send(&state, fetch(cluster, 1, "not-the-token")).await;
    let unknown = send(&state, fetch(cluster, 2, token.expose())).await;
    for answer in [&wrong, &unknown] {
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer.problem(), "unauthorized");
    }
    assert_eq!(wrong.body, unknown.body);
}

#[actix_web::test]
async fn an_unavailable_database_is_503() {
    let mut doubles = Doubles::new();
    doubles
        .repo
        .expect_bootstrap_token()
        .returning(|_| Err(RepoError::Unavailable("refused".into())));
    let answer = send(&doubles.state(), fetch(ClusterId::new_random(), 1, "token")).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.problem(), "database-unavailable");
}

#[actix_web::test]
async fn rows_that_cannot_be_read_are_500_not_503() {
    let cluster = ClusterId::new_random();
    let token = BootstrapToken::generate();
    let mut doubles = Doubles::new();
    let node = NodeName::new(cluster, NodeOrdinal::new(1).unwrap());
    let hash = token.hash();
    doubles.repo.expect_bootstrap_token().returning(move |_| {
        Ok(Some(BootstrapTokenRecord {
            cluster,
            node: node.clone(),
            hash: hash.clone(),
            expires_at: OffsetDateTime::now_utc() + time::Duration::hours(1),
            first_used_at: None,
        }))
    });
    doubles
        .repo
        .expect_bootstrap_material()
        .returning(|_, _| Err(RepoError::Unexpected("a sealed key does not open".into())));
    let answer = send(&doubles.state(), fetch(cluster, 1, token.expose())).await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(answer.problem(), "internal");
}
