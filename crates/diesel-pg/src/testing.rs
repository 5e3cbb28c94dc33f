//! A throwaway database per test (feature `test-support`), for this crate's tests and for other
//! crates' tests against real PostgreSQL.
//!
//! `make test` starts a PostgreSQL (`scripts/pg.sh`) and exports its admin URL in
//! `PLINTH_TEST_DATABASE_URL`. The first test to need it builds a template database holding
//! plinth's migrations and the compute service's `vms` table (under an advisory lock, as tests
//! run in parallel processes); every test then gets its own copy, dropped afterwards. Templates
//! are named after a fingerprint of the migrations, so editing one builds a fresh template.
//!
//! Migrations run through diesel's blocking harness: use a multi-threaded tokio runtime
//! (`#[tokio::test(flavor = "multi_thread")]`).

#![allow(clippy::unwrap_used)] // a harness that cannot set up must stop the test loudly

use std::time::Duration;

use diesel::sql_types::{Bool, Text};
use diesel::{QueryableByName, sql_query};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use plinth_domain::ports::repo::RepoError;
use uuid::Uuid;

use crate::errors::{query_error, timed_out};
use crate::{MIGRATIONS, PgRepo, run_migrations};

/// The variable holding the admin URL (a role that may create databases).
pub const ADMIN_URL_VAR: &str = "PLINTH_TEST_DATABASE_URL";

/// The compute service's migrations (its `vms` table), which plinth reads.
pub const COMPUTE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../compute-sim/migrations");

const TEMPLATE_LOCK: i64 = 0x706c_696e_7468; // "plinth"

/// The advisory lock plinth's migrations run under, for tests that play another replica holding
/// it.
pub const MIGRATION_LOCK: i64 = crate::MIGRATION_LOCK;

/// A database of its own for one test; dropped (forcibly) when this value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    admin_url: String,
}

#[derive(QueryableByName)]
struct Exists {
    #[diesel(sql_type = Bool)]
    exists: bool,
}

#[derive(QueryableByName)]
struct Datname {
    #[diesel(sql_type = Text)]
    datname: String,
}

impl TestDatabase {
    /// Creates a fresh, migrated database.
    pub async fn create() -> Self {
        let admin_url = admin_url();
        let template = format!("plinth_tpl_{}", env!("PLINTH_MIGRATIONS_FINGERPRINT"));
        let mut admin = connect(&admin_url).await;
        ensure_template(&mut admin, &admin_url, &template).await;
        Self::create_from(admin_url, &mut admin, &format!("TEMPLATE {template}")).await
    }

    /// Creates a fresh database with nothing in it: no migrations applied, no tables.
    pub async fn create_empty() -> Self {
        let admin_url = admin_url();
        let mut admin = connect(&admin_url).await;
        Self::create_from(admin_url, &mut admin, "").await
    }

    /// `CREATE DATABASE <a fresh name> <options>`.
    async fn create_from(admin_url: String, admin: &mut AsyncPgConnection, options: &str) -> Self {
        let name = format!("plinth_test_{}", Uuid::new_v4().simple());
        sql_query(format!("CREATE DATABASE {name} {options}"))
            .execute(admin)
            .await
            .unwrap();
        Self {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
        }
    }

