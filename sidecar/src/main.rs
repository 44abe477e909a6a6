//! The `outrigger` command: parse the configuration, start telemetry, run
//! the sidecar until SIGTERM or Ctrl-C, drain.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outrigger::Sidecar;
use outrigger::config::Config;
use outrigger::telemetry::Telemetry;

#[derive(Parser)]
#[command(
    name = "outrigger",
    version,
    about = "Coordination sidecar: cache, locks, rate limits, presence and pub/sub over gRPC and HTTP"
)]
struct Cli {
    /// Configuration file (default: ./outrigger.toml if present).
    #[arg(long, global = true, env = "OUTRIGGER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the APIs (the default).
    Serve,
    /// Validate the configuration and print it, without serving.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("outrigger: invalid configuration: {err}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            match serde_json::to_string_pretty(&config) {
                Ok(text) => println!("configuration is valid:\n{text}"),
                Err(err) => eprintln!("configuration is valid (cannot print it: {err})"),
            }
            ExitCode::SUCCESS
        }
        Command::Serve => serve(config),
    }
}

fn serve(config: Config) -> ExitCode {
    // Telemetry first and outside the runtime: the OTLP exporter's blocking
    // client must not be created or dropped inside it.
    let telemetry = match Telemetry::init(&config.log) {
        Ok(t) => t,
        Err(err) => {
            eprintln!("outrigger: cannot start telemetry: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("outrigger: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        let sidecar = Sidecar::bind(&config).await?;
        tracing::info!(
            http_addr = %sidecar.http_addr(),
            grpc_addr = %sidecar.grpc_addr(),
            ops_addr = sidecar.ops_addr().map(|a| a.to_string()),
            backend = sidecar.app().cache.backend_kind(),
            namespace = %config.namespace,
            version = env!("CARGO_PKG_VERSION"),
            "ready"
        );
        sidecar.serve(shutdown).await
    });
    drop(runtime);
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("outrigger: {err:#}");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}

/// Installs the SIGTERM and Ctrl-C handlers now (so a signal that arrives
/// right after start-up is not lost to the default action) and returns a
/// future that resolves on either.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("Ctrl-C received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Ctrl-C received");
    })
}
