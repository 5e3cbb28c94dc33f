//! The request headers of a retry-safe and an asynchronous `POST /clusters`: `Idempotency-Key`
//! (IETF httpapi draft) with the request's fingerprint, and `Prefer: respond-async` (RFC 7240).

use actix_web::HttpRequest;
use plinth_domain::model::{IdempotencyKey, RequestFingerprint};
use serde_json::Value;

use crate::problem::FieldError;

/// The client's idempotency key header.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The request's `Idempotency-Key`, if it sent one.
///
/// # Errors
/// A field error naming the header: sent twice, not text, empty, too long, or with characters
/// outside visible ASCII.
pub fn idempotency_key(req: &HttpRequest) -> Result<Option<IdempotencyKey>, FieldError> {
    let mut values = req.headers().get_all(IDEMPOTENCY_KEY);
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let refused = |why: &str| FieldError::new(IDEMPOTENCY_KEY, why);
    if values.next().is_some() {
        return Err(refused("send the header once"));
    }
    let text = value
        .to_str()
        .map_err(|_| refused("must be visible ASCII characters"))?;
    IdempotencyKey::parse(text)
        .map(Some)
        .map_err(|e| refused(&e.0))
}

/// The fingerprint of `route` with its JSON body: SHA-256 over the body in a canonical form,
/// so that neither key order nor white space make two equal requests differ.
pub fn fingerprint(route: &str, body: &Value) -> RequestFingerprint {
    let mut canonical = String::new();
    write_canonical(body, &mut canonical);
    RequestFingerprint::of(route, canonical.as_bytes())
}

/// Compact JSON with every object's keys sorted.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(fields) => {
            let mut keys: Vec<&String> = fields.keys().collect();
            keys.sort();
            out.push('{');
            for (n, key) in keys.into_iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&fields[key.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Whether the client asked not to wait: `Prefer: respond-async` among its preferences (any
/// `Prefer` header, any case, with or without other preferences and parameters).
pub fn prefers_async(req: &HttpRequest) -> bool {
    req.headers()
        .get_all("Prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|preference| {
            preference
                .split(';')
                .next()
                .is_some_and(|token| token.trim().eq_ignore_ascii_case("respond-async"))
        })
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn json(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn key_order_and_white_space_do_not_change_the_fingerprint() {
        let one = json(r#"{"name":"prod","control_plane_count":3,"security_group_ids":["a","b"]}"#);
        let same = json(
            "{ \"security_group_ids\" : [ \"a\", \"b\" ],\n  \"control_plane_count\": 3, \"name\": \"prod\" }",
        );
        assert_eq!(
            fingerprint("POST /clusters", &one),
            fingerprint("POST /clusters", &same)
        );
        for other in [
            r#"{"name":"prod","control_plane_count":5,"security_group_ids":["a","b"]}"#,
            r#"{"name":"prod","control_plane_count":3,"security_group_ids":["b","a"]}"#,
            r#"{"name":"prod","control_plane_count":3}"#,
        ] {
            assert_ne!(
                fingerprint("POST /clusters", &one),
                fingerprint("POST /clusters", &json(other)),
                "{other}"
            );
        }
        let mut canonical = String::new();
        write_canonical(
            &json(r#"{"b":{"d":[1,"x\"y"],"c":null},"a":true}"#),
            &mut canonical,
        );
        assert_eq!(canonical, r#"{"a":true,"b":{"c":null,"d":[1,"x\"y"]}}"#);
    }

    #[test]
    fn keys_are_read_from_one_header_of_visible_ascii() {
        let key = |values: &[&str]| {
            let mut req = TestRequest::default();
            for value in values {
                req = req.append_header((IDEMPOTENCY_KEY, *value));
            }
            idempotency_key(&req.to_http_request())
        };
        assert_eq!(key(&[]).unwrap(), None);
        assert_eq!(key(&["a-1"]).unwrap().unwrap().as_str(), "a-1");
        for bad in [vec![""], vec!["a b"], vec!["x"; 2], vec![&*"k".repeat(256)]] {
            let refused = key(&bad).unwrap_err();
            assert_eq!(refused.field, IDEMPOTENCY_KEY, "{bad:?}");
        }
    }

    #[test]
    fn respond_async_is_found_among_other_preferences() {
        let prefers = |values: &[&str]| {
            let mut req = TestRequest::default();
            for value in values {
                req = req.append_header(("Prefer", *value));
            }
            prefers_async(&req.to_http_request())
        };
        assert!(prefers(&["respond-async"]));
        assert!(prefers(&["return=minimal, Respond-Async; wait=10"]));
        assert!(prefers(&["wait=5", "respond-async"]));
        assert!(!prefers(&[]));
        assert!(!prefers(&["return=minimal"]));
        assert!(!prefers(&["respond-asynchronously"]));
    }
}