    /// The URL of this test's database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A direct connection to this test's database, outside any pool.
    pub async fn connect(&self) -> AsyncPgConnection {
        connect(&self.url).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside a runtime, which cannot be blocked on: use a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut admin = connect(&admin_url).await;
                sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(_))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// Applies plinth's and the compute service's migrations to the database at `url`; returns the
/// versions applied.
pub async fn migrate_everything(url: &str) -> Vec<String> {
    let mut applied = run_migrations(Box::new(connect(url).await), MIGRATIONS)
        .await
        .unwrap();
    applied.extend(
        run_migrations(Box::new(connect(url).await), COMPUTE_MIGRATIONS)
            .await
            .unwrap(),
    );
    applied
}

#[derive(QueryableByName)]
struct Value {
    #[diesel(sql_type = Text)]
    value: String,
}

/// How long [`text_on_pool`] waits on plinth's side: far beyond any bound a test configures, so
/// that what ends a statement there is the server's own `statement_timeout` or `lock_timeout`.
const POOL_QUERY_BOUND: Duration = Duration::from_secs(30);

/// Runs `sql` on a connection of `repo`'s pool, which carries the session settings every pooled
/// connection does (`statement_timeout`, `lock_timeout`, …), and returns the `value` column (text)
/// of its one row: `SELECT current_setting('lock_timeout') AS value`, or
/// `SELECT pg_sleep(5)::text AS value` to see the server cancel a statement. Errors map as the repository's own do.
///
/// # Errors
/// As the repository's calls: `Unavailable` when the server cancels the statement, say.
pub async fn text_on_pool(repo: &PgRepo, sql: &str) -> Result<String, RepoError> {
    const DOING: &str = "running a test statement";
    let mut conn = repo.connection(DOING).await?;
    let query = sql_query(sql).get_result::<Value>(&mut *conn);
    match tokio::time::timeout(POOL_QUERY_BOUND, query).await {
        Ok(Ok(row)) => Ok(row.value),
        Ok(Err(e)) => Err(query_error(e, DOING)),
        Err(_) => Err(timed_out(DOING)),
    }
}

/// `url` with its database replaced by `database`.
pub fn url_for_database(url: &str, database: &str) -> String {
    with_database(url, database)
}

fn admin_url() -> String {
    std::env::var(ADMIN_URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{ADMIN_URL_VAR} is not set: run the tests with `make test`, or start a database \
             with `scripts/pg.sh start` and export {ADMIN_URL_VAR}=$(scripts/pg.sh url)"
        )
    })
}

async fn connect(url: &str) -> AsyncPgConnection {
    AsyncPgConnection::establish(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL ({e}); is it running?"))
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
    match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
    }
}

async fn ensure_template(admin: &mut AsyncPgConnection, admin_url: &str, template: &str) {
    sql_query(format!("SELECT pg_advisory_lock({TEMPLATE_LOCK})"))
        .execute(admin)
        .await
        .unwrap();
    let ready: Exists = sql_query(
        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1 AND datistemplate) AS exists",
    )
    .bind::<Text, _>(template)
    .get_result(admin)
    .await
    .unwrap();
    if !ready.exists {
        // Templates of older migration sets, and a half-built one of this set.
        let stale: Vec<Datname> =
            sql_query("SELECT datname FROM pg_database WHERE datname LIKE 'plinth\\_tpl\\_%'")
                .load(admin)
                .await
                .unwrap();
        for Datname { datname } in stale {
            sql_query(format!("ALTER DATABASE {datname} IS_TEMPLATE false"))
                .execute(admin)
                .await
                .unwrap();
            sql_query(format!("DROP DATABASE {datname} WITH (FORCE)"))
                .execute(admin)
                .await
                .unwrap();
        }
        sql_query(format!("CREATE DATABASE {template}"))
            .execute(admin)
            .await
            .unwrap();
        migrate_everything(&with_database(admin_url, template)).await;
        sql_query(format!("ALTER DATABASE {template} IS_TEMPLATE true"))
            .execute(admin)
            .await
            .unwrap();
    }
    sql_query(format!("SELECT pg_advisory_unlock({TEMPLATE_LOCK})"))
        .execute(admin)
        .await
        .unwrap();
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_is_replaced_in_a_url() {
        assert_eq!(
            with_database("postgres://u:p@127.0.0.1:5432/postgres", "t1"),
            "postgres://u:p@127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/postgres?sslmode=disable", "t1"),
            "postgres://u:p@h/t1?sslmode=disable"
        );
    }
}
