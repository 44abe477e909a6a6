//! A plugin of the 0.1.0 world, bound with wit-bindgen directly against the
//! frozen `sidecar/wit/outrigger-0.1.0` (the SDK follows the newest world).
//! `authorize` denies targets starting with `blocked`, and logs each call.

#[allow(missing_docs, unsafe_op_in_unsafe_fn, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../../../sidecar/wit/outrigger-0.1.0",
    });
}

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
            &format!("old-world saw {:?} {}", request.primitive, request.target),
        );
        if request.target.starts_with("blocked") {
            Decision::Deny(format!("{} is blocked (0.1.0 plugin)", request.target))
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
