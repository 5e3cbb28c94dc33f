use std::collections::HashSet;
use std::fmt;

use super::ids::{ClusterName, FlavorId, ImageId, InvalidValue, SecurityGroupId, SubnetId};
use super::naming::NodeOrdinal;

/// What a caller asks for, as it arrived: every field optional and not yet checked.
///
/// The body only describes the cluster's shape. Identity, trust material and node rows are
/// plinth's to create, and the organization comes from the caller's token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterRequest {
    /// Optional DNS label, unique within the organization.
    pub name: Option<String>,
    /// Odd, 1 to 7; 3 when absent.
    pub control_plane_count: Option<i64>,
    /// The subnet for the VMs; the deployment's default when absent.
    pub subnet_id: Option<String>,
    /// The VM size; the deployment's default when absent.
    pub flavor: Option<String>,
    /// The VM image; the deployment's default when absent.
    pub image: Option<String>,
    /// 1 to 5 distinct groups to attach; when absent, plinth creates one for the cluster.
    pub security_group_ids: Option<Vec<String>>,
}

/// The deployment's defaults for fields a request leaves out (from configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDefaults {
    /// Default subnet for control-plane VMs.
    pub subnet_id: SubnetId,
    /// Default VM size.
    pub flavor: FlavorId,
    /// Default VM image.
    pub image: ImageId,
}

/// The number of control-plane nodes: odd (an etcd quorum), 1 to 7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ControlPlaneCount(u8);

impl ControlPlaneCount {
    /// Three nodes: survives one failure.
    pub const DEFAULT: Self = Self(3);
    /// Every count [`ControlPlaneCount::new`] accepts.
    pub const ALLOWED: [u8; 4] = [1, 3, 5, 7];
    const MAX: i64 = 7;

    /// Accepts an odd number from 1 to 7.
    pub fn new(count: i64) -> Result<Self, InvalidValue> {
        if !(1..=Self::MAX).contains(&count) {
            return Err(InvalidValue(format!(
                "must be between 1 and {}, got {count}",
                Self::MAX
            )));
        }
        if count % 2 == 0 {
            return Err(InvalidValue(format!(
                "must be odd so that etcd keeps a quorum, got {count}"
            )));
        }
        u8::try_from(count)
            .map(Self)
            .map_err(|_| InvalidValue(format!("must be between 1 and {}", Self::MAX)))
    }

    /// The count as a number.
    pub fn get(self) -> u8 {
        self.0
    }

    /// The node ordinals 1..=count.
    pub fn ordinals(self) -> impl Iterator<Item = NodeOrdinal> {
        (1..=self.0).filter_map(|n| NodeOrdinal::new(n).ok())
    }
}

/// How a cluster's control plane gets its security groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityGroupChoice {
    /// The caller gave these groups; plinth creates none.
    Given(Vec<SecurityGroupId>),
    /// plinth creates one group for the cluster: all IPv4 from the subnet, TCP 6443 from anywhere.
    CreateForCluster,
}

/// A checked request with every default applied: the shape of the cluster to found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// Optional unique-per-org name.
    pub name: Option<ClusterName>,
    /// How many control-plane nodes.
    pub control_plane_count: ControlPlaneCount,
    /// Where the VMs go.
    pub subnet_id: SubnetId,
    /// VM size.
    pub flavor: FlavorId,
    /// VM image.
    pub image: ImageId,
    /// Given groups, or "create one".
    pub security_groups: SecurityGroupChoice,
}

/// One broken rule, naming the field as the caller wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field, e.g. `control_plane_count` or `security_group_ids[2]`.
    pub field: String,
    /// What is wrong, for a person.
    pub message: String,
}

/// Every rule a request breaks, all at once, so a caller fixes the body in one round.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldViolation>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request is invalid: ")?;
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.message)?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    /// The violated field names, in the order found.
    pub fn fields(&self) -> Vec<&str> {
        self.0.iter().map(|v| v.field.as_str()).collect()
    }
}

#[derive(Default)]
struct Violations(Vec<FieldViolation>);

impl Violations {
    /// Keeps `Ok` values and records errors against `field`.
    fn check<T>(&mut self, field: &str, result: Result<T, InvalidValue>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(InvalidValue(message)) => {
                self.0.push(FieldViolation {
                    field: field.to_owned(),
                    message,
                });
                None
            }
        }
    }
}

