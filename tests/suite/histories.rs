//! Checked histories under faults, as Jepsen checks databases: clients
//! record concurrent operations through two sidecars while a nemesis
//! degrades the network between the sidecars and Redis (a `Relay`: latency
//! past the deadline, a black hole, answers lost, connections dropped) and
//! kills and restarts Redis (with `appendfsync always`, so what Redis
//! acknowledged survives). Then each history is checked against the
//! consistency the README promises on Redis:
//!
//! - a cache key and a map field are linearizable registers
//!   (`outrigger_tests::linearizable`); a write that got no answer may or
//!   may not have happened, and the checker allows both;
//! - a counter ends between the increments acknowledged and those plus the
//!   ones that got no answer: none acknowledged is lost, none counts twice;
//! - a lock excludes: a fenced resource sees every holder's critical
//!   section alone, and accepts strictly increasing fences.
//!
//! The cache and maps run with `failover.cache = "fail"` (maps fail by
//! default): what the fallback answers is per sidecar and would not be
//! linearizable across two (the README says so), so it is kept out.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use outrigger_tests::linearizable::{Event, Op, Outcome, check};
use outrigger_tests::{RedisServer, Relay, Sidecar, Way, eventually, sidecar, unique};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// No request may take longer, whatever the fault: the longest a request
/// here may wait by design (a lock acquisition's 1 s `wait_ms`, then one
/// last attempt within the 300 ms `redis.timeout`) plus a margin for this
/// test sharing a 2-core machine with the rest of the suite. A request the
/// sidecar failed to bound would take the client's whole 5 s timeout.
const BOUND: Duration = Duration::from_secs(3);

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// How one request went: an answer (status, body, version header), or
/// none (a transport error or the client's timeout).
struct Answer {
    status: Option<StatusCode>,
    version: Option<u64>,
    body: String,
    took: Duration,
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let started = Instant::now();
    match req.send().await {
        Ok(resp) => {
            let status = resp.status();
            let version = resp
                .headers()
                .get("outrigger-version")
                .and_then(|v| v.to_str().ok()?.parse().ok());
            let body = resp.text().await.unwrap_or_default();
            Answer {
                status: Some(status),
                version,
                body,
                took: started.elapsed(),
            }
        }
        Err(_) => Answer {
            status: None,
            version: None,
            body: String::new(),
            took: started.elapsed(),
        },
    }
}

/// Whether a 503 says Redis did not answer the request (which it may
/// have applied), rather than that it was refused before reaching Redis.
fn indeterminate(answer: &Answer) -> bool {
    let body: Value = serde_json::from_str(&answer.body).unwrap_or_default();
    body["error"]["message"] == "storage backend unavailable"
}

/// A register behind HTTP: a cache key or a map field.
#[derive(Clone, Copy)]
enum Register {
    Cache,
    MapField,
}

impl Register {
    fn path(self) -> &'static str {
        match self {
            Register::Cache => "/v1/cache/register",
            Register::MapField => "/v1/maps/registers/field",
        }
    }

    /// The version a write answered with.
    fn written(self, answer: &Answer) -> u64 {
        let body: Value = serde_json::from_str(&answer.body).unwrap();
        body["version"].as_u64().expect("a version")
    }
}

