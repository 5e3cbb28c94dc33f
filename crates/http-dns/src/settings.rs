//! The PowerDNS keys of the `[dns]` section of the service's configuration.

use std::path::PathBuf;
use std::time::Duration;

use plinth_domain::model::SecretText;
use plinth_domain::settings::{SettingsError, base_url, millis, positive, secret_value_or_file};
use plinth_http_client::{RetryPolicy, Timeouts};
use reqwest::header::HeaderValue;
use serde::Deserialize;

/// The pause between attempts is a random wait of up to this long.
const BACKOFF: Duration = Duration::from_millis(250);

/// Where PowerDNS is and how patient to be with it: the PowerDNS keys of the `[dns]` section.
/// The zone is not among them: it is the deployment's `founding.dns_zone`, given to
/// [`PowerDns::new`](crate::PowerDns::new).
///
/// Keys in errors are relative to the section (`api_key`, `ttl`); the service adds `dns.`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerDnsSettings {
    /// The API's base, e.g. `http://127.0.0.1:8081` (without `/api/v1`; a trailing `/` is
    /// dropped).
    pub api_url: String,
    /// PowerDNS's server id (`localhost`, a standalone server's).
    #[serde(default = "default_server_id")]
    pub server_id: String,
    /// The `X-API-Key`; this or `api_key_file`. Never logged.
    #[serde(default)]
    pub api_key: Option<SecretText>,
    /// A file holding the `X-API-Key` (trimmed); this or `api_key`.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// TTL of the records plinth writes, seconds (60).
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// Opening a connection, milliseconds (2000).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// One attempt of a call, start to end, milliseconds (5000).
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Attempts of a call, the first included (2).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Create the zone at start when it does not exist (local stacks).
    #[serde(default)]
    pub ensure_zone: bool,
    /// The nameservers of a zone created at start.
    #[serde(default)]
    pub nameservers: Vec<String>,
}

fn default_server_id() -> String {
    "localhost".to_owned()
}

fn default_ttl() -> u32 {
    60
}

fn default_connect_timeout_ms() -> u64 {
    2000
}

fn default_request_timeout_ms() -> u64 {
    5000
}

fn default_max_attempts() -> u32 {
    2
}

/// Checked settings, in the form the adapter uses.
pub(crate) struct Resolved {
    pub(crate) api_url: String,
    /// The `X-API-Key` header's value, marked sensitive.
    pub(crate) api_key: HeaderValue,
    pub(crate) timeouts: Timeouts,
    pub(crate) retry: RetryPolicy,
}

impl PowerDnsSettings {
    /// `api_url` and an inline `api_key`, every other key at its default: server `localhost`,
    /// TTL 60 s, 2 s to connect, 5 s per request, 2 attempts, no zone created at start.
    pub fn new(api_url: &str, api_key: SecretText) -> Self {
        Self {
            api_url: api_url.to_owned(),
            server_id: default_server_id(),
            api_key: Some(api_key),
            api_key_file: None,
            ttl: default_ttl(),
            connect_timeout_ms: default_connect_timeout_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            max_attempts: default_max_attempts(),
            ensure_zone: false,
            nameservers: Vec::new(),
        }
    }

    /// Whether these settings can work; reads `api_key_file` when it is the one set.
    ///
    /// # Errors
    /// The first key that cannot work, relative to the section.
    pub fn check(&self) -> Result<(), SettingsError> {
        self.resolve().map(drop)
    }

    pub(crate) fn resolve(&self) -> Result<Resolved, SettingsError> {
        let api_url = base_url("api_url", &self.api_url)?;
        if self.server_id.is_empty()
            || !self
                .server_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(SettingsError::new(
                "server_id",
                format!("{:?} is not a PowerDNS server id", self.server_id),
            ));
        }
        let key = secret_value_or_file(
            "api_key",
            self.api_key.as_ref(),
            self.api_key_file.as_deref(),
        )?;
        let mut api_key = HeaderValue::from_str(key.expose()).map_err(|_| {
            let which = if self
                .api_key
                .as_ref()
                .is_some_and(|k| !k.expose().is_empty())
            {
                "api_key"
            } else {
                "api_key_file"
            };
            SettingsError::new(which, "holds characters an HTTP header cannot carry")
        })?;
        api_key.set_sensitive(true);
        positive("ttl", u64::from(self.ttl))?;
        let timeouts = Timeouts {
            connect: millis("connect_timeout_ms", self.connect_timeout_ms)?,
            request: millis("request_timeout_ms", self.request_timeout_ms)?,
        };
        positive("max_attempts", u64::from(self.max_attempts))?;
        if let Some(bad) = self.nameservers.iter().find(|ns| !is_domain_name(ns)) {
            return Err(SettingsError::new(
                "nameservers",
                format!("{bad:?} is not a domain name"),
            ));
        }
        Ok(Resolved {
            api_url,
            api_key,
            timeouts,
            retry: RetryPolicy {
                max_attempts: self.max_attempts,
                backoff_base: BACKOFF,
                backoff_max: BACKOFF,
            },
        })
    }
}

/// A domain name of letters, digits and inner hyphens, with or without a trailing dot.
pub(crate) fn is_domain_name(name: &str) -> bool {
    let bare = name.strip_suffix('.').unwrap_or(name);
    !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}
