//! Envelope encryption of private keys at rest: AES-256-GCM under a master key that never
//! touches the database.
//!
//! A stored value is `v1:<key-id>:<base64url(nonce || ciphertext || tag)>`. Each value gets a
//! fresh random 96-bit nonce. The associated data binds the value to its key id, table, column
//! and row, so a ciphertext copied to another row or column, or relabelled with another key id,
//! fails to open. Several master keys can be loaded: the primary seals, every loaded key opens,
//! so the primary can rotate while old rows stay readable.

use std::collections::HashMap;
use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use plinth_domain::model::{ClusterId, NodeOrdinal, SecretText};
use plinth_domain::ports::pki::SharedClientCert;
use zeroize::Zeroizing;

const VERSION: &str = "v1";
const NONCE_LEN: usize = 12;
const KEY_LEN: usize = 32;

/// Where a sealed value lives: what its associated data binds it to.
#[derive(Debug, Clone, Copy)]
pub struct Slot<'a> {
    /// Table name, e.g. `kubeclusters`.
    pub table: &'a str,
    /// Column name, e.g. `ca_key`.
    pub column: &'a str,
    /// The row's identity, e.g. the cluster id, or `<cluster id>/<ordinal>`.
    pub row: &'a str,
}

/// The row a sealed value belongs to, as its associated data names it. Sealing and opening both
/// build the row id here, so the two cannot drift apart.
#[derive(Debug, Clone, Copy)]
pub enum SealedRow {
    /// A `kubeclusters` row: `<cluster id>`.
    Cluster(ClusterId),
    /// An `etcdnodes` or `apiservernodes` row: `<cluster id>/<ordinal>`.
    Node(ClusterId, NodeOrdinal),
    /// A `clustercerts` row: `<cluster id>/<stored name>`.
    SharedCert(ClusterId, SharedClientCert),
}

impl fmt::Display for SealedRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cluster(cluster) => write!(f, "{cluster}"),
            Self::Node(cluster, ordinal) => write!(f, "{cluster}/{ordinal}"),
            Self::SharedCert(cluster, cert) => write!(f, "{cluster}/{}", cert.stored_name()),
        }
    }
}

impl Slot<'_> {
    fn associated_data(&self, key_id: &str) -> Vec<u8> {
        // NUL separates the parts; none of them can contain one.
        format!(
            "plinth-envelope-{VERSION}\0{key_id}\0{}\0{}\0{}",
            self.table, self.column, self.row
        )
        .into_bytes()
    }
}

/// Why the master keys cannot be used; each variant names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MasterKeyError {
    /// No key was given.
    #[error("no master key configured")]
    NoKeys,
    /// A key id that cannot appear in `v1:<key-id>:`.
    #[error("master key id {0:?} must be 1 to 32 characters of a-z, 0-9 and -")]
    BadId(String),
    /// Two keys with one id.
    #[error("master key id {0:?} appears twice")]
    DuplicateId(String),
    /// The key text is not base64.
    #[error("master key {0:?} is not valid base64")]
    NotBase64(String),
    /// AES-256 needs exactly 32 bytes.
    #[error(
        "master key {id:?} is {len} bytes; AES-256 needs exactly 32 (base64 of 32 random bytes)"
    )]
    WrongLength {
        /// The key id.
        id: String,
        /// Its decoded length.
        len: usize,
    },
    /// The primary key id names no loaded key.
    #[error("primary master key {0:?} is not among the loaded keys")]
    UnknownPrimary(String),
    /// A line of a key file that is not `<key-id>:<base64>`.
    #[error("master key file line {0} is not `<key-id>:<base64 key>`")]
    BadLine(usize),
}

/// Why a stored value cannot be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not `v1:<key-id>:<data>`.
    #[error("stored value is not a v1 envelope")]
    Malformed,
    /// Sealed under a key that is not loaded.
    #[error("stored value was sealed with master key {0:?}, which is not loaded")]
    UnknownKey(String),
    /// Wrong key, tampered bytes, or a value moved from another row or column.
    #[error("stored value failed authentication (tampered, moved, or wrong key)")]
    Unauthentic,
    /// The plaintext is not UTF-8 text.
    #[error("stored value is not text")]
    NotText,
    /// Encryption itself failed (only possible for absurdly large values).
    #[error("sealing a value failed")]
    SealFailed,
}

/// Seals and opens private keys for storage.
pub struct Envelope {
    primary: String,
    ciphers: HashMap<String, Aes256Gcm>,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<&String> = self.ciphers.keys().collect();
        ids.sort();
        f.debug_struct("Envelope")
            .field("primary", &self.primary)
            .field("key_ids", &ids)
            .finish()
    }
}

