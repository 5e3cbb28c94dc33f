//! plinth's `Compute` adapter: the compute contract of `docs/ARCHITECTURE.md` §4 over HTTP, with
//! reqwest (through `plinth-http-client`).
//!
//! Every call carries the bearer service token and has a connect and a request timeout. VM and
//! security group creation send the caller's idempotency key (`NewVm::idempotency_key`,
//! `NewSecurityGroup::idempotency_key`) as the `Idempotency-Key` header, so repeating one —
//! within this adapter, or by the caller after an unknown outcome — gives back the resource the
//! first attempt made (201 new, 200 replay). Calls that are safe to repeat — reads (a subnet, a
//! security group), listings by tag, deletes, and VM and group creation — are retried on
//! transport failures, timeouts, 429 and 5xx, with jittered exponential backoff; rule creation
//! carries no key and is not.
//!
//! Subnets and security groups have an owner: a group is created for the caller's organization
//! (`NewSecurityGroup::owner`, sent as `owner`), and the `owner` the service reports of a subnet
//! or group (`shared` or an organization id) is read with `ResourceOwner::parse`.
//!
//! Statuses map to the port's `ComputeError` with the service's own words:
//! - 404 → `NotFound`;
//! - 409 whose problem `type` ends in `/capacity-exhausted` (no free address) →
//!   `CapacityExhausted`; any other 409 (e.g. type `…/in-use`, a group a VM still uses) →
//!   `Conflict`;
//! - 400/422 → `Rejected`;
//! - 401/403 → `Unauthorized` (the service refused plinth's own credentials);
//! - 429/5xx → `Unavailable`; any other status → `Unexpected`.
//!
//! Transport failures keep reqwest's error as the cause (`Timeout`, `Unavailable`,
//! `Unexpected`); an answer that cannot be understood — a missing field, an `owner` that is
//! neither `shared` nor an organization id, a `created_at` that is not RFC 3339, a listed
//! resource without the tag asked for — is `Unexpected`, with what was wrong.
//!
//! Its configuration is the `[compute]` section, [`HttpComputeSettings`].

mod settings;

use std::collections::BTreeMap;

use async_trait::async_trait;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use plinth_domain::model::{InvalidValue, SecurityGroupId, SubnetId, VmId};
use plinth_domain::ports::compute::{
    Compute, ComputeError, IngressRule, NewSecurityGroup, NewVm, ResourceOwner, RuleProtocol,
    SecurityGroup, Subnet, TaggedResource, Tags,
};
use plinth_domain::ports::context;
use plinth_domain::settings::SettingsError;
use plinth_http_client::{Answer, HttpClient, RetryPolicy, TransportError, is_retryable};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub use settings::HttpComputeSettings;

/// Why the adapter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpComputeSetupError {
    /// A setting cannot work; its key is relative to the `[compute]` section.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// reqwest could not build the client.
    #[error("building the compute service's HTTP client")]
    Client(#[source] reqwest::Error),
}

/// A VM as the compute service describes it.
#[cfg(feature = "test-support")]
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Vm {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// e.g. `running`.
    pub status: String,
    /// Private IPv4.
    pub ipv4: Option<String>,
    /// IPv6.
    pub ipv6: Option<String>,
    /// Public IPv4.
    pub public_ipv4: Option<String>,
    /// Size.
    pub flavor: String,
    /// Image.
    pub image: String,
    /// Subnet.
    pub subnet_id: String,
    /// Groups.
    pub security_group_ids: Vec<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Userdata.
    pub user_data: plinth_domain::model::SecretText,
}

/// The `Compute` port over HTTP.
#[derive(Debug, Clone)]
pub struct HttpCompute {
    http: HttpClient,
    /// `Bearer <token>`, marked sensitive.
    authorization: HeaderValue,
    /// For retry-safe calls.
    retry: RetryPolicy,
}

/// Whether a call may be sent again after a failure whose outcome is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    Safe,
    Never,
}

#[derive(Serialize)]
struct NewSecurityGroupBody<'a> {
    name: &'a str,
    owner: &'a str,
    tags: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct NewRuleBody {
    protocol: &'static str,
    port: Option<u16>,
    remote_cidr: String,
}

#[derive(Serialize)]
struct NewVmBody<'a> {
    name: &'a str,
    flavor: &'a str,
    image: &'a str,
    subnet_id: &'a str,
    security_group_ids: Vec<&'a str>,
    tags: &'a BTreeMap<String, String>,
    user_data: &'a str,
}

#[derive(Deserialize)]
struct SubnetBody {
    id: String,
    ipv4_cidr: String,
    ipv6_cidr: Option<String>,
    owner: String,
}

