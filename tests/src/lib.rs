//! Test harness: real `redis-server` processes and real `outrigger`
//! processes, on free loopback ports.
//!
//! - [`RedisServer::start`] runs `redis-server` on a free port (never 6379,
//!   never a fixed one) and returns once its log says it accepts
//!   connections; [`RedisServer::kill`] kills it with SIGKILL so tests can
//!   prove what happens when Redis dies.
//! - [`sidecar!`] starts the `outrigger` binary built from this checkout
//!   with JSON logs and port 0 listeners, and returns once it logs `ready`
//!   with the addresses it bound.
//!
//! Readiness is always an event read from the process's own log, never a
//! sleep. Every wait is bounded. Whatever a test started is killed when its
//! handle drops, and if the test is failing, the process's log is printed.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// How long a process may take to say it is ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A process's output, kept for printing when a test fails.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<String>>);

impl Log {
    fn push(&self, line: &str) {
        let mut log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        log.push_str(line);
        log.push('\n');
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Copies the child's stdout and stderr into `log` and forwards each line
/// to the returned channel, so a caller can wait for a particular line.
fn capture(child: &mut Child, log: &Log) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    let stdout = child.stdout.take().expect("stdout piped");
    let stderr = child.stderr.take().expect("stderr piped");
    for (reader, tx) in [
        (
            Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            tx.clone(),
        ),
        (Box::new(stderr), tx),
    ] {
        let log = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(reader).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log.push(&line);
                let _ = tx.send(line);
            }
        });
    }
    rx
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A random name, so tests sharing a Redis cannot see each other's keys.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

/// Runs `redis-server` on `port` with persistence off; returns it once it
/// accepts connections, or its log if it exits first.
async fn spawn_redis(
    port: u16,
    dir: &std::path::Path,
    extra: &[&str],
    log: &Log,
) -> Result<Child, String> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--logfile", ""])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server must be installed (scripts/test.sh installs it)");
    let mut lines = capture(&mut child, log);
    let ready = tokio::time::timeout(START_TIMEOUT, async {
        while let Some(line) = lines.recv().await {
            if line.contains("Ready to accept connections") {
                return true;
            }
        }
        false
    })
    .await;
    if ready == Ok(true) {
        return Ok(child);
    }
    let _ = child.kill().await;
    Err(log.text())
}

/// A `redis-server` child process.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    log: Log,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server` on a free port with persistence off.
    pub async fn start() -> RedisServer {
        Self::start_with(&[]).await
    }

    /// Starts `redis-server` with extra `--name value` arguments.
    pub async fn start_with(extra: &[&str]) -> RedisServer {
        let mut last_log = String::new();
        // The free port may be taken between our probe and Redis' bind:
        // then Redis exits, and we try another.
        for _ in 0..5 {
            match Self::try_start(free_port(), extra).await {
                Ok(server) => return server,
                Err(log) => last_log = log,
            }
        }
        panic!("redis-server did not start; last log:\n{last_log}");
    }

    /// Starts `redis-server` on this port (a test that needs Redis to
    /// appear where a sidecar already looks for it).
    pub async fn start_on(port: u16) -> RedisServer {
        Self::try_start(port, &[])
            .await
            .unwrap_or_else(|log| panic!("redis-server did not start on :{port}:\n{log}"))
    }

    async fn try_start(port: u16, extra: &[&str]) -> Result<RedisServer, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = Log::default();
        let child = spawn_redis(port, dir.path(), extra, &log).await?;
        Ok(RedisServer {
            child: Some(child),
            port,
            log,
            dir,
        })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A direct connection, for looking behind the sidecar's back.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("valid url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test redis")
    }

    /// Kills the server (SIGKILL) and starts a new one on the same port, as
    /// a crashed Redis coming back would. Its data is gone (no persistence).
    pub async fn restart(&mut self) {
        self.kill().await;
        let child = spawn_redis(self.port, self.dir.path(), &[], &self.log)
            .await
            .unwrap_or_else(|log| panic!("redis-server did not restart on :{}:\n{log}", self.port));
        self.child = Some(child);
    }

    /// Kills the server with SIGKILL and waits for it to be gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    pub fn log(&self) -> String {
        self.log.text()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- redis-server :{} log ----\n{}",
                self.port,
                self.log.text()
            );
        }
    }
}