/// One client of a register until `stop`: sets, reads and
/// compare-and-sets (against the last version it saw) in turn.
async fn register_client(
    s: Arc<Sidecar>,
    register: Register,
    client: usize,
    stop: Arc<AtomicBool>,
) -> (Vec<Event>, Vec<Duration>) {
    let c = http();
    let url = s.url(register.path());
    let (mut events, mut took, mut seen) = (vec![], vec![], 0);
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let value = format!("{client}-{i}");
        let called = Instant::now();
        let (op, outcome) = match (i + client) % 3 {
            0 | 1 => {
                let (op, req) = if (i + client).is_multiple_of(3) {
                    (Op::Set(value.clone()), c.put(&url))
                } else {
                    let cas = c.put(format!("{url}?if=version:{seen}"));
                    (Op::Cas(seen, value.clone()), cas)
                };
                let answer = send(req.body(value)).await;
                took.push(answer.took);
                let outcome = match answer.status {
                    Some(StatusCode::OK) => Outcome::Written(register.written(&answer)),
                    Some(StatusCode::PRECONDITION_FAILED) => Outcome::Refused,
                    // Redis did not answer it, or the client got no answer:
                    // it may have been applied.
                    Some(StatusCode::SERVICE_UNAVAILABLE) if indeterminate(&answer) => {
                        Outcome::Unknown
                    }
                    None => Outcome::Unknown,
                    // Refused while Redis was known to be down: it never
                    // reached Redis, and changed nothing.
                    Some(StatusCode::SERVICE_UNAVAILABLE) => continue,
                    Some(other) => panic!("a write answered {other}: {}", answer.body),
                };
                (op, outcome)
            }
            _ => {
                let answer = send(c.get(&url)).await;
                took.push(answer.took);
                let outcome = match answer.status {
                    Some(StatusCode::OK) => {
                        Outcome::Found(answer.body.clone(), answer.version.expect("a version"))
                    }
                    Some(StatusCode::NOT_FOUND) => Outcome::Missing,
                    // A read that failed changed nothing: not recorded.
                    Some(StatusCode::SERVICE_UNAVAILABLE) | None => continue,
                    Some(other) => panic!("a read answered {other}: {}", answer.body),
                };
                (Op::Get, outcome)
            }
        };
        if let Outcome::Written(v) | Outcome::Found(_, v) = &outcome {
            seen = *v;
        }
        events.push(Event {
            op,
            outcome,
            called,
            returned: Instant::now(),
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (events, took)
}

/// What one counter client saw: increments acknowledged, and those that
/// got no answer (which may have counted).
#[derive(Default)]
struct Increments {
    acked: u64,
    unknown: u64,
    /// Refused before reaching Redis.
    refused: u64,
    took: Vec<Duration>,
}

async fn counter_client(s: Arc<Sidecar>, stop: Arc<AtomicBool>) -> Increments {
    let c = http();
    let mut seen = Increments::default();
    while !stop.load(Ordering::Relaxed) {
        let answer = send(
            c.post(s.url("/v1/counters/total/incr"))
                .json(&json!({"by": 1})),
        )
        .await;
        seen.took.push(answer.took);
        match answer.status {
            Some(StatusCode::OK) => seen.acked += 1,
            Some(StatusCode::SERVICE_UNAVAILABLE) if indeterminate(&answer) => seen.unknown += 1,
            None => seen.unknown += 1,
            Some(StatusCode::SERVICE_UNAVAILABLE) => seen.refused += 1,
            Some(other) => panic!("an increment answered {other}: {}", answer.body),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    seen
}

/// A resource that only a lock's holder should touch: it remembers the
/// highest fence it accepted and refuses lower ones (as the README tells
/// a resource to), and notes any overlap of critical sections.
#[derive(Default)]
struct Resource {
    highest: u64,
    inside: Option<u64>,
    /// Fences in the order their sections were entered.
    accepted: Vec<u64>,
    refused: u64,
    overlaps: Vec<(u64, u64)>,
}

impl Resource {
    fn enter(&mut self, fence: u64) -> bool {
        if fence < self.highest {
            self.refused += 1;
            return false;
        }
        if let Some(other) = self.inside {
            self.overlaps.push((other, fence));
        }
        self.highest = fence;
        self.inside = Some(fence);
        self.accepted.push(fence);
        true
    }

    fn leave(&mut self, fence: u64) {
        if self.inside == Some(fence) {
            self.inside = None;
        }
    }
}

/// Takes the lock, works on the resource for a few milliseconds, lets go;
/// until `stop`. Returns the acquisitions it made.
async fn lock_client(
    s: Arc<Sidecar>,
    resource: Arc<Mutex<Resource>>,
    stop: Arc<AtomicBool>,
) -> (u64, Vec<Duration>) {
    let c = http();
    let (mut held, mut took) = (0, vec![]);
    while !stop.load(Ordering::Relaxed) {
        let answer = send(
            c.post(s.url("/v1/locks/resource/acquire"))
                .json(&json!({"ttl_ms": 5000, "wait_ms": 1000})),
        )
        .await;
        took.push(answer.took);
        match answer.status {
            Some(StatusCode::OK) => {}
            // Held by the other client (or by one whose answer was lost,
            // until its lease runs out), or Redis unreachable.
            Some(StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE) | None => continue,
            Some(other) => panic!("an acquisition answered {other}: {}", answer.body),
        }
        held += 1;
        let body: Value = serde_json::from_str(&answer.body).unwrap();
        let fence = body["fence"].as_u64().unwrap();
        let token = body["token"].as_str().unwrap().to_string();
        if resource.lock().unwrap().enter(fence) {
            tokio::time::sleep(Duration::from_millis(5)).await;
            resource.lock().unwrap().leave(fence);
        }
        // A release that gets no answer leaves the lease to run out.
        let answer = send(
            c.post(s.url("/v1/locks/resource/release"))
                .json(&json!({"token": token})),
        )
        .await;
        took.push(answer.took);
    }
    (held, took)
}

async fn wait_on_redis(sidecars: &[Arc<Sidecar>]) {
    for s in sidecars {
        s.wait_mode("redis", Duration::from_secs(20)).await;
    }
}

#[tokio::test]
async fn histories_under_faults_and_restarts_are_what_the_readme_promises() {
    let mut redis =
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    let relay = Relay::start(redis.port).await;
    let ns = unique("hist");
    let start = || {
        sidecar!()
            .through(&relay)
            .namespace(&ns)
            .env("OUTRIGGER_REDIS__TIMEOUT", "300ms")
            .env("OUTRIGGER_REDIS__CONNECT_TIMEOUT", "300ms")
            .env("OUTRIGGER_FAILOVER__CACHE", "fail")
            .env("OUTRIGGER_FAILOVER__PROBE_MAX", "1s")
            .start()
    };
    let sidecars = [Arc::new(start().await), Arc::new(start().await)];
    let stop = Arc::new(AtomicBool::new(false));
    let resource = Arc::new(Mutex::new(Resource::default()));
    let mut registers = vec![];
    for (register, clients) in [(Register::Cache, 4), (Register::MapField, 2)] {
        for client in 0..clients {
            registers.push(tokio::spawn(register_client(
                sidecars[client % 2].clone(),
                register,
                client,
                stop.clone(),
            )));
        }
    }
    let counters: Vec<_> = (0..2)
        .map(|i| tokio::spawn(counter_client(sidecars[i].clone(), stop.clone())))
        .collect();
    let lockers: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(lock_client(
                sidecars[i].clone(),
                resource.clone(),
                stop.clone(),
            ))
        })
        .collect();

    // The nemesis: each fault for 1.5 s, then healed, and a second of
    // calm on Redis before the next.
    let healthy = Duration::from_secs(1);
    let faulty = Duration::from_millis(1500);
    tokio::time::sleep(healthy).await;
    type Fault<'a> = (&'a str, &'a dyn Fn(&Relay));
    let faults: [Fault; 4] = [
        ("1 s latency, 200 ms jitter", &|r: &Relay| {
            r.delay(Duration::from_secs(1), Duration::from_millis(200))
        }),
        ("a black hole", &|r: &Relay| r.hold()),
        ("answers lost", &|r: &Relay| r.hold_way(Way::Down)),
        ("connections dropped", &|r: &Relay| r.drop_connections()),
    ];
    for (_, fault) in faults {
        fault(&relay);
        tokio::time::sleep(faulty).await;
        relay.heal();
        wait_on_redis(&sidecars).await;
        tokio::time::sleep(healthy).await;
    }
    // Redis killed, and back a second later with what it acknowledged.
    redis.kill().await;
    tokio::time::sleep(faulty).await;
    redis.restart().await;
    wait_on_redis(&sidecars).await;
    tokio::time::sleep(healthy).await;
    stop.store(true, Ordering::Relaxed);

    let mut slowest = Duration::ZERO;
    let mut histories = [vec![], vec![]];
    for (i, task) in registers.into_iter().enumerate() {
        let (events, took) = task.await.unwrap();
        slowest = took.into_iter().fold(slowest, Duration::max);
        histories[usize::from(i >= 4)].extend(events);
    }
    for (what, history) in ["cache key", "map field"].iter().zip(&histories) {
        let count = |f: fn(&Event) -> bool| history.iter().filter(|e| f(e)).count();
        let unknown = count(|e| e.outcome == Outcome::Unknown);
        let cas_won = count(|e| matches!((&e.op, &e.outcome), (Op::Cas(..), Outcome::Written(_))));
        let cas_lost = count(|e| e.outcome == Outcome::Refused);
        // The history exercised what it checks: faults left writes without
        // answers, and compare-and-sets both won and lost.
        assert!(
            unknown > 0 && cas_won > 0 && cas_lost > 0,
            "{what}: {} operations, {unknown} indeterminate, {cas_won} compare-and-sets won, {cas_lost} lost",
            history.len()
        );
        let started = Instant::now();
        if let Err(why) = check(history) {
            panic!("{what}: {why}");
        }
        eprintln!(
            "{what}: {} operations ({unknown} indeterminate) linearizable, checked in {:?}",
            history.len(),
            started.elapsed()
        );
    }

    let (mut acked, mut unknown, mut refused) = (0, 0, 0);
    for task in counters {
        let seen = task.await.unwrap();
        acked += seen.acked;
        unknown += seen.unknown;
        refused += seen.refused;
        slowest = seen.took.into_iter().fold(slowest, Duration::max);
    }
    // Read once the sidecar is on Redis: under a loaded machine its
    // circuit may have opened again after the last fault (counters fail
    // while Redis is down rather than answer from memory).
    let c = http();
    let total = eventually(Duration::from_secs(20), "the total, read on Redis", || {
        let (c, s) = (c.clone(), sidecars[0].clone());
        async move {
            s.wait_mode("redis", Duration::from_secs(20)).await;
            let body = c
                .get(s.url("/v1/counters/total"))
                .send()
                .await
                .ok()?
                .json::<Value>()
                .await
                .ok()?;
            match body["value"].as_u64() {
                Some(total) => Some(total),
                None => {
                    eprintln!("reading the total: {body}");
                    None
                }
            }
        }
    })
    .await;
    assert!(
        unknown > 0 && refused > 0,
        "faults left increments without answers ({unknown}) and refused them ({refused})"
    );
    assert!(
        (acked..=acked + unknown).contains(&total),
        "counted {total}: {acked} acknowledged, {unknown} unanswered"
    );

    let mut held = 0;
    for task in lockers {
        let (n, took) = task.await.unwrap();
        held += n;
        slowest = took.into_iter().fold(slowest, Duration::max);
    }
    let resource = resource.lock().unwrap();
    // What the run did, shown whichever check below fails.
    eprintln!(
        "the lock was taken {held} times; counter: {acked} acknowledged, {unknown} unanswered, \
         {refused} refused, {total} counted; slowest request {slowest:?}"
    );
    assert!(held >= 20, "the lock was taken {held} times");
    assert_eq!(resource.overlaps, vec![], "critical sections overlapped");
    assert_eq!(resource.refused, 0, "stale fences reached the resource");
    assert!(
        resource.accepted.windows(2).all(|w| w[0] < w[1]),
        "fences accepted out of order: {:?}",
        resource.accepted
    );
    assert_eq!(resource.accepted.len() as u64, held);

    assert!(slowest <= BOUND, "a request took {slowest:?}");
}
