//! A finished exchange: its status, its (bounded) body, and the server's own words in it.

use std::fmt;

use reqwest::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The most of an answer's body plinth reads: 1 MiB. A larger body is a
/// [`TransportError::TooLarge`](crate::TransportError::TooLarge), never an unbounded buffer.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The most characters of a server's message plinth passes on.
const MESSAGE_CHARS: usize = 300;

/// An answer: its status and its whole body.
///
/// `Debug` shows the body's length only: an answer may carry secrets (a VM's userdata).
#[derive(Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The body, at most [`MAX_BODY_BYTES`].
    pub body: Vec<u8>,
}

/// The fields servers put their words in: an RFC 9457 problem's `detail` and `title`, and
/// PowerDNS's `error`.
#[derive(Deserialize)]
struct OwnWords {
    detail: Option<String>,
    title: Option<String>,
    error: Option<String>,
}

impl Answer {
    /// The server's own words, for an error message: a problem's `detail` (else its `title`),
    /// a PowerDNS `{"error": …}`, else the start of a text body, trimmed; the status when the
    /// body says nothing. At most 300 characters (a cut one ends with `…`).
    pub fn message(&self) -> String {
        let words = serde_json::from_slice::<OwnWords>(&self.body)
            .ok()
            .and_then(|w| {
                [w.detail, w.title, w.error]
                    .into_iter()
                    .flatten()
                    .find(|text| !text.trim().is_empty())
            });
        let text = match words {
            Some(words) => words,
            None => String::from_utf8_lossy(&self.body).into_owned(),
        };
        let text = text.trim();
        if text.is_empty() {
            return self.status.to_string();
        }
        let mut chars = text.chars();
        let mut cut: String = chars.by_ref().take(MESSAGE_CHARS).collect();
        if chars.next().is_some() {
            cut.push('…');
        }
        cut
    }

    /// The body as JSON.
    ///
    /// # Errors
    /// The body is not a `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish()
    }
}
