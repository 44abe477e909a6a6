//! `invalidate-rules`: config-driven invalidation. A rule such as
//!
//! ```json
//! {"match": "user:{id}", "keys": ["profile:{id}"], "tags": ["user-{id}"], "patterns": ["feed:{id}:*"]}
//! ```
//!
//! means: a write to `user:42` also invalidates the key `profile:42`, the
//! tag `user-42` and every key matching `feed:42:*`. See README.md.

use std::collections::BTreeMap;

use outrigger_plugin_sdk::{Config, Invalidation, OnWrite, Plugin, WriteEvent, WriteKind};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    rules: Vec<RuleConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleConfig {
    /// A key template: literal text and `{name}` placeholders.
    #[serde(rename = "match")]
    pattern: String,
    /// Which writes the rule applies to: `set`, `delete` (default both).
    #[serde(default = "both")]
    on: Vec<Kind>,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    patterns: Vec<String>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Set,
    Delete,
}

fn both() -> Vec<Kind> {
    vec![Kind::Set, Kind::Delete]
}

/// A parsed key template: literal text and placeholders.
#[derive(Debug, PartialEq)]
enum Part {
    Literal(String),
    Placeholder(String),
}

struct Rule {
    pattern: Vec<Part>,
    on: Vec<Kind>,
    keys: Vec<Vec<Part>>,
    tags: Vec<Vec<Part>>,
    patterns: Vec<Vec<Part>>,
}

struct InvalidateRules {
    rules: Vec<Rule>,
}

impl Plugin for InvalidateRules {
    fn new(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        let rules = settings
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, rule)| compile(rule).map_err(|err| format!("rules[{i}]: {err}")))
            .collect::<Result<_, _>>()?;
        Ok(InvalidateRules { rules })
    }
}

fn compile(rule: RuleConfig) -> Result<Rule, String> {
    let pattern = parse(&rule.pattern)?;
    if pattern
        .windows(2)
        .any(|w| matches!(w, [Part::Placeholder(_), Part::Placeholder(_)]))
    {
        return Err(format!(
            "{:?}: two placeholders need text between them",
            rule.pattern
        ));
    }
    let names: Vec<&str> = pattern
        .iter()
        .filter_map(|part| match part {
            Part::Placeholder(name) => Some(name.as_str()),
            Part::Literal(_) => None,
        })
        .collect();
    let templates = |list: Vec<String>| -> Result<Vec<Vec<Part>>, String> {
        list.iter()
            .map(|template| {
                let parts = parse(template)?;
                for part in &parts {
                    if let Part::Placeholder(name) = part
                        && !names.contains(&name.as_str())
                    {
                        return Err(format!(
                            "{template:?}: {{{name}}} is not in {:?}",
                            rule.pattern
                        ));
                    }
                }
                Ok(parts)
            })
            .collect()
    };
    Ok(Rule {
        keys: templates(rule.keys)?,
        tags: templates(rule.tags)?,
        patterns: templates(rule.patterns)?,
        pattern,
        on: rule.on,
    })
}

fn parse(template: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        match rest.find('{') {
            Some(0) => {
                let end = rest
                    .find('}')
                    .ok_or_else(|| format!("{template:?}: unclosed {{"))?;
                let name = &rest[1..end];
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("{template:?}: bad placeholder {{{name}}}"));
                }
                parts.push(Part::Placeholder(name.to_string()));
                rest = &rest[end + 1..];
            }
            Some(start) => {
                parts.push(Part::Literal(rest[..start].to_string()));
                rest = &rest[start..];
            }
            None => {
                parts.push(Part::Literal(rest.to_string()));
                rest = "";
            }
        }
    }
    if parts.is_empty() {
        return Err("empty template".into());
    }
    Ok(parts)
}

