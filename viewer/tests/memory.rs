//! Memory stays bounded: 100,000 requests' worth of spans, among them a few huge traces with
//! huge attributes, go through the receiver, and the store ends under its cap, counted both by
//! its own accounting and by the heap bytes actually live (a counting allocator).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicIsize, Ordering},
    time::Instant,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value::Value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, span::SpanKind},
};
use weft_viewer::{
    hub::Hub,
    receiver::Receiver,
    store::{Limits, Query, SpanLimits},
};

/// Counts the heap bytes live in this test binary.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const REQUESTS: u64 = 100_000;
const PER_BATCH: u64 = 100;

fn kv(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn span(request: u64, id: u64, parent: u64, name: &str, attributes: Vec<KeyValue>) -> Span {
    Span {
        trace_id: [request.to_be_bytes(), 7u64.to_be_bytes()].concat(),
        span_id: (id + 1).to_be_bytes().to_vec(),
        parent_span_id: if parent == 0 {
            vec![]
        } else {
            parent.to_be_bytes().to_vec()
        },
        name: name.into(),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: 1_700_000_000_000_000_000 + request * 1_000_000 + id,
        end_time_unix_nano: 1_700_000_000_000_000_000 + request * 1_000_000 + 900_000,
        attributes,
        ..Default::default()
    }
}

/// The spans of one order request, as the four processes send them: eight spans with the
/// attributes the mesh sets. Every 10,000th request is huge: 5,000 spans, each with a 64 KiB
/// attribute (cut to 4 KiB; 1,000 spans kept: about half the byte cap, which then drops many
/// older traces at once).
fn request_spans(request: u64) -> Vec<Span> {
    let rid = format!("{request:032x}");
    let common = |extra: Vec<KeyValue>| {
        let mut attributes = vec![kv("request_id", rid.clone()), kv("rpc.system", "grpc")];
        attributes.extend(extra);
        attributes
    };
    if request % 10_000 == 5_000 {
        return (0..5_000)
            .map(|i| {
                span(
                    request,
                    i,
                    u64::from(i > 0),
                    "huge",
                    common(vec![kv("blob", "x".repeat(64 << 10))]),
                )
            })
            .collect();
    }
    vec![
        span(
            request,
            0,
            0,
            "POST /v1/orders",
            common(vec![
                kv("http.request.method", "POST"),
                kv("http.route", "/v1/orders"),
                kv("http.response.status_code", "201"),
            ]),
        ),
        span(
            request,
            1,
            1,
            "weft.order.v1.OrderService/CreateOrder",
            common(vec![]),
        ),
        span(
            request,
            2,
            2,
            "weft.order.v1.OrderService/CreateOrder",
            common(vec![]),
        ),
        span(
            request,
            3,
            3,
            "weft.user.v1.UserService/GetUser",
            common(vec![]),
        ),
        span(
            request,
            4,
            4,
            "weft.user.v1.UserService/GetUser",
            common(vec![]),
        ),
        span(
            request,
            5,
            5,
            "SELECT users",
            common(vec![kv("db.system", "sqlite")]),
        ),
        span(
            request,
            6,
            3,
            "UPDATE products",
            common(vec![kv("db.system", "sqlite")]),
        ),
        span(
            request,
            7,
            3,
            "INSERT orders",
            common(vec![kv("db.system", "sqlite")]),
        ),
    ]
}

fn export(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "weft-gateway")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[test]
fn a_hundred_thousand_requests_leave_the_store_under_its_cap() {
    let limits = Limits {
        max_traces: 1_000,
        max_spans_per_trace: 1_000,
        max_bytes: 8 << 20,
        span: SpanLimits {
            max_value_bytes: 4096,
            max_attributes: 64,
            max_events: 32,
        },
    };
    let before = LIVE.load(Ordering::Relaxed);
    let started = Instant::now();
    let hub = Hub::new(limits, None);
    let receiver = Receiver::new(hub.clone(), None);
    let mut peak = 0isize;
    for batch in 0..REQUESTS / PER_BATCH {
        let spans = (batch * PER_BATCH..(batch + 1) * PER_BATCH)
            .flat_map(request_spans)
            .collect();
        receiver.accept(export(spans));
        let stats = hub.stats();
        assert!(stats.traces <= limits.max_traces, "{stats:?}");
        assert!(stats.bytes <= limits.max_bytes, "{stats:?}");
        peak = peak.max(LIVE.load(Ordering::Relaxed) - before);
    }
    let stats = hub.stats();
    let live = LIVE.load(Ordering::Relaxed) - before;
    eprintln!(
        "{REQUESTS} requests in {:.1}s: {stats:?}; heap live {} KiB (peak after a batch {} KiB)",
        started.elapsed().as_secs_f64(),
        live >> 10,
        peak >> 10
    );
    assert_eq!(stats.traces, limits.max_traces);
    assert_eq!(stats.dropped_traces, REQUESTS - limits.max_traces as u64);
    // The ten huge traces kept 1,000 spans each and dropped the rest.
    assert_eq!(stats.dropped_spans, 10 * 4_000);
    // What the store accounts for is what is really live, within a factor for the maps and
    // vectors' spare capacity.
    assert!(
        live <= 2 * limits.max_bytes as isize,
        "{live} bytes live for a cap of {}",
        limits.max_bytes
    );
    assert!(
        peak <= 2 * limits.max_bytes as isize,
        "{peak} bytes live at the peak for a cap of {}",
        limits.max_bytes
    );
    // The newest requests are the ones kept, and findable by request id.
    let newest = format!("{:032x}", REQUESTS - 1);
    let list = hub.requests(&Query {
        text: newest.clone(),
        ..Query::default()
    });
    assert_eq!(list.requests.len(), 1);
    assert_eq!(list.requests[0].status, "201");
    assert!(hub.trace(&newest).is_some());
    assert!(hub.trace(&format!("{:032x}", 0)).is_none());
}
