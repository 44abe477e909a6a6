//! Recurring schedules: a named interval or cron expression that enqueues
//! a job into a queue at each tick, exactly once however many sidecars run.
//!
//! Every sidecar runs the same loop over the same stored schedules: for a
//! due tick it enqueues with the dedup id `schedule:<name>:<tick ms>`
//! (kept out of a second enqueue for [`dedup_window`]), then advances the
//! schedule's last tick. Whichever sidecar gets there first enqueues; the
//! others' enqueues are duplicates; a sidecar dying between the two steps
//! leaves the tick to the next one. A tick up to [`MISSED_AFTER`] late is
//! enqueued late; older ticks were missed (every sidecar was down, or
//! Redis was) and are enqueued once, as one job for the latest of them, or
//! skipped, as the schedule says.

use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How late a tick may be and still be enqueued as itself.
pub const MISSED_AFTER: Duration = Duration::from_secs(30);

/// Shortest interval.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// What to do with ticks missed while no sidecar could enqueue them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// One job for all of them (the latest), on return.
    #[default]
    EnqueueOnce,
    /// None.
    Skip,
}

/// When a schedule ticks.
#[derive(Debug, Clone)]
pub enum Every {
    /// Every this long from when the schedule was put.
    Interval(Duration),
    /// At the times a cron expression names, in UTC.
    Cron(Box<cron::Schedule>),
}

impl Every {
    /// A cron expression of 5 fields (minute to day of week), or of 6 or 7
    /// (with seconds first, years last), that fires again.
    pub fn cron(expr: &str) -> Result<Every, String> {
        let every = Self::parse_cron(expr)?;
        if let Every::Cron(schedule) = &every
            && schedule.upcoming(Utc).next().is_none()
        {
            return Err("the cron expression never fires again".into());
        }
        Ok(every)
    }

    /// `cron` without looking ahead: for expressions checked when put.
    fn parse_cron(expr: &str) -> Result<Every, String> {
        let fields = expr.split_whitespace().count();
        let full = match fields {
            5 => format!("0 {expr}"),
            6 | 7 => expr.to_string(),
            n => {
                return Err(format!(
                    "a cron expression has 5 fields (minute hour day-of-month month \
                     day-of-week), or 6 or 7 with seconds first and years last; this has {n}"
                ));
            }
        };
        let schedule = cron::Schedule::from_str(&full).map_err(|e| format!("{e}"))?;
        Ok(Every::Cron(Box::new(schedule)))
    }

    /// The first tick after `after` (Unix ms), for a schedule put at
    /// `anchor`.
    pub fn next_after(&self, anchor: u64, after: u64) -> Option<u64> {
        match self {
            Every::Interval(every) => {
                let every = ms(*every).max(1);
                let since = after.saturating_sub(anchor);
                Some(anchor + (since / every + 1) * every)
            }
            Every::Cron(schedule) => schedule.after(&datetime(after)).next().map(unix),
        }
    }

    /// The last tick at or before `at`, if it is after `after`.
    pub fn last_by(&self, anchor: u64, after: u64, at: u64) -> Option<u64> {
        let tick = match self {
            Every::Interval(every) => {
                let every = ms(*every).max(1);
                anchor + at.checked_sub(anchor)? / every * every
            }
            // `after(t).next_back()` is the last occurrence before t.
            Every::Cron(schedule) => schedule.after(&datetime(at + 1)).next_back().map(unix)?,
        };
        (tick > after).then_some(tick)
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn datetime(ms: u64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms as i64).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn unix(t: DateTime<Utc>) -> u64 {
    t.timestamp_millis().max(0) as u64
}

/// A schedule as stored (JSON in Redis).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub queue: String,
    #[serde(with = "base64_bytes")]
    pub payload: Bytes,
    /// Exactly one of `every_ms` and `cron`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    #[serde(default)]
    pub missed: Missed,
    /// For each job; the queue's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Unix ms: when it was put (intervals count from here).
    pub anchor_ms: u64,
}

impl Schedule {
    /// Its ticks; stored schedules were checked when put.
    pub fn every(&self) -> Option<Every> {
        match (&self.every_ms, &self.cron) {
            (Some(ms), None) => Some(Every::Interval(Duration::from_millis(*ms))),
            (None, Some(expr)) => Every::parse_cron(expr).ok(),
            _ => None,
        }
    }
}

/// A stored schedule and the last tick it enqueued (or skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub schedule: Schedule,
    /// Unix ms; the anchor until the first tick.
    pub last_tick_ms: u64,
}

