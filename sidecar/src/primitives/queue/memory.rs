//! Work queues in memory, on this sidecar's wall clock.
//!
//! [`Queue`] is the whole state machine, with the time passed in, so its
//! tests step time instead of sleeping; [`MemoryQueues`] holds one per
//! name behind a mutex and reads the clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::broadcast;

use super::schedule::{Schedule, Stored};
use super::store::{
    Backoff, CLAIM_EXPIRED, Claimed, Claims, DeadJob, Due, Enqueued, NewJob, QueueStats,
    QueueStore, Receipt, Settle, Settled,
};
use crate::backend::BackendError;
use crate::kit::unix_ms;

/// A job's id: its queue's enqueue sequence, 16 hex digits, so ids sort
/// as they were enqueued (the Redis store's sorted sets rely on it).
pub fn job_id(seq: u64) -> String {
    format!("{seq:016x}")
}

/// The sequence in a job id, if it is one.
pub fn parse_job_id(id: &str) -> Option<u64> {
    (id.len() == 16)
        .then(|| u64::from_str_radix(id, 16).ok())
        .flatten()
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug)]
enum State {
    /// Claimable once due (its due time is its key in `Queue::waiting`).
    Waiting,
    Claimed {
        receipt: String,
        visible_at: u64,
    },
    Dead {
        died_at: u64,
    },
}

#[derive(Debug)]
struct Job {
    payload: Bytes,
    enqueued_at: u64,
    max_attempts: u32,
    backoff: Backoff,
    dedup_id: Option<String>,
    /// Claims so far.
    attempts: u32,
    error: Option<String>,
    state: State,
}

/// One queue's jobs, indexed by when each is next due or runs out.
#[derive(Debug, Default)]
pub struct Queue {
    seq: u64,
    jobs: HashMap<u64, Job>,
    /// (due, seq) of every waiting job.
    waiting: BTreeSet<(u64, u64)>,
    /// (visible_at, seq) of every claimed job.
    claimed: BTreeSet<(u64, u64)>,
    dead: BTreeSet<u64>,
    /// dedup id -> (job id, until when it dedups).
    dedup: HashMap<String, (String, u64)>,
}

impl Queue {
    /// Jobs held, in any state.
    pub fn jobs(&self) -> usize {
        self.jobs.len()
    }

    /// Holds nothing, not even a dedup id still in its window.
    pub fn idle(&self) -> bool {
        self.jobs.is_empty() && self.dedup.is_empty()
    }

    /// The job `dedup_id` enqueued within its window, if any.
    fn deduped(&mut self, now: u64, dedup_id: Option<&str>) -> Option<String> {
        self.forget_dedup(now);
        self.dedup.get(dedup_id?).map(|(id, _)| id.clone())
    }

    pub fn enqueue(&mut self, now: u64, job: NewJob, dedup_window: Duration) -> Enqueued {
        if let Some(id) = self.deduped(now, job.dedup_id.as_deref()) {
            return Enqueued::Duplicate(id);
        }
        self.seq += 1;
        let seq = self.seq;
        let due = match job.due {
            Due::After(d) => now.saturating_add(ms(d)),
            Due::At(at) => at,
        };
        self.jobs.insert(
            seq,
            Job {
                payload: job.payload,
                enqueued_at: now,
                max_attempts: job.max_attempts.max(1),
                backoff: job.backoff,
                dedup_id: job.dedup_id.clone(),
                attempts: 0,
                error: None,
                state: State::Waiting,
            },
        );
        self.waiting.insert((due, seq));
        let id = job_id(seq);
        if let Some(dedup_id) = job.dedup_id {
            let until = now.saturating_add(ms(dedup_window));
            self.dedup.insert(dedup_id, (id.clone(), until));
        }
        Enqueued::New(id)
    }

