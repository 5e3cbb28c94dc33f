//! The whole service for one test: a database, the compute service, optionally PowerDNS, and
//! plinth itself (configured through its real configuration loader), plus tokens and a client.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey as _;
use plinth_api::wiring::Running;
use plinth_compute_sim::faults::Operation;
use plinth_compute_sim::{RunningSim, SimSettings};
use plinth_diesel_pg::testing::TestDatabase;
use plinth_testkit::pdns::PowerDnsServer;
use plinth_testkit::{output_text, run};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

pub const ISSUER: &str = "https://auth.plinth.test";
pub const AUDIENCE: &str = "plinth";
pub use plinth_testkit::ZONE;
pub const COMPUTE_TOKEN: &str = "e2e-compute-token";

/// What DNS the stack has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dns {
    /// A running PowerDNS.
    Running,
    /// PowerDNS configured, then stopped before plinth serves.
    Stopped,
}

/// Options of a stack.
#[derive(Debug, Clone)]
pub struct Options {
    pub dns: Dns,
    /// Attempts of retry-safe compute calls (1: no retries).
    pub compute_attempts: u32,
    /// Compute fault rules from the start.
    pub faults: Vec<(Operation, Value)>,
    /// How long bootstrap tokens work.
    pub token_ttl_secs: u64,
    /// Further `[auth]` settings, TOML lines (`jwks_url = "…"`).
    pub auth: String,
    /// `server.bootstrap_refusal_burst`.
    pub refusal_burst: u32,
    /// `recovery.scan_interval_secs` and `orphan_sweep_interval_secs`: how often the background
    /// passes run (after the first, at start).
    pub background_secs: u64,
    /// Serve `/metrics` on an address of its own (`server.metrics_listen`).
    pub metrics_apart: bool,
    /// Serve the bootstrap route on its own HTTPS listener (`server.bootstrap_listen`, with a
    /// certificate for 127.0.0.1 from a CA made for the test) and found with
    /// `https://127.0.0.1:<its port>`, that CA pinned in every shim. Otherwise VMs fetch from the
    /// main listener over plain HTTP (`founding.allow_insecure_bootstrap`).
    pub bootstrap_tls: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            dns: Dns::Running,
            compute_attempts: 3,
            faults: Vec::new(),
            token_ttl_secs: 3600,
            auth: String::new(),
            refusal_burst: 20,
            background_secs: 5,
            metrics_apart: false,
            bootstrap_tls: false,
        }
    }
}

/// Signing keys of the test's token issuer.
pub struct Keys {
    pub es256_private_pem: String,
    pub es256_public_pem: String,
    pub rs256_private_pem: String,
    pub rs256_public_pem: String,
}

impl Keys {
    pub fn generate() -> Self {
        use rsa::pkcs1::EncodeRsaPrivateKey as _;
        use rsa::pkcs8::EncodePublicKey as _;
        let es = p256::ecdsa::SigningKey::from_slice(&rand::random::<[u8; 32]>()).unwrap();
        let rsa_key = rsa::PrivateKey::new(&mut rand::rng(), 2048).unwrap();
        let lf = pkcs8::LineEnding::LF;
        Self {
            es256_private_pem: es.to_pkcs8_pem(lf).unwrap().to_string(),
            es256_public_pem: es.verifying_key().to_public_key_pem(lf).unwrap(),
            rs256_private_pem: rsa_key.to_pkcs1_pem(lf).unwrap().to_string(),
            rs256_public_pem: rsa_key.to_public_key().to_public_key_pem(lf).unwrap(),
        }
    }

    /// A JWKS document holding the RSA key as `kid: rsa-1`.
    fn jwks(&self) -> Value {
        use rsa::pkcs8::DecodePublicKey as _;
        use rsa::traits::PublicKeyParts as _;
        let key = rsa::PublicKey::from_public_key_pem(&self.rs256_public_pem).unwrap();
        json!({"keys": [{
            "kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(key.n().to_be_bytes_trimmed_vartime()),
            "e": URL_SAFE_NO_PAD.encode(key.e().to_be_bytes_trimmed_vartime()),
        }]})
    }
}

/// Claims of a test token; every field can be bent.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Claims {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    pub sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    pub iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
}

pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

impl Claims {
    pub fn valid(org: &str) -> Self {
        Self {
            iss: Some(ISSUER.into()),
            aud: Some(AUDIENCE.into()),
            sub: "e2e".into(),
            org_id: Some(org.into()),
            iat: now(),
            nbf: Some(now()),
            exp: Some(now() + 600),
        }
    }
}

