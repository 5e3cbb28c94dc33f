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

    /// Whether VMs fetch over TLS (`https://`).
    pub fn is_https(&self) -> bool {
        self.0.starts_with("https://")
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

/// The CA whose certificate signs the certificate plinth's bootstrap listener presents: one or
/// more PEM certificates (public; no key). The shim trusts it, and nothing else, for the fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapCa(String);

impl BootstrapCa {
    /// The most PEM text a shim carries: a P-256 or RSA CA certificate, or two for a rotation.
    pub const MAX_BYTES: usize = 2048;

    /// Accepts PEM text made only of `CERTIFICATE` blocks (at least one, each DER), blank lines
    /// aside, of at most [`Self::MAX_BYTES`] once its lines are trimmed; anything else — a key
    /// above all — is refused. The text is kept normalized (`\n` line ends, no blank lines), so
    /// it can be embedded in a shell here-document as it is.
    pub fn parse(pem: &str) -> Result<Self, InvalidValue> {
        use base64::Engine as _;
        const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
        const END: &str = "-----END CERTIFICATE-----";
        let refuse = |why: &str| Err(InvalidValue(why.to_owned()));
        let mut normalized = String::new();
        let mut body: Option<String> = None;
        let mut certificates = 0;
        for line in pem.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if line.contains("PRIVATE KEY") {
                return refuse("it holds a private key: give the CA's certificate only");
            }
            match body.as_mut() {
                None if line == BEGIN => body = Some(String::new()),
                None if line.starts_with("-----BEGIN ") => {
                    return refuse("it holds a PEM block that is not a CERTIFICATE");
                }
                None => return refuse("it is not PEM: text outside a CERTIFICATE block"),
                Some(b64) if line == END => {
                    let der = base64::engine::general_purpose::STANDARD
                        .decode(b64.as_bytes())
                        .map_err(|e| InvalidValue(format!("a certificate is not base64: {e}")))?;
                    // A DER certificate is a SEQUENCE.
                    if der.len() < 64 || der[0] != 0x30 {
                        return refuse("a CERTIFICATE block does not hold a DER certificate");
                    }
                    certificates += 1;
                    body = None;
                }
                Some(b64) => {
                    if !line
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
                    {
                        return refuse("a CERTIFICATE block holds a line that is not base64");
                    }
                    b64.push_str(line);
                }
            }
            normalized.push_str(line);
            normalized.push('\n');
        }
        if body.is_some() {
            return refuse("a CERTIFICATE block has no END line");
        }
        if certificates == 0 {
            return refuse("it holds no PEM certificate (-----BEGIN CERTIFICATE-----)");
        }
        if normalized.len() > Self::MAX_BYTES {
            return Err(InvalidValue(format!(
                "{} bytes of certificates: a shim carries at most {}",
                normalized.len(),
                Self::MAX_BYTES
            )));
        }
        Ok(Self(normalized))
    }

    /// The certificates, PEM, each line ending in `\n`.
    pub fn as_pem(&self) -> &str {
        &self.0
    }
}

