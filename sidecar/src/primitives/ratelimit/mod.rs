//! The rate-limit primitive: named policies from configuration or inline
//! limits, validated, then one backend decision per check.

pub mod config;
pub mod failover;
pub mod grpc;
pub mod http;
pub mod memory;
pub mod redis;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::Common;
use crate::error::{Error, Result};
use crate::kit::Primitive;
use crate::plugins::config::PrimitiveName;
use crate::plugins::{Call, Caller, Classified, Operation};
use crate::telemetry::{self, Metrics};
use crate::validate;
use crate::validate::Limits;
use config::PolicyConfig;
use config::{Algorithm, Limit};
use store::{Check, Decision, RateLimitStore, Take};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
}

/// Longest policy name.
const MAX_POLICY_NAME: usize = 128;

/// A limit given with the request instead of from configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineLimit {
    /// "gcra", "sliding_window" or "fixed_window".
    pub algorithm: String,
    pub limit: u32,
    pub period_ms: u64,
    /// GCRA only; 0 means `limit`.
    pub burst: u32,
}

/// Rate limits.
pub struct RateLimits {
    store: Arc<dyn RateLimitStore>,
    /// `outrigger_ratelimit_decisions`.
    decisions: Family<DecisionLabels, Counter>,
    common: Common,
    policies: BTreeMap<String, Limit>,
    limits: Limits,
    metrics: Arc<Metrics>,
}

fn parse_algorithm(name: &str) -> Result<Algorithm> {
    Algorithm::from_name(name).ok_or_else(|| {
        let names: Vec<_> = Algorithm::ALL.iter().map(|a| a.name()).collect();
        let (last, rest) = names.split_last().expect("algorithms");
        Error::InvalidArgument(format!(
            "algorithm {name:?}: expected {} or {last}",
            rest.join(", ")
        ))
    })
}

impl RateLimits {
    /// `policies` were validated with the configuration.
    pub fn new(
        store: Arc<dyn RateLimitStore>,
        policies: &BTreeMap<String, PolicyConfig>,
        limits: Limits,
        metrics: Arc<Metrics>,
        common: Common,
    ) -> Self {
        let policies = policies
            .iter()
            .filter_map(|(name, p)| p.to_limit().ok().map(|l| (name.clone(), l)))
            .collect();
        let decisions = Family::default();
        metrics.register(
            "ratelimit_decisions",
            "Rate-limit decisions by outcome (allowed, denied)",
            decisions.clone(),
        );
        RateLimits {
            store,
            decisions,
            common,
            policies,
            limits,
            metrics,
        }
    }

    /// A check for `caller`, as both APIs serve it: authorized (a plugin
    /// may rewrite the key), classified (a plugin may choose the policy, key
    /// and cost), then decided.
    pub async fn check_for(
        &self,
        caller: &Caller,
        check: Classified,
        inline: Option<InlineLimit>,
    ) -> Result<Decision> {
        let (check, inline) = self.admit(caller, Operation::Check, check, inline)?;
        self.check(&check.policy, inline, &check.key, check.cost)
            .await
    }

    /// A check or a peek through the plugins: authorized (a plugin may
    /// rewrite the key), then classified (a plugin may choose the policy,
    /// key and cost).
    fn admit(
        &self,
        caller: &Caller,
        operation: Operation,
        check: Classified,
        inline: Option<InlineLimit>,
    ) -> Result<(Classified, Option<InlineLimit>)> {
        let key = self.common.authorize(
            caller,
            Call::new(PrimitiveName::Ratelimit, operation, check.key)
                .policy(&check.policy, check.cost),
        )?;
        self.classify(caller, Classified { key, ..check }, inline)
    }

    /// Runs the plugins' `classify` chain for one check. When a plugin
    /// moves the check to another policy, an inline limit the caller gave
    /// no longer applies.
    pub fn classify(
        &self,
        caller: &Caller,
        check: Classified,
        inline: Option<InlineLimit>,
    ) -> Result<(Classified, Option<InlineLimit>)> {
        let plugins = &self.common.plugins;
        if plugins.is_empty() {
            return Ok((check, inline));
        }
        let original = check.policy.clone();
        let classified = plugins.classify(caller, check)?;
        let inline = if classified.policy == original {
            inline
        } else {
            None
        };
        Ok((classified, inline))
    }

    /// A peek for `caller`, as both APIs serve it: authorized and
    /// classified like a check (so a plugin's choices apply), then decided
    /// without taking anything.
    pub async fn peek_for(
        &self,
        caller: &Caller,
        check: Classified,
        inline: Option<InlineLimit>,
    ) -> Result<Decision> {
        let (check, inline) = self.admit(caller, Operation::Peek, check, inline)?;
        self.peek(&check.policy, inline, &check.key, check.cost)
            .await
    }

    /// A reset for `caller`, authorized first (as a delete).
    pub async fn reset_for(&self, caller: &Caller, policy: &str, key: String) -> Result<bool> {
        let key = self.common.authorize(
            caller,
            Call::new(PrimitiveName::Ratelimit, Operation::Delete, key).policy_only(policy),
        )?;
        self.reset(policy, &key).await
    }

    /// Decides whether `cost` (0 means 1) for `key` fits `policy` (or the
    /// inline limit, which then names its own counters `policy`), and takes
    /// it if it does.
    pub async fn check(
        &self,
        policy: &str,
        inline: Option<InlineLimit>,
        key: &str,
        cost: u32,
    ) -> Result<Decision> {
        let span = tracing::info_span!("outrigger.ratelimit.check", policy, key, cost);
        let decision = telemetry::observe(&self.metrics, "ratelimit", "check", span, async {
            self.decide(policy, inline, key, cost, Take::Consume).await
        })
        .await?;
        let outcome = if decision.allowed {
            "allowed"
        } else {
            "denied"
        };
        self.decisions
            .get_or_create(&DecisionLabels { decision: outcome })
            .inc();
        Ok(decision)
    }

