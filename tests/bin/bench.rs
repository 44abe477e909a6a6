//! `outrigger-bench`: what the sidecar's extra hop costs, measured against
//! the physical limit on the same machine in the same run, the same
//! operation done directly against Redis with redis-rs.
//!
//! Starts its own `redis-server` (free port, no persistence) and one
//! `outrigger` process (Redis backend, near cache on, TCP and Unix socket
//! listeners), then for each operation, transport and concurrency (1 and
//! 64) runs a warm-up and a timed window, recording every request's
//! latency. Writes a markdown table (`BENCHMARKS.md`) and the same rows as
//! JSON. `--quick` runs tiny windows as a smoke test: every operation is
//! exercised and checked, nothing is timed seriously.
//!
//! `scripts/bench.sh` builds the release binaries and runs this.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::Parser;
use futures::StreamExt;
use outrigger::api::pb;
use outrigger::api::pb::cache_client::CacheClient;
use outrigger::api::pb::counter_client::CounterClient;
use outrigger::api::pb::lock_client::LockClient;
use outrigger::api::pb::map_client::MapClient;
use outrigger::api::pb::presence_client::PresenceClient;
use outrigger::api::pb::pub_sub_client::PubSubClient;
use outrigger::api::pb::rate_limit_client::RateLimitClient;
use outrigger_tests::{RedisServer, Sidecar, SidecarBuilder};
use serde::Serialize;
use tokio::sync::Mutex;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(about = "Benchmarks the sidecar against direct Redis, in one run")]
struct Args {
    /// Smoke test: every cell runs briefly and is checked; no timing.
    #[arg(long)]
    quick: bool,
    /// The `outrigger` binary to run (build it with --release for figures).
    #[arg(long, default_value = "target/release/outrigger")]
    sidecar: PathBuf,
    /// Where to write the markdown table.
    #[arg(long, default_value = "BENCHMARKS.md")]
    markdown: PathBuf,
    /// Where to write the rows as JSON.
    #[arg(long, default_value = "target/bench.json")]
    json: PathBuf,
    /// Timed window per cell, in ms (default 3000; 150 with --quick).
    #[arg(long)]
    window_ms: Option<u64>,
    /// Extra environment for the sidecar, `KEY=VALUE` (repeatable), e.g.
    /// `OUTRIGGER_CACHE__NEAR__ENABLED=false`.
    #[arg(long = "sidecar-env")]
    sidecar_env: Vec<String>,
}

/// One measured cell.
#[derive(Debug, Clone, Serialize)]
struct Row {
    op: &'static str,
    via: &'static str,
    concurrency: usize,
    requests: u64,
    errors: u64,
    throughput: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    /// Sidecar CPU time per 1,000 requests (sidecar rows only).
    cpu_ms_per_1k: Option<f64>,
    /// Against the direct-Redis row of the same operation and concurrency.
    p50_ratio: Option<f64>,
    p99_ratio: Option<f64>,
    throughput_ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    mode: &'static str,
    sidecar: String,
    cpus: usize,
    redis_version: String,
    sidecar_rss_idle_mb: f64,
    sidecar_rss_after_mb: f64,
    sidecar_rss_peak_mb: f64,
    plugin_authorize: PluginCost,
    rows: Vec<Row>,
    /// The client libraries next to redis-py and ioredis.
    clients: Vec<ClientRow>,
    /// The Socket.IO adapter next to `@socket.io/redis-adapter`.
    socketio: Vec<SocketIoRow>,
}

/// A room broadcast from one Socket.IO instance reaching a client on
/// another, as `sdk/socketio-adapter/bench.mjs` reports it per adapter.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct SocketIoRow {
    adapter: String,
    samples: u64,
    p50_us: f64,
    p99_us: f64,
    delivered: u64,
    packets_per_s: f64,
}

/// Runs the Socket.IO adapter's benchmark on this run's Redis, with
/// sidecars of its own from the same binary.
fn socketio_rows(
    binary: &std::path::Path,
    redis: &RedisServer,
    quick: bool,
) -> Result<Vec<SocketIoRow>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = std::process::Command::new("node")
        .arg(root.join("sdk/socketio-adapter/bench.mjs"))
        .arg("--bin")
        .arg(std::fs::canonicalize(binary)?)
        .args(["--redis", &format!("redis://127.0.0.1:{}", redis.port)])
        .args(["--seconds", if quick { "0.1" } else { "3" }])
        .output()
        .context("running the Socket.IO adapter's bench")?;
    ensure!(
        output.status.success(),
        "the Socket.IO adapter's bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut rows = Vec::new();
    for line in String::from_utf8(output.stdout)?.lines() {
        let row: SocketIoRow =
            serde_json::from_str(line).with_context(|| format!("a Socket.IO bench row: {line}"))?;
        eprintln!(
            "{:<30} p50 {:>8.1} µs  p99 {:>8.1} µs  {:>9.0} packets/s",
            row.adapter, row.p50_us, row.p99_us, row.packets_per_s
        );
        ensure!(
            row.samples > 0 && row.delivered > 0,
            "nothing measured: {line}"
        );
        rows.push(row);
    }
    ensure!(
        rows.len() == 2,
        "expected 2 Socket.IO rows, got {}",
        rows.len()
    );
    Ok(rows)
}

/// One operation through a client library (or its direct alternative), at
/// concurrency 1, as `sdk/client-*/bench.*` report it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct ClientRow {
    client: String,
    op: String,
    via: String,
    requests: u64,
    p50_us: f64,
    p99_us: f64,
    #[serde(default)]
    p50_ratio: Option<f64>,
    #[serde(default)]
    p99_ratio: Option<f64>,
}

