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
use std::path::{Path, PathBuf};
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
use outrigger::api::pb::queue_client::QueueClient;
use outrigger::api::pb::rate_limit_client::RateLimitClient;
use outrigger_tests::{RedisServer, Sidecar, SidecarBuilder};
use serde::Serialize;
use tokio::sync::Mutex;
use tonic::transport::Channel;

mod fanout;
mod lean;
mod loadgen;
use lean::{RawGrpc, RawGrpcStream, RawHttp, RawSse};

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
    /// Only the operations whose name contains this (repeatable); the
    /// client libraries' and the Socket.IO adapter's runs are skipped.
    #[arg(long)]
    only: Vec<String>,
    /// Only these ways through the sidecar (repeatable, e.g. `http+uds raw`);
    /// the direct row always runs.
    #[arg(long)]
    via: Vec<String>,
    /// Only these concurrencies (repeatable; default 1 and 64).
    #[arg(long)]
    concurrency: Vec<usize>,
    /// Records each sidecar cell's timed window with `perf record` (DWARF
    /// call graphs) into this folder, one `<op>.<via>.c<N>.perf.data` each
    /// (`scripts/profile.sh` turns them into flame graphs).
    #[arg(long)]
    perf: Option<PathBuf>,
    /// Run the C load generators' rows even with --only/--via.
    #[arg(long)]
    load: bool,
    /// Run the fan-out rows even with --only/--via.
    #[arg(long)]
    fanout: bool,
    /// Run the plugin rows even with --only/--via.
    #[arg(long)]
    plugins: bool,
    /// Subscribers in the fan-out rows (default 10,000; 200 with --quick).
    #[arg(long)]
    fanout_subscribers: Option<usize>,
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
    /// Sidecar CPU time per 1,000 requests in ms, i.e. µs per request
    /// (sidecar rows only).
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
    plugin_authorize: Option<PluginCost>,
    rows: Vec<Row>,
    /// The client libraries next to redis-py and ioredis.
    clients: Vec<ClientRow>,
    /// The Socket.IO adapter next to `@socket.io/redis-adapter`.
    socketio: Vec<SocketIoRow>,
    /// Throughput driven by C load generators (wrk, h2load, redis-benchmark).
    load: Vec<loadgen::LoadRow>,
    /// Many subscribers on one sidecar next to Redis SUBSCRIBE.
    fanout: Vec<fanout::FanoutRow>,
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

/// What one `authorize` hook call through a plugin costs, per language
/// tenant-guard is written in, measured in-process (the sidecar calls
/// plugins inline, on the request's own thread), and what a sidecar with
/// plugins of the two runtime-carrying languages holds in memory.
#[derive(Debug, Serialize)]
struct PluginCost {
    calls: usize,
    no_plugin_us: Spread,
    builds: Vec<PluginBuild>,
    sidecar: PluginSidecar,
}

/// Median and 99th percentile, in µs.
#[derive(Debug, Serialize, Clone, Copy)]
struct Spread {
    p50: f64,
    p99: f64,
}

/// One build of tenant-guard.
#[derive(Debug, Serialize)]
struct PluginBuild {
    language: &'static str,
    component_bytes: u64,
    /// Loading it compiled (from the compile cache), linking it, making
    /// its first instance and running `hooks` and `init`.
    load_ms: f64,
    /// What that load added to the process's RSS.
    load_rss_mb: f64,
    allow_us: Spread,
    deny_us: Spread,
}

/// A sidecar (memory backend) running tenant-guard in TypeScript and in
/// Python, both on every request: its RSS once loaded, and after as many
/// cache reads from 64 clients at once as [`PluginCost::calls`]; its
/// plugin instances then.
#[derive(Debug, Serialize)]
struct PluginSidecar {
    rss_loaded_mb: f64,
    rss_after_mb: f64,
    rss_peak_mb: f64,
    instances_after: u64,
    /// RSS added per instance beyond the first of each plugin, if the
    /// load made any.
    mb_per_instance: Option<f64>,
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
    let everything = args.only.is_empty() && args.via.is_empty() && args.concurrency.is_empty();
    let plugin_authorize = if everything || args.plugins {
        let cost = plugin_cost(if args.quick { 200 } else { 20_000 }, &args.sidecar).await?;
        eprintln!("{cost:?}");
        Some(cost)
    } else {
        None
    };
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
    let mut clients = Clients::connect(&sidecar, &redis, &http_socket, &grpc_socket).await?;
    if args.quick {
        clients.refill = REFILL / 10;
    }
    clients.prepare().await?;
    // Idle: started, connected, nothing served yet beyond set-up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = proc_kb(pid, "VmRSS")? as f64 / 1024.0;

