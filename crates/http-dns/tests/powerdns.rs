//! The `Dns` adapter against a real PowerDNS Authoritative server (Debian's pdns-server, started
//! per test on private loopback ports by scripts/pdns.sh): what it publishes answers real DNS
//! queries (dig), replaces and deletes, and each failure maps to the right error in bounded time.

#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plinth_domain::FoundCluster;
use plinth_domain::model::SecretText;
use plinth_domain::ports::Chain;
use plinth_domain::ports::dns::{AddressRecords, Dns, DnsError};
use plinth_http_compute::{HttpCompute, HttpComputeSettings};
use plinth_http_dns::{PowerDns, PowerDnsSettings};
use plinth_testkit::pdns::PowerDnsServer;
use plinth_testkit::{COMPUTE_TOKEN, FoundingStack, ZONE, signal};

trait Adapter {
    fn settings(&self) -> PowerDnsSettings;
    async fn adapter_with_zone(&self) -> PowerDns;
}

impl Adapter for PowerDnsServer {
    fn settings(&self) -> PowerDnsSettings {
        let mut settings =
            PowerDnsSettings::new(&self.api_url(), SecretText::new(self.api_key.clone()));
        settings.request_timeout_ms = 800;
        settings.nameservers = vec!["ns1.plinth.test".to_owned()];
        settings
    }

    async fn adapter_with_zone(&self) -> PowerDns {
        let dns = PowerDns::new(self.settings(), ZONE).unwrap();
        dns.ensure_zone().await.unwrap();
        dns
    }
}

fn records(name: &str, v4: &[&str], v6: &[&str]) -> AddressRecords {
    AddressRecords {
        name: name.to_owned(),
        ipv4: v4
            .iter()
            .map(|ip| ip.parse::<Ipv4Addr>().unwrap())
            .collect(),
        ipv6: v6
            .iter()
            .map(|ip| ip.parse::<Ipv6Addr>().unwrap())
            .collect(),
    }
}

const NAME: &str = "api.cluster-1.k8s.plinth.test";

