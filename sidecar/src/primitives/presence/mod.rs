//! The presence primitive: validation, watching, and the reaper that turns
//! missed heartbeats into `timeout` events.
//!
//! The reaper runs every `presence.reap_interval` over the rooms this
//! sidecar has an interest in: rooms it watches and rooms members joined
//! through it. The backend's reap is atomic, so when several sidecars reap
//! one room, each expiry is announced exactly once.

pub mod config;
pub mod failover;
pub mod grpc;
pub mod http;
pub mod memory;
pub mod redis;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::time::Instant;

use super::Common;
use crate::backend::Feed;
use crate::error::{Error, Result};
use crate::kit::Primitive;

use crate::telemetry::{self, Metrics};
use crate::validate;
use crate::validate::Limits;
use store::{MemberPage, PresenceEvent, PresenceStore};

/// Page size of a member listing when the caller gives none.
const DEFAULT_PAGE: usize = 100;

/// Presence.
pub struct Presence {
    common: Common,
    store: Arc<dyn PresenceStore>,
    limits: Limits,
    metrics: Arc<Metrics>,
    /// Rooms to reap. A std mutex: only map updates inside.
    interest: Mutex<HashMap<String, Interest>>,
    reap_interval: Duration,
}

#[derive(Default)]
struct Interest {
    watchers: usize,
    /// Reap until then: a member joined through us may time out by then.
    joined_until: Option<Instant>,
}

/// Ends a watcher's interest in a room when its feed is dropped.
struct Unwatch {
    presence: Weak<Presence>,
    room: String,
}

impl Drop for Unwatch {
    fn drop(&mut self) {
        if let Some(presence) = self.presence.upgrade() {
            let mut interest = presence.lock();
            if let Some(i) = interest.get_mut(&self.room) {
                i.watchers -= 1;
            }
        }
    }
}

impl Presence {
    /// Creates the primitive and starts its reaper (which stops when the
    /// primitive is dropped).
    pub fn new(
        store: Arc<dyn PresenceStore>,
        limits: Limits,
        metrics: Arc<Metrics>,
        reap_interval: Duration,
        common: Common,
    ) -> Arc<Self> {
        let presence = Arc::new(Presence {
            store,
            common,
            limits,
            metrics,
            interest: Mutex::new(HashMap::new()),
            reap_interval,
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(reaper(Arc::downgrade(&presence), reap_interval));
        }
        presence
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Interest>> {
        self.interest.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn op<T>(
        &self,
        op: &'static str,
        span: tracing::Span,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        telemetry::observe(&self.metrics, "presence", op, span, fut).await
    }

    /// Joins or heartbeats; returns whether the member is new in the room.
    pub async fn join(
        &self,
        room: &str,
        member: &str,
        metadata: Bytes,
        ttl_ms: u64,
    ) -> Result<bool> {
        let span = tracing::info_span!("outrigger.presence.join", room, member, ttl_ms);
        self.op("join", span, async {
            self.check_name("room", room)?;
            self.check_name("member", member)?;
            validate::value("metadata", metadata.len(), &self.limits)?;
            let ttl = validate::ttl_ms("ttl_ms", ttl_ms, &self.limits)?;
            let joined = self.store.join(room, member, metadata, ttl).await?;
            let until = Instant::now() + ttl + self.reap_interval * 4;
            let mut interest = self.lock();
            let i = interest.entry(room.to_string()).or_default();
            i.joined_until = Some(i.joined_until.map_or(until, |u| u.max(until)));
            Ok(joined)
        })
        .await
    }

    /// Returns whether the member was in the room.
    pub async fn leave(&self, room: &str, member: &str) -> Result<bool> {
        let span = tracing::info_span!("outrigger.presence.leave", room, member);
        self.op("leave", span, async {
            self.check_name("room", room)?;
            self.check_name("member", member)?;
            Ok(self.store.leave(room, member).await?)
        })
        .await
    }

    pub async fn list(&self, room: &str, cursor: &str, limit: usize) -> Result<MemberPage> {
        let span = tracing::info_span!("outrigger.presence.list", room, limit);
        self.op("list", span, async {
            self.check_name("room", room)?;
            let limit = if limit == 0 { DEFAULT_PAGE } else { limit };
            validate::batch("members per page", limit, &self.limits)?;
            Ok(self.store.list(room, cursor, limit).await?)
        })
        .await
    }

    pub async fn rooms(&self, member: &str) -> Result<Vec<String>> {
        let span = tracing::info_span!("outrigger.presence.rooms", member);
        self.op("rooms", span, async {
            self.check_name("member", member)?;
            Ok(self.store.rooms(member).await?)
        })
        .await
    }

    /// Every event of `room` from now on; this sidecar reaps the room for
    /// as long as the feed lives.
    pub async fn watch(self: &Arc<Self>, room: &str) -> Result<Feed<PresenceEvent>> {
        let span = tracing::info_span!("outrigger.presence.watch", room);
        self.op("watch", span, async {
            self.check_name("room", room)?;
            let feed = self.store.watch(room).await?;
            self.lock().entry(room.to_string()).or_default().watchers += 1;
            let guard = Unwatch {
                presence: Arc::downgrade(self),
                room: room.to_string(),
            };
            let feed: Feed<PresenceEvent> = Box::pin(feed.map(move |item| {
                let _guard = &guard;
                item
            }));
            Ok(feed)
        })
        .await
    }

    /// Reaps every room of interest once; returns how many members timed
    /// out. Run by the reaper; public for tests.
    pub async fn reap_once(&self) -> u64 {
        let rooms: Vec<String> = {
            let now = Instant::now();
            let mut interest = self.lock();
            interest.retain(|_, i| i.watchers > 0 || i.joined_until.is_some_and(|u| u > now));
            interest.keys().cloned().collect()
        };
        let reaps = rooms.iter().map(|room| self.store.reap(room));
        let mut total = 0;
        for (room, result) in rooms.iter().zip(futures::future::join_all(reaps).await) {
            match result {
                Ok(n) => total += n,
                Err(err) => tracing::debug!(room, error = %err, "presence reap failed"),
            }
        }
        total
    }

    fn check_name(&self, what: &str, name: &str) -> Result<()> {
        validate::name(what, name, &self.limits)?;
        if name.contains('\n') {
            return Err(Error::InvalidArgument(format!(
                "{what} must not contain a newline"
            )));
        }
        Ok(())
    }
}

async fn reaper(presence: Weak<Presence>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(presence) = presence.upgrade() else {
            return;
        };
        presence.reap_once().await;
    }
}

impl Primitive for Presence {
    fn common(&self) -> &Common {
        &self.common
    }
}
