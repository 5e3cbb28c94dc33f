//! The compute contract (docs/ARCHITECTURE.md §4) over HTTP: JSON, a bearer service token, RFC 9457 problem+json errors,
//! `Idempotency-Key` on VM and security group creation, listing by tag, OpenAPI at
//! `GET /openapi.json`, and `/admin/faults` to change fault injection at run time.
//!
//! Subnets and security groups carry an `owner` (`shared` or an organization id): a group's
//! creator names it (`POST /v1/security-groups` requires it), and every answer about a subnet or
//! a group, listings included, reports it.
//!
//! Problems have type `about:blank` except two 409s a client must tell apart:
//! - [`CAPACITY_EXHAUSTED`] (`…/capacity-exhausted`), from `POST /v1/vms` when the subnet's IPv4
//!   or IPv6 range or its public pool has no free address left; the detail names the range.
//!   The request itself was fine: it may succeed once addresses are freed.
//! - [`IN_USE`] (`…/in-use`), from `DELETE /v1/security-groups/{id}` while a VM still uses the
//!   group; the detail names (up to five of) the VMs.
//!
//! An injected fault is always `about:blank`, whatever its status.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, web};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::faults::{FaultRule, FaultState, Faults, Operation, Verdict};
use crate::store::{
    Idempotency, LIST_LIMIT, NewVm, SecurityGroup, Store, StoreError, Vm, is_valid_owner,
};

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// Live fault rules.
    pub faults: Faults,
    /// The bearer token callers must present.
    pub token: String,
}

// ---- errors -----------------------------------------------------------------------------------

/// The problem type of a 409 for a request that was fine but found no capacity left (no free
/// address in a subnet's range or public pool).
pub const CAPACITY_EXHAUSTED: &str = "https://plinth.dev/problems/compute/capacity-exhausted";

/// The problem type of a 409 for deleting a security group a VM still uses.
pub const IN_USE: &str = "https://plinth.dev/problems/compute/in-use";

/// The problem type of every other problem.
const ABOUT_BLANK: &str = "about:blank";

/// An RFC 9457 problem.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem: `about:blank`, except for two 409s —
    /// `https://plinth.dev/problems/compute/capacity-exhausted` (no free address left) and
    /// `https://plinth.dev/problems/compute/in-use` (a security group a VM still uses). Clients
    /// should match the last path segment.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, for a person.
    pub detail: String,
}

/// An error answered as `application/problem+json`.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct ApiError {
    status: StatusCode,
    /// The problem type.
    kind: &'static str,
    detail: String,
}

impl ApiError {
    fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            kind: ABOUT_BLANK,
            detail: detail.into(),
        }
    }

    fn typed(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            detail: detail.into(),
        }
    }

    fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    fn injected(status: u16) -> Self {
        Self::new(
            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "injected fault",
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let problem = Problem {
            kind: self.kind.to_owned(),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
        };
        let mut response = HttpResponse::build(self.status);
        response.insert_header((header::CONTENT_TYPE, "application/problem+json"));
        if self.status == StatusCode::UNAUTHORIZED {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        response.json(problem)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => Self::new(StatusCode::NOT_FOUND, m),
            StoreError::InUse(m) => Self::typed(StatusCode::CONFLICT, IN_USE, m),
            StoreError::Exhausted(m) => Self::typed(StatusCode::CONFLICT, CAPACITY_EXHAUSTED, m),
            StoreError::Invalid(m) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, m),
            StoreError::Database(m) => {
                tracing::error!(error = %m, "database failure");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database is unavailable",
                )
            }
        }
    }
}

/// Body, path and query errors become problem+json 400s that say what was wrong.
pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(256 * 1024)
        .error_handler(|e, _| ApiError::bad_request(format!("invalid JSON body: {e}")).into())
}

/// Unknown routes.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(StatusCode::NOT_FOUND, "no such route"))
}

// ---- authentication ---------------------------------------------------------------------------

