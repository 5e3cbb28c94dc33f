//! The service's configuration: `<dir>/default.toml`, then `<dir>/$PLINTH_ENV.toml`, then
//! environment variables `PLINTH__SECTION__KEY` (e.g. `PLINTH__SERVER__LISTEN=127.0.0.1:9090`).
//! Every key is documented in `config/default.toml`.
//!
//! Each section belongs to the crate that uses it and checks itself; this module only composes
//! them. A bad value stops start-up with the key and the reason.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plinth_diesel_pg::{MasterKeySettings, PgSettings};
use plinth_domain::bootstrap::BundleSettings;
use plinth_domain::credentials::{CredentialsLifetime, CredentialsSection};
use plinth_domain::found_cluster::{
    FoundingSection, FoundingSettings, IdempotencySection, IdempotencySettings, LimitsSection,
};
use plinth_domain::recovery::{RecoverySection, RecoverySettings};
use plinth_domain::settings::SettingsError;
use plinth_http_compute::HttpComputeSettings;
use plinth_http_dns::PowerDnsSettings;
use plinth_rfc2136_dns::Rfc2136Settings;
use plinth_x509_pki::PkiSettings;
use serde::Deserialize;

use super::tls::TlsIdentity;
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
    /// Refused bootstrap fetches allowed per client address and minute.
    pub bootstrap_refusals_per_minute: u32,
    /// How many of those may come at once.
    pub bootstrap_refusal_burst: u32,
    /// `address:port` serving `/metrics` alone (and no longer on `listen`); none: on `listen`.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// PEM certificate chain of `listen`; with `tls_key_file`, `listen` serves HTTPS.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// `address:port` serving the bootstrap route alone, always over HTTPS; none: no such
    /// listener.
    #[serde(default)]
    pub bootstrap_listen: Option<String>,
    /// PEM certificate chain of `bootstrap_listen`.
    #[serde(default)]
    pub bootstrap_tls_cert_file: Option<PathBuf>,
    /// PEM private key of `bootstrap_tls_cert_file`.
    #[serde(default)]
    pub bootstrap_tls_key_file: Option<PathBuf>,
}

/// The listener VMs fetch their bundles from (`server.bootstrap_listen`): HTTPS, the bootstrap
/// route only.
#[derive(Debug, Clone)]
pub struct BootstrapListener {
    /// Where it listens.
    pub listen: SocketAddr,
    /// Its certificate and key.
    pub tls: TlsIdentity,
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
    /// Any server taking RFC 2136 updates signed with TSIG (BIND, Knot, …), configured in
    /// `[dns.rfc2136]`.
    Rfc2136,
}

impl TryFrom<String> for DnsMode {
    type Error = String;

