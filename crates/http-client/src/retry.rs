//! How often and how patiently a call is repeated.

use std::time::Duration;

use reqwest::StatusCode;

/// The attempts of a call and the pauses between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts, the first included; 0 counts as 1.
    pub max_attempts: u32,
    /// The first backoff cap; it doubles with each attempt.
    pub backoff_base: Duration,
    /// The largest backoff cap.
    pub backoff_max: Duration,
}

impl RetryPolicy {
    /// A single attempt, for calls that must not be repeated (their outcome is unknown after a
    /// failure, and a repeat could do the work twice).
    pub const ONCE: Self = Self {
        max_attempts: 1,
        backoff_base: Duration::ZERO,
        backoff_max: Duration::ZERO,
    };

    /// The number of attempts, at least 1.
    pub fn attempts(&self) -> u32 {
        self.max_attempts.max(1)
    }

    /// The pause after failed attempt `attempt` (1-based), with full jitter: a random wait
    /// between 0 and `backoff_base × 2^(attempt−1)`, capped at `backoff_max`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .backoff_base
            .saturating_mul(1 << attempt.saturating_sub(1).min(16))
            .min(self.backoff_max);
        let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::random_range(0..=cap_ms))
    }
}

/// Whether an answer with `status` is worth another attempt: 429 and 5xx.
pub fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}
