//! `Foundings`: runs each founding as a task of its own, so that a request that goes away (a
//! client that hangs up, a proxy's idle timeout) does not stop it halfway; bounds how many run
//! at once on this replica; lets shutdown wait for those in flight; and answers a retried
//! request (same idempotency key) from the founding its key stands for.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::task::JoinHandle;

use super::replay::{Replay, ReplayError};
use super::{FoundCluster, FoundClusterError, FoundedCluster, FoundingRequest, FoundingSettings};
use crate::model::{ClusterId, ClusterSpec, Idempotency, OperationId, OrgId};
use crate::ports::operations::IdempotencyClaim;
use crate::ports::repo::RepoError;
use crate::settings::SettingsError;

/// Why a founding was not started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// As many foundings as allowed run on this replica; try again shortly.
    #[error("this replica runs as many foundings as it may; try again shortly")]
    Busy,
    /// The replica is shutting down.
    #[error("this replica is shutting down")]
    ShuttingDown,
    /// The founding could not claim its name (taken, or the database failed).
    #[error(transparent)]
    Claim(FoundClusterError),
    /// Looking up the idempotency key failed.
    #[error("reading the idempotency key failed")]
    Lookup(#[source] RepoError),
    /// The request's idempotency key cannot be answered from its first use.
    #[error(transparent)]
    Replay(ReplayError),
    /// The founding's task ended without an outcome (it panicked).
    #[error("the founding's task ended without an outcome")]
    Lost,
}

/// What became of a submitted founding request.
#[derive(Debug)]
pub enum Submitted {
    /// A new founding claimed its name and runs.
    Started(Started),
    /// The request's idempotency key stands for a founding that already started.
    Replayed(Replay),
}

/// A founding that claimed its name and runs as a task of its own.
#[derive(Debug)]
pub struct Started {
    /// Its operation.
    pub operation: OperationId,
    /// Its cluster.
    pub cluster: ClusterId,
    /// Its outcome. Dropping the handle detaches the founding; it runs to its end anyway.
    pub outcome: JoinHandle<Result<FoundedCluster, FoundClusterError>>,
}

/// How long a replica keeps an organization's idempotency keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencySettings {
    /// How long a key is kept after its first use.
    pub retention: Duration,
}

/// `[idempotency]` as configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencySection {
    /// How long a key is kept after its first use, hours.
    pub retention_hours: u64,
}

impl IdempotencySection {
    /// The longest retention, hours (30 days).
    pub const MAX_RETENTION_HOURS: u64 = 720;

    /// The checked settings; errors name their key within the section.
    ///
    /// # Errors
    /// A retention of 0 or beyond [`Self::MAX_RETENTION_HOURS`].
    pub fn settings(&self) -> Result<IdempotencySettings, SettingsError> {
        if !(1..=Self::MAX_RETENTION_HOURS).contains(&self.retention_hours) {
            return Err(SettingsError::new(
                "retention_hours",
                format!("must be from 1 to {}", Self::MAX_RETENTION_HOURS),
            ));
        }
        Ok(IdempotencySettings {
            retention: Duration::from_secs(self.retention_hours * 3600),
        })
    }
}

/// The foundings of this replica.
#[derive(Debug, Clone)]
pub struct Foundings {
    found: Arc<FoundCluster>,
    idempotency: IdempotencySettings,
    slots: Arc<Semaphore>,
    capacity: usize,
    accepting: Arc<AtomicBool>,
}

/// One of a replica's slots for a running operation; reports the count when it is given back.
#[derive(Debug)]
pub struct Slot {
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
    pub fn new(found: FoundCluster, idempotency: IdempotencySettings) -> Self {
        let capacity = found.settings().max_in_flight.max(1);
        Self {
            found: Arc::new(found),
            idempotency,
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

    /// Starts a founding of `spec` for `org` and returns once it has claimed its name; it then
    /// runs to its end whatever becomes of the caller. With `idempotency`, a key the
    /// organization used before (and has not expired) answers from that first founding instead.
    ///
    /// # Errors
    /// `Busy` when `max_in_flight` foundings run, `ShuttingDown` after [`Foundings::drain`],
    /// `Claim` when the founding could not claim its name, `Lookup` or `Replay` when a key
    /// cannot be answered.
    pub async fn submit(
        &self,
        org: OrgId,
        spec: ClusterSpec,
        idempotency: Option<Idempotency>,
    ) -> Result<Submitted, SubmitError> {
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        if let Some(replay) = self.replay(&org, idempotency.as_ref()).await? {
            return Ok(Submitted::Replayed(replay));
        }
        let slot = self.slot()?;
        let request = FoundingRequest {
            org: org.clone(),
            spec,
            idempotency: idempotency.clone().map(|idempotency| IdempotencyClaim {
                idempotency,
                retain_for: self.idempotency.retention,
            }),
        };
        // The task claims the name, says so, and goes on; the claim's error, if any, is the
        // task's outcome.
        let (claimed_tx, claimed_rx) = oneshot::channel();
        let found = Arc::clone(&self.found);
        let outcome = self.spawn(slot, async move {
            let claimed = found.claim(request).await?;
            let _ = claimed_tx.send((claimed.operation_id(), claimed.cluster_id()));
            found.complete(claimed).await
        });
        if let Ok((operation, cluster)) = claimed_rx.await {
            return Ok(Submitted::Started(Started {
                operation,
                cluster,
                outcome,
            }));
        }
        match outcome.await {
            Ok(Err(e)) if e.key_taken() => {
                // Another request with the same key started at the same moment: answer from it.
                match self.replay(&org, idempotency.as_ref()).await? {
                    Some(replay) => Ok(Submitted::Replayed(replay)),
                    None => Err(SubmitError::Claim(e)),
                }
            }
            Ok(Err(e)) => Err(SubmitError::Claim(e)),
            Ok(Ok(_)) | Err(_) => Err(SubmitError::Lost),
        }
    }

    /// The answer of the founding `idempotency`'s key stands for, if the key is known.
    async fn replay(
        &self,
        org: &OrgId,
        idempotency: Option<&Idempotency>,
    ) -> Result<Option<Replay>, SubmitError> {
        let Some(idempotency) = idempotency else {
            return Ok(None);
        };
        let Some(first) = self
            .found
            .ports
            .operations
            .idempotent_operation(org, &idempotency.key)
            .await
            .map_err(SubmitError::Lookup)?
        else {
            return Ok(None);
        };
        self.found
            .replay(org, idempotency, first)
            .await
            .map(Some)
            .map_err(SubmitError::Replay)
    }

    /// A slot for one more operation on this replica (foundings and deletions share them).
    ///
    /// # Errors
    /// `Busy` when every slot is taken, `ShuttingDown` after [`Foundings::drain`].
    pub fn slot(&self) -> Result<Slot, SubmitError> {
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        let permit = Arc::clone(&self.slots)
            .try_acquire_owned()
            .map_err(|_| SubmitError::Busy)?;
        self.found
            .ports
            .observer
            .foundings_in_flight(self.in_flight());
        Ok(Slot {
            _permit: permit,
            foundings: self.clone(),
        })
    }

    /// Runs `work` as a task of its own in `slot`: it runs to its end whatever becomes of the
    /// caller, and [`Foundings::drain`] waits for it.
    pub fn spawn<F>(&self, slot: Slot, work: F) -> JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        tokio::spawn(async move {
            let _slot = slot;
            work.await
        })
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