/// Runs the client libraries' benchmarks against this run's sidecar and
/// Redis: each prints one JSON row per line.
fn client_rows(
    sidecar: &Sidecar,
    socket: &std::path::Path,
    redis: &RedisServer,
    quick: bool,
) -> Result<Vec<ClientRow>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let seconds = if quick { "0.1" } else { "2" };
    let common = [
        "--url".to_string(),
        sidecar.url(""),
        "--socket".into(),
        socket.display().to_string(),
        "--redis".into(),
        format!("redis://127.0.0.1:{}", redis.port),
        "--seconds".into(),
        seconds.into(),
    ];
    let python = root.join(".tools/venv-client-python/bin/python");
    let runs = [
        (
            std::process::Command::new(&python)
                .arg(root.join("sdk/client-python/bench.py"))
                .args(&common)
                .env("PYTHONPATH", root.join("sdk/client-python/src"))
                .output(),
            "python",
        ),
        (
            std::process::Command::new("node")
                .arg(root.join("sdk/client-node/bench.mjs"))
                .args(&common)
                .output(),
            "node",
        ),
    ];
    let mut rows = Vec::new();
    for (output, client) in runs {
        let output = output.with_context(|| format!("running the {client} client's bench"))?;
        ensure!(
            output.status.success(),
            "the {client} client's bench failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        for line in String::from_utf8(output.stdout)?.lines() {
            let row: ClientRow = serde_json::from_str(line)
                .with_context(|| format!("a {client} bench row: {line}"))?;
            eprintln!(
                "{:<8} {:<28} {:<11} p50 {:>8.1} µs  p99 {:>8.1} µs",
                row.client, row.op, row.via, row.p50_us, row.p99_us
            );
            rows.push(row);
        }
    }
    ensure!(
        rows.len() >= 24,
        "expected 12 rows per client, got {}",
        rows.len()
    );
    Ok(rows)
}

/// What one `authorize` hook call through a plugin costs, measured
/// in-process (the sidecar calls plugins inline, on the request's own
/// thread): medians, in µs.
#[derive(Debug, Serialize)]
struct PluginCost {
    calls: usize,
    no_plugin_us: f64,
    tenant_guard_allow_us: f64,
    tenant_guard_deny_us: f64,
}

type OpFuture = Pin<Box<dyn Future<Output = Result<()>> + Send>>;
/// One request of one worker: `op(worker, sequence)`.
type Op = Arc<dyn Fn(usize, u64) -> OpFuture + Send + Sync>;

const VALUE: &[u8; 100] = &[b'x'; 100];
const CONCURRENCY: [usize; 2] = [1, 64];

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let window =
        Duration::from_millis(
            args.window_ms
                .unwrap_or(if args.quick { 150 } else { 3000 }),
        );
    let warmup = if args.quick {
        Duration::from_millis(50)
    } else {
        Duration::from_millis(1000)
    };
    ensure!(
        args.sidecar.exists(),
        "{} does not exist: build it first (scripts/bench.sh does)",
        args.sidecar.display()
    );
    let plugin_authorize = plugin_cost(if args.quick { 200 } else { 20_000 })?;
    eprintln!("{plugin_authorize:?}");
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir()?;
    let http_socket = dir.path().join("http.sock");
    let grpc_socket = dir.path().join("grpc.sock");
    let mut builder = SidecarBuilder::new(args.sidecar.to_str().context("sidecar path")?);
    for pair in &args.sidecar_env {
        let (key, value) = pair
            .split_once('=')
            .context("--sidecar-env takes KEY=VALUE")?;
        builder = builder.env(key, value);
    }
    let sidecar = builder
        .redis(&redis)
        .namespace("bench")
        .env("OUTRIGGER_CACHE__NEAR__ENABLED", "true")
        .env("OUTRIGGER_HTTP__SOCKET", http_socket.to_str().unwrap())
        .env("OUTRIGGER_GRPC__SOCKET", grpc_socket.to_str().unwrap())
        .env("OUTRIGGER_RATELIMIT__POLICIES__BENCH__ALGORITHM", "gcra")
        .env("OUTRIGGER_RATELIMIT__POLICIES__BENCH__LIMIT", "1000000000")
        .env("OUTRIGGER_RATELIMIT__POLICIES__BENCH__BURST", "1000000000")
        .env("OUTRIGGER_RATELIMIT__POLICIES__BENCH__PERIOD", "1s")
        .start()
        .await;
    let pid = sidecar.pid().context("sidecar pid")?;
    let clients = Clients::connect(&sidecar, &redis, &http_socket, &grpc_socket).await?;
    clients.prepare().await?;
    // Idle: started, connected, nothing served yet beyond set-up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = proc_kb(pid, "VmRSS")? as f64 / 1024.0;

    let mut rows = Vec::new();
    for (op, vias) in plan(&clients) {
        for concurrency in CONCURRENCY {
            let mut direct: Option<Row> = None;
            for (via, run) in &vias {
                let cpu_before = cpu_ticks(pid)?;
                let mut row = measure(op, via, concurrency, warmup, window, run.clone()).await;
                if *via != "direct" {
                    let ticks = cpu_ticks(pid)? - cpu_before;
                    let ms = ticks as f64 * 1000.0 / clock_ticks() as f64;
                    // Warm-up requests used CPU too: count them in.
                    let total = row.requests as f64 * (1.0 + ratio(warmup, window));
                    row.cpu_ms_per_1k = Some(ms * 1000.0 / total.max(1.0));
                }
                if let Some(d) = &direct {
                    row.p50_ratio = Some(row.p50_us / d.p50_us);
                    row.p99_ratio = Some(row.p99_us / d.p99_us);
                    row.throughput_ratio = Some(row.throughput / d.throughput);
                } else {
                    direct = Some(row.clone());
                }
                eprintln!(
                    "{:<22} {:<10} c={:<3} {:>9.0} req/s  p50 {:>8.1} µs  p99 {:>8.1} µs  errors {}",
                    row.op,
                    row.via,
                    row.concurrency,
                    row.throughput,
                    row.p50_us,
                    row.p99_us,
                    row.errors
                );
                if args.quick {
                    ensure!(
                        row.errors == 0 && row.requests > 0,
                        "{} via {} at c={}: {} requests, {} errors",
                        row.op,
                        row.via,
                        row.concurrency,
                        row.requests,
                        row.errors
                    );
                }
                rows.push(row);
            }
        }
    }
    let library_rows = client_rows(&sidecar, &http_socket, &redis, args.quick)?;
    let socketio = socketio_rows(&args.sidecar, &redis, args.quick)?;
    let report = Report {
        clients: library_rows,
        socketio,
        mode: if args.quick { "quick" } else { "full" },
        sidecar: args.sidecar.display().to_string(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        redis_version: clients.redis_version().await?,
        sidecar_rss_idle_mb: rss_idle,
        sidecar_rss_after_mb: proc_kb(pid, "VmRSS")? as f64 / 1024.0,
        sidecar_rss_peak_mb: proc_kb(pid, "VmHWM")? as f64 / 1024.0,
        plugin_authorize,
        rows,
    };
    if let Some(parent) = args.json.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
    std::fs::write(&args.markdown, markdown(&report, window))?;
    eprintln!(
        "wrote {} and {}",
        args.markdown.display(),
        args.json.display()
    );
    drop(sidecar);
    Ok(())
}

