//! A secret in an answer body — a kubeconfig, a token, a bundle's key file: written out as its
//! text when the body is serialized (the caller asked for it), shown as `<redacted>` by `Debug`
//! (so a body that reaches a log line or a panic message carries no key), and zeroized when
//! dropped, like the domain's [`SecretText`] it wraps.

use plinth_domain::model::SecretText;
use serde::{Serialize, Serializer};

/// A secret field of an answer body.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretField(SecretText);

impl SecretField {
    /// The secret's text.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl From<SecretText> for SecretField {
    fn from(secret: SecretText) -> Self {
        Self(secret)
    }
}

impl From<&SecretText> for SecretField {
    fn from(secret: &SecretText) -> Self {
        Self(secret.clone())
    }
}

impl std::fmt::Debug for SecretField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for SecretField {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.expose())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::bodies::{CredentialsBody, ReissuedTokenBody};
    use crate::http::bootstrap::BundleFileBody;

    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nTOP-SECRET\n-----END PRIVATE KEY-----";

    fn secret() -> SecretField {
        SecretText::new(KEY).into()
    }

    /// `Debug` of a value holds neither the key nor its armour.
    fn assert_hidden(what: &str, debug: String) {
        assert!(!debug.contains("TOP-SECRET"), "{what}: {debug}");
        assert!(!debug.contains("PRIVATE KEY"), "{what}: {debug}");
        assert!(debug.contains("<redacted>"), "{what}: {debug}");
    }

    #[test]
    fn a_secret_field_is_written_out_but_never_debugged() {
        assert_eq!(serde_json::to_value(secret()).unwrap(), KEY);
        assert_hidden("SecretField", format!("{:?}", secret()));
    }

    #[test]
    fn a_founded_clusters_answer_does_not_debug_its_kubeconfig() {
        use plinth_domain::FoundedCluster;
        use plinth_domain::model::{ClusterId, Networking, OperationId};
        let founded = FoundedCluster {
            cluster_id: ClusterId::new_random(),
            operation_id: OperationId::new_random(),
            name: None,
            vm_ids: Vec::new(),
            control_plane_dns_name: "api.example".into(),
            admin_kubeconfig: SecretText::new(KEY),
            networking: Networking::default(),
            nodes: Vec::new(),
            bootstrap_path_template: String::new(),
            ingress_wildcard_dns_name: String::new(),
            suggested_dns_records: Vec::new(),
            dns_configured: false,
            dns_error: None,
        };
        assert_hidden("FoundedCluster", format!("{founded:?}"));
        let body = crate::http::bodies::FoundedClusterBody::from(founded);
        assert_hidden("FoundedClusterBody", format!("{body:?}"));
        assert!(serde_json::to_string(&body).unwrap().contains("TOP-SECRET"));
    }

    #[test]
    fn no_answer_body_with_a_secret_debugs_it() {
        assert_hidden(
            "CredentialsBody",
            format!(
                "{:?}",
                CredentialsBody {
                    kubeconfig: secret(),
                    expires_at: "2027-01-01T00:00:00Z".into(),
                }
            ),
        );
        assert_hidden(
            "ReissuedTokenBody",
            format!(
                "{:?}",
                ReissuedTokenBody {
                    token: secret(),
                    expires_at: "2027-01-01T00:00:00Z".into(),
                    user_data: secret(),
                }
            ),
        );
        assert_hidden(
            "BundleFileBody",
            format!(
                "{:?}",
                BundleFileBody {
                    path: "/etc/kubernetes/pki/ca.key".into(),
                    mode: "0600".into(),
                    content: secret(),
                }
            ),
        );
    }
}
