//! `[presence]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Presence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceConfig {
    /// How often this sidecar takes timed-out members out of the rooms it
    /// watches or joined members to: the bound on how late a timeout is
    /// noticed after a member's TTL runs out.
    #[serde(with = "crate::duration")]
    pub reap_interval: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            reap_interval: Duration::from_millis(250),
        }
    }
}
