//! The lock primitive: leased locks with fencing tokens, counting
//! semaphores, and the keep-alive behind the `Hold` stream.
//!
//! Waiting: an acquisition that finds the lock held subscribes to release
//! notifications *before* trying, then naps until a release of that lock is
//! announced, the current lease runs out, or a safety-net poll interval
//! passes, whichever is first; `wait_ms` bounds the whole wait.

pub mod config;
pub mod failover;
pub mod grpc;
pub mod http;
pub mod memory;
pub mod redis;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::Common;
use crate::backend::BackendError;
use crate::error::{Error, Result};
use crate::kit::Primitive;

use crate::telemetry::{self, Metrics};
use crate::validate;
use crate::validate::Limits;
use store::{Acquire, InUse, InUsePage, Kind, LockStore};

/// Longest nap between attempts when no release is announced: the safety
/// net for a lost notification.
const SAFETY_POLL: Duration = Duration::from_millis(500);

/// Page size of a listing that names none.
const DEFAULT_PAGE: usize = 100;

/// Pause before retrying a renewal that failed on a backend error.
const RENEW_RETRY: Duration = Duration::from_millis(50);

/// A held lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub token: String,
    pub fence: u64,
    /// Until when ownership is guaranteed: the lease counted from when the
    /// winning attempt was sent (so never later than the real expiry).
    pub valid_until: Instant,
}

/// How a keep-alive ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeepAlive {
    /// The caller stopped it; the lock is still held (release it).
    Stopped,
    /// Ownership can no longer be guaranteed, and why.
    Lost(String),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AcquisitionLabels {
    /// `lock` or `semaphore`.
    kind: &'static str,
    /// `acquired`, or `held`: it stayed held for the whole wait.
    result: &'static str,
}

/// Locks and semaphores.
pub struct Locks {
    common: Common,
    store: Arc<dyn LockStore>,
    limits: Limits,
    metrics: Arc<Metrics>,
    /// `outrigger_lock_acquisitions`: how often waiting was in vain.
    acquisitions: Family<AcquisitionLabels, Counter>,
}

fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Resolves when `what` is announced as released (or notifications were
/// lost, which is a reason to look again too).
async fn released(rx: &mut broadcast::Receiver<String>, what: &str) {
    loop {
        match rx.recv().await {
            Ok(name) if name == what => return,
            Ok(_) => continue,
            Err(RecvError::Lagged(_)) => return,
            Err(RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

impl Locks {
    pub fn new(
        store: Arc<dyn LockStore>,
        limits: Limits,
        metrics: Arc<Metrics>,
        common: Common,
    ) -> Self {
        let acquisitions = Family::default();
        metrics.register(
            "lock_acquisitions",
            "Lock and semaphore acquisitions by kind (lock, semaphore) and result (acquired, \
             held: still held by others when the wait ended)",
            acquisitions.clone(),
        );
        Locks {
            store,
            common,
            limits,
            metrics,
            acquisitions,
        }
    }

    fn count_acquisition(&self, what: &str, acquired: bool) {
        let kind = if what.starts_with("sem:") {
            "semaphore"
        } else {
            "lock"
        };
        let result = if acquired { "acquired" } else { "held" };
        self.acquisitions
            .get_or_create(&AcquisitionLabels { kind, result })
            .inc();
    }

    async fn op<T>(
        &self,
        op: &'static str,
        span: tracing::Span,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        telemetry::observe(&self.metrics, "lock", op, span, fut).await
    }

    /// Acquires lock `name` for `ttl_ms`, waiting up to `wait_ms`.
    /// `None` when it stayed held by someone else.
    pub async fn acquire(&self, name: &str, ttl_ms: u64, wait_ms: u64) -> Result<Option<Lease>> {
        let span = tracing::info_span!("outrigger.lock.acquire", name, ttl_ms, wait_ms);
        self.op("acquire", span, async {
            self.check_name(name)?;
            let ttl = self.check_ttl(ttl_ms)?;
            let wait = self.check_wait(wait_ms)?;
            let token = new_token();
            let mut sent = Instant::now();
            let fence = self
                .wait_for(format!("lock:{name}"), wait, || {
                    sent = Instant::now();
                    self.store.try_acquire(name, &token, ttl)
                })
                .await?;
            Ok(fence.map(|fence| Lease {
                token,
                fence,
                valid_until: sent + ttl,
            }))
        })
        .await
    }

    /// Releases `name` if `token` holds it; returns whether it did.
    pub async fn release(&self, name: &str, token: &str) -> Result<bool> {
        let span = tracing::info_span!("outrigger.lock.release", name);
        self.op("release", span, async {
            self.check_name(name)?;
            self.check_token(token)?;
            Ok(self.store.release(name, token).await?)
        })
        .await
    }

    /// Restarts the lease of `name` with `ttl_ms` if `token` holds it.
    pub async fn extend(&self, name: &str, token: &str, ttl_ms: u64) -> Result<bool> {
        let span = tracing::info_span!("outrigger.lock.extend", name, ttl_ms);
        self.op("extend", span, async {
            self.check_name(name)?;
            self.check_token(token)?;
            let ttl = self.check_ttl(ttl_ms)?;
            Ok(self.store.extend(name, token, ttl).await?)
        })
        .await
    }

    /// Acquires one of `limit` permits of semaphore `name`; returns the
    /// permit's token, or `None` when all stayed taken for `wait_ms`.
    pub async fn acquire_permit(
        &self,
        name: &str,
        limit: u32,
        ttl_ms: u64,
        wait_ms: u64,
    ) -> Result<Option<String>> {
        let span = tracing::info_span!(
            "outrigger.lock.acquire_permit",
            name,
            limit,
            ttl_ms,
            wait_ms
        );
        self.op("acquire_permit", span, async {
            self.check_name(name)?;
            if limit == 0 || limit > self.limits.max_permits {
                return Err(Error::InvalidArgument(format!(
                    "limit must be 1..={} (limits.max_permits), not {limit}",
                    self.limits.max_permits
                )));
            }
            let ttl = self.check_ttl(ttl_ms)?;
            let wait = self.check_wait(wait_ms)?;
            let token = new_token();
            let got = self
                .wait_for(format!("sem:{name}"), wait, || {
                    self.store.try_acquire_permit(name, &token, limit, ttl)
                })
                .await?;
            Ok(got.map(|_| token))
        })
        .await
    }

    /// Returns a permit; returns whether `token` held a live one.
    pub async fn release_permit(&self, name: &str, token: &str) -> Result<bool> {
        let span = tracing::info_span!("outrigger.lock.release_permit", name);
        self.op("release_permit", span, async {
            self.check_name(name)?;
            self.check_token(token)?;
            Ok(self.store.release_permit(name, token).await?)
        })
        .await
    }

    /// Keeps `lease` on lock `name` alive, renewing every `ttl / 3`, until
    /// `stop` resolves ([`KeepAlive::Stopped`]) or ownership can no longer
    /// be guaranteed ([`KeepAlive::Lost`]): a renewal found the lock taken,
    /// or renewals kept failing until the lease ran out. Never returns later
    /// than the lease's `valid_until` without having renewed it.
    pub async fn keep_alive(
        &self,
        name: &str,
        lease: &Lease,
        ttl: Duration,
        stop: impl Future<Output = ()>,
    ) -> KeepAlive {
        tokio::pin!(stop);
        let period = ttl / 3;
        let mut valid_until = lease.valid_until;
        let mut next = Instant::now() + period;
        loop {
            tokio::select! {
                () = &mut stop => return KeepAlive::Stopped,
                () = tokio::time::sleep_until(next.min(valid_until)) => {}
            }
            let sent = Instant::now();
            if sent >= valid_until {
                return KeepAlive::Lost("the lease ran out before it could be renewed".into());
            }
            let renewal = tokio::time::timeout(
                valid_until - sent,
                self.store.extend(name, &lease.token, ttl),
            );
            match renewal.await {
                Ok(Ok(true)) => {
                    valid_until = sent + ttl;
                    next = sent + period;
                }
                Ok(Ok(false)) => {
                    return KeepAlive::Lost(
                        "the lock expired or was taken by another holder".into(),
                    );
                }
                Ok(Err(err)) => {
                    tracing::warn!(name, error = %err, "lock renewal failed; retrying until the lease runs out");
                    next = Instant::now() + RENEW_RETRY;
                }
                Err(_) => {
                    return KeepAlive::Lost("no renewal succeeded before the lease ran out".into());
                }
            }
        }
    }

    /// Tries until `attempt` acquires or `wait` is over; `Some(fence)` when
    /// acquired.
    async fn wait_for<F, Fut>(
        &self,
        what: String,
        wait: Duration,
        mut attempt: F,
    ) -> Result<Option<u64>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Acquire, BackendError>>,
    {
        let deadline = Instant::now() + wait;
        // Subscribed before the first attempt, so a release between a failed
        // attempt and the nap is not missed.
        let mut releases = self.store.releases();
        loop {
            match attempt().await? {
                Acquire::Acquired { fence } => {
                    self.count_acquisition(&what, true);
                    return Ok(Some(fence));
                }
                Acquire::Held { retry_in } => {
                    let now = Instant::now();
                    if now >= deadline {
                        self.count_acquisition(&what, false);
                        return Ok(None);
                    }
                    let nap = (deadline - now)
                        .min(retry_in.unwrap_or(SAFETY_POLL))
                        .min(SAFETY_POLL);
                    let _ = tokio::time::timeout(nap, released(&mut releases, &what)).await;
                }
            }
        }
    }

    /// Who holds the lock or semaphore `name`, for operators: `None` when
    /// it is free.
    pub async fn in_use(&self, kind: Kind, name: &str) -> Result<Option<InUse>> {
        let span = tracing::info_span!("outrigger.lock.in_use", name, kind = ?kind);
        self.op("in_use", span, async {
            self.check_name(name)?;
            Ok(self.store.in_use(kind, name).await?)
        })
        .await
    }

    /// One page of the locks or semaphores in use whose names match the
    /// glob `pattern` (empty: all).
    pub async fn list_in_use(
        &self,
        kind: Kind,
        pattern: &str,
        cursor: &str,
        limit: usize,
    ) -> Result<InUsePage> {
        let span = tracing::info_span!("outrigger.lock.list_in_use", pattern, kind = ?kind, limit);
        self.op("list_in_use", span, async {
            crate::kit::check_pattern(pattern, &self.limits)?;
            let limit = if limit == 0 { DEFAULT_PAGE } else { limit };
            validate::batch("limit", limit, &self.limits)?;
            let pattern = if pattern.is_empty() { "*" } else { pattern };
            Ok(self.store.list_in_use(kind, pattern, cursor, limit).await?)
        })
        .await
    }

    fn check_name(&self, name: &str) -> Result<()> {
        validate::name("name", name, &self.limits)
    }

    fn check_token(&self, token: &str) -> Result<()> {
        if token.is_empty() || token.len() > 128 {
            return Err(Error::InvalidArgument(
                "token must be the non-empty token an acquire returned".into(),
            ));
        }
        Ok(())
    }

    fn check_ttl(&self, ttl_ms: u64) -> Result<Duration> {
        validate::ttl_ms("ttl_ms", ttl_ms, &self.limits)
    }

    fn check_wait(&self, wait_ms: u64) -> Result<Duration> {
        let max = self.limits.max_wait.as_millis() as u64;
        if wait_ms > max {
            return Err(Error::InvalidArgument(format!(
                "wait_ms must be at most {max} (limits.max_wait), not {wait_ms}"
            )));
        }
        Ok(Duration::from_millis(wait_ms))
    }
}

impl Primitive for Locks {
    fn common(&self) -> &Common {
        &self.common
    }
}