/// Medians of `calls` in-process `authorize` calls: with no plugin, and
/// through `tenant-guard` allowing and denying; every decision checked.
fn plugin_cost(calls: usize) -> Result<PluginCost> {
    use outrigger::app::{App, Stores};
    use outrigger::config::{Config, PluginConfig, PrimitiveName};
    use outrigger::plugins::{Call, Caller, Operation};

    let config = Config {
        plugins: vec![PluginConfig::new(
            "guard",
            outrigger_tests::plugin_wasm("tenant_guard"),
        )],
        ..Config::default()
    };
    let with = App::with_stores(&config, Stores::memory(&config));
    let without = App::with_stores(&Config::default(), Stores::memory(&Config::default()));
    let caller = Caller {
        id: None,
        attributes: vec![("tenant".into(), "acme".into())],
    };
    let median = |app: &App, target: &str| -> Result<f64> {
        let mut times = Vec::with_capacity(calls);
        for _ in 0..calls {
            let started = Instant::now();
            let result = app.authorize(
                &caller,
                Call::new(PrimitiveName::Cache, Operation::Read, target),
            );
            times.push(started.elapsed());
            ensure!(
                result.is_ok() == target.starts_with("acme:"),
                "authorize {target}: {result:?}"
            );
        }
        times.sort();
        Ok(times[times.len() / 2].as_secs_f64() * 1e6)
    };
    Ok(PluginCost {
        calls,
        no_plugin_us: median(&without, "acme:k")?,
        tenant_guard_allow_us: median(&with, "acme:k")?,
        tenant_guard_deny_us: median(&with, "globex:k")?,
    })
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// Runs `run` from `concurrency` workers: a warm-up, then a timed window
/// in which every request's latency is kept.
async fn measure(
    op: &'static str,
    via: &'static str,
    concurrency: usize,
    warmup: Duration,
    window: Duration,
    run: Op,
) -> Row {
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + window;
    let workers = (0..concurrency).map(|worker| {
        let run = run.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(4096);
            let mut errors = 0u64;
            let mut seq = 0u64;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                let result = tokio::time::timeout(Duration::from_secs(5), run(worker, seq)).await;
                seq += 1;
                let took = t.elapsed();
                if t >= measure_from {
                    match result {
                        Ok(Ok(())) => latencies.push(took.as_nanos() as u64),
                        Ok(Err(err)) => {
                            if errors == 0 {
                                eprintln!("{op} via {via}: {err:#}");
                            }
                            errors += 1;
                        }
                        Err(_) => errors += 1,
                    }
                }
            }
            (latencies, errors)
        })
    });
    let mut all = Vec::new();
    let mut errors = 0;
    for done in futures::future::join_all(workers).await {
        let (latencies, e) = done.expect("worker panicked");
        all.extend(latencies);
        errors += e;
    }
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return f64::NAN;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        all[i] as f64 / 1000.0
    };
    Row {
        op,
        via,
        concurrency,
        requests: all.len() as u64,
        errors,
        throughput: all.len() as f64 / window.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        cpu_ms_per_1k: None,
        p50_ratio: None,
        p99_ratio: None,
        throughput_ratio: None,
    }
}

/// Every client, connected once and shared by the workers.
struct Clients {
    redis: redis::aio::MultiplexedConnection,
    redis_client: redis::Client,
    grpc: Channel,
    grpc_uds: Channel,
    http: reqwest::Client,
    http_uds: reqwest::Client,
    http_socket: PathBuf,
    base: String,
}

impl Clients {
    async fn connect(
        sidecar: &Sidecar,
        redis: &RedisServer,
        http_socket: &std::path::Path,
        grpc_socket: &std::path::Path,
    ) -> Result<Clients> {
        let redis_client = redis::Client::open(redis.url())?;
        let path = grpc_socket.to_path_buf();
        let grpc_uds = tonic::transport::Endpoint::from_static("http://outrigger")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await?;
        Ok(Clients {
            redis: redis_client.get_multiplexed_async_connection().await?,
            redis_client,
            grpc: sidecar.channel().await,
            grpc_uds,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(128)
                .build()?,
            http_uds: reqwest::Client::builder()
                .unix_socket(http_socket.to_path_buf())
                .pool_max_idle_per_host(128)
                .build()?,
            http_socket: http_socket.to_path_buf(),
            base: sidecar.url(""),
        })
    }

    /// The entry every "hit" reads, through the sidecar and directly.
    async fn prepare(&self) -> Result<()> {
        let resp = self
            .http
            .put(format!("{}/v1/cache/hit", self.base))
            .body(&VALUE[..])
            .send()
            .await?;
        ensure!(
            resp.status() == 200,
            "seeding the hit key: {}",
            resp.status()
        );
        let mut conn = self.redis.clone();
        let _: () = redis::cmd("SET")
            .arg("direct:hit")
            .arg(&VALUE[..])
            .query_async(&mut conn)
            .await?;
        // The map field every "map field get" reads.
        let resp = self
            .http
            .put(format!("{}/v1/maps/read/f", self.base))
            .body(&VALUE[..])
            .send()
            .await?;
        ensure!(
            resp.status() == 200,
            "seeding the map field: {}",
            resp.status()
        );
        let _: () = redis::cmd("HSET")
            .arg("direct:map:{read}")
            .arg("f")
            .arg(&VALUE[..])
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn redis_version(&self) -> Result<String> {
        let mut conn = self.redis.clone();
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim()
            .to_string())
    }
}

fn op<F, Fut>(f: F) -> Op
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    Arc::new(move |w, i| Box::pin(f(w, i)))
}

