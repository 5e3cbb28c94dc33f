//! plinth end to end: the service over real HTTP, with real PostgreSQL, the real compute service,
//! real DNS servers (PowerDNS, BIND9), and the real programs a cluster runs (etcd, kubectl,
//! openssl). One binary, one module per area; `dns_contract` is the `Dns` port's contract suite,
//! run over every DNS adapter.

#![allow(clippy::unwrap_used)] // a test that cannot go on must stop loudly

mod auth;
mod bootstrap;
mod clusters;
mod dns_contract;
mod durability;
mod fleet;
mod idempotency;
mod lifecycle;
mod security;
mod support;
mod tls;
