//! The map primitive: named sets of fields every sidecar on the Redis
//! shares (a session, a conversation's metadata), each field with an
//! optional TTL of its own, the map with an optional fixed or sliding one;
//! atomic multi-field updates, increments, and a watch stream that
//! announces every change and every expiry.
//!
//! The reaper runs every `maps.reap_interval`, taking expired fields out
//! (they are invisible to reads from the moment they expire) and
//! announcing them.

pub mod config;
pub mod failover;
pub mod grpc;
pub mod http;
pub mod memory;
pub mod redis;
pub mod store;

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use store::{
    Change, Condition, MapEvent, MapPage, MapRead, MapStore, MapTtl, Number, Outcome, Refusal,
    Update, Updated,
};

use super::Common;
use crate::backend::Feed;
use crate::error::{Error, Result};
use crate::kit::Primitive;
use crate::plugins::config::PrimitiveName;
use crate::plugins::{Call, Caller, Operation};
use crate::telemetry::{self, Metrics};
use crate::validate::{self, Limits};
use config::MapsConfig;

/// Page size of a field listing when the caller gives none.
const DEFAULT_PAGE: usize = 100;

/// A change as a client asks for it (TTLs in ms, 0 for none).
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeRequest {
    Set {
        field: String,
        value: Bytes,
        ttl_ms: u64,
        condition: Condition,
    },
    Delete {
        field: String,
    },
    Increment {
        field: String,
        by: Number,
    },
}

/// The map's lifetime as a client asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TtlRequest {
    /// 0: leave the map's lifetime as it is (with `persist` false).
    pub ttl_ms: u64,
    /// With `ttl_ms`: restart it on every access.
    pub sliding: bool,
    /// Remove the map's lifetime.
    pub persist: bool,
}

/// An update as a client asks for it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UpdateRequest {
    pub changes: Vec<ChangeRequest>,
    pub if_version: Option<u64>,
    pub ttl: TtlRequest,
}

/// An applied update.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub version: u64,
    pub outcomes: Vec<Outcome>,
}

/// Maps.
pub struct Maps {
    store: Arc<dyn MapStore>,
    common: Common,
    limits: Limits,
    max_fields: usize,
    metrics: Arc<Metrics>,
}

impl Primitive for Maps {
    fn common(&self) -> &Common {
        &self.common
    }
}

