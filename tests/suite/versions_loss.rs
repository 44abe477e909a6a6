//! What the sidecar hands out, lock fences and cache versions, never
//! repeats or goes back for a name, whatever Redis loses: restarted empty,
//! the keys flushed, the fence evicted, a failover to a replica without the
//! last writes (`lock_wait_replicas = 0`), or the memory fallback standing
//! in meanwhile. Both follow `max(last + 1, the clock in µs)`.

use std::time::Duration;

use bytes::Bytes;
use outrigger::app::App;
use outrigger::config::{Config, RedisConfig};
use outrigger::primitives::cache::SetRequest;
use outrigger::primitives::cache::store::Condition;
use outrigger::primitives::lock::config::LockFallback;
use outrigger_tests::{RedisServer, StallablePair, app_on, eventually, redis_at, unique};

/// How long Redis may take to come back, or the sidecar to notice.
const BACK: Duration = Duration::from_secs(15);

async fn app(redis: RedisConfig, namespace: &str) -> App {
    app_on(&Config::default(), &redis, namespace).await
}

/// A lock acquired and released at once: its fence, once Redis answers.
async fn fence(app: &App) -> u64 {
    eventually(BACK, "a lock acquired", || async {
        let lease = app.locks.acquire("L", 10_000, 0).await.ok()??;
        app.locks.release("L", &lease.token).await.ok()?;
        Some(lease.fence)
    })
    .await
}

/// A cache write: its version, once Redis answers.
async fn version(app: &App) -> u64 {
    eventually(BACK, "a cache write", || async {
        let set = SetRequest {
            key: "k".into(),
            value: Bytes::from_static(b"v"),
            ttl_ms: 0,
            tags: vec![],
            condition: Condition::None,
            stale_ms: 0,
        };
        app.cache.set(set).await.ok()
    })
    .await
}

/// The fence and version before, and after `lose` did its worst: later.
async fn survives<F: std::future::Future<Output = ()>>(app: &App, lose: F) {
    let (f, v) = (fence(app).await, version(app).await);
    lose.await;
    let (f2, v2) = (fence(app).await, version(app).await);
    assert!(f2 > f, "fence {f2} after {f}");
    assert!(v2 > v, "version {v2} after {v}");
}

#[tokio::test]
async fn redis_restarted_empty() {
    let mut redis = RedisServer::start().await;
    let app = app(redis_at(redis.port), &unique("restart")).await;
    survives(&app, redis.restart()).await;
}

#[tokio::test]
async fn the_keys_flushed() {
    let redis = RedisServer::start().await;
    let app = app(redis_at(redis.port), &unique("flush")).await;
    let mut admin = redis.client().await;
    survives(&app, async {
        let () = redis::cmd("FLUSHALL")
            .query_async(&mut admin)
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn the_fence_evicted() {
    let redis =
        RedisServer::start_with(&["--maxmemory", "8mb", "--maxmemory-policy", "allkeys-lru"]).await;
    let namespace = unique("evict");
    let app = app(redis_at(redis.port), &namespace).await;
    let mut admin = redis.client().await;
    let last_fence = format!("{namespace}:lock:{{L}}:fence");
    survives(&app, async {
        // Fresher keys until Redis evicts the least recently used: the
        // fence (and the cache entry).
        let filler = vec![b'x'; 16 * 1024];
        for i in 0.. {
            let () = redis::cmd("SET")
                .arg(format!("filler:{i}"))
                .arg(&filler)
                .query_async(&mut admin)
                .await
                .unwrap();
            let exists: bool = redis::cmd("EXISTS")
                .arg(&last_fence)
                .query_async(&mut admin)
                .await
                .unwrap();
            if !exists {
                break;
            }
            assert!(i < 100_000, "Redis never evicted the fence");
        }
    })
    .await;
}

#[tokio::test]
async fn a_failover_to_a_replica_without_the_last_fences() {
    let mut pair = StallablePair::start().await;
    let app = app(redis_at(pair.port()), &unique("failover")).await;
    let first = fence(&app).await;
    pair.in_sync().await;
    // The link stalls: later fences reach the master only.
    pair.stall();
    let mut last = first;
    for _ in 0..5 {
        last = fence(&app).await;
    }
    pair.fail_over().await;
    // The promoted replica's counter says `first`; the next fence is past
    // every one handed out all the same.
    let next = fence(&app).await;
    assert!(
        next > last,
        "fence {next} after {last} (the replica had {first})"
    );
}

#[tokio::test]
async fn the_memory_fallback_in_between() {
    let mut redis = RedisServer::start().await;
    let mut config = Config {
        namespace: unique("fallback"),
        redis: redis_at(redis.port),
        ..Config::default()
    };
    config.failover.locks = LockFallback::Local;
    config.failover.probe_interval = Duration::from_millis(50);
    let app = App::new(&config).await.expect("the app");
    let (on_redis, v_redis) = (fence(&app).await, version(&app).await);
    redis.kill().await;
    eventually(BACK, "the fallback", || async {
        (app.status().failover?.mode == "memory").then_some(())
    })
    .await;
    let (local, v_local) = (fence(&app).await, version(&app).await);
    assert!(local > on_redis, "local fence {local} after {on_redis}");
    // (The fallback's cache versions counted from 1 before.)
    assert!(v_local > v_redis, "local version {v_local} after {v_redis}");
    // Redis back, empty: its fences and versions come after the fallback's.
    redis.restart().await;
    eventually(BACK, "Redis again", || async {
        (app.status().failover?.mode == "redis").then_some(())
    })
    .await;
    let back = fence(&app).await;
    assert!(back > local, "fence {back} after the fallback's {local}");
    let v_back = version(&app).await;
    assert!(
        v_back > v_local,
        "version {v_back} after the fallback's {v_local}"
    );
}
