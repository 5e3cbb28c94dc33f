//! `Observer`: what the operations report as they go, for metrics. Every method has a default
//! that does nothing, so a deployment (or a test) implements only what it counts.

use crate::model::OperationKind;
use crate::ports::operations::ResourceKind;

/// Receives counts of what the operations did. Calls are synchronous and must be cheap.
pub trait Observer: Send + Sync {
    /// An operation ended with `outcome`: `succeeded`, `interrupted`, or `failed_<step>`.
    fn operation_ended(&self, kind: OperationKind, outcome: &str) {
        let _ = (kind, outcome);
    }

    /// An operation of `kind` failed with a problem of `problem` kind (e.g.
    /// `compute-misconfigured`, which an operator must fix and wants to be alerted to).
    fn operation_failed(&self, kind: OperationKind, problem: &str) {
        let _ = (kind, problem);
    }

    /// How many foundings this replica runs now.
    fn foundings_in_flight(&self, count: usize) {
        let _ = count;
    }

    /// Recovery rolled back an operation of `kind` whose replica went away.
    fn operation_recovered(&self, kind: OperationKind) {
        let _ = kind;
    }

    /// The orphan sweep deleted a resource no cluster or operation owns.
    fn orphan_deleted(&self, kind: ResourceKind) {
        let _ = kind;
    }
}

/// An observer that counts nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unobserved;

impl Observer for Unobserved {}