/// Proof that the caller presented the service token.
#[derive(Debug)]
pub struct Authenticated;

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let expected = req
            .app_data::<web::Data<AppState>>()
            .map(|state| state.token.as_bytes().to_vec())
            .unwrap_or_default();
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::as_bytes);
        let ok = match presented {
            Some(token) => !expected.is_empty() && constant_time_eq(token, &expected),
            None => false,
        };
        std::future::ready(if ok {
            Ok(Self)
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "a valid bearer service token is required",
            ))
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Applies the fault rule of `operation` before the work; returns whether to fail after it.
async fn faults_before(state: &AppState, operation: Operation) -> Result<Option<u16>, ApiError> {
    match state.faults.enter(operation).await {
        Verdict::Proceed => Ok(None),
        Verdict::FailBefore(status) => Err(ApiError::injected(status)),
        Verdict::FailAfter(status) => Ok(Some(status)),
    }
}

fn fail_after(status: Option<u16>) -> Result<(), ApiError> {
    status.map_or(Ok(()), |s| Err(ApiError::injected(s)))
}

// ---- wire types -------------------------------------------------------------------------------

/// A subnet's ranges and owner.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubnetBody {
    /// Id.
    pub id: String,
    /// IPv4 range, e.g. `127.10.0.0/24`.
    pub ipv4_cidr: String,
    /// IPv6 range, e.g. `fd00:10::/64`.
    pub ipv6_cidr: Option<String>,
    /// Who may use it: `shared` (every organization) or one organization's id (1 to 128 ASCII
    /// letters, digits, `.`, `_`, `:`, `-`).
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$", examples("shared", "org-b"))]
    pub owner: String,
}

/// A security group to create.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSecurityGroupBody {
    /// Name.
    pub name: String,
    /// Who may use the group: the organization it is created for (1 to 128 ASCII letters,
    /// digits, `.`, `_`, `:`, `-`), or `shared` for every organization. Required: a missing
    /// owner is a 400, a malformed one a 422.
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$", examples("org-a", "shared"))]
    pub owner: String,
    /// Tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// A security group.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SecurityGroupBody {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Who may use it: `shared` (every organization) or one organization's id.
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$", examples("org-a", "shared"))]
    pub owner: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// RFC 3339 creation time.
    pub created_at: String,
}

/// The security groups carrying a tag: at most 1000, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SecurityGroupList {
    /// The groups.
    pub security_groups: Vec<SecurityGroupBody>,
}

/// An ingress rule to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRuleBody {
    /// `any`, `tcp` or `udp`.
    pub protocol: String,
    /// The port, for `tcp` and `udp`.
    #[serde(default)]
    pub port: Option<u16>,
    /// Where traffic may come from, e.g. `0.0.0.0/0`.
    pub remote_cidr: String,
}

/// An ingress rule.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RuleBody {
    /// Id.
    pub id: String,
    /// Its group.
    pub security_group_id: String,
    /// `any`, `tcp` or `udp`.
    pub protocol: String,
    /// Port for `tcp`/`udp`.
    pub port: Option<u16>,
    /// Source range.
    pub remote_cidr: String,
}

/// A VM to create.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewVmBody {
    /// Name.
    pub name: String,
    /// Size.
    pub flavor: String,
    /// Image.
    pub image: String,
    /// Subnet.
    pub subnet_id: String,
    /// Groups to attach.
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    /// Tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Userdata (at most 64 KiB).
    #[serde(default)]
    pub user_data: String,
}

/// A VM.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VmBody {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// `running`.
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
    /// Userdata (it holds the node's bootstrap token): in the answer about one VM, never in a
    /// listing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// RFC 3339 creation time.
    pub created_at: String,
}

/// The VMs carrying a tag: at most 1000, newest first, without their userdata.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VmList {
    /// The VMs.
    pub vms: Vec<VmBody>,
}

