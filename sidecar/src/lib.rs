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
pub mod cache;
pub mod config;
pub mod error;
pub mod lock;
pub mod plugins;
pub mod presence;
pub mod pubsub;
pub mod ratelimit;
pub mod telemetry;
pub mod validate;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::App;
use crate::config::Config;

/// A sidecar with its backend connected and its listeners bound.
pub struct Sidecar {
    app: Arc<App>,
    http: TcpListener,
    grpc: TcpListener,
    ops: Option<TcpListener>,
    grace: Duration,
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
        Ok(Sidecar {
            app,
            http,
            grpc,
            ops,
            grace: config.shutdown_grace,
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

        let http = axum::serve(self.http, api::http::router(self.app.clone()))
            .with_graceful_shutdown(stopped(stop_rx.clone()));
        let mut http = tokio::spawn(async move { http.await.context("HTTP server failed") });
        if let Some(ops) = self.ops {
            let server = axum::serve(ops, api::http::ops_router(self.app.clone()))
                .with_graceful_shutdown(stopped(stop_rx.clone()));
            tokio::spawn(async move {
                if let Err(err) = server.await {
                    tracing::error!(error = %err, "ops listener failed");
                }
            });
        }

        self.app.plugins.watch(self.app.draining());
        let routes = api::grpc::routes(self.app.clone()).await?;
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(self.grpc);
        let auth = self.app.auth.clone();
        let grpc = tonic::transport::Server::builder()
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
            .serve_with_incoming_shutdown(incoming, stopped(stop_rx));
        let mut grpc = tokio::spawn(async move { grpc.await.context("gRPC server failed") });

        tokio::select! {
            () = shutdown => {}
            result = &mut http => return result?.and(Err(anyhow::anyhow!("HTTP server stopped"))),
            result = &mut grpc => return result?.and(Err(anyhow::anyhow!("gRPC server stopped"))),
        }
        tracing::info!(grace = ?self.grace, "shutting down: draining in-flight requests");
        self.app.start_draining();
        let _ = stop_tx.send(true);
        match tokio::time::timeout(self.grace, async { (http.await, grpc.await) }).await {
            Ok((http, grpc)) => {
                http??;
                grpc??;
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
