//! Namespace isolation: two sidecars with different namespaces on one real
//! Redis. Everything sidecar A does stays invisible and untouchable through
//! sidecar B, by every route: reads, batch reads, listings, deletes, tag and
//! pattern invalidations (globs included), locks, rate limits, presence,
//! pub/sub (channels and patterns), counters, queues and schedules, and maps (fields, listings,
//! deletes and watches).

use std::time::Duration;

use futures::StreamExt;
use outrigger::api::pb;
use outrigger::api::pb::cache_client::CacheClient;
use outrigger::api::pb::pub_sub_client::PubSubClient;
use outrigger_tests::{RedisServer, Sidecar, Sse, eventually, read_until, sidecar, unique};
use serde_json::{Value, json};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn start(redis: &RedisServer, ns: &str) -> Sidecar {
    sidecar!()
        .redis(redis)
        .namespace(ns)
        .env(
            "OUTRIGGER_RATELIMIT__POLICIES__ONCE__ALGORITHM",
            "fixed_window",
        )
        .env("OUTRIGGER_RATELIMIT__POLICIES__ONCE__LIMIT", "1")
        .env("OUTRIGGER_RATELIMIT__POLICIES__ONCE__PERIOD", "1h")
        .start()
        .await
}

async fn json_of(resp: reqwest::Response) -> Value {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}"))
}

// Names chosen so that one is a prefix of the other, both ways round: a
// key, listing or pattern built without its separator would reach `nsx:…`
// from `ns`.
#[tokio::test]
async fn a_namespace_sees_and_touches_nothing_of_one_it_prefixes() {
    let ns = unique("iso");
    isolation(&format!("{ns}x"), &ns).await;
}

#[tokio::test]
async fn a_namespace_sees_and_touches_nothing_of_one_that_prefixes_it() {
    let ns = unique("iso");
    isolation(&ns, &format!("{ns}x")).await;
}