impl Envelope {
    /// Loads master keys given as `(id, base64 of 32 bytes)`; `primary` seals new values.
    pub fn new<I>(primary: &str, keys: I) -> Result<Self, MasterKeyError>
    where
        I: IntoIterator<Item = (String, SecretText)>,
    {
        let mut ciphers = HashMap::new();
        for (id, encoded) in keys {
            let valid_id = !id.is_empty()
                && id.len() <= 32
                && id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !valid_id {
                return Err(MasterKeyError::BadId(id));
            }
            let bytes = Zeroizing::new(
                STANDARD
                    .decode(encoded.expose().trim())
                    .map_err(|_| MasterKeyError::NotBase64(id.clone()))?,
            );
            if bytes.len() != KEY_LEN {
                return Err(MasterKeyError::WrongLength {
                    id,
                    len: bytes.len(),
                });
            }
            let cipher =
                Aes256Gcm::new_from_slice(&bytes).map_err(|_| MasterKeyError::WrongLength {
                    id: id.clone(),
                    len: bytes.len(),
                })?;
            if ciphers.insert(id.clone(), cipher).is_some() {
                return Err(MasterKeyError::DuplicateId(id));
            }
        }
        if ciphers.is_empty() {
            return Err(MasterKeyError::NoKeys);
        }
        if !ciphers.contains_key(primary) {
            return Err(MasterKeyError::UnknownPrimary(primary.to_owned()));
        }
        Ok(Self {
            primary: primary.to_owned(),
            ciphers,
        })
    }

