//! The counter primitive: named integers every sidecar on the Redis
//! shares, incremented atomically, optionally within bounds and for a fixed
//! window.

pub mod failover;
pub mod grpc;
pub mod http;
pub mod memory;
pub mod redis;
pub mod store;

use std::sync::Arc;

use store::{CounterStore, CounterValue, Increment, Incremented, MAX_MAGNITUDE};

use super::Common;
use crate::error::{Error, Result};
use crate::kit::Primitive;
use crate::plugins::config::PrimitiveName;
use crate::plugins::{Call, Caller, Operation};
use crate::telemetry::{self, Metrics};
use crate::validate::{self, Limits};

/// An increment as a client asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IncrementRequest {
    pub by: i64,
    /// 0: no window.
    pub ttl_ms: u64,
    pub min: Option<i64>,
    pub max: Option<i64>,
}

/// Counters.
pub struct Counters {
    store: Arc<dyn CounterStore>,
    common: Common,
    limits: Limits,
    metrics: Arc<Metrics>,
}

impl Primitive for Counters {
    fn common(&self) -> &Common {
        &self.common
    }
}

impl Counters {
    pub fn new(
        store: Arc<dyn CounterStore>,
        limits: Limits,
        metrics: Arc<Metrics>,
        common: Common,
    ) -> Self {
        Counters {
            store,
            common,
            limits,
            metrics,
        }
    }

    /// An increment for `caller`, as both APIs serve it: authorized (a
    /// plugin may rewrite the name), then applied.
    pub async fn increment_for(
        &self,
        caller: &Caller,
        name: String,
        req: IncrementRequest,
    ) -> Result<CounterValue> {
        let name = self.authorize(
            caller,
            Call::new(PrimitiveName::Counter, Operation::Increment, name),
        )?;
        self.increment(&name, req).await
    }

    /// A read for `caller`, authorized first.
    pub async fn get_for(&self, caller: &Caller, name: String) -> Result<CounterValue> {
        let name = self.authorize(
            caller,
            Call::new(PrimitiveName::Counter, Operation::Read, name),
        )?;
        self.get(&name).await
    }

    /// A reset for `caller`, authorized first (as a delete).
    pub async fn reset_for(&self, caller: &Caller, name: String) -> Result<bool> {
        let name = self.authorize(
            caller,
            Call::new(PrimitiveName::Counter, Operation::Delete, name),
        )?;
        self.reset(&name).await
    }

    /// Adds `req.by` to `name`; refused (`PreconditionFailed`, the counter
    /// unchanged) if the result would cross `min` or `max`.
    pub async fn increment(&self, name: &str, req: IncrementRequest) -> Result<CounterValue> {
        let span = tracing::info_span!("outrigger.counter.increment", name, by = req.by);
        telemetry::observe(&self.metrics, "counter", "increment", span, async {
            validate::name("counter name", name, &self.limits)?;
            let inc = self.check(req)?;
            match self.store.increment(name, inc).await? {
                Incremented::Done(value) => Ok(value),
                Incremented::OutOfBounds(now) => Err(Error::PreconditionFailed(format!(
                    "counter {name:?} is {}: adding {} would cross {}; it is unchanged",
                    now.value,
                    req.by,
                    crossed(&inc, now.value)
                ))),
            }
        })
        .await
    }

    /// The counter's value (0 if it does not exist) and remaining lifetime.
    pub async fn get(&self, name: &str) -> Result<CounterValue> {
        let span = tracing::info_span!("outrigger.counter.get", name);
        telemetry::observe(&self.metrics, "counter", "get", span, async {
            validate::name("counter name", name, &self.limits)?;
            Ok(self.store.get(name).await?)
        })
        .await
    }

    /// Deletes the counter (it reads 0 again); returns whether it existed.
    pub async fn reset(&self, name: &str) -> Result<bool> {
        let span = tracing::info_span!("outrigger.counter.reset", name);
        telemetry::observe(&self.metrics, "counter", "reset", span, async {
            validate::name("counter name", name, &self.limits)?;
            Ok(self.store.reset(name).await?)
        })
        .await
    }

    fn check(&self, req: IncrementRequest) -> Result<Increment> {
        let invalid = |m: String| Err(Error::InvalidArgument(m));
        if req.by == 0 {
            return invalid("by must not be 0 (read a counter with GET)".into());
        }
        for (what, n) in [("by", Some(req.by)), ("min", req.min), ("max", req.max)] {
            if n.is_some_and(|n| n.unsigned_abs() > MAX_MAGNITUDE as u64) {
                return invalid(format!(
                    "{what} must be within ±{MAX_MAGNITUDE} (2^53 - 1), the largest value a counter holds"
                ));
            }
        }
        if let (Some(min), Some(max)) = (req.min, req.max)
            && min > max
        {
            return invalid(format!("min ({min}) is above max ({max})"));
        }
        let ttl = match req.ttl_ms {
            0 => None,
            ms => Some(validate::ttl_ms("ttl_ms", ms, &self.limits)?),
        };
        Ok(Increment {
            by: req.by,
            ttl,
            min: req.min,
            max: req.max,
        })
    }
}

/// The bound `inc` would cross from `value`.
fn crossed(inc: &Increment, value: i64) -> String {
    match value.checked_add(inc.by) {
        Some(next) if next.unsigned_abs() <= MAX_MAGNITUDE as u64 => match (inc.min, inc.max) {
            (Some(min), _) if next < min => format!("the minimum {min}"),
            (_, Some(max)) => format!("the maximum {max}"),
            _ => "a bound".into(),
        },
        _ => format!("±{MAX_MAGNITUDE}, the largest value a counter holds"),
    }
}
