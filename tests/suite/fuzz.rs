//! Hostile input, generated. Every gRPC request decoder (but the Lock.Hold
//! conversation's and the argument-less Admin.ReloadPlugins') gets
//! thousands of messages made by mutating valid encodings (flipped and inserted bytes,
//! truncations, stray fields, huge length prefixes, hostile field values);
//! HTTP keys get random binary and oversized names. The sidecar must answer
//! every one with a clear status (never `INTERNAL` or `UNKNOWN`, never a
//! 5xx), store nothing it refused, and stay up; a share of tame requests
//! (tricky but valid values, unmangled) proves the generator reaches past
//! validation: every method both succeeds and is refused. Both run on the
//! memory backend and on Redis, where hostile names meet Lua scripts, hash
//! tags and `SCAN` globs. (The HTTP request decoders are also fuzzed from
//! the OpenAPI document by schemathesis, in `scripts/fuzz-contract.sh`.)
//!
//! The seed is printed; `FUZZ_SEED=... cargo test -p outrigger-tests
//! --test suite -- fuzz::` replays a run.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use outrigger::api::pb;
use outrigger_tests::{Sidecar, SidecarOn, Topology, conformance, sidecar};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Sends and receives message bodies as raw bytes.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Self::Error> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

fn seed() -> u64 {
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("FUZZ_SEED={seed}");
    seed
}

/// Names that are valid but hard on a backend: globs, braces that look
/// like hash tags, separators, non-ASCII, a backslash.
const TRICKY: &[&str] = &[
    "*?[a-",
    "}{:}{",
    "{k0}",
    "a:b",
    "ключ-🔑",
    "\\",
    "k0",
    "k1",
    "k2",
];

/// Values for one request: hostile ones, or tame ones (tricky but valid,
/// in range), so that a share of requests gets past validation.
struct Gen<'a> {
    rng: &'a mut StdRng,
    tame: bool,
}

impl Gen<'_> {
    fn s(&mut self) -> String {
        if self.tame {
            TRICKY[self.rng.random_range(0..TRICKY.len())].to_string()
        } else {
            hostile(self.rng)
        }
    }

    fn n(&mut self) -> u64 {
        if self.tame {
            self.rng.random_range(1..5_000)
        } else {
            hostile_number(self.rng)
        }
    }

    /// How many of something: up to `tame` when tame, `hostile` otherwise.
    fn count(&mut self, tame: usize, hostile: usize) -> usize {
        self.rng
            .random_range(0..if self.tame { tame } else { hostile })
    }

    fn bit(&mut self) -> bool {
        self.rng.random()
    }
}

/// A hostile string: empty, huge, control characters, globs, braces,
/// non-ASCII, or plain.
fn hostile(rng: &mut StdRng) -> String {
    match rng.random_range(0..8) {
        0 => String::new(),
        1 => "k".repeat(rng.random_range(500..3000)),
        2 => "\0\r\n\t\u{7f}".into(),
        3 => "*?[a-".into(),
        4 => "}{:}{".into(),
        5 => "ключ-🔑".into(),
        6 => "\\".into(),
        _ => format!("k{}", rng.random_range(0..5)),
    }
}

fn hostile_number(rng: &mut StdRng) -> u64 {
    match rng.random_range(0..5) {
        0 => 0,
        1 => u64::MAX,
        2 => u64::from(u32::MAX) + 1,
        3 => rng.random_range(1..100),
        _ => rng.random(),
    }
}

