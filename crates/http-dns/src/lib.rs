//! plinth's `Dns` adapter: A and AAAA record sets in one zone of a PowerDNS Authoritative
//! server, through its HTTP API (`/api/v1/servers/{server}/zones/{zone}`), with reqwest (through
//! `plinth-http-client`).
//!
//! Upserts are `PATCH` with `changetype: REPLACE` (PowerDNS answers 204), so repeating one is
//! harmless: every call is retried, up to `max_attempts` (2) in all, on transport failures,
//! timeouts, 429 and 5xx, after a random pause of up to 250 ms. Names are made canonical
//! (lowercase, trailing dot) and must lie in the zone. PowerDNS answers errors as JSON
//! `{"error": …}` or plain text; both map to the port's `DnsError` with its words (401/403 →
//! `Unauthorized`, 404 → `ZoneNotFound`, other 4xx → `Rejected`, 5xx → `Unavailable`), and
//! transport failures keep reqwest's error as the cause. The `X-API-Key` is never logged.
//!
//! Its configuration is the PowerDNS part of the `[dns]` section, [`PowerDnsSettings`]; the
//! zone is the deployment's, given to [`PowerDns::new`].

mod settings;

use std::net::{Ipv4Addr, Ipv6Addr};

use async_trait::async_trait;
use plinth_domain::ports::context;
use plinth_domain::ports::dns::{AddressRecords, Dns, DnsError};
use plinth_domain::settings::SettingsError;
use plinth_http_client::{Answer, HttpClient, RetryPolicy, TransportError};
use reqwest::header::HeaderValue;
use reqwest::{Method, StatusCode};
use serde::Serialize;

pub use settings::PowerDnsSettings;

/// Why the adapter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PowerDnsSetupError {
    /// A setting cannot work; its key is relative to the `[dns]` section.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The zone is not a domain name.
    #[error("DNS zone {0:?} is not a domain name")]
    InvalidZone(String),
    /// reqwest could not build the client.
    #[error("building the PowerDNS HTTP client")]
    Client(#[source] reqwest::Error),
}

/// The `Dns` port on PowerDNS.
#[derive(Debug, Clone)]
pub struct PowerDns {
    http: HttpClient,
    /// The `X-API-Key` header's value, marked sensitive.
    api_key: HeaderValue,
    retry: RetryPolicy,
    /// `/api/v1/servers/{server_id}/zones`.
    zones_path: String,
    /// The zone in canonical form, `k8s.example.com.`.
    zone: String,
    ttl: u32,
    ensure_zone: bool,
    nameservers: Vec<String>,
}

#[derive(Serialize)]
struct Patch<'a> {
    rrsets: Vec<RrSet<'a>>,
}

#[derive(Serialize)]
struct RrSet<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    changetype: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    records: Vec<Record>,
}

#[derive(Serialize)]
struct Record {
    content: String,
    disabled: bool,
}

#[derive(Serialize)]
struct NewZone<'a> {
    name: &'a str,
    kind: &'static str,
    nameservers: Vec<String>,
    /// Off: plinth publishes plain A/AAAA records, no DNSSEC, so nothing needs rectifying, and
    /// PowerDNS would otherwise rectify the whole zone on every change (its cost grows with the
    /// number of clusters).
    api_rectify: bool,
}

/// `name` lowercased with a trailing dot.
pub fn canonical(name: &str) -> String {
    let name = name.trim().to_ascii_lowercase();
    if name.ends_with('.') {
        name
    } else {
        format!("{name}.")
    }
}

impl PowerDns {
    /// Checks the settings (reading `api_key_file` when it is the one set) and `zone` (e.g.
    /// `k8s.example.com`, a trailing dot is added), and builds the client (rustls).
    ///
    /// # Errors
    /// A setting that cannot work, a zone that is not a domain name, or a client reqwest cannot
    /// build.
    pub fn new(settings: PowerDnsSettings, zone: &str) -> Result<Self, PowerDnsSetupError> {
        let resolved = settings.resolve()?;
        if !settings::is_domain_name(zone) {
            return Err(PowerDnsSetupError::InvalidZone(zone.to_owned()));
        }
        let http = HttpClient::new("PowerDNS", &resolved.api_url, resolved.timeouts)
            .map_err(PowerDnsSetupError::Client)?;
        Ok(Self {
            http,
            api_key: resolved.api_key,
            retry: resolved.retry,
            zones_path: format!("/api/v1/servers/{}/zones", settings.server_id),
            zone: canonical(zone),
            ttl: settings.ttl,
            ensure_zone: settings.ensure_zone,
            nameservers: settings.nameservers,
        })
    }

    /// The zone, canonical.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// Whether the zone is to be created at start when missing (`ensure_zone`).
    pub fn ensure_zone_at_start(&self) -> bool {
        self.ensure_zone
    }

    fn zone_path(&self) -> String {
        format!("{}/{}", self.zones_path, self.zone)
    }

