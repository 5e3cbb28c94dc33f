//! PostgreSQL going away mid-founding: every call returns `Unavailable` within the configured
//! bounds — no panic, no hang — nothing half-written is committed, and the repository recovers
//! when the server is back. Runs its own PostgreSQL (scripts/pg.sh on a private port and
//! directory), as it stops it.

#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use diesel::sql_query;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use plinth_diesel_pg::testing::{migrate_everything, url_for_database};
use plinth_diesel_pg::{Envelope, PgRepo, PgSettings};
use plinth_domain::model::{
    BootstrapTokenHash, ClusterStatus, IdempotencyKey, NodeName, NodeOrdinal, OperationState,
    ReplicaId, SecretText, VmId,
};
use plinth_domain::ports::operations::{Lease, Operations, ResourceKind};
use plinth_domain::ports::repo::{DnsOutcome, NewClusterRecord, PageRequest, Repo, RepoError};
use plinth_domain::testing::{cluster_record, trust_root_of};
use time::OffsetDateTime;

mod common;

use common::{LEASE, deletion, founding, founding_rows, lock_operation, release};

const MASTER_KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

/// A TCP port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends `signal` (`-STOP`, `-CONT`) to `pids`.
fn signal(pids: &[String], signal: &str) {
    let status = Command::new("kill")
        .arg(signal)
        .args(pids)
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pids:?}");
}