#[tokio::test(flavor = "multi_thread")]
async fn published_records_answer_real_queries_then_are_replaced_then_deleted() {
    let server = PowerDnsServer::start();
    let dns = PowerDns::new(server.settings(), ZONE).unwrap();
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

    dns.upsert_address_records(&records(
        NAME,
        &["192.0.2.10", "192.0.2.11"],
        &["2001:db8::10"],
    ))
    .await
    .unwrap();
    assert_eq!(
        server.dig(NAME, "A"),
        (
            "NOERROR".into(),
            vec!["192.0.2.10".into(), "192.0.2.11".into()]
        )
    );
    assert_eq!(
        server.dig(NAME, "AAAA"),
        ("NOERROR".into(), vec!["2001:db8::10".into()])
    );

    // A second upsert replaces both families: the A set shrinks, the AAAA set goes.
    dns.upsert_address_records(&records(NAME, &["192.0.2.12"], &[]))
        .await
        .unwrap();
    assert_eq!(
        server.dig(NAME, "A"),
        ("NOERROR".into(), vec!["192.0.2.12".into()])
    );
    assert_eq!(server.dig(NAME, "AAAA").1, Vec::<String>::new());

    dns.delete_address_records(NAME).await.unwrap();
    assert_eq!(server.dig(NAME, "A").0, "NXDOMAIN");
    // Deleting what is not there is fine.
    dns.delete_address_records(NAME).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_api_key_is_unauthorized() {
    let server = PowerDnsServer::start();
    server.adapter_with_zone().await;
    let mut settings = server.settings();
    settings.api_key = Some(SecretText::new("not-the-key"));
    let dns = PowerDns::new(settings, ZONE).unwrap();
    let err = dns
        .upsert_address_records(&records(NAME, &["192.0.2.1"], &[]))
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::Unauthorized), "{err}");
    assert_eq!(server.dig(NAME, "A").1, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_zone_is_zone_not_found() {
    let server = PowerDnsServer::start();
    let dns = PowerDns::new(server.settings(), "absent.plinth.test").unwrap();
    let err = dns
        .upsert_address_records(&records("api.absent.plinth.test", &["192.0.2.1"], &[]))
        .await
        .unwrap_err();
    let DnsError::ZoneNotFound(zone) = &err else {
        panic!("{err}")
    };
    assert!(zone.contains("absent.plinth.test."), "{zone}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_outside_the_zone_is_rejected_without_a_call() {
    let server = PowerDnsServer::start();
    let dns = server.adapter_with_zone().await;
    let err = dns
        .upsert_address_records(&records("api.elsewhere.test", &["192.0.2.1"], &[]))
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::Rejected(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_server_is_unavailable_and_a_frozen_one_times_out_within_the_bounds() {
    let server = PowerDnsServer::start();
    let dns = server.adapter_with_zone().await;

    // Frozen (our own process): it accepts connections and never answers.
    let pid = server.pid();
    signal(&[&pid], "-STOP");
    let started = Instant::now();
    let err = dns
        .upsert_address_records(&records(NAME, &["192.0.2.1"], &[]))
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

    server.script("stop");
    let started = Instant::now();
    let err = dns
        .upsert_address_records(&records(NAME, &["192.0.2.1"], &[]))
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::Unavailable(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// A founding stack and its use case, founding through the HTTP compute adapter and `dns`.
async fn founding_with(dns: PowerDns) -> (FoundingStack, FoundCluster) {
    let stack = FoundingStack::start(&[]).await;
    let compute = HttpCompute::new(HttpComputeSettings::new(
        &stack.sim.base_url(),
        SecretText::new(COMPUTE_TOKEN),
    ))
    .unwrap();
    let use_case = stack.use_case(Arc::new(compute), Some(Arc::new(dns)));
    (stack, use_case)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_founding_with_powerdns_down_still_founds_and_says_why_dns_failed() {
    use plinth_domain::model::{ClusterRequest, OrgId};
    use plinth_domain::ports::repo::Repo;

    let server = PowerDnsServer::start();
    let dns = server.adapter_with_zone().await;
    server.script("stop");

    let (stack, use_case) = founding_with(dns).await;
    let org = OrgId::parse("org-a").unwrap();
    let founded = use_case
        .found(
            &org,
            ClusterRequest {
                control_plane_count: Some(1),
                ..ClusterRequest::default()
            }
            .validate(&use_case.settings().defaults)
            .unwrap(),
        )
        .await
        .expect("a DNS failure must not stop the founding");

    assert!(!founded.dns_configured);
    let why = founded.dns_error.unwrap();
    assert!(
        why.starts_with("DNS server unavailable: publishing records"),
        "{why}"
    );
    assert!(
        why.contains(&format!("127.0.0.1:{}", server.api_port)),
        "{why}"
    );
    // The cluster is founded all the same: committed, with its node.
    let details = stack
        .repo
        .find_cluster(&org, founded.cluster_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(details.nodes.len(), 1);
    assert_eq!(
        founded.suggested_dns_records[0].name,
        founded.control_plane_dns_name
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_founding_publishes_the_control_plane_name_in_powerdns() {
    use plinth_domain::model::{ClusterRequest, OrgId};

    let server = PowerDnsServer::start();
    let dns = server.adapter_with_zone().await;
    let (_stack, use_case) = founding_with(dns).await;
    let spec = ClusterRequest::default()
        .validate(&use_case.settings().defaults)
        .unwrap();
    let founded = use_case
        .found(&OrgId::parse("org-a").unwrap(), spec)
        .await
        .unwrap();
    assert!(founded.dns_configured, "{:?}", founded.dns_error);
    // Each node's public IPv4 (the compute service's pool), and each node's IPv6.
    let (status, a) = server.dig(&founded.control_plane_dns_name, "A");
    assert_eq!(status, "NOERROR");
    let mut expected: Vec<String> = founded
        .nodes
        .iter()
        .map(|n| n.addresses.public_ipv4.unwrap().to_string())
        .collect();
    expected.sort();
    assert_eq!(a, expected);
    assert_eq!(
        server.dig(&founded.control_plane_dns_name, "AAAA").1.len(),
        3
    );
}
