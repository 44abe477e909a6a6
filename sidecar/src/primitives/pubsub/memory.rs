//! Pub/sub in memory: a broadcast channel per subscribed channel and
//! pattern, and a capped log per durable channel.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::store::{Offset, PubMessage, PubSubStore, Range};
use crate::backend::{BackendError, Feed, feed_from, glob};

/// Pub/sub in local memory.
pub struct MemoryPubSub {
    /// Short, synchronous critical sections: a plain mutex.
    inner: Mutex<Inner>,
    /// Messages a subscriber may fall behind by before it is told it lagged.
    buffer: usize,
    /// Messages kept per durable channel.
    max_len: usize,
}

type Sender = broadcast::Sender<Arc<PubMessage>>;

#[derive(Default)]
struct Inner {
    channels: HashMap<String, Sender>,
    patterns: HashMap<String, Sender>,
    logs: HashMap<String, Log>,
}

#[derive(Default)]
struct Log {
    messages: VecDeque<PubMessage>,
    last: Offset,
}

impl Log {
    /// Offsets like Redis stream ids: wall-clock ms, then a sequence.
    fn next_offset(&mut self) -> Offset {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last = if now > self.last.ms {
            Offset { ms: now, seq: 0 }
        } else {
            Offset {
                ms: self.last.ms,
                seq: self.last.seq + 1,
            }
        };
        self.last
    }
}

impl MemoryPubSub {
    pub fn new(buffer: usize, max_len: usize) -> Self {
        MemoryPubSub {
            inner: Mutex::new(Inner::default()),
            buffer,
            max_len,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Sends to a sender; forgets it once nobody listens.
fn send(map: &mut HashMap<String, Sender>, key: &str, message: &Arc<PubMessage>) {
    if let Some(tx) = map.get(key)
        && tx.send(message.clone()).is_err()
    {
        map.remove(key);
    }
}

#[async_trait]
impl PubSubStore for MemoryPubSub {
    async fn publish(
        &self,
        mut message: PubMessage,
        durable: bool,
    ) -> Result<Option<Offset>, BackendError> {
        let mut inner = self.lock();
        if durable {
            let log = inner.logs.entry(message.channel.clone()).or_default();
            let offset = log.next_offset();
            message.offset = Some(offset);
            log.messages.push_back(message.clone());
            while log.messages.len() > self.max_len {
                log.messages.pop_front();
            }
        }
        let offset = message.offset;
        let channel = message.channel.clone();
        let message = Arc::new(message);
        send(&mut inner.channels, &channel, &message);
        let matching: Vec<String> = inner
            .patterns
            .keys()
            .filter(|p| glob::matches(p, &channel))
            .cloned()
            .collect();
        for pattern in matching {
            send(&mut inner.patterns, &pattern, &message);
        }
        Ok(offset)
    }

    async fn subscribe(
        &self,
        channels: &[String],
        patterns: &[String],
    ) -> Result<Feed<Arc<PubMessage>>, BackendError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let mut receivers = vec![];
        for (map, names) in [
            (&mut inner.channels, channels),
            (&mut inner.patterns, patterns),
        ] {
            for name in names {
                let tx = map
                    .entry(name.clone())
                    .or_insert_with(|| broadcast::channel(self.buffer).0);
                receivers.push(tx.subscribe());
            }
        }
        Ok(feed_from(receivers, ()))
    }

    async fn history(&self, channel: &str, range: Range) -> Result<Vec<PubMessage>, BackendError> {
        let inner = self.lock();
        let Some(log) = inner.logs.get(channel) else {
            return Ok(vec![]);
        };
        let within = |m: &&PubMessage| m.offset.is_some_and(|o| range.from <= o && o <= range.to);
        let page = if range.newest_first {
            log.messages
                .iter()
                .rev()
                .filter(within)
                .take(range.limit)
                .cloned()
                .collect()
        } else {
            log.messages
                .iter()
                .filter(within)
                .take(range.limit)
                .cloned()
                .collect()
        };
        Ok(page)
    }

    async fn trim(&self, channel: &str, before: Offset) -> Result<u64, BackendError> {
        let mut inner = self.lock();
        let Some(log) = inner.logs.get_mut(channel) else {
            return Ok(0);
        };
        let mut removed = 0;
        while log
            .messages
            .front()
            .is_some_and(|m| m.offset.is_some_and(|o| o < before))
        {
            log.messages.pop_front();
            removed += 1;
        }
        Ok(removed)
    }

    async fn replay(
        &self,
        channel: &str,
        after: Offset,
        count: usize,
    ) -> Result<Vec<PubMessage>, BackendError> {
        let inner = self.lock();
        Ok(inner
            .logs
            .get(channel)
            .map(|log| {
                log.messages
                    .iter()
                    .filter(|m| m.offset.is_some_and(|o| o > after))
                    .take(count)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }
}
