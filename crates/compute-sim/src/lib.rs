//! A local compute service honouring plinth's compute contract (docs/ARCHITECTURE.md §4), for development,
//! tests and demos: subnets, security groups and VMs over JSON/HTTP, state in PostgreSQL.
//!
//! VM rows, with their addresses, are committed before `POST /v1/vms` answers — the `vms` table
//! plinth reads back during a founding. Private IPv4 comes from the subnet, IPv6 from its /64,
//! public IPv4 from a pool; the default subnet `subnet-local` (127.10.0.0/16, fd00:10::/64,
//! public pool 127.20.0.0/16) hands out loopback addresses a test can bind to. Creating a VM or a
//! security group takes an `Idempotency-Key` (a retry gets the same resource), and both can be
//! listed by tag. Latency and failures can be injected per operation, at start and through
//! `/admin/faults`.
//!
//! Subnets and security groups have an `owner`: `shared` (any organization may use it) or one
//! organization's id. Subnets take theirs from the configuration (`owner` in `[[subnets]]`,
//! `shared` when none is named); a group takes the one its creator names. The simulator only
//! records and reports owners: it serves one caller (plinth, by its service token), which checks
//! them itself.
//!
//! Errors are RFC 9457 problems. Two 409s carry a `type` a client can tell apart (see
//! [`api::CAPACITY_EXHAUSTED`] and [`api::IN_USE`]): `…/capacity-exhausted` when a subnet or
//! public pool has no free address left (the request was fine; it may work once addresses are
//! freed), and `…/in-use` when a security group is still attached to a VM. Every other problem,
//! injected faults included, has type `about:blank`.

pub mod alloc;
pub mod api;
pub mod faults;
pub mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use serde::Deserialize;

use crate::faults::{FaultRule, Faults, Operation};
use crate::store::{Store, SubnetSeed};

/// Everything the service is configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimSettings {
    /// Where to listen, e.g. `127.0.0.1:8081` (port 0: any free port).
    pub listen: SocketAddr,
    /// PostgreSQL URL of the platform database (the one plinth reads `vms` from).
    pub database_url: String,
    /// The bearer token callers must present.
    pub token: String,
    /// Pool size.
    #[serde(default = "default_connections")]
    pub max_connections: usize,
    /// Bound on getting a database connection, in seconds.
    #[serde(default = "default_db_timeout")]
    pub database_timeout_secs: u64,
    /// HTTP worker threads.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Subnets to create or update at start.
    #[serde(default = "default_subnets")]
    pub subnets: Vec<SubnetSeed>,
    /// Fault rules in force from the start.
    #[serde(default)]
    pub faults: BTreeMap<Operation, FaultRule>,
}

fn default_connections() -> usize {
    16
}

fn default_db_timeout() -> u64 {
    5
}

fn default_workers() -> usize {
    2
}

/// `subnet-local`: 127.10.0.0/16, fd00:10::/64, public pool 127.20.0.0/16 — all loopback (any
/// 127.x address is usable on Linux), room for about 21,000 three-node clusters; shared by every
/// organization.
pub fn default_subnets() -> Vec<SubnetSeed> {
    vec![SubnetSeed {
        id: "subnet-local".into(),
        ipv4_cidr: ipnet::Ipv4Net::new_assert([127, 10, 0, 0].into(), 16),
        ipv6_cidr: Some(ipnet::Ipv6Net::new_assert(
            [0xfd00, 0x10, 0, 0, 0, 0, 0, 0].into(),
            64,
        )),
        public_pool: Some(ipnet::Ipv4Net::new_assert([127, 20, 0, 0].into(), 16)),
        owner: store::SHARED.to_owned(),
    }]
}

