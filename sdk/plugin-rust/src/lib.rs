//! Write [Outrigger](https://github.com/outrigger-dev/outrigger) plugins in
//! Rust.
//!
//! A plugin is a WebAssembly component the sidecar calls on the request
//! path. It implements any subset of four hooks, one trait each:
//!
//! - [`Authorize`]: allow, deny or rewrite a request before it reaches a
//!   primitive;
//! - [`Classify`]: choose the rate-limit policy, key and cost of a check;
//! - [`OnWrite`]: name more keys, tags or patterns to invalidate after a
//!   cache write;
//! - [`OnValue`]: see, replace or refuse each cache value and pub/sub
//!   payload on its way in and out (encryption at rest, redaction,
//!   auditing).
//!
//! Every plugin also implements [`Plugin`], which builds it from its
//! configuration, and is exported with [`export!`], naming the hooks it
//! implements. Hooks it does not name are never called: they have no
//! opinion.
//!
//! ```ignore
//! use outrigger_plugin_sdk::{Authorize, Config, Decision, Plugin, Request};
//!
//! struct ReadOnly;
//!
//! impl Plugin for ReadOnly {
//!     fn new(_config: Config) -> Result<Self, String> {
//!         Ok(ReadOnly)
//!     }
//! }
//!
//! impl Authorize for ReadOnly {
//!     fn authorize(&self, request: &Request) -> Decision {
//!         match request.operation {
//!             outrigger_plugin_sdk::Operation::Read => Decision::Allow,
//!             _ => Decision::deny("this sidecar is read-only"),
//!         }
//!     }
//! }
//!
//! outrigger_plugin_sdk::export!(ReadOnly: authorize);
//! ```
//!
//! Build with `cargo build --target wasm32-wasip2 --release`; the
//! component is `target/wasm32-wasip2/release/<crate>.wasm`. The guide in
//! the SDK's README goes from an empty directory to a plugin running in a
//! sidecar.
#![deny(missing_docs)]

use serde::de::DeserializeOwned;

#[doc(hidden)]
#[allow(missing_docs, unsafe_op_in_unsafe_fn, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_plugin_world",
        default_bindings_module: "outrigger_plugin_sdk::bindings",
        additional_derives: [PartialEq, Eq],
    });
}

use bindings::outrigger::plugin::host;
pub use bindings::outrigger::plugin::types::{
    Decision, Hook, Invalidation, Level, Limit, Operation, Primitive, Request, Rewrite,
    ValueDecision, ValueEvent, ValuePoint, WriteEvent, WriteKind,
};

/// A plugin, built once per plugin instance from its configuration.
///
/// The sidecar may run several instances of a plugin side by side and may
/// replace an instance at any time (after a failure, or on reload): keep
/// no state that must outlive one call.
pub trait Plugin: Sized + 'static {
    /// Builds the plugin. An `Err` is logged, and every call to the plugin
    /// then fails (the sidecar applies the plugin's fail mode).
    fn new(config: Config) -> Result<Self, String>;
}

/// The `authorize` hook: runs before each primitive call the plugin is
/// configured for.
pub trait Authorize: Plugin {
    /// Allow, deny (with a reason the caller sees) or rewrite the target.
    fn authorize(&self, request: &Request) -> Decision;
}

/// The `classify` hook: runs before each rate-limit check.
pub trait Classify: Plugin {
    /// The policy, key and cost to check, or `None` to keep the request's.
    fn classify(&self, request: &Request) -> Option<Limit>;
}

/// The `on-write` hook: runs after each acknowledged cache set or delete.
pub trait OnWrite: Plugin {
    /// More keys, tags or patterns to invalidate because of this write.
    fn on_write(&self, event: &WriteEvent) -> Vec<Invalidation>;
}

/// The `on-value` hook: runs for each cache value and pub/sub payload the
/// plugin is configured for (`cache`, `pubsub`), on its way in
/// ([`ValuePoint::CacheWrite`], [`ValuePoint::Publish`]) and out
/// ([`ValuePoint::CacheRead`], [`ValuePoint::Deliver`]).
pub trait OnValue: Plugin {
    /// Keep the value, replace it, or refuse it (with a reason the caller
    /// sees).
    fn on_value(&self, event: &ValueEvent) -> ValueDecision;
}

/// The plugin's `config` table from the sidecar's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    json: String,
}