/// A request for each method, with hostile or tame field values.
fn request(method: &str, g: &mut Gen) -> Vec<u8> {
    match method {
        "Cache/Get" => pb::GetRequest {
            key: g.s(),
            refresh_ttl: g.bit(),
        }
        .encode_to_vec(),
        "Cache/GetMany" => pb::GetManyRequest {
            keys: (0..g.count(20, 1500) + 1).map(|_| g.s()).collect(),
        }
        .encode_to_vec(),
        "Cache/Set" => pb::SetRequest {
            key: g.s(),
            value: vec![0xff; g.count(2048, 2048)].into(),
            ttl_ms: g.n(),
            tags: (0..g.count(5, 40)).map(|_| g.s()).collect(),
            expected_version: if g.tame { 0 } else { g.n() },
            stale_ms: if g.tame { 0 } else { g.n() },
            ..Default::default()
        }
        .encode_to_vec(),
        "Cache/Delete" => pb::DeleteRequest { key: g.s() }.encode_to_vec(),
        "Cache/InvalidateTags" => pb::InvalidateTagsRequest {
            tags: (0..g.count(5, 1200) + 1).map(|_| g.s()).collect(),
        }
        .encode_to_vec(),
        "Cache/InvalidatePattern" => {
            pb::InvalidatePatternRequest { pattern: g.s() }.encode_to_vec()
        }
        "Cache/ListKeys" => pb::ListKeysRequest {
            pattern: g.s(),
            cursor: if g.tame { String::new() } else { g.s() },
            limit: if g.tame {
                g.n() as u32 % 100 + 1
            } else {
                g.n() as u32
            },
        }
        .encode_to_vec(),
        "Cache/GetOrLease" => pb::GetOrLeaseRequest {
            key: g.s(),
            lease_ms: g.n(),
            wait_ms: g.n() % 50,
            accept_stale: g.bit(),
        }
        .encode_to_vec(),
        "Lock/Acquire" => pb::AcquireRequest {
            name: g.s(),
            ttl_ms: g.n(),
            wait_ms: g.n() % 50,
        }
        .encode_to_vec(),
        "Lock/Release" => pb::ReleaseRequest {
            name: g.s(),
            token: g.s(),
        }
        .encode_to_vec(),
        "Lock/Extend" => pb::ExtendRequest {
            name: g.s(),
            token: g.s(),
            ttl_ms: g.n(),
        }
        .encode_to_vec(),
        "Lock/AcquirePermit" => pb::AcquirePermitRequest {
            name: g.s(),
            limit: if g.tame { 5 } else { g.n() as u32 },
            ttl_ms: g.n(),
            wait_ms: g.n() % 50,
        }
        .encode_to_vec(),
        "Lock/ReleasePermit" => pb::ReleasePermitRequest {
            name: g.s(),
            token: g.s(),
        }
        .encode_to_vec(),
        "RateLimit/Check" | "RateLimit/Peek" => check_request(g).encode_to_vec(),
        "RateLimit/CheckAll" => pb::CheckAllRequest {
            checks: (0..g.count(3, 300) + 1).map(|_| check_request(g)).collect(),
        }
        .encode_to_vec(),
        "RateLimit/Reset" => pb::ResetLimitRequest {
            policy: if g.tame { "k0".into() } else { g.s() },
            key: g.s(),
        }
        .encode_to_vec(),
        "Counter/Increment" => {
            let bound = |g: &mut Gen| (!g.tame && g.bit()).then(|| g.n() as i64);
            pb::IncrementRequest {
                name: g.s(),
                by: if g.tame {
                    g.rng.random_range(-5..5)
                } else {
                    g.n() as i64
                },
                ttl_ms: if g.tame { 0 } else { g.n() },
                min: bound(g),
                max: bound(g),
            }
            .encode_to_vec()
        }
        "Counter/Get" => pb::GetCounterRequest { name: g.s() }.encode_to_vec(),
        "Counter/Reset" => pb::ResetCounterRequest { name: g.s() }.encode_to_vec(),
        "Map/Get" => pb::GetFieldsRequest {
            map: g.s(),
            fields: (0..g.count(5, 2000)).map(|_| g.s()).collect(),
        }
        .encode_to_vec(),
        "Map/List" => pb::ListFieldsRequest {
            map: g.s(),
            cursor: if g.tame { String::new() } else { g.s() },
            limit: if g.tame { 10 } else { g.n() as u32 },
        }
        .encode_to_vec(),
        "Map/Update" => {
            use pb::map_change::Change;
            let changes = (0..g.count(3, 300) + 1)
                .map(|_| {
                    let change = match g.rng.random_range(0..3) {
                        0 => Change::Set(pb::SetField {
                            field: g.s(),
                            value: vec![7; g.count(64, 4096)].into(),
                            ttl_ms: if g.tame { 0 } else { g.n() },
                            condition: None,
                        }),
                        1 => Change::Delete(g.s()),
                        _ => Change::Increment(pb::IncrementField {
                            field: g.s(),
                            by: Some(pb::increment_field::By::Int(if g.tame {
                                1
                            } else {
                                g.n() as i64
                            })),
                        }),
                    };
                    pb::MapChange {
                        change: Some(change),
                    }
                })
                .collect();
            pb::UpdateMapRequest {
                map: g.s(),
                changes,
                if_version: (!g.tame && g.bit()).then(|| g.n()),
                ttl_ms: if g.tame { 0 } else { g.n() },
                sliding: !g.tame && g.bit(),
                persist: !g.tame && g.bit(),
            }
            .encode_to_vec()
        }
        "Map/Delete" => pb::DeleteMapRequest { map: g.s() }.encode_to_vec(),
        "Map/Watch" => pb::WatchMapRequest { map: g.s() }.encode_to_vec(),
        "Presence/Join" => pb::JoinRequest {
            room: g.s(),
            member: g.s(),
            metadata: vec![1; g.count(500, 5000)].into(),
            ttl_ms: g.n(),
        }
        .encode_to_vec(),
        "Presence/Leave" => pb::LeaveRequest {
            room: g.s(),
            member: g.s(),
        }
        .encode_to_vec(),
        "Presence/List" => pb::ListMembersRequest {
            room: g.s(),
            cursor: if g.tame { String::new() } else { g.s() },
            limit: if g.tame {
                g.n() as u32 % 100 + 1
            } else {
                g.n() as u32
            },
        }
        .encode_to_vec(),
        "Presence/Rooms" => pb::RoomsRequest { member: g.s() }.encode_to_vec(),
        "PubSub/Publish" => pb::PublishRequest {
            channel: g.s(),
            payload: vec![7; g.count(4096, 4096)].into(),
            headers: (0..g.count(5, 70)).map(|_| (g.s(), g.s())).collect(),
            durable: g.bit(),
            idempotency_key: if g.tame { String::new() } else { g.s() },
            max_len: if g.tame { 0 } else { g.n() },
            max_age_ms: if g.tame { 0 } else { g.n() },
        }
        .encode_to_vec(),
        "PubSub/History" => pb::HistoryRequest {
            channel: g.s(),
            last: if g.tame {
                g.n() as u32 % 10
            } else {
                g.n() as u32
            },
            from_offset: if g.tame { String::new() } else { g.s() },
            to_offset: if g.tame { String::new() } else { g.s() },
            newest_first: g.bit(),
            limit: if g.tame { 0 } else { g.n() as u32 },
            cursor: if g.tame { String::new() } else { g.s() },
        }
        .encode_to_vec(),
        "PubSub/Trim" => pb::TrimRequest {
            channel: g.s(),
            before: if g.tame { "1-0".into() } else { g.s() },
        }
        .encode_to_vec(),
        "Presence/Watch" => pb::WatchRequest { room: g.s() }.encode_to_vec(),
        "PubSub/Subscribe" => pb::SubscribeRequest {
            channels: (0..g.count(5, 300) + 1).map(|_| g.s()).collect(),
            patterns: (0..g.count(2, 3)).map(|_| g.s()).collect(),
            from_offset: if g.tame { String::new() } else { g.s() },
            epoch: if g.tame { String::new() } else { g.s() },
        }
        .encode_to_vec(),
        "Admin/Status" => pb::StatusRequest::default().encode_to_vec(),
        other => panic!("no generator for {other}"),
    }
}

