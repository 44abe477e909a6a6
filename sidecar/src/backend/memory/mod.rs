//! The memory backend's shared part: each primitive keeps its state inside
//! the sidecar (`primitives/<name>/memory.rs`), used when no Redis is
//! configured and while Redis is down. Everything is bounded or expires:
//! the cache by entry count and bytes (LRU), locks, permits and rate-limit
//! counters by their own TTLs, with a background sweep (started here) for
//! what nobody touches again. Semantics match the Redis backend (the
//! conformance suites check it), except that nothing is shared with other
//! sidecars.

use std::time::Duration;

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