/// What plinth reads of a security group.
#[derive(Deserialize)]
struct SecurityGroupBody {
    id: String,
    owner: String,
}

#[derive(Deserialize)]
struct IdBody {
    id: String,
}

/// What plinth reads of a listed VM or group.
#[derive(Deserialize)]
struct TaggedBody {
    id: String,
    tags: Tags,
    created_at: String,
}

#[derive(Deserialize)]
struct VmListBody {
    vms: Vec<TaggedBody>,
}

#[derive(Deserialize)]
struct SecurityGroupListBody {
    security_groups: Vec<TaggedBody>,
}

/// The owner the service reported; neither `shared` nor an organization id is `Unexpected`.
fn owner(what: &str, id: &str, raw: &str) -> Result<ResourceOwner, ComputeError> {
    ResourceOwner::parse(raw).map_err(|e| {
        ComputeError::Unexpected(context(
            format!(
                "{what}: the owner of {id} ({raw:?}) is neither \"shared\" nor an organization id"
            ),
            e,
        ))
    })
}

/// A subnet as the service described it.
fn subnet_from(what: &str, body: SubnetBody) -> Result<Subnet, ComputeError> {
    let bad = |field: &str, value: &str, e: ipnet::AddrParseError| {
        ComputeError::Unexpected(context(
            format!("{what}: {field} {value:?} is not a CIDR"),
            e,
        ))
    };
    let ipv4_cidr: Ipv4Net = body
        .ipv4_cidr
        .parse()
        .map_err(|e| bad("ipv4_cidr", &body.ipv4_cidr, e))?;
    let ipv6_cidr: Option<Ipv6Net> = body
        .ipv6_cidr
        .as_deref()
        .map(|v| v.parse().map_err(|e| bad("ipv6_cidr", v, e)))
        .transpose()?;
    Ok(Subnet {
        owner: owner(what, &body.id, &body.owner)?,
        id: SubnetId::parse(&body.id).map_err(|e| unexpected_id(what, e))?,
        ipv4_cidr,
        ipv6_cidr,
    })
}

/// A security group as the service described it.
fn security_group_from(what: &str, body: SecurityGroupBody) -> Result<SecurityGroup, ComputeError> {
    Ok(SecurityGroup {
        owner: owner(what, &body.id, &body.owner)?,
        id: SecurityGroupId::parse(&body.id).map_err(|e| unexpected_id(what, e))?,
    })
}

/// `tag=<key>=<value>`, percent-encoded: every byte but the unreserved ones (RFC 3986) is
/// written `%XX`, so `=`, `&`, `+`, `/` and non-ASCII in a key or value arrive as they are.
fn tag_query(key: &str, value: &str) -> String {
    let mut query = String::from("tag=");
    for byte in format!("{key}={value}").bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            query.push(char::from(byte));
        } else {
            query.push_str(&format!("%{byte:02X}"));
        }
    }
    query
}

/// A listing's items as the port's `TaggedResource`s. Each must carry the tag asked for (a
/// service that ignored the filter must not hand a rollback other resources) and an RFC 3339
/// `created_at`.
fn tagged(
    what: &str,
    items: Vec<TaggedBody>,
    key: &str,
    value: &str,
) -> Result<Vec<TaggedResource>, ComputeError> {
    items
        .into_iter()
        .map(|item| {
            if item.tags.get(key).map(String::as_str) != Some(value) {
                return Err(ComputeError::Unexpected(context(
                    what,
                    format!(
                        "the compute service listed {}, which does not carry tag {key}={value}",
                        item.id
                    ),
                )));
            }
            let created_at = OffsetDateTime::parse(&item.created_at, &Rfc3339).map_err(|e| {
                ComputeError::Unexpected(context(
                    format!(
                        "{what}: the created_at of {} ({:?}) is not an RFC 3339 time",
                        item.id, item.created_at
                    ),
                    e,
                ))
            })?;
            Ok(TaggedResource {
                id: item.id,
                tags: item.tags,
                created_at,
            })
        })
        .collect()
}

impl HttpCompute {
    /// Checks the settings (reading `token_file` when it is the one set) and builds the client
    /// (rustls; no system OpenSSL).
    ///
    /// # Errors
    /// A setting that cannot work, or a client reqwest cannot build.
    pub fn new(settings: HttpComputeSettings) -> Result<Self, HttpComputeSetupError> {
        let resolved = settings.resolve()?;
        let http = HttpClient::new("compute", &resolved.base_url, resolved.timeouts)
            .map_err(HttpComputeSetupError::Client)?;
        Ok(Self {
            http,
            authorization: resolved.authorization,
            retry: resolved.retry,
        })
    }

