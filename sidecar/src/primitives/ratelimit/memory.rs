//! Rate limits in memory: the same three algorithms as the Redis scripts
//! (`backend/redis/*.lua`), on this sidecar's monotonic clock.
//!
//! Times are microseconds as `f64`, like the Lua side, so both round alike.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::config::{Algorithm, Limit};
use super::store::{Check, Decision, RateLimitStore, Take};
use crate::backend::BackendError;

/// Slack for float rounding when comparing times, in µs.
const EPSILON_US: f64 = 0.5;

/// Rate-limit counters in local memory.
pub struct MemoryRateLimits {
    /// Short, synchronous critical sections: a plain mutex.
    inner: Mutex<HashMap<String, Counter>>,
    /// Time zero of this store's clock (windows are aligned to it).
    epoch: Instant,
}

struct Counter {
    state: State,
    /// When the state stops mattering (the bucket is full again / the
    /// windows have passed), so the sweep can drop it.
    expires_at: Instant,
}

enum State {
    /// GCRA: the theoretical arrival time, µs on this store's clock.
    Gcra { tat: f64 },
    /// Sliding or fixed window: counts of the current window and the one
    /// before it.
    Window {
        index: i64,
        current: f64,
        previous: f64,
    },
}

fn us(d: Duration) -> f64 {
    d.as_micros() as f64
}

fn duration(us: f64) -> Duration {
    Duration::from_micros(us.max(0.0).ceil() as u64)
}

impl MemoryRateLimits {
    pub fn new() -> Arc<Self> {
        let limits = Arc::new(MemoryRateLimits {
            inner: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        });
        crate::backend::memory::spawn_sweep(Arc::downgrade(&limits), MemoryRateLimits::sweep);
        limits
    }

    pub fn sweep(&self) {
        let now = Instant::now();
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, c| c.expires_at > now);
    }

    /// Forgets every counter.
    pub fn clear(&self) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// One decision at `instant`, under the lock; with [`Take::Consume`],
    /// an allowed cost is taken.
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        counters: &mut HashMap<String, Counter>,
        instant: Instant,
        policy: &str,
        key: &str,
        limit: &Limit,
        cost: u32,
        take: Take,
    ) -> Decision {
        let now = us(instant - self.epoch);
        let id = format!("{}:{policy}:{key}", limit.algorithm.name());
        let counter = counters.get(&id).filter(|c| c.expires_at > instant);
        match limit.algorithm {
            Algorithm::Gcra => {
                let tat = match counter.map(|c| &c.state) {
                    Some(State::Gcra { tat }) => Some(*tat),
                    _ => None,
                };
                let (decision, new_tat) = gcra(tat, now, limit, cost);
                if let Some(tat) = new_tat.filter(|_| take == Take::Consume) {
                    counters.insert(
                        id,
                        Counter {
                            state: State::Gcra { tat },
                            expires_at: instant + duration(tat - now),
                        },
                    );
                }
                decision
            }
            Algorithm::SlidingWindow | Algorithm::FixedWindow => {
                let period = us(limit.period);
                let index = (now / period).floor() as i64;
                let (previous, current) = match counter.map(|c| &c.state) {
                    Some(State::Window {
                        index: i,
                        current,
                        previous,
                    }) => match index - i {
                        0 => (*previous, *current),
                        1 => (*current, 0.0),
                        _ => (0.0, 0.0),
                    },
                    _ => (0.0, 0.0),
                };
                let decision = if limit.algorithm == Algorithm::SlidingWindow {
                    sliding_window(previous, current, now, limit, cost)
                } else {
                    fixed_window(current, now, limit, cost)
                };
                if take == Take::Peek {
                    return decision;
                }
                let current = current
                    + if decision.allowed {
                        f64::from(cost)
                    } else {
                        0.0
                    };
                let window_end = (index + 1) as f64 * period;
                counters.insert(
                    id,
                    Counter {
                        state: State::Window {
                            index,
                            current,
                            previous,
                        },
                        // The current count matters until the end of the
                        // next window (as `previous`).
                        expires_at: instant + duration(window_end - now + period),
                    },
                );
                decision
            }
        }
    }
}

/// GCRA. `tat` is the stored theoretical arrival time, if any.
/// Returns the decision and the new TAT to store when allowed.
pub(crate) fn gcra(
    tat: Option<f64>,
    now: f64,
    limit: &Limit,
    cost: u32,
) -> (Decision, Option<f64>) {
    let interval = us(limit.period) / f64::from(limit.limit);
    let tolerance = interval * f64::from(limit.burst);
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat + f64::from(cost) * interval;
    let ahead = new_tat - now;
    if ahead > tolerance + EPSILON_US {
        let remaining = ((tolerance - (tat - now)) / interval + EPSILON_US / interval).floor();
        let decision = Decision {
            allowed: false,
            limit: limit.burst,
            remaining: remaining.max(0.0) as u32,
            reset_after: duration(tat - now),
            retry_after: Some(duration(ahead - tolerance)),
        };
        return (decision, None);
    }
    let remaining = ((tolerance - ahead) / interval + EPSILON_US / interval).floor();
    let decision = Decision {
        allowed: true,
        limit: limit.burst,
        remaining: remaining.max(0.0) as u32,
        reset_after: duration(ahead),
        retry_after: None,
    };
    (decision, Some(new_tat))
}

