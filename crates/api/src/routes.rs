//! The HTTP API of DESIGN.md §3: `POST /clusters`, `GET /clusters`, `GET /clusters/{id}`,
//! health, metrics and the OpenAPI document.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt as _;
use plinth_diesel_pg::PgRepo;
use plinth_domain::FoundCluster;
use plinth_domain::FoundClusterError;
use plinth_domain::bootstrap::{Bundle, FetchBundle, FetchBundleError};
use plinth_domain::found_cluster::FoundedCluster;
use plinth_domain::model::{ClusterId, ClusterRequest, Networking};
use plinth_domain::ports::repo::{ClusterDetails, ClusterSummary, PageCursor, PageRequest, Repo};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use utoipa::{OpenApi, ToSchema};

use crate::auth::Caller;
use crate::problem::{ApiError, CleanupBody, FieldError, Problem, repo_error};
use crate::telemetry::metrics;

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the handlers share.
pub struct AppState {
    /// The founding use case.
    pub found: FoundCluster,
    /// The bootstrap bundle use case.
    pub bundles: FetchBundle,
    /// Cluster truth (also answers readiness).
    pub repo: Arc<PgRepo>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

// ---- wire types -------------------------------------------------------------------------------

/// The body of `POST /clusters`. Every field is optional; unknown fields and `org_id` are refused.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)] // documents the body; parsing is done field by field to report every error
pub struct CreateClusterBody {
    /// A DNS label, unique in the organization.
    name: Option<String>,
    /// Odd, 1 to 7; default 3.
    control_plane_count: Option<i64>,
    /// Default from configuration.
    subnet_id: Option<String>,
    /// Default from configuration.
    flavor: Option<String>,
    /// Default from configuration.
    image: Option<String>,
    /// 1 to 5 distinct ids; omitted: plinth creates one group for the cluster.
    security_group_ids: Option<Vec<String>>,
}

/// In-cluster networking.
#[derive(Debug, Serialize, ToSchema)]
pub struct NetworkingBody {
    /// e.g. `10.244.0.0/16`.
    pub pod_cidr: String,
    /// e.g. `10.96.0.0/12`.
    pub service_cidr: String,
    /// e.g. `cluster.local`.
    pub dns_domain: String,
    /// e.g. `10.96.0.10`.
    pub cluster_dns_ip: String,
    /// e.g. 6443.
    pub api_server_port: u16,
}

impl From<&Networking> for NetworkingBody {
    fn from(n: &Networking) -> Self {
        Self {
            pod_cidr: n.pod_cidr().to_string(),
            service_cidr: n.service_cidr().to_string(),
            dns_domain: n.dns_domain().to_owned(),
            cluster_dns_ip: n.cluster_dns_ip().to_string(),
            api_server_port: n.api_server_port(),
        }
    }
}

/// A control-plane node.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeBody {
    /// `cp-{n}.cluster-{id}.internal`.
    pub name: String,
    /// Its VM.
    pub vm_id: String,
    /// Private IPv4.
    pub ipv4: String,
    /// IPv6, if any.
    pub ipv6: Option<String>,
    /// Public IPv4, if any.
    pub public_ipv4: Option<String>,
}

impl From<&plinth_domain::ports::repo::NodePlacement> for NodeBody {
    fn from(n: &plinth_domain::ports::repo::NodePlacement) -> Self {
        Self {
            name: n.name.to_string(),
            vm_id: n.vm_id.to_string(),
            ipv4: n.addresses.ipv4.to_string(),
            ipv6: n.addresses.ipv6.map(|ip| ip.to_string()),
            public_ipv4: n.addresses.public_ipv4.map(|ip| ip.to_string()),
        }
    }
}

/// A DNS record the operator may publish.
#[derive(Debug, Serialize, ToSchema)]
pub struct DnsRecordBody {
    /// Fully qualified name.
    pub name: String,
    /// `A` or `AAAA`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Addresses.
    pub values: Vec<String>,
}

