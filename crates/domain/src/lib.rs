//! plinth's domain: the cluster model; the use cases — `FoundCluster` (a Kubernetes control
//! plane, as a journaled saga, with its supervisor and replays), `DeleteCluster`, `Recovery`,
//! `FetchBundle` and `ReissueToken` (the boot path), `IssueCredentials` and
//! `CertificateExpiries`; and the ports they drive (`Repo`, `Operations`, `Compute`, `Dns`,
//! `Pki`, `Observer`).
//!
//! This crate is the centre of the hexagon. It knows no adapter, no web framework and no
//! database: adapters depend on it, never the reverse (`make lint` checks that with `cargo tree`).
//! Everything here is tested without infrastructure, with the ports' mockall doubles and the
//! fixtures of `testing` (enable the `mocks` feature to use both from other crates).

pub mod bootstrap;
pub mod credentials;
pub mod delete_cluster;
pub mod expiry;
pub mod found_cluster;
pub mod model;
pub mod ports;
pub mod recovery;
pub mod settings;
#[cfg(any(test, feature = "mocks"))]
pub mod testing;

pub use found_cluster::{FoundCluster, FoundClusterError, FoundedCluster, FoundingSettings};
