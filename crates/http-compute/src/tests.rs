//! Settings, and how answers and transport failures map to `ComputeError`.

#![allow(clippy::unwrap_used)]

use std::error::Error as _;

use plinth_domain::model::SecretText;
use plinth_domain::ports::Chain;
use serde_json::json;

use super::*;

fn settings(value: serde_json::Value) -> Result<HttpComputeSettings, serde_json::Error> {
    serde_json::from_value(value)
}

fn key_of(settings: &HttpComputeSettings) -> String {
    settings.check().unwrap_err().key
}

#[test]
fn the_section_deserializes_with_its_defaults() {
    let s =
        settings(json!({"base_url": "http://127.0.0.1:8081/", "token": "t0k3n-t0k3n"})).unwrap();
    assert_eq!(
        (
            s.connect_timeout_ms,
            s.request_timeout_ms,
            s.max_attempts,
            s.backoff_base_ms,
            s.backoff_max_ms
        ),
        (2000, 10_000, 3, 100, 2000)
    );
    assert_eq!(s.token.as_ref().unwrap().expose(), "t0k3n-t0k3n");
    assert!(s.token_file.is_none());
    s.check().unwrap();
    let made = HttpComputeSettings::new("http://127.0.0.1:8081/", SecretText::new("t0k3n-t0k3n"));
    assert_eq!(format!("{made:?}"), format!("{s:?}"));
    assert!(!format!("{s:?}").contains("t0k3n"), "Debug shows the token");

    let resolved = s.resolve().unwrap();
    assert_eq!(resolved.base_url, "http://127.0.0.1:8081");
    assert!(resolved.authorization.is_sensitive());
    assert_eq!(resolved.retry.max_attempts, 3);
}

#[test]
fn an_unknown_key_is_refused() {
    let err = settings(json!({"base_url": "http://x", "tokn": "t"})).unwrap_err();
    assert!(err.to_string().contains("tokn"), "{err}");
}

#[test]
fn each_bad_key_is_named_relative_to_the_section() {
    let good = HttpComputeSettings::new("http://compute.test", SecretText::new("token"));
    let bad = |change: fn(&mut HttpComputeSettings)| {
        let mut s = good.clone();
        change(&mut s);
        key_of(&s)
    };
    assert_eq!(
        bad(|s| s.base_url = "ftp://compute.test".into()),
        "base_url"
    );
    assert_eq!(bad(|s| s.token = None), "token");
    assert_eq!(bad(|s| s.token = Some(SecretText::new(""))), "token");
    assert_eq!(
        bad(|s| s.token_file = Some("/nonexistent/plinth-token".into())),
        "token",
        "both given"
    );
    assert_eq!(bad(|s| s.token = Some(SecretText::new("a\nb"))), "token");
    assert_eq!(bad(|s| s.connect_timeout_ms = 0), "connect_timeout_ms");
    assert_eq!(bad(|s| s.request_timeout_ms = 0), "request_timeout_ms");
    assert_eq!(bad(|s| s.max_attempts = 0), "max_attempts");
    assert_eq!(bad(|s| s.backoff_base_ms = 0), "backoff_base_ms");
    assert_eq!(bad(|s| s.backoff_max_ms = 50), "backoff_max_ms");

    let mut s = good.clone();
    s.base_url = "nope".into();
    let Err(HttpComputeSetupError::Settings(e)) = HttpCompute::new(s) else {
        panic!("a bad base_url must be a settings error")
    };
    assert_eq!(e.within("compute").key, "compute.base_url");
}

#[test]
fn the_token_may_come_from_a_file() {
    let file = std::env::temp_dir().join(format!("plinth-compute-token-{}", std::process::id()));
    std::fs::write(&file, "from-a-file\n").unwrap();
    let s = settings(json!({"base_url": "http://x", "token": "", "token_file": file})).unwrap();
    let resolved = s.resolve().unwrap();
    assert_eq!(
        resolved.authorization.to_str().unwrap(),
        "Bearer from-a-file"
    );
    HttpCompute::new(s).unwrap();
    std::fs::remove_file(&file).unwrap();

    let s = settings(json!({"base_url": "http://x", "token_file": file})).unwrap();
    assert_eq!(key_of(&s), "token_file");
}

