//! `[queues]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Work queues: the defaults a request may override, and the memory
/// backend's bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueuesConfig {
    /// How long a claimed job stays invisible to other claims when the
    /// claim does not say (`visibility_ms`).
    #[serde(with = "crate::duration")]
    pub visibility: Duration,
    /// Claims a job gets before it is dead, when the enqueue does not say.
    pub max_attempts: u32,
    /// The wait after a job's first failed attempt when the enqueue does
    /// not say; it doubles per attempt up to `backoff_max`.
    #[serde(with = "crate::duration")]
    pub backoff: Duration,
    #[serde(with = "crate::duration")]
    pub backoff_max: Duration,
    /// How long a dedup id keeps a second enqueue out, from the first.
    #[serde(with = "crate::duration")]
    pub dedup_window: Duration,
    /// Most jobs the memory backend holds across its queues; an enqueue
    /// past it is refused (507).
    pub memory_max_jobs: usize,
}

impl Default for QueuesConfig {
    fn default() -> Self {
        QueuesConfig {
            visibility: Duration::from_secs(30),
            max_attempts: 5,
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            dedup_window: Duration::from_secs(3600),
            memory_max_jobs: 1_000_000,
        }
    }
}
