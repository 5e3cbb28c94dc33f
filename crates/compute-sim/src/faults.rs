//! Fault injection: per operation, added latency and failures (after the n-th call, a number of
//! times, with a probability, before or after the operation takes effect).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The operations faults can be injected into.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// `GET /v1/subnets/{id}`
    GetSubnet,
    /// `POST /v1/security-groups`
    CreateSecurityGroup,
    /// `POST /v1/security-groups/{id}/rules`
    AddRule,
    /// `DELETE /v1/security-groups/{id}`
    DeleteSecurityGroup,
    /// `GET /v1/security-groups/{id}`
    GetSecurityGroup,
    /// `POST /v1/vms`
    CreateVm,
    /// `GET /v1/vms/{id}`
    GetVm,
    /// `DELETE /v1/vms/{id}`
    DeleteVm,
    /// `GET /v1/vms?tag=<key>=<value>`
    ListVms,
    /// `GET /v1/security-groups?tag=<key>=<value>`
    ListSecurityGroups,
}

fn certain() -> f64 {
    1.0
}

/// What to do to an operation's calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// Delay added to every call, in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// Fail with this HTTP status (400–599); none: only the latency.
    #[serde(default)]
    pub status: Option<u16>,
    /// The first this-many calls are spared: no latency, no failure (so a test can let `k`
    /// VM creations through and hold the rest).
    #[serde(default)]
    pub after_calls: u64,
    /// Fail at most this many calls; none: every call after `after_calls`.
    #[serde(default)]
    pub times: Option<u64>,
    /// Chance that an eligible call fails, 0 to 1.
    #[serde(default = "certain")]
    pub probability: f64,
    /// Fail after the operation took effect (the work is done, the answer is lost), as when a
    /// response is cut off; otherwise fail before touching anything.
    #[serde(default)]
    pub after_effect: bool,
}

impl FaultRule {
    /// Checks the rule; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(status) = self.status
            && !(400..=599).contains(&status)
        {
            return Err(format!("status must be between 400 and 599, got {status}"));
        }
        if !(0.0..=1.0).contains(&self.probability) {
            return Err(format!(
                "probability must be between 0 and 1, got {}",
                self.probability
            ));
        }
        if self.latency_ms > 120_000 {
            return Err("latency_ms must be at most 120000".into());
        }
        Ok(())
    }
}

/// A rule with its counters, as the admin endpoint shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FaultState {
    /// The rule.
    pub rule: FaultRule,
    /// Calls seen since the rule was set.
    pub calls: u64,
    /// Calls failed since the rule was set.
    pub failures: u64,
}

/// What a call must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go on normally.
    Proceed,
    /// Fail with this status without doing anything.
    FailBefore(u16),
    /// Do the work, then fail with this status.
    FailAfter(u16),
}

/// The live fault rules of a running service.
#[derive(Debug, Default)]
pub struct Faults {
    rules: Mutex<BTreeMap<Operation, FaultState>>,
}

impl Faults {
    /// Starts with `rules`.
    pub fn new(rules: BTreeMap<Operation, FaultRule>) -> Self {
        let faults = Self::default();
        for (operation, rule) in rules {
            faults.set(operation, Some(rule));
        }
        faults
    }

