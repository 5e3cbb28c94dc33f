//! Settings, names, the UPDATE message, and how answers map to `DnsError` (against a scripted
//! UDP server that answers each update with a chosen RCODE; the real servers are in tests/).

#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hickory_proto::rr::DNSClass;
use plinth_domain::ports::Chain;
use serde_json::json;
use tokio::net::UdpSocket;

use super::*;

const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMyYg==";

/// A file holding `text`: one per distinct text, reused by every test and run (so nothing piles
/// up in the temporary directory), written whole before it appears.
fn secret_file(text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("plinth-rfc2136-test-secrets");
    std::fs::create_dir_all(&dir).unwrap();
    let name: String = text.bytes().map(|b| format!("{b:02x}")).collect();
    let path = dir.join(name);
    if !path.exists() {
        let partial = dir.join(format!("{}.{}", std::process::id(), rand::random::<u64>()));
        std::fs::write(&partial, text).unwrap();
        std::fs::rename(&partial, &path).unwrap();
    }
    path
}

fn settings(server: &str) -> Rfc2136Settings {
    Rfc2136Settings::new(server, "plinth-key", secret_file(SECRET))
}

fn setup_error(settings: Rfc2136Settings) -> SettingsError {
    match Rfc2136Dns::new(settings, "k8s.example.test") {
        Err(Rfc2136SetupError::Settings(e)) => e,
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_section_deserializes_with_its_defaults() {
    let s: Rfc2136Settings = serde_json::from_value(json!({
        "server": "127.0.0.1:53",
        "key_name": "plinth-key",
        "key_secret_file": "/etc/plinth/tsig.secret",
    }))
    .unwrap();
    assert_eq!(
        (
            s.transport,
            s.key_algorithm.as_str(),
            s.ttl,
            s.connect_timeout_ms,
            s.request_timeout_ms,
            s.max_attempts,
            s.fudge_secs
        ),
        (Transport::Tcp, "hmac-sha256", 60, 2000, 5000, 2, 300)
    );
    let udp: Rfc2136Settings = serde_json::from_value(json!({
        "server": "[::1]:53", "key_name": "k", "key_secret_file": "f", "transport": "udp",
    }))
    .unwrap();
    assert_eq!(udp.transport, Transport::Udp);
    let unknown = serde_json::from_value::<Rfc2136Settings>(json!({
        "server": "127.0.0.1:53", "key_name": "k", "key_secret_file": "f", "secret": "x",
    }))
    .unwrap_err();
    assert!(
        unknown.to_string().contains("unknown field `secret`"),
        "{unknown}"
    );
}

/// A change that spoils one setting.
type Spoil = Box<dyn Fn(&mut Rfc2136Settings)>;

#[test]
fn each_setting_that_cannot_work_is_named() {
    let cases: Vec<(&str, Spoil)> = vec![
        (
            "server",
            Box::new(|s| s.server = "dns.example.test:53".into()),
        ),
        ("server", Box::new(|s| s.server = "127.0.0.1".into())),
        ("key_name", Box::new(|s| s.key_name = String::new())),
        (
            "key_algorithm",
            Box::new(|s| s.key_algorithm = "hmac-md5".into()),
        ),
        (
            "key_algorithm",
            Box::new(|s| s.key_algorithm = "sha256".into()),
        ),
        (
            "key_secret_file",
            Box::new(|s| s.key_secret_file = "/nonexistent/tsig".into()),
        ),
        (
            "key_secret_file",
            Box::new(|s| s.key_secret_file = PathBuf::new()),
        ),
        (
            "key_secret_file",
            Box::new(|s| s.key_secret_file = secret_file("not base64!")),
        ),
        (
            "key_secret_file",
            Box::new(|s| s.key_secret_file = secret_file("c2hvcnQ=")),
        ),
        ("ttl", Box::new(|s| s.ttl = 0)),
        ("max_attempts", Box::new(|s| s.max_attempts = 0)),
        ("fudge_secs", Box::new(|s| s.fudge_secs = 0)),
        ("connect_timeout_ms", Box::new(|s| s.connect_timeout_ms = 0)),
        ("request_timeout_ms", Box::new(|s| s.request_timeout_ms = 0)),
    ];
    for (key, spoil) in cases {
        let mut s = settings("127.0.0.1:53");
        spoil(&mut s);
        let e = setup_error(s);
        assert_eq!(e.key, key, "{e}");
    }
    // The reasons say what is wrong, without the secret.
    let e = setup_error({
        let mut s = settings("127.0.0.1:53");
        s.key_secret_file = secret_file("c2hvcnQ=");
        s
    });
    assert!(e.reason.contains("5 bytes; at least 16"), "{e}");
    // Upper case and the other SHA-2 sizes are fine; a trailing newline in the file too.
    let mut s = settings("[::1]:5353");
    s.key_algorithm = "HMAC-SHA512".into();
    s.key_secret_file = secret_file(&format!("{SECRET}\n"));
    Rfc2136Dns::new(s, "k8s.example.test").unwrap();
}

#[test]
fn a_zone_that_is_not_a_domain_name_is_refused() {
    for zone in ["", ".", "a..b"] {
        assert!(
            matches!(
                Rfc2136Dns::new(settings("127.0.0.1:53"), zone),
                Err(Rfc2136SetupError::InvalidZone(_))
            ),
            "{zone:?}"
        );
    }
}

#[test]
fn debug_output_names_the_key_but_never_shows_its_secret() {
    let dns = Rfc2136Dns::new(settings("127.0.0.1:53"), "k8s.example.test").unwrap();
    let shown = format!("{dns:?}");
    assert!(shown.contains("plinth-key"), "{shown}");
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(!shown.contains("secret-secret"), "{shown}");
}

#[test]
fn only_names_of_the_zone_are_accepted_and_made_canonical() {
    let dns = Rfc2136Dns::new(settings("127.0.0.1:53"), "K8s.Example.Test").unwrap();
    assert_eq!(dns.zone(), "k8s.example.test.");
    assert_eq!(
        dns.name_in_zone("API.cluster-1.k8s.example.test")
            .unwrap()
            .to_string(),
        "api.cluster-1.k8s.example.test."
    );
    for outside in [
        "example.test",
        "evilk8s.example.test",
        "api.other.test",
        "a..k8s.example.test",
    ] {
        assert!(
            matches!(dns.name_in_zone(outside), Err(DnsError::Rejected(_))),
            "{outside}"
        );
    }
}

#[test]
fn an_upsert_is_one_update_that_deletes_both_rrsets_then_adds_the_addresses() {
    let dns = Rfc2136Dns::new(settings("127.0.0.1:53"), "k8s.example.test").unwrap();
    let name = dns.name_in_zone("api.k8s.example.test").unwrap();
    let message = dns.update_message(
        &name,
        Some(&AddressRecords {
            name: name.to_string(),
            ipv4: vec![Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)],
            ipv6: vec![Ipv6Addr::LOCALHOST],
        }),
    );
    assert_eq!(message.metadata.op_code, OpCode::Update);
    let zones = message.zones();
    assert_eq!(zones.len(), 1);
    assert_eq!(zones[0].name().to_string(), "k8s.example.test.");
    assert_eq!(zones[0].query_type(), RecordType::SOA);
    let updates: Vec<(String, DNSClass, u32, String)> = message
        .updates()
        .iter()
        .map(|r| (r.name.to_string(), r.dns_class, r.ttl, r.data.to_string()))
        .collect();
    let kinds: Vec<RecordType> = message.updates().iter().map(Record::record_type).collect();
    assert_eq!(
        kinds,
        [
            RecordType::A,
            RecordType::AAAA,
            RecordType::A,
            RecordType::A,
            RecordType::AAAA
        ]
    );
    assert_eq!(
        updates[0..2].iter().map(|u| (u.1, u.2)).collect::<Vec<_>>(),
        [(DNSClass::ANY, 0), (DNSClass::ANY, 0)],
        "the RRset deletions"
    );
    assert_eq!(
        updates[2..]
            .iter()
            .map(|u| (u.1, u.2, u.3.as_str()))
            .collect::<Vec<_>>(),
        [
            (DNSClass::IN, 60, "192.0.2.1"),
            (DNSClass::IN, 60, "192.0.2.2"),
            (DNSClass::IN, 60, "::1")
        ]
    );
    assert!(updates.iter().all(|u| u.0 == "api.k8s.example.test."));
    // A deletion is the two RRset deletions alone.
    assert_eq!(dns.update_message(&name, None).updates().len(), 2);
}

/// A UDP server on loopback answering every update with `code`, unsigned; counts the updates.
async fn scripted_server(code: ResponseCode) -> (String, Arc<AtomicUsize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap().to_string();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        let mut buffer = vec![0; 4096];
        while let Ok((len, from)) = socket.recv_from(&mut buffer).await {
            let request = Message::from_vec(&buffer[..len]).unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            let answer = Message::error_msg(request.metadata.id, OpCode::Update, code);
            socket
                .send_to(&answer.to_vec().unwrap(), from)
                .await
                .unwrap();
        }
    });
    (address, seen)
}

