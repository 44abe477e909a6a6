//! The work-queue storage seam.
//!
//! A job is enqueued once (or found again by its dedup id), claimed by one
//! worker at a time for a visibility window, and settled by that claim's
//! receipt: acked (gone), nacked (due again after its backoff) or, after
//! `max_attempts` claims, moved to the queue's dead letters. A claim whose
//! window runs out unsettled makes the job claimable again, and its
//! receipt settles nothing from then on.
//!
//! Times are Unix milliseconds on the store's clock (Redis' `TIME` for the
//! Redis store, so sidecars with skewed clocks agree on what is due).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::broadcast;

use super::schedule::{Schedule, Stored};
use crate::backend::BackendError;

/// When a new job becomes claimable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// This long after the store's now (zero: at once).
    After(Duration),
    /// At this Unix time in ms (in the past: at once).
    At(u64),
}

/// How long a nacked job waits before it is due again, by attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// After the first failed attempt.
    pub initial: Duration,
    /// The wait doubles per attempt up to this.
    pub max: Duration,
}

impl Backoff {
    /// The wait after failed attempt `attempt` (1-based): `initial`,
    /// doubled per attempt since, capped at `max`.
    pub fn after(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.initial
            .checked_mul(1 << doublings)
            .map_or(self.max, |d| d.min(self.max))
    }
}

/// A job to enqueue, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub payload: Bytes,
    pub due: Due,
    /// A second enqueue with this id within the dedup window returns the
    /// first job's id and enqueues nothing.
    pub dedup_id: Option<String>,
    /// Claims allowed before the job is dead; at least 1.
    pub max_attempts: u32,
    pub backoff: Backoff,
}

/// What an enqueue did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// A new job, with its id.
    New(String),
    /// The dedup id was seen within the window: the first job's id, and
    /// nothing enqueued.
    Duplicate(String),
    /// Redis is down and `failover.queues = "local"`: kept in this
    /// sidecar's buffer, to be enqueued (and given an id) when Redis
    /// returns.
    Buffered,
}

/// A job handed to one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub id: String,
    pub payload: Bytes,
    /// 1 on the first claim.
    pub attempt: u32,
    pub max_attempts: u32,
    /// Settles this claim, and no other.
    pub receipt: String,
    /// The dedup id it was enqueued with, if any.
    pub dedup_id: Option<String>,
    /// Unix ms: when the job was enqueued.
    pub enqueued_at: u64,
    /// Unix ms: when the claim runs out unless extended.
    pub visible_at: u64,
}

/// A claim to ack as part of the next claim, by its job's id and receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub id: String,
    pub receipt: String,
}

/// What a claim got.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Claims {
    pub jobs: Vec<Claimed>,
    /// When nothing was claimed: how long until a job is next due or a
    /// claim next runs out (`None`: the queue holds nothing pending), for a
    /// waiting claim to sleep that long at most.
    pub next_in: Option<Duration>,
    /// An ack the claim carried that could not be made: the job's id, and
    /// why ([`Settled::StaleReceipt`] or [`Settled::Unknown`]). Then nothing
    /// was acked and nothing claimed.
    pub refused: Option<(String, Settled)>,
}

/// How a claim is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Done: the job is removed.
    Ack,
    /// Failed: due again after `delay` (or its backoff), or dead once its
    /// attempts are spent.
    Nack {
        delay: Option<Duration>,
        error: Option<String>,
    },
    /// Still working: the claim runs out this long from now instead.
    Extend(Duration),
}

/// What settling did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    Acked,
    /// Nacked: due again at this Unix ms.
    Retrying {
        due: u64,
    },
    /// Nacked with its attempts spent: moved to the dead letters.
    Dead,
    /// Extended: the claim now runs out at this Unix ms.
    Extended {
        visible_at: u64,
    },
    /// The receipt is not the job's current claim's: an earlier attempt's,
    /// or the claim ran out (409).
    StaleReceipt,
    /// No such job in this queue (acked, purged, or never enqueued) (404).
    Unknown,
}

