//! The test app: the real actix `App` of plinth-api over mockall doubles of every port, tokens
//! signed by a key made for this test run, and a founding whose doubles fail where a test says.

use std::net::Ipv4Addr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::HeaderMap;
use actix_web::test::{TestRequest, call_service, init_service, read_body};
use actix_web::web;
use p256::elliptic_curve::Generate as _;
use p256::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
use plinth_api::auth::{AuthSettings, Authenticator};
use plinth_api::http::{AppState, app};
use plinth_domain::FoundCluster;
use plinth_domain::bootstrap::{BundleSettings, FetchBundle, ReissueToken};
use plinth_domain::credentials::IssueCredentials;
use plinth_domain::delete_cluster::{DeleteCluster, DeletionPorts};
use plinth_domain::expiry::CertificateExpiries;
use plinth_domain::found_cluster::{
    FoundingPorts, FoundingSettings, Foundings, IdempotencySettings, Leasing,
};
use plinth_domain::model::{OrgId, ReplicaId, SecretText, SecurityGroupId, VmId};
use plinth_domain::ports::compute::{
    Compute, ComputeError, MockCompute, ResourceOwner, SecurityGroup, Subnet,
};
use plinth_domain::ports::dns::MockDns;
use plinth_domain::ports::observer::Unobserved;
use plinth_domain::ports::operations::{MockOperations, Operations};
use plinth_domain::ports::pki::{MockPki, Pki, PkiError};
use plinth_domain::ports::repo::{MockRepo, RepoError, VmIdentity};
use plinth_domain::testing::{certified, cluster_ca, service_account};
use serde_json::Value;

pub const ISSUER: &str = "https://auth.test";
pub const AUDIENCE: &str = "plinth";

/// The key pair tokens are signed with in this test run.
struct SigningKey {
    private_pem: SecretText,
    public_file: std::path::PathBuf,
}

fn signing_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let key = p256::ecdsa::SigningKey::generate_from_rng(&mut rand::rng());
        let private_pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        let public_pem = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let public_file = std::env::temp_dir().join(format!(
            "plinth-api-test-{}-{}.pem",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&public_file, public_pem).unwrap();
        SigningKey {
            private_pem: SecretText::new(private_pem.as_str()),
            public_file,
        }
    })
}

pub fn auth_settings() -> AuthSettings {
    AuthSettings {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        leeway_secs: 0,
        public_key_files: vec![signing_key().public_file.clone()],
        jwks_file: None,
        jwks_url: None,
        jwks_refresh_secs: 300,
        jwks_min_refresh_interval_secs: 10,
        max_token_lifetime_secs: 86_400,
        dev_signing_key_file: None,
    }
}

/// A valid token for `org`.
pub fn token(org: &str) -> String {
    token_with(org, ISSUER, AUDIENCE, Duration::from_secs(600))
}

pub fn token_with(org: &str, issuer: &str, audience: &str, ttl: Duration) -> String {
    plinth_api::auth::mint_token(
        &signing_key().private_pem,
        issuer,
        audience,
        &OrgId::parse(org).unwrap(),
        ttl,
    )
    .unwrap()
}

/// A token with exactly these claims, signed by the test key.
pub fn token_claims(claims: &Value) -> String {
    plinth_api::jwt_crypto::install();
    let key = jsonwebtoken::EncodingKey::from_ec_pem(signing_key().private_pem.expose().as_bytes())
        .unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        claims,
        &key,
    )
    .unwrap()
}

pub fn bearer(org: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {}", token(org)))
}

/// The domain's test settings, with a short address deadline: the test of VMs that never get
/// an address waits all of it, in real time.
pub fn founding_settings() -> FoundingSettings {
    FoundingSettings {
        vm_address_deadline: Duration::from_millis(300),
        vm_address_poll_interval: Duration::from_millis(10),
        ..plinth_domain::testing::founding_settings()
    }
}

/// A double of every port; a test sets the expectations it needs (a call without one panics,
/// and the panic fails the test).
pub struct Doubles {
    pub repo: MockRepo,
    pub operations: MockOperations,
    pub compute: MockCompute,
    pub pki: MockPki,
    pub dns: Option<MockDns>,
}

impl Doubles {
    pub fn new() -> Self {
        Self {
            repo: MockRepo::new(),
            operations: MockOperations::new(),
            compute: MockCompute::new(),
            pki: MockPki::new(),
            dns: None,
        }
    }

    pub fn state(mut self) -> web::Data<AppState> {
        let compute = Arc::new(std::mem::replace(&mut self.compute, MockCompute::new()));
        self.state_with(compute, founding_settings())
    }