/// What to measure: for each operation, the direct-Redis way first, then
/// each way through the sidecar.
fn plan(c: &Clients) -> Vec<(&'static str, Vec<(&'static str, Op)>)> {
    let scripts = Arc::new(DirectScripts::new());
    let mut plan = Vec::new();
    // --- cache get, hit -------------------------------------------------
    let mut vias: Vec<(&'static str, Op)> = vec![("direct", {
        let conn = c.redis.clone();
        op(move |_, _| {
            let mut conn = conn.clone();
            async move {
                let v: Option<Vec<u8>> = redis::cmd("GET")
                    .arg("direct:hit")
                    .query_async(&mut conn)
                    .await?;
                ensure!(v.as_deref() == Some(&VALUE[..]), "wrong value");
                Ok(())
            }
        })
    })];
    for (via, channel) in [("grpc", &c.grpc), ("grpc+uds", &c.grpc_uds)] {
        let client = CacheClient::new(channel.clone());
        vias.push((
            via,
            op(move |_, _| {
                let mut client = client.clone();
                async move {
                    let r = client
                        .get(pb::GetRequest {
                            key: "hit".into(),
                            refresh_ttl: false,
                        })
                        .await?
                        .into_inner();
                    ensure!(r.found && &r.value[..] == VALUE, "wrong value");
                    Ok(())
                }
            }),
        ));
    }
    for (via, http) in [("http", &c.http), ("http+uds", &c.http_uds)] {
        let (http, url) = (http.clone(), base_for(c, via, "/v1/cache/hit"));
        vias.push((
            via,
            op(move |_, _| {
                let req = http.get(&url);
                async move {
                    let resp = req.send().await?;
                    ensure!(resp.status() == 200, "status {}", resp.status());
                    ensure!(&resp.bytes().await?[..] == VALUE, "wrong value");
                    Ok(())
                }
            }),
        ));
    }
    vias.push((
        "http+uds raw",
        raw_http(c, "GET /v1/cache/hit", 200, Some(VALUE)),
    ));
    plan.push(("cache get (hit)", vias));

    // --- cache get, miss ------------------------------------------------
    let mut vias: Vec<(&'static str, Op)> = vec![("direct", {
        let conn = c.redis.clone();
        op(move |_, _| {
            let mut conn = conn.clone();
            async move {
                let v: Option<Vec<u8>> = redis::cmd("GET")
                    .arg("direct:absent")
                    .query_async(&mut conn)
                    .await?;
                ensure!(v.is_none(), "found");
                Ok(())
            }
        })
    })];
    for (via, channel) in [("grpc", &c.grpc), ("grpc+uds", &c.grpc_uds)] {
        let client = CacheClient::new(channel.clone());
        vias.push((
            via,
            op(move |_, _| {
                let mut client = client.clone();
                async move {
                    let r = client
                        .get(pb::GetRequest {
                            key: "absent".into(),
                            refresh_ttl: false,
                        })
                        .await?
                        .into_inner();
                    ensure!(!r.found, "found");
                    Ok(())
                }
            }),
        ));
    }
    for (via, http) in [("http", &c.http), ("http+uds", &c.http_uds)] {
        let (http, url) = (http.clone(), base_for(c, via, "/v1/cache/absent"));
        vias.push((
            via,
            op(move |_, _| {
                let req = http.get(&url);
                async move {
                    let resp = req.send().await?;
                    ensure!(resp.status() == 404, "status {}", resp.status());
                    Ok(())
                }
            }),
        ));
    }
    vias.push((
        "http+uds raw",
        raw_http(c, "GET /v1/cache/absent", 404, None),
    ));
    plan.push(("cache get (miss)", vias));

    // --- cache set ------------------------------------------------------
    let mut vias: Vec<(&'static str, Op)> = vec![("direct", {
        let conn = c.redis.clone();
        op(move |w, _| {
            let mut conn = conn.clone();
            async move {
                let _: () = redis::cmd("SET")
                    .arg(format!("direct:set:{w}"))
                    .arg(&VALUE[..])
                    .arg("PX")
                    .arg(60_000)
                    .query_async(&mut conn)
                    .await?;
                Ok(())
            }
        })
    })];
    for (via, channel) in [("grpc", &c.grpc), ("grpc+uds", &c.grpc_uds)] {
        let client = CacheClient::new(channel.clone());
        vias.push((
            via,
            op(move |w, _| {
                let mut client = client.clone();
                async move {
                    client
                        .set(pb::SetRequest {
                            key: format!("set:{w}"),
                            value: VALUE[..].to_vec().into(),
                            ttl_ms: 60_000,
                            ..Default::default()
                        })
                        .await?;
                    Ok(())
                }
            }),
        ));
    }
    for (via, http) in [("http", &c.http), ("http+uds", &c.http_uds)] {
        let http = http.clone();
        let base = base_for(c, via, "/v1/cache/set:");
        vias.push((
            via,
            op(move |w, _| {
                let req = http.put(format!("{base}{w}?ttl_ms=60000")).body(&VALUE[..]);
                async move {
                    let resp = req.send().await?;
                    ensure!(resp.status() == 200, "status {}", resp.status());
                    Ok(())
                }
            }),
        ));
    }
    plan.push(("cache set", vias));

    // --- lock acquire + release ----------------------------------------
    let mut vias: Vec<(&'static str, Op)> = vec![("direct", {
        let (conn, scripts) = (c.redis.clone(), scripts.clone());
        op(move |w, i| {
            let (mut conn, scripts) = (conn.clone(), scripts.clone());
            async move {
                let key = format!("direct:lock:{{l{w}}}");
                let token = format!("t{w}-{i}");
                let (acquired, _fence): (i64, i64) = scripts
                    .lock_acquire
                    .key(&key)
                    .key(format!("{key}:fence"))
                    .arg(&token)
                    .arg(10_000)
                    .invoke_async(&mut conn)
                    .await?;
                ensure!(acquired == 1, "not acquired");
                let released: i64 = scripts
                    .lock_release
                    .key(&key)
                    .arg(&token)
                    .arg("direct:released")
                    .arg(format!("lock:l{w}"))
                    .invoke_async(&mut conn)
                    .await?;
                ensure!(released == 1, "not released");
                Ok(())
            }
        })
    })];
    let client = LockClient::new(c.grpc.clone());
    vias.push((
        "grpc",
        op(move |w, _| {
            let mut client = client.clone();
            async move {
                let name = format!("l{w}");
                let got = client
                    .acquire(pb::AcquireRequest {
                        name: name.clone(),
                        ttl_ms: 10_000,
                        wait_ms: 0,
                    })
                    .await?
                    .into_inner();
                ensure!(got.acquired, "not acquired");
                let released = client
                    .release(pb::ReleaseRequest {
                        name,
                        token: got.token,
                    })
                    .await?
                    .into_inner();
                ensure!(released.released, "not released");
                Ok(())
            }
        }),
    ));
    let (http, base) = (c.http.clone(), c.base.clone());
    vias.push((
        "http",
        op(move |w, _| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let resp = http
                    .post(format!("{base}/v1/locks/l{w}/acquire"))
                    .json(&serde_json::json!({"ttl_ms": 10_000}))
                    .send()
                    .await?;
                ensure!(resp.status() == 200, "acquire: {}", resp.status());
                let body: serde_json::Value = resp.json().await?;
                let resp = http
                    .post(format!("{base}/v1/locks/l{w}/release"))
                    .json(&serde_json::json!({"token": body["token"]}))
                    .send()
                    .await?;
                ensure!(resp.status() == 200, "release: {}", resp.status());
                Ok(())
            }
        }),
    ));
    plan.push(("lock acquire+release", vias));

    // --- rate-limit check ----------------------------------------------
    let mut vias: Vec<(&'static str, Op)> = vec![("direct", {
        let (conn, scripts) = (c.redis.clone(), scripts.clone());
        op(move |w, _| {
            let (mut conn, scripts) = (conn.clone(), scripts.clone());
            async move {
                // The sidecar's own script with the same arguments.
                let (allowed, _, _, _): (i64, i64, i64, i64) = scripts
                    .gcra
                    .key(format!("direct:rl:gcra:{{bench:k{w}}}"))
                    .arg(format!("{:.6}", 1_000_000f64 / 1_000_000_000f64))
                    .arg(1_000_000_000u32)
                    .arg(1)
                    .invoke_async(&mut conn)
                    .await?;
                ensure!(allowed == 1, "denied");
                Ok(())
            }
        })
    })];
    let client = RateLimitClient::new(c.grpc.clone());
    vias.push((
        "grpc",
        op(move |w, _| {
            let mut client = client.clone();
            async move {
                let r = client
                    .check(pb::CheckRequest {
                        policy: "bench".into(),
                        key: format!("k{w}"),
                        cost: 1,
                        inline: None,
                    })
                    .await?
                    .into_inner();
                ensure!(r.allowed, "denied");
                Ok(())
            }
        }),
    ));
    let (http, url) = (
        c.http.clone(),
        format!("{}/v1/ratelimit/bench/check", c.base),
    );
    vias.push((
        "http",
        op(move |w, _| {
            let req = http
                .post(&url)
                .json(&serde_json::json!({"key": format!("k{w}")}));
            async move {
                let resp = req.send().await?;
                ensure!(resp.status() == 200, "status {}", resp.status());
                Ok(())
            }
        }),
    ));
    plan.push(("rate-limit check", vias));

    // --- presence join (heartbeat) -------------------------------------
    let mut vias: Vec<(&'static str, Op)> = vec![("direct", {
        let (conn, scripts) = (c.redis.clone(), scripts.clone());
        op(move |w, _| {
            let (mut conn, scripts) = (conn.clone(), scripts.clone());
            async move {
                // What the sidecar sends: the join script, then the
                // member's room index.
                let key = format!("direct:pr:{{room{w}}}");
                let _: i64 = scripts
                    .presence_join
                    .key(&key)
                    .key(format!("{key}:meta"))
                    .arg(format!("m{w}"))
                    .arg("{}")
                    .arg(60_000)
                    .arg(&key)
                    .invoke_async(&mut conn)
                    .await?;
                let index = format!("direct:pm:{{m{w}}}");
                let _: () = redis::pipe()
                    .sadd(&index, format!("room{w}"))
                    .ignore()
                    .pexpire(&index, 120_000)
                    .ignore()
                    .query_async(&mut conn)
                    .await?;
                Ok(())
            }
        })
    })];
    let client = PresenceClient::new(c.grpc.clone());
    vias.push((
        "grpc",
        op(move |w, _| {
            let mut client = client.clone();
            async move {
                client
                    .join(pb::JoinRequest {
                        room: format!("room{w}"),
                        member: format!("m{w}"),
                        metadata: b"{}".to_vec().into(),
                        ttl_ms: 60_000,
                    })
                    .await?;
                Ok(())
            }
        }),
    ));
    let (http, base) = (c.http.clone(), c.base.clone());
    vias.push((
        "http",
        op(move |w, _| {
            let req = http
                .put(format!("{base}/v1/presence/room{w}/m{w}"))
                .json(&serde_json::json!({"metadata": {}, "ttl_ms": 60_000}));
            async move {
                let resp = req.send().await?;
                ensure!(resp.status() == 200, "status {}", resp.status());
                Ok(())
            }
        }),
    ));
    plan.push(("presence join", vias));

    // --- counter increment ----------------------------------------------
    let mut vias: Vec<(&'static str, Op)> = vec![("direct", {
        let conn = c.redis.clone();
        op(move |w, _| {
            let mut conn = conn.clone();
            async move {
                let _: i64 = redis::cmd("INCR")
                    .arg(format!("direct:ctr:{{c{w}}}"))
                    .query_async(&mut conn)
                    .await?;
                Ok(())
            }
        })
    })];
    let client = CounterClient::new(c.grpc.clone());
    vias.push((
        "grpc",
        op(move |w, _| {
            let mut client = client.clone();
            async move {
                let r = client
                    .increment(pb::IncrementRequest {
                        name: format!("c{w}"),
                        by: 1,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                ensure!(r.value > 0, "not counted");
                Ok(())
            }
        }),
    ));
    let http = c.http.clone();
    let base = format!("{}/v1/counters/c", c.base);
    vias.push((
        "http",
        op(move |w, _| {
            let req = http
                .post(format!("{base}{w}/incr"))
                .json(&serde_json::json!({"by": 1}));
            async move {
                let resp = req.send().await?;
                ensure!(resp.status() == 200, "status {}", resp.status());
                Ok(())
            }
        }),
    ));
    plan.push(("counter increment", vias));

    // --- map field set --------------------------------------------------
    let mut vias: Vec<(&'static str, Op)> = vec![("direct", {
        let conn = c.redis.clone();
        op(move |w, _| {
            let mut conn = conn.clone();
            async move {
                let _: i64 = redis::cmd("HSET")
                    .arg(format!("direct:map:{{m{w}}}"))
                    .arg("f")
                    .arg(&VALUE[..])
                    .query_async(&mut conn)
                    .await?;
                Ok(())
            }
        })
    })];
    let client = MapClient::new(c.grpc.clone());
    vias.push((
        "grpc",
        op(move |w, _| {
            let mut client = client.clone();
            async move {
                let set = pb::SetField {
                    field: "f".into(),
                    value: VALUE.to_vec().into(),
                    ..Default::default()
                };
                client
                    .update(pb::UpdateMapRequest {
                        map: format!("m{w}"),
                        changes: vec![pb::MapChange {
                            change: Some(pb::map_change::Change::Set(set)),
                        }],
                        ..Default::default()
                    })
                    .await?;
                Ok(())
            }
        }),
    ));
    let (http, base) = (c.http.clone(), c.base.clone());
    vias.push((
        "http",
        op(move |w, _| {
            let req = http.put(format!("{base}/v1/maps/m{w}/f")).body(&VALUE[..]);
            async move {
                let resp = req.send().await?;
                ensure!(resp.status() == 200, "status {}", resp.status());
                Ok(())
            }
        }),
    ));
    plan.push(("map field set", vias));

    // --- map field get --------------------------------------------------
    let mut vias: Vec<(&'static str, Op)> = vec![("direct", {
        let conn = c.redis.clone();
        op(move |_, _| {
            let mut conn = conn.clone();
            async move {
                let v: Option<Vec<u8>> = redis::cmd("HGET")
                    .arg("direct:map:{read}")
                    .arg("f")
                    .query_async(&mut conn)
                    .await?;
                ensure!(v.is_some(), "missing");
                Ok(())
            }
        })
    })];
    let client = MapClient::new(c.grpc.clone());
    vias.push((
        "grpc",
        op(move |_, _| {
            let mut client = client.clone();
            async move {
                let r = client
                    .get(pb::GetFieldsRequest {
                        map: "read".into(),
                        fields: vec!["f".into()],
                    })
                    .await?
                    .into_inner();
                ensure!(r.fields.first().is_some_and(|f| f.present), "missing");
                Ok(())
            }
        }),
    ));
    let (http, base) = (c.http.clone(), c.base.clone());
    vias.push((
        "http",
        op(move |_, _| {
            let req = http.get(format!("{base}/v1/maps/read/f"));
            async move {
                let resp = req.send().await?;
                ensure!(resp.status() == 200, "status {}", resp.status());
                resp.bytes().await?;
                Ok(())
            }
        }),
    ));
    plan.push(("map field get", vias));

    // --- publish -> receive ---------------------------------------------
    plan.push((
        "publish→receive",
        vec![
            ("direct", direct_pubsub(c)),
            ("grpc", grpc_pubsub(c)),
            ("http", http_pubsub(c)),
        ],
    ));
    plan
}

