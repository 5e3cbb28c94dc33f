//! Observability: request ids, structured logs, and Prometheus metrics — request counts and
//! latencies by route and status, founding step durations (from the domain's `founding_step`
//! spans), founding outcomes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix_web::HttpMessage as _;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument as _;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::settings::LogFormat;

/// Upper bounds of the latency histograms, in seconds.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, count) in BUCKETS.iter().zip(self.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in BUCKETS.iter().zip(self.counts.iter()) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct Registry {
    requests: BTreeMap<(String, String, u16), u64>,
    latencies: BTreeMap<(String, String), Histogram>,
    steps: BTreeMap<String, Histogram>,
    outcomes: BTreeMap<String, u64>,
}

/// The process's metrics (one registry: tracing's subscriber is process-wide too).
#[derive(Debug, Default)]
pub struct Metrics {
    registry: Mutex<Registry>,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one answered request.
    pub fn request(&self, route: &str, method: &str, status: u16, took: Duration) {
        let mut r = self.lock();
        *r.requests
            .entry((route.to_owned(), method.to_owned(), status))
            .or_default() += 1;
        r.latencies
            .entry((route.to_owned(), method.to_owned()))
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// Records one founding step's duration.
    pub fn step(&self, step: &str, took: Duration) {
        self.lock()
            .steps
            .entry(step.to_owned())
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// Counts one founding's outcome, e.g. `created`, `invalid`, `failed_create_vms`.
    pub fn outcome(&self, outcome: &str) {
        *self.lock().outcomes.entry(outcome.to_owned()).or_default() += 1;
    }

    /// Prometheus text exposition (version 0.0.4).
    pub fn render(&self) -> String {
        let r = self.lock();
        let mut out = String::new();
        out.push_str("# HELP plinth_http_requests_total HTTP requests answered, by route, method and status.\n");
        out.push_str("# TYPE plinth_http_requests_total counter\n");
        for ((route, method, status), count) in &r.requests {
            let _ = writeln!(
                out,
                "plinth_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {count}"
            );
        }
        out.push_str("# HELP plinth_http_request_duration_seconds Time to answer a request, by route and method.\n");
        out.push_str("# TYPE plinth_http_request_duration_seconds histogram\n");
        for ((route, method), histogram) in &r.latencies {
            histogram.render(
                &mut out,
                "plinth_http_request_duration_seconds",
                &format!("route=\"{route}\",method=\"{method}\""),
            );
        }
        out.push_str(
            "# HELP plinth_founding_step_duration_seconds Time spent in each founding step.\n",
        );
        out.push_str("# TYPE plinth_founding_step_duration_seconds histogram\n");
        for (step, histogram) in &r.steps {
            histogram.render(
                &mut out,
                "plinth_founding_step_duration_seconds",
                &format!("step=\"{step}\""),
            );
        }
        out.push_str("# HELP plinth_foundings_total Foundings by outcome.\n");
        out.push_str("# TYPE plinth_foundings_total counter\n");
        for (outcome, count) in &r.outcomes {
            let _ = writeln!(
                out,
                "plinth_foundings_total{{outcome=\"{outcome}\"}} {count}"
            );
        }
        out
    }
}

/// Times the domain's `founding_step` spans into [`Metrics::step`].
struct StepTimer;

struct StepStart {
    step: String,
    started: Instant,
}

#[derive(Default)]
struct StepField(Option<String>);

impl Visit for StepField {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "step" {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "step" {
            self.0 = Some(format!("{value:?}").trim_matches('"').to_owned());
        }
    }
}

impl<S> Layer<S> for StepTimer
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "founding_step" {
            return;
        }
        let mut field = StepField::default();
        attrs.record(&mut field);
        if let (Some(step), Some(span)) = (field.0, ctx.span(id)) {
            span.extensions_mut().insert(StepStart {
                step,
                started: Instant::now(),
            });
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id)
            && let Some(start) = span.extensions().get::<StepStart>()
        {
            metrics().step(&start.step, start.started.elapsed());
        }
    }
}

/// Installs the process's subscriber: logs (text or JSON, with span context) and the step
/// timer. Later calls (tests starting several servers) keep the first subscriber.
pub fn init(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(StepTimer);
    let _ = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_filter(filter),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
                    .with_filter(filter),
            )
            .try_init(),
    };
}

/// The request's id: the caller's `X-Request-Id` when it is sane, else a fresh UUID.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn request_id(req: &ServiceRequest) -> String {
    req.headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// Middleware: gives every request an id (in and out), a span, and a line in the metrics.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let id = request_id(&req);
    req.extensions_mut().insert(RequestId(id.clone()));
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().to_string();
    let span = tracing::info_span!("request", request_id = %id, method = %method, route = %route);
    let started = Instant::now();
    let result = next.call(req).instrument(span.clone()).await;
    let took = started.elapsed();
    match result {
        Ok(mut response) => {
            let status = response.status().as_u16();
            if let Ok(value) = HeaderValue::from_str(&id) {
                response.headers_mut().insert(REQUEST_ID, value);
            }
            metrics().request(&route, &method, status, took);
            span.in_scope(|| {
                tracing::info!(
                    status,
                    took_ms = took.as_millis() as u64,
                    "request answered"
                )
            });
            Ok(response)
        }
        Err(e) => {
            let status = e.as_response_error().status_code().as_u16();
            metrics().request(&route, &method, status, took);
            Err(e)
        }
    }
}
