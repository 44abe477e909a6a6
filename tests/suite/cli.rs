//! The operator commands (`outrigger status`, `outrigger cache get`, ...)
//! run as an operator runs them inside the pod: the same binary, in a
//! process of its own, finding the sidecar through the environment the
//! sidecar itself reads, against a live sidecar; and what a script sees
//! when the token is wrong or the sidecar is gone: one line and an exit
//! code it can trust.

use std::process::Stdio;
use std::time::Duration;

use outrigger_tests::{RedisServer, Sidecar, sidecar, unique};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

const TOKEN: &str = "s3cret-operator-token";

/// What one command did.
struct Ran {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Ran {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.text(), self.stderr))
    }

    /// Succeeded, or the test fails with what it printed.
    fn ok(self) -> Ran {
        assert_eq!(self.code, 0, "{}{}", self.text(), self.stderr);
        self
    }

    /// Failed with `code` and a single line on stderr naming `what`.
    fn failed(&self, code: i32, what: &str) {
        assert_eq!(self.code, code, "{}{}", self.text(), self.stderr);
        assert_eq!(
            self.stderr.lines().count(),
            1,
            "one line: {:?}",
            self.stderr
        );
        assert!(
            self.stderr.contains(what),
            "{:?} lacks {what:?}",
            self.stderr
        );
    }
}

