//! What only the PowerDNS adapter does, against a real PowerDNS Authoritative server (Debian's
//! pdns-server, started per test on private loopback ports by scripts/pdns.sh): the zone it
//! creates at start, a missing zone, and a frozen server's timeout in bounded time. What every
//! `Dns` adapter must do is the contract suite, tests/e2e/dns_contract.rs, run over this adapter
//! and the RFC 2136 one.

#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use plinth_domain::model::SecretText;
use plinth_domain::ports::Chain;
use plinth_domain::ports::dns::{AddressRecords, Dns, DnsError};
use plinth_http_dns::{PowerDns, PowerDnsSettings};
use plinth_testkit::pdns::PowerDnsServer;
use plinth_testkit::{ZONE, signal};

fn settings(server: &PowerDnsServer) -> PowerDnsSettings {
    let mut settings =
        PowerDnsSettings::new(&server.api_url(), SecretText::new(server.api_key.clone()));
    settings.request_timeout_ms = 800;
    settings.nameservers = vec!["ns1.plinth.test".to_owned()];
    settings
}

fn records(name: &str, v4: &str) -> AddressRecords {
    AddressRecords {
        name: name.to_owned(),
        ipv4: vec![v4.parse::<Ipv4Addr>().unwrap()],
        ipv6: Vec::new(),
    }
}
const NAME: &str = "api.cluster-1.k8s.plinth.test";

#[tokio::test(flavor = "multi_thread")]
async fn the_zone_is_created_once_without_api_rectify() {
    let server = PowerDnsServer::start();
    let dns = PowerDns::new(settings(&server), ZONE).unwrap();
    assert_eq!(dns.zone(), "k8s.plinth.test.");
    assert!(dns.ensure_zone().await.unwrap(), "the zone is created");
    assert!(!dns.ensure_zone().await.unwrap(), "and only once");
    // Created without API-RECTIFY: a change does not rectify the whole zone.
    let zone: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/servers/localhost/zones/{ZONE}.",
            server.api_url()
        ))
        .header("X-API-Key", &server.api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(zone["api_rectify"], false, "{zone}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_zone_is_zone_not_found() {
    let server = PowerDnsServer::start();
    let dns = PowerDns::new(settings(&server), "absent.plinth.test").unwrap();
    let err = dns
        .upsert_address_records(&records("api.absent.plinth.test", "192.0.2.1"))
        .await
        .unwrap_err();
    let DnsError::ZoneNotFound(zone) = &err else {
        panic!("{err}")
    };
    assert!(zone.contains("absent.plinth.test."), "{zone}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_server_times_out_within_the_bounds() {
    let server = PowerDnsServer::start();
    let dns = PowerDns::new(settings(&server), ZONE).unwrap();
    dns.ensure_zone().await.unwrap();

    // Frozen (our own process): it accepts connections and never answers.
    let pid = server.pid();
    signal(&[&pid], "-STOP");
    let started = Instant::now();
    let err = dns
        .upsert_address_records(&records(NAME, "192.0.2.1"))
        .await
        .unwrap_err();
    let took = started.elapsed();
    signal(&[&pid], "-CONT");
    assert!(matches!(err, DnsError::Timeout(_)), "{err}");
    let why = Chain(&err).to_string();
    assert!(
        why.starts_with("DNS call timed out: publishing records: no answer within 800ms: "),
        "{why}"
    );
    // Two attempts of 800 ms, and a pause between them.
    assert!(took < Duration::from_secs(3), "took {took:?}");
}
