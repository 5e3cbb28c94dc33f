use std::fmt;

use sha2::{Digest, Sha256};

use super::secret::SecretText;

/// A node's bootstrap credential: 256 random bits, base64url. It lives only in the node's
/// userdata; plinth stores its hash.
#[derive(Debug, Clone)]
pub struct BootstrapToken(SecretText);

impl BootstrapToken {
    /// A fresh token from the thread's CSPRNG.
    pub fn generate() -> Self {
        use base64::Engine as _;
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        rand::fill(&mut bytes[..]);
        Self(SecretText::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes[..]),
        ))
    }

    /// The token text (for the userdata shim only).
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The hash to persist.
    pub fn hash(&self) -> BootstrapTokenHash {
        BootstrapTokenHash::of(self.expose())
    }
}

/// `sha256:<hex>` of a bootstrap token. A plain hash suffices: the token has 256 bits of entropy,
/// so there is nothing to brute-force.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapTokenHash(String);

impl BootstrapTokenHash {
    const PREFIX: &'static str = "sha256:";

    /// The hash of a presented token.
    pub fn of(token: &str) -> Self {
        let digest = Sha256::digest(token.as_bytes());
        let mut text = String::with_capacity(Self::PREFIX.len() + 64);
        text.push_str(Self::PREFIX);
        for byte in digest {
            text.push(char::from(HEX[usize::from(byte >> 4)]));
            text.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        Self(text)
    }

    /// Wraps a stored hash.
    pub fn from_stored(text: String) -> Self {
        Self(text)
    }

    /// The stored form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `token` hashes to this value, in time independent of where they differ.
    pub fn matches(&self, token: &str) -> bool {
        let candidate = Self::of(token);
        let (a, b) = (self.0.as_bytes(), candidate.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for BootstrapTokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BootstrapTokenHash({})", self.0)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_and_url_safe() {
        let (a, b) = (BootstrapToken::generate(), BootstrapToken::generate());
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.expose().len(), 43);
        assert!(
            a.expose()
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }

    #[test]
    fn the_hash_is_sha256_hex_and_matches_only_its_token() {
        // sha256("abc"), a published test vector.
        let hash = BootstrapTokenHash::of("abc");
        assert_eq!(
            hash.as_str(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(hash.matches("abc"));
        assert!(!hash.matches("abd"));
        assert!(!hash.matches(""));
        let token = BootstrapToken::generate();
        assert!(token.hash().matches(token.expose()));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let token = BootstrapToken::generate();
        assert!(!format!("{token:?}").contains(token.expose()));
    }
}
