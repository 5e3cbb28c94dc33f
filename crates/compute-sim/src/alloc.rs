//! Address allocation, never a reserved address: the one after the highest in use while a range
//! fills from the bottom up (`next_*`, from one index lookup), else the lowest free (`free_*`,
//! from every address in use).

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

/// The lowest free private IPv4 of a subnet: never the network address, the gateway (the first
/// host, `.1` of a /24) or the broadcast address.
pub fn free_subnet_ipv4(subnet: Ipv4Net, used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let first = u32::from(subnet.network()).checked_add(2)?;
    let last = u32::from(subnet.broadcast()).checked_sub(1)?;
    (first..=last)
        .map(Ipv4Addr::from)
        .find(|ip| !used.contains(ip))
}

/// The lowest free address of a public pool: every address but the network and broadcast ones.
pub fn free_pool_ipv4(pool: Ipv4Net, used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let first = u32::from(pool.network()).checked_add(1)?;
    let last = u32::from(pool.broadcast()).checked_sub(1)?;
    (first..=last)
        .map(Ipv4Addr::from)
        .find(|ip| !used.contains(ip))
}

/// The lowest free IPv6 of a subnet, after the router (`::1`); searched among the first 2^16
/// interface ids, which is plenty for a simulator.
pub fn free_subnet_ipv6(subnet: Ipv6Net, used: &HashSet<Ipv6Addr>) -> Option<Ipv6Addr> {
    let network = u128::from(subnet.network());
    let last = u128::from(subnet.broadcast());
    (2..=0xffff_u128)
        .map(|id| network + id)
        .take_while(|ip| *ip <= last)
        .map(Ipv6Addr::from)
        .find(|ip| !used.contains(ip))
}

/// The private IPv4 after `highest` (the subnet's highest address in use; none: the first host),
/// if the subnet has one: the quick answer while a subnet fills from the bottom up.
pub fn next_subnet_ipv4(subnet: Ipv4Net, highest: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
    let first = u128::from(u32::from(subnet.network())) + 2;
    let last = u128::from(u32::from(subnet.broadcast())).checked_sub(1)?;
    next_ipv4(first, last, highest)
}

/// The pool address after `highest` (none: the first), if the pool has one.
pub fn next_pool_ipv4(pool: Ipv4Net, highest: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
    let first = u128::from(u32::from(pool.network())) + 1;
    let last = u128::from(u32::from(pool.broadcast())).checked_sub(1)?;
    next_ipv4(first, last, highest)
}

/// The IPv6 after `highest` (none: `::2`), if it is among the subnet's first 2^16 interface ids.
pub fn next_subnet_ipv6(subnet: Ipv6Net, highest: Option<Ipv6Addr>) -> Option<Ipv6Addr> {
    let network = u128::from(subnet.network());
    let last = (network + 0xffff).min(u128::from(subnet.broadcast()));
    next_after(network + 2, last, highest.map(u128::from)).map(Ipv6Addr::from)
}

fn next_ipv4(first: u128, last: u128, highest: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
    let next = next_after(first, last, highest.map(|h| u128::from(u32::from(h))))?;
    u32::try_from(next).ok().map(Ipv4Addr::from)
}

