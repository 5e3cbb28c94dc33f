//! The compute service's state in PostgreSQL: subnets, security groups and rules, VMs with their
//! addresses, idempotency keys (one namespace per resource kind), listing by tag.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::{AsyncConnection, AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::alloc::{
    free_pool_ipv4, free_subnet_ipv4, free_subnet_ipv6, next_pool_ipv4, next_subnet_ipv4,
    next_subnet_ipv6,
};

/// The compute service's migrations.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

mod schema {
    diesel::table! {
        subnets (id) {
            id -> Text,
            ipv4_cidr -> Cidr,
            ipv6_cidr -> Nullable<Cidr>,
            public_pool -> Nullable<Cidr>,
            created_at -> Timestamptz,
            owner -> Text,
        }
    }
    diesel::table! {
        security_groups (id) {
            id -> Text,
            name -> Text,
            tags -> Jsonb,
            created_at -> Timestamptz,
            owner -> Text,
        }
    }
    diesel::table! {
        security_group_rules (id) {
            id -> Text,
            group_id -> Text,
            protocol -> Text,
            port -> Nullable<Int4>,
            remote_cidr -> Cidr,
            created_at -> Timestamptz,
        }
    }
    diesel::table! {
        vms (id) {
            id -> Text,
            name -> Text,
            status -> Text,
            ipv4 -> Nullable<Inet>,
            ipv6 -> Nullable<Inet>,
            public_ipv4 -> Nullable<Inet>,
            flavor -> Text,
            image -> Text,
            subnet_id -> Text,
            security_group_ids -> Array<Text>,
            tags -> Jsonb,
            user_data -> Text,
            created_at -> Timestamptz,
        }
    }
    diesel::table! {
        idempotency_keys (kind, key) {
            kind -> Text,
            key -> Text,
            request_fingerprint -> Text,
            vm_id -> Nullable<Text>,
            security_group_id -> Nullable<Text>,
            created_at -> Timestamptz,
        }
    }
}

use schema::{idempotency_keys, security_group_rules, security_groups, subnets, vms};

/// The owner of a resource every organization may use.
pub const SHARED: &str = "shared";

/// Whether `owner` is a resource owner as the contract writes one: `shared`, or an organization
/// id as plinth writes them — 1 to 128 ASCII letters, digits, `.`, `_`, `:` and `-`.
pub fn is_valid_owner(owner: &str) -> bool {
    (1..=128).contains(&owner.len())
        && owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The resource does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The resource is still used by another (a security group by a VM).
    #[error("{0}")]
    InUse(String),
    /// The request refers to something that does not exist or breaks a rule.
    #[error("{0}")]
    Invalid(String),
    /// No address is left (capacity, not the request, is the problem: retrying later, once
    /// addresses are freed, may work).
    #[error("{0}")]
    Exhausted(String),
    /// The database failed.
    #[error("database: {0}")]
    Database(String),
}

impl From<diesel::result::Error> for StoreError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Database(e.to_string())
    }
}

/// A subnet as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = subnets, check_for_backend(diesel::pg::Pg))]
pub struct Subnet {
    /// Id, e.g. `subnet-local`.
    pub id: String,
    /// IPv4 range.
    pub ipv4_cidr: IpNet,
    /// IPv6 range.
    pub ipv6_cidr: Option<IpNet>,
    /// Public IPv4 pool.
    pub public_pool: Option<IpNet>,
    /// Who may use it: `shared` or an organization id.
    pub owner: String,
}

/// A subnet to seed from configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetSeed {
    /// Id.
    pub id: String,
    /// IPv4 range.
    pub ipv4_cidr: Ipv4Net,
    /// IPv6 range.
    #[serde(default)]
    pub ipv6_cidr: Option<Ipv6Net>,
    /// Public IPv4 pool.
    #[serde(default)]
    pub public_pool: Option<Ipv4Net>,
    /// Who may use it: `shared` (the default) or an organization id.
    #[serde(default = "shared")]
    pub owner: String,
}

fn shared() -> String {
    SHARED.to_owned()
}

