//! The ports: what the use cases need from the outside world, as small traits with their own
//! error enums. Adapter crates implement them; with the `mocks` feature each has a mockall double
//! (`MockRepo`, `MockOperations`, `MockCompute`, `MockDns`, `MockPki`).
//!
//! Port errors are `#[non_exhaustive]` and keep their cause as the error `source`: the variant
//! says what the use case must decide on, the cause says what happened, for the log. Log an error
//! with [`Chain`] to print both.

use std::error::Error;
use std::fmt;

pub mod compute;
pub mod dns;
pub mod observer;
pub mod operations;
pub mod pki;
pub mod repo;

/// The cause an adapter attaches to a port error: a library error, or a message of its own
/// (`"…".into()`).
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// A cause with a note of what was being done, for an adapter to attach to a port error:
/// `RepoError::Unavailable(context("reading the cluster", e))`.
pub fn context(doing: impl Into<String>, source: impl Into<BoxError>) -> BoxError {
    Box::new(Context {
        doing: doing.into(),
        source: source.into(),
    })
}

#[derive(Debug, thiserror::Error)]
#[error("{doing}")]
struct Context {
    doing: String,
    #[source]
    source: BoxError,
}

/// Displays an error and every source under it, `outer: inner: innermost`, for logs.
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] BoxError);

    #[test]
    fn a_chain_shows_every_cause_once() {
        let e = Outer("middle".into());
        assert_eq!(Chain(&e).to_string(), "outer: middle");
        let e = Outer(context("reading", "refused"));
        assert_eq!(Chain(&e).to_string(), "outer: reading: refused");
    }
}
