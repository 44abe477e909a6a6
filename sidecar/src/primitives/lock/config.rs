//! Lock settings: what locks do while Redis is down (`failover.locks`).

use serde::{Deserialize, Serialize};

/// Locks while Redis is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockFallback {
    /// Answer 503 / `UNAVAILABLE`: no lock is better than a lock that
    /// another sidecar can also take.
    FailClosed,
    /// Lock in this sidecar's memory only. Unsafe across instances: two
    /// sidecars can hold "the same" lock. Released when Redis returns.
    Local,
}
