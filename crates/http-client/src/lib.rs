//! The outbound HTTP plumbing plinth's HTTP adapters share (`plinth-http-compute`,
//! `plinth-http-dns`): a reqwest client with plinth's defaults, one [`HttpClient::send`] that
//! repeats a call on transport failures, 429 and 5xx with jittered backoff while its
//! [`RetryPolicy`] allows, the bounded reading of an [`Answer`] and of the server's own words in
//! it, and a [`TransportError`] that says whether the service timed out, could not be reached, or
//! failed otherwise.
//!
//! What stays in each adapter is what its port decides: which calls are safe to repeat (it
//! passes [`RetryPolicy::ONCE`] for the others), the credentials it sets, and how a status or a
//! `TransportError` maps to its port's error.
//!
//! Credentials travel in headers (a bearer token, an `X-API-Key`), so nothing here logs headers
//! or bodies, and redirects are never followed: a `3xx` is returned as an answer, and a
//! credential never reaches a host the adapter was not configured with.

mod answer;
mod retry;

#[cfg(test)]
mod tests;

use std::time::Duration;

use plinth_domain::ports::Chain;
use reqwest::{Method, RequestBuilder, Response};

pub use answer::{Answer, MAX_BODY_BYTES};
pub use retry::{RetryPolicy, is_retryable};

/// The `User-Agent` of every call plinth makes.
pub const USER_AGENT: &str = concat!("plinth/", env!("CARGO_PKG_VERSION"));

/// The bounds of every call of one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Opening a connection.
    pub connect: Duration,
    /// One attempt, start to end, the answer's body included.
    pub request: Duration,
}

/// A call that got no usable answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// No connection or no complete answer within the bound (the connect or the request
    /// timeout).
    #[error("no answer within {bound:?}")]
    Timeout {
        /// The bound that ran out.
        bound: Duration,
        /// reqwest's error.
        #[source]
        source: reqwest::Error,
    },
    /// The service could not be reached, or the exchange broke off while the request was sent
    /// or the answer read.
    #[error(transparent)]
    Unavailable(reqwest::Error),
    /// The answer's body was larger than [`MAX_BODY_BYTES`]; it was not read further.
    #[error("the answer's body is larger than {limit} bytes")]
    TooLarge {
        /// The cap.
        limit: usize,
    },
    /// Anything else reqwest reports, e.g. a URL it cannot use or a body it cannot encode.
    #[error(transparent)]
    Other(reqwest::Error),
}

impl TransportError {
    /// Whether trying again may help: timeouts and unreachable services, not the rest.
    fn is_retryable(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::Unavailable(_))
    }
}

/// One service plinth calls: a reqwest client (rustls, connect and request timeouts, plinth's
/// user agent, no redirects), the service's base URL, and its name for the logs.
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    service: &'static str,
    base_url: String,
    timeouts: Timeouts,
}

impl HttpClient {
    /// A client of `service` (its name in logs, e.g. `"compute"`) at `base_url`, which every
    /// path is appended to (a trailing `/` is dropped).
    ///
    /// # Errors
    /// reqwest cannot build the client (its TLS backend fails to initialise).
    pub fn new(
        service: &'static str,
        base_url: &str,
        timeouts: Timeouts,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.request)
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            client,
            service,
            base_url: base_url.trim_end_matches('/').to_owned(),
            timeouts,
        })
    }

    /// The base URL, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The bounds of each attempt.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Sends `method` to the base URL + `path`, and returns the answer of the last attempt.
    ///
    /// `build` completes the request (credentials, body, other headers); it is called again for
    /// every attempt, so each one is sent whole. While `retry` allows another attempt, a
    /// transport failure, a timeout, 429 or 5xx is logged (method, path, attempt, and the status
    /// or the error; never headers or bodies) and the call is repeated after a jittered backoff.
    /// Any other status is an answer, which the caller maps.
    ///
    /// # Errors
    /// The last attempt got no usable answer.
    pub async fn send<F>(
        &self,
        retry: RetryPolicy,
        method: Method,
        path: &str,
        mut build: F,
    ) -> Result<Answer, TransportError>
    where
        F: FnMut(RequestBuilder) -> RequestBuilder,
    {
        let url = format!("{}{path}", self.base_url);
        let attempts = retry.attempts();
        let mut attempt = 1;
        loop {
            let request = build(self.client.request(method.clone(), &url));
            let outcome = self.exchange(request).await;
            let again = attempt < attempts
                && match &outcome {
                    Ok(answer) => is_retryable(answer.status),
                    Err(e) => e.is_retryable(),
                };
            if !again {
                return outcome;
            }
            match &outcome {
                Ok(answer) => tracing::warn!(
                    service = self.service,
                    %method,
                    path,
                    attempt,
                    attempts,
                    status = %answer.status,
                    "{} call failed; retrying",
                    self.service
                ),
                Err(e) => tracing::warn!(
                    service = self.service,
                    %method,
                    path,
                    attempt,
                    attempts,
                    error = %Chain(e),
                    "{} call failed; retrying",
                    self.service
                ),
            }
            tokio::time::sleep(retry.backoff(attempt)).await;
            attempt += 1;
        }
    }

    /// One attempt: the request, then its answer's body, at most [`MAX_BODY_BYTES`] of it.
    async fn exchange(&self, request: RequestBuilder) -> Result<Answer, TransportError> {
        let mut response = request.send().await.map_err(|e| self.classify(e, false))?;
        let status = response.status();
        let body = read_body(&mut response, MAX_BODY_BYTES)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge => TransportError::TooLarge {
                    limit: MAX_BODY_BYTES,
                },
                BodyError::Read(e) => self.classify(e.with_url(response.url().clone()), true),
            })?;
        Ok(Answer { status, body })
    }

    fn classify(&self, e: reqwest::Error, reading_body: bool) -> TransportError {
        if e.is_timeout() {
            let bound = if e.is_connect() {
                self.timeouts.connect
            } else {
                self.timeouts.request
            };
            TransportError::Timeout { bound, source: e }
        } else if reading_body || e.is_connect() || e.is_request() || e.is_body() {
            TransportError::Unavailable(e)
        } else {
            TransportError::Other(e)
        }
    }
}

enum BodyError {
    TooLarge,
    Read(reqwest::Error),
}

/// The body, refused as soon as it is known to exceed `limit` bytes.
async fn read_body(response: &mut Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    let announced = response.content_length().unwrap_or(0);
    if usize::try_from(announced).map_or(true, |n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Read)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
