//! A real 3-member TLS etcd (Debian's etcd-server) on 127.10.0.11–13 runs on node certificates
//! the adapter made under `etcd-ca`; etcdctl with the adapter's apiserver-etcd-client certificate
//! finds every member healthy and can put and get; a client certificate signed by the root CA
//! (not `etcd-ca`) is refused.

mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use plinth_domain::ports::pki::{CertifiedKey, ClientCertRequest};
use plinth_testkit::{Process, output_text, run, wait_for_port};
use plinth_x509_pki::{KeyAlgorithm, sign_client_cert};
use support::{Scratch, TrustSet, path_str, settings};

const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

struct EtcdCluster {
    members: Vec<Process>,
    endpoints: Vec<String>,
}

impl EtcdCluster {
    /// Starts one member per node with kubeadm's flags (docs/ARCHITECTURE.md §5.5), trusting only etcd-ca.
    fn start(scratch: &Scratch, set: &TrustSet) -> Self {
        let ca = scratch.write("etcd/ca.crt", &set.ca.etcd.cert_pem);
        let initial_cluster = set
            .nodes
            .iter()
            .map(|n| format!("{}=https://{}:{PEER_PORT}", n.name, n.addresses.ipv4))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        let mut endpoints = Vec::new();
        for (i, (node, cert)) in set.nodes.iter().zip(&set.etcd).enumerate() {
            let (crt, key) = scratch.write_pair(&format!("etcd/member-{}", i + 1), cert);
            let ip = node.addresses.ipv4;
            let client_url = format!("https://{ip}:{CLIENT_PORT}");
            let peer_url = format!("https://{ip}:{PEER_PORT}");
            let data_dir = scratch.path(&format!("data-{}", i + 1));
            let args = [
                "--name",
                node.name.as_str(),
                "--data-dir",
                path_str(&data_dir),
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &initial_cluster,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                &set.cluster.label(),
                "--cert-file",
                path_str(&crt),
                "--key-file",
                path_str(&key),
                "--peer-cert-file",
                path_str(&crt),
                "--peer-key-file",
                path_str(&key),
                "--trusted-ca-file",
                path_str(&ca),
                "--peer-trusted-ca-file",
                path_str(&ca),
                "--client-cert-auth",
                "--peer-client-cert-auth",
                "--snapshot-count",
                "10000",
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
            ];
            let log = scratch.path(&format!("member-{}.log", i + 1));
            members.push(Process::spawn(node.name.as_str(), "etcd", &args, &log));
            endpoints.push(client_url);
        }
        for node in &set.nodes {
            wait_for_port(
                IpAddr::V4(node.addresses.ipv4),
                CLIENT_PORT,
                Duration::from_secs(15),
            );
        }
        Self { members, endpoints }
    }

    /// Stops members one at a time: stopping all at once makes each try a leadership transfer
    /// to peers that are leaving, and shutdown takes seconds.
    fn stop(self) {
        for member in self.members {
            member.stop(Duration::from_secs(5));
        }
    }
}

fn etcdctl(
    scratch: &Scratch,
    endpoints: &[String],
    client: &CertifiedKey,
    label: &str,
    command: &[&str],
) -> std::process::Output {
    let (crt, key) = scratch.write_pair(label, client);
    let ca = scratch.path("etcd/ca.crt");
    let endpoints = endpoints.join(",");
    let mut args = vec![
        "--endpoints",
        &endpoints,
        "--cacert",
        path_str(&ca),
        "--cert",
        path_str(&crt),
        "--key",
        path_str(&key),
        "--dial-timeout",
        "2s",
        "--command-timeout",
        "4s",
    ];
    args.extend_from_slice(command);
    run("etcdctl", &args, Duration::from_secs(15))
}

fn log_tails(scratch: &Scratch) -> String {
    (1..=3)
        .map(|i| {
            let log = std::fs::read_to_string(scratch.path(&format!("member-{i}.log")))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(8).collect();
            format!(
                "--- member {i}\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_three_member_etcd_runs_on_the_adapters_certificates() {
    let scratch = Scratch::new("etcd3");
    let set = TrustSet::new(KeyAlgorithm::EcdsaP256, 3);
    let cluster = EtcdCluster::start(&scratch, &set);
    let client = &set.apiserver_etcd_client;

    // The members find each other over peer TLS and elect a leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    let health = loop {
        let output = etcdctl(
            &scratch,
            &cluster.endpoints,
            client,
            "client",
            &["endpoint", "health"],
        );
        if output.status.success() || Instant::now() > deadline {
            break output;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        health.status.success(),
        "etcd did not become healthy:\n{}\n{}",
        output_text(&health),
        log_tails(&scratch)
    );
    let healthy = String::from_utf8_lossy(&health.stdout).to_string()
        + &String::from_utf8_lossy(&health.stderr);
    for endpoint in &cluster.endpoints {
        assert!(
            healthy.contains(&format!("{endpoint} is healthy")),
            "{endpoint} not healthy:\n{healthy}"
        );
    }

    let members = etcdctl(
        &scratch,
        &cluster.endpoints,
        client,
        "client",
        &["member", "list"],
    );
    let listed = String::from_utf8_lossy(&members.stdout);
    assert_eq!(listed.lines().count(), 3, "{}", output_text(&members));
    for node in &set.nodes {
        assert!(listed.contains(node.name.as_str()), "{listed}");
    }

    let value = format!("founded {}", set.cluster);
    let put = etcdctl(
        &scratch,
        &cluster.endpoints,
        client,
        "client",
        &["put", "/plinth/test", &value],
    );
    assert!(put.status.success(), "{}", output_text(&put));
    // Read back from each member on its own: every member's serving cert and IP SAN work.
    for endpoint in &cluster.endpoints {
        let get = etcdctl(
            &scratch,
            std::slice::from_ref(endpoint),
            client,
            "client",
            &["get", "/plinth/test", "--print-value-only"],
        );
        assert!(get.status.success(), "{endpoint}: {}", output_text(&get));
        assert_eq!(
            String::from_utf8_lossy(&get.stdout).trim(),
            value,
            "{endpoint}"
        );
    }

    // A client certificate from the cluster's root CA is refused: etcd trusts only etcd-ca.
    let root_signed = sign_client_cert(
        &settings(KeyAlgorithm::EcdsaP256),
        &set.ca.root,
        &ClientCertRequest {
            common_name: "kube-apiserver-etcd-client".into(),
            organizations: vec![],
            not_after: None,
        },
    )
    .unwrap();
    let refused = etcdctl(
        &scratch,
        &cluster.endpoints[..1],
        &root_signed,
        "root-signed",
        &["get", "/plinth/test", "--print-value-only"],
    );
    assert!(
        !refused.status.success(),
        "etcd let a root-signed client in:\n{}",
        output_text(&refused)
    );
    assert!(
        !String::from_utf8_lossy(&refused.stdout).contains(&value),
        "{}",
        output_text(&refused)
    );
    let member_log = std::fs::read_to_string(scratch.path("member-1.log")).unwrap();
    assert!(
        member_log.contains("bad certificate")
            || member_log.contains("unknown certificate authority")
            || member_log.contains("rejected connection"),
        "etcd's log does not show the refusal:\n{}",
        log_tails(&scratch)
    );

    // So is the admin's certificate (also root-signed), whatever its group.
    let admin = etcdctl(
        &scratch,
        &cluster.endpoints[..1],
        &set.admin,
        "admin",
        &["get", "/plinth/test"],
    );
    assert!(
        !admin.status.success(),
        "etcd let the admin cert in:\n{}",
        output_text(&admin)
    );

    cluster.stop();
}