/// `first` when nothing is in use, else the number after `highest`, when within `first..=last`.
fn next_after(first: u128, last: u128, highest: Option<u128>) -> Option<u128> {
    let next = highest.map_or(Some(first), |h| h.checked_add(1))?;
    (first..=last).contains(&next).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn the_first_subnet_address_skips_network_and_gateway() {
        let subnet: Ipv4Net = "127.10.0.0/24".parse().unwrap();
        assert_eq!(
            free_subnet_ipv4(subnet, &HashSet::new()),
            Some(v4("127.10.0.2"))
        );
    }

    #[test]
    fn used_addresses_are_skipped_and_freed_ones_reused() {
        let subnet: Ipv4Net = "127.10.0.0/24".parse().unwrap();
        let mut used: HashSet<Ipv4Addr> = [v4("127.10.0.2"), v4("127.10.0.3")].into();
        assert_eq!(free_subnet_ipv4(subnet, &used), Some(v4("127.10.0.4")));
        used.remove(&v4("127.10.0.2"));
        assert_eq!(free_subnet_ipv4(subnet, &used), Some(v4("127.10.0.2")));
    }

    #[test]
    fn a_full_subnet_has_no_address_and_broadcast_is_never_given() {
        let subnet: Ipv4Net = "10.0.0.0/29".parse().unwrap(); // .2 to .6 usable
        let mut used = HashSet::new();
        while let Some(ip) = free_subnet_ipv4(subnet, &used) {
            assert_ne!(ip, v4("10.0.0.7"));
            used.insert(ip);
        }
        assert_eq!(used.len(), 5);
        for tiny in ["10.0.0.0/31", "10.0.0.0/32", "10.0.0.0/30"] {
            let net: Ipv4Net = tiny.parse().unwrap();
            let got = free_subnet_ipv4(net, &HashSet::new());
            assert!(got.is_none() || tiny == "10.0.0.0/30", "{tiny}: {got:?}");
        }
    }

    #[test]
    fn pools_use_every_host_address() {
        let pool: Ipv4Net = "127.20.0.0/30".parse().unwrap(); // .1 and .2
        let mut used = HashSet::new();
        used.insert(free_pool_ipv4(pool, &used).unwrap());
        used.insert(free_pool_ipv4(pool, &used).unwrap());
        assert_eq!(used, [v4("127.20.0.1"), v4("127.20.0.2")].into());
        assert_eq!(free_pool_ipv4(pool, &used), None);
    }

    #[test]
    fn ipv6_starts_after_the_router() {
        let subnet: Ipv6Net = "fd00:10::/64".parse().unwrap();
        let first = free_subnet_ipv6(subnet, &HashSet::new()).unwrap();
        assert_eq!(first, "fd00:10::2".parse::<Ipv6Addr>().unwrap());
        let second = free_subnet_ipv6(subnet, &[first].into()).unwrap();
        assert_eq!(second, "fd00:10::3".parse::<Ipv6Addr>().unwrap());
        let tiny: Ipv6Net = "fd00::/127".parse().unwrap();
        assert_eq!(free_subnet_ipv6(tiny, &HashSet::new()), None);
    }

    #[test]
    fn the_next_address_follows_the_highest_within_the_range() {
        let subnet: Ipv4Net = "127.10.0.0/30".parse().unwrap();
        // A /30: network .0, gateway .1, one host .2, broadcast .3.
        assert_eq!(next_subnet_ipv4(subnet, None), Some(v4("127.10.0.2")));
        assert_eq!(next_subnet_ipv4(subnet, Some(v4("127.10.0.2"))), None);
        let wide: Ipv4Net = "127.10.0.0/16".parse().unwrap();
        assert_eq!(
            next_subnet_ipv4(wide, Some(v4("127.10.0.255"))),
            Some(v4("127.10.1.0"))
        );
        assert_eq!(next_subnet_ipv4(wide, Some(v4("127.10.255.254"))), None);
        let pool: Ipv4Net = "127.20.0.0/30".parse().unwrap();
        assert_eq!(next_pool_ipv4(pool, None), Some(v4("127.20.0.1")));
        assert_eq!(
            next_pool_ipv4(pool, Some(v4("127.20.0.1"))),
            Some(v4("127.20.0.2"))
        );
        assert_eq!(next_pool_ipv4(pool, Some(v4("127.20.0.2"))), None);
        // An address of another pool is no start: the caller falls back to the full search.
        assert_eq!(next_pool_ipv4(pool, Some(v4("127.30.0.9"))), None);
        let v6: Ipv6Net = "fd00:10::/64".parse().unwrap();
        assert_eq!(
            next_subnet_ipv6(v6, None),
            Some("fd00:10::2".parse().unwrap())
        );
        assert_eq!(
            next_subnet_ipv6(v6, Some("fd00:10::ffff".parse().unwrap())),
            None
        );
    }
}
