//! plinth as real processes, for the tests of what survives a crash: a database, the compute
//! service (in this process: only plinth is killed), and any number of `plinth serve` replicas on
//! that one database, each a child process this test can SIGKILL and start again.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use plinth_compute_sim::{RunningSim, SimSettings};
use plinth_diesel_pg::testing::TestDatabase;
use plinth_testkit::{Process, free_port, wait_for_port};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{AUDIENCE, COMPUTE_TOKEN, Claims, ISSUER, Keys, ZONE, compute_get, write};

/// How a fleet runs.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// `recovery.lease_secs`.
    pub lease_secs: u64,
    /// `database.max_connections`.
    pub max_connections: u32,
    /// `database.lock_timeout_secs`.
    pub lock_timeout_secs: u64,
    /// DNS on a server that accepts and never answers: a founding holds at step 10, after its
    /// commit, for as long as `dns_timeout_ms`.
    pub dns_hangs: bool,
    /// The bound on that DNS call.
    pub dns_timeout_ms: u64,
    /// `recovery.orphan_grace_secs`.
    pub orphan_grace_secs: u64,
    /// `bootstrap.token_reuse_window_secs`.
    pub token_reuse_window_secs: u64,
    /// `founding.deadline_secs` (a deletion's bound too).
    pub deadline_secs: u64,
    /// Subnets of one organization each, seeded beside the shared `subnet-local`:
    /// (id, owner).
    pub org_subnets: Vec<(String, String)>,
    /// `limits.max_foundings_in_flight_per_org`.
    pub max_foundings_in_flight_per_org: u32,
    /// `limits.max_clusters_per_org`.
    pub max_clusters_per_org: u32,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            lease_secs: 2,
            max_connections: 16,
            lock_timeout_secs: 5,
            dns_hangs: false,
            dns_timeout_ms: 60_000,
            orphan_grace_secs: 3600,
            token_reuse_window_secs: 600,
            deadline_secs: 600,
            org_subnets: Vec::new(),
            max_foundings_in_flight_per_org: 10,
            max_clusters_per_org: 20,
        }
    }
}

/// The shared services and the configuration every replica reads.
pub struct Fleet {
    pub db: TestDatabase,
    pub sim: RunningSim,
    pub client: reqwest::Client,
    keys: Keys,
    dir: PathBuf,
    // Held open so that the DNS server "answers" nothing, for the tests that need it.
    _dns: Option<TcpListener>,
}

/// One `plinth serve` process.
pub struct Replica {
    process: Option<Process>,
    pub base: String,
}

