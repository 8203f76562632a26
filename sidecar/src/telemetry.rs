//! The telemetry pipeline: logs and OpenTelemetry traces.
//!
//! Settings come from the `[telemetry]` table, and the standard OpenTelemetry variables win when
//! set (`OTEL_SDK_DISABLED`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`). They are read from the environment map the
//! caller passes, never from the process directly, so tests can inject them.
//!
//! Export never blocks traffic: finished spans go into a bounded queue ([`ExportQueue`]) drained
//! by a thread of its own, in batches. When the queue is full the span is dropped and counted;
//! when an export fails its spans are counted as failed. Spans are only created at all when an
//! exporter is configured (see `tether_actors::trace`), so with telemetry off they cost nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use tether_actors::metrics::Metrics;
use tether_config::{LogFormat, TelemetryConfig};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::Layer as _;

/// How many finished spans may wait for export before new ones are dropped.
pub const EXPORT_QUEUE_CAPACITY: usize = 4096;
/// Most spans sent in one export.
pub const EXPORT_BATCH_SIZE: usize = 512;
/// How long a partial batch waits before it is sent anyway.
pub const EXPORT_INTERVAL: Duration = Duration::from_millis(500);
/// How long one export may take.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317 by convention).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318 by convention).
    HttpProtobuf,
}

/// Effective telemetry settings after the `OTEL_*` variables are applied.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// Where spans go; `None` disables tracing.
    pub endpoint: Option<String>,
    /// How they get there.
    pub protocol: OtlpProtocol,
    /// `service.name`.
    pub service_name: String,
    /// Extra resource attributes (`OTEL_RESOURCE_ATTRIBUTES`).
    pub resource: Vec<(String, String)>,
    /// Sampling ratio of root spans (parent-based: a sampled parent is always followed).
    pub sample_ratio: f64,
    /// Log line format.
    pub log_format: LogFormat,
    /// Default log filter (RUST_LOG wins).
    pub log_level: String,
    /// Where metrics go over OTLP (`None`: only `GET /metrics`).
    pub metrics_endpoint: Option<String>,
    /// How often metrics are exported (`OTEL_METRIC_EXPORT_INTERVAL`, milliseconds).
    pub metric_interval: Duration,
}

/// Why the telemetry pipeline could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// An `OTEL_*` variable holds a value Tether cannot use.
    #[error("{variable}: {value:?} {problem}")]
    Variable {
        /// The variable named in the message.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it, e.g. `is not a ratio in 0..=1`.
        problem: &'static str,
    },
    /// The log filter (`telemetry.log_level` or `RUST_LOG`) could not be built.
    #[error("log filter: {0}")]
    LogFilter(#[from] tracing_subscriber::filter::ParseError),
    /// The span or metric exporter could not be built.
    #[error("OTLP {signal}exporter for {endpoint}: {source}")]
    Exporter {
        /// `""` for spans, `"metric "` for metrics.
        signal: &'static str,
        /// Where it would export to.
        endpoint: String,
        /// What the SDK said.
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// An [`TelemetryError::Variable`].
fn bad_variable(variable: &'static str, value: &str, problem: &'static str) -> TelemetryError {
    TelemetryError::Variable {
        variable,
        value: value.to_owned(),
        problem,
    }
}

/// Default of `OTEL_METRIC_EXPORT_INTERVAL`.
pub const DEFAULT_METRIC_INTERVAL: Duration = Duration::from_secs(60);

impl TelemetrySettings {
    /// Applies the `OTEL_*` variables of `env` over `config`. Errors name the variable.
    pub fn resolve(
        config: &TelemetryConfig,
        env: &[(String, String)],
    ) -> Result<Self, TelemetryError> {
        let var = |name: &str| {
            env.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let protocol = match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .as_deref()
        {
            None | Some("grpc") => OtlpProtocol::Grpc,
            Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
            Some(other) => {
                return Err(bad_variable(
                    "OTEL_EXPORTER_OTLP_PROTOCOL",
                    other,
                    "is not supported (grpc or http/protobuf)",
                ))
            }
        };
        let endpoint = if let Some(e) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(e)
        } else if let Some(e) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            // The generic endpoint gets the signal path appended for HTTP (OTLP spec).
            Some(match protocol {
                OtlpProtocol::HttpProtobuf => format!("{}/v1/traces", e.trim_end_matches('/')),
                OtlpProtocol::Grpc => e,
            })
        } else {
            config.otlp_endpoint.clone().map(|e| match protocol {
                OtlpProtocol::HttpProtobuf if !e.ends_with("/v1/traces") => {
                    format!("{}/v1/traces", e.trim_end_matches('/'))
                }
                _ => e,
            })
        };
        let disabled = matches!(
            var("OTEL_SDK_DISABLED").as_deref(),
            Some("true" | "TRUE" | "1")
        );
        let metrics_endpoint = var("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT").or_else(|| {
            endpoint.as_ref().map(|e| match protocol {
                OtlpProtocol::HttpProtobuf => e.replace("/v1/traces", "/v1/metrics"),
                OtlpProtocol::Grpc => e.clone(),
            })
        });
        let metric_interval = match var("OTEL_METRIC_EXPORT_INTERVAL") {
            None => DEFAULT_METRIC_INTERVAL,
            Some(ms) => Duration::from_millis(ms.parse().map_err(|_| {
                bad_variable(
                    "OTEL_METRIC_EXPORT_INTERVAL",
                    &ms,
                    "is not a number of milliseconds",
                )
            })?),
        };
        let resource = match var("OTEL_RESOURCE_ATTRIBUTES") {
            Some(attrs) => resource_attributes(&attrs)?,
            None => Vec::new(),
        };
        let sample_ratio = sample_ratio(
            var("OTEL_TRACES_SAMPLER").as_deref(),
            var("OTEL_TRACES_SAMPLER_ARG"),
        )?;
        Ok(TelemetrySettings {
            endpoint: if disabled { None } else { endpoint },
            protocol,
            service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| config.service_name.clone()),
            resource,
            sample_ratio,
            log_format: config.log_format,
            log_level: config.log_level.clone(),
            metrics_endpoint: if disabled { None } else { metrics_endpoint },
            metric_interval,
        })
    }
}