/// A rate-limit check: a configured policy or an inline limit.
fn check_request(g: &mut Gen) -> pb::CheckRequest {
    let inline = g.bit();
    pb::CheckRequest {
        policy: if inline {
            String::new()
        } else if g.tame {
            "k0".into()
        } else {
            g.s()
        },
        key: g.s(),
        cost: if g.tame { 1 } else { g.n() as u32 },
        inline: inline.then(|| pb::InlineLimit {
            algorithm: ["gcra", "fixed_window", "sliding_window", "nope", ""]
                [g.rng.random_range(0..if g.tame { 3 } else { 5 })]
            .into(),
            limit: if g.tame { 10 } else { g.n() as u32 },
            period_ms: g.n(),
            burst: if g.tame { 10 } else { g.n() as u32 },
        }),
    }
}

/// `bytes`, mangled: flipped bytes, inserted garbage, truncation, a stray
/// field with a huge length prefix, or a repeated copy.
fn mutate(mut bytes: Vec<u8>, rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..6) {
        0 => {
            for _ in 0..rng.random_range(1..4) {
                if !bytes.is_empty() {
                    let i = rng.random_range(0..bytes.len());
                    bytes[i] ^= 1 << rng.random_range(0..8);
                }
            }
        }
        1 => {
            let at = rng.random_range(0..=bytes.len());
            let junk: Vec<u8> = (0..rng.random_range(1..16)).map(|_| rng.random()).collect();
            bytes.splice(at..at, junk);
        }
        2 => bytes.truncate(rng.random_range(0..=bytes.len())),
        3 => {
            // Field 15, length-delimited, claiming 2^32 bytes.
            bytes.extend_from_slice(&[0x7a, 0x80, 0x80, 0x80, 0x80, 0x10]);
        }
        4 => {
            let copy = bytes.clone();
            bytes.extend_from_slice(&copy);
        }
        _ => {} // the hostile values alone
    }
    bytes
}

