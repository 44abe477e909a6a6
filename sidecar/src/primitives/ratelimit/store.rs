//! The rate-limit storage seam.

use std::time::Duration;

use async_trait::async_trait;

use super::config::Limit;
use crate::backend::BackendError;

/// One rate-limit decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// GCRA: the burst; windows: the limit.
    pub limit: u32,
    pub remaining: u32,
    /// Until the whole limit is available again.
    pub reset_after: Duration,
    /// When denied: until the same cost can be allowed.
    pub retry_after: Option<Duration>,
}

/// Rate-limit counters. `cost` arrives validated: 1 ..= what the limit can
/// ever allow (the burst for GCRA, the limit for windows).
/// Whether a decision takes what it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// A check: an allowed cost is taken.
    Consume,
    /// A peek: the same decision, nothing taken.
    Peek,
}

/// One check of a [`RateLimitStore::check_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub policy: String,
    pub key: String,
    pub limit: Limit,
    pub cost: u32,
}

#[async_trait]
pub trait RateLimitStore: Send + Sync + 'static {
    /// Decides whether `cost` fits now; with [`Take::Consume`], takes it if
    /// it does.
    async fn check(
        &self,
        policy: &str,
        key: &str,
        limit: &Limit,
        cost: u32,
        take: Take,
    ) -> Result<Decision, BackendError>;

    /// Decides every check against the state before any of them, and takes
    /// every cost only if each fits: all or none. No (policy, key) appears
    /// twice. Returns each check's decision: what was taken when all fit,
    /// what would have been otherwise (then `allowed` tells which did not).
    async fn check_all(&self, checks: &[Check]) -> Result<Vec<Decision>, BackendError>;

    /// Forgets `key`'s state under `policy` (every algorithm's): the whole
    /// limit is available again. Returns whether there was any.
    async fn reset(&self, policy: &str, key: &str) -> Result<bool, BackendError>;
}