    /// Ends the claims that ran out by `now`: each job is due again from
    /// the moment its claim ended, or dead if its attempts are spent.
    pub fn expire(&mut self, now: u64) {
        while let Some(&(visible_at, seq)) = self.claimed.first() {
            if visible_at > now {
                break;
            }
            self.claimed.pop_first();
            let job = self.jobs.get_mut(&seq).expect("indexed jobs exist");
            if job.attempts >= job.max_attempts {
                job.error = Some(CLAIM_EXPIRED.into());
                job.state = State::Dead {
                    died_at: visible_at,
                };
                self.dead.insert(seq);
            } else {
                job.state = State::Waiting;
                self.waiting.insert((visible_at, seq));
            }
        }
    }

    /// Claims up to `max` due jobs, longest due first, FIFO among equals.
    /// `make_receipt` makes each claim's receipt from its id and attempt.
    pub fn claim(
        &mut self,
        now: u64,
        max: usize,
        visibility: Duration,
        mut make_receipt: impl FnMut(&str, u32) -> String,
    ) -> Vec<Claimed> {
        self.expire(now);
        let visible_at = now.saturating_add(ms(visibility));
        let mut claimed = Vec::new();
        while claimed.len() < max {
            let Some(&(due, seq)) = self.waiting.first() else {
                break;
            };
            if due > now {
                break;
            }
            self.waiting.pop_first();
            let job = self.jobs.get_mut(&seq).expect("indexed jobs exist");
            job.attempts += 1;
            let id = job_id(seq);
            let receipt = make_receipt(&id, job.attempts);
            job.state = State::Claimed {
                receipt: receipt.clone(),
                visible_at,
            };
            self.claimed.insert((visible_at, seq));
            claimed.push(Claimed {
                id,
                payload: job.payload.clone(),
                attempt: job.attempts,
                max_attempts: job.max_attempts,
                receipt,
                dedup_id: job.dedup_id.clone(),
                enqueued_at: job.enqueued_at,
                visible_at,
            });
        }
        claimed
    }

    /// The first of `acks` that cannot be made, and why (stale or
    /// unknown).
    pub fn refused(&mut self, now: u64, acks: &[Receipt]) -> Option<(String, Settled)> {
        self.expire(now);
        acks.iter().find_map(|ack| {
            self.current_claim(&ack.id, &ack.receipt)
                .err()
                .map(|why| (ack.id.clone(), why))
        })
    }

    /// Job `id`'s sequence and claim end, if `receipt` is its current
    /// claim's.
    fn current_claim(&self, id: &str, receipt: &str) -> Result<(u64, u64), Settled> {
        let seq = parse_job_id(id).ok_or(Settled::Unknown)?;
        match &self.jobs.get(&seq).ok_or(Settled::Unknown)?.state {
            State::Claimed {
                receipt: current,
                visible_at,
            } if current == receipt => Ok((seq, *visible_at)),
            _ => Err(Settled::StaleReceipt),
        }
    }

    pub fn settle(&mut self, now: u64, id: &str, receipt: &str, settle: Settle) -> Settled {
        self.expire(now);
        let (seq, visible_at) = match self.current_claim(id, receipt) {
            Ok(claim) => claim,
            Err(why) => return why,
        };
        let job = self
            .jobs
            .get_mut(&seq)
            .expect("a current claim's job exists");
        match settle {
            Settle::Ack => {
                self.claimed.remove(&(visible_at, seq));
                self.jobs.remove(&seq);
                Settled::Acked
            }
            Settle::Nack { delay, error } => {
                self.claimed.remove(&(visible_at, seq));
                job.error = error;
                if job.attempts >= job.max_attempts {
                    job.state = State::Dead { died_at: now };
                    self.dead.insert(seq);
                    Settled::Dead
                } else {
                    let wait = delay.unwrap_or_else(|| job.backoff.after(job.attempts));
                    let due = now.saturating_add(ms(wait));
                    job.state = State::Waiting;
                    self.waiting.insert((due, seq));
                    Settled::Retrying { due }
                }
            }
            Settle::Extend(visibility) => {
                self.claimed.remove(&(visible_at, seq));
                let visible_at = now.saturating_add(ms(visibility));
                if let State::Claimed { visible_at: at, .. } = &mut job.state {
                    *at = visible_at;
                }
                self.claimed.insert((visible_at, seq));
                Settled::Extended { visible_at }
            }
        }
    }

