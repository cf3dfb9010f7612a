//! `weft up`'s trace viewer: started before the children, which then export their spans to
//! its OTLP receiver on loopback; when mesh-config or the `OTEL_*` variables name an endpoint
//! of their own (Jaeger), the viewer forwards everything it receives there, so the spans go to
//! both. A request the gateway answers with a 5xx gets a line of `weft up` with its link.
//!
//! Why forward rather than export twice: a process has one span exporter, configured by the
//! mesh's telemetry for production; giving it a second one only for `weft up` would put a
//! local-development concern into every service's export path. `weft up` already stands
//! between the children and the developer, so it is the one that fans out.

use std::{collections::VecDeque, net::SocketAddr};

use anyhow::bail;
use tokio::sync::broadcast;
use weft_mesh::{MeshConfig, config::OtlpProtocol, telemetry::Settings};
use weft_viewer::{
    Viewer, ViewerOptions,
    forward::Upstream,
    model::http_status,
    request_url,
    store::{Limits, SpanLimits},
};

use crate::output::Output;

/// How many traces' 5xx lines are remembered, so that each is said once.
const REPORTED: usize = 256;

/// Options of `weft up`'s trace viewer (the viewer is `weft up`'s own: production
/// deployments, which run no `weft up`, never serve it).
#[derive(Debug, Clone, clap::Args)]
pub struct ViewerArgs {
    /// Where the trace viewer's page listens; loopback addresses only.
    #[arg(long, value_name = "ADDR", default_value = weft_viewer::DEFAULT_LISTEN)]
    pub viewer_listen: SocketAddr,
    /// Run no trace viewer: the processes export spans as mesh-config says, and nowhere else.
    #[arg(long)]
    pub no_viewer: bool,
    /// Requests (traces) the viewer keeps; the oldest are dropped first.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub viewer_requests: usize,
    /// Spans the viewer keeps per request; the rest are counted as dropped.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub viewer_spans_per_request: usize,
    /// Memory the viewer's spans may take in all, in MiB; the oldest requests go first.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub viewer_memory_mib: usize,
    /// A Jaeger UI each trace links to ("open in Jaeger"), e.g. http://localhost:16687.
    #[arg(long, value_name = "URL", env = "WEFT_JAEGER_URL")]
    pub jaeger_url: Option<String>,
}

/// The running viewer and the variables that point a child's exporter at it.
pub struct UpViewer {
    /// The viewer.
    pub viewer: Viewer,
    /// `OTEL_*` variables for every child.
    pub child_env: Vec<(String, String)>,
}

