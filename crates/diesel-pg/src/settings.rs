//! The adapter's configuration sections, `[database]` and `[master_keys]`, as they are read from
//! the service's configuration, each with its own checks.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use plinth_domain::model::SecretText;
use plinth_domain::settings::{SettingsError, positive, seconds};
use serde::Deserialize;

use crate::envelope::Envelope;

/// `[database]`: how to reach PostgreSQL, and the bounds on every call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgSettings {
    /// `postgres://user:password@host:port/database`; secret, as it holds the password.
    pub url: SecretText,
    /// Pool size. Every call holds one connection for its own short transaction only.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Opening a connection, seconds.
    #[serde(default = "defaults::five")]
    pub connect_timeout_secs: u64,
    /// Waiting for a free connection from the pool, seconds.
    #[serde(default = "defaults::five")]
    pub acquire_timeout_secs: u64,
    /// One statement, including commit, seconds (enforced by plinth and by the server).
    #[serde(default = "defaults::statement_timeout_secs")]
    pub statement_timeout_secs: u64,
    /// Waiting for a lock, seconds (server-side `lock_timeout`).
    #[serde(default = "defaults::five")]
    pub lock_timeout_secs: u64,
    /// A transaction left idle, seconds (server-side `idle_in_transaction_session_timeout`).
    #[serde(default = "defaults::idle_in_transaction_timeout_secs")]
    pub idle_in_transaction_timeout_secs: u64,
    /// Apply pending migrations when the service starts.
    #[serde(default)]
    pub migrate_on_start: bool,
}

mod defaults {
    pub(super) fn max_connections() -> usize {
        16
    }
    pub(super) fn five() -> u64 {
        5
    }
    pub(super) fn statement_timeout_secs() -> u64 {
        10
    }
    pub(super) fn idle_in_transaction_timeout_secs() -> u64 {
        30
    }
}

impl PgSettings {
    /// Defaults for `url`: 16 connections, 5 s to connect or acquire, 10 s per statement.
    pub fn new(url: SecretText) -> Self {
        Self {
            url,
            max_connections: defaults::max_connections(),
            connect_timeout_secs: defaults::five(),
            acquire_timeout_secs: defaults::five(),
            statement_timeout_secs: defaults::statement_timeout_secs(),
            lock_timeout_secs: defaults::five(),
            idle_in_transaction_timeout_secs: defaults::idle_in_transaction_timeout_secs(),
            migrate_on_start: false,
        }
    }

    /// Checks every value; keys are named within the section.
    ///
    /// # Errors
    /// The first key that cannot work.
    pub fn check(&self) -> Result<(), SettingsError> {
        let url = self.url.expose();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(SettingsError::new(
                "url",
                "must be set (postgres://user:password@host:port/database)",
            ));
        }
        positive("max_connections", self.max_connections as u64)?;
        self.connect_timeout()?;
        self.acquire_timeout()?;
        self.statement_timeout()?;
        self.session_settings()?;
        Ok(())
    }

    /// The `SET`s every pooled connection runs: the server's own bounds on a statement, a lock
    /// wait and an idle transaction.
    pub(crate) fn session_settings(&self) -> Result<String, SettingsError> {
        let statement = self.statement_timeout()?.as_millis();
        let lock = seconds("lock_timeout_secs", self.lock_timeout_secs)?.as_millis();
        let idle = seconds(
            "idle_in_transaction_timeout_secs",
            self.idle_in_transaction_timeout_secs,
        )?
        .as_millis();
        Ok(format!(
            "SET statement_timeout = {statement}; SET lock_timeout = {lock}; \
             SET idle_in_transaction_session_timeout = {idle};"
        ))
    }

    pub(crate) fn connect_timeout(&self) -> Result<Duration, SettingsError> {
        seconds("connect_timeout_secs", self.connect_timeout_secs)
    }

    pub(crate) fn acquire_timeout(&self) -> Result<Duration, SettingsError> {
        seconds("acquire_timeout_secs", self.acquire_timeout_secs)
    }

    pub(crate) fn statement_timeout(&self) -> Result<Duration, SettingsError> {
        seconds("statement_timeout_secs", self.statement_timeout_secs)
    }
}