/// A minimal HTTP/1.1 keep-alive client over the Unix socket, one
/// connection per worker: what the sidecar's hop costs without a client
/// library's own machinery (pools, connection tasks) on top.
fn raw_http(c: &Clients, request_line: &str, status: u16, body: Option<&'static [u8]>) -> Op {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    type Conn = BufReader<tokio::net::UnixStream>;
    let request = format!("{request_line} HTTP/1.1\r\nhost: outrigger\r\n\r\n").into_bytes();
    let request: Arc<[u8]> = request.into();
    let socket = c.http_socket.clone();
    let conns: Arc<Vec<Mutex<Option<Conn>>>> =
        Arc::new((0..CONCURRENCY[1]).map(|_| Mutex::new(None)).collect());
    op(move |w, _| {
        let (request, socket, conns) = (request.clone(), socket.clone(), conns.clone());
        async move {
            let mut slot = conns[w].lock().await;
            if slot.is_none() {
                *slot = Some(BufReader::new(
                    tokio::net::UnixStream::connect(&socket).await?,
                ));
            }
            let conn = slot.as_mut().expect("connected");
            conn.get_mut().write_all(&request).await?;
            let mut line = String::new();
            conn.read_line(&mut line).await?;
            let got: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("status line {line:?}"))?;
            let mut length = 0usize;
            loop {
                line.clear();
                conn.read_line(&mut line).await?;
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse()?;
                }
            }
            let mut content = vec![0u8; length];
            conn.read_exact(&mut content).await?;
            ensure!(got == status, "status {got}");
            if let Some(body) = body {
                ensure!(content == body, "wrong value");
            }
            Ok(())
        }
    })
}

