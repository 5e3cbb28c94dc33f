//! Building blocks of every configuration section: an error that names its key, secrets given
//! inline or in a file, and bounds. Each crate owns the `Deserialize` struct of its own section
//! and checks it with these; the service only composes the sections.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::model::SecretText;

/// A configuration key that cannot work, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration key `{key}`: {reason}")]
pub struct SettingsError {
    /// The key, e.g. `request_timeout_ms` inside its section, `dns.request_timeout_ms` outside.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl SettingsError {
    /// `key` cannot work because of `reason`.
    pub fn new(key: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self {
            key: key.into(),
            reason: reason.to_string(),
        }
    }

    /// The same error with its key inside `section`: `ttl` becomes `dns.ttl`.
    #[must_use]
    pub fn within(mut self, section: &str) -> Self {
        self.key = format!("{section}.{}", self.key);
        self
    }
}

/// A secret given either inline (`key`) or in a file (`key_file`, trimmed), exactly one of the
/// two; an empty value counts as not given.
///
/// # Errors
/// Both or neither given, or the file cannot be read.
pub fn secret_value_or_file(
    key: &str,
    value: Option<&SecretText>,
    file: Option<&Path>,
) -> Result<SecretText, SettingsError> {
    let value = value.filter(|v| !v.expose().is_empty());
    let file = file.filter(|f| !f.as_os_str().is_empty());
    match (value, file) {
        (Some(value), None) => Ok(value.clone()),
        (None, Some(file)) => std::fs::read_to_string(file)
            .map(|text| SecretText::new(text.trim()))
            .map_err(|e| {
                SettingsError::new(
                    format!("{key}_file"),
                    format!("cannot read {}: {e}", file.display()),
                )
            }),
        (Some(_), Some(_)) => Err(SettingsError::new(
            key,
            format!("set {key} or {key}_file, not both"),
        )),
        (None, None) => Err(SettingsError::new(key, format!("set {key} or {key}_file"))),
    }
}

/// A count that must be at least 1.
///
/// # Errors
/// `value` is 0.
pub fn positive(key: &str, value: u64) -> Result<u64, SettingsError> {
    if value == 0 {
        return Err(SettingsError::new(key, "must be greater than 0"));
    }
    Ok(value)
}

/// A positive number of milliseconds.
///
/// # Errors
/// `value` is 0.
pub fn millis(key: &str, value: u64) -> Result<Duration, SettingsError> {
    positive(key, value).map(Duration::from_millis)
}

/// A positive number of seconds.
///
/// # Errors
/// `value` is 0.
pub fn seconds(key: &str, value: u64) -> Result<Duration, SettingsError> {
    positive(key, value).map(Duration::from_secs)
}

/// An `http://` or `https://` base URL, returned without a trailing `/`.
///
/// # Errors
/// Any other scheme, or an empty URL.
pub fn base_url(key: &str, value: &str) -> Result<String, SettingsError> {
    let trimmed = value.trim_end_matches('/');
    let has_host = ["http://", "https://"].iter().any(|scheme| {
        trimmed
            .strip_prefix(scheme)
            .is_some_and(|rest| !rest.is_empty())
    });
    if !has_host {
        return Err(SettingsError::new(
            key,
            format!("{value:?} must start with http:// or https:// and name a host"),
        ));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_their_key_inside_and_outside_the_section() {
        let e = positive("ttl", 0).unwrap_err().within("dns");
        assert_eq!(e.key, "dns.ttl");
        assert_eq!(
            e.to_string(),
            "configuration key `dns.ttl`: must be greater than 0"
        );
    }

    #[test]
    fn a_secret_is_inline_or_in_a_file_never_both_or_neither() {
        let inline = SecretText::new("s3cret");
        assert_eq!(
            secret_value_or_file("token", Some(&inline), None)
                .unwrap()
                .expose(),
            "s3cret"
        );
        let file = std::env::temp_dir().join(format!("plinth-secret-{}", std::process::id()));
        std::fs::write(&file, "from-file\n").unwrap();
        assert_eq!(
            secret_value_or_file("token", Some(&SecretText::new("")), Some(&file))
                .unwrap()
                .expose(),
            "from-file"
        );
        let both = secret_value_or_file("token", Some(&inline), Some(&file)).unwrap_err();
        assert!(both.reason.contains("not both"), "{both}");
        std::fs::remove_file(&file).unwrap();
        let missing = secret_value_or_file("token", None, Some(&file)).unwrap_err();
        assert_eq!(missing.key, "token_file");
        let neither = secret_value_or_file("token", None, None).unwrap_err();
        assert_eq!(neither.key, "token");
    }

    #[test]
    fn base_urls_need_a_scheme_and_a_host() {
        assert_eq!(
            base_url("u", "http://127.0.0.1:8081/").unwrap(),
            "http://127.0.0.1:8081"
        );
        for bad in ["ftp://x", "127.0.0.1:1", "http://", ""] {
            assert!(base_url("u", bad).is_err(), "{bad}");
        }
    }
}
