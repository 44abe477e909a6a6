//! Throughput under concurrency driven by C load generators, so that the
//! client does not eat the cores the sidecar and Redis share: `wrk` for
//! HTTP/1.1, `h2load` for gRPC (h2c), `redis-benchmark` for direct Redis.
//! Each gets one thread and 64 connections (h2load: 4 connections of 16
//! streams each), a 1 s warm-up, then a timed run.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;

/// One load-generator run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadRow {
    pub op: &'static str,
    /// `direct (redis-benchmark)`, `http (wrk)` or `grpc (h2load)`.
    pub via: &'static str,
    pub connections: usize,
    pub throughput: f64,
    /// Median latency where the tool reports one (h2load does not).
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    /// Against the direct row of the same operation.
    pub throughput_ratio: Option<f64>,
    pub cpu_us_per_req: Option<f64>,
    /// A near-cache hit (target 0.8x direct) or Redis-reaching (0.5x).
    pub near_hit: bool,
}

/// One operation as each tool sends it.
pub struct LoadOp {
    pub name: &'static str,
    pub near_hit: bool,
    /// `redis-benchmark` arguments after the connection options.
    pub redis: Vec<String>,
    /// HTTP method, path, JSON body (none for GET), expected status.
    pub http: (&'static str, String, Option<Vec<u8>>, u16),
    /// gRPC method path and the encoded request message.
    pub grpc: (&'static str, Vec<u8>),
}

pub struct Targets<'a> {
    pub redis_port: u16,
    pub http_port: u16,
    pub grpc_port: u16,
    pub sidecar_pid: u32,
    pub dir: &'a Path,
    pub window: Duration,
    pub quick: bool,
}

const CONNECTIONS: usize = 64;

pub fn available() -> bool {
    ["wrk", "h2load", "redis-benchmark"].iter().all(|tool| {
        Command::new(tool)
            .arg("--help")
            .output()
            .is_ok_and(|o| o.status.success() || !o.stdout.is_empty() || !o.stderr.is_empty())
    })
}

pub fn run(ops: &[LoadOp], t: &Targets) -> Result<Vec<LoadRow>> {
    let mut rows = Vec::new();
    let ticks = super::clock_ticks() as f64;
    for op in ops {
        let direct = redis_benchmark(op, t)?;
        let mut measured = vec![direct];
        for via in ["http (wrk)", "grpc (h2load)"] {
            if !t.quick {
                // Warm-up, not counted.
                let warm = Targets {
                    window: Duration::from_secs(1),
                    ..*t
                };
                let _ = sidecar_run(via, op, &warm)?;
            }
            let before = super::cpu_ticks(t.sidecar_pid)?;
            let mut row = sidecar_run(via, op, t)?;
            let used = (super::cpu_ticks(t.sidecar_pid)? - before) as f64 / ticks;
            // The tools run whole seconds.
            let requests = row.throughput * t.window.as_secs().max(1) as f64;
            row.cpu_us_per_req = Some(used * 1e6 / requests.max(1.0));
            measured.push(row);
        }
        let base = measured[0].throughput;
        for row in &mut measured[1..] {
            row.throughput_ratio = Some(row.throughput / base);
        }
        for row in &measured {
            eprintln!(
                "{:<22} {:<22} {:>9.0} req/s  p50 {:>8} µs  cpu {:>6} µs/req",
                row.op,
                row.via,
                row.throughput,
                row.p50_us.map_or("-".into(), |v| format!("{v:.1}")),
                row.cpu_us_per_req.map_or("-".into(), |v| format!("{v:.1}")),
            );
        }
        rows.extend(measured);
    }
    Ok(rows)
}

fn row(op: &LoadOp, via: &'static str, connections: usize) -> LoadRow {
    LoadRow {
        op: op.name,
        via,
        connections,
        throughput: 0.0,
        p50_us: None,
        p99_us: None,
        throughput_ratio: None,
        cpu_us_per_req: None,
        near_hit: op.near_hit,
    }
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `redis-benchmark --csv`: one request at a time per connection, for
/// about the window (the request count is sized from a first short run).
fn redis_benchmark(op: &LoadOp, t: &Targets) -> Result<LoadRow> {
    let run = |n: u64| -> Result<(f64, f64, f64)> {
        let out = output(
            Command::new("redis-benchmark")
                .args(["-h", "127.0.0.1", "-p", &t.redis_port.to_string()])
                .args([
                    "-c",
                    &CONNECTIONS.to_string(),
                    "-n",
                    &n.to_string(),
                    "--csv",
                ])
                .args(&op.redis),
        )?;
        // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
        let line = out
            .lines()
            .find(|l| !l.starts_with("\"test\""))
            .context("redis-benchmark printed no row")?;
        let fields: Vec<f64> = line
            .split(',')
            .skip(1)
            .map(|f| f.trim_matches('"').parse().unwrap_or(f64::NAN))
            .collect();
        ensure!(fields.len() >= 6, "redis-benchmark row {line:?}");
        Ok((fields[0], fields[3] * 1000.0, fields[5] * 1000.0))
    };
    let (rps, _, _) = run(if t.quick { 1000 } else { 20_000 })?;
    let n = (rps * t.window.as_secs_f64()).max(1000.0) as u64;
    let (rps, p50, p99) = run(n)?;
    let mut r = row(op, "direct (redis-benchmark)", CONNECTIONS);
    r.throughput = rps;
    r.p50_us = Some(p50);
    r.p99_us = Some(p99);
    Ok(r)
}

fn sidecar_run(via: &'static str, op: &LoadOp, t: &Targets) -> Result<LoadRow> {
    let secs = format!("{}s", t.window.as_secs().max(1));
    match via {
        "http (wrk)" => {
            let (method, path, body, status) = &op.http;
            let script = t
                .dir
                .join(format!("{}.lua", op.name.replace([' ', '(', ')'], "_")));
            let mut lua = format!("wrk.method = \"{method}\"\n");
            if let Some(body) = body {
                lua.push_str(&format!(
                    "wrk.body = \"{}\"\nwrk.headers[\"content-type\"] = \"application/json\"\n",
                    String::from_utf8_lossy(body).replace('"', "\\\"")
                ));
            }
            std::fs::write(&script, lua)?;
            let out = output(
                Command::new("wrk")
                    .args([
                        "-t1",
                        "-c",
                        &CONNECTIONS.to_string(),
                        "-d",
                        &secs,
                        "--latency",
                    ])
                    .arg("-s")
                    .arg(&script)
                    .arg(format!("http://127.0.0.1:{}{path}", t.http_port)),
            )?;
            let mut r = row(op, via, CONNECTIONS);
            r.throughput = field(&out, "Requests/sec:")?;
            r.p50_us = Some(wrk_latency(&out, "50%")?);
            r.p99_us = Some(wrk_latency(&out, "99%")?);
            let wrong = out
                .lines()
                .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
                .map(|n| n.trim().parse::<u64>().unwrap_or(u64::MAX))
                .unwrap_or(0);
            // wrk counts every non-2xx answer: a miss's 404s are expected.
            if *status < 300 {
                ensure!(wrong == 0, "{} via wrk: {wrong} non-2xx answers", op.name);
            }
            Ok(r)
        }
        "grpc (h2load)" => {
            let (path, message) = &op.grpc;
            let data = t
                .dir
                .join(format!("{}.grpc", op.name.replace([' ', '(', ')'], "_")));
            let mut framed = vec![0u8];
            framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
            framed.extend_from_slice(message);
            std::fs::write(&data, framed)?;
            let out = output(
                Command::new("h2load")
                    .args(["-t1", "-c4", "-m16", "-D", &secs])
                    .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
                    .arg("-d")
                    .arg(&data)
                    .arg(format!("http://127.0.0.1:{}{path}", t.grpc_port)),
            )?;
            // "requests: 10 total, 10 started, 10 done, 10 succeeded, 0 failed, 0 errored, 0 timeout"
            let requests = out
                .lines()
                .find(|l| l.starts_with("requests:"))
                .context("h2load printed no requests line")?;
            let count = |what: &str| -> u64 {
                requests
                    .split(',')
                    .find(|p| p.trim().ends_with(what))
                    .and_then(|p| p.split_whitespace().find_map(|w| w.parse().ok()))
                    .unwrap_or(0)
            };
            ensure!(
                count("failed") == 0 && count("errored") == 0 && count("succeeded") > 0,
                "{} via h2load: {requests}",
                op.name
            );
            let mut r = row(op, via, CONNECTIONS);
            // "finished in 3.00s, 12345.67 req/s, 1.2MB/s"
            let finished = out
                .lines()
                .find(|l| l.starts_with("finished in"))
                .context("h2load printed no finished line")?;
            r.throughput = finished
                .split(',')
                .nth(1)
                .and_then(|p| p.trim().strip_suffix(" req/s"))
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("h2load: {finished}"))?;
            Ok(r)
        }
        other => bail!("no load generator for {other}"),
    }
}

fn field(out: &str, name: &str) -> Result<f64> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("{name} in wrk's output:\n{out}"))
}

/// A `--latency` percentile line of wrk (`50%  612.00us`), in µs.
fn wrk_latency(out: &str, pct: &str) -> Result<f64> {
    let value = out
        .lines()
        .find_map(|l| l.trim().strip_prefix(pct).map(str::trim))
        .with_context(|| format!("{pct} in wrk's output:\n{out}"))?;
    let (number, unit) = value.split_at(
        value
            .find(|c: char| c.is_alphabetic())
            .unwrap_or(value.len()),
    );
    let number: f64 = number.parse()?;
    Ok(match unit {
        "us" => number,
        "ms" => number * 1e3,
        "s" => number * 1e6,
        _ => bail!("wrk latency {value:?}"),
    })
}