    pub fn dead(&mut self, now: u64, after: Option<&str>, limit: usize) -> Vec<DeadJob> {
        self.expire(now);
        let from = after.and_then(parse_job_id).map_or(0, |seq| seq + 1);
        self.dead
            .range(from..)
            .take(limit)
            .map(|seq| {
                let job = &self.jobs[seq];
                let died_at = match job.state {
                    State::Dead { died_at } => died_at,
                    _ => unreachable!("the dead index holds dead jobs"),
                };
                DeadJob {
                    id: job_id(*seq),
                    payload: job.payload.clone(),
                    attempts: job.attempts,
                    error: job.error.clone(),
                    enqueued_at: job.enqueued_at,
                    died_at,
                }
            })
            .collect()
    }

    pub fn redrive(&mut self, now: u64, limit: usize) -> u64 {
        self.expire(now);
        let mut moved = 0;
        while moved < limit {
            let Some(seq) = self.dead.pop_first() else {
                break;
            };
            let job = self.jobs.get_mut(&seq).expect("indexed jobs exist");
            job.attempts = 0;
            job.state = State::Waiting;
            self.waiting.insert((now, seq));
            moved += 1;
        }
        moved as u64
    }

    pub fn purge_dead(&mut self, now: u64) -> u64 {
        self.expire(now);
        let dead = std::mem::take(&mut self.dead);
        for seq in &dead {
            self.jobs.remove(seq);
        }
        dead.len() as u64
    }

    pub fn stats(&mut self, now: u64) -> QueueStats {
        self.expire(now);
        let ready = self.waiting.range(..(now, u64::MAX)).count() as u64;
        QueueStats {
            ready,
            delayed: self.waiting.len() as u64 - ready,
            in_flight: self.claimed.len() as u64,
            dead: self.dead.len() as u64,
            oldest_ready_ms: self
                .waiting
                .first()
                .filter(|(due, _)| *due <= now)
                .map(|(due, _)| now - due),
        }
    }

    /// How long until a job is next due or a claim next runs out.
    pub fn next_in(&self, now: u64) -> Option<Duration> {
        let due = self.waiting.first().map(|(at, _)| *at);
        let runs_out = self.claimed.first().map(|(at, _)| *at);
        [due, runs_out]
            .into_iter()
            .flatten()
            .min()
            .map(|at| Duration::from_millis(at.saturating_sub(now)))
    }

    /// Whether a job is due now.
    fn has_ready(&self, now: u64) -> bool {
        self.waiting.first().is_some_and(|(due, _)| *due <= now)
    }

    fn forget_dedup(&mut self, now: u64) {
        self.dedup.retain(|_, (_, until)| *until > now);
    }
}

/// Work queues in local memory, at most `max_jobs` jobs across them.
pub struct MemoryQueues {
    /// Short, synchronous critical sections: a plain mutex.
    inner: Mutex<BTreeMap<String, Queue>>,
    max_jobs: usize,
    /// Jobs held across every queue.
    held: AtomicUsize,
    ready: broadcast::Sender<String>,
    schedules: Mutex<BTreeMap<String, Stored>>,
}

