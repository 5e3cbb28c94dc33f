//! plinth's HTTP service: the actix-web API (docs/ARCHITECTURE.md §3) — `POST /clusters` and the
//! reads, the bootstrap route, health, metrics and OpenAPI — and the `plinth` binary
//! (`src/main.rs`), which serves, migrates and mints development tokens.
//!
//! This crate is the outermost ring. Only [`wiring`] knows the adapters (PostgreSQL, the compute
//! API, PowerDNS, the x509 PKI) and the configuration that builds them; [`http`] sees the domain's
//! use cases and ports, and [`problem`] is the one place where domain errors become HTTP statuses.

pub mod auth;
pub mod http;
mod jwks;
pub mod jwt_crypto;
pub mod metrics;
pub mod problem;
pub mod telemetry;
pub mod wiring;
