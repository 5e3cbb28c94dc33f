//! plinth-api over mockall doubles of every port: the real actix `App`, no socket and no
//! infrastructure. Every mapping from a domain error to a status and problem type, the auth
//! refusals, bad bodies and the service routes. (The same service against real PostgreSQL,
//! compute and DNS is in the workspace's `tests/`.)

#![allow(clippy::unwrap_used)] // a test that cannot go on must stop loudly

mod auth;
mod bodies;
mod bootstrap;
mod credentials;
mod founding;
mod idempotency;
mod lifecycle;
mod reads;
mod service;
mod support;
