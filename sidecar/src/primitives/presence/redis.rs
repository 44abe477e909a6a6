//! Presence on Redis. A room is a sorted set of members scored by expiry
//! (Redis time) plus a metadata hash, both under the room's hash tag;
//! events go out on the room's channel from the same scripts that change
//! the room, so watchers on every sidecar see each change once.
//!
//! `ns:pm:{member}` remembers a member's rooms for `Rooms(member)`; it lives
//! in another slot, is updated after the join, and is checked against the
//! rooms themselves when read, so a stale entry never shows.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::future::try_join_all;
use redis::Value;

use redis::Script;

use super::store::{MemberInfo, MemberPage, PresenceEvent, PresenceKind, PresenceStore};
use crate::backend::redis::RedisStore;
use crate::backend::redis::subscriber::Topic;
use crate::backend::{BackendError, Feed, FeedItem};

/// Members taken out per reap call.
const REAP_BATCH: usize = 1000;

/// How long the member -> rooms index outlives a heartbeat.
const ROOMS_INDEX_SLACK: Duration = Duration::from_secs(600);

/// Presence in Redis.
pub struct RedisPresence {
    redis: Arc<RedisStore>,
    scripts: Scripts,
}

struct Scripts {
    presence_join: Script,
    presence_leave: Script,
    presence_reap: Script,
    presence_list: Script,
    presence_ttl: Script,
}

impl RedisPresence {
    pub fn new(redis: Arc<RedisStore>) -> Self {
        RedisPresence {
            redis,
            scripts: Scripts {
                presence_join: Script::new(include_str!("presence_join.lua")),
                presence_leave: Script::new(include_str!("presence_leave.lua")),
                presence_reap: Script::new(include_str!("presence_reap.lua")),
                presence_list: Script::new(include_str!("presence_list.lua")),
                presence_ttl: Script::new(include_str!("presence_ttl.lua")),
            },
        }
    }
}

impl RedisPresence {
    fn room_key(&self, room: &str) -> String {
        format!("{}:pr:{{{room}}}", self.redis.namespace)
    }

    fn member_rooms_key(&self, member: &str) -> String {
        format!("{}:pm:{{{member}}}", self.redis.namespace)
    }
}

/// `kind \n member \n metadata` as published by the presence scripts.
fn parse_event(room: &str, payload: &[u8]) -> Option<PresenceEvent> {
    let mut parts = payload.splitn(3, |b| *b == b'\n');
    let kind = PresenceKind::parse(std::str::from_utf8(parts.next()?).ok()?)?;
    let member = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let metadata = Bytes::copy_from_slice(parts.next().unwrap_or_default());
    Some(PresenceEvent {
        kind,
        room: room.to_string(),
        member,
        metadata,
    })
}

#[async_trait]
impl PresenceStore for RedisPresence {
    async fn join(
        &self,
        room: &str,
        member: &str,
        metadata: Bytes,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let key = self.room_key(room);
        let mut conn = self.redis.conn();
        let mut call = self.scripts.presence_join.key(&key);
        call.key(format!("{key}:meta"))
            .arg(member)
            .arg(metadata.as_ref())
            .arg(ttl.as_millis() as u64)
            .arg(&key);
        let joined: i64 = self.redis.call(call.invoke_async(&mut conn)).await?;
        let index = self.member_rooms_key(member);
        let mut pipe = redis::pipe();
        pipe.sadd(&index, room)
            .ignore()
            .pexpire(&index, (ttl + ROOMS_INDEX_SLACK).as_millis() as i64)
            .ignore();
        self.redis.call(pipe.query_async::<()>(&mut conn)).await?;
        Ok(joined == 1)
    }

    async fn leave(&self, room: &str, member: &str) -> Result<bool, BackendError> {
        let key = self.room_key(room);
        let mut conn = self.redis.conn();
        let mut call = self.scripts.presence_leave.key(&key);
        call.key(format!("{key}:meta")).arg(member).arg(&key);
        let left: i64 = self.redis.call(call.invoke_async(&mut conn)).await?;
        self.redis
            .call(
                redis::cmd("SREM")
                    .arg(self.member_rooms_key(member))
                    .arg(room)
                    .query_async::<()>(&mut conn),
            )
            .await?;
        Ok(left == 1)
    }

