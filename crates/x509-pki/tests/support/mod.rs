//! Test support: scratch directories and one cluster's trust material made by the adapter. The
//! external programs (openssl, kubectl, etcd) are real, and driven with plinth-testkit's process
//! helpers (`plinth_testkit::process`).

#![allow(dead_code)] // each test binary uses its own part of this module
#![allow(clippy::unwrap_used)] // test support: a failed step is a failed test

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use plinth_domain::model::{
    ClusterDnsNames, ClusterId, DnsZone, Networking, NodeAddresses, NodeName, NodeOrdinal,
    apiserver_sans, etcd_sans,
};
use plinth_domain::ports::pki::{
    CertifiedKey, ClientCertRequest, ClusterCa, ServiceAccountKeyPair, ServingCertRequest,
};
use plinth_testkit::ZONE;
use plinth_x509_pki::{
    KeyAlgorithm, PkiSettings, create_cluster_ca, create_service_account_key, sign_client_cert,
    sign_serving_cert,
};

/// A directory removed when dropped (kept with `PLINTH_KEEP_TEST_FILES=1`, for debugging).
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "plinth-{label}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes a file; key files get mode 0600, as kubeadm writes them.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&path, contents).unwrap();
        if name.ends_with(".key") {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        path
    }

    /// Writes a certificate and its key as `<name>.crt` and `<name>.key`.
    pub fn write_pair(&self, name: &str, pair: &CertifiedKey) -> (PathBuf, PathBuf) {
        (
            self.write(&format!("{name}.crt"), &pair.cert_pem),
            self.write(&format!("{name}.key"), pair.key_pem.expose()),
        )
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("PLINTH_KEEP_TEST_FILES").is_none() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

fn rand_suffix() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    u64::from(nanos) ^ (u64::from(std::process::id()) << 32)
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// One control-plane node as the founding sees it.
pub struct Node {
    pub name: NodeName,
    pub addresses: NodeAddresses,
}

/// A cluster's trust material, made by the adapter exactly as a founding asks for it.
pub struct TrustSet {
    pub cluster: ClusterId,
    pub names: ClusterDnsNames,
    pub ca: ClusterCa,
    pub service_account: ServiceAccountKeyPair,
    pub nodes: Vec<Node>,
    /// Per node: etcd server+peer certificate, under etcd-ca.
    pub etcd: Vec<CertifiedKey>,
    /// Per node: kube-apiserver serving certificate, under ca.
    pub apiserver: Vec<CertifiedKey>,
    /// kubernetes-admin, system:masters, under ca.
    pub admin: CertifiedKey,
    /// kube-apiserver-etcd-client, under etcd-ca.
    pub apiserver_etcd_client: CertifiedKey,
    /// front-proxy-client, under front-proxy-ca.
    pub front_proxy_client: CertifiedKey,
}

pub fn settings(algorithm: KeyAlgorithm) -> PkiSettings {
    PkiSettings {
        key_algorithm: algorithm,
        ..PkiSettings::default()
    }
}

impl TrustSet {
    /// Nodes on 127.10.0.11.. (the compute simulator's subnet), as many as asked.
    pub fn new(algorithm: KeyAlgorithm, node_count: u8) -> Self {
        let settings = settings(algorithm);
        let cluster = ClusterId::new_random();
        let names = ClusterDnsNames::new(cluster, &DnsZone::parse(ZONE).unwrap());
        let ca = create_cluster_ca(&settings, cluster).unwrap();
        let service_account = create_service_account_key(&settings).unwrap();
        let nodes: Vec<Node> = (1..=node_count)
            .map(|n| Node {
                name: NodeName::new(cluster, NodeOrdinal::new(n).unwrap()),
                addresses: NodeAddresses {
                    ipv4: Ipv4Addr::new(127, 10, 0, 10 + n),
                    ipv6: None,
                    public_ipv4: None,
                },
            })
            .collect();
        let networking = Networking::default();
        let etcd = nodes
            .iter()
            .map(|node| {
                let request = ServingCertRequest {
                    common_name: node.name.as_str().to_owned(),
                    sans: etcd_sans(&node.name, &node.addresses),
                    client_auth: true,
                };
                sign_serving_cert(&settings, &ca.etcd, &request).unwrap()
            })
            .collect();
        let apiserver = nodes
            .iter()
            .map(|node| {
                let request = ServingCertRequest {
                    common_name: "kube-apiserver".to_owned(),
                    sans: apiserver_sans(
                        &node.name,
                        &names.control_plane,
                        &networking,
                        &node.addresses,
                    ),
                    client_auth: false,
                };
                sign_serving_cert(&settings, &ca.root, &request).unwrap()
            })
            .collect();
        let client = |issuer: &CertifiedKey, cn: &str, orgs: &[&str]| {
            let request = ClientCertRequest {
                common_name: cn.to_owned(),
                organizations: orgs.iter().map(|o| (*o).to_owned()).collect(),
                not_after: None,
            };
            sign_client_cert(&settings, issuer, &request).unwrap()
        };
        Self {
            admin: client(&ca.root, "kubernetes-admin", &["system:masters"]),
            apiserver_etcd_client: client(&ca.etcd, "kube-apiserver-etcd-client", &[]),
            front_proxy_client: client(&ca.front_proxy, "front-proxy-client", &[]),
            cluster,
            names,
            ca,
            service_account,
            nodes,
            etcd,
            apiserver,
        }
    }
}