fn address(net: Option<IpNet>) -> Option<String> {
    net.map(|n| n.addr().to_string())
}

fn tags_from(value: serde_json::Value) -> BTreeMap<String, String> {
    serde_json::from_value(value).unwrap_or_default()
}

impl From<Vm> for VmBody {
    fn from(vm: Vm) -> Self {
        Self {
            id: vm.id,
            name: vm.name,
            status: vm.status,
            ipv4: address(vm.ipv4),
            ipv6: address(vm.ipv6),
            public_ipv4: address(vm.public_ipv4),
            flavor: vm.flavor,
            image: vm.image,
            subnet_id: vm.subnet_id,
            security_group_ids: vm.security_group_ids,
            tags: tags_from(vm.tags),
            user_data: Some(vm.user_data),
            created_at: rfc3339(vm.created_at),
        }
    }
}

impl From<SecurityGroup> for SecurityGroupBody {
    fn from(group: SecurityGroup) -> Self {
        Self {
            id: group.id,
            name: group.name,
            owner: group.owner,
            tags: tags_from(group.tags),
            created_at: rfc3339(group.created_at),
        }
    }
}

fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Fault rules to set: an operation mapped to a rule, or to `null` to remove its rule.
pub type FaultUpdate = BTreeMap<Operation, Option<FaultRule>>;

// ---- checks -----------------------------------------------------------------------------------

fn check_name(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > max || value.chars().any(char::is_control) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{field} must have 1 to {max} characters and no control characters"),
        ));
    }
    Ok(())
}

fn check_owner(owner: &str) -> Result<(), ApiError> {
    if !is_valid_owner(owner) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "owner {owner:?} must be \"shared\" or an organization id: 1 to 128 ASCII letters, \
                 digits and . _ : -"
            ),
        ));
    }
    Ok(())
}

fn check_tags(tags: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if tags.len() > 50 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "at most 50 tags",
        ));
    }
    for (key, value) in tags {
        check_name("a tag key", key, 128)?;
        if value.len() > 256 {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("tag {key} has a value over 256 characters"),
            ));
        }
    }
    Ok(())
}

/// The request's `Idempotency-Key` (1 to 255 visible ASCII characters), with the fingerprint of
/// `body`; none without the header.
fn idempotency<B: Serialize>(
    request: &HttpRequest,
    body: &B,
) -> Result<Option<Idempotency>, ApiError> {
    let Some(value) = request.headers().get("Idempotency-Key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::bad_request("Idempotency-Key must be 1 to 255 visible characters")
        })?;
    Ok(Some(Idempotency {
        key: key.to_owned(),
        fingerprint: serde_json::to_string(body).unwrap_or_default(),
    }))
}

// The OpenAPI descriptions and the list schemas say "at most 1000".
const _: () = assert!(
    LIST_LIMIT == 1000,
    "update the OpenAPI texts with LIST_LIMIT"
);

const TAG_FORM: &str = "the query needs exactly one tag parameter, as tag=<key>=<value>";

/// The `tag` query parameter, split at its first `=`: `(key, value)`. Any other parameter, a
/// second `tag`, or a tag without `=` or key is refused.
fn tag_parameter(query: &[(String, String)]) -> Result<(String, String), ApiError> {
    if let Some((other, _)) = query.iter().find(|(name, _)| name != "tag") {
        return Err(ApiError::bad_request(format!(
            "unknown query parameter {other:?}: {TAG_FORM}"
        )));
    }
    let [(_, tag)] = query else {
        return Err(ApiError::bad_request(format!(
            "{} tag parameters given: {TAG_FORM}",
            query.len()
        )));
    };
    let (key, value) = tag
        .split_once('=')
        .ok_or_else(|| ApiError::bad_request(format!("tag {tag:?} has no '=': {TAG_FORM}")))?;
    if key.is_empty() || key.len() > 128 || key.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "the key of tag {tag:?} must have 1 to 128 characters and no control characters"
        )));
    }
    if value.len() > 256 {
        return Err(ApiError::bad_request(format!(
            "the value of tag parameter {key:?} is over 256 characters"
        )));
    }
    Ok((key.to_owned(), value.to_owned()))
}