/// `OTEL_RESOURCE_ATTRIBUTES`: `key=value` pairs separated by commas.
fn resource_attributes(attrs: &str) -> Result<Vec<(String, String)>, TelemetryError> {
    let mut resource = Vec::new();
    for pair in attrs.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| bad_variable("OTEL_RESOURCE_ATTRIBUTES", pair, "is not key=value"))?;
        resource.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(resource)
}

/// The sampling ratio of root spans `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` ask
/// for (always on when unset).
fn sample_ratio(sampler: Option<&str>, arg: Option<String>) -> Result<f64, TelemetryError> {
    match sampler {
        None | Some("always_on" | "parentbased_always_on") => Ok(1.0),
        Some("always_off" | "parentbased_always_off") => Ok(0.0),
        Some("traceidratio" | "parentbased_traceidratio") => match arg {
            None => Ok(1.0),
            Some(a) => a
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    bad_variable("OTEL_TRACES_SAMPLER_ARG", &a, "is not a ratio in 0..=1")
                }),
        },
        Some(other) => Err(bad_variable(
            "OTEL_TRACES_SAMPLER",
            other,
            "is not supported",
        )),
    }
}

/// Counts of spans that did not reach the collector.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Dropped because the export queue was full.
    pub dropped: AtomicU64,
    /// Lost because their export failed (collector down, refused, timed out).
    pub failed: AtomicU64,
    /// Exported successfully.
    pub exported: AtomicU64,
}

/// A running telemetry pipeline: the tracing dispatcher to install on every thread of the
/// sidecar, and the tracer provider to flush at shutdown.
pub struct Telemetry {
    /// Logs plus, when configured, the OpenTelemetry layer.
    pub dispatch: tracing::Dispatch,
    /// Export counters.
    pub stats: Arc<ExportStats>,
    provider: Option<SdkTracerProvider>,
    meters: Option<SdkMeterProvider>,
}

