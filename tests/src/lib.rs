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
//! - [`Topology`] and [`conformance!`] (in `harness.rs`): the same cases on
//!   memory, Redis, the near cache, the Cluster and the Sentinel set.
//!
//! - [`linearizable`]: a Wing–Gong checker for histories of one versioned
//!   register (a cache key), with its own tests.
//! - [`Relay`] (in `relay.rs`): a TCP relay that adds latency and jitter,
//!   caps bandwidth, holds bytes one way or both, drops connections or
//!   moves to another server: the faults the kernel cannot inject.
//!
//! Readiness is always an event read from the process's own log, never a
//! sleep. Every wait is bounded. Whatever a test started is killed when its
//! handle drops, and if the test is failing, the process's log is printed.

mod harness;
pub mod linearizable;
mod relay;
mod sse;
pub use harness::{
    AppOn, Deployment, RedisTarget, SidecarOn, Topology, app_on, no_check, redis_at,
};
pub use relay::{Relay, Way};
pub use sse::{Sse, SseEvent};

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outrigger::api::pb;
use outrigger::api::pb::pub_sub_client::PubSubClient;
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

    /// For a failing test: the whole log goes to a file, and the test's
    /// output gets only its last lines and the file's path, so the
    /// failure's own message is not buried under thousands of log lines.
    fn print_when_failing(&self, what: &str) {
        const TAIL: usize = 20;
        let text = self.text();
        let lines: Vec<&str> = text.lines().collect();
        let dir = std::env::temp_dir().join("outrigger-test-logs");
        let path = dir.join(format!(
            "{}-{}.log",
            what.replace([' ', ':', '(', ')'], "_"),
            std::process::id()
        ));
        let saved = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, &text));
        let whole = match saved {
            Ok(()) => format!("whole log: {}", path.display()),
            Err(e) => format!("whole log not saved: {e}"),
        };
        eprintln!(
            "---- {what}: last {} of {} lines ({whole}) ----\n{}",
            TAIL.min(lines.len()),
            lines.len(),
            lines[lines.len().saturating_sub(TAIL)..].join("\n")
        );
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

/// Has the child killed (SIGKILL) when the thread that started it ends,
/// so no Redis outlives the test process, even one kept for the whole
/// process by [`shared_cluster`].
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Starts a value on a thread of its own that runs for the rest of the
/// process (its processes' logs keep being read there), once per process.
fn process_fixture<T, F, Fut>(cell: &'static std::sync::OnceLock<T>, start: F) -> &'static T
where
    T: Send + Sync + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    cell.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("fixture runtime");
            runtime.block_on(async move {
                let _ = tx.send(start().await);
                std::future::pending::<()>().await
            })
        });
        rx.recv().expect("the fixture started")
    })
}

/// A Redis Cluster of 3 masters with a replica each, shared by every test
/// of this process (each test uses its own namespace).
pub async fn shared_cluster() -> &'static RedisCluster {
    static CLUSTER: std::sync::OnceLock<RedisCluster> = std::sync::OnceLock::new();
    tokio::task::spawn_blocking(|| process_fixture(&CLUSTER, || RedisCluster::start(3, 1)))
        .await
        .expect("cluster fixture")
}

