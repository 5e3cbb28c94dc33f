//! Test support: scratch directories, external programs, and one cluster's trust material made
//! by the adapter. Every external program is real (openssl, kubectl, etcd); a missing one fails
//! the test with how to install it, because `make test` installs them.

#![allow(dead_code)] // each test binary uses its own part of this module
#![allow(clippy::unwrap_used)] // test support: a failed step is a failed test

use std::fs;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use plinth_domain::model::{
    ClusterDnsNames, ClusterId, DnsZone, Networking, NodeAddresses, NodeName, NodeOrdinal,
    apiserver_sans, etcd_sans,
};
use plinth_domain::ports::pki::{
    CertifiedKey, ClientCertRequest, ClusterCa, ServiceAccountKeyPair, ServingCertRequest,
};
use plinth_x509_pki::{
    KeyAlgorithm, PkiSettings, create_cluster_ca, create_service_account_key, sign_client_cert,
    sign_serving_cert,
};

pub const ZONE: &str = "k8s.plinth.test";

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

/// The path of a program the test needs; panics with how to get it when it is missing.
pub fn require(program: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("{program} is not installed; `make test` installs it (scripts/test-deps.sh)")
    })
}

/// Runs a program to its end, bounded by `timeout(1)`, and returns what it printed.
pub fn run(program: &str, args: &[&str], limit: Duration) -> Output {
    let program = require(program);
    Command::new("timeout")
        .arg("--kill-after=2")
        .arg(limit.as_secs().to_string())
        .arg(&program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

pub fn text(output: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Process {
    pub child: Child,
    pub name: String,
}

impl Process {
    pub fn spawn(name: &str, program: &str, args: &[&str], log: &Path) -> Self {
        Self::spawn_in(Path::new("."), name, program, args, log)
    }

    /// Starts `program` with `dir` as its working directory, output to `log`.
    pub fn spawn_in(dir: &Path, name: &str, program: &str, args: &[&str], log: &Path) -> Self {
        let log = fs::File::create(log).unwrap();
        let child = Command::new(require(program))
            .current_dir(dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            child,
            name: name.to_owned(),
        }
    }

    /// Asks the process to stop (SIGTERM) and waits up to `grace` before it is killed.
    pub fn stop(mut self, grace: Duration) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts TCP connections on `ip:port`.
pub fn wait_for_port(ip: IpAddr, port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&(ip, port).into(), Duration::from_millis(200))
            .is_ok()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listens on {ip}:{port} after {limit:?}");
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