// ---- handlers ---------------------------------------------------------------------------------

/// Read a subnet's address ranges and owner.
#[utoipa::path(get, path = "/v1/subnets/{id}", tag = "compute",
    params(("id" = String, Path, description = "Subnet id")),
    responses((status = 200, body = SubnetBody), (status = 404, body = Problem), (status = 401, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_subnet(
    _: Authenticated,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<web::Json<SubnetBody>, ApiError> {
    let after = faults_before(&state, Operation::GetSubnet).await?;
    let subnet = state.store.subnet(&id).await?;
    fail_after(after)?;
    Ok(web::Json(SubnetBody {
        id: subnet.id,
        ipv4_cidr: subnet.ipv4_cidr.to_string(),
        ipv6_cidr: subnet.ipv6_cidr.map(|n| n.to_string()),
        owner: subnet.owner,
    }))
}

/// Create a security group (no rules yet) for an owner. With an `Idempotency-Key` header, a retry
/// of the same request returns the same group (a different owner is a different request).
#[utoipa::path(post, path = "/v1/security-groups", tag = "compute", request_body = NewSecurityGroupBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: 1 to 255 visible characters. \
        The same key with the same body gives the group the first request created (200); with another body, 422. \
        Retries of one key are serialised. Keys of security groups and of VMs are apart: a VM's key never replays as a group.")),
    responses((status = 201, body = SecurityGroupBody), (status = 200, description = "A retry: the group the first request created", body = SecurityGroupBody),
        (status = 400, description = "A malformed Idempotency-Key, or a body that is not the schema's (e.g. no `owner`)", body = Problem),
        (status = 422, description = "A refused name, owner or tags, or a key reused with another body", body = Problem),
        (status = 401, body = Problem)),
    security(("bearer" = [])))]
pub async fn create_security_group(
    _: Authenticated,
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Json<NewSecurityGroupBody>,
) -> Result<HttpResponse, ApiError> {
    check_name("name", &body.name, 255)?;
    check_owner(&body.owner)?;
    check_tags(&body.tags)?;
    let key = idempotency(&request, &*body)?;
    let after = faults_before(&state, Operation::CreateSecurityGroup).await?;
    let tags = serde_json::to_value(&body.tags).unwrap_or_default();
    let (group, created) = state
        .store
        .create_security_group(&body.name, &body.owner, tags, key)
        .await?;
    fail_after(after)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status)
        .insert_header((
            header::LOCATION,
            format!("/v1/security-groups/{}", group.id),
        ))
        .json(SecurityGroupBody::from(group)))
}

