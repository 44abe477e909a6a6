//! The sidecar on Redis Cluster and behind Redis Sentinel, as deployed:
//! real `redis-server` clusters and Sentinel sets on free ports, real
//! sidecar processes configured through the environment. What spans
//! slots works across every master; a master failover under load is
//! followed, with bounded errors, and no lock fence ever goes backwards.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use outrigger_tests::{
    RedisCluster, RedisSentinels, RedisServer, SENTINEL_MASTER, Sidecar, SidecarBuilder,
    TestCertificates, eventually, read_until, sidecar, unique,
};
use serde_json::{Value, json};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn on_cluster(seeds: &str, ns: &str) -> SidecarBuilder {
    sidecar!()
        .namespace(ns)
        .env("OUTRIGGER_REDIS__MODE", "cluster")
        .env("OUTRIGGER_REDIS__NODES", seeds)
}

fn on_sentinels(set: &RedisSentinels, ns: &str) -> SidecarBuilder {
    sidecar!()
        .namespace(ns)
        .env("OUTRIGGER_REDIS__MODE", "sentinel")
        .env("OUTRIGGER_REDIS__NODES", set.nodes())
        .env("OUTRIGGER_REDIS__MASTER_NAME", SENTINEL_MASTER)
}

async fn keys_on(node: &RedisServer, pattern: &str) -> Vec<String> {
    let mut conn = node.client().await;
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_namespace_spreads_over_every_master_and_cross_slot_operations_reach_them_all() {
    let cluster = RedisCluster::start(3, 0).await;
    let ns = unique("spread");
    // Two sidecars that know different seeds only: they find the rest.
    let a = on_cluster(&cluster.nodes[0].url(), &ns).start().await;
    let b = on_cluster(&cluster.nodes[2].url(), &ns).start().await;
    let c = http();

    for i in 0..60 {
        let r = c
            .put(a.url(&format!("/v1/cache/user:{i}?tags=users")))
            .body(format!("v{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    // Each master holds some of them: keys spread by their own name.
    for node in &cluster.nodes {
        let held = keys_on(node, &format!("{ns}:c:*")).await;
        assert!(
            held.len() >= 5,
            "master :{} holds {} of 60 keys",
            node.port,
            held.len()
        );
    }
    // B reads what A wrote, whatever the slot.
    for i in [0, 17, 59] {
        let r = c
            .get(b.url(&format!("/v1/cache/user:{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), format!("v{i}"));
    }

    // Listing pages through every master: each key once.
    let mut listed = BTreeSet::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let page: Value = c
            .get(b.url(&format!("/v1/cache?pattern=user:*&limit=7&cursor={cursor}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for key in page["keys"].as_array().unwrap() {
            assert!(
                listed.insert(key.as_str().unwrap().to_string()),
                "{key} twice"
            );
        }
        pages += 1;
        assert!(pages < 200, "listing does not end");
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    assert_eq!(listed.len(), 60, "{listed:?}");

    // A pattern invalidation through B deletes on every master.
    let r: Value = c
        .post(b.url("/v1/cache/invalidate"))
        .json(&json!({"pattern": "user:1*"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // user:1, user:10..19
    assert_eq!(r["deleted"], 11, "{r}");
    // A tag invalidation too: the rest.
    let r: Value = c
        .post(a.url("/v1/cache/invalidate"))
        .json(&json!({"tags": ["users"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["deleted"], 49, "{r}");
    for node in &cluster.nodes {
        assert_eq!(
            keys_on(node, &format!("{ns}:c:*")).await,
            Vec::<String>::new()
        );
    }

    // Pub/sub: A and B hold pub/sub connections to different nodes; a
    // publish through A reaches B's subscriber (A keeps publishing until
    // B's subscription is live).
    let mut feed = c.get(b.url("/v1/pubsub/news")).send().await.unwrap();
    assert_eq!(feed.status(), 200);
    let publisher = tokio::spawn({
        let (c, url) = (c.clone(), a.url("/v1/pubsub/news"));
        async move {
            loop {
                let _ = c.post(&url).body("hello from A").send().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let heard = read_until(&mut feed, "hello from A", Duration::from_secs(10)).await;
    publisher.abort();
    assert!(heard, "B's subscriber hears A's publish");

    // Locks: one holder across both sidecars.
    let held: Value = c
        .post(a.url("/v1/locks/job/acquire"))
        .json(&json!({"ttl_ms": 10_000, "wait_ms": 0}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(held["fence"].as_u64().unwrap() >= 1, "{held}");
    let r = c
        .post(b.url("/v1/locks/job/acquire"))
        .json(&json!({"ttl_ms": 10_000, "wait_ms": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(a.status().await["failover"]["mode"], "redis");
}

/// One lock acquire + release, and a cache write and read, in a loop;
/// what each answered.
#[derive(Default)]
struct Load {
    /// Fences handed out, with when, in the order they were acquired.
    fences: Vec<(u64, Instant)>,
    /// (status, when) of every lock acquisition.
    locks: Vec<(u16, Instant)>,
    /// (body, when) of every acquisition refused with 503.
    refusals: Vec<(String, Instant)>,
    /// Statuses of cache requests.
    cache: Vec<u16>,
    slowest: Duration,
}

type SharedLoad = Arc<std::sync::Mutex<Load>>;

fn lock_and_cache_load(
    s: Arc<Sidecar>,
    stop: Arc<AtomicBool>,
) -> (SharedLoad, tokio::task::JoinHandle<()>) {
    let shared = SharedLoad::default();
    let load = shared.clone();
    let task = tokio::spawn(async move {
        let c = http();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            // Each request is timed on its own: `lap()` after each.
            let mut slowest = Duration::ZERO;
            let mut lap_started = Instant::now();
            let mut lap = || {
                slowest = slowest.max(lap_started.elapsed());
                lap_started = Instant::now();
            };
            let started = Instant::now();
            let r = c
                .post(s.url("/v1/locks/ledger/acquire"))
                .json(&json!({"ttl_ms": 5_000, "wait_ms": 0}))
                .send()
                .await;
            // 0: no answer (the client's 10 s timeout).
            let code = r.as_ref().map_or(0, |r| r.status().as_u16());
            let mut fence = None;
            let mut refusal = None;
            match r {
                Ok(r) if code == 503 => {
                    refusal = Some(r.text().await.unwrap_or_default());
                }
                Ok(r) if code == 200 => {
                    let body: Value = r.json().await.unwrap();
                    lap();
                    fence = Some(body["fence"].as_u64().unwrap());
                    // A release that fails (the switch began) leaves the
                    // lease to run out; the next acquisitions answer 409.
                    let _ = c
                        .post(s.url("/v1/locks/ledger/release"))
                        .json(&json!({"token": body["token"]}))
                        .send()
                        .await;
                }
                _ => {}
            }
            lap();
            let set = c
                .put(s.url(&format!("/v1/cache/k{}", i % 20)))
                .body("v")
                .send()
                .await
                .map_or(0, |r| r.status().as_u16());
            lap();
            let get = c
                .get(s.url(&format!("/v1/cache/k{}", i % 20)))
                .send()
                .await
                .map_or(0, |r| r.status().as_u16());
            lap();
            let mut load = load.lock().unwrap();
            load.locks.push((code, started));
            if let Some(message) = refusal {
                load.refusals.push((message, started));
            }
            if let Some(fence) = fence {
                load.fences.push((fence, started));
            }
            load.cache.push(set);
            load.cache.push(get);
            load.slowest = load.slowest.max(slowest);
        }
    });
    (shared, task)
}

/// Waits until `more` fences were handed out after `since`.
async fn fences_after(load: &SharedLoad, since: Instant, more: usize, limit: Duration) {
    eventually(limit, &format!("{more} fences handed out"), || {
        let n = load
            .lock()
            .unwrap()
            .fences
            .iter()
            .filter(|(_, at)| *at > since)
            .count();
        async move { (n >= more).then_some(()) }
    })
    .await;
}

/// Stops the load, checks that it held up (below), and reports how the
/// switch went.
async fn stop_load(
    stop: &AtomicBool,
    task: tokio::task::JoinHandle<()>,
    load: &SharedLoad,
    what: &str,
    switched_at: Instant,
    recovered: Duration,
) -> Load {
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    let load = std::mem::take(&mut *load.lock().unwrap());
    assert_load_held_up(&load, what);
    let refused = load
        .locks
        .iter()
        .filter(|(s, t)| *s == 503 && *t > switched_at)
        .count();
    eprintln!(
        "{what}: {} fences, {refused} lock requests refused during the switch, \
         fences from the new master within {recovered:?}",
        load.fences.len()
    );
    load
}

/// Fences strictly increase in the order they were handed out; lock
/// requests answered 200, 409 (the lease of a holder cut off by the
/// switch) or 503 (failing closed while no master answers); every cache
/// request was served (from memory while Redis was switching).
fn assert_load_held_up(load: &Load, what: &str) {
    let fences: Vec<u64> = load.fences.iter().map(|(f, _)| *f).collect();
    for pair in fences.windows(2) {
        assert!(
            pair[1] > pair[0],
            "{what}: fence went from {} to {} (all: {fences:?})",
            pair[0],
            pair[1],
        );
    }
    let odd: Vec<_> = load
        .locks
        .iter()
        .filter(|(s, _)| ![200, 409, 503].contains(s))
        .collect();
    assert!(odd.is_empty(), "{what}: lock answers {odd:?}");
    let failed: Vec<_> = load
        .cache
        .iter()
        .filter(|s| **s >= 500 || **s == 0)
        .collect();
    assert!(
        failed.is_empty(),
        "{what}: cache requests failed: {failed:?}"
    );
    assert!(
        load.slowest < Duration::from_secs(2),
        "{what}: a request took {:?}",
        load.slowest
    );
}

#[tokio::test]
async fn a_cluster_master_failover_under_load_is_followed_and_fences_never_go_back() {
    let mut cluster = RedisCluster::start(3, 1).await;
    let ns = unique("cfail");
    let s = Arc::new(
        on_cluster(&cluster.seeds(), &ns)
            .env("OUTRIGGER_REDIS__LOCK_WAIT_REPLICAS", "1")
            .env("OUTRIGGER_FAILOVER__PROBE_MAX", "1s")
            .start()
            .await,
    );
    let lock_key = format!("{ns}:lock:{{ledger}}");
    let victim = cluster.master_of(&lock_key).await;

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let (load, task) = lock_and_cache_load(s.clone(), stop.clone());
    fences_after(&load, started, 20, Duration::from_secs(10)).await;

    let killed_at = Instant::now();
    cluster.nodes[victim].kill().await;
    // Its replica takes over. Until the new master has a replica of its
    // own, no fence can be confirmed by one: acquisitions are refused.
    let promoted = eventually(Duration::from_secs(30), "a new master for the slot", || {
        let (cluster, key) = (&cluster, &lock_key);
        async move { Some(cluster.master_of(key).await).filter(|&m| m != victim) }
    })
    .await;
    assert!(promoted >= 3, "a replica was promoted");
    let alone = Instant::now();
    eventually(
        Duration::from_secs(10),
        "an acquisition refused for want of a replica",
        || {
            // Not any 503 (the circuit fails closed too): the one that
            // names the missing replica.
            let refused = load.lock().unwrap().refusals.iter().any(|(body, t)| {
                *t > alone
                    && body.contains("0 of 1 replicas")
                    && body.contains("lock_wait_replicas")
            });
            async move { refused.then_some(()) }
        },
    )
    .await;
    // The killed node comes back (as a replica of the new master); the
    // sidecar hands out fences from the new master.
    cluster.nodes[victim].restart().await;
    cluster.nodes[victim].synced().await;
    fences_after(&load, killed_at, 20, Duration::from_secs(30)).await;
    let recovered = killed_at.elapsed();
    let load = stop_load(&stop, task, &load, "cluster failover", killed_at, recovered).await;
    assert_eq!(
        cluster.master_of(&lock_key).await,
        promoted,
        "no second switch"
    );
    // The new master holds the counter the last fences came from.
    assert_counter_holds(counter(&cluster.nodes[promoted], &lock_key).await, &load);
    s.wait_mode("redis", Duration::from_secs(10)).await;
}

/// The master's fence counter is never behind the last fence handed out
/// (the promoted master forgot none), and is that fence unless an
/// acquisition was answered after it without one: the script sets it
/// before `WAIT`, so a refusal for want of a replica (503) or an answer
/// the client never read (0) may each have moved it on.
fn assert_counter_holds(counter: Option<u64>, load: &Load) {
    let (last, at) = *load.fences.last().expect("fences were handed out");
    let unfenced = load
        .locks
        .iter()
        .filter(|(status, t)| *t > at && matches!(status, 503 | 0))
        .count() as u64;
    let counter = counter.expect("the fence counter exists on the new master");
    assert!(
        counter == last || (unfenced > 0 && counter > last),
        "counter {counter}: the last fence handed out was {last}, \
         with {unfenced} acquisitions refused or unanswered after it"
    );
}

/// The fence counter of `lock_key`, read on `node` (its master).
async fn counter(node: &RedisServer, lock_key: &str) -> Option<u64> {
    let mut conn = node.client().await;
    redis::cmd("GET")
        .arg(format!("{lock_key}:fence"))
        .query_async::<Option<u64>>(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_sentinel_failover_under_load_is_followed_and_fences_never_go_back() {
    let set = RedisSentinels::start().await;
    let ns = unique("sfail");
    let s = Arc::new(
        on_sentinels(&set, &ns)
            .env("OUTRIGGER_REDIS__LOCK_WAIT_REPLICAS", "1")
            .env("OUTRIGGER_FAILOVER__PROBE_MAX", "1s")
            .start()
            .await,
    );
    let lock_key = format!("{ns}:lock:{{ledger}}");
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let (load, task) = lock_and_cache_load(s.clone(), stop.clone());
    fences_after(&load, started, 20, Duration::from_secs(10)).await;

    // The Sentinels promote the replica and turn the old master into its
    // replica; writes the old master takes meanwhile are lost.
    let switched_at = Instant::now();
    let mut sentinel = set.sentinels[0].client().await;
    let _: () = redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg(SENTINEL_MASTER)
        .query_async(&mut sentinel)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the Sentinels to name the replica",
        || async { (set.master_port().await == set.replica.port).then_some(()) },
    )
    .await;
    fences_after(&load, switched_at, 20, Duration::from_secs(30)).await;
    let recovered = switched_at.elapsed();
    let load = stop_load(
        &stop,
        task,
        &load,
        "sentinel failover",
        switched_at,
        recovered,
    )
    .await;
    s.wait_mode("redis", Duration::from_secs(10)).await;
    // The fences now come from the promoted replica.
    assert_counter_holds(counter(&set.replica, &lock_key).await, &load);
}

#[tokio::test]
async fn a_fence_no_replica_confirms_is_never_handed_out() {
    let master = RedisServer::start().await;
    let ns = unique("wait");
    let s = sidecar!()
        .redis(&master)
        .namespace(&ns)
        .env("OUTRIGGER_REDIS__LOCK_WAIT_REPLICAS", "1")
        .start()
        .await;
    let c = http();
    let acquire = || {
        c.post(s.url("/v1/locks/ledger/acquire"))
            .json(&json!({"ttl_ms": 60_000, "wait_ms": 0}))
            .send()
    };
    // No replica: refused, saying why, and the lock is not left held.
    let r = acquire().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("0 of 1 replicas") && message.contains("lock_wait_replicas"),
        "{body}"
    );
    let mut conn = master.client().await;
    let holder: Option<String> = redis::cmd("GET")
        .arg(format!("{ns}:lock:{{ledger}}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(holder, None, "the unconfirmed acquisition was released");
    // Refusing locks is not an outage: the cache still uses Redis.
    assert_eq!(s.status().await["failover"]["mode"], "redis");

    // With a replica, acquisitions are confirmed and answered.
    let of = master.port.to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &of]).await;
    replica.synced().await;
    master.replicas_acknowledge(1).await;
    let r = acquire().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let body: Value = r.json().await.unwrap();
    // The replica has the fence the client was given.
    let mut conn = replica.client().await;
    let fence: Option<u64> = redis::cmd("GET")
        .arg(format!("{ns}:lock:{{ledger}}:fence"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(fence, body["fence"].as_u64());
}

#[tokio::test]
async fn redis_over_tls_with_a_client_certificate() {
    let certs = TestCertificates::generate();
    let redis = RedisServer::start_tls(&certs).await;
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let path = |name: &str| certs.path(name).to_string_lossy().into_owned();
    let ns = unique("tls");
    let c = http();

    // CA and client certificate: every primitive on Redis, over TLS.
    let s = sidecar!()
        .namespace(&ns)
        .env("OUTRIGGER_REDIS__URL", &url)
        .env("OUTRIGGER_REDIS__TLS__CA_FILE", path("ca.crt"))
        .env("OUTRIGGER_REDIS__TLS__CERT_FILE", path("client.crt"))
        .env("OUTRIGGER_REDIS__TLS__KEY_FILE", path("client.key"))
        .start()
        .await;
    let r = c
        .put(s.url("/v1/cache/k"))
        .body("over tls")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(s.url("/v1/cache/k")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "over tls");
    let r = c
        .post(s.url("/v1/locks/L/acquire"))
        .json(&json!({"ttl_ms": 10_000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "locks fail closed unless Redis answers");
    let st = s.status().await;
    assert_eq!(st["failover"]["mode"], "redis", "{st}");
    assert_eq!(st["failover"]["transitions"], 0, "{st}");
    // The value really is in that Redis (read over TLS, directly).
    let direct = redis::Client::build_with_tls(
        url.as_str(),
        redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: std::fs::read(certs.path("client.crt")).unwrap(),
                client_key: std::fs::read(certs.path("client.key")).unwrap(),
            }),
            root_cert: Some(std::fs::read(certs.path("ca.crt")).unwrap()),
        },
    )
    .unwrap();
    let mut conn = direct.get_multiplexed_async_connection().await.unwrap();
    let value: Vec<u8> = redis::cmd("HGET")
        .arg(format!("{ns}:c:{{k}}"))
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(value, b"over tls");

    // Refused: no client certificate, a CA that did not sign the server's,
    // or plain TCP to the TLS port. The sidecar serves from memory and
    // says why Redis is out of reach.
    for (what, says, builder) in [
        (
            "no client certificate",
            "CertificateRequired",
            sidecar!()
                .env("OUTRIGGER_REDIS__URL", &url)
                .env("OUTRIGGER_REDIS__TLS__CA_FILE", path("ca.crt")),
        ),
        (
            "another CA",
            "UnknownIssuer",
            sidecar!()
                .env("OUTRIGGER_REDIS__URL", &url)
                .env("OUTRIGGER_REDIS__TLS__CA_FILE", path("other-ca.crt"))
                .env("OUTRIGGER_REDIS__TLS__CERT_FILE", path("client.crt"))
                .env("OUTRIGGER_REDIS__TLS__KEY_FILE", path("client.key")),
        ),
        (
            "plain TCP",
            "",
            sidecar!().env(
                "OUTRIGGER_REDIS__URL",
                format!("redis://127.0.0.1:{}", redis.port),
            ),
        ),
    ] {
        let s = builder.namespace(&ns).start().await;
        let r = c.put(s.url("/v1/cache/k")).body("x").send().await.unwrap();
        assert_eq!(r.status(), 200, "{what}: the cache falls back to memory");
        let st = s.status().await;
        assert_eq!(st["failover"]["mode"], "memory", "{what}: {st}");
        let error = st["failover"]["last_error"].as_str().unwrap_or_default();
        assert!(!error.is_empty() && error.contains(says), "{what}: {st}");
    }
}
