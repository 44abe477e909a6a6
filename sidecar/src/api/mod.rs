//! The two front doors, gRPC and HTTP: thin adapters that translate wire
//! types to primitive calls and errors to status codes, nothing more.

pub mod error;
pub mod grpc;
pub mod http;
pub mod schema;

pub use grpc::pb;

use std::time::Duration;

/// Milliseconds, rounded up: a client told to wait this long is never early.
pub(crate) fn ceil_ms(d: Duration) -> u64 {
    d.as_millis() as u64 + u64::from(!d.subsec_nanos().is_multiple_of(1_000_000))
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
