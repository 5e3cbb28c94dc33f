//! The page cursor of `GET /clusters`: where the next page starts, opaque to callers.
//!
//! A cursor is `base64url("v1:<created_at in unix nanoseconds>:<cluster id>")`, without padding.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use plinth_domain::model::ClusterId;
use plinth_domain::ports::repo::PageCursor;
use time::OffsetDateTime;

/// The text handed out as `next_cursor`.
pub fn encode(cursor: &PageCursor) -> String {
    let nanos = cursor.created_at.unix_timestamp_nanos();
    URL_SAFE_NO_PAD.encode(format!("v1:{nanos}:{}", cursor.id))
}

/// The cursor `text` stands for, if this API handed it out.
pub fn decode(text: &str) -> Option<PageCursor> {
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut parts = text.splitn(3, ':');
    let (Some("v1"), Some(nanos), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    Some(PageCursor {
        created_at: OffsetDateTime::from_unix_timestamp_nanos(nanos.parse().ok()?).ok()?,
        id: ClusterId::parse(id).ok()?,
    })
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
        assert_eq!(decode(&encode(&cursor)), Some(cursor));
        for garbage in [
            "",
            "abc",
            "djE6eDp5",
            &URL_SAFE_NO_PAD.encode("v2:1:00000000-0000-0000-0000-000000000000"),
        ] {
            assert_eq!(decode(garbage), None, "{garbage}");
        }
    }
}