/// Whatever A (namespace `ns_a`) holds, B (`ns_b`, on the same Redis) can
/// neither see nor touch.
async fn isolation(ns_a: &str, ns_b: &str) {
    let redis = RedisServer::start().await;
    let a = start(&redis, ns_a).await;
    let b = start(&redis, ns_b).await;
    let c = http();

    // A's state: cache entries (tagged, with glob-looking and brace-laden
    // keys), a held lock, a used-up rate limit, a present member.
    let keys = ["k", "user:1", "a*b", "x}:c:{y", "{k}"];
    for key in keys {
        let url = a.url(&format!(
            "/v1/cache/{}?tags=t",
            key.replace('{', "%7B").replace('}', "%7D")
        ));
        let resp = c.put(url).body("from-a").send().await.unwrap();
        assert_eq!(resp.status(), 200, "{key}");
    }
    let lock = json_of(
        c.post(a.url("/v1/locks/L/acquire"))
            .json(&json!({"ttl_ms": 60_000}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(lock["token"].is_string(), "{lock}");
    let first = c
        .post(a.url("/v1/ratelimit/once/check"))
        .json(&json!({"key": "u"}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let resp = c
        .put(a.url("/v1/presence/room/alice"))
        .json(&json!({"metadata": {}, "ttl_ms": 60_000}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = c
        .post(a.url("/v1/counters/C/incr"))
        .json(&json!({"by": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // B watches the map A is about to write.
    let mut map_events_b = Sse::open(b.url("/v1/map-events/M"), None).await;
    let resp = c
        .put(a.url("/v1/maps/M/f?ttl_ms=60000"))
        .body("from-a")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Through B: nothing of it is visible...
    let counter = json_of(c.get(b.url("/v1/counters/C")).send().await.unwrap()).await;
    assert_eq!(counter["exists"], false, "{counter}");
    assert_eq!(
        c.get(b.url("/v1/maps/M/f")).send().await.unwrap().status(),
        404
    );
    let map = json_of(c.get(b.url("/v1/maps/M")).send().await.unwrap()).await;
    assert_eq!(map, json!({"version": 0, "fields": []}));
    let deleted = json_of(c.delete(b.url("/v1/maps/M")).send().await.unwrap()).await;
    assert_eq!(deleted["existed"], false);
    // B hears only its own map events.
    let resp = c
        .put(b.url("/v1/maps/M/g"))
        .body("from-b")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (event, data, _) = map_events_b.next().await;
    assert_eq!(event, "updated");
    assert!(
        data.contains("from-b") && !data.contains("from-a"),
        "{data}"
    );
    let mine = json_of(
        c.get(a.url("/v1/maps/M?field=f&field=g"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(mine["fields"][0]["value"], "from-a", "{mine}");
    assert_eq!(
        mine["fields"].as_array().unwrap().len(),
        1,
        "A never sees B's field: {mine}"
    );
    let counter = json_of(c.get(a.url("/v1/counters/C")).send().await.unwrap()).await;
    assert_eq!(counter["value"], 5, "{counter}");
    // Queues and schedules: A's job and schedule are not B's.
    let resp = c
        .post(a.url("/v1/queues/Q/jobs"))
        .body("job-a")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = c
        .put(a.url("/v1/schedules/S"))
        .json(&json!({"queue": "Q", "cron": "0 3 * * *"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let stats = json_of(c.get(b.url("/v1/queues/Q")).send().await.unwrap()).await;
    assert_eq!(
        (&stats["ready"], &stats["in_flight"]),
        (&json!(0), &json!(0)),
        "{stats}"
    );
    let claimed = json_of(
        c.post(b.url("/v1/queues/Q/claim"))
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(claimed["jobs"], json!([]), "{claimed}");
    let listed = json_of(c.get(b.url("/v1/queues")).send().await.unwrap()).await;
    assert_eq!(listed["queues"], json!([]), "{listed}");
    assert_eq!(
        c.get(b.url("/v1/schedules/S"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let listed = json_of(c.get(b.url("/v1/schedules")).send().await.unwrap()).await;
    assert_eq!(listed["schedules"], json!([]), "{listed}");
    let claimed = json_of(
        c.post(a.url("/v1/queues/Q/claim"))
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(claimed["jobs"][0]["payload"], "job-a", "{claimed}");
    for key in keys {
        let url = b.url(&format!(
            "/v1/cache/{}",
            key.replace('{', "%7B").replace('}', "%7D")
        ));
        assert_eq!(c.get(url).send().await.unwrap().status(), 404, "{key}");
    }
    let mut cache_b = CacheClient::new(b.channel().await);
    let many = cache_b
        .get_many(pb::GetManyRequest {
            keys: keys.iter().map(|k| k.to_string()).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(many.entries.iter().all(|e| !e.found), "{many:?}");
    for pattern in ["*", "k", "*k*", "\\*", "[a-z]*"] {
        let listed = json_of(
            c.get(b.url("/v1/cache"))
                .query(&[("pattern", pattern)])
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(listed["keys"], json!([]), "pattern {pattern}: {listed}");
    }
    let members = json_of(c.get(b.url("/v1/presence/room")).send().await.unwrap()).await;
    assert_eq!(members["members"], json!([]), "{members}");
    let rooms = json_of(
        c.get(b.url("/v1/members/alice/rooms"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(rooms["rooms"], json!([]), "{rooms}");

    // ...its lock and rate limit are not B's (B sees no holder of L)...
    let held = json_of(c.get(b.url("/v1/locks")).send().await.unwrap()).await;
    assert_eq!(held["items"], json!([]), "{held}");
    let free = c.get(b.url("/v1/locks/L")).send().await.unwrap();
    assert_eq!(free.status(), 404, "A's lock L is not B's to see");
    let lock_b = c
        .post(b.url("/v1/locks/L/acquire"))
        .json(&json!({"ttl_ms": 60_000}))
        .send()
        .await
        .unwrap();
    assert_eq!(lock_b.status(), 200, "B's lock L is its own");
    let check_b = c
        .post(b.url("/v1/ratelimit/once/check"))
        .json(&json!({"key": "u"}))
        .send()
        .await
        .unwrap();
    assert_eq!(check_b.status(), 200, "B's bucket is its own");
    let release = c
        .post(b.url("/v1/locks/L/release"))
        .json(&json!({"token": lock["token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(release.status(), 409, "A's token means nothing to B");

    // ...and nothing B deletes or invalidates reaches it.
    for key in keys {
        let url = b.url(&format!(
            "/v1/cache/{}",
            key.replace('{', "%7B").replace('}', "%7D")
        ));
        c.delete(url).send().await.unwrap();
    }
    for body in [
        json!({"tags": ["t"]}),
        json!({"pattern": "*"}),
        json!({"pattern": "*}*"}),
    ] {
        let resp = json_of(
            c.post(b.url("/v1/cache/invalidate"))
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(resp["deleted"], 0, "{body}: {resp}");
    }
    c.delete(b.url("/v1/presence/room/alice"))
        .send()
        .await
        .unwrap();
    for key in keys {
        let url = a.url(&format!(
            "/v1/cache/{}",
            key.replace('{', "%7B").replace('}', "%7D")
        ));
        let resp = c.get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{key} survived");
        assert_eq!(resp.text().await.unwrap(), "from-a");
    }
    let members = json_of(c.get(a.url("/v1/presence/room")).send().await.unwrap()).await;
    assert_eq!(members["members"][0]["member"], "alice", "{members}");
    // A still holds its lock: only its own token releases it.
    let release = c
        .post(a.url("/v1/locks/L/release"))
        .json(&json!({"token": lock["token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(release).await["released"], true);
    let again = c
        .post(a.url("/v1/ratelimit/once/check"))
        .json(&json!({"key": "u"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 429, "A's bucket is still used up");

    // Pub/sub: B subscribed to the channel and to every channel never
    // hears A. B's own messages prove the subscription is live: the one
    // B publishes after A's must be the next thing B receives.
    let mut pubsub_b = PubSubClient::new(b.channel().await);
    let mut stream = pubsub_b
        .subscribe(pb::SubscribeRequest {
            channels: vec!["news".into()],
            patterns: vec!["*".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut next_payload = async || -> String {
        let event = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("a message within 5 s")
            .expect("stream open")
            .unwrap();
        match event.event {
            Some(pb::subscribe_event::Event::Message(m)) => {
                String::from_utf8(m.payload.to_vec()).unwrap()
            }
            other => panic!("{other:?}"),
        }
    };
    let publish = |s: &Sidecar, payload: &str| {
        c.post(s.url("/v1/pubsub/news"))
            .body(payload.to_string())
            .send()
    };
    // Live once B hears itself (twice: channel and pattern).
    let mut live = false;
    for _ in 0..50 {
        assert_eq!(publish(&b, "b-ready").await.unwrap().status(), 200);
        if let Ok(payload) = tokio::time::timeout(Duration::from_millis(200), next_payload()).await
        {
            assert_eq!(payload, "b-ready");
            live = true;
            break;
        }
    }
    assert!(live, "B's subscription never went live");
    assert_eq!(publish(&a, "from-a").await.unwrap().status(), 200);
    assert_eq!(publish(&b, "b-after").await.unwrap().status(), 200);
    loop {
        let payload = next_payload().await;
        assert_ne!(payload, "from-a", "B heard A's message");
        if payload == "b-after" {
            break;
        }
        assert_eq!(payload, "b-ready", "only B's own messages");
    }
}

/// The deployment the security model recommends on a shared Redis: an
/// ACL user that may touch only its namespace's keys and channels. Every
/// primitive works through it (nothing the sidecar does reaches outside
/// the namespace), and the user really is confined.
#[tokio::test]
async fn every_primitive_works_for_an_acl_user_confined_to_its_namespace() {
    let redis = RedisServer::start().await;
    let ns = unique("acl");
    let mut admin = redis.client().await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("app")
        .arg("on")
        .arg(">app-secret")
        .arg("resetkeys")
        .arg(format!("~{ns}:*"))
        .arg("resetchannels")
        .arg(format!("&{ns}:*"))
        .arg("+@all")
        .arg("-@dangerous")
        .arg("-@admin")
        .arg("+info")
        .query_async(&mut admin)
        .await
        .unwrap();
    let url = format!("redis://app:app-secret@127.0.0.1:{}", redis.port);
    let s = sidecar!()
        .env("OUTRIGGER_REDIS__URL", &url)
        .namespace(&ns)
        .env("OUTRIGGER_RATELIMIT__POLICIES__API__ALGORITHM", "gcra")
        .env("OUTRIGGER_RATELIMIT__POLICIES__API__LIMIT", "100")
        .env("OUTRIGGER_RATELIMIT__POLICIES__API__PERIOD", "1s")
        .start()
        .await;
    let c = http();

    // A subscriber first (SSE), so the publish below has someone to reach.
    let mut feed = c.get(s.url("/v1/pubsub/news")).send().await.unwrap();
    assert_eq!(feed.status(), 200);

    let ok = |what: &'static str| {
        move |resp: reqwest::Response| {
            assert!(resp.status().is_success(), "{what}: {}", resp.status());
            resp
        }
    };
    ok("set")(
        c.put(s.url("/v1/cache/user:1?tags=users&ttl_ms=60000&stale_ms=1000"))
            .body("v")
            .send()
            .await
            .unwrap(),
    );
    ok("get")(c.get(s.url("/v1/cache/user:1")).send().await.unwrap());
    ok("lease")(
        c.post(s.url("/v1/cache/report/lease"))
            .json(&json!({"lease_ms": 1000}))
            .send()
            .await
            .unwrap(),
    );
    let listed = json_of(
        c.get(s.url("/v1/cache?pattern=user:*"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(listed["keys"], json!(["user:1"]));
    let r = json_of(
        c.post(s.url("/v1/cache/invalidate"))
            .json(&json!({"tags": ["users"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r["deleted"], 1, "{r}");
    ok("set")(
        c.put(s.url("/v1/cache/user:2"))
            .body("v")
            .send()
            .await
            .unwrap(),
    );
    let r = json_of(
        c.post(s.url("/v1/cache/invalidate"))
            .json(&json!({"pattern": "user:*"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r["deleted"], 1, "{r}");
    let lock = json_of(
        c.post(s.url("/v1/locks/L/acquire"))
            .json(&json!({"ttl_ms": 10_000}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(lock["fence"].as_u64().is_some_and(|f| f > 0), "{lock}");
    let held = json_of(c.get(s.url("/v1/locks?pattern=L")).send().await.unwrap()).await;
    assert_eq!(held["items"][0]["fence"], lock["fence"], "{held}");
    ok("release")(
        c.post(s.url("/v1/locks/L/release"))
            .json(&json!({"token": lock["token"]}))
            .send()
            .await
            .unwrap(),
    );
    ok("semaphore")(
        c.post(s.url("/v1/semaphores/S/acquire"))
            .json(&json!({"limit": 2, "ttl_ms": 10_000}))
            .send()
            .await
            .unwrap(),
    );
    let in_use = json_of(c.get(s.url("/v1/semaphores/S")).send().await.unwrap()).await;
    assert_eq!(in_use["held"], 1, "{in_use}");
    ok("rate limit")(
        c.post(s.url("/v1/ratelimit/api/check"))
            .json(&json!({"key": "u"}))
            .send()
            .await
            .unwrap(),
    );
    ok("join")(
        c.put(s.url("/v1/presence/room/alice"))
            .json(&json!({"metadata": {}, "ttl_ms": 60_000}))
            .send()
            .await
            .unwrap(),
    );
    let members = json_of(c.get(s.url("/v1/presence/room")).send().await.unwrap()).await;
    assert_eq!(members["members"][0]["member"], "alice", "{members}");
    let published = json_of(
        c.post(s.url("/v1/pubsub/news?durable=true"))
            .body("hello")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let heard = read_until(&mut feed, "hello", Duration::from_secs(5)).await;
    assert!(heard, "the subscriber hears the publish");
    // With +info the epoch carries the server's replication id, so a
    // failover starts a new one.
    let epoch = published["epoch"].as_str().unwrap();
    assert!(!epoch.ends_with("@unknown"), "{published}");
    // Without it durable channels still work, blind to failovers, and the
    // sidecar says so.
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("app")
        .arg("-info")
        .query_async(&mut admin)
        .await
        .unwrap();
    let blind = json_of(
        c.post(s.url("/v1/pubsub/blind?durable=true"))
            .body("x")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        blind["epoch"].as_str().unwrap().ends_with("@unknown"),
        "{blind}"
    );
    eventually(Duration::from_secs(5), "the warning about INFO", || {
        let warned = s.log().contains("grant it +info");
        async move { warned.then_some(()) }
    })
    .await;
    ok("counter")(
        c.post(s.url("/v1/counters/C/incr"))
            .json(&json!({"by": 1, "ttl_ms": 60_000}))
            .send()
            .await
            .unwrap(),
    );
    // Maps: a field with a TTL (the reap index), read, listed, watched and
    // reaped through the confined user.
    let mut map_events = Sse::open(s.url("/v1/map-events/M"), None).await;
    ok("map set")(
        c.put(s.url("/v1/maps/M/f?ttl_ms=100&map_ttl_ms=60000&sliding=true"))
            .body("v")
            .send()
            .await
            .unwrap(),
    );
    ok("map incr")(
        c.post(s.url("/v1/maps/M/n/incr"))
            .json(&json!({"by": 1}))
            .send()
            .await
            .unwrap(),
    );
    ok("map list")(c.get(s.url("/v1/maps/M")).send().await.unwrap());
    assert_eq!(map_events.next().await.0, "updated");
    assert_eq!(map_events.next().await.0, "updated");
    assert_eq!(map_events.next().await.0, "expired");
    ok("map delete")(c.delete(s.url("/v1/maps/M")).send().await.unwrap());
    // Queues: enqueue, a waiting claim, ack, stats, dead jobs, listing and
    // a schedule ticking, all through the confined user.
    let enqueued = json_of(ok("enqueue")(
        c.post(s.url("/v1/queues/Q/jobs?dedup_id=d"))
            .body("j")
            .send()
            .await
            .unwrap(),
    ))
    .await;
    let claimed = json_of(ok("claim")(
        c.post(s.url("/v1/queues/Q/claim"))
            .json(&json!({"wait_ms": 1000}))
            .send()
            .await
            .unwrap(),
    ))
    .await;
    let job = &claimed["jobs"][0];
    assert_eq!(job["id"], enqueued["id"], "{claimed}");
    ok("ack")(
        c.post(s.url(&format!(
            "/v1/queues/Q/jobs/{}/ack",
            job["id"].as_str().unwrap()
        )))
        .json(&json!({"receipt": job["receipt"]}))
        .send()
        .await
        .unwrap(),
    );
    ok("queue stats")(c.get(s.url("/v1/queues/Q")).send().await.unwrap());
    ok("dead jobs")(c.get(s.url("/v1/queues/Q/dead")).send().await.unwrap());
    ok("queue list")(c.get(s.url("/v1/queues")).send().await.unwrap());
    ok("schedule")(
        c.put(s.url("/v1/schedules/S"))
            .json(&json!({"queue": "ticks", "every_ms": 1000}))
            .send()
            .await
            .unwrap(),
    );
    let ticked = json_of(ok("scheduled job")(
        c.post(s.url("/v1/queues/ticks/claim"))
            .json(&json!({"wait_ms": 10000}))
            .send()
            .await
            .unwrap(),
    ))
    .await;
    assert_eq!(ticked["jobs"].as_array().unwrap().len(), 1, "{ticked}");
    let job = &ticked["jobs"][0];
    // (Another tick may be claimed by it: the schedule runs on.)
    ok("claim carrying an ack")(
        c.post(s.url("/v1/queues/ticks/claim"))
            .json(&json!({"ack": [{"id": job["id"], "receipt": job["receipt"]}]}))
            .send()
            .await
            .unwrap(),
    );
    ok("schedule delete")(c.delete(s.url("/v1/schedules/S")).send().await.unwrap());

    // Nothing was refused: the sidecar never left Redis.
    let status = json_of(c.get(s.url("/v1/admin/status")).send().await.unwrap()).await;
    assert_eq!(status["failover"]["mode"], "redis", "{status}");
    assert_eq!(status["failover"]["transitions"], 0, "{status}");

    // And the user is confined: outside the namespace it may do nothing.
    let client = redis::Client::open(url).unwrap();
    let mut app = client.get_multiplexed_async_connection().await.unwrap();
    let err = redis::cmd("SET")
        .arg("other:key")
        .arg("x")
        .query_async::<()>(&mut app)
        .await
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("noperm"), "{err}");
    let err = redis::cmd("PUBLISH")
        .arg("other:chan")
        .arg("x")
        .query_async::<()>(&mut app)
        .await
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("noperm"), "{err}");
}

/// A plugin that rewrites every target at another namespace's keys cannot
/// reach them: a rewritten target is a name inside the sidecar's own
/// namespace, however it is spelled.
#[tokio::test]
async fn a_plugin_rewrite_cannot_reach_another_namespace() {
    let redis = RedisServer::start().await;
    let ns_a = unique("victim");
    let a = start(&redis, &ns_a).await;
    let c = http();
    let put = c
        .put(a.url("/v1/cache/secret?tags=t"))
        .body("a-data")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let mut conn = redis.client().await;
    let keys_of_a = async |conn: &mut redis::aio::MultiplexedConnection| {
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{ns_a}:*"))
            .query_async(conn)
            .await
            .unwrap();
        keys.sort();
        keys
    };
    let before = keys_of_a(&mut conn).await;

    let dir = tempfile::tempdir().unwrap();
    for target in [
        "secret".to_string(),
        "}:c:{secret".to_string(),
        format!("{ns_a}:c:{{secret}}"),
        format!("../{ns_a}:c:{{secret}}"),
        "*".to_string(),
    ] {
        let ns_b = unique("attacker");
        let file = dir.path().join(format!("{ns_b}.toml"));
        std::fs::write(
            &file,
            format!(
                "[[plugins]]\nname = \"escape\"\nhooks = [\"authorize\"]\npath = {:?}\nconfig = {{ mode = \"rewrite\", target = {:?} }}\n",
                outrigger_tests::plugin_wasm("hostile").display().to_string(),
                target
            ),
        )
        .unwrap();
        let b = sidecar!()
            .redis(&redis)
            .namespace(&ns_b)
            .arg("--config")
            .arg(file.display().to_string())
            .start()
            .await;
        // Reads through the rewrite see nothing of A...
        let get = c.get(b.url("/v1/cache/anything")).send().await.unwrap();
        assert_eq!(get.status(), 404, "{target:?}");
        // ...a write through it lands in B, under the rewritten name...
        let put = c
            .put(b.url("/v1/cache/anything"))
            .body("b-data")
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 200, "{target:?}");
        let landed: bool = redis::cmd("EXISTS")
            .arg(format!("{ns_b}:c:{{{target}}}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(landed, "{target:?}: the rewrite applied, inside B");
        // ...and so do deletes and invalidations.
        for request in [
            c.put(b.url("/v1/cache/anything")).body("b-data"),
            c.delete(b.url("/v1/cache/anything")),
            c.post(b.url("/v1/cache/invalidate"))
                .json(&json!({"tags": ["t"]})),
            c.post(b.url("/v1/cache/invalidate"))
                .json(&json!({"pattern": "*"})),
        ] {
            let status = request.send().await.unwrap().status();
            assert!(status.is_success() || status == 404, "{target:?}: {status}");
        }
        let value = c.get(a.url("/v1/cache/secret")).send().await.unwrap();
        assert_eq!(value.text().await.unwrap(), "a-data", "{target:?}");
        assert_eq!(keys_of_a(&mut conn).await, before, "{target:?}");
    }
}
