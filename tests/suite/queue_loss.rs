//! Work queues under failure: workers killed mid-job lose no job and
//! complete none twice; Redis killed under enqueue load keeps every
//! enqueue it acknowledged (with `appendfsync always`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use outrigger::api::pb;
use outrigger::api::pb::map_client::MapClient;
use outrigger::api::pb::queue_client::QueueClient;
use outrigger_tests::{RedisServer, Sidecar, eventually, sidecar, unique};
use tokio::process::{Child, Command};

const JOBS: usize = 10_000;

fn worker(s: &Sidecar, queue: &str, map: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_queue-worker"))
        .args([&s.grpc_url(), queue, map])
        .kill_on_drop(true)
        .spawn()
        .expect("start a queue worker")
}

/// Keys in Redis: about two per job enqueued.
async fn dbsize(redis: &RedisServer) -> u64 {
    let mut conn = redis.client().await;
    redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap()
}

async fn metric_sum(sidecars: &[&Sidecar], line: &str) -> u64 {
    let mut sum = 0.0;
    for s in sidecars {
        let text = reqwest::get(s.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        sum += text
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .map_or(0.0, |n| n.trim().parse::<f64>().unwrap());
    }
    sum as u64
}

/// 4 workers over 2 sidecars work through 10,000 jobs while one worker is
/// SIGKILLed (and replaced) every second: every job is acked (none is left,
/// none dead but the one meant to fail), none twice (no more successful
/// acks than jobs), and run at least once (its field in the work map); a
/// job that always fails ends dead after its attempts, with its last
/// error.
#[tokio::test]
async fn killed_workers_lose_no_job_and_complete_none_twice() {
    let redis = RedisServer::start().await;
    let ns = unique("queue-loss");
    let a = sidecar!().redis(&redis).namespace(&ns).start().await;
    let b = sidecar!().redis(&redis).namespace(&ns).start().await;
    let mut q = QueueClient::new(a.channel().await);
    let enqueue = |payload: String, max_attempts| pb::EnqueueJobRequest {
        queue: "work".into(),
        payload: payload.into_bytes().into(),
        max_attempts: Some(max_attempts),
        ..Default::default()
    };
    let failing = q
        .enqueue(enqueue("fail".into(), 3))
        .await
        .unwrap()
        .into_inner()
        .id;
    let mut ids = Vec::with_capacity(JOBS);
    let mut loaders = Vec::new();
    for part in 0..8 {
        let mut q = q.clone();
        loaders.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in (part..JOBS).step_by(8) {
                // A generous max_attempts: a kill costs a job one attempt.
                let req = enqueue(n.to_string(), 100);
                ids.push(q.enqueue(req).await.unwrap().into_inner().id);
            }
            ids
        }));
    }
    for loader in loaders {
        ids.extend(loader.await.unwrap());
    }
    let sidecars = [&a, &b];
    let mut workers: Vec<Child> = (0..4)
        .map(|n| worker(sidecars[n % 2], "work", "done"))
        .collect();
    let mut kills = 0;
    let mut stats = pb::QueueStats::default();
    for _ in 0..600 {
        let s = q
            .stats(pb::QueueStatsRequest {
                queue: "work".into(),
            })
            .await
            .unwrap()
            .into_inner();
        if s.ready + s.delayed + s.in_flight == 0 && s.dead == 1 {
            stats = s;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        // One worker killed mid-job (SIGKILL: no goodbye), and replaced.
        let n = kills % workers.len();
        workers[n].start_kill().unwrap();
        workers[n].wait().await.unwrap();
        workers[n] = worker(sidecars[n % 2], "work", "done");
        kills += 1;
    }
    assert_eq!(
        (stats.ready, stats.delayed, stats.in_flight, stats.dead),
        (0, 0, 0, 1),
        "the queue did not drain within 600 s: {stats:?}"
    );
    assert!(
        kills >= 3,
        "only {kills} kills happened while jobs were left"
    );
    // No job acked twice: the sidecars answered at most one successful ack
    // per job. (An ack whose worker was killed while it was in flight may
    // have been applied without being answered, or counted: at most one
    // per kill.)
    let acked = metric_sum(&sidecars, "outrigger_queue_jobs_total{event=\"acked\"} ").await;
    assert!(
        acked as usize <= JOBS && acked as usize + kills >= JOBS,
        "{acked} acks answered for {JOBS} jobs, {kills} kills"
    );
    // Every job's work ran at least once (more when a kill came between
    // the work and the ack).
    let mut maps = MapClient::new(b.channel().await);
    let mut runs: BTreeMap<String, i64> = BTreeMap::new();
    let mut cursor = String::new();
    loop {
        let page = maps
            .list(pb::ListFieldsRequest {
                map: "done".into(),
                cursor: cursor.clone(),
                limit: 1000,
            })
            .await
            .unwrap()
            .into_inner();
        for f in page.fields {
            let n = std::str::from_utf8(&f.value).unwrap().parse().unwrap();
            runs.insert(f.field, n);
        }
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    let missing: Vec<_> = ids.iter().filter(|id| !runs.contains_key(*id)).collect();
    assert!(missing.is_empty(), "never run: {missing:?}");
    assert_eq!(runs.len(), JOBS);
    let reruns: i64 = runs.values().map(|n| n - 1).sum();
    println!("{JOBS} jobs, {kills} workers killed, {reruns} jobs run again after a kill");
    // The job that always fails: dead after its 3 attempts, with the last
    // error.
    let dead = q
        .list_dead(pb::ListDeadRequest {
            queue: "work".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (
            dead[0].id.as_str(),
            dead[0].attempts,
            dead[0].error.as_deref()
        ),
        (failing.as_str(), 3, Some("failed on attempt 3"))
    );
}

/// With Redis run with `appendonly yes` and `appendfsync always`, Redis
/// SIGKILLed and restarted under enqueue load: every enqueue the sidecar
/// acknowledged is still there afterwards.
#[tokio::test]
async fn acknowledged_enqueues_survive_redis_being_killed() {
    let mut redis =
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    let ns = unique("queue-aof");
    let s = sidecar!()
        .redis(&redis)
        .namespace(&ns)
        .env("OUTRIGGER_REDIS__TIMEOUT", "500ms")
        .env("OUTRIGGER_FAILOVER__PROBE_INTERVAL", "50ms")
        .start()
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut loaders = Vec::new();
    for part in 0..4 {
        let mut q = QueueClient::new(s.channel().await);
        let stop = stop.clone();
        loaders.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let req = pb::EnqueueJobRequest {
                    queue: "durable".into(),
                    payload: format!("{part}-{n}").into_bytes().into(),
                    ..Default::default()
                };
                n += 1;
                // Refused while Redis is away: not acknowledged, not counted.
                if let Ok(reply) = q.enqueue(req).await {
                    acknowledged.push(reply.into_inner().id);
                }
            }
            acknowledged
        }));
    }
    {
        let redis = &redis;
        eventually(Duration::from_secs(10), "some enqueues", || async move {
            (dbsize(redis).await > 200).then_some(())
        })
        .await;
    }
    redis.kill().await;
    redis.restart().await;
    s.wait_mode("redis", Duration::from_secs(10)).await;
    {
        let redis = &redis;
        eventually(
            Duration::from_secs(10),
            "enqueues after the restart",
            || async move { (dbsize(redis).await > 400).then_some(()) },
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for loader in loaders {
        acknowledged.extend(loader.await.unwrap());
    }
    let mut conn = redis.client().await;
    let ns_key = |id: &str| format!("{ns}:q:{{durable}}:j:{id}");
    let mut lost = Vec::new();
    for id in &acknowledged {
        let exists: u64 = redis::cmd("EXISTS")
            .arg(ns_key(id))
            .query_async(&mut conn)
            .await
            .unwrap();
        if exists == 0 {
            lost.push(id);
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged enqueues lost: {lost:?}",
        lost.len(),
        acknowledged.len()
    );
    let mut q = QueueClient::new(s.channel().await);
    let stats = q
        .stats(pb::QueueStatsRequest {
            queue: "durable".into(),
        })
        .await
        .unwrap()
        .into_inner();
    // More may be there: an enqueue Redis applied just before it was
    // killed, whose answer was lost, was not acknowledged.
    assert!(stats.ready as usize >= acknowledged.len(), "{stats:?}");
}
