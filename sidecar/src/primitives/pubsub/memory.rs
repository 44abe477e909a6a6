//! Pub/sub in memory: a broadcast channel per subscribed channel and
//! pattern, and a capped log per durable channel.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::store::{
    History, Offset, PubMessage, PubSubStore, Publish, Published, Range, Recovery, Resume,
};
use crate::backend::{BackendError, Feed, feed_from, glob};

/// Pub/sub in local memory.
pub struct MemoryPubSub {
    /// Short, synchronous critical sections: a plain mutex.
    inner: Mutex<Inner>,
    /// Messages a subscriber may fall behind by before it is told it lagged.
    buffer: usize,
    /// In every epoch this store starts: no other store's is the same.
    source: String,
    /// Bytes of durable history kept across all channels, at most.
    history_bound: usize,
}

type Sender = broadcast::Sender<Arc<PubMessage>>;

#[derive(Default)]
struct Inner {
    channels: HashMap<String, Sender>,
    patterns: HashMap<String, Sender>,
    logs: HashMap<String, Log>,
    /// Idempotency keys seen, by channel and key: the offset answered and
    /// until when.
    seen: HashMap<(String, String), (Option<Offset>, Instant)>,
    /// The bytes of every log, summed.
    history_bytes: usize,
    /// The greatest offset handed out on any channel: a new epoch starts
    /// past it, so no offset of an older one is ever of a newer one.
    issued: Offset,
}

/// Idempotency keys kept before the expired ones are swept.
const SWEEP_AT: usize = 1024;

