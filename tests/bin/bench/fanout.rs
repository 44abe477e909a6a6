//! Fan-out at scale: many concurrent subscribers on one sidecar, next to
//! a plain Redis `SUBSCRIBE` per subscriber on the same machine.
//!
//! For each way of subscribing and each spread (all on one channel, or
//! over 1,000 channels), a fresh sidecar (or, for the direct row, the
//! Redis server itself) is measured: its memory per subscriber (RSS grown
//! from before the first subscription to after every subscriber has heard
//! a message), and for a series of publishes, the time from a publish
//! being sent to the last of its subscribers receiving it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use futures::StreamExt;
use outrigger::api::pb;
use outrigger_tests::{RedisServer, SidecarBuilder};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::lean::{RawGrpc, RawSse};

#[derive(Debug, Clone, Serialize)]
pub struct FanoutRow {
    pub via: &'static str,
    pub channels: usize,
    pub subscribers: usize,
    pub connections: usize,
    /// Server memory per subscriber: the sidecar's RSS growth (the Redis
    /// server's for the direct row), in KiB.
    pub kib_per_subscriber: f64,
    /// Publish sent -> its last subscriber received, over `rounds`.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub rounds: usize,
}

/// Streams per HTTP/2 connection for the multiplexed ways.
const STREAMS_PER_CONNECTION: usize = 100;

#[derive(Clone, Copy, PartialEq)]
enum Way {
    SseHttp1,
    SseH2c,
    Grpc,
    Redis,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::SseHttp1 => "SSE, HTTP/1.1 (a connection each)",
            Way::SseH2c => "SSE, h2c (100 streams a connection)",
            Way::Grpc => "gRPC (100 streams a connection)",
            Way::Redis => "direct: Redis SUBSCRIBE (a connection each)",
        }
    }
}

/// (subscriber, round) of every message heard; round `u32::MAX` is a
/// priming message.
type Heard = mpsc::UnboundedSender<(u32, u32, Instant)>;

fn round_of(payload: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(payload).ok()?;
    if text.starts_with("prime") {
        return Some(u32::MAX);
    }
    text.strip_prefix('r')?.parse().ok()
}

/// The round of an SSE `data:` line: a JSON event whose `payload` is the
/// message's text.
fn round_of_event(data: &[u8]) -> Option<u32> {
    let event: serde_json::Value = serde_json::from_slice(data).ok()?;
    round_of(event["payload"].as_str()?.as_bytes())
}

pub async fn run(binary: &Path, subscribers: usize, rounds: usize) -> Result<Vec<FanoutRow>> {
    // A Redis server of its own: 10,000 subscribers need more than the
    // default 10,000 clients once the sidecars' own connections count.
    let redis = RedisServer::start_with(&["--maxclients", "30000"]).await;
    let mut rows = Vec::new();
    for way in [Way::SseHttp1, Way::SseH2c, Way::Grpc, Way::Redis] {
        for channels in [1usize, 1000] {
            let row = scenario(binary, &redis, way, subscribers, channels, rounds)
                .await
                .map_err(|err| {
                    anyhow::anyhow!("{} over {channels} channels: {err:?}", way.name())
                })?;
            eprintln!(
                "fan-out {:<44} {:>5} channels {:>6} subscribers: {:>6.1} KiB each, p50 {:>7.2} ms, p99 {:>7.2} ms",
                row.via,
                row.channels,
                row.subscribers,
                row.kib_per_subscriber,
                row.p50_ms,
                row.p99_ms
            );
            rows.push(row);
        }
    }
    Ok(rows)
}

