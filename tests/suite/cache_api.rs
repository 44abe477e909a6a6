//! The cache over the wire: a live `outrigger` process, driven over HTTP and
//! over gRPC, on the memory backend and on a real Redis. Bad input included:
//! every rejection must carry the right status and a message, and must not
//! store anything.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use outrigger::api::pb;
use outrigger::api::pb::admin_client::AdminClient;
use outrigger::api::pb::cache_client::CacheClient;
use outrigger_tests::{RedisServer, SidecarOn, Topology, conformance, sidecar, unique};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;

/// A sidecar on the case's topology.
type Target = SidecarOn;

/// Lease waiters look again at least every `cache.lease_poll` in case the
/// fill's notice is lost. Here that is longer than any wait, so a waiter
/// that gets the fill was woken by it.
async fn target(topology: Topology) -> Target {
    let spec = sidecar!().env("OUTRIGGER_CACHE__LEASE_POLL", "60s");
    topology.sidecar(spec, "api").await
}

conformance!(
    target;
    [memory: Memory, with_redis: Redis];
    {
        http_round_trip,
        http_conditions_and_versions,
        http_invalidation_and_listing,
        http_rejects_bad_input_with_json_errors,
        grpc_round_trip,
        grpc_rejects_bad_input_with_status_codes,
        grpc_health_reflection_and_status,
        both_apis_share_one_cache,
        http_get_or_lease_gives_one_lease_to_a_stampede,
        grpc_get_or_lease_gives_one_lease_to_a_stampede,
        get_or_lease_serves_stale_values_and_rejects_bad_input,
    }
);

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn body_json(resp: reqwest::Response) -> Value {
    resp.json().await.expect("JSON body")
}

/// Asserts the JSON error shape and returns the code.
async fn error_code(resp: reqwest::Response) -> String {
    let body = body_json(resp).await;
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "error without a message: {body}");
    body["error"]["code"]
        .as_str()
        .expect("error.code")
        .to_string()
}