    /// What [`RateLimits::check`] would decide now, taking nothing: the
    /// remaining units and when the limit is whole again.
    pub async fn peek(
        &self,
        policy: &str,
        inline: Option<InlineLimit>,
        key: &str,
        cost: u32,
    ) -> Result<Decision> {
        let span = tracing::info_span!("outrigger.ratelimit.peek", policy, key, cost);
        telemetry::observe(&self.metrics, "ratelimit", "peek", span, async {
            self.decide(policy, inline, key, cost, Take::Peek).await
        })
        .await
    }

    /// Forgets `key`'s state under `policy`: its whole limit is available
    /// again. Returns whether it had any.
    pub async fn reset(&self, policy: &str, key: &str) -> Result<bool> {
        let span = tracing::info_span!("outrigger.ratelimit.reset", policy, key);
        telemetry::observe(&self.metrics, "ratelimit", "reset", span, async {
            check_policy_name(policy)?;
            validate::name("key", key, &self.limits)?;
            Ok(self.store.reset(policy, key).await?)
        })
        .await
    }

    /// Several checks for `caller`, all or none: each authorized and
    /// classified like a check, then decided together.
    pub async fn check_all_for(
        &self,
        caller: &Caller,
        checks: Vec<(Classified, Option<InlineLimit>)>,
    ) -> Result<Vec<Decision>> {
        let admitted = checks
            .into_iter()
            .map(|(check, inline)| self.admit(caller, Operation::Check, check, inline))
            .collect::<Result<Vec<_>>>()?;
        self.check_all(admitted).await
    }

    /// Decides every check against the state before any of them and takes
    /// every cost only if each fits: all or none. Each check's decision
    /// says whether it fitted.
    pub async fn check_all(
        &self,
        checks: Vec<(Classified, Option<InlineLimit>)>,
    ) -> Result<Vec<Decision>> {
        let span = tracing::info_span!("outrigger.ratelimit.check_all", checks = checks.len());
        let decisions = telemetry::observe(&self.metrics, "ratelimit", "check_all", span, async {
            if checks.is_empty() {
                return Err(Error::InvalidArgument(
                    "a multi-check needs at least one check".into(),
                ));
            }
            validate::batch("checks", checks.len(), &self.limits)?;
            let mut seen = std::collections::HashSet::new();
            let mut resolved = Vec::with_capacity(checks.len());
            for (check, inline) in checks {
                let (limit, cost) = self.resolve(&check.policy, inline, &check.key, check.cost)?;
                if !seen.insert((check.policy.clone(), check.key.clone())) {
                    return Err(Error::InvalidArgument(format!(
                        "policy {:?}, key {:?} is checked twice: check it once, with the costs added",
                        check.policy, check.key
                    )));
                }
                resolved.push(Check {
                    policy: check.policy,
                    key: check.key,
                    limit,
                    cost,
                });
            }
            Ok(self.store.check_all(&resolved).await?)
        })
        .await?;
        let outcome = if decisions.iter().all(|d| d.allowed) {
            "allowed"
        } else {
            "denied"
        };
        self.decisions
            .get_or_create(&DecisionLabels { decision: outcome })
            .inc_by(decisions.len() as u64);
        Ok(decisions)
    }

    async fn decide(
        &self,
        policy: &str,
        inline: Option<InlineLimit>,
        key: &str,
        cost: u32,
        take: Take,
    ) -> Result<Decision> {
        let (limit, cost) = self.resolve(policy, inline, key, cost)?;
        Ok(self.store.check(policy, key, &limit, cost, take).await?)
    }

    /// The limit a check is decided by (the policy's, or the inline one)
    /// and its cost (0 means 1), validated.
    fn resolve(
        &self,
        policy: &str,
        inline: Option<InlineLimit>,
        key: &str,
        cost: u32,
    ) -> Result<(Limit, u32)> {
        check_policy_name(policy)?;
        validate::name("key", key, &self.limits)?;
        let limit = match inline {
            Some(inline) => PolicyConfig {
                algorithm: parse_algorithm(&inline.algorithm)?,
                limit: inline.limit,
                period: Duration::from_millis(inline.period_ms),
                burst: (inline.burst > 0).then_some(inline.burst),
            }
            .to_limit()
            .map_err(|reason| Error::InvalidArgument(format!("inline limit: {reason}")))?,
            None => *self.policies.get(policy).ok_or_else(|| {
                Error::NotFound(format!(
                    "no rate-limit policy named {policy:?} (configure [ratelimit.policies.{policy}] or pass an inline limit)"
                ))
            })?,
        };
        let cost = cost.max(1);
        let most = limit.most();
        if cost > most {
            return Err(Error::InvalidArgument(format!(
                "cost {cost} is more than the policy ever allows at once ({most}): it would never be allowed"
            )));
        }
        Ok((limit, cost))
    }
}

fn check_policy_name(policy: &str) -> Result<()> {
    if policy.is_empty() || policy.len() > MAX_POLICY_NAME {
        return Err(Error::InvalidArgument(format!(
            "policy name must be 1..={MAX_POLICY_NAME} bytes"
        )));
    }
    Ok(())
}

impl Primitive for RateLimits {
    fn common(&self) -> &Common {
        &self.common
    }
}