impl MemoryQueues {
    pub fn new(max_jobs: usize) -> Arc<Self> {
        let queues = Arc::new(MemoryQueues {
            inner: Mutex::new(BTreeMap::new()),
            max_jobs,
            held: Default::default(),
            ready: broadcast::channel(1024).0,
            schedules: Mutex::new(BTreeMap::new()),
        });
        crate::backend::memory::spawn_sweep(Arc::downgrade(&queues), MemoryQueues::sweep);
        queues
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Queue>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now() -> u64 {
        unix_ms(SystemTime::now())
    }

    fn schedules(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Stored>> {
        self.schedules.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends run-out claims, forgets old dedup ids and drops empty queues.
    pub fn sweep(&self) {
        let now = Self::now();
        self.lock().retain(|_, queue| {
            queue.expire(now);
            queue.forget_dedup(now);
            !queue.idle()
        });
    }

    /// One queue, created on first use, keeping the count of jobs held.
    fn with<T>(&self, name: &str, f: impl FnOnce(&mut Queue, u64) -> T) -> T {
        let mut queues = self.lock();
        let queue = queues.entry(name.to_string()).or_default();
        let before = queue.jobs();
        let out = f(queue, Self::now());
        let after = queue.jobs();
        // Under the lock: the count moves with the queues.
        if after > before {
            self.held.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.held.fetch_sub(before - after, Ordering::Relaxed);
        }
        out
    }

    /// `with`, then tells waiting claims if a job is due in the queue.
    fn with_ready<T>(&self, name: &str, f: impl FnOnce(&mut Queue, u64) -> T) -> T {
        self.with(name, |q, now| {
            let out = f(q, now);
            if q.has_ready(now) {
                let _ = self.ready.send(name.to_string());
            }
            out
        })
    }
}

/// A receipt: the job's id and attempt, and 64 random bits so no receipt
/// is guessed from another.
fn new_receipt(id: &str, attempt: u32) -> String {
    format!("{id}.{attempt}.{:016x}", rand::random::<u64>())
}

#[async_trait]
impl QueueStore for MemoryQueues {
    async fn enqueue(
        &self,
        queue: &str,
        job: NewJob,
        dedup_window: Duration,
    ) -> Result<Enqueued, BackendError> {
        self.with_ready(queue, |q, now| {
            if let Some(id) = q.deduped(now, job.dedup_id.as_deref()) {
                return Ok(Enqueued::Duplicate(id));
            }
            // Read under the queues' lock, which every change to it holds.
            if self.held.load(Ordering::Relaxed) >= self.max_jobs {
                return Err(BackendError::OutOfMemory(format!(
                    "the memory backend holds at most {} jobs",
                    self.max_jobs
                )));
            }
            Ok(q.enqueue(now, job, dedup_window))
        })
    }

    async fn claim(
        &self,
        queue: &str,
        acks: &[Receipt],
        max: usize,
        visibility: Duration,
    ) -> Result<Claims, BackendError> {
        Ok(self.with(queue, |q, now| {
            if let Some(refused) = q.refused(now, acks) {
                return Claims {
                    refused: Some(refused),
                    ..Claims::default()
                };
            }
            for ack in acks {
                q.settle(now, &ack.id, &ack.receipt, Settle::Ack);
            }
            let jobs = q.claim(now, max, visibility, new_receipt);
            let next_in = if jobs.is_empty() {
                q.next_in(now)
            } else {
                None
            };
            Claims {
                jobs,
                next_in,
                refused: None,
            }
        }))
    }

    async fn settle(
        &self,
        queue: &str,
        id: &str,
        receipt: &str,
        settle: Settle,
    ) -> Result<Settled, BackendError> {
        Ok(self.with_ready(queue, |q, now| q.settle(now, id, receipt, settle)))
    }

    async fn dead(
        &self,
        queue: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadJob>, BackendError> {
        Ok(self.with(queue, |q, now| q.dead(now, after, limit)))
    }

    async fn redrive(&self, queue: &str, limit: usize) -> Result<u64, BackendError> {
        Ok(self.with_ready(queue, |q, now| q.redrive(now, limit)))
    }

    async fn purge_dead(&self, queue: &str) -> Result<u64, BackendError> {
        Ok(self.with(queue, |q, now| q.purge_dead(now)))
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, BackendError> {
        Ok(self.with(queue, |q, now| q.stats(now)))
    }

    async fn queues(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>, BackendError> {
        let queues = self.lock();
        Ok(queues
            .iter()
            .filter(|(name, queue)| after.is_none_or(|a| name.as_str() > a) && queue.jobs() > 0)
            .take(limit)
            .map(|(name, _)| name.clone())
            .collect())
    }

    async fn put_schedule(&self, name: &str, schedule: &Schedule) -> Result<(), BackendError> {
        let stored = Stored {
            last_tick_ms: schedule.anchor_ms,
            schedule: schedule.clone(),
        };
        self.schedules().insert(name.to_string(), stored);
        Ok(())
    }

    async fn get_schedule(&self, name: &str) -> Result<Option<Stored>, BackendError> {
        Ok(self.schedules().get(name).cloned())
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool, BackendError> {
        Ok(self.schedules().remove(name).is_some())
    }

    async fn schedules(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Stored)>, BackendError> {
        let schedules = self.schedules();
        Ok(schedules
            .iter()
            .filter(|(name, _)| after.is_none_or(|a| name.as_str() > a))
            .take(limit)
            .map(|(name, stored)| (name.clone(), stored.clone()))
            .collect())
    }

    async fn advance_schedule(
        &self,
        name: &str,
        anchor_ms: u64,
        tick: u64,
    ) -> Result<bool, BackendError> {
        let mut schedules = self.schedules();
        Ok(match schedules.get_mut(name) {
            Some(s) if s.schedule.anchor_ms == anchor_ms && s.last_tick_ms < tick => {
                s.last_tick_ms = tick;
                true
            }
            _ => false,
        })
    }

    fn ready(&self) -> broadcast::Receiver<String> {
        self.ready.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(10),
    };

    fn job(payload: &str) -> NewJob {
        NewJob {
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            due: Due::After(Duration::ZERO),
            dedup_id: None,
            max_attempts: 3,
            backoff: BACKOFF,
        }
    }

    fn receipt(id: &str, attempt: u32) -> String {
        format!("{id}.{attempt}")
    }

    const VIS: Duration = Duration::from_millis(1000);

    fn payloads(claimed: &[Claimed]) -> Vec<&[u8]> {
        claimed.iter().map(|c| c.payload.as_ref()).collect()
    }

    #[test]
    fn jobs_are_claimed_once_in_due_order_fifo_among_equals() {
        let mut q = Queue::default();
        q.enqueue(1000, job("late"), VIS);
        q.enqueue(
            1000,
            NewJob {
                due: Due::At(500),
                ..job("early")
            },
            VIS,
        );
        q.enqueue(1000, job("late2"), VIS);
        q.enqueue(
            1000,
            NewJob {
                due: Due::After(Duration::from_millis(50)),
                ..job("delayed")
            },
            VIS,
        );
        let first = q.claim(1000, 2, VIS, receipt);
        assert_eq!(payloads(&first), [b"early" as &[u8], b"late"]);
        assert_eq!(first[0].attempt, 1);
        let next = q.claim(1000, 10, VIS, receipt);
        assert_eq!(
            payloads(&next),
            [b"late2" as &[u8]],
            "claimed jobs are invisible; delayed not due"
        );
        assert_eq!(
            payloads(&q.claim(1050, 10, VIS, receipt)),
            [b"delayed" as &[u8]]
        );
        assert!(q.claim(1050, 10, VIS, receipt).is_empty());
    }

    #[test]
    fn an_acked_job_is_gone_and_its_receipt_settles_nothing_more() {
        let mut q = Queue::default();
        q.enqueue(0, job("a"), VIS);
        let c = q.claim(0, 1, VIS, receipt).remove(0);
        assert_eq!(
            q.settle(10, &c.id, "wrong", Settle::Ack),
            Settled::StaleReceipt
        );
        assert_eq!(q.settle(10, &c.id, &c.receipt, Settle::Ack), Settled::Acked);
        assert_eq!(
            q.settle(10, &c.id, &c.receipt, Settle::Ack),
            Settled::Unknown
        );
        assert_eq!(
            q.settle(10, "not-an-id", &c.receipt, Settle::Ack),
            Settled::Unknown
        );
        assert_eq!(q.jobs(), 0);
        assert!(q.claim(5000, 1, VIS, receipt).is_empty());
    }

    #[test]
    fn a_claim_that_runs_out_is_claimable_again_and_its_receipt_is_stale() {
        let mut q = Queue::default();
        q.enqueue(0, job("a"), VIS);
        let first = q.claim(0, 1, VIS, receipt).remove(0);
        assert!(
            q.claim(999, 1, VIS, receipt).is_empty(),
            "invisible until it runs out"
        );
        let second = q.claim(1000, 1, VIS, receipt).remove(0);
        assert_eq!((second.id.as_str(), second.attempt), (first.id.as_str(), 2));
        assert_eq!(
            q.settle(1001, &first.id, &first.receipt, Settle::Ack),
            Settled::StaleReceipt
        );
        assert_eq!(
            q.settle(1001, &first.id, &first.receipt, Settle::Extend(VIS)),
            Settled::StaleReceipt
        );
        assert_eq!(
            q.settle(1001, &second.id, &second.receipt, Settle::Ack),
            Settled::Acked
        );
    }

    #[test]
    fn extend_keeps_a_claim_past_its_first_window() {
        let mut q = Queue::default();
        q.enqueue(0, job("a"), VIS);
        let c = q.claim(0, 1, VIS, receipt).remove(0);
        assert_eq!(
            q.settle(900, &c.id, &c.receipt, Settle::Extend(VIS)),
            Settled::Extended { visible_at: 1900 }
        );
        assert!(q.claim(1500, 1, VIS, receipt).is_empty());
        assert_eq!(
            q.settle(1800, &c.id, &c.receipt, Settle::Ack),
            Settled::Acked
        );
    }

    #[test]
    fn nacks_back_off_then_the_job_dies_with_its_last_error() {
        let mut q = Queue::default();
        let Enqueued::New(id) = q.enqueue(0, job("a"), VIS) else {
            panic!()
        };
        let mut now = 0;
        for (attempt, wait) in [(1, 100), (2, 200)] {
            let c = q.claim(now, 1, VIS, receipt).remove(0);
            assert_eq!(c.attempt, attempt);
            let nack = Settle::Nack {
                delay: None,
                error: Some(format!("e{attempt}")),
            };
            assert_eq!(
                q.settle(now, &id, &c.receipt, nack),
                Settled::Retrying { due: now + wait }
            );
            assert!(
                q.claim(now + wait - 1, 1, VIS, receipt).is_empty(),
                "backing off"
            );
            now += wait;
        }
        let c = q.claim(now, 1, VIS, receipt).remove(0);
        let nack = Settle::Nack {
            delay: None,
            error: Some("e3".into()),
        };
        assert_eq!(q.settle(now, &id, &c.receipt, nack), Settled::Dead);
        assert!(
            q.claim(now + 100_000, 1, VIS, receipt).is_empty(),
            "dead jobs are not claimed"
        );
        let dead = q.dead(now, None, 10);
        assert_eq!(dead.len(), 1);
        assert_eq!(
            (dead[0].attempts, dead[0].error.as_deref()),
            (3, Some("e3"))
        );
        assert_eq!(q.stats(now).dead, 1);
    }

    #[test]
    fn an_explicit_nack_delay_wins_over_the_backoff() {
        let mut q = Queue::default();
        q.enqueue(0, job("a"), VIS);
        let c = q.claim(0, 1, VIS, receipt).remove(0);
        let nack = Settle::Nack {
            delay: Some(Duration::from_millis(5)),
            error: None,
        };
        assert_eq!(
            q.settle(0, &c.id, &c.receipt, nack),
            Settled::Retrying { due: 5 }
        );
    }

    #[test]
    fn a_claim_running_out_on_the_last_attempt_is_dead() {
        let mut q = Queue::default();
        q.enqueue(
            0,
            NewJob {
                max_attempts: 1,
                ..job("a")
            },
            VIS,
        );
        q.claim(0, 1, VIS, receipt);
        let dead = q.dead(1000, None, 10);
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].error.as_deref(), Some(CLAIM_EXPIRED));
        assert_eq!(dead[0].died_at, 1000);
    }

    #[test]
    fn dead_jobs_page_by_id_redrive_with_fresh_attempts_and_purge() {
        let mut q = Queue::default();
        for i in 0..5 {
            q.enqueue(
                0,
                NewJob {
                    max_attempts: 1,
                    ..job(&format!("j{i}"))
                },
                VIS,
            );
        }
        q.claim(0, 5, VIS, receipt);
        let page = q.dead(1000, None, 2);
        let ids: Vec<_> = page.iter().map(|d| d.id.clone()).collect();
        assert_eq!(ids, [job_id(1), job_id(2)]);
        let rest = q.dead(1000, Some(&ids[1]), 10);
        assert_eq!(rest.len(), 3);
        assert_eq!(q.redrive(1000, 2), 2);
        let again = q.claim(1000, 10, VIS, receipt);
        assert_eq!(payloads(&again), [b"j0" as &[u8], b"j1"]);
        assert!(again.iter().all(|c| c.attempt == 1));
        assert_eq!(q.purge_dead(1000), 3);
        assert_eq!(
            q.stats(1000),
            QueueStats {
                in_flight: 2,
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_dedup_id_enqueues_once_within_its_window() {
        let mut q = Queue::default();
        let window = Duration::from_millis(100);
        let with_id = || NewJob {
            dedup_id: Some("x".into()),
            ..job("a")
        };
        let first = q.enqueue(0, with_id(), window);
        let Enqueued::New(id) = first.clone() else {
            panic!()
        };
        assert_eq!(
            q.enqueue(99, with_id(), window),
            Enqueued::Duplicate(id.clone())
        );
        // Completing the job does not end the window.
        let c = q.claim(99, 1, VIS, receipt).remove(0);
        q.settle(99, &c.id, &c.receipt, Settle::Ack);
        assert_eq!(
            q.enqueue(99, with_id(), window),
            Enqueued::Duplicate(id.clone())
        );
        assert!(matches!(q.enqueue(100, with_id(), window), Enqueued::New(other) if other != id));
    }

    #[test]
    fn stats_count_each_state() {
        let mut q = Queue::default();
        q.enqueue(
            0,
            NewJob {
                max_attempts: 1,
                ..job("dies")
            },
            VIS,
        );
        q.enqueue(0, job("claimed"), VIS);
        q.enqueue(0, job("ready"), VIS);
        q.enqueue(
            0,
            NewJob {
                due: Due::At(500),
                ..job("delayed")
            },
            VIS,
        );
        let claimed = q.claim(100, 2, VIS, receipt);
        assert_eq!(payloads(&claimed), [b"dies" as &[u8], b"claimed"]);
        let dies = &claimed[0];
        let nack = Settle::Nack {
            delay: None,
            error: None,
        };
        assert_eq!(q.settle(100, &dies.id, &dies.receipt, nack), Settled::Dead);
        assert_eq!(
            q.stats(300),
            QueueStats {
                ready: 1,
                delayed: 1,
                in_flight: 1,
                dead: 1,
                oldest_ready_ms: Some(300),
            }
        );
    }

    #[tokio::test]
    async fn the_store_bounds_the_jobs_it_holds_and_lists_queues() {
        let store = MemoryQueues::new(2);
        store.enqueue("b", job("1"), VIS).await.unwrap();
        store.enqueue("a", job("2"), VIS).await.unwrap();
        let full = store.enqueue("a", job("3"), VIS).await.unwrap_err();
        assert!(matches!(full, BackendError::OutOfMemory(_)), "{full:?}");
        assert_eq!(store.queues(None, 10).await.unwrap(), ["a", "b"]);
        assert_eq!(store.queues(Some("a"), 10).await.unwrap(), ["b"]);
        let c = store.claim("a", &[], 1, VIS).await.unwrap().jobs.remove(0);
        assert!(c.receipt.starts_with(&format!("{}.1.", c.id)));
        store
            .settle("a", &c.id, &c.receipt, Settle::Ack)
            .await
            .unwrap();
        store.enqueue("a", job("3"), VIS).await.unwrap();
    }
}
