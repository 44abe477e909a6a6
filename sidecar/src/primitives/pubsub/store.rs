//! The pub/sub storage seam.

use async_trait::async_trait;
use bytes::Bytes;

use crate::backend::{BackendError, Feed};

/// A pub/sub message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubMessage {
    pub channel: String,
    pub payload: Bytes,
    pub headers: std::collections::BTreeMap<String, String>,
    /// Position in the channel's stream: durable messages only.
    pub offset: Option<Offset>,
}

/// A position in a durable channel: Redis stream ids (`ms-seq`), ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset {
    pub ms: u64,
    pub seq: u64,
}

impl std::fmt::Display for Offset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl std::str::FromStr for Offset {
    type Err = ();

    /// `ms-seq`, or `ms` alone (meaning `ms-0`).
    fn from_str(s: &str) -> Result<Self, ()> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(());
        }
        Ok(Offset {
            ms: ms.parse().map_err(|_| ())?,
            seq: seq.parse().map_err(|_| ())?,
        })
    }
}

/// Pub/sub storage.
#[async_trait]
pub trait PubSubStore: Send + Sync + 'static {
    /// Publishes to every live subscriber (and, when `durable`, appends to
    /// the channel's capped stream). Returns the offset of a durable
    /// message.
    async fn publish(
        &self,
        message: PubMessage,
        durable: bool,
    ) -> Result<Option<Offset>, BackendError>;

    /// A live feed of the channels and patterns, active when this returns:
    /// everything published from then on arrives.
    async fn subscribe(
        &self,
        channels: &[String],
        patterns: &[String],
    ) -> Result<Feed<std::sync::Arc<PubMessage>>, BackendError>;

    /// Up to `count` durable messages of `channel` after `after`, oldest
    /// first.
    async fn replay(
        &self,
        channel: &str,
        after: Offset,
        count: usize,
    ) -> Result<Vec<PubMessage>, BackendError>;
}
