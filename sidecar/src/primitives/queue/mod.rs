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
pub mod schedule;
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
use schedule::{Every, Missed, Schedule, Stored};
use store::{
    Backoff, Claimed, DeadJob, Due, Enqueued, NewJob, QueueStats, QueueStore, Receipt, Settle,
    Settled,
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

/// How often each sidecar looks for due schedule ticks.
const SCHEDULE_POLL: Duration = Duration::from_millis(200);

/// Most ticks of one schedule enqueued per look.
const TICKS_PER_POLL: usize = 100;

/// A schedule as a client puts it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScheduleRequest {
    pub queue: String,
    pub payload: Bytes,
    pub every_ms: Option<u64>,
    pub cron: Option<String>,
    pub missed: Missed,
    pub max_attempts: Option<u32>,
}

/// A schedule as both APIs show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleView {
    pub name: String,
    pub stored: Stored,
    /// Unix ms of the next tick after the last, if it has one.
    pub next_tick_ms: Option<u64>,
}

impl ScheduleView {
    fn new(name: String, stored: Stored) -> Self {
        let next_tick_ms = stored
            .schedule
            .every()
            .and_then(|every| every.next_after(stored.schedule.anchor_ms, stored.last_tick_ms));
        ScheduleView {
            name,
            stored,
            next_tick_ms,
        }
    }
}

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
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClaimRequest {
    /// Claims to ack first, in the same step (a worker's finished jobs,
    /// saving an ack request each): all or none.
    pub ack: Vec<Receipt>,
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
    /// "local"`), `scheduled` (a schedule's tick, by this sidecar), `claimed`, `acked`, `retried` or `dead`
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

/// Each sidecar's schedule loop: a look every [`SCHEDULE_POLL`] while the
/// primitive lives.
async fn run_schedules(queues: std::sync::Weak<Queues>) {
    let mut every = tokio::time::interval(SCHEDULE_POLL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(queues) = queues.upgrade() else {
            return;
        };
        if let Err(err) = queues.tick_schedules().await {
            tracing::debug!(error = %err, "could not look at the schedules; trying again");
        }
    }
}

fn invalid<T>(message: String) -> Result<T> {
    Err(Error::InvalidArgument(message))
}

/// A job id as enqueue returns them, and a receipt as claim does.
fn check_receipt(id: &str, receipt: &str) -> Result<()> {
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
    Ok(())
}

impl Queues {
    /// The primitive, and its schedule loop (which ends when it is
    /// dropped).
    pub fn new(
        store: Arc<dyn QueueStore>,
        limits: Limits,
        config: &QueuesConfig,
        metrics: Arc<Metrics>,
        common: Common,
    ) -> Arc<Self> {
        let jobs = Family::default();
        metrics.register(
            "queue_jobs",
            "Work-queue job events on this sidecar: enqueued, duplicate (an enqueue its dedup id \
             kept out), buffered (Redis down, failover.queues = local), scheduled (a \
             schedule's tick enqueued by this sidecar), claimed, acked, retried (nacked, due again) and dead (nacked on its last \
             attempt)",
            jobs.clone(),
        );
        let queues = Arc::new(Queues {
            store,
            common,
            limits,
            config: config.clone(),
            metrics,
            jobs,
        });
        tokio::spawn(run_schedules(Arc::downgrade(&queues)));
        queues
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
        let granted = self.authorize_queue(caller, Operation::Claim, queue.clone())?;
        for ack in &req.ack {
            let call =
                Call::new(PrimitiveName::Queue, Operation::Settle, queue.clone()).member(&ack.id);
            if self.authorize(caller, call)? != granted {
                return Err(Error::Denied(format!(
                    "a plugin mapped queue {queue:?} to {granted:?} for the ack of job {} but \
                     not for the claim: ack it on its own",
                    ack.id
                )));
            }
        }
        self.claim(&granted, req).await
    }

    /// Acks `req.ack` (all or none: a stale receipt is a conflict, an
    /// unknown job not found, and then nothing is claimed either), then
    /// claims up to `req.max` due jobs, waiting up to `req.wait_ms` for one
    /// when none is due.
    pub async fn claim(&self, queue: &str, req: ClaimRequest) -> Result<Vec<Claimed>> {
        let span = tracing::info_span!(
            "outrigger.queue.claim",
            queue,
            max = req.max,
            wait_ms = req.wait_ms,
            acks = req.ack.len()
        );
        telemetry::observe(&self.metrics, "queue", "claim", span, async {
            validate::name("queue name", queue, &self.limits)?;
            let max = req.max.max(1) as usize;
            if max > self.limits.max_batch {
                return invalid(format!(
                    "max must be 1..={} (limits.max_batch), not {max}",
                    self.limits.max_batch
                ));
            }
            self.check_acks(&req.ack)?;
            let visibility = self.visibility(req.visibility_ms)?;
            let wait = self.check_wait(req.wait_ms)?;
            let deadline = Instant::now() + wait;
            // Listening before the first try, so a job announced between an
            // empty claim and the nap is not missed.
            let mut ready = (!wait.is_zero()).then(|| self.store.ready());
            let mut acks = req.ack.as_slice();
            loop {
                let claims = self.store.claim(queue, acks, max, visibility).await?;
                if let Some((id, why)) = claims.refused {
                    return Err(self.refusal(queue, &id, why));
                }
                self.count("acked", acks.len() as u64);
                acks = &[];
                let now = Instant::now();
                let Some(ready) = ready
                    .as_mut()
                    .filter(|_| claims.jobs.is_empty() && now < deadline)
                else {
                    self.count("claimed", claims.jobs.len() as u64);
                    return Ok(claims.jobs);
                };
                let nap = (deadline - now)
                    .min(claims.next_in.unwrap_or(SAFETY_POLL))
                    .clamp(Duration::from_millis(1), SAFETY_POLL);
                let _ = tokio::time::timeout(nap, announced(ready, queue)).await;
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
            check_receipt(id, receipt)?;
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
                why @ (Settled::StaleReceipt | Settled::Unknown) => {
                    Err(self.refusal(queue, id, why))
                }
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

    /// Puts (or replaces) schedule `name` for `caller`: authorized as a
    /// write of the schedule and an enqueue into its queue. Its ticks count
    /// from now; a replaced schedule forgets the old one's.
    pub async fn put_schedule_for(
        &self,
        caller: &Caller,
        name: String,
        req: ScheduleRequest,
    ) -> Result<ScheduleView> {
        validate::name("schedule name", &name, &self.limits)?;
        validate::name("queue name", &req.queue, &self.limits)?;
        let name = self.authorize(
            caller,
            Call::new(PrimitiveName::Schedule, Operation::Write, name),
        )?;
        let enqueue = Call::new(PrimitiveName::Queue, Operation::Enqueue, req.queue.clone())
            .value_size(req.payload.len());
        let queue = self.authorize(caller, enqueue)?;
        let span = tracing::info_span!("outrigger.queue.put_schedule", name, queue);
        telemetry::observe(&self.metrics, "schedule", "put", span, async {
            validate::value("payload", req.payload.len(), &self.limits)?;
            match (req.every_ms, &req.cron) {
                (Some(_), Some(_)) | (None, None) => {
                    return invalid("give every_ms or cron, one of them".into());
                }
                (Some(ms), None) => {
                    let min = schedule::MIN_INTERVAL.as_millis() as u64;
                    if ms < min {
                        return invalid(format!("every_ms must be at least {min}, not {ms}"));
                    }
                    validate::ttl_ms("every_ms", ms, &self.limits)?;
                }
                (None, Some(expr)) => {
                    Every::cron(expr)
                        .map_err(|e| Error::InvalidArgument(format!("cron {expr:?}: {e}")))?;
                }
            }
            if let Some(n) = req.max_attempts
                && !(1..=MAX_ATTEMPTS).contains(&n)
            {
                return invalid(format!("max_attempts must be 1..={MAX_ATTEMPTS}, not {n}"));
            }
            let schedule = Schedule {
                queue,
                payload: req.payload,
                every_ms: req.every_ms,
                cron: req.cron,
                missed: req.missed,
                max_attempts: req.max_attempts,
                anchor_ms: crate::kit::unix_ms(std::time::SystemTime::now()),
            };
            self.store.put_schedule(&name, &schedule).await?;
            let stored = Stored {
                last_tick_ms: schedule.anchor_ms,
                schedule,
            };
            Ok(ScheduleView::new(name.clone(), stored))
        })
        .await
    }

    /// Schedule `name` for `caller` (a read); not found is an error.
    pub async fn get_schedule_for(&self, caller: &Caller, name: String) -> Result<ScheduleView> {
        validate::name("schedule name", &name, &self.limits)?;
        let name = self.authorize(
            caller,
            Call::new(PrimitiveName::Schedule, Operation::Read, name),
        )?;
        let span = tracing::info_span!("outrigger.queue.get_schedule", name);
        telemetry::observe(&self.metrics, "schedule", "get", span, async {
            match self.store.get_schedule(&name).await? {
                Some(stored) => Ok(ScheduleView::new(name.clone(), stored)),
                None => Err(Error::NotFound(format!("no schedule {name:?}"))),
            }
        })
        .await
    }

    /// Deletes schedule `name` for `caller`; whether it existed. Jobs it
    /// enqueued stay.
    pub async fn delete_schedule_for(&self, caller: &Caller, name: String) -> Result<bool> {
        validate::name("schedule name", &name, &self.limits)?;
        let name = self.authorize(
            caller,
            Call::new(PrimitiveName::Schedule, Operation::Delete, name),
        )?;
        let span = tracing::info_span!("outrigger.queue.delete_schedule", name);
        telemetry::observe(&self.metrics, "schedule", "delete", span, async {
            Ok(self.store.delete_schedule(&name).await?)
        })
        .await
    }

    /// Schedules for `caller` (a scan of every name), sorted by name.
    pub async fn list_schedules_for(
        &self,
        caller: &Caller,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<ScheduleView>> {
        let pattern = self.authorize(
            caller,
            Call::new(PrimitiveName::Schedule, Operation::Scan, "*"),
        )?;
        let span = tracing::info_span!("outrigger.queue.list_schedules");
        telemetry::observe(&self.metrics, "schedule", "list", span, async {
            let limit = self.page(limit)?;
            Ok(self
                .store
                .schedules(after, limit)
                .await?
                .into_iter()
                .filter(|(name, _)| glob::matches(&pattern, name))
                .map(|(name, stored)| ScheduleView::new(name, stored))
                .collect())
        })
        .await
    }

    /// One look at every schedule: enqueues the ticks due, each once.
    async fn tick_schedules(&self) -> Result<()> {
        let mut after: Option<String> = None;
        loop {
            let page = self.store.schedules(after.as_deref(), DEFAULT_PAGE).await?;
            let full = page.len() == DEFAULT_PAGE;
            after = page.last().map(|(name, _)| name.clone());
            for (name, stored) in page {
                if let Err(err) = self.tick_schedule(&name, &stored).await {
                    tracing::debug!(schedule = name, error = %err, "a schedule tick is left for the next look");
                }
            }
            if !full {
                return Ok(());
            }
        }
    }

    async fn tick_schedule(&self, name: &str, stored: &Stored) -> Result<()> {
        let schedule = &stored.schedule;
        let Some(every) = schedule.every() else {
            return Ok(());
        };
        let now = crate::kit::unix_ms(std::time::SystemTime::now());
        let (due, advance) =
            schedule::due_ticks(&every, schedule, stored.last_tick_ms, now, TICKS_PER_POLL);
        let window = schedule::dedup_window(&every);
        for tick in due {
            let job = EnqueueRequest {
                payload: schedule.payload.clone(),
                dedup_id: Some(schedule::tick_id(name, tick)),
                max_attempts: schedule.max_attempts,
                ..EnqueueRequest::default()
            };
            let job = self.check_job(job)?;
            match self.store.enqueue(&schedule.queue, job, window).await? {
                Enqueued::New(_) => self.count("scheduled", 1),
                Enqueued::Duplicate(_) | Enqueued::Buffered => {}
            }
        }
        if let Some(tick) = advance {
            self.store
                .advance_schedule(name, schedule.anchor_ms, tick)
                .await?;
        }
        Ok(())
    }

    fn check_job(&self, req: EnqueueRequest) -> Result<NewJob> {
        validate::value("payload", req.payload.len(), &self.limits)?;
        let due = match (req.delay_ms, req.due_at_ms) {
            (Some(_), Some(_)) => {
                return invalid("give delay_ms or due_at_ms, not both".into());
            }
            (None, Some(at)) => {
                let latest = crate::kit::unix_ms(std::time::SystemTime::now())
                    .saturating_add(self.limits.max_ttl.as_millis() as u64);
                if at > latest {
                    return invalid(format!(
                        "due_at_ms must be at most limits.max_ttl from now ({latest}), not {at}"
                    ));
                }
                Due::At(at)
            }
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

    /// The error for a settle refused with `why`: 409 for a stale receipt,
    /// 404 for a job the queue does not hold.
    fn refusal(&self, queue: &str, id: &str, why: Settled) -> Error {
        if why == Settled::Unknown {
            return Error::NotFound(format!(
                "queue {queue:?} holds no job {id}: acked, purged, or never enqueued"
            ));
        }
        Error::Conflict(format!(
            "the receipt is not job {id}'s current claim's: an earlier attempt's, or the claim \
             ran out (the job is claimable again, or claimed by another worker)"
        ))
    }

    /// A claim's acks: at most `limits.max_batch`, well formed, each job
    /// once.
    fn check_acks(&self, acks: &[Receipt]) -> Result<()> {
        if acks.len() > self.limits.max_batch {
            return invalid(format!(
                "ack holds {} claims, more than {} (limits.max_batch)",
                acks.len(),
                self.limits.max_batch
            ));
        }
        let mut seen = std::collections::HashSet::with_capacity(acks.len());
        for ack in acks {
            check_receipt(&ack.id, &ack.receipt)?;
            if !seen.insert(ack.id.as_str()) {
                return invalid(format!("ack names job {} twice", ack.id));
            }
        }
        Ok(())
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
        if limit == 0 || limit > self.limits.max_batch {
            return invalid(format!(
                "limit must be 1..={} (limits.max_batch), not {limit}",
                self.limits.max_batch
            ));
        }
        Ok(limit)
    }
}
