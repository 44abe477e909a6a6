//! Work queues: at-least-once jobs, each handed to one worker at a time.
//!
//! A job is claimed for a visibility window and settled with that claim's
//! receipt: acked (gone), nacked (due again after its backoff) or extended.
//! A claim that runs out unsettled makes the job claimable again, so a
//! worker that dies mid-job costs a retry, never the job; after
//! `max_attempts` claims the job is dead (kept, listed, redriven or purged).
//!
//! Waiting: a claim that finds nothing listens for jobs becoming due
//! (announced by every sidecar on the same Redis) *before* it tries, then
//! naps until one is announced, the next delayed job is due or claim runs
//! out, or a safety-net poll passes, whichever is first; `wait_ms` bounds
//! the whole wait.

pub mod config;
pub mod failover;
pub mod grpc;
pub mod http;
pub mod memory;
pub mod redis;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::Common;
use crate::backend::glob;
use crate::error::{Error, Result};
use crate::kit::Primitive;
use crate::plugins::config::PrimitiveName;
use crate::plugins::{Call, Caller, Operation};
use crate::telemetry::{self, Metrics};
use crate::validate::{self, Limits};
use config::QueuesConfig;
use store::{
    Backoff, Claimed, DeadJob, Due, Enqueued, NewJob, QueueStats, QueueStore, Settle, Settled,
};

/// Longest nap of a waiting claim when nothing is announced: the safety
/// net for a lost notification.
const SAFETY_POLL: Duration = Duration::from_millis(500);

/// Most claims one job may get.
pub const MAX_ATTEMPTS: u32 = 1000;

/// Longest receipt accepted (the stores' are 16 + attempt + 17 bytes).
const MAX_RECEIPT_BYTES: usize = 64;

/// Page size of a listing that names none.
const DEFAULT_PAGE: usize = 100;

/// An enqueue as a client asks for it; `None` takes the `[queues]` default.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnqueueRequest {
    pub payload: Bytes,
    pub delay_ms: Option<u64>,
    /// Unix ms; exclusive with `delay_ms`.
    pub due_at_ms: Option<u64>,
    pub dedup_id: Option<String>,
    pub max_attempts: Option<u32>,
    pub backoff_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
}

/// A claim as a client asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClaimRequest {
    /// Most jobs to claim; 0 means 1.
    pub max: u32,
    pub visibility_ms: Option<u64>,
    /// How long to wait for a job when none is due; 0: answer at once.
    pub wait_ms: u64,
}

/// How a client settles a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleRequest {
    Ack,
    Nack {
        delay_ms: Option<u64>,
        error: Option<String>,
    },
    Extend {
        visibility_ms: Option<u64>,
    },
}

/// A page of queue names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePage {
    pub queues: Vec<String>,
    /// Pass as `after` for the next page; `None` on the last one.
    pub next: Option<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    /// `enqueued`, `duplicate`, `buffered` (Redis down, `failover.queues =
    /// "local"`), `claimed`, `acked`, `retried` or `dead`
    /// (a nack with its attempts spent; claims running out on the last
    /// attempt are counted by the store's stats, not here).
    event: &'static str,
}

/// Work queues.
pub struct Queues {
    store: Arc<dyn QueueStore>,
    common: Common,
    limits: Limits,
    config: QueuesConfig,
    metrics: Arc<Metrics>,
    /// `outrigger_queue_jobs`.
    jobs: Family<JobLabels, Counter>,
}

impl Primitive for Queues {
    fn common(&self) -> &Common {
        &self.common
    }
}

