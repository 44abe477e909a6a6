//! Every integration suite, linked into one test binary (`cargo test -p
//! outrigger-tests --test suite`): the sidecar and its dependencies are
//! linked once, and libtest runs the cases of all suites side by side.
//!
//! Each module is one suite; run one alone with its name as the filter,
//! e.g. `cargo test -p outrigger-tests --test suite -- cache_api::`.
//! `tests/README.md` says what each proves.

mod cache_api;
mod cache_conformance;
mod cli;
mod counter_api;
mod counter_conformance;
mod failover;
mod fuzz;
mod histories;
mod lock_api;
mod lock_conformance;
mod map_api;
mod map_conformance;
mod monitoring;
mod namespaces;
mod near_cache;
mod plugins;
mod queue_api;
mod queue_conformance;
mod queue_loss;
mod queue_schedules;
mod realtime_api;
mod realtime_conformance;
mod realtime_loss;
mod sidecar_process;
mod soak;
mod topology;
mod versions_loss;
