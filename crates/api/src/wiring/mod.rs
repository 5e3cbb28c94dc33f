//! Wiring: the one module that knows the adapters. It builds them from the configuration, hands
//! them to the use cases as ports, and starts the HTTP server; everything else in this crate
//! sees only the domain's ports and use cases.

pub mod settings;
pub mod tls;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpServer, web};
use anyhow::Context as _;
use plinth_diesel_pg::PgRepo;
use plinth_domain::FoundCluster;
use plinth_domain::bootstrap::{FetchBundle, ReissueToken};
use plinth_domain::credentials::IssueCredentials;
use plinth_domain::delete_cluster::{DeleteCluster, DeletionPorts};
use plinth_domain::expiry::CertificateExpiries;
use plinth_domain::found_cluster::{FoundingPorts, Foundings, Leasing};
use plinth_domain::model::ReplicaId;
use plinth_domain::ports::Chain;
use plinth_domain::ports::dns::Dns;
use plinth_domain::recovery::Recovery;
use plinth_http_compute::HttpCompute;
use plinth_http_dns::PowerDns;
use plinth_rfc2136_dns::Rfc2136Dns;
use plinth_x509_pki::X509Pki;

use crate::auth::Authenticator;
use crate::http::failures::FailureLimiter;
use crate::http::{AppState, app, bootstrap_app};
use crate::metrics::Metrics;
use crate::telemetry;
use settings::Config;

/// A running plinth service.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    foundings: Foundings,
    shutdown_timeout: Duration,
    background: Vec<tokio::task::JoinHandle<()>>,
    /// The `/metrics` listener, when it has its own address.
    metrics: Option<actix_web::dev::ServerHandle>,
    /// Whether `addr` serves HTTPS.
    tls: bool,
    /// The bootstrap route's own HTTPS listener, when configured: its address and handle.
    bootstrap: Option<(SocketAddr, actix_web::dev::ServerHandle)>,
}

impl Running {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, or `https://<addr>` when it serves TLS.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The address of the bootstrap route's own HTTPS listener, when there is one.
    pub fn bootstrap_addr(&self) -> Option<SocketAddr> {
        self.bootstrap.as_ref().map(|(addr, _)| *addr)
    }

