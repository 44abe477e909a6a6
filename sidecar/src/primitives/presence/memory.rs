//! Presence in memory: rooms of members with expiry instants, an index of
//! each member's rooms, and a broadcast channel per watched room.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::store::{MemberInfo, MemberPage, PresenceEvent, PresenceKind, PresenceStore};
use crate::backend::{BackendError, Feed, feed_from};

/// Presence in local memory.
pub struct MemoryPresence {
    /// Short, synchronous critical sections: a plain mutex.
    inner: Mutex<Inner>,
    /// Events a watcher may fall behind by before it is told it lagged.
    buffer: usize,
}

#[derive(Default)]
struct Inner {
    /// room -> member -> (metadata, expiry)
    rooms: HashMap<String, HashMap<String, (Bytes, Instant)>>,
    /// member -> rooms, so `rooms(member)` does not scan every room.
    member_rooms: HashMap<String, HashSet<String>>,
    /// room -> its watchers; dropped once nobody listens.
    events: HashMap<String, broadcast::Sender<PresenceEvent>>,
}

impl Inner {
    fn emit(&mut self, kind: PresenceKind, room: &str, member: &str, metadata: Bytes) {
        if let Some(tx) = self.events.get(room) {
            let event = PresenceEvent {
                kind,
                room: room.to_string(),
                member: member.to_string(),
                metadata,
            };
            if tx.send(event).is_err() {
                self.events.remove(room);
            }
        }
    }

    fn forget(&mut self, room: &str, member: &str) {
        if let Some(members) = self.rooms.get(room)
            && members.is_empty()
        {
            self.rooms.remove(room);
        }
        if let Some(rooms) = self.member_rooms.get_mut(member) {
            rooms.remove(room);
            if rooms.is_empty() {
                self.member_rooms.remove(member);
            }
        }
    }
}

impl MemoryPresence {
    pub fn new(buffer: usize) -> Self {
        MemoryPresence {
            inner: Mutex::new(Inner::default()),
            buffer,
        }
    }

    /// Forgets every room and member (watchers stay subscribed).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.rooms.clear();
        inner.member_rooms.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl PresenceStore for MemoryPresence {
    async fn join(
        &self,
        room: &str,
        member: &str,
        metadata: Bytes,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let mut inner = self.lock();
        let members = inner.rooms.entry(room.to_string()).or_default();
        // A member still listed (even past its TTL, if no reaper has taken
        // it out yet) is heartbeating, not joining.
        let new = members
            .insert(member.to_string(), (metadata.clone(), Instant::now() + ttl))
            .is_none();
        inner
            .member_rooms
            .entry(member.to_string())
            .or_default()
            .insert(room.to_string());
        if new {
            inner.emit(PresenceKind::Join, room, member, metadata);
        }
        Ok(new)
    }

    async fn leave(&self, room: &str, member: &str) -> Result<bool, BackendError> {
        let mut inner = self.lock();
        let left = inner
            .rooms
            .get_mut(room)
            .and_then(|m| m.remove(member))
            .is_some();
        if left {
            inner.forget(room, member);
            inner.emit(PresenceKind::Leave, room, member, Bytes::new());
        }
        Ok(left)
    }

    async fn list(
        &self,
        room: &str,
        cursor: &str,
        limit: usize,
    ) -> Result<MemberPage, BackendError> {
        let after = match cursor {
            "" => None,
            c => Some(c.strip_prefix('m').ok_or(BackendError::InvalidCursor)?),
        };
        let now = Instant::now();
        let inner = self.lock();
        let Some(members) = inner.rooms.get(room) else {
            return Ok(MemberPage::default());
        };
        let mut live: Vec<(&String, &(Bytes, Instant))> = members
            .iter()
            .filter(|(name, (_, at))| *at > now && after.is_none_or(|a| name.as_str() > a))
            .collect();
        live.sort_unstable_by_key(|(name, _)| *name);
        let more = live.len() > limit;
        live.truncate(limit);
        let next_cursor = match (more, live.last()) {
            (true, Some((last, _))) => Some(format!("m{last}")),
            _ => None,
        };
        Ok(MemberPage {
            members: live
                .into_iter()
                .map(|(name, (metadata, at))| MemberInfo {
                    member: name.clone(),
                    metadata: metadata.clone(),
                    ttl: *at - now,
                })
                .collect(),
            next_cursor,
        })
    }

    async fn rooms(&self, member: &str) -> Result<Vec<String>, BackendError> {
        let now = Instant::now();
        let inner = self.lock();
        let mut rooms: Vec<String> = inner
            .member_rooms
            .get(member)
            .into_iter()
            .flatten()
            .filter(|room| {
                inner
                    .rooms
                    .get(*room)
                    .and_then(|m| m.get(member))
                    .is_some_and(|(_, at)| *at > now)
            })
            .cloned()
            .collect();
        rooms.sort();
        Ok(rooms)
    }

    async fn reap(&self, room: &str) -> Result<u64, BackendError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(members) = inner.rooms.get_mut(room) else {
            return Ok(0);
        };
        let expired: Vec<String> = members
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(name, _)| name.clone())
            .collect();
        for member in &expired {
            members.remove(member);
        }
        for member in &expired {
            inner.forget(room, member);
            inner.emit(PresenceKind::Timeout, room, member, Bytes::new());
        }
        Ok(expired.len() as u64)
    }

    async fn watch(&self, room: &str) -> Result<Feed<PresenceEvent>, BackendError> {
        let mut inner = self.lock();
        let rx = inner
            .events
            .entry(room.to_string())
            .or_insert_with(|| broadcast::channel(self.buffer).0)
            .subscribe();
        Ok(feed_from(vec![rx], ()))
    }
}