    let mut rows = Vec::new();
    let concurrencies = if args.concurrency.is_empty() {
        CONCURRENCY.to_vec()
    } else {
        args.concurrency.clone()
    };
    ensure!(
        concurrencies
            .iter()
            .all(|c| (1..=CONCURRENCY[1]).contains(c)),
        "--concurrency is 1 to {}",
        CONCURRENCY[1]
    );
    let selected = plan(&clients).into_iter().filter(|(op, _)| {
        args.only.is_empty() || args.only.iter().any(|o| op.contains(o.as_str()))
    });
    for (op, vias) in selected {
        for &concurrency in &concurrencies {
            let mut direct: Option<Row> = None;
            for (via, run) in &vias {
                let sidecar_row = !via.starts_with("direct");
                if sidecar_row && !args.via.is_empty() && !args.via.iter().any(|v| v == via) {
                    continue;
                }
                let perf = match (&args.perf, *via) {
                    (Some(dir), _) if sidecar_row => Some(Perf::record(
                        dir,
                        pid,
                        &format!("{op}.{via}.c{concurrency}"),
                        warmup,
                        window,
                    )?),
                    _ => None,
                };
                let cpu_before = cpu_ticks(pid)?;
                let mut row = measure(op, via, concurrency, warmup, window, run.clone()).await;
                if let Some(perf) = perf {
                    perf.finish()?;
                }
                if sidecar_row {
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
    let library_rows = if everything {
        client_rows(&sidecar, &http_socket, &redis, args.quick)?
    } else {
        Vec::new()
    };
    let load = if everything || args.load {
        ensure!(
            loadgen::available(),
            "wrk, h2load and redis-benchmark are needed: scripts/install-test-deps.sh --bench"
        );
        let port =
            |url: String| -> Result<u16> { Ok(url.rsplit(':').next().context("port")?.parse()?) };
        loadgen::run(
            &load_ops(&clients).await?,
            &loadgen::Targets {
                redis_port: redis.port,
                http_port: port(sidecar.url(""))?,
                grpc_port: port(sidecar.grpc_url())?,
                sidecar_pid: pid,
                dir: dir.path(),
                window,
                quick: args.quick,
            },
        )?
    } else {
        Vec::new()
    };
    let fanout = if everything || args.fanout {
        let subscribers = args
            .fanout_subscribers
            .unwrap_or(if args.quick { 200 } else { 10_000 });
        fanout::run(&args.sidecar, subscribers, if args.quick { 3 } else { 50 }).await?
    } else {
        Vec::new()
    };
    let socketio = if everything {
        socketio_rows(&args.sidecar, &redis, args.quick)?
    } else {
        Vec::new()
    };
    let report = Report {
        load,
        fanout,
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

/// `calls` in-process `authorize` calls with no plugin, and through each
/// build of tenant-guard allowing and denying, every decision checked;
/// then a sidecar process with the TypeScript and Python builds.
async fn plugin_cost(calls: usize, sidecar: &Path) -> Result<PluginCost> {
    use outrigger::app::{App, Stores};
    use outrigger::config::{Config, PluginConfig, PrimitiveName};
    use outrigger::plugins::{Call, Caller, Operation};

    // Compiled once, by `build-plugins.sh --compile` or the first run.
    outrigger::plugins::cache::set_dir(outrigger_tests::plugin_cache());
    let caller = Caller {
        id: None,
        attributes: vec![("tenant".into(), "acme".into())],
    };
    let spread = |app: &App, target: &str| -> Result<Spread> {
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
        let at = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
        Ok(Spread {
            p50: at(0.5).as_secs_f64() * 1e6,
            p99: at(0.99).as_secs_f64() * 1e6,
        })
    };
    let without = App::with_stores(&Config::default(), Stores::memory(&Config::default()));
    let no_plugin_us = spread(&without, "acme:k")?;
    let mut builds = Vec::new();
    for (language, file) in PLUGIN_BUILDS {
        let path = outrigger_tests::plugin_wasm(file);
        let config = Config {
            plugins: vec![PluginConfig::new("guard", path.clone())],
            ..Config::default()
        };
        let rss_before = proc_kb(std::process::id(), "VmRSS")?;
        let started = Instant::now();
        let app = App::with_stores(&config, Stores::memory(&config));
        let load_ms = started.elapsed().as_secs_f64() * 1e3;
        let rss_loaded = proc_kb(std::process::id(), "VmRSS")?;
        let status = app.plugins.status();
        ensure!(status.iter().all(|p| p.healthy), "{file}: {status:?}");
        builds.push(PluginBuild {
            language,
            component_bytes: std::fs::metadata(&path)?.len(),
            load_ms,
            load_rss_mb: rss_loaded.saturating_sub(rss_before) as f64 / 1024.0,
            allow_us: spread(&app, "acme:k")?,
            deny_us: spread(&app, "globex:k")?,
        });
    }
    Ok(PluginCost {
        calls,
        no_plugin_us,
        builds,
        sidecar: plugin_sidecar(sidecar, calls).await?,
    })
}

/// tenant-guard's builds, by language.
const PLUGIN_BUILDS: [(&str, &str); 3] = [
    ("Rust", "tenant_guard"),
    ("TypeScript", "tenant_guard_js"),
    ("Python", "tenant_guard_py"),
];

/// See [`PluginSidecar`]: a sidecar process with tenant-guard in
/// TypeScript and Python, read from 64 clients at once, `requests` reads
/// in all.
async fn plugin_sidecar(binary: &Path, requests: usize) -> Result<PluginSidecar> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("outrigger.toml");
    let mut toml = format!(
        "plugin_cache = \"{}\"\n",
        outrigger_tests::plugin_cache().display()
    );
    for (name, build) in [
        ("guard-ts", "tenant_guard_js"),
        ("guard-py", "tenant_guard_py"),
    ] {
        toml += &format!(
            "\n[[plugins]]\nname = \"{name}\"\npath = \"{}\"\n",
            outrigger_tests::plugin_wasm(build).display()
        );
    }
    std::fs::write(&file, toml)?;
    let sidecar = SidecarBuilder::new(binary.to_str().context("sidecar path")?)
        .arg("--config")
        .arg(file.display().to_string())
        .start()
        .await;
    let pid = sidecar.pid().context("the sidecar's pid")?;
    let client = reqwest::Client::new();
    /// Every plugin's instances, from the sidecar's metrics.
    async fn instances(client: &reqwest::Client, sidecar: &Sidecar) -> Result<u64> {
        let text = client
            .get(sidecar.url("/metrics"))
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("outrigger_plugin_instances{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum())
    }
    let rss_loaded = proc_kb(pid, "VmRSS")?;
    let instances_loaded = instances(&client, &sidecar).await?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let readers = (0..CONCURRENCY[1]).map(|_| {
        let (client, next, url) = (
            client.clone(),
            next.clone(),
            sidecar.url("/v1/cache/acme:k"),
        );
        async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests {
                let resp = client
                    .get(&url)
                    .header("x-outrigger-attr-tenant", "acme")
                    .send()
                    .await?;
                ensure!(resp.status() == 404, "a cache read: {}", resp.status());
            }
            anyhow::Ok(())
        }
    });
    futures::future::try_join_all(readers).await?;
    let instances_after = instances(&client, &sidecar).await?;
    let rss_after = proc_kb(pid, "VmRSS")?;
    let more = instances_after.saturating_sub(instances_loaded);
    Ok(PluginSidecar {
        rss_loaded_mb: rss_loaded as f64 / 1024.0,
        rss_after_mb: rss_after as f64 / 1024.0,
        rss_peak_mb: proc_kb(pid, "VmHWM")? as f64 / 1024.0,
        instances_after,
        mb_per_instance: (more > 0)
            .then(|| rss_after.saturating_sub(rss_loaded) as f64 / 1024.0 / more as f64),
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
                let result = tokio::time::timeout(REQUEST_BOUND, run(worker, seq)).await;
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
    grpc_socket: PathBuf,
    base: String,
    /// The lean clients, one connection per worker.
    raw_http: Arc<RawHttp>,
    raw_grpc: Arc<RawGrpc>,
    /// Jobs a claim row's queue is refilled with.
    refill: usize,
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
            redis: redis_connection(&redis_client).await?,
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
            grpc_socket: grpc_socket.to_path_buf(),
            base: sidecar.url(""),
            raw_http: Arc::new(RawHttp::new(http_socket.to_path_buf(), CONCURRENCY[1])),
            raw_grpc: Arc::new(RawGrpc::new(grpc_socket.to_path_buf(), CONCURRENCY[1])),
            refill: REFILL,
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
        let scripts = DirectScripts::new();
        scripts.map_set(&mut conn, "read").await?;
        // The claim rows' queues start full, so no worker's first request
        // pays for a refill (with 64 at once, that is most of a --quick
        // window).
        for w in 0..CONCURRENCY[1] {
            for (prefix, channel) in [
                (format!("direct:q:{{c{w}}}:"), "direct:queued"),
                (format!("bench:q:{{cg{w}}}:"), "bench:queued"),
                (format!("bench:q:{{ch{w}}}:"), "bench:queued"),
                (format!("bench:q:{{cr{w}}}:"), "bench:queued"),
            ] {
                scripts
                    .queue_fill(&mut conn, &prefix, channel, self.refill)
                    .await?;
            }
        }
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
    vias.push(lean_http(c, |raw, w, _| async move {
        let r = raw.call(w, "GET", "/v1/cache/hit", false, b"").await?;
        ensure!(r.status == 200 && r.body == VALUE, "status {}", r.status);
        Ok(())
    }));
    vias.push(lean_grpc(c, |raw, w, _| async move {
        let req = pb::GetRequest {
            key: "hit".into(),
            refresh_ttl: false,
        };
        let r: pb::GetResponse = raw.call(w, "/outrigger.v1.Cache/Get", &req).await?;
        ensure!(r.found && &r.value[..] == VALUE, "wrong value");
        Ok(())
    }));
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
    vias.push(lean_http(c, |raw, w, _| async move {
        let r = raw.call(w, "GET", "/v1/cache/absent", false, b"").await?;
        ensure!(r.status == 404, "status {}", r.status);
        Ok(())
    }));
    vias.push(lean_grpc(c, |raw, w, _| async move {
        let req = pb::GetRequest {
            key: "absent".into(),
            refresh_ttl: false,
        };
        let r: pb::GetResponse = raw.call(w, "/outrigger.v1.Cache/Get", &req).await?;
        ensure!(!r.found, "found");
        Ok(())
    }));
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
    // The floor under the sidecar's set: its own script (versions, the
    // stale copy, the near caches' invalidation), sent directly.
    vias.push(("direct (its script)", {
        let (conn, scripts) = (c.redis.clone(), scripts.clone());
        op(move |w, _| {
            let (mut conn, scripts) = (conn.clone(), scripts.clone());
            async move {
                let key = format!("direct:c:{{set:{w}}}");
                let version: i64 = scripts
                    .cache_set
                    .key(&key)
                    .key(format!("{key}:stale"))
                    .key(format!("{key}:lease"))
                    .arg(&VALUE[..])
                    .arg(60_000)
                    .arg("none")
                    .arg("")
                    .arg("direct:inv")
                    .arg(format!("k:set:{w}"))
                    .arg(0)
                    .invoke_async(&mut conn)
                    .await?;
                ensure!(version > 0, "not written");
                Ok(())
            }
        })
    }));
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
    vias.push(lean_http(c, |raw, w, _| async move {
        let path = format!("/v1/cache/set:{w}?ttl_ms=60000");
        let r = raw.call(w, "PUT", &path, false, VALUE).await?;
        ensure!(r.status == 200, "status {}", r.status);
        Ok(())
    }));
    vias.push(lean_grpc(c, |raw, w, _| async move {
        let req = pb::SetRequest {
            key: format!("set:{w}"),
            value: VALUE[..].to_vec().into(),
            ttl_ms: 60_000,
            ..Default::default()
        };
        let _: pb::SetResponse = raw.call(w, "/outrigger.v1.Cache/Set", &req).await?;
        Ok(())
    }));
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
    vias.push(lean_http(c, |raw, w, _| async move {
        let path = format!("/v1/locks/l{w}/acquire");
        let r = raw
            .call(w, "POST", &path, true, br#"{"ttl_ms":10000}"#)
            .await?;
        ensure!(r.status == 200, "acquire: {}", r.status);
        let got: serde_json::Value = serde_json::from_slice(&r.body)?;
        let token = got["token"].as_str().context("no token")?;
        let path = format!("/v1/locks/l{w}/release");
        let body = format!(r#"{{"token":"{token}"}}"#);
        let r = raw.call(w, "POST", &path, true, body.as_bytes()).await?;
        ensure!(r.status == 200, "release: {}", r.status);
        Ok(())
    }));
    vias.push(lean_grpc(c, |raw, w, _| async move {
        let name = format!("l{w}");
        let req = pb::AcquireRequest {
            name: name.clone(),
            ttl_ms: 10_000,
            wait_ms: 0,
        };
        let got: pb::AcquireResponse = raw.call(w, "/outrigger.v1.Lock/Acquire", &req).await?;
        ensure!(got.acquired, "not acquired");
        let req = pb::ReleaseRequest {
            name,
            token: got.token,
        };
        let released: pb::ReleaseResponse = raw.call(w, "/outrigger.v1.Lock/Release", &req).await?;
        ensure!(released.released, "not released");
        Ok(())
    }));
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
    vias.push(lean_http(c, |raw, w, _| async move {
        let body = format!(r#"{{"key":"k{w}"}}"#);
        let r = raw
            .call(
                w,
                "POST",
                "/v1/ratelimit/bench/check",
                true,
                body.as_bytes(),
            )
            .await?;
        ensure!(r.status == 200, "status {}", r.status);
        Ok(())
    }));
    vias.push(lean_grpc(c, |raw, w, _| async move {
        let req = pb::CheckRequest {
            policy: "bench".into(),
            key: format!("k{w}"),
            cost: 1,
            inline: None,
        };
        let r: pb::CheckResponse = raw.call(w, "/outrigger.v1.RateLimit/Check", &req).await?;
        ensure!(r.allowed, "denied");
        Ok(())
    }));
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
    vias.push(lean_http(c, |raw, w, _| async move {
        let path = format!("/v1/presence/room{w}/m{w}");
        let body = br#"{"metadata":{},"ttl_ms":60000}"#;
        let r = raw.call(w, "PUT", &path, true, body).await?;
        ensure!(r.status == 200, "status {}", r.status);
        Ok(())
    }));
    vias.push(lean_grpc(c, |raw, w, _| async move {
        let req = pb::JoinRequest {
            room: format!("room{w}"),
            member: format!("m{w}"),
            metadata: b"{}".to_vec().into(),
            ttl_ms: 60_000,
        };
        let _: pb::JoinResponse = raw.call(w, "/outrigger.v1.Presence/Join", &req).await?;
        Ok(())
    }));
    plan.push(("presence join", vias));

    // --- queue enqueue ------------------------------------------------
    let mut vias: Vec<(&'static str, Op)> = vec![("direct", {
        let conn = c.redis.clone();
        op(move |w, _| {
            let mut conn = conn.clone();
            async move {
                let _: i64 = redis::cmd("LPUSH")
                    .arg(format!("direct:list:{{e{w}}}"))
                    .arg(&VALUE[..])
                    .query_async(&mut conn)
                    .await?;
                Ok(())
            }
        })
    })];
    vias.push(("direct (its script)", {
        let (conn, scripts) = (c.redis.clone(), scripts.clone());
        op(move |w, _| {
            let (mut conn, scripts) = (conn.clone(), scripts.clone());
            async move {
                let prefix = format!("direct:q:{{e{w}}}:");
                scripts
                    .queue_fill(&mut conn, &prefix, "direct:queued", 1)
                    .await
            }
        })
    }));
    let client = QueueClient::new(c.grpc.clone());
    vias.push((
        "grpc",
        op(move |w, _| {
            let mut client = client.clone();
            async move {
                let r = client
                    .enqueue(pb::EnqueueJobRequest {
                        queue: format!("eg{w}"),
                        payload: VALUE.to_vec().into(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                ensure!(!r.id.is_empty(), "no id");
                Ok(())
            }
        }),
    ));
    vias.push(lean_http(c, |raw, w, _| async move {
        let path = format!("/v1/queues/eh{w}/jobs");
        let r = raw.call(w, "POST", &path, false, &VALUE[..]).await?;
        ensure!(r.status == 200, "status {}", r.status);
        Ok(())
    }));
    vias.push(lean_grpc(c, |raw, w, _| async move {
        let req = pb::EnqueueJobRequest {
            queue: format!("er{w}"),
            payload: VALUE.to_vec().into(),
            ..Default::default()
        };
        let r: pb::EnqueueJobResponse = raw.call(w, "/outrigger.v1.Queue/Enqueue", &req).await?;
        ensure!(!r.id.is_empty(), "no id");
        Ok(())
    }));
    plan.push(("queue enqueue", vias));

    // --- queue claim + ack ----------------------------------------------
    // A worker loop's step: claim a job and ack the one claimed before. The
    // direct row is the reliable-list pattern, two commands a job; the
    // sidecar rows fold the ack into the next claim (one request a job, as
    // the clients' worker loops and BullMQ's moveToFinished do), and so
    // does "direct (its script)" with the sidecar's claim script. "direct,
    // pipelined" is the list pattern at one round trip a job too. Every
    // worker has a queue of its own, refilled (outside the sidecar, with
    // its own script) REFILL jobs at a time when empty: one request in
    // REFILL also pays for the refill (p99.5 and above), in every row
    // alike.
    let refill = c.refill;
    let list_fill = move |list: &str| {
        let mut fill = redis::cmd("LPUSH");
        fill.arg(list);
        for _ in 0..refill {
            fill.arg(&VALUE[..]);
        }
        fill
    };
    let mut vias: Vec<(&'static str, Op)> = vec![("direct", {
        let conn = c.redis.clone();
        op(move |w, _| {
            let mut conn = conn.clone();
            async move {
                let list = format!("direct:list:{{c{w}}}");
                let working = format!("direct:list:{{c{w}}}:working");
                // The reliable-list pattern: LMOVE to a working list, LREM
                // when done.
                let lmove = || {
                    let mut cmd = redis::cmd("LMOVE");
                    cmd.arg(&list).arg(&working).arg("RIGHT").arg("LEFT");
                    cmd
                };
                let mut job: Option<Vec<u8>> = lmove().query_async(&mut conn).await?;
                if job.is_none() {
                    let _: i64 = list_fill(&list).query_async(&mut conn).await?;
                    job = lmove().query_async(&mut conn).await?;
                }
                let job = job.context("no job")?;
                let removed: i64 = redis::cmd("LREM")
                    .arg(&working)
                    .arg(1)
                    .arg(job)
                    .query_async(&mut conn)
                    .await?;
                ensure!(removed == 1, "not removed");
                Ok(())
            }
        })
    })];
    vias.push(("direct, pipelined", {
        let (conn, held) = (c.redis.clone(), Held::new());
        op(move |w, _| {
            let (mut conn, held) = (conn.clone(), held.clone());
            async move {
                let list = format!("direct:plist:{{c{w}}}");
                let working = format!("direct:plist:{{c{w}}}:working");
                // The last job's LREM and the next job's LMOVE, one round
                // trip.
                let mut pipe = redis::pipe();
                let acking = held.take(w).is_some();
                if acking {
                    pipe.cmd("LREM").arg(&working).arg(1).arg(&VALUE[..]);
                }
                pipe.cmd("LMOVE")
                    .arg(&list)
                    .arg(&working)
                    .arg("RIGHT")
                    .arg("LEFT");
                let replies: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
                if acking {
                    ensure!(replies[0] == redis::Value::Int(1), "not removed");
                }
                if matches!(replies.last(), Some(redis::Value::Nil)) {
                    let _: i64 = list_fill(&list).query_async(&mut conn).await?;
                    let job: Option<Vec<u8>> = redis::cmd("LMOVE")
                        .arg(&list)
                        .arg(&working)
                        .arg("RIGHT")
                        .arg("LEFT")
                        .query_async(&mut conn)
                        .await?;
                    job.context("no job")?;
                }
                held.put(w, (String::new(), String::new()));
                Ok(())
            }
        })
    }));
    vias.push(("direct (its script)", {
        let (conn, scripts, held) = (c.redis.clone(), scripts.clone(), Held::new());
        op(move |w, _| {
            let (conn, scripts, held) = (conn.clone(), scripts.clone(), held.clone());
            async move {
                let prefix = format!("direct:q:{{c{w}}}:");
                let claim = |ack| {
                    let (mut conn, scripts, prefix) =
                        (conn.clone(), scripts.clone(), prefix.clone());
                    async move { scripts.queue_claim(&mut conn, &prefix, ack).await }
                };
                let fill = || {
                    let (mut conn, scripts, prefix) =
                        (conn.clone(), scripts.clone(), prefix.clone());
                    async move {
                        scripts
                            .queue_fill(&mut conn, &prefix, "direct:queued", refill)
                            .await
                    }
                };
                worker_step(&held, w, claim, fill).await
            }
        })
    }));
    let (client, refill, held) = (
        QueueClient::new(c.grpc.clone()),
        QueueRefill::new(c, scripts.clone()),
        Held::new(),
    );
    vias.push((
        "grpc",
        op(move |w, _| {
            let (client, refill, held) = (client.clone(), refill.clone(), held.clone());
            async move {
                let queue = format!("cg{w}");
                let claim = |ack: Option<(String, String)>| {
                    let (mut client, queue) = (client.clone(), queue.clone());
                    async move {
                        let claim = claim_one(queue, ack);
                        match client.claim(claim).await {
                            Ok(r) => Ok(Claim::from(r.into_inner().jobs.pop())),
                            Err(s) if s.code() == tonic::Code::Aborted => Ok(Claim::Refused),
                            Err(s) => Err(s.into()),
                        }
                    }
                };
                worker_step(&held, w, claim, || refill.fill(&queue)).await
            }
        }),
    ));
    let (refill, held) = (QueueRefill::new(c, scripts.clone()), Held::new());
    vias.push(lean_http(c, move |raw, w, _| {
        let (refill, held) = (refill.clone(), held.clone());
        async move {
            let queue = format!("ch{w}");
            let claim = |ack: Option<(String, String)>| {
                let (raw, path) = (raw.clone(), format!("/v1/queues/{queue}/claim"));
                async move {
                    let body = match ack {
                        Some((id, receipt)) => serde_json::to_vec(
                            &serde_json::json!({"ack": [{"id": id, "receipt": receipt}]}),
                        )?,
                        None => b"{}".to_vec(),
                    };
                    let r = raw.call(w, "POST", &path, true, &body).await?;
                    if r.status == 409 {
                        return Ok(Claim::Refused);
                    }
                    ensure!(r.status == 200, "claim: status {}", r.status);
                    let claimed: serde_json::Value = serde_json::from_slice(&r.body)?;
                    let job = &claimed["jobs"][0];
                    Ok(match (job["id"].as_str(), job["receipt"].as_str()) {
                        (Some(id), Some(receipt)) => Claim::Job(id.into(), receipt.into()),
                        _ => Claim::Empty,
                    })
                }
            };
            worker_step(&held, w, claim, || refill.fill(&queue)).await
        }
    }));
    let (refill, held) = (QueueRefill::new(c, scripts.clone()), Held::new());
    vias.push(lean_grpc(c, move |raw, w, _| {
        let (refill, held) = (refill.clone(), held.clone());
        async move {
            let queue = format!("cr{w}");
            let claim = |ack: Option<(String, String)>| {
                let (raw, queue) = (raw.clone(), queue.clone());
                async move {
                    let claim = claim_one(queue, ack);
                    let path = "/outrigger.v1.Queue/Claim";
                    match raw.call::<_, pb::ClaimJobsResponse>(w, path, &claim).await {
                        Ok(mut r) => Ok(Claim::from(r.jobs.pop())),
                        // ABORTED: the held claim ran out between cells.
                        Err(err) if err.to_string() == "grpc-status 10" => Ok(Claim::Refused),
                        Err(err) => Err(err),
                    }
                }
            };
            worker_step(&held, w, claim, || refill.fill(&queue)).await
        }
    }));
    plan.push(("queue claim+ack", vias));

    // --- queue handoff --------------------------------------------------
    // End to end: a worker already waiting for a job gets one enqueued
    // meanwhile (a blocking BLMOVE on a connection of its own, directly).
    let (client, conn) = (c.redis_client.clone(), c.redis.clone());
    let blocking: Arc<Vec<Mutex<Option<redis::aio::MultiplexedConnection>>>> =
        Arc::new((0..CONCURRENCY[1]).map(|_| Mutex::new(None)).collect());
    let vias: Vec<(&'static str, Op)> = vec![
        ("direct", {
            op(move |w, i| {
                let (client, mut conn, blocking) = (client.clone(), conn.clone(), blocking.clone());
                async move {
                    let mut slot = blocking[w].lock().await;
                    if slot.is_none() {
                        *slot = Some(redis_connection(&client).await?);
                    }
                    let mut waiter = slot.clone().context("a blocking connection")?;
                    let list = format!("direct:list:{{h{w}}}");
                    let working = format!("direct:list:{{h{w}}}:working");
                    let take = {
                        let (list, working) = (list.clone(), working.clone());
                        tokio::spawn(async move {
                            redis::cmd("BLMOVE")
                                .arg(&list)
                                .arg(&working)
                                .arg("RIGHT")
                                .arg("LEFT")
                                .arg(1.0)
                                .query_async::<Option<Vec<u8>>>(&mut waiter)
                                .await
                        })
                    };
                    let payload = format!("h{w}-{i}");
                    let _: i64 = redis::cmd("LPUSH")
                        .arg(&list)
                        .arg(&payload)
                        .query_async(&mut conn)
                        .await?;
                    let job = take.await??.context("no job within 1 s")?;
                    let _: i64 = redis::cmd("LREM")
                        .arg(&working)
                        .arg(1)
                        .arg(job)
                        .query_async(&mut conn)
                        .await?;
                    Ok(())
                }
            })
        }),
        ("grpc", {
            let client = QueueClient::new(c.grpc.clone());
            op(move |w, i| {
                let client = client.clone();
                async move {
                    let queue = format!("hg{w}");
                    let take = {
                        let (mut client, queue) = (client.clone(), queue.clone());
                        tokio::spawn(async move {
                            let claim = pb::ClaimJobsRequest {
                                queue,
                                max: 1,
                                wait_ms: 1000,
                                ..Default::default()
                            };
                            client.claim(claim).await
                        })
                    };
                    let mut client = client.clone();
                    client
                        .enqueue(pb::EnqueueJobRequest {
                            queue: queue.clone(),
                            payload: format!("h{w}-{i}").into_bytes().into(),
                            ..Default::default()
                        })
                        .await?;
                    let job = take
                        .await??
                        .into_inner()
                        .jobs
                        .pop()
                        .context("no job within 1 s")?;
                    client
                        .ack(pb::AckJobRequest {
                            queue,
                            id: job.id,
                            receipt: job.receipt,
                        })
                        .await?;
                    Ok(())
                }
            })
        }),
    ];
    plan.push(("queue handoff", vias));

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
    // The sidecar's own script (bounds, TTL on creation), sent directly.
    vias.push(("direct (its script)", {
        let (conn, scripts) = (c.redis.clone(), scripts.clone());
        op(move |w, _| {
            let (mut conn, scripts) = (conn.clone(), scripts.clone());
            async move {
                let (applied, value, _): (i64, i64, i64) = scripts
                    .counter_incr
                    .key(format!("direct:ctrs:{{c{w}}}"))
                    .arg(1)
                    .arg(0)
                    .arg("")
                    .arg("")
                    .arg(outrigger::primitives::counter::store::MAX_MAGNITUDE)
                    .invoke_async(&mut conn)
                    .await?;
                ensure!(applied == 1 && value > 0, "not counted");
                Ok(())
            }
        })
    }));
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
    vias.push(lean_http(c, |raw, w, _| async move {
        let path = format!("/v1/counters/c{w}/incr");
        let r = raw.call(w, "POST", &path, true, br#"{"by":1}"#).await?;
        ensure!(r.status == 200, "status {}", r.status);
        Ok(())
    }));
    vias.push(lean_grpc(c, |raw, w, _| async move {
        let req = pb::IncrementRequest {
            name: format!("c{w}"),
            by: 1,
            ..Default::default()
        };
        let r: pb::CounterValue = raw.call(w, "/outrigger.v1.Counter/Increment", &req).await?;
        ensure!(r.value > 0, "not counted");
        Ok(())
    }));
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
    // The sidecar's own script (versions, the change record), sent directly.
    vias.push(("direct (its script)", {
        let (conn, scripts) = (c.redis.clone(), scripts.clone());
        op(move |w, _| {
            let (mut conn, scripts) = (conn.clone(), scripts.clone());
            async move { scripts.map_set(&mut conn, &format!("m{w}")).await }
        })
    }));
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
    vias.push(lean_http(c, |raw, w, _| async move {
        let path = format!("/v1/maps/m{w}/f");
        let r = raw.call(w, "PUT", &path, false, VALUE).await?;
        ensure!(r.status == 200, "status {}", r.status);
        Ok(())
    }));
    vias.push(lean_grpc(c, |raw, w, _| async move {
        let set = pb::SetField {
            field: "f".into(),
            value: VALUE.to_vec().into(),
            ..Default::default()
        };
        let req = pb::UpdateMapRequest {
            map: format!("m{w}"),
            changes: vec![pb::MapChange {
                change: Some(pb::map_change::Change::Set(set)),
            }],
            ..Default::default()
        };
        let _: pb::UpdateMapResponse = raw.call(w, "/outrigger.v1.Map/Update", &req).await?;
        Ok(())
    }));
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
    vias.push(("direct (its script)", {
        let (conn, scripts) = (c.redis.clone(), scripts.clone());
        op(move |_, _| {
            let (mut conn, scripts) = (conn.clone(), scripts.clone());
            async move {
                let mut call = DirectScripts::on_map(&scripts.map_get, "read");
                call.arg("f");
                let reply: Vec<redis::Value> = call.invoke_async(&mut conn).await?;
                ensure!(
                    matches!(reply.get(2), Some(redis::Value::BulkString(_))),
                    "missing: {reply:?}"
                );
                Ok(())
            }
        })
    }));
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
    vias.push(lean_http(c, |raw, w, _| async move {
        let r = raw.call(w, "GET", "/v1/maps/read/f", false, b"").await?;
        ensure!(r.status == 200 && r.body == VALUE, "status {}", r.status);
        Ok(())
    }));
    vias.push(lean_grpc(c, |raw, w, _| async move {
        let req = pb::GetFieldsRequest {
            map: "read".into(),
            fields: vec!["f".into()],
        };
        let r: pb::MapFields = raw.call(w, "/outrigger.v1.Map/Get", &req).await?;
        ensure!(r.fields.first().is_some_and(|f| f.present), "missing");
        Ok(())
    }));
    plan.push(("map field get", vias));

    // --- publish -> receive ---------------------------------------------
    plan.push((
        "publish→receive",
        vec![
            ("direct", direct_pubsub(c)),
            ("grpc", grpc_pubsub(c)),
            ("http", http_pubsub(c)),
            ("http+uds raw", lean_http_pubsub(c)),
            ("grpc+uds raw", lean_grpc_pubsub(c)),
        ],
    ));
    plan
}

/// The operations the C load generators drive, each as redis-benchmark,
/// wrk and h2load send it (the sidecar's own script for the rate limit).
async fn load_ops(c: &Clients) -> Result<Vec<loadgen::LoadOp>> {
    use prost::Message;
    let scripts = DirectScripts::new();
    let mut conn = c.redis.clone();
    let gcra: String = scripts.gcra.prepare_invoke().load_async(&mut conn).await?;
    let value = String::from_utf8(VALUE.to_vec())?;
    let s = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    Ok(vec![
        loadgen::LoadOp {
            name: "cache get (hit)",
            near_hit: true,
            redis: s(&["GET", "direct:hit"]),
            http: ("GET", "/v1/cache/hit".into(), None, 200),
            grpc: (
                "/outrigger.v1.Cache/Get",
                pb::GetRequest {
                    key: "hit".into(),
                    refresh_ttl: false,
                }
                .encode_to_vec(),
            ),
        },
        loadgen::LoadOp {
            name: "cache get (miss)",
            near_hit: false,
            redis: s(&["GET", "direct:absent"]),
            http: ("GET", "/v1/cache/absent".into(), None, 404),
            grpc: (
                "/outrigger.v1.Cache/Get",
                pb::GetRequest {
                    key: "absent".into(),
                    refresh_ttl: false,
                }
                .encode_to_vec(),
            ),
        },
        loadgen::LoadOp {
            name: "cache set",
            near_hit: false,
            redis: s(&["SET", "direct:set:lg", &value, "PX", "60000"]),
            // wrk sends its body as is: the value, not JSON.
            http: (
                "PUT",
                "/v1/cache/set:lg?ttl_ms=60000".into(),
                Some(VALUE.to_vec()),
                200,
            ),
            grpc: (
                "/outrigger.v1.Cache/Set",
                pb::SetRequest {
                    key: "set:lg".into(),
                    value: VALUE.to_vec().into(),
                    ttl_ms: 60_000,
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
        },
        loadgen::LoadOp {
            name: "rate-limit check",
            near_hit: false,
            redis: s(&[
                "EVALSHA",
                &gcra,
                "1",
                "direct:rl:gcra:{bench:lg}",
                &format!("{:.6}", 1_000_000f64 / 1_000_000_000f64),
                "1000000000",
                "1",
            ]),
            http: (
                "POST",
                "/v1/ratelimit/bench/check".into(),
                Some(br#"{"key":"lg"}"#.to_vec()),
                200,
            ),
            grpc: (
                "/outrigger.v1.RateLimit/Check",
                pb::CheckRequest {
                    policy: "bench".into(),
                    key: "lg".into(),
                    cost: 1,
                    inline: None,
                }
                .encode_to_vec(),
            ),
        },
        loadgen::LoadOp {
            name: "counter increment",
            near_hit: false,
            redis: s(&["INCR", "direct:ctr:{lg}"]),
            http: (
                "POST",
                "/v1/counters/lg/incr".into(),
                Some(br#"{"by":1}"#.to_vec()),
                200,
            ),
            grpc: (
                "/outrigger.v1.Counter/Increment",
                pb::IncrementRequest {
                    name: "lg".into(),
                    by: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
        },
    ])
}

/// A row through the lean HTTP/1.1 client ([`RawHttp`]).
fn lean_http<F, Fut>(c: &Clients, f: F) -> (&'static str, Op)
where
    F: Fn(Arc<RawHttp>, usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let raw = c.raw_http.clone();
    ("http+uds raw", op(move |w, i| f(raw.clone(), w, i)))
}

/// A row through the lean gRPC client ([`RawGrpc`]).
fn lean_grpc<F, Fut>(c: &Clients, f: F) -> (&'static str, Op)
where
    F: Fn(Arc<RawGrpc>, usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let raw = c.raw_grpc.clone();
    ("grpc+uds raw", op(move |w, i| f(raw.clone(), w, i)))
}

fn base_for(c: &Clients, via: &str, path: &str) -> String {
    if via.ends_with("+uds") {
        // The host is ignored over a Unix socket.
        format!("http://outrigger{path}")
    } else {
        format!("{}{path}", c.base)
    }
}

/// The bound on one request of any row: past it, the request counts as an
/// error.
const REQUEST_BOUND: Duration = Duration::from_secs(5);

/// A connection to the bench's Redis whose replies are bounded by
/// [`REQUEST_BOUND`], like every other row's requests, not by redis-rs's
/// default of 500 ms: on a loaded machine a slow reply is a latency to
/// report, not an error.
async fn redis_connection(client: &redis::Client) -> Result<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(REQUEST_BOUND));
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// Jobs a claim row's queue is refilled with when it runs dry (a tenth
/// of it with --quick, whose windows are too short for 64 first refills).
const REFILL: usize = 200;

/// A claimed job's id and receipt.
type JobReceipt = (String, String);

/// Each worker's last claimed job, for its next claim to ack.
#[derive(Clone)]
struct Held(Arc<Vec<std::sync::Mutex<Option<JobReceipt>>>>);

impl Held {
    fn new() -> Self {
        Held(Arc::new(
            (0..CONCURRENCY[1]).map(|_| Default::default()).collect(),
        ))
    }

    fn take(&self, w: usize) -> Option<(String, String)> {
        self.0[w].lock().expect("not poisoned").take()
    }

    fn put(&self, w: usize, job: (String, String)) {
        *self.0[w].lock().expect("not poisoned") = Some(job);
    }
}

/// What one claim of a worker step got.
enum Claim {
    /// A job: its id and receipt.
    Job(String, String),
    /// None due (the acks it carried were made).
    Empty,
    /// Its ack was refused: the held claim ran out between two cells.
    Refused,
}

impl From<Option<pb::Job>> for Claim {
    fn from(job: Option<pb::Job>) -> Self {
        job.map_or(Claim::Empty, |j| Claim::Job(j.id, j.receipt))
    }
}

/// A claim of one job from `queue`, acking `ack`.
fn claim_one(queue: String, ack: Option<JobReceipt>) -> pb::ClaimJobsRequest {
    pb::ClaimJobsRequest {
        queue,
        max: 1,
        ack: ack
            .map(|(id, receipt)| pb::JobReceipt { id, receipt })
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

/// One step of a worker loop: claims a job with the ack of the one worker
/// `w` claimed before, refilling the queue when it is empty, and holds
/// the new one for the next step.
async fn worker_step<C, CF, R, RF>(held: &Held, w: usize, claim: C, refill: R) -> Result<()>
where
    C: Fn(Option<(String, String)>) -> CF,
    CF: Future<Output = Result<Claim>>,
    R: Fn() -> RF,
    RF: Future<Output = Result<()>>,
{
    let mut ack = held.take(w);
    for _ in 0..3 {
        match claim(ack.take()).await? {
            Claim::Job(id, receipt) => {
                held.put(w, (id, receipt));
                return Ok(());
            }
            Claim::Empty => refill().await?,
            Claim::Refused => {}
        }
    }
    bail!("no job after a refill")
}

/// Refills the sidecar's queues behind its back (its own enqueue script,
/// [`REFILL`] jobs in one pipeline), for the claim rows.
#[derive(Clone)]
struct QueueRefill {
    conn: redis::aio::MultiplexedConnection,
    scripts: Arc<DirectScripts>,
    jobs: usize,
}

impl QueueRefill {
    fn new(c: &Clients, scripts: Arc<DirectScripts>) -> Self {
        QueueRefill {
            conn: c.redis.clone(),
            scripts,
            jobs: c.refill,
        }
    }

    async fn fill(&self, queue: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let prefix = format!("bench:q:{{{queue}}}:");
        self.scripts
            .queue_fill(&mut conn, &prefix, "bench:queued", self.jobs)
            .await
    }
}

/// The sidecar's own scripts, for the direct rows.
struct DirectScripts {
    cache_set: redis::Script,
    lock_acquire: redis::Script,
    lock_release: redis::Script,
    gcra: redis::Script,
    presence_join: redis::Script,
    counter_incr: redis::Script,
    map_update: redis::Script,
    map_get: redis::Script,
    queue_enqueue: redis::Script,
    queue_claim: redis::Script,
}

impl DirectScripts {
    fn new() -> Self {
        DirectScripts {
            cache_set: redis::Script::new(include_str!(
                "../../../sidecar/src/primitives/cache/set.lua"
            )),
            lock_acquire: redis::Script::new(include_str!(
                "../../../sidecar/src/primitives/lock/lock_acquire.lua"
            )),
            lock_release: redis::Script::new(include_str!(
                "../../../sidecar/src/primitives/lock/lock_release.lua"
            )),
            gcra: redis::Script::new(concat!(
                include_str!("../../../sidecar/src/primitives/ratelimit/lib.lua"),
                include_str!("../../../sidecar/src/primitives/ratelimit/gcra.lua")
            )),
            presence_join: redis::Script::new(include_str!(
                "../../../sidecar/src/primitives/presence/presence_join.lua"
            )),
            counter_incr: redis::Script::new(include_str!(
                "../../../sidecar/src/primitives/counter/incr.lua"
            )),
            map_update: redis::Script::new(concat!(
                include_str!("../../../sidecar/src/primitives/map/lib.lua"),
                include_str!("../../../sidecar/src/primitives/map/update.lua")
            )),
            map_get: redis::Script::new(concat!(
                include_str!("../../../sidecar/src/primitives/map/lib.lua"),
                include_str!("../../../sidecar/src/primitives/map/get.lua")
            )),
            queue_enqueue: redis::Script::new(concat!(
                include_str!("../../../sidecar/src/primitives/queue/prelude.lua"),
                "\n",
                include_str!("../../../sidecar/src/primitives/queue/enqueue.lua")
            )),
            queue_claim: redis::Script::new(concat!(
                include_str!("../../../sidecar/src/primitives/queue/prelude.lua"),
                "\n",
                include_str!("../../../sidecar/src/primitives/queue/claim.lua")
            )),
        }
    }

    /// Enqueues `n` jobs of [`VALUE`] into the queue whose keys start with
    /// `prefix` (`<namespace>:q:{<queue>}:`), as the sidecar's enqueue does,
    /// in one pipeline.
    async fn queue_fill(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        prefix: &str,
        channel: &str,
        n: usize,
    ) -> Result<()> {
        let mut call = self.queue_enqueue.key(prefix);
        call.arg(&VALUE[..])
            .arg(0)
            .arg("")
            .arg(5)
            .arg(1000)
            .arg(300_000)
            .arg("")
            .arg(1)
            .arg(channel)
            .arg("q");
        if n == 1 {
            let _: Vec<redis::Value> = call.invoke_async(conn).await?;
            return Ok(());
        }
        // Loaded first: a pipeline does not retry on NOSCRIPT.
        call.load_async(conn).await?;
        let mut pipe = redis::pipe();
        for _ in 0..n {
            pipe.invoke_script(&call).ignore();
        }
        let () = pipe.query_async(conn).await?;
        Ok(())
    }

    /// Claims one job from the queue at `prefix` with the sidecar's claim
    /// script, acking `ack` (an id and receipt) in the same call.
    async fn queue_claim(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        prefix: &str,
        ack: Option<(String, String)>,
    ) -> Result<Claim> {
        let mut call = self.queue_claim.key(prefix);
        call.arg(1).arg(30_000).arg("0123456789abcdef");
        if let Some((id, receipt)) = &ack {
            call.arg(id).arg(receipt);
        }
        let claimed: Vec<redis::Value> = call.invoke_async(conn).await?;
        match claimed.as_slice() {
            [redis::Value::BulkString(refused), ..] if refused.as_slice() == b"refused" => {
                Ok(Claim::Refused)
            }
            [_, _, id, _, attempt, ..] => {
                let id: String = redis::from_redis_value(id.clone())?;
                let attempt: u32 = redis::from_redis_value(attempt.clone())?;
                let receipt = format!("{id}.{attempt}.0123456789abcdef");
                Ok(Claim::Job(id, receipt))
            }
            _ => Ok(Claim::Empty),
        }
    }

    /// A map script's call on `map`'s three keys, as the sidecar makes it.
    fn on_map<'a>(script: &'a redis::Script, map: &str) -> redis::ScriptInvocation<'a> {
        let fields = format!("direct:mapx:{{{map}}}");
        let mut call = script.key(&fields);
        call.key(format!("{fields}:x"))
            .key(format!("{fields}:s"))
            .arg(fields);
        call
    }

    /// The sidecar's update script setting one field, no TTL, no condition.
    async fn map_set(&self, conn: &mut redis::aio::MultiplexedConnection, map: &str) -> Result<()> {
        let mut call = Self::on_map(&self.map_update, map);
        // if_version, ttl, max_fields, MAX_INTEGER, REAP_BATCH, then the set.
        call.arg("")
            .arg("")
            .arg(100_000)
            .arg(outrigger::primitives::map::store::MAX_INTEGER)
            .arg(1000);
        call.arg("s").arg("f").arg(&VALUE[..]).arg(0).arg("");
        let reply: Vec<redis::Value> = call.invoke_async(conn).await?;
        ensure!(
            matches!(reply.first(), Some(redis::Value::Int(1))),
            "not set: {reply:?}"
        );
        Ok(())
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

/// Publishes through the lean HTTP client, hears it on a lean SSE stream
/// (one per worker, made and primed on its first request).
fn lean_http_pubsub(c: &Clients) -> Op {
    let (raw, socket) = (c.raw_http.clone(), c.http_socket.clone());
    let streams: Arc<Vec<Mutex<Option<RawSse>>>> =
        Arc::new((0..CONCURRENCY[1]).map(|_| Mutex::new(None)).collect());
    op(move |w, i| {
        let (raw, socket, streams) = (raw.clone(), socket.clone(), streams.clone());
        async move {
            let path = format!("/v1/pubsub/lh{w}");
            let mut slot = streams[w].lock().await;
            if slot.is_none() {
                let mut sse = RawSse::open(&socket, &path).await?;
                'primed: for attempt in 0..50 {
                    let marker = format!("prime-{attempt}");
                    let r = raw.call(w, "POST", &path, false, marker.as_bytes()).await?;
                    ensure!(r.status == 200, "publish: {}", r.status);
                    let heard = tokio::time::timeout(Duration::from_millis(200), async {
                        while !sse.next_data().await?.contains(&marker) {}
                        anyhow::Ok(())
                    });
                    if let Ok(heard) = heard.await {
                        heard?;
                        *slot = Some(sse);
                        break 'primed;
                    }
                }
                ensure!(slot.is_some(), "the subscription never received anything");
            }
            let sse = slot.as_mut().expect("subscribed");
            let payload = format!("m{w}-{i}");
            let r = raw
                .call(w, "POST", &path, false, payload.as_bytes())
                .await?;
            ensure!(r.status == 200, "publish: {}", r.status);
            while !sse.next_data().await?.contains(&payload) {}
            Ok(())
        }
    })
}

/// Publishes through the lean gRPC client, hears it on a lean gRPC
/// subscription (one per worker, made and primed on its first request).
fn lean_grpc_pubsub(c: &Clients) -> Op {
    let (raw, socket) = (c.raw_grpc.clone(), c.grpc_socket.clone());
    let streams: Arc<Vec<Mutex<Option<RawGrpcStream>>>> =
        Arc::new((0..CONCURRENCY[1]).map(|_| Mutex::new(None)).collect());
    async fn heard(stream: &mut RawGrpcStream, want: &str) -> Result<()> {
        loop {
            let event: pb::SubscribeEvent = stream.next().await?;
            if let Some(pb::subscribe_event::Event::Message(m)) = event.event
                && m.payload == want.as_bytes()
            {
                return Ok(());
            }
        }
    }
    op(move |w, i| {
        let (raw, socket, streams) = (raw.clone(), socket.clone(), streams.clone());
        async move {
            let channel = format!("lg{w}");
            let publish = |payload: String| {
                let (raw, channel) = (raw.clone(), channel.clone());
                async move {
                    let req = pb::PublishRequest {
                        channel,
                        payload: payload.into_bytes().into(),
                        ..Default::default()
                    };
                    let _: pb::PublishResponse =
                        raw.call(w, "/outrigger.v1.PubSub/Publish", &req).await?;
                    anyhow::Ok(())
                }
            };
            let mut slot = streams[w].lock().await;
            if slot.is_none() {
                let req = pb::SubscribeRequest {
                    channels: vec![channel.clone()],
                    ..Default::default()
                };
                let mut stream =
                    RawGrpc::stream(&socket, "/outrigger.v1.PubSub/Subscribe", &req).await?;
                for attempt in 0..50 {
                    let marker = format!("prime-{attempt}");
                    publish(marker.clone()).await?;
                    let wait = tokio::time::timeout(
                        Duration::from_millis(200),
                        heard(&mut stream, &marker),
                    );
                    if let Ok(done) = wait.await {
                        done?;
                        *slot = Some(stream);
                        break;
                    }
                }
                ensure!(slot.is_some(), "the subscription never received anything");
            }
            let stream = slot.as_mut().expect("subscribed");
            let payload = format!("m{w}-{i}");
            publish(payload.clone()).await?;
            heard(stream, &payload).await
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

/// `perf record` of the sidecar over one cell's timed window.
struct Perf(std::process::Child);

impl Perf {
    /// Starts recording once the warm-up is over, for `window`.
    fn record(
        dir: &std::path::Path,
        pid: u32,
        name: &str,
        warmup: Duration,
        window: Duration,
    ) -> Result<Perf> {
        std::fs::create_dir_all(dir)?;
        let file = dir.join(format!("{}.perf.data", name.replace([' ', '/'], "_")));
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "sleep {:.3}; exec perf record -q -F 999 --call-graph dwarf,16384 -p {pid} -o '{}' -- sleep {:.3}",
                warmup.as_secs_f64(),
                file.display(),
                window.as_secs_f64()
            ))
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("perf (apt install linux-perf)")?;
        Ok(Perf(child))
    }

    fn finish(mut self) -> Result<()> {
        let status = self.0.wait()?;
        ensure!(status.success(), "perf record: {status}");
        Ok(())
    }
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
         for the lock, the rate limit and presence; the plain command for a cache set, a \
         counter and a map, with the sidecar's script sent directly as a row of its own, \
         \"direct (its script)\"), measured in the same run. Ratios are sidecar ÷ direct: \
         latency ratios below 1 and throughput ratios above 1 favour the sidecar.\n\n\
         Ways through the sidecar: `grpc` and `http` are tonic's and reqwest's clients over \
         TCP, `+uds` over the Unix socket; `http+uds raw` and `grpc+uds raw` are lean \
         clients over the Unix socket (HTTP/1.1 keep-alive written by hand; gRPC on the `h2` \
         crate, one HEADERS and one DATA frame per call), one connection per worker: the \
         sidecar's own cost, without a client library's machinery on top. Sidecar CPU is \
         its user plus system time over the cell, warm-up included, per request.\n\n\
         Work queues: \"queue enqueue\" is one job in (`LPUSH` directly); \"queue \
         claim+ack\" is a worker's step, claiming a job and acking the one it claimed \
         before: directly the reliable-list pattern, `LMOVE` to a working list then `LREM`, \
         two round trips (\"direct, pipelined\": both in one); through the sidecar one \
         claim request carrying the ack (`ack` on a claim; BullMQ's worker fetches its next \
         job with the previous one's completion the same way). \"queue handoff\" is a job enqueued while a worker already waits for it, until \
         acked (`BLMOVE` directly; a waiting gRPC claim through the sidecar).\n",
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
    if let Some(p) = &r.plugin_authorize {
        plugin_section(&mut out, p);
    }
    load_section(&mut out, r);
    fanout_section(&mut out, r);
    profile_section(&mut out);
    clients_section(&mut out, r);
    socketio_section(&mut out, r);
    let _ = writeln!(out, "## All measurements\n");
    let _ = writeln!(
        out,
        "| operation | via | c | req/s | p50 µs | p99 µs | p99.9 µs | p50 × | p99 × | req/s × | sidecar CPU µs / req |"
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
            .filter(|row| row.op == op && row.concurrency == c && !row.via.starts_with("direct"))
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
    // Issue 21's: a worker's step (claim a job, ack the last) against the
    // reliable-list pattern, LMOVE and LREM.
    line(
        "queue claim+ack, c=1: p50 ≤ 2.5× direct (LMOVE, then LREM)".into(),
        best("queue claim+ack", 1, |row| row.p50_ratio, true),
        2.5,
        true,
    );
    // Issue 23's: a hook call per language, and the memory of a sidecar
    // running runtime-carrying plugins.
    if let Some(p) = &r.plugin_authorize {
        for b in &p.builds {
            let limit = if b.language == "Rust" { 2.0 } else { 50.0 };
            let slower = b.allow_us.p50.max(b.deny_us.p50);
            line(
                format!("plugin `authorize` in {}: p50 ≤ {limit} µs", b.language),
                Some((slower, "in-process")),
                limit,
                true,
            );
        }
        line(
            "sidecar with a TypeScript and a Python plugin: RSS < 150 MB".into(),
            Some((p.sidecar.rss_after_mb, "-")),
            150.0,
            true,
        );
    }
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
    // Issue 24's: the sidecar's own cost, through the lean clients.
    let find = |op: &str, via: &str, c: usize| {
        r.rows
            .iter()
            .find(|row| row.op == op && row.via == via && row.concurrency == c)
    };
    for op in ops.iter().filter(|op| **op != "cache get (hit)") {
        // Against the same script sent directly where the sidecar runs one,
        // except a cache set, held to a plain `SET`.
        let (limit, floor) = match find(op, "direct (its script)", 1) {
            Some(script) if *op != "cache set" => (2.3, Some(script)),
            _ if *op == "cache set" => (2.5, None),
            _ => (2.3, None),
        };
        let against = if floor.is_some() {
            "its script sent directly"
        } else {
            "direct"
        };
        let lean = find(op, "http+uds raw", 1);
        let ratio = |row: &Row, quantile: fn(&Row) -> f64, stored: Option<f64>| match floor {
            Some(script) => Some(quantile(row) / quantile(script)),
            None => stored,
        };
        line(
            format!("{op}, c=1, lean HTTP client: p50 ≤ {limit}× {against}"),
            lean.and_then(|row| Some((ratio(row, |r| r.p50_us, row.p50_ratio)?, row.via))),
            limit,
            true,
        );
        line(
            format!("{op}, c=1, lean HTTP client: p99 ≤ 3× {against}"),
            lean.and_then(|row| Some((ratio(row, |r| r.p99_us, row.p99_ratio)?, row.via))),
            3.0,
            true,
        );
    }
    for op in &ops {
        for (via, limit) in [("http+uds raw", 15.0), ("grpc+uds raw", 20.0)] {
            line(
                format!("{op}, c=64: sidecar CPU ≤ {limit} µs per request"),
                find(op, via, 64).and_then(|row| Some((row.cpu_ms_per_1k?, row.via))),
                limit,
                true,
            );
        }
    }
    for op in &ops {
        let (grpc, http) = (find(op, "grpc+uds raw", 1), find(op, "http+uds raw", 1));
        line(
            format!("{op}, c=1: gRPC p50 ≤ 1.3× HTTP (lean clients)"),
            grpc.zip(http)
                .map(|(g, h)| (g.p50_us / h.p50_us, "grpc+uds raw")),
            1.3,
            true,
        );
        if let (Some(lib), Some(lean)) = (find(op, "http+uds", 1), find(op, "http+uds raw", 1)) {
            line(
                format!("{op}, c=1: reqwest p50 within 20 µs of the lean client"),
                Some((lib.p50_us - lean.p50_us, "http+uds")),
                20.0,
                true,
            );
        }
    }
    for row in r.load.iter().filter(|row| row.throughput_ratio.is_some()) {
        let limit = if row.near_hit { 0.8 } else { 0.5 };
        line(
            format!(
                "{}, {} connections, C load generators: throughput ≥ {limit}× redis-benchmark",
                row.op, row.connections
            ),
            row.throughput_ratio.map(|v| (v, row.via)),
            limit,
            false,
        );
    }
    for row in r.fanout.iter().filter(|row| !row.via.starts_with("direct")) {
        line(
            format!(
                "{} subscribers over {} channel(s): ≤ 10 KiB of sidecar memory each",
                row.subscribers, row.channels
            ),
            Some((row.kib_per_subscriber, row.via)),
            10.0,
            true,
        );
        if row.channels == 1 {
            line(
                format!(
                    "one publish reaches all {} subscribers: p99 ≤ 50 ms",
                    row.subscribers
                ),
                Some((row.p99_ms, row.via)),
                50.0,
                true,
            );
        }
    }
    let rss = r.sidecar_rss_idle_mb;
    let _ = writeln!(
        out,
        "| sidecar RSS idle ≤ 15 MB | - | {rss:.1} MB | {} |\n",
        if rss <= 15.0 { "yes" } else { "no" }
    );
}

/// The cost of plugins, per language: see [`PluginCost`].
fn plugin_section(out: &mut String, p: &PluginCost) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "## Plugin calls\n\n\
         tenant-guard, the same policy written in Rust, TypeScript (`sdk/plugin-js`) and Python \
         (`sdk/plugin-python`). One `authorize` hook call, in-process (plugins run inline, on \
         the request's own thread), {} calls each; _load_ is loading it compiled from the \
         compile cache (`plugin_cache`), linking it, making its first instance and running \
         `hooks` and `init`, and _RSS added_ what that load added to the process.\n\n\
         | plugin | component | load | RSS added | allowed p50 | p99 | denied p50 | p99 |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n\
         | none | | | | {:.2} µs | {:.2} µs | | |",
        p.calls, p.no_plugin_us.p50, p.no_plugin_us.p99
    );
    for b in &p.builds {
        let _ = writeln!(
            out,
            "| {} | {:.2} MB | {:.1} ms | {:.1} MB | {:.2} µs | {:.2} µs | {:.2} µs | {:.2} µs |",
            b.language,
            b.component_bytes as f64 / 1e6,
            b.load_ms,
            b.load_rss_mb,
            b.allow_us.p50,
            b.allow_us.p99,
            b.deny_us.p50,
            b.deny_us.p99,
        );
    }
    let s = &p.sidecar;
    let _ = writeln!(
        out,
        "\nA sidecar (memory backend) with tenant-guard in TypeScript and in Python, both \
         on every request: RSS {:.1} MB once loaded, {:.1} MB after {} cache reads from 64 \
         clients at once ({:.1} MB peak), holding {} plugin instances{}.\n",
        s.rss_loaded_mb,
        s.rss_after_mb,
        p.calls,
        s.rss_peak_mb,
        s.instances_after,
        s.mb_per_instance.map_or(String::new(), |mb| format!(
            ", {mb:.2} MB for each beyond one per plugin (an instance's memory is a \
             copy-on-write mapping of its plugin's memory image: only the pages its calls \
             write are its own)"
        ))
    );
}

/// Where the sidecar's CPU goes, as `scripts/profile.sh` last wrote it
/// (`bench/flamegraphs/`): the flame graphs, and the share of samples per
/// part of the request path, before and after the changes of issue 24.
fn profile_section(out: &mut String) {
    use std::fmt::Write;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/flamegraphs");
    let ops = [
        ("cache set", "cache_set"),
        ("lock acquire+release", "lock_acquire+release"),
        ("rate-limit check", "rate-limit_check"),
    ];
    if !dir.join("cache_set-before.txt").exists() {
        return;
    }
    let _ = writeln!(
        out,
        "## Where the microseconds go\n\n\
         `scripts/profile.sh` records the sidecar with `perf` (DWARF call graphs, the \
         `profiling` build: release code with line tables) while the lean HTTP client drives \
         each operation at concurrency 64. Each sample goes to the part of the request path \
         of its innermost frame that names one (`scripts/profile-parts.py`); µs per request \
         is that share of the sidecar's CPU time per request over the same window (perf's \
         own sampling adds a little). Syscalls count for whoever made them: the socket reads \
         under tokio's I/O, the writes under hyper's reply. Time inside Redis is not the \
         sidecar's: the `cache set`, counter and map rows above put the sidecar's own script, sent directly \
         (\"direct (its script)\"), next to a plain `SET`. _before_ is glibc's malloc, three \
         per-request middlewares and two runtime workers; _after_ is mimalloc, the one \
         middleware and one worker (`runtime.workers = 1`, the default).\n"
    );
    for (name, file) in ops {
        let _ = write!(out, "**{name}**: flame graphs ");
        for label in ["before", "after"] {
            if dir.join(format!("{file}-{label}.svg")).exists() {
                let _ = write!(out, "[{label}](bench/flamegraphs/{file}-{label}.svg) ");
            }
        }
        let _ = writeln!(out, "\n");
        for label in ["before", "after"] {
            if let Ok(text) = std::fs::read_to_string(dir.join(format!("{file}-{label}.txt"))) {
                let _ = writeln!(out, "_{label}_: {}", text.trim());
                let _ = writeln!(out);
            }
        }
    }
}

/// The C load generators' rows.
fn load_section(out: &mut String, r: &Report) {
    use std::fmt::Write;
    if r.load.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## Throughput under C load generators\n\n\
         The client is a C program with one thread, so it does not eat the cores the sidecar \
         and Redis share: `wrk` (HTTP/1.1 keep-alive, 64 connections), `h2load` (gRPC over \
         h2c, 4 connections of 16 streams) and `redis-benchmark` (64 connections, no \
         pipelining) for the direct row, each over TCP after a 1 s warm-up. The lock is not \
         here: its release needs the acquire's token, which these tools cannot carry from one \
         request to the next. h2load reports no percentiles.\n"
    );
    let _ = writeln!(
        out,
        "| operation | via | req/s | p50 µs | p99 µs | req/s × direct | sidecar CPU µs / req |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
    let x = |v: Option<f64>, digits: usize| v.map_or(String::new(), |v| format!("{v:.digits$}"));
    for row in &r.load {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} | {} | {} | {} |",
            row.op,
            row.via,
            row.throughput,
            x(row.p50_us, 1),
            x(row.p99_us, 1),
            x(row.throughput_ratio, 2),
            x(row.cpu_us_per_req, 1),
        );
    }
    let _ = writeln!(out);
}

/// The fan-out rows.
fn fanout_section(out: &mut String, r: &Report) {
    use std::fmt::Write;
    if r.fanout.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## Fan-out: many subscribers on one sidecar\n\n\
         Each row on a fresh sidecar (its own Unix sockets, Redis backend); the direct rows are \
         one redis-rs connection per subscriber, each with its own `SUBSCRIBE`, on a Redis \
         server of their own. Memory is the server's RSS growth from before the first \
         subscription to after every subscriber heard a message, divided by the subscribers: \
         the sidecar's for the sidecar rows, redis-server's for the direct rows. Latency is \
         from a publish being sent (over HTTP to the sidecar, `PUBLISH` directly) to the last \
         of its subscribers receiving it: everyone on one channel, or the 1/1,000th of them on \
         one of 1,000 channels; {} publishes one at a time.\n",
        r.fanout.first().map_or(0, |row| row.rounds)
    );
    let _ = writeln!(
        out,
        "| way | channels | subscribers | connections | KiB / subscriber | p50 ms | p99 ms |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    for row in &r.fanout {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.1} | {:.2} | {:.2} |",
            row.via,
            row.channels,
            row.subscribers,
            row.connections,
            row.kib_per_subscriber,
            row.p50_ms,
            row.p99_ms
        );
    }
    let _ = writeln!(out);
}