impl Replica {
    /// SIGKILL: no shutdown, no cleanup, as a crash or an OOM kill.
    pub fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The content of the file at `/etc/kubernetes/pki/<path>` in a JSON bundle.
pub fn pki_file(bundle: &Value, path: &str) -> String {
    bundle["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == format!("/etc/kubernetes/pki/{path}"))
        .unwrap_or_else(|| panic!("no {path} in the bundle"))["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The `plinth` binary the workspace built (beside this test binary's directory).
fn plinth_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let binary = dir.join("plinth");
    assert!(
        binary.is_file(),
        "{} is missing: build the workspace first (`cargo build` or `make test`)",
        binary.display()
    );
    binary
}

impl Fleet {
    pub async fn start(options: FleetOptions) -> Self {
        plinth_api::jwt_crypto::install();
        let db = TestDatabase::create().await;
        let mut sim_settings = SimSettings::new(db.url(), COMPUTE_TOKEN);
        for (n, (id, owner)) in options.org_subnets.iter().enumerate() {
            let n = u8::try_from(n).unwrap() + 11;
            sim_settings
                .subnets
                .push(plinth_compute_sim::store::SubnetSeed {
                    id: id.clone(),
                    ipv4_cidr: ipnet::Ipv4Net::new([127, n, 0, 0].into(), 24).unwrap(),
                    ipv6_cidr: None,
                    public_pool: None,
                    owner: owner.clone(),
                });
        }
        let sim = plinth_compute_sim::start(sim_settings).await.unwrap();
        let keys = Keys::generate();
        let dir = std::env::temp_dir().join(format!(
            "plinth-fleet-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let repo_config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/default.toml");
        std::fs::copy(repo_config, dir.join("default.toml")).unwrap();
        let master = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
        let keys_file = write(&dir, "master-keys", &format!("fleet1:{master}\n"));
        let public = write(&dir, "es256.pub.pem", &keys.es256_public_pem);
        let dns = options
            .dns_hangs
            .then(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap());
        let dns_section = match &dns {
            None => "[dns]\nmode = \"disabled\"\n".to_owned(),
            Some(listener) => format!(
                "[dns]\nmode = \"powerdns\"\n[dns.powerdns]\napi_url = \"http://{}\"\n\
                 api_key = \"never-answered\"\nrequest_timeout_ms = {}\nmax_attempts = 1\n",
                listener.local_addr().unwrap(),
                options.dns_timeout_ms
            ),
        };
        let config = format!(
            r#"
[server]
shutdown_timeout_secs = 5

[log]
level = "info"

[database]
url = "{db}"
max_connections = {max_connections}
lock_timeout_secs = {lock_timeout}
migrate_on_start = true

[master_keys]
primary = "fleet1"
file = "{keys_file}"

[auth]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
public_key_files = ["{public}"]

[compute]
base_url = "{compute}"
token = "{COMPUTE_TOKEN}"
request_timeout_ms = 60000

[founding]
dns_zone = "{ZONE}"
vm_address_deadline_secs = 10
vm_address_poll_ms = 50
deadline_secs = {deadline}
# The replicas' own plain-HTTP listeners: a test fleet on loopback.
allow_insecure_bootstrap = true

[limits]
max_foundings_in_flight_per_org = {in_flight}
max_clusters_per_org = {clusters}

[bootstrap]
kubernetes_version = "v1.32.4"
image_repository = "registry.k8s.io"
etcd_image = "registry.k8s.io/etcd:3.5.16-0"
token_reuse_window_secs = {reuse}

[recovery]
lease_secs = {lease}
scan_interval_secs = 1
orphan_grace_secs = {grace}
orphan_sweep_interval_secs = 1

{dns_section}"#,
            db = db.url(),
            max_connections = options.max_connections,
            lock_timeout = options.lock_timeout_secs,
            keys_file = keys_file.display(),
            public = public.display(),
            compute = sim.base_url(),
            lease = options.lease_secs,
            grace = options.orphan_grace_secs,
            deadline = options.deadline_secs,
            reuse = options.token_reuse_window_secs,
            in_flight = options.max_foundings_in_flight_per_org,
            clusters = options.max_clusters_per_org,
        );
        write(&dir, "fleet.toml", &config);
        Self {
            db,
            sim,
            client: reqwest::Client::new(),
            keys,
            dir,
            _dns: dns,
        }
    }

    /// `plinth serve` on the fleet's configuration, listening on `port`.
    fn serve_command(&self, port: u16) -> Command {
        let mut command = Command::new(plinth_binary());
        command
            .arg("serve")
            .env("PLINTH_CONFIG_DIR", &self.dir)
            .env("PLINTH_ENV", "fleet")
            .env("PLINTH__SERVER__LISTEN", format!("127.0.0.1:{port}"));
        command
    }

    /// Runs `plinth serve` on the fleet's configuration with `overrides` (environment
    /// variables), expecting it to refuse to start: what it wrote to stderr. Panics if it is still
    /// running after 30 s.
    pub fn refused_start(&self, overrides: &[(&str, &str)]) -> String {
        let mut command = self.serve_command(free_port());
        command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (key, value) in overrides {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("plinth started with {overrides:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let output = child.wait_with_output().unwrap();
        assert!(
            !output.status.success(),
            "plinth exited 0 with {overrides:?}"
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// Starts a replica and waits until it is ready.
    pub fn spawn(&self, name: &str) -> Replica {
        let port = free_port();
        let log = self.dir.join(format!("{name}-{port}.log"));
        let mut command = self.serve_command(port);
        command.env(
            "PLINTH__FOUNDING__BOOTSTRAP_BASE_URL",
            format!("http://127.0.0.1:{port}"),
        );
        let process = Process::start(name, &mut command, &log);
        wait_for_port(Ipv4Addr::LOCALHOST.into(), port, Duration::from_secs(30));
        Replica {
            process: Some(process),
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A token for `org`.
    pub fn token(&self, org: &str) -> String {
        self.token_as(org, "e2e")
    }

    /// A token for `org` whose subject is `subject`.
    pub fn token_as(&self, org: &str, subject: &str) -> String {
        let key = EncodingKey::from_ec_pem(self.keys.es256_private_pem.as_bytes()).unwrap();
        let claims = Claims {
            sub: subject.to_owned(),
            ..Claims::valid(org)
        };
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap()
    }

    /// One request to the replica at `base` as `org`, with `headers` and a raw JSON `body`;
    /// answers the status, the headers and the body (JSON, or the text as a JSON string).
    pub async fn send(
        &self,
        base: &str,
        method: reqwest::Method,
        path: &str,
        org: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut request = self
            .client
            .request(method, format!("{base}{path}"))
            .bearer_auth(self.token(org));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body.to_owned());
        }
        let response = request.send().await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, value)
    }

    /// The userdata shim of VM `vm_id`, as the compute service holds it.
    pub async fn user_data(&self, vm_id: &str) -> String {
        let vm = compute_get(&self.client, &self.sim, &format!("/v1/vms/{vm_id}")).await;
        vm["user_data"].as_str().unwrap().to_owned()
    }

    /// A node's bundle as JSON, fetched as the node does with `token` from `url`.
    pub async fn fetch_bundle(&self, url: &str, token: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(url)
            .bearer_auth(token)
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A file in the fleet's scratch directory.
    pub fn scratch(&self, name: &str, text: &str) -> PathBuf {
        write(&self.dir, name, text)
    }

    /// Everything the replicas have logged so far.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(&self.dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "log") {
                text.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
            }
        }
        text
    }

    /// `POST /clusters` on `replica` as `org`.
    pub async fn found(&self, replica: &Replica, org: &str, body: Value) -> (StatusCode, Value) {
        self.found_as(&replica.base, org, body).await
    }

    /// `POST /clusters` on the replica at `base`, as `org-a`.
    pub async fn found_on(&self, base: &str, body: Value) -> (StatusCode, Value) {
        self.found_as(base, "org-a", body).await
    }

    async fn found_as(&self, base: &str, org: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(format!("{base}/clusters"))
            .bearer_auth(self.token(org))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Sets the compute service's fault rules (replacing all of them).
    pub async fn faults(&self, rules: Value) {
        let admin = format!("{}/admin/faults", self.sim.base_url());
        self.client
            .delete(&admin)
            .bearer_auth(COMPUTE_TOKEN)
            .send()
            .await
            .unwrap();
        let response = self
            .client
            .put(&admin)
            .bearer_auth(COMPUTE_TOKEN)
            .json(&rules)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{}",
            response.text().await.unwrap()
        );
    }

    /// How many calls the compute service saw for `operation` since its rule was set.
    pub async fn compute_calls(&self, operation: &str) -> u64 {
        let state = compute_get(&self.client, &self.sim, "/admin/faults").await;
        state[operation]["calls"].as_u64().unwrap_or(0)
    }

    /// A count over the shared database.
    pub async fn count(&self, sql: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let mut conn = self.db.connect().await;
        diesel::sql_query(format!("SELECT count(*) AS n FROM ({sql}) AS rows"))
            .get_result::<Count>(&mut conn)
            .await
            .unwrap()
            .n
    }

    /// Waits until `sql` counts `want` rows (or panics after `limit`, saying what it saw).
    pub async fn wait_for(&self, sql: &str, want: i64, limit: Duration) {
        let started = Instant::now();
        loop {
            let n = self.count(sql).await;
            if n == want {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "after {limit:?}, `{sql}` counts {n}, not {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The invariant every crash test ends on: no operation runs, no cluster is half-founded,
    /// and every VM and security group carrying a cluster's tag belongs to a ready cluster that
    /// has all of its node rows (and is that cluster's own).
    pub async fn assert_nothing_left(&self) {
        let running = self
            .count("SELECT id FROM operations WHERE state = 'running'")
            .await;
        assert_eq!(running, 0, "operations still running");
        let provisioning = self
            .count("SELECT id FROM kubeclusters WHERE status <> 'ready'")
            .await;
        assert_eq!(provisioning, 0, "clusters still provisioning");
        let stray_vms = self
            .count(
                "SELECT v.id FROM vms v WHERE NOT EXISTS (
                   SELECT 1 FROM kubeclusters k JOIN etcdnodes e ON e.cluster_id = k.id
                   JOIN apiservernodes a ON a.cluster_id = k.id AND a.ordinal = e.ordinal
                   WHERE k.id::text = v.tags->>'plinth.io/cluster-id' AND k.status = 'ready'
                     AND e.vm_id = v.id AND a.vm_id = v.id
                     AND (SELECT count(*) FROM etcdnodes x WHERE x.cluster_id = k.id)
                         = k.control_plane_count
                     AND (SELECT count(*) FROM apiservernodes y WHERE y.cluster_id = k.id)
                         = k.control_plane_count)",
            )
            .await;
        assert_eq!(stray_vms, 0, "VMs that belong to no ready cluster");
        let stray_groups = self
            .count(
                "SELECT s.id FROM security_groups s WHERE NOT EXISTS (
                   SELECT 1 FROM kubeclusters k
                   WHERE k.id::text = s.tags->>'plinth.io/cluster-id' AND k.status = 'ready'
                     AND k.created_security_group_id = s.id)",
            )
            .await;
        assert_eq!(
            stray_groups, 0,
            "security groups that belong to no ready cluster"
        );
    }

    /// Waits until every operation has ended, then checks [`Fleet::assert_nothing_left`].
    pub async fn settles(&self, limit: Duration) {
        self.wait_for(
            "SELECT id FROM operations WHERE state = 'running'",
            0,
            limit,
        )
        .await;
        self.assert_nothing_left().await;
    }

    /// A fault rule that holds every call of an operation for `ms` (after the first `after`).
    pub fn hold(after: u64, ms: u64) -> Value {
        json!({"latency_ms": ms, "after_calls": after})
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What the replicas said is the first thing to read when a test fails.
            for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "log") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(40).collect();
                    eprintln!("--- {} (last lines)", path.display());
                    for line in tail.into_iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