/// The ticks due at `now` for a schedule whose last tick was `last`: at
/// most one missed tick (more than [`MISSED_AFTER`] late: the latest of
/// them, if the schedule enqueues missed ticks once), then every tick
/// since, oldest first; and the tick to advance to. At most `limit`
/// recent ticks per call (the rest are due at the next).
pub fn due_ticks(
    every: &Every,
    schedule: &Schedule,
    last: u64,
    now: u64,
    limit: usize,
) -> (Vec<u64>, Option<u64>) {
    let mut due = Vec::new();
    let mut advance = None;
    let missed_by = now.saturating_sub(ms(MISSED_AFTER));
    let mut from = last;
    if let Some(missed) = every.last_by(schedule.anchor_ms, last, missed_by) {
        if schedule.missed == Missed::EnqueueOnce {
            due.push(missed);
        }
        advance = Some(missed);
        from = missed;
    }
    while due.len() < limit {
        match every.next_after(schedule.anchor_ms, from) {
            Some(tick) if tick <= now => {
                due.push(tick);
                advance = Some(tick);
                from = tick;
            }
            _ => break,
        }
    }
    (due, advance)
}

/// How long a tick's dedup id keeps a second enqueue of it out: longer
/// than any sidecar holds a tick between reading it due and enqueuing it.
pub fn dedup_window(every: &Every) -> Duration {
    let period = match every {
        Every::Interval(d) => *d,
        Every::Cron(_) => Duration::from_secs(60),
    };
    (period * 2).max(Duration::from_secs(600))
}

/// The dedup id of one tick of `name`.
pub fn tick_id(name: &str, tick: u64) -> String {
    format!("schedule:{name}:{tick}")
}

mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD
            .decode(text)
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every(ms: u64, missed: Missed) -> (Every, Schedule) {
        let schedule = Schedule {
            queue: "q".into(),
            payload: Bytes::new(),
            every_ms: Some(ms),
            cron: None,
            missed,
            max_attempts: None,
            anchor_ms: 1_000_000,
        };
        (schedule.every().unwrap(), schedule)
    }

    #[test]
    fn interval_ticks_count_from_the_anchor() {
        let (e, s) = every(1000, Missed::EnqueueOnce);
        assert_eq!(e.next_after(s.anchor_ms, s.anchor_ms), Some(1_001_000));
        assert_eq!(e.next_after(s.anchor_ms, 1_001_500), Some(1_002_000));
        // Nothing due before the first tick; each tick once.
        assert_eq!(
            due_ticks(&e, &s, s.anchor_ms, 1_000_999, 10),
            (vec![], None)
        );
        let (due, to) = due_ticks(&e, &s, s.anchor_ms, 1_003_100, 10);
        assert_eq!(
            (due, to),
            (vec![1_001_000, 1_002_000, 1_003_000], Some(1_003_000))
        );
        assert_eq!(due_ticks(&e, &s, 1_003_000, 1_003_900, 10), (vec![], None));
    }

    #[test]
    fn ticks_missed_for_long_are_enqueued_once_or_skipped() {
        let missed_ms = ms(MISSED_AFTER);
        let now = 1_000_000 + 100_000 + 500;
        // Down for 100 s: the ticks more than 30 s late collapse into their
        // latest; the last 30 are each enqueued.
        let (e, s) = every(1000, Missed::EnqueueOnce);
        let (due, to) = due_ticks(&e, &s, s.anchor_ms, now, 100);
        let latest_missed = (now - missed_ms) / 1000 * 1000;
        assert_eq!(due[0], latest_missed);
        assert_eq!(due.len(), 1 + 30, "{due:?}");
        assert_eq!(to, Some(1_100_000));
        let (e, s) = every(1000, Missed::Skip);
        let (due, to) = due_ticks(&e, &s, s.anchor_ms, now, 100);
        assert_eq!(due.len(), 30, "{due:?}");
        assert!(due[0] > latest_missed);
        assert_eq!(to, Some(1_100_000));
        // A limit leaves the rest for the next call.
        let (due, to) = due_ticks(&e, &s, s.anchor_ms, now, 5);
        assert_eq!((due.len(), to), (5, Some(due[4])));
    }

    #[test]
    fn cron_expressions_take_5_to_7_fields() {
        let e = Every::cron("*/5 * * * *").unwrap();
        // 2026-12-03T00:00:00Z.
        let midnight = 1_796_256_000_000;
        assert_eq!(e.next_after(0, midnight), Some(midnight + 5 * 60_000));
        assert_eq!(
            e.last_by(0, 0, midnight + 7 * 60_000),
            Some(midnight + 5 * 60_000)
        );
        let secs = Every::cron("*/10 * * * * *").unwrap();
        assert_eq!(secs.next_after(0, midnight), Some(midnight + 10_000));
        assert!(Every::cron("* * *").unwrap_err().contains("this has 3"));
        assert!(Every::cron("61 * * * *").is_err());
    }
}
