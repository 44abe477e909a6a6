//! `audit-log`, an example: one line in the sidecar's log for every
//! acknowledged cache write, saying who wrote (or deleted) which key:
//!
//! ```text
//! audit: cache set "user:42" by "billing" (tenant=acme), 312 bytes, tags [user-42]
//! ```
//!
//! Never the value: an `on-write` event carries only its size. The lines
//! go through the host log, tagged with the plugin's name, at the level
//! the config names (`info` by default). It invalidates nothing. See
//! README.md.

use outrigger_plugin_sdk::{Config, Level, OnWrite, Plugin, WriteEvent, WriteKind, log};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// `trace`, `debug`, `info`, `warn` or `error`.
    level: String,
    /// Request attributes (`x-outrigger-attr-<name>`) to name in each line.
    attributes: Vec<String>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            level: "info".into(),
            attributes: Vec::new(),
        }
    }
}

struct AuditLog {
    level: Level,
    attributes: Vec<String>,
}

impl Plugin for AuditLog {
    fn new(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        let level = match settings.level.as_str() {
            "trace" => Level::Trace,
            "debug" => Level::Debug,
            "info" => Level::Info,
            "warn" => Level::Warn,
            "error" => Level::Error,
            other => {
                return Err(format!(
                    "level {other:?}: one of trace, debug, info, warn, error"
                ));
            }
        };
        Ok(AuditLog {
            level,
            attributes: settings.attributes,
        })
    }
}

impl AuditLog {
    fn line(&self, event: &WriteEvent) -> String {
        let who = match event.caller.as_deref() {
            Some(caller) => format!("{caller:?}"),
            None => "an unnamed caller".to_string(),
        };
        let attributes: Vec<String> = self
            .attributes
            .iter()
            .filter_map(|name| event.attribute(name).map(|value| format!("{name}={value}")))
            .collect();
        let attributes = if attributes.is_empty() {
            String::new()
        } else {
            format!(" ({})", attributes.join(", "))
        };
        match event.kind {
            WriteKind::Set => format!(
                "audit: cache set {:?} by {who}{attributes}, {} bytes, tags [{}]",
                event.key,
                event.value_size,
                event.tags.join(", ")
            ),
            WriteKind::Delete => {
                format!("audit: cache delete {:?} by {who}{attributes}", event.key)
            }
        }
    }
}

impl OnWrite for AuditLog {
    fn on_write(&self, event: &WriteEvent) -> Vec<outrigger_plugin_sdk::Invalidation> {
        log(self.level, &self.line(event));
        Vec::new()
    }
}

outrigger_plugin_sdk::export!(AuditLog: on_write);

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: WriteKind, caller: Option<&str>) -> WriteEvent {
        WriteEvent {
            kind,
            namespace: "app".into(),
            key: "user:42".into(),
            tags: vec!["user-42".into(), "users".into()],
            value_size: 312,
            caller: caller.map(str::to_string),
            attributes: vec![
                ("tenant".into(), "acme".into()),
                ("ip".into(), "10.0.0.1".into()),
            ],
        }
    }

    #[test]
    fn lines_name_the_writer_and_the_key_never_the_value() {
        let audit =
            AuditLog::new(Config::from_json(r#"{"attributes": ["tenant", "absent"]}"#)).unwrap();
        assert_eq!(
            audit.line(&event(WriteKind::Set, Some("billing"))),
            "audit: cache set \"user:42\" by \"billing\" (tenant=acme), 312 bytes, tags [user-42, users]"
        );
        assert_eq!(
            audit.line(&event(WriteKind::Delete, None)),
            "audit: cache delete \"user:42\" by an unnamed caller (tenant=acme)"
        );
    }

    #[test]
    fn a_bad_level_is_refused() {
        let err = AuditLog::new(Config::from_json(r#"{"level": "loud"}"#))
            .err()
            .unwrap();
        assert!(err.contains("one of trace"), "{err}");
    }
}