/// A security group as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = security_groups, check_for_backend(diesel::pg::Pg))]
pub struct SecurityGroup {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Tags (a JSON object of strings).
    pub tags: Value,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// Who may use it: `shared` or an organization id.
    pub owner: String,
}

/// A rule as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = security_group_rules, check_for_backend(diesel::pg::Pg))]
pub struct Rule {
    /// Id.
    pub id: String,
    /// Its group.
    pub group_id: String,
    /// `any`, `tcp` or `udp`.
    pub protocol: String,
    /// Port for tcp/udp.
    pub port: Option<i32>,
    /// Where traffic may come from.
    pub remote_cidr: IpNet,
}

/// A VM as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = vms, check_for_backend(diesel::pg::Pg))]
pub struct Vm {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// `running`.
    pub status: String,
    /// Private IPv4.
    pub ipv4: Option<IpNet>,
    /// IPv6.
    pub ipv6: Option<IpNet>,
    /// Public IPv4.
    pub public_ipv4: Option<IpNet>,
    /// Size.
    pub flavor: String,
    /// Image.
    pub image: String,
    /// Subnet.
    pub subnet_id: String,
    /// Groups.
    pub security_group_ids: Vec<String>,
    /// Tags.
    pub tags: Value,
    /// Userdata.
    pub user_data: String,
    /// Creation time.
    pub created_at: OffsetDateTime,
}

/// The most resources one listing by tag returns (the newest ones).
pub const LIST_LIMIT: i64 = 1000;

/// An `Idempotency-Key` and the fingerprint of the request that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    /// The key, as the caller sent it.
    pub key: String,
    /// What the request asked for; a repeat must ask for the same.
    pub fingerprint: String,
}

/// The resource kinds whose creation takes an idempotency key; each has its own key namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Vm,
    SecurityGroup,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Vm => "vm",
            Self::SecurityGroup => "security_group",
        }
    }
}

/// A VM to create.
#[derive(Debug, Clone)]
pub struct NewVm {
    /// Name.
    pub name: String,
    /// Size.
    pub flavor: String,
    /// Image.
    pub image: String,
    /// Subnet.
    pub subnet_id: String,
    /// Groups.
    pub security_group_ids: Vec<String>,
    /// Tags.
    pub tags: Value,
    /// Userdata.
    pub user_data: String,
}

/// The compute service's database.
#[derive(Clone)]
pub struct Store {
    pool: Pool<AsyncPgConnection>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("pool", &self.pool.status())
            .finish()
    }
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::new_v4().simple())
}

impl Store {
    /// A pool of `max_connections` to `url`, each wait and connect bounded by `timeout`.
    pub fn new(url: &str, max_connections: usize, timeout: Duration) -> anyhow::Result<Self> {
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build()?;
        Ok(Self { pool })
    }