/// A master, a replica and three Sentinels shared by every test of this
/// process (each test uses its own namespace).
pub async fn shared_sentinels() -> &'static RedisSentinels {
    static SET: std::sync::OnceLock<RedisSentinels> = std::sync::OnceLock::new();
    tokio::task::spawn_blocking(|| process_fixture(&SET, RedisSentinels::start))
        .await
        .expect("sentinel fixture")
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A free port whose cluster bus port (10000 higher) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port <= 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
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
    let mut child = die_with_parent(&mut Command::new("redis-server"))
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--logfile", ""])
        // A replica syncs at once (the default waits 5 s for more replicas).
        .args(["--repl-diskless-sync-delay", "0"])
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
    /// The extra arguments it was started with, used again on restart.
    extra: Vec<String>,
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
        let cluster = extra.contains(&"--cluster-enabled");
        for _ in 0..5 {
            let port = if cluster {
                free_cluster_port()
            } else {
                free_port()
            };
            match Self::try_start(port, extra).await {
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

    /// Starts `redis-server` speaking only TLS, with the certificates of
    /// `certs` (`ca.crt`, `server.crt`, `server.key`, as
    /// [`TestCertificates`] writes them), requiring clients to present a
    /// certificate the CA signed.
    pub async fn start_tls(certs: &TestCertificates) -> RedisServer {
        let file = |name: &str| certs.path(name).to_string_lossy().into_owned();
        let (ca, cert, key) = (file("ca.crt"), file("server.crt"), file("server.key"));
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = free_port();
            let tls_port = port.to_string();
            let extra = [
                "--port",
                "0",
                "--tls-port",
                &tls_port,
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &ca,
                "--tls-auth-clients",
                "yes",
            ];
            match Self::try_start(port, &extra).await {
                Ok(server) => return server,
                Err(log) => last_log = log,
            }
        }
        panic!("redis-server (TLS) did not start; last log:\n{last_log}");
    }

    /// Starts a Sentinel watching the master on `master_port` as
    /// [`SENTINEL_MASTER`] (quorum 2, down after 1 s, failover timeout
    /// 5 s).
    pub async fn start_sentinel(master_port: u16) -> RedisServer {
        let mut last_log = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\n\
                     sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 5000\n\
                     sentinel parallel-syncs {SENTINEL_MASTER} 1\n"
                ),
            )
            .expect("write sentinel.conf");
            let log = Log::default();
            let mut child = die_with_parent(&mut Command::new("redis-server"))
                .arg(&conf)
                .args(["--sentinel", "--logfile", ""])
                .arg("--dir")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("redis-server must be installed (scripts/test.sh installs it)");
            let mut lines = capture(&mut child, &log);
            let ready = tokio::time::timeout(START_TIMEOUT, async {
                while let Some(line) = lines.recv().await {
                    if line.contains("+monitor master") {
                        return true;
                    }
                }
                false
            })
            .await;
            if ready == Ok(true) {
                return RedisServer {
                    child: Some(child),
                    port,
                    log,
                    dir,
                    extra: vec![],
                };
            }
            let _ = child.kill().await;
            last_log = log.text();
        }
        panic!("redis-sentinel did not start; last log:\n{last_log}");
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
            extra: extra.iter().map(|a| a.to_string()).collect(),
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

    /// Kills the server (SIGKILL) and starts a new one on the same port,
    /// with the same arguments, as a crashed Redis coming back would. Its
    /// data is gone (no persistence); a cluster node keeps its identity
    /// (`nodes.conf`) and rejoins.
    pub async fn restart(&mut self) {
        self.kill().await;
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let child = spawn_redis(self.port, self.dir.path(), &extra, &self.log)
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

    /// Waits until this replica has synced with its master.
    pub async fn synced(&self) {
        self.reports(
            redis::cmd("INFO").arg("replication"),
            "master_link_status:up",
        )
        .await;
    }

    /// Waits until `replicas` replicas acknowledge this master's writes
    /// (`WAIT` answers). A replica whose link is up is not there yet: after
    /// a diskless sync the master streams to it only once its first
    /// `REPLCONF ACK` arrives, up to a second later.
    pub async fn replicas_acknowledge(&self, replicas: u32) {
        let conn = self.client().await;
        eventually(
            START_TIMEOUT,
            &format!(":{} to hear from {replicas} replicas", self.port),
            || {
                let mut conn = conn.clone();
                async move {
                    let _: () = redis::cmd("INCR")
                        .arg("outrigger-test:replication-probe")
                        .query_async(&mut conn)
                        .await
                        .ok()?;
                    let acknowledged: u32 = redis::cmd("WAIT")
                        .arg(replicas)
                        .arg(100)
                        .query_async(&mut conn)
                        .await
                        .ok()?;
                    (acknowledged >= replicas).then_some(())
                }
            },
        )
        .await;
    }

    /// Waits until `command` (an `INFO`-like report) says `what`.
    async fn reports(&self, command: &redis::Cmd, what: &str) {
        let conn = self.client().await;
        eventually(
            START_TIMEOUT,
            &format!(":{} to report {what}", self.port),
            || {
                let mut conn = conn.clone();
                async move {
                    let info: String = command.query_async(&mut conn).await.ok()?;
                    info.contains(what).then_some(())
                }
            },
        )
        .await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.log
                .print_when_failing(&format!("redis-server :{}", self.port));
        }
    }
}