impl Telemetry {
    /// Builds the pipeline. Must run inside the tokio runtime (the gRPC channel's worker is
    /// spawned on it). `log_to_stderr = false` keeps logs to the test writer.
    pub fn start(
        settings: &TelemetrySettings,
        log_to_stderr: bool,
    ) -> Result<Telemetry, TelemetryError> {
        let stats = Arc::new(ExportStats::default());
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.log_level));
        let fmt = tracing_subscriber::fmt::layer().with_ansi(false);
        let fmt = match (settings.log_format, log_to_stderr) {
            // Every field of an event is a top-level key (`"status": 200`, not
            // `"fields": {"status": 200}`), so log pipelines index them directly.
            (LogFormat::Json, true) => fmt
                .json()
                .flatten_event(true)
                .with_writer(std::io::stderr)
                .boxed(),
            (LogFormat::Text, true) => fmt.with_writer(std::io::stderr).boxed(),
            (_, false) => fmt.with_test_writer().boxed(),
        };
        let logs = fmt.with_filter(filter.add_directive("tether::trace=off".parse()?));
        let Some(endpoint) = &settings.endpoint else {
            let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(logs));
            return Ok(Telemetry {
                dispatch,
                stats,
                provider: None,
                meters: None,
            });
        };
        let exporter = match settings.protocol {
            OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .build(),
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(BlockingHttp)
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(endpoint.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .build(),
        }
        .map_err(|source| TelemetryError::Exporter {
            signal: "",
            endpoint: endpoint.clone(),
            source,
        })?;
        let resource = resource_for(settings);
        let sampler = Sampler::ParentBased(Box::new(if settings.sample_ratio >= 1.0 {
            Sampler::AlwaysOn
        } else if settings.sample_ratio <= 0.0 {
            Sampler::AlwaysOff
        } else {
            Sampler::TraceIdRatioBased(settings.sample_ratio)
        }));
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_sampler(sampler)
            .with_span_processor(ExportQueue::new(exporter, stats.clone()))
            .build();
        let tracer = provider.tracer("tether");
        // Only the attributes Tether records: no source location (`code.*`), thread, target or
        // busy/idle timings on every span.
        let otel = tracing_opentelemetry::layer()
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_tracer(tracer)
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("tether::trace", tracing::Level::TRACE),
            );
        let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(logs).with(otel));
        tether_actors::trace::enable();
        let meters = match &settings.metrics_endpoint {
            Some(endpoint) => Some(meter_provider(settings, endpoint, resource_for(settings))?),
            None => None,
        };
        Ok(Telemetry {
            dispatch,
            stats,
            provider: Some(provider),
            meters,
        })
    }

    /// Exports `metrics` over OTLP as observable instruments (read at each export; nothing is
    /// added to the data path). A no-op without a metrics endpoint.
    pub fn observe(&self, metrics: &Arc<Metrics>) {
        let Some(meters) = &self.meters else {
            return;
        };
        let meter = meters.meter("tether");
        let m = metrics.clone();
        meter
            .u64_observable_counter("tether.websocket.handshakes")
            .with_description("WebSocket handshakes by outcome")
            .with_callback(move |obs| {
                for (outcome, n) in m.handshake_counts() {
                    obs.observe(n, &[KeyValue::new("outcome", outcome.as_str())]);
                }
            })
            .build();
        let m = metrics.clone();
        meter
            .u64_observable_counter("tether.websocket.sessions.closed")
            .with_description("Finished sessions by cause and close code of whoever closed first")
            .with_callback(move |obs| {
                for (cause, code, n) in m.closed_counts() {
                    obs.observe(
                        n,
                        &[
                            KeyValue::new("cause", cause.as_str()),
                            KeyValue::new("code", code),
                        ],
                    );
                }
            })
            .build();
        let m = metrics.clone();
        meter
            .u64_observable_counter("tether.websocket.bytes")
            .with_unit("By")
            .with_callback(move |obs| {
                let (bytes, _) = m.traffic();
                obs.observe(bytes[0], &[KeyValue::new("from", "client")]);
                obs.observe(bytes[1], &[KeyValue::new("from", "backend")]);
            })
            .build();
        let m = metrics.clone();
        meter
            .u64_observable_counter("tether.websocket.messages")
            .with_callback(move |obs| {
                let (_, messages) = m.traffic();
                obs.observe(messages[0], &[KeyValue::new("from", "client")]);
                obs.observe(messages[1], &[KeyValue::new("from", "backend")]);
            })
            .build();
        let m = metrics.clone();
        meter
            .u64_observable_counter("tether.http.requests")
            .with_callback(move |obs| {
                for (i, n) in m.request_counts().iter().enumerate() {
                    obs.observe(*n, &[KeyValue::new("status_class", format!("{}xx", i + 1))]);
                }
            })
            .build();
        let m = metrics.clone();
        meter
            .u64_observable_counter("tether.backend.retries")
            .with_description("Requests and WebSocket upgrades sent again to another member")
            .with_callback(move |obs| {
                for (reason, n) in m.retry_counts() {
                    obs.observe(n, &[KeyValue::new("reason", reason.as_str())]);
                }
            })
            .build();
        let stats = self.stats.clone();
        meter
            .u64_observable_counter("tether.otel.spans.dropped")
            .with_callback(move |obs| {
                use std::sync::atomic::Ordering::Relaxed;
                obs.observe(
                    stats.dropped.load(Relaxed),
                    &[KeyValue::new("reason", "queue_full")],
                );
                obs.observe(
                    stats.failed.load(Relaxed),
                    &[KeyValue::new("reason", "export_failed")],
                );
            })
            .build();
    }

    /// Flushes and stops the exporters. Blocks up to a few seconds: call it off the runtime's
    /// worker threads (e.g. in `spawn_blocking`).
    pub fn shutdown(&self) {
        if let Some(provider) = &self.provider {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        }
        if let Some(meters) = &self.meters {
            let _ = meters.force_flush();
            let _ = meters.shutdown();
        }
    }

    /// Exports what is queued now and waits for it (tests, shutdown).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            let _ = provider.force_flush();
        }
    }
}

