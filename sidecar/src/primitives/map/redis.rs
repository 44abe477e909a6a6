//! Maps on Redis. A map is three keys under its name's hash tag (one slot,
//! so every script is atomic on Cluster too): its fields (`ns:map:{m}`, a
//! hash of `version:expires:value`), their expiries (`ns:map:{m}:x`, a
//! sorted set) and its own state (`ns:map:{m}:s`: last version, lifetime).
//! The fields key is also the map's event channel; events go out from the
//! scripts that make the changes, so every watcher sees each change once.
//!
//! Per-field expiry works on every Redis 7 (`HPEXPIRE` arrives only in
//! 7.4): reads treat a field past its expiry as absent, and reapers take it
//! out. Which maps have fields to reap is kept in an index every sidecar
//! shares (`ns:{mapx}`, in its own slot): a write that gives a field a TTL
//! marks the map in it, and each sidecar's reaper claims the maps due (so
//! two sidecars rarely reap one map; when they do, the reap script still
//! announces each expiry once), reaps them and settles their next due time
//! (see `index.lua` for why no expiry is ever missed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use redis::{Script, Value};

use super::store::{
    Change, Condition, Cursor, FieldChange, FieldValue, MAX_INTEGER, MapEvent, MapEventKind,
    MapPage, MapRead, MapStore, MapTtl, Number, Outcome, Refusal, Update, Updated,
};
use crate::backend::redis::RedisStore;
use crate::backend::redis::subscriber::Topic;
use crate::backend::{BackendError, Feed, FeedItem};

/// Expired fields one script takes out at most.
const REAP_BATCH: usize = 1000;

/// Maps one reaper claims per round.
const CLAIM_BATCH: usize = 100;

/// How long a claimed map is left to its reaper before another may take
/// it (a reaper that died mid-round delays its maps by this much).
const CLAIM_LEASE: Duration = Duration::from_secs(30);

macro_rules! map_script {
    ($file:literal) => {
        Script::new(concat!(include_str!("lib.lua"), include_str!($file)))
    };
}

/// Maps in Redis.
pub struct RedisMaps {
    redis: Arc<RedisStore>,
    update: Script,
    get: Script,
    scan: Script,
    delete: Script,
    reap: Script,
    index: Script,
    /// This sidecar's reaper claims, told apart from every other's.
    claimant: String,
    claims: AtomicU64,
    /// Marks the index did not take (Redis went away between a write and
    /// its mark): map -> due, retried by the next reap.
    unmarked: Mutex<HashMap<String, f64>>,
}

impl RedisMaps {
    pub fn new(redis: Arc<RedisStore>) -> Self {
        RedisMaps {
            redis,
            update: map_script!("update.lua"),
            get: map_script!("get.lua"),
            scan: map_script!("scan.lua"),
            delete: map_script!("delete.lua"),
            reap: map_script!("reap.lua"),
            index: Script::new(include_str!("index.lua")),
            claimant: format!("{:016x}", rand::random::<u64>()),
            claims: AtomicU64::new(0),
            unmarked: Mutex::new(HashMap::new()),
        }
    }

    fn fields_key(&self, map: &str) -> String {
        format!("{}:map:{{{map}}}", self.redis.namespace)
    }

    /// A script call on `map`'s three keys, its channel as `ARGV[1]`.
    fn on_map<'a>(&self, script: &'a Script, map: &str) -> redis::ScriptInvocation<'a> {
        let fields = self.fields_key(map);
        let mut call = script.key(&fields);
        call.key(format!("{fields}:x"))
            .key(format!("{fields}:s"))
            .arg(fields);
        call
    }

    fn on_index(&self) -> redis::ScriptInvocation<'_> {
        let index = format!("{}:{{mapx}}", self.redis.namespace);
        let mut call = self.index.key(&index);
        call.key(format!("{index}:claims"));
        call
    }

    async fn mark(&self, map: &str, due: f64) -> Result<(), BackendError> {
        let mut call = self.on_index();
        call.arg("mark").arg(map).arg(due);
        let mut conn = self.redis.conn();
        self.redis
            .call(call.invoke_async::<i64>(&mut conn))
            .await
            .map(drop)
    }

    /// Reaps one claimed map and settles its place in the index.
    async fn reap_claimed(&self, map: &str, token: &str) -> Result<u64, BackendError> {
        let mut call = self.on_map(&self.reap, map);
        call.arg(REAP_BATCH);
        let mut conn = self.redis.conn();
        let (reaped, next): (u64, String) = self.redis.call(call.invoke_async(&mut conn)).await?;
        let mut settle = self.on_index();
        settle.arg("settle").arg(map).arg(token).arg(next);
        self.redis
            .call(settle.invoke_async::<i64>(&mut conn))
            .await?;
        Ok(reaped)
    }
}