/// The answer to `POST /clusters`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FoundedClusterBody {
    /// The new cluster.
    pub cluster_id: String,
    /// Its name, if given.
    pub name: Option<String>,
    /// Its VMs, in node order.
    pub vm_ids: Vec<String>,
    /// `api.cluster-{id}.{zone}`.
    pub control_plane_dns_name: String,
    /// kubeconfig YAML of a `system:masters` user for the shared name on port 6443. Keep it
    /// secret: it holds a private key.
    pub admin_kubeconfig: String,
    /// In-cluster networking.
    pub networking: NetworkingBody,
    /// The nodes.
    pub nodes: Vec<NodeBody>,
    /// `/bootstrap/{cluster_id}/nodes/{node_name}`, the cluster filled in.
    pub bootstrap_path_template: String,
    /// `*.apps.cluster-{id}.{zone}` (not published).
    pub ingress_wildcard_dns_name: String,
    /// Records to publish if `dns_configured` is false.
    pub suggested_dns_records: Vec<DnsRecordBody>,
    /// Whether plinth published the control-plane name.
    pub dns_configured: bool,
    /// Why not, when it did not.
    pub dns_error: Option<String>,
}

impl From<FoundedCluster> for FoundedClusterBody {
    fn from(f: FoundedCluster) -> Self {
        Self {
            cluster_id: f.cluster_id.to_string(),
            name: f.name.map(|n| n.to_string()),
            vm_ids: f.vm_ids.iter().map(ToString::to_string).collect(),
            control_plane_dns_name: f.control_plane_dns_name,
            admin_kubeconfig: f.admin_kubeconfig.expose().to_owned(),
            networking: (&f.networking).into(),
            nodes: f.nodes.iter().map(NodeBody::from).collect(),
            bootstrap_path_template: f.bootstrap_path_template,
            ingress_wildcard_dns_name: f.ingress_wildcard_dns_name,
            suggested_dns_records: f
                .suggested_dns_records
                .into_iter()
                .map(|r| DnsRecordBody {
                    name: r.name,
                    kind: r.record_type.to_owned(),
                    values: r.values,
                })
                .collect(),
            dns_configured: f.dns_configured,
            dns_error: f.dns_error,
        }
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A cluster in a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterSummaryBody {
    /// Id.
    pub cluster_id: String,
    /// Name, if any.
    pub name: Option<String>,
    /// Node count.
    pub control_plane_count: u8,
    /// `api.cluster-{id}.{zone}`.
    pub control_plane_dns_name: String,
    /// RFC 3339.
    pub created_at: String,
}

impl From<&ClusterSummary> for ClusterSummaryBody {
    fn from(s: &ClusterSummary) -> Self {
        Self {
            cluster_id: s.id.to_string(),
            name: s.name.as_ref().map(ToString::to_string),
            control_plane_count: s.control_plane_count,
            control_plane_dns_name: s.control_plane_dns_name.clone(),
            created_at: rfc3339(s.created_at),
        }
    }
}

/// One page of the organization's clusters, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterPageBody {
    /// The clusters.
    pub clusters: Vec<ClusterSummaryBody>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// One cluster, without key material.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterBody {
    /// Id.
    pub cluster_id: String,
    /// Name, if any.
    pub name: Option<String>,
    /// Node count.
    pub control_plane_count: u8,
    /// Subnet.
    pub subnet_id: String,
    /// VM size.
    pub flavor: String,
    /// VM image.
    pub image: String,
    /// Groups the VMs have.
    pub security_group_ids: Vec<String>,
    /// The group plinth created for the cluster, if any.
    pub created_security_group_id: Option<String>,
    /// `api.cluster-{id}.{zone}`.
    pub control_plane_dns_name: String,
    /// `*.apps.cluster-{id}.{zone}`.
    pub ingress_wildcard_dns_name: String,
    /// In-cluster networking.
    pub networking: NetworkingBody,
    /// The nodes.
    pub nodes: Vec<NodeBody>,
    /// The cluster CA certificate (public), PEM.
    pub ca_cert: String,
    /// `/bootstrap/{cluster_id}/nodes/{node_name}`.
    pub bootstrap_path_template: String,
    /// RFC 3339.
    pub created_at: String,
}

impl From<ClusterDetails> for ClusterBody {
    fn from(d: ClusterDetails) -> Self {
        Self {
            cluster_id: d.summary.id.to_string(),
            name: d.summary.name.as_ref().map(ToString::to_string),
            control_plane_count: d.summary.control_plane_count,
            subnet_id: d.spec.subnet_id.to_string(),
            flavor: d.spec.flavor.to_string(),
            image: d.spec.image.to_string(),
            security_group_ids: d
                .security_groups
                .attached
                .iter()
                .map(ToString::to_string)
                .collect(),
            created_security_group_id: d.security_groups.created.as_ref().map(ToString::to_string),
            control_plane_dns_name: d.summary.control_plane_dns_name.clone(),
            ingress_wildcard_dns_name: d.ingress_wildcard_dns_name,
            networking: (&d.networking).into(),
            nodes: d.nodes.iter().map(NodeBody::from).collect(),
            ca_cert: d.ca_cert_pem,
            bootstrap_path_template: plinth_domain::found_cluster::bootstrap_path_template(
                d.summary.id,
            ),
            created_at: rfc3339(d.summary.created_at),
        }
    }
}

// ---- request checks ---------------------------------------------------------------------------

fn require_json(req: &HttpRequest) -> Result<(), ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            format!(
                "the body must be JSON (Content-Type: application/json); got {:?}",
                if content_type.is_empty() {
                    "none"
                } else {
                    content_type
                }
            ),
        ))
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload-too-large",
        format!("the body is larger than {MAX_BODY_BYTES} bytes"),
    )
}