impl ClusterRequest {
    /// Applies the deployment's defaults and checks every rule, reporting all violations.
    pub fn validate(self, defaults: &ClusterDefaults) -> Result<ClusterSpec, ValidationErrors> {
        let mut violations = Violations::default();

        let name = match self.name.as_deref() {
            None => Some(None),
            Some(raw) => violations.check("name", ClusterName::parse(raw)).map(Some),
        };
        let count = match self.control_plane_count {
            None => Some(ControlPlaneCount::DEFAULT),
            Some(raw) => violations.check("control_plane_count", ControlPlaneCount::new(raw)),
        };
        let subnet_id = match self.subnet_id.as_deref() {
            None => Some(defaults.subnet_id.clone()),
            Some(raw) => violations.check("subnet_id", SubnetId::parse(raw)),
        };
        let flavor = match self.flavor.as_deref() {
            None => Some(defaults.flavor.clone()),
            Some(raw) => violations.check("flavor", FlavorId::parse(raw)),
        };
        let image = match self.image.as_deref() {
            None => Some(defaults.image.clone()),
            Some(raw) => violations.check("image", ImageId::parse(raw)),
        };
        let security_groups = match self.security_group_ids {
            None => Some(SecurityGroupChoice::CreateForCluster),
            Some(raw) => {
                check_security_groups(&raw, &mut violations).map(SecurityGroupChoice::Given)
            }
        };

        match (name, count, subnet_id, flavor, image, security_groups) {
            (
                Some(name),
                Some(control_plane_count),
                Some(subnet_id),
                Some(flavor),
                Some(image),
                Some(security_groups),
            ) if violations.0.is_empty() => Ok(ClusterSpec {
                name,
                control_plane_count,
                subnet_id,
                flavor,
                image,
                security_groups,
            }),
            _ => Err(ValidationErrors(violations.0)),
        }
    }
}

/// The most security groups a request may name.
pub const MAX_SECURITY_GROUPS: usize = 5;

