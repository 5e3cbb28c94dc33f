//! The `[compute]` section of the service's configuration.

use std::path::PathBuf;

use plinth_domain::model::SecretText;
use plinth_domain::settings::{SettingsError, base_url, millis, positive, secret_value_or_file};
use plinth_http_client::{RetryPolicy, Timeouts};
use reqwest::header::HeaderValue;
use serde::Deserialize;

/// Where the compute service is and how patient to be with it: the `[compute]` section.
///
/// Keys in errors are relative to the section (`token`, `connect_timeout_ms`); the service adds
/// `compute.`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpComputeSettings {
    /// e.g. `https://compute.internal` or `http://127.0.0.1:8081` (a trailing `/` is dropped).
    pub base_url: String,
    /// The bearer service token; this or `token_file`.
    #[serde(default)]
    pub token: Option<SecretText>,
    /// A file holding the bearer service token (trimmed); this or `token`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Opening a connection, milliseconds (2000).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// One attempt of a call, start to end, milliseconds (10000).
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Attempts of a retry-safe call, the first included (3).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The first backoff cap, milliseconds; it doubles per attempt, and a random wait up to it
    /// is made (100).
    #[serde(default = "default_backoff_base_ms")]
    pub backoff_base_ms: u64,
    /// The largest backoff cap, milliseconds (2000).
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
}

fn default_connect_timeout_ms() -> u64 {
    2000
}

fn default_request_timeout_ms() -> u64 {
    10_000
}

fn default_max_attempts() -> u32 {
    3
}

fn default_backoff_base_ms() -> u64 {
    100
}

fn default_backoff_max_ms() -> u64 {
    2000
}

/// Checked settings, in the form the adapter uses.
pub(crate) struct Resolved {
    pub(crate) base_url: String,
    /// `Bearer <token>`, marked sensitive.
    pub(crate) authorization: HeaderValue,
    pub(crate) timeouts: Timeouts,
    pub(crate) retry: RetryPolicy,
}

impl HttpComputeSettings {
    /// `base_url` and an inline `token`, every other key at its default: 2 s to connect, 10 s
    /// per request, 3 attempts, backoff from 100 ms up to 2 s.
    pub fn new(base_url: &str, token: SecretText) -> Self {
        Self {
            base_url: base_url.to_owned(),
            token: Some(token),
            token_file: None,
            connect_timeout_ms: default_connect_timeout_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            max_attempts: default_max_attempts(),
            backoff_base_ms: default_backoff_base_ms(),
            backoff_max_ms: default_backoff_max_ms(),
        }
    }

    /// Whether these settings can work; reads `token_file` when it is the one set.
    ///
    /// # Errors
    /// The first key that cannot work, relative to the section.
    pub fn check(&self) -> Result<(), SettingsError> {
        self.resolve().map(drop)
    }

    pub(crate) fn resolve(&self) -> Result<Resolved, SettingsError> {
        let base_url = base_url("base_url", &self.base_url)?;
        let token = secret_value_or_file("token", self.token.as_ref(), self.token_file.as_deref())?;
        let key = if self.token.as_ref().is_some_and(|t| !t.expose().is_empty()) {
            "token"
        } else {
            "token_file"
        };
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| SettingsError::new(key, "holds characters an HTTP header cannot carry"))?;
        authorization.set_sensitive(true);
        let timeouts = Timeouts {
            connect: millis("connect_timeout_ms", self.connect_timeout_ms)?,
            request: millis("request_timeout_ms", self.request_timeout_ms)?,
        };
        positive("max_attempts", u64::from(self.max_attempts))?;
        let backoff_base = millis("backoff_base_ms", self.backoff_base_ms)?;
        let backoff_max = millis("backoff_max_ms", self.backoff_max_ms)?;
        if backoff_max < backoff_base {
            return Err(SettingsError::new(
                "backoff_max_ms",
                format!(
                    "must be at least backoff_base_ms ({} ms)",
                    self.backoff_base_ms
                ),
            ));
        }
        Ok(Resolved {
            base_url,
            authorization,
            timeouts,
            retry: RetryPolicy {
                max_attempts: self.max_attempts,
                backoff_base,
                backoff_max,
            },
        })
    }
}