    async fn conn(&self) -> Result<Object<AsyncPgConnection>, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Database(format!("no database connection: {e}")))
    }

    /// Applies the compute service's migrations (needs a multi-threaded runtime).
    pub async fn migrate(&self) -> anyhow::Result<usize> {
        let conn = self.conn().await?;
        let mut harness = AsyncMigrationHarness::new(conn);
        let applied = harness
            .run_pending_migrations(MIGRATIONS)
            .map_err(|e| anyhow::anyhow!("migrating: {e}"))?;
        Ok(applied.len())
    }

    /// Creates or updates the configured subnets.
    pub async fn seed_subnets(&self, seeds: &[SubnetSeed]) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        for seed in seeds {
            let row = (
                subnets::id.eq(&seed.id),
                subnets::ipv4_cidr.eq(IpNet::V4(seed.ipv4_cidr)),
                subnets::ipv6_cidr.eq(seed.ipv6_cidr.map(IpNet::V6)),
                subnets::public_pool.eq(seed.public_pool.map(IpNet::V4)),
                subnets::owner.eq(&seed.owner),
            );
            diesel::insert_into(subnets::table)
                .values(row)
                .on_conflict(subnets::id)
                .do_update()
                .set(row)
                .execute(&mut conn)
                .await?;
        }
        Ok(())
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        diesel::select(1.into_sql::<diesel::sql_types::Integer>())
            .get_result::<i32>(&mut conn)
            .await?;
        Ok(())
    }

    /// One subnet.
    pub async fn subnet(&self, id: &str) -> Result<Subnet, StoreError> {
        let mut conn = self.conn().await?;
        subnets::table
            .find(id)
            .select(Subnet::as_select())
            .first(&mut conn)
            .await
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("subnet {id} does not exist")))
    }

    /// One security group.
    pub async fn security_group(&self, id: &str) -> Result<SecurityGroup, StoreError> {
        let mut conn = self.conn().await?;
        security_groups::table
            .find(id)
            .select(SecurityGroup::as_select())
            .first(&mut conn)
            .await
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("security group {id} does not exist")))
    }

    /// Creates a security group without rules, belonging to `owner`. With an idempotency key, a
    /// repeat of the same request returns the group the first one made (`false`: not created
    /// now).
    pub async fn create_security_group(
        &self,
        name: &str,
        owner: &str,
        tags: Value,
        idempotency: Option<Idempotency>,
    ) -> Result<(SecurityGroup, bool), StoreError> {
        let mut conn = self.conn().await?;
        let name = name.to_owned();
        let owner = owner.to_owned();
        conn.transaction::<_, StoreError, _>(async |c| {
            if let Some(idempotency) = &idempotency
                && let Some(id) = replayed(c, Kind::SecurityGroup, idempotency).await?
            {
                let existing = security_groups::table
                    .find(&id)
                    .select(SecurityGroup::as_select())
                    .first(c)
                    .await?;
                return Ok((existing, false));
            }
            let created: SecurityGroup = diesel::insert_into(security_groups::table)
                .values((
                    security_groups::id.eq(new_id("sg")),
                    security_groups::name.eq(&name),
                    security_groups::tags.eq(&tags),
                    security_groups::owner.eq(&owner),
                ))
                .returning(SecurityGroup::as_returning())
                .get_result(c)
                .await?;
            if let Some(idempotency) = &idempotency {
                diesel::insert_into(idempotency_keys::table)
                    .values((
                        idempotency_keys::kind.eq(Kind::SecurityGroup.as_str()),
                        idempotency_keys::key.eq(&idempotency.key),
                        idempotency_keys::request_fingerprint.eq(&idempotency.fingerprint),
                        idempotency_keys::security_group_id.eq(Some(&created.id)),
                    ))
                    .execute(c)
                    .await?;
            }
            Ok((created, true))
        })
        .await
    }

    /// The newest [`LIST_LIMIT`] security groups whose tags include `key` = `value`, newest
    /// first.
    pub async fn list_security_groups(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<SecurityGroup>, StoreError> {
        let mut conn = self.conn().await?;
        Ok(security_groups::table
            .filter(security_groups::tags.contains(tag(key, value)))
            .order((
                security_groups::created_at.desc(),
                security_groups::id.desc(),
            ))
            .limit(LIST_LIMIT)
            .select(SecurityGroup::as_select())
            .load(&mut conn)
            .await?)
    }

    /// Adds an ingress rule to a group.
    pub async fn add_rule(
        &self,
        group: &str,
        protocol: &str,
        port: Option<u16>,
        remote: IpNet,
    ) -> Result<Rule, StoreError> {
        let mut conn = self.conn().await?;
        let result = diesel::insert_into(security_group_rules::table)
            .values((
                security_group_rules::id.eq(new_id("rule")),
                security_group_rules::group_id.eq(group),
                security_group_rules::protocol.eq(protocol),
                security_group_rules::port.eq(port.map(i32::from)),
                security_group_rules::remote_cidr.eq(remote.trunc()),
            ))
            .returning(Rule::as_returning())
            .get_result(&mut conn)
            .await;
        match result {
            Err(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::ForeignKeyViolation,
                _,
            )) => Err(StoreError::NotFound(format!(
                "security group {group} does not exist"
            ))),
            other => Ok(other?),
        }
    }

    /// Deletes a security group that no VM uses.
    pub async fn delete_security_group(&self, id: &str) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let id = id.to_owned();
        conn.transaction::<_, StoreError, _>(async |c| {
            let group = security_groups::table
                .find(&id)
                .select(security_groups::id)
                .for_update()
                .first::<String>(c)
                .await
                .optional()?;
            if group.is_none() {
                return Err(StoreError::NotFound(format!(
                    "security group {id} does not exist"
                )));
            }
            let users: Vec<String> = vms::table
                .filter(vms::security_group_ids.contains(vec![id.clone()]))
                .select(vms::id)
                .limit(5)
                .load(c)
                .await?;
            if !users.is_empty() {
                return Err(StoreError::InUse(format!(
                    "security group {id} is still used by {}",
                    users.join(", ")
                )));
            }
            diesel::delete(security_groups::table.find(&id))
                .execute(c)
                .await?;
            Ok(())
        })
        .await
    }

    /// Creates a VM with fresh addresses, committed before this returns. With an idempotency key,
    /// a repeat of the same request returns the VM the first one made (`false`: not created now).
    pub async fn create_vm(
        &self,
        vm: NewVm,
        idempotency: Option<Idempotency>,
    ) -> Result<(Vm, bool), StoreError> {
        let mut conn = self.conn().await?;
        conn.transaction::<_, StoreError, _>(async |c| {
            if let Some(idempotency) = &idempotency
                && let Some(id) = replayed(c, Kind::Vm, idempotency).await?
            {
                let existing = vms::table
                    .find(&id)
                    .select(Vm::as_select())
                    .first(c)
                    .await?;
                return Ok((existing, false));
            }

            // Locking the subnet row serialises address choice within the subnet.
            let subnet: Subnet = subnets::table
                .find(&vm.subnet_id)
                .select(Subnet::as_select())
                .for_update()
                .first(c)
                .await
                .optional()?
                .ok_or_else(|| {
                    StoreError::Invalid(format!("subnet {} does not exist", vm.subnet_id))
                })?;
            if !vm.security_group_ids.is_empty() {
                let known: Vec<String> = security_groups::table
                    .filter(security_groups::id.eq_any(&vm.security_group_ids))
                    .select(security_groups::id)
                    .load(c)
                    .await?;
                let missing: Vec<&String> = vm
                    .security_group_ids
                    .iter()
                    .filter(|id| !known.contains(id))
                    .collect();
                if !missing.is_empty() {
                    return Err(StoreError::Invalid(format!(
                        "security groups do not exist: {}",
                        missing
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
            let (ipv4, ipv6) = allocate_private(c, &subnet).await?;
            let public_ipv4 = allocate_public(c, &subnet).await?;
            let created: Vm = diesel::insert_into(vms::table)
                .values((
                    vms::id.eq(new_id("vm")),
                    vms::name.eq(&vm.name),
                    vms::status.eq("running"),
                    vms::ipv4.eq(Some(IpNet::from(IpAddr::V4(ipv4)))),
                    vms::ipv6.eq(ipv6.map(|ip| IpNet::from(IpAddr::V6(ip)))),
                    vms::public_ipv4.eq(public_ipv4.map(|ip| IpNet::from(IpAddr::V4(ip)))),
                    vms::flavor.eq(&vm.flavor),
                    vms::image.eq(&vm.image),
                    vms::subnet_id.eq(&vm.subnet_id),
                    vms::security_group_ids.eq(&vm.security_group_ids),
                    vms::tags.eq(&vm.tags),
                    vms::user_data.eq(&vm.user_data),
                ))
                .returning(Vm::as_returning())
                .get_result(c)
                .await?;
            if let Some(idempotency) = &idempotency {
                diesel::insert_into(idempotency_keys::table)
                    .values((
                        idempotency_keys::kind.eq(Kind::Vm.as_str()),
                        idempotency_keys::key.eq(&idempotency.key),
                        idempotency_keys::request_fingerprint.eq(&idempotency.fingerprint),
                        idempotency_keys::vm_id.eq(Some(&created.id)),
                    ))
                    .execute(c)
                    .await?;
            }
            Ok((created, true))
        })
        .await
    }

    /// One VM.
    pub async fn vm(&self, id: &str) -> Result<Vm, StoreError> {
        let mut conn = self.conn().await?;
        vms::table
            .find(id)
            .select(Vm::as_select())
            .first(&mut conn)
            .await
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("VM {id} does not exist")))
    }

    /// The newest [`LIST_LIMIT`] VMs whose tags include `key` = `value`, newest first.
    pub async fn list_vms(&self, key: &str, value: &str) -> Result<Vec<Vm>, StoreError> {
        let mut conn = self.conn().await?;
        Ok(vms::table
            .filter(vms::tags.contains(tag(key, value)))
            .order((vms::created_at.desc(), vms::id.desc()))
            .limit(LIST_LIMIT)
            .select(Vm::as_select())
            .load(&mut conn)
            .await?)
    }

    /// Deletes a VM, freeing its addresses.
    pub async fn delete_vm(&self, id: &str) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let deleted = diesel::delete(vms::table.find(id))
            .execute(&mut conn)
            .await?;
        if deleted == 0 {
            return Err(StoreError::NotFound(format!("VM {id} does not exist")));
        }
        Ok(())
    }
}

/// `{"key": "value"}`, for `tags @> …` (served by the tables' GIN indexes).
fn tag(key: &str, value: &str) -> Value {
    let mut object = serde_json::Map::new();
    object.insert(key.to_owned(), Value::String(value.to_owned()));
    Value::Object(object)
}

/// Within a transaction: waits for any other request with the same key of `kind` (a
/// transaction-scoped advisory lock serialises them; other keys proceed in parallel), then
/// returns the id of the resource an earlier request with this key made — `None` if there was
/// none. The same key with another request is `Invalid`.
async fn replayed(
    c: &mut AsyncPgConnection,
    kind: Kind,
    idempotency: &Idempotency,
) -> Result<Option<String>, StoreError> {
    let Idempotency { key, fingerprint } = idempotency;
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext('idempotency:' || $1 || ':' || $2))")
        .bind::<Text, _>(kind.as_str())
        .bind::<Text, _>(key)
        .execute(c)
        .await?;
    let earlier: Option<(String, Option<String>, Option<String>)> = idempotency_keys::table
        .find((kind.as_str(), key))
        .select((
            idempotency_keys::request_fingerprint,
            idempotency_keys::vm_id,
            idempotency_keys::security_group_id,
        ))
        .first(c)
        .await
        .optional()?;
    let Some((earlier_fingerprint, vm_id, group_id)) = earlier else {
        return Ok(None);
    };
    if &earlier_fingerprint != fingerprint {
        return Err(StoreError::Invalid(format!(
            "Idempotency-Key {key} was used with a different request"
        )));
    }
    let id = match kind {
        Kind::Vm => vm_id,
        Kind::SecurityGroup => group_id,
    };
    id.map(Some).ok_or_else(|| {
        StoreError::Database(format!(
            "idempotency key {key} of kind {} points at no resource",
            kind.as_str()
        ))
    })
}

