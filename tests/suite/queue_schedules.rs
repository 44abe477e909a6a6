//! Queue schedules: their calls on every topology, ticks missed while no
//! sidecar ran, and two sidecars sharing one schedule (each tick enqueued
//! once).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use outrigger::app::App;
use outrigger::config::Config;
use outrigger::error::Error;
use outrigger::primitives::queue::schedule::{Missed, Schedule};
use outrigger::primitives::queue::{ClaimRequest, ScheduleRequest};
use outrigger_tests::{AppOn, RedisServer, Topology, conformance, eventually, sidecar, unique};
use serde_json::{Value, json};

async fn setup(topology: Topology) -> AppOn {
    topology.app(&Config::default(), "schedules").await
}

conformance!(
    setup;
    [
        on_memory: Memory,
        on_redis: Redis,
        on_cluster: Cluster,
    ];
    cases {
        an_interval_schedule_enqueues_its_ticks,
        bad_schedules_are_rejected,
    }
);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn every(queue: &str, ms: u64) -> ScheduleRequest {
    ScheduleRequest {
        queue: queue.into(),
        payload: Bytes::from_static(b"tick"),
        every_ms: Some(ms),
        ..ScheduleRequest::default()
    }
}

async fn claim_all(app: &App, queue: &str, wait_ms: u64) -> Vec<Bytes> {
    let req = ClaimRequest {
        ack: Vec::new(),
        max: 100,
        visibility_ms: Some(60_000),
        wait_ms,
    };
    let jobs = app.queues.claim(queue, req).await.unwrap();
    jobs.into_iter().map(|j| j.payload).collect()
}

mod cases {
    use super::*;

    pub async fn an_interval_schedule_enqueues_its_ticks(app: &App) {
        let q = &app.queues;
        let caller = Default::default();
        let put = q
            .put_schedule_for(&caller, "heartbeat".into(), every("beats", 1000))
            .await
            .unwrap();
        assert_eq!(put.next_tick_ms, Some(put.stored.schedule.anchor_ms + 1000));
        let got = claim_all(app, "beats", 10_000).await;
        assert!(
            !got.is_empty() && got.iter().all(|p| p.as_ref() == b"tick"),
            "{got:?}"
        );
        // The tick is advanced past right after its job is enqueued.
        let anchor = put.stored.schedule.anchor_ms;
        eventually(Duration::from_secs(5), "the last tick to move", || {
            let q = q.clone();
            async move {
                let caller = Default::default();
                let read = q.get_schedule_for(&caller, "heartbeat".into()).await.ok()?;
                (read.stored.last_tick_ms > anchor).then_some(())
            }
        })
        .await;
        let listed = q.list_schedules_for(&caller, None, None).await.unwrap();
        assert_eq!(
            listed.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["heartbeat"]
        );
        assert!(
            q.delete_schedule_for(&caller, "heartbeat".into())
                .await
                .unwrap()
        );
        assert!(
            !q.delete_schedule_for(&caller, "heartbeat".into())
                .await
                .unwrap()
        );
        let err = q
            .get_schedule_for(&caller, "heartbeat".into())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
        assert!(
            q.list_schedules_for(&caller, None, None)
                .await
                .unwrap()
                .is_empty()
        );
    }

    pub async fn bad_schedules_are_rejected(app: &App) {
        let q = &app.queues;
        let caller = Default::default();
        let put = |req: ScheduleRequest| q.put_schedule_for(&caller, "s".into(), req);
        let says = |r: Result<_, Error>, what: &str| match r {
            Err(Error::InvalidArgument(m)) if m.contains(what) => {}
            other => panic!("expected invalid_argument saying {what:?}, got {other:?}"),
        };
        says(put(every("q", 10)).await, "every_ms must be at least 1000");
        let both = ScheduleRequest {
            cron: Some("* * * * *".into()),
            ..every("q", 1000)
        };
        says(put(both).await, "one of them");
        let neither = ScheduleRequest {
            every_ms: None,
            ..every("q", 1000)
        };
        says(put(neither).await, "one of them");
        for bad in ["* * *", "61 * * * *", "nonsense here and there too"] {
            let cron = ScheduleRequest {
                every_ms: None,
                cron: Some(bad.into()),
                ..every("q", 1000)
            };
            says(put(cron).await, "cron");
        }
        says(put(every("", 1000)).await, "queue name");
        let zero = ScheduleRequest {
            max_attempts: Some(0),
            ..every("q", 1000)
        };
        says(put(zero).await, "max_attempts");
        assert!(
            q.list_schedules_for(&caller, None, None)
                .await
                .unwrap()
                .is_empty()
        );
        // A good cron expression is taken.
        let cron = ScheduleRequest {
            every_ms: None,
            cron: Some("0 3 * * *".into()),
            ..every("q", 1000)
        };
        let put = put(cron).await.unwrap();
        let next = put.next_tick_ms.unwrap();
        assert_eq!(next % 86_400_000, 3 * 3_600_000, "03:00 UTC: {next}");
    }
}

