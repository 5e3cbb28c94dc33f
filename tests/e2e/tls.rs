//! What real TLS programs make of the credentials plinth issues: openssl reads and verifies
//! certificates, kubectl completes a mutual-TLS handshake with a kubeconfig against an apiserver
//! certificate served by `openssl s_server`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use plinth_testkit::{Process, free_port, output_text, run, wait_for_port};
use serde_json::Value;

use crate::support::write;

const LIMIT: Duration = Duration::from_secs(20);

/// What a kubeconfig's only cluster and user hold, PEM.
pub struct KubeconfigParts {
    pub server: String,
    pub ca_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

/// Reads the `*-data` fields of a kubeconfig with one cluster and one user.
pub fn kubeconfig_parts(yaml: &str) -> KubeconfigParts {
    let config: Value = yaml_serde::from_str(yaml).unwrap();
    let decode = |value: &Value| {
        String::from_utf8(STANDARD.decode(value.as_str().unwrap()).unwrap()).unwrap()
    };
    let cluster = &config["clusters"][0]["cluster"];
    let user = &config["users"][0]["user"];
    KubeconfigParts {
        server: cluster["server"].as_str().unwrap().to_owned(),
        ca_pem: decode(&cluster["certificate-authority-data"]),
        client_cert_pem: decode(&user["client-certificate-data"]),
        client_key_pem: decode(&user["client-key-data"]),
    }
}

/// `openssl <args>`, which must succeed; its standard output.
pub fn openssl(args: &[&str]) -> String {
    let output = run("openssl", args, LIMIT);
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        output_text(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Checks with `openssl verify -x509_strict -purpose sslclient` that the kubeconfig's client
/// certificate chains to its CA, and answers the certificate's subject, `notAfter` (ISO 8601,
/// e.g. `2026-12-02 17:00:00Z`) and serial.
pub fn verified_client(
    dir: &Path,
    label: &str,
    parts: &KubeconfigParts,
) -> (String, String, String) {
    let ca = write(dir, &format!("{label}-ca.crt"), &parts.ca_pem);
    let cert = write(dir, &format!("{label}.crt"), &parts.client_cert_pem);
    let (ca, cert) = (ca.to_str().unwrap(), cert.to_str().unwrap());
    let verified = openssl(&[
        "verify",
        "-x509_strict",
        "-purpose",
        "sslclient",
        "-CAfile",
        ca,
        cert,
    ]);
    assert!(verified.trim_end().ends_with("OK"), "{verified}");
    let shown = openssl(&[
        "x509", "-noout", "-subject", "-enddate", "-serial", "-nameopt", "RFC2253", "-dateopt",
        "iso_8601", "-in", cert,
    ]);
    let field = |name: &str| {
        shown
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {shown}"))
            .trim()
            .to_owned()
    };
    (field("subject="), field("notAfter="), field("serial="))
}

/// Runs `kubectl get --raw /version` with `kubeconfig` against `openssl s_server` serving
/// `server_cert` on `ip` (as `server_name`) and requiring a client certificate from `ca`;
/// answers kubectl's output.
pub fn kubectl_through_s_server(
    dir: &Path,
    kubeconfig: &Path,
    server_name: &str,
    ip: Ipv4Addr,
    (server_cert, server_key, ca): (&Path, &Path, &Path),
) -> Output {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(
        www.join("version"),
        r#"{"major":"1","minor":"32","gitVersion":"v1.32.0-plinth-test"}"#,
    )
    .unwrap();
    let port = free_port();
    let accept = format!("{ip}:{port}");
    let server = Process::spawn_in(
        &www,
        "apiserver",
        "openssl",
        &[
            "s_server",
            "-quiet",
            "-accept",
            &accept,
            "-WWW",
            "-Verify",
            "1",
            "-verify_return_error",
            "-cert",
            server_cert.to_str().unwrap(),
            "-key",
            server_key.to_str().unwrap(),
            "-CAfile",
            ca.to_str().unwrap(),
        ],
        &dir.join("s_server.log"),
    );
    wait_for_port(IpAddr::V4(ip), port, Duration::from_secs(15));
    let cache: PathBuf = dir.join("kube-cache");
    let output = run(
        "kubectl",
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
            "--server",
            &format!("https://{ip}:{port}"),
            "--tls-server-name",
            server_name,
            "get",
            "--raw",
            "/version",
        ],
        LIMIT,
    );
    drop(server);
    output
}

/// Asserts that kubectl's handshake went through and it read the version.
pub fn assert_kubectl_accepted(output: &Output) {
    assert!(
        output.status.success(),
        "kubectl failed: {}",
        output_text(output)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("v1.32.0-plinth-test"));
}
