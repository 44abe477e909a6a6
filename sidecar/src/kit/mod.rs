//! What every primitive shares with the others: what it is given (the
//! plugin host, the shutdown signal), and the kit its HTTP routes and gRPC
//! service are written with. Below the primitives: nothing here knows one.

pub mod error;
pub mod grpc;
pub mod http;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::error::Result;
use crate::plugins::{Call, Caller, Plugins};

/// What every primitive is given: the plugin host its calls go through,
/// and the signal that ends long-lived streams at shutdown.
#[derive(Clone)]
pub struct Common {
    pub plugins: Arc<Plugins>,
    draining: watch::Receiver<bool>,
}

impl Common {
    pub fn new(plugins: Arc<Plugins>, draining: watch::Receiver<bool>) -> Common {
        Common { plugins, draining }
    }

    /// Runs the plugins' `authorize` chain for one call: the target to use
    /// (the caller's, or a plugin's rewrite), or why the call is refused.
    pub fn authorize(&self, caller: &Caller, call: Call<'_>) -> Result<String> {
        if self.plugins.is_empty() {
            return Ok(call.target);
        }
        self.plugins.authorize(caller, call)
    }

    /// Resolves once shutdown has begun (streams end then).
    pub fn draining(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.draining.clone();
        async move {
            // Err only if the sender is gone: the app is gone, so stop too.
            let _ = rx.wait_for(|draining| *draining).await;
        }
    }
}

/// When a conditional write may happen (a cache entry, a map field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Condition {
    #[default]
    None,
    IfAbsent,
    IfPresent,
    /// It exists with exactly this version (compare-and-set).
    IfVersion(u64),
}

/// A primitive, as its adapters see it.
pub trait Primitive: Send + Sync + 'static {
    /// What it was given.
    fn common(&self) -> &Common;

    /// Runs the plugins' `authorize` chain for one call (see
    /// [`Common::authorize`]).
    fn authorize(&self, caller: &Caller, call: Call<'_>) -> Result<String> {
        self.common().authorize(caller, call)
    }
}

/// Milliseconds, rounded up: a client told to wait this long is never early.
pub fn ceil_ms(d: Duration) -> u64 {
    d.as_millis() as u64 + u64::from(!d.subsec_nanos().is_multiple_of(1_000_000))
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A glob pattern a listing or an invalidation was given: at most
/// `limits.max_key_bytes`, and one Redis reads as written.
pub fn check_pattern(pattern: &str, limits: &crate::validate::Limits) -> Result<()> {
    if pattern.len() > limits.max_key_bytes {
        return Err(crate::error::Error::TooLarge(format!(
            "pattern is {} bytes; the limit is {} (limits.max_key_bytes)",
            pattern.len(),
            limits.max_key_bytes
        )));
    }
    crate::backend::glob::validate(pattern)
        .map_err(|reason| crate::error::Error::InvalidArgument(reason.into()))
}
