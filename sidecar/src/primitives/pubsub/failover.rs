//! Pub/sub behind the failover circuit: Redis while it answers; while it
//! does not, publishes reach this sidecar's subscribers at once and are
//! buffered for Redis (`failover.pubsub = "local"`, the default), or are
//! refused (`"fail"`). When Redis returns, the buffer is flushed in order
//! after `failover.flush_delay` (so subscribers on other sidecars have
//! resubscribed); publishes arriving meanwhile queue behind it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;

use super::memory::MemoryPubSub;
use super::redis::RedisPubSub;
use super::store::{
    History, Offset, PubMessage, PubSubStore, Publish, Published, Range, Recovery, Resume,
};
use crate::backend::circuit::{Circuit, Reconcile, Reconciliation, WhileDown, lock};
use crate::backend::{BackendError, Feed, FeedItem};

/// Header marking a message flushed to Redis after an outage, with the id
/// of the sidecar that delivered it locally already (its own subscribers
/// skip the Redis copy; everyone else gets it without the header).
const FLUSHED_BY: &str = "outrigger-flushed-by";

/// How pub/sub behaves while Redis is down.
#[derive(Debug, Clone)]
pub struct Buffering {
    pub down: WhileDown,
    /// Publishes kept for Redis; more are dropped (and counted).
    pub capacity: usize,
    /// Pause between Redis' return and the flush.
    pub flush_delay: Duration,
}

#[derive(Default)]
struct Outbox {
    queue: VecDeque<(PubMessage, Publish)>,
    /// Set from recovery until the queue is flushed: new publishes queue
    /// behind the buffered ones to keep the order.
    flushing: bool,
    dropped: u64,
}

/// Pub/sub in Redis, with a memory fallback.
pub struct FailoverPubSub {
    circuit: Arc<Circuit>,
    redis: RedisPubSub,
    memory: MemoryPubSub,
    buffering: Buffering,
    /// A std mutex: short, synchronous updates only.
    outbox: Mutex<Outbox>,
    instance: String,
}

impl FailoverPubSub {
    /// The fallback: `memory`, which should be a fresh store.
    pub fn new(circuit: Arc<Circuit>, buffering: Buffering, memory: MemoryPubSub) -> Arc<Self> {
        let store = Arc::new(FailoverPubSub {
            redis: RedisPubSub::new(circuit.redis().clone()),
            memory,
            circuit,
            buffering,
            outbox: Mutex::new(Outbox::default()),
            instance: format!("{:016x}", rand::random::<u64>()),
        });
        store.circuit.register(Arc::downgrade(&store) as _);
        store
    }

    /// Flushes buffered publishes to Redis, in order.
    async fn flush(&self) {
        tokio::time::sleep(self.buffering.flush_delay).await;
        let (mut flushed, mut dropped) = (0, 0);
        loop {
            let next = {
                let mut outbox = lock(&self.outbox);
                match outbox.queue.pop_front() {
                    Some(item) => item,
                    None => {
                        outbox.flushing = false;
                        break;
                    }
                }
            };
            match self.redis.publish(next.0.clone(), &next.1).await {
                Ok(_) => flushed += 1,
                Err(err) if err.is_outage() => {
                    // Gone again: keep it for the next recovery.
                    lock(&self.outbox).queue.push_front(next);
                    self.circuit.trip(&err);
                    break;
                }
                Err(err) => {
                    dropped += 1;
                    tracing::warn!(channel = %next.0.channel, error = %err, "dropped a buffered publish");
                }
            }
        }
        let flushing = lock(&self.outbox).flushing;
        self.circuit.report(|r| {
            r.messages_flushed += flushed;
            r.messages_dropped += dropped;
            r.flushing = flushing;
        });
        if flushed + dropped > 0 {
            tracing::info!(
                flushed,
                dropped,
                "flushed the publishes buffered during the outage"
            );
        }
    }
}

