//! Wiring: the real adapters from configuration, the use case, and the HTTP server.

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{App, HttpServer, middleware, web};
use anyhow::Context as _;
use plinth_diesel_pg::PgRepo;
use plinth_domain::FoundCluster;
use plinth_domain::bootstrap::FetchBundle;
use plinth_domain::ports::dns::Dns;
use plinth_http_compute::HttpCompute;
use plinth_http_dns::PowerDns;
use plinth_x509_pki::X509Pki;

use crate::auth::Authenticator;
use crate::routes::{AppState, routes};
use crate::settings::Config;
use crate::telemetry;

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
    pub async fn wait(self) -> std::io::Result<()> {
        self.server
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
    }
}

/// Builds the adapters and the use case; migrates and creates the DNS zone when configured to.
pub async fn build(config: &Config) -> anyhow::Result<(AppState, Authenticator)> {
    let repo = Arc::new(
        PgRepo::new(&config.database, config.envelope()?)
            .context("setting up the database pool")?,
    );
    if config.migrate_on_start {
        let applied = repo.migrate().await.context("applying migrations")?;
        tracing::info!(applied = applied.len(), "migrations applied");
    }
    let compute = Arc::new(
        HttpCompute::new(config.compute.clone()).context("setting up the compute client")?,
    );
    let pki = Arc::new(X509Pki::new(config.pki.clone()).context("setting up the PKI")?);
    let dns: Option<Arc<dyn Dns>> = match &config.dns {
        None => {
            tracing::info!("DNS is disabled: foundings report dns_configured = false");
            None
        }
        Some(dns) => {
            let powerdns = PowerDns::new(dns.powerdns.clone()).context("setting up PowerDNS")?;
            if dns.ensure_zone {
                let nameservers: Vec<&str> = dns.nameservers.iter().map(String::as_str).collect();
                match powerdns.ensure_zone(&nameservers).await {
                    Ok(created) => {
                        tracing::info!(zone = powerdns.zone(), created, "DNS zone ready")
                    }
                    // DNS is soft: a founding reports it; start-up goes on.
                    Err(e) => {
                        tracing::warn!(zone = powerdns.zone(), error = %e, "could not ensure the DNS zone")
                    }
                }
            }
            Some(Arc::new(powerdns))
        }
    };
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
pub async fn start(config: Config) -> anyhow::Result<Running> {
    telemetry::init(config.log_format, &config.log_level);
    let (state, authenticator) = build(&config).await?;
    let state = web::Data::new(state);
    let authenticator = web::Data::new(authenticator);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(authenticator.clone())
            .wrap(middleware::from_fn(telemetry::observe))
            .configure(routes)
    })
    .workers(config.workers)
    .shutdown_timeout(config.shutdown_timeout.as_secs())
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