/// Read a security group: its name, owner, tags and creation time.
#[utoipa::path(get, path = "/v1/security-groups/{id}", tag = "compute",
    params(("id" = String, Path, description = "Security group id")),
    responses((status = 200, body = SecurityGroupBody), (status = 404, body = Problem), (status = 401, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_security_group(
    _: Authenticated,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<web::Json<SecurityGroupBody>, ApiError> {
    let after = faults_before(&state, Operation::GetSecurityGroup).await?;
    let group = state.store.security_group(&id).await?;
    fail_after(after)?;
    Ok(web::Json(group.into()))
}

/// List the security groups carrying a tag: at most 1000 (the newest), newest first.
#[utoipa::path(get, path = "/v1/security-groups", tag = "compute",
    params(("tag" = String, Query, description = "`<key>=<value>`, split at the first `=` (so the value may hold `=`; an empty value matches tags whose value is empty). \
        Exactly one; the answer holds the groups whose tags include this one, at most 1000 of them, the newest first.")),
    responses((status = 200, body = SecurityGroupList),
        (status = 400, description = "No tag parameter, more than one, an unknown parameter, or a tag without `=` or key", body = Problem),
        (status = 401, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_security_groups(
    _: Authenticated,
    state: web::Data<AppState>,
    query: web::Query<Vec<(String, String)>>,
) -> Result<web::Json<SecurityGroupList>, ApiError> {
    let (key, value) = tag_parameter(&query)?;
    let after = faults_before(&state, Operation::ListSecurityGroups).await?;
    let groups = state.store.list_security_groups(&key, &value).await?;
    fail_after(after)?;
    Ok(web::Json(SecurityGroupList {
        security_groups: groups.into_iter().map(SecurityGroupBody::from).collect(),
    }))
}

/// Add an ingress rule to a security group.
#[utoipa::path(post, path = "/v1/security-groups/{id}/rules", tag = "compute", request_body = NewRuleBody,
    params(("id" = String, Path, description = "Security group id")),
    responses((status = 201, body = RuleBody), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn add_rule(
    _: Authenticated,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Json<NewRuleBody>,
) -> Result<HttpResponse, ApiError> {
    let unprocessable = |m: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m);
    let remote: IpNet = body
        .remote_cidr
        .parse()
        .or_else(|_| body.remote_cidr.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| unprocessable(format!("remote_cidr {:?} is not a CIDR", body.remote_cidr)))?;
    match (body.protocol.as_str(), body.port) {
        ("any", None) | ("tcp" | "udp", Some(1..)) => {}
        ("any", Some(_)) => return Err(unprocessable("protocol any takes no port".into())),
        ("tcp" | "udp", _) => {
            return Err(unprocessable(
                "tcp and udp rules need a port from 1 to 65535".into(),
            ));
        }
        (other, _) => {
            return Err(unprocessable(format!(
                "protocol must be any, tcp or udp, got {other:?}"
            )));
        }
    }
    let after = faults_before(&state, Operation::AddRule).await?;
    let rule = state
        .store
        .add_rule(&id, &body.protocol, body.port, remote)
        .await?;
    fail_after(after)?;
    Ok(HttpResponse::Created().json(RuleBody {
        id: rule.id,
        security_group_id: rule.group_id,
        protocol: rule.protocol,
        port: rule.port.and_then(|p| u16::try_from(p).ok()),
        remote_cidr: rule.remote_cidr.to_string(),
    }))
}

/// Delete a security group; refused (409, type `…/in-use`) while a VM uses it.
#[utoipa::path(delete, path = "/v1/security-groups/{id}", tag = "compute",
    params(("id" = String, Path, description = "Security group id")),
    responses((status = 204), (status = 404, body = Problem),
        (status = 409, description = "A VM still uses the group: problem type `https://plinth.dev/problems/compute/in-use`; the detail names the VMs (up to five)", body = Problem)),
    security(("bearer" = [])))]
pub async fn delete_security_group(
    _: Authenticated,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let after = faults_before(&state, Operation::DeleteSecurityGroup).await?;
    state.store.delete_security_group(&id).await?;
    fail_after(after)?;
    Ok(HttpResponse::NoContent().finish())
}

/// Create a VM. Its row, with its addresses, is committed before this answers. With an
/// `Idempotency-Key` header, a retry of the same request returns the same VM.
#[utoipa::path(post, path = "/v1/vms", tag = "compute", request_body = NewVmBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: 1 to 255 visible characters. \
        The same key with the same body gives the VM the first request created (200); with another body, 422. \
        Retries of one key are serialised. Keys of VMs and of security groups are apart: a group's key never replays as a VM.")),
    responses((status = 201, body = VmBody), (status = 200, description = "A retry: the VM the first request created", body = VmBody),
        (status = 400, description = "A malformed Idempotency-Key", body = Problem),
        (status = 409, description = "No address left in the subnet's IPv4 or IPv6 range or its public pool: problem type `https://plinth.dev/problems/compute/capacity-exhausted`, the detail names the range. \
            The request was fine; it may succeed once addresses are freed", body = Problem),
        (status = 422, description = "An unknown subnet or group, a refused field, or a key reused with another body", body = Problem)),
    security(("bearer" = [])))]
pub async fn create_vm(
    _: Authenticated,
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Json<NewVmBody>,
) -> Result<HttpResponse, ApiError> {
    check_name("name", &body.name, 255)?;
    check_name("flavor", &body.flavor, 128)?;
    check_name("image", &body.image, 128)?;
    check_name("subnet_id", &body.subnet_id, 128)?;
    check_tags(&body.tags)?;
    if body.user_data.len() > 64 * 1024 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "user_data is over 64 KiB",
        ));
    }
    let key = idempotency(&request, &*body)?;
    let after = faults_before(&state, Operation::CreateVm).await?;
    let vm = NewVm {
        name: body.name.clone(),
        flavor: body.flavor.clone(),
        image: body.image.clone(),
        subnet_id: body.subnet_id.clone(),
        security_group_ids: body.security_group_ids.clone(),
        tags: serde_json::to_value(&body.tags).unwrap_or_default(),
        user_data: body.user_data.clone(),
    };
    let (vm, created) = state.store.create_vm(vm, key).await?;
    fail_after(after)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status)
        .insert_header((header::LOCATION, format!("/v1/vms/{}", vm.id)))
        .json(VmBody::from(vm)))
}

