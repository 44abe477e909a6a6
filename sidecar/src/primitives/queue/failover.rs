//! Work queues behind the failover circuit: Redis while it answers; while
//! it does not, every call is refused (`failover.queues = "fail"`, the
//! default: a job accepted only in one sidecar's memory is a job a restart
//! of that sidecar loses, and a claim served from memory would hand out
//! jobs no other sidecar knows). With `"local"`, enqueues are kept in this
//! sidecar's buffer instead (up to `failover.enqueue_buffer`; 503 past it)
//! and enqueued on Redis, in order, when it returns, before any new
//! request reaches it; everything else is still refused. A buffered job
//! has no id until then, and is lost if this sidecar stops first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::redis::RedisQueues;
use super::schedule::{Schedule, Stored};
use super::store::{
    Claims, DeadJob, Due, Enqueued, NewJob, QueueStats, QueueStore, Receipt, Settle, Settled,
};
use crate::backend::BackendError;
use crate::backend::circuit::{Circuit, Reconcile, Reconciliation, WhileDown, lock};
use crate::kit::unix_ms;

/// How queues behave while Redis is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WhileRedisDown {
    /// Buffer enqueues (`"local"`) rather than refuse them.
    pub buffer: bool,
    /// Enqueues the buffer holds.
    pub capacity: usize,
}

struct Buffered {
    queue: String,
    job: NewJob,
    dedup_window: Duration,
}

#[derive(Default)]
struct Outbox {
    jobs: VecDeque<Buffered>,
    /// Set from the start of a recovery until the buffer is empty: new
    /// enqueues queue behind the buffered ones to keep the order.
    flushing: bool,
}

/// Work queues in Redis, refusing or buffering while it is down.
pub struct FailoverQueues {
    circuit: Arc<Circuit>,
    redis: RedisQueues,
    mode: WhileRedisDown,
    /// A std mutex: short, synchronous updates only.
    outbox: Mutex<Outbox>,
    refuse: WhileDown,
    /// Where an enqueue goes while down: the buffer, or a refusal.
    enqueue_down: WhileDown,
}

impl FailoverQueues {
    pub async fn new(
        circuit: Arc<Circuit>,
        mode: WhileRedisDown,
    ) -> Result<Arc<Self>, BackendError> {
        let refuse = WhileDown::Fail(
            "Redis is unreachable, and a work queue lives only in Redis: a job accepted or \
             claimed in one sidecar's memory is lost when it restarts"
                .into(),
        );
        let store = Arc::new(FailoverQueues {
            redis: RedisQueues::new(circuit.redis().clone()).await?,
            enqueue_down: if mode.buffer {
                WhileDown::Local
            } else {
                refuse.clone()
            },
            refuse,
            mode,
            outbox: Mutex::new(Outbox::default()),
            circuit,
        });
        store.circuit.register(Arc::downgrade(&store) as _);
        Ok(store)
    }

    /// A call Redis alone serves: refused while it is down.
    async fn on_redis<T>(
        &self,
        call: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        // `refuse` never falls back: the memory arm is never taken.
        self.circuit
            .route("queue", &self.refuse, call, || {
                std::future::ready(Err(BackendError::FailClosed(
                    "work queues have no memory fallback".into(),
                )))
            })
            .await
    }

    /// Keeps an enqueue for Redis; its delay counts from now.
    fn buffer(
        &self,
        outbox: &mut Outbox,
        queue: &str,
        mut job: NewJob,
        dedup_window: Duration,
    ) -> Result<Enqueued, BackendError> {
        if outbox.jobs.len() >= self.mode.capacity {
            return Err(BackendError::FailClosed(format!(
                "Redis is unreachable and this sidecar's enqueue buffer is full ({} jobs, \
                 failover.enqueue_buffer)",
                self.mode.capacity
            )));
        }
        if let Due::After(delay) = job.due {
            job.due = Due::At(unix_ms(SystemTime::now() + delay));
        }
        outbox.jobs.push_back(Buffered {
            queue: queue.to_string(),
            job,
            dedup_window,
        });
        Ok(Enqueued::Buffered)
    }

