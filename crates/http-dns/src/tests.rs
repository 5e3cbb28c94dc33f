//! Settings, names, the PATCH body, and how answers and transport failures map to `DnsError`.

#![allow(clippy::unwrap_used)]

use plinth_domain::model::SecretText;
use plinth_domain::ports::Chain;
use serde_json::json;

use super::*;

fn good() -> PowerDnsSettings {
    PowerDnsSettings::new("http://127.0.0.1:1", SecretText::new("k"))
}

fn dns(zone: &str) -> Result<PowerDns, PowerDnsSetupError> {
    PowerDns::new(good(), zone)
}

#[test]
fn names_are_made_canonical() {
    assert_eq!(canonical("API.K8s.Example"), "api.k8s.example.");
    assert_eq!(canonical("a.b."), "a.b.");
}

#[test]
fn only_names_of_the_zone_are_accepted() {
    let dns = dns("k8s.example.test").unwrap();
    assert_eq!(dns.zone(), "k8s.example.test.");
    assert_eq!(
        dns.name_in_zone("api.cluster-1.K8S.example.test").unwrap(),
        "api.cluster-1.k8s.example.test."
    );
    for outside in [
        "example.test",
        "evilk8s.example.test",
        "api.other.test",
        "a..k8s.example.test",
    ] {
        assert!(dns.name_in_zone(outside).is_err(), "{outside}");
    }
}

#[test]
fn the_section_deserializes_with_its_defaults() {
    let s: PowerDnsSettings = serde_json::from_value(json!({
        "api_url": "http://127.0.0.1:18081/",
        "api_key": "s3cret-key",
    }))
    .unwrap();
    assert_eq!(
        (
            s.server_id.as_str(),
            s.ttl,
            s.connect_timeout_ms,
            s.request_timeout_ms,
            s.max_attempts,
            s.ensure_zone,
            s.nameservers.len()
        ),
        ("localhost", 60, 2000, 5000, 2, false, 0)
    );
    let made = PowerDnsSettings::new("http://127.0.0.1:18081/", SecretText::new("s3cret-key"));
    assert_eq!(format!("{made:?}"), format!("{s:?}"));
    assert!(!format!("{s:?}").contains("s3cret"), "Debug shows the key");

    let dns = PowerDns::new(s, "z.test").unwrap();
    assert!(!dns.ensure_zone_at_start());
    assert!(
        !format!("{dns:?}").contains("s3cret"),
        "Debug shows the key"
    );
    assert_eq!(dns.http.base_url(), "http://127.0.0.1:18081");

    // The keys the configuration file writes, with the zone creation on.
    let s: PowerDnsSettings = serde_json::from_value(json!({
        "api_url": "http://127.0.0.1:18081",
        "server_id": "localhost",
        "api_key": "",
        "api_key_file": "",
        "ttl": 30,
        "request_timeout_ms": 1000,
        "ensure_zone": true,
        "nameservers": ["ns1.z.test"],
    }))
    .unwrap();
    assert_eq!(s.check().unwrap_err().key, "api_key", "neither key is set");
    let s = PowerDnsSettings {
        api_key: Some(SecretText::new("k")),
        ..s
    };
    let dns = PowerDns::new(s, "z.test").unwrap();
    assert!(dns.ensure_zone_at_start());
    assert_eq!(dns.nameservers, ["ns1.z.test"]);
    assert_eq!(dns.ttl, 30);

    let err = serde_json::from_value::<PowerDnsSettings>(json!({
        "api_url": "http://x",
        "zone": "z.test",
    }))
    .unwrap_err();
    assert!(err.to_string().contains("zone"), "{err}");
}