fn base_for(c: &Clients, via: &str, path: &str) -> String {
    if via.ends_with("+uds") {
        // The host is ignored over a Unix socket.
        format!("http://outrigger{path}")
    } else {
        format!("{}{path}", c.base)
    }
}

/// The sidecar's own scripts, for the direct rows.
struct DirectScripts {
    lock_acquire: redis::Script,
    lock_release: redis::Script,
    gcra: redis::Script,
    presence_join: redis::Script,
}

impl DirectScripts {
    fn new() -> Self {
        DirectScripts {
            lock_acquire: redis::Script::new(include_str!(
                "../../sidecar/src/primitives/lock/lock_acquire.lua"
            )),
            lock_release: redis::Script::new(include_str!(
                "../../sidecar/src/primitives/lock/lock_release.lua"
            )),
            gcra: redis::Script::new(concat!(
                include_str!("../../sidecar/src/primitives/ratelimit/lib.lua"),
                include_str!("../../sidecar/src/primitives/ratelimit/gcra.lua")
            )),
            presence_join: redis::Script::new(include_str!(
                "../../sidecar/src/primitives/presence/presence_join.lua"
            )),
        }
    }
}

/// A worker's subscription: messages arrive here, in order.
type Inbox = Arc<Mutex<futures::stream::BoxStream<'static, Result<String>>>>;

/// Waits until the message `want` arrives, skipping older ones.
async fn receive(inbox: &Inbox, want: &str) -> Result<()> {
    let mut inbox = inbox.lock().await;
    loop {
        match inbox.next().await {
            Some(Ok(payload)) if payload.contains(want) => return Ok(()),
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(err),
            None => bail!("subscription ended"),
        }
    }
}

/// Publishes until the subscription demonstrably receives, so that the
/// timed requests never race a subscription still being set up.
async fn prime<P, PF>(inbox: &Inbox, publish: P) -> Result<()>
where
    P: Fn(String) -> PF,
    PF: Future<Output = Result<()>>,
{
    for attempt in 0..50 {
        let marker = format!("prime-{attempt}");
        publish(marker.clone()).await?;
        if tokio::time::timeout(Duration::from_millis(200), receive(inbox, &marker))
            .await
            .is_ok()
        {
            return Ok(());
        }
    }
    bail!("the subscription never received anything")
}

/// One subscription per worker, made lazily on its first request.
struct Inboxes(Mutex<BTreeMap<usize, Inbox>>);

impl Inboxes {
    fn new() -> Arc<Self> {
        Arc::new(Inboxes(Mutex::new(BTreeMap::new())))
    }
}

fn direct_pubsub(c: &Clients) -> Op {
    let (client, conn) = (c.redis_client.clone(), c.redis.clone());
    let inboxes = Inboxes::new();
    op(move |w, i| {
        let (client, mut conn, inboxes) = (client.clone(), conn.clone(), inboxes.clone());
        async move {
            let channel = format!("direct:ps:c{w}");
            let inbox = {
                let mut map = inboxes.0.lock().await;
                match map.get(&w) {
                    Some(inbox) => inbox.clone(),
                    None => {
                        let mut pubsub = client.get_async_pubsub().await?;
                        pubsub.subscribe(&channel).await?;
                        let stream = pubsub.into_on_message().map(|m| {
                            Ok(String::from_utf8_lossy(m.get_payload_bytes()).into_owned())
                        });
                        let inbox: Inbox = Arc::new(Mutex::new(stream.boxed()));
                        map.insert(w, inbox.clone());
                        inbox
                    }
                }
            };
            let payload = format!("m{w}-{i}");
            let _: () = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(&payload)
                .query_async(&mut conn)
                .await?;
            receive(&inbox, &payload).await
        }
    })
}