/// Reads the body, refusing more than [`MAX_BODY_BYTES`] without buffering the excess.
async fn read_capped(
    req: &HttpRequest,
    mut payload: web::Payload,
) -> Result<web::BytesMut, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(too_large());
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::malformed(format!("the body could not be read: {e}")))?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

const FIELDS: &str = "name, control_plane_count, subnet_id, flavor, image, security_group_ids";

/// Turns a body into a request, listing every field that is unknown, forbidden or of the wrong
/// type; the domain's rules are checked after, for the fields that parsed.
fn parse_cluster_request(body: &[u8]) -> Result<(ClusterRequest, Vec<FieldError>), ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::malformed(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(ApiError::invalid(vec![FieldError {
            field: "(body)".into(),
            message: "the body must be a JSON object".into(),
        }]));
    };
    let mut errors = Vec::new();
    let mut request = ClusterRequest::default();
    let mut error = |field: &str, message: &str| {
        errors.push(FieldError {
            field: field.to_owned(),
            message: message.to_owned(),
        })
    };
    for (key, value) in fields {
        let text = |value: Value, error: &mut dyn FnMut(&str, &str)| match value {
            Value::Null => None,
            Value::String(s) => Some(s),
            _ => {
                error(&key, "must be a string");
                None
            }
        };
        match key.as_str() {
            "name" => request.name = text(value, &mut error),
            "subnet_id" => request.subnet_id = text(value, &mut error),
            "flavor" => request.flavor = text(value, &mut error),
            "image" => request.image = text(value, &mut error),
            "control_plane_count" => match value {
                Value::Null => {}
                Value::Number(n) if n.as_i64().is_some() => {
                    request.control_plane_count = n.as_i64()
                }
                _ => error(&key, "must be an integer"),
            },
            "security_group_ids" => match value {
                Value::Null => {}
                Value::Array(items) => {
                    let mut ids = Vec::with_capacity(items.len());
                    for (i, item) in items.into_iter().enumerate() {
                        match item {
                            Value::String(s) => ids.push(s),
                            _ => error(&format!("security_group_ids[{i}]"), "must be a string"),
                        }
                    }
                    request.security_group_ids = Some(ids);
                }
                _ => error(&key, "must be an array of strings"),
            },
            "org_id" => error(
                "org_id",
                "the organization comes from your token, not the body; remove org_id",
            ),
            _ => error(
                &key,
                &format!("unknown field; the accepted fields are {FIELDS}"),
            ),
        }
    }
    Ok((request, errors))
}

