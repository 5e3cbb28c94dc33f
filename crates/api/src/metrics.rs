//! The process's Prometheus metrics: request counts and latencies by route, method and status,
//! founding step durations (from the domain's `founding_step` spans) and founding outcomes.
//! Served by `GET /metrics` in the Prometheus text format (version 0.0.4).

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the latency histograms, in seconds.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The methods a request is counted under; anything else is `other`, so a client cannot grow
/// the label set.
const KNOWN_METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// plinth's metrics, in one registry (the tracing subscriber that feeds step timings is
/// process-wide too).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latencies: HistogramVec,
    steps: HistogramVec,
    outcomes: IntCounterVec,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "plinth_http_requests_total",
                "HTTP requests answered, by route, method and status.",
            ),
            &["route", "method", "status"],
        );
        let latencies = HistogramVec::new(
            HistogramOpts::new(
                "plinth_http_request_duration_seconds",
                "Time to answer a request, by route and method.",
            )
            .buckets(BUCKETS.to_vec()),
            &["route", "method"],
        );
        let steps = HistogramVec::new(
            HistogramOpts::new(
                "plinth_founding_step_duration_seconds",
                "Time spent in each founding step.",
            )
            .buckets(BUCKETS.to_vec()),
            &["step"],
        );
        let outcomes = IntCounterVec::new(
            Opts::new("plinth_foundings_total", "Foundings by outcome."),
            &["outcome"],
        );
        // The names and label sets above are fixed and valid, and each is registered once.
        let (Ok(requests), Ok(latencies), Ok(steps), Ok(outcomes)) =
            (requests, latencies, steps, outcomes)
        else {
            unreachable!("the metric definitions are constant and valid")
        };
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latencies.clone()),
            Box::new(steps.clone()),
            Box::new(outcomes.clone()),
        ] {
            if let Err(e) = registry.register(collector) {
                tracing::error!(error = %e, "registering a metric failed");
            }
        }
        Self {
            registry,
            requests,
            latencies,
            steps,
            outcomes,
        }
    }

    /// Counts one answered request.
    pub fn request(&self, route: &str, method: &str, status: u16, took: Duration) {
        let method = KNOWN_METHODS
            .iter()
            .find(|known| known.eq_ignore_ascii_case(method))
            .copied()
            .unwrap_or("other");
        self.requests
            .with_label_values(&[route, method, &status.to_string()])
            .inc();
        self.latencies
            .with_label_values(&[route, method])
            .observe(took.as_secs_f64());
    }

    /// Records one founding step's duration.
    pub fn step(&self, step: &str, took: Duration) {
        self.steps
            .with_label_values(&[step])
            .observe(took.as_secs_f64());
    }

    /// Counts one founding's outcome, e.g. `created`, `invalid`, `failed_create_vms`.
    pub fn outcome(&self, outcome: &str) {
        self.outcomes.with_label_values(&[outcome]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding the metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_one_label() {
        let m = Metrics::new();
        m.request("/clusters", "BREW", 405, Duration::from_millis(1));
        m.request("/clusters", "get", 200, Duration::from_millis(1));
        let text = m.render();
        assert!(
            text.contains(
                r#"plinth_http_requests_total{method="other",route="/clusters",status="405"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"method="GET""#), "{text}");
        assert!(!text.contains("BREW"), "{text}");
    }
}
