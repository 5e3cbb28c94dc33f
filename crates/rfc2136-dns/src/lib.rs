//! plinth's second `Dns` adapter: A and AAAA record sets in one zone of any authoritative server
//! that takes RFC 2136 dynamic updates signed with TSIG (RFC 8945) — BIND, Knot, PowerDNS,
//! Windows DNS and many cloud DNS front-ends. hickory-proto builds, signs, parses and verifies
//! every message; this crate decides what to send and what the answer means.
//!
//! An upsert is one UPDATE message: delete the name's A RRset, add the new A records, the same
//! for AAAA, so the server applies all of it or none of it and no stale address survives. A
//! deletion deletes both RRsets; deleting what is not there is fine (RFC 2136 §3.4.2.3). Both are
//! idempotent, so a call is retried, up to `max_attempts` (2) in all, after a timeout, a
//! transport failure or SERVFAIL, each attempt signed afresh. Answers map to the port's
//! `DnsError`: a TSIG error (BADSIG, BADKEY, BADTIME) or REFUSED → `Unauthorized` (the key is
//! wrong or may not change the zone: a configuration problem), NOTAUTH otherwise →
//! `ZoneNotFound`, SERVFAIL and refused connections → `Unavailable`, no answer in time →
//! `Timeout`, any other RCODE → `Rejected`. A NOERROR answer counts only when its TSIG signature
//! verifies. Updates go over TCP by default (UDP allowed), with bounded connect and answer
//! times. The secret is never logged.
//!
//! Its configuration is the RFC 2136 part of the `[dns]` section, [`Rfc2136Settings`]; the zone
//! is the deployment's, given to [`Rfc2136Dns::new`].

mod exchange;
mod settings;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::TSigner;
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use plinth_domain::ports::context;
use plinth_domain::ports::dns::{AddressRecords, Dns, DnsError};
use plinth_domain::settings::SettingsError;

use exchange::{Carrier, ExchangeError};
pub use settings::{Rfc2136Settings, Transport};

/// The pause between attempts is a random wait of up to this many milliseconds.
const BACKOFF_MAX_MS: u64 = 250;

/// Why the adapter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Rfc2136SetupError {
    /// A setting cannot work; its key is relative to the `[dns]` section's RFC 2136 part.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The zone is not a domain name.
    #[error("DNS zone {0:?} is not a domain name")]
    InvalidZone(String),
}

/// The `Dns` port over RFC 2136 dynamic updates with TSIG.
#[derive(Clone)]
pub struct Rfc2136Dns {
    carrier: Carrier,
    signer: TSigner,
    /// The zone, lowercase and fully qualified.
    zone: Name,
    ttl: u32,
    max_attempts: u32,
}

impl fmt::Debug for Rfc2136Dns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The signer holds the secret: only its name is shown.
        f.debug_struct("Rfc2136Dns")
            .field("carrier", &self.carrier)
            .field("key_name", &self.signer.signer_name().to_string())
            .field("zone", &self.zone.to_string())
            .field("ttl", &self.ttl)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

impl Rfc2136Dns {
    /// Checks the settings (reading the key's secret) and `zone` (e.g. `k8s.example.com`, a
    /// trailing dot is allowed).
    ///
    /// # Errors
    /// A setting that cannot work, or a zone that is not a domain name.
    pub fn new(settings: Rfc2136Settings, zone: &str) -> Result<Self, Rfc2136SetupError> {
        let resolved = settings.resolve()?;
        let zone = fqdn(zone).ok_or_else(|| Rfc2136SetupError::InvalidZone(zone.to_owned()))?;
        Ok(Self {
            carrier: Carrier {
                server: resolved.server,
                udp: settings.transport == Transport::Udp,
                connect_timeout: resolved.connect_timeout,
                request_timeout: resolved.request_timeout,
            },
            signer: resolved.signer,
            zone,
            ttl: settings.ttl,
            max_attempts: settings.max_attempts,
        })
    }

    /// The zone, canonical (`k8s.example.com.`).
    pub fn zone(&self) -> String {
        self.zone.to_string()
    }

    /// A name of the zone, canonical, or why not.
    fn name_in_zone(&self, name: &str) -> Result<Name, DnsError> {
        fqdn(name).filter(|n| self.zone.zone_of(n)).ok_or_else(|| {
            DnsError::Rejected(format!("{name} is not a name in zone {}", self.zone))
        })
    }

    /// An UPDATE of the zone whose update section deletes the A and AAAA RRsets of `name`, then
    /// adds `records`' addresses: the server applies the whole message or none of it.
    fn update_message(&self, name: &Name, records: Option<&AddressRecords>) -> Message {
        let mut message = Message::query();
        message.metadata.op_code = OpCode::Update;
        message.metadata.recursion_desired = false;
        let mut zone = Query::query(self.zone.clone(), RecordType::SOA);
        zone.set_query_class(DNSClass::IN);
        message.add_zone(zone);
        for kind in [RecordType::A, RecordType::AAAA] {
            // RFC 2136 §2.5.2: class ANY, TTL 0, no RDATA deletes the RRset.
            let mut delete = Record::update0(name.clone(), 0, kind);
            delete.dns_class = DNSClass::ANY;
            message.add_update(delete);
        }
        if let Some(records) = records {
            let v4 = records.ipv4.iter().map(|ip| RData::A(A(*ip)));
            let v6 = records.ipv6.iter().map(|ip| RData::AAAA(AAAA(*ip)));
            for data in v4.chain(v6) {
                message.add_update(Record::from_rdata(name.clone(), self.ttl, data));
            }
        }
        message
    }