impl Reconcile for FailoverPubSub {
    fn reconcile(&self, report: &mut Reconciliation) {
        let mut outbox = lock(&self.outbox);
        report.messages_dropped = std::mem::take(&mut outbox.dropped);
        outbox.flushing = !outbox.queue.is_empty();
        report.flushing = outbox.flushing;
    }

    fn recovered(self: Arc<Self>) {
        if lock(&self.outbox).flushing {
            tokio::spawn(async move { self.flush().await });
        }
    }
}

#[async_trait]
impl PubSubStore for FailoverPubSub {
    async fn publish(&self, message: PubMessage, how: &Publish) -> Result<Published, BackendError> {
        if self.circuit.is_up() {
            let queued = {
                let mut outbox = lock(&self.outbox);
                if outbox.flushing {
                    // Behind the buffered ones, to keep the order.
                    outbox.queue.push_back((message.clone(), how.clone()));
                    true
                } else {
                    false
                }
            };
            if queued {
                return Ok(Published::default());
            }
            match self.redis.publish(message.clone(), how).await {
                Err(err) if err.is_outage() => self.circuit.trip(&err),
                other => return other,
            }
        }
        let metrics = self.circuit.metrics();
        if let WhileDown::Fail(reason) = &self.buffering.down {
            metrics.count_fallback("pubsub", "fail_closed");
            return Err(BackendError::FailClosed(reason.clone()));
        }
        metrics.count_fallback("pubsub", "local");
        let mut for_redis = message.clone();
        for_redis
            .headers
            .insert(FLUSHED_BY.to_string(), self.instance.clone());
        {
            let mut outbox = lock(&self.outbox);
            if outbox.queue.len() < self.buffering.capacity {
                outbox.queue.push_back((for_redis, how.clone()));
            } else {
                outbox.dropped += 1;
                tracing::warn!(channel = %message.channel, "publish buffer full: this message reaches local subscribers only");
            }
        }
        self.memory.publish(message, how).await
    }

    async fn subscribe(
        &self,
        channels: &[String],
        patterns: &[String],
    ) -> Result<Feed<Arc<PubMessage>>, BackendError> {
        let local = self.memory.subscribe(channels, patterns).await?;
        let shared = self
            .redis
            .subscribe_with(channels, patterns, self.circuit.is_up())
            .await?;
        let me = self.instance.clone();
        // Messages flushed after an outage: skip the ones this sidecar
        // delivered locally already, and drop the marker from the others.
        let shared = shared.filter_map(move |item| {
            let item = match item {
                FeedItem::Item(m) => match m.headers.get(FLUSHED_BY) {
                    Some(origin) if *origin == me => None,
                    Some(_) => {
                        let mut m = (*m).clone();
                        m.headers.remove(FLUSHED_BY);
                        Some(FeedItem::Item(Arc::new(m)))
                    }
                    None => Some(FeedItem::Item(m)),
                },
                lagged => Some(lagged),
            };
            futures::future::ready(item)
        });
        Ok(Box::pin(futures::stream::select(local, shared)))
    }

    async fn history(&self, channel: &str, range: Range) -> Result<History, BackendError> {
        self.circuit
            .route(
                "pubsub",
                &self.buffering.down,
                self.redis.history(channel, range),
                || self.memory.history(channel, range),
            )
            .await
    }

    /// Only on Redis: trimming the fallback's history would leave the
    /// shared one as it was, and nothing could make up for it later.
    async fn trim(&self, channel: &str, before: Offset) -> Result<u64, BackendError> {
        let down = WhileDown::Fail("trimming history needs Redis, which is down".into());
        self.circuit
            .route(
                "pubsub",
                &down,
                self.redis.trim(channel, before),
                || async { Ok(0) },
            )
            .await
    }

    /// The fallback's epochs are its own: a subscriber moving between it
    /// and Redis is told its offset means nothing on the other side.
    async fn recover(&self, channel: &str, at: Resume<'_>) -> Result<Recovery, BackendError> {
        self.circuit
            .route(
                "pubsub",
                &self.buffering.down,
                self.redis.recover(channel, at),
                || self.memory.recover(channel, at),
            )
            .await
    }
}
