//! Prints how long the founding's trust material takes to make, single-threaded: the full set
//! for a 3-node cluster with ECDSA P-256 and with RSA-2048 keys, and RSA-2048 key generation
//! alone. The set is what a founding makes: the root CA and its 2 intermediates, the
//! service-account key pair, per node an etcd, an apiserver and a kubelet client certificate,
//! the 6 client certificates every node shares, and the admin client certificate — 20 key pairs
//! and 19 signatures. "Pool warm": the RSA service-account key comes from a full key pool, as a
//! founding's does when the service is not saturated (the pool refills between runs, untimed).
//!
//! `cargo bench -p plinth-x509-pki` (or `make bench`). Numbers go to docs/BENCHMARKS.md.

#![allow(clippy::print_stdout)] // printing the numbers is the point
#![allow(clippy::unwrap_used)] // a benchmark that fails should stop loudly

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use plinth_domain::model::{
    ClusterDnsNames, ClusterId, DnsZone, Networking, NodeAddresses, NodeName, NodeOrdinal,
    apiserver_sans, etcd_sans,
};
use plinth_domain::ports::pki::{ClientCertRequest, ServingCertRequest, SharedClientCert};
use plinth_x509_pki::{
    KeyAlgorithm, KeySource, PkiSettings, create_cluster_ca_from as create_cluster_ca,
    create_service_account_key_from as create_service_account_key,
    sign_client_cert_from as sign_client_cert, sign_serving_cert_from as sign_serving_cert,
};

/// Everything one founding of a 3-node cluster signs or generates.
fn founding_trust_set(settings: &PkiSettings, keys: &KeySource) {
    let cluster = ClusterId::new_random();
    let names = ClusterDnsNames::new(cluster, &DnsZone::parse("k8s.example").unwrap());
    let networking = Networking::default();
    let ca = create_cluster_ca(settings, keys, cluster).unwrap();
    let _sa = create_service_account_key(settings, keys).unwrap();
    for n in 1..=3u8 {
        let name = NodeName::new(cluster, NodeOrdinal::new(n).unwrap());
        let addresses = NodeAddresses {
            ipv4: Ipv4Addr::new(10, 0, 0, n),
            ipv6: None,
            public_ipv4: Some(Ipv4Addr::new(203, 0, 113, n)),
        };
        let etcd = ServingCertRequest {
            common_name: name.as_str().to_owned(),
            sans: etcd_sans(&name, &addresses),
            client_auth: true,
        };
        sign_serving_cert(settings, keys, &ca.etcd, &etcd).unwrap();
        let apiserver = ServingCertRequest {
            common_name: "kube-apiserver".to_owned(),
            sans: apiserver_sans(&name, &names.control_plane, &networking, &addresses),
            client_auth: false,
        };
        sign_serving_cert(settings, keys, &ca.root, &apiserver).unwrap();
        let kubelet = ClientCertRequest {
            common_name: format!("system:node:{name}"),
            organizations: vec!["system:nodes".to_owned()],
            not_after: None,
        };
        sign_client_cert(settings, keys, &ca.root, &kubelet).unwrap();
    }
    for shared in SharedClientCert::ALL {
        sign_client_cert(settings, keys, ca.get(shared.issuer()), &shared.request()).unwrap();
    }
    let admin = ClientCertRequest {
        common_name: "kubernetes-admin".to_owned(),
        organizations: vec!["system:masters".to_owned()],
        not_after: None,
    };
    sign_client_cert(settings, keys, &ca.root, &admin).unwrap();
}

fn measure(label: &str, runs: usize, work: impl FnMut()) {
    measure_after(label, runs, || {}, work);
}

/// [`measure`], running `before` (untimed) before each run.
fn measure_after(label: &str, runs: usize, mut before: impl FnMut(), mut work: impl FnMut()) {
    before();
    work(); // warm-up
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            before();
            let started = Instant::now();
            work();
            started.elapsed()
        })
        .collect();
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mean = times.iter().sum::<Duration>() / u32::try_from(runs).unwrap();
    println!(
        "{label:<58} n={runs:<3} median {:>8.2} ms   p90 {:>8.2} ms   min {:>8.2} ms   max {:>8.2} ms   mean {:>8.2} ms",
        ms(times[runs / 2]),
        ms(times[runs * 9 / 10]),
        ms(times[0]),
        ms(times[runs - 1]),
        ms(mean),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported, and not needed.
    let p256 = PkiSettings::default();
    let rsa = PkiSettings {
        key_algorithm: KeyAlgorithm::Rsa2048,
        ..PkiSettings::default()
    };
    let inline = KeySource::inline();
    println!("plinth-x509-pki: founding trust material, one thread");
    measure(
        "3-node trust set, ECDSA P-256 keys (+ RSA-2048 SA key)",
        40,
        || founding_trust_set(&p256, &inline),
    );
    let pooled = KeySource::pooled(&p256).unwrap();
    measure_after(
        "3-node trust set, defaults, pool warm",
        200,
        || {
            assert!(
                pooled.wait_full(Duration::from_secs(60)),
                "the pool did not fill"
            )
        },
        || founding_trust_set(&p256, &pooled),
    );
    drop(pooled);
    measure(
        "3-node trust set, RSA-2048 keys (+ RSA-2048 SA key)",
        15,
        || founding_trust_set(&rsa, &inline),
    );
    measure("RSA-2048 key generation alone", 60, || {
        rsa::PrivateKey::new(&mut rand::rng(), 2048).unwrap();
    });
    let p256_only = PkiSettings {
        service_account_key_algorithm: KeyAlgorithm::EcdsaP256,
        ..PkiSettings::default()
    };
    measure(
        "3-node trust set, all ECDSA P-256 (SA key too)",
        200,
        || founding_trust_set(&p256_only, &inline),
    );
}
