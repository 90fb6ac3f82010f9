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
use std::sync::{Arc, OnceLock};
use tracing::dispatcher::WeakDispatch;
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
    /// lapin's connection-long `io_loop` span is left out: it would be one
    /// hours-long root span per connection.
    #[arg(long, env = "TRACE_FILTER", default_value = "info,lapin=off")]
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
            trace_filter: "info,lapin=off".into(),
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
    let layers = layers(
        args.log_format,
        log_filter,
        trace_filter,
        provider.tracer(service),
        std::io::stdout,
    );
    let installed = tracing_subscriber::registry()
        .with(layers)
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

/// The log layer (filtered by `log_filter`) and the tracing layer (filtered
/// by `trace_filter`), writing log lines to `writer`.
fn layers<S, W>(
    format: LogFormat,
    log_filter: EnvFilter,
    trace_filter: EnvFilter,
    tracer: opentelemetry_sdk::trace::SdkTracer,
    writer: W,
) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let dispatch = Arc::new(OnceLock::new());
    let fmt_layer = match format {
        // No colours: a line is re-written to append its trace id, and the
        // logs mostly end up in files.
        LogFormat::Text => fmt::layer()
            .with_writer(writer)
            .with_ansi(false)
            .with_target(true)
            .fmt_fields(TerseFields)
            .event_format(WithTraceId {
                inner: fmt::format(),
                json: false,
                dispatch: dispatch.clone(),
            })
            .boxed(),
        LogFormat::Json => fmt::layer()
            .with_writer(writer)
            .json()
            .event_format(WithTraceId {
                inner: fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
                json: true,
                dispatch: dispatch.clone(),
            })
            .boxed(),
    };
    fmt_layer
        .with_filter(log_filter)
        .and_then(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(trace_filter),
        )
        .and_then(CaptureDispatch(dispatch))
}

/// Text-log fields without the dotted ones (`otel.kind`, `messaging.system`,
/// `rpc.method`…): those are span attributes for the trace, and would bury
/// the message under every enclosing span's attributes. Domain fields
/// (`job_id`, `event_id`) stay.
struct TerseFields;

impl<'w> FormatFields<'w> for TerseFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = TerseVisitor {
            writer: &mut writer,
            result: Ok(()),
            first: true,
        };
        fields.record(&mut visitor);
        visitor.result
    }

    fn add_fields(
        &self,
        current: &'w mut fmt::FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        let mut more = String::new();
        self.format_fields(Writer::new(&mut more), fields)?;
        if !more.is_empty() {
            if !current.fields.is_empty() {
                current.fields.push(' ');
            }
            current.fields.push_str(&more);
        }
        Ok(())
    }
}

struct TerseVisitor<'a, 'w> {
    writer: &'a mut Writer<'w>,
    result: std::fmt::Result,
    first: bool,
}

impl tracing::field::Visit for TerseVisitor<'_, '_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let name = field.name();
        if self.result.is_err() || name.contains('.') {
            return;
        }
        let sep = if self.first { "" } else { " " };
        self.first = false;
        self.result = if name == "message" {
            write!(self.writer, "{sep}{value:?}")
        } else {
            write!(self.writer, "{sep}{name}={value:?}")
        };
    }
}

/// The dispatcher this subscriber is installed in, so the log formatter can
/// ask the OpenTelemetry layer for a span's trace id (during an event the
/// thread's current dispatcher is not reachable).
type DispatchCell = Arc<OnceLock<WeakDispatch>>;

struct CaptureDispatch(DispatchCell);

impl<S: tracing::Subscriber> Layer<S> for CaptureDispatch {
    fn on_register_dispatch(&self, dispatch: &tracing::Dispatch) {
        let _ = self.0.set(dispatch.downgrade());
    }
}

/// Adds `trace_id` to each line logged inside a span: a field of the JSON
/// object, or `trace_id=…` at the end of a text line.
struct WithTraceId<F> {
    inner: F,
    json: bool,
    dispatch: DispatchCell,
}

