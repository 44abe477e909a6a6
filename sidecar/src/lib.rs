//! Outrigger: a coordination sidecar.
//!
//! One `outrigger` process runs beside each application instance and serves
//! coordination primitives over gRPC and HTTP on localhost, with state in
//! Redis or, without Redis, in local memory.
//!
//! Layout, one module per concern:
//!
//! - [`config`]: the typed configuration (figment: defaults < file < env);
//! - [`backend`]: the storage seam, with the [`backend::memory`] and
//!   [`backend::redis`] implementations;
//! - [`cache`]: the cache primitive (validation, limits, instrumentation);
//! - [`lock`]: locks with fencing tokens, semaphores, keep-alive;
//! - [`ratelimit`]: rate-limit policies and decisions;
//! - [`presence`]: rooms, heartbeats, watchers and the timeout reaper;
//! - [`pubsub`]: publish, live and durable subscriptions, gapless resume;
//! - [`app`]: the shared state both APIs serve from;
//! - [`auth`]: the optional bearer token;
//! - [`plugins`]: WebAssembly plugins (wasmtime) and their hooks;
//! - [`api`]: the gRPC and HTTP adapters, and the one error mapping;
//! - [`telemetry`]: logs, OTLP traces and Prometheus metrics;
//! - [`error`]: the error every primitive returns;
//! - [`validate`]: the input checks every primitive shares.
//!
//! [`Sidecar::bind`] connects the backend and binds both listeners;
//! [`Sidecar::serve`] serves until a shutdown signal, then drains.

#![deny(unsafe_code)]

pub mod api;
pub mod app;
pub mod auth;
pub mod backend;
pub mod config;
pub mod duration;
pub mod error;
pub mod kit;
#[cfg(test)]
mod layers;
pub mod plugins;
pub mod primitives;
pub mod serve;
pub mod telemetry;
pub mod validate;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::config::Config;

/// A sidecar with its backend connected and its listeners bound.
pub struct Sidecar {
    app: Arc<App>,
    http: TcpListener,
    grpc: TcpListener,
    ops: Option<TcpListener>,
    http_socket: Option<UnixSocket>,
    grpc_socket: Option<UnixSocket>,
    grace: Duration,
    limits: serve::ConnectionLimits,
    /// Which listeners serve the web console.
    console_on_ops: bool,
    console_on_api: bool,
}

/// A Unix domain socket listener, and its file.
struct UnixSocket {
    listener: UnixListener,
    path: SocketFile,
}

/// A socket file, removed when the server on it is done.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds a Unix socket at `path` that only this user may connect to. A
/// stale socket left by a process that is gone is replaced; a live one, or
/// anything that is not a socket, is an error naming `key`.
fn bind_unix(key: &str, path: &Path) -> anyhow::Result<UnixSocket> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!("{key}: {} is in use by another process", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("{key}: cannot remove the stale {}", path.display()))?;
        }
        Ok(_) => anyhow::bail!("{key}: {} exists and is not a socket", path.display()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("{key}: {}", path.display())),
    }
    // Bound under a temporary name, restricted, then moved into place: the
    // socket is never reachable with looser permissions.
    let name = path
        .file_name()
        .with_context(|| format!("{key}: {} is not a file path", path.display()))?;
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)
        .with_context(|| format!("{key}: cannot listen on {}", path.display()))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(err) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(err).with_context(|| format!("{key}: cannot set up {}", path.display()));
    }
    Ok(UnixSocket {
        listener,
        path: SocketFile(path.to_path_buf()),
    })
}

