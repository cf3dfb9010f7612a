//! The spans of the last N requests, in bounded memory.
//!
//! A request is a trace. Traces are kept in order of their first span's arrival; when a new
//! trace would pass [`Limits::max_traces`], or the spans kept would pass [`Limits::max_bytes`],
//! the oldest traces are dropped first and counted. One trace keeps at most
//! [`Limits::max_spans_per_trace`] spans (the rest are counted, not kept), and
//! [`Limits::span`] bounds what one span may hold, so that no single trace, span or attribute
//! can blow the cap.
//!
//! The store is plain data behind a `std::sync::Mutex` of the caller: every method is short and
//! never awaits.

use std::collections::{HashMap, VecDeque};

use crate::model::{
    REQUEST_ID_ATTRIBUTE, RequestList, RequestSummary, SpanView, StoreStats, TraceView, summarize,
};

/// Bounds on what one span keeps, applied when spans are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanLimits {
    /// Bytes of one attribute value, name or message; longer ones are cut (on a char boundary).
    pub max_value_bytes: usize,
    /// Attributes of one span (and of one event).
    pub max_attributes: usize,
    /// Events of one span.
    pub max_events: usize,
}

/// The store's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Traces (requests) kept; the oldest go first.
    pub max_traces: usize,
    /// Spans kept per trace; later ones are counted as dropped.
    pub max_spans_per_trace: usize,
    /// Approximate bytes of every span kept, all traces together.
    pub max_bytes: usize,
    /// What one span may hold.
    pub span: SpanLimits,
}

impl Default for Limits {
    /// 1,000 requests, 1,000 spans each, 64 MiB in all; values cut at 4 KiB, 64 attributes and
    /// 32 events per span.
    fn default() -> Self {
        Self {
            max_traces: 1_000,
            max_spans_per_trace: 1_000,
            max_bytes: 64 << 20,
            span: SpanLimits {
                max_value_bytes: 4096,
                max_attributes: 64,
                max_events: 32,
            },
        }
    }
}

/// One stored trace.
#[derive(Debug)]
struct Stored {
    spans: Vec<SpanView>,
    /// The summary as of the last span kept (or dropped).
    summary: Option<RequestSummary>,
    bytes: usize,
    dropped_spans: u64,
    seq: u64,
    request_id: Option<String>,
}

/// The bounded store of recent traces.
#[derive(Debug)]
pub struct Store {
    limits: Limits,
    traces: HashMap<String, Stored>,
    /// Trace ids, oldest first.
    order: VecDeque<String>,
    /// Request id -> the latest trace carrying it.
    by_request: HashMap<String, String>,
    bytes: usize,
    spans: usize,
    next_seq: u64,
    dropped_traces: u64,
    dropped_spans: u64,
}

/// What a caller may search for: `q` matches a request id or trace id (any part of at least
/// four characters), a route or span name (a part of it, any case), a method, or a status
/// (`500`, `5xx`, `failed`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// The search text; empty matches every request.
    pub text: String,
    /// Failed requests only.
    pub failed_only: bool,
    /// At most this many, newest first.
    pub limit: usize,
}

// === impl Store ===