/// Resolves when a job in `queue` is announced as due (or announcements
/// were lost, which is a reason to look again too).
async fn announced(rx: &mut broadcast::Receiver<String>, queue: &str) {
    loop {
        match rx.recv().await {
            Ok(name) if name == queue => return,
            Ok(_) => continue,
            Err(RecvError::Lagged(_)) => return,
            Err(RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

fn invalid<T>(message: String) -> Result<T> {
    Err(Error::InvalidArgument(message))
}

impl Queues {
    pub fn new(
        store: Arc<dyn QueueStore>,
        limits: Limits,
        config: &QueuesConfig,
        metrics: Arc<Metrics>,
        common: Common,
    ) -> Self {
        let jobs = Family::default();
        metrics.register(
            "queue_jobs",
            "Work-queue job events on this sidecar: enqueued, duplicate (an enqueue its dedup id \
             kept out), buffered (Redis down, failover.queues = local), claimed, acked, retried (nacked, due again) and dead (nacked on its last \
             attempt)",
            jobs.clone(),
        );
        Queues {
            store,
            common,
            limits,
            config: config.clone(),
            metrics,
            jobs,
        }
    }

    fn count(&self, event: &'static str, n: u64) {
        if n > 0 {
            self.jobs.get_or_create(&JobLabels { event }).inc_by(n);
        }
    }

    fn authorize_queue(&self, caller: &Caller, op: Operation, queue: String) -> Result<String> {
        validate::name("queue name", &queue, &self.limits)?;
        let queue = self.authorize(caller, Call::new(PrimitiveName::Queue, op, queue))?;
        validate::name("queue name", &queue, &self.limits)?;
        Ok(queue)
    }

    /// Enqueues a job for `caller`, authorized first.
    pub async fn enqueue_for(
        &self,
        caller: &Caller,
        queue: String,
        req: EnqueueRequest,
    ) -> Result<Enqueued> {
        validate::name("queue name", &queue, &self.limits)?;
        let call = Call::new(PrimitiveName::Queue, Operation::Enqueue, queue)
            .value_size(req.payload.len());
        let queue = self.authorize(caller, call)?;
        self.enqueue(&queue, req).await
    }

    pub async fn enqueue(&self, queue: &str, req: EnqueueRequest) -> Result<Enqueued> {
        let span =
            tracing::info_span!("outrigger.queue.enqueue", queue, id = tracing::field::Empty);
        let record = span.clone();
        telemetry::observe(&self.metrics, "queue", "enqueue", span, async {
            validate::name("queue name", queue, &self.limits)?;
            let job = self.check_job(req)?;
            let enqueued = self
                .store
                .enqueue(queue, job, self.config.dedup_window)
                .await?;
            match &enqueued {
                Enqueued::New(id) => {
                    record.record("id", id.as_str());
                    self.count("enqueued", 1);
                }
                Enqueued::Duplicate(_) => self.count("duplicate", 1),
                Enqueued::Buffered => self.count("buffered", 1),
            }
            Ok(enqueued)
        })
        .await
    }

    /// Claims for `caller`, authorized first.
    pub async fn claim_for(
        &self,
        caller: &Caller,
        queue: String,
        req: ClaimRequest,
    ) -> Result<Vec<Claimed>> {
        let queue = self.authorize_queue(caller, Operation::Claim, queue)?;
        self.claim(&queue, req).await
    }

    /// Claims up to `req.max` due jobs, waiting up to `req.wait_ms` for
    /// one when none is due.
    pub async fn claim(&self, queue: &str, req: ClaimRequest) -> Result<Vec<Claimed>> {
        let span = tracing::info_span!(
            "outrigger.queue.claim",
            queue,
            max = req.max,
            wait_ms = req.wait_ms
        );
        telemetry::observe(&self.metrics, "queue", "claim", span, async {
            validate::name("queue name", queue, &self.limits)?;
            let max = req.max.max(1) as usize;
            validate::batch("jobs asked for", max, &self.limits)?;
            let visibility = self.visibility(req.visibility_ms)?;
            let wait = self.check_wait(req.wait_ms)?;
            let deadline = Instant::now() + wait;
            // Listening before the first try, so a job announced between an
            // empty claim and the nap is not missed.
            let mut ready = self.store.ready();
            loop {
                let claims = self.store.claim(queue, max, visibility).await?;
                let now = Instant::now();
                if !claims.jobs.is_empty() || now >= deadline {
                    self.count("claimed", claims.jobs.len() as u64);
                    return Ok(claims.jobs);
                }
                let nap = (deadline - now)
                    .min(claims.next_in.unwrap_or(SAFETY_POLL))
                    .clamp(Duration::from_millis(1), SAFETY_POLL);
                let _ = tokio::time::timeout(nap, announced(&mut ready, queue)).await;
            }
        })
        .await
    }

    /// Settles a claim for `caller`, authorized first (the job id is the
    /// request's `member`).
    pub async fn settle_for(
        &self,
        caller: &Caller,
        queue: String,
        id: &str,
        receipt: &str,
        req: SettleRequest,
    ) -> Result<Settled> {
        validate::name("queue name", &queue, &self.limits)?;
        let call = Call::new(PrimitiveName::Queue, Operation::Settle, queue).member(id);
        let queue = self.authorize(caller, call)?;
        self.settle(&queue, id, receipt, req).await
    }

    /// Acks, nacks or extends the claim `receipt` of job `id`. A receipt
    /// that is not the job's current claim's is a conflict (409), a job the
    /// queue does not hold is not found (404).
    pub async fn settle(
        &self,
        queue: &str,
        id: &str,
        receipt: &str,
        req: SettleRequest,
    ) -> Result<Settled> {
        let op = match req {
            SettleRequest::Ack => "ack",
            SettleRequest::Nack { .. } => "nack",
            SettleRequest::Extend { .. } => "extend",
        };
        let span = tracing::info_span!("outrigger.queue.settle", queue, id, op);
        telemetry::observe(&self.metrics, "queue", op, span, async {
            validate::name("queue name", queue, &self.limits)?;
            if memory::parse_job_id(id).is_none() {
                return invalid(format!(
                    "job id {id:?} is not one enqueue returns (16 hex digits)"
                ));
            }
            if receipt.is_empty() || receipt.len() > MAX_RECEIPT_BYTES {
                return invalid(format!(
                    "receipt must be 1..={MAX_RECEIPT_BYTES} bytes, as claim returned it"
                ));
            }
            let settle = match req {
                SettleRequest::Ack => Settle::Ack,
                SettleRequest::Nack { delay_ms, error } => {
                    if let Some(error) = &error {
                        validate::value("error", error.len(), &self.limits)?;
                    }
                    Settle::Nack {
                        delay: delay_ms.map(|ms| self.delay("delay_ms", ms)).transpose()?,
                        error,
                    }
                }
                SettleRequest::Extend { visibility_ms } => {
                    Settle::Extend(self.visibility(visibility_ms)?)
                }
            };
            match self.store.settle(queue, id, receipt, settle).await? {
                Settled::StaleReceipt => Err(Error::Conflict(format!(
                    "the receipt is not job {id}'s current claim's: an earlier attempt's, or \
                     the claim ran out (the job is claimable again, or claimed by another worker)"
                ))),
                Settled::Unknown => Err(Error::NotFound(format!(
                    "queue {queue:?} holds no job {id}: acked, purged, or never enqueued"
                ))),
                settled => {
                    match settled {
                        Settled::Acked => self.count("acked", 1),
                        Settled::Retrying { .. } => self.count("retried", 1),
                        Settled::Dead => self.count("dead", 1),
                        _ => {}
                    }
                    Ok(settled)
                }
            }
        })
        .await
    }

    /// Dead jobs for `caller` (a read), by id from the one after `after`.
    pub async fn dead_for(
        &self,
        caller: &Caller,
        queue: String,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<DeadJob>> {
        let queue = self.authorize_queue(caller, Operation::Read, queue)?;
        let span = tracing::info_span!("outrigger.queue.dead", queue);
        telemetry::observe(&self.metrics, "queue", "dead", span, async {
            if let Some(after) = after
                && memory::parse_job_id(after).is_none()
            {
                return invalid(format!("after {after:?} is not a job id (16 hex digits)"));
            }
            let limit = self.page(limit)?;
            Ok(self.store.dead(&queue, after, limit).await?)
        })
        .await
    }

    /// Moves up to `limit` dead jobs back to ready for `caller` (a write).
    pub async fn redrive_for(
        &self,
        caller: &Caller,
        queue: String,
        limit: Option<usize>,
    ) -> Result<u64> {
        let queue = self.authorize_queue(caller, Operation::Write, queue)?;
        let span = tracing::info_span!("outrigger.queue.redrive", queue);
        telemetry::observe(&self.metrics, "queue", "redrive", span, async {
            let limit = self.page(limit.or(Some(self.limits.max_batch)))?;
            Ok(self.store.redrive(&queue, limit).await?)
        })
        .await
    }

    /// Deletes every dead job for `caller` (a delete).
    pub async fn purge_dead_for(&self, caller: &Caller, queue: String) -> Result<u64> {
        let queue = self.authorize_queue(caller, Operation::Delete, queue)?;
        let span = tracing::info_span!("outrigger.queue.purge", queue);
        telemetry::observe(&self.metrics, "queue", "purge", span, async {
            Ok(self.store.purge_dead(&queue).await?)
        })
        .await
    }

    /// A queue's counts for `caller` (a read).
    pub async fn stats_for(&self, caller: &Caller, queue: String) -> Result<QueueStats> {
        let queue = self.authorize_queue(caller, Operation::Read, queue)?;
        let span = tracing::info_span!("outrigger.queue.stats", queue);
        telemetry::observe(&self.metrics, "queue", "stats", span, async {
            Ok(self.store.stats(&queue).await?)
        })
        .await
    }

    /// Queues holding jobs whose names match `pattern` (a glob; a plugin
    /// may narrow it), sorted, from the one after `after`.
    pub async fn list_for(
        &self,
        caller: &Caller,
        pattern: String,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<QueuePage> {
        if let Err(reason) = glob::validate(&pattern) {
            return invalid(format!("pattern {pattern:?}: {reason}"));
        }
        let pattern = self.authorize(
            caller,
            Call::new(PrimitiveName::Queue, Operation::Scan, pattern),
        )?;
        let span = tracing::info_span!("outrigger.queue.list", pattern);
        telemetry::observe(&self.metrics, "queue", "list", span, async {
            let limit = self.page(limit)?;
            let names = self.store.queues(after, limit).await?;
            let next = (names.len() == limit)
                .then(|| names.last().cloned())
                .flatten();
            Ok(QueuePage {
                queues: names
                    .into_iter()
                    .filter(|name| glob::matches(&pattern, name))
                    .collect(),
                next,
            })
        })
        .await
    }

    fn check_job(&self, req: EnqueueRequest) -> Result<NewJob> {
        validate::value("payload", req.payload.len(), &self.limits)?;
        let due = match (req.delay_ms, req.due_at_ms) {
            (Some(_), Some(_)) => {
                return invalid("give delay_ms or due_at_ms, not both".into());
            }
            (None, Some(at)) => Due::At(at),
            (delay, None) => Due::After(match delay {
                None | Some(0) => Duration::ZERO,
                Some(ms) => self.delay("delay_ms", ms)?,
            }),
        };
        if let Some(dedup_id) = &req.dedup_id {
            validate::name("dedup_id", dedup_id, &self.limits)?;
        }
        let max_attempts = req.max_attempts.unwrap_or(self.config.max_attempts);
        if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
            return invalid(format!(
                "max_attempts must be 1..={MAX_ATTEMPTS}, not {max_attempts}"
            ));
        }
        let initial = match req.backoff_ms {
            None => self.config.backoff,
            Some(ms) => self.delay("backoff_ms", ms)?,
        };
        let max = match req.backoff_max_ms {
            None => self.config.backoff_max.max(initial),
            Some(ms) => self.delay("backoff_max_ms", ms)?,
        };
        if max < initial {
            return invalid(format!(
                "backoff_max_ms ({}) is below backoff_ms ({})",
                max.as_millis(),
                initial.as_millis()
            ));
        }
        Ok(NewJob {
            payload: req.payload,
            due,
            dedup_id: req.dedup_id,
            max_attempts,
            backoff: Backoff { initial, max },
        })
    }

    /// A delay or backoff: 0..=`limits.max_ttl`.
    fn delay(&self, what: &str, ms: u64) -> Result<Duration> {
        if ms == 0 {
            return Ok(Duration::ZERO);
        }
        validate::ttl_ms(what, ms, &self.limits)
    }

    /// A claim's visibility: 1 ms..=`limits.max_ttl`, `[queues]
    /// visibility` when not given.
    fn visibility(&self, ms: Option<u64>) -> Result<Duration> {
        match ms {
            None => Ok(self.config.visibility),
            Some(ms) => validate::ttl_ms("visibility_ms", ms, &self.limits),
        }
    }

    fn check_wait(&self, wait_ms: u64) -> Result<Duration> {
        let wait = Duration::from_millis(wait_ms);
        if wait > self.limits.max_wait {
            return invalid(format!(
                "wait_ms must be at most {} (limits.max_wait), not {wait_ms}",
                self.limits.max_wait.as_millis()
            ));
        }
        Ok(wait)
    }

    fn page(&self, limit: Option<usize>) -> Result<usize> {
        let limit = limit.unwrap_or(DEFAULT_PAGE);
        if limit == 0 {
            return invalid("limit must be at least 1".into());
        }
        validate::batch("items in a page", limit, &self.limits)?;
        Ok(limit)
    }
}
