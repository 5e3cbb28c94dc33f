//! What only the RFC 2136 adapter does, against a real BIND9 (Debian's bind9, started per test on
//! a private loopback port by scripts/bind.sh, with a TSIG key it makes): UDP as well as TCP, an
//! unknown key, a zone the server does not serve, and a frozen server's timeout in bounded time.
//! What every `Dns` adapter must do is the contract suite, tests/e2e/dns_contract.rs, run over
//! this adapter and the PowerDNS one.

#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use plinth_domain::ports::Chain;
use plinth_domain::ports::dns::{AddressRecords, Dns, DnsError};
use plinth_rfc2136_dns::{Rfc2136Dns, Rfc2136Settings, Transport};
use plinth_testkit::rfc2136::{Rfc2136Server, TSIG_KEY_NAME};
use plinth_testkit::{ZONE, signal};

const NAME: &str = "api.cluster-1.k8s.plinth.test";

fn settings(server: &Rfc2136Server) -> Rfc2136Settings {
    let mut settings = Rfc2136Settings::new(&server.address(), TSIG_KEY_NAME, server.key_file());
    settings.request_timeout_ms = 800;
    settings
}

fn records(v4: &[Ipv4Addr], v6: &[Ipv6Addr]) -> AddressRecords {
    AddressRecords {
        name: NAME.to_owned(),
        ipv4: v4.to_vec(),
        ipv6: v6.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn updates_over_udp_publish_and_delete_too() {
    let server = Rfc2136Server::bind9();
    let mut udp = settings(&server);
    udp.transport = Transport::Udp;
    let dns = Rfc2136Dns::new(udp, ZONE).unwrap();
    dns.upsert_address_records(&records(
        &[Ipv4Addr::new(192, 0, 2, 7)],
        &[Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7)],
    ))
    .await
    .unwrap();
    assert_eq!(
        server.dig(NAME, "A"),
        ("NOERROR".into(), vec!["192.0.2.7".into()])
    );
    assert_eq!(
        server.dig(NAME, "AAAA"),
        ("NOERROR".into(), vec!["2001:db8::7".into()])
    );
    dns.delete_address_records(NAME).await.unwrap();
    assert_eq!(server.dig(NAME, "A").0, "NXDOMAIN");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_name_the_server_does_not_know_is_unauthorized() {
    let server = Rfc2136Server::bind9();
    let mut stranger = settings(&server);
    stranger.key_name = "someone-else".to_owned();
    let err = Rfc2136Dns::new(stranger, ZONE)
        .unwrap()
        .upsert_address_records(&records(&[Ipv4Addr::new(192, 0, 2, 8)], &[]))
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::Unauthorized), "{err:?}");
    assert_eq!(server.dig(NAME, "A").0, "NXDOMAIN");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zone_the_server_does_not_serve_is_zone_not_found() {
    let server = Rfc2136Server::bind9();
    let dns = Rfc2136Dns::new(settings(&server), "absent.plinth.test").unwrap();
    let mut elsewhere = records(&[Ipv4Addr::new(192, 0, 2, 9)], &[]);
    elsewhere.name = "api.absent.plinth.test".to_owned();
    let err = dns.upsert_address_records(&elsewhere).await.unwrap_err();
    let DnsError::ZoneNotFound(zone) = &err else {
        panic!("{err:?}")
    };
    assert!(zone.starts_with("absent.plinth.test."), "{zone}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_server_times_out_within_the_bounds() {
    let server = Rfc2136Server::bind9();
    let dns = Rfc2136Dns::new(settings(&server), ZONE).unwrap();
    // Frozen (our own process): the kernel accepts the connection, nobody answers.
    let pid = server.pid();
    signal(&[&pid], "-STOP");
    let started = Instant::now();
    let err = dns
        .upsert_address_records(&records(&[Ipv4Addr::new(192, 0, 2, 10)], &[]))
        .await
        .unwrap_err();
    let took = started.elapsed();
    signal(&[&pid], "-CONT");
    assert!(matches!(err, DnsError::Timeout(_)), "{err:?}");
    let why = Chain(&err).to_string();
    assert_eq!(
        why,
        format!(
            "DNS call timed out: publishing records ({} over TCP): no answer within 800ms",
            server.address()
        )
    );
    // Two attempts of 800 ms, and a pause between them.
    assert!(took < Duration::from_secs(3), "took {took:?}");
}