pub struct Stack {
    pub db: TestDatabase,
    pub sim: RunningSim,
    pub pdns: PowerDnsServer,
    pub plinth: Option<Running>,
    pub base: String,
    pub keys: Keys,
    pub client: reqwest::Client,
    /// `http://<server.metrics_listen>`, when metrics are served apart.
    pub metrics_base: Option<String>,
    /// `founding.bootstrap_base_url`: where the VMs' shims fetch from.
    pub bootstrap_base: String,
    /// The bootstrap listener's CA certificate (PEM file), with `Options::bootstrap_tls`.
    pub bootstrap_ca: Option<PathBuf>,
    dir: PathBuf,
}

/// A CA and a serving certificate for 127.0.0.1 it signed, made by plinth's own PKI and written
/// to `dir` as `<label>-ca.crt`, `<label>.crt` and `<label>.key`: (CA, certificate, key).
pub async fn serving_cert_for_loopback(dir: &Path, label: &str) -> (PathBuf, PathBuf, PathBuf) {
    use plinth_domain::model::{ClusterId, SubjectAltNames};
    use plinth_domain::ports::pki::{Pki as _, ServingCertRequest};
    let pki = plinth_x509_pki::X509Pki::new(plinth_x509_pki::PkiSettings::default()).unwrap();
    let ca = pki
        .create_cluster_ca(ClusterId::new_random())
        .await
        .unwrap()
        .root;
    let request = ServingCertRequest {
        common_name: format!("{label} on loopback"),
        sans: SubjectAltNames {
            dns_names: vec![],
            ip_addresses: vec![std::net::Ipv4Addr::LOCALHOST.into()],
        },
        client_auth: false,
    };
    let serving = pki.sign_serving_cert(&ca, &request).await.unwrap();
    (
        write(dir, &format!("{label}-ca.crt"), &ca.cert_pem),
        write(dir, &format!("{label}.crt"), &serving.cert_pem),
        write(dir, &format!("{label}.key"), serving.key_pem.expose()),
    )
}

/// `GET <path>` on the compute service at `sim`, as plinth calls it; the answer's JSON.
pub async fn compute_get(client: &reqwest::Client, sim: &RunningSim, path: &str) -> Value {
    client
        .get(format!("{}{path}", sim.base_url()))
        .bearer_auth(COMPUTE_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, text).unwrap();
    path
}