fn protocol(what: &str) -> BackendError {
    BackendError::Protocol(format!("map {what} reply"))
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A PTTL: -1 (no expiry) and -2 (no key) are `None`.
fn pttl(v: &Value) -> Option<Option<Duration>> {
    let ms = int(v)?;
    Some((ms >= 0).then(|| Duration::from_millis(ms as u64)))
}

/// (value, version, ttl ms) as the scripts return a field; `None` when
/// the three are nil.
fn field(value: Value, version: &Value, ttl: &Value) -> Option<Option<FieldValue>> {
    match value {
        Value::Nil => Some(None),
        Value::BulkString(value) => Some(Some(FieldValue {
            value: Bytes::from(value),
            version: int(version)? as u64,
            ttl: pttl(ttl)?,
        })),
        _ => None,
    }
}

/// `<kind> <version> <n>\n` then `<op> <field len> <value len>\n<field><value>`
/// per change, as `lib.lua` publishes.
fn parse_event(map: &str, payload: &[u8]) -> Option<MapEvent> {
    fn line<'a>(rest: &mut &'a [u8]) -> Option<Vec<&'a str>> {
        let end = rest.iter().position(|b| *b == b'\n')?;
        let words = std::str::from_utf8(&rest[..end]).ok()?.split(' ').collect();
        *rest = &rest[end + 1..];
        Some(words)
    }
    let mut rest = payload;
    let head = line(&mut rest)?;
    let [kind, version, n] = head[..] else {
        return None;
    };
    let kind = match kind {
        "u" => MapEventKind::Updated,
        "x" => MapEventKind::Expired,
        "d" => MapEventKind::Deleted,
        _ => return None,
    };
    let n: usize = n.parse().ok()?;
    let mut changes = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let words = line(&mut rest)?;
        let [op, flen, vlen] = words[..] else {
            return None;
        };
        let (flen, vlen): (usize, usize) = (flen.parse().ok()?, vlen.parse().ok()?);
        if rest.len() < flen + vlen {
            return None;
        }
        let field = String::from_utf8(rest[..flen].to_vec()).ok()?;
        let value = Bytes::copy_from_slice(&rest[flen..flen + vlen]);
        rest = &rest[flen + vlen..];
        let change = match op {
            "s" => FieldChange::Set(value),
            "d" => FieldChange::Deleted,
            "x" => FieldChange::Expired,
            _ => return None,
        };
        changes.push((field, change));
    }
    Some(MapEvent {
        map: map.to_string(),
        version: version.parse().ok()?,
        kind,
        changes,
    })
}