    /// Creates the zone, with the configured `nameservers`, when it does not exist yet (for the
    /// local stack). Returns whether it created it; a zone that exists, or appears meanwhile, is
    /// fine.
    ///
    /// # Errors
    /// As for an upsert.
    pub async fn ensure_zone(&self) -> Result<bool, DnsError> {
        const READING: &str = "reading the zone";
        const CREATING: &str = "creating the zone";
        let answer = self
            .send(READING, Method::GET, &self.zone_path(), None::<&()>)
            .await?;
        match answer.status {
            StatusCode::OK => return Ok(false),
            StatusCode::NOT_FOUND | StatusCode::UNPROCESSABLE_ENTITY => {}
            _ => return Err(self.failure(READING, &answer)),
        }
        let body = NewZone {
            name: &self.zone,
            kind: "Native",
            nameservers: self.nameservers.iter().map(|ns| canonical(ns)).collect(),
            api_rectify: false,
        };
        let answer = self
            .send(CREATING, Method::POST, &self.zones_path, Some(&body))
            .await?;
        match answer.status {
            StatusCode::CREATED => Ok(true),
            StatusCode::CONFLICT => Ok(false),
            _ => Err(self.failure(CREATING, &answer)),
        }
    }

    /// A name of the zone, canonical, or why not.
    fn name_in_zone(&self, name: &str) -> Result<String, DnsError> {
        let name = canonical(name);
        let inside = name == self.zone || name.ends_with(&format!(".{}", self.zone));
        if !inside || name.contains("..") {
            return Err(DnsError::Rejected(format!(
                "{name} is not a name in zone {}",
                self.zone
            )));
        }
        Ok(name)
    }

    async fn patch(&self, what: &str, patch: &Patch<'_>) -> Result<(), DnsError> {
        let answer = self
            .send(what, Method::PATCH, &self.zone_path(), Some(patch))
            .await?;
        match answer.status {
            StatusCode::NO_CONTENT | StatusCode::OK => Ok(()),
            _ => Err(self.failure(what, &answer)),
        }
    }

    /// Sends one call, retried as the settings say, and returns the last answer.
    async fn send<B: Serialize + Sync>(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Answer, DnsError> {
        self.http
            .send(self.retry, method, path, |request| {
                let request = request.header("X-API-Key", self.api_key.clone());
                match body {
                    Some(body) => request.json(body),
                    None => request,
                }
            })
            .await
            .map_err(|e| transport(what, e))
    }

    /// An unsuccessful answer; the texts of `ZoneNotFound` and `Rejected` carry PowerDNS's own
    /// words.
    fn failure(&self, what: &str, answer: &Answer) -> DnsError {
        let message = answer.message();
        match answer.status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => DnsError::Unauthorized,
            StatusCode::NOT_FOUND => DnsError::ZoneNotFound(format!("{} ({message})", self.zone)),
            status if status.is_server_error() => {
                DnsError::Unavailable(context(what, format!("{message} ({status})")))
            }
            status if status.is_client_error() => DnsError::Rejected(format!("{what}: {message}")),
            status => DnsError::Unexpected(context(what, format!("{message} ({status})"))),
        }
    }
}

/// A call that got no usable answer, with reqwest's error as the cause.
fn transport(what: &str, e: TransportError) -> DnsError {
    match e {
        TransportError::Timeout { .. } => DnsError::Timeout(context(what, e)),
        TransportError::Unavailable(_) => DnsError::Unavailable(context(what, e)),
        _ => DnsError::Unexpected(context(what, e)),
    }
}

fn records<T: ToString>(addresses: &[T]) -> Vec<Record> {
    addresses
        .iter()
        .map(|ip| Record {
            content: ip.to_string(),
            disabled: false,
        })
        .collect()
}

#[async_trait]
impl Dns for PowerDns {
    async fn upsert_address_records(&self, set: &AddressRecords) -> Result<(), DnsError> {
        let name = self.name_in_zone(&set.name)?;
        if set.ipv4.is_empty() && set.ipv6.is_empty() {
            return Err(DnsError::Rejected(format!("{name}: no address to publish")));
        }
        // Each family is replaced; a family without addresses is deleted, so stale records of
        // an earlier upsert do not linger.
        let rrset = |kind, addresses: Vec<Record>| RrSet {
            name: &name,
            kind,
            changetype: if addresses.is_empty() {
                "DELETE"
            } else {
                "REPLACE"
            },
            ttl: (!addresses.is_empty()).then_some(self.ttl),
            records: addresses,
        };
        let patch = Patch {
            rrsets: vec![
                rrset("A", records::<Ipv4Addr>(&set.ipv4)),
                rrset("AAAA", records::<Ipv6Addr>(&set.ipv6)),
            ],
        };
        self.patch("publishing records", &patch).await
    }

    async fn delete_address_records(&self, name: &str) -> Result<(), DnsError> {
        let name = self.name_in_zone(name)?;
        let delete = |kind| RrSet {
            name: &name,
            kind,
            changetype: "DELETE",
            ttl: None,
            records: Vec::new(),
        };
        let patch = Patch {
            rrsets: vec![delete("A"), delete("AAAA")],
        };
        self.patch("deleting records", &patch).await
    }
}

#[cfg(test)]
mod tests;
