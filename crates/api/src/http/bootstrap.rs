//! `GET /bootstrap/{cluster_id}/nodes/{node_name}`: a node's bundle, for the holder of its
//! bootstrap token.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use plinth_domain::bootstrap::{Bundle, FetchBundleError};
use serde::Serialize;
use utoipa::ToSchema;

use super::secret::SecretField;
use super::{AppState, archive};
use crate::metrics::metrics;
use crate::problem::{ApiError, Problem};

/// A file of a bundle, in its JSON form.
#[derive(Debug, Serialize, ToSchema)]
pub struct BundleFileBody {
    /// Absolute path on the node.
    pub path: String,
    /// Octal mode, e.g. `0600`.
    pub mode: String,
    /// The contents (keys among them).
    #[schema(value_type = String)]
    pub content: SecretField,
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
                content: (&f.contents).into(),
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
/// wrong, expired or other node's token, one past its reuse window
/// (`bootstrap.token_reuse_window_secs` after its first fetch), or a node that does not exist,
/// is the same 401.
#[utoipa::path(get, path = "/bootstrap/{cluster_id}/nodes/{node_name}", tag = "bootstrap",
    params(("cluster_id" = String, Path, description = "Cluster id"),
           ("node_name" = String, Path, description = "cp-{n}.cluster-{id}.internal")),
    responses(
        (status = 200, description = "The bundle: application/gzip (a tar), or JSON", body = BundleBody,
         headers(("X-Bundle-Sha256" = String, description = "SHA-256 of the gzip body, hex"))),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many refused fetches from this address (Retry-After)", body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("node_token" = [])))]
pub async fn fetch_bundle(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (cluster, node) = path.into_inner();
    let client = req.peer_addr().map(|a| a.ip());
    if let Some(wait) = client.and_then(|ip| state.bootstrap_failures.wait(ip)) {
        metrics().bootstrap_fetch("limited");
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-refusals",
            "too many refused bootstrap fetches from this address; try again later",
        )
        .retry_after(wait.as_secs().max(1)));
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let result = state.bundles.fetch(&cluster, &node, token).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(FetchBundleError::Unauthorized) => "refused",
        Err(FetchBundleError::Burned) => "burned",
        Err(_) => "error",
    };
    // Every fetch is logged and counted; the token never is logged, and the path's values are
    // logged escaped: they come from anyone.
    tracing::info!(cluster = ?cluster, node = ?node, outcome, "bootstrap bundle fetch");
    metrics().bootstrap_fetch(outcome);
    if matches!(
        result,
        Err(FetchBundleError::Unauthorized | FetchBundleError::Burned)
    ) && let Some(ip) = client
    {
        state.bootstrap_failures.refused(ip);
    }
    let bundle = result?;
    if wants_json(&req) {
        return Ok(HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(bundle_json(&bundle)));
    }
    let archive = archive::tar_gz(&bundle).map_err(|e| {
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
