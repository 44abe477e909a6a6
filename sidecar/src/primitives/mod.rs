//! The coordination primitives, one folder each.
//!
//! A primitive's folder holds all of it: the primitive itself (`mod.rs`:
//! validation, limits, metrics and spans, plugin hooks), its storage seam
//! (`store.rs`), its memory and Redis stores (`memory.rs`, `redis.rs` and
//! its Lua scripts), what it does while Redis is down and when Redis
//! returns (`failover.rs`), its HTTP routes and gRPC service (`http.rs`,
//! `grpc.rs`) and its configuration section (`config.rs`). See
//! `sidecar/ADDING_A_PRIMITIVE.md`.

pub mod cache;
pub mod counter;
pub mod lock;
pub mod map;
pub mod presence;
pub mod pubsub;
pub mod queue;
pub mod ratelimit;

pub use crate::kit::Common;
