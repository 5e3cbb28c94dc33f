//! `Dns`: publishing names in the deployment's zone.

use std::net::{Ipv4Addr, Ipv6Addr};

use async_trait::async_trait;

use super::BoxError;

/// The A and AAAA records of one name; an upsert replaces whatever the name had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressRecords {
    /// The fully qualified name, without a trailing dot.
    pub name: String,
    /// A record values.
    pub ipv4: Vec<Ipv4Addr>,
    /// AAAA record values (none: no AAAA record set).
    pub ipv6: Vec<Ipv6Addr>,
}

/// Why a DNS change failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// The DNS server refused plinth's credentials: a configuration problem.
    #[error("the DNS server refused the credentials")]
    Unauthorized,
    /// The configured zone does not exist on the server.
    #[error("DNS zone not found: {0}")]
    ZoneNotFound(String),
    /// The server refused the change; the message is the server's.
    #[error("the DNS server rejected the change: {0}")]
    Rejected(String),
    /// The server could not be reached or answered 5xx.
    #[error("DNS server unavailable")]
    Unavailable(#[source] BoxError),
    /// The call did not finish within its bound.
    #[error("DNS call timed out")]
    Timeout(#[source] BoxError),
    /// Anything else.
    #[error("unexpected DNS failure")]
    Unexpected(#[source] BoxError),
}

/// The deployment's authoritative DNS.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Dns: Send + Sync {
    /// Creates or replaces the A/AAAA record sets of a name.
    ///
    /// # Errors
    /// `Unauthorized` or `ZoneNotFound` for a deployment that is set up wrong, `Rejected` for a
    /// name or value the server refuses, or a server failure.
    async fn upsert_address_records(&self, records: &AddressRecords) -> Result<(), DnsError>;

    /// Deletes the A and AAAA record sets of a name; a name without records is fine.
    ///
    /// # Errors
    /// As for an upsert.
    async fn delete_address_records(&self, name: &str) -> Result<(), DnsError>;
}
