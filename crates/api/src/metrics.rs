//! The process's Prometheus metrics: request counts and latencies by route, method and status,
//! founding step durations (from the domain's `founding_step` spans), founding outcomes, and what
//! the operations report through the domain's `Observer` port (operations by kind and outcome,
//! foundings in flight, recoveries, orphans deleted). Served by `GET /metrics` in the Prometheus
//! text format (version 0.0.4).

use std::sync::OnceLock;
use std::time::Duration;

use plinth_domain::model::OperationKind;
use plinth_domain::ports::observer::Observer;
use plinth_domain::ports::operations::ResourceKind;
use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

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
    operations: IntCounterVec,
    recoveries: IntCounterVec,
    orphans: IntCounterVec,
    bootstrap_fetches: IntCounterVec,
    failures: IntCounterVec,
    in_flight: IntGauge,
    /// The storage adapter's own counts, copied in at each scrape.
    keys_opened: IntCounter,
    queries: IntCounter,
    /// The PKI adapter's key pools, copied in at each scrape: misses and keys held.
    sa_pool_misses: IntCounter,
    sa_pool_keys: IntGauge,
    cert_pool_misses: IntCounter,
    cert_pool_keys: IntGauge,
    /// Which pools those are (the ones the running service made).
    key_pools: std::sync::Mutex<plinth_x509_pki::KeyPoolsWatch>,
    /// Scrapes copy those in one at a time, so two at once never add a difference twice.
    copying: std::sync::Mutex<()>,
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
        let operations = IntCounterVec::new(
            Opts::new(
                "plinth_operations_total",
                "Operations ended, by kind and outcome (succeeded, interrupted, failed_<step>).",
            ),
            &["kind", "outcome"],
        );
        let recoveries = IntCounterVec::new(
            Opts::new(
                "plinth_operation_recoveries_total",
                "Abandoned operations this replica took over and rolled back, by kind.",
            ),
            &["kind"],
        );
        let orphans = IntCounterVec::new(
            Opts::new(
                "plinth_orphans_deleted_total",
                "Untracked platform resources the orphan sweep deleted, by kind.",
            ),
            &["kind"],
        );
        let bootstrap_fetches = IntCounterVec::new(
            Opts::new(
                "plinth_bootstrap_fetches_total",
                "Bootstrap bundle fetches, by outcome: ok, refused (no such node, a wrong or \
                 expired token), burned (a genuine token past its reuse window), error.",
            ),
            &["outcome"],
        );
        let failures = IntCounterVec::new(
            Opts::new(
                "plinth_operation_failures_total",
                "Failed operations, by kind and problem kind (alert on \
                 kind=\"compute-misconfigured\": the deployment needs fixing).",
            ),
            &["operation", "kind"],
        );
        let keys_opened = IntCounter::new(
            "plinth_private_keys_opened_total",
            "Sealed private keys this process opened (a refused bootstrap fetch opens none).",
        );
        let queries = IntCounter::new(
            "plinth_database_queries_total",
            "Statements this process sent to PostgreSQL.",
        );
        let in_flight = IntGauge::new(
            "plinth_foundings_in_flight",
            "Foundings this replica runs now.",
        );
        let sa_pool_misses = IntCounter::new(
            "plinth_sa_key_pool_misses_total",
            "Service-account keys asked of an empty pool, and generated on the request's path.",
        );
        let sa_pool_keys = IntGauge::new(
            "plinth_sa_key_pool_keys",
            "Service-account keys made ahead of demand and waiting (pki.service_account_key_pool_size at most).",
        );
        let cert_pool_misses = IntCounter::new(
            "plinth_cert_key_pool_misses_total",
            "RSA certificate keys asked of an empty pool, and generated on the request's path.",
        );
        let cert_pool_keys = IntGauge::new(
            "plinth_cert_key_pool_keys",
            "RSA certificate keys made ahead of demand and waiting (pki.key_pool_size at most).",
        );
        // The names and label sets above are fixed and valid, and each is registered once.
        let (
            Ok(requests),
            Ok(latencies),
            Ok(steps),
            Ok(outcomes),
            Ok(operations),
            Ok(recoveries),
            Ok(orphans),
            Ok(bootstrap_fetches),
            Ok(failures),
            Ok(in_flight),
            Ok(keys_opened),
            Ok(queries),
            Ok(sa_pool_misses),
            Ok(sa_pool_keys),
            Ok(cert_pool_misses),
            Ok(cert_pool_keys),
        ) = (
            requests,
            latencies,
            steps,
            outcomes,
            operations,
            recoveries,
            orphans,
            bootstrap_fetches,
            failures,
            in_flight,
            keys_opened,
            queries,
            sa_pool_misses,
            sa_pool_keys,
            cert_pool_misses,
            cert_pool_keys,
        )
        else {
            unreachable!("the metric definitions are constant and valid")
        };
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latencies.clone()),
            Box::new(steps.clone()),
            Box::new(outcomes.clone()),
            Box::new(operations.clone()),
            Box::new(recoveries.clone()),
            Box::new(orphans.clone()),
            Box::new(bootstrap_fetches.clone()),
            Box::new(failures.clone()),
            Box::new(in_flight.clone()),
            Box::new(keys_opened.clone()),
            Box::new(queries.clone()),
            Box::new(sa_pool_misses.clone()),
            Box::new(sa_pool_keys.clone()),
            Box::new(cert_pool_misses.clone()),
            Box::new(cert_pool_keys.clone()),
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
            operations,
            recoveries,
            orphans,
            bootstrap_fetches,
            failures,
            in_flight,
            keys_opened,
            queries,
            sa_pool_misses,
            sa_pool_keys,
            cert_pool_misses,
            cert_pool_keys,
            key_pools: std::sync::Mutex::default(),
            copying: std::sync::Mutex::default(),
        }
    }

    /// Counts one bootstrap bundle fetch by its outcome.
    pub fn bootstrap_fetch(&self, outcome: &str) {
        self.bootstrap_fetches.with_label_values(&[outcome]).inc();
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

    /// The metrics as the domain's observer: what the operations report goes here.
    pub fn observer() -> std::sync::Arc<dyn Observer> {
        std::sync::Arc::new(MetricsObserver)
    }

    /// Reports on these key pools from now on (the running service's; the last one set wins).
    pub fn watch_key_pools(&self, pools: plinth_x509_pki::KeyPoolsWatch) {
        *self.key_pools.lock().unwrap_or_else(|e| e.into_inner()) = pools;
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let copying = self.copying.lock().unwrap_or_else(|e| e.into_inner());
        let pools = self
            .key_pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (sa, cert) = (pools.service_account(), pools.certificates());
        for (counter, now) in [
            (&self.keys_opened, plinth_diesel_pg::private_keys_opened()),
            (&self.queries, plinth_diesel_pg::queries_sent()),
            (&self.sa_pool_misses, sa.map_or(0, |p| p.misses)),
            (&self.cert_pool_misses, cert.map_or(0, |p| p.misses)),
        ] {
            counter.inc_by(now.saturating_sub(counter.get()));
        }
        for (gauge, now) in [(&self.sa_pool_keys, sa), (&self.cert_pool_keys, cert)] {
            gauge.set(now.map_or(0, |p| i64::try_from(p.available).unwrap_or(i64::MAX)));
        }
        drop(copying);
        let mut out = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding the metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The domain's `Observer`, counting into the process's metrics.
#[derive(Debug, Clone, Copy)]
struct MetricsObserver;

impl Observer for MetricsObserver {
    fn operation_ended(&self, kind: OperationKind, outcome: &str) {
        let m = metrics();
        m.operations
            .with_label_values(&[kind.as_str(), outcome])
            .inc();
        if kind == OperationKind::Found {
            // plinth_foundings_total predates operations and says `created` for a success.
            let outcome = if outcome == "succeeded" {
                "created"
            } else {
                outcome
            };
            m.outcome(outcome);
        }
    }

    fn operation_failed(&self, kind: OperationKind, problem: &str) {
        metrics()
            .failures
            .with_label_values(&[kind.as_str(), problem])
            .inc();
    }

    fn foundings_in_flight(&self, count: usize) {
        metrics()
            .in_flight
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    fn operation_recovered(&self, kind: OperationKind) {
        metrics()
            .recoveries
            .with_label_values(&[kind.as_str()])
            .inc();
    }

    fn orphan_deleted(&self, kind: ResourceKind) {
        metrics().orphans.with_label_values(&[kind.as_str()]).inc();
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
