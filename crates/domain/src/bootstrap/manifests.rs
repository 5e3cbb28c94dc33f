//! Static pod manifests for the stacked control plane, with kubeadm's flags (docs/ARCHITECTURE.md §5.5).

use std::collections::BTreeMap;

use serde::Serialize;

use super::BundleSettings;
use crate::ports::repo::BootstrapMaterial;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Pod {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata,
    spec: PodSpec,
}

#[derive(Serialize)]
struct Metadata {
    name: &'static str,
    namespace: &'static str,
    labels: BTreeMap<&'static str, &'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    containers: Vec<Container>,
    host_network: bool,
    priority_class_name: &'static str,
    security_context: PodSecurityContext,
    volumes: Vec<Volume>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PodSecurityContext {
    seccomp_profile: SeccompProfile,
}

#[derive(Serialize)]
struct SeccompProfile {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    name: &'static str,
    image: String,
    image_pull_policy: &'static str,
    command: Vec<String>,
    volume_mounts: Vec<VolumeMount>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VolumeMount {
    name: &'static str,
    mount_path: &'static str,
    read_only: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Volume {
    name: &'static str,
    host_path: HostPath,
}

#[derive(Serialize)]
struct HostPath {
    path: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
}

/// A host path mounted at the same path.
fn host(
    name: &'static str,
    path: &'static str,
    kind: &'static str,
    read_only: bool,
) -> (Volume, VolumeMount) {
    (
        Volume {
            name,
            host_path: HostPath { path, kind },
        },
        VolumeMount {
            name,
            mount_path: path,
            read_only,
        },
    )
}

fn pod(
    component: &'static str,
    image: String,
    command: Vec<String>,
    mounts: Vec<(Volume, VolumeMount)>,
) -> Pod {
    let (volumes, volume_mounts) = mounts.into_iter().unzip();
    Pod {
        api_version: "v1",
        kind: "Pod",
        metadata: Metadata {
            name: component,
            namespace: "kube-system",
            labels: [("component", component), ("tier", "control-plane")].into(),
        },
        spec: PodSpec {
            containers: vec![Container {
                name: component,
                image,
                image_pull_policy: "IfNotPresent",
                command,
                volume_mounts,
            }],
            host_network: true,
            priority_class_name: "system-node-critical",
            security_context: PodSecurityContext {
                seccomp_profile: SeccompProfile {
                    kind: "RuntimeDefault",
                },
            },
            volumes,
        },
    }
}

fn command(binary: &str, flags: &[(&str, String)]) -> Vec<String> {
    std::iter::once(binary.to_owned())
        .chain(
            flags
                .iter()
                .map(|(flag, value)| format!("--{flag}={value}")),
        )
        .collect()
}

const PKI: &str = "/etc/kubernetes/pki";

/// `etcd.yaml`, `kube-apiserver.yaml`, `kube-controller-manager.yaml`, `kube-scheduler.yaml`.
pub(super) fn render(
    m: &BootstrapMaterial,
    settings: &BundleSettings,
) -> Result<Vec<(&'static str, String)>, String> {
    let ip = m.node.addresses.ipv4;
    let initial_cluster = m
        .nodes
        .iter()
        .map(|n| format!("{}=https://{}:2380", n.name, n.addresses.ipv4))
        .collect::<Vec<_>>()
        .join(",");
    let etcd = command(
        "etcd",
        &[
            ("name", m.node.name.to_string()),
            ("data-dir", "/var/lib/etcd".into()),
            (
                "listen-client-urls",
                format!("https://127.0.0.1:2379,https://{ip}:2379"),
            ),
            ("advertise-client-urls", format!("https://{ip}:2379")),
            ("listen-peer-urls", format!("https://{ip}:2380")),
            ("initial-advertise-peer-urls", format!("https://{ip}:2380")),
            ("initial-cluster", initial_cluster),
            ("initial-cluster-state", "new".into()),
            ("initial-cluster-token", m.cluster_id.label()),
            ("cert-file", format!("{PKI}/etcd/server.crt")),
            ("key-file", format!("{PKI}/etcd/server.key")),
            ("peer-cert-file", format!("{PKI}/etcd/peer.crt")),
            ("peer-key-file", format!("{PKI}/etcd/peer.key")),
            ("trusted-ca-file", format!("{PKI}/etcd/ca.crt")),
            ("peer-trusted-ca-file", format!("{PKI}/etcd/ca.crt")),
            ("client-cert-auth", "true".into()),
            ("peer-client-cert-auth", "true".into()),
            ("snapshot-count", "10000".into()),
            ("listen-metrics-urls", "http://127.0.0.1:2381".into()),
        ],
    );
    let n = &m.networking;
    let apiserver = command(
        "kube-apiserver",
        &[
            ("advertise-address", ip.to_string()),
            ("secure-port", n.api_server_port().to_string()),
            ("etcd-servers", "https://127.0.0.1:2379".into()),
            ("etcd-cafile", format!("{PKI}/etcd/ca.crt")),
            ("etcd-certfile", format!("{PKI}/apiserver-etcd-client.crt")),
            ("etcd-keyfile", format!("{PKI}/apiserver-etcd-client.key")),
            ("service-account-key-file", format!("{PKI}/sa.pub")),
            ("service-account-signing-key-file", format!("{PKI}/sa.key")),
            (
                "service-account-issuer",
                format!("https://kubernetes.default.svc.{}", n.dns_domain()),
            ),
            ("client-ca-file", format!("{PKI}/ca.crt")),
            ("tls-cert-file", format!("{PKI}/apiserver.crt")),
            ("tls-private-key-file", format!("{PKI}/apiserver.key")),
            (
                "kubelet-client-certificate",
                format!("{PKI}/apiserver-kubelet-client.crt"),
            ),
            (
                "kubelet-client-key",
                format!("{PKI}/apiserver-kubelet-client.key"),
            ),
            (
                "requestheader-client-ca-file",
                format!("{PKI}/front-proxy-ca.crt"),
            ),
            ("requestheader-allowed-names", "front-proxy-client".into()),
            ("requestheader-username-headers", "X-Remote-User".into()),
            ("requestheader-group-headers", "X-Remote-Group".into()),
            (
                "requestheader-extra-headers-prefix",
                "X-Remote-Extra-".into(),
            ),
            (
                "proxy-client-cert-file",
                format!("{PKI}/front-proxy-client.crt"),
            ),
            (
                "proxy-client-key-file",
                format!("{PKI}/front-proxy-client.key"),
            ),
            ("service-cluster-ip-range", n.service_cidr().to_string()),
            ("authorization-mode", "Node,RBAC".into()),
            ("enable-admission-plugins", "NodeRestriction".into()),
            ("enable-bootstrap-token-auth", "true".into()),
            ("allow-privileged", "true".into()),
            (
                "kubelet-preferred-address-types",
                "InternalIP,ExternalIP,Hostname".into(),
            ),
        ],
    );
    let controller_manager_conf = "/etc/kubernetes/controller-manager.conf";
    let controller_manager = command(
        "kube-controller-manager",
        &[
            ("kubeconfig", controller_manager_conf.into()),
            ("authentication-kubeconfig", controller_manager_conf.into()),
            ("authorization-kubeconfig", controller_manager_conf.into()),
            ("client-ca-file", format!("{PKI}/ca.crt")),
            ("root-ca-file", format!("{PKI}/ca.crt")),
            ("cluster-signing-cert-file", format!("{PKI}/ca.crt")),
            ("cluster-signing-key-file", format!("{PKI}/ca.key")),
            (
                "requestheader-client-ca-file",
                format!("{PKI}/front-proxy-ca.crt"),
            ),
            ("service-account-private-key-file", format!("{PKI}/sa.key")),
            ("use-service-account-credentials", "true".into()),
            ("controllers", "*,bootstrapsigner,tokencleaner".into()),
            ("leader-elect", "true".into()),
            ("bind-address", "127.0.0.1".into()),
            ("cluster-name", m.cluster_id.label()),
            ("allocate-node-cidrs", "true".into()),
            ("cluster-cidr", n.pod_cidr().to_string()),
            ("service-cluster-ip-range", n.service_cidr().to_string()),
        ],
    );
    let scheduler_conf = "/etc/kubernetes/scheduler.conf";
    let scheduler = command(
        "kube-scheduler",
        &[
            ("kubeconfig", scheduler_conf.into()),
            ("authentication-kubeconfig", scheduler_conf.into()),
            ("authorization-kubeconfig", scheduler_conf.into()),
            ("leader-elect", "true".into()),
            ("bind-address", "127.0.0.1".into()),
        ],
    );
    let image = |component: &str| {
        format!(
            "{}/{component}:{}",
            settings.image_repository, settings.kubernetes_version
        )
    };
    let ca_certs = || host("ca-certs", "/etc/ssl/certs", "DirectoryOrCreate", true);
    let k8s_certs = || host("k8s-certs", PKI, "DirectoryOrCreate", true);
    let pods = [
        (
            "etcd.yaml",
            pod(
                "etcd",
                settings.etcd_image.clone(),
                etcd,
                vec![
                    host("etcd-data", "/var/lib/etcd", "DirectoryOrCreate", false),
                    host(
                        "etcd-certs",
                        "/etc/kubernetes/pki/etcd",
                        "DirectoryOrCreate",
                        true,
                    ),
                ],
            ),
        ),
        (
            "kube-apiserver.yaml",
            pod(
                "kube-apiserver",
                image("kube-apiserver"),
                apiserver,
                vec![k8s_certs(), ca_certs()],
            ),
        ),
        (
            "kube-controller-manager.yaml",
            pod(
                "kube-controller-manager",
                image("kube-controller-manager"),
                controller_manager,
                vec![
                    k8s_certs(),
                    ca_certs(),
                    host("kubeconfig", controller_manager_conf, "FileOrCreate", true),
                ],
            ),
        ),
        (
            "kube-scheduler.yaml",
            pod(
                "kube-scheduler",
                image("kube-scheduler"),
                scheduler,
                vec![host("kubeconfig", scheduler_conf, "FileOrCreate", true)],
            ),
        ),
    ];
    pods.into_iter()
        .map(|(name, pod)| {
            yaml_serde::to_string(&pod)
                .map(|yaml| (name, yaml))
                .map_err(|e| format!("rendering {name}: {e}"))
        })
        .collect()
}