/// List the VMs carrying a tag, with their userdata: at most 1000 (the newest), newest first.
#[utoipa::path(get, path = "/v1/vms", tag = "compute",
    params(("tag" = String, Query, description = "`<key>=<value>`, split at the first `=` (so the value may hold `=`; an empty value matches tags whose value is empty). \
        Exactly one; the answer holds the VMs whose tags include this one, at most 1000 of them, the newest first.")),
    responses((status = 200, body = VmList),
        (status = 400, description = "No tag parameter, more than one, an unknown parameter, or a tag without `=` or key", body = Problem),
        (status = 401, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_vms(
    _: Authenticated,
    state: web::Data<AppState>,
    query: web::Query<Vec<(String, String)>>,
) -> Result<web::Json<VmList>, ApiError> {
    let (key, value) = tag_parameter(&query)?;
    let after = faults_before(&state, Operation::ListVms).await?;
    let vms = state.store.list_vms(&key, &value).await?;
    fail_after(after)?;
    Ok(web::Json(VmList {
        vms: vms
            .into_iter()
            .map(|vm| VmBody {
                user_data: None,
                ..VmBody::from(vm)
            })
            .collect(),
    }))
}

/// Read a VM, with its userdata.
#[utoipa::path(get, path = "/v1/vms/{id}", tag = "compute",
    params(("id" = String, Path, description = "VM id")),
    responses((status = 200, body = VmBody), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_vm(
    _: Authenticated,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<web::Json<VmBody>, ApiError> {
    let after = faults_before(&state, Operation::GetVm).await?;
    let vm = state.store.vm(&id).await?;
    fail_after(after)?;
    Ok(web::Json(vm.into()))
}

/// Delete a VM, freeing its addresses.
#[utoipa::path(delete, path = "/v1/vms/{id}", tag = "compute",
    params(("id" = String, Path, description = "VM id")),
    responses((status = 204), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn delete_vm(
    _: Authenticated,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let after = faults_before(&state, Operation::DeleteVm).await?;
    state.store.delete_vm(&id).await?;
    fail_after(after)?;
    Ok(HttpResponse::NoContent().finish())
}

/// The fault rules in force, with their counters.
#[utoipa::path(get, path = "/admin/faults", tag = "admin",
    responses((status = 200, body = BTreeMap<String, FaultState>)), security(("bearer" = [])))]
pub async fn get_faults(_: Authenticated, state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.faults.snapshot())
}

/// Set or remove fault rules: `{"create_vm": {"latency_ms": 200}, "get_vm": null}` (an
/// operation mapped to `null` loses its rule).
#[utoipa::path(put, path = "/admin/faults", tag = "admin", request_body = BTreeMap<String, FaultRule>,
    responses((status = 200, body = BTreeMap<String, FaultState>), (status = 400, body = Problem)),
    security(("bearer" = [])))]