fn grpc_pubsub(c: &Clients) -> Op {
    let channel = c.grpc.clone();
    let inboxes = Inboxes::new();
    op(move |w, i| {
        let (mut client, inboxes) = (PubSubClient::new(channel.clone()), inboxes.clone());
        async move {
            let name = format!("c{w}");
            let inbox = {
                let mut map = inboxes.0.lock().await;
                match map.get(&w) {
                    Some(inbox) => inbox.clone(),
                    None => {
                        let stream = client
                            .subscribe(pb::SubscribeRequest {
                                channels: vec![name.clone()],
                                ..Default::default()
                            })
                            .await?
                            .into_inner()
                            .map(|event| {
                                let event = event?;
                                match event.event {
                                    Some(pb::subscribe_event::Event::Message(m)) => {
                                        Ok(String::from_utf8_lossy(&m.payload).into_owned())
                                    }
                                    other => Err(anyhow!("unexpected event {other:?}")),
                                }
                            });
                        let inbox: Inbox = Arc::new(Mutex::new(stream.boxed()));
                        let publisher = client.clone();
                        prime(&inbox, |payload| {
                            let (mut publisher, name) = (publisher.clone(), name.clone());
                            async move {
                                publisher
                                    .publish(pb::PublishRequest {
                                        channel: name,
                                        payload: payload.into_bytes().into(),
                                        ..Default::default()
                                    })
                                    .await?;
                                Ok(())
                            }
                        })
                        .await?;
                        map.insert(w, inbox.clone());
                        inbox
                    }
                }
            };
            let payload = format!("m{w}-{i}");
            client
                .publish(pb::PublishRequest {
                    channel: name,
                    payload: payload.clone().into_bytes().into(),
                    ..Default::default()
                })
                .await?;
            receive(&inbox, &payload).await
        }
    })
}

fn http_pubsub(c: &Clients) -> Op {
    let (http, base) = (c.http.clone(), c.base.clone());
    let inboxes = Inboxes::new();
    op(move |w, i| {
        let (http, base, inboxes) = (http.clone(), base.clone(), inboxes.clone());
        async move {
            let url = format!("{base}/v1/pubsub/h{w}");
            let inbox = {
                let mut map = inboxes.0.lock().await;
                match map.get(&w) {
                    Some(inbox) => inbox.clone(),
                    None => {
                        let resp = http
                            .get(&url)
                            .header("accept", "text/event-stream")
                            .send()
                            .await?;
                        ensure!(resp.status() == 200, "subscribe: {}", resp.status());
                        let inbox: Inbox = Arc::new(Mutex::new(sse_data(resp).boxed()));
                        prime(&inbox, |payload| {
                            let req = http.post(&url).body(payload);
                            async move {
                                let resp = req.send().await?;
                                ensure!(resp.status() == 200, "publish: {}", resp.status());
                                Ok(())
                            }
                        })
                        .await?;
                        map.insert(w, inbox.clone());
                        inbox
                    }
                }
            };
            let payload = format!("m{w}-{i}");
            let resp = http.post(&url).body(payload.clone()).send().await?;
            ensure!(resp.status() == 200, "publish: {}", resp.status());
            receive(&inbox, &payload).await
        }
    })
}

/// The `data:` lines of a Server-Sent Events response.
fn sse_data(resp: reqwest::Response) -> impl futures::Stream<Item = Result<String>> + Send {
    let bytes = resp.bytes_stream();
    futures::stream::unfold(
        (bytes, String::new()),
        |(mut bytes, mut buffer)| async move {
            loop {
                if let Some(end) = buffer.find('\n') {
                    let line: String = buffer.drain(..=end).collect();
                    if let Some(data) = line.strip_prefix("data:") {
                        return Some((Ok(data.trim().to_string()), (bytes, buffer)));
                    }
                    continue;
                }
                match bytes.next().await {
                    Some(Ok(chunk)) => buffer.push_str(&String::from_utf8_lossy(&chunk)),
                    Some(Err(err)) => return Some((Err(err.into()), (bytes, buffer))),
                    None => return None,
                }
            }
        },
    )
}

/// A `/proc/<pid>/status` field, in kB.
fn proc_kb(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{field} in /proc/{pid}/status"))
}

/// User plus system CPU time of the process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let after = stat.rsplit_once(')').context("stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line.
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// The client libraries' table, with their targets: a near-cache hit at
/// least as fast as the direct client's GET at p50, Redis-reaching
/// operations within 1.5x.
fn clients_section(out: &mut String, r: &Report) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "## Client libraries\n\n\
         The Python client (`sdk/client-python`) next to redis-py and the Node client \
         (`sdk/client-node`) next to ioredis, the same operations in the same run, one \
         request at a time (concurrency 1), each way for the same time window. \"direct\" \
         sends what the sidecar sends (its own Lua scripts where it uses one). Targets: a \
         near-cache hit at p50 ≤ 1.0× the direct GET; Redis-reaching operations ≤ 1.5×.\n"
    );
    let _ = writeln!(
        out,
        "| client | operation | via | p50 µs | p99 µs | p50 × | p99 × | target met |"
    );
    let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|---|");
    for row in &r.clients {
        let limit = if row.op.contains("near cache") {
            1.0
        } else {
            1.5
        };
        let met = row.p50_ratio.map_or(String::new(), |x| {
            if x <= limit {
                "yes".into()
            } else {
                format!("no (≤ {limit}×)")
            }
        });
        let x = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.2}"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} | {:.1} | {} | {} | {} |",
            row.client,
            row.op,
            row.via,
            row.p50_us,
            row.p99_us,
            x(row.p50_ratio),
            x(row.p99_ratio),
            met
        );
    }
    let _ = writeln!(out);
}

