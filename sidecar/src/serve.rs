//! Accepting connections with bounds, so no client (slow, idle or one of
//! thousands) can hold the sidecar's memory or tasks hostage.
//!
//! - **A cap on connections per listener** (`limits.max_connections`): a
//!   connection beyond it is answered at once (HTTP: 503 with a JSON body,
//!   then closed; gRPC: closed before the handshake) instead of queuing.
//! - **A header deadline** (`limits.header_timeout`): every connection,
//!   HTTP or gRPC, must send its first bytes within it. HTTP/1 clients
//!   must also send each request's headers within it, and start their next
//!   request on a kept-alive connection within it, or are disconnected. A
//!   streaming response (SSE) is not a wait for headers and is not cut.
//! - gRPC connections are pinged (HTTP/2 keep-alive) and dropped when the
//!   peer stops answering.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::serve::Listener as Accept;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use serde::{Deserialize, Serialize};

/// A TCP listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Address to bind; port 0 picks a free port (logged at start-up).
    pub addr: SocketAddr,
    /// Also listen on this Unix domain socket, created with mode 0600 (only
    /// this user may connect): the cheapest and most private local hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

/// An optional listener with only `/healthz`, `/readyz` and `/metrics`: for
/// kubelet probes and scrapers, which reach the pod's IP rather than its
/// loopback, without exposing the API beyond localhost.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsListener {
    pub addr: Option<SocketAddr>,
}

/// Which listeners serve the web console (`api::console`): `[console]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// On the ops listener (`ops.addr`), when one is set. Beyond loopback
    /// only with an API token (`auth.token` or `auth.token_file`): without
    /// one the console would hand every key to whoever reaches the pod.
    pub ops: bool,
    /// On the API listeners (`http.addr`, `http.socket`) too.
    pub api: bool,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            ops: true,
            api: false,
        }
    }
}

/// What each listener allows.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub max_streams: usize,
    pub header_timeout: Duration,
}

impl ConnectionLimits {
    pub fn from_config(limits: &crate::validate::Limits) -> Self {
        ConnectionLimits {
            max_connections: limits.max_connections,
            max_streams: limits.max_streams,
            header_timeout: limits.header_timeout,
        }
    }
}

/// A connection's place under its listener's caps, shared with its
/// requests (as a request extension): the connection permit it holds,
/// which an HTTP/1 connection gives up while it carries a long-lived
/// stream, holding a stream permit instead. An HTTP/2 connection keeps its
/// permit: its other requests go on beside its streams.
#[derive(Clone)]
pub struct Place(Arc<PlaceInner>);

struct PlaceInner {
    /// A std lock: held only to take or put back the permit.
    connection: std::sync::Mutex<Option<OwnedSemaphorePermit>>,
    /// The stream permit of a connection upgraded to a WebSocket, held for
    /// the rest of its life (the upgraded connection keeps this place).
    upgraded: std::sync::Mutex<Option<OwnedSemaphorePermit>>,
    connections: Arc<Semaphore>,
    streams: Arc<Semaphore>,
}

/// Held by a streaming response's body: the stream permit, and the
/// connection permit to take back (if one is free) when the stream ends.
pub struct StreamPlace {
    _stream: OwnedSemaphorePermit,
    gave_up: Option<Place>,
}

impl Drop for StreamPlace {
    fn drop(&mut self) {
        // Back to an ordinary connection. If every connection permit is
        // taken meanwhile, it goes on without one until it closes (a
        // kept-alive connection idle past `limits.header_timeout` is
        // closed): refusing it now would cut the client mid-exchange.
        if let Some(place) = self.gave_up.take() {
            let permit = place.0.connections.clone().try_acquire_owned().ok();
            *place.0.connection.lock().unwrap_or_else(|e| e.into_inner()) = permit;
        }
    }
}

impl Place {
    fn new(
        connection: OwnedSemaphorePermit,
        connections: Arc<Semaphore>,
        streams: Arc<Semaphore>,
    ) -> Self {
        Place(Arc::new(PlaceInner {
            connection: std::sync::Mutex::new(Some(connection)),
            upgraded: std::sync::Mutex::new(None),
            connections,
            streams,
        }))
    }

    /// The connection is upgraded (a WebSocket over HTTP/1): for the rest
    /// of its life it holds a stream permit instead of its connection
    /// place. `false` when every stream permit is taken.
    pub fn upgraded(&self) -> bool {
        let Ok(stream) = self.0.streams.clone().try_acquire_owned() else {
            return false;
        };
        *self.0.upgraded.lock().unwrap_or_else(|e| e.into_inner()) = Some(stream);
        self.give_up_connection();
        true
    }

