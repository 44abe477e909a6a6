//! The Grafana dashboard and the alert rules the chart ships name only
//! metrics a sidecar really exports: a sidecar with Redis, the near cache,
//! a plugin and a rate-limit policy serves traffic of every kind, loses
//! Redis, and its `/metrics` then has every series the dashboard's and the
//! rules' queries read.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use outrigger_tests::{RedisServer, eventually, plugin_wasm, sidecar};
use serde_json::{Value, json};

/// Every `outrigger_*` metric name in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(found) = text[at..].find("outrigger_") {
        let start = at + found;
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(text.len(), |n| start + n);
        if !preceded {
            names.insert(text[start..end].to_string());
        }
        at = end;
    }
    names
}

/// The queries of the dashboard (every `expr`) and of the rules template.
fn referenced() -> BTreeSet<String> {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/outrigger");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(chart.join("monitoring/dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut exprs = vec![];
    fn collect(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr", Value::String(e)) => out.push(e.clone()),
                        _ => collect(v, out),
                    }
                }
            }
            Value::Array(list) => list.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    collect(&dashboard, &mut exprs);
    assert!(
        exprs.len() >= 15,
        "{} queries in the dashboard",
        exprs.len()
    );
    let rules = std::fs::read_to_string(chart.join("templates/monitoring.yaml")).unwrap();
    let mut names = names_in(&exprs.join("\n"));
    let in_rules = names_in(&rules);
    assert!(in_rules.len() >= 4, "{in_rules:?}");
    names.extend(in_rules);
    names
}

#[tokio::test]
async fn the_dashboard_and_alerts_name_only_metrics_the_sidecar_exports() {
    let names = referenced();
    let mut redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("outrigger.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[cache.near]
enabled = true

[ratelimit.policies.login]
algorithm = "fixed_window"
limit = 1
period = "1m"

[[plugins]]
name = "guard"
path = "{}"
primitives = ["cache"]
budget = "100ms"
config = {{ exempt_callers = ["ops"] }}
"#,
            plugin_wasm("tenant_guard").display()
        ),
    )
    .unwrap();
    let s = sidecar!()
        .redis(&redis)
        .env("OUTRIGGER_FAILOVER__PROBE_MAX", "1s")
        .arg("--config")
        .arg(config.display().to_string())
        .start()
        .await;
    let c = reqwest::Client::new();
    let ops = |r: reqwest::RequestBuilder| r.header("x-outrigger-caller", "ops");

    // Traffic of every kind the dashboard shows.
    let put = ops(c.put(s.url("/v1/cache/k")))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    eventually(Duration::from_secs(10), "a near-cache hit", || async {
        ops(c.get(s.url("/v1/cache/k"))).send().await.ok()?;
        let st: Value = c
            .get(s.url("/v1/admin/status"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (st["cache"]["near"]["hits"].as_u64()? > 0).then_some(())
    })
    .await;
    let miss = ops(c.get(s.url("/v1/cache/none"))).send().await.unwrap();
    assert_eq!(miss.status(), 404);
    let denied = c.get(s.url("/v1/cache/k")).send().await.unwrap();
    assert_eq!(
        denied.status(),
        403,
        "the plugin refuses a caller without a tenant"
    );
    for wanted in [200, 409] {
        let lock = c
            .post(s.url("/v1/locks/l/acquire"))
            .json(&json!({"ttl_ms": 60000, "wait_ms": 0}))
            .send()
            .await
            .unwrap();
        assert_eq!(lock.status(), wanted);
    }
    for _ in 0..2 {
        c.post(s.url("/v1/ratelimit/login/check"))
            .json(&json!({"key": "k"}))
            .send()
            .await
            .unwrap();
    }
    // Redis lost: the fallback serves, and says so.
    redis.kill().await;
    s.wait_mode("memory", Duration::from_secs(20)).await;
    let fallback = ops(c.get(s.url("/v1/cache/k"))).send().await.unwrap();
    assert_eq!(
        fallback.status(),
        404,
        "the memory fallback does not have it"
    );

    let metrics = c
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported: BTreeSet<String> = metrics
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    let unknown: Vec<&String> = names.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard or alerts name metrics the sidecar does not export: {unknown:?}\n\
         exported: {exported:?}"
    );
    eprintln!("{} metrics named, all exported", names.len());
}
