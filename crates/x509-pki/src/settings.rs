//! What a deployment configures about its trust material: the `[pki]` section.

use std::time::Duration;

use plinth_domain::settings::SettingsError;
use serde::{Deserialize, Deserializer};

use crate::keys::KeyAlgorithm;

/// Key algorithms and lifetimes of the certificates plinth issues. Every key of `[pki]` is
/// optional; what is left out keeps kubeadm's default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PkiSettings {
    /// CAs and leaves: ECDSA P-256 by default.
    pub key_algorithm: KeyAlgorithm,
    /// The service-account signer: RSA-2048 by default (what every OIDC consumer accepts).
    pub service_account_key_algorithm: KeyAlgorithm,
    /// CA lifetime: 10 years by default (kubeadm's). Configured in days.
    #[serde(rename = "ca_validity_days", deserialize_with = "days")]
    pub ca_validity: Duration,
    /// Leaf lifetime: 1 year by default (kubeadm's). Configured in days.
    #[serde(rename = "leaf_validity_days", deserialize_with = "days")]
    pub leaf_validity: Duration,
    /// How far notBefore lies in the past, for clients whose clocks run behind: 5 minutes.
    #[serde(skip)]
    pub backdate: Duration,
    /// Service-account keys made ahead of demand when their algorithm is RSA: 8 by default;
    /// 0 makes every key on the request's path.
    pub service_account_key_pool_size: usize,
    /// The same for CA and leaf keys when `key_algorithm` is RSA (a 3-node founding takes 20).
    pub key_pool_size: usize,
}

fn days<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    u64::deserialize(deserializer).map(|days| Duration::from_secs(days.saturating_mul(86_400)))
}

const DAY: Duration = Duration::from_secs(24 * 3600);

impl Default for PkiSettings {
    fn default() -> Self {
        Self {
            key_algorithm: KeyAlgorithm::EcdsaP256,
            service_account_key_algorithm: KeyAlgorithm::Rsa2048,
            ca_validity: DAY * 3650,
            leaf_validity: DAY * 365,
            backdate: Duration::from_secs(5 * 60),
            service_account_key_pool_size: 8,
            key_pool_size: 40,
        }
    }
}

/// A setting that cannot work, naming the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PkiSettingsError {
    /// A lifetime of zero, or beyond what X.509 times can express sensibly.
    #[error("{setting} must be between 1 day and 100 years")]
    Lifetime {
        /// The setting's name.
        setting: &'static str,
    },
    /// Leaves would outlive the CA that signed them.
    #[error("leaf_validity_days must not exceed ca_validity_days")]
    LeafOutlivesCa,
    /// notBefore further back than a day helps no clock and widens the window for misuse.
    #[error("backdate must be at most 1 day")]
    Backdate,
    /// A pool larger than any burst it could serve, holding that many private keys in memory.
    #[error("{setting} must be at most {max}")]
    PoolSize {
        /// The setting's name.
        setting: &'static str,
        /// The largest size accepted.
        max: usize,
    },
}

/// The most keys one pool may hold.
pub const MAX_KEY_POOL_SIZE: usize = 1024;

impl PkiSettings {
    /// Checks the settings make sense together.
    pub fn validate(&self) -> Result<(), PkiSettingsError> {
        let sane = |d: Duration| d >= DAY && d <= DAY * 36525;
        if !sane(self.ca_validity) {
            return Err(PkiSettingsError::Lifetime {
                setting: "ca_validity_days",
            });
        }
        if !sane(self.leaf_validity) {
            return Err(PkiSettingsError::Lifetime {
                setting: "leaf_validity_days",
            });
        }
        if self.leaf_validity > self.ca_validity {
            return Err(PkiSettingsError::LeafOutlivesCa);
        }
        if self.backdate > DAY {
            return Err(PkiSettingsError::Backdate);
        }
        for (setting, size) in [
            (
                "service_account_key_pool_size",
                self.service_account_key_pool_size,
            ),
            ("key_pool_size", self.key_pool_size),
        ] {
            if size > MAX_KEY_POOL_SIZE {
                return Err(PkiSettingsError::PoolSize {
                    setting,
                    max: MAX_KEY_POOL_SIZE,
                });
            }
        }
        Ok(())
    }

    /// [`Self::validate`], naming the configuration key within `[pki]`.
    ///
    /// # Errors
    /// As for [`Self::validate`].
    pub fn check(&self) -> Result<(), SettingsError> {
        self.validate().map_err(|e| {
            let key = match &e {
                PkiSettingsError::Lifetime { setting } => *setting,
                PkiSettingsError::LeafOutlivesCa => "leaf_validity_days",
                PkiSettingsError::Backdate => "backdate",
                PkiSettingsError::PoolSize { setting, .. } => *setting,
            };
            SettingsError::new(key, e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_kubeadms_and_valid() {
        let settings = PkiSettings::default();
        assert_eq!(settings.validate(), Ok(()));
        assert_eq!(settings.ca_validity, Duration::from_secs(87600 * 3600));
        assert_eq!(settings.leaf_validity, Duration::from_secs(8760 * 3600));
    }

    #[test]
    fn impossible_settings_name_the_setting() {
        let bad = PkiSettings {
            leaf_validity: Duration::ZERO,
            ..PkiSettings::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "leaf_validity_days must be between 1 day and 100 years"
        );
        let outlives = PkiSettings {
            leaf_validity: DAY * 4000,
            ..PkiSettings::default()
        };
        assert_eq!(outlives.validate(), Err(PkiSettingsError::LeafOutlivesCa));
        assert_eq!(outlives.check().unwrap_err().key, "leaf_validity_days");
    }
}
