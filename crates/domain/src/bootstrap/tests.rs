//! Rendering a node's bundle from its rows, and handing it only to the holder of its token.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use time::{Duration, OffsetDateTime};
use uuid::Uuid;
use yaml_serde::Value;

use super::*;
use crate::model::{
    BootstrapToken, BootstrapTokenHash, ClusterDnsNames, Networking, NodeAddresses, NodeOrdinal,
    VmId,
};
use crate::ports::pki::SharedClientCerts;
use crate::ports::repo::{BootstrapTokenRecord, MockRepo, NodePlacement, RepoError};
use crate::testing::{cluster_ca_with, founding_settings, pem_certified, pem_service_account};

fn cluster() -> ClusterId {
    ClusterId::from_uuid(Uuid::from_u128(0xabc))
}

fn node(n: u8) -> NodePlacement {
    let ordinal = NodeOrdinal::new(n).unwrap();
    NodePlacement {
        ordinal,
        name: NodeName::new(cluster(), ordinal),
        vm_id: VmId::parse(&format!("vm-{n}")).unwrap(),
        addresses: NodeAddresses {
            ipv4: Ipv4Addr::new(127, 10, 0, 1 + n),
            ipv6: Some(Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, u16::from(n) + 1)),
            public_ipv4: Some(Ipv4Addr::new(127, 20, 0, n)),
        },
    }
}

fn material(of: u8, token: &BootstrapToken, expires_at: OffsetDateTime) -> BootstrapMaterial {
    let nodes: Vec<NodePlacement> = (1..=3).map(node).collect();
    BootstrapMaterial {
        cluster_id: cluster(),
        networking: Networking::default(),
        control_plane_dns_name: ClusterDnsNames::new(cluster(), &founding_settings().dns_zone)
            .control_plane,
        ca: cluster_ca_with(pem_certified),
        service_account: pem_service_account("sa"),
        shared: SharedClientCerts::try_from_fn(|which| {
            Ok::<_, std::convert::Infallible>(pem_certified(which.stored_name()))
        })
        .unwrap(),
        node: nodes[usize::from(of) - 1].clone(),
        nodes,
        etcd_cert: pem_certified(&format!("etcd-{of}")),
        apiserver_cert: pem_certified(&format!("apiserver-{of}")),
        kubelet_cert: pem_certified(&format!("kubelet-{of}")),
        bootstrap_token_hash: token.hash(),
        bootstrap_token_expires_at: expires_at,
        bootstrap_token_first_used_at: None,
    }
}

fn later() -> OffsetDateTime {
    OffsetDateTime::now_utc() + Duration::hours(1)
}

fn find<'a>(bundle: &'a Bundle, path: &str) -> &'a BundleFile {
    bundle
        .files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("{path} is not in the bundle"))
}

fn command(manifest: &Value) -> Vec<String> {
    manifest["spec"]["containers"][0]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn flag(command: &[String], name: &str) -> String {
    let prefix = format!("--{name}=");
    command
        .iter()
        .find_map(|arg| arg.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} in {command:?}"))
        .to_owned()
}

#[test]
fn the_bundle_holds_kubeadms_files_with_keys_private() {
    let token = BootstrapToken::generate();
    let bundle = render_bundle(&material(2, &token, later()), &BundleSettings::default()).unwrap();
    let pki = "/etc/kubernetes/pki";
    let mut expected: Vec<String> = [
        "ca",
        "apiserver",
        "apiserver-kubelet-client",
        "apiserver-etcd-client",
        "front-proxy-ca",
        "front-proxy-client",
        "etcd/ca",
        "etcd/server",
        "etcd/peer",
        "etcd/healthcheck-client",
    ]
    .iter()
    .flat_map(|base| [format!("{pki}/{base}.crt"), format!("{pki}/{base}.key")])
    .collect();
    expected.extend([format!("{pki}/sa.key"), format!("{pki}/sa.pub")]);
    for conf in ["controller-manager.conf", "scheduler.conf", "kubelet.conf"] {
        expected.push(format!("/etc/kubernetes/{conf}"));
    }
    for manifest in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        expected.push(format!("/etc/kubernetes/manifests/{manifest}.yaml"));
    }
    let mut paths: Vec<String> = bundle.files.iter().map(|f| f.path.clone()).collect();
    paths.sort();
    expected.sort();
    assert_eq!(paths, expected);

    for file in &bundle.files {
        let secret = file.path.ends_with(".key") || file.path.ends_with(".conf");
        assert_eq!(
            file.mode,
            if secret { 0o600 } else { 0o644 },
            "{}",
            file.path
        );
    }
    // The node's own identities, the cluster's shared ones.
    assert!(
        find(&bundle, "/etc/kubernetes/pki/apiserver.crt")
            .contents
            .expose()
            .contains("apiserver-2")
    );
    assert_eq!(
        find(&bundle, "/etc/kubernetes/pki/etcd/server.key").contents,
        find(&bundle, "/etc/kubernetes/pki/etcd/peer.key").contents
    );
    assert!(
        find(&bundle, "/etc/kubernetes/pki/etcd/server.crt")
            .contents
            .expose()
            .contains("etcd-2")
    );
    assert!(
        find(&bundle, "/etc/kubernetes/pki/etcd/ca.key")
            .contents
            .expose()
            .contains("etcd-ca")
    );
    assert_eq!(
        bundle.directories(),
        [
            "/etc",
            "/etc/kubernetes",
            "/etc/kubernetes/pki",
            "/etc/kubernetes/pki/etcd",
            "/etc/kubernetes/manifests"
        ]
    );
}

