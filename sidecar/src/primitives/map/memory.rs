//! Maps in memory, on this sidecar's monotonic clock: a sorted map of
//! fields per map, an index of field expiries for the reaper, and a
//! broadcast channel per watched map.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::store::{
    Change, Condition, Cursor, FieldChange, FieldValue, MapEvent, MapEventKind, MapPage, MapRead,
    MapStore, MapTtl, Number, Outcome, Refusal, Update, Updated,
};
use crate::backend::{BackendError, Feed, feed_from};

struct Field {
    value: Bytes,
    version: u64,
    expires_at: Option<Instant>,
}

impl Field {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }

    fn read(&self, now: Instant) -> FieldValue {
        FieldValue {
            value: self.value.clone(),
            version: self.version,
            ttl: self.expires_at.map(|at| at - now),
        }
    }
}

#[derive(Default)]
struct Map {
    fields: BTreeMap<String, Field>,
    version: u64,
    /// The lifetime an access restarts (a sliding map).
    sliding: Option<Duration>,
    expires_at: Option<Instant>,
}

impl Map {
    fn touch(&mut self, now: Instant) {
        if let Some(ttl) = self.sliding {
            self.expires_at = Some(now + ttl);
        }
    }

    fn ttl(&self, now: Instant) -> Option<Duration> {
        self.expires_at.map(|at| at - now)
    }

    /// 0 when it holds no fields (it does not exist).
    fn version(&self) -> u64 {
        if self.fields.is_empty() {
            0
        } else {
            self.version
        }
    }
}

#[derive(Default)]
struct Inner {
    maps: HashMap<String, Map>,
    /// (expiry, map, field) of every field with a TTL; entries whose field
    /// was since rewritten are skipped when reaped.
    expiries: BTreeSet<(Instant, String, String)>,
    /// The last version handed out, to any map: versions never repeat,
    /// even across a map's deletion.
    last_version: u64,
    /// map -> its watchers; dropped once nobody listens.
    events: HashMap<String, broadcast::Sender<MapEvent>>,
}

impl Inner {
    fn next_version(&mut self) -> u64 {
        self.last_version = crate::backend::memory::next_after(self.last_version);
        self.last_version
    }

    /// The map, unless it expired (then it is dropped, silently, as Redis
    /// drops an expired key).
    fn live_map(&mut self, name: &str, now: Instant) -> Option<&mut Map> {
        if self
            .maps
            .get(name)
            .is_some_and(|m| m.expires_at.is_some_and(|at| at <= now))
        {
            self.maps.remove(name);
        }
        self.maps.get_mut(name)
    }

    fn emit(&mut self, event: MapEvent) {
        if let Some(tx) = self.events.get(&event.map)
            && tx.send(event.clone()).is_err()
        {
            self.events.remove(&event.map);
        }
    }

    /// Takes out the fields of `name` whose TTL ran out by `now`,
    /// announcing them in one event; returns how many.
    fn reap_map(&mut self, name: &str, now: Instant) -> u64 {
        let Some(map) = self.live_map(name, now) else {
            return 0;
        };
        let gone: Vec<String> = map
            .fields
            .iter()
            .filter(|(_, f)| !f.live(now))
            .map(|(name, _)| name.clone())
            .collect();
        if gone.is_empty() {
            return 0;
        }
        for field in &gone {
            map.fields.remove(field);
        }
        let version = map.version;
        if map.fields.is_empty() {
            self.maps.remove(name);
        }
        let n = gone.len() as u64;
        self.emit(MapEvent {
            map: name.to_string(),
            version,
            kind: MapEventKind::Expired,
            changes: gone
                .into_iter()
                .map(|f| (f, FieldChange::Expired))
                .collect(),
        });
        n
    }
}

/// Maps in local memory.
pub struct MemoryMaps {
    /// Short, synchronous critical sections: a plain mutex.
    inner: Mutex<Inner>,
    /// Events a watcher may fall behind by before it is told it lagged.
    buffer: usize,
}

