//! `[ratelimit]`: named policies; the algorithms and what a limit is.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Rate limiting.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Named policies: `[ratelimit.policies.login]`.
    pub policies: BTreeMap<String, PolicyConfig>,
}

/// Rate limits while Redis is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitFallback {
    /// Local buckets at `fallback_share` of each limit.
    Local,
    /// Allow everything (counted in metrics).
    FailOpen,
    /// Answer 503 / `UNAVAILABLE`.
    FailClosed,
}

/// A rate-limit algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Token bucket in GCRA form: `burst` at once, refilled at
    /// `limit / period`.
    Gcra,
    /// At most `limit` in any window of `period` (weighted two-window
    /// approximation).
    SlidingWindow,
    /// At most `limit` per calendar window of `period`.
    FixedWindow,
}

impl Algorithm {
    pub const ALL: [Algorithm; 3] = [
        Algorithm::Gcra,
        Algorithm::SlidingWindow,
        Algorithm::FixedWindow,
    ];

    /// The algorithm called `name`, as in the configuration.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Its name in the configuration and the APIs (serde spells the same,
    /// checked by a test).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Gcra => "gcra",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::FixedWindow => "fixed_window",
        }
    }
}

/// A validated rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub algorithm: Algorithm,
    pub limit: u32,
    pub period: Duration,
    /// GCRA: how many at once. Equal to `limit` for the window algorithms.
    pub burst: u32,
}

impl Limit {
    /// The most units one decision can ever allow: the burst for GCRA, the
    /// limit for the window algorithms (what `Decision::limit` reports).
    pub fn most(&self) -> u32 {
        match self.algorithm {
            Algorithm::Gcra => self.burst,
            Algorithm::SlidingWindow | Algorithm::FixedWindow => self.limit,
        }
    }
}

/// One named rate-limit policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub algorithm: Algorithm,
    /// Requests (cost units) per `period`.
    pub limit: u32,
    #[serde(with = "crate::duration")]
    pub period: Duration,
    /// GCRA only: how many at once; defaults to `limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl PolicyConfig {
    /// The checked limit, or why it is not one.
    pub fn to_limit(&self) -> Result<Limit, String> {
        if self.limit == 0 {
            return Err("limit must be at least 1".into());
        }
        if self.period < Duration::from_millis(1) {
            return Err("period must be at least 1ms".into());
        }
        if self.period > Duration::from_secs(366 * 24 * 3600) {
            return Err("period must be at most a year".into());
        }
        let burst = match (self.algorithm, self.burst) {
            (Algorithm::Gcra, Some(0)) => return Err("burst must be at least 1".into()),
            (Algorithm::Gcra, Some(b)) => b,
            (_, Some(_)) => return Err("burst applies to the gcra algorithm only".into()),
            (_, None) => self.limit,
        };
        Ok(Limit {
            algorithm: self.algorithm,
            limit: self.limit,
            period: self.period,
            burst,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_are_the_serde_names() {
        for algorithm in Algorithm::ALL {
            let serde = serde_json::to_value(algorithm).unwrap();
            assert_eq!(serde, algorithm.name(), "{algorithm:?}");
            assert_eq!(Algorithm::from_name(algorithm.name()), Some(algorithm));
        }
    }
}