impl Store {
    /// An empty store with `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            traces: HashMap::new(),
            order: VecDeque::new(),
            by_request: HashMap::new(),
            bytes: 0,
            spans: 0,
            next_seq: 0,
            dropped_traces: 0,
            dropped_spans: 0,
        }
    }

    /// The store's bounds.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Keeps `spans` (already bounded per span), dropping the oldest traces as needed; returns
    /// the summaries of the traces they touched that are still kept.
    pub fn ingest(&mut self, spans: Vec<SpanView>) -> Vec<RequestSummary> {
        let mut touched: Vec<String> = Vec::new();
        for span in spans {
            let trace_id = span.trace_id.clone();
            if !self.traces.contains_key(&trace_id) {
                self.make_room_for_trace();
                let seq = self.next_seq;
                self.next_seq += 1;
                self.traces.insert(
                    trace_id.clone(),
                    Stored {
                        spans: Vec::new(),
                        summary: None,
                        bytes: 0,
                        dropped_spans: 0,
                        seq,
                        request_id: None,
                    },
                );
                self.order.push_back(trace_id.clone());
            }
            let Some(stored) = self.traces.get_mut(&trace_id) else {
                continue;
            };
            if stored.spans.len() >= self.limits.max_spans_per_trace {
                stored.dropped_spans += 1;
                self.dropped_spans += 1;
                if !touched.contains(&trace_id) {
                    touched.push(trace_id.clone());
                }
                continue;
            }
            if stored.request_id.is_none()
                && let Some(id) = span.attr(REQUEST_ID_ATTRIBUTE)
            {
                stored.request_id = Some(id.to_owned());
                self.by_request.insert(id.to_owned(), trace_id.clone());
            }
            let size = span_bytes(&span);
            stored.spans.push(span);
            stored.bytes += size;
            self.bytes += size;
            self.spans += 1;
            if !touched.contains(&trace_id) {
                touched.push(trace_id.clone());
            }
            // A trace that alone passes the byte cap is dropped whole, like any other oldest.
            while self.bytes > self.limits.max_bytes && !self.order.is_empty() {
                self.drop_oldest();
            }
        }
        let mut changed = Vec::with_capacity(touched.len());
        for id in &touched {
            if let Some(stored) = self.traces.get_mut(id) {
                let summary = summarize(id, &stored.spans, stored.dropped_spans, stored.seq);
                stored.summary = Some(summary.clone());
                changed.push(summary);
            }
        }
        changed
    }

    /// Drops the oldest traces until one more fits under [`Limits::max_traces`].
    fn make_room_for_trace(&mut self) {
        while self.order.len() >= self.limits.max_traces.max(1) {
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        let Some(id) = self.order.pop_front() else {
            return;
        };
        if let Some(stored) = self.traces.remove(&id) {
            self.bytes -= stored.bytes;
            self.spans -= stored.spans.len();
            self.dropped_traces += 1;
            if let Some(rid) = stored.request_id
                && self.by_request.get(&rid) == Some(&id)
            {
                self.by_request.remove(&rid);
            }
        }
    }

    /// The summary of trace `trace_id`, if kept.
    pub fn summary(&self, trace_id: &str) -> Option<RequestSummary> {
        let stored = self.traces.get(trace_id)?;
        Some(match &stored.summary {
            Some(summary) => summary.clone(),
            None => summarize(trace_id, &stored.spans, stored.dropped_spans, stored.seq),
        })
    }

    /// The trace whose trace id or request id is `id`, its spans by start time.
    pub fn trace(&self, id: &str) -> Option<TraceView> {
        let trace_id = if self.traces.contains_key(id) {
            id
        } else {
            self.by_request.get(id)?.as_str()
        };
        let stored = self.traces.get(trace_id)?;
        let mut spans = stored.spans.clone();
        spans.sort_by_key(|s| s.start_unix_nano);
        Some(TraceView {
            summary: summarize(trace_id, &spans, stored.dropped_spans, stored.seq),
            spans,
            jaeger_url: None,
        })
    }

    /// The requests matching `query`, newest first.
    pub fn requests(&self, query: &Query) -> RequestList {
        let limit = if query.limit == 0 {
            usize::MAX
        } else {
            query.limit
        };
        let text = query.text.trim().to_ascii_lowercase();
        let requests = self
            .order
            .iter()
            .rev()
            .filter_map(|id| self.summary(id))
            .filter(|s| !query.failed_only || s.failed)
            .filter(|s| text.is_empty() || matches(s, &text))
            .take(limit)
            .collect();
        RequestList {
            requests,
            stats: self.stats(),
        }
    }

    /// What the store holds and dropped.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            traces: self.order.len(),
            spans: self.spans,
            bytes: self.bytes,
            max_traces: self.limits.max_traces,
            max_bytes: self.limits.max_bytes,
            dropped_traces: self.dropped_traces,
            dropped_spans: self.dropped_spans,
        }
    }
}

/// Whether `summary` matches the lower-cased search `text`.
fn matches(summary: &RequestSummary, text: &str) -> bool {
    let status = summary.status.to_ascii_lowercase();
    let id_part = |id: &str| text.len() >= 4 && id.to_ascii_lowercase().contains(text);
    id_part(&summary.trace_id)
        || summary.request_id.as_deref().is_some_and(id_part)
        || summary.route.to_ascii_lowercase().contains(text)
        || summary.method.eq_ignore_ascii_case(text)
        || format!("{} {}", summary.method, summary.route)
            .to_ascii_lowercase()
            .contains(text)
        || status == text
        || (text.len() == 3
            && text.ends_with("xx")
            && status.len() == 3
            && status.starts_with(&text[..1]))
        || (text == "failed" && summary.failed)
}

