//! The RFC 2136 keys of the `[dns]` section of the service's configuration.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hickory_proto::rr::Name;
use hickory_proto::rr::TSigner;
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use plinth_domain::settings::{SettingsError, millis, positive};
use serde::Deserialize;
use zeroize::Zeroizing;

/// The shortest TSIG secret accepted, in bytes: shorter HMAC keys are guessable.
const MIN_SECRET_LEN: usize = 16;

/// How updates travel to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// One TCP connection per update (the default: no size limit, no spoofed answers).
    Tcp,
    /// One UDP datagram each way.
    Udp,
}

/// Where the authoritative server is, the TSIG key it knows plinth by, and how patient to be
/// with it: the RFC 2136 keys of the `[dns]` section. The zone is not among them: it is the
/// deployment's `founding.dns_zone`, given to [`Rfc2136Dns::new`](crate::Rfc2136Dns::new).
///
/// Keys in errors are relative to the section (`key_secret_file`); the service adds `dns.`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rfc2136Settings {
    /// The primary server's address and port, e.g. `192.0.2.53:53` (an IP address, not a name:
    /// plinth must not depend on DNS to reach DNS).
    pub server: String,
    /// `tcp` (default) or `udp`.
    #[serde(default = "default_transport")]
    pub transport: Transport,
    /// The TSIG key's name, as the server knows it (e.g. `plinth-key`).
    pub key_name: String,
    /// `hmac-sha256` (default), `hmac-sha384` or `hmac-sha512`.
    #[serde(default = "default_key_algorithm")]
    pub key_algorithm: String,
    /// A file holding the key's secret in base64 (the `secret` of `tsig-keygen`'s output).
    /// Never logged.
    pub key_secret_file: PathBuf,
    /// TTL of the records plinth writes, seconds (60).
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// Opening a TCP connection, milliseconds (2000).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// One attempt of an update, sending to answer, milliseconds (5000).
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Attempts of an update, the first included (2). Repeating one is harmless: each replaces
    /// whole record sets.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// How far the server's clock may be from plinth's, seconds (300, RFC 8945's advice).
    #[serde(default = "default_fudge_secs")]
    pub fudge_secs: u16,
}

fn default_transport() -> Transport {
    Transport::Tcp
}

fn default_key_algorithm() -> String {
    "hmac-sha256".to_owned()
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

fn default_fudge_secs() -> u16 {
    300
}

/// Checked settings, in the form the adapter uses.
pub(crate) struct Resolved {
    pub(crate) server: SocketAddr,
    pub(crate) signer: TSigner,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolved")
            .field("server", &self.server)
            .field("key_name", &self.signer.signer_name().to_string())
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl Rfc2136Settings {
    /// `server`, `key_name` and `key_secret_file`, every other key at its default: TCP,
    /// hmac-sha256, TTL 60 s, 2 s to connect, 5 s per attempt, 2 attempts, 300 s fudge.
    pub fn new(server: &str, key_name: &str, key_secret_file: impl Into<PathBuf>) -> Self {
        Self {
            server: server.to_owned(),
            transport: default_transport(),
            key_name: key_name.to_owned(),
            key_algorithm: default_key_algorithm(),
            key_secret_file: key_secret_file.into(),
            ttl: default_ttl(),
            connect_timeout_ms: default_connect_timeout_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            max_attempts: default_max_attempts(),
            fudge_secs: default_fudge_secs(),
        }
    }

    /// Whether these settings can work; reads `key_secret_file`.
    ///
    /// # Errors
    /// The first key that cannot work, relative to the section.
    pub fn check(&self) -> Result<(), SettingsError> {
        self.resolve().map(drop)
    }

    pub(crate) fn resolve(&self) -> Result<Resolved, SettingsError> {
        let server: SocketAddr = self.server.trim().parse().map_err(|_| {
            SettingsError::new(
                "server",
                format!(
                    "{:?} is not an IP address and port, e.g. 192.0.2.53:53",
                    self.server
                ),
            )
        })?;
        let key_name = Name::from_ascii(self.key_name.trim())
            .ok()
            .filter(|name| !self.key_name.trim().is_empty() && !name.is_root())
            .ok_or_else(|| {
                SettingsError::new(
                    "key_name",
                    format!("{:?} is not a TSIG key name", self.key_name),
                )
            })?;
        let algorithm = match self.key_algorithm.trim().to_ascii_lowercase().as_str() {
            "hmac-sha256" => TsigAlgorithm::HmacSha256,
            "hmac-sha384" => TsigAlgorithm::HmacSha384,
            "hmac-sha512" => TsigAlgorithm::HmacSha512,
            other => {
                return Err(SettingsError::new(
                    "key_algorithm",
                    format!("must be hmac-sha256, hmac-sha384 or hmac-sha512, got {other:?}"),
                ));
            }
        };
        let secret = self.read_secret()?;
        let signer = TSigner::new(secret.to_vec(), algorithm, key_name, self.fudge_secs)
            .map_err(|e| SettingsError::new("key_algorithm", e))?;
        positive("ttl", u64::from(self.ttl))?;
        positive("max_attempts", u64::from(self.max_attempts))?;
        positive("fudge_secs", u64::from(self.fudge_secs))?;
        Ok(Resolved {
            server,
            signer,
            connect_timeout: millis("connect_timeout_ms", self.connect_timeout_ms)?,
            request_timeout: millis("request_timeout_ms", self.request_timeout_ms)?,
        })
    }

    /// The key's secret, decoded; the file's text and the bytes are wiped when dropped.
    fn read_secret(&self) -> Result<Zeroizing<Vec<u8>>, SettingsError> {
        const KEY: &str = "key_secret_file";
        let path = &self.key_secret_file;
        if path.as_os_str().is_empty() {
            return Err(SettingsError::new(KEY, "is required"));
        }
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| SettingsError::new(KEY, format!("{}: {e}", path.display())))?,
        );
        let secret = Zeroizing::new(STANDARD.decode(text.trim()).map_err(|_| {
            SettingsError::new(
                KEY,
                format!("{}: does not hold a base64 TSIG secret", path.display()),
            )
        })?);
        if secret.len() < MIN_SECRET_LEN {
            return Err(SettingsError::new(
                KEY,
                format!(
                    "{}: the secret has {} bytes; at least {MIN_SECRET_LEN} are needed",
                    path.display(),
                    secret.len()
                ),
            ));
        }
        Ok(secret)
    }
}
