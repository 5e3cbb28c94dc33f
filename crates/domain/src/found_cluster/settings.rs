//! The `[founding]` configuration section and the settings it makes.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::userdata::{BootstrapBaseUrl, BootstrapCa};
use crate::credentials::CredentialsLifetime;
use crate::model::{
    ClusterDefaults, DnsZone, FlavorId, ImageId, InvalidValue, Networking, SubnetId,
};
use crate::ports::operations::OrgLimits;
use crate::settings::{SettingsError, millis, positive, seconds};

/// The deployment's settings for founding.
#[derive(Debug, Clone)]
pub struct FoundingSettings {
    /// Subnet, flavor and image for requests that leave them out.
    pub defaults: ClusterDefaults,
    /// The zone control-plane names are published in.
    pub dns_zone: DnsZone,
    /// In-cluster networking of new clusters.
    pub networking: Networking,
    /// Where VMs fetch their bundles.
    pub bootstrap_base_url: BootstrapBaseUrl,
    /// The CA the shim trusts, alone, for the bootstrap server's certificate; none: the VM's
    /// system CAs.
    pub bootstrap_ca: Option<BootstrapCa>,
    /// How long a node's bootstrap token works.
    pub bootstrap_token_ttl: Duration,
    /// How long step 6 waits for every VM's private IPv4 to reach the database.
    pub vm_address_deadline: Duration,
    /// The first pause between step 6's reads; it doubles up to one second.
    pub vm_address_poll_interval: Duration,
    /// A whole founding's bound; beyond it, it rolls back.
    pub deadline: Duration,
    /// How many foundings one replica runs at once; beyond that, new ones are turned away.
    pub max_in_flight: usize,
    /// How long the founding's admin kubeconfig works (`[credentials]`'s default).
    pub admin_lifetime: CredentialsLifetime,
    /// What one organization may have at most (`[limits]`).
    pub limits: OrgLimits,
}

/// `[limits]` as configured: what one organization may have at most.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Clusters, whatever their status.
    pub max_clusters_per_org: u32,
    /// Foundings running at once, across every replica.
    pub max_foundings_in_flight_per_org: u32,
}

impl LimitsSection {
    /// The checked limits; errors name their key within the section.
    ///
    /// # Errors
    /// A limit of 0.
    pub fn limits(&self) -> Result<OrgLimits, SettingsError> {
        let at_least_one = |key: &str, value: u32| positive(key, u64::from(value)).map(|_| value);
        Ok(OrgLimits {
            max_clusters: at_least_one("max_clusters_per_org", self.max_clusters_per_org)?,
            max_foundings_in_flight: at_least_one(
                "max_foundings_in_flight_per_org",
                self.max_foundings_in_flight_per_org,
            )?,
        })
    }
}

/// `[founding]` as configured; [`FoundingSection::settings`] checks it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FoundingSection {
    /// `api.cluster-<id>.<dns_zone>`.
    pub dns_zone: String,
    /// Subnet of requests that name none.
    pub default_subnet_id: String,
    /// VM size of requests that name none.
    pub default_flavor: String,
    /// VM image of requests that name none.
    pub default_image: String,
    /// Where VMs reach plinth.
    pub bootstrap_base_url: String,
    /// Let `bootstrap_base_url` be `http://` (tests and throwaway stacks only).
    #[serde(default)]
    pub allow_insecure_bootstrap: bool,
    /// A PEM file of the CA that signs the bootstrap listener's certificate, pinned in every
    /// shim; empty or absent: none.
    #[serde(default)]
    pub bootstrap_ca_file: Option<PathBuf>,
    /// Bootstrap token lifetime, seconds.
    pub bootstrap_token_ttl_secs: u64,
    /// Step 6's deadline, seconds.
    pub vm_address_deadline_secs: u64,
    /// Step 6's first pause, milliseconds.
    pub vm_address_poll_ms: u64,
    /// Pod network.
    pub pod_cidr: String,
    /// Service network.
    pub service_cidr: String,
    /// Cluster DNS domain.
    pub cluster_dns_domain: String,
    /// kube-apiserver's port.
    pub api_server_port: u16,
    /// A whole founding's bound, seconds.
    pub deadline_secs: u64,
    /// Foundings in flight per replica.
    pub max_in_flight: usize,
}