/// A Redis Cluster of real `redis-server` processes on free ports,
/// created with `redis-cli --cluster create`; returned once every node
/// reports `cluster_state:ok`. Nodes time out after 1 s
/// (`cluster-node-timeout`), so a killed master's replica takes over
/// within a few seconds.
pub struct RedisCluster {
    /// Masters first, then replicas, as `redis-cli` was given them.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// `masters` masters with `replicas` replicas each.
    pub async fn start(masters: usize, replicas: usize) -> RedisCluster {
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "1000",
        ];
        let nodes = futures::future::join_all(
            (0..masters * (1 + replicas)).map(|_| RedisServer::start_with(&args)),
        )
        .await;
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null());
        let out = tokio::time::timeout(START_TIMEOUT, create.output())
            .await
            .expect("redis-cli --cluster create finishes in time")
            .expect("redis-cli must be installed (scripts/test.sh installs it)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("All 16384 slots covered"),
            "redis-cli --cluster create failed:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        for node in &cluster.nodes {
            node.reports(redis::cmd("CLUSTER").arg("INFO"), "cluster_state:ok")
                .await;
        }
        for replica in &cluster.nodes[masters..] {
            replica.synced().await;
        }
        cluster
    }

    /// `[redis]` for a store on this cluster (2 s deadlines).
    pub fn redis_config(&self) -> outrigger::config::RedisConfig {
        outrigger::config::RedisConfig {
            mode: outrigger::config::RedisMode::Cluster,
            nodes: self.nodes.iter().map(RedisServer::url).collect(),
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            ..Default::default()
        }
    }

    /// Every node's URL, comma-separated: what `redis.nodes` takes.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A cluster connection, for looking behind the sidecar's back.
    pub async fn client(&self) -> redis::cluster_async::ClusterConnection {
        redis::cluster::ClusterClient::new(
            self.nodes.iter().map(RedisServer::url).collect::<Vec<_>>(),
        )
        .expect("valid nodes")
        .get_async_connection()
        .await
        .expect("connect to test cluster")
    }

    /// The node that is master of `key`'s slot now (index into `nodes`),
    /// as a live node sees it.
    pub async fn master_of(&self, key: &str) -> usize {
        for node in &self.nodes {
            let Ok(client) = redis::Client::open(node.url()) else {
                continue;
            };
            let Ok(Ok(mut conn)) = tokio::time::timeout(
                Duration::from_secs(1),
                client.get_multiplexed_async_connection(),
            )
            .await
            else {
                continue; // killed
            };
            let slot: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query_async(&mut conn)
                .await
                .expect("CLUSTER KEYSLOT");
            let nodes: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async(&mut conn)
                .await
                .expect("CLUSTER NODES");
            let port = nodes
                .lines()
                .find(|line| line.contains("master") && serves_slot(line, slot))
                .and_then(|line| line.split(' ').nth(1))
                .and_then(|addr| {
                    addr.split('@')
                        .next()?
                        .rsplit(':')
                        .next()?
                        .parse::<u16>()
                        .ok()
                })
                .expect("a master serves every slot");
            return self
                .nodes
                .iter()
                .position(|n| n.port == port)
                .expect("the master is one of ours");
        }
        panic!("no node of the cluster answers");
    }
}

