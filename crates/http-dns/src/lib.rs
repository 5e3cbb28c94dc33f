//! plinth's `Dns` adapter: A and AAAA record sets in one zone of a PowerDNS Authoritative
//! server, through its HTTP API (`/api/v1/servers/{server}/zones/{zone}`).
//!
//! Upserts are `PATCH` with `changetype: REPLACE` (PowerDNS answers 204), so repeating one is
//! harmless: calls are retried once on transport failures and 5xx. Names are made canonical
//! (lowercase, trailing dot) and must lie in the configured zone. PowerDNS answers errors as
//! JSON `{"error": …}` or plain text; both map to the port's `DnsError` with its message.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use async_trait::async_trait;
use plinth_domain::model::SecretText;
use plinth_domain::ports::dns::{AddressRecords, Dns, DnsError};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};

/// Where PowerDNS is, which zone plinth owns there, and how patient to be.
#[derive(Debug, Clone)]
pub struct PowerDnsSettings {
    /// The API's base, e.g. `http://127.0.0.1:8081` (without `/api/v1`).
    pub api_url: String,
    /// PowerDNS's server id; `localhost` on a standalone server.
    pub server_id: String,
    /// The `X-API-Key`; never logged.
    pub api_key: SecretText,
    /// The zone, e.g. `k8s.example.com` (a trailing dot is added).
    pub zone: String,
    /// TTL of the records plinth writes, in seconds.
    pub ttl: u32,
    /// Opening a connection.
    pub connect_timeout: Duration,
    /// One request, start to end.
    pub request_timeout: Duration,
    /// Attempts of a call, the first included.
    pub max_attempts: u32,
}

impl PowerDnsSettings {
    /// Defaults: server `localhost`, TTL 60 s, 2 s to connect, 5 s per request, 2 attempts.
    pub fn new(api_url: &str, api_key: SecretText, zone: &str) -> Self {
        Self {
            api_url: api_url.trim_end_matches('/').to_owned(),
            server_id: "localhost".to_owned(),
            api_key,
            zone: zone.to_owned(),
            ttl: 60,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            max_attempts: 2,
        }
    }
}

/// Why the adapter could not be built; names the setting.
#[derive(Debug, thiserror::Error)]
#[error("PowerDNS settings: {0}")]
pub struct PowerDnsSetupError(String);