impl Maps {
    /// Creates the primitive and starts its reaper (which stops when the
    /// primitive is dropped).
    pub fn new(
        store: Arc<dyn MapStore>,
        limits: Limits,
        config: &MapsConfig,
        metrics: Arc<Metrics>,
        common: Common,
    ) -> Arc<Self> {
        let maps = Arc::new(Maps {
            store,
            common,
            limits,
            max_fields: config.max_fields,
            metrics,
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(reaper(Arc::downgrade(&maps), config.reap_interval));
        }
        maps
    }

    fn call(&self, caller: &Caller, op: Operation, map: String, size: usize) -> Result<String> {
        let call = Call::new(PrimitiveName::Map, op, map);
        let call = if size > 0 {
            call.value_size(size)
        } else {
            call
        };
        self.authorize(caller, call)
    }

    /// An update for `caller`: authorized as a write (as an increment when
    /// it only increments, as a delete when it only deletes), then applied.
    pub async fn update_for(
        &self,
        caller: &Caller,
        map: String,
        req: UpdateRequest,
    ) -> Result<Applied> {
        let all =
            |f: fn(&ChangeRequest) -> bool| !req.changes.is_empty() && req.changes.iter().all(f);
        let op = if all(|c| matches!(c, ChangeRequest::Increment { .. })) {
            Operation::Increment
        } else if all(|c| matches!(c, ChangeRequest::Delete { .. })) {
            Operation::Delete
        } else {
            Operation::Write
        };
        let size = req
            .changes
            .iter()
            .map(|c| match c {
                ChangeRequest::Set { value, .. } => value.len(),
                _ => 0,
            })
            .sum();
        let map = self.call(caller, op, map, size)?;
        self.update(&map, req).await
    }

    /// Fields of `map` for `caller`, authorized as a read.
    pub async fn get_for(
        &self,
        caller: &Caller,
        map: String,
        fields: &[String],
    ) -> Result<MapRead> {
        let map = self.call(caller, Operation::Read, map, 0)?;
        self.get(&map, fields).await
    }

    /// A page of `map`'s fields for `caller`, authorized as a read.
    pub async fn scan_for(
        &self,
        caller: &Caller,
        map: String,
        cursor: &str,
        limit: usize,
    ) -> Result<MapPage> {
        let map = self.call(caller, Operation::Read, map, 0)?;
        self.scan(&map, cursor, limit).await
    }

    /// Deletes `map` for `caller`, authorized as a delete.
    pub async fn delete_for(&self, caller: &Caller, map: String) -> Result<bool> {
        let map = self.call(caller, Operation::Delete, map, 0)?;
        self.delete(&map).await
    }

    /// `map`'s events for `caller`, authorized as a watch.
    pub async fn watch_for(&self, caller: &Caller, map: String) -> Result<Feed<MapEvent>> {
        let map = self.call(caller, Operation::Watch, map, 0)?;
        self.watch(&map).await
    }

    /// Applies every change of `req` atomically, or none (the error says
    /// why).
    pub async fn update(&self, map: &str, req: UpdateRequest) -> Result<Applied> {
        let span = tracing::info_span!("outrigger.map.update", map, changes = req.changes.len());
        telemetry::observe(&self.metrics, "map", "update", span, async {
            validate::name("map name", map, &self.limits)?;
            let update = self.check(req)?;
            let changes = update.changes.clone();
            let if_version = update.if_version;
            match self.store.update(map, update).await? {
                Updated::Done { version, outcomes } => Ok(Applied { version, outcomes }),
                Updated::Refused { version, refusal } => Err(refused(
                    map,
                    version,
                    if_version,
                    &changes,
                    refusal,
                    self.max_fields,
                )),
            }
        })
        .await
    }

    pub async fn get(&self, map: &str, fields: &[String]) -> Result<MapRead> {
        let span = tracing::info_span!("outrigger.map.get", map, fields = fields.len());
        telemetry::observe(&self.metrics, "map", "get", span, async {
            validate::name("map name", map, &self.limits)?;
            if fields.is_empty() {
                return Err(Error::InvalidArgument(
                    "name at least one field (or list the map's fields)".into(),
                ));
            }
            validate::batch("fields", fields.len(), &self.limits)?;
            for field in fields {
                validate::name("field", field, &self.limits)?;
            }
            Ok(self.store.get(map, fields).await?)
        })
        .await
    }

    /// Up to `limit` fields (0: 100) from `cursor`.
    pub async fn scan(&self, map: &str, cursor: &str, limit: usize) -> Result<MapPage> {
        let span = tracing::info_span!("outrigger.map.scan", map, limit);
        telemetry::observe(&self.metrics, "map", "scan", span, async {
            validate::name("map name", map, &self.limits)?;
            let limit = if limit == 0 { DEFAULT_PAGE } else { limit };
            validate::batch("fields per page", limit, &self.limits)?;
            Ok(self.store.scan(map, cursor, limit).await?)
        })
        .await
    }

    /// Deletes the map; returns whether it existed.
    pub async fn delete(&self, map: &str) -> Result<bool> {
        let span = tracing::info_span!("outrigger.map.delete", map);
        telemetry::observe(&self.metrics, "map", "delete", span, async {
            validate::name("map name", map, &self.limits)?;
            Ok(self.store.delete(map).await?)
        })
        .await
    }

    /// Every event of `map` from now on.
    pub async fn watch(&self, map: &str) -> Result<Feed<MapEvent>> {
        let span = tracing::info_span!("outrigger.map.watch", map);
        telemetry::observe(&self.metrics, "map", "watch", span, async {
            validate::name("map name", map, &self.limits)?;
            Ok(self.store.watch(map).await?)
        })
        .await
    }

    /// Reaps expired fields once; returns how many. Run by the reaper;
    /// public for tests.
    pub async fn reap_once(&self) -> u64 {
        match self.store.reap().await {
            Ok(n) => n,
            Err(err) => {
                tracing::debug!(error = %err, "map reap failed");
                0
            }
        }
    }

    fn check(&self, req: UpdateRequest) -> Result<Update> {
        let invalid = |m: String| Err(Error::InvalidArgument(m));
        if req.changes.is_empty() {
            return invalid("an update needs at least one change".into());
        }
        validate::batch("changes", req.changes.len(), &self.limits)?;
        // Versions are microsecond clocks: one past i64 (the API's
        // documented range) is a mistake, not a stale version.
        if let Some(v) = req.if_version
            && v > i64::MAX as u64
        {
            return invalid(format!(
                "if_version {v} is out of range (at most {})",
                i64::MAX
            ));
        }
        let mut changes = Vec::with_capacity(req.changes.len());
        for change in req.changes {
            changes.push(match change {
                ChangeRequest::Set {
                    field,
                    value,
                    ttl_ms,
                    condition,
                } => {
                    validate::name("field", &field, &self.limits)?;
                    validate::value("value", value.len(), &self.limits)?;
                    let ttl = match ttl_ms {
                        0 => None,
                        ms => Some(validate::ttl_ms("ttl_ms", ms, &self.limits)?),
                    };
                    Change::Set {
                        field,
                        value,
                        ttl,
                        condition,
                    }
                }
                ChangeRequest::Delete { field } => {
                    validate::name("field", &field, &self.limits)?;
                    Change::Delete { field }
                }
                ChangeRequest::Increment { field, by } => {
                    validate::name("field", &field, &self.limits)?;
                    match by {
                        Number::Int(0) => return invalid("by must not be 0 (read a field with GET)".into()),
                        Number::Int(n) if n.unsigned_abs() > store::MAX_INTEGER as u64 => {
                            return invalid(format!(
                                "by must be within ±{} (2^53 - 1), the largest integer a field holds",
                                store::MAX_INTEGER
                            ));
                        }
                        Number::Float(x) if !x.is_finite() || x == 0.0 => {
                            return invalid("by must be a finite number other than 0".into());
                        }
                        _ => {}
                    }
                    Change::Increment { field, by }
                }
            });
        }
        let ttl = match req.ttl {
            TtlRequest {
                persist: true,
                ttl_ms: 0,
                ..
            } => Some(MapTtl::Persist),
            TtlRequest { persist: true, .. } => {
                return invalid(
                    "persist removes the map's lifetime: give it without ttl_ms".into(),
                );
            }
            TtlRequest {
                ttl_ms: 0,
                sliding: true,
                ..
            } => {
                return invalid("sliding needs the map's ttl_ms".into());
            }
            TtlRequest { ttl_ms: 0, .. } => None,
            TtlRequest {
                ttl_ms, sliding, ..
            } => {
                let ttl = validate::ttl_ms("map ttl_ms", ttl_ms, &self.limits)?;
                Some(if sliding {
                    MapTtl::Sliding(ttl)
                } else {
                    MapTtl::Fixed(ttl)
                })
            }
        };
        Ok(Update {
            changes,
            if_version: req.if_version,
            ttl,
            max_fields: self.max_fields,
        })
    }
}

/// The error for a refused update, naming the change that was refused.
fn refused(
    map: &str,
    version: u64,
    if_version: Option<u64>,
    changes: &[Change],
    refusal: Refusal,
    max_fields: usize,
) -> Error {
    let field = |index: usize| changes.get(index).map_or("", Change::field).to_string();
    let unchanged = "nothing of the update was applied";
    match refusal {
        Refusal::MapVersion => Error::PreconditionFailed(format!(
            "map {map:?} is at version {version}, not {}; {unchanged}",
            if_version.unwrap_or_default()
        )),
        Refusal::Condition { index } => {
            let condition = match changes.get(index) {
                Some(Change::Set { condition, .. }) => *condition,
                _ => Condition::None,
            };
            let what = match condition {
                Condition::IfAbsent => "is present".to_string(),
                Condition::IfPresent => "is absent".to_string(),
                Condition::IfVersion(v) => format!("is not at version {v}"),
                Condition::None => "does not meet its condition".to_string(),
            };
            Error::PreconditionFailed(format!(
                "field {:?} of map {map:?} {what}; {unchanged}",
                field(index)
            ))
        }
        Refusal::NotANumber { index } => Error::Conflict(format!(
            "field {:?} of map {map:?} does not hold a number; {unchanged}",
            field(index)
        )),
        Refusal::OutOfRange { index } => Error::Conflict(format!(
            "incrementing field {:?} of map {map:?} would take it past ±{} (integers) or out of a float's range; {unchanged}",
            field(index),
            store::MAX_INTEGER
        )),
        Refusal::TooManyFields => Error::TooLarge(format!(
            "map {map:?} would hold more than maps.max_fields ({max_fields}) fields; {unchanged}"
        )),
    }
}

async fn reaper(maps: Weak<Maps>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(maps) = maps.upgrade() else {
            return;
        };
        maps.reap_once().await;
    }
}
