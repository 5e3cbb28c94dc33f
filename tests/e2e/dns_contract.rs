//! The `Dns` port's contract: one suite, run over every adapter against the real server it
//! speaks to — `plinth-http-dns` on PowerDNS (its HTTP API), `plinth-rfc2136-dns` (RFC 2136
//! updates signed with TSIG) on BIND9 and on Knot DNS — and checked with `dig` against what the
//! server answers. A new adapter is added by implementing [`ServerUnderTest`] for its server and
//! one line at the bottom; it is done when the whole suite passes.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plinth_domain::model::{ClusterRequest, OrgId, SecretText};
use plinth_domain::ports::dns::{AddressRecords, Dns, DnsError};
use plinth_domain::ports::repo::Repo;
use plinth_http_compute::{HttpCompute, HttpComputeSettings};
use plinth_http_dns::{PowerDns, PowerDnsSettings};
use plinth_rfc2136_dns::{Rfc2136Dns, Rfc2136Settings};
use plinth_testkit::pdns::PowerDnsServer;
use plinth_testkit::rfc2136::{Rfc2136Server, TSIG_KEY_NAME};
use plinth_testkit::{COMPUTE_TOKEN, FoundingStack, ZONE};

/// A real DNS server, started for one test, and the adapter that publishes in it.
trait ServerUnderTest: Sized {
    /// The adapter with the deployment's zone ready, and a 800 ms bound per attempt.
    async fn adapter(&self) -> Arc<dyn Dns>;
    /// The same adapter with credentials the server does not accept.
    fn adapter_with_wrong_credentials(&self) -> Arc<dyn Dns>;
    /// What the server answers over DNS: status and sorted answers.
    fn dig(&self, name: &str, kind: &str) -> (String, Vec<String>);
    fn stop(&self);
}

impl ServerUnderTest for PowerDnsServer {
    async fn adapter(&self) -> Arc<dyn Dns> {
        let dns = PowerDns::new(powerdns_settings(self), ZONE).unwrap();
        dns.ensure_zone().await.unwrap();
        Arc::new(dns)
    }

    fn adapter_with_wrong_credentials(&self) -> Arc<dyn Dns> {
        let mut settings = powerdns_settings(self);
        settings.api_key = Some(SecretText::new("not-the-key"));
        Arc::new(PowerDns::new(settings, ZONE).unwrap())
    }

    fn dig(&self, name: &str, kind: &str) -> (String, Vec<String>) {
        PowerDnsServer::dig(self, name, kind)
    }

    fn stop(&self) {
        self.script("stop");
    }
}

fn powerdns_settings(server: &PowerDnsServer) -> PowerDnsSettings {
    let mut settings =
        PowerDnsSettings::new(&server.api_url(), SecretText::new(server.api_key.clone()));
    settings.request_timeout_ms = 800;
    settings.nameservers = vec!["ns1.plinth.test".to_owned()];
    settings
}

impl ServerUnderTest for Rfc2136Server {
    async fn adapter(&self) -> Arc<dyn Dns> {
        Arc::new(Rfc2136Dns::new(rfc2136_settings(self), ZONE).unwrap())
    }

    fn adapter_with_wrong_credentials(&self) -> Arc<dyn Dns> {
        // The right key name with another secret: NOTAUTH, TSIG error BADSIG.
        let other = std::env::temp_dir().join(format!("plinth-wrong-tsig-{}", self.dns_port));
        std::fs::write(&other, "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldC13cm9uZyE=").unwrap();
        let mut settings = rfc2136_settings(self);
        settings.key_secret_file = other.clone();
        let dns = Rfc2136Dns::new(settings, ZONE).unwrap();
        std::fs::remove_file(other).unwrap();
        Arc::new(dns)
    }

    fn dig(&self, name: &str, kind: &str) -> (String, Vec<String>) {
        Rfc2136Server::dig(self, name, kind)
    }

