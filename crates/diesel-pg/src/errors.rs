//! Library errors mapped into the port's `RepoError`, in one place.

use diesel::result::{DatabaseErrorKind, Error};
use plinth_domain::ports::context;
use plinth_domain::ports::repo::RepoError;

/// The unique constraint that makes a cluster name unique within its organization.
pub(crate) const ORG_NAME_CONSTRAINT: &str = "kubeclusters_org_name_key";

/// The primary key that keeps one idempotency key per organization.
pub(crate) const IDEMPOTENCY_KEY_CONSTRAINT: &str = "client_idempotency_keys_pkey";

/// Maps a query error; `doing` says what the query was for.
pub(crate) fn query_error(e: Error, doing: &str) -> RepoError {
    match &e {
        Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info)
            if info.constraint_name() == Some(ORG_NAME_CONSTRAINT) =>
        {
            RepoError::Conflict(
                "a cluster with this name already exists in the organization".into(),
            )
        }
        Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info)
            if info.constraint_name() == Some(IDEMPOTENCY_KEY_CONSTRAINT) =>
        {
            RepoError::IdempotencyKeyTaken
        }
        Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
            RepoError::Conflict(format!("{doing}: {}", info.message()))
        }
        Error::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, info) => {
            RepoError::NotFound(format!("{doing}: {}", info.message()))
        }
        Error::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _,
        )
        | Error::BrokenTransactionManager => RepoError::Unavailable(context(doing, e)),
        // The server going away mid-session (SQLSTATE class 57), or ending a statement at one
        // of its bounds (statement_timeout, lock_timeout), arrives without a kind.
        Error::DatabaseError(_, info) if is_shutdown(info.message()) => {
            RepoError::Unavailable(context(doing, e))
        }
        Error::DatabaseError(_, info) if is_cancelled(info.message()) => {
            RepoError::Unavailable(context(doing, e))
        }
        Error::NotFound => RepoError::NotFound(doing.to_owned()),
        _ => RepoError::Unexpected(context(doing, e)),
    }
}

fn is_shutdown(message: &str) -> bool {
    [
        "terminating connection",
        "shutting down",
        "starting up",
        "in recovery mode",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// A statement the server cancelled: past `statement_timeout` (57014), after waiting
/// `lock_timeout` for a lock (55P03), or on an administrator's request. The database did not
/// answer in time; the transaction, if any, was rolled back.
fn is_cancelled(message: &str) -> bool {
    ["canceling statement due to", "could not obtain lock"]
        .iter()
        .any(|m| message.contains(m))
}

/// Maps a failure to get a pooled connection.
pub(crate) fn pool_error(
    e: diesel_async::pooled_connection::deadpool::PoolError,
    doing: &str,
) -> RepoError {
    RepoError::Unavailable(context(format!("{doing}: no database connection"), e))
}

/// A database call that did not finish within its bound.
pub(crate) fn timed_out(doing: &str) -> RepoError {
    RepoError::Unavailable(format!("{doing}: the database did not answer in time").into())
}