/// The approximate heap and inline bytes one kept span takes.
pub fn span_bytes(span: &SpanView) -> usize {
    let attrs = |attrs: &[crate::model::Attribute]| -> usize {
        attrs
            .iter()
            .map(|a| std::mem::size_of_val(a) + a.key.len() + a.value.len())
            .sum()
    };
    std::mem::size_of::<SpanView>()
        + span.trace_id.len()
        + span.span_id.len()
        + span.parent_span_id.len()
        + span.service.len()
        + span.name.len()
        + span.kind.len()
        + span.status_message.len()
        + attrs(&span.attributes)
        + span
            .events
            .iter()
            .map(|e| std::mem::size_of_val(e) + e.name.len() + attrs(&e.attributes))
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Attribute, SpanStatus};

    fn span(trace: u32, id: u32, parent: Option<u32>, name: &str) -> SpanView {
        SpanView {
            trace_id: format!("{trace:032x}"),
            span_id: format!("{id:016x}"),
            parent_span_id: parent.map(|p| format!("{p:016x}")).unwrap_or_default(),
            service: "weft-gateway".into(),
            name: name.into(),
            kind: "server".into(),
            start_unix_nano: 1_000 + u64::from(id),
            end_unix_nano: 2_000,
            attributes: vec![Attribute {
                key: REQUEST_ID_ATTRIBUTE.into(),
                value: format!("req-{trace}"),
            }],
            events: vec![],
            status: SpanStatus::Unset,
            status_message: String::new(),
            truncated: false,
        }
    }

    fn limits(max_traces: usize, max_spans_per_trace: usize, max_bytes: usize) -> Limits {
        Limits {
            max_traces,
            max_spans_per_trace,
            max_bytes,
            ..Limits::default()
        }
    }

    #[test]
    fn keeps_the_last_n_traces_and_counts_the_dropped() {
        let mut store = Store::new(limits(3, 10, usize::MAX));
        for trace in 1..=5 {
            store.ingest(vec![span(trace, 1, None, "GET /v1/products")]);
        }
        let list = store.requests(&Query::default());
        let ids: Vec<&str> = list
            .requests
            .iter()
            .filter_map(|r| r.request_id.as_deref())
            .collect();
        // Newest first; the two oldest are gone and counted.
        assert_eq!(ids, ["req-5", "req-4", "req-3"]);
        assert_eq!(list.stats.dropped_traces, 2);
        assert!(store.trace("req-1").is_none());
        assert!(store.trace("req-3").is_some());
        assert!(store.trace(&format!("{:032x}", 4)).is_some());
    }

    #[test]
    fn bounds_the_spans_of_one_trace() {
        let mut store = Store::new(limits(10, 2, usize::MAX));
        let spans = (1..=5).map(|i| span(1, i, Some(0), "child")).collect();
        let touched = store.ingest(spans);
        assert_eq!(touched.len(), 1);
        assert_eq!(touched[0].span_count, 2);
        assert_eq!(touched[0].dropped_spans, 3);
        assert_eq!(store.stats().dropped_spans, 3);
    }

    #[test]
    fn stays_under_the_byte_cap() {
        let one = span_bytes(&span(1, 1, None, "x"));
        let mut store = Store::new(limits(1_000, 1_000, one * 10));
        for trace in 0..100 {
            store.ingest(vec![
                span(trace, 1, None, "x"),
                span(trace, 2, Some(1), "x"),
            ]);
            assert!(store.stats().bytes <= one * 10);
        }
        assert!(store.stats().traces <= 5);
        assert!(store.stats().dropped_traces >= 95);
    }

    #[test]
    fn searches_by_id_route_and_status() {
        let mut store = Store::new(Limits::default());
        let mut ok = span(1, 1, None, "POST /v1/orders");
        ok.attributes.push(Attribute {
            key: "http.route".into(),
            value: "/v1/orders".into(),
        });
        ok.attributes.push(Attribute {
            key: "http.request.method".into(),
            value: "POST".into(),
        });
        ok.attributes.push(Attribute {
            key: "http.response.status_code".into(),
            value: "201".into(),
        });
        let mut bad = span(2, 1, None, "GET /v1/products/{id}");
        bad.attributes.push(Attribute {
            key: "http.response.status_code".into(),
            value: "404".into(),
        });
        store.ingest(vec![ok, bad]);
        let find = |text: &str, failed_only| -> Vec<String> {
            store
                .requests(&Query {
                    text: text.into(),
                    failed_only,
                    limit: 0,
                })
                .requests
                .into_iter()
                .filter_map(|r| r.request_id)
                .collect()
        };
        assert_eq!(find("req-1", false), ["req-1"]);
        assert_eq!(find(&format!("{:032x}", 2), false), ["req-2"]);
        assert_eq!(find("/v1/ORDERS", false), ["req-1"]);
        assert_eq!(find("404", false), ["req-2"]);
        assert_eq!(find("4xx", false), ["req-2"]);
        assert_eq!(find("failed", false), ["req-2"]);
        assert_eq!(find("", true), ["req-2"]);
        assert!(find("nothing-like-this", false).is_empty());
    }
}
