use std::path::PathBuf;

use super::*;

/// A config dir holding the repository's default.toml and `overlay` as `test.toml`.
fn dir_with(overlay: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "plinth-settings-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/default.toml");
    std::fs::copy(default, dir.join("default.toml")).unwrap();
    std::fs::write(dir.join("test.toml"), overlay).unwrap();
    dir
}

const WORKING: &str = r#"
[database]
url = "postgres://u:p@127.0.0.1:5432/plinth"
[master_keys]
primary = "k1"
[master_keys.keys]
k1 = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
[compute]
token = "compute-token"
"#;

fn load_overlay(extra: &str) -> Result<Config, SettingsError> {
    let dir = dir_with(&format!("{WORKING}{extra}"));
    let result = load(&dir, Some("test"));
    let _ = std::fs::remove_dir_all(dir);
    result
}

#[test]
fn the_documented_defaults_and_a_minimal_overlay_load() {
    let config = load_overlay("").unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    assert!(config.powerdns().is_none());
    assert_eq!(config.founding.dns_zone.as_str(), "k8s.example.com");
    assert_eq!(config.bundles.kubernetes_version, "v1.32.4");
    assert_eq!(config.log.format, LogFormat::Text);
}

#[test]
fn the_configuration_debugs_none_of_its_secrets() {
    let config = load_overlay(
        "[dns]\nmode = \"powerdns\"\n[dns.powerdns]\napi_url = \"http://127.0.0.1:8081\"\n\
         api_key = \"pdns-api-key\"\n",
    )
    .unwrap();
    let debug = format!("{config:?}");
    for secret in [
        "u:p@",
        "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
        "compute-token",
        "pdns-api-key",
    ] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
}

#[test]
fn a_bad_value_names_its_key_and_the_reason() {
    for (overlay, key, reason) in [
        (
            "[founding]\ndns_zone = \"Not A Zone\"\n",
            "founding.dns_zone",
            "lowercase",
        ),
        (
            "[server]\nlisten = \"nowhere\"\n",
            "server.listen",
            "not an address",
        ),
        (
            "[pki]\nkey_algorithm = \"rsa-1024\"\n",
            "pki.key_algorithm",
            "rsa-1024",
        ),
        (
            "[dns]\nmode = \"bind\"\n",
            "dns.mode",
            "disabled, powerdns or rfc2136",
        ),
        // Still inside WORKING's [compute] table, which comes last.
        ("base_url = \"ftp://x\"\n", "compute.base_url", "http"),
        (
            "[founding]\nservice_cidr = \"10.96.0.0/30\"\n",
            "founding.service_cidr",
            "too small",
        ),
        (
            "[founding]\nvm_address_deadline_secs = 0\n",
            "founding.vm_address_deadline_secs",
            "greater than 0",
        ),
        ("[log]\nformat = \"xml\"\n", "log.format", "text or json"),
        (
            "[bootstrap]\netcd_image = \"a b\"\n",
            "bootstrap.etcd_image",
            "image reference",
        ),
        (
            "[dns]\nmode = \"powerdns\"\n[dns.powerdns]\napi_url = \"http://127.0.0.1:1\"\n",
            "dns.powerdns.api_key",
            "set api_key or api_key_file",
        ),
        (
            "[auth]\nleeway_secs = 301\n",
            "auth.leeway_secs",
            "at most 300",
        ),
        ("[server]\nworkers = 0\n", "server.workers", "at least 1"),
        (
            "[pki]\nca_validity_days = 0\n",
            "pki.ca_validity_days",
            "between 1 day and 100 years",
        ),
    ] {
        let err = load_overlay(overlay).unwrap_err();
        assert_eq!(err.key, key, "{overlay}: {err}");
        assert!(err.reason.contains(reason), "{overlay}: {err}");
    }
}

#[test]
fn unknown_keys_and_wrong_types_are_refused() {
    let err = load_overlay("[server]\nlistn = \"127.0.0.1:1\"\n").unwrap_err();
    assert!(err.to_string().contains("listn"), "{err}");
    let err = load_overlay("[server]\nworkers = \"many\"\n").unwrap_err();
    assert_eq!(err.key, "server.workers", "{err}");
}

