//! A plugin whose first call in each instance spins for 60 ms of wall
//! time, past the wall-clock cap of the default 5 ms budget (50 ms), as a
//! language runtime's first call into a new instance takes long touching
//! its heap; every call after that is quick. It allows everything. Bound
//! with wit-bindgen directly, so that the slow call is `hooks`, which the
//! SDK implements itself.

#[allow(missing_docs, unsafe_op_in_unsafe_fn, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../../../sdk/wit",
    });
}

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bindings::outrigger::plugin::types::{
    Decision, Hook, Invalidation, Limit, Request, ValueDecision, ValueEvent, WriteEvent,
};

/// Whether this instance has had its first call.
static STARTED: AtomicBool = AtomicBool::new(false);

/// The first call's wait.
const FIRST_CALL: Duration = Duration::from_millis(60);

fn first_call_is_slow() {
    if !STARTED.swap(true, Ordering::Relaxed) {
        let until = Instant::now() + FIRST_CALL;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    }
}

struct SlowStart;

impl bindings::Guest for SlowStart {
    fn hooks() -> Vec<Hook> {
        first_call_is_slow();
        vec![Hook::Authorize]
    }

    fn init() -> Result<(), String> {
        first_call_is_slow();
        Ok(())
    }

    fn authorize(_request: Request) -> Decision {
        first_call_is_slow();
        Decision::Allow
    }

    fn classify(_request: Request) -> Option<Limit> {
        None
    }

    fn on_write(_event: WriteEvent) -> Vec<Invalidation> {
        Vec::new()
    }

    fn on_value(_event: ValueEvent) -> ValueDecision {
        ValueDecision::Keep
    }
}

bindings::export!(SlowStart with_types_in bindings);
