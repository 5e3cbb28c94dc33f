//! The cluster model: identifiers, the request shape and its rules, names, networking and SANs.

mod bootstrap_token;
mod idempotency;
mod ids;
mod naming;
mod networking;
mod operation;
mod request;
mod sans;
mod secret;

pub use bootstrap_token::{BootstrapToken, BootstrapTokenHash};
pub use idempotency::{Idempotency, IdempotencyKey, RequestFingerprint};
pub use ids::{
    ClusterId, ClusterName, DNS_LABEL_PATTERN, FlavorId, ImageId, InvalidValue, OrgId,
    PLATFORM_ID_PATTERN, SecurityGroupId, SubnetId, VmId,
};
pub use naming::{ClusterDnsNames, DnsZone, NodeName, NodeOrdinal};
pub use networking::{Networking, NetworkingError};
pub use operation::{ClusterStatus, OperationId, OperationKind, OperationState, ReplicaId};
pub use request::{
    ClusterDefaults, ClusterRequest, ClusterSpec, ControlPlaneCount, FieldViolation,
    MAX_SECURITY_GROUPS, SecurityGroupChoice, ValidationErrors,
};
pub use sans::{NodeAddresses, SubjectAltNames, apiserver_sans, etcd_sans};
pub use secret::SecretText;
