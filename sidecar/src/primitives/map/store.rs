//! The map storage seam: what a map store is asked and answers.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::backend::{BackendError, Feed};
pub use crate::kit::Condition;

/// The largest integer a field holds exactly: 2^53 - 1, as for counters
/// (every JSON client and Redis' Lua represent it exactly).
pub const MAX_INTEGER: i64 = (1 << 53) - 1;

/// A field as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldValue {
    pub value: Bytes,
    /// The map's version when the field was last written.
    pub version: u64,
    /// Remaining lifetime of the field; `None` when it has no TTL of its own.
    pub ttl: Option<Duration>,
}

/// A number a field is incremented by, or holds after an increment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    /// As stored: an integer in decimal; a float as C's `%.15g`, `%.16g`
    /// or `%.17g` prints it, the first that reads back as the same number
    /// (what `update.lua` writes, so both backends store the same bytes).
    pub fn text(self) -> String {
        match self {
            Number::Int(n) => n.to_string(),
            Number::Float(x) => (15..=17)
                .map(|p| format_g(x, p))
                .find(|s| s.parse::<f64>() == Ok(x))
                .unwrap_or_else(|| format_g(x, 17)),
        }
    }

    /// A field's bytes as a number (absent is 0). The grammar is
    /// `-?[0-9]+(.[0-9]*)?([eE][-+]?[0-9]+)?`; without a fraction or an
    /// exponent it is an integer, which must be within ±[`MAX_INTEGER`].
    pub fn parse(bytes: Option<&[u8]>) -> Option<Number> {
        let Some(bytes) = bytes else {
            return Some(Number::Int(0));
        };
        let text = std::str::from_utf8(bytes).ok()?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let unsigned = text.strip_prefix('-').unwrap_or(text);
        let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
            Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
            None => (unsigned, None),
        };
        let (whole, fraction) = match mantissa.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (mantissa, None),
        };
        let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e)));
        if !digits(whole) || !fraction.is_none_or(|f| f.is_empty() || digits(f)) || !exponent_ok {
            return None;
        }
        if fraction.is_none() && exponent.is_none() {
            let n: i64 = text.parse().ok()?;
            return (n.unsigned_abs() <= MAX_INTEGER as u64).then_some(Number::Int(n));
        }
        let x: f64 = text.parse().ok()?;
        x.is_finite().then_some(Number::Float(x))
    }

    /// `self + by`: integers stay integers while within ±[`MAX_INTEGER`];
    /// a float on either side makes a float. `None` when the result is
    /// out of range (or not finite). The Redis script mirrors this.
    pub fn plus(self, by: Number) -> Option<Number> {
        match (self, by) {
            (Number::Int(a), Number::Int(b)) => {
                let n = a.checked_add(b)?;
                (n.unsigned_abs() <= MAX_INTEGER as u64).then_some(Number::Int(n))
            }
            (a, b) => {
                let x = a.float() + b.float();
                x.is_finite().then_some(Number::Float(x))
            }
        }
    }

    fn float(self) -> f64 {
        match self {
            Number::Int(n) => n as f64,
            Number::Float(x) => x,
        }
    }
}

/// `x` as C's `printf("%.{p}g", x)` prints it (`p` significant digits;
/// scientific notation below 1e-4 and from 10^p; trailing zeros dropped).
fn format_g(x: f64, p: usize) -> String {
    if x == 0.0 {
        return if x.is_sign_negative() { "-0" } else { "0" }.into();
    }
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    let sci = format!("{:.*e}", p - 1, x);
    let (mantissa, exponent) = sci.split_once('e').expect("{:e} has an exponent");
    let exponent: i32 = exponent.parse().expect("{:e} has a numeric exponent");
    if exponent < -4 || exponent >= p as i32 {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exponent.abs())
    } else {
        trim(&format!("{:.*}", (p as i32 - 1 - exponent) as usize, x))
    }
}

/// Where a map listing resumes: the Redis `HSCAN` cursor and the last
/// field returned from its batch (memory only uses the field). Written
/// `<scan>:<field>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cursor {
    pub scan: u64,
    pub after: Option<String>,
}

impl Cursor {
    pub fn parse(text: &str) -> Result<Cursor, BackendError> {
        if text.is_empty() {
            return Ok(Cursor::default());
        }
        let (scan, after) = text.split_once(':').ok_or(BackendError::InvalidCursor)?;
        Ok(Cursor {
            scan: scan.parse().map_err(|_| BackendError::InvalidCursor)?,
            after: (!after.is_empty()).then(|| after.to_string()),
        })
    }

    pub fn text(&self) -> String {
        format!(
            "{}:{}",
            self.scan,
            self.after.as_deref().unwrap_or_default()
        )
    }
}

