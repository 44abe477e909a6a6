//! Hostile input, generated. Every gRPC request decoder gets thousands of
//! messages made by mutating valid encodings (flipped and inserted bytes,
//! truncations, stray fields, huge length prefixes, hostile field values);
//! HTTP keys get random binary and oversized names. The sidecar must answer
//! every one with a clear status (never `INTERNAL` or `UNKNOWN`, never a
//! 5xx), and stay up. (The HTTP request decoders are also fuzzed from the
//! OpenAPI document by schemathesis, in `scripts/fuzz-contract.sh`.)
//!
//! The seed is printed; `FUZZ_SEED=... cargo test -p outrigger-tests
//! --test suite -- fuzz::` replays a run.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use outrigger::api::pb;
use outrigger_tests::{Sidecar, sidecar};
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

/// A valid-looking request for each method, with hostile field values.
fn request(method: &str, rng: &mut StdRng) -> Vec<u8> {
    let s = |rng: &mut StdRng| hostile(rng);
    let n = |rng: &mut StdRng| hostile_number(rng);
    match method {
        "Cache/Get" => pb::GetRequest {
            key: s(rng),
            refresh_ttl: rng.random(),
        }
        .encode_to_vec(),
        "Cache/GetMany" => pb::GetManyRequest {
            keys: (0..rng.random_range(0..1500)).map(|_| s(rng)).collect(),
        }
        .encode_to_vec(),
        "Cache/Set" => pb::SetRequest {
            key: s(rng),
            value: vec![0xff; rng.random_range(0..2048)].into(),
            ttl_ms: n(rng),
            tags: (0..rng.random_range(0..40)).map(|_| s(rng)).collect(),
            expected_version: n(rng),
            stale_ms: n(rng),
            ..Default::default()
        }
        .encode_to_vec(),
        "Cache/Delete" => pb::DeleteRequest { key: s(rng) }.encode_to_vec(),
        "Cache/InvalidateTags" => pb::InvalidateTagsRequest {
            tags: (0..rng.random_range(0..1200)).map(|_| s(rng)).collect(),
        }
        .encode_to_vec(),
        "Cache/InvalidatePattern" => {
            pb::InvalidatePatternRequest { pattern: s(rng) }.encode_to_vec()
        }
        "Cache/ListKeys" => pb::ListKeysRequest {
            pattern: s(rng),
            cursor: s(rng),
            limit: n(rng) as u32,
        }
        .encode_to_vec(),
        "Cache/GetOrLease" => pb::GetOrLeaseRequest {
            key: s(rng),
            lease_ms: n(rng),
            wait_ms: n(rng) % 200,
            accept_stale: rng.random(),
        }
        .encode_to_vec(),
        "Lock/Acquire" => pb::AcquireRequest {
            name: s(rng),
            ttl_ms: n(rng),
            wait_ms: n(rng) % 200,
        }
        .encode_to_vec(),
        "Lock/Release" => pb::ReleaseRequest {
            name: s(rng),
            token: s(rng),
        }
        .encode_to_vec(),
        "Lock/Extend" => pb::ExtendRequest {
            name: s(rng),
            token: s(rng),
            ttl_ms: n(rng),
        }
        .encode_to_vec(),
        "Lock/AcquirePermit" => pb::AcquirePermitRequest {
            name: s(rng),
            limit: n(rng) as u32,
            ttl_ms: n(rng),
            wait_ms: n(rng) % 200,
        }
        .encode_to_vec(),
        "Lock/ReleasePermit" => pb::ReleasePermitRequest {
            name: s(rng),
            token: s(rng),
        }
        .encode_to_vec(),
        "RateLimit/Check" => pb::CheckRequest {
            policy: s(rng),
            key: s(rng),
            cost: n(rng) as u32,
            inline: rng.random_bool(0.5).then(|| pb::InlineLimit {
                algorithm: ["gcra", "fixed_window", "sliding_window", "nope", ""]
                    [rng.random_range(0..5)]
                .into(),
                limit: n(rng) as u32,
                period_ms: n(rng),
                burst: n(rng) as u32,
            }),
        }
        .encode_to_vec(),
        "Presence/Join" => pb::JoinRequest {
            room: s(rng),
            member: s(rng),
            metadata: vec![1; rng.random_range(0..5000)].into(),
            ttl_ms: n(rng),
        }
        .encode_to_vec(),
        "Presence/Leave" => pb::LeaveRequest {
            room: s(rng),
            member: s(rng),
        }
        .encode_to_vec(),
        "Presence/List" => pb::ListMembersRequest {
            room: s(rng),
            cursor: s(rng),
            limit: n(rng) as u32,
        }
        .encode_to_vec(),
        "Presence/Rooms" => pb::RoomsRequest { member: s(rng) }.encode_to_vec(),
        "PubSub/Publish" => pb::PublishRequest {
            channel: s(rng),
            payload: vec![7; rng.random_range(0..4096)].into(),
            headers: (0..rng.random_range(0..70))
                .map(|_| (s(rng), s(rng)))
                .collect(),
            durable: rng.random(),
        }
        .encode_to_vec(),
        "Presence/Watch" => pb::WatchRequest { room: s(rng) }.encode_to_vec(),
        "PubSub/Subscribe" => pb::SubscribeRequest {
            channels: (0..rng.random_range(0..300)).map(|_| s(rng)).collect(),
            patterns: (0..rng.random_range(0..3)).map(|_| s(rng)).collect(),
            from_offset: s(rng),
        }
        .encode_to_vec(),
        "Admin/Status" => pb::StatusRequest::default().encode_to_vec(),
        other => panic!("no generator for {other}"),
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
    "Presence/Join",
    "Presence/Leave",
    "Presence/List",
    "Presence/Rooms",
    "PubSub/Publish",
    "Admin/Status",
];

const STREAMING: &[&str] = &["Presence/Watch", "PubSub/Subscribe"];

/// A status no hostile request may produce.
fn is_a_server_failure(code: Code) -> bool {
    matches!(
        code,
        Code::Internal | Code::Unknown | Code::DataLoss | Code::Unimplemented | Code::Unavailable
    )
}

async fn fuzzed_sidecar() -> Sidecar {
    sidecar!()
        // Generated waits stay short.
        .env("OUTRIGGER_LIMITS__MAX_WAIT", "100ms")
        .env("OUTRIGGER_RATELIMIT__POLICIES__K0__ALGORITHM", "gcra")
        .env("OUTRIGGER_RATELIMIT__POLICIES__K0__LIMIT", "5")
        .env("OUTRIGGER_RATELIMIT__POLICIES__K0__PERIOD", "1s")
        .start()
        .await
}

#[tokio::test]
async fn every_grpc_decoder_answers_generated_hostile_messages_clearly() {
    let mut rng = StdRng::seed_from_u64(seed());
    let s = fuzzed_sidecar().await;
    let mut grpc = tonic::client::Grpc::new(s.channel().await);
    let mut answered = std::collections::BTreeMap::<String, usize>::new();
    for round in 0..150 {
        for method in UNARY.iter().chain(STREAMING) {
            let body = mutate(request(method, &mut rng), &mut rng);
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
                        // Accepted: the first event or the end, or nothing
                        // yet (a live subscription), are all fine.
                        match tokio::time::timeout(
                            Duration::from_millis(20),
                            stream.get_mut().message(),
                        )
                        .await
                        {
                            Ok(Err(status)) => status.code(),
                            _ => Code::Ok,
                        }
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
                    Ok(Ok(_)) => Code::Ok,
                    Ok(Err(status)) => {
                        assert!(
                            !status.message().is_empty() || status.code() == Code::Ok,
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
    eprintln!("{answered:#?}");
    // The generator reaches past validation: some of every method succeed
    // and some are refused.
    for method in UNARY {
        assert!(
            answered
                .keys()
                .any(|k| k.starts_with(&format!("{method} ")) && !k.ends_with("Ok")),
            "{method}: never refused"
        );
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

/// A key of random bytes: any byte value, sometimes invalid UTF-8,
/// sometimes over `limits.max_key_bytes`.
fn random_key(rng: &mut StdRng) -> Vec<u8> {
    let len = match rng.random_range(0..10) {
        0 => rng.random_range(500..700),
        _ => rng.random_range(1..24),
    };
    (0..len)
        .map(|_| match rng.random_range(0..4) {
            0 => rng.random(),
            1 => b"*?[]\\{}:/%#"[rng.random_range(0..11)],
            _ => rng.random_range(b'a'..=b'e'),
        })
        .collect()
}

#[tokio::test]
async fn random_binary_keys_round_trip_or_are_refused_clearly_over_http() {
    let mut rng = StdRng::seed_from_u64(seed());
    let s = fuzzed_sidecar().await;
    let c = reqwest::Client::new();
    let (mut stored, mut refused) = (0, 0);
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
            refused += 1;
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
    assert!(
        stored > 50 && refused > 50,
        "stored {stored}, refused {refused}"
    );
}
