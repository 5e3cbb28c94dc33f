//! plinth's HTTP service: the actix-web API of DESIGN.md §3 — `POST /clusters` and the reads,
//! health, metrics and OpenAPI — over the real adapters (PostgreSQL, the compute API, PowerDNS,
//! the x509 PKI), configured with the `config` crate and observable with `tracing`. The binary
//! `plinth` (`src/main.rs`) serves, migrates and mints development tokens.
//!
//! This crate is the outermost ring: it depends on every adapter, and it is the one place where
//! domain errors become HTTP statuses (`problem`).

pub mod app;
pub mod archive;
pub mod auth;
pub mod jwt_crypto;
pub mod problem;
pub mod routes;
pub mod settings;
pub mod telemetry;