fn answer(status: u16, body: &str) -> Answer {
    Answer {
        status: StatusCode::from_u16(status).unwrap(),
        body: body.as_bytes().to_vec(),
    }
}

#[test]
fn statuses_map_to_the_ports_errors_with_the_services_words() {
    let problem = |detail: &str| json!({"title": "t", "status": 0, "detail": detail}).to_string();
    let e = failure(
        "reading a subnet",
        &answer(404, &problem("subnet subnet-x does not exist")),
    );
    let ComputeError::NotFound(m) = &e else {
        panic!("{e}")
    };
    assert_eq!(m, "reading a subnet: subnet subnet-x does not exist");
    let e = failure(
        "deleting a security group",
        &answer(409, &problem("in use by vm-1")),
    );
    assert!(
        matches!(&e, ComputeError::Conflict(m) if m.ends_with("in use by vm-1")),
        "{e}"
    );
    for status in [400, 422] {
        let e = failure("creating a VM", &answer(status, &problem("unknown image")));
        assert!(
            matches!(&e, ComputeError::Rejected(m) if m == "creating a VM: unknown image"),
            "{e}"
        );
    }
    for (status, reason) in [(401, "401 Unauthorized"), (403, "403 Forbidden")] {
        let e = failure(
            "creating a VM",
            &answer(status, &problem("a valid bearer service token is required")),
        );
        let ComputeError::Unauthorized(m) = &e else {
            panic!("{status}: {e}")
        };
        assert_eq!(
            m,
            &format!("creating a VM: a valid bearer service token is required ({reason})")
        );
        assert!(
            e.to_string()
                .starts_with("the compute service refused plinth's credentials: "),
            "{e}"
        );
    }
    for status in [429, 500, 503] {
        let e = failure("reading a VM", &answer(status, "busy"));
        assert!(matches!(e, ComputeError::Unavailable(_)), "{e}");
        assert!(
            Chain(&e)
                .to_string()
                .starts_with("compute service unavailable: reading a VM: busy (")
        );
    }
    let e = failure("reading a VM", &answer(302, ""));
    assert!(matches!(e, ComputeError::Unexpected(_)), "{e}");
    assert_eq!(
        Chain(&e).to_string(),
        "unexpected compute failure: reading a VM: 302 Found (302 Found)"
    );
}

#[test]
fn a_409_is_capacity_exhausted_only_when_its_problem_type_says_so() {
    let problem = |kind: &str, detail: &str| {
        json!({"type": kind, "title": "Conflict", "status": 409, "detail": detail}).to_string()
    };
    let exhausted = [
        "https://plinth.dev/problems/compute/capacity-exhausted",
        "https://compute.example/errors/capacity-exhausted",
        "/capacity-exhausted",
    ];
    for kind in exhausted {
        let e = failure(
            "creating a VM",
            &answer(
                409,
                &problem(kind, "subnet s (10.0.0.0/29) has no free IPv4 address left"),
            ),
        );
        let ComputeError::CapacityExhausted(m) = &e else {
            panic!("{kind}: {e}")
        };
        assert_eq!(
            m,
            "creating a VM: subnet s (10.0.0.0/29) has no free IPv4 address left"
        );
    }
    // Any other 409 — in use, untyped, a look-alike type, no body — is a Conflict, with the words.
    for body in [
        problem(
            "https://plinth.dev/problems/compute/in-use",
            "security group sg-1 is still used by vm-1",
        ),
        problem("about:blank", "security group sg-1 is still used by vm-1"),
        problem(
            "https://x/capacity-exhausted-soon",
            "security group sg-1 is still used by vm-1",
        ),
        problem(
            "https://x/capacity-exhausted/not",
            "security group sg-1 is still used by vm-1",
        ),
        json!({"type": 7, "detail": "security group sg-1 is still used by vm-1"}).to_string(),
        json!({"detail": "security group sg-1 is still used by vm-1"}).to_string(),
        "security group sg-1 is still used by vm-1".to_owned(),
    ] {
        let e = failure("deleting a security group", &answer(409, &body));
        let ComputeError::Conflict(m) = &e else {
            panic!("{body}: {e}")
        };
        assert_eq!(
            m, "deleting a security group: security group sg-1 is still used by vm-1",
            "{body}"
        );
    }
    // The type counts only on a 409.
    let e = failure(
        "creating a VM",
        &answer(
            422,
            &problem("https://x/capacity-exhausted", "unknown image"),
        ),
    );
    assert!(matches!(e, ComputeError::Rejected(_)), "{e}");
}

