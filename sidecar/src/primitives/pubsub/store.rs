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
///
/// Offsets are positions within an epoch: a channel's epoch changes when
/// its history can no longer be trusted to run on from what subscribers
/// saw (created afresh after it expired, Redis lost it or failed over to a
/// replica, the fallback's history gave way to Redis'), and every message
/// of an epoch has an offset at least the epoch's start.
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

impl Offset {
    /// The greatest offset: a bound past every message.
    pub const MAX: Offset = Offset {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    /// The offset right after this one.
    pub fn next(self) -> Offset {
        match self.seq.checked_add(1) {
            Some(seq) => Offset { ms: self.ms, seq },
            None => Offset {
                ms: self.ms.saturating_add(1),
                seq: 0,
            },
        }
    }

    /// The offset right before this one (itself at zero).
    pub fn prev(self) -> Offset {
        match (self.ms, self.seq) {
            (0, 0) => self,
            (ms, 0) => Offset {
                ms: ms - 1,
                seq: u64::MAX,
            },
            (ms, seq) => Offset { ms, seq: seq - 1 },
        }
    }
}

/// What a durable channel keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Messages kept, the newest.
    pub max_len: usize,
    /// How long a message is kept, and how long the channel lives on after
    /// its last publish.
    pub max_age: Option<std::time::Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_len: 10_000,
            max_age: None,
        }
    }
}

/// How a message is published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Publish {
    /// Also append it to the channel's stream.
    pub durable: bool,
    /// What the channel's stream keeps (durable messages).
    pub retention: Retention,
    /// A key and its window: a publish with the same key on the same
    /// channel within the window answers the first one's offset and
    /// delivers nothing.
    pub idempotency: Option<(String, std::time::Duration)>,
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Published {
    /// The durable message's offset (the first one's, for a repeat).
    pub offset: Option<Offset>,
    /// The channel's epoch (durable messages only).
    pub epoch: Option<String>,
    /// A repeat of an idempotency key: nothing was delivered.
    pub duplicate: bool,
}

/// A page of a durable channel's history, and the epoch it belongs to
/// (none for a channel that does not exist).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct History {
    pub epoch: Option<String>,
    pub messages: Vec<PubMessage>,
}

/// A subscriber catching up on a durable channel: where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume<'a> {
    /// The epoch its offset belongs to, if it knows it.
    pub epoch: Option<&'a str>,
    /// The last offset it has.
    pub after: Offset,
    /// Messages to read at most.
    pub count: usize,
    /// How long a channel that does not exist yet keeps the epoch this
    /// starts for it, without a publish.
    pub idle: std::time::Duration,
}

/// The next messages for a subscriber catching up, and whether they follow
/// on from what it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The channel's epoch now.
    pub epoch: String,
    /// The messages follow the subscriber's offset without a gap: nothing
    /// after it was trimmed, expired or lost, and it is of this epoch.
    pub recovered: bool,
    /// The messages come after this offset: the subscriber's when
    /// recovered, else possibly earlier (the epoch's start).
    pub after: Offset,
    /// Oldest first, at most `count`.
    pub messages: Vec<PubMessage>,
    /// The page was cut (by `count` or by bytes): more may follow.
    pub more: bool,
}

/// Which durable messages a history read returns: those between `from`
/// and `to` (both included), oldest or newest first, at most `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub from: Offset,
    pub to: Offset,
    pub newest_first: bool,
    pub limit: usize,
}

/// Pub/sub storage.
#[async_trait]
pub trait PubSubStore: Send + Sync + 'static {
    /// Publishes to every live subscriber (and, when durable, appends to
    /// the channel's capped stream), unless it repeats an idempotency key.
    async fn publish(&self, message: PubMessage, how: &Publish) -> Result<Published, BackendError>;

    /// A live feed of the channels and patterns, active when this returns:
    /// everything published from then on arrives.
    async fn subscribe(
        &self,
        channels: &[String],
        patterns: &[String],
    ) -> Result<Feed<std::sync::Arc<PubMessage>>, BackendError>;

    /// The durable messages of `channel` in `range`, and its epoch.
    async fn history(&self, channel: &str, range: Range) -> Result<History, BackendError>;

    /// Drops the durable messages of `channel` before `before`; returns
    /// how many.
    async fn trim(&self, channel: &str, before: Offset) -> Result<u64, BackendError>;

    /// The durable messages of `channel` after a subscriber's offset, and
    /// whether they follow on from it. Starts the channel's epoch if it
    /// has none (a subscriber waiting for its first message).
    async fn recover(&self, channel: &str, at: Resume<'_>) -> Result<Recovery, BackendError>;
}
