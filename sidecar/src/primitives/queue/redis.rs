//! Work queues on Redis. Each queue is three sorted sets and a hash per
//! job under `ns:q:{queue}:` (one hash slot per queue on a Cluster; the
//! layout is in `prelude.lua`), and every state change is one script, so a
//! crash between two steps cannot lose or duplicate a job.
//!
//! Sorted sets rather than streams with consumer groups: a job is due by
//! time (delays, backoffs, claims running out) and settled out of order, so
//! "what is due now" is a range query on a score. Streams deliver in append
//! order, have no delay, and find run-out claims only by scanning the
//! pending list with `XAUTOCLAIM`. Equal scores sort by member, and ids are
//! 16 hex digits of the enqueue sequence, so equally due jobs go in
//! enqueue order.
//!
//! Jobs made due now are announced on `ns:queued` (the queue's name), so
//! claims waiting on any sidecar wake at once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::Script;
use tokio::sync::broadcast;

use super::schedule::{Schedule, Stored};
use super::store::{
    Claimed, Claims, DeadJob, Due, Enqueued, NewJob, QueueStats, QueueStore, Receipt, Settle,
    Settled,
};
use crate::backend::BackendError;
use crate::backend::redis::{AbortOnDrop, RedisStore};

/// Dead jobs deleted per purge script, so no one call blocks Redis long.
const PURGE_BATCH: usize = 1000;

/// Work queues in Redis.
pub struct RedisQueues {
    redis: Arc<RedisStore>,
    scripts: Scripts,
    /// Queue names heard on `ns:queued`.
    ready: broadcast::Sender<String>,
    _forwarder: AbortOnDrop,
}

struct Scripts {
    enqueue: Script,
    claim: Script,
    settle: Script,
    dead: Script,
    redrive: Script,
    purge: Script,
    stats: Script,
    advance: Script,
}