    /// Reads a VM (with its userdata), for tests that check what a founding asked for.
    #[cfg(feature = "test-support")]
    pub async fn get_vm(&self, id: &VmId) -> Result<Vm, ComputeError> {
        self.get("reading a VM", &format!("/v1/vms/{id}")).await
    }

    /// GETs `path` (a read, so retried as safe) and reads a 200's body as `T`; any other status
    /// is the call's failure.
    async fn get<T: DeserializeOwned>(&self, what: &str, path: &str) -> Result<T, ComputeError> {
        let answer = self
            .send(what, Method::GET, path, None::<&()>, None, Retry::Safe)
            .await?;
        if answer.status != StatusCode::OK {
            return Err(failure(what, &answer));
        }
        understood(what, &answer)
    }

    /// Sends one call, retrying it when that is safe, and returns the last answer.
    async fn send<B: Serialize + Sync>(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: Option<&B>,
        idempotency_key: Option<&str>,
        retry: Retry,
    ) -> Result<Answer, ComputeError> {
        let policy = match retry {
            Retry::Safe => self.retry,
            Retry::Never => RetryPolicy::ONCE,
        };
        self.http
            .send(policy, method, path, |request| {
                let mut request = request.header(AUTHORIZATION, self.authorization.clone());
                if let Some(body) = body {
                    request = request.json(body);
                }
                if let Some(key) = idempotency_key {
                    request = request.header("Idempotency-Key", key);
                }
                request
            })
            .await
            .map_err(|e| transport(what, e))
    }
}

/// A call that got no usable answer, with reqwest's error as the cause.
fn transport(what: &str, e: TransportError) -> ComputeError {
    match e {
        TransportError::Timeout { .. } => ComputeError::Timeout(context(what, e)),
        TransportError::Unavailable(_) => ComputeError::Unavailable(context(what, e)),
        _ => ComputeError::Unexpected(context(what, e)),
    }
}

/// The last path segment of a problem's `type` that marks a 409 as lack of capacity.
const CAPACITY_EXHAUSTED: &str = "/capacity-exhausted";

/// The `type` of a problem+json answer, if it has one.
fn problem_type(answer: &Answer) -> Option<String> {
    #[derive(Deserialize)]
    struct Typed {
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    answer.json::<Typed>().ok().and_then(|t| t.kind)
}

/// An unsuccessful answer; the texts of `NotFound`, `Conflict`, `CapacityExhausted`, `Rejected`
/// and `Unauthorized` are the service's own words (they reach API users or operators).
fn failure(what: &str, answer: &Answer) -> ComputeError {
    let message = format!("{what}: {}", answer.message());
    match answer.status {
        StatusCode::NOT_FOUND => ComputeError::NotFound(message),
        StatusCode::CONFLICT
            if problem_type(answer).is_some_and(|t| t.ends_with(CAPACITY_EXHAUSTED)) =>
        {
            ComputeError::CapacityExhausted(message)
        }
        StatusCode::CONFLICT => ComputeError::Conflict(message),
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
            ComputeError::Rejected(message)
        }
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            ComputeError::Unauthorized(format!("{message} ({})", answer.status))
        }
        status if is_retryable(status) => {
            ComputeError::Unavailable(context(what, format!("{} ({status})", answer.message())))
        }
        status => {
            ComputeError::Unexpected(context(what, format!("{} ({status})", answer.message())))
        }
    }
}

/// An id in an answer that plinth's model refuses.
fn unexpected_id(what: &str, e: InvalidValue) -> ComputeError {
    ComputeError::Unexpected(context(
        format!("{what}: the compute service answered an id plinth cannot use"),
        e,
    ))
}

/// A successful answer's body as `T`.
fn understood<T: DeserializeOwned>(what: &str, answer: &Answer) -> Result<T, ComputeError> {
    answer.json().map_err(|e| {
        ComputeError::Unexpected(context(
            format!("{what}: the compute service's answer is not understood"),
            e,
        ))
    })
}

#[async_trait]
impl Compute for HttpCompute {
    async fn subnet(&self, id: &SubnetId) -> Result<Subnet, ComputeError> {
        const WHAT: &str = "reading a subnet";
        subnet_from(WHAT, self.get(WHAT, &format!("/v1/subnets/{id}")).await?)
    }

    async fn security_group(&self, id: &SecurityGroupId) -> Result<SecurityGroup, ComputeError> {
        const WHAT: &str = "reading a security group";
        security_group_from(
            WHAT,
            self.get(WHAT, &format!("/v1/security-groups/{id}")).await?,
        )
    }

