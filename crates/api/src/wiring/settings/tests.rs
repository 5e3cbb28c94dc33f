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
            "disabled or powerdns",
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
fn a_master_key_of_the_wrong_length_stops_start_up() {
    let dir = dir_with(
        "[database]\nurl = \"postgres://x\"\n[compute]\ntoken = \"t\"\n[master_keys]\nprimary = \"k1\"\n[master_keys.keys]\nk1 = \"AQEB\"\n",
    );
    let err = load(&dir, Some("test")).unwrap_err();
    let _ = std::fs::remove_dir_all(dir);
    assert_eq!(err.key, "master_keys.keys");
    assert!(err.reason.contains("AES-256 needs exactly 32"), "{err}");
}
