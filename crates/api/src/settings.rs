//! Configuration: `config/default.toml`, then `config/$PLINTH_ENV.toml`, then environment
//! variables `PLINTH__SECTION__KEY` (e.g. `PLINTH__SERVER__LISTEN=127.0.0.1:9090`). Every key is
//! documented in `config/default.toml`. A bad value stops start-up with the key and the reason.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plinth_diesel_pg::{Envelope, PgSettings};
use plinth_domain::bootstrap::BundleSettings;
use plinth_domain::found_cluster::{BootstrapBaseUrl, FoundingSettings};
use plinth_domain::model::{
    ClusterDefaults, DnsZone, FlavorId, ImageId, InvalidValue, Networking, SecretText, SubnetId,
};
use plinth_http_compute::HttpComputeSettings;
use plinth_http_dns::PowerDnsSettings;
use plinth_x509_pki::{KeyAlgorithm, PkiSettings};
use serde::Deserialize;

use crate::auth::AuthSettings;

/// A configuration key that cannot work, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration key `{key}`: {reason}")]
pub struct ConfigError {
    /// e.g. `founding.dns_zone`.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(key: &str, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError {
        key: key.to_owned(),
        reason: reason.to_string(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    server: RawServer,
    log: RawLog,
    database: RawDatabase,
    master_keys: RawMasterKeys,
    auth: RawAuth,
    compute: RawCompute,
    dns: RawDns,
    pki: RawPki,
    founding: RawFounding,
    bootstrap: RawBootstrap,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBootstrap {
    kubernetes_version: String,
    image_repository: String,
    etcd_image: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    workers: usize,
    shutdown_timeout_secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: String,
    level: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: String,
    max_connections: usize,
    connect_timeout_secs: u64,
    acquire_timeout_secs: u64,
    statement_timeout_secs: u64,
    migrate_on_start: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMasterKeys {
    primary: String,
    #[serde(default)]
    file: String,
    #[serde(default)]
    keys: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    issuer: String,
    audience: String,
    leeway_secs: u64,
    #[serde(default)]
    public_key_files: Vec<String>,
    #[serde(default)]
    jwks_file: String,
    #[serde(default)]
    dev_signing_key_file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompute {
    base_url: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    token_file: String,
    connect_timeout_ms: u64,
    request_timeout_ms: u64,
    max_attempts: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    mode: String,
    #[serde(default)]
    api_url: String,
    #[serde(default)]
    server_id: String,
    #[serde(default)]
    api_key: String,
    #[serde(default)]
    api_key_file: String,
    ttl: u32,
    request_timeout_ms: u64,
    ensure_zone: bool,
    #[serde(default)]
    nameservers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPki {
    key_algorithm: String,
    service_account_key_algorithm: String,
    ca_validity_days: u64,
    leaf_validity_days: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFounding {
    dns_zone: String,
    default_subnet_id: String,
    default_flavor: String,
    default_image: String,
    bootstrap_base_url: String,
    bootstrap_token_ttl_secs: u64,
    vm_address_deadline_secs: u64,
    vm_address_poll_ms: u64,
    pod_cidr: String,
    service_cidr: String,
    cluster_dns_domain: String,
    api_server_port: u16,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per event, with the span context.
    Json,
}

/// PowerDNS, when DNS is on.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Adapter settings.
    pub powerdns: PowerDnsSettings,
    /// Create the zone at start when missing (local stacks).
    pub ensure_zone: bool,
    /// Nameservers of a zone created at start.
    pub nameservers: Vec<String>,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// HTTP worker threads.
    pub workers: usize,
    /// How long in-flight requests may run after SIGTERM.
    pub shutdown_timeout: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax).
    pub log_level: String,
    /// Database.
    pub database: PgSettings,
    /// Apply migrations when serving starts.
    pub migrate_on_start: bool,
    /// Master keys as (id, base64) pairs, and the primary id.
    pub master_keys: (String, Vec<(String, SecretText)>),
    /// Token verification.
    pub auth: AuthSettings,
    /// The development signing key's file, for `plinth dev-token`.
    pub dev_signing_key_file: Option<PathBuf>,
    /// Compute adapter.
    pub compute: HttpComputeSettings,
    /// DNS, or `None` when disabled.
    pub dns: Option<DnsConfig>,
    /// PKI.
    pub pki: PkiSettings,
    /// Founding.
    pub founding: FoundingSettings,
    /// What bootstrap bundles run.
    pub bundles: BundleSettings,
}

impl Config {
    /// The master keys as an envelope.
    pub fn envelope(&self) -> Result<Envelope, ConfigError> {
        let (primary, keys) = &self.master_keys;
        Envelope::new(primary, keys.iter().cloned()).map_err(|e| bad("master_keys", e))
    }
}

/// Loads `<dir>/default.toml`, `<dir>/<environment>.toml` (the binary passes `PLINTH_ENV`) and
/// `PLINTH__*` variables, and checks every value.
pub fn load(dir: &Path, environment: Option<&str>) -> Result<Config, ConfigError> {
    let mut builder = config::Config::builder()
        .add_source(config::File::from(dir.join("default.toml")).required(true));
    if let Some(environment) = environment {
        let file = dir.join(format!("{environment}.toml"));
        if !file.exists() {
            return Err(bad(
                "PLINTH_ENV",
                format!("{} does not exist", file.display()),
            ));
        }
        builder = builder.add_source(config::File::from(file));
    }
    builder = builder.add_source(
        config::Environment::with_prefix("PLINTH")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("auth.public_key_files")
            .with_list_parse_key("dns.nameservers"),
    );
    let raw: Raw = builder
        .build()
        .and_then(config::Config::try_deserialize)
        .map_err(|e| bad("(file or environment)", e))?;
    check(raw)
}

fn secret_from(
    key: &str,
    value: &str,
    file_key: &str,
    file: &str,
) -> Result<SecretText, ConfigError> {
    match (value.is_empty(), file.is_empty()) {
        (false, true) => Ok(SecretText::new(value)),
        (true, false) => std::fs::read_to_string(file)
            .map(|text| SecretText::new(text.trim()))
            .map_err(|e| bad(file_key, format!("cannot read {file}: {e}"))),
        (false, false) => Err(bad(key, format!("set {key} or {file_key}, not both"))),
        (true, true) => Err(bad(key, format!("set {key} or {file_key}"))),
    }
}

fn positive(key: &str, value: u64) -> Result<u64, ConfigError> {
    if value == 0 {
        return Err(bad(key, "must be greater than 0"));
    }
    Ok(value)
}

fn parse<T>(key: &str, result: Result<T, InvalidValue>) -> Result<T, ConfigError> {
    result.map_err(|InvalidValue(reason)| bad(key, reason))
}

fn check(raw: Raw) -> Result<Config, ConfigError> {
    let listen: SocketAddr = raw.server.listen.parse().map_err(|e| {
        bad(
            "server.listen",
            format!("{:?} is not an address:port ({e})", raw.server.listen),
        )
    })?;
    let log_format = match raw.log.format.as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            return Err(bad(
                "log.format",
                format!("must be text or json, got {other:?}"),
            ));
        }
    };

    let db = &raw.database;
    if db.url.is_empty() {
        return Err(bad(
            "database.url",
            "must be set (postgres://user:password@host:port/database)",
        ));
    }
    let database = PgSettings {
        url: SecretText::new(&db.url),
        max_connections: usize::try_from(positive(
            "database.max_connections",
            db.max_connections as u64,
        )?)
        .unwrap_or(16),
        connect_timeout: Duration::from_secs(positive(
            "database.connect_timeout_secs",
            db.connect_timeout_secs,
        )?),
        acquire_timeout: Duration::from_secs(positive(
            "database.acquire_timeout_secs",
            db.acquire_timeout_secs,
        )?),
        statement_timeout: Duration::from_secs(positive(
            "database.statement_timeout_secs",
            db.statement_timeout_secs,
        )?),
    };

    let keys = &raw.master_keys;
    let master_keys = match (keys.file.is_empty(), keys.keys.is_empty()) {
        (false, true) => {
            let text = std::fs::read_to_string(&keys.file).map_err(|e| {
                bad(
                    "master_keys.file",
                    format!("cannot read {}: {e}", keys.file),
                )
            })?;
            let mut parsed = Vec::new();
            for (number, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (id, key) = line.split_once(':').ok_or_else(|| {
                    bad(
                        "master_keys.file",
                        format!("line {} is not `<key-id>:<base64 key>`", number + 1),
                    )
                })?;
                parsed.push((id.trim().to_owned(), SecretText::new(key.trim())));
            }
            (keys.primary.clone(), parsed)
        }
        (true, false) => (
            keys.primary.clone(),
            keys.keys
                .iter()
                .map(|(id, key)| (id.clone(), SecretText::new(key)))
                .collect(),
        ),
        (false, false) => {
            return Err(bad(
                "master_keys",
                "set master_keys.file or master_keys.keys, not both",
            ));
        }
        (true, true) => {
            return Err(bad(
                "master_keys",
                "set master_keys.file or master_keys.keys",
            ));
        }
    };
    Envelope::new(&master_keys.0, master_keys.1.iter().cloned())
        .map_err(|e| bad("master_keys", e))?;

    let a = &raw.auth;
    let auth = AuthSettings {
        issuer: a.issuer.clone(),
        audience: a.audience.clone(),
        leeway_secs: a.leeway_secs.min(300),
        public_key_files: a
            .public_key_files
            .iter()
            .filter(|f| !f.is_empty())
            .map(PathBuf::from)
            .collect(),
        jwks_file: (!a.jwks_file.is_empty()).then(|| PathBuf::from(&a.jwks_file)),
    };
    if auth.issuer.is_empty() {
        return Err(bad("auth.issuer", "must be set"));
    }
    if auth.audience.is_empty() {
        return Err(bad("auth.audience", "must be set"));
    }
    if a.leeway_secs > 300 {
        return Err(bad("auth.leeway_secs", "must be at most 300"));
    }

    let c = &raw.compute;
    let mut compute = HttpComputeSettings::new(
        &c.base_url,
        secret_from(
            "compute.token",
            &c.token,
            "compute.token_file",
            &c.token_file,
        )?,
    );
    if !(c.base_url.starts_with("http://") || c.base_url.starts_with("https://")) {
        return Err(bad(
            "compute.base_url",
            format!("{:?} must start with http:// or https://", c.base_url),
        ));
    }
    compute.connect_timeout = Duration::from_millis(positive(
        "compute.connect_timeout_ms",
        c.connect_timeout_ms,
    )?);
    compute.request_timeout = Duration::from_millis(positive(
        "compute.request_timeout_ms",
        c.request_timeout_ms,
    )?);
    compute.max_attempts =
        u32::try_from(positive("compute.max_attempts", u64::from(c.max_attempts))?).unwrap_or(3);

    let f = &raw.founding;
    let dns_zone = parse("founding.dns_zone", DnsZone::parse(&f.dns_zone))?;
    let d = &raw.dns;
    let dns = match d.mode.as_str() {
        "disabled" => None,
        "powerdns" => {
            let mut powerdns = PowerDnsSettings::new(
                &d.api_url,
                secret_from(
                    "dns.api_key",
                    &d.api_key,
                    "dns.api_key_file",
                    &d.api_key_file,
                )?,
                dns_zone.as_str(),
            );
            if !d.server_id.is_empty() {
                powerdns.server_id = d.server_id.clone();
            }
            powerdns.ttl = d.ttl;
            powerdns.request_timeout =
                Duration::from_millis(positive("dns.request_timeout_ms", d.request_timeout_ms)?);
            plinth_http_dns::PowerDns::new(powerdns.clone()).map_err(|e| bad("dns", e))?;
            Some(DnsConfig {
                powerdns,
                ensure_zone: d.ensure_zone,
                nameservers: d.nameservers.clone(),
            })
        }
        other => {
            return Err(bad(
                "dns.mode",
                format!("must be disabled or powerdns, got {other:?}"),
            ));
        }
    };

    let p = &raw.pki;
    let algorithm = |key: &str, value: &str| value.parse::<KeyAlgorithm>().map_err(|e| bad(key, e));
    let pki = PkiSettings {
        key_algorithm: algorithm("pki.key_algorithm", &p.key_algorithm)?,
        service_account_key_algorithm: algorithm(
            "pki.service_account_key_algorithm",
            &p.service_account_key_algorithm,
        )?,
        ca_validity: Duration::from_secs(p.ca_validity_days.saturating_mul(86_400)),
        leaf_validity: Duration::from_secs(p.leaf_validity_days.saturating_mul(86_400)),
        ..PkiSettings::default()
    };
    pki.validate().map_err(|e| bad("pki", e))?;

    let cidr = |key: &str, value: &str| {
        value
            .parse::<ipnet::Ipv4Net>()
            .map_err(|e| bad(key, format!("{value:?}: {e}")))
    };
    let networking = Networking::new(
        cidr("founding.pod_cidr", &f.pod_cidr)?,
        cidr("founding.service_cidr", &f.service_cidr)?,
        &f.cluster_dns_domain,
        f.api_server_port,
    )
    .map_err(|e| bad("founding", e))?;
    let founding = FoundingSettings {
        defaults: ClusterDefaults {
            subnet_id: parse(
                "founding.default_subnet_id",
                SubnetId::parse(&f.default_subnet_id),
            )?,
            flavor: parse(
                "founding.default_flavor",
                FlavorId::parse(&f.default_flavor),
            )?,
            image: parse("founding.default_image", ImageId::parse(&f.default_image))?,
        },
        dns_zone,
        networking,
        bootstrap_base_url: parse(
            "founding.bootstrap_base_url",
            BootstrapBaseUrl::parse(&f.bootstrap_base_url),
        )?,
        bootstrap_token_ttl: Duration::from_secs(positive(
            "founding.bootstrap_token_ttl_secs",
            f.bootstrap_token_ttl_secs,
        )?),
        vm_address_deadline: Duration::from_secs(positive(
            "founding.vm_address_deadline_secs",
            f.vm_address_deadline_secs,
        )?),
        vm_address_poll_interval: Duration::from_millis(positive(
            "founding.vm_address_poll_ms",
            f.vm_address_poll_ms,
        )?),
    };

    let b = &raw.bootstrap;
    let bundles = BundleSettings::new(&b.kubernetes_version, &b.image_repository, &b.etcd_image)
        .map_err(|InvalidValue(reason)| bad("bootstrap", reason))?;

    Ok(Config {
        bundles,
        listen,
        workers: raw.server.workers.max(1),
        shutdown_timeout: Duration::from_secs(raw.server.shutdown_timeout_secs),
        log_format,
        log_level: raw.log.level,
        database,
        migrate_on_start: db.migrate_on_start,
        master_keys,
        auth,
        dev_signing_key_file: (!a.dev_signing_key_file.is_empty())
            .then(|| PathBuf::from(&a.dev_signing_key_file)),
        compute,
        dns,
        pki,
        founding,
    })
}

#[cfg(test)]
mod tests {
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

    fn load_overlay(extra: &str) -> Result<Config, ConfigError> {
        let dir = dir_with(&format!("{WORKING}{extra}"));
        let result = load(&dir, Some("test"));
        let _ = std::fs::remove_dir_all(dir);
        result
    }

    #[test]
    fn the_documented_defaults_and_a_minimal_overlay_load() {
        let config = load_overlay("").unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert!(config.dns.is_none());
        assert_eq!(config.founding.dns_zone.as_str(), "k8s.example.com");
        assert_eq!(config.bundles.kubernetes_version, "v1.32.4");
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
                "founding",
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
                "bootstrap",
                "image reference",
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
        assert!(err.to_string().contains("workers"), "{err}");
    }

    #[test]
    fn a_master_key_of_the_wrong_length_stops_start_up() {
        let dir = dir_with(
            "[database]\nurl = \"postgres://x\"\n[compute]\ntoken = \"t\"\n[master_keys]\nprimary = \"k1\"\n[master_keys.keys]\nk1 = \"AQEB\"\n",
        );
        let err = load(&dir, Some("test")).unwrap_err();
        let _ = std::fs::remove_dir_all(dir);
        assert_eq!(err.key, "master_keys");
        assert!(err.reason.contains("AES-256 needs exactly 32"), "{err}");
    }
}