/// Whether a `CLUSTER NODES` line lists `slot` among its ranges.
fn serves_slot(line: &str, slot: u16) -> bool {
    line.split(' ').skip(8).any(|range| {
        let (start, end) = range.split_once('-').unwrap_or((range, range));
        matches!((start.parse::<u16>(), end.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
    })
}

/// A master, its replica, and three Sentinels watching them as `mymaster`
/// (quorum 2, down after 1 s), all real processes on free ports; returned
/// once every Sentinel knows the replica.
pub struct RedisSentinels {
    pub master: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<RedisServer>,
}

/// The name the Sentinels of [`RedisSentinels`] know the master by.
pub const SENTINEL_MASTER: &str = "mymaster";

impl RedisSentinels {
    pub async fn start() -> RedisSentinels {
        let master = RedisServer::start().await;
        let of = master.port.to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &of]).await;
        let mut sentinels = vec![];
        for _ in 0..3 {
            sentinels.push(RedisServer::start_sentinel(master.port).await);
        }
        let set = RedisSentinels {
            master,
            replica,
            sentinels,
        };
        set.replica.synced().await;
        for sentinel in &set.sentinels {
            let conn = sentinel.client().await;
            eventually(
                START_TIMEOUT,
                "sentinels see the replica and each other",
                || {
                    let mut conn = conn.clone();
                    async move {
                        let info: Vec<redis::Value> = redis::cmd("SENTINEL")
                            .arg("MASTER")
                            .arg(SENTINEL_MASTER)
                            .query_async(&mut conn)
                            .await
                            .ok()?;
                        let fields: Vec<String> = info
                            .into_iter()
                            .map(|v| redis::from_redis_value::<String>(v).unwrap_or_default())
                            .collect();
                        let field = |name: &str| {
                            fields
                                .iter()
                                .position(|f| f == name)
                                .and_then(|i| fields.get(i + 1))
                                .and_then(|v| v.parse::<u32>().ok())
                        };
                        (field("num-slaves")? >= 1 && field("num-other-sentinels")? >= 2)
                            .then_some(())
                    }
                },
            )
            .await;
        }
        set
    }

    /// `[redis]` for a store on this set (2 s deadlines).
    pub fn redis_config(&self) -> outrigger::config::RedisConfig {
        outrigger::config::RedisConfig {
            mode: outrigger::config::RedisMode::Sentinel,
            nodes: self.sentinels.iter().map(RedisServer::url).collect(),
            master_name: Some(SENTINEL_MASTER.into()),
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            ..Default::default()
        }
    }

    /// The Sentinels' URLs, comma-separated: what `redis.nodes` takes.
    pub fn nodes(&self) -> String {
        self.sentinels
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The master's port as the Sentinels report it now.
    pub async fn master_port(&self) -> u16 {
        let mut conn = self.sentinels[0].client().await;
        let (_host, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(SENTINEL_MASTER)
            .query_async(&mut conn)
            .await
            .expect("SENTINEL GET-MASTER-ADDR-BY-NAME");
        port
    }
}

/// A throw-away CA, a server certificate for 127.0.0.1 / localhost and a
/// client certificate, made with the `openssl` command line in a temporary
/// directory: `ca.crt`, `server.crt`, `server.key`, `client.crt`,
/// A master and its replica for failover tests: the replica replicates
/// through a [`Relay`] the test can stall, and clients reach "the primary"
/// through another, a service address (as Kubernetes gives one) that the
/// failover moves to the replica.
pub struct StallablePair {
    pub master: RedisServer,
    pub replica: RedisServer,
    link: Relay,
    service: Relay,
}

impl StallablePair {
    pub async fn start() -> StallablePair {
        let master = RedisServer::start().await;
        let link = Relay::start(master.port).await;
        let of = link.port.to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &of]).await;
        replica.synced().await;
        let service = Relay::start(master.port).await;
        StallablePair {
            master,
            replica,
            link,
            service,
        }
    }

    /// The service address's port: where clients reach the primary.
    pub fn port(&self) -> u16 {
        self.service.port
    }

    /// Waits until the replica has every write the master took so far.
    pub async fn in_sync(&self) {
        let mut master = self.master.client().await;
        let acked: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(START_TIMEOUT.as_millis() as u64)
            .query_async(&mut master)
            .await
            .expect("WAIT answers");
        assert_eq!(acked, 1, "the replica acknowledged the master's writes");
    }

    /// From now on the replica hears nothing from the master.
    pub fn stall(&self) {
        self.link.hold();
    }

    /// The master dies; the replica, promoted, takes the service address.
    pub async fn fail_over(&mut self) {
        self.master.kill().await;
        let mut replica = self.replica.client().await;
        let () = redis::cmd("REPLICAOF")
            .arg("NO")
            .arg("ONE")
            .query_async(&mut replica)
            .await
            .expect("the replica is promoted");
        self.service.retarget(self.replica.port);
    }
}

/// `client.key`, and `other-ca.crt` (a CA that signed none of them).
pub struct TestCertificates {
    dir: tempfile::TempDir,
}

