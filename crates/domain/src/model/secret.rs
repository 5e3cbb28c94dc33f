use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// Text that must never reach a log: private key PEM, a kubeconfig with a key inside, a token.
///
/// `Debug` and `Display` print a placeholder, and the bytes are wiped when the value is dropped.
/// The only way to the text is [`SecretText::expose`], so every place that reads it is greppable.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SecretText(String);

impl SecretText {
    /// Wraps text that is secret.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The secret text itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Configuration files and environment variables carry secrets too (a token, a database URL).
impl<'de> serde::Deserialize<'de> for SecretText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretText(<redacted>)")
    }
}

impl fmt::Display for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_text() {
        let secret = SecretText::new("-----BEGIN PRIVATE KEY-----abc");
        assert_eq!(format!("{secret:?}"), "SecretText(<redacted>)");
        assert_eq!(secret.to_string(), "<redacted>");
        assert_eq!(secret.expose(), "-----BEGIN PRIVATE KEY-----abc");
    }

    /// Every domain type that carries a key, a token or a kubeconfig, debugged: none shows it.
    #[test]
    fn no_secret_bearing_type_debugs_its_secret() {
        use crate::bootstrap::{BundleFile, ReissuedToken};
        use crate::credentials::AdminCredentials;
        use crate::ports::compute::NewVm;
        use crate::ports::pki::{CertifiedKey, ServiceAccountKeyPair};
        let secret = || SecretText::new("-----BEGIN PRIVATE KEY-----\nTOP-SECRET");
        let now = time::OffsetDateTime::now_utc();
        let debugged = [
            format!(
                "{:?}",
                CertifiedKey {
                    cert_pem: "cert".into(),
                    key_pem: secret()
                }
            ),
            format!(
                "{:?}",
                ServiceAccountKeyPair {
                    public_key_pem: "public".into(),
                    private_key_pem: secret()
                }
            ),
            format!(
                "{:?}",
                AdminCredentials {
                    kubeconfig: secret(),
                    expires_at: now,
                    serial_hex: "01".into()
                }
            ),
            format!(
                "{:?}",
                ReissuedToken {
                    token: secret(),
                    expires_at: now,
                    user_data: secret()
                }
            ),
            format!(
                "{:?}",
                BundleFile {
                    path: "/etc/kubernetes/pki/ca.key".into(),
                    mode: 0o600,
                    contents: secret()
                }
            ),
            format!(
                "{:?}",
                NewVm {
                    name: "cp-1".into(),
                    flavor: crate::model::FlavorId::parse("m1").unwrap(),
                    image: crate::model::ImageId::parse("debian").unwrap(),
                    subnet: crate::model::SubnetId::parse("subnet-1").unwrap(),
                    security_groups: Vec::new(),
                    tags: crate::ports::compute::Tags::new(),
                    user_data: secret(),
                    idempotency_key: "k".into(),
                }
            ),
        ];
        for debug in debugged {
            assert!(!debug.contains("TOP-SECRET"), "{debug}");
            assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        }
    }
}
