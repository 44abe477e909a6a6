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
#[async_trait]
pub trait RateLimitStore: Send + Sync + 'static {
    async fn check(
        &self,
        policy: &str,
        key: &str,
        limit: &Limit,
        cost: u32,
    ) -> Result<Decision, BackendError>;
}
