//! The boot path, end to end: found a 3-node cluster through the API; read each VM's userdata
//! from the compute service; run that userdata shim (fetch over HTTPS from plinth's bootstrap
//! listener, trusting only the CA the shim pins, with the node's token; check the checksum,
//! unpack); boot a real 3-member etcd from the unpacked files and the flags of each node's etcd
//! manifest; reach it with the bundle's apiserver-etcd-client certificate (and be refused with
//! the admin's); and complete a TLS handshake between kubectl (admin kubeconfig) and node 1's
//! apiserver certificate. Bundles go only to the holder of the node's token, and a shim gives
//! nothing to a server whose certificate its CA did not sign.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{Options, Stack, compute_get, kubectl_config, serving_cert_for_loopback};
use crate::tls::{assert_kubectl_accepted, kubectl_through_s_server};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use plinth_testkit::{Process, output_text, run, wait_for_port};
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Node {
    name: String,
    ipv4: Ipv4Addr,
    root: PathBuf,
    url: String,
    token: String,
}

fn line_value(shim: &str, key: &str) -> String {
    shim.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in the shim"))
        .to_owned()
}

/// The userdata of VM `vm_id`, as the compute service holds it.
async fn user_data(stack: &Stack, vm_id: &str) -> String {
    let vm = compute_get(&stack.client, &stack.sim, &format!("/v1/vms/{vm_id}")).await;
    vm["user_data"].as_str().unwrap().to_owned()
}

