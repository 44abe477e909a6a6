//! The near cache across sidecars: real `outrigger` processes sharing one
//! real `redis-server`, each with `cache.near.enabled`.
//!
//! The guarantees under test (README, "Near cache"):
//! - once a sidecar has received the invalidation of a write, it never
//!   serves the value the write replaced (the invalidation is published by
//!   the write's own script, before the write is acknowledged);
//! - whatever happens to invalidations, no entry is served longer than
//!   `cache.near.max_ttl` after it was read from Redis;
//! - losing the invalidation channel empties the near cache.

use std::time::{Duration, Instant};

use outrigger_tests::{RedisServer, Sidecar, eventually, sidecar, unique};
use serde_json::Value;

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn with_near(redis: &RedisServer, ns: &str, max_ttl: &str) -> Sidecar {
    with_near_and(redis, ns, max_ttl, &[]).await
}

/// [`with_near`], with more configuration.
async fn with_near_and(
    redis: &RedisServer,
    ns: &str,
    max_ttl: &str,
    env: &[(&str, &str)],
) -> Sidecar {
    let mut builder = sidecar!()
        .redis(redis)
        .namespace(ns)
        .env("OUTRIGGER_CACHE__NEAR__ENABLED", "true")
        .env("OUTRIGGER_CACHE__NEAR__MAX_TTL", max_ttl);
    for (key, value) in env {
        builder = builder.env(key, *value);
    }
    let sidecar = builder.start().await;
    eventually(Duration::from_secs(5), "the near cache to go live", || {
        let sidecar = &sidecar;
        async move { (near(sidecar).await["live"] == true).then_some(()) }
    })
    .await;
    sidecar
}

