//! `[maps]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Maps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapsConfig {
    /// Most fields one map holds; a write that would pass it is refused
    /// (409 `conflict`), nothing of it applied.
    pub max_fields: usize,
    /// How often this sidecar takes expired fields out of maps (and
    /// announces them): with Redis, the bound on how late after its expiry
    /// a field's memory is reclaimed and its `expired` event sent. Reads
    /// never see an expired field, reaped or not.
    #[serde(with = "crate::duration")]
    pub reap_interval: Duration,
}

impl Default for MapsConfig {
    fn default() -> Self {
        MapsConfig {
            max_fields: 100_000,
            reap_interval: Duration::from_millis(250),
        }
    }
}