#[async_trait]
impl MapStore for RedisMaps {
    async fn update(&self, map: &str, update: Update) -> Result<Updated, BackendError> {
        let mut call = self.on_map(&self.update, map);
        call.arg(update.if_version.map(|v| v.to_string()).unwrap_or_default())
            .arg(match update.ttl {
                None => String::new(),
                Some(MapTtl::Fixed(t)) => format!("f{}", t.as_millis().max(1)),
                Some(MapTtl::Sliding(t)) => format!("s{}", t.as_millis().max(1)),
                Some(MapTtl::Persist) => "p".into(),
            })
            .arg(update.max_fields)
            .arg(MAX_INTEGER)
            .arg(REAP_BATCH);
        let mut expiring = false;
        for change in &update.changes {
            match change {
                Change::Set {
                    field,
                    value,
                    ttl,
                    condition,
                } => {
                    expiring |= ttl.is_some();
                    call.arg("s")
                        .arg(field)
                        .arg(value.as_ref())
                        .arg(ttl.map_or(0, |t| t.as_millis().max(1) as u64))
                        .arg(match condition {
                            Condition::None => String::new(),
                            Condition::IfAbsent => "a".into(),
                            Condition::IfPresent => "p".into(),
                            Condition::IfVersion(v) => v.to_string(),
                        });
                }
                Change::Delete { field } => {
                    call.arg("d").arg(field).arg("").arg(0).arg("");
                }
                Change::Increment { field, by } => {
                    let op = match by {
                        Number::Int(_) => "i",
                        Number::Float(_) => "f",
                    };
                    call.arg(op).arg(field).arg(by.text()).arg(0).arg("");
                }
            }
        }
        let mut conn = self.redis.conn();
        let reply: Vec<Value> = self.redis.call(call.invoke_async(&mut conn)).await?;
        let bad = || protocol("update");
        let applied = reply.first().and_then(int).ok_or_else(bad)?;
        let version = reply.get(1).and_then(int).ok_or_else(bad)? as u64;
        if applied == 0 {
            let index = reply.get(3).and_then(int).ok_or_else(bad)? as usize;
            let refusal = match reply.get(2).and_then(text).as_deref() {
                Some("version") => Refusal::MapVersion,
                Some("condition") => Refusal::Condition { index },
                Some("nan") => Refusal::NotANumber { index },
                Some("range") => Refusal::OutOfRange { index },
                Some("fields") => Refusal::TooManyFields,
                _ => return Err(bad()),
            };
            return Ok(Updated::Refused { version, refusal });
        }
        let next = reply.get(2).and_then(text).ok_or_else(bad)?;
        let outcomes = update
            .changes
            .iter()
            .zip(reply.iter().skip(3))
            .map(|(change, outcome)| {
                Some(match change {
                    Change::Set { .. } => Outcome::Set,
                    Change::Delete { .. } => Outcome::Deleted {
                        existed: int(outcome)? == 1,
                    },
                    Change::Increment { .. } => {
                        Outcome::Incremented(Number::parse(Some(text(outcome)?.as_bytes()))?)
                    }
                })
            })
            .collect::<Option<Vec<_>>>()
            .filter(|o| o.len() == update.changes.len())
            .ok_or_else(bad)?;
        if expiring && let Ok(due) = next.parse::<f64>() {
            // The write is done whatever happens here: a mark Redis does
            // not take is kept and retried by the next reap.
            if let Err(err) = self.mark(map, due).await {
                tracing::debug!(map, error = %err, "could not mark a map for reaping; retried later");
                let mut unmarked = self.unmarked.lock().unwrap_or_else(|e| e.into_inner());
                let at = unmarked.entry(map.to_string()).or_insert(due);
                *at = at.min(due);
            }
        }
        Ok(Updated::Done { version, outcomes })
    }

    async fn get(&self, map: &str, fields: &[String]) -> Result<MapRead, BackendError> {
        let mut call = self.on_map(&self.get, map);
        for field in fields {
            call.arg(field);
        }
        let mut conn = self.redis.conn();
        let reply: Vec<Value> = self.redis.call(call.invoke_async(&mut conn)).await?;
        let bad = || protocol("get");
        let mut items = reply.into_iter();
        let version = items.next().as_ref().and_then(int).ok_or_else(bad)? as u64;
        let ttl = items.next().as_ref().and_then(pttl).ok_or_else(bad)?;
        let mut read = Vec::with_capacity(fields.len());
        while let (Some(value), Some(version), Some(ttl)) =
            (items.next(), items.next(), items.next())
        {
            read.push(field(value, &version, &ttl).ok_or_else(bad)?);
        }
        if read.len() != fields.len() {
            return Err(bad());
        }
        Ok(MapRead {
            version,
            ttl,
            fields: read,
        })
    }