struct Log {
    messages: VecDeque<PubMessage>,
    /// What `messages` weigh (`weight`).
    bytes: usize,
    /// The last offset written.
    last: Offset,
    /// The epoch: its start, and its token.
    start: Offset,
    epoch: String,
    /// The greatest offset dropped (trimmed, capped or expired).
    dropped: Offset,
    /// As the last publish asked (or, before one, how long the epoch is
    /// kept), and when it was.
    max_age: Option<Duration>,
    published: Option<Instant>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Log {
    /// A new epoch past `issued`, kept `idle` without a publish.
    fn new(source: &str, idle: Option<Duration>, issued: Offset) -> Log {
        let start = Offset {
            ms: now_ms(),
            seq: 0,
        }
        .max(issued.next());
        Log {
            messages: VecDeque::new(),
            bytes: 0,
            last: start.prev(),
            start,
            epoch: format!("{start}@{source}"),
            dropped: Offset::default(),
            max_age: idle,
            published: Some(Instant::now()),
        }
    }

    fn push(&mut self, message: PubMessage) {
        self.bytes += weight(&message);
        self.messages.push_back(message);
    }

    fn drop_oldest(&mut self) {
        if let Some(m) = self.messages.pop_front() {
            self.bytes -= weight(&m);
            self.dropped = self.dropped.max(m.offset.unwrap_or_default());
        }
    }

    /// Whether the channel has outlived its max age since its last
    /// publish (then it is gone, as its Redis stream would be).
    fn expired(&self, now: Instant) -> bool {
        matches!((self.max_age, self.published), (Some(age), Some(at)) if now.duration_since(at) >= age)
    }

    /// Drops what is older than the max age.
    fn trim_by_age(&mut self) {
        if let Some(age) = self.max_age {
            let oldest = now_ms().saturating_sub(age.as_millis() as u64);
            while self
                .messages
                .front()
                .is_some_and(|m| m.offset.is_some_and(|o| o.ms < oldest))
            {
                self.drop_oldest();
            }
        }
    }

    /// Offsets like Redis stream ids: wall-clock ms, then a sequence.
    fn next_offset(&mut self) -> Offset {
        let now = now_ms();
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

/// What a kept message costs: its bytes, and a fixed overhead.
fn weight(m: &PubMessage) -> usize {
    let headers: usize = m.headers.iter().map(|(k, v)| k.len() + v.len() + 32).sum();
    m.payload.len() + m.channel.len() + headers + 96
}

impl MemoryPubSub {
    /// Subscribers fall behind by at most `buffer` messages before they
    /// are told they lagged; durable history weighs at most
    /// `history_bound` bytes.
    pub fn new(buffer: usize, history_bound: usize) -> Self {
        MemoryPubSub {
            inner: Mutex::new(Inner::default()),
            buffer,
            source: format!("local-{:08x}", rand::random::<u32>()),
            history_bound,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A channel's log, unless it has expired (then it is dropped), trimmed by
/// age as of now.
fn live_log<'a>(inner: &'a mut Inner, channel: &str) -> Option<&'a mut Log> {
    if inner
        .logs
        .get(channel)
        .is_some_and(|log| log.expired(Instant::now()))
        && let Some(log) = inner.logs.remove(channel)
    {
        inner.history_bytes -= log.bytes;
    }
    let log = inner.logs.get_mut(channel)?;
    let before = log.bytes;
    log.trim_by_age();
    inner.history_bytes -= before - log.bytes;
    Some(log)
}

/// Drops whole the logs published to least recently, but `channel`'s,
/// until the history fits `bound`; then, if it still does not, the oldest
/// messages of `channel` but its newest.
fn fit(inner: &mut Inner, channel: &str, bound: usize) {
    while inner.history_bytes > bound {
        let coldest = inner
            .logs
            .iter()
            .filter(|(name, _)| name.as_str() != channel)
            .min_by_key(|(_, log)| log.published)
            .map(|(name, _)| name.clone());
        let Some(coldest) = coldest else { break };
        if let Some(log) = inner.logs.remove(&coldest) {
            inner.history_bytes -= log.bytes;
        }
    }
    if let Some(log) = inner.logs.get_mut(channel) {
        while inner.history_bytes > bound && log.messages.len() > 1 {
            let before = log.bytes;
            log.drop_oldest();
            inner.history_bytes -= before - log.bytes;
        }
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
        how: &Publish,
    ) -> Result<Published, BackendError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let now = Instant::now();
        if let Some((key, _)) = &how.idempotency
            && let Some((offset, until)) = inner.seen.get(&(message.channel.clone(), key.clone()))
            && *until > now
        {
            let offset = *offset;
            let epoch = how
                .durable
                .then(|| live_log(inner, &message.channel).map(|log| log.epoch.clone()))
                .flatten();
            return Ok(Published {
                offset,
                epoch,
                duplicate: true,
            });
        }
        let mut epoch = None;
        if how.durable {
            if !inner.logs.contains_key(&message.channel) {
                // A new channel: sweep the ones that outlived their age.
                let mut freed = 0;
                inner.logs.retain(|_, log| {
                    let expired = log.expired(now);
                    if expired {
                        freed += log.bytes;
                    }
                    !expired
                });
                inner.history_bytes -= freed;
            }
            let log = inner
                .logs
                .entry(message.channel.clone())
                .or_insert_with(|| Log::new(&self.source, None, inner.issued));
            if log.expired(now) {
                inner.history_bytes -= log.bytes;
                *log = Log::new(&self.source, None, inner.issued);
            }
            let before = log.bytes;
            epoch = Some(log.epoch.clone());
            let offset = log.next_offset();
            inner.issued = inner.issued.max(offset);
            message.offset = Some(offset);
            log.push(message.clone());
            log.max_age = how.retention.max_age;
            log.published = Some(now);
            while log.messages.len() > how.retention.max_len {
                log.drop_oldest();
            }
            log.trim_by_age();
            inner.history_bytes = inner.history_bytes + log.bytes - before;
            fit(inner, &message.channel, self.history_bound);
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
        if let Some((key, window)) = &how.idempotency {
            if inner.seen.len() >= SWEEP_AT {
                inner.seen.retain(|_, (_, until)| *until > now);
            }
            inner
                .seen
                .insert((channel, key.clone()), (offset, now + *window));
        }
        Ok(Published {
            offset,
            epoch,
            duplicate: false,
        })
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

    async fn history(&self, channel: &str, range: Range) -> Result<History, BackendError> {
        let mut inner = self.lock();
        let Some(log) = live_log(&mut inner, channel) else {
            return Ok(History::default());
        };
        let within = |m: &&PubMessage| m.offset.is_some_and(|o| range.from <= o && o <= range.to);
        let messages = if range.newest_first {
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
        Ok(History {
            epoch: Some(log.epoch.clone()),
            messages,
        })
    }

    async fn trim(&self, channel: &str, before: Offset) -> Result<u64, BackendError> {
        let mut inner = self.lock();
        let Some(log) = live_log(&mut inner, channel) else {
            return Ok(0);
        };
        let (mut removed, bytes) = (0, log.bytes);
        while log
            .messages
            .front()
            .is_some_and(|m| m.offset.is_some_and(|o| o < before))
        {
            log.drop_oldest();
            removed += 1;
        }
        let freed = bytes - log.bytes;
        inner.history_bytes -= freed;
        Ok(removed)
    }

    async fn recover(&self, channel: &str, at: Resume<'_>) -> Result<Recovery, BackendError> {
        let mut inner = self.lock();
        if live_log(&mut inner, channel).is_none() {
            let log = Log::new(&self.source, Some(at.idle), inner.issued);
            inner.logs.insert(channel.to_string(), log);
        }
        let log = live_log(&mut inner, channel).expect("a log, inserted if it was not there");
        let (after, recovered) = if at.after == Offset::default() {
            // Nothing yet: the whole epoch, whatever was dropped of it before.
            let after = log.start.prev();
            (after, log.dropped <= after)
        } else if at.epoch.is_some_and(|e| e != log.epoch) || at.after < log.start {
            // Of another epoch: the offset means nothing in this one.
            (at.after.min(log.start.prev()), false)
        } else {
            // Nothing after it dropped, and it was written here (or
            // nothing was, in this epoch).
            let written = at.after <= log.last || log.last < log.start;
            (at.after, log.dropped <= at.after && written)
        };
        let messages: Vec<PubMessage> = log
            .messages
            .iter()
            .filter(|m| m.offset.is_some_and(|o| o > after))
            .take(at.count)
            .cloned()
            .collect();
        Ok(Recovery {
            epoch: log.epoch.clone(),
            recovered,
            after,
            more: messages.len() == at.count,
            messages,
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::primitives::pubsub::store::Retention;

    fn durable() -> Publish {
        Publish {
            durable: true,
            retention: Retention::default(),
            idempotency: None,
        }
    }

    /// A message that weighs 997 bytes (`weight`) on a one-letter channel.
    fn message(channel: &str) -> PubMessage {
        PubMessage {
            channel: channel.into(),
            payload: Bytes::from(vec![b'x'; 900]),
            headers: Default::default(),
            offset: None,
        }
    }

    async fn recover(store: &MemoryPubSub, channel: &str, p: &Published) -> Recovery {
        let at = Resume {
            epoch: p.epoch.as_deref(),
            after: p.offset.unwrap_or_default(),
            count: 100,
            idle: Duration::from_secs(60),
        };
        store.recover(channel, at).await.unwrap()
    }

    #[tokio::test]
    async fn history_past_its_bound_drops_the_coldest_channels_whole() {
        let store = MemoryPubSub::new(16, 4_000);
        let a = store.publish(message("a"), &durable()).await.unwrap();
        for channel in ["b", "c", "d"] {
            store.publish(message(channel), &durable()).await.unwrap();
        }
        assert_eq!(store.lock().history_bytes, 4 * 997, "four fit");
        store.publish(message("e"), &durable()).await.unwrap();
        let left = {
            let inner = store.lock();
            assert_eq!(inner.history_bytes, 4 * 997);
            let mut left: Vec<String> = inner.logs.keys().cloned().collect();
            left.sort();
            left
        };
        assert_eq!(left, ["b", "c", "d", "e"], "the coldest went, whole");
        // Its subscribers are told: a new epoch, the offset means nothing.
        let r = recover(&store, "a", &a).await;
        assert!(!r.recovered);
        assert_ne!(Some(r.epoch), a.epoch);
    }

    #[tokio::test]
    async fn one_channel_past_the_bound_keeps_its_newest_and_says_what_went() {
        let store = MemoryPubSub::new(16, 2_500);
        let mut published = vec![];
        for _ in 0..3 {
            published.push(store.publish(message("s"), &durable()).await.unwrap());
        }
        assert_eq!(store.lock().history_bytes, 2 * 997);
        // The first went: resuming after it misses nothing...
        let r = recover(&store, "s", &published[0]).await;
        assert!(r.recovered);
        assert_eq!(r.messages.len(), 2);
        // ...but from nothing, the epoch's start is gone.
        let r = recover(&store, "s", &Published::default()).await;
        assert!(!r.recovered);
        // Trims give their bytes back.
        let newest = published[2].offset.unwrap();
        assert_eq!(store.trim("s", newest).await.unwrap(), 1);
        assert_eq!(store.lock().history_bytes, 997);
    }
}