    /// The state over these doubles, with another compute and other settings.
    pub fn state_with(
        self,
        compute: Arc<dyn Compute>,
        settings: FoundingSettings,
    ) -> web::Data<AppState> {
        let repo = Arc::new(self.repo);
        let dns = self
            .dns
            .map(|d| Arc::new(d) as Arc<dyn plinth_domain::ports::dns::Dns>);
        let operations: Arc<dyn Operations> = Arc::new(self.operations);
        let pki: Arc<dyn Pki> = Arc::new(self.pki);
        let ports = FoundingPorts {
            repo: repo.clone(),
            operations: operations.clone(),
            compute,
            pki: pki.clone(),
            dns,
            observer: Arc::new(Unobserved),
        };
        let leasing = Leasing {
            owner: ReplicaId::new("test-replica"),
            lease: Duration::from_secs(30),
        };
        let lifetime = settings.admin_lifetime;
        let idempotency = IdempotencySettings {
            retention: Duration::from_secs(24 * 3600),
        };
        let deletions = DeleteCluster::new(
            DeletionPorts {
                repo: repo.clone(),
                operations: operations.clone(),
                compute: ports.compute.clone(),
                dns: ports.dns.clone(),
                observer: Arc::new(Unobserved),
            },
            leasing.clone(),
            settings.deadline,
            idempotency,
        );
        let tokens = ReissueToken::new(
            repo.clone(),
            settings.bootstrap_base_url.clone(),
            settings.bootstrap_ca.clone(),
            settings.bootstrap_token_ttl,
        );
        web::Data::new(AppState {
            foundings: Foundings::new(FoundCluster::new(ports, settings, leasing), idempotency),
            credentials: IssueCredentials::new(repo.clone(), pki.clone(), lifetime),
            deletions: Arc::new(deletions),
            tokens,
            expiries: CertificateExpiries::new(repo.clone(), pki),
            bootstrap_failures: plinth_api::http::failures::FailureLimiter::new(
                std::num::NonZeroU32::new(60).unwrap(),
                std::num::NonZeroU32::new(20).unwrap(),
            ),
            metrics_here: true,
            bundles: FetchBundle::new(repo.clone(), BundleSettings::default()),
            repo,
            operations,
        })
    }
}

/// An answer, read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: actix_web::web::Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The problem type's slug, e.g. `name-taken`; checks the problem+json shape on the way.
    pub fn problem(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            "application/problem+json",
            "{:?}",
            self.body
        );
        let problem = self.json();
        assert_eq!(problem["status"], self.status.as_u16(), "{problem}");
        assert!(problem["title"].is_string() && problem["detail"].is_string());
        problem["type"]
            .as_str()
            .and_then(|t| t.strip_prefix("https://plinth.dev/problems/"))
            .unwrap_or_else(|| panic!("no plinth problem type: {problem}"))
            .to_owned()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends one request through the real app over `state`.
pub async fn send(state: &web::Data<AppState>, request: TestRequest) -> Answer {
    let authenticator = web::Data::new(Authenticator::new(auth_settings()).unwrap());
    let service = init_service(app(state.clone(), authenticator)).await;
    let response = call_service(&service, request.to_request()).await;
    let status = response.status();
    let headers = response.headers().clone();
    let body = read_body(response).await;
    Answer {
        status,
        headers,
        body,
    }
}

/// `POST /clusters` with `body`, as `org-a`.
pub fn post_cluster(body: &str) -> TestRequest {
    TestRequest::post()
        .uri("/clusters")
        .insert_header(bearer("org-a"))
        .insert_header(("Content-Type", "application/json"))
        .set_payload(body.to_owned())
}

// ---- a founding whose doubles fail at one point ------------------------------------------

