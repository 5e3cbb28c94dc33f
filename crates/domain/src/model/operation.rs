use std::fmt;

use uuid::Uuid;

use super::ids::InvalidValue;

/// One long-running operation on a cluster (a founding or a deletion), journaled so that any replica can
/// finish or undo it after the one that started it is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OperationId(Uuid);

impl OperationId {
    /// A fresh random id.
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }

    /// Wraps an id read back from storage.
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    /// The id as a UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// Reads an id from text (a URL path, say).
    ///
    /// # Errors
    /// Text that is not a UUID.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        Uuid::parse_str(raw)
            .map(Self)
            .map_err(|_| InvalidValue("an operation id is a UUID".into()))
    }
}

impl fmt::Display for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.hyphenated())
    }
}

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OperationKind {
    /// `POST /clusters`.
    Found,
    /// `DELETE /clusters/{id}`.
    Delete,
}

impl OperationKind {
    /// The stored and reported name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Found => "found",
            Self::Delete => "delete",
        }
    }

    /// The kind a stored name stands for.
    ///
    /// # Errors
    /// A name no kind has.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        match raw {
            "found" => Ok(Self::Found),
            "delete" => Ok(Self::Delete),
            other => Err(InvalidValue(format!("unknown operation kind {other:?}"))),
        }
    }
}

impl fmt::Display for OperationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an operation is: running (owned by one replica under a lease), or ended for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationState {
    /// In progress, or abandoned by a replica that died (its lease then expires).
    Running,
    /// Done; its cluster exists.
    Succeeded,
    /// Stopped; what it had made was removed (its problem says what happened).
    Failed,
}

impl OperationState {
    /// The stored and reported name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    /// The state a stored name stands for.
    ///
    /// # Errors
    /// A name no state has.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        match raw {
            "running" => Ok(Self::Running),
            "succeeded" => Ok(Self::Succeeded),
            "failed" => Ok(Self::Failed),
            other => Err(InvalidValue(format!("unknown operation state {other:?}"))),
        }
    }
}

impl fmt::Display for OperationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a cluster is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClusterStatus {
    /// Its founding runs: the name is claimed, nodes may not exist yet.
    Provisioning,
    /// Founded: every node row is there.
    Ready,
    /// Its deletion runs (or stopped and waits for another `DELETE`): its resources may be
    /// partly gone.
    Deleting,
}

impl ClusterStatus {
    /// The stored and reported name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Ready => "ready",
            Self::Deleting => "deleting",
        }
    }

    /// The status a stored name stands for.
    ///
    /// # Errors
    /// A name no status has.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        match raw {
            "provisioning" => Ok(Self::Provisioning),
            "ready" => Ok(Self::Ready),
            "deleting" => Ok(Self::Deleting),
            other => Err(InvalidValue(format!("unknown cluster status {other:?}"))),
        }
    }
}

impl fmt::Display for ClusterStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One running plinth process: the owner of the operations it leases.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReplicaId(String);

impl ReplicaId {
    /// A fresh id for this process: its host name (when known), pid and a random suffix, so a
    /// restarted process never mistakes the leases of its previous life for its own.
    pub fn for_this_process() -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty() && h.len() <= 64)
            .unwrap_or_else(|| "plinth".to_owned());
        let suffix = Uuid::new_v4().simple().to_string();
        Self(format!("{host}-{}-{}", std::process::id(), &suffix[..8]))
    }

    /// Wraps a stored id.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for state in [
            OperationState::Running,
            OperationState::Succeeded,
            OperationState::Failed,
        ] {
            assert_eq!(OperationState::parse(state.as_str()), Ok(state));
        }
        for status in [
            ClusterStatus::Provisioning,
            ClusterStatus::Ready,
            ClusterStatus::Deleting,
        ] {
            assert_eq!(ClusterStatus::parse(status.as_str()), Ok(status));
        }
        assert_eq!(OperationKind::parse("found"), Ok(OperationKind::Found));
        assert_eq!(OperationKind::parse("delete"), Ok(OperationKind::Delete));
        assert!(OperationKind::parse("explode").is_err());
    }

    #[test]
    fn replica_ids_differ_between_lives() {
        assert_ne!(ReplicaId::for_this_process(), ReplicaId::for_this_process());
    }
}
