use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::ids::check_dns_label;

/// A cluster's in-cluster networking. Defaults are kubeadm's (service CIDR, DNS domain, port)
/// and flannel's pod CIDR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Networking {
    pod_cidr: Ipv4Net,
    service_cidr: Ipv4Net,
    dns_domain: String,
    api_server_port: u16,
}

/// Why a networking setting was refused; each variant names the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkingError {
    /// The service CIDR cannot hold the cluster DNS IP (its 10th address).
    #[error("service_cidr {0} is too small: it needs at least 16 addresses (a /28 or larger)")]
    ServiceCidrTooSmall(Ipv4Net),
    /// Pod and service ranges overlap, so routing would be ambiguous.
    #[error("pod_cidr {pod} overlaps service_cidr {service}")]
    Overlap {
        /// The pod range.
        pod: Ipv4Net,
        /// The service range.
        service: Ipv4Net,
    },
    /// The DNS domain is not a domain name.
    #[error("dns_domain {domain:?} is not a domain name: {why}")]
    DnsDomain {
        /// The refused value.
        domain: String,
        /// The rule it breaks.
        why: String,
    },
    /// Port 0 is not a port a client can dial.
    #[error("api_server_port must be between 1 and 65535")]
    ApiServerPort,
}

impl Networking {
    /// Checks a networking configuration.
    pub fn new(
        pod_cidr: Ipv4Net,
        service_cidr: Ipv4Net,
        dns_domain: &str,
        api_server_port: u16,
    ) -> Result<Self, NetworkingError> {
        let (pod_cidr, service_cidr) = (pod_cidr.trunc(), service_cidr.trunc());
        if service_cidr.prefix_len() > 28 {
            return Err(NetworkingError::ServiceCidrTooSmall(service_cidr));
        }
        if pod_cidr.contains(&service_cidr) || service_cidr.contains(&pod_cidr) {
            return Err(NetworkingError::Overlap {
                pod: pod_cidr,
                service: service_cidr,
            });
        }
        if let Some(why) = dns_domain
            .split('.')
            .find_map(|label| check_dns_label(label).err())
        {
            return Err(NetworkingError::DnsDomain {
                domain: dns_domain.to_owned(),
                why: why.0,
            });
        }
        if api_server_port == 0 {
            return Err(NetworkingError::ApiServerPort);
        }
        Ok(Self {
            pod_cidr,
            service_cidr,
            dns_domain: dns_domain.to_owned(),
            api_server_port,
        })
    }

    /// The pod network, e.g. `10.244.0.0/16`.
    pub fn pod_cidr(&self) -> Ipv4Net {
        self.pod_cidr
    }

    /// The service network, e.g. `10.96.0.0/12`.
    pub fn service_cidr(&self) -> Ipv4Net {
        self.service_cidr
    }

    /// The in-cluster DNS domain, e.g. `cluster.local`.
    pub fn dns_domain(&self) -> &str {
        &self.dns_domain
    }

    /// The port kube-apiserver serves on, e.g. 6443.
    pub fn api_server_port(&self) -> u16 {
        self.api_server_port
    }

    /// The `kubernetes` service's IP: the first address of the service range (`10.96.0.1`).
    pub fn first_service_ip(&self) -> Ipv4Addr {
        nth_address(self.service_cidr, 1)
    }

    /// The cluster DNS service's IP: the tenth address of the service range (`10.96.0.10`).
    pub fn cluster_dns_ip(&self) -> Ipv4Addr {
        nth_address(self.service_cidr, 10)
    }
}

impl Default for Networking {
    fn default() -> Self {
        Self {
            pod_cidr: Ipv4Net::new_assert(Ipv4Addr::new(10, 244, 0, 0), 16),
            service_cidr: Ipv4Net::new_assert(Ipv4Addr::new(10, 96, 0, 0), 12),
            dns_domain: "cluster.local".to_owned(),
            api_server_port: 6443,
        }
    }
}

/// The `n`-th address after the network address; callers keep `n` inside the range (a /28 holds
/// 16 addresses, and `new` refuses anything smaller).
fn nth_address(net: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_kubeadms() {
        let net = Networking::default();
        assert_eq!(net.pod_cidr().to_string(), "10.244.0.0/16");
        assert_eq!(net.service_cidr().to_string(), "10.96.0.0/12");
        assert_eq!(net.dns_domain(), "cluster.local");
        assert_eq!(net.api_server_port(), 6443);
        assert_eq!(net.first_service_ip(), Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(net.cluster_dns_ip(), Ipv4Addr::new(10, 96, 0, 10));
    }

    #[test]
    fn default_passes_its_own_checks() {
        let d = Networking::default();
        let checked = Networking::new(
            d.pod_cidr(),
            d.service_cidr(),
            d.dns_domain(),
            d.api_server_port(),
        );
        assert_eq!(checked, Ok(d));
    }

    #[test]
    fn refuses_impossible_networking() {
        let pod: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let tiny: Ipv4Net = "10.96.0.0/29".parse().unwrap();
        assert_eq!(
            Networking::new(pod, tiny, "cluster.local", 6443),
            Err(NetworkingError::ServiceCidrTooSmall(tiny))
        );
        let inside: Ipv4Net = "10.244.8.0/24".parse().unwrap();
        assert!(matches!(
            Networking::new(pod, inside, "cluster.local", 6443),
            Err(NetworkingError::Overlap { .. })
        ));
        let svc: Ipv4Net = "10.96.0.0/12".parse().unwrap();
        assert!(matches!(
            Networking::new(pod, svc, "Cluster..local", 6443),
            Err(NetworkingError::DnsDomain { .. })
        ));
        assert_eq!(
            Networking::new(pod, svc, "cluster.local", 0),
            Err(NetworkingError::ApiServerPort)
        );
    }
}