const UNARY: &[&str] = &[
    "Cache/Get",
    "Cache/GetMany",
    "Cache/Set",
    "Cache/Delete",
    "Cache/InvalidateTags",
    "Cache/InvalidatePattern",
    "Cache/ListKeys",
    "Cache/GetOrLease",
    "Lock/Acquire",
    "Lock/Release",
    "Lock/Extend",
    "Lock/AcquirePermit",
    "Lock/ReleasePermit",
    "RateLimit/Check",
    "RateLimit/Peek",
    "RateLimit/Reset",
    "RateLimit/CheckAll",
    "Counter/Increment",
    "Counter/Get",
    "Counter/Reset",
    "Map/Get",
    "Map/List",
    "Map/Update",
    "Map/Delete",
    "Presence/Join",
    "Presence/Leave",
    "Presence/List",
    "Presence/Rooms",
    "PubSub/Publish",
    "PubSub/History",
    "PubSub/Trim",
    "Admin/Status",
];

const STREAMING: &[&str] = &["Presence/Watch", "PubSub/Subscribe", "Map/Watch"];

/// A status no hostile request may produce.
fn is_a_server_failure(code: Code) -> bool {
    matches!(
        code,
        Code::Internal | Code::Unknown | Code::DataLoss | Code::Unimplemented | Code::Unavailable
    )
}

/// A sidecar on the case's topology.
type Target = SidecarOn;

fn fuzzed(builder: outrigger_tests::SidecarBuilder) -> outrigger_tests::SidecarBuilder {
    builder
        // Generated waits stay short.
        .env("OUTRIGGER_LIMITS__MAX_WAIT", "100ms")
        .env("OUTRIGGER_RATELIMIT__POLICIES__K0__ALGORITHM", "gcra")
        .env("OUTRIGGER_RATELIMIT__POLICIES__K0__LIMIT", "5")
        .env("OUTRIGGER_RATELIMIT__POLICIES__K0__PERIOD", "1s")
}