/// A dead job, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadJob {
    pub id: String,
    pub payload: Bytes,
    pub attempts: u32,
    /// The last nack's error text, or why the last claim ended.
    pub error: Option<String>,
    pub enqueued_at: u64,
    pub died_at: u64,
}

/// A queue's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Due now, unclaimed.
    pub ready: u64,
    /// Not due yet (delayed, or waiting out a backoff).
    pub delayed: u64,
    pub in_flight: u64,
    pub dead: u64,
    /// How long the longest-due ready job has been due, in ms.
    pub oldest_ready_ms: Option<u64>,
}

/// Why a claim ended without a settle, as a dead job records it.
pub const CLAIM_EXPIRED: &str = "the claim ran out without an ack";

/// Work-queue storage. Queue names, ids and receipts arrive validated.
#[async_trait]
pub trait QueueStore: Send + Sync + 'static {
    async fn enqueue(
        &self,
        queue: &str,
        job: NewJob,
        dedup_window: Duration,
    ) -> Result<Enqueued, BackendError>;

    /// Acks `acks` (distinct ids; all or none: one stale or unknown
    /// receipt refuses the whole call), then claims up to `max` due jobs,
    /// longest due first (FIFO among equals), each invisible to other
    /// claims for `visibility`; one atomic step. Returns at once, with
    /// what there is: waiting is the primitive's.
    async fn claim(
        &self,
        queue: &str,
        acks: &[Receipt],
        max: usize,
        visibility: Duration,
    ) -> Result<Claims, BackendError>;

    async fn settle(
        &self,
        queue: &str,
        id: &str,
        receipt: &str,
        settle: Settle,
    ) -> Result<Settled, BackendError>;

    /// Dead jobs in id (enqueue) order, from the one after `after` (an
    /// id; `None` from the first), up to `limit`.
    async fn dead(
        &self,
        queue: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadJob>, BackendError>;

    /// Moves up to `limit` dead jobs (in id order) back to ready, due now,
    /// with their attempts reset; returns how many moved.
    async fn redrive(&self, queue: &str, limit: usize) -> Result<u64, BackendError>;

    /// Deletes every dead job; returns how many.
    async fn purge_dead(&self, queue: &str) -> Result<u64, BackendError>;

    async fn stats(&self, queue: &str) -> Result<QueueStats, BackendError>;

    /// Queues holding any job, sorted, from the one after `after`.
    async fn queues(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>, BackendError>;

    /// Puts (or replaces) schedule `name`; its last tick is its anchor.
    async fn put_schedule(&self, name: &str, schedule: &Schedule) -> Result<(), BackendError>;

    async fn get_schedule(&self, name: &str) -> Result<Option<Stored>, BackendError>;

    /// Deletes schedule `name`; returns whether it existed.
    async fn delete_schedule(&self, name: &str) -> Result<bool, BackendError>;

    /// Schedules sorted by name, from the one after `after`.
    async fn schedules(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Stored)>, BackendError>;

    /// Moves schedule `name`'s last tick to `tick` if that is later and
    /// the schedule is still the one put at `anchor_ms` (not replaced or
    /// deleted since); returns whether it moved.
    async fn advance_schedule(
        &self,
        name: &str,
        anchor_ms: u64,
        tick: u64,
    ) -> Result<bool, BackendError>;

    /// Names of queues in which a job just became due now (enqueued,
    /// nacked without a wait, redriven), for waiting claims to try again.
    /// Best effort: a waiting claim also polls.
    fn ready(&self) -> broadcast::Receiver<String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_max() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let waits: Vec<u128> = (1..=6).map(|a| b.after(a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.after(0), Duration::from_millis(100));
        assert_eq!(b.after(u32::MAX), Duration::from_secs(1), "no overflow");
    }
}