/// The resource of every span and metric: `service.name`, `service.version` (this build) and
/// `service.instance.id` ([`instance_id`]), then `OTEL_RESOURCE_ATTRIBUTES`, which win.
fn resource_for(settings: &TelemetrySettings) -> Resource {
    Resource::builder_empty()
        .with_service_name(settings.service_name.clone())
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", instance_id()),
        ])
        .with_attributes(
            settings
                .resource
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .build()
}

/// `service.instance.id`: a random UUID (version 4 form) made once per process, as the
/// OpenTelemetry resource conventions recommend. Not the host or pod name: a restarted process
/// is a new instance whose counters start over, and two sidecars in one pod stay apart. The
/// pod name is better added as `k8s.pod.name` through `OTEL_RESOURCE_ATTRIBUTES`.
fn instance_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let n = fastrand::u128(..);
        // Version 4, variant 10 (RFC 9562 §5.4).
        let n = (n & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
        let hex = format!("{n:032x}");
        format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
    })
    .clone()
}

/// A meter provider exporting every `metric_interval` on a reader thread of the SDK's own.
fn meter_provider(
    settings: &TelemetrySettings,
    endpoint: &str,
    resource: Resource,
) -> Result<SdkMeterProvider, TelemetryError> {
    let exporter = match settings.protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.to_string())
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_http_client(BlockingHttp)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(endpoint.to_string())
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
    }
    .map_err(|source| TelemetryError::Exporter {
        signal: "metric ",
        endpoint: endpoint.to_owned(),
        source,
    })?;
    let reader = PeriodicReader::builder(exporter)
        .with_interval(settings.metric_interval)
        .build();
    Ok(SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(reader)
        .build())
}

enum Job {
    Span(Box<SpanData>),
    Flush(SyncSender<()>),
}

/// A bounded export queue with a thread of its own: `on_end` never blocks (a full queue drops
/// the span and counts it), and exports happen in batches off every request path. The thread
/// starts when the tracer provider hands over the resource (it always does, at build).
pub struct ExportQueue<E: SpanExporter + 'static> {
    exporter: Option<E>,
    tx: Mutex<Option<SyncSender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    stats: Arc<ExportStats>,
}

impl<E: SpanExporter + 'static> std::fmt::Debug for ExportQueue<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportQueue")
            .field("stats", &self.stats)
            .finish()
    }
}

impl<E: SpanExporter + 'static> ExportQueue<E> {
    /// A queue in front of `exporter`.
    pub fn new(exporter: E, stats: Arc<ExportStats>) -> ExportQueue<E> {
        ExportQueue {
            exporter: Some(exporter),
            tx: Mutex::new(None),
            thread: Mutex::new(None),
            stats,
        }
    }

    fn sender(&self) -> Option<SyncSender<Job>> {
        self.tx.lock().expect("queue state").clone()
    }
}

