//! The presence storage seam.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::backend::{BackendError, Feed};

/// What happened in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceKind {
    Join,
    Leave,
    Timeout,
}

impl PresenceKind {
    pub fn name(self) -> &'static str {
        match self {
            PresenceKind::Join => "join",
            PresenceKind::Leave => "leave",
            PresenceKind::Timeout => "timeout",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "join" => Some(PresenceKind::Join),
            "leave" => Some(PresenceKind::Leave),
            "timeout" => Some(PresenceKind::Timeout),
            _ => None,
        }
    }
}

/// A presence event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEvent {
    pub kind: PresenceKind,
    pub room: String,
    pub member: String,
    /// The member's metadata (join events; empty otherwise).
    pub metadata: Bytes,
}

/// A member as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub member: String,
    pub metadata: Bytes,
    /// Time left before the member times out.
    pub ttl: Duration,
}

/// One page of a member listing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberPage {
    pub members: Vec<MemberInfo>,
    pub next_cursor: Option<String>,
}

/// Presence storage. Rooms and members arrive validated (non-empty, no
/// newline).
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// Joins or heartbeats; returns whether the member is new in the room
    /// (and a `join` event was published).
    async fn join(
        &self,
        room: &str,
        member: &str,
        metadata: Bytes,
        ttl: Duration,
    ) -> Result<bool, BackendError>;

    /// Returns whether the member was in the room (and a `leave` event was
    /// published).
    async fn leave(&self, room: &str, member: &str) -> Result<bool, BackendError>;

    /// Live members, one page at a time.
    async fn list(
        &self,
        room: &str,
        cursor: &str,
        limit: usize,
    ) -> Result<MemberPage, BackendError>;

    /// Rooms where `member` is live.
    async fn rooms(&self, member: &str) -> Result<Vec<String>, BackendError>;

    /// Takes out the members of `room` whose TTL ran out and publishes one
    /// `timeout` each. Atomic: of all concurrent reapers, exactly one takes
    /// out (and announces) a given expiry. Returns how many.
    async fn reap(&self, room: &str) -> Result<u64, BackendError>;

    /// Every event of `room` from any sidecar, from the moment this
    /// returns.
    async fn watch(&self, room: &str) -> Result<Feed<PresenceEvent>, BackendError>;
}
