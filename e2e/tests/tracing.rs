//! Traces of the real four binaries, received by an in-process OTLP collector: one request is
//! one trace across processes, correctly parented, every span carrying the request's id; an
//! incoming `traceparent` and `X-Request-Id` are continued; gRPC statuses are recorded as the
//! conventions say; and a collector that is down costs the requests nothing.

#[macro_use]
mod common;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use common::{rest::Gateway, *};
use serde_json::{Value, json};
use weft_testkit::{
    CollectedSpan, Collector, SPAN_KIND_CLIENT, SPAN_KIND_SERVER, closed_endpoint, otel_env,
};

backends!(one_request_is_one_trace);

const PASSWORD: &str = "password-123";

/// The span of `service` of `kind` for `rpc_method` (any, for the HTTP span) in `spans`.
fn find<'a>(
    spans: &'a [CollectedSpan],
    service: &str,
    kind: i32,
    rpc_method: Option<&str>,
) -> Option<&'a CollectedSpan> {
    spans.iter().find(|s| {
        s.service == service
            && s.kind == kind
            && rpc_method.is_none_or(|m| s.attr("rpc.method") == Some(m))
            && (rpc_method.is_some() || s.attr("rpc.method").is_none())
    })
}

/// The spans carrying `request_id`.
fn of_request(spans: &[CollectedSpan], request_id: &str) -> Vec<CollectedSpan> {
    spans
        .iter()
        .filter(|s| s.attr("request_id") == Some(request_id))
        .cloned()
        .collect()
}

#[track_caller]
fn get<'a>(
    spans: &'a [CollectedSpan],
    service: &str,
    kind: i32,
    rpc_method: Option<&str>,
) -> &'a CollectedSpan {
    find(spans, service, kind, rpc_method).unwrap_or_else(|| {
        let listing: Vec<String> = spans.iter().map(ToString::to_string).collect();
        panic!(
            "no {service} span of kind {kind} for {rpc_method:?} in:\n{}",
            listing.join("\n")
        )
    })
}

/// Every span of one trace carries `request_id`, and every span carrying it is of that trace.
#[track_caller]
fn assert_one_trace(collector: &Collector, request_id: &str, trace_id: &str) {
    let mine = of_request(&collector.spans(), request_id);
    let trace = collector.trace(trace_id);
    assert!(!mine.is_empty());
    for span in &mine {
        assert_eq!(
            span.trace_id, trace_id,
            "a span of the request in another trace: {span}"
        );
    }
    for span in &trace {
        assert_eq!(
            span.attr("request_id"),
            Some(request_id),
            "a span of the trace without the request id: {span}"
        );
    }
}

/// `child` is a direct child of `parent`, in the same trace.
#[track_caller]
fn assert_parent(child: &CollectedSpan, parent: &CollectedSpan) {
    assert_eq!(
        child.trace_id, parent.trace_id,
        "{child}\nnot in the trace of\n{parent}"
    );
    assert_eq!(
        child.parent_span_id, parent.span_id,
        "{child}\nis not a child of\n{parent}"
    );
}

/// Whether `span` descends from `ancestor` within `spans`.
fn descends(spans: &[CollectedSpan], span: &CollectedSpan, ancestor: &CollectedSpan) -> bool {
    let mut current = span;
    for _ in 0..32 {
        if current.parent_span_id == ancestor.span_id {
            return true;
        }
        match spans.iter().find(|s| s.span_id == current.parent_span_id) {
            Some(parent) => current = parent,
            None => return false,
        }
    }
    false
}

