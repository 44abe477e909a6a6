//! Logs, traces and metrics.
//!
//! - Logs: `tracing` to stdout, text or JSON (`log.format`), filtered by
//!   `RUST_LOG` or `log.level`.
//! - Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, spans are exported over
//!   OTLP/HTTP (protobuf) by a batch exporter; the standard `OTEL_*`
//!   variables (headers, `OTEL_BSP_SCHEDULE_DELAY`, ...) apply.
//! - Metrics: a Prometheus registry ([`Metrics`]) rendered at `/metrics`.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::error::Error;
use serde::{Deserialize, Serialize};

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter (`info`, `outrigger=debug,info`); `RUST_LOG` wins.
    pub level: String,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes it.
/// `filter`, with the Redis client library's own messages limited to
/// errors unless the filter names them: during a cluster failover it logs
/// every retry, and the sidecar logs what matters (the switch to memory
/// and back) itself.
fn with_quiet_redis_client(filter: &str) -> String {
    if filter.split(',').any(|d| d.trim().starts_with("redis")) {
        filter.to_string()
    } else {
        format!("{filter},redis=error")
    }
}

pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the global subscriber. Call once, outside any async runtime:
    /// the OTLP exporter runs its own blocking client on its own thread.
    pub fn init(log: &LogConfig) -> anyhow::Result<Telemetry> {
        let filter = EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new(with_quiet_redis_client(&log.level)))?;
        let otlp_configured = [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()));
        let provider = if otlp_configured {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(Resource::builder().with_service_name("outrigger").build())
                    .build(),
            )
        } else {
            None
        };
        let otel = provider
            .as_ref()
            .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("outrigger")));
        // Without a trace exporter, spans have no reader: disable them
        // outright, so a request's spans cost a cached callsite check and
        // nothing else (the log lines carry their own fields).
        let spans_wanted = otel.is_some();
        let spans =
            tracing_subscriber::filter::filter_fn(move |meta| spans_wanted || !meta.is_span());
        let registry = tracing_subscriber::registry()
            .with(filter)
            .with(spans)
            .with(otel);
        match log.format {
            LogFormat::Text => registry
                .with(tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal()))
                .try_init()?,
            LogFormat::Json => registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .flatten_event(true)
                        .with_current_span(false),
                )
                .try_init()?,
        }
        Ok(Telemetry { provider })
    }

    /// Exports the spans still buffered. Blocking: call outside the runtime.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(err) = provider.shutdown()
        {
            eprintln!("outrigger: flushing traces failed: {err}");
        }
    }
}

/// Labels of one primitive operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub primitive: &'static str,
    pub op: &'static str,
    /// `ok` or the error code (`invalid_argument`, `unavailable`, ...).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginCallLabels {
    plugin: String,
    hook: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FallbackLabels {
    primitive: &'static str,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: &'static str,
}

type HistogramFamily = Family<OpLabels, Histogram, fn() -> Histogram>;

/// Every metric the sidecar exports.
pub struct Metrics {
    /// A std mutex: primitives register their own metrics at start; the
    /// lock is otherwise taken only to render.
    registry: std::sync::Mutex<Registry>,
    requests: Family<OpLabels, Counter>,
    latency: HistogramFamily,
    in_flight: Gauge,
    backend: Family<BackendLabels, Gauge>,
    failover_transitions: Counter,
    fallback_decisions: Family<FallbackLabels, Counter>,
    alive_tasks: Gauge,
    workers: Gauge,
    plugin_calls: Family<PluginCallLabels, Counter>,
    plugin_healthy: Family<PluginLabels, Gauge>,
    plugin_instances: Family<PluginLabels, Gauge>,
}

impl Metrics {
    /// Registers every metric, with `backend` ("memory" or "redis") marked in
    /// use.
    pub fn new(backend: &'static str) -> Metrics {
        let mut registry = Registry::with_prefix("outrigger");
        let requests = Family::<OpLabels, Counter>::default();
        registry.register(
            "requests",
            "Primitive operations by primitive, operation and outcome",
            requests.clone(),
        );
        let latency: HistogramFamily = Family::new_with_constructor(|| {
            // 50 µs .. ~1.6 s
            Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
        });
        registry.register(
            "request_duration_seconds",
            "Latency of primitive operations",
            latency.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "Primitive operations being served",
            in_flight.clone(),
        );
        let backend_gauge = Family::<BackendLabels, Gauge>::default();
        registry.register(
            "backend",
            "Storage backend serving requests (1 = in use)",
            backend_gauge.clone(),
        );
        backend_gauge
            .get_or_create(&BackendLabels { backend })
            .set(1);
        let failover_transitions = Counter::default();
        registry.register(
            "failover_transitions",
            "Switches between Redis and the memory fallback",
            failover_transitions.clone(),
        );
        let fallback_decisions = Family::<FallbackLabels, Counter>::default();
        registry.register(
            "fallback_decisions",
            "Requests answered while Redis was down, by primitive and how (local, fail_open, fail_closed)",
            fallback_decisions.clone(),
        );
        let alive_tasks = Gauge::default();
        registry.register(
            "runtime_alive_tasks",
            "Tokio tasks alive in this process",
            alive_tasks.clone(),
        );
        let workers = Gauge::default();
        registry.register(
            "runtime_workers",
            "Worker threads serving requests (runtime.workers)",
            workers.clone(),
        );
        let plugin_calls = Family::<PluginCallLabels, Counter>::default();
        registry.register(
            "plugin_calls",
            "Plugin hook calls by plugin, hook and outcome (ok, failed, disabled, unloaded)",
            plugin_calls.clone(),
        );
        let plugin_healthy = Family::<PluginLabels, Gauge>::default();
        registry.register(
            "plugin_healthy",
            "1 while a plugin is loaded and not disabled",
            plugin_healthy.clone(),
        );
        let plugin_instances = Family::<PluginLabels, Gauge>::default();
        registry.register(
            "plugin_instances",
            "A plugin's live instances (each holds its own linear memory): in a call, or kept warm",
            plugin_instances.clone(),
        );
        Metrics {
            plugin_calls,
            plugin_healthy,
            plugin_instances,
            registry: std::sync::Mutex::new(registry),
            requests,
            latency,
            in_flight,
            backend: backend_gauge,
            failover_transitions,
            fallback_decisions,
            alive_tasks,
            workers,
        }
    }