    /// Stops accepting, lets in-flight requests and foundings finish, and waits.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        self.finish().await;
    }

    /// Waits until the server ends: on SIGTERM or SIGINT it stops accepting and lets in-flight
    /// requests, and the foundings running detached from them, finish within the shutdown
    /// timeout; what still runs after it is left to its lease (recovery rolls it back).
    ///
    /// # Errors
    /// The server failed.
    pub async fn wait(mut self) -> std::io::Result<()> {
        let served = (&mut self.server)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()));
        self.finish().await;
        served?
    }

    async fn finish(self) {
        if let Some(metrics) = &self.metrics {
            metrics.stop(true).await;
        }
        if let Some((_, bootstrap)) = &self.bootstrap {
            bootstrap.stop(true).await;
        }
        let left = self.foundings.drain(self.shutdown_timeout).await;
        if left > 0 {
            tracing::warn!(
                left,
                "foundings still running at shutdown are left to their leases"
            );
        }
        for task in &self.background {
            task.abort();
        }
        if !self.server.is_finished() {
            let _ = self.server.await;
        }
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
    let zone = config.founding.dns_zone.as_str();
    if let Some(settings) = config.rfc2136() {
        let rfc2136 =
            Rfc2136Dns::new(settings.clone(), zone).context("setting up RFC 2136 updates")?;
        tracing::info!(
            zone = rfc2136.zone(),
            server = settings.server,
            "DNS: RFC 2136 updates signed with TSIG"
        );
        return Ok(Some(Arc::new(rfc2136)));
    }
    let Some(settings) = config.powerdns() else {
        tracing::info!("DNS is disabled: foundings report dns_configured = false");
        return Ok(None);
    };
    let powerdns = PowerDns::new(settings.clone(), zone).context("setting up PowerDNS")?;
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

/// What [`build`] makes: the state the handlers share, the token verifier, and the recovery of
/// abandoned operations.
#[derive(Debug)]
pub struct Built {
    /// The handlers' state.
    pub state: AppState,
    /// Verifies operators' tokens.
    pub authenticator: Authenticator,
    /// This replica's recovery (run by [`start`] in the background).
    pub recovery: Arc<Recovery>,
}

/// Builds the adapters and the use cases; migrates and creates the DNS zone when configured to.
///
/// # Errors
/// An adapter cannot be set up, or migrating fails.
pub async fn build(config: &Config) -> anyhow::Result<Built> {
    let repo = Arc::new(repo(config)?);
    if config.database.migrate_on_start {
        let applied = repo.migrate().await.context("applying migrations")?;
        tracing::info!(applied = applied.len(), "migrations applied");
    }
    let compute = Arc::new(
        HttpCompute::new(config.compute.clone()).context("setting up the compute client")?,
    );
    let pki = Arc::new(X509Pki::with_key_pools(config.pki.clone()).context("setting up the PKI")?);
    crate::metrics::metrics().watch_key_pools(pki.keys().watch());
    let dns = dns(config).await?;
    let authenticator = Authenticator::start(config.auth.clone())
        .await
        .context("loading the token verification keys")?;
    let leasing = Leasing {
        owner: ReplicaId::for_this_process(),
        lease: config.recovery.lease,
    };
    tracing::info!(replica = %leasing.owner, "this replica's id");
    let observer = Metrics::observer();
    let ports = FoundingPorts {
        repo: repo.clone(),
        operations: repo.clone(),
        compute: compute.clone(),
        pki,
        dns,
        observer: observer.clone(),
    };
    let credentials =
        IssueCredentials::new(repo.clone(), ports.pki.clone(), config.credentials_lifetime);
    let tokens = ReissueToken::new(
        repo.clone(),
        config.founding.bootstrap_base_url.clone(),
        config.founding.bootstrap_ca.clone(),
        config.founding.bootstrap_token_ttl,
    );
    let expiries = CertificateExpiries::new(repo.clone(), ports.pki.clone());
    let deletions = Arc::new(DeleteCluster::new(
        DeletionPorts {
            repo: repo.clone(),
            operations: repo.clone(),
            compute: compute.clone(),
            dns: ports.dns.clone(),
            observer: observer.clone(),
        },
        leasing.clone(),
        config.founding.deadline,
        config.idempotency,
    ));
    let found = FoundCluster::new(ports, config.founding.clone(), leasing.clone());
    let recovery = Recovery::new(
        deletions.clone(),
        repo.clone(),
        compute,
        observer,
        leasing,
        config.recovery.orphan_grace,
    );
    let bundles = FetchBundle::new(repo.clone(), config.bundles.clone());
    Ok(Built {
        state: AppState {
            foundings: Foundings::new(found, config.idempotency),
            credentials,
            deletions,
            tokens,
            expiries,
            bootstrap_failures: FailureLimiter::new(
                NonZeroU32::new(config.server.bootstrap_refusals_per_minute)
                    .unwrap_or(NonZeroU32::MIN),
                NonZeroU32::new(config.server.bootstrap_refusal_burst).unwrap_or(NonZeroU32::MIN),
            ),
            metrics_here: config.metrics_listen.is_none(),
            bundles,
            operations: repo.clone(),
            repo,
        },
        authenticator,
        recovery: Arc::new(recovery),
    })
}

/// Runs `pass` every `every`, the first time at once, logging what it did and why it failed.
fn every<T, E, F, Fut>(every: Duration, what: &'static str, pass: F) -> tokio::task::JoinHandle<()>
where
    T: Into<usize>,
    E: std::error::Error + 'static,
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, E>> + Send,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match pass().await {
                Ok(done) => {
                    let done: usize = done.into();
                    if done > 0 {
                        tracing::info!(done, "{what}");
                    }
                }
                Err(e) => tracing::warn!(error = %Chain(&e), "{what} failed"),
            }
        }
    })
}

