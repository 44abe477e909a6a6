//! A plugin that misbehaves the way its config says, in every hook: the
//! sidecar must answer each request within the plugin's budget (plus a
//! margin), apply the fail mode, and keep serving.
//!
//! `{"mode": "..."}`: `loop` (never returns), `bomb` (allocates until the
//! memory cap), `trap` (panics), `garbage` (returns a string that is not
//! UTF-8), `stack` (unbounded recursion), `slow-start` (fails in `new`),
//! `deny` (the default: behaves, denying everything), `mark` (behaves:
//! `on-value` wraps each value, `{label}>value` on its way in and
//! `value<{label}` on its way out, `{"label": "..."}`),
//! `log-flood` (logs without end, then denies), `rewrite` (rewrites every
//! target to `{"target": "..."}`: an attempt to reach another namespace).
//!
//! Whatever the mode, `authorize` of a target starting `log:` logs one line,
//! then denies: a test can hold the call in flight at that line.

use outrigger_plugin_sdk::{
    Authorize, Classify, Config, Decision, Invalidation, Limit, OnValue, OnWrite, Plugin, Request,
    ValueDecision, ValueEvent, WriteEvent,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Settings {
    #[serde(default = "deny")]
    mode: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    label: String,
}

fn deny() -> String {
    "deny".into()
}

struct Hostile {
    mode: String,
    target: String,
    label: String,
}

impl Plugin for Hostile {
    fn new(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if settings.mode == "slow-start" {
            return Err("refusing to start".into());
        }
        Ok(Hostile {
            mode: settings.mode,
            target: settings.target,
            label: settings.label,
        })
    }
}

impl Hostile {
    fn misbehave(&self) -> Option<String> {
        match self.mode.as_str() {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    let mut chunk = Vec::<u8>::with_capacity(1 << 20);
                    chunk.push(1);
                    hoard.push(chunk);
                    std::hint::black_box(&hoard);
                }
            }
            "trap" => panic!("hostile plugin traps"),
            "stack" => Some(recurse(0).to_string()),
            "garbage" => {
                // A string the host must refuse to lift: not UTF-8.
                // SAFETY: deliberately unsound; that is the test.
                Some(unsafe { String::from_utf8_unchecked(vec![0xff, 0xfe, 0xfd]) })
            }
            "log-flood" => {
                for i in 0..1_000_000 {
                    outrigger_plugin_sdk::info!("flood {i}");
                }
                Some("flooded".into())
            }
            // Every hook aims at the configured target.
            "rewrite" => Some(self.target.clone()),
            _ => Some("denied by the hostile test plugin".into()),
        }
    }
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    recurse(std::hint::black_box(depth + 1)) + 1
}

impl Authorize for Hostile {
    fn authorize(&self, request: &Request) -> Decision {
        if request.target.starts_with("log:") {
            outrigger_plugin_sdk::info!("logged before answering");
            return Decision::Deny("denied by the hostile test plugin".into());
        }
        if self.mode == "rewrite" {
            return Decision::Rewrite(outrigger_plugin_sdk::Rewrite {
                target: self.target.clone(),
            });
        }
        match self.misbehave() {
            Some(reason) if self.mode == "garbage" => {
                Decision::Rewrite(outrigger_plugin_sdk::Rewrite { target: reason })
            }
            Some(reason) => Decision::Deny(reason),
            None => Decision::Allow,
        }
    }
}

impl Classify for Hostile {
    fn classify(&self, request: &Request) -> Option<Limit> {
        self.misbehave().map(|key| Limit {
            policy: request.policy.clone().unwrap_or_default(),
            key,
            cost: 1,
        })
    }
}

impl OnWrite for Hostile {
    fn on_write(&self, _: &WriteEvent) -> Vec<Invalidation> {
        self.misbehave()
            .map(Invalidation::Key)
            .into_iter()
            .collect()
    }
}

impl OnValue for Hostile {
    fn on_value(&self, event: &ValueEvent) -> ValueDecision {
        if self.mode == "mark" {
            return ValueDecision::Replace(mark(&self.label, event));
        }
        match self.misbehave() {
            Some(reason) => ValueDecision::Deny(reason),
            None => ValueDecision::Keep,
        }
    }
}

/// `label>value` on the way in, `value<label` on the way out.
fn mark(label: &str, event: &ValueEvent) -> Vec<u8> {
    if event.point.is_inbound() {
        [format!("{label}>").as_bytes(), &event.value].concat()
    } else {
        [&event.value, format!("<{label}").as_bytes()].concat()
    }
}

outrigger_plugin_sdk::export!(Hostile: authorize, classify, on_write, on_value);
