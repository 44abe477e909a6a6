//! Pub/sub on Redis: live messages on `ns:ps:{channel}`, durable ones also
//! in the capped stream of the same name, published by one script so the
//! live copy carries the stream offset; the stream's epoch in the hash
//! `ns:ps:{channel}:e` beside it (`epoch.lua`).
//!
//! Live payload: `offset \n headers-json \n payload` (offset empty for
//! messages that are not durable; JSON never holds a raw newline, and the
//! payload, last, may hold anything).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use redis::Script;

use super::store::{
    History, Offset, PubMessage, PubSubStore, Publish, Published, Range, Recovery, Resume,
};
use crate::backend::redis::RedisStore;
use crate::backend::redis::subscriber::Topic;
use crate::backend::{BackendError, Feed, FeedItem};

/// Pub/sub in Redis.
pub struct RedisPubSub {
    redis: Arc<RedisStore>,
    publish: Script,
    history: Script,
    recover: Script,
}

/// A durable-channel script: `epoch.lua`, then its own.
macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(include_str!("epoch.lua"), include_str!($file)))
    };
}

impl RedisPubSub {
    pub fn new(redis: Arc<RedisStore>) -> Self {
        RedisPubSub {
            redis,
            publish: script!("publish.lua"),
            history: script!("history.lua"),
            recover: script!("recover.lua"),
        }
    }

    fn pubsub_key(&self, channel: &str) -> String {
        format!("{}:ps:{{{channel}}}", self.redis.namespace)
    }

    /// A durable channel's stream and, beside it in its slot, its epoch.
    fn durable_keys(&self, channel: &str) -> (String, String) {
        let stream = self.pubsub_key(channel);
        let epoch = epoch_key(&stream);
        (stream, epoch)
    }
}

/// The epoch hash of the stream `stream`.
fn epoch_key(stream: &str) -> String {
    format!("{stream}:e")
}

/// A stream id as an offset.
fn parse_offset(id: &str) -> Result<Offset, BackendError> {
    id.parse()
        .map_err(|_| BackendError::Protocol(format!("stream id {id:?}")))
}

/// Set once the sidecar has warned that Redis does not let it see failovers.
static WARNED_BLIND: std::sync::Once = std::sync::Once::new();

/// An epoch as the scripts answer it: empty for none. One ending `@unknown`
/// was started by a user that may not run INFO: say once what that costs.
fn parse_epoch(e: String) -> Option<String> {
    if e.ends_with("@unknown") {
        WARNED_BLIND.call_once(|| {
            tracing::warn!(
                "the Redis user may not run INFO: a failover to a replica will not start new \
                 pub/sub epochs, so subscribers resuming across one may miss messages unawares; \
                 grant it +info"
            );
        });
    }
    (!e.is_empty()).then_some(e)
}

/// An XRANGE entry: id, then field/value pairs.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

fn parse_live(channel: &str, payload: &[u8]) -> Option<PubMessage> {
    let mut parts = payload.splitn(3, |b| *b == b'\n');
    let offset = match parts.next()? {
        [] => None,
        o => Some(std::str::from_utf8(o).ok()?.parse().ok()?),
    };
    let headers = serde_json::from_slice(parts.next()?).ok()?;
    Some(PubMessage {
        channel: channel.to_string(),
        payload: Bytes::copy_from_slice(parts.next()?),
        headers,
        offset,
    })
}

#[async_trait]
impl PubSubStore for RedisPubSub {
    async fn publish(&self, message: PubMessage, how: &Publish) -> Result<Published, BackendError> {
        let key = self.pubsub_key(&message.channel);
        let headers = serde_json::to_string(&message.headers)
            .map_err(|e| BackendError::Protocol(e.to_string()))?;
        let mut conn = self.redis.conn();
        if !how.durable && how.idempotency.is_none() {
            let mut live = Vec::with_capacity(headers.len() + message.payload.len() + 2);
            live.push(b'\n');
            live.extend_from_slice(headers.as_bytes());
            live.push(b'\n');
            live.extend_from_slice(&message.payload);
            self.redis
                .call(
                    redis::cmd("PUBLISH")
                        .arg(&key)
                        .arg(live)
                        .query_async::<()>(&mut conn),
                )
                .await?;
            return Ok(Published::default());
        }
        // The key beside the stream, in its slot.
        let (seen, window) = match &how.idempotency {
            Some((k, window)) => (format!("{key}:i:{k}"), window.as_millis().max(1) as u64),
            None => (key.clone(), 0),
        };
        let epoch = epoch_key(&key);
        let mut call = self.publish.key(&key);
        call.key(&epoch)
            .key(&seen)
            .arg(how.retention.max_len)
            .arg(&key)
            .arg(&headers)
            .arg(message.payload.as_ref())
            .arg(u8::from(how.durable))
            .arg(window)
            .arg(
                how.retention
                    .max_age
                    .map_or(0, |a| a.as_millis().max(1) as u64),
            );
        let (id, duplicate, epoch): (String, u8, String) =
            self.redis.call(call.invoke_async(&mut conn)).await?;
        let offset = match id.as_str() {
            "" => None,
            id => Some(parse_offset(id)?),
        };
        Ok(Published {
            offset,
            epoch: parse_epoch(epoch),
            duplicate: duplicate == 1,
        })
    }

