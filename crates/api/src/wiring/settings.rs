//! The service's configuration: `<dir>/default.toml`, then `<dir>/$PLINTH_ENV.toml`, then
//! environment variables `PLINTH__SECTION__KEY` (e.g. `PLINTH__SERVER__LISTEN=127.0.0.1:9090`).
//! Every key is documented in `config/default.toml`.
//!
//! Each section belongs to the crate that uses it and checks itself; this module only composes
//! them. A bad value stops start-up with the key and the reason.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use plinth_diesel_pg::{MasterKeySettings, PgSettings};
use plinth_domain::bootstrap::BundleSettings;
use plinth_domain::credentials::{CredentialsLifetime, CredentialsSection};
use plinth_domain::found_cluster::{
    FoundingSection, FoundingSettings, IdempotencySection, IdempotencySettings,
};
use plinth_domain::recovery::{RecoverySection, RecoverySettings};
use plinth_domain::settings::SettingsError;
use plinth_http_compute::HttpComputeSettings;
use plinth_http_dns::PowerDnsSettings;
use plinth_x509_pki::PkiSettings;
use serde::Deserialize;

use crate::auth::AuthSettings;
use crate::telemetry::LogFormat;

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// `address:port` to listen on.
    pub listen: String,
    /// HTTP worker threads.
    pub workers: usize,
    /// How long in-flight requests may run after SIGTERM, seconds.
    pub shutdown_timeout_secs: u64,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// Text or JSON.
    pub format: LogFormat,
    /// tracing `EnvFilter` syntax.
    pub level: String,
}

/// Which `Dns` adapter publishes control-plane names (`dns.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum DnsMode {
    /// None: foundings report `dns_configured = false` and the records to publish.
    Disabled,
    /// A PowerDNS Authoritative server, configured in `[dns.powerdns]`.
    Powerdns,
}

impl TryFrom<String> for DnsMode {
    type Error = String;

    fn try_from(mode: String) -> Result<Self, String> {
        match mode.as_str() {
            "disabled" => Ok(Self::Disabled),
            "powerdns" => Ok(Self::Powerdns),
            other => Err(format!("must be disabled or powerdns, got {other:?}")),
        }
    }
}

/// `[dns]`: the mode, and the settings of each adapter in its own subsection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSettings {
    /// Which adapter.
    pub mode: DnsMode,
    /// `[dns.powerdns]`.
    #[serde(default)]
    pub powerdns: Option<PowerDnsSettings>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sections {
    server: ServerSettings,
    log: LogSettings,
    database: PgSettings,
    master_keys: MasterKeySettings,
    auth: AuthSettings,
    compute: HttpComputeSettings,
    dns: DnsSettings,
    pki: PkiSettings,
    founding: FoundingSection,
    bootstrap: BundleSettings,
    recovery: RecoverySection,
    idempotency: IdempotencySection,
    credentials: CredentialsSection,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// `[server]` as configured.
    pub server: ServerSettings,
    /// `[log]`.
    pub log: LogSettings,
    /// `[database]`.
    pub database: PgSettings,
    /// `[master_keys]`.
    pub master_keys: MasterKeySettings,
    /// `[auth]`.
    pub auth: AuthSettings,
    /// `[compute]`.
    pub compute: HttpComputeSettings,
    /// `[dns]`.
    pub dns: DnsSettings,
    /// `[pki]`.
    pub pki: PkiSettings,
    /// `[founding]`, checked.
    pub founding: FoundingSettings,
    /// `[bootstrap]`, checked.
    pub bundles: BundleSettings,
    /// `[recovery]`, checked.
    pub recovery: RecoverySettings,
    /// `[idempotency]`, checked.
    pub idempotency: IdempotencySettings,
    /// `[credentials]`: the lifetime of admin credentials whose request names none.
    pub credentials_lifetime: CredentialsLifetime,
}