#[test]
fn bad_settings_name_their_key_and_a_bad_zone_names_the_zone() {
    let Err(PowerDnsSetupError::InvalidZone(zone)) = dns("not a zone") else {
        panic!("a bad zone must be refused")
    };
    assert_eq!(zone, "not a zone");
    assert!(dns("-bad.test").is_err());

    let key = |change: fn(&mut PowerDnsSettings)| {
        let mut s = good();
        change(&mut s);
        let Err(PowerDnsSetupError::Settings(e)) = PowerDns::new(s.clone(), "z.test") else {
            panic!("{s:?} must be refused")
        };
        assert_eq!(s.check().unwrap_err(), e);
        e.key
    };
    assert_eq!(key(|s| s.api_url = "ftp://x".into()), "api_url");
    assert_eq!(key(|s| s.server_id = String::new()), "server_id");
    assert_eq!(key(|s| s.server_id = "a/b".into()), "server_id");
    assert_eq!(key(|s| s.api_key = Some(SecretText::new(""))), "api_key");
    assert_eq!(
        key(|s| s.api_key = Some(SecretText::new("a\r\nb"))),
        "api_key"
    );
    assert_eq!(
        key(|s| s.api_key_file = Some("/nonexistent/plinth-key".into())),
        "api_key",
        "both given"
    );
    assert_eq!(key(|s| s.ttl = 0), "ttl");
    assert_eq!(key(|s| s.connect_timeout_ms = 0), "connect_timeout_ms");
    assert_eq!(key(|s| s.request_timeout_ms = 0), "request_timeout_ms");
    assert_eq!(key(|s| s.max_attempts = 0), "max_attempts");
    assert_eq!(
        key(|s| s.nameservers = vec!["ns1.z.test".into(), "bad ns".into()]),
        "nameservers"
    );
    assert_eq!(
        good().check().map_err(|e| e.within("dns").key),
        Ok(()),
        "the defaults work"
    );
}

#[test]
fn the_api_key_may_come_from_a_file() {
    let file = std::env::temp_dir().join(format!("plinth-pdns-key-{}", std::process::id()));
    std::fs::write(&file, "from-a-file\n").unwrap();
    let mut s = good();
    s.api_key = None;
    s.api_key_file = Some(file.clone());
    let resolved = s.resolve().unwrap();
    assert_eq!(resolved.api_key.to_str().unwrap(), "from-a-file");
    assert!(resolved.api_key.is_sensitive());
    std::fs::remove_file(&file).unwrap();
    assert_eq!(s.check().unwrap_err().key, "api_key_file");
}

#[test]
fn the_patch_replaces_each_family_and_deletes_an_empty_one() {
    let name = "api.z.test.";
    let patch = Patch {
        rrsets: vec![
            RrSet {
                name,
                kind: "A",
                changetype: "REPLACE",
                ttl: Some(60),
                records: records(&[Ipv4Addr::new(192, 0, 2, 1)]),
            },
            RrSet {
                name,
                kind: "AAAA",
                changetype: "DELETE",
                ttl: None,
                records: vec![],
            },
        ],
    };
    assert_eq!(
        serde_json::to_value(&patch).unwrap(),
        json!({"rrsets": [
            {"name": "api.z.test.", "type": "A", "changetype": "REPLACE", "ttl": 60,
             "records": [{"content": "192.0.2.1", "disabled": false}]},
            {"name": "api.z.test.", "type": "AAAA", "changetype": "DELETE"}
        ]})
    );
}

fn answer(status: u16, body: &str) -> Answer {
    Answer {
        status: StatusCode::from_u16(status).unwrap(),
        body: body.as_bytes().to_vec(),
    }
}

#[test]
fn statuses_map_to_the_ports_errors_with_powerdns_words() {
    let dns = dns("z.test").unwrap();
    let what = "publishing records";
    for status in [401, 403] {
        let e = dns.failure(what, &answer(status, "Unauthorized"));
        assert!(matches!(e, DnsError::Unauthorized), "{e}");
    }
    let e = dns.failure(
        what,
        &answer(404, r#"{"error": "Could not find domain 'z.test.'"}"#),
    );
    let DnsError::ZoneNotFound(m) = &e else {
        panic!("{e}")
    };
    assert_eq!(m, "z.test. (Could not find domain 'z.test.')");
    let e = dns.failure(
        what,
        &answer(
            422,
            r#"{"error": "RRset api.z.test. IN A: Conflicts with CNAME"}"#,
        ),
    );
    let DnsError::Rejected(m) = &e else {
        panic!("{e}")
    };
    assert_eq!(
        m,
        "publishing records: RRset api.z.test. IN A: Conflicts with CNAME"
    );
    let e = dns.failure(what, &answer(500, "Internal Server Error\n"));
    assert_eq!(
        Chain(&e).to_string(),
        "DNS server unavailable: publishing records: Internal Server Error (500 Internal Server Error)"
    );
    let e = dns.failure(what, &answer(301, ""));
    assert!(matches!(e, DnsError::Unexpected(_)), "{e}");

    let e = transport(what, TransportError::TooLarge { limit: 7 });
    assert_eq!(
        Chain(&e).to_string(),
        "unexpected DNS failure: publishing records: the answer's body is larger than 7 bytes"
    );
}