/// Matches `key` against a template. A placeholder matches one or more
/// characters other than `:`, up to the literal text that follows it.
fn matches<'t, 'k>(template: &'t [Part], key: &'k str) -> Option<BTreeMap<&'t str, &'k str>> {
    let mut captures = BTreeMap::new();
    let mut rest = key;
    let mut parts = template.iter().peekable();
    while let Some(part) = parts.next() {
        match part {
            Part::Literal(text) => rest = rest.strip_prefix(text.as_str())?,
            Part::Placeholder(name) => {
                let end = match parts.peek() {
                    Some(Part::Literal(next)) => rest.find(next.as_str())?,
                    _ => rest.len(),
                };
                let value = &rest[..end];
                if value.is_empty() || value.contains(':') {
                    return None;
                }
                captures.insert(name.as_str(), value);
                rest = &rest[end..];
            }
        }
    }
    rest.is_empty().then_some(captures)
}

fn fill(template: &[Part], captures: &BTreeMap<&str, &str>) -> String {
    template
        .iter()
        .map(|part| match part {
            Part::Literal(text) => text.as_str(),
            Part::Placeholder(name) => captures[name.as_str()],
        })
        .collect()
}

impl OnWrite for InvalidateRules {
    fn on_write(&self, event: &WriteEvent) -> Vec<Invalidation> {
        let kind = match event.kind {
            WriteKind::Set => Kind::Set,
            WriteKind::Delete => Kind::Delete,
        };
        let mut out = Vec::new();
        for rule in self.rules.iter().filter(|rule| rule.on.contains(&kind)) {
            let Some(captures) = matches(&rule.pattern, &event.key) else {
                continue;
            };
            out.extend(
                rule.keys
                    .iter()
                    .map(|t| Invalidation::Key(fill(t, &captures))),
            );
            out.extend(
                rule.tags
                    .iter()
                    .map(|t| Invalidation::Tag(fill(t, &captures))),
            );
            out.extend(
                rule.patterns
                    .iter()
                    .map(|t| Invalidation::Pattern(fill(t, &captures))),
            );
        }
        // Never invalidate the key just written: its new value stands.
        out.retain(|inv| !matches!(inv, Invalidation::Key(key) if *key == event.key));
        out
    }
}

outrigger_plugin_sdk::export!(InvalidateRules: on_write);

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{"rules": [
        {"match": "user:{id}", "keys": ["profile:{id}"], "tags": ["user-{id}"], "patterns": ["feed:{id}:*"]},
        {"match": "org:{org}:member:{id}", "on": ["delete"], "keys": ["org:{org}:members"]}
    ]}"#;

    fn write(kind: WriteKind, key: &str) -> WriteEvent {
        WriteEvent {
            kind,
            namespace: "ns".into(),
            key: key.into(),
            tags: vec![],
            value_size: 0,
            caller: None,
            attributes: vec![],
        }
    }

    #[test]
    fn a_matching_write_invalidates_what_the_rule_names() {
        let p = InvalidateRules::new(Config::from_json(CONFIG)).unwrap();
        assert_eq!(
            p.on_write(&write(WriteKind::Set, "user:42")),
            vec![
                Invalidation::Key("profile:42".into()),
                Invalidation::Tag("user-42".into()),
                Invalidation::Pattern("feed:42:*".into()),
            ]
        );
        assert_eq!(p.on_write(&write(WriteKind::Set, "user:42:x")), vec![]);
        assert_eq!(p.on_write(&write(WriteKind::Set, "user:")), vec![]);
        assert_eq!(p.on_write(&write(WriteKind::Set, "org:a:member:7")), vec![]);
        assert_eq!(
            p.on_write(&write(WriteKind::Delete, "org:a:member:7")),
            vec![Invalidation::Key("org:a:members".into())]
        );
    }

    #[test]
    fn bad_rules_are_refused_with_their_index() {
        for (json, says) in [
            (
                r#"{"rules": [{"match": "a:{id}", "keys": ["b:{other}"]}]}"#,
                "rules[0]",
            ),
            (r#"{"rules": [{"match": "a:{x}{y}"}]}"#, "two placeholders"),
            (r#"{"rules": [{"match": "a:{id"}]}"#, "unclosed"),
            (r#"{"rules": [{"match": "a", "bogus": 1}]}"#, "bogus"),
        ] {
            let err = InvalidateRules::new(Config::from_json(json)).err().unwrap();
            assert!(err.contains(says), "{err}");
        }
    }
}