/// One change of an [`Update`].
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Sets a field (replacing its TTL: none unless `ttl` is given) if
    /// `condition` holds.
    Set {
        field: String,
        value: Bytes,
        ttl: Option<Duration>,
        condition: Condition,
    },
    Delete {
        field: String,
    },
    /// Adds `by` to a numeric field (absent: 0); the field keeps its TTL.
    Increment {
        field: String,
        by: Number,
    },
}

impl Change {
    pub fn field(&self) -> &str {
        match self {
            Change::Set { field, .. }
            | Change::Delete { field }
            | Change::Increment { field, .. } => field,
        }
    }
}

/// The map's own lifetime, as an update sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapTtl {
    /// Expires this long after this update.
    Fixed(Duration),
    /// Expires this long after its last access (read or write).
    Sliding(Duration),
    /// Never expires (a TTL set before is removed).
    Persist,
}

/// An atomic update of several fields: every change applies, or none.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub changes: Vec<Change>,
    /// Apply only if the map's version is exactly this (0: the map does not
    /// exist).
    pub if_version: Option<u64>,
    /// `None`: the map's lifetime is left as it is.
    pub ttl: Option<MapTtl>,
    /// The most fields the map may hold after the update.
    pub max_fields: usize,
}

/// What one change did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    Set,
    Deleted { existed: bool },
    Incremented(Number),
}

/// Why an update was refused (nothing of it applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The map's version is not `if_version`.
    MapVersion,
    /// Change `index`'s condition does not hold.
    Condition { index: usize },
    /// Change `index` increments a field that does not hold a number.
    NotANumber { index: usize },
    /// Change `index` would take the field out of range.
    OutOfRange { index: usize },
    /// The map would hold more than `max_fields` fields.
    TooManyFields,
}

/// What an update did.
#[derive(Debug, Clone, PartialEq)]
pub enum Updated {
    /// Applied: the map's new version (every field set or incremented now
    /// has it) and each change's outcome, in order.
    Done {
        version: u64,
        outcomes: Vec<Outcome>,
    },
    /// Refused; `version` is the map's current version.
    Refused { version: u64, refusal: Refusal },
}

/// Fields as read, with the map's version and lifetime.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MapRead {
    /// 0: the map does not exist.
    pub version: u64,
    /// The map's remaining lifetime; `None` when it never expires.
    pub ttl: Option<Duration>,
    /// One per field asked for, in order; `None` when absent or expired.
    pub fields: Vec<Option<FieldValue>>,
}

/// One page of a map's fields.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MapPage {
    pub version: u64,
    pub ttl: Option<Duration>,
    pub fields: Vec<(String, FieldValue)>,
    /// Where the next page starts; `None` when this is the last.
    pub next_cursor: Option<String>,
}

/// How a field changed, in a [`MapEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldChange {
    /// Set or incremented: its value now.
    Set(Bytes),
    Deleted,
    /// Its TTL ran out.
    Expired,
}

/// Something that happened to a map, as watchers see it: one event per
/// update (its changes together, never interleaved with another's), per
/// reap of expired fields, or for the map's deletion (`changes` empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEvent {
    pub map: String,
    /// The map's version after the event.
    pub version: u64,
    pub kind: MapEventKind,
    pub changes: Vec<(String, FieldChange)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapEventKind {
    Updated,
    Expired,
    Deleted,
}

impl MapEventKind {
    pub fn name(self) -> &'static str {
        match self {
            MapEventKind::Updated => "updated",
            MapEventKind::Expired => "expired",
            MapEventKind::Deleted => "deleted",
        }
    }
}

/// Map storage. Names, fields and values arrive validated.
#[async_trait]
pub trait MapStore: Send + Sync + 'static {
    /// Applies every change of `update` atomically, or none.
    async fn update(&self, map: &str, update: Update) -> Result<Updated, BackendError>;

    /// The fields asked for (a sliding map's lifetime restarts).
    async fn get(&self, map: &str, fields: &[String]) -> Result<MapRead, BackendError>;

    /// Up to `limit` fields from `cursor` (empty: the start). Every field
    /// that exists for the whole listing is returned once.
    async fn scan(&self, map: &str, cursor: &str, limit: usize) -> Result<MapPage, BackendError>;

    /// Deletes the map; returns whether it existed.
    async fn delete(&self, map: &str) -> Result<bool, BackendError>;

    /// Every event of `map` from now on.
    async fn watch(&self, map: &str) -> Result<Feed<MapEvent>, BackendError>;

    /// Takes out fields whose TTL ran out, announcing each exactly once
    /// (whichever sidecars reap); returns how many. Run by the reaper.
    async fn reap(&self) -> Result<u64, BackendError>;
}
