//! Process-wide counts of what this adapter does that an operator (or a test) must be able to
//! see from outside: private keys opened from their envelopes, and statements sent to
//! PostgreSQL (the pool's liveness probe aside). The service exports both as metrics; the bootstrap route's tests use them to
//! prove that a refused request opens no key and costs at most one query.

use std::sync::atomic::{AtomicU64, Ordering};

use diesel::connection::{Instrumentation, InstrumentationEvent};

static KEYS_OPENED: AtomicU64 = AtomicU64::new(0);
static QUERIES: AtomicU64 = AtomicU64::new(0);

/// How many sealed private keys this process has opened.
pub fn private_keys_opened() -> u64 {
    KEYS_OPENED.load(Ordering::Relaxed)
}

/// How many statements this process has sent to PostgreSQL on pooled connections.
pub fn queries_sent() -> u64 {
    QUERIES.load(Ordering::Relaxed)
}

pub(crate) fn key_opened() {
    KEYS_OPENED.fetch_add(1, Ordering::Relaxed);
}

/// How the pool's liveness probe of a connection it hands out reads (`SELECT 1`, bound).
const LIVENESS_PROBE: &str = "SELECT $1 -- binds: [1]";

/// Counts every statement a pooled connection starts, but the pool's liveness probe: it reads
/// nothing, and every borrowed connection gets one.
#[derive(Debug, Default)]
pub(crate) struct CountQueries;

impl Instrumentation for CountQueries {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        if let InstrumentationEvent::StartQuery { query, .. } = event
            && query.to_string() != LIVENESS_PROBE
        {
            QUERIES.fetch_add(1, Ordering::Relaxed);
        }
    }
}
