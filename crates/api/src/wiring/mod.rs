//! Wiring: the one module that knows the adapters. It builds them from the configuration, hands
//! them to the use cases as ports, and starts the HTTP server; everything else in this crate
//! sees only the domain's ports and use cases.

pub mod settings;

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{HttpServer, web};
use anyhow::Context as _;
use plinth_diesel_pg::PgRepo;
use plinth_domain::FoundCluster;
use plinth_domain::bootstrap::FetchBundle;
use plinth_domain::ports::Chain;
use plinth_domain::ports::dns::Dns;
use plinth_http_compute::HttpCompute;
use plinth_http_dns::PowerDns;
use plinth_x509_pki::X509Pki;

use crate::auth::Authenticator;
use crate::http::{AppState, app};
use crate::telemetry;
use settings::Config;

/// A running plinth service.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets in-flight requests finish, and waits.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        let _ = self.server.await;
    }

    /// Waits until the server ends: on SIGTERM or SIGINT it stops accepting and lets in-flight
    /// requests (foundings included) finish within the shutdown timeout.
    ///
    /// # Errors
    /// The server failed.
    pub async fn wait(self) -> std::io::Result<()> {
        self.server
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
    }
}

fn repo(config: &Config) -> anyhow::Result<PgRepo> {
    let envelope = config.master_keys.envelope()?;
    PgRepo::new(&config.database, envelope).context("setting up the database pool")
}

/// Applies pending migrations; returns the versions applied.
///
/// # Errors
/// The database cannot be reached or a migration fails.
pub async fn migrate(config: &Config) -> anyhow::Result<Vec<String>> {
    repo(config)?.migrate().await.context("applying migrations")
}

async fn dns(config: &Config) -> anyhow::Result<Option<Arc<dyn Dns>>> {
    let Some(settings) = config.powerdns() else {
        tracing::info!("DNS is disabled: foundings report dns_configured = false");
        return Ok(None);
    };
    let powerdns = PowerDns::new(settings.clone(), config.founding.dns_zone.as_str())
        .context("setting up PowerDNS")?;
    if powerdns.ensure_zone_at_start() {
        match powerdns.ensure_zone().await {
            Ok(created) => tracing::info!(zone = powerdns.zone(), created, "DNS zone ready"),
            // DNS is soft: a founding reports it; start-up goes on.
            Err(e) => {
                tracing::warn!(zone = powerdns.zone(), error = %Chain(&e), "could not ensure the DNS zone")
            }
        }
    }
    Ok(Some(Arc::new(powerdns)))
}

/// Builds the adapters and the use cases; migrates and creates the DNS zone when configured to.
///
/// # Errors
/// An adapter cannot be set up, or migrating fails.
pub async fn build(config: &Config) -> anyhow::Result<(AppState, Authenticator)> {
    let repo = Arc::new(repo(config)?);
    if config.database.migrate_on_start {
        let applied = repo.migrate().await.context("applying migrations")?;
        tracing::info!(applied = applied.len(), "migrations applied");
    }
    let compute = Arc::new(
        HttpCompute::new(config.compute.clone()).context("setting up the compute client")?,
    );
    let pki = Arc::new(X509Pki::new(config.pki.clone()).context("setting up the PKI")?);
    let dns = dns(config).await?;
    let authenticator =
        Authenticator::new(config.auth.clone()).context("loading the token verification keys")?;
    let found = FoundCluster::new(repo.clone(), compute, pki, dns, config.founding.clone());
    let bundles = FetchBundle::new(repo.clone(), config.bundles.clone());
    Ok((
        AppState {
            found,
            bundles,
            repo,
        },
        authenticator,
    ))
}

/// Builds everything and starts serving on `config.listen`.
///
/// # Errors
/// Building fails or the address cannot be bound.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    telemetry::init(config.log.format, &config.log.level);
    let (state, authenticator) = build(&config).await?;
    let state = web::Data::new(state);
    let authenticator = web::Data::new(authenticator);
    let server = HttpServer::new(move || app(state.clone(), authenticator.clone()))
        .workers(config.server.workers)
        .shutdown_timeout(config.shutdown_timeout().as_secs())
        .bind(config.listen)
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .context("the server bound no address")?;
    let server = server.run();
    let handle = server.handle();
    tracing::info!(address = %addr, "plinth listening");
    Ok(Running {
        addr,
        handle,
        server: tokio::spawn(server),
    })
}
