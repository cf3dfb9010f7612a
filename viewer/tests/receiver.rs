//! The receiver over the wire: an OpenTelemetry SDK exporter (as every Weft process has) sends
//! spans to a running viewer, which keeps them, links them to Jaeger when told to, and forwards
//! them to the mesh's own collector (here the test kit's in-process one).

use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _, TracerProvider as _};
use weft_testkit::{Collector, collector::test_tracer_provider};
use weft_viewer::{Viewer, ViewerOptions, forward::Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_spans_are_kept_and_forwarded() {
    let collector = Collector::start().await;
    let viewer = Viewer::start(ViewerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        jaeger_url: Some("http://127.0.0.1:16687/".into()),
        forward: Some(Upstream::Grpc(collector.endpoint())),
        ..ViewerOptions::default()
    })
    .await
    .unwrap();

    let provider = test_tracer_provider(&viewer.otlp_endpoint(), "weft-gateway");
    let tracer = provider.tracer("test");
    // The simple processor blocks on the export: run it off the runtime's threads.
    let trace_id = tokio::task::spawn_blocking(move || {
        let mut root = tracer.start("GET /v1/things/{id}");
        root.set_attribute(opentelemetry::KeyValue::new(
            "request_id",
            "req-over-the-wire",
        ));
        root.set_attribute(opentelemetry::KeyValue::new("http.request.method", "GET"));
        root.set_attribute(opentelemetry::KeyValue::new(
            "http.route",
            "/v1/things/{id}",
        ));
        root.set_attribute(opentelemetry::KeyValue::new(
            "http.response.status_code",
            503,
        ));
        let trace_id = root.span_context().trace_id().to_string();
        let cx = opentelemetry::Context::current_with_span(root);
        let mut child = tracer.start_with_context("SELECT things", &cx);
        child.set_attribute(opentelemetry::KeyValue::new("db.system", "sqlite"));
        child.end();
        cx.span().end();
        trace_id
    })
    .await
    .unwrap();

    // Forwarded: the collector gets both spans.
    collector
        .wait_for("the forwarded spans", |spans| {
            spans.iter().filter(|s| s.trace_id == trace_id).count() == 2
        })
        .await;
    // Kept: found by request id, summarised from the root, linked to Jaeger.
    let trace = viewer
        .hub()
        .trace("req-over-the-wire")
        .expect("the trace is kept");
    assert_eq!(trace.summary.trace_id, trace_id);
    assert_eq!(trace.spans.len(), 2);
    assert_eq!(trace.summary.method, "GET");
    assert_eq!(trace.summary.route, "/v1/things/{id}");
    assert_eq!(trace.summary.status, "503");
    assert!(trace.summary.failed);
    assert_eq!(trace.spans[1].parent_span_id, trace.spans[0].span_id);
    assert_eq!(
        trace.jaeger_url.as_deref(),
        Some(format!("http://127.0.0.1:16687/trace/{trace_id}").as_str())
    );
    assert_eq!(
        viewer.request_url("req-over-the-wire"),
        format!("{}/#/request/req-over-the-wire", viewer.url())
    );
    let counts = viewer.forwarder().unwrap().counts();
    assert_eq!(counts.lost.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// OTLP/HTTP with protobuf bodies: what the receiver gets is POSTed to the configured URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_endpoints_get_the_export_requests() {
    use http_body_util::BodyExt as _;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;

    // A bare OTLP/HTTP endpoint that hands each request's path and decoded body to the test.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let path = request.uri().path().to_owned();
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let decoded = ExportTraceServiceRequest::decode(body).unwrap();
                            tx.send((path, decoded)).unwrap();
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::new()),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });

    let viewer = Viewer::start(ViewerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        forward: Some(Upstream::HttpProtobuf(format!("http://{addr}/v1/traces"))),
        ..ViewerOptions::default()
    })
    .await
    .unwrap();
    let provider = test_tracer_provider(&viewer.otlp_endpoint(), "");
    let tracer = provider.tracer("test");
    tokio::task::spawn_blocking(move || tracer.start("one span").end())
        .await
        .unwrap();

    let (path, request) = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .expect("the endpoint got nothing")
        .unwrap();
    assert_eq!(path, "/v1/traces");
    let names: Vec<&str> = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["one span"]);
}