impl Config {
    /// The configuration the sidecar gives this plugin.
    pub fn from_host() -> Config {
        Config {
            json: host::config(),
        }
    }

    /// A configuration from JSON text: for unit tests of a plugin, which
    /// run natively, without a sidecar.
    pub fn from_json(json: impl Into<String>) -> Config {
        Config { json: json.into() }
    }

    /// The configuration as JSON text (`{}` when there is none).
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The configuration as `T`; the error says what does not fit.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_str(&self.json).map_err(|err| format!("invalid plugin config: {err}"))
    }
}

impl Decision {
    /// Refuse the request, telling the caller why.
    pub fn deny(reason: impl Into<String>) -> Decision {
        Decision::Deny(reason.into())
    }

    /// Go on with another target (key, name, room or channel).
    pub fn rewrite(target: impl Into<String>) -> Decision {
        Decision::Rewrite(Rewrite {
            target: target.into(),
        })
    }
}

impl ValueDecision {
    /// Refuse the value, telling the caller why.
    pub fn deny(reason: impl Into<String>) -> ValueDecision {
        ValueDecision::Deny(reason.into())
    }
}

impl ValuePoint {
    /// On the way in (a cache write, a publish) rather than out.
    pub fn is_inbound(self) -> bool {
        matches!(self, ValuePoint::CacheWrite | ValuePoint::Publish)
    }
}

impl ValueEvent {
    /// As [`Request::attribute`].
    pub fn attribute(&self, name: &str) -> Option<&str> {
        attribute(&self.attributes, name)
    }
}

impl Request {
    /// The value of the `x-outrigger-attr-<name>` header or metadata entry,
    /// if the request carried one (`name` in lower case).
    pub fn attribute(&self, name: &str) -> Option<&str> {
        attribute(&self.attributes, name)
    }

    /// The caller's identity, as the application stated it.
    pub fn caller(&self) -> Option<&str> {
        self.caller.as_deref()
    }

    /// Whether the request writes (cache set, delete or invalidation,
    /// lock and semaphore changes, presence changes, publish).
    pub fn is_write(&self) -> bool {
        !matches!(
            self.operation,
            Operation::Read
                | Operation::Scan
                | Operation::Check
                | Operation::Members
                | Operation::Watch
                | Operation::Rooms
                | Operation::Subscribe
                | Operation::SubscribePattern
        )
    }
}

impl WriteEvent {
    /// As [`Request::attribute`].
    pub fn attribute(&self, name: &str) -> Option<&str> {
        attribute(&self.attributes, name)
    }
}

fn attribute<'a>(attributes: &'a [(String, String)], name: &str) -> Option<&'a str> {
    attributes
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// The current time in milliseconds since the Unix epoch, from the sidecar.
pub fn now_ms() -> u64 {
    host::now_ms()
}

/// Writes a line to the sidecar's log, tagged with the plugin's name.
pub fn log(level: Level, message: &str) {
    host::log(level, message)
}

/// Logs at debug level, `format!` style.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log($crate::Level::Debug, &::std::format!($($arg)*)) };
}

/// Logs at info level, `format!` style.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log($crate::Level::Info, &::std::format!($($arg)*)) };
}

/// Logs at warn level, `format!` style.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log($crate::Level::Warn, &::std::format!($($arg)*)) };
}

/// Logs at error level, `format!` style.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log($crate::Level::Error, &::std::format!($($arg)*)) };
}

