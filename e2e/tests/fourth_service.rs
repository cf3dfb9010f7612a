//! A fourth service added by configuration and proto alone: `weft-echo` (e2e/src/bin), serving
//! the test-only `acme.echo.v1.EchoService` with the mesh's server stack, is started beside
//! Weft's three services and the gateway. Nothing in the mesh or the gateway knows it: the
//! test's mesh-config declares `[services.echo]` and `[upstreams.echo]` (the gRPC service it
//! serves and its descriptor set file), and a rate limit on one of its routes. Through the
//! gateway, its routes answer; the access rules of its proto hold; the rate limit gives 429;
//! its spans join the gateway's trace; and both processes' `/metrics` count its calls.

#[macro_use]
mod common;

use common::{
    rest::{Gateway, grpc, unauthenticated},
    *,
};
use serde_json::json;
use weft_e2e::ECHO_DESCRIPTOR_SET;
use weft_testkit::{Collector, ExtraService, SPAN_KIND_CLIENT, SPAN_KIND_SERVER};

backends!(a_service_added_by_configuration_is_served_like_weft_s_own);

/// The rate limit on `POST /acme/v1/echo`: 3 requests at once per client, then 429.
const ECHO_BURST: usize = 3;

async fn a_service_added_by_configuration_is_served_like_weft_s_own(backend: Backend) {
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let descriptor = dir.path().join("echo.binpb");
    std::fs::write(&descriptor, ECHO_DESCRIPTOR_SET).expect("cannot write the descriptor set");
    // Everything the mesh learns about the fourth service. (The kit adds `listen`,
    // `admin_listen`, `database_url` and the upstream's `endpoint` on free ports.)
    let toml = format!(
        r#"
        [upstreams.echo]
        grpc_services = ["acme.echo.v1.EchoService"]
        descriptor_set = {descriptor:?}

        [[gateway.rate_limit.rules]]
        name = "echo"
        routes = ["POST /acme/v1/echo"]
        burst = {ECHO_BURST}
        per_second = 0.001
        "#,
        descriptor = descriptor.display().to_string(),
    );
    let options = MeshOptions {
        gateway: true,
        env: collector.env(),
        toml,
        extra_services: vec![ExtraService {
            name: "echo".into(),
            // It keeps no data.
            database: false,
        }],
        ..MeshOptions::default()
    };
    let mesh = TestMesh::start_with(backend, options).await;
    assert_eq!(mesh.service_names(), ["auth", "user", "order", "echo"]);
    let gw = Gateway::of(&mesh);
    let alice = mesh.new_user().await;
    let alice_id = user_of(&alice).id;
    let admin = mesh.admin().await;

    // --- its routes answer, transcoded from its descriptor set ---
    let reply = gw
        .post("/acme/v1/echo")
        .header("x-request-id", "fourth-1")
        .json(&json!({"text": "hello", "big": "9007199254740993"}))
        .send()
        .await;
    let echoed = reply.ok();
    assert_eq!(echoed["text"], "hello");
    assert_eq!(echoed["big"], "9007199254740993", "int64 as a JSON string");

    // --- the access rules of its proto: PUBLIC, AUTHENTICATED, ADMIN ---
    unauthenticated(&gw.get("/acme/v1/whoami").send().await);
    let me = gw
        .get("/acme/v1/whoami")
        .bearer(&alice.access_token)
        .send()
        .await
        .ok();
    assert_eq!(me, json!({"subject": alice_id, "role": "user"}));
    gw.post("/acme/v1/admin/ping")
        .bearer(&alice.access_token)
        .json(&json!({}))
        .send()
        .await
        .error(403, grpc::PERMISSION_DENIED, &[]);
    let pinged = gw
        .post("/acme/v1/admin/ping")
        .bearer(&admin.access_token)
        .json(&json!({}))
        .send()
        .await
        .ok();
    assert_eq!(pinged["role"], "admin");

    // --- the rate limit of [gateway.rate_limit] on its route: the first request above took one
    // of the burst; the rest of the burst passes, then 429 ---
    for n in 1..ECHO_BURST {
        gw.post("/acme/v1/echo")
            .json(&json!({"text": format!("burst {n}")}))
            .send()
            .await
            .ok();
    }
    let limited = gw
        .post("/acme/v1/echo")
        .json(&json!({"text": "one too many"}))
        .send()
        .await;
    limited.error(429, grpc::RESOURCE_EXHAUSTED, &[]);
    assert!(
        limited.header("retry-after").is_some(),
        "429 says when to retry"
    );
    // Other routes of the service are not limited by it.
    gw.get("/acme/v1/whoami")
        .bearer(&alice.access_token)
        .send()
        .await
        .ok();

    // --- tracing: weft-echo's server span is in the gateway's trace, under its client span ---
    let spans = collector
        .wait_for("the spans of the echo request", |spans| {
            let mine: Vec<_> = spans
                .iter()
                .filter(|s| s.attr("request_id") == Some("fourth-1"))
                .collect();
            mine.iter()
                .any(|s| s.service == "weft-echo" && s.kind == SPAN_KIND_SERVER)
                && mine
                    .iter()
                    .any(|s| s.service == "weft-gateway" && s.kind == SPAN_KIND_CLIENT)
        })
        .await;
    let of = |service: &str, kind: i32| {
        spans
            .iter()
            .find(|s| {
                s.attr("request_id") == Some("fourth-1") && s.service == service && s.kind == kind
            })
            .unwrap_or_else(|| panic!("no {service} span of kind {kind}"))
    };
    let gw_server = of("weft-gateway", SPAN_KIND_SERVER);
    let gw_client = of("weft-gateway", SPAN_KIND_CLIENT);
    let echo_server = of("weft-echo", SPAN_KIND_SERVER);
    assert_eq!(gw_server.name, "POST /acme/v1/echo");
    assert_eq!(echo_server.name, "acme.echo.v1.EchoService/Echo");
    assert_eq!(echo_server.trace_id, gw_server.trace_id, "one trace");
    assert_eq!(echo_server.parent_span_id, gw_client.span_id);
    assert_eq!(gw_client.parent_span_id, gw_server.span_id);

    // --- metrics: the gateway and weft-echo both count the echo calls ---
    let gateway_metrics = gw.get("/metrics").send().await.text();
    let served_by_gateway = sample_sum(
        &gateway_metrics,
        "rpc_client_requests_total",
        &[
            ("upstream", "weft-echo"),
            ("rpc_method", "acme.echo.v1.EchoService/Echo"),
            ("code", "0"),
        ],
    );
    assert_eq!(
        served_by_gateway, ECHO_BURST as f64,
        "the gateway's calls to weft-echo (the 429 never reached it):\n{gateway_metrics}"
    );
    let routed = sample_sum(
        &gateway_metrics,
        "http_server_requests_total",
        &[
            ("http_route", "/acme/v1/echo"),
            ("http_response_status_code", "429"),
        ],
    );
    assert_eq!(routed, 1.0, "the gateway counts the refused request");
    let admin_port = Gateway {
        addr: mesh.admin_addr("echo"),
    };
    let echo_metrics = admin_port.get("/metrics").send().await.text();
    let served = sample_sum(
        &echo_metrics,
        "rpc_server_requests_total",
        &[
            ("rpc_service", "acme.echo.v1.EchoService"),
            ("rpc_method", "Echo"),
            ("rpc_grpc_status_code", "0"),
        ],
    );
    assert_eq!(
        served, ECHO_BURST as f64,
        "weft-echo's own count of Echo:\n{echo_metrics}"
    );

    mesh.assert_no_panics();
    mesh.stop().await;
}