impl TestCertificates {
    pub fn generate() -> TestCertificates {
        let dir = tempfile::tempdir().expect("temp dir");
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl must be installed");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let (key, crt, subj) = (
                format!("{ca}.key"),
                format!("{ca}.crt"),
                format!("/CN={ca}"),
            );
            let mut args = vec!["req", "-x509", "-days", "2", "-subj", &subj];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &crt]);
            run(&args);
        }
        std::fs::write(
            dir.path().join("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .expect("write san.ext");
        for who in ["server", "client"] {
            let (key, csr, crt, subj) = (
                format!("{who}.key"),
                format!("{who}.csr"),
                format!("{who}.crt"),
                format!("/CN={who}"),
            );
            let mut args = vec!["req", "-subj", &subj];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &csr]);
            run(&args);
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "san.ext",
                "-out",
                &crt,
            ]);
        }
        TestCertificates { dir }
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
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

    /// Reaches Redis through `relay` (which relays to it), for faults
    /// between the sidecar and Redis.
    pub fn through(self, relay: &Relay) -> Self {
        self.env(
            "OUTRIGGER_REDIS__URL",
            format!("redis://127.0.0.1:{}", relay.port),
        )
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
        self.run_within(START_TIMEOUT).await
    }

    /// [`run`](Self::run), for a command that may take up to `limit`.
    pub async fn run_within(self, limit: Duration) -> (Option<i32>, String) {
        let out = tokio::time::timeout(limit, self.command().output())
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

    /// One unlabelled metric's value from `/metrics`, as exported.
    pub async fn metric(&self, name: &str) -> String {
        let text = reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let prefix = format!("{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
            .trim()
            .to_string()
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

    /// `GET /v1/admin/status`, as JSON (within 10 s).
    pub async fn status(&self) -> serde_json::Value {
        let resp = reqwest::Client::new()
            .get(self.url("/v1/admin/status"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("the status answers");
        resp.json().await.expect("the status is JSON")
    }

    /// Waits until its failover mode (`status.failover.mode`, "redis" or
    /// "memory") is `mode`, for at most `limit`; returns how long it took.
    pub async fn wait_mode(&self, mode: &str, limit: Duration) -> Duration {
        let started = std::time::Instant::now();
        eventually(limit, &format!("failover mode {mode}"), || async {
            (self.status().await["failover"]["mode"] == mode).then_some(())
        })
        .await;
        started.elapsed()
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
            self.log
                .print_when_failing(&format!("outrigger http {}", self.http));
        }
    }
}

/// Subscribes to `channel` over gRPC, replaying from `from` ("" for live
/// messages only; the epoch unsaid).
pub async fn subscribe_from(
    s: &Sidecar,
    channel: &str,
    from: &str,
) -> tonic::Streaming<pb::SubscribeEvent> {
    PubSubClient::new(s.channel().await)
        .subscribe(pb::SubscribeRequest {
            channels: vec![channel.into()],
            patterns: vec![],
            from_offset: from.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// The next message of a gRPC subscription, within 10 s (past the marker
/// that ends a resumed subscription's replay).
pub async fn next_message(stream: &mut tonic::Streaming<pb::SubscribeEvent>) -> pb::Message {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a message within 10 s")
            .unwrap()
            .expect("stream open");
        match e.event {
            Some(pb::subscribe_event::Event::Message(m)) => return m,
            Some(pb::subscribe_event::Event::Replayed(_)) => {}
            Some(pb::subscribe_event::Event::Resumed(r)) => assert!(r.recovered, "a gap: {r:?}"),
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// Reads a streaming response (Server-Sent Events) until its text so far
/// contains `needle`; false if the stream ends first. At most `limit`.
pub async fn read_until(feed: &mut reqwest::Response, needle: &str, limit: Duration) -> bool {
    let read = async {
        let mut text = String::new();
        while let Ok(Some(chunk)) = feed.chunk().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains(needle) {
                return true;
            }
        }
        false
    };
    tokio::time::timeout(limit, read).await.unwrap_or(false)
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

/// The workspace's `target` directory.
fn target_dir() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// A plugin component built by `scripts/build-plugins.sh` (which
/// `scripts/test.sh` runs first): `tenant_guard`, `tiered_limits`,
/// `invalidate_rules`, the test plugins `hostile` and `wasi_probe`; or,
/// built by `scripts/build-plugins.sh --languages`, `tenant_guard_js`
/// (TypeScript) and `tenant_guard_py` (Python).
pub fn plugin_wasm(name: &str) -> std::path::PathBuf {
    let path = target_dir()
        .join("wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    let how = if name.ends_with("_js") || name.ends_with("_py") {
        "scripts/build-plugins.sh --languages"
    } else {
        "scripts/build-plugins.sh"
    };
    assert!(
        path.exists(),
        "{} is missing: run {how} first",
        path.display()
    );
    path.canonicalize().expect("canonical plugin path")
}

/// A compile cache (`plugin_cache`) the tests share, for components that
/// take long to compile (those carrying a JavaScript or Python runtime
/// take tens of seconds in a debug build): each is compiled once per
/// build of the sidecar.
pub fn plugin_cache() -> std::path::PathBuf {
    let dir = target_dir().join("plugin-cache");
    std::fs::create_dir_all(&dir).expect("creating target/plugin-cache");
    dir
}