/// Exports a plugin: the type, then the hooks it implements.
///
/// ```ignore
/// outrigger_plugin_sdk::export!(TenantGuard: authorize);
/// outrigger_plugin_sdk::export!(Everything: authorize, classify, on_write, on_value);
/// ```
///
/// Naming a hook the type does not implement is a compile error; a hook
/// that is implemented but not named is never called.
#[macro_export]
macro_rules! export {
    ($plugin:ty : $($hook:ident),+ $(,)?) => {
        const _: () = {
            #[allow(clippy::needless_update)] // when every hook is named
            const TABLE: $crate::__private::Table<$plugin> = $crate::__private::Table {
                $($hook: ::core::option::Option::Some($crate::__private::$hook::<$plugin>),)+
                ..$crate::__private::Table::EMPTY
            };

            static INSTANCE: ::std::sync::OnceLock<$plugin> = ::std::sync::OnceLock::new();

            fn instance() -> &'static $plugin {
                INSTANCE.get_or_init($crate::__private::build::<$plugin>)
            }

            struct OutriggerPlugin;

            impl $crate::bindings::Guest for OutriggerPlugin {
                fn hooks() -> ::std::vec::Vec<$crate::Hook> {
                    TABLE.hooks()
                }
                fn init() -> ::core::result::Result<(), ::std::string::String> {
                    $crate::__private::init(&INSTANCE)
                }
                fn authorize(request: $crate::Request) -> $crate::Decision {
                    match TABLE.authorize {
                        ::core::option::Option::Some(hook) => hook(instance(), &request),
                        ::core::option::Option::None => $crate::Decision::Allow,
                    }
                }
                fn classify(request: $crate::Request) -> ::core::option::Option<$crate::Limit> {
                    TABLE.classify.and_then(|hook| hook(instance(), &request))
                }
                fn on_write(event: $crate::WriteEvent) -> ::std::vec::Vec<$crate::Invalidation> {
                    match TABLE.on_write {
                        ::core::option::Option::Some(hook) => hook(instance(), &event),
                        ::core::option::Option::None => ::std::vec::Vec::new(),
                    }
                }
                fn on_value(event: $crate::ValueEvent) -> $crate::ValueDecision {
                    match TABLE.on_value {
                        ::core::option::Option::Some(hook) => hook(instance(), &event),
                        ::core::option::Option::None => $crate::ValueDecision::Keep,
                    }
                }
            }

            $crate::bindings::__export_plugin_world!(OutriggerPlugin with_types_in $crate::bindings);
        };
    };
}

/// Used by [`export!`]; not part of the API.
#[doc(hidden)]
pub mod __private {
    use super::*;

    /// The hooks a plugin type exports.
    pub struct Table<P> {
        pub authorize: Option<fn(&P, &Request) -> Decision>,
        pub classify: Option<fn(&P, &Request) -> Option<Limit>>,
        pub on_write: Option<fn(&P, &WriteEvent) -> Vec<Invalidation>>,
        pub on_value: Option<fn(&P, &ValueEvent) -> ValueDecision>,
    }

    impl<P> Table<P> {
        pub const EMPTY: Table<P> = Table {
            authorize: None,
            classify: None,
            on_write: None,
            on_value: None,
        };

        pub fn hooks(&self) -> Vec<Hook> {
            let mut hooks = Vec::new();
            if self.authorize.is_some() {
                hooks.push(Hook::Authorize);
            }
            if self.classify.is_some() {
                hooks.push(Hook::Classify);
            }
            if self.on_write.is_some() {
                hooks.push(Hook::OnWrite);
            }
            if self.on_value.is_some() {
                hooks.push(Hook::OnValue);
            }
            hooks
        }
    }

    pub fn authorize<P: Authorize>(plugin: &P, request: &Request) -> Decision {
        plugin.authorize(request)
    }

    pub fn classify<P: Classify>(plugin: &P, request: &Request) -> Option<Limit> {
        plugin.classify(request)
    }

    pub fn on_write<P: OnWrite>(plugin: &P, event: &WriteEvent) -> Vec<Invalidation> {
        plugin.on_write(event)
    }

    pub fn on_value<P: OnValue>(plugin: &P, event: &ValueEvent) -> ValueDecision {
        plugin.on_value(event)
    }

    /// Sends panic messages to the sidecar's log (a plugin has no stderr);
    /// the panic then traps, and the sidecar counts the call as failed.
    fn log_panics() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| log(Level::Error, &info.to_string())));
        });
    }

    /// Builds the plugin for `init`, reporting a bad configuration.
    pub fn init<P: Plugin>(instance: &std::sync::OnceLock<P>) -> Result<(), String> {
        log_panics();
        if instance.get().is_none() {
            let _ = instance.set(P::new(Config::from_host())?);
        }
        Ok(())
    }

    /// Builds the plugin from the host's config. A failure is logged, then
    /// traps: the sidecar counts the call as failed.
    pub fn build<P: Plugin>() -> P {
        log_panics();
        match P::new(Config::from_host()) {
            Ok(plugin) => plugin,
            Err(err) => {
                log(Level::Error, &format!("cannot start: {err}"));
                panic!("cannot start: {err}")
            }
        }
    }
}
