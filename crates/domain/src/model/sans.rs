use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::naming::NodeName;
use super::networking::Networking;

/// A control-plane node's addresses, as the compute platform recorded them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeAddresses {
    /// Private IPv4 in the subnet: always present once the VM is up.
    pub ipv4: Ipv4Addr,
    /// IPv6 from the subnet's /64, when the subnet has one.
    pub ipv6: Option<Ipv6Addr>,
    /// Public IPv4, when the platform gave one.
    pub public_ipv4: Option<Ipv4Addr>,
}

impl NodeAddresses {
    /// The node's own addresses: private IPv4, then IPv6, then public IPv4.
    fn own(&self) -> impl Iterator<Item = IpAddr> {
        [
            Some(IpAddr::V4(self.ipv4)),
            self.ipv6.map(IpAddr::V6),
            self.public_ipv4.map(IpAddr::V4),
        ]
        .into_iter()
        .flatten()
    }
}

/// The subject alternative names of a serving certificate, without duplicates, in a stable order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectAltNames {
    /// DNS names (no trailing dot; Go refuses one).
    pub dns_names: Vec<String>,
    /// IP addresses.
    pub ip_addresses: Vec<IpAddr>,
}

impl SubjectAltNames {
    fn push_dns(&mut self, name: &str) {
        if !self.dns_names.iter().any(|n| n == name) {
            self.dns_names.push(name.to_owned());
        }
    }

    fn push_ip(&mut self, ip: IpAddr) {
        if !self.ip_addresses.contains(&ip) {
            self.ip_addresses.push(ip);
        }
    }
}

/// SANs of a node's etcd certificate (server and peer): the node name and `localhost`; the node's
/// own addresses (a peer's IP SANs must hold the address it connects from), `127.0.0.1`, `::1`.
pub fn etcd_sans(node: &NodeName, addresses: &NodeAddresses) -> SubjectAltNames {
    let mut sans = SubjectAltNames::default();
    sans.push_dns(node.as_str());
    sans.push_dns("localhost");
    addresses.own().for_each(|ip| sans.push_ip(ip));
    sans.push_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    sans.push_ip(IpAddr::V6(Ipv6Addr::LOCALHOST));
    sans
}

/// SANs of a node's kube-apiserver serving certificate: every name a client may dial — the node
/// name, the shared control-plane name, the in-cluster `kubernetes` service names — and the
/// `kubernetes` service IP, the node's own addresses and `127.0.0.1`.
pub fn apiserver_sans(
    node: &NodeName,
    control_plane_name: &str,
    networking: &Networking,
    addresses: &NodeAddresses,
) -> SubjectAltNames {
    let mut sans = SubjectAltNames::default();
    sans.push_dns(node.as_str());
    sans.push_dns(control_plane_name);
    for name in ["kubernetes", "kubernetes.default", "kubernetes.default.svc"] {
        sans.push_dns(name);
    }
    sans.push_dns(&format!(
        "kubernetes.default.svc.{}",
        networking.dns_domain()
    ));
    sans.push_ip(IpAddr::V4(networking.first_service_ip()));
    addresses.own().for_each(|ip| sans.push_ip(ip));
    sans.push_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    sans
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::model::{ClusterId, NodeOrdinal};

    fn node() -> NodeName {
        NodeName::new(
            ClusterId::from_uuid(Uuid::from_u128(7)),
            NodeOrdinal::new(1).unwrap(),
        )
    }

    const NODE: &str = "cp-1.cluster-00000000-0000-0000-0000-000000000007.internal";
    const SHARED: &str = "api.cluster-00000000-0000-0000-0000-000000000007.k8s.example";

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|ip| ip.parse().unwrap()).collect()
    }

    fn ipv4_only() -> NodeAddresses {
        NodeAddresses {
            ipv4: Ipv4Addr::new(127, 10, 0, 11),
            ipv6: None,
            public_ipv4: None,
        }
    }

    fn every_address() -> NodeAddresses {
        NodeAddresses {
            ipv4: Ipv4Addr::new(127, 10, 0, 11),
            ipv6: Some("fd00:10::b".parse().unwrap()),
            public_ipv4: Some(Ipv4Addr::new(127, 20, 0, 5)),
        }
    }

    #[test]
    fn etcd_sans_for_an_ipv4_only_node() {
        let sans = etcd_sans(&node(), &ipv4_only());
        assert_eq!(sans.dns_names, [NODE, "localhost"]);
        assert_eq!(sans.ip_addresses, ips(&["127.10.0.11", "127.0.0.1", "::1"]));
    }

    #[test]
    fn etcd_sans_for_a_node_with_ipv6_and_public_ipv4() {
        let sans = etcd_sans(&node(), &every_address());
        assert_eq!(sans.dns_names, [NODE, "localhost"]);
        assert_eq!(
            sans.ip_addresses,
            ips(&[
                "127.10.0.11",
                "fd00:10::b",
                "127.20.0.5",
                "127.0.0.1",
                "::1"
            ])
        );
    }

    #[test]
    fn apiserver_sans_for_an_ipv4_only_node() {
        let sans = apiserver_sans(&node(), SHARED, &Networking::default(), &ipv4_only());
        assert_eq!(
            sans.dns_names,
            [
                NODE,
                SHARED,
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ]
        );
        assert_eq!(
            sans.ip_addresses,
            ips(&["10.96.0.1", "127.10.0.11", "127.0.0.1"])
        );
    }

    #[test]
    fn apiserver_sans_for_a_node_with_ipv6_and_public_ipv4() {
        let sans = apiserver_sans(&node(), SHARED, &Networking::default(), &every_address());
        assert_eq!(sans.dns_names.len(), 6);
        assert_eq!(
            sans.ip_addresses,
            ips(&[
                "10.96.0.1",
                "127.10.0.11",
                "fd00:10::b",
                "127.20.0.5",
                "127.0.0.1"
            ])
        );
    }

    #[test]
    fn apiserver_sans_follow_the_configured_dns_domain_and_service_range() {
        let networking = Networking::new(
            "10.244.0.0/16".parse().unwrap(),
            "172.20.0.0/16".parse().unwrap(),
            "corp.internal",
            6443,
        )
        .unwrap();
        let sans = apiserver_sans(&node(), SHARED, &networking, &ipv4_only());
        assert!(
            sans.dns_names
                .contains(&"kubernetes.default.svc.corp.internal".to_owned())
        );
        assert_eq!(
            sans.ip_addresses[0],
            "172.20.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn duplicate_addresses_appear_once() {
        let loopback = NodeAddresses {
            ipv4: Ipv4Addr::LOCALHOST,
            ipv6: Some(Ipv6Addr::LOCALHOST),
            public_ipv4: Some(Ipv4Addr::LOCALHOST),
        };
        let sans = etcd_sans(&node(), &loopback);
        assert_eq!(sans.ip_addresses, ips(&["127.0.0.1", "::1"]));
    }
}