/// Starts the viewer unless `--no-viewer` (or the processes make no spans, or their endpoint
/// cannot be forwarded to: then it says why and returns `None`).
pub async fn start(
    args: &ViewerArgs,
    config: &MeshConfig,
    output: Output,
) -> anyhow::Result<Option<UpViewer>> {
    if args.no_viewer {
        return Ok(None);
    }
    if args.viewer_requests == 0
        || args.viewer_spans_per_request == 0
        || args.viewer_memory_mib == 0
    {
        bail!(
            "--viewer-requests, --viewer-spans-per-request and --viewer-memory-mib must be at \
             least 1"
        );
    }
    if let Some(url) = &args.jaeger_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        bail!("--jaeger-url {url:?} must be an http:// or https:// URL");
    }
    let settings = Settings::resolve("weft-up", &config.telemetry, |name| {
        std::env::var(name).ok()
    });
    if settings.disabled {
        output.info("OTEL_SDK_DISABLED=true: the processes make no spans; no trace viewer");
        return Ok(None);
    }
    let forward = match settings.endpoint {
        Some(url) if !url.starts_with("http://") => {
            output.warn(&format!(
                "the trace viewer cannot forward to {url} (it has no TLS client): the processes \
                 export there directly, and no trace viewer runs"
            ));
            return Ok(None);
        }
        Some(url) => Some(match settings.protocol {
            OtlpProtocol::Grpc => Upstream::Grpc(url),
            OtlpProtocol::HttpProtobuf => Upstream::HttpProtobuf(url),
        }),
        None => None,
    };
    let limits = Limits {
        max_traces: args.viewer_requests,
        max_spans_per_trace: args.viewer_spans_per_request,
        max_bytes: args.viewer_memory_mib.saturating_mul(1 << 20),
        span: SpanLimits {
            max_value_bytes: 4096,
            max_attributes: 64,
            max_events: 32,
        },
    };
    let forwarded = forward.as_ref().map(|u| u.url().to_owned());
    let viewer = Viewer::start(ViewerOptions {
        listen: args.viewer_listen,
        limits,
        jaeger_url: args.jaeger_url.clone(),
        forward,
    })
    .await?;
    let endpoint = viewer.otlp_endpoint();
    let mut child_env: Vec<(String, String)> = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .into_iter()
    .map(|name| (name.to_owned(), endpoint.clone()))
    .chain(
        [
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ]
        .into_iter()
        .map(|name| (name.to_owned(), "grpc".to_owned())),
    )
    .collect();
    // Spans show up in the page a fraction of a second after the request, unless the user
    // chose a batch delay.
    if std::env::var_os("OTEL_BSP_SCHEDULE_DELAY").is_none() {
        child_env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
    }
    let to = forwarded.map_or_else(String::new, |url| format!(", forwarded to {url}"));
    output.info(&format!(
        "trace viewer on {} (spans received on {endpoint}{to}; keeps the last {} requests)",
        viewer.url(),
        args.viewer_requests
    ));
    watch_failures(viewer.hub().subscribe(), viewer.url(), output);
    Ok(Some(UpViewer { viewer, child_env }))
}

/// Says, once per request, when the gateway answered with a 5xx, with the viewer's link.
fn watch_failures(
    mut events: broadcast::Receiver<weft_viewer::model::RequestSummary>,
    base: String,
    output: Output,
) {
    tokio::spawn(async move {
        let mut reported: VecDeque<String> = VecDeque::with_capacity(REPORTED);
        loop {
            let summary = match events.recv().await {
                Ok(summary) => summary,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if let Some(line) = failure_line(&summary, &base)
                && !reported.contains(&summary.trace_id)
            {
                if reported.len() == REPORTED {
                    reported.pop_front();
                }
                reported.push_back(summary.trace_id.clone());
                output.warn(&line);
            }
        }
    });
}

/// The line for a request answered with a 5xx, with its link; `None` for any other.
pub fn failure_line(summary: &weft_viewer::model::RequestSummary, base: &str) -> Option<String> {
    let status = http_status(summary).filter(|s| *s >= 500)?;
    let id = summary.request_id.as_deref().unwrap_or(&summary.trace_id);
    Some(format!(
        "weft-gateway answered {status} to {} {} (request {id}): {}",
        summary.method,
        summary.route,
        request_url(base, id)
    ))
}

#[cfg(test)]
mod tests {
    use weft_viewer::model::RequestSummary;

    use super::*;

    #[test]
    fn a_5xx_gets_a_line_with_its_link_and_nothing_else_does() {
        let mut summary = RequestSummary {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            request_id: Some("req-1".into()),
            method: "POST".into(),
            route: "/v1/orders".into(),
            status: "503".into(),
            duration_nanos: 1,
            start_unix_nano: 1,
            span_count: 3,
            dropped_spans: 0,
            services: vec![],
            failed: true,
            seq: 1,
        };
        assert_eq!(
            failure_line(&summary, "http://127.0.0.1:16686").as_deref(),
            Some(
                "weft-gateway answered 503 to POST /v1/orders (request req-1): \
                 http://127.0.0.1:16686/#/request/req-1"
            )
        );
        summary.status = "404".into();
        assert_eq!(failure_line(&summary, "http://127.0.0.1:16686"), None);
        summary.status = String::new();
        assert_eq!(failure_line(&summary, "http://127.0.0.1:16686"), None);
    }
}