async fn http_round_trip(t: &Target) {
    let (s, c) = (&t.sidecar, http());
    let put = c
        .put(s.url("/v1/cache/user%3A42?ttl_ms=60000&tags=users,profile"))
        .body(&b"\x00profile\xff"[..])
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let version = body_json(put).await["version"].as_u64().unwrap();

    let got = c.get(s.url("/v1/cache/user%3A42")).send().await.unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(
        got.headers()["outrigger-version"],
        version.to_string().as_str()
    );
    let ttl: u64 = got.headers()["outrigger-ttl-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60_000).contains(&ttl), "{ttl}");
    assert_eq!(&got.bytes().await.unwrap()[..], b"\x00profile\xff");

    // No TTL: no TTL header.
    c.put(s.url("/v1/cache/forever"))
        .body("v")
        .send()
        .await
        .unwrap();
    let forever = c.get(s.url("/v1/cache/forever")).send().await.unwrap();
    assert!(forever.headers().get("outrigger-ttl-ms").is_none());

    // Sliding expiration.
    let refreshed = c
        .get(s.url("/v1/cache/user%3A42?refresh_ttl=true"))
        .send()
        .await
        .unwrap();
    let ttl: u64 = refreshed.headers()["outrigger-ttl-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ttl >= 59_990, "refresh restarts the TTL: {ttl}");

    let del = c.delete(s.url("/v1/cache/user%3A42")).send().await.unwrap();
    assert_eq!(body_json(del).await, json!({"deleted": true}));
    let del = c.delete(s.url("/v1/cache/user%3A42")).send().await.unwrap();
    assert_eq!(body_json(del).await, json!({"deleted": false}));
    let gone = c.get(s.url("/v1/cache/user%3A42")).send().await.unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(gone).await, "not_found");
}

async fn http_conditions_and_versions(t: &Target) {
    let (s, c) = (&t.sidecar, http());
    let put = |q: &'static str, v: &'static str| {
        c.put(s.url(&format!("/v1/cache/cas{q}"))).body(v).send()
    };
    assert_eq!(
        put("?if=present", "x").await.unwrap().status(),
        StatusCode::PRECONDITION_FAILED
    );
    let first = put("?if=absent", "a").await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let v1 = body_json(first).await["version"].as_u64().unwrap();
    let again = put("?if=absent", "b").await.unwrap();
    assert_eq!(again.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(error_code(again).await, "precondition_failed");

    let cas = c
        .put(s.url(&format!("/v1/cache/cas?if=version:{v1}")))
        .body("c")
        .send()
        .await
        .unwrap();
    assert_eq!(cas.status(), StatusCode::OK);
    let v2 = body_json(cas).await["version"].as_u64().unwrap();
    assert!(v2 > v1);
    let stale = c
        .put(s.url(&format!("/v1/cache/cas?if=version:{v1}")))
        .body("d")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    let now = c.get(s.url("/v1/cache/cas")).send().await.unwrap();
    assert_eq!(now.text().await.unwrap(), "c");
}

async fn http_invalidation_and_listing(t: &Target) {
    let (s, c) = (&t.sidecar, http());
    for (key, tags) in [("a1", "a"), ("b1", "b"), ("ab", "a,b"), ("none", "")] {
        let r = c
            .put(s.url(&format!("/v1/cache/{key}?tags={tags}")))
            .body("v")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let inv = c
        .post(s.url("/v1/cache/invalidate"))
        .json(&json!({"tags": ["a"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(body_json(inv).await, json!({"deleted": 2}));
    for (key, status) in [("a1", 404), ("ab", 404), ("b1", 200), ("none", 200)] {
        let r = c
            .get(s.url(&format!("/v1/cache/{key}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{key}");
    }

    for i in 0..12 {
        c.put(s.url(&format!("/v1/cache/page:{i}")))
            .body("v")
            .send()
            .await
            .unwrap();
    }
    let mut seen = BTreeSet::new();
    let mut cursor = String::new();
    for _ in 0..100 {
        let page = body_json(
            c.get(s.url("/v1/cache"))
                .query(&[("pattern", "page:*"), ("cursor", &cursor), ("limit", "5")])
                .send()
                .await
                .unwrap(),
        )
        .await;
        for key in page["keys"].as_array().unwrap() {
            seen.insert(key.as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, (0..12).map(|i| format!("page:{i}")).collect());

    let inv = c
        .post(s.url("/v1/cache/invalidate"))
        .json(&json!({"pattern": "page:1*"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        body_json(inv).await,
        json!({"deleted": 3}),
        "page:1, page:10, page:11"
    );
}

async fn http_rejects_bad_input_with_json_errors(t: &Target) {
    let (s, c) = (&t.sidecar, http());
    let long_key = "k".repeat(513);
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            c.put(s.url("/v1/cache/k?ttl_ms=-1")).body("v"),
            400,
            "invalid_argument",
        ),
        (
            c.put(s.url("/v1/cache/k?ttl_ms=99999999999999")).body("v"),
            400,
            "invalid_argument",
        ),
        (
            c.put(s.url("/v1/cache/k?if=sometimes")).body("v"),
            400,
            "invalid_argument",
        ),
        (
            c.put(s.url("/v1/cache/k?tags=a,,b")).body("v"),
            400,
            "invalid_argument",
        ),
        (
            c.put(s.url("/v1/cache/k?colour=red")).body("v"),
            400,
            "invalid_argument",
        ),
        (
            c.put(s.url(&format!("/v1/cache/{long_key}"))).body("v"),
            413,
            "too_large",
        ),
        (
            c.put(s.url("/v1/cache/big"))
                .body(vec![0u8; 1024 * 1024 + 1]),
            413,
            "too_large",
        ),
        (
            c.post(s.url("/v1/cache/invalidate")).body("{"),
            400,
            "invalid_argument",
        ),
        (
            c.post(s.url("/v1/cache/invalidate"))
                .json(&json!({"tags": ["a"], "pattern": "*"})),
            400,
            "invalid_argument",
        ),
        (
            c.post(s.url("/v1/cache/invalidate"))
                .json(&json!({"tags": []})),
            400,
            "invalid_argument",
        ),
        (
            c.post(s.url("/v1/cache/invalidate"))
                .json(&json!({"pattern": "a[b"})),
            400,
            "invalid_argument",
        ),
        (
            c.post(s.url("/v1/cache/invalidate"))
                .body(vec![b' '; 65 * 1024]),
            413,
            "too_large",
        ),
        (
            c.get(s.url("/v1/cache?cursor=bogus")),
            400,
            "invalid_argument",
        ),
        (c.get(s.url("/v1/cache?limit=100000")), 413, "too_large"),
        (c.get(s.url("/v1/nothing")), 404, "not_found"),
        (c.patch(s.url("/v1/cache/k")), 405, "method_not_allowed"),
    ];
    for (req, status, code) in cases {
        let req = req.build().unwrap();
        let what = format!("{} {}", req.method(), req.url());
        let resp = c.execute(req).await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{what}");
        assert_eq!(error_code(resp).await, code, "{what}");
    }
    // Nothing was stored by the rejected writes, and the sidecar still serves.
    for key in ["k", "big"] {
        let r = c
            .get(s.url(&format!("/v1/cache/{key}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{key}");
    }
    assert_eq!(
        c.get(s.url("/healthz")).send().await.unwrap().status(),
        StatusCode::OK
    );
}

async fn grpc_round_trip(t: &Target) {
    let mut cache = CacheClient::new(t.sidecar.channel().await);
    let set = cache
        .set(pb::SetRequest {
            key: "g".into(),
            value: "hello".into(),
            ttl_ms: 60_000,
            tags: vec!["greeting".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let got = cache
        .get(pb::GetRequest {
            key: "g".into(),
            refresh_ttl: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.found);
    assert_eq!(&got.value[..], b"hello");
    assert_eq!(got.version, set.version);
    assert!(got.ttl_ms.is_some_and(|t| t <= 60_000 && t > 0));

    let miss = cache
        .get(pb::GetRequest {
            key: "nope".into(),
            refresh_ttl: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!miss.found, "a miss is not an error");

    let many = cache
        .get_many(pb::GetManyRequest {
            keys: vec!["nope".into(), "g".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let found: Vec<(String, bool)> = many.entries.into_iter().map(|e| (e.key, e.found)).collect();
    assert_eq!(found, vec![("nope".into(), false), ("g".into(), true)]);

    let cas = cache
        .set(pb::SetRequest {
            key: "g".into(),
            value: "again".into(),
            condition: pb::Condition::IfVersion.into(),
            expected_version: set.version + 1_000_000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(cas.code(), Code::FailedPrecondition, "{cas:?}");
    let absent = cache
        .set(pb::SetRequest {
            key: "g".into(),
            value: "again".into(),
            condition: pb::Condition::IfAbsent.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(absent.code(), Code::FailedPrecondition);

    let listed = cache
        .list_keys(pb::ListKeysRequest {
            pattern: "g*".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.keys, vec!["g".to_string()]);

    let inv = cache
        .invalidate_tags(pb::InvalidateTagsRequest {
            tags: vec!["greeting".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inv.deleted, 1);
    cache
        .set(pb::SetRequest {
            key: "p:1".into(),
            value: "v".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let inv = cache
        .invalidate_pattern(pb::InvalidatePatternRequest {
            pattern: "p:*".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inv.deleted, 1);
    let del = cache
        .delete(pb::DeleteRequest { key: "p:1".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(!del.deleted);
}

async fn grpc_rejects_bad_input_with_status_codes(t: &Target) {
    let mut cache = CacheClient::new(t.sidecar.channel().await);
    let set = |key: &str, value: Vec<u8>, ttl_ms: u64, condition: i32| pb::SetRequest {
        key: key.into(),
        value: value.into(),
        ttl_ms,
        condition,
        ..Default::default()
    };
    let cases = vec![
        (set("", b"v".to_vec(), 0, 0), Code::InvalidArgument),
        (set("k", b"v".to_vec(), u64::MAX, 0), Code::InvalidArgument),
        (set("k", b"v".to_vec(), 0, 42), Code::InvalidArgument),
        (
            set(&"k".repeat(513), b"v".to_vec(), 0, 0),
            Code::ResourceExhausted,
        ),
        (
            set("k", vec![0; 1024 * 1024 + 1], 0, 0),
            Code::ResourceExhausted,
        ),
        (
            set("k", vec![0; 3 * 1024 * 1024], 0, 0),
            Code::ResourceExhausted,
        ),
    ];
    for (req, code) in cases {
        let what = format!(
            "key {} bytes, value {} bytes",
            req.key.len(),
            req.value.len()
        );
        let status = cache.set(req).await.unwrap_err();
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(!status.message().is_empty());
    }
    let too_many = cache
        .get_many(pb::GetManyRequest {
            keys: (0..1001).map(|i| i.to_string()).collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::ResourceExhausted);
    assert!(
        too_many.message().contains("limits.max_batch"),
        "{too_many:?}"
    );
    let bad_glob = cache
        .invalidate_pattern(pb::InvalidatePatternRequest {
            pattern: "x\\".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_glob.code(), Code::InvalidArgument);
    let got = cache
        .get(pb::GetRequest {
            key: "k".into(),
            refresh_ttl: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!got.found, "rejected writes store nothing");
}

async fn grpc_health_reflection_and_status(t: &Target) {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let channel = t.sidecar.channel().await;
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let reply = stream.message().await.unwrap().expect("one reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let names: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "outrigger.v1.Cache",
        "outrigger.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.contains(expected),
            "{expected} missing from {names:?}"
        );
    }
    // Every service the server says it has is serving (and the server as a
    // whole, ""): enumerated from reflection, so a service added without
    // its health status fails here.
    let mut health = HealthClient::new(channel.clone());
    for service in std::iter::once("").chain(names.iter().map(String::as_str)) {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map(|r| r.into_inner().status);
        assert_eq!(
            status.as_ref().ok(),
            Some(&(ServingStatus::Serving as i32)),
            "{service:?}: {status:?}"
        );
    }
    // (Reflection lists what the descriptors declare, so a service in the
    // proto that the server does not route fails here too.)
    assert!(names.len() >= 7, "{names:?}");

    let mut cache = CacheClient::new(channel.clone());
    cache
        .get(pb::GetRequest {
            key: "absent".into(),
            refresh_ttl: false,
        })
        .await
        .unwrap();
    let status = AdminClient::new(channel)
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.backend,
        if t.redis.is_some() { "redis" } else { "memory" }
    );
    assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
    let stats = status.cache.expect("cache stats");
    assert_eq!((stats.hits, stats.misses), (0, 1));
    assert_eq!(
        stats.keys.is_some(),
        t.redis.is_none(),
        "memory counts keys, Redis does not"
    );
}

async fn both_apis_share_one_cache(t: &Target) {
    let mut cache = CacheClient::new(t.sidecar.channel().await);
    let set = cache
        .set(pb::SetRequest {
            key: "shared".into(),
            value: "from grpc".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let got = http()
        .get(t.sidecar.url("/v1/cache/shared"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.headers()["outrigger-version"],
        set.version.to_string().as_str()
    );
    assert_eq!(got.text().await.unwrap(), "from grpc");
    let metrics = http()
        .get(t.sidecar.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"outrigger_requests_total{primitive="cache",op="set",outcome="ok"} 1"#),
        "{metrics}"
    );
    let backend = if t.redis.is_some() { "redis" } else { "memory" };
    assert!(metrics.contains(&format!("outrigger_backend{{backend=\"{backend}\"}} 1")));
}

// ---- Redis only ------------------------------------------------------------

#[tokio::test]
async fn namespaces_keep_apps_apart_on_one_redis() {
    let redis = RedisServer::start().await;
    let (ns_a, ns_b) = (unique("app-a"), unique("app-b"));
    let a = sidecar!().redis(&redis).namespace(&ns_a).start().await;
    let b = sidecar!().redis(&redis).namespace(&ns_b).start().await;
    let c = http();
    c.put(a.url("/v1/cache/k?tags=t"))
        .body("from a")
        .send()
        .await
        .unwrap();
    c.put(b.url("/v1/cache/k?tags=t"))
        .body("from b")
        .send()
        .await
        .unwrap();
    assert_eq!(
        c.get(a.url("/v1/cache/k"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "from a"
    );
    assert_eq!(
        c.get(b.url("/v1/cache/k"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "from b"
    );

    let mut conn = redis.client().await;
    let keys: BTreeSet<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.contains(&format!("{ns_a}:c:{{k}}")), "{keys:?}");
    assert!(keys.contains(&format!("{ns_b}:c:{{k}}")), "{keys:?}");
    assert!(
        keys.iter()
            .all(|k| k.starts_with(&ns_a) || k.starts_with(&ns_b)),
        "every key carries its namespace: {keys:?}"
    );

    // Invalidating everything in one namespace leaves the other alone.
    let inv = c
        .post(a.url("/v1/cache/invalidate"))
        .json(&json!({"pattern": "*"}))
        .send()
        .await
        .unwrap();
    assert_eq!(body_json(inv).await["deleted"], 1);
    let inv = c
        .post(a.url("/v1/cache/invalidate"))
        .json(&json!({"tags": ["t"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(body_json(inv).await["deleted"], 0);
    assert_eq!(
        c.get(b.url("/v1/cache/k"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "from b"
    );
}

#[tokio::test]
async fn sidecars_sharing_a_namespace_share_the_cache() {
    let redis = RedisServer::start().await;
    let ns = unique("shared");
    let a = sidecar!().redis(&redis).namespace(&ns).start().await;
    let b = sidecar!().redis(&redis).namespace(&ns).start().await;
    let c = http();
    let put = c
        .put(a.url("/v1/cache/k?tags=t"))
        .body("v")
        .send()
        .await
        .unwrap();
    let version = body_json(put).await["version"].as_u64().unwrap();
    let got = c.get(b.url("/v1/cache/k")).send().await.unwrap();
    assert_eq!(
        got.headers()["outrigger-version"],
        version.to_string().as_str()
    );
    let inv = c
        .post(b.url("/v1/cache/invalidate"))
        .json(&json!({"tags": ["t"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(body_json(inv).await["deleted"], 1);
    assert_eq!(
        c.get(a.url("/v1/cache/k")).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
}

/// How long a stampede may take. Its waiters wait up to 30 s, and neither
/// the 60 s lease nor the poll (see [`target`]) ends that sooner: answered
/// within this, they were woken by the fill.
const STAMPEDE: Duration = Duration::from_secs(10);

/// 100 concurrent misses on one key over HTTP: exactly one caller is
/// granted the lease; it fills the key, and every other caller is woken by
/// that write and receives the value.
async fn http_get_or_lease_gives_one_lease_to_a_stampede(t: &Target) {
    use futures::StreamExt;
    let c = reqwest::Client::builder()
        .timeout(STAMPEDE)
        .build()
        .unwrap();
    let url = t.sidecar.url("/v1/cache/hot/lease");
    let mut calls: futures::stream::FuturesUnordered<_> = (0..100)
        .map(|_| {
            c.post(&url)
                .json(&json!({"lease_ms": 60_000, "wait_ms": 30_000}))
                .send()
        })
        .collect();
    let (mut granted, mut filled) = (0, 0);
    while let Some(resp) = calls.next().await {
        let resp = resp.unwrap();
        let outcome = resp.headers()["outrigger-lease"]
            .to_str()
            .unwrap()
            .to_string();
        match (resp.status(), outcome.as_str()) {
            (StatusCode::NO_CONTENT, "granted") => {
                granted += 1;
                // The holder computes and fills.
                let put = c
                    .put(t.sidecar.url("/v1/cache/hot?ttl_ms=60000"))
                    .body("computed once")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(put.status(), StatusCode::OK);
            }
            (StatusCode::OK, "hit") => {
                assert_eq!(granted, 1, "a hit before the fill");
                assert_eq!(resp.text().await.unwrap(), "computed once");
                filled += 1;
            }
            (status, outcome) => panic!("{status} {outcome}: {:?}", resp.text().await),
        }
    }
    assert_eq!((granted, filled), (1, 99));
}

/// The same over gRPC, with every caller on one channel.
async fn grpc_get_or_lease_gives_one_lease_to_a_stampede(t: &Target) {
    let channel = t.sidecar.channel().await;
    let calls = (0..100).map(|_| {
        let mut cache = CacheClient::new(channel.clone());
        async move {
            let reply = cache
                .get_or_lease(pb::GetOrLeaseRequest {
                    key: "hot".into(),
                    lease_ms: 60_000,
                    wait_ms: 30_000,
                    accept_stale: false,
                })
                .await
                .unwrap()
                .into_inner();
            if reply.outcome() == pb::LeaseOutcome::Granted {
                assert!(!reply.found);
                cache
                    .set(pb::SetRequest {
                        key: "hot".into(),
                        value: "computed once".into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            } else {
                assert_eq!(reply.outcome(), pb::LeaseOutcome::Hit);
                assert_eq!(&reply.value[..], b"computed once");
            }
            reply.outcome()
        }
    });
    let outcomes = tokio::time::timeout(STAMPEDE, futures::future::join_all(calls))
        .await
        .expect("every waiter woken by the fill");
    let granted = outcomes
        .iter()
        .filter(|o| **o == pb::LeaseOutcome::Granted)
        .count();
    assert_eq!(granted, 1, "{outcomes:?}");
}

async fn get_or_lease_serves_stale_values_and_rejects_bad_input(t: &Target) {
    let c = http();
    let lease = |body: Value| {
        c.post(t.sidecar.url("/v1/cache/page/lease"))
            .json(&body)
            .send()
    };
    let put = c
        .put(t.sidecar.url("/v1/cache/page?ttl_ms=100&stale_ms=60000"))
        .body("yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    outrigger_tests::eventually(Duration::from_secs(5), "the page to expire", || async {
        let resp = c.get(t.sidecar.url("/v1/cache/page")).send().await.unwrap();
        (resp.status() == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    // The one who recomputes gets the stale value along with the lease.
    let first = lease(json!({"lease_ms": 30_000, "accept_stale": true}))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["outrigger-lease"], "granted");
    assert_eq!(first.text().await.unwrap(), "yesterday");
    // The others are served the stale value at once.
    let other = lease(json!({"lease_ms": 30_000, "wait_ms": 10_000, "accept_stale": true}))
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    assert_eq!(other.headers()["outrigger-lease"], "stale");
    assert_eq!(other.text().await.unwrap(), "yesterday");
    // Those who will not take it and do not wait: 409 with the reason.
    let strict = lease(json!({"lease_ms": 30_000})).await.unwrap();
    assert_eq!(strict.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(strict).await, "conflict");
    // gRPC says the same.
    let mut cache = CacheClient::new(t.sidecar.channel().await);
    let stale = cache
        .get_or_lease(pb::GetOrLeaseRequest {
            key: "page".into(),
            lease_ms: 30_000,
            wait_ms: 0,
            accept_stale: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stale.outcome(), pb::LeaseOutcome::Stale);
    assert_eq!(&stale.value[..], b"yesterday");
    let pending = cache
        .get_or_lease(pb::GetOrLeaseRequest {
            key: "page".into(),
            lease_ms: 30_000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(pending.code(), Code::Aborted, "{pending:?}");
    assert!(pending.message().contains("lease"), "{pending:?}");
    // Bad input.
    for body in [
        json!({"lease_ms": 0}),
        json!({"lease_ms": 1000, "wait_ms": 999_999_999u64}),
        json!({"lease_ms": "soon"}),
        json!({"wait_ms": 10}),
        json!({"lease_ms": 1000, "later": true}),
    ] {
        let resp = lease(body.clone()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error_code(resp).await, "invalid_argument", "{body}");
    }
    let bad = c
        .put(t.sidecar.url("/v1/cache/forever?stale_ms=1000"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let bad = cache
        .get_or_lease(pb::GetOrLeaseRequest {
            key: "page".into(),
            lease_ms: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

/// The worst globs the key limit allows (a star before every other byte,
/// never matching), over the longest keys, listed and invalidated four at
/// a time on the memory backend: each finishes in bounded time, and the
/// probes and other requests answer throughout (the backtracking matcher
/// took seconds for 8-byte patterns over 20 keys and stopped the sidecar
/// answering at all).
#[tokio::test]
async fn the_worst_patterns_neither_pin_a_core_nor_starve_the_probes() {
    let s = sidecar!().start().await;
    let c = http();
    for i in 0..1000 {
        let key = format!("{}{i:04}", "a".repeat(508));
        let put = c
            .put(s.url(&format!("/v1/cache/{key}")))
            .body("v")
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 200);
    }
    let worst = format!("{}b", "*a".repeat(255));
    let heavy = (0..4).map(|i| {
        let (c, url) = (c.clone(), s.url(""));
        let worst = worst.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let resp = if i % 2 == 0 {
                c.get(format!("{url}/v1/cache"))
                    .query(&[("pattern", worst.as_str()), ("limit", "100")])
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
            } else {
                c.post(format!("{url}/v1/cache/invalidate"))
                    .json(&json!({ "pattern": worst }))
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
            };
            assert_eq!(resp.unwrap().status(), 200);
            started.elapsed()
        })
    });
    let heavy = futures::future::join_all(heavy);
    let probes = async {
        let mut slowest = Duration::ZERO;
        for _ in 0..50 {
            let started = Instant::now();
            let health = c
                .get(s.url("/healthz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            assert_eq!(health.expect("/healthz answers").status(), 200);
            slowest = slowest.max(started.elapsed());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        slowest
    };
    let (took, slowest_probe) = tokio::join!(heavy, probes);
    for took in took {
        assert!(
            took.unwrap() < Duration::from_secs(20),
            "a listing took over 20 s"
        );
    }
    assert!(
        slowest_probe < Duration::from_secs(1),
        "a probe waited {slowest_probe:?}"
    );
}