async fn scenario(
    binary: &Path,
    redis: &RedisServer,
    way: Way,
    subscribers: usize,
    channels: usize,
    rounds: usize,
) -> Result<FanoutRow> {
    let dir = tempfile::tempdir()?;
    let http_socket = dir.path().join("http.sock");
    let grpc_socket = dir.path().join("grpc.sock");
    let sidecar = if way == Way::Redis {
        None
    } else {
        Some(
            SidecarBuilder::new(binary.to_str().context("binary path")?)
                .redis(redis)
                .namespace(&format!("fan{}", outrigger_tests::unique("")))
                .env("OUTRIGGER_HTTP__SOCKET", http_socket.to_str().unwrap())
                .env("OUTRIGGER_GRPC__SOCKET", grpc_socket.to_str().unwrap())
                .start()
                .await,
        )
    };
    let server_pid = match &sidecar {
        Some(s) => s.pid().context("sidecar pid")?,
        None => redis_pid(redis).await?,
    };
    let http = reqwest::Client::new();
    let mut conn = redis.client().await;
    let prefix = format!("fan{}", outrigger_tests::unique(""));
    let channel = |i: usize| format!("{prefix}-{}", i % channels);
    let publish = |name: String, payload: String| {
        let (http, mut conn, sidecar_url) = (
            http.clone(),
            conn.clone(),
            sidecar.as_ref().map(|s| s.url("/v1/pubsub/")),
        );
        async move {
            match sidecar_url {
                Some(base) => {
                    let resp = http
                        .post(format!("{base}{name}"))
                        .body(payload)
                        .send()
                        .await?;
                    ensure!(resp.status() == 200, "publish: {}", resp.status());
                }
                None => {
                    let _: i64 = redis::cmd("PUBLISH")
                        .arg(&name)
                        .arg(payload)
                        .query_async(&mut conn)
                        .await?;
                }
            }
            anyhow::Ok(())
        }
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = crate::proc_kb(server_pid, "VmRSS")?;

    let (heard, mut inbox) = mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    let mut connections = 0;
    match way {
        Way::SseHttp1 => {
            let opening = Arc::new(tokio::sync::Semaphore::new(256));
            for id in 0..subscribers {
                let opening = opening.clone();
                let (socket, path, heard) = (
                    http_socket.clone(),
                    format!("/v1/pubsub/{}", channel(id)),
                    heard.clone(),
                );
                tasks.spawn(
                    async move { sse_http1(&socket, &path, id as u32, heard, opening).await },
                );
                connections += 1;
            }
        }
        Way::SseH2c | Way::Grpc => {
            let socket = if way == Way::Grpc {
                &grpc_socket
            } else {
                &http_socket
            };
            for first in (0..subscribers).step_by(STREAMS_PER_CONNECTION) {
                let io = crate::lean::connect(socket).await?;
                let (send, connection) = h2::client::handshake(io).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                connections += 1;
                for id in first..(first + STREAMS_PER_CONNECTION).min(subscribers) {
                    let (send, heard, name) = (send.clone(), heard.clone(), channel(id));
                    tasks.spawn(async move {
                        if way == Way::Grpc {
                            grpc_stream(send, name, id as u32, heard).await
                        } else {
                            sse_h2(send, name, id as u32, heard).await
                        }
                    });
                }
            }
        }
        Way::Redis => {
            let client = redis::Client::open(redis.url())?;
            // Paced like the sidecar's: Redis' accept backlog is 511.
            let opening = Arc::new(tokio::sync::Semaphore::new(256));
            for id in 0..subscribers {
                let (client, heard, name) = (client.clone(), heard.clone(), channel(id));
                let opening = opening.clone();
                tasks.spawn(async move {
                    let permit = opening.acquire_owned().await?;
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&name).await?;
                    drop(permit);
                    let mut messages = pubsub.into_on_message();
                    while let Some(m) = messages.next().await {
                        if let Some(round) = round_of(m.get_payload_bytes()) {
                            let _ = heard.send((id as u32, round, Instant::now()));
                        }
                    }
                    bail!("subscription ended")
                });
                connections += 1;
            }
        }
    }
    drop(heard);

    // Primed: publish to every channel until every subscriber has heard.
    let mut primed = vec![false; subscribers];
    let mut left = subscribers;
    let deadline = Instant::now() + Duration::from_secs(120);
    while left > 0 {
        ensure!(
            Instant::now() < deadline,
            "{left} of {subscribers} subscribers never heard a message"
        );
        if let Some(done) = tasks.try_join_next() {
            done??;
            bail!("a subscriber ended");
        }
        for c in 0..channels {
            publish(channel(c), "prime".into()).await?;
        }
        let wait_until = Instant::now() + Duration::from_millis(500);
        while let Ok(Some((id, _, _))) =
            tokio::time::timeout_at(wait_until.into(), inbox.recv()).await
        {
            if !std::mem::replace(&mut primed[id as usize], true) {
                left -= 1;
            }
        }
    }
    // Late priming messages still queued are drained by the rounds.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_after = crate::proc_kb(server_pid, "VmRSS")?;

    let mut latencies = Vec::with_capacity(rounds);
    for round in 0..rounds as u32 {
        let target = channel(round as usize);
        let expected = (0..subscribers).filter(|id| channel(*id) == target).count();
        let sent = Instant::now();
        publish(target, format!("r{round}")).await?;
        let mut got = 0;
        let mut last = sent;
        while got < expected {
            let (_, r, at) = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
                .await
                .with_context(|| format!("round {round}: {got} of {expected} heard"))?
                .context("every subscriber ended")?;
            if r == round {
                got += 1;
                last = at;
            }
        }
        latencies.push(last - sent);
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    drop(sidecar);
    // The next row starts from a server these subscribers have left.
    let settled = Instant::now() + Duration::from_secs(30);
    while Instant::now() < settled {
        let info: String = redis::cmd("INFO")
            .arg("clients")
            .query_async(&mut conn)
            .await?;
        let connected: usize = info
            .lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if connected < 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    latencies.sort();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    Ok(FanoutRow {
        via: way.name(),
        channels,
        subscribers,
        connections,
        kib_per_subscriber: rss_after.saturating_sub(rss_before) as f64 / subscribers as f64,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        rounds,
    })
}

async fn redis_pid(redis: &RedisServer) -> Result<u32> {
    let mut conn = redis.client().await;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
        .context("process_id in INFO")
}

/// One SSE subscription on an HTTP/1.1 connection of its own.
/// `opening` paces the set-up: a connection holds one of the listener's
/// `limits.max_connections` places until its stream begins.
async fn sse_http1(
    socket: &Path,
    path: &str,
    id: u32,
    heard: Heard,
    opening: Arc<tokio::sync::Semaphore>,
) -> Result<()> {
    let permit = opening.acquire_owned().await?;
    let mut sse = RawSse::open(socket, path).await?;
    drop(permit);
    loop {
        if let Some(round) = round_of_event(sse.next_data().await?.as_bytes()) {
            let _ = heard.send((id, round, Instant::now()));
        }
    }
}

/// One SSE subscription as a stream of a shared h2c connection.
async fn sse_h2(
    send: h2::client::SendRequest<Bytes>,
    channel: String,
    id: u32,
    heard: Heard,
) -> Result<()> {
    let mut send = send.ready().await?;
    let request = http::Request::get(format!("http://outrigger/v1/pubsub/{channel}"))
        .header("accept", "text/event-stream")
        .body(())?;
    let (response, _) = send.send_request(request, true)?;
    let response = response.await?;
    ensure!(response.status() == 200, "subscribe: {}", response.status());
    let mut body = response.into_body();
    let mut buffer = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            if let Some(data) = line.strip_prefix(b"data:")
                && let Some(round) = round_of_event(data.trim_ascii())
            {
                let _ = heard.send((id, round, Instant::now()));
            }
        }
    }
    bail!("the event stream ended")
}

/// One gRPC subscription as a stream of a shared HTTP/2 connection.
async fn grpc_stream(
    send: h2::client::SendRequest<Bytes>,
    channel: String,
    id: u32,
    heard: Heard,
) -> Result<()> {
    let req = pb::SubscribeRequest {
        channels: vec![channel],
        ..Default::default()
    };
    let mut stream = RawGrpc::stream_on(send, "/outrigger.v1.PubSub/Subscribe", &req).await?;
    loop {
        let event: pb::SubscribeEvent = stream.next().await?;
        if let Some(pb::subscribe_event::Event::Message(m)) = event.event
            && let Some(round) = round_of(&m.payload)
        {
            let _ = heard.send((id, round, Instant::now()));
        }
    }
}