async fn target(topology: Topology) -> Target {
    topology.sidecar(fuzzed(sidecar!()), "fuzz").await
}

conformance!(
    target;
    [memory: Memory, with_redis: Redis];
    {
        every_grpc_decoder_answers_generated_hostile_messages_clearly,
        random_binary_keys_round_trip_or_are_refused_clearly_over_http,
    }
);

/// Proves an accepted stream is live, not hung: an event caused through
/// the sidecar arrives on it. Returns false when the request leaves
/// nothing to cause (no channel, or a name the causing call refuses).
async fn prove_live(
    s: &Sidecar,
    method: &str,
    body: &[u8],
    stream: &mut tonic::Streaming<Bytes>,
) -> bool {
    let probe = format!("probe-{}", rand::random::<u64>());
    let channel = s.channel().await;
    let caused = match method {
        "PubSub/Subscribe" => {
            let req = pb::SubscribeRequest::decode(body).expect("accepted, so it decodes");
            let Some(name) = req.channels.first() else {
                return false;
            };
            pb::pub_sub_client::PubSubClient::new(channel)
                .publish(pb::PublishRequest {
                    channel: name.clone(),
                    payload: probe.clone().into(),
                    ..Default::default()
                })
                .await
                .is_ok()
        }
        "Presence/Watch" => {
            let req = pb::WatchRequest::decode(body).expect("accepted, so it decodes");
            pb::presence_client::PresenceClient::new(channel)
                .join(pb::JoinRequest {
                    room: req.room,
                    member: probe.clone(),
                    ttl_ms: 60_000,
                    ..Default::default()
                })
                .await
                .is_ok()
        }
        "Map/Watch" => {
            let req = pb::WatchMapRequest::decode(body).expect("accepted, so it decodes");
            let set = pb::SetField {
                field: probe.clone(),
                value: probe.clone().into(),
                ..Default::default()
            };
            pb::map_client::MapClient::new(channel)
                .update(pb::UpdateMapRequest {
                    map: req.map,
                    changes: vec![pb::MapChange {
                        change: Some(pb::map_change::Change::Set(set)),
                    }],
                    ..Default::default()
                })
                .await
                .is_ok()
        }
        other => panic!("no liveness probe for {other}"),
    };
    if !caused {
        return false;
    }
    let probe = probe.into_bytes();
    let arrived = tokio::time::timeout(Duration::from_secs(5), async {
        // History (from an offset) may come first: read up to the probe.
        while let Some(raw) = stream.message().await.expect("no error on a live stream") {
            let found = match method {
                "PubSub/Subscribe" => pb::SubscribeEvent::decode(raw)
                    .ok()
                    .and_then(|e| e.event)
                    .is_some_and(|e| {
                        matches!(e, pb::subscribe_event::Event::Message(m) if m.payload == probe)
                    }),
                "Map/Watch" => pb::MapEvent::decode(raw)
                    .is_ok_and(|e| e.changes.iter().any(|c| c.field.as_bytes() == probe)),
                _ => pb::PresenceEvent::decode(raw).is_ok_and(|e| e.member.as_bytes() == probe),
            };
            if found {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        arrived,
        Ok(true),
        "{method}: an accepted stream never delivered the event caused on it"
    );
    true
}

async fn every_grpc_decoder_answers_generated_hostile_messages_clearly(t: &Target) {
    let mut rng = StdRng::seed_from_u64(seed());
    let s = &t.sidecar;
    let mut grpc = tonic::client::Grpc::new(s.channel().await);
    let mut answered = BTreeMap::<String, usize>::new();
    let mut stored = BTreeSet::new();
    let mut live = 0;
    for round in 0..150 {
        for method in UNARY.iter().chain(STREAMING) {
            // A third tame and whole; the rest hostile, and mostly mangled.
            let tame = rng.random_bool(0.33);
            let mut g = Gen {
                rng: &mut rng,
                tame,
            };
            let body = request(method, &mut g);
            let body = if tame { body } else { mutate(body, &mut rng) };
            let path = PathAndQuery::try_from(format!("/outrigger.v1.{method}")).unwrap();
            grpc.ready().await.expect("the sidecar is up");
            let code = if STREAMING.contains(method) {
                let call = grpc.server_streaming(
                    tonic::Request::new(Bytes::from(body.clone())),
                    path,
                    RawCodec,
                );
                match tokio::time::timeout(Duration::from_secs(5), call).await {
                    Err(_) => panic!("{method}: no answer within 5 s"),
                    Ok(Ok(mut stream)) => {
                        // Accepted: it must be live, which a sample proves.
                        if live < 40 && prove_live(s, method, &body, stream.get_mut()).await {
                            live += 1;
                        }
                        Code::Ok
                    }
                    Ok(Err(status)) => status.code(),
                }
            } else {
                let call = grpc.unary(
                    tonic::Request::new(Bytes::from(body.clone())),
                    path,
                    RawCodec,
                );
                match tokio::time::timeout(Duration::from_secs(5), call).await {
                    Err(_) => panic!("{method}: no answer within 5 s"),
                    Ok(Ok(_)) => {
                        if *method == "Cache/Set" {
                            stored.insert(pb::SetRequest::decode(&body[..]).unwrap().key);
                        }
                        Code::Ok
                    }
                    Ok(Err(status)) => {
                        assert!(
                            !status.message().is_empty(),
                            "{method}: {:?} without a message",
                            status.code()
                        );
                        status.code()
                    }
                }
            };
            assert!(
                !is_a_server_failure(code),
                "round {round}, {method}: {code:?} for {:02x?}",
                &body[..body.len().min(64)]
            );
            *answered.entry(format!("{method} {code:?}")).or_default() += 1;
        }
    }
    eprintln!("{answered:#?}\n{live} accepted streams proven live");
    // The generator reaches past validation: every method both succeeds
    // and is refused.
    for method in UNARY.iter().chain(STREAMING) {
        let codes: Vec<_> = answered
            .keys()
            .filter_map(|k| k.strip_prefix(&format!("{method} ")))
            .collect();
        assert!(
            codes.contains(&"Ok"),
            "{method}: never succeeded: {codes:?}"
        );
        assert!(codes.iter().any(|c| *c != "Ok"), "{method}: never refused");
    }
    assert!(live >= 5, "only {live} accepted streams proven live");
    // Nothing refused was stored: every key in the cache is one a
    // successful Set wrote.
    let mut cache = pb::cache_client::CacheClient::new(s.channel().await);
    let mut cursor = String::new();
    loop {
        let page = cache
            .list_keys(pb::ListKeysRequest {
                pattern: "*".into(),
                cursor: cursor.clone(),
                limit: 500,
            })
            .await
            .unwrap()
            .into_inner();
        for key in &page.keys {
            assert!(
                stored.contains(key),
                "{key:?} is stored, but no Set of it succeeded"
            );
        }
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    assert!(!s.log().contains("panicked"), "{}", s.log());
    let mut health = tonic_health::pb::health_client::HealthClient::new(s.channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("still serving");
}

/// `bytes` percent-encoded for a URL path segment or query value.
fn percent(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

/// A key of random bytes: any byte value (often invalid UTF-8), or valid
/// UTF-8 with globs, braces, control characters and non-ASCII, sometimes
/// over `limits.max_key_bytes`.
fn random_key(rng: &mut StdRng) -> Vec<u8> {
    let len = match rng.random_range(0..10) {
        0 => rng.random_range(500..700),
        _ => rng.random_range(1..24),
    };
    let binary = rng.random_bool(0.25);
    let mut key = String::new();
    let mut bytes = vec![];
    while key.len() + bytes.len() < len {
        if binary {
            bytes.push(rng.random());
            continue;
        }
        key.push(match rng.random_range(0..20) {
            0 => char::from(rng.random_range(1u8..0x20)),
            1 => ['é', 'ß', '🔑', 'к'][rng.random_range(0..4)],
            2..=5 => char::from(b"*?[]\\{}:/%#"[rng.random_range(0..11)]),
            _ => char::from(rng.random_range(b'a'..=b'e')),
        });
    }
    let key = if binary { bytes } else { key.into_bytes() };
    // "." and ".." are dot segments, which URL clients resolve away
    // before sending: such keys are for gRPC only.
    if key == b"." || key == b".." {
        return random_key(rng);
    }
    key
}

async fn random_binary_keys_round_trip_or_are_refused_clearly_over_http(t: &Target) {
    let mut rng = StdRng::seed_from_u64(seed());
    let s = &t.sidecar;
    let c = reqwest::Client::new();
    // Every key stored is deleted again, so the cache is empty between
    // keys: a refused key must leave it so.
    let everything = || async {
        let listed: serde_json::Value = c
            .get(s.url("/v1/cache?pattern=*"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        listed["keys"].clone()
    };
    let (mut stored, mut refused, mut refused_utf8) = (0, 0, 0);
    for _ in 0..400 {
        let key = random_key(&mut rng);
        let value: Vec<u8> = (0..rng.random_range(0..64)).map(|_| rng.random()).collect();
        let url = s.url(&format!("/v1/cache/{}", percent(&key)));
        let put = c.put(&url).body(value.clone()).send().await.unwrap();
        let status = put.status();
        assert!(!status.is_server_error(), "PUT {key:02x?}: {status}");
        if !status.is_success() {
            // Refused: a JSON error that says why, and nothing stored.
            let body: serde_json::Value = put.json().await.unwrap();
            assert!(body["error"]["code"].is_string(), "{body}");
            let valid_utf8 = std::str::from_utf8(&key).is_ok();
            assert!(
                !valid_utf8
                    || key.len() > 512
                    || key.contains(&0)
                    || key.iter().any(|b| b.is_ascii_control()),
                "a UTF-8 key of {} bytes was refused: {key:02x?} {body}",
                key.len()
            );
            assert_eq!(
                everything().await,
                serde_json::json!([]),
                "refused {key:02x?}, yet something was stored"
            );
            refused += 1;
            refused_utf8 += usize::from(valid_utf8);
            continue;
        }
        stored += 1;
        let get = c.get(&url).send().await.unwrap();
        assert_eq!(get.status(), 200, "GET {key:02x?}");
        assert_eq!(
            get.bytes().await.unwrap().as_ref(),
            value.as_slice(),
            "{key:02x?}"
        );
        // The key lists under its own name as a pattern, escaped.
        let text = std::str::from_utf8(&key).unwrap();
        let mut escaped = String::new();
        for ch in text.chars() {
            if "*?[]\\".contains(ch) {
                escaped.push('\\');
            }
            escaped.push(ch);
        }
        let listed: serde_json::Value = c
            .get(s.url(&format!(
                "/v1/cache?pattern={}",
                percent(escaped.as_bytes())
            )))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if escaped.len() <= 512 {
            assert_eq!(
                listed["keys"],
                serde_json::json!([text]),
                "{escaped:?}: {listed}"
            );
        }
        let del = c.delete(&url).send().await.unwrap();
        assert_eq!(del.status(), 200);
    }
    // Both kinds of refusal: undecodable paths, and keys the sidecar's
    // own validation turns away (too long, control characters).
    assert!(
        stored > 50 && refused > 50 && refused_utf8 > 10,
        "stored {stored}, refused {refused} ({refused_utf8} of them UTF-8)"
    );
    eprintln!("stored {stored}, refused {refused} ({refused_utf8} of them UTF-8)");
}