/// Starts this replica's background recovery: abandoned operations and expired idempotency keys
/// every scan interval, the orphan sweep every sweep interval.
fn start_recovery(config: &Config, recovery: &Arc<Recovery>) -> Vec<tokio::task::JoinHandle<()>> {
    let expired = Arc::clone(recovery);
    let orphans = Arc::clone(recovery);
    let keys = Arc::clone(recovery);
    vec![
        every(
            config.recovery.scan_interval,
            "abandoned operations rolled back",
            move || {
                let recovery = Arc::clone(&expired);
                async move { recovery.recover_expired().await }
            },
        ),
        every(
            config.recovery.orphan_sweep_interval,
            "orphaned resources deleted",
            move || {
                let recovery = Arc::clone(&orphans);
                async move { recovery.sweep_orphans().await }
            },
        ),
        every(
            config.recovery.scan_interval,
            "idempotency keys past their retention forgotten",
            move || {
                let recovery = Arc::clone(&keys);
                async move { recovery.purge_idempotency_keys().await }
            },
        ),
    ]
}

/// Builds everything and starts serving on `config.listen`.
///
/// # Errors
/// Building fails or the address cannot be bound.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    telemetry::init(config.log.format, &config.log.level);
    let built = build(&config).await?;
    let background = start_recovery(&config, &built.recovery);
    let foundings = built.state.foundings.clone();
    let (state, authenticator) = (built.state, built.authenticator);
    let state = web::Data::new(state);
    let authenticator = web::Data::new(authenticator);
    let bootstrap_state = state.clone();
    let server = HttpServer::new(move || app(state.clone(), authenticator.clone()))
        .workers(config.server.workers)
        .shutdown_timeout(config.shutdown_timeout().as_secs());
    let server = match &config.tls {
        None => server.bind(config.listen),
        Some(tls) => server.bind_rustls_0_23(config.listen, tls.server_config()),
    }
    .with_context(|| format!("binding {}", config.listen))?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .context("the server bound no address")?;
    // Bound before anything serves, so a taken address stops start-up with nothing running.
    let bootstrap = match &config.bootstrap_listen {
        None => None,
        Some(listener) => {
            // The bootstrap route alone, on the same state: one refusal limiter, one metrics.
            let server = HttpServer::new(move || bootstrap_app(bootstrap_state.clone()))
                .workers(config.server.workers)
                .shutdown_timeout(config.shutdown_timeout().as_secs())
                .bind_rustls_0_23(listener.listen, listener.tls.server_config())
                .with_context(|| format!("binding server.bootstrap_listen {}", listener.listen))?;
            let bound = server
                .addrs()
                .first()
                .copied()
                .context("the bootstrap listener bound no address")?;
            Some((bound, server))
        }
    };
    let server = server.run();
    let handle = server.handle();
    tracing::info!(address = %addr, tls = config.tls.is_some(), "plinth listening");
    let bootstrap = bootstrap.map(|(bound, server)| {
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        tracing::info!(address = %bound, "bootstrap bundles served over HTTPS");
        (bound, handle)
    });
    let metrics = match config.metrics_listen {
        None => None,
        Some(listen) => {
            let server = HttpServer::new(|| {
                actix_web::App::new()
                    .route("/metrics", web::get().to(crate::http::health::metrics_only))
            })
            .workers(1)
            .bind(listen)
            .with_context(|| format!("binding server.metrics_listen {listen}"))?
            .run();
            let handle = server.handle();
            tokio::spawn(server);
            tracing::info!(address = %listen, "metrics listening");
            Some(handle)
        }
    };
    Ok(Running {
        addr,
        handle,
        server: tokio::spawn(server),
        foundings,
        shutdown_timeout: config.shutdown_timeout(),
        background,
        metrics,
        tls: config.tls.is_some(),
        bootstrap,
    })
}