pub async fn put_faults(
    _: Authenticated,
    state: web::Data<AppState>,
    body: web::Json<FaultUpdate>,
) -> Result<HttpResponse, ApiError> {
    for (operation, rule) in body.iter() {
        if let Some(rule) = rule {
            rule.validate().map_err(|why| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("{operation:?}: {why}"),
                )
            })?;
        }
    }
    for (operation, rule) in body.into_inner() {
        state.faults.set(operation, rule);
    }
    Ok(HttpResponse::Ok().json(state.faults.snapshot()))
}

/// Remove every fault rule.
#[utoipa::path(delete, path = "/admin/faults", tag = "admin", responses((status = 204)), security(("bearer" = [])))]
pub async fn delete_faults(_: Authenticated, state: web::Data<AppState>) -> HttpResponse {
    state.faults.clear();
    HttpResponse::NoContent().finish()
}

/// Process up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Database reachable.
#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200), (status = 503, body = Problem)))]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.store.ping().await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ready"})))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "plinth compute service", description = "The compute contract plinth drives (docs/ARCHITECTURE.md §4 in the plinth repository): subnets, security groups, VMs. \
        Creating a VM or a security group takes an optional Idempotency-Key; both can be listed by tag (at most 1000, newest first). \
        Subnets and security groups have an owner: `shared` or an organization id. \
        Problems are `about:blank` except two 409s: `…/capacity-exhausted` (no free address) and `…/in-use` (a group a VM uses)."),
    paths(get_subnet, create_security_group, get_security_group, list_security_groups, add_rule, delete_security_group,
          create_vm, list_vms, get_vm, delete_vm, get_faults, put_faults, delete_faults, healthz, readyz),
    components(schemas(Problem, SubnetBody, NewSecurityGroupBody, SecurityGroupBody, SecurityGroupList,
                       NewRuleBody, RuleBody, NewVmBody, VmBody, VmList, FaultRule, FaultState, Operation)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI 3.1 document of this API.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ))
        .body(openapi_document().to_json().unwrap_or_default())
}

/// Registers every route.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .app_data(json_config())
        .app_data(
            web::PathConfig::default()
                .error_handler(|e, _| ApiError::bad_request(e.to_string()).into()),
        )
        .app_data(
            web::QueryConfig::default()
                .error_handler(|e, _| ApiError::bad_request(format!("invalid query: {e}")).into()),
        )
        .route("/v1/subnets/{id}", web::get().to(get_subnet))
        .route("/v1/security-groups", web::post().to(create_security_group))
        .route("/v1/security-groups", web::get().to(list_security_groups))
        .route("/v1/security-groups/{id}/rules", web::post().to(add_rule))
        .route(
            "/v1/security-groups/{id}",
            web::get().to(get_security_group),
        )
        .route(
            "/v1/security-groups/{id}",
            web::delete().to(delete_security_group),
        )
        .route("/v1/vms", web::post().to(create_vm))
        .route("/v1/vms", web::get().to(list_vms))
        .route("/v1/vms/{id}", web::get().to(get_vm))
        .route("/v1/vms/{id}", web::delete().to(delete_vm))
        .route("/admin/faults", web::get().to(get_faults))
        .route("/admin/faults", web::put().to(put_faults))
        .route("/admin/faults", web::delete().to(delete_faults))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/openapi.json", web::get().to(openapi_json));
}

/// Shared state for the app factory.
pub fn state(store: Store, faults: Faults, token: String) -> web::Data<AppState> {
    web::Data::from(Arc::new(AppState {
        store,
        faults,
        token,
    }))
}