/// The Socket.IO adapter next to the official Redis adapter, with its
/// targets: p50 ≤ 1.5× and throughput ≥ 0.7× the Redis adapter's.
fn socketio_section(out: &mut String, r: &Report) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "## Socket.IO adapter\n\n\
         A broadcast to a room made on Socket.IO instance A reaching a client connected to \
         instance B (`sdk/socketio-adapter/bench.mjs`): `@outrigger/socket.io-adapter` (each \
         instance with its own sidecar, over its Unix socket) next to \
         `@socket.io/redis-adapter` on the same Redis in the same run. Latency one packet at a \
         time; throughput with up to 256 packets in flight. Both instances and the client \
         share one Node process. Targets: p50 ≤ 1.5× and throughput ≥ 0.7× the Redis \
         adapter's. A packet through the sidecars takes four loopback hops (instance → \
         sidecar → Redis → sidecar → instance) where the Redis adapter's takes two, so about \
         2× is the floor of the p50; the rest is the sidecar's pub/sub path (issue 24) and \
         the adapter's framing.\n"
    );
    let _ = writeln!(
        out,
        "| adapter | p50 µs | p99 µs | packets/s | p50 × | packets/s × | target met |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|");
    let base = r
        .socketio
        .iter()
        .find(|row| row.adapter.contains("redis-adapter"));
    for row in &r.socketio {
        let (ratios, met) = match base {
            Some(b) if !std::ptr::eq(b, row) => {
                let (lat, tput) = (row.p50_us / b.p50_us, row.packets_per_s / b.packets_per_s);
                let met = match (lat <= 1.5, tput >= 0.7) {
                    (true, true) => "yes".to_string(),
                    (false, true) => "throughput; p50 no (≤ 1.5×)".into(),
                    (true, false) => "p50; throughput no (≥ 0.7×)".into(),
                    (false, false) => "no".into(),
                };
                (format!("{lat:.2} | {tput:.2}"), met)
            }
            _ => (" | ".to_string(), String::new()),
        };
        let _ = writeln!(
            out,
            "| `{}` | {:.1} | {:.1} | {:.0} | {} | {} |",
            row.adapter, row.p50_us, row.p99_us, row.packets_per_s, ratios, met
        );
    }
    let _ = writeln!(out);
}

fn markdown(r: &Report, window: Duration) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Generated by `scripts/bench.sh` (`outrigger-bench`, {} mode): `{}` \
         (Redis backend, near cache on) and redis-server {} on this machine ({} CPUs), \
         client and servers sharing the cores. Each cell: a warm-up, then {} ms timed; \
         every request's latency recorded. \"direct\" is the same operation sent straight \
         to Redis with redis-rs (one multiplexed connection; the sidecar's own Lua scripts \
         where the sidecar uses one), measured in the same run. Ratios are sidecar ÷ direct: \
         latency ratios below 1 and throughput ratios above 1 favour the sidecar.\n",
        r.mode,
        r.sidecar,
        r.redis_version,
        r.cpus,
        window.as_millis()
    );
    let _ = writeln!(
        out,
        "Sidecar memory: RSS {:.1} MB idle, {:.1} MB after the run, {:.1} MB peak.\n",
        r.sidecar_rss_idle_mb, r.sidecar_rss_after_mb, r.sidecar_rss_peak_mb
    );
    targets(&mut out, r);
    let p = &r.plugin_authorize;
    let _ = writeln!(
        out,
        "## Plugin calls\n\n\
         One `authorize` hook call, in-process (plugins run inline, on the request's own \
         thread), median of {} calls:\n\n\
         | no plugin | tenant-guard, allowed | tenant-guard, denied |\n\
         |---:|---:|---:|\n\
         | {:.2} µs | {:.2} µs | {:.2} µs |\n",
        p.calls, p.no_plugin_us, p.tenant_guard_allow_us, p.tenant_guard_deny_us
    );
    clients_section(&mut out, r);
    socketio_section(&mut out, r);
    let _ = writeln!(out, "## All measurements\n");
    let _ = writeln!(
        out,
        "| operation | via | c | req/s | p50 µs | p99 µs | p99.9 µs | p50 × | p99 × | req/s × | sidecar CPU ms / 1k req |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let x = |v: Option<f64>| v.map_or("".to_string(), |v| format!("{v:.2}"));
    for row in &r.rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} |",
            row.op,
            row.via,
            row.concurrency,
            row.throughput,
            row.p50_us,
            row.p99_us,
            row.p999_us,
            x(row.p50_ratio),
            x(row.p99_ratio),
            x(row.throughput_ratio),
            row.cpu_ms_per_1k
                .map_or("".to_string(), |v| format!("{v:.1}")),
        );
    }
    out
}

/// The targets the sidecar is held to, checked against this run: for each,
/// the best way through the sidecar and whether it meets the target.
fn targets(out: &mut String, r: &Report) {
    use std::fmt::Write;
    let best = |op: &str, c: usize, key: fn(&Row) -> Option<f64>, lower: bool| {
        r.rows
            .iter()
            .filter(|row| row.op == op && row.concurrency == c && row.via != "direct")
            .filter_map(|row| key(row).map(|v| (v, row.via)))
            .reduce(|a, b| if (b.0 < a.0) == lower { b } else { a })
    };
    let _ = writeln!(out, "## Targets\n");
    let _ = writeln!(
        out,
        "| target | best way through the sidecar | measured | met |"
    );
    let _ = writeln!(out, "|---|---|---:|---|");
    let mut line = |what: String, found: Option<(f64, &str)>, limit: f64, lower: bool| {
        let (text, via, met) = match found {
            Some((v, via)) => (
                format!("{v:.2}"),
                via,
                if (v <= limit) == lower { "yes" } else { "no" },
            ),
            None => ("-".into(), "-", "-"),
        };
        let _ = writeln!(out, "| {what} | {via} | {text} | {met} |");
    };
    line(
        "cache get (hit), c=1: p50 ≤ 1.0× direct GET".into(),
        best("cache get (hit)", 1, |row| row.p50_ratio, true),
        1.0,
        true,
    );
    let mut ops: Vec<&str> = r.rows.iter().map(|row| row.op).collect();
    ops.dedup();
    for op in ops.iter().filter(|op| **op != "cache get (hit)") {
        line(
            format!("{op}, c=1: p50 ≤ 2× direct"),
            best(op, 1, |row| row.p50_ratio, true),
            2.0,
            true,
        );
        line(
            format!("{op}, c=1: p99 ≤ 2.5× direct"),
            best(op, 1, |row| row.p99_ratio, true),
            2.5,
            true,
        );
    }
    for op in &ops {
        line(
            format!("{op}, c=64: throughput ≥ 0.5× direct"),
            best(op, 64, |row| row.throughput_ratio, false),
            0.5,
            false,
        );
    }
    let rss = r.sidecar_rss_idle_mb;
    let _ = writeln!(
        out,
        "| sidecar RSS idle ≤ 30 MB | - | {rss:.1} MB | {} |\n",
        if rss <= 30.0 { "yes" } else { "no" }
    );
}