    /// Frees this connection's place under `limits.max_connections`.
    fn give_up_connection(&self) {
        drop(
            self.0
                .connection
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
    }

    /// A stream starts on this connection: it takes a stream permit, and
    /// on HTTP/1 gives the connection permit up. `None` when every stream
    /// permit is taken.
    pub fn begin_stream(&self, http1: bool) -> Option<StreamPlace> {
        let stream = self.0.streams.clone().try_acquire_owned().ok()?;
        let gave_up = http1.then(|| {
            self.give_up_connection();
            self.clone()
        });
        Some(StreamPlace {
            _stream: stream,
            gave_up,
        })
    }
}

/// The answer to a connection over the cap.
const REFUSAL_BODY: &str = r#"{"error":{"code":"exhausted","message":"too many connections: this listener serves limits.max_connections at once; retry later"}}"#;

/// Serves `router` on `listener` until `shutdown` resolves, then lets
/// every connection finish its request in flight and returns once all
/// have closed.
pub async fn serve_http<L>(
    mut listener: L,
    router: Router,
    limits: ConnectionLimits,
    name: &'static str,
    shutdown: impl Future<Output = ()>,
) where
    L: Accept,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let streams = Arc::new(Semaphore::new(limits.max_streams));
    let (closing, closing_rx) = watch::channel(false);
    let refusals = Refusals::default();
    let mut shutdown = pin!(shutdown);
    loop {
        let io = tokio::select! {
            (io, _) = listener.accept() => io,
            () = &mut shutdown => break,
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let place = Place::new(permit, permits.clone(), streams.clone());
                tokio::spawn(serve_connection(
                    Capped::new(
                        io,
                        Held::Place {
                            _place: place.clone(),
                        },
                        limits.header_timeout,
                    ),
                    place,
                    router.clone(),
                    limits.header_timeout,
                    closing_rx.clone(),
                ));
            }
            Err(_) => {
                refusals.note(name, limits.max_connections);
                tokio::spawn(refuse(io));
            }
        }
    }
    drop(listener);
    let _ = closing.send(true);
    // Every connection holds a permit until it closes, or a stream permit
    // while it streams.
    let _ = permits.acquire_many(limits.max_connections as u32).await;
    let _ = streams.acquire_many(limits.max_streams as u32).await;
}

async fn serve_connection<I>(
    io: Capped<I>,
    place: Place,
    router: Router,
    header_timeout: Duration,
    mut closing: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        // WebSockets over HTTP/2.
        .enable_connect_protocol()
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    // Each request carries its connection's place, for a stream to swap.
    let service = TowerToHyperService::new(tower::util::MapRequest::new(
        router,
        move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(place.clone());
            req
        },
    ));
    let mut conn = pin!(builder.serve_connection_with_upgrades(TokioIo::new(io), service));
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::trace!(error = %err, "HTTP connection ended with an error");
            }
            return;
        }
        _ = closing.wait_for(|closing| *closing) => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

/// Answers 503 and closes, reading (for at most a second) what the client
/// sent meanwhile, so closing does not reset the connection before the
/// answer is read.
async fn refuse<I>(mut io: I)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{REFUSAL_BODY}",
        REFUSAL_BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        io.write_all(response.as_bytes()).await?;
        io.shutdown().await?;
        let mut sink = [0u8; 1024];
        while io.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// Logs refusals at most once every 10 s per listener, with how many.
#[derive(Default, Clone)]
struct Refusals {
    count: Arc<AtomicU64>,
    last_log: Arc<AtomicU64>,
}

impl Refusals {
    fn note(&self, name: &'static str, max: usize) {
        let count = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_log.load(Ordering::Relaxed);
        if now >= last + 10
            && self
                .last_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                listener = name,
                max_connections = max,
                refused_so_far = count,
                "refusing connections: limits.max_connections reached"
            );
        }
    }
}

/// The connections a gRPC listener accepts, capped: one over the cap is
/// closed at once (it never reaches the HTTP/2 handshake), one that sends
/// nothing within the header timeout is closed then.
pub fn capped<S, IO, E>(
    incoming: S,
    limits: ConnectionLimits,
    name: &'static str,
) -> impl tokio_stream::Stream<Item = Result<Capped<IO>, E>>
where
    S: tokio_stream::Stream<Item = Result<IO, E>>,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Refusals::default();
    tokio_stream::StreamExt::filter_map(incoming, move |conn| match conn {
        Err(err) => Some(Err(err)),
        Ok(io) => match permits.clone().try_acquire_owned() {
            Ok(permit) => Some(Ok(Capped::new(
                io,
                Held::Permit { _permit: permit },
                limits.header_timeout,
            ))),
            Err(_) => {
                refusals.note(name, limits.max_connections);
                None
            }
        },
    })
}

/// A connection holding its place under the cap until it is dropped. Its
/// reads fail if the client's first bytes (a request line, the HTTP/2
/// preface) do not arrive within the header timeout: a client that
/// connects and says nothing does not keep its place.
pub struct Capped<IO> {
    io: IO,
    _held: Held,
    /// Until the first bytes arrive.
    first_bytes: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// What a connection holds under its listener's cap.
enum Held {
    /// A gRPC connection: its permit.
    Permit { _permit: OwnedSemaphorePermit },
    /// An HTTP connection: its place, whose permit a stream may swap.
    Place { _place: Place },
}

impl<IO> Capped<IO> {
    fn new(io: IO, held: Held, header_timeout: Duration) -> Self {
        Capped {
            io,
            _held: held,
            first_bytes: Some(Box::pin(tokio::time::sleep(header_timeout))),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Capped<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        let Some(deadline) = &mut this.first_bytes else {
            return read;
        };
        match read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => this.first_bytes = None,
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "nothing received within limits.header_timeout",
                )));
            }
            _ => {}
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Capped<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for Capped<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}
