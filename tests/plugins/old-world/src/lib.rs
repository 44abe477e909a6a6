//! A plugin of an older world, bound with wit-bindgen directly against a
//! frozen world in `sidecar/wit/` (the SDK follows the newest): 0.1.0,
//! 0.2.0 with the `world-0-2` feature, 0.3.0 with `world-0-3`, or 0.4.0
//! with `world-0-4`.
//! `authorize` denies targets starting with `blocked`, and logs each call.

#[cfg(not(any(feature = "world-0-2", feature = "world-0-3", feature = "world-0-4")))]
#[allow(missing_docs, unsafe_op_in_unsafe_fn, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../../../sidecar/wit/outrigger-0.1.0",
    });
}

#[cfg(feature = "world-0-2")]
#[allow(missing_docs, unsafe_op_in_unsafe_fn, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../../../sidecar/wit/outrigger-0.2.0",
    });
}

#[cfg(feature = "world-0-3")]
#[allow(missing_docs, unsafe_op_in_unsafe_fn, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../../../sidecar/wit/outrigger-0.3.0",
    });
}

#[cfg(feature = "world-0-4")]
#[allow(missing_docs, unsafe_op_in_unsafe_fn, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../../../sidecar/wit/outrigger-0.4.0",
    });
}

/// The world this build is bound to.
const WORLD: &str = if cfg!(feature = "world-0-4") {
    "0.4.0"
} else if cfg!(feature = "world-0-3") {
    "0.3.0"
} else if cfg!(feature = "world-0-2") {
    "0.2.0"
} else {
    "0.1.0"
};

use bindings::outrigger::plugin::host;
use bindings::outrigger::plugin::types::{
    Decision, Hook, Invalidation, Level, Limit, Request, WriteEvent,
};

struct OldWorld;

impl bindings::Guest for OldWorld {
    fn hooks() -> Vec<Hook> {
        vec![Hook::Authorize]
    }

    fn init() -> Result<(), String> {
        Ok(())
    }

    fn authorize(request: Request) -> Decision {
        host::log(
            Level::Info,
            &format!(
                "old-world {WORLD} saw {:?} {}",
                request.primitive, request.target
            ),
        );
        if request.target.starts_with("blocked") {
            Decision::Deny(format!("{} is blocked ({WORLD} plugin)", request.target))
        } else {
            Decision::Allow
        }
    }

    fn classify(_request: Request) -> Option<Limit> {
        None
    }

    fn on_write(_event: WriteEvent) -> Vec<Invalidation> {
        Vec::new()
    }
}

bindings::export!(OldWorld with_types_in bindings);