    /// Sends the update, retried after a timeout or an unavailable server.
    async fn update(&self, what: &str, message: &Message) -> Result<(), DnsError> {
        let mut attempt = 1;
        loop {
            match self.attempt(what, message.clone()).await {
                Err(DnsError::Timeout(_) | DnsError::Unavailable(_))
                    if attempt < self.max_attempts =>
                {
                    attempt += 1;
                    let pause = rand::random_range(0..=BACKOFF_MAX_MS);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                outcome => return outcome,
            }
        }
    }

    /// Signs `message` with a fresh ID and time, sends it, and judges the answer.
    async fn attempt(&self, what: &str, mut message: Message) -> Result<(), DnsError> {
        message.metadata.id = rand::random();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let verifier = message
            .finalize(&self.signer, now)
            .map_err(|e| DnsError::Unexpected(context(what, format!("signing the update: {e}"))))?;
        let bytes = message.to_vec().map_err(|e| {
            DnsError::Rejected(format!("{what}: the update cannot be encoded: {e}"))
        })?;
        let answer = self
            .carrier
            .exchange(message.metadata.id, &bytes)
            .await
            .map_err(|e| self.no_answer(what, e))?;
        let parsed = Message::from_vec(&answer).map_err(|e| {
            DnsError::Unexpected(context(
                what,
                format!("the answer is not a DNS message: {e}"),
            ))
        })?;
        if parsed.metadata.id != message.metadata.id
            || parsed.metadata.message_type != MessageType::Response
        {
            return Err(DnsError::Unexpected(context(
                what,
                "the answer is not a response to the update",
            )));
        }
        let code = parsed.metadata.response_code;
        let tsig_error = parsed.signature().and_then(|tsig| tsig.data.error);
        match code {
            ResponseCode::NoError => {
                // An unsigned or forged NOERROR does not say the update happened.
                let Some(mut verifier) = verifier else {
                    return Err(DnsError::Unexpected(context(
                        what,
                        "the update was not signed",
                    )));
                };
                verifier.verify(&answer).map(drop).map_err(|e| {
                    DnsError::Unexpected(context(
                        what,
                        format!("the answer's TSIG signature does not verify: {e}"),
                    ))
                })
            }
            ResponseCode::NotAuth if tsig_error.is_some() => {
                tracing::warn!(
                    key = %self.signer.signer_name(),
                    tsig_error = ?tsig_error,
                    "the DNS server refused plinth's TSIG key (BADSIG: wrong secret, BADKEY: unknown key name, BADTIME: clocks apart)"
                );
                Err(DnsError::Unauthorized)
            }
            ResponseCode::Refused => {
                tracing::warn!(
                    key = %self.signer.signer_name(),
                    zone = %self.zone,
                    "the DNS server refused the update: the key may not change this zone"
                );
                Err(DnsError::Unauthorized)
            }
            ResponseCode::NotAuth => Err(DnsError::ZoneNotFound(format!(
                "{} (the server is not authoritative for it)",
                self.zone
            ))),
            ResponseCode::ServFail => Err(DnsError::Unavailable(context(
                what,
                "the server answered SERVFAIL",
            ))),
            other => Err(DnsError::Rejected(format!(
                "{what}: the server answered {other}"
            ))),
        }
    }

    /// A call that got no answer, with the cause.
    fn no_answer(&self, what: &str, e: ExchangeError) -> DnsError {
        let how = if self.carrier.udp { "UDP" } else { "TCP" };
        let what = format!("{what} ({} over {how})", self.carrier.server);
        match e {
            ExchangeError::Timeout(_) => DnsError::Timeout(context(&what, e)),
            ExchangeError::Io(_) => DnsError::Unavailable(context(&what, e)),
        }
    }
}

/// `name` lowercased and fully qualified, if it is a domain name.
fn fqdn(name: &str) -> Option<Name> {
    let name = name.trim();
    if name.is_empty() || name == "." {
        return None;
    }
    let mut parsed = Name::from_ascii(name).ok()?.to_lowercase();
    parsed.set_fqdn(true);
    Some(parsed)
}

#[async_trait]
impl Dns for Rfc2136Dns {
    async fn upsert_address_records(&self, set: &AddressRecords) -> Result<(), DnsError> {
        let name = self.name_in_zone(&set.name)?;
        if set.ipv4.is_empty() && set.ipv6.is_empty() {
            return Err(DnsError::Rejected(format!("{name}: no address to publish")));
        }
        let message = self.update_message(&name, Some(set));
        self.update("publishing records", &message).await
    }

    async fn delete_address_records(&self, name: &str) -> Result<(), DnsError> {
        let name = self.name_in_zone(name)?;
        let message = self.update_message(&name, None);
        self.update("deleting records", &message).await
    }
}

#[cfg(test)]
mod tests;