#[test]
fn powerdns_settings_come_from_their_own_section() {
    let config = load_overlay(
        "[dns]\nmode = \"powerdns\"\n[dns.powerdns]\napi_url = \"http://127.0.0.1:18081\"\napi_key = \"k\"\nttl = 30\n",
    )
    .unwrap();
    let powerdns = config.powerdns().unwrap();
    assert_eq!(powerdns.ttl, 30);
    assert_eq!(powerdns.server_id, "localhost");
}

#[test]
fn rfc2136_settings_come_from_their_own_section_and_a_bad_key_stops_start_up() {
    let secret = std::env::temp_dir().join(format!("plinth-settings-tsig-{}", std::process::id()));
    std::fs::write(&secret, "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMyYg==\n").unwrap();
    let section = |extra: &str| {
        format!(
            "[dns]\nmode = \"rfc2136\"\n[dns.rfc2136]\nserver = \"127.0.0.1:5353\"\nkey_name = \"plinth-key\"\nkey_secret_file = \"{}\"\n{extra}",
            secret.display()
        )
    };
    let config = load_overlay(&section("transport = \"udp\"\n")).unwrap();
    let rfc2136 = config.rfc2136().unwrap();
    assert_eq!(rfc2136.transport, plinth_rfc2136_dns::Transport::Udp);
    assert_eq!(rfc2136.key_algorithm, "hmac-sha256");
    assert!(config.powerdns().is_none());

    let err = load_overlay(&section("key_algorithm = \"hmac-md5\"\n")).unwrap_err();
    assert_eq!(err.key, "dns.rfc2136.key_algorithm", "{err}");
    std::fs::write(&secret, "not base64").unwrap();
    let err = load_overlay(&section("")).unwrap_err();
    assert_eq!(err.key, "dns.rfc2136.key_secret_file", "{err}");
    assert!(
        err.reason.contains("does not hold a base64 TSIG secret"),
        "{err}"
    );
    assert!(
        !err.to_string().contains("not base64"),
        "the file's text is not repeated: {err}"
    );
    std::fs::remove_file(&secret).unwrap();
    let err = load_overlay(&section("")).unwrap_err();
    assert_eq!(err.key, "dns.rfc2136.key_secret_file", "{err}");
    // Chosen by dns.mode: the section alone does not switch RFC 2136 on.
    let config =
        load_overlay(&section("").replace("mode = \"rfc2136\"", "mode = \"disabled\"")).unwrap();
    assert!(config.rfc2136().is_none());
}

#[test]
fn a_master_key_of_the_wrong_length_stops_start_up() {
    let dir = dir_with(
        "[database]\nurl = \"postgres://x\"\n[compute]\ntoken = \"t\"\n[master_keys]\nprimary = \"k1\"\n[master_keys.keys]\nk1 = \"AQEB\"\n",
    );
    let err = load(&dir, Some("test")).unwrap_err();
    let _ = std::fs::remove_dir_all(dir);
    assert_eq!(err.key, "master_keys.keys");
    assert!(err.reason.contains("AES-256 needs exactly 32"), "{err}");
}

/// PEM files in a scratch directory: a CA, a serving certificate for 127.0.0.1 it signed (with
/// its PKCS#8 key and the same key as SEC1), and another CA's key.
struct TlsFiles {
    dir: PathBuf,
    ca_cert: PathBuf,
    ca_key: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    sec1_key: PathBuf,
    other_key: PathBuf,
}

