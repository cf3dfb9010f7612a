//! Logging and tracing set-up shared by every process.
//!
//! Logs are JSON lines (or pretty text) filtered by `RUST_LOG`, falling back to the configured
//! filter. Each log line written while serving a call carries the fields of the call's span
//! (`request_id`, `rpc.method`), set by [`crate::propagate`]. Exporting spans over OTLP plugs in
//! here: [`init`] is the one place that builds the subscriber.

use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the global tracing subscriber for a process named `service`.
///
/// Safe to call more than once: later calls leave the first subscriber in place.
pub fn init(service: &str, config: &TelemetryConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match config.log_format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    };
    if result.is_ok() {
        tracing::debug!(service, "telemetry initialised");
    }
}
