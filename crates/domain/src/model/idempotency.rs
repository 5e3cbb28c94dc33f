//! A client's `Idempotency-Key` and the fingerprint of the request it came with: a retried
//! request with both the same answers what the first one did, without doing it again.

use std::fmt;

use sha2::{Digest, Sha256};

use super::ids::InvalidValue;

/// A key a client sends so that retrying a request is safe. It is the client's: plinth checks
/// only its shape and keeps it per organization.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The longest key accepted.
    pub const MAX_LEN: usize = 255;

    /// Accepts 1 to 255 visible ASCII characters (`!` to `~`: no spaces, no control characters).
    ///
    /// # Errors
    /// An empty key, a longer one, or one with another character.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err(InvalidValue(format!(
                "an idempotency key has 1 to {} characters",
                Self::MAX_LEN
            )));
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidValue(
                "an idempotency key holds only visible ASCII characters (no spaces)".into(),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// SHA-256 of a request in a canonical form, lowercase hex: the same key sent with another
/// request is refused rather than answered with the first one's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestFingerprint(String);

impl RequestFingerprint {
    /// The fingerprint of `route` (e.g. `POST /clusters`) with its canonical body.
    pub fn of(route: &str, canonical_body: &[u8]) -> Self {
        let mut hash = Sha256::new();
        hash.update(route.as_bytes());
        hash.update(b"\n");
        hash.update(canonical_body);
        Self(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Wraps a stored fingerprint.
    pub fn from_stored(hex: impl Into<String>) -> Self {
        Self(hex.into())
    }

    /// The fingerprint as lowercase hex.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The idempotency of one request: the client's key and the request's fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    /// The client's key.
    pub key: IdempotencyKey,
    /// What the request was.
    pub fingerprint: RequestFingerprint,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_1_to_255_visible_ascii_characters() {
        for good in [
            "a",
            "4f1c-retry/1",
            "~!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}",
            &"k".repeat(255),
        ] {
            assert_eq!(IdempotencyKey::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            " ",
            "a b",
            "tab\there",
            "new\nline",
            "é",
            "\u{7f}",
            &"k".repeat(256),
        ] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_fingerprint_is_the_sha256_of_route_and_body() {
        let one = RequestFingerprint::of("POST /clusters", b"{\"a\":1}");
        assert_eq!(one.as_str().len(), 64);
        assert!(
            one.as_str()
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(one, RequestFingerprint::of("POST /clusters", b"{\"a\":1}"));
        assert_ne!(one, RequestFingerprint::of("POST /clusters", b"{\"a\":2}"));
        assert_ne!(
            one,
            RequestFingerprint::of("DELETE /clusters", b"{\"a\":1}")
        );
        // printf 'POST /clusters\n{}' | sha256sum
        assert_eq!(
            RequestFingerprint::of("POST /clusters", b"{}").as_str(),
            "22ca7db4d605bcaeb09cf15cbc0e8a4833179d93fc567cb6115004cd477aa3a9"
        );
    }
}
