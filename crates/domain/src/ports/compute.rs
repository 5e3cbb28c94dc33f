//! `Compute`: the platform's compute API — subnets, security groups, VMs.

use std::collections::BTreeMap;

use async_trait::async_trait;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use time::OffsetDateTime;

use super::BoxError;
use crate::model::{
    FlavorId, ImageId, InvalidValue, OrgId, SecretText, SecurityGroupId, SubnetId, VmId,
};

/// Labels put on every resource plinth creates, so a sweeper can find orphans.
pub type Tags = BTreeMap<String, String>;

/// Who a subnet or security group belongs to at the compute service: one organization, or every
/// organization (`shared`). plinth founds only on what the caller's organization may use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ResourceOwner {
    /// Any organization may use it.
    Shared,
    /// Only this organization may.
    Org(OrgId),
}

impl ResourceOwner {
    /// The owner as the compute contract writes it: `shared`, or the organization's id.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Shared => "shared",
            Self::Org(org) => org.as_str(),
        }
    }

    /// Reads an owner as the compute contract writes it.
    ///
    /// # Errors
    /// Neither `shared` nor an organization id.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if raw == "shared" {
            Ok(Self::Shared)
        } else {
            OrgId::parse(raw).map(Self::Org)
        }
    }

    /// Whether `org` may use the resource.
    pub fn admits(&self, org: &OrgId) -> bool {
        match self {
            Self::Shared => true,
            Self::Org(owner) => owner == org,
        }
    }
}

/// A subnet's address ranges and owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    /// The subnet.
    pub id: SubnetId,
    /// Its IPv4 range.
    pub ipv4_cidr: Ipv4Net,
    /// Its IPv6 range, when it has one.
    pub ipv6_cidr: Option<Ipv6Net>,
    /// Who may use it.
    pub owner: ResourceOwner,
}

/// A security group as the compute service has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroup {
    /// The group.
    pub id: SecurityGroupId,
    /// Who may use it.
    pub owner: ResourceOwner,
}

/// A security group to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSecurityGroup {
    /// Its name, e.g. `cluster-<id>-control-plane`.
    pub name: String,
    /// The organization it belongs to (the cluster's).
    pub owner: OrgId,
    /// Ownership tags.
    pub tags: Tags,
    /// Makes the creation safe to repeat: the same key and group give the same group back.
    pub idempotency_key: String,
}

/// Which traffic an ingress rule lets in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleProtocol {
    /// Every protocol and port.
    Any,
    /// One TCP port.
    Tcp {
        /// The port.
        port: u16,
    },
}

/// An ingress rule of a security group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngressRule {
    /// What traffic.
    pub protocol: RuleProtocol,
    /// From where.
    pub remote: IpNet,
}

/// A VM to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVm {
    /// The VM's name (the node name).
    pub name: String,
    /// Size.
    pub flavor: FlavorId,
    /// Image.
    pub image: ImageId,
    /// Subnet.
    pub subnet: SubnetId,
    /// Groups to attach.
    pub security_groups: Vec<SecurityGroupId>,
    /// Role and ownership tags.
    pub tags: Tags,
    /// The bootstrap shim; it holds the node's bootstrap token, hence secret.
    pub user_data: SecretText,
    /// Makes the creation safe to repeat: the same key and VM give the same VM back.
    pub idempotency_key: String,
}

/// A resource the platform lists by tag: what the orphan sweep needs to judge it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedResource {
    /// The VM's or group's id.
    pub id: String,
    /// Its tags.
    pub tags: Tags,
    /// When the platform created it.
    pub created_at: OffsetDateTime,
}

/// Why a compute call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ComputeError {
    /// The resource does not exist; the message is the platform's.
    #[error("not found: {0}")]
    NotFound(String),
    /// The resource is in a state that forbids the call (e.g. a group still in use, no free
    /// address); the message is the platform's.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The platform refused the request; the message is the platform's.
    #[error("rejected by the compute service: {0}")]
    Rejected(String),
    /// The platform refused plinth's own credentials (401/403): a deployment problem, not the
    /// caller's.
    #[error("the compute service refused plinth's credentials: {0}")]
    Unauthorized(String),
    /// The platform has no capacity left for the request (e.g. no free address); trying again
    /// later may work.
    #[error("the compute service has no capacity: {0}")]
    CapacityExhausted(String),
    /// The platform could not be reached or answered 5xx.
    #[error("compute service unavailable")]
    Unavailable(#[source] BoxError),
    /// The call did not finish within its bound.
    #[error("compute call timed out")]
    Timeout(#[source] BoxError),
    /// Anything else, e.g. an answer that cannot be parsed.
    #[error("unexpected compute failure")]
    Unexpected(#[source] BoxError),
}

/// The compute platform's API, as the founding uses it.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Compute: Send + Sync {
    /// Reads a subnet's ranges.
    ///
    /// # Errors
    /// `NotFound` for an unknown subnet; `Unavailable`, `Timeout` or `Unexpected` when the
    /// platform fails.
    async fn subnet(&self, id: &SubnetId) -> Result<Subnet, ComputeError>;

    /// Reads a security group's owner.
    ///
    /// # Errors
    /// `NotFound` for an unknown group; `Unavailable`, `Timeout` or `Unexpected` when the
    /// platform fails.
    async fn security_group(&self, id: &SecurityGroupId) -> Result<SecurityGroup, ComputeError>;

    /// Creates a security group with no rules; repeating it with the same idempotency key gives
    /// the same group.
    ///
    /// # Errors
    /// `Rejected` when the platform refuses it; `Unavailable`, `Timeout` or `Unexpected` when
    /// it fails, in which case the group may or may not exist.
    async fn create_security_group(
        &self,
        group: &NewSecurityGroup,
    ) -> Result<SecurityGroupId, ComputeError>;

    /// Adds an ingress rule to a group.
    ///
    /// # Errors
    /// `NotFound` for an unknown group, `Rejected` for a rule the platform refuses, or a
    /// platform failure.
    async fn add_ingress_rule(
        &self,
        group: &SecurityGroupId,
        rule: &IngressRule,
    ) -> Result<(), ComputeError>;

    /// Creates a VM and returns its id; the platform records its addresses in `vms`. Repeating
    /// it with the same idempotency key gives the same VM.
    ///
    /// # Errors
    /// `NotFound` for an unknown subnet or group, `Rejected` for a refused flavor or image,
    /// `CapacityExhausted` when the subnet has no free address; `Unavailable`, `Timeout` or
    /// `Unexpected` when the platform fails, in which case the VM may or may not exist.
    async fn create_vm(&self, vm: &NewVm) -> Result<VmId, ComputeError>;

    /// Deletes a VM. Deleting one that is already gone succeeds.
    ///
    /// # Errors
    /// A platform failure; the VM may still exist.
    async fn delete_vm(&self, id: &VmId) -> Result<(), ComputeError>;

    /// Deletes a security group. Deleting one that is already gone succeeds.
    ///
    /// # Errors
    /// `Conflict` while a VM still uses it, or a platform failure.
    async fn delete_security_group(&self, id: &SecurityGroupId) -> Result<(), ComputeError>;

    /// The VMs carrying tag `key` = `value`.
    ///
    /// # Errors
    /// A platform failure.
    async fn list_vms(&self, key: &str, value: &str) -> Result<Vec<TaggedResource>, ComputeError>;

    /// The security groups carrying tag `key` = `value`.
    ///
    /// # Errors
    /// A platform failure.
    async fn list_security_groups(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<TaggedResource>, ComputeError>;
}