    async fn scan(&self, map: &str, cursor: &str, limit: usize) -> Result<MapPage, BackendError> {
        let cursor = Cursor::parse(cursor)?;
        let mut call = self.on_map(&self.scan, map);
        call.arg(cursor.scan)
            .arg(cursor.after.unwrap_or_default())
            .arg(limit);
        let mut conn = self.redis.conn();
        let reply: Vec<Value> = self.redis.call(call.invoke_async(&mut conn)).await?;
        let bad = || protocol("scan");
        let mut items = reply.into_iter();
        let (Some(scan), Some(after), Some(version), Some(ttl)) =
            (items.next(), items.next(), items.next(), items.next())
        else {
            return Err(bad());
        };
        let scan = text(&scan).ok_or_else(bad)?;
        let next_cursor = if scan.is_empty() {
            None
        } else {
            Some(
                Cursor {
                    scan: scan.parse().map_err(|_| bad())?,
                    after: text(&after).filter(|a| !a.is_empty()),
                }
                .text(),
            )
        };
        let mut fields = vec![];
        while let (Some(name), Some(value), Some(version), Some(ttl)) =
            (items.next(), items.next(), items.next(), items.next())
        {
            let name = text(&name).ok_or_else(bad)?;
            let value = field(value, &version, &ttl).flatten().ok_or_else(bad)?;
            fields.push((name, value));
        }
        Ok(MapPage {
            version: int(&version).ok_or_else(bad)? as u64,
            ttl: pttl(&ttl).ok_or_else(bad)?,
            fields,
            next_cursor,
        })
    }

    async fn delete(&self, map: &str) -> Result<bool, BackendError> {
        let call = self.on_map(&self.delete, map);
        let mut conn = self.redis.conn();
        let existed: i64 = self.redis.call(call.invoke_async(&mut conn)).await?;
        Ok(existed == 1)
    }

    async fn watch(&self, map: &str) -> Result<Feed<MapEvent>, BackendError> {
        let (rx, guard) = self
            .redis
            .subscriber
            .listen(Topic::Channel(self.fields_key(map)), true)
            .await?
            .into_parts();
        let map = map.to_string();
        let feed = crate::backend::feed_from(vec![rx], guard).filter_map(move |item| {
            let event = match item {
                FeedItem::Item(d) => parse_event(&map, &d.payload).map(FeedItem::Item),
                FeedItem::Lagged(n) => Some(FeedItem::Lagged(n)),
            };
            futures::future::ready(event)
        });
        Ok(Box::pin(feed))
    }

    async fn reap(&self) -> Result<u64, BackendError> {
        let unmarked: Vec<(String, f64)> = self
            .unmarked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (i, (map, due)) in unmarked.iter().enumerate() {
            if let Err(err) = self.mark(map, *due).await {
                let mut left = self.unmarked.lock().unwrap_or_else(|e| e.into_inner());
                left.extend(unmarked[i..].iter().cloned());
                return Err(err);
            }
        }
        let token = format!(
            "{}:{}",
            self.claimant,
            self.claims.fetch_add(1, Ordering::Relaxed)
        );
        let mut claim = self.on_index();
        claim
            .arg("claim")
            .arg(CLAIM_LEASE.as_millis() as u64)
            .arg(CLAIM_BATCH)
            .arg(&token);
        let mut conn = self.redis.conn();
        let due: Vec<String> = self.redis.call(claim.invoke_async(&mut conn)).await?;
        let reaps = due.iter().map(|map| self.reap_claimed(map, &token));
        let mut total = 0;
        for (map, result) in due.iter().zip(futures::future::join_all(reaps).await) {
            match result {
                Ok(n) => total += n,
                // Claimed but not reaped: due again when the claim lapses.
                Err(err) => tracing::debug!(map, error = %err, "map reap failed"),
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_as_the_scripts_publish_them() {
        // A value may hold anything, newlines included.
        let payload = b"u 17 2\ns 1 4\nab\ncdd 2 0\nxy";
        let event = parse_event("m", payload).unwrap();
        assert_eq!(event.kind, MapEventKind::Updated);
        assert_eq!(event.version, 17);
        assert_eq!(
            event.changes,
            vec![
                (
                    "a".to_string(),
                    FieldChange::Set(Bytes::from_static(b"b\ncd"))
                ),
                ("xy".to_string(), FieldChange::Deleted),
            ]
        );
        assert_eq!(
            parse_event("m", b"d 5 0\n").unwrap().kind,
            MapEventKind::Deleted
        );
        assert!(parse_event("m", b"u 1 1\ns 5 0\nab").is_none(), "truncated");
        assert!(parse_event("m", b"q 1 0\n").is_none(), "unknown kind");
    }
}