// ---- handlers ---------------------------------------------------------------------------------

fn outcome(result: &Result<FoundedCluster, FoundClusterError>) -> String {
    match result {
        Ok(_) => "created".into(),
        Err(FoundClusterError::Invalid(_)) => "invalid".into(),
        Err(FoundClusterError::Failed { failure, .. }) => format!("failed_{}", failure.step()),
    }
}

/// Found a cluster: its trust root, its control-plane VMs, its node records; answers with the
/// admin kubeconfig. The organization comes from the bearer token.
#[utoipa::path(post, path = "/clusters", tag = "clusters", request_body = CreateClusterBody,
    responses(
        (status = 201, description = "Founded", body = FoundedClusterBody, headers(("Location" = String))),
        (status = 400, description = "Every broken rule of the body", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The name is taken in the organization", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The compute service refused the request's subnet, groups, flavor or image", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The compute service failed; what this request created was deleted", body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
        (status = 504, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn create_cluster(
    caller: Caller,
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    require_json(&req)?;
    let body = read_capped(&req, payload).await?;
    let (request, mut errors) = parse_cluster_request(&body)?;
    if let Err(invalid) = request.clone().validate(&state.found.settings().defaults) {
        let reported: Vec<String> = errors.iter().map(|e| e.field.clone()).collect();
        errors.extend(
            invalid
                .0
                .into_iter()
                .filter(|v| !reported.contains(&v.field))
                .map(|v| FieldError {
                    field: v.field,
                    message: v.message,
                }),
        );
    }
    if !errors.is_empty() {
        metrics().outcome("invalid");
        return Err(ApiError::invalid(errors));
    }
    let result = state.found.found(&caller.org, request).await;
    metrics().outcome(&outcome(&result));
    let founded = result?;
    let location = format!("/clusters/{}", founded.cluster_id);
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(FoundedClusterBody::from(founded)))
}

/// Query of `GET /clusters`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// 1 to 100; default 20.
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

fn encode_cursor(cursor: &PageCursor) -> String {
    let nanos = cursor.created_at.unix_timestamp_nanos();
    URL_SAFE_NO_PAD.encode(format!("v1:{nanos}:{}", cursor.id))
}

fn decode_cursor(text: &str) -> Option<PageCursor> {
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut parts = text.splitn(3, ':');
    let (Some("v1"), Some(nanos), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    Some(PageCursor {
        created_at: OffsetDateTime::from_unix_timestamp_nanos(nanos.parse().ok()?).ok()?,
        id: ClusterId::from_uuid(id.parse().ok()?),
    })
}

/// The organization's clusters, newest first, a page at a time.
#[utoipa::path(get, path = "/clusters", tag = "clusters", params(ListQuery),
    responses((status = 200, body = ClusterPageBody),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list_clusters(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let mut errors = Vec::new();
    let limit = match query.limit.as_deref() {
        None => 20,
        Some(raw) => match raw.parse::<u32>() {
            Ok(n @ 1..=100) => n,
            _ => {
                errors.push(FieldError {
                    field: "limit".into(),
                    message: "must be an integer from 1 to 100".into(),
                });
                20
            }
        },
    };
    let after = match query.cursor.as_deref() {
        None => None,
        Some(raw) => {
            let cursor = decode_cursor(raw);
            if cursor.is_none() {
                errors.push(FieldError {
                    field: "cursor".into(),
                    message: "is not a cursor this API handed out".into(),
                });
            }
            cursor
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let page = state
        .repo
        .list_clusters(&caller.org, &PageRequest { limit, after })
        .await
        .map_err(|e| repo_error(&e))?;
    Ok(HttpResponse::Ok().json(ClusterPageBody {
        clusters: page.clusters.iter().map(ClusterSummaryBody::from).collect(),
        next_cursor: page.next.as_ref().map(encode_cursor),
    }))
}

/// One of the organization's clusters (another organization's is not found).
#[utoipa::path(get, path = "/clusters/{id}", tag = "clusters",
    params(("id" = String, Path, description = "Cluster id")),
    responses((status = 200, body = ClusterBody),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get_cluster(
    caller: Caller,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let not_found = || ApiError::not_found(format!("no cluster {id} in your organization"));
    let cluster = id.parse::<uuid::Uuid>().map_err(|_| not_found())?;
    let details = state
        .repo
        .find_cluster(&caller.org, ClusterId::from_uuid(cluster))
        .await
        .map_err(|e| repo_error(&e))?
        .ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(ClusterBody::from(details)))
}

/// A file of a bundle, in its JSON form.
#[derive(Debug, Serialize, ToSchema)]
pub struct BundleFileBody {
    /// Absolute path on the node.
    pub path: String,
    /// Octal mode, e.g. `0600`.
    pub mode: String,
    /// The contents.
    pub content: String,
}

/// A node's bundle, in its JSON form.
#[derive(Debug, Serialize, ToSchema)]
pub struct BundleBody {
    /// The cluster.
    pub cluster_id: String,
    /// The node.
    pub node_name: String,
    /// kubeadm's files for this node.
    pub files: Vec<BundleFileBody>,
}

fn bundle_json(bundle: &Bundle) -> BundleBody {
    BundleBody {
        cluster_id: bundle.cluster_id.to_string(),
        node_name: bundle.node_name.to_string(),
        files: bundle
            .files
            .iter()
            .map(|f| BundleFileBody {
                path: f.path.clone(),
                mode: format!("{:04o}", f.mode),
                content: f.contents.expose().to_owned(),
            })
            .collect(),
    }
}

fn wants_json(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            accept
                .split(',')
                .any(|part| part.split(';').next().unwrap_or("").trim() == "application/json")
        })
}

/// A node's bootstrap bundle — kubeadm's `/etc/kubernetes` for that node — for the holder of its
/// bootstrap token (`Authorization: Bearer <token>`, from the node's userdata). A gzip tar by
/// default, with its SHA-256 in `X-Bundle-Sha256`; JSON with `Accept: application/json`. A
/// wrong, expired or other node's token, or a node that does not exist, is the same 401.
#[utoipa::path(get, path = "/bootstrap/{cluster_id}/nodes/{node_name}", tag = "bootstrap",
    params(("cluster_id" = String, Path, description = "Cluster id"),
           ("node_name" = String, Path, description = "cp-{n}.cluster-{id}.internal")),
    responses(
        (status = 200, description = "The bundle: application/gzip (a tar), or JSON", body = BundleBody,
         headers(("X-Bundle-Sha256" = String, description = "SHA-256 of the gzip body, hex"))),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("node_token" = [])))]
pub async fn fetch_bundle(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (cluster, node) = path.into_inner();
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let result = state.bundles.fetch(&cluster, &node, token).await;
    let outcome = match &result {
        Ok(_) => "served",
        Err(FetchBundleError::Unauthorized) => "refused",
        Err(_) => "failed",
    };
    // Every fetch is logged; the token never is.
    tracing::info!(cluster = %cluster, node = %node, outcome, "bootstrap bundle fetch");
    let bundle = result.map_err(|e| match e {
        FetchBundleError::Unauthorized => ApiError::unauthorized("invalid bootstrap token"),
        FetchBundleError::Unavailable(why) => {
            tracing::error!(error = %why, "bootstrap material unavailable");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database-unavailable",
                "the database is unavailable; try again",
            )
        }
        FetchBundleError::Unrenderable(why) => {
            tracing::error!(error = %why, "bootstrap bundle cannot be rendered");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the bundle cannot be rendered",
            )
        }
    })?;
    if wants_json(&req) {
        return Ok(HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(bundle_json(&bundle)));
    }
    let archive = crate::archive::tar_gz(&bundle).map_err(|e| {
        tracing::error!(error = %e, "packing a bootstrap bundle failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the bundle cannot be packed",
        )
    })?;
    let digest = {
        use sha2::Digest as _;
        sha2::Sha256::digest(&archive)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    Ok(HttpResponse::Ok()
        .content_type("application/gzip")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("X-Bundle-Sha256", digest))
        .body(archive))
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// The database answers.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200), (status = 503, body = Problem, content_type = "application/problem+json")))]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.repo.ping().await.map_err(|e| repo_error(&e))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ready"})))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, content_type = "text/plain")))]
pub async fn prometheus() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics().render())
}