impl Stack {
    pub async fn start(options: Options) -> Self {
        plinth_api::jwt_crypto::install();
        let db = TestDatabase::create().await;
        let mut sim_settings = SimSettings::new(db.url(), COMPUTE_TOKEN);
        for (operation, rule) in &options.faults {
            sim_settings
                .faults
                .insert(*operation, serde_json::from_value(rule.clone()).unwrap());
        }
        let sim = plinth_compute_sim::start(sim_settings).await.unwrap();
        let pdns = PowerDnsServer::start();
        let keys = Keys::generate();

        let dir = std::env::temp_dir().join(format!(
            "plinth-e2e-{}-{}",
            std::process::id(),
            pdns.api_port
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let repo_config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/default.toml");
        std::fs::copy(repo_config, dir.join("default.toml")).unwrap();
        let master = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
        let keys_file = write(&dir, "master-keys", &format!("e2e1:{master}\n"));
        let es_public = write(&dir, "es256.pub.pem", &keys.es256_public_pem);
        let jwks = write(&dir, "jwks.json", &keys.jwks().to_string());
        // A known port, so the VMs' userdata points at this plinth.
        let port = plinth_testkit::free_port();
        let metrics_port = options.metrics_apart.then(plinth_testkit::free_port);
        let (bootstrap_base, bootstrap_ca, server_tls, founding_tls) = if options.bootstrap_tls {
            let bootstrap_port = plinth_testkit::free_port();
            let (ca, cert, key) = serving_cert_for_loopback(&dir, "bootstrap").await;
            let base = format!("https://127.0.0.1:{bootstrap_port}");
            (
                base.clone(),
                Some(ca.clone()),
                format!(
                    "bootstrap_listen = \"127.0.0.1:{bootstrap_port}\"\n\
                     bootstrap_tls_cert_file = \"{}\"\nbootstrap_tls_key_file = \"{}\"\n",
                    cert.display(),
                    key.display()
                ),
                format!("bootstrap_ca_file = \"{}\"\n", ca.display()),
            )
        } else {
            // Plain HTTP, on the main listener: allowed for this test stack only.
            (
                format!("http://127.0.0.1:{port}"),
                None,
                String::new(),
                "allow_insecure_bootstrap = true\n".to_owned(),
            )
        };
        let e2e = format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
shutdown_timeout_secs = 30
bootstrap_refusal_burst = {burst}
metrics_listen = "{metrics_listen}"
{server_tls}

[recovery]
lease_secs = 30
scan_interval_secs = {background}
orphan_grace_secs = 600
orphan_sweep_interval_secs = {background}

[log]
level = "warn"

[database]
url = "{db}"

[master_keys]
primary = "e2e1"
file = "{keys_file}"

[auth]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
public_key_files = ["{es_public}"]
jwks_file = "{jwks}"
{auth}

[compute]
base_url = "{compute}"
token = "{COMPUTE_TOKEN}"
max_attempts = {attempts}
request_timeout_ms = 5000

[dns]
mode = "powerdns"

[dns.powerdns]
api_url = "{pdns}"
api_key = "{pdns_key}"
ensure_zone = true
nameservers = ["ns1.{ZONE}"]
request_timeout_ms = 1000

[founding]
dns_zone = "{ZONE}"
vm_address_deadline_secs = 10
vm_address_poll_ms = 50
bootstrap_base_url = "{bootstrap_base}"
bootstrap_token_ttl_secs = {ttl}
{founding_tls}"#,
            ttl = options.token_ttl_secs,
            burst = options.refusal_burst,
            metrics_listen = metrics_port
                .map(|p| format!("127.0.0.1:{p}"))
                .unwrap_or_default(),
            background = options.background_secs,
            auth = options.auth,
            db = db.url(),
            keys_file = keys_file.display(),
            es_public = es_public.display(),
            jwks = jwks.display(),
            compute = sim.base_url(),
            attempts = options.compute_attempts,
            pdns = pdns.api_url(),
            pdns_key = pdns.api_key,
        );
        write(&dir, "e2e.toml", &e2e);
        let config = plinth_api::wiring::settings::load(&dir, Some("e2e")).unwrap();
        if options.dns == Dns::Stopped {
            // The zone is made first, so what fails later is the server being down.
            plinth_api::wiring::build(&config).await.unwrap();
            pdns.script("stop");
        }
        let plinth = plinth_api::wiring::start(config).await.unwrap();
        let base = plinth.base_url();
        Self {
            db,
            sim,
            pdns,
            plinth: Some(plinth),
            base,
            keys,
            client: reqwest::Client::new(),
            metrics_base: metrics_port.map(|p| format!("http://127.0.0.1:{p}")),
            bootstrap_base,
            bootstrap_ca,
            dir,
        }
    }

    /// An ES256 token signed by the configured PEM key.
    pub fn token(&self, org: &str) -> String {
        self.es256(&Claims::valid(org))
    }

    pub fn es256(&self, claims: &Claims) -> String {
        let key = EncodingKey::from_ec_pem(self.keys.es256_private_pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, &key).unwrap()
    }

    pub fn rs256(&self, claims: &Claims, kid: Option<&str>) -> String {
        let key = EncodingKey::from_rsa_pem(self.keys.rs256_private_pem.as_bytes()).unwrap();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(content_type) = content_type {
            request = request.header("Content-Type", content_type);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_client_error() || status.is_server_error() {
            assert_eq!(
                headers["content-type"], "application/problem+json",
                "{status} is not problem+json: {value}"
            );
            assert_eq!(value["status"], status.as_u16(), "{value}");
        }
        (status, headers, value)
    }

    pub async fn post_cluster(&self, token: &str, body: Value) -> (StatusCode, HeaderMap, Value) {
        self.request(
            reqwest::Method::POST,
            "/clusters",
            Some(token),
            Some("application/json"),
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, HeaderMap, Value) {
        self.request(reqwest::Method::GET, path, token, None, None)
            .await
    }

    /// Rows of `table` (in the shared database) matching `condition`.
    pub async fn rows(&self, table: &str, condition: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let mut conn = self.db.connect().await;
        diesel::sql_query(format!(
            "SELECT count(*) AS n FROM {table} WHERE {condition}"
        ))
        .get_result::<Count>(&mut conn)
        .await
        .unwrap()
        .n
    }

    /// Writes a file in the stack's scratch directory.
    pub fn scratch(&self, name: &str, text: &str) -> PathBuf {
        write(&self.dir, name, text)
    }

    /// Stops plinth gracefully, letting in-flight requests finish.
    pub async fn stop_plinth(&mut self) {
        if let Some(plinth) = self.plinth.take() {
            plinth.stop().await;
        }
    }
}

/// What kubectl makes of the kubeconfig `file` (`kubectl config view --raw -o json`); reading it
/// this way proves kubectl accepts the file.
pub fn kubectl_config(file: &Path) -> Value {
    let output = run(
        "kubectl",
        &[
            "config",
            "view",
            "--raw",
            "-o",
            "json",
            "--kubeconfig",
            file.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert!(
        output.status.success(),
        "kubectl config view {}: {}",
        file.display(),
        output_text(&output)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