    fn stop(&self) {
        self.script("stop");
    }
}

fn rfc2136_settings(server: &Rfc2136Server) -> Rfc2136Settings {
    let mut settings = Rfc2136Settings::new(&server.address(), TSIG_KEY_NAME, server.key_file());
    settings.request_timeout_ms = 800;
    settings
}

const NAME: &str = "api.cluster-1.k8s.plinth.test";

fn records(v4: &[&str], v6: &[&str]) -> AddressRecords {
    AddressRecords {
        name: NAME.to_owned(),
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

fn found(status: &str, answers: &[&str]) -> (String, Vec<String>) {
    (
        status.to_owned(),
        answers.iter().map(|a| (*a).to_owned()).collect(),
    )
}

async fn publishes_then_replaces_without_stale_records_then_deletes<S: ServerUnderTest>(server: S) {
    let dns = server.adapter().await;
    dns.upsert_address_records(&records(&["192.0.2.10", "192.0.2.11"], &["2001:db8::10"]))
        .await
        .unwrap();
    assert_eq!(
        server.dig(NAME, "A"),
        found("NOERROR", &["192.0.2.10", "192.0.2.11"])
    );
    assert_eq!(
        server.dig(NAME, "AAAA"),
        found("NOERROR", &["2001:db8::10"])
    );

    // Both families are replaced: the A set changes, the AAAA set goes.
    dns.upsert_address_records(&records(&["192.0.2.12"], &[]))
        .await
        .unwrap();
    assert_eq!(server.dig(NAME, "A"), found("NOERROR", &["192.0.2.12"]));
    assert_eq!(server.dig(NAME, "AAAA"), found("NOERROR", &[]));

    dns.delete_address_records(NAME).await.unwrap();
    assert_eq!(server.dig(NAME, "A").0, "NXDOMAIN");
    assert_eq!(server.dig(NAME, "AAAA").0, "NXDOMAIN");
}

async fn repeating_a_call_changes_nothing<S: ServerUnderTest>(server: S) {
    let dns = server.adapter().await;
    let set = records(&["192.0.2.20", "192.0.2.21", "192.0.2.22"], &[]);
    for _ in 0..2 {
        dns.upsert_address_records(&set).await.unwrap();
        assert_eq!(
            server.dig(NAME, "A"),
            found("NOERROR", &["192.0.2.20", "192.0.2.21", "192.0.2.22"])
        );
    }
    for _ in 0..2 {
        dns.delete_address_records(NAME).await.unwrap();
        assert_eq!(server.dig(NAME, "A").0, "NXDOMAIN");
    }
}

async fn wrong_credentials_are_unauthorized_and_change_nothing<S: ServerUnderTest>(server: S) {
    server
        .adapter()
        .await
        .upsert_address_records(&records(&["192.0.2.30"], &[]))
        .await
        .unwrap();
    let intruder = server.adapter_with_wrong_credentials();
    let err = intruder
        .upsert_address_records(&records(&["198.51.100.1"], &[]))
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::Unauthorized), "{err:?}");
    let err = intruder.delete_address_records(NAME).await.unwrap_err();
    assert!(matches!(err, DnsError::Unauthorized), "{err:?}");
    assert_eq!(server.dig(NAME, "A"), found("NOERROR", &["192.0.2.30"]));
}

async fn a_name_outside_the_zone_is_rejected<S: ServerUnderTest>(server: S) {
    let dns = server.adapter().await;
    let mut outside = records(&["192.0.2.40"], &[]);
    outside.name = "api.elsewhere.test".to_owned();
    let err = dns.upsert_address_records(&outside).await.unwrap_err();
    assert!(matches!(err, DnsError::Rejected(_)), "{err:?}");
    let err = dns
        .delete_address_records("api.elsewhere.test")
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::Rejected(_)), "{err:?}");
}

