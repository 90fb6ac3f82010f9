//! One `tracing` setup per process: logs (readable text locally, one JSON
//! object per line in the cluster, each line inside a span carrying its trace
//! id) and spans sent to an OpenTelemetry collector over OTLP/gRPC when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set.
//!
//! Spans are recorded even when nothing is exported, so trace ids still
//! appear in the logs and are passed on to the next service: a hop that does
//! not export does not break the trace of one that does.

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{
    EnvFilter, Layer,
    fmt::{self, FmtContext, FormatEvent, FormatFields, format::Writer},
    layer::SubscriberExt,
    registry::LookupSpan,
    util::SubscriberInitExt,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Which events to log, in `RUST_LOG` syntax (e.g. `info,auth_svc=debug`).
    #[arg(long = "log-filter", env = "RUST_LOG", default_value = "info")]
    pub log_filter: String,

    /// Which spans to record for tracing, in `RUST_LOG` syntax. Separate from
    /// the log filter, so quieter logs do not cut traces short.
    #[arg(long, env = "TRACE_FILTER", default_value = "info")]
    pub trace_filter: String,

    /// OTLP/gRPC collector to send spans to (e.g. `http://otel-collector:4317`).
    /// Unset: nothing is exported. The other standard variables
    /// (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
    /// `OTEL_EXPORTER_OTLP_HEADERS`, `…_TIMEOUT`, `…_COMPRESSION`,
    /// `OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_BSP_*`) are read by the SDK.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// The traces-only endpoint; wins over `OTEL_EXPORTER_OTLP_ENDPOINT`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")]
    pub otlp_traces_endpoint: Option<String>,

    /// Only `grpc` is built in (no HTTP client in the binaries).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL")]
    pub otlp_protocol: Option<String>,

    /// `true` turns tracing export off whatever the endpoint says.
    #[arg(long, env = "OTEL_SDK_DISABLED", default_value_t = false)]
    pub otel_sdk_disabled: bool,
}

impl Default for TelemetryArgs {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            log_filter: "info".into(),
            trace_filter: "info".into(),
            otlp_endpoint: None,
            otlp_traces_endpoint: None,
            otlp_protocol: None,
            otel_sdk_disabled: false,
        }
    }
}

impl TelemetryArgs {
    /// Where spans go, if anywhere.
    pub fn export_endpoint(&self) -> Option<&str> {
        if self.otel_sdk_disabled {
            return None;
        }
        fn set(v: &Option<String>) -> Option<&str> {
            v.as_deref().filter(|s| !s.trim().is_empty())
        }
        set(&self.otlp_traces_endpoint).or(set(&self.otlp_endpoint))
    }
}

/// Keeps the tracer provider so queued spans can be flushed at exit.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl Telemetry {
    /// Whether spans are being sent to a collector.
    pub fn is_exporting(&self) -> bool {
        self.exporting
    }

    /// Sends the spans still queued and stops the exporter. Blocking work, so
    /// it runs off the async workers.
    pub async fn shutdown(self) {
        if !self.exporting {
            return;
        }
        let provider = self.provider;
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing spans at exit failed"),
            Err(e) => tracing::warn!(error = %e, "flushing spans at exit panicked"),
        }
    }
}

/// Installs the global subscriber for `service` (the default
/// `service.name`, unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES`
/// name it). Must run inside the Tokio runtime (the OTLP exporter is a tonic
/// client). A second call in the same process (tests start several apps)
/// keeps the first subscriber.
pub fn init(service: &'static str, args: &TelemetryArgs) -> anyhow::Result<Telemetry> {
    let log_filter = EnvFilter::try_new(&args.log_filter)
        .map_err(|e| anyhow::anyhow!("invalid log filter `{}`: {e}", args.log_filter))?;
    let trace_filter = EnvFilter::try_new(&args.trace_filter)
        .map_err(|e| anyhow::anyhow!("invalid trace filter `{}`: {e}", args.trace_filter))?;
    if let Some(p) = args.otlp_protocol.as_deref()
        && !p.is_empty()
        && p != "grpc"
    {
        anyhow::bail!("OTEL_EXPORTER_OTLP_PROTOCOL={p} is not supported: spans are sent over gRPC");
    }

    let mut builder = SdkTracerProvider::builder().with_resource(resource(service));
    let endpoint = args.export_endpoint();
    if let Some(endpoint) = endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the OTLP exporter for {endpoint}: {e}"))?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service))
        .with_filter(trace_filter);

    let fmt_layer = match args.log_format {
        // No colours: a line is re-written to append its trace id, and the
        // logs mostly end up in files.
        LogFormat::Text => fmt::layer()
            .with_ansi(false)
            .with_target(true)
            .event_format(WithTraceId::text(fmt::format()))
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .event_format(WithTraceId::json(
                fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            ))
            .boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(fmt_layer.with_filter(log_filter))
        .with(otel)
        .try_init()
        .is_ok();
    if installed {
        match endpoint {
            Some(e) => tracing::info!(endpoint = e, "exporting spans over OTLP/gRPC"),
            None => tracing::debug!("no OTLP endpoint set; spans are not exported"),
        }
    }
    Ok(Telemetry {
        provider,
        exporting: installed && endpoint.is_some(),
    })
}

/// The SDK's resource (service name and attributes from the environment),
/// with our binary's name when the environment gives none.
fn resource(service: &'static str) -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
    let builder = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION"),
    ));
    if named {
        builder.build()
    } else {
        builder.with_service_name(service).build()
    }
}

/// The trace id of the span an event happens in, if any.
fn current_trace_id<S>(
    ctx: &FmtContext<'_, S, impl for<'w> FormatFields<'w> + 'static>,
) -> Option<String>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let span = ctx.lookup_current()?;
    // The global dispatcher (the fast path: no scoped dispatchers) holds the
    // OpenTelemetry layer that knows the span's context.
    tracing::dispatcher::get_default(|dispatch| {
        let cx = tracing_opentelemetry::get_otel_context(&span.id(), dispatch)?;
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| sc.trace_id().to_string())
    })
}

/// Adds `trace_id` to each line logged inside a span: a field of the JSON
/// object, or `trace_id=…` at the end of a text line.
struct WithTraceId<F> {
    inner: F,
    json: bool,
}

impl<F> WithTraceId<F> {
    fn text(inner: F) -> Self {
        Self { inner, json: false }
    }
    fn json(inner: F) -> Self {
        Self { inner, json: true }
    }
}

impl<S, N, F> FormatEvent<S, N> for WithTraceId<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some(trace_id) = current_trace_id(ctx) else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let body = line.trim_end_matches('\n');
        if self.json {
            // The JSON formatter always writes one object: put the id first.
            match body.strip_prefix('{') {
                Some(rest) if rest.starts_with('}') => {
                    writeln!(writer, "{{\"trace_id\":\"{trace_id}\"}}")
                }
                Some(rest) => writeln!(writer, "{{\"trace_id\":\"{trace_id}\",{rest}"),
                None => writeln!(writer, "{body}"),
            }
        } else {
            writeln!(writer, "{body} trace_id={trace_id}")
        }
    }
}

/// What a service's `main` does around its app: telemetry first, then the
/// app until it returns, then the last spans flushed, whatever happened.
pub async fn run<F>(service: &'static str, args: &TelemetryArgs, app: F) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let telemetry = init(service, args)?;
    let res = app.await;
    if let Err(e) = &res {
        tracing::error!(error = format!("{e:#}"), "{service} failed");
    }
    telemetry.shutdown().await;
    res
}