/// Renders the shim a VM boots with. It holds the node's bundle URL and token and nothing else
/// secret; it fetches the bundle (bounded retries), checks it against the `X-Bundle-Sha256` the
/// server sent, unpacks it under `/` and starts the kubelet, which runs the static pods the bundle
/// brings. With `ca`, the shim carries that CA's certificate and curl trusts it alone for the
/// server's certificate (`--cacert`, and an empty `--capath` so the system's CAs do not count);
/// without it, an `https://` fetch trusts the system's CAs. `PLINTH_BOOTSTRAP_ROOT` (default `/`)
/// and `PLINTH_START_KUBELET=no` let an operator stage a bundle elsewhere to inspect it.
pub fn render_userdata_shim(
    base: &BootstrapBaseUrl,
    ca: Option<&BootstrapCa>,
    cluster: ClusterId,
    node: &NodeName,
    token: &BootstrapToken,
) -> SecretText {
    let url = format!("{base}{}", bootstrap_path(cluster, node));
    let (pin, trust) = match ca {
        Some(ca) => (
            format!(
                "# plinth's certificate must chain to this CA (public), and to no other.\n\
                 mkdir \"$work/capath\"\ncat >\"$work/ca.crt\" <<'PLINTH_CA'\n{}PLINTH_CA\n",
                ca.as_pem()
            ),
            " \\\n    --cacert \"$work/ca.crt\" --capath \"$work/capath\"",
        ),
        None => (String::new(), ""),
    };
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
{pin}fetch() {{
  curl --fail --silent --show-error --connect-timeout 10 --max-time 120{trust} \
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

    /// A P-256 CA certificate (public; its key was thrown away).
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\n\
MIIBrTCCAVOgAwIBAgIUTwg1OXPaDV/x5WObVDxPytnCk1gwCgYIKoZIzj0EAwIw\n\
IzEhMB8GA1UEAwwYcGxpbnRoIGJvb3RzdHJhcCB0ZXN0IENBMCAXDTI2MTIwMTE4\n\
MzY1N1oYDzIxMjYxMTA3MTgzNjU3WjAjMSEwHwYDVQQDDBhwbGludGggYm9vdHN0\n\
cmFwIHRlc3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASpzD7m22/t4Ikk\n\
hraW/vAW0ZES3oE+Uu/mQ6YexYThkFeJOl9oiej3okXiWDkTJHYfjn1IdY8xmedI\n\
gRjS+uu7o2MwYTAdBgNVHQ4EFgQUCjceAKuciFnL6zvjvwiKOup6rl4wHwYDVR0j\n\
BBgwFoAUCjceAKuciFnL6zvjvwiKOup6rl4wDwYDVR0TAQH/BAUwAwEB/zAOBgNV\n\
HQ8BAf8EBAMCAgQwCgYIKoZIzj0EAwIDSAAwRQIhAJwZK3q0skNFCa7MTiVZx/wR\n\
hHNy3GfbjcTSjfRSDTRaAiAyvMZGGb2x96X96UkqRLfyGeX4FCbEaId5552kqS/B\n\
Cg==\n\
-----END CERTIFICATE-----\n\
";

    fn shim_for(ca: Option<&BootstrapCa>) -> (String, BootstrapToken) {
        let cluster = ClusterId::from_uuid(Uuid::from_u128(9));
        let node = NodeName::new(cluster, NodeOrdinal::new(3).unwrap());
        let token = BootstrapToken::generate();
        let base = BootstrapBaseUrl::parse("https://plinth.internal:8443/").unwrap();
        let shim = render_userdata_shim(&base, ca, cluster, &node, &token);
        (shim.expose().to_owned(), token)
    }

    /// `sh -n`: the shim parses as a POSIX shell script.
    fn assert_parses(shim: &str) {
        use std::io::Write as _;
        let mut sh = std::process::Command::new("sh")
            .arg("-n")
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        sh.stdin.take().unwrap().write_all(shim.as_bytes()).unwrap();
        let output = sh.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "sh -n: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    #[test]
    fn the_shim_holds_the_node_url_and_its_token_and_no_key_material() {
        let (shim, token) = shim_for(None);
        assert_eq!(
            line_value(&shim, "PLINTH_BOOTSTRAP_URL"),
            "https://plinth.internal:8443/bootstrap/00000000-0000-0000-0000-000000000009/nodes/cp-3.cluster-00000000-0000-0000-0000-000000000009.internal"
        );
        let in_shim = line_value(&shim, "PLINTH_BOOTSTRAP_TOKEN");
        assert!(BootstrapTokenHash::of(in_shim) == token.hash());
        assert!(shim.starts_with("#!/bin/sh\n"));
        assert!(!shim.contains("BEGIN"));
        // No CA given: curl trusts the system's CAs.
        assert!(!shim.contains("--cacert") && !shim.contains("--capath"));
        assert!(
            shim.len() < 2048,
            "the shim stays small: {} bytes",
            shim.len()
        );
        assert_parses(&shim);
    }

    #[test]
    fn with_a_ca_the_shim_pins_it_and_still_holds_no_private_key() {
        let ca = BootstrapCa::parse(CA_PEM).unwrap();
        let (shim, token) = shim_for(Some(&ca));
        assert!(
            BootstrapTokenHash::of(line_value(&shim, "PLINTH_BOOTSTRAP_TOKEN")) == token.hash()
        );
        // The CA goes, as it is, into a here-document curl reads.
        let written = shim
            .split_once("<<'PLINTH_CA'\n")
            .and_then(|(_, rest)| rest.split_once("PLINTH_CA\n"))
            .map(|(pem, _)| pem)
            .expect("no CA here-document");
        assert_eq!(written, CA_PEM);
        assert!(shim.contains("cat >\"$work/ca.crt\" <<'PLINTH_CA'\n"));
        // curl trusts that file and an empty directory: not the system's CAs.
        let curl = shim
            .split_once("  curl ")
            .map(|(_, rest)| rest.split("|| return 1").next().unwrap())
            .unwrap();
        assert!(
            curl.contains("--cacert \"$work/ca.crt\" --capath \"$work/capath\""),
            "{curl}"
        );
        assert!(shim.contains("mkdir \"$work/capath\"\n"));
        assert_eq!(shim.matches("BEGIN CERTIFICATE").count(), 1);
        assert!(!shim.contains("PRIVATE KEY"));
        assert!(shim.len() < 2048, "{} bytes", shim.len());
        assert_parses(&shim);
    }

    #[test]
    fn the_shim_stays_well_under_4_kib_with_the_largest_ca_allowed() {
        // One certificate block as large as allowed (any 64-character base64 line of DER).
        let line = format!("MIIB{}\n", "A".repeat(60));
        let lines = (BootstrapCa::MAX_BYTES - 54) / line.len();
        let big = format!(
            "-----BEGIN CERTIFICATE-----\n{}-----END CERTIFICATE-----\n",
            line.repeat(lines)
        );
        let big = BootstrapCa::parse(&big).unwrap();
        assert!(big.as_pem().len() > BootstrapCa::MAX_BYTES - line.len());
        let (shim, _) = shim_for(Some(&big));
        assert!(
            shim.len() < 3500,
            "the shim stays well under 4 KiB: {} bytes",
            shim.len()
        );
        assert_parses(&shim);
    }

    #[test]
    fn only_pem_certificates_are_a_bootstrap_ca() {
        let crlf = CA_PEM.replace('\n', "\r\n");
        assert_eq!(
            BootstrapCa::parse(&format!("\n{crlf}\n\n"))
                .unwrap()
                .as_pem(),
            CA_PEM,
            "CRLF and blank lines are normalized away"
        );
        let body = CA_PEM.lines().nth(1).unwrap();
        let too_big = CA_PEM.repeat(BootstrapCa::MAX_BYTES / CA_PEM.len() + 1);
        for (bad, why) in [
            (
                format!("{CA_PEM}-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n"),
                "private key",
            ),
            (
                format!("-----BEGIN EC PRIVATE KEY-----\n{body}\n-----END EC PRIVATE KEY-----\n"),
                "private key",
            ),
            (
                format!("-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n"),
                "not a CERTIFICATE",
            ),
            ("".to_owned(), "no PEM certificate"),
            ("not a certificate".to_owned(), "not PEM"),
            (format!("subject=CN = x\n{CA_PEM}"), "not PEM"),
            (CA_PEM.replace("-----END CERTIFICATE-----\n", ""), "no END"),
            (CA_PEM.replacen(body, "$(reboot)", 1), "not base64"),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_owned(),
                "DER",
            ),
            (too_big, "at most 2048"),
        ] {
            let err = BootstrapCa::parse(&bad).expect_err(&bad);
            assert!(err.0.contains(why), "{bad:?}: {err:?}");
        }
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
        assert!(BootstrapBaseUrl::parse("https://x").unwrap().is_https());
        assert!(!BootstrapBaseUrl::parse("http://x").unwrap().is_https());
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