async fn a_stopped_server_is_unavailable_within_the_bounds<S: ServerUnderTest>(server: S) {
    let dns = server.adapter().await;
    server.stop();
    let started = Instant::now();
    let err = dns
        .upsert_address_records(&records(&["192.0.2.50"], &[]))
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// A founding stack whose use case founds through the HTTP compute adapter and `dns`.
async fn founding_with(dns: Arc<dyn Dns>) -> (FoundingStack, plinth_domain::FoundCluster) {
    let stack = FoundingStack::start(&[]).await;
    let compute = HttpCompute::new(HttpComputeSettings::new(
        &stack.sim.base_url(),
        SecretText::new(COMPUTE_TOKEN),
    ))
    .unwrap();
    let use_case = stack.use_case(Arc::new(compute), Some(dns));
    (stack, use_case)
}

async fn a_founding_publishes_the_control_plane_name<S: ServerUnderTest>(server: S) {
    let (_stack, use_case) = founding_with(server.adapter().await).await;
    let spec = ClusterRequest::default()
        .validate(&use_case.settings().defaults)
        .unwrap();
    let founded = use_case
        .found(&OrgId::parse("org-a").unwrap(), spec)
        .await
        .unwrap();
    assert!(founded.dns_configured, "{:?}", founded.dns_error);
    // Each node's public IPv4 (the compute service's pool), and each node's IPv6.
    let mut expected: Vec<String> = founded
        .nodes
        .iter()
        .map(|n| n.addresses.public_ipv4.unwrap().to_string())
        .collect();
    expected.sort();
    assert_eq!(
        server.dig(&founded.control_plane_dns_name, "A"),
        ("NOERROR".to_owned(), expected)
    );
    assert_eq!(
        server.dig(&founded.control_plane_dns_name, "AAAA").1.len(),
        3
    );
}

async fn a_founding_with_the_server_down_still_founds_and_says_why<S: ServerUnderTest>(server: S) {
    let dns = server.adapter().await;
    server.stop();
    let (stack, use_case) = founding_with(dns).await;
    let org = OrgId::parse("org-a").unwrap();
    let spec = ClusterRequest {
        control_plane_count: Some(1),
        ..ClusterRequest::default()
    }
    .validate(&use_case.settings().defaults)
    .unwrap();
    let founded = use_case
        .found(&org, spec)
        .await
        .expect("a DNS failure must not stop the founding");
    assert!(!founded.dns_configured);
    let why = founded.dns_error.unwrap();
    assert!(
        why.starts_with("DNS server unavailable: publishing records"),
        "{why}"
    );
    // The cluster is founded all the same: committed, with its node, and the records to publish
    // by hand are in the answer.
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

/// The whole suite over the servers `$start` starts, as a module of tests.
macro_rules! contract_suite {
    ($module:ident, $start:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread")]
            async fn publishes_then_replaces_without_stale_records_then_deletes() {
                super::publishes_then_replaces_without_stale_records_then_deletes($start).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn repeating_a_call_changes_nothing() {
                super::repeating_a_call_changes_nothing($start).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn wrong_credentials_are_unauthorized_and_change_nothing() {
                super::wrong_credentials_are_unauthorized_and_change_nothing($start).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn a_name_outside_the_zone_is_rejected() {
                super::a_name_outside_the_zone_is_rejected($start).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn a_stopped_server_is_unavailable_within_the_bounds() {
                super::a_stopped_server_is_unavailable_within_the_bounds($start).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn a_founding_publishes_the_control_plane_name() {
                super::a_founding_publishes_the_control_plane_name($start).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn a_founding_with_the_server_down_still_founds_and_says_why() {
                super::a_founding_with_the_server_down_still_founds_and_says_why($start).await;
            }
        }
    };
}

contract_suite!(powerdns_http_api, PowerDnsServer::start());
contract_suite!(bind9_rfc2136, Rfc2136Server::bind9());
contract_suite!(knot_rfc2136, Rfc2136Server::knot());