/// The `Dns` port on PowerDNS.
#[derive(Debug, Clone)]
pub struct PowerDns {
    client: reqwest::Client,
    settings: PowerDnsSettings,
    /// The zone in canonical form, `k8s.example.com.`.
    zone: String,
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
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// A finished HTTP exchange.
struct Answer {
    status: StatusCode,
    body: String,
}

impl Answer {
    /// PowerDNS's own words: `{"error": …}`, or its plain-text body.
    fn message(&self) -> String {
        match serde_json::from_str::<ErrorBody>(&self.body) {
            Ok(body) => body.error,
            Err(_) if self.body.trim().is_empty() => self.status.to_string(),
            Err(_) => self.body.trim().chars().take(300).collect(),
        }
    }
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

fn is_valid_zone(zone: &str) -> bool {
    let bare = zone.trim_end_matches('.');
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

impl PowerDns {
    /// Checks the settings and builds the client (rustls).
    pub fn new(settings: PowerDnsSettings) -> Result<Self, PowerDnsSetupError> {
        if !(settings.api_url.starts_with("http://") || settings.api_url.starts_with("https://")) {
            return Err(PowerDnsSetupError(format!(
                "api_url {:?} must start with http:// or https://",
                settings.api_url
            )));
        }
        if !is_valid_zone(&settings.zone) {
            return Err(PowerDnsSetupError(format!(
                "zone {:?} is not a domain name",
                settings.zone
            )));
        }
        if settings.server_id.is_empty()
            || !settings
                .server_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(PowerDnsSetupError(format!(
                "server_id {:?} is not a PowerDNS server id",
                settings.server_id
            )));
        }
        if settings.api_key.expose().is_empty() {
            return Err(PowerDnsSetupError("api_key is empty".into()));
        }
        if settings.ttl == 0 {
            return Err(PowerDnsSetupError("ttl must be at least 1 second".into()));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .user_agent(concat!("plinth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| PowerDnsSetupError(e.to_string()))?;
        Ok(Self {
            zone: canonical(&settings.zone),
            client,
            settings,
        })
    }

    /// The zone, canonical.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    fn zones_url(&self) -> String {
        format!(
            "{}/api/v1/servers/{}/zones",
            self.settings.api_url, self.settings.server_id
        )
    }

    /// Creates the zone when it does not exist yet (for the local stack). Returns whether it
    /// created it; a zone that exists, or appears meanwhile, is fine.
    pub async fn ensure_zone(&self, nameservers: &[&str]) -> Result<bool, DnsError> {
        let zone_url = format!("{}/{}", self.zones_url(), self.zone);
        let answer = self
            .send("reading the zone", Method::GET, &zone_url, None::<&()>)
            .await?;
        match answer.status {
            StatusCode::OK => return Ok(false),
            StatusCode::NOT_FOUND | StatusCode::UNPROCESSABLE_ENTITY => {}
            _ => return Err(self.failure("reading the zone", &answer)),
        }
        let body = NewZone {
            name: &self.zone,
            kind: "Native",
            nameservers: nameservers.iter().map(|ns| canonical(ns)).collect(),
        };
        let answer = self
            .send(
                "creating the zone",
                Method::POST,
                &self.zones_url(),
                Some(&body),
            )
            .await?;
        match answer.status {
            StatusCode::CREATED => Ok(true),
            StatusCode::CONFLICT => Ok(false),
            _ => Err(self.failure("creating the zone", &answer)),
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
        let url = format!("{}/{}", self.zones_url(), self.zone);
        let answer = self.send(what, Method::PATCH, &url, Some(patch)).await?;
        match answer.status {
            StatusCode::NO_CONTENT | StatusCode::OK => Ok(()),
            _ => Err(self.failure(what, &answer)),
        }
    }

    async fn send<B: Serialize>(
        &self,
        what: &str,
        method: Method,
        url: &str,
        body: Option<&B>,
    ) -> Result<Answer, DnsError> {
        let attempts = self.settings.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            let mut request = self
                .client
                .request(method.clone(), url)
                .header("X-API-Key", self.settings.api_key.expose());
            if let Some(body) = body {
                request = request.json(body);
            }
            let outcome = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    response.text().await.map(|body| Answer { status, body })
                }
                Err(e) => Err(e),
            };
            let retry = attempt < attempts
                && outcome
                    .as_ref()
                    .map_or(true, |a| a.status.is_server_error());
            if !retry {
                return outcome.map_err(|e| self.transport(what, &e));
            }
            tracing::warn!(%method, attempt, "PowerDNS call failed; retrying");
            tokio::time::sleep(Duration::from_millis(rand::random_range(50..=250))).await;
            attempt += 1;
        }
    }

    fn transport(&self, what: &str, e: &reqwest::Error) -> DnsError {
        if e.is_timeout() {
            DnsError::Timeout(format!(
                "{what}: PowerDNS did not answer within {:?}",
                self.settings.request_timeout
            ))
        } else if e.is_connect() || e.is_request() || e.is_body() {
            DnsError::Unavailable(format!("{what}: {e}"))
        } else {
            DnsError::Unexpected(format!("{what}: {e}"))
        }
    }

    fn failure(&self, what: &str, answer: &Answer) -> DnsError {
        let message = answer.message();
        match answer.status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => DnsError::Unauthorized,
            StatusCode::NOT_FOUND => DnsError::ZoneNotFound(format!("{} ({message})", self.zone)),
            status if status.is_server_error() => {
                DnsError::Unavailable(format!("{what}: {message} ({status})"))
            }
            status if status.is_client_error() => DnsError::Rejected(format!("{what}: {message}")),
            status => DnsError::Unexpected(format!("{what}: {message} ({status})")),
        }
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
            ttl: (!addresses.is_empty()).then_some(self.settings.ttl),
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
mod tests {
    use super::*;

    fn dns(zone: &str) -> Result<PowerDns, PowerDnsSetupError> {
        PowerDns::new(PowerDnsSettings::new(
            "http://127.0.0.1:1",
            SecretText::new("k"),
            zone,
        ))
    }

    #[test]
    fn names_are_made_canonical() {
        assert_eq!(canonical("API.K8s.Example"), "api.k8s.example.");
        assert_eq!(canonical("a.b."), "a.b.");
    }

    #[test]
    fn only_names_of_the_zone_are_accepted() {
        let dns = dns("k8s.example.test").unwrap();
        assert_eq!(dns.zone(), "k8s.example.test.");
        assert_eq!(
            dns.name_in_zone("api.cluster-1.K8S.example.test").unwrap(),
            "api.cluster-1.k8s.example.test."
        );
        for outside in [
            "example.test",
            "evilk8s.example.test",
            "api.other.test",
            "a..k8s.example.test",
        ] {
            assert!(dns.name_in_zone(outside).is_err(), "{outside}");
        }
    }

    #[test]
    fn bad_settings_name_the_setting() {
        assert!(dns("not a zone").unwrap_err().to_string().contains("zone"));
        let err = PowerDns::new(PowerDnsSettings::new(
            "ftp://x",
            SecretText::new("k"),
            "z.test",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("api_url"), "{err}");
        let err = PowerDns::new(PowerDnsSettings::new(
            "http://x",
            SecretText::new(""),
            "z.test",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("api_key"), "{err}");
    }

    #[test]
    fn the_patch_replaces_each_family_and_deletes_an_empty_one() {
        let name = "api.z.test.";
        let patch = Patch {
            rrsets: vec![
                RrSet {
                    name,
                    kind: "A",
                    changetype: "REPLACE",
                    ttl: Some(60),
                    records: records(&[Ipv4Addr::new(192, 0, 2, 1)]),
                },
                RrSet {
                    name,
                    kind: "AAAA",
                    changetype: "DELETE",
                    ttl: None,
                    records: vec![],
                },
            ],
        };
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            serde_json::json!({"rrsets": [
                {"name": "api.z.test.", "type": "A", "changetype": "REPLACE", "ttl": 60,
                 "records": [{"content": "192.0.2.1", "disabled": false}]},
                {"name": "api.z.test.", "type": "AAAA", "changetype": "DELETE"}
            ]})
        );
    }
}