/// Founds a 3-node cluster and runs each VM's userdata shim into a directory of its own.
async fn found_and_fetch(stack: &Stack) -> (Value, Vec<Node>) {
    let (status, _, founded) = stack
        .post_cluster(
            &stack.token("org-a"),
            json!({"name": "boot", "control_plane_count": 3}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{founded}");
    let mut nodes = Vec::new();
    for (n, node) in founded["nodes"].as_array().unwrap().iter().enumerate() {
        let shim = user_data(stack, node["vm_id"].as_str().unwrap()).await;
        assert_pins_the_stacks_ca(stack, &shim);
        let root = empty_dir(stack, &format!("node-{}", n + 1));
        let output = run_shim(stack, &format!("shim-{}", n + 1), &shim, &root);
        assert!(
            output.status.success(),
            "the shim failed: {}",
            output_text(&output)
        );
        nodes.push(Node {
            name: node["name"].as_str().unwrap().to_owned(),
            ipv4: node["ipv4"].as_str().unwrap().parse().unwrap(),
            url: line_value(&shim, "PLINTH_BOOTSTRAP_URL"),
            token: line_value(&shim, "PLINTH_BOOTSTRAP_TOKEN"),
            root,
        });
    }
    (founded, nodes)
}

/// The shim carries no private key; with a TLS stack it fetches over https and carries the
/// stack's bootstrap CA certificate, and without one it carries no certificate at all.
fn assert_pins_the_stacks_ca(stack: &Stack, shim: &str) {
    assert!(!shim.contains("PRIVATE KEY"), "the shim carries no key");
    let url = line_value(shim, "PLINTH_BOOTSTRAP_URL");
    assert!(url.starts_with(&stack.bootstrap_base), "{url}");
    match &stack.bootstrap_ca {
        Some(ca) => {
            assert!(url.starts_with("https://"), "{url}");
            let ca = std::fs::read_to_string(ca).unwrap();
            assert!(shim.contains(&ca), "the shim does not pin the CA:\n{shim}");
            assert!(shim.contains("--cacert"), "{shim}");
        }
        None => assert!(!shim.contains("BEGIN"), "{shim}"),
    }
}

/// A new empty directory in the stack's scratch space.
fn empty_dir(stack: &Stack, name: &str) -> PathBuf {
    stack
        .scratch(&format!("{name}/.keep"), "")
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every file under `root`, relative to it (`.keep` aside), sorted.
fn files_under(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, found);
            } else if path.file_name().is_some_and(|n| n != ".keep") {
                found.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut found = Vec::new();
    walk(root, root, &mut found);
    found.sort();
    found
}

/// Runs `shim` as a VM would (under `root`, without starting a kubelet). `sleep` is a no-op, so
/// a shim that never gets a bundle spends its 30 attempts at once instead of 5 minutes.
fn run_shim(stack: &Stack, label: &str, shim: &str, root: &Path) -> std::process::Output {
    let bin = empty_dir(stack, "no-sleep");
    let sleep = stack.scratch("no-sleep/sleep", "#!/bin/sh\nexit 0\n");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&sleep, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let shim_file = stack.scratch(&format!("{label}.sh"), shim);
    Command::new("sh")
        .arg(&shim_file)
        .env("PATH", path)
        .env("PLINTH_BOOTSTRAP_ROOT", root)
        .env("PLINTH_START_KUBELET", "no")
        .output()
        .unwrap()
}

fn path(node: &Node, file: &str) -> PathBuf {
    node.root.join(file.trim_start_matches('/'))
}

fn manifest(node: &Node, name: &str) -> Value {
    let yaml = std::fs::read_to_string(path(
        node,
        &format!("/etc/kubernetes/manifests/{name}.yaml"),
    ))
    .unwrap();
    yaml_serde::from_str(&yaml).unwrap()
}

/// etcd's arguments from the node's manifest, re-rooted into the node's directory. Three members
/// share this host's 127.0.0.1, so the loopback client listener (which every member would bind)
/// is left out and metrics listen on the node's own address; everything else is the manifest's.
fn etcd_args(node: &Node) -> Vec<String> {
    let pod = manifest(node, "etcd");
    let command: Vec<String> = pod["spec"]["containers"][0]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(command[0], "etcd");
    let root = node.root.to_str().unwrap();
    command[1..]
        .iter()
        .map(|arg| {
            let (flag, value) = arg.split_once('=').unwrap();
            let value = match flag {
                "--listen-client-urls" => value
                    .split(',')
                    .filter(|url| !url.contains("//127.0.0.1:"))
                    .collect::<Vec<_>>()
                    .join(","),
                "--listen-metrics-urls" => value.replace("127.0.0.1", &node.ipv4.to_string()),
                _ if value.starts_with("/etc/kubernetes/")
                    || value.starts_with("/var/lib/etcd") =>
                {
                    format!("{root}{value}")
                }
                _ => value.to_owned(),
            };
            format!("{flag}={value}")
        })
        .collect()
}

fn etcdctl(
    endpoints: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
    args: &[&str],
) -> std::process::Output {
    let mut all = vec![
        "--endpoints",
        endpoints,
        "--dial-timeout",
        "2s",
        "--command-timeout",
        "4s",
        "--cacert",
        ca.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    run("etcdctl", &all, Duration::from_secs(15))
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_boots_from_the_bundles_and_kubectl_trusts_node_1s_apiserver() {
    // The VMs fetch over HTTPS, from the bootstrap listener, trusting only the pinned CA.
    let stack = Stack::start(Options {
        bootstrap_tls: true,
        ..Options::default()
    })
    .await;
    let (founded, nodes) = found_and_fetch(&stack).await;
    let first = &nodes[0];

    // The files are kubeadm's, keys and kubeconfigs private.
    let mode = |file: PathBuf| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(file).unwrap().permissions().mode() & 0o777
    };
    for node in &nodes {
        for private in [
            "pki/ca.key",
            "pki/etcd/server.key",
            "pki/sa.key",
            "kubelet.conf",
        ] {
            assert_eq!(
                mode(path(node, &format!("/etc/kubernetes/{private}"))),
                0o600,
                "{private} of {}",
                node.name
            );
        }
        assert_eq!(mode(path(node, "/etc/kubernetes/pki/ca.crt")), 0o644);
    }

    // Three etcd members, each from its own bundle and manifest, on its own address.
    let mut members = Vec::new();
    for node in &nodes {
        members.push(Process::spawn(
            &node.name,
            "etcd",
            &etcd_args(node),
            &node.root.join("etcd.log"),
        ));
    }
    for node in &nodes {
        wait_for_port(IpAddr::V4(node.ipv4), 2379, Duration::from_secs(15));
    }
    let endpoints = nodes
        .iter()
        .map(|n| format!("https://{}:2379", n.ipv4))
        .collect::<Vec<_>>()
        .join(",");
    let pki = |file: &str| path(first, &format!("/etc/kubernetes/pki/{file}"));
    let (ca, client_cert, client_key) = (
        pki("etcd/ca.crt"),
        pki("apiserver-etcd-client.crt"),
        pki("apiserver-etcd-client.key"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let health = loop {
        let output = etcdctl(
            &endpoints,
            &ca,
            &client_cert,
            &client_key,
            &["endpoint", "health"],
        );
        if output.status.success() || Instant::now() > deadline {
            break output;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let logs: String = nodes
        .iter()
        .map(|n| std::fs::read_to_string(n.root.join("etcd.log")).unwrap_or_default())
        .map(|log| log.lines().rev().take(5).collect::<Vec<_>>().join("\n"))
        .collect::<Vec<_>>()
        .join("\n---\n");
    assert!(
        health.status.success(),
        "etcd is not healthy:\n{}\n{logs}",
        output_text(&health)
    );
    let healthy = output_text(&health);
    for node in &nodes {
        assert!(
            healthy.contains(&format!("https://{}:2379 is healthy", node.ipv4)),
            "{healthy}"
        );
    }
    let put = etcdctl(
        &endpoints,
        &ca,
        &client_cert,
        &client_key,
        &["put", "/plinth/booted", "yes"],
    );
    assert!(put.status.success(), "{}", output_text(&put));
    let get = etcdctl(
        &endpoints,
        &ca,
        &client_cert,
        &client_key,
        &["get", "/plinth/booted", "--print-value-only"],
    );
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim(),
        "yes",
        "{}",
        output_text(&get)
    );

    // The admin's client certificate (root CA, not etcd-ca) is refused by etcd.
    let kubeconfig: Value =
        yaml_serde::from_str(founded["admin_kubeconfig"].as_str().unwrap()).unwrap();
    let decode = |field: &str| {
        String::from_utf8(
            STANDARD
                .decode(kubeconfig["users"][0]["user"][field].as_str().unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    let admin_cert = stack.scratch("admin.crt", &decode("client-certificate-data"));
    let admin_key = stack.scratch("admin.key", &decode("client-key-data"));
    let refused = etcdctl(
        &endpoints,
        &ca,
        &admin_cert,
        &admin_key,
        &["get", "/plinth/booted"],
    );
    assert!(
        !refused.status.success(),
        "etcd let the admin in: {}",
        output_text(&refused)
    );
    drop(members);

    // kubectl, with the founding's admin kubeconfig, and node 1's apiserver cert behind
    // openssl s_server: the shared name verifies, the client cert is accepted.
    let admin_conf = stack.scratch("admin.conf", founded["admin_kubeconfig"].as_str().unwrap());
    let output = kubectl_through_s_server(
        &first.root,
        &admin_conf,
        founded["control_plane_dns_name"].as_str().unwrap(),
        first.ipv4,
        (&pki("apiserver.crt"), &pki("apiserver.key"), &pki("ca.crt")),
    );
    assert_kubectl_accepted(&output);

    // Every kubeconfig of a bundle is one kubectl reads, pointing at the first node.
    for node in &nodes {
        for conf in ["controller-manager.conf", "scheduler.conf", "kubelet.conf"] {
            let config = kubectl_config(&path(node, &format!("/etc/kubernetes/{conf}")));
            assert_eq!(
                config["clusters"][0]["cluster"]["server"],
                format!("https://{}:6443", first.ipv4),
                "{conf}"
            );
        }
        // Every manifest is a Pod: it round-trips through the upstream Pod type unchanged (an
        // unknown or misspelt field would be dropped on the way).
        for name in [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        ] {
            let original = manifest(node, name);
            let as_json: Value = serde_json::to_value(&original).unwrap();
            let pod: k8s_openapi::api::core::v1::Pod =
                serde_json::from_value(as_json.clone()).unwrap();
            assert_eq!(
                serde_json::to_value(&pod).unwrap(),
                as_json,
                "{name} of {}",
                node.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bundles_go_only_to_the_holder_of_the_nodes_token() {
    let stack = Stack::start(Options::default()).await;
    let (founded, nodes) = found_and_fetch(&stack).await;
    let path = |node: &Node| {
        node.url
            .split_once("127.0.0.1")
            .unwrap()
            .1
            .split_once('/')
            .map(|(_, p)| format!("/{p}"))
            .unwrap()
    };
    let fetch = |url_path: String, token: Option<String>, accept: Option<&'static str>| {
        let stack = &stack;
        async move {
            let mut request = stack.client.get(format!("{}{url_path}", stack.base));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if let Some(accept) = accept {
                request = request.header("Accept", accept);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let headers = response.headers().clone();
            (status, headers, response.bytes().await.unwrap())
        }
    };

    // The node's own token: the bundle, as a checksummed gzip tar or as JSON.
    let (status, headers, body) = fetch(path(&nodes[1]), Some(nodes[1].token.clone()), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/gzip");
    use sha2::Digest as _;
    let sum: String = sha2::Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(headers["x-bundle-sha256"].to_str().unwrap(), sum);
    let (status, _, body) = fetch(
        path(&nodes[1]),
        Some(nodes[1].token.clone()),
        Some("application/json"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["node_name"], nodes[1].name.as_str());
    let key = json["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/etc/kubernetes/pki/apiserver.key")
        .unwrap();
    assert_eq!(key["mode"], "0600");
    assert_eq!(
        key["content"].as_str().unwrap(),
        std::fs::read_to_string(nodes[1].root.join("etc/kubernetes/pki/apiserver.key")).unwrap()
    );

    // Everything else: the same 401, saying nothing about which part was wrong.
    let other_cluster = path(&nodes[0]).replace(
        founded["cluster_id"].as_str().unwrap(),
        "00000000-0000-0000-0000-000000000000",
    );
    let mut refusals = Vec::new();
    for (label, url_path, token) in [
        ("wrong token", path(&nodes[0]), Some("x".repeat(43))),
        ("no token", path(&nodes[0]), None),
        (
            "another node's token",
            path(&nodes[0]),
            Some(nodes[1].token.clone()),
        ),
        (
            "another cluster's node name",
            other_cluster,
            Some(nodes[0].token.clone()),
        ),
        (
            "a node the cluster does not have",
            path(&nodes[0]).replace("cp-1.", "cp-7."),
            Some(nodes[0].token.clone()),
        ),
    ] {
        let (status, headers, body) = fetch(url_path, token, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{label}");
        assert!(
            headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"),
            "{label}"
        );
        let problem: Value = serde_json::from_slice(&body).unwrap();
        refusals.push(problem["detail"].clone());
    }
    refusals.dedup();
    assert_eq!(refusals, [json!("invalid bootstrap token")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_bootstrap_token_is_refused() {
    let stack = Stack::start(Options {
        token_ttl_secs: 2,
        ..Options::default()
    })
    .await;
    let (status, _, founded) = stack
        .post_cluster(&stack.token("org-a"), json!({"control_plane_count": 1}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let shim = user_data(&stack, founded["vm_ids"][0].as_str().unwrap()).await;
    let (url, token) = (
        line_value(&shim, "PLINTH_BOOTSTRAP_URL"),
        line_value(&shim, "PLINTH_BOOTSTRAP_TOKEN"),
    );
    let fetch = || stack.client.get(&url).bearer_auth(&token).send();
    assert_eq!(
        fetch().await.unwrap().status(),
        StatusCode::OK,
        "fresh, it works"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        fetch().await.unwrap().status(),
        StatusCode::UNAUTHORIZED,
        "expired, it does not"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shim_fetches_over_https_from_plinth_and_from_no_server_its_ca_did_not_sign() {
    let stack = Stack::start(Options {
        bootstrap_tls: true,
        ..Options::default()
    })
    .await;
    let ca_file = stack.bootstrap_ca.clone().unwrap();
    let (status, _, founded) = stack
        .post_cluster(&stack.token("org-a"), json!({"control_plane_count": 1}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{founded}");
    let shim = user_data(&stack, founded["vm_ids"][0].as_str().unwrap()).await;
    assert_pins_the_stacks_ca(&stack, &shim);
    let url = line_value(&shim, "PLINTH_BOOTSTRAP_URL");

    // The bootstrap listener serves the bootstrap route and nothing else.
    let curl_status = |url: &str| {
        let output = run(
            "curl",
            &[
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--cacert",
                ca_file.to_str().unwrap(),
                url,
            ],
            Duration::from_secs(20),
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    for other in ["/healthz", "/metrics", "/openapi.json", "/clusters"] {
        assert_eq!(
            curl_status(&format!("{}{other}", stack.bootstrap_base)),
            "404",
            "{other}"
        );
    }
    assert_eq!(
        curl_status(&url),
        "401",
        "the bootstrap route, without a token"
    );

    // An impostor on 127.0.0.1: a certificate for the same address from another CA, serving (to
    // whoever trusts it) a well-formed bundle with its checksum at the node's own path.
    let impostor = empty_dir(&stack, "impostor");
    let (impostor_ca, impostor_cert, impostor_key) =
        serving_cert_for_loopback(&impostor, "impostor").await;
    let payload = empty_dir(&stack, "impostor/payload");
    std::fs::create_dir_all(payload.join("etc")).unwrap();
    std::fs::write(payload.join("etc/planted"), "the impostor was trusted\n").unwrap();
    let tgz = impostor.join("bundle.tgz");
    let packed = run(
        "tar",
        &[
            "-czf",
            tgz.to_str().unwrap(),
            "-C",
            payload.to_str().unwrap(),
            "etc",
        ],
        Duration::from_secs(20),
    );
    assert!(packed.status.success(), "{}", output_text(&packed));
    let bundle = std::fs::read(&tgz).unwrap();
    let sum: String = {
        use sha2::Digest as _;
        sha2::Sha256::digest(&bundle)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let www = empty_dir(&stack, "impostor/www");
    let node_path = url.split_once("://").unwrap().1.split_once('/').unwrap().1;
    let mut response = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: application/gzip\r\nX-Bundle-Sha256: {sum}\r\n\r\n"
    )
    .into_bytes();
    response.extend_from_slice(&bundle);
    let page = www.join(node_path);
    std::fs::create_dir_all(page.parent().unwrap()).unwrap();
    std::fs::write(&page, response).unwrap();
    let port = plinth_testkit::free_port();
    let _server = Process::spawn_in(
        &www,
        "impostor",
        "openssl",
        &[
            "s_server",
            "-quiet",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-HTTP",
            "-cert",
            impostor_cert.to_str().unwrap(),
            "-key",
            impostor_key.to_str().unwrap(),
        ],
        &impostor.join("s_server.log"),
    );
    wait_for_port(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        port,
        Duration::from_secs(15),
    );
    // The same shim, its traffic sent to the impostor (as a man in the middle would).
    let diverted = shim.replace(&stack.bootstrap_base, &format!("https://127.0.0.1:{port}"));
    assert_ne!(diverted, shim);

    let refused_root = empty_dir(&stack, "refused");
    let output = run_shim(&stack, "diverted", &diverted, &refused_root);
    let said = output_text(&output);
    assert!(
        !output.status.success(),
        "the shim trusted the impostor: {said}"
    );
    assert!(
        said.contains("no whole bootstrap bundle after 30 attempts"),
        "{said}"
    );
    assert!(
        said.contains("SSL certificate problem"),
        "not refused for its certificate: {said}"
    );
    assert_eq!(files_under(&refused_root), Vec::<String>::new(), "{said}");

    // Had the shim pinned the impostor's CA instead, it would have taken the planted bundle:
    // what refused it above is the pin, nothing else.
    let ca_pem = std::fs::read_to_string(&ca_file).unwrap();
    let impostor_pem = std::fs::read_to_string(&impostor_ca).unwrap();
    let misled = diverted.replace(&ca_pem, &impostor_pem);
    assert_ne!(misled, diverted);
    let misled_root = empty_dir(&stack, "misled");
    let output = run_shim(&stack, "misled", &misled, &misled_root);
    assert!(output.status.success(), "{}", output_text(&output));
    assert_eq!(files_under(&misled_root), ["etc/planted"]);

    // The shim as it is fetches its bundle from plinth over HTTPS, and unpacks it.
    let root = empty_dir(&stack, "node-1");
    let output = run_shim(&stack, "shim", &shim, &root);
    assert!(output.status.success(), "{}", output_text(&output));
    let files = files_under(&root);
    for expected in [
        "etc/kubernetes/pki/ca.crt",
        "etc/kubernetes/pki/apiserver.key",
        "etc/kubernetes/manifests/etcd.yaml",
        "etc/kubernetes/kubelet.conf",
    ] {
        assert!(
            files.iter().any(|f| f == expected),
            "{expected} not in {files:?}"
        );
    }
    let cluster_ca = std::fs::read_to_string(root.join("etc/kubernetes/pki/ca.crt")).unwrap();
    assert!(cluster_ca.contains("BEGIN CERTIFICATE"));
}