impl SimSettings {
    /// Settings for `database_url` and `token`, listening on a free loopback port.
    pub fn new(database_url: &str, token: &str) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: database_url.to_owned(),
            token: token.to_owned(),
            max_connections: default_connections(),
            database_timeout_secs: default_db_timeout(),
            workers: default_workers(),
            subnets: default_subnets(),
            faults: BTreeMap::new(),
        }
    }

    /// Checks what deserialisation cannot; the error names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.token.len() < 8 {
            return Err("token must have at least 8 characters".into());
        }
        for (operation, rule) in &self.faults {
            rule.validate()
                .map_err(|why| format!("faults.{operation:?}: {why}"))?;
        }
        if self.subnets.iter().any(|s| s.id.is_empty()) {
            return Err("subnets: every subnet needs an id".into());
        }
        if let Some(subnet) = self
            .subnets
            .iter()
            .find(|s| !store::is_valid_owner(&s.owner))
        {
            return Err(format!(
                "subnets: the owner of {} ({:?}) must be \"shared\" or an organization id \
                 (1 to 128 ASCII letters, digits and . _ : -)",
                subnet.id, subnet.owner
            ));
        }
        Ok(())
    }
}

/// A running compute service.
#[derive(Debug)]
pub struct RunningSim {
    addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningSim {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets in-flight requests finish, and waits for the server to end.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        let _ = self.server.await;
    }

    /// Waits until the server ends (it ends on SIGINT/SIGTERM or `stop`).
    pub async fn wait(self) -> std::io::Result<()> {
        self.server
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
    }
}

/// Migrates the database, seeds the subnets, and starts serving. Needs a multi-threaded tokio
/// runtime (migrations block).
pub async fn start(settings: SimSettings) -> anyhow::Result<RunningSim> {
    settings.validate().map_err(|why| anyhow::anyhow!(why))?;
    let store = Store::new(
        &settings.database_url,
        settings.max_connections,
        Duration::from_secs(settings.database_timeout_secs),
    )?;
    store.migrate().await?;
    store.seed_subnets(&settings.subnets).await?;
    let state = api::state(
        store,
        Faults::new(settings.faults.clone()),
        settings.token.clone(),
    );
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(api::routes)
            .default_service(web::to(api::not_found))
    })
    .workers(settings.workers.max(1))
    .shutdown_timeout(10)
    .bind(settings.listen)?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| anyhow::anyhow!("the server bound no address"))?;
    let server = server.run();
    let handle = server.handle();
    Ok(RunningSim {
        addr,
        handle,
        server: tokio::spawn(server),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn from_toml(text: &str) -> SimSettings {
        config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(config::Config::try_deserialize)
            .unwrap()
    }

    const BASE: &str = r#"
        listen = "127.0.0.1:0"
        database_url = "postgres://x@127.0.0.1/x"
        token = "a-long-token"
    "#;

    #[test]
    fn a_seeded_subnet_is_shared_unless_it_names_an_owner() {
        let settings = from_toml(&format!(
            r#"{BASE}
            [[subnets]]
            id = "subnet-a"
            ipv4_cidr = "10.0.0.0/24"

            [[subnets]]
            id = "subnet-b"
            ipv4_cidr = "10.0.1.0/24"
            owner = "org-b"
            "#
        ));
        settings.validate().unwrap();
        let owners: Vec<(&str, &str)> = settings
            .subnets
            .iter()
            .map(|s| (s.id.as_str(), s.owner.as_str()))
            .collect();
        assert_eq!(owners, [("subnet-a", "shared"), ("subnet-b", "org-b")]);
        // Without [[subnets]], the default: subnet-local, shared.
        let settings = from_toml(BASE);
        assert_eq!(settings.subnets, default_subnets());
        assert_eq!(settings.subnets[0].owner, "shared");
    }

    #[test]
    fn a_malformed_owner_is_refused_naming_the_subnet() {
        for owner in ["", "org b", "org/b", &"o".repeat(129)] {
            let mut settings = SimSettings::new("postgres://x@127.0.0.1/x", "a-long-token");
            settings.subnets[0].owner = owner.to_owned();
            let why = settings.validate().unwrap_err();
            assert!(
                why.contains("owner") && why.contains("subnet-local"),
                "{owner:?}: {why}"
            );
        }
    }

    #[test]
    fn the_shipped_configuration_seeds_subnet_local_as_shared() {
        let settings = from_toml(include_str!("../../../config/compute-sim.toml"));
        settings.validate().unwrap();
        assert_eq!(settings.subnets, default_subnets());
    }
}
