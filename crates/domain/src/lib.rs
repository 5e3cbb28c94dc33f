//! plinth's domain: the cluster model, the `FoundCluster` use case that founds a Kubernetes
//! control plane, and the ports it drives (`Repo`, `Compute`, `Dns`, `Pki`).
//!
//! This crate is the centre of the hexagon. It knows no adapter, no web framework and no
//! database: adapters depend on it, never the reverse (`make lint` checks that with `cargo tree`).
//! Everything here is tested without infrastructure, with the ports' mockall doubles and the
//! fixtures of `testing` (enable the `mocks` feature to use both from other crates).

pub mod bootstrap;
pub mod credentials;
pub mod found_cluster;
pub mod model;
pub mod ports;
pub mod recovery;
pub mod settings;
#[cfg(any(test, feature = "mocks"))]
pub mod testing;

pub use found_cluster::{FoundCluster, FoundClusterError, FoundedCluster, FoundingSettings};