fn subnet_body(owner: &str) -> SubnetBody {
    serde_json::from_value(json!({
        "id": "subnet-b", "ipv4_cidr": "10.0.0.0/24", "ipv6_cidr": null, "owner": owner,
    }))
    .unwrap()
}

fn group_body(owner: &str) -> SecurityGroupBody {
    serde_json::from_value(json!({
        "id": "sg-1", "name": "n", "owner": owner, "tags": {}, "created_at": "2026-11-26T12:00:00Z",
    }))
    .unwrap()
}

#[test]
fn owners_are_read_as_the_ports_resource_owners() {
    let org_b = ResourceOwner::Org(plinth_domain::model::OrgId::parse("org-b").unwrap());
    let subnet = subnet_from("reading a subnet", subnet_body("org-b")).unwrap();
    assert_eq!(subnet.owner, org_b);
    assert_eq!(subnet.ipv4_cidr.to_string(), "10.0.0.0/24");
    assert!(subnet.ipv6_cidr.is_none());
    let subnet = subnet_from("reading a subnet", subnet_body("shared")).unwrap();
    assert_eq!(subnet.owner, ResourceOwner::Shared);

    let group = security_group_from("reading a security group", group_body("org-b")).unwrap();
    assert_eq!((group.id.as_str(), &group.owner), ("sg-1", &org_b));
    let group = security_group_from("reading a security group", group_body("shared")).unwrap();
    assert_eq!(group.owner, ResourceOwner::Shared);
}