/// Instantiates async test cases against both backends:
/// `both_backends!(on_memory, on_redis; case_a, case_b)` makes
/// `memory::case_a` run `case_a(on_memory().await)` and `with_redis::case_a`
/// run `case_a(on_redis().await)`, where the `on_*` functions build the
/// target (a sidecar, an app, and the Redis behind it).
#[macro_export]
macro_rules! both_backends {
    ($memory:ident, $redis:ident; $($case:ident),* $(,)?) => {
        mod memory {
            $( #[tokio::test] async fn $case() { super::$case(super::$memory().await).await; } )*
        }
        mod with_redis {
            $( #[tokio::test] async fn $case() { super::$case(super::$redis().await).await; } )*
        }
    };
}

/// Starts configuring an `outrigger` process built from this checkout.
#[macro_export]
macro_rules! sidecar {
    () => {
        $crate::SidecarBuilder::new(env!("CARGO_BIN_EXE_outrigger-under-test"))
    };
}

/// Configures an `outrigger` process before starting it.
pub struct SidecarBuilder {
    bin: String,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

impl SidecarBuilder {
    pub fn new(bin: &str) -> Self {
        SidecarBuilder {
            bin: bin.to_string(),
            env: vec![],
            args: vec![],
        }
    }

    /// Sets an environment variable (`OUTRIGGER_*` configures the sidecar).
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Stores in this Redis.
    pub fn redis(self, redis: &RedisServer) -> Self {
        self.env("OUTRIGGER_REDIS__URL", redis.url())
    }

    pub fn namespace(self, ns: &str) -> Self {
        self.env("OUTRIGGER_NAMESPACE", ns)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("OUTRIGGER_HTTP__ADDR", "127.0.0.1:0")
            .env("OUTRIGGER_GRPC__ADDR", "127.0.0.1:0")
            .env("OUTRIGGER_LOG__FORMAT", "json")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs to completion (for commands that do not serve, or fail to
    /// start); returns the exit code and everything printed.
    pub async fn run(self) -> (Option<i32>, String) {
        let out = tokio::time::timeout(START_TIMEOUT, self.command().output())
            .await
            .expect("outrigger exits in time")
            .expect("run outrigger");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.code(), text)
    }

    /// Starts the sidecar and waits for its `ready` log line.
    pub async fn start(self) -> Sidecar {
        let mut child = self.command().spawn().expect("spawn outrigger");
        let log = Log::default();
        let mut lines = capture(&mut child, &log);
        let ready = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.recv().await {
                let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if event["message"] == "ready" {
                    let addr = |field: &str| -> SocketAddr {
                        event[field]
                            .as_str()
                            .and_then(|a| a.parse().ok())
                            .expect(field)
                    };
                    return Some((addr("http_addr"), addr("grpc_addr")));
                }
            }
            None
        })
        .await;
        match ready {
            Ok(Some((http, grpc))) => Sidecar {
                child,
                http,
                grpc,
                log,
            },
            _ => panic!("outrigger did not become ready; log:\n{}", log.text()),
        }
    }
}

/// A running `outrigger` process.
pub struct Sidecar {
    child: Child,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    log: Log,
}

impl Sidecar {
    /// The process id (for reading its memory and CPU use).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// `http://127.0.0.1:port{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.grpc_url())
            .expect("valid endpoint")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect to sidecar gRPC")
    }

    pub fn log(&self) -> String {
        self.log.text()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("sidecar still running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    /// Waits (bounded) for the process to exit; returns its exit code.
    pub async fn wait(&mut self, limit: Duration) -> Option<i32> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "outrigger did not exit within {limit:?}; log:\n{}",
                    self.log()
                )
            })
            .expect("wait for outrigger")
            .code()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- outrigger (http {}) log ----\n{}",
                self.http,
                self.log.text()
            );
        }
    }
}

/// Polls `check` every 10 ms until it returns `Some`, for at most `limit`.
/// For conditions that have no event to await (a TTL running out, a
/// counter moving in another process).
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A plugin component built by `scripts/build-plugins.sh` (which
/// `scripts/test.sh` runs first): `tenant_guard`, `tiered_limits`,
/// `invalidate_rules` or the test plugin `hostile`.
pub fn plugin_wasm(name: &str) -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let path = target
        .join("wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-plugins.sh first",
        path.display()
    );
    path.canonicalize().expect("canonical plugin path")
}
