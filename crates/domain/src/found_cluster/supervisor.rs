//! `Foundings`: runs each founding as a task of its own, so that a request that goes away (a
//! client that hangs up, a proxy's idle timeout) does not stop it halfway; bounds how many run
//! at once on this replica; and lets shutdown wait for those in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::{FoundCluster, FoundClusterError, FoundedCluster, FoundingSettings};
use crate::model::{ClusterSpec, OrgId};

/// Why a founding was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// As many foundings as allowed run on this replica; try again shortly.
    #[error("this replica runs as many foundings as it may; try again shortly")]
    Busy,
    /// The replica is shutting down.
    #[error("this replica is shutting down")]
    ShuttingDown,
}

/// The foundings of this replica.
#[derive(Debug, Clone)]
pub struct Foundings {
    found: Arc<FoundCluster>,
    slots: Arc<Semaphore>,
    capacity: usize,
    accepting: Arc<AtomicBool>,
}

/// Held by a running founding; reports the count when it ends.
struct Slot {
    _permit: OwnedSemaphorePermit,
    foundings: Foundings,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The permit goes back after this body; count it as back already.
        let running = self.foundings.in_flight().saturating_sub(1);
        self.foundings
            .found
            .ports
            .observer
            .foundings_in_flight(running);
    }
}

impl Foundings {
    /// Runs `found`'s foundings, at most `settings.max_in_flight` at once.
    pub fn new(found: FoundCluster) -> Self {
        let capacity = found.settings().max_in_flight.max(1);
        Self {
            found: Arc::new(found),
            slots: Arc::new(Semaphore::new(capacity)),
            capacity,
            accepting: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The founding settings in use.
    pub fn settings(&self) -> &FoundingSettings {
        self.found.settings()
    }

    /// How many foundings run now.
    pub fn in_flight(&self) -> usize {
        self.capacity - self.slots.available_permits()
    }

    /// Starts a founding. It runs to its end whatever becomes of the returned handle: dropping
    /// the handle detaches it, and awaiting it gives the outcome.
    ///
    /// # Errors
    /// `Busy` when `max_in_flight` foundings run, `ShuttingDown` after [`Foundings::drain`].
    pub fn submit(
        &self,
        org: OrgId,
        spec: ClusterSpec,
    ) -> Result<JoinHandle<Result<FoundedCluster, FoundClusterError>>, SubmitError> {
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        let permit = Arc::clone(&self.slots)
            .try_acquire_owned()
            .map_err(|_| SubmitError::Busy)?;
        let slot = Slot {
            _permit: permit,
            foundings: self.clone(),
        };
        self.found
            .ports
            .observer
            .foundings_in_flight(self.in_flight());
        let found = Arc::clone(&self.found);
        Ok(tokio::spawn(async move {
            let _slot = slot;
            found.found(&org, spec).await
        }))
    }

    /// Stops taking foundings and waits up to `limit` for those in flight; returns how many
    /// still run (their leases expire and recovery rolls them back).
    pub async fn drain(&self, limit: Duration) -> usize {
        self.accepting.store(false, Ordering::SeqCst);
        let all = u32::try_from(self.capacity).unwrap_or(u32::MAX);
        match tokio::time::timeout(limit, self.slots.acquire_many(all)).await {
            Ok(Ok(permits)) => {
                drop(permits);
                0
            }
            _ => self.in_flight(),
        }
    }
}