    /// Sets (or, with `None`, removes) the rule of one operation; counters restart.
    pub fn set(&self, operation: Operation, rule: Option<FaultRule>) {
        let mut rules = self.lock();
        match rule {
            Some(rule) => {
                rules.insert(
                    operation,
                    FaultState {
                        rule,
                        calls: 0,
                        failures: 0,
                    },
                );
            }
            None => {
                rules.remove(&operation);
            }
        }
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// The rules and their counters.
    pub fn snapshot(&self) -> BTreeMap<Operation, FaultState> {
        self.lock().clone()
    }

    /// Counts a call, waits its latency, and says whether it fails.
    pub async fn enter(&self, operation: Operation) -> Verdict {
        let (latency, verdict) = {
            let mut rules = self.lock();
            let Some(state) = rules.get_mut(&operation) else {
                return Verdict::Proceed;
            };
            state.calls += 1;
            let rule = &state.rule;
            let eligible = state.calls > rule.after_calls
                && rule.times.is_none_or(|times| state.failures < times)
                && rand::random::<f64>() < rule.probability;
            let verdict = match rule.status {
                Some(status) if eligible => {
                    state.failures += 1;
                    if rule.after_effect {
                        Verdict::FailAfter(status)
                    } else {
                        Verdict::FailBefore(status)
                    }
                }
                _ => Verdict::Proceed,
            };
            let latency = if state.calls > rule.after_calls {
                Duration::from_millis(rule.latency_ms)
            } else {
                Duration::ZERO
            };
            (latency, verdict)
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        verdict
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Operation, FaultState>> {
        // A panic while holding this lock cannot leave the map half-updated.
        self.rules
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing(after_calls: u64, times: Option<u64>) -> FaultRule {
        FaultRule {
            latency_ms: 0,
            status: Some(503),
            after_calls,
            times,
            probability: 1.0,
            after_effect: false,
        }
    }

    #[tokio::test]
    async fn the_nth_call_fails_a_set_number_of_times() {
        let faults = Faults::default();
        faults.set(Operation::CreateVm, Some(failing(2, Some(1))));
        let mut verdicts = Vec::new();
        for _ in 0..5 {
            verdicts.push(faults.enter(Operation::CreateVm).await);
        }
        use Verdict::*;
        assert_eq!(
            verdicts,
            [Proceed, Proceed, FailBefore(503), Proceed, Proceed]
        );
        assert_eq!(faults.enter(Operation::GetVm).await, Proceed);
        let state = &faults.snapshot()[&Operation::CreateVm];
        assert_eq!((state.calls, state.failures), (5, 1));
    }

    #[tokio::test]
    async fn after_effect_failures_and_probability() {
        let faults = Faults::default();
        faults.set(
            Operation::DeleteVm,
            Some(FaultRule {
                after_effect: true,
                ..failing(0, None)
            }),
        );
        assert_eq!(
            faults.enter(Operation::DeleteVm).await,
            Verdict::FailAfter(503)
        );
        faults.set(
            Operation::DeleteVm,
            Some(FaultRule {
                probability: 0.0,
                ..failing(0, None)
            }),
        );
        for _ in 0..20 {
            assert_eq!(faults.enter(Operation::DeleteVm).await, Verdict::Proceed);
        }
        faults.clear();
        assert!(faults.snapshot().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn latency_is_added_to_every_call() {
        let faults = Faults::default();
        faults.set(
            Operation::GetSubnet,
            Some(FaultRule {
                latency_ms: 250,
                status: None,
                ..failing(0, None)
            }),
        );
        let started = tokio::time::Instant::now();
        assert_eq!(faults.enter(Operation::GetSubnet).await, Verdict::Proceed);
        assert_eq!(started.elapsed(), Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn spared_calls_get_no_latency_either() {
        let faults = Faults::default();
        faults.set(
            Operation::CreateVm,
            Some(FaultRule {
                latency_ms: 1_000,
                status: None,
                ..failing(2, None)
            }),
        );
        let started = tokio::time::Instant::now();
        faults.enter(Operation::CreateVm).await;
        faults.enter(Operation::CreateVm).await;
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "the first two are spared"
        );
        faults.enter(Operation::CreateVm).await;
        assert_eq!(started.elapsed(), Duration::from_millis(1_000));
    }

    #[test]
    fn impossible_rules_are_refused_with_the_field() {
        let bad = FaultRule {
            status: Some(200),
            ..failing(0, None)
        };
        assert!(bad.validate().unwrap_err().contains("status"));
        let bad = FaultRule {
            probability: 1.5,
            ..failing(0, None)
        };
        assert!(bad.validate().unwrap_err().contains("probability"));
    }
}