impl TlsFiles {
    fn make() -> Self {
        use p256::pkcs8::DecodePrivateKey as _;
        use plinth_domain::model::{ClusterId, SubjectAltNames};
        use plinth_domain::ports::pki::{Pki as _, ServingCertRequest};
        let pki = plinth_x509_pki::X509Pki::new(plinth_x509_pki::PkiSettings::default()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (ca, other, serving) = runtime.block_on(async {
            let ca = pki
                .create_cluster_ca(ClusterId::new_random())
                .await
                .unwrap()
                .root;
            let other = pki
                .create_cluster_ca(ClusterId::new_random())
                .await
                .unwrap()
                .root;
            let request = ServingCertRequest {
                common_name: "plinth".into(),
                sans: SubjectAltNames {
                    dns_names: vec![],
                    ip_addresses: vec!["127.0.0.1".parse().unwrap()],
                },
                client_auth: false,
            };
            let serving = pki.sign_serving_cert(&ca, &request).await.unwrap();
            (ca, other, serving)
        });
        let sec1 = p256::SecretKey::from_pkcs8_pem(serving.key_pem.expose())
            .unwrap()
            .to_sec1_pem(p256::pkcs8::LineEnding::LF)
            .unwrap();
        let dir = dir_with("");
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        Self {
            ca_cert: write("ca.crt", &ca.cert_pem),
            ca_key: write("ca.key", ca.key_pem.expose()),
            cert: write("tls.crt", &format!("{}{}", serving.cert_pem, ca.cert_pem)),
            key: write("tls.key", serving.key_pem.expose()),
            sec1_key: write("tls-sec1.key", &sec1),
            other_key: write("other.key", other.key_pem.expose()),
            dir,
        }
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn an_http_bootstrap_url_stops_start_up_unless_insecure_bootstrap_is_allowed() {
    let http = "[founding]\nbootstrap_base_url = \"http://10.0.0.1:8080\"\n";
    let err = load_overlay(http).unwrap_err();
    assert_eq!(err.key, "founding.bootstrap_base_url", "{err}");
    assert!(err.reason.contains("plain http"), "{err}");
    assert!(err.reason.contains("allow_insecure_bootstrap"), "{err}");
    let config = load_overlay(&format!("{http}allow_insecure_bootstrap = true\n")).unwrap();
    assert_eq!(
        config.founding.bootstrap_base_url.as_str(),
        "http://10.0.0.1:8080"
    );
    // The documented default is https, with nothing pinned and no TLS listener.
    let config = load_overlay("").unwrap();
    assert!(config.founding.bootstrap_base_url.is_https());
    assert!(config.founding.bootstrap_ca.is_none());
    assert!(config.tls.is_none() && config.bootstrap_listen.is_none());
}

#[test]
fn half_a_tls_pair_stops_start_up_naming_the_missing_key() {
    let files = TlsFiles::make();
    let (cert, key) = (files.cert.display(), files.key.display());
    for (overlay, missing) in [
        (
            format!("[server]\ntls_cert_file = \"{cert}\"\n"),
            "server.tls_key_file",
        ),
        (
            format!("[server]\ntls_key_file = \"{key}\"\n"),
            "server.tls_cert_file",
        ),
        (
            "[server]\nbootstrap_listen = \"127.0.0.1:8443\"\n".to_owned(),
            "server.bootstrap_tls_cert_file",
        ),
        (
            format!(
                "[server]\nbootstrap_listen = \"127.0.0.1:8443\"\nbootstrap_tls_cert_file = \"{cert}\"\n"
            ),
            "server.bootstrap_tls_key_file",
        ),
        (
            format!(
                "[server]\nbootstrap_listen = \"127.0.0.1:8443\"\nbootstrap_tls_key_file = \"{key}\"\n"
            ),
            "server.bootstrap_tls_cert_file",
        ),
        (
            format!(
                "[server]\nbootstrap_tls_cert_file = \"{cert}\"\nbootstrap_tls_key_file = \"{key}\"\n"
            ),
            "server.bootstrap_listen",
        ),
        (
            format!(
                "[server]\nbootstrap_listen = \"127.0.0.1:8080\"\nbootstrap_tls_cert_file = \"{cert}\"\nbootstrap_tls_key_file = \"{key}\"\n"
            ),
            "server.bootstrap_listen",
        ),
    ] {
        let err = load_overlay(&overlay).unwrap_err();
        assert_eq!(err.key, missing, "{overlay}: {err}");
    }
}

#[test]
fn a_file_that_is_not_the_pem_it_should_be_is_refused_naming_its_key() {
    let files = TlsFiles::make();
    let garbage = files.dir.join("garbage.pem");
    std::fs::write(&garbage, "not PEM at all\n").unwrap();
    let missing = files.dir.join("missing.pem");
    let pair = |cert: &Path, key: &Path| {
        format!(
            "[server]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            cert.display(),
            key.display()
        )
    };
    let pinned = |ca: &Path| {
        format!(
            "[founding]\nbootstrap_base_url = \"https://10.0.0.1:8443\"\nbootstrap_ca_file = \"{}\"\n",
            ca.display()
        )
    };
    for (overlay, key, reason) in [
        (
            pair(&garbage, &files.key),
            "server.tls_cert_file",
            "no PEM certificate",
        ),
        (
            pair(&files.key, &files.key),
            "server.tls_cert_file",
            "no PEM certificate",
        ),
        (
            pair(&missing, &files.key),
            "server.tls_cert_file",
            "cannot read",
        ),
        (
            pair(&files.cert, &garbage),
            "server.tls_key_file",
            "no PEM private key",
        ),
        (
            pair(&files.cert, &files.cert),
            "server.tls_key_file",
            "no PEM private key",
        ),
        (
            pair(&files.cert, &files.other_key),
            "server.tls_key_file",
            "cannot serve",
        ),
        (
            format!(
                "[server]\nbootstrap_listen = \"127.0.0.1:8443\"\nbootstrap_tls_cert_file = \"{}\"\nbootstrap_tls_key_file = \"{}\"\n",
                files.cert.display(),
                garbage.display()
            ),
            "server.bootstrap_tls_key_file",
            "no PEM private key",
        ),
        (pinned(&garbage), "founding.bootstrap_ca_file", "not PEM"),
        (
            pinned(&files.ca_key),
            "founding.bootstrap_ca_file",
            "private key",
        ),
        (
            pinned(&missing),
            "founding.bootstrap_ca_file",
            "cannot read",
        ),
        (
            format!(
                "[founding]\nbootstrap_base_url = \"http://10.0.0.1:8080\"\nallow_insecure_bootstrap = true\nbootstrap_ca_file = \"{}\"\n",
                files.ca_cert.display()
            ),
            "founding.bootstrap_ca_file",
            "https://",
        ),
    ] {
        let err = load_overlay(&overlay).unwrap_err();
        assert_eq!(err.key, key, "{overlay}: {err}");
        assert!(err.reason.contains(reason), "{overlay}: {err}");
    }
}

#[test]
fn tls_listeners_and_a_pinned_ca_load_and_debug_no_key() {
    let files = TlsFiles::make();
    for key in [&files.key, &files.sec1_key] {
        let config = load_overlay(&format!(
            "[server]\ntls_cert_file = \"{cert}\"\ntls_key_file = \"{key}\"\n\
             bootstrap_listen = \"127.0.0.1:8443\"\nbootstrap_tls_cert_file = \"{cert}\"\n\
             bootstrap_tls_key_file = \"{key}\"\n\
             [founding]\nbootstrap_base_url = \"https://127.0.0.1:8443\"\n\
             bootstrap_ca_file = \"{ca}\"\n",
            cert = files.cert.display(),
            key = key.display(),
            ca = files.ca_cert.display(),
        ))
        .unwrap();
        assert!(config.tls.is_some());
        let bootstrap = config.bootstrap_listen.as_ref().unwrap();
        assert_eq!(bootstrap.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(
            config.founding.bootstrap_ca.as_ref().unwrap().as_pem(),
            std::fs::read_to_string(&files.ca_cert).unwrap()
        );
        let debug = format!("{config:?}");
        let key_pem = std::fs::read_to_string(key).unwrap();
        let key_body = key_pem.lines().nth(1).unwrap();
        assert!(!debug.contains(key_body), "the key in {debug}");
    }
}
