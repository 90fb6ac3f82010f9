//! One `tracing` setup per process: an `EnvFilter` from `RUST_LOG`, and
//! readable text locally or one JSON object per line in the cluster.

use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt};

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
}

/// Installs the global subscriber. Returns an error if the filter does not
/// parse; a second call in the same process (tests start several apps) is a
/// no-op.
pub fn init(args: &TelemetryArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&args.log_filter)
        .map_err(|e| anyhow::anyhow!("invalid log filter `{}`: {e}", args.log_filter))?;
    let registry = tracing_subscriber::registry().with(filter);
    let res = match args.log_format {
        LogFormat::Text => registry.with(fmt::layer().with_target(true)).try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
    };
    // Already initialised (several apps in one test process): keep the first.
    let _ = res;
    Ok(())
}