/// The highest addresses of a subnet's VMs.
#[derive(QueryableByName)]
struct Highest {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Inet>)]
    ipv4: Option<IpNet>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Inet>)]
    ipv6: Option<IpNet>,
}

/// The highest public address in use.
#[derive(QueryableByName)]
struct HighestPublic {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Inet>)]
    public_ipv4: Option<IpNet>,
}

fn v4_of(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    }
}

fn v6_of(ip: IpAddr) -> Option<Ipv6Addr> {
    match ip {
        IpAddr::V6(ip) => Some(ip),
        IpAddr::V4(_) => None,
    }
}

async fn allocate_private(
    c: &mut AsyncPgConnection,
    subnet: &Subnet,
) -> Result<(Ipv4Addr, Option<Ipv6Addr>), StoreError> {
    let IpNet::V4(v4_range) = subnet.ipv4_cidr else {
        return Err(StoreError::Database(format!(
            "subnet {} has no IPv4 range",
            subnet.id
        )));
    };
    // Quick: the addresses after the subnet's highest ones (one index lookup each), while the
    // subnet fills from the bottom up; only past its end, the lowest free address, which reads
    // every VM of the subnet.
    let highest: Highest = diesel::sql_query(
        "SELECT max(ipv4) AS ipv4, max(ipv6) AS ipv6 FROM vms WHERE subnet_id = $1",
    )
    .bind::<Text, _>(&subnet.id)
    .get_result(c)
    .await?;
    let next_v4 = next_subnet_ipv4(v4_range, highest.ipv4.and_then(|n| v4_of(n.addr())));
    let next_v6 = match subnet.ipv6_cidr {
        Some(IpNet::V6(v6_range)) => {
            next_subnet_ipv6(v6_range, highest.ipv6.and_then(|n| v6_of(n.addr()))).map(Some)
        }
        _ => Some(None),
    };
    if let (Some(ipv4), Some(ipv6)) = (next_v4, next_v6) {
        return Ok((ipv4, ipv6));
    }
    let taken: Vec<(Option<IpNet>, Option<IpNet>)> = vms::table
        .filter(vms::subnet_id.eq(&subnet.id))
        .select((vms::ipv4, vms::ipv6))
        .load(c)
        .await?;
    let used_v4: HashSet<Ipv4Addr> = taken
        .iter()
        .filter_map(|(v4, _)| match v4.map(|n| n.addr()) {
            Some(IpAddr::V4(ip)) => Some(ip),
            _ => None,
        })
        .collect();
    let ipv4 = free_subnet_ipv4(v4_range, &used_v4).ok_or_else(|| {
        StoreError::Exhausted(format!(
            "subnet {} ({v4_range}) has no free IPv4 address left",
            subnet.id
        ))
    })?;
    let ipv6 = match subnet.ipv6_cidr {
        Some(IpNet::V6(v6_range)) => {
            let used_v6: HashSet<Ipv6Addr> = taken
                .iter()
                .filter_map(|(_, v6)| match v6.map(|n| n.addr()) {
                    Some(IpAddr::V6(ip)) => Some(ip),
                    _ => None,
                })
                .collect();
            Some(free_subnet_ipv6(v6_range, &used_v6).ok_or_else(|| {
                StoreError::Exhausted(format!(
                    "subnet {} ({v6_range}) has no free IPv6 address left",
                    subnet.id
                ))
            })?)
        }
        _ => None,
    };
    Ok((ipv4, ipv6))
}

