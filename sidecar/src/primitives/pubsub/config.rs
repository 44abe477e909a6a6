//! `[pubsub]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Pub/sub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PubSubConfig {
    /// Messages kept per durable channel, unless a retention rule says
    /// otherwise.
    pub stream_max_len: usize,
    /// How long a durable message is kept, and how long a durable channel
    /// with no publish lives on, unless a rule says otherwise; `0s`: no
    /// limit.
    #[serde(with = "crate::duration")]
    pub stream_max_age: Duration,
    /// Retention by channel glob; the first rule that matches applies, and
    /// is also the most a publish may ask for.
    pub retention: Vec<RetentionRule>,
    /// Messages (or presence events) a subscriber may fall behind by before
    /// it is told it lagged.
    pub subscriber_buffer: usize,
    /// Subscribers this sidecar serves at once.
    pub max_subscribers: usize,
    /// How long a publish's idempotency key is remembered: a repeat within
    /// it answers the first publish's offset and delivers nothing.
    #[serde(with = "crate::duration")]
    pub idempotency_window: Duration,
    /// Bytes of durable history the memory backend (and the fallback)
    /// keeps across all channels; past it, the channels published to least
    /// recently are dropped whole (their epochs end).
    pub memory_history_bytes: usize,
}

impl Default for PubSubConfig {
    fn default() -> Self {
        PubSubConfig {
            stream_max_len: 10_000,
            stream_max_age: Duration::ZERO,
            retention: vec![],
            subscriber_buffer: 1024,
            max_subscribers: 10_000,
            idempotency_window: Duration::from_secs(300),
            memory_history_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Retention for the durable channels a glob matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    /// A channel glob, `session:*` say.
    pub channels: String,
    /// Messages kept; default `pubsub.stream_max_len`.
    #[serde(default)]
    pub max_len: Option<usize>,
    /// How long a message is kept, and how long the channel lives on after
    /// its last publish; `0s` (the default): no limit.
    #[serde(default, with = "crate::duration")]
    pub max_age: Duration,
}