    async fn list(
        &self,
        room: &str,
        cursor: &str,
        limit: usize,
    ) -> Result<MemberPage, BackendError> {
        let cursor: u64 = match cursor {
            "" => 0,
            c => c.parse().map_err(|_| BackendError::InvalidCursor)?,
        };
        let key = self.room_key(room);
        let mut conn = self.redis.conn();
        let mut call = self.scripts.presence_list.key(&key);
        call.key(format!("{key}:meta")).arg(cursor).arg(limit);
        let reply: Vec<Value> = self.redis.call(call.invoke_async(&mut conn)).await?;
        let bad = || BackendError::Protocol("presence list reply".into());
        let mut fields = reply.into_iter();
        let next: u64 = match fields.next() {
            Some(Value::BulkString(c)) => std::str::from_utf8(&c)
                .ok()
                .and_then(|c| c.parse().ok())
                .ok_or_else(bad)?,
            _ => return Err(bad()),
        };
        let mut members = vec![];
        while let (Some(member), Some(metadata), Some(left)) =
            (fields.next(), fields.next(), fields.next())
        {
            let (Value::BulkString(member), Value::BulkString(metadata), Value::Int(left)) =
                (member, metadata, left)
            else {
                return Err(bad());
            };
            members.push(MemberInfo {
                member: String::from_utf8(member).map_err(|_| bad())?,
                metadata: Bytes::from(metadata),
                ttl: Duration::from_millis(left.max(0) as u64),
            });
        }
        Ok(MemberPage {
            members,
            next_cursor: (next != 0).then(|| next.to_string()),
        })
    }

    async fn rooms(&self, member: &str) -> Result<Vec<String>, BackendError> {
        let mut conn = self.redis.conn();
        let index = self.member_rooms_key(member);
        let mut rooms: Vec<String> = self
            .redis
            .call(redis::cmd("SMEMBERS").arg(&index).query_async(&mut conn))
            .await?;
        let checks = rooms.iter().map(|room| {
            let mut conn = self.redis.conn();
            let mut call = self.scripts.presence_ttl.key(self.room_key(room));
            call.arg(member);
            async move { call.invoke_async::<i64>(&mut conn).await }
        });
        let left = self.redis.call(try_join_all(checks)).await?;
        let mut live = vec![];
        let mut stale = vec![];
        for (room, left) in rooms.drain(..).zip(left) {
            if left > 0 {
                live.push(room)
            } else {
                stale.push(room)
            }
        }
        if !stale.is_empty() {
            self.redis
                .call(
                    redis::cmd("SREM")
                        .arg(&index)
                        .arg(&stale)
                        .query_async::<()>(&mut conn),
                )
                .await?;
        }
        live.sort();
        Ok(live)
    }

    async fn reap(&self, room: &str) -> Result<u64, BackendError> {
        let key = self.room_key(room);
        let mut conn = self.redis.conn();
        let mut call = self.scripts.presence_reap.key(&key);
        call.key(format!("{key}:meta")).arg(&key).arg(REAP_BATCH);
        self.redis.call(call.invoke_async(&mut conn)).await
    }

    async fn watch(&self, room: &str) -> Result<Feed<PresenceEvent>, BackendError> {
        self.watch_with(room, true).await
    }
}

impl RedisPresence {
    /// [`PresenceStore::watch`]; with `confirm` false it does not wait for
    /// Redis (the subscription is made when the connection is up).
    pub async fn watch_with(
        &self,
        room: &str,
        confirm: bool,
    ) -> Result<Feed<PresenceEvent>, BackendError> {
        let (rx, guard) = self
            .redis
            .subscriber
            .listen(Topic::Channel(self.room_key(room)), confirm)
            .await?
            .into_parts();
        let room = room.to_string();
        let feed = crate::backend::feed_from(vec![rx], guard).filter_map(move |item| {
            let event = match item {
                FeedItem::Item(d) => parse_event(&room, &d.payload).map(FeedItem::Item),
                FeedItem::Lagged(n) => Some(FeedItem::Lagged(n)),
            };
            futures::future::ready(event)
        });
        Ok(Box::pin(feed))
    }
}