    /// Enqueues the buffered jobs on Redis, in order; with `finish`, ends
    /// the flushing once the buffer is empty. On an outage the rest stays
    /// buffered, in order, and flushing ends.
    async fn flush(&self, finish: bool) -> Result<u64, BackendError> {
        let mut flushed = 0;
        loop {
            let next = {
                let mut outbox = lock(&self.outbox);
                match outbox.jobs.pop_front() {
                    Some(next) => next,
                    None => {
                        outbox.flushing &= !finish;
                        return Ok(flushed);
                    }
                }
            };
            match self
                .redis
                .enqueue(&next.queue, next.job.clone(), next.dedup_window)
                .await
            {
                Ok(_) => flushed += 1,
                Err(err) if err.is_outage() => {
                    let mut outbox = lock(&self.outbox);
                    outbox.jobs.push_front(next);
                    outbox.flushing = false;
                    return Err(err);
                }
                Err(err) => {
                    tracing::warn!(queue = next.queue, error = %err, "Redis refused a buffered enqueue; it is dropped");
                }
            }
        }
    }
}

#[async_trait]
impl Reconcile for FailoverQueues {
    /// Enqueues what was buffered before requests go back to Redis; later
    /// enqueues queue behind it until the buffer is empty.
    async fn restore(&self, _report: &mut Reconciliation) -> Result<(), BackendError> {
        lock(&self.outbox).flushing = true;
        let flushed = self.flush(false).await?;
        if flushed > 0 {
            tracing::info!(
                jobs = flushed,
                "enqueued the jobs buffered while Redis was down"
            );
        }
        Ok(())
    }

    fn reconcile(&self, _report: &mut Reconciliation) {}

    /// Enqueues what was buffered while the restore ran, then lets
    /// enqueues go straight to Redis again.
    fn recovered(self: Arc<Self>) {
        tokio::spawn(async move {
            if let Err(err) = self.flush(true).await {
                if err.is_outage() {
                    self.circuit.trip(&err);
                }
                tracing::warn!(error = %err, "could not enqueue the last buffered jobs; they are kept for the next recovery");
            }
        });
    }
}

#[async_trait]
impl QueueStore for FailoverQueues {
    async fn enqueue(
        &self,
        queue: &str,
        job: NewJob,
        dedup_window: Duration,
    ) -> Result<Enqueued, BackendError> {
        {
            let mut outbox = lock(&self.outbox);
            if outbox.flushing {
                return self.buffer(&mut outbox, queue, job, dedup_window);
            }
        }
        self.circuit
            .route(
                "queue",
                &self.enqueue_down,
                self.redis.enqueue(queue, job.clone(), dedup_window),
                || {
                    let mut outbox = lock(&self.outbox);
                    std::future::ready(self.buffer(&mut outbox, queue, job.clone(), dedup_window))
                },
            )
            .await
    }

    async fn claim(
        &self,
        queue: &str,
        acks: &[Receipt],
        max: usize,
        visibility: Duration,
    ) -> Result<Claims, BackendError> {
        self.on_redis(self.redis.claim(queue, acks, max, visibility))
            .await
    }

    async fn settle(
        &self,
        queue: &str,
        id: &str,
        receipt: &str,
        settle: Settle,
    ) -> Result<Settled, BackendError> {
        self.on_redis(self.redis.settle(queue, id, receipt, settle))
            .await
    }

    async fn dead(
        &self,
        queue: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadJob>, BackendError> {
        self.on_redis(self.redis.dead(queue, after, limit)).await
    }

    async fn redrive(&self, queue: &str, limit: usize) -> Result<u64, BackendError> {
        self.on_redis(self.redis.redrive(queue, limit)).await
    }

    async fn purge_dead(&self, queue: &str) -> Result<u64, BackendError> {
        self.on_redis(self.redis.purge_dead(queue)).await
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, BackendError> {
        self.on_redis(self.redis.stats(queue)).await
    }

    async fn queues(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>, BackendError> {
        self.on_redis(self.redis.queues(after, limit)).await
    }

    async fn put_schedule(&self, name: &str, schedule: &Schedule) -> Result<(), BackendError> {
        self.on_redis(self.redis.put_schedule(name, schedule)).await
    }

    async fn get_schedule(&self, name: &str) -> Result<Option<Stored>, BackendError> {
        self.on_redis(self.redis.get_schedule(name)).await
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool, BackendError> {
        self.on_redis(self.redis.delete_schedule(name)).await
    }

    async fn schedules(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Stored)>, BackendError> {
        self.on_redis(self.redis.schedules(after, limit)).await
    }

    async fn advance_schedule(
        &self,
        name: &str,
        anchor_ms: u64,
        tick: u64,
    ) -> Result<bool, BackendError> {
        self.on_redis(self.redis.advance_schedule(name, anchor_ms, tick))
            .await
    }

    fn ready(&self) -> broadcast::Receiver<String> {
        self.redis.ready()
    }
}