#[test]
fn an_owner_plinth_cannot_read_is_unexpected() {
    for bad in ["", "org b", "org/b"] {
        let e = subnet_from("reading a subnet", subnet_body(bad)).unwrap_err();
        assert!(matches!(e, ComputeError::Unexpected(_)), "{bad:?}: {e}");
        let why = Chain(&e).to_string();
        assert!(
            why.starts_with(&format!(
                "unexpected compute failure: reading a subnet: the owner of subnet-b ({bad:?}) is \
                 neither \"shared\" nor an organization id: "
            )),
            "{why}"
        );
        let e = security_group_from("reading a security group", group_body(bad)).unwrap_err();
        assert!(matches!(e, ComputeError::Unexpected(_)), "{bad:?}: {e}");
        assert!(
            Chain(&e).to_string().contains("the owner of sg-1"),
            "{}",
            Chain(&e)
        );
    }
    // An answer without an owner is not understood.
    let Err(e) = understood::<SubnetBody>(
        "reading a subnet",
        &answer(200, r#"{"id": "subnet-b", "ipv4_cidr": "10.0.0.0/24"}"#),
    ) else {
        panic!("a subnet without an owner must not be understood")
    };
    assert!(
        Chain(&e).to_string().contains("missing field `owner`"),
        "{}",
        Chain(&e)
    );
}

#[test]
fn a_group_is_sent_with_its_owner() {
    let tags = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
    let body = NewSecurityGroupBody {
        name: "cp",
        owner: "org-a",
        tags: &tags,
    };
    assert_eq!(
        serde_json::to_value(&body).unwrap(),
        json!({"name": "cp", "owner": "org-a", "tags": {"k": "v"}})
    );
}

#[test]
fn transport_failures_and_unreadable_answers_keep_their_cause() {
    let e = transport("reading a VM", TransportError::TooLarge { limit: 1 });
    assert!(matches!(e, ComputeError::Unexpected(_)), "{e}");
    assert_eq!(
        Chain(&e).to_string(),
        "unexpected compute failure: reading a VM: the answer's body is larger than 1 bytes"
    );

    let Err(e) = understood::<IdBody>("creating a VM", &answer(201, "{}")) else {
        panic!("an answer without an id must not be understood")
    };
    assert!(matches!(e, ComputeError::Unexpected(_)), "{e}");
    let cause = e.source().unwrap();
    assert_eq!(
        cause.to_string(),
        "creating a VM: the compute service's answer is not understood"
    );
    assert!(
        cause
            .source()
            .unwrap()
            .to_string()
            .contains("missing field `id`")
    );
}

#[test]
fn a_tag_is_sent_percent_encoded_as_one_parameter() {
    assert_eq!(
        tag_query("plinth.io/cluster-id", "c-1"),
        "tag=plinth.io%2Fcluster-id%3Dc-1"
    );
    assert_eq!(
        tag_query("k", "a=b&c+d é"),
        "tag=k%3Da%3Db%26c%2Bd%20%C3%A9"
    );
    assert_eq!(tag_query("k", ""), "tag=k%3D");
}

fn listed(items: serde_json::Value) -> Vec<TaggedBody> {
    serde_json::from_value::<VmListBody>(json!({ "vms": items }))
        .unwrap()
        .vms
}

#[test]
fn a_listing_becomes_tagged_resources() {
    let items = listed(json!([
        {"id": "vm-2", "name": "n", "tags": {"op": "o-1", "role": "cp"}, "created_at": "2026-11-26T12:00:01.5Z"},
        {"id": "vm-1", "tags": {"op": "o-1"}, "created_at": "2026-11-26T13:00:00+01:00"},
    ]));
    let resources = tagged("listing VMs by tag", items, "op", "o-1").unwrap();
    assert_eq!(resources.len(), 2);
    assert_eq!(resources[0].id, "vm-2");
    assert_eq!(resources[0].tags["role"], "cp");
    // 2026-11-26T12:00:00Z
    let noon = OffsetDateTime::from_unix_timestamp(1_795_694_400).unwrap();
    assert_eq!(
        resources[0].created_at,
        noon + time::Duration::milliseconds(1500)
    );
    assert_eq!(resources[1].created_at, noon);
    let groups: SecurityGroupListBody =
        serde_json::from_value(json!({"security_groups": []})).unwrap();
    assert!(
        tagged(
            "listing security groups by tag",
            groups.security_groups,
            "op",
            "o-1"
        )
        .unwrap()
        .is_empty()
    );
}

#[test]
fn an_unparsable_listing_is_unexpected_with_what_was_wrong() {
    let items = listed(json!([
        {"id": "vm-1", "tags": {"op": "o-1"}, "created_at": "yesterday"},
    ]));
    let e = tagged("listing VMs by tag", items, "op", "o-1").unwrap_err();
    assert!(matches!(e, ComputeError::Unexpected(_)), "{e}");
    let why = Chain(&e).to_string();
    assert!(
        why.starts_with(
            "unexpected compute failure: listing VMs by tag: the created_at of vm-1 (\"yesterday\") \
             is not an RFC 3339 time: "
        ),
        "{why}"
    );

    // A service that ignores the filter must not hand a rollback other resources.
    let items = listed(json!([
        {"id": "vm-9", "tags": {"op": "o-2"}, "created_at": "2026-11-26T12:00:00Z"},
    ]));
    let e = tagged("listing VMs by tag", items, "op", "o-1").unwrap_err();
    assert_eq!(
        Chain(&e).to_string(),
        "unexpected compute failure: listing VMs by tag: the compute service listed vm-9, which \
         does not carry tag op=o-1"
    );

    let Err(e) = understood::<VmListBody>(
        "listing VMs by tag",
        &answer(200, r#"{"vms": [{"id": "vm-1", "tags": {}}]}"#),
    ) else {
        panic!("an item without created_at must not be understood")
    };
    assert!(
        Chain(&e).to_string().contains("missing field `created_at`"),
        "{}",
        Chain(&e)
    );
}

#[cfg(feature = "test-support")]
#[test]
fn a_vm_read_back_does_not_debug_its_userdata() {
    // The userdata is the node's shim: it carries the node's bootstrap token.
    let vm: Vm = serde_json::from_value(json!({
        "id": "vm-1",
        "name": "cp-1",
        "status": "active",
        "ipv4": "10.0.0.5",
        "ipv6": null,
        "public_ipv4": null,
        "flavor": "m1",
        "image": "debian",
        "subnet_id": "subnet-1",
        "security_group_ids": [],
        "tags": {},
        "user_data": "#!/bin/sh\nPLINTH_BOOTSTRAP_TOKEN=s3cr3t-t0k3n\n",
    }))
    .unwrap();
    assert!(vm.user_data.expose().contains("s3cr3t-t0k3n"));
    let debug = format!("{vm:?}");
    assert!(!debug.contains("s3cr3t-t0k3n"), "{debug}");
    assert!(debug.contains("redacted"), "{debug}");
}
