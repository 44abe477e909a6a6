//! `[pubsub]`.

use serde::{Deserialize, Serialize};

/// Pub/sub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PubSubConfig {
    /// Messages kept per durable channel (Redis: `XADD MAXLEN ~`).
    pub stream_max_len: usize,
    /// Messages (or presence events) a subscriber may fall behind by before
    /// it is told it lagged.
    pub subscriber_buffer: usize,
    /// Subscribers this sidecar serves at once.
    pub max_subscribers: usize,
}

impl Default for PubSubConfig {
    fn default() -> Self {
        PubSubConfig {
            stream_max_len: 10_000,
            subscriber_buffer: 1024,
            max_subscribers: 10_000,
        }
    }
}
