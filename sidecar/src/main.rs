//! The `outrigger` command: parse the configuration, start telemetry, run
//! the sidecar until SIGTERM or Ctrl-C, drain.

#![forbid(unsafe_code)]

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outrigger::Sidecar;
use outrigger::config::Config;
use outrigger::plugins::cache::Made;
use outrigger::telemetry::Telemetry;

/// mimalloc: glibc's malloc and free were about a quarter of the sidecar's
/// CPU time per request in the profiles (`bench/flamegraphs/`), much of it
/// in arena bookkeeping between the two runtime workers. Built with
/// `no_thp`: mimalloc otherwise asks for transparent huge pages on its
/// arenas, and one touched 2 MiB page each doubled the idle RSS (20 -> 37 MB).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "outrigger",
    version,
    about = "Coordination sidecar: cache, locks, rate limits, presence and pub/sub over gRPC and HTTP",
    after_help = "Commands from `status` on talk to a running sidecar, found with --addr or from \
                  its configuration. Their exit codes: 0 done, 1 no (not found, a condition does \
                  not hold), 2 bad usage or input, 3 not allowed (token, plugin), 4 the sidecar \
                  cannot be reached or cannot serve."
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
    /// Validate the configuration (loading every plugin it names) and
    /// print it, without serving.
    CheckConfig,
    /// Plugin tools.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    #[command(flatten)]
    Remote(cli::Remote),
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Say whether a .wasm file is a plugin this sidecar can load, and which
    /// hooks it implements.
    Check {
        /// The component (`target/wasm32-wasip2/release/<crate>.wasm`).
        file: PathBuf,
        /// The plugin's configuration, as JSON, for its `init` to check.
        #[arg(long, default_value = "{}")]
        plugin_config: String,
        /// Keep the compiled plugin here, or load it from here if it was
        /// compiled before (the sidecar's `plugin_cache`).
        #[arg(long, env = "OUTRIGGER_PLUGIN_CACHE")]
        cache_dir: Option<PathBuf>,
    },
}

/// `outrigger plugin check`: exit 0 and the hooks, or 1 and why not.
fn check_plugin(file: &std::path::Path, config: &str, cache_dir: Option<&PathBuf>) -> ExitCode {
    if let Some(dir) = cache_dir {
        outrigger::plugins::cache::set_dir(dir.clone());
    }
    let config: serde_json::Value = match serde_json::from_str(config) {
        Ok(value @ serde_json::Value::Object(_)) => value,
        _ => {
            eprintln!("outrigger: --plugin-config must be a JSON object");
            return ExitCode::from(2);
        }
    };
    match outrigger::plugins::check_file(file, &config) {
        Ok(checked) => {
            let hooks = if checked.hooks.is_empty() {
                "no hooks".to_string()
            } else {
                checked.hooks.join(", ")
            };
            match checked.init_error {
                None => {
                    let made = match checked.made {
                        Made::Compiled(took) => format!("compiled in {} ms", took.as_millis()),
                        Made::Cached(took) => format!(
                            "loaded compiled from the cache in {:.1} ms",
                            took.as_secs_f64() * 1000.0
                        ),
                    };
                    println!(
                        "{}: ok, fits outrigger:plugin/plugin@{}; implements: {hooks}",
                        file.display(),
                        checked.world
                    );
                    // A measurement, not the verdict: on stderr.
                    eprintln!("{}: {made}", file.display());
                    ExitCode::SUCCESS
                }
                Some(reason) => {
                    eprintln!(
                        "{}: fits outrigger:plugin/plugin@{} and implements {hooks}, but {reason} \
                         (give the plugin's config as JSON with --plugin-config)",
                        file.display(),
                        checked.world
                    );
                    ExitCode::FAILURE
                }
            }
        }
        Err(reason) => {
            eprintln!("{}: not a usable plugin: {reason}", file.display());
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Plugin {
        command:
            PluginCommand::Check {
                file,
                plugin_config,
                cache_dir,
            },
    }) = &cli.command
    {
        return check_plugin(file, plugin_config, cache_dir.as_ref());
    }
    if let Some(Command::Remote(command)) = cli.command {
        return cli::run(command, cli.config.as_deref());
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("outrigger: invalid configuration: {err}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            if let Some(dir) = &config.plugin_cache {
                outrigger::plugins::cache::set_dir(dir.clone());
            }
            let mut broken = false;
            for plugin in &config.plugins {
                let checked = plugin
                    .merged_config()
                    .and_then(|config| outrigger::plugins::check_file(&plugin.path, &config))
                    .and_then(|checked| checked.init_error.map_or(Ok(()), Err));
                if let Err(reason) = checked {
                    eprintln!(
                        "outrigger: plugin {:?} ({}): {reason}",
                        plugin.name,
                        plugin.path.display()
                    );
                    broken = true;
                }
            }
            if broken {
                return ExitCode::FAILURE;
            }
            match serde_json::to_string_pretty(&config.redacted()) {
                Ok(text) => println!("configuration is valid:\n{text}"),
                Err(err) => eprintln!("configuration is valid (cannot print it: {err})"),
            }
            ExitCode::SUCCESS
        }
        Command::Plugin { .. } | Command::Remote(_) => {
            unreachable!("handled before the configuration is loaded")
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
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.runtime.workers > 0 {
        builder.worker_threads(config.runtime.workers);
    }
    let runtime = match builder.enable_all().build() {
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
            http_socket = sidecar.socket_paths().0.map(|p| p.display().to_string()),
            grpc_socket = sidecar.socket_paths().1.map(|p| p.display().to_string()),
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