/// Sliding window (weighted two-window approximation): `previous` and
/// `current` are the counts of the window before and of the window `now`
/// falls in. Returns the decision; the caller adds `cost` to `current`
/// when allowed.
pub(crate) fn sliding_window(
    previous: f64,
    current: f64,
    now: f64,
    limit: &Limit,
    cost: u32,
) -> Decision {
    let period = us(limit.period);
    let elapsed = now - (now / period).floor() * period;
    let left = period - elapsed;
    let estimate = previous * left / period + current;
    let cost = f64::from(cost);
    let max = f64::from(limit.limit);
    if estimate + cost <= max + 1e-9 {
        let after = current + cost;
        return Decision {
            allowed: true,
            limit: limit.limit,
            remaining: (max - estimate - cost + 1e-9).floor().max(0.0) as u32,
            reset_after: duration(left + period * f64::from(u8::from(after > 0.0))),
            retry_after: None,
        };
    }
    let retry = if current + cost <= max {
        // The previous window's weight decays within this window.
        left - (max - current - cost) * period / previous
    } else {
        // Only the next window helps; there, this window's count decays.
        left + (period * (1.0 - (max - cost) / current)).max(0.0)
    };
    let reset = if current > 0.0 {
        left + period
    } else if previous > 0.0 {
        left
    } else {
        0.0
    };
    Decision {
        allowed: false,
        limit: limit.limit,
        remaining: (max - estimate + 1e-9).floor().max(0.0) as u32,
        reset_after: duration(reset),
        retry_after: Some(duration(retry)),
    }
}

/// Fixed window: `count` is the count of the window `now` falls in.
pub(crate) fn fixed_window(count: f64, now: f64, limit: &Limit, cost: u32) -> Decision {
    let period = us(limit.period);
    let left = period - (now - (now / period).floor() * period);
    let max = f64::from(limit.limit);
    let cost = f64::from(cost);
    let allowed = count + cost <= max;
    let after = if allowed { count + cost } else { count };
    Decision {
        allowed,
        limit: limit.limit,
        remaining: (max - after).max(0.0) as u32,
        reset_after: duration(if after > 0.0 { left } else { 0.0 }),
        retry_after: (!allowed).then(|| duration(left)),
    }
}

#[async_trait]
impl RateLimitStore for MemoryRateLimits {
    async fn check(
        &self,
        policy: &str,
        key: &str,
        limit: &Limit,
        cost: u32,
        take: Take,
    ) -> Result<Decision, BackendError> {
        let instant = Instant::now();
        let mut counters = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Ok(self.decide(&mut counters, instant, policy, key, limit, cost, take))
    }

    async fn check_all(&self, checks: &[Check]) -> Result<Vec<Decision>, BackendError> {
        let instant = Instant::now();
        let mut counters = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut decide = |take| -> Vec<Decision> {
            checks
                .iter()
                .map(|c| {
                    self.decide(
                        &mut counters,
                        instant,
                        &c.policy,
                        &c.key,
                        &c.limit,
                        c.cost,
                        take,
                    )
                })
                .collect()
        };
        let peeked = decide(Take::Peek);
        if !peeked.iter().all(|d| d.allowed) {
            return Ok(peeked);
        }
        // The keys are distinct and the clock is the same instant: each
        // decision is the one peeked, now taken.
        Ok(decide(Take::Consume))
    }

    async fn reset(&self, policy: &str, key: &str) -> Result<bool, BackendError> {
        let instant = Instant::now();
        let mut counters = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut found = false;
        for algorithm in Algorithm::ALL {
            let id = format!("{}:{policy}:{key}", algorithm.name());
            found |= counters.remove(&id).is_some_and(|c| c.expires_at > instant);
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(algorithm: Algorithm, limit: u32, period_ms: u64, burst: u32) -> Limit {
        Limit {
            algorithm,
            limit,
            period: Duration::from_millis(period_ms),
            burst,
        }
    }

    #[test]
    fn gcra_allows_the_burst_then_one_per_interval() {
        let l = limit(Algorithm::Gcra, 5, 60_000, 5);
        let mut tat = None;
        for expected_remaining in [4, 3, 2, 1, 0] {
            let (d, t) = gcra(tat, 0.0, &l, 1);
            assert!(d.allowed);
            assert_eq!(d.remaining, expected_remaining);
            tat = t;
        }
        let (d, t) = gcra(tat, 0.0, &l, 1);
        assert!(!d.allowed);
        assert_eq!(t, None);
        assert_eq!(d.retry_after, Some(Duration::from_secs(12)), "one interval");
        assert_eq!(d.reset_after, Duration::from_secs(60));
        // At exactly retry_after it is allowed.
        let (d, _) = gcra(tat, 12_000_000.0, &l, 1);
        assert!(d.allowed);
    }

    #[test]
    fn gcra_cost_takes_several_units() {
        let l = limit(Algorithm::Gcra, 10, 1_000, 10);
        let (d, tat) = gcra(None, 0.0, &l, 7);
        assert!(d.allowed && d.remaining == 3);
        let (d, _) = gcra(tat, 0.0, &l, 4);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 3);
        assert_eq!(d.retry_after, Some(Duration::from_millis(100)));
    }

    #[test]
    fn fixed_window_resets_at_the_window_edge() {
        let l = limit(Algorithm::FixedWindow, 2, 1_000, 2);
        assert!(fixed_window(0.0, 250_000.0, &l, 1).allowed);
        let d = fixed_window(2.0, 250_000.0, &l, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(Duration::from_millis(750)));
    }

    #[test]
    fn sliding_window_weighs_the_previous_window() {
        let l = limit(Algorithm::SlidingWindow, 10, 1_000, 10);
        // 10 in the previous window, a quarter into this one: 7.5 still count.
        let d = sliding_window(10.0, 0.0, 1_250_000.0, &l, 3);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 2);
        // 3 fit once the previous weight is 7: at 30% into the window.
        assert_eq!(d.retry_after, Some(Duration::from_millis(50)));
        assert!(sliding_window(10.0, 0.0, 1_300_000.0, &l, 3).allowed);
    }
}
