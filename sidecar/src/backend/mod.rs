//! The storage seam's shared parts.
//!
//! Each primitive is written once against a narrow async trait of its own
//! (`primitives::cache::store::CacheStore` for the cache) with one
//! implementation per backend, all in the primitive's folder. What they
//! share lives here:
//!
//! - [`redis`]: the Redis connection (standalone, Sentinel or Cluster; a
//!   deadline on every call; the one pub/sub connection);
//! - [`memory`]: the sweep that keeps memory stores bounded;
//! - [`circuit`]: where requests go (Redis, or this sidecar's memory while
//!   Redis is down), the prober, and reconciliation when Redis returns;
//! - live feeds ([`Feed`]) and globs ([`glob`]).
//!
//! Nothing Redis-specific crosses the seam: implementations return
//! [`BackendError`], and callers see domain types only. Nothing here knows
//! which primitives exist.

pub use crate::error::BackendError;

pub mod circuit;
pub mod glob;
pub mod memory;
pub mod redis;

impl BackendError {
    /// Whether this error means the backend is unreachable or unusable (so
    /// the failover backend should stop sending it requests).
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            BackendError::Timeout(_) | BackendError::Unavailable(_)
        )
    }
}

/// An item of a live feed: something that happened, or how much a slow
/// reader missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedItem<T> {
    Item(T),
    /// The reader fell behind; this many items were dropped for it.
    Lagged(u64),
}

/// A live feed. Dropping it ends the subscription behind it.
pub type Feed<T> = std::pin::Pin<Box<dyn futures::Stream<Item = FeedItem<T>> + Send>>;

/// Merges broadcast receivers into one [`Feed`]; `guard` lives as long as
/// the feed (it ends subscriptions when dropped).
pub(crate) fn feed_from<T: Clone + Send + 'static>(
    receivers: Vec<tokio::sync::broadcast::Receiver<T>>,
    guard: impl Send + 'static,
) -> Feed<T> {
    use futures::StreamExt;
    use tokio_stream::wrappers::BroadcastStream;
    use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

    let streams = receivers.into_iter().map(BroadcastStream::new);
    let merged = futures::stream::select_all(streams).map(move |item| {
        let _guard = &guard;
        match item {
            Ok(item) => FeedItem::Item(item),
            Err(BroadcastStreamRecvError::Lagged(n)) => FeedItem::Lagged(n),
        }
    });
    Box::pin(merged)
}