impl Config {
    /// How long in-flight requests may run after SIGTERM.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.server.shutdown_timeout_secs)
    }

    /// The PowerDNS settings when DNS is on; `None` when it is disabled.
    pub fn powerdns(&self) -> Option<&PowerDnsSettings> {
        match self.dns.mode {
            DnsMode::Disabled => None,
            DnsMode::Powerdns => self.dns.powerdns.as_ref(),
        }
    }
}

/// Loads `<dir>/default.toml`, `<dir>/<environment>.toml` (the binary passes `PLINTH_ENV`) and
/// `PLINTH__*` variables, and checks every section.
///
/// # Errors
/// The first key that cannot work, named in full (`dns.powerdns.ttl`).
pub fn load(dir: &Path, environment: Option<&str>) -> Result<Config, SettingsError> {
    let mut builder = config::Config::builder()
        .add_source(config::File::from(dir.join("default.toml")).required(true));
    if let Some(environment) = environment {
        let file = dir.join(format!("{environment}.toml"));
        if !file.exists() {
            return Err(SettingsError::new(
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
            .with_list_parse_key("dns.powerdns.nameservers"),
    );
    let sections: Sections = builder
        .build()
        .and_then(config::Config::try_deserialize)
        .map_err(keyed)?;
    check(sections)
}

/// The key a configuration error is about, as precisely as the `config` crate knows it.
fn keyed(e: config::ConfigError) -> SettingsError {
    match e {
        config::ConfigError::At {
            error,
            key: Some(key),
            ..
        } => SettingsError::new(key, error),
        config::ConfigError::Type {
            unexpected,
            expected,
            key: Some(key),
            ..
        } => SettingsError::new(
            key,
            format!("invalid type: {unexpected}, expected {expected}"),
        ),
        config::ConfigError::NotFound(key) => SettingsError::new(key, "is missing"),
        other => SettingsError::new("(file or environment)", other),
    }
}

fn check(s: Sections) -> Result<Config, SettingsError> {
    let listen = s.server.listen.parse().map_err(|e| {
        SettingsError::new(
            "server.listen",
            format!("{:?} is not an address:port ({e})", s.server.listen),
        )
    })?;
    if s.server.workers == 0 {
        return Err(SettingsError::new("server.workers", "must be at least 1"));
    }
    s.database.check().map_err(|e| e.within("database"))?;
    s.master_keys
        .envelope()
        .map_err(|e| e.within("master_keys"))?;
    s.auth.check().map_err(|e| e.within("auth"))?;
    s.compute.check().map_err(|e| e.within("compute"))?;
    s.pki.check().map_err(|e| e.within("pki"))?;
    let credentials_lifetime = s
        .credentials
        .default_lifetime()
        .map_err(|e| e.within("credentials"))?;
    let founding = s
        .founding
        .settings(credentials_lifetime)
        .map_err(|e| e.within("founding"))?;
    if s.dns.mode == DnsMode::Powerdns {
        let powerdns = s.dns.powerdns.as_ref().ok_or_else(|| {
            SettingsError::new(
                "dns.powerdns",
                "dns.mode is powerdns: configure [dns.powerdns]",
            )
        })?;
        powerdns.check().map_err(|e| e.within("dns.powerdns"))?;
    }
    let bundles = s.bootstrap.checked().map_err(|e| e.within("bootstrap"))?;
    let recovery = s.recovery.settings().map_err(|e| e.within("recovery"))?;
    let idempotency = s
        .idempotency
        .settings()
        .map_err(|e| e.within("idempotency"))?;
    Ok(Config {
        listen,
        server: s.server,
        log: s.log,
        database: s.database,
        master_keys: s.master_keys,
        auth: s.auth,
        compute: s.compute,
        dns: s.dns,
        pki: s.pki,
        founding,
        bundles,
        recovery,
        idempotency,
        credentials_lifetime,
    })
}

#[cfg(test)]
mod tests;