fn check_security_groups(
    raw: &[String],
    violations: &mut Violations,
) -> Option<Vec<SecurityGroupId>> {
    const FIELD: &str = "security_group_ids";
    let before = violations.0.len();
    if raw.is_empty() || raw.len() > MAX_SECURITY_GROUPS {
        violations.check::<()>(
            FIELD,
            Err(InvalidValue(format!(
                "give 1 to {MAX_SECURITY_GROUPS} security group ids, or leave the field out to \
                 have one created; got {}",
                raw.len()
            ))),
        );
    }
    let mut seen = HashSet::new();
    let mut ids = Vec::with_capacity(raw.len());
    for (i, id) in raw.iter().enumerate() {
        let field = format!("{FIELD}[{i}]");
        if !seen.insert(id.as_str()) {
            violations.check::<()>(
                &field,
                Err(InvalidValue(format!("{id:?} is listed more than once"))),
            );
            continue;
        }
        if let Some(id) = violations.check(&field, SecurityGroupId::parse(id)) {
            ids.push(id);
        }
    }
    (violations.0.len() == before).then_some(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> ClusterDefaults {
        ClusterDefaults {
            subnet_id: SubnetId::parse("subnet-default").unwrap(),
            flavor: FlavorId::parse("m1.medium").unwrap(),
            image: ImageId::parse("debian-12").unwrap(),
        }
    }

    fn with_count(count: i64) -> ClusterRequest {
        ClusterRequest {
            control_plane_count: Some(count),
            ..ClusterRequest::default()
        }
    }

    fn with_groups(groups: &[&str]) -> ClusterRequest {
        ClusterRequest {
            security_group_ids: Some(groups.iter().map(|g| (*g).to_owned()).collect()),
            ..ClusterRequest::default()
        }
    }

    fn violated_fields(request: ClusterRequest) -> Vec<String> {
        request
            .validate(&defaults())
            .unwrap_err()
            .0
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    #[test]
    fn an_empty_request_takes_every_default() {
        let spec = ClusterRequest::default().validate(&defaults()).unwrap();
        assert_eq!(spec.name, None);
        assert_eq!(spec.control_plane_count.get(), 3);
        assert_eq!(spec.subnet_id.as_str(), "subnet-default");
        assert_eq!(spec.flavor.as_str(), "m1.medium");
        assert_eq!(spec.image.as_str(), "debian-12");
        assert_eq!(spec.security_groups, SecurityGroupChoice::CreateForCluster);
    }

    #[test]
    fn given_fields_override_the_defaults() {
        let spec = ClusterRequest {
            name: Some("prod-eu".into()),
            control_plane_count: Some(5),
            subnet_id: Some("subnet-b".into()),
            flavor: Some("m1.large".into()),
            image: Some("ubuntu-24.04".into()),
            security_group_ids: Some(vec!["sg-1".into(), "sg-2".into()]),
        }
        .validate(&defaults())
        .unwrap();
        assert_eq!(spec.name.unwrap().as_str(), "prod-eu");
        assert_eq!(spec.control_plane_count.get(), 5);
        assert_eq!(spec.subnet_id.as_str(), "subnet-b");
        assert_eq!(spec.flavor.as_str(), "m1.large");
        assert_eq!(spec.image.as_str(), "ubuntu-24.04");
        assert_eq!(
            spec.security_groups,
            SecurityGroupChoice::Given(vec![
                SecurityGroupId::parse("sg-1").unwrap(),
                SecurityGroupId::parse("sg-2").unwrap()
            ])
        );
    }

    #[test]
    fn odd_counts_from_one_to_seven_are_accepted() {
        for count in [1, 3, 5, 7] {
            let spec = with_count(count).validate(&defaults()).unwrap();
            assert_eq!(i64::from(spec.control_plane_count.get()), count);
            assert_eq!(spec.control_plane_count.ordinals().count(), count as usize);
        }
    }

    #[test]
    fn an_even_count_is_rejected() {
        for count in [2, 4, 6] {
            let err = with_count(count).validate(&defaults()).unwrap_err();
            assert_eq!(err.fields(), ["control_plane_count"]);
            assert!(err.0[0].message.contains("odd"), "{err}");
        }
    }

    #[test]
    fn a_count_of_zero_is_rejected() {
        assert_eq!(violated_fields(with_count(0)), ["control_plane_count"]);
    }

    #[test]
    fn a_count_of_nine_is_rejected() {
        assert_eq!(violated_fields(with_count(9)), ["control_plane_count"]);
    }

    #[test]
    fn negative_and_huge_counts_are_rejected() {
        assert_eq!(violated_fields(with_count(-1)), ["control_plane_count"]);
        assert_eq!(
            violated_fields(with_count(i64::MAX)),
            ["control_plane_count"]
        );
    }

    #[test]
    fn duplicate_security_group_ids_are_rejected() {
        let err = with_groups(&["sg-1", "sg-2", "sg-1"])
            .validate(&defaults())
            .unwrap_err();
        assert_eq!(err.fields(), ["security_group_ids[2]"]);
        assert!(err.0[0].message.contains("more than once"), "{err}");
    }

    #[test]
    fn six_security_groups_are_rejected() {
        let err = with_groups(&["a", "b", "c", "d", "e", "f"])
            .validate(&defaults())
            .unwrap_err();
        assert_eq!(err.fields(), ["security_group_ids"]);
        assert!(err.0[0].message.contains("got 6"), "{err}");
    }

    #[test]
    fn five_security_groups_are_accepted() {
        assert!(
            with_groups(&["a", "b", "c", "d", "e"])
                .validate(&defaults())
                .is_ok()
        );
    }

    #[test]
    fn an_empty_security_group_list_is_rejected() {
        assert_eq!(violated_fields(with_groups(&[])), ["security_group_ids"]);
    }

    #[test]
    fn a_malformed_security_group_id_is_rejected() {
        assert_eq!(
            violated_fields(with_groups(&["sg-1", "sg 2"])),
            ["security_group_ids[1]"]
        );
    }

    #[test]
    fn a_bad_name_is_rejected() {
        for bad in ["Prod", "-x", "a.b", "", "a_b"] {
            let request = ClusterRequest {
                name: Some(bad.into()),
                ..ClusterRequest::default()
            };
            assert_eq!(violated_fields(request), ["name"], "name {bad:?}");
        }
    }

    #[test]
    fn malformed_subnet_flavor_and_image_are_rejected() {
        let request = ClusterRequest {
            subnet_id: Some(String::new()),
            flavor: Some("m1 large".into()),
            image: Some("x".repeat(200)),
            ..ClusterRequest::default()
        };
        assert_eq!(violated_fields(request), ["subnet_id", "flavor", "image"]);
    }

    #[test]
    fn every_violation_is_reported_at_once() {
        let request = ClusterRequest {
            name: Some("Bad_Name".into()),
            control_plane_count: Some(4),
            subnet_id: Some("a/b".into()),
            flavor: Some(String::new()),
            image: Some("img\n".into()),
            security_group_ids: Some(vec!["sg".into(); 6]),
        };
        let err = request.validate(&defaults()).unwrap_err();
        assert_eq!(
            err.fields(),
            [
                "name",
                "control_plane_count",
                "subnet_id",
                "flavor",
                "image",
                "security_group_ids",
                "security_group_ids[1]",
                "security_group_ids[2]",
                "security_group_ids[3]",
                "security_group_ids[4]",
                "security_group_ids[5]",
            ]
        );
        let text = err.to_string();
        assert!(text.starts_with("the request is invalid: name: "), "{text}");
    }
}