async fn upsert_against(code: ResponseCode) -> (DnsError, usize) {
    let (address, seen) = scripted_server(code).await;
    let mut s = settings(&address);
    s.transport = Transport::Udp;
    let dns = Rfc2136Dns::new(s, "k8s.example.test").unwrap();
    let err = dns
        .upsert_address_records(&AddressRecords {
            name: "api.k8s.example.test".into(),
            ipv4: vec![Ipv4Addr::new(192, 0, 2, 1)],
            ipv6: vec![],
        })
        .await
        .unwrap_err();
    (err, seen.load(Ordering::SeqCst))
}

#[tokio::test]
async fn answers_map_to_the_ports_errors_and_only_server_failures_are_retried() {
    let (err, tries) = upsert_against(ResponseCode::Refused).await;
    assert!(matches!(err, DnsError::Unauthorized), "{err}");
    assert_eq!(tries, 1);

    let (err, tries) = upsert_against(ResponseCode::NotAuth).await;
    let DnsError::ZoneNotFound(zone) = &err else {
        panic!("{err}")
    };
    assert!(zone.starts_with("k8s.example.test."), "{zone}");
    assert_eq!(tries, 1);

    let (err, tries) = upsert_against(ResponseCode::ServFail).await;
    assert!(matches!(err, DnsError::Unavailable(_)), "{err}");
    assert_eq!(
        Chain(&err).to_string(),
        "DNS server unavailable: publishing records: the server answered SERVFAIL"
    );
    assert_eq!(tries, 2, "SERVFAIL is retried once");

    let (err, tries) = upsert_against(ResponseCode::NotZone).await;
    assert!(matches!(err, DnsError::Rejected(_)), "{err}");
    assert_eq!(tries, 1);

    // A NOERROR without the server's signature does not count as done.
    let (err, _) = upsert_against(ResponseCode::NoError).await;
    assert!(matches!(err, DnsError::Unexpected(_)), "{err}");
    assert!(
        Chain(&err)
            .to_string()
            .contains("TSIG signature does not verify"),
        "{}",
        Chain(&err)
    );
}

#[tokio::test]
async fn nothing_listening_is_unavailable_over_tcp_and_a_timeout_over_udp() {
    // A port nobody listens on: TCP is refused at once.
    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut s = settings(&unused);
    s.request_timeout_ms = 300;
    let dns = Rfc2136Dns::new(s.clone(), "k8s.example.test").unwrap();
    let err = dns
        .delete_address_records("api.k8s.example.test")
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::Unavailable(_)), "{err}");
    assert!(
        Chain(&err).to_string().starts_with(&format!(
            "DNS server unavailable: deleting records ({unused} over TCP): "
        )),
        "{}",
        Chain(&err)
    );

    // A UDP server that never answers: the bound, twice.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.server = silent.local_addr().unwrap().to_string();
    s.transport = Transport::Udp;
    let dns = Rfc2136Dns::new(s, "k8s.example.test").unwrap();
    let started = std::time::Instant::now();
    let err = dns
        .delete_address_records("api.k8s.example.test")
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::Timeout(_)), "{err}");
    assert!(
        Chain(&err).to_string().contains("no answer within 300ms"),
        "{}",
        Chain(&err)
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}