    /// Loads master keys from the text of a key file: one `<key-id>:<base64>` per line; blank
    /// lines and `#` comments are ignored.
    pub fn from_key_file_text(primary: &str, text: &SecretText) -> Result<Self, MasterKeyError> {
        let mut keys = Vec::new();
        for (number, line) in text.expose().lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (id, key) = line
                .split_once(':')
                .ok_or(MasterKeyError::BadLine(number + 1))?;
            keys.push((id.trim().to_owned(), SecretText::new(key.trim())));
        }
        Self::new(primary, keys)
    }

    /// The id of the key new values are sealed with.
    pub fn primary_key_id(&self) -> &str {
        &self.primary
    }

    /// Seals `plaintext` for `slot` under the primary key.
    pub fn seal(&self, plaintext: &SecretText, slot: Slot<'_>) -> Result<String, EnvelopeError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce[..]);
        let aad = slot.associated_data(&self.primary);
        let cipher = &self.ciphers[&self.primary];
        let sealed = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext.expose().as_bytes(),
                    aad: &aad,
                },
            )
            // AES-GCM refuses only messages over 64 GiB; a PEM key is a few kilobytes.
            .map_err(|_| EnvelopeError::SealFailed)?;
        let mut blob = Vec::with_capacity(NONCE_LEN + sealed.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        Ok(format!(
            "{VERSION}:{}:{}",
            self.primary,
            URL_SAFE_NO_PAD.encode(blob)
        ))
    }

    /// Opens a value sealed for `slot`, with whichever loaded key sealed it.
    pub fn open(&self, stored: &str, slot: Slot<'_>) -> Result<SecretText, EnvelopeError> {
        let mut parts = stored.splitn(3, ':');
        let (Some(VERSION), Some(key_id), Some(data)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(EnvelopeError::Malformed);
        };
        let cipher = self
            .ciphers
            .get(key_id)
            .ok_or_else(|| EnvelopeError::UnknownKey(key_id.to_owned()))?;
        let blob = URL_SAFE_NO_PAD
            .decode(data)
            .map_err(|_| EnvelopeError::Malformed)?;
        if blob.len() < NONCE_LEN + 16 {
            return Err(EnvelopeError::Malformed);
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| EnvelopeError::Malformed)?;
        let aad = slot.associated_data(key_id);
        let plaintext = Zeroizing::new(
            cipher
                .decrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: sealed,
                        aad: &aad,
                    },
                )
                .map_err(|_| EnvelopeError::Unauthentic)?,
        );
        let text = std::str::from_utf8(&plaintext).map_err(|_| EnvelopeError::NotText)?;
        crate::counters::key_opened();
        Ok(SecretText::new(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretText {
        SecretText::new(STANDARD.encode([byte; KEY_LEN]))
    }

    fn envelope() -> Envelope {
        Envelope::new("k1", [("k1".to_owned(), key(1))]).unwrap()
    }

    const PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG\n-----END PRIVATE KEY-----\n";

    fn slot(row: &str) -> Slot<'_> {
        Slot {
            table: "kubeclusters",
            column: "ca_key",
            row,
        }
    }

    #[test]
    fn a_sealed_value_opens_and_hides_the_plaintext() {
        let envelope = envelope();
        let sealed = envelope.seal(&SecretText::new(PEM), slot("c1")).unwrap();
        assert!(sealed.starts_with("v1:k1:"), "{sealed}");
        assert!(!sealed.contains("BEGIN"));
        assert!(!sealed.contains("MIGHAgEAMBMG"));
        assert_eq!(envelope.open(&sealed, slot("c1")).unwrap().expose(), PEM);
    }

    #[test]
    fn two_seals_of_one_value_differ() {
        let envelope = envelope();
        let a = envelope.seal(&SecretText::new(PEM), slot("c1")).unwrap();
        let b = envelope.seal(&SecretText::new(PEM), slot("c1")).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn a_flipped_byte_fails_to_open() {
        let envelope = envelope();
        let sealed = envelope.seal(&SecretText::new(PEM), slot("c1")).unwrap();
        let data = sealed.strip_prefix("v1:k1:").unwrap();
        let mut blob = URL_SAFE_NO_PAD.decode(data).unwrap();
        for position in [0, NONCE_LEN, blob.len() - 1] {
            blob[position] ^= 0x01;
            let tampered = format!("v1:k1:{}", URL_SAFE_NO_PAD.encode(&blob));
            assert_eq!(
                envelope.open(&tampered, slot("c1")),
                Err(EnvelopeError::Unauthentic),
                "flip at {position}"
            );
            blob[position] ^= 0x01;
        }
    }

    #[test]
    fn a_value_moved_to_another_row_or_column_fails_to_open() {
        let envelope = envelope();
        let sealed = envelope.seal(&SecretText::new(PEM), slot("c1")).unwrap();
        assert_eq!(
            envelope.open(&sealed, slot("c2")),
            Err(EnvelopeError::Unauthentic)
        );
        let other_column = Slot {
            column: "sa_private_key",
            ..slot("c1")
        };
        assert_eq!(
            envelope.open(&sealed, other_column),
            Err(EnvelopeError::Unauthentic)
        );
        let other_table = Slot {
            table: "etcdnodes",
            ..slot("c1")
        };
        assert_eq!(
            envelope.open(&sealed, other_table),
            Err(EnvelopeError::Unauthentic)
        );
    }

    #[test]
    fn old_values_open_after_a_new_primary_is_added() {
        let old = envelope();
        let sealed = old.seal(&SecretText::new(PEM), slot("c1")).unwrap();
        let rotated =
            Envelope::new("k2", [("k2".to_owned(), key(2)), ("k1".to_owned(), key(1))]).unwrap();
        assert_eq!(rotated.open(&sealed, slot("c1")).unwrap().expose(), PEM);
        assert!(
            rotated
                .seal(&SecretText::new(PEM), slot("c1"))
                .unwrap()
                .starts_with("v1:k2:")
        );
        let without_old = Envelope::new("k2", [("k2".to_owned(), key(2))]).unwrap();
        assert_eq!(
            without_old.open(&sealed, slot("c1")),
            Err(EnvelopeError::UnknownKey("k1".into()))
        );
    }

    #[test]
    fn a_relabelled_key_id_fails_to_open() {
        let both =
            Envelope::new("k1", [("k1".to_owned(), key(1)), ("k2".to_owned(), key(2))]).unwrap();
        let sealed = both.seal(&SecretText::new(PEM), slot("c1")).unwrap();
        let relabelled = sealed.replacen("v1:k1:", "v1:k2:", 1);
        assert_eq!(
            both.open(&relabelled, slot("c1")),
            Err(EnvelopeError::Unauthentic)
        );
        assert_eq!(
            both.open("plaintext", slot("c1")),
            Err(EnvelopeError::Malformed)
        );
        assert_eq!(
            both.open("v1:k1:!!", slot("c1")),
            Err(EnvelopeError::Malformed)
        );
    }

    #[test]
    fn bad_master_keys_are_configuration_errors_that_name_the_key() {
        let short = SecretText::new(STANDARD.encode([1u8; 16]));
        assert_eq!(
            Envelope::new("k1", [("k1".to_owned(), short)]).unwrap_err(),
            MasterKeyError::WrongLength {
                id: "k1".into(),
                len: 16
            }
        );
        let err = Envelope::new("k1", [("k1".to_owned(), SecretText::new("***"))]).unwrap_err();
        assert_eq!(err, MasterKeyError::NotBase64("k1".into()));
        let err = Envelope::new("K 1", [("K 1".to_owned(), key(1))]).unwrap_err();
        assert!(matches!(err, MasterKeyError::BadId(_)));
        let err = Envelope::new("k9", [("k1".to_owned(), key(1))]).unwrap_err();
        assert_eq!(err, MasterKeyError::UnknownPrimary("k9".into()));
        let err = Envelope::new("k1", [("k1".to_owned(), key(1)), ("k1".to_owned(), key(2))])
            .unwrap_err();
        assert_eq!(err, MasterKeyError::DuplicateId("k1".into()));
        assert_eq!(
            Envelope::new("k1", Vec::new()).unwrap_err(),
            MasterKeyError::NoKeys
        );
        assert!(err.to_string().contains("k1"));
    }

    #[test]
    fn a_key_file_lists_keys_one_per_line() {
        let text = SecretText::new(format!(
            "# plinth master keys\n\nk2:{}\nk1 : {}\n",
            key(2).expose(),
            key(1).expose()
        ));
        let envelope = Envelope::from_key_file_text("k2", &text).unwrap();
        assert_eq!(envelope.primary_key_id(), "k2");
        let bad = SecretText::new("k1 no colon\n");
        assert_eq!(
            Envelope::from_key_file_text("k1", &bad).unwrap_err(),
            MasterKeyError::BadLine(1)
        );
    }

    #[test]
    fn debug_shows_key_ids_only() {
        let text = format!("{:?}", envelope());
        assert_eq!(text, r#"Envelope { primary: "k1", key_ids: ["k1"] }"#);
    }
}