#[derive(OpenApi)]
#[openapi(
    info(title = "plinth", description = "Founds Kubernetes control planes (DESIGN.md §3)."),
    paths(create_cluster, list_clusters, get_cluster, fetch_bundle, healthz, readyz, prometheus),
    components(schemas(CreateClusterBody, FoundedClusterBody, NetworkingBody, NodeBody, DnsRecordBody,
        ClusterPageBody, ClusterSummaryBody, ClusterBody, BundleBody, BundleFileBody, Problem, FieldError,
        CleanupBody)),
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
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The OpenAPI 3.1 document of this API.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(openapi_document().to_json().unwrap_or_default())
}

async fn no_such_route() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("no such route"))
}

async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "this route does not take that method",
    ))
}

/// Registers every route.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .app_data(
            web::QueryConfig::default()
                .error_handler(|e, _| ApiError::malformed(format!("invalid query: {e}")).into()),
        )
        .app_data(
            web::PathConfig::default()
                .error_handler(|e, _| ApiError::malformed(format!("invalid path: {e}")).into()),
        )
        .service(
            web::resource("/clusters")
                .route(web::post().to(create_cluster))
                .route(web::get().to(list_clusters))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/clusters/{id}")
                .route(web::get().to(get_cluster))
                .default_service(web::to(method_not_allowed)),
        )
        .route(
            "/bootstrap/{cluster_id}/nodes/{node_name}",
            web::get().to(fetch_bundle),
        )
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(prometheus))
        .route("/openapi.json", web::get().to(openapi_json))
        .default_service(web::to(no_such_route));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let cursor = PageCursor {
            created_at: OffsetDateTime::from_unix_timestamp_nanos(1_764_000_000_123_456_000)
                .unwrap(),
            id: ClusterId::new_random(),
        };
        assert_eq!(decode_cursor(&encode_cursor(&cursor)), Some(cursor));
        for garbage in [
            "",
            "abc",
            "djE6eDp5",
            &URL_SAFE_NO_PAD.encode("v2:1:00000000-0000-0000-0000-000000000000"),
        ] {
            assert_eq!(decode_cursor(garbage), None, "{garbage}");
        }
    }

    #[test]
    fn every_unknown_forbidden_and_mistyped_field_is_listed() {
        let body = br#"{"org_id":"x","colour":"red","name":5,"control_plane_count":"3",
            "security_group_ids":["a",7],"flavor":null}"#;
        let (request, errors) = parse_cluster_request(body).unwrap();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "colour",
                "control_plane_count",
                "name",
                "org_id",
                "security_group_ids[1]"
            ]
        );
        assert!(
            errors
                .iter()
                .any(|e| e.message.contains("comes from your token"))
        );
        assert_eq!(request.security_group_ids, Some(vec!["a".to_owned()]));
        assert_eq!(request.flavor, None);
        assert!(
            matches!(parse_cluster_request(b"{"), Err(e) if e.status() == StatusCode::BAD_REQUEST)
        );
        let not_object = parse_cluster_request(b"[1]").unwrap_err();
        assert_eq!(not_object.problem().errors[0].field, "(body)");
    }
}
