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
}