/// `[master_keys]`: the keys that seal private keys at rest, from a key file (one
/// `<key-id>:<base64 of 32 bytes>` per line) or inline; `primary` seals, every key opens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterKeySettings {
    /// The key id new values are sealed with.
    pub primary: String,
    /// The key file.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Or the keys inline, id to base64.
    #[serde(default)]
    pub keys: BTreeMap<String, SecretText>,
}

impl MasterKeySettings {
    /// Loads the keys; keys are named within the section.
    ///
    /// # Errors
    /// A file that cannot be read, both or neither of `file` and `keys`, or keys the envelope
    /// refuses (wrong length, unknown primary…).
    pub fn envelope(&self) -> Result<Envelope, SettingsError> {
        let file = self.file.as_ref().filter(|f| !f.as_os_str().is_empty());
        let envelope = match (file, self.keys.is_empty()) {
            (Some(file), true) => {
                let text = std::fs::read_to_string(file)
                    .map(SecretText::new)
                    .map_err(|e| {
                        SettingsError::new("file", format!("cannot read {}: {e}", file.display()))
                    })?;
                Envelope::from_key_file_text(&self.primary, &text)
                    .map_err(|e| SettingsError::new("file", e))?
            }
            (None, false) => Envelope::new(
                &self.primary,
                self.keys.iter().map(|(id, key)| (id.clone(), key.clone())),
            )
            .map_err(|e| SettingsError::new("keys", e))?,
            (Some(_), false) => {
                return Err(SettingsError::new("keys", "set file or keys, not both"));
            }
            (None, true) => return Err(SettingsError::new("file", "set file or keys")),
        };
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

    #[test]
    fn master_keys_come_from_a_file_or_inline_never_both() {
        let inline = MasterKeySettings {
            primary: "k1".into(),
            file: None,
            keys: [("k1".to_owned(), SecretText::new(KEY))].into(),
        };
        assert_eq!(inline.envelope().unwrap().primary_key_id(), "k1");

        let path = std::env::temp_dir().join(format!("plinth-keys-{}", std::process::id()));
        std::fs::write(&path, format!("# rotated\nk0:{KEY}\n\nk1:{KEY}\n")).unwrap();
        let from_file = MasterKeySettings {
            primary: "k1".into(),
            file: Some(path.clone()),
            keys: BTreeMap::new(),
        };
        assert_eq!(from_file.envelope().unwrap().primary_key_id(), "k1");
        let both = MasterKeySettings {
            keys: inline.keys.clone(),
            ..from_file.clone()
        };
        assert!(both.envelope().unwrap_err().reason.contains("not both"));
        std::fs::write(&path, "k1 has no colon\n").unwrap();
        let bad_line = from_file.envelope().unwrap_err();
        assert_eq!(bad_line.key, "file");
        assert!(bad_line.reason.contains("line 1"), "{bad_line}");
        std::fs::remove_file(&path).unwrap();

        let short = MasterKeySettings {
            keys: [("k1".to_owned(), SecretText::new("AQEB"))].into(),
            ..inline
        };
        assert!(short.envelope().unwrap_err().reason.contains("32"));
    }

    #[test]
    fn database_values_are_checked_by_key() {
        assert!(
            PgSettings::new(SecretText::new("postgres://u:p@h/d"))
                .check()
                .is_ok()
        );
        assert_eq!(
            PgSettings::new(SecretText::new(""))
                .check()
                .unwrap_err()
                .key,
            "url"
        );
        let zero = PgSettings {
            statement_timeout_secs: 0,
            ..PgSettings::new(SecretText::new("postgres://u:p@h/d"))
        };
        assert_eq!(zero.check().unwrap_err().key, "statement_timeout_secs");
    }
}