async fn allocate_public(
    c: &mut AsyncPgConnection,
    subnet: &Subnet,
) -> Result<Option<Ipv4Addr>, StoreError> {
    let Some(IpNet::V4(pool)) = subnet.public_pool else {
        return Ok(None);
    };
    // Subnets may share a pool: serialise on the pool, not only on the subnet.
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext('public-pool:' || $1))")
        .bind::<Text, _>(pool.to_string())
        .execute(c)
        .await?;
    // Quick, as for private addresses: after the highest public address, when it is this pool's.
    let highest: HighestPublic = diesel::sql_query(
        "SELECT max(public_ipv4) AS public_ipv4 FROM vms WHERE public_ipv4 <<= $1::inet",
    )
    .bind::<Text, _>(pool.to_string())
    .get_result(c)
    .await?;
    if let Some(next) = next_pool_ipv4(pool, highest.public_ipv4.and_then(|n| v4_of(n.addr()))) {
        return Ok(Some(next));
    }
    let taken: Vec<Option<IpNet>> = vms::table
        .filter(vms::public_ipv4.is_not_null())
        .select(vms::public_ipv4)
        .load(c)
        .await?;
    let used: HashSet<Ipv4Addr> = taken
        .into_iter()
        .filter_map(|n| match n.map(|n| n.addr()) {
            Some(IpAddr::V4(ip)) if pool.contains(&ip) => Some(ip),
            _ => None,
        })
        .collect();
    free_pool_ipv4(pool, &used).map(Some).ok_or_else(|| {
        StoreError::Exhausted(format!(
            "public address pool {pool} has no free address left"
        ))
    })
}
