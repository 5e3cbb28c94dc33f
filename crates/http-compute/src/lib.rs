//! plinth's `Compute` adapter: the compute contract of DESIGN.md §5 over HTTP, with reqwest.
//!
//! Every call has a connect and a request timeout. Calls that are safe to repeat — reads,
//! deletes, and VM creation, which carries an `Idempotency-Key` — are retried on transport
//! failures, timeouts, 429 and 5xx, with jittered exponential backoff; group and rule creation
//! are not. Status codes and transport errors map to the port's `ComputeError`.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use plinth_domain::model::{SecretText, SecurityGroupId, SubnetId, VmId};
use plinth_domain::ports::compute::{
    Compute, ComputeError, IngressRule, NewSecurityGroup, NewVm, RuleProtocol, Subnet,
};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Where the compute service is and how patient to be with it.
#[derive(Debug, Clone)]
pub struct HttpComputeSettings {
    /// e.g. `https://compute.internal` or `http://127.0.0.1:8081`, without a trailing `/`.
    pub base_url: String,
    /// The bearer service token.
    pub token: SecretText,
    /// Opening a connection.
    pub connect_timeout: Duration,
    /// One request, start to end.
    pub request_timeout: Duration,
    /// Attempts of a retry-safe call, the first included.
    pub max_attempts: u32,
    /// The first backoff cap; it doubles per attempt, and a random delay up to it is waited.
    pub backoff_base: Duration,
    /// The largest backoff cap.
    pub backoff_max: Duration,
}

impl HttpComputeSettings {
    /// Defaults: 2 s to connect, 10 s per request, 3 attempts, backoff from 100 ms up to 2 s.
    pub fn new(base_url: &str, token: SecretText) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            token,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            max_attempts: 3,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
        }
    }
}

/// Why the adapter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("compute client: {0}")]
pub struct HttpComputeSetupError(String);

/// A VM as the compute service describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Vm {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// e.g. `running`.
    pub status: String,
    /// Private IPv4.
    pub ipv4: Option<String>,
    /// IPv6.
    pub ipv6: Option<String>,
    /// Public IPv4.
    pub public_ipv4: Option<String>,
    /// Size.
    pub flavor: String,
    /// Image.
    pub image: String,
    /// Subnet.
    pub subnet_id: String,
    /// Groups.
    pub security_group_ids: Vec<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Userdata.
    pub user_data: String,
}

/// The `Compute` port over HTTP.
#[derive(Debug, Clone)]
pub struct HttpCompute {
    client: reqwest::Client,
    settings: HttpComputeSettings,
}

/// Whether a call may be sent again after a failure whose outcome is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    Safe,
    Never,
}

#[derive(Serialize)]
struct NewSecurityGroupBody<'a> {
    name: &'a str,
    tags: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct NewRuleBody {
    protocol: &'static str,
    port: Option<u16>,
    remote_cidr: String,
}

#[derive(Serialize)]
struct NewVmBody<'a> {
    name: &'a str,
    flavor: &'a str,
    image: &'a str,
    subnet_id: &'a str,
    security_group_ids: Vec<&'a str>,
    tags: &'a BTreeMap<String, String>,
    user_data: &'a str,
}

#[derive(Deserialize)]
struct SubnetBody {
    id: String,
    ipv4_cidr: String,
    ipv6_cidr: Option<String>,
}

#[derive(Deserialize)]
struct IdBody {
    id: String,
}

#[derive(Deserialize)]
struct ProblemBody {
    title: Option<String>,
    detail: Option<String>,
}

/// A finished HTTP exchange.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
}

impl Answer {
    /// The server's own words: a problem's detail, else the start of the body.
    fn message(&self) -> String {
        if let Ok(problem) = serde_json::from_slice::<ProblemBody>(&self.body)
            && let Some(text) = problem.detail.or(problem.title)
        {
            return text;
        }
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        if text.is_empty() {
            self.status.to_string()
        } else {
            text.chars().take(300).collect()
        }
    }

    fn json<T: DeserializeOwned>(&self, what: &str) -> Result<T, ComputeError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ComputeError::Unexpected(format!(
                "{what}: the compute service's answer is not understood: {e}"
            ))
        })
    }
}

fn retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