impl MemoryMaps {
    pub fn new(buffer: usize) -> Self {
        MemoryMaps {
            inner: Mutex::new(Inner::default()),
            buffer,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets every map (what was kept while Redis was down).
    pub fn clear(&self) -> usize {
        let mut inner = self.lock();
        inner.expiries.clear();
        let n = inner.maps.len();
        inner.maps.clear();
        n
    }
}

/// A field's state while an update is planned: `None` when absent.
type Staged = Option<(Bytes, Option<Instant>)>;

/// A planned update: each touched field's final state, and each change's
/// outcome.
struct Plan {
    fields: Vec<(String, Staged)>,
    outcomes: Vec<Outcome>,
}

/// Checks every change of `update` against `map` (as of `now`, expired
/// fields absent) and the changes before it; the fields' final states, or
/// why the update is refused. The Redis script (`update.lua`) mirrors it.
fn plan(map: Option<&Map>, update: &Update, now: Instant) -> Result<Plan, Refusal> {
    let live = |field: &str| -> Staged {
        map.and_then(|m| m.fields.get(field))
            .filter(|f| f.live(now))
            .map(|f| (f.value.clone(), f.expires_at))
    };
    // In the order the update first touches them (events list them so).
    let mut order: Vec<String> = vec![];
    let mut staged: HashMap<String, Staged> = HashMap::new();
    let mut outcomes = Vec::with_capacity(update.changes.len());
    for (index, change) in update.changes.iter().enumerate() {
        let field = change.field();
        let current = match staged.get(field) {
            Some(s) => s.clone(),
            None => live(field),
        };
        let (next, outcome) = match change {
            Change::Set {
                value,
                ttl,
                condition,
                ..
            } => {
                let holds = match condition {
                    Condition::None => true,
                    Condition::IfAbsent => current.is_none(),
                    Condition::IfPresent => current.is_some(),
                    Condition::IfVersion(v) => {
                        // A field written earlier in this update has the
                        // update's version, which no caller can know yet.
                        !staged.contains_key(field)
                            && map
                                .and_then(|m| m.fields.get(field))
                                .is_some_and(|f| f.live(now) && f.version == *v)
                    }
                };
                if !holds {
                    return Err(Refusal::Condition { index });
                }
                (Some((value.clone(), ttl.map(|t| now + t))), Outcome::Set)
            }
            Change::Delete { .. } => (
                None,
                Outcome::Deleted {
                    existed: current.is_some(),
                },
            ),
            Change::Increment { by, .. } => {
                let n = Number::parse(current.as_ref().map(|(v, _)| v.as_ref()))
                    .ok_or(Refusal::NotANumber { index })?;
                let sum = n.plus(*by).ok_or(Refusal::OutOfRange { index })?;
                let expires = current.and_then(|(_, at)| at);
                // As stored, and read back: a float sum that is whole reads
                // as an integer, as it does from Redis.
                let text = sum.text();
                let stored = Number::parse(Some(text.as_bytes())).unwrap_or(sum);
                (
                    Some((Bytes::from(text), expires)),
                    Outcome::Incremented(stored),
                )
            }
        };
        if staged.insert(field.to_string(), next).is_none() {
            order.push(field.to_string());
        }
        outcomes.push(outcome);
    }
    let live_now = map.map_or(0, |m| m.fields.values().filter(|f| f.live(now)).count());
    let mut count = live_now as i64;
    for (field, state) in &staged {
        match (live(field).is_some(), state.is_some()) {
            (false, true) => count += 1,
            (true, false) => count -= 1,
            _ => {}
        }
    }
    if count > update.max_fields as i64 {
        return Err(Refusal::TooManyFields);
    }
    Ok(Plan {
        fields: order
            .into_iter()
            .map(|field| {
                let state = staged
                    .remove(&field)
                    .expect("every touched field is staged");
                (field, state)
            })
            .collect(),
        outcomes,
    })
}

#[async_trait]
impl MapStore for MemoryMaps {
    async fn update(&self, name: &str, update: Update) -> Result<Updated, BackendError> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.reap_map(name, now);
        let current = inner.live_map(name, now).map_or(0, |m| m.version());
        if update.if_version.is_some_and(|v| v != current) {
            return Ok(Updated::Refused {
                version: current,
                refusal: Refusal::MapVersion,
            });
        }
        let Plan {
            fields: staged,
            outcomes,
        } = match plan(inner.maps.get(name), &update, now) {
            Ok(planned) => planned,
            Err(refusal) => {
                return Ok(Updated::Refused {
                    version: current,
                    refusal,
                });
            }
        };
        let version = inner.next_version();
        let mut changes = vec![];
        let mut expiries = vec![];
        let map = inner.maps.entry(name.to_string()).or_default();
        for (field, state) in staged {
            match state {
                Some((value, expires_at)) => {
                    if let Some(at) = expires_at {
                        expiries.push((at, name.to_string(), field.clone()));
                    }
                    changes.push((field.clone(), FieldChange::Set(value.clone())));
                    map.fields.insert(
                        field,
                        Field {
                            value,
                            version,
                            expires_at,
                        },
                    );
                }
                None => {
                    if map.fields.remove(&field).is_some() {
                        changes.push((field, FieldChange::Deleted));
                    }
                }
            }
        }
        map.version = version;
        match update.ttl {
            None => {}
            Some(MapTtl::Fixed(ttl)) => {
                map.sliding = None;
                map.expires_at = Some(now + ttl);
            }
            Some(MapTtl::Sliding(ttl)) => map.sliding = Some(ttl),
            Some(MapTtl::Persist) => {
                map.sliding = None;
                map.expires_at = None;
            }
        }
        map.touch(now);
        if map.fields.is_empty() {
            inner.maps.remove(name);
        }
        inner.expiries.extend(expiries);
        if !changes.is_empty() {
            inner.emit(MapEvent {
                map: name.to_string(),
                version,
                kind: MapEventKind::Updated,
                changes,
            });
        }
        Ok(Updated::Done { version, outcomes })
    }

    async fn get(&self, name: &str, fields: &[String]) -> Result<MapRead, BackendError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(map) = inner.live_map(name, now) else {
            return Ok(MapRead {
                fields: vec![None; fields.len()],
                ..MapRead::default()
            });
        };
        map.touch(now);
        Ok(MapRead {
            version: map.version(),
            ttl: map.ttl(now),
            fields: fields
                .iter()
                .map(|f| {
                    map.fields
                        .get(f)
                        .filter(|f| f.live(now))
                        .map(|f| f.read(now))
                })
                .collect(),
        })
    }

