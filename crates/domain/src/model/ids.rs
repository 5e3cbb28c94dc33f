use std::fmt;

use uuid::Uuid;

/// Why a value was refused, in words fit for the person who sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

/// The organization a request acts for. It comes from the caller's verified token, never from a
/// request body, so a caller cannot claim another organization.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrgId(String);

impl OrgId {
    const MAX_LEN: usize = 128;

    /// Accepts 1 to 128 characters of ASCII letters, digits and `.` `_` `:` `-`.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err(InvalidValue(format!(
                "an organization id has 1 to {} characters",
                Self::MAX_LEN
            )));
        }
        if !raw.bytes().all(is_id_byte) {
            return Err(InvalidValue(
                "an organization id may hold only ASCII letters, digits and . _ : -".into(),
            ));
        }
        if raw == "shared" {
            // The compute contract's owner of resources every organization may use.
            return Err(InvalidValue(
                "\"shared\" is reserved: it names resources every organization may use".into(),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A cluster's identity, chosen by plinth at founding (never by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterId(Uuid);

impl ClusterId {
    /// A fresh random id.
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }

    /// Wraps an id read back from storage or a URL.
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    /// The id as a UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// `cluster-{id}`: the one label the cluster goes by in DNS names, node names, kubeconfigs,
    /// certificate subjects and platform resource names.
    pub fn label(&self) -> String {
        format!("cluster-{self}")
    }

    /// Reads an id from text (a URL path, say).
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        Uuid::parse_str(raw)
            .map(Self)
            .map_err(|_| InvalidValue("a cluster id is a UUID".into()))
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Lowercase hyphenated: the form used inside DNS names.
        write!(f, "{}", self.0.hyphenated())
    }
}

/// A cluster's optional human name: one RFC 1123 DNS label, unique within its organization.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClusterName(String);

impl ClusterName {
    /// Accepts a DNS label: 1 to 63 lowercase letters, digits and `-`, starting and ending with a
    /// letter or digit.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        check_dns_label(raw).map(|()| Self(raw.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// [`check_dns_label`]'s rule as a regular expression, for API documents: what a
/// [`ClusterName`] may be.
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

/// The rule of every platform id (subnet, flavor, image, security group, VM) as a regular
/// expression, for API documents: 1 to 128 of the allowed characters, but not `.` or `..`
/// (spelt out by the first characters, as not every regular expression engine looks ahead).
pub const PLATFORM_ID_PATTERN: &str = "^(?:[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,127}|\\.[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,126}|\\.\\.[A-Za-z0-9._:-]{1,126})$";

/// Checks one RFC 1123 DNS label, lowercase only.
pub(crate) fn check_dns_label(raw: &str) -> Result<(), InvalidValue> {
    if raw.is_empty() || raw.len() > 63 {
        return Err(InvalidValue(
            "must be a DNS label of 1 to 63 characters".into(),
        ));
    }
    if !raw
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(InvalidValue(
            "must hold only lowercase letters, digits and '-'".into(),
        ));
    }
    if raw.starts_with('-') || raw.ends_with('-') {
        return Err(InvalidValue(
            "must start and end with a lowercase letter or digit".into(),
        ));
    }
    Ok(())
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
}

/// Defines an opaque identifier of a compute-platform resource. The platform chooses the text;
/// plinth only checks it is a sane single token, so it cannot smuggle a path or a header.
macro_rules! platform_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            const MAX_LEN: usize = 128;

            /// Accepts 1 to 128 characters of ASCII letters, digits and `.` `_` `:` `-`, but
            /// not `.` or `..`.
            pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
                if raw.is_empty() || raw.len() > Self::MAX_LEN {
                    return Err(InvalidValue(format!(
                        concat!("a ", $what, " has 1 to {} characters"),
                        Self::MAX_LEN
                    )));
                }
                if !raw.bytes().all(is_id_byte) {
                    return Err(InvalidValue(
                        concat!("a ", $what, " may hold only ASCII letters, digits and . _ : -")
                            .into(),
                    ));
                }
                // The id becomes a URL path segment at the compute service: `.` and `..` would
                // name another resource than the one meant.
                if raw == "." || raw == ".." {
                    return Err(InvalidValue(concat!("a ", $what, " cannot be . or ..").into()));
                }
                Ok(Self(raw.to_owned()))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

platform_id!(
    /// A subnet of the compute platform, where control-plane VMs get their addresses.
    SubnetId,
    "subnet id"
);
platform_id!(
    /// A VM size offered by the compute platform.
    FlavorId,
    "flavor"
);
platform_id!(
    /// A VM image offered by the compute platform.
    ImageId,
    "image"
);
platform_id!(
    /// A security group of the compute platform.
    SecurityGroupId,
    "security group id"
);
platform_id!(
    /// A VM of the compute platform.
    VmId,
    "VM id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_name_accepts_dns_labels() {
        for good in ["a", "prod", "team-a-01", "0abc", &"x".repeat(63)] {
            assert!(
                ClusterName::parse(good).is_ok(),
                "{good} should be accepted"
            );
        }
    }

    #[test]
    fn cluster_name_rejects_what_is_not_a_dns_label() {
        for bad in [
            "",
            "-a",
            "a-",
            "Prod",
            "a_b",
            "a.b",
            "a b",
            "é",
            &"x".repeat(64),
        ] {
            assert!(
                ClusterName::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn org_id_rules() {
        assert!(OrgId::parse("org-42").is_ok());
        assert!(OrgId::parse("acme:prod_1.eu").is_ok());
        assert!(OrgId::parse("").is_err());
        assert!(OrgId::parse("a/b").is_err());
        assert!(OrgId::parse(&"o".repeat(129)).is_err());
    }

    #[test]
    fn platform_ids_refuse_paths_and_whitespace() {
        assert!(SubnetId::parse("subnet-local").is_ok());
        assert!(FlavorId::parse("m1.small").is_ok());
        assert!(VmId::parse("../etc").is_err());
        for dots in [".", ".."] {
            assert!(SubnetId::parse(dots).is_err(), "{dots}");
            assert!(SecurityGroupId::parse(dots).is_err(), "{dots}");
            assert!(VmId::parse(dots).is_err(), "{dots}");
        }
        assert!(
            OrgId::parse("shared").is_err(),
            "reserved for shared resources"
        );
        assert!(ImageId::parse("debian 12").is_err());
        assert!(SecurityGroupId::parse("").is_err());
        let err = SubnetId::parse("a\nb").unwrap_err();
        assert!(err.0.contains("subnet id"), "{err}");
    }

    #[test]
    fn cluster_id_displays_lowercase_hyphenated() {
        let id = ClusterId::from_uuid(Uuid::from_u128(0xABCDEF));
        assert_eq!(id.to_string(), "00000000-0000-0000-0000-000000abcdef");
    }
}
