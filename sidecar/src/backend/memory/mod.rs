//! The memory backend's shared part: each primitive keeps its state inside
//! the sidecar (`primitives/<name>/memory.rs`), used when no Redis is
//! configured and while Redis is down. Everything is bounded or expires:
//! the cache by entry count and bytes (LRU), locks, permits and rate-limit
//! counters by their own TTLs, with a background sweep (started here) for
//! what nobody touches again. Semantics match the Redis backend (the
//! conformance suites check it), except that nothing is shared with other
//! sidecars.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a store hands out after `last` (a lock fence, a cache or map
/// version): `max(last + 1, the clock in µs)`, the rule the Redis scripts
/// follow with Redis' clock. So what memory hands out, as the backend or
/// as the fallback while Redis is down, stays ordered against what Redis
/// handed out before and hands out after, as long as the clocks of this
/// host and the Redis hosts agree.
pub(crate) fn next_after(last: u64) -> u64 {
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    (last + 1).max(now_us)
}

/// How often background sweeps drop expired state.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Runs `sweep` every [`SWEEP_INTERVAL`] for as long as `target` lives.
pub(crate) fn spawn_sweep<T: Send + Sync + 'static>(target: std::sync::Weak<T>, sweep: fn(&T)) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match target.upgrade() {
                Some(target) => sweep(&target),
                None => return,
            }
        }
    });
}
