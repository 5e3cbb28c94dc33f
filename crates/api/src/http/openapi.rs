//! The OpenAPI 3.1 document of the API, served at `GET /openapi.json`.

use actix_web::HttpResponse;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use super::bodies::{
    CertificateExpiryBody, CertificatesBody, ClusterBody, ClusterPageBody, ClusterSummaryBody,
    CredentialsBody, DnsRecordBody, FoundedClusterBody, NetworkingBody, NodeBody, OperationBody,
    ReissuedTokenBody,
};
use super::bootstrap::{BundleBody, BundleFileBody};
use super::create_body::CreateClusterBody;
use super::credentials::CredentialsRequestBody;
use super::{bootstrap, clusters, credentials, health, lifecycle, operations};
use crate::problem::{CleanupBody, FieldError, Problem};

#[derive(OpenApi)]
#[openapi(
    info(title = "plinth", description = "Founds Kubernetes control planes: a cluster's trust root, \
        its control-plane VMs and its node records, with an admin kubeconfig in the answer. Each \
        VM fetches its own files from the bootstrap route. See docs/ARCHITECTURE.md §3."),
    paths(clusters::create_cluster, clusters::list_clusters, clusters::get_cluster,
        lifecycle::delete_cluster, lifecycle::reissue_bootstrap_token,
        credentials::issue_credentials, operations::get_operation,
        bootstrap::fetch_bundle, health::healthz, health::readyz, health::prometheus),
    components(schemas(CreateClusterBody, FoundedClusterBody, NetworkingBody, NodeBody, DnsRecordBody,
        ClusterPageBody, ClusterSummaryBody, ClusterBody, BundleBody, BundleFileBody, Problem, FieldError,
        CleanupBody, OperationBody, CredentialsBody, CredentialsRequestBody, ReissuedTokenBody,
        CertificatesBody, CertificateExpiryBody)),
    modifiers(&SecuritySchemes)
)]
struct ApiDoc;

/// Operators send a JWT; a node sends its bootstrap token.
struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
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
        components.add_security_scheme(
            "node_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The node's bootstrap token, from its userdata"))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI 3.1 document of this API.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub(super) async fn serve() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document().to_json().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use plinth_domain::model::{
        ClusterName, ControlPlaneCount, MAX_SECURITY_GROUPS, SecurityGroupId, SubnetId,
    };
    use regex::Regex;
    use serde_json::Value;

    use super::*;
    use crate::http::create_body;

    fn doc() -> Value {
        serde_json::to_value(document()).unwrap()
    }

    fn body_schema() -> Value {
        doc()["components"]["schemas"]["CreateClusterBody"].clone()
    }

    #[test]
    fn the_documented_body_fields_are_the_parsers_fields() {
        let documented: Vec<String> = body_schema()["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(documented.len(), 6);
        for field in &documented {
            let (_, errors) =
                create_body::parse(format!(r#"{{"{field}": null}}"#).as_bytes()).unwrap();
            assert!(errors.is_empty(), "{field} is documented but not parsed");
        }
        // serde lists every field it parses when it meets one it does not.
        let (_, errors) = create_body::parse(br#"{"zzz": 1}"#).unwrap();
        let mut parsed: Vec<String> = Regex::new("`([a-z_]+)`")
            .unwrap()
            .captures_iter(&errors[0].message)
            .map(|c| c[1].to_owned())
            .filter(|f| f != "zzz")
            .collect();
        parsed.sort();
        let mut documented = documented;
        documented.sort();
        assert_eq!(parsed, documented);
    }

    #[test]
    fn the_schema_states_the_domains_rules() {
        let props = body_schema()["properties"].clone();
        let allowed: Vec<i64> = (-1..=9)
            .filter(|n| ControlPlaneCount::new(*n).is_ok())
            .collect();
        assert_eq!(
            props["control_plane_count"]["enum"],
            serde_json::json!(allowed)
        );

        let name = Regex::new(props["name"]["pattern"].as_str().unwrap()).unwrap();
        let id = Regex::new(props["subnet_id"]["pattern"].as_str().unwrap()).unwrap();
        let long_label = "a".repeat(63);
        let too_long_label = "a".repeat(64);
        let long_id = "s".repeat(128);
        let too_long_id = "s".repeat(129);
        for sample in [
            "a",
            "prod",
            "0-a",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "é",
            "",
            &long_label,
            &too_long_label,
            "sg:1",
            "subnet.local-1",
            &long_id,
            &too_long_id,
            "a/b",
            "a b",
            ".",
            "..",
            "...",
            ".a",
            "..a",
        ] {
            assert_eq!(
                name.is_match(sample),
                ClusterName::parse(sample).is_ok(),
                "name {sample:?}"
            );
            assert_eq!(
                id.is_match(sample),
                SubnetId::parse(sample).is_ok(),
                "id {sample:?}"
            );
            assert_eq!(
                id.is_match(sample),
                SecurityGroupId::parse(sample).is_ok(),
                "group {sample:?}"
            );
        }
        let groups = &props["security_group_ids"];
        assert_eq!(groups["minItems"], 1);
        assert_eq!(groups["maxItems"], MAX_SECURITY_GROUPS);
        assert_eq!(groups["uniqueItems"], true);
    }

    #[test]
    fn the_listing_parameters_state_their_bounds() {
        let params = doc()["paths"]["/clusters"]["get"]["parameters"].clone();
        let param = |name: &str| {
            params
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap()["schema"]
                .clone()
        };
        assert_eq!(param("limit")["minimum"], 1);
        assert_eq!(param("limit")["maximum"], 100);
        let cursor = Regex::new(param("cursor")["pattern"].as_str().unwrap()).unwrap();
        let handed_out = crate::http::cursor::encode(&plinth_domain::ports::repo::PageCursor {
            created_at: time::OffsetDateTime::now_utc(),
            id: plinth_domain::model::ClusterId::new_random(),
        });
        assert!(cursor.is_match(&handed_out), "{handed_out}");
        assert!(!cursor.is_match("a+b/c="));
    }

    #[test]
    fn every_security_scheme_used_is_defined() {
        let doc = doc();
        let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (_, op) in item.as_object().unwrap() {
                for requirement in op["security"].as_array().into_iter().flatten() {
                    for name in requirement.as_object().unwrap().keys() {
                        assert!(schemes.contains_key(name), "{path} uses {name}");
                    }
                }
            }
        }
    }

    #[test]
    fn retries_async_foundings_operations_and_credentials_are_documented() {
        let doc = doc();
        let post = &doc["paths"]["/clusters"]["post"];
        let headers: Vec<&str> = post["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["in"] == "header")
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(headers, ["Idempotency-Key", "Prefer"]);
        for status in ["201", "202", "409", "422"] {
            assert!(post["responses"][status].is_object(), "{status}");
        }
        let operation = &doc["paths"]["/operations/{id}"]["get"];
        assert!(operation["responses"]["200"].is_object());
        let credentials = &doc["paths"]["/clusters/{id}/credentials"]["post"];
        for status in ["201", "400", "403", "404", "409"] {
            assert!(credentials["responses"][status].is_object(), "{status}");
        }
        let lifetime = &doc["components"]["schemas"]["CredentialsRequestBody"]["properties"]["expiration_seconds"];
        assert_eq!(lifetime["minimum"], 600);
        assert_eq!(lifetime["maximum"], 2_592_000);
    }
}