async fn one_request_is_one_trace(backend: Backend) {
    let collector = Collector::start().await;
    let options = MeshOptions {
        gateway: true,
        env: collector.env(),
        ..MeshOptions::default()
    };
    let engine = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres(_) => "postgresql",
    };
    let mesh = TestMesh::start_with(backend, options).await;
    let gw = Gateway::of(&mesh);

    // --- POST /v1/auth/register: gateway -> auth -> user, one trace ---
    let reply = gw
        .post("/v1/auth/register")
        .json(&json!({"email": "trace@example.com", "password": PASSWORD, "displayName": "T"}))
        .send()
        .await;
    let alice = reply.ok();
    let rid = reply.request_id().to_string();
    let spans = collector
        .wait_for("the spans of the register request", |spans| {
            let mine = of_request(spans, &rid);
            find(&mine, "weft-gateway", SPAN_KIND_SERVER, None).is_some()
                && find(&mine, "weft-auth", SPAN_KIND_SERVER, Some("Register")).is_some()
                && find(&mine, "weft-user", SPAN_KIND_SERVER, Some("CreateUser")).is_some()
        })
        .await;
    let mine = of_request(&spans, &rid);
    let gw_server = get(&mine, "weft-gateway", SPAN_KIND_SERVER, None);
    let gw_client = get(&mine, "weft-gateway", SPAN_KIND_CLIENT, Some("Register"));
    let auth_server = get(&mine, "weft-auth", SPAN_KIND_SERVER, Some("Register"));
    let auth_client = get(&mine, "weft-auth", SPAN_KIND_CLIENT, Some("CreateUser"));
    let user_server = get(&mine, "weft-user", SPAN_KIND_SERVER, Some("CreateUser"));
    assert_eq!(
        gw_server.parent_span_id, "",
        "no traceparent came in: a new trace"
    );
    assert_parent(gw_client, gw_server);
    assert_parent(auth_server, gw_client);
    assert_parent(auth_client, auth_server);
    assert_parent(user_server, auth_client);
    assert_one_trace(&collector, &rid, &gw_server.trace_id);

    assert_eq!(gw_server.name, "POST /v1/auth/register");
    assert_eq!(gw_server.attr("http.request.method"), Some("POST"));
    assert_eq!(gw_server.attr("http.route"), Some("/v1/auth/register"));
    assert_eq!(gw_server.attr("url.path"), Some("/v1/auth/register"));
    assert_eq!(gw_server.attr("http.response.status_code"), Some("200"));
    assert!(!gw_server.is_error());
    for span in [gw_client, auth_server, auth_client, user_server] {
        assert_eq!(span.attr("rpc.system"), Some("grpc"), "{span}");
        assert_eq!(span.attr("rpc.grpc.status_code"), Some("0"), "{span}");
        assert!(!span.is_error(), "{span}");
    }
    assert_eq!(gw_client.name, "weft.auth.v1.AuthService/Register");
    assert_eq!(
        gw_client.attr("rpc.service"),
        Some("weft.auth.v1.AuthService")
    );
    assert_eq!(user_server.name, "weft.user.v1.UserService/CreateUser");
    // The costly steps and the statements have spans of their own, in the same trace.
    let trace = collector.trace(&gw_server.trace_id);
    for name in ["argon2.hash", "jwt.sign"] {
        let step = trace
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span"));
        assert!(descends(&trace, step, auth_server), "{step}");
    }
    let statement = trace
        .iter()
        .find(|s| s.service == "weft-user" && s.attr("db.system").is_some())
        .expect("a database span in weft-user");
    assert_eq!(statement.attr("db.system"), Some(engine));
    assert_eq!(statement.attr("db.collection.name"), Some("users"));
    assert!(descends(&trace, statement, user_server), "{statement}");
    let services: BTreeSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        BTreeSet::from(["weft-auth", "weft-gateway", "weft-user"])
    );

    // --- POST /v1/orders: gateway -> order -> user, with the order's statements ---
    let admin = mesh.admin().await.access_token;
    let widget = gw
        .post("/v1/products")
        .bearer(&admin)
        .json(&json!({"name": "Widget", "unitPriceCents": "250", "currency": "USD", "stock": 5}))
        .send()
        .await
        .ok();
    let widget_id = widget["id"].as_str().unwrap().to_string();
    let reply = gw
        .post("/v1/orders")
        .bearer(&access(&alice))
        .json(&json!({"items": [{"productId": widget_id, "quantity": 2}]}))
        .send()
        .await;
    reply.ok();
    let rid = reply.request_id().to_string();
    let spans = collector
        .wait_for("the spans of the order request", |spans| {
            let mine = of_request(spans, &rid);
            find(&mine, "weft-gateway", SPAN_KIND_SERVER, None).is_some()
                && find(&mine, "weft-order", SPAN_KIND_SERVER, Some("CreateOrder")).is_some()
                && find(&mine, "weft-user", SPAN_KIND_SERVER, Some("GetUser")).is_some()
        })
        .await;
    let mine = of_request(&spans, &rid);
    let gw_server = get(&mine, "weft-gateway", SPAN_KIND_SERVER, None);
    let order_server = get(&mine, "weft-order", SPAN_KIND_SERVER, Some("CreateOrder"));
    let order_client = get(&mine, "weft-order", SPAN_KIND_CLIENT, Some("GetUser"));
    let user_server = get(&mine, "weft-user", SPAN_KIND_SERVER, Some("GetUser"));
    assert_eq!(gw_server.name, "POST /v1/orders");
    assert_parent(
        order_server,
        get(&mine, "weft-gateway", SPAN_KIND_CLIENT, Some("CreateOrder")),
    );
    assert_parent(order_client, order_server);
    assert_parent(user_server, order_client);
    assert_one_trace(&collector, &rid, &gw_server.trace_id);
    let trace = collector.trace(&gw_server.trace_id);
    let statements: Vec<&CollectedSpan> = trace
        .iter()
        .filter(|s| s.service == "weft-order" && s.attr("db.system").is_some())
        .collect();
    assert!(
        statements
            .iter()
            .any(|s| s.name == "UPDATE products" && s.attr("db.operation.name") == Some("UPDATE")),
        "the stock update has a span: {statements:#?}"
    );
    assert!(statements.iter().any(|s| s.name == "INSERT orders"));
    for statement in &statements {
        assert_eq!(statement.attr("db.system"), Some(engine));
        assert!(descends(&trace, statement, order_server), "{statement}");
        // Names and operations only, never values.
        assert!(
            !statement
                .attributes
                .values()
                .any(|v| v.contains(&widget_id)),
            "{statement}"
        );
    }
    let services: BTreeSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
    for service in ["weft-gateway", "weft-order", "weft-user"] {
        assert!(services.contains(service), "{services:?}");
    }

    // --- an incoming traceparent and X-Request-Id are continued ---
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let reply = gw
        .get(&format!("/v1/products/{widget_id}"))
        .header("traceparent", &format!("00-{trace_id}-{caller_span}-01"))
        .header("x-request-id", "client-chosen-42")
        .send()
        .await;
    reply.ok();
    assert_eq!(reply.request_id(), "client-chosen-42");
    let spans = collector
        .wait_for("the spans of the traceparent request", |spans| {
            let mine = of_request(spans, "client-chosen-42");
            find(&mine, "weft-gateway", SPAN_KIND_SERVER, None).is_some()
                && find(&mine, "weft-order", SPAN_KIND_SERVER, Some("GetProduct")).is_some()
        })
        .await;
    let mine = of_request(&spans, "client-chosen-42");
    let gw_server = get(&mine, "weft-gateway", SPAN_KIND_SERVER, None);
    assert_eq!(
        gw_server.trace_id, trace_id,
        "the caller's trace is continued"
    );
    assert_eq!(gw_server.parent_span_id, caller_span);
    assert_eq!(gw_server.name, "GET /v1/products/{id}");
    assert_eq!(
        gw_server.attr("url.path"),
        Some(format!("/v1/products/{widget_id}").as_str())
    );
    assert_one_trace(&collector, "client-chosen-42", trace_id);

    // --- a failing call: NOT_FOUND is the client's error, not the server's ---
    let reply = gw
        .get("/v1/orders/no-such-order")
        .bearer(&access(&alice))
        .send()
        .await;
    reply.expect_status(404);
    let rid = reply.request_id().to_string();
    let spans = collector
        .wait_for("the spans of the failing request", |spans| {
            let mine = of_request(spans, &rid);
            find(&mine, "weft-gateway", SPAN_KIND_SERVER, None).is_some()
                && find(&mine, "weft-order", SPAN_KIND_SERVER, Some("GetOrder")).is_some()
        })
        .await;
    let mine = of_request(&spans, &rid);
    let order_server = get(&mine, "weft-order", SPAN_KIND_SERVER, Some("GetOrder"));
    let gw_client = get(&mine, "weft-gateway", SPAN_KIND_CLIENT, Some("GetOrder"));
    let gw_server = get(&mine, "weft-gateway", SPAN_KIND_SERVER, None);
    assert_eq!(order_server.attr("rpc.grpc.status_code"), Some("5"));
    assert!(
        !order_server.is_error(),
        "NOT_FOUND is no server fault: {order_server}"
    );
    assert_eq!(gw_client.attr("rpc.grpc.status_code"), Some("5"));
    assert!(
        gw_client.is_error(),
        "a client span fails on any code but OK: {gw_client}"
    );
    assert_eq!(gw_server.attr("http.response.status_code"), Some("404"));
    assert!(
        !gw_server.is_error(),
        "a 4xx is no server fault: {gw_server}"
    );

    mesh.assert_no_panics();
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_spans_are_flushed_on_graceful_shutdown() {
    let collector = Collector::start().await;
    let mut env = collector.env();
    // Batches would wait ten minutes: only the shutdown can send these spans in time.
    for (key, value) in &mut env {
        if key == "OTEL_BSP_SCHEDULE_DELAY" {
            *value = "600000".into();
        }
    }
    let options = MeshOptions {
        gateway: true,
        env,
        ..MeshOptions::default()
    };
    let mesh = TestMesh::start_with(Backend::Sqlite, options).await;
    let gw = Gateway::of(&mesh);
    let reply = gw.get("/v1/products?pageSize=1").send().await;
    reply.ok();
    let rid = reply.request_id().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        of_request(&collector.spans(), &rid).is_empty(),
        "nothing is sent before the batch delay"
    );
    assert!(mesh.terminate_gateway().await.success());
    mesh.terminate("order").await;
    let spans = collector
        .wait_for("the spans flushed at shutdown", |spans| {
            let mine = of_request(spans, &rid);
            find(&mine, "weft-gateway", SPAN_KIND_SERVER, None).is_some()
                && find(&mine, "weft-order", SPAN_KIND_SERVER, Some("ListProducts")).is_some()
        })
        .await;
    let mine = of_request(&spans, &rid);
    let gw_server = get(&mine, "weft-gateway", SPAN_KIND_SERVER, None);
    assert_eq!(gw_server.name, "GET /v1/products");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_the_requests_nothing() {
    let options = MeshOptions {
        gateway: true,
        env: otel_env(&closed_endpoint()),
        ..MeshOptions::default()
    };
    let mesh = TestMesh::start_with(Backend::Sqlite, options).await;
    let gw = Gateway::of(&mesh);
    let started = Instant::now();
    gw.post("/v1/auth/register")
        .json(&json!({"email": "down@example.com", "password": PASSWORD, "displayName": "D"}))
        .send()
        .await
        .ok();
    for n in 0..50 {
        let sent = Instant::now();
        let reply = gw.get("/v1/products?pageSize=5").send().await;
        reply.ok();
        assert!(
            sent.elapsed() < Duration::from_millis(500),
            "request {n} took {:?} with the collector down",
            sent.elapsed()
        );
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    // Every process keeps serving, and says why nothing arrives (once, not per request).
    mesh.assert_no_panics();
    mesh.stop().await;
}

fn access(tokens: &Value) -> String {
    tokens["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("no accessToken in {tokens}"))
        .to_string()
}