impl Sidecar {
    /// Connects the backend and binds the HTTP and gRPC listeners.
    pub async fn bind(config: &Config) -> anyhow::Result<Sidecar> {
        let app = App::new(config).await?;
        let http = TcpListener::bind(config.http.addr)
            .await
            .with_context(|| format!("http.addr: cannot listen on {}", config.http.addr))?;
        let grpc = TcpListener::bind(config.grpc.addr)
            .await
            .with_context(|| format!("grpc.addr: cannot listen on {}", config.grpc.addr))?;
        for (key, addr) in [
            ("http.addr", config.http.addr),
            ("grpc.addr", config.grpc.addr),
        ] {
            if !addr.ip().is_loopback() && !app.auth.enabled() {
                tracing::warn!(
                    key,
                    %addr,
                    "the API listens beyond this host with no auth token: anyone who can reach it can use it (set auth.token or auth.token_file)"
                );
            }
        }
        let ops = match config.ops.addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("ops.addr: cannot listen on {addr}"))?,
            ),
            None => None,
        };
        // The console reads and changes everything: beyond loopback, only
        // behind a token.
        let console_on_ops = match config.ops.addr {
            Some(addr) if config.console.ops => {
                let allowed = addr.ip().is_loopback() || app.auth.enabled();
                if !allowed {
                    tracing::warn!(
                        %addr,
                        "the web console is not served on ops.addr: it listens beyond this host \
                         and no auth token is set (set auth.token or auth.token_file)"
                    );
                }
                allowed
            }
            _ => false,
        };
        let http_socket = match &config.http.socket {
            Some(path) => Some(bind_unix("http.socket", path)?),
            None => None,
        };
        let grpc_socket = match &config.grpc.socket {
            Some(path) => Some(bind_unix("grpc.socket", path)?),
            None => None,
        };
        Ok(Sidecar {
            app,
            http,
            grpc,
            ops,
            http_socket,
            grpc_socket,
            grace: config.shutdown_grace,
            limits: serve::ConnectionLimits::from_config(&config.limits),
            console_on_ops,
            console_on_api: config.console.api,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The Unix socket paths the HTTP and gRPC APIs also listen on.
    pub fn socket_paths(&self) -> (Option<&Path>, Option<&Path>) {
        (
            self.http_socket.as_ref().map(|s| s.path.0.as_path()),
            self.grpc_socket.as_ref().map(|s| s.path.0.as_path()),
        )
    }

    /// The ops listener's address, if one is configured.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Serves until `shutdown` resolves, then stops accepting, waits for
    /// in-flight requests (at most the configured grace period) and returns.
    /// Returns an error if a server fails or draining overruns the grace.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = move |mut rx: watch::Receiver<bool>| async move {
            // Err only when the sender is gone, which also means stop.
            let _ = rx.wait_for(|stop| *stop).await;
        };

        let mut servers: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)> = Vec::new();
        let mut router = api::http::router(self.app.clone());
        if self.console_on_api {
            router = router.merge(api::console::routes(self.app.clone()));
        }
        // Small responses go out at once: no Nagle delay on loopback.
        let http_listener = axum::serve::ListenerExt::tap_io(self.http, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let limits = self.limits;
        let http = serve::serve_http(
            http_listener,
            router.clone(),
            limits,
            "http.addr",
            stopped(stop_rx.clone()),
        );
        servers.push((
            "HTTP server",
            tokio::spawn(async move {
                http.await;
                Ok(())
            }),
        ));
        if let Some(UnixSocket { listener, path }) = self.http_socket {
            let server = serve::serve_http(
                listener,
                router,
                limits,
                "http.socket",
                stopped(stop_rx.clone()),
            );
            servers.push((
                "HTTP server (Unix socket)",
                tokio::spawn(async move {
                    let _remove_when_done = path;
                    server.await;
                    Ok(())
                }),
            ));
        }
        if let Some(ops) = self.ops {
            // Often bound beyond loopback for the kubelet and Prometheus:
            // the same connection cap and header timeout as the API.
            let mut ops_router = api::http::ops_router(self.app.clone());
            if self.console_on_ops {
                ops_router = ops_router.merge(api::console::routes(self.app.clone()));
            }
            tokio::spawn(serve::serve_http(
                ops,
                ops_router,
                limits,
                "ops.addr",
                stopped(stop_rx.clone()),
            ));
        }

        self.app.plugins.watch(self.app.draining());
        let routes = api::grpc::routes(self.app.clone()).await?;
        // Without TCP_NODELAY, a streamed message can wait for the peer's
        // delayed ACK (40 ms on Linux).
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(self.grpc),
            |conn| {
                if let Ok(tcp) = &conn {
                    let _ = tcp.set_nodelay(true);
                }
                conn
            },
        );
        let grpc = serve_grpc(
            routes.clone(),
            self.app.auth.clone(),
            serve::capped(incoming, limits, "grpc.addr"),
            stopped(stop_rx.clone()),
        );
        servers.push((
            "gRPC server",
            tokio::spawn(async move { grpc.await.context("gRPC server failed") }),
        ));
        if let Some(UnixSocket { listener, path }) = self.grpc_socket {
            let incoming = serve::capped(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                limits,
                "grpc.socket",
            );
            let grpc = serve_grpc(routes, self.app.auth.clone(), incoming, stopped(stop_rx));
            servers.push((
                "gRPC server (Unix socket)",
                tokio::spawn(async move {
                    let _remove_when_done = path;
                    grpc.await.context("gRPC server (Unix socket) failed")
                }),
            ));
        }

        let names: Vec<&'static str> = servers.iter().map(|(name, _)| *name).collect();
        let mut handles: Vec<_> = servers.into_iter().map(|(_, handle)| handle).collect();
        tokio::select! {
            () = shutdown => {}
            (result, index, _) = futures::future::select_all(handles.iter_mut()) => {
                return result?.and(Err(anyhow::anyhow!("{} stopped", names[index])));
            }
        }
        tracing::info!(grace = ?self.grace, "shutting down: draining in-flight requests");
        self.app.start_draining();
        let _ = stop_tx.send(true);
        match tokio::time::timeout(self.grace, futures::future::join_all(handles)).await {
            Ok(results) => {
                for result in results {
                    result??;
                }
                tracing::info!("drained; bye");
                Ok(())
            }
            Err(_) => anyhow::bail!(
                "in-flight requests still running after shutdown_grace ({:?})",
                self.grace
            ),
        }
    }
}

/// The gRPC services over one listener, behind the token check and the
/// oversized-message mapping.
async fn serve_grpc<I, IO, IE>(
    routes: tonic::service::Routes,
    auth: Arc<auth::Auth>,
    incoming: I,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    I: tokio_stream::Stream<Item = Result<IO, IE>>,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tonic::transport::Server::builder()
        // Peers that stop answering pings are dropped.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(tonic::service::InterceptorLayer::new(
            move |req: tonic::Request<()>| {
                let authorization = req.metadata().get("authorization").map(|v| v.as_bytes());
                if auth.allows(authorization) {
                    Ok(req)
                } else {
                    Err(tonic::Status::unauthenticated(
                        "a valid `authorization: Bearer <token>` metadata entry is required",
                    ))
                }
            },
        ))
        .layer(tower::util::MapResponseLayer::new(
            api::grpc::oversized_as_resource_exhausted,
        ))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
