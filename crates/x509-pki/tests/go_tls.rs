//! Go's crypto/x509 accepts what the adapter issues: kubectl, with an admin kubeconfig whose CA
//! and client certificate come from the adapter, completes a mutual-TLS handshake with
//! `openssl s_server -verify_return_error` presenting the adapter's apiserver certificate — and
//! fails when the server certificate lacks the shared name or the client certificate comes from
//! another cluster's CA.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use plinth_domain::found_cluster::{KubeconfigSpec, render_kubeconfig};
use plinth_domain::model::SubjectAltNames;
use plinth_domain::ports::pki::{CertifiedKey, ServingCertRequest};
use plinth_testkit::{Process, free_port, output_text, run, wait_for_port};
use plinth_x509_pki::{KeyAlgorithm, sign_serving_cert};
use support::{Scratch, TrustSet, path_str, settings};

const VERSION_JSON: &str =
    r#"{"major":"1","minor":"32","gitVersion":"v1.32.0-plinth-test","platform":"linux/amd64"}"#;

/// An `openssl s_server` on 127.0.0.1 that requires a client certificate from the cluster CA
/// and answers `GET /version` from a file (-WWW).
struct ApiServerStandIn {
    port: u16,
    _process: Process,
}

impl ApiServerStandIn {
    fn start(scratch: &Scratch, serving: &CertifiedKey, label: &str) -> Self {
        let (cert, key) = scratch.write_pair(label, serving);
        let port = free_port();
        let accept = format!("127.0.0.1:{port}");
        let ca = scratch.path("ca.crt");
        let process = Process::spawn_in(
            &scratch.path(""),
            label,
            "openssl",
            &[
                "s_server",
                "-quiet",
                "-accept",
                &accept,
                "-cert",
                path_str(&cert),
                "-key",
                path_str(&key),
                "-CAfile",
                path_str(&ca),
                "-Verify",
                "1",
                "-verify_return_error",
                "-WWW",
            ],
            &scratch.path(&format!("{label}.log")),
        );
        wait_for_port(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
            Duration::from_secs(10),
        );
        Self {
            port,
            _process: process,
        }
    }
}

fn write_kubeconfig(
    scratch: &Scratch,
    file: &str,
    set: &TrustSet,
    client: &CertifiedKey,
) -> String {
    let server = format!("https://{}:6443", set.names.control_plane);
    let cluster_name = set.cluster.label();
    let user_name = format!("{cluster_name}-admin");
    let yaml = render_kubeconfig(&KubeconfigSpec {
        cluster_name: &cluster_name,
        server: &server,
        ca_cert_pem: &set.ca.root.cert_pem,
        user_name: &user_name,
        client,
    })
    .expect("the kubeconfig renders");
    // Named .key so it is written 0600, as a kubeconfig with a key in it should be.
    path_str(&scratch.write(&format!("{file}.key"), yaml.expose())).to_owned()
}

/// `kubectl get --raw /version` against the stand-in, dialled by IP with the shared name as
/// the TLS server name (no DNS needed).
fn kubectl_version(
    scratch: &Scratch,
    kubeconfig: &str,
    port: u16,
    server_name: &str,
) -> std::process::Output {
    let server = format!("https://127.0.0.1:{port}");
    let cache = scratch.path("kube-cache");
    run(
        "kubectl",
        &[
            "--kubeconfig",
            kubeconfig,
            "--cache-dir",
            path_str(&cache),
            "--server",
            &server,
            "--tls-server-name",
            server_name,
            "get",
            "--raw",
            "/version",
        ],
        Duration::from_secs(20),
    )
}

fn kubectl_completes_mutual_tls(algorithm: KeyAlgorithm) {
    let scratch = Scratch::new("go-tls");
    let set = TrustSet::new(algorithm, 1);
    scratch.write("ca.crt", &set.ca.root.cert_pem);
    scratch.write("version", VERSION_JSON);
    let server = ApiServerStandIn::start(&scratch, &set.apiserver[0], "apiserver");
    let kubeconfig = write_kubeconfig(&scratch, "admin.conf", &set, &set.admin);

    let output = kubectl_version(&scratch, &kubeconfig, server.port, &set.names.control_plane);
    assert!(
        output.status.success(),
        "kubectl failed:\n{}",
        output_text(&output)
    );
    let body = String::from_utf8_lossy(&output.stdout);
    assert!(
        body.contains("v1.32.0-plinth-test"),
        "{}",
        output_text(&output)
    );
}

#[test]
fn kubectl_and_s_server_complete_mutual_tls_with_ecdsa_p256() {
    kubectl_completes_mutual_tls(KeyAlgorithm::EcdsaP256);
}

#[test]
fn kubectl_and_s_server_complete_mutual_tls_with_rsa_2048() {
    kubectl_completes_mutual_tls(KeyAlgorithm::Rsa2048);
}

#[test]
fn kubectl_refuses_a_server_cert_without_the_shared_name() {
    let scratch = Scratch::new("go-tls-san");
    let set = TrustSet::new(KeyAlgorithm::EcdsaP256, 1);
    scratch.write("ca.crt", &set.ca.root.cert_pem);
    scratch.write("version", VERSION_JSON);
    // Same CA, same node, every SAN but the shared control-plane name.
    let without_shared_name = sign_serving_cert(
        &settings(KeyAlgorithm::EcdsaP256),
        &set.ca.root,
        &ServingCertRequest {
            common_name: "kube-apiserver".into(),
            sans: SubjectAltNames {
                dns_names: vec![set.nodes[0].name.as_str().to_owned(), "kubernetes".into()],
                ip_addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            },
            client_auth: false,
        },
    )
    .unwrap();
    let server =
        ApiServerStandIn::start(&scratch, &without_shared_name, "apiserver-no-shared-name");
    let kubeconfig = write_kubeconfig(&scratch, "admin.conf", &set, &set.admin);

    let output = kubectl_version(&scratch, &kubeconfig, server.port, &set.names.control_plane);
    assert!(
        !output.status.success(),
        "kubectl accepted it:\n{}",
        output_text(&output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("certificate is valid for") && stderr.contains(&set.names.control_plane),
        "kubectl failed for another reason:\n{}",
        output_text(&output)
    );
}

#[test]
fn the_server_refuses_a_client_cert_from_another_clusters_ca() {
    let scratch = Scratch::new("go-tls-foreign");
    let set = TrustSet::new(KeyAlgorithm::EcdsaP256, 1);
    let other = TrustSet::new(KeyAlgorithm::EcdsaP256, 1);
    scratch.write("ca.crt", &set.ca.root.cert_pem);
    scratch.write("version", VERSION_JSON);
    let server = ApiServerStandIn::start(&scratch, &set.apiserver[0], "apiserver");
    // Our CA for the server, the other cluster's admin cert for the client.
    let kubeconfig = write_kubeconfig(&scratch, "foreign.conf", &set, &other.admin);

    let output = kubectl_version(&scratch, &kubeconfig, server.port, &set.names.control_plane);
    assert!(
        !output.status.success(),
        "the foreign client was let in:\n{}",
        output_text(&output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("tls") || stderr.contains("certificate"),
        "kubectl failed for another reason:\n{}",
        output_text(&output)
    );
    let log = std::fs::read_to_string(scratch.path("apiserver.log")).unwrap_or_default();
    assert!(
        log.contains("verify error")
            || log.contains("certificate verify failed")
            || log.contains("unknown ca"),
        "s_server did not reject the client certificate; its log:\n{log}"
    );
}