    async fn subscribe(
        &self,
        channels: &[String],
        patterns: &[String],
    ) -> Result<Feed<Arc<PubMessage>>, BackendError> {
        self.subscribe_with(channels, patterns, true).await
    }

    async fn history(&self, channel: &str, range: Range) -> Result<History, BackendError> {
        let (command, start, end) = if range.newest_first {
            ("XREVRANGE", range.to, range.from)
        } else {
            ("XRANGE", range.from, range.to)
        };
        let (stream, epoch) = self.durable_keys(channel);
        let mut call = self.history.key(stream);
        call.key(epoch)
            .arg(command)
            .arg(start.to_string())
            .arg(end.to_string())
            .arg(range.limit);
        let mut conn = self.redis.conn();
        let (epoch, entries): (String, Vec<StreamEntry>) =
            self.redis.call(call.invoke_async(&mut conn)).await?;
        Ok(History {
            epoch: parse_epoch(epoch),
            messages: entries_to_messages(channel, entries)?,
        })
    }

    async fn trim(&self, channel: &str, before: Offset) -> Result<u64, BackendError> {
        let mut conn = self.redis.conn();
        self.redis
            .call(
                redis::cmd("XTRIM")
                    .arg(self.pubsub_key(channel))
                    .arg("MINID")
                    .arg(before.to_string())
                    .query_async(&mut conn),
            )
            .await
    }

    async fn recover(&self, channel: &str, at: Resume<'_>) -> Result<Recovery, BackendError> {
        let (stream, epoch) = self.durable_keys(channel);
        let mut call = self.recover.key(stream);
        call.key(epoch)
            .arg(at.epoch.unwrap_or(""))
            .arg(at.after.to_string())
            .arg(at.count)
            .arg(at.idle.as_millis().max(1) as u64)
            .arg(REPLAY_PAGE_BYTES);
        let mut conn = self.redis.conn();
        let (epoch, recovered, after, entries, more): (String, u8, String, Vec<StreamEntry>, u8) =
            self.redis.call(call.invoke_async(&mut conn)).await?;
        Ok(Recovery {
            epoch: parse_epoch(epoch).unwrap_or_default(),
            recovered: recovered == 1,
            after: parse_offset(&after)?,
            messages: entries_to_messages(channel, entries)?,
            more: more == 1,
        })
    }
}

/// Payload bytes a replay page holds at most (past its first message): a
/// page is one reply, which must come back within `redis.timeout`.
const REPLAY_PAGE_BYTES: usize = 1024 * 1024;

/// Stream entries as messages of `channel`.
fn entries_to_messages(
    channel: &str,
    entries: Vec<StreamEntry>,
) -> Result<Vec<PubMessage>, BackendError> {
    let bad = |what: &str| BackendError::Protocol(format!("stream entry: {what}"));
    entries
        .into_iter()
        .map(|(id, fields)| {
            let fields: BTreeMap<String, Vec<u8>> = fields.into_iter().collect();
            let headers = fields
                .get("h")
                .and_then(|h| serde_json::from_slice(h).ok())
                .ok_or_else(|| bad("headers"))?;
            Ok(PubMessage {
                channel: channel.to_string(),
                payload: Bytes::from(fields.get("p").cloned().ok_or_else(|| bad("payload"))?),
                headers,
                offset: Some(id.parse().map_err(|_| bad("id"))?),
            })
        })
        .collect()
}

impl RedisPubSub {
    /// [`PubSubStore::subscribe`]; with `confirm` false it does not wait for
    /// Redis (subscriptions are made when the connection is up).
    pub async fn subscribe_with(
        &self,
        channels: &[String],
        patterns: &[String],
        confirm: bool,
    ) -> Result<Feed<Arc<PubMessage>>, BackendError> {
        let mut receivers = vec![];
        let mut guards = vec![];
        let topics = channels
            .iter()
            .map(|c| Topic::Channel(self.pubsub_key(c)))
            .chain(patterns.iter().map(|p| Topic::Pattern(self.pubsub_key(p))));
        for topic in topics {
            let (rx, guard) = self
                .redis
                .subscriber
                .listen(topic, confirm)
                .await?
                .into_parts();
            receivers.push(rx);
            guards.push(guard);
        }
        let namespace = self.redis.namespace.clone();
        let feed = crate::backend::feed_from(receivers, guards).filter_map(move |item| {
            let message = match item {
                FeedItem::Item(d) => {
                    let channel = d
                        .channel
                        .strip_prefix(namespace.as_str())
                        .and_then(|c| c.strip_prefix(":ps:{"))
                        .and_then(|c| c.strip_suffix('}'));
                    channel
                        .and_then(|c| parse_live(c, &d.payload))
                        .map(|m| FeedItem::Item(Arc::new(m)))
                }
                FeedItem::Lagged(n) => Some(FeedItem::Lagged(n)),
            };
            futures::future::ready(message)
        });
        Ok(Box::pin(feed))
    }
}