    async fn create_security_group(
        &self,
        group: &NewSecurityGroup,
    ) -> Result<SecurityGroupId, ComputeError> {
        const WHAT: &str = "creating a security group";
        let body = NewSecurityGroupBody {
            name: &group.name,
            owner: group.owner.as_str(),
            tags: &group.tags,
        };
        // The caller's key, the same on every retry: the service makes at most one group.
        let answer = self
            .send(
                WHAT,
                Method::POST,
                "/v1/security-groups",
                Some(&body),
                Some(&group.idempotency_key),
                Retry::Safe,
            )
            .await?;
        if !matches!(answer.status, StatusCode::CREATED | StatusCode::OK) {
            return Err(failure(WHAT, &answer));
        }
        let created: IdBody = understood(WHAT, &answer)?;
        SecurityGroupId::parse(&created.id).map_err(|e| unexpected_id(WHAT, e))
    }

    async fn add_ingress_rule(
        &self,
        group: &SecurityGroupId,
        rule: &IngressRule,
    ) -> Result<(), ComputeError> {
        const WHAT: &str = "adding a security group rule";
        let (protocol, port) = match rule.protocol {
            RuleProtocol::Any => ("any", None),
            RuleProtocol::Tcp { port } => ("tcp", Some(port)),
        };
        let body = NewRuleBody {
            protocol,
            port,
            remote_cidr: IpNet::to_string(&rule.remote),
        };
        let path = format!("/v1/security-groups/{group}/rules");
        let answer = self
            .send(WHAT, Method::POST, &path, Some(&body), None, Retry::Never)
            .await?;
        if answer.status != StatusCode::CREATED {
            return Err(failure(WHAT, &answer));
        }
        Ok(())
    }

    async fn create_vm(&self, vm: &NewVm) -> Result<VmId, ComputeError> {
        const WHAT: &str = "creating a VM";
        let body = NewVmBody {
            name: &vm.name,
            flavor: vm.flavor.as_str(),
            image: vm.image.as_str(),
            subnet_id: vm.subnet.as_str(),
            security_group_ids: vm
                .security_groups
                .iter()
                .map(SecurityGroupId::as_str)
                .collect(),
            tags: &vm.tags,
            user_data: vm.user_data.expose(),
        };
        let answer = self
            .send(
                WHAT,
                Method::POST,
                "/v1/vms",
                Some(&body),
                // The caller's key, the same on every retry: the service makes at most one VM.
                Some(&vm.idempotency_key),
                Retry::Safe,
            )
            .await?;
        if !matches!(answer.status, StatusCode::CREATED | StatusCode::OK) {
            return Err(failure(WHAT, &answer));
        }
        let created: IdBody = understood(WHAT, &answer)?;
        VmId::parse(&created.id).map_err(|e| unexpected_id(WHAT, e))
    }

    async fn delete_vm(&self, id: &VmId) -> Result<(), ComputeError> {
        const WHAT: &str = "deleting a VM";
        let path = format!("/v1/vms/{id}");
        let answer = self
            .send(WHAT, Method::DELETE, &path, None::<&()>, None, Retry::Safe)
            .await?;
        match answer.status {
            // Gone already: what a retry after a lost answer sees.
            StatusCode::NO_CONTENT | StatusCode::OK | StatusCode::NOT_FOUND => Ok(()),
            _ => Err(failure(WHAT, &answer)),
        }
    }

    async fn delete_security_group(&self, id: &SecurityGroupId) -> Result<(), ComputeError> {
        const WHAT: &str = "deleting a security group";
        let path = format!("/v1/security-groups/{id}");
        let answer = self
            .send(WHAT, Method::DELETE, &path, None::<&()>, None, Retry::Safe)
            .await?;
        match answer.status {
            StatusCode::NO_CONTENT | StatusCode::OK | StatusCode::NOT_FOUND => Ok(()),
            _ => Err(failure(WHAT, &answer)),
        }
    }

    async fn list_vms(&self, key: &str, value: &str) -> Result<Vec<TaggedResource>, ComputeError> {
        const WHAT: &str = "listing VMs by tag";
        let path = format!("/v1/vms?{}", tag_query(key, value));
        let listed: VmListBody = self.get(WHAT, &path).await?;
        tagged(WHAT, listed.vms, key, value)
    }

    async fn list_security_groups(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<TaggedResource>, ComputeError> {
        const WHAT: &str = "listing security groups by tag";
        let path = format!("/v1/security-groups?{}", tag_query(key, value));
        let listed: SecurityGroupListBody = self.get(WHAT, &path).await?;
        tagged(WHAT, listed.security_groups, key, value)
    }
}

#[cfg(test)]
mod tests;