impl<F> WithTraceId<F> {
    fn trace_id<S>(
        &self,
        ctx: &FmtContext<'_, S, impl for<'w> FormatFields<'w> + 'static>,
    ) -> Option<String>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        let span = ctx.lookup_current()?;
        let dispatch = self.dispatch.get()?.upgrade()?;
        let cx = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| sc.trace_id().to_string())
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
        let Some(trace_id) = self.trace_id(ctx) else {
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
    // Which build runs where: `count by (version) (mp3converter_build_info)`.
    crate::admin::metrics_handle();
    metrics::gauge!(
        "mp3converter_build_info",
        "service" => service,
        "version" => env!("CARGO_PKG_VERSION"),
    )
    .set(1.0);
    let res = app.await;
    if let Err(e) = &res {
        tracing::error!(error = format!("{e:#}"), "{service} failed");
    }
    telemetry.shutdown().await;
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Logs one line outside any span and one inside a span; returns the
    /// output and the span's trace id.
    fn log_two_lines(format: LogFormat) -> (Vec<String>, String) {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry().with(layers(
            format,
            EnvFilter::new("info"),
            EnvFilter::new("info"),
            provider.tracer("test"),
            move || writer.clone(),
        ));
        let trace_id = tracing::subscriber::with_default(subscriber, || {
            tracing::info!(token_len = 3, "outside");
            let span = tracing::info_span!("work", job_id = "j1", otel.kind = "server");
            let _entered = span.enter();
            tracing::info!("inside");
            span.context().span().span_context().trace_id().to_string()
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        (text.lines().map(str::to_owned).collect(), trace_id)
    }

    #[test]
    fn json_lines_inside_a_span_carry_its_trace_id() {
        let (lines, trace_id) = log_two_lines(LogFormat::Json);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let outside: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        let inside: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert!(outside.get("trace_id").is_none(), "{outside}");
        assert_eq!(inside["trace_id"], trace_id.as_str(), "{inside}");
        assert_eq!(inside["message"], "inside");
        assert_eq!(inside["span"]["job_id"], "j1");
        assert_ne!(trace_id, "00000000000000000000000000000000");
    }

    #[test]
    fn text_lines_inside_a_span_end_with_its_trace_id() {
        let (lines, trace_id) = log_two_lines(LogFormat::Text);
        assert!(!lines[0].contains("trace_id"), "{}", lines[0]);
        assert!(
            lines[1].ends_with(&format!(" trace_id={trace_id}")),
            "{}",
            lines[1]
        );
        assert!(lines[1].contains("work{job_id=\"j1\"}: "), "{}", lines[1]);
        assert!(!lines[1].contains("otel.kind"), "{}", lines[1]);
        assert!(lines[0].contains("outside token_len=3"), "{}", lines[0]);
    }

    #[test]
    fn only_otlp_over_grpc_is_accepted() {
        let args = TelemetryArgs {
            otlp_protocol: Some("http/protobuf".into()),
            otlp_endpoint: Some("http://collector:4318".into()),
            ..TelemetryArgs::default()
        };
        let err = init("test", &args).unwrap_err().to_string();
        assert!(err.contains("http/protobuf"), "{err}");
        let bad_filter = TelemetryArgs {
            trace_filter: "[[[".into(),
            ..TelemetryArgs::default()
        };
        assert!(init("test", &bad_filter).is_err());
    }

    #[test]
    fn export_needs_an_endpoint_and_no_opt_out() {
        let mut args = TelemetryArgs::default();
        assert_eq!(args.export_endpoint(), None);
        args.otlp_endpoint = Some("http://collector:4317".into());
        assert_eq!(args.export_endpoint(), Some("http://collector:4317"));
        args.otlp_traces_endpoint = Some("http://traces:4317".into());
        assert_eq!(args.export_endpoint(), Some("http://traces:4317"));
        args.otel_sdk_disabled = true;
        assert_eq!(args.export_endpoint(), None);
        let blank = TelemetryArgs {
            otlp_endpoint: Some(" ".into()),
            ..TelemetryArgs::default()
        };
        assert_eq!(blank.export_endpoint(), None);
    }
}