impl FoundingSection {
    /// The checked settings; errors name their key within the section. The founding's admin
    /// kubeconfig lives `admin_lifetime`, the deployment's default for admin credentials, and
    /// `limits` bound each organization.
    ///
    /// # Errors
    /// The first key that cannot work.
    pub fn settings(
        &self,
        admin_lifetime: CredentialsLifetime,
        limits: OrgLimits,
    ) -> Result<FoundingSettings, SettingsError> {
        fn parse<T>(key: &str, result: Result<T, InvalidValue>) -> Result<T, SettingsError> {
            result.map_err(|InvalidValue(reason)| SettingsError::new(key, reason))
        }
        let cidr = |key: &str, value: &str| {
            value
                .parse::<ipnet::Ipv4Net>()
                .map_err(|e| SettingsError::new(key, format!("{value:?}: {e}")))
        };
        let networking = Networking::new(
            cidr("pod_cidr", &self.pod_cidr)?,
            cidr("service_cidr", &self.service_cidr)?,
            &self.cluster_dns_domain,
            self.api_server_port,
        )
        .map_err(|e| SettingsError::new("service_cidr", e))?;
        let bootstrap_base_url = parse(
            "bootstrap_base_url",
            BootstrapBaseUrl::parse(&self.bootstrap_base_url),
        )?;
        if !bootstrap_base_url.is_https() && !self.allow_insecure_bootstrap {
            return Err(SettingsError::new(
                "bootstrap_base_url",
                format!(
                    "{bootstrap_base_url} is plain http: VMs would fetch their keys over a \
                     network anyone on the path can read and alter; use https:// (or set \
                     allow_insecure_bootstrap = true for a test stack)"
                ),
            ));
        }
        Ok(FoundingSettings {
            defaults: ClusterDefaults {
                subnet_id: parse(
                    "default_subnet_id",
                    SubnetId::parse(&self.default_subnet_id),
                )?,
                flavor: parse("default_flavor", FlavorId::parse(&self.default_flavor))?,
                image: parse("default_image", ImageId::parse(&self.default_image))?,
            },
            dns_zone: parse("dns_zone", DnsZone::parse(&self.dns_zone))?,
            networking,
            bootstrap_ca: self.bootstrap_ca(&bootstrap_base_url)?,
            bootstrap_base_url,
            bootstrap_token_ttl: seconds(
                "bootstrap_token_ttl_secs",
                self.bootstrap_token_ttl_secs,
            )?,
            vm_address_deadline: seconds(
                "vm_address_deadline_secs",
                self.vm_address_deadline_secs,
            )?,
            vm_address_poll_interval: millis("vm_address_poll_ms", self.vm_address_poll_ms)?,
            deadline: seconds("deadline_secs", self.deadline_secs)?,
            max_in_flight: usize::try_from(positive("max_in_flight", self.max_in_flight as u64)?)
                .unwrap_or(usize::MAX),
            admin_lifetime,
            limits,
        })
    }

    /// `bootstrap_ca_file`, read and checked, when set.
    fn bootstrap_ca(&self, url: &BootstrapBaseUrl) -> Result<Option<BootstrapCa>, SettingsError> {
        const KEY: &str = "bootstrap_ca_file";
        let Some(file) = self
            .bootstrap_ca_file
            .as_deref()
            .filter(|f| !f.as_os_str().is_empty())
        else {
            return Ok(None);
        };
        if !url.is_https() {
            return Err(SettingsError::new(
                KEY,
                format!("a CA pins nothing when bootstrap_base_url is {url}: use https://"),
            ));
        }
        let text = std::fs::read_to_string(file)
            .map_err(|e| SettingsError::new(KEY, format!("cannot read {}: {e}", file.display())))?;
        BootstrapCa::parse(&text)
            .map(Some)
            .map_err(|InvalidValue(why)| {
                SettingsError::new(KEY, format!("{}: {why}", file.display()))
            })
    }
}