fn export_loop<E: SpanExporter>(exporter: E, rx: mpsc::Receiver<Job>, stats: Arc<ExportStats>) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(EXPORT_BATCH_SIZE);
    let mut flushed: Vec<SyncSender<()>> = Vec::new();
    let mut due = Instant::now() + EXPORT_INTERVAL;
    loop {
        let wait = due.saturating_duration_since(Instant::now());
        let closed = match rx.recv_timeout(wait) {
            Ok(Job::Span(span)) => {
                batch.push(*span);
                false
            }
            Ok(Job::Flush(done)) => {
                flushed.push(done);
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        let send_now = closed
            || !flushed.is_empty()
            || batch.len() >= EXPORT_BATCH_SIZE
            || Instant::now() >= due;
        if send_now {
            if !batch.is_empty() {
                let spans = std::mem::replace(&mut batch, Vec::with_capacity(EXPORT_BATCH_SIZE));
                let n = spans.len() as u64;
                match futures_executor::block_on(exporter.export(spans)) {
                    Ok(()) => stats.exported.fetch_add(n, Ordering::Relaxed),
                    Err(e) => {
                        tracing::debug!(error = %e, spans = n, "span export failed");
                        stats.failed.fetch_add(n, Ordering::Relaxed)
                    }
                };
            }
            for done in flushed.drain(..) {
                let _ = done.send(());
            }
            due = Instant::now() + EXPORT_INTERVAL;
        }
        if closed {
            let _ = exporter.shutdown();
            return;
        }
    }
}

impl<E: SpanExporter + 'static> SpanProcessor for ExportQueue<E> {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        let Some(tx) = self.sender() else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match tx.try_send(Job::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let Some(tx) = self.sender() else {
            return Ok(());
        };
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        tx.send(Job::Flush(done_tx))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        done_rx
            .recv_timeout(EXPORT_TIMEOUT + Duration::from_secs(1))
            .map_err(|_| OTelSdkError::Timeout(EXPORT_TIMEOUT))
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.tx.lock().expect("queue state").take();
        if let Some(handle) = self.thread.lock().expect("queue state").take() {
            let _ = handle.join();
        }
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        let Some(mut exporter) = self.exporter.take() else {
            return;
        };
        exporter.set_resource(resource);
        let (tx, rx) = mpsc::sync_channel(EXPORT_QUEUE_CAPACITY);
        let stats = self.stats.clone();
        let handle = std::thread::Builder::new()
            .name("tether-otlp-export".into())
            .spawn(move || export_loop(exporter, rx, stats))
            .expect("spawn the export thread");
        *self.tx.lock().expect("queue state") = Some(tx);
        *self.thread.lock().expect("queue state") = Some(handle);
    }
}

/// A minimal blocking HTTP/1.1 client for OTLP/HTTP (`http://` endpoints): the SDK exports from
/// its own thread with a plain executor, where an async client has no runtime to run on.
#[derive(Debug, Default)]
pub struct BlockingHttp;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for BlockingHttp {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        post_blocking(request).map_err(Into::into)
    }
}

fn post_blocking(
    request: http::Request<bytes::Bytes>,
) -> std::io::Result<http::Response<bytes::Bytes>> {
    use std::io::{Read, Write};
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, m.to_string());
    let uri = request.uri();
    if uri.scheme_str() != Some("http") {
        return Err(bad(
            "OTLP/HTTP export supports http:// endpoints; use gRPC or a local collector",
        ));
    }
    let host = uri.host().ok_or_else(|| bad("endpoint has no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut stream = std::net::TcpStream::connect((host, port))?;
    stream.set_read_timeout(Some(EXPORT_TIMEOUT))?;
    stream.set_write_timeout(Some(EXPORT_TIMEOUT))?;
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {}\r\nConnection: close\r\n",
        request.body().len()
    );
    for (name, value) in request.headers() {
        if name != http::header::CONTENT_LENGTH && name != http::header::HOST {
            head.push_str(name.as_str());
            head.push_str(": ");
            head.push_str(value.to_str().unwrap_or_default());
            head.push_str("\r\n");
        }
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(request.body())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("malformed response from the collector"))?;
    let status: u16 = std::str::from_utf8(&response[..end])
        .ok()
        .and_then(|h| h.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status in the collector's response"))?;
    let mut builder = http::Response::builder().status(status);
    let text = String::from_utf8_lossy(&response[..end]).into_owned();
    for line in text.split("\r\n").skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            builder = builder.header(k.trim(), v.trim());
        }
    }
    builder
        .body(bytes::Bytes::copy_from_slice(&response[end + 4..]))
        .map_err(|e| bad(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_variables_give_a_ratio_or_name_the_variable() {
        let ratio = |s: Option<&str>, a: Option<&str>| sample_ratio(s, a.map(str::to_owned));
        assert_eq!(ratio(None, Some("junk")).unwrap(), 1.0);
        assert_eq!(ratio(Some("parentbased_always_off"), None).unwrap(), 0.0);
        assert_eq!(ratio(Some("traceidratio"), Some("0.25")).unwrap(), 0.25);
        let err = ratio(Some("traceidratio"), Some("2")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "OTEL_TRACES_SAMPLER_ARG: \"2\" is not a ratio in 0..=1"
        );
        let err = ratio(Some("jaeger_remote"), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "OTEL_TRACES_SAMPLER: \"jaeger_remote\" is not supported"
        );
    }

    #[test]
    fn the_instance_id_is_a_version_4_uuid_made_once() {
        let id = instance_id();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'), "{id}");
        assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"), "{id}");
        assert_eq!(instance_id(), id);
    }

    #[test]
    fn resource_attributes_are_key_value_pairs() {
        assert_eq!(
            resource_attributes(" a = 1 ,,b=2").unwrap(),
            [("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        let err = resource_attributes("a=1,b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "OTEL_RESOURCE_ATTRIBUTES: \"b\" is not key=value"
        );
    }
}