/// A PostgreSQL of this test's own, stopped and deleted when dropped.
struct PrivatePostgres {
    dir: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    fn script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pg.sh")
    }

    fn pg(&self, action: &str) -> String {
        let output = Command::new(Self::script())
            .arg(action)
            .env("PLINTH_PG_DIR", &self.dir)
            .env("PLINTH_PG_PORT", self.port.to_string())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "pg.sh {action}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    fn start() -> (Self, String) {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("plinth-outage-pg-{}-{port}", std::process::id()));
        let pg = Self { dir, port };
        let url = pg.pg("start");
        (pg, url)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new(Self::script())
            .arg("stop")
            .env("PLINTH_PG_DIR", &self.dir)
            .env("PLINTH_PG_PORT", self.port.to_string())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every call must end well inside this, given the repository's 2 s / 3 s bounds.
const NO_HANG: Duration = Duration::from_secs(20);

async fn unavailable<T>(what: &str, call: impl std::future::Future<Output = Result<T, RepoError>>) {
    let started = Instant::now();
    let result = tokio::time::timeout(NO_HANG, call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung for {NO_HANG:?}"));
    match result {
        Err(RepoError::Unavailable(message)) => {
            eprintln!(
                "{what}: Unavailable after {:?}: {message}",
                started.elapsed()
            );
        }
        Err(other) => panic!("{what}: expected Unavailable, got {other}"),
        Ok(_) => panic!("{what}: expected Unavailable, got success"),
    }
}

/// A private server with an empty database `name`, and a repository on it whose connect and
/// acquire bounds are `connect_secs` and whose statement bound is `statement_secs`.
async fn repo_on_private_postgres(
    name: &str,
    connect_secs: u64,
    statement_secs: u64,
) -> (PrivatePostgres, String, PgRepo) {
    let (postgres, admin_url) = PrivatePostgres::start();
    let mut admin = AsyncPgConnection::establish(&admin_url).await.unwrap();
    sql_query(format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    drop(admin);
    let url = url_for_database(&admin_url, name);
    let settings = PgSettings {
        connect_timeout_secs: connect_secs,
        acquire_timeout_secs: connect_secs,
        statement_timeout_secs: statement_secs,
        ..PgSettings::new(SecretText::new(&url))
    };
    let envelope = Envelope::new("k1", [("k1".to_owned(), SecretText::new(MASTER_KEY))]).unwrap();
    let repo = PgRepo::new(&settings, envelope).unwrap();
    (postgres, url, repo)
}

/// Claims a name and stores the trust material on a healthy server: the founding a server
/// outage then interrupts. Returns the lease and the record.
async fn a_founding_under_way(repo: &PgRepo) -> (Lease, NewClusterRecord) {
    let record = cluster_record("org-a", Some("interrupted"), 1, OffsetDateTime::now_utc());
    let founding = founding(&record);
    repo.begin_founding(&founding).await.unwrap();
    let (ca, sa) = trust_root_of(record.id);
    repo.store_trust_root(&founding.lease, record.id, &ca, &sa)
        .await
        .unwrap();
    (founding.lease, record)
}

/// After an outage: the interrupted founding's operation still runs (leased to its replica,
/// to be finished or rolled back), its cluster is still `provisioning`, and no node row exists.
async fn nothing_was_committed(repo: &PgRepo, lease: &Lease, record: &NewClusterRecord) {
    let operation = repo.operation(lease.operation).await.unwrap().unwrap();
    assert_eq!(operation.state, OperationState::Running);
    assert_eq!(operation.owner, lease.owner);
    let details = repo
        .find_cluster(&record.org, record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(details.summary.status, ClusterStatus::Provisioning);
    assert!(details.nodes.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_stopping_mid_founding_yields_unavailable_and_the_repo_recovers() {
    let (postgres, url, repo) = repo_on_private_postgres("outage", 2, 3).await;
    // From an empty database, migrating applies everything once, then nothing.
    let migrations =
        std::fs::read_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../migrations"))
            .unwrap()
            .filter(|entry| entry.as_ref().unwrap().path().is_dir())
            .count();
    assert_eq!(repo.migrate().await.unwrap().len(), migrations);
    assert!(repo.migrate().await.unwrap().is_empty());
    migrate_everything(&url).await;

    let (lease, record) = a_founding_under_way(&repo).await;

    postgres.pg("stop");

    let vm = VmId::parse("vm-1").unwrap();
    let key = format!("{}/vm/1", lease.operation);
    unavailable(
        "journaling an intent",
        repo.record_intents(&lease, &[(ResourceKind::Vm, key.clone())]),
    )
    .await;
    unavailable(
        "journaling a creation",
        repo.record_created(&lease, &key, "vm-1"),
    )
    .await;
    unavailable(
        "renewing the lease",
        repo.renew_lease(&lease, "create_vms", LEASE),
    )
    .await;
    unavailable("reading VMs", repo.vm_identities(std::slice::from_ref(&vm))).await;
    unavailable(
        "the founding's last transaction",
        repo.finish_founding(&lease, &founding_rows(&record, 1)),
    )
    .await;
    unavailable(
        "beginning another founding",
        repo.begin_founding(&founding(&cluster_record(
            "org-a",
            None,
            1,
            OffsetDateTime::now_utc(),
        ))),
    )
    .await;
    unavailable(
        "reading a cluster",
        repo.find_cluster(&record.org, record.id),
    )
    .await;
    unavailable(
        "listing clusters",
        repo.list_clusters(
            &record.org,
            &PageRequest {
                limit: 10,
                after: None,
                expiring_before: None,
            },
        ),
    )
    .await;
    unavailable(
        "listing clusters by expiry",
        repo.list_clusters(
            &record.org,
            &PageRequest {
                limit: 10,
                after: None,
                expiring_before: Some(OffsetDateTime::now_utc()),
            },
        ),
    )
    .await;
    unavailable(
        "beginning a deletion",
        repo.begin_deletion(&deletion(&record.org, record.id)),
    )
    .await;
    unavailable("finishing a deletion", repo.finish_deletion(&lease)).await;
    let node = NodeName::new(record.id, NodeOrdinal::new(1).unwrap());
    let token = BootstrapTokenHash::of("token");
    unavailable(
        "noting a bootstrap fetch",
        repo.note_bootstrap_fetch(record.id, &node, &token),
    )
    .await;
    unavailable(
        "replacing a bootstrap token",
        repo.replace_bootstrap_token(
            &record.org,
            record.id,
            &node,
            &token,
            OffsetDateTime::now_utc(),
        ),
    )
    .await;
    unavailable(
        "reading a cluster's certificates",
        repo.cluster_certificates(&record.org, record.id),
    )
    .await;
    unavailable(
        "reading bootstrap material",
        repo.bootstrap_material(record.id, &node),
    )
    .await;
    unavailable("reading the operation", repo.operation(lease.operation)).await;
    unavailable(
        "reading an idempotency key",
        repo.idempotent_operation(&record.org, &IdempotencyKey::parse("retry-1").unwrap()),
    )
    .await;
    unavailable("purging idempotency keys", repo.purge_idempotency_keys()).await;
    unavailable(
        "recording a DNS outcome",
        repo.record_dns_outcome(
            record.id,
            &DnsOutcome {
                configured: true,
                error: None,
            },
        ),
    )
    .await;
    unavailable(
        "reading a root CA",
        repo.cluster_root_ca(&record.org, record.id),
    )
    .await;
    unavailable(
        "claiming expired operations",
        repo.claim_expired(&ReplicaId::new("replica-b"), LEASE, 10),
    )
    .await;
    unavailable("pinging", repo.ping()).await;

    // Back up: the pool drops its dead connections and serves again. The founding is where the
    // outage found it.
    postgres.pg("start");
    tokio::time::timeout(NO_HANG, async {
        while repo.ping().await.is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the repository did not recover after PostgreSQL restarted");
    nothing_was_committed(&repo, &lease, &record).await;
    assert!(
        repo.operation(lease.operation)
            .await
            .unwrap()
            .unwrap()
            .journal
            .is_empty()
    );
    // And it can go on.
    repo.finish_founding(&lease, &founding_rows(&record, 1))
        .await
        .unwrap();
}

/// The PIDs of a private server's processes: the postmaster and its children.
fn server_pids(postgres: &PrivatePostgres) -> Vec<String> {
    let pid_file = std::fs::read_to_string(postgres.dir.join("data/postmaster.pid")).unwrap();
    let postmaster = pid_file.lines().next().unwrap().trim().to_owned();
    let children = Command::new("pgrep")
        .args(["-P", &postmaster])
        .output()
        .unwrap();
    let mut pids = vec![postmaster];
    pids.extend(
        String::from_utf8_lossy(&children.stdout)
            .split_whitespace()
            .map(str::to_owned),
    );
    pids
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_postgres_yields_unavailable_within_the_configured_bounds() {
    let (postgres, url, repo) = repo_on_private_postgres("hung", 1, 2).await;
    migrate_everything(&url).await;
    let (lease, record) = a_founding_under_way(&repo).await;

    // The last transaction is under way: it waits for the operation's row, which another
    // session holds (well inside the server's 5 s lock_timeout)…
    let mut blocker = AsyncPgConnection::establish(&url).await.unwrap();
    lock_operation(&mut blocker, lease.operation).await;
    let started = Instant::now();
    let finishing = tokio::spawn({
        let repo = repo.clone();
        let (lease, rows) = (lease.clone(), founding_rows(&record, 1));
        async move { repo.finish_founding(&lease, &rows).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // …when the server freezes (our own processes): it accepts TCP but never answers.
    let pids = server_pids(&postgres);
    signal(&pids, "-STOP");
    unavailable(
        "the founding's last transaction on a frozen server",
        async { finishing.await.unwrap() },
    )
    .await;
    let statement_bound = started.elapsed();
    unavailable(
        "a new founding on a frozen server",
        repo.begin_founding(&founding(&cluster_record(
            "org-a",
            None,
            1,
            OffsetDateTime::now_utc(),
        ))),
    )
    .await;
    unavailable(
        "a read on a frozen server",
        repo.find_cluster(&record.org, record.id),
    )
    .await;
    unavailable(
        "renewing a lease on a frozen server",
        repo.renew_lease(&lease, "commit", LEASE),
    )
    .await;
    signal(&pids, "-CONT");

    // The statement gave up at its bound, not before and not much after.
    assert!(
        statement_bound >= Duration::from_secs(2) && statement_bound < Duration::from_secs(4),
        "the statement took {statement_bound:?} to give up"
    );
    release(&mut blocker).await;
    tokio::time::timeout(NO_HANG, async {
        while repo.ping().await.is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the repository did not recover after PostgreSQL resumed");
    // The last transaction that timed out did not commit behind plinth's back once the server
    // resumed (the outcome was unknown, so the caller reads the operation back).
    tokio::time::sleep(Duration::from_millis(300)).await;
    nothing_was_committed(&repo, &lease, &record).await;
    repo.finish_founding(&lease, &founding_rows(&record, 1))
        .await
        .unwrap();
}