/// Runs `outrigger ARGS` with only `env` (and PATH), `stdin` as its
/// standard input, for at most 20 s.
async fn outrigger(env: &[(&str, String)], args: &[&str], stdin: &[u8]) -> Ran {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_outrigger-under-test"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run outrigger");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("outrigger {args:?} did not exit within 20 s"))
        .unwrap();
    Ran {
        code: out.status.code().expect("exited, not killed"),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The sidecar's own API, with the token.
fn api() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A sidecar with a token and a rate-limit policy, and the environment
/// (as the chart gives the container) that both it and the commands read.
async fn started(extra: &[(&str, String)]) -> (Sidecar, Vec<(&'static str, String)>) {
    let mut builder = sidecar!()
        .env("OUTRIGGER_AUTH__TOKEN", TOKEN)
        .env(
            "OUTRIGGER_RATELIMIT__POLICIES__LOGIN__ALGORITHM",
            "fixed_window",
        )
        .env("OUTRIGGER_RATELIMIT__POLICIES__LOGIN__LIMIT", "2")
        .env("OUTRIGGER_RATELIMIT__POLICIES__LOGIN__PERIOD", "1h");
    for (k, v) in extra {
        builder = builder.env(k, v.clone());
    }
    let s = builder.start().await;
    // The port is chosen at start: the pod's environment would name it.
    let env = vec![
        ("OUTRIGGER_HTTP__ADDR", s.http.to_string()),
        ("OUTRIGGER_AUTH__TOKEN", TOKEN.to_string()),
    ];
    (s, env)
}

#[tokio::test]
async fn status_and_the_cache_through_the_sidecars_own_environment() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock").display().to_string();
    let (s, mut env) = started(&[("OUTRIGGER_HTTP__SOCKET", socket.clone())]).await;
    // With a Unix socket configured, the commands use it: give them a
    // TCP address that leads nowhere to be sure.
    env[0].1 = "127.0.0.1:1".to_string();
    env.push(("OUTRIGGER_HTTP__SOCKET", socket));
    let c = api();

    let status = outrigger(&env, &["status"], b"").await.ok();
    let text = status.text();
    assert!(
        text.contains("backend     memory (no Redis configured)"),
        "{text}"
    );
    assert!(text.contains("plugins     none"), "{text}");
    let status = outrigger(&env, &["status", "--json"], b"")
        .await
        .ok()
        .json();
    assert_eq!(status["backend"], "memory");
    assert_eq!(status["namespace"], "default");

    // Written by the command (binary, from stdin), read through the API.
    let bytes = [0u8, 159, 146, 150, b'\n', b'x'];
    let set = outrigger(
        &env,
        &[
            "cache", "set", "user/7", "--ttl", "1m", "--tags", "u7,users",
        ],
        &bytes,
    )
    .await
    .ok();
    assert!(
        set.text().starts_with("written, version "),
        "{}",
        set.text()
    );
    let got = c.get(s.url("/v1/cache/user%2F7")).send().await.unwrap();
    assert_eq!(got.status(), 200);
    let ttl: u64 = got.headers()["outrigger-ttl-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ttl > 50_000 && ttl <= 60_000, "{ttl}");
    assert_eq!(got.bytes().await.unwrap().as_ref(), bytes);
    // Written through the API, read by the command, byte for byte.
    let put = c
        .put(s.url("/v1/cache/greeting"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let get = outrigger(&env, &["cache", "get", "user/7"], b"").await.ok();
    assert_eq!(get.stdout, bytes);
    let get = outrigger(&env, &["cache", "get", "greeting", "--json"], b"")
        .await
        .ok();
    let got = get.json();
    assert_eq!(got["value"], "hello");
    assert!(got["version"].as_u64().unwrap() > 0);
    let shown = outrigger(&env, &["cache", "show", "user/7"], b"")
        .await
        .ok()
        .text();
    assert!(
        shown.contains("tags     u7, users") && shown.contains("size     6 B"),
        "{shown}"
    );
    let binary = outrigger(&env, &["cache", "get", "user/7", "--json"], b"")
        .await
        .ok();
    assert_eq!(binary.json()["value_base64"], "AJ+Slgp4");

    // A condition that does not hold, and a missing key: exit 1.
    outrigger(
        &env,
        &["cache", "set", "greeting", "bye", "--if", "absent"],
        b"",
    )
    .await
    .failed(1, "already exists");
    outrigger(&env, &["cache", "get", "nothing"], b"")
        .await
        .failed(1, "nothing");

    // Listing by glob, and invalidation by tag and by glob.
    for i in 0..5 {
        let key = format!("/v1/cache/page{i}");
        c.put(s.url(&key)).body("p").send().await.unwrap();
    }
    let ls = outrigger(&env, &["cache", "ls", "page*"], b"").await.ok();
    let mut keys: Vec<&str> = std::str::from_utf8(&ls.stdout).unwrap().lines().collect();
    keys.sort();
    assert_eq!(keys, ["page0", "page1", "page2", "page3", "page4"]);
    let ls = outrigger(
        &env,
        &["cache", "ls", "page*", "--limit", "2", "--json"],
        b"",
    )
    .await
    .ok()
    .json();
    assert_eq!(ls["keys"].as_array().unwrap().len(), 2);
    assert_eq!(ls["more"], true);
    let all = outrigger(&env, &["cache", "ls", "--json"], b"")
        .await
        .ok()
        .json();
    assert_eq!(all["keys"].as_array().unwrap().len(), 7, "{all}");
    assert_eq!(all["more"], false);
    let by_tag = outrigger(&env, &["cache", "invalidate", "--tag", "u7"], b"")
        .await
        .ok();
    assert_eq!(by_tag.text(), "deleted 1 keys\n");
    let gone = c.get(s.url("/v1/cache/user%2F7")).send().await.unwrap();
    assert_eq!(gone.status(), 404);
    let by_glob = outrigger(
        &env,
        &["cache", "invalidate", "--pattern", "page*", "--json"],
        b"",
    )
    .await
    .ok();
    assert_eq!(by_glob.json()["deleted"], 5);

    // Deleted by the command: gone through the API; a second time: exit 1.
    outrigger(&env, &["cache", "del", "greeting"], b"")
        .await
        .ok();
    let gone = c.get(s.url("/v1/cache/greeting")).send().await.unwrap();
    assert_eq!(gone.status(), 404);
    outrigger(&env, &["cache", "del", "greeting"], b"")
        .await
        .failed(1, "did not exist");
}

#[tokio::test]
async fn rate_limits_presence_pubsub_maps_counters_and_plugins() {
    let (s, env) = started(&[]).await;
    let c = api();

    // Rate limits: the state the checks left, and a reset.
    for _ in 0..2 {
        let check = c
            .post(s.url("/v1/ratelimit/login/check"))
            .json(&json!({"key": "ip-1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(check.status(), 200);
    }
    let state = outrigger(&env, &["ratelimit", "state", "login", "ip-1"], b"")
        .await
        .ok();
    assert!(
        state.text().starts_with("limited: retry in "),
        "{}",
        state.text()
    );
    assert!(state.text().contains("all 2 again in "), "{}", state.text());
    let reset = outrigger(&env, &["ratelimit", "reset", "login", "ip-1"], b"")
        .await
        .ok();
    assert_eq!(reset.text(), "reset\n");
    let state = outrigger(
        &env,
        &["ratelimit", "state", "login", "ip-1", "--json"],
        b"",
    )
    .await
    .ok()
    .json();
    // A check now would be allowed and leave one of the two.
    assert_eq!(
        (&state["allowed"], &state["remaining"]),
        (&json!(true), &json!(1))
    );
    let text = outrigger(&env, &["ratelimit", "state", "login", "ip-1"], b"")
        .await
        .ok()
        .text();
    assert!(
        text.starts_with("allowed: a request now would leave 1 of 2"),
        "{text}"
    );
    outrigger(&env, &["ratelimit", "state", "nonesuch", "ip-1"], b"")
        .await
        .failed(1, "no rate-limit policy named \"nonesuch\"");

    // Locks and semaphores: who holds what, by fence, never the token.
    let lease: Value = c
        .post(s.url("/v1/locks/orders/acquire"))
        .json(&json!({"ttl_ms": 60000}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (fence, token) = (
        lease["fence"].as_u64().unwrap(),
        lease["token"].as_str().unwrap(),
    );
    let ls = outrigger(&env, &["lock", "ls", "--json"], b"").await.ok();
    assert!(!ls.text().contains(token), "{}", ls.text());
    let items = ls.json()["items"].clone();
    assert_eq!(items.as_array().unwrap().len(), 1, "{items}");
    assert_eq!(
        (&items[0]["name"], &items[0]["fence"]),
        (&json!("orders"), &json!(fence))
    );
    let show = outrigger(&env, &["lock", "show", "orders"], b"")
        .await
        .ok()
        .text();
    assert!(
        show.starts_with("LOCK") && show.contains(&fence.to_string()),
        "{show}"
    );
    assert!(!show.contains(token), "{show}");
    outrigger(&env, &["lock", "show", "invoices"], b"")
        .await
        .failed(1, "lock \"invoices\" is free");
    for _ in 0..2 {
        let permit = c
            .post(s.url("/v1/semaphores/exports/acquire"))
            .json(&json!({"limit": 3, "ttl_ms": 60000}))
            .send()
            .await
            .unwrap();
        assert_eq!(permit.status(), 200);
    }
    let pool = outrigger(&env, &["semaphore", "show", "exports", "--json"], b"")
        .await
        .ok()
        .json();
    assert_eq!(pool["held"], 2);
    let ls = outrigger(&env, &["semaphore", "ls"], b"").await.ok().text();
    assert!(
        ls.starts_with("SEMAPHORE") && ls.contains("exports"),
        "{ls}"
    );

    // Presence: who is in the room, with metadata.
    for (member, seat) in [("alice", 1), ("bob", 2)] {
        let join = c
            .put(s.url(&format!("/v1/presence/lobby/{member}")))
            .json(&json!({"ttl_ms": 60000, "metadata": {"seat": seat}}))
            .send()
            .await
            .unwrap();
        assert_eq!(join.status(), 200);
    }
    let ls = outrigger(&env, &["presence", "ls", "lobby"], b"")
        .await
        .ok();
    let text = ls.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("MEMBER"), "{text}");
    assert!(
        text.contains("alice") && text.contains(r#"{"seat":1}"#),
        "{text}"
    );
    let ls = outrigger(&env, &["presence", "ls", "lobby", "--json"], b"")
        .await
        .ok()
        .json();
    let mut members: Vec<&str> = ls["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["member"].as_str().unwrap())
        .collect();
    members.sort();
    assert_eq!(members, ["alice", "bob"]);

    // Pub/sub: published by the command, followed by the command (the
    // durable history replayed, then live), read back as history.
    for message in ["one", "two"] {
        outrigger(
            &env,
            &["pubsub", "publish", "news", message, "--durable"],
            b"",
        )
        .await
        .ok();
    }
    let tail_env = env.clone();
    let tail = tokio::spawn(async move {
        outrigger(
            &tail_env,
            &[
                "pubsub", "tail", "news", "--from", "0", "--count", "3", "--json",
            ],
            b"",
        )
        .await
    });
    let three = c
        .post(s.url("/v1/pubsub/news?durable=true"))
        .body("three")
        .send()
        .await
        .unwrap();
    assert_eq!(three.status(), 200);
    let tail = tail.await.unwrap().ok();
    let payloads: Vec<String> = tail
        .text()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["type"] == "message")
        .map(|e| e["payload"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(payloads, ["one", "two", "three"]);
    let history = outrigger(
        &env,
        &["pubsub", "history", "news", "--last", "2", "--json"],
        b"",
    )
    .await
    .ok()
    .json();
    let payloads: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["payload"].as_str().unwrap())
        .collect();
    assert_eq!(payloads, ["two", "three"]);
    outrigger(&env, &["pubsub", "history", "news", "--last", "0"], b"")
        .await
        .failed(2, "last");

    // Maps: named fields, the whole map, and a missing field (exit 1).
    for (field, value) in [("name", "Ada"), ("city", "London")] {
        let put = c
            .put(s.url(&format!("/v1/maps/profile/{field}")))
            .body(value)
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 200);
    }
    let get = outrigger(&env, &["map", "get", "profile", "name", "--json"], b"")
        .await
        .ok()
        .json();
    assert_eq!(get["fields"][0]["value"], "Ada");
    let all = outrigger(&env, &["map", "get", "profile"], b"")
        .await
        .ok()
        .text();
    assert!(all.contains("London") && all.contains("Ada"), "{all}");
    outrigger(&env, &["map", "get", "profile", "name", "age"], b"")
        .await
        .failed(1, "age");

    // Counters.
    let incr = c
        .post(s.url("/v1/counters/visits/incr"))
        .json(&json!({"by": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(incr.status(), 200);
    let value = outrigger(&env, &["counter", "get", "visits"], b"")
        .await
        .ok();
    assert_eq!(value.text(), "5\n");

    // Plugins: none configured here (the plugin suite covers health).
    let ls = outrigger(&env, &["plugins", "ls"], b"").await.ok();
    assert_eq!(ls.text(), "no plugins configured\n");
    let reload = outrigger(&env, &["plugins", "reload", "--json"], b"")
        .await
        .ok();
    assert_eq!(reload.json(), json!({"plugins": []}));
}

#[tokio::test]
async fn a_wrong_token_bad_input_and_a_stopped_sidecar_each_fail_in_one_line() {
    let (s, env) = started(&[]).await;
    let addr = s.http.to_string();

    // No token, a wrong one: 3.
    let bare = [("OUTRIGGER_HTTP__ADDR", addr.clone())];
    outrigger(&bare, &["status"], b"")
        .await
        .failed(3, "--token");
    outrigger(&env, &["status", "--token", "wrong"], b"")
        .await
        .failed(3, "token");
    // As the chart runs it: the configuration file named by
    // OUTRIGGER_CONFIG (the sidecar container's environment), no flags.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("outrigger.toml");
    std::fs::write(
        &file,
        format!("[http]\naddr = \"{addr}\"\n\n[auth]\ntoken = \"{TOKEN}\"\n"),
    )
    .unwrap();
    let from_file = [("OUTRIGGER_CONFIG", file.display().to_string())];
    let status = outrigger(&from_file, &["status", "--json"], b"").await.ok();
    assert_eq!(status.json()["backend"], "memory");
    // Flags alone, no configuration: the same sidecar.
    let flags = outrigger(
        &[],
        &["status", "--addr", &addr, "--token", TOKEN, "--json"],
        b"",
    )
    .await
    .ok();
    assert_eq!(flags.json()["backend"], "memory");

    // Bad usage, and input the sidecar rejects: 2.
    outrigger(&env, &["cache", "set", "k", "v", "--ttl", "soon"], b"")
        .await
        .code
        .eq(&2)
        .then_some(())
        .expect("a bad --ttl exits 2");
    let long_key = "k".repeat(2000);
    outrigger(&env, &["cache", "get", &long_key], b"")
        .await
        .failed(2, "key");
    // A configuration the commands cannot read: 2, and how to go on.
    outrigger(
        &[("OUTRIGGER_REDIS__TIMEOUT", "soon".into())],
        &["status"],
        b"",
    )
    .await
    .failed(2, "pass --addr and --token");

    // The sidecar gone: 4, quickly, naming where it looked.
    drop(s);
    let ran = outrigger(&env, &["status", "--timeout", "2s"], b"").await;
    ran.failed(4, &format!("cannot reach the sidecar at {addr}"));
}

#[tokio::test]
async fn status_says_why_the_sidecar_is_on_its_memory_fallback() {
    let mut redis = RedisServer::start().await;
    let (s, env) = started(&[
        ("OUTRIGGER_REDIS__URL", redis.url()),
        ("OUTRIGGER_NAMESPACE", unique("cli")),
    ])
    .await;
    let text = outrigger(&env, &["status"], b"").await.ok().text();
    assert!(text.contains("backend     redis since "), "{text}");
    assert!(
        text.contains("redis       maxmemory-policy noeviction"),
        "{text}"
    );

    redis.kill().await;
    let c = api();
    outrigger_tests::eventually(Duration::from_secs(20), "the memory fallback", || async {
        let st: Value = c
            .get(s.url("/v1/admin/status"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (st["failover"]["mode"] == "memory").then_some(())
    })
    .await;
    let text = outrigger(&env, &["status"], b"").await.ok().text();
    assert!(text.contains("backend     memory since "), "{text}");
    assert!(text.contains(", 1 transitions"), "{text}");
    assert!(text.contains("last error  "), "{text}");
}
