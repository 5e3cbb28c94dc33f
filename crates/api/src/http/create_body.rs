//! The body of `POST /clusters`: one type that serde parses and the OpenAPI document describes,
//! with the domain's rules stated in the schema.

use plinth_domain::model::{
    ClusterRequest, ControlPlaneCount, DNS_LABEL_PATTERN, MAX_SECURITY_GROUPS, PLATFORM_ID_PATTERN,
};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::{KnownFormat, RefOr, SchemaFormat};

use crate::problem::{ApiError, FieldError};

/// The body of `POST /clusters`: only the cluster's shape. Every field is optional; unknown
/// fields are refused, and so is `org_id` (the organization comes from the token).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateClusterBody {
    /// A DNS label, unique in the organization.
    #[schema(schema_with = dns_label)]
    name: Option<String>,
    /// How many control-plane nodes: odd so that etcd keeps a quorum; default 3.
    #[schema(schema_with = control_plane_count)]
    control_plane_count: Option<i64>,
    /// The subnet of the VMs; default from configuration.
    #[schema(schema_with = platform_id)]
    subnet_id: Option<String>,
    /// The VM size; default from configuration.
    #[schema(schema_with = platform_id)]
    flavor: Option<String>,
    /// The VM image; default from configuration.
    #[schema(schema_with = platform_id)]
    image: Option<String>,
    /// Distinct groups for the VMs; leave the field out to have plinth create one for the
    /// cluster (all IPv4 from the subnet, the API port from anywhere).
    #[schema(schema_with = security_group_ids)]
    security_group_ids: Option<Vec<String>>,
}

fn string(pattern: &str, max_length: usize) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(SchemaType::new(Type::String))
        .min_length(Some(1))
        .max_length(Some(max_length))
        .pattern(Some(pattern))
}

fn dns_label() -> Schema {
    Schema::Object(string(DNS_LABEL_PATTERN, 63).build())
}

fn platform_id() -> Schema {
    Schema::Object(string(PLATFORM_ID_PATTERN, 128).build())
}

fn control_plane_count() -> Schema {
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(SchemaType::new(Type::Integer))
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
            .enum_values(Some(ControlPlaneCount::ALLOWED))
            .default(Some(ControlPlaneCount::DEFAULT.get().into()))
            .build(),
    )
}

fn security_group_ids() -> Schema {
    Schema::Array(
        ArrayBuilder::new()
            .items(RefOr::T(platform_id()))
            .min_items(Some(1))
            .max_items(Some(MAX_SECURITY_GROUPS))
            .unique_items(true)
            .build(),
    )
}

impl From<CreateClusterBody> for ClusterRequest {
    fn from(body: CreateClusterBody) -> Self {
        Self {
            name: body.name,
            control_plane_count: body.control_plane_count,
            subnet_id: body.subnet_id,
            flavor: body.flavor,
            image: body.image,
            security_group_ids: body.security_group_ids,
        }
    }
}

/// Parses a body, listing every field that is unknown, forbidden or of the wrong type (not just
/// the first): the fields that parsed make the request, the others are in the errors. The
/// domain's rules are checked after, on the request.
///
/// # Errors
/// 400 when the body is not JSON at all.
pub fn parse(body: &[u8]) -> Result<(ClusterRequest, Vec<FieldError>), ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::malformed(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Ok((
            ClusterRequest::default(),
            vec![FieldError::new("(body)", "the body must be a JSON object")],
        ));
    };
    if let Ok(body) = serde_json::from_value::<CreateClusterBody>(Value::Object(fields.clone())) {
        return Ok((body.into(), Vec::new()));
    }
    // Each field on its own, so that every broken one is reported.
    let mut good = Map::new();
    let mut errors = Vec::new();
    for (key, value) in fields {
        if key == "org_id" {
            errors.push(FieldError::new(
                "org_id",
                "the organization comes from your token, not the body; remove org_id",
            ));
            continue;
        }
        let alone = Value::Object(Map::from_iter([(key.clone(), value.clone())]));
        match serde_path_to_error::deserialize::<_, CreateClusterBody>(alone) {
            Ok(_) => {
                good.insert(key, value);
            }
            Err(e) => {
                let path = e.path().to_string();
                let field = if path == "." { key } else { path };
                errors.push(FieldError::new(field, e.into_inner().to_string()));
            }
        }
    }
    let body = serde_json::from_value::<CreateClusterBody>(Value::Object(good)).unwrap_or_default();
    Ok((body.into(), errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unknown_forbidden_and_mistyped_field_is_listed() {
        let body = br#"{"org_id":"x","colour":"red","name":5,"control_plane_count":"3",
            "security_group_ids":["a",7],"flavor":null,"image":"debian-12"}"#;
        let (request, errors) = parse(body).unwrap();
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
        assert!(errors[0].message.contains("unknown field"), "{errors:?}");
        assert!(
            errors[0].message.contains("control_plane_count"),
            "{errors:?}"
        );
        assert!(errors[3].message.contains("comes from your token"));
        assert_eq!(request.image.as_deref(), Some("debian-12"));
        assert_eq!(request.flavor, None);
        assert_eq!(request.security_group_ids, None);
    }

    #[test]
    fn a_good_body_parses_whole() {
        let (request, errors) =
            parse(br#"{"name":"prod","control_plane_count":5,"security_group_ids":["sg-1"]}"#)
                .unwrap();
        assert!(errors.is_empty());
        assert_eq!(request.name.as_deref(), Some("prod"));
        assert_eq!(request.control_plane_count, Some(5));
        assert_eq!(request.security_group_ids, Some(vec!["sg-1".to_owned()]));
    }

    #[test]
    fn what_is_not_a_json_object_is_refused() {
        assert!(matches!(parse(b"{"), Err(e) if e.status().as_u16() == 400));
        let (_, errors) = parse(b"[1]").unwrap();
        assert_eq!(errors[0].field, "(body)");
    }
}