    /// Marks one operation as started; the guard records it when dropped.
    pub fn start(&self, primitive: &'static str, op: &'static str) -> OpTimer<'_> {
        self.in_flight.inc();
        OpTimer {
            metrics: self,
            primitive,
            op,
            started: std::time::Instant::now(),
            outcome: "cancelled",
        }
    }

    /// Marks `active` as the backend serving requests (the failover
    /// backend switches between "redis" and "memory").
    pub fn set_backend(&self, active: &'static str) {
        for backend in ["redis", "memory"] {
            self.backend
                .get_or_create(&BackendLabels { backend })
                .set(i64::from(backend == active));
        }
        self.failover_transitions.inc();
    }

    /// Counts one request answered while Redis was down.
    pub fn count_fallback(&self, primitive: &'static str, decision: &'static str) {
        self.fallback_decisions
            .get_or_create(&FallbackLabels {
                primitive,
                decision,
            })
            .inc();
    }

    /// Registers a metric of a primitive's own (exported as
    /// `outrigger_<name>`).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .register(name, help, metric);
    }

    /// Counts one plugin hook call.
    pub fn count_plugin_call(&self, plugin: &str, hook: &'static str, outcome: &'static str) {
        self.plugin_calls
            .get_or_create(&PluginCallLabels {
                plugin: plugin.to_string(),
                hook,
                outcome,
            })
            .inc();
    }

    /// Marks a plugin healthy (1) or not (0).
    pub fn set_plugin_healthy(&self, plugin: &str, healthy: bool) {
        self.plugin_healthy
            .get_or_create(&PluginLabels {
                plugin: plugin.to_string(),
            })
            .set(i64::from(healthy));
    }

    /// The gauge of a plugin's live instances, for its runtime to keep.
    pub fn plugin_instances(&self, plugin: &str) -> Gauge {
        self.plugin_instances
            .get_or_create(&PluginLabels {
                plugin: plugin.to_string(),
            })
            .clone()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let runtime = handle.metrics();
            self.alive_tasks.set(runtime.num_alive_tasks() as i64);
            self.workers.set(runtime.num_workers() as i64);
        }
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Runs one primitive operation inside its span, recording its outcome and
/// latency; backend failures are logged here with their cause.
pub async fn observe<T>(
    metrics: &Metrics,
    primitive: &'static str,
    op: &'static str,
    span: tracing::Span,
    fut: impl Future<Output = crate::error::Result<T>>,
) -> crate::error::Result<T> {
    use tracing::Instrument;
    let timer = metrics.start(primitive, op);
    let result = fut.instrument(span).await;
    match &result {
        Ok(_) => timer.finish("ok"),
        Err(err) => {
            if matches!(err, Error::Unavailable(_) | Error::Internal(_)) {
                tracing::warn!(primitive, op, error = %err, cause = ?std::error::Error::source(err), "backend call failed");
            }
            timer.finish(err.code());
        }
    }
    result
}

/// Records one operation's outcome and latency when dropped; an operation
/// dropped before [`OpTimer::finish`] (the client went away) counts as
/// `cancelled`.
pub struct OpTimer<'a> {
    metrics: &'a Metrics,
    primitive: &'static str,
    op: &'static str,
    started: std::time::Instant,
    outcome: &'static str,
}

impl OpTimer<'_> {
    pub fn finish(mut self, outcome: &'static str) {
        self.outcome = outcome;
    }
}

impl Drop for OpTimer<'_> {
    fn drop(&mut self) {
        let labels = OpLabels {
            primitive: self.primitive,
            op: self.op,
            outcome: self.outcome,
        };
        self.metrics.requests.get_or_create(&labels).inc();
        self.metrics
            .latency
            .get_or_create(&labels)
            .observe(self.started.elapsed().as_secs_f64());
        self.metrics.in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redis_client_is_quiet_unless_named() {
        assert_eq!(with_quiet_redis_client("info"), "info,redis=error");
        assert_eq!(
            with_quiet_redis_client("debug,outrigger=trace"),
            "debug,outrigger=trace,redis=error"
        );
        assert_eq!(
            with_quiet_redis_client("info,redis=warn"),
            "info,redis=warn"
        );
    }

    #[test]
    fn records_outcomes_latency_and_in_flight() {
        let metrics = Metrics::new("memory");
        let timer = metrics.start("cache", "get");
        assert!(metrics.render().contains("outrigger_requests_in_flight 1"));
        timer.finish("ok");
        drop(metrics.start("cache", "set"));
        let text = metrics.render();
        assert!(text.contains("outrigger_requests_in_flight 0"), "{text}");
        assert!(
            text.contains(r#"outrigger_requests_total{primitive="cache",op="get",outcome="ok"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"op="set",outcome="cancelled""#), "{text}");
        assert!(text.contains("outrigger_request_duration_seconds_bucket"));
        assert!(text.contains(r#"outrigger_backend{backend="memory"} 1"#));
    }
}