/// Where a founding's doubles fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fail {
    Nothing,
    CreateCa,
    ServiceAccountKey,
    /// Claiming the name: the operation and the cluster row.
    Claim(RepoFault),
    Subnet(ComputeFault),
    CreateGroup(ComputeFault),
    AddRule(ComputeFault),
    RecordGroups,
    /// The second VM creation fails.
    CreateVm(ComputeFault),
    VmLookup,
    /// No VM ever gets a private IPv4.
    NoAddresses,
    SignNodeCert,
    /// The last transaction does not commit (and the fence then holds: nothing committed).
    Commit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoFault {
    Conflict,
    Unavailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputeFault {
    NotFound,
    Rejected,
    Conflict,
    Unavailable,
    Timeout,
}

impl ComputeFault {
    fn error(self) -> ComputeError {
        match self {
            Self::NotFound => ComputeError::NotFound("no such subnet".into()),
            Self::Rejected => ComputeError::Rejected("flavor m1.huge is not offered".into()),
            Self::Conflict => ComputeError::Conflict("no free IPv4 address".into()),
            Self::Unavailable => ComputeError::Unavailable("503 from compute".into()),
            Self::Timeout => ComputeError::Timeout("no answer within 10s".into()),
        }
    }
}

fn repo_error(fault: RepoFault) -> RepoError {
    match fault {
        RepoFault::Conflict => {
            RepoError::Conflict("a cluster with this name already exists".into())
        }
        RepoFault::Unavailable => RepoError::Unavailable("connection refused".into()),
    }
}

fn when<T>(failing: bool, error: impl FnOnce() -> T) -> Result<(), T> {
    if failing { Err(error()) } else { Ok(()) }
}

/// Doubles for a founding of up to 7 nodes that stops at `fail`; the compensation succeeds
/// unless `cleanup_fails`.
pub fn founding(fail: Fail, cleanup_fails: bool) -> Doubles {
    let mut d = Doubles::new();
    d.pki
        .expect_certificate_facts()
        .returning(plinth_domain::testing::certificate_facts);
    d.pki.expect_create_cluster_ca().returning(move |_| {
        when(fail == Fail::CreateCa, || {
            PkiError::Failed("entropy".into())
        })
        .map(|()| cluster_ca())
    });
    d.pki
        .expect_create_service_account_key()
        .returning(move || {
            when(fail == Fail::ServiceAccountKey, || {
                PkiError::Failed("rsa".into())
            })
            .map(|()| service_account())
        });
    d.pki
        .expect_sign_serving_cert()
        .returning(move |_, request| {
            when(fail == Fail::SignNodeCert, || {
                PkiError::InvalidRequest("bad SAN".into())
            })
            .map(|()| certified(&request.common_name))
        });
    d.pki
        .expect_sign_client_cert()
        .returning(|_, request| Ok(certified(&request.common_name)));

    d.operations
        .expect_begin_founding()
        .returning(move |_| match fail {
            Fail::Claim(fault) => Err(repo_error(fault)),
            _ => Ok(()),
        });
    d.operations
        .expect_renew_lease()
        .returning(|_, _, _| Ok(()));
    d.operations
        .expect_store_trust_root()
        .returning(|_, _, _, _| Ok(()));
    d.operations
        .expect_record_intents()
        .returning(|_, _| Ok(()));
    d.operations
        .expect_record_created()
        .returning(|_, _, _| Ok(()));
    d.operations
        .expect_record_deleted()
        .returning(|_, _| Ok(()));
    d.operations
        .expect_record_security_groups()
        .returning(move |_, _, _| {
            when(fail == Fail::RecordGroups, || {
                repo_error(RepoFault::Unavailable)
            })
        });
    d.operations
        .expect_finish_founding()
        .returning(move |_, _| when(fail == Fail::Commit, || repo_error(RepoFault::Unavailable)));
    d.operations
        .expect_fail_operation()
        .returning(|_, _| Ok(()));
    d.repo.expect_record_dns_outcome().returning(|_, _| Ok(()));
    d.repo.expect_vm_identities().returning(move |ids| {
        when(fail == Fail::VmLookup, || {
            repo_error(RepoFault::Unavailable)
        })?;
        Ok(ids
            .iter()
            .enumerate()
            .map(|(i, id)| VmIdentity {
                id: id.clone(),
                name: id.to_string(),
                ipv4: (fail != Fail::NoAddresses)
                    .then(|| Ipv4Addr::new(127, 10, 0, 10 + u8::try_from(i).unwrap())),
                ipv6: None,
                public_ipv4: None,
            })
            .collect())
    });
    // The journal knows every resource here: the listings by the operation's tag find nothing
    // more.
    d.compute.expect_list_vms().returning(|_, _| Ok(Vec::new()));
    d.compute
        .expect_list_security_groups()
        .returning(|_, _| Ok(Vec::new()));

    d.compute.expect_subnet().returning(move |id| match fail {
        Fail::Subnet(fault) => Err(fault.error()),
        _ => Ok(Subnet {
            id: id.clone(),
            ipv4_cidr: "127.10.0.0/24".parse().unwrap(),
            ipv6_cidr: None,
            owner: ResourceOwner::Shared,
        }),
    });
    d.compute.expect_security_group().returning(|id| {
        Ok(SecurityGroup {
            id: id.clone(),
            owner: ResourceOwner::Org(OrgId::parse("org-a").unwrap()),
        })
    });
    d.compute
        .expect_create_security_group()
        .returning(move |_| match fail {
            Fail::CreateGroup(fault) => Err(fault.error()),
            _ => Ok(SecurityGroupId::parse("sg-created").unwrap()),
        });
    d.compute
        .expect_add_ingress_rule()
        .returning(move |_, _| match fail {
            Fail::AddRule(fault) => Err(fault.error()),
            _ => Ok(()),
        });
    d.compute.expect_create_vm().returning(move |vm| {
        let ordinal = &vm.tags["plinth.io/ordinal"];
        match fail {
            Fail::CreateVm(fault) if ordinal == "2" => Err(fault.error()),
            _ => Ok(VmId::parse(&format!("vm-{ordinal}")).unwrap()),
        }
    });
    d.compute
        .expect_delete_vm()
        .returning(move |_| when(cleanup_fails, || ComputeError::Unavailable("down".into())));
    d.compute
        .expect_delete_security_group()
        .returning(move |_| when(cleanup_fails, || ComputeError::Unavailable("down".into())));
    d
}
