//! Kubeconfig rendering: client-go's `clientcmd/api/v1` shape, `*-data` fields as base64 PEM.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::model::SecretText;
use crate::ports::pki::CertifiedKey;

/// What a kubeconfig with one cluster, one user and one context holds.
#[derive(Debug)]
pub struct KubeconfigSpec<'a> {
    /// The cluster entry's name, e.g. `cluster-<id>`.
    pub cluster_name: &'a str,
    /// The API server URL, e.g. `https://api.cluster-<id>.<zone>:6443`.
    pub server: &'a str,
    /// The CA the client trusts, PEM.
    pub ca_cert_pem: &'a str,
    /// The user entry's name, e.g. `cluster-<id>-admin`.
    pub user_name: &'a str,
    /// The client certificate and key.
    pub client: &'a CertifiedKey,
}

impl KubeconfigSpec<'_> {
    /// The context's name: `<user>@<cluster>`, as kubeadm and Cluster API name it.
    pub fn context_name(&self) -> String {
        format!("{}@{}", self.user_name, self.cluster_name)
    }
}

/// Renders a kubeconfig as YAML, `current-context` set to its only context.
pub fn render_kubeconfig(spec: &KubeconfigSpec<'_>) -> Result<SecretText, String> {
    let context_name = spec.context_name();
    let client_key_data = Zeroizing::new(STANDARD.encode(spec.client.key_pem.expose()));
    let config = Kubeconfig {
        api_version: "v1",
        kind: "Config",
        clusters: [Named {
            name: spec.cluster_name,
            cluster: Some(ClusterEntry {
                server: spec.server,
                certificate_authority_data: STANDARD.encode(spec.ca_cert_pem),
            }),
            user: None,
            context: None,
        }],
        users: [Named {
            name: spec.user_name,
            cluster: None,
            user: Some(UserEntry {
                client_certificate_data: STANDARD.encode(&spec.client.cert_pem),
                client_key_data: &client_key_data,
            }),
            context: None,
        }],
        contexts: [Named {
            name: &context_name,
            cluster: None,
            user: None,
            context: Some(ContextEntry {
                cluster: spec.cluster_name,
                user: spec.user_name,
            }),
        }],
        current_context: &context_name,
    };
    yaml_serde::to_string(&config)
        .map(SecretText::new)
        .map_err(|e| e.to_string())
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Kubeconfig<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    clusters: [Named<'a>; 1],
    users: [Named<'a>; 1],
    contexts: [Named<'a>; 1],
    current_context: &'a str,
}

/// A named list entry; exactly one of the three bodies is set.
#[derive(Serialize)]
struct Named<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<ClusterEntry<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<UserEntry<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<ContextEntry<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct ClusterEntry<'a> {
    server: &'a str,
    certificate_authority_data: String,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct UserEntry<'a> {
    client_certificate_data: String,
    client_key_data: &'a str,
}

#[derive(Serialize)]
struct ContextEntry<'a> {
    cluster: &'a str,
    user: &'a str,
}

#[cfg(test)]
mod tests {
    use yaml_serde::Value;

    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----\n";
    const CERT: &str = "-----BEGIN CERTIFICATE-----\nY2VydA==\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\na2V5\n-----END PRIVATE KEY-----\n";

    fn render() -> Value {
        let client = CertifiedKey {
            cert_pem: CERT.to_owned(),
            key_pem: SecretText::new(KEY),
        };
        let yaml = render_kubeconfig(&KubeconfigSpec {
            cluster_name: "cluster-42",
            server: "https://api.cluster-42.k8s.example:6443",
            ca_cert_pem: CA,
            user_name: "cluster-42-admin",
            client: &client,
        })
        .unwrap();
        yaml_serde::from_str(yaml.expose()).unwrap()
    }

    fn text<'a>(value: &'a Value, path: &[&str]) -> &'a str {
        let mut at = value;
        for key in path {
            at = match key.parse::<usize>() {
                Ok(i) => &at[i],
                Err(_) => &at[*key],
            };
        }
        at.as_str()
            .unwrap_or_else(|| panic!("{path:?} is not a string"))
    }

    fn decoded(value: &Value, path: &[&str]) -> String {
        String::from_utf8(STANDARD.decode(text(value, path)).unwrap()).unwrap()
    }

    #[test]
    fn renders_the_clientcmd_v1_shape() {
        let config = render();
        assert_eq!(text(&config, &["apiVersion"]), "v1");
        assert_eq!(text(&config, &["kind"]), "Config");
        assert_eq!(
            config["clusters"].as_sequence().map(Vec::len),
            Some(1),
            "one cluster"
        );
        assert_eq!(config["users"].as_sequence().map(Vec::len), Some(1));
        assert_eq!(config["contexts"].as_sequence().map(Vec::len), Some(1));
    }

    #[test]
    fn parses_back_with_the_expected_server_names_and_data() {
        let config = render();
        assert_eq!(text(&config, &["clusters", "0", "name"]), "cluster-42");
        assert_eq!(
            text(&config, &["clusters", "0", "cluster", "server"]),
            "https://api.cluster-42.k8s.example:6443"
        );
        assert_eq!(
            decoded(
                &config,
                &["clusters", "0", "cluster", "certificate-authority-data"]
            ),
            CA
        );
        assert_eq!(text(&config, &["users", "0", "name"]), "cluster-42-admin");
        assert_eq!(
            decoded(&config, &["users", "0", "user", "client-certificate-data"]),
            CERT
        );
        assert_eq!(
            decoded(&config, &["users", "0", "user", "client-key-data"]),
            KEY
        );
        assert_eq!(
            text(&config, &["contexts", "0", "name"]),
            "cluster-42-admin@cluster-42"
        );
        assert_eq!(
            text(&config, &["contexts", "0", "context", "cluster"]),
            "cluster-42"
        );
        assert_eq!(
            text(&config, &["contexts", "0", "context", "user"]),
            "cluster-42-admin"
        );
        assert_eq!(
            text(&config, &["current-context"]),
            "cluster-42-admin@cluster-42"
        );
    }

    #[test]
    fn pem_never_appears_unencoded() {
        let client = CertifiedKey {
            cert_pem: CERT.to_owned(),
            key_pem: SecretText::new(KEY),
        };
        let yaml = render_kubeconfig(&KubeconfigSpec {
            cluster_name: "c",
            server: "https://c:6443",
            ca_cert_pem: CA,
            user_name: "u",
            client: &client,
        })
        .unwrap();
        assert!(!yaml.expose().contains("BEGIN"));
    }
}
