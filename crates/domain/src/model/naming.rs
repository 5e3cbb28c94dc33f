use std::fmt;

use super::ids::{ClusterId, InvalidValue, check_dns_label};

/// The DNS zone under which plinth publishes control-plane names, e.g. `k8s.example.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsZone(String);

impl DnsZone {
    /// The longest zone that still leaves room for `api.cluster-<uuid>.` (49 characters) within
    /// DNS's 253-character limit.
    const MAX_LEN: usize = 253 - 49;

    /// Accepts a lowercase domain name of at least one label; a trailing dot is dropped.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let zone = raw.strip_suffix('.').unwrap_or(raw);
        if zone.is_empty() || zone.len() > Self::MAX_LEN {
            return Err(InvalidValue(format!(
                "a DNS zone has 1 to {} characters",
                Self::MAX_LEN
            )));
        }
        for label in zone.split('.') {
            check_dns_label(label).map_err(|InvalidValue(why)| {
                InvalidValue(format!("DNS zone label {label:?} {why}"))
            })?;
        }
        Ok(Self(zone.to_owned()))
    }

    /// The zone without a trailing dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DnsZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A control-plane node's position in its cluster, 1-based, as in `cp-1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeOrdinal(u8);

impl NodeOrdinal {
    /// Wraps a 1-based ordinal; 0 is refused.
    pub fn new(ordinal: u8) -> Result<Self, InvalidValue> {
        if ordinal == 0 {
            return Err(InvalidValue("node ordinals start at 1".into()));
        }
        Ok(Self(ordinal))
    }

    /// The ordinal as a number.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl fmt::Display for NodeOrdinal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A control-plane node's deterministic name, `cp-{n}.cluster-{id}.internal`, so that topology
/// can be rebuilt from durable rows alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeName(String);

impl NodeName {
    /// The name of node `ordinal` of `cluster`.
    pub fn new(cluster: ClusterId, ordinal: NodeOrdinal) -> Self {
        Self(format!("cp-{ordinal}.{}.internal", cluster.label()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The node of `cluster` that `raw` names, if any (a cluster has at most 7 nodes).
    pub fn find(cluster: ClusterId, raw: &str) -> Option<(NodeOrdinal, Self)> {
        (1..=7u8)
            .filter_map(|n| NodeOrdinal::new(n).ok())
            .map(|ordinal| (ordinal, Self::new(cluster, ordinal)))
            .find(|(_, name)| name.0 == raw)
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The public names of one cluster under the deployment's zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDnsNames {
    /// `api.cluster-{id}.{zone}`: the shared control-plane name the admin kubeconfig dials.
    pub control_plane: String,
    /// `*.apps.cluster-{id}.{zone}`: returned as a hint for ingress, not published.
    pub ingress_wildcard: String,
}

impl ClusterDnsNames {
    /// The names of `cluster` under `zone`.
    pub fn new(cluster: ClusterId, zone: &DnsZone) -> Self {
        let label = cluster.label();
        Self {
            control_plane: format!("api.{label}.{zone}"),
            ingress_wildcard: format!("*.apps.{label}.{zone}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn cluster() -> ClusterId {
        ClusterId::from_uuid(Uuid::from_u128(0x1234))
    }

    #[test]
    fn node_names_follow_the_cp_n_pattern() {
        let name = NodeName::new(cluster(), NodeOrdinal::new(2).unwrap());
        assert_eq!(
            name.as_str(),
            "cp-2.cluster-00000000-0000-0000-0000-000000001234.internal"
        );
    }

    #[test]
    fn shared_and_ingress_names_sit_under_the_zone() {
        let names = ClusterDnsNames::new(cluster(), &DnsZone::parse("k8s.example.com.").unwrap());
        assert_eq!(
            names.control_plane,
            "api.cluster-00000000-0000-0000-0000-000000001234.k8s.example.com"
        );
        assert_eq!(
            names.ingress_wildcard,
            "*.apps.cluster-00000000-0000-0000-0000-000000001234.k8s.example.com"
        );
    }

    #[test]
    fn zone_rules() {
        assert_eq!(
            DnsZone::parse("example.com.").unwrap().as_str(),
            "example.com"
        );
        assert!(DnsZone::parse("localhost").is_ok());
        assert!(DnsZone::parse("").is_err());
        assert!(DnsZone::parse("a..b").is_err());
        assert!(DnsZone::parse("Example.com").is_err());
        assert!(DnsZone::parse(&format!("{}.com", "a".repeat(64))).is_err());
        assert!(NodeOrdinal::new(0).is_err());
    }
}
