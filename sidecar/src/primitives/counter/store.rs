//! The counter storage seam.

use std::time::Duration;

use async_trait::async_trait;

use crate::backend::BackendError;

/// The largest magnitude a counter holds: 2^53 - 1, the largest integer
/// every JSON client (JavaScript's numbers included) and Redis' Lua represent
/// exactly.
pub const MAX_MAGNITUDE: i64 = (1 << 53) - 1;

/// An increment, validated: `by` is not 0, the bounds are within
/// [`MAX_MAGNITUDE`] and `min <= max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Increment {
    pub by: i64,
    /// The counter's lifetime, applied when this increment creates it (a
    /// fixed window).
    pub ttl: Option<Duration>,
    pub min: Option<i64>,
    pub max: Option<i64>,
}

impl Increment {
    /// The value `current + by` if it stays within the bounds (and within
    /// [`MAX_MAGNITUDE`]); the memory and Redis stores decide alike.
    pub fn apply(&self, current: i64) -> Option<i64> {
        let next = current.checked_add(self.by)?;
        let within = next.unsigned_abs() <= MAX_MAGNITUDE as u64
            && self.min.is_none_or(|min| next >= min)
            && self.max.is_none_or(|max| next <= max);
        within.then_some(next)
    }
}

/// A counter as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CounterValue {
    /// 0 when the counter does not exist.
    pub value: i64,
    pub exists: bool,
    /// Remaining lifetime; `None` when it never expires (or is absent).
    pub ttl: Option<Duration>,
}

/// What an increment did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incremented {
    /// Applied; the counter after it.
    Done(CounterValue),
    /// Refused: it would have crossed a bound. The counter is unchanged.
    OutOfBounds(CounterValue),
}

/// Counter storage. Names arrive validated.
#[async_trait]
pub trait CounterStore: Send + Sync + 'static {
    /// Adds `inc.by` atomically, unless the result would cross a bound.
    async fn increment(&self, name: &str, inc: Increment) -> Result<Incremented, BackendError>;

    async fn get(&self, name: &str) -> Result<CounterValue, BackendError>;

    /// Deletes the counter; returns whether it existed.
    async fn reset(&self, name: &str) -> Result<bool, BackendError>;
}