/// A schedule whose ticks came while no sidecar ran: once one starts, the
/// ticks more than 30 s late are enqueued as one job (or none, with
/// `skip`), the recent one as itself.
async fn missed_ticks_on(topology: Topology) {
    for (missed, jobs) in [(Missed::EnqueueOnce, 2), (Missed::Skip, 1)] {
        let config = Config::default();
        let deployment = topology.deploy(&config, "schedules").await;
        // A minute apart, the last 15 s ago: ten ticks missed long ago, one
        // recent.
        let schedule = Schedule {
            queue: "nightly".into(),
            payload: Bytes::from_static(b"run"),
            every_ms: Some(60_000),
            cron: None,
            missed,
            max_attempts: None,
            anchor_ms: now_ms() - 615_000,
        };
        deployment
            .stores
            .queues
            .put_schedule("report", &schedule)
            .await
            .unwrap();
        let app = App::with_stores(&config, deployment.stores);
        let last = eventually(Duration::from_secs(10), "the schedule to catch up", || {
            let q = app.queues.clone();
            async move {
                let caller = Default::default();
                let s = q.get_schedule_for(&caller, "report".into()).await.ok()?;
                (s.stored.last_tick_ms == schedule.anchor_ms + 600_000).then_some(s)
            }
        })
        .await;
        assert_eq!(last.next_tick_ms, Some(schedule.anchor_ms + 660_000));
        let got = claim_all(&app, "nightly", 0).await;
        assert_eq!(got.len(), jobs, "{missed:?}: {got:?}");
    }
}

#[tokio::test]
async fn missed_ticks_are_enqueued_once_or_skipped_on_memory() {
    missed_ticks_on(Topology::Memory).await;
}

#[tokio::test]
async fn missed_ticks_are_enqueued_once_or_skipped_on_redis() {
    missed_ticks_on(Topology::Redis).await;
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Two sidecars on one Redis run the same 1 s schedule for 10 s: exactly
/// one job per tick, none lost, none twice.
#[tokio::test]
async fn two_sidecars_enqueue_each_tick_once() {
    let redis = RedisServer::start().await;
    let ns = unique("schedules");
    let a = sidecar!().redis(&redis).namespace(&ns).start().await;
    let b = sidecar!().redis(&redis).namespace(&ns).start().await;
    let put = http()
        .put(a.url("/v1/schedules/every-second"))
        .json(&json!({"queue": "ticks", "every_ms": 1000, "payload": "tick"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let put: Value = put.json().await.unwrap();
    let anchor = put["anchor_ms"].as_u64().unwrap();
    // Ten ticks, whichever sidecar enqueues them.
    eventually(Duration::from_secs(30), "ten ticks", || {
        let url = b.url("/v1/schedules/every-second");
        async move {
            let s: Value = http().get(url).send().await.ok()?.json().await.ok()?;
            (s["last_tick_ms"].as_u64()? >= anchor + 10_000).then_some(())
        }
    })
    .await;
    let deleted = http()
        .delete(a.url("/v1/schedules/every-second"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let claimed: Value = http()
        .post(b.url("/v1/queues/ticks/claim"))
        .json(&json!({"max": 100}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Each job names its tick: one job per tick from the first on, none
    // twice (two sidecars racing for a tick would make two) and none lost
    // (a gap).
    let mut ticks: Vec<u64> = claimed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            let id = j["dedup_id"].as_str().unwrap();
            let tick = id.strip_prefix("schedule:every-second:").unwrap();
            tick.parse().unwrap()
        })
        .collect();
    ticks.sort();
    assert!(ticks.len() >= 10, "{ticks:?}");
    let expected: Vec<u64> = (1..=ticks.len() as u64)
        .map(|k| anchor + k * 1000)
        .collect();
    assert_eq!(ticks, expected);
    // The sidecars' counts of the ticks each enqueued add up to the jobs.
    let mut scheduled = 0.0;
    for s in [&a, &b] {
        let text = reqwest::get(s.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        scheduled += text
            .lines()
            .find_map(|l| l.strip_prefix("outrigger_queue_jobs_total{event=\"scheduled\"} "))
            .map_or(0.0, |n| n.trim().parse::<f64>().unwrap());
    }
    assert_eq!(scheduled as usize, ticks.len());
}
