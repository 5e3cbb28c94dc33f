//! OpenSSL accepts what the adapter issues: `openssl verify -x509_strict` on every chain, and
//! `openssl x509 -text` shows the exact SANs, EKUs and key usages of docs/ARCHITECTURE.md §5.

mod support;

use std::time::{Duration, SystemTime};

use der::{DecodePem, Encode};
use plinth_testkit::{output_text, run};
use plinth_x509_pki::KeyAlgorithm;
use support::{Scratch, TrustSet, path_str};
use x509_cert::Certificate;

const LIMIT: Duration = Duration::from_secs(20);

fn openssl(args: &[&str]) -> std::process::Output {
    run("openssl", args, LIMIT)
}

fn assert_ok(output: &std::process::Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed:\n{}",
        output_text(output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `openssl verify -x509_strict` of `leaf` against `root`, with `intermediate` as untrusted.
fn verify(
    scratch: &Scratch,
    leaf: &str,
    intermediate: Option<&str>,
    extra: &[&str],
) -> std::process::Output {
    let root = scratch.path("ca.crt");
    let leaf = scratch.path(leaf);
    let untrusted = intermediate.map(|i| scratch.path(i));
    let mut args = vec!["verify", "-x509_strict", "-CAfile", path_str(&root)];
    if let Some(untrusted) = &untrusted {
        args.extend(["-untrusted", path_str(untrusted)]);
    }
    args.extend_from_slice(extra);
    args.push(path_str(&leaf));
    openssl(&args)
}

fn write_set(scratch: &Scratch, set: &TrustSet) {
    scratch.write_pair("ca", &set.ca.root);
    scratch.write_pair("etcd-ca", &set.ca.etcd);
    scratch.write_pair("front-proxy-ca", &set.ca.front_proxy);
    scratch.write_pair("etcd-1", &set.etcd[0]);
    scratch.write_pair("apiserver-1", &set.apiserver[0]);
    scratch.write_pair("admin", &set.admin);
    scratch.write_pair("apiserver-etcd-client", &set.apiserver_etcd_client);
    scratch.write_pair("front-proxy-client", &set.front_proxy_client);
    scratch.write("sa.key", set.service_account.private_key_pem.expose());
    scratch.write("sa.pub", &set.service_account.public_key_pem);
}

fn every_chain_verifies_strictly(algorithm: KeyAlgorithm) {
    let scratch = Scratch::new("openssl-verify");
    let set = TrustSet::new(algorithm, 1);
    write_set(&scratch, &set);

    assert_ok(&verify(&scratch, "ca.crt", None, &[]), "the root");
    assert_ok(
        &verify(&scratch, "etcd-ca.crt", None, &[]),
        "etcd-ca under the root",
    );
    assert_ok(
        &verify(&scratch, "front-proxy-ca.crt", None, &[]),
        "front-proxy-ca under the root",
    );
    let shared = set.names.control_plane.clone();
    assert_ok(
        &verify(
            &scratch,
            "apiserver-1.crt",
            None,
            &["-purpose", "sslserver", "-verify_hostname", &shared],
        ),
        "apiserver cert for the shared name",
    );
    assert_ok(
        &verify(
            &scratch,
            "apiserver-1.crt",
            None,
            &["-purpose", "sslserver", "-verify_ip", "10.96.0.1"],
        ),
        "apiserver cert for the kubernetes service IP",
    );
    assert_ok(
        &verify(&scratch, "admin.crt", None, &["-purpose", "sslclient"]),
        "admin client cert",
    );
    for purpose in ["sslserver", "sslclient"] {
        assert_ok(
            &verify(
                &scratch,
                "etcd-1.crt",
                Some("etcd-ca.crt"),
                &["-purpose", purpose, "-verify_ip", "127.10.0.11"],
            ),
            &format!("etcd cert as {purpose}"),
        );
    }
    assert_ok(
        &verify(
            &scratch,
            "apiserver-etcd-client.crt",
            Some("etcd-ca.crt"),
            &["-purpose", "sslclient"],
        ),
        "apiserver-etcd-client",
    );
    assert_ok(
        &verify(
            &scratch,
            "front-proxy-client.crt",
            Some("front-proxy-ca.crt"),
            &["-purpose", "sslclient"],
        ),
        "front-proxy-client",
    );

    // Keys: each private key matches its certificate.
    for name in ["ca", "etcd-ca", "etcd-1", "apiserver-1", "admin"] {
        let crt = scratch.path(&format!("{name}.crt"));
        let key = scratch.path(&format!("{name}.key"));
        let from_cert = assert_ok(
            &openssl(&["x509", "-in", path_str(&crt), "-noout", "-pubkey"]),
            "public key of the cert",
        );
        let from_key = assert_ok(
            &openssl(&["pkey", "-in", path_str(&key), "-pubout"]),
            "public key of the key",
        );
        assert_eq!(
            from_cert, from_key,
            "{name}: the key does not match the cert"
        );
    }
}

#[test]
fn every_ecdsa_p256_chain_verifies_strictly() {
    every_chain_verifies_strictly(KeyAlgorithm::EcdsaP256);
}

#[test]
fn every_rsa_2048_chain_verifies_strictly() {
    every_chain_verifies_strictly(KeyAlgorithm::Rsa2048);
}

#[test]
fn verification_fails_without_the_intermediate_or_across_clusters() {
    let scratch = Scratch::new("openssl-negative");
    let set = TrustSet::new(KeyAlgorithm::EcdsaP256, 1);
    write_set(&scratch, &set);
    let other = TrustSet::new(KeyAlgorithm::EcdsaP256, 1);
    scratch.write_pair("other-admin", &other.admin);
    scratch.write_pair("other-etcd-ca", &other.ca.etcd);

    let no_intermediate = verify(&scratch, "etcd-1.crt", None, &[]);
    assert!(
        !no_intermediate.status.success(),
        "{}",
        output_text(&no_intermediate)
    );
    let wrong_intermediate = verify(&scratch, "etcd-1.crt", Some("other-etcd-ca.crt"), &[]);
    assert!(
        !wrong_intermediate.status.success(),
        "{}",
        output_text(&wrong_intermediate)
    );
    let foreign = verify(&scratch, "other-admin.crt", None, &[]);
    assert!(!foreign.status.success(), "{}", output_text(&foreign));
    let wrong_name = verify(
        &scratch,
        "apiserver-1.crt",
        None,
        &["-verify_hostname", "api.cluster-other.k8s.plinth.test"],
    );
    assert!(!wrong_name.status.success(), "{}", output_text(&wrong_name));
    let client_as_server = verify(&scratch, "admin.crt", None, &["-purpose", "sslserver"]);
    assert!(
        !client_as_server.status.success(),
        "{}",
        output_text(&client_as_server)
    );
}

/// The text of one extension in `openssl x509 -text`: its header line and value lines.
fn extension(dump: &str, name: &str) -> String {
    let mut lines = dump
        .lines()
        .skip_while(|l| !l.trim_start().starts_with(name));
    let header = lines
        .next()
        .unwrap_or_else(|| panic!("no {name} in:\n{dump}"));
    let indent = header.len() - header.trim_start().len();
    let body: Vec<&str> = lines
        .take_while(|l| l.len() - l.trim_start().len() > indent)
        .map(str::trim)
        .collect();
    format!("{} | {}", header.trim(), body.join(" "))
}

fn dump(scratch: &Scratch, name: &str) -> String {
    let path = scratch.path(name);
    assert_ok(
        &openssl(&["x509", "-in", path_str(&path), "-noout", "-text"]),
        "openssl x509 -text",
    )
}

#[test]
fn an_etcd_cert_shows_exactly_its_sans_ekus_and_key_usages() {
    let scratch = Scratch::new("openssl-etcd-text");
    let set = TrustSet::new(KeyAlgorithm::EcdsaP256, 1);
    write_set(&scratch, &set);
    let text = dump(&scratch, "etcd-1.crt");
    let node = set.nodes[0].name.as_str();

    assert!(text.contains(&format!("Subject: CN = {node}")), "{text}");
    assert!(text.contains("Issuer: O = plinth, OU = cluster-"), "{text}");
    assert!(text.contains("CN = etcd-ca"), "{text}");
    assert_eq!(
        extension(&text, "X509v3 Subject Alternative Name"),
        format!(
            "X509v3 Subject Alternative Name: | DNS:{node}, DNS:localhost, \
             IP Address:127.10.0.11, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1"
        )
    );
    assert_eq!(
        extension(&text, "X509v3 Extended Key Usage"),
        "X509v3 Extended Key Usage: | TLS Web Server Authentication, TLS Web Client Authentication"
    );
    assert_eq!(
        extension(&text, "X509v3 Key Usage"),
        "X509v3 Key Usage: critical | Digital Signature"
    );
    assert_eq!(
        extension(&text, "X509v3 Basic Constraints"),
        "X509v3 Basic Constraints: critical | CA:FALSE"
    );
    assert!(text.contains("X509v3 Subject Key Identifier"), "{text}");
    assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");
    assert!(
        text.contains("Signature Algorithm: ecdsa-with-SHA256"),
        "{text}"
    );
}

#[test]
fn an_apiserver_cert_shows_exactly_its_sans_ekus_and_key_usages() {
    let scratch = Scratch::new("openssl-apiserver-text");
    let set = TrustSet::new(KeyAlgorithm::Rsa2048, 1);
    write_set(&scratch, &set);
    let text = dump(&scratch, "apiserver-1.crt");
    let node = set.nodes[0].name.as_str();
    let shared = &set.names.control_plane;

    assert!(text.contains("Subject: CN = kube-apiserver"), "{text}");
    assert_eq!(
        extension(&text, "X509v3 Subject Alternative Name"),
        format!(
            "X509v3 Subject Alternative Name: | DNS:{node}, DNS:{shared}, DNS:kubernetes, \
             DNS:kubernetes.default, DNS:kubernetes.default.svc, \
             DNS:kubernetes.default.svc.cluster.local, IP Address:10.96.0.1, \
             IP Address:127.10.0.11, IP Address:127.0.0.1"
        )
    );
    assert_eq!(
        extension(&text, "X509v3 Extended Key Usage"),
        "X509v3 Extended Key Usage: | TLS Web Server Authentication"
    );
    // RSA leaves also get keyEncipherment, as kubeadm's do.
    assert_eq!(
        extension(&text, "X509v3 Key Usage"),
        "X509v3 Key Usage: critical | Digital Signature, Key Encipherment"
    );
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
    assert!(
        text.contains("Signature Algorithm: sha256WithRSAEncryption"),
        "{text}"
    );
}

#[test]
fn cas_have_critical_basic_constraints_key_usage_an_ski_and_no_eku() {
    let scratch = Scratch::new("openssl-ca-text");
    let set = TrustSet::new(KeyAlgorithm::EcdsaP256, 1);
    write_set(&scratch, &set);
    for (file, cn, has_aki) in [
        ("ca.crt", "kubernetes", false),
        ("etcd-ca.crt", "etcd-ca", true),
        ("front-proxy-ca.crt", "front-proxy-ca", true),
    ] {
        let text = dump(&scratch, file);
        assert!(text.contains(&format!("CN = {cn}")), "{file}: {text}");
        assert_eq!(
            extension(&text, "X509v3 Basic Constraints"),
            "X509v3 Basic Constraints: critical | CA:TRUE",
            "{file}"
        );
        assert_eq!(
            extension(&text, "X509v3 Key Usage"),
            "X509v3 Key Usage: critical | Digital Signature, Certificate Sign, CRL Sign",
            "{file}"
        );
        assert!(text.contains("X509v3 Subject Key Identifier"), "{file}");
        assert_eq!(
            text.contains("X509v3 Authority Key Identifier"),
            has_aki,
            "{file}: {text}"
        );
        assert!(!text.contains("Extended Key Usage"), "{file}: {text}");
    }
}

#[test]
fn issuers_serials_and_validity_follow_the_go_rules() {
    let set = TrustSet::new(KeyAlgorithm::EcdsaP256, 1);
    let parse = |pem: &str| Certificate::from_pem(pem.as_bytes()).unwrap();
    let (root, etcd_ca) = (parse(&set.ca.root.cert_pem), parse(&set.ca.etcd.cert_pem));
    let leaf = parse(&set.etcd[0].cert_pem);
    let admin = parse(&set.admin.cert_pem);

    // Issuer bytes equal the CA's subject bytes: Go matches parents by raw bytes.
    let der = |name: &x509_cert::name::Name| name.to_der().unwrap();
    assert_eq!(
        der(leaf.tbs_certificate().issuer()),
        der(etcd_ca.tbs_certificate().subject())
    );
    assert_eq!(
        der(etcd_ca.tbs_certificate().issuer()),
        der(root.tbs_certificate().subject())
    );
    assert_eq!(
        der(admin.tbs_certificate().issuer()),
        der(root.tbs_certificate().subject())
    );

    let now = SystemTime::now();
    for (cert, lifetime) in [
        (&root, Duration::from_secs(3650 * 86400)),
        (&leaf, Duration::from_secs(365 * 86400)),
    ] {
        let serial = cert.tbs_certificate().serial_number().as_bytes();
        assert!(serial.len() <= 20, "serial of {} octets", serial.len());
        assert!(serial.len() >= 8, "serial must carry >= 64 random bits");
        assert!(
            serial[0] & 0x80 == 0 || serial[0] == 0,
            "serial must be positive"
        );

        let validity = cert.tbs_certificate().validity();
        let not_before = validity.not_before.to_system_time();
        let not_after = validity.not_after.to_system_time();
        let backdate = now.duration_since(not_before).unwrap();
        assert!(
            backdate >= Duration::from_secs(295) && backdate <= Duration::from_secs(360),
            "notBefore is backdated {backdate:?}"
        );
        let span = not_after.duration_since(not_before).unwrap();
        let expected = lifetime + Duration::from_secs(300);
        assert!(
            span.abs_diff(expected) <= Duration::from_secs(2),
            "validity {span:?}, expected {expected:?}"
        );
    }
    assert_ne!(
        root.tbs_certificate().serial_number(),
        leaf.tbs_certificate().serial_number()
    );
}

#[test]
fn the_service_account_key_is_rsa_2048_pkcs8_with_an_spki_public_key() {
    let scratch = Scratch::new("openssl-sa");
    let set = TrustSet::new(KeyAlgorithm::EcdsaP256, 1);
    let key = scratch.write("sa.key", set.service_account.private_key_pem.expose());
    let public = scratch.write("sa.pub", &set.service_account.public_key_pem);
    assert!(
        set.service_account
            .private_key_pem
            .expose()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    assert!(
        set.service_account
            .public_key_pem
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    let details = assert_ok(
        &openssl(&["pkey", "-in", path_str(&key), "-noout", "-text"]),
        "openssl pkey",
    );
    assert!(
        details.contains("Private-Key: (2048 bit, 2 primes)"),
        "{details}"
    );
    let derived = assert_ok(
        &openssl(&["pkey", "-in", path_str(&key), "-pubout"]),
        "pubout",
    );
    assert_eq!(derived, set.service_account.public_key_pem);
    assert_ok(
        &openssl(&["pkey", "-pubin", "-in", path_str(&public), "-noout"]),
        "openssl pkey -pubin",
    );
}

#[test]
fn a_kubelet_subject_longer_than_x520s_64_characters_verifies_strictly() {
    // `system:node:<node name>` is 70 characters for plinth's node names.
    let scratch = Scratch::new("openssl-long-cn");
    let set = TrustSet::new(KeyAlgorithm::EcdsaP256, 1);
    scratch.write_pair("ca", &set.ca.root);
    let common_name = format!("system:node:{}", set.nodes[0].name);
    assert!(common_name.len() > 64);
    let kubelet = plinth_x509_pki::sign_client_cert(
        &support::settings(KeyAlgorithm::EcdsaP256),
        &set.ca.root,
        &plinth_domain::ports::pki::ClientCertRequest {
            common_name: common_name.clone(),
            organizations: vec!["system:nodes".into()],
            not_after: None,
        },
    )
    .unwrap();
    scratch.write_pair("kubelet", &kubelet);
    assert_ok(
        &verify(&scratch, "kubelet.crt", None, &["-purpose", "sslclient"]),
        "kubelet client cert",
    );
    let text = dump(&scratch, "kubelet.crt");
    assert!(
        text.contains(&format!("Subject: O = system:nodes, CN = {common_name}")),
        "{text}"
    );
}

#[test]
fn a_client_cert_ends_at_the_requested_second_and_its_facts_match_openssl() {
    let scratch = Scratch::new("openssl-not-after");
    let set = TrustSet::new(KeyAlgorithm::EcdsaP256, 1);
    scratch.write_pair("ca", &set.ca.root);
    let settings = support::settings(KeyAlgorithm::EcdsaP256);
    // A time with a fraction of a second: notAfter holds whole seconds, the fraction is dropped.
    let asked = time::OffsetDateTime::now_utc()
        + time::Duration::seconds(3_600)
        + time::Duration::milliseconds(750);
    let request = |not_after| plinth_domain::ports::pki::ClientCertRequest {
        common_name: "alice@example.com".into(),
        organizations: vec!["system:masters".into()],
        not_after,
    };
    let admin =
        plinth_x509_pki::sign_client_cert(&settings, &set.ca.root, &request(Some(asked))).unwrap();
    scratch.write_pair("alice", &admin);
    assert_ok(
        &verify(&scratch, "alice.crt", None, &["-purpose", "sslclient"]),
        "admin client cert",
    );

    let facts = plinth_x509_pki::certificate_facts(&admin.cert_pem).unwrap();
    assert_eq!(facts.not_after, asked.replace_nanosecond(0).unwrap());
    let shown = assert_ok(
        &openssl(&[
            "x509",
            "-noout",
            "-enddate",
            "-serial",
            "-dateopt",
            "iso_8601",
            "-in",
            path_str(&scratch.path("alice.crt")),
        ]),
        "openssl x509 -enddate -serial",
    );
    let end = facts
        .not_after
        .format(&time::format_description::well_known::Iso8601::DEFAULT)
        .unwrap();
    // openssl: `notAfter=2026-12-01 18:00:00Z`
    let end = format!("notAfter={} {}Z", &end[..10], &end[11..19]);
    assert!(shown.contains(&end), "{shown} does not show {end}");
    let serial = shown
        .lines()
        .find_map(|l| l.strip_prefix("serial="))
        .unwrap()
        .trim_start_matches('0')
        .to_ascii_lowercase();
    assert_eq!(facts.serial_hex.trim_start_matches('0'), serial);

    // A past notAfter, or one beyond the issuer's, is refused.
    let past = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let err = plinth_x509_pki::sign_client_cert(&settings, &set.ca.root, &request(Some(past)))
        .unwrap_err();
    assert!(err.to_string().contains("past"), "{err}");
    let beyond = time::OffsetDateTime::now_utc() + time::Duration::days(365 * 20);
    let err = plinth_x509_pki::sign_client_cert(&settings, &set.ca.root, &request(Some(beyond)))
        .unwrap_err();
    assert!(err.to_string().contains("issuer"), "{err}");
    let err = plinth_x509_pki::certificate_facts("not a certificate").unwrap_err();
    assert!(err.to_string().contains("PEM"), "{err}");
}