/// A script with the shared prelude (the key layout, the clock, and
/// ending run-out claims) in front.
fn script(body: &str) -> Script {
    Script::new(&format!("{}\n{body}", include_str!("prelude.lua")))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RedisQueues {
    /// Listens for ready jobs from every sidecar sharing `redis`.
    pub async fn new(redis: Arc<RedisStore>) -> Result<Self, BackendError> {
        let channel = format!("{}:queued", redis.namespace);
        let (ready, forwarder) = redis.forward_channel(channel).await?;
        Ok(RedisQueues {
            redis,
            scripts: Scripts {
                enqueue: script(include_str!("enqueue.lua")),
                claim: script(include_str!("claim.lua")),
                settle: script(include_str!("settle.lua")),
                dead: script(include_str!("dead.lua")),
                redrive: script(include_str!("redrive.lua")),
                purge: script(include_str!("purge.lua")),
                stats: script(include_str!("stats.lua")),
                advance: Script::new(include_str!("advance.lua")),
            },
            ready,
            _forwarder: forwarder,
        })
    }

    /// `ns:q:{queue}:`, the prefix of every key of the queue.
    fn prefix(&self, queue: &str) -> String {
        format!("{}:q:{{{queue}}}:", self.redis.namespace)
    }

    fn channel(&self) -> String {
        format!("{}:queued", self.redis.namespace)
    }

    /// The names of queues that held a job at some point (a sorted set,
    /// all scores 0, read by name).
    fn index(&self) -> String {
        format!("{}:queues", self.redis.namespace)
    }

    /// Whether `queue` holds any job.
    /// `ns:sched:{name}`: a hash of the definition (`def`, JSON), its
    /// anchor (`a`) and last tick (`last`).
    fn schedule_key(&self, name: &str) -> String {
        format!("{}:sched:{{{name}}}", self.redis.namespace)
    }

    /// The names of the schedules (a sorted set, all scores 0).
    fn schedule_index(&self) -> String {
        format!("{}:schedules", self.redis.namespace)
    }

    async fn holds_jobs(&self, queue: &str) -> Result<bool, BackendError> {
        let p = self.prefix(queue);
        let mut conn = self.redis.conn();
        let n: i64 = self
            .redis
            .call(
                redis::cmd("EXISTS")
                    .arg(format!("{p}w"))
                    .arg(format!("{p}c"))
                    .arg(format!("{p}d"))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(n > 0)
    }

    async fn index_add(&self, queue: &str) -> Result<(), BackendError> {
        let mut conn = self.redis.conn();
        self.redis
            .call(
                redis::cmd("ZADD")
                    .arg(self.index())
                    .arg(0)
                    .arg(queue)
                    .query_async::<i64>(&mut conn),
            )
            .await?;
        Ok(())
    }
}

#[async_trait]
impl QueueStore for RedisQueues {
    async fn enqueue(
        &self,
        queue: &str,
        job: NewJob,
        dedup_window: Duration,
    ) -> Result<Enqueued, BackendError> {
        let (delay, at) = match job.due {
            Due::After(d) => (ms(d), String::new()),
            Due::At(at) => (0, at.to_string()),
        };
        let mut call = self.scripts.enqueue.key(self.prefix(queue));
        call.arg(job.payload.as_ref())
            .arg(delay)
            .arg(at)
            .arg(job.max_attempts.max(1))
            .arg(ms(job.backoff.initial))
            .arg(ms(job.backoff.max))
            .arg(job.dedup_id.as_deref().unwrap_or(""))
            .arg(ms(dedup_window).max(1))
            .arg(self.channel())
            .arg(queue);
        let mut conn = self.redis.conn();
        let reply: Vec<redis::Value> = self.redis.call(call.invoke_async(&mut conn)).await?;
        let [new, id, rest @ ..] = reply.as_slice() else {
            return Err(BackendError::Protocol(
                "the enqueue script answered fewer than 2 values".into(),
            ));
        };
        let id: String = from(id)?;
        if from::<i64>(new)? != 1 {
            return Ok(Enqueued::Duplicate(id));
        }
        // A separate write: a queue lives in its own slot, the index in
        // another. A crash in between leaves the queue out of the listing
        // until it next fills from empty.
        if let Some(was_empty) = rest.first()
            && from::<i64>(was_empty)? == 1
        {
            self.index_add(queue).await?;
        }
        Ok(Enqueued::New(id))
    }

    async fn claim(
        &self,
        queue: &str,
        acks: &[Receipt],
        max: usize,
        visibility: Duration,
    ) -> Result<Claims, BackendError> {
        let nonce = format!("{:016x}", rand::random::<u64>());
        let mut call = self.scripts.claim.key(self.prefix(queue));
        call.arg(max).arg(ms(visibility)).arg(&nonce);
        for ack in acks {
            call.arg(&ack.id).arg(&ack.receipt);
        }
        let mut conn = self.redis.conn();
        let flat: Vec<redis::Value> = self.redis.call(call.invoke_async(&mut conn)).await?;
        if let [redis::Value::BulkString(refused), id, why] = flat.as_slice()
            && refused.as_slice() == b"refused"
        {
            let why = match from::<String>(why)?.as_str() {
                "stale" => Settled::StaleReceipt,
                _ => Settled::Unknown,
            };
            return Ok(Claims {
                refused: Some((from(id)?, why)),
                ..Claims::default()
            });
        }
        let [visible_at, next_in, jobs @ ..] = flat.as_slice() else {
            return Err(BackendError::Protocol(format!(
                "the claim script answered {} values, fewer than 2",
                flat.len()
            )));
        };
        let visible_at: u64 = from(visible_at)?;
        let next_in: i64 = from(next_in)?;
        let jobs = jobs
            .chunks_exact(6)
            .map(|f| {
                let id: String = from(&f[0])?;
                let attempt: u32 = from(&f[2])?;
                let dedup_id: String = from(&f[5])?;
                Ok(Claimed {
                    dedup_id: (!dedup_id.is_empty()).then_some(dedup_id),
                    receipt: format!("{id}.{attempt}.{nonce}"),
                    payload: Bytes::from(from::<Vec<u8>>(&f[1])?),
                    max_attempts: from(&f[3])?,
                    enqueued_at: from(&f[4])?,
                    visible_at,
                    attempt,
                    id,
                })
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        Ok(Claims {
            jobs,
            next_in: u64::try_from(next_in).ok().map(Duration::from_millis),
            refused: None,
        })
    }

    async fn settle(
        &self,
        queue: &str,
        id: &str,
        receipt: &str,
        settle: Settle,
    ) -> Result<Settled, BackendError> {
        let mut call = self.scripts.settle.key(self.prefix(queue));
        call.arg(id).arg(receipt);
        match &settle {
            Settle::Ack => call.arg("ack").arg("").arg("").arg(0),
            Settle::Nack { delay, error } => call
                .arg("nack")
                .arg(delay.map(|d| ms(d).to_string()).unwrap_or_default())
                .arg(error.as_ref().map(|e| format!("={e}")).unwrap_or_default())
                .arg(0),
            Settle::Extend(visibility) => call.arg("extend").arg("").arg("").arg(ms(*visibility)),
        };
        call.arg(self.channel()).arg(queue);
        let mut conn = self.redis.conn();
        let reply: Vec<redis::Value> = self.redis.call(call.invoke_async(&mut conn)).await?;
        let outcome: String = from(reply.first().unwrap_or(&redis::Value::Nil))?;
        let at = || from::<u64>(reply.get(1).unwrap_or(&redis::Value::Nil));
        Ok(match outcome.as_str() {
            "acked" => Settled::Acked,
            "retrying" => Settled::Retrying { due: at()? },
            "dead" => Settled::Dead,
            "extended" => Settled::Extended { visible_at: at()? },
            "stale" => Settled::StaleReceipt,
            "unknown" => Settled::Unknown,
            other => {
                return Err(BackendError::Protocol(format!(
                    "the settle script answered {other:?}"
                )));
            }
        })
    }

    async fn dead(
        &self,
        queue: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadJob>, BackendError> {
        let mut call = self.scripts.dead.key(self.prefix(queue));
        call.arg(after.unwrap_or("")).arg(limit);
        let mut conn = self.redis.conn();
        let flat: Vec<redis::Value> = self.redis.call(call.invoke_async(&mut conn)).await?;
        flat.chunks_exact(6)
            .map(|f| {
                let error: String = from(&f[3])?;
                Ok(DeadJob {
                    id: from(&f[0])?,
                    payload: Bytes::from(from::<Vec<u8>>(&f[1])?),
                    attempts: from(&f[2])?,
                    error: error.strip_prefix('=').map(str::to_string),
                    enqueued_at: from(&f[4])?,
                    died_at: from(&f[5])?,
                })
            })
            .collect()
    }

    async fn redrive(&self, queue: &str, limit: usize) -> Result<u64, BackendError> {
        let mut call = self.scripts.redrive.key(self.prefix(queue));
        call.arg(limit).arg(self.channel()).arg(queue);
        let mut conn = self.redis.conn();
        self.redis.call(call.invoke_async(&mut conn)).await
    }

    async fn purge_dead(&self, queue: &str) -> Result<u64, BackendError> {
        let mut purged = 0;
        loop {
            let mut call = self.scripts.purge.key(self.prefix(queue));
            call.arg(PURGE_BATCH);
            let mut conn = self.redis.conn();
            let n: u64 = self.redis.call(call.invoke_async(&mut conn)).await?;
            purged += n;
            if n < PURGE_BATCH as u64 {
                return Ok(purged);
            }
        }
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, BackendError> {
        let call = self.scripts.stats.key(self.prefix(queue));
        let mut conn = self.redis.conn();
        let (ready, delayed, in_flight, dead, oldest): (u64, u64, u64, u64, i64) =
            self.redis.call(call.invoke_async(&mut conn)).await?;
        Ok(QueueStats {
            ready,
            delayed,
            in_flight,
            dead,
            oldest_ready_ms: u64::try_from(oldest).ok(),
        })
    }

    /// Reads the index a page at a time, keeping queues that hold jobs and
    /// dropping the names of those that do not. A drop is checked again
    /// afterwards, and undone if an enqueue filled the queue meanwhile.
    async fn queues(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>, BackendError> {
        let mut found = Vec::new();
        let mut from = after.map_or_else(|| "-".to_string(), |a| format!("({a}"));
        loop {
            let mut conn = self.redis.conn();
            let names: Vec<String> = self
                .redis
                .call(
                    redis::cmd("ZRANGEBYLEX")
                        .arg(self.index())
                        .arg(&from)
                        .arg("+")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(limit)
                        .query_async(&mut conn),
                )
                .await?;
            for name in &names {
                if self.holds_jobs(name).await? {
                    found.push(name.clone());
                    if found.len() == limit {
                        return Ok(found);
                    }
                    continue;
                }
                self.redis
                    .call(
                        redis::cmd("ZREM")
                            .arg(self.index())
                            .arg(name)
                            .query_async::<i64>(&mut conn),
                    )
                    .await?;
                if self.holds_jobs(name).await? {
                    self.index_add(name).await?;
                    found.push(name.clone());
                    if found.len() == limit {
                        return Ok(found);
                    }
                }
            }
            match names.last() {
                Some(last) if names.len() == limit => from = format!("({last}"),
                _ => return Ok(found),
            }
        }
    }

    async fn put_schedule(&self, name: &str, schedule: &Schedule) -> Result<(), BackendError> {
        let def = serde_json::to_string(schedule).expect("a schedule serializes");
        let key = self.schedule_key(name);
        let mut conn = self.redis.conn();
        // The definition first: a listed name always has one (a crash in
        // between leaves a schedule that runs but is not listed until put
        // again).
        let mut replace = redis::pipe();
        replace
            .atomic()
            .del(&key)
            .ignore()
            .hset_multiple(
                &key,
                &[
                    ("def", def),
                    ("a", schedule.anchor_ms.to_string()),
                    ("last", schedule.anchor_ms.to_string()),
                ],
            )
            .ignore();
        self.redis
            .call(replace.query_async::<()>(&mut conn))
            .await?;
        self.redis
            .call(
                redis::cmd("ZADD")
                    .arg(self.schedule_index())
                    .arg(0)
                    .arg(name)
                    .query_async::<i64>(&mut conn),
            )
            .await?;
        Ok(())
    }

    async fn get_schedule(&self, name: &str) -> Result<Option<Stored>, BackendError> {
        let mut conn = self.redis.conn();
        let (def, last): (Option<String>, Option<u64>) = self
            .redis
            .call(
                redis::cmd("HMGET")
                    .arg(self.schedule_key(name))
                    .arg("def")
                    .arg("last")
                    .query_async(&mut conn),
            )
            .await?;
        let Some(def) = def else {
            return Ok(None);
        };
        let schedule: Schedule = serde_json::from_str(&def)
            .map_err(|e| BackendError::Protocol(format!("schedule {name:?}: {e}")))?;
        Ok(Some(Stored {
            last_tick_ms: last.unwrap_or(schedule.anchor_ms),
            schedule,
        }))
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool, BackendError> {
        let mut conn = self.redis.conn();
        let deleted: i64 = self
            .redis
            .call(
                redis::cmd("DEL")
                    .arg(self.schedule_key(name))
                    .query_async(&mut conn),
            )
            .await?;
        self.redis
            .call(
                redis::cmd("ZREM")
                    .arg(self.schedule_index())
                    .arg(name)
                    .query_async::<i64>(&mut conn),
            )
            .await?;
        Ok(deleted == 1)
    }

    async fn schedules(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Stored)>, BackendError> {
        let from = after.map_or_else(|| "-".to_string(), |a| format!("({a}"));
        let mut conn = self.redis.conn();
        let names: Vec<String> = self
            .redis
            .call(
                redis::cmd("ZRANGEBYLEX")
                    .arg(self.schedule_index())
                    .arg(&from)
                    .arg("+")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .query_async(&mut conn),
            )
            .await?;
        let mut listed = Vec::with_capacity(names.len());
        for name in names {
            // Deleted since it was listed: skipped.
            if let Some(stored) = self.get_schedule(&name).await? {
                listed.push((name, stored));
            }
        }
        Ok(listed)
    }

    async fn advance_schedule(
        &self,
        name: &str,
        anchor_ms: u64,
        tick: u64,
    ) -> Result<bool, BackendError> {
        let mut call = self.scripts.advance.key(self.schedule_key(name));
        call.arg(anchor_ms.to_string()).arg(tick.to_string());
        let mut conn = self.redis.conn();
        let moved: i64 = self.redis.call(call.invoke_async(&mut conn)).await?;
        Ok(moved == 1)
    }

    fn ready(&self) -> broadcast::Receiver<String> {
        self.ready.subscribe()
    }
}

/// One value of a script's flat reply.
fn from<T: redis::FromRedisValue>(v: &redis::Value) -> Result<T, BackendError> {
    redis::from_redis_value(v.clone())
        .map_err(|e| BackendError::Protocol(format!("a queue script's reply: {e}")))
}