    fn try_from(mode: String) -> Result<Self, String> {
        match mode.as_str() {
            "disabled" => Ok(Self::Disabled),
            "powerdns" => Ok(Self::Powerdns),
            "rfc2136" => Ok(Self::Rfc2136),
            other => Err(format!(
                "must be disabled, powerdns or rfc2136, got {other:?}"
            )),
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
    /// `[dns.rfc2136]`.
    #[serde(default)]
    pub rfc2136: Option<Rfc2136Settings>,
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
    limits: LimitsSection,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Where `/metrics` is served on its own, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// `listen`'s certificate and key when it serves HTTPS; none: plain HTTP.
    pub tls: Option<TlsIdentity>,
    /// The bootstrap route's own HTTPS listener, if any.
    pub bootstrap_listen: Option<BootstrapListener>,
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

    /// The PowerDNS settings when `dns.mode` is powerdns.
    pub fn powerdns(&self) -> Option<&PowerDnsSettings> {
        match self.dns.mode {
            DnsMode::Powerdns => self.dns.powerdns.as_ref(),
            DnsMode::Disabled | DnsMode::Rfc2136 => None,
        }
    }

    /// The RFC 2136 settings when `dns.mode` is rfc2136.
    pub fn rfc2136(&self) -> Option<&Rfc2136Settings> {
        match self.dns.mode {
            DnsMode::Rfc2136 => self.dns.rfc2136.as_ref(),
            DnsMode::Disabled | DnsMode::Powerdns => None,
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

/// The section `dns.mode` selects must be there and work (a key file that cannot be read, or a
/// TSIG algorithm plinth does not have, stops start-up naming the key).
fn check_dns(dns: &DnsSettings) -> Result<(), SettingsError> {
    fn missing(section: &str, mode: &str) -> SettingsError {
        SettingsError::new(
            format!("dns.{section}"),
            format!("dns.mode is {mode}: configure [dns.{section}]"),
        )
    }
    match dns.mode {
        DnsMode::Disabled => Ok(()),
        DnsMode::Powerdns => dns
            .powerdns
            .as_ref()
            .ok_or_else(|| missing("powerdns", "powerdns"))?
            .check()
            .map_err(|e| e.within("dns.powerdns")),
        DnsMode::Rfc2136 => dns
            .rfc2136
            .as_ref()
            .ok_or_else(|| missing("rfc2136", "rfc2136"))?
            .check()
            .map_err(|e| e.within("dns.rfc2136")),
    }
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

/// A path key, `None` when absent or empty (an environment variable can only empty a key).
fn given(file: Option<&PathBuf>) -> Option<&Path> {
    file.map(PathBuf::as_path)
        .filter(|f| !f.as_os_str().is_empty())
}

/// A certificate and key given together, or neither; `None` when neither.
fn tls_pair(
    (cert_key, cert): (&str, Option<&PathBuf>),
    (key_key, key): (&str, Option<&PathBuf>),
) -> Result<Option<TlsIdentity>, SettingsError> {
    match (given(cert), given(key)) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => TlsIdentity::load((cert_key, cert), (key_key, key)).map(Some),
        (Some(_), None) => Err(SettingsError::new(
            key_key,
            format!("{cert_key} is set: set {key_key} too (its private key), or neither"),
        )),
        (None, Some(_)) => Err(SettingsError::new(
            cert_key,
            format!("{key_key} is set: set {cert_key} too (its certificate), or neither"),
        )),
    }
}

/// An optional `address:port` key; empty counts as not given.
fn address(key: &str, value: Option<&str>) -> Result<Option<SocketAddr>, SettingsError> {
    value
        .filter(|a| !a.is_empty())
        .map(|a| {
            a.parse()
                .map_err(|e| SettingsError::new(key, format!("{a:?} is not an address:port ({e})")))
        })
        .transpose()
}

/// `server.bootstrap_listen` and its certificate, which it cannot do without.
fn bootstrap_listener(
    server: &ServerSettings,
    listen: SocketAddr,
) -> Result<Option<BootstrapListener>, SettingsError> {
    const CERT: &str = "server.bootstrap_tls_cert_file";
    const KEY: &str = "server.bootstrap_tls_key_file";
    let (cert, key) = (
        server.bootstrap_tls_cert_file.as_ref(),
        server.bootstrap_tls_key_file.as_ref(),
    );
    let Some(bootstrap) = address(
        "server.bootstrap_listen",
        server.bootstrap_listen.as_deref(),
    )?
    else {
        if let Some((name, _)) = [(CERT, cert), (KEY, key)]
            .into_iter()
            .find(|(_, file)| given(*file).is_some())
        {
            return Err(SettingsError::new(
                "server.bootstrap_listen",
                format!("{name} is set but bootstrap_listen is not: set it, or neither"),
            ));
        }
        return Ok(None);
    };
    if bootstrap == listen {
        return Err(SettingsError::new(
            "server.bootstrap_listen",
            format!("{bootstrap} is server.listen: give the bootstrap listener its own address"),
        ));
    }
    for (name, file) in [(CERT, cert), (KEY, key)] {
        if given(file).is_none() {
            return Err(SettingsError::new(
                name,
                "server.bootstrap_listen always serves HTTPS: set bootstrap_tls_cert_file and \
                 bootstrap_tls_key_file",
            ));
        }
    }
    let tls = tls_pair((CERT, cert), (KEY, key))?
        .ok_or_else(|| SettingsError::new(CERT, "server.bootstrap_listen always serves HTTPS"))?;
    Ok(Some(BootstrapListener {
        listen: bootstrap,
        tls,
    }))
}

fn check(s: Sections) -> Result<Config, SettingsError> {
    let listen = s.server.listen.parse().map_err(|e| {
        SettingsError::new(
            "server.listen",
            format!("{:?} is not an address:port ({e})", s.server.listen),
        )
    })?;
    let metrics_listen = address("server.metrics_listen", s.server.metrics_listen.as_deref())?;
    let tls = tls_pair(
        ("server.tls_cert_file", s.server.tls_cert_file.as_ref()),
        ("server.tls_key_file", s.server.tls_key_file.as_ref()),
    )?;
    let bootstrap_listen = bootstrap_listener(&s.server, listen)?;
    if s.server.workers == 0 {
        return Err(SettingsError::new("server.workers", "must be at least 1"));
    }
    for (key, value) in [
        (
            "server.bootstrap_refusals_per_minute",
            s.server.bootstrap_refusals_per_minute,
        ),
        (
            "server.bootstrap_refusal_burst",
            s.server.bootstrap_refusal_burst,
        ),
    ] {
        if value == 0 {
            return Err(SettingsError::new(key, "must be at least 1"));
        }
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
    let limits = s.limits.limits().map_err(|e| e.within("limits"))?;
    let founding = s
        .founding
        .settings(credentials_lifetime, limits)
        .map_err(|e| e.within("founding"))?;
    check_dns(&s.dns)?;
    let bundles = s.bootstrap.checked().map_err(|e| e.within("bootstrap"))?;
    let recovery = s.recovery.settings().map_err(|e| e.within("recovery"))?;
    let idempotency = s
        .idempotency
        .settings()
        .map_err(|e| e.within("idempotency"))?;
    Ok(Config {
        listen,
        metrics_listen,
        tls,
        bootstrap_listen,
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
