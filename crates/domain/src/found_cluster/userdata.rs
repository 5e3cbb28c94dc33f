//! The bootstrap userdata shim: a few lines of shell holding one node's bundle URL and token.

use std::fmt;

use crate::model::{BootstrapToken, ClusterId, InvalidValue, NodeName, SecretText};

/// The base URL VMs reach plinth at, e.g. `https://plinth.internal:8443`, without a trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapBaseUrl(String);

impl BootstrapBaseUrl {
    /// Accepts an `http://` or `https://` URL with a host, no query or fragment, made only of
    /// characters that need no quoting in a shell (the shim holds it unquoted).
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let url = raw.trim_end_matches('/');
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| {
                InvalidValue("the bootstrap base URL must start with https:// or http://".into())
            })?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(InvalidValue("the bootstrap base URL needs a host".into()));
        }
        if !url.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'.' | b'-' | b'_' | b':' | b'/' | b'[' | b']' | b'%')
        }) {
            return Err(InvalidValue(
                "the bootstrap base URL may hold only letters, digits and . - _ : / [ ] % (no query, fragment, quotes or spaces)".into(),
            ));
        }
        Ok(Self(url.to_owned()))
    }

    /// The URL as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BootstrapBaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The bundle path of one node: `/bootstrap/{cluster_id}/nodes/{node_name}`.
pub fn bootstrap_path(cluster: ClusterId, node: &NodeName) -> String {
    format!("/bootstrap/{cluster}/nodes/{node}")
}

/// The bundle path with the node left as a placeholder, as returned to the operator.
pub fn bootstrap_path_template(cluster: ClusterId) -> String {
    format!("/bootstrap/{cluster}/nodes/{{node_name}}")
}

/// Renders the shim a VM boots with. It holds the node's bundle URL and token and nothing else
/// secret; it fetches the bundle (bounded retries), checks it against the `X-Bundle-Sha256` the
/// server sent, unpacks it under `/` and starts the kubelet, which runs the static pods the bundle
/// brings. `PLINTH_BOOTSTRAP_ROOT` (default `/`) and `PLINTH_START_KUBELET=no` let an operator
/// stage a bundle elsewhere to inspect it.
pub fn render_userdata_shim(
    base: &BootstrapBaseUrl,
    cluster: ClusterId,
    node: &NodeName,
    token: &BootstrapToken,
) -> SecretText {
    let url = format!("{base}{}", bootstrap_path(cluster, node));
    SecretText::new(format!(
        r#"#!/bin/sh
# plinth bootstrap shim: fetch this node's bundle, check it, unpack it, start the kubelet.
# It holds one node-scoped, expiring token and no key material.
set -eu
PLINTH_BOOTSTRAP_URL={url}
PLINTH_BOOTSTRAP_TOKEN={token}
root=${{PLINTH_BOOTSTRAP_ROOT:-/}}
umask 077
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fetch() {{
  curl --fail --silent --show-error --connect-timeout 10 --max-time 120 \
    --header "Authorization: Bearer $PLINTH_BOOTSTRAP_TOKEN" \
    --dump-header "$work/headers" --output "$work/bundle" "$PLINTH_BOOTSTRAP_URL" || return 1
  sum=$(tr -d '\r' <"$work/headers" | sed -n 's/^[Xx]-[Bb]undle-[Ss]ha256: *//p' | tail -n 1)
  [ -n "$sum" ] && [ "$(sha256sum "$work/bundle" | cut -d ' ' -f 1)" = "$sum" ]
}}
attempt=1
until fetch; do
  if [ "$attempt" -ge 30 ]; then
    echo "plinth: no whole bootstrap bundle after $attempt attempts" >&2
    exit 1
  fi
  attempt=$((attempt + 1))
  sleep 10
done
tar -xzf "$work/bundle" -C "$root"
[ "${{PLINTH_START_KUBELET:-yes}}" = no ] || systemctl enable --now kubelet
"#,
        token = token.expose(),
    ))
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::model::{BootstrapTokenHash, NodeOrdinal};

    fn line_value<'a>(shim: &'a str, key: &str) -> &'a str {
        let prefix = format!("{key}=");
        let mut found = shim.lines().filter_map(|l| l.strip_prefix(prefix.as_str()));
        let value = found.next().unwrap_or_else(|| panic!("no {key} line"));
        assert!(found.next().is_none(), "{key} appears twice");
        value
    }

    #[test]
    fn the_shim_holds_the_node_url_and_its_token_and_no_key_material() {
        let cluster = ClusterId::from_uuid(Uuid::from_u128(9));
        let node = NodeName::new(cluster, NodeOrdinal::new(3).unwrap());
        let token = BootstrapToken::generate();
        let base = BootstrapBaseUrl::parse("https://plinth.internal:8443/").unwrap();
        let shim = render_userdata_shim(&base, cluster, &node, &token);
        let shim = shim.expose();
        assert_eq!(
            line_value(shim, "PLINTH_BOOTSTRAP_URL"),
            "https://plinth.internal:8443/bootstrap/00000000-0000-0000-0000-000000000009/nodes/cp-3.cluster-00000000-0000-0000-0000-000000000009.internal"
        );
        let in_shim = line_value(shim, "PLINTH_BOOTSTRAP_TOKEN");
        assert!(BootstrapTokenHash::of(in_shim) == token.hash());
        assert!(shim.starts_with("#!/bin/sh\n"));
        assert!(!shim.contains("BEGIN"));
        assert!(
            shim.len() < 2048,
            "the shim stays small: {} bytes",
            shim.len()
        );
    }

    #[test]
    fn base_urls_that_would_need_shell_quoting_are_refused() {
        for bad in [
            "plinth.internal",
            "ftp://x",
            "https://",
            "https:///path",
            "https://x/$(reboot)",
            "https://x/a b",
            "https://x/?q=1",
            "https://x/'",
        ] {
            assert!(
                BootstrapBaseUrl::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
        assert_eq!(
            BootstrapBaseUrl::parse("http://127.0.0.1:8080//")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8080"
        );
        assert!(BootstrapBaseUrl::parse("https://[fd00::1]:8443/plinth").is_ok());
    }

    #[test]
    fn the_path_template_names_the_cluster_and_leaves_the_node_open() {
        let cluster = ClusterId::from_uuid(Uuid::from_u128(1));
        assert_eq!(
            bootstrap_path_template(cluster),
            "/bootstrap/00000000-0000-0000-0000-000000000001/nodes/{node_name}"
        );
    }
}