async fn near(sidecar: &Sidecar) -> Value {
    let status: Value = http()
        .get(sidecar.url("/v1/admin/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    status["cache"]["near"].clone()
}

async fn counter(sidecar: &Sidecar, name: &str) -> u64 {
    near(sidecar).await[name]
        .as_u64()
        .unwrap_or_else(|| panic!("near.{name}"))
}

async fn put(sidecar: &Sidecar, key: &str, value: &str) -> u64 {
    let resp = http()
        .put(sidecar.url(&format!("/v1/cache/{key}")))
        .body(value.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    let body: Value = resp.json().await.unwrap();
    body["version"].as_u64().expect("version")
}

/// The value, or `None` on 404.
async fn get(sidecar: &Sidecar, key: &str) -> Option<String> {
    let resp = http()
        .get(sidecar.url(&format!("/v1/cache/{key}")))
        .send()
        .await
        .unwrap();
    match resp.status().as_u16() {
        200 => Some(resp.text().await.unwrap()),
        404 => None,
        other => panic!("GET {key}: {other} {:?}", resp.text().await),
    }
}

/// Reads `key` through `sidecar` until its near cache serves it: the entry
/// is in L1. (A fill can be evicted again by the late echo of an earlier
/// write's invalidation, so this reads until a hit is counted.)
async fn read_into_near(sidecar: &Sidecar, key: &str) -> String {
    eventually(Duration::from_secs(5), "a near-cache hit", || async {
        let value = get(sidecar, key).await.expect("present");
        let hits = counter(sidecar, "hits").await;
        let again = get(sidecar, key).await.expect("present");
        assert_eq!(again, value, "{key} changed under the test");
        (counter(sidecar, "hits").await == hits + 1).then_some(value)
    })
    .await
}

/// Changes a value in Redis without telling any sidecar (no invalidation),
/// keeping its version.
async fn change_behind_the_back(redis: &RedisServer, ns: &str, key: &str, value: &str) {
    let mut conn = redis.client().await;
    let _: () = redis::cmd("HSET")
        .arg(format!("{ns}:c:{{{key}}}"))
        .arg("v")
        .arg(value)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_write_through_one_sidecar_evicts_it_from_the_others() {
    let redis = RedisServer::start().await;
    let ns = unique("near");
    let a = with_near(&redis, &ns, "60s").await;
    let b = with_near(&redis, &ns, "60s").await;
    put(&a, "k", "v0").await;
    for i in 1..=20 {
        assert_eq!(read_into_near(&b, "k").await, format!("v{}", i - 1));
        let before = counter(&b, "invalidations").await;
        put(&a, "k", &format!("v{i}")).await;
        // Once B has received the invalidation, the old value is gone.
        eventually(
            Duration::from_secs(2),
            "B to receive the invalidation",
            || {
                let b = &b;
                async move { (counter(b, "invalidations").await > before).then_some(()) }
            },
        )
        .await;
        assert_eq!(get(&b, "k").await, Some(format!("v{i}")), "round {i}");
    }
    // Deletes, tags and patterns reach B's near cache too.
    let c = http();
    for (key, tag) in [("t1", "red"), ("t2", "blue")] {
        c.put(a.url(&format!("/v1/cache/{key}?tags={tag}")))
            .body("tagged")
            .send()
            .await
            .unwrap();
    }
    put(&a, "p:1", "patterned").await;
    put(&a, "gone", "soon").await;
    for key in ["t1", "t2", "p:1", "gone"] {
        read_into_near(&b, key).await;
    }
    let resp = c.delete(a.url("/v1/cache/gone")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = c
        .post(a.url("/v1/cache/invalidate"))
        .json(&serde_json::json!({"tags": ["red"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = c
        .post(a.url("/v1/cache/invalidate"))
        .json(&serde_json::json!({"pattern": "p:*"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for key in ["gone", "t1", "p:1"] {
        eventually(
            Duration::from_secs(2),
            "B to drop the invalidated key",
            || {
                let b = &b;
                async move { get(b, key).await.is_none().then_some(()) }
            },
        )
        .await;
    }
    assert_eq!(get(&b, "t2").await.as_deref(), Some("tagged"));
}

/// A reader on B never goes back to an older version, and sees each write
/// through A within the stated delivery bound.
#[tokio::test]
async fn readers_never_go_back_and_see_writes_within_the_delivery_bound() {
    const BOUND: Duration = Duration::from_millis(250);
    let redis = RedisServer::start().await;
    let ns = unique("near");
    let a = with_near(&redis, &ns, "60s").await;
    let b = with_near(&redis, &ns, "60s").await;
    put(&a, "hot", "0").await;
    let mut slowest = Duration::ZERO;
    let mut last_seen = 0u64;
    for i in 1..=100u64 {
        put(&a, "hot", &i.to_string()).await;
        let acked = Instant::now();
        loop {
            let seen: u64 = get(&b, "hot").await.unwrap().parse().unwrap();
            assert!(seen >= last_seen, "B went back from {last_seen} to {seen}");
            last_seen = seen;
            if seen == i {
                break;
            }
            assert!(
                acked.elapsed() < BOUND,
                "B still served {seen} {:?} after write {i} was acknowledged",
                acked.elapsed()
            );
        }
        slowest = slowest.max(acked.elapsed());
    }
    // Each write evicts B's copy, so B may have read every one from Redis;
    // with the writes over, B serves the last one from its near cache.
    let hits = eventually(
        Duration::from_secs(2),
        "B to serve from its near cache",
        || {
            let b = &b;
            async move {
                assert_eq!(get(b, "hot").await.as_deref(), Some("100"));
                let hits = counter(b, "hits").await;
                (hits > 0).then_some(hits)
            }
        },
    )
    .await;
    println!("slowest propagation A -> B: {slowest:?}; B near hits: {hits}");
}

/// The no-stale-fill rule end to end: readers on B keep reading while A
/// writes in bursts, so B's reads from Redis race the invalidations of the
/// writes (B counts those as `raced`). After each burst, once the delivery
/// bound has passed since the last write was acknowledged, B serves only
/// that write's value: a read that raced an invalidation and was kept
/// anyway would leave an older value in L1 for the whole `max_ttl` (60 s).
#[tokio::test]
async fn a_read_racing_a_write_never_leaves_the_old_value_behind() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    const BOUND: Duration = Duration::from_millis(250);
    let redis = RedisServer::start().await;
    let ns = unique("near");
    let a = with_near(&redis, &ns, "60s").await;
    let b = Arc::new(with_near(&redis, &ns, "60s").await);
    // Large values: Redis answers a read before a write, but the reply
    // takes longer to arrive than the write's invalidation, which widens
    // the race under test.
    let value = |n: u64| format!("{n}:{}", "x".repeat(256 * 1024));
    put(&a, "hot", &value(0)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (b, stop) = (b.clone(), stop.clone());
            tokio::spawn(async move {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    get(&b, "hot").await.expect("present");
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let mut written = 0u64;
    for round in 0..20 {
        for _ in 0..8 {
            written += 1;
            put(&a, "hot", &value(written)).await;
        }
        let acked = Instant::now();
        let last = value(written);
        // Converged within the bound...
        loop {
            if get(&b, "hot").await.as_deref() == Some(last.as_str()) {
                break;
            }
            assert!(
                acked.elapsed() < BOUND,
                "round {round}: B did not serve value {written} within {BOUND:?}"
            );
        }
        // ...and once the bound has passed, nothing older, ever (here: for
        // 50 ms of reads).
        while acked.elapsed() < BOUND + Duration::from_millis(50) {
            let started = acked.elapsed();
            let seen = get(&b, "hot").await;
            if started >= BOUND {
                assert!(
                    seen.as_deref() == Some(last.as_str()),
                    "round {round}: B served value {:?}, not {written}, {started:?} after the write",
                    seen.as_deref().and_then(|v| v.split(':').next())
                );
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut reads = 0;
    for reader in readers {
        reads += reader.await.unwrap();
    }
    let stats = near(&b).await;
    let (raced, hits) = (
        stats["raced"].as_u64().unwrap(),
        stats["hits"].as_u64().unwrap(),
    );
    assert!(
        raced > 0,
        "no read raced an invalidation: not exercised ({stats})"
    );
    assert!(hits > 0, "L1 served nothing ({stats})");
    println!("{written} writes, {reads} concurrent reads on B; near cache: {stats}");
}

#[tokio::test]
async fn an_entry_is_never_served_past_max_ttl() {
    let redis = RedisServer::start().await;
    let ns = unique("near");
    let max_ttl = Duration::from_millis(1000);
    let b = with_near(&redis, &ns, "1s").await;
    put(&b, "k", "old").await;
    read_into_near(&b, "k").await;
    let read_at = Instant::now();
    change_behind_the_back(&redis, &ns, "k", "new").await;
    // Nobody announced the change: L1 may keep serving "old", but only
    // until max_ttl after it was read. (Asked well within max_ttl, it
    // does; a machine too loaded to ask in time skips that half.)
    let asked = read_at.elapsed();
    let served = get(&b, "k").await;
    if asked + Duration::from_millis(300) < max_ttl {
        assert_eq!(
            served.as_deref(),
            Some("old"),
            "asked {asked:?} after the read"
        );
    }
    eventually(Duration::from_secs(3), "the new value", || {
        let b = &b;
        async move { (get(b, "k").await.as_deref() == Some("new")).then_some(()) }
    })
    .await;
    assert!(
        read_at.elapsed() <= max_ttl + Duration::from_millis(500),
        "served the old value for {:?}",
        read_at.elapsed()
    );
}

#[tokio::test]
async fn losing_the_invalidation_channel_empties_the_near_cache() {
    let redis = RedisServer::start().await;
    let ns = unique("near");
    let b = with_near(&redis, &ns, "60s").await;
    put(&b, "k", "old").await;
    read_into_near(&b, "k").await;
    let flushes = counter(&b, "flushes").await;
    change_behind_the_back(&redis, &ns, "k", "new").await;
    // Drop every pub/sub connection: messages could be lost from here on.
    let mut conn = redis.client().await;
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(killed >= 1);
    eventually(Duration::from_secs(5), "B to flush its near cache", || {
        let b = &b;
        async move { (counter(b, "flushes").await > flushes).then_some(()) }
    })
    .await;
    // Long before max_ttl (60 s), B reads Redis again.
    assert_eq!(get(&b, "k").await.as_deref(), Some("new"));
    // And the near cache comes back once the channel does.
    eventually(
        Duration::from_secs(5),
        "the near cache to go live again",
        || {
            let b = &b;
            async move { (near(b).await["live"] == true).then_some(()) }
        },
    )
    .await;
    read_into_near(&b, "k").await;
}

/// The costliest glob the key limit allows for the (fixed) matcher, a star
/// and then 511 literal bytes, invalidating one key on Redis, has every
/// near cache match it against all of its maximum-size entries: about
/// 250,000 steps each, and none of them matches. The matching
/// runs off L1's lock and off the runtime's workers: the probes and reads
/// answer meanwhile (from Redis: L1 serves nothing until it is done), and
/// only the matching key is evicted. Matched under the lock, inline, it
/// held both workers of this 2-core machine for seconds.
#[tokio::test]
async fn the_worst_pattern_stalls_neither_the_near_cache_nor_the_probes() {
    let redis = RedisServer::start().await;
    let ns = unique("worst");
    // The matching keeps both cores of this machine busy for seconds: with
    // the default 250 ms deadline a slow Redis reply could send a read to
    // the (empty) memory fallback, which is not what this test is about.
    let patient = [("OUTRIGGER_REDIS__TIMEOUT", "5s")];
    let a = with_near_and(&redis, &ns, "60s", &patient).await;
    let b = with_near_and(&redis, &ns, "60s", &patient).await;
    let filler = "a".repeat(508);
    let target = format!("{}b", "a".repeat(511));
    let keys: Vec<String> = (0..2000).map(|i| format!("{filler}{i:04}")).collect();
    for key in keys.iter().chain([&target]) {
        put(&a, key, "v").await;
    }
    for s in [&a, &b] {
        for key in keys.iter().chain([&target]) {
            get(s, key).await;
        }
        read_into_near(s, &keys[0]).await;
    }
    let held = counter(&b, "entries").await;
    assert!(held >= 1900, "{held} entries in b's near cache");
    let invalidations = counter(&b, "invalidations").await;

    let worst = format!("*{}b", "a".repeat(510));
    let c = http();
    let invalidate = async {
        let started = Instant::now();
        let resp = c
            .post(a.url("/v1/cache/invalidate"))
            .json(&serde_json::json!({ "pattern": worst }))
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        started.elapsed()
    };
    let probes = async {
        let mut slowest = Duration::ZERO;
        for (i, key) in keys.iter().take(40).enumerate() {
            let s = if i % 2 == 0 { &a } else { &b };
            let started = Instant::now();
            let health = c
                .get(s.url("/healthz"))
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            assert_eq!(health.expect("/healthz answers").status(), 200);
            assert_eq!(get(s, key).await.as_deref(), Some("v"));
            slowest = slowest.max(started.elapsed());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        slowest
    };
    let (took, slowest) = tokio::join!(invalidate, probes);
    eprintln!("worst pattern: invalidated in {took:?}; slowest probe and read {slowest:?}");
    assert!(
        took < Duration::from_secs(30),
        "the invalidation took {took:?}"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "a probe and a read waited {slowest:?}"
    );
    // b matched it too: only the target went.
    eventually(
        Duration::from_secs(30),
        "b's near cache to match",
        || async { (counter(&b, "invalidations").await > invalidations).then_some(()) },
    )
    .await;
    assert_eq!(counter(&b, "invalidations").await, invalidations + 1);
    assert_eq!(get(&b, &target).await, None);
    assert_eq!(get(&b, &keys[0]).await.as_deref(), Some("v"));
}