impl HttpCompute {
    /// Builds the client (rustls; no system OpenSSL).
    pub fn new(settings: HttpComputeSettings) -> Result<Self, HttpComputeSetupError> {
        if !(settings.base_url.starts_with("http://") || settings.base_url.starts_with("https://"))
        {
            return Err(HttpComputeSetupError(format!(
                "base_url {:?} must start with http:// or https://",
                settings.base_url
            )));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .user_agent(concat!("plinth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HttpComputeSetupError(e.to_string()))?;
        Ok(Self { client, settings })
    }

    /// Reads a VM (with its userdata).
    pub async fn get_vm(&self, id: &VmId) -> Result<Vm, ComputeError> {
        let path = format!("/v1/vms/{id}");
        let answer = self
            .send(
                "reading a VM",
                Method::GET,
                &path,
                None::<&()>,
                None,
                Retry::Safe,
            )
            .await?;
        match answer.status {
            StatusCode::OK => answer.json("reading a VM"),
            _ => Err(self.failure("reading a VM", &answer)),
        }
    }

    /// Sends one call, retrying it when that is safe, and returns the last answer.
    async fn send<B: Serialize>(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: Option<&B>,
        idempotency_key: Option<&str>,
        retry: Retry,
    ) -> Result<Answer, ComputeError> {
        let url = format!("{}{path}", self.settings.base_url);
        let attempts = match retry {
            Retry::Safe => self.settings.max_attempts.max(1),
            Retry::Never => 1,
        };
        let mut attempt = 1;
        loop {
            let mut request = self
                .client
                .request(method.clone(), &url)
                .bearer_auth(self.settings.token.expose());
            if let Some(body) = body {
                request = request.json(body);
            }
            if let Some(key) = idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            let outcome = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    match response.bytes().await {
                        Ok(body) => Ok(Answer {
                            status,
                            body: body.to_vec(),
                        }),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            let again = attempt < attempts
                && match &outcome {
                    Ok(answer) => retryable(answer.status),
                    Err(_) => true,
                };
            if !again {
                return outcome.map_err(|e| self.transport(what, &e));
            }
            match &outcome {
                Ok(answer) => {
                    tracing::warn!(%method, path, attempt, status = %answer.status, "compute call failed; retrying")
                }
                Err(e) => {
                    tracing::warn!(%method, path, attempt, error = %e, "compute call failed; retrying")
                }
            }
            tokio::time::sleep(self.backoff(attempt)).await;
            attempt += 1;
        }
    }

    /// Full jitter: a random wait up to `base × 2^(attempt-1)`, capped.
    fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .settings
            .backoff_base
            .saturating_mul(1 << (attempt - 1).min(16))
            .min(self.settings.backoff_max);
        let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::random_range(0..=cap_ms))
    }

    fn transport(&self, what: &str, e: &reqwest::Error) -> ComputeError {
        if e.is_timeout() {
            ComputeError::Timeout(format!(
                "{what}: no answer within {:?}",
                self.settings.request_timeout
            ))
        } else if e.is_connect() || e.is_request() || e.is_body() {
            ComputeError::Unavailable(format!("{what}: {e}"))
        } else {
            ComputeError::Unexpected(format!("{what}: {e}"))
        }
    }

    /// Maps an unsuccessful answer.
    fn failure(&self, what: &str, answer: &Answer) -> ComputeError {
        let message = format!("{what}: {}", answer.message());
        match answer.status {
            StatusCode::NOT_FOUND => ComputeError::NotFound(message),
            StatusCode::CONFLICT => ComputeError::Conflict(message),
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
                ComputeError::Rejected(message)
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ComputeError::Rejected(format!(
                "{what}: the compute service refused plinth's credentials ({})",
                answer.status
            )),
            status if retryable(status) => {
                ComputeError::Unavailable(format!("{message} ({status})"))
            }
            status => ComputeError::Unexpected(format!("{message} ({status})")),
        }
    }
}

#[async_trait]
impl Compute for HttpCompute {
    async fn subnet(&self, id: &SubnetId) -> Result<Subnet, ComputeError> {
        const WHAT: &str = "reading a subnet";
        let answer = self
            .send(
                WHAT,
                Method::GET,
                &format!("/v1/subnets/{id}"),
                None::<&()>,
                None,
                Retry::Safe,
            )
            .await?;
        if answer.status != StatusCode::OK {
            return Err(self.failure(WHAT, &answer));
        }
        let body: SubnetBody = answer.json(WHAT)?;
        let bad = |field: &str, value: &str| {
            ComputeError::Unexpected(format!("{WHAT}: {field} {value:?} is not a CIDR"))
        };
        let ipv4_cidr: Ipv4Net = body
            .ipv4_cidr
            .parse()
            .map_err(|_| bad("ipv4_cidr", &body.ipv4_cidr))?;
        let ipv6_cidr: Option<Ipv6Net> = body
            .ipv6_cidr
            .as_deref()
            .map(|v| v.parse().map_err(|_| bad("ipv6_cidr", v)))
            .transpose()?;
        Ok(Subnet {
            id: SubnetId::parse(&body.id)
                .map_err(|e| ComputeError::Unexpected(format!("{WHAT}: {e}")))?,
            ipv4_cidr,
            ipv6_cidr,
        })
    }

    async fn create_security_group(
        &self,
        group: &NewSecurityGroup,
    ) -> Result<SecurityGroupId, ComputeError> {
        const WHAT: &str = "creating a security group";
        let body = NewSecurityGroupBody {
            name: &group.name,
            tags: &group.tags,
        };
        let answer = self
            .send(
                WHAT,
                Method::POST,
                "/v1/security-groups",
                Some(&body),
                None,
                Retry::Never,
            )
            .await?;
        if answer.status != StatusCode::CREATED {
            return Err(self.failure(WHAT, &answer));
        }
        let created: IdBody = answer.json(WHAT)?;
        SecurityGroupId::parse(&created.id)
            .map_err(|e| ComputeError::Unexpected(format!("{WHAT}: {e}")))
    }

    async fn add_ingress_rule(
        &self,
        group: &SecurityGroupId,
        rule: &IngressRule,
    ) -> Result<(), ComputeError> {
        const WHAT: &str = "adding a security group rule";
        let (protocol, port) = match rule.protocol {
            RuleProtocol::Any => ("any", None),
            RuleProtocol::Tcp { port } => ("tcp", Some(port)),
        };
        let body = NewRuleBody {
            protocol,
            port,
            remote_cidr: IpNet::to_string(&rule.remote),
        };
        let path = format!("/v1/security-groups/{group}/rules");
        let answer = self
            .send(WHAT, Method::POST, &path, Some(&body), None, Retry::Never)
            .await?;
        if answer.status != StatusCode::CREATED {
            return Err(self.failure(WHAT, &answer));
        }
        Ok(())
    }

    async fn create_vm(&self, vm: &NewVm) -> Result<VmId, ComputeError> {
        const WHAT: &str = "creating a VM";
        // One key for this call and all its retries: the service makes at most one VM.
        let key = uuid::Uuid::new_v4().to_string();
        let body = NewVmBody {
            name: &vm.name,
            flavor: vm.flavor.as_str(),
            image: vm.image.as_str(),
            subnet_id: vm.subnet.as_str(),
            security_group_ids: vm
                .security_groups
                .iter()
                .map(SecurityGroupId::as_str)
                .collect(),
            tags: &vm.tags,
            user_data: vm.user_data.expose(),
        };
        let answer = self
            .send(
                WHAT,
                Method::POST,
                "/v1/vms",
                Some(&body),
                Some(&key),
                Retry::Safe,
            )
            .await?;
        if !matches!(answer.status, StatusCode::CREATED | StatusCode::OK) {
            return Err(self.failure(WHAT, &answer));
        }
        let created: IdBody = answer.json(WHAT)?;
        VmId::parse(&created.id).map_err(|e| ComputeError::Unexpected(format!("{WHAT}: {e}")))
    }

    async fn delete_vm(&self, id: &VmId) -> Result<(), ComputeError> {
        const WHAT: &str = "deleting a VM";
        let path = format!("/v1/vms/{id}");
        let answer = self
            .send(WHAT, Method::DELETE, &path, None::<&()>, None, Retry::Safe)
            .await?;
        match answer.status {
            // Gone already: what a retry after a lost answer sees.
            StatusCode::NO_CONTENT | StatusCode::OK | StatusCode::NOT_FOUND => Ok(()),
            _ => Err(self.failure(WHAT, &answer)),
        }
    }

    async fn delete_security_group(&self, id: &SecurityGroupId) -> Result<(), ComputeError> {
        const WHAT: &str = "deleting a security group";
        let path = format!("/v1/security-groups/{id}");
        let answer = self
            .send(WHAT, Method::DELETE, &path, None::<&()>, None, Retry::Safe)
            .await?;
        match answer.status {
            StatusCode::NO_CONTENT | StatusCode::OK | StatusCode::NOT_FOUND => Ok(()),
            _ => Err(self.failure(WHAT, &answer)),
        }
    }
}