    async fn scan(&self, name: &str, cursor: &str, limit: usize) -> Result<MapPage, BackendError> {
        let after = Cursor::parse(cursor)?.after;
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(map) = inner.live_map(name, now) else {
            return Ok(MapPage::default());
        };
        map.touch(now);
        let range = match &after {
            None => map.fields.range::<String, _>(..),
            Some(after) => map
                .fields
                .range::<String, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
        };
        let mut fields = vec![];
        let mut more = false;
        for (field, value) in range.filter(|(_, f)| f.live(now)) {
            if fields.len() == limit {
                more = true;
                break;
            }
            fields.push((field.clone(), value.read(now)));
        }
        let next_cursor = match fields.last() {
            Some((last, _)) if more => Some(
                Cursor {
                    scan: 0,
                    after: Some(last.clone()),
                }
                .text(),
            ),
            _ => None,
        };
        Ok(MapPage {
            version: map.version(),
            ttl: map.ttl(now),
            fields,
            next_cursor,
        })
    }

    async fn delete(&self, name: &str) -> Result<bool, BackendError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(map) = inner.live_map(name, now) else {
            return Ok(false);
        };
        let version = map.version;
        inner.maps.remove(name);
        inner.emit(MapEvent {
            map: name.to_string(),
            version,
            kind: MapEventKind::Deleted,
            changes: vec![],
        });
        Ok(true)
    }

    async fn watch(&self, name: &str) -> Result<Feed<MapEvent>, BackendError> {
        let mut inner = self.lock();
        let rx = inner
            .events
            .entry(name.to_string())
            .or_insert_with(|| broadcast::channel(self.buffer).0)
            .subscribe();
        Ok(feed_from(vec![rx], ()))
    }

    async fn reap(&self) -> Result<u64, BackendError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let mut due = BTreeSet::new();
        while let Some(first) = inner.expiries.first()
            && first.0 <= now
        {
            let (_, map, _) = inner.expiries.pop_first().expect("checked above");
            due.insert(map);
        }
        Ok(due.iter().map(|map| inner.reap_map(map, now)).sum())
    }
}