#[test]
fn kubeconfigs_point_at_the_first_node_with_their_own_users() {
    let token = BootstrapToken::generate();
    let bundle = render_bundle(&material(3, &token, later()), &BundleSettings::default()).unwrap();
    for (file, user, cert) in [
        (
            "controller-manager.conf",
            "system:kube-controller-manager".to_owned(),
            "controller-manager",
        ),
        (
            "scheduler.conf",
            "system:kube-scheduler".to_owned(),
            "scheduler",
        ),
        (
            "kubelet.conf",
            format!("system:node:{}", node(3).name),
            "kubelet-3",
        ),
    ] {
        let path = format!("/etc/kubernetes/{file}");
        let config: Value = yaml_serde::from_str(find(&bundle, &path).contents.expose()).unwrap();
        assert_eq!(
            config["clusters"][0]["cluster"]["server"], "https://127.10.0.2:6443",
            "{file}"
        );
        assert_eq!(config["users"][0]["name"], user.as_str(), "{file}");
        use base64::Engine as _;
        let client = base64::engine::general_purpose::STANDARD
            .decode(
                config["users"][0]["user"]["client-certificate-data"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
        assert!(String::from_utf8(client).unwrap().contains(cert), "{file}");
    }
}

#[test]
fn manifests_are_pods_with_kubeadms_flags_for_this_node() {
    let token = BootstrapToken::generate();
    let settings =
        BundleSettings::new("v1.31.2", "mirror.local/k8s/", "mirror.local/etcd:3.5.15-0").unwrap();
    let bundle = render_bundle(&material(2, &token, later()), &settings).unwrap();
    let manifest = |name: &str| -> Value {
        yaml_serde::from_str(
            find(&bundle, &format!("/etc/kubernetes/manifests/{name}.yaml"))
                .contents
                .expose(),
        )
        .unwrap()
    };
    for name in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        let pod = manifest(name);
        assert_eq!(pod["apiVersion"], "v1");
        assert_eq!(pod["kind"], "Pod");
        assert_eq!(pod["metadata"]["name"], name);
        assert_eq!(pod["metadata"]["namespace"], "kube-system");
        assert_eq!(pod["spec"]["hostNetwork"], true);
        assert_eq!(command(&pod)[0], name);
    }
    let etcd = command(&manifest("etcd"));
    let ip = "127.10.0.3";
    assert_eq!(flag(&etcd, "name"), node(2).name.as_str());
    assert_eq!(
        flag(&etcd, "listen-client-urls"),
        format!("https://127.0.0.1:2379,https://{ip}:2379")
    );
    assert_eq!(
        flag(&etcd, "initial-advertise-peer-urls"),
        format!("https://{ip}:2380")
    );
    assert_eq!(
        flag(&etcd, "initial-cluster"),
        (1..=3)
            .map(|n| format!("{}=https://127.10.0.{}:2380", node(n).name, 1 + n))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert_eq!(flag(&etcd, "initial-cluster-state"), "new");
    assert_eq!(
        flag(&etcd, "trusted-ca-file"),
        "/etc/kubernetes/pki/etcd/ca.crt"
    );
    assert_eq!(flag(&etcd, "client-cert-auth"), "true");
    assert_eq!(
        manifest("etcd")["spec"]["containers"][0]["image"],
        "mirror.local/etcd:3.5.15-0"
    );

    let apiserver = command(&manifest("kube-apiserver"));
    assert_eq!(flag(&apiserver, "advertise-address"), ip);
    assert_eq!(
        flag(&apiserver, "etcd-certfile"),
        "/etc/kubernetes/pki/apiserver-etcd-client.crt"
    );
    assert_eq!(flag(&apiserver, "service-cluster-ip-range"), "10.96.0.0/12");
    assert_eq!(
        flag(&apiserver, "service-account-issuer"),
        "https://kubernetes.default.svc.cluster.local"
    );
    assert_eq!(
        flag(&apiserver, "requestheader-allowed-names"),
        "front-proxy-client"
    );
    assert_eq!(
        manifest("kube-apiserver")["spec"]["containers"][0]["image"],
        "mirror.local/k8s/kube-apiserver:v1.31.2"
    );
    let controller_manager = command(&manifest("kube-controller-manager"));
    assert_eq!(
        flag(&controller_manager, "cluster-signing-key-file"),
        "/etc/kubernetes/pki/ca.key"
    );
    assert_eq!(flag(&controller_manager, "cluster-cidr"), "10.244.0.0/16");
    assert_eq!(
        flag(&command(&manifest("kube-scheduler")), "kubeconfig"),
        "/etc/kubernetes/scheduler.conf"
    );
    assert!(BundleSettings::new("v1.32; rm -rf /", "r", "e").is_err());
}

fn fetcher(material: Option<BootstrapMaterial>) -> FetchBundle {
    fetcher_noting(material, Arc::default(), Arc::default())
}

/// A fetcher over `material` whose repo notes each first fetch (cluster, node, token hash) in
/// `noted`, and counts in `opened` how often it read (and so opened) the node's material.
fn fetcher_noting(
    material: Option<BootstrapMaterial>,
    noted: Arc<std::sync::Mutex<Vec<(ClusterId, NodeName, BootstrapTokenHash)>>>,
    opened: Arc<std::sync::Mutex<usize>>,
) -> FetchBundle {
    let mut repo = MockRepo::new();
    let tokens = material.clone();
    repo.expect_bootstrap_token().returning(move |hash| {
        Ok(tokens
            .clone()
            .filter(|m| &m.bootstrap_token_hash == hash)
            .map(|m| BootstrapTokenRecord {
                cluster: m.cluster_id,
                node: m.node.name,
                hash: m.bootstrap_token_hash,
                expires_at: m.bootstrap_token_expires_at,
                first_used_at: m.bootstrap_token_first_used_at,
            }))
    });
    repo.expect_bootstrap_material()
        .returning(move |cluster, node| {
            *opened.lock().unwrap() += 1;
            Ok(material
                .clone()
                .filter(|m| m.cluster_id == cluster && &m.node.name == node))
        });
    repo.expect_note_bootstrap_fetch()
        .returning(move |cluster, node, token| {
            noted
                .lock()
                .unwrap()
                .push((cluster, node.clone(), token.clone()));
            Ok(())
        });
    FetchBundle::new(Arc::new(repo), BundleSettings::default())
}

#[tokio::test]
async fn a_first_fetch_is_noted_and_the_token_burns_a_reuse_window_later() {
    let token = BootstrapToken::generate();
    let (id, name) = (cluster().to_string(), node(1).name.to_string());
    let noted = Arc::default();
    let fetch = fetcher_noting(
        Some(material(1, &token, later())),
        Arc::clone(&noted),
        Arc::default(),
    );
    fetch.fetch(&id, &name, token.expose()).await.unwrap();
    assert_eq!(
        *noted.lock().unwrap(),
        [(cluster(), node(1).name, token.hash())],
        "the first fetch is noted with the token it used"
    );

    // Used 5 minutes ago: within the 10-minute window it still works, and is not noted again.
    let window = BundleSettings::default().token_reuse_window();
    assert_eq!(window, std::time::Duration::from_secs(600));
    let noted = Arc::default();
    let used = |ago: Duration| BootstrapMaterial {
        bootstrap_token_first_used_at: Some(OffsetDateTime::now_utc() - ago),
        ..material(1, &token, later())
    };
    let fetch = fetcher_noting(
        Some(used(Duration::minutes(5))),
        Arc::clone(&noted),
        Arc::default(),
    );
    fetch.fetch(&id, &name, token.expose()).await.unwrap();
    assert!(noted.lock().unwrap().is_empty());

    // Used 11 minutes ago: burned. A wrong token is still plainly unauthorized.
    let fetch = fetcher(Some(used(Duration::minutes(11))));
    let err = fetch.fetch(&id, &name, token.expose()).await.unwrap_err();
    assert!(matches!(err, FetchBundleError::Burned), "{err}");
    let err = fetch
        .fetch(&id, &name, BootstrapToken::generate().expose())
        .await
        .unwrap_err();
    assert!(matches!(err, FetchBundleError::Unauthorized), "{err}");
}

#[test]
fn the_reuse_window_is_configured_and_checked() {
    let settings = BundleSettings {
        token_reuse_window_secs: 2,
        ..BundleSettings::default()
    }
    .checked()
    .unwrap();
    assert_eq!(
        settings.token_reuse_window(),
        std::time::Duration::from_secs(2)
    );
    let zero = BundleSettings {
        token_reuse_window_secs: 0,
        ..BundleSettings::default()
    };
    assert_eq!(zero.checked().unwrap_err().key, "token_reuse_window_secs");
}

#[tokio::test]
async fn only_the_nodes_own_unexpired_token_gets_its_bundle() {
    let token = BootstrapToken::generate();
    let fetch = fetcher(Some(material(1, &token, later())));
    let (id, name) = (cluster().to_string(), node(1).name.to_string());

    let bundle = fetch.fetch(&id, &name, token.expose()).await.unwrap();
    assert_eq!(bundle.node_name, node(1).name);

    let other = BootstrapToken::generate();
    for (cluster_id, node_name, presented) in [
        (id.as_str(), name.as_str(), other.expose()), // wrong token
        (id.as_str(), name.as_str(), ""),             // no token
        (id.as_str(), node(2).name.as_str(), token.expose()), // other node's name
        (id.as_str(), "cp-9.anything", token.expose()), // no such node
        (
            "00000000-0000-0000-0000-000000000001",
            name.as_str(),
            token.expose(),
        ), // other cluster
        ("not-a-uuid", name.as_str(), token.expose()),
    ] {
        let err = fetch
            .fetch(cluster_id, node_name, presented)
            .await
            .unwrap_err();
        assert!(
            matches!(err, FetchBundleError::Unauthorized),
            "{cluster_id} {node_name}: {err}"
        );
    }
}

#[tokio::test]
async fn an_expired_token_is_refused_like_a_wrong_one() {
    let token = BootstrapToken::generate();
    let expired = OffsetDateTime::now_utc() - Duration::seconds(1);
    let fetch = fetcher(Some(material(1, &token, expired)));
    let err = fetch
        .fetch(
            &cluster().to_string(),
            node(1).name.as_str(),
            token.expose(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, FetchBundleError::Unauthorized));
    assert_eq!(err.to_string(), "invalid bootstrap token");
}

#[tokio::test]
async fn a_database_failure_is_unavailable_not_unauthorized() {
    let mut repo = MockRepo::new();
    repo.expect_bootstrap_token()
        .returning(|_| Err(RepoError::Unavailable("down".into())));
    let fetch = FetchBundle::new(Arc::new(repo), BundleSettings::default());
    let err = fetch
        .fetch(&cluster().to_string(), node(1).name.as_str(), "t")
        .await
        .unwrap_err();
    assert!(matches!(err, FetchBundleError::Unavailable(_)));
}

#[tokio::test]
async fn a_refused_fetch_opens_nothing() {
    let token = BootstrapToken::generate();
    let opened = Arc::default();
    let fetch = fetcher_noting(
        Some(material(1, &token, later())),
        Arc::default(),
        Arc::clone(&opened),
    );
    let (id, name) = (cluster().to_string(), node(1).name.to_string());
    for (cluster_id, node_name, presented) in [
        (
            id.as_str(),
            name.as_str(),
            BootstrapToken::generate().expose().to_owned(),
        ),
        (
            id.as_str(),
            node(2).name.as_str(),
            token.expose().to_owned(),
        ),
        (
            "00000000-0000-0000-0000-000000000001",
            name.as_str(),
            token.expose().to_owned(),
        ),
    ] {
        let err = fetch
            .fetch(cluster_id, node_name, &presented)
            .await
            .unwrap_err();
        assert!(matches!(err, FetchBundleError::Unauthorized), "{err}");
    }
    assert_eq!(
        *opened.lock().unwrap(),
        0,
        "a refused fetch opened a node's material"
    );
    fetch.fetch(&id, &name, token.expose()).await.unwrap();
    assert_eq!(*opened.lock().unwrap(), 1);
}
