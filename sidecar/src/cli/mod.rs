//! The operator commands: `outrigger status`, `outrigger cache get`, and
//! the rest, which talk to a running sidecar over its HTTP API (TCP or its
//! Unix socket) and print text for people or, with `--json`, for scripts.
//! Part of the binary, not the library.
//!
//! Exit codes scripts can rely on: 0 done; 1 the answer is no (not found,
//! a condition that does not hold, a lock that is held); 2 a bad command
//! line or input the sidecar rejected; 3 not allowed (token, plugin); 4 the
//! sidecar cannot be reached or cannot serve. Errors are one line on
//! stderr.

mod client;
mod show;

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

pub use client::Target;
use client::{Failure, Sidecar};

/// The commands that talk to a running sidecar.
#[derive(Subcommand, Debug)]
pub enum Remote {
    /// The sidecar's state: backend, failover state and history, cache and
    /// near cache, plugins.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Cache keys: read, write, delete, list, invalidate.
    Cache {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Locks: which are held, and by which fence, for how long (never a
    /// holder's token).
    Lock {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        command: InUseCommand,
    },
    /// Semaphores: which have permits held, how many, for how long.
    Semaphore {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        command: InUseCommand,
    },
    /// Rate limits: a key's state under a policy, and resetting it.
    Ratelimit {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        command: RateLimitCommand,
    },
    /// Presence: who is in a room.
    Presence {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        command: PresenceCommand,
    },
    /// Pub/sub: follow a channel, publish, read durable history.
    Pubsub {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        command: PubSubCommand,
    },
    /// Plugins: list them with their health, reload them.
    Plugins {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        command: PluginsCommand,
    },
    /// Maps: read fields, or list a map.
    Map {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        command: MapCommand,
    },
    /// Counters: read one.
    Counter {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        command: CounterCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// Print a key's value (raw bytes; exit 1 if it is missing).
    Get {
        key: String,
        /// Restart the key's TTL (sliding expiration).
        #[arg(long)]
        refresh_ttl: bool,
    },
    /// All about a key but its value: version, TTL, size, tags (exit 1 if
    /// it is missing).
    Show { key: String },
    /// Write a key: VALUE, or standard input when VALUE is `-` or absent.
    Set {
        key: String,
        value: Option<String>,
        /// Time to live (`30s`, `5m`); default: none, the key never expires.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Tags, comma-separated (every write replaces the key's tags).
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        /// Only if `absent`, `present`, or at `version:N` (exit 1 if not).
        #[arg(long = "if", value_name = "CONDITION")]
        condition: Option<String>,
    },
    /// Delete a key (exit 1 if it did not exist).
    Del { key: String },
    /// List keys matching a glob, a page at a time up to --limit.
    Ls {
        #[arg(default_value = "*")]
        pattern: String,
        /// At most this many keys.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Delete every key carrying a tag, or matching a glob.
    Invalidate {
        /// A tag (repeat for several).
        #[arg(
            long = "tag",
            required_unless_present = "pattern",
            conflicts_with = "pattern"
        )]
        tags: Vec<String>,
        /// A glob.
        #[arg(long)]
        pattern: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum InUseCommand {
    /// Those in use whose names match a glob, up to --limit.
    Ls {
        #[arg(default_value = "*")]
        pattern: String,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// One by name (exit 1 if it is free).
    Show { name: String },
}

#[derive(Subcommand, Debug)]
pub enum RateLimitCommand {
    /// A key's state under a configured policy, without taking from it.
    State { policy: String, key: String },
    /// Forget a key's state: its whole limit is available again.
    Reset { policy: String, key: String },
}

#[derive(Subcommand, Debug)]
pub enum PresenceCommand {
    /// The members of a room, with their time left and metadata.
    Ls {
        room: String,
        /// At most this many members.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

#[derive(Subcommand, Debug)]
pub enum PubSubCommand {
    /// Print a channel's messages as they are published, until interrupted
    /// (or --count messages).
    Tail {
        channel: String,
        /// Replay the durable history after this offset first (`0`: all).
        #[arg(long)]
        from: Option<String>,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Publish MESSAGE, or standard input when it is `-` or absent.
    Publish {
        channel: String,
        message: Option<String>,
        /// Also keep it in the channel's durable history.
        #[arg(long)]
        durable: bool,
    },
    /// A channel's newest durable messages.
    History {
        channel: String,
        /// How many (1 to 1,000).
        #[arg(long, default_value_t = 20)]
        last: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum PluginsCommand {
    /// Every configured plugin, with its health.
    Ls,
    /// Load every plugin again from its file.
    Reload,
}

#[derive(Subcommand, Debug)]
pub enum MapCommand {
    /// The named fields, or (with none) the whole map up to --limit.
    Get {
        map: String,
        fields: Vec<String>,
        /// At most this many fields when listing.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

#[derive(Subcommand, Debug)]
pub enum CounterCommand {
    /// A counter's value (0 when it does not exist).
    Get { name: String },
}

/// Runs one operator command; its exit code follows the module's table.
pub fn run(command: Remote, config_file: Option<&Path>) -> ExitCode {
    let (target, what) = match &command {
        Remote::Status { target } => (target, "status"),
        Remote::Cache { target, .. } => (target, "cache"),
        Remote::Lock { target, .. } => (target, "lock"),
        Remote::Semaphore { target, .. } => (target, "semaphore"),
        Remote::Ratelimit { target, .. } => (target, "ratelimit"),
        Remote::Presence { target, .. } => (target, "presence"),
        Remote::Pubsub { target, .. } => (target, "pubsub"),
        Remote::Plugins { target, .. } => (target, "plugins"),
        Remote::Map { target, .. } => (target, "map"),
        Remote::Counter { target, .. } => (target, "counter"),
    };
    let json = target.json;
    let result = Sidecar::connect(target, config_file).and_then(|s| match command {
        Remote::Status { .. } => status(&s, json),
        Remote::Cache { command, .. } => cache(&s, json, command),
        Remote::Lock { command, .. } => in_use(&s, json, "locks", command),
        Remote::Semaphore { command, .. } => in_use(&s, json, "semaphores", command),
        Remote::Ratelimit { command, .. } => ratelimit(&s, json, command),
        Remote::Presence { command, .. } => presence(&s, json, command),
        Remote::Pubsub { command, .. } => pubsub(&s, json, command),
        Remote::Plugins { command, .. } => plugins(&s, json, command),
        Remote::Map { command, .. } => map(&s, json, command),
        Remote::Counter { command, .. } => counter(&s, json, command),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("outrigger {what}: {}", failure.message());
            failure.exit_code()
        }
    }
}

fn print_json(value: &Value) {
    println!("{value}");
}

/// VALUE, or standard input when it is `-` or absent.
fn value_or_stdin(value: Option<String>) -> Result<Vec<u8>, Failure> {
    match value.as_deref() {
        Some("-") | None => {
            let mut bytes = vec![];
            std::io::stdin()
                .read_to_end(&mut bytes)
                .map_err(|e| Failure::Usage(format!("cannot read standard input: {e}")))?;
            Ok(bytes)
        }
        Some(text) => Ok(text.as_bytes().to_vec()),
    }
}

/// Follows `next_cursor` from page to page until done or `limit` items;
/// returns them and whether more were left.
fn pages(
    s: &Sidecar,
    segments: &[&str],
    query: &[(&str, String)],
    items: &str,
    limit: usize,
) -> Result<(Vec<Value>, bool), Failure> {
    let mut all = vec![];
    let mut cursor = String::new();
    loop {
        let page_size = (limit - all.len()).clamp(1, 1000);
        let mut request = s
            .request(Method::GET, segments)
            .query(query)
            .query(&[("limit", page_size.to_string())]);
        if !cursor.is_empty() {
            request = request.query(&[("cursor", &cursor)]);
        }
        let page = s.json(request)?;
        if let Some(list) = page[items].as_array() {
            all.extend(list.iter().cloned());
        }
        match page["next_cursor"].as_str() {
            Some(next) if !next.is_empty() && all.len() < limit => cursor = next.to_string(),
            Some(next) if !next.is_empty() => {
                all.truncate(limit);
                return Ok((all, true));
            }
            _ => {
                let more = all.len() > limit;
                all.truncate(limit);
                return Ok((all, more));
            }
        }
    }
}

fn more_note(more: bool, limit: usize) {
    if more {
        eprintln!("(more than {limit}; raise --limit to see more)");
    }
}

fn status(s: &Sidecar, json: bool) -> Result<(), Failure> {
    let st = s.json(s.request(Method::GET, &["v1", "admin", "status"]))?;
    if json {
        print_json(&st);
        return Ok(());
    }
    let num = |v: &Value| v.as_u64().unwrap_or(0);
    println!(
        "sidecar     {} (namespace {}), up {}",
        show::cell(&st["version"]),
        show::cell(&st["namespace"]),
        show::millis(num(&st["uptime_ms"]))
    );
    let f = &st["failover"];
    if f.is_null() {
        println!("backend     memory (no Redis configured)");
    } else {
        println!(
            "backend     {} since {} ({}), {} transitions",
            show::cell(&st["backend"]),
            show::time(num(&f["since_unix_ms"])),
            show::ago(num(&f["since_unix_ms"])),
            num(&f["transitions"])
        );
        if let Some(error) = f["last_error"].as_str() {
            println!("last error  {error}");
        }
        if let Some(policy) = f["maxmemory_policy"].as_str() {
            let evicts = if f["evicts"] == true {
                " (evicts keys: weaker guarantees, see the README)"
            } else {
                ""
            };
            println!("redis       maxmemory-policy {policy}{evicts}");
        }
        let r = &f["last_reconciliation"];
        if !r.is_null() {
            println!(
                "reconciled  {}: {} cache entries dropped, {} locks released, {} members \
                 reasserted, {} lost, {} messages flushed, {} dropped, {} map changes replayed{}",
                show::time(num(&r["at_unix_ms"])),
                num(&r["cache_entries_dropped"]),
                num(&r["locks_released"]),
                num(&r["members_reasserted"]),
                num(&r["members_lost"]),
                num(&r["messages_flushed"]),
                num(&r["messages_dropped"]),
                num(&r["map_changes_replayed"]),
                if r["flushing"] == true {
                    " (still flushing)"
                } else {
                    ""
                }
            );
        }
    }
    let c = &st["cache"];
    // Keys and bytes are counted only in memory: in a shared Redis that
    // would take a full SCAN.
    let size = if f.is_null() {
        format!(
            "; {} keys, {}",
            num(&c["keys"]),
            show::bytes(num(&c["bytes"]))
        )
    } else {
        String::new()
    };
    println!(
        "cache       {} hits, {} misses, {} evictions{size}",
        num(&c["hits"]),
        num(&c["misses"]),
        num(&c["evictions"]),
    );
    let n = &c["near"];
    if !n.is_null() {
        println!(
            "near cache  {}: {} entries, {}; {} hits, {} fills, {} invalidations, {} flushes",
            if n["live"] == true {
                "serving"
            } else {
                "not serving (invalidations not flowing)"
            },
            num(&n["entries"]),
            show::bytes(num(&n["bytes"])),
            num(&n["hits"]),
            num(&n["fills"]),
            num(&n["invalidations"]),
            num(&n["flushes"])
        );
    }
    let list = st["plugins"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("plugins     none");
    } else {
        println!();
        plugin_table(&list);
    }
    Ok(())
}

fn plugin_table(list: &[Value]) {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|p| {
            let hooks: Vec<String> = p["hooks"]
                .as_array()
                .map(|h| h.iter().map(show::cell).collect())
                .unwrap_or_default();
            let mut why = p["reason"].as_str().unwrap_or("").to_string();
            if let Some(reload) = p["reload_error"].as_str() {
                why = format!("{why} last reload failed: {reload}")
                    .trim()
                    .to_string();
            }
            vec![
                show::cell(&p["name"]),
                if p["healthy"] == true { "yes" } else { "no" }.to_string(),
                show::cell(&p["world"]),
                hooks.join(","),
                show::cell(&p["fail"]),
                show::cell(&p["generation"]),
                if why.is_empty() { "-".to_string() } else { why },
            ]
        })
        .collect();
    show::table(
        &[
            "PLUGIN", "HEALTHY", "WORLD", "HOOKS", "FAILS", "LOADS", "WHY",
        ],
        &rows,
    );
}

fn cache(s: &Sidecar, json: bool, command: CacheCommand) -> Result<(), Failure> {
    match command {
        CacheCommand::Get { key, refresh_ttl } => {
            let mut request = s.request(Method::GET, &["v1", "cache", &key]);
            if refresh_ttl {
                request = request.query(&[("refresh_ttl", "true")]);
            }
            let response = s.send(request)?;
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            };
            let (version, ttl) = (header("outrigger-version"), header("outrigger-ttl-ms"));
            let value = response.bytes().map_err(|e| s.unreachable(&e))?;
            if json {
                let mut out = json!({"key": key, "version": version, "ttl_ms": ttl});
                match std::str::from_utf8(&value) {
                    Ok(text) => out["value"] = json!(text),
                    Err(_) => {
                        out["value_base64"] =
                            json!(base64::engine::general_purpose::STANDARD.encode(&value))
                    }
                }
                print_json(&out);
            } else {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&value);
                if out.is_terminal() && !value.ends_with(b"\n") {
                    let _ = out.write_all(b"\n");
                }
            }
        }
        CacheCommand::Show { key } => {
            let meta = s.json(s.request(Method::GET, &["v1", "cache", &key, "meta"]))?;
            if json {
                print_json(&meta);
            } else {
                let tags: Vec<String> = meta["tags"]
                    .as_array()
                    .map(|t| t.iter().map(show::cell).collect())
                    .unwrap_or_default();
                println!("version  {}", show::cell(&meta["version"]));
                println!(
                    "ttl      {}",
                    meta["ttl_ms"]
                        .as_u64()
                        .map_or("never expires".to_string(), show::millis)
                );
                println!(
                    "size     {}",
                    show::bytes(meta["size"].as_u64().unwrap_or(0))
                );
                println!(
                    "tags     {}",
                    if tags.is_empty() {
                        "none".to_string()
                    } else {
                        tags.join(", ")
                    }
                );
            }
        }
        CacheCommand::Set {
            key,
            value,
            ttl,
            tags,
            condition,
        } => {
            let body = value_or_stdin(value)?;
            let mut query = vec![];
            if let Some(ttl) = ttl {
                query.push(("ttl_ms", ttl.as_millis().to_string()));
            }
            if !tags.is_empty() {
                query.push(("tags", tags.join(",")));
            }
            if let Some(condition) = condition {
                query.push(("if", condition));
            }
            let request = s
                .request(Method::PUT, &["v1", "cache", &key])
                .query(&query)
                .body(body);
            let reply = s.json(request)?;
            if json {
                print_json(&reply);
            } else {
                println!("written, version {}", show::cell(&reply["version"]));
            }
        }
        CacheCommand::Del { key } => {
            let reply = s.json(s.request(Method::DELETE, &["v1", "cache", &key]))?;
            if json {
                print_json(&reply);
            }
            if reply["deleted"] != true {
                return Err(Failure::No(format!("{key:?} did not exist")));
            }
            if !json {
                println!("deleted");
            }
        }
        CacheCommand::Ls { pattern, limit } => {
            let (keys, more) = pages(s, &["v1", "cache"], &[("pattern", pattern)], "keys", limit)?;
            if json {
                print_json(&json!({"keys": keys, "more": more}));
            } else {
                for key in &keys {
                    println!("{}", show::cell(key));
                }
                more_note(more, limit);
            }
        }
        CacheCommand::Invalidate { tags, pattern } => {
            let body = match pattern {
                Some(pattern) => json!({"pattern": pattern}),
                None => json!({"tags": tags}),
            };
            let request = s
                .request(Method::POST, &["v1", "cache", "invalidate"])
                .json(&body);
            let reply = s.json(request)?;
            if json {
                print_json(&reply);
            } else {
                println!("deleted {} keys", show::cell(&reply["deleted"]));
            }
        }
    }
    Ok(())
}

/// `lock` and `semaphore`: `collection` is `locks` or `semaphores`.
fn in_use(s: &Sidecar, json: bool, collection: &str, command: InUseCommand) -> Result<(), Failure> {
    let locks = collection == "locks";
    let row = |u: &Value| {
        let middle = if locks { &u["fence"] } else { &u["held"] };
        vec![
            show::cell(&u["name"]),
            show::cell(middle),
            show::millis(u["ttl_ms"].as_u64().unwrap_or(0)),
        ]
    };
    let header = if locks {
        ["LOCK", "FENCE", "TTL"]
    } else {
        ["SEMAPHORE", "PERMITS HELD", "FIRST ENDS IN"]
    };
    match command {
        InUseCommand::Ls { pattern, limit } => {
            let (items, more) = pages(
                s,
                &["v1", collection],
                &[("pattern", pattern)],
                "items",
                limit,
            )?;
            if json {
                print_json(&json!({"items": items, "more": more}));
            } else {
                let rows: Vec<Vec<String>> = items.iter().map(row).collect();
                show::table(&header, &rows);
                more_note(more, limit);
            }
        }
        InUseCommand::Show { name } => {
            let found = s.json(s.request(Method::GET, &["v1", collection, &name]))?;
            if json {
                print_json(&found);
            } else {
                show::table(&header, &[row(&found)]);
            }
        }
    }
    Ok(())
}

fn ratelimit(s: &Sidecar, json: bool, command: RateLimitCommand) -> Result<(), Failure> {
    match command {
        RateLimitCommand::State { policy, key } => {
            let request = s
                .request(Method::POST, &["v1", "ratelimit", &policy, "peek"])
                .json(&json!({"key": key}));
            let d = s.json(request)?;
            if json {
                print_json(&d);
                return Ok(());
            }
            let num = |v: &Value| v.as_u64().unwrap_or(0);
            if d["allowed"] == true {
                println!(
                    "allowed: a request now would leave {} of {}; all of it again in {}",
                    num(&d["remaining"]),
                    num(&d["limit"]),
                    show::millis(num(&d["reset_after_ms"]))
                );
            } else {
                println!(
                    "limited: retry in {}; all {} again in {}",
                    show::millis(num(&d["retry_after_ms"])),
                    num(&d["limit"]),
                    show::millis(num(&d["reset_after_ms"]))
                );
            }
        }
        RateLimitCommand::Reset { policy, key } => {
            let request = s
                .request(Method::POST, &["v1", "ratelimit", &policy, "reset"])
                .json(&json!({"key": key}));
            let reply = s.json(request)?;
            if json {
                print_json(&reply);
            } else if reply["existed"] == true {
                println!("reset");
            } else {
                println!("reset (it had no state)");
            }
        }
    }
    Ok(())
}

fn presence(s: &Sidecar, json: bool, command: PresenceCommand) -> Result<(), Failure> {
    let PresenceCommand::Ls { room, limit } = command;
    let (members, more) = pages(s, &["v1", "presence", &room], &[], "members", limit)?;
    if json {
        print_json(&json!({"members": members, "more": more}));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            vec![
                show::cell(&m["member"]),
                show::millis(m["ttl_ms"].as_u64().unwrap_or(0)),
                show::cell(&m["metadata"]),
            ]
        })
        .collect();
    show::table(&["MEMBER", "TTL", "METADATA"], &rows);
    more_note(more, limit);
    Ok(())
}

fn pubsub(s: &Sidecar, json: bool, command: PubSubCommand) -> Result<(), Failure> {
    match command {
        PubSubCommand::Publish {
            channel,
            message,
            durable,
        } => {
            let mut request = s
                .request(Method::POST, &["v1", "pubsub", &channel])
                .body(value_or_stdin(message)?);
            if durable {
                request = request.query(&[("durable", "true")]);
            }
            let reply = s.json(request)?;
            if json {
                print_json(&reply);
            } else if reply["offset"].is_null() {
                println!("published");
            } else {
                println!("published at offset {}", show::cell(&reply["offset"]));
            }
        }
        PubSubCommand::History { channel, last } => {
            let request = s
                .request(Method::GET, &["v1", "pubsub", &channel, "history"])
                .query(&[("last", last)]);
            let reply = s.json(request)?;
            if json {
                print_json(&reply);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = reply["messages"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|m| {
                    vec![
                        show::cell(&m["offset"]),
                        show::time(m["published_at_ms"].as_u64().unwrap_or(0)),
                        show::payload(m, "payload"),
                    ]
                })
                .collect();
            show::table(&["OFFSET", "PUBLISHED", "PAYLOAD"], &rows);
        }
        PubSubCommand::Tail {
            channel,
            from,
            count,
        } => tail(s, json, &channel, from, count)?,
    }
    Ok(())
}

/// Follows a channel's event stream (SSE), printing each message.
fn tail(
    s: &Sidecar,
    json: bool,
    channel: &str,
    from: Option<String>,
    count: Option<u64>,
) -> Result<(), Failure> {
    /// A stream is followed until interrupted, not timed out.
    const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);
    let mut request = s
        .request(Method::GET, &["v1", "pubsub", channel])
        .timeout(FOREVER);
    if let Some(from) = from {
        request = request.query(&[("from", from)]);
    }
    let response = s.send(request)?;
    let mut seen = 0;
    let (mut event, mut data) = (String::new(), String::new());
    for line in BufReader::new(response).lines() {
        let line = line
            .map_err(|e| Failure::Unavailable(format!("the stream from {} broke: {e}", s.shown)))?;
        if let Some(rest) = line.strip_prefix("event:") {
            event = rest.trim().to_string();
        } else if let Some(rest) = line.strip_prefix("data:") {
            data.push_str(rest.trim_start());
        } else if line.is_empty() && !data.is_empty() {
            let message: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            match event.as_str() {
                "message" if json => print_json(&message),
                "message" => println!(
                    "{}  {}",
                    show::cell(&message["offset"]),
                    show::payload(&message, "payload")
                ),
                _ if json => print_json(&message),
                // Resumed, replayed, gaps: what the stream says about itself.
                other => eprintln!("({other}: {data})"),
            }
            let _ = std::io::stdout().flush();
            if event == "message" {
                seen += 1;
                if count.is_some_and(|count| seen >= count) {
                    return Ok(());
                }
            }
            event.clear();
            data.clear();
        }
    }
    Err(Failure::Unavailable(format!(
        "the sidecar at {} ended the stream",
        s.shown
    )))
}

fn plugins(s: &Sidecar, json: bool, command: PluginsCommand) -> Result<(), Failure> {
    let list = match command {
        PluginsCommand::Ls => {
            s.json(s.request(Method::GET, &["v1", "admin", "status"]))?["plugins"].take()
        }
        PluginsCommand::Reload => s
            .json(s.request(Method::POST, &["v1", "admin", "plugins", "reload"]))?["plugins"]
            .take(),
    };
    if json {
        print_json(&json!({"plugins": list}));
    } else {
        let list = list.as_array().map(Vec::as_slice).unwrap_or_default();
        if list.is_empty() {
            println!("no plugins configured");
        } else {
            plugin_table(list);
        }
    }
    Ok(())
}

fn map(s: &Sidecar, json: bool, command: MapCommand) -> Result<(), Failure> {
    let MapCommand::Get { map, fields, limit } = command;
    let (found, more) = if fields.is_empty() {
        pages(s, &["v1", "maps", &map], &[], "fields", limit)?
    } else {
        let query: Vec<(&str, &str)> = fields.iter().map(|f| ("field", f.as_str())).collect();
        let reply = s.json(s.request(Method::GET, &["v1", "maps", &map]).query(&query))?;
        (
            reply["fields"].as_array().cloned().unwrap_or_default(),
            false,
        )
    };
    if json {
        print_json(&json!({"fields": found, "more": more}));
    } else {
        let rows: Vec<Vec<String>> = found
            .iter()
            .map(|f| {
                vec![
                    show::cell(&f["field"]),
                    show::cell(&f["version"]),
                    f["ttl_ms"].as_u64().map_or("-".to_string(), show::millis),
                    show::payload(f, "value"),
                ]
            })
            .collect();
        show::table(&["FIELD", "VERSION", "TTL", "VALUE"], &rows);
        more_note(more, limit);
    }
    if !fields.is_empty() && found.len() < fields.len() {
        let missing: Vec<&str> = fields
            .iter()
            .filter(|f| !found.iter().any(|g| g["field"] == f.as_str()))
            .map(String::as_str)
            .collect();
        return Err(Failure::No(format!(
            "not in {map:?}: {}",
            missing.join(", ")
        )));
    }
    Ok(())
}

fn counter(s: &Sidecar, json: bool, command: CounterCommand) -> Result<(), Failure> {
    let CounterCommand::Get { name } = command;
    let reply = s.json(s.request(Method::GET, &["v1", "counters", &name]))?;
    if json {
        print_json(&reply);
    } else {
        match reply["ttl_ms"].as_u64() {
            Some(ttl) => println!(
                "{} (expires in {})",
                show::cell(&reply["value"]),
                show::millis(ttl)
            ),
            None => println!("{}", show::cell(&reply["value"])),
        }
    }
    Ok(())
}
